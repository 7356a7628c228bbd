//! Where cases live: the [`CaseStore`] trait (a PostgreSQL backend implements it without
//! touching the workflow) and its embedded default, [`SledCases`].
//!
//! A transition is durable before it is acknowledged: [`CaseStore::update`] loads the case,
//! applies the change and writes it in one transaction (a concurrent update of the same case
//! is retried on the newer version, never lost) and flushes before returning. The same
//! transaction keeps two indexes true: open cases by the keys repeats are merged on (problem
//! id, spot) and open cases by when their next timer is due — so a sweep reads only what is
//! due, and a timer's firing is stored with its mark, once.
//!
//! Listings filter a compact summary of every case held in memory (state, department,
//! category, town: ~100 B a case) and read only the page they return, so a filter that
//! matches few of 100,000 cases does not decode them all.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use thiserror::Error;

use super::lifecycle::{Case, Source, State};

#[derive(Debug, Error)]
pub enum CaseStoreError {
    #[error("case store {op}: {cause}")]
    Sled {
        op: &'static str,
        cause: sled::Error,
    },
    #[error("case {id} in the store is damaged: {cause}")]
    Corrupt { id: String, cause: String },
}

/// Which cases a listing wants; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaseFilter {
    pub state: Option<State>,
    pub department: Option<String>,
    pub category: Option<String>,
    pub town: Option<String>,
    /// Where cases came from (Open311 lists citizens' cases only).
    pub source: Option<Source>,
    pub open_only: bool,
}

impl CaseFilter {
    fn matches_summary(&self, s: &Summary) -> bool {
        self.state.is_none_or(|st| s.state == st)
            && (!self.open_only || s.state.is_open())
            && self
                .department
                .as_deref()
                .is_none_or(|d| s.department.as_deref() == Some(d))
            && self.category.as_deref().is_none_or(|k| &*s.category == k)
            && self
                .town
                .as_deref()
                .is_none_or(|t| s.town.as_deref() == Some(t))
            && self.source.is_none_or(|src| s.source == src)
    }

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
            && self.source.is_none_or(|src| c.source == src)
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
    ) -> Result<Updated<T, E>, CaseStoreError> {
        let r = self.update_unsynced(id, change)?;
        if matches!(r, Updated::Done(_)) {
            self.sync()?;
        }
        Ok(r)
    }
    /// [`CaseStore::update`] without making it durable: for a run of changes made durable
    /// together by one [`CaseStore::sync`] (group commit) before anything depends on them.
    fn update_unsynced<T, E>(
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
    /// The open case that holds `key` (see [`Case::merge_keys`]), if any.
    fn open_by_key(&self, key: &str) -> Result<Option<String>, CaseStoreError>;
    /// Ids of open cases whose next timer is due at or before `now`, soonest first.
    fn due(&self, now: i64, limit: usize) -> Result<Vec<String>, CaseStoreError>;
    /// A small value of the workflow's own (the intake's position in the event log).
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, CaseStoreError>;
    /// Durable with the next case write, or [`CaseStore::sync`].
    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), CaseStoreError>;
    /// Makes everything written so far durable.
    fn sync(&self) -> Result<(), CaseStoreError>;
}

/// The embedded case store: sled trees `cases` (id → JSON; ids are ULIDs, so key order is
/// creation order), `case_keys` (merge key → id, open cases only), `case_due` (due time and
/// id → nothing, open cases with a timer ahead) and `case_meta`.
pub struct SledCases {
    db: sled::Db,
    tree: sled::Tree,
    keys: sled::Tree,
    due: sled::Tree,
    meta: sled::Tree,
    /// Every case's summary by id: what listings filter on. Written under its lock together
    /// with the transaction that changes the case, so it never lags behind the store.
    summaries: RwLock<Summaries>,
}

#[derive(Default)]
struct Summaries {
    by_id: BTreeMap<Arc<str>, Summary>,
    names: Names,
}

impl Summaries {
    fn remember(&mut self, case: &Case) {
        let s = summary_of(case, &mut self.names);
        self.by_id.insert(Arc::from(case.id.as_str()), s);
    }
}

/// What a listing filters on. Repeated strings (departments, categories, towns) are shared.
#[derive(Debug, Clone)]
struct Summary {
    state: State,
    source: Source,
    department: Option<Arc<str>>,
    category: Arc<str>,
    town: Option<Arc<str>>,
}

/// Interns the few distinct department, category and town names.
#[derive(Default)]
struct Names(BTreeMap<String, Arc<str>>);

impl Names {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(s.to_string(), a.clone());
        a
    }
}

fn summary_of(c: &Case, names: &mut Names) -> Summary {
    Summary {
        state: c.state,
        source: c.source,
        department: c.department.as_deref().map(|d| names.get(d)),
        category: names.get(&c.category),
        town: c.place.town.as_deref().map(|t| names.get(t)),
    }
}

fn sled_err(op: &'static str) -> impl FnOnce(sled::Error) -> CaseStoreError {
    move |cause| CaseStoreError::Sled { op, cause }
}

/// `case_due` key: the due time (order-preserving for negative times too), then the id.
fn due_key(due: i64, id: &str) -> Vec<u8> {
    let mut k = ((due as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

fn due_of(key: &[u8]) -> Option<i64> {
    let b: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

/// Why a transaction stopped before writing.
enum Stop<E> {
    Refused(E),
    NotFound,
    Exists,
    Corrupt(CaseStoreError),
}

type TxResult<T, E> = Result<T, ConflictableTransactionError<Stop<E>>>;

impl SledCases {
    pub fn open(dir: &Path) -> Result<SledCases, CaseStoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(32 * 1024 * 1024)
            .open()
            .map_err(sled_err("open"))?;
        let tree = db.open_tree("cases").map_err(sled_err("open"))?;
        let keys = db.open_tree("case_keys").map_err(sled_err("open"))?;
        let due = db.open_tree("case_due").map_err(sled_err("open"))?;
        let meta = db.open_tree("case_meta").map_err(sled_err("open"))?;
        let mut summaries = Summaries::default();
        for kv in tree.iter() {
            let (k, v) = kv.map_err(sled_err("open"))?;
            summaries.remember(&Self::decode(&k, &v)?);
        }
        Ok(SledCases {
            db,
            tree,
            keys,
            due,
            meta,
            summaries: RwLock::new(summaries),
        })
    }

    /// Stores a case without making it durable (a bulk import, made durable by one
    /// [`CaseStore::sync`]); `false` if its id exists.
    pub fn import(&self, case: &Case) -> Result<bool, CaseStoreError> {
        self.create_inner(case)
    }

    fn create_inner(&self, case: &Case) -> Result<bool, CaseStoreError> {
        let bytes = Self::encode(case);
        let mut map = self.summaries.write().unwrap_or_else(|p| p.into_inner());
        let r = (&self.tree, &self.keys, &self.due).transaction(|(t, k, d)| {
            if t.get(case.id.as_bytes())?.is_some() {
                return Err(ConflictableTransactionError::Abort(Stop::<()>::Exists));
            }
            t.insert(case.id.as_bytes(), bytes.as_slice())?;
            Self::reindex(k, d, None, case)
        });
        match r {
            Ok(()) => {
                map.remember(case);
                Ok(true)
            }
            Err(e) => match Self::tx_error("create", e)? {
                Stop::Corrupt(e) => Err(e),
                _ => Ok(false),
            },
        }
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

    /// Moves a case's index entries from what `old` had to what `new` has.
    fn reindex<E>(
        keys: &TransactionalTree,
        due: &TransactionalTree,
        old: Option<&Case>,
        new: &Case,
    ) -> TxResult<(), E> {
        let id = new.id.as_str();
        let old_keys = old.map(Case::merge_keys).unwrap_or_default();
        let new_keys = new.merge_keys();
        for k in old_keys.iter().filter(|k| !new_keys.contains(k)) {
            // Only if it still points here (a newer case may hold the spot now).
            if keys.get(k.as_bytes())?.as_deref() == Some(id.as_bytes()) {
                keys.remove(k.as_bytes())?;
            }
        }
        for k in &new_keys {
            keys.insert(k.as_bytes(), id.as_bytes())?;
        }
        let old_due = old.and_then(|c| c.due_ms);
        if old_due != new.due_ms {
            if let Some(d) = old_due {
                due.remove(due_key(d, id))?;
            }
            if let Some(d) = new.due_ms {
                due.insert(due_key(d, id), &[][..])?;
            }
        }
        Ok(())
    }

    fn tx_error<E>(
        op: &'static str,
        e: TransactionError<Stop<E>>,
    ) -> Result<Stop<E>, CaseStoreError> {
        match e {
            TransactionError::Abort(stop) => Ok(stop),
            TransactionError::Storage(cause) => Err(CaseStoreError::Sled { op, cause }),
        }
    }
}

impl CaseStore for SledCases {
    fn create(&self, case: &Case) -> Result<bool, CaseStoreError> {
        let created = self.create_inner(case)?;
        if created {
            self.flush()?;
        }
        Ok(created)
    }

    fn get(&self, id: &str) -> Result<Option<Case>, CaseStoreError> {
        self.tree
            .get(id.as_bytes())
            .map_err(sled_err("get"))?
            .map(|v| Self::decode(id.as_bytes(), &v))
            .transpose()
    }

    fn update_unsynced<T, E>(
        &self,
        id: &str,
        change: impl FnMut(&mut Case) -> Result<T, E>,
    ) -> Result<Updated<T, E>, CaseStoreError> {
        // sled may run the transaction again on a conflict: the change is pure, so rerunning
        // it on the newer version is what compare-and-swap would do.
        let change = RefCell::new(change);
        let changed = RefCell::new(None);
        let mut map = self.summaries.write().unwrap_or_else(|p| p.into_inner());
        let r = (&self.tree, &self.keys, &self.due).transaction(|(t, k, d)| {
            let Some(old_bytes) = t.get(id.as_bytes())? else {
                return Err(ConflictableTransactionError::Abort(Stop::NotFound));
            };
            let old = Self::decode(id.as_bytes(), &old_bytes)
                .map_err(|e| ConflictableTransactionError::Abort(Stop::Corrupt(e)))?;
            let mut case = old.clone();
            let out = (change.borrow_mut())(&mut case)
                .map_err(|e| ConflictableTransactionError::Abort(Stop::Refused(e)))?;
            let new = Self::encode(&case);
            if new != old_bytes.as_ref() {
                t.insert(id.as_bytes(), new)?;
                Self::reindex(k, d, Some(&old), &case)?;
                *changed.borrow_mut() = Some(case);
            } else {
                // Nothing changed (a retried request): nothing to write.
                *changed.borrow_mut() = None;
            }
            Ok(out)
        });
        match r {
            Ok(out) => {
                if let Some(case) = changed.into_inner() {
                    map.remember(&case);
                }
                Ok(Updated::Done(out))
            }
            Err(e) => match Self::tx_error("update", e)? {
                Stop::Refused(e) => Ok(Updated::Refused(e)),
                Stop::NotFound | Stop::Exists => Ok(Updated::NotFound),
                Stop::Corrupt(e) => Err(e),
            },
        }
    }

    fn list(
        &self,
        filter: &CaseFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Case>, CaseStoreError> {
        // The page's ids from the summaries, then the cases themselves.
        let ids: Vec<Arc<str>> = {
            let map = self.summaries.read().unwrap_or_else(|p| p.into_inner());
            use std::ops::Bound;
            let upper = after.map_or(Bound::Unbounded, Bound::Excluded);
            let range = map.by_id.range::<str, _>((Bound::Unbounded, upper));
            range
                .rev()
                .filter(|(_, s)| filter.matches_summary(s))
                .take(limit)
                .map(|(id, _)| id.clone())
                .collect()
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            // Gone meanwhile cannot happen (cases are never deleted); skip rather than fail.
            if let Some(c) = self.get(&id)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn open_by_key(&self, key: &str) -> Result<Option<String>, CaseStoreError> {
        Ok(self
            .keys
            .get(key.as_bytes())
            .map_err(sled_err("get"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn due(&self, now: i64, limit: usize) -> Result<Vec<String>, CaseStoreError> {
        let mut out = Vec::new();
        for kv in self.due.range(..due_key(now.saturating_add(1), "")) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = kv.map_err(sled_err("due"))?;
            if due_of(&k).is_some() {
                out.push(String::from_utf8_lossy(&k[8..]).into_owned());
            }
        }
        Ok(out)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, CaseStoreError> {
        Ok(self
            .meta
            .get(key.as_bytes())
            .map_err(sled_err("meta"))?
            .map(|v| v.to_vec()))
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), CaseStoreError> {
        self.meta
            .insert(key.as_bytes(), value)
            .map_err(sled_err("meta"))?;
        Ok(())
    }

    fn sync(&self) -> Result<(), CaseStoreError> {
        self.flush()
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
            camera: None,
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
        let citizens = CaseFilter {
            source: Some(Source::Citizen),
            ..Default::default()
        };
        assert!(s.list(&citizens, None, 10).unwrap().is_empty());
        let video = CaseFilter {
            source: Some(Source::VideoAi),
            ..Default::default()
        };
        assert_eq!(s.list(&video, None, 10).unwrap().len(), 2);
    }
}
