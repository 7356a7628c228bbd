//! The case workflow at work in the hub: takes rule events in as sightings ([`intake`]),
//! applies people's transitions, and fires the SLA timers that are due — every change through
//! the [`CaseStore`], durable before it is answered.
//!
//! Events reach it from ingest once stored ([`CaseFeed`], a [`DurableSink`] that never waits)
//! and are processed in log order on the workflow's own thread ([`run`]). Losing none: the
//! thread keeps its position in the event log (stored with the cases); when it falls behind
//! (the feed's queue was full), fails to store, or restarts after a crash, it reads the log
//! again from that position. Reading an event twice is harmless: a sighting already merged is
//! recognised by its id.
//!
//! [`intake`]: super::intake

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csb_wire::{Command, CommandOp, CommandReply, Event, EventKind, SCHEMA_VERSION};
use thiserror::Error;

use super::citizen::CitizenReport;
use super::config::Governance;
use super::intake::{self, Locate, Merged, NotASighting, NotMerged, Sighting};
use super::lifecycle::{
    command_key, Action, Actor, Case, Entry, NewCase, Notice, Recheck, RecheckStep, Timer,
    TransitionError,
};
use super::store::{CaseFilter, CaseStore, CaseStoreError, Updated};
use super::webhook::{Delivery, Notify, Retry};
use crate::ingest::pipeline::{DurableSink, ReplySink};
use crate::storage::store::{LogPos, Store, StoreError, WriteBatch, WriteOutcome};
use crate::support::clock::SharedClock;
use crate::support::loglimit::LogLimiter;

/// `case_meta` key of the intake's position in the event log.
const CURSOR_KEY: &str = "intake_cursor";
/// Events read per page when catching up from the log.
const REPLAY_PAGE: usize = 2_000;
/// Due cases handled per sweep step (a sweep continues until none is due).
const SWEEP_PAGE: usize = 1_000;
/// Batches the feed holds for the workflow thread before it falls behind (then it rereads
/// the log: nothing is lost, only done later).
pub const FEED_CAPACITY: usize = 4_096;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] CaseStoreError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("no case {0}")]
    NotFound(String),
    #[error("reading the event log: {0}")]
    Events(#[from] StoreError),
}

/// The workflow's counters (`/metrics`).
#[derive(Debug, Default)]
pub struct CaseCounters {
    pub sightings: AtomicU64,
    pub opened: AtomicU64,
    pub auto_registered: AtomicU64,
    pub merged: AtomicU64,
    /// Sightings of automatic categories below their confidence or duration (no case yet).
    pub waiting: AtomicU64,
    pub unknown_category: AtomicU64,
    pub warnings: AtomicU64,
    pub overdue: AtomicU64,
    pub reminders: AtomicU64,
    /// Times the feed's queue was full and the log was read again.
    pub fell_behind: AtomicU64,
    /// Events read again from the log (after a restart, falling behind or a failed write).
    pub replayed: AtomicU64,
    pub errors: AtomicU64,
    /// AI re-check commands sent (each resend counted) and those that could not be handed on.
    pub recheck_sends: AtomicU64,
    pub recheck_send_failed: AtomicU64,
    /// Re-checks answered: the problem gone (closed), still there (返工), or the agent could
    /// not look; and those left unanswered past their deadline (on-site verification).
    pub recheck_absent: AtomicU64,
    pub recheck_present: AtomicU64,
    pub recheck_refused: AtomicU64,
    pub recheck_unanswered: AtomicU64,
    /// Replies that matched no waiting re-check (late, repeated, or for another device).
    pub replies_ignored: AtomicU64,
    /// Changes a slow client of the case change stream missed (it was told to re-read).
    pub stream_lagged: AtomicU64,
    /// Webhook deliveries accepted by their department (2xx), tries that failed, deliveries
    /// given up after every try (a `notify_failed` entry on the case), and deliveries the
    /// sending queue could not take (tried again at a later sweep).
    pub webhook_delivered: AtomicU64,
    pub webhook_failed: AtomicU64,
    pub webhook_given_up: AtomicU64,
    pub webhook_queue_full: AtomicU64,
}

impl CaseCounters {
    /// Prometheus text of the counters.
    pub fn render_prometheus(&self) -> String {
        let rows: [(&str, &str, &AtomicU64); 24] = [
            ("csb_hub_case_sightings_total", "Rule events with a known category taken in by the case workflow.", &self.sightings),
            ("csb_hub_cases_opened_total", "Cases opened (from rule events and people's reports).", &self.opened),
            ("csb_hub_cases_auto_registered_total", "Cases registered and dispatched automatically by their category's rule.", &self.auto_registered),
            ("csb_hub_case_merges_total", "Sightings merged into an open case instead of opening another.", &self.merged),
            ("csb_hub_case_sightings_waiting_total", "Sightings of automatic categories below their confidence or duration (no case yet).", &self.waiting),
            ("csb_hub_case_unknown_category_total", "Rule events whose category code the governance configuration does not have.", &self.unknown_category),
            ("csb_hub_case_sla_warnings_total", "SLA warnings fired (80 % of a stage's limit).", &self.warnings),
            ("csb_hub_case_sla_overdue_total", "Stages that went past their limit (escalated to the supervisors).", &self.overdue),
            ("csb_hub_case_sla_reminders_total", "督办 reminder entries fired for overdue stages.", &self.reminders),
            ("csb_hub_case_intake_fell_behind_total", "Times the workflow's queue was full and it read the event log again.", &self.fell_behind),
            ("csb_hub_case_intake_replayed_total", "Events read again from the event log (restart, falling behind, failed write).", &self.replayed),
            ("csb_hub_case_errors_total", "Case store failures in the workflow (retried from the event log).", &self.errors),
            ("csb_hub_case_recheck_sends_total", "AI re-check commands sent to agents (each resend counted).", &self.recheck_sends),
            ("csb_hub_case_recheck_send_failed_total", "AI re-check commands that could not be handed to the broker (sent again later).", &self.recheck_send_failed),
            ("csb_hub_case_recheck_absent_total", "AI re-checks that found the problem gone (case closed).", &self.recheck_absent),
            ("csb_hub_case_recheck_present_total", "AI re-checks that found the problem still there (返工).", &self.recheck_present),
            ("csb_hub_case_recheck_refused_total", "AI re-checks the agent refused or could not finish (on-site verification).", &self.recheck_refused),
            ("csb_hub_case_recheck_unanswered_total", "AI re-checks without an answer by their deadline (on-site verification).", &self.recheck_unanswered),
            ("csb_hub_case_replies_ignored_total", "Command replies matching no waiting re-check (late, repeated, other device).", &self.replies_ignored),
            ("csb_hub_case_stream_lagged_total", "Case changes slow clients of the change stream missed (told to re-read).", &self.stream_lagged),
            ("csb_hub_webhook_delivered_total", "Case changes delivered to departments' webhooks (2xx).", &self.webhook_delivered),
            ("csb_hub_webhook_failed_total", "Webhook tries that failed (retried with back-off).", &self.webhook_failed),
            ("csb_hub_webhook_given_up_total", "Webhook deliveries given up after every try (notify_failed on the case).", &self.webhook_given_up),
            ("csb_hub_webhook_queue_full_total", "Webhook deliveries the sending queue could not take (tried again later).", &self.webhook_queue_full),
        ];
        let mut out = String::new();
        for (name, help, v) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Relaxed)
            ));
        }
        out
    }
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Not a rule event with a category: not the workflow's.
    Ignored,
    UnknownCategory(String),
    /// An automatic category's sighting below its thresholds: no case (yet).
    Waiting,
    Opened {
        id: String,
        registered: bool,
    },
    Merged {
        id: String,
        how: Merged,
    },
}

/// Where the workflow's commands to agents go (the hub publishes them through ingest).
pub trait Commands: Send + Sync + 'static {
    /// Never waits: `false` when it cannot be handed on now (it is sent again later).
    fn send(&self, command: &Command) -> bool;
}

/// The command asking `r`'s camera to look again, sent at `now`.
pub fn recheck_command(r: &Recheck, case: &str, now: i64) -> Option<Command> {
    let (site, device, camera) = r.target()?;
    Some(Command {
        v: SCHEMA_VERSION,
        id: r.command.clone(),
        site: site.to_string(),
        device: device.to_string(),
        ts_ms: now,
        expires_ms: r.deadline_ms,
        op: CommandOp::Recheck(csb_wire::Recheck {
            camera: camera.to_string(),
            zone: r.zone.clone(),
            classes: r.classes.clone(),
            watch_s: r.watch_s,
            case: Some(case.to_string()),
        }),
    })
}

/// A case before a change: what [`Engine::owe`] compares the changed case with.
struct Before {
    department: Option<String>,
    len: usize,
}

impl Before {
    fn of(c: &Case) -> Before {
        Before {
            department: c.department.clone(),
            len: c.timeline.len(),
        }
    }

    /// A case being created.
    fn none() -> Before {
        Before {
            department: None,
            len: 0,
        }
    }
}

pub struct Engine<C: CaseStore> {
    /// Every durable change, for the change stream.
    changes: super::changes::Changes,
    commands: Option<Arc<dyn Commands>>,
    /// Departments with a webhook, where their deliveries go, and how they are tried.
    hooked: HashSet<String>,
    notify: Option<Arc<dyn Notify>>,
    retry: Retry,
    cases: Arc<C>,
    governance: Arc<Governance>,
    clock: SharedClock,
    places: Arc<dyn Locate>,
    ids: Mutex<ulid::Generator>,
    pub counters: Arc<CaseCounters>,
    limiter: Mutex<LogLimiter>,
}

impl<C: CaseStore> Engine<C> {
    pub fn new(
        cases: Arc<C>,
        governance: Arc<Governance>,
        clock: SharedClock,
        places: Arc<dyn Locate>,
    ) -> Self {
        Engine {
            changes: super::changes::Changes::default(),
            commands: None,
            hooked: HashSet::new(),
            notify: None,
            retry: Retry::default(),
            cases,
            governance,
            clock,
            places,
            ids: Mutex::new(ulid::Generator::new()),
            counters: Arc::default(),
            limiter: Mutex::new(LogLimiter::new(5, Duration::from_secs(60))),
        }
    }

    /// Sends AI re-check commands through `commands` (without, re-checks wait unanswered and
    /// go to an inspector at their deadline).
    pub fn with_commands(mut self, commands: Arc<dyn Commands>) -> Self {
        self.commands = Some(commands);
        self
    }

    /// Owes each change of a case to the webhooks of `departments` (the one it is dispatched
    /// to, and the one it left), handed to `notify` by the sweep and tried as `retry` says.
    pub fn with_webhooks(
        mut self,
        departments: impl IntoIterator<Item = String>,
        notify: Arc<dyn Notify>,
        retry: Retry,
    ) -> Self {
        self.hooked = departments.into_iter().collect();
        self.notify = Some(notify);
        self.retry = retry;
        self
    }

    /// Records the webhook deliveries a change of `c` owes (in the same write as the change):
    /// its new timeline entries, to the department it was at (`before`) and the one it is at.
    fn owe(&self, c: &mut Case, before: &Before, now: i64) {
        if self.hooked.is_empty() || c.timeline.len() <= before.len {
            return;
        }
        let mut owed = [before.department.clone(), c.department.clone()];
        if owed[0] == owed[1] {
            owed[1] = None;
        }
        for d in owed.into_iter().flatten() {
            // An earlier notice still owed covers these entries too.
            if self.hooked.contains(&d) && !c.notices.iter().any(|n| n.department == d) {
                c.notices.push(Notice {
                    department: d,
                    from: before.len,
                    attempts: 0,
                    due_ms: now,
                    last_error: None,
                });
            }
        }
        c.due_ms = c.next_due(&self.governance);
    }

    /// The deliveries of `c` due at `now`, each marked under way (until its lease ends).
    fn due_deliveries(&self, c: &mut Case, now: i64) -> Vec<Delivery> {
        let mut out = Vec::new();
        let hooked = &self.hooked;
        c.notices.retain(|n| {
            // A webhook removed from the config owes nothing any more.
            let keep = hooked.contains(&n.department);
            if !keep {
                tracing::warn!(
                    case = c.id,
                    department = n.department,
                    "a webhook delivery dropped: the department has no webhook any more"
                );
            }
            keep
        });
        for i in 0..c.notices.len() {
            if c.notices[i].due_ms <= now {
                out.push(Delivery::of(c, &c.notices[i]));
                c.notices[i].due_ms = now.saturating_add(self.retry.lease_ms());
            }
        }
        if !out.is_empty() {
            c.due_ms = c.next_due(&self.governance);
        }
        out
    }

    /// Records how delivery `d` went, on its case: delivered → the notice moves on (or is
    /// done); failed → counted with its error and tried again after a back-off, or given up
    /// after the last try with a `notify_failed` timeline entry.
    pub fn delivered(&self, d: &Delivery, outcome: Result<(), String>) -> Result<(), EngineError> {
        let now = self.clock.now_ms();
        let g = &*self.governance;
        let retry = self.retry;
        let r = self.cases.update(&d.case, |c| {
            let Some(i) = c
                .notices
                .iter()
                .position(|n| n.department == d.department && n.from == d.from)
            else {
                // Already recorded (a delivery repeated after a restart).
                return Err(());
            };
            let given_up = match &outcome {
                Ok(()) => {
                    if d.through >= c.timeline.len() {
                        c.notices.remove(i);
                    } else {
                        let n = &mut c.notices[i];
                        (n.from, n.attempts, n.due_ms, n.last_error) = (d.through, 0, now, None);
                    }
                    false
                }
                Err(why) => {
                    let n = &mut c.notices[i];
                    n.attempts += 1;
                    n.last_error = Some(why.clone());
                    if n.attempts < retry.attempts {
                        n.due_ms = now.saturating_add(retry.delay_ms(n.attempts));
                        false
                    } else {
                        let attempts = n.attempts;
                        c.notices.remove(i);
                        c.timeline.push(Entry {
                            at_ms: now,
                            actor: Actor::system(),
                            action: Action::NotifyFailed {
                                department: d.department.clone(),
                                attempts,
                                error: why.clone(),
                            },
                            note: format!(
                                "the department's webhook did not take entries {}..{} of this \
                                 timeline; tell it another way",
                                d.from + 1,
                                d.through
                            ),
                            from: c.state,
                            to: c.state,
                            request_id: None,
                        });
                        true
                    }
                }
            };
            c.due_ms = c.next_due(g);
            Ok(given_up)
        })?;
        let Updated::Done(given_up) = r else {
            return Ok(());
        };
        let counter = match (&outcome, given_up) {
            (Ok(()), _) => &self.counters.webhook_delivered,
            (Err(_), false) => &self.counters.webhook_failed,
            (Err(_), true) => &self.counters.webhook_given_up,
        };
        counter.fetch_add(1, Relaxed);
        if let Err(why) = &outcome {
            tracing::warn!(
                case = d.case,
                department = d.department,
                delivery = d.id,
                error = why,
                given_up,
                "webhook delivery failed"
            );
        }
        if given_up {
            self.announce(&d.case);
        }
        Ok(())
    }

    /// The feed of durable case changes.
    pub fn changes(&self) -> &super::changes::Changes {
        &self.changes
    }

    /// Announces the stored case `id` on the feed (after its change is durable).
    fn announce(&self, id: &str) {
        match self.cases.get(id) {
            Ok(Some(c)) => {
                self.changes.publish(&c);
            }
            // Only the feed misses it; the case itself is stored.
            Ok(None) | Err(_) => {
                tracing::warn!(case = id, "a change not announced on the case feed")
            }
        }
    }

    pub fn governance(&self) -> &Governance {
        &self.governance
    }

    pub fn store(&self) -> &Arc<C> {
        &self.cases
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn new_id(&self, now: i64) -> String {
        let mut g = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let t = std::time::UNIX_EPOCH + Duration::from_millis(now.max(0) as u64);
        g.generate_from_datetime(t)
            .unwrap_or_else(|_| ulid::Ulid::from_datetime(t))
            .to_string()
    }

    /// A workflow starting for the first time (no position stored) starts at `end`, the event
    /// log's end now: problems of the past are not its cases. Call before ingest runs.
    pub fn start_at(&self, end: LogPos) -> Result<(), EngineError> {
        if self.cases.meta(CURSOR_KEY)?.is_none() {
            self.cases.set_meta(CURSOR_KEY, &encode_pos(end))?;
            self.cases.sync()?;
        }
        Ok(())
    }

    /// Takes one stored event in: opens a case, merges it into the open one, or ignores it.
    pub fn take(&self, e: &Event) -> Result<Taken, EngineError> {
        if e.kind != EventKind::Rule {
            return Ok(Taken::Ignored);
        }
        let g = &*self.governance;
        let s = match Sighting::of(e, g) {
            Ok(s) => s,
            Err(NotASighting::NoCategory) => return Ok(Taken::Ignored),
            Err(NotASighting::UnknownCategory(code)) => {
                self.counters.unknown_category.fetch_add(1, Relaxed);
                let allow =
                    (self.limiter.lock().unwrap_or_else(|p| p.into_inner())).allow(Instant::now());
                if let Some(suppressed) = allow {
                    tracing::warn!(code, event = %e.id, site = e.site, device = e.device, suppressed,
                        "case intake: a rule event's category is not in the governance configuration; no case");
                }
                return Ok(Taken::UnknownCategory(code));
            }
        };
        self.counters.sightings.fetch_add(1, Relaxed);
        let now = self.clock.now_ms();
        for key in [format!("problem:{}", s.problem), format!("spot:{}", s.spot)] {
            let Some(id) = self.cases.open_by_key(&key)? else {
                continue;
            };
            let merged = self.cases.update(&id, |c| {
                let before = Before::of(c);
                let r = intake::merge(c, &s, now, g);
                if r.is_ok() {
                    self.owe(c, &before, now);
                }
                r
            })?;
            match merged {
                Updated::Done(how) => {
                    if how != Merged::Seen {
                        self.counters.merged.fetch_add(1, Relaxed);
                    }
                    if how == Merged::Registered {
                        self.counters.auto_registered.fetch_add(1, Relaxed);
                    }
                    if how != Merged::Seen {
                        self.announce(&id);
                    }
                    return Ok(Taken::Merged { id, how });
                }
                // Closed meanwhile: the problem is back, a new case.
                Updated::Refused(NotMerged::Closed) | Updated::NotFound => {}
                Updated::Refused(NotMerged::Transition(e)) => return Err(e.into()),
            }
        }
        let place = self.places.place(&s.camera, s.zone.as_deref());
        let Some(mut case) = intake::open(&s, self.new_id(now), place, now, g)? else {
            self.counters.waiting.fetch_add(1, Relaxed);
            return Ok(Taken::Waiting);
        };
        self.owe(&mut case, &Before::none(), now);
        self.cases.create(&case)?;
        self.changes.publish(&case);
        let registered = case.state != super::lifecycle::State::Reported;
        self.counters.opened.fetch_add(1, Relaxed);
        if registered {
            self.counters.auto_registered.fetch_add(1, Relaxed);
        }
        tracing::info!(case = case.id, category = case.category, camera = s.camera,
            state = ?case.state, department = ?case.department, "case opened from a rule event");
        Ok(Taken::Opened {
            id: case.id,
            registered,
        })
    }

    /// A case reported by a person (inspector, citizen, superior), at 上报.
    /// `note` (what was seen) is the first timeline entry's, stored with the case.
    pub fn report(&self, new: NewCase, actor: &Actor, note: &str) -> Result<Case, EngineError> {
        let now = self.clock.now_ms();
        let mut new = new;
        if new.id.is_empty() {
            new.id = self.new_id(now);
        }
        let mut case = Case::report(new, actor.clone(), now, &self.governance)?;
        if let Some(first) = case.timeline.first_mut() {
            first.note = note.to_string();
        }
        if !self.cases.create(&case)? {
            return Err(TransitionError::RequestIdReused(case.id).into());
        }
        self.changes.publish(&case);
        self.counters.opened.fetch_add(1, Relaxed);
        Ok(case)
    }

    /// A case reported by a citizen (Open311), at 上报 like [`Engine::report`], with what the
    /// citizen sent stored in the same write.
    pub fn report_citizen(
        &self,
        new: NewCase,
        citizen: CitizenReport,
        actor: &Actor,
    ) -> Result<Case, EngineError> {
        let now = self.clock.now_ms();
        let mut new = new;
        if new.id.is_empty() {
            new.id = self.new_id(now);
        }
        let mut case = Case::report(new, actor.clone(), now, &self.governance)?;
        case.citizen = Some(citizen);
        if !self.cases.create(&case)? {
            return Err(TransitionError::RequestIdReused(case.id).into());
        }
        self.changes.publish(&case);
        self.counters.opened.fetch_add(1, Relaxed);
        Ok(case)
    }

    /// Applies `action` by `actor` to case `id`, durably; a retried request id answers the same.
    pub fn transition(
        &self,
        id: &str,
        actor: &Actor,
        action: Action,
        note: &str,
        request_id: Option<&str>,
    ) -> Result<(Entry, Case), EngineError> {
        let now = self.clock.now_ms();
        let g = &*self.governance;
        let r = self.cases.update(id, |c| {
            let before = Before::of(c);
            let e = c.apply(actor, action.clone(), note, request_id, now, g)?;
            self.owe(c, &before, now);
            Ok::<_, TransitionError>((e, c.clone()))
        })?;
        match r {
            Updated::Done(out) => {
                self.changes.publish(&out.1);
                Ok(out)
            }
            Updated::Refused(e) => Err(e.into()),
            Updated::NotFound => Err(EngineError::NotFound(id.to_string())),
        }
    }

    fn send_recheck(&self, case: &str, r: &Recheck, now: i64) {
        let sent = match (&self.commands, recheck_command(r, case, now)) {
            (Some(out), Some(cmd)) => match csb_wire::Validate::validate(&cmd) {
                Ok(()) => out.send(&cmd),
                Err(e) => {
                    tracing::error!(case, error = %e, "AI re-check command is not valid; not sent");
                    false
                }
            },
            _ => false,
        };
        let c = if sent {
            &self.counters.recheck_sends
        } else {
            &self.counters.recheck_send_failed
        };
        c.fetch_add(1, Relaxed);
        tracing::info!(
            case,
            command = r.command,
            camera = r.camera,
            attempt = r.sent,
            sent,
            "AI re-check asked of the source camera"
        );
    }

    /// Applies an agent's answer to the case waiting for it, durably; `None` when no case
    /// waits for that command (late, repeated, or from another device): nothing changes.
    pub fn on_reply(&self, reply: &CommandReply) -> Result<Option<Entry>, EngineError> {
        let Some(id) = self.cases.open_by_key(&command_key(&reply.id))? else {
            self.counters.replies_ignored.fetch_add(1, Relaxed);
            return Ok(None);
        };
        let now = self.clock.now_ms();
        let g = &*self.governance;
        let r = self.cases.update(&id, |c| {
            let before = Before::of(c);
            let entry = c.recheck_answer(reply, now, g);
            self.owe(c, &before, now);
            Ok::<_, std::convert::Infallible>(entry)
        })?;
        let entry = match r {
            Updated::Done(Some(e)) => {
                self.announce(&id);
                e
            }
            _ => {
                self.counters.replies_ignored.fetch_add(1, Relaxed);
                return Ok(None);
            }
        };
        let counter = match &entry.action {
            Action::RecheckDone { present: true, .. } => &self.counters.recheck_present,
            Action::RecheckDone { present: false, .. } => &self.counters.recheck_absent,
            _ => &self.counters.recheck_refused,
        };
        counter.fetch_add(1, Relaxed);
        tracing::info!(case = id, command = reply.id, to = ?entry.to, note = entry.note, "AI re-check answered");
        Ok(Some(entry))
    }

    pub fn get(&self, id: &str) -> Result<Option<Case>, EngineError> {
        Ok(self.cases.get(id)?)
    }

    pub fn list(
        &self,
        filter: &CaseFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Case>, EngineError> {
        Ok(self.cases.list(filter, after, limit)?)
    }

    /// Fires every timer due now, each once (its mark is stored with the case in the same
    /// write), and returns what fired per case. The changes of a page of due cases are made
    /// durable together (one flush, not one per case) before any command goes out.
    pub fn sweep(&self) -> Result<Vec<(String, Vec<Timer>)>, EngineError> {
        let now = self.clock.now_ms();
        let g = &*self.governance;
        let mut out = Vec::new();
        // Cases changed on this page, announced once the page is durable.
        let mut changed: Vec<String> = Vec::new();
        loop {
            let due = self.cases.due(now, SWEEP_PAGE)?;
            let mut progressed = false;
            let mut sends = Vec::new();
            let mut deliveries = Vec::new();
            for id in &due {
                let r = self.cases.update_unsynced(id, |c| {
                    let before = Before::of(c);
                    let fired = c.fire_timers(now, g);
                    let step = c.recheck_step(now, g);
                    self.owe(c, &before, now);
                    let owed = self.due_deliveries(c, now);
                    Ok::<_, std::convert::Infallible>((fired, step, owed))
                })?;
                let Updated::Done((fired, step, owed)) = r else {
                    continue;
                };
                if !owed.is_empty() {
                    progressed = true;
                    deliveries.extend(owed);
                }
                if step.is_some() || !fired.is_empty() {
                    changed.push(id.clone());
                }
                match step {
                    // Sent once stored: a crash before sends it again at the next sweep.
                    Some(RecheckStep::Send(r)) => {
                        progressed = true;
                        sends.push((id.clone(), r));
                    }
                    Some(RecheckStep::GaveUp) => {
                        progressed = true;
                        self.counters.recheck_unanswered.fetch_add(1, Relaxed);
                        tracing::warn!(
                            case = id,
                            "AI re-check unanswered by its deadline; an inspector verifies on site"
                        );
                    }
                    None => {}
                }
                if fired.is_empty() {
                    continue;
                }
                progressed = true;
                for t in &fired {
                    let c = match t {
                        Timer::Warning => &self.counters.warnings,
                        Timer::Overdue => &self.counters.overdue,
                        Timer::Reminder(_) => &self.counters.reminders,
                    };
                    c.fetch_add(1, Relaxed);
                }
                out.push((id.clone(), fired));
            }
            if progressed {
                self.cases.sync()?;
                for id in changed.drain(..) {
                    self.announce(&id);
                }
            }
            for (id, r) in sends {
                self.send_recheck(&id, &r, now);
            }
            // Marked under way once stored: one the queue cannot take now (or lost in a crash)
            // goes again when its lease ends.
            for d in deliveries {
                if !self.notify.as_ref().is_some_and(|n| n.send(d)) {
                    self.counters.webhook_queue_full.fetch_add(1, Relaxed);
                }
            }
            // A full page may have more behind it; a page that fired nothing would repeat.
            if due.len() < SWEEP_PAGE || !progressed {
                return Ok(out);
            }
        }
    }
}

/// What the workflow thread is fed.
pub enum FeedItem {
    /// One stored batch's events for the workflow, and the event log's end after them.
    Events { events: Vec<Event>, end: LogPos },
    /// An agent's answer to a command.
    Reply(Box<CommandReply>),
}

/// What ingest hands each durable batch and each command reply to (see the module docs).
pub struct CaseFeed {
    tx: SyncSender<FeedItem>,
    behind: Arc<AtomicBool>,
}

/// The workflow thread's end of the feed.
pub struct FeedRx {
    rx: Receiver<FeedItem>,
    behind: Arc<AtomicBool>,
}

pub fn feed() -> (CaseFeed, FeedRx) {
    let (tx, rx) = std::sync::mpsc::sync_channel(FEED_CAPACITY);
    let behind = Arc::new(AtomicBool::new(false));
    (
        CaseFeed {
            tx,
            behind: behind.clone(),
        },
        FeedRx { rx, behind },
    )
}

impl DurableSink for CaseFeed {
    fn offer(&self, batch: &Arc<WriteBatch>, outcome: &WriteOutcome) {
        let Some(end) = outcome.events_end else {
            return;
        };
        // Only rule events with a category can become cases; those stored before (a resend)
        // were taken in then.
        let events = batch
            .events
            .iter()
            .filter(|e| {
                e.rule.as_ref().is_some_and(|r| r.category.is_some())
                    && !outcome.events_duplicate.contains(&e.id)
            })
            .cloned()
            .collect();
        match self.tx.try_send(FeedItem::Events { events, end }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.behind.store(true, Relaxed),
            // The workflow thread has stopped (shutdown): it reads the log on the next start.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl ReplySink for CaseFeed {
    fn reply(&self, reply: CommandReply) -> bool {
        // A reply dropped here is not lost: the command is sent again and answered again.
        self.tx.try_send(FeedItem::Reply(Box::new(reply))).is_ok()
    }
}

fn encode_pos(p: LogPos) -> Vec<u8> {
    format!("{}:{}", p.seg, p.off).into_bytes()
}

fn decode_pos(b: &[u8]) -> Option<LogPos> {
    let s = std::str::from_utf8(b).ok()?;
    let (seg, off) = s.split_once(':')?;
    Some(LogPos {
        seg: seg.parse().ok()?,
        off: off.parse().ok()?,
    })
}

/// How often [`run`] sweeps the timers.
#[derive(Debug, Clone, Copy)]
pub struct RunSettings {
    pub sweep_every: Duration,
}

/// The workflow thread: catches up from the log, then takes the feed in order and sweeps the
/// timers, until the feed closes (ingest stopped). Blocking: run it on its own thread; `rt`
/// runs the event store's reads.
pub fn run<C: CaseStore, S: Store>(
    engine: Arc<Engine<C>>,
    events: Arc<S>,
    feed: FeedRx,
    rt: tokio::runtime::Handle,
    settings: RunSettings,
) {
    let mut cursor = match engine.cases.meta(CURSOR_KEY) {
        Ok(v) => v.as_deref().and_then(decode_pos),
        Err(e) => {
            tracing::error!(error = %e, "case intake: cannot read its log position; reading the event log from the start");
            None
        }
    };
    let mut catch_up_needed = true;
    let mut next_sweep = Instant::now();
    loop {
        if feed.behind.swap(false, Relaxed) {
            engine.counters.fell_behind.fetch_add(1, Relaxed);
            catch_up_needed = true;
        }
        if catch_up_needed {
            // Whatever events the queue holds are in the log too; replies are not.
            while let Ok(item) = feed.rx.try_recv() {
                if let FeedItem::Reply(r) = item {
                    answer(&engine, &r);
                }
            }
            match catch_up(&engine, &*events, &rt, &mut cursor) {
                Ok(n) => {
                    catch_up_needed = false;
                    if n > 0 {
                        tracing::info!(events = n, "case intake caught up with the event log");
                    }
                }
                Err(e) => {
                    engine.counters.errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "case intake: catching up failed; trying again in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let wait = next_sweep.saturating_duration_since(Instant::now());
        match feed.rx.recv_timeout(wait) {
            Ok(FeedItem::Reply(r)) => answer(&engine, &r),
            Ok(FeedItem::Events { events, end }) => {
                // A batch before this one found the queue full: this one is not next.
                // (The flag was set before this item was sent, so it is seen here.)
                if feed.behind.swap(false, Relaxed) {
                    engine.counters.fell_behind.fetch_add(1, Relaxed);
                    catch_up_needed = true;
                    continue;
                }
                if cursor.is_some_and(|c| end <= c) {
                    continue;
                }
                if let Err(e) = take_all(&engine, &events) {
                    // Not past this batch: read it again from the log shortly.
                    engine.counters.errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "case intake: storing a case failed; reading the log again in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                    catch_up_needed = true;
                    continue;
                }
                cursor = Some(end);
                save_cursor(&engine, cursor);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_sweep {
            if let Err(e) = engine.sweep() {
                engine.counters.errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "case timers: sweep failed; trying again");
            }
            next_sweep = Instant::now() + settings.sweep_every;
        }
    }
    save_cursor(&engine, cursor);
    if let Err(e) = engine.cases.sync() {
        tracing::warn!(error = %e, "case store: final flush failed");
    }
    tracing::info!("case workflow stopped");
}

fn answer<C: CaseStore>(engine: &Engine<C>, reply: &CommandReply) {
    if let Err(e) = engine.on_reply(reply) {
        // Not lost: the command is still waiting and is sent (and answered) again.
        engine.counters.errors.fetch_add(1, Relaxed);
        tracing::error!(error = %e, command = reply.id, "case workflow: storing a re-check's answer failed");
    }
}

fn take_all<C: CaseStore>(engine: &Engine<C>, events: &[Event]) -> Result<(), EngineError> {
    for e in events {
        engine.take(e)?;
    }
    Ok(())
}

fn save_cursor<C: CaseStore>(engine: &Engine<C>, cursor: Option<LogPos>) {
    if let Some(c) = cursor {
        // Written after the cases it covers; durable with their next flush. Lost, it only
        // makes the next start read a little of the log again.
        if let Err(e) = engine.cases.set_meta(CURSOR_KEY, &encode_pos(c)) {
            tracing::warn!(error = %e, "case intake: cannot store its log position");
        }
    }
}

/// Reads the event log after `cursor` to its end, taking every event in.
fn catch_up<C: CaseStore, S: Store>(
    engine: &Engine<C>,
    events: &S,
    rt: &tokio::runtime::Handle,
    cursor: &mut Option<LogPos>,
) -> Result<u64, EngineError> {
    let mut n = 0u64;
    loop {
        let page = rt.block_on(events.events_after(*cursor, REPLAY_PAGE))?;
        let full = page.len() == REPLAY_PAGE;
        for (e, end) in page {
            if e.rule.as_ref().is_some_and(|r| r.category.is_some()) {
                engine.take(&e)?;
                n += 1;
                engine.counters.replayed.fetch_add(1, Relaxed);
            }
            *cursor = Some(end);
        }
        save_cursor(engine, *cursor);
        if !full {
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::calendar::tests::bj;
    use super::super::intake::Nowhere;
    use super::super::lifecycle::{Role, State};
    use super::super::store::SledCases;
    use super::*;
    use crate::storage::store::tests::rule_event;
    use crate::storage::store::SledStore;
    use crate::support::clock::{Clock, ManualClock};
    use csb_wire::Phase;
    use ulid::Ulid;

    struct Rig {
        engine: Engine<SledCases>,
        clock: ManualClock,
        ids: ulid::Generator,
    }

    fn rig(dir: &std::path::Path) -> Rig {
        let clock = ManualClock::at(bj("2026-09-21 09:00"));
        Rig {
            engine: Engine::new(
                Arc::new(open_cases(dir)),
                Arc::new(Governance::built_in().unwrap()),
                Arc::new(clock.clone()),
                Arc::new(Nowhere),
            ),
            clock,
            ids: ulid::Generator::new(),
        }
    }

    /// sled's flusher may hold the lock a moment after a drop (a restart in a test).
    fn open_cases(dir: &std::path::Path) -> SledCases {
        (0..100)
            .find_map(|_| {
                SledCases::open(dir)
                    .inspect_err(|_| std::thread::sleep(Duration::from_millis(50)))
                    .ok()
            })
            .expect("the case store opens")
    }

    impl Rig {
        /// A dwell rule event of `code` about `problem`, lasting `duration_s` so far.
        fn sighting(&mut self, code: &str, problem: Ulid, duration_s: i64, phase: Phase) -> Event {
            let now = self.clock.now_ms();
            let mut e = rule_event(now, "illegal_parking", "car", Ulid::new());
            e.id = self.ids.generate().unwrap();
            let r = e.rule.as_mut().unwrap();
            r.category = Some(code.into());
            r.problem_id = problem;
            r.phase = phase;
            r.zone = Some("no_parking".into());
            r.started_ms = now - duration_s * 1000;
            r.duration_ms = duration_s * 1000;
            e
        }

        fn who(&self, role: Role, dep: Option<&str>) -> Actor {
            Actor {
                id: format!("{role:?}").to_lowercase(),
                role,
                department: dep.map(str::to_string),
            }
        }

        fn act(&self, id: &str, actor: &Actor, action: Action) -> Case {
            self.engine
                .transition(id, actor, action, "", None)
                .unwrap()
                .1
        }
    }

    #[test]
    fn rule_events_open_one_case_per_problem_registered_and_dispatched_when_they_qualify() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path());
        let van = Ulid::new();
        // Parked for 30 s: illegal parking registers itself only from 120 s.
        let e = r.sighting("0505", van, 30, Phase::Start);
        assert_eq!(r.engine.take(&e).unwrap(), Taken::Waiting);
        let e = r.sighting("0505", van, 130, Phase::Update);
        let Taken::Opened { id, registered } = r.engine.take(&e).unwrap() else {
            panic!("a case opens")
        };
        assert!(registered);
        let case = r.engine.get(&id).unwrap().unwrap();
        assert_eq!(case.state, State::Dispatched);
        assert_eq!(case.category, "illegal-parking");
        // No town (no county model here): the category's route without one.
        assert_eq!(case.department.as_deref(), Some("urban-mgmt"));
        assert_eq!(case.camera.as_deref(), Some("yuexi/gw-01/cam-01"));
        let snapshot = e.rule.as_ref().unwrap().snapshot.clone().unwrap();
        assert_eq!(case.evidence, vec![e.id.to_string(), snapshot]);
        let actions: Vec<_> = case.timeline.iter().map(|t| t.action.name()).collect();
        assert_eq!(actions, ["report", "register", "dispatch"]);
        assert!(case.timeline.iter().all(|t| t.actor.id == "system"));
        assert!(case.due_ms.is_some());

        // The same van again, and a replay of that event: one case.
        let again = r.sighting("0505", van, 190, Phase::Update);
        let merged = |how| Taken::Merged {
            id: id.clone(),
            how,
        };
        assert_eq!(r.engine.take(&again).unwrap(), merged(Merged::Added));
        assert_eq!(r.engine.take(&again).unwrap(), merged(Merged::Seen));
        // Another problem id at the same spot (the tracker lost the van and found it again).
        let e = r.sighting("0505", Ulid::new(), 125, Phase::Start);
        assert_eq!(r.engine.take(&e).unwrap(), merged(Merged::Added));
        let case = r.engine.get(&id).unwrap().unwrap();
        let s = case.sightings.as_ref().unwrap();
        assert_eq!((s.events, s.problems.len()), (3, 2));
        assert_eq!(case.timeline.last().unwrap().action.name(), "merge");
        assert_eq!(r.engine.counters.opened.load(Relaxed), 1);

        // Handled, verified, closed: the van coming back is a new case.
        let handler = r.who(Role::Handler, Some("urban-mgmt"));
        let operator = r.who(Role::Operator, None);
        r.act(&id, &handler, Action::Accept);
        r.act(&id, &handler, Action::ReportHandled { photos: vec![] });
        let closed = r.act(&id, &operator, Action::Close);
        assert_eq!(closed.state, State::Closed);
        assert_eq!(closed.due_ms, None);
        let back = r.sighting("0505", van, 300, Phase::Update);
        let Taken::Opened { id: id2, .. } = r.engine.take(&back).unwrap() else {
            panic!("a new case")
        };
        assert_ne!(id, id2);
    }

    /// Commands the engine sent, in order.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Command>>);

    impl Commands for Recorder {
        fn send(&self, c: &Command) -> bool {
            self.0.lock().unwrap().push(c.clone());
            true
        }
    }

    /// Webhook deliveries the sweep handed on, in order.
    #[derive(Default)]
    struct Deliveries(Mutex<Vec<Delivery>>);

    impl Notify for Deliveries {
        fn send(&self, d: Delivery) -> bool {
            self.0.lock().unwrap().push(d);
            true
        }
    }

    impl Deliveries {
        fn take(&self) -> Vec<Delivery> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn with_hooks(r: &mut Rig, cases: Arc<SledCases>, out: &Arc<Deliveries>) {
        r.engine = Engine::new(
            cases,
            Arc::new(Governance::built_in().unwrap()),
            Arc::new(r.clock.clone()),
            Arc::new(Nowhere),
        )
        .with_webhooks(
            ["urban-mgmt".to_string(), "traffic-police".to_string()],
            out.clone(),
            Retry {
                timeout_ms: 1_000,
                first_ms: 60_000,
                max_ms: 600_000,
                attempts: 2,
            },
        );
    }

    fn entries(d: &Delivery) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn webhook_deliveries_are_owed_with_the_change_survive_a_crash_and_move_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path());
        let out = Arc::new(Deliveries::default());
        let cases = r.engine.cases.clone();
        with_hooks(&mut r, cases, &out);
        // Opened, registered and dispatched to urban management at once: owed with the case.
        let e = r.sighting("0505", Ulid::new(), 130, Phase::Start);
        let Taken::Opened { id, .. } = r.engine.take(&e).unwrap() else {
            panic!("a case opens")
        };
        let c = r.engine.get(&id).unwrap().unwrap();
        assert_eq!(c.notices.len(), 1);
        assert_eq!(
            c.due_ms,
            Some(r.clock.now_ms()),
            "due now, in the store's index"
        );
        r.engine.sweep().unwrap();
        let first = out.take();
        assert_eq!(first.len(), 1);
        assert_eq!(entries(&first[0]), ["report", "register", "dispatch"]);
        // The hub dies before the answer is recorded; after a restart the delivery waits
        // for its lease, then goes again with the same id.
        let cases = r.engine.cases.clone();
        drop(std::mem::replace(
            &mut r.engine,
            Engine::new(
                cases.clone(),
                Arc::new(Governance::built_in().unwrap()),
                Arc::new(r.clock.clone()),
                Arc::new(Nowhere),
            ),
        ));
        with_hooks(&mut r, cases, &out);
        r.engine.sweep().unwrap();
        assert!(out.take().is_empty(), "under way until its lease ends");
        r.clock.advance(31_000);
        r.engine.sweep().unwrap();
        let again = out.take();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, first[0].id);
        // While it is under way the handler accepts: delivered → only the new entry follows.
        let handler = r.who(Role::Handler, Some("urban-mgmt"));
        r.act(&id, &handler, Action::Accept);
        r.engine.delivered(&again[0], Ok(())).unwrap();
        // A late answer of the same delivery is already recorded: nothing changes.
        r.engine.delivered(&first[0], Ok(())).unwrap();
        r.engine.sweep().unwrap();
        let next = out.take();
        assert_eq!(next.len(), 1);
        assert_eq!(entries(&next[0]), ["accept"]);
        // 回退 leaves urban management: both it and nobody else hear of it (traffic police
        // only once dispatched there).
        r.engine.delivered(&next[0], Ok(())).unwrap();
        r.act(&id, &handler, Action::Return);
        r.engine.sweep().unwrap();
        let back = out.take();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].department, "urban-mgmt");
        assert_eq!(entries(&back[0]), ["return"]);
        // It fails twice (the attempts): each failure on the case, then a timeline entry.
        r.engine
            .delivered(&back[0], Err("HTTP 503 Service Unavailable".into()))
            .unwrap();
        let c = r.engine.get(&id).unwrap().unwrap();
        assert_eq!(c.notices[0].attempts, 1);
        assert_eq!(
            c.notices[0].last_error.as_deref(),
            Some("HTTP 503 Service Unavailable")
        );
        assert_eq!(
            c.due_ms,
            Some(r.clock.now_ms() + 60_000),
            "after the back-off"
        );
        r.clock.advance(60_000);
        r.engine.sweep().unwrap();
        let retry = out.take();
        assert_eq!(retry[0].id, back[0].id);
        r.engine
            .delivered(&retry[0], Err("timeout".into()))
            .unwrap();
        let c = r.engine.get(&id).unwrap().unwrap();
        assert!(c.notices.is_empty());
        let last = c.timeline.last().unwrap();
        assert_eq!(
            last.action,
            Action::NotifyFailed {
                department: "urban-mgmt".into(),
                attempts: 2,
                error: "timeout".into()
            }
        );
        assert_eq!(r.engine.counters.webhook_given_up.load(Relaxed), 1);
        assert_eq!(r.engine.counters.webhook_delivered.load(Relaxed), 2);
        // The give-up entry itself is owed to no one.
        r.engine.sweep().unwrap();
        assert!(out.take().is_empty());
    }

    #[test]
    fn the_sweep_sends_re_checks_until_answered_and_the_answer_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path());
        let sent = Arc::new(Recorder::default());
        r.engine = Engine::new(
            r.engine.cases.clone(),
            r.engine.governance.clone(),
            Arc::new(r.clock.clone()),
            Arc::new(Nowhere),
        )
        .with_commands(sent.clone());
        let e = r.sighting("0505", Ulid::new(), 130, Phase::Start);
        let Taken::Opened { id, .. } = r.engine.take(&e).unwrap() else {
            panic!("a case opens")
        };
        let handler = r.who(Role::Handler, Some("urban-mgmt"));
        r.act(&id, &handler, Action::Accept);
        r.act(&id, &handler, Action::ReportHandled { photos: vec![] });
        r.engine.sweep().unwrap();
        r.engine.sweep().unwrap();
        let cmds = sent.0.lock().unwrap().clone();
        assert_eq!(cmds.len(), 1, "sent once per interval");
        let c = &cmds[0];
        assert_eq!((c.site.as_str(), c.device.as_str()), ("yuexi", "gw-01"));
        assert_eq!(c.id, format!("{id}-r1"));
        let CommandOp::Recheck(rc) = &c.op else {
            unreachable!("a re-check")
        };
        assert_eq!(rc.camera, "cam-01");
        assert_eq!(rc.zone.as_deref(), Some("no_parking"));
        assert_eq!(rc.classes, vec!["car"]);
        assert_eq!(rc.case.as_deref(), Some(id.as_str()));
        assert_eq!(c.expires_ms, r.clock.now_ms() + 600_000);
        r.clock.advance(30_000);
        r.engine.sweep().unwrap();
        assert_eq!(sent.0.lock().unwrap().len(), 2, "sent again after 30 s");
        assert_eq!(r.engine.counters.recheck_sends.load(Relaxed), 2);

        let reply = CommandReply {
            v: SCHEMA_VERSION,
            id: c.id.clone(),
            site: "yuexi".into(),
            device: "gw-01".into(),
            ts_ms: r.clock.now_ms(),
            status: csb_wire::ReplyStatus::Done,
            reason: None,
            recheck: Some(csb_wire::RecheckResult {
                present: false,
                frames: 50,
                frames_seen: 0,
                counts: Default::default(),
                started_ms: r.clock.now_ms() - 10_000,
                ended_ms: r.clock.now_ms(),
                snapshot: Some(Ulid::new().to_string()),
            }),
            config: None,
        };
        let entry = r.engine.on_reply(&reply).unwrap().unwrap();
        assert_eq!(entry.to, State::Closed);
        assert_eq!(r.engine.on_reply(&reply).unwrap(), None, "answered once");
        assert_eq!(r.engine.counters.recheck_absent.load(Relaxed), 1);
        assert_eq!(r.engine.counters.replies_ignored.load(Relaxed), 1);
        r.clock.advance(60_000);
        r.engine.sweep().unwrap();
        assert_eq!(sent.0.lock().unwrap().len(), 2, "nothing more to send");
        // Durable: what a restarted hub reads.
        let Rig { engine, .. } = r;
        drop(engine);
        let again = open_cases(dir.path());
        let case = again.get(&id).unwrap().unwrap();
        assert_eq!(case.state, State::Closed);
        let rc = case.recheck.unwrap();
        assert_eq!(
            (rc.sent, rc.outcome),
            (2, super::super::lifecycle::RecheckOutcome::Absent)
        );
    }

    #[test]
    fn every_durable_change_is_announced_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path());
        let mut rx = r.engine.changes().feed().subscribe();
        let van = Ulid::new();
        let e = r.sighting("0505", van, 130, Phase::Start);
        let Taken::Opened { id, .. } = r.engine.take(&e).unwrap() else {
            panic!("a case opens")
        };
        // A replayed event changes nothing and is not announced.
        r.engine.take(&e).unwrap();
        let again = r.sighting("0505", van, 190, Phase::Update);
        r.engine.take(&again).unwrap();
        let handler = r.who(Role::Handler, Some("urban-mgmt"));
        r.act(&id, &handler, Action::Accept);
        // Past the handling limit: the sweep's timers are announced after they are stored.
        r.clock.advance(3 * 86_400_000);
        r.engine.sweep().unwrap();
        let mut seen = Vec::new();
        while let Ok(c) = rx.try_recv() {
            assert_eq!(c.id, id);
            seen.push((c.seq, c.action.clone(), c.state));
        }
        let actions: Vec<&str> = seen.iter().map(|(_, a, _)| a.as_str()).collect();
        // Opened (dispatched at once); the repeat counted into it (its sightings changed;
        // the replay did not); accepted; the sweep's timers, once stored.
        assert_eq!(actions[..3], ["dispatch", "dispatch", "accept"], "{seen:?}");
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(actions[3].starts_with("sla_"), "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn categories_without_automatic_registration_wait_for_an_operator() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path());
        let pile = Ulid::new();
        let e = r.sighting("0102", pile, 3600, Phase::Start);
        let Taken::Opened { id, registered } = r.engine.take(&e).unwrap() else {
            panic!("a case opens")
        };
        assert!(!registered);
        let e = r.sighting("0102", pile, 7200, Phase::Update);
        r.engine.take(&e).unwrap();
        let case = r.engine.get(&id).unwrap().unwrap();
        assert_eq!(case.state, State::Reported);
        assert_eq!(case.department, None);
        // Unknown codes and plain detections are not cases.
        let e = r.sighting("9999", Ulid::new(), 600, Phase::Start);
        assert_eq!(
            r.engine.take(&e).unwrap(),
            Taken::UnknownCategory("9999".into())
        );
        let mut e = r.sighting("0102", Ulid::new(), 600, Phase::Start);
        e.rule.as_mut().unwrap().category = None;
        assert_eq!(r.engine.take(&e).unwrap(), Taken::Ignored);
        assert_eq!(r.engine.counters.unknown_category.load(Relaxed), 1);
    }

    /// Timers in working time (08:00–12:00, 14:00–18:00 on working days): illegal parking has 2
    /// working hours from dispatch at Mon 09:00 → warning at 10:36 (80 %), overdue after
    /// 11:00, 督办 reminders every 2 working hours after that: 15:00, 17:00, Tue 09:00.
    #[test]
    fn timers_fire_once_each_in_working_time_and_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let mut r = rig(dir.path());
            let e = r.sighting("0505", Ulid::new(), 200, Phase::Start);
            let Taken::Opened { id, .. } = r.engine.take(&e).unwrap() else {
                panic!("a case opens")
            };
            let fired_at = |r: &Rig, at: &str| {
                r.clock.set(bj(at));
                r.engine.sweep().unwrap()
            };
            assert!(fired_at(&r, "2026-09-21 10:35").is_empty());
            assert_eq!(
                fired_at(&r, "2026-09-21 10:36"),
                vec![(id.clone(), vec![Timer::Warning])]
            );
            assert!(fired_at(&r, "2026-09-21 10:50").is_empty(), "once");
            assert!(fired_at(&r, "2026-09-21 11:00").is_empty());
            assert_eq!(
                fired_at(&r, "2026-09-21 11:01"),
                vec![(id.clone(), vec![Timer::Overdue])]
            );
            // Lunch does not count: the first reminder is at 15:00, not 13:00.
            assert!(fired_at(&r, "2026-09-21 14:59").is_empty());
            assert_eq!(
                fired_at(&r, "2026-09-21 15:00"),
                vec![(id.clone(), vec![Timer::Reminder(1)])]
            );
            assert!(fired_at(&r, "2026-09-21 15:00").is_empty());
            id
        };
        // The hub is down over the night; when it is back at Tue 09:30, the reminders of
        // 17:00 and 09:00 were due: one entry says so, once.
        let r = rig(dir.path());
        r.clock.set(bj("2026-09-22 09:30"));
        assert_eq!(
            r.engine.sweep().unwrap(),
            vec![(id.clone(), vec![Timer::Reminder(3)])]
        );
        assert!(r.engine.sweep().unwrap().is_empty());
        let case = r.engine.get(&id).unwrap().unwrap();
        let timers: Vec<_> = case
            .timeline
            .iter()
            .filter(|t| t.action.name().starts_with("sla_"))
            .map(|t| t.action.clone())
            .collect();
        assert_eq!(
            timers,
            [
                Action::SlaWarning,
                Action::SlaOverdue,
                Action::SlaReminder { n: 1 },
                Action::SlaReminder { n: 3 }
            ]
        );
        assert_eq!(r.engine.counters.reminders.load(Relaxed), 1);

        // Suspended (挂账): no timer runs; resumed, they go on from where they stood.
        let sup = r.who(Role::Supervisor, None);
        let c = r.act(&id, &sup, Action::Suspend);
        assert_eq!(c.due_ms, None);
        r.clock.set(bj("2026-09-30 09:00"));
        assert!(r.engine.sweep().unwrap().is_empty());
        let c = r.act(&id, &sup, Action::Resume);
        assert!(c.due_ms.unwrap() > bj("2026-09-30 09:00"));
    }

    #[test]
    fn an_approved_extension_moves_the_deadline_and_gives_it_new_timers() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path());
        let e = r.sighting("0505", Ulid::new(), 200, Phase::Start);
        let Taken::Opened { id, .. } = r.engine.take(&e).unwrap() else {
            panic!("a case opens")
        };
        r.clock.set(bj("2026-09-21 10:40"));
        assert_eq!(r.engine.sweep().unwrap().len(), 1, "the warning");
        let handler = r.who(Role::Handler, Some("urban-mgmt"));
        r.act(&id, &handler, Action::RequestExtension { value: 2 });
        let c = r.act(
            &id,
            &r.who(Role::Supervisor, None),
            Action::ApproveExtension,
        );
        // 4 working hours from Mon 09:00: 09–12, 14–15 → deadline 15:00, warning at 14:12.
        let clock = c.clock.unwrap();
        assert_eq!(
            clock.deadline(&r.engine.governance().calendar),
            Some(bj("2026-09-21 15:00"))
        );
        assert!(
            !c.sla.warned,
            "yellow no longer: a new warning is due at 80 %"
        );
        assert_eq!(c.due_ms, Some(bj("2026-09-21 14:12")));
        r.clock.set(bj("2026-09-21 15:01"));
        let fired = r.engine.sweep().unwrap();
        assert_eq!(fired, vec![(id, vec![Timer::Warning, Timer::Overdue])]);
    }

    /// A crash between storing events and taking them in: the workflow reads the log from its
    /// position on the next start. Then live batches through the feed, and a feed that fell
    /// behind reads the log again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_workflow_takes_in_stored_events_after_a_crash_and_when_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&dir.path().join("db"), 8).unwrap());
        let mut r = rig(&dir.path().join("cases"));
        r.engine.start_at(store.events_end()).unwrap();
        let van = Ulid::new();
        let first = r.sighting("0505", van, 200, Phase::Start);
        let write = |events: Vec<Event>| {
            let store = store.clone();
            async move {
                store
                    .write(WriteBatch {
                        events,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
            }
        };
        // Stored, then the "crash": never offered.
        write(vec![first.clone()]).await;
        let engine = Arc::new(r.engine);
        let (feed, rx) = feed();
        let thread = {
            let (engine, store) = (engine.clone(), store.clone());
            let rt = tokio::runtime::Handle::current();
            let settings = RunSettings {
                sweep_every: Duration::from_millis(50),
            };
            std::thread::spawn(move || run(engine, store, rx, rt, settings))
        };
        let wait_for = |want: u64| {
            let engine = engine.clone();
            async move {
                for _ in 0..200 {
                    let s = engine.counters.sightings.load(Relaxed);
                    if s >= want {
                        return s;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                panic!("the workflow took in fewer than {want} sightings");
            }
        };
        wait_for(1).await;
        // Counted just after the sighting: wait for it too.
        for _ in 0..200 {
            if engine.counters.replayed.load(Relaxed) >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let all = CaseFilter::default();
        let cases = engine.list(&all, None, 10).unwrap();
        assert_eq!(cases.len(), 1);
        assert_eq!(engine.counters.replayed.load(Relaxed), 1);

        // Live: stored, then offered.
        let mut next = || {
            let mut e = first.clone();
            e.id = r.ids.generate().unwrap();
            e
        };
        let batch = Arc::new(WriteBatch {
            events: vec![next()],
            ..Default::default()
        });
        let out = store.write(batch.clone()).await.unwrap();
        feed.offer(&batch, &out);
        wait_for(2).await;
        // Behind: the queue overflowed and dropped a batch; the log has it.
        let lost = Arc::new(WriteBatch {
            events: vec![next()],
            ..Default::default()
        });
        let out = store.write(lost.clone()).await.unwrap();
        feed.behind.store(true, Relaxed);
        let batch = Arc::new(WriteBatch {
            events: vec![next()],
            ..Default::default()
        });
        let out2 = store.write(batch.clone()).await.unwrap();
        feed.offer(&batch, &out2);
        let _ = out;
        wait_for(4).await;
        drop(feed);
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        let cases = engine.list(&all, None, 10).unwrap();
        assert_eq!(cases.len(), 1, "one van, one case");
        assert_eq!(cases[0].sightings.as_ref().unwrap().events, 4);
        assert_eq!(engine.counters.fell_behind.load(Relaxed), 1);
    }
}
