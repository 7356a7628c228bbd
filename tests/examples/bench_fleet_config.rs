//! Benchmark (issue 18, Done-when 5): how long a configuration change takes to be applied on
//! 1, 10 and 100 agents. A real hub and real `edge-agent synth` processes (the agent's uplink,
//! outbox, command desk and managed-config store; no camera pipeline, so 100 fit on a small
//! machine). For each fleet size: all agents online, then a zone change PUT for every device at
//! once; reported: time until every agent has applied it (as the hub records the answers), and
//! the per-device set → applied latency p50 / p95 / max.
//!
//!   cargo run --release -p csb-e2e --example bench_fleet_config -- 1,10,100

use std::time::{Duration, Instant};

use csb_test_support::agent::AgentToml;
use csb_test_support::http::{client, get_json_with};
use csb_test_support::process::{media, spawn_synth, Hub, Proc};
use serde_json::{json, Value};

fn pct(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(n: usize) -> Value {
    let hub = Hub::builder().start();
    let dir = tempfile::tempdir().unwrap();
    let video = media("vtest.avi");
    let mut agents: Vec<Proc> = Vec::new();
    let devices: Vec<String> = (0..n).map(|i| format!("gw-bench-{i:03}")).collect();
    for d in &devices {
        let cfg = AgentToml::new(d, hub.mqtt_port)
            .outbox_dir(dir.path().join(format!("outbox-{d}")))
            .camera("cam-1", video.to_str().unwrap(), "")
            .write_as(dir.path(), &format!("{d}.toml"));
        agents.push(spawn_synth(
            &cfg,
            &dir.path().join(format!("{d}.ids")),
            0,
            1,
        ));
    }
    // Every agent online (its retained status at the hub).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = get_json_with(&hub.url("/api/v1/devices"), None)
            .await
            .unwrap_or(Value::Null);
        let online = list["devices"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|d| d["state"] == "online").count());
        if online >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {online} of {n} agents online"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = json!({ "cameras": [ { "id": "cam-1", "analytics": {
        "zones": [ { "id": "kerb", "polygon": [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]] } ],
        "rules": [ { "id": "crowd", "event_type": "crowd", "kind": { "crowd": { "zone": "kerb", "min_count": 3 } } } ] } } ] });
    let t0 = Instant::now();
    // Eight requests in flight, as an operator's script would send them (the hub answers 503
    // beyond its concurrent-call limit rather than piling up threads).
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    let puts = devices.iter().map(|d| {
        let url = hub.url(&format!("/api/v1/fleet/configs/yuexi/{d}"));
        let (body, slots) = (body.clone(), slots.clone());
        async move {
            let _slot = slots.acquire().await.expect("semaphore");
            let r = client().put(url).json(&body).send().await.expect("PUT");
            assert_eq!(r.status().as_u16(), 202);
        }
    });
    futures_join(puts).await;
    let put_ms = t0.elapsed().as_millis();
    loop {
        let list = get_json_with(&hub.url("/api/v1/fleet/configs"), None)
            .await
            .unwrap_or(Value::Null);
        if list["in_sync"].as_u64() == Some(n as u64) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "not all applied: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_ms = t0.elapsed().as_millis();
    let mut lat = Vec::new();
    for d in &devices {
        let r = get_json_with(&hub.url(&format!("/api/v1/fleet/configs/yuexi/{d}")), None)
            .await
            .unwrap();
        lat.push(r["applied_ms"].as_i64().unwrap() - r["desired"]["set_ms"].as_i64().unwrap());
    }
    lat.sort();
    for mut a in agents {
        a.terminate(Duration::from_secs(10));
    }
    json!({
        "agents": n,
        "all_puts_answered_ms": put_ms,
        "all_applied_ms": all_ms,
        "set_to_applied_ms": { "p50": pct(&lat, 0.5), "p95": pct(&lat, 0.95), "max": lat[lat.len() - 1] },
    })
}

/// Runs the futures as tasks and waits for all.
async fn futures_join<F: std::future::Future<Output = ()> + Send + 'static>(
    fs: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    for h in handles {
        h.await.expect("a PUT task");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "1,10,100".into())
        .split(',')
        .map(|s| s.trim().parse().expect("fleet sizes like 1,10,100"))
        .collect();
    let mut rows = Vec::new();
    for n in sizes {
        let r = run(n).await;
        println!("{r}");
        rows.push(r);
    }
    println!("\nagents | all PUTs answered | all applied | set→applied p50 / p95 / max");
    for r in &rows {
        println!(
            "{:>6} | {:>14} ms | {:>8} ms | {} / {} / {} ms",
            r["agents"],
            r["all_puts_answered_ms"],
            r["all_applied_ms"],
            r["set_to_applied_ms"]["p50"],
            r["set_to_applied_ms"]["p95"],
            r["set_to_applied_ms"]["max"]
        );
    }
}
