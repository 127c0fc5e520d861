//! The chunk files of one disk, as a chunk-store backend.
//!
//! Layout of `dir=`:
//! - `chunk-store.meta`: size, chunk size, format version (chunk-store's
//!   metadata; written atomically: temp file, fsync, rename, fsync dir);
//! - `chunks/XXXXXX/YYYYYYYYYYYYYYYY`: chunk number Y (16 hex digits) in
//!   fan-out directory X = Y >> 8 (6 hex digits), so no directory holds
//!   more than 256 chunks (a 1 TiB disk of 4 MiB chunks: 1024 directories).
//!
//! Chunk files are created sparse at full chunk length; all-zero chunks are
//! deleted and zeroed parts hole-punched, so the directory stays as sparse
//! as the data. Flush makes every written chunk durable (`fdatasync`) and
//! every created or removed name durable (`fsync` of the directories).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chunk_store::{
    open_metadata, ChunkBackend, ChunkExtent, Metadata, MetadataRequest, MetadataStore, StoreError,
};
use lock_ext::LockIgnoringPoison;

const METADATA_FILE: &str = "chunk-store.meta";
const CHUNKS_DIR: &str = "chunks";
/// 256 chunks per fan-out directory.
const FANOUT_BITS: u32 = 8;
/// Open chunk files kept: a small request then costs one pread/pwrite,
/// not an open and a close around it (path lookups through two
/// directories). Cleared when full (rare: 512 chunks of 4 MiB = 2 GiB of
/// working set), entries dropped when their chunk is deleted.
const OPEN_FILES: usize = 512;

/// Its locks ignore poisoning: each critical section is one insert,
/// remove, lookup or drain of a set or map, valid after a panic anywhere.
pub struct FileChunks {
    root: PathBuf,
    chunk_size: u64,
    /// Chunks written since the last flush (their data needs fdatasync).
    dirty_files: Mutex<HashSet<u64>>,
    /// Directories whose entries changed since the last flush.
    dirty_dirs: Mutex<HashSet<PathBuf>>,
    /// Chunk files open for reading and writing (see OPEN_FILES).
    open_files: Mutex<HashMap<u64, Arc<File>>>,
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// The disk's metadata file, for chunk-store's one open sequence.
struct DirMetadata<'a> {
    dir: &'a Path,
}

fn einval(why: String) -> StoreError {
    StoreError::new(libc::EINVAL, why)
}

impl MetadataStore for DirMetadata<'_> {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn metadata_name(&self) -> String {
        self.dir.join(METADATA_FILE).display().to_string()
    }

    fn read_metadata(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match fs::read(self.dir.join(METADATA_FILE)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(einval(format!("reading {}: {e}", self.metadata_name()))),
        }
    }

    fn foreign_data(&self) -> Result<Option<String>, StoreError> {
        // The lease's own files (a writer may have taken the lease of a
        // disk it then failed to create) are no foreign data.
        let not_empty = fs::read_dir(self.dir).is_ok_and(|mut entries| {
            entries.any(|entry| {
                entry.is_ok_and(|e| !e.file_name().to_string_lossy().starts_with("chunk-store."))
            })
        });
        Ok(not_empty.then(|| {
            format!(
                "{} is not empty and has no {METADATA_FILE}: not a sharded disk",
                self.dir.display()
            )
        }))
    }

    fn write_metadata(&self, metadata: &Metadata) -> Result<(), StoreError> {
        let root = self.dir.join(CHUNKS_DIR);
        fs::create_dir_all(&root)
            .map_err(|e| einval(format!("creating {}: {e}", root.display())))?;
        write_metadata(self.dir, metadata)
            .map_err(|e| einval(format!("writing {}: {e}", self.metadata_name())))
    }
}

/// Opens (or creates, with `size=`) the disk in `dir`: returns its
/// metadata and the chunk backend. `before_write` runs before the
/// metadata is written (creating or growing the disk): it takes the lease.
pub fn open_disk(
    dir: &Path,
    request: &MetadataRequest,
    before_write: &dyn Fn() -> Result<(), StoreError>,
) -> Result<(Metadata, FileChunks), StoreError> {
    let metadata = open_metadata(&DirMetadata { dir }, request, before_write)?;
    let root = dir.join(CHUNKS_DIR);
    if !root.is_dir() {
        return Err(einval(format!(
            "{} is missing: the disk is damaged",
            root.display()
        )));
    }
    Ok((
        metadata,
        FileChunks {
            root,
            chunk_size: metadata.chunk_size,
            dirty_files: Mutex::new(HashSet::new()),
            dirty_dirs: Mutex::new(HashSet::new()),
            open_files: Mutex::new(HashMap::new()),
        },
    ))
}

/// Atomic and durable: a crash leaves the old metadata or the new one.
fn write_metadata(dir: &Path, metadata: &Metadata) -> io::Result<()> {
    let temp = dir.join(format!("{METADATA_FILE}.tmp"));
    let file = File::create(&temp)?;
    file.write_all_at(&metadata.to_bytes(), 0)?;
    file.sync_all()?;
    fs::rename(&temp, dir.join(METADATA_FILE))?;
    sync_dir(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The disk directory itself may be new.
        sync_dir(parent)?;
    }
    Ok(())
}

impl FileChunks {
    fn fanout_dir(&self, index: u64) -> PathBuf {
        self.root.join(format!("{:06x}", index >> FANOUT_BITS))
    }

    fn path(&self, index: u64) -> PathBuf {
        self.fanout_dir(index).join(format!("{index:016x}"))
    }

    fn error(&self, what: &str, index: u64, e: &io::Error) -> StoreError {
        StoreError::io(
            format!("{what} chunk {index} ({})", self.path(index).display()),
            e,
        )
    }

    fn remember(&self, index: u64, file: File) -> Arc<File> {
        let file = Arc::new(file);
        let mut open = self.open_files.lock_ignoring_poison();
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        open.insert(index, Arc::clone(&file));
        file
    }

    /// The open file of an existing chunk, `None` if the chunk is missing.
    /// The caller holds the chunk's lock, so no delete races with this.
    fn open_existing(&self, index: u64) -> io::Result<Option<Arc<File>>> {
        if let Some(file) = self.open_files.lock_ignoring_poison().get(&index) {
            return Ok(Some(Arc::clone(file)));
        }
        match OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(index))
        {
            Ok(file) => Ok(Some(self.remember(index, file))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            // A read-only filesystem or file: still readable, not cached.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES)) => {
                match File::open(self.path(index)) {
                    Ok(file) => Ok(Some(Arc::new(file))),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Opens chunk `index` for writing, creating it (sparse, full length)
    /// and its fan-out directory when missing. Returns whether it is new.
    fn open_for_write(&self, index: u64) -> io::Result<(Arc<File>, bool)> {
        if let Some(file) = self.open_existing(index)? {
            return Ok((file, false));
        }
        let path = self.path(index);
        let dir = self.fanout_dir(index);
        if !dir.is_dir() {
            match fs::create_dir(&dir) {
                Ok(()) => {
                    self.dirty_dirs
                        .lock_ignoring_poison()
                        .insert(self.root.clone());
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        file.set_len(self.chunk_size)?;
        self.dirty_dirs.lock_ignoring_poison().insert(dir);
        Ok((self.remember(index, file), true))
    }

    /// FUA: this chunk's data and, if it is new, its name (and its fan-out
    /// directory's name) durable now.
    fn sync_now(&self, index: u64, file: &File, new: bool) -> io::Result<()> {
        file.sync_data()?;
        if new {
            sync_dir(&self.fanout_dir(index))?;
            sync_dir(&self.root)?;
        }
        Ok(())
    }
}

impl ChunkBackend for FileChunks {
    fn read(&self, index: u64, offset: u64, buf: &mut [u8]) -> Result<bool, StoreError> {
        let Some(file) = self
            .open_existing(index)
            .map_err(|e| self.error("opening", index, &e))?
        else {
            return Ok(false);
        };
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                // A chunk file cut short (by hand, or a crash while it
                // was being created) reads as zeros past its end.
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error("reading", index, &e)),
            }
        }
        Ok(true)
    }

    fn write(&self, index: u64, offset: u64, data: &[u8], fua: bool) -> Result<(), StoreError> {
        let (file, new) = self
            .open_for_write(index)
            .map_err(|e| self.error("creating", index, &e))?;
        file.write_all_at(data, offset)
            .map_err(|e| self.error("writing", index, &e))?;
        if fua {
            self.sync_now(index, &file, new)
                .map_err(|e| self.error("syncing", index, &e))?;
        } else {
            self.dirty_files.lock_ignoring_poison().insert(index);
        }
        Ok(())
    }

    fn delete(&self, index: u64, fua: bool) -> Result<(), StoreError> {
        self.open_files.lock_ignoring_poison().remove(&index);
        match fs::remove_file(self.path(index)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.error("deleting", index, &e)),
        }
        self.dirty_files.lock_ignoring_poison().remove(&index);
        let dir = self.fanout_dir(index);
        if fua {
            sync_dir(&dir).map_err(|e| self.error("syncing the directory of", index, &e))?;
        } else {
            self.dirty_dirs.lock_ignoring_poison().insert(dir);
        }
        Ok(())
    }

    fn existing(&self, first: u64, last: u64) -> Result<Vec<u64>, StoreError> {
        let mut found = Vec::new();
        for group in (first >> FANOUT_BITS)..=(last >> FANOUT_BITS) {
            let dir = self.fanout_dir(group << FANOUT_BITS);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StoreError::io(format!("listing {}", dir.display()), &e));
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(index) = name
                    .to_str()
                    .filter(|n| n.len() == 16)
                    .and_then(|n| u64::from_str_radix(n, 16).ok())
                else {
                    continue; // Not a chunk file (e.g. an editor's leftovers).
                };
                if (first..=last).contains(&index) {
                    found.push(index);
                }
            }
        }
        found.sort_unstable();
        Ok(found)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let files: Vec<u64> = self.dirty_files.lock_ignoring_poison().drain().collect();
        let dirs: Vec<PathBuf> = self.dirty_dirs.lock_ignoring_poison().drain().collect();
        let result = (|| {
            for &index in &files {
                // Flush holds no chunk lock: it must not put a file into
                // the cache (a concurrent delete could leave a stale entry
                // for an unlinked file there), only use what is cached.
                let cached = self.open_files.lock_ignoring_poison().get(&index).cloned();
                let file = match cached {
                    Some(file) => file,
                    None => match File::open(self.path(index)) {
                        Ok(file) => Arc::new(file),
                        // Deleted since: its removal is in a dirty directory.
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => return Err(self.error("opening", index, &e)),
                    },
                };
                file.sync_data()
                    .map_err(|e| self.error("syncing", index, &e))?;
            }
            // Fan-out directories before the root, so a new chunk's name is
            // durable along its whole path.
            let mut dirs = dirs.clone();
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in &dirs {
                sync_dir(dir)
                    .map_err(|e| StoreError::io(format!("syncing {}", dir.display()), &e))?;
            }
            Ok(())
        })();
        if result.is_err() {
            // Whatever was not made durable must be retried by the next flush.
            self.dirty_files.lock_ignoring_poison().extend(files);
            self.dirty_dirs.lock_ignoring_poison().extend(dirs);
        }
        result
    }

    fn zero_part(&self, index: u64, offset: u64, len: u64, fua: bool) -> Result<(), StoreError> {
        let Some(file) = self
            .open_existing(index)
            .map_err(|e| self.error("opening", index, &e))?
        else {
            return Ok(());
        };
        // SAFETY: fallocate on an fd we own, with a range inside the chunk.
        let punched = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if punched != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(self.error("punching a hole in", index, &e));
            }
            // A filesystem without hole punching: write the zeros.
            let zeros = vec![0u8; len.min(1 << 20) as usize];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(zeros.len() as u64);
                file.write_all_at(&zeros[..n as usize], offset + done)
                    .map_err(|e| self.error("zeroing", index, &e))?;
                done += n;
            }
        }
        if fua {
            file.sync_data()
                .map_err(|e| self.error("syncing", index, &e))?;
        } else {
            self.dirty_files.lock_ignoring_poison().insert(index);
        }
        Ok(())
    }

    fn layout(&self, index: u64, offset: u64, len: u64) -> Result<Vec<ChunkExtent>, StoreError> {
        let file = match File::open(self.path(index)) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(vec![ChunkExtent {
                    offset,
                    len,
                    data: false,
                }])
            }
            Err(e) => return Err(self.error("opening", index, &e)),
        };
        let fd = file.as_raw_fd();
        let end = offset + len;
        let mut extents = Vec::new();
        let mut position = offset;
        while position < end {
            // SAFETY: lseek on an fd we own.
            let data = unsafe { libc::lseek(fd, position as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    // No data from here to the end of the file.
                    extents.push(ChunkExtent {
                        offset: position,
                        len: end - position,
                        data: false,
                    });
                    break;
                }
                // No SEEK_DATA support: report data (always correct).
                return Ok(vec![ChunkExtent {
                    offset,
                    len,
                    data: true,
                }]);
            }
            let data = (data as u64).min(end);
            if data > position {
                extents.push(ChunkExtent {
                    offset: position,
                    len: data - position,
                    data: false,
                });
                position = data;
                continue;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, position as libc::off_t, libc::SEEK_HOLE) };
            let stop = if hole < 0 {
                end
            } else {
                (hole as u64).min(end)
            };
            let stop = stop.max(position + 1).min(end);
            extents.push(ChunkExtent {
                offset: position,
                len: stop - position,
                data: true,
            });
            position = stop;
        }
        Ok(extents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunk_store::{ChunkStore, Geometry};

    fn request(size: Option<u64>, chunk: Option<u64>) -> MetadataRequest {
        MetadataRequest {
            size,
            chunk_size: chunk,
            allow_grow: false,
        }
    }

    #[test]
    fn creates_then_reopens_and_refuses_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        assert!(open_disk(&disk, &request(None, None), &|| Ok(())).is_err());
        let (m, _) = open_disk(&disk, &request(Some(1 << 20), Some(4096)), &|| Ok(())).unwrap();
        assert_eq!((m.size, m.chunk_size), (1 << 20, 4096));
        let (again, _) = open_disk(&disk, &request(None, None), &|| Ok(())).unwrap();
        assert_eq!(again, m);
        assert!(open_disk(&disk, &request(Some(2 << 20), None), &|| Ok(())).is_err());
        assert!(open_disk(&disk, &request(None, Some(8192)), &|| Ok(())).is_err());
        // A foreign non-empty directory is never turned into a disk.
        fs::write(dir.path().join("other"), b"x").unwrap();
        assert!(open_disk(dir.path(), &request(Some(1 << 20), None), &|| Ok(())).is_err());
    }

    #[test]
    fn chunk_files_are_sparse_fanned_out_and_deleted_when_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let (m, files) = open_disk(dir.path(), &request(Some(4096 * 600), Some(4096)), &|| {
            Ok(())
        })
        .unwrap();
        let store = ChunkStore::new(Geometry::new(m.size, m.chunk_size).unwrap(), files);
        store.write(&[7u8; 100], 4096 * 300 + 5, false).unwrap();
        let path = dir.path().join("chunks/000001/000000000000012c");
        assert_eq!(fs::metadata(&path).unwrap().len(), 4096);
        let mut buf = [0u8; 110];
        store.read(&mut buf, 4096 * 300).unwrap();
        assert_eq!(&buf[5..105], &[7u8; 100]);
        assert_eq!(buf[0], 0);
        let extents = store.extents(0, 4096 * 600).unwrap();
        assert!(extents
            .iter()
            .any(|e| !e.hole && e.offset <= 4096 * 300 + 5));
        store.zero(4096 * 300, 4096, false).unwrap();
        assert!(!path.exists());
        store.flush().unwrap();
    }
}
