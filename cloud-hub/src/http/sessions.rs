//! The web page's sessions, kept by the hub: a session id (the `csb_session` cookie's value)
//! stands for the hash of the token it was signed in with. Only hashes of both are stored
//! (`{data_dir}/sessions.json`), so a restarted hub keeps its wall screens signed in and a
//! leaked file signs no one in. Revoking the token ends its sessions (the token is looked up on
//! every request). The sign-in endpoints are `crate::http::session`; the check of the cookie on
//! every request is `crate::http::auth`'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::http::{header, HeaderMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::http::tokens::{hex, unhex32};

/// The session cookie's name.
pub const COOKIE: &str = "csb_session";
/// How long a session lasts after sign-in (a wall screen signs in about once a month).
pub const LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;
/// Sessions kept at most; beyond it the one closest to expiry goes.
pub const MAX_SESSIONS: usize = 4096;
const FILE: &str = "sessions.json";

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("web sessions file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("web sessions: no randomness for a session id: {0}")]
    Random(String),
}

#[derive(Debug, Clone, Copy)]
struct Kept {
    token: [u8; 32],
    expires_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct SessionsFile {
    sessions: Vec<Row>,
}

#[derive(Serialize, Deserialize)]
struct Row {
    id_sha256: String,
    token_sha256: String,
    expires_ms: i64,
}

/// The signed-in sessions, by the hash of their id.
pub struct Sessions {
    path: PathBuf,
    map: Mutex<HashMap<[u8; 32], Kept>>,
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Reads `{data_dir}/sessions.json`. Sessions are disposable: a missing or unreadable file
    /// means none (everyone signs in again), never a hub that does not start.
    pub fn open(data_dir: &Path, now_ms: i64) -> Sessions {
        let path = data_dir.join(FILE);
        let mut map = HashMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<SessionsFile>(&bytes) {
                Ok(f) => {
                    for r in f.sessions {
                        if let (Some(id), Some(token)) =
                            (unhex32(&r.id_sha256), unhex32(&r.token_sha256))
                        {
                            if r.expires_ms > now_ms {
                                map.insert(
                                    id,
                                    Kept {
                                        token,
                                        expires_ms: r.expires_ms,
                                    },
                                );
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "web sessions file unreadable: every page signs in again"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e,
                "web sessions file unreadable: every page signs in again"),
        }
        Sessions {
            path,
            map: Mutex::new(map),
        }
    }

    /// A new session for the token with hash `token`: its id (the cookie's value), stored.
    pub fn create(&self, token: [u8; 32], now_ms: i64) -> Result<String, SessionError> {
        let mut b = [0u8; 32];
        getrandom::getrandom(&mut b).map_err(|e| SessionError::Random(e.to_string()))?;
        let id = hex(&b);
        let mut map = self.lock();
        map.retain(|_, k| k.expires_ms > now_ms);
        while map.len() >= MAX_SESSIONS {
            let Some(first) = map
                .iter()
                .min_by_key(|(_, k)| k.expires_ms)
                .map(|(h, _)| *h)
            else {
                break;
            };
            map.remove(&first);
        }
        map.insert(
            hash(&id),
            Kept {
                token,
                expires_ms: now_ms + LIFETIME_MS,
            },
        );
        self.save(&map)?;
        Ok(id)
    }

    /// The hash of the token behind session `id`, while it has not expired.
    pub fn lookup(&self, id: &str, now_ms: i64) -> Option<[u8; 32]> {
        if id.len() != 64 {
            return None;
        }
        self.lock()
            .get(&hash(id))
            .filter(|k| k.expires_ms > now_ms)
            .map(|k| k.token)
    }

    /// Signs session `id` out (nothing when it is unknown).
    pub fn remove(&self, id: &str) -> Result<(), SessionError> {
        let mut map = self.lock();
        if map.remove(&hash(id)).is_some() {
            self.save(&map)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Kept>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, map: &HashMap<[u8; 32], Kept>) -> Result<(), SessionError> {
        let file = SessionsFile {
            sessions: map
                .iter()
                .map(|(id, k)| Row {
                    id_sha256: hex(id),
                    token_sha256: hex(&k.token),
                    expires_ms: k.expires_ms,
                })
                .collect(),
        };
        let fail = |reason: String| SessionError::File {
            path: self.path.clone(),
            reason,
        };
        let json = serde_json::to_vec(&file).map_err(|e| fail(e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        crate::ingest::devices::replace_private(&self.path, &tmp, &json)
            .map_err(|e| fail(e.to_string()))
    }
}

/// The session id in the request's `Cookie` headers, if any.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_last_survive_a_restart_and_end() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sessions::open(dir.path(), 1_000);
        let t = [7u8; 32];
        let id = s.create(t, 1_000).unwrap();
        assert_eq!(s.lookup(&id, 2_000), Some(t));
        assert_eq!(s.lookup(&"0".repeat(64), 2_000), None);
        // Only hashes are on disk.
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!text.contains(&id));
        let again = Sessions::open(dir.path(), 3_000);
        assert_eq!(again.lookup(&id, 3_000), Some(t));
        assert_eq!(again.lookup(&id, 1_000 + LIFETIME_MS), None, "expired");
        again.remove(&id).unwrap();
        assert_eq!(Sessions::open(dir.path(), 3_000).lookup(&id, 3_000), None);
        // A broken file is no session, not a failure.
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        assert_eq!(Sessions::open(dir.path(), 3_000).lookup(&id, 3_000), None);
    }
}
