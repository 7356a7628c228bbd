//! `edge-agent bench-outbox`: enqueue/ack cycles per second of the durable outbox, and how big
//! its files get relative to what they hold (sled grows; docs/outbox.md "Space").
//!
//! A standing backlog of `window` records is kept (a gateway whose hub acks with some delay):
//! each cycle enqueues one record (durable: flushed, in groups as the agent's producers do) and
//! acks the oldest one.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use ulid::Ulid;

use crate::outbox::{Class, Outbox, OutboxConfig, OutboxError};

#[derive(Debug, Clone, Serialize)]
pub struct OutboxBench {
    pub cycles: u64,
    pub window: usize,
    pub payload_bytes: usize,
    pub seconds: f64,
    pub cycles_per_s: f64,
    /// Payload bytes the outbox holds at the end (the window).
    pub live_bytes: u64,
    /// Bytes of the outbox directory on disk at the end.
    pub disk_bytes: u64,
    pub disk_per_live: f64,
    /// Largest disk size seen during the run.
    pub disk_peak_bytes: u64,
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                // Allocated blocks, not apparent size: sparse files do not count.
                Ok(m) => n += std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                Err(_) => {}
            }
        }
    }
    n
}

/// Runs `cycles` enqueue+ack cycles in `dir` (which should be empty), `group` records per
/// flush, with `window` records always pending.
pub async fn run(
    dir: &Path,
    cycles: u64,
    window: usize,
    group: usize,
    payload_bytes: usize,
) -> Result<OutboxBench, OutboxError> {
    let cfg = OutboxConfig {
        max_bytes: 64 << 30,
        ..OutboxConfig::default()
    };
    let ob = Outbox::open(dir, &cfg)?;
    // Real event bodies (fresh ids, times and boxes), padded with more objects up to about
    // `payload_bytes`: compression must not get an easier job than in the field.
    let payload = |i: u64| -> Vec<u8> {
        let mut e = crate::synth::event("yuexi", "gw-bench", i);
        while serde_json::to_vec(&e).map_or(0, |v| v.len()) < payload_bytes {
            let mut o = e.objects[0].clone();
            let f = (e.objects.len() as u64 * 7919 + i * 104_729) % 1000;
            o.bbox.x1 = f as f32 * 1.37;
            o.bbox.y1 = f as f32 * 0.73;
            o.bbox.x2 = o.bbox.x1 + 40.0 + (f % 97) as f32;
            o.bbox.y2 = o.bbox.y1 + 80.0 + (f % 53) as f32;
            o.score = 0.3 + (f % 700) as f32 / 1000.0;
            o.track_id = Some(f);
            e.objects.push(o);
        }
        serde_json::to_vec(&e).unwrap_or_default()
    };
    // Built before the clock starts: the benchmark times the outbox, not JSON encoding.
    let pool: Vec<Vec<u8>> = (0..4096).map(payload).collect();
    let mut pending: std::collections::VecDeque<(Class, u64)> = Default::default();
    let payload_bytes = pool.iter().map(Vec::len).sum::<usize>() / pool.len();
    let started = Instant::now();
    let mut done = 0u64;
    let mut peak = 0u64;
    let mut next_sample = 0u64;
    while done < cycles {
        let n = (group as u64).min(cycles - done) as usize;
        let items = (0..n as u64)
            .map(|i| {
                (
                    Class::Event,
                    Ulid::new(),
                    pool[((done + i) % pool.len() as u64) as usize].clone(),
                )
            })
            .collect();
        for r in ob.enqueue_many(items).await {
            pending.push_back((Class::Event, r?));
        }
        let over = pending.len().saturating_sub(window);
        let acked: Vec<(Class, u64)> = pending.drain(..over).collect();
        ob.ack(&acked)?;
        done += n as u64;
        if done >= next_sample {
            peak = peak.max(dir_bytes(dir));
            next_sample = done + cycles / 50;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ob2 = ob.clone();
    let _ = tokio::task::spawn_blocking(move || ob2.close()).await;
    let live = ob.snapshot().bytes;
    let disk = dir_bytes(dir);
    Ok(OutboxBench {
        cycles: done,
        window,
        payload_bytes,
        seconds,
        cycles_per_s: done as f64 / seconds.max(1e-9),
        live_bytes: live,
        disk_bytes: disk,
        disk_per_live: disk as f64 / live.max(1) as f64,
        disk_peak_bytes: peak.max(disk),
    })
}
