//! nbdkit plugin `multihttp`: one shared disk served by several
//! `http-disk-server`s (only the DRBD Primary's answers at a time), with
//! transparent failover between them.
//!
//! This file is only the nbdkit glue: every callback body runs under
//! [`plugin_glue::guard`] (a panic becomes EIO, never an abort) and calls
//! into the modules that do the work:
//! - [`config`]: keys, defaults, validation, help text;
//! - [`transport`]: HTTP requests over keep-alive connections;
//! - [`reply`]: which replies are trusted;
//! - [`discovery`]: parallel HEAD probes of all URLs;
//! - [`cluster`]: the shared server choice and the failover loop;
//! - [`ops`]: NBD semantics by server generation;
//! - [`error`]: errors and their errno, in one place.

pub mod cluster;
pub mod config;
pub mod discovery;
pub mod error;
pub mod ops;
pub mod reply;
pub mod transport;

#[cfg(not(test))]
mod plugin;
