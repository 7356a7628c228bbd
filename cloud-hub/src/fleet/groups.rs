//! Device groups: named lists of devices (`SITE/DEVICE`) that rollouts target, e.g. every
//! gateway of one town, or the pilot boxes. Kept in `fleet-groups.json` in the data directory,
//! replaced atomically and synced before the API answers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const FILE: &str = "fleet-groups.json";
/// Most groups, and most devices in one group.
pub const MAX_GROUPS: usize = 1_000;
pub const MAX_MEMBERS: usize = 5_000;

#[derive(Debug, Error)]
pub enum GroupError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("no device group `{0}`")]
    NotFound(String),
    #[error("cannot store {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
}

/// A device group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Group {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `SITE/DEVICE`, in the order rollouts take them.
    pub devices: Vec<String>,
    pub updated_ms: i64,
    pub updated_by: String,
}

pub struct Groups {
    path: PathBuf,
    groups: Mutex<BTreeMap<String, Group>>,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> GroupError {
    GroupError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks a group name: 1–64 letters, digits, `_`, `-`, `.` (it is a URL segment).
pub fn check_name(name: &str) -> Result<(), GroupError> {
    csb_wire::model::check_ident("name", name, 64).map_err(|e| invalid("name", e.to_string()))
}

impl Groups {
    pub fn open(data_dir: &Path) -> Result<Self, GroupError> {
        let path = data_dir.join(FILE);
        let groups = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| GroupError::Read {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(GroupError::Read {
                    path,
                    message: e.to_string(),
                })
            }
        };
        Ok(Groups {
            path,
            groups: Mutex::new(groups),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, all: &BTreeMap<String, Group>) -> Result<(), GroupError> {
        let json = serde_json::to_vec_pretty(all).map_err(|e| GroupError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let tmp = self.path.with_extension("json.tmp");
        crate::ingest::devices::replace_private(&self.path, &tmp, &json).map_err(|e| {
            GroupError::Store {
                path: self.path.clone(),
                message: e.to_string(),
            }
        })
    }

    pub fn list(&self) -> Vec<Group> {
        self.lock().values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<Group> {
        self.lock().get(name).cloned()
    }

    /// Creates or replaces group `name`.
    pub fn put(
        &self,
        name: &str,
        devices: Vec<String>,
        description: Option<String>,
        by: &str,
        now_ms: i64,
    ) -> Result<(Group, bool), GroupError> {
        check_name(name)?;
        if devices.len() > MAX_MEMBERS {
            return Err(invalid("devices", format!("at most {MAX_MEMBERS} devices")));
        }
        if description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 200)
        {
            return Err(invalid("description", "at most 200 characters"));
        }
        let mut seen = BTreeSet::new();
        for (i, d) in devices.iter().enumerate() {
            let ok = d.split_once('/').is_some_and(|(s, dev)| {
                csb_wire::topic::validate_level("site", s).is_ok()
                    && csb_wire::topic::validate_level("device", dev).is_ok()
            });
            if !ok {
                return Err(invalid(
                    format!("devices[{i}]"),
                    format!("`{d}` is not SITE/DEVICE"),
                ));
            }
            if !seen.insert(d.as_str()) {
                return Err(invalid(
                    format!("devices[{i}]"),
                    format!("`{d}` is listed twice"),
                ));
            }
        }
        let mut all = self.lock();
        let created = !all.contains_key(name);
        if created && all.len() >= MAX_GROUPS {
            return Err(invalid("name", format!("at most {MAX_GROUPS} groups")));
        }
        let g = Group {
            name: name.to_string(),
            description,
            devices,
            updated_ms: now_ms,
            updated_by: by.to_string(),
        };
        let mut next = all.clone();
        next.insert(name.to_string(), g.clone());
        self.persist(&next)?;
        *all = next;
        Ok((g, created))
    }

    pub fn remove(&self, name: &str) -> Result<(), GroupError> {
        let mut all = self.lock();
        if !all.contains_key(name) {
            return Err(GroupError::NotFound(name.to_string()));
        }
        let mut next = all.clone();
        next.remove(name);
        self.persist(&next)?;
        *all = next;
        Ok(())
    }
}

impl super::rollout::Groups for Groups {
    fn members(&self, group: &str) -> Option<Vec<String>> {
        self.get(group).map(|g| g.devices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_checked_stored_and_reopened() {
        let d = tempfile::tempdir().unwrap();
        let g = Groups::open(d.path()).unwrap();
        let (_, created) = g
            .put(
                "pilot",
                vec!["yuexi/gw-1".into(), "yuexi/gw-2".into()],
                None,
                "ops",
                1,
            )
            .unwrap();
        assert!(created);
        let e = g
            .put(
                "pilot",
                vec!["yuexi/gw-1".into(), "yuexi/gw-1".into()],
                None,
                "ops",
                2,
            )
            .unwrap_err();
        assert!(e.to_string().starts_with("devices[1]"), "{e}");
        assert!(g.put("../x", vec![], None, "ops", 2).is_err());
        let again = Groups::open(d.path()).unwrap();
        assert_eq!(again.get("pilot").unwrap().devices.len(), 2);
        again.remove("pilot").unwrap();
        assert!(matches!(
            again.remove("pilot"),
            Err(GroupError::NotFound(_))
        ));
    }
}
