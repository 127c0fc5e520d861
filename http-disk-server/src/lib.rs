//! The modules of `http-disk-server`, as a library so that they can be
//! exercised without a socket: `src/main.rs` only wires them into the
//! binary, and the request fuzzer (`fuzz/`, and its bounded replay in
//! `tests/request_fuzz.rs`) drives the HTTP head parser and the request
//! handlers directly. Nothing here is a stable API for other crates.

pub mod access;
pub mod admission;
pub mod auth;
pub mod budget;
pub mod cli;
pub mod connection;
pub mod disk;
pub mod drbd;
pub mod exposition;
pub mod handlers;
pub mod http;
pub mod idle;
pub mod live;
pub mod metrics;
pub mod metrics_listener;
pub mod policy;
pub mod poll;
pub mod reload;
pub mod reply;
pub mod server;
pub mod signals;
pub mod state;
pub mod tls;
