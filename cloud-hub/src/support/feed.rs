//! A numbered change feed for Server-Sent Events streams (the twin's, the cases'): a bounded
//! broadcast that never holds the publisher up (a subscriber that falls behind is told how much
//! it missed), the newest changes kept for `Last-Event-ID` resumption, and a closing signal that
//! ends the streams at shutdown.
//!
//! Positions start at the boot time in microseconds, so a position from before a restart is
//! recognised as older than anything kept (its client is told it missed changes) instead of
//! being taken for a position of this boot.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};

/// Something with a position in a feed.
pub trait Numbered: Send + Sync + 'static {
    fn seq(&self) -> u64;
}

pub struct Feed<T> {
    tx: broadcast::Sender<Arc<T>>,
    /// The newest changes, oldest first, and the next position; one lock, so numbering and
    /// publishing happen in the same order.
    recent: Mutex<(VecDeque<Arc<T>>, u64)>,
    kept: usize,
    boot_seq: u64,
    closing: watch::Sender<bool>,
}

impl<T: Numbered> Feed<T> {
    /// A feed whose subscribers may fall `capacity` changes behind, keeping the newest `kept`.
    pub fn new(capacity: usize, kept: usize) -> Feed<T> {
        let boot_seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Feed {
            tx: broadcast::channel(capacity.max(1)).0,
            recent: Mutex::new((VecDeque::with_capacity(kept), boot_seq)),
            kept,
            boot_seq,
            closing: watch::channel(false).0,
        }
    }

    /// The first position of this boot (changes numbered by their maker start here).
    pub fn boot_seq(&self) -> u64 {
        self.boot_seq
    }

    /// Publishes changes numbered by their maker (ascending, from [`Feed::boot_seq`] on).
    pub fn publish(&self, changes: &[Arc<T>]) {
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for c in changes {
            self.keep(&mut r.0, c.clone());
            r.1 = r.1.max(c.seq() + 1);
            // No subscriber is no error: nobody is watching.
            let _ = self.tx.send(c.clone());
        }
    }

    /// Numbers a change (the next position) and publishes it.
    pub fn publish_next(&self, make: impl FnOnce(u64) -> T) -> Arc<T> {
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let c = Arc::new(make(r.1));
        r.1 += 1;
        self.keep(&mut r.0, c.clone());
        let _ = self.tx.send(c.clone());
        c
    }

    fn keep(&self, recent: &mut VecDeque<Arc<T>>, c: Arc<T>) {
        if recent.len() == self.kept {
            recent.pop_front();
        }
        if self.kept > 0 {
            recent.push_back(c);
        }
    }

    /// The newest position handed out so far (one before [`Feed::boot_seq`] when none was):
    /// where a client that has read everything stands.
    pub fn last(&self) -> u64 {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.1.saturating_sub(1)
    }

    /// A receiver of future changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<T>> {
        self.tx.subscribe()
    }

    /// The kept changes after `seq`, and whether some after it are no longer kept (or `seq` is
    /// from before this boot).
    pub fn recent_after(&self, seq: u64) -> (Vec<Arc<T>>, bool) {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let missed = match r.0.front() {
            Some(first) => first.seq() > seq.saturating_add(1),
            // Nothing kept: only a position before the next one has missed anything.
            None => seq.saturating_add(1) < r.1,
        };
        (
            r.0.iter().filter(|c| c.seq() > seq).cloned().collect(),
            missed,
        )
    }

    /// Resolves once [`Feed::close`] was called: streams end then, so HTTP shutdown need not
    /// wait for them.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct N(u64);
    impl Numbered for N {
        fn seq(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn numbered_kept_resumable_and_a_laggard_is_told() {
        let f: Feed<N> = Feed::new(4, 8);
        let boot = f.boot_seq();
        let mut rx = f.subscribe();
        for _ in 0..10 {
            f.publish_next(N);
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6))
        ));
        assert_eq!(rx.try_recv().unwrap().0, boot + 6);
        let (after, missed) = f.recent_after(boot + 5);
        assert_eq!(after.len(), 4);
        assert!(!missed);
        let (after, missed) = f.recent_after(boot);
        assert_eq!(after.len(), 8);
        assert!(missed, "positions boot+1 (the second) is no longer kept");
        // A position from before this boot missed everything kept.
        assert!(f.recent_after(boot - 1_000_000).1);
        assert!(!f.recent_after(boot + 9).1);
        assert!(f.recent_after(boot + 9).0.is_empty());
    }

    #[test]
    fn an_empty_feed_knows_only_older_boots_missed_something() {
        let f: Feed<N> = Feed::new(4, 8);
        assert!(!f.recent_after(f.boot_seq() - 1).1);
        assert!(f.recent_after(3).1);
        f.publish(&[Arc::new(N(f.boot_seq()))]);
        assert_eq!(f.recent_after(0).0.len(), 1);
    }
}
