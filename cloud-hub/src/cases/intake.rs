//! From rule events to cases. A rule event that names a governance category is a sighting of a
//! problem; the first sighting opens a case — registered and dispatched by the routing table
//! at once when the category is configured for automatic registration and the sighting meets
//! its confidence and duration, otherwise at 上报 for an operator — and later sightings of the
//! same problem (the same `problem_id`, or the same category at the same camera zone while a
//! case is open there) are merged into it instead of opening another.
//!
//! Pure: the engine ([`super::engine`]) looks the open case up and stores the result.

use std::sync::Arc;

use csb_wire::{Event, EventKind, Phase, RuleType};

use super::config::{Category, Governance};
use super::lifecycle::{
    Action, Actor, Case, NewCase, Place, Sightings, Source, TransitionError, RECENT_EVENTS,
};
use crate::platform::county::County;

/// What a case needs from a rule event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sighting {
    pub event_id: String,
    /// Category id (resolved from the event's code).
    pub category: String,
    pub problem: String,
    /// `{category}|{site}/{device}/{camera}|{zone}`: repeats are merged on it.
    pub spot: String,
    /// `{site}/{device}/{camera}`.
    pub camera: String,
    /// The agent's zone id on that camera, if the rule has one.
    pub zone: Option<String>,
    pub source: Source,
    pub snapshot: Option<String>,
    pub ts_ms: i64,
    pub phase: Phase,
    /// The best object's score; `None` for sensor events (no detector).
    pub confidence: Option<f32>,
    pub duration_ms: i64,
    /// Labels of the objects seen (an AI re-check looks for these), each once.
    pub classes: Vec<String>,
}

/// Why a rule event does not become a sighting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotASighting {
    /// A detection event, or a rule event without a category code: not the workflow's.
    NoCategory,
    /// A code the governance configuration does not have (counted, said once in a while).
    UnknownCategory(String),
}

impl Sighting {
    pub fn of(e: &Event, g: &Governance) -> Result<Sighting, NotASighting> {
        let rule = match (&e.kind, &e.rule) {
            (EventKind::Rule, Some(r)) => r,
            _ => return Err(NotASighting::NoCategory),
        };
        let code = rule.category.as_deref().ok_or(NotASighting::NoCategory)?;
        let cat = g
            .category(code)
            .ok_or_else(|| NotASighting::UnknownCategory(code.to_string()))?;
        let camera = format!("{}/{}/{}", e.site, e.device, e.camera);
        let zone = rule.zone.clone();
        Ok(Sighting {
            event_id: e.id.to_string(),
            category: cat.id.clone(),
            problem: rule.problem_id.to_string(),
            spot: format!("{}|{}|{}", cat.id, camera, zone.as_deref().unwrap_or("")),
            camera,
            zone,
            source: match rule.rule_type {
                RuleType::SensorThreshold => Source::Sensor,
                _ => Source::VideoAi,
            },
            snapshot: rule.snapshot.clone(),
            ts_ms: e.ts_ms,
            phase: rule.phase,
            confidence: e
                .objects
                .iter()
                .map(|o| o.score)
                .reduce(f32::max)
                .filter(|_| rule.rule_type != RuleType::SensorThreshold),
            duration_ms: rule.duration_ms.max(0),
            classes: labels(e),
        })
    }

    /// Whether it meets its category's automatic registration (`None`: the category has none).
    pub fn qualifies(&self, cat: &Category) -> Option<bool> {
        let auto = cat.auto?;
        Some(
            self.confidence.is_none_or(|c| c >= auto.min_confidence)
                && self.duration_ms >= i64::from(auto.min_duration_s) * 1000,
        )
    }
}

/// The distinct labels of an event's objects, at most [`csb_wire::command::MAX_CLASSES`].
fn labels(e: &Event) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for o in &e.objects {
        if out.len() < csb_wire::command::MAX_CLASSES && !out.contains(&o.label) {
            out.push(o.label.clone());
        }
    }
    out
}

/// Where a camera is, in the county's terms.
pub trait Locate: Send + Sync + 'static {
    /// The place of `{site}/{device}/{camera}` and, if given, its analytics zone.
    fn place(&self, camera: &str, zone: Option<&str>) -> Place;
}

/// No county model: cases carry no place (routing falls back to the category's department).
pub struct Nowhere;

impl Locate for Nowhere {
    fn place(&self, _: &str, _: Option<&str>) -> Place {
        Place::default()
    }
}

/// The county model's cameras and sensors (point, town) and zones (a county zone that is a
/// camera's analytics zone).
pub struct CountyPlaces(pub Arc<County>);

impl Locate for CountyPlaces {
    fn place(&self, camera: &str, zone: Option<&str>) -> Place {
        let c = &self.0;
        let placed = c
            .cameras
            .iter()
            .find(|x| x.id == camera)
            .map(|x| &x.placed)
            .or_else(|| c.sensors.iter().find(|x| x.id == camera).map(|x| &x.placed));
        let county_zone = zone.and_then(|z| {
            c.zones.iter().find(|f| {
                f.props.camera.as_deref() == Some(camera)
                    && f.props.camera_zone.as_deref() == Some(z)
            })
        });
        let town = placed
            .and_then(|p| p.town.clone())
            .or_else(|| county_zone.and_then(|z| z.props.town.clone()));
        let rural = town.as_deref().is_some_and(|t| {
            c.towns
                .iter()
                .any(|f| f.props.id == t && f.props.kind.as_deref() == Some("township"))
        });
        Place {
            point: placed.map(|p| p.location),
            town,
            zone: county_zone.map(|z| z.props.id.clone()),
            grid: None,
            rural,
        }
    }
}

/// A new case for a first sighting: registered and dispatched in the same write when the
/// category registers automatically and the sighting qualifies. `None`: an automatic category
/// whose sighting does not qualify yet (a car stopped for a minute): no case, no operator's
/// time; a later sighting of the same problem that qualifies opens it.
pub fn open(
    s: &Sighting,
    id: String,
    place: Place,
    now: i64,
    g: &Governance,
) -> Result<Option<Case>, TransitionError> {
    let cat = g
        .category(&s.category)
        .ok_or_else(|| TransitionError::UnknownCategory(s.category.clone()))?;
    let auto = s.qualifies(cat);
    // The problem's end opens nothing; one that does not qualify yet waits for one that does.
    if s.phase == Phase::End || auto == Some(false) {
        return Ok(None);
    }
    let mut evidence = vec![s.event_id.clone()];
    evidence.extend(s.snapshot.iter().cloned());
    let mut case = Case::report(
        NewCase {
            id,
            source: s.source,
            category: s.category.clone(),
            place,
            evidence,
            camera: Some(s.camera.clone()),
        },
        Actor::system(),
        now,
        g,
    )?;
    case.sightings = Some(Sightings {
        problems: vec![s.problem.clone()],
        events: 1,
        last_event: Some(s.event_id.clone()),
        recent_events: vec![s.event_id.clone()],
        last_seen_ms: s.ts_ms,
        latest_snapshot: s.snapshot.clone(),
        ended_ms: None,
        spot: Some(s.spot.clone()),
        zone: s.zone.clone(),
        classes: s.classes.clone(),
    });
    if auto == Some(true) {
        register_and_dispatch(&mut case, now, g)?;
    }
    Ok(Some(case))
}

fn register_and_dispatch(case: &mut Case, now: i64, g: &Governance) -> Result<(), TransitionError> {
    let system = Actor::system();
    case.apply(
        &system,
        Action::Register,
        "automatic: category rule met",
        None,
        now,
        g,
    )?;
    case.apply(
        &system,
        Action::Dispatch { department: None },
        "automatic: routing table",
        None,
        now,
        g,
    )?;
    Ok(())
}

/// What merging a sighting did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// Counted into the case.
    Added,
    /// It qualified now: the case waiting at 上报 was registered and dispatched.
    Registered,
    /// Seen before (a replay after a restart): nothing changed.
    Seen,
}

/// Why a sighting cannot be merged into this case.
#[derive(Debug, Clone, PartialEq)]
pub enum NotMerged {
    /// Closed (or rejected) since it was looked up: open a new case.
    Closed,
    Transition(TransitionError),
}

/// Merges a later sighting into `case`.
pub fn merge(case: &mut Case, s: &Sighting, now: i64, g: &Governance) -> Result<Merged, NotMerged> {
    if !case.state.is_open() {
        return Err(NotMerged::Closed);
    }
    let sightings = case.sightings.get_or_insert_with(Sightings::default);
    if sightings.recent_events.contains(&s.event_id) {
        return Ok(Merged::Seen);
    }
    sightings.events += 1;
    sightings.last_event = Some(s.event_id.clone());
    sightings.recent_events.push(s.event_id.clone());
    if sightings.recent_events.len() > RECENT_EVENTS {
        sightings.recent_events.remove(0);
    }
    sightings.last_seen_ms = sightings.last_seen_ms.max(s.ts_ms);
    for c in &s.classes {
        if sightings.classes.len() < csb_wire::command::MAX_CLASSES
            && !sightings.classes.contains(c)
        {
            sightings.classes.push(c.clone());
        }
    }
    if sightings.zone.is_none() {
        sightings.zone = s.zone.clone();
    }
    let new_problem = !sightings.problems.contains(&s.problem);
    if new_problem {
        sightings.problems.push(s.problem.clone());
    }
    // Whether the problem is still there as last seen (AI re-check looks again anyway).
    sightings.ended_ms = (s.phase == Phase::End).then_some(s.ts_ms);
    if s.snapshot.is_some() {
        // The first snapshot stays in the evidence (what was reported); the newest is kept
        // beside it.
        sightings.latest_snapshot = s.snapshot.clone();
    }
    if new_problem {
        case.timeline.push(super::lifecycle::Entry {
            at_ms: now,
            actor: Actor::system(),
            action: Action::Merge {
                problem: s.problem.clone(),
            },
            note: format!("the same problem seen again (event {})", s.event_id),
            from: case.state,
            to: case.state,
            request_id: None,
        });
    }
    let cat = g.category(&case.category);
    if case.state == super::lifecycle::State::Reported
        && cat.and_then(|c| s.qualifies(c)) == Some(true)
    {
        register_and_dispatch(case, now, g).map_err(NotMerged::Transition)?;
        return Ok(Merged::Registered);
    }
    Ok(Merged::Added)
}
