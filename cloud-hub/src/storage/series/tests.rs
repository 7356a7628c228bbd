use super::*;
use std::collections::BTreeMap as Map;

use crate::storage::store::{SledStore, Store, WriteBatch};

fn tel(ts_ms: i64, metrics: &[(&str, f64)]) -> Telemetry {
    Telemetry {
        v: 1,
        id: ulid::Ulid::new(),
        site: "yuexi".into(),
        device: "gw-01".into(),
        source: "wl-01".into(),
        ts_ms,
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

fn q(from_ms: i64, to_ms: i64, resolution: Option<Resolution>) -> SeriesQuery {
    SeriesQuery {
        site: "yuexi".into(),
        device: "gw-01".into(),
        source: "wl-01".into(),
        metric: "level".into(),
        from_ms,
        to_ms,
        resolution,
        limit: MAX_QUERY_POINTS,
    }
}

async fn write(store: &SledStore, t: Vec<Telemetry>) -> crate::storage::store::WriteOutcome {
    store
        .write(WriteBatch {
            telemetry: t,
            ..WriteBatch::default()
        })
        .await
        .expect("write")
}

/// Buckets computed independently of the store.
fn expected(points: &[(i64, f64)], width: i64) -> Vec<Bucket> {
    let mut m: Map<i64, Vec<f64>> = Map::new();
    for (t, v) in points {
        m.entry(t.div_euclid(width) * width).or_default().push(*v);
    }
    m.into_iter()
        .map(|(t, vs)| Bucket {
            t,
            min: vs.iter().cloned().fold(f64::INFINITY, f64::min),
            max: vs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            mean: vs.iter().sum::<f64>() / vs.len() as f64,
            count: vs.len() as u64,
        })
        .collect()
}

fn assert_buckets(got: &[Bucket], want: &[Bucket]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.t, g.count, g.min, g.max), (w.t, w.count, w.min, w.max));
        assert!((g.mean - w.mean).abs() < 1e-9, "{g:?} vs {w:?}");
    }
}

#[test]
fn bucket_math_floors_negative_and_edge_times() {
    assert_eq!(align(0, 60_000), 0);
    assert_eq!(align(59_999, 60_000), 0);
    assert_eq!(align(60_000, 60_000), 60_000);
    assert_eq!(align(-1, 60_000), -60_000);
    assert_eq!(align(-60_000, 60_000), -60_000);
    assert_eq!(align(-60_001, 60_000), -120_000);
    assert_eq!(align(i64::MAX, 60_000) % 60_000, 0);
    assert!(
        align(i64::MIN + 5, 3_600_000) <= i64::MIN + 5,
        "no overflow"
    );
    // Keys keep time order across zero.
    assert!(key(b'r', 1, -1) < key(b'r', 1, 0));
    assert!(key(b'r', 1, i64::MIN) < key(b'r', 1, -5));
    assert_eq!(key_time(&key(b'm', 3, -7_200_000)), Some(-7_200_000));
}

#[test]
fn chunks_round_trip_decimal_and_binary_values() {
    let pts = vec![
        (-5_000, 31.2),
        (0, 31.3),
        (10_000, -0.5),
        (10_000, 1e6),
        (25_001, 0.0),
    ];
    let enc = encode_points(&pts);
    assert_eq!(decode_points(&enc).expect("decodes"), pts);
    assert!(enc.len() < pts.len() * 6, "{} bytes", enc.len());
    let odd = vec![
        (1, std::f64::consts::PI),
        (2, -0.0),
        (3, 1e-300),
        (4, f64::MAX),
    ];
    let back = decode_points(&encode_points(&odd)).expect("decodes");
    for (a, b) in odd.iter().zip(&back) {
        assert_eq!((a.0, a.1.to_bits()), (b.0, b.1.to_bits()));
    }
    let mut b = Map::new();
    b.insert(60_000, Agg::one(2.5));
    b.insert(
        180_000,
        Agg {
            count: 3,
            sum: 0.1 + 0.2 + 0.3,
            min: 0.1,
            max: 0.3,
        },
    );
    assert_eq!(
        decode_buckets(&encode_buckets(&b, 0, 60_000), 0, 60_000).expect("decodes"),
        b
    );
    assert!(decode_points(&[0xff]).is_none());
}

#[tokio::test]
async fn out_of_order_points_land_in_their_buckets_and_duplicates_count_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), 8).expect("open");
    let base = 1_790_000_000_000 - 1_790_000_000_000 % 3_600_000;
    let a = tel(base + 61_000, &[("level", 3.0)]);
    let b = tel(base + 1_000, &[("level", 1.0), ("battery", 3.6)]);
    let c = tel(base + 65_000, &[("level", 5.5)]);
    // Late: an hour earlier, after newer points were persisted.
    let late = tel(base - 3_000_000, &[("level", -2.0)]);
    write(&store, vec![a.clone(), b.clone()]).await;
    store.series().persist().expect("persist");
    let out = write(&store, vec![c.clone(), a.clone(), late.clone()]).await;
    assert_eq!(out.telemetry_duplicate, vec![a.id]);
    let pts = [
        (late.ts_ms, -2.0),
        (b.ts_ms, 1.0),
        (a.ts_ms, 3.0),
        (c.ts_ms, 5.5),
    ];
    for persisted in [false, true] {
        if persisted {
            store.series().persist().expect("persist");
        }
        let (from, to) = (base - 3_600_000, base + 3_600_000);
        let raw = store
            .series()
            .query(&q(from, to, Some(Resolution::Raw)))
            .expect("query")
            .expect("series exists");
        let got: Vec<(i64, f64)> = raw
            .points
            .expect("points")
            .iter()
            .map(|p| (p.t, p.v))
            .collect();
        assert_eq!(got, pts);
        for res in [Resolution::Minute, Resolution::Hour] {
            let d = store
                .series()
                .query(&q(from, to, Some(res)))
                .expect("query")
                .expect("series exists");
            assert_buckets(
                &d.buckets.expect("buckets"),
                &expected(&pts, res.bucket_ms()),
            );
        }
    }
    let (list, truncated) = store.series().list(&SeriesFilter {
        metric: Some("level".into()),
        limit: 10,
        ..SeriesFilter::default()
    });
    assert!(!truncated);
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].first_ms, list[0].last_ms, list[0].count),
        (late.ts_ms, c.ts_ms, 4)
    );
    let (all, _) = store.series().list(&SeriesFilter {
        limit: 10,
        ..SeriesFilter::default()
    });
    assert_eq!(all.len(), 2);
}

#[tokio::test]
async fn a_crash_between_log_append_and_series_persist_is_replayed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = 1_790_000_000_000i64;
    let first: Vec<Telemetry> = (0..50)
        .map(|i| tel(base + i * 7_000, &[("level", i as f64)]))
        .collect();
    let second: Vec<Telemetry> = (50..120)
        .map(|i| tel(base + i * 7_000, &[("level", i as f64)]))
        .collect();
    {
        let store = SledStore::open(dir.path(), 8).expect("open");
        write(&store, first.clone()).await;
        store.series().persist().expect("persist");
        write(&store, second.clone()).await;
        // Simulated crash: the second batch is in the log only. Forget the pending points
        // (as a dead process would) so neither a later persist nor Drop writes them.
        let mut st = lock(&store.series().state);
        st.pending = Pending::default();
        st.infos_dirty.clear();
        st.applied = st.persisted;
        drop(st);
    }
    // Wait for the old persister thread to let go of the database lock.
    let store = loop {
        match SledStore::open(dir.path(), 8) {
            Ok(s) => break s,
            Err(e) if e.to_string().contains("lock") => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    let pts: Vec<(i64, f64)> = first
        .iter()
        .chain(&second)
        .map(|t| (t.ts_ms, t.metrics["level"]))
        .collect();
    let check = |store: &SledStore| {
        let d = store
            .series()
            .query(&q(
                base - 3_600_000,
                base + 3_600_000,
                Some(Resolution::Minute),
            ))
            .expect("query")
            .expect("exists");
        assert_buckets(&d.buckets.expect("buckets"), &expected(&pts, 60_000));
        let raw = store
            .series()
            .query(&q(base, base + 3_600_000, Some(Resolution::Raw)))
            .expect("query")
            .expect("exists");
        assert_eq!(raw.points.expect("points").len(), 120);
    };
    check(&store);
    // Reopening again replays nothing more (the watermark moved with the data).
    assert_eq!(
        store.series().catch_up(&store.telemetry).expect("catch up"),
        0
    );
    drop(store);
    let store = loop {
        match SledStore::open(dir.path(), 8) {
            Ok(s) => break s,
            Err(e) if e.to_string().contains("lock") => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    check(&store);
    assert_eq!(
        store
            .series()
            .list(&SeriesFilter {
                limit: 5,
                ..SeriesFilter::default()
            })
            .0[0]
            .count,
        120
    );
}

#[tokio::test]
async fn retention_prunes_each_resolution_at_its_own_cutoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), 8)
        .expect("open")
        .with_telemetry_retention(Retention {
            raw_days: 1,
            minute_days: 2,
            hour_days: 3,
        });
    let now = 1_790_000_000_000 - 1_790_000_000_000 % 86_400_000;
    let day = 86_400_000;
    let ts = [
        now - 3 * day - 7_200_000,
        now - 2 * day - 7_200_000,
        now - day - 7_200_000,
        now - 60_000,
    ];
    write(
        &store,
        ts.iter().map(|t| tel(*t, &[("level", 1.0)])).collect(),
    )
    .await;
    store.series().persist().expect("persist");
    store.series().prune(now).expect("prune");
    let count = |res| {
        let d = store
            .series()
            .query(&q(now - 10 * day, now + day, Some(res)))
            .expect("query")
            .expect("exists");
        match res {
            Resolution::Raw => d.points.expect("points").len(),
            _ => d.buckets.expect("buckets").len(),
        }
    };
    assert_eq!(count(Resolution::Raw), 1);
    assert_eq!(count(Resolution::Minute), 2);
    // The 1h block of a day is kept while any of its day is inside the cutoff.
    assert_eq!(count(Resolution::Hour), 3);
}

#[test]
fn retention_validation_names_the_key() {
    let bad = Retention {
        raw_days: 0,
        ..Retention::default()
    };
    assert_eq!(
        bad.validate().unwrap_err().0,
        "telemetry_retention.raw_days"
    );
    let bad = Retention {
        raw_days: 100,
        minute_days: 90,
        hour_days: 730,
    };
    assert_eq!(
        bad.validate().unwrap_err().0,
        "telemetry_retention.minute_days"
    );
    let bad = Retention {
        hour_days: 10,
        ..Retention::default()
    };
    assert_eq!(
        bad.validate().unwrap_err().0,
        "telemetry_retention.hour_days"
    );
    Retention::default().validate().expect("defaults are valid");
}

#[test]
fn auto_picks_raw_then_minutes_then_hours() {
    let now = csb_wire::now_ms();
    let info = SeriesInfo {
        site: "s".into(),
        device: "d".into(),
        source: "x".into(),
        metric: "m".into(),
        first_ms: now - 7 * 86_400_000,
        last_ms: now,
        count: 7 * 8640,
    };
    let r = Retention::default();
    let at = |span: i64| auto_resolution(&info, &q(now - span, now, None), r);
    assert_eq!(at(3_600_000), Resolution::Raw);
    assert_eq!(at(86_400_000), Resolution::Minute);
    assert_eq!(at(7 * 86_400_000), Resolution::Hour);
}
