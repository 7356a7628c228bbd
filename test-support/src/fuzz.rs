//! For the fuzz targets (std only: the fuzz workspace builds this crate without `net`): the
//! config loaders take a path, so each input is written to a file first.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A file of this process's own in a temporary directory, rewritten for every input. The
/// directory is `$TMPDIR` if set (scripts/fuzz.sh points it at a RAM disk it removes
/// afterwards), else `/dev/shm`: a file write per input on a disk-backed /tmp costs
/// milliseconds.
///
/// ```
/// use csb_test_support::fuzz::ScratchFile;
///
/// static CONFIG: ScratchFile = ScratchFile::new("doc", "agent.toml");
/// let path = CONFIG.write_utf8(b"[agent]").unwrap();
/// assert_eq!(std::fs::read_to_string(path).unwrap(), "[agent]");
/// assert!(CONFIG.write_utf8(&[0xff]).is_none());
/// ```
pub struct ScratchFile {
    /// Names the directory: `csb-fuzz-{tag}-{pid}`.
    tag: &'static str,
    name: &'static str,
    path: OnceLock<PathBuf>,
}

impl ScratchFile {
    pub const fn new(tag: &'static str, name: &'static str) -> Self {
        ScratchFile {
            tag,
            name,
            path: OnceLock::new(),
        }
    }

    /// The file's path (its directory is made on first use).
    pub fn path(&self) -> &Path {
        self.path.get_or_init(|| {
            let base = match std::env::var_os("TMPDIR") {
                Some(d) => PathBuf::from(d),
                None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
                None => std::env::temp_dir(),
            };
            let dir = base.join(format!("csb-fuzz-{}-{}", self.tag, std::process::id()));
            std::fs::create_dir_all(&dir).expect("create temporary config dir");
            dir.join(self.name)
        })
    }

    /// Writes `data` to the file if it is UTF-8 (a config file is text) and returns the path;
    /// `None`, writing nothing, if it is not.
    pub fn write_utf8(&self, data: &[u8]) -> Option<&Path> {
        let text = std::str::from_utf8(data).ok()?;
        let path = self.path();
        std::fs::write(path, text).expect("write temporary config");
        Some(path)
    }
}
