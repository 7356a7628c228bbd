//! Where cases live: the [`CaseStore`] trait (a PostgreSQL backend implements it without
//! touching the workflow) and its embedded default, [`SledCases`].
//!
//! A transition is durable before it is acknowledged: [`CaseStore::update`] loads the case,
//! applies the change, writes it with a compare-and-swap (a concurrent update of the same case
//! is retried on the newer version, never lost) and flushes before returning.

use std::path::Path;

use thiserror::Error;

use super::lifecycle::{Case, State};

#[derive(Debug, Error)]
pub enum CaseStoreError {
    #[error("case store {op}: {cause}")]
    Sled {
        op: &'static str,
        cause: sled::Error,
    },
    #[error("case {id} in the store is damaged: {cause}")]
    Corrupt { id: String, cause: String },
    #[error("case {id} was changed by others {tries} times in a row; try again")]
    Contended { id: String, tries: u32 },
}

/// Which cases a listing wants; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaseFilter {
    pub state: Option<State>,
    pub department: Option<String>,
    pub category: Option<String>,
    pub town: Option<String>,
    pub open_only: bool,
}

impl CaseFilter {
    pub fn matches(&self, c: &Case) -> bool {
        self.state.is_none_or(|s| c.state == s)
            && (!self.open_only || c.state.is_open())
            && self
                .department
                .as_ref()
                .is_none_or(|d| c.department.as_ref() == Some(d))
            && self.category.as_ref().is_none_or(|k| &c.category == k)
            && self
                .town
                .as_ref()
                .is_none_or(|t| c.place.town.as_ref() == Some(t))
    }
}

/// An update's outcome: the change's own result, or why it was not made.
pub enum Updated<T, E> {
    Done(T),
    /// The change refused (a transition error); nothing was written.
    Refused(E),
    NotFound,
}

pub trait CaseStore: Send + Sync + 'static {
    /// Stores a new case durably; `false` (and nothing written) if its id exists.
    fn create(&self, case: &Case) -> Result<bool, CaseStoreError>;
    fn get(&self, id: &str) -> Result<Option<Case>, CaseStoreError>;
    /// Applies `change` to the stored case and stores the result durably. `change` may run
    /// more than once (on a newer version after a concurrent update) and must be pure.
    fn update<T, E>(
        &self,
        id: &str,
        change: impl FnMut(&mut Case) -> Result<T, E>,
    ) -> Result<Updated<T, E>, CaseStoreError>;
    /// Cases matching `filter`, newest id first, after `after` (an id from a previous page).
    fn list(
        &self,
        filter: &CaseFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Case>, CaseStoreError>;
}

/// Compare-and-swap attempts before an update gives up (each loses only to a newer write).
const CAS_TRIES: u32 = 64;

/// The embedded case store: one sled tree, case id → JSON. Ids are ULIDs, so key order is
/// creation order.
pub struct SledCases {
    db: sled::Db,
    tree: sled::Tree,
}

fn sled_err(op: &'static str) -> impl FnOnce(sled::Error) -> CaseStoreError {
    move |cause| CaseStoreError::Sled { op, cause }
}

impl SledCases {
    pub fn open(dir: &Path) -> Result<SledCases, CaseStoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(32 * 1024 * 1024)
            .open()
            .map_err(sled_err("open"))?;
        let tree = db.open_tree("cases").map_err(sled_err("open"))?;
        Ok(SledCases { db, tree })
    }

    fn decode(id: &[u8], bytes: &[u8]) -> Result<Case, CaseStoreError> {
        serde_json::from_slice(bytes).map_err(|e| CaseStoreError::Corrupt {
            id: String::from_utf8_lossy(id).into_owned(),
            cause: e.to_string(),
        })
    }

    fn encode(case: &Case) -> Vec<u8> {
        // A case is plain data: serialising it cannot fail.
        serde_json::to_vec(case).unwrap_or_default()
    }

    fn flush(&self) -> Result<(), CaseStoreError> {
        self.db.flush().map(|_| ()).map_err(sled_err("flush"))
    }
}

impl CaseStore for SledCases {
    fn create(&self, case: &Case) -> Result<bool, CaseStoreError> {
        let swapped = self
            .tree
            .compare_and_swap(case.id.as_bytes(), None::<&[u8]>, Some(Self::encode(case)))
            .map_err(sled_err("create"))?;
        if swapped.is_err() {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }

    fn get(&self, id: &str) -> Result<Option<Case>, CaseStoreError> {
        self.tree
            .get(id.as_bytes())
            .map_err(sled_err("get"))?
            .map(|v| Self::decode(id.as_bytes(), &v))
            .transpose()
    }

    fn update<T, E>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Case) -> Result<T, E>,
    ) -> Result<Updated<T, E>, CaseStoreError> {
        for _ in 0..CAS_TRIES {
            let Some(old) = self.tree.get(id.as_bytes()).map_err(sled_err("get"))? else {
                return Ok(Updated::NotFound);
            };
            let mut case = Self::decode(id.as_bytes(), &old)?;
            let out = match change(&mut case) {
                Ok(out) => out,
                Err(e) => return Ok(Updated::Refused(e)),
            };
            let new = Self::encode(&case);
            if new == old.as_ref() {
                // Nothing changed (a retried request): nothing to write.
                return Ok(Updated::Done(out));
            }
            let swapped = self
                .tree
                .compare_and_swap(id.as_bytes(), Some(old), Some(new))
                .map_err(sled_err("update"))?;
            if swapped.is_ok() {
                self.flush()?;
                return Ok(Updated::Done(out));
            }
        }
        Err(CaseStoreError::Contended {
            id: id.to_string(),
            tries: CAS_TRIES,
        })
    }

    fn list(
        &self,
        filter: &CaseFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Case>, CaseStoreError> {
        let iter = match after {
            Some(a) => self.tree.range(..a.as_bytes()),
            None => self.tree.iter(),
        };
        let mut out = Vec::new();
        for kv in iter.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv.map_err(sled_err("list"))?;
            let case = Self::decode(&k, &v)?;
            if filter.matches(&case) {
                out.push(case);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::calendar::tests::bj;
    use super::super::config::Governance;
    use super::super::lifecycle::{Action, Actor, NewCase, Place, Role, Source, TransitionError};
    use super::*;

    fn governance() -> Governance {
        Governance::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/governance"))
            .unwrap()
    }

    fn new_case(g: &Governance, id: &str, town: &str) -> Case {
        let new = NewCase {
            id: id.into(),
            source: Source::VideoAi,
            category: "illegal-parking".into(),
            place: Place {
                point: None,
                town: Some(town.into()),
                zone: None,
                grid: None,
                rural: false,
            },
            evidence: vec![],
        };
        Case::report(new, Actor::system(), bj("2026-09-21 09:00"), g).unwrap()
    }

    #[test]
    fn transitions_are_stored_and_survive_a_reopen() {
        let g = governance();
        let dir = tempfile::tempdir().unwrap();
        let op = Actor {
            id: "op".into(),
            role: Role::Operator,
            department: None,
        };
        {
            let s = SledCases::open(dir.path()).unwrap();
            assert!(s.create(&new_case(&g, "01A", "tiantang")).unwrap());
            assert!(
                !s.create(&new_case(&g, "01A", "laibang")).unwrap(),
                "ids are unique"
            );
            assert!(s.create(&new_case(&g, "01B", "laibang")).unwrap());
            let now = bj("2026-09-21 09:05");
            let apply = |a: Action| {
                let op = op.clone();
                let g = &g;
                move |c: &mut Case| c.apply(&op, a.clone(), "", Some("r1"), now, g)
            };
            assert!(matches!(
                s.update("01A", apply(Action::Register)).unwrap(),
                Updated::Done(_)
            ));
            // Retried with the same request id: answered, nothing more stored.
            assert!(matches!(
                s.update("01A", apply(Action::Register)).unwrap(),
                Updated::Done(_)
            ));
            assert!(matches!(
                s.update("01A", apply(Action::Close)).unwrap(),
                Updated::Refused(TransitionError::RequestIdReused(_))
            ));
            assert!(matches!(
                s.update("nope", apply(Action::Register)).unwrap(),
                Updated::NotFound
            ));
        }
        // sled's flusher thread may hold the lock for a moment after the drop.
        let s = (0..100)
            .find_map(|_| {
                SledCases::open(dir.path())
                    .inspect_err(|_| std::thread::sleep(std::time::Duration::from_millis(50)))
                    .ok()
            })
            .expect("reopens once the old handle is gone");
        let c = s.get("01A").unwrap().unwrap();
        assert_eq!(c.state, State::Registered);
        assert_eq!(c.timeline.len(), 2);
        let registered = CaseFilter {
            state: Some(State::Registered),
            ..Default::default()
        };
        let ids = |v: Vec<Case>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(s.list(&registered, None, 10).unwrap()), ["01A"]);
        let all = CaseFilter::default();
        assert_eq!(ids(s.list(&all, None, 10).unwrap()), ["01B", "01A"]);
        assert_eq!(ids(s.list(&all, Some("01B"), 10).unwrap()), ["01A"]);
        let town = CaseFilter {
            town: Some("laibang".into()),
            ..Default::default()
        };
        assert_eq!(ids(s.list(&town, None, 10).unwrap()), ["01B"]);
    }
}
