//! What every connection shares: the settings requests depend on, the
//! disk once held, the live policy and TLS configuration, and the
//! bookkeeping of connections, memory and counters. One `State` per
//! server, behind an `Arc`; its parts synchronise themselves.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use lock_ext::LockIgnoringPoison;

use crate::budget::Budget;
use crate::disk::Disk;
use crate::idle::IdleConnections;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicySources};
use crate::tls::ServerTls;

/// Settings from the command line that requests depend on.
#[derive(Debug)]
pub struct Config {
    pub readonly: bool,
    /// Where the access policy comes from (re-read on SIGHUP).
    pub policy_sources: PolicySources,
    pub max_request_size: u64,
    pub idle_timeout: Duration,
    pub workers: usize,
    pub max_connections_per_peer: usize,
}

/// What every connection shares.
pub struct State {
    pub config: Config,
    /// Set once the disk is held; until then every request gets 503.
    pub disk: OnceLock<Disk>,
    /// Who may use the server now: allow/deny lists and credentials.
    pub policy: Live<Policy>,
    /// Connections being served right now.
    pub active: AtomicUsize,
    /// Of those, how many each peer address holds.
    pub peers: PeerCounts,
    /// Memory held by write bodies being received, server-wide.
    pub bodies: Budget,
    /// Connections waiting for their next request.
    pub idle: IdleConnections,
    /// Request counters, for `--metrics-listen`.
    pub metrics: Metrics,
    /// `--tls-cert`: the port speaks HTTPS only.
    pub tls: Option<ServerTls>,
}

/// Connections served per peer address (kept by `admission.rs`).
#[derive(Debug, Default)]
pub struct PeerCounts(Mutex<HashMap<IpAddr, usize>>);

impl PeerCounts {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every change is one insert, update or remove: still consistent.
        self.0.lock_ignoring_poison()
    }
}
