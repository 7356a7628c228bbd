//! The governance configuration: a folder of TOML tables (`configs/governance/` holds the
//! defaults) — categories with their codes and limits, departments, routing, stage limits, the
//! working calendar and the evaluation weights. Loaded whole and checked before anything uses
//! it; every error names the file, the row (which entry) and the field.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::calendar::{self, Window, WorkCalendar};
use super::sla::Limit;

#[derive(Debug, Error)]
pub enum GovernanceError {
    #[error("{}: {cause}", file.display())]
    Io {
        file: PathBuf,
        cause: std::io::Error,
    },
    /// TOML syntax, a missing or unknown field, a wrong type: the message has line and column.
    #[error("{}: {message}", file.display())]
    Parse { file: PathBuf, message: String },
    #[error("{}: {row}: `{field}` {reason}", file.display())]
    Invalid {
        file: PathBuf,
        /// `category 3 (exposed-garbage)`, `year 2026`, `windows`, …
        row: String,
        field: String,
        reason: String,
    },
}

pub const CATEGORIES: &str = "categories.toml";
pub const DEPARTMENTS: &str = "departments.toml";
pub const ROUTING: &str = "routing.toml";
pub const STAGES: &str = "stages.toml";
pub const CALENDAR: &str = "calendar.toml";
pub const EVALUATION: &str = "evaluation.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// 事件
    Event,
    /// 部件
    Component,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    Normal,
    Urgent,
}

/// When events of a category open a registered case by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRegister {
    /// Lowest detection confidence (0..=1; sensor events have none and pass).
    #[serde(default)]
    pub min_confidence: f32,
    /// Shortest time the problem lasted (dwell, threshold held), seconds.
    #[serde(default)]
    pub min_duration_s: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    pub id: String,
    pub kind: Kind,
    /// GB/T 30428.2 (4 digits), or empty.
    #[serde(default)]
    pub code_legacy: String,
    /// GB/T 47678.5-2026 (5 digits), or empty.
    #[serde(default)]
    pub code_2026: String,
    pub name: String,
    pub name_en: String,
    /// Default department (routing may send a case elsewhere).
    pub department: String,
    pub urgency: Urgency,
    /// The handling (处置) limit.
    pub limit: Limit,
    /// 立案条件 and 结案条件, as the operators read them.
    pub register_when: String,
    pub close_when: String,
    #[serde(default)]
    pub auto: Option<AutoRegister>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Department {
    pub id: String,
    pub name: String,
    pub name_en: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A category id, or `*`.
    pub category: String,
    #[serde(default)]
    pub town: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub grid: Option<String>,
    pub department: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByUrgency {
    pub normal: Limit,
    pub urgent: Limit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByArea {
    pub town: Limit,
    pub rural: Limit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reminders {
    /// 督办 interval once a stage is past its limit.
    pub supervise_every: Limit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stages {
    pub register: ByUrgency,
    pub dispatch: ByUrgency,
    pub verify: ByArea,
    pub reminders: Reminders,
    /// AI 核查 (absent: the defaults).
    #[serde(default)]
    pub recheck: RecheckSettings,
}

/// AI 核查: when a video case is reported handled, its camera looks again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecheckSettings {
    pub enabled: bool,
    /// How long the camera looks, seconds.
    pub watch_s: u32,
    /// How long the hub waits for the answer (the agent may be offline) before an inspector
    /// verifies on site, seconds.
    pub wait_s: u32,
    /// How often an unanswered command is sent again, seconds.
    pub resend_every_s: u32,
}

impl Default for RecheckSettings {
    fn default() -> Self {
        RecheckSettings {
            enabled: true,
            watch_s: 10,
            wait_s: 600,
            resend_every_s: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    pub registered: f64,
    pub closed: f64,
    pub on_time: f64,
    pub non_rework: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReworkBase {
    /// 返工数 / 应结案数
    ShouldClose,
    /// 返工数 / 立案数
    Registered,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    /// Upper bound (inclusive) of 立案数; the last band has none.
    #[serde(default)]
    pub max: Option<u64>,
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    pub weights: Weights,
    pub rework_rate_base: ReworkBase,
    pub band_max_score: f64,
    pub registered_band: Vec<Band>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoriesFile {
    /// The standards the codes follow (shown with the table).
    standard: String,
    category: Vec<Category>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DepartmentsFile {
    department: Vec<Department>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingFile {
    #[serde(default)]
    route: Vec<Route>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalendarFile {
    utc_offset: String,
    workdays: Vec<String>,
    windows: Vec<[String; 2]>,
    #[serde(default)]
    year: Vec<YearFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YearFile {
    year: i32,
    #[serde(default)]
    holidays: Vec<String>,
    #[serde(default)]
    makeup_days: Vec<String>,
}

/// A loaded, checked governance folder.
#[derive(Debug, Clone)]
pub struct Governance {
    pub dir: PathBuf,
    pub standard: String,
    pub categories: Vec<Category>,
    pub departments: Vec<Department>,
    pub routes: Vec<Route>,
    pub stages: Stages,
    pub calendar: WorkCalendar,
    pub evaluation: Evaluation,
    /// Years the calendar has a holiday schedule for.
    pub calendar_years: BTreeSet<i32>,
    by_code: HashMap<String, usize>,
}

/// The shipped defaults (configs/governance), built into the hub so it runs the workflow with
/// no file at hand; `governance_dir` in the hub's config replaces them.
const BUILT_IN: [(&str, &str); 6] = [
    (
        CATEGORIES,
        include_str!("../../../configs/governance/categories.toml"),
    ),
    (
        DEPARTMENTS,
        include_str!("../../../configs/governance/departments.toml"),
    ),
    (
        ROUTING,
        include_str!("../../../configs/governance/routing.toml"),
    ),
    (
        STAGES,
        include_str!("../../../configs/governance/stages.toml"),
    ),
    (
        CALENDAR,
        include_str!("../../../configs/governance/calendar.toml"),
    ),
    (
        EVALUATION,
        include_str!("../../../configs/governance/evaluation.toml"),
    ),
];

/// What [`Governance::dir`] says for the built-in defaults (file names in errors start so).
pub const BUILT_IN_DIR: &str = "(built-in defaults)";

fn read<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<(PathBuf, T), GovernanceError> {
    let file = dir.join(name);
    let text = match BUILT_IN.iter().find(|(n, _)| *n == name) {
        Some((_, text)) if dir == Path::new(BUILT_IN_DIR) => text.to_string(),
        _ => std::fs::read_to_string(&file).map_err(|cause| GovernanceError::Io {
            file: file.clone(),
            cause,
        })?,
    };
    let v = toml::from_str(&text).map_err(|e| GovernanceError::Parse {
        file: file.clone(),
        message: e.to_string().trim_end().to_string(),
    })?;
    Ok((file, v))
}

/// Builds [`GovernanceError::Invalid`] for one file.
struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn err(
        &self,
        row: impl Into<String>,
        field: &str,
        reason: impl Into<String>,
    ) -> GovernanceError {
        GovernanceError::Invalid {
            file: self.file.to_path_buf(),
            row: row.into(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    fn limit(&self, row: &str, field: &str, l: &Limit) -> Result<(), GovernanceError> {
        if l.value == 0 {
            return Err(self.err(row, field, "must be above 0"));
        }
        Ok(())
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

impl Governance {
    /// Loads and checks the folder `dir`.
    /// The shipped defaults, built in (see [`BUILT_IN_DIR`]).
    pub fn built_in() -> Result<Governance, GovernanceError> {
        Governance::load(Path::new(BUILT_IN_DIR))
    }

    pub fn load(dir: &Path) -> Result<Governance, GovernanceError> {
        let (f, deps): (_, DepartmentsFile) = read(dir, DEPARTMENTS)?;
        let c = Checker { file: &f };
        let mut dep_ids = HashSet::new();
        for (i, d) in deps.department.iter().enumerate() {
            let row = format!("department {} ({})", i + 1, d.id);
            if !valid_id(&d.id) {
                return Err(c.err(row, "id", "must be 1–64 of a-z, 0-9 and -"));
            }
            if !dep_ids.insert(d.id.as_str()) {
                return Err(c.err(row, "id", "is used by an earlier department"));
            }
            if d.name.trim().is_empty() {
                return Err(c.err(row, "name", "is empty"));
            }
        }
        if deps.department.is_empty() {
            return Err(c.err("file", "department", "lists no department"));
        }

        let (f, cats): (_, CategoriesFile) = read(dir, CATEGORIES)?;
        let c = Checker { file: &f };
        let mut by_code = HashMap::new();
        for (i, cat) in cats.category.iter().enumerate() {
            let row = format!("category {} ({})", i + 1, cat.id);
            if !valid_id(&cat.id) {
                return Err(c.err(row, "id", "must be 1–64 of a-z, 0-9 and -"));
            }
            if !(cat.code_legacy.is_empty() || digits(&cat.code_legacy, 4)) {
                return Err(c.err(
                    row,
                    "code_legacy",
                    "must be empty or 4 digits (GB/T 30428.2)",
                ));
            }
            if !(cat.code_2026.is_empty() || digits(&cat.code_2026, 5)) {
                return Err(c.err(
                    row,
                    "code_2026",
                    "must be empty or 5 digits (GB/T 47678.5-2026)",
                ));
            }
            for (field, key) in [
                ("id", &cat.id),
                ("code_legacy", &cat.code_legacy),
                ("code_2026", &cat.code_2026),
            ] {
                if !key.is_empty() && by_code.insert(key.clone(), i).is_some() {
                    return Err(c.err(
                        row,
                        field,
                        format!("`{key}` names an earlier category too"),
                    ));
                }
            }
            if cat.name.trim().is_empty() {
                return Err(c.err(row, "name", "is empty"));
            }
            if !dep_ids.contains(cat.department.as_str()) {
                return Err(c.err(
                    row,
                    "department",
                    format!("`{}` is not in {DEPARTMENTS}", cat.department),
                ));
            }
            c.limit(&row, "limit.value", &cat.limit)?;
            if let Some(a) = &cat.auto {
                if !(0.0..=1.0).contains(&a.min_confidence) {
                    return Err(c.err(row, "auto.min_confidence", "must be within 0..=1"));
                }
            }
        }
        if cats.category.is_empty() {
            return Err(c.err("file", "category", "lists no category"));
        }

        let (f, routing): (_, RoutingFile) = read(dir, ROUTING)?;
        let c = Checker { file: &f };
        for (i, r) in routing.route.iter().enumerate() {
            let row = format!("route {}", i + 1);
            if r.category != "*" && !cats.category.iter().any(|cat| cat.id == r.category) {
                return Err(c.err(
                    row,
                    "category",
                    format!(
                        "`{}` is neither `*` nor a category id in {CATEGORIES}",
                        r.category
                    ),
                ));
            }
            if !dep_ids.contains(r.department.as_str()) {
                return Err(c.err(
                    row,
                    "department",
                    format!("`{}` is not in {DEPARTMENTS}", r.department),
                ));
            }
        }

        let (f, stages): (_, Stages) = read(dir, STAGES)?;
        let c = Checker { file: &f };
        for (row, field, l) in [
            ("register", "normal", &stages.register.normal),
            ("register", "urgent", &stages.register.urgent),
            ("dispatch", "normal", &stages.dispatch.normal),
            ("dispatch", "urgent", &stages.dispatch.urgent),
            ("verify", "town", &stages.verify.town),
            ("verify", "rural", &stages.verify.rural),
            (
                "reminders",
                "supervise_every",
                &stages.reminders.supervise_every,
            ),
        ] {
            c.limit(row, &format!("{field}.value"), l)?;
        }
        let r = &stages.recheck;
        let max_watch = csb_wire::command::MAX_WATCH_S;
        if !(1..=max_watch).contains(&r.watch_s) {
            return Err(c.err("recheck", "watch_s", format!("must be 1..={max_watch}")));
        }
        if r.wait_s < r.watch_s.saturating_add(10) || r.wait_s > 86_400 {
            return Err(c.err(
                "recheck",
                "wait_s",
                "must be at least watch_s + 10 and at most 86400 (a day)",
            ));
        }
        if !(5..=3_600).contains(&r.resend_every_s) {
            return Err(c.err("recheck", "resend_every_s", "must be 5..=3600"));
        }

        let (f, cal): (_, CalendarFile) = read(dir, CALENDAR)?;
        let (calendar, calendar_years) = check_calendar(&Checker { file: &f }, cal)?;

        let (f, evaluation): (_, Evaluation) = read(dir, EVALUATION)?;
        check_evaluation(&Checker { file: &f }, &evaluation)?;

        Ok(Governance {
            dir: dir.to_path_buf(),
            standard: cats.standard,
            categories: cats.category,
            departments: deps.department,
            routes: routing.route,
            stages,
            calendar,
            evaluation,
            calendar_years,
            by_code,
        })
    }

    /// The category an event names: by id, legacy code or 2026 code.
    pub fn category(&self, code: &str) -> Option<&Category> {
        self.by_code.get(code).map(|&i| &self.categories[i])
    }

    pub fn department(&self, id: &str) -> Option<&Department> {
        self.departments.iter().find(|d| d.id == id)
    }

    /// The department a case of `category` at this place goes to: the most specific matching
    /// route (zone, then grid, then town, then category only; ties by file order), else the
    /// category's own department.
    pub fn route<'a>(
        &'a self,
        category: &'a Category,
        town: Option<&str>,
        zone: Option<&str>,
        grid: Option<&str>,
    ) -> &'a str {
        let matches = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        self.routes
            .iter()
            .filter(|r| r.category == "*" || r.category == category.id)
            .filter(|r| matches(&r.zone, zone) && matches(&r.grid, grid) && matches(&r.town, town))
            // Specificity: zone 4, grid 2, town 1; a named category beats `*` among equals.
            .max_by_key(|r| {
                (
                    4 * u8::from(r.zone.is_some())
                        + 2 * u8::from(r.grid.is_some())
                        + u8::from(r.town.is_some()),
                    u8::from(r.category != "*"),
                    std::cmp::Reverse(self.routes.iter().position(|x| std::ptr::eq(x, *r))),
                )
            })
            .map_or(category.department.as_str(), |r| r.department.as_str())
    }

    /// Checks the routes' towns and zones against the county model's (ids it knows).
    pub fn check_places(
        &self,
        towns: &HashSet<String>,
        zones: &HashSet<String>,
    ) -> Result<(), GovernanceError> {
        let file = self.dir.join(ROUTING);
        let c = Checker { file: &file };
        for (i, r) in self.routes.iter().enumerate() {
            let row = format!("route {}", i + 1);
            if let Some(t) = r.town.as_ref().filter(|t| !towns.contains(*t)) {
                return Err(c.err(
                    row,
                    "town",
                    format!("`{t}` is not a town of the county model"),
                ));
            }
            if let Some(z) = r.zone.as_ref().filter(|z| !zones.contains(*z)) {
                return Err(c.err(
                    row,
                    "zone",
                    format!("`{z}` is not a zone of the county model"),
                ));
            }
        }
        Ok(())
    }
}

fn check_calendar(
    c: &Checker<'_>,
    cal: CalendarFile,
) -> Result<(WorkCalendar, BTreeSet<i32>), GovernanceError> {
    let offset = calendar::parse_offset(&cal.utc_offset)
        .ok_or_else(|| c.err("file", "utc_offset", "must look like +08:00"))?;
    let mut workdays = [false; 7];
    for (i, w) in cal.workdays.iter().enumerate() {
        let wd = calendar::parse_weekday(w).ok_or_else(|| {
            c.err(
                format!("workday {}", i + 1),
                "workdays",
                format!("`{w}` is not mon … sun"),
            )
        })?;
        workdays[wd.number_days_from_monday() as usize] = true;
    }
    if !workdays.contains(&true) {
        return Err(c.err("file", "workdays", "names no working weekday"));
    }
    let mut windows = Vec::new();
    for (i, [a, b]) in cal.windows.iter().enumerate() {
        let row = format!("window {}", i + 1);
        let parse = |s: &str| {
            calendar::parse_hhmm(s)
                .ok_or_else(|| c.err(row.clone(), "windows", format!("`{s}` is not HH:MM")))
        };
        let w = Window {
            start: parse(a)?,
            end: parse(b)?,
        };
        if w.start >= w.end {
            return Err(c.err(row, "windows", format!("{a} is not before {b}")));
        }
        if windows.last().is_some_and(|p: &Window| p.end > w.start) {
            return Err(c.err(row, "windows", "overlaps or precedes the window before it"));
        }
        windows.push(w);
    }
    if windows.is_empty() {
        return Err(c.err("file", "windows", "lists no work window"));
    }
    let (mut holidays, mut makeup, mut years) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for y in &cal.year {
        let row = format!("year {}", y.year);
        if !years.insert(y.year) {
            return Err(c.err(row, "year", "is listed twice"));
        }
        for (field, list, into) in [
            ("holidays", &y.holidays, &mut holidays),
            ("makeup_days", &y.makeup_days, &mut makeup),
        ] {
            for item in list {
                let (a, b) = item.split_once("..").unwrap_or((item, item));
                let bad = || {
                    c.err(
                        row.clone(),
                        field,
                        format!("`{item}` is not YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD"),
                    )
                };
                let (mut d, end) = (
                    calendar::parse_date(a).ok_or_else(bad)?,
                    calendar::parse_date(b).ok_or_else(bad)?,
                );
                if d > end || d.year() != y.year || end.year() != y.year {
                    return Err(c.err(
                        row,
                        field,
                        format!("`{item}` is not a range within {}", y.year),
                    ));
                }
                loop {
                    into.insert(d);
                    if d == end {
                        break;
                    }
                    d = d.next_day().ok_or_else(bad)?;
                }
            }
        }
    }
    if let Some(d) = holidays.intersection(&makeup).next() {
        return Err(c.err(
            format!("year {}", d.year()),
            "makeup_days",
            format!("{d} is also a holiday"),
        ));
    }
    Ok((
        WorkCalendar::new(offset, windows, workdays, holidays, makeup),
        years,
    ))
}

fn check_evaluation(c: &Checker<'_>, e: &Evaluation) -> Result<(), GovernanceError> {
    let w = &e.weights;
    for (field, v) in [
        ("registered", w.registered),
        ("closed", w.closed),
        ("on_time", w.on_time),
        ("non_rework", w.non_rework),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(c.err("weights", field, "must be within 0..=1"));
        }
    }
    let sum = w.registered + w.closed + w.on_time + w.non_rework;
    if (sum - 1.0).abs() > 1e-6 {
        return Err(c.err("weights", "*", format!("add up to {sum}, not 1")));
    }
    if e.band_max_score.is_nan() || e.band_max_score <= 0.0 {
        return Err(c.err("file", "band_max_score", "must be above 0"));
    }
    let n = e.registered_band.len();
    if n == 0 {
        return Err(c.err("file", "registered_band", "lists no band"));
    }
    let mut prev = None;
    for (i, b) in e.registered_band.iter().enumerate() {
        let row = format!("registered_band {}", i + 1);
        if !(0.0..=e.band_max_score).contains(&b.score) {
            return Err(c.err(
                row,
                "score",
                format!("must be within 0..={}", e.band_max_score),
            ));
        }
        match (b.max, i + 1 == n) {
            (None, false) => return Err(c.err(row, "max", "only the last band may omit it")),
            (Some(_), true) => {
                return Err(c.err(row, "max", "the last band must omit it (it takes the rest)"))
            }
            (Some(m), false) => {
                if prev.is_some_and(|p| m <= p) {
                    return Err(c.err(row, "max", "must be above the band before it"));
                }
                prev = Some(m);
            }
            (None, true) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/governance")
    }

    #[test]
    fn the_defaults_load_and_route() {
        let g = Governance::load(&defaults()).expect("the default governance folder loads");
        let parking = g.category("09009").expect("by 2026 code");
        assert_eq!(parking.id, "illegal-parking");
        assert_eq!(g.category("0505").map(|c| &c.id), Some(&parking.id));
        assert_eq!(
            g.category("illegal-parking").map(|c| &c.id),
            Some(&parking.id)
        );
        assert_eq!(
            g.route(parking, Some("tiantang"), None, None),
            "traffic-police"
        );
        assert_eq!(g.route(parking, Some("laibang"), None, None), "urban-mgmt");
        let garbage = g.category("06010").unwrap();
        assert_eq!(g.route(garbage, None, None, None), "urban-mgmt");
        // The zone route (`*`) beats the category's town route.
        assert_eq!(
            g.route(
                parking,
                Some("laibang"),
                Some("zone-no-parking-north"),
                None
            ),
            "traffic-police"
        );
        assert!(g.calendar_years.contains(&2026));
        assert_eq!(g.calendar.minutes_per_day(), 480);
        // 调休: Sunday 2026-01-04 works, Friday 2026-01-02 does not.
        assert!(g
            .calendar
            .is_workday(calendar::parse_date("2026-01-04").unwrap()));
        assert!(!g
            .calendar
            .is_workday(calendar::parse_date("2026-01-02").unwrap()));
    }

    /// A copy of the defaults with `file` replaced by `text`.
    fn with(file: &str, text: &str) -> Result<Governance, GovernanceError> {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(defaults()).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        std::fs::write(dir.path().join(file), text).unwrap();
        Governance::load(dir.path())
    }

    fn patched(file: &str, from: &str, to: &str) -> String {
        let text = std::fs::read_to_string(defaults().join(file)).unwrap();
        assert!(text.contains(from), "{from}");
        let e = with(file, &text.replacen(from, to, 1)).expect_err("must be refused");
        e.to_string()
    }

    #[test]
    fn errors_name_file_row_and_field() {
        let e = patched(
            CATEGORIES,
            "department = \"traffic-police\"",
            "department = \"police\"",
        );
        assert!(
            e.contains("categories.toml")
                && e.contains("category 13 (illegal-parking)")
                && e.contains("`department`")
                && e.contains("`police`"),
            "{e}"
        );
        let e = patched(CATEGORIES, "code_2026 = \"06010\"", "code_2026 = \"0601\"");
        assert!(
            e.contains("category 1 (exposed-garbage)") && e.contains("`code_2026`"),
            "{e}"
        );
        let e = patched(CATEGORIES, "code_2026 = \"06011\"", "code_2026 = \"06010\"");
        assert!(
            e.contains("category 2") && e.contains("names an earlier category"),
            "{e}"
        );
        let e = patched(CATEGORIES, "limit = { value = 4,", "limit = { value = 0,");
        assert!(e.contains("`limit.value`"), "{e}");
        let e = patched(CATEGORIES, "urgency = \"normal\"", "urgency = \"soon\"");
        assert!(e.contains("categories.toml") && e.contains("line"), "{e}");
        let e = patched(
            CATEGORIES,
            "name_en = \"Exposed garbage\"",
            "name_en = \"Exposed garbage\"\ncolour = 1",
        );
        assert!(e.contains("colour"), "{e}");
        let e = patched(
            ROUTING,
            "category = \"illegal-parking\"",
            "category = \"parking\"",
        );
        assert!(
            e.contains("routing.toml") && e.contains("route 1") && e.contains("`category`"),
            "{e}"
        );
        let e = patched(CALENDAR, "[\"14:00\", \"18:00\"]", "[\"11:00\", \"18:00\"]");
        assert!(
            e.contains("calendar.toml") && e.contains("window 2") && e.contains("overlaps"),
            "{e}"
        );
        let e = patched(
            CALENDAR,
            "\"2026-04-04..2026-04-06\"",
            "\"2026-04-06..2026-04-04\"",
        );
        assert!(e.contains("year 2026") && e.contains("`holidays`"), "{e}");
        let e = patched(CALENDAR, "\"2026-01-04\"", "\"2026-01-02\"");
        assert!(
            e.contains("`makeup_days`") && e.contains("also a holiday"),
            "{e}"
        );
        let e = patched(CALENDAR, "utc_offset = \"+08:00\"", "utc_offset = \"CST\"");
        assert!(e.contains("`utc_offset`"), "{e}");
        let e = patched(EVALUATION, "on_time = 0.30", "on_time = 0.40");
        assert!(
            e.contains("evaluation.toml") && e.contains("add up to"),
            "{e}"
        );
        let e = patched(EVALUATION, "max = 100", "max = 40");
        assert!(
            e.contains("registered_band 2") && e.contains("`max`"),
            "{e}"
        );
        let e = patched(STAGES, "urgent = { value = 10,", "urgent = { value = 0,");
        assert!(
            e.contains("stages.toml") && e.contains("register") && e.contains("`urgent.value`"),
            "{e}"
        );
        let e = patched(DEPARTMENTS, "id = \"water\"", "id = \"Water\"");
        assert!(
            e.contains("department 4 (Water)") && e.contains("`id`"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = Governance::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("departments.toml"), "{e}");
    }
}
