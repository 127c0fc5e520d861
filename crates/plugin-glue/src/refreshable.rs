//! A value read from files (multihttp's Authorization header, s3's key
//! pair) that is read again when a file is rewritten or when the server
//! refuses it: secrets rotate without restarting nbdkit (issue #20).
//!
//! Requests take the value with [`Refreshable::current`], an `Arc` they
//! hold while they are on the wire, so a rotation never waits for them
//! and they never see half a value. After a refusal,
//! [`Refreshable::reload_after_refusal`] compares the value in use with
//! the one the refused request carried: of several requests refused at
//! once, every one is resent, not only the one that happened to read the
//! file first.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use lock_ext::RwLockIgnoringPoison;

use crate::watched_file::WatchedFile;

type Reader<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

pub struct Refreshable<T> {
    current: RwLock<Arc<T>>,
    /// Empty for a value that cannot be read again (a literal, `-FD`, the
    /// environment).
    files: Vec<WatchedFile>,
    read: Option<Reader<T>>,
    /// What the value is, for logs: "password file /etc/x". Never the value.
    what: String,
}

impl<T: PartialEq> Refreshable<T> {
    /// A value that stays as it is.
    pub fn fixed(value: T) -> Refreshable<T> {
        Refreshable {
            current: RwLock::new(Arc::new(value)),
            files: Vec::new(),
            read: None,
            what: String::new(),
        }
    }

    /// `value`, just read from `files` by the caller, and `read` to read it
    /// again from them. `what` names it in logs.
    pub fn from_files(
        value: T,
        what: impl Into<String>,
        files: Vec<PathBuf>,
        read: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Refreshable<T> {
        Refreshable {
            current: RwLock::new(Arc::new(value)),
            // As read moments ago: a change from here on is a rotation.
            files: files.into_iter().map(WatchedFile::new).collect(),
            read: Some(Box::new(read)),
            what: what.into(),
        }
    }

    /// The value for the next request, read again first if one of its
    /// files was rewritten (looked at no more than once a second).
    pub fn current(&self) -> Arc<T> {
        // Every file is looked at: each keeps its own stamp up to date.
        let changed = self
            .files
            .iter()
            .fold(false, |changed, file| file.changed() | changed);
        if changed {
            self.reload();
        }
        Arc::clone(&self.current.read_ignoring_poison())
    }

    /// After the server refused a request that carried `used`: reads the
    /// files now (whether or not their stamps changed: a rewrite within
    /// the stamp's precision looks the same). `true` when the value in use
    /// is now another one, so the request is worth sending once more.
    pub fn reload_after_refusal(&self, used: &Arc<T>) -> bool {
        if self.read.is_none() {
            return false;
        }
        for file in &self.files {
            file.changed_now();
        }
        self.reload();
        let current = self.current.read_ignoring_poison();
        !Arc::ptr_eq(&current, used)
    }

    /// Reads the value again and swaps it in when it differs. A file that
    /// cannot be read or parsed (being replaced, or wrong) keeps the value
    /// in use: a bad rotation must not take the disk down.
    fn reload(&self) {
        let Some(read) = &self.read else {
            return;
        };
        let value = match read() {
            Ok(value) => value,
            Err(e) => {
                log::warn!(
                    "{}: cannot read it again ({e}); keeping the value in use",
                    self.what
                );
                return;
            }
        };
        let mut current = self.current.write_ignoring_poison();
        if **current != value {
            *current = Arc::new(value);
            log::info!("{}: read a new value", self.what);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watched_file::CHECK_INTERVAL;

    fn reading(path: PathBuf) -> impl Fn() -> Result<String, String> {
        move || std::fs::read_to_string(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn a_rewrite_is_read_after_the_interval_and_a_refusal_reads_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "one").unwrap();
        let value = Refreshable::from_files(
            "one".to_owned(),
            "test file",
            vec![path.clone()],
            reading(path.clone()),
        );
        let used = value.current();
        assert!(!value.reload_after_refusal(&used), "same value: no resend");
        std::fs::write(&path, "two, longer").unwrap();
        assert_eq!(*value.current(), "one", "looked at less than a second ago");
        assert!(value.reload_after_refusal(&used));
        assert_eq!(*value.current(), "two, longer");
        // A second request refused with the old value is resent too,
        // although the file was already read again for the first.
        assert!(value.reload_after_refusal(&used));
        std::fs::write(&path, "three").unwrap();
        std::thread::sleep(CHECK_INTERVAL);
        assert_eq!(*value.current(), "three");
        // A file that cannot be read keeps the value in use.
        std::fs::remove_file(&path).unwrap();
        let used = value.current();
        assert!(!value.reload_after_refusal(&used));
        assert_eq!(*value.current(), "three");
    }

    #[test]
    fn a_fixed_value_is_never_read_again() {
        let value = Refreshable::fixed(7);
        let used = value.current();
        assert!(!value.reload_after_refusal(&used));
        assert_eq!(*value.current(), 7);
    }
}
