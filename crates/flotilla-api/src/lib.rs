//! The bodies Flotilla's APIs exchange, shared by the server and its
//! clients (the CLI, and the agent): a renamed field breaks a client's
//! build instead of failing at run time.
//!
//! Architecture invariant: types and their (de)serialisation only — no
//! I/O, no validation (services validate), no HTTP.

#![warn(unreachable_pub)]

pub mod connectors;
pub mod fleet;
pub mod management;
pub mod tasks;
