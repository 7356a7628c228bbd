//! Acks the front delivers itself.
//!
//! rumqttd keeps a commit log per subscription filter, in memory, for as long as the hub runs,
//! sized in bytes with ~230 B of bookkeeping per message on top: per device, either a few tens
//! of KB for its stream of small acks, or a log too short for a burst of large ones (acks were
//! then lost, and edges waited out their resend timeout). So when a device subscribes, with a
//! clean session, to exactly its own ack topic and nothing else in that SUBSCRIBE, the front
//! answers the SUBACK itself and registers a route here; ingest hands the device's acks to
//! that route, and the front writes them into the device's connection as QoS 0 PUBLISHes
//! (MQTT delivers the lower of the published and granted QoS: acks are published at QoS 0), on a
//! bounded queue per session. Any other subscription goes to rumqttd as before, and acks also go
//! through rumqttd when no route exists or while some client subscribed through rumqttd to a
//! filter an ack topic could match (a monitoring tool on `csb/v1/#`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::front::FrontCounters;
use super::packet;

/// Packets waiting to be written to one session by the front (acks and its own SUBACKs).
pub const SESSION_QUEUE: usize = 256;

/// The sessions (generation, queue) an ack topic is routed to.
type Routed = Vec<(u64, mpsc::Sender<Bytes>)>;

/// Sessions that receive their acks from the front, by ack topic.
#[derive(Debug, Default)]
pub struct AckRoutes {
    routes: Mutex<HashMap<String, Routed>>,
    /// Sessions that subscribed through rumqttd to a filter an ack topic could match.
    observers: AtomicI64,
    /// `acks_routed`, `acks_route_dropped`, `routed_sessions` are counted there.
    counters: Arc<FrontCounters>,
}

/// What [`AckRoutes::deliver`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// No session takes this topic from the front.
    NoRoute,
    /// Queued for this many sessions; `dropped` sessions had a full queue.
    Queued { sessions: usize, dropped: usize },
}

impl AckRoutes {
    pub fn new(counters: Arc<FrontCounters>) -> Self {
        AckRoutes {
            counters,
            ..Default::default()
        }
    }

    pub fn add(&self, topic: &str, generation: u64, tx: mpsc::Sender<Bytes>) {
        let mut map = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(topic.to_string()).or_default();
        let before = list.len();
        list.retain(|(g, _)| *g != generation);
        list.push((generation, tx));
        let added = list.len() as i64 - before as i64;
        self.counters.routed_sessions.fetch_add(added, Relaxed);
    }

    pub fn remove(&self, topic: &str, generation: u64) {
        let mut map = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(topic) {
            let before = list.len();
            list.retain(|(g, _)| *g != generation);
            let removed = before - list.len();
            self.counters
                .routed_sessions
                .fetch_sub(removed as i64, Relaxed);
            if list.is_empty() {
                map.remove(topic);
            }
        }
    }

    /// Queues `payload` on `topic` for every session routed there; never waits.
    pub fn deliver(&self, topic: &str, payload: &[u8]) -> Delivery {
        let map = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = map.get(topic) else {
            return Delivery::NoRoute;
        };
        let packet = packet::publish_qos0(topic, payload);
        let mut dropped = 0;
        for (_, tx) in list {
            if tx.try_send(packet.clone()).is_err() {
                dropped += 1;
            }
        }
        let c = &self.counters;
        c.acks_routed
            .fetch_add((list.len() - dropped) as u64, Relaxed);
        c.acks_route_dropped.fetch_add(dropped as u64, Relaxed);
        Delivery::Queued {
            sessions: list.len(),
            dropped,
        }
    }

    pub fn observer_joined(&self) {
        self.observers.fetch_add(1, Relaxed);
    }

    pub fn observer_left(&self) {
        self.observers.fetch_sub(1, Relaxed);
    }

    /// Whether acks must also go through rumqttd, for subscribers the front does not serve.
    pub fn observed(&self) -> bool {
        self.observers.load(Relaxed) > 0
    }

    /// Sessions routed here now.
    pub fn len(&self) -> usize {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a subscription filter could match some device's ack topic (`csb/v1/S/D/ack`).
pub fn could_match_ack(filter: &str) -> bool {
    let want = ["csb", "v1", "", "", "ack"];
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if *l == "#" {
            return true;
        }
        let Some(w) = want.get(i) else {
            return false;
        };
        // Site and device levels are anyone's; the others must be the ack topic's.
        if !(*l == "+" || w.is_empty() || l == w) {
            return false;
        }
    }
    levels.len() == want.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_that_could_see_acks() {
        for yes in [
            "#",
            "csb/#",
            "csb/v1/#",
            "csb/v1/+/+/ack",
            "csb/v1/yuexi/+/ack",
            "+/+/+/+/+",
            "csb/v1/yuexi/gw-01/#",
            "csb/v1/yuexi/gw-01/ack",
        ] {
            assert!(could_match_ack(yes), "{yes}");
        }
        for no in [
            "csb/v1/+/+/event",
            "csb/v1/+/+",
            "csb/v2/#",
            "other/#",
            "csb/v1/+/+/ack/more",
            "+/+/+/+",
        ] {
            assert!(!could_match_ack(no), "{no}");
        }
    }

    #[test]
    fn routes_queue_without_waiting_and_go_away() {
        let counters = Arc::new(FrontCounters::default());
        let r = AckRoutes::new(counters.clone());
        let t = "csb/v1/yuexi/gw-01/ack";
        assert_eq!(r.deliver(t, b"{}"), Delivery::NoRoute);
        let (tx, mut rx) = mpsc::channel(1);
        r.add(t, 7, tx);
        assert_eq!(
            r.deliver(t, b"{}"),
            Delivery::Queued {
                sessions: 1,
                dropped: 0
            }
        );
        // The queue is full: dropped, not waited for.
        assert_eq!(
            r.deliver(t, b"{}"),
            Delivery::Queued {
                sessions: 1,
                dropped: 1
            }
        );
        assert_eq!(rx.try_recv().unwrap(), packet::publish_qos0(t, b"{}"));
        assert_eq!(counters.acks_routed.load(Relaxed), 1);
        assert_eq!(counters.acks_route_dropped.load(Relaxed), 1);
        assert_eq!(counters.routed_sessions.load(Relaxed), 1);
        // Another session's end does not remove this one's route.
        r.remove(t, 8);
        assert_eq!(r.len(), 1);
        r.remove(t, 7);
        assert!(r.is_empty());
        assert_eq!(counters.routed_sessions.load(Relaxed), 0);
        assert_eq!(r.deliver(t, b"{}"), Delivery::NoRoute);
    }
}
