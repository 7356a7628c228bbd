//! The broker's self-probe: a real MQTT client connecting through the hub's real listener (TLS
//! included) on an interval, so the hub knows whether devices can get in, and says so.
//!
//! A probe is a CONNECT answered by an accepting CONNACK, which only rumqttd's router gives: it
//! fails when the router or the server thread is gone, or when rumqttd's connection path is
//! wedged (the poisoned lock of bytebeamio/rumqtt #1062 makes every CONNECT panic). After
//! [`FATAL_FAILURES`] failures in a row the broker is declared failed: `/api/v1/health` says so
//! and the hub stops with an error, so its supervisor restarts it (edges keep what is unacked
//! and resend it; nothing is lost). The front wakes the probe at once when rumqttd does not
//! take an admitted client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttd::protocol::Login;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::front::INTERNAL_ID_PREFIX;
use super::packet;

/// One probe's time limit: connect, (TLS,) CONNECT, CONNACK.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Failed probes in a row that make the broker failed.
pub const FATAL_FAILURES: u32 = 3;
/// Between probes while they fail.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The broker as the probe last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BrokerState {
    /// Not probed through the front yet (start-up).
    Starting,
    /// The last probe was admitted.
    Ok,
    /// The last probe failed; more follow at once.
    Failing,
    /// Probes kept failing: the hub is stopping so its supervisor restarts it.
    Failed,
}

impl BrokerState {
    fn from_u8(v: u8) -> BrokerState {
        match v {
            1 => BrokerState::Ok,
            2 => BrokerState::Failing,
            3 => BrokerState::Failed,
            _ => BrokerState::Starting,
        }
    }
}

/// What the probe knows, shared with the front (which wakes it) and the API (which shows it).
#[derive(Debug)]
pub struct BrokerHealth {
    state: AtomicU8,
    in_a_row: AtomicU32,
    probes_ok: AtomicU64,
    probes_failed: AtomicU64,
    /// Unix ms of the last admitted probe; 0 before the first.
    last_ok_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
    wake: Notify,
    failed: watch::Sender<Option<String>>,
}

/// [`BrokerHealth`] as `/api/v1/health` shows it (`mqtt.broker`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct HealthSnapshot {
    pub state: BrokerState,
    pub probes_ok: u64,
    pub probes_failed: u64,
    /// Failed probes since the last admitted one.
    pub failing_in_a_row: u32,
    /// Seconds since the last admitted probe (`null` before the first).
    pub last_ok_s_ago: Option<i64>,
    /// Why the last failed probe failed.
    pub last_error: Option<String>,
}

impl Default for BrokerHealth {
    fn default() -> Self {
        BrokerHealth {
            state: AtomicU8::new(0),
            in_a_row: AtomicU32::new(0),
            probes_ok: AtomicU64::new(0),
            probes_failed: AtomicU64::new(0),
            last_ok_ms: AtomicI64::new(0),
            last_error: Mutex::new(None),
            wake: Notify::new(),
            failed: watch::channel(None).0,
        }
    }
}

impl BrokerHealth {
    pub fn state(&self) -> BrokerState {
        BrokerState::from_u8(self.state.load(Relaxed))
    }

    /// Whether devices can be expected to get in.
    pub fn is_ok(&self) -> bool {
        matches!(self.state(), BrokerState::Ok | BrokerState::Starting)
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let last = self.last_ok_ms.load(Relaxed);
        HealthSnapshot {
            state: self.state(),
            probes_ok: self.probes_ok.load(Relaxed),
            probes_failed: self.probes_failed.load(Relaxed),
            failing_in_a_row: self.in_a_row.load(Relaxed),
            last_ok_s_ago: (last > 0).then(|| (csb_wire::now_ms() - last).max(0) / 1000),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Probe now rather than at the next interval (something looked wrong).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves once the broker is declared failed, with why.
    pub async fn failed(&self) -> String {
        let mut rx = self.failed.subscribe();
        let why = rx
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            // The sender lives in `self`: cannot happen while we are borrowed.
            Err(_) => std::future::pending().await,
        }
    }

    fn record_ok(&self) {
        if self.in_a_row.swap(0, Relaxed) > 0 {
            tracing::info!("MQTT self-probe admitted again");
        }
        self.probes_ok.fetch_add(1, Relaxed);
        self.last_ok_ms.store(csb_wire::now_ms(), Relaxed);
        self.state.store(1, Relaxed);
    }

    /// Counts a failed probe; true once they are fatal.
    fn record_failure(&self, error: String) -> bool {
        let n = self.in_a_row.fetch_add(1, Relaxed) + 1;
        self.probes_failed.fetch_add(1, Relaxed);
        tracing::warn!(failed_in_a_row = n, error = %error, "MQTT self-probe failed");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
        if n >= FATAL_FAILURES {
            self.declare_failed(format!(
                "the MQTT broker admitted no client in {n} probes in a row; last: {error}"
            ));
            return true;
        }
        self.state.store(2, Relaxed);
        false
    }

    /// The broker cannot serve devices: say so everywhere.
    pub fn declare_failed(&self, reason: String) {
        tracing::error!(%reason, "MQTT broker failed; the hub stops so that it can be restarted");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
        self.state.store(3, Relaxed);
        self.failed.send_replace(Some(reason));
    }
}

/// How the probe reaches the hub: its public address, and TLS when the listener speaks it.
#[derive(Clone)]
pub struct ProbeTarget {
    pub addr: SocketAddr,
    pub login: Login,
    /// The TLS client and the name it sends; it trusts exactly the hub's own certificate.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl ProbeTarget {
    /// `listen` as a probe can dial it: an unspecified address becomes loopback.
    pub fn new(listen: SocketAddr, login: Login) -> ProbeTarget {
        let addr = match listen {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
            }
            a => a,
        };
        ProbeTarget {
            addr,
            login,
            tls: None,
        }
    }

    /// Speaks TLS, trusting only `leaf` (the hub's certificate, as configured).
    pub fn with_tls(mut self, leaf: CertificateDer<'static>) -> ProbeTarget {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Arc::new(PinnedCert {
            leaf,
            algorithms: provider.signature_verification_algorithms,
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            });
        match config {
            Ok(c) => {
                // Any name: the verifier pins the certificate itself.
                let name = ServerName::try_from("cloud-hub.local")
                    .map(|n| n.to_owned())
                    .unwrap_or_else(|_| ServerName::IpAddress(self.addr.ip().into()));
                self.tls = Some((tokio_rustls::TlsConnector::from(Arc::new(c)), name));
            }
            Err(e) => tracing::error!(error = %e, "cannot configure the TLS self-probe"),
        }
        self
    }

    /// One probe: `Ok` when the hub admitted it with CONNACK 0.
    pub async fn probe(&self) -> Result<(), String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.exchange(tcp).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                self.exchange(tls).await
            }
        }
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(&self, mut s: S) -> Result<(), String> {
        let id = format!("{INTERNAL_ID_PREFIX}probe-{}", ulid::Ulid::new());
        let connect = packet::client_connect(&id, Some(&self.login), 30);
        s.write_all(&connect)
            .await
            .map_err(|e| format!("send CONNECT: {e}"))?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack)
            .await
            .map_err(|e| format!("no CONNACK: {e}"))?;
        if ack[..2] != packet::CONNACK_HEADER || ack[3] != 0 {
            return Err(format!("refused with CONNACK {ack:02x?}"));
        }
        // DISCONNECT: a clean end for the front (no will) and rumqttd.
        let _ = s.write_all(&[0xe0, 0x00]).await;
        let _ = s.shutdown().await;
        Ok(())
    }
}

/// Probes every `interval` (at once when woken, every [`RETRY_AFTER`] while failing) until
/// `stop` changes or the broker is declared failed. `server_exit` resolves if rumqttd's server
/// thread ends: fatal at once.
pub async fn run(
    health: Arc<BrokerHealth>,
    target: ProbeTarget,
    interval: Duration,
    mut server_exit: tokio::sync::oneshot::Receiver<String>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // While failing, retry on the clock only: a wake caused by the probe's own refusal must
        // not turn three spaced attempts into three at once.
        let failing = health.in_a_row.load(Relaxed) > 0;
        let wait = if failing { RETRY_AFTER } else { interval };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = health.wake.notified(), if !failing => {}
            r = &mut server_exit => {
                let why = r.unwrap_or_else(|_| "it panicked".into());
                health.declare_failed(format!("the MQTT server thread ended: {why}"));
                return;
            }
            _ = stop.changed() => return,
        }
        let result = match tokio::time::timeout(PROBE_TIMEOUT, target.probe()).await {
            Ok(r) => r,
            Err(_) => Err(format!("not admitted within {PROBE_TIMEOUT:?}")),
        };
        match result {
            Ok(()) => health.record_ok(),
            Err(e) => {
                if health.record_failure(e) {
                    return;
                }
            }
        }
    }
}

/// First probe at start-up: `Ok` once admitted; the broker is not declared failed on error
/// (start-up fails instead).
pub async fn first(health: &BrokerHealth, target: &ProbeTarget) -> Result<(), String> {
    let r = match tokio::time::timeout(PROBE_TIMEOUT, target.probe()).await {
        Ok(r) => r,
        Err(_) => Err(format!("not admitted within {PROBE_TIMEOUT:?}")),
    };
    if r.is_ok() {
        health.record_ok();
    }
    r
}

/// Trusts exactly one certificate: the hub's own, which the probe is checking the listener of.
#[derive(Debug)]
struct PinnedCert {
    leaf: CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_failures_in_a_row_are_fatal_and_an_ok_resets_the_count() {
        let h = BrokerHealth::default();
        assert_eq!(h.state(), BrokerState::Starting);
        h.record_ok();
        assert!(!h.record_failure("one".into()));
        assert_eq!(h.state(), BrokerState::Failing);
        assert!(!h.is_ok());
        h.record_ok();
        assert_eq!(h.snapshot().failing_in_a_row, 0);
        assert!(!h.record_failure("a".into()));
        assert!(!h.record_failure("b".into()));
        assert!(h.record_failure("c".into()));
        let s = h.snapshot();
        assert_eq!(s.state, BrokerState::Failed);
        assert!(s.last_error.unwrap().contains("last: c"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let why = rt.block_on(h.failed());
        assert!(why.contains("3 probes in a row"), "{why}");
    }
}
