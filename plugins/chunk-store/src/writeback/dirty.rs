//! Which chunks have journaled records not yet in the store, and the
//! queue the uploaders take them from (oldest first, one upload per chunk
//! at a time; records that arrive meanwhile go in its next upload).
//!
//! A record wholly covered by a newer one of its chunk no longer matters
//! for the chunk's bytes: it is dropped from what reads and uploads apply
//! (a block rewritten ten thousand times while the store is down costs
//! one record per read, not ten thousand), and kept only in the list of
//! records the journal waits to see stored.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use lock_ext::{ignore_poison, LockIgnoringPoison};

use super::journal::Entry;

#[derive(Default)]
struct Chunk {
    /// The records that make the chunk's bytes, in journal order.
    visible: Vec<Entry>,
    /// Every record not yet stored, in journal order.
    pending: Vec<Entry>,
    queued: bool,
    uploading: bool,
}

/// A chunk taken by an uploader.
pub struct Upload {
    pub index: u64,
    /// What to apply over the stored object.
    pub entries: Vec<Entry>,
    /// The newest record it carries.
    pub upto: u64,
}

/// Whether `new` overwrites every byte of `old`.
fn overwrites(new: &Entry, old: &Entry) -> bool {
    let (n, o) = (&new.header, &old.header);
    n.offset <= o.offset && o.offset + o.len <= n.offset + n.len
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
        chunk.visible.retain(|old| !overwrites(&entry, old));
        chunk.visible.push(entry.clone());
        chunk.pending.push(entry);
        if !chunk.queued && !chunk.uploading {
            chunk.queued = true;
            state.queue.push_back(index);
            self.work.notify_one();
        }
    }

    /// The records that make chunk `index`'s bytes over its stored
    /// object, in journal order (none: the object is the truth).
    pub fn entries(&self, index: u64) -> Vec<Entry> {
        self.state
            .lock_ignoring_poison()
            .chunks
            .get(&index)
            .map_or_else(Vec::new, |c| c.visible.clone())
    }

    /// Whether chunk `index` has records not yet stored.
    pub fn contains(&self, index: u64) -> bool {
        self.state
            .lock_ignoring_poison()
            .chunks
            .contains_key(&index)
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
    pub fn next(&self) -> Option<Upload> {
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
                return Some(Upload {
                    index,
                    entries: chunk.visible.clone(),
                    upto: chunk.pending.last().map_or(0, |e| e.header.seq),
                });
            }
            state = ignore_poison(self.work.wait(state));
        }
    }

    /// An upload of `index` carrying its records up to `upto` ended.
    /// When it succeeded, returns the records now stored (for the
    /// journal). The chunk goes back in the queue if it has records left
    /// (new ones, or all of them after a failure).
    pub fn finished(&self, index: u64, upto: u64, succeeded: bool) -> Vec<Entry> {
        let mut state = self.state.lock_ignoring_poison();
        let chunk = state
            .chunks
            .get_mut(&index)
            .expect("an uploading chunk is dirty");
        chunk.uploading = false;
        let mut stored = Vec::new();
        if succeeded {
            let newer = chunk.pending.partition_point(|e| e.header.seq <= upto);
            stored = chunk.pending.drain(..newer).collect();
            chunk.visible.retain(|e| e.header.seq > upto);
        }
        if chunk.pending.is_empty() {
            state.chunks.remove(&index);
        } else {
            chunk.queued = true;
            state.queue.push_back(index);
            self.work.notify_one();
        }
        self.progress.notify_all();
        stored
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
