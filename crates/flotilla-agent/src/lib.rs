//! The Flotilla agent.
//!
//! - [`state`]: its state directory — identity, last good policy, ack
//!   state — encrypted, written atomically, one agent per directory.
//! - [`client`]: the fleet protocol as an agent speaks it.
//! - [`run`]: enrol, then the check-in loop: apply a policy, persist it,
//!   then ack.

pub mod cli;
pub mod client;
pub mod run;
pub mod state;
