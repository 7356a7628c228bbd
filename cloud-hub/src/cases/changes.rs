//! The case change feed: every durable change of a case, numbered in the order it was made
//! durable, for the SSE change stream (`GET /api/v1/cases/stream`, work in progress) and the
//! department webhooks. Publishing never waits: a subscriber that falls behind the bounded
//! channel is told how much it missed; the newest changes are kept for `Last-Event-ID`
//! resumption.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use super::lifecycle::{Case, State};

/// Changes kept for resumption, and the channel's room per subscriber.
pub const KEPT: usize = 1_024;

/// One durable change, as streamed: enough to refresh a board row, with the case's id to read
/// the rest.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CaseChange {
    /// Position in the feed (the SSE event id).
    pub seq: u64,
    pub id: String,
    pub state: State,
    pub category: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub town: Option<String>,
    /// The newest timeline entry's action (`report`, `dispatch`, `sla_overdue`, `merge`, …).
    pub action: String,
    /// When that entry was made (Unix ms).
    pub at_ms: i64,
}

pub struct Changes {
    tx: broadcast::Sender<Arc<CaseChange>>,
    /// The newest changes, oldest first; its lock also orders the numbering.
    recent: Mutex<VecDeque<Arc<CaseChange>>>,
    seq: AtomicU64,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            tx: broadcast::channel(KEPT).0,
            recent: Mutex::new(VecDeque::with_capacity(KEPT)),
            seq: AtomicU64::new(0),
        }
    }
}

impl Changes {
    /// Announces `case` as it now is (call after its change is durable).
    pub fn publish(&self, case: &Case) {
        let (action, at_ms) = case
            .timeline
            .last()
            .map_or(("report".to_string(), case.created_ms), |e| {
                (e.action.name().to_string(), e.at_ms)
            });
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let change = Arc::new(CaseChange {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            id: case.id.clone(),
            state: case.state,
            category: case.category.clone(),
            department: case.department.clone(),
            town: case.place.town.clone(),
            action,
            at_ms,
        });
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(change.clone());
        // No subscriber is no error.
        let _ = self.tx.send(change);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CaseChange>> {
        self.tx.subscribe()
    }

    /// The kept changes after `seq`, and whether some after it are no longer kept.
    pub fn recent_after(&self, seq: u64) -> (Vec<Arc<CaseChange>>, bool) {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let missed = recent.front().is_some_and(|c| c.seq > seq + 1)
            || (recent.is_empty() && self.seq.load(Ordering::Relaxed) > seq);
        let after = recent.iter().filter(|c| c.seq > seq).cloned().collect();
        (after, missed)
    }

    /// The newest change's number (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::config::Governance;
    use crate::cases::lifecycle::{Actor, NewCase, Place, Source};

    fn case(g: &Governance, id: &str) -> Case {
        let new = NewCase {
            id: id.into(),
            source: Source::Inspector,
            category: "illegal-parking".into(),
            place: Place::default(),
            evidence: vec![],
            camera: None,
        };
        Case::report(new, Actor::system(), 1_790_000_000_000, g).unwrap()
    }

    #[test]
    fn changes_are_numbered_kept_and_resumable() {
        let g = Governance::built_in().unwrap();
        let ch = Changes::default();
        let mut rx = ch.subscribe();
        for i in 0..(KEPT + 10) {
            ch.publish(&case(&g, &format!("c{i}")));
        }
        assert_eq!(ch.last_seq(), (KEPT + 10) as u64);
        // The subscriber fell behind the bounded channel: told, never blocking the publisher.
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(10))
        ));
        let (after, missed) = ch.recent_after((KEPT + 5) as u64);
        assert_eq!(after.len(), 5);
        assert!(!missed);
        assert_eq!(after[0].action, "report");
        let (after, missed) = ch.recent_after(3);
        assert_eq!(after.len(), KEPT);
        assert!(missed, "changes 4..=10 are no longer kept");
    }
}
