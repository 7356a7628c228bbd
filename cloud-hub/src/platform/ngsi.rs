//! NGSI-LD query parameters (ETSI GS CIM 009): the `q` subset and geo-queries.
//!
//! `q`: terms joined by `;` (AND) and `|` (OR; AND binds tighter, no parentheses). A term is
//! `attr` (it exists) or `attr OP value` with OP one of `==`, `!=`, `>`, `>=`, `<`, `<=`.
//! Values: numbers, `true`/`false`, strings in double quotes, or a bare word / URI (taken as a
//! string, e.g. `refTown==urn:ngsi-ld:Town:yuexi:tiantang`); with `==`/`!=` also a list
//! `"a","b"` (any of) or a range `1..5` (inclusive). Numbers compare numerically, strings in
//! byte order; a missing attribute or a type mismatch fails the term. Relationships compare
//! their object(s). Sub-attribute paths (`a.b`, `a[b]`) are not supported.
//!
//! Geo: `georel=near;maxDistance==N` / `near;minDistance==N` (metres, haversine from the
//! reference Point to the nearest point of the entity's geometry; 0 inside a polygon),
//! `within`, `intersects`, `disjoint`, with `geometry=Point|Polygon` (also `LineString`) and
//! `coordinates=` a GeoJSON coordinates array, `[lon, lat]` order.

use serde_json::Value;

use crate::platform::geo::{Geometry, Position};
use crate::platform::twin::{AttrRef, Entity};

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Num(f64),
    Str(String),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rhs {
    One(Lit),
    /// Any of these (only with `==`/`!=`).
    List(Vec<Lit>),
    /// Inclusive range (only with `==`/`!=`).
    Range(Lit, Lit),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Exists(String),
    Cmp { attr: String, op: Op, rhs: Rhs },
}

/// OR of ANDs.
#[derive(Debug, Clone, PartialEq)]
pub struct Query(pub Vec<Vec<Term>>);

/// Splits on `sep` outside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn attr_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn parse_lit(s: &str) -> Result<Lit, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("a comparison needs a value".into());
    }
    if let Some(inner) = s.strip_prefix('"') {
        let Some(inner) = inner.strip_suffix('"') else {
            return Err(format!("unterminated string `{s}`"));
        };
        if inner.contains('"') {
            return Err(format!("`{s}`: a quote inside a string"));
        }
        return Ok(Lit::Str(inner.to_string()));
    }
    match s {
        "true" => return Ok(Lit::Bool(true)),
        "false" => return Ok(Lit::Bool(false)),
        _ => {}
    }
    if let Ok(n) = s.parse::<f64>() {
        if n.is_finite() {
            return Ok(Lit::Num(n));
        }
    }
    if s.contains(['"', '(', ')', '\'']) {
        return Err(format!("`{s}` is not a number, a quoted string or a URI"));
    }
    Ok(Lit::Str(s.to_string()))
}

fn parse_rhs(s: &str, op: &Op) -> Result<Rhs, String> {
    let eq = matches!(op, Op::Eq | Op::Ne);
    let items = split_outside_quotes(s, ',');
    if items.len() > 1 {
        if !eq {
            return Err("a value list is only allowed with == and !=".into());
        }
        return Ok(Rhs::List(
            items.into_iter().map(parse_lit).collect::<Result<_, _>>()?,
        ));
    }
    if !s.trim_start().starts_with('"') {
        if let Some((a, b)) = s.split_once("..") {
            if !eq {
                return Err("a range is only allowed with == and !=".into());
            }
            return Ok(Rhs::Range(parse_lit(a)?, parse_lit(b)?));
        }
    }
    Ok(Rhs::One(parse_lit(s)?))
}

fn parse_term(t: &str) -> Result<Term, String> {
    let t = t.trim();
    let end = t.find(|c: char| !attr_char(c)).unwrap_or(t.len());
    let (attr, rest) = t.split_at(end);
    if attr.is_empty() {
        return Err(format!("`{t}`: a term starts with an attribute name"));
    }
    if rest.is_empty() {
        return Ok(Term::Exists(attr.to_string()));
    }
    let ops = [
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">=", Op::Ge),
        ("<=", Op::Le),
        (">", Op::Gt),
        ("<", Op::Lt),
    ];
    for (sym, op) in ops {
        if let Some(v) = rest.strip_prefix(sym) {
            let rhs = parse_rhs(v, &op)?;
            return Ok(Term::Cmp {
                attr: attr.to_string(),
                op,
                rhs,
            });
        }
    }
    if rest.starts_with(['.', '[']) {
        return Err(format!("`{t}`: sub-attribute paths are not supported"));
    }
    Err(format!(
        "`{t}`: expected an operator (==, !=, >, >=, <, <=) after `{attr}`"
    ))
}

impl Query {
    pub fn parse(s: &str) -> Result<Query, String> {
        if s.trim().is_empty() {
            return Err("empty query".into());
        }
        if s.contains(['(', ')']) && !s.contains('"') {
            return Err("parentheses are not supported".into());
        }
        let mut ors = Vec::new();
        for part in split_outside_quotes(s, '|') {
            let mut ands = Vec::new();
            for t in split_outside_quotes(part, ';') {
                ands.push(parse_term(t)?);
            }
            ors.push(ands);
        }
        Ok(Query(ors))
    }

    pub fn matches(&self, e: &Entity) -> bool {
        self.0
            .iter()
            .any(|ands| ands.iter().all(|t| term_matches(t, e)))
    }
}

/// The values an attribute offers to a comparison.
fn values(e: &Entity, attr: &str) -> Option<Vec<Value>> {
    Some(match e.attr(attr)? {
        AttrRef::Static(v) => vec![v.clone()],
        AttrRef::Live(o) => vec![o.value.clone()],
        AttrRef::Rel(r) => match r.to_json() {
            Value::Array(a) => a,
            v => vec![v],
        },
        AttrRef::Location(_) => return None,
    })
}

fn cmp(v: &Value, l: &Lit) -> Option<std::cmp::Ordering> {
    match (v, l) {
        (Value::Number(n), Lit::Num(x)) => n.as_f64()?.partial_cmp(x),
        (Value::String(s), Lit::Str(x)) => Some(s.as_str().cmp(x.as_str())),
        (Value::Bool(b), Lit::Bool(x)) => Some(b.cmp(x)),
        _ => None,
    }
}

fn term_matches(t: &Term, e: &Entity) -> bool {
    use std::cmp::Ordering::*;
    match t {
        Term::Exists(a) => e.attr(a).is_some(),
        Term::Cmp { attr, op, rhs } => {
            let Some(vals) = values(e, attr) else {
                return false;
            };
            let hit = |v: &Value| -> bool {
                match rhs {
                    Rhs::One(l) => match (op, cmp(v, l)) {
                        (_, None) => false,
                        (Op::Eq, Some(o)) => o == Equal,
                        (Op::Ne, Some(o)) => o != Equal,
                        (Op::Gt, Some(o)) => o == Greater,
                        (Op::Ge, Some(o)) => o != Less,
                        (Op::Lt, Some(o)) => o == Less,
                        (Op::Le, Some(o)) => o != Greater,
                    },
                    Rhs::List(ls) => {
                        let any = ls.iter().any(|l| cmp(v, l) == Some(Equal));
                        if *op == Op::Eq {
                            any
                        } else {
                            !any && ls.iter().any(|l| cmp(v, l).is_some())
                        }
                    }
                    Rhs::Range(a, b) => match (cmp(v, a), cmp(v, b)) {
                        (Some(x), Some(y)) => {
                            let inside = x != Less && y != Greater;
                            (*op == Op::Eq) == inside
                        }
                        _ => false,
                    },
                }
            };
            // A relationship with several objects matches `==` when one does, `!=` when none
            // equals.
            if *op == Op::Ne && matches!(rhs, Rhs::One(_)) {
                vals.iter().all(hit)
            } else {
                vals.iter().any(hit)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum GeoRel {
    Near {
        max_m: Option<f64>,
        min_m: Option<f64>,
    },
    Within,
    Intersects,
    Disjoint,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GeoQuery {
    pub rel: GeoRel,
    pub geometry: Geometry,
}

/// Why a geo-query was refused: the parameter and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoError {
    pub param: &'static str,
    pub detail: String,
}

fn geo_err(param: &'static str, detail: impl Into<String>) -> GeoError {
    GeoError {
        param,
        detail: detail.into(),
    }
}

pub fn parse_georel(s: &str) -> Result<GeoRel, GeoError> {
    let mut parts = s.split(';');
    let name = parts.next().unwrap_or_default().trim();
    match name {
        "near" => {
            let (mut max_m, mut min_m) = (None, None);
            for m in parts {
                let (k, v) = m.split_once("==").ok_or_else(|| {
                    geo_err(
                        "georel",
                        format!("`{m}`: expected maxDistance==N or minDistance==N"),
                    )
                })?;
                let d: f64 = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|d: &f64| d.is_finite() && *d >= 0.0)
                    .ok_or_else(|| {
                        geo_err(
                            "georel",
                            format!("`{m}`: the distance must be a number of metres ≥ 0"),
                        )
                    })?;
                match k.trim() {
                    "maxDistance" => max_m = Some(d),
                    "minDistance" => min_m = Some(d),
                    other => {
                        return Err(geo_err(
                            "georel",
                            format!("`{other}`: near takes maxDistance or minDistance"),
                        ))
                    }
                }
            }
            if max_m.is_none() && min_m.is_none() {
                return Err(geo_err(
                    "georel",
                    "near needs ;maxDistance==N or ;minDistance==N (metres)",
                ));
            }
            Ok(GeoRel::Near { max_m, min_m })
        }
        "within" | "intersects" | "disjoint" => {
            if parts.next().is_some() {
                return Err(geo_err("georel", format!("{name} takes no modifiers")));
            }
            Ok(match name {
                "within" => GeoRel::Within,
                "intersects" => GeoRel::Intersects,
                _ => GeoRel::Disjoint,
            })
        }
        other => Err(geo_err(
            "georel",
            format!("`{other}` is not supported (near, within, intersects, disjoint)"),
        )),
    }
}

/// `geometry` + `coordinates` → a validated GeoJSON geometry.
pub fn parse_geometry(kind: &str, coordinates: &str) -> Result<Geometry, GeoError> {
    let coords: Value = serde_json::from_str(coordinates)
        .map_err(|e| geo_err("coordinates", format!("not a JSON array: {e}")))?;
    let kind = match kind {
        "Point" | "point" => "Point",
        "Polygon" | "polygon" => "Polygon",
        "LineString" | "linestring" => "LineString",
        other => {
            return Err(geo_err(
                "geometry",
                format!("`{other}` is not supported (Point, LineString, Polygon)"),
            ))
        }
    };
    let g: Geometry =
        serde_json::from_value(serde_json::json!({"type": kind, "coordinates": coords}))
            .map_err(|e| geo_err("coordinates", format!("not {kind} coordinates: {e}")))?;
    g.validate().map_err(|e| geo_err("coordinates", e))?;
    Ok(g)
}

impl GeoQuery {
    pub fn matches(&self, e: &Entity) -> bool {
        let Some(loc) = &e.location else {
            return false;
        };
        match &self.rel {
            GeoRel::Near { max_m, min_m } => {
                let Geometry::Point(p) = self.geometry else {
                    return false; // refused when parsed
                };
                let d = loc.distance_m(p);
                max_m.is_none_or(|m| d <= m) && min_m.is_none_or(|m| d >= m)
            }
            GeoRel::Within => within(loc, &self.geometry),
            GeoRel::Intersects => intersects(loc, &self.geometry),
            GeoRel::Disjoint => !intersects(loc, &self.geometry),
        }
    }
}

fn vertices(g: &Geometry) -> Vec<Position> {
    match g {
        Geometry::Point(p) => vec![*p],
        Geometry::LineString(l) => l.clone(),
        Geometry::Polygon(r) => r.iter().flatten().copied().collect(),
        Geometry::MultiPolygon(p) => p.iter().flatten().flatten().copied().collect(),
    }
}

fn edges(g: &Geometry) -> Vec<(Position, Position)> {
    let pairs = |pts: &[Position]| pts.windows(2).map(|w| (w[0], w[1])).collect::<Vec<_>>();
    match g {
        Geometry::Point(_) => Vec::new(),
        Geometry::LineString(l) => pairs(l),
        Geometry::Polygon(r) => r.iter().flat_map(|x| pairs(x)).collect(),
        Geometry::MultiPolygon(p) => p.iter().flatten().flat_map(|x| pairs(x)).collect(),
    }
}

fn is_area(g: &Geometry) -> bool {
    matches!(g, Geometry::Polygon(_) | Geometry::MultiPolygon(_))
}

/// Segments `a`–`b` and `c`–`d` cross or touch (planar lon/lat: fine at county scale).
fn segments_meet(a: Position, b: Position, c: Position, d: Position) -> bool {
    let orient = |p: Position, q: Position, r: Position| {
        (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
    };
    let on = |p: Position, q: Position, r: Position| {
        r[0] >= p[0].min(q[0])
            && r[0] <= p[0].max(q[0])
            && r[1] >= p[1].min(q[1])
            && r[1] <= p[1].max(q[1])
    };
    let (d1, d2, d3, d4) = (
        orient(c, d, a),
        orient(c, d, b),
        orient(a, b, c),
        orient(a, b, d),
    );
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    (d1 == 0.0 && on(c, d, a))
        || (d2 == 0.0 && on(c, d, b))
        || (d3 == 0.0 && on(a, b, c))
        || (d4 == 0.0 && on(a, b, d))
}

/// Every vertex of `g` inside the area `r` and no edge of `g` crossing `r`'s boundary (a
/// concave reference that an edge leaves and re-enters); a non-area reference contains only
/// an equal point.
fn within(g: &Geometry, r: &Geometry) -> bool {
    if !is_area(r) {
        return matches!((g, r), (Geometry::Point(a), Geometry::Point(b)) if a == b);
    }
    let re = edges(r);
    vertices(g).iter().all(|p| r.contains(*p))
        && !edges(g)
            .iter()
            .any(|(a, b)| re.iter().any(|(c, d)| crosses_strictly(*a, *b, *c, *d)))
}

fn crosses_strictly(a: Position, b: Position, c: Position, d: Position) -> bool {
    let orient = |p: Position, q: Position, r: Position| {
        (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
    };
    let (d1, d2, d3, d4) = (
        orient(c, d, a),
        orient(c, d, b),
        orient(a, b, c),
        orient(a, b, d),
    );
    d1 * d2 < 0.0 && d3 * d4 < 0.0
}

fn intersects(g: &Geometry, r: &Geometry) -> bool {
    if vertices(g).iter().any(|p| r.contains(*p)) || vertices(r).iter().any(|p| g.contains(*p)) {
        return true;
    }
    let (ge, re) = (edges(g), edges(r));
    if ge
        .iter()
        .any(|(a, b)| re.iter().any(|(c, d)| segments_meet(*a, *b, *c, *d)))
    {
        return true;
    }
    // A point on a line.
    match (g, r) {
        (Geometry::Point(p), _) => re.iter().any(|(c, d)| segments_meet(*p, *p, *c, *d)),
        (_, Geometry::Point(p)) => ge.iter().any(|(c, d)| segments_meet(*p, *p, *c, *d)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::twin::{EntityType, Live, Observed, Rel};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn ent() -> Entity {
        let mut live = BTreeMap::new();
        for (k, v) in [("water_level_cm", json!(31.5)), ("status", json!("online"))] {
            live.insert(
                k.to_string(),
                Live::new(Observed {
                    value: v,
                    observed_ms: 1,
                }),
            );
        }
        let mut rels = BTreeMap::new();
        rels.insert(
            "refTown".into(),
            Rel::One("urn:ngsi-ld:Town:yuexi:tiantang".into()),
        );
        rels.insert(
            "refRoadSegment".into(),
            Rel::Many(vec!["urn:a".into(), "urn:b".into()]),
        );
        let mut props = BTreeMap::new();
        props.insert("name".into(), json!("水位计"));
        props.insert("active".into(), json!(true));
        Entity {
            id: "urn:ngsi-ld:Sensor:yuexi:gw:wl".into(),
            kind: EntityType::Sensor,
            location: Some(Geometry::Point([116.36, 30.85])),
            props,
            rels,
            live,
        }
    }

    fn q(s: &str) -> bool {
        Query::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .matches(&ent())
    }

    #[test]
    fn q_compares_numbers_strings_relationships() {
        assert!(q("water_level_cm>30"));
        assert!(!q("water_level_cm>31.5"));
        assert!(q("water_level_cm>=31.5"));
        assert!(q("water_level_cm<=31.5;water_level_cm<32"));
        assert!(!q("water_level_cm<31.5"));
        assert!(q("status==\"online\""));
        assert!(q("status==online"));
        assert!(!q("status!=\"online\""));
        assert!(q("status!=\"offline\""));
        assert!(q("status==\"offline\",\"online\""));
        assert!(q("water_level_cm==30..40"));
        assert!(!q("water_level_cm!=30..40"));
        assert!(q("active==true"));
        assert!(q("name==\"水位计\""));
        assert!(q("refTown==urn:ngsi-ld:Town:yuexi:tiantang"));
        assert!(q("refRoadSegment==\"urn:b\""));
        assert!(!q("refRoadSegment!=\"urn:b\""));
        // AND / OR
        assert!(!q("water_level_cm>30;status==\"offline\""));
        assert!(q("water_level_cm>50|status==\"online\""));
        // Existence; missing attributes and type mismatches fail.
        assert!(q("water_level_cm"));
        assert!(!q("tilt_deg"));
        assert!(!q("tilt_deg!=3"));
        assert!(!q("status>3"));
        // A string with ; and | inside quotes is one value.
        assert!(!q("name==\"a;b|c\""));
    }

    #[test]
    fn q_errors_name_the_problem() {
        for (bad, want) in [
            ("", "empty"),
            ("==3", "attribute name"),
            ("a=3", "operator"),
            ("a==", "value"),
            ("a>\"x", "unterminated"),
            ("a>1,2", "list"),
            ("a.b==1", "sub-attribute"),
            ("(a==1)", "parentheses"),
        ] {
            let e = Query::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn georel_and_geometry_parse() {
        assert_eq!(
            parse_georel("near;maxDistance==500").unwrap(),
            GeoRel::Near {
                max_m: Some(500.0),
                min_m: None
            }
        );
        assert_eq!(
            parse_georel("near;minDistance==10;maxDistance==20").unwrap(),
            GeoRel::Near {
                max_m: Some(20.0),
                min_m: Some(10.0)
            }
        );
        assert_eq!(parse_georel("within").unwrap(), GeoRel::Within);
        for bad in [
            "near",
            "near;maxDistance=5",
            "near;maxDistance==-1",
            "near;foo==1",
            "equals",
            "within;x",
        ] {
            assert_eq!(parse_georel(bad).unwrap_err().param, "georel", "{bad}");
        }
        assert_eq!(
            parse_geometry("Point", "[116.36,30.85]").unwrap(),
            Geometry::Point([116.36, 30.85])
        );
        assert_eq!(
            parse_geometry("Point", "[30.85,116.36]").unwrap_err().param,
            "coordinates"
        );
        assert_eq!(
            parse_geometry("Circle", "[1,2]").unwrap_err().param,
            "geometry"
        );
        assert_eq!(
            parse_geometry("Polygon", "[1,2]").unwrap_err().param,
            "coordinates"
        );
        assert!(parse_geometry("Polygon", "[[[116,30],[117,30],[117,31],[116,30]]]").is_ok());
    }

    #[test]
    fn geo_relations() {
        let sq = parse_geometry(
            "Polygon",
            "[[[116.35,30.84],[116.37,30.84],[116.37,30.86],[116.35,30.86],[116.35,30.84]]]",
        )
        .unwrap();
        let e = ent();
        let within = GeoQuery {
            rel: GeoRel::Within,
            geometry: sq.clone(),
        };
        assert!(within.matches(&e));
        let mut far = ent();
        far.location = Some(Geometry::Point([116.40, 30.85]));
        assert!(!within.matches(&far));
        // A line leaving the square intersects it but is not within it.
        let mut line = ent();
        line.location = Some(Geometry::LineString(vec![[116.36, 30.85], [116.40, 30.85]]));
        assert!(!within.matches(&line));
        let inter = GeoQuery {
            rel: GeoRel::Intersects,
            geometry: sq.clone(),
        };
        assert!(inter.matches(&line));
        // A line crossing the square with both ends outside.
        line.location = Some(Geometry::LineString(vec![[116.30, 30.85], [116.40, 30.85]]));
        assert!(inter.matches(&line));
        assert!(!GeoQuery {
            rel: GeoRel::Disjoint,
            geometry: sq
        }
        .matches(&line));
        assert!(!inter.matches(&far));
        // near: haversine metres.
        let d = crate::platform::geo::haversine_m([116.36, 30.85], [116.40, 30.85]);
        let near = |max: f64| GeoQuery {
            rel: GeoRel::Near {
                max_m: Some(max),
                min_m: None,
            },
            geometry: Geometry::Point([116.36, 30.85]),
        };
        assert!(near(d + 0.01).matches(&far));
        assert!(!near(d - 0.01).matches(&far));
    }
}
