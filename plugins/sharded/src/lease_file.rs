//! The disk's lease as files in `dir=` (chunk-store's [`LeaseStore`]):
//! - `chunk-store.lease`: the lease record, replaced atomically (temp
//!   file, fsync, rename, fsync of the directory);
//! - `chunk-store.lock`: never replaced, so locks on it mean something.
//!   Its holder holds `flock(LOCK_EX)` on it for as long as it writes:
//!   the kernel frees that lock when the process dies, so a crashed
//!   writer's lease is taken at once, not after lease-time. Every lease
//!   update (read, compare, replace) runs under an OFD lock on its first
//!   byte (independent of the flock on Linux), so two writers' updates
//!   never interleave: a takeover and a renewal cannot both win.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chunk_store::lease::{Condition, LeaseStore, Version, Written};
use chunk_store::StoreError;
use lock_ext::LockIgnoringPoison;

const LEASE_FILE: &str = "chunk-store.lease";
const LOCK_FILE: &str = "chunk-store.lock";
/// An update lock held longer than this belongs to a stopped process:
/// waiting for it would stop this one too.
const UPDATE_LOCK_WAIT: Duration = Duration::from_secs(2);

pub struct FileLease {
    dir: PathBuf,
    /// The lock file while this process holds its flock.
    holder: Mutex<Option<File>>,
}

fn eio(what: String) -> StoreError {
    StoreError::new(libc::EIO, what)
}

impl FileLease {
    pub fn new(dir: &Path) -> FileLease {
        FileLease {
            dir: dir.to_owned(),
            holder: Mutex::new(None),
        }
    }

    fn lease_path(&self) -> PathBuf {
        self.dir.join(LEASE_FILE)
    }

    fn open_lock_file(&self) -> Result<File, StoreError> {
        let path = self.dir.join(LOCK_FILE);
        fs::create_dir_all(&self.dir)
            .and_then(|()| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
            })
            .map_err(|e| eio(format!("opening {}: {e}", path.display())))
    }

    /// Runs `update` under the OFD lock on the lock file's first byte.
    fn updating<T>(&self, update: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let file = self.open_lock_file()?;
        let started = Instant::now();
        loop {
            match ofd_lock(&file, libc::F_WRLCK as libc::c_short) {
                Ok(()) => break,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                    if started.elapsed() >= UPDATE_LOCK_WAIT {
                        return Err(eio(format!(
                            "{}: another process has been updating the lease for {UPDATE_LOCK_WAIT:?} (stopped?)",
                            self.dir.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(eio(format!(
                        "locking {}: {e}",
                        self.dir.join(LOCK_FILE).display()
                    )))
                }
            }
        }
        // Closing `file` afterwards drops the OFD lock.
        update()
    }

    fn read_unlocked(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match fs::read(self.lease_path()) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(eio(format!("reading {}: {e}", self.lease_path().display()))),
        }
    }

    fn replace(&self, bytes: &[u8]) -> io::Result<()> {
        let temp = self
            .dir
            .join(format!("{LEASE_FILE}.{}.tmp", std::process::id()));
        let file = File::create(&temp)?;
        std::os::unix::fs::FileExt::write_all_at(&file, bytes, 0)?;
        file.sync_all()?;
        fs::rename(&temp, self.lease_path())?;
        File::open(&self.dir)?.sync_all()
    }
}

/// A version is the content itself: the record changes at every renewal.
fn version_of(bytes: &[u8]) -> Version {
    Version(String::from_utf8_lossy(bytes).into_owned())
}

impl LeaseStore for FileLease {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn read(&self) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        Ok(self.read_unlocked()?.map(|bytes| {
            let version = version_of(&bytes);
            (bytes, version)
        }))
    }

    fn write(&self, bytes: &[u8], condition: Condition<'_>) -> Result<Written, StoreError> {
        self.updating(|| {
            let current = self.read_unlocked()?;
            let holds = match (condition, &current) {
                (Condition::Absent, None) => true,
                (Condition::Unchanged(want), Some(now)) => *want == version_of(now),
                _ => false,
            };
            if !holds {
                return Ok(Written::Conflict);
            }
            self.replace(bytes)
                .map_err(|e| eio(format!("writing {}: {e}", self.lease_path().display())))?;
            Ok(Written::Done)
        })
    }

    fn remove(&self, version: &Version) -> Result<(), StoreError> {
        self.updating(|| {
            if self
                .read_unlocked()?
                .is_some_and(|now| version_of(&now) == *version)
            {
                fs::remove_file(self.lease_path())
                    .and_then(|()| File::open(&self.dir)?.sync_all())
                    .map_err(|e| eio(format!("removing {}: {e}", self.lease_path().display())))?;
            }
            Ok(())
        })?;
        // The holder lock goes with the lease.
        *self.holder.lock_ignoring_poison() = None;
        Ok(())
    }

    fn try_hold(&self) -> Result<Option<bool>, StoreError> {
        let mut holder = self.holder.lock_ignoring_poison();
        if holder.is_some() {
            return Ok(Some(true));
        }
        let file = self.open_lock_file()?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            *holder = Some(file);
            return Ok(Some(true));
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(Some(false)),
            _ => Err(eio(format!(
                "flock of {}: {}",
                self.dir.join(LOCK_FILE).display(),
                io::Error::last_os_error()
            ))),
        }
    }
}

/// A non-blocking OFD lock (`F_OFD_SETLK`) on byte 0 of `file`.
fn ofd_lock(file: &File, kind: libc::c_short) -> io::Result<()> {
    // SAFETY: a zeroed flock is a valid value; fcntl reads it.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 0;
    lock.l_len = 1;
    // SAFETY: F_OFD_SETLK with a valid flock on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
