//! `edge-agent doctor` against a real hub (TLS, device logins, HTTP tokens), the real model,
//! GStreamer and footage: a healthy box passes every check, then each fault a technician meets
//! is injected for real — a missing model, a model failing its self-test (a shifted labels
//! file), an ONNX Runtime too old (the 1.20 wheel setup installs for this test), a dead camera,
//! a missing GStreamer plugin (a plugin folder without it), a wrong secret, an unreachable
//! broker, an expired hub certificate (a second hub serving one), a clock ten minutes ahead
//! (libfaketime), a full disk (a filled tmpfs), an invalid config and a large backlog (an
//! outbox filled while the uplink was down) — and exactly that check must fail, with its fix,
//! while every other check passes or is skipped because of it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use csb_test_support::agent::AgentToml;
use csb_test_support::disk::Tmpfs;
use csb_test_support::process::{bin, free_port, media, root, spawn_synth, Hub};
use serde_json::Value;

const DEVICE: &str = "gw-doc";
const LOGIN: &str = "yuexi/gw-doc";

/// What a doctor run printed and how it exited.
struct Doctor {
    report: Value,
    code: i32,
}

impl Doctor {
    fn statuses(&self) -> Vec<(String, String)> {
        self.report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .map(|c| {
                let name = match c["target"].as_str() {
                    Some(t) => format!("{} {t}", c["id"].as_str().unwrap()),
                    None => c["id"].as_str().unwrap().to_string(),
                };
                (name, c["status"].as_str().unwrap().to_string())
            })
            .collect()
    }

    fn failed(&self) -> Vec<String> {
        self.statuses()
            .into_iter()
            .filter(|(_, s)| s == "failed")
            .map(|(n, _)| n)
            .collect()
    }

    fn check(&self, id: &str) -> &Value {
        self.report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no check {id}: {:#}", self.report))
    }
}

/// Runs `edge-agent doctor --json` on `config` (optionally under `wrapper`, e.g. faketime).
fn doctor(config: &Path, env: &[(&str, &Path)], wrapper: &[&str]) -> Doctor {
    let agent = bin("edge-agent");
    let mut cmd = match wrapper.split_first() {
        Some((w, args)) => {
            let mut c = Command::new(w);
            c.args(args).arg(&agent);
            c
        }
        None => Command::new(&agent),
    };
    cmd.args(["doctor", "--json", "--timeout-s", "5", "--config"])
        .arg(config)
        .env(
            "ORT_DYLIB_PATH",
            root().join(".cache/onnxruntime/libonnxruntime.so"),
        )
        .env("CSB_MODELS_DIR", root().join("models"))
        .env("RUST_LOG", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run edge-agent doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Doctor {
        report,
        code: out.status.code().unwrap_or(-1),
    }
}

/// The agent config of the healthy box; `edit` changes it for a fault.
struct Gateway {
    dir: PathBuf,
    mqtt_port: u16,
    http: String,
    secret: PathBuf,
    ca: PathBuf,
}

impl Gateway {
    fn toml(&self) -> AgentToml {
        self.toml_model("")
    }

    /// With more `[model]` lines.
    fn toml_model(&self, model: &str) -> AgentToml {
        AgentToml::new(DEVICE, self.mqtt_port)
            .mqtt("keep_alive_s = 5")
            .login(LOGIN, &self.secret, Some(&self.ca))
            .outbox_dir(self.dir.join("outbox"))
            .hub(&self.http)
            .model(&format!("intra_threads = 1\n{model}"))
            .camera("cam-street", media("vtest.avi").to_str().unwrap(), "")
    }

    fn write(&self, name: &str, toml: &str) -> PathBuf {
        let p = self.dir.join(format!("{name}.toml"));
        std::fs::write(&p, toml).unwrap();
        p
    }
}

/// Replaces the first line starting with `key =` in `toml`'s `[section]`.
fn set(toml: &str, key: &str, value: &str) -> String {
    let mut done = false;
    toml.lines()
        .map(|l| {
            if !done && l.starts_with(&format!("{key} =")) {
                done = true;
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A plugin folder holding every system GStreamer plugin but `without`.
fn plugins_without(dir: &Path, without: &str) -> PathBuf {
    let out = Command::new("pkg-config")
        .args(["--variable=pluginsdir", "gstreamer-1.0"])
        .output()
        .expect("pkg-config (installed by make setup)");
    let system = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(system.is_dir(), "GStreamer plugin folder {system:?}");
    let d = dir.join("gst-plugins");
    std::fs::create_dir_all(&d).unwrap();
    let mut removed = false;
    for e in std::fs::read_dir(&system).unwrap().flatten() {
        let name = e.file_name();
        if name.to_string_lossy() == without {
            removed = true;
            continue;
        }
        std::os::unix::fs::symlink(e.path(), d.join(&name)).unwrap();
    }
    assert!(removed, "{without} is not in {system:?}");
    d
}

/// A CA and an already expired hub certificate for 127.0.0.1 (rcgen, as `cloud-hub tls-cert`).
fn expired_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let now = time::OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::days(400);
    ca.not_after = now + time::Duration::days(400);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut hub = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    hub.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    hub.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    hub.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    hub.not_before = now - time::Duration::days(400);
    hub.not_after = now - time::Duration::days(2);
    let hub_key = KeyPair::generate().unwrap();
    let hub_cert = hub.signed_by(&hub_key, &Issuer::new(ca, &ca_key)).unwrap();
    let (c, hc, hk) = (
        dir.join("ca.pem"),
        dir.join("hub-cert.pem"),
        dir.join("hub-key.pem"),
    );
    std::fs::write(&c, ca_cert.pem()).unwrap();
    std::fs::write(&hc, hub_cert.pem()).unwrap();
    std::fs::write(&hk, hub_key.serialize_pem()).unwrap();
    (c, hc, hk)
}

#[test]
fn doctor_fails_exactly_the_check_of_each_injected_fault() {
    let hub = Hub::builder().devices(&[LOGIN]).secured().start();
    let dir = tempfile::tempdir().unwrap();
    let b = Gateway {
        dir: dir.path().to_path_buf(),
        mqtt_port: hub.mqtt_port,
        http: hub.http.clone(),
        secret: hub.secret_file(LOGIN),
        ca: hub.ca_file().to_path_buf(),
    };
    let good = b.toml().to_toml();

    // The healthy box: nothing fails, every check ran, exit 0.
    let t = Instant::now();
    let d = doctor(&b.write("good", &good), &[], &[]);
    let took = t.elapsed();
    let st = d.statuses();
    assert_eq!(d.code, 0, "{:#}", d.report);
    for (name, status) in &st {
        assert_eq!(status, "ok", "{name} on the healthy box: {:#}", d.report);
    }
    let ids: Vec<&str> = st
        .iter()
        .map(|(n, _)| n.split(' ').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 13, "{ids:?}");
    assert!(
        ids.contains(&"camera") && ids.contains(&"model-selftest") && ids.contains(&"clock-skew")
    );
    assert!(
        d.check("camera")["message"]
            .as_str()
            .unwrap()
            .contains("768×576"),
        "{:#}",
        d.check("camera")
    );
    eprintln!("doctor on a healthy box: {} ms", took.as_millis());

    // The text form: one line per check, a summary, same exit code.
    let out = Command::new(bin("edge-agent"))
        .args(["doctor", "--config"])
        .arg(b.dir.join("good.toml"))
        .env(
            "ORT_DYLIB_PATH",
            root().join(".cache/onnxruntime/libonnxruntime.so"),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("13 checks: 13 ok, 0 warning, 0 failed"),
        "{text}"
    );

    // A second hub serving an expired certificate, for `tls-certificate`.
    let certs = tempfile::tempdir().unwrap();
    let (ca2, hub_cert, hub_key) = expired_certificates(certs.path());
    let expired_hub = Hub::builder()
        .devices(&[LOGIN])
        .config(&format!(
            "[auth]\ndevices = \"required\"\n[mqtt_tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            hub_cert.display().to_string(),
            hub_key.display().to_string()
        ))
        .start();

    // A model folder whose labels file is shifted by one: the model "sees" the wrong things.
    let models = b.dir.join("models-shifted");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy(
        root().join("models/manifest.toml"),
        models.join("manifest.toml"),
    )
    .unwrap();
    let labels = std::fs::read_to_string(root().join("models/coco80.txt")).unwrap();
    let mut lines: Vec<&str> = labels.lines().filter(|l| !l.trim().is_empty()).collect();
    lines.rotate_left(1);
    std::fs::write(models.join("coco80.txt"), lines.join("\n")).unwrap();

    // An outbox filled while the uplink was down (synth with the broker unreachable).
    let backlog_toml = set(
        &b.toml()
            .outbox_dir(b.dir.join("outbox-backlog"))
            .outbox("max_bytes = 1048576")
            .to_toml(),
        "broker",
        &format!("\"127.0.0.1:{}\"", free_port()),
    );
    let ids_log = b.dir.join("backlog-ids.log");
    let mut synth = spawn_synth(
        &b.write("backlog-synth", &backlog_toml),
        &ids_log,
        3000,
        3000,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&ids_log).map_or(0, |s| s.lines().count()) < 3000 {
        assert!(Instant::now() < deadline, "synth did not queue 3000 events");
        std::thread::sleep(Duration::from_millis(200));
    }
    synth.terminate(Duration::from_secs(10));

    let old_ort = root().join(".cache/onnxruntime-old/libonnxruntime.so.1.20.1");
    assert!(
        old_ort.is_file(),
        "{} is missing: run `make setup`",
        old_ort.display()
    );
    let wrong_secret = b.dir.join("wrong.secret");
    std::fs::write(&wrong_secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let gst_empty_registry = b.dir.join("gst-registry.bin");
    let plugins = plugins_without(&b.dir, "libgstrtsp.so");
    let volume = Tmpfs::mount("4m");

    struct Fault<'a> {
        name: &'a str,
        toml: String,
        env: Vec<(&'a str, &'a Path)>,
        wrapper: Vec<&'a str>,
        check: &'a str,
        /// Words the failed check's message must hold.
        says: &'a str,
    }
    let mut faults = vec![
        Fault {
            name: "missing model",
            toml: b
                .toml_model("path = \"/nonexistent/yolox_nano.onnx\"")
                .to_toml(),
            env: vec![],
            wrapper: vec![],
            check: "model-file",
            says: "/nonexistent/yolox_nano.onnx",
        },
        Fault {
            name: "failing self-test",
            toml: b
                .toml_model(&format!(
                    "models_dir = {:?}\npath = {:?}",
                    models.display().to_string(),
                    root().join("models/yolox_nano.onnx").display().to_string()
                ))
                .to_toml(),
            env: vec![],
            wrapper: vec![],
            check: "model-selftest",
            says: "fails its self-test",
        },
        Fault {
            name: "wrong ONNX Runtime version",
            toml: good.clone(),
            env: vec![("ORT_DYLIB_PATH", &old_ort)],
            wrapper: vec![],
            check: "ort-runtime",
            says: "1.20.1",
        },
        Fault {
            name: "dead camera URL",
            toml: b
                .toml()
                .camera(
                    "cam-dead",
                    &format!("rtsp://127.0.0.1:{}/stream1", free_port()),
                    "",
                )
                .to_toml(),
            env: vec![],
            wrapper: vec![],
            check: "camera cam-dead",
            says: "rtsp://127.0.0.1",
        },
        Fault {
            name: "missing GStreamer plugin",
            toml: good.clone(),
            env: vec![
                ("GST_PLUGIN_SYSTEM_PATH_1_0", &plugins),
                ("GST_PLUGIN_PATH_1_0", &plugins),
                ("GST_REGISTRY_1_0", &gst_empty_registry),
            ],
            wrapper: vec![],
            check: "gstreamer-plugins",
            says: "rtspsrc (gstreamer1.0-plugins-good)",
        },
        Fault {
            name: "bad password",
            toml: set(
                &good,
                "secret_file",
                &format!("{:?}", wrong_secret.display().to_string()),
            ),
            env: vec![],
            wrapper: vec![],
            check: "broker-login",
            says: "refused",
        },
        Fault {
            name: "unreachable broker",
            toml: set(&good, "broker", &format!("\"127.0.0.1:{}\"", free_port())),
            env: vec![],
            wrapper: vec![],
            check: "broker-reachable",
            says: "cannot reach",
        },
        Fault {
            name: "expired certificate",
            toml: set(
                &set(
                    &set(
                        &good,
                        "broker",
                        &format!("\"127.0.0.1:{}\"", expired_hub.mqtt_port),
                    ),
                    "ca_file",
                    &format!("{:?}", ca2.display().to_string()),
                ),
                "url",
                &format!("{:?}", expired_hub.http),
            ),
            env: vec![],
            wrapper: vec![],
            check: "tls-certificate",
            says: "expired",
        },
        Fault {
            name: "clock skew",
            toml: good.clone(),
            env: vec![("FAKETIME_DONT_FAKE_MONOTONIC", Path::new("1"))],
            wrapper: vec!["faketime", "-f", "+600s"],
            check: "clock-skew",
            says: "ahead of the hub",
        },
        Fault {
            name: "invalid config",
            toml: set(&good, "keep_alive_s", "\"five\""),
            env: vec![],
            wrapper: vec![],
            check: "config",
            says: "keep_alive_s",
        },
        Fault {
            name: "large backlog",
            toml: set(
                &backlog_toml,
                "broker",
                &format!("\"127.0.0.1:{}\"", hub.mqtt_port),
            ),
            env: vec![],
            wrapper: vec![],
            check: "outbox-backlog",
            says: "dropped soon",
        },
    ];
    match &volume {
        Ok(v) => {
            let outbox = v.path().join("outbox");
            v.fill();
            faults.push(Fault {
                name: "full disk",
                toml: b.toml().outbox_dir(&outbox).to_toml(),
                env: vec![],
                wrapper: vec![],
                check: "disk-space",
                says: "free",
            });
        }
        Err(why) => eprintln!("full-disk fault not injected: cannot mount a tmpfs ({why})"),
    }

    let mut wrong = Vec::new();
    for f in &faults {
        let cfg = b.write(&f.name.replace(' ', "-"), &f.toml);
        let d = doctor(&cfg, &f.env, &f.wrapper);
        let failed = d.failed();
        let id = f.check.split(' ').next().unwrap();
        let c = d.report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                let name = match c["target"].as_str() {
                    Some(t) => format!("{} {t}", c["id"].as_str().unwrap()),
                    None => c["id"].as_str().unwrap().to_string(),
                };
                name == f.check
            })
            .cloned()
            .unwrap_or(Value::Null);
        let msg = c["message"].as_str().unwrap_or_default();
        let fix = c["fix"].as_str().unwrap_or_default();
        eprintln!(
            "{:<28} {} {:<16} {msg}\n{:<28} fix: {fix}",
            f.name, c["status"], id, ""
        );
        if failed != [f.check.to_string()] || !msg.contains(f.says) || fix.is_empty() || d.code != 1
        {
            wrong.push(format!(
                "{}: failed {failed:?} (want exactly [{}]), exit {}, message {msg:?} (want {:?}), fix {fix:?}",
                f.name, f.check, d.code, f.says
            ));
        }
        // Every other check passed or was skipped (warnings would hide a second fault).
        for (name, status) in d.statuses() {
            if name != f.check && status != "ok" && status != "skipped" {
                wrong.push(format!("{}: {name} is {status}", f.name));
            }
        }
    }
    drop(volume);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Runs `edge-agent ARGS` with the runtime and models found; returns (exit code, stdout, stderr).
fn agent_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("edge-agent"))
        .args(args)
        .env(
            "ORT_DYLIB_PATH",
            root().join(".cache/onnxruntime/libonnxruntime.so"),
        )
        .env("CSB_MODELS_DIR", root().join("models"))
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run edge-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn is_jpeg(p: &Path) -> bool {
    std::fs::read(p).is_ok_and(|b| b.len() > 10_000 && b.starts_with(&[0xff, 0xd8]))
}

/// `probe`, `zones preview`, `status` and `queue` on real footage, a real hub and a running
/// agent.
#[test]
fn the_technicians_tools_see_what_the_agent_sees() {
    let hub = Hub::builder().devices(&[LOGIN]).secured().start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // probe: frames decoded and detected, people found, the annotated picture written.
    let pic = d.join("probe.jpg");
    let (code, out, err) = agent_cli(&[
        "probe",
        media("vtest.avi").to_str().unwrap(),
        "--frames",
        "20",
        "--threads",
        "1",
        "--json",
        "--out",
        pic.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r = json(&out);
    assert_eq!(r["frames"], 20, "{r}");
    assert_eq!(
        (r["width"].as_u64(), r["height"].as_u64()),
        (Some(768), Some(576))
    );
    let persons = r["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o[0] == "person")
        .and_then(|o| o[1].as_u64())
        .unwrap_or(0);
    assert!(persons >= 3, "the street has people: {r}");
    assert!(r["inference_ms_p50"].as_f64().unwrap() > 0.0);
    assert!(is_jpeg(&pic));
    // A dead URL: a clear error naming it, non-zero exit.
    let dead = format!("rtsp://127.0.0.1:{}/nothing", free_port());
    let (code, _, err) = agent_cli(&["probe", &dead, "--frames", "5"]);
    assert_ne!(code, 0);
    assert!(err.contains(&dead), "{err}");

    // The agent's config: one camera with a zone and a line, the live hub.
    let outbox = d.join("outbox");
    let cfg = AgentToml::new(DEVICE, hub.mqtt_port)
        .mqtt("keep_alive_s = 5")
        .login(LOGIN, &hub.secret_file(LOGIN), Some(hub.ca_file()))
        .outbox_dir(&outbox)
        .hub(&hub.http)
        .model("intra_threads = 1")
        .camera(
            "cam-street",
            media("vtest.avi").to_str().unwrap(),
            "loop = true\n\
             [[cameras.analytics.zones]]\nid = \"kerb\"\npolygon = [[0.1, 0.5], [0.9, 0.5], [0.9, 0.9], [0.1, 0.9]]\n\
             [[cameras.analytics.lines]]\nid = \"gate\"\nfrom = [0.5, 0.2]\nto = [0.5, 0.8]\n",
        )
        .write(d);
    let cfg_s = cfg.to_str().unwrap();

    // zones preview: both shapes drawn on a real frame; an unknown camera names the known ones.
    let zpic = d.join("zones.jpg");
    let (code, out, err) = agent_cli(&[
        "zones",
        "preview",
        "cam-street",
        "--config",
        cfg_s,
        "--json",
        "--out",
        zpic.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let z = json(&out);
    assert_eq!(
        (z["zones"].as_u64(), z["lines"].as_u64()),
        (Some(1), Some(1)),
        "{z}"
    );
    assert!(is_jpeg(&zpic));
    let (code, _, err) = agent_cli(&["zones", "preview", "cam-nope", "--config", cfg_s]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cam-nope") && err.contains("cam-street"),
        "{err}"
    );

    // status before any run: not running (3).
    let (code, out, _) = agent_cli(&["status", "--config", cfg_s]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("not running"), "{out}");

    // A running agent: status says running, connected, the camera running, within seconds.
    let mut agent = csb_test_support::process::spawn_agent(&cfg, 500);
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let (code, out, _) = agent_cli(&["status", "--config", cfg_s, "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let cam_running = v["cameras"][0]["state"] == "running";
        if code == 0 && v["connected"] == true && cam_running {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "status never said running: exit {code} {out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(s["alive"], true);
    assert_eq!(s["device"], DEVICE);
    assert!(
        s["cameras"][0]["health"]["fps_in"].as_f64().unwrap_or(0.0) > 0.0,
        "{s}"
    );
    let (code, text, _) = agent_cli(&["status", "--config", cfg_s]);
    assert_eq!(code, 0);
    assert!(
        text.contains("running (pid") && text.contains("cam-street"),
        "{text}"
    );
    assert_eq!(s["model"]["name"], "yolox_nano", "{s}");
    assert!(
        text.contains("model    yolox_nano (the agent's own)"),
        "{text}"
    );
    // The queue of a running agent: shown from its status, never purged under it.
    let (code, out, _) = agent_cli(&["queue", "--config", cfg_s]);
    assert_eq!(code, 0);
    assert!(out.contains("held by the running agent"), "{out}");
    let (code, _, err) = agent_cli(&["queue", "--config", cfg_s, "--purge", "--yes"]);
    assert_ne!(code, 0);
    assert!(err.contains("stop it first"), "{err}");
    // doctor beside the running agent: its own login does not end the agent's session, and
    // the backlog is judged from what the agent reports.
    let d2 = doctor(&cfg, &[], &[]);
    assert_eq!(d2.code, 0, "{:#}", d2.report);
    let b = d2.check("outbox-backlog");
    assert_eq!(b["status"], "ok", "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("running agent"),
        "{b}"
    );
    let (code, _, _) = agent_cli(&["status", "--config", cfg_s]);
    assert_eq!(code, 0, "the agent is still connected after doctor's login");
    agent
        .terminate(Duration::from_secs(20))
        .expect("agent stops on SIGTERM");
    let (code, out, _) = agent_cli(&["status", "--config", cfg_s]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("stopped cleanly"), "{out}");

    // queue on a backlog (synth with the hub unreachable): listed oldest first, a purge is
    // refused without confirmation, then done with --yes.
    // (synth runs no camera; one is configured because an agent needs something to run.)
    let backlog = AgentToml::new(DEVICE, free_port())
        .outbox_dir(d.join("outbox-backlog"))
        .camera("cam-street", media("vtest.avi").to_str().unwrap(), "")
        .write_as(d, "backlog.toml");
    let ids = d.join("ids.log");
    let mut synth = spawn_synth(&backlog, &ids, 500, 1000);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&ids).map_or(0, |s| s.lines().count()) < 500 {
        assert!(Instant::now() < deadline, "synth did not queue 500 events");
        std::thread::sleep(Duration::from_millis(100));
    }
    synth.terminate(Duration::from_secs(10));
    let b = backlog.to_str().unwrap();
    let (code, out, err) = agent_cli(&["queue", "--config", b, "--json", "--list", "5"]);
    assert_eq!(code, 0, "{err}");
    let q = json(&out);
    assert_eq!(q["pending_events"], 500, "{q}");
    let first_id = std::fs::read_to_string(&ids)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(q["records"][0]["id"], first_id.trim(), "oldest first: {q}");
    assert_eq!(q["records"].as_array().unwrap().len(), 5);
    let (code, out, err) = agent_cli(&["queue", "--config", b, "--purge"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("500 records (500 events)"),
        "the question names what is lost: {err}"
    );
    assert!(out.contains("nothing purged"), "{out}");
    let (code, out, _) = agent_cli(&["queue", "--config", b, "--json"]);
    assert_eq!(
        (code, json(&out)["pending_events"].as_u64()),
        (0, Some(500))
    );
    let (code, out, err) = agent_cli(&["queue", "--config", b, "--purge", "--yes", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["purged"], 500);
    let (_, out, _) = agent_cli(&["queue", "--config", b, "--json"]);
    assert_eq!(json(&out)["pending"], 0);
}
