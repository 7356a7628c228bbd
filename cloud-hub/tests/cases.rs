//! The case workflow in a running hub, over real MQTT and HTTP with `[auth] http = "required"`:
//! illegal-parking rule events from the sample county's no-parking camera open one case,
//! registered and dispatched by the routing table (the zone's route: traffic police), repeats
//! merge into it; then each role acts through `/api/v1/cases` — a viewer cannot act, another
//! department's handler cannot see it, the handler cannot close, a supervisor approves an
//! extension, an operator closes (a repeated request acts once); every step is in the timeline
//! with who, and all of it survives a restart. Malformed requests name what was wrong.

mod common;

use std::time::Duration;

use cloud_hub::http::tokens::{self, Role};
use cloud_hub::HttpAuth;
use common::*;
use csb_wire::Phase;
use reqwest::StatusCode;
use serde_json::{json, Value};
use ulid::Ulid;

const DEVICE: &str = "gw-demo-01";
const CAMERA: &str = "cam-tiantang-01";

struct Tokens {
    viewer: String,
    operator: String,
    inspector: String,
    supervisor: String,
    police: String,
    urban: String,
}

fn issue(dir: &std::path::Path) -> Tokens {
    let add = |name, role, dep| tokens::add_with(dir, name, role, dep).unwrap();
    Tokens {
        viewer: add("leader", Role::Viewer, None),
        operator: add("desk", Role::Operator, None),
        inspector: add("patrol-7", Role::Inspector, None),
        supervisor: add("chief", Role::Supervisor, None),
        police: add("tp-1", Role::Handler, Some("traffic-police")),
        urban: add("um-1", Role::Handler, Some("urban-mgmt")),
    }
}

async fn call(
    hub: &TestHub,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    csb_test_support::http::call(&hub.base, method, path, token, body).await
}

async fn act(hub: &TestHub, id: &str, token: &str, body: Value) -> (StatusCode, Value) {
    call(
        hub,
        "POST",
        &format!("/api/v1/cases/{id}/actions"),
        token,
        Some(body),
    )
    .await
}

fn parked(problem: Ulid, seconds: i64, snapshot: Ulid) -> Vec<u8> {
    json_bytes(
        EventBuilder::rule("illegal_parking")
            .device(DEVICE)
            .camera(CAMERA)
            .objects(&[(2, "car")])
            .category("0505")
            .zone("no-parking-north")
            .phase(if seconds < 150 {
                Phase::Start
            } else {
                Phase::Update
            })
            .problem(problem)
            .duration(seconds * 1000)
            .snapshot(snapshot)
            .build(),
    )
}

fn json_bytes(e: csb_wire::Event) -> Vec<u8> {
    json(&e)
}

async fn open_cases(hub: &TestHub, token: &str) -> Vec<Value> {
    let (s, body) = call(hub, "GET", "/api/v1/cases?open=true", token, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["cases"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_events_become_one_dispatched_case_that_each_role_works_on() {
    let dir = tempfile::tempdir().unwrap();
    let t = issue(dir.path());
    let port = free_port();
    let start = || {
        TestHub::start_with(dir.path(), port, |c| {
            c.county_dir = Some(county_dir());
            c.auth.http = HttpAuth::Required;
        })
    };
    let hub = start().await;
    let edge = Client::connect(hub.mqtt, "gw-demo-01-test").await;
    let van = Ulid::new();
    let first_snapshot = Ulid::new();
    // 2 minutes parked is when illegal parking registers itself: the first sighting (60 s)
    // opens nothing.
    edge.publish(&topic(DEVICE, "event"), parked(van, 60, Ulid::new()))
        .await;
    edge.publish(&topic(DEVICE, "event"), parked(van, 130, first_snapshot))
        .await;
    let mut cases = Vec::new();
    for _ in 0..100 {
        cases = open_cases(&hub, &t.operator).await;
        if !cases.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cases.len(), 1, "{cases:#?}");
    let case = &cases[0];
    let id = case["id"].as_str().unwrap().to_string();
    assert_eq!(case["state"], "dispatched", "{case:#}");
    assert_eq!(case["source"], "video_ai");
    assert_eq!(case["category"], "illegal-parking");
    // The zone's route (traffic police), not the category's default (urban management).
    assert_eq!(case["department"], "traffic-police");
    assert_eq!(case["place"]["town"], "tiantang");
    assert_eq!(case["place"]["zone"], "zone-no-parking-north");
    assert_eq!(case["camera"], format!("yuexi/{DEVICE}/{CAMERA}"));
    assert!(case["evidence"]
        .as_array()
        .unwrap()
        .contains(&json!(first_snapshot.to_string())));
    assert_eq!(case["light"], "green");
    assert!(case["deadline_ms"].as_i64().unwrap() > case["created_ms"].as_i64().unwrap());

    // The van stays: three more sightings, still one case.
    for s in [190, 250, 310] {
        edge.publish(&topic(DEVICE, "event"), parked(van, s, Ulid::new()))
            .await;
    }
    let mut merged = 0;
    for _ in 0..100 {
        let (_, c) = call(
            &hub,
            "GET",
            &format!("/api/v1/cases/{id}"),
            &t.operator,
            None,
        )
        .await;
        merged = c["sightings"]["events"].as_u64().unwrap();
        if merged == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(merged, 4);
    assert_eq!(open_cases(&hub, &t.operator).await.len(), 1);

    // A leader sees it and cannot act.
    assert_eq!(open_cases(&hub, &t.viewer).await.len(), 1);
    let (s, body) = act(&hub, &id, &t.viewer, json!({"action": "accept"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    // Urban management's handler does not see the traffic police's case at all.
    assert!(open_cases(&hub, &t.urban).await.is_empty());
    let (s, _) = call(&hub, "GET", &format!("/api/v1/cases/{id}"), &t.urban, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = act(&hub, &id, &t.urban, json!({"action": "accept"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The traffic police's handler takes it up, asks for more time, and may not close it.
    assert_eq!(open_cases(&hub, &t.police).await.len(), 1);
    let (s, body) = act(
        &hub,
        &id,
        &t.police,
        json!({"action": "accept", "note": "on my way"}),
    )
    .await;
    assert_eq!(
        (s, &body["case"]["state"]),
        (StatusCode::OK, &json!("handling")),
        "{body}"
    );
    let (s, body) = act(&hub, &id, &t.police, json!({"action": "close"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let before = body_deadline(&hub, &id, &t.operator).await;
    let (s, body) = act(
        &hub,
        &id,
        &t.police,
        json!({"action": "request_extension", "value": 1, "note": "tow truck busy"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = act(
        &hub,
        &id,
        &t.operator,
        json!({"action": "approve_extension"}),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "only a supervisor approves: {body}"
    );
    let (s, body) = act(
        &hub,
        &id,
        &t.supervisor,
        json!({"action": "approve_extension"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(
        body["case"]["deadline_ms"].as_i64().unwrap() > before,
        "{body}"
    );
    let (s, _) = act(
        &hub,
        &id,
        &t.police,
        json!({"action": "report_handled", "photos": []}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // The operator verifies and closes; the same request again acts once.
    let close = json!({"action": "close", "note": "van gone", "request_id": "desk-42"});
    let (s, first) = act(&hub, &id, &t.operator, close.clone()).await;
    assert_eq!(
        (s, &first["case"]["state"]),
        (StatusCode::OK, &json!("closed")),
        "{first}"
    );
    let (s, again) = act(&hub, &id, &t.operator, close).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(first["entry"], again["entry"]);
    let (s, body) = act(
        &hub,
        &id,
        &t.operator,
        json!({"action": "rework", "request_id": "desk-42"}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");

    // An inspector reports garbage on patrol: it waits at 上报 for an operator.
    let (s, reported) = call(
        &hub,
        "POST",
        "/api/v1/cases",
        &t.inspector,
        Some(json!({"category": "0102", "place": {"town": "tiantang", "point": [116.36, 30.85]}, "note": "bags by the bin"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{reported}");
    assert_eq!(reported["state"], "reported");
    assert_eq!(reported["source"], "inspector");
    // What the inspector wrote is stored with the case, not only answered.
    let rid = reported["id"].as_str().unwrap();
    let (_, again) = call(
        &hub,
        "GET",
        &format!("/api/v1/cases/{rid}"),
        &t.viewer,
        None,
    )
    .await;
    assert_eq!(again["timeline"][0]["note"], "bags by the bin", "{again}");
    let (s, _) = call(
        &hub,
        "POST",
        "/api/v1/cases",
        &t.police,
        Some(json!({"category": "0102"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Malformed requests say what was wrong.
    let (s, body) = act(&hub, &id, &t.operator, json!({"action": "fly"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("fly"), "{body}");
    let (s, body) = call(
        &hub,
        "POST",
        "/api/v1/cases",
        &t.operator,
        Some(json!({"category": 7})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"].as_str().unwrap().contains("category"),
        "{body}"
    );
    let (s, body) = call(
        &hub,
        "POST",
        "/api/v1/cases",
        &t.operator,
        Some(json!({"category": "9999"})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (s, body) = call(&hub, "GET", "/api/v1/cases/not-an-id", &t.operator, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, body) = call(&hub, "GET", "/api/v1/cases?state=lost", &t.operator, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let resp = client()
        .post(format!("{}/api/v1/cases/{id}/actions", hub.base))
        .bearer_auth(&t.operator)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // This week's evaluation: the traffic police closed their one case on time.
    let now = csb_wire::now_ms();
    let (s, eval) = call(
        &hub,
        "GET",
        &format!(
            "/api/v1/evaluation?from={}&to={}",
            now - 86_400_000,
            now + 60_000
        ),
        &t.viewer,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{eval}");
    let tp = &eval["departments"]["traffic-police"];
    assert_eq!(
        (tp["registered"].as_u64(), tp["closed"].as_u64()),
        (Some(1), Some(1)),
        "{eval:#}"
    );
    assert_eq!(
        eval["cameras"][format!("yuexi/{DEVICE}/{CAMERA}")]["precision"],
        1.0
    );
    let csv = client()
        .get(format!(
            "{}/api/v1/evaluation?from={}&to={}&format=csv",
            hub.base,
            now - 86_400_000,
            now + 60_000
        ))
        .bearer_auth(&t.viewer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        csv.starts_with("department,registered,") && csv.contains("\ntraffic-police,1,1,"),
        "{csv}"
    );
    let (s, _) = call(
        &hub,
        "GET",
        "/api/v1/evaluation?from=2026-09-22T00:00:00Z&to=2026-09-21T00:00:00Z",
        &t.viewer,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // The same through the CLI an operator uses at a terminal.
    let cli = |args: &[&str], token: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloud-hub"))
            .arg("cases")
            .args(args)
            .args(["--url", &hub.base, "--token", token])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, table, err) = cli(&["list", "--state", "reported"], &t.operator);
    assert!(ok, "{err}");
    let reported_id = reported["id"].as_str().unwrap();
    assert!(
        table.starts_with("id\tstate\t") && table.contains(reported_id),
        "{table}"
    );
    let (ok, said, err) = cli(
        &["act", reported_id, "register", "--note", "seen on camera"],
        &t.operator,
    );
    assert!(
        ok && said.contains("register by desk → registered"),
        "{said}{err}"
    );
    let (ok, said, err) = cli(
        &[
            "act",
            reported_id,
            "dispatch",
            "--set",
            "department=urban-mgmt",
        ],
        &t.operator,
    );
    assert!(ok && said.contains("→ dispatched"), "{said}{err}");
    let (ok, _, err) = cli(&["act", reported_id, "close"], &t.police);
    assert!(
        !ok && err.contains("404"),
        "another department's case: {err}"
    );
    let (ok, shown, err) = cli(&["show", reported_id], &t.viewer);
    assert!(
        ok && shown.contains("dispatch") && shown.contains("urban-mgmt"),
        "{shown}{err}"
    );
    let from = (now - 86_400_000).to_string();
    let to = (now + 60_000).to_string();
    let (ok, eval, err) = cli(&["evaluate", "--from", &from, "--to", &to], &t.viewer);
    assert!(
        ok && eval.starts_with("部门\t立案") && eval.contains("traffic-police\t1\t"),
        "{eval}{err}"
    );

    let metrics = client()
        .get(format!("{}/metrics", hub.base))
        .bearer_auth(&t.viewer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in [
        "csb_hub_cases_opened_total 2\n",
        "csb_hub_cases_auto_registered_total 1\n",
        "csb_hub_case_merges_total 3\n",
        "csb_hub_case_sightings_waiting_total 1\n",
    ] {
        assert!(metrics.contains(want), "{want}: {metrics}");
    }

    // Everything was on disk before it was answered: a restarted hub has it all.
    drop(edge);
    hub.stop().await;
    let hub = start().await;
    let (s, case) = call(&hub, "GET", &format!("/api/v1/cases/{id}"), &t.viewer, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(case["state"], "closed");
    let who: Vec<(&str, &str)> = case["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"]["id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            ("report", "system"),
            ("register", "system"),
            ("dispatch", "system"),
            ("accept", "tp-1"),
            ("request_extension", "tp-1"),
            ("approve_extension", "chief"),
            ("report_handled", "tp-1"),
            // The camera was asked to look again (AI 核查); the desk closed it first.
            ("recheck_requested", "system"),
            ("close", "desk"),
        ]
    );
    assert_eq!(case["recheck"]["outcome"], "superseded", "{case:#}");
    assert!(case["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["at_ms"].as_i64().unwrap() > 0));
    let (_, all) = call(&hub, "GET", "/api/v1/cases?limit=1", &t.viewer, None).await;
    assert_eq!(all["count"], 1);
    let next = all["next"].as_str().unwrap();
    let (_, rest) = call(
        &hub,
        "GET",
        &format!("/api/v1/cases?after={next}"),
        &t.viewer,
        None,
    )
    .await;
    assert_eq!(rest["count"], 1);
    hub.stop().await;
}

async fn body_deadline(hub: &TestHub, id: &str, token: &str) -> i64 {
    let (_, c) = call(hub, "GET", &format!("/api/v1/cases/{id}"), token, None).await;
    c["deadline_ms"].as_i64().unwrap()
}
