//! Hub → edge commands on `csb/v1/{site}/{device}/cmd` and the edge's replies on
//! `csb/v1/{site}/{device}/cmd/reply`.
//!
//! Delivery is at least once: the hub keeps a command until it has a reply or its deadline
//! passes, and sends it again now and then meanwhile (the agent may have been offline, the
//! reply lost). So a command id names one command however often it arrives: an agent runs it
//! once and answers every repeat with the same reply. With device credentials both directions
//! are signed like acks and events ([`crate::sign`]); an agent that cannot verify a command
//! refuses it and says why.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::payload::{check_ts, check_version, field_err, PayloadError, Validate};
use crate::topic::validate_level;

/// Longest watch window a re-check may ask for.
pub const MAX_WATCH_S: u32 = 120;
/// Most classes one re-check names.
pub const MAX_CLASSES: usize = 16;
/// Longest `reason` text in a reply.
pub const MAX_REASON: usize = 500;

/// A command to one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Command {
    /// Schema version of this payload (currently 1).
    pub v: u32,
    /// The command's id, 1–64 of `A-Z a-z 0-9 - _ .`: its reply names it, and a repeat with
    /// the same id is the same command (run once, answered again).
    pub id: String,
    pub site: String,
    pub device: String,
    /// When this copy was sent (Unix ms).
    pub ts_ms: i64,
    /// After this (Unix ms) the hub no longer waits for the answer: the agent refuses it.
    pub expires_ms: i64,
    /// What to do (`"op": "recheck"` and its fields).
    #[serde(flatten)]
    pub op: CommandOp,
}

/// The operations an agent knows. An agent that meets an `op` it does not know refuses it with
/// the reason (a newer hub, an older agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CommandOp {
    /// AI 核查: look at a camera's zone for a while and say whether the problem is still there.
    Recheck(Recheck),
    /// Fleet configuration: run these camera settings from now on (and after restarts).
    Config(ConfigPush),
}

impl CommandOp {
    pub fn name(&self) -> &'static str {
        match self {
            CommandOp::Recheck(_) => "recheck",
            CommandOp::Config(_) => "config",
        }
    }
}

/// Most cameras one configuration names.
pub const MAX_CAMERAS: usize = 64;
/// Most models a push may add for single cameras (each is a session in the agent's memory).
pub const MAX_CAMERA_MODELS: usize = 4;
/// Most labels a camera's class filter names.
pub const MAX_CAMERA_CLASSES: usize = 100;

/// A device's managed configuration, version `version`: each listed camera runs these settings
/// instead of its local config file's; cameras not listed keep their local settings. The agent
/// validates it against what it has (its cameras, its model's labels), applies it without
/// restarting any camera, keeps it on disk, and answers `done` with the version it runs, or
/// `refused` with the reason. Versions only go up: an older one than the agent runs is
/// answered with the version it runs, not applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigPush {
    /// This device's configuration version at the hub: 1, 2, …
    pub version: u64,
    #[serde(default)]
    pub cameras: Vec<CameraSettings>,
    /// The model every camera of the device runs, from the hub's model warehouse; absent: the
    /// agent's own model. The agent downloads its files, checks them, loads it beside the model
    /// in service and passes its self-test before swapping it in between two frames; if any of
    /// that fails it keeps the model it runs and refuses the push with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Box<crate::model::ModelManifest>>,
    /// More warehouse models, for the cameras that name one (`cameras[].model`): a face
    /// detector on one camera while the others run the device's model, say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<crate::model::ModelManifest>,
}

/// The centrally managed settings of one camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CameraSettings {
    /// The camera's id in the agent's config.
    pub id: String,
    /// Only objects with these labels are reported; empty = every class.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Zones, counting lines and rules (the agent config's `[cameras.analytics]`).
    #[serde(default)]
    pub analytics: crate::rules::RulesConfig,
    /// The model this camera runs, `NAME@VERSION` of one in the push's `models`; absent: the
    /// device's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl ConfigPush {
    /// The checks both sides make (field paths from the push's root, e.g.
    /// `cameras[0].analytics.rules[1].kind.dwell.zone`); the agent then checks it against its
    /// own cameras and model.
    pub fn check(&self) -> Result<(), PayloadError> {
        if self.version == 0 {
            return Err(field_err("version", "must be at least 1"));
        }
        if self.cameras.len() > MAX_CAMERAS {
            return Err(field_err(
                "cameras",
                format!("at most {MAX_CAMERAS} cameras"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.cameras.iter().enumerate() {
            validate_level("camera", &c.id)
                .map_err(|e| field_err(format!("cameras[{i}].id"), e.to_string()))?;
            if !seen.insert(c.id.as_str()) {
                return Err(field_err(
                    format!("cameras[{i}].id"),
                    format!("camera `{}` is listed twice", c.id),
                ));
            }
            if c.classes.len() > MAX_CAMERA_CLASSES {
                return Err(field_err(
                    format!("cameras[{i}].classes"),
                    format!("at most {} classes", MAX_CAMERA_CLASSES),
                ));
            }
            for (j, l) in c.classes.iter().enumerate() {
                check_label(format!("cameras[{i}].classes[{j}]"), l)?;
            }
            c.analytics
                .validate()
                .map_err(|e| field_err(format!("cameras[{i}].analytics.{}", e.field), e.reason))?;
        }
        let prefixed = |prefix: String| {
            move |e| match e {
                PayloadError::Field { field, reason } => {
                    field_err(format!("{prefix}{field}"), reason)
                }
                other => other,
            }
        };
        if let Some(m) = &self.model {
            m.check().map_err(prefixed("model.".into()))?;
        }
        if self.models.len() > MAX_CAMERA_MODELS {
            return Err(field_err(
                "models",
                format!("at most {MAX_CAMERA_MODELS} models besides the device's"),
            ));
        }
        let mut keys = std::collections::HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            m.check().map_err(prefixed(format!("models[{i}].")))?;
            if !keys.insert(m.key()) {
                return Err(field_err(
                    format!("models[{i}]"),
                    format!("`{}` is listed twice", m.key()),
                ));
            }
        }
        for (i, c) in self.cameras.iter().enumerate() {
            if let Some(k) = &c.model {
                if !keys.contains(k) {
                    return Err(field_err(
                        format!("cameras[{i}].model"),
                        format!("`{k}` is not one of the push's `models`"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What an applied configuration reply says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigApplied {
    /// The configuration version the agent runs now.
    pub version: u64,
    /// The model it runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<crate::model::ModelVersion>,
}

/// Look at `zone` of `camera` for `watch_s` seconds, running the detector on every frame
/// (motion gating off), for objects of `classes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Recheck {
    pub camera: String,
    /// The agent's zone id on that camera (the rule's zone); absent: the whole frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Labels to look for (the rule's); empty: every class the zone admits.
    #[serde(default)]
    pub classes: Vec<String>,
    /// How long to look, in seconds (1..=120).
    pub watch_s: u32,
    /// The case this serves (for the agent's log and the snapshot's caption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
}

/// The answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommandReply {
    /// Schema version of this payload (currently 1).
    pub v: u32,
    /// The command's id.
    pub id: String,
    pub site: String,
    pub device: String,
    /// When the reply was made (Unix ms).
    pub ts_ms: i64,
    pub status: ReplyStatus,
    /// Why a command was refused or failed, for people to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A finished re-check's findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recheck: Option<RecheckResult>,
    /// An applied configuration's version (`op: config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigApplied>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStatus {
    /// Done: the result is in the reply.
    Done,
    /// Not run: it could not be verified, had expired, named an unknown camera or zone, or
    /// asked for an operation this agent does not know.
    Refused,
    /// Run, but it could not finish (the camera delivered no frames).
    Failed,
}

/// What a re-check saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecheckResult {
    /// Whether the problem is still there: objects of the classes were in the zone in at least
    /// half of the frames looked at.
    pub present: bool,
    /// Frames the detector ran on.
    pub frames: u32,
    /// Of those, frames with at least one object of the classes in the zone.
    pub frames_seen: u32,
    /// Most objects of each class in the zone in one frame (classes seen only).
    #[serde(default)]
    pub counts: BTreeMap<String, u32>,
    /// The window looked at (Unix ms).
    pub started_ms: i64,
    pub ended_ms: i64,
    /// The fresh evidence JPEG (a ULID), uploaded to the hub's `/api/v1/snapshots/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// A command id: 1–64 of `A-Z a-z 0-9 - _ .`.
pub fn check_command_id(field: &str, id: &str) -> Result<(), PayloadError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(field_err(field, "must be 1-64 of A-Z a-z 0-9 - _ ."))
    }
}

fn check_label(field: String, s: &str) -> Result<(), PayloadError> {
    if s.is_empty() || s.len() > 64 || s.chars().any(char::is_control) {
        return Err(field_err(
            field,
            "must be 1-64 characters, no control characters",
        ));
    }
    Ok(())
}

/// What a command and its reply both carry: version, command id, addressee, time.
fn check_header(
    v: u32,
    id: &str,
    site: &str,
    device: &str,
    ts_ms: i64,
) -> Result<(), PayloadError> {
    check_version(v)?;
    check_command_id("id", id)?;
    validate_level("site", site)?;
    validate_level("device", device)?;
    check_ts("ts_ms", ts_ms)
}

impl Validate for Command {
    fn validate(&self) -> Result<(), PayloadError> {
        check_header(self.v, &self.id, &self.site, &self.device, self.ts_ms)?;
        check_ts("expires_ms", self.expires_ms)?;
        match &self.op {
            CommandOp::Recheck(r) => {
                validate_level("camera", &r.camera)?;
                if let Some(z) = &r.zone {
                    check_label("zone".into(), z)?;
                }
                if r.classes.len() > MAX_CLASSES {
                    return Err(field_err(
                        "classes",
                        format!("at most {MAX_CLASSES} classes"),
                    ));
                }
                for (i, c) in r.classes.iter().enumerate() {
                    check_label(format!("classes[{i}]"), c)?;
                }
                if !(1..=MAX_WATCH_S).contains(&r.watch_s) {
                    return Err(field_err("watch_s", format!("must be 1..={MAX_WATCH_S}")));
                }
                if let Some(c) = &r.case {
                    check_command_id("case", c)?;
                }
            }
            CommandOp::Config(c) => c.check()?,
        }
        Ok(())
    }
}

impl Validate for CommandReply {
    fn validate(&self) -> Result<(), PayloadError> {
        check_header(self.v, &self.id, &self.site, &self.device, self.ts_ms)?;
        if self.reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
            return Err(field_err("reason", format!("at most {MAX_REASON} bytes")));
        }
        match (self.status, &self.recheck, &self.config) {
            (ReplyStatus::Done, None, None) => {
                return Err(field_err(
                    "recheck",
                    "`recheck` or `config` is required when status is `done`",
                ))
            }
            (ReplyStatus::Done, Some(_), Some(_)) => {
                return Err(field_err(
                    "config",
                    "a reply answers one command: `recheck` or `config`",
                ))
            }
            (ReplyStatus::Refused | ReplyStatus::Failed, Some(_), _) => {
                return Err(field_err("recheck", "only allowed when status is `done`"))
            }
            _ => {}
        }
        if let Some(r) = &self.recheck {
            if r.frames_seen > r.frames {
                return Err(field_err("recheck.frames_seen", "exceeds `frames`"));
            }
            if r.counts.len() > MAX_CLASSES {
                return Err(field_err(
                    "recheck.counts",
                    format!("at most {MAX_CLASSES} classes"),
                ));
            }
            for k in r.counts.keys() {
                check_label(format!("recheck.counts[{k:?}]"), k)?;
            }
            check_ts("recheck.started_ms", r.started_ms)?;
            check_ts("recheck.ended_ms", r.ended_ms)?;
            if let Some(s) = &r.snapshot {
                if s.parse::<ulid::Ulid>().is_err() {
                    return Err(field_err("recheck.snapshot", "must be a ULID"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{decode, SCHEMA_VERSION};

    fn cmd() -> Command {
        Command {
            v: SCHEMA_VERSION,
            id: "01JCASE-r1".into(),
            site: "yuexi".into(),
            device: "gw-01".into(),
            ts_ms: 1_790_000_000_000,
            expires_ms: 1_790_000_600_000,
            op: CommandOp::Recheck(Recheck {
                camera: "cam-01".into(),
                zone: Some("no-parking-north".into()),
                classes: vec!["car".into(), "truck".into()],
                watch_s: 10,
                case: Some("01JCASE".into()),
            }),
        }
    }

    #[test]
    fn command_round_trips_with_its_op_beside_the_header() {
        let c = cmd();
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""op":"recheck""#), "{json}");
        assert!(json.contains(r#""camera":"cam-01""#), "{json}");
        assert_eq!(decode::<Command>(json.as_bytes()).unwrap(), c);
        // A signed copy still decodes: the signature is one more member at the end.
        let key = crate::sign::signing_key("s3cret");
        let signed = crate::sign::sign("t", json.as_bytes(), &key).unwrap();
        assert_eq!(decode::<Command>(&signed).unwrap(), c);
    }

    #[test]
    fn bad_commands_name_the_field() {
        let mut c = cmd();
        let CommandOp::Recheck(r) = &mut c.op else {
            unreachable!("a re-check")
        };
        r.watch_s = 0;
        let e = decode::<Command>(&serde_json::to_vec(&c).unwrap()).unwrap_err();
        assert!(e.to_string().contains("watch_s"), "{e}");
        let mut c = cmd();
        c.id = "a/b".into();
        let e = decode::<Command>(&serde_json::to_vec(&c).unwrap()).unwrap_err();
        assert!(e.to_string().contains("`id`"), "{e}");
        let unknown = br#"{"v":1,"id":"x","site":"s","device":"d","ts_ms":1790000000000,
            "expires_ms":1790000000000,"op":"reboot"}"#;
        assert!(decode::<Command>(unknown).is_err());
    }

    #[test]
    fn replies_need_a_result_exactly_when_done() {
        let mut r = CommandReply {
            v: SCHEMA_VERSION,
            id: "c1".into(),
            site: "yuexi".into(),
            device: "gw-01".into(),
            ts_ms: 1_790_000_000_000,
            status: ReplyStatus::Done,
            reason: None,
            recheck: None,
            config: None,
        };
        let e = decode::<CommandReply>(&serde_json::to_vec(&r).unwrap()).unwrap_err();
        assert!(e.to_string().contains("recheck"), "{e}");
        r.recheck = Some(RecheckResult {
            present: true,
            frames: 10,
            frames_seen: 9,
            counts: [("truck".to_string(), 1)].into(),
            started_ms: 1_790_000_000_000,
            ended_ms: 1_790_000_010_000,
            snapshot: Some(ulid::Ulid::new().to_string()),
        });
        decode::<CommandReply>(&serde_json::to_vec(&r).unwrap()).unwrap();
        r.status = ReplyStatus::Refused;
        assert!(decode::<CommandReply>(&serde_json::to_vec(&r).unwrap()).is_err());
        r.recheck = None;
        r.reason = Some("x".repeat(MAX_REASON + 1));
        let e = decode::<CommandReply>(&serde_json::to_vec(&r).unwrap()).unwrap_err();
        assert!(e.to_string().contains("reason"), "{e}");
    }

    #[test]
    fn a_camera_names_one_of_the_pushed_models() {
        let model = crate::model::tests::sample();
        let mut push: ConfigPush = serde_json::from_value(serde_json::json!({
            "version": 2,
            "cameras": [ { "id": "cam-1", "model": "yolox_nano@1.0.0" } ]
        }))
        .unwrap();
        let e = push.check().unwrap_err().to_string();
        assert!(e.contains("cameras[0].model"), "{e}");
        push.models = vec![model.clone()];
        push.check().unwrap();
        push.models.push(model.clone());
        let e = push.check().unwrap_err().to_string();
        assert!(e.contains("models[1]") && e.contains("twice"), "{e}");
        push.models = vec![model];
        push.models[0].labels.clear();
        let e = push.check().unwrap_err().to_string();
        assert!(e.contains("models[0].labels"), "{e}");
    }
}
