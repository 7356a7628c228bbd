//! Device identity and TLS with real processes (issue 4): a hub that requires device
//! credentials, MQTT over TLS and HTTP tokens (certificates from `cloud-hub tls-cert`,
//! credentials from `cloud-hub device add`, a token from `cloud-hub token add`), and real
//! `edge-agent synth` processes:
//! - device A with its own credentials over TLS: every event stored and acked;
//! - A's credentials used to speak for device B: connected, but every payload is quarantined as
//!   `spoofed`, counted, nothing stored for B, nothing acked (B's outbox keeps it all);
//! - a wrong secret: refused at CONNECT and counted;
//! - the right secret over plain TCP: refused before MQTT and counted;
//! - the HTTP API answers only with a token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use csb_test_support::agent::{AgentToml, Wave};
use csb_test_support::http::{eventually, get_json_with};
use csb_test_support::process::{hub_cli, spawn_synth, Hub};
use serde_json::Value;

struct Agent<'a> {
    /// Names its config file and outbox.
    tag: &'a str,
    /// The device the agent is (its topics and payloads).
    device: &'a str,
    /// The credentials it logs in with.
    username: &'a str,
    secret_file: &'a Path,
    ca_file: Option<&'a Path>,
}

fn agent_config(dir: &Path, port: u16, a: &Agent) -> PathBuf {
    AgentToml::new(a.device, port)
        .mqtt("keep_alive_s = 5")
        .login(a.username, a.secret_file, a.ca_file)
        .outbox_dir(dir.join(format!("outbox-{}", a.tag)))
        .outbox("ack_timeout_s = 3")
        // An agent needs a source to run; its telemetry is signed like the events.
        .simulated_sensor("wl-sec", 500, Wave::new(10.0, 5.0, 60.0))
        .write_as(dir, &format!("agent-{}.toml", a.tag))
}

async fn health(http: &str) -> Value {
    // Open without a token: load balancers probe it.
    get_json_with(&format!("{http}/api/v1/health"), None)
        .await
        .expect("health answers")
}

async fn wait_health(http: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    match eventually(Duration::from_secs(60), || async {
        let h = health(http).await;
        pred(&h).then_some(h)
    })
    .await
    {
        Some(h) => h,
        None => panic!("{what}: not seen within 60 s: {:#}", health(http).await),
    }
}

async fn stored(http: &str, token: &str, device: &str) -> usize {
    let url = format!("{http}/api/v1/events?device={device}&limit=1000");
    let page = get_json_with(&url, Some(token))
        .await
        .expect("events answer");
    page["events"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_device_itself_over_tls_gets_its_events_stored() {
    let sec = Hub::builder()
        .devices(&["yuexi/gw-sec-a", "yuexi/gw-sec-b"])
        .secured()
        .start();
    let listed = hub_cli(&[
        "device",
        "list",
        "--data-dir",
        sec.data_dir.to_str().unwrap(),
    ]);
    assert!(
        listed.contains("yuexi/gw-sec-a") && listed.contains("yuexi/gw-sec-b"),
        "{listed}"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret_a = sec.secret_file("yuexi/gw-sec-a");
    let wrong = d.join("wrong.secret");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef\n").unwrap();
    let (http, token, mqtt_port) = (sec.http.clone(), sec.token().to_string(), sec.mqtt_port);
    let ca = sec.ca_file().to_path_buf();

    // The HTTP API: nothing without a token, a viewer token reads.
    let events_url = format!("{http}/api/v1/events");
    let r = reqwest::get(&events_url).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = reqwest::Client::new()
        .get(&events_url)
        .bearer_auth("csb_0000000000000000000000000000000000000000000000000000000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(stored(&http, &token, "gw-sec-a").await, 0);

    // A, itself, over TLS: all 200 stored, and the acks come back (its outbox empties).
    let cfg_a = agent_config(
        d,
        mqtt_port,
        &Agent {
            tag: "a",
            device: "gw-sec-a",
            username: "yuexi/gw-sec-a",
            secret_file: &secret_a,
            ca_file: Some(&ca),
        },
    );
    let mut a = spawn_synth(&cfg_a, &d.join("a.log"), 200, 200);
    wait_health(&http, "A's 200 events stored", |h| {
        h["ingest"]["events_accepted"] == 200
    })
    .await;
    assert_eq!(stored(&http, &token, "gw-sec-a").await, 200);
    let drained = eventually(Duration::from_secs(30), || async {
        let devs = get_json_with(&format!("{http}/api/v1/devices"), Some(&token)).await?;
        let dev = devs["devices"]
            .as_array()?
            .iter()
            .find(|x| x["device"] == "gw-sec-a")?
            .clone();
        (dev["outbox"]["pending"].as_u64() == Some(0)).then_some(dev)
    })
    .await;
    assert!(drained.is_some(), "A's outbox never drained: acks over TLS");
    a.terminate(Duration::from_secs(10));

    // A's credentials, speaking as B: connected, but nothing of it is believed.
    let cfg_spoof = agent_config(
        d,
        mqtt_port,
        &Agent {
            tag: "spoof",
            device: "gw-sec-b",
            username: "yuexi/gw-sec-a",
            secret_file: &secret_a,
            ca_file: Some(&ca),
        },
    );
    let _spoofer = spawn_synth(&cfg_spoof, &d.join("spoof.log"), 20, 200);
    let h = wait_health(&http, "20 spoofed events", |h| {
        h["ingest"]["rejected_by_reason"]["spoofed"].as_u64() >= Some(20)
    })
    .await;
    assert_eq!(h["ingest"]["events_accepted"], 200, "{h:#}");
    assert_eq!(stored(&http, &token, "gw-sec-b").await, 0);
    let q_url = format!("{http}/api/v1/quarantine?reason=spoofed&limit=1000");
    let q = get_json_with(&q_url, Some(&token)).await.unwrap();
    let entries = q["quarantine"].as_array().unwrap();
    assert!(entries.len() >= 20, "{q:#}");
    assert!(
        entries
            .iter()
            .all(|e| e["device"] == "gw-sec-b" && e["acked"] == false),
        "{q:#}"
    );

    // A wrong secret over TLS: refused at CONNECT.
    let cfg_wrong = agent_config(
        d,
        mqtt_port,
        &Agent {
            tag: "wrong",
            device: "gw-sec-a",
            username: "yuexi/gw-sec-a",
            secret_file: &wrong,
            ca_file: Some(&ca),
        },
    );
    let before = health(&http).await["ingest"]["auth_refused"]
        .as_u64()
        .unwrap();
    let mut w = spawn_synth(&cfg_wrong, &d.join("wrong.log"), 5, 200);
    wait_health(&http, "wrong secret refused", |h| {
        h["ingest"]["auth_refused"].as_u64() > Some(before)
    })
    .await;
    w.terminate(Duration::from_secs(10));

    // The right secret without TLS: refused before MQTT.
    let cfg_plain = agent_config(
        d,
        mqtt_port,
        &Agent {
            tag: "plain",
            device: "gw-sec-a",
            username: "yuexi/gw-sec-a",
            secret_file: &secret_a,
            ca_file: None,
        },
    );
    let mut p = spawn_synth(&cfg_plain, &d.join("plain.log"), 5, 200);
    wait_health(&http, "plain MQTT refused", |h| {
        h["ingest"]["tls_handshakes_failed"].as_u64() >= Some(1)
    })
    .await;
    p.terminate(Duration::from_secs(10));
    // Neither got anything stored: still A's 200 only.
    assert_eq!(health(&http).await["ingest"]["events_accepted"], 200);
}
