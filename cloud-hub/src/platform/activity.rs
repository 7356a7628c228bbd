//! The newest stored events as a numbered feed, for the web page's live stream
//! (`crate::http::live`): ingest offers each durable batch ([`DurableSink`], never waiting) and
//! its new events — not the duplicates of ones already stored — are published in order. Only
//! what is on disk is shown live, so the page never shows an event the history API lacks.

use std::collections::HashSet;
use std::sync::Arc;

use csb_wire::Event;

use crate::ingest::pipeline::DurableSink;
use crate::storage::store::{WriteBatch, WriteOutcome};
use crate::support::feed::{Feed, Numbered};

/// Events a live client may fall behind by before it is told to re-read.
pub const CAPACITY: usize = 1024;
/// Events kept for clients resuming with `Last-Event-ID`.
pub const KEPT: usize = 1024;

/// A stored event and its position in the feed.
#[derive(Debug)]
pub struct StoredEvent {
    pub seq: u64,
    pub event: Event,
}

impl Numbered for StoredEvent {
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// The feed of stored events.
pub struct Activity {
    feed: Feed<StoredEvent>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            feed: Feed::new(CAPACITY, KEPT),
        }
    }
}

impl Activity {
    pub fn feed(&self) -> &Feed<StoredEvent> {
        &self.feed
    }
}

impl DurableSink for Activity {
    fn offer(&self, batch: &Arc<WriteBatch>, out: &WriteOutcome) {
        if batch.events.is_empty() {
            return;
        }
        let dup: HashSet<_> = out.events_duplicate.iter().collect();
        for e in batch.events.iter().filter(|e| !dup.contains(&e.id)) {
            self.feed.publish_next(|seq| StoredEvent {
                seq,
                event: e.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_new_events_in_order_and_skips_duplicates() {
        let a = Activity::default();
        let mut rx = a.feed().subscribe();
        let ev = |n: i64| csb_test_support::payloads::event("gw-1", "cam-1", 1_000 + n, &[]);
        let (e1, e2) = (ev(1), ev(2));
        let batch = Arc::new(WriteBatch {
            events: vec![e1.clone(), e2.clone()],
            ..WriteBatch::default()
        });
        let out = WriteOutcome {
            events_duplicate: vec![e1.id],
            ..WriteOutcome::default()
        };
        a.offer(&batch, &out);
        let got = rx.try_recv().unwrap();
        assert_eq!(got.event.id, e2.id);
        assert_eq!(got.seq, a.feed().boot_seq());
        assert!(rx.try_recv().is_err(), "the duplicate is not published");
    }
}
