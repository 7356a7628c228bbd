//! `edge-agent status`: the running agent's state from its local status file.

use std::io::Write;

use serde::Serialize;

use super::{human_ms, mib};
use crate::config::AgentConfig;
use crate::localstatus::{self, LocalStatus};

/// Exit codes: 0 running and healthy, 1 running but degraded (uplink down or a camera not
/// running), 3 not running.
pub const RUNNING: u8 = 0;
pub const DEGRADED: u8 = 1;
pub const NOT_RUNNING: u8 = 3;

#[derive(Serialize)]
struct View<'a> {
    alive: bool,
    age_ms: i64,
    problems: &'a [String],
    #[serde(flatten)]
    status: &'a LocalStatus,
}

/// What is wrong with a live agent, one line each.
fn problems(s: &LocalStatus) -> Vec<String> {
    let mut p = Vec::new();
    if !s.connected {
        p.push(format!("not connected to the hub ({})", s.broker));
    }
    for c in &s.cameras {
        if c.state != csb_wire::CameraState::Running {
            p.push(format!(
                "camera {} is {:?}{}",
                c.id,
                c.state,
                c.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    for x in &s.sensors {
        if x.state == csb_wire::SensorState::Silent {
            p.push(format!("sensor {} is silent", x.id));
        }
    }
    p
}

pub fn run(cfg: &AgentConfig, json: bool, out: &mut impl Write) -> std::io::Result<u8> {
    let dir = cfg.outbox_dir();
    let s = match localstatus::read(&dir) {
        Ok(s) => s,
        Err(e) => {
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "alive": false, "error": e.to_string() })
                )?;
            } else {
                writeln!(
                    out,
                    "{}/{}: not running — {e}",
                    cfg.agent.site, cfg.agent.device
                )?;
            }
            return Ok(NOT_RUNNING);
        }
    };
    let now = csb_wire::now_ms();
    let alive = s.alive(now);
    let age = now - s.updated_ms;
    let probs = if alive { problems(&s) } else { Vec::new() };
    let code = match (alive, probs.is_empty()) {
        (false, _) => NOT_RUNNING,
        (true, true) => RUNNING,
        (true, false) => DEGRADED,
    };
    if json {
        let v = View {
            alive,
            age_ms: age,
            problems: &probs,
            status: &s,
        };
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).map_err(std::io::Error::other)?
        )?;
        return Ok(code);
    }
    let who = format!("{}/{}", s.site, s.device);
    if !alive {
        let why = if !s.running {
            "stopped cleanly"
        } else {
            "stopped without a clean exit (or hung)"
        };
        writeln!(
            out,
            "{who}: NOT RUNNING — {why}; last seen {} ago (pid {})",
            human_ms(age.max(0) as u64),
            s.pid
        )?;
        writeln!(out, "  start it (systemctl start csb-edge, or `edge-agent run --config …`); `edge-agent doctor` checks why it fails")?;
    } else {
        writeln!(
            out,
            "{who}: running (pid {}, agent {}, up {}, as of {} ago)",
            s.pid,
            s.agent_version,
            human_ms((s.updated_ms - s.started_ms).max(0) as u64),
            human_ms(age.max(0) as u64)
        )?;
    }
    writeln!(
        out,
        "  uplink   {} {} ({} connection(s) since the start), {} acks from the hub",
        if s.connected {
            "connected to"
        } else {
            "NOT connected to"
        },
        s.broker,
        s.connects,
        s.hub_acks
    )?;
    let model = s.model.as_ref().map_or_else(
        || "(none reported)".to_string(),
        |m| match &m.version {
            Some(v) => format!(
                "{}@{v} (from the hub's warehouse), sha256 {}…",
                m.name, m.sha256
            ),
            None => format!("{} (the agent's own), sha256 {}…", m.name, m.sha256),
        },
    );
    let config = s.config_version.map_or_else(
        || "local config only".to_string(),
        |v| format!("hub configuration {v}"),
    );
    writeln!(out, "  model    {model}; {config}")?;
    if let Some(o) = &s.outbox {
        writeln!(
            out,
            "  outbox   {} waiting ({} events), {}, oldest {}; dropped {} ({} events), resent {}, write errors {}",
            o.pending,
            o.pending_events,
            mib(o.bytes),
            human_ms(o.oldest_age_ms),
            o.dropped_total,
            o.dropped_events,
            o.resent_total,
            o.write_errors
        )?;
    }
    for c in &s.cameras {
        let h = c.health.clone().unwrap_or_default();
        writeln!(
            out,
            "  camera   {:<16} {:<12} {:.1} fps in, {:.1} detected, last frame {} ago, {} skipped (still), {} dropped (busy), {} outage(s){}",
            c.id,
            format!("{:?}", c.state).to_lowercase(),
            h.fps_in,
            h.fps_detected,
            human_ms(h.last_frame_age_ms),
            h.skipped_total,
            h.dropped_total,
            h.outages_total,
            c.error.as_deref().map(|e| format!(" — {e}")).unwrap_or_default()
        )?;
    }
    for x in &s.sensors {
        writeln!(
            out,
            "  sensor   {:<16} {:<12} {} readings, {} errors, last {}{}",
            x.id,
            format!("{:?}", x.state).to_lowercase(),
            x.readings_total,
            x.errors_total,
            x.last_reading_age_ms
                .map(|a| format!("{} ago", human_ms(a)))
                .unwrap_or_else(|| "none yet".into()),
            x.last_error
                .as_deref()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        )?;
    }
    for p in &probs {
        writeln!(out, "  problem  {p}")?;
    }
    Ok(code)
}
