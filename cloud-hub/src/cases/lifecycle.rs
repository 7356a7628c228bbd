//! A case and its lifecycle: 上报 → 立案 | 不予立案 | 作废 → 派遣 → 处置 → 反馈 → 核查 → 结案 | 返工,
//! with the side paths 回退 (a department returns a case that is not its own), 延期 (extension:
//! requested by the handler, decided by a supervisor), 挂账 (suspension and resumption) and 督办
//! (supervision notes). [`Case::apply`] checks the actor's role and the case's state, records
//! who, when and why in the append-only timeline, moves the stage clocks, and is idempotent on
//! the client's request id: the same request applied twice changes the case once and answers
//! the same.
//!
//! Pure: no I/O and no clock of its own (`now` comes in), so the store can make a transition
//! durable before it is acknowledged, and tests control time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::calendar::WorkCalendar;
use super::config::{Governance, Urgency};
use super::sla::{Light, StageClock};

/// Where a case came from (信息采集).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "CaseSource")]
pub enum Source {
    /// An edge agent's rule event (video AI).
    VideoAi,
    /// A sensor threshold event.
    Sensor,
    /// A citizen (12345 hotline, Open311 app).
    Citizen,
    /// An inspector (监督员) on patrol.
    Inspector,
    /// A superior authority.
    Superior,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "CaseState")]
pub enum State {
    /// 上报: waiting for an operator.
    Reported,
    /// 立案: registered, to be dispatched.
    Registered,
    /// 不予立案 (closed without a case: false positive, duplicate, out of scope).
    Rejected,
    /// 作废
    Voided,
    /// 派遣: sent to a department, not yet taken up.
    Dispatched,
    /// 处置: the department is handling it.
    Handling,
    /// 反馈 → 核查: the department reported it handled; waiting for verification (on site or
    /// by the source camera).
    Verifying,
    /// 结案
    Closed,
    /// 挂账: suspended; the clock of the stage it was in stands still.
    Suspended,
}

impl State {
    pub fn is_open(self) -> bool {
        !matches!(self, State::Rejected | State::Voided | State::Closed)
    }
}

/// Why a report was not registered (不予立案).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "CaseRejectReason")]
pub enum RejectReason {
    /// 误报: the detection was wrong (counts against the camera's precision).
    FalsePositive,
    Duplicate,
    OutOfScope,
}

/// Who may do what. A handler belongs to one department and sees and acts on its cases only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "CaseRole")]
pub enum Role {
    /// Leaders: read only.
    Viewer,
    /// 监督员: reports and verifies on site.
    Inspector,
    /// 受理/立案/派遣/核查 at the command center.
    Operator,
    /// A department's handler.
    Handler,
    /// 值班长 / superior: approves 延期 and 挂账, 督办.
    Supervisor,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "CaseActor")]
pub struct Actor {
    /// A token name, `system` (automatic registration, timers) or `agent:{site}/{device}`.
    pub id: String,
    pub role: Role,
    /// The handler's department.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            id: "system".into(),
            role: Role::Admin,
            department: None,
        }
    }
}

/// What an actor asks of a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
#[schemars(rename = "CaseAction")]
pub enum Action {
    /// 上报: how every case begins ([`Case::report`]); not applied to an existing case.
    Report,
    Register,
    Reject {
        reason: RejectReason,
    },
    Void,
    /// To the routing table's department unless one is named.
    Dispatch {
        #[serde(default)]
        department: Option<String>,
    },
    /// The department takes it up (签收).
    Accept,
    /// 回退: not this department's; back to 立案 for another dispatch.
    Return,
    /// 反馈: handled, with what was done (and photos as evidence ids).
    ReportHandled {
        #[serde(default)]
        photos: Vec<String>,
    },
    /// 核查 passed: 结案.
    Close,
    /// 核查 failed: 返工, dispatched again to the same department.
    Rework,
    /// 延期 requested by the handler: more time, in the handling limit's unit.
    RequestExtension {
        value: u32,
    },
    ApproveExtension,
    DenyExtension,
    /// 挂账
    Suspend,
    Resume,
    /// 督办: a supervision note; no state change.
    Supervise,
    /// Timers (the hub's, never asked for): the running stage reached 80 % of its limit.
    SlaWarning,
    /// The running stage passed its limit: escalated to the supervisors.
    SlaOverdue,
    /// The `n`th 督办 reminder since the stage went overdue.
    SlaReminder {
        n: u32,
    },
    /// An automatic rule (the auto-registration of a category) acted; no state change.
    Merge {
        /// The problem id merged into this case.
        problem: String,
    },
    /// AI 核查 asked of the source camera (after 反馈); no state change.
    RecheckRequested {
        command: String,
    },
    /// The source camera looked again: the problem still there → 返工, gone → 结案.
    RecheckDone {
        command: String,
        present: bool,
    },
    /// No usable answer (refused, failed, or none before the deadline): an inspector (or an
    /// operator) verifies on site; no state change.
    RecheckUnanswered {
        command: String,
    },
    /// The department's webhook refused or did not answer every try: the department was not
    /// told of the entries since its last delivery (they stay in this timeline).
    NotifyFailed {
        department: String,
        attempts: u32,
        error: String,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Report => "report",
            Action::Register => "register",
            Action::Reject { .. } => "reject",
            Action::Void => "void",
            Action::Dispatch { .. } => "dispatch",
            Action::Accept => "accept",
            Action::Return => "return",
            Action::ReportHandled { .. } => "report_handled",
            Action::Close => "close",
            Action::Rework => "rework",
            Action::RequestExtension { .. } => "request_extension",
            Action::ApproveExtension => "approve_extension",
            Action::DenyExtension => "deny_extension",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
            Action::Supervise => "supervise",
            Action::SlaWarning => "sla_warning",
            Action::SlaOverdue => "sla_overdue",
            Action::SlaReminder { .. } => "sla_reminder",
            Action::Merge { .. } => "merge",
            Action::RecheckRequested { .. } => "recheck_requested",
            Action::RecheckDone { .. } => "recheck_done",
            Action::RecheckUnanswered { .. } => "recheck_unanswered",
            Action::NotifyFailed { .. } => "notify_failed",
        }
    }

    /// Roles allowed to ask (the handler further limited to its own department's cases).
    fn roles(&self) -> &'static [Role] {
        use Role::*;
        match self {
            Action::Report => &[Inspector, Operator, Supervisor, Admin],
            Action::Register | Action::Reject { .. } | Action::Dispatch { .. } => {
                &[Operator, Supervisor, Admin]
            }
            Action::Void => &[Operator, Supervisor, Admin],
            Action::Accept | Action::Return | Action::ReportHandled { .. } => &[Handler, Admin],
            Action::RequestExtension { .. } => &[Handler, Admin],
            Action::Close | Action::Rework => &[Operator, Inspector, Supervisor, Admin],
            Action::ApproveExtension | Action::DenyExtension => &[Supervisor, Admin],
            Action::Suspend | Action::Resume | Action::Supervise => &[Supervisor, Admin],
            // The hub's own: fired by timers and intake, never asked for.
            Action::SlaWarning
            | Action::SlaOverdue
            | Action::SlaReminder { .. }
            | Action::Merge { .. }
            | Action::RecheckRequested { .. }
            | Action::RecheckDone { .. }
            | Action::RecheckUnanswered { .. }
            | Action::NotifyFailed { .. } => &[],
        }
    }
}

/// One line of the timeline: who did what, when, why, and the state it left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "CaseEntry")]
pub struct Entry {
    pub at_ms: i64,
    pub actor: Actor,
    /// `"action": "…"` and the action's own fields, side by side with the entry's.
    #[serde(flatten)]
    pub action: Action,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    pub from: State,
    pub to: State,
    /// The client's request id this entry answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "CasePlace")]
pub struct Place {
    /// `[lon, lat]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub town: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<String>,
    /// Outside the built-up area: on-site verification has the longer limit.
    #[serde(default)]
    pub rural: bool,
}

/// What a new case starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewCase {
    pub id: String,
    pub source: Source,
    /// A category id, legacy code or 2026 code.
    pub category: String,
    pub place: Place,
    /// Snapshot and event ids.
    #[serde(default)]
    pub evidence: Vec<String>,
    /// Where it was seen, for a camera or sensor source: `{site}/{device}/{camera}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
}

/// Which timers of the running stage have fired (reset when a new stage starts): what makes a
/// timer fire once, as it is stored with the case in the same write.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct SlaMarks {
    /// Stages started so far (each clock start is a new stage).
    pub stage: u32,
    pub warned: bool,
    pub overdue: bool,
    pub reminders: u32,
}

/// Repeats of an event-sourced problem merged into a case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Sightings {
    /// Rule problem ids (`rule.problem_id`) merged into the case, first first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Events merged (the first included).
    pub events: u64,
    /// The newest merged event's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<String>,
    /// The last merged events' ids (at most [`RECENT_EVENTS`]): an event read again from the
    /// log after a restart is recognised and not counted twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_events: Vec<String>,
    /// When the problem was last seen (Unix ms).
    pub last_seen_ms: i64,
    /// When the rule said the problem ended, if the last sighting was its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<i64>,
    /// The newest sighting's snapshot (the first one is in the evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_snapshot: Option<String>,
    /// Where repeats are looked for: category, camera and the camera's zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<String>,
    /// The agent's zone on the camera (an AI re-check looks there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Labels of the objects seen (an AI re-check looks for these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Case {
    pub id: String,
    pub source: Source,
    /// Category id (configs/governance/categories.toml).
    pub category: String,
    pub urgency: Urgency,
    pub place: Place,
    pub state: State,
    /// The state a suspended case returns to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_from: Option<State>,
    /// Where it is (or was last) dispatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    /// Departments dispatched to, in order (返工 = the same one twice or more).
    #[serde(default)]
    pub dispatches: Vec<String>,
    /// Evidence: snapshot ids, related event ids, handler photos.
    #[serde(default)]
    pub evidence: Vec<String>,
    pub created_ms: i64,
    /// Clock of the running stage (handling once dispatched), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<StageClock>,
    /// A pending 延期 request (value in the handling limit's unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_requested: Option<u32>,
    /// Whether handling finished within its limit (set at 反馈).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_on_time: Option<bool>,
    /// The camera or sensor that saw it, `{site}/{device}/{camera}` (AI re-check asks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// Event-sourced cases: the repeats merged into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sightings: Option<Sightings>,
    /// AI 核查 of the latest 反馈, for a video case whose camera can look again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recheck: Option<Recheck>,
    #[serde(default)]
    pub sla: SlaMarks,
    /// When the running stage's next timer is due ([`Case::next_due`], kept current by every
    /// change): the store indexes open cases on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<i64>,
    pub timeline: Vec<Entry>,
    /// A citizen's report (Open311): what they wrote, the photo, how to reach them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub citizen: Option<super::citizen::CitizenReport>,
    /// Webhook deliveries owed to departments (`[webhooks]` of the hub's config), stored with
    /// the change that owes them: a failing endpoint shows here (attempts, last error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<Notice>,
}

/// A department's webhook owes the timeline entries from `from` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "CaseNotice")]
pub struct Notice {
    pub department: String,
    /// The first timeline entry (index) not yet delivered.
    pub from: usize,
    /// Failed tries since the last delivery.
    pub attempts: u32,
    /// When the next try is due (Unix ms); while a try is under way, when it counts as lost.
    pub due_ms: i64,
    /// Why the last try failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// AI 核查: the source camera is asked (a command to its agent, sent again until answered or
/// the deadline passes) to look at the problem's zone again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "CaseRecheck")]
pub struct Recheck {
    /// The command's id, `{case}-r{n}`: the agent's reply names it.
    pub command: String,
    /// `{site}/{device}/{camera}`.
    pub camera: String,
    /// The agent's zone on the camera.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Labels looked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    pub watch_s: u32,
    pub requested_ms: i64,
    /// Without an answer by then, an inspector verifies on site.
    pub deadline_ms: i64,
    /// Times the command was sent.
    pub sent: u32,
    /// When it is sent (again) while unanswered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_send_ms: Option<i64>,
    pub outcome: RecheckOutcome,
    /// What the camera saw (its snapshot is the case's "after" evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<csb_wire::RecheckResult>,
    /// Why there is no result (the agent's reason, or no answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "CaseRecheckOutcome")]
pub enum RecheckOutcome {
    /// Asked; no answer yet.
    Waiting,
    /// The problem is gone: closed.
    Absent,
    /// Still there: 返工.
    Present,
    /// The agent refused or could not look: on-site verification.
    Refused,
    /// No answer before the deadline (the agent offline): on-site verification.
    NoAnswer,
    /// A person closed, reworked or suspended the case first.
    Superseded,
}

impl Recheck {
    fn due(&self) -> Option<i64> {
        (self.outcome == RecheckOutcome::Waiting).then(|| {
            self.next_send_ms
                .map_or(self.deadline_ms, |t| t.min(self.deadline_ms))
        })
    }

    /// `(site, device, camera)` of [`Recheck::camera`].
    pub fn target(&self) -> Option<(&str, &str, &str)> {
        let mut it = self.camera.splitn(3, '/');
        Some((it.next()?, it.next()?, it.next()?))
    }
}

/// The [`Case::merge_keys`] key of a waiting re-check's command.
pub fn command_key(command: &str) -> String {
    format!("command:{command}")
}

/// What a sweep found for a case's re-check.
#[derive(Debug, Clone, PartialEq)]
pub enum RecheckStep {
    /// Send (again) the command of this re-check.
    Send(Box<Recheck>),
    /// The deadline passed unanswered: on-site verification.
    GaveUp,
}

/// Event ids a case remembers for recognising a replayed event (the log is read again from the
/// workflow's last stored position, seconds behind at most in normal operation).
pub const RECENT_EVENTS: usize = 32;

/// A timer of the running stage that came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    Warning,
    Overdue,
    Reminder(u32),
}

/// Reminders counted in one entry at most (bounds the loop for a hub down for months).
const MAX_REMINDERS_AT_ONCE: u32 = 10_000;

#[derive(Debug, Clone, Error, PartialEq)]
pub enum TransitionError {
    #[error("role `{role:?}` may not {action}")]
    Forbidden { role: Role, action: &'static str },
    #[error("this case belongs to another department")]
    NotYourDepartment,
    #[error("cannot {action} a case that is {state:?}")]
    WrongState { action: &'static str, state: State },
    #[error("category `{0}` is not in the governance configuration")]
    UnknownCategory(String),
    #[error("department `{0}` is not in the governance configuration")]
    UnknownDepartment(String),
    #[error("no extension was requested")]
    NoExtensionPending,
    #[error("request id `{0}` was used for a different action on this case")]
    RequestIdReused(String),
}

impl Case {
    /// A new case at 上报.
    pub fn report(
        new: NewCase,
        actor: Actor,
        now: i64,
        g: &Governance,
    ) -> Result<Case, TransitionError> {
        let NewCase {
            id,
            source,
            category,
            place,
            evidence,
            camera,
        } = new;
        let cat = g
            .category(&category)
            .ok_or(TransitionError::UnknownCategory(category))?;
        let clock = StageClock::start(register_limit(g, cat.urgency), now, &g.calendar);
        Ok(Case {
            id,
            source,
            category: cat.id.clone(),
            urgency: cat.urgency,
            place,
            state: State::Reported,
            suspended_from: None,
            department: None,
            dispatches: Vec::new(),
            evidence,
            created_ms: now,
            clock: Some(clock),
            extension_requested: None,
            handled_on_time: None,
            camera,
            sightings: None,
            recheck: None,
            sla: SlaMarks {
                stage: 1,
                ..SlaMarks::default()
            },
            due_ms: None,
            timeline: vec![Entry {
                at_ms: now,
                actor,
                action: Action::Report,
                note: String::new(),
                from: State::Reported,
                to: State::Reported,
                request_id: None,
            }],
            citizen: None,
            notices: Vec::new(),
        }
        .with_due(g))
    }

    fn with_due(mut self, g: &Governance) -> Case {
        self.due_ms = self.next_due(g);
        self
    }

    /// The keys an open case is found by: each problem id merged into it and its spot
    /// (category, camera and zone) for merging repeats, and its waiting re-check's command
    /// for the agent's answer.
    pub fn merge_keys(&self) -> Vec<String> {
        if !self.state.is_open() {
            return Vec::new();
        }
        let mut keys = Vec::new();
        if let Some(s) = &self.sightings {
            keys.extend(s.problems.iter().map(|p| format!("problem:{p}")));
            if let Some(spot) = &s.spot {
                keys.push(format!("spot:{spot}"));
            }
        }
        if let Some(r) = self
            .recheck
            .as_ref()
            .filter(|r| r.outcome == RecheckOutcome::Waiting)
        {
            keys.push(command_key(&r.command));
        }
        keys
    }

    /// The traffic light of the running stage, if one runs.
    pub fn light(&self, now: i64, cal: &WorkCalendar) -> Option<Light> {
        self.state
            .is_open()
            .then_some(self.clock.as_ref()?.light(now, cal))
    }

    /// What `actor` may ask of this case now (action names as `POST …/actions` takes them):
    /// each askable action is tried on a copy, so role, department and state are judged by
    /// [`Case::apply`] itself and the answer cannot drift from it.
    pub fn actions_for(&self, actor: &Actor, now: i64, g: &Governance) -> Vec<&'static str> {
        let askable = [
            Action::Register,
            Action::Reject {
                reason: RejectReason::FalsePositive,
            },
            Action::Void,
            Action::Dispatch { department: None },
            Action::Accept,
            Action::Return,
            Action::ReportHandled { photos: Vec::new() },
            Action::Close,
            Action::Rework,
            Action::RequestExtension { value: 1 },
            Action::ApproveExtension,
            Action::DenyExtension,
            Action::Suspend,
            Action::Resume,
            Action::Supervise,
        ];
        askable
            .into_iter()
            .filter(|a| {
                match self.clone().apply(actor, a.clone(), "", None, now, g) {
                    Ok(_) => true,
                    // The routing table has no department for it: the caller names one.
                    Err(TransitionError::UnknownDepartment(_)) => {
                        matches!(a, Action::Dispatch { .. })
                    }
                    Err(_) => false,
                }
            })
            .map(|a| a.name())
            .collect()
    }

    /// Whether `actor` may see this case (handlers: their department's only).
    pub fn visible_to(&self, actor: &Actor) -> bool {
        actor.role != Role::Handler
            || (actor.department.is_some() && actor.department == self.department)
    }

    /// Applies `action` by `actor` at `now`. With a `request_id` seen before on this case,
    /// returns that entry again without changing anything (a retried request).
    pub fn apply(
        &mut self,
        actor: &Actor,
        action: Action,
        note: &str,
        request_id: Option<&str>,
        now: i64,
        g: &Governance,
    ) -> Result<Entry, TransitionError> {
        if let Some(rid) = request_id {
            if let Some(e) = self
                .timeline
                .iter()
                .find(|e| e.request_id.as_deref() == Some(rid))
            {
                return if e.action == action {
                    Ok(e.clone())
                } else {
                    Err(TransitionError::RequestIdReused(rid.into()))
                };
            }
        }
        let name = action.name();
        if !action.roles().contains(&actor.role) {
            return Err(TransitionError::Forbidden {
                role: actor.role,
                action: name,
            });
        }
        if actor.role == Role::Handler && !self.visible_to(actor) {
            return Err(TransitionError::NotYourDepartment);
        }
        let cal = &g.calendar;
        let wrong = |state| TransitionError::WrongState {
            action: name,
            state,
        };
        let from = self.state;
        let cat = g
            .category(&self.category)
            .ok_or_else(|| TransitionError::UnknownCategory(self.category.clone()))?;
        let to = match (&action, from) {
            (Action::Register, State::Reported) => {
                self.start_stage(dispatch_limit(g, self.urgency), now, g);
                State::Registered
            }
            (Action::Reject { .. }, State::Reported) => {
                self.end_stage();
                State::Rejected
            }
            (Action::Void, State::Reported | State::Registered) => {
                self.end_stage();
                State::Voided
            }
            (Action::Dispatch { department }, State::Registered) => {
                let dep = match department {
                    Some(d) => d.clone(),
                    None => g
                        .route(
                            cat,
                            self.place.town.as_deref(),
                            self.place.zone.as_deref(),
                            self.place.grid.as_deref(),
                        )
                        .to_string(),
                };
                if g.department(&dep).is_none() {
                    return Err(TransitionError::UnknownDepartment(dep));
                }
                self.dispatch_to(dep, now, g);
                State::Dispatched
            }
            (Action::Accept, State::Dispatched) => State::Handling,
            (Action::Return, State::Dispatched | State::Handling) => {
                self.start_stage(dispatch_limit(g, self.urgency), now, g);
                self.department = None;
                self.extension_requested = None;
                State::Registered
            }
            (Action::ReportHandled { photos }, State::Dispatched | State::Handling) => {
                self.evidence.extend(photos.iter().cloned());
                let on_time = self
                    .clock
                    .as_ref()
                    .is_none_or(|c| c.light(now, cal) != Light::Red);
                self.handled_on_time = Some(on_time);
                let verify = if self.place.rural {
                    g.stages.verify.rural
                } else {
                    g.stages.verify.town
                };
                self.start_stage(verify, now, g);
                State::Verifying
            }
            (Action::Close, State::Verifying) => {
                self.end_stage();
                State::Closed
            }
            (Action::Rework, State::Verifying) => {
                let dep = self
                    .department
                    .clone()
                    .unwrap_or_else(|| cat.department.clone());
                self.dispatch_to(dep, now, g);
                State::Dispatched
            }
            (Action::RequestExtension { value }, State::Dispatched | State::Handling) => {
                self.extension_requested = Some(*value);
                from
            }
            (Action::ApproveExtension | Action::DenyExtension, _) if from.is_open() => {
                let value = self
                    .extension_requested
                    .take()
                    .ok_or(TransitionError::NoExtensionPending)?;
                if matches!(action, Action::ApproveExtension) {
                    if let Some(c) = self.clock.as_mut() {
                        let mut extra = cat.limit;
                        extra.value = value;
                        c.extend(extra, cal);
                        // The new deadline gets its own warning and escalation.
                        let light = c.light(now, cal);
                        self.sla.warned &= light != Light::Green;
                        if light != Light::Red {
                            self.sla.overdue = false;
                            self.sla.reminders = 0;
                        }
                    }
                }
                from
            }
            (Action::Suspend, s) if s.is_open() && s != State::Suspended => {
                if let Some(c) = self.clock.as_mut() {
                    c.suspend(now, cal);
                }
                self.suspended_from = Some(s);
                State::Suspended
            }
            (Action::Resume, State::Suspended) => {
                if let Some(c) = self.clock.as_mut() {
                    c.resume(now);
                }
                self.suspended_from.take().unwrap_or(State::Registered)
            }
            (Action::Supervise, s) if s.is_open() => s,
            (_, s) => return Err(wrong(s)),
        };
        self.state = to;
        let handled = matches!(action, Action::ReportHandled { .. });
        let entry = Entry {
            at_ms: now,
            actor: actor.clone(),
            action,
            note: note.to_string(),
            from,
            to,
            request_id: request_id.map(str::to_string),
        };
        self.timeline.push(entry.clone());
        if to != State::Verifying {
            // A person decided first: a late answer changes nothing.
            if let Some(r) = self.recheck.as_mut() {
                if r.outcome == RecheckOutcome::Waiting {
                    r.outcome = RecheckOutcome::Superseded;
                    r.next_send_ms = None;
                }
            }
        }
        if handled {
            self.start_recheck(now, g);
        }
        self.due_ms = self.next_due(g);
        Ok(entry)
    }

    /// After 反馈 of a video case: asks its camera to look again (sent by the next sweep).
    fn start_recheck(&mut self, now: i64, g: &Governance) {
        let settings = &g.stages.recheck;
        if !settings.enabled || self.source != Source::VideoAi {
            return;
        }
        let Some(camera) = self.camera.clone() else {
            return;
        };
        let n = self
            .timeline
            .iter()
            .filter(|e| matches!(e.action, Action::RecheckRequested { .. }))
            .count()
            + 1;
        let command = format!("{}-r{n}", self.id);
        let (zone, classes) = self
            .sightings
            .as_ref()
            .map(|s| (s.zone.clone(), s.classes.clone()))
            .unwrap_or_default();
        let note = format!(
            "AI 核查: {camera} looks at zone {} for {} s",
            zone.as_deref().unwrap_or("(whole frame)"),
            settings.watch_s
        );
        self.recheck = Some(Recheck {
            command: command.clone(),
            camera,
            zone,
            classes,
            watch_s: settings.watch_s,
            requested_ms: now,
            deadline_ms: now.saturating_add(i64::from(settings.wait_s) * 1000),
            sent: 0,
            next_send_ms: Some(now),
            outcome: RecheckOutcome::Waiting,
            result: None,
            reason: None,
        });
        self.timeline.push(Entry {
            at_ms: now,
            actor: Actor::system(),
            action: Action::RecheckRequested { command },
            note,
            from: self.state,
            to: self.state,
            request_id: None,
        });
    }

    /// The re-check's due work at `now`: a (re)send, or giving up past the deadline (stored
    /// with the case in the same write, so each happens once).
    pub fn recheck_step(&mut self, now: i64, g: &Governance) -> Option<RecheckStep> {
        if self.state != State::Verifying {
            return None;
        }
        let every = i64::from(g.stages.recheck.resend_every_s.max(1)) * 1000;
        let r = self
            .recheck
            .as_mut()
            .filter(|r| r.outcome == RecheckOutcome::Waiting)?;
        let step = if now >= r.deadline_ms {
            r.outcome = RecheckOutcome::NoAnswer;
            r.next_send_ms = None;
            let reason = format!(
                "no answer from {} by the deadline (sent {} times)",
                r.camera, r.sent
            );
            r.reason = Some(reason.clone());
            let command = r.command.clone();
            self.timeline.push(Entry {
                at_ms: now,
                actor: Actor::system(),
                action: Action::RecheckUnanswered { command },
                note: format!("{reason}: an inspector verifies on site"),
                from: self.state,
                to: self.state,
                request_id: None,
            });
            RecheckStep::GaveUp
        } else if r.next_send_ms.is_some_and(|t| now >= t) {
            r.sent += 1;
            let next = now.saturating_add(every);
            r.next_send_ms = (next < r.deadline_ms).then_some(next);
            RecheckStep::Send(Box::new(r.clone()))
        } else {
            return None;
        };
        self.due_ms = self.next_due(g);
        Some(step)
    }

    /// Applies an agent's answer to the waiting re-check: absent → 结案, present → 返工 to the
    /// same department, refused or failed → on-site verification. `None`: not the command
    /// waited for (late, repeated, or from another device): nothing changes.
    pub fn recheck_answer(
        &mut self,
        reply: &csb_wire::CommandReply,
        now: i64,
        g: &Governance,
    ) -> Option<Entry> {
        if self.state != State::Verifying {
            return None;
        }
        let r = self.recheck.as_ref()?;
        let from_camera = r
            .target()
            .is_some_and(|(s, d, _)| s == reply.site && d == reply.device);
        if r.outcome != RecheckOutcome::Waiting || r.command != reply.id || !from_camera {
            return None;
        }
        let actor = Actor {
            id: format!("agent:{}/{}", reply.site, reply.device),
            role: Role::Admin,
            department: None,
        };
        let command = r.command.clone();
        let from = self.state;
        let (action, note, to) = match (&reply.status, &reply.recheck) {
            (csb_wire::ReplyStatus::Done, Some(res)) => {
                let seen = res
                    .counts
                    .iter()
                    .map(|(k, v)| format!("{k} ×{v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let what = format!(
                    "in {} of {} frames{}",
                    res.frames_seen,
                    res.frames,
                    if seen.is_empty() {
                        String::new()
                    } else {
                        format!(" ({seen})")
                    }
                );
                if let Some(s) = &res.snapshot {
                    if !self.evidence.contains(s) {
                        self.evidence.push(s.clone());
                    }
                }
                let to = if res.present {
                    let dep = self
                        .department
                        .clone()
                        .or_else(|| g.category(&self.category).map(|c| c.department.clone()))
                        .unwrap_or_default();
                    self.dispatch_to(dep, now, g);
                    State::Dispatched
                } else {
                    self.end_stage();
                    State::Closed
                };
                let rec = self.recheck.as_mut()?;
                rec.outcome = if res.present {
                    RecheckOutcome::Present
                } else {
                    RecheckOutcome::Absent
                };
                rec.result = Some(res.clone());
                let note = if res.present {
                    format!("AI 核查: still there {what}: 返工")
                } else {
                    format!("AI 核查: gone ({what}): 结案")
                };
                (
                    Action::RecheckDone {
                        command,
                        present: res.present,
                    },
                    note,
                    to,
                )
            }
            _ => {
                let reason = reply
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("{:?}", reply.status).to_lowercase());
                let rec = self.recheck.as_mut()?;
                rec.outcome = RecheckOutcome::Refused;
                rec.reason = Some(reason.clone());
                (
                    Action::RecheckUnanswered { command },
                    format!("the agent could not look ({reason}): an inspector verifies on site"),
                    from,
                )
            }
        };
        if let Some(rec) = self.recheck.as_mut() {
            rec.next_send_ms = None;
        }
        self.state = to;
        let entry = Entry {
            at_ms: now,
            actor,
            action,
            note,
            from,
            to,
            request_id: None,
        };
        self.timeline.push(entry.clone());
        self.due_ms = self.next_due(g);
        Some(entry)
    }

    fn dispatch_to(&mut self, dep: String, now: i64, g: &Governance) {
        let limit = g
            .category(&self.category)
            .map(|c| c.limit)
            .unwrap_or(g.stages.dispatch.normal);
        self.start_stage(limit, now, g);
        self.dispatches.push(dep.clone());
        self.department = Some(dep);
        self.extension_requested = None;
    }

    /// A new stage with its own clock and timers.
    fn start_stage(&mut self, limit: super::sla::Limit, now: i64, g: &Governance) {
        self.clock = Some(StageClock::start(limit, now, &g.calendar));
        self.sla = SlaMarks {
            stage: self.sla.stage + 1,
            ..SlaMarks::default()
        };
    }

    fn end_stage(&mut self) {
        self.clock = None;
    }

    /// The `n`th (from 1) 督办 reminder's time, given the deadline.
    fn reminder_at(deadline: i64, n: u32, g: &Governance) -> Option<i64> {
        let every = g.stages.reminders.supervise_every;
        let ms = every.ms(&g.calendar).max(60_000) * i64::from(n);
        if every.unit.is_working() {
            g.calendar.add_working(deadline, ms)
        } else {
            Some(deadline.saturating_add(ms))
        }
    }

    /// When the case's next timer is due — the running stage's, its re-check's, or a webhook
    /// delivery's (`None`: none left).
    pub fn next_due(&self, g: &Governance) -> Option<i64> {
        let notice = self.notices.iter().map(|n| n.due_ms).min();
        if !self.state.is_open() {
            // A closed case may still owe its last change to a department.
            return notice;
        }
        let recheck = self.recheck.as_ref().and_then(Recheck::due);
        [self.sla_due(g), recheck, notice]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the running stage's next SLA timer is due.
    fn sla_due(&self, g: &Governance) -> Option<i64> {
        if !self.state.is_open() {
            return None;
        }
        let clock = self.clock.as_ref()?;
        let cal = &g.calendar;
        if !self.sla.warned {
            return clock.warn_at(cal);
        }
        let deadline = clock.deadline(cal)?;
        if !self.sla.overdue {
            // Red (and escalated) once strictly past the deadline.
            return Some(deadline + 1);
        }
        Self::reminder_at(deadline, self.sla.reminders + 1, g)
    }

    /// Fires the running stage's timers that are due at `now`, in order, each once: the marks
    /// that say so are part of the case, stored in the same write as the timeline entries.
    pub fn fire_timers(&mut self, now: i64, g: &Governance) -> Vec<Timer> {
        let mut fired = Vec::new();
        let due_deadline = self.clock.as_ref().and_then(|c| c.deadline(&g.calendar));
        while let Some(due) = self.sla_due(g) {
            if due > now || fired.len() >= 3 {
                break;
            }
            let (timer, action, note) = if !self.sla.warned {
                self.sla.warned = true;
                (
                    Timer::Warning,
                    Action::SlaWarning,
                    "80 % of the stage's limit used",
                )
            } else if !self.sla.overdue {
                self.sla.overdue = true;
                (
                    Timer::Overdue,
                    Action::SlaOverdue,
                    "past the stage's limit: escalated to the supervisors",
                )
            } else {
                // Every reminder due by now is one entry: a hub that was down across several
                // intervals says how many were due instead of writing each.
                let deadline = due_deadline.unwrap_or(due);
                let mut n = self.sla.reminders + 1;
                while n < self.sla.reminders + MAX_REMINDERS_AT_ONCE
                    && Self::reminder_at(deadline, n + 1, g).is_some_and(|t| t <= now)
                {
                    n += 1;
                }
                let missed = n - self.sla.reminders;
                self.sla.reminders = n;
                let note = if missed > 1 {
                    "督办 reminder (several were due)"
                } else {
                    "督办 reminder"
                };
                (Timer::Reminder(n), Action::SlaReminder { n }, note)
            };
            self.timeline.push(Entry {
                at_ms: now,
                actor: Actor::system(),
                action,
                note: format!("{note} (due {due})"),
                from: self.state,
                to: self.state,
                request_id: None,
            });
            fired.push(timer);
        }
        self.due_ms = self.next_due(g);
        fired
    }

    /// 返工: dispatched to the same department twice or more (judged at closing).
    pub fn reworked(&self) -> bool {
        let mut seen = BTreeMap::new();
        self.dispatches.iter().any(|d| {
            let n = seen.entry(d).or_insert(0);
            *n += 1;
            *n > 1
        })
    }
}

fn register_limit(g: &Governance, u: Urgency) -> super::sla::Limit {
    match u {
        Urgency::Normal => g.stages.register.normal,
        Urgency::Urgent => g.stages.register.urgent,
    }
}

fn dispatch_limit(g: &Governance, u: Urgency) -> super::sla::Limit {
    match u {
        Urgency::Normal => g.stages.dispatch.normal,
        Urgency::Urgent => g.stages.dispatch.urgent,
    }
}

#[cfg(test)]
mod tests {
    use super::super::calendar::tests::bj;
    use super::*;
    use std::path::Path;

    fn governance() -> Governance {
        Governance::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/governance"))
            .unwrap()
    }

    fn who(role: Role, dep: Option<&str>) -> Actor {
        Actor {
            id: format!("{role:?}").to_lowercase(),
            role,
            department: dep.map(str::to_string),
        }
    }

    fn parking(g: &Governance, now: i64) -> Case {
        let new = NewCase {
            id: "case-1".into(),
            source: Source::VideoAi,
            category: "09009".into(),
            place: Place {
                point: Some([116.36, 30.85]),
                town: Some("tiantang".into()),
                zone: None,
                grid: None,
                rural: false,
            },
            evidence: vec!["snap-before".into()],
            camera: None,
        };
        Case::report(new, Actor::system(), now, g).unwrap()
    }

    #[test]
    fn a_case_runs_from_report_to_close_with_rework_in_between() {
        let g = governance();
        let (op, sup) = (who(Role::Operator, None), who(Role::Supervisor, None));
        let police = who(Role::Handler, Some("traffic-police"));
        let t0 = bj("2026-09-21 09:00");
        let mut c = parking(&g, t0);
        c.apply(&op, Action::Register, "", Some("r1"), t0, &g)
            .unwrap();
        c.apply(&op, Action::Dispatch { department: None }, "", None, t0, &g)
            .unwrap();
        // Routed by town: the county seat's parking goes to the traffic police.
        assert_eq!(c.department.as_deref(), Some("traffic-police"));
        // Handling limit 2 working hours from 09:00 → 11:00.
        assert_eq!(
            c.clock.unwrap().deadline(&g.calendar),
            Some(bj("2026-09-21 11:00"))
        );
        c.apply(&police, Action::Accept, "", None, t0, &g).unwrap();
        let photo = Action::ReportHandled {
            photos: vec!["photo-1".into()],
        };
        c.apply(&police, photo, "moved", None, bj("2026-09-21 10:00"), &g)
            .unwrap();
        assert_eq!(c.state, State::Verifying);
        assert_eq!(c.handled_on_time, Some(true));
        // Still there: 返工 to the same department.
        c.apply(
            &op,
            Action::Rework,
            "van still there",
            None,
            bj("2026-09-21 10:30"),
            &g,
        )
        .unwrap();
        assert_eq!(c.state, State::Dispatched);
        assert!(c.reworked());
        let done = Action::ReportHandled { photos: vec![] };
        c.apply(&police, done, "", None, bj("2026-09-21 14:30"), &g)
            .unwrap();
        // Dispatched again at 10:30: 2 working hours end 14:30, reported at 14:30 → on time.
        assert_eq!(c.handled_on_time, Some(true));
        c.apply(&sup, Action::Close, "", None, bj("2026-09-21 15:00"), &g)
            .unwrap();
        assert_eq!(c.state, State::Closed);
        assert!(c.light(bj("2026-09-22 09:00"), &g.calendar).is_none());
        let steps: Vec<_> = c.timeline.iter().map(|e| (e.action.name(), e.to)).collect();
        assert_eq!(steps.len(), 8, "{steps:?}");
        assert!(c.evidence.contains(&"photo-1".to_string()));
    }

    fn seen_by_camera(g: &Governance, now: i64) -> Case {
        let mut c = parking(g, now);
        c.camera = Some("yuexi/gw-01/cam-1".into());
        c.sightings = Some(Sightings {
            zone: Some("no-parking".into()),
            classes: vec!["car".into(), "truck".into()],
            ..Sightings::default()
        });
        let op = who(Role::Operator, None);
        let police = who(Role::Handler, Some("traffic-police"));
        c.apply(&op, Action::Register, "", None, now, g).unwrap();
        c.apply(&op, Action::Dispatch { department: None }, "", None, now, g)
            .unwrap();
        c.apply(&police, Action::Accept, "", None, now, g).unwrap();
        c
    }

    fn answer(c: &Case, device: &str, present: Option<bool>) -> csb_wire::CommandReply {
        let r = c.recheck.as_ref().unwrap();
        csb_wire::CommandReply {
            v: 1,
            id: r.command.clone(),
            site: "yuexi".into(),
            device: device.into(),
            ts_ms: r.requested_ms,
            status: match present {
                Some(_) => csb_wire::ReplyStatus::Done,
                None => csb_wire::ReplyStatus::Refused,
            },
            reason: present
                .is_none()
                .then(|| "camera `cam-1` has no zone `no-parking`".into()),
            recheck: present.map(|p| csb_wire::RecheckResult {
                present: p,
                frames: 40,
                frames_seen: if p { 38 } else { 0 },
                counts: if p {
                    [("truck".into(), 1)].into()
                } else {
                    BTreeMap::new()
                },
                started_ms: r.requested_ms,
                ended_ms: r.requested_ms + 10_000,
                snapshot: Some(format!("snap-after-{}", r.command)),
            }),
            config: None,
        }
    }

    #[test]
    fn ai_recheck_is_sent_until_answered_and_each_answer_applies_once() {
        let g = governance();
        let police = who(Role::Handler, Some("traffic-police"));
        let t0 = bj("2026-09-21 09:00");
        let mut c = seen_by_camera(&g, t0);
        let t1 = bj("2026-09-21 10:00");
        let handled = Action::ReportHandled { photos: vec![] };
        c.apply(&police, handled.clone(), "moved", None, t1, &g)
            .unwrap();
        let r = c.recheck.clone().unwrap();
        assert_eq!(
            (r.command.as_str(), r.outcome, r.zone.as_deref(), r.watch_s),
            ("case-1-r1", RecheckOutcome::Waiting, Some("no-parking"), 10)
        );
        assert_eq!(r.deadline_ms, t1 + 600_000);
        assert_eq!(c.due_ms, Some(t1), "sent at the next sweep");
        assert!(c.merge_keys().contains(&command_key("case-1-r1")));
        assert_eq!(
            c.timeline.last().unwrap().action.name(),
            "recheck_requested"
        );
        // Sent, then again every 30 s while unanswered; nothing between.
        assert!(matches!(c.recheck_step(t1, &g), Some(RecheckStep::Send(r)) if r.sent == 1));
        assert_eq!(c.recheck_step(t1 + 1_000, &g), None);
        assert_eq!(c.due_ms, Some(t1 + 30_000));
        assert!(
            matches!(c.recheck_step(t1 + 30_000, &g), Some(RecheckStep::Send(r)) if r.sent == 2)
        );
        // Answers that are not the one waited for change nothing.
        assert_eq!(
            c.recheck_answer(&answer(&c, "gw-02", Some(false)), t1, &g),
            None
        );
        let mut other = answer(&c, "gw-01", Some(false));
        other.id = "case-1-r0".into();
        assert_eq!(c.recheck_answer(&other, t1, &g), None);
        // Still there: 返工 to the same department, with the fresh picture.
        let still = answer(&c, "gw-01", Some(true));
        let e = c.recheck_answer(&still, t1 + 40_000, &g).unwrap();
        assert_eq!(
            (e.from, e.to, e.actor.id.as_str()),
            (State::Verifying, State::Dispatched, "agent:yuexi/gw-01")
        );
        assert_eq!(c.dispatches, vec!["traffic-police", "traffic-police"]);
        assert!(c.reworked());
        assert!(c.evidence.contains(&"snap-after-case-1-r1".to_string()));
        assert_eq!(c.recheck.as_ref().unwrap().outcome, RecheckOutcome::Present);
        assert!(!c.merge_keys().contains(&command_key("case-1-r1")));
        assert_eq!(c.recheck_answer(&still, t1 + 41_000, &g), None, "a repeat");
        assert_eq!(c.recheck_step(t1 + 60_000, &g), None);

        // Again handled; no answer by the deadline → on-site verification, once.
        let t2 = bj("2026-09-21 11:00");
        c.apply(&police, handled.clone(), "", None, t2, &g).unwrap();
        assert_eq!(c.recheck.as_ref().unwrap().command, "case-1-r2");
        assert!(matches!(c.recheck_step(t2, &g), Some(RecheckStep::Send(_))));
        assert_eq!(c.recheck_step(t2 + 600_000, &g), Some(RecheckStep::GaveUp));
        assert_eq!(c.recheck_step(t2 + 700_000, &g), None);
        assert_eq!(c.state, State::Verifying);
        assert_eq!(
            c.recheck.as_ref().unwrap().outcome,
            RecheckOutcome::NoAnswer
        );
        let late = answer(&c, "gw-01", Some(false));
        assert_eq!(c.recheck_answer(&late, t2 + 700_000, &g), None, "too late");
        let inspector = who(Role::Inspector, None);
        c.apply(
            &inspector,
            Action::Close,
            "gone, checked on site",
            None,
            t2 + 800_000,
            &g,
        )
        .unwrap();
        assert_eq!(c.state, State::Closed);
        assert_eq!(c.next_due(&g), None);
    }

    #[test]
    fn ai_recheck_gone_closes_refusals_go_on_site_and_people_may_decide_first() {
        let g = governance();
        let police = who(Role::Handler, Some("traffic-police"));
        let handled = Action::ReportHandled { photos: vec![] };
        let t0 = bj("2026-09-21 09:00");
        // Gone: 结案 with the before and after pictures.
        let mut c = seen_by_camera(&g, t0);
        c.apply(&police, handled.clone(), "", None, t0, &g).unwrap();
        let e = c
            .recheck_answer(&answer(&c, "gw-01", Some(false)), t0 + 12_000, &g)
            .unwrap();
        assert_eq!((e.to, c.state), (State::Closed, State::Closed));
        assert_eq!(c.evidence, vec!["snap-before", "snap-after-case-1-r1"]);
        assert_eq!(c.next_due(&g), None);
        // Refused: stays at 核查 for an inspector, with the agent's reason.
        let mut c = seen_by_camera(&g, t0);
        c.apply(&police, handled.clone(), "", None, t0, &g).unwrap();
        let e = c
            .recheck_answer(&answer(&c, "gw-01", None), t0, &g)
            .unwrap();
        assert_eq!(
            (e.action.name(), e.to),
            ("recheck_unanswered", State::Verifying)
        );
        let r = c.recheck.as_ref().unwrap();
        assert_eq!(r.outcome, RecheckOutcome::Refused);
        assert!(r.reason.as_deref().unwrap().contains("no zone"));
        assert_eq!(
            c.recheck_step(t0 + 3_600_000, &g),
            None,
            "nothing left to send"
        );
        // An operator closes before the answer: the late answer changes nothing.
        let mut c = seen_by_camera(&g, t0);
        c.apply(&police, handled.clone(), "", None, t0, &g).unwrap();
        let op = who(Role::Operator, None);
        c.apply(
            &op,
            Action::Close,
            "seen on the CCTV wall",
            None,
            t0 + 1_000,
            &g,
        )
        .unwrap();
        assert_eq!(
            c.recheck.as_ref().unwrap().outcome,
            RecheckOutcome::Superseded
        );
        assert_eq!(
            c.recheck_answer(&answer(&c, "gw-01", Some(true)), t0 + 9_000, &g),
            None
        );
        assert_eq!(c.state, State::Closed);
        // Without a camera (a citizen's report) or with re-checks off: people verify.
        let mut c = parking(&g, t0);
        let op = who(Role::Operator, None);
        c.apply(&op, Action::Register, "", None, t0, &g).unwrap();
        c.apply(&op, Action::Dispatch { department: None }, "", None, t0, &g)
            .unwrap();
        c.apply(&police, handled.clone(), "", None, t0, &g).unwrap();
        assert!(c.recheck.is_none());
        let mut off = g.clone();
        off.stages.recheck.enabled = false;
        let mut c = seen_by_camera(&off, t0);
        c.apply(&police, handled, "", None, t0, &off).unwrap();
        assert!(c.recheck.is_none());
    }

    #[test]
    fn roles_departments_and_states_are_checked() {
        let g = governance();
        let t0 = bj("2026-09-21 09:00");
        let mut c = parking(&g, t0);
        let viewer = who(Role::Viewer, None);
        assert!(matches!(
            c.apply(&viewer, Action::Register, "", None, t0, &g),
            Err(TransitionError::Forbidden { .. })
        ));
        let op = who(Role::Operator, None);
        assert!(matches!(
            c.apply(&op, Action::Close, "", None, t0, &g),
            Err(TransitionError::WrongState { .. })
        ));
        c.apply(&op, Action::Register, "", None, t0, &g).unwrap();
        c.apply(&op, Action::Dispatch { department: None }, "", None, t0, &g)
            .unwrap();
        let other = who(Role::Handler, Some("urban-mgmt"));
        assert!(!c.visible_to(&other));
        assert_eq!(
            c.apply(&other, Action::Accept, "", None, t0, &g),
            Err(TransitionError::NotYourDepartment)
        );
        let police = who(Role::Handler, Some("traffic-police"));
        assert!(c.visible_to(&police));
        // A handler cannot close, nor approve its own extension.
        assert!(c.apply(&police, Action::Close, "", None, t0, &g).is_err());
        c.apply(
            &police,
            Action::RequestExtension { value: 1 },
            "",
            None,
            t0,
            &g,
        )
        .unwrap();
        assert!(matches!(
            c.apply(&police, Action::ApproveExtension, "", None, t0, &g),
            Err(TransitionError::Forbidden { .. })
        ));
        let sup = who(Role::Supervisor, None);
        c.apply(&sup, Action::ApproveExtension, "ok", None, t0, &g)
            .unwrap();
        // 2 + 1 working hours from 09:00.
        assert_eq!(
            c.clock.unwrap().deadline(&g.calendar),
            Some(bj("2026-09-21 12:00"))
        );
        assert_eq!(
            c.apply(&sup, Action::ApproveExtension, "", None, t0, &g),
            Err(TransitionError::NoExtensionPending)
        );
    }

    #[test]
    fn suspension_stops_the_clock_and_requests_are_idempotent() {
        let g = governance();
        let t0 = bj("2026-09-21 09:00");
        let mut c = parking(&g, t0);
        let (op, sup) = (who(Role::Operator, None), who(Role::Supervisor, None));
        c.apply(&op, Action::Register, "", None, t0, &g).unwrap();
        let d = Action::Dispatch {
            department: Some("urban-mgmt".into()),
        };
        let first = c.apply(&op, d.clone(), "", Some("req-7"), t0, &g).unwrap();
        // The same request again: same answer, no second dispatch.
        let again = c.apply(&op, d, "", Some("req-7"), t0 + 5, &g).unwrap();
        assert_eq!(first, again);
        assert_eq!(c.dispatches.len(), 1);
        assert_eq!(
            c.apply(&op, Action::Void, "", Some("req-7"), t0, &g),
            Err(TransitionError::RequestIdReused("req-7".into()))
        );
        c.apply(
            &sup,
            Action::Suspend,
            "road closed",
            None,
            bj("2026-09-21 10:00"),
            &g,
        )
        .unwrap();
        assert_eq!(c.state, State::Suspended);
        assert_eq!(
            c.light(bj("2026-09-25 10:00"), &g.calendar),
            Some(Light::Green)
        );
        c.apply(&sup, Action::Resume, "", None, bj("2026-09-23 14:00"), &g)
            .unwrap();
        assert_eq!(c.state, State::Dispatched);
        // 1 h used before the suspension, 1 h left from Wednesday 14:00.
        assert_eq!(
            c.clock.unwrap().deadline(&g.calendar),
            Some(bj("2026-09-23 15:00"))
        );
    }
}
