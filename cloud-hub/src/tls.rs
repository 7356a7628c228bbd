//! MQTT over TLS: our own TLS listener in front of rumqttd's plain one.
//!
//! Why not rumqttd's built-in TLS: it runs the handshake inside its accept loop with no timeout
//! and re-reads the PEM files for every connection, so one client that opens a TCP connection
//! and sends nothing stops every later device from connecting. Here each handshake runs in its
//! own task under `handshake_timeout`, the certificate is loaded once at start-up (a bad file
//! stops the hub naming it), the number of open connections is bounded, and refusals are counted.
//!
//! After the handshake the decrypted stream is spliced to rumqttd's listener, which then only
//! listens on a loopback port (see `broker`). Device authentication (CONNECT user and password)
//! and everything after it is rumqttd's as before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// How long the splice to rumqttd's loopback listener may take to connect.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    #[error(
        "cannot listen for MQTT over TLS on {addr}: {cause} (is another broker or hub running?)"
    )]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
}

/// Connections refused before MQTT: failed or timed-out handshakes (plain MQTT sent to the TLS
/// port among them).
#[derive(Debug, Default)]
pub struct TlsCounters {
    pub handshakes_failed: AtomicU64,
    pub handshakes_timed_out: AtomicU64,
    /// Connections turned away because `max_connections` were already open.
    pub over_capacity: AtomicU64,
}

/// A running TLS listener. [`TlsFront::stop`] closes it and every spliced connection.
pub struct TlsFront {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Reads the certificate chain and key and builds the server config (TLS 1.2 and 1.3, no client
/// certificates: devices prove who they are with their MQTT login and payload signatures).
pub fn load_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
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
    Ok(TlsAcceptor::from(Arc::new(config)))
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

impl TlsFront {
    /// Binds `listen` and starts accepting; each connection that completes its handshake is
    /// spliced to `backend`. At most `max_connections` are open at once.
    pub async fn start(
        listen: SocketAddr,
        backend: SocketAddr,
        acceptor: TlsAcceptor,
        handshake_timeout: Duration,
        max_connections: usize,
        counters: Arc<TlsCounters>,
    ) -> Result<TlsFront, TlsError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|cause| TlsError::Bind {
                addr: listen,
                cause,
            })?;
        let addr = listener.local_addr().map_err(|cause| TlsError::Bind {
            addr: listen,
            cause,
        })?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            backend,
            acceptor,
            handshake_timeout,
            Arc::new(Semaphore::new(max_connections.max(1))),
            counters,
            stop_rx,
        ));
        tracing::info!(%addr, %backend, "MQTT over TLS listening");
        Ok(TlsFront {
            addr,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!(addr = %self.addr, "TLS listener did not stop in 5 s");
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    backend: SocketAddr,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    slots: Arc<Semaphore>,
    counters: Arc<TlsCounters>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    let mut log_limit = crate::metrics::LogLimiter::new(10, Duration::from_secs(60));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "TLS accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters.over_capacity.fetch_add(1, Relaxed);
            if let Some(suppressed) = log_limit.allow(Instant::now()) {
                tracing::warn!(%peer, suppressed_since_last = suppressed,
                    "MQTT over TLS: connection limit reached, connection closed");
            }
            continue;
        };
        let acceptor = acceptor.clone();
        let counters = counters.clone();
        conns.spawn(async move {
            let _permit = permit;
            serve_conn(tcp, peer, backend, acceptor, handshake_timeout, &counters).await;
        });
    }
    // Dropping the set aborts every connection task, closing both sides.
    conns.shutdown().await;
}

async fn serve_conn(
    tcp: TcpStream,
    peer: SocketAddr,
    backend: SocketAddr,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    counters: &TlsCounters,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            counters.handshakes_failed.fetch_add(1, Relaxed);
            // Debug: a port scan or plain MQTT client would otherwise flood the log; the count
            // is in the metrics.
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            counters.handshakes_timed_out.fetch_add(1, Relaxed);
            tracing::debug!(%peer, ?handshake_timeout, "TLS handshake timed out");
            return;
        }
    };
    let mut plain =
        match tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(%peer, %backend, error = %e, "cannot reach the MQTT server");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, %backend, "MQTT server did not accept within 5 s");
                return;
            }
        };
    let _ = plain.set_nodelay(true);
    tracing::debug!(%peer, "MQTT over TLS connection open");
    // Whichever side ends first ends both. MQTT has no use for half-closed connections, and
    // waiting for the client's side after rumqttd has closed its own (keep-alive or CONNECT
    // timeout) would let a silent client hold a connection slot forever.
    let (mut tls_rd, mut tls_wr) = tokio::io::split(tls);
    let (mut plain_rd, mut plain_wr) = plain.split();
    let ended = tokio::select! {
        r = tokio::io::copy(&mut tls_rd, &mut plain_wr) => ("client", r),
        r = tokio::io::copy(&mut plain_rd, &mut tls_wr) => ("server", r),
    };
    match ended {
        (side, Ok(bytes)) => tracing::debug!(%peer, side, bytes, "MQTT over TLS connection closed"),
        (side, Err(e)) => {
            tracing::debug!(%peer, side, error = %e, "MQTT over TLS connection ended")
        }
    }
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
            crate::devices::write_private(path, text.as_bytes()).map_err(|e| e.to_string())
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
    use tokio_rustls::rustls::pki_types::ServerName;

    struct Certs {
        _dir: tempfile::TempDir,
        cert_file: PathBuf,
        key_file: PathBuf,
        ca_der: CertificateDer<'static>,
    }

    impl Certs {
        fn acceptor(&self) -> TlsAcceptor {
            load_acceptor(&self.cert_file, &self.key_file).unwrap()
        }
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
            ca_der: ck.cert.der().clone(),
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

    async fn front(
        backend: SocketAddr,
        acceptor: TlsAcceptor,
        handshake: Duration,
        slots: usize,
        counters: Arc<TlsCounters>,
    ) -> TlsFront {
        let any = "127.0.0.1:0".parse().unwrap();
        TlsFront::start(any, backend, acceptor, handshake, slots, counters)
            .await
            .unwrap()
    }

    /// An echo server standing in for rumqttd's loopback listener.
    async fn echo_backend() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    #[test]
    fn bad_files_name_the_field_and_path() {
        let c = certs();
        let missing = c.cert_file.with_file_name("nope.pem");
        let err = load_acceptor(&missing, &c.key_file)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("mqtt_tls.cert_file") && err.contains("nope.pem"),
            "{err}"
        );

        // The certificate where the key should be.
        let err = load_acceptor(&c.cert_file, &c.cert_file)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("mqtt_tls.key_file") && err.contains("cert.pem"),
            "{err}"
        );

        let empty = c.cert_file.with_file_name("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let err = load_acceptor(&empty, &c.key_file)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no CERTIFICATE"), "{err}");

        // A key of another certificate.
        let other = certs();
        let err = load_acceptor(&c.cert_file, &other.key_file)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("do not fit"), "{err}");
        c.acceptor();
    }

    #[tokio::test]
    async fn splices_after_handshake_and_a_silent_client_blocks_no_one() {
        let c = certs();
        let counters = Arc::new(TlsCounters::default());
        let mut front = front(
            echo_backend().await,
            c.acceptor(),
            Duration::from_millis(500),
            8,
            counters.clone(),
        )
        .await;
        let addr = front.addr();

        // A client that connects and says nothing: it must not hold up the next one.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls =
            tokio::time::timeout(Duration::from_secs(5), client(&c.ca_der).connect(name, tcp))
                .await
                .expect("handshake not held up by the silent client")
                .unwrap();
        tls.write_all(b"hello through TLS").await.unwrap();
        let mut buf = [0u8; 17];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello through TLS");

        // Plain MQTT bytes on the TLS port: refused and counted, nothing reaches the backend.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 10, 0, 0])
            .await
            .unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut rest))
            .await
            .expect("refused connection is closed")
            .unwrap_or(0);
        // rustls may answer with an alert record (0x15), never with MQTT (0x20, CONNACK).
        assert!(n == 0 || rest[0] == 0x15, "{rest:02x?}");
        assert_eq!(counters.handshakes_failed.load(Relaxed), 1);

        // The silent client is cut off after the handshake timeout and counted.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(counters.handshakes_timed_out.load(Relaxed), 1);
        front.stop().await;
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
        let mut front = front(
            echo_backend().await,
            load_acceptor(&files.hub_cert, &files.hub_key).unwrap(),
            Duration::from_secs(5),
            8,
            Arc::new(TlsCounters::default()),
        )
        .await;
        for name in ["localhost", "127.0.0.1"] {
            let tcp = TcpStream::connect(front.addr()).await.unwrap();
            let server = ServerName::try_from(name).unwrap().to_owned();
            let mut tls = client(&ca).connect(server, tcp).await.unwrap();
            tls.write_all(b"ok").await.unwrap();
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await.unwrap();
        }
        // Not for another name.
        let tcp = TcpStream::connect(front.addr()).await.unwrap();
        let server = ServerName::try_from("hub.example.org").unwrap();
        assert!(client(&ca).connect(server, tcp).await.is_err());
        front.stop().await;
    }

    #[tokio::test]
    async fn a_backend_close_closes_the_client_and_frees_its_slot() {
        // A backend that closes every connection at once, as rumqttd does after its CONNECT
        // timeout: the silent TLS client must be cut off too, not hold its slot.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        let c = certs();
        let mut front = front(
            backend,
            c.acceptor(),
            Duration::from_secs(5),
            1,
            Arc::new(TlsCounters::default()),
        )
        .await;
        // Each client stays open (silent) after it was cut off; with one slot, the second and
        // third get through only if the earlier ones' slots were freed.
        let mut kept = Vec::new();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let tcp = TcpStream::connect(front.addr()).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = client(&c.ca_der).connect(name, tcp).await.unwrap();
            let mut buf = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                .await
                .expect("closed when the backend closed")
                .unwrap_or(0);
            assert_eq!(n, 0);
            kept.push(tls);
        }
        front.stop().await;
    }

    #[tokio::test]
    async fn connection_limit_turns_away_the_excess() {
        let c = certs();
        let counters = Arc::new(TlsCounters::default());
        let mut front = front(
            echo_backend().await,
            c.acceptor(),
            Duration::from_secs(5),
            1,
            counters.clone(),
        )
        .await;
        let _first = TcpStream::connect(front.addr()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut second = TcpStream::connect(front.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), second.read(&mut buf))
            .await
            .expect("excess connection closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(counters.over_capacity.load(Relaxed), 1);
        front.stop().await;
    }
}
