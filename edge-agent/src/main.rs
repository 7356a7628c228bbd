//! `edge-agent`: the field technician's and the gateway's command line.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edge_agent::config::{AgentConfig, MqttConfig};
use edge_agent::model::{Detector, DetectorOptions};
use edge_agent::outbox::Outbox;
use edge_agent::pipeline::{self, RunOptions};
use edge_agent::sensors::Sensors;
use edge_agent::source::{self, Pacing, Pulled, Source};
use edge_agent::uplink::Uplink;

#[derive(Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "City Super Brain edge agent (城市超脑 边缘网关)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Model selection shared by `detect`, `bench` and `bench-gating`.
#[derive(clap::Args, Clone)]
struct ModelArgs {
    /// Model name in the manifest.
    #[arg(long, default_value = "yolox_nano")]
    model_name: String,
    /// Model file (default: found via models/manifest.toml).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Folder holding manifest.toml (default: ./models or the repo's models/).
    #[arg(long, env = "CSB_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// libonnxruntime.so (default: ORT_DYLIB_PATH, .cache/onnxruntime/, system folders).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Minimum score to report.
    #[arg(long, default_value_t = 0.3)]
    score: f32,
    /// Let ONNX Runtime threads busy-wait between ops (faster alone, may starve decoding).
    #[arg(long)]
    spinning: bool,
}

impl ModelArgs {
    fn options(&self) -> DetectorOptions {
        DetectorOptions {
            name: self.model_name.clone(),
            path: self.model.clone(),
            models_dir: self.models_dir.clone(),
            ort_library: self.ort_lib.clone(),
            intra_threads: self.threads,
            score_threshold: self.score,
            intra_op_spinning: self.spinning,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: every configured camera → detection → MQTT, until Ctrl-C.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Enrol this box with the hub: exchange a one-time token (`cloud-hub device enrol
    /// SITE/DEVICE`) for the device's credentials, write the secret (mode 0600) and set
    /// `[mqtt] username` and `secret_file` in the config. Exit codes: 0 enrolled, 2 the hub
    /// refused the token (unknown, used, expired, another device's), 3 the hub is unreachable,
    /// 1 anything else.
    Provision {
        /// The hub's HTTP address, e.g. http://10.0.0.5:8080
        #[arg(long)]
        hub: String,
        /// The one-time token (or set CSB_ENROL_TOKEN, which stays out of the shell history).
        #[arg(long, env = "CSB_ENROL_TOKEN", hide_env_values = true)]
        token: String,
        /// The agent config to enrol (its [agent] site and device) and update.
        #[arg(long, short)]
        config: PathBuf,
        /// Where to keep the secret (default: device.secret beside the config).
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Check everything a gateway needs, one line per check with a fix for each problem: config,
    /// ONNX Runtime, model and its self-test, GStreamer plugins, each camera, the hub's MQTT port,
    /// TLS certificate, device login and HTTP API, clock skew, disk space and the outbox backlog.
    /// Exit codes: 0 nothing failed (warnings allowed), 1 a check failed.
    Doctor {
        #[arg(long, short)]
        config: PathBuf,
        /// Print one JSON object (checks with stable ids) instead of text.
        #[arg(long)]
        json: bool,
        /// Seconds each network step may take.
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
    },
    /// What the running agent is doing, from the status file it rewrites every health tick
    /// beside its outbox: uplink, outbox, each camera and sensor. Exit codes: 0 running and
    /// healthy, 1 running but degraded (uplink down, a camera not running), 3 not running.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The outbox: what waits for the hub's ack (by class, oldest records, drops); `--purge`
    /// deletes records after confirmation. Needs the agent stopped to list or purge.
    Queue {
        #[arg(long, short)]
        config: PathBuf,
        /// How many of the oldest records to list.
        #[arg(long, default_value_t = 20)]
        list: usize,
        /// Delete what is queued (asks first; records the hub never stored are lost).
        #[arg(long)]
        purge: bool,
        /// Purge only this class: event, telemetry or evidence.
        #[arg(long, requires = "purge")]
        class: Option<String>,
        /// Do not ask before purging.
        #[arg(long, requires = "purge")]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Grab frames from a camera URL or file, detect on each, report fps and inference time
    /// and write the last frame with its detections drawn.
    Probe {
        uri: String,
        #[arg(long, default_value_t = 50)]
        frames: u64,
        /// Annotated picture to write.
        #[arg(long, default_value = "probe.jpg")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Camera zones and counting lines.
    Zones {
        #[command(subcommand)]
        cmd: ZonesCmd,
    },
    /// Delivery testing: generate synthetic detection events through the real outbox and
    /// uplink (no cameras), appending each id to `--id-log` once it is durable; continues from
    /// the log after a crash. Runs until stopped.
    Synth {
        #[arg(long, short)]
        config: PathBuf,
        /// Total events to generate (counting those already in the log).
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Events per second.
        #[arg(long, default_value_t = 500)]
        rate: u32,
        #[arg(long)]
        id_log: PathBuf,
    },
    /// Benchmark the durable outbox: enqueue+ack cycles/s and disk bytes per live byte.
    BenchOutbox {
        /// Enqueue/ack cycles.
        #[arg(long, default_value_t = 1_000_000)]
        cycles: u64,
        /// Records kept pending (unacked) throughout.
        #[arg(long, default_value_t = 10_000)]
        window: usize,
        /// Records per flush (concurrent producers share one).
        #[arg(long, default_value_t = 64)]
        group: usize,
        /// Payload size of each record (a typical event is 400–800 bytes).
        #[arg(long, default_value_t = 600)]
        bytes: usize,
        /// Directory to use (default: a temporary one, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check a config file and print what it resolves to.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Detect objects in an image or video file (or URI); one line per frame.
    Detect {
        file: String,
        /// Print one JSON object per frame.
        #[arg(long)]
        json: bool,
        /// Stop after this many frames.
        #[arg(long)]
        max_frames: Option<u64>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Run the full perception pipeline (motion gating, detection, tracking, rules) over a
    /// recording as fast as possible and print each rule event; for tuning zones and rules.
    Replay {
        file: String,
        /// Agent config whose camera settings (zones, rules, tracker, motion) to apply.
        #[arg(long, short)]
        config: PathBuf,
        /// Which camera of the config (default: the first enabled one).
        #[arg(long)]
        camera: Option<String>,
        /// Print one JSON object per rule event, then one summary object.
        #[arg(long)]
        json: bool,
        /// Write each evidence snapshot to DIR/<snapshot-id>.jpg.
        #[arg(long)]
        snapshots: Option<PathBuf>,
    },
    /// Measure raw model speed and full pipeline speed side by side.
    ///
    /// Each camera count of --cameras is one run of the live pipeline (every frame, motion
    /// gating off, QoS 1 publishes to --broker) with that many cameras on one agent, each the
    /// same FILE under its own id; raw model inferences/s are measured before, between and after
    /// the runs, and each run's ratio is its total frames/s across cameras ÷ the raw figures
    /// around it. With one count the report is the one-camera format.
    Bench {
        file: String,
        /// Frames per camera and run.
        #[arg(long, default_value_t = 200)]
        frames: u64,
        /// Camera counts to run, e.g. 1,2,4.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        cameras: Vec<usize>,
        /// MQTT broker host:port (a running hub).
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Motion-gating benchmark on a recording (no broker needed).
    ///
    /// FILE goes through the camera analytics (motion gate → detector → tracker → rules, stream
    /// time as the clock, every class) twice, interleaved frame by frame on one detector: with
    /// the default motion gate (or the overrides below) and with gating off. No class filter; a
    /// zone covering the whole frame with three rules (a track stationary >= --dwell-s, a track
    /// present >= --dwell-s, anything present >= --dwell-s) gives rule events to compare.
    ///
    /// Still frame (pixel-still): its grey thumbnail (the gate's own: 64 px wide, blurred)
    /// differs from the PREVIOUS frame's on fewer than min_changed_ratio of its pixels (change >
    /// pixel_threshold); the gate itself compares with the last inferred frame. Still stretch: a
    /// run of pixel-still frames lasting >= --still-min-ms (the headline figure). Also shown:
    /// detection-still frames (ungated detections equal the previous frame's: same count, every
    /// box matched at IoU >= 0.9) and moving frames. Detections kept: ungated detections matched
    /// one-to-one, any class, at IoU >= 0.5 by the gated run's detections (inferred frames) or by
    /// its coasting tracks (skipped frames; also with the last inferred detections added, and the
    /// ungated run's own tracks as the tracker's baseline); tracks kept: ungated tracks matched by
    /// gated tracks. Events: every ungated rule start needs a gated start of the same rule on the
    /// same object (IoU >= 0.5) within 2 s; lost and extra starts are listed.
    BenchGating {
        file: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Override the gate's keep-alive (default 1000 ms: one inference per second on a still
        /// scene, which caps skipping at 1 - 1/ceil(keepalive / frame interval)).
        #[arg(long)]
        keepalive_ms: Option<u64>,
        /// Seconds the rules over the whole frame wait before an event starts.
        #[arg(long, default_value_t = 2.0)]
        dwell_s: f64,
        /// Shortest run of still frames that counts as a still stretch, ms.
        #[arg(long, default_value_t = 1000)]
        still_min_ms: u64,
        #[command(flatten)]
        model: ModelArgs,
    },
}

#[derive(Subcommand)]
enum ZonesCmd {
    /// Draw a camera's configured zones and lines over a live frame from it, to a JPEG.
    Preview {
        /// The camera's id in the config.
        camera: String,
        #[arg(long, short)]
        config: PathBuf,
        /// Picture to write (default zones-CAMERA.jpg).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// Asks on the terminal; anything but "yes" declines. No terminal: declines.
fn ask(question: &str) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        eprintln!("{question}\nnot a terminal: pass --yes to confirm");
        return false;
    }
    eprint!("{question} Type yes to go on: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    line.trim() == "yes"
}

/// `println!` that returns an error instead of panicking when stdout is closed (`| head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader went away (`edge-agent detect … | head`): not an error of ours.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace dump.
            eprintln!("edge-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { config } => run(config),
        Cmd::Provision {
            hub,
            token,
            config,
            secret_file,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let r = rt.block_on(edge_agent::provision::provision(
                &hub,
                &token,
                &config,
                secret_file.as_deref(),
            ));
            match r {
                Ok(e) => {
                    out!("enrolled as {}", e.username);
                    out!("secret written to {} (mode 0600)", e.secret_file.display());
                    out!(
                        "{} updated: [mqtt] username, secret_file",
                        e.config.display()
                    );
                    Ok(())
                }
                Err(e) => {
                    eprintln!("edge-agent: error: {e}");
                    std::process::exit(e.exit_code())
                }
            }
        }
        Cmd::Doctor {
            config,
            json,
            timeout_s,
        } => {
            let mut opts = edge_agent::doctor::Options::new(config);
            opts.timeout = Duration::from_secs(timeout_s.max(1));
            let report = if json {
                edge_agent::doctor::run(&opts, &mut |_| {})
            } else {
                out!("edge-agent doctor: {}", opts.config.display());
                // Each line as soon as its check is done: cameras and the network take seconds.
                edge_agent::doctor::run(&opts, &mut |c| {
                    use std::io::Write as _;
                    let _ = writeln!(
                        std::io::stdout().lock(),
                        "{}",
                        edge_agent::doctor::render_line(c)
                    );
                })
            };
            if json {
                out!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!("{}", edge_agent::doctor::render_summary(&report));
            }
            std::process::exit(report.exit_code() as i32)
        }
        Cmd::Status { config, json } => {
            let cfg = AgentConfig::load(&config)?;
            let code = edge_agent::tools::status::run(&cfg, json, &mut std::io::stdout().lock())?;
            std::process::exit(code as i32)
        }
        Cmd::Queue {
            config,
            list,
            purge,
            class,
            yes,
            json,
        } => {
            let cfg = AgentConfig::load(&config)?;
            let class = match class.as_deref() {
                None => None,
                Some("event") => Some(edge_agent::outbox::Class::Event),
                Some("telemetry") => Some(edge_agent::outbox::Class::Telemetry),
                Some("evidence") => Some(edge_agent::outbox::Class::Evidence),
                Some(other) => anyhow::bail!("--class {other}: use event, telemetry or evidence"),
            };
            let o = edge_agent::tools::queue::Options {
                list,
                purge,
                class,
                yes,
                json,
            };
            let code =
                edge_agent::tools::queue::run(&cfg, &o, &mut std::io::stdout().lock(), &mut ask)?;
            std::process::exit(code as i32)
        }
        Cmd::Probe {
            uri,
            frames,
            out,
            json,
            model,
        } => {
            use std::io::IsTerminal;
            let progress = !json && std::io::stderr().is_terminal();
            let r = edge_agent::tools::probe::probe(
                &uri,
                frames.max(1),
                &out,
                &model.options(),
                progress,
            )?;
            if json {
                out!("{}", serde_json::to_string(&r)?);
            } else {
                let objs: Vec<String> = r.objects.iter().map(|(l, n)| format!("{n} {l}")).collect();
                out!(
                    "{}: {} frames of {}×{} at {:.1} fps; inference p50 {:.1} ms, p95 {:.1} ms",
                    r.uri,
                    r.frames,
                    r.width,
                    r.height,
                    r.fps,
                    r.inference_ms_p50,
                    r.inference_ms_p95
                );
                out!(
                    "last frame: {}",
                    if objs.is_empty() {
                        "no objects".to_string()
                    } else {
                        objs.join(", ")
                    }
                );
                out!("picture with the detections drawn: {}", r.picture.display());
            }
            Ok(())
        }
        Cmd::Zones {
            cmd:
                ZonesCmd::Preview {
                    camera,
                    config,
                    out,
                    json,
                },
        } => {
            let cfg = AgentConfig::load(&config)?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("zones-{camera}.jpg")));
            let r = edge_agent::tools::probe::zones_preview(&cfg, &camera, &out)?;
            if json {
                out!("{}", serde_json::to_string(&r)?);
            } else {
                out!(
                    "{}: {} zone(s) and {} line(s) drawn on a {}×{} frame: {}",
                    r.camera,
                    r.zones,
                    r.lines,
                    r.width,
                    r.height,
                    r.picture.display()
                );
            }
            Ok(())
        }
        Cmd::BenchOutbox {
            cycles,
            window,
            group,
            bytes,
            dir,
            json,
        } => {
            let tmp = tempdir_in_target()?;
            let dir = dir.unwrap_or_else(|| tmp.join("outbox"));
            let rt = tokio::runtime::Runtime::new()?;
            let r = rt.block_on(edge_agent::bench_outbox::run(
                &dir, cycles, window, group, bytes,
            ));
            let _ = std::fs::remove_dir_all(&tmp);
            let r = r?;
            if json {
                out!("{}", serde_json::to_string(&r)?);
            } else {
                out!(
                    "outbox: {} enqueue+ack cycles ({} B records, {} per flush, {} pending) in {:.1} s = {:.0} cycles/s",
                    r.cycles, r.payload_bytes, group, r.window, r.seconds, r.cycles_per_s
                );
                out!(
                    "outbox disk: {:.1} MiB on disk for {:.1} MiB live = {:.2} disk/live (peak {:.1} MiB)",
                    r.disk_bytes as f64 / 1048576.0,
                    r.live_bytes as f64 / 1048576.0,
                    r.disk_per_live,
                    r.disk_peak_bytes as f64 / 1048576.0
                );
            }
            Ok(())
        }
        Cmd::Synth {
            config,
            count,
            rate,
            id_log,
        } => synth(config, count, rate, id_log),
        Cmd::Check { config } => {
            let cfg = AgentConfig::load(&config)?;
            out!("{config:?}: OK");
            out!("{cfg:#?}");
            Ok(())
        }
        Cmd::Replay {
            file,
            config,
            camera,
            json,
            snapshots,
        } => edge_agent::replay::run(
            &file,
            &config,
            camera.as_deref(),
            json,
            snapshots.as_deref(),
        )
        .map(|_| ())
        .map_err(Into::into),
        Cmd::Detect {
            file,
            json,
            max_frames,
            model,
        } => detect(&file, json, max_frames, &model.options()),
        Cmd::Bench {
            file,
            frames,
            cameras,
            broker,
            json,
            model,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let mqtt = MqttConfig {
                broker,
                ..MqttConfig::default()
            };
            let r = edge_agent::bench::run_cameras(
                &file,
                frames,
                &cameras,
                &model.options(),
                &mqtt,
                &rt,
            )?;
            match (json, r.runs.as_slice()) {
                (true, [one]) => out!("{}", serde_json::to_string(one)?),
                (true, _) => out!("{}", serde_json::to_string(&r)?),
                (false, [one]) => print!("{}", one.to_text()),
                (false, _) => print!("{}", r.to_text()),
            }
            Ok(())
        }
        Cmd::BenchGating {
            file,
            json,
            keepalive_ms,
            dwell_s,
            still_min_ms,
            model,
        } => {
            let mut opts = edge_agent::bench::GatingOptions {
                dwell_s,
                still_min_ms,
                ..Default::default()
            };
            if let Some(k) = keepalive_ms {
                opts.motion.keepalive_ms = k;
            }
            let r = edge_agent::bench::run_gating(&file, &model.options(), &opts)?;
            if json {
                out!("{}", serde_json::to_string(&r)?);
            } else {
                print!("{}", r.to_text());
            }
            Ok(())
        }
    }
}

fn detect(file: &str, json: bool, max_frames: Option<u64>, opts: &DetectorOptions) -> Result<()> {
    let mut det = Detector::load(opts)?;
    let uri = source::to_uri(file).map_err(anyhow::Error::msg)?;
    let mut src = Source::open("detect", &uri, det.input_size(), Pacing::EveryFrame)?;
    let mut n = 0;
    while max_frames.is_none_or(|m| n < m) {
        let frame = match src.next_frame(Duration::from_secs(30))? {
            Pulled::Frame(f) => f,
            Pulled::End => break,
        };
        n += 1;
        let objects = det.detect(&frame.scaled(), frame.src_width, frame.src_height)?;
        if json {
            // A struct rather than json!(): keeps f32 values short ("67.6", not "67.5999984741211").
            #[derive(serde::Serialize)]
            struct Line<'a> {
                frame: u64,
                pts_ms: Option<u64>,
                width: u32,
                height: u32,
                objects: &'a [csb_wire::Detection],
            }
            let line = Line {
                frame: frame.seq,
                pts_ms: frame.pts_ms,
                width: frame.src_width,
                height: frame.src_height,
                objects: &objects,
            };
            out!("{}", serde_json::to_string(&line)?);
        } else {
            let list: Vec<String> = objects
                .iter()
                .map(|o| {
                    format!(
                        "{} {:.2} [{:.0},{:.0},{:.0},{:.0}]",
                        o.label, o.score, o.bbox.x1, o.bbox.y1, o.bbox.x2, o.bbox.y2
                    )
                })
                .collect();
            out!(
                "frame {}: {}",
                frame.seq,
                if list.is_empty() {
                    "-".into()
                } else {
                    list.join(", ")
                }
            );
        }
    }
    if n == 0 {
        anyhow::bail!("{file}: no frames decoded");
    }
    Ok(())
}

fn run(config: PathBuf) -> Result<()> {
    let cfg = AgentConfig::load(&config)?;
    let cameras = cfg.cameras.iter().filter(|c| c.enabled).count();
    // A sensor-only gateway needs no model.
    let detector = if cameras > 0 {
        Some(Detector::load(&cfg.model)?)
    } else {
        None
    };
    tracing::info!(model = ?detector.as_ref().map(|d| d.model_path().display().to_string()),
        cameras, sensors = cfg.sensors.iter().filter(|s| s.enabled).count(), broker = %cfg.mqtt.broker,
        "edge agent starting as {}/{}", cfg.agent.site, cfg.agent.device);
    let rt = tokio::runtime::Runtime::new()?;
    let uplink = Arc::new(start_uplink(&cfg, &rt)?);
    let stop = stop_on_signal(&rt);
    let sensors = rt.block_on(async { Sensors::start(&cfg, uplink.clone()) })?;
    let report = match detector {
        Some(detector) => {
            let opts = RunOptions {
                stop: stop.clone(),
                ..RunOptions::default()
            };
            let r = pipeline::run(&cfg, detector, &uplink, rt.handle().clone(), opts);
            // Cameras may all end (files without `loop`); sensors go on until asked to stop.
            // A failed pipeline stops the agent (a supervisor restarts it).
            if sensors.is_some() && r.is_ok() {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Some(r)
        }
        None => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            None
        }
    };
    if let Some(s) = sensors {
        rt.block_on(s.stop());
    }
    match Arc::try_unwrap(uplink) {
        Ok(u) => rt.block_on(u.shutdown()),
        Err(_) => tracing::warn!("uplink still in use at exit; not disconnecting cleanly"),
    }
    if let Some(report) = report {
        let report = report.context("pipeline stopped")?;
        tracing::info!(
            frames = report.frames,
            events = report.events,
            dropped = report.dropped,
            "stopped"
        );
    }
    Ok(())
}

/// Opens the durable outbox and starts the uplink on it.
fn start_uplink(cfg: &AgentConfig, rt: &tokio::runtime::Runtime) -> Result<Uplink> {
    let dir = cfg.outbox_dir();
    let outbox = Outbox::open(&dir, &cfg.outbox).with_context(|| {
        format!(
            "cannot open the outbox (set [outbox] dir in the config; now {})",
            dir.display()
        )
    })?;
    let s = outbox.snapshot();
    if s.pending > 0 {
        tracing::info!(pending = s.pending, outbox = %dir.display(), "resending what the hub has not acked yet");
    }
    Ok(rt.block_on(async {
        Uplink::start_with_outbox(
            &cfg.mqtt,
            &cfg.agent.site,
            &cfg.agent.device,
            outbox,
            &cfg.outbox,
        )
    })?)
}

/// A fresh scratch directory (on the same disk as the build, not tmpfs, so fsync is real).
fn tempdir_in_target() -> Result<PathBuf> {
    let base = std::env::var_os("CSB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let d = base.join(format!("csb-bench-outbox-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}

/// A flag set by SIGTERM or Ctrl-C.
fn stop_on_signal(rt: &tokio::runtime::Runtime) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    rt.spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        s.store(true, Ordering::Relaxed);
    });
    stop
}

fn synth(config: PathBuf, count: usize, rate: u32, id_log: PathBuf) -> Result<()> {
    let cfg = AgentConfig::load(&config)?;
    let rt = tokio::runtime::Runtime::new()?;
    let uplink = Arc::new(start_uplink(&cfg, &rt)?);
    let stop = stop_on_signal(&rt);
    // Sensors of the config run too: their telemetry shares the outbox with the events.
    let sensors = rt.block_on(async { Sensors::start(&cfg, uplink.clone()) })?;
    let n = rt.block_on(edge_agent::synth::run(
        &uplink,
        &cfg.agent.site,
        &cfg.agent.device,
        count,
        rate,
        &id_log,
        stop.clone(),
    ))?;
    tracing::info!(
        generated = n,
        "synthetic events generated; delivering and answering commands until stopped"
    );
    let cams: Vec<_> = cfg.cameras.iter().filter(|c| c.enabled).cloned().collect();
    rt.block_on(edge_agent::synth::serve_commands(
        &uplink,
        cams,
        &cfg.outbox_dir(),
        stop.clone(),
    ))?;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(s) = sensors {
        rt.block_on(s.stop());
    }
    if let Ok(u) = Arc::try_unwrap(uplink) {
        rt.block_on(u.shutdown());
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
