//! The embedded broker's admission, against a real hub process with raw MQTT clients (issue 14).
//!
//! For every way a connection can fail before its CONNACK — refused for capacity and retried
//! with the same id, a wrong password retried, an unknown device, a CONNECT never completed, a
//! socket closed mid-CONNECT, a duplicate client id taking over a half-open session — the hub
//! must answer as MQTT 3.1.1 says (a CONNACK return code where there is a CONNECT to answer),
//! count it, and afterwards still admit a brand-new device and a previously connected one, with
//! `/api/v1/health` telling the truth. (rumqttd 0.20 alone panics on the retry of a refused
//! client id and then admits nobody: bytebeamio/rumqtt #1062.)

use std::process::Command;
use std::time::Duration;

use csb_test_support::http::{eventually, get_json, get_text};
use csb_test_support::payloads::{signed, topic, EventBuilder, StatusBuilder, SITE};
use csb_test_support::process::Hub;
use csb_test_support::raw_mqtt::{connect_bytes, Answer, ConnectOptions, RawClient};
use csb_wire::DeviceState;
use serde_json::Value;
use ulid::Ulid;

/// A small valid event of `device`, signed with `secret` when given.
fn event(device: &str, secret: Option<&str>) -> (Ulid, Vec<u8>) {
    let e = EventBuilder::detection()
        .device(device)
        .frame(640, 480)
        .build();
    let json = serde_json::to_vec(&e).unwrap();
    (e.id, signed(&topic(device, "event"), json, secret))
}

fn status(device: &str, state: DeviceState, ts_ms: i64, secret: Option<&str>) -> Vec<u8> {
    let s = StatusBuilder::new(device, state)
        .ts(ts_ms)
        .without_version();
    signed(&topic(device, "status"), s.json(), secret)
}

/// A hub with `extra` config lines, a 500 ms CONNECT timeout and a self-probe every 200 ms.
fn hub(extra: &str, devices: &[&str]) -> Hub {
    let config = format!("mqtt_connect_timeout_ms = 500\nmqtt_probe_interval_ms = 200\n{extra}");
    Hub::builder().config(&config).devices(devices).start()
}

async fn health(h: &Hub) -> Value {
    // 503 bodies are JSON too: read whatever came.
    let resp = reqwest::get(h.url("/api/v1/health"))
        .await
        .expect("health answers");
    resp.json().await.expect("health is JSON")
}

async fn refused(h: &Hub, reason: &str) -> u64 {
    health(h).await["mqtt"]["refused_by_reason"][reason]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until the refusal counter `reason` reaches `n`.
async fn wait_refused(h: &Hub, reason: &str, n: u64) {
    let seen = eventually(Duration::from_secs(10), || async {
        (refused(h, reason).await >= n).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "{reason} never reached {n}: {:#}",
        health(h).await["mqtt"]
    );
    assert_eq!(refused(h, reason).await, n, "{reason}");
}

/// The fleet still works: a device never seen before and `veteran` (connected earlier) both
/// connect, publish an event that is stored, and leave; the broker's self-probe got in after
/// whatever happened before (health is truthful, not stale).
async fn fleet_still_admits(h: &Hub, fresh: &str, veteran: &str) {
    let probes_before = health(h).await["mqtt"]["broker"]["probes_ok"]
        .as_u64()
        .unwrap();
    let mut stored = Vec::new();
    for device in [fresh, veteran] {
        let secret = h
            .secrets
            .get(&format!("{SITE}/{device}"))
            .map(String::as_str);
        let mut o = ConnectOptions::new();
        if let Some(s) = secret {
            o = o.login(&format!("{SITE}/{device}"), s);
        }
        let mut c = RawClient::connected(h.mqtt, &format!("edge-{device}"), &o).await;
        let (id, payload) = event(device, secret);
        c.publish(&topic(device, "event"), payload).await;
        c.disconnect().await;
        stored.push((device.to_string(), id));
    }
    for (device, id) in stored {
        let url = h.url(&format!("/api/v1/events/{id}"));
        let found = eventually(Duration::from_secs(10), || async { get_json(&url).await }).await;
        assert!(found.is_some(), "event of {device} not stored");
    }
    let ok = eventually(Duration::from_secs(10), || async {
        let hl = health(h).await;
        let probes = hl["mqtt"]["broker"]["probes_ok"].as_u64().unwrap_or(0);
        (probes > probes_before + 1).then_some(hl)
    })
    .await
    .expect("the self-probe keeps getting in");
    assert_eq!(ok["status"], "ok", "{ok:#}");
    assert_eq!(ok["mqtt"]["broker"]["state"], "ok", "{ok:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_connack_lock_no_one_out() {
    let h = hub("mqtt_max_connections = 2\n", &[]);
    let veteran = RawClient::connected(h.mqtt, "edge-veteran", &ConnectOptions::new()).await;
    veteran.disconnect().await;

    // Capacity: two holders fill the hub; a third is refused with 3, twice with the same id.
    let holder = RawClient::connected(h.mqtt, "edge-holder-1", &ConnectOptions::new()).await;
    let holder2 = RawClient::connected(h.mqtt, "edge-holder-2", &ConnectOptions::new()).await;
    for _ in 0..2 {
        let (_c, a) = RawClient::connect(h.mqtt, "edge-extra", &ConnectOptions::new()).await;
        assert_eq!(a, Answer::Connack(3), "full hub answers server unavailable");
    }
    wait_refused(&h, "full", 2).await;
    holder2.disconnect().await;
    fleet_still_admits(&h, "fresh-1", "veteran").await;

    // A CONNECT never sent: closed after the 500 ms connect timeout, counted.
    let mut silent = RawClient::tcp(h.mqtt).await;
    assert!(
        silent.closed_within(Duration::from_secs(5)).await,
        "half-open closed"
    );
    wait_refused(&h, "connect_timeout", 1).await;
    fleet_still_admits(&h, "fresh-2", "veteran").await;

    // Half a CONNECT, then the socket closes.
    let bytes = connect_bytes("edge-cut", &ConnectOptions::new());
    let mut cut = RawClient::tcp(h.mqtt).await;
    cut.send(&bytes[..bytes.len() / 2]).await;
    drop(cut);
    wait_refused(&h, "closed_before_connect", 1).await;
    // Half a CONNECT, then silence: the timeout again.
    let mut stalled = RawClient::tcp(h.mqtt).await;
    stalled.send(&bytes[..bytes.len() / 2]).await;
    assert!(stalled.closed_within(Duration::from_secs(5)).await);
    wait_refused(&h, "connect_timeout", 2).await;
    fleet_still_admits(&h, "fresh-3", "veteran").await;

    // Not a CONNECT at all, and other protocol versions.
    let mut garbage = RawClient::tcp(h.mqtt).await;
    garbage.send(&[0x30, 0x03, 0x00, 0x01, b'x']).await;
    assert_eq!(garbage.answer().await, Answer::Closed);
    wait_refused(&h, "malformed_connect", 1).await;
    let mut v5 = RawClient::tcp(h.mqtt).await;
    // Protocol level 5, clean start, keep-alive 30, no properties, client id "x".
    v5.send(&[
        0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 30, 0, 0, 1, b'x',
    ])
    .await;
    assert_eq!(
        v5.answer().await,
        Answer::Connack(1),
        "MQTT 5 gets return code 1"
    );

    // Client ids the hub will not take: its own link's, one with a topic separator, and an
    // empty one without clean session. Each retried once.
    let mut persistent = ConnectOptions::new();
    persistent.clean_session = false;
    for (id, o) in [
        ("hub-ingest", ConnectOptions::new()),
        ("a/b", ConnectOptions::new()),
        ("", persistent),
    ] {
        for _ in 0..2 {
            let (_c, a) = RawClient::connect(h.mqtt, id, &o).await;
            assert_eq!(a, Answer::Connack(2), "client id {id:?}");
        }
    }
    wait_refused(&h, "identifier_rejected", 6).await;
    fleet_still_admits(&h, "fresh-4", "veteran").await;

    // The hub's own ingest link was never taken over: events still flow (checked above), and
    // the holder connected before all this still publishes.
    let mut holder = holder;
    let (id, payload) = event("holder-1", None);
    holder.publish(&topic("holder-1", "event"), payload).await;
    let url = h.url(&format!("/api/v1/events/{id}"));
    assert!(
        eventually(Duration::from_secs(10), || async { get_json(&url).await })
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_logins_are_refused_with_their_codes_and_lock_no_one_out() {
    let h = hub(
        "[auth]\ndevices = \"required\"\n",
        &[
            "yuexi/veteran",
            "yuexi/gw-b",
            "yuexi/fresh-1",
            "yuexi/fresh-2",
        ],
    );
    let secret = |d: &str| h.secrets[&format!("{SITE}/{d}")].clone();
    let veteran = RawClient::connected(
        h.mqtt,
        "edge-veteran",
        &ConnectOptions::new().login("yuexi/veteran", &secret("veteran")),
    )
    .await;
    veteran.disconnect().await;

    // A wrong password, then the same again: 4 both times.
    let wrong = ConnectOptions::new().login("yuexi/gw-b", &secret("veteran"));
    for _ in 0..2 {
        let (_c, a) = RawClient::connect(h.mqtt, "edge-gw-b", &wrong).await;
        assert_eq!(a, Answer::Connack(4), "wrong secret");
    }
    // An unknown device: 5. No login at all: 4.
    let unknown = ConnectOptions::new().login("yuexi/gw-z", &secret("gw-b"));
    let (_c, a) = RawClient::connect(h.mqtt, "edge-gw-z", &unknown).await;
    assert_eq!(a, Answer::Connack(5), "unknown device");
    let (_c, a) = RawClient::connect(h.mqtt, "edge-anon", &ConnectOptions::new()).await;
    assert_eq!(a, Answer::Connack(4), "no credentials");
    wait_refused(&h, "bad_credentials", 2).await;
    wait_refused(&h, "unknown_device", 1).await;
    wait_refused(&h, "no_credentials", 1).await;
    // The older counter keeps its meaning: refused logins that were checked.
    assert_eq!(health(&h).await["ingest"]["auth_refused"], 3);
    fleet_still_admits(&h, "fresh-1", "veteran").await;

    // Another device cannot take over a live client id (it would throw the owner off).
    let owner_login = ConnectOptions::new().login("yuexi/veteran", &secret("veteran"));
    let mut owner = RawClient::connected(h.mqtt, "edge-veteran", &owner_login).await;
    let thief = ConnectOptions::new().login("yuexi/gw-b", &secret("gw-b"));
    let (_c, a) = RawClient::connect(h.mqtt, "edge-veteran", &thief).await;
    assert_eq!(a, Answer::Connack(2), "client id of another device");
    wait_refused(&h, "identifier_in_use", 1).await;
    let (_, payload) = event("veteran", Some(&secret("veteran")));
    owner.publish(&topic("veteran", "event"), payload).await;
    owner.disconnect().await;

    // A real third-party client reads the refusal as what it is.
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &h.mqtt.port().to_string()])
        .args([
            "-i",
            "edge-gw-b",
            "-u",
            "yuexi/gw-b",
            "-P",
            "not-the-secret",
        ])
        .args(["-t", &topic("gw-b", "event"), "-m", "{}", "-q", "1"])
        .output()
        .expect("mosquitto_pub runs (make setup installs mosquitto-clients)");
    let said = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success());
    assert!(
        said.contains("bad user name or password"),
        "mosquitto_pub said: {said}"
    );
    fleet_still_admits(&h, "fresh-2", "veteran").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_id_takes_over_its_half_open_session() {
    let h = hub("", &[]);
    let device = "gw-4g";
    let status_topic = topic(device, "status");
    let devices_url = h.url("/api/v1/devices");
    let current = |ts_ms: i64, state: &'static str| {
        let url = devices_url.clone();
        async move {
            let v = get_json(&url).await?;
            let d = v["devices"]
                .as_array()?
                .iter()
                .find(|d| d["device"] == "gw-4g")?
                .clone();
            (d["ts_ms"] == ts_ms && d["state"] == state).then_some(d)
        }
    };
    // The first connection, with its own will (offline at t1), says online, then goes quiet:
    // its 4G link is gone, but no FIN or RST ever reaches the hub.
    let t1 = csb_wire::now_ms();
    let o1 = ConnectOptions::new().will(
        &status_topic,
        status(device, DeviceState::Offline, t1, None),
        true,
    );
    let mut old = RawClient::connected(h.mqtt, "edge-gw-4g", &o1).await;
    old.publish(
        &status_topic,
        status(device, DeviceState::Online, t1 + 1, None),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || current(t1 + 1, "online"))
            .await
            .is_some()
    );

    // The gateway comes back on another link with the same client id and another will.
    let t2 = t1 + 10_000;
    let o2 = ConnectOptions::new().will(
        &status_topic,
        status(device, DeviceState::Offline, t2, None),
        true,
    );
    let started = std::time::Instant::now();
    let mut new = RawClient::connected(h.mqtt, "edge-gw-4g", &o2).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "takeover took {:?}",
        started.elapsed()
    );
    // The old connection is closed by the hub, and its will (t1) was published before the new
    // session began.
    assert!(
        old.closed_within(Duration::from_secs(5)).await,
        "old session closed"
    );
    assert!(
        eventually(Duration::from_secs(10), || current(t1, "offline"))
            .await
            .is_some()
    );
    new.publish(
        &status_topic,
        status(device, DeviceState::Online, t2 + 1, None),
    )
    .await;
    let (id, payload) = event(device, None);
    new.publish(&topic(device, "event"), payload).await;
    let url = h.url(&format!("/api/v1/events/{id}"));
    assert!(
        eventually(Duration::from_secs(10), || async { get_json(&url).await })
            .await
            .is_some()
    );
    // The new session stays online: the old one's end published nothing more.
    assert!(
        eventually(Duration::from_secs(10), || current(t2 + 1, "online"))
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(current(t2 + 1, "online").await.is_some(), "still online");

    // When the new link dies too, the will published is its own (t2), not the old one's.
    drop(new);
    assert!(
        eventually(Duration::from_secs(10), || current(t2, "offline"))
            .await
            .is_some()
    );
    let hl = health(&h).await;
    assert_eq!(hl["mqtt"]["takeovers"], 1, "{:#}", hl["mqtt"]);
    assert_eq!(hl["mqtt"]["wills_published"], 2, "{:#}", hl["mqtt"]);
    assert_eq!(hl["status"], "ok");
    fleet_still_admits(&h, "fresh-1", "gw-4g").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_configured_fleet_is_admitted() {
    const N: usize = 5;
    let h = hub(&format!("mqtt_max_connections = {N}\n"), &[]);
    let mut fleet = Vec::new();
    for i in 0..N {
        let id = format!("edge-gw-{i}");
        fleet.push(RawClient::connected(h.mqtt, &id, &ConnectOptions::new()).await);
    }
    let hl = health(&h).await;
    assert_eq!(
        hl["mqtt"]["devices_connected"], N as u64,
        "{:#}",
        hl["mqtt"]
    );
    assert_eq!(hl["mqtt"]["max_devices"], N as u64);

    // Device N+1: return code 3, counted in health and /metrics.
    let extra = "edge-gw-extra";
    let (_c, a) = RawClient::connect(h.mqtt, extra, &ConnectOptions::new()).await;
    assert_eq!(a, Answer::Connack(3));
    wait_refused(&h, "full", 1).await;
    let metrics = get_text(&h.url("/metrics")).await;
    assert!(
        metrics.contains("csb_hub_mqtt_refused_total{reason=\"full\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("csb_hub_mqtt_devices_connected {N}\n")));

    // One leaves cleanly: N+1 gets in and publishes.
    fleet.pop().unwrap().disconnect().await;
    let mut c = RawClient::connected(h.mqtt, extra, &ConnectOptions::new()).await;
    let (id, payload) = event("gw-extra", None);
    c.publish(&topic("gw-extra", "event"), payload).await;
    let url = h.url(&format!("/api/v1/events/{id}"));
    assert!(
        eventually(Duration::from_secs(10), || async { get_json(&url).await })
            .await
            .is_some()
    );
    // Full again; one drops without a word (power cut): its slot frees as soon as the hub sees
    // the socket close, and a waiting device gets in.
    let (_c, a) = RawClient::connect(h.mqtt, "edge-gw-late", &ConnectOptions::new()).await;
    assert_eq!(a, Answer::Connack(3));
    drop(fleet.pop());
    let admitted = eventually(Duration::from_secs(10), || async {
        let (c, a) = RawClient::connect(h.mqtt, "edge-gw-late", &ConnectOptions::new()).await;
        (a == Answer::Connack(0)).then_some(c)
    })
    .await;
    assert!(admitted.is_some(), "a freed slot admits the next device");
    let hl = health(&h).await;
    assert_eq!(hl["mqtt"]["devices_connected"], N as u64);
    assert_eq!(hl["status"], "ok");
}

/// Ids named by the acks in `payloads`.
fn ack_ids(payloads: &[Vec<u8>]) -> Vec<Ulid> {
    payloads
        .iter()
        .flat_map(|p| {
            csb_wire::decode::<csb_wire::Ack>(p)
                .expect("a valid ack")
                .ids
        })
        .collect()
}

/// Acks reach a device from the front when it subscribes to exactly its own ack topic with a
/// clean session, and through rumqttd otherwise: for a persistent session, and for anyone
/// watching acks through a wildcard subscription (both paths at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_reach_devices_persistent_sessions_and_observers() {
    let h = hub("", &[]);
    let routed = |hl: &Value| hl["mqtt"]["acks_routed"].as_u64().unwrap();

    // A device with a clean session: the front answers its SUBSCRIBE and routes its acks.
    let mut device = RawClient::connected(h.mqtt, "edge-gw-r", &ConnectOptions::new()).await;
    device
        .subscribe(&topic("gw-r", "ack"))
        .await
        .expect("granted");
    assert_eq!(health(&h).await["mqtt"]["routed_sessions"], 1);
    let (id, payload) = event("gw-r", None);
    device.publish(&topic("gw-r", "event"), payload).await;
    assert_eq!(
        ack_ids(&[device.receive(&topic("gw-r", "ack")).await]),
        vec![id]
    );
    assert_eq!(routed(&health(&h).await), 1);

    // A persistent session gets its acks from rumqttd, which keeps its subscription.
    let mut persistent = ConnectOptions::new();
    persistent.clean_session = false;
    let mut p = RawClient::connected(h.mqtt, "edge-gw-p", &persistent).await;
    p.subscribe(&topic("gw-p", "ack")).await.expect("granted");
    let (pid, payload) = event("gw-p", None);
    p.publish(&topic("gw-p", "event"), payload).await;
    assert_eq!(
        ack_ids(&[p.receive(&topic("gw-p", "ack")).await]),
        vec![pid]
    );
    assert_eq!(routed(&health(&h).await), 1, "not routed by the front");

    // Someone watching every ack through rumqttd sees the routed device's acks too, while the
    // device still gets its own.
    let mut observer = RawClient::connected(h.mqtt, "ops-watch", &ConnectOptions::new()).await;
    observer.subscribe("csb/v1/+/+/ack").await.expect("granted");
    let (id2, payload) = event("gw-r", None);
    device.publish(&topic("gw-r", "event"), payload).await;
    assert_eq!(
        ack_ids(&[device.receive(&topic("gw-r", "ack")).await]),
        vec![id2]
    );
    assert_eq!(
        ack_ids(&[observer.receive(&topic("gw-r", "ack")).await]),
        vec![id2]
    );

    // After UNSUBSCRIBE, the device gets no more acks (its events are still stored).
    device.unsubscribe(&topic("gw-r", "ack")).await;
    assert_eq!(health(&h).await["mqtt"]["routed_sessions"], 0);
    let (id3, payload) = event("gw-r", None);
    device.publish(&topic("gw-r", "event"), payload).await;
    let url = h.url(&format!("/api/v1/events/{id3}"));
    assert!(
        eventually(Duration::from_secs(10), || async { get_json(&url).await })
            .await
            .is_some()
    );
    let late = device
        .received_within(&topic("gw-r", "ack"), Duration::from_millis(500))
        .await;
    assert!(
        late.is_empty(),
        "acked after UNSUBSCRIBE: {:?}",
        ack_ids(&late)
    );
}

/// Lines of `log` at WARN or ERROR (the fmt layer writes the level after the timestamp).
fn alarming(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

/// A county's gateways come and go all day: ordinary sessions — a clean DISCONNECT, a dropped
/// socket, subscriptions, a takeover — must leave nothing at WARN or ERROR in the hub's log
/// (rumqttd reports each at ERROR; the hub keeps those out). A packet over
/// `mqtt_max_payload_bytes` is refused by the front: the session closes, a counter moves, and
/// one WARN says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_sessions_log_quietly_and_oversized_packets_are_counted() {
    let config = "mqtt_connect_timeout_ms = 500\nmqtt_probe_interval_ms = 200\n\
                  mqtt_max_payload_bytes = 8192\ningest_max_payload_bytes = 4096\n";
    let h = Hub::builder().config(config).keep_log().start();
    let before = h.log_text().len();

    // Clean session: publish, subscribe to its acks, unsubscribe, DISCONNECT.
    let mut c = RawClient::connected(h.mqtt, "edge-gw-calm", &ConnectOptions::new()).await;
    c.subscribe(&topic("gw-calm", "ack"))
        .await
        .expect("granted");
    let (id, payload) = event("gw-calm", None);
    c.publish(&topic("gw-calm", "event"), payload).await;
    assert!(!c.receive(&topic("gw-calm", "ack")).await.is_empty());
    c.unsubscribe(&topic("gw-calm", "ack")).await;
    c.disconnect().await;
    // Dropped without a word (power cut), and a half-open one taken over by its successor.
    drop(RawClient::connected(h.mqtt, "edge-gw-cut", &ConnectOptions::new()).await);
    let _old = RawClient::connected(h.mqtt, "edge-gw-4g", &ConnectOptions::new()).await;
    let new = RawClient::connected(h.mqtt, "edge-gw-4g", &ConnectOptions::new()).await;
    new.disconnect().await;
    let url = h.url(&format!("/api/v1/events/{id}"));
    assert!(
        eventually(Duration::from_secs(10), || async { get_json(&url).await })
            .await
            .is_some()
    );
    // Let the router and the self-probe go round a few times.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = h.log_text();
    let quiet = alarming(&log[before..]);
    assert!(
        quiet.is_empty(),
        "normal sessions logged:\n{}",
        quiet.join("\n")
    );

    // Over the broker's packet limit: closed, counted, logged once.
    let mut big = RawClient::connected(h.mqtt, "edge-gw-big", &ConnectOptions::new()).await;
    big.publish_qos0(&topic("gw-big", "event"), vec![b'x'; 10_000], false)
        .await;
    assert!(big.closed_within(Duration::from_secs(5)).await);
    let metrics = eventually(Duration::from_secs(5), || async {
        let m = reqwest::get(h.url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        m.contains("csb_hub_mqtt_oversized_packets_total 1\n")
            .then_some(m)
    })
    .await;
    assert!(metrics.is_some(), "the oversized packet was not counted");
    let hl = health(&h).await;
    assert_eq!(hl["mqtt"]["oversized_packets"], 1);
    assert_eq!(hl["status"], "ok", "{hl:#}");
    let log = h.log_text();
    let said = alarming(&log[before..]);
    assert_eq!(said.len(), 1, "{}", said.join("\n"));
    assert!(said[0].contains("mqtt_max_payload_bytes"), "{}", said[0]);
    // And the fleet goes on.
    fleet_still_admits(&h, "edge-gw-after", "edge-gw-calm").await;
}
