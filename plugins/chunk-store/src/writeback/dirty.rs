//! Which chunks have journaled records not yet in the store, and the
//! queue the uploaders take them from (oldest first, one upload per chunk
//! at a time; records that arrive meanwhile go in its next upload).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use lock_ext::{ignore_poison, LockIgnoringPoison};

use super::journal::Entry;

#[derive(Default)]
struct Chunk {
    /// In journal order.
    entries: Vec<Entry>,
    queued: bool,
    uploading: bool,
}

#[derive(Default)]
struct State {
    chunks: HashMap<u64, Chunk>,
    queue: VecDeque<u64>,
    stopping: bool,
}

#[derive(Default)]
pub struct Dirty {
    state: Mutex<State>,
    /// Signalled when a chunk is queued or the uploaders must stop.
    work: Condvar,
    /// Signalled when an upload ends.
    progress: Condvar,
    /// Signalled when the uploaders must stop.
    stopped: Condvar,
}

impl Dirty {
    /// A new record of its chunk (called in journal order per chunk: the
    /// store's chunk lock serializes writes to one chunk).
    pub fn add(&self, entry: Entry) {
        let mut state = self.state.lock_ignoring_poison();
        let index = entry.header.chunk;
        let chunk = state.chunks.entry(index).or_default();
        chunk.entries.push(entry);
        if !chunk.queued && !chunk.uploading {
            chunk.queued = true;
            state.queue.push_back(index);
            self.work.notify_one();
        }
    }

    /// The records of `index` not yet known stored, in journal order.
    pub fn entries(&self, index: u64) -> Vec<Entry> {
        self.state
            .lock_ignoring_poison()
            .chunks
            .get(&index)
            .map_or_else(Vec::new, |c| c.entries.clone())
    }

    /// Dirty chunks in `first..=last`.
    pub fn chunks_in(&self, first: u64, last: u64) -> Vec<u64> {
        self.state
            .lock_ignoring_poison()
            .chunks
            .keys()
            .copied()
            .filter(|i| (first..=last).contains(i))
            .collect()
    }

    /// For an uploader: the next chunk and its records (now being
    /// uploaded), waiting for one; `None` once stopping.
    pub fn next(&self) -> Option<(u64, Vec<Entry>)> {
        let mut state = self.state.lock_ignoring_poison();
        loop {
            if state.stopping {
                return None;
            }
            if let Some(index) = state.queue.pop_front() {
                let chunk = state
                    .chunks
                    .get_mut(&index)
                    .expect("queued chunks are dirty");
                chunk.queued = false;
                chunk.uploading = true;
                return Some((index, chunk.entries.clone()));
            }
            state = ignore_poison(self.work.wait(state));
        }
    }

    /// An upload of `index` ended: `uploaded` records (the first ones) are
    /// in the store when it succeeded. The chunk goes back in the queue
    /// if it has records left (new ones, or all of them after a failure).
    pub fn finished(&self, index: u64, uploaded: usize, succeeded: bool) {
        let mut state = self.state.lock_ignoring_poison();
        let chunk = state
            .chunks
            .get_mut(&index)
            .expect("an uploading chunk is dirty");
        chunk.uploading = false;
        if succeeded {
            chunk.entries.drain(..uploaded);
        }
        if chunk.entries.is_empty() {
            state.chunks.remove(&index);
        } else {
            chunk.queued = true;
            state.queue.push_back(index);
            self.work.notify_one();
        }
        self.progress.notify_all();
    }

    /// Waits until nothing is dirty or `limit` has passed, or `give_up`
    /// says so; whether nothing is dirty.
    pub fn wait_clean(&self, limit: Duration, give_up: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.state.lock_ignoring_poison();
        while !state.chunks.is_empty() {
            let now = Instant::now();
            if now >= deadline || give_up() {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            state = ignore_poison(self.progress.wait_timeout(state, wait)).0;
        }
        true
    }

    /// Sleeps `pause` (after a failed upload, before the next try),
    /// or less when stopping.
    pub fn pause(&self, pause: Duration) {
        let state = self.state.lock_ignoring_poison();
        if !state.stopping {
            let _ = ignore_poison(self.stopped.wait_timeout(state, pause));
        }
    }

    /// Wakes the uploaders to stop.
    pub fn stop(&self) {
        self.state.lock_ignoring_poison().stopping = true;
        self.work.notify_all();
        self.stopped.notify_all();
    }
}
