//! The checks that talk to the hub: MQTT port, TLS certificate, device login, HTTP API, clock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rumqttc::tokio_rustls::rustls;
use rumqttc::tokio_rustls::TlsConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::{Run, Status, Verdict};
use crate::config::AgentConfig;

/// Certificates closer than this to their end are a warning: renewing takes a site visit.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86400);
/// Clock differences above these are a warning, then a failure (event times, SLA timers,
/// certificate validity all read this clock).
const SKEW_WARNING_S: f64 = 2.0;
const SKEW_FAILED_S: f64 = 60.0;

pub(super) fn run(r: &mut Run<'_>, cfg: &AgentConfig, opts: &super::Options) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            for id in [
                "broker-reachable",
                "tls-certificate",
                "broker-login",
                "hub-http",
                "clock-skew",
            ] {
                r.check(id, || {
                    Verdict::failed(
                        format!("cannot start the network checks: {e}"),
                        "check the system's limits (threads, files)",
                    )
                });
            }
            return;
        }
    };
    let t = opts.timeout;
    let reachable = r.check("broker-reachable", || rt.block_on(broker_reachable(cfg, t)));
    let tls = r.check("tls-certificate", || {
        if reachable == Status::Failed {
            Verdict::skipped("needs the broker reachable (see broker-reachable)")
        } else {
            rt.block_on(tls_certificate(cfg, t))
        }
    });
    r.check("broker-login", || {
        if reachable == Status::Failed {
            Verdict::skipped("needs the broker reachable (see broker-reachable)")
        } else if tls == Status::Failed {
            Verdict::skipped("needs a TLS connection (see tls-certificate)")
        } else {
            rt.block_on(broker_login(cfg, t))
        }
    });
    let mut date = None;
    r.check("hub-http", || {
        let (v, d) = rt.block_on(hub_http(cfg, t));
        date = d;
        v
    });
    r.check("clock-skew", || match date {
        Some(d) => clock_skew(d),
        None => Verdict::skipped("needs an answer from the hub's HTTP API (see hub-http)"),
    });
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

async fn broker_reachable(cfg: &AgentConfig, t: Duration) -> Verdict {
    let (host, port) = match cfg.mqtt.host_port() {
        Ok(hp) => hp,
        Err(e) => {
            return Verdict::failed(
                format!("[mqtt] broker {e}"),
                "set [mqtt] broker = \"HUB:1883\" (8883 with TLS)",
            )
        }
    };
    let fix = format!(
        "check the hub is running and [mqtt] broker is its address, and that the network lets this box reach TCP port {port} (firewall, VPN, APN)"
    );
    match tokio::time::timeout(t, TcpStream::connect((host.as_str(), port))).await {
        Ok(Ok(s)) => Verdict::ok(format!(
            "{} answers ({})",
            cfg.mqtt.broker,
            s.peer_addr().map(|a| a.to_string()).unwrap_or_default()
        )),
        Ok(Err(e)) => Verdict::failed(format!("cannot reach {}: {e}", cfg.mqtt.broker), fix),
        Err(_) => Verdict::failed(
            format!(
                "no answer from {} within {} s",
                cfg.mqtt.broker,
                t.as_secs()
            ),
            fix,
        ),
    }
}

/// A certificate's subject and end of validity.
struct CertInfo {
    subject: String,
    not_after: i64,
}

fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(CertInfo {
        subject: c.subject().to_string(),
        not_after: c.validity().not_after.timestamp(),
    })
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn date(ts: i64) -> String {
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64))
}

/// Expired (Some(false)), near expiry (Some(true)) or fine (None), with a description.
fn judge(what: &str, c: &CertInfo) -> (Option<bool>, String) {
    let left = c.not_after - now_s();
    if left <= 0 {
        (
            Some(false),
            format!("{what} ({}) expired on {}", c.subject, date(c.not_after)),
        )
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        (
            Some(true),
            format!(
                "{what} ({}) expires in {} days ({})",
                c.subject,
                left / 86400,
                date(c.not_after)
            ),
        )
    } else {
        (None, format!("{what} valid until {}", date(c.not_after)))
    }
}

/// Verifies as the agent's own connection does, remembering the hub's certificate so its dates
/// can be reported even when verification fails.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut g) = self.seen.lock() {
            *g = Some(end_entity.to_vec());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

async fn tls_certificate(cfg: &AgentConfig, t: Duration) -> Verdict {
    let Some(ca_file) = &cfg.mqtt.ca_file else {
        let host = cfg.mqtt.host_port().map(|(h, _)| h).unwrap_or_default();
        return if is_loopback(&host) {
            Verdict::skipped("no [mqtt] ca_file: plain MQTT to a hub on this box")
        } else {
            Verdict::warning(
                format!("no [mqtt] ca_file: MQTT to {host} is not encrypted"),
                "have the hub serve MQTT over TLS (`cloud-hub tls-cert`) and set [mqtt] ca_file to its CA certificate",
            )
        };
    };
    let ca_fix = "replace the CA file with the hub's current CA certificate (`cloud-hub tls-cert` makes one)";
    let pem = match std::fs::read(ca_file) {
        Ok(b) => b,
        Err(e) => {
            return Verdict::failed(format!("[mqtt] ca_file {}: {e}", ca_file.display()), ca_fix)
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    let mut notes = Vec::new();
    let mut worst: Option<bool> = None;
    for p in x509_parser::pem::Pem::iter_from_buffer(&pem).flatten() {
        if p.label != "CERTIFICATE" {
            continue;
        }
        if let Some(ci) = cert_info(&p.contents) {
            let (w, d) = judge("CA", &ci);
            if w.is_some() {
                worst = Some(worst.unwrap_or(true) && w.unwrap_or(true));
                notes.push(d);
            }
        }
        let _ = roots.add(CertificateDer::from(p.contents));
    }
    if roots.is_empty() {
        return Verdict::failed(
            format!(
                "[mqtt] ca_file {} holds no usable PEM certificate",
                ca_file.display()
            ),
            ca_fix,
        );
    }
    if worst == Some(false) {
        return Verdict::failed(notes.join("; "), ca_fix);
    }
    let inner = match WebPkiServerVerifier::builder(Arc::new(roots)).build() {
        Ok(v) => v,
        Err(e) => {
            return Verdict::failed(format!("[mqtt] ca_file {}: {e}", ca_file.display()), ca_fix)
        }
    };
    let rec = Arc::new(Recording {
        inner,
        seen: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(rec.clone())
        .with_no_client_auth();
    let (host, port) = match cfg.mqtt.host_port() {
        Ok(hp) => hp,
        Err(e) => return Verdict::failed(e, "set [mqtt] broker = \"HUB:8883\""),
    };
    let name = match ServerName::try_from(host.clone()) {
        Ok(n) => n,
        Err(e) => {
            return Verdict::failed(
                format!("[mqtt] broker host `{host}`: {e}"),
                "use the host name on the hub's certificate",
            )
        }
    };
    let hs = tokio::time::timeout(t, async {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    })
    .await;
    let leaf = rec
        .seen
        .lock()
        .ok()
        .and_then(|g| g.as_deref().and_then(cert_info));
    let hub_fix = "renew the hub's certificate (`cloud-hub tls-cert`, then restart the hub) and keep the CA file here matching it";
    match hs {
        Err(_) => Verdict::failed(
            format!(
                "no TLS handshake with {} within {} s",
                cfg.mqtt.broker,
                t.as_secs()
            ),
            "check [mqtt] broker is the hub's TLS port (8883), not its plain one",
        ),
        Ok(Err(e)) => {
            let cert_err = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .and_then(|re| match re {
                    rustls::Error::InvalidCertificate(c) => Some(c.clone()),
                    _ => None,
                });
            match (cert_err, &leaf) {
                (Some(CertificateError::Expired | CertificateError::ExpiredContext { .. }), Some(c)) => Verdict::failed(
                    format!("the hub's certificate ({}) expired on {}", c.subject, date(c.not_after)),
                    hub_fix,
                ),
                (Some(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }), _) => Verdict::failed(
                    format!("the hub's certificate is not valid yet: {e}"),
                    "this box's clock is probably behind: turn on time sync (`timedatectl set-ntp true`), see clock-skew",
                ),
                _ => Verdict::failed(
                    format!("TLS with {} failed: {e}", cfg.mqtt.broker),
                    "check [mqtt] ca_file is the CA that signed the hub's certificate and [mqtt] broker uses the name on it",
                ),
            }
        }
        Ok(Ok(_)) => {
            let mut parts = Vec::new();
            let mut warn = worst == Some(true);
            if let Some(c) = &leaf {
                let (w, d) = judge("hub certificate", c);
                warn |= w.is_some();
                parts.push(d);
            }
            parts.extend(notes);
            if parts.iter().all(|p| !p.starts_with("CA")) {
                parts.push(format!("CA {}", ca_file.display()));
            }
            if warn {
                Verdict::warning(parts.join("; "), hub_fix)
            } else {
                Verdict::ok(parts.join("; "))
            }
        }
    }
}

async fn broker_login(cfg: &AgentConfig, t: Duration) -> Verdict {
    use rumqttc::{
        AsyncClient, ConnectionError, Event, MqttOptions, Packet, TlsConfiguration, Transport,
    };
    let (secret, ca) = match crate::uplink::security(&cfg.mqtt) {
        Ok(v) => v,
        Err(e) => return Verdict::failed(e.to_string(), "re-enrol the box: `edge-agent provision --hub URL --config FILE` with a token from `cloud-hub device enrol`"),
    };
    let (host, port) = match cfg.mqtt.host_port() {
        Ok(hp) => hp,
        Err(e) => return Verdict::failed(e, "set [mqtt] broker = \"HUB:1883\""),
    };
    // Its own client id: the hub would otherwise end the running agent's session.
    let base = cfg
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("edge-{}", cfg.agent.device));
    let mut o = MqttOptions::new(format!("{base}-doctor"), host, port);
    o.set_keep_alive(Duration::from_secs(10));
    let user = cfg.mqtt.username.clone();
    if let (Some(u), Some(s)) = (&user, &secret) {
        o.set_credentials(u, s);
    }
    if let Some(ca) = ca {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: None,
        }));
    }
    let (client, mut el) = AsyncClient::new(o, 10);
    let r = tokio::time::timeout(t, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let who = user.as_deref().unwrap_or("an anonymous client");
    let cred_fix = match &cfg.mqtt.secret_file {
        Some(f) => format!(
            "the secret in {} is not the hub's for {who}: re-enrol (`cloud-hub device enrol {}/{}` at the hub, then `edge-agent provision`)",
            f.display(),
            cfg.agent.site,
            cfg.agent.device
        ),
        None => "set [mqtt] username and secret_file (`edge-agent provision` does both)".to_string(),
    };
    match r {
        Ok(Ok(())) => {
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_millis(500), el.poll()).await;
            if user.is_none() {
                Verdict::warning(
                    "the hub accepted an anonymous login: it does not check who devices are",
                    "turn on device authentication at the hub and enrol this box",
                )
            } else {
                Verdict::ok(format!("the hub accepts the login as {who}"))
            }
        }
        Ok(Err(ConnectionError::ConnectionRefused(code))) => Verdict::failed(
            format!("the hub refused the login as {who}: {code:?}"),
            cred_fix,
        ),
        Ok(Err(e)) => Verdict::failed(
            format!("MQTT connection to {} failed: {e}", cfg.mqtt.broker),
            "see broker-reachable and tls-certificate; the hub's log names refused devices",
        ),
        Err(_) => Verdict::failed(
            format!(
                "no CONNACK from {} within {} s",
                cfg.mqtt.broker,
                t.as_secs()
            ),
            "the port answers but not as an MQTT broker: check [mqtt] broker",
        ),
    }
}

/// The hub's answer time as it said (`Date`), with our clock before and after asking.
#[derive(Debug, Clone, Copy)]
pub(super) struct HubDate {
    hub: SystemTime,
    sent: SystemTime,
    rtt: Duration,
}

async fn hub_http(cfg: &AgentConfig, t: Duration) -> (Verdict, Option<HubDate>) {
    let Some(url) = cfg.hub.url.as_deref() else {
        return (
            Verdict::warning(
                "no [hub] url: evidence pictures are taken but not uploaded",
                "set [hub] url = \"http://HUB:8080\"",
            ),
            None,
        );
    };
    let client = match reqwest::Client::builder().timeout(t).build() {
        Ok(c) => c,
        Err(e) => {
            return (
                Verdict::failed(
                    format!("cannot make an HTTP client: {e}"),
                    "check the system's TLS setup",
                ),
                None,
            )
        }
    };
    let health = format!("{}/api/v1/health", url.trim_end_matches('/'));
    let sent = SystemTime::now();
    let started = Instant::now();
    let resp = client.get(&health).send().await;
    let rtt = started.elapsed();
    let fix = format!("check the hub is running and [hub] url ({url}) is its HTTP address reachable from this box");
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let why = if e.is_timeout() {
                format!("no answer within {} s", t.as_secs())
            } else {
                root_cause(&e)
            };
            return (Verdict::failed(format!("{health}: {why}"), fix), None);
        }
    };
    let date = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .map(|hub| HubDate { hub, sent, rtt });
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let v = match status.as_u16() {
        200 => Verdict::ok(format!("{url} answers: healthy ({} ms)", rtt.as_millis())),
        503 => Verdict::warning(
            format!("{url} answers but is degraded: {}", body.chars().take(200).collect::<String>()),
            "tell the hub's operators: events may not be stored until it is healthy (this box keeps them meanwhile)",
        ),
        s => Verdict::failed(format!("{health} answered HTTP {s}"), fix),
    };
    (v, date)
}

/// The innermost cause ("Connection refused (os error 111)"): reqwest's outer layers repeat
/// the URL and say only "error sending request".
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(c) = cur.source() {
        cur = c;
    }
    cur.to_string()
}

fn clock_skew(d: HubDate) -> Verdict {
    // `Date` has whole seconds: the hub's clock read somewhere in [hub, hub + 1 s) while the
    // request was in flight; compare the middles.
    let ours = d.sent + d.rtt / 2;
    let theirs = d.hub + Duration::from_millis(500);
    let skew = match ours.duration_since(theirs) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    };
    let margin = 0.5 + d.rtt.as_secs_f64() / 2.0;
    let what = format!(
        "this box's clock is {:.1} s {} the hub's (± {margin:.1} s)",
        skew.abs(),
        if skew >= 0.0 { "ahead of" } else { "behind" }
    );
    let fix = "turn on time sync: `timedatectl set-ntp true` (or chrony pointed at the county's NTP server); event times, SLA timers and certificate checks use this clock";
    let beyond = skew.abs() - margin;
    if beyond > SKEW_FAILED_S {
        Verdict::failed(what, fix)
    } else if beyond > SKEW_WARNING_S {
        Verdict::warning(what, fix)
    } else {
        Verdict::ok(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hub_s: u64, sent_ms: u64, rtt_ms: u64) -> HubDate {
        HubDate {
            hub: SystemTime::UNIX_EPOCH + Duration::from_secs(hub_s),
            sent: SystemTime::UNIX_EPOCH + Duration::from_millis(sent_ms),
            rtt: Duration::from_millis(rtt_ms),
        }
    }

    #[test]
    fn skew_is_judged_beyond_the_date_headers_resolution() {
        assert_eq!(clock_skew(at(1000, 1_000_400, 20)).status, Status::Ok);
        let v = clock_skew(at(1000, 1_010_000, 20));
        assert_eq!(v.status, Status::Warning, "{}", v.message);
        assert!(v.message.contains("ahead"), "{}", v.message);
        let v = clock_skew(at(1000, 700_000, 20));
        assert_eq!(v.status, Status::Failed, "{}", v.message);
        assert!(v.message.contains("behind"), "{}", v.message);
        assert!(v.fix.unwrap().contains("ntp"));
    }

    #[test]
    fn certificates_near_their_end_are_named() {
        let c = CertInfo {
            subject: "CN=hub".into(),
            not_after: now_s() - 10,
        };
        assert_eq!(judge("hub certificate", &c).0, Some(false));
        let c = CertInfo {
            subject: "CN=hub".into(),
            not_after: now_s() + 86400 * 3,
        };
        let (w, d) = judge("hub certificate", &c);
        assert_eq!(w, Some(true));
        assert!(d.contains("expires in"), "{d}");
        let c = CertInfo {
            subject: "CN=hub".into(),
            not_after: now_s() + 86400 * 300,
        };
        assert_eq!(judge("hub certificate", &c).0, None);
    }
}
