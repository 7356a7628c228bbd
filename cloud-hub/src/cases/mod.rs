//! Layer 4, cases: the governance workflows (立案 → 派遣 → 处置 → 反馈 → 核查 → 结案): their
//! configuration ([`config`]: categories, departments, routing, stage limits, calendar,
//! evaluation), working time ([`calendar`]), stage clocks with their traffic lights ([`sla`]),
//! the case with its checked transitions, timers and timeline ([`lifecycle`]), where cases
//! are kept ([`store`]: the `CaseStore` trait and its sled default), how rule events become
//! cases ([`intake`]), what a citizen's report carries and where its point lies in the county
//! ([`citizen`], for Open311) and the workflow at work in the hub ([`engine`]: intake from the
//! event log, transitions, the timer sweep) with its feed of durable changes ([`changes`], the
//! SSE change stream) and the departments' webhooks ([`webhook`]). Uses `platform` and below;
//! `http` serves it.

pub mod calendar;
pub mod changes;
pub mod citizen;
pub mod config;
pub mod engine;
pub mod evaluation;
pub mod intake;
pub mod lifecycle;
pub mod sla;
pub mod store;
pub mod webhook;
