//! The servers of one disk as a whole: which one is in use (shared by all
//! NBD connections), and the failover loop every request runs in.
//!
//! A request runs on the current server; when that fails in a way another
//! server could fix, the server is dropped (once, by whichever request saw
//! it fail first), the servers are probed again in parallel, and the
//! request is retried — until it succeeds or `failover-window` has passed,
//! then it fails with EIO and the next request starts afresh.
//!
//! A server that hangs without failing is left by the stall watch
//! ([`Cluster::watch`], bookkeeping in `stall.rs`) as soon as another
//! server can serve, instead of after `io-timeout`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use http_client::abort::Abort;

use lock_ext::{ignore_poison, LockIgnoringPoison};
use tls_io::rustls::ClientConfig;

use crate::clients::{Client, Clients};
use crate::config::Config;
use crate::discovery::{self, Found, NotFound};
use crate::error::{Attempt, Error};
use crate::health::Health;
use crate::journal::{Backlog, ChangeRef, Journal, Recorded, Stale};
use crate::reply::{ProbeError, ServerInfo};
use crate::stall::{self, Watches};
use crate::transport::Transport;

/// First pause between rounds when no server answers; doubles each round.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between rounds, so a server coming back is found fast.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The server in use, and the epoch that tells one choice from the next.
#[derive(Clone, Copy, Debug)]
pub struct Active {
    pub index: usize,
    pub info: ServerInfo,
    epoch: u64,
}

/// Its locks ignore poisoning: a panic in another request (turned into
/// EIO by the guard) must not wedge every later request, and the data
/// under them stays valid (each is changed in one step).
pub struct Cluster {
    pub config: Config,
    urls: Arc<Vec<String>>,
    transport: Arc<Transport>,
    /// `device-size`, or the first server's size: fixed once known.
    size: OnceLock<u64>,
    active: Mutex<Option<Active>>,
    /// Serializes discovery: one probe round at a time, the others wait
    /// for its result instead of probing too.
    discovery: Mutex<()>,
    epoch: AtomicU64,
    /// The epoch of `active`, or 0 while there is none: read without the
    /// `active` lock by [`Self::record`] under the journal's lock, because
    /// `left` takes the journal's lock under `active`'s (one order only).
    in_use_epoch: AtomicU64,
    /// Index of the last server used, to log "switched from".
    last_index: Mutex<Option<usize>>,
    /// Servers already reported as having the wrong size.
    wrong_size_logged: Mutex<HashSet<usize>>,
    /// Whether the current outage (no server answers) was logged.
    outage_logged: AtomicBool,
    /// `writeback=true`: the changes acknowledged since the last flush,
    /// replayed on the next server after a failover.
    journal: Journal,
    /// A server was left while the journal was overflowed: some unflushed
    /// changes can be on no other server, and the next successful flush
    /// must still fail once (see `ops::flush`).
    unflushed_elsewhere: AtomicBool,
    /// Server in use, failovers and per-URL health, for `status-file=`.
    health: Health,
    /// What each request thread is waiting for, for the stall watch (and
    /// for `supersede=true`, which abandons older connections' requests).
    watches: Watches,
    /// The NBD connections, and which may still be served.
    clients: Clients,
    /// The stall watch thread, once started, and how to stop it.
    watcher: Mutex<Option<JoinHandle<()>>>,
    stop_watch: (Mutex<bool>, Condvar),
}

impl Cluster {
    /// `tls`: see [`Transport::new`].
    pub fn new(config: Config, tls: Option<Arc<ClientConfig>>) -> Cluster {
        let size = OnceLock::new();
        if let Some(s) = config.device_size {
            let _ = size.set(s);
        }
        let urls = Arc::new(config.urls.clone());
        let clients = Clients::new(config.supersede);
        let journal_size = config.journal_size;
        Cluster {
            health: Health::new(Arc::clone(&urls), config.status_file.clone()),
            urls,
            transport: Arc::new(Transport::new(&config, tls)),
            config,
            size,
            active: Mutex::new(None),
            discovery: Mutex::new(()),
            epoch: AtomicU64::new(0),
            in_use_epoch: AtomicU64::new(0),
            last_index: Mutex::new(None),
            wrong_size_logged: Mutex::new(HashSet::new()),
            outage_logged: AtomicBool::new(false),
            journal: Journal::new(journal_size),
            unflushed_elsewhere: AtomicBool::new(false),
            watches: Watches::default(),
            clients,
            watcher: Mutex::new(None),
            stop_watch: (Mutex::new(false), Condvar::new()),
        }
    }

    pub fn size(&self) -> Option<u64> {
        self.size.get().copied()
    }

    pub fn url(&self, active: &Active) -> &str {
        &self.urls[active.index]
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// A new NBD connection.
    pub fn client_opened(&self) -> Client {
        self.clients.opened()
    }

    pub fn supersedes(&self) -> bool {
        self.clients.enabled()
    }

    /// Before a change or flush of `client` is sent: with
    /// `supersede=true`, a connection newer than the last one that
    /// changed the disk takes over, and every request of the older
    /// connections still on the wire is abandoned now, before this one is
    /// sent (see `clients.rs`).
    pub fn take_over(&self, client: Client) {
        if self.clients.take_over(client) {
            let abandoned = self.watches.abort_clients_before(client.generation());
            // Without requests in flight there is nothing to tell (the
            // wrapper's readiness check is an older, idle connection).
            let level = if abandoned > 0 {
                log::Level::Error
            } else {
                log::Level::Debug
            };
            log::log!(
                level,
                "multihttp: NBD connection {} supersedes the older ones (supersede=true): \
                 {abandoned} of their requests abandoned, the others fail",
                client.generation()
            );
        }
    }

    /// The refusal of a request of a superseded connection.
    fn superseded(&self, client: Client, what: &dyn Fn() -> String) -> Option<Error> {
        self.clients.superseded(client).then(|| {
            Error::Unavailable(format!(
                "{} not sent: a newer NBD connection took over (supersede=true)",
                what()
            ))
        })
    }

    pub fn current(&self) -> Option<Active> {
        *self.active.lock_ignoring_poison()
    }

    /// Returns the current server, probing all servers (at most `limit`)
    /// when there is none.
    pub fn ensure(&self, avoid: &HashSet<usize>, limit: Duration) -> Result<Active, NotFound> {
        let _round = self.discovery.lock_ignoring_poison();
        // Another request may have found a server while we waited.
        if let Some(active) = self.current() {
            return Ok(active);
        }
        match self.probe(avoid, None, limit) {
            Ok(found) => {
                // Without device-size the first server fixes the size; a
                // later server of another size is refused by the probe.
                let size = *self.size.get_or_init(|| found.info.size);
                if size != found.info.size {
                    // Only possible if two probes raced before the size
                    // was fixed: refuse rather than mix disks.
                    return Err(NotFound {
                        reasons: vec![(
                            found.index,
                            format!("size {} is not {size}", found.info.size),
                        )],
                    });
                }
                self.adopt(&found).map_err(|why| NotFound {
                    reasons: vec![(found.index, why)],
                })
            }
            Err(not_found) => {
                // Probes that did not answer in time have no result yet.
                for (index, why) in &not_found.reasons {
                    self.health.failure(*index, why);
                }
                if !self.outage_logged.swap(true, Ordering::SeqCst) {
                    log::error!(
                        "multihttp: no server can serve the disk right now, will keep probing: {}",
                        not_found.describe(&self.urls)
                    );
                }
                Err(not_found)
            }
        }
    }

    /// Probes the servers in parallel ([`discovery::discover`]), noting
    /// each result in the health records.
    fn probe(
        &self,
        avoid: &HashSet<usize>,
        skip: Option<usize>,
        limit: Duration,
    ) -> Result<Found, NotFound> {
        let on_probe =
            |index: usize, result: &Result<ServerInfo, ProbeError>| self.note_probe(index, result);
        let size = self.size();
        discovery::discover(
            &self.transport,
            self.urls.len(),
            size,
            avoid,
            skip,
            limit,
            &on_probe,
        )
    }

    /// Health and the wrong-size log of one probe result.
    fn note_probe(&self, index: usize, result: &Result<ServerInfo, ProbeError>) {
        match result {
            Ok(_) => self.health.success(index),
            Err(why) => {
                if matches!(why, ProbeError::WrongSize { .. })
                    && self.wrong_size_logged.lock_ignoring_poison().insert(index)
                {
                    log::error!("multihttp: {}: {why}", self.urls[index]);
                }
                self.health.failure(index, &why.to_string());
            }
        }
    }

    /// Makes `found` the server in use (the caller holds `discovery`, and
    /// there is none in use): first replays the write-back journal on it,
    /// so no request sees it before it has every change acknowledged
    /// since the last flush. Fails if the replay does.
    fn adopt(&self, found: &Found) -> Result<Active, String> {
        let active = self.new_active(found);
        if let Backlog::Complete(changes) = self.journal.backlog() {
            if !changes.is_empty() {
                self.replay(&active, &changes)?;
            }
        }
        Self::set_active(
            &mut self.active.lock_ignoring_poison(),
            Some(active),
            &self.in_use_epoch,
        );
        self.announce(found);
        Ok(active)
    }

    /// Gives `active` the journal's `changes`, oldest first. Each runs
    /// under io-timeout; nothing else is sent to `active` meanwhile.
    fn replay(
        &self,
        active: &Active,
        changes: &[Arc<crate::journal::Change>],
    ) -> Result<(), String> {
        let started = Instant::now();
        let (_, bytes) = self.journal.size();
        let abort = Abort::new();
        for (n, change) in changes.iter().enumerate() {
            if let Err(failed) =
                crate::ops::apply(self, active, change.borrowed(), false, false, &abort)
            {
                let why = match failed {
                    Attempt::Failover(why) => why,
                    Attempt::Fatal(error) => error.to_string(),
                };
                let why = format!(
                    "replaying the write-back journal failed at change {} of {}: {why}",
                    n + 1,
                    changes.len()
                );
                log::error!("multihttp: {}: {why}", self.url(active));
                self.health.failure(active.index, &why);
                return Err(why);
            }
        }
        log::error!(
            "multihttp: replayed {} unflushed write-back change(s) ({bytes} bytes of journal) on {} in {} ms",
            changes.len(),
            self.url(active),
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// Changes the server in use, and `in_use_epoch` with it (SeqCst: a
    /// replay's backlog, taken after a server was left, sees every change
    /// [`Self::record`] accepted for it).
    fn set_active(active: &mut Option<Active>, value: Option<Active>, in_use_epoch: &AtomicU64) {
        *active = value;
        in_use_epoch.store(value.map_or(0, |a| a.epoch), Ordering::SeqCst);
    }

    /// A new server choice for `found`, with the next epoch.
    fn new_active(&self, found: &Found) -> Active {
        Active {
            index: found.index,
            info: found.info,
            epoch: self.epoch.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }

    /// Logs and records that `found` is now the server in use.
    fn announce(&self, found: &Found) {
        self.outage_logged.store(false, Ordering::SeqCst);
        self.health.server_chosen(found.index);
        let mut last = self.last_index.lock_ignoring_poison();
        let url = &self.urls[found.index];
        let failovers = self.health.failovers();
        log::debug!("multihttp: current server is now {url} (failovers so far: {failovers})");
        match *last {
            Some(previous) if previous != found.index => log::error!(
                "multihttp: switched from {} to {url} ({}; failovers so far: {failovers})",
                self.urls[previous],
                found.info.describe()
            ),
            Some(_) => log::error!(
                "multihttp: using {url} again ({}; failovers so far: {failovers})",
                found.info.describe()
            ),
            None => log::error!("multihttp: using {url} ({})", found.info.describe()),
        }
        *last = Some(found.index);
    }

    /// Drops `failed` as the current server, unless another request did
    /// already (then a newer server may be in use: keep it).
    fn drop_server(&self, failed: &Active, why: &str) {
        let mut active = self.active.lock_ignoring_poison();
        if active.is_some_and(|a| a.epoch == failed.epoch) {
            Self::set_active(&mut active, None, &self.in_use_epoch);
            self.left(failed, why);
        }
    }

    /// Records and logs leaving `failed` (the caller holds `active`).
    fn left(&self, failed: &Active, why: &str) {
        let failovers = self.health.server_left(failed.index, why);
        log::error!(
            "multihttp: leaving {}: {why}; looking for another server (failover {failovers})",
            self.url(failed)
        );
        log::debug!("multihttp: no current server (failovers so far: {failovers})");
        if !self.config.writeback {
            return;
        }
        if self.journal.is_overflowed() {
            self.unflushed_elsewhere.store(true, Ordering::SeqCst);
            log::error!(
                "multihttp: write-back changes acknowledged since the last flush were more \
                 than journal-size ({} bytes) keeps: those acknowledged by {} are durable only \
                 if that host did not crash, and the next flush fails",
                self.journal.limit(),
                self.url(failed)
            );
        } else {
            let (changes, bytes) = self.journal.size();
            if changes > 0 {
                log::debug!(
                    "multihttp: {changes} unflushed write-back change(s) ({bytes} bytes) \
                     to replay on the next server"
                );
            }
        }
    }

    /// Switches from `stalled` to `found` if `stalled` is still in use,
    /// then aborts every request still waiting on `stalled` (they are
    /// retried on `found`). Returns whether it switched.
    fn switch(&self, stalled: &Active, found: &Found, why: &str) -> bool {
        // Held until `found` is in use: the abandoned requests wait for it
        // in `ensure` instead of probing on their own.
        let _round = self.discovery.lock_ignoring_poison();
        {
            let mut active = self.active.lock_ignoring_poison();
            if !active.is_some_and(|a| a.epoch == stalled.epoch) {
                return false;
            }
            self.left(stalled, why);
            Self::set_active(&mut active, None, &self.in_use_epoch);
        }
        let aborted = self.watches.abort_epoch(stalled.epoch);
        log::debug!(
            "multihttp: {aborted} request(s) waiting on {} abandoned, to be retried",
            self.url(stalled)
        );
        // If this fails, the next request probes every server again.
        self.adopt(found).is_ok()
    }

    /// Starts the stall watch thread (once; call after nbdkit forked).
    pub fn start_watch(self: &Arc<Self>) {
        let mut watcher = self.watcher.lock_ignoring_poison();
        if watcher.is_some() {
            return;
        }
        let cluster = Arc::clone(self);
        match thread::Builder::new()
            .name("multihttp-stall-watch".into())
            .spawn(move || cluster.watch())
        {
            Ok(handle) => *watcher = Some(handle),
            // Requests still fail over after io-timeout without it.
            Err(e) => log::error!("multihttp: cannot start the stall watch thread: {e}"),
        }
    }

    /// Stops the stall watch thread and waits for it (nbdkit's unload:
    /// no thread may run the plugin's code once it is unloaded).
    pub fn stop_watch(&self) {
        let (stop, wake) = &self.stop_watch;
        *stop.lock_ignoring_poison() = true;
        wake.notify_all();
        if let Some(handle) = self.watcher.lock_ignoring_poison().take() {
            let _ = handle.join();
        }
    }

    /// The stall watch (see `stall.rs`): every TICK, aborts the requests
    /// still waiting on a server that was left, and when a request on the
    /// server in use has waited past its patience, probes the other
    /// servers (at most every PROBE_INTERVAL) and switches to one that
    /// can serve the disk.
    fn watch(&self) {
        let (stop, wake) = &self.stop_watch;
        let mut next_probe = Instant::now();
        loop {
            {
                let stopped = stop.lock_ignoring_poison();
                let (stopped, _) =
                    ignore_poison(
                        wake.wait_timeout_while(stopped, stall::TICK, |stopped| !*stopped),
                    );
                if *stopped {
                    return;
                }
            }
            let current = self.current();
            let now = Instant::now();
            let mut longest_stall: Option<Duration> = None;
            for (watch, running) in self.watches.running() {
                match current {
                    Some(active) if active.epoch == running.epoch => {
                        if now >= running.stalls_at {
                            let waited = now - running.started;
                            longest_stall = longest_stall.max(Some(waited));
                        }
                    }
                    // Its server was left: nothing it waits for will come.
                    _ => {
                        watch.abort.abort(running.request);
                    }
                }
            }
            let (Some(active), Some(waited)) = (current, longest_stall) else {
                continue;
            };
            if now < next_probe {
                continue;
            }
            next_probe = now + stall::PROBE_INTERVAL;
            // Short: a server that hangs too must not keep this round from
            // ending, so that one coming back (a restart) is found by the
            // next round, PROBE_INTERVAL later. Its probe thread still ends
            // on its own after connect-timeout.
            let limit = self.config.connect_timeout.min(self.config.stall_timeout);
            match self.probe(&HashSet::new(), Some(active.index), limit) {
                Ok(found) => {
                    let why = format!(
                        "a request has had no reply for {} ms while {} can serve the disk",
                        waited.as_millis(),
                        self.urls[found.index]
                    );
                    self.switch(&active, &found, &why);
                }
                Err(not_found) => log::debug!(
                    "multihttp: a request has had no reply for {} ms from {}, and no other \
                     server can serve: {}",
                    waited.as_millis(),
                    self.url(&active),
                    not_found.describe(&self.urls)
                ),
            }
        }
    }

    /// With `writeback=true`, records in the journal a change `active`
    /// acknowledged. If `active` was left meanwhile (while the change was
    /// in flight), the change may have missed the replay on the server now
    /// in use: the request is retried there (it was not acknowledged to the
    /// client yet, so repeating it is allowed).
    pub fn record(&self, active: &Active, change: ChangeRef<'_>) -> Result<(), Attempt> {
        if !self.config.writeback {
            return Ok(());
        }
        let still_current = || self.in_use_epoch.load(Ordering::SeqCst) == active.epoch;
        match self.journal.record(change, still_current) {
            Ok(Recorded::Kept) | Ok(Recorded::Dropped { now: false }) => Ok(()),
            Ok(Recorded::Dropped { now: true }) => {
                if self.journal.limit() > 0 {
                    log::error!(
                        "multihttp: the write-back journal is full (journal-size={} bytes): \
                         changes acknowledged from now until a flush cannot be replayed after \
                         a failover, which would make that flush fail; flush more often or \
                         raise journal-size",
                        self.journal.limit()
                    );
                }
                Ok(())
            }
            Err(Stale) => Err(Attempt::Failover(format!(
                "acknowledged by {} after it was left; retrying on the server in use",
                self.url(active)
            ))),
        }
    }

    /// Takes the "unflushed changes were on a server we left and are not
    /// in the journal" state, for the flush that must report it.
    pub fn take_unflushed_elsewhere(&self) -> bool {
        self.unflushed_elsewhere.swap(false, Ordering::SeqCst)
    }

    /// Runs `op` on the current server, failing over as needed. `what`
    /// names the request for logs and errors.
    /// `bytes`: the payload, which lengthens the request's patience
    /// before the stall watch counts it as stalled. `op` gets the request's
    /// [`Abort`], for every request it sends.
    pub fn run<T>(
        &self,
        client: Client,
        what: &dyn Fn() -> String,
        bytes: u64,
        mut op: impl FnMut(&Active, &Abort) -> Result<T, Attempt>,
    ) -> Result<T, Error> {
        let watch = self.watches.mine();
        let patience = stall::patience(self.config.stall_timeout, bytes);
        let window = self.config.failover_window;
        let deadline = Instant::now() + window;
        let mut avoid = HashSet::new();
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = String::new();
        for attempt in 1u32.. {
            if let Some(error) = self.superseded(client, what) {
                return Err(error);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            // The first round always gets a full probe, even with a
            // failover window of 0; later ones never outlast the window.
            let limit = if attempt == 1 {
                self.config.connect_timeout
            } else {
                self.config.connect_timeout.min(remaining)
            };
            let active = match self.current() {
                Some(active) => Some(active),
                None if !limit.is_zero() => match self.ensure(&avoid, limit) {
                    Ok(active) => Some(active),
                    Err(not_found) => {
                        last_error = not_found.describe(&self.urls);
                        None
                    }
                },
                None => None,
            };
            let failed_on_server = if let Some(active) = active {
                watch.begin(active.epoch, client.generation(), patience);
                // Looked at again once registered: a take-over either saw
                // this request running or is seen here.
                if let Some(error) = self.superseded(client, what) {
                    watch.end();
                    return Err(error);
                }
                let result = op(&active, &watch.abort);
                let abandoned = watch.abort.is_aborted();
                watch.end();
                // Abandoned for a newer connection, not for its server:
                // the server is not left.
                if abandoned && result.is_err() {
                    if let Some(error) = self.superseded(client, what) {
                        return Err(error);
                    }
                }
                let result = match result {
                    Err(Attempt::Failover(why)) if abandoned => Err(Attempt::Failover(format!(
                        "abandoned ({why}): the stall watch left this server for another"
                    ))),
                    other => other,
                };
                match result {
                    Ok(value) => {
                        self.health.success(active.index);
                        if attempt > 1 {
                            log::debug!("multihttp: {} succeeded on attempt {attempt}", what());
                        }
                        return Ok(value);
                    }
                    Err(Attempt::Fatal(error)) => return Err(error),
                    Err(Attempt::Failover(why)) => {
                        log::debug!(
                            "multihttp: {} failed on {}: {why}",
                            what(),
                            self.url(&active)
                        );
                        self.health.failure(active.index, &why);
                        self.drop_server(&active, &why);
                        avoid.insert(active.index);
                        last_error = format!("{}: {why}", self.url(&active));
                        true
                    }
                }
            } else {
                false
            };
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Straight to the next server after a first failure; after
            // that, back off so a flapping or absent cluster is not hammered.
            if !(failed_on_server && attempt == 1) {
                thread::sleep(backoff.min(deadline - now));
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        Err(Error::Unavailable(format!(
            "{} failed on every server for {:?} (failover-window); last error: {last_error}",
            what(),
            window
        )))
    }
}
