//! Evaluation (综合评价) of departments, towns and cameras over a period, as
//! `../shared/brief/governance.md` and `configs/governance/evaluation.toml` define it:
//!
//! - a case counts for the department it was last dispatched to, in the period it was
//!   registered (立案) in; what happened to it is counted as of the evaluation time `at`;
//! - 立案数: such cases; 处置数: reported handled by `at`; 按期处置数: handled within the
//!   handling limit (extensions and suspension included); 超期未处置数: not handled and past
//!   the handling deadline at `at`; 应结案数 (= 应处置数) = 处置数 + 超期未处置数;
//!   结案数 / 按期结案数: closed by `at` (handled on time); 返工数: closed cases dispatched to
//!   the same department twice or more; 超期数: handled late plus 超期未处置;
//! - 结案率 = 结案数 / 应结案数, 按期结案率, 处置率 = 处置数 / 应处置数, 按期处置率, 返工率 =
//!   返工数 / 应结案数 (or / 立案数, `rework_rate_base`); a rate with nothing due is `null` and
//!   counts 0 in the score;
//! - 综合指标值 = 100 × (立案数分值 / band_max_score × w_registered + 结案率 × w_closed +
//!   按期处置率 × w_on_time + (1 − 返工率) × w_non_rework), on 0..100.
//!
//! Cameras: of the video cases an operator decided on (registered or rejected), the share not
//! rejected as a false positive (误报) — the camera's precision.

use std::collections::BTreeMap;

use serde::Serialize;

use super::config::{Evaluation as Weights, Governance, ReworkBase};
use super::lifecycle::{Action, Case, RejectReason, Source, State};

/// The counts and rates of one department (or town).
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Figures {
    /// 立案数
    pub registered: u64,
    /// 处置数
    pub handled: u64,
    /// 按期处置数
    pub handled_on_time: u64,
    /// 超期未处置数
    pub overdue_unhandled: u64,
    /// 应结案数 (= 应处置数)
    pub should_close: u64,
    /// 结案数
    pub closed: u64,
    /// 按期结案数
    pub closed_on_time: u64,
    /// 返工数
    pub reworked: u64,
    /// 超期数
    pub overdue: u64,
    /// 结案率
    pub close_rate: Option<f64>,
    /// 按期结案率
    pub on_time_close_rate: Option<f64>,
    /// 处置率
    pub handle_rate: Option<f64>,
    /// 按期处置率
    pub on_time_handle_rate: Option<f64>,
    /// 返工率
    pub rework_rate: Option<f64>,
    /// 立案数分值 (from the bands)
    pub registered_score: f64,
    /// 综合指标值, 0..100
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CameraFigures {
    /// Video cases of this camera an operator decided on (registered or rejected).
    pub decided: u64,
    /// Rejected as 误报.
    pub false_positives: u64,
    /// (decided − false positives) / decided; `null` with none decided.
    pub precision: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Report {
    pub from_ms: i64,
    pub to_ms: i64,
    /// What happened to the cases is counted up to here.
    pub at_ms: i64,
    /// By department id, best score first in [`Report::ranking`].
    pub departments: BTreeMap<String, Figures>,
    /// Department ids by score, best first (ties by id).
    pub ranking: Vec<String>,
    pub towns: BTreeMap<String, Figures>,
    /// By `{site}/{device}/{camera}`.
    pub cameras: BTreeMap<String, CameraFigures>,
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// When `action` first appears in the timeline (at or before `at`).
fn first(case: &Case, at: i64, is: impl Fn(&Action) -> bool) -> Option<i64> {
    case.timeline
        .iter()
        .find(|e| e.at_ms <= at && is(&e.action))
        .map(|e| e.at_ms)
}

impl Figures {
    fn count(&mut self, c: &Case, at: i64, g: &Governance) {
        self.registered += 1;
        let handled = first(c, at, |a| matches!(a, Action::ReportHandled { .. })).is_some();
        let on_time = c.handled_on_time == Some(true);
        let closed =
            c.state == State::Closed && first(c, at, |a| matches!(a, Action::Close)).is_some();
        if handled {
            self.handled += 1;
            if on_time {
                self.handled_on_time += 1;
            } else {
                self.overdue += 1;
            }
        } else {
            // Handling runs (or stands suspended) with its deadline: past it at `at`?
            let handling = matches!(c.state, State::Dispatched | State::Handling)
                || (c.state == State::Suspended
                    && matches!(c.suspended_from, Some(State::Dispatched | State::Handling)));
            let late = handling
                && c.clock
                    .as_ref()
                    .and_then(|k| k.deadline(&g.calendar))
                    .is_some_and(|d| d < at);
            if late {
                self.overdue_unhandled += 1;
                self.overdue += 1;
            }
        }
        if closed {
            self.closed += 1;
            if on_time {
                self.closed_on_time += 1;
            }
            if c.reworked() {
                self.reworked += 1;
            }
        }
    }

    fn finish(&mut self, w: &Weights) {
        self.should_close = self.handled + self.overdue_unhandled;
        self.close_rate = ratio(self.closed, self.should_close);
        self.on_time_close_rate = ratio(self.closed_on_time, self.should_close);
        self.handle_rate = ratio(self.handled, self.should_close);
        self.on_time_handle_rate = ratio(self.handled_on_time, self.should_close);
        let base = match w.rework_rate_base {
            ReworkBase::ShouldClose => self.should_close,
            ReworkBase::Registered => self.registered,
        };
        self.rework_rate = ratio(self.reworked, base);
        self.registered_score = w
            .registered_band
            .iter()
            .find(|b| b.max.is_none_or(|m| self.registered <= m))
            .map_or(0.0, |b| b.score);
        let ws = &w.weights;
        let score = self.registered_score / w.band_max_score * ws.registered
            + self.close_rate.unwrap_or(0.0) * ws.closed
            + self.on_time_handle_rate.unwrap_or(0.0) * ws.on_time
            + self.rework_rate.map_or(0.0, |r| 1.0 - r) * ws.non_rework;
        // Two decimals, as reports print it.
        self.score = (score * 10_000.0).round() / 100.0;
    }
}

/// Evaluates `cases` registered in `[from, to)`, counting what happened up to `at`.
pub fn evaluate<'a>(
    cases: impl IntoIterator<Item = &'a Case>,
    from: i64,
    to: i64,
    at: i64,
    g: &Governance,
) -> Report {
    let mut departments: BTreeMap<String, Figures> = BTreeMap::new();
    let mut towns: BTreeMap<String, Figures> = BTreeMap::new();
    let mut cameras: BTreeMap<String, CameraFigures> = BTreeMap::new();
    for c in cases {
        // Cameras: decisions on video cases reported in the period.
        if c.source == Source::VideoAi && (from..to).contains(&c.created_ms) {
            if let Some(cam) = &c.camera {
                let registered = first(c, at, |a| matches!(a, Action::Register)).is_some();
                let fp = first(c, at, |a| {
                    matches!(
                        a,
                        Action::Reject {
                            reason: RejectReason::FalsePositive
                        }
                    )
                })
                .is_some();
                let rejected = first(c, at, |a| matches!(a, Action::Reject { .. })).is_some();
                if registered || rejected {
                    let f = cameras.entry(cam.clone()).or_insert(CameraFigures {
                        decided: 0,
                        false_positives: 0,
                        precision: None,
                    });
                    f.decided += 1;
                    f.false_positives += u64::from(fp);
                }
            }
        }
        let Some(registered_at) = first(c, at, |a| matches!(a, Action::Register)) else {
            continue;
        };
        if !(from..to).contains(&registered_at) {
            continue;
        }
        if let Some(dep) = &c.department {
            departments.entry(dep.clone()).or_default().count(c, at, g);
            if let Some(town) = &c.place.town {
                towns.entry(town.clone()).or_default().count(c, at, g);
            }
        }
    }
    for f in departments.values_mut().chain(towns.values_mut()) {
        f.finish(&g.evaluation);
    }
    for f in cameras.values_mut() {
        f.precision = ratio(f.decided - f.false_positives, f.decided);
    }
    let mut ranking: Vec<String> = departments.keys().cloned().collect();
    ranking.sort_by(|a, b| {
        departments[b]
            .score
            .total_cmp(&departments[a].score)
            .then_with(|| a.cmp(b))
    });
    Report {
        from_ms: from,
        to_ms: to,
        at_ms: at,
        departments,
        ranking,
        towns,
        cameras,
    }
}

/// The departments' figures as CSV (a header, then a row per department, best first).
pub fn departments_csv(r: &Report) -> String {
    let rate = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.4}"));
    let mut out = String::from(
        "department,registered,handled,handled_on_time,overdue_unhandled,should_close,closed,\
         closed_on_time,reworked,overdue,close_rate,on_time_close_rate,handle_rate,\
         on_time_handle_rate,rework_rate,registered_score,score\n",
    );
    for d in &r.ranking {
        let f = &r.departments[d];
        out.push_str(&format!(
            "{d},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.2}\n",
            f.registered,
            f.handled,
            f.handled_on_time,
            f.overdue_unhandled,
            f.should_close,
            f.closed,
            f.closed_on_time,
            f.reworked,
            f.overdue,
            rate(f.close_rate),
            rate(f.on_time_close_rate),
            rate(f.handle_rate),
            rate(f.on_time_handle_rate),
            rate(f.rework_rate),
            f.registered_score,
            f.score
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::calendar::tests::bj;
    use super::super::lifecycle::{Actor, NewCase, Place, Role};
    use super::*;

    fn who(role: Role, dep: Option<&str>) -> Actor {
        Actor {
            id: format!("{role:?}").to_lowercase(),
            role,
            department: dep.map(str::to_string),
        }
    }

    /// A case of `category` reported at Mon 2026-09-21 08:50 by `camera` (video) or an
    /// inspector, then `script`: (time, role, department of the actor, action).
    fn case(
        g: &Governance,
        n: u32,
        category: &str,
        camera: Option<&str>,
        script: &[(&str, Role, Option<&str>, Action)],
    ) -> Case {
        let mut c = Case::report(
            NewCase {
                id: format!("case-{n:02}"),
                source: if camera.is_some() {
                    Source::VideoAi
                } else {
                    Source::Inspector
                },
                category: category.into(),
                place: Place {
                    town: Some(
                        if n.is_multiple_of(2) {
                            "tiantang"
                        } else {
                            "laibang"
                        }
                        .into(),
                    ),
                    ..Place::default()
                },
                evidence: vec![],
                camera: camera.map(str::to_string),
            },
            Actor::system(),
            bj("2026-09-21 08:50"),
            g,
        )
        .unwrap();
        for (at, role, dep, action) in script {
            c.apply(&who(*role, *dep), action.clone(), "", None, bj(at), g)
                .unwrap_or_else(|e| panic!("case {n} {action:?} at {at}: {e}"));
        }
        c
    }

    /// Registered and dispatched to `dep` at `at`.
    fn sent(
        at: &'static str,
        dep: &'static str,
    ) -> Vec<(&'static str, Role, Option<&'static str>, Action)> {
        vec![
            (at, Role::Operator, None, Action::Register),
            (
                at,
                Role::Operator,
                None,
                Action::Dispatch {
                    department: Some(dep.into()),
                },
            ),
        ]
    }

    fn then(
        mut v: Vec<(&'static str, Role, Option<&'static str>, Action)>,
        more: &[(&'static str, Role, Option<&'static str>, Action)],
    ) -> Vec<(&'static str, Role, Option<&'static str>, Action)> {
        v.extend_from_slice(more);
        v
    }

    /// 21 cases over urban management (UM: exposed garbage, 4 working hours), housing (HS:
    /// construction noise, 2 working hours) and water (WA: road ponding, 4 working hours), all
    /// in the week of Mon 2026-09-21, evaluated at Tue 12:00. Working time 08–12, 14–18.
    #[test]
    fn figures_equal_a_hand_computed_week() {
        let g = Governance::built_in().unwrap();
        let (um, hs, wa) = ("urban-mgmt", "housing", "water");
        let handled = |at, dep| {
            (
                at,
                Role::Handler,
                Some(dep),
                Action::ReportHandled { photos: vec![] },
            )
        };
        let close = |at| (at, Role::Operator, None, Action::Close);
        let rework = |at| (at, Role::Operator, None, Action::Rework);
        let mon =
            |t: &str| -> &'static str { Box::leak(format!("2026-09-21 {t}").into_boxed_str()) };
        let cases = vec![
            // UM, dispatched Mon 09:00: deadline Mon 15:00.
            // 1: handled 10:00, closed — on time.
            case(
                &g,
                1,
                "exposed-garbage",
                Some("yuexi/gw-01/c1"),
                &then(
                    sent(mon("09:00"), um),
                    &[handled(mon("10:00"), um), close(mon("10:30"))],
                ),
            ),
            // 2: handled 11:00, closed — on time.
            case(
                &g,
                2,
                "exposed-garbage",
                Some("yuexi/gw-01/c1"),
                &then(
                    sent(mon("09:00"), um),
                    &[handled(mon("11:00"), um), close(mon("11:30"))],
                ),
            ),
            // 3: handled 16:00 — late; closed.
            case(
                &g,
                3,
                "exposed-garbage",
                None,
                &then(
                    sent(mon("09:00"), um),
                    &[handled(mon("16:00"), um), close(mon("16:30"))],
                ),
            ),
            // 4: handled, 返工 at 10:30 (new deadline 16:30), handled 11:00, closed — on time,
            // reworked.
            case(
                &g,
                4,
                "exposed-garbage",
                None,
                &then(
                    sent(mon("09:00"), um),
                    &[
                        handled(mon("10:00"), um),
                        rework(mon("10:30")),
                        handled(mon("11:00"), um),
                        close(mon("11:30")),
                    ],
                ),
            ),
            // 5: never handled: overdue at Tue 12:00.
            case(&g, 5, "exposed-garbage", None, &sent(mon("09:00"), um)),
            // 6: suspended at 10:00: its clock stands, not overdue.
            case(
                &g,
                6,
                "exposed-garbage",
                None,
                &then(
                    sent(mon("09:00"), um),
                    &[(mon("10:00"), Role::Supervisor, None, Action::Suspend)],
                ),
            ),
            // 7: dispatched Tue 09:00 (deadline Tue 15:00): inside its limit at Tue 12:00.
            case(
                &g,
                7,
                "exposed-garbage",
                None,
                &sent("2026-09-22 09:00", um),
            ),
            // 8: a camera's false alarm, rejected at 上报: no department.
            case(
                &g,
                8,
                "exposed-garbage",
                Some("yuexi/gw-01/c1"),
                &[(
                    mon("09:00"),
                    Role::Operator,
                    None,
                    Action::Reject {
                        reason: RejectReason::FalsePositive,
                    },
                )],
            ),
            // HS, dispatched Mon 09:00: deadline Mon 11:00.
            // 9: handled 10:00, closed — on time.
            case(
                &g,
                9,
                "construction-noise",
                None,
                &then(
                    sent(mon("09:00"), hs),
                    &[handled(mon("10:00"), hs), close(mon("10:30"))],
                ),
            ),
            // 10: handled 11:30 — late; not closed yet.
            case(
                &g,
                10,
                "construction-noise",
                None,
                &then(sent(mon("09:00"), hs), &[handled(mon("11:30"), hs)]),
            ),
            // 11: handled 14:30 — late; closed.
            case(
                &g,
                11,
                "construction-noise",
                None,
                &then(
                    sent(mon("09:00"), hs),
                    &[handled(mon("14:30"), hs), close(mon("15:00"))],
                ),
            ),
            // 12: 2 more working hours approved (deadline 15:00), handled 14:30 — on time; closed.
            case(
                &g,
                12,
                "construction-noise",
                None,
                &then(
                    sent(mon("09:00"), hs),
                    &[
                        (
                            mon("10:00"),
                            Role::Handler,
                            Some(hs),
                            Action::RequestExtension { value: 2 },
                        ),
                        (
                            mon("10:05"),
                            Role::Supervisor,
                            None,
                            Action::ApproveExtension,
                        ),
                        handled(mon("14:30"), hs),
                        close(mon("15:00")),
                    ],
                ),
            ),
            // 13: never handled: overdue.
            case(&g, 13, "construction-noise", None, &sent(mon("09:00"), hs)),
            // 14: housing returns it (回退) at 09:30; dispatched to water at 09:40 (deadline
            // 11:40), handled 11:00, closed — counts for water, on time.
            case(
                &g,
                14,
                "construction-noise",
                None,
                &then(
                    sent(mon("09:00"), hs),
                    &[
                        (mon("09:30"), Role::Handler, Some(hs), Action::Return),
                        (
                            mon("09:40"),
                            Role::Operator,
                            None,
                            Action::Dispatch {
                                department: Some(wa.into()),
                            },
                        ),
                        handled(mon("11:00"), wa),
                        close(mon("11:30")),
                    ],
                ),
            ),
            // WA, dispatched Mon 09:00: deadline Mon 15:00.
            // 15: handled 10:00, closed — on time.
            case(
                &g,
                15,
                "road-ponding",
                Some("yuexi/gw-02/c2"),
                &then(
                    sent(mon("09:00"), wa),
                    &[handled(mon("10:00"), wa), close(mon("10:30"))],
                ),
            ),
            // 16: handled, 返工 at 10:30 (deadline 16:30), handled 16:50 — late; closed,
            // reworked.
            case(
                &g,
                16,
                "road-ponding",
                None,
                &then(
                    sent(mon("09:00"), wa),
                    &[
                        handled(mon("10:00"), wa),
                        rework(mon("10:30")),
                        handled(mon("16:50"), wa),
                        close(mon("17:00")),
                    ],
                ),
            ),
            // 17: suspended 09:30–Tue 09:00: 3.5 h left from Tue 09:00 → deadline Tue 14:30.
            case(
                &g,
                17,
                "road-ponding",
                None,
                &then(
                    sent(mon("09:00"), wa),
                    &[
                        (mon("09:30"), Role::Supervisor, None, Action::Suspend),
                        ("2026-09-22 09:00", Role::Supervisor, None, Action::Resume),
                    ],
                ),
            ),
            // 18: never handled: overdue.
            case(&g, 18, "road-ponding", None, &sent(mon("09:00"), wa)),
            // 19: handled 14:00 — on time; being verified.
            case(
                &g,
                19,
                "road-ponding",
                None,
                &then(sent(mon("09:00"), wa), &[handled(mon("14:00"), wa)]),
            ),
            // 20: rejected as a duplicate (not a false alarm): camera c2 decided, no department.
            case(
                &g,
                20,
                "road-ponding",
                Some("yuexi/gw-02/c2"),
                &[(
                    mon("09:00"),
                    Role::Operator,
                    None,
                    Action::Reject {
                        reason: RejectReason::Duplicate,
                    },
                )],
            ),
            // 21: registered, never dispatched: no department.
            case(
                &g,
                21,
                "road-ponding",
                None,
                &[(mon("09:00"), Role::Operator, None, Action::Register)],
            ),
        ];
        let r = evaluate(
            &cases,
            bj("2026-09-21 00:00"),
            bj("2026-09-28 00:00"),
            bj("2026-09-22 12:00"),
            &g,
        );
        let want = |registered,
                    handled,
                    handled_on_time,
                    overdue_unhandled,
                    closed,
                    closed_on_time,
                    reworked,
                    overdue,
                    score: f64| {
            (
                registered,
                handled,
                handled_on_time,
                overdue_unhandled,
                closed,
                closed_on_time,
                reworked,
                overdue,
                score,
            )
        };
        let got = |d: &str| {
            let f = &r.departments[d];
            (
                f.registered,
                f.handled,
                f.handled_on_time,
                f.overdue_unhandled,
                f.closed,
                f.closed_on_time,
                f.reworked,
                f.overdue,
                f.score,
            )
        };
        // UM: 立案 7 (1–7); 处置 4 (1–4), 按期 3 (1, 2, 4); 超期未处置 1 (5) → 应结案 5;
        // 结案 4, 按期结案 3, 返工 1 (4), 超期 2 (3, 5).
        // 综合 = 100 × (10/10 × .1 + 4/5 × .3 + 3/5 × .3 + (1 − 1/5) × .3) = 76.
        assert_eq!(got(um), want(7, 4, 3, 1, 4, 3, 1, 2, 76.0));
        // HS: 立案 5 (9–13; 14 went to water); 处置 4 (9–12), 按期 2 (9, 12); 超期未处置 1 (13)
        // → 应结案 5; 结案 3 (9, 11, 12), 按期结案 2; 返工 0; 超期 3 (10, 11, 13).
        // 综合 = 100 × (.1 + 3/5 × .3 + 2/5 × .3 + 1 × .3) = 70.
        assert_eq!(got(hs), want(5, 4, 2, 1, 3, 2, 0, 3, 70.0));
        // WA: 立案 6 (14–19); 处置 4 (14, 15, 16, 19), 按期 3 (14, 15, 19); 超期未处置 1 (18)
        // → 应结案 5; 结案 3 (14, 15, 16), 按期结案 2; 返工 1 (16); 超期 2 (16, 18).
        // 综合 = 100 × (.1 + 3/5 × .3 + 3/5 × .3 + 4/5 × .3) = 70.
        assert_eq!(got(wa), want(6, 4, 3, 1, 3, 2, 1, 2, 70.0));
        let f = &r.departments[um];
        assert_eq!(
            (
                f.should_close,
                f.close_rate,
                f.on_time_close_rate,
                f.rework_rate
            ),
            (5, Some(0.8), Some(0.6), Some(0.2))
        );
        assert_eq!(r.ranking, [um, hs, wa]);
        assert_eq!(
            r.departments.len(),
            3,
            "rejected and undispatched cases have no department"
        );
        // Camera c1: 1, 2 registered, 8 a false alarm → 2/3; c2: 15 registered, 20 a duplicate.
        let cam = |c: &str| {
            let f = &r.cameras[c];
            (f.decided, f.false_positives, f.precision)
        };
        assert_eq!(cam("yuexi/gw-01/c1"), (3, 1, Some(2.0 / 3.0)));
        assert_eq!(cam("yuexi/gw-02/c2"), (2, 0, Some(1.0)));
        // Towns split the same cases: even numbers in tiantang.
        let t = &r.towns["tiantang"];
        assert_eq!(t.registered, 3 + 2 + 3, "2, 4, 6 · 10, 12 · 14, 16, 18");
        // Outside the period nothing counts.
        let before = evaluate(
            &cases,
            bj("2026-09-14 00:00"),
            bj("2026-09-21 00:00"),
            bj("2026-09-22 12:00"),
            &g,
        );
        assert!(before.departments.is_empty());
        let csv = departments_csv(&r);
        assert!(csv.starts_with("department,registered,"), "{csv}");
        assert!(
            csv.contains(
                "\nurban-mgmt,7,4,3,1,5,4,3,1,2,0.8000,0.6000,0.8000,0.6000,0.2000,10,76.00\n"
            ),
            "{csv}"
        );
        assert_eq!(csv.lines().count(), 4);
    }
}
