//! A lookup table kept in a small file that admin commands rewrite while the hub runs
//! (`devices.json`, `tokens.json`): re-read when the file changes, so adding or withdrawing a
//! credential needs no restart.
//!
//! The file's (modification time, length) is looked at at most every [`REFRESH`], and after a
//! lookup miss at most every [`MISS_REFRESH`]: a credential added a moment ago works at once, and
//! a flood of unknown ones costs one `stat` per interval, not one per attempt. Admin commands
//! replace the file atomically (rename), which changes the stamp.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

/// How often a running hub looks at the file's stamp.
pub const REFRESH: Duration = Duration::from_secs(1);
/// After a miss, how old the last look may be before the file is looked at again.
pub const MISS_REFRESH: Duration = Duration::from_millis(50);

/// What identifies a version of the file.
type Stamp = Option<(SystemTime, u64)>;

/// Reads and indexes the file; its error is logged when a reload fails.
type Loader<K, V> = Box<dyn Fn() -> Result<HashMap<K, V>, String> + Send + Sync>;

struct State<K, V> {
    stamp: Stamp,
    checked: Instant,
    map: HashMap<K, V>,
}

pub struct Watched<K, V> {
    path: PathBuf,
    /// Names the contents in log lines, e.g. "device credentials".
    what: &'static str,
    load: Loader<K, V>,
    state: RwLock<State<K, V>>,
}

impl<K: Eq + Hash, V> Watched<K, V> {
    /// Loads `path` with `load` now; an error there is the caller's (a broken file at start-up
    /// must stop the hub). Later reloads that fail keep the previous table: a typo must not
    /// lock every device or user out; a withdrawal only waits until the file is fixed.
    pub fn open<E: std::fmt::Display>(
        path: &Path,
        what: &'static str,
        load: impl Fn() -> Result<HashMap<K, V>, E> + Send + Sync + 'static,
    ) -> Result<Self, E> {
        let stamp = stamp(path);
        let map = load()?;
        Ok(Watched {
            path: path.to_path_buf(),
            what,
            load: Box::new(move || load().map_err(|e| e.to_string())),
            state: RwLock::new(State {
                stamp,
                checked: Instant::now(),
                map,
            }),
        })
    }

    pub fn len(&self) -> usize {
        self.read(|s| s.map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `f` of the entry for `key`, looking at the file first when it is due.
    pub fn lookup<T>(&self, key: &K, f: impl Fn(&V) -> T) -> Option<T> {
        let (found, age) = self.read(|s| (s.map.get(key).map(&f), s.checked.elapsed()));
        if age >= REFRESH || (found.is_none() && age >= MISS_REFRESH) {
            self.refresh();
            return self.read(|s| s.map.get(key).map(&f));
        }
        found
    }

    fn read<T>(&self, f: impl FnOnce(&State<K, V>) -> T) -> T {
        // A panic elsewhere while holding the lock leaves consistent data: keep serving.
        let g = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&g)
    }

    /// Re-reads the file if its stamp changed (logged once per change).
    fn refresh(&self) {
        let now_stamp = stamp(&self.path);
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        s.checked = Instant::now();
        if now_stamp == s.stamp {
            return;
        }
        s.stamp = now_stamp;
        match (self.load)() {
            Ok(map) => {
                s.map = map;
                tracing::info!(entries = s.map.len(), file = %self.path.display(), "{} reloaded", self.what);
            }
            Err(e) => tracing::error!(
                error = %e,
                "{} not reloaded; keeping the previous ones",
                self.what
            ),
        }
    }
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_on_change_keeps_the_old_table_on_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "a=1\n").unwrap();
        let p = path.clone();
        let load = move || -> Result<HashMap<String, u32>, String> {
            let text = std::fs::read_to_string(&p).map_err(|e| e.to_string())?;
            text.lines()
                .map(|l| {
                    let (k, v) = l.split_once('=').ok_or("no =")?;
                    Ok((k.to_string(), v.parse().map_err(|_| "not a number")?))
                })
                .collect()
        };
        let w = Watched::open(&path, "test entries", load).unwrap();
        assert_eq!(w.lookup(&"a".into(), |v| *v), Some(1));
        // A new key is found on the miss, without waiting for REFRESH.
        std::fs::write(&path, "a=1\nbb=2\n").unwrap();
        std::thread::sleep(MISS_REFRESH);
        assert_eq!(w.lookup(&"bb".into(), |v| *v), Some(2));
        // A broken file keeps what was there.
        std::fs::write(&path, "garbage that does not parse\n").unwrap();
        std::thread::sleep(REFRESH);
        assert_eq!(w.lookup(&"bb".into(), |v| *v), Some(2));
        assert_eq!(w.len(), 2);
    }
}
