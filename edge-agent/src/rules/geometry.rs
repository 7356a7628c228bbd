//! Plane geometry in image coordinates (x right, y down), in `f64` so pixel-scale
//! comparisons near edges are not at the mercy of `f32` rounding.

/// A point `(x, y)`.
pub type Pt = (f64, f64);

/// Distance under which a point counts as lying on a polygon edge (pixels for pixel polygons).
pub const EDGE_EPS: f64 = 1e-6;

pub use csb_wire::rules::polygon_area;

/// Cross product of `b - a` and `p - a`: > 0 when `p` is to the right of `a → b` as seen on an
/// image (y down), < 0 to the left, 0 on the line through them.
pub fn cross(a: Pt, b: Pt, p: Pt) -> f64 {
    (b.0 - a.0) * (p.1 - a.1) - (b.1 - a.1) * (p.0 - a.0)
}

/// Distance from `p` to the segment `a`–`b`.
pub fn dist_to_segment(p: Pt, a: Pt, b: Pt) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    };
    let (cx, cy) = (a.0 + t * dx, a.1 + t * dy);
    (p.0 - cx).hypot(p.1 - cy)
}

/// Whether `p` is inside `poly` (even-odd rule, ray casting). Points on an edge or a vertex
/// count as inside, so a zone drawn along a kerb includes objects standing exactly on it.
/// Fewer than 3 vertices is never inside.
pub fn point_in_polygon(p: Pt, poly: &[Pt]) -> bool {
    let n = poly.len();
    if n < 3 || !p.0.is_finite() || !p.1.is_finite() {
        return false;
    }
    let mut inside = false;
    let mut j = n - 1;
    for i in 0..n {
        let (a, b) = (poly[j], poly[i]);
        if dist_to_segment(p, a, b) <= EDGE_EPS {
            return true;
        }
        // Half-open rule on y: a vertex exactly at the ray's height is counted for one of its
        // two edges only, and horizontal edges never, so rays through vertices stay correct.
        if (a.1 > p.1) != (b.1 > p.1) {
            let x_at = a.0 + (p.1 - a.1) * (b.0 - a.0) / (b.1 - a.1);
            if p.0 < x_at {
                inside = !inside;
            }
        }
        j = i;
    }
    inside
}

/// Whether the segments `p1`–`p2` and `q1`–`q2` share a point (touching and collinear
/// overlap included).
pub fn segments_intersect(p1: Pt, p2: Pt, q1: Pt, q2: Pt) -> bool {
    let d1 = cross(q1, q2, p1);
    let d2 = cross(q1, q2, p2);
    let d3 = cross(p1, p2, q1);
    let d4 = cross(p1, p2, q2);
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    let on = |a: Pt, b: Pt, p: Pt, d: f64| {
        d == 0.0
            && p.0 >= a.0.min(b.0)
            && p.0 <= a.0.max(b.0)
            && p.1 >= a.1.min(b.1)
            && p.1 <= a.1.max(b.1)
    };
    on(q1, q2, p1, d1) || on(q1, q2, p2, d2) || on(p1, p2, q1, d3) || on(p1, p2, q2, d4)
}

/// Signed distance of `p` from the infinite line through `a → b`: positive on its right (as
/// seen on the image), negative on its left.
pub fn signed_distance(a: Pt, b: Pt, p: Pt) -> f64 {
    let len = (b.0 - a.0).hypot(b.1 - a.1);
    if len == 0.0 {
        0.0
    } else {
        cross(a, b, p) / len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUARE: [Pt; 4] = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)];

    #[test]
    fn pip_inside_outside_and_edges() {
        assert!(point_in_polygon((5.0, 5.0), &SQUARE));
        assert!(!point_in_polygon((15.0, 5.0), &SQUARE));
        assert!(!point_in_polygon((-0.001, 5.0), &SQUARE));
        // Every edge and every vertex counts as inside.
        for p in [(0.0, 5.0), (10.0, 5.0), (5.0, 0.0), (5.0, 10.0)] {
            assert!(point_in_polygon(p, &SQUARE), "edge point {p:?}");
        }
        for p in SQUARE {
            assert!(point_in_polygon(p, &SQUARE), "vertex {p:?}");
        }
        // Just outside each edge.
        for p in [(10.0001, 5.0), (5.0, 10.0001), (5.0, -0.0001)] {
            assert!(!point_in_polygon(p, &SQUARE), "{p:?}");
        }
        // Ray at the height of a vertex (the ray passes exactly through (10,0)/(10,10)).
        assert!(!point_in_polygon((-5.0, 0.0), &SQUARE));
        assert!(!point_in_polygon((-5.0, 10.0), &SQUARE));
        // Winding direction does not matter.
        let rev: Vec<Pt> = SQUARE.iter().rev().copied().collect();
        assert!(point_in_polygon((5.0, 5.0), &rev));
        assert!(!point_in_polygon((11.0, 5.0), &rev));
        // Degenerate input.
        assert!(!point_in_polygon((0.0, 0.0), &SQUARE[..2]));
        assert!(!point_in_polygon((f64::NAN, 5.0), &SQUARE));
    }

    #[test]
    fn pip_concave_and_ray_through_vertices() {
        // A "U": the notch (4..6, 0..6) is outside.
        let u = [
            (0.0, 0.0),
            (4.0, 0.0),
            (4.0, 6.0),
            (6.0, 6.0),
            (6.0, 0.0),
            (10.0, 0.0),
            (10.0, 10.0),
            (0.0, 10.0),
        ];
        assert!(!point_in_polygon((5.0, 3.0), &u));
        assert!(point_in_polygon((2.0, 3.0), &u));
        assert!(point_in_polygon((8.0, 3.0), &u));
        // The ray from (1,6) runs along the notch's bottom edge and through two vertices.
        assert!(point_in_polygon((1.0, 6.0), &u));
        assert!(point_in_polygon((5.0, 8.0), &u));
        // A diamond: rays through the side vertices.
        let d = [(5.0, 0.0), (10.0, 5.0), (5.0, 10.0), (0.0, 5.0)];
        assert!(point_in_polygon((5.0, 5.0), &d));
        assert!(point_in_polygon((1.0, 5.0), &d));
        assert!(!point_in_polygon((-1.0, 5.0), &d));
        assert!(!point_in_polygon((11.0, 5.0), &d));
        assert!(!point_in_polygon((1.0, 1.0), &d));
    }

    #[test]
    fn segments() {
        assert!(segments_intersect(
            (0.0, 0.0),
            (10.0, 10.0),
            (0.0, 10.0),
            (10.0, 0.0)
        ));
        assert!(!segments_intersect(
            (0.0, 0.0),
            (4.0, 4.0),
            (0.0, 10.0),
            (4.0, 6.0)
        ));
        // Touching at an end point, and collinear overlap.
        assert!(segments_intersect(
            (0.0, 0.0),
            (5.0, 5.0),
            (5.0, 5.0),
            (10.0, 0.0)
        ));
        assert!(segments_intersect(
            (0.0, 0.0),
            (5.0, 0.0),
            (3.0, 0.0),
            (8.0, 0.0)
        ));
        assert!(!segments_intersect(
            (0.0, 0.0),
            (2.0, 0.0),
            (3.0, 0.0),
            (8.0, 0.0)
        ));
        // Parallel.
        assert!(!segments_intersect(
            (0.0, 0.0),
            (5.0, 0.0),
            (0.0, 1.0),
            (5.0, 1.0)
        ));
    }

    #[test]
    fn sides_follow_the_image_convention() {
        // A line drawn left → right: below it (larger y) is its right side.
        assert!(signed_distance((0.0, 5.0), (10.0, 5.0), (3.0, 8.0)) > 0.0);
        assert!(signed_distance((0.0, 5.0), (10.0, 5.0), (3.0, 2.0)) < 0.0);
        assert_eq!(signed_distance((0.0, 5.0), (10.0, 5.0), (3.0, 5.0)), 0.0);
        assert!((signed_distance((0.0, 5.0), (10.0, 5.0), (3.0, 8.0)) - 3.0).abs() < 1e-12);
        assert!((polygon_area(&SQUARE) - 100.0).abs() < 1e-12);
    }
}
