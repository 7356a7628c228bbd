//! `edge-agent`: the field technician's and the gateway's command line.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edge_agent::config::{AgentConfig, MqttConfig};
use edge_agent::model::{Detector, DetectorOptions};
use edge_agent::pipeline::{self, RunOptions};
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

/// Model selection shared by `detect` and `bench`.
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
    Bench {
        file: String,
        #[arg(long, default_value_t = 200)]
        frames: u64,
        /// MQTT broker host:port (a running hub).
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
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
        Cmd::Check { config } => {
            let cfg = AgentConfig::load(&config)?;
            println!("{config:?}: OK");
            println!("{cfg:#?}");
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
            broker,
            json,
            model,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let mqtt = MqttConfig {
                broker,
                ..MqttConfig::default()
            };
            let r = edge_agent::bench::run(&file, frames, &model.options(), &mqtt, &rt)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("frames                    {}", r.frames);
                println!("raw model inferences/s    {:.2}  (before {:.2}, after {:.2}; {} intra-op threads)",
                    r.raw_model_ips, r.raw_model_ips_before, r.raw_model_ips_after, r.intra_threads);
                println!("full pipeline frames/s    {:.2}  (decode→preprocess→infer→postprocess→MQTT publish, {} acked)",
                    r.pipeline_fps, r.events_acked);
                println!("pipeline / raw            {:.3}", r.ratio);
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
            println!("{}", serde_json::to_string(&line)?);
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
            println!(
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
    let detector = Detector::load(&cfg.model)?;
    tracing::info!(model = %detector.model_path().display(), cameras = cfg.cameras.len(), broker = %cfg.mqtt.broker,
        "edge agent starting as {}/{}", cfg.agent.site, cfg.agent.device);
    let rt = tokio::runtime::Runtime::new()?;
    let uplink =
        rt.block_on(async { Uplink::start(&cfg.mqtt, &cfg.agent.site, &cfg.agent.device) })?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        rt.spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            stop.store(true, Ordering::Relaxed);
        });
    }
    let opts = RunOptions {
        stop,
        ..RunOptions::default()
    };
    let report = pipeline::run(&cfg, detector, &uplink, rt.handle().clone(), opts)
        .context("pipeline stopped")?;
    rt.block_on(uplink.shutdown());
    tracing::info!(
        frames = report.frames,
        events = report.events,
        dropped = report.dropped,
        "stopped"
    );
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
