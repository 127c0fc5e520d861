//! The stall watch's bookkeeping: which request each nbdkit thread is
//! running, on which server choice (epoch), and since when.
//!
//! Why: a server that stops answering without closing its connections
//! (SIGSTOP, a blackholed host, a disk that hangs) used to be left only
//! after `io-timeout` (30 s), while xapi gives a redo-log write 2 s before
//! it declares the device dead. The watch thread (`Cluster::watch`) looks
//! at these records every [`TICK`]: once a request has waited longer than
//! its patience (`stall-timeout`, plus time for its payload), the other
//! servers are probed; when one can really serve the disk, the cluster
//! switches to it and every request still waiting on the old server is
//! aborted (its socket shut down, see `http_client::abort`) and retried
//! on the new one. When no other server can serve, nothing is aborted:
//! the requests keep waiting for the only server that has the disk.
//!
//! Cost per request: two uncontended lock/unlock pairs here and three in
//! the [`Abort`]; the thread's record is made once (thread-local).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http_client::abort::Abort;
use lock_ext::LockIgnoringPoison;

/// How often the watch thread looks at the running requests.
pub const TICK: Duration = Duration::from_millis(50);
/// Least time between two probe rounds while requests stay stalled, so a
/// server that becomes able to serve (DRBD promoted it) is found fast
/// without probing in a tight loop.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Payload rate a request is allowed on top of `stall-timeout` before it
/// counts as stalled (a 1 MiB write: +16 ms; 32 MiB: +0.5 s).
pub const STALL_RATE: u64 = 64 << 20;

/// One thread's current request.
#[derive(Default)]
pub struct Watch {
    pub abort: Abort,
    /// A single assignment each time: valid after a panic (so its lock
    /// ignores poisoning).
    running: Mutex<Option<Running>>,
}

/// A request in progress on one server choice.
#[derive(Clone, Copy, Debug)]
pub struct Running {
    /// Its number in [`Watch::abort`], to abort this request and no later one.
    pub request: u64,
    /// The server choice it runs on (`Active`'s epoch).
    pub epoch: u64,
    /// The NBD connection it serves (`Client`'s generation).
    pub client: u64,
    pub started: Instant,
    /// When it counts as stalled.
    pub stalls_at: Instant,
}

impl Watch {
    /// An attempt of NBD connection `client` on server choice `epoch`
    /// starts; it stalls after `patience`.
    pub fn begin(&self, epoch: u64, client: u64, patience: Duration) {
        let request = self.abort.begin();
        let started = Instant::now();
        *self.running.lock_ignoring_poison() = Some(Running {
            request,
            epoch,
            client,
            started,
            stalls_at: started + patience,
        });
    }

    /// The attempt is over (whatever its outcome).
    pub fn end(&self) {
        *self.running.lock_ignoring_poison() = None;
    }

    pub fn running(&self) -> Option<Running> {
        *self.running.lock_ignoring_poison()
    }
}

/// How long a request moving `bytes` may wait before it counts as stalled.
pub fn patience(stall_timeout: Duration, bytes: u64) -> Duration {
    stall_timeout + Duration::from_secs_f64(bytes as f64 / STALL_RATE as f64)
}

/// Every thread's [`Watch`] for one cluster.
pub struct Watches {
    /// Tells clusters apart in the thread-local (tests make several).
    id: usize,
    all: Mutex<Vec<Weak<Watch>>>,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's watch, and the [`Watches`] it is registered with.
    static MINE: RefCell<Option<(usize, Arc<Watch>)>> = const { RefCell::new(None) };
}

impl Default for Watches {
    fn default() -> Self {
        Watches {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            all: Mutex::new(Vec::new()),
        }
    }
}

impl Watches {
    /// The calling thread's watch, registered on first use. It goes when
    /// the thread ends (nbdkit ends a connection's threads with it).
    pub fn mine(&self) -> Arc<Watch> {
        MINE.with(|mine| {
            let mut mine = mine.borrow_mut();
            match &*mine {
                Some((id, watch)) if *id == self.id => Arc::clone(watch),
                _ => {
                    let watch = Arc::new(Watch::default());
                    self.all.lock_ignoring_poison().push(Arc::downgrade(&watch));
                    *mine = Some((self.id, Arc::clone(&watch)));
                    watch
                }
            }
        })
    }

    /// The requests running now, each with its watch; forgets the watches
    /// of threads that ended.
    pub fn running(&self) -> Vec<(Arc<Watch>, Running)> {
        let mut all = self.all.lock_ignoring_poison();
        all.retain(|weak| weak.strong_count() > 0);
        all.iter()
            .filter_map(Weak::upgrade)
            .filter_map(|watch| watch.running().map(|running| (watch, running)))
            .collect()
    }

    /// Aborts every running request of an NBD connection older than
    /// `client` (see `clients.rs`); returns how many.
    pub fn abort_clients_before(&self, client: u64) -> usize {
        self.running()
            .into_iter()
            .filter(|(_, running)| running.client < client)
            .filter(|(watch, running)| watch.abort.abort(running.request))
            .count()
    }

    /// Aborts every running request on server choice `epoch`; returns how many.
    pub fn abort_epoch(&self, epoch: u64) -> usize {
        self.running()
            .into_iter()
            .filter(|(_, running)| running.epoch == epoch)
            .filter(|(watch, running)| watch.abort.abort(running.request))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_has_its_watch_and_running_requests_are_listed() {
        let watches = Arc::new(Watches::default());
        let mine = watches.mine();
        assert!(Arc::ptr_eq(&mine, &watches.mine()), "one watch per thread");
        mine.begin(7, 1, Duration::from_millis(500));
        let other = {
            let watches = Arc::clone(&watches);
            std::thread::spawn(move || {
                let watch = watches.mine();
                watch.begin(8, 2, Duration::ZERO);
                watch
            })
            .join()
            .unwrap()
        };
        // The other thread ended: its watch lives on only through `other`.
        let epochs: Vec<u64> = watches.running().iter().map(|(_, r)| r.epoch).collect();
        assert_eq!(epochs.len(), 2, "{epochs:?}");
        assert_eq!(watches.abort_clients_before(1), 0);
        assert_eq!(watches.abort_epoch(8), 1);
        assert!(other.abort.is_aborted() && !mine.abort.is_aborted());
        assert_eq!(watches.abort_clients_before(2), 1, "connection 1's request");
        assert!(mine.abort.is_aborted());
        drop(other);
        mine.end();
        assert!(watches.running().is_empty());
        assert_eq!(
            watches.all.lock_ignoring_poison().len(),
            1,
            "the ended thread's watch is forgotten"
        );
    }

    #[test]
    fn patience_grows_with_the_payload() {
        let base = Duration::from_millis(500);
        assert_eq!(patience(base, 0), base);
        assert_eq!(patience(base, STALL_RATE), base + Duration::from_secs(1));
    }
}
