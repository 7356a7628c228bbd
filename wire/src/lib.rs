//! The wire protocol between edge agents and the hub: topic layout and versioned JSON payloads.
//!
//! Both sides depend on this crate and nothing else defines a topic or payload shape. The JSON
//! Schemas under `schemas/` at the repo root are generated from these types (see [`schemas`]) so
//! third-party tools can validate messages without Rust.

pub mod command;
pub mod model;
pub mod payload;
pub mod rules;
pub mod sign;
pub mod topic;
mod ulid_text;

pub use command::{
    CameraSettings, Command, CommandOp, CommandReply, ConfigApplied, ConfigPush, Recheck,
    RecheckResult, ReplyStatus,
};
pub use payload::*;
pub use topic::{Channel, Topic, TopicError, TopicRef, PREFIX};

/// JSON Schema for each payload, as `(file name, schema)`.
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    fn s<T: schemars::JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).expect("schemas serialise")
    }
    vec![
        ("event.v1.schema.json", s::<Event>()),
        ("telemetry.v1.schema.json", s::<Telemetry>()),
        ("status.v1.schema.json", s::<DeviceStatus>()),
        ("ack.v1.schema.json", s::<Ack>()),
        ("command.v1.schema.json", s::<Command>()),
        ("command-reply.v1.schema.json", s::<CommandReply>()),
    ]
}

#[cfg(test)]
mod schema_tests {
    use std::path::PathBuf;

    /// The committed schemas must match the types. Run with `UPDATE_SCHEMAS=1` to rewrite them.
    #[test]
    fn committed_schemas_match_types() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        for (name, schema) in super::schemas() {
            let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
            let path = dir.join(name);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "{} is out of date; run `UPDATE_SCHEMAS=1 cargo test -p csb-wire`",
                path.display()
            );
        }
    }

    #[test]
    fn schema_requires_core_fields() {
        let (_, ev) = &super::schemas()[0];
        let req = ev["required"].as_array().unwrap();
        for f in ["v", "id", "device", "camera", "ts_ms", "objects"] {
            assert!(req.iter().any(|r| r == f), "event schema must require {f}");
        }
    }
}
