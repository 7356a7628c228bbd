//! The digital twin end to end: a hub with the sample county, fed over real MQTT, queried over
//! the NGSI-LD API. Geo queries are checked against distances computed here, independently
//! of `geo.rs`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use csb_test_support::http::{entity_ids as ids, SseReader};
use csb_test_support::oracle::haversine_m;
use csb_wire::{CameraState, DeviceState, DeviceStatus, Event, Phase};
use serde_json::Value;
use ulid::Ulid;

const WL: &str = "urn:ngsi-ld:Sensor:yuexi:gw-demo-01:wl-underpass-01";
const GW: &str = "urn:ngsi-ld:Gateway:yuexi:gw-demo-01";
const CAM: &str = "urn:ngsi-ld:Camera:yuexi:gw-demo-01:cam-tiantang-01";
const ZONE: &str = "urn:ngsi-ld:Zone:yuexi:zone-no-parking-north";
const ROAD: &str = "urn:ngsi-ld:RoadSegment:yuexi:rd-tiantang-ave-n";
const CTX: &str = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld";

/// GET with an Accept header: (status, headers, JSON body).
async fn get_with(
    hub: &TestHub,
    path: &str,
    accept: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .get(format!("{}{path}", hub.base))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json().await.unwrap();
    (status, headers, body)
}

async fn ngsi(hub: &TestHub, path: &str) -> Value {
    let (status, _, body) = get_with(hub, path, "application/ld+json").await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

fn pos(v: &Value) -> [f64; 2] {
    [v[0].as_f64().unwrap(), v[1].as_f64().unwrap()]
}

/// Every position of a GeoJSON geometry.
fn positions(g: &Value) -> Vec<[f64; 2]> {
    fn walk(v: &Value, out: &mut Vec<[f64; 2]>) {
        match v.as_array() {
            Some(a) if a.len() == 2 && a[0].is_number() => out.push(pos(v)),
            Some(a) => a.iter().for_each(|x| walk(x, out)),
            None => {}
        }
    }
    let mut out = Vec::new();
    walk(&g["coordinates"], &mut out);
    out
}

/// Distance to a LineString, by sampling each segment every ~0.5 m (independent of geo.rs's
/// projection); good to well under a metre.
fn line_distance(p: [f64; 2], line: &[[f64; 2]]) -> f64 {
    let mut best = f64::INFINITY;
    for w in line.windows(2) {
        let len = haversine_m(w[0], w[1]);
        let n = (len / 0.5).ceil().max(1.0) as usize;
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let q = [
                w[0][0] + t * (w[1][0] - w[0][0]),
                w[0][1] + t * (w[1][1] - w[0][1]),
            ];
            best = best.min(haversine_m(p, q));
        }
    }
    best
}

/// Even-odd ray casting over every ring (holes included), written here independently.
fn inside(p: [f64; 2], rings: &[Vec<[f64; 2]>]) -> bool {
    let mut c = false;
    for r in rings {
        for w in r.windows(2) {
            let (a, b) = (w[0], w[1]);
            if (a[1] > p[1]) != (b[1] > p[1])
                && p[0] < a[0] + (p[1] - a[1]) / (b[1] - a[1]) * (b[0] - a[0])
            {
                c = !c;
            }
        }
    }
    c
}

/// The rings of a Polygon's coordinates.
fn rings(g: &Value) -> Vec<Vec<[f64; 2]>> {
    g["coordinates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(pos).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_type_q_and_geo_queries_on_the_sample_county() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_county(dir.path(), free_port()).await;

    let types = ngsi(&hub, "/ngsi-ld/v1/types").await;
    let list: BTreeSet<&str> = types["typeList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        list,
        BTreeSet::from([
            "Town",
            "RoadSegment",
            "Intersection",
            "Zone",
            "Gateway",
            "Camera",
            "Sensor"
        ]),
        "{types}"
    );

    // Normalized form, ld+json.
    let (status, headers, cams) = get_with(
        &hub,
        "/ngsi-ld/v1/entities?type=Camera&limit=100",
        "application/ld+json",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/ld+json");
    assert_eq!(cams.as_array().unwrap().len(), 11, "{cams:#}");
    let cam = cams
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == CAM)
        .unwrap();
    assert_eq!(cam["type"], "Camera");
    assert_eq!(cam["@context"], CTX);
    assert_eq!(cam["location"]["type"], "GeoProperty");
    assert_eq!(cam["location"]["value"]["type"], "Point");
    assert_eq!(cam["refTown"]["type"], "Relationship");
    assert_eq!(cam["refTown"]["object"], "urn:ngsi-ld:Town:yuexi:tiantang");
    assert_eq!(cam["refGateway"]["object"], GW);
    assert_eq!(
        cam["department"],
        serde_json::json!({"type": "Property", "value": "urban-mgmt"})
    );

    // application/json: the context in a Link header, not in the body.
    let (_, headers, body) = get_with(
        &hub,
        &format!("/ngsi-ld/v1/entities/{}", enc(CAM)),
        "application/json",
    )
    .await;
    assert_eq!(headers["content-type"], "application/json");
    let link = headers["link"].to_str().unwrap();
    assert!(
        link.contains(CTX) && link.contains("json-ld#context"),
        "{link}"
    );
    assert!(body.get("@context").is_none(), "{body}");
    assert_eq!(body["id"], CAM);

    // keyValues.
    let kv = ngsi(
        &hub,
        &format!("/ngsi-ld/v1/entities/{}?options=keyValues", enc(ZONE)),
    )
    .await;
    assert_eq!(kv["purpose"], "no_parking");
    assert_eq!(kv["refCamera"], CAM);
    assert_eq!(kv["location"]["type"], "Polygon");

    // Errors: ProblemDetails naming what is wrong.
    let (status, _, p) =
        get_with(&hub, "/ngsi-ld/v1/entities/urn:ngsi-ld:Camera:nope", "*/*").await;
    assert_eq!(status, 404);
    assert_eq!(
        p["type"],
        "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    );
    for (q, param) in [
        ("q=status%3D1", "q"),
        (
            "georel=near%3BmaxDistance%3D%3D10&geometry=Point",
            "coordinates",
        ),
        ("limit=1001", "limit"),
        ("bogus=1", "bogus"),
    ] {
        let (status, _, p) = get_with(&hub, &format!("/ngsi-ld/v1/entities?{q}"), "*/*").await;
        assert_eq!(status, 400, "{q}: {p}");
        assert_eq!(
            p["type"],
            "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
        );
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("`{param}`")),
            "{q}: {p}"
        );
    }

    // q on static properties and relationships.
    let wl = ngsi(
        &hub,
        &format!(
            "/ngsi-ld/v1/entities?type=Sensor&q={}",
            enc("sensorKind==\"water_level\"")
        ),
    )
    .await;
    assert_eq!(
        ids(&wl),
        BTreeSet::from([
            "urn:ngsi-ld:Sensor:yuexi:gw-demo-01:wl-underpass-01".to_string(),
            "urn:ngsi-ld:Sensor:yuexi:gw-tiantang-03:wl-hebin-01".to_string(),
            "urn:ngsi-ld:Sensor:yuexi:gw-laibang-01:wl-laibang-river-01".to_string(),
        ])
    );
    let laibang = ngsi(
        &hub,
        &format!(
            "/ngsi-ld/v1/entities?type=Camera,Sensor,Gateway&q={}",
            enc("refTown==\"urn:ngsi-ld:Town:yuexi:laibang\";department!=\"water\"")
        ),
    )
    .await;
    assert_eq!(
        ids(&laibang),
        BTreeSet::from([
            "urn:ngsi-ld:Gateway:yuexi:gw-laibang-01".to_string(),
            "urn:ngsi-ld:Camera:yuexi:gw-laibang-01:cam-junction-01".to_string(),
            "urn:ngsi-ld:Camera:yuexi:gw-laibang-01:cam-market-01".to_string(),
        ])
    );
    let heading = ngsi(
        &hub,
        &format!(
            "/ngsi-ld/v1/entities?type=Camera&q={}",
            enc("headingDeg>=180;headingDeg<270")
        ),
    )
    .await;
    let all_cams = cams.as_array().unwrap();
    let want: BTreeSet<String> = all_cams
        .iter()
        .filter(|c| {
            let h = c["headingDeg"]["value"].as_f64().unwrap();
            (180.0..270.0).contains(&h)
        })
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(ids(&heading), want);
    let pat = ngsi(
        &hub,
        "/ngsi-ld/v1/entities?idPattern=%5Eurn%3Angsi-ld%3ACamera%3Ayuexi%3Agw-tiantang-04%3A",
    )
    .await;
    assert_eq!(ids(&pat).len(), 2, "{pat}");

    // Pagination and count.
    let (_, headers, page) = get_with(
        &hub,
        "/ngsi-ld/v1/entities?type=Town&limit=10&offset=20&count=true",
        "application/ld+json",
    )
    .await;
    assert_eq!(headers["ngsild-results-count"], "24");
    assert_eq!(page.as_array().unwrap().len(), 4);
    let first = ngsi(&hub, "/ngsi-ld/v1/entities?type=Town").await;
    assert_eq!(first.as_array().unwrap().len(), 20, "default limit");

    // Everything located, for the geo checks.
    let all = ngsi(&hub, "/ngsi-ld/v1/entities?limit=1000&options=keyValues").await;
    let all = all.as_array().unwrap().clone();
    assert_eq!(
        all.len(),
        24 + 16 + 5 + 6 + 11 + 8,
        "every entity of the sample"
    );
    let points: Vec<(String, [f64; 2])> = all
        .iter()
        .filter(|e| e["location"]["type"] == "Point")
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                pos(&e["location"]["coordinates"]),
            )
        })
        .collect();
    let lines: Vec<(String, Vec<[f64; 2]>)> = all
        .iter()
        .filter(|e| e["location"]["type"] == "LineString")
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                positions(&e["location"]),
            )
        })
        .collect();
    assert!(points.len() > 30 && lines.len() > 5);

    let seat = [116.3605, 30.8485];
    let centres = [
        seat,
        [116.3612, 30.8521],
        [116.2012, 30.9008],
        [116.3586, 30.9362],
        [116.30, 30.88],
    ];
    let point_types = "Camera,Sensor,Gateway,Intersection";
    let near = |c: [f64; 2], rel: String, types: &str| {
        format!(
            "/ngsi-ld/v1/entities?type={types}&limit=1000&georel={}&geometry=Point&coordinates={}",
            enc(&rel),
            enc(&format!("[{},{}]", c[0], c[1]))
        )
    };
    for c in centres {
        // Radii: fixed ones, and each just above and below a real distance (tight boundaries).
        let mut dists: Vec<f64> = points.iter().map(|(_, p)| haversine_m(c, *p)).collect();
        dists.sort_by(f64::total_cmp);
        let mut radii = vec![0.0, 50.0, 200.0, 500.0, 1000.0, 5000.0, 20_000.0];
        for d in dists.iter().take(6) {
            radii.push(d + 0.01);
            radii.push((d - 0.01).max(0.0));
        }
        for r in radii {
            let want: BTreeSet<String> = points
                .iter()
                .filter(|(_, p)| haversine_m(c, *p) <= r)
                .map(|(id, _)| id.clone())
                .collect();
            let got = ngsi(
                &hub,
                &near(c, format!("near;maxDistance=={r}"), point_types),
            )
            .await;
            assert_eq!(ids(&got), want, "near {c:?} maxDistance {r}");
            let outside: BTreeSet<String> = points
                .iter()
                .filter(|(_, p)| haversine_m(c, *p) >= r)
                .map(|(id, _)| id.clone())
                .collect();
            let got = ngsi(
                &hub,
                &near(c, format!("near;minDistance=={r}"), point_types),
            )
            .await;
            assert_eq!(ids(&got), outside, "near {c:?} minDistance {r}");
        }
        // Road segments: nearest point of the line, sampled here; a 1 m band around the
        // radius is left out (sampling error), everything else must agree exactly.
        for r in [100.0, 300.0, 800.0, 1500.0] {
            let got = ids(&ngsi(
                &hub,
                &near(c, format!("near;maxDistance=={r}"), "RoadSegment"),
            )
            .await);
            for (id, line) in &lines {
                let d = line_distance(c, line);
                if (d - r).abs() < 1.0 {
                    continue;
                }
                assert_eq!(
                    got.contains(id),
                    d <= r,
                    "{id}: {d} m from {c:?}, radius {r}"
                );
            }
        }
    }

    // Towns and zones (polygons): 0 inside, else the nearest point of the boundary.
    let areas: Vec<(String, Vec<Vec<[f64; 2]>>)> = all
        .iter()
        .filter(|e| e["location"]["type"] == "Polygon")
        .map(|e| (e["id"].as_str().unwrap().to_string(), rings(&e["location"])))
        .collect();
    assert_eq!(
        areas.len(),
        24 + 5,
        "every town and zone is a Polygon in the sample"
    );
    for c in centres {
        for r in [0.0, 100.0, 1000.0, 3000.0, 8000.0] {
            let got = ids(&ngsi(
                &hub,
                &near(c, format!("near;maxDistance=={r}"), "Town,Zone"),
            )
            .await);
            for (id, rs) in &areas {
                let d = if inside(c, rs) {
                    0.0
                } else {
                    rs.iter()
                        .map(|ring| line_distance(c, ring))
                        .fold(f64::INFINITY, f64::min)
                };
                if d > 0.0 && (d - r).abs() < 1.0 {
                    continue;
                }
                assert_eq!(
                    got.contains(id),
                    d <= r,
                    "{id}: {d} m from {c:?}, radius {r}"
                );
            }
        }
    }

    // within a rectangle around the seat: every vertex inside (convex, so the whole shape).
    let (w, e, s, n) = (116.352, 116.366, 30.845, 30.856);
    let poly = format!("[[[{w},{s}],[{e},{s}],[{e},{n}],[{w},{n}],[{w},{s}]]]");
    let got = ngsi(
        &hub,
        &format!(
            "/ngsi-ld/v1/entities?limit=1000&georel=within&geometry=Polygon&coordinates={}",
            enc(&poly)
        ),
    )
    .await;
    let want: BTreeSet<String> = all
        .iter()
        .filter(|x| {
            positions(&x["location"])
                .iter()
                .all(|p| p[0] > w && p[0] < e && p[1] > s && p[1] < n)
        })
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    assert!(want.len() >= 5, "{want:?}");
    assert!(want.contains(CAM));
    assert_eq!(ids(&got), want);
    // intersects the same rectangle: at least those, plus the town that contains it.
    let got = ids(&ngsi(
        &hub,
        &format!(
            "/ngsi-ld/v1/entities?limit=1000&georel=intersects&geometry=Polygon&coordinates={}",
            enc(&poly)
        ),
    )
    .await);
    assert!(got.is_superset(&want));
    assert!(got.contains("urn:ngsi-ld:Town:yuexi:tiantang"));
    assert!(!got.contains("urn:ngsi-ld:Town:yuexi:laibang"));
    hub.stop().await;
}

fn dev_status(state: DeviceState, cam_state: CameraState) -> DeviceStatus {
    let status = StatusBuilder::new("gw-demo-01", state).ts(T0);
    match state {
        DeviceState::Online => status.camera("cam-tiantang-01", cam_state),
        DeviceState::Offline => status,
    }
    .build()
}

fn zone_event(phase: Phase, problem: Ulid, ts: i64) -> Event {
    EventBuilder::rule("illegal_parking")
        .rule_id("illegal-parking-north")
        .device("gw-demo-01")
        .camera("cam-tiantang-01")
        .ts(ts)
        .objects(&[(2, "car")])
        .category("0201")
        .phase(phase)
        .problem(problem)
        .zone("no-parking-north")
        .duration(10_000)
        .build()
}

/// A client with the agent's last will (offline status).
async fn agent_with_will(addr: std::net::SocketAddr, id: &str) -> Client {
    let will = json(&dev_status(DeviceState::Offline, CameraState::Stopped));
    Client::options(id)
        .will(&topic("gw-demo-01", "status"), will)
        .connect(addr)
        .await
}

/// Polls an entity until `pred` holds (bounded by `secs`).
async fn wait_entity(
    hub: &TestHub,
    id: &str,
    what: &str,
    secs: u64,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/ngsi-ld/v1/entities/{}", enc(id));
    let mut last = Value::Null;
    for _ in 0..secs * 20 {
        let (status, _, body) = get_with(hub, &path, "application/ld+json").await;
        if status == 200 {
            if pred(&body) {
                return body;
            }
            last = body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}; last: {last:#}");
}

/// History is written by the twin task about once a second: polls a temporal query until
/// `pred` holds (bounded).
async fn wait_temporal(
    hub: &TestHub,
    path: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        last = ngsi(hub, path).await;
        if pred(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}; last: {last:#}");
}

fn iso(ms: i64) -> String {
    // The hub's own formatter is under test elsewhere; RFC 3339 from the unix time here.
    let secs = ms / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // 2026-09-21 is day 20717 since the epoch; the test times stay within that day.
    assert_eq!(days, 20_717, "test times stay on 2026-09-21");
    format!(
        "2026-09-21T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_attributes_history_stream_and_last_will() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hub = TestHub::start_county(dir.path(), port).await;

    // Follow the sensors' and zones' changes.
    let resp = client()
        .get(format!("{}/api/v1/twin/stream?type=Sensor,Zone", hub.base))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut sse = SseReader::new(resp);

    // The agent comes online with its camera running.
    let agent = agent_with_will(hub.mqtt, "gw-demo-01").await;
    agent
        .publish(
            &topic("gw-demo-01", "status"),
            json(&dev_status(DeviceState::Online, CameraState::Running)),
        )
        .await;
    let gw = wait_entity(&hub, GW, "gateway online", 10, |e| {
        e["status"]["value"] == "online"
    })
    .await;
    assert!(
        gw["status"]["observedAt"].as_str().unwrap().ends_with('Z'),
        "{gw}"
    );
    wait_entity(&hub, CAM, "camera online", 10, |e| {
        e["status"]["value"] == "online"
            && e["cameraState"]["value"] == "running"
            && e["fps"]["value"] == 10.0
    })
    .await;

    // Water level readings, a zone problem, traffic flow.
    let p = Client::connect(hub.mqtt, "test-twin-pub").await;
    for (i, level) in [12.5, 20.0, 31.5].into_iter().enumerate() {
        let t = telemetry(
            "gw-demo-01",
            "wl-underpass-01",
            T0 + 1000 * (i as i64 + 1),
            &[("water_level_cm", level)],
        );
        p.publish(&topic("gw-demo-01", "telemetry"), json(&t)).await;
    }
    // Not in the inventory: ignored by the twin.
    let stray = telemetry(
        "gw-unknown",
        "wl-01",
        T0 + 1000,
        &[("water_level_cm", 99.0)],
    );
    p.publish(&topic("gw-unknown", "telemetry"), json(&stray))
        .await;
    let problem = Ulid::new();
    p.publish(
        &topic("gw-demo-01", "event"),
        json(&zone_event(Phase::Start, problem, T0 + 5000)),
    )
    .await;
    for (i, cars) in [0.0, 7.0].into_iter().enumerate() {
        let t = telemetry(
            "gw-demo-01",
            "agent",
            T0 + 10_000 * (i as i64 + 1),
            &[
                ("cam-tiantang-01.flow.road-east.car.in", cars),
                ("cam-tiantang-01.fps", 10.0),
            ],
        );
        p.publish(&topic("gw-demo-01", "telemetry"), json(&t)).await;
    }

    let wl = wait_entity(&hub, WL, "water level", 10, |e| {
        e["water_level_cm"]["value"] == 31.5
    })
    .await;
    assert_eq!(wl["water_level_cm"]["type"], "Property");
    assert_eq!(wl["water_level_cm"]["observedAt"], iso(T0 + 3000));
    let zone = wait_entity(&hub, ZONE, "zone problem", 10, |e| {
        e["activeProblems"]["value"] == 1
    })
    .await;
    assert_eq!(zone["lastEventType"]["value"], "illegal_parking");
    assert_eq!(zone["occupancy"]["value"], 1);
    assert_eq!(zone["lastEventType"]["observedAt"], iso(T0 + 5000));
    let road = wait_entity(&hub, ROAD, "road flow", 10, |e| {
        e["intensity"]["value"] == 7.0
    })
    .await;
    assert_eq!(road["flowPerHour"]["value"], 2520.0);
    assert_eq!(road["intensity"]["observedAt"], iso(T0 + 20_000));

    // q on live attributes.
    let hot = ngsi(
        &hub,
        &format!(
            "/ngsi-ld/v1/entities?type=Sensor&q={}",
            enc("water_level_cm>30")
        ),
    )
    .await;
    assert_eq!(ids(&hot), BTreeSet::from([WL.to_string()]));
    let online = ngsi(
        &hub,
        &format!("/ngsi-ld/v1/entities?q={}", enc("status==\"online\"")),
    )
    .await;
    assert!(
        ids(&online).contains(GW) && ids(&online).contains(CAM),
        "{online}"
    );

    // The stream saw the readings, in order, with resumable ids.
    let (ev, id1, first) = sse
        .next_matching(10, |_, _, v| {
            v["id"] == WL && v.get("water_level_cm").is_some()
        })
        .await;
    assert_eq!(ev, "change");
    assert_eq!(first["type"], "Sensor");
    assert_eq!(first["water_level_cm"]["value"], 12.5);
    assert_eq!(first["water_level_cm"]["observedAt"], iso(T0 + 1000));
    let (_, id2, second) = sse
        .next_matching(10, |_, _, v| {
            v["id"] == WL && v.get("water_level_cm").is_some()
        })
        .await;
    assert_eq!(second["water_level_cm"]["value"], 20.0);
    assert!(id2.parse::<u64>().unwrap() > id1.parse::<u64>().unwrap());
    let (_, _, z) = sse.next_matching(10, |_, _, v| v["id"] == ZONE).await;
    assert_eq!(z["activeProblems"]["value"], 1);
    // Filtered by type: no gateway or camera change came through.
    assert!(!sse.buf.contains(GW));
    assert!(sse
        .seen
        .iter()
        .all(|(_, _, v)| v["type"] == "Sensor" || v["type"] == "Zone"));

    // Resuming after the first reading replays what followed.
    let resp = client()
        .get(format!("{}/api/v1/twin/stream?id={}", hub.base, enc(WL)))
        .header("last-event-id", &id1)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let mut resumed = SseReader::new(resp);
    let (_, rid, v) = resumed.next_matching(10, |_, _, _| true).await;
    assert_eq!(rid, id2);
    assert_eq!(v["water_level_cm"]["value"], 20.0);
    drop(resumed);

    // Temporal: between / before / after / lastN.
    let temporal = |q: String| format!("/ngsi-ld/v1/temporal/entities/{}?{q}", enc(WL));
    let values = |b: &Value| -> Vec<f64> {
        b["water_level_cm"]
            .as_array()
            .map(|a| a.iter().map(|i| i["value"].as_f64().unwrap()).collect())
            .unwrap_or_default()
    };
    // Written within about a second of the live update.
    wait_temporal(
        &hub,
        &temporal("attrs=water_level_cm".into()),
        "3 readings in history",
        |b| values(b).len() == 3,
    )
    .await;
    let b = ngsi(
        &hub,
        &temporal(format!(
            "timerel=between&timeAt={}&endTimeAt={}&attrs=water_level_cm",
            enc(&iso(T0 + 1000)),
            enc(&iso(T0 + 3000))
        )),
    )
    .await;
    assert_eq!(b["id"], WL);
    assert_eq!(b["type"], "Sensor");
    assert_eq!(values(&b), [12.5, 20.0], "{b:#}");
    assert_eq!(b["water_level_cm"][0]["type"], "Property");
    assert_eq!(b["water_level_cm"][0]["observedAt"], iso(T0 + 1000));
    assert!(b.get("status").is_none(), "attrs restricts: {b}");
    // Written within about a second of the live update.
    wait_temporal(
        &hub,
        &temporal("attrs=water_level_cm".into()),
        "3 readings in history",
        |b| values(b).len() == 3,
    )
    .await;
    let b = ngsi(
        &hub,
        &temporal(format!("timerel=before&timeAt={}", enc(&iso(T0 + 2000)))),
    )
    .await;
    assert_eq!(values(&b), [12.5]);
    // Written within about a second of the live update.
    wait_temporal(
        &hub,
        &temporal("attrs=water_level_cm".into()),
        "3 readings in history",
        |b| values(b).len() == 3,
    )
    .await;
    let b = ngsi(
        &hub,
        &temporal(format!("timerel=after&timeAt={}", enc(&iso(T0 + 2000)))),
    )
    .await;
    assert_eq!(values(&b), [31.5]);
    let b = ngsi(&hub, &temporal("lastN=2&attrs=water_level_cm".into())).await;
    assert_eq!(values(&b), [20.0, 31.5]);
    let (status, _, p) = get_with(
        &hub,
        &temporal("timerel=between&timeAt=2026-09-21T00:00:00Z".into()),
        "*/*",
    )
    .await;
    assert_eq!(status, 400);
    assert!(p["detail"].as_str().unwrap().contains("`endTimeAt`"), "{p}");
    // The zone's history too.
    let zh = wait_temporal(
        &hub,
        &format!(
            "/ngsi-ld/v1/temporal/entities/{}?attrs=activeProblems,lastEventType",
            enc(ZONE)
        ),
        "zone history",
        |b| b.get("lastEventType").is_some(),
    )
    .await;
    assert_eq!(zh["activeProblems"].as_array().unwrap().len(), 1, "{zh}");

    // The agent goes silent: its last will flips gateway and camera offline.
    agent.cut().await;
    wait_entity(&hub, GW, "gateway offline (last will)", 15, |e| {
        e["status"]["value"] == "offline"
    })
    .await;
    wait_entity(&hub, CAM, "camera offline", 5, |e| {
        e["status"]["value"] == "offline"
    })
    .await;
    let dev = hub.get("/api/v1/devices").await;
    assert!(dev.to_string().contains("offline"), "{dev}");
    // And back.
    let agent = agent_with_will(hub.mqtt, "gw-demo-01").await;
    agent
        .publish(
            &topic("gw-demo-01", "status"),
            json(&dev_status(DeviceState::Online, CameraState::Running)),
        )
        .await;
    wait_entity(&hub, CAM, "camera back online", 10, |e| {
        e["status"]["value"] == "online"
    })
    .await;
    let gh = wait_temporal(
        &hub,
        &format!("/ngsi-ld/v1/temporal/entities/{}?attrs=status", enc(GW)),
        "gateway status history",
        |b| b["status"].as_array().is_some_and(|a| a.len() == 3),
    )
    .await;
    let states: Vec<&str> = gh["status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["online", "offline", "online"], "{gh}");

    let metrics = hub.metrics().await;
    assert!(metrics.contains("csb_hub_twin_changes_total"), "{metrics}");
    assert!(
        metrics.contains("csb_hub_twin_feed_dropped_total 0"),
        "{metrics}"
    );
    let health = hub.get("/api/v1/health").await;
    assert!(
        health["twin"]["history_written"].as_u64().unwrap() > 0
            || health["twin"]["changes"].as_u64().unwrap() > 0
    );

    // The open stream must not hold up shutdown.
    agent.cut().await;
    let stopped = tokio::time::Instant::now();
    hub.stop().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        stopped.elapsed()
    );
    drop(sse);

    // A restart keeps the history and the live picture.
    let hub = TestHub::start_county(dir.path(), port).await;
    let wl = ngsi(&hub, &format!("/ngsi-ld/v1/entities/{}", enc(WL))).await;
    assert_eq!(wl["water_level_cm"]["value"], 31.5);
    assert_eq!(wl["water_level_cm"]["observedAt"], iso(T0 + 3000));
    let b = ngsi(&hub, &temporal("attrs=water_level_cm".into())).await;
    assert_eq!(values(&b), [12.5, 20.0, 31.5]);
    hub.stop().await;
}
