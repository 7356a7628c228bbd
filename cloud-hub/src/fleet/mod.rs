//! The intelligent hub (智慧中枢): configuration managed centrally for the fleet of edge agents.
//!
//! - [`config`]: each device's desired camera settings (versioned, checked with the agents' own
//!   validator from `csb_wire::rules` before anything is sent), pushed over the command channel
//!   until the agent answers, and what each agent applied or refused and why.
//! - [`rollout`]: a warehouse model to many devices — a canary, then batches, each judged by
//!   the agents' answers and a soak of their statuses ([`health`]), failures rolled back.

pub mod config;
pub mod groups;
pub mod health;
pub mod models;
pub mod rollout;

use csb_wire::Command;

/// Hands a command to ingest to sign and publish (implemented in `lib.rs`).
pub trait Commands: Send + Sync + 'static {
    /// Never waits: `false` when it cannot be handed on now (it is sent again later).
    fn send(&self, command: &Command) -> bool;
}
