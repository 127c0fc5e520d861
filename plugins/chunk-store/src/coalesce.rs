//! Partial writes into one chunk, stored together ("group commit"), for
//! backends that store whole chunks only (objects).
//!
//! There, each write into part of a chunk costs a read of the whole chunk
//! and a write of all of it, one after another under the chunk's lock. A
//! client writing sequentially with several requests in flight (fio at
//! queue depth 4, nbdcopy with 16 requests of 256 KiB per 4 MiB chunk)
//! sends many of them into the same chunk at once, and each waited for
//! the previous one's read and write. Here, the writes that arrive for a
//! chunk while one is being stored wait together; the first of them to
//! wake then stores them all with one read and one write, and no read at
//! all when together they cover the whole chunk.
//!
//! Durability is unchanged: a write returns only once the backend write
//! that carries it has returned (with FUA if any of them asked for it),
//! and with that write's outcome. Writes that arrived together were in
//! flight together, so NBD gives them no order; they are applied in
//! arrival order.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use lock_ext::{ignore_poison, LockIgnoringPoison};

use crate::error::StoreError;
use crate::geometry::covers;

/// A write waiting to be stored: `data` at `offset` inside the chunk.
pub struct Part {
    ticket: u64,
    pub offset: u64,
    pub data: Vec<u8>,
    pub fua: bool,
}

#[derive(Default)]
struct Pending {
    /// Arrived and not yet taken by a storer.
    queued: Vec<Part>,
    /// A storer is writing this chunk now.
    storing: bool,
    /// Outcomes of stored parts whose writers have not picked them up.
    outcomes: HashMap<u64, Result<(), StoreError>>,
}

impl Pending {
    fn is_idle(&self) -> bool {
        self.queued.is_empty() && !self.storing && self.outcomes.is_empty()
    }
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    chunks: HashMap<u64, Pending>,
}

#[derive(Default)]
pub struct Coalescer {
    /// Nothing below leaves it half-changed across a panic (so its lock
    /// ignores poisoning).
    state: Mutex<State>,
    /// Signalled when a storer finishes (outcomes posted, chunk free).
    stored: Condvar,
}

impl Coalescer {
    /// Writes `data` at `offset` inside chunk `index`: queued with the
    /// other writes into that chunk, stored by `store` (called with every
    /// part of one batch, in arrival order) in this thread or another.
    pub fn write(
        &self,
        index: u64,
        offset: u64,
        data: &[u8],
        fua: bool,
        store: impl FnOnce(&[Part]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock_ignoring_poison();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let pending = state.chunks.entry(index).or_default();
        pending.queued.push(Part {
            ticket,
            offset,
            data: data.to_vec(),
            fua,
        });
        // Wait until another storer has stored this part, or the chunk is
        // free for this thread to store whatever is queued.
        loop {
            let pending = state.chunks.get_mut(&index).expect("own entry");
            if let Some(outcome) = pending.outcomes.remove(&ticket) {
                if pending.is_idle() {
                    state.chunks.remove(&index);
                }
                return outcome;
            }
            if !pending.storing {
                break;
            }
            state = ignore_poison(self.stored.wait(state));
        }
        let pending = state.chunks.get_mut(&index).expect("own entry");
        pending.storing = true;
        let batch = std::mem::take(&mut pending.queued);
        drop(state);
        // Posts the outcome for every part even if `store` panics (the
        // plugin glue turns the panic into EIO for this request): the
        // others must not wait for ever.
        let mut finish = Finish {
            coalescer: self,
            index,
            batch: &batch,
            own: ticket,
            outcome: Err(StoreError::new(libc::EIO, "storing the chunk panicked")),
        };
        let outcome = store(&batch);
        finish.outcome = outcome.clone();
        drop(finish);
        outcome
    }
}

/// Ends a storer's turn: outcomes posted, the chunk free, waiters woken.
struct Finish<'a> {
    coalescer: &'a Coalescer,
    index: u64,
    batch: &'a [Part],
    own: u64,
    outcome: Result<(), StoreError>,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let mut state = self.coalescer.state.lock_ignoring_poison();
        let pending = state.chunks.get_mut(&self.index).expect("storer's entry");
        pending.storing = false;
        for part in self.batch.iter().filter(|p| p.ticket != self.own) {
            pending.outcomes.insert(part.ticket, self.outcome.clone());
        }
        if pending.is_idle() {
            state.chunks.remove(&self.index);
        }
        drop(state);
        self.coalescer.stored.notify_all();
    }
}

/// Whether `parts` together cover `0..len`.
pub fn cover(parts: &[Part], len: u64) -> bool {
    let ranges = parts
        .iter()
        .map(|p| (p.offset, p.offset + p.data.len() as u64))
        .collect();
    covers(ranges, 0, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    fn part(offset: u64, len: usize) -> Part {
        Part {
            ticket: 0,
            offset,
            data: vec![1; len],
            fua: false,
        }
    }

    #[test]
    fn cover_needs_every_byte() {
        assert!(cover(&[part(0, 4), part(4, 4)], 8));
        assert!(cover(&[part(4, 4), part(0, 6)], 8));
        assert!(!cover(&[part(0, 4), part(5, 3)], 8));
        assert!(!cover(&[part(1, 7)], 8));
        assert!(!cover(&[], 8));
    }

    /// Writes that arrive while the chunk is being stored are stored
    /// together, once, and each gets the outcome of that one store.
    #[test]
    fn writes_queued_behind_a_store_go_in_one_batch() {
        let coalescer = Arc::new(Coalescer::default());
        let batches = Arc::new(Mutex::new(Vec::<Vec<u64>>::new()));
        let first_storing = Arc::new(Barrier::new(2));
        let release = Arc::new(Barrier::new(2));
        let first = {
            let (coalescer, batches) = (coalescer.clone(), batches.clone());
            let (first_storing, release) = (first_storing.clone(), release.clone());
            std::thread::spawn(move || {
                coalescer.write(7, 0, &[1], false, |parts| {
                    batches
                        .lock()
                        .unwrap()
                        .push(parts.iter().map(|p| p.offset).collect());
                    first_storing.wait();
                    release.wait();
                    Ok(())
                })
            })
        };
        first_storing.wait();
        let followers: Vec<_> = (1..=5u64)
            .map(|offset| {
                let (coalescer, batches) = (coalescer.clone(), batches.clone());
                std::thread::spawn(move || {
                    coalescer.write(7, offset, &[1], false, |parts| {
                        batches
                            .lock()
                            .unwrap()
                            .push(parts.iter().map(|p| p.offset).collect());
                        Err(StoreError::new(libc::EIO, "the store refused"))
                    })
                })
            })
            .collect();
        // Bounded wait until all five are queued behind the first.
        for _ in 0..500 {
            let queued = coalescer
                .state
                .lock_ignoring_poison()
                .chunks
                .get(&7)
                .map_or(0, |p| p.queued.len());
            if queued == 5 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        release.wait();
        assert!(first.join().unwrap().is_ok());
        let errors = followers
            .into_iter()
            .map(|f| f.join().unwrap().unwrap_err().errno)
            .collect::<Vec<_>>();
        assert_eq!(errors, vec![libc::EIO; 5]);
        let batches = batches.lock().unwrap();
        assert_eq!(batches.len(), 2, "{batches:?}");
        let mut second = batches[1].clone();
        second.sort_unstable();
        assert_eq!(second, vec![1, 2, 3, 4, 5]);
        assert!(
            coalescer.state.lock_ignoring_poison().chunks.is_empty(),
            "state left behind"
        );
    }

    /// A store that panics still releases the chunk and answers the
    /// writes it carried.
    #[test]
    fn a_panicking_store_fails_its_batch_and_frees_the_chunk() {
        let coalescer = Coalescer::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            coalescer.write(1, 0, &[1], false, |_| panic!("backend bug"))
        }));
        assert!(panicked.is_err());
        let stores = AtomicUsize::new(0);
        coalescer
            .write(1, 0, &[1], false, |_| {
                stores.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .unwrap();
        assert_eq!(stores.load(Ordering::Relaxed), 1);
        assert!(coalescer.state.lock_ignoring_poison().chunks.is_empty());
    }
}
