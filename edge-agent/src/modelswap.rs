//! Taking a model pushed by the hub into service without dropping a frame.
//!
//! The new model is made ready on its own thread while the model in service keeps detecting:
//! its files downloaded into the local store (resumed, checked against the manifest's sha256),
//! loaded into a second ONNX Runtime session, warmed up and run on its self-test picture. Only
//! a model that passed its self-test is handed to the pipeline, which swaps it in between two
//! frames; anything failing on the way leaves the model in service where it is, and the push
//! is refused with the reason. Going back to the agent's own model (a push without a model) is
//! prepared the same way.

use std::path::PathBuf;
use std::sync::mpsc;

use csb_wire::model::{ModelManifest, ModelVersion};
use csb_wire::sign::SigningKey;

use crate::model::{Detector, DetectorOptions};

/// What preparing a model needs from the agent's configuration.
#[derive(Clone)]
pub struct SwapCtx {
    /// The agent's own detector options (runtime, threads, threshold; its own model's name).
    pub base: DetectorOptions,
    /// The versioned model store (`{outbox dir}/models`).
    pub store_dir: PathBuf,
    /// The hub's HTTP address (`[hub] url`), where warehouse models are downloaded from.
    pub hub_url: Option<String>,
    pub site: String,
    pub device: String,
    /// The device's signing key: downloads are signed with it when the hub requires it.
    pub key: Option<SigningKey>,
}

/// A warehouse model one or more cameras run instead of the device's (`cameras[].model`).
pub struct CameraModel {
    pub manifest: ModelManifest,
    pub det: Detector,
}

/// Every model a push needs, loaded and self-tested.
pub struct Prepared {
    /// The device's model.
    pub device: Detector,
    /// The cameras' own models, in the push's `models` order.
    pub cameras: Vec<CameraModel>,
}

/// Whether the cameras' models in service are those of `target` (same order, same files).
pub fn same_models(running: &[CameraModel], target: &[ModelManifest]) -> bool {
    running.len() == target.len()
        && running
            .iter()
            .zip(target)
            .all(|(r, t)| same_model(Some(&r.manifest), Some(t)))
}

/// Makes ready the device's model (`device`, none: the agent's own) and each of `cameras`.
pub fn prepare_all(
    device: Option<&ModelManifest>,
    cameras: &[ModelManifest],
    ctx: &SwapCtx,
) -> Result<Prepared, String> {
    let device = prepare(device, ctx)?;
    let mut out = Vec::with_capacity(cameras.len());
    for m in cameras {
        out.push(CameraModel {
            manifest: m.clone(),
            det: prepare(Some(m), ctx)?,
        });
    }
    Ok(Prepared {
        device,
        cameras: out,
    })
}

/// The model a detector runs, as status and replies name it.
pub fn version_of(det: &Detector, manifest: Option<&ModelManifest>) -> ModelVersion {
    ModelVersion {
        name: det.model_ref().name.clone(),
        version: manifest.map(|m| m.version.clone()),
        sha256: det.model_ref().sha256.clone(),
    }
}

/// Whether `target` is the model in service (`running`; `None` = the agent's own model).
pub fn same_model(running: Option<&ModelManifest>, target: Option<&ModelManifest>) -> bool {
    match (running, target) {
        (None, None) => true,
        (Some(a), Some(b)) => a.name == b.name && a.version == b.version && a.sha256 == b.sha256,
        _ => false,
    }
}

/// Downloads (or finds) `m` in the store, loads it and runs its self-test. Blocking.
pub fn prepare(target: Option<&ModelManifest>, ctx: &SwapCtx) -> Result<Detector, String> {
    let (mut det, what) = match target {
        None => {
            let det = Detector::load(&ctx.base).map_err(|e| format!("own model: {e}"))?;
            (det, format!("own model {}", ctx.base.name))
        }
        Some(m) => {
            let key = m.key();
            let dir = fetch(m, ctx).map_err(|e| format!("model {key}: download: {e}"))?;
            let opts = DetectorOptions {
                name: m.name.clone(),
                path: None,
                models_dir: Some(dir),
                ..ctx.base.clone()
            };
            let det = Detector::load(&opts).map_err(|e| format!("model {key}: {e}"))?;
            (det, format!("model {key}"))
        }
    };
    if det.entry().selftest.is_some() {
        let out = crate::selftest::run(&mut det).map_err(|e| format!("{what}: self-test: {e}"))?;
        if !out.passed() {
            return Err(format!(
                "{what}: self-test failed: {}",
                out.missing.join("; ")
            ));
        }
        tracing::info!(
            infer_ms = out.infer_ms,
            "{what}: self-test passed on {}",
            out.image.display()
        );
    } else if target.is_some() {
        return Err(format!("{what}: has no self-test; not taken into service"));
    }
    Ok(det)
}

fn fetch(m: &ModelManifest, ctx: &SwapCtx) -> Result<PathBuf, String> {
    use crate::model::store::{DownloadAuth, ModelStore};
    let url = ctx
        .hub_url
        .as_deref()
        .ok_or("the agent has no [hub] url to download models from")?;
    let store = ModelStore::open(&ctx.store_dir).map_err(|e| e.to_string())?;
    let auth = match ctx.key {
        Some(key) => DownloadAuth::Device {
            site: ctx.site.clone(),
            device: ctx.device.clone(),
            key,
        },
        None => DownloadAuth::None,
    };
    store
        .fetch(url, m, &auth, &mut |_, _| {})
        .map_err(|e| e.to_string())
}

/// Records the models now in service (`device`: none for the agent's own, and the cameras')
/// in the store — the device's as current and last good: it passed its self-test — and removes
/// other versions, keeping the cameras' and `previous` (the fallback of the last swap).
pub fn in_service(
    device: Option<&ModelManifest>,
    cameras: &[&ModelManifest],
    previous: &[&ModelManifest],
    ctx: &SwapCtx,
) {
    use crate::model::store::{ModelStore, VersionRef};
    let r = |m: &&ModelManifest| VersionRef {
        name: m.name.clone(),
        version: m.version.clone(),
    };
    let keep: Vec<VersionRef> = device
        .iter()
        .chain(cameras)
        .chain(previous)
        .map(r)
        .collect();
    let res = ModelStore::open(&ctx.store_dir).and_then(|s| {
        if let Some(m) = device {
            s.set_current(&m.name, &m.version)?;
            s.mark_good(&m.name, &m.version)?;
        }
        s.prune(&keep)
    });
    match res {
        Ok(gone) if !gone.is_empty() => tracing::info!(
            removed = gone.len(),
            "model store: older versions removed (those in service and before kept)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("model store: cannot record the models in service: {e}"),
    }
}

/// A model being made ready for a configuration push.
pub struct Swap {
    pub cmd: csb_wire::Command,
    pub push: csb_wire::ConfigPush,
    rx: mpsc::Receiver<Result<Prepared, String>>,
}

impl Swap {
    /// Starts preparing `push.model` on its own thread.
    pub fn start(cmd: csb_wire::Command, push: csb_wire::ConfigPush, ctx: &SwapCtx) -> Self {
        let (tx, rx) = mpsc::sync_channel(1);
        let (target, cameras, ctx) = (
            push.model.as_deref().cloned(),
            push.models.clone(),
            ctx.clone(),
        );
        let what = target
            .as_ref()
            .map_or_else(|| "its own model".to_string(), ModelManifest::key);
        tracing::info!(
            version = push.version,
            "configuration: preparing {what} beside the model in service"
        );
        let spawned = std::thread::Builder::new()
            .name("model-swap".into())
            .spawn(move || {
                let _ = tx.send(prepare_all(target.as_ref(), &cameras, &ctx));
            });
        let rx = match spawned {
            Ok(_) => rx,
            Err(e) => {
                let (tx, rx) = mpsc::sync_channel(1);
                let _ = tx.send(Err(format!("cannot start the model thread: {e}")));
                rx
            }
        };
        Swap { cmd, push, rx }
    }

    /// The prepared model, or why it failed, once ready.
    pub fn poll(&self) -> Option<Result<Prepared, String>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                Some(Err("the model thread ended without an answer".into()))
            }
        }
    }
}
