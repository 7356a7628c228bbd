//! Device identity end to end (`auth.devices = "required"`), real MQTT over TCP: devices A and B
//! have credentials; A, logged in as A, can store its own signed events but cannot speak for B
//! (B's topic, A's key), nor send unsigned payloads: both are quarantined as `spoofed`, counted,
//! never stored or acked. A wrong password and a CONNECT without credentials are refused. A
//! device may subscribe to its own `ack` and `cmd` topics only: another device's, or any
//! wildcard, is refused (SUBACK 0x80) and counted. With `[mqtt_tls]`, plain MQTT is refused and
//! devices connect over TLS.

mod common;

use std::time::Duration;

use cloud_hub::ingest::devices;
use cloud_hub::DeviceAuth;
use common::*;
use csb_test_support::raw_mqtt::{ConnectOptions, RawClient};
use csb_wire::sign::{sign, signing_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_speak_for_another_and_bad_logins_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret_a = devices::add(dir.path(), "yuexi/gw-a").unwrap();
    let secret_b = devices::add(dir.path(), "yuexi/gw-b").unwrap();
    let hub = TestHub::start_with(dir.path(), free_port(), |c| {
        c.auth.devices = DeviceAuth::Required;
    })
    .await;

    // Refused at CONNECT: a wrong password (counted), and no credentials at all (rumqttd refuses
    // those before asking the hub, so they are not counted).
    let refused = Client::options("intruder")
        .login("yuexi/gw-a", &secret_b)
        .try_connect(hub.mqtt)
        .await;
    assert!(refused.is_err(), "wrong password must be refused");
    assert!(
        Client::options("anonymous")
            .try_connect(hub.mqtt)
            .await
            .is_err(),
        "no credentials must be refused"
    );
    let stranger = Client::options("stranger").login("yuexi/gw-z", &secret_a);
    assert!(
        stranger.try_connect(hub.mqtt).await.is_err(),
        "unknown device refused"
    );
    let health = hub
        .wait_health("auth_refused", |h| h["ingest"]["auth_refused"] == 2)
        .await;
    assert_eq!(health["ingest"]["auth_refused"], 2, "{health:#}");

    let a = Client::options("yuexi-gw-a")
        .login("yuexi/gw-a", &secret_a)
        .try_connect(hub.mqtt)
        .await
        .expect("a device with its own credentials connects");
    let key_a = signing_key(&secret_a);

    // (a) A's own event, signed with A's key: stored.
    let own = event("gw-a", "cam-01", T0, &[(0, "person")]);
    let t_a = topic("gw-a", "event");
    a.publish(&t_a, sign(&t_a, &json(&own), &key_a).unwrap())
        .await;

    // (b) An event claiming B, on B's topic, signed with A's key: spoofed.
    let forged = event("gw-b", "cam-01", T0 + 1, &[(0, "person")]);
    let t_b = topic("gw-b", "event");
    a.publish(&t_b, sign(&t_b, &json(&forged), &key_a).unwrap())
        .await;
    // (b') A's signature for its own topic, replayed onto B's: spoofed too (the topic is signed).
    let moved = event("gw-b", "cam-01", T0 + 2, &[(0, "person")]);
    a.publish(&t_b, sign(&t_a, &json(&moved), &key_a).unwrap())
        .await;

    // (c) Unsigned events, on A's own topic and on B's: spoofed.
    let unsigned = event("gw-a", "cam-01", T0 + 3, &[(0, "car")]);
    a.publish(&t_a, json(&unsigned)).await;
    let unsigned_b = event("gw-b", "cam-01", T0 + 4, &[(0, "car")]);
    a.publish(&t_b, json(&unsigned_b)).await;

    let health = hub
        .wait_health("4 spoofed, 1 stored", |h| {
            h["ingest"]["rejected_by_reason"]["spoofed"] == 4 && h["ingest"]["events_accepted"] == 1
        })
        .await;
    assert_eq!(health["ingest"]["rejected"], 4, "{health:#}");

    let stored = hub.events("limit=100").await;
    assert_eq!(ids(&stored), vec![own.id.to_string()], "{stored:#}");

    // Counted at validation, stored with the batch right after: wait for the entries.
    let mut q = hub.get("/api/v1/quarantine?reason=spoofed").await;
    for _ in 0..100 {
        if q["quarantine"].as_array().map_or(0, |a| a.len()) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        q = hub.get("/api/v1/quarantine?reason=spoofed").await;
    }
    let entries = q["quarantine"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{q:#}");
    for e in entries {
        assert_eq!(e["reason"], "spoofed");
        // Never acked: that would make the named device's outbox drop the id.
        assert_eq!(e["acked"], false, "{e:#}");
    }
    let on_b: Vec<_> = entries.iter().filter(|e| e["device"] == "gw-b").collect();
    assert_eq!(on_b.len(), 3, "{q:#}");
    assert!(
        entries
            .iter()
            .any(|e| e["detail"].as_str().unwrap().contains("not signed")),
        "{q:#}"
    );

    // Credentials withdrawn while connected: A's next payloads no longer verify.
    devices::remove(dir.path(), "yuexi/gw-a").unwrap();
    tokio::time::sleep(devices::REFRESH + Duration::from_millis(100)).await;
    let late = event("gw-a", "cam-01", T0 + 5, &[(0, "person")]);
    a.publish(&t_a, sign(&t_a, &json(&late), &key_a).unwrap())
        .await;
    hub.wait_health("5 spoofed", |h| {
        h["ingest"]["rejected_by_reason"]["spoofed"] == 5
    })
    .await;

    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_subscribes_to_its_own_topics_only() {
    let dir = tempfile::tempdir().unwrap();
    let secret_a = devices::add(dir.path(), "yuexi/gw-a").unwrap();
    let secret_b = devices::add(dir.path(), "yuexi/gw-b").unwrap();
    let hub = TestHub::start_with(dir.path(), free_port(), |c| {
        c.auth.devices = DeviceAuth::Required;
    })
    .await;
    let login = |user: &str, secret: &str| ConnectOptions::new().login(user, secret);
    let mut a = RawClient::connected(hub.mqtt, "yuexi-gw-a", &login("yuexi/gw-a", &secret_a)).await;
    assert!(a.subscribe(&topic("gw-a", "ack")).await.is_ok());
    assert!(a.subscribe(&topic("gw-a", "cmd")).await.is_ok());
    for other in [
        topic("gw-b", "ack"),
        topic("gw-b", "cmd"),
        "csb/v1/+/+/ack".to_string(),
        "csb/v1/yuexi/gw-a/#".to_string(),
        "#".to_string(),
        topic("gw-b", "event"),
    ] {
        assert!(
            a.subscribe(&other).await.is_err(),
            "{other} must be refused"
        );
    }
    let health = hub
        .wait_health("6 denied", |h| h["mqtt"]["subscriptions_denied"] == 6)
        .await;
    assert_eq!(health["mqtt"]["subscriptions_denied"], 6, "{health:#}");
    assert!(
        hub.metrics()
            .await
            .contains("csb_hub_mqtt_subscriptions_denied_total 6"),
        "counted in /metrics"
    );

    // B's traffic does not reach A; A's own acks do (its session is intact).
    let mut b = RawClient::connected(hub.mqtt, "yuexi-gw-b", &login("yuexi/gw-b", &secret_b)).await;
    b.subscribe(&topic("gw-b", "ack")).await.expect("its own");
    let t_b = topic("gw-b", "event");
    let ev_b = event("gw-b", "cam-01", T0, &[(0, "person")]);
    b.publish(
        &t_b,
        sign(&t_b, &json(&ev_b), &signing_key(&secret_b)).unwrap(),
    )
    .await;
    let ack: csb_wire::Ack = csb_wire::decode(&b.receive(&topic("gw-b", "ack")).await).unwrap();
    assert!(ack.ids.contains(&ev_b.id), "{ack:?}");
    let t_a = topic("gw-a", "event");
    let ev_a = event("gw-a", "cam-01", T0 + 1, &[(0, "person")]);
    a.publish(
        &t_a,
        sign(&t_a, &json(&ev_a), &signing_key(&secret_a)).unwrap(),
    )
    .await;
    let ack: csb_wire::Ack = csb_wire::decode(&a.receive(&topic("gw-a", "ack")).await).unwrap();
    assert!(ack.ids.contains(&ev_a.id), "{ack:?}");
    assert!(
        a.received_within(&topic("gw-b", "ack"), Duration::from_millis(500))
            .await
            .is_empty(),
        "A reads none of B's acks"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_off_anyone_connects_and_signatures_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), free_port()).await;
    let _anonymous = Client::options("anonymous")
        .try_connect(hub.mqtt)
        .await
        .expect("no auth configured");
    let p = Client::connect(hub.mqtt, "gw-01").await;
    let e = event("gw-01", "cam-01", T0, &[(0, "person")]);
    // A signed payload (an agent with a secret, on a hub without auth) is a valid event too.
    let t = topic("gw-01", "event");
    p.publish(
        &t,
        sign(&t, &json(&e), &signing_key("whatever-secret")).unwrap(),
    )
    .await;
    hub.wait_health("stored", |h| h["ingest"]["events_accepted"] == 1)
        .await;
    hub.stop().await;
}

/// A self-signed certificate for 127.0.0.1, made for this test run.
struct TestCert {
    _dir: tempfile::TempDir,
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    pem: String,
}

fn test_cert() -> TestCert {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("hub-cert.pem");
    let key_file = dir.path().join("hub-key.pem");
    std::fs::write(&cert_file, ck.cert.pem()).unwrap();
    std::fs::write(&key_file, ck.signing_key.serialize_pem()).unwrap();
    TestCert {
        _dir: dir,
        cert_file,
        key_file,
        pem: ck.cert.pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_required_plain_mqtt_is_refused_and_devices_connect_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = test_cert();
    let secret = devices::add(dir.path(), "yuexi/gw-a").unwrap();
    let hub = TestHub::start_with(dir.path(), free_port(), |c| {
        c.auth.devices = DeviceAuth::Required;
        c.mqtt_tls = Some(cloud_hub::config::MqttTls {
            cert_file: cert.cert_file.clone(),
            key_file: cert.key_file.clone(),
            handshake_timeout_ms: 2000,
        });
    })
    .await;

    // Plain MQTT with the right credentials: refused before MQTT, counted.
    let refused = Client::options("plain")
        .login("yuexi/gw-a", &secret)
        .try_connect(hub.mqtt)
        .await;
    assert!(
        refused.is_err(),
        "plain MQTT on the TLS port must be refused"
    );
    hub.wait_health("tls refusal counted", |h| {
        h["ingest"]["tls_handshakes_failed"] == 1
    })
    .await;

    // A client that does not trust the hub's certificate gives up itself.
    let other = test_cert();
    let err = Client::options("mitm-victim")
        .login("yuexi/gw-a", &secret)
        .tls(&other.pem)
        .try_connect(hub.mqtt)
        .await
        .unwrap_err();
    assert!(
        err.to_lowercase().contains("tls") || err.contains("certificate"),
        "{err}"
    );

    // TLS with a wrong password: refused by the device check behind TLS.
    let guess = Client::options("guess")
        .login("yuexi/gw-a", "not-the-secret")
        .tls(&cert.pem);
    assert!(
        guess.try_connect(hub.mqtt).await.is_err(),
        "wrong password over TLS"
    );
    hub.wait_health("auth refusal counted", |h| h["ingest"]["auth_refused"] == 1)
        .await;

    // TLS with the device's credentials: connects and its signed event is stored.
    let client = Client::options("yuexi-gw-a")
        .login("yuexi/gw-a", &secret)
        .tls(&cert.pem)
        .try_connect(hub.mqtt)
        .await
        .expect("device connects over TLS");
    let e = event("gw-a", "cam-01", T0, &[(0, "person")]);
    let t = topic("gw-a", "event");
    client
        .publish(&t, sign(&t, &json(&e), &signing_key(&secret)).unwrap())
        .await;
    hub.wait_health("stored over TLS", |h| h["ingest"]["events_accepted"] == 1)
        .await;
    assert_eq!(ids(&hub.events("limit=10").await), vec![e.id.to_string()]);
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains("csb_hub_mqtt_tls_refused_total{reason=\"handshake_failed\"} 2"),
        "{metrics}"
    );
    hub.stop().await;
}
