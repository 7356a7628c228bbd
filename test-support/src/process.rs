//! Real processes: the built `cloud-hub` and `edge-agent` binaries and fixtures, a hub process
//! configured and started by [`HubBuilder`] (waiting for its ready line), agents, and ports.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::http::get_json_with;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support/ has a parent")
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

/// The sample county's model (`configs/county/`): towns, roads, zones, devices.
pub fn county_dir() -> PathBuf {
    root().join("configs/county")
}

/// A port that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Runs `cmd` to completion and returns its stdout; panics with its stderr unless it succeeded.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cloud-hub ARGS` to completion and returns its stdout; panics with its stderr on failure.
pub fn hub_cli(args: &[&str]) -> String {
    run_ok(Command::new(bin("cloud-hub")).args(args))
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    fn spawn(cmd: &mut Command, name: &str) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child,
            name: name.into(),
        }
    }

    /// Sends SIGTERM and waits up to `timeout`; returns the exit status if it exited.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

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

/// Starts `edge-agent run --config CONFIG`, with status and telemetry every `health_ms`
/// (`CSB_HEALTH_INTERVAL_MS`; the agent's default is 10 s).
pub fn spawn_agent(config: &Path, health_ms: u32) -> Proc {
    Proc::spawn(
        Command::new(bin("edge-agent"))
            .args(["run", "--config"])
            .arg(config)
            .env("CSB_HEALTH_INTERVAL_MS", health_ms.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
        "edge-agent",
    )
}

/// Starts `edge-agent synth`: `count` synthetic events at `rate`/s through the agent's real
/// outbox and uplink, each id logged to `id_log` once durable (see `edge-agent synth --help`).
pub fn spawn_synth(config: &Path, id_log: &Path, count: usize, rate: u32) -> Proc {
    Proc::spawn(
        Command::new(bin("edge-agent"))
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
            .stderr(Stdio::inherit()),
        "edge-agent synth",
    )
}

/// How to start a `cloud-hub serve` process; from [`Hub::builder`].
#[derive(Debug, Clone, Default)]
pub struct HubBuilder {
    ports: Option<(u16, u16)>,
    data_dir: Option<PathBuf>,
    config: String,
    devices: Vec<String>,
    /// `(name, role, department)` of API tokens issued before the start.
    tokens: Vec<(String, String, Option<String>)>,
    secured: bool,
    keep_log: bool,
}

impl HubBuilder {
    /// MQTT and HTTP on these ports (a restart after a crash uses the same ones); else the OS
    /// picks them and the ready line says which.
    pub fn ports(mut self, mqtt: u16, http: u16) -> Self {
        self.ports = Some((mqtt, http));
        self
    }

    /// This data directory (a restart keeps it) instead of a fresh temporary one.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Config file lines (TOML), for what the flags do not set.
    pub fn config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        self
    }

    /// Credentials issued (`cloud-hub device add`) before the hub starts to each of `devices`,
    /// given as `SITE/DEVICE`: see [`Hub::secrets`] and [`Hub::secret_file`].
    pub fn devices(mut self, devices: &[&str]) -> Self {
        self.devices.extend(devices.iter().map(|d| d.to_string()));
        self
    }

    /// An API token issued (`cloud-hub token add`) before the hub starts: `role` as the CLI
    /// takes it, `department` for a handler. See [`Hub::token_of`].
    pub fn token(mut self, name: &str, role: &str, department: Option<&str>) -> Self {
        self.tokens
            .push((name.into(), role.into(), department.map(str::to_string)));
        self
    }

    /// Every safeguard on, as in production: MQTT over TLS only (a CA and certificate from
    /// `cloud-hub tls-cert`, see [`Hub::ca_file`]), device credentials and signatures required,
    /// HTTP bearer tokens required (a viewer token from `cloud-hub token add`, [`Hub::token`]).
    /// Adds `[auth]` and `[mqtt_tls]` to the config.
    pub fn secured(mut self) -> Self {
        self.secured = true;
        self
    }

    /// The hub's log (stderr) goes to a file ([`Hub::log_text`]) instead of the test's stderr.
    pub fn keep_log(mut self) -> Self {
        self.keep_log = true;
        self
    }

    /// Starts the hub and waits up to 30 s for its ready line.
    pub fn start(self) -> Hub {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data_dir, data_tmp) = match self.data_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                (t.path().to_path_buf(), Some(t))
            }
        };
        let data = data_dir.to_str().expect("utf-8 data path");
        let mut secrets = HashMap::new();
        for d in &self.devices {
            let file = secret_file(dir.path(), d);
            let args = ["device", "add", d, "--data-dir", data, "--secret-out"];
            let out = hub_cli(&[&args[..], &[file.to_str().unwrap()]].concat());
            assert!(out.contains(&format!("username = \"{d}\"")), "{out}");
            let secret = std::fs::read_to_string(&file).expect("secret file written");
            secrets.insert(d.clone(), secret.trim().to_string());
        }
        let mut tokens = HashMap::new();
        for (name, role, dep) in &self.tokens {
            let file = dir.path().join(format!("{name}.token"));
            let mut args = vec!["token", "add", name, "--role", role, "--data-dir", data];
            if let Some(d) = dep {
                args.extend(["--department", d]);
            }
            args.extend(["--token-out", file.to_str().unwrap()]);
            hub_cli(&args);
            let t = std::fs::read_to_string(&file).expect("token file written");
            tokens.insert(name.clone(), t.trim().to_string());
        }
        let mut config = self.config;
        let (mut ca_file, mut token) = (None, None);
        if self.secured {
            let certs = dir.path().join("certs");
            let out = hub_cli(&[
                "tls-cert",
                "--out-dir",
                certs.to_str().unwrap(),
                "--host",
                "127.0.0.1",
            ]);
            assert!(out.contains("[mqtt_tls]"), "{out}");
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
            let t = std::fs::read_to_string(&token_file).expect("token file written");
            token = Some(t.trim().to_string());
            config.push_str(&format!(
                "[auth]\ndevices = \"required\"\nhttp = \"required\"\n\
                 [mqtt_tls]\ncert_file = {:?}\nkey_file = {:?}\n",
                certs.join("hub-cert.pem").display().to_string(),
                certs.join("hub-key.pem").display().to_string(),
            ));
            ca_file = Some(certs.join("ca-cert.pem"));
        }
        let config_file = (!config.is_empty()).then(|| {
            let p = dir.path().join("hub.toml");
            std::fs::write(&p, &config).expect("write hub config");
            p
        });
        let log = self.keep_log.then(|| dir.path().join("hub.log"));
        let (mqtt_addr, http_addr) = match self.ports {
            Some((m, h)) => (format!("127.0.0.1:{m}"), format!("127.0.0.1:{h}")),
            None => ("127.0.0.1:0".to_string(), "127.0.0.1:0".to_string()),
        };
        let (proc, ready) = spawn_hub(
            &mqtt_addr,
            &http_addr,
            &data_dir,
            config_file.as_deref(),
            log.as_deref(),
        );
        Hub {
            proc,
            mqtt: ready.mqtt,
            mqtt_port: ready.mqtt.port(),
            http: ready.http,
            data_dir,
            secrets,
            ca_file,
            token,
            tokens,
            log,
            dir,
            _data: data_tmp,
        }
    }
}

fn secret_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{}.secret", id.replace('/', "-")))
}

/// A running `cloud-hub serve` process with its addresses and what was issued for it. Stopped
/// when dropped.
pub struct Hub {
    pub proc: Proc,
    pub mqtt: SocketAddr,
    pub mqtt_port: u16,
    /// `http://HOST:PORT`.
    pub http: String,
    pub data_dir: PathBuf,
    /// `SITE/DEVICE` → its secret (MQTT password and signing key), for [`HubBuilder::devices`].
    pub secrets: HashMap<String, String>,
    ca_file: Option<PathBuf>,
    token: Option<String>,
    /// Tokens of [`HubBuilder::token`], by name.
    tokens: HashMap<String, String>,
    log: Option<PathBuf>,
    /// Holds the config, certificates, secrets and log.
    dir: tempfile::TempDir,
    _data: Option<tempfile::TempDir>,
}

impl Hub {
    pub fn builder() -> HubBuilder {
        HubBuilder::default()
    }

    /// A hub with the defaults, on ports the OS picks, with a fresh data directory.
    pub fn start() -> Hub {
        Hub::builder().start()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.http, path)
    }

    /// SIGKILL: a crash as far as the hub knows ([`HubBuilder::ports`] and
    /// [`HubBuilder::data_dir`] start it again where it was).
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// The secret file issued for `SITE/DEVICE` (the agent's `mqtt.secret_file`).
    pub fn secret_file(&self, id: &str) -> PathBuf {
        assert!(self.secrets.contains_key(id), "no credentials for {id}");
        secret_file(self.dir.path(), id)
    }

    /// The CA agents trust (`mqtt.ca_file`) of a [`HubBuilder::secured`] hub.
    pub fn ca_file(&self) -> &Path {
        self.ca_file.as_deref().expect("a secured hub")
    }

    /// A viewer token for the HTTP API of a [`HubBuilder::secured`] hub.
    pub fn token(&self) -> &str {
        self.token.as_deref().expect("a secured hub")
    }

    /// The API token issued as `name` ([`HubBuilder::token`]).
    pub fn token_of(&self, name: &str) -> &str {
        self.tokens
            .get(name)
            .unwrap_or_else(|| panic!("no token {name} issued"))
    }

    /// POSTs `body` as JSON to `path` with the token issued as `name`: the status and the JSON
    /// answer (`Null` when there is none).
    pub async fn post_as(
        &self,
        name: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.send_as(reqwest::Method::POST, name, path, body).await
    }

    /// PUT `body` as JSON to `path` with the token issued as `name`: status and JSON answer.
    pub async fn put_as(
        &self,
        name: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.send_as(reqwest::Method::PUT, name, path, body).await
    }

    async fn send_as(
        &self,
        method: reqwest::Method,
        name: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = crate::http::client()
            .request(method.clone(), self.url(path))
            .bearer_auth(self.token_of(name))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// GET `path` as JSON with the token issued as `name`; `None` unless 2xx JSON.
    pub async fn get_as(&self, name: &str, path: &str) -> Option<serde_json::Value> {
        get_json_with(&self.url(path), Some(self.token_of(name))).await
    }

    /// GET `url` (with the viewer token of a secured hub); `None` unless 2xx JSON.
    pub async fn get_json(&self, url: &str) -> Option<serde_json::Value> {
        get_json_with(url, self.token.as_deref()).await
    }

    /// What the hub has logged so far (empty unless started with [`HubBuilder::keep_log`]).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }
}

/// A copy of the shipped governance configuration (`configs/governance`) in `dir/governance`,
/// for a test to change; returns its path (the hub's `governance_dir`).
pub fn governance_copy(dir: &Path) -> PathBuf {
    let gov = dir.join("governance");
    std::fs::create_dir_all(&gov).expect("create the governance copy");
    for e in std::fs::read_dir(root().join("configs/governance")).expect("configs/governance") {
        let p = e.expect("a governance file").path();
        std::fs::copy(&p, gov.join(p.file_name().expect("a file name"))).expect("copy");
    }
    gov
}

/// Replaces the first `from` by `to` in `file` of a governance copy — after the line
/// `id = "{category}"` when `category` is given (that category's row) — and panics when `from`
/// is not there, so a changed default cannot make a test pass silently.
pub fn patch_governance(gov: &Path, file: &str, category: Option<&str>, from: &str, to: &str) {
    let path = gov.join(file);
    let text = std::fs::read_to_string(&path).expect("read a governance file");
    let (head, rest) = match category {
        Some(c) => {
            let marker = format!("id = \"{c}\"");
            let (h, r) = text
                .split_once(&marker)
                .unwrap_or_else(|| panic!("no category {c} in {file}"));
            (format!("{h}{marker}"), r.to_string())
        }
        None => (String::new(), text.clone()),
    };
    assert!(rest.contains(from), "`{from}` not in {file}");
    std::fs::write(&path, format!("{head}{}", rest.replacen(from, to, 1))).expect("write");
}

/// Where a started hub listens, from its ready line.
struct Ready {
    mqtt: SocketAddr,
    /// `http://HOST:PORT`.
    http: String,
}

/// Starts `cloud-hub serve` on `mqtt_addr` and `http_addr` (port 0: the OS picks) and waits up to
/// 30 s for its ready line, which says where it listens. The hub's log (stderr) goes to `log`
/// when given.
fn spawn_hub(
    mqtt_addr: &str,
    http_addr: &str,
    data_dir: &Path,
    config: Option<&Path>,
    log: Option<&Path>,
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
    let mut proc = Proc::spawn(cmd.stdout(Stdio::piped()).stderr(stderr), "cloud-hub");
    let stdout = proc.child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
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
