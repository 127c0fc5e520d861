//! The write-back journal (`writeback=true` only): the writes, trims and
//! zeroes acknowledged since the last flush that covers them, in the order
//! they were acknowledged, shared by all NBD connections.
//!
//! Why: a write-back change sits in the server host's page cache until a
//! flush. When the plugin leaves that server before the flush, the change
//! may be gone with the host; without a copy the next flush could only
//! fail (EIO). With the journal, the cluster gives the next server every
//! change in it, in order, before that server serves any request
//! ([`crate::cluster::Cluster`]'s `adopt`), so the flush then means what
//! it says.
//!
//! Why every acknowledged change and not only the write-back ones: a FUA
//! write over bytes that an older write-back write touched must be
//! replayed after it, or the replay would put the older bytes back.
//!
//! Bounded by `journal-size`: a change that does not fit empties the
//! journal and marks it overflowed; changes are dropped until a flush
//! starts, kept again from then on, and the journal is whole again once a
//! flush that started after the last dropped change succeeds. (Keeping
//! from the flush's start, not its end, matters: under steady writes some
//! change is always newer than the last flush, and the journal would never
//! recover.) A failover while it is overflowed makes the next flush fail
//! (see `ops::flush`): nothing can vouch for the dropped changes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http_disk_protocol::ByteRange;
use lock_ext::LockIgnoringPoison;

/// What an entry costs beyond its data, so that a flood of small trims
/// and zeroes is bounded too.
pub const ENTRY_OVERHEAD: u64 = 64;

/// One acknowledged change, as kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Write { offset: u64, data: Arc<[u8]> },
    Trim(ByteRange),
    Zero { range: ByteRange, may_trim: bool },
}

/// One change as a request carries it (the data borrowed from nbdkit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeRef<'a> {
    Write { offset: u64, data: &'a [u8] },
    Trim(ByteRange),
    Zero { range: ByteRange, may_trim: bool },
}

impl Change {
    pub fn borrowed(&self) -> ChangeRef<'_> {
        match self {
            Change::Write { offset, data } => ChangeRef::Write {
                offset: *offset,
                data,
            },
            Change::Trim(range) => ChangeRef::Trim(*range),
            Change::Zero { range, may_trim } => ChangeRef::Zero {
                range: *range,
                may_trim: *may_trim,
            },
        }
    }
}

impl ChangeRef<'_> {
    /// What keeping it costs against `journal-size`.
    pub fn cost(&self) -> u64 {
        match self {
            ChangeRef::Write { data, .. } => data.len() as u64 + ENTRY_OVERHEAD,
            ChangeRef::Trim(_) | ChangeRef::Zero { .. } => ENTRY_OVERHEAD,
        }
    }

    fn to_owned(self) -> Change {
        match self {
            ChangeRef::Write { offset, data } => Change::Write {
                offset,
                data: data.into(),
            },
            ChangeRef::Trim(range) => Change::Trim(range),
            ChangeRef::Zero { range, may_trim } => Change::Zero { range, may_trim },
        }
    }
}

/// What [`Journal::record`] did with a change.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    Kept,
    /// Not kept: the journal is overflowed. `now`: this change made it
    /// overflow (log it once).
    Dropped {
        now: bool,
    },
}

/// The change came from a server that is no longer the one in use: it may
/// have missed the replay to the new one, so its request must be retried.
#[derive(Debug, PartialEq, Eq)]
pub struct Stale;

/// The changes to replay on a new server.
#[derive(Debug, PartialEq, Eq)]
pub enum Backlog {
    /// Every change acknowledged since the last flush, oldest first.
    Complete(Vec<Arc<Change>>),
    /// Some were dropped: replaying the rest would not make a flush true.
    Overflowed,
}

/// A flush's place in the journal: it covers the changes recorded before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark(u64);

pub struct Journal {
    limit: u64,
    /// Consistent under a panic elsewhere: every method changes it in one
    /// step (so its lock ignores poisoning).
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (sequence number, change), oldest first.
    entries: VecDeque<(u64, Arc<Change>)>,
    /// Sum of the entries' costs.
    bytes: u64,
    next_seq: u64,
    /// Sequence number of the last change dropped since the journal
    /// overflowed, until a flush covers it.
    dropped_last: Option<u64>,
    /// While overflowed: a flush started, so changes from this sequence
    /// number on are kept again (that flush covers the dropped ones).
    keep_from: Option<u64>,
}

impl Journal {
    /// A journal keeping at most `limit` bytes (0: keeps nothing, every
    /// change counts as dropped).
    pub fn new(limit: u64) -> Journal {
        Journal {
            limit,
            state: Mutex::new(State::default()),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Records an acknowledged change. `still_current` is asked under the
    /// journal's lock: a replay takes its backlog under the same lock
    /// after the server was left, so a change either is in that backlog or
    /// is refused here ([`Stale`]) and retried on the new server.
    pub fn record(
        &self,
        change: ChangeRef<'_>,
        still_current: impl FnOnce() -> bool,
    ) -> Result<Recorded, Stale> {
        let mut state = self.state.lock_ignoring_poison();
        if !still_current() {
            return Err(Stale);
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let was_overflowed = state.dropped_last.is_some();
        let resumed = state.keep_from.is_some_and(|from| seq >= from);
        let cost = change.cost();
        if (was_overflowed && !resumed) || state.bytes + cost > self.limit {
            state.entries.clear();
            state.bytes = 0;
            state.dropped_last = Some(seq);
            state.keep_from = None;
            return Ok(Recorded::Dropped {
                now: !was_overflowed || resumed,
            });
        }
        state.bytes += cost;
        state.entries.push_back((seq, Arc::new(change.to_owned())));
        Ok(Recorded::Kept)
    }

    /// Where a flush starting now stands: it covers what was recorded
    /// before (those changes were acknowledged, so the server has them).
    pub fn mark(&self) -> Mark {
        let mut state = self.state.lock_ignoring_poison();
        let next = state.next_seq;
        if state.dropped_last.is_some() && state.keep_from.is_none() {
            state.keep_from = Some(next);
        }
        Mark(next)
    }

    /// A flush that started at `mark` succeeded: what it covers is durable.
    pub fn flushed(&self, mark: Mark) {
        let mut state = self.state.lock_ignoring_poison();
        while let Some((seq, change)) = state.entries.front() {
            if *seq >= mark.0 {
                break;
            }
            let cost = change.borrowed().cost();
            state.bytes -= cost;
            state.entries.pop_front();
        }
        if state.dropped_last.is_some_and(|last| last < mark.0) {
            state.dropped_last = None;
            state.keep_from = None;
        }
    }

    /// Whether changes were dropped that no flush has covered yet.
    pub fn is_overflowed(&self) -> bool {
        self.state.lock_ignoring_poison().dropped_last.is_some()
    }

    /// What a new server must be given before it serves anything.
    pub fn backlog(&self) -> Backlog {
        let state = self.state.lock_ignoring_poison();
        if state.dropped_last.is_some() {
            return Backlog::Overflowed;
        }
        Backlog::Complete(state.entries.iter().map(|(_, c)| Arc::clone(c)).collect())
    }

    /// (entries, bytes) kept, for logs.
    pub fn size(&self) -> (usize, u64) {
        let state = self.state.lock_ignoring_poison();
        (state.entries.len(), state.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(offset: u64, data: &[u8]) -> ChangeRef<'_> {
        ChangeRef::Write { offset, data }
    }

    fn offsets(backlog: Backlog) -> Vec<u64> {
        let Backlog::Complete(changes) = backlog else {
            panic!("overflowed");
        };
        changes
            .iter()
            .map(|c| match **c {
                Change::Write { offset, .. } => offset,
                Change::Trim(r) | Change::Zero { range: r, .. } => r.start(),
            })
            .collect()
    }

    #[test]
    fn keeps_changes_in_order_until_a_flush_covers_them() {
        let j = Journal::new(1 << 20);
        let range = ByteRange::from_offset_len(8192, 4096).unwrap();
        assert_eq!(j.record(write(0, b"a"), || true), Ok(Recorded::Kept));
        assert_eq!(
            j.record(ChangeRef::Trim(range), || true),
            Ok(Recorded::Kept)
        );
        let mark = j.mark();
        assert_eq!(j.record(write(4096, b"b"), || true), Ok(Recorded::Kept));
        assert_eq!(offsets(j.backlog()), [0, 8192, 4096]);
        assert_eq!(j.size(), (3, 2 + 3 * ENTRY_OVERHEAD));
        j.flushed(mark);
        // The write acknowledged after the flush started is not covered.
        assert_eq!(offsets(j.backlog()), [4096]);
        assert_eq!(j.size(), (1, 1 + ENTRY_OVERHEAD));
        j.flushed(j.mark());
        assert_eq!(offsets(j.backlog()), Vec::<u64>::new());
        assert_eq!(j.size(), (0, 0));
    }

    #[test]
    fn keeps_a_copy_of_the_data() {
        let j = Journal::new(1 << 20);
        let mut buf = vec![7u8; 16];
        j.record(write(0, &buf), || true).unwrap();
        buf.fill(0);
        let Backlog::Complete(changes) = j.backlog() else {
            panic!("overflowed")
        };
        assert_eq!(changes[0].borrowed(), write(0, &[7u8; 16]));
    }

    #[test]
    fn a_change_from_a_server_no_longer_in_use_is_refused() {
        let j = Journal::new(1 << 20);
        assert_eq!(j.record(write(0, b"a"), || false), Err(Stale));
        assert_eq!(offsets(j.backlog()), Vec::<u64>::new());
    }

    #[test]
    fn overflow_drops_changes_until_a_flush_starts_and_ends_when_it_succeeds() {
        let j = Journal::new(2 * (100 + ENTRY_OVERHEAD));
        let data = [1u8; 100];
        let before = j.mark();
        assert_eq!(j.record(write(0, &data), || true), Ok(Recorded::Kept));
        assert_eq!(j.record(write(100, &data), || true), Ok(Recorded::Kept));
        assert_eq!(
            j.record(write(200, &data), || true),
            Ok(Recorded::Dropped { now: true })
        );
        assert!(j.is_overflowed());
        assert_eq!(j.backlog(), Backlog::Overflowed);
        // No flush started since: even a small change is dropped.
        assert_eq!(
            j.record(write(250, b"x"), || true),
            Ok(Recorded::Dropped { now: false })
        );
        // A flush that started before the overflow covers nothing dropped.
        j.flushed(before);
        assert!(j.is_overflowed());
        // A flush starts: what comes after it is kept again, but replaying
        // it would not make a flush true until that flush succeeded.
        let flush = j.mark();
        assert_eq!(j.record(write(300, b"y"), || true), Ok(Recorded::Kept));
        assert_eq!(j.backlog(), Backlog::Overflowed);
        j.flushed(flush);
        assert!(!j.is_overflowed());
        assert_eq!(offsets(j.backlog()), [300]);
    }

    #[test]
    fn overflowing_again_after_a_flush_started_drops_again() {
        let j = Journal::new(100 + ENTRY_OVERHEAD);
        let data = [1u8; 100];
        j.record(write(0, &data), || true).unwrap();
        assert_eq!(
            j.record(write(100, &data), || true),
            Ok(Recorded::Dropped { now: true })
        );
        let flush = j.mark();
        assert_eq!(j.record(write(200, &data), || true), Ok(Recorded::Kept));
        assert_eq!(
            j.record(write(300, &data), || true),
            Ok(Recorded::Dropped { now: true }),
            "a new overflow is reported again"
        );
        j.flushed(flush);
        assert!(j.is_overflowed(), "the flush does not cover write 300");
        j.flushed(j.mark());
        assert!(!j.is_overflowed());
    }

    #[test]
    fn a_zero_limit_keeps_nothing() {
        let j = Journal::new(0);
        assert_eq!(
            j.record(
                ChangeRef::Trim(ByteRange::from_offset_len(0, 1).unwrap()),
                || true
            ),
            Ok(Recorded::Dropped { now: true })
        );
        assert_eq!(j.backlog(), Backlog::Overflowed);
        j.flushed(j.mark());
        assert_eq!(offsets(j.backlog()), Vec::<u64>::new());
    }
}
