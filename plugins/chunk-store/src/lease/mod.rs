//! One writer at a time: the lease a disk's writer holds, for both
//! backends (sharded's lock file, s3's lease object).
//!
//! - **Taking it.** The first writable open takes the lease (read-only
//!   opens need none). A lease held by another owner is refused, naming
//!   it, unless that owner is known gone (its holder lock is free, or it
//!   ran on this host and its process is gone), its lease expired (and a
//!   short watch shows it is not being renewed, whatever the clocks say),
//!   or `force=true` breaks it. Every change of owner increments the
//!   lease's generation.
//! - **Keeping it.** A thread renews it every `duration / 6`. A renewal
//!   first reads the lease back: another owner, or no lease, means it was
//!   taken over, and from then on every write fails with EROFS (the
//!   client sees EPERM) instead of overwriting the new owner's data.
//! - **Every write checks it** ([`Lease::check`], called by [`Fenced`]
//!   before each backend mutation): a lease not confirmed for
//!   `duration / 4` (the renewal thread did not run: the process was
//!   stopped, the store unreachable) is read back before the write goes
//!   out. So a writer that was stopped and continued never writes on the
//!   strength of a confirmation older than that, and without `force=true`
//!   nobody takes the lease over before `duration` has passed.
//!
//! Errnos: EBUSY when another writer holds the lease (the writable open
//! fails), EROFS once this writer's lease was taken over.
//!
//! What a lease cannot do: a request already handed to the store (or a
//! syscall already started) when its process is stopped still completes
//! when it continues. Stores with conditional writes close that on the
//! lease itself (`If-Match`); chunk writes have no such condition.

mod fenced;
pub(crate) mod identity;
pub mod keys;
mod record;

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lock_ext::{ignore_poison, LockIgnoringPoison};

pub use fenced::{Fenced, LeaseKeeper};
pub use record::{LeaseRecord, Owner};

use crate::error::StoreError;

/// Stored lease versions: an ETag, or the content itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(pub String);

/// When a lease write may happen.
#[derive(Clone, Copy, Debug)]
pub enum Condition<'a> {
    /// Only if there is no lease yet.
    Absent,
    /// Only if the lease is still this version.
    Unchanged(&'a Version),
}

/// How a conditional lease write went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The condition did not hold: someone else changed the lease.
    Conflict,
}

/// Where a backend keeps its lease.
pub trait LeaseStore: Send + Sync {
    /// The disk, for messages (`/srv/vol`, `bucket/prefix`).
    fn location(&self) -> String;
    /// The stored lease and its version, `None` when there is none.
    fn read(&self) -> Result<Option<(Vec<u8>, Version)>, StoreError>;
    /// Stores `bytes` as the lease if `condition` holds, atomically where
    /// the store can; where it cannot, as close as it can get (and says
    /// so in its docs).
    fn write(&self, bytes: &[u8], condition: Condition<'_>) -> Result<Written, StoreError>;
    /// Removes the lease if it is still `version` (a clean release).
    fn remove(&self, version: &Version) -> Result<(), StoreError>;
    /// Takes the store's holder lock, if it has one (a lock the kernel
    /// frees when its process dies: sharded's flock). `Some(true)`: taken
    /// (or already ours), so any earlier owner is gone; `Some(false)`: a
    /// live process holds it; `None`: no such lock.
    fn try_hold(&self) -> Result<Option<bool>, StoreError> {
        Ok(None)
    }
}

/// `lease-time=` and `force=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// Take the lease whoever holds it.
    pub force: bool,
}

impl Default for LeaseSettings {
    fn default() -> LeaseSettings {
        LeaseSettings {
            duration: DEFAULT_DURATION,
            force: false,
        }
    }
}

pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);
/// Shortest `lease-time=`: renewals every `duration / 6` must fit in it
/// with a store round trip.
pub const MIN_DURATION: Duration = Duration::from_secs(2);
/// Lease writes that met a conflict are decided again at most this often.
const MAX_CONFLICTS: usize = 5;

fn erofs(what: String) -> StoreError {
    StoreError::new(libc::EROFS, what)
}

/// CLOCK_BOOTTIME: a monotonic clock that also counts time the machine was
/// suspended (std's `Instant` does not), so a suspended host does not come
/// back believing its lease still fresh.
fn boot_clock() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The lease while this process holds it.
#[derive(Debug)]
struct Held {
    record: LeaseRecord,
    /// [`boot_clock`] when the read that last confirmed it started.
    confirmed_at: Duration,
}

#[derive(Debug)]
struct State {
    held: Held,
    /// Set once the lease was taken over: why every write now fails.
    lost: Option<String>,
    stopping: bool,
    /// The last renewal that could not reach the store: when it started
    /// ([`boot_clock`]) and why it failed.
    unreachable: Option<(Duration, StoreError)>,
}

/// A held lease and its renewal thread. Its locks ignore poisoning: each
/// critical section reads, or assigns whole fields of, its state.
pub struct Lease {
    store: Arc<dyn LeaseStore>,
    settings: LeaseSettings,
    /// The token of the owner whose lease this one replaced, if it was
    /// readable: tells a write-back journal whether its writes are the
    /// last ones made to the disk.
    taken_from: Option<u64>,
    /// This holding's token: renewals keep the owner, so it never changes.
    token: u64,
    state: Mutex<State>,
    wake: Condvar,
    /// One renewal at a time (the thread's and writers' checks).
    renewing: Mutex<()>,
    renewer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("location", &self.store.location())
            .field("state", &*self.state.lock_ignoring_poison())
            .finish()
    }
}

impl Lease {
    /// Takes the lease of `store` for `owner` (see the module's rules) and
    /// starts renewing it.
    pub fn acquire(
        store: Arc<dyn LeaseStore>,
        settings: LeaseSettings,
        owner: Owner,
    ) -> Result<Arc<Lease>, StoreError> {
        let (held, taken_from) = take(&*store, &settings, owner)?;
        log::info!(
            "{}: lease taken, generation {}",
            store.location(),
            held.record.generation
        );
        let lease = Arc::new(Lease {
            store,
            settings,
            taken_from,
            token: held.record.owner.token,
            state: Mutex::new(State {
                held,
                lost: None,
                stopping: false,
                unreachable: None,
            }),
            wake: Condvar::new(),
            renewing: Mutex::new(()),
            renewer: Mutex::new(None),
        });
        let weak = Arc::downgrade(&lease);
        let handle = std::thread::Builder::new()
            .name("lease-renewal".into())
            .spawn(move || renew_until_stopped(weak))
            .map_err(|e| StoreError::new(libc::EIO, format!("starting the lease renewal: {e}")))?;
        *lease.renewer.lock_ignoring_poison() = Some(handle);
        Ok(lease)
    }

    /// Before each write: `Ok` while the lease is ours. A lease not
    /// confirmed for `duration / 4` is read back first.
    pub fn check(&self) -> Result<(), StoreError> {
        let age = {
            let state = self.state.lock_ignoring_poison();
            if let Some(why) = &state.lost {
                return Err(erofs(why.clone()));
            }
            boot_clock().saturating_sub(state.held.confirmed_at)
        };
        if age <= self.fresh_for() {
            return Ok(());
        }
        match self.renew_if_older_than(self.fresh_for()) {
            Ok(()) => Ok(()),
            Err(e) if e.errno == libc::EROFS => Err(e),
            // The store is unreachable: the lease is still ours until it
            // could have expired; the write itself will meet the outage.
            Err(e) if age + self.settings.duration / 4 < self.settings.duration => {
                log::warn!("{}: lease not confirmed: {e}", self.store.location());
                Ok(())
            }
            Err(e) => Err(StoreError::new(
                libc::EIO,
                format!(
                    "{}: lease not confirmed for {age:?}, longer than it may be trusted: {e}",
                    self.store.location()
                ),
            )),
        }
    }

    /// Why writes fail, once the lease was taken over.
    pub fn lost(&self) -> Option<String> {
        self.state.lock_ignoring_poison().lost.clone()
    }

    pub fn generation(&self) -> u64 {
        self.state.lock_ignoring_poison().held.record.generation
    }

    /// This holding's token (random, per opening of the disk).
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The previous owner's token, when this lease replaced a readable
    /// one (`None`: there was no lease, or an unreadable one).
    pub fn taken_from(&self) -> Option<u64> {
        self.taken_from
    }

    /// Stops renewing and removes the lease if it is still ours.
    pub fn release(&self) {
        {
            let mut state = self.state.lock_ignoring_poison();
            state.stopping = true;
            self.wake.notify_all();
        }
        if let Some(handle) = self.renewer.lock_ignoring_poison().take() {
            let _ = handle.join();
        }
        let state = self.state.lock_ignoring_poison();
        if state.lost.is_some() {
            return;
        }
        // Only a lease still ours is removed: read it back first.
        match self.store.read() {
            Ok(Some((bytes, version)))
                if LeaseRecord::parse(&bytes)
                    .is_ok_and(|r| same_holding(&r, &state.held.record)) =>
            {
                match self.store.remove(&version) {
                    Ok(()) => log::info!("{}: lease released", self.store.location()),
                    Err(e) => log::warn!("{}: releasing the lease: {e}", self.store.location()),
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("{}: releasing the lease: {e}", self.store.location()),
        }
    }

    fn renew_every(&self) -> Duration {
        self.settings.duration / 6
    }

    fn fresh_for(&self) -> Duration {
        self.settings.duration / 4
    }

    /// Renews unless another thread did within `max_age`. While the store
    /// is unreachable, a renewal that started less than a twelfth of
    /// lease-time ago answers for it: writers then do not each wait for the
    /// store in turn (with a write-back cache they go on at local speed
    /// until the lease could no longer be trusted). A process stopped and
    /// continued finds that attempt old, and reads the lease back first.
    fn renew_if_older_than(&self, max_age: Duration) -> Result<(), StoreError> {
        let _one_at_a_time = self.renewing.lock_ignoring_poison();
        let started = boot_clock();
        {
            let state = self.state.lock_ignoring_poison();
            if let Some(why) = &state.lost {
                return Err(erofs(why.clone()));
            }
            if started.saturating_sub(state.held.confirmed_at) <= max_age {
                return Ok(());
            }
            if let Some((at, why)) = &state.unreachable {
                if started.saturating_sub(*at) < self.settings.duration / 12 {
                    return Err(why.clone());
                }
            }
        }
        let renewed = self.renew();
        let mut state = self.state.lock_ignoring_poison();
        state.unreachable = match &renewed {
            Err(e) if e.errno != libc::EROFS => Some((started, e.clone())),
            _ => None,
        };
        renewed
    }

    /// Reads the lease back; still ours: writes it with a new expiry.
    fn renew(&self) -> Result<(), StoreError> {
        for _ in 0..MAX_CONFLICTS {
            let started = boot_clock();
            let ours = self.state.lock_ignoring_poison().held.record.clone();
            let current = self.store.read()?;
            let (record, version) = match current {
                Some((bytes, version)) => match LeaseRecord::parse(&bytes) {
                    Ok(record) if same_holding(&record, &ours) => (record, version),
                    Ok(other) => {
                        return Err(
                            self.mark_lost(format!("taken over by {}", other.describe_owner()))
                        )
                    }
                    Err(why) => {
                        return Err(
                            self.mark_lost(format!("replaced by something unreadable ({why})"))
                        )
                    }
                },
                None => return Err(self.mark_lost("removed".into())),
            };
            let renewed = LeaseRecord {
                renewal: record.renewal + 1,
                expires_unix_ms: identity::unix_ms() + self.settings.duration.as_millis() as u64,
                ..record
            };
            match self
                .store
                .write(&renewed.to_bytes(), Condition::Unchanged(&version))?
            {
                Written::Done => {
                    let mut state = self.state.lock_ignoring_poison();
                    state.held = Held {
                        record: renewed,
                        confirmed_at: started,
                    };
                    return Ok(());
                }
                Written::Conflict => continue,
            }
        }
        Err(StoreError::new(
            libc::EIO,
            format!(
                "{}: the lease kept changing while renewing it",
                self.store.location()
            ),
        ))
    }

    fn mark_lost(&self, how: String) -> StoreError {
        let why = format!(
            "{}: this writer's lease was {how}: writes refused (read-only from now on)",
            self.store.location()
        );
        let mut state = self.state.lock_ignoring_poison();
        if state.lost.is_none() {
            log::error!("{why}");
            state.lost = Some(why.clone());
        }
        erofs(why)
    }
}

/// The same owner's same holding: one token, one generation.
fn same_holding(stored: &LeaseRecord, ours: &LeaseRecord) -> bool {
    stored.owner.token == ours.owner.token && stored.generation == ours.generation
}

/// The renewal thread: every `duration / 6` until released or lost. It
/// holds only a weak reference, so a dropped lease ends it.
fn renew_until_stopped(lease: std::sync::Weak<Lease>) {
    loop {
        let Some(lease) = lease.upgrade() else { return };
        {
            let state = lease.state.lock_ignoring_poison();
            let (state, _) = ignore_poison(lease.wake.wait_timeout_while(
                state,
                lease.renew_every(),
                |s| !s.stopping,
            ));
            if state.stopping || state.lost.is_some() {
                return;
            }
        }
        // A renewal thread that was itself late (the process was stopped)
        // renews at once; writers check on their own meanwhile.
        match lease.renew_if_older_than(lease.renew_every() / 2) {
            Ok(()) => {}
            Err(e) if e.errno == libc::EROFS => return,
            Err(e) => log::warn!("{}: renewing the lease: {e}", lease.store.location()),
        }
        // A holder lock another process held when the lease was taken
        // from it (expired, force=true) is taken once that process is gone.
        let _ = lease.store.try_hold();
    }
}

/// Decides whether `owner` may take the lease now, and takes it; also
/// returns the token of the owner it replaced.
fn take(
    store: &dyn LeaseStore,
    settings: &LeaseSettings,
    owner: Owner,
) -> Result<(Held, Option<u64>), StoreError> {
    let holder_free = store.try_hold()?;
    let mut settle = None;
    for _ in 0..MAX_CONFLICTS {
        let started = boot_clock();
        let current = store.read()?;
        let mut previous_token = None;
        let (generation, previous_version) = match &current {
            None => (1, None),
            Some((bytes, version)) => match LeaseRecord::parse(bytes) {
                Ok(previous) => {
                    previous_token = Some(previous.owner.token);
                    if may_take(store, settings, &previous, holder_free)? == Taking::FromALiveOwner
                    {
                        settle =
                            Some(Duration::from_millis(previous.duration_ms / 4) + SETTLE_MARGIN);
                    }
                    (previous.generation + 1, Some(version))
                }
                Err(why) if settings.force => {
                    log::warn!(
                        "{}: replacing an unreadable lease ({why}): force=true",
                        store.location()
                    );
                    (1, Some(version))
                }
                Err(why) => {
                    return Err(StoreError::new(
                        libc::EBUSY,
                        format!(
                            "{}: the lease is unreadable ({why}); force=true replaces it",
                            store.location()
                        ),
                    ))
                }
            },
        };
        let Some(held) = write_new(
            store,
            settings,
            owner.clone(),
            generation,
            previous_version,
            started,
        )?
        else {
            // Changed since it was read: decide again.
            continue;
        };
        if let Some(settle) = settle {
            // A live owner writes on a confirmation at most a quarter of
            // its lease-time old: after that long, its next write reads
            // the lease and finds ours. Until then, ours would be
            // overwritten: wait it out.
            log::warn!(
                "{}: waiting {settle:?} before writing, until the previous writer must have noticed",
                store.location()
            );
            std::thread::sleep(settle);
        }
        return Ok((held, previous_token));
    }
    Err(StoreError::new(
        libc::EIO,
        format!(
            "{}: the lease kept changing while taking it",
            store.location()
        ),
    ))
}

/// Writes a new holding; `None` when the lease changed meanwhile.
fn write_new(
    store: &dyn LeaseStore,
    settings: &LeaseSettings,
    owner: Owner,
    generation: u64,
    previous: Option<&Version>,
    started: Duration,
) -> Result<Option<Held>, StoreError> {
    let record = LeaseRecord {
        owner,
        generation,
        renewal: 0,
        expires_unix_ms: identity::unix_ms() + settings.duration.as_millis() as u64,
        duration_ms: settings.duration.as_millis() as u64,
    };
    let condition = match previous {
        Some(version) => Condition::Unchanged(version),
        None => Condition::Absent,
    };
    match store.write(&record.to_bytes(), condition)? {
        Written::Done => Ok(Some(Held {
            record,
            confirmed_at: started,
        })),
        Written::Conflict => Ok(None),
    }
}

/// How a lease is taken from its previous owner.
#[derive(Debug, PartialEq, Eq)]
enum Taking {
    /// Gone, or expired and not renewed: it writes no more.
    FromAGoneOwner,
    /// `force=true` while it may be alive: it may write on its last
    /// confirmation for a quarter of its lease-time.
    FromALiveOwner,
}

/// Added to a live owner's quarter lease-time: the store round trip of
/// the read its next write makes.
const SETTLE_MARGIN: Duration = Duration::from_millis(250);

/// How `previous`'s lease may be taken (its owner is gone, or
/// `force=true`); otherwise the refusal, naming the owner.
fn may_take(
    store: &dyn LeaseStore,
    settings: &LeaseSettings,
    previous: &LeaseRecord,
    holder_free: Option<bool>,
) -> Result<Taking, StoreError> {
    let location = store.location();
    let owner = previous.describe_owner();
    if holder_free == Some(true) {
        log::info!("{location}: taking the lease of {owner}: its lock was free (it is gone)");
        return Ok(Taking::FromAGoneOwner);
    }
    if identity::is_alive(&previous.owner) == Some(false) {
        log::info!("{location}: taking the lease of {owner}: that process is gone");
        return Ok(Taking::FromAGoneOwner);
    }
    let now = identity::unix_ms();
    if now > previous.expires_unix_ms {
        if still_renewed(store, previous)? {
            return Err(StoreError::new(
                libc::EBUSY,
                format!(
                    "{location} is in use by {owner}: its lease looks expired by this host's \
                     clock but is still being renewed (are the clocks in sync?)"
                ),
            ));
        }
        log::info!("{location}: taking the expired lease of {owner}");
        return Ok(Taking::FromAGoneOwner);
    }
    if settings.force {
        log::warn!("{location}: breaking the lease of {owner}: force=true");
        return Ok(Taking::FromALiveOwner);
    }
    Err(StoreError::new(
        libc::EBUSY,
        format!(
            "{location} is in use by {owner}: only one writer at a time. Its lease expires in \
             {:.1} s unless renewed; force=true breaks it (only if that writer is dead or stopped)",
            (previous.expires_unix_ms - now) as f64 / 1000.0
        ),
    ))
}

/// Watches an expired-looking lease for a third of its duration (bounded
/// in time, polled every 200 ms): a renewal means its owner is alive and
/// only the clocks disagree.
fn still_renewed(store: &dyn LeaseStore, previous: &LeaseRecord) -> Result<bool, StoreError> {
    let watch = Duration::from_millis(previous.duration_ms / 3).min(Duration::from_secs(20));
    let until = boot_clock() + watch;
    while boot_clock() < until {
        std::thread::sleep(Duration::from_millis(200));
        match store.read()? {
            Some((bytes, _)) => match LeaseRecord::parse(&bytes) {
                Ok(now)
                    if now.owner.token == previous.owner.token
                        && now.renewal == previous.renewal => {}
                _ => return Ok(true),
            },
            None => return Ok(false),
        }
    }
    Ok(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A lease store in memory, with real conditions; `conflicts` makes
    /// the next writes fail as if someone wrote in between.
    #[derive(Default)]
    pub(crate) struct MemoryLease {
        stored: Mutex<Option<(Vec<u8>, u64)>>,
        pub conflicts: Mutex<usize>,
        /// Reads fail as if the store could not be reached.
        pub down: std::sync::atomic::AtomicBool,
        pub reads: std::sync::atomic::AtomicUsize,
    }

    impl MemoryLease {
        pub fn record(&self) -> Option<LeaseRecord> {
            self.stored
                .lock_ignoring_poison()
                .as_ref()
                .map(|(bytes, _)| LeaseRecord::parse(bytes).unwrap())
        }
        pub fn put(&self, record: &LeaseRecord) {
            let mut stored = self.stored.lock_ignoring_poison();
            let version = stored.as_ref().map_or(0, |(_, v)| v + 1);
            *stored = Some((record.to_bytes(), version));
        }
    }

    impl LeaseStore for MemoryLease {
        fn location(&self) -> String {
            "mem".into()
        }
        fn read(&self) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
            use std::sync::atomic::Ordering;
            self.reads.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err(StoreError::new(libc::EIO, "the store is down"));
            }
            Ok(self
                .stored
                .lock_ignoring_poison()
                .as_ref()
                .map(|(b, v)| (b.clone(), Version(v.to_string()))))
        }
        fn write(&self, bytes: &[u8], condition: Condition<'_>) -> Result<Written, StoreError> {
            {
                let mut conflicts = self.conflicts.lock_ignoring_poison();
                if *conflicts > 0 {
                    *conflicts -= 1;
                    return Ok(Written::Conflict);
                }
            }
            let mut stored = self.stored.lock_ignoring_poison();
            let holds = match (condition, &*stored) {
                (Condition::Absent, None) => true,
                (Condition::Unchanged(want), Some((_, v))) => want.0 == v.to_string(),
                _ => false,
            };
            if !holds {
                return Ok(Written::Conflict);
            }
            let version = stored.as_ref().map_or(0, |(_, v)| v + 1);
            *stored = Some((bytes.to_vec(), version));
            Ok(Written::Done)
        }
        fn remove(&self, version: &Version) -> Result<(), StoreError> {
            let mut stored = self.stored.lock_ignoring_poison();
            if stored
                .as_ref()
                .is_some_and(|(_, v)| v.to_string() == version.0)
            {
                *stored = None;
            }
            Ok(())
        }
    }

    fn settings(force: bool) -> LeaseSettings {
        LeaseSettings {
            duration: MIN_DURATION,
            force,
        }
    }

    /// Another owner: this host, but a process that is not this one and
    /// is alive (pid 1), so only expiry or force can take its lease.
    fn other_owner() -> Owner {
        let me = identity::this_process();
        Owner {
            host: "another-host".into(),
            pid: 1,
            ..me
        }
    }

    #[test]
    fn one_writer_force_takes_over_and_the_old_one_stops_writing() {
        let store = Arc::new(MemoryLease::default());
        let a = Lease::acquire(store.clone(), settings(false), identity::this_process()).unwrap();
        assert_eq!(a.generation(), 1);
        a.check().unwrap();

        let refused = Lease::acquire(store.clone(), settings(false), other_owner()).unwrap_err();
        assert_eq!(refused.errno, libc::EBUSY);
        let text = refused.to_string();
        assert!(
            text.contains("in use by host ") && text.contains("(generation 1)"),
            "{text}"
        );
        assert!(text.contains("force=true"), "{text}");

        let b = Lease::acquire(store.clone(), settings(true), other_owner()).unwrap();
        assert_eq!(b.generation(), 2);
        // A finds out at its next check once its confirmation is old (the
        // renewal thread may find out first): never a write on it.
        std::thread::sleep(MIN_DURATION / 4 + Duration::from_millis(50));
        let e = a.check().unwrap_err();
        assert_eq!(e.errno, libc::EROFS);
        assert!(
            e.to_string().contains("taken over by host another-host"),
            "{e}"
        );
        assert!(a.lost().is_some());
        b.check().unwrap();
        // A's release leaves B's lease alone; B's removes it.
        a.release();
        assert_eq!(store.record().unwrap().generation, 2);
        b.release();
        assert!(store.record().is_none());
    }

    /// With the store unreachable, writers' checks share one failed
    /// renewal instead of each trying the store, go on for three quarters
    /// of lease-time, then fail.
    #[test]
    fn an_unreachable_store_is_tried_once_for_many_writes_then_writes_stop() {
        use std::sync::atomic::Ordering;
        let store = Arc::new(MemoryLease::default());
        let lease =
            Lease::acquire(store.clone(), settings(false), identity::this_process()).unwrap();
        store.down.store(true, Ordering::Relaxed);
        std::thread::sleep(MIN_DURATION / 4 + Duration::from_millis(50));
        let before = store.reads.load(Ordering::Relaxed);
        for _ in 0..50 {
            lease.check().unwrap();
        }
        let tried = store.reads.load(Ordering::Relaxed) - before;
        assert!(tried <= 2, "50 checks read the lease {tried} times");
        std::thread::sleep(MIN_DURATION / 2 + Duration::from_millis(100));
        let e = lease.check().unwrap_err();
        assert_eq!(e.errno, libc::EIO, "{e}");
        assert!(
            e.to_string().contains("longer than it may be trusted"),
            "{e}"
        );
        store.down.store(false, Ordering::Relaxed);
        lease.release();
    }

    #[test]
    fn renewals_keep_the_lease_and_an_expired_unrenewed_one_is_taken() {
        let store = Arc::new(MemoryLease::default());
        let a = Lease::acquire(store.clone(), settings(false), identity::this_process()).unwrap();
        std::thread::sleep(MIN_DURATION + Duration::from_millis(500));
        let renewed = store.record().unwrap();
        assert!(renewed.renewal >= 3, "renewed {} times", renewed.renewal);
        assert!(renewed.expires_unix_ms > identity::unix_ms());
        a.check().unwrap();
        drop(a);

        // An expired lease nobody renews: taken after a short watch.
        let stale = LeaseRecord {
            owner: other_owner(),
            generation: 9,
            renewal: 4,
            expires_unix_ms: identity::unix_ms() - 1,
            duration_ms: 2000,
        };
        store.put(&stale);
        let b = Lease::acquire(store.clone(), settings(false), identity::this_process()).unwrap();
        assert_eq!(b.generation(), 10);
    }

    #[test]
    fn a_dead_owner_on_this_host_and_conflicts() {
        let store = Arc::new(MemoryLease::default());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = LeaseRecord {
            owner: Owner {
                pid,
                ..identity::this_process()
            },
            generation: 4,
            renewal: 0,
            expires_unix_ms: identity::unix_ms() + 60_000,
            duration_ms: 60_000,
        };
        store.put(&dead);
        *store.conflicts.lock_ignoring_poison() = 2;
        let lease =
            Lease::acquire(store.clone(), settings(false), identity::this_process()).unwrap();
        assert_eq!(lease.generation(), 5, "taken at once, after two conflicts");

        // An unreadable lease is refused, and replaced only with force.
        let store = Arc::new(MemoryLease::default());
        *store.stored.lock_ignoring_poison() = Some((b"garbage".to_vec(), 0));
        let e =
            Lease::acquire(store.clone(), settings(false), identity::this_process()).unwrap_err();
        assert!(e.to_string().contains("unreadable"), "{e}");
        Lease::acquire(store.clone(), settings(true), identity::this_process()).unwrap();
    }
}
