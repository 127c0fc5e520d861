//! The write-back journal: records appended to segment files in
//! `cache-dir/journal/`, durable on [`Journal::sync`], retired once the
//! store holds them.
//!
//! Rules that make a replay after a crash correct:
//! - Appends are serialized (one lock), so a record is complete in the
//!   file before any later one is acknowledged; `sync` (fdatasync) then
//!   covers every record appended before it. A crash can tear only
//!   records after the last sync, which were never acknowledged durable.
//! - A replay stops at the first record that does not check out (the torn
//!   tail). A damaged record with more segments after it is not a crash
//!   but a damaged disk: the journal is refused, never replayed with a
//!   hole.
//! - Segments are retired (deleted, and the deletion made durable) in
//!   order, oldest first, and only when every record in them is in the
//!   store. So what survives a crash is always a suffix of the journal:
//!   records already in the store may be replayed again, but always
//!   together with every newer record, in order, so nothing older ends up
//!   over anything newer.
//! - Backpressure: appends wait while the live segments hold `limit`
//!   bytes, until uploads retire some.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use lock_ext::{ignore_poison, LockIgnoringPoison};

use super::record::{Header, HEADER_LEN};
use crate::error::StoreError;

/// Each segment file starts with this.
const SEGMENT_MAGIC: &[u8; 16] = b"HND-JOURNAL-1\0\0\0";
const SEGMENT_SUFFIX: &str = ".journal";
/// Who wrote the journal: the lease token of the writer whose records it
/// holds (see `WriteBack::cached`).
const OWNER_FILE: &str = "owner";

fn eio(what: String) -> StoreError {
    StoreError::new(libc::EIO, what)
}

/// One segment file, open for as long as a record in it may be read.
#[derive(Debug)]
pub struct Segment {
    number: u64,
    path: PathBuf,
    file: File,
}

impl Segment {
    /// Reads `buf.len()` bytes at `pos`.
    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> Result<(), StoreError> {
        self.file
            .read_exact_at(buf, pos)
            .map_err(|e| eio(format!("reading {} at {pos}: {e}", self.path.display())))
    }
}

/// A journaled record and where its payload is.
#[derive(Clone, Debug)]
pub struct Entry {
    pub header: Header,
    pub segment: Arc<Segment>,
    /// The payload's position in the segment file.
    pub data_at: u64,
}

struct Live {
    segment: Arc<Segment>,
    len: u64,
    /// Records not yet in the store.
    pending: usize,
}

struct State {
    /// The segment appended to, if any.
    active: Option<u64>,
    active_len: u64,
    next_number: u64,
    next_seq: u64,
    live: BTreeMap<u64, Live>,
    live_bytes: u64,
    /// The token in the owner file.
    owner: Option<u64>,
    /// A writer waits for space: said once per wait, not per write.
    told_full: bool,
}

pub struct Journal {
    dir: PathBuf,
    limit: u64,
    segment_size: u64,
    state: Mutex<State>,
    space: Condvar,
}

/// What [`Journal::open`] found.
pub struct Found {
    pub journal: Journal,
    /// Records not known to be in the store, in journal order.
    pub entries: Vec<Entry>,
    /// The token of the writer that wrote them.
    pub owner: Option<u64>,
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| eio(format!("syncing the directory {}: {e}", dir.display())))
}

impl Journal {
    /// Opens the journal in `dir` (created if missing) and reads what
    /// it holds. Appends wait while `limit` bytes are live; a segment
    /// takes at most `segment_size` bytes (more for a record larger than
    /// that).
    pub fn open(dir: &Path, limit: u64, segment_size: u64) -> Result<Found, StoreError> {
        create_dir_durably(dir)?;
        let mut numbers = Vec::new();
        let listing =
            fs::read_dir(dir).map_err(|e| eio(format!("listing {}: {e}", dir.display())))?;
        for item in listing {
            let item = item.map_err(|e| eio(format!("listing {}: {e}", dir.display())))?;
            let name = item.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else {
                continue;
            };
            let number = u64::from_str_radix(stem, 16).map_err(|_| {
                eio(format!(
                    "{}: not a journal segment name",
                    item.path().display()
                ))
            })?;
            numbers.push(number);
        }
        numbers.sort_unstable();
        let mut entries = Vec::new();
        let mut live = BTreeMap::new();
        let mut live_bytes = 0;
        let mut next_seq = 1;
        for (i, &number) in numbers.iter().enumerate() {
            let last = i + 1 == numbers.len();
            let (segment, len, found) = scan(dir, number, last)?;
            next_seq = found
                .last()
                .map_or(next_seq, |e| e.header.seq + 1)
                .max(next_seq);
            live_bytes += len;
            live.insert(
                number,
                Live {
                    segment,
                    len,
                    pending: found.len(),
                },
            );
            entries.extend(found);
        }
        let owner = read_owner(dir)?;
        let journal = Journal {
            dir: dir.to_owned(),
            limit,
            segment_size,
            state: Mutex::new(State {
                active: None,
                active_len: 0,
                next_number: numbers.last().map_or(1, |n| n + 1),
                next_seq,
                live,
                live_bytes,
                owner,
                told_full: false,
            }),
            space: Condvar::new(),
        };
        // Segments whose every record is known stored (none here: a found
        // segment's records are all pending) or empty ones go at once.
        journal.retire_done(&mut journal.state.lock_ignoring_poison())?;
        Ok(Found {
            journal,
            entries,
            owner,
        })
    }

    /// Records that `token`'s writer owns the journal from now on (before
    /// its first record, or before it replays another's).
    pub fn claim(&self, token: u64) -> Result<(), StoreError> {
        let mut state = self.state.lock_ignoring_poison();
        self.claim_locked(&mut state, token)
    }

    fn claim_locked(&self, state: &mut State, token: u64) -> Result<(), StoreError> {
        if state.owner == Some(token) {
            return Ok(());
        }
        replace_durably(&self.dir, OWNER_FILE, &format!("{token}\n"))?;
        state.owner = Some(token);
        Ok(())
    }

    /// Appends a record for `token`'s writer, waiting for space while the
    /// journal is full. Returns it with its sequence number.
    pub fn append(
        &self,
        mut header: Header,
        payload: &[u8],
        token: u64,
    ) -> Result<Entry, StoreError> {
        let need = (HEADER_LEN + payload.len()) as u64;
        let mut state = self.state.lock_ignoring_poison();
        while state.live_bytes > 0 && state.live_bytes + need > self.limit {
            // An active segment whose records are all stored would never
            // be retired while writers wait: the next append starts anew.
            if let Some(active) = state.active {
                if state.live[&active].pending == 0 {
                    state.active = None;
                    self.retire_done(&mut state)?;
                    continue;
                }
            }
            if !state.told_full {
                state.told_full = true;
                log::warn!(
                    "{}: the cache is full ({} bytes not yet in the store): writes wait for uploads",
                    self.dir.display(),
                    state.live_bytes
                );
            }
            state = ignore_poison(self.space.wait_timeout(state, Duration::from_secs(1))).0;
        }
        state.told_full = false;
        self.claim_locked(&mut state, token)?;
        if state.active.is_none() || state.active_len + need > self.segment_size {
            self.rotate(&mut state)?;
        }
        let number = state.active.expect("rotate made one");
        header.seq = state.next_seq;
        let at = state.active_len;
        let live = state.live.get_mut(&number).expect("active is live");
        let segment = live.segment.clone();
        let bytes = header.encode(payload);
        segment
            .file
            .write_all_at(&bytes, at)
            .and_then(|()| segment.file.write_all_at(payload, at + HEADER_LEN as u64))
            .map_err(|e| eio(format!("appending to {}: {e}", segment.path.display())))?;
        live.len += need;
        live.pending += 1;
        state.active_len += need;
        state.live_bytes += need;
        state.next_seq += 1;
        Ok(Entry {
            header,
            segment,
            data_at: at + HEADER_LEN as u64,
        })
    }

    /// Makes every record appended so far durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        let active = {
            let state = self.state.lock_ignoring_poison();
            state.active.map(|n| state.live[&n].segment.clone())
        };
        // Older segments were synced when they stopped being active.
        match active {
            Some(segment) => segment
                .file
                .sync_data()
                .map_err(|e| eio(format!("syncing {}: {e}", segment.path.display()))),
            None => Ok(()),
        }
    }

    /// These records are in the store now.
    pub fn stored(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let mut state = self.state.lock_ignoring_poison();
        for entry in entries {
            if let Some(live) = state.live.get_mut(&entry.segment.number) {
                live.pending = live.pending.saturating_sub(1);
            }
        }
        self.retire_done(&mut state)
    }

    /// Bytes of journal on disk.
    pub fn live_bytes(&self) -> u64 {
        self.state.lock_ignoring_poison().live_bytes
    }

    /// When every record is stored: removes every segment, the active one
    /// too (a clean stop leaves an empty journal).
    pub fn clear_if_stored(&self) -> Result<bool, StoreError> {
        let mut state = self.state.lock_ignoring_poison();
        if state.live.values().any(|l| l.pending > 0) {
            return Ok(false);
        }
        state.active = None;
        self.retire_done(&mut state)?;
        Ok(true)
    }

    /// Starts a new active segment (the old one synced first, so only the
    /// active segment ever has records not yet durable).
    fn rotate(&self, state: &mut State) -> Result<(), StoreError> {
        if let Some(old) = state.active.take() {
            let segment = &state.live[&old].segment;
            segment
                .file
                .sync_data()
                .map_err(|e| eio(format!("syncing {}: {e}", segment.path.display())))?;
        }
        let number = state.next_number;
        let path = self.dir.join(format!("{number:016x}{SEGMENT_SUFFIX}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|file| {
                file.write_all_at(SEGMENT_MAGIC, 0)?;
                file.sync_all()?;
                Ok(file)
            })
            .map_err(|e| eio(format!("creating {}: {e}", path.display())))?;
        sync_dir(&self.dir)?;
        state.next_number += 1;
        let len = SEGMENT_MAGIC.len() as u64;
        state.live.insert(
            number,
            Live {
                segment: Arc::new(Segment { number, path, file }),
                len,
                pending: 0,
            },
        );
        state.live_bytes += len;
        state.active = Some(number);
        state.active_len = len;
        self.retire_done(state)
    }

    /// Deletes the oldest segments while all their records are stored and
    /// they are not the active one: in order, each deletion durable before
    /// the next (see the module's rules).
    fn retire_done(&self, state: &mut State) -> Result<(), StoreError> {
        let mut retired = false;
        while let Some((&number, live)) = state.live.first_key_value() {
            if live.pending > 0 || state.active == Some(number) {
                break;
            }
            fs::remove_file(&live.segment.path)
                .map_err(|e| eio(format!("removing {}: {e}", live.segment.path.display())))?;
            sync_dir(&self.dir)?;
            state.live_bytes -= live.len;
            state.live.remove(&number);
            retired = true;
        }
        if retired {
            self.space.notify_all();
        }
        Ok(())
    }
}

/// Replaces `dir/name` with `contents` atomically and durably: the old
/// file or the new one after a crash, never a part.
pub fn replace_durably(dir: &Path, name: &str, contents: &str) -> Result<(), StoreError> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.new"));
    fs::write(&temporary, contents)
        .and_then(|()| File::open(&temporary)?.sync_all())
        .and_then(|()| fs::rename(&temporary, &path))
        .map_err(|e| eio(format!("writing {}: {e}", path.display())))?;
    sync_dir(dir)
}

/// Creates `dir` (and missing parents) so that it survives a power cut:
/// each new directory's entry is synced in its parent.
pub fn create_dir_durably(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dir_durably(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(eio(format!("creating {}: {e}", dir.display()))),
    }
}

fn read_owner(dir: &Path) -> Result<Option<u64>, StoreError> {
    let path = dir.join(OWNER_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| eio(format!("{}: not a lease token: {text:?}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(eio(format!("reading {}: {e}", path.display()))),
    }
}

/// Reads segment `number`: its whole records, in order. A record that
/// does not check out ends it; that is a torn tail only in the last
/// segment.
fn scan(
    dir: &Path,
    number: u64,
    last: bool,
) -> Result<(Arc<Segment>, u64, Vec<Entry>), StoreError> {
    let path = dir.join(format!("{number:016x}{SEGMENT_SUFFIX}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| eio(format!("opening {}: {e}", path.display())))?;
    let len = file
        .metadata()
        .map_err(|e| eio(format!("reading {}: {e}", path.display())))?
        .len();
    let segment = Arc::new(Segment { number, path, file });
    let mut magic = [0u8; SEGMENT_MAGIC.len()];
    let mut at = magic.len() as u64;
    let mut entries = Vec::new();
    let whole = len >= at && segment.read_at(&mut magic, 0).is_ok() && &magic == SEGMENT_MAGIC;
    if whole {
        let mut payload = Vec::new();
        while at + HEADER_LEN as u64 <= len {
            let mut bytes = [0u8; HEADER_LEN];
            segment.read_at(&mut bytes, at)?;
            let Some((header, crc)) = Header::decode(&bytes) else {
                break;
            };
            let data_at = at + HEADER_LEN as u64;
            if data_at + header.payload_len() > len {
                break;
            }
            payload.resize(header.payload_len() as usize, 0);
            segment.read_at(&mut payload, data_at)?;
            if !Header::verify(&bytes, &payload, crc) {
                break;
            }
            entries.push(Entry {
                header,
                segment: segment.clone(),
                data_at,
            });
            at = data_at + header.payload_len();
        }
    } else {
        at = 0;
    }
    if at < len {
        if !last {
            return Err(eio(format!(
                "{}: damaged at byte {at} of {len}, and newer segments follow: \
                 not a crash's torn tail; the journal is not replayed",
                segment.path.display()
            )));
        }
        log::warn!(
            "{}: ignoring {} bytes of a torn tail (writes never acknowledged durable)",
            segment.path.display(),
            len - at
        );
    }
    Ok((segment, len, entries))
}

#[cfg(test)]
mod tests {
    use super::super::record::Kind;
    use super::*;

    fn data(offset: u64, len: u64) -> Header {
        Header {
            kind: Kind::Data,
            seq: 0,
            chunk: 0,
            offset,
            len,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_survive_a_reopen_and_a_torn_tail_is_dropped() {
        let dir = temp_dir("reopen");
        let found = Journal::open(&dir, 1 << 20, 1 << 16).unwrap();
        assert!(found.entries.is_empty());
        let a = found.journal.append(data(0, 3), b"abc", 9).unwrap();
        let b = found.journal.append(data(3, 3), b"def", 9).unwrap();
        assert_eq!((a.header.seq, b.header.seq), (1, 2));
        found.journal.sync().unwrap();
        // A torn third record: half a header.
        let path = b.segment.path.clone();
        let end = fs::metadata(&path).unwrap().len();
        b.segment.file.write_all_at(&[0x52, 0x44], end).unwrap();
        drop((found, a, b));
        let again = Journal::open(&dir, 1 << 20, 1 << 16).unwrap();
        assert_eq!(again.owner, Some(9));
        let seqs: Vec<u64> = again.entries.iter().map(|e| e.header.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        let mut buf = [0u8; 3];
        let e = &again.entries[1];
        e.segment.read_at(&mut buf, e.data_at).unwrap();
        assert_eq!(&buf, b"def");
        // New records go to a new segment, numbered after the old ones.
        let c = again.journal.append(data(0, 1), b"x", 10).unwrap();
        assert_eq!(c.header.seq, 3);
        assert_ne!(c.segment.number, again.entries[0].segment.number);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn segments_are_retired_oldest_first_once_stored() {
        let dir = temp_dir("retire");
        let found = Journal::open(&dir, 1 << 20, 200).unwrap();
        let journal = found.journal;
        // Each record fills most of a segment: one segment each.
        let first = journal.append(data(0, 100), &[1; 100], 1).unwrap();
        let second = journal.append(data(0, 100), &[2; 100], 1).unwrap();
        let third = journal.append(data(0, 100), &[3; 100], 1).unwrap();
        assert_ne!(first.segment.number, second.segment.number);
        journal.stored(std::slice::from_ref(&second)).unwrap();
        assert!(
            first.segment.path.exists() && second.segment.path.exists(),
            "the second waits for the first"
        );
        journal.stored(std::slice::from_ref(&first)).unwrap();
        assert!(!first.segment.path.exists() && !second.segment.path.exists());
        assert!(third.segment.path.exists(), "the active one stays");
        journal.stored(std::slice::from_ref(&third)).unwrap();
        assert!(journal.clear_if_stored().unwrap());
        assert_eq!(journal.live_bytes(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_journal_makes_writers_wait_until_uploads_retire_segments() {
        let dir = temp_dir("full");
        // A segment per record (16 + 48 + 100 bytes): four fit, a fifth does not.
        let found = Journal::open(&dir, 700, 200).unwrap();
        let journal = Arc::new(found.journal);
        let mut entries = Vec::new();
        for _ in 0..4 {
            entries.push(journal.append(data(0, 100), &[1; 100], 1).unwrap());
        }
        let writer = {
            let journal = journal.clone();
            std::thread::spawn(move || {
                journal
                    .append(data(0, 100), &[5; 100], 1)
                    .map(|e| e.header.seq)
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(!writer.is_finished(), "a full journal must block, not fail");
        journal.stored(&entries[..2]).unwrap();
        assert_eq!(writer.join().unwrap().unwrap(), 5);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damage_before_newer_segments_is_refused() {
        let dir = temp_dir("damage");
        let found = Journal::open(&dir, 1 << 20, 200).unwrap();
        let first = found.journal.append(data(0, 100), &[1; 100], 1).unwrap();
        let _second = found.journal.append(data(0, 100), &[2; 100], 1).unwrap();
        first
            .segment
            .file
            .write_all_at(&[0xff], first.data_at)
            .unwrap();
        drop((found, first));
        let e = Journal::open(&dir, 1 << 20, 200).err().expect("refused");
        assert!(e.to_string().contains("newer segments follow"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
