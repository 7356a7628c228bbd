//! Application-level acks end to end: a real MQTT client publishes events and telemetry to an
//! in-process hub and receives, on its own ack topic, acks naming exactly what was stored; a
//! resend of the same ids is acked again and stored once.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ulid::Ulid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_name_stored_ids_and_resends_are_acked_again_but_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), free_port()).await;
    let gw1 = hub.edge("gw-01", "gw-01").await;
    // Another device on the same hub: its ids must never show up in gw-01's acks.
    let gw2 = hub.edge("gw-02", "gw-02").await;

    let events: Vec<_> = (0..5)
        .map(|i| event("gw-01", "cam-01", T0 + i * 100, &[(0, "person")]))
        .collect();
    let tel: Vec<_> = (0..3)
        .map(|i| telemetry("gw-01", "agent", T0 + i * 1000, &[("cpu_load", 0.3)]))
        .collect();
    let mut sent: Vec<(String, Vec<u8>)> = Vec::new();
    for e in &events {
        sent.push((topic("gw-01", "event"), json(e)));
    }
    for t in &tel {
        sent.push((topic("gw-01", "telemetry"), json(t)));
    }
    let want: BTreeSet<Ulid> = events
        .iter()
        .map(|e| e.id)
        .chain(tel.iter().map(|t| t.id))
        .collect();
    let other = event("gw-02", "cam-01", T0, &[(2, "car")]);

    for (t, p) in &sent {
        gw1.publish(t, p.clone()).await;
    }
    gw2.publish(&topic("gw-02", "event"), json(&other)).await;

    let acks = gw1.acks_covering(&want).await;
    for a in &acks {
        assert_eq!(
            (a.v, a.site.as_str(), a.device.as_str()),
            (1, "yuexi", "gw-01")
        );
    }
    assert_eq!(acked_ids(&acks), want, "exactly the ids gw-01 published");
    let other_acks = gw2.acks_covering(&BTreeSet::from([other.id])).await;
    assert_eq!(acked_ids(&other_acks), BTreeSet::from([other.id]));

    // Acked means stored: the API already has all of them.
    let stored = hub.events("device=gw-01&limit=1000").await;
    assert_eq!(stored["count"], 5, "{stored}");
    assert_eq!(hub.telemetry("device=gw-01").await["count"], 3);

    // The edge did not see those acks (say it restarted): it resends everything, exactly.
    for (t, p) in &sent {
        gw1.publish(t, p.clone()).await;
    }
    let again = gw1.acks_covering(&want).await;
    assert_eq!(acked_ids(&again), want, "resends are acked again");
    // ... and nothing else arrives for gw-01.
    let extra = gw1.acks_within(Duration::from_millis(300)).await;
    assert!(acked_ids(&extra).is_subset(&want), "{extra:?}");

    let health = hub
        .wait_health("duplicates counted", |h| {
            h["ingest"]["events_duplicate"] == 5 && h["ingest"]["telemetry_duplicate"] == 3
        })
        .await;
    let i = &health["ingest"];
    assert_eq!(i["events_accepted"], 6, "{health:#}");
    assert_eq!(i["telemetry_accepted"], 3, "{health:#}");
    assert_eq!(i["ack_publish_failed"], 0, "{health:#}");
    assert!(i["acked_ids"].as_u64().unwrap() >= 17, "{health:#}");
    assert_eq!(health["storage"]["events"], 6, "{health:#}");
    assert_eq!(health["storage"]["telemetry"], 3, "{health:#}");
    // Each stored once.
    let stored = hub.events("device=gw-01&limit=1000").await;
    let mut ids = common::ids(&stored);
    ids.sort();
    let mut expected: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    expected.sort();
    assert_eq!(ids, expected);
    let stored_tel = telemetry_ids(&hub.telemetry("device=gw-01").await);
    assert_eq!(stored_tel.len(), 3);

    // After a restart the dedup index is still there: a resend is acked, not stored again.
    hub.stop().await;
    let hub = TestHub::start(dir.path(), free_port()).await;
    let gw1 = hub.edge("gw-01", "gw-01").await;
    gw1.publish(&sent[0].0, sent[0].1.clone()).await;
    gw1.publish(&sent[7].0, sent[7].1.clone()).await;
    let first_and_last = BTreeSet::from([events[0].id, tel[2].id]);
    assert_eq!(
        acked_ids(&gw1.acks_covering(&first_and_last).await),
        first_and_last
    );
    let health = hub
        .wait_health("duplicates after restart", |h| {
            h["ingest"]["events_duplicate"] == 1 && h["ingest"]["telemetry_duplicate"] == 1
        })
        .await;
    assert_eq!(health["storage"]["events"], 6, "{health:#}");
    assert_eq!(health["storage"]["telemetry"], 3, "{health:#}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_acked_completely_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), free_port()).await;
    let gw = hub.edge("gw-burst", "gw-03").await;
    let events: Vec<_> = (0..1500)
        .map(|i| event("gw-03", "cam-01", T0 + i, &[(0, "person")]))
        .collect();
    let p = Client::connect(hub.mqtt, "gw-burst-pub").await;
    p.publish_burst(
        events
            .iter()
            .map(|e| (topic("gw-03", "event"), json(e)))
            .collect(),
    )
    .await;
    let want: BTreeSet<Ulid> = events.iter().map(|e| e.id).collect();
    let acks = gw.acks_covering(&want).await;
    assert_eq!(acked_ids(&acks), want);
    for a in &acks {
        assert!(
            !a.ids.is_empty() && a.ids.len() <= cloud_hub::ingest::pipeline::ACK_IDS_PER_MESSAGE
        );
    }
    hub.stop().await;
}
