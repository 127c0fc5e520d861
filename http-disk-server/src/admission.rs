//! Whether a newly accepted connection gets a worker: at most `--workers`
//! in all and at most `--max-connections-per-peer` per peer address.
//!
//! Without the per-peer cap, one client (already past `--allow` and the
//! credentials, or simply misbehaving) keeping enough requests in progress
//! could hold every worker and lock every other host out. At its cap, a
//! peer's own longest-idle connection makes room for its newcomer (its
//! client reconnects, as when idle.rs makes room server-wide); when all its
//! connections are busy with requests, the newcomer gets 503 and the other
//! peers keep their share.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::access::canonical;
use crate::metrics::RefusalReason;
use crate::state::State;

/// A connection's place, given back (both counts) when its worker ends,
/// also by panic, or when its worker could not be started.
pub struct Slot {
    state: Arc<State>,
    peer: IpAddr,
}

impl Slot {
    pub fn state(&self) -> &State {
        &self.state
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.state.peers.lock();
        if let Some(held) = counts.get_mut(&self.peer) {
            *held -= 1;
            if *held == 0 {
                counts.remove(&self.peer);
            }
        }
        self.state.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Admits a connection from `peer`, or says why not (for the metrics, the
/// 503 and the log). Called by the accept loop only, so nothing else adds to the
/// counts between the check and the increment.
pub fn admit(state: &Arc<State>, peer: IpAddr) -> Result<Slot, (RefusalReason, String)> {
    let peer = canonical(peer);
    let config = &state.config;
    let mut counts = state.peers.lock();
    let held = counts.get(&peer).copied().unwrap_or(0);
    if held >= config.max_connections_per_peer {
        // Its own idle connection's worker ends within moments; until then
        // this peer holds one more than its cap, as the server may hold one
        // more than --workers. No other client loses a connection.
        if !state.idle.close_longest_idle_of(peer) {
            return Err((
                RefusalReason::PeerCap,
                format!(
                    "{peer} already holds {held} connections, all busy with requests \
                     (--max-connections-per-peer {})",
                    config.max_connections_per_peer
                ),
            ));
        }
    } else if state.active.load(Ordering::SeqCst) >= config.workers
        && !state.idle.close_longest_idle()
    {
        // Every worker taken: the longest-idle connection makes room (its
        // worker ends within moments, so for that while one thread more
        // than --workers runs); only when all are busy does this one wait.
        return Err((
            RefusalReason::Busy,
            format!("all {} workers busy with requests", config.workers),
        ));
    }
    *counts.entry(peer).or_default() += 1;
    state.active.fetch_add(1, Ordering::SeqCst);
    Ok(Slot {
        state: Arc::clone(state),
        peer,
    })
}
