//! The case change feed: every durable change of a case, numbered in the order it was made
//! durable, for the SSE change stream (`GET /api/v1/cases/stream`) and the
//! department webhooks' wake-up. Publishing never waits (see [`Feed`]).

use std::sync::Arc;

use serde::Serialize;

use super::lifecycle::{Case, State};
use crate::support::feed::{Feed, Numbered};

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

impl Numbered for CaseChange {
    fn seq(&self) -> u64 {
        self.seq
    }
}

pub struct Changes {
    feed: Feed<CaseChange>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            feed: Feed::new(KEPT, KEPT),
        }
    }
}

impl Changes {
    /// Announces `case` as it now is (call after its change is durable).
    pub fn publish(&self, case: &Case) -> Arc<CaseChange> {
        let (action, at_ms) = case
            .timeline
            .last()
            .map_or(("report".to_string(), case.created_ms), |e| {
                (e.action.name().to_string(), e.at_ms)
            });
        self.feed.publish_next(|seq| CaseChange {
            seq,
            id: case.id.clone(),
            state: case.state,
            category: case.category.clone(),
            department: case.department.clone(),
            town: case.place.town.clone(),
            action,
            at_ms,
        })
    }

    /// The feed, for streams to follow.
    pub fn feed(&self) -> &Feed<CaseChange> {
        &self.feed
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
    fn changes_are_numbered_in_order_with_the_newest_action() {
        let g = Governance::built_in().unwrap();
        let ch = Changes::default();
        let mut rx = ch.feed().subscribe();
        let a = ch.publish(&case(&g, "c1"));
        let b = ch.publish(&case(&g, "c2"));
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(rx.try_recv().unwrap().id, "c1");
        assert_eq!(rx.try_recv().unwrap().action, "report");
        let (after, missed) = ch.feed().recent_after(a.seq);
        assert_eq!((after.len(), missed), (1, false));
    }
}
