//! The data platform and the digital twin against a real `cloud-hub` process with the sample
//! county, fed over MQTT (TCP): the inventory (an unregistered gateway; a gateway whose link
//! goes silent and comes back), telemetry ranges and rollups, event aggregates, NGSI-LD entity,
//! type, q and geo queries, temporal queries and the change stream. Expected values are
//! computed here from what was published (distances by haversine, independently of the hub).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csb_e2e::{free_port, get_json, root, spawn_hub_with};
use csb_wire::{
    CameraState, CameraStatus, DeviceState, DeviceStatus, Event, EventKind, Phase, RuleInfo,
    RuleType, Telemetry,
};
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ulid::Ulid;

const WL: &str = "urn:ngsi-ld:Sensor:yuexi:gw-demo-01:wl-underpass-01";
const GW: &str = "urn:ngsi-ld:Gateway:yuexi:gw-demo-01";
const H: i64 = 3_600_000;
/// The gateway's MQTT keepalive: the broker gives up on a silent link after 1.5 × this.
const KEEPALIVE_S: u64 = 5;

fn topic(device: &str, channel: &str) -> String {
    format!("csb/v1/yuexi/{device}/{channel}")
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn status(device: &str, state: DeviceState) -> Vec<u8> {
    serde_json::to_vec(&DeviceStatus {
        v: 1,
        site: "yuexi".into(),
        device: device.into(),
        ts_ms: csb_wire::now_ms(),
        state,
        agent_version: Some("0.1.0".into()),
        cameras: vec![CameraStatus {
            id: "cam-tiantang-01".into(),
            state: if state == DeviceState::Online {
                CameraState::Running
            } else {
                CameraState::Stopped
            },
            fps: Some(10.0),
            error: None,
            health: None,
        }],
        sensors: vec![],
        outbox: None,
    })
    .unwrap()
}

fn reading(device: &str, source: &str, ts_ms: i64, metric: &str, v: f64) -> Vec<u8> {
    serde_json::to_vec(&Telemetry {
        v: 1,
        id: Ulid::new(),
        site: "yuexi".into(),
        device: device.into(),
        source: source.into(),
        ts_ms,
        metrics: BTreeMap::from([(metric.to_string(), v)]),
    })
    .unwrap()
}

fn rule_event(event_type: &str, ts_ms: i64) -> Vec<u8> {
    serde_json::to_vec(&Event {
        v: 1,
        id: Ulid::new(),
        site: "yuexi".into(),
        device: "gw-demo-01".into(),
        camera: "cam-tiantang-01".into(),
        kind: EventKind::Rule,
        ts_ms,
        frame: None,
        model: None,
        objects: vec![],
        rule: Some(RuleInfo {
            rule: "r1".into(),
            rule_type: RuleType::Dwell,
            event_type: event_type.into(),
            category: Some("0101".into()),
            phase: Phase::Start,
            problem_id: Ulid::new(),
            zone: Some("no-parking-north".into()),
            track_ids: vec![],
            started_ms: ts_ms,
            duration_ms: 0,
            count: None,
            direction: None,
            value: None,
            metric: None,
            snapshot: None,
        }),
    })
    .unwrap()
}

/// A status topic and the payload to publish there on every connection.
type Hello = (String, fn() -> Vec<u8>);

/// An MQTT client whose event loop runs in the background (reconnecting as rumqttc does);
/// returns once the first CONNACK arrived. With `hello`, it publishes that status on every
/// CONNACK, as the agent does (a clean session drops what was in flight on the dead link).
async fn mqtt(port: u16, id: &str, will: Option<LastWill>, hello: Option<Hello>) -> AsyncClient {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(KEEPALIVE_S));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(w) = will {
        opts.set_last_will(w);
    }
    let (client, mut el) = AsyncClient::new(opts, 1024);
    let again = client.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    if let Some((topic, payload)) = &hello {
                        let _ = again.try_publish(topic, QoS::AtLeastOnce, false, payload());
                    }
                    if let Some(t) = tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("CONNACK within 10 s")
        .unwrap();
    client
}

/// A TCP relay to the hub's MQTT port that can go silent: while `frozen`, it forwards nothing
/// in either direction but keeps every connection open — a link that died without a FIN (a
/// cut cable, a gateway that lost power behind a NAT), which only the keepalive can notice.
struct SilentLink {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl SilentLink {
    async fn start(hub_port: u16) -> SilentLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(hub) = TcpStream::connect(("127.0.0.1", hub_port)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (hr, hw) = hub.into_split();
                tokio::spawn(pump(cr, hw, f.clone()));
                tokio::spawn(pump(hr, cw, f.clone()));
            }
        });
        SilentLink { port, frozen }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // Reading is cancel-safe: a timeout only means "look at the switch again".
        match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// GET `path` as JSON, panicking with the status and body unless 200.
async fn get(http: &str, path: &str) -> Value {
    let resp = reqwest::get(format!("{http}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
}

/// Polls `path` until `pred` holds (at most `secs`); returns the body and when it held.
async fn wait_for(http: &str, path: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Some(v) = get_json(&format!("{http}{path}")).await {
            if pred(&v) {
                return v;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("GET {path}: the condition did not hold within {secs} s; last: {last:#}");
}

fn device<'a>(inv: &'a Value, id: &str) -> &'a Value {
    inv["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("{id} is in the inventory"))
}

/// Great-circle distance in metres on the mean Earth sphere, computed here rather than by
/// the hub's geo module.
fn haversine_m(a: [f64; 2], b: [f64; 2]) -> f64 {
    let r = 6_371_008.8;
    let (p1, p2) = (a[1].to_radians(), b[1].to_radians());
    let (dp, dl) = (p2 - p1, (b[0] - a[0]).to_radians());
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * r * h.sqrt().asin()
}

fn point(e: &Value) -> Option<[f64; 2]> {
    let loc = &e["location"]["value"];
    (loc["type"] == "Point").then(|| {
        [
            loc["coordinates"][0].as_f64().unwrap(),
            loc["coordinates"][1].as_f64().unwrap(),
        ]
    })
}

fn ids(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("an entity array: {v}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// (bucket start, min, max, count) per `width`, computed here.
fn rollup(points: &[(i64, f64)], width: i64) -> Vec<(i64, f64, f64, u64)> {
    let mut m: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for (t, v) in points {
        m.entry(t - t.rem_euclid(width)).or_default().push(*v);
    }
    m.into_iter()
        .map(|(t, vs)| {
            let min = vs.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = vs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            (t, min, max, vs.len() as u64)
        })
        .collect()
}

/// The next server-sent event whose data satisfies `pred`, read from a streaming response.
async fn next_sse(
    resp: &mut reqwest::Response,
    buf: &mut String,
    secs: u64,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if data.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&data).unwrap();
            if pred(&v) {
                return v;
            }
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("the change arrives on the stream in time")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_answers_over_http_what_mqtt_fed_a_hub_process() {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt_port, http_port) = (free_port(), free_port());
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "county_dir = {:?}\n",
            root().join("configs/county").display().to_string()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let _hub = spawn_hub_with(mqtt_port, http_port, &data, Some(&config));
    let http = format!("http://127.0.0.1:{http_port}");

    // The registered inventory before anything is heard.
    let inv = get(&http, "/api/v1/inventory").await;
    let registered = inv["summary"]["registered"].as_u64().unwrap();
    assert!(registered >= 20, "{}", inv["summary"]);
    assert_eq!(inv["summary"]["unregistered"], 0);

    // The demo gateway, through a link that can go silent, with the agent's last will.
    let link = SilentLink::start(mqtt_port).await;
    let will = LastWill::new(
        topic("gw-demo-01", "status"),
        status("gw-demo-01", DeviceState::Offline),
        QoS::AtLeastOnce,
        false,
    );
    let online = || status("gw-demo-01", DeviceState::Online);
    let _gw = mqtt(
        link.port,
        "gw-demo-01",
        Some(will),
        Some((topic("gw-demo-01", "status"), online)),
    )
    .await;

    // Follow the water level sensor's changes from here on.
    let mut sse = reqwest::Client::new()
        .get(format!("{http}/api/v1/twin/stream?id={}", enc(WL)))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut sse_buf = String::new();

    // Two hours of water levels every 30 s, ending a minute ago, on whole hours from `base`.
    let now = csb_wire::now_ms();
    let base = now - now.rem_euclid(H) - 2 * H;
    let points: Vec<(i64, f64)> = (0..240)
        .map(|i| (base + i * 30_000 + 7, ((i * 37) % 101) as f64 / 4.0))
        .collect();
    let data_pub = mqtt(mqtt_port, "e2e-platform-data", None, None).await;
    for (t, v) in &points {
        data_pub
            .publish(
                topic("gw-demo-01", "telemetry"),
                QoS::AtLeastOnce,
                false,
                reading("gw-demo-01", "wl-underpass-01", *t, "water_level_cm", *v),
            )
            .await
            .unwrap();
    }
    // Events: 5 illegal parking and 3 street vending starts over the two hours.
    let mut plan = Vec::new();
    for i in 0..8 {
        let ty = if i < 5 {
            "illegal_parking"
        } else {
            "street_vending"
        };
        let ts = base + i * 15 * 60_000 + 1000;
        plan.push((ty, ts));
        data_pub
            .publish(
                topic("gw-demo-01", "event"),
                QoS::AtLeastOnce,
                false,
                rule_event(ty, ts),
            )
            .await
            .unwrap();
    }
    // A gateway the county never registered.
    data_pub
        .publish(
            topic("gw-stray-77", "status"),
            QoS::AtLeastOnce,
            false,
            status("gw-stray-77", DeviceState::Online),
        )
        .await
        .unwrap();
    data_pub
        .publish(
            topic("gw-stray-77", "telemetry"),
            QoS::AtLeastOnce,
            false,
            reading("gw-stray-77", "wl-x", now, "water_level_cm", 3.0),
        )
        .await
        .unwrap();

    // ---- Inventory: counts, the unregistered gateway, per-source volume.
    let inv = wait_for(&http, "/api/v1/inventory", 30, |v| {
        v["summary"]["telemetry"] == 241
            && v["summary"]["events"] == 8
            && device(v, "yuexi/gw-demo-01")["status"] == "online"
    })
    .await;
    let s = &inv["summary"];
    assert_eq!(s["registered"].as_u64(), Some(registered));
    assert!(s["unregistered"].as_u64() >= Some(1), "{s}");
    let stray = device(&inv, "yuexi/gw-stray-77");
    assert_eq!(stray["registered"], false);
    assert_eq!(stray["status"], "online");
    let gw_row = device(&inv, "yuexi/gw-demo-01");
    assert_eq!(gw_row["status"], "online");
    assert_eq!(
        device(&inv, "yuexi/gw-demo-01/wl-underpass-01")["telemetry"],
        240
    );
    for by in ["by_kind", "by_status", "by_town", "by_department"] {
        let sum: u64 = s[by]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(Some(sum), s["devices"].as_u64(), "{by}: {s}");
    }
    let wl_source = inv["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "yuexi/gw-demo-01/wl-underpass-01")
        .unwrap_or_else(|| panic!("the water level source: {}", inv["sources"]));
    assert_eq!(wl_source["records"], 240);
    assert_eq!(wl_source["first_ts_ms"], points[0].0);
    assert_eq!(wl_source["last_ts_ms"], points[239].0);

    // ---- Telemetry: a raw range and the 1-minute and 1-hour rollups.
    let series = "site=yuexi&device=gw-demo-01&source=wl-underpass-01&metric=water_level_cm";
    let (from, to) = (base + H / 2, base + H);
    let raw = wait_for(
        &http,
        &format!("/api/v1/telemetry/series/query?{series}&from={from}&to={to}&resolution=raw"),
        15,
        |v| v["points"].as_array().map(Vec::len) == Some(60),
    )
    .await;
    let want: Vec<(i64, f64)> = points
        .iter()
        .copied()
        .filter(|(t, _)| *t >= from && *t < to)
        .collect();
    let got: Vec<(i64, f64)> = raw["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["t"].as_i64().unwrap(), p["v"].as_f64().unwrap()))
        .collect();
    assert_eq!(got, want);
    for (res, width) in [("1m", 60_000), ("1h", H)] {
        let body = get(
            &http,
            &format!(
                "/api/v1/telemetry/series/query?{series}&from={base}&to={}&resolution={res}",
                base + 2 * H
            ),
        )
        .await;
        let got: Vec<(i64, f64, f64, u64)> = body["buckets"]
            .as_array()
            .unwrap_or_else(|| panic!("{res} buckets: {body}"))
            .iter()
            .map(|b| {
                (
                    b["t"].as_i64().unwrap(),
                    b["min"].as_f64().unwrap(),
                    b["max"].as_f64().unwrap(),
                    b["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, rollup(&points, width), "{res}");
    }

    // ---- Event history: per type and hour.
    let agg = get(
        &http,
        &format!(
            "/api/v1/events/aggregate?from={base}&to={}&by=event_type&bucket=1h",
            base + 2 * H
        ),
    )
    .await;
    assert_eq!(agg["total"], 8, "{agg}");
    for ty in ["illegal_parking", "street_vending"] {
        let g = agg["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["key"][0] == ty)
            .unwrap_or_else(|| panic!("{ty}: {agg}"));
        for h in 0..2 {
            let want = plan
                .iter()
                .filter(|(t, ts)| *t == ty && (ts - base) / H == h)
                .count() as u64;
            let got = g["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b[0] == base + h * H)
                .map_or(0, |b| b[1].as_u64().unwrap());
            assert_eq!(got, want, "{ty} hour {h}");
        }
    }

    // ---- The twin: types, one entity, q, geo.
    let types = get(&http, "/ngsi-ld/v1/types").await;
    let type_names = types["typeList"].to_string();
    for t in ["Town", "RoadSegment", "Camera", "Sensor", "Gateway", "Zone"] {
        assert!(type_names.contains(t), "{t} in {types}");
    }
    let last = points[239];
    let wl = wait_for(
        &http,
        &format!("/ngsi-ld/v1/entities/{}", enc(WL)),
        15,
        |e| e["water_level_cm"]["value"] == last.1,
    )
    .await;
    assert_eq!(wl["type"], "Sensor");
    assert_eq!(wl["water_level_cm"]["type"], "Property");
    assert!(wl["water_level_cm"]["observedAt"].is_string(), "{wl}");
    let wl_at = point(&wl).expect("the sensor has a point location");
    let above = last.1 - 0.5;
    let q = get(
        &http,
        &format!(
            "/ngsi-ld/v1/entities?type=Sensor&q={}",
            enc(&format!("water_level_cm>{above}"))
        ),
    )
    .await;
    assert_eq!(ids(&q), BTreeSet::from([WL.to_string()]));
    // near: exactly the devices within 800 m of the sensor, by haversine over all of them.
    let all = get(
        &http,
        "/ngsi-ld/v1/entities?type=Camera,Sensor,Gateway&limit=1000",
    )
    .await;
    let within: BTreeSet<String> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| point(e).is_some_and(|p| haversine_m(p, wl_at) <= 800.0))
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        within.len() >= 2 && within.len() < ids(&all).len(),
        "{within:?}"
    );
    let near = get(
        &http,
        &format!(
            "/ngsi-ld/v1/entities?type=Camera,Sensor,Gateway&limit=1000&georel={}&geometry=Point&coordinates={}",
            enc("near;maxDistance==800"),
            enc(&format!("[{},{}]", wl_at[0], wl_at[1]))
        ),
    )
    .await;
    assert_eq!(ids(&near), within);

    // ---- Temporal: the readings of the last half hour, in order.
    let t_from = base + 3 * H / 2;
    let want: Vec<f64> = points
        .iter()
        .filter(|(t, _)| *t >= t_from)
        .map(|p| p.1)
        .collect();
    // The twin writes its history about once a second.
    let temporal = wait_for(
        &http,
        &format!(
            "/ngsi-ld/v1/temporal/entities/{}?attrs=water_level_cm&timerel=between&timeAt={t_from}&endTimeAt={}",
            enc(WL),
            base + 2 * H
        ),
        15,
        |v| v["water_level_cm"].as_array().map(Vec::len) == Some(want.len()),
    )
    .await;
    let got: Vec<f64> = temporal["water_level_cm"]
        .as_array()
        .unwrap_or_else(|| panic!("temporal values: {temporal}"))
        .iter()
        .map(|i| i["value"].as_f64().unwrap())
        .collect();
    assert_eq!(got, want, "{temporal}");

    // ---- The change stream saw the sensor's readings.
    let change = next_sse(&mut sse, &mut sse_buf, 15, |v| {
        v["id"] == WL && v["water_level_cm"]["value"] == last.1
    })
    .await;
    assert_eq!(change["type"], "Sensor");

    // ---- The gateway's link goes silent (no FIN): the keepalive expires, the broker sends
    // the last will, and inventory and twin show it offline within the keepalive window.
    let silent_at = Instant::now();
    link.freeze(true);
    let window = KEEPALIVE_S * 3 / 2 + 5;
    wait_for(&http, "/api/v1/inventory", window, |v| {
        device(v, "yuexi/gw-demo-01")["status"] == "offline"
    })
    .await;
    wait_for(
        &http,
        &format!("/ngsi-ld/v1/entities/{}", enc(GW)),
        5,
        |e| e["status"]["value"] == "offline",
    )
    .await;
    let took = silent_at.elapsed();
    // Not before the broker could know: keepalive × 1.5 minus the time since the last ping.
    assert!(took >= Duration::from_secs(2), "offline after {took:?}");

    // Back: the link carries again; the gateway notices its dead connection, reconnects and
    // reports online.
    link.freeze(false);
    wait_for(&http, "/api/v1/inventory", 30, |v| {
        device(v, "yuexi/gw-demo-01")["status"] == "online"
    })
    .await;
    wait_for(
        &http,
        &format!("/ngsi-ld/v1/entities/{}", enc(GW)),
        5,
        |e| e["status"]["value"] == "online",
    )
    .await;
}
