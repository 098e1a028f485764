//! End-to-end tests: the real `flotilla` binary, spoken to over HTTP and
//! through its CLI. One test binary (see Cargo.toml) to keep links few.

mod support;

mod agent;
mod cli;
mod console;
mod es;
mod fleet;
mod hostile;
mod inputs;
mod management;
mod operations;
mod overload;
mod packages;
mod server;
mod tasks;
mod verifier;
