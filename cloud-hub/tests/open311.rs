//! Open311 GeoReport v2 against a running hub (`[auth] http = "required"`, the sample county),
//! with a real HTTP client, in JSON and XML: the services are the governance categories; a
//! citizen app's request with lat/long and a photo URL becomes a case at 上报 in the right town;
//! an operator registers and dispatches it, routed by its location (the county seat's parking
//! to the traffic police, Laibang's to urban management); `GET requests/{id}` shows it open with
//! its deadline, then closed with the operator's closing note; a rejected duplicate is closed
//! with its reason; a retried request opens no second case; filters select; cases that are not
//! citizens' are not published; malformed requests get the spec's error list with the right
//! status, naming the field.

mod common;

use std::collections::BTreeMap;

use cloud_hub::http::tokens::{self, Role};
use cloud_hub::HttpAuth;
use common::*;
use quick_xml::events::Event;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The county seat's streets (天堂镇), outside every camera zone.
const SEAT: (&str, &str) = ("30.85", "116.36");
/// 来榜镇: parking there is urban management's.
const LAIBANG: (&str, &str) = ("30.90", "116.21");
const PHOTO: &str = "https://img.citizen.example/r/1.jpg?size=l&v=2";

struct Tokens {
    app: String,
    viewer: String,
    operator: String,
    police: String,
}

fn issue(dir: &std::path::Path) -> Tokens {
    let add = |name, role, dep| tokens::add_with(dir, name, role, dep).unwrap();
    Tokens {
        // The citizen app's key: an inspector-level token.
        app: add("citizen-app", Role::Inspector, None),
        viewer: add("leader", Role::Viewer, None),
        operator: add("desk", Role::Operator, None),
        police: add("tp-1", Role::Handler, Some("traffic-police")),
    }
}

/// A request's fields, the status it is refused with and words of the description.
type Refused<'a> = (Vec<(&'a str, &'a str)>, StatusCode, &'a str);

/// An answer as received: status, media type and text.
struct Answer {
    status: StatusCode,
    media: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        assert_eq!(self.media, "application/json", "{}", self.text);
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// The `item` elements under `root`, each as its children's text.
    fn xml(&self, root: &str, item: &str) -> Vec<BTreeMap<String, String>> {
        assert_eq!(self.media, "application/xml", "{}", self.text);
        xml_items(&self.text, root, item)
    }

    /// The spec's error list (JSON or XML) as (code, description).
    fn errors(&self) -> Vec<(u16, String)> {
        if self.media == "application/xml" {
            return self
                .xml("errors", "error")
                .into_iter()
                .map(|e| (e["code"].parse().unwrap(), e["description"].clone()))
                .collect();
        }
        self.json()
            .as_array()
            .unwrap_or_else(|| panic!("not an error list: {}", self.text))
            .iter()
            .map(|e| {
                (
                    e["code"].as_u64().unwrap() as u16,
                    e["description"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Asserts one error of `status` whose description contains `want`.
    fn refused(&self, status: StatusCode, want: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        let errors = self.errors();
        assert!(
            errors
                .iter()
                .any(|(c, d)| *c == status.as_u16() && d.contains(want)),
            "wanted an error containing {want:?}: {errors:?}"
        );
    }
}

async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let media = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    Answer {
        status,
        media,
        text: resp.text().await.unwrap(),
    }
}

/// GET without a token (Open311 reads are public).
async fn get(hub: &TestHub, path: &str) -> Answer {
    answer(client().get(format!("{}/open311/v2/{path}", hub.base))).await
}

/// POST a form, as Open311 clients do.
async fn post_form(hub: &TestHub, path: &str, pairs: &[(&str, &str)]) -> Answer {
    answer(
        client()
            .post(format!("{}/open311/v2/{path}", hub.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(pairs)),
    )
    .await
}

/// The REST case API, as the command center uses it.
async fn rest(hub: &TestHub, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
    csb_test_support::http::call_ok(&hub.base, method, path, token, body).await
}

async fn act(hub: &TestHub, id: &str, token: &str, body: Value) -> Value {
    let path = format!("/api/v1/cases/{id}/actions");
    rest(hub, "POST", &path, token, Some(body)).await["case"].clone()
}

/// The items of an XML document `<root><item><field>text</field>…</item>…</root>`, each as
/// field → text with references resolved; an empty element is "".
fn xml_items(doc: &str, root: &str, item: &str) -> Vec<BTreeMap<String, String>> {
    let mut r = quick_xml::Reader::from_str(doc);
    let (mut stack, mut items) = (Vec::<String>::new(), Vec::new());
    let mut current = BTreeMap::new();
    let mut text = String::new();
    loop {
        match r.read_event().unwrap_or_else(|e| panic!("{e}: {doc}")) {
            Event::Start(e) => {
                let name = e.name().as_ref().to_string();
                if stack.is_empty() {
                    assert_eq!(name, root, "{doc}");
                }
                if stack.len() == 1 {
                    assert_eq!(name, item, "{doc}");
                    current = BTreeMap::new();
                }
                text.clear();
                stack.push(name);
            }
            Event::Empty(e) => {
                let name = e.name().as_ref().to_string();
                match stack.len() {
                    0 => assert_eq!(name, root, "{doc}"),
                    2 => {
                        current.insert(name, String::new());
                    }
                    _ => panic!("unexpected <{name}/> in {doc}"),
                }
            }
            Event::Text(t) => text.push_str(&t),
            Event::GeneralRef(g) => {
                let c = match g.resolve_char_ref().unwrap() {
                    Some(c) => c.to_string(),
                    None => {
                        let name: &str = &g;
                        quick_xml::escape::resolve_xml_entity(name)
                            .unwrap_or_else(|| panic!("&{name}; in {doc}"))
                            .to_string()
                    }
                };
                text.push_str(&c);
            }
            Event::End(_) => {
                let name = stack.pop().unwrap();
                match stack.len() {
                    2 => {
                        current.insert(name, std::mem::take(&mut text));
                    }
                    1 => items.push(std::mem::take(&mut current)),
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    items
}

/// `ms` as the hub should write it: ISO 8601 in +08:00.
fn beijing(ms: i64) -> String {
    let offset = time::UtcOffset::from_hms(8, 0, 0).unwrap();
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap()
        .to_offset(offset);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+08:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn report<'a>(
    key: &'a str,
    (lat, long): (&'a str, &'a str),
    device: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("api_key", key),
        // The legacy code: any of a category's codes names its service.
        ("service_code", "0505"),
        ("lat", lat),
        ("long", long),
        ("description", "白色面包车堵住消防通道 <b> & \"快来\""),
        ("media_url", PHOTO),
        ("email", "li.lei@example.cn"),
        ("first_name", "磊"),
        ("last_name", "李"),
        ("phone", "13800138000"),
        ("device_id", device),
        ("attribute[plate]", "皖H·12345"),
    ]
}

/// The one created request of a `POST` answer: its id.
fn created(a: &Answer) -> String {
    let v = a.json();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["account_id"], Value::Null);
    assert!(
        list[0]["service_notice"]
            .as_str()
            .unwrap()
            .contains("2 个工作小时"),
        "{v}"
    );
    list[0]["service_request_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citizens_request_becomes_a_case_routed_by_its_place_and_comes_back_closed() {
    let dir = tempfile::tempdir().unwrap();
    let t = issue(dir.path());
    let hub = TestHub::start_with(dir.path(), free_port(), |c| {
        c.county_dir = Some(county_dir());
        c.auth.http = HttpAuth::Required;
    })
    .await;

    // The services: every category of the governance configuration, no token needed.
    let categories = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs/governance/categories.toml"),
    )
    .unwrap();
    let n = categories.matches("[[category]]").count();
    let a = get(&hub, "services.json").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let services = a.json();
    let services = services.as_array().unwrap();
    assert_eq!(services.len(), n);
    let parking = services
        .iter()
        .find(|s| s["service_code"] == "09009")
        .unwrap();
    assert_eq!(parking["service_name"], "机动车乱停放");
    assert_eq!(
        (&parking["group"], &parking["type"], &parking["metadata"]),
        (&json!("事件"), &json!("realtime"), &json!(false))
    );
    assert!(parking["keywords"].as_str().unwrap().contains("0505"));
    // 道路积水 has no 2026 code: its legacy code is the service code.
    assert!(services.iter().any(|s| s["service_code"] == "0406"));
    let en = get(&hub, "services.json?locale=en").await.json();
    assert!(en
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["service_name"] == "Illegally parked motor vehicle" && s["group"] == "event"));
    let a = answer(
        client()
            .get(format!("{}/open311/v2/services.json", hub.base))
            .header("accept-language", "en-GB,en;q=0.9"),
    )
    .await;
    assert_eq!(a.json()[0]["service_name"], en[0]["service_name"]);
    // The same in XML, in the same order.
    let xml = get(&hub, "services.xml").await;
    assert_eq!(xml.status, StatusCode::OK);
    let xml = xml.xml("services", "service");
    let codes = |it: &mut dyn Iterator<Item = String>| it.collect::<Vec<_>>();
    assert_eq!(
        codes(&mut xml.iter().map(|s| s["service_code"].clone())),
        codes(
            &mut services
                .iter()
                .map(|s| s["service_code"].as_str().unwrap().to_string())
        )
    );
    let x = xml.iter().find(|s| s["service_code"] == "09009").unwrap();
    assert_eq!(
        (
            x["service_name"].as_str(),
            x["metadata"].as_str(),
            x["type"].as_str()
        ),
        ("机动车乱停放", "false", "realtime")
    );
    // One service's definition, by any of its codes.
    let def = get(&hub, "services/0505.json").await.json();
    assert_eq!(def, json!({"service_code": "09009", "attributes": []}));
    let def = get(&hub, "services/illegal-parking.xml").await;
    assert_eq!(def.status, StatusCode::OK);
    assert!(def.text.contains("<service_definition><service_code>09009</service_code><attributes/></service_definition>"), "{}", def.text);
    get(&hub, "services/9999.xml").await.refused(
        StatusCode::NOT_FOUND,
        "service_code `9999` is not a service",
    );

    // A citizen reports a van parked in the county seat, with a photo.
    let a = post_form(&hub, "requests.json", &report(&t.app, SEAT, "phone-1")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let seat_id = created(&a);
    // The app did not hear back and sends it again: the same request, no second case.
    let again = post_form(&hub, "requests.json", &report(&t.app, SEAT, "phone-1")).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(created(&again), seat_id);
    // The command center sees a case at 上报 in 天堂镇, with the photo and the contact.
    let case = rest(
        &hub,
        "GET",
        &format!("/api/v1/cases/{seat_id}"),
        &t.operator,
        None,
    )
    .await;
    assert_eq!(
        (&case["state"], &case["source"], &case["category"]),
        (
            &json!("reported"),
            &json!("citizen"),
            &json!("illegal-parking")
        )
    );
    assert_eq!(case["place"]["town"], "tiantang");
    assert_eq!(case["place"]["point"], json!([116.36, 30.85]));
    assert!(case["place"]["zone"].is_null(), "{case}");
    assert_eq!(case["evidence"], json!([PHOTO]));
    let c = &case["citizen"];
    assert_eq!(c["contact"]["phone"], "13800138000");
    assert_eq!(c["client"], "citizen-app");
    assert_eq!(
        c["attributes"],
        json!([{"code": "plate", "value": "皖H·12345"}])
    );
    assert_eq!(case["timeline"][0]["actor"]["id"], "citizen-app");
    // Leaders see the case, not how to reach the citizen.
    let seen = rest(
        &hub,
        "GET",
        &format!("/api/v1/cases/{seat_id}"),
        &t.viewer,
        None,
    )
    .await;
    assert_eq!(seen["citizen"]["client"], "citizen-app");
    assert!(seen["citizen"]["contact"].is_null(), "{seen}");
    // The board filters by source: citizens' cases, and none of them among video cases.
    let listed = |source: &'static str| {
        let (hub, token) = (&hub, t.operator.clone());
        async move {
            let path = format!("/api/v1/cases?source={source}");
            rest(hub, "GET", &path, &token, None).await["cases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("citizen").await, std::slice::from_ref(&seat_id));
    assert!(listed("video_ai").await.is_empty());

    // Another citizen, the same kind of problem in 来榜镇; a third repeats the first one's
    // words from another phone (a duplicate the operator will reject).
    let a = post_form(&hub, "requests.xml", &report(&t.app, LAIBANG, "phone-2")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let items = a.xml("service_requests", "request");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["account_id"], "");
    let laibang_id = items[0]["service_request_id"].clone();
    let a = post_form(&hub, "requests.json", &report(&t.app, SEAT, "phone-3")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let dup_id = created(&a);
    assert_ne!(dup_id, seat_id);

    // Published: open, the citizen's words and photo, the deadline to register it by; never
    // the contact.
    let a = get(&hub, &format!("requests/{seat_id}.json")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    for private in ["13800138000", "li.lei", "李", "citizen-app", "plate"] {
        assert!(!a.text.contains(private), "{private} published: {}", a.text);
    }
    let r = a.json()[0].clone();
    assert_eq!(r["service_request_id"], seat_id);
    assert_eq!(
        (&r["status"], &r["status_notes"], &r["service_code"]),
        (&json!("open"), &Value::Null, &json!("09009"))
    );
    assert_eq!(r["service_name"], "机动车乱停放");
    assert_eq!(r["description"], "白色面包车堵住消防通道 <b> & \"快来\"");
    assert_eq!(
        (r["lat"].as_f64(), r["long"].as_f64()),
        (Some(30.85), Some(116.36))
    );
    assert_eq!(r["media_url"], PHOTO);
    assert_eq!(r["agency_responsible"], Value::Null);
    assert_eq!(
        r["requested_datetime"],
        beijing(case["created_ms"].as_i64().unwrap())
    );
    assert_eq!(
        r["expected_datetime"],
        beijing(case["deadline_ms"].as_i64().unwrap())
    );

    // The operator registers and dispatches both by the routing table: the place decides.
    for id in [&seat_id, &laibang_id] {
        act(&hub, id, &t.operator, json!({"action": "register"})).await;
        act(&hub, id, &t.operator, json!({"action": "dispatch"})).await;
    }
    let seat = rest(
        &hub,
        "GET",
        &format!("/api/v1/cases/{seat_id}"),
        &t.operator,
        None,
    )
    .await;
    assert_eq!(seat["department"], "traffic-police");
    let laibang = rest(
        &hub,
        "GET",
        &format!("/api/v1/cases/{laibang_id}"),
        &t.operator,
        None,
    )
    .await;
    assert_eq!(laibang["department"], "urban-mgmt");
    let r = get(&hub, &format!("requests/{seat_id}.json")).await.json()[0].clone();
    assert_eq!(r["status"], "open");
    assert_eq!(r["agency_responsible"], "县公安局交通管理大队");
    // The handling deadline now (2 working hours from dispatch).
    assert_eq!(
        r["expected_datetime"],
        beijing(seat["deadline_ms"].as_i64().unwrap())
    );
    let r = get(&hub, &format!("requests/{laibang_id}.json?locale=en"))
        .await
        .json()[0]
        .clone();
    assert_eq!(r["agency_responsible"], "County Urban Management Bureau");
    assert_eq!(r["service_name"], "Illegally parked motor vehicle");

    // The traffic police move the van; the operator verifies and closes with a note for the
    // citizen. The duplicate is not registered.
    act(&hub, &seat_id, &t.police, json!({"action": "accept"})).await;
    act(
        &hub,
        &seat_id,
        &t.police,
        json!({"action": "report_handled", "note": "已拖离"}),
    )
    .await;
    let closing = "车辆已拖离，消防通道恢复畅通 <感谢> & 再见";
    let closed = act(
        &hub,
        &seat_id,
        &t.operator,
        json!({"action": "close", "note": closing}),
    )
    .await;
    assert_eq!(closed["state"], "closed");
    act(
        &hub,
        &dup_id,
        &t.operator,
        json!({"action": "reject", "reason": "duplicate"}),
    )
    .await;

    let a = get(&hub, &format!("requests/{seat_id}.xml")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let r = &a.xml("service_requests", "request")[0];
    assert_eq!(r["service_request_id"], seat_id);
    assert_eq!(r["status"], "closed");
    assert_eq!(r["status_notes"], closing);
    assert_eq!(r["expected_datetime"], "");
    assert_eq!(r["agency_responsible"], "县公安局交通管理大队");
    assert_eq!(r["description"], "白色面包车堵住消防通道 <b> & \"快来\"");
    assert_eq!(r["media_url"], PHOTO);
    assert_eq!(
        r["updated_datetime"],
        beijing(
            closed["timeline"].as_array().unwrap().last().unwrap()["at_ms"]
                .as_i64()
                .unwrap()
        )
    );
    let r = get(&hub, &format!("requests/{seat_id}.json")).await.json()[0].clone();
    assert_eq!(
        (&r["status"], &r["status_notes"]),
        (&json!("closed"), &json!(closing))
    );
    let r = get(&hub, &format!("requests/{dup_id}.json")).await.json()[0].clone();
    assert_eq!(
        (&r["status"], &r["status_notes"]),
        (&json!("closed"), &json!("不予立案：重复上报"))
    );
    let r = get(&hub, &format!("requests/{dup_id}.json?locale=en"))
        .await
        .json()[0]
        .clone();
    assert_eq!(
        r["status_notes"],
        "Not registered: a duplicate of another report"
    );

    // An inspector's own report is a case, but not a citizen's request: not published.
    let inspected = rest(
        &hub,
        "POST",
        "/api/v1/cases",
        &t.operator,
        Some(json!({"category": "0505", "source": "inspector", "place": {"town": "tiantang"}})),
    )
    .await;
    let inspected = inspected["id"].as_str().unwrap().to_string();
    get(&hub, &format!("requests/{inspected}.json"))
        .await
        .refused(StatusCode::NOT_FOUND, &inspected);

    // Lists: newest first; by status, service, ids and dates.
    let ids = |a: Answer| -> Vec<String> {
        a.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["service_request_id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = ids(get(&hub, "requests.json").await);
    assert_eq!(
        all,
        [dup_id.as_str(), laibang_id.as_str(), seat_id.as_str()]
    );
    assert_eq!(
        ids(get(&hub, "requests.json?status=open").await),
        [laibang_id.as_str()]
    );
    assert_eq!(
        ids(get(&hub, "requests.json?status=closed&service_code=0505,06010").await),
        [dup_id.as_str(), seat_id.as_str()]
    );
    assert!(ids(get(&hub, "requests.json?service_code=06010").await).is_empty());
    let asked = format!("requests.json?service_request_id={seat_id},{inspected},{laibang_id}");
    assert_eq!(
        ids(get(&hub, &asked).await),
        [seat_id.as_str(), laibang_id.as_str()]
    );
    let created_ms = case["created_ms"].as_i64().unwrap();
    let window = format!(
        "requests.json?start_date={}&end_date={}",
        enc(&beijing(created_ms - 60_000)),
        enc(&beijing(created_ms + 3_600_000))
    );
    assert_eq!(ids(get(&hub, &window).await).len(), 3);
    let before = format!(
        "requests.json?start_date=2020-01-01&end_date={}",
        enc("2020-03-01T00:00:00+08:00")
    );
    assert!(ids(get(&hub, &before).await).is_empty());
    let xml = get(&hub, "requests.xml?status=open").await;
    let items = xml.xml("service_requests", "request");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["service_request_id"], laibang_id);
    assert_eq!(items[0]["lat"], "30.9");
    assert_eq!(items[0]["agency_responsible"], "县城市管理局");

    // A JSON body works too.
    let a = answer(
        client()
            .post(format!("{}/open311/v2/requests.json", hub.base))
            .json(
                &json!({"api_key": t.app, "service_code": "06010", "lat": 30.8501,
                          "long": 116.3601, "attribute": {"bags": 3}}),
            ),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);

    // Malformed requests: the spec's error list, the right status, the field named, in both
    // formats.
    for ext in ["json", "xml"] {
        let path = format!("requests.{ext}");
        let ok_key = t.app.as_str();
        let cases: Vec<Refused> = vec![
            (
                vec![("api_key", ok_key), ("lat", "30.85"), ("long", "116.36")],
                StatusCode::BAD_REQUEST,
                "service_code is required",
            ),
            (
                vec![
                    ("api_key", ok_key),
                    ("service_code", "9999"),
                    ("address_string", "x"),
                ],
                StatusCode::BAD_REQUEST,
                "service_code `9999` is not a service",
            ),
            (
                vec![
                    ("api_key", ok_key),
                    ("service_code", "0505"),
                    ("lat", "123"),
                    ("long", "116.36"),
                ],
                StatusCode::BAD_REQUEST,
                "lat must be -90..90",
            ),
            (
                vec![
                    ("api_key", ok_key),
                    ("service_code", "0505"),
                    ("description", "no place"),
                ],
                StatusCode::BAD_REQUEST,
                "a location is required",
            ),
            (
                vec![
                    ("api_key", ok_key),
                    ("service_code", "0505"),
                    ("lat", "39.9"),
                    ("long", "116.4"),
                ],
                StatusCode::BAD_REQUEST,
                "outside the county",
            ),
            (
                vec![
                    ("api_key", ok_key),
                    ("service_code", "0505"),
                    ("lat", "30.85"),
                    ("lon", "116.36"),
                ],
                StatusCode::BAD_REQUEST,
                "unknown field `lon` (Open311 calls it `long`)",
            ),
            (
                vec![
                    ("api_key", ok_key),
                    ("service_code", "0505"),
                    ("address_string", "x"),
                    ("media_url", "javascript:alert(1)"),
                ],
                StatusCode::BAD_REQUEST,
                "media_url must be an http:// or https:// URL",
            ),
            (
                vec![
                    ("api_key", "csb_not-a-key"),
                    ("service_code", "0505"),
                    ("address_string", "x"),
                ],
                StatusCode::FORBIDDEN,
                "api_key is not a valid key",
            ),
            (
                vec![("service_code", "0505"), ("address_string", "x")],
                StatusCode::FORBIDDEN,
                "api_key is required",
            ),
            (
                vec![
                    ("api_key", t.viewer.as_str()),
                    ("service_code", "0505"),
                    ("address_string", "x"),
                ],
                StatusCode::FORBIDDEN,
                "has role `viewer`, which may not file requests",
            ),
        ];
        for (pairs, status, want) in cases {
            let a = post_form(&hub, &path, &pairs).await;
            assert_eq!(a.media, format!("application/{ext}"), "{}", a.text);
            a.refused(status, want);
        }
        // Every problem at once.
        let a = post_form(
            &hub,
            &path,
            &[("api_key", ok_key), ("lat", "91"), ("long", "east")],
        )
        .await;
        a.refused(StatusCode::BAD_REQUEST, "service_code is required");
        a.refused(StatusCode::BAD_REQUEST, "lat must be -90..90, not 91");
        a.refused(StatusCode::BAD_REQUEST, "long `east` is not a number");
        // Bodies: the wrong type, too large.
        let a = answer(
            client()
                .post(format!("{}/open311/v2/{path}", hub.base))
                .header("content-type", "text/plain")
                .body("service_code=0505"),
        )
        .await;
        a.refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type");
        let big = "x".repeat(70 * 1024);
        let a = post_form(&hub, &path, &[("api_key", ok_key), ("description", &big)]).await;
        a.refused(StatusCode::PAYLOAD_TOO_LARGE, "larger than 64 KiB");
        // Reads.
        get(&hub, &format!("requests.{ext}?start_date=yesterday"))
            .await
            .refused(
                StatusCode::BAD_REQUEST,
                "start_date `yesterday` is not a W3C date-time",
            );
        get(
            &hub,
            &format!("requests.{ext}?start_date=2026-01-01&end_date=2026-06-01"),
        )
        .await
        .refused(StatusCode::BAD_REQUEST, "spans more than 90 days");
        get(&hub, &format!("requests.{ext}?status=pending"))
            .await
            .refused(
                StatusCode::BAD_REQUEST,
                "status `pending` is not open or closed",
            );
        get(&hub, &format!("requests.{ext}?service_request_id=42"))
            .await
            .refused(
                StatusCode::BAD_REQUEST,
                "service_request_id `42` is not a request id",
            );
        get(&hub, &format!("requests.{ext}?colour=red"))
            .await
            .refused(StatusCode::BAD_REQUEST, "unknown parameter `colour`");
        get(&hub, &format!("requests/01J00000000000000000000000.{ext}"))
            .await
            .refused(
                StatusCode::NOT_FOUND,
                "no request `01J00000000000000000000000`",
            );
        get(&hub, &format!("services.{ext}?locale=fr"))
            .await
            .refused(StatusCode::BAD_REQUEST, "locale `fr` is not served");
    }
    get(&hub, "requests/whatever.html")
        .await
        .refused(StatusCode::NOT_FOUND, "end it in .json or .xml");
    get(&hub, "requests/").await.refused(
        StatusCode::NOT_FOUND,
        "no Open311 endpoint `/open311/v2/requests/`",
    );
    get(&hub, "tokens/abc.xml")
        .await
        .refused(StatusCode::NOT_FOUND, "no Open311 endpoint");

    // Every refused key was counted with the other HTTP auth refusals.
    let health = hub.get("/api/v1/health").await;
    assert!(
        health["http_auth"]["refused"].as_u64().unwrap() >= 6,
        "{health}"
    );
    hub.stop().await;
}

/// With `[auth] http = "off"` no key is checked, as no credential is anywhere; a request
/// without `device_id` is never taken for a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_http_auth_keys_are_not_checked() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_county(dir.path(), free_port()).await;
    let pairs = [
        ("service_code", "06010"),
        ("address_string", "县城北门菜市场东侧"),
    ];
    let first = post_form(&hub, "requests.json", &pairs).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let second = post_form(&hub, "requests.json", &pairs).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
    assert_ne!(
        first.json()[0]["service_request_id"],
        second.json()[0]["service_request_id"]
    );
    let r = get(&hub, "requests.json").await.json();
    assert_eq!(r.as_array().unwrap().len(), 2);
    assert_eq!(r[0]["address"], "县城北门菜市场东侧");
    assert_eq!((&r[0]["lat"], &r[0]["long"]), (&Value::Null, &Value::Null));
    let case = hub
        .get(&format!(
            "/api/v1/cases/{}",
            r[0]["service_request_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(case["timeline"][0]["actor"]["id"], "anonymous");
    assert!(case["place"]["town"].is_null());
    hub.stop().await;
}
