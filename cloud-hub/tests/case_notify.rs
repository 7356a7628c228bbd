//! How departments hear of their cases, in a running hub with `[auth] http = "required"`:
//!
//! - the change stream (`GET /api/v1/cases/stream`, SSE): a handler's stream carries its own
//!   department's cases only, each change once with its position; `Last-Event-ID` resumes;
//! - department webhooks: a real HTTP endpoint that fails twice gets the case's entries on the
//!   third try, each try signed (HMAC-SHA256 of `timestamp.body` with the department's secret)
//!   and carrying the same delivery id; later changes deliver only the new entries; a department
//!   whose endpoint is down is tried `attempts` times, each failure visible on the case, then
//!   given up with a `notify_failed` timeline entry and counted — never silently.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use cloud_hub::config::{Webhook, Webhooks};
use cloud_hub::http::tokens::{self, Role};
use cloud_hub::HttpAuth;
use common::*;
use csb_test_support::http::SseReader;
use serde_json::{json, Value};

const URBAN_SECRET: &str = "urban-secret-0123456789";

/// What the department's endpoint received: headers and body of each request.
type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A department's endpoint: answers 500 to the first `fail` requests, then 204.
async fn endpoint(fail: usize) -> (String, Received) {
    let got: Received = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let mut s = seen.lock().unwrap();
                s.push((headers, body.to_vec()));
                if s.len() <= fail {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("header {name}"))
        .to_str()
        .unwrap()
}

async fn call(hub: &TestHub, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
    csb_test_support::http::call_ok(&hub.base, method, path, token, body).await
}

/// A case reported by the operator and dispatched to `department`; its id.
async fn dispatched(hub: &TestHub, operator: &str, department: &str) -> String {
    let case = call(
        hub,
        "POST",
        "/api/v1/cases",
        operator,
        Some(json!({"category": "illegal-parking", "note": "van on the pavement"})),
    )
    .await;
    let id = case["id"].as_str().unwrap().to_string();
    for action in [
        json!({"action": "register"}),
        json!({"action": "dispatch", "department": department}),
    ] {
        call(
            hub,
            "POST",
            &format!("/api/v1/cases/{id}/actions"),
            operator,
            Some(action),
        )
        .await;
    }
    id
}

async fn stream(hub: &TestHub, token: &str, last: Option<&str>) -> SseReader {
    let mut req = client()
        .get(format!("{}/api/v1/cases/stream", hub.base))
        .bearer_auth(token)
        .timeout(Duration::from_secs(60));
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    SseReader::new(resp)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

/// Waits until `pred` holds for the case, which it returns.
async fn case_until(
    hub: &TestHub,
    token: &str,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..200 {
        let c = call(hub, "GET", &format!("/api/v1/cases/{id}"), token, None).await;
        if pred(&c) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("case {id}: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departments_hear_of_their_cases_by_stream_and_by_signed_retried_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let add = |name, role, dep| tokens::add_with(dir.path(), name, role, dep).unwrap();
    let operator = add("desk", Role::Operator, None);
    let urban = add("um-1", Role::Handler, Some("urban-mgmt"));
    let (url, got) = endpoint(2).await;
    let secret_file = |name: &str, secret: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{secret}\n")).unwrap();
        p
    };
    let hooks = vec![
        Webhook {
            department: "urban-mgmt".into(),
            url,
            secret_file: secret_file("urban.key", URBAN_SECRET),
        },
        // Nothing listens there.
        Webhook {
            department: "traffic-police".into(),
            url: format!("http://127.0.0.1:{}/hook", free_port()),
            secret_file: secret_file("police.key", "police-secret-0123456789"),
        },
    ];
    let hub = TestHub::start_with(dir.path(), free_port(), |c| {
        c.auth.http = HttpAuth::Required;
        c.case_sweep_ms = 100;
        c.webhooks = Webhooks {
            timeout_ms: 2_000,
            // Long enough for the test to see a failed try on the case before the next.
            retry_first_ms: 1_000,
            retry_max_ms: 1_000,
            attempts: 3,
            hooks,
        };
    })
    .await;
    let mut sse = stream(&hub, &urban, None).await;

    let police_case = dispatched(&hub, &operator, "traffic-police").await;
    let urban_case = dispatched(&hub, &operator, "urban-mgmt").await;

    // The urban handler's stream: its case's dispatch, and nothing of the police's case.
    let (ev, first_id, change) = sse
        .next_matching(10, |ev, _, v| ev == "change" && v["action"] == "dispatch")
        .await;
    assert_eq!(ev, "change");
    assert_eq!(change["id"], urban_case, "{change}");
    assert_eq!(change["state"], "dispatched");
    assert_eq!(change["department"], "urban-mgmt");

    // The police endpoint is down: each failure shows on the case (and later it is given up).
    let police = case_until(&hub, &operator, &police_case, "a failed try shows", |c| {
        c["notices"][0]["attempts"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let notice = &police["notices"][0];
    assert_eq!(notice["department"], "traffic-police");
    assert!(
        notice["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{notice}"
    );
    // Third try delivers: the two failures were retried with the same delivery id, each
    // signed over its own timestamp.
    let delivered = case_until(&hub, &urban, &urban_case, "webhook delivered", |c| {
        c.get("notices").is_none()
    })
    .await;
    let requests = got.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "two failures, then delivered");
    let delivery = header(&requests[0].0, "x-csb-delivery").to_string();
    for (h, body) in &requests {
        assert_eq!(header(h, "x-csb-delivery"), delivery);
        assert_eq!(header(h, "content-type"), "application/json");
        let ts = header(h, "x-csb-timestamp");
        let mac = csb_wire::sign::hmac(
            URBAN_SECRET.as_bytes(),
            &[ts.as_bytes(), b".", body.as_slice()],
        );
        assert_eq!(
            header(h, "x-csb-signature"),
            format!("sha256={}", csb_wire::sign::hex_lower(&mac)),
            "signed with the department's secret"
        );
    }
    let body: Value = serde_json::from_slice(&requests[2].1).unwrap();
    assert_eq!(body["delivery"], delivery);
    assert_eq!(body["department"], "urban-mgmt");
    assert_eq!(body["case"]["id"], urban_case);
    assert_eq!(body["case"]["state"], "dispatched");
    assert_eq!(body["case"]["href"], format!("/api/v1/cases/{urban_case}"));
    let actions: Vec<&str> = body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["dispatch"],
        "entries since it reached the department"
    );
    assert!(
        delivered["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] != "notify_failed"),
        "{delivered:#}"
    );

    let police = case_until(&hub, &operator, &police_case, "given up", |c| {
        c["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "notify_failed")
    })
    .await;
    assert!(police.get("notices").is_none(), "{police:#}");
    let failed = police["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "notify_failed")
        .unwrap();
    assert_eq!(failed["department"], "traffic-police");
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["actor"]["id"], "system");
    assert!(failed["error"].as_str().unwrap().contains("cannot connect"));

    // The handler takes the case up: only that new entry goes to the department, under a new
    // delivery id; the stream carries it too.
    call(
        &hub,
        "POST",
        &format!("/api/v1/cases/{urban_case}/actions"),
        &urban,
        Some(json!({"action": "accept", "note": "on our way"})),
    )
    .await;
    let (_, accept_id, change) = sse
        .next_matching(10, |ev, _, v| ev == "change" && v["action"] == "accept")
        .await;
    assert_eq!(change["id"], urban_case);
    assert_eq!(change["state"], "handling");
    assert!(accept_id.parse::<u64>().unwrap() > first_id.parse::<u64>().unwrap());
    case_until(&hub, &urban, &urban_case, "accept delivered", |c| {
        c.get("notices").is_none() && got.lock().unwrap().len() == 4
    })
    .await;
    let (h, body) = got.lock().unwrap()[3].clone();
    assert_ne!(header(&h, "x-csb-delivery"), delivery);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["case"]["state"], "handling");
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{body:#}");
    assert_eq!(entries[0]["action"], "accept");
    assert_eq!(entries[0]["actor"]["id"], "um-1");
    assert_eq!(entries[0]["note"], "on our way");

    // Nothing of the police case reached the urban handler's stream.
    assert!(
        sse.seen.iter().all(|(_, _, v)| v["id"] != police_case),
        "{:?}",
        sse.seen
    );

    // Resuming after the first change gives the ones after it, once each.
    let mut resumed = stream(&hub, &urban, Some(&first_id)).await;
    let (_, again, change) = resumed.next_matching(10, |ev, _, _| ev == "change").await;
    assert_eq!(again, accept_id, "{change}");
    // A position from an earlier boot (or older than what is kept) is told it missed some.
    let mut stale = stream(&hub, &urban, Some("12")).await;
    let (ev, _, lagged) = stale.next_matching(10, |_, _, _| true).await;
    assert_eq!(ev, "lagged", "{lagged}");

    // A malformed filter is named.
    let resp = client()
        .get(format!(
            "{}/api/v1/cases/stream?department=Urban%20Mgmt",
            hub.base
        ))
        .bearer_auth(&urban)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("department"));

    let m = call_metrics(&hub, &operator).await;
    assert_eq!(metric(&m, "csb_hub_webhook_delivered_total"), 2);
    // Two for urban (then delivered), two for the police (its third try given up).
    assert_eq!(metric(&m, "csb_hub_webhook_failed_total"), 4);
    assert_eq!(metric(&m, "csb_hub_webhook_given_up_total"), 1);
    hub.stop().await;
}

async fn call_metrics(hub: &TestHub, token: &str) -> String {
    client()
        .get(format!("{}/metrics", hub.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_of_an_unknown_department_or_without_its_secret_stops_the_hub_with_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = |department: &str, secret_file: std::path::PathBuf| {
        let mut c = hub_config(&dir.path().join(department), "127.0.0.1:0".parse().unwrap());
        c.webhooks.hooks = vec![Webhook {
            department: department.into(),
            url: "http://127.0.0.1:9/hook".into(),
            secret_file,
        }];
        c
    };
    let start = |c: cloud_hub::HubConfig| async move {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        match cloud_hub::serve(c, http, async {}).await {
            Err(e) => e.to_string(),
            Ok(()) => panic!("the hub started"),
        }
    };
    let missing = dir.path().join("nope.key");
    let err = start(config("urban-mgmt", missing)).await;
    assert!(
        err.contains("urban-mgmt") && err.contains("nope.key"),
        "{err}"
    );
    let key = dir.path().join("k.key");
    std::fs::write(&key, "0123456789abcdef0123\n").unwrap();
    let err = start(config("parks", key)).await;
    assert!(
        err.contains("parks") && err.contains("departments.toml"),
        "{err}"
    );
}
