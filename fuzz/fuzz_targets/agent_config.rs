//! Arbitrary UTF-8 as an edge agent's TOML config, through the real loader
//! (`AgentConfig::load`: read, parse, resolve relative paths, validate). It only takes a path,
//! so each input is written to a file in a per-process temporary directory first. Must return
//! a config or an error, never panic.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use edge_agent::config::AgentConfig;
use libfuzzer_sys::fuzz_target;

fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // $TMPDIR if set (scripts/fuzz.sh points it at a RAM disk it removes afterwards), else
        // /dev/shm: a file write per input on a disk-backed /tmp costs milliseconds.
        let base = match std::env::var_os("TMPDIR") {
            Some(d) => PathBuf::from(d),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let dir = base.join(format!("csb-fuzz-agent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temporary config dir");
        dir.join("agent.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = config_path();
    std::fs::write(path, text).expect("write temporary config");
    if let Ok(cfg) = AgentConfig::load(path) {
        // What the agent derives from a loaded config right away.
        let _ = cfg.outbox_dir();
        let _ = cfg.mqtt.host_port();
    }
});
