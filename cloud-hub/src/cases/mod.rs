//! Layer 4, cases: the governance workflows (立案 → 派遣 → 处置 → 反馈 → 核查 → 结案) — so far
//! their configuration ([`config`]: categories, departments, routing, stage limits, calendar,
//! evaluation), working time ([`calendar`]), stage clocks with their traffic lights ([`sla`]),
//! the case with its checked transitions and timeline ([`lifecycle`]) and where cases are kept
//! ([`store`]: the `CaseStore` trait and its sled default). Uses `platform` and
//! below; `http` serves it.

pub mod calendar;
pub mod config;
pub mod lifecycle;
pub mod sla;
pub mod store;
