//! Hostile input end to end: a corpus of malformed, oversized, truncated, wrong-schema and
//! wrong-topic messages published with a real MQTT client lands in `GET /api/v1/quarantine`
//! with the right reasons, while valid events published in between are stored.

mod common;

use std::collections::BTreeSet;

use cloud_hub::storage::quarantine::base64;
use common::*;
use serde_json::Value;
use ulid::Ulid;

/// Small, so the oversized case stays small too.
const MAX_PAYLOAD: usize = 8 * 1024;

struct Case {
    name: &'static str,
    topic: String,
    payload: Vec<u8>,
    reason: &'static str,
    /// The payload's id, when the hub can still read it from a device topic: then it is acked.
    acked_id: Option<Ulid>,
    /// `(site, device)` the hub can read from the topic.
    device: Option<(&'static str, &'static str)>,
}

fn corpus() -> Vec<Case> {
    let ev = || event("gw-01", "cam-01", T0, &[(0, "person")]);
    let valid = json(&ev());
    let gw1 = Some(("yuexi", "gw-01"));
    let mut cases = vec![
        Case {
            name: "truncated JSON",
            topic: topic("gw-01", "event"),
            payload: valid[..valid.len() / 2].to_vec(),
            reason: "not_json",
            acked_id: None,
            device: gw1,
        },
        Case {
            name: "not JSON",
            topic: topic("gw-01", "event"),
            payload: b"hello, hub".to_vec(),
            reason: "not_json",
            acked_id: None,
            device: gw1,
        },
        Case {
            name: "not UTF-8",
            topic: topic("gw-01", "telemetry"),
            payload: b"{\"v\":1,\"id\":\"\xff\xfe\"}".to_vec(),
            reason: "not_json",
            acked_id: None,
            device: gw1,
        },
        Case {
            name: "empty",
            topic: topic("gw-01", "event"),
            payload: Vec::new(),
            reason: "not_json",
            acked_id: None,
            device: gw1,
        },
    ];
    // Wrong schema: fields missing; a value out of range; an event on the telemetry channel.
    let missing = Ulid::new();
    cases.push(Case {
        name: "missing fields",
        topic: topic("gw-01", "event"),
        payload: format!(r#"{{"v":1,"id":"{missing}","site":"yuexi","device":"gw-01"}}"#).into(),
        reason: "schema",
        acked_id: Some(missing),
        device: gw1,
    });
    let mut bad_score = ev();
    bad_score.objects[0].score = 1.5;
    cases.push(Case {
        name: "score out of range",
        topic: topic("gw-01", "event"),
        payload: json(&bad_score),
        reason: "schema",
        acked_id: Some(bad_score.id),
        device: gw1,
    });
    let wrong_channel = ev();
    cases.push(Case {
        name: "event on the telemetry channel",
        topic: topic("gw-01", "telemetry"),
        payload: json(&wrong_channel),
        reason: "schema",
        acked_id: Some(wrong_channel.id),
        device: gw1,
    });
    let mut v2: Value = serde_json::to_value(ev()).unwrap();
    v2["v"] = 2.into();
    cases.push(Case {
        name: "schema version 2",
        topic: topic("gw-01", "event"),
        payload: v2.to_string().into_bytes(),
        reason: "version",
        acked_id: Some(v2["id"].as_str().unwrap().parse().unwrap()),
        device: gw1,
    });
    let mut big: Value = serde_json::to_value(ev()).unwrap();
    big["padding"] = "x".repeat(MAX_PAYLOAD).into();
    cases.push(Case {
        name: "oversized",
        topic: topic("gw-01", "event"),
        payload: big.to_string().into_bytes(),
        reason: "oversized",
        acked_id: Some(big["id"].as_str().unwrap().parse().unwrap()),
        device: gw1,
    });
    // Wrong topics, all with a valid event payload.
    for (name, t, device) in [
        ("unknown channel", "csb/v1/yuexi/gw-01/bogus", gw1),
        ("topic version 2", "csb/v2/yuexi/gw-01/event", gw1),
        ("bad topic level", "csb/v1/yu exi/gw-01/event", None),
        ("not a csb topic", "city/brain/event", None),
    ] {
        cases.push(Case {
            name,
            topic: t.to_string(),
            payload: valid.clone(),
            reason: "bad_topic",
            acked_id: None,
            device,
        });
    }
    // Command replies are read (for the case workflow), not stored: an event there is no reply.
    cases.push(Case {
        name: "an event on the reply channel",
        topic: "csb/v1/yuexi/gw-01/cmd/reply".into(),
        payload: valid.clone(),
        reason: "schema",
        acked_id: None,
        device: gw1,
    });
    // Speaking for another site, and another device.
    let spoof = ev();
    cases.push(Case {
        name: "site mismatch",
        topic: "csb/v1/other/gw-01/event".into(),
        payload: json(&spoof),
        reason: "device_mismatch",
        acked_id: Some(spoof.id),
        device: Some(("other", "gw-01")),
    });
    let spoof = event("gw-02", "cam-01", T0, &[(0, "person")]);
    cases.push(Case {
        name: "device mismatch",
        topic: topic("gw-01", "event"),
        payload: json(&spoof),
        reason: "device_mismatch",
        acked_id: Some(spoof.id),
        device: gw1,
    });
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_is_quarantined_while_valid_traffic_flows() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with(dir.path(), free_port(), |c| {
        c.ingest_max_payload_bytes = MAX_PAYLOAD;
    })
    .await;
    let edge = hub.edge("gw-01", "gw-01").await;
    let cases = corpus();

    // Valid events between the bad ones: each must be stored.
    let mut valid = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        edge.publish(&c.topic, c.payload.clone()).await;
        if i % 3 == 0 {
            let e = event("gw-01", "cam-02", T0 + i as i64, &[(2, "car")]);
            edge.publish(&topic("gw-01", "event"), json(&e)).await;
            valid.push(e);
        }
    }
    let n = cases.len() as u64;
    let health = hub
        .wait_health("corpus and valid events ingested", |h| {
            // Rejections are counted on arrival; the stored count says the write is done.
            h["storage"]["quarantine"] == n && h["ingest"]["events_accepted"] == valid.len() as u64
        })
        .await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["storage"]["quarantine"], n, "{health:#}");
    assert_eq!(health["ingest"]["quarantine_failed"], 0, "{health:#}");
    for reason in [
        "not_json",
        "schema",
        "version",
        "oversized",
        "bad_topic",
        "device_mismatch",
    ] {
        let want = cases.iter().filter(|c| c.reason == reason).count() as u64;
        assert_eq!(
            health["ingest"]["rejected_by_reason"][reason], want,
            "{reason}: {health:#}"
        );
    }

    // The valid events were stored, none of the bad ones.
    let stored = hub.events("limit=1000").await;
    let mut got = ids(&stored);
    got.sort();
    let mut want: Vec<String> = valid.iter().map(|e| e.id.to_string()).collect();
    want.sort();
    assert_eq!(got, want);

    // Newest first: reversed, the entries are the corpus in publish order.
    let body = hub.get("/api/v1/quarantine?limit=1000").await;
    assert_eq!(body["count"], n, "{body}");
    assert_eq!(body["truncated"], false);
    let entries: Vec<&Value> = body["quarantine"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .collect();
    let mut prev_id = String::new();
    for (c, e) in cases.iter().zip(&entries) {
        let name = c.name;
        assert_eq!(e["reason"], c.reason, "{name}: {e:#}");
        assert_eq!(e["topic"], c.topic.as_str(), "{name}");
        assert_eq!(e["payload_len"], c.payload.len() as u64, "{name}");
        let head = &c.payload[..c.payload.len().min(4096)];
        assert_eq!(e["payload_b64"], base64(head).as_str(), "{name}");
        assert_eq!(e["payload_truncated"], c.payload.len() > 4096, "{name}");
        assert!(!e["detail"].as_str().unwrap().is_empty(), "{name}");
        assert!(e["received_ms"].as_i64().unwrap() > T0, "{name}");
        match c.device {
            Some((site, device)) => {
                assert_eq!(
                    (e["site"].as_str(), e["device"].as_str()),
                    (Some(site), Some(device)),
                    "{name}"
                );
            }
            None => assert!(e.get("device").is_none(), "{name}: {e:#}"),
        }
        assert_eq!(e["acked"], c.acked_id.is_some(), "{name}: {e:#}");
        if let Some(id) = c.acked_id {
            assert_eq!(e["msg_id"], id.to_string().as_str(), "{name}");
        }
        // Hub ids: ULIDs, increasing in arrival order.
        let id = e["id"].as_str().unwrap().to_string();
        Ulid::from_string(&id).unwrap();
        assert!(id > prev_id, "{name}");
        prev_id = id;
    }
    // The detail names the field at fault.
    let score = entries[cases
        .iter()
        .position(|c| c.name == "score out of range")
        .unwrap()];
    assert!(
        score["detail"]
            .as_str()
            .unwrap()
            .contains("objects[0].score"),
        "{score:#}"
    );

    // Poison messages with a readable id were acked to gw-01 (so an outbox stops resending
    // them), as were the valid events; nothing else was.
    let poison: BTreeSet<Ulid> = cases
        .iter()
        .filter(|c| c.device == Some(("yuexi", "gw-01")))
        .filter_map(|c| c.acked_id)
        .collect();
    let mut want_acked = poison.clone();
    want_acked.extend(valid.iter().map(|e| e.id));
    let acks = edge.acks_covering(&want_acked).await;
    assert_eq!(acked_ids(&acks), want_acked);

    // Filters.
    let (status, body) = q(&hub, "reason=bad_topic").await;
    assert_eq!(status, 200);
    // (An event on `cmd/reply` is a `schema` rejection: replies are read.)
    assert_eq!(body["count"], 4, "{body}");
    assert!(body["quarantine"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["reason"] == "bad_topic"));
    let (_, body) = q(&hub, "site=other").await;
    assert_eq!(body["count"], 1, "{body}");
    let (_, body) = q(&hub, "device=gw-01&reason=not_json&limit=2").await;
    assert_eq!(body["count"], 2, "{body}");
    assert_eq!(
        body["quarantine"][0]["payload_len"], 0,
        "newest first: {body}"
    );
    let newest_ms = entries.last().unwrap()["received_ms"].as_i64().unwrap();
    let (_, body) = q(&hub, &format!("from={}", newest_ms + 1)).await;
    assert_eq!(body["count"], 0, "{body}");
    let (_, body) = q(&hub, &format!("to={}", newest_ms + 1)).await;
    assert_eq!(body["count"], n, "{body}");
    for (query, param) in [
        ("reason=json", "reason"),
        ("device=a%20b", "device"),
        ("limit=0", "limit"),
        ("from=later", "from"),
        ("camera=cam-01", "camera"),
    ] {
        let (status, body) = q(&hub, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(&format!("`{param}`")), "{query}: {msg}");
    }

    // Prometheus has the same counts.
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains(&format!("csb_hub_quarantine_entries {n}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains("csb_hub_rejected_total{reason=\"oversized\"} 1\n"),
        "{metrics}"
    );

    // The quarantine is durable.
    hub.stop().await;
    let hub = TestHub::start(dir.path(), free_port()).await;
    assert_eq!(hub.get("/api/v1/quarantine?limit=1000").await["count"], n);
    hub.stop().await;
}

async fn q(hub: &TestHub, query: &str) -> (u16, Value) {
    hub.get_status(&format!("/api/v1/quarantine?{query}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_keeps_only_the_newest_entries() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with(dir.path(), free_port(), |c| c.quarantine_max_entries = 5).await;
    let edge = Client::connect(hub.mqtt, "gw-01").await;
    for i in 0..12 {
        edge.publish(&topic("gw-01", "event"), format!("garbage {i}"))
            .await;
    }
    let health = hub
        .wait_health("all refused and pruned", |h| {
            h["ingest"]["rejected"] == 12 && h["ingest"]["quarantine_pruned"] == 7
        })
        .await;
    assert_eq!(health["storage"]["quarantine"], 5, "{health:#}");
    assert_eq!(health["ingest"]["quarantine_pruned"], 7, "{health:#}");
    let body = hub.get("/api/v1/quarantine").await;
    let kept: Vec<String> = body["quarantine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload_b64"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (7..12)
        .rev()
        .map(|i| base64(format!("garbage {i}").as_bytes()))
        .collect();
    assert_eq!(kept, want);
    hub.stop().await;
}
