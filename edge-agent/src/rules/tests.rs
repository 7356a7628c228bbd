//! Engine tests with synthetic tracks and explicit timestamps (no sleeping, no wall clock).

use csb_wire::{BBox, Phase, RuleType};

use super::*;
use crate::perception::{FrameMeta, TrackedObject};

/// Frame time of the first frame.
const T0: i64 = 1_790_000_000_000;
/// 10 fps.
const DT: i64 = 100;
/// Square frames, so normalised 0.4 = 400 px on both axes.
const W: u32 = 1000;

fn frame(ts: i64) -> FrameMeta {
    FrameMeta {
        camera: "cam-01".into(),
        ts_ms: ts,
        width: W,
        height: W,
    }
}

/// A track whose anchor (bottom centre) is at `(x, y)` pixels.
fn obj(id: u64, label: &str, x: f32, y: f32, speed: f32) -> TrackedObject {
    TrackedObject {
        track_id: id,
        class_id: match label {
            "person" => 0,
            "car" => 2,
            _ => 1,
        },
        label: label.into(),
        score: 0.8,
        bbox: BBox {
            x1: x - 20.0,
            y1: y - 40.0,
            x2: x + 20.0,
            y2: y,
        },
        missed: 0,
        first_seen_ms: T0,
        velocity: (speed, 0.0),
    }
}

fn engine(toml_text: &str) -> RuleEngine {
    let cfg: RulesConfig = toml::from_str(toml_text).expect("test config parses");
    RuleEngine::new(cfg).expect("test config is valid")
}

/// Runs frames every `DT` from `from` (inclusive) to `to` (exclusive), tracks from `f(ts)`.
fn run(
    e: &mut RuleEngine,
    from: i64,
    to: i64,
    f: impl Fn(i64) -> Vec<TrackedObject>,
) -> Vec<RuleOutput> {
    let mut out = Vec::new();
    let mut ts = from;
    while ts < to {
        out.extend(e.on_frame(&frame(ts), &f(ts)));
        ts += DT;
    }
    out
}

fn phases(out: &[RuleOutput]) -> Vec<Phase> {
    out.iter().map(|o| o.info.phase).collect()
}

fn count(out: &[RuleOutput], phase: Phase) -> usize {
    out.iter().filter(|o| o.info.phase == phase).count()
}

/// Every output must be a valid wire event.
fn assert_wire_valid(out: &[RuleOutput]) {
    use csb_wire::Validate;
    for o in out {
        let ev = csb_wire::Event {
            v: csb_wire::SCHEMA_VERSION,
            id: ulid::Ulid::new(),
            site: "yuexi".into(),
            device: "gw-01".into(),
            camera: "cam-01".into(),
            kind: csb_wire::EventKind::Rule,
            ts_ms: o.info.started_ms + o.info.duration_ms,
            frame: Some(csb_wire::FrameInfo {
                seq: 1,
                pts_ms: None,
                width: W,
                height: W,
            }),
            model: Some(csb_wire::ModelRef {
                name: "yolox_nano".into(),
                sha256: "695e750a5d57".into(),
            }),
            objects: o.objects.clone(),
            rule: Some(o.info.clone()),
        };
        ev.validate().unwrap_or_else(|e| panic!("{e}: {o:?}"));
        assert_eq!(o.info.snapshot, None);
    }
}

const PARKING: &str = r#"
[[zones]]
id = "no-park"
polygon = [[0.2, 0.2], [0.6, 0.2], [0.6, 0.6], [0.2, 0.6]]

[[rules]]
id = "park-1"
event_type = "illegal_parking"
category = "0201"
update_interval_s = 5
[rules.kind.dwell]
zone = "no-park"
classes = ["car", "truck"]
min_dwell_s = 10
"#;

#[test]
fn dwell_starts_after_min_dwell_updates_and_ends_when_leaving() {
    let mut e = engine(PARKING);
    // Parked inside the zone from T0 for 22 s.
    let out = run(&mut e, T0, T0 + 22_000, |_| {
        vec![obj(1, "car", 400.0, 400.0, 0.0)]
    });
    assert_eq!(
        phases(&out),
        [Phase::Start, Phase::Update, Phase::Update],
        "{out:#?}"
    );
    let start = &out[0].info;
    assert_eq!(start.rule, "park-1");
    assert_eq!(start.rule_type, RuleType::Dwell);
    assert_eq!(start.event_type, "illegal_parking");
    assert_eq!(start.category.as_deref(), Some("0201"));
    assert_eq!(start.zone.as_deref(), Some("no-park"));
    assert_eq!(start.track_ids, [1]);
    // Entered (first of the inertia frames) at T0; Start as soon as 10 s have passed.
    assert_eq!(start.started_ms, T0);
    assert_eq!(start.duration_ms, 10_000);
    assert_eq!(out[0].objects.len(), 1);
    assert_eq!(out[0].objects[0].track_id, Some(1));
    assert_eq!(out[0].objects[0].label, "car");
    // Updates every 5 s, same problem.
    assert_eq!(out[1].info.duration_ms, 15_000);
    assert_eq!(out[2].info.duration_ms, 20_000);
    assert!(out.iter().all(|o| o.info.problem_id == start.problem_id));

    // It drives off out of the zone: End after 3 frames outside (inertia), same problem id.
    let t1 = T0 + 22_000;
    let out2 = run(&mut e, t1, t1 + 1_000, |_| {
        vec![obj(1, "car", 800.0, 800.0, 0.0)]
    });
    assert_eq!(phases(&out2), [Phase::End]);
    assert_eq!(out2[0].info.problem_id, start.problem_id);
    assert_eq!(out2[0].info.started_ms, T0);
    assert_eq!(out2[0].info.duration_ms, 22_000 + 2 * DT);
    assert_wire_valid(&out);
    assert_wire_valid(&out2);
}

#[test]
fn dwell_survives_flicker_jitter_and_coasting_with_one_start() {
    let mut e = engine(PARKING);
    let out = run(&mut e, T0, T0 + 60_000, |ts| {
        let i = (ts - T0) / DT;
        let mut o = obj(1, "car", 400.0, 400.0, 3.0);
        match i % 20 {
            // Box flickers out of the zone for 2 frames (inertia is 3).
            5 | 6 => o.bbox.y2 = 700.0,
            // The speed estimate jumps above the stationary threshold for 2 frames.
            10 | 11 => o.velocity = (40.0, 0.0),
            // Coasting through skipped frames, the prediction drifting out of the zone and
            // even out of the frame.
            14..=18 => {
                o.missed = (i % 20 - 13) as u32;
                o.bbox = BBox {
                    x1: 900.0,
                    y1: 950.0,
                    x2: 1040.0,
                    y2: 1010.0,
                };
            }
            _ => {}
        }
        vec![o]
    });
    assert_eq!(count(&out, Phase::Start), 1, "{out:#?}");
    assert_eq!(count(&out, Phase::End), 0);
    // Start at 10 s, then an Update every 5 s until 60 s.
    assert_eq!(count(&out, Phase::Update), 9);
    assert_eq!(out[0].info.started_ms, T0);
    assert!(out
        .iter()
        .all(|o| o.info.problem_id == out[0].info.problem_id));
    // A coasting box outside the frame is clamped, so the hub accepts the event.
    assert_wire_valid(&out);
}

#[test]
fn dwell_ends_when_track_disappears_or_moves() {
    let mut e = engine(PARKING);
    let out = run(&mut e, T0, T0 + 11_000, |_| {
        vec![
            obj(1, "car", 400.0, 400.0, 0.0),
            obj(2, "truck", 300.0, 500.0, 0.0),
        ]
    });
    assert_eq!(count(&out, Phase::Start), 2);
    let p2 = out.iter().find(|o| o.info.track_ids == [2]).unwrap();
    let p2_id = p2.info.problem_id;
    assert_ne!(p2_id, out[0].info.problem_id, "one problem per track");

    // Track 2 vanishes: its problem ends in that very frame, with its last box.
    let t1 = T0 + 11_000;
    let out = e.on_frame(&frame(t1), &[obj(1, "car", 400.0, 400.0, 0.0)]);
    assert_eq!(phases(&out), [Phase::End]);
    assert_eq!(out[0].info.problem_id, p2_id);
    assert_eq!(out[0].objects[0].track_id, Some(2));
    assert_eq!(out[0].objects[0].bbox.y2, 500.0);

    // Track 1 starts moving: End after the inertia of 3 frames, at the third.
    let out = run(&mut e, t1 + DT, t1 + 10 * DT, |_| {
        vec![obj(1, "car", 400.0, 400.0, 80.0)]
    });
    assert_eq!(phases(&out), [Phase::End]);
    assert_eq!(out[0].info.track_ids, [1]);
    assert_eq!(out[0].info.duration_ms, 11_000 + 3 * DT);
}

#[test]
fn moving_objects_and_other_classes_do_not_trigger_dwell() {
    let mut e = engine(PARKING);
    // A car crawling through the zone at 20 px/s (threshold 15): inside for 20 s.
    let out = run(&mut e, T0, T0 + 20_000, |ts| {
        let x = 210.0 + (ts - T0) as f32 * 0.019;
        vec![
            obj(1, "car", x, 400.0, 20.0),
            // A person standing still: not a class of this rule.
            obj(2, "person", 300.0, 300.0, 0.0),
            // A car parked outside the zone.
            obj(3, "car", 800.0, 800.0, 0.0),
        ]
    });
    assert!(out.is_empty(), "{out:#?}");
}

#[test]
fn cooldown_prevents_immediate_restart() {
    let mut e = engine(&PARKING.replace("min_dwell_s = 10", "min_dwell_s = 2"));
    let parked = |_| vec![obj(1, "car", 400.0, 400.0, 0.0)];
    let out = run(&mut e, T0, T0 + 3_000, parked);
    assert_eq!(phases(&out), [Phase::Start]);
    // Leaves the zone briefly (End), comes straight back and parks again.
    let t1 = T0 + 3_000;
    let out = run(&mut e, t1, t1 + 500, |_| {
        vec![obj(1, "car", 800.0, 800.0, 0.0)]
    });
    assert_eq!(phases(&out), [Phase::End]);
    let end_ts = t1 + 2 * DT;
    let t2 = t1 + 500;
    // Parked again for 70 s: no Start until 60 s after the End.
    let out = run(&mut e, t2, t2 + 70_000, parked);
    assert_eq!(count(&out, Phase::Start), 1, "{out:#?}");
    let start = out.iter().find(|o| o.info.phase == Phase::Start).unwrap();
    assert_eq!(
        start.info.started_ms + start.info.duration_ms,
        end_ts + 60_000
    );
    // The new problem dwells since it re-entered, not since the first parking.
    assert_eq!(start.info.started_ms, t2);
    // Cooldown is per track: another car parking meanwhile is reported normally.
    let mut e = engine(&PARKING.replace("min_dwell_s = 10", "min_dwell_s = 2"));
    run(&mut e, T0, T0 + 3_000, parked);
    run(&mut e, t1, t1 + 500, |_| {
        vec![obj(1, "car", 800.0, 800.0, 0.0)]
    });
    let out = run(&mut e, t2, t2 + 3_000, |_| {
        vec![obj(7, "car", 450.0, 450.0, 0.0)]
    });
    assert_eq!(phases(&out), [Phase::Start]);
    assert_eq!(out[0].info.track_ids, [7]);
    assert_eq!(out[0].info.started_ms, t2);
}

const CROWD: &str = r#"
[[zones]]
id = "square"
polygon = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]

[[rules]]
id = "crowd-1"
event_type = "crowd_gathering"
cooldown_s = 0
[rules.kind.crowd]
zone = "square"
min_count = 3
min_duration_s = 5
"#;

#[test]
fn crowd_starts_after_duration_and_ends_below_count() {
    let mut e = engine(CROWD);
    let two = |_| {
        vec![
            obj(1, "person", 100.0, 100.0, 0.0),
            obj(2, "person", 200.0, 100.0, 0.0),
            // Cars and people outside the zone do not count.
            obj(3, "car", 300.0, 300.0, 0.0),
            obj(4, "person", 800.0, 800.0, 0.0),
        ]
    };
    assert!(run(&mut e, T0, T0 + 10_000, two).is_empty());
    let three = |ts| {
        let mut v = two(ts);
        v.push(obj(5, "person", 300.0, 200.0, 0.0));
        v
    };
    let t1 = T0 + 10_000;
    let out = run(&mut e, t1, t1 + 20_000, three);
    assert_eq!(phases(&out), [Phase::Start], "{out:#?}");
    let s = &out[0].info;
    assert_eq!(s.rule_type, RuleType::Crowd);
    assert_eq!(s.zone.as_deref(), Some("square"));
    assert_eq!(s.count, Some(3));
    assert_eq!(s.track_ids, [1, 2, 5]);
    assert_eq!(out[0].objects.len(), 3);
    // Person 5 is in the zone after 3 frames (inertia): from then on the count is 3; the
    // crowd starts when it has held 5 s.
    assert_eq!(s.started_ms, t1 + 2 * DT);
    assert_eq!(s.duration_ms, 5_000);
    let id = s.problem_id;

    // Person 5's box flickers out of the zone for 2 frames; then the tracker loses it and a new
    // track takes over at the same spot (in the zone after 3 frames): the count dips for 2
    // frames only, less than the inertia, so the crowd goes on.
    let t2 = t1 + 20_000;
    let out = run(&mut e, t2, t2 + 10 * DT, |ts| {
        let mut v = two(ts);
        match (ts - t2) / DT {
            0 | 1 => v.push(obj(5, "person", 300.0, 700.0, 0.0)),
            2 | 3 => v.push(obj(5, "person", 300.0, 200.0, 0.0)),
            _ => v.push(obj(6, "person", 300.0, 200.0, 0.0)),
        }
        v
    });
    assert!(out.is_empty(), "{out:#?}");
    // Track 6 leaves for good: End at the third frame below the count.
    let t3 = t2 + 10 * DT;
    let out = run(&mut e, t3, t3 + 1_000, two);
    assert_eq!(phases(&out), [Phase::End]);
    assert_eq!(out[0].info.duration_ms, t3 + 2 * DT - s.started_ms);
    assert_eq!(out[0].info.problem_id, id);
    assert_eq!(out[0].info.count, Some(2));
    assert_wire_valid(&out);
}

const LINE: &str = r#"
[[lines]]
id = "gate"
from = [0.1, 0.5]
to = [0.9, 0.5]

[[rules]]
id = "flow-1"
event_type = "traffic_flow"
[rules.kind.line_crossing]
line = "gate"
classes = ["car", "person", "bicycle"]
report_interval_s = 60
"#;

#[test]
fn line_crossing_directions_counts_and_debounce() {
    let mut e = engine(LINE);
    // Car 1 drives down the picture across the line (left→right of from→to: "in"); person 2
    // walks up ("out"); bicycle 3 waits on the line with ±3 px jitter; truck 4 is not counted;
    // car 5 passes beyond the end of the segment.
    let out = run(&mut e, T0, T0 + 4_000, |ts| {
        let k = (ts - T0) as f32 / 4_000.0;
        let jitter = if (ts / DT) % 2 == 0 { 3.0 } else { -3.0 };
        vec![
            obj(1, "car", 300.0, 300.0 + 400.0 * k, 100.0),
            obj(2, "person", 600.0, 700.0 - 400.0 * k, 100.0),
            obj(3, "bicycle", 500.0, 500.0 + jitter, 0.0),
            obj(4, "truck", 400.0, 300.0 + 400.0 * k, 100.0),
            obj(5, "car", 950.0, 300.0 + 400.0 * k, 100.0),
        ]
    });
    assert_eq!(phases(&out), [Phase::Instant, Phase::Instant], "{out:#?}");
    let by_track = |id: u64| out.iter().find(|o| o.info.track_ids == [id]).unwrap();
    assert_eq!(by_track(1).info.direction.as_deref(), Some("in"));
    assert_eq!(by_track(2).info.direction.as_deref(), Some("out"));
    assert_eq!(by_track(1).info.rule_type, RuleType::LineCrossing);
    assert_eq!(by_track(1).info.count, Some(1));
    assert_eq!(by_track(1).info.duration_ms, 0);
    assert_ne!(by_track(1).info.problem_id, by_track(2).info.problem_id);
    assert_wire_valid(&out);

    // Person 6 crosses down, back up, and down again within the 2 s debounce: in, out, and the
    // second "in" is not counted again.
    let t1 = T0 + 4_000;
    let ys = [450.0, 550.0, 450.0, 550.0];
    let out = run(&mut e, t1, t1 + 4 * DT, |ts| {
        vec![obj(6, "person", 500.0, ys[((ts - t1) / DT) as usize], 0.0)]
    });
    let dirs: Vec<_> = out
        .iter()
        .map(|o| o.info.direction.clone().unwrap())
        .collect();
    assert_eq!(dirs, ["in", "out"]);
    // After the debounce it counts again: back up across the line.
    let t2 = t1 + 5_000;
    let out = run(&mut e, t2, t2 + 2 * DT, |ts| {
        vec![obj(
            6,
            "person",
            500.0,
            if ts == t2 { 550.0 } else { 450.0 },
            0.0,
        )]
    });
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].info.direction.as_deref(), Some("out"));
    assert_eq!(out[0].info.count, Some(3), "third person-out of the window");

    let c = e.counts();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].rule, "flow-1");
    assert_eq!(c[0].line, "gate");
    assert_eq!(c[0].since_ms, T0);
    let car = c[0].by_class["car"];
    assert_eq!((car.in_count, car.out_count), (1, 0));
    let person = c[0].by_class["person"];
    assert_eq!((person.in_count, person.out_count), (1, 3));
    assert!(!c[0].by_class.contains_key("bicycle"));
    assert!(!c[0].by_class.contains_key("truck"));
    assert_eq!(
        c[0].total(),
        DirectionCounts {
            in_count: 2,
            out_count: 3
        }
    );
    let m = c[0].metrics();
    assert_eq!(m["flow-1.in"], 2.0);
    assert_eq!(m["flow-1.person.out"], 3.0);

    // Not due before the report interval; due after it, and the window restarts.
    assert!(e.take_due_counts(T0 + 59_000).is_empty());
    let taken = e.take_due_counts(T0 + 60_000);
    assert_eq!(taken.len(), 1);
    assert_eq!(
        taken[0].total(),
        DirectionCounts {
            in_count: 2,
            out_count: 3
        }
    );
    assert_eq!(taken[0].until_ms, T0 + 60_000);
    assert!(e.counts()[0].by_class.is_empty());
    assert_eq!(e.counts()[0].since_ms, T0 + 60_000);
    let again = e.take_line_counts(T0 + 61_000);
    assert_eq!(again[0].since_ms, T0 + 60_000);
    assert_eq!(again[0].total(), DirectionCounts::default());

    // The flat form for telemetry: only non-zero counters, since the last take.
    let t3 = T0 + 70_000;
    run(&mut e, t3, t3 + 2 * DT, |ts| {
        vec![obj(
            9,
            "car",
            200.0,
            if ts == t3 { 700.0 } else { 300.0 },
            0.0,
        )]
    });
    assert_eq!(
        e.take_counts(),
        [(
            ("gate".to_string(), "car".to_string(), "out".to_string()),
            1
        )]
    );
    assert!(e.take_counts().is_empty());
}

#[test]
fn line_crossing_counts_only_when_events_are_off() {
    let mut e = engine(&LINE.replace("report_interval_s = 60", "events = false"));
    let out = run(&mut e, T0, T0 + 2_000, |ts| {
        vec![obj(1, "car", 300.0, 300.0 + (ts - T0) as f32 * 0.2, 100.0)]
    });
    assert!(out.is_empty());
    assert_eq!(e.counts()[0].by_class["car"].in_count, 1);
}

#[test]
fn coasting_tracks_do_not_count_crossings_until_seen() {
    let mut e = engine(LINE);
    let mut out = e.on_frame(&frame(T0), &[obj(1, "car", 300.0, 400.0, 100.0)]);
    // Predicted across the line while coasting: not counted.
    let mut coast = obj(1, "car", 300.0, 600.0, 100.0);
    coast.missed = 1;
    out.extend(e.on_frame(&frame(T0 + DT), &[coast]));
    assert!(out.is_empty());
    // Seen again on the far side: counted once.
    out.extend(e.on_frame(&frame(T0 + 2 * DT), &[obj(1, "car", 300.0, 620.0, 100.0)]));
    assert_eq!(phases(&out), [Phase::Instant]);
    assert_eq!(out[0].info.direction.as_deref(), Some("in"));
}

// 2024-01-01 was a Monday; local (UTC+8) midnight of that Monday.
const MON_LOCAL: i64 = 1_704_067_200_000 - 8 * 3_600_000;

/// Local (UTC+8) time: `day` days after Monday 2024-01-01, at hh:mm.
fn local(day: i64, hh: i64, mm: i64) -> i64 {
    MON_LOCAL + day * 86_400_000 + (hh * 60 + mm) * 60_000
}

fn presence(schedule: &str, tz: i32) -> RuleEngine {
    engine(&format!(
        r#"
timezone_offset_minutes = {tz}
[[zones]]
id = "site"
polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
[[rules]]
id = "intrusion-1"
event_type = "intrusion"
[rules.kind.presence]
zone = "site"
classes = ["person"]
schedule = {schedule}
"#
    ))
}

fn starts_at(e: &mut RuleEngine, t: i64) -> bool {
    let out = run(e, t, t + 5_000, |_| {
        vec![obj(1, "person", 500.0, 500.0, 0.0)]
    });
    // Leave, so each probe is a separate visit.
    e.finish(t + 5_000);
    match count(&out, Phase::Start) {
        0 => false,
        1 => {
            assert_eq!(out[0].info.rule_type, RuleType::Presence);
            // In the zone after 3 frames (inertia), then 2 s (min_duration_s default).
            assert_eq!(out[0].info.started_ms, t + 2 * DT);
            assert_eq!(out[0].info.duration_ms, 2_000);
            true
        }
        n => panic!("{n} starts"),
    }
}

#[test]
fn presence_respects_schedule_weekdays_and_timezone() {
    // Weekdays 08:00–18:00 local.
    let weekdays = r#"[{ days = [1, 2, 3, 4, 5], start = "08:00", end = "18:00" }]"#;
    let mut e = presence(weekdays, 480);
    assert!(starts_at(&mut e, local(0, 10, 0)), "Monday 10:00");
    assert!(!starts_at(&mut e, local(0, 19, 0)), "Monday 19:00");
    assert!(!starts_at(&mut e, local(0, 7, 59)), "Monday 07:59");
    assert!(starts_at(&mut e, local(4, 17, 50)), "Friday 17:50");
    assert!(!starts_at(&mut e, local(5, 10, 0)), "Saturday");
    // The same instant as Monday 10:00 local is Monday 02:00 UTC: closed with offset 0.
    let mut utc = presence(weekdays, 0);
    assert!(!starts_at(&mut utc, local(0, 10, 0)));

    // Friday nights only, wrapping midnight: open Fri 22:00 → Sat 06:00.
    let nights = r#"[{ days = [5], start = "22:00", end = "06:00" }]"#;
    let mut e = presence(nights, 480);
    assert!(starts_at(&mut e, local(4, 23, 0)), "Friday 23:00");
    assert!(starts_at(&mut e, local(5, 3, 0)), "Saturday 03:00");
    assert!(!starts_at(&mut e, local(5, 6, 0)), "Saturday 06:00");
    assert!(!starts_at(&mut e, local(5, 23, 0)), "Saturday 23:00");
    assert!(
        !starts_at(&mut e, local(4, 3, 0)),
        "Friday 03:00 is Thursday's night"
    );
    assert!(!starts_at(&mut e, local(4, 21, 59)), "Friday 21:59");
    // Friday 23:00 local = Friday 15:00 UTC: closed for a UTC gateway.
    let mut utc = presence(nights, 0);
    assert!(!starts_at(&mut utc, local(4, 23, 0)));
}

#[test]
fn presence_ends_when_window_closes_and_ignores_time_before_it() {
    let mut e = presence(r#"[{ start = "08:00", end = "09:00" }]"#, 480);
    let person = |_| vec![obj(1, "person", 500.0, 500.0, 0.0)];
    // Present from 07:59:50: the window opens at 08:00, Start 2 s later (not at once).
    let t = local(2, 7, 59) + 50_000;
    let out = run(&mut e, t, t + 30_000, person);
    assert_eq!(phases(&out), [Phase::Start], "{out:#?}");
    assert_eq!(out[0].info.started_ms, local(2, 8, 0));
    assert_eq!(out[0].info.duration_ms, 2_000);
    let id = out[0].info.problem_id;
    // Ends at 09:00 although the person is still there.
    let t = local(2, 8, 59) + 59_000;
    let out = run(&mut e, t, t + 2_000, person);
    // The first frame after the gap carries the Update that fell due; the End comes at 09:00.
    assert_eq!(phases(&out), [Phase::Update, Phase::End]);
    assert_eq!(out[1].info.problem_id, id);
    assert_eq!(
        out[1].info.started_ms + out[1].info.duration_ms,
        local(2, 9, 0)
    );
}

fn sensor(kind: &str) -> RuleEngine {
    engine(&format!(
        r#"
[[rules]]
id = "water-1"
event_type = "waterlogging"
cooldown_s = 0
update_interval_s = 600
[rules.kind.sensor_threshold]
sensor = "wl-07"
metric = "water_level_cm"
{kind}
"#
    ))
}

/// Feeds readings one minute apart from T0; returns (minute, output).
fn feed(e: &mut RuleEngine, values: &[f64]) -> Vec<(usize, RuleOutput)> {
    values
        .iter()
        .enumerate()
        .flat_map(|(i, v)| {
            e.on_sensor("wl-07", "water_level_cm", T0 + i as i64 * 60_000, *v)
                .into_iter()
                .map(move |o| (i, o))
        })
        .collect()
}

#[test]
fn sensor_hysteresis_does_not_flap() {
    let mut e = sensor("above = 30.0\nhysteresis = 5.0");
    let out = feed(
        &mut e,
        &[
            29.0, 31.0, 29.5, 30.5, 29.0, 31.0, 25.5, 24.9, 29.0, 30.0, 31.0,
        ],
    );
    let got: Vec<(usize, Phase)> = out.iter().map(|(i, o)| (*i, o.info.phase)).collect();
    // Start at 31, no End until it falls to 25 or below, a new Start when it rises past 30.
    assert_eq!(
        got,
        [(1, Phase::Start), (7, Phase::End), (10, Phase::Start)]
    );
    let (s, end) = (&out[0].1.info, &out[1].1.info);
    assert_eq!(s.rule_type, RuleType::SensorThreshold);
    assert_eq!(s.value, Some(31.0));
    assert_eq!(s.direction.as_deref(), Some("above"));
    assert_eq!(s.zone, None);
    assert!(out[0].1.objects.is_empty());
    assert_eq!(end.problem_id, s.problem_id);
    assert_eq!(end.value, Some(24.9));
    assert_eq!(end.duration_ms, 6 * 60_000);
    assert_ne!(out[2].1.info.problem_id, s.problem_id);
    // Other sensors and metrics are not this rule's business.
    assert!(e
        .on_sensor("wl-08", "water_level_cm", T0 + 3_600_000, 99.0)
        .is_empty());
    assert!(e
        .on_sensor("wl-07", "battery_v", T0 + 3_600_000, 99.0)
        .is_empty());
}

#[test]
fn sensor_below_min_duration_updates_and_cooldown() {
    let mut e = engine(
        r#"
[[rules]]
id = "air-1"
event_type = "air_quality"
cooldown_s = 600
update_interval_s = 120
[rules.kind.sensor_threshold]
sensor = "wl-07"
metric = "water_level_cm"
below = 10.0
hysteresis = 2.0
min_duration_s = 150
"#,
    );
    // Dips below 10 for 2 min only: no Start. Then stays below: Start 150 s after the first
    // reading of the streak, i.e. at the 3rd reading (minute 6), Updates every 2 min.
    let out = feed(
        &mut e,
        &[
            12.0, 9.0, 9.5, 10.5, 9.0, 8.0, 7.0, 9.0, 11.0, 11.5, 12.5, 9.0, 9.0, 9.0, 9.0,
        ],
    );
    let got: Vec<(usize, Phase)> = out.iter().map(|(i, o)| (*i, o.info.phase)).collect();
    assert_eq!(
        got,
        [(7, Phase::Start), (9, Phase::Update), (10, Phase::End)],
        "{out:#?}"
    );
    let s = &out[0].1.info;
    assert_eq!(s.direction.as_deref(), Some("below"));
    assert_eq!(s.started_ms, T0 + 4 * 60_000);
    // Readings at minutes 11-14 are below again, but the 10-minute cooldown holds them off.
    let later = e.on_sensor("wl-07", "water_level_cm", T0 + 21 * 60_000, 9.0);
    assert_eq!(phases(&later), [Phase::Start]);
    assert_eq!(later[0].info.started_ms, T0 + 11 * 60_000);
}

#[test]
fn sensor_rate_of_change() {
    let mut e = sensor("rate_per_min = 5.0");
    // One reading a minute: +1, +1, +8 (rising), +1 (ends), -7 (falling), out-of-order ignored.
    let out = feed(&mut e, &[10.0, 11.0, 12.0, 20.0, 21.0, 14.0]);
    let got: Vec<(usize, Phase, Option<&str>)> = out
        .iter()
        .map(|(i, o)| (*i, o.info.phase, o.info.direction.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (3, Phase::Start, Some("rising")),
            (4, Phase::End, Some("rising")),
            (5, Phase::Start, Some("falling")),
        ]
    );
    assert_eq!(out[0].1.info.value, Some(20.0));
    // A reading older than the last is ignored; a slow change ends the problem.
    assert!(e.on_sensor("wl-07", "water_level_cm", T0, 100.0).is_empty());
    // +3 in 30 s is 6/min: still falling? No, rising, so the falling problem ends.
    let out = e.on_sensor("wl-07", "water_level_cm", T0 + 6 * 60_000, 14.5);
    assert_eq!(phases(&out), [Phase::End]);
    // Rate is per minute of real spacing: +3 in 30 s = 6/min.
    let out = e.on_sensor("wl-07", "water_level_cm", T0 + 6 * 60_000 + 30_000, 17.5);
    assert_eq!(phases(&out), [Phase::Start]);
    assert_eq!(out[0].info.direction.as_deref(), Some("rising"));
}

#[test]
fn finish_ends_open_problems() {
    let mut e = engine(PARKING);
    let out = run(&mut e, T0, T0 + 11_000, |_| {
        vec![obj(1, "car", 400.0, 400.0, 0.0)]
    });
    assert_eq!(phases(&out), [Phase::Start]);
    let end = e.finish(T0 + 12_000);
    assert_eq!(phases(&end), [Phase::End]);
    assert_eq!(end[0].info.problem_id, out[0].info.problem_id);
    assert_eq!(end[0].info.duration_ms, 12_000);
    assert_eq!(end[0].objects[0].track_id, Some(1));
    assert!(e.finish(T0 + 13_000).is_empty());
}

#[test]
fn zone_class_filter_and_frame_size_scaling() {
    // The zone admits only cars; a rule with no classes inherits that.
    let mut e = engine(
        r#"
[[zones]]
id = "lane"
polygon = [[0.5, 0.5], [1.0, 0.5], [1.0, 1.0], [0.5, 1.0]]
classes = ["car"]
inertia_frames = 1
[[rules]]
id = "r"
event_type = "illegal_parking"
[rules.kind.dwell]
zone = "lane"
min_dwell_s = 1
"#,
    );
    // 1920x1080: the zone is x >= 960, y >= 540 pixels.
    let fr = |ts| FrameMeta {
        camera: "c".into(),
        ts_ms: ts,
        width: 1920,
        height: 1080,
    };
    let mut out = Vec::new();
    for i in 0..20 {
        out.extend(e.on_frame(
            &fr(T0 + i * DT),
            &[
                obj(1, "car", 1000.0, 600.0, 0.0),
                obj(2, "person", 1000.0, 600.0, 0.0),
                obj(3, "car", 900.0, 600.0, 0.0),
            ],
        ));
    }
    assert_eq!(phases(&out), [Phase::Start]);
    assert_eq!(out[0].info.track_ids, [1]);
    assert_eq!(out[0].info.duration_ms, 1_000);
}

#[test]
fn config_errors_name_the_field() {
    let zones = r#"
[[zones]]
id = "a"
polygon = [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5]]
[[lines]]
id = "l"
from = [0.0, 0.5]
to = [1.0, 0.5]
"#;
    let dwell = |zone: &str| {
        format!(
            "[[rules]]\nid = \"r{zone}\"\nevent_type = \"e\"\n[rules.kind.dwell]\nzone = \"{zone}\"\nmin_dwell_s = 5\n"
        )
    };
    let check = |text: String, want: &str| {
        let cfg: RulesConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let e = RuleEngine::new(cfg).err().expect("invalid config");
        assert_eq!(e.to_string(), want, "{text}");
    };
    check(
        format!(
            "{zones}{}{}{}",
            dwell("a"),
            dwell("a").replace("\"ra\"", "\"r1\""),
            dwell("x")
        ),
        r#"rules[2].kind.dwell.zone: unknown zone "x""#,
    );
    check(
        format!("{zones}{}{}", dwell("a"), dwell("a")),
        r#"rules[1].id: rule "ra" is defined twice"#,
    );
    check(
        zones.replace("[0.5, 0.1], [0.5, 0.5]", "[0.5, 0.1]"),
        "zones[0].polygon: 2 points, a polygon needs at least 3",
    );
    check(
        zones.replace("[0.5, 0.5]]", "[1.5, 0.5]]"),
        "zones[0].polygon[2]: [1.5, 0.5] is not in normalised image coordinates 0..=1",
    );
    check(
        zones.replace("[0.5, 0.5]]", "[0.9, 0.1]]"),
        "zones[0].polygon: has no area (points coincide or lie on one line)",
    );
    check(
        zones.replace("to = [1.0, 0.5]", "to = [0.0, 0.5]"),
        "lines[0].to: is the same point as `from`",
    );
    check(
        format!(
            "{zones}[[rules]]\nid = \"f\"\nevent_type = \"flow\"\n[rules.kind.line_crossing]\nline = \"nope\"\n"
        ),
        r#"rules[0].kind.line_crossing.line: unknown line "nope""#,
    );
    let presence = |window: &str| {
        format!(
            "{zones}[[rules]]\nid = \"p\"\nevent_type = \"intrusion\"\n[rules.kind.presence]\nzone = \"a\"\nschedule = [{window}]\n"
        )
    };
    check(
        presence(r#"{ start = "8am", end = "18:00" }"#),
        r#"rules[0].kind.presence.schedule[0].start: "8am" is not a time HH:MM in 00:00..=23:59"#,
    );
    check(
        presence(r#"{ days = [1, 8], start = "08:00", end = "18:00" }"#),
        "rules[0].kind.presence.schedule[0].days[1]: 8 is not a weekday 1 (Monday) ..= 7 (Sunday)",
    );
    check(
        presence(r#"{ start = "08:00", end = "08:00" }"#),
        "rules[0].kind.presence.schedule[0].end: equals `start`: an empty window (use 00:00 to 24:00 for a whole day)",
    );
    check(
        format!(
            "{zones}[[rules]]\nid = \"c\"\nevent_type = \"crowd\"\n[rules.kind.crowd]\nzone = \"a\"\nmin_count = 0\n"
        ),
        "rules[0].kind.crowd.min_count: must be >= 1",
    );
    let flow = |id: &str| {
        format!("[[rules]]\nid = \"{id}\"\nevent_type = \"flow\"\n[rules.kind.line_crossing]\nline = \"l\"\n")
    };
    check(
        format!("{zones}{}{}", flow("f1"), flow("f2")),
        r#"rules[1].kind.line_crossing.line: line "l" is already counted by rule "f1""#,
    );
    check(
        "[[rules]]\nid = \"s\"\nevent_type = \"w\"\n[rules.kind.sensor_threshold]\nsensor = \"x\"\nmetric = \"m\"\n".into(),
        "rules[0].kind.sensor_threshold: needs at least one of `above`, `below`, `rate_per_min`",
    );
    check(
        format!(
            "{zones}{}",
            dwell("a").replace("[rules.kind", "update_interval_s = 0\n[rules.kind")
        ),
        "rules[0].update_interval_s: 0 must be a finite number > 0",
    );
    // Unknown and misspelt fields are refused by the parser, which names them.
    let e = toml::from_str::<RulesConfig>(
        &format!("{zones}{}", dwell("a")).replace("min_dwell_s", "min_dwel_s"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("min_dwel_s"), "{e}");
    let e = toml::from_str::<RulesConfig>(
        &format!("{zones}{}", dwell("a")).replace("[rules.kind.dwell]", "[rules.kind.dwel]"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("dwel"), "{e}");
}

/// The example from the report: a camera with a no-parking zone, a dwell rule, a counting line
/// and a crowd zone. In the agent config these are the camera's `zones`, `lines` and `rules`.
const EXAMPLE: &str = r#"
timezone_offset_minutes = 480

[[zones]]
id = "school-gate"
polygon = [[0.05, 0.55], [0.45, 0.50], [0.50, 0.95], [0.02, 0.98]]
classes = ["car", "truck", "bus", "motorbike"]
inertia_frames = 3

[[zones]]
id = "plaza"
polygon = [[0.55, 0.30], [0.98, 0.30], [0.98, 0.70], [0.55, 0.70]]

[[lines]]
id = "main-road"
from = [0.00, 0.45]
to = [1.00, 0.40]
classes = ["car", "truck", "bus", "motorbike", "bicycle", "person"]

[[rules]]
id = "no-parking-gate"
event_type = "illegal_parking"
category = "020104"
cooldown_s = 300
update_interval_s = 60
[rules.kind.dwell]
zone = "school-gate"
classes = ["car", "truck"]
min_dwell_s = 180
max_speed_px_s = 12

[[rules]]
id = "flow-main-road"
event_type = "traffic_flow"
[rules.kind.line_crossing]
line = "main-road"
report_interval_s = 60

[[rules]]
id = "plaza-crowd"
event_type = "crowd_gathering"
category = "0305"
[rules.kind.crowd]
zone = "plaza"
min_count = 15
min_duration_s = 120
"#;

#[test]
fn example_config_parses_with_defaults() {
    let cfg: RulesConfig = toml::from_str(EXAMPLE).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.rules.len(), 3);
    assert_eq!(cfg.zones[1].inertia_frames, 3, "default");
    assert_eq!(cfg.rules[1].cooldown_s, 60.0, "default");
    assert_eq!(cfg.rules[1].update_interval_s, 30.0, "default");
    match &cfg.rules[2].kind {
        RuleKind::Crowd(c) => assert_eq!(c.classes, ["person"], "default"),
        k => panic!("{k:?}"),
    }
    match &cfg.rules[1].kind {
        RuleKind::LineCrossing(l) => {
            assert_eq!(l.debounce_s, 2.0);
            assert!(l.events);
        }
        k => panic!("{k:?}"),
    }
    let e = RuleEngine::new(cfg).unwrap();
    assert!(e.needs_frames());
    assert_eq!(e.counts().len(), 1);
    // An empty config is valid and does nothing.
    let mut e = RuleEngine::new(RulesConfig::default()).unwrap();
    assert!(!e.needs_frames());
    assert!(e
        .on_frame(&frame(T0), &[obj(1, "car", 1.0, 1.0, 0.0)])
        .is_empty());
}
