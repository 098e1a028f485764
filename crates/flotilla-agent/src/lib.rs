//! The Flotilla agent.
//!
//! - [`state`]: its state directory — identity, last good policy, ack
//!   state — encrypted, written atomically, one agent per directory.
//! - [`client`]: the fleet protocol as an agent speaks it.
//! - [`run`]: enrol, then the check-in loop: apply a policy, persist it,
//!   then ack; the supervisor runs its inputs.
//! - [`inputs`]: the supervisor and the inputs (`logfile`/`filestream`,
//!   `system/metrics`, `permission_verifier`), with their health.
//! - [`output`]: the `_bulk` shipper (per-item results, retries).
//! - [`checkpoint`]: where each log stream has got to, written atomically.

pub mod checkpoint;
pub mod cli;
pub mod client;
pub mod inputs;
pub mod output;
pub mod run;
pub mod state;
