//! Department webhooks: each change of a case is POSTed to the webhook of the department it is
//! dispatched to (and of the one it left), signed with HMAC-SHA256, retried with back-off.
//!
//! What is owed is stored in the case itself ([`Notice`]: from which timeline entry on), in the
//! same write as the change that owes it, so a crash loses no notification; the workflow's
//! sweep hands due deliveries to [`Sender`] (a bounded queue, never waiting), and the delivery
//! task reports each outcome back to the engine, which records it on the case: success moves
//! `from` on, a failure counts an attempt and its error (visible on the case), and the last
//! failed attempt writes a `notify_failed` timeline entry — never silent. A delivery under way
//! when the hub stops is sent again after the restart (at least once; receivers dedupe on
//! `X-Csb-Delivery`).
//!
//! The request: `POST {url}`, `Content-Type: application/json`, `X-Csb-Delivery: {id}`,
//! `X-Csb-Timestamp: {unix ms}`, `X-Csb-Signature: sha256={hex}` — HMAC-SHA256 with the
//! department's secret of `{timestamp}.{body}`. Any 2xx is delivered. See docs/cases.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};

use super::lifecycle::{Case, Entry, Notice};

/// Deliveries queued for the sending task at most; beyond, the sweep tries again later.
pub const QUEUE: usize = 1_024;
/// Deliveries under way at once.
const PARALLEL: usize = 8;
/// Error texts kept on a case at most.
const ERROR_CHARS: usize = 200;

/// How deliveries are tried (`[webhooks]` of the hub's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// One try's limit.
    pub timeout_ms: u64,
    /// The wait after the first failure; doubled after each further one, up to `max_ms`.
    pub first_ms: u64,
    pub max_ms: u64,
    /// Tries before giving up (a `notify_failed` entry on the case).
    pub attempts: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            timeout_ms: 10_000,
            first_ms: 10_000,
            max_ms: 3_600_000,
            attempts: 12,
        }
    }
}

impl Retry {
    /// The wait before try `failed + 1`, after `failed` (≥ 1) failures.
    pub fn delay_ms(&self, failed: u32) -> i64 {
        let doubled = self
            .first_ms
            .saturating_mul(1u64 << failed.saturating_sub(1).min(40));
        doubled.min(self.max_ms) as i64
    }

    /// How long a try counts as under way: past it (the hub stopped meanwhile), it is tried
    /// again.
    pub fn lease_ms(&self) -> i64 {
        (self.timeout_ms + 30_000) as i64
    }
}

/// One department's endpoint.
#[derive(Clone)]
pub struct Hook {
    pub url: reqwest::Url,
    pub secret: Arc<[u8]>,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Hook")
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// One POST owed: the entries `[from, through)` of a case's timeline for a department.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `{case}-{department}-{through}`: the same entries delivered again carry the same id.
    pub id: String,
    pub case: String,
    pub department: String,
    pub from: usize,
    pub through: usize,
    pub body: Arc<Vec<u8>>,
}

/// A case as a webhook describes it.
#[derive(Serialize)]
struct CaseBrief<'a> {
    id: &'a str,
    state: super::lifecycle::State,
    category: &'a str,
    urgency: super::config::Urgency,
    #[serde(skip_serializing_if = "Option::is_none")]
    department: Option<&'a str>,
    place: &'a super::lifecycle::Place,
    source: super::lifecycle::Source,
    created_ms: i64,
    /// Where the whole case is read (with a token).
    href: String,
}

impl Delivery {
    /// What `notice` owes of `case`, as the request body.
    pub fn of(case: &Case, notice: &Notice) -> Delivery {
        let through = case.timeline.len();
        let from = notice.from.min(through);
        let id = format!("{}-{}-{through}", case.id, notice.department);
        let entries: &[Entry] = &case.timeline[from..through];
        let body = json!({
            "delivery": id,
            "department": notice.department,
            "case": CaseBrief {
                id: &case.id,
                state: case.state,
                category: &case.category,
                urgency: case.urgency,
                department: case.department.as_deref(),
                place: &case.place,
                source: case.source,
                created_ms: case.created_ms,
                href: format!("/api/v1/cases/{}", case.id),
            },
            "entries": entries,
        });
        Delivery {
            id,
            case: case.id.clone(),
            department: notice.department.clone(),
            from,
            through,
            body: Arc::new(body.to_string().into_bytes()),
        }
    }
}

/// `sha256={hex}` of `{timestamp}.{body}` under `secret`.
pub fn signature(secret: &[u8], timestamp_ms: i64, body: &[u8]) -> String {
    let ts = timestamp_ms.to_string();
    let mac = csb_wire::sign::hmac(secret, &[ts.as_bytes(), b".", body]);
    format!("sha256={}", csb_wire::sign::hex_lower(&mac))
}

/// Where the workflow hands due deliveries.
pub trait Notify: Send + Sync {
    /// Queues `d` without waiting; `false` when it cannot (the sweep tries again later).
    fn send(&self, d: Delivery) -> bool;
}

/// The sending task's queue.
pub struct Sender(mpsc::Sender<Delivery>);

impl Notify for Sender {
    fn send(&self, d: Delivery) -> bool {
        self.0.try_send(d).is_ok()
    }
}

pub fn queue() -> (Sender, mpsc::Receiver<Delivery>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Sender(tx), rx)
}

/// Sends queued deliveries (a few at once) until the queue closes, handing each outcome to
/// `done` (`Err` carries why, for the case).
pub async fn run(
    mut rx: mpsc::Receiver<Delivery>,
    hooks: Arc<HashMap<String, Hook>>,
    retry: Retry,
    clock: crate::support::clock::SharedClock,
    done: Arc<dyn Fn(Delivery, Result<(), String>) + Send + Sync>,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(retry.timeout_ms))
        .connect_timeout(Duration::from_millis(retry.timeout_ms.min(5_000)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("csb-hub/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client cannot be built; no deliveries");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(PARALLEL));
    while let Some(d) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (client, hooks, clock, done) =
            (client.clone(), hooks.clone(), clock.clone(), done.clone());
        tokio::spawn(async move {
            let outcome = match hooks.get(&d.department) {
                Some(h) => post(&client, h, &d, clock.now_ms()).await,
                None => Err(format!("department `{}` has no webhook", d.department)),
            };
            drop(permit);
            // The engine's write is blocking (sled, fsync).
            let _ = tokio::task::spawn_blocking(move || done(d, outcome)).await;
        });
    }
}

async fn post(client: &reqwest::Client, hook: &Hook, d: &Delivery, now: i64) -> Result<(), String> {
    let r = client
        .post(hook.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Csb-Delivery", &d.id)
        .header("X-Csb-Timestamp", now.to_string())
        .header("X-Csb-Signature", signature(&hook.secret, now, &d.body))
        .body(d.body.to_vec())
        .send()
        .await;
    let why = match r {
        Ok(resp) if resp.status().is_success() => return Ok(()),
        Ok(resp) => format!("HTTP {}", resp.status()),
        Err(e) if e.is_timeout() => "no answer within the timeout".to_string(),
        Err(e) if e.is_connect() => format!("cannot connect: {}", source_text(&e)),
        Err(e) => source_text(&e),
    };
    Err(why.chars().take(ERROR_CHARS).collect())
}

/// The error with its causes (reqwest's own text omits them).
fn source_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_its_cap() {
        let r = Retry {
            timeout_ms: 1000,
            first_ms: 10_000,
            max_ms: 60_000,
            attempts: 12,
        };
        let waits: Vec<i64> = (1..=6).map(|n| r.delay_ms(n)).collect();
        assert_eq!(waits, [10_000, 20_000, 40_000, 60_000, 60_000, 60_000]);
        assert_eq!(r.delay_ms(200), 60_000, "no overflow");
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // printf '1790000000000.{"a":1}' | openssl dgst -sha256 -hmac k
        assert_eq!(
            signature(b"k", 1_790_000_000_000, br#"{"a":1}"#),
            "sha256=8b472dd8c2da00ce704b6c1d7530fac51e95817a00df1e15fda73ee01a4a26f9"
        );
    }
}
