//! Record log retention in a running hub: a store holding several segments of events received
//! 40 days ago is opened by a hub with `events_retention_days = 30`; while devices publish, the
//! hub drops those segments, reads (by id, time range, aggregates) stay right throughout, and a
//! resend of an event received inside the dedup window is acked but not stored again.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use cloud_hub::storage::reclog::LogOptions;
use cloud_hub::storage::store::{SledStore, Store, StoreOptions, WriteBatch};
use common::*;
use csb_wire::Event;

const DAY: i64 = 86_400_000;

/// Writes `events` as received at `received_ms`, into segments of 64 KiB.
async fn preload(dir: &Path, batches: &[(Vec<Event>, i64)]) {
    let mut opts = StoreOptions::new(8);
    opts.events = LogOptions {
        segment_bytes: 64 * 1024,
        background: false,
        ..LogOptions::default()
    };
    let d = dir.to_path_buf();
    let store = tokio::task::spawn_blocking(move || SledStore::open_with(&d, &opts))
        .await
        .unwrap()
        .unwrap();
    for (events, received_ms) in batches {
        let out = store
            .write(WriteBatch {
                events: events.clone(),
                received_ms: *received_ms,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(out.events_inserted, events.len() as u64);
    }
    store.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_old_segments_while_the_hub_ingests_and_reads_stay_right() {
    let dir = tempfile::tempdir().unwrap();
    let now = csb_wire::now_ms();
    // 3000 events of 40 days ago (~20 segments), 300 of 2 days ago (inside the window).
    let old: Vec<Event> = (0..3000)
        .map(|i| event("gw-01", "cam-01", now - 40 * DAY + i, &[(2, "car")]))
        .collect();
    let recent: Vec<Event> = (0..300)
        .map(|i| event("gw-02", "cam-01", now - 2 * DAY + i, &[(0, "person")]))
        .collect();
    let mut batches: Vec<(Vec<Event>, i64)> = old
        .chunks(100)
        .map(|c| (c.to_vec(), now - 40 * DAY))
        .collect();
    batches.extend(recent.chunks(100).map(|c| (c.to_vec(), now - 2 * DAY)));
    preload(dir.path(), &batches).await;
    let segments_before = std::fs::read_dir(dir.path().join("events"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .count();
    assert!(segments_before >= 15, "{segments_before} segments");

    let hub = TestHub::start_with(dir.path(), free_port(), |c| {
        c.events_retention_days = 30;
    })
    .await;
    let gw = hub.edge("gw-03", "gw-03").await;
    let fresh: Vec<Event> = (0..200)
        .map(|i| event("gw-03", "cam-01", now + i, &[(2, "car")]))
        .collect();
    let count_all = format!(
        "/api/v1/events/aggregate?from={}&to={}",
        now - 50 * DAY,
        now + DAY
    );
    // Publishing and reading while retention runs: no read may fail, and what is counted is
    // never less than what stays.
    let mut dropped = 0;
    for (k, e) in fresh.iter().enumerate() {
        gw.publish(&topic("gw-03", "event"), json(e)).await;
        if k % 20 == 0 {
            let (status, agg) = hub.get_status(&count_all).await;
            assert_eq!(status, 200, "{agg}");
            assert!(agg["total"].as_u64().unwrap() >= 300, "{agg}");
            let (status, page) = hub
                .get_status("/api/v1/events?device=gw-02&limit=1000")
                .await;
            assert_eq!((status, page["count"].as_u64()), (200, Some(300)), "{page}");
            let health = hub.get("/api/v1/health").await;
            dropped = health["storage"]["events_log"]["segments_dropped"]
                .as_u64()
                .unwrap();
        }
    }
    let want: BTreeSet<_> = fresh.iter().map(|e| e.id).collect();
    assert_eq!(acked_ids(&gw.acks_covering(&want).await), want);
    let health = hub
        .wait_health("the old segments dropped", |h| {
            h["storage"]["events"].as_u64() == Some(500)
        })
        .await;
    let log = &health["storage"]["events_log"];
    // Batches never share a segment across the 40-day / 2-day boundary here, so exactly the
    // old ones went.
    assert!(
        log["segments_dropped"].as_u64().unwrap() as usize >= 15,
        "{health:#} (seen while publishing: {dropped})"
    );
    assert!(
        log["bytes_dropped"].as_u64().unwrap() > 1_000_000,
        "{health:#}"
    );

    // By id: the old ones are gone, the others are there.
    let (status, _) = hub
        .get_status(&format!("/api/v1/events/{}", old[0].id))
        .await;
    assert_eq!(status, 404);
    let e = hub.get(&format!("/api/v1/events/{}", recent[7].id)).await;
    assert_eq!(e["id"], recent[7].id.to_string());
    // Time range: nothing from 40 days ago, all of 2 days ago.
    let page = hub
        .events(&format!(
            "from={}&to={}&limit=1000",
            now - 41 * DAY,
            now - 39 * DAY
        ))
        .await;
    assert_eq!(page["count"], 0, "{page}");
    let page = hub
        .events(&format!(
            "from={}&to={}&limit=1000",
            now - 3 * DAY,
            now - DAY
        ))
        .await;
    assert_eq!(ids(&page).len(), 300);
    // Aggregates and sources count what stays.
    let agg = hub.get(&format!("{count_all}&by=device")).await;
    assert_eq!(agg["total"], 500, "{agg}");
    let devices: Vec<&str> = agg["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"][0].as_str().unwrap())
        .collect();
    assert_eq!(devices, vec!["gw-02", "gw-03"], "{agg}");

    // A resend from inside the dedup window (received 2 days ago, its segment long closed)
    // and one of this session: acked again, stored once.
    let gw2 = hub.edge("gw-02", "gw-02").await;
    gw2.publish(&topic("gw-02", "event"), json(&recent[0]))
        .await;
    gw.publish(&topic("gw-03", "event"), json(&fresh[0])).await;
    let acks = gw2.acks_covering(&BTreeSet::from([recent[0].id])).await;
    assert_eq!(acked_ids(&acks), BTreeSet::from([recent[0].id]));
    gw.acks_covering(&BTreeSet::from([fresh[0].id])).await;
    let health = hub
        .wait_health("two duplicates counted", |h| {
            h["ingest"]["events_duplicate"].as_u64() == Some(2)
        })
        .await;
    assert_eq!(health["storage"]["events"], 500, "{health:#}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_bound_trims_the_log_while_the_hub_ingests_and_dropped_ids_stay_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let now = csb_wire::now_ms();
    // ~4 MiB received yesterday in 1 MiB segments; the bound is 6 MiB and ~5 MiB more arrive.
    let early: Vec<Event> = (0..8000)
        .map(|i| event("gw-01", "cam-01", now - DAY + i, &[(2, "car")]))
        .collect();
    let mut opts = StoreOptions::new(8);
    opts.events.segment_bytes = 1 << 20;
    opts.events.background = false;
    let d = dir.path().to_path_buf();
    let store = tokio::task::spawn_blocking(move || SledStore::open_with(&d, &opts))
        .await
        .unwrap()
        .unwrap();
    for c in early.chunks(500) {
        store
            .write(WriteBatch {
                events: c.to_vec(),
                received_ms: now - DAY,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    drop(store);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let bound = 6u64 << 20;
    let hub = TestHub::start_with(dir.path(), free_port(), |c| {
        c.log_segment_mb = 1;
        c.events_retention_bytes = bound;
    })
    .await;
    let health = hub.get("/api/v1/health").await;
    assert_eq!(
        health["storage"]["events_log"]["segments_dropped"], 0,
        "{health:#}"
    );

    // Readers all along: never an error, and a kept event always found.
    let base = hub.base.clone();
    let keep = early[7999].id;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let reader = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut rounds = 0;
        while !*stop_rx.borrow_and_update() {
            for path in [
                format!("/api/v1/events/{keep}"),
                "/api/v1/events?device=gw-01&limit=100".to_string(),
                format!(
                    "/api/v1/events/aggregate?from={}&to={}&by=device",
                    now - 2 * DAY,
                    now + DAY
                ),
            ] {
                let r = client.get(format!("{base}{path}")).send().await.unwrap();
                assert_eq!(r.status(), 200, "GET {path}: {}", r.text().await.unwrap());
            }
            rounds += 1;
        }
        rounds
    });
    let publisher = Client::connect(hub.mqtt, "gw-02").await;
    let late: Vec<Event> = (0..10_000)
        .map(|i| event("gw-02", "cam-01", now + i, &[(0, "person")]))
        .collect();
    for c in late.chunks(1000) {
        publisher
            .publish_burst(
                c.iter()
                    .map(|e| (topic("gw-02", "event"), json(e)))
                    .collect(),
            )
            .await;
    }
    let health = hub
        .wait_health("everything stored and the log trimmed to its bound", |h| {
            let log = &h["storage"]["events_log"];
            h["ingest"]["events_accepted"] == 10_000
                && log["segments_dropped"].as_u64() >= Some(2)
                && log["disk_bytes"].as_u64() <= Some(bound + (1 << 20))
        })
        .await;
    stop_tx.send(true).unwrap();
    assert!(reader.await.unwrap() >= 1);

    // The oldest went first: the first early events are gone, the last ones and all late ones
    // are there, and the count is what stays.
    let (status, _) = hub
        .get_status(&format!("/api/v1/events/{}", early[0].id))
        .await;
    assert_eq!(status, 404);
    hub.get(&format!("/api/v1/events/{}", late[9999].id)).await;
    let stored = health["storage"]["events"].as_u64().unwrap();
    let agg = hub
        .get(&format!(
            "/api/v1/events/aggregate?from={}&to={}",
            now - 2 * DAY,
            now + DAY
        ))
        .await;
    assert_eq!(agg["total"].as_u64(), Some(stored), "{agg}");
    assert!((10_000..18_000).contains(&stored), "{stored}");

    // Dropped, but received inside the dedup window: a resend is acked and not stored again.
    let gw1 = hub.edge("gw-01", "gw-01").await;
    gw1.publish(&topic("gw-01", "event"), json(&early[0])).await;
    let acks = gw1.acks_covering(&BTreeSet::from([early[0].id])).await;
    assert_eq!(acked_ids(&acks), BTreeSet::from([early[0].id]));
    hub.wait_health("the resend counted as a duplicate", |h| {
        h["ingest"]["events_duplicate"] == 1
    })
    .await;
    let (status, _) = hub
        .get_status(&format!("/api/v1/events/{}", early[0].id))
        .await;
    assert_eq!(status, 404, "a resend of a dropped id is not stored again");
    hub.stop().await;
}
