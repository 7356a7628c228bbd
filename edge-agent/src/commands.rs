//! Commands from the hub (`csb/v1/{site}/{device}/cmd`) and their replies (`…/cmd/reply`).
//!
//! [`CommandDesk`] sits on the uplink: it verifies each command (signed with this device's key
//! when the device has one, addressed to this device, not expired, an operation it knows),
//! refuses with the reason what it cannot run, and runs each command id once — the hub sends
//! a command again until it has the answer, so a repeat of a finished command gets the same
//! reply again and a repeat of a running one is ignored. What it can run goes to the camera
//! pipeline, which answers through [`CommandDesk::reply`].
//!
//! [`Probe`] is an AI re-check at work on one camera: every frame of its window is inferred
//! (motion gating off for the camera) and the objects of its classes anchored in its zone are
//! counted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use csb_wire::sign::SigningKey;
use csb_wire::{
    Channel, Command, CommandOp, CommandReply, Detection, RecheckResult, ReplyStatus, Topic,
    SCHEMA_VERSION,
};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;

use crate::config::CameraConfig;
use crate::rules::geometry::point_in_polygon;

/// Command ids remembered (running or answered) for recognising repeats.
const REMEMBERED: usize = 256;
/// Commands waiting for the pipeline; beyond, repeats from the hub bring them later.
pub const QUEUED: usize = 16;

/// Counters (`edge-agent` logs; tests read them).
#[derive(Debug, Default)]
pub struct CommandStats {
    pub received: AtomicU64,
    pub refused: AtomicU64,
    pub repeats: AtomicU64,
    pub replies: AtomicU64,
}

pub struct CommandDesk {
    site: String,
    device: String,
    topic: String,
    reply_topic: String,
    key: Option<SigningKey>,
    client: AsyncClient,
    /// Command id → its reply once answered (`None` while running).
    seen: Mutex<Seen>,
    tx: mpsc::Sender<Command>,
    /// Whether a camera pipeline takes commands (until then they wait for the next send).
    served: AtomicBool,
    pub stats: CommandStats,
}

#[derive(Default)]
struct Seen {
    order: VecDeque<String>,
    replies: HashMap<String, Option<Vec<u8>>>,
}

impl Seen {
    fn remember(&mut self, id: &str, reply: Option<Vec<u8>>) {
        if self.replies.insert(id.to_string(), reply).is_none() {
            self.order.push_back(id.to_string());
            while self.order.len() > REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.replies.remove(&old);
                }
            }
        }
    }
}

impl CommandDesk {
    pub fn new(
        site: &str,
        device: &str,
        key: Option<SigningKey>,
        client: AsyncClient,
    ) -> Result<(CommandDesk, mpsc::Receiver<Command>), csb_wire::TopicError> {
        let (tx, rx) = mpsc::channel(QUEUED);
        Ok((
            CommandDesk {
                site: site.to_string(),
                device: device.to_string(),
                topic: Topic::new(site, device, Channel::Cmd)?.to_string(),
                reply_topic: Topic::new(site, device, Channel::CmdReply)?.to_string(),
                key,
                client,
                seen: Mutex::default(),
                tx,
                served: AtomicBool::new(false),
                stats: CommandStats::default(),
            },
            rx,
        ))
    }

    /// This device's command topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Marks that a camera pipeline takes the commands.
    pub fn set_served(&self) {
        self.served.store(true, Ordering::Relaxed);
    }

    /// Handles one message on the command topic (from the MQTT event loop: never waits).
    pub fn on_publish(&self, payload: &[u8]) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        // The id first: without one there is nobody to answer.
        let id = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
            .filter(|id| csb_wire::command::check_command_id("id", id).is_ok());
        let Some(id) = id else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("command without a readable id ignored");
            return;
        };
        if let Some(key) = &self.key {
            if let Err(e) = csb_wire::sign::verify(&self.topic, payload, key) {
                // Anyone on the broker can publish here; with a key only the hub is believed.
                // Not remembered: a forged message must not decide the real command's answer.
                return self.refuse(
                    &id,
                    format!("cannot verify the command: {e} (signed with this device's key?)"),
                    false,
                );
            }
        }
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            match seen.replies.get(&id) {
                Some(Some(reply)) => {
                    self.stats.repeats.fetch_add(1, Ordering::Relaxed);
                    let reply = reply.clone();
                    drop(seen);
                    self.publish(&id, reply);
                    return;
                }
                Some(None) => {
                    self.stats.repeats.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None => {}
            }
        }
        let cmd = match csb_wire::decode::<Command>(payload) {
            Ok(c) => c,
            Err(e) => {
                let op = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_string));
                let why = match op {
                    Some(op) if op != "recheck" && op != "config" => {
                        format!("unknown operation `{op}` (this agent knows `recheck`, `config`)")
                    }
                    _ => format!("unreadable command: {e}"),
                };
                return self.refuse(&id, why, true);
            }
        };
        if cmd.site != self.site || cmd.device != self.device {
            return self.refuse(
                &id,
                format!(
                    "addressed to {}/{}, this is {}/{}",
                    cmd.site, cmd.device, self.site, self.device
                ),
                true,
            );
        }
        let now = csb_wire::now_ms();
        // A re-check must be able to finish looking before its deadline.
        let takes_s = match &cmd.op {
            CommandOp::Recheck(r) => r.watch_s,
            CommandOp::Config(_) => 0,
        };
        if now + i64::from(takes_s) * 1000 > cmd.expires_ms {
            return self.refuse(
                &id,
                format!(
                    "expired: it must be answered by {} and running it takes {takes_s} s",
                    cmd.expires_ms
                ),
                true,
            );
        }
        if !self.served.load(Ordering::Relaxed) {
            // Starting up (the pipeline takes commands once its cameras are set up): not
            // remembered, so the hub's next send is taken.
            return tracing::info!(
                command = id,
                "command before the camera pipeline runs; waiting for a resend"
            );
        }
        match self.tx.try_send(cmd) {
            Ok(()) => self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remember(&id, None),
            // Busy: not remembered, so the hub's next send is taken then.
            Err(_) => tracing::warn!(command = id, "command queue full; waiting for a resend"),
        }
    }

    /// Answers `refused`; `remember`: repeats of the command get the same answer.
    fn refuse(&self, id: &str, reason: String, remember: bool) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(command = id, "command refused: {reason}");
        let reply = CommandReply {
            v: SCHEMA_VERSION,
            id: id.to_string(),
            site: self.site.clone(),
            device: self.device.clone(),
            ts_ms: csb_wire::now_ms(),
            status: ReplyStatus::Refused,
            reason: Some(clip(reason)),
            recheck: None,
            config: None,
        };
        if remember {
            self.reply(reply);
        } else if let Some(payload) = self.encode(&reply) {
            self.publish(id, payload);
        }
    }

    /// Sends `reply` (signed with the device's key when it has one) and remembers it for
    /// repeats of its command. Never waits: a reply that cannot be queued now goes out when
    /// the hub sends the command again.
    pub fn reply(&self, reply: CommandReply) {
        let Some(payload) = self.encode(&reply) else {
            return;
        };
        // Replaces "running": repeats of the command get this reply from now on.
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remember(&reply.id, Some(payload.clone()));
        self.publish(&reply.id, payload);
    }

    /// The reply as sent: JSON, signed when the device has a key.
    fn encode(&self, reply: &CommandReply) -> Option<Vec<u8>> {
        let json = serde_json::to_vec(reply)
            .inspect_err(|e| tracing::error!("cannot encode a command reply: {e}"))
            .ok()?;
        match &self.key {
            Some(key) => csb_wire::sign::sign(&self.reply_topic, &json, key)
                .inspect_err(|e| tracing::error!("cannot sign a command reply: {e}"))
                .ok(),
            None => Some(json),
        }
    }

    fn publish(&self, id: &str, payload: Vec<u8>) {
        match self
            .client
            .try_publish(&self.reply_topic, QoS::AtLeastOnce, false, payload)
        {
            Ok(()) => {
                self.stats.replies.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(
                command = id,
                "reply not queued ({e}); sent on the hub's next try"
            ),
        }
    }
}

pub fn clip(mut s: String) -> String {
    if s.len() > csb_wire::command::MAX_REASON {
        let mut cut = csb_wire::command::MAX_REASON - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// An AI re-check looking at one camera.
#[derive(Debug)]
pub struct Probe {
    pub command: Command,
    pub camera: usize,
    /// The zone's outline, normalised (0..1); `None`: the whole frame.
    polygon: Option<Vec<(f64, f64)>>,
    classes: Vec<String>,
    min_score: f32,
    pub started_ms: i64,
    pub until_ms: i64,
    frames: u32,
    frames_seen: u32,
    counts: BTreeMap<String, u32>,
    /// Most objects in one frame so far.
    busiest: u32,
    /// When the newest empty view was kept.
    last_empty_ms: i64,
}

/// What a frame meant for a probe's evidence: the snapshot shows the busiest frame when the
/// problem is still there, and a recent empty view when it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shot {
    /// More objects than any frame before: keep it as the "still there" picture.
    Busiest,
    /// Nothing in the zone, a second or more after the last empty view kept: keep it as the
    /// "gone" picture.
    Empty,
    Skip,
}

impl Probe {
    /// A probe of `cmd` on camera `index` (`cam`), or why it cannot run there.
    pub fn start(
        cmd: Command,
        index: usize,
        cam: &CameraConfig,
        now: i64,
    ) -> Result<Probe, String> {
        let CommandOp::Recheck(r) = &cmd.op else {
            return Err(format!("`{}` is not a re-check", cmd.op.name()));
        };
        let zone = match &r.zone {
            None => None,
            Some(z) => Some(
                cam.analytics
                    .zones
                    .iter()
                    .find(|x| &x.id == z)
                    .ok_or_else(|| format!("camera `{}` has no zone `{z}`", cam.id))?,
            ),
        };
        let classes = if !r.classes.is_empty() {
            r.classes.clone()
        } else {
            zone.map(|z| z.classes.clone()).unwrap_or_default()
        };
        // Only what the camera detects can be looked for.
        if !cam.classes.is_empty() {
            if let Some(c) = classes.iter().find(|c| !cam.classes.contains(c)) {
                return Err(format!("camera `{}` does not detect `{c}`", cam.id));
            }
        }
        Ok(Probe {
            polygon: zone.map(|z| {
                z.polygon
                    .iter()
                    .map(|p| (f64::from(p[0]), f64::from(p[1])))
                    .collect()
            }),
            classes,
            min_score: cam.tracker.high_score,
            started_ms: now,
            until_ms: now + i64::from(r.watch_s) * 1000,
            camera: index,
            command: cmd,
            frames: 0,
            frames_seen: 0,
            counts: BTreeMap::new(),
            busiest: 0,
            last_empty_ms: i64::MIN,
        })
    }

    /// Counts one inferred frame's detections (boxes in pixels of a `w`×`h` source) and returns
    /// those in the zone, and whether to keep this frame as the snapshot.
    pub fn observe(
        &mut self,
        dets: &[Detection],
        w: u32,
        h: u32,
        ts_ms: i64,
    ) -> (Vec<Detection>, Shot) {
        let (w, h) = (f64::from(w.max(1)), f64::from(h.max(1)));
        let inside: Vec<Detection> = dets
            .iter()
            .filter(|d| d.score >= self.min_score)
            .filter(|d| self.classes.is_empty() || self.classes.contains(&d.label))
            .filter(|d| {
                // The anchor the zone rules use: bottom centre of the box.
                let p = (
                    f64::from(d.bbox.x1 + d.bbox.x2) / 2.0 / w,
                    f64::from(d.bbox.y2) / h,
                );
                self.polygon
                    .as_ref()
                    .is_none_or(|poly| point_in_polygon(p, poly))
            })
            .cloned()
            .collect();
        self.frames += 1;
        if !inside.is_empty() {
            self.frames_seen += 1;
        }
        let mut per_class: BTreeMap<&str, u32> = BTreeMap::new();
        for d in &inside {
            *per_class.entry(d.label.as_str()).or_default() += 1;
        }
        for (k, v) in per_class {
            let c = self.counts.entry(k.to_string()).or_default();
            *c = (*c).max(v);
        }
        let n = inside.len() as u32;
        let shot = if n > self.busiest {
            self.busiest = n;
            Shot::Busiest
        } else if n == 0 && ts_ms.saturating_sub(self.last_empty_ms) >= 1000 {
            self.last_empty_ms = ts_ms;
            Shot::Empty
        } else {
            Shot::Skip
        };
        (inside, shot)
    }

    /// Whether the problem is still there: objects of the classes in the zone in at least half
    /// of the frames (a box flickering in a frame or two is not "still there").
    pub fn present(&self) -> bool {
        self.frames_seen > 0 && self.frames_seen * 2 >= self.frames
    }

    /// The result, `None` when not one frame was inferred (the camera delivered nothing).
    pub fn finish(&self, ended_ms: i64, snapshot: Option<String>) -> Option<RecheckResult> {
        (self.frames > 0).then(|| RecheckResult {
            present: self.present(),
            frames: self.frames,
            frames_seen: self.frames_seen,
            counts: self.counts.clone(),
            started_ms: self.started_ms,
            ended_ms,
            snapshot,
        })
    }

    /// The reply to its command.
    pub fn reply(&self, site: &str, device: &str, result: Option<RecheckResult>) -> CommandReply {
        let (status, reason) = match &result {
            Some(_) => (ReplyStatus::Done, None),
            None => (
                ReplyStatus::Failed,
                Some(format!(
                    "camera delivered no frames in the {} s window",
                    (self.until_ms - self.started_ms) / 1000
                )),
            ),
        };
        CommandReply {
            v: SCHEMA_VERSION,
            id: self.command.id.clone(),
            site: site.to_string(),
            device: device.to_string(),
            ts_ms: csb_wire::now_ms(),
            status,
            reason,
            recheck: result,
            config: None,
        }
    }

    pub fn zone(&self) -> Option<&str> {
        match &self.command.op {
            CommandOp::Recheck(r) => r.zone.as_deref(),
            CommandOp::Config(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csb_wire::BBox;

    fn camera() -> CameraConfig {
        let toml = r#"
            id = "cam-1"
            uri = "x.avi"
            classes = ["person", "car", "truck"]
            [analytics]
            [[analytics.zones]]
            id = "no-parking"
            polygon = [[0.5, 0.0], [1.0, 0.0], [1.0, 0.5], [0.5, 0.5]]
            classes = ["car", "truck"]
        "#;
        toml::from_str(toml).unwrap()
    }

    fn cmd(zone: Option<&str>, classes: &[&str]) -> Command {
        Command {
            v: SCHEMA_VERSION,
            id: "c-r1".into(),
            site: "s".into(),
            device: "d".into(),
            ts_ms: 1_790_000_000_000,
            expires_ms: 1_790_000_600_000,
            op: CommandOp::Recheck(csb_wire::Recheck {
                camera: "cam-1".into(),
                zone: zone.map(str::to_string),
                classes: classes.iter().map(|c| c.to_string()).collect(),
                watch_s: 10,
                case: None,
            }),
        }
    }

    fn det(label: &str, score: f32, x: f32, y2: f32) -> Detection {
        Detection {
            label: label.into(),
            class_id: 0,
            score,
            bbox: BBox {
                x1: x - 10.0,
                y1: y2 - 20.0,
                x2: x + 10.0,
                y2,
            },
            track_id: None,
        }
    }

    fn desk(key: Option<&str>) -> (CommandDesk, mpsc::Receiver<Command>, rumqttc::EventLoop) {
        let (client, eventloop) =
            AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 64);
        let (d, rx) =
            CommandDesk::new("s", "d", key.map(csb_wire::sign::signing_key), client).unwrap();
        d.set_served();
        (d, rx, eventloop)
    }

    fn wire(c: &Command, key: Option<&str>) -> Vec<u8> {
        let json = serde_json::to_vec(c).unwrap();
        match key {
            Some(k) => {
                csb_wire::sign::sign("csb/v1/s/d/cmd", &json, &csb_wire::sign::signing_key(k))
                    .unwrap()
            }
            None => json,
        }
    }

    fn live(mut c: Command) -> Command {
        c.ts_ms = csb_wire::now_ms();
        c.expires_ms = c.ts_ms + 600_000;
        c
    }

    #[test]
    fn the_desk_refuses_what_it_cannot_verify_and_runs_each_command_once() {
        let key = "0123456789abcdef-secret";
        let (d, mut rx, _el) = desk(Some(key));
        let c = live(cmd(Some("no-parking"), &[]));
        // Unsigned, signed with another key, for another device, expired: refused, not run.
        d.on_publish(&wire(&c, None));
        d.on_publish(&wire(&c, Some("another-device-secret")));
        let mut elsewhere = c.clone();
        elsewhere.id = "c-x1".into();
        elsewhere.device = "other".into();
        d.on_publish(&wire(&elsewhere, Some(key)));
        let mut old = c.clone();
        old.id = "c-x2".into();
        old.expires_ms = old.ts_ms + 5_000; // less than the 10 s of looking
        d.on_publish(&wire(&old, Some(key)));
        let mut unknown: serde_json::Value = serde_json::to_value(&c).unwrap();
        unknown["op"] = "reboot".into();
        unknown["id"] = "c-x3".into();
        d.on_publish(
            &serde_json::to_vec(&unknown)
                .map(|j| {
                    csb_wire::sign::sign("csb/v1/s/d/cmd", &j, &csb_wire::sign::signing_key(key))
                        .unwrap()
                })
                .unwrap(),
        );
        assert_eq!(d.stats.refused.load(Ordering::Relaxed), 5);
        assert!(
            rx.try_recv().is_err(),
            "nothing refused reaches the pipeline"
        );
        // Refusals were answered (each a signed reply, queued to the client).
        assert_eq!(d.stats.replies.load(Ordering::Relaxed), 5);

        // Refusals after verification are remembered: a repeat gets the same answer.
        d.on_publish(&wire(&elsewhere, Some(key)));
        assert_eq!(d.stats.repeats.load(Ordering::Relaxed), 1);
        // A forged copy did not decide the real command's answer: it runs. Once; repeats
        // while it runs are ignored, after it the reply is sent again.
        let ok = c.clone();
        d.on_publish(&wire(&ok, Some(key)));
        d.on_publish(&wire(&ok, Some(key)));
        assert_eq!(rx.try_recv().unwrap().id, c.id);
        assert!(rx.try_recv().is_err());
        assert_eq!(d.stats.repeats.load(Ordering::Relaxed), 2);
        let p = Probe::start(ok.clone(), 0, &camera(), 0).unwrap();
        d.reply(p.reply("s", "d", None));
        let before = d.stats.replies.load(Ordering::Relaxed);
        d.on_publish(&wire(&ok, Some(key)));
        assert_eq!(
            d.stats.replies.load(Ordering::Relaxed),
            before + 1,
            "answered again"
        );
        assert!(rx.try_recv().is_err(), "not run again");
    }

    #[test]
    fn an_agent_without_a_key_takes_unsigned_commands_and_waits_for_its_pipeline() {
        let (d, mut rx, _el) = desk(None);
        let c = live(cmd(None, &[]));
        d.served.store(false, Ordering::Relaxed);
        d.on_publish(&wire(&c, None));
        assert!(
            rx.try_recv().is_err(),
            "no pipeline yet: left for the hub's next send"
        );
        assert_eq!(d.stats.refused.load(Ordering::Relaxed), 0);
        d.set_served();
        d.on_publish(&wire(&c, None));
        assert_eq!(rx.try_recv().unwrap(), c);
    }

    #[test]
    fn counts_confident_objects_of_the_classes_anchored_in_the_zone() {
        let cam = camera();
        let mut p = Probe::start(cmd(Some("no-parking"), &[]), 0, &cam, 0).unwrap();
        // 100×100 frame; the zone is the top-right quarter.
        let frame = [
            det("truck", 0.9, 80.0, 40.0),  // in
            det("car", 0.9, 70.0, 30.0),    // in
            det("person", 0.9, 80.0, 40.0), // not a zone class
            det("car", 0.2, 80.0, 40.0),    // not confident
            det("car", 0.9, 20.0, 40.0),    // outside
        ];
        let (inside, shot) = p.observe(&frame, 100, 100, 0);
        assert_eq!(inside.len(), 2);
        assert_eq!(shot, Shot::Busiest);
        let (_, shot) = p.observe(&frame[..1], 100, 100, 100);
        assert_eq!(shot, Shot::Skip, "fewer objects than the kept frame");
        let (_, shot) = p.observe(&[], 100, 100, 200);
        assert_eq!(shot, Shot::Empty);
        let r = p.finish(300, None).unwrap();
        assert_eq!((r.frames, r.frames_seen), (3, 2));
        assert!(r.present, "seen in 2 of 3 frames");
        assert_eq!(r.counts, [("car".into(), 1), ("truck".into(), 1)].into());
    }

    #[test]
    fn a_flicker_is_not_presence_and_no_frames_is_a_failure() {
        let cam = camera();
        let mut p = Probe::start(cmd(Some("no-parking"), &["car"]), 0, &cam, 0).unwrap();
        p.observe(&[det("car", 0.9, 80.0, 40.0)], 100, 100, 0);
        for t in 1..6 {
            let (_, shot) = p.observe(&[], 100, 100, t * 400);
            // Empty views are kept fresh, once a second.
            assert_eq!(shot == Shot::Empty, t == 1 || t == 4, "t={t}");
        }
        assert!(!p.present());
        assert!(!p.finish(2400, None).unwrap().present, "1 of 6 frames");
        let idle = Probe::start(cmd(None, &[]), 0, &cam, 0).unwrap();
        let reply = idle.reply("s", "d", idle.finish(10_000, None));
        assert_eq!(reply.status, ReplyStatus::Failed);
        assert!(reply.reason.unwrap().contains("no frames"));
    }

    #[test]
    fn refuses_unknown_zones_and_classes_the_camera_does_not_detect() {
        let cam = camera();
        let e = Probe::start(cmd(Some("nope"), &[]), 0, &cam, 0).unwrap_err();
        assert!(e.contains("no zone `nope`"), "{e}");
        let e = Probe::start(cmd(None, &["bus"]), 0, &cam, 0).unwrap_err();
        assert!(e.contains("does not detect `bus`"), "{e}");
    }
}
