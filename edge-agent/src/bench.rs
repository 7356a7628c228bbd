//! `edge-agent bench`: raw model speed and full pipeline speed, measured side by side in one run
//! so their ratio is meaningful on a noisy machine.
//!
//! raw      = inferences/s of `Detector::infer` on input tensors prepared before timing
//! pipeline = frames/s of the production path (`pipeline::run`): GStreamer decode + scale →
//!            letterbox → infer → decode/NMS → MQTT QoS 1 publish, until the broker acked all
//! The raw figure is taken before and after the pipeline and averaged, so drift in machine load
//! affects both sides alike.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{AgentConfig, AgentSection, CameraConfig, MqttConfig};
use crate::model::{Detector, DetectorOptions};
use crate::pipeline::{self, PipelineError, RunOptions};
use crate::source::{self, Pacing, Pulled, Source};
use crate::uplink::Uplink;
use crate::vision::MotionConfig;

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub frames: u64,
    pub raw_model_ips: f64,
    pub raw_model_ips_before: f64,
    pub raw_model_ips_after: f64,
    pub pipeline_fps: f64,
    pub ratio: f64,
    pub intra_threads: usize,
    pub events_published: u64,
    pub events_acked: u64,
}

fn raw_ips(det: &mut Detector, inputs: &[Vec<f32>]) -> Result<f64, PipelineError> {
    for x in inputs.iter().take(3) {
        det.infer(x)?; // warm-up: first runs allocate
    }
    let t = Instant::now();
    for x in inputs {
        det.infer(x)?;
    }
    Ok(inputs.len() as f64 / t.elapsed().as_secs_f64())
}

/// Runs the benchmark on `file` for `frames` frames, publishing to `mqtt.broker`.
pub fn run(
    file: &str,
    frames: u64,
    model: &DetectorOptions,
    mqtt: &MqttConfig,
    rt: &tokio::runtime::Runtime,
) -> Result<BenchReport, PipelineError> {
    let uri = source::to_uri(file).map_err(|message| PipelineError::Camera {
        camera: "bench".into(),
        message,
    })?;
    let mut det = Detector::load(model)?;

    // Pre-decode and pre-process the frames so the raw figure is the model alone.
    let mut src = Source::open("bench", &uri, det.input_size(), Pacing::EveryFrame)?;
    let mut inputs = Vec::new();
    while (inputs.len() as u64) < frames.min(100) {
        match src.next_frame(Duration::from_secs(10))? {
            Pulled::Frame(f) => {
                let mut x = Vec::new();
                det.preprocess(&f.scaled(), &mut x);
                inputs.push(x);
            }
            Pulled::End => break,
        }
    }
    drop(src);
    if inputs.is_empty() {
        return Err(PipelineError::Camera {
            camera: "bench".into(),
            message: format!("{file}: no frames decoded"),
        });
    }
    let before = raw_ips(&mut det, &inputs)?;

    let cfg = AgentConfig {
        agent: AgentSection {
            site: "bench".into(),
            device: "bench".into(),
        },
        mqtt: mqtt.clone(),
        model: model.clone(),
        hub: Default::default(),
        cameras: vec![CameraConfig {
            looping: true,
            event_interval_ms: 0,
            snapshots: false,
            // Every frame is inferred: this measures the pipeline, not the gate.
            motion: MotionConfig {
                enabled: false,
                ..MotionConfig::default()
            },
            ..CameraConfig::new("bench", &uri)
        }],
    };
    let uplink = rt.block_on(async {
        let u = Uplink::start(&cfg.mqtt, "bench", "bench")?;
        u.wait_connected(Duration::from_secs(10)).await?;
        Ok::<_, PipelineError>(u)
    })?;
    let published_before = uplink
        .stats()
        .published
        .load(std::sync::atomic::Ordering::Relaxed);
    let opts = RunOptions {
        pacing: Pacing::EveryFrame,
        max_frames: Some(frames),
        publish_empty: true,
        retry: false,
        stop: Arc::new(AtomicBool::new(false)),
    };
    // The pipeline gets its own detector, as `run` has; loading it is not part of the timing.
    let pipe_det = Detector::load(model)?;
    let t = Instant::now();
    let report = pipeline::run(&cfg, pipe_det, &uplink, rt.handle().clone(), opts)?;
    rt.block_on(uplink.flush(Duration::from_secs(30)));
    let elapsed = t.elapsed();
    let stats = uplink.stats();
    let published = stats.published.load(std::sync::atomic::Ordering::Relaxed) - published_before;
    let acked = stats
        .acked
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(published_before);
    rt.block_on(uplink.shutdown());

    let after = raw_ips(&mut det, &inputs)?;
    let raw = (before + after) / 2.0;
    let fps = report.frames as f64 / elapsed.as_secs_f64();
    Ok(BenchReport {
        frames: report.frames,
        raw_model_ips: raw,
        raw_model_ips_before: before,
        raw_model_ips_after: after,
        pipeline_fps: fps,
        ratio: fps / raw,
        intra_threads: model.intra_threads,
        events_published: published,
        events_acked: acked,
    })
}
