//! Device identity and TLS with real processes (issue 4): a hub that requires device
//! credentials, MQTT over TLS and HTTP tokens (certificates from `cloud-hub tls-cert`,
//! credentials from `cloud-hub device add`, a token from `cloud-hub token add`), and real
//! `edge-agent synth` processes:
//! - device A with its own credentials over TLS: every event stored and acked;
//! - A's credentials used to speak for device B: connected, but every payload is quarantined as
//!   `spoofed`, counted, nothing stored for B, nothing acked (B's outbox keeps it all);
//! - a wrong secret: refused at CONNECT and counted;
//! - the right secret over plain TCP: refused before MQTT and counted;
//! - the HTTP API answers only with a token;
//! - a new box enrols with a one-time token (`cloud-hub device enrol`, `edge-agent provision`)
//!   once, before it expires, and only the box it was issued for.

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

/// `edge-agent provision` run at the box, as a technician would.
fn provision(http: &str, token: &str, config: &Path) -> std::process::Output {
    std::process::Command::new(csb_test_support::process::bin("edge-agent"))
        .args(["provision", "--hub", http, "--config"])
        .arg(config)
        .env("CSB_ENROL_TOKEN", token)
        .output()
        .expect("run edge-agent provision")
}

/// The token line of `cloud-hub device enrol`.
fn enrol(data_dir: &Path, id: &str, extra: &[&str]) -> String {
    let out = hub_cli(
        &[
            &[
                "device",
                "enrol",
                id,
                "--data-dir",
                data_dir.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat(),
    );
    out.lines()
        .find(|l| l.starts_with("csbe_"))
        .unwrap_or_else(|| panic!("no token in: {out}"))
        .to_string()
}

/// A new box enrols with a one-time token (`cloud-hub device enrol` → `edge-agent provision`)
/// and works at once on a hub that requires credentials and TLS; the token does not work
/// twice, nor once expired, nor for another box; an unreachable hub is its own exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_enrols_with_a_one_time_token_once_before_it_expires() {
    let sec = Hub::builder().secured().start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = sec.ca_file().to_path_buf();
    let unenrolled = |device: &str, name: &str| {
        AgentToml::new(device, sec.mqtt_port)
            .mqtt("keep_alive_s = 5")
            .mqtt(&format!("ca_file = {:?}", ca.display().to_string()))
            .outbox_dir(d.join(format!("outbox-{name}")))
            .outbox("ack_timeout_s = 3")
            .simulated_sensor("wl-new", 500, Wave::new(10.0, 5.0, 60.0))
            .write_as(d, &format!("{name}.toml"))
    };

    let token = enrol(&sec.data_dir, "yuexi/gw-new", &[]);
    let cfg = unenrolled("gw-new", "new");
    let out = provision(&sec.http, &token, &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let edited = std::fs::read_to_string(&cfg).unwrap();
    assert!(edited.contains("username = \"yuexi/gw-new\""), "{edited}");
    let secret = d.join("device.secret");
    assert!(edited.contains("device.secret"), "{edited}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the secret is the agent's alone");
    }
    // A working device: its events are stored over TLS with the issued credentials.
    let mut agent = spawn_synth(&cfg, &d.join("new.log"), 50, 100);
    wait_health(&sec.http, "the new box's 50 events", |h| {
        h["ingest"]["events_accepted"] == 50
    })
    .await;
    assert_eq!(stored(&sec.http, sec.token(), "gw-new").await, 50);
    agent.terminate(Duration::from_secs(10));

    // The same token again (another box, or the same one twice): refused, exit code 2.
    let again = provision(&sec.http, &token, &unenrolled("gw-new", "again"));
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already used"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // A token for another box: refused without using it up; the right box then enrols.
    let other = enrol(&sec.data_dir, "yuexi/gw-other", &[]);
    let wrong_box = provision(&sec.http, &other, &unenrolled("gw-stranger", "stranger"));
    assert_eq!(wrong_box.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong_box.stderr).contains("yuexi/gw-other"));
    assert!(
        provision(&sec.http, &other, &unenrolled("gw-other", "other"))
            .status
            .success()
    );

    // Expired: refused, and no credentials were issued.
    let late = enrol(&sec.data_dir, "yuexi/gw-late", &["--ttl-s", "1"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = provision(&sec.http, &late, &unenrolled("gw-late", "late"));
    assert_eq!(expired.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&expired.stderr).contains("expired"));
    let listed = hub_cli(&[
        "device",
        "list",
        "--data-dir",
        sec.data_dir.to_str().unwrap(),
    ]);
    assert!(
        !listed.contains("gw-late") && listed.contains("yuexi/gw-new"),
        "{listed}"
    );
    let h = health(&sec.http).await;
    assert_eq!(
        h["http_auth"]["refused_by_reason"]["enrolment_refused"], 2,
        "{h:#}"
    );

    // No hub there: exit code 3, the config untouched.
    let cfg_down = unenrolled("gw-down", "down");
    let before = std::fs::read_to_string(&cfg_down).unwrap();
    let port = csb_test_support::process::free_port();
    let down = provision(&format!("http://127.0.0.1:{port}"), &late, &cfg_down);
    assert_eq!(down.status.code(), Some(3));
    assert_eq!(std::fs::read_to_string(&cfg_down).unwrap(), before);
}
