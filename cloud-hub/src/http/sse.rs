//! Following a [`Feed`] over Server-Sent Events: the twin's and the cases' change streams.
//! Each change goes out once, in order, with its position as the event `id`; a client that
//! resumes with `Last-Event-ID` gets what it missed from what the feed keeps, and a client that
//! fell behind (or resumed too late) is told so with a `lagged` event, then carries on. Open
//! streams are bounded; they end when the feed closes (shutdown), so HTTP can drain.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit};

use crate::support::feed::{Feed, Numbered};

/// Open streams of one kind at most; more get 503.
pub const MAX_STREAMS: usize = 256;

/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// What a stream delivers next.
#[derive(Debug)]
pub enum Item<T> {
    Change(Arc<T>),
    /// Changes were missed: how many, when known (a client that fell behind); unknown for a
    /// `Last-Event-ID` older than what is kept.
    Lagged(Option<u64>),
}

/// One client's position in a feed, with its filter.
pub struct Follow<T> {
    rx: broadcast::Receiver<Arc<T>>,
    backlog: VecDeque<Arc<T>>,
    /// Report missed changes before anything else.
    missed: bool,
    last: u64,
    wanted: Box<dyn Fn(&T) -> bool + Send>,
    closing: watch::Receiver<bool>,
    /// Counts changes lost to this slow client.
    on_lag: Box<dyn Fn(u64) + Send>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The position a client resumes after (`Last-Event-ID`), if it sent one.
pub fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

impl<T: Numbered> Follow<T> {
    /// Follows `feed` from now, or after `resume`, delivering what `wanted` accepts.
    pub fn new(
        feed: &Feed<T>,
        resume: Option<u64>,
        wanted: impl Fn(&T) -> bool + Send + 'static,
        on_lag: impl Fn(u64) + Send + 'static,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Follow<T> {
        // Subscribe before reading the backlog, so nothing falls between them (duplicates are
        // skipped by position).
        let rx = feed.subscribe();
        let (backlog, missed, last) = match resume {
            None => (VecDeque::new(), false, 0),
            Some(seq) => {
                let (recent, missed) = feed.recent_after(seq);
                (recent.into(), missed, seq)
            }
        };
        Follow {
            rx,
            backlog,
            missed,
            last,
            wanted: Box::new(wanted),
            closing: feed.closing(),
            on_lag: Box::new(on_lag),
            _permit: permit,
        }
    }

    /// The next item, or `None` once the feed closes.
    pub async fn next(&mut self) -> Option<Item<T>> {
        if std::mem::take(&mut self.missed) {
            return Some(Item::Lagged(None));
        }
        while let Some(c) = self.backlog.pop_front() {
            if c.seq() > self.last && (self.wanted)(&c) {
                self.last = c.seq();
                return Some(Item::Change(c));
            }
        }
        loop {
            if *self.closing.borrow() {
                return None;
            }
            let r = tokio::select! {
                // Shutdown: end the stream so HTTP can drain.
                _ = self.closing.wait_for(|c| *c) => return None,
                r = self.rx.recv() => r,
            };
            match r {
                Ok(c) => {
                    // Already sent from the backlog, or filtered out.
                    if c.seq() <= self.last || !(self.wanted)(&c) {
                        continue;
                    }
                    self.last = c.seq();
                    return Some(Item::Change(c));
                }
                // The broadcast channel overwrote what this client had not read: it never
                // holds anyone up.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    (self.on_lag)(n);
                    return Some(Item::Lagged(Some(n)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The stream as an SSE response, each item written by `event`, with keep-alives.
    pub fn respond(self, event: fn(Item<T>) -> SseEvent) -> Response {
        let events = futures_util::stream::unfold(self, move |mut s| async move {
            let item = s.next().await?;
            Some((Ok::<_, Infallible>(event(item)), s))
        });
        Sse::new(events)
            .keep_alive(KeepAlive::new().interval(KEEPALIVE).text("keepalive"))
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Debug)]
    struct N(u64, bool);
    impl Numbered for N {
        fn seq(&self) -> u64 {
            self.0
        }
    }

    #[tokio::test]
    async fn resumes_filters_reports_lag_and_ends_on_close() {
        let feed: Feed<N> = Feed::new(4, 16);
        let b = feed.boot_seq();
        for i in 0..6 {
            feed.publish_next(|s| N(s, i % 2 == 0));
        }
        let lagged = Arc::new(AtomicU64::new(0));
        let count = |l: &Arc<AtomicU64>| {
            let l = l.clone();
            move |n| {
                l.fetch_add(n, Ordering::Relaxed);
            }
        };
        // Resume after the second: the even ones after it, from the kept backlog.
        let mut f = Follow::new(&feed, Some(b + 1), |n: &N| n.1, count(&lagged), None);
        for want in [b + 2, b + 4] {
            match f.next().await {
                Some(Item::Change(c)) => assert_eq!(c.0, want),
                other => panic!("{other:?}"),
            }
        }
        // Falls behind the channel (4): told how much, then carries on with the newest.
        for _ in 0..10 {
            feed.publish_next(|s| N(s, true));
        }
        assert!(matches!(f.next().await, Some(Item::Lagged(Some(_)))));
        assert!(lagged.load(Ordering::Relaxed) > 0);
        assert!(matches!(f.next().await, Some(Item::Change(_))));
        // Resuming from a previous boot: told first.
        let mut old = Follow::new(&feed, Some(3), |_: &N| true, count(&lagged), None);
        assert!(matches!(old.next().await, Some(Item::Lagged(None))));
        feed.close();
        let mut f = Follow::new(&feed, None, |_: &N| true, count(&lagged), None);
        assert!(f.next().await.is_none(), "a closed feed ends streams");
    }
}
