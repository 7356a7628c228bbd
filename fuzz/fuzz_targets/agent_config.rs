//! Arbitrary UTF-8 as an edge agent's TOML config, through the real loader
//! (`AgentConfig::load`: read, parse, resolve relative paths, validate). It only takes a path,
//! so each input is written to a file in a per-process temporary directory first. Must return
//! a config or an error, never panic.
#![no_main]

use csb_test_support::fuzz::ScratchFile;
use edge_agent::config::AgentConfig;
use libfuzzer_sys::fuzz_target;

static CONFIG: ScratchFile = ScratchFile::new("agent", "agent.toml");

fuzz_target!(|data: &[u8]| {
    let Some(path) = CONFIG.write_utf8(data) else {
        return;
    };
    if let Ok(cfg) = AgentConfig::load(path) {
        // What the agent derives from a loaded config right away.
        let _ = cfg.outbox_dir();
        let _ = cfg.mqtt.host_port();
    }
});
