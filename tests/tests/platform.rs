//! The data platform and the digital twin against a real `cloud-hub` process with the sample
//! county, fed over MQTT (TCP): the inventory (an unregistered gateway; a gateway whose link
//! goes silent and comes back), telemetry ranges and rollups, event aggregates, NGSI-LD entity,
//! type, q and geo queries, temporal queries and the change stream. Expected values are
//! computed here from what was published (distances by haversine, independently of the hub).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csb_test_support::http::{enc, entity_ids as ids, get_json, SseReader};
use csb_test_support::mqtt::Client;
use csb_test_support::oracle::{
    aggregate_group, bucket_count, buckets_in, haversine_m, inventory_row as device, points_in,
    rollup, Bucket,
};
use csb_test_support::payloads::{topic, EventBuilder, StatusBuilder, TelemetryBuilder};
use csb_test_support::process::{county_dir, Hub};
use csb_wire::{CameraState, DeviceState};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WL: &str = "urn:ngsi-ld:Sensor:yuexi:gw-demo-01:wl-underpass-01";
const GW: &str = "urn:ngsi-ld:Gateway:yuexi:gw-demo-01";
const H: i64 = 3_600_000;
/// The gateway's MQTT keepalive: the broker gives up on a silent link after 1.5 × this.
const KEEPALIVE_S: u64 = 5;

fn status(device: &str, state: DeviceState) -> Vec<u8> {
    let camera = if state == DeviceState::Online {
        CameraState::Running
    } else {
        CameraState::Stopped
    };
    StatusBuilder::new(device, state)
        .camera("cam-tiantang-01", camera)
        .json()
}

fn reading(device: &str, source: &str, ts_ms: i64, metric: &str, v: f64) -> Vec<u8> {
    TelemetryBuilder::new(device, source)
        .ts(ts_ms)
        .metric(metric, v)
        .json()
}

fn rule_event(event_type: &str, ts_ms: i64) -> Vec<u8> {
    EventBuilder::rule(event_type)
        .rule_id("r1")
        .device("gw-demo-01")
        .camera("cam-tiantang-01")
        .ts(ts_ms)
        .without_frame()
        .category("0101")
        .zone("no-parking-north")
        .json()
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

fn point(e: &Value) -> Option<[f64; 2]> {
    let loc = &e["location"]["value"];
    (loc["type"] == "Point").then(|| {
        [
            loc["coordinates"][0].as_f64().unwrap(),
            loc["coordinates"][1].as_f64().unwrap(),
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_answers_over_http_what_mqtt_fed_a_hub_process() {
    let hub = Hub::builder()
        .config(&format!(
            "county_dir = {:?}\n",
            county_dir().display().to_string()
        ))
        .start();
    let (mqtt_port, http) = (hub.mqtt_port, hub.http.clone());

    // The registered inventory before anything is heard.
    let inv = get(&http, "/api/v1/inventory").await;
    let registered = inv["summary"]["registered"].as_u64().unwrap();
    assert!(registered >= 20, "{}", inv["summary"]);
    assert_eq!(inv["summary"]["unregistered"], 0);

    // The demo gateway, through a link that can go silent, with the agent's last will.
    let link = SilentLink::start(mqtt_port).await;
    let _gw = Client::options("gw-demo-01")
        .keep_alive(KEEPALIVE_S)
        .will(
            &topic("gw-demo-01", "status"),
            status("gw-demo-01", DeviceState::Offline),
        )
        .hello(&topic("gw-demo-01", "status"), || {
            status("gw-demo-01", DeviceState::Online)
        })
        .connect(([127, 0, 0, 1], link.port).into())
        .await;

    // Follow the water level sensor's changes from here on.
    let sse = reqwest::Client::new()
        .get(format!("{http}/api/v1/twin/stream?id={}", enc(WL)))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut sse = SseReader::new(sse);

    // Two hours of water levels every 30 s, ending a minute ago, on whole hours from `base`.
    let now = csb_wire::now_ms();
    let base = now - now.rem_euclid(H) - 2 * H;
    let points: Vec<(i64, f64)> = (0..240)
        .map(|i| (base + i * 30_000 + 7, ((i * 37) % 101) as f64 / 4.0))
        .collect();
    let data_pub = Client::connect(hub.mqtt, "e2e-platform-data").await;
    for (t, v) in &points {
        data_pub
            .publish(
                &topic("gw-demo-01", "telemetry"),
                reading("gw-demo-01", "wl-underpass-01", *t, "water_level_cm", *v),
            )
            .await;
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
            .publish(&topic("gw-demo-01", "event"), rule_event(ty, ts))
            .await;
    }
    // A gateway the county never registered.
    data_pub
        .publish(
            &topic("gw-stray-77", "status"),
            status("gw-stray-77", DeviceState::Online),
        )
        .await;
    data_pub
        .publish(
            &topic("gw-stray-77", "telemetry"),
            reading("gw-stray-77", "wl-x", now, "water_level_cm", 3.0),
        )
        .await;

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
    let got = points_in(&raw);
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
        let exact = |b: &[Bucket]| b.iter().map(Bucket::exact).collect::<Vec<_>>();
        let got = exact(&buckets_in(&body));
        assert_eq!(got, exact(&rollup(&points, width)), "{res}");
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
        let g = aggregate_group(&agg, ty);
        for h in 0..2 {
            let want = plan
                .iter()
                .filter(|(t, ts)| *t == ty && (ts - base) / H == h)
                .count() as u64;
            let got = bucket_count(g, base + h * H);
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
    let (_, _, change) = sse
        .next_matching(15, |_, _, v| {
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
