//! nbdkit plugin `multihttp`: one shared disk served by several
//! `http-disk-server`s (only the DRBD Primary's answers at a time), with
//! transparent failover between them.
//!
//! This file is only the nbdkit glue: every callback body runs under
//! [`plugin_glue::guard`] (a panic becomes EIO, never an abort) and calls
//! into the modules that do the work:
//! - [`keys`]: the table of keys (help text, man page, unknown-key error);
//! - [`config`]: keys' defaults and validation;
//! - [`transport`]: the HTTP requests the plugin sends, over the shared
//!   `http-client` crate (re-exported here as [`endpoint`]: a URL and its
//!   idle connections, [`connection`]: one keep-alive connection under a
//!   deadline, and [`response`]: reply heads);
//! - [`tls`]: the TLS client configuration of `https://` URLs;
//! - [`reply`]: which replies are trusted;
//! - [`discovery`]: parallel HEAD probes of all URLs;
//! - [`cluster`]: the shared server choice and the failover loop;
//! - [`health`]: server in use, failover count, per-URL health, and the
//!   `status-file=` that shows them;
//! - [`ops`]: NBD semantics by server generation;
//! - [`journal`]: write-back changes kept for replay after a failover;
//! - [`error`]: errors and their errno, in one place.

pub mod clients;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod discovery;
pub mod error;
pub mod health;
pub mod journal;
pub mod keys;
pub mod ops;
pub mod reply;
pub mod stall;
pub mod tls;
pub mod transport;

pub use http_client::{connection, endpoint, response};

#[cfg(not(test))]
mod plugin;
