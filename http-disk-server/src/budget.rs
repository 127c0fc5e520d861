//! A server-wide bound on memory held by request bodies. Each write body is
//! received whole before it is written (so a broken upload writes nothing),
//! which costs up to `--max-request-size` per connection; without a shared
//! bound, `--workers` concurrent large writes could take gigabytes of a
//! small dom0. A write waits (bounded) for room, else gets 503.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use lock_ext::{ignore_poison, LockIgnoringPoison};

/// Bytes of request bodies that may be held at once.
pub struct Budget {
    limit: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Room reserved for one body; given back on drop.
pub struct Reservation<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget {
            limit,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Reserves `bytes`, waiting up to `timeout` for other bodies to be
    /// written. `None` when there was no room in time. A request larger
    /// than the whole budget never fits: callers bound requests first.
    pub fn reserve(&self, bytes: u64, timeout: Duration) -> Option<Reservation<'_>> {
        let deadline = Instant::now() + timeout;
        let mut used = self.used.lock_ignoring_poison();
        while used.saturating_add(bytes) > self.limit {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            used = ignore_poison(self.freed.wait_timeout(used, left)).0;
        }
        *used += bytes;
        Some(Reservation {
            budget: self,
            bytes,
        })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock_ignoring_poison();
        *used = used.saturating_sub(self.bytes);
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waits_for_room_then_gives_up() {
        let budget = Budget::new(100);
        let a = budget.reserve(60, Duration::ZERO).unwrap();
        assert!(budget.reserve(50, Duration::from_millis(50)).is_none());
        let b = budget.reserve(40, Duration::ZERO).unwrap();
        drop(a);
        assert!(budget.reserve(60, Duration::ZERO).is_some());
        drop(b);
        assert!(budget.reserve(101, Duration::ZERO).is_none());
    }

    #[test]
    fn a_waiting_reservation_gets_freed_room() {
        let budget = Arc::new(Budget::new(10));
        let held = budget.reserve(10, Duration::ZERO).unwrap();
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.reserve(10, Duration::from_secs(10)).is_some())
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        assert!(waiter.join().unwrap());
    }
}
