//! Telemetry series and rollups end to end: telemetry published over real MQTT to an
//! in-process hub, read back over HTTP and checked against values computed here.

mod common;

use common::*;
use csb_test_support::oracle::{assert_same_buckets, buckets_in, points_in, rollup};
use serde_json::Value;

const SERIES: &str = "site=yuexi&device=gw-01&source=wl-01&metric=water_level_cm";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_series_range_and_rollups_over_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // T0 lies months back: keep it inside every retention, so `auto` may choose raw.
    let keep = |c: &mut cloud_hub::HubConfig| {
        c.telemetry_retention = cloud_hub::storage::series::Retention {
            raw_days: 3650,
            minute_days: 3650,
            hour_days: 3650,
        }
    };
    let hub = TestHub::start_with(dir.path(), port, keep).await;
    let p = Client::connect(hub.mqtt, "test-gw-series").await;

    let base = T0 - T0.rem_euclid(3_600_000);
    // 3 hours of readings every 50 s, published newest first (out of order), plus noise
    // on another metric and device.
    let mut sent = Vec::new();
    let mut points = Vec::new();
    for i in (0..216).rev() {
        let ts = base + i * 50_000 + 123;
        let v = ((i * 37) % 101) as f64 / 4.0 - 5.0;
        points.push((ts, v));
        sent.push(telemetry(
            "gw-01",
            "wl-01",
            ts,
            &[("water_level_cm", v), ("battery_v", 3.6)],
        ));
    }
    sent.push(telemetry(
        "gw-02",
        "wl-01",
        base + 10,
        &[("water_level_cm", 99.0)],
    ));
    let mut messages: Vec<(String, Vec<u8>)> = sent
        .iter()
        .map(|t| (topic(&t.device, "telemetry"), json(t)))
        .collect();
    // A resend of an already-sent message must not be counted twice.
    messages.push(messages[5].clone());
    p.publish_burst(messages).await;
    hub.wait_health("telemetry to be stored", |h| {
        h["ingest"]["telemetry_accepted"].as_u64() >= Some(sent.len() as u64)
    })
    .await;
    points.sort_by_key(|p| p.0);

    let check = |hub: &TestHub| {
        let points = points.clone();
        let hub_base = hub.base.clone();
        async move {
            let h = TestHub::client_get(&hub_base);
            // Raw range: [base + 1h, base + 2h).
            let from = base + 3_600_000;
            let to = base + 7_200_000;
            let raw = h(format!(
                "/api/v1/telemetry/series/query?{SERIES}&from={from}&to={to}&resolution=raw"
            ))
            .await;
            assert_eq!(raw["resolution"], "raw", "{raw}");
            let got = points_in(&raw);
            let want: Vec<(i64, f64)> = points
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .cloned()
                .collect();
            assert_eq!(got, want);
            assert_eq!(raw["count"], want.len());
            // 1m over everything; 1h with an RFC 3339 `from` inside the first hour (the
            // bucket holding `from` is included).
            let all_to = base + 4 * 3_600_000;
            let m = h(format!(
                "/api/v1/telemetry/series/query?{SERIES}&from={base}&to={all_to}&resolution=1m"
            ))
            .await;
            assert_eq!(m["resolution"], "1m");
            assert_same_buckets(&buckets_in(&m), &rollup(&points, 60_000));
            let hr = h(format!(
                "/api/v1/telemetry/series/query?{SERIES}&from=2026-09-21T14:30:00Z&to={all_to}&resolution=1h"
            ))
            .await;
            assert_eq!(hr["resolution"], "1h");
            let want_h: Vec<_> = rollup(&points, 3_600_000)
                .into_iter()
                .filter(|b| b.t >= base)
                .collect();
            assert_same_buckets(&buckets_in(&hr), &want_h);
            // auto: 3 hours of ~216 points is raw (within raw retention).
            let auto = h(format!(
                "/api/v1/telemetry/series/query?{SERIES}&from={base}&to={all_to}"
            ))
            .await;
            assert_eq!(auto["resolution"], "raw");
            assert_eq!(auto["count"], 216);
            // The series list.
            let list = h("/api/v1/telemetry/series?device=gw-01".into()).await;
            assert_eq!(list["count"], 2, "{list}");
            let wl = list["series"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["metric"] == "water_level_cm")
                .unwrap()
                .clone();
            assert_eq!(wl["count"], 216);
            assert_eq!(wl["first_ms"], points[0].0);
            assert_eq!(wl["last_ms"], points[215].0);
        }
    };
    check(&hub).await;

    // Errors name the parameter.
    for (q, needle) in [
        ("site=yuexi&device=gw-01&source=wl-01", "metric"),
        (&format!("{SERIES}&resolution=5m") as &str, "resolution"),
        (&format!("{SERIES}&from=yesterday") as &str, "from"),
        (&format!("{SERIES}&from=20&to=10") as &str, "from"),
        (&format!("{SERIES}&limit=0") as &str, "limit"),
        (&format!("{SERIES}&bogus=1") as &str, "bogus"),
    ] {
        let (status, body) = hub
            .get_status(&format!("/api/v1/telemetry/series/query?{q}"))
            .await;
        assert_eq!(status, 400, "{q}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{q}: {body}"
        );
    }
    let (status, _) = hub
        .get_status(
            "/api/v1/telemetry/series/query?site=yuexi&device=gw-01&source=wl-01&metric=nope",
        )
        .await;
    assert_eq!(status, 404);

    // After a restart the same answers come from disk.
    hub.stop().await;
    let hub = TestHub::start_with(dir.path(), port, keep).await;
    check(&hub).await;
    hub.stop().await;
}

impl TestHub {
    /// A GET helper that does not borrow the hub (for the reusable check above).
    fn client_get(
        base: &str,
    ) -> impl Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Value> + Send>> {
        let base = base.to_string();
        move |path: String| {
            let url = format!("{base}{path}");
            Box::pin(async move {
                let resp = reqwest::get(&url).await.unwrap();
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap();
                assert_eq!(status, 200, "GET {url}: {body}");
                body
            })
        }
    }
}
