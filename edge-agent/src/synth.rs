//! A synthetic event source for delivery tests: valid detection events at a fixed rate, through
//! the real outbox and uplink, with every generated id appended to a log once it is durable in
//! the outbox. After a crash it continues from the log, so a test can compare the ids the edge
//! generated with what the hub stored.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use csb_wire::{BBox, Detection, Event, EventKind, FrameInfo, ModelRef, SCHEMA_VERSION};
use ulid::Ulid;

use crate::uplink::{Uplink, UplinkError};

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("id log {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Uplink(#[from] UplinkError),
}

/// Ids already generated (lines of the log).
pub fn logged_ids(path: &Path) -> Result<usize, SynthError> {
    match std::fs::File::open(path) {
        Ok(f) => Ok(std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.len() == 26)
            .count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(SynthError::Log {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// One synthetic detection event (a car), fresh id and time.
pub fn event(site: &str, device: &str, seq: u64) -> Event {
    Event {
        v: SCHEMA_VERSION,
        id: Ulid::new(),
        site: site.into(),
        device: device.into(),
        camera: "synth-01".into(),
        kind: EventKind::Detection,
        ts_ms: csb_wire::now_ms(),
        frame: Some(FrameInfo {
            seq,
            pts_ms: None,
            width: 1920,
            height: 1080,
        }),
        model: Some(ModelRef {
            name: "synthetic".into(),
            sha256: "000000000000".into(),
        }),
        objects: vec![Detection {
            class_id: 2,
            label: "car".into(),
            score: 0.9,
            bbox: BBox {
                x1: 100.0,
                y1: 200.0,
                x2: 300.0,
                y2: 350.0,
            },
            track_id: Some(seq % 50),
        }],
        rule: None,
    }
}

/// Generates events until the log holds `count` ids (or `stop`), `rate` per second in batches
/// of up to 100 that share one outbox flush. Returns how many this run generated.
pub async fn run(
    uplink: &Uplink,
    site: &str,
    device: &str,
    count: usize,
    rate: u32,
    log_path: &Path,
    stop: Arc<AtomicBool>,
) -> Result<usize, SynthError> {
    let log_err = |source| SynthError::Log {
        path: log_path.display().to_string(),
        source,
    };
    let mut done = logged_ids(log_path)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(log_err)?;
    let batch = (rate as usize / 10).clamp(1, 100);
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(batch as f64 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut generated = 0;
    while done < count && !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let n = batch.min(count - done);
        let events: Vec<Event> = (0..n)
            .map(|i| event(site, device, (done + i) as u64))
            .collect();
        // One flush for the batch (the outbox's group commit).
        uplink.publish_events(&events).await?;
        let mut lines = String::new();
        for e in &events {
            lines.push_str(&e.id.to_string());
            lines.push('\n');
        }
        // Logged only once durable in the outbox: every logged id must reach the hub.
        log.write_all(lines.as_bytes()).map_err(log_err)?;
        done += n;
        generated += n;
    }
    Ok(generated)
}

/// Answers the hub's commands as an agent without a camera pipeline does (delivery and fleet
/// tests, the fleet configuration benchmark): configurations are checked against `cams`, kept
/// beside the outbox and reported like a real agent's (no analytics to swap); re-checks are
/// refused. Runs until `stop` is set.
pub async fn serve_commands(
    uplink: &Uplink,
    mut cams: Vec<crate::config::CameraConfig>,
    state_dir: &Path,
    stop: Arc<AtomicBool>,
) -> Result<(), SynthError> {
    use crate::managed::{decide, reply, Decision};
    use csb_wire::{CommandOp, ReplyStatus};
    let Some((mut rx, desk)) = uplink.take_commands() else {
        return Ok(());
    };
    let mut running = match crate::managed::load(state_dir) {
        Ok(p) => p.map(|p| p.version),
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    };
    uplink.set_config_version(running).await?;
    while !stop.load(Ordering::Relaxed) {
        let cmd = match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(_) => continue,
        };
        let push = match &cmd.op {
            CommandOp::Config(p) => p,
            CommandOp::Recheck(_) => {
                let why = "a synthetic agent runs no camera pipeline".to_string();
                desk.reply(reply(&cmd, ReplyStatus::Refused, Some(why), None, None));
                continue;
            }
        };
        match decide(push, running, &cams, None) {
            Decision::Running(v) => desk.reply(reply(&cmd, ReplyStatus::Done, None, Some(v), None)),
            Decision::Refuse(why) => {
                desk.reply(reply(&cmd, ReplyStatus::Refused, Some(why), None, None))
            }
            Decision::Apply(m) => {
                let (dir, p) = (state_dir.to_path_buf(), push.clone());
                let saved = tokio::task::spawn_blocking(move || crate::managed::save(&dir, &p))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = saved {
                    desk.reply(reply(&cmd, ReplyStatus::Failed, Some(e), None, None));
                    continue;
                }
                cams = m;
                running = Some(push.version);
                uplink.set_config_version(running).await?;
                desk.reply(reply(&cmd, ReplyStatus::Done, None, running, None));
            }
        }
    }
    Ok(())
}
