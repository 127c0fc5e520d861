//! Lock operations that ignore poisoning: the one place the workspace
//! takes a `Mutex`, an `RwLock` or waits on a `Condvar` outside tests.
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
//!   half-done update for the poison to warn about; each lock's own
//!   comment says how. A new lock whose critical section could leave its
//!   data half-changed must not use these helpers.
//!
//! (Tests keep `lock().unwrap()`: there a panic should spread.)

use std::sync::{
    Condvar, LockResult, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    WaitTimeoutResult,
};
use std::time::Duration;

/// The guard, poisoned or not.
fn ignore_poison<G>(result: LockResult<G>) -> G {
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

/// [`Condvar`] waits that ignore poisoning of the mutex waited on.
pub trait WaitIgnoringPoison {
    fn wait_ignoring_poison<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T>;

    fn wait_timeout_ignoring_poison<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult);

    fn wait_timeout_while_ignoring_poison<'a, T, F>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
        condition: F,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult)
    where
        F: FnMut(&mut T) -> bool;
}

impl WaitIgnoringPoison for Condvar {
    fn wait_ignoring_poison<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        ignore_poison(self.wait(guard))
    }

    fn wait_timeout_ignoring_poison<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
        ignore_poison(self.wait_timeout(guard, timeout))
    }

    fn wait_timeout_while_ignoring_poison<'a, T, F>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
        condition: F,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult)
    where
        F: FnMut(&mut T) -> bool,
    {
        ignore_poison(self.wait_timeout_while(guard, timeout, condition))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::Arc;
    use std::thread;

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
    fn waits_on_a_poisoned_mutex_return_their_guard() {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        poison(|| {
            let _guard = pair.0.lock_ignoring_poison();
            panic!("under the lock");
        });
        let (mutex, ready) = &*pair;
        let (guard, timeout) = ready
            .wait_timeout_ignoring_poison(mutex.lock_ignoring_poison(), Duration::from_millis(1));
        assert!(timeout.timed_out() && !*guard);
        drop(guard);
        let other = Arc::clone(&pair);
        let setter = thread::spawn(move || {
            *other.0.lock_ignoring_poison() = true;
            other.1.notify_all();
        });
        let (guard, _) = ready.wait_timeout_while_ignoring_poison(
            mutex.lock_ignoring_poison(),
            Duration::from_secs(10),
            |set| !*set,
        );
        assert!(*guard);
        drop(guard);
        setter.join().unwrap();
        let mut guard = mutex.lock_ignoring_poison();
        *guard = false;
        let setter = {
            let other = Arc::clone(&pair);
            thread::spawn(move || {
                *other.0.lock_ignoring_poison() = true;
                other.1.notify_all();
            })
        };
        while !*guard {
            guard = ready.wait_ignoring_poison(guard);
        }
        drop(guard);
        setter.join().unwrap();
    }
}
