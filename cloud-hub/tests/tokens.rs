//! HTTP API access end to end (`auth.http = "required"`), real HTTP: bearer tokens with roles on
//! the read endpoints (missing, malformed, unknown, revoked and too-low tokens refused, counted),
//! health open, and evidence uploads signed by the device instead (a wrong or missing signature,
//! or a device without credentials, refused with nothing stored). Device auth stays off here:
//! uploads still need the device in devices.json.

mod common;

use std::time::Duration;

use cloud_hub::http::tokens::{self, Role};
use cloud_hub::ingest::devices;
use cloud_hub::HttpAuth;
use common::*;
use csb_wire::sign::{sign_upload, signing_key};
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::Value;
use ulid::Ulid;

const JPEG: &[u8] = include_bytes!("data/evidence-8x8.jpg");
const DEVICE: &str = "yuexi/gw-01";

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    body: String,
}

impl Answer {
    async fn of(resp: reqwest::Response) -> Answer {
        Answer {
            status: resp.status(),
            challenge: resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_string()),
            body: resp.text().await.unwrap(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn call(hub: &TestHub, method: &str, path: &str, auth: Option<&str>) -> Answer {
    let mut req = client().request(method.parse().unwrap(), format!("{}{path}", hub.base));
    if let Some(a) = auth {
        req = req.header(AUTHORIZATION, a);
    }
    Answer::of(req.send().await.unwrap()).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// PUTs the test JPEG as snapshot `id` from `device`, with `signature` when given and an
/// optional bearer token.
async fn upload(
    hub: &TestHub,
    id: Ulid,
    device: &str,
    event: Ulid,
    signature: Option<String>,
    auth: Option<&str>,
) -> Answer {
    let mut req = client()
        .put(format!("{}/api/v1/snapshots/{id}", hub.base))
        .header("content-type", "image/jpeg")
        .header("x-csb-device", device)
        .header("x-csb-event", event.to_string())
        .body(JPEG.to_vec());
    if let Some(s) = signature {
        req = req.header("x-csb-signature", s);
    }
    if let Some(a) = auth {
        req = req.header(AUTHORIZATION, a);
    }
    Answer::of(req.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_signed_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let secret = devices::add(dir.path(), DEVICE).unwrap();
    let viewer = tokens::add(dir.path(), "grafana", Role::Viewer).unwrap();
    let operator = tokens::add(dir.path(), "ops-desk", Role::Operator).unwrap();
    let hub = TestHub::start_with(dir.path(), free_port(), |c| {
        c.auth.http = HttpAuth::Required;
    })
    .await;

    // Health stays open (TestHub::start_with polled it already); HEAD too.
    assert_eq!(call(&hub, "GET", "/api/v1/health", None).await.status, 200);
    assert_eq!(call(&hub, "HEAD", "/api/v1/health", None).await.status, 200);

    // Something to read.
    let publisher = Client::connect(hub.mqtt, "tokens-test").await;
    let e = event("gw-01", "cam-01", T0, &[(0, "person")]);
    publisher.publish(&topic("gw-01", "event"), json(&e)).await;
    hub.wait_health("event stored", |h| h["ingest"]["events_accepted"] == 1)
        .await;

    // No token: 401 with a Bearer challenge and a JSON error, on every read endpoint and on
    // unknown paths alike (no probing for endpoints).
    for path in [
        "/api/v1/events",
        "/api/v1/telemetry",
        "/api/v1/quarantine",
        "/api/v1/devices",
        "/metrics",
        &format!("/api/v1/snapshots/{}", Ulid::new()),
        "/api/v1/nonesuch",
    ] {
        let a = call(&hub, "GET", path, None).await;
        assert_eq!(a.status, 401, "{path}: {}", a.body);
        assert!(
            a.challenge.as_deref().unwrap_or("").starts_with("Bearer"),
            "{path}: {:?}",
            a.challenge
        );
        assert!(
            a.json()["error"]
                .as_str()
                .unwrap()
                .contains("Authorization"),
            "{}",
            a.body
        );
    }
    // Malformed header, unknown token: 401.
    let a = call(&hub, "GET", "/api/v1/events", Some("Basic Zm9vOmJhcg==")).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.challenge.as_deref().unwrap().contains("invalid_request"));
    let forged = format!("csb_{}", "0".repeat(64));
    let a = call(&hub, "GET", "/api/v1/events", Some(&bearer(&forged))).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.challenge.as_deref().unwrap().contains("invalid_token"));
    assert!(a.json()["error"].as_str().unwrap().contains("revoked"));

    // The viewer reads; the scheme name is case-insensitive.
    let a = call(&hub, "GET", "/api/v1/events", Some(&bearer(&viewer))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["count"], 1);
    let a = call(&hub, "GET", "/metrics", Some(&format!("bearer {viewer}"))).await;
    assert_eq!(a.status, 200, "{}", a.body);

    // Writes need operator, management admin: 403 naming the role needed.
    let a = call(&hub, "DELETE", "/api/v1/events", Some(&bearer(&viewer))).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let msg = a.json()["error"].as_str().unwrap().to_string();
    assert!(
        msg.contains("`operator`") && msg.contains("grafana"),
        "{msg}"
    );
    // The operator passes the gate; the route itself has no DELETE.
    let a = call(&hub, "DELETE", "/api/v1/events", Some(&bearer(&operator))).await;
    assert_eq!(a.status, 405, "{}", a.body);
    let a = call(
        &hub,
        "GET",
        "/api/v1/admin/tokens",
        Some(&bearer(&operator)),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("`admin`"), "{}", a.body);

    // Evidence: signed by the device, stored.
    let key = signing_key(&secret);
    let (id, ev) = (Ulid::new(), Ulid::new());
    let sig = sign_upload(&key, &id.to_string(), DEVICE, &ev.to_string(), JPEG);
    let a = upload(&hub, id, DEVICE, ev, Some(sig), None).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let a = call(
        &hub,
        "GET",
        &format!("/api/v1/snapshots/{id}"),
        Some(&bearer(&viewer)),
    )
    .await;
    assert_eq!(a.status, 200);

    // Refused with 401 and nothing stored: another key's signature, a signature made for another
    // id (replay), no signature (an operator token does not replace it), a device without
    // credentials.
    let mut refused = Vec::new();
    let other = signing_key("not the device secret");
    let id = Ulid::new();
    let a = upload(
        &hub,
        id,
        DEVICE,
        ev,
        Some(sign_upload(
            &other,
            &id.to_string(),
            DEVICE,
            &ev.to_string(),
            JPEG,
        )),
        None,
    )
    .await;
    refused.push((id, a, "signature"));
    let id = Ulid::new();
    let replayed = sign_upload(
        &key,
        &Ulid::new().to_string(),
        DEVICE,
        &ev.to_string(),
        JPEG,
    );
    let a = upload(&hub, id, DEVICE, ev, Some(replayed), None).await;
    refused.push((id, a, "signature"));
    let id = Ulid::new();
    let a = upload(&hub, id, DEVICE, ev, None, Some(&bearer(&operator))).await;
    refused.push((id, a, "X-Csb-Signature"));
    let id = Ulid::new();
    let stranger = "yuexi/gw-99";
    let sig = sign_upload(&key, &id.to_string(), stranger, &ev.to_string(), JPEG);
    let a = upload(&hub, id, stranger, ev, Some(sig), None).await;
    refused.push((id, a, "no credentials"));
    for (id, a, needle) in &refused {
        assert_eq!(a.status, 401, "{}", a.body);
        assert!(
            a.challenge
                .as_deref()
                .unwrap_or("")
                .starts_with("CSB-Signature"),
            "{:?}",
            a.challenge
        );
        assert!(a.body.contains(needle), "{needle}: {}", a.body);
        let g = call(
            &hub,
            "GET",
            &format!("/api/v1/snapshots/{id}"),
            Some(&bearer(&viewer)),
        )
        .await;
        assert_eq!(g.status, 404, "refused upload {id} must not be stored");
    }

    // Revoked: refused once the hub has re-read the file (within about a second).
    tokens::revoke(dir.path(), "grafana").unwrap();
    let mut status = StatusCode::OK;
    for _ in 0..40 {
        status = call(&hub, "GET", "/api/v1/events", Some(&bearer(&viewer)))
            .await
            .status;
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401, "revoked token still accepted after 4 s");

    // Every refusal counted by reason, in health and in /metrics.
    let health = call(&hub, "GET", "/api/v1/health", None).await.json();
    let by = &health["http_auth"]["refused_by_reason"];
    assert_eq!(by["missing_token"], 7, "{health:#}");
    assert_eq!(by["malformed_token"], 1, "{health:#}");
    assert!(by["unknown_token"].as_u64().unwrap() >= 2, "{health:#}");
    assert_eq!(by["insufficient_role"], 2, "{health:#}");
    assert_eq!(by["upload_bad_signature"], 2, "{health:#}");
    assert_eq!(by["upload_unsigned"], 1, "{health:#}");
    assert_eq!(by["upload_unknown_device"], 1, "{health:#}");
    assert_eq!(health["evidence"]["uploads_stored"], 1, "{health:#}");
    let text = call(&hub, "GET", "/metrics", Some(&bearer(&operator)))
        .await
        .body;
    assert!(
        text.contains("csb_hub_http_auth_refused_total{reason=\"missing_token\"} 7\n"),
        "{text}"
    );
    assert!(
        text.contains("csb_hub_http_auth_refused_total{reason=\"upload_bad_signature\"} 2\n"),
        "{text}"
    );
    // Tokens never reach the data directory in the clear.
    let on_disk = std::fs::read_to_string(tokens::file_path(dir.path())).unwrap();
    assert!(!on_disk.contains(&operator[4..]));

    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_auth_off_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), free_port()).await;
    assert_eq!(call(&hub, "GET", "/api/v1/events", None).await.status, 200);
    // Unsigned upload from a device without credentials: stored as before.
    let a = upload(&hub, Ulid::new(), DEVICE, Ulid::new(), None, None).await;
    assert_eq!(a.status, 201, "{}", a.body);
    hub.stop().await;
}
