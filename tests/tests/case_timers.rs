//! SLA timers survive a crash: a hub process opens an illegal-parking case from a rule event
//! (the governance copy here gives the category a 1-minute natural limit, so its warning is due
//! at 48 s and its escalation after 60 s), is killed with SIGKILL a few seconds later, stays
//! down across both, and once restarted fires each exactly once — not zero times, not twice.

use std::time::{Duration, Instant};

use csb_test_support::mqtt::Client;
use csb_test_support::payloads::{json, topic, EventBuilder};
use csb_test_support::process::{free_port, governance_copy, patch_governance, Hub};
use serde_json::Value;
use ulid::Ulid;

/// The shipped governance with illegal parking at a 1-minute limit, registered at once.
fn governance(dir: &std::path::Path) -> std::path::PathBuf {
    let gov = governance_copy(dir);
    let cat = Some("illegal-parking");
    patch_governance(
        &gov,
        "categories.toml",
        cat,
        "limit = { value = 2, unit = \"working_hours\" }",
        "limit = { value = 1, unit = \"natural_minutes\" }",
    );
    patch_governance(
        &gov,
        "categories.toml",
        cat,
        "min_duration_s = 120",
        "min_duration_s = 0",
    );
    gov
}

fn timers(case: &Value) -> (usize, usize) {
    let count = |name: &str| {
        case["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == name)
            .count()
    };
    (count("sla_warning"), count("sla_overdue"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_down_across_a_deadline_fires_each_due_timer_once_after_restart() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let config = format!(
        "governance_dir = {:?}\ncase_sweep_ms = 200\n",
        governance(scratch.path()).display().to_string()
    );
    let (mqtt_port, http_port) = (free_port(), free_port());
    let start = || {
        Hub::builder()
            .ports(mqtt_port, http_port)
            .data_dir(&data)
            .config(&config)
            .start()
    };
    let mut hub = start();
    let edge = Client::connect(hub.mqtt, "gw-01-timers").await;
    let event = EventBuilder::rule("illegal_parking")
        .device("gw-01")
        .camera("cam-01")
        .objects(&[(2, "car")])
        .category("0505")
        .zone("no-parking")
        .problem(Ulid::new())
        .duration(5_000)
        .build();
    edge.publish(&topic("gw-01", "event"), json(&event)).await;
    let list = hub.url("/api/v1/cases?open=true");
    let mut case = Value::Null;
    for _ in 0..100 {
        if let Some(body) = hub.get_json(&list).await {
            if let Some(c) = body["cases"].as_array().and_then(|a| a.first()) {
                case = c.clone();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(case["state"], "dispatched", "{case:#}");
    let id = case["id"].as_str().unwrap().to_string();
    let deadline = case["deadline_ms"].as_i64().unwrap();
    assert_eq!(timers(&case), (0, 0));
    drop(edge);

    // A crash well before the warning (48 s) and the deadline (60 s)…
    hub.kill9();
    let down_until = Instant::now()
        + Duration::from_millis((deadline - csb_wire::now_ms()).max(0) as u64)
        + Duration::from_secs(2);
    tokio::time::sleep_until(down_until.into()).await;
    // …and back after both.
    let hub = start();
    let url = hub.url(&format!("/api/v1/cases/{id}"));
    let mut seen = (0, 0);
    for _ in 0..100 {
        case = hub.get_json(&url).await.unwrap();
        seen = timers(&case);
        if seen == (1, 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, (1, 1), "warning and escalation once each: {case:#}");
    assert_eq!(case["light"], "red");
    // More sweeps fire nothing again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let case = hub.get_json(&url).await.unwrap();
    assert_eq!(timers(&case), (1, 1), "{case:#}");
    let fired_at: Vec<i64> = case["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("sla_"))
        .map(|e| e["at_ms"].as_i64().unwrap())
        .collect();
    assert!(
        fired_at.iter().all(|&t| t > deadline),
        "fired after the restart: {fired_at:?}"
    );
}
