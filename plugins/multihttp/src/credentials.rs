//! The Authorization header, and re-reading `password=+FILE` so that a
//! password can be rotated without restarting nbdkit (issue #20).
//!
//! The file is re-read when it is rewritten (see [`WatchedFile`]) and at
//! once when a server answers 401. A literal password or `password=-FD`
//! cannot be read again and keeps the start-up value.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use plugin_glue::secret::{wipe, Secret};

use crate::transport::basic_authorization;
use crate::watched_file::WatchedFile;

pub struct Credentials {
    user: String,
    /// `Basic base64(user:password)`, never in ordinary memory.
    header: RwLock<Secret>,
    /// `password=+FILE`: the file to re-read.
    file: Option<WatchedFile>,
}

impl Credentials {
    pub fn new(user: &str, password: Option<&Secret>, file: Option<PathBuf>) -> Credentials {
        Credentials {
            user: user.to_owned(),
            header: RwLock::new(basic_authorization(user, password)),
            // The file as nbdkit read it moments ago: a change from here on
            // is a rotation.
            file: file.map(WatchedFile::new),
        }
    }

    /// The header value for the next request.
    pub fn header(&self) -> RwLockReadGuard<'_, Secret> {
        self.header.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Before a request: re-reads the file if it was rewritten.
    pub fn refresh_if_changed(&self) {
        if let Some(file) = self.file.as_ref().filter(|f| f.changed()) {
            self.reload(file.path());
        }
    }

    /// After a 401: re-reads the file now (whether or not its stamp
    /// changed: it may have been rewritten within the stamp's precision).
    /// `true` when the password changed, so the request is worth sending
    /// once more.
    pub fn reload_after_refusal(&self) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        file.changed_now();
        self.reload(file.path())
    }

    /// Reads the file's first line as nbdkit does and swaps the header in
    /// when the password differs. Never logs the password.
    fn reload(&self, path: &Path) -> bool {
        let password = match read_first_line(path) {
            Ok(password) => password,
            Err(e) => {
                log::warn!(
                    "password file {}: cannot read it again ({e}); keeping the password in use",
                    path.display()
                );
                return false;
            }
        };
        let header = basic_authorization(&self.user, Some(&password));
        let mut current = self.header.write().unwrap_or_else(|e| e.into_inner());
        if *current == header {
            return false;
        }
        *current = header;
        log::info!("password file {}: read a new password", path.display());
        true
    }
}

/// The first line of `path` without its newline (nbdkit's `+FILE`), in
/// [`Secret`] memory; the ordinary buffer it was read into is zeroed.
fn read_first_line(path: &Path) -> std::io::Result<Secret> {
    let mut bytes = std::fs::read(path)?;
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let secret = Secret::new(&bytes[..end]);
    wipe(&mut bytes);
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_for(password: &[u8]) -> Secret {
        basic_authorization("alice", Some(&Secret::new(password)))
    }

    #[test]
    fn a_rewritten_file_is_read_again_and_a_401_reads_it_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "old\n").unwrap();
        let credentials = Credentials::new("alice", Some(&Secret::new(b"old")), Some(path.clone()));
        assert!(
            !credentials.reload_after_refusal(),
            "same password: no retry"
        );
        std::fs::write(&path, "new-and-longer\n").unwrap();
        assert!(credentials.reload_after_refusal());
        assert!(*credentials.header() == header_for(b"new-and-longer"));
        std::fs::write(&path, "third\n").unwrap();
        std::thread::sleep(crate::watched_file::CHECK_INTERVAL);
        credentials.refresh_if_changed();
        assert!(*credentials.header() == header_for(b"third"));
        // A file that cannot be read keeps the password in use.
        std::fs::remove_file(&path).unwrap();
        assert!(!credentials.reload_after_refusal());
        assert!(*credentials.header() == header_for(b"third"));
    }

    #[test]
    fn a_password_without_a_file_is_never_re_read() {
        let credentials = Credentials::new("alice", Some(&Secret::new(b"x")), None);
        assert!(!credentials.reload_after_refusal());
        credentials.refresh_if_changed();
        assert!(*credentials.header() == header_for(b"x"));
    }
}
