//! Device credentials: issued by `cloud-hub device add`, checked by the broker at CONNECT and by
//! ingest on every payload signature (see `docs/wire.md`, Device identity).
//!
//! Kept in `{data_dir}/devices.json` (mode 0600), not in sled: the running hub holds sled's lock,
//! and the admin commands must work beside it. The file is replaced atomically (temp file, fsync,
//! rename); a running hub notices the change within [`REFRESH`] (or at once on an unknown user),
//! so `device add` and `device remove` need no restart. One admin command at a time.
//!
//! A secret is 32 bytes from the OS random source as 64 hex digits. It is the device's MQTT
//! password and, through [`csb_wire::sign::signing_key`], the key of its payload signatures.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use csb_wire::sign::{signing_key, SigningKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::support::watched::Watched;

/// The credentials file in the hub's data directory.
pub const DEVICES_FILE: &str = "devices.json";
pub use crate::support::watched::REFRESH;
/// Random bytes per secret.
const SECRET_BYTES: usize = 32;

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not a device credentials file: {cause}")]
    Parse {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("device `{id}`: {reason} (expected SITE/DEVICE, e.g. yuexi/gw-01)")]
    BadId { id: String, reason: String },
    #[error("device `{0}` already has credentials; `cloud-hub device remove` it first to issue new ones")]
    Exists(String),
    #[error("device `{0}` has no credentials")]
    Unknown(String),
    #[error("cannot get random bytes from the OS: {0}")]
    Random(String),
}

/// One device's entry in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub secret: String,
    /// When `device add` issued it, Unix ms.
    pub added_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct DevicesFile {
    /// `"SITE/DEVICE"` → record; a BTreeMap keeps the file sorted for people reading it.
    devices: BTreeMap<String, DeviceRecord>,
}

/// Splits `id` (`SITE/DEVICE`) into two valid topic levels.
pub fn parse_id(id: &str) -> Result<(&str, &str), DeviceError> {
    let bad = |reason: String| DeviceError::BadId {
        id: id.to_string(),
        reason,
    };
    let (site, device) = id
        .split_once('/')
        .ok_or_else(|| bad("no `/` between site and device".into()))?;
    csb_wire::topic::validate_level("site", site).map_err(|e| bad(e.to_string()))?;
    csb_wire::topic::validate_level("device", device).map_err(|e| bad(e.to_string()))?;
    Ok((site, device))
}

/// A fresh secret: [`SECRET_BYTES`] from the OS as lowercase hex.
pub fn new_secret() -> Result<String, DeviceError> {
    let mut b = [0u8; SECRET_BYTES];
    getrandom::getrandom(&mut b).map_err(|e| DeviceError::Random(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub fn file_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DEVICES_FILE)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DeviceError + '_ {
    move |cause| DeviceError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Every device with credentials; a missing file means none.
pub fn load(data_dir: &Path) -> Result<BTreeMap<String, DeviceRecord>, DeviceError> {
    let path = file_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<DevicesFile>(&bytes)
            .map(|f| f.devices)
            .map_err(|cause| DeviceError::Parse { path, cause }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Writes the file atomically, readable by its owner only.
fn save(data_dir: &Path, devices: BTreeMap<String, DeviceRecord>) -> Result<(), DeviceError> {
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let path = file_path(data_dir);
    let tmp = data_dir.join(format!("{DEVICES_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(&DevicesFile { devices }).map_err(|cause| {
        DeviceError::Parse {
            path: path.clone(),
            cause,
        }
    })?;
    replace_private(&path, &tmp, &json)
}

/// Replaces `path` atomically with `bytes` (mode 0600): written and synced to `tmp` first, then
/// renamed over it, and the rename synced too. Readers see the old file or the new, never half.
pub fn replace_private(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), DeviceError> {
    write_private(tmp, bytes)?;
    std::fs::rename(tmp, path).map_err(io(path))?;
    // The rename itself must survive a power cut.
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Creates (or truncates) `path` with mode 0600 and writes `bytes`, synced.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DeviceError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    // An existing file keeps its mode on open: tighten it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io(path))?;
    }
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Issues credentials for `id` (`SITE/DEVICE`) and returns its secret.
pub fn add(data_dir: &Path, id: &str) -> Result<String, DeviceError> {
    parse_id(id)?;
    let mut devices = load(data_dir)?;
    if devices.contains_key(id) {
        return Err(DeviceError::Exists(id.to_string()));
    }
    let secret = new_secret()?;
    let added_ms = csb_wire::now_ms();
    devices.insert(
        id.to_string(),
        DeviceRecord {
            secret: secret.clone(),
            added_ms,
        },
    );
    save(data_dir, devices)?;
    Ok(secret)
}

/// Withdraws `id`'s credentials: new connections are refused and, once a running hub has
/// noticed (within [`REFRESH`]), the payloads of a connection still open fail verification.
pub fn remove(data_dir: &Path, id: &str) -> Result<(), DeviceError> {
    let mut devices = load(data_dir)?;
    if devices.remove(id).is_none() {
        return Err(DeviceError::Unknown(id.to_string()));
    }
    save(data_dir, devices)
}

/// Constant-time equality: the time taken must not tell how much of a guess was right.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

struct Known {
    secret: String,
    key: SigningKey,
}

/// The running hub's view of `devices.json`, re-read when it changes.
pub struct DeviceRegistry(Watched<String, Known>);

impl DeviceRegistry {
    /// Reads the file now; a broken file is an error (a missing one is an empty registry).
    pub fn open(data_dir: &Path) -> Result<DeviceRegistry, DeviceError> {
        let dir = data_dir.to_path_buf();
        Watched::open(&file_path(data_dir), "device credentials", move || {
            load(&dir).map(known)
        })
        .map(DeviceRegistry)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `username` is a device id with credentials and `password` its secret.
    pub fn authenticate(&self, username: &str, password: &str) -> bool {
        self.check(username, password) == Some(true)
    }

    /// `None` when `username` is no device with credentials; else whether `password` is its
    /// secret.
    pub fn check(&self, username: &str, password: &str) -> Option<bool> {
        self.0.lookup(&username.to_string(), |k| {
            ct_eq(k.secret.as_bytes(), password.as_bytes())
        })
    }

    /// The signing key of `site/device`, when it has credentials.
    pub fn key(&self, site: &str, device: &str) -> Option<SigningKey> {
        self.0.lookup(&format!("{site}/{device}"), |k| k.key)
    }
}

fn known(devices: BTreeMap<String, DeviceRecord>) -> HashMap<String, Known> {
    devices
        .into_iter()
        .map(|(id, r)| {
            let key = signing_key(&r.secret);
            (
                id,
                Known {
                    secret: r.secret,
                    key,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_list_remove_and_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let reg = DeviceRegistry::open(dir.path()).unwrap();
        assert!(reg.is_empty());
        let secret = add(dir.path(), "yuexi/gw-01").unwrap();
        assert_eq!(secret.len(), 64);
        assert!(matches!(
            add(dir.path(), "yuexi/gw-01"),
            Err(DeviceError::Exists(_))
        ));
        for bad in ["gw-01", "yuexi/gw 01", "/gw", "a/b/c"] {
            assert!(
                matches!(add(dir.path(), bad), Err(DeviceError::BadId { .. })),
                "{bad}"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A miss re-reads the changed file.
        std::thread::sleep(crate::support::watched::MISS_REFRESH);
        assert!(reg.authenticate("yuexi/gw-01", &secret));
        assert!(!reg.authenticate("yuexi/gw-01", "wrong"));
        assert!(!reg.authenticate("yuexi/gw-02", &secret));
        assert_eq!(reg.key("yuexi", "gw-01"), Some(signing_key(&secret)));
        let other = add(dir.path(), "yuexi/gw-02").unwrap();
        assert_ne!(other, secret);
        assert_eq!(load(dir.path()).unwrap().len(), 2);
        remove(dir.path(), "yuexi/gw-01").unwrap();
        assert!(matches!(
            remove(dir.path(), "yuexi/gw-01"),
            Err(DeviceError::Unknown(_))
        ));
        std::thread::sleep(REFRESH);
        assert!(!reg.authenticate("yuexi/gw-01", &secret));
        assert!(reg.authenticate("yuexi/gw-02", &other));
    }
}
