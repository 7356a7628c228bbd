//! HTTP API tokens: issued by `cloud-hub token add`, checked by the API on every request when
//! `[auth] http = "required"` (see `docs/wire.md`, HTTP API access).
//!
//! Kept in `{data_dir}/tokens.json` (mode 0600) beside `devices.json`, for the same reasons: the
//! admin commands must work while the hub holds sled's lock, the file is replaced atomically, and
//! a running hub re-reads it within [`REFRESH`] (at once on an unknown token), so `token add` and
//! `token revoke` need no restart. One admin command at a time.
//!
//! A token is `csb_` followed by 32 bytes from the OS random source as 64 hex digits. Only its
//! SHA-256 is stored: a leaked file (or backup) does not hand out API access. A plain hash (no
//! salt, no slow KDF) is enough because the token is a high-entropy random secret, not a
//! password; for the same reason lookup by hash in a map leaks nothing useful through timing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::ingest::devices::{self, DeviceError};
use crate::support::watched::Watched;

/// The token file in the hub's data directory.
pub const TOKENS_FILE: &str = "tokens.json";
/// Every token starts with this, so a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "csb_";
/// A revoked token stops working within this.
pub use crate::support::watched::REFRESH;
/// Longest token name.
const MAX_NAME: usize = 64;

#[derive(Debug, Error)]
pub enum TokenError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not an API token file: {cause}")]
    Parse {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("token name `{name}`: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error(
        "unknown role `{0}` (valid roles: viewer, inspector, handler, operator, supervisor, admin)"
    )]
    BadRole(String),
    #[error("token `{name}`: {reason}")]
    Department { name: String, reason: String },
    #[error("a token named `{name}` already exists in {path}; `cloud-hub token revoke {name}` it first or pick another name")]
    Exists { name: String, path: PathBuf },
    #[error("no token named `{name}` in {path}")]
    Unknown { name: String, path: PathBuf },
    /// The shared file helpers and the OS random source (from [`devices`]).
    #[error(transparent)]
    Shared(#[from] DeviceError),
}

/// What a token may do. For the data API the roles form levels ([`Role::level`]): reads
/// (viewer, inspector, handler, supervisor), writes (operator), management (admin). In the case
/// workflow each role has its own actions (`cases::lifecycle`): an inspector reports and
/// verifies, an operator registers and dispatches, a handler works its department's cases, a
/// supervisor approves extensions and suspensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "TokenRole")]
pub enum Role {
    /// Reads: events, telemetry, quarantine, devices, snapshots, metrics, cases (leaders).
    Viewer,
    /// 监督员: reads; reports and verifies cases.
    Inspector,
    /// A department's handler: reads; works that department's cases only.
    Handler,
    /// Viewer, plus changes to data (write endpoints); 受理/立案/派遣/核查 of cases.
    Operator,
    /// 值班长: reads; approves case extensions and suspensions, 督办.
    Supervisor,
    /// Everything, the management of the hub included.
    Admin,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Viewer,
        Role::Inspector,
        Role::Handler,
        Role::Operator,
        Role::Supervisor,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Inspector => "inspector",
            Role::Handler => "handler",
            Role::Operator => "operator",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }

    /// Its level for the data API: 0 reads, 1 writes, 2 management.
    pub fn level(self) -> u8 {
        match self {
            Role::Viewer | Role::Inspector | Role::Handler | Role::Supervisor => 0,
            Role::Operator => 1,
            Role::Admin => 2,
        }
    }

    /// Whether it may do what `needed` may (on the data API's levels).
    pub fn covers(self, needed: Role) -> bool {
        self.level() >= needed.level()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Role, TokenError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| TokenError::BadRole(s.chars().take(64).collect()))
    }
}

/// One token's entry in the file: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// SHA-256 of the whole token (`csb_…`), lowercase hex.
    pub sha256: String,
    pub role: Role,
    /// A handler's department (a governance department id); only handlers have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    /// When `token add` issued it, Unix ms.
    pub created_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    /// Name → record; a BTreeMap keeps the file sorted for people reading it.
    tokens: BTreeMap<String, TokenRecord>,
}

pub fn file_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKENS_FILE)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |cause| TokenError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// SHA-256 of `token`, as stored.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Names are shown in `token list` and logs: keep them short and plain.
fn check_name(name: &str) -> Result<(), TokenError> {
    let bad = |reason| TokenError::BadName {
        name: name.chars().take(MAX_NAME + 8).collect(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(bad("must be 1..=64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(bad("only letters, digits, `-`, `_` and `.` are allowed"));
    }
    Ok(())
}

/// Every token, by name; a missing file means none.
pub fn load(data_dir: &Path) -> Result<BTreeMap<String, TokenRecord>, TokenError> {
    let path = file_path(data_dir);
    let file = match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice::<TokensFile>(&bytes).map_err(|cause| TokenError::Parse {
                path: path.clone(),
                cause,
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io(&path)(e)),
    };
    // A hand-edited hash that cannot match anything is a mistake worth naming.
    for (name, r) in &file.tokens {
        if unhex32(&r.sha256).is_none() {
            return Err(TokenError::Parse {
                path,
                cause: serde::de::Error::custom(format!(
                    "token `{name}`: field `sha256` is not 64 hex digits"
                )),
            });
        }
    }
    Ok(file.tokens)
}

/// Writes the file atomically, readable by its owner only.
fn save(data_dir: &Path, tokens: BTreeMap<String, TokenRecord>) -> Result<(), TokenError> {
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let path = file_path(data_dir);
    let tmp = data_dir.join(format!("{TOKENS_FILE}.tmp"));
    let json =
        serde_json::to_vec_pretty(&TokensFile { tokens }).map_err(|cause| TokenError::Parse {
            path: path.clone(),
            cause,
        })?;
    Ok(devices::replace_private(&path, &tmp, &json)?)
}

/// Issues a token named `name` with `role` and returns it; only its hash is kept, so this is
/// the one time it can be shown.
pub fn add(data_dir: &Path, name: &str, role: Role) -> Result<String, TokenError> {
    add_with(data_dir, name, role, None)
}

/// [`add`] with a handler's department (required for a handler, refused for the others).
pub fn add_with(
    data_dir: &Path,
    name: &str,
    role: Role,
    department: Option<&str>,
) -> Result<String, TokenError> {
    check_name(name)?;
    let bad = |reason: &str| TokenError::Department {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    match (role, department) {
        (Role::Handler, None) => {
            return Err(bad("a handler works for one department: give --department"))
        }
        (Role::Handler, Some(d)) if d.is_empty() || d.len() > MAX_NAME => {
            return Err(bad("--department must be 1..=64 characters"))
        }
        (Role::Handler, Some(_)) | (_, None) => {}
        (_, Some(_)) => return Err(bad("only a handler has a department")),
    }
    let mut tokens = load(data_dir)?;
    if tokens.contains_key(name) {
        return Err(TokenError::Exists {
            name: name.to_string(),
            path: file_path(data_dir),
        });
    }
    let token = format!("{TOKEN_PREFIX}{}", devices::new_secret()?);
    let created_ms = csb_wire::now_ms();
    tokens.insert(
        name.to_string(),
        TokenRecord {
            sha256: hex(&hash_token(&token)),
            role,
            department: department.map(str::to_string),
            created_ms,
        },
    );
    save(data_dir, tokens)?;
    Ok(token)
}

/// Revokes the token named `name`; a running hub refuses it within [`REFRESH`].
pub fn revoke(data_dir: &Path, name: &str) -> Result<(), TokenError> {
    let mut tokens = load(data_dir)?;
    if tokens.remove(name).is_none() {
        return Err(TokenError::Unknown {
            name: name.to_string(),
            path: file_path(data_dir),
        });
    }
    save(data_dir, tokens)
}

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    /// A handler's department.
    pub department: Option<String>,
}

/// The running hub's view of `tokens.json`, re-read when it changes.
pub struct TokenRegistry(Watched<[u8; 32], TokenInfo>);

impl TokenRegistry {
    /// Reads the file now; a broken file is an error (a missing one is an empty registry).
    pub fn open(data_dir: &Path) -> Result<TokenRegistry, TokenError> {
        let dir = data_dir.to_path_buf();
        Watched::open(&file_path(data_dir), "API tokens", move || {
            load(&dir).map(index)
        })
        .map(TokenRegistry)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name and role of `token`, when it is a token issued and not revoked.
    pub fn authenticate(&self, token: &str) -> Option<TokenInfo> {
        self.authenticate_hashed(token).map(|(_, who)| who)
    }

    /// [`TokenRegistry::authenticate`], with the token's hash (what a web session keeps).
    pub fn authenticate_hashed(&self, token: &str) -> Option<([u8; 32], TokenInfo)> {
        // Not ours by shape: no need to hash it or look at the file.
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 256 {
            return None;
        }
        let h = hash_token(token);
        self.0.lookup(&h, TokenInfo::clone).map(|who| (h, who))
    }

    /// Who the token with hash `h` is, while it is issued and not revoked.
    pub fn by_hash(&self, h: &[u8; 32]) -> Option<TokenInfo> {
        self.0.lookup(h, TokenInfo::clone)
    }
}

fn index(tokens: BTreeMap<String, TokenRecord>) -> HashMap<[u8; 32], TokenInfo> {
    tokens
        .into_iter()
        .filter_map(|(name, r)| {
            let info = TokenInfo {
                name,
                role: r.role,
                department: r.department,
            };
            Some((unhex32(&r.sha256)?, info))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Operator.covers(Role::Viewer) && Role::Admin.covers(Role::Operator));
        assert!(!Role::Handler.covers(Role::Operator) && Role::Supervisor.covers(Role::Viewer));
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        let e = "root".parse::<Role>().unwrap_err().to_string();
        assert!(
            e.contains("root")
                && e.contains("viewer, inspector, handler, operator, supervisor, admin"),
            "{e}"
        );
    }

    #[test]
    fn add_list_revoke_and_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let reg = TokenRegistry::open(dir.path()).unwrap();
        assert!(reg.is_empty());
        let viewer = add(dir.path(), "grafana", Role::Viewer).unwrap();
        assert!(viewer.starts_with(TOKEN_PREFIX), "{viewer}");
        assert_eq!(viewer.len(), TOKEN_PREFIX.len() + 64);
        let e = add(dir.path(), "grafana", Role::Admin).unwrap_err();
        assert!(matches!(e, TokenError::Exists { .. }), "{e}");
        assert!(e.to_string().contains("tokens.json"), "{e}");
        for bad in ["", "a b", "x/y", &"n".repeat(65)] {
            assert!(
                matches!(
                    add(dir.path(), bad, Role::Viewer),
                    Err(TokenError::BadName { .. })
                ),
                "{bad}"
            );
        }
        let ops = add(dir.path(), "ops-desk", Role::Operator).unwrap();
        assert_ne!(ops, viewer);

        let listed = load(dir.path()).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed["grafana"].role, Role::Viewer);
        assert_eq!(listed["ops-desk"].role, Role::Operator);
        assert!(listed["grafana"].created_ms > 0);

        // On disk: the hashes, never a token; owner-only.
        let text = std::fs::read_to_string(file_path(dir.path())).unwrap();
        assert!(!text.contains(&viewer) && !text.contains(&viewer[TOKEN_PREFIX.len()..]));
        assert!(text.contains(&hex(&hash_token(&viewer))), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Hot reload: a miss re-reads the changed file.
        std::thread::sleep(crate::support::watched::MISS_REFRESH);
        let who = reg.authenticate(&viewer).unwrap();
        assert_eq!((who.name.as_str(), who.role), ("grafana", Role::Viewer));
        assert_eq!(reg.authenticate(&ops).unwrap().role, Role::Operator);
        assert_eq!(reg.authenticate("csb_nope"), None);
        assert_eq!(reg.authenticate(&viewer[TOKEN_PREFIX.len()..]), None);
        assert_eq!(reg.authenticate(""), None);

        revoke(dir.path(), "grafana").unwrap();
        let e = revoke(dir.path(), "grafana").unwrap_err();
        assert!(matches!(e, TokenError::Unknown { .. }), "{e}");
        // A hit keeps being served from memory for at most REFRESH.
        std::thread::sleep(REFRESH);
        assert_eq!(reg.authenticate(&viewer), None);
        assert_eq!(reg.authenticate(&ops).unwrap().name, "ops-desk");
    }

    #[test]
    fn broken_file_is_named_and_keeps_previous_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let t = add(dir.path(), "a", Role::Admin).unwrap();
        let reg = TokenRegistry::open(dir.path()).unwrap();
        std::fs::write(
            file_path(dir.path()),
            "{\"tokens\":{\"a\":{\"sha256\":\"zz\",\"role\":\"admin\",\"created_ms\":1}}}",
        )
        .unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tokens.json") && e.contains("sha256"), "{e}");
        assert!(TokenRegistry::open(dir.path()).is_err());
        std::thread::sleep(REFRESH);
        assert_eq!(reg.authenticate(&t).unwrap().role, Role::Admin);
    }
}
