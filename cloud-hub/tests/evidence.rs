//! Evidence path end to end: a rule event over MQTT names a snapshot, the JPEG arrives over HTTP,
//! and the API follows the reference; upload validation, idempotency and durability.

mod common;

use std::time::Duration;

use common::*;
use csb_wire::Event;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use serde_json::Value;
use ulid::Ulid;

/// A real 8x8 grey baseline JPEG (331 bytes, made with GStreamer's jpegenc).
const JPEG: &[u8] = include_bytes!("data/evidence-8x8.jpg");
/// Small, so an oversized upload fits in the socket buffers (see `oversized`).
const MAX_BYTES: usize = 64 * 1024;

/// A car parked at the gate for five minutes (track 7), naming `snapshot` as its evidence.
fn rule_event(ts_ms: i64, snapshot: Option<Ulid>) -> Event {
    let e = EventBuilder::rule("illegal_parking")
        .rule_id("no-parking-gate")
        .ts(ts_ms)
        .objects(&[(2, "car")])
        .track(7)
        .zone("gate")
        .dwell(300_000);
    match snapshot {
        Some(s) => e.snapshot(s),
        None => e,
    }
    .build()
}

struct Upload {
    status: u16,
    location: Option<String>,
    body: Value,
}

/// PUTs `body` as snapshot `id` with the usual headers; `extra` adds or replaces headers
/// (an empty value removes one).
async fn put(hub: &TestHub, id: &str, body: Vec<u8>, extra: &[(&str, &str)]) -> Upload {
    let mut headers = vec![
        ("content-type", "image/jpeg".to_string()),
        ("x-csb-device", "yuexi/gw-01".to_string()),
    ];
    for (k, v) in extra {
        headers.retain(|(h, _)| h != k);
        if !v.is_empty() {
            headers.push((k, v.to_string()));
        }
    }
    let mut req = client()
        .put(format!("{}/api/v1/snapshots/{id}", hub.base))
        .body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.json().await.unwrap();
    Upload {
        status,
        location,
        body,
    }
}

/// Expects an error answer with `status` whose message contains `needle`.
fn assert_error(what: &str, status: u16, got: &Upload, needle: &str) {
    assert_eq!(got.status, status, "{what}: {}", got.body);
    let msg = got.body["error"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{what}: {msg}");
}

/// GETs a snapshot route, expecting the JPEG with its headers.
async fn get_jpeg(hub: &TestHub, path: &str) -> Vec<u8> {
    let resp = client()
        .get(format!("{}{path}", hub.base))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap().to_vec();
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    assert_eq!(headers[CONTENT_TYPE], "image/jpeg", "{path}");
    assert_eq!(headers[CACHE_CONTROL], "private, max-age=86400", "{path}");
    assert_eq!(headers["x-csb-device"], "yuexi/gw-01", "{path}");
    body
}

async fn error_message(hub: &TestHub, path: &str, status: u16) -> String {
    let (got, body) = hub.get_status(path).await;
    assert_eq!(got, status, "{path}: {body}");
    body["error"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_event_snapshot_upload_fetch_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt_port = free_port();
    let limit = |c: &mut cloud_hub::HubConfig| c.snapshot_max_bytes = MAX_BYTES;
    let hub = TestHub::start_with(dir.path(), mqtt_port, limit).await;
    let p = Client::connect(hub.mqtt, "evidence-gw").await;

    let snap = Ulid::new();
    let rule = rule_event(T0 + 1000, Some(snap));
    let det = event("gw-01", "cam-01", T0, &[(2, "car"), (0, "person")]);
    let bare_rule = rule_event(T0 + 2000, None);
    for e in [&det, &rule, &bare_rule] {
        p.publish(&topic("gw-01", "event"), json(e)).await;
    }
    hub.wait_health("events stored", |h| h["ingest"]["events_accepted"] == 3)
        .await;

    // The event by id, as sent (JSON text compare: f32 short form).
    let got = hub.get(&format!("/api/v1/events/{}", rule.id)).await;
    let want: Value = serde_json::from_str(&serde_json::to_string(&rule).unwrap()).unwrap();
    assert_eq!(got, want);
    let msg = error_message(&hub, &format!("/api/v1/events/{}", Ulid::new()), 404).await;
    assert!(msg.contains("no event"), "{msg}");
    let msg = error_message(&hub, "/api/v1/events/not-an-id", 400).await;
    assert!(msg.contains("not a ULID"), "{msg}");

    // Filters over rule and detection events.
    let (r, d, b) = (
        rule.id.to_string(),
        det.id.to_string(),
        bare_rule.id.to_string(),
    );
    assert_eq!(
        ids(&hub.events("kind=rule").await),
        vec![b.clone(), r.clone()]
    );
    assert_eq!(ids(&hub.events("kind=detection").await), vec![d.clone()]);
    assert_eq!(
        ids(&hub.events("event_type=illegal_parking&limit=1").await),
        vec![b.clone()]
    );
    assert_eq!(
        ids(&hub.events("class=car").await),
        vec![b.clone(), r.clone(), d.clone()]
    );
    assert_eq!(ids(&hub.events("class=person").await), vec![d.clone()]);
    assert_eq!(
        ids(&hub
            .events("class=car&kind=rule&event_type=crowd_gathering")
            .await),
        Vec::<String>::new()
    );
    let (status, body) = hub.get_status("/api/v1/events?kind=alarm").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`kind`"), "{body}");

    // Before the upload: each missing link is named.
    let event_snap = format!("/api/v1/events/{}/snapshot", rule.id);
    let msg = error_message(&hub, &event_snap, 404).await;
    assert!(msg.contains("not arrived yet"), "{msg}");
    let msg = error_message(&hub, &format!("/api/v1/events/{}/snapshot", det.id), 404).await;
    assert!(msg.contains("no evidence snapshot"), "{msg}");
    let msg = error_message(&hub, &format!("/api/v1/snapshots/{snap}"), 404).await;
    assert!(msg.contains("no snapshot"), "{msg}");

    // Upload: 201 with its location, then served via the event and directly.
    let id = snap.to_string();
    let up = put(&hub, &id, JPEG.to_vec(), &[("x-csb-event", &r)]).await;
    assert_eq!(up.status, 201, "{}", up.body);
    assert_eq!(
        up.location.as_deref(),
        Some(&*format!("/api/v1/snapshots/{id}"))
    );
    assert_eq!(up.body["bytes"], JPEG.len());
    assert_eq!(get_jpeg(&hub, &event_snap).await, JPEG);
    assert_eq!(
        get_jpeg(&hub, &format!("/api/v1/snapshots/{id}")).await,
        JPEG
    );

    // A retried upload is fine; other bytes under the same id are not.
    let again = put(&hub, &id, JPEG.to_vec(), &[]).await;
    assert_eq!(again.status, 200, "{}", again.body);
    let mut other = JPEG.to_vec();
    other[100] ^= 0xFF;
    let conflict = put(&hub, &id, other, &[]).await;
    assert_error("conflict", 409, &conflict, "different content");
    assert_eq!(get_jpeg(&hub, &event_snap).await, JPEG);

    // Refusals, each naming its problem.
    let fresh = Ulid::new().to_string();
    let mut oversized = JPEG.to_vec();
    oversized.resize(MAX_BYTES + 1, 0);
    let got = put(&hub, &fresh, oversized, &[]).await;
    assert_error("oversized", 413, &got, "snapshot_max_bytes");
    let png = b"\x89PNG\r\n\x1a\n not a jpeg".to_vec();
    let got = put(&hub, &fresh, png, &[]).await;
    assert_error("png", 400, &got, "not a JPEG");
    let got = put(&hub, "not-a-ulid", JPEG.to_vec(), &[]).await;
    assert_error("bad id", 400, &got, "not a ULID");
    let got = put(&hub, &fresh, Vec::new(), &[]).await;
    assert_error("empty", 400, &got, "empty");
    let got = put(&hub, &fresh, JPEG.to_vec(), &[("x-csb-device", "")]).await;
    assert_error("no device", 400, &got, "X-Csb-Device");
    let got = put(&hub, &fresh, JPEG.to_vec(), &[("x-csb-event", "42")]).await;
    assert_error("bad event", 400, &got, "X-Csb-Event");
    let got = put(
        &hub,
        &fresh,
        JPEG.to_vec(),
        &[("content-type", "image/png")],
    )
    .await;
    assert_error("content type", 415, &got, "image/jpeg");
    let (status, body) = hub.get_status(&format!("/api/v1/snapshots/{fresh}")).await;
    assert_eq!(
        status, 404,
        "nothing was stored for refused uploads: {body}"
    );

    // Another device's upload is not served as this event's evidence.
    let squat = Ulid::new();
    let squatted = rule_event(T0 + 3000, Some(squat));
    p.publish(&topic("gw-01", "event"), json(&squatted)).await;
    let up = put(
        &hub,
        &squat.to_string(),
        JPEG.to_vec(),
        &[("x-csb-device", "yuexi/gw-02")],
    )
    .await;
    assert_eq!(up.status, 201, "{}", up.body);
    hub.wait_health("squatted event stored", |h| {
        h["ingest"]["events_accepted"] == 4
    })
    .await;
    let msg = error_message(
        &hub,
        &format!("/api/v1/events/{}/snapshot", squatted.id),
        409,
    )
    .await;
    assert!(msg.contains("yuexi/gw-02"), "{msg}");

    // Counters.
    let health = hub.get("/api/v1/health").await;
    let ev = &health["evidence"];
    assert_eq!(ev["uploads_stored"], 2, "{health:#}");
    assert_eq!(ev["uploads_identical"], 1, "{health:#}");
    assert_eq!(ev["bytes_stored"], 2 * JPEG.len(), "{health:#}");
    assert_eq!(ev["served"], 3, "{health:#}");
    assert_eq!(ev["rejected"], 8, "{health:#}");
    for reason in [
        "conflict",
        "too_large",
        "not_jpeg",
        "bad_id",
        "empty",
        "content_type",
    ] {
        assert_eq!(ev["rejected_by_reason"][reason], 1, "{reason}: {health:#}");
    }
    assert_eq!(ev["rejected_by_reason"]["bad_header"], 2, "{health:#}");
    assert_eq!(health["storage"]["snapshots"], 2, "{health:#}");
    assert_eq!(
        health["storage"]["snapshot_bytes"],
        2 * JPEG.len(),
        "{health:#}"
    );
    let metrics = hub.metrics().await;
    for line in [
        "csb_hub_snapshots_stored_total 2\n",
        "csb_hub_snapshots_rejected_total{reason=\"too_large\"} 1\n",
        "csb_hub_stored_snapshots 2\n",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }

    // Durable: after a restart the snapshot is still served, and still idempotent.
    drop(p);
    hub.stop().await;
    let hub = TestHub::start_with(dir.path(), mqtt_port, limit).await;
    assert_eq!(get_jpeg(&hub, &event_snap).await, JPEG);
    let again = put(&hub, &id, JPEG.to_vec(), &[]).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(hub.get("/api/v1/health").await["storage"]["snapshots"], 2);
    hub.stop().await;
}

/// Without a Content-Length (chunked upload) the body limit still refuses an oversized
/// snapshot, having read no more than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_oversized_upload_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with(dir.path(), free_port(), |c| {
        c.snapshot_max_bytes = MAX_BYTES
    })
    .await;
    let addr = hub.base.trim_start_matches("http://").to_string();
    let id = Ulid::new();
    let mut body = JPEG.to_vec();
    body.resize(MAX_BYTES + 4096, 0);

    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut req = format!(
        "PUT /api/v1/snapshots/{id} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/jpeg\r\n\
         X-Csb-Device: yuexi/gw-01\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(8192) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before taking all of it; only the answer matters.
    let _ = tcp.write_all(&req).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("snapshot_max_bytes"), "{answer}");

    let health = hub.get("/api/v1/health").await;
    assert_eq!(
        health["evidence"]["rejected_by_reason"]["too_large"], 1,
        "{health:#}"
    );
    assert_eq!(health["storage"]["snapshots"], 0, "{health:#}");
    hub.stop().await;
}

/// Refused uploads bigger than the socket buffers still get their answer: the hub reads and
/// discards a refused body (up to 4x the limit) instead of leaving it unread, which would make
/// the client's write fail with "broken pipe" before it sees the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_refused_uploads_get_an_answer_not_a_broken_pipe() {
    let dir = tempfile::tempdir().unwrap();
    // Default limit: 2 MiB.
    let hub = TestHub::start(dir.path(), free_port()).await;
    let mut big = JPEG.to_vec();
    big.resize(3 * 1024 * 1024, 0);
    for i in 0..10 {
        let got = put(&hub, &Ulid::new().to_string(), big.clone(), &[]).await;
        assert_error(&format!("oversized #{i}"), 413, &got, "snapshot_max_bytes");
        let got = put(
            &hub,
            &Ulid::new().to_string(),
            big[..1024 * 1024].to_vec(),
            &[("x-csb-device", "no-slash")],
        )
        .await;
        assert_error(&format!("bad header #{i}"), 400, &got, "X-Csb-Device");
    }
    let health = hub.get("/api/v1/health").await;
    assert_eq!(health["evidence"]["rejected"], 20, "{health:#}");
    hub.stop().await;
}
