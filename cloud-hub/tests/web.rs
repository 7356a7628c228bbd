//! What the web page stands on, in a running hub with `[auth] http = "required"`:
//!
//! - sign-in: a token is exchanged for an HttpOnly, SameSite=Strict cookie that then
//!   authenticates calls with the token's role; a write with the cookie from another origin is
//!   refused; signing out ends the session; sessions survive a hub restart;
//! - a case read through the API says which actions the caller may take; who may act on it
//!   may add a photo (`POST /api/v1/cases/{id}/photos`), which the next action names;
//! - the live stream (`/api/v1/live`): `hello`, then stored rule events, coalesced device
//!   states and case changes, each with its position in all three feeds; a handler sees its
//!   own department's cases only; `Last-Event-ID` resumes where the client stopped;
//! - the page's paths are answered with the page (or a 503 saying how to build it), never
//!   with the API's 404, under a strict Content-Security-Policy.

mod common;

use std::time::Duration;

use cloud_hub::http::tokens::{self, Role};
use cloud_hub::HttpAuth;
use common::*;
use csb_test_support::http::SseReader;
use csb_wire::{CameraState, DeviceState};
use serde_json::{json, Value};

fn session_of(resp: &reqwest::Response) -> String {
    let c = resp.headers()["set-cookie"].to_str().unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(c.contains(part), "{c}");
    }
    c.split(';')
        .next()
        .unwrap()
        .strip_prefix("csb_session=")
        .unwrap()
        .to_string()
}

async fn sign_in(hub: &TestHub, token: &str) -> reqwest::Response {
    client()
        .post(format!("{}/api/v1/session", hub.base))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap()
}

/// A request with the session cookie (and, for writes, the page's own `Origin`).
fn with_cookie(
    hub: &TestHub,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
) -> reqwest::RequestBuilder {
    let write = method != reqwest::Method::GET;
    let mut r = client()
        .request(method, format!("{}{path}", hub.base))
        .header("cookie", format!("csb_session={cookie}"));
    if write {
        r = r.header("origin", hub.base.clone());
    }
    r
}

/// `GET path` with the session cookie, as JSON.
async fn get_json(hub: &TestHub, path: &str, cookie: &str) -> Value {
    with_cookie(hub, reqwest::Method::GET, path, cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn live(hub: &TestHub, cookie: &str, last: Option<&str>) -> SseReader {
    let mut r = with_cookie(hub, reqwest::Method::GET, "/api/v1/live", cookie)
        .timeout(Duration::from_secs(60));
    if let Some(l) = last {
        r = r.header("last-event-id", l);
    }
    let resp = r.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    SseReader::new(resp)
}

async fn act(hub: &TestHub, cookie: &str, id: &str, action: Value) -> Value {
    let resp = with_cookie(
        hub,
        reqwest::Method::POST,
        &format!("/api/v1/cases/{id}/actions"),
        cookie,
    )
    .json(&action)
    .send()
    .await
    .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{action}: {status} {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_case_actions_and_the_live_stream() {
    let dir = tempfile::tempdir().unwrap();
    let add = |name, role, dep| tokens::add_with(dir.path(), name, role, dep).unwrap();
    let operator = add("desk", Role::Operator, None);
    let police = add("tp-1", Role::Handler, Some("traffic-police"));
    let viewer = add("leader", Role::Viewer, None);
    let port = free_port();
    let config = |c: &mut cloud_hub::HubConfig| {
        c.auth.http = HttpAuth::Required;
        c.county_dir = Some(county_dir());
    };
    let hub = TestHub::start_with(dir.path(), port, config).await;

    // The page's paths: the page (or how to build it), never the API's 404 or a 401.
    for path in ["/", "/cases", "/map"] {
        let r = client()
            .get(format!("{}{path}", hub.base))
            .send()
            .await
            .unwrap();
        assert!(
            matches!(r.status().as_u16(), 200 | 503),
            "{path}: {}",
            r.status()
        );
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }

    // Sign-in: a wrong token is refused; a right one gets the cookie.
    let r = client()
        .post(format!("{}/api/v1/session", hub.base))
        .json(&json!([null]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a body that is not {{\"token\": …}}");
    let r = sign_in(&hub, "csb_not-a-token").await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let r = sign_in(&hub, &operator).await;
    assert_eq!(r.status(), 200);
    let op = session_of(&r);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["role"], "operator");
    assert_eq!(me["auth"], true);
    let me: Value = get_json(&hub, "/api/v1/session", &op).await;
    assert_eq!(me["name"], "desk");
    let (status, nobody) = hub.get_status("/api/v1/session").await;
    assert_eq!(status, 200, "asking who one is is never refused: {nobody}");
    assert_eq!(
        nobody["signed_in"], false,
        "no cookie, no token: not signed in"
    );
    assert!(nobody["role"].is_null());
    // The map's frame: the county outline as GeoJSON (the real one, from ../shared).
    let r = with_cookie(&hub, reqwest::Method::GET, "/api/v1/county/outline", &op)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/geo+json");
    let outline: Value = r.json().await.unwrap();
    assert_eq!(outline["type"], "Feature");
    assert_eq!(outline["properties"]["adcode"], 340828);
    assert!(
        ["Polygon", "MultiPolygon"].contains(&outline["geometry"]["type"].as_str().unwrap()),
        "{}",
        outline["geometry"]["type"]
    );
    let tp = session_of(&sign_in(&hub, &police).await);
    let leader = session_of(&sign_in(&hub, &viewer).await);

    // The live streams open before anything happens.
    let mut op_live = live(&hub, &op, None).await;
    let mut tp_live = live(&hub, &tp, None).await;
    let (_, _, hello) = op_live.next_matching(10, |e, _, _| e == "hello").await;
    assert_eq!(hello["resumed"], false);
    assert!(hello["server_ms"].as_i64().unwrap() > 0);
    op_live.next_matching(10, |e, _, _| e == "heartbeat").await;

    // A write with the cookie from another page is refused; from the hub's own, taken.
    let report = json!({"category": "illegal-parking", "note": "van on the pavement"});
    let r = client()
        .post(format!("{}/api/v1/cases", hub.base))
        .header("cookie", format!("csb_session={op}"))
        .header("origin", "http://127.0.0.1:1")
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = with_cookie(&hub, reqwest::Method::POST, "/api/v1/cases", &op)
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let case: Value = r.json().await.unwrap();
    let id = case["id"].as_str().unwrap().to_string();
    let actions = |c: &Value| -> Vec<String> {
        c["actions"]
            .as_array()
            .unwrap_or_else(|| panic!("actions in {c}"))
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(actions(&case), ["register", "reject", "void"]);
    let case_as = |cookie: &str| {
        with_cookie(
            &hub,
            reqwest::Method::GET,
            &format!("/api/v1/cases/{id}"),
            cookie,
        )
        .send()
    };
    let seen: Value = case_as(&leader).await.unwrap().json().await.unwrap();
    assert!(actions(&seen).is_empty(), "a viewer may do nothing: {seen}");
    // The list does not carry them (a page of cases stays cheap).
    let list: Value = get_json(&hub, "/api/v1/cases", &op).await;
    assert!(list["cases"][0].get("actions").is_none());

    act(&hub, &op, &id, json!({"action": "register"})).await;
    let c = act(
        &hub,
        &op,
        &id,
        json!({"action": "dispatch", "department": "traffic-police"}),
    )
    .await;
    assert_eq!(c["case"]["state"], "dispatched", "{c}");
    assert!(
        actions(&c["case"]).is_empty(),
        "the operator's part is done: {c}"
    );
    let seen: Value = case_as(&tp).await.unwrap().json().await.unwrap();
    let mut tp_can = actions(&seen);
    tp_can.sort();
    assert_eq!(
        tp_can,
        ["accept", "report_handled", "request_extension", "return"]
    );

    // The case's changes reach both streams; the handler's is about its own department.
    let (_, _, ch) = op_live
        .next_matching(10, |e, _, v| e == "case" && v["action"] == "dispatch")
        .await;
    assert_eq!(ch["id"], id);
    let (_, last, ch) = tp_live.next_matching(10, |e, _, _| e == "case").await;
    assert_eq!(
        ch["action"], "dispatch",
        "the report and register were not its: {ch}"
    );

    // A rule event stored by ingest reaches the stream; a detection does not (by default).
    let agent = Client::connect(hub.mqtt, "gw-demo-01").await;
    agent
        .publish(
            &topic("gw-demo-01", "status"),
            json(
                &StatusBuilder::new("gw-demo-01", DeviceState::Online)
                    .camera("cam-tiantang-01", CameraState::Running)
                    .build(),
            ),
        )
        .await;
    let detection = EventBuilder::detection()
        .device("gw-demo-01")
        .camera("cam-tiantang-01")
        .objects(&[(2, "car")])
        .build();
    let rule = EventBuilder::rule("illegal_parking")
        .device("gw-demo-01")
        .camera("cam-tiantang-01")
        .objects(&[(2, "car")])
        .build();
    agent
        .publish(&topic("gw-demo-01", "event"), json(&detection))
        .await;
    agent
        .publish(&topic("gw-demo-01", "event"), json(&rule))
        .await;
    let (_, _, ev) = op_live.next_matching(10, |e, _, _| e == "event").await;
    assert_eq!(
        ev["id"],
        rule.id.to_string(),
        "the rule event, not the detection"
    );
    assert_eq!(ev["kind"], "rule");
    // The device came online: its states, gathered into one `devices` message.
    let (_, _, dev) = op_live
        .next_matching(10, |e, _, v| {
            e == "devices"
                && v["changes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["type"] == "Camera" && c["attrs"]["cameraState"] == "running")
        })
        .await;
    assert!(
        dev["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| ["Gateway", "Camera", "Sensor"].contains(&c["type"].as_str().unwrap())),
        "{dev}"
    );

    // Resuming: the handler's stream stops after the dispatch; the case moves on meanwhile;
    // a stream opened with the last id gets exactly what was missed.
    drop(tp_live);
    let tp_cookie = tp.clone();
    act(&hub, &tp_cookie, &id, json!({"action": "accept"})).await;
    let mut again = live(&hub, &tp, Some(&last)).await;
    let (_, _, hello) = again.next_matching(10, |e, _, _| e == "hello").await;
    assert_eq!(hello["resumed"], true);
    let (_, _, ch) = again.next_matching(10, |e, _, _| e == "case").await;
    assert_eq!(ch["action"], "accept");
    assert!(
        !again.seen.iter().any(|(e, _, _)| e == "resync"),
        "{:?}",
        again.seen
    );
    drop(again);
    drop(op_live);

    // A photo of the work, from the handler now working on the case: stored and served; then
    // named by the report. Who may not act on the case now may not add one.
    let photo = |cookie: &str, ctype: &str, body: &'static [u8]| {
        with_cookie(
            &hub,
            reqwest::Method::POST,
            &format!("/api/v1/cases/{id}/photos"),
            cookie,
        )
        .header("content-type", ctype.to_string())
        .body(body)
        .send()
    };
    const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0 a photo of the cleared pavement";
    let r = photo(tp.as_str(), "image/jpeg", JPEG).await.unwrap();
    assert_eq!(r.status(), 201);
    let stored: Value = r.json().await.unwrap();
    let pid = stored["id"].as_str().unwrap().to_string();
    let r = with_cookie(
        &hub,
        reqwest::Method::GET,
        stored["url"].as_str().unwrap(),
        &tp,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-csb-device"], format!("cases/{id}").as_str());
    assert_eq!(&r.bytes().await.unwrap()[..], JPEG);
    for (who, ctype, body, status) in [
        (&leader, "image/jpeg", JPEG, 403),
        (&op, "image/jpeg", JPEG, 409),
        (&tp, "image/png", JPEG, 415),
        (&tp, "image/jpeg", &b"GIF89a"[..], 400),
        (&tp, "image/jpeg", &b""[..], 400),
    ] {
        let r = photo(who.as_str(), ctype, body).await.unwrap();
        assert_eq!(r.status(), status, "{ctype} {body:?}");
    }
    let c = act(
        &hub,
        &tp,
        &id,
        json!({"action": "report_handled", "photos": [pid]}),
    )
    .await;
    assert_eq!(c["case"]["state"], "verifying", "{c}");
    assert!(c["case"]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == pid.as_str()));

    // Signing out ends the session (the cookie is cleared too).
    let r = with_cookie(&hub, reqwest::Method::DELETE, "/api/v1/session", &leader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let r: Value = get_json(&hub, "/api/v1/session", &leader).await;
    assert_eq!(r["signed_in"], false, "{r}");
    let r = with_cookie(&hub, reqwest::Method::GET, "/api/v1/events", &leader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the ended session reads nothing");

    // A restarted hub keeps the sessions it had.
    agent.cut().await;
    hub.stop().await;
    let hub = TestHub::start_with(dir.path(), port, config).await;
    let r: Value = get_json(&hub, "/api/v1/session", &op).await;
    assert_eq!(r["signed_in"], true, "{r}");
    assert_eq!(r["name"], "desk");
    let metrics = client()
        .get(format!("{}/metrics", hub.base))
        .header("cookie", format!("csb_session={op}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("csb_hub_http_auth_refused_total{reason=\"unknown_session\"}"));
    hub.stop().await;
}
