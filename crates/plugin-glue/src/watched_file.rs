//! A file a plugin reads again when it is rewritten (multihttp's
//! `password=+FILE` and `cafile=`, s3's key files): rotation without
//! restarting nbdkit (issue #20).
//!
//! A rewrite is told by a `stat` (device, inode, size, mtime), looked at
//! no more than once a second on the request path, so a busy disk does
//! not pay a system call per request. A refusal by the server (401, a
//! certificate that does not verify) checks at once instead: the server
//! may have moved to the new secret within the same second.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lock_ext::LockIgnoringPoison;

/// How often, at most, [`WatchedFile::changed`] looks at the file.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What tells a rewritten file apart without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

#[derive(Debug)]
struct Seen {
    /// The file when last looked at (`None`: it could not be stat'ed).
    stamp: Option<Stamp>,
    checked: Option<Instant>,
}

#[derive(Debug)]
pub struct WatchedFile {
    path: PathBuf,
    seen: Mutex<Seen>,
}

impl WatchedFile {
    /// Starts from the file as it is now: the caller has just read it.
    pub fn new(path: PathBuf) -> WatchedFile {
        let stamp = Stamp::of(&path);
        WatchedFile {
            path,
            seen: Mutex::new(Seen {
                stamp,
                checked: Some(Instant::now()),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file was rewritten since last looked at; looks at it
    /// only if [`CHECK_INTERVAL`] has passed. A file that cannot be
    /// stat'ed (being replaced) is no change: the value in use stays.
    pub fn changed(&self) -> bool {
        self.look(false)
    }

    /// As [`WatchedFile::changed`], looking at the file now.
    pub fn changed_now(&self) -> bool {
        self.look(true)
    }

    fn look(&self, now: bool) -> bool {
        let mut seen = self.seen.lock_ignoring_poison();
        if !now && seen.checked.is_some_and(|at| at.elapsed() < CHECK_INTERVAL) {
            return false;
        }
        seen.checked = Some(Instant::now());
        match Stamp::of(&self.path) {
            Some(stamp) if seen.stamp != Some(stamp) => {
                seen.stamp = Some(stamp);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_is_seen_at_once_on_demand_and_after_the_interval_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "one\n").unwrap();
        let file = WatchedFile::new(path.clone());
        assert!(!file.changed_now(), "as read at start");
        std::fs::write(&path, "two, longer\n").unwrap();
        assert!(!file.changed(), "looked at less than a second ago");
        assert!(file.changed_now());
        assert!(!file.changed_now(), "a change is told once");
        // Replaced by rename (a new inode, same size): still a change.
        let next = dir.path().join("f.new");
        std::fs::write(&next, "two, LONGER\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        file.seen.lock().unwrap().checked = None;
        assert!(file.changed());
        // Gone for a moment: no change, the value in use stays.
        std::fs::remove_file(&path).unwrap();
        assert!(!file.changed_now());
    }
}
