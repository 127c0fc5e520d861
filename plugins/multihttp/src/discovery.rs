//! Finding the server that answers: every URL is probed with HEAD in its
//! own thread at once, so a pool with dozens of dead hosts (refused or
//! silently dropping SYNs) costs one `connect-timeout`, not one per host.
//!
//! Only ever called from request threads (after nbdkit forked), never
//! from `config`: threads started before nbdkit daemonizes would vanish.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::reply::{ProbeError, ServerInfo};
use crate::transport::Transport;

/// The outcome of one discovery round.
pub struct Found {
    pub index: usize,
    pub info: ServerInfo,
}

/// Why each URL could not be used, for the "no server" message.
pub struct NotFound {
    pub reasons: Vec<(usize, String)>,
}

impl NotFound {
    pub fn describe(&self, urls: &[String]) -> String {
        self.reasons
            .iter()
            .map(|(i, why)| format!("{}: {why}", urls[*i]))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Probes all `servers` (URL indexes `0..servers`) in parallel and returns the first usable server,
/// waiting at most `limit`. Servers in `avoid` (those that just failed
/// this request) are used only when no other server answered by the
/// time every probe finished or `limit` passed; `skip` (the server the
/// stall watch wants to leave) is not probed at all. `on_probe` sees
/// every probe result that arrives in time.
pub fn discover(
    transport: &Arc<Transport>,
    servers: usize,
    expected_size: Option<u64>,
    avoid: &HashSet<usize>,
    skip: Option<usize>,
    limit: Duration,
    on_probe: &dyn Fn(usize, &Result<ServerInfo, ProbeError>),
) -> Result<Found, NotFound> {
    let deadline = Instant::now() + limit;
    let (tx, rx) = mpsc::channel();
    let mut reasons = Vec::new();
    let mut pending = 0usize;
    for index in (0..servers).filter(|&i| Some(i) != skip) {
        let (tx, transport) = (tx.clone(), Arc::clone(transport));
        // Detached: a probe stuck on a blackholed host finishes on its own
        // after connect-timeout; nobody waits for it longer than `limit`.
        let spawned = thread::Builder::new()
            .name(format!("multihttp-probe-{index}"))
            .spawn(move || {
                let result = transport.probe(index, expected_size);
                let _ = tx.send((index, result));
            });
        match spawned {
            Ok(_) => pending += 1,
            Err(e) => reasons.push((index, format!("could not start a probe thread: {e}"))),
        }
    }
    drop(tx);
    let mut fallback: Option<Found> = None;
    while pending > 0 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok((index, result)) => {
                pending -= 1;
                on_probe(index, &result);
                match result {
                    Ok(info) if !avoid.contains(&index) => return Ok(Found { index, info }),
                    Ok(info) => {
                        fallback.get_or_insert(Found { index, info });
                    }
                    Err(why) => reasons.push((index, why.to_string())),
                }
            }
            Err(_) => break,
        }
    }
    if let Some(found) = fallback {
        return Ok(found);
    }
    let answered: HashSet<usize> = reasons.iter().map(|(i, _)| *i).collect();
    for index in (0..servers).filter(|i| !answered.contains(i) && Some(*i) != skip) {
        reasons.push((index, format!("no answer within {limit:?}")));
    }
    reasons.sort_by_key(|(i, _)| *i);
    Err(NotFound { reasons })
}
