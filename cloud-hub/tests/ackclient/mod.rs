//! A real MQTT client that publishes like an edge (QoS 1, any payload size) and listens on its
//! device's ack topic. Shared by the ack and quarantine tests.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use csb_wire::Ack;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::sync::mpsc;
use ulid::Ulid;

pub struct EdgeClient {
    client: AsyncClient,
    pubacks: mpsc::Receiver<()>,
    acks: mpsc::Receiver<Ack>,
}

impl EdgeClient {
    /// Connects and, when `ack_topic` is given, subscribes to it (QoS 1) before returning.
    pub async fn connect(addr: SocketAddr, id: &str, ack_topic: Option<&str>) -> EdgeClient {
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(5));
        // Oversized payloads must reach the hub rather than be refused by the client.
        opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (puback_tx, pubacks) = mpsc::channel(1024);
        let (ack_tx, acks) = mpsc::channel(1024);
        let (suback_tx, mut suback_rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        let _ = puback_tx.send(()).await;
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = suback_tx.send(()).await;
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        // What an edge must do with an ack: validate it like any payload.
                        let ack: Ack = csb_wire::decode(&p.payload).expect("hub sends valid acks");
                        assert!(p.topic.ends_with("/ack"), "{}", p.topic);
                        let _ = ack_tx.send(ack).await;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if ack_tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        if let Some(topic) = ack_topic {
            client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), suback_rx.recv())
                .await
                .expect("SUBACK within 10 s");
        }
        EdgeClient {
            client,
            pubacks,
            acks,
        }
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.pubacks.recv())
            .await
            .expect("PUBACK within 10 s")
            .expect("event loop alive");
    }

    /// Collects acks until they name every id of `want` (or 15 s pass); returns all acks seen.
    pub async fn acks_covering(&mut self, want: &BTreeSet<Ulid>) -> Vec<Ack> {
        let mut got = Vec::new();
        let mut seen = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !want.is_subset(&seen) {
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some(ack)) => {
                    seen.extend(ack.ids.iter().copied());
                    got.push(ack);
                }
                _ => panic!(
                    "acks within 15 s: missing {:?}, got {got:?}",
                    want.difference(&seen).collect::<Vec<_>>()
                ),
            }
        }
        got
    }

    /// Acks that arrive within `wait` (for checking that nothing else comes).
    pub async fn acks_within(&mut self, wait: Duration) -> Vec<Ack> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(ack)) = tokio::time::timeout_at(deadline, self.acks.recv()).await {
            got.push(ack);
        }
        got
    }
}

/// Every id named by `acks`, each once.
pub fn acked_ids(acks: &[Ack]) -> BTreeSet<Ulid> {
    acks.iter().flat_map(|a| a.ids.iter().copied()).collect()
}
