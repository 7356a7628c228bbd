//! Arbitrary UTF-8 as the hub's TOML config, through the real loader (`HubConfig::load`: read,
//! parse, validate; it only takes a path, so each input goes to a per-process temporary file).
//! Must never panic. A config it accepts must render (`check-config` prints `to_toml`) to TOML
//! that parses back to the same config and still validates.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cloud_hub::HubConfig;
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
        let dir = base.join(format!("csb-fuzz-hub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temporary config dir");
        dir.join("hub.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = config_path();
    std::fs::write(path, text).expect("write temporary config");
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
