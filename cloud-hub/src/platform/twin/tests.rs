//! Update mapping on the shipped sample county: what each kind of ingested message changes.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use csb_wire::{
    CameraState, CameraStatus, DeviceState, DeviceStatus, Event, EventKind, Phase, RuleInfo,
    RuleType, Telemetry,
};
use serde_json::json;
use ulid::Ulid;

use super::*;
use crate::platform::county::{County, DEFAULT_DIR};

const T0: i64 = 1_790_000_000_000;
const CAM: &str = "urn:ngsi-ld:Camera:yuexi:gw-demo-01:cam-tiantang-01";
const CAM2: &str = "urn:ngsi-ld:Camera:yuexi:gw-demo-01:cam-tiantang-02";
const GW: &str = "urn:ngsi-ld:Gateway:yuexi:gw-demo-01";
const ZONE: &str = "urn:ngsi-ld:Zone:yuexi:zone-no-parking-north";
const ROAD: &str = "urn:ngsi-ld:RoadSegment:yuexi:rd-tiantang-ave-n";
const ROAD2: &str = "urn:ngsi-ld:RoadSegment:yuexi:rd-tianzhai-rd";
const WL: &str = "urn:ngsi-ld:Sensor:yuexi:gw-demo-01:wl-underpass-01";

fn twin() -> Twin {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DEFAULT_DIR);
    let c = County::load(&dir).unwrap();
    Twin::new(Some(&c), None, 86_400_000)
}

fn input(f: impl FnOnce(&mut WriteBatch)) -> Input {
    let mut b = WriteBatch::default();
    f(&mut b);
    Input {
        batch: Arc::new(b),
        duplicates: HashSet::new(),
    }
}

fn status(state: DeviceState, cams: &[(&str, CameraState, f32)]) -> DeviceStatus {
    DeviceStatus {
        v: 1,
        site: "yuexi".into(),
        device: "gw-demo-01".into(),
        ts_ms: T0,
        state,
        agent_version: Some("0.1.0".into()),
        cameras: cams
            .iter()
            .map(|(id, s, fps)| CameraStatus {
                id: id.to_string(),
                state: *s,
                fps: Some(*fps),
                error: None,
                health: None,
            })
            .collect(),
        sensors: vec![],
        outbox: None,
        config_version: None,
        model: None,
    }
}

fn live(t: &Twin, id: &str, attr: &str) -> Option<Observed> {
    t.read(|e, ix| {
        ix.get(id)
            .and_then(|&i| e[i].live.get(attr))
            .map(|l| l.current.clone())
    })
}

fn rule_event(zone: &str, phase: Phase, problem: Ulid, count: Option<u32>, ts: i64) -> Event {
    Event {
        v: 1,
        id: Ulid::new(),
        site: "yuexi".into(),
        device: "gw-demo-01".into(),
        camera: "cam-tiantang-01".into(),
        kind: EventKind::Rule,
        ts_ms: ts,
        frame: None,
        model: None,
        objects: vec![],
        rule: Some(RuleInfo {
            rule: "illegal-parking-north".into(),
            rule_type: RuleType::Dwell,
            event_type: "illegal_parking".into(),
            category: None,
            phase,
            problem_id: problem,
            zone: Some(zone.into()),
            track_ids: vec![],
            started_ms: ts,
            duration_ms: 0,
            count,
            direction: None,
            value: None,
            metric: None,
            snapshot: None,
        }),
    }
}

fn tel(source: &str, ts: i64, metrics: &[(&str, f64)]) -> Telemetry {
    Telemetry {
        v: 1,
        id: Ulid::new(),
        site: "yuexi".into(),
        device: "gw-demo-01".into(),
        source: source.into(),
        ts_ms: ts,
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

#[test]
fn sample_county_entities_and_ids() {
    let t = twin();
    t.read(|e, ix| {
        assert_eq!(e.iter().filter(|x| x.kind == EntityType::Town).count(), 24);
        assert_eq!(
            e.iter().filter(|x| x.kind == EntityType::Camera).count(),
            11
        );
        assert_eq!(e.iter().filter(|x| x.kind == EntityType::Sensor).count(), 8);
        assert_eq!(
            e.iter().filter(|x| x.kind == EntityType::Gateway).count(),
            6
        );
        assert_eq!(e.iter().filter(|x| x.kind == EntityType::Zone).count(), 5);
        let cam = &e[ix[CAM]];
        assert_eq!(cam.rels["refGateway"], Rel::One(GW.into()));
        assert_eq!(
            cam.rels["refTown"],
            Rel::One("urn:ngsi-ld:Town:yuexi:tiantang".into())
        );
        assert_eq!(cam.rels["refRoadSegment"], Rel::One(ROAD.into()));
        // The road knows which cameras count its traffic.
        match &e[ix[ROAD]].rels["refCamera"] {
            Rel::Many(v) => assert_eq!(v, &vec![CAM.to_string(), CAM2.to_string()]),
            other => panic!("{other:?}"),
        }
        assert_eq!(e[ix[ZONE]].rels["refCamera"], Rel::One(CAM.into()));
        assert_eq!(ix.len(), e.len(), "ids are unique");
    });
}

#[test]
fn status_and_last_will_flip_gateway_cameras_and_sensors() {
    let t = twin();
    let on = input(|b| {
        b.statuses.push((
            status(
                DeviceState::Online,
                &[("cam-tiantang-01", CameraState::Running, 9.84)],
            ),
            T0 + 5,
        ))
    });
    let changes = t.apply(&on);
    assert_eq!(live(&t, GW, "status").unwrap().value, json!("online"));
    // Observed at the hub's receive time.
    assert_eq!(live(&t, GW, "status").unwrap().observed_ms, T0 + 5);
    assert_eq!(live(&t, CAM, "status").unwrap().value, json!("online"));
    assert_eq!(live(&t, CAM, "fps").unwrap().value, json!(9.8));
    assert_eq!(
        live(&t, CAM, "cameraState").unwrap().value,
        json!("running")
    );
    // Not in the gateway's status: the gateway does not run it.
    assert_eq!(live(&t, CAM2, "status").unwrap().value, json!("offline"));
    assert_eq!(
        live(&t, CAM2, "cameraState").unwrap().value,
        json!("absent")
    );
    // An older agent reports no sensors: they follow the gateway.
    assert_eq!(live(&t, WL, "status").unwrap().value, json!("online"));
    assert!(changes.iter().any(|c| c.entity == GW));
    let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // The same status again: nothing changes (no history, no stream event).
    let again = input(|b| {
        b.statuses.push((
            status(
                DeviceState::Online,
                &[("cam-tiantang-01", CameraState::Running, 9.84)],
            ),
            T0 + 10_000,
        ))
    });
    assert!(t.apply(&again).is_empty());
    assert_eq!(live(&t, GW, "status").unwrap().observed_ms, T0 + 10_000);

    // The last will: offline, no cameras.
    let will = input(|b| {
        b.statuses
            .push((status(DeviceState::Offline, &[]), T0 + 20_000))
    });
    let changes = t.apply(&will);
    for id in [GW, CAM, WL] {
        assert_eq!(
            live(&t, id, "status").unwrap().value,
            json!("offline"),
            "{id}"
        );
    }
    let gw = changes.iter().find(|c| c.entity == GW).unwrap();
    assert_eq!(gw.attrs[0].0, "status");
    assert_eq!(gw.attrs[0].1.observed_ms, T0 + 20_000);
    // An observation older than the current one does not replace it.
    assert!(t.apply(&on).is_empty());
    assert_eq!(live(&t, CAM, "status").unwrap().value, json!("offline"));
    // Back.
    let back = input(|b| {
        b.statuses.push((
            status(
                DeviceState::Online,
                &[("cam-tiantang-01", CameraState::Running, 9.84)],
            ),
            T0 + 30_000,
        ))
    });
    t.apply(&back);
    assert_eq!(live(&t, CAM, "status").unwrap().value, json!("online"));
}

#[test]
fn zone_problems_occupancy_and_event_type() {
    let t = twin();
    let (p1, p2) = (Ulid::new(), Ulid::new());
    let ev = |phase, p, count, ts| {
        input(|b| {
            b.events
                .push(rule_event("no-parking-north", phase, p, count, ts))
        })
    };
    t.apply(&ev(Phase::Start, p1, Some(2), T0));
    assert_eq!(live(&t, ZONE, "activeProblems").unwrap().value, json!(1));
    assert_eq!(live(&t, ZONE, "occupancy").unwrap().value, json!(2));
    assert_eq!(
        live(&t, ZONE, "lastEventType").unwrap().value,
        json!("illegal_parking")
    );
    t.apply(&ev(Phase::Start, p2, Some(1), T0 + 1000));
    assert_eq!(live(&t, ZONE, "activeProblems").unwrap().value, json!(2));
    assert_eq!(live(&t, ZONE, "occupancy").unwrap().value, json!(1));
    t.apply(&ev(Phase::End, p1, None, T0 + 2000));
    assert_eq!(live(&t, ZONE, "activeProblems").unwrap().value, json!(1));
    // One still open: occupancy stays.
    assert_eq!(live(&t, ZONE, "occupancy").unwrap().value, json!(1));
    t.apply(&ev(Phase::End, p2, None, T0 + 3000));
    assert_eq!(live(&t, ZONE, "activeProblems").unwrap().value, json!(0));
    assert_eq!(live(&t, ZONE, "occupancy").unwrap().value, json!(0));
    assert_eq!(live(&t, ZONE, "occupancy").unwrap().observed_ms, T0 + 3000);
    // A zone id the camera does not have in the county: ignored.
    let unknown = input(|b| {
        b.events
            .push(rule_event("elsewhere", Phase::Start, p1, None, T0))
    });
    assert!(t.apply(&unknown).is_empty());
    // A resend (duplicate id) is not applied again.
    let mut dup = ev(Phase::Start, Ulid::new(), Some(7), T0 + 4000);
    dup.duplicates.insert(dup.batch.events[0].id);
    assert!(t.apply(&dup).is_empty());
}

#[test]
fn sensor_readings_and_road_flow() {
    let t = twin();
    let wl = input(|b| {
        b.telemetry.push(tel(
            "wl-underpass-01",
            T0,
            &[("water_level_cm", 31.5), ("water_level_cm.max", 33.0)],
        ))
    });
    t.apply(&wl);
    let o = live(&t, WL, "water_level_cm").unwrap();
    assert_eq!((o.value, o.observed_ms), (json!(31.5), T0));
    assert!(live(&t, WL, "water_level_cm.max").is_none());
    // A sensor not in the inventory: ignored.
    assert!(t
        .apply(&input(|b| b.telemetry.push(tel(
            "wl-nowhere",
            T0,
            &[("water_level_cm", 1.0)]
        ))))
        .is_empty());

    // Flow windows: the first has no known length, the second is 10 s.
    let flow = |ts, m: &[(&str, f64)]| input(|b| b.telemetry.push(tel("agent", ts, m)));
    t.apply(&flow(T0, &[("outbox.pending", 0.0)]));
    assert_eq!(live(&t, ROAD, "intensity").unwrap().value, json!(0.0));
    assert!(live(&t, ROAD, "flowPerHour").is_none());
    t.apply(&flow(
        T0 + 10_000,
        &[
            ("cam-tiantang-01.flow.road-east.car.in", 3.0),
            ("cam-tiantang-01.flow.road-east.car.out", 2.0),
            ("cam-tiantang-01.flow.road-east.person.in", 1.0),
            // The same road seen by a second camera: the busier line counts, not the sum.
            ("cam-tiantang-02.flow.ave-north.car.in", 4.0),
            ("cam-tiantang-02.flow.tianzhai-west.bus.out", 2.0),
            ("cam-tiantang-01.fps", 10.0),
        ],
    ));
    assert_eq!(live(&t, ROAD, "intensity").unwrap().value, json!(6.0));
    assert_eq!(
        live(&t, ROAD, "intensityByClass").unwrap().value,
        json!({"car": 5.0, "person": 1.0})
    );
    assert_eq!(live(&t, ROAD, "flowPerHour").unwrap().value, json!(2160.0));
    assert_eq!(live(&t, ROAD2, "intensity").unwrap().value, json!(2.0));
    assert_eq!(live(&t, CAM, "fps").unwrap().value, json!(10.0));
}

#[test]
fn iso_times() {
    assert_eq!(iso_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(iso_ms(T0 + 123), "2026-09-21T14:13:20.123Z");
    assert_eq!(iso_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
}

#[test]
fn a_full_feed_drops_and_counts_without_waiting() {
    let t = Arc::new(twin());
    let (feed, mut rx) = channel(t.clone());
    let batch = Arc::new({
        let mut b = WriteBatch::default();
        b.telemetry
            .push(tel("wl-underpass-01", T0, &[("water_level_cm", 1.0)]));
        b
    });
    let out = WriteOutcome::default();
    // Nobody consumes: the channel fills, then offers are dropped and counted, never blocking.
    for _ in 0..FEED_CAPACITY + 3 {
        feed.offer(&batch, &out);
    }
    assert_eq!(t.counters.feed_dropped.load(Ordering::Relaxed), 3);
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    assert_eq!(n, FEED_CAPACITY);
    // A batch with nothing for the twin is not even offered.
    feed.offer(&Arc::new(WriteBatch::default()), &out);
    assert!(rx.try_recv().is_err());
}

#[test]
fn the_feed_is_bounded_by_bytes_too() {
    let t = Arc::new(twin());
    let (feed, mut rx) = channel(t.clone());
    // Three batches of 30 MiB of payload: the first fits alone, the second within 64 MiB, the
    // third not.
    let big = Arc::new({
        let mut b = WriteBatch::default();
        b.telemetry
            .push(tel("wl-underpass-01", T0, &[("water_level_cm", 1.0)]));
        b.telemetry_payloads
            .push(vec![b' '; 30 * 1024 * 1024].into());
        b
    });
    let out = WriteOutcome::default();
    for _ in 0..3 {
        feed.offer(&big, &out);
    }
    assert_eq!(t.counters.feed_dropped.load(Ordering::Relaxed), 1);
    assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok() && rx.try_recv().is_err());
}

#[test]
fn older_observations_go_to_history_only() {
    let t = twin();
    let at = |ts, v| {
        input(|b| {
            b.telemetry
                .push(tel("wl-underpass-01", ts, &[("water_level_cm", v)]))
        })
    };
    let (changes, records) = t.apply_all(&at(T0 + 2000, 5.0));
    assert_eq!(changes.len(), 1);
    assert_eq!(records.len(), 1);
    assert!(records[0].current);
    // A replayed older reading: history, but neither the current value nor the stream.
    let (changes, records) = t.apply_all(&at(T0 + 1000, 4.0));
    assert!(changes.is_empty());
    assert_eq!(records.len(), 1);
    assert!(!records[0].current);
    assert_eq!(records[0].obs.value, json!(4.0));
    assert_eq!(live(&t, WL, "water_level_cm").unwrap().value, json!(5.0));
}
