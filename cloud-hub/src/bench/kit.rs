//! What the benchmarks share: latency summaries of timed query runs, the disk bytes a store
//! folder holds, the process's CPU time, a deterministic random sequence, and a `cloud-hub
//! serve` child process with its RSS and CPU read from /proc.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use std::path::PathBuf;

use thiserror::Error;

use crate::HubError;

/// Why a benchmark could not run (its figures are printed, never asserted).
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("bench option `{0}` must be at least 1")]
    Option(&'static str),
    #[error(transparent)]
    Broker(#[from] crate::ingest::mqtt::broker::BrokerError),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Store(#[from] crate::storage::store::StoreError),
    #[error("bench data directory {path}: {cause}")]
    Dir {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{phase}: {reason}")]
    Phase { phase: &'static str, reason: String },
}

/// Latency of one kind of query over its timed runs.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub name: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// What a run returned on average (events counted, points, buckets or entities): a sanity
    /// check that the query did real work.
    pub mean_result: f64,
}

impl Latency {
    /// One line of a report: name, p50, p99, max and the mean result.
    pub fn line(&self, unit: &str) -> String {
        format!(
            "{:<46} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms  ({:.0} {unit} per run)",
            self.name, self.p50_ms, self.p99_ms, self.max_ms, self.mean_result
        )
    }
}

/// The nearest-rank percentile `p` (0..=1) of sorted samples; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Times `runs` calls of `f(run)`, each returning its result size.
pub async fn time_runs<F, Fut>(name: &str, runs: usize, mut f: F) -> Result<Latency, BenchError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<u64, BenchError>>,
{
    let mut ms = Vec::with_capacity(runs);
    let mut sum = 0u64;
    for r in 0..runs {
        let t = Instant::now();
        sum += f(r).await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok(Latency {
        name: name.into(),
        p50_ms: percentile(&ms, 0.5),
        p99_ms: percentile(&ms, 0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
        mean_result: sum as f64 / runs.max(1) as f64,
    })
}

/// User + system CPU time of this process so far (all threads).
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Bytes of the files under `dir`, recursively; 0 when it cannot be read.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A deterministic xorshift64 sequence: benchmarks that vary their queries the same way each run.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
    }
}

fn hub_err(reason: impl Into<String>) -> BenchError {
    BenchError::Phase {
        phase: "hub process",
        reason: reason.into(),
    }
}

/// A `cloud-hub serve` child process on loopback ports; killed when dropped.
pub struct HubProcess {
    child: Child,
    pub mqtt: SocketAddr,
    /// `http://HOST:PORT`.
    pub http: String,
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HubProcess {
    /// Starts `exe serve` on `data_dir` with `config` (TOML) written to `work_dir/hub.toml`, its
    /// log in `work_dir/hub.log`; returns once it printed its ready line.
    pub fn start(
        exe: &Path,
        work_dir: &Path,
        data_dir: &Path,
        config: &str,
    ) -> Result<HubProcess, BenchError> {
        let config_path = work_dir.join("hub.toml");
        std::fs::write(&config_path, config)
            .map_err(|e| hub_err(format!("{}: {e}", config_path.display())))?;
        let log_path = work_dir.join("hub.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| hub_err(format!("{}: {e}", log_path.display())))?;
        let mut child = Command::new(exe)
            .args([
                "serve",
                "--mqtt-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn,rumqttd=off")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| hub_err(format!("cannot start {}: {e}", exe.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| hub_err("no hub stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        // cloud-hub ready mqtt=HOST:PORT http=http://HOST:PORT
        let ready = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("cloud-hub ready") => break l,
                Some(Ok(_)) => continue,
                _ => {
                    let _ = child.kill();
                    return Err(hub_err(format!(
                        "the hub exited before its ready line; see {}",
                        log_path.display()
                    )));
                }
            }
        };
        let field = |name: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_string)
                .ok_or_else(|| hub_err(format!("no {name} in `{ready}`")))
        };
        let mqtt = field("mqtt=")?
            .parse()
            .map_err(|e| hub_err(format!("MQTT address: {e}")))?;
        let http = field("http=")?;
        Ok(HubProcess { child, mqtt, http })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait for a clean exit (the store flushed).
    pub fn stop(mut self) -> Result<(), BenchError> {
        // SAFETY: kill(2) with a pid we own and a valid signal.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                Ok(Some(s)) => return Err(hub_err(format!("the hub exited with {s}"))),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => return Err(hub_err("the hub did not stop within 60 s")),
            }
        }
    }
}

/// RSS in bytes and CPU time (user + system) of process `pid`, from /proc.
pub fn proc_stats(pid: u32) -> Option<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, in parentheses).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((
        rss_kb * 1024,
        Duration::from_secs_f64((utime + stime) as f64 / ticks),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[tokio::test]
    async fn timed_runs_average_their_results() {
        let l = time_runs("q", 4, |r| async move { Ok(r as u64) })
            .await
            .unwrap();
        assert_eq!(l.mean_result, 1.5);
        assert!(l.p50_ms <= l.p99_ms && l.p99_ms <= l.max_ms);
    }

    #[test]
    fn uniform_stays_in_range() {
        let mut r = XorShift(7);
        for _ in 0..1000 {
            let x = r.uniform(2.0, 3.0);
            assert!((2.0..3.0).contains(&x), "{x}");
        }
    }
}
