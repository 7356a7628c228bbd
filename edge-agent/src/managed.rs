//! Centrally managed camera settings (fleet configuration, `CommandOp::Config`): checked
//! against what this agent has, kept on disk beside the outbox (so a restart runs the same
//! version), and laid over the local config file's cameras.

use std::io::Write;
use std::path::{Path, PathBuf};

use csb_wire::ConfigPush;
use thiserror::Error;

use crate::config::CameraConfig;

/// File name in the outbox folder.
pub const FILE: &str = "managed-config.json";

#[derive(Debug, Error)]
pub enum ManagedError {
    #[error("cannot write the managed config {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the managed config {path}: {message}")]
    Read { path: PathBuf, message: String },
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The version kept on disk, if any.
pub fn load(dir: &Path) -> Result<Option<ConfigPush>, ManagedError> {
    let p = path(dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ManagedError::Read {
                path: p,
                message: e.to_string(),
            })
        }
    };
    let push: ConfigPush = serde_json::from_slice(&bytes).map_err(|e| ManagedError::Read {
        path: p.clone(),
        message: e.to_string(),
    })?;
    push.check().map_err(|e| ManagedError::Read {
        path: p,
        message: e.to_string(),
    })?;
    Ok(Some(push))
}

/// Keeps `push` durably: a temporary file, fsync, rename, fsync of the folder. Only then is
/// the version acknowledged to the hub.
pub fn save(dir: &Path, push: &ConfigPush) -> Result<(), ManagedError> {
    let p = path(dir);
    let err = |source| ManagedError::Write {
        path: p.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let json = serde_json::to_vec_pretty(push).map_err(|e| err(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&json).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &p).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// `cams` with `push`'s settings laid over the cameras it lists; an error names a listed camera
/// this agent does not run, or a class its model does not know.
pub fn merged(
    cams: &[CameraConfig],
    push: &ConfigPush,
    labels: Option<&[String]>,
) -> Result<Vec<CameraConfig>, String> {
    let mut out = cams.to_vec();
    for (i, s) in push.cameras.iter().enumerate() {
        let Some(c) = out.iter_mut().find(|c| c.id == s.id) else {
            let known: Vec<&str> = cams.iter().map(|c| c.id.as_str()).collect();
            return Err(format!(
                "cameras[{i}].id: no enabled camera `{}` (this agent runs: {})",
                s.id,
                known.join(", ")
            ));
        };
        // A camera with its own model is checked against that model's labels.
        let own = s.model.as_ref().and_then(|k| {
            push.models
                .iter()
                .find(|m| m.key() == *k)
                .map(|m| m.labels.as_slice())
        });
        if let Some(labels) = own.or(labels) {
            let known = |l: &String| labels.iter().any(|x| x == l);
            let mut named: Vec<(String, &String)> = s
                .classes
                .iter()
                .enumerate()
                .map(|(j, l)| (format!("cameras[{i}].classes[{j}]"), l))
                .collect();
            for (j, z) in s.analytics.zones.iter().enumerate() {
                named.extend(
                    z.classes.iter().enumerate().map(|(k, l)| {
                        (format!("cameras[{i}].analytics.zones[{j}].classes[{k}]"), l)
                    }),
                );
            }
            for (j, l) in s.analytics.lines.iter().enumerate() {
                named.extend(
                    l.classes.iter().enumerate().map(|(k, c)| {
                        (format!("cameras[{i}].analytics.lines[{j}].classes[{k}]"), c)
                    }),
                );
            }
            if let Some((field, l)) = named.into_iter().find(|(_, l)| !known(l)) {
                return Err(format!(
                    "{field}: `{l}` is not a label of this agent's model"
                ));
            }
        }
        c.classes = s.classes.clone();
        c.analytics = s.analytics.clone();
        c.model = s.model.clone();
    }
    Ok(out)
}

/// What to do with a pushed configuration.
#[derive(Debug)]
pub enum Decision {
    /// A repeat or an older version: answer with the version running.
    Running(u64),
    /// It cannot run here: answer `refused` with the reason.
    Refuse(String),
    /// Apply: the cameras with the push laid over them.
    Apply(Vec<CameraConfig>),
}

/// Decides on `push` for an agent running version `running` with `cams` (and, with a model,
/// its `labels`).
pub fn decide(
    push: &ConfigPush,
    running: Option<u64>,
    cams: &[CameraConfig],
    labels: Option<&[String]>,
) -> Decision {
    if let Some(v) = running.filter(|v| push.version <= *v) {
        return Decision::Running(v);
    }
    match merged(cams, push, labels) {
        Ok(m) => Decision::Apply(m),
        Err(e) => Decision::Refuse(e),
    }
}

/// The answer to configuration command `cmd`.
pub fn reply(
    cmd: &csb_wire::Command,
    status: csb_wire::ReplyStatus,
    reason: Option<String>,
    version: Option<u64>,
    model: Option<csb_wire::model::ModelVersion>,
) -> csb_wire::CommandReply {
    csb_wire::CommandReply {
        v: csb_wire::SCHEMA_VERSION,
        id: cmd.id.clone(),
        site: cmd.site.clone(),
        device: cmd.device.clone(),
        ts_ms: csb_wire::now_ms(),
        status,
        reason: reason.map(crate::commands::clip),
        recheck: None,
        config: version.map(|version| csb_wire::ConfigApplied { version, model }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csb_wire::CameraSettings;

    fn push(version: u64, cam: &str, classes: &[&str]) -> ConfigPush {
        ConfigPush {
            version,
            cameras: vec![CameraSettings {
                id: cam.into(),
                classes: classes.iter().map(|c| c.to_string()).collect(),
                analytics: Default::default(),
                model: None,
            }],
            model: None,
            models: Vec::new(),
        }
    }

    #[test]
    fn saved_versions_come_back_and_overlay_only_listed_cameras() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path()).unwrap().is_none());
        let p = push(3, "cam-a", &["car"]);
        save(d.path(), &p).unwrap();
        assert_eq!(load(d.path()).unwrap(), Some(p.clone()));
        let cams = vec![
            CameraConfig::new("cam-a", "/a"),
            CameraConfig::new("cam-b", "/b"),
        ];
        let labels: Vec<String> = ["person", "car"].iter().map(|s| s.to_string()).collect();
        let m = merged(&cams, &p, Some(&labels)).unwrap();
        assert_eq!(m[0].classes, vec!["car".to_string()]);
        assert!(m[1].classes.is_empty(), "cam-b is not listed: untouched");
        let e = merged(&cams, &push(4, "cam-x", &[]), None).unwrap_err();
        assert!(e.contains("cam-x") && e.contains("cam-a, cam-b"), "{e}");
        let e = merged(&cams, &push(4, "cam-a", &["elephant2"]), Some(&labels)).unwrap_err();
        assert!(
            e.starts_with("cameras[0].classes[0]") && e.contains("elephant2"),
            "{e}"
        );
    }
}
