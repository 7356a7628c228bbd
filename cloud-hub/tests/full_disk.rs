//! A full data volume is an alarm: the hub runs on a small tmpfs, the volume is filled, and
//! events published meanwhile are not acked (nothing is acked that was not stored) while
//! `/api/v1/health` says `degraded` (503) with the reason and `/metrics` counts the failed
//! writes; once space returns, the resent events are stored and acked and health is ok again.
//!
//! Needs to mount a tmpfs (root, or a container allowing it); otherwise it says why and skips.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use csb_test_support::disk::Tmpfs;
use csb_wire::Event;

async fn stored(hub: &TestHub, e: &Event) -> bool {
    let (status, _) = hub.get_status(&format!("/api/v1/events/{}", e.id)).await;
    status == 200
}

async fn metric(hub: &TestHub, name: &str) -> f64 {
    let text = hub.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_health_degraded_acks_nothing_unstored_and_recovers() {
    let volume = match Tmpfs::mount("24m") {
        Ok(v) => v,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_turns_health_degraded_acks_nothing_unstored_and_recovers: {why}");
            return;
        }
    };
    let data = volume.path().join("hub");
    let hub = TestHub::start_with(&data, free_port(), |c| c.store_cache_mb = 1).await;
    let gw = hub.edge("gw-01", "gw-01").await;

    // Space: stored and acked.
    let before: Vec<Event> = (0..20)
        .map(|i| event("gw-01", "cam-01", T0 + i, &[(2, "car")]))
        .collect();
    for e in &before {
        gw.publish(&topic("gw-01", "event"), json(e)).await;
    }
    let want: BTreeSet<_> = before.iter().map(|e| e.id).collect();
    assert_eq!(acked_ids(&gw.acks_covering(&want).await), want);
    assert!(metric(&hub, "csb_hub_store_free_bytes ").await > 1e6);

    // No space: nothing acked, health degraded with the reason.
    let filler = volume.fill();
    let during: Vec<Event> = (0..30)
        .map(|i| event("gw-01", "cam-01", T0 + 1000 + i, &[(0, "person")]))
        .collect();
    for e in &during {
        gw.publish(&topic("gw-01", "event"), json(e)).await;
    }
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        let (status, h) = hub.get_status("/api/v1/health").await;
        last = h;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["status"], "degraded", "{last:#}");
    let reasons = last["reasons"].to_string();
    assert!(reasons.contains("store: writes failing"), "{last:#}");
    assert!(reasons.contains("No space left on device"), "{last:#}");
    assert!(reasons.contains(&data.display().to_string()), "{last:#}");
    assert!(
        last["storage"]["write_failures"].as_u64().unwrap() >= 1,
        "{last:#}"
    );
    // Ingest gives a batch three tries (~2 s) before dropping it unacked. The first events may
    // still fit in the last page of the segment file; whatever is acked must be stored, and
    // whatever is not acked must not be.
    let acked = acked_ids(&gw.acks_within(Duration::from_secs(4)).await);
    assert!(
        acked.len() < during.len(),
        "all acked on a full disk: {acked:?}"
    );
    for e in &during {
        assert_eq!(
            stored(&hub, e).await,
            acked.contains(&e.id),
            "{} acked and stored must agree",
            e.id
        );
    }
    assert!(metric(&hub, "csb_hub_store_write_failures_total ").await >= 1.0);
    assert_eq!(
        metric(&hub, "csb_hub_store_writes_failing{kind=\"batch\"} ").await,
        1.0
    );
    assert!(metric(&hub, "csb_hub_store_free_bytes ").await < 1e5);
    let (status, _) = hub.get_status("/api/v1/events?limit=5").await;
    assert_eq!(status, 200, "reads go on");

    // Space again: the edge resends what is unacked, it is stored once and acked; health is
    // ok again.
    std::fs::remove_file(&filler).unwrap();
    let unacked: Vec<&Event> = during.iter().filter(|e| !acked.contains(&e.id)).collect();
    for e in &unacked {
        gw.publish(&topic("gw-01", "event"), json(e)).await;
    }
    let want: BTreeSet<_> = unacked.iter().map(|e| e.id).collect();
    assert_eq!(acked_ids(&gw.acks_covering(&want).await), want);
    for e in before.iter().chain(&during) {
        assert!(stored(&hub, e).await, "{} acked but not stored", e.id);
    }
    let h = hub.wait_health("ok again", |h| h["status"] == "ok").await;
    assert_eq!(h["reasons"], serde_json::json!([]), "{h:#}");
    assert_eq!(h["storage"]["events"], 50, "{h:#}");
    assert_eq!(
        metric(&hub, "csb_hub_store_writes_failing{kind=\"batch\"} ").await,
        0.0
    );
    hub.stop().await;
}
