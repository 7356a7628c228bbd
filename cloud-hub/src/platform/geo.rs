//! Geometry of the county: the GeoJSON shapes the county model and the twin use, and the
//! distances geo queries need. Coordinates are `[longitude, latitude]` in degrees (GeoJSON
//! order); distances are metres on a sphere of the Earth's mean radius, which is within 0.5 % of
//! the ellipsoid: plenty for "cameras within 500 m".

use serde::{Deserialize, Serialize};

/// Mean Earth radius (IUGG), metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

pub type Position = [f64; 2];

/// The GeoJSON geometries the county model uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "coordinates")]
pub enum Geometry {
    Point(Position),
    LineString(Vec<Position>),
    /// Outer ring first, then holes; each ring closed (first = last).
    Polygon(Vec<Vec<Position>>),
    MultiPolygon(Vec<Vec<Vec<Position>>>),
}

/// Great-circle distance between two positions (haversine).
pub fn haversine_m(a: Position, b: Position) -> f64 {
    let (lat1, lat2) = (a[1].to_radians(), b[1].to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b[0] - a[0]).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Even-odd rule; a point on an edge may count either way.
fn in_ring(p: Position, ring: &[Position]) -> bool {
    let mut inside = false;
    let n = ring.len();
    if n < 3 {
        return false;
    }
    let mut j = n - 1;
    for i in 0..n {
        let (a, b) = (ring[i], ring[j]);
        if (a[1] > p[1]) != (b[1] > p[1]) {
            let x = a[0] + (p[1] - a[1]) / (b[1] - a[1]) * (b[0] - a[0]);
            if p[0] < x {
                inside = !inside;
            }
        }
        j = i;
    }
    inside
}

fn in_polygon(p: Position, rings: &[Vec<Position>]) -> bool {
    match rings.split_first() {
        Some((outer, holes)) => in_ring(p, outer) && !holes.iter().any(|h| in_ring(p, h)),
        None => false,
    }
}

/// Distance from `p` to the segment `a`–`b`, in metres. The segment is projected onto a plane
/// tangent at `p` (equirectangular): exact enough for the few-kilometre segments of a county.
fn segment_m(p: Position, a: Position, b: Position) -> f64 {
    let k = p[1].to_radians().cos();
    let to_xy = |q: Position| ((q[0] - p[0]) * k, q[1] - p[1]);
    let ((ax, ay), (bx, by)) = (to_xy(a), to_xy(b));
    let (dx, dy) = (bx - ax, by - ay);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (-(ax * dx + ay * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    // The nearest point, back in degrees, measured with haversine like everything else.
    let near = [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])];
    haversine_m(p, near)
}

fn rings_m(p: Position, rings: &[Vec<Position>]) -> f64 {
    rings
        .iter()
        .flat_map(|r| r.windows(2))
        .map(|w| segment_m(p, w[0], w[1]))
        .fold(f64::INFINITY, f64::min)
}

impl Geometry {
    /// Whether `p` lies inside (polygons) or on (a point equal to it).
    pub fn contains(&self, p: Position) -> bool {
        match self {
            Geometry::Point(q) => *q == p,
            Geometry::LineString(_) => false,
            Geometry::Polygon(rings) => in_polygon(p, rings),
            Geometry::MultiPolygon(polys) => polys.iter().any(|r| in_polygon(p, r)),
        }
    }

    /// Shortest distance from `p` to the geometry in metres; 0 inside a polygon.
    pub fn distance_m(&self, p: Position) -> f64 {
        match self {
            Geometry::Point(q) => haversine_m(p, *q),
            Geometry::LineString(line) => match line.len() {
                1 => haversine_m(p, line[0]),
                _ => line
                    .windows(2)
                    .map(|w| segment_m(p, w[0], w[1]))
                    .fold(f64::INFINITY, f64::min),
            },
            Geometry::Polygon(rings) if in_polygon(p, rings) => 0.0,
            Geometry::Polygon(rings) => rings_m(p, rings),
            Geometry::MultiPolygon(polys) if polys.iter().any(|r| in_polygon(p, r)) => 0.0,
            Geometry::MultiPolygon(polys) => polys
                .iter()
                .map(|r| rings_m(p, r))
                .fold(f64::INFINITY, f64::min),
        }
    }

    /// A representative point: the point itself, a line's middle vertex, the mean of a
    /// polygon's outer ring (for labels and "where is it" answers).
    pub fn anchor(&self) -> Option<Position> {
        let mean = |pts: &[Position]| {
            // A closed ring repeats its first point: leave the repeat out.
            let pts = match pts {
                [first, rest @ ..] if rest.last() == Some(first) => &pts[..pts.len() - 1],
                _ => pts,
            };
            (!pts.is_empty()).then(|| {
                let n = pts.len() as f64;
                let s = pts
                    .iter()
                    .fold([0.0, 0.0], |s, q| [s[0] + q[0], s[1] + q[1]]);
                [s[0] / n, s[1] / n]
            })
        };
        match self {
            Geometry::Point(q) => Some(*q),
            Geometry::LineString(l) => l.get(l.len() / 2).copied(),
            Geometry::Polygon(rings) => rings.first().and_then(|r| mean(r)),
            Geometry::MultiPolygon(p) => p.first().and_then(|r| r.first()).and_then(|r| mean(r)),
        }
    }

    /// Checks what the types cannot: finite, in-range coordinates; lines of 2+ points; rings
    /// closed with 4+ points. The error says what is wrong, for the caller to name the object.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |q: &Position| {
            if !(q[0].is_finite() && q[1].is_finite()) {
                return Err(format!("coordinate {q:?} is not a number"));
            }
            if !(-180.0..=180.0).contains(&q[0]) || !(-90.0..=90.0).contains(&q[1]) {
                return Err(format!(
                    "coordinate {q:?} is outside [-180..180, -90..90] (GeoJSON order is [lon, lat])"
                ));
            }
            Ok(())
        };
        let ring = |r: &Vec<Position>| {
            r.iter().try_for_each(pos)?;
            if r.len() < 4 || r.first() != r.last() {
                return Err(format!(
                    "a polygon ring needs 4+ positions and must end where it starts ({} given)",
                    r.len()
                ));
            }
            Ok(())
        };
        match self {
            Geometry::Point(q) => pos(q),
            Geometry::LineString(l) if l.len() < 2 => Err("a LineString needs 2+ positions".into()),
            Geometry::LineString(l) => l.iter().try_for_each(pos),
            Geometry::Polygon(rings) if rings.is_empty() => Err("a Polygon needs a ring".into()),
            Geometry::Polygon(rings) => rings.iter().try_for_each(ring),
            Geometry::MultiPolygon(p) if p.iter().any(Vec::is_empty) || p.is_empty() => {
                Err("a MultiPolygon needs polygons with rings".into())
            }
            Geometry::MultiPolygon(p) => p.iter().flatten().try_for_each(ring),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_known_distances() {
        // One degree of latitude: 111.195 km on the mean sphere.
        let d = haversine_m([116.36, 30.0], [116.36, 31.0]);
        assert!((d - 111_195.0).abs() < 1.0, "{d}");
        // One degree of longitude at 30.85° N: 111.195 km × cos(30.85°).
        let d = haversine_m([116.0, 30.85], [117.0, 30.85]);
        let want = 111_195.08 * 30.85f64.to_radians().cos();
        assert!((d - want).abs() / want < 1e-3, "{d} vs {want}");
        assert_eq!(haversine_m([116.36, 30.85], [116.36, 30.85]), 0.0);
    }

    fn square() -> Geometry {
        Geometry::Polygon(vec![vec![
            [116.0, 30.0],
            [116.01, 30.0],
            [116.01, 30.01],
            [116.0, 30.01],
            [116.0, 30.0],
        ]])
    }

    #[test]
    fn polygon_contains_and_distance() {
        let sq = square();
        assert!(sq.contains([116.005, 30.005]));
        assert!(!sq.contains([116.02, 30.005]));
        assert_eq!(sq.distance_m([116.005, 30.005]), 0.0);
        // Due east of the east edge by 0.01° of longitude.
        let d = sq.distance_m([116.02, 30.005]);
        let want = haversine_m([116.01, 30.005], [116.02, 30.005]);
        assert!((d - want).abs() < 0.5, "{d} vs {want}");
        // A hole.
        let mut holed = square();
        if let Geometry::Polygon(r) = &mut holed {
            r.push(vec![
                [116.004, 30.004],
                [116.006, 30.004],
                [116.006, 30.006],
                [116.004, 30.006],
                [116.004, 30.004],
            ]);
        }
        assert!(!holed.contains([116.005, 30.005]));
        assert!(holed.contains([116.002, 30.002]));
    }

    #[test]
    fn line_distance_is_to_the_nearest_point_of_a_segment() {
        let line = Geometry::LineString(vec![[116.0, 30.0], [116.0, 30.01]]);
        let d = line.distance_m([116.001, 30.005]);
        let want = haversine_m([116.0, 30.005], [116.001, 30.005]);
        assert!((d - want).abs() < 0.5, "{d} vs {want}");
        // Beyond an end: the distance to that end.
        let d = line.distance_m([116.0, 30.02]);
        assert!((d - haversine_m([116.0, 30.01], [116.0, 30.02])).abs() < 0.5);
    }

    #[test]
    fn geojson_round_trip_and_validation() {
        let g: Geometry =
            serde_json::from_str(r#"{"type":"Point","coordinates":[116.3605,30.8485]}"#).unwrap();
        assert_eq!(g, Geometry::Point([116.3605, 30.8485]));
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            r#"{"type":"Point","coordinates":[116.3605,30.8485]}"#
        );
        assert!(square().validate().is_ok());
        let swapped = Geometry::Point([30.85, 116.36]);
        assert!(swapped.validate().unwrap_err().contains("[lon, lat]"));
        let open = Geometry::Polygon(vec![vec![
            [116.0, 30.0],
            [116.1, 30.0],
            [116.1, 30.1],
            [116.0, 30.1],
        ]]);
        assert!(open.validate().unwrap_err().contains("end where it starts"));
        assert!(Geometry::LineString(vec![[116.0, 30.0]])
            .validate()
            .is_err());
        let a = square().anchor().unwrap();
        assert!(
            (a[0] - 116.005).abs() < 1e-9 && (a[1] - 30.005).abs() < 1e-9,
            "{a:?}"
        );
    }
}
