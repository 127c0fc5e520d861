//! `cache-dir=`: a crash-safe write-back cache in front of a chunk
//! backend (s3's objects), so that writes cost a local append instead of
//! an object store round trip.
//!
//! - **Writes** (and zeroes, trims) are records appended to a journal in
//!   `cache-dir/journal/` ([`journal`]) and acknowledged then; FUA and
//!   flush fdatasync it. So an acknowledged write is exactly as durable as
//!   NBD promises: after a flush or with FUA, on the local disk.
//! - **Uploads**: background threads take dirty chunks oldest first and
//!   store each as one whole object: the chunk read once from the store
//!   (not at all when the records cover it), every record applied in
//!   journal order, written (or deleted when all zeros) with FUA. Records
//!   that arrive while a chunk uploads go in its next upload: writes into
//!   one chunk coalesce into one PUT.
//! - **Reads** of a chunk with records not yet uploaded are served from
//!   the journal, over the stored object where the records do not cover
//!   the range.
//! - **Bounded**: the journal holds at most `cache-size=` bytes; a writer
//!   that would exceed it waits for uploads (backpressure), it is never
//!   failed.
//! - **After a crash** the journal is replayed to the store when the
//!   plugin starts, before the disk is served. Only the writer that wrote
//!   it may replay it: the lease it takes must have been taken from the
//!   journal's own writer (the `owner` file holds its lease token). If
//!   another writer held the disk since, replaying would put older data
//!   over newer, and the start is refused instead.
//! - **A clean stop** uploads everything (up to [`DRAIN_LIMIT`]) and
//!   leaves an empty journal. Writes it could not upload stay in the
//!   journal, and the lease is then kept (not released) so that no other
//!   writer takes the disk without noticing them.
//!
//! Every record goes through the lease check first, and every upload goes
//! through [`Fenced`]: a writer whose lease was taken over neither
//! accepts nor uploads anything.

mod dirty;
mod journal;
pub mod keys;
mod record;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lock_ext::LockIgnoringPoison;

use self::dirty::Dirty;
use self::journal::{Entry, Journal};
use self::record::{Header, Kind, HEADER_LEN};
use crate::backend::{ChunkBackend, ChunkExtent};
use crate::error::StoreError;
use crate::geometry::covers;
use crate::lease::{Fenced, LeaseKeeper};
use crate::store::is_zero;

/// How long a clean stop waits for uploads.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Between tries of a failed upload.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Largest journal segment file.
const MAX_SEGMENT: u64 = 64 << 20;

/// `cache-dir=` and `cache-size=`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    pub dir: PathBuf,
    /// Most journal bytes on disk.
    pub size: u64,
    /// Uploads in parallel.
    pub uploaders: usize,
}

/// A backend with or without the cache (the plugin's one backend type).
pub struct WriteBack<B> {
    inner: Arc<Fenced<B>>,
    cache: Option<Arc<Cache<B>>>,
}

struct Cache<B> {
    dir: PathBuf,
    chunk_size: u64,
    inner: Arc<Fenced<B>>,
    journal: Journal,
    dirty: Dirty,
    uploaders: Mutex<Vec<JoinHandle<()>>>,
    /// The lease was lost: nothing is uploaded any more.
    halted: AtomicBool,
    /// The flock on `cache-dir/lock`, held while this process uses it.
    _lock: File,
}

fn einval(what: String) -> StoreError {
    StoreError::new(libc::EINVAL, what)
}

fn eio(what: String) -> StoreError {
    StoreError::new(libc::EIO, what)
}

impl<B: ChunkBackend + 'static> WriteBack<B> {
    /// No cache: every call goes to `inner`.
    pub fn direct(inner: Fenced<B>) -> WriteBack<B> {
        WriteBack {
            inner: Arc::new(inner),
            cache: None,
        }
    }

    /// The cache in `settings.dir` in front of `inner`, for the disk
    /// named `disk` (a cache directory serves one disk only) with chunks
    /// of `chunk_size`. A journal left by a crash is replayed first.
    pub fn cached(
        inner: Fenced<B>,
        settings: &CacheSettings,
        chunk_size: u64,
        disk: &str,
    ) -> Result<WriteBack<B>, StoreError> {
        let dir = &settings.dir;
        let lock = lock_dir(dir)?;
        check_disk(dir, disk)?;
        let segment_size = (settings.size / 4)
            .min(MAX_SEGMENT)
            .max(chunk_size + 2 * HEADER_LEN as u64);
        let found = Journal::open(&dir.join("journal"), settings.size, segment_size)?;
        let inner = Arc::new(inner);
        let cache = Arc::new(Cache {
            dir: dir.clone(),
            chunk_size,
            inner: inner.clone(),
            journal: found.journal,
            dirty: Dirty::default(),
            uploaders: Mutex::new(Vec::new()),
            halted: AtomicBool::new(false),
            _lock: lock,
        });
        cache.replay(found.entries, found.owner)?;
        let mut uploaders = cache.uploaders.lock_ignoring_poison();
        for n in 0..settings.uploaders.max(1) {
            let uploader = cache.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("cache-upload-{n}"))
                .spawn(move || uploader.upload_until_stopped());
            match spawned {
                Ok(handle) => uploaders.push(handle),
                Err(e) => {
                    // The ones already started must not outlive the error.
                    cache.dirty.stop();
                    return Err(eio(format!("starting the cache's uploads: {e}")));
                }
            }
        }
        drop(uploaders);
        Ok(WriteBack {
            inner,
            cache: Some(cache),
        })
    }
}

impl<B: ChunkBackend> WriteBack<B> {
    pub fn lease(&self) -> &LeaseKeeper {
        self.inner.lease()
    }

    /// At unload: uploads what the cache holds, stops its threads, and
    /// releases the lease, unless writes are left only in the journal.
    pub fn shut_down(&self) {
        if let Some(cache) = &self.cache {
            let clean = cache
                .dirty
                .wait_clean(DRAIN_LIMIT, || cache.halted.load(Ordering::Relaxed));
            cache.dirty.stop();
            for handle in cache.uploaders.lock_ignoring_poison().drain(..) {
                let _ = handle.join();
            }
            let cleared = clean && matches!(cache.journal.clear_if_stored(), Ok(true));
            if !cleared {
                let _ = cache.journal.sync();
                log::error!(
                    "{}: {} bytes of journal are not in the store yet: they are replayed \
                     at the next start; the lease is kept until then",
                    cache.dir.display(),
                    cache.journal.live_bytes()
                );
                return;
            }
        }
        self.inner.lease().release();
    }
}

impl<B: ChunkBackend> Cache<B> {
    /// Stores what a crashed run left in the journal, or refuses to.
    fn replay(&self, entries: Vec<Entry>, owner: Option<u64>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let lease = self.inner.lease().for_writing().map_err(|e| {
            StoreError::new(
                e.errno,
                format!(
                    "{}: the journal holds writes not yet in the store, and storing them \
                     needs the disk's lease: {e}",
                    self.dir.display()
                ),
            )
        })?;
        if owner.is_none() || lease.taken_from() != owner {
            // Taken only to look: not kept by a process that will not serve.
            self.inner.lease().release();
            return Err(einval(format!(
                "{}: the journal holds {} writes not yet in the store, but the disk was \
                 held by another writer since they were made (or its lease was released): \
                 storing them now could put older data over newer. Nothing was changed; \
                 to discard these writes, move {} away",
                self.dir.display(),
                entries.len(),
                self.dir.join("journal").display()
            )));
        }
        self.journal.claim(lease.token())?;
        let mut chunks: BTreeMap<u64, Vec<Entry>> = BTreeMap::new();
        for entry in entries {
            chunks.entry(entry.header.chunk).or_default().push(entry);
        }
        log::info!(
            "{}: replaying the journal into {} chunks before serving the disk",
            self.dir.display(),
            chunks.len()
        );
        for (&index, entries) in &chunks {
            self.upload(index, entries).map_err(|e| {
                StoreError::new(
                    e.errno,
                    format!(
                        "{}: replaying the journal (chunk {index}): {e}; the journal is kept \
                         and replayed at the next start",
                        self.dir.display()
                    ),
                )
            })?;
            self.journal.stored(entries)?;
        }
        self.journal.clear_if_stored()?;
        Ok(())
    }

    fn upload_until_stopped(&self) {
        while let Some(upload) = self.dirty.next() {
            let index = upload.index;
            match self.upload(index, &upload.entries) {
                Ok(()) => {
                    let stored = self.dirty.finished(index, upload.upto, true);
                    if let Err(e) = self.journal.stored(&stored) {
                        log::error!("{}: {e}", self.dir.display());
                    }
                }
                Err(e) if e.errno == libc::EROFS => {
                    self.dirty.finished(index, upload.upto, false);
                    self.halted.store(true, Ordering::Relaxed);
                    log::error!(
                        "{}: uploads stopped, the disk's lease is lost: {e}",
                        self.dir.display()
                    );
                    self.dirty.stop();
                    return;
                }
                Err(e) => {
                    self.dirty.finished(index, upload.upto, false);
                    log::warn!(
                        "{}: uploading chunk {index} failed, trying again in {RETRY_PAUSE:?}: {e}",
                        self.dir.display()
                    );
                    self.dirty.pause(RETRY_PAUSE);
                }
            }
        }
    }

    /// Fills `buf` with chunk `index`'s bytes from `at`: the stored
    /// object (not read when `entries` cover the range) with `entries`
    /// applied over it.
    fn compose(
        &self,
        index: u64,
        entries: &[Entry],
        at: u64,
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        let end = at + buf.len() as u64;
        if !covers(ranges(entries), at, end) && !self.inner.read(index, at, buf)? {
            buf.fill(0);
        }
        overlay(entries, at, buf)
    }

    /// Stores chunk `index` with `entries` applied, as one whole object.
    fn upload(&self, index: u64, entries: &[Entry]) -> Result<(), StoreError> {
        let mut image = vec![0u8; self.chunk_size as usize];
        self.compose(index, entries, 0, &mut image)?;
        if is_zero(&image) {
            self.inner.delete(index, true)
        } else {
            self.inner.write(index, 0, &image, true)
        }
    }

    fn append(&self, header: Header, payload: &[u8], fua: bool) -> Result<(), StoreError> {
        let token = self.inner.lease().checked_token()?;
        let entry = self.journal.append(header, payload, token)?;
        self.dirty.add(entry);
        if fua {
            self.journal.sync()?;
        }
        Ok(())
    }

    fn exists(&self, index: u64) -> Result<bool, StoreError> {
        Ok(self.dirty.contains(index) || !self.inner.existing(index, index)?.is_empty())
    }

    fn zero(&self, index: u64, offset: u64, len: u64, fua: bool) -> Result<(), StoreError> {
        let header = Header {
            kind: Kind::Zero,
            seq: 0,
            chunk: index,
            offset,
            len,
        };
        self.append(header, &[], fua)
    }
}

/// Each entry's chunk-relative range.
fn ranges(entries: &[Entry]) -> Vec<(u64, u64)> {
    entries
        .iter()
        .map(|e| (e.header.offset, e.header.offset + e.header.len))
        .collect()
}

/// Applies `entries`, in order, to `buf`, which holds the chunk's bytes
/// from `at`.
fn overlay(entries: &[Entry], at: u64, buf: &mut [u8]) -> Result<(), StoreError> {
    let end = at + buf.len() as u64;
    for entry in entries {
        let (start, stop) = (entry.header.offset, entry.header.offset + entry.header.len);
        let (from, to) = (start.max(at), stop.min(end));
        if from >= to {
            continue;
        }
        let part = &mut buf[(from - at) as usize..(to - at) as usize];
        match entry.header.kind {
            Kind::Zero => part.fill(0),
            Kind::Data => entry
                .segment
                .read_at(part, entry.data_at + (from - start))?,
        }
    }
    Ok(())
}

/// Takes `dir/lock`: one process per cache directory.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    journal::create_dir_durably(dir)?;
    let path = dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| eio(format!("opening {}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => StoreError::new(
                libc::EBUSY,
                format!("cache-dir {} is in use by another process", dir.display()),
            ),
            _ => eio(format!("locking {}: {e}", path.display())),
        });
    }
    Ok(file)
}

/// `dir/disk` names the disk the cache belongs to: written at first use,
/// checked at every later one.
fn check_disk(dir: &Path, disk: &str) -> Result<(), StoreError> {
    let path = dir.join("disk");
    match fs::read_to_string(&path) {
        Ok(stored) if stored.trim_end() == disk => Ok(()),
        Ok(stored) => Err(einval(format!(
            "cache-dir {} belongs to the disk {}, not {disk}: give each disk its own cache-dir",
            dir.display(),
            stored.trim_end()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            journal::replace_durably(dir, "disk", &format!("{disk}\n"))
        }
        Err(e) => Err(eio(format!("reading {}: {e}", path.display()))),
    }
}

impl<B: ChunkBackend> ChunkBackend for WriteBack<B> {
    fn read(&self, index: u64, offset: u64, buf: &mut [u8]) -> Result<bool, StoreError> {
        let Some(cache) = &self.cache else {
            return self.inner.read(index, offset, buf);
        };
        // The records first, then the object: an upload that lands in
        // between only stores what these records already say.
        let entries = cache.dirty.entries(index);
        if entries.is_empty() {
            return self.inner.read(index, offset, buf);
        }
        cache.compose(index, &entries, offset, buf)?;
        Ok(true)
    }

    fn write(&self, index: u64, offset: u64, data: &[u8], fua: bool) -> Result<(), StoreError> {
        let Some(cache) = &self.cache else {
            return self.inner.write(index, offset, data, fua);
        };
        let header = Header {
            kind: Kind::Data,
            seq: 0,
            chunk: index,
            offset,
            len: data.len() as u64,
        };
        cache.append(header, data, fua)
    }

    fn delete(&self, index: u64, fua: bool) -> Result<(), StoreError> {
        let Some(cache) = &self.cache else {
            return self.inner.delete(index, fua);
        };
        if !cache.exists(index)? {
            return Ok(());
        }
        cache.zero(index, 0, cache.chunk_size, fua)
    }

    fn delete_many(&self, indices: &[u64], fua: bool) -> Result<(), StoreError> {
        if self.cache.is_none() {
            return self.inner.delete_many(indices, fua);
        }
        indices
            .iter()
            .try_for_each(|&index| self.delete(index, fua))
    }

    fn existing(&self, first: u64, last: u64) -> Result<Vec<u64>, StoreError> {
        let mut existing = self.inner.existing(first, last)?;
        if let Some(cache) = &self.cache {
            // A dirty chunk may end up all zeros: "exists" is the safe
            // answer (data, never a wrong hole).
            existing.extend(cache.dirty.chunks_in(first, last));
            existing.sort_unstable();
            existing.dedup();
        }
        Ok(existing)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let Some(cache) = &self.cache else {
            return self.inner.flush();
        };
        self.inner.lease().check()?;
        cache.journal.sync()
    }

    fn partial_writes(&self) -> bool {
        // The journal takes records of any size.
        self.cache.is_some() || self.inner.partial_writes()
    }

    fn zero_part(&self, index: u64, offset: u64, len: u64, fua: bool) -> Result<(), StoreError> {
        let Some(cache) = &self.cache else {
            return self.inner.zero_part(index, offset, len, fua);
        };
        cache.zero(index, offset, len, fua)
    }

    fn layout(&self, index: u64, offset: u64, len: u64) -> Result<Vec<ChunkExtent>, StoreError> {
        if self.cache.is_some() {
            return Ok(vec![ChunkExtent {
                offset,
                len,
                data: true,
            }]);
        }
        self.inner.layout(index, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Geometry;
    use crate::lease::tests::MemoryLease;
    use crate::lease::LeaseSettings;
    use crate::memory::MemoryBackend;
    use crate::store::ChunkStore;

    const CHUNK: u64 = 64 << 10;
    const SIZE: u64 = 16 * CHUNK;

    fn cached_store(dir: &Path) -> ChunkStore<WriteBack<MemoryBackend>> {
        let lease = LeaseKeeper::new(Arc::new(MemoryLease::default()), LeaseSettings::default());
        let settings = CacheSettings {
            dir: dir.to_owned(),
            size: 64 << 20,
            uploaders: 3,
        };
        let backend = WriteBack::cached(
            Fenced::new(MemoryBackend::new(CHUNK, false), lease),
            &settings,
            CHUNK,
            "mem/disk",
        )
        .unwrap();
        ChunkStore::new(Geometry::new(SIZE, CHUNK).unwrap(), backend)
    }

    /// Random writes, zeroes and trims through the cache read back like a
    /// model at every step (journal over the store, mid-upload), and after
    /// a clean stop the store alone equals the model.
    #[test]
    fn reads_and_the_store_after_a_stop_equal_a_model() {
        let dir = std::env::temp_dir().join(format!("writeback-model-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = cached_store(&dir);
        let mut model = vec![0u8; SIZE as usize];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for step in 0..600u64 {
            let offset = next(SIZE - 1);
            let len = (1 + next(3 * CHUNK)).min(SIZE - offset);
            match next(4) {
                0 | 1 => {
                    let byte = (step % 251 + 1) as u8;
                    let data = vec![byte; len as usize];
                    store.write(&data, offset, next(8) == 0).unwrap();
                    model[offset as usize..(offset + len) as usize].fill(byte);
                }
                2 => {
                    store.zero(offset, len, false).unwrap();
                    model[offset as usize..(offset + len) as usize].fill(0);
                }
                _ => store.flush().unwrap(),
            }
            let (at, span) = (next(SIZE - 1), 1 + next(2 * CHUNK));
            let span = span.min(SIZE - at);
            let mut buf = vec![0xeeu8; span as usize];
            store.read(&mut buf, at).unwrap();
            assert!(
                buf == model[at as usize..(at + span) as usize],
                "step {step}: read of {span} at {at} differs from the model"
            );
        }
        store.backend().shut_down();
        assert!(
            journal::Journal::open(&dir.join("journal"), 1 << 30, 1 << 20)
                .unwrap()
                .entries
                .is_empty()
        );
        let memory = &store.backend().inner.inner_for_tests();
        let chunks = memory.chunks.lock().unwrap();
        for index in 0..SIZE / CHUNK {
            let range = (index * CHUNK) as usize..((index + 1) * CHUNK) as usize;
            match chunks.get(&index) {
                Some(bytes) => assert!(bytes[..] == model[range], "chunk {index} differs"),
                None => assert!(model[range].iter().all(|&b| b == 0), "chunk {index} lost"),
            }
        }
        drop(chunks);
        fs::remove_dir_all(&dir).unwrap();
    }
}
