//! One-time enrolment tokens: how a new roadside box gets its device credentials without anyone
//! copying a secret by hand. `cloud-hub device enrol SITE/DEVICE` issues a token (single use,
//! expiring, 24 h by default); the technician runs `edge-agent provision --hub URL --token T` at
//! the box, which exchanges it once, over `POST /api/v1/provision`, for the device's secret.
//!
//! Kept in `{data_dir}/enrolments.json` (mode 0600, replaced atomically) as SHA-256 hashes: the
//! token itself is printed once and never stored. Issuing and redeeming hold an exclusive lock
//! on `enrolments.lock`, so the admin command and the running hub never lose each other's
//! changes, and a token can be redeemed once even by two boxes racing with it. A redeemed token
//! is marked used only after the credentials are on disk; a crash between the two leaves the
//! device with credentials, so the token's second use is refused all the same (`Exists`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::ingest::devices::{self, DeviceError};

pub const ENROLMENTS_FILE: &str = "enrolments.json";
const LOCK_FILE: &str = "enrolments.lock";
/// How long a token stays valid by default.
pub const DEFAULT_TTL_MS: i64 = 24 * 3_600_000;
/// Tokens start with this, so a pasted one is recognised (and never taken for an API token).
pub const TOKEN_PREFIX: &str = "csbe_";
/// Used and expired entries are forgotten this long after (a refusal can still say why).
const KEEP_MS: i64 = 30 * 86_400_000;

#[derive(Debug, Error)]
pub enum EnrolError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not an enrolment file: {cause}")]
    Parse {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error(
        "not an enrolment token of this hub (ask for one: `cloud-hub device enrol SITE/DEVICE`)"
    )]
    Unknown,
    #[error(
        "the enrolment token for `{device}` was already used (at {at_ms} ms); ask for a new one"
    )]
    Used { device: String, at_ms: i64 },
    #[error("the enrolment token for `{device}` expired (at {at_ms} ms); ask for a new one")]
    Expired { device: String, at_ms: i64 },
    #[error("this enrolment token is for `{token_for}`, not `{asked}`: check the box's [agent] site and device, or ask for its own token (the token stays valid)")]
    WrongDevice { token_for: String, asked: String },
    #[error("a token's lifetime must be positive, not {0} ms")]
    BadTtl(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Enrolment {
    device: String,
    created_ms: i64,
    expires_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    used_ms: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct EnrolmentsFile {
    /// SHA-256 of the token, hex → its enrolment.
    enrolments: BTreeMap<String, Enrolment>,
}

/// A token issued by [`issue`].
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub device: String,
    pub expires_ms: i64,
}

fn hash(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EnrolError + '_ {
    move |cause| EnrolError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Runs `f` on the enrolments under the exclusive lock, saving them when it asks to.
fn with_file<T>(
    data_dir: &Path,
    f: impl FnOnce(&mut EnrolmentsFile) -> Result<(T, bool), EnrolError>,
) -> Result<T, EnrolError> {
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let lock_path = data_dir.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    lock_exclusive(&lock).map_err(io(&lock_path))?;
    let path = data_dir.join(ENROLMENTS_FILE);
    let mut file = match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice::<EnrolmentsFile>(&bytes).map_err(|cause| EnrolError::Parse {
                path: path.clone(),
                cause,
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => EnrolmentsFile::default(),
        Err(e) => return Err(io(&path)(e)),
    };
    let (out, changed) = f(&mut file)?;
    if changed {
        let json = serde_json::to_vec_pretty(&file).map_err(|cause| EnrolError::Parse {
            path: path.clone(),
            cause,
        })?;
        let tmp = data_dir.join(format!("{ENROLMENTS_FILE}.tmp"));
        devices::replace_private(&path, &tmp, &json)?;
    }
    // The lock goes with the file handle.
    drop(lock);
    Ok(out)
}

#[cfg(unix)]
fn lock_exclusive(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function borrows; no memory is passed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn lock_exclusive(_: &std::fs::File) -> std::io::Result<()> {
    Ok(())
}

/// Issues a one-time token for `id` (`SITE/DEVICE`), valid for `ttl_ms` from `now_ms`. Refused
/// when the device already has credentials.
pub fn issue(data_dir: &Path, id: &str, ttl_ms: i64, now_ms: i64) -> Result<Issued, EnrolError> {
    devices::parse_id(id)?;
    if ttl_ms <= 0 {
        return Err(EnrolError::BadTtl(ttl_ms));
    }
    if devices::load(data_dir)?.contains_key(id) {
        return Err(DeviceError::Exists(id.to_string()).into());
    }
    let token = format!("{TOKEN_PREFIX}{}", devices::new_secret()?);
    let expires_ms = now_ms.saturating_add(ttl_ms);
    with_file(data_dir, |f| {
        f.enrolments
            .retain(|_, e| e.used_ms.unwrap_or(e.expires_ms).saturating_add(KEEP_MS) > now_ms);
        f.enrolments.insert(
            hash(&token),
            Enrolment {
                device: id.to_string(),
                created_ms: now_ms,
                expires_ms,
                used_ms: None,
            },
        );
        Ok(((), true))
    })?;
    Ok(Issued {
        token,
        device: id.to_string(),
        expires_ms,
    })
}

/// Exchanges `token` for its device's new credentials: `(SITE/DEVICE, secret)`. Once only, and
/// only before it expires. With `expect` (the box's own `SITE/DEVICE`), a token issued for
/// another device is refused without being used up.
pub fn redeem(
    data_dir: &Path,
    token: &str,
    expect: Option<&str>,
    now_ms: i64,
) -> Result<(String, String), EnrolError> {
    let key = hash(token);
    with_file(data_dir, |f| {
        let e = f.enrolments.get_mut(&key).ok_or(EnrolError::Unknown)?;
        if let Some(asked) = expect.filter(|a| *a != e.device) {
            return Err(EnrolError::WrongDevice {
                token_for: e.device.clone(),
                asked: asked.to_string(),
            });
        }
        if let Some(at_ms) = e.used_ms {
            return Err(EnrolError::Used {
                device: e.device.clone(),
                at_ms,
            });
        }
        if now_ms > e.expires_ms {
            return Err(EnrolError::Expired {
                device: e.device.clone(),
                at_ms: e.expires_ms,
            });
        }
        let secret = devices::add(data_dir, &e.device)?;
        e.used_ms = Some(now_ms);
        Ok(((e.device.clone(), secret), true))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_once_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let t = issue(dir.path(), "yuexi/gw-07", 1_000, 10_000).unwrap();
        assert!(t.token.starts_with(TOKEN_PREFIX));
        let raw = std::fs::read_to_string(dir.path().join(ENROLMENTS_FILE)).unwrap();
        assert!(!raw.contains(&t.token), "only its hash is stored");
        assert!(matches!(
            redeem(dir.path(), "csbe_nonesuch", None, 10_001),
            Err(EnrolError::Unknown)
        ));
        let wrong = redeem(dir.path(), &t.token, Some("yuexi/gw-99"), 10_400).unwrap_err();
        assert!(matches!(wrong, EnrolError::WrongDevice { .. }), "{wrong}");
        let (id, secret) = redeem(dir.path(), &t.token, Some("yuexi/gw-07"), 10_500).unwrap();
        assert_eq!(id, "yuexi/gw-07");
        assert_eq!(devices::load(dir.path()).unwrap()[&id].secret, secret);
        let again = redeem(dir.path(), &t.token, None, 10_600).unwrap_err();
        assert!(
            matches!(again, EnrolError::Used { at_ms: 10_500, .. }),
            "{again}"
        );
        // The device has credentials now: no new token for it.
        assert!(matches!(
            issue(dir.path(), "yuexi/gw-07", 1_000, 10_700),
            Err(EnrolError::Device(DeviceError::Exists(_)))
        ));

        let late = issue(dir.path(), "yuexi/gw-08", 1_000, 20_000).unwrap();
        let e = redeem(dir.path(), &late.token, None, 21_001).unwrap_err();
        assert!(
            matches!(e, EnrolError::Expired { at_ms: 21_000, .. }),
            "{e}"
        );
        assert!(!devices::load(dir.path())
            .unwrap()
            .contains_key("yuexi/gw-08"));
        assert!(issue(dir.path(), "bad id", 1_000, 0).is_err());
        assert!(issue(dir.path(), "yuexi/gw-09", 0, 0).is_err());
    }

    #[test]
    fn racing_redeems_give_the_credentials_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = issue(dir.path(), "yuexi/gw-race", 60_000, 0).unwrap();
        let wins: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| redeem(dir.path(), &t.token, None, 1).is_ok()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap() as usize)
                .sum()
        });
        assert_eq!(wins, 1);
    }
}
