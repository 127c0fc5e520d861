//! Lock operations that ignore poisoning: how the workspace takes every
//! `Mutex` and `RwLock` and waits on every `Condvar` outside tests.
//!
//! Why ignoring poison is right here, rather than propagating it:
//! - a panic does not end the process. In the plugins, plugin-glue's
//!   callback guard catches it at the nbdkit boundary and answers EIO,
//!   and nbdkit goes on serving; in http-disk-server it ends the one
//!   connection thread it happened in. A poisoned lock would then turn
//!   that one failed request into a panic of every later request that
//!   takes the lock (or wedge a thread waiting on it): one bug would take
//!   the whole disk down.
//! - the data is still valid. Every critical section under these locks
//!   changes its data in steps that each leave it consistent (a single
//!   assignment, one insert or remove, a counter moved), so there is no
//!   half-done update for the poison to warn about (where that is not
//!   plain from the code, a comment at the lock says how). A new lock
//!   whose critical section could leave its data half-changed must not
//!   use these helpers.
//!
//! (Tests keep `lock().unwrap()`: there a panic should spread.)

use std::sync::{
    LockResult, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

/// The guard (or whatever else a lock operation gives back), poisoned or
/// not: for [`Condvar`] waits, e.g.
/// `ignore_poison(ready.wait_timeout(guard, timeout))`.
///
/// [`Condvar`]: std::sync::Condvar
pub fn ignore_poison<G>(result: LockResult<G>) -> G {
    result.unwrap_or_else(PoisonError::into_inner)
}

/// [`Mutex::lock`] that ignores poisoning (see the crate's doc for why).
pub trait LockIgnoringPoison<T: ?Sized> {
    fn lock_ignoring_poison(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockIgnoringPoison<T> for Mutex<T> {
    fn lock_ignoring_poison(&self) -> MutexGuard<'_, T> {
        ignore_poison(self.lock())
    }
}

/// [`RwLock::read`] and [`RwLock::write`] that ignore poisoning.
pub trait RwLockIgnoringPoison<T: ?Sized> {
    fn read_ignoring_poison(&self) -> RwLockReadGuard<'_, T>;
    fn write_ignoring_poison(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockIgnoringPoison<T> for RwLock<T> {
    fn read_ignoring_poison(&self) -> RwLockReadGuard<'_, T> {
        ignore_poison(self.read())
    }

    fn write_ignoring_poison(&self) -> RwLockWriteGuard<'_, T> {
        ignore_poison(self.write())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::Condvar;
    use std::time::Duration;

    /// Runs `hold`, which panics while holding a lock: poisons it.
    fn poison(hold: impl FnOnce()) {
        assert!(catch_unwind(AssertUnwindSafe(hold)).is_err());
    }

    #[test]
    fn a_poisoned_mutex_still_gives_its_value() {
        let mutex = Mutex::new(1);
        poison(|| {
            let mut guard = mutex.lock_ignoring_poison();
            *guard = 2;
            panic!("under the lock");
        });
        assert!(mutex.is_poisoned());
        assert_eq!(*mutex.lock_ignoring_poison(), 2);
    }

    #[test]
    fn a_poisoned_rwlock_still_reads_and_writes() {
        let lock = RwLock::new(vec![1]);
        poison(|| {
            let mut guard = lock.write_ignoring_poison();
            guard.push(2);
            panic!("under the lock");
        });
        assert!(lock.is_poisoned());
        lock.write_ignoring_poison().push(3);
        assert_eq!(*lock.read_ignoring_poison(), [1, 2, 3]);
    }

    #[test]
    fn a_wait_on_a_poisoned_mutex_returns_its_guard() {
        let (mutex, ready) = (Mutex::new(7), Condvar::new());
        poison(|| {
            let _guard = mutex.lock_ignoring_poison();
            panic!("under the lock");
        });
        let guard = mutex.lock_ignoring_poison();
        let (guard, waited) = ignore_poison(ready.wait_timeout(guard, Duration::from_millis(1)));
        assert!(waited.timed_out());
        assert_eq!(*guard, 7);
    }
}
