//! What an operator can see of the plugin besides its log: the server in
//! use, how many failovers happened, and each URL's last error and last
//! success. Kept in memory, and with `status-file=PATH` written to a small
//! `key=value` file, replaced atomically (temporary file + rename, so a
//! reader never sees half of it) whenever the server in use or a URL's
//! health changes, and at most every [`REFRESH`] while requests keep
//! succeeding (so `last_success` stays roughly current without a write per
//! request).
//!
//! Requests report every success, so that path is a few relaxed atomics;
//! the lock is only taken for failures, server changes and file writes.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_ext::LockIgnoringPoison;

/// Longest a status file goes without a rewrite while requests succeed.
pub const REFRESH: Duration = Duration::from_secs(10);

/// A URL's health, as last seen.
const UNKNOWN: u8 = 0;
const OK: u8 = 1;
const FAILING: u8 = 2;

fn state_name(state: u8) -> &'static str {
    match state {
        OK => "ok",
        FAILING => "failing",
        _ => "unknown",
    }
}

/// Seconds since the epoch (0 if the clock is before it).
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The last error of one URL.
#[derive(Clone, Default)]
struct LastError {
    at: u64,
    why: String,
}

/// What changes under the lock.
struct Board {
    current: Option<usize>,
    errors: Vec<LastError>,
}

pub struct Health {
    urls: Arc<Vec<String>>,
    file: Option<PathBuf>,
    failovers: AtomicU64,
    /// Per URL: `UNKNOWN`, `OK` or `FAILING`.
    states: Box<[AtomicU8]>,
    /// Per URL: seconds since the epoch of the last success, 0 = never.
    last_success: Box<[AtomicU64]>,
    /// A panic elsewhere must not stop the reporting: the board stays
    /// valid (so its lock ignores poisoning).
    board: Mutex<Board>,
    /// When the file was last written (seconds since the epoch).
    written_at: AtomicU64,
    /// Whether a failed write was already logged (said once, not per change).
    write_failure_logged: AtomicBool,
}

impl Health {
    pub fn new(urls: Arc<Vec<String>>, file: Option<PathBuf>) -> Health {
        let count = urls.len();
        Health {
            file,
            failovers: AtomicU64::new(0),
            states: (0..count).map(|_| AtomicU8::new(UNKNOWN)).collect(),
            last_success: (0..count).map(|_| AtomicU64::new(0)).collect(),
            board: Mutex::new(Board {
                current: None,
                errors: vec![LastError::default(); count],
            }),
            written_at: AtomicU64::new(0),
            write_failure_logged: AtomicBool::new(false),
            urls,
        }
    }

    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Server `index` is now the one in use.
    pub fn server_chosen(&self, index: usize) {
        let mut board = self.board.lock_ignoring_poison();
        board.current = Some(index);
        self.mark_ok(index);
        self.write(&board);
    }

    /// Server `index` was given up after failing with `why`; returns the
    /// number of failovers so far, this one included.
    pub fn server_left(&self, index: usize, why: &str) -> u64 {
        let failovers = self.failovers.fetch_add(1, Ordering::Relaxed) + 1;
        let mut board = self.board.lock_ignoring_poison();
        board.current = None;
        self.note_error(&mut board, index, why);
        self.write(&board);
        failovers
    }

    /// A request or probe succeeded on `index`: the hot path. In the
    /// steady state (URL already ok, same second) it only reads shared
    /// atomics, so parallel requests do not bounce a cache line.
    pub fn success(&self, index: usize) {
        if self.file.is_none() {
            return;
        }
        let now = now();
        if self.last_success[index].load(Ordering::Relaxed) != now {
            self.last_success[index].store(now, Ordering::Relaxed);
        }
        let turned_ok = self.states[index].load(Ordering::Relaxed) != OK
            && self.states[index].swap(OK, Ordering::Relaxed) != OK;
        if turned_ok || self.refresh_due(now) {
            self.write(&self.board.lock_ignoring_poison());
        }
    }

    /// A request or probe failed on `index` (the server may still be in
    /// use: only [`Health::server_left`] changes that).
    pub fn failure(&self, index: usize, why: &str) {
        let mut board = self.board.lock_ignoring_poison();
        let changed = self.note_error(&mut board, index, why);
        if changed || self.refresh_due(now()) {
            self.write(&board);
        }
    }

    /// Sets `index` OK with a success now.
    fn mark_ok(&self, index: usize) {
        self.last_success[index].store(now(), Ordering::Relaxed);
        self.states[index].store(OK, Ordering::Relaxed);
    }

    /// Records an error; true when the URL's health changed (it was not
    /// failing, or fails differently now).
    fn note_error(&self, board: &mut Board, index: usize, why: &str) -> bool {
        let was = self.states[index].swap(FAILING, Ordering::Relaxed);
        let error = &mut board.errors[index];
        let changed = was != FAILING || error.why != why;
        error.at = now();
        if changed {
            error.why = why.replace(['\r', '\n'], " ");
        }
        changed
    }

    /// True for one caller when the file is older than [`REFRESH`] at `now`.
    fn refresh_due(&self, now: u64) -> bool {
        let last = self.written_at.load(Ordering::Relaxed);
        now >= last + REFRESH.as_secs()
            && self
                .written_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The file's text.
    fn render(&self, board: &Board) -> String {
        let mut text = String::with_capacity(256 + 160 * self.urls.len());
        let current = board.current.map_or("", |i| self.urls[i].as_str());
        let _ = writeln!(
            text,
            "# multihttp status (status-file=): rewritten on every change; times in seconds since 1970"
        );
        let _ = writeln!(text, "pid={}", std::process::id());
        let _ = writeln!(text, "updated={}", now());
        let _ = writeln!(text, "current={current}");
        let _ = writeln!(text, "failovers={}", self.failovers());
        let _ = writeln!(text, "urls={}", self.urls.len());
        for (i, url) in self.urls.iter().enumerate() {
            let n = i + 1;
            let error = &board.errors[i];
            let state = state_name(self.states[i].load(Ordering::Relaxed));
            let success = self.last_success[i].load(Ordering::Relaxed);
            let _ = writeln!(text, "url.{n}={url}");
            let _ = writeln!(text, "url.{n}.state={state}");
            let _ = writeln!(text, "url.{n}.last_success={success}");
            let _ = writeln!(text, "url.{n}.last_error_time={}", error.at);
            let _ = writeln!(text, "url.{n}.last_error={}", error.why);
        }
        text
    }

    /// Writes the file now (at start-up, to check `status-file=` early).
    pub fn write_now(&self) -> io::Result<()> {
        match &self.file {
            Some(path) => write_atomically(path, &self.render(&self.board.lock_ignoring_poison())),
            None => Ok(()),
        }
    }

    /// Rewrites the file, if any; a failure is logged once and otherwise
    /// ignored: requests must not fail because a status file cannot be
    /// written. Called with the board locked, which orders the writers.
    fn write(&self, board: &Board) {
        let Some(path) = &self.file else { return };
        self.written_at.store(now(), Ordering::Relaxed);
        if let Err(e) = write_atomically(path, &self.render(board)) {
            if !self.write_failure_logged.swap(true, Ordering::Relaxed) {
                log::error!(
                    "multihttp: cannot write status-file {}: {e}",
                    path.display()
                );
            }
        }
    }
}

/// Replaces `path` with `text` through `path.tmp` and a rename, so
/// readers see the old file or the new one, never a mix.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(dir: &tempfile::TempDir) -> (Health, PathBuf) {
        let urls = Arc::new(vec!["http://a:1".to_owned(), "http://b:2".to_owned()]);
        let path = dir.path().join("status");
        (Health::new(urls, Some(path.clone())), path)
    }

    fn field(text: &str, key: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .to_owned()
    }

    #[test]
    fn the_file_follows_server_changes_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let (health, path) = health(&dir);
        health.write_now().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(field(&text, "current"), "");
        assert_eq!(field(&text, "url.1.state"), "unknown");

        health.server_chosen(0);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(field(&text, "current"), "http://a:1");
        assert_eq!(field(&text, "failovers"), "0");
        assert_eq!(field(&text, "url.1.state"), "ok");
        assert_ne!(field(&text, "url.1.last_success"), "0");

        assert_eq!(health.server_left(0, "connection\nrefused"), 1);
        health.failure(1, "timed out");
        health.server_chosen(1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(field(&text, "current"), "http://b:2");
        assert_eq!(field(&text, "failovers"), "1");
        assert_eq!(field(&text, "url.1.state"), "failing");
        assert_eq!(field(&text, "url.1.last_error"), "connection refused");
        assert_ne!(field(&text, "url.1.last_error_time"), "0");
        assert_eq!(field(&text, "url.2.state"), "ok");
        assert_eq!(field(&text, "url.2.last_error"), "timed out");
        assert!(!dir.path().join("status.tmp").exists());
    }

    #[test]
    fn successes_write_only_on_a_change_or_after_the_refresh_time() {
        let dir = tempfile::tempdir().unwrap();
        let (health, path) = health(&dir);
        health.server_chosen(0);
        std::fs::remove_file(&path).unwrap();
        health.success(0);
        assert!(
            !path.exists(),
            "a success that changed nothing rewrote the file"
        );
        health.success(1);
        assert!(path.exists(), "a URL turning ok was not written");
        std::fs::remove_file(&path).unwrap();
        health.written_at.store(0, Ordering::Relaxed);
        health.success(0);
        assert!(path.exists(), "no refresh after {REFRESH:?}");
    }

    #[test]
    fn an_unwritable_file_fails_at_start_but_never_a_request() {
        let urls = Arc::new(vec!["http://a:1".to_owned()]);
        let health = Health::new(urls, Some(PathBuf::from("/nonexistent/dir/status")));
        assert!(health.write_now().is_err());
        health.server_chosen(0);
        health.success(0);
        assert_eq!(health.server_left(0, "gone"), 1);
    }

    #[test]
    fn the_file_is_replaced_never_rewritten_in_place() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let (health, path) = health(&dir);
        health.server_chosen(0);
        let old = std::fs::read_to_string(&path).unwrap();
        // A monitoring script that opened the file before an update...
        let mut reader = std::fs::File::open(&path).unwrap();
        health.server_left(0, "gone");
        let mut seen = String::new();
        reader.read_to_string(&mut seen).unwrap();
        // ...reads the whole old text, not a truncated or mixed one: the
        // update was a new file renamed over the old.
        assert_eq!(seen, old);
        let new = std::fs::read_to_string(&path).unwrap();
        assert_ne!(new, old);
        assert_eq!(field(&new, "current"), "");
        assert!(!dir.path().join("status.tmp").exists());
    }
}
