//! The twin's own sled database (`{data_dir}/twin`), apart from the event store so neither
//! waits on the other's writes:
//!
//! - `history`: `{entity}\0{attr}\0{observed_ms as u64 (sign bit flipped), BE}{seq BE}` →
//!   the value's JSON: one attribute's instances lie together in time order, so a temporal
//!   query is one range scan per attribute.
//! - `by_time`: `{recorded_ms BE}{seq BE}` → the `history` key, for pruning by age without
//!   scanning everything.
//! - `current`: `{entity}\0{attr}` → `{"v": value, "t": observed_ms}`, the latest recorded
//!   value, which restores the live state on restart.
//!
//! Written in batches by the twin task only; sled flushes on its own (every 500 ms) and on
//! shutdown. A crash loses at most that last half second of history, never ingested data.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;
use thiserror::Error;

use super::Observed;

#[derive(Debug, Error)]
pub enum HistoryError {
    #[error("twin history storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("twin history record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// One attribute instance to record.
#[derive(Debug, Clone)]
pub struct Record {
    pub entity: String,
    pub attr: String,
    pub obs: Observed,
    /// It is the attribute's current value (not an older observation filled in).
    pub current: bool,
}

/// An instance read back.
pub type Instance = Observed;

#[derive(Clone)]
pub struct History {
    db: sled::Db,
    history: sled::Tree,
    by_time: sled::Tree,
    current: sled::Tree,
    /// Tie-breaker for instances of one attribute in one millisecond.
    seq: Arc<AtomicU64>,
}

/// Orders negative times before positive ones in unsigned big-endian keys.
fn time_key(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn attr_prefix(entity: &str, attr: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(entity.len() + attr.len() + 18);
    k.extend_from_slice(entity.as_bytes());
    k.push(0);
    k.extend_from_slice(attr.as_bytes());
    k.push(0);
    k
}

fn current_key(entity: &str, attr: &str) -> Vec<u8> {
    let mut k = attr_prefix(entity, attr);
    k.pop();
    k
}

fn corrupt(key: &[u8], reason: impl Into<String>) -> HistoryError {
    HistoryError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        reason: reason.into(),
    }
}

/// A time range query on one attribute.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    /// Inclusive.
    pub from_ms: Option<i64>,
    /// Exclusive.
    pub to_ms: Option<i64>,
    /// Only the last N instances of the range.
    pub last_n: Option<usize>,
}

impl History {
    pub fn open(dir: &Path) -> Result<History, sled::Error> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 * 1024 * 1024)
            .open()?;
        let seq = db.generate_id()?;
        Ok(History {
            history: db.open_tree("history")?,
            by_time: db.open_tree("by_time")?,
            current: db.open_tree("current")?,
            db,
            // Above anything an earlier run used (sled persists generated ids).
            seq: Arc::new(AtomicU64::new(seq << 40)),
        })
    }

    /// Writes one batch of instances (one sled batch per tree).
    pub fn write(&self, records: &[Record], recorded_ms: i64) -> Result<(), HistoryError> {
        let mut h = sled::Batch::default();
        let mut t = sled::Batch::default();
        let mut cur = sled::Batch::default();
        for r in records {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let mut key = attr_prefix(&r.entity, &r.attr);
            key.extend_from_slice(&time_key(r.obs.observed_ms));
            key.extend_from_slice(&seq.to_be_bytes());
            let value =
                serde_json::to_vec(&r.obs.value).map_err(|e| corrupt(&key, e.to_string()))?;
            h.insert(key.clone(), value);
            let mut tk = Vec::with_capacity(16);
            tk.extend_from_slice(&time_key(recorded_ms));
            tk.extend_from_slice(&seq.to_be_bytes());
            t.insert(tk, key);
            if r.current {
                let c = serde_json::json!({"v": r.obs.value, "t": r.obs.observed_ms});
                cur.insert(current_key(&r.entity, &r.attr), c.to_string().into_bytes());
            }
        }
        // History first: an index entry never points at nothing for long.
        self.history.apply_batch(h)?;
        self.by_time.apply_batch(t)?;
        self.current.apply_batch(cur)?;
        Ok(())
    }

    /// Instances of one attribute in time order, at most `cap` (the earliest of the range, or
    /// with `last_n` the latest); the flag says whether more were left out.
    pub fn range(
        &self,
        entity: &str,
        attr: &str,
        r: Range,
        cap: usize,
    ) -> Result<(Vec<Instance>, bool), HistoryError> {
        let prefix = attr_prefix(entity, attr);
        let mut lo = prefix.clone();
        lo.extend_from_slice(&time_key(r.from_ms.unwrap_or(i64::MIN)));
        let mut hi = prefix.clone();
        match r.to_ms {
            Some(to) => hi.extend_from_slice(&time_key(to)),
            None => hi.extend_from_slice(&[0xff; 17]),
        }
        let iter = self.history.range(lo..hi);
        let decode =
            |kv: Result<(sled::IVec, sled::IVec), sled::Error>| -> Result<Instance, HistoryError> {
                let (k, v) = kv?;
                let ts = k
                    .get(prefix.len()..prefix.len() + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(|b| (u64::from_be_bytes(b) ^ (1 << 63)) as i64)
                    .ok_or_else(|| corrupt(&k, "key too short"))?;
                let value: Value =
                    serde_json::from_slice(&v).map_err(|e| corrupt(&k, e.to_string()))?;
                Ok(Instance {
                    value,
                    observed_ms: ts,
                })
            };
        let mut out = Vec::new();
        let mut more = false;
        match r.last_n {
            Some(n) => {
                let take = n.min(cap);
                for kv in iter.rev() {
                    if out.len() == take {
                        // Asking for the last N is not truncation; the cap cutting N is.
                        more = take < n;
                        break;
                    }
                    out.push(decode(kv)?);
                }
                out.reverse();
            }
            None => {
                for kv in iter {
                    if out.len() == cap {
                        more = true;
                        break;
                    }
                    out.push(decode(kv)?);
                }
            }
        }
        Ok((out, more))
    }

    /// The latest recorded value of every attribute: (entity, attr, value).
    pub fn current(&self) -> Result<Vec<(String, String, Observed)>, HistoryError> {
        let mut out = Vec::new();
        for kv in self.current.iter() {
            let (k, v) = kv?;
            let s = String::from_utf8_lossy(&k);
            let Some((entity, attr)) = s.split_once('\0') else {
                return Err(corrupt(&k, "no attribute in key"));
            };
            let j: Value = serde_json::from_slice(&v).map_err(|e| corrupt(&k, e.to_string()))?;
            let Some(t) = j.get("t").and_then(Value::as_i64) else {
                return Err(corrupt(&k, "no time"));
            };
            out.push((
                entity.to_string(),
                attr.to_string(),
                Observed {
                    value: j.get("v").cloned().unwrap_or(Value::Null),
                    observed_ms: t,
                },
            ));
        }
        Ok(out)
    }

    /// Removes instances recorded before `cutoff_ms`, at most 100,000 per call (the next
    /// call continues); returns how many.
    pub fn prune(&self, cutoff_ms: i64) -> Result<u64, HistoryError> {
        const MAX: usize = 100_000;
        let mut h = sled::Batch::default();
        let mut t = sled::Batch::default();
        let mut n = 0u64;
        for kv in self.by_time.range(..time_key(cutoff_ms).to_vec()).take(MAX) {
            let (k, v) = kv?;
            h.remove(v);
            t.remove(k);
            n += 1;
        }
        self.history.apply_batch(h)?;
        self.by_time.apply_batch(t)?;
        Ok(n)
    }

    pub fn flush(&self) -> Result<(), HistoryError> {
        self.db.flush()?;
        Ok(())
    }

    /// Instances stored (for tests and health).
    pub fn len(&self) -> usize {
        self.history.len()
    }

    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(attr: &str, v: f64, t: i64) -> Record {
        Record {
            entity: "urn:ngsi-ld:Sensor:s:g:wl".into(),
            attr: attr.into(),
            obs: Observed {
                value: json!(v),
                observed_ms: t,
            },
            current: true,
        }
    }

    #[test]
    fn ranges_last_n_prune_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let e = "urn:ngsi-ld:Sensor:s:g:wl";
        {
            let h = History::open(dir.path()).unwrap();
            let recs: Vec<Record> = (0..10)
                .map(|i| rec("level", i as f64, 1000 + i * 10))
                .collect();
            h.write(&recs, 5_000).unwrap();
            h.write(&[rec("other", 1.0, 1050)], 9_000).unwrap();
            let (all, more) = h.range(e, "level", Range::default(), 100).unwrap();
            assert_eq!(all.len(), 10);
            assert!(!more);
            // [1020, 1050): 1020, 1030, 1040.
            let r = Range {
                from_ms: Some(1020),
                to_ms: Some(1050),
                last_n: None,
            };
            let (v, _) = h.range(e, "level", r, 100).unwrap();
            assert_eq!(
                v.iter().map(|i| i.observed_ms).collect::<Vec<_>>(),
                [1020, 1030, 1040]
            );
            let (v, more) = h
                .range(
                    e,
                    "level",
                    Range {
                        last_n: Some(2),
                        ..Range::default()
                    },
                    100,
                )
                .unwrap();
            assert_eq!(
                v.iter().map(|i| i.observed_ms).collect::<Vec<_>>(),
                [1080, 1090]
            );
            assert!(!more, "the last N is not a truncation");
            let (v, more) = h
                .range(
                    e,
                    "level",
                    Range {
                        last_n: Some(5),
                        ..Range::default()
                    },
                    3,
                )
                .unwrap();
            assert_eq!(v.len(), 3);
            assert!(more, "the cap cut the last N");
            let (v, more) = h.range(e, "level", Range::default(), 3).unwrap();
            assert_eq!(v.len(), 3);
            assert!(more);
            // The prefix of `level` does not catch `level2`-like names: separate attribute.
            assert_eq!(
                h.range(e, "other", Range::default(), 100).unwrap().0.len(),
                1
            );
            assert_eq!(h.prune(6_000).unwrap(), 10);
            assert_eq!(
                h.range(e, "level", Range::default(), 100).unwrap().0.len(),
                0
            );
            h.flush().unwrap();
        }
        let h = History::open(dir.path()).unwrap();
        assert_eq!(h.len(), 1);
        let cur = h.current().unwrap();
        let level = cur.iter().find(|(_, a, _)| a == "level").unwrap();
        assert_eq!(level.2.value, json!(9.0));
        assert_eq!(level.2.observed_ms, 1090);
    }
}
