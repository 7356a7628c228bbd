//! Certificates for MQTT over TLS: loading the hub's (a bad file stops the hub naming it), and
//! `cloud-hub tls-cert`'s private CA for counties without a PKI.
//!
//! The TLS listener itself is the front's (`front`): rumqttd's built-in TLS runs the handshake
//! inside its accept loop with no timeout and re-reads the PEM files for every connection, so
//! one client that opens a TCP connection and sends nothing would stop every later device from
//! connecting. The front runs each handshake in the connection's own task under
//! `handshake_timeout`, with the certificate loaded once at start-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("mqtt_tls.{field}: cannot read {path}: {cause}")]
    Read {
        field: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("mqtt_tls.{field}: {path} holds no usable PEM {what}: {reason}")]
    Pem {
        field: &'static str,
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error(
        "mqtt_tls: the certificate in {cert} and the key in {key} do not fit together: {reason}"
    )]
    Config {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot make certificates: {0}")]
    Generate(String),
    #[error("{path} already exists: certificates are never overwritten (move the old ones away to rotate)")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// Reads the certificate chain and key and builds the server config (TLS 1.2 and 1.3, no client
/// certificates: devices prove who they are with their MQTT login and payload signatures).
pub fn load(cert_file: &Path, key_file: &Path) -> Result<ServerCert, TlsError> {
    let certs = read_pem(cert_file, "cert_file", "certificate", |b| {
        CertificateDer::pem_slice_iter(b).collect::<Result<Vec<_>, _>>()
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            field: "cert_file",
            path: cert_file.to_path_buf(),
            what: "certificate",
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key = read_pem(key_file, "key_file", "private key", |b| {
        PrivateKeyDer::from_pem_slice(b)
    })?;
    let leaf = certs[0].clone();
    // An explicit provider: `ServerConfig::builder()` panics when the dependency tree enables
    // more than one.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| TlsError::Config {
            cert: cert_file.to_path_buf(),
            key: key_file.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(ServerCert {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        leaf,
    })
}

/// The hub's certificate, loaded.
#[derive(Clone)]
pub struct ServerCert {
    pub acceptor: TlsAcceptor,
    /// The first certificate of the chain: the hub's own (the self-probe pins it).
    pub leaf: CertificateDer<'static>,
}

fn read_pem<T, E: std::fmt::Display>(
    path: &Path,
    field: &'static str,
    what: &'static str,
    parse: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Result<T, TlsError> {
    let bytes = std::fs::read(path).map_err(|cause| TlsError::Read {
        field,
        path: path.to_path_buf(),
        cause,
    })?;
    parse(&bytes).map_err(|e| TlsError::Pem {
        field,
        path: path.to_path_buf(),
        what,
        reason: e.to_string(),
    })
}

/// Files written by [`issue_certificates`].
#[derive(Debug, Clone)]
pub struct IssuedCertificates {
    /// Give this to every edge agent (`mqtt.ca_file`).
    pub ca_cert: PathBuf,
    /// Keep offline: it signs new hub certificates.
    pub ca_key: PathBuf,
    /// `[mqtt_tls] cert_file` and `key_file`.
    pub hub_cert: PathBuf,
    pub hub_key: PathBuf,
}

/// File names in the output directory.
pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const HUB_CERT: &str = "hub-cert.pem";
pub const HUB_KEY: &str = "hub-key.pem";

/// Makes a private CA and a hub certificate it signs, for `hosts` (DNS names or IP addresses the
/// edges use to reach the hub), valid for `days`. For a county without its own PKI: agents trust
/// the CA, so the hub certificate can later be replaced without touching them. Never
/// overwrites a file; keys are written with mode 0600.
pub fn issue_certificates(
    out_dir: &Path,
    hosts: &[String],
    days: u32,
) -> Result<IssuedCertificates, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    if hosts.is_empty() {
        return Err(TlsError::Generate(
            "give at least one host name or address the edges connect to".into(),
        ));
    }
    let files = IssuedCertificates {
        ca_cert: out_dir.join(CA_CERT),
        ca_key: out_dir.join(CA_KEY),
        hub_cert: out_dir.join(HUB_CERT),
        hub_key: out_dir.join(HUB_KEY),
    };
    for p in [
        &files.ca_cert,
        &files.ca_key,
        &files.hub_cert,
        &files.hub_key,
    ] {
        if p.exists() {
            return Err(TlsError::Exists { path: p.clone() });
        }
    }
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for gateways whose clock runs behind.
    let not_before = now - time::Duration::days(1);

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "City Super Brain hub CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    // The CA outlives the hub certificates it signs, so they can be renewed under it.
    ca.not_after = now + time::Duration::days(i64::from(days) * 4);
    let ca_key = KeyPair::generate().map_err(gen)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(gen)?;

    let mut hub = CertificateParams::new(hosts.to_vec()).map_err(gen)?;
    hub.distinguished_name
        .push(DnType::CommonName, hosts[0].as_str());
    hub.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    hub.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    hub.not_before = not_before;
    hub.not_after = now + time::Duration::days(i64::from(days));
    let hub_key = KeyPair::generate().map_err(gen)?;
    let issuer = Issuer::new(ca, &ca_key);
    let hub_cert = hub.signed_by(&hub_key, &issuer).map_err(gen)?;

    std::fs::create_dir_all(out_dir).map_err(|cause| TlsError::Write {
        path: out_dir.to_path_buf(),
        cause,
    })?;
    let write = |path: &Path, text: String, private: bool| {
        let r = if private {
            crate::ingest::devices::write_private(path, text.as_bytes()).map_err(|e| e.to_string())
        } else {
            std::fs::write(path, text).map_err(|e| e.to_string())
        };
        r.map_err(|e| TlsError::Write {
            path: path.to_path_buf(),
            cause: std::io::Error::other(e),
        })
    };
    write(&files.ca_key, ca_key.serialize_pem(), true)?;
    write(&files.ca_cert, ca_cert.pem(), false)?;
    write(&files.hub_key, hub_key.serialize_pem(), true)?;
    write(&files.hub_cert, hub_cert.pem(), false)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::rustls::pki_types::ServerName;

    struct Certs {
        _dir: tempfile::TempDir,
        cert_file: PathBuf,
        key_file: PathBuf,
    }

    fn certs() -> Certs {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&cert_file, ck.cert.pem()).unwrap();
        std::fs::write(&key_file, ck.signing_key.serialize_pem()).unwrap();
        Certs {
            cert_file,
            key_file,
            _dir: dir,
        }
    }

    fn client(ca: &CertificateDer<'static>) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// A TLS echo server with `cert`.
    async fn echo(cert: ServerCert) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let acceptor = cert.acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(s).await {
                        let (mut r, mut w) = tokio::io::split(tls);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn bad_files_name_the_field_and_path() {
        let c = certs();
        let missing = c.cert_file.with_file_name("nope.pem");
        let err = load(&missing, &c.key_file).err().unwrap().to_string();
        assert!(
            err.contains("mqtt_tls.cert_file") && err.contains("nope.pem"),
            "{err}"
        );

        // The certificate where the key should be.
        let err = load(&c.cert_file, &c.cert_file).err().unwrap().to_string();
        assert!(
            err.contains("mqtt_tls.key_file") && err.contains("cert.pem"),
            "{err}"
        );

        let empty = c.cert_file.with_file_name("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let err = load(&empty, &c.key_file).err().unwrap().to_string();
        assert!(err.contains("no CERTIFICATE"), "{err}");

        // A key of another certificate.
        let other = certs();
        let err = load(&c.cert_file, &other.key_file)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("do not fit"), "{err}");
        let ok = load(&c.cert_file, &c.key_file).unwrap();
        let pem = std::fs::read(&c.cert_file).unwrap();
        assert_eq!(ok.leaf, CertificateDer::from_pem_slice(&pem).unwrap());
    }

    #[tokio::test]
    async fn issued_certificates_are_trusted_through_the_ca_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let files =
            issue_certificates(dir.path(), &["localhost".into(), "127.0.0.1".into()], 30).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [&files.ca_key, &files.hub_key] {
                let mode = std::fs::metadata(key).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", key.display());
            }
        }
        let again = issue_certificates(dir.path(), &["localhost".into()], 30)
            .err()
            .unwrap()
            .to_string();
        assert!(again.contains("already exists"), "{again}");

        // A client trusting only the CA accepts the hub certificate, for a name and an address.
        let ca_pem = std::fs::read(&files.ca_cert).unwrap();
        let ca = CertificateDer::from_pem_slice(&ca_pem).unwrap();
        let addr = echo(load(&files.hub_cert, &files.hub_key).unwrap()).await;
        for name in ["localhost", "127.0.0.1"] {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let server = ServerName::try_from(name).unwrap().to_owned();
            let mut tls = client(&ca).connect(server, tcp).await.unwrap();
            tls.write_all(b"ok").await.unwrap();
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await.unwrap();
        }
        // Not for another name.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let server = ServerName::try_from("hub.example.org").unwrap();
        assert!(client(&ca).connect(server, tcp).await.is_err());
    }
}
