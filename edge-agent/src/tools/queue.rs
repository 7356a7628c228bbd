//! `edge-agent queue`: what waits in the outbox for the hub's ack — depth by class, oldest
//! records, drops — and, confirmed, a purge (records the hub never stored are then gone for
//! good, so it names how many events that is and asks).

use std::io::Write;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde_json::Value;

use super::{human_ms, mib};
use crate::config::AgentConfig;
use crate::localstatus;
use crate::outbox::{Class, Outbox, OutboxError, Record};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "the agent (pid {pid}) is running and holds the outbox at {dir}: stop it first \
         (systemctl stop csb-edge), or see `edge-agent status` for its queue"
    )]
    Running { pid: u32, dir: String },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct Options {
    /// Show this many of the oldest records.
    pub list: usize,
    pub purge: bool,
    /// Purge only this class.
    pub class: Option<Class>,
    /// Do not ask.
    pub yes: bool,
    pub json: bool,
}

#[derive(Serialize)]
struct Item {
    seq: u64,
    class: &'static str,
    id: String,
    age_ms: i64,
    bytes: usize,
    /// Event kind and camera, or the telemetry's source: what the record is about.
    about: String,
}

fn about(r: &Record) -> String {
    if r.class == Class::Evidence {
        return format!("snapshot JPEG {} B", r.payload.len().saturating_sub(16));
    }
    let v: Value = serde_json::from_slice(&r.payload).unwrap_or(Value::Null);
    let pick = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    match r.class {
        Class::Event => {
            let kind = v
                .get("kind")
                .and_then(|k| k.get("type").or(Some(k)))
                .map(|k| match k {
                    Value::String(s) => s.clone(),
                    other => other.to_string().chars().take(40).collect(),
                });
            format!(
                "{} on {}",
                kind.unwrap_or_else(|| "event".into()),
                pick("camera").unwrap_or_else(|| "?".into())
            )
        }
        _ => pick("source")
            .or_else(|| pick("sensor"))
            .map(|s| format!("telemetry from {s}"))
            .unwrap_or_else(|| "telemetry".into()),
    }
}

fn item(r: &Record, now: i64) -> Item {
    Item {
        seq: r.seq,
        class: r.class.as_str(),
        id: r.id.to_string(),
        age_ms: now - r.enqueued_ms,
        bytes: r.payload.len(),
        about: about(r),
    }
}

/// Runs the command; `confirm` asks the person (returns true to go on).
pub fn run(
    cfg: &AgentConfig,
    o: &Options,
    out: &mut impl Write,
    confirm: &mut dyn FnMut(&str) -> bool,
) -> Result<u8, QueueError> {
    let dir = cfg.outbox_dir();
    let status = localstatus::read(&dir).ok();
    let now = csb_wire::now_ms();
    if let Some(s) = status.as_ref().filter(|s| s.alive(now)) {
        if o.purge {
            return Err(QueueError::Running {
                pid: s.pid,
                dir: dir.display().to_string(),
            });
        }
        // Inspecting a running agent's queue: from what it last wrote.
        if o.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({ "dir": dir, "running": true, "pid": s.pid, "outbox": s.outbox })
            )?;
        } else if let Some(ob) = &s.outbox {
            writeln!(
                out,
                "outbox {} (held by the running agent, pid {}; as of {} ago)",
                dir.display(),
                s.pid,
                human_ms((now - s.updated_ms).max(0) as u64)
            )?;
            writeln!(
                out,
                "  {} waiting ({} events), {}, oldest {}",
                ob.pending,
                ob.pending_events,
                mib(ob.bytes),
                human_ms(ob.oldest_age_ms)
            )?;
            writeln!(
                out,
                "  dropped {} ({} events), resent {}, write errors {} since it started",
                ob.dropped_total, ob.dropped_events, ob.resent_total, ob.write_errors
            )?;
            writeln!(out, "  stop the agent to list or purge records")?;
        }
        return Ok(0);
    }
    if !dir.join("conf").exists() && !dir.join("db").exists() {
        if o.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({ "dir": dir, "pending": 0, "records": [] })
            )?;
        } else {
            writeln!(out, "no outbox at {}: nothing queued", dir.display())?;
        }
        return Ok(0);
    }
    let ob = match Outbox::open(&dir, &cfg.outbox) {
        Ok(ob) => ob,
        Err(e) if e.to_string().contains("lock") => {
            return Err(QueueError::Running {
                pid: status.map_or(0, |s| s.pid),
                dir: dir.display().to_string(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let r = inspect_or_purge(&ob, cfg, o, status.as_ref(), out, confirm);
    ob.close();
    r
}

fn inspect_or_purge(
    ob: &Outbox,
    cfg: &AgentConfig,
    o: &Options,
    status: Option<&localstatus::LocalStatus>,
    out: &mut impl Write,
    confirm: &mut dyn FnMut(&str) -> bool,
) -> Result<u8, QueueError> {
    let st = ob.stats();
    let (ev, te, evi) = (
        st.pending_events.load(Ordering::Relaxed),
        st.pending_telemetry.load(Ordering::Relaxed),
        st.pending_evidence.load(Ordering::Relaxed),
    );
    let snap = ob.snapshot();
    let now = csb_wire::now_ms();
    if !o.purge {
        let mut records: Vec<Record> = ob.range(0, u64::MAX, o.list)?;
        records.extend(ob.evidence(o.list));
        records.sort_by_key(|r| r.enqueued_ms);
        records.truncate(o.list);
        let items: Vec<Item> = records.iter().map(|r| item(r, now)).collect();
        if o.json {
            let v = serde_json::json!({
                "dir": ob.dir(), "running": false, "pending": snap.pending, "pending_events": ev,
                "pending_telemetry": te, "pending_evidence": evi, "bytes": snap.bytes,
                "max_bytes": cfg.outbox.max_bytes, "disk_bytes": snap.disk_bytes,
                "oldest_age_ms": snap.oldest_age_ms, "records": items,
                "last_run": status.map(|s| serde_json::json!({ "pid": s.pid, "stopped_ms": s.updated_ms, "outbox": s.outbox })),
            });
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).map_err(std::io::Error::other)?
            )?;
            return Ok(0);
        }
        writeln!(out, "outbox {}", ob.dir().display())?;
        writeln!(
            out,
            "  {} waiting: {ev} events, {te} telemetry, {evi} evidence pictures; {} of {} ({} on disk); oldest {}",
            snap.pending,
            mib(snap.bytes),
            mib(cfg.outbox.max_bytes),
            mib(snap.disk_bytes),
            human_ms(snap.oldest_age_ms)
        )?;
        if let Some(s) = status.and_then(|s| s.outbox.as_ref()) {
            writeln!(
                out,
                "  the agent's last run dropped {} ({} events) and resent {}",
                s.dropped_total, s.dropped_events, s.resent_total
            )?;
        }
        if !items.is_empty() {
            writeln!(out, "  oldest {}:", items.len())?;
            for i in &items {
                writeln!(
                    out,
                    "    #{:<8} {:<9} {} {:>7} B  {} ago  {}",
                    i.seq,
                    i.class,
                    i.id,
                    i.bytes,
                    human_ms(i.age_ms.max(0) as u64),
                    i.about
                )?;
            }
        }
        return Ok(0);
    }
    // Purge.
    let classes: Vec<Class> = match o.class {
        Some(c) => vec![c],
        None => vec![Class::Event, Class::Telemetry, Class::Evidence],
    };
    let count = |c: Class| match c {
        Class::Event => ev,
        Class::Telemetry => te,
        Class::Evidence => evi,
    };
    let total: u64 = classes.iter().map(|c| count(*c)).sum();
    if total == 0 {
        writeln!(out, "nothing to purge")?;
        return Ok(0);
    }
    let events = if classes.contains(&Class::Event) {
        ev
    } else {
        0
    };
    let q = format!(
        "Delete {total} records ({events} events) that the hub has NOT stored from {}? They are lost for good.",
        ob.dir().display()
    );
    if !o.yes && !confirm(&q) {
        writeln!(out, "nothing purged")?;
        return Ok(1);
    }
    let bar = indicatif::ProgressBar::new(total);
    if o.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("purging {bar:40} {pos}/{len} records")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut removed = 0u64;
    for c in &classes {
        loop {
            let seqs = ob.seqs(*c, 1000)?;
            if seqs.is_empty() {
                break;
            }
            let batch: Vec<(Class, u64)> = seqs.into_iter().map(|s| (*c, s)).collect();
            let n = ob.ack(&batch)? as u64;
            removed += n;
            bar.inc(n);
            if n == 0 {
                break;
            }
        }
    }
    bar.finish_and_clear();
    if o.json {
        writeln!(out, "{}", serde_json::json!({ "purged": removed }))?;
    } else {
        writeln!(out, "purged {removed} records from {}", ob.dir().display())?;
    }
    Ok(0)
}
