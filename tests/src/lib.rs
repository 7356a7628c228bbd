//! Helpers for the multi-process end-to-end tests: locating the built binaries and fixtures,
//! starting a real hub process and waiting for it, picking free ports, and a raw MQTT client
//! ([`raw_mqtt`]).

pub mod raw_mqtt;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A workspace binary built by `make build` (`cargo build --release --bins`), found in the same
/// profile folder as the running test (target/<profile>/deps/.. ).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let p = profile_dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the binaries first (`make test` does; or `cargo build --release --bins` \
         before `cargo test --release`)",
        p.display()
    );
    p
}

/// A fixture that `make setup` installs (footage and images from Debian's opencv-doc).
pub fn media(name: &str) -> PathBuf {
    let p = root().join(".cache/media").join(name);
    assert!(p.is_file(), "{} is missing: run `make setup`", p.display());
    p
}

/// A port that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Sends SIGTERM and waits up to `timeout`; returns the exit status if it exited.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Proc {
    /// SIGKILL: no clean-up, no last words (a crash or power cut as far as the process knows).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.terminate(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A running hub process with its addresses.
pub struct Hub {
    pub proc: Proc,
    pub mqtt_port: u16,
    pub http: String,
    pub data_dir: tempfile::TempDir,
}

impl Hub {
    /// Starts `cloud-hub serve` on free ports and waits for its ready line.
    pub fn start() -> Hub {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let (mqtt_port, http_port) = (free_port(), free_port());
        let proc = spawn_hub(mqtt_port, http_port, data_dir.path());
        Hub {
            proc,
            mqtt_port,
            http: format!("http://127.0.0.1:{http_port}"),
            data_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.http, path)
    }

    /// A hub with every safeguard on, as in production: MQTT over TLS only (a CA and certificate
    /// from `cloud-hub tls-cert`), device credentials and signatures required (`cloud-hub
    /// device add` for each of `devices`, given as `SITE/DEVICE`), HTTP bearer tokens required
    /// (a viewer token from `cloud-hub token add`).
    pub fn start_secured(devices: &[&str]) -> Secured {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let data = data_dir.path().to_str().expect("utf-8 temp path");
        let out = hub_cli(&[
            "tls-cert",
            "--out-dir",
            certs.to_str().unwrap(),
            "--host",
            "127.0.0.1",
        ]);
        assert!(out.contains("[mqtt_tls]"), "{out}");
        for d in devices {
            let secret = dir.path().join(format!("{}.secret", d.replace('/', "-")));
            let args = ["device", "add", d, "--data-dir", data, "--secret-out"];
            let out = hub_cli(&[&args[..], &[secret.to_str().unwrap()]].concat());
            assert!(out.contains(&format!("username = \"{d}\"")), "{out}");
        }
        let token_file = dir.path().join("viewer.token");
        hub_cli(&[
            "token",
            "add",
            "e2e-viewer",
            "--role",
            "viewer",
            "--data-dir",
            data,
            "--token-out",
            token_file.to_str().unwrap(),
        ]);
        let token = std::fs::read_to_string(&token_file)
            .expect("token file written")
            .trim()
            .to_string();
        let config = dir.path().join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "[auth]\ndevices = \"required\"\nhttp = \"required\"\n\
                 [mqtt_tls]\ncert_file = {:?}\nkey_file = {:?}\n",
                certs.join("hub-cert.pem").display().to_string(),
                certs.join("hub-key.pem").display().to_string(),
            ),
        )
        .expect("write hub config");
        let (mqtt_port, http_port) = (free_port(), free_port());
        let proc = spawn_hub_with(mqtt_port, http_port, data_dir.path(), Some(&config));
        Secured {
            hub: Hub {
                proc,
                mqtt_port,
                http: format!("http://127.0.0.1:{http_port}"),
                data_dir,
            },
            ca_file: certs.join("ca-cert.pem"),
            token,
            dir,
        }
    }
}

impl Hub {
    /// A hub on ports the OS picks, with `config` (TOML) as its config file and credentials
    /// issued to `devices` (`SITE/DEVICE`) before it starts.
    pub fn start_configured(config: &str, devices: &[&str]) -> Configured {
        Self::start_configured_logging(config, devices, false)
    }

    /// [`Hub::start_configured`]; with `keep_log` the hub's log goes to [`Configured::log`]
    /// instead of the test's stderr.
    pub fn start_configured_logging(config: &str, devices: &[&str], keep_log: bool) -> Configured {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = data_dir.path().to_str().expect("utf-8 temp path");
        let mut secrets = HashMap::new();
        for d in devices {
            let file = dir.path().join(format!("{}.secret", d.replace('/', "-")));
            let args = ["device", "add", d, "--data-dir", data, "--secret-out"];
            hub_cli(&[&args[..], &[file.to_str().unwrap()]].concat());
            let secret = std::fs::read_to_string(&file).expect("secret file written");
            secrets.insert(d.to_string(), secret.trim().to_string());
        }
        let config_file = dir.path().join("hub.toml");
        std::fs::write(&config_file, config).expect("write hub config");
        let log = keep_log.then(|| dir.path().join("hub.log"));
        let (proc, ready) = spawn_hub_ready_logging(
            "127.0.0.1:0",
            "127.0.0.1:0",
            data_dir.path(),
            Some(&config_file),
            log.as_deref(),
        );
        Configured {
            log,
            mqtt: ready.mqtt,
            hub: Hub {
                proc,
                mqtt_port: ready.mqtt.port(),
                http: ready.http,
                data_dir,
            },
            secrets,
            _dir: dir,
        }
    }
}

/// A hub from [`Hub::start_configured`].
pub struct Configured {
    pub hub: Hub,
    pub mqtt: SocketAddr,
    /// `SITE/DEVICE` → its secret (MQTT password and signing key).
    pub secrets: HashMap<String, String>,
    /// The hub's log file, when it was started to keep one.
    pub log: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Configured {
    /// What the hub has logged so far (empty without a log file).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }
}

/// A hub from [`Hub::start_secured`] and what its clients need.
pub struct Secured {
    pub hub: Hub,
    /// The CA agents trust (`mqtt.ca_file`).
    pub ca_file: PathBuf,
    /// A viewer token for the HTTP API.
    pub token: String,
    /// Holds the certificates, device secrets and the hub config.
    pub dir: tempfile::TempDir,
}

impl Secured {
    /// The secret file issued for `SITE/DEVICE`.
    pub fn secret_file(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.secret", id.replace('/', "-")))
    }

    /// The `[mqtt]` lines (after `broker`) an agent needs to log in as `SITE/DEVICE` over TLS.
    pub fn mqtt_login(&self, id: &str) -> String {
        format!(
            "username = \"{id}\"\nsecret_file = {:?}\nca_file = {:?}\n",
            self.secret_file(id).display().to_string(),
            self.ca_file.display().to_string()
        )
    }

    /// GET `url` with the viewer token; `None` unless 2xx JSON.
    pub async fn get_json(&self, url: &str) -> Option<serde_json::Value> {
        get_json_with(url, Some(&self.token)).await
    }
}

/// Starts `edge-agent synth`: `count` synthetic events at `rate`/s through the agent's real
/// outbox and uplink, each id logged to `id_log` once durable (see `edge-agent synth --help`).
pub fn spawn_synth(config: &Path, id_log: &Path, count: usize, rate: u32) -> Proc {
    let child = Command::new(bin("edge-agent"))
        .args([
            "synth",
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .arg("--config")
        .arg(config)
        .arg("--id-log")
        .arg(id_log)
        .env("CSB_HEALTH_INTERVAL_MS", "1000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn edge-agent synth");
    Proc {
        child,
        name: "edge-agent synth".into(),
    }
}

/// Runs `cloud-hub ARGS` to completion and returns its stdout; panics with its stderr on failure.
pub fn hub_cli(args: &[&str]) -> String {
    let out = Command::new(bin("cloud-hub"))
        .args(args)
        .output()
        .expect("run cloud-hub");
    assert!(
        out.status.success(),
        "cloud-hub {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `cloud-hub serve` on the given ports and data directory (a restart after a crash uses
/// the same ones) and waits up to 30 s for its ready line.
pub fn spawn_hub(mqtt_port: u16, http_port: u16, data_dir: &std::path::Path) -> Proc {
    spawn_hub_with(mqtt_port, http_port, data_dir, None)
}

/// Like [`spawn_hub`], with a config file (`--config`) for what the flags do not set.
pub fn spawn_hub_with(
    mqtt_port: u16,
    http_port: u16,
    data_dir: &std::path::Path,
    config: Option<&std::path::Path>,
) -> Proc {
    spawn_hub_ready(
        &format!("127.0.0.1:{mqtt_port}"),
        &format!("127.0.0.1:{http_port}"),
        data_dir,
        config,
    )
    .0
}

/// Where a started hub listens, from its ready line.
#[derive(Debug, Clone)]
pub struct Ready {
    pub mqtt: SocketAddr,
    /// `http://HOST:PORT`.
    pub http: String,
}

/// Starts `cloud-hub serve` on `mqtt_addr` and `http_addr` (port 0: the OS picks) and waits up to
/// 30 s for its ready line, which says where it listens.
pub fn spawn_hub_ready(
    mqtt_addr: &str,
    http_addr: &str,
    data_dir: &std::path::Path,
    config: Option<&std::path::Path>,
) -> (Proc, Ready) {
    spawn_hub_ready_logging(mqtt_addr, http_addr, data_dir, config, None)
}

/// [`spawn_hub_ready`], with the hub's log (stderr) written to `log` when given.
pub fn spawn_hub_ready_logging(
    mqtt_addr: &str,
    http_addr: &str,
    data_dir: &std::path::Path,
    config: Option<&std::path::Path>,
    log: Option<&std::path::Path>,
) -> (Proc, Ready) {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("create the hub's log file")),
        None => Stdio::inherit(),
    };
    let mut cmd = Command::new(bin("cloud-hub"));
    cmd.args([
        "serve",
        "--mqtt-addr",
        mqtt_addr,
        "--http-addr",
        http_addr,
        "--data-dir",
    ])
    .arg(data_dir);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn cloud-hub");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let proc = Proc {
        child,
        name: "cloud-hub".into(),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("cloud-hub ready") => {
                // cloud-hub ready mqtt=HOST:PORT http=http://HOST:PORT
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .unwrap_or_else(|| panic!("no {name} in the ready line: {line}"))
                        .to_string()
                };
                let mqtt = field("mqtt=")
                    .parse()
                    .expect("MQTT address in the ready line");
                return (
                    proc,
                    Ready {
                        mqtt,
                        http: field("http="),
                    },
                );
            }
            Ok(_) => continue,
            Err(_) => panic!("cloud-hub printed no ready line within 30 s"),
        }
    }
}

/// Polls `f` every 250 ms until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn get_json(url: &str) -> Option<serde_json::Value> {
    get_json_with(url, None).await
}

/// GET `url` with an optional bearer token; `None` unless 2xx JSON.
pub async fn get_json_with(url: &str, token: Option<&str>) -> Option<serde_json::Value> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}
