//! Arbitrary UTF-8 as the hub's TOML config, through the real loader (`HubConfig::load`: read,
//! parse, validate; it only takes a path, so each input goes to a per-process temporary file).
//! Must never panic. A config it accepts must render (`check-config` prints `to_toml`) to TOML
//! that parses back to the same config and still validates.
#![no_main]

use std::path::Path;

use cloud_hub::HubConfig;
use csb_test_support::fuzz::ScratchFile;
use libfuzzer_sys::fuzz_target;

static CONFIG: ScratchFile = ScratchFile::new("hub", "hub.toml");

fuzz_target!(|data: &[u8]| {
    let Some(path) = CONFIG.write_utf8(data) else {
        return;
    };
    let Ok(cfg) = HubConfig::load(path) else {
        return;
    };
    let rendered = cfg
        .to_toml()
        .unwrap_or_else(|e| panic!("accepted hub config does not render: {e}\n{cfg:?}"));
    let back = HubConfig::parse(&rendered, Path::new("rendered.toml"))
        .unwrap_or_else(|e| panic!("rendered hub config does not parse: {e}\n{rendered}"));
    assert_eq!(
        back, cfg,
        "hub config changed through to_toml -> parse\n{rendered}"
    );
    back.validate()
        .unwrap_or_else(|e| panic!("rendered hub config no longer validates: {e}\n{rendered}"));
});
