//! The county model: what exists where. Towns, roads, intersections and zones come from GeoJSON
//! files, the county, its departments and the device inventory (gateways, cameras, sensors) from
//! TOML, all in one folder (`configs/county/` ships a sample set; a county replaces it with its
//! own). Loaded once at start; every mistake names the file, the object and the field.
//!
//! Files: `county.toml` (required), `towns.geojson`, `roads.geojson` (road segments and
//! intersections), `zones.geojson`, `devices.toml` (each optional: a county may start with
//! only its towns). See `configs/county/README.md`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::platform::geo::{Geometry, Position};

/// The sample folder, relative to the repository root (the hub's working directory in the demo).
pub const DEFAULT_DIR: &str = "configs/county";

#[derive(Debug, Error)]
pub enum CountyError {
    #[error("county model {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("county model {path}: {what}: {reason}")]
    Invalid {
        path: PathBuf,
        what: String,
        reason: String,
    },
}

fn invalid(path: &Path, what: impl Into<String>, reason: impl Into<String>) -> CountyError {
    CountyError::Invalid {
        path: path.to_path_buf(),
        what: what.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CountyInfo {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub name_en: Option<String>,
    #[serde(default)]
    pub adcode: Option<u32>,
    pub seat: Position,
    /// GeoJSON of the county's outline, relative to the folder.
    #[serde(default)]
    pub outline: Option<PathBuf>,
    /// Invented data for the demo: shown as such.
    #[serde(default)]
    pub sample: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Department {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub name_en: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountyFile {
    county: CountyInfo,
    #[serde(default)]
    departments: Vec<Department>,
}

/// A town, road segment, intersection or zone: its properties as given, and its shape.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Feature<P> {
    #[serde(flatten)]
    pub props: P,
    pub geometry: Geometry,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TownProps {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub name_en: Option<String>,
    /// `town` (镇) or `township` (乡).
    #[serde(default)]
    pub kind: Option<String>,
}

/// A road segment (`kind = "road_segment"`, LineString) or an intersection
/// (`kind = "intersection"`, Point, with the `roads` that meet there).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RoadProps {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub name_en: Option<String>,
    pub kind: String,
    #[serde(default)]
    pub road_class: Option<String>,
    #[serde(default)]
    pub town: Option<String>,
    #[serde(default)]
    pub roads: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ZoneProps {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub name_en: Option<String>,
    #[serde(default)]
    pub purpose: Option<String>,
    #[serde(default)]
    pub town: Option<String>,
    /// `site/device/camera` whose analytics zone this is, and that zone's id there.
    #[serde(default)]
    pub camera: Option<String>,
    #[serde(default)]
    pub camera_zone: Option<String>,
}

/// Inventory facts shared by gateways, cameras and sensors.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Placed {
    pub name: String,
    #[serde(default)]
    pub name_en: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub town: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    /// Installation date, `YYYY-MM-DD`.
    #[serde(default)]
    pub installed: Option<String>,
    pub location: Position,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// `site/device`, as on the wire.
    pub id: String,
    #[serde(flatten)]
    pub placed: Placed,
    #[serde(default)]
    pub firmware: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Camera {
    /// `site/device/camera`.
    pub id: String,
    #[serde(flatten)]
    pub placed: Placed,
    #[serde(default)]
    pub heading_deg: Option<f64>,
    /// The road segment it watches.
    #[serde(default)]
    pub road: Option<String>,
    /// Counting line id (the camera's) → road segment id whose traffic flow it measures.
    #[serde(default)]
    pub lines: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sensor {
    /// `site/device/sensor`.
    pub id: String,
    #[serde(flatten)]
    pub placed: Placed,
    /// e.g. `water_level`, `manhole_tilt`, `air_quality`.
    pub kind: String,
    #[serde(default)]
    pub metrics: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesFile {
    #[serde(default)]
    gateways: Vec<Gateway>,
    #[serde(default)]
    cameras: Vec<Camera>,
    #[serde(default)]
    sensors: Vec<Sensor>,
}

/// The loaded county model.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct County {
    pub county: CountyInfo,
    /// The outline's geometry, when the file named by `county.outline` was found.
    #[serde(skip)]
    pub outline: Option<Geometry>,
    pub departments: Vec<Department>,
    pub towns: Vec<Feature<TownProps>>,
    pub roads: Vec<Feature<RoadProps>>,
    pub zones: Vec<Feature<ZoneProps>>,
    pub gateways: Vec<Gateway>,
    pub cameras: Vec<Camera>,
    pub sensors: Vec<Sensor>,
    /// Doubts that do not stop the hub (an object outside its town, a missing outline file).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

fn read(path: &Path) -> Result<Option<String>, CountyError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(CountyError::Read {
            path: path.to_path_buf(),
            cause,
        }),
    }
}

fn toml_file<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, CountyError> {
    match read(path)? {
        None => Ok(None),
        // toml's message names the line, column and key.
        Some(t) => toml::from_str(&t)
            .map(Some)
            .map_err(|e| invalid(path, "TOML", e.to_string())),
    }
}

/// Reads a FeatureCollection whose features have properties `P`.
fn features<P: DeserializeOwned>(path: &Path) -> Result<Vec<Feature<P>>, CountyError> {
    #[derive(Deserialize)]
    struct RawFeature {
        #[serde(default)]
        properties: serde_json::Value,
        geometry: serde_json::Value,
    }
    #[derive(Deserialize)]
    struct Collection {
        features: Vec<RawFeature>,
    }
    let Some(text) = read(path)? else {
        return Ok(Vec::new());
    };
    let fc: Collection = serde_json::from_str(&text)
        .map_err(|e| invalid(path, "GeoJSON FeatureCollection", e.to_string()))?;
    let mut out = Vec::with_capacity(fc.features.len());
    for (i, f) in fc.features.into_iter().enumerate() {
        let label = match f.properties.get("id").and_then(|v| v.as_str()) {
            Some(id) => format!("feature {i} (`{id}`)"),
            None => format!("feature {i}"),
        };
        let props: P = serde_json::from_value(f.properties)
            .map_err(|e| invalid(path, format!("{label} properties"), e.to_string()))?;
        let geometry: Geometry = serde_json::from_value(f.geometry)
            .map_err(|e| invalid(path, format!("{label} geometry"), e.to_string()))?;
        geometry
            .validate()
            .map_err(|e| invalid(path, format!("{label} geometry"), e))?;
        out.push(Feature { props, geometry });
    }
    Ok(out)
}

fn check_id(
    path: &Path,
    what: &str,
    id: &str,
    seen: &mut HashSet<String>,
) -> Result<(), CountyError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_/".contains(c);
    if id.is_empty() || !id.chars().all(ok_char) {
        return Err(invalid(
            path,
            format!("{what} `{id}`"),
            "field `id`: use lowercase ASCII letters, digits, '-', '_' (and '/' between levels)",
        ));
    }
    if !seen.insert(id.to_string()) {
        return Err(invalid(
            path,
            format!("{what} `{id}`"),
            "field `id`: used twice",
        ));
    }
    Ok(())
}

impl County {
    /// Loads the folder `dir`; `county.toml` must exist.
    pub fn load(dir: &Path) -> Result<County, CountyError> {
        let county_path = dir.join("county.toml");
        let file: CountyFile = toml_file(&county_path)?.ok_or_else(|| CountyError::Read {
            path: county_path.clone(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "county.toml is required"),
        })?;
        Geometry::Point(file.county.seat)
            .validate()
            .map_err(|e| invalid(&county_path, "county", format!("field `seat`: {e}")))?;
        let mut warnings = Vec::new();
        let outline = match &file.county.outline {
            None => None,
            Some(rel) => {
                let p = dir.join(rel);
                match features::<serde_json::Value>(&p)? {
                    f if f.is_empty() => {
                        warnings.push(format!(
                            "county outline {} not found: the map has no outline",
                            p.display()
                        ));
                        None
                    }
                    mut f => Some(f.swap_remove(0).geometry),
                }
            }
        };
        let devices: DevicesFile = toml_file(&dir.join("devices.toml"))?.unwrap_or_default();
        let mut c = County {
            county: file.county,
            outline,
            departments: file.departments,
            towns: features(&dir.join("towns.geojson"))?,
            roads: features(&dir.join("roads.geojson"))?,
            zones: features(&dir.join("zones.geojson"))?,
            gateways: devices.gateways,
            cameras: devices.cameras,
            sensors: devices.sensors,
            warnings,
        };
        c.check(dir)?;
        Ok(c)
    }

    /// Ids unique and well-formed, references resolve, shapes of the right kind; objects
    /// outside the county or their town are warnings (real survey data is rarely perfect).
    fn check(&mut self, dir: &Path) -> Result<(), CountyError> {
        let (ct, tw, rd, zn, dv) = (
            dir.join("county.toml"),
            dir.join("towns.geojson"),
            dir.join("roads.geojson"),
            dir.join("zones.geojson"),
            dir.join("devices.toml"),
        );
        let mut seen = HashSet::new();
        for d in &self.departments {
            check_id(&ct, "department", &d.id, &mut seen)?;
        }
        let departments = std::mem::take(&mut seen);
        for t in &self.towns {
            check_id(&tw, "town", &t.props.id, &mut seen)?;
            if !matches!(t.geometry, Geometry::Polygon(_) | Geometry::MultiPolygon(_)) {
                return Err(invalid(
                    &tw,
                    format!("town `{}`", t.props.id),
                    "geometry must be a Polygon or MultiPolygon",
                ));
            }
        }
        let towns = std::mem::take(&mut seen);
        let town_ref = |path: &Path, what: String, town: &Option<String>| match town {
            Some(t) if !towns.contains(t) => Err(invalid(
                path,
                what,
                format!("field `town`: no town `{t}` in towns.geojson"),
            )),
            _ => Ok(()),
        };
        for r in &self.roads {
            let what = format!("{} `{}`", r.props.kind, r.props.id);
            check_id(&rd, &r.props.kind, &r.props.id, &mut seen)?;
            town_ref(&rd, what.clone(), &r.props.town)?;
            let ok = match r.props.kind.as_str() {
                "road_segment" => matches!(r.geometry, Geometry::LineString(_)),
                "intersection" => matches!(r.geometry, Geometry::Point(_)),
                other => {
                    return Err(invalid(
                        &rd,
                        what,
                        format!(
                            "field `kind`: `{other}` is neither `road_segment` nor `intersection`"
                        ),
                    ))
                }
            };
            if !ok {
                return Err(invalid(
                    &rd,
                    what,
                    "geometry: a road_segment is a LineString, an intersection a Point",
                ));
            }
        }
        let roads = std::mem::take(&mut seen);
        for r in self.roads.iter().filter(|r| r.props.kind == "intersection") {
            if let Some(bad) = r.props.roads.iter().find(|x| !roads.contains(*x)) {
                return Err(invalid(
                    &rd,
                    format!("intersection `{}`", r.props.id),
                    format!("field `roads`: no road `{bad}`"),
                ));
            }
        }
        for z in &self.zones {
            let what = format!("zone `{}`", z.props.id);
            check_id(&zn, "zone", &z.props.id, &mut seen)?;
            town_ref(&zn, what.clone(), &z.props.town)?;
            if !matches!(z.geometry, Geometry::Polygon(_) | Geometry::MultiPolygon(_)) {
                return Err(invalid(
                    &zn,
                    what,
                    "geometry must be a Polygon or MultiPolygon",
                ));
            }
        }
        seen.clear();
        let placed = |what: String, p: &Placed| -> Result<(), CountyError> {
            town_ref(&dv, what.clone(), &p.town)?;
            if let Some(d) = p.department.as_ref().filter(|d| !departments.contains(*d)) {
                return Err(invalid(
                    &dv,
                    what,
                    format!("field `department`: no department `{d}` in county.toml"),
                ));
            }
            Geometry::Point(p.location)
                .validate()
                .map_err(|e| invalid(&dv, what.clone(), format!("field `location`: {e}")))?;
            if let Some(d) = &p.installed {
                let ok = d.len() == 10
                    && d.as_bytes()[4] == b'-'
                    && d.as_bytes()[7] == b'-'
                    && d.chars()
                        .enumerate()
                        .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
                if !ok {
                    return Err(invalid(
                        &dv,
                        what,
                        format!("field `installed`: `{d}` is not YYYY-MM-DD"),
                    ));
                }
            }
            Ok(())
        };
        for g in &self.gateways {
            check_id(&dv, "gateway", &g.id, &mut seen)?;
            placed(format!("gateway `{}`", g.id), &g.placed)?;
        }
        for c in &self.cameras {
            let what = format!("camera `{}`", c.id);
            check_id(&dv, "camera", &c.id, &mut seen)?;
            placed(what.clone(), &c.placed)?;
            for r in c.road.iter().chain(c.lines.values()) {
                if !roads.contains(r) {
                    return Err(invalid(
                        &dv,
                        what,
                        format!("no road segment `{r}` in roads.geojson"),
                    ));
                }
            }
        }
        for s in &self.sensors {
            check_id(&dv, "sensor", &s.id, &mut seen)?;
            placed(format!("sensor `{}`", s.id), &s.placed)?;
        }
        let cameras: HashSet<&str> = self.cameras.iter().map(|c| c.id.as_str()).collect();
        for z in &self.zones {
            if let Some(cam) = z
                .props
                .camera
                .as_ref()
                .filter(|c| !cameras.contains(c.as_str()))
            {
                return Err(invalid(
                    &zn,
                    format!("zone `{}`", z.props.id),
                    format!("field `camera`: no camera `{cam}` in devices.toml"),
                ));
            }
        }
        self.warn_outside();
        Ok(())
    }

    fn warn_outside(&mut self) {
        let mut w = Vec::new();
        let town_of = |id: &Option<String>| {
            id.as_ref()
                .and_then(|t| self.towns.iter().find(|x| &x.props.id == t))
        };
        let mut place = |what: String, p: Position, town: &Option<String>| {
            if let Some(o) = &self.outline {
                if !o.contains(p) {
                    w.push(format!("{what} at {p:?} lies outside the county outline"));
                }
            }
            if let Some(t) = town_of(town) {
                if !t.geometry.contains(p) {
                    w.push(format!(
                        "{what} at {p:?} lies outside its town `{}`",
                        t.props.id
                    ));
                }
            }
        };
        for g in &self.gateways {
            place(
                format!("gateway `{}`", g.id),
                g.placed.location,
                &g.placed.town,
            );
        }
        for c in &self.cameras {
            place(
                format!("camera `{}`", c.id),
                c.placed.location,
                &c.placed.town,
            );
        }
        for s in &self.sensors {
            place(
                format!("sensor `{}`", s.id),
                s.placed.location,
                &s.placed.town,
            );
        }
        for z in &self.zones {
            if let Some(a) = z.geometry.anchor() {
                place(format!("zone `{}`", z.props.id), a, &z.props.town);
            }
        }
        self.warnings.extend(w);
    }

    /// One line for logs and `cloud-hub county check`.
    pub fn summary(&self) -> String {
        let segments = self
            .roads
            .iter()
            .filter(|r| r.props.kind == "road_segment")
            .count();
        format!(
            "{} ({}){}: {} departments, {} towns, {} road segments, {} intersections, {} zones, \
             {} gateways, {} cameras, {} sensors",
            self.county.name,
            self.county.id,
            if self.county.sample {
                " [sample data]"
            } else {
                ""
            },
            self.departments.len(),
            self.towns.len(),
            segments,
            self.roads.len() - segments,
            self.zones.len(),
            self.gateways.len(),
            self.cameras.len(),
            self.sensors.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const COUNTY: &str = r#"
[county]
id = "test"
name = "测试县"
seat = [116.005, 30.005]
[[departments]]
id = "water"
name = "水利局"
"#;
    const TOWNS: &str = r#"{"type":"FeatureCollection","features":[{"type":"Feature",
      "properties":{"id":"t1","name":"一镇","kind":"town"},
      "geometry":{"type":"Polygon","coordinates":[[[116.0,30.0],[116.01,30.0],[116.01,30.01],[116.0,30.01],[116.0,30.0]]]}}]}"#;

    #[test]
    fn loads_a_minimal_folder_and_names_bad_references() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "county.toml", COUNTY);
        write(d, "towns.geojson", TOWNS);
        write(
            d,
            "devices.toml",
            r#"
[[sensors]]
id = "s/g/wl-1"
name = "水位计"
kind = "water_level"
town = "t1"
department = "water"
installed = "2026-04-02"
location = [116.02, 30.005]
"#,
        );
        let c = County::load(d).unwrap();
        assert_eq!(c.towns.len(), 1);
        assert_eq!(c.sensors.len(), 1);
        // Outside its town: a warning, not an error.
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("outside its town `t1`")),
            "{:?}",
            c.warnings
        );
        assert!(c.summary().contains("1 towns"), "{}", c.summary());

        write(d, "devices.toml", "[[sensors]]\nid = \"s/g/wl-1\"\nname = \"x\"\nkind = \"water_level\"\ndepartment = \"police\"\nlocation = [116.0, 30.0]\n");
        let err = County::load(d).unwrap_err().to_string();
        assert!(
            err.contains("devices.toml")
                && err.contains("sensor `s/g/wl-1`")
                && err.contains("`department`"),
            "{err}"
        );

        // A misspelled key is named, not ignored (flatten and deny_unknown_fields together).
        write(d, "devices.toml", "[[sensors]]\nid = \"s/g/wl-1\"\nname = \"x\"\nkind = \"water_level\"\nlocaton = [116.0, 30.0]\nlocation = [116.0, 30.0]\n");
        let err = County::load(d).unwrap_err().to_string();
        assert!(err.contains("locaton"), "{err}");

        write(d, "devices.toml", "[[sensors]]\nid = \"s/g/wl-1\"\nname = \"x\"\nkind = \"water_level\"\nlocation = [30.0, 116.0]\n");
        let err = County::load(d).unwrap_err().to_string();
        assert!(
            err.contains("`location`") && err.contains("[lon, lat]"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_sample_county_loads_without_warnings() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(DEFAULT_DIR);
        let c = County::load(&dir).unwrap();
        assert!(c.county.sample);
        assert!(
            c.warnings.iter().all(|w| w.contains("outline")),
            "{:?}",
            c.warnings
        );
        // The demo agent's camera and sensor are in the inventory, with the demo zone.
        assert!(c
            .cameras
            .iter()
            .any(|x| x.id == "yuexi/gw-demo-01/cam-tiantang-01"));
        assert!(c
            .sensors
            .iter()
            .any(|x| x.id == "yuexi/gw-demo-01/wl-underpass-01"));
        assert!(c
            .zones
            .iter()
            .any(|z| z.props.camera_zone.as_deref() == Some("no-parking-north")));
        // The seat lies in the seat town.
        let tiantang = c.towns.iter().find(|t| t.props.id == "tiantang").unwrap();
        assert!(tiantang.geometry.contains(c.county.seat));
    }

    #[test]
    fn geojson_mistakes_name_file_feature_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "county.toml", COUNTY);
        write(d, "towns.geojson", &TOWNS.replace("\"name\":\"一镇\",", ""));
        let err = County::load(d).unwrap_err().to_string();
        assert!(
            err.contains("towns.geojson")
                && err.contains("feature 0 (`t1`)")
                && err.contains("name"),
            "{err}"
        );
        write(d, "towns.geojson", TOWNS);
        write(
            d,
            "roads.geojson",
            r#"{"type":"FeatureCollection","features":[{"type":"Feature",
          "properties":{"id":"ix-1","name":"路口","kind":"intersection","roads":["rd-x"]},
          "geometry":{"type":"Point","coordinates":[116.005,30.005]}}]}"#,
        );
        let err = County::load(d).unwrap_err().to_string();
        assert!(
            err.contains("intersection `ix-1`") && err.contains("no road `rd-x`"),
            "{err}"
        );
        std::fs::remove_file(d.join("county.toml")).unwrap();
        let err = County::load(d).unwrap_err().to_string();
        assert!(err.contains("county.toml"), "{err}");
    }
}
