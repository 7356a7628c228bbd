//! Expected values worked out independently of the hub's code: telemetry rollups (the hub's
//! `storage/series`) and great-circle distances (the hub's `platform/geo`); and readers of the
//! hub's answers they are compared with.

use std::collections::BTreeMap;

use serde_json::Value;

/// One rollup bucket of a series: start, min, max, mean and count of its points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub t: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl Bucket {
    /// (start, min, max, count): what compares exactly (a mean may differ in the last bits).
    pub fn exact(&self) -> (i64, f64, f64, u64) {
        (self.t, self.min, self.max, self.count)
    }
}

/// The buckets of `width` ms (aligned to the Unix epoch) that `points` (time, value) fall in,
/// oldest first.
pub fn rollup(points: &[(i64, f64)], width: i64) -> Vec<Bucket> {
    let mut m: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for (t, v) in points {
        m.entry(t - t.rem_euclid(width)).or_default().push(*v);
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

/// The `buckets` of a `GET /api/v1/telemetry/series/query` answer.
pub fn buckets_in(body: &Value) -> Vec<Bucket> {
    body["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("no buckets in {body}"))
        .iter()
        .map(|b| Bucket {
            t: b["t"].as_i64().unwrap(),
            min: b["min"].as_f64().unwrap(),
            max: b["max"].as_f64().unwrap(),
            mean: b["mean"].as_f64().unwrap(),
            count: b["count"].as_u64().unwrap(),
        })
        .collect()
}

/// The raw `points` (time, value) of a `GET /api/v1/telemetry/series/query` answer.
pub fn points_in(body: &Value) -> Vec<(i64, f64)> {
    body["points"]
        .as_array()
        .unwrap_or_else(|| panic!("no points in {body}"))
        .iter()
        .map(|p| (p["t"].as_i64().unwrap(), p["v"].as_f64().unwrap()))
        .collect()
}

/// The row of device `id` (`SITE/DEVICE[/SOURCE]`) in a `GET /api/v1/inventory` answer.
pub fn inventory_row<'a>(inv: &'a Value, id: &str) -> &'a Value {
    inv["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("{id} is in the inventory"))
}

/// The group of a `GET /api/v1/events/aggregate` answer whose key starts with `key`.
pub fn aggregate_group<'a>(body: &'a Value, key: &str) -> &'a Value {
    body["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("no groups in {body}"))
        .iter()
        .find(|g| g["key"][0] == key)
        .unwrap_or_else(|| panic!("no {key} group in {body}"))
}

/// The count in an aggregate `group`'s bucket that starts at `t`; 0 when there is none.
pub fn bucket_count(group: &Value, t: i64) -> u64 {
    group["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("no buckets in {group}"))
        .iter()
        .find(|b| b[0] == t)
        .map_or(0, |b| b[1].as_u64().unwrap())
}

/// `got` and `want` hold the same buckets: start, min, max and count exactly, the mean within
/// 1e-9.
pub fn assert_same_buckets(got: &[Bucket], want: &[Bucket]) {
    assert_eq!(got.len(), want.len(), "got {got:?}\nwant {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.exact(), w.exact(), "{g:?} vs {w:?}");
        assert!((g.mean - w.mean).abs() < 1e-9, "mean {g:?} vs {w:?}");
    }
}

/// Great-circle distance in metres between two `[lon, lat]` points, by haversine on the mean
/// Earth sphere (radius 6,371,008.8 m).
pub fn haversine_m(a: [f64; 2], b: [f64; 2]) -> f64 {
    let r = 6_371_008.8_f64;
    let (p1, p2) = (a[1].to_radians(), b[1].to_radians());
    let (dp, dl) = (p2 - p1, (b[0] - a[0]).to_radians());
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * r * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_groups_by_aligned_bucket() {
        let points = [(59_999, 1.0), (0, 3.0), (60_000, -2.0), (-1, 5.0)];
        let got = rollup(&points, 60_000);
        assert_eq!(
            got.iter().map(Bucket::exact).collect::<Vec<_>>(),
            [
                (-60_000, 5.0, 5.0, 1),
                (0, 1.0, 3.0, 2),
                (60_000, -2.0, -2.0, 1)
            ]
        );
        assert_eq!(got[1].mean, 2.0);
    }

    #[test]
    fn haversine_of_a_degree_of_latitude() {
        let d = haversine_m([119.0, 30.0], [119.0, 31.0]);
        assert!((d - 111_195.08).abs() < 0.1, "{d}");
        assert_eq!(haversine_m([1.0, 2.0], [1.0, 2.0]), 0.0);
    }
}
