//! `GET /api/v1/live`: the web page's one stream (browsers allow six connections per host; a
//! page holds one). It merges three feeds — newly stored events ([`crate::platform::activity`]),
//! device live-state changes of the twin, coalesced to once a second, and case changes — and
//! adds a heartbeat carrying the server's time, so the page can tell "quiet" from "stale".
//!
//! Each SSE `id` is the client's position in all three feeds (`E.T.C`), so `Last-Event-ID`
//! resumes each where it stopped. `hello` opens every connection (`resumed`: whether the
//! client's position was taken up — if not, it re-reads its snapshot from the REST API);
//! `resync` says changes were missed (the client fell behind, or resumed from before a
//! restart): re-read, then carry on. Device changes not yet sent are never counted as sent:
//! a client that reconnects between two flushes gets them again, not never.

use std::collections::HashMap;
use std::time::Duration;

use aide::transform::TransformOperation;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use schemars::{json_schema, JsonSchema};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::OwnedSemaphorePermit;

use crate::cases::changes::CaseChange;
use crate::cases::lifecycle::Role as CaseRole;
use crate::http::cases::actor;
use crate::http::error::ApiError;
use crate::http::openapi::{content, errors, respond, viewer};
use crate::http::query::Params;
use crate::http::sse::{Follow, Item, MAX_STREAMS};
use crate::http::state::ApiState;
use crate::http::tokens::TokenInfo;
use crate::platform::activity::StoredEvent;
use crate::platform::twin::{Change, EntityType};
use crate::storage::store::Store;
use csb_wire::EventKind;

/// How often a `heartbeat` goes out (the page calls the data stale after ~2.5 of these).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Device changes are gathered and sent at most this often.
pub const DEVICE_FLUSH: Duration = Duration::from_secs(1);
/// Entities gathered between two flushes at most; beyond it the client is told to re-read.
const MAX_PENDING_DEVICES: usize = 10_000;

/// Which events the stream carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LiveEvents {
    /// Rule events only (zone, dwell, line, count, threshold): the default.
    #[default]
    Rule,
    /// Every event, raw detections included (about one per camera per second).
    All,
    /// No events.
    None,
}

/// `GET /api/v1/live`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct LiveParams {
    /// Which events to carry: `rule` (default), `all`, `none`.
    events: Option<LiveEvents>,
}

pub(crate) fn live_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("live")
        .tag("live")
        .summary("Server-Sent Events: the web page's live stream")
        .description(
            "One stream for a page: `hello` first (`{server_ms, resumed}`; when `resumed` is \
             false, read the snapshot from the REST API), then `event` (a stored `Event`, as \
             `GET /api/v1/events` lists it), `devices` (`{changes: [{entity, type, attrs}]}`: \
             the twin's live attributes of gateways, cameras and sensors that changed, gathered \
             for up to a second), `case` (a `CaseChange`, as `GET /api/v1/cases/stream` sends \
             it), `heartbeat` every 5 s (`{server_ms}`), and `resync` when changes were missed \
             (re-read, then carry on). Each `id` is the position in all three feeds: send it \
             back as `Last-Event-ID` to resume. A handler sees its own department's cases \
             only. Ends when the hub shuts down.",
        );
    let op = respond(
        op,
        200,
        content(
            "The event stream",
            "text/event-stream",
            json_schema!({"type": "string"}),
        ),
    );
    viewer(errors(
        op,
        &[
            (400, "A parameter is malformed (named)"),
            (503, "Too many live streams are open"),
        ],
    ))
}

pub(crate) async fn live<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    headers: HeaderMap,
    Params(p, _): Params<LiveParams>,
) -> Result<Response, ApiError> {
    let Ok(permit) = st.live_streams.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} live streams are open; retry later"),
        ));
    };
    let actor = actor(who);
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Position::parse);
    let wanted_events = p.events.unwrap_or_default();
    let events = (wanted_events != LiveEvents::None)
        .then_some(st.activity.as_ref())
        .flatten()
        .map(|a| {
            let f = a.feed();
            let at = resume.map_or(f.last(), |r| r.events);
            let follow = Follow::new(
                f,
                resume.map(|r| r.events),
                move |e: &StoredEvent| {
                    wanted_events == LiveEvents::All || e.event.kind == EventKind::Rule
                },
                |_| {},
                None,
            );
            (follow, at)
        });
    let twin = st.twin.as_ref().map(|t| {
        let f = t.feed();
        let at = resume.map_or(f.last(), |r| r.twin);
        (
            Follow::new(f, resume.map(|r| r.twin), |_: &Change| true, |_| {}, None),
            at,
        )
    });
    let cases = st.cases.as_ref().map(|engine| {
        let f = engine.changes().feed();
        let at = resume.map_or(f.last(), |r| r.cases);
        // A handler follows its own department's cases only, as the list shows them.
        let (handler, department) = (actor.role == CaseRole::Handler, actor.department.clone());
        let wanted =
            move |c: &CaseChange| !handler || (department.is_some() && c.department == department);
        (
            Follow::new(f, resume.map(|r| r.cases), wanted, |_| {}, None),
            at,
        )
    });
    let at = Position {
        events: events.as_ref().map_or(0, |e| e.1),
        twin: twin.as_ref().map_or(0, |t| t.1),
        cases: cases.as_ref().map_or(0, |c| c.1),
    };
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(DEVICE_FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let live = Live {
        events: events.map(|e| e.0),
        twin: twin.map(|t| t.0),
        cases: cases.map(|c| c.0),
        sent: at,
        twin_seen: at.twin,
        pending: HashMap::new(),
        hello: Some(resume.is_some()),
        heartbeat,
        flush,
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(live, |mut l| async move {
        let e = l.next().await?;
        Some((Ok::<_, std::convert::Infallible>(e), l))
    });
    Ok((
        // Proxies (nginx) must pass each event on at once.
        [("x-accel-buffering", "no")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
        .into_response())
}

/// A client's position in the three feeds: the SSE id `E.T.C`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    events: u64,
    twin: u64,
    cases: u64,
}

impl Position {
    fn parse(s: &str) -> Option<Position> {
        let mut it = s.trim().split('.').map(|n| n.parse::<u64>().ok());
        let p = Position {
            events: it.next()??,
            twin: it.next()??,
            cases: it.next()??,
        };
        it.next().is_none().then_some(p)
    }

    fn id(&self) -> String {
        format!("{}.{}.{}", self.events, self.twin, self.cases)
    }
}

struct Live {
    events: Option<Follow<StoredEvent>>,
    twin: Option<Follow<Change>>,
    cases: Option<Follow<CaseChange>>,
    /// What the client has been sent (its `Last-Event-ID` if it reconnected now).
    sent: Position,
    /// The newest twin change looked at; ahead of `sent.twin` while devices are pending.
    twin_seen: u64,
    /// Device changes gathered since the last flush: entity → (type, attributes).
    pending: HashMap<String, (EntityType, Map<String, Value>)>,
    /// `Some(resumed)` until `hello` is sent.
    hello: Option<bool>,
    heartbeat: tokio::time::Interval,
    flush: tokio::time::Interval,
    _permit: OwnedSemaphorePermit,
}

/// The next item of an optional follower; never ready without one.
async fn next_of<T: crate::support::feed::Numbered>(f: &mut Option<Follow<T>>) -> Option<Item<T>> {
    match f {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> i64 {
    csb_wire::now_ms()
}

impl Live {
    /// The next SSE event, or `None` once the hub shuts down.
    async fn next(&mut self) -> Option<SseEvent> {
        if let Some(resumed) = self.hello.take() {
            return Some(self.out("hello", json!({"server_ms": now_ms(), "resumed": resumed})));
        }
        loop {
            tokio::select! {
                item = next_of(&mut self.events) => match item? {
                    Item::Change(e) => {
                        self.sent.events = e.seq;
                        let data = serde_json::to_string(&e.event).unwrap_or_default();
                        return Some(self.raw("event", data));
                    }
                    Item::Lagged(_) => return Some(self.resync()),
                },
                item = next_of(&mut self.cases) => match item? {
                    Item::Change(c) => {
                        self.sent.cases = c.seq;
                        let data = serde_json::to_string(&*c).unwrap_or_default();
                        return Some(self.raw("case", data));
                    }
                    Item::Lagged(_) => return Some(self.resync()),
                },
                item = next_of(&mut self.twin) => match item? {
                    Item::Change(c) => {
                        if let Some(e) = self.gather(&c) {
                            return Some(e);
                        }
                    }
                    Item::Lagged(_) => return Some(self.resync()),
                },
                _ = self.flush.tick(), if !self.pending.is_empty() => {
                    return Some(self.flush_devices());
                }
                _ = self.heartbeat.tick() => {
                    return Some(self.out("heartbeat", json!({"server_ms": now_ms()})));
                }
            }
        }
    }

    /// Takes a twin change in: devices' are gathered for the next flush.
    fn gather(&mut self, c: &Change) -> Option<SseEvent> {
        self.twin_seen = c.seq;
        if !matches!(
            c.kind,
            EntityType::Gateway | EntityType::Camera | EntityType::Sensor
        ) {
            if self.pending.is_empty() {
                self.sent.twin = c.seq;
            }
            return None;
        }
        let (_, attrs) = self
            .pending
            .entry(c.entity.clone())
            .or_insert_with(|| (c.kind, Map::new()));
        for (name, o) in &c.attrs {
            attrs.insert(name.clone(), o.value.clone());
        }
        // Far behind (thousands of devices changing within a second): re-read instead.
        (self.pending.len() > MAX_PENDING_DEVICES).then(|| self.resync())
    }

    fn flush_devices(&mut self) -> SseEvent {
        let changes: Vec<Value> = self
            .pending
            .drain()
            .map(|(entity, (kind, attrs))| {
                json!({"entity": entity, "type": kind.as_str(), "attrs": attrs})
            })
            .collect();
        self.sent.twin = self.twin_seen;
        self.out("devices", json!({ "changes": changes }))
    }

    /// Changes were missed: the client re-reads everything, so what was gathered goes too.
    fn resync(&mut self) -> SseEvent {
        self.pending.clear();
        self.sent.twin = self.twin_seen;
        self.out("resync", json!({"reason": "lagged"}))
    }

    fn out(&self, name: &str, data: Value) -> SseEvent {
        self.raw(name, data.to_string())
    }

    fn raw(&self, name: &str, data: String) -> SseEvent {
        SseEvent::default()
            .event(name)
            .id(self.sent.id())
            .data(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_junk_is_no_position() {
        let p = Position {
            events: 1,
            twin: 22,
            cases: 333,
        };
        assert_eq!(Position::parse(&p.id()), Some(p));
        for junk in ["", "1.2", "1.2.3.4", "a.b.c", "1..3", "-1.2.3"] {
            assert_eq!(Position::parse(junk), None, "{junk}");
        }
    }
}
