//! `edge-agent doctor`: everything a field technician would check by hand at a gateway, in one
//! command. The shape of `iotedge check`: each check has a stable id (scripts key on it), a status
//! (ok, warning, failed, skipped), a one-line message and, when not ok, a one-line fix.
//!
//! A check whose precondition failed is *skipped*, naming that check, so one fault shows as one
//! failure: an unreachable broker fails `broker-reachable` and skips `broker-login`.

mod local;
mod net;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::AgentConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Failed,
    Skipped,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Failed => "FAILED",
            Status::Skipped => "skipped",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable identifier (see [`IDS`]).
    pub id: &'static str,
    /// What the check is about when it runs once per item (a camera's id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub status: Status,
    pub message: String,
    /// What to do about it; absent when ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    pub ms: u64,
}

/// Every check id, in the order they run. `camera` runs once per configured camera.
pub const IDS: &[(&str, &str)] = &[
    ("config", "the config file is valid"),
    (
        "ort-runtime",
        "ONNX Runtime is found and offers this agent's API version",
    ),
    (
        "model-file",
        "the model named in the config is present and matches its manifest",
    ),
    ("model-selftest", "the model loads and passes its self-test"),
    (
        "gstreamer-plugins",
        "the GStreamer elements for files and H.264 RTSP cameras are installed",
    ),
    (
        "camera",
        "each camera is reachable and decoding (with its frame rate)",
    ),
    ("broker-reachable", "the hub's MQTT port answers"),
    (
        "tls-certificate",
        "the CA file and the hub's certificate are valid and not near expiry",
    ),
    ("broker-login", "the hub accepts this device's login"),
    ("hub-http", "the hub's HTTP API answers (evidence uploads)"),
    ("clock-skew", "this box's clock agrees with the hub's"),
    ("disk-space", "the outbox's disk has room for an outage"),
    (
        "outbox-backlog",
        "the outbox is draining: depth and oldest record",
    ),
];

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// Each network step's limit (connect, TLS, login, HTTP).
    pub timeout: Duration,
    /// How long to watch each camera for its frame rate.
    pub camera_watch: Duration,
}

impl Options {
    pub fn new(config: PathBuf) -> Self {
        Options {
            config,
            timeout: Duration::from_secs(5),
            camera_watch: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub ok: usize,
    pub warning: usize,
    pub failed: usize,
    pub skipped: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: PathBuf,
    /// `site/device`, when the config could be read.
    pub device: Option<String>,
    pub checks: Vec<Check>,
    pub summary: Summary,
    /// No check failed (warnings allowed).
    pub passed: bool,
}

impl Report {
    /// Exit code for scripts: 0 nothing failed (warnings allowed), 1 a check failed.
    pub fn exit_code(&self) -> u8 {
        if self.passed {
            0
        } else {
            1
        }
    }

    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }
}

/// A check result under construction.
pub(crate) struct Verdict {
    pub status: Status,
    pub message: String,
    pub fix: Option<String>,
}

impl Verdict {
    pub fn ok(message: impl Into<String>) -> Self {
        Verdict {
            status: Status::Ok,
            message: message.into(),
            fix: None,
        }
    }
    pub fn warning(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Verdict {
            status: Status::Warning,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn failed(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Verdict {
            status: Status::Failed,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn skipped(message: impl Into<String>) -> Self {
        Verdict {
            status: Status::Skipped,
            message: message.into(),
            fix: None,
        }
    }
    /// Splits a library error that carries its own "Fix: …" line into message and fix.
    pub fn failed_with_fix_inside(err: &str, default_fix: &str) -> Self {
        match err.split_once("\nFix: ") {
            Some((m, f)) => Verdict::failed(m.replace('\n', " "), f.replace('\n', " ")),
            None => Verdict::failed(err.replace('\n', " "), default_fix),
        }
    }
}

/// Collects results, handing each to `on_check` as soon as it is known (the terminal shows
/// progress on slow checks such as cameras).
struct Run<'a> {
    checks: Vec<Check>,
    on_check: &'a mut dyn FnMut(&Check),
}

impl Run<'_> {
    fn record(&mut self, id: &'static str, target: Option<String>, started: Instant, v: Verdict) {
        let c = Check {
            id,
            target,
            status: v.status,
            message: v.message,
            fix: v.fix,
            ms: started.elapsed().as_millis() as u64,
        };
        (self.on_check)(&c);
        self.checks.push(c);
    }

    /// Runs `f` as check `id` and returns its status.
    fn check(&mut self, id: &'static str, f: impl FnOnce() -> Verdict) -> Status {
        let t = Instant::now();
        let v = f();
        let s = v.status;
        self.record(id, None, t, v);
        s
    }

    fn status(&self, id: &str) -> Option<Status> {
        self.checks.iter().find(|c| c.id == id).map(|c| c.status)
    }
}

/// Runs every check.
pub fn run(opts: &Options, on_check: &mut dyn FnMut(&Check)) -> Report {
    let mut r = Run {
        checks: Vec::new(),
        on_check,
    };
    let mut device = None;
    let loaded = {
        let t = Instant::now();
        match AgentConfig::load(&opts.config) {
            Ok(cfg) => {
                device = Some(format!("{}/{}", cfg.agent.site, cfg.agent.device));
                let cams = cfg.cameras.iter().filter(|c| c.enabled).count();
                let sensors = cfg.sensors.iter().filter(|s| s.enabled).count();
                r.record(
                    "config",
                    None,
                    t,
                    Verdict::ok(format!(
                        "{} is valid: {} as {}, {cams} camera(s), {sensors} sensor(s), broker {}",
                        opts.config.display(),
                        device.as_deref().unwrap_or_default(),
                        cfg.mqtt.username.as_deref().unwrap_or("(no login)"),
                        cfg.mqtt.broker
                    )),
                );
                Some(cfg)
            }
            Err(e) => {
                r.record(
                    "config",
                    None,
                    t,
                    Verdict::failed(
                        e.to_string().replace('\n', " "),
                        format!(
                            "correct the file or field named above; `edge-agent check --config {}` shows what a valid file resolves to",
                            opts.config.display()
                        ),
                    ),
                );
                None
            }
        }
    };
    match loaded {
        Some(cfg) => run_all(&mut r, &cfg, opts),
        None => {
            for (id, _) in &IDS[1..] {
                if *id != "camera" {
                    let t = Instant::now();
                    r.record(
                        id,
                        None,
                        t,
                        Verdict::skipped("needs a valid config (see `config`)"),
                    );
                }
            }
        }
    }
    let count = |s: Status| r.checks.iter().filter(|c| c.status == s).count();
    let summary = Summary {
        ok: count(Status::Ok),
        warning: count(Status::Warning),
        failed: count(Status::Failed),
        skipped: count(Status::Skipped),
    };
    Report {
        config: opts.config.clone(),
        device,
        passed: summary.failed == 0,
        summary,
        checks: r.checks,
    }
}

fn run_all(r: &mut Run<'_>, cfg: &AgentConfig, opts: &Options) {
    let cameras = cfg.cameras.iter().filter(|c| c.enabled).count();
    // Model checks: only a gateway with cameras needs a model.
    if cameras == 0 {
        for id in ["ort-runtime", "model-file", "model-selftest"] {
            r.check(id, || {
                Verdict::skipped("no camera enabled: no model needed")
            });
        }
    } else {
        r.check("ort-runtime", || local::ort_runtime(cfg));
        r.check("model-file", || local::model_file(cfg));
        let ready = r.status("ort-runtime") != Some(Status::Failed)
            && r.status("model-file") != Some(Status::Failed);
        r.check("model-selftest", || {
            if ready {
                local::model_selftest(cfg)
            } else {
                Verdict::skipped("needs ONNX Runtime and the model file (see above)")
            }
        });
    }
    let mut missing = Vec::new();
    r.check("gstreamer-plugins", || {
        let (v, m) = local::gstreamer_plugins(cameras > 0);
        missing = m;
        v
    });
    for cam in &cfg.cameras {
        let t = Instant::now();
        let v = if !cam.enabled {
            Verdict::skipped("disabled in the config")
        } else {
            local::camera(cfg, cam, &missing, opts.camera_watch)
        };
        r.record("camera", Some(cam.id.clone()), t, v);
    }
    net::run(r, cfg, opts);
    r.check("disk-space", || local::disk_space(cfg));
    r.check("outbox-backlog", || local::outbox_backlog(cfg));
}

/// The report for a terminal, one line per check plus its fix.
pub fn render_line(c: &Check) -> String {
    let name = match &c.target {
        Some(t) => format!("{} {t}", c.id),
        None => c.id.to_string(),
    };
    let mut s = format!("  {:<8} {:<22} {}", c.status.label(), name, c.message);
    if let Some(f) = &c.fix {
        s.push_str(&format!("\n  {:<8} {:<22} fix: {f}", "", ""));
    }
    s
}

pub fn render_summary(r: &Report) -> String {
    let s = &r.summary;
    format!(
        "{} checks: {} ok, {} warning, {} failed, {} skipped — {}",
        r.checks.len(),
        s.ok,
        s.warning,
        s.failed,
        s.skipped,
        if r.passed {
            "nothing failed"
        } else {
            "see the fixes above"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_config_fails_config_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(
            &p,
            "[agent]\nsite = \"yuexi\"\ndevice = \"gw\"\n[mqtt]\nbroker = \"no-port\"\n",
        )
        .unwrap();
        let mut seen = 0;
        let r = run(&Options::new(p), &mut |_| seen += 1);
        assert_eq!(seen, r.checks.len());
        let c = r.check("config").unwrap();
        assert_eq!(c.status, Status::Failed, "{c:?}");
        assert!(c.message.contains("broker"), "names the field: {c:?}");
        assert!(c.fix.is_some());
        assert_eq!(r.summary.failed, 1);
        assert_eq!(
            r.checks.len(),
            IDS.len() - 1,
            "every check but the per-camera one"
        );
        assert!(r.checks[1..].iter().all(|c| c.status == Status::Skipped));
        assert_eq!(r.exit_code(), 1);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["checks"][0]["status"], "failed");
        assert_eq!(j["checks"][0]["id"], "config");
    }

    #[test]
    fn fixes_inside_library_errors_are_split_out() {
        let v = Verdict::failed_with_fix_inside(
            "model file `x` not found. Looked in:\n  - /a\nFix: run `make setup`",
            "other",
        );
        assert_eq!(v.fix.as_deref(), Some("run `make setup`"));
        assert!(v.message.contains("/a"));
        let v = Verdict::failed_with_fix_inside("plain", "other");
        assert_eq!(v.fix.as_deref(), Some("other"));
    }
}
