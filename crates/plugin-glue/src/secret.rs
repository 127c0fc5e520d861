//! [`Secret`]: bytes (a password, an `Authorization` value, an S3 secret
//! key) that must not reach logs, core dumps or freed memory.
//!
//! - `Debug` and `Display` print `<redacted>`, so a secret inside a
//!   `#[derive(Debug)]` config, or formatted by mistake, never shows.
//! - The bytes live in their own anonymous mapping, not on the heap:
//!   `madvise(MADV_DONTDUMP)` keeps that mapping out of core dumps (the
//!   kernel's, and gdb's `gcore`, which reads the same `dd` flag in
//!   `/proc/PID/smaps`). It has to be a dedicated page-aligned mapping:
//!   madvise works on whole pages, and a heap page also holds unrelated
//!   data (which a dump must keep) and is reused by the allocator after a
//!   free (when the flag would protect whatever comes next, not us).
//! - `mlock` keeps the page out of swap where the limit allows it (root,
//!   or `RLIMIT_MEMLOCK`); best effort, a refusal changes nothing else.
//! - Dropping a secret zeroes its bytes (volatile writes the optimiser may
//!   not remove) before unmapping them.
//! - No `MADV_DONTFORK`: nbdkit forks to daemonize *after* the plugin has
//!   read its configuration, and the child is the one that serves.
//!
//! What this cannot cover: copies made by code we do not control (nbdkit's
//! argv when a secret is given literally, a library's own buffers, the
//! kernel's socket buffers). Callers keep those as short-lived as they can.

use std::ffi::CString;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Once;

use zeroize::Zeroize;

/// Secret bytes in a private, never-dumped, zeroed-on-drop mapping.
pub struct Secret {
    ptr: NonNull<u8>,
    len: usize,
    mapped: usize,
}

// SAFETY: a Secret owns its mapping exclusively (like a Box<[u8]>); shared
// references only read it.
unsafe impl Send for Secret {}
unsafe impl Sync for Secret {}

impl Secret {
    /// A secret holding a copy of `bytes`.
    pub fn new(bytes: &[u8]) -> Secret {
        Secret::build(bytes.len(), |buf| {
            buf.copy_from_slice(bytes);
            bytes.len()
        })
    }

    /// A secret taking the bytes of a buffer we do not own (e.g. one
    /// malloc'd by nbdkit), which is zeroed: after this, the value lives
    /// only in the secret's own memory.
    pub fn take(bytes: &mut [u8]) -> Secret {
        let secret = Secret::new(bytes);
        wipe(bytes);
        secret
    }

    /// A secret of at most `capacity` bytes written in place by `fill`,
    /// which returns how many it wrote: the value is never assembled in
    /// ordinary memory first (e.g. an `Authorization` header built from a
    /// password).
    ///
    /// Panics if no page can be mapped (out of memory) or if `fill` claims
    /// more than `capacity`; plugin callbacks run under [`crate::guard`].
    pub fn build(capacity: usize, fill: impl FnOnce(&mut [u8]) -> usize) -> Secret {
        let mut secret = Secret::map(capacity);
        // SAFETY: the mapping is `mapped >= capacity` bytes, zero-filled by
        // the kernel, owned by `secret` alone.
        let buf = unsafe { std::slice::from_raw_parts_mut(secret.ptr.as_ptr(), capacity) };
        let len = fill(buf);
        assert!(len <= capacity, "secret longer than its capacity");
        secret.len = len;
        secret
    }

    /// The first line of `path` without its newline, as nbdkit reads a
    /// `+FILE` secret; the ordinary buffer it was read into is zeroed.
    /// For reading a rotated secret again (see [`crate::refreshable`]).
    pub fn read_first_line(path: &std::path::Path) -> std::io::Result<Secret> {
        let mut bytes = std::fs::read(path)?;
        let end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len());
        let secret = Secret::new(&bytes[..end]);
        wipe(&mut bytes);
        Ok(secret)
    }

    /// The bytes, for the one place that must use them (an HTTP header,
    /// a signing key). Never log them.
    pub fn expose(&self) -> &[u8] {
        // SAFETY: `len <= mapped`, the mapping lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes as text, for APIs that take `&str`.
    pub fn expose_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(self.expose())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A fresh private mapping of whole pages, at least one, excluded from
    /// core dumps.
    fn map(capacity: usize) -> Secret {
        let page = page_size();
        let mapped = capacity.max(1).div_ceil(page) * page;
        // SAFETY: an anonymous private mapping: no file, no aliasing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            panic!(
                "cannot map {mapped} bytes for a secret: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: madvise/mlock on the mapping just made.
        if unsafe { libc::madvise(ptr, mapped, libc::MADV_DONTDUMP) } != 0 {
            warn_once(&DONTDUMP_WARNING, "madvise(MADV_DONTDUMP)");
        }
        // Best effort: a low RLIMIT_MEMLOCK refuses it, which only means
        // the page may be swapped like any other.
        let _ = unsafe { libc::mlock(ptr, mapped) };
        Secret {
            // mmap never returns NULL on success (MAP_FIXED is not used).
            ptr: NonNull::new(ptr.cast()).expect("mmap returned NULL"),
            len: 0,
            mapped,
        }
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // SAFETY: the whole mapping is ours; zeroed (volatile, see
        // `wipe`) before it goes back to the kernel, so neither a dump
        // taken meanwhile nor a bug reading stale memory can find it.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.mapped) };
        wipe(all);
        unsafe {
            libc::munlock(self.ptr.as_ptr().cast(), self.mapped);
            libc::munmap(self.ptr.as_ptr().cast(), self.mapped);
        }
    }
}

impl Clone for Secret {
    fn clone(&self) -> Secret {
        Secret::new(self.expose())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Environment variable `name` as a secret (`None` when unset or empty),
/// then taken out of the process environment: its value is zeroed in
/// place first, so it no longer shows in `/proc/PID/environ` (which reads
/// that very memory, on the initial stack for variables nbdkit was started
/// with), in core dumps, or in the environment of commands nbdkit starts
/// (`--run`). Call it only while the process has one thread (nbdkit's
/// configuration phase): the C environment has no lock.
pub fn take_env(name: &str) -> Option<Secret> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: getenv returns NULL or a NUL-terminated string in writable
    // memory (the initial stack, or a heap copy made by setenv) that stays
    // valid until the environment changes, which is only done here.
    unsafe {
        let value = libc::getenv(c_name.as_ptr());
        if value.is_null() {
            return None;
        }
        let bytes = std::slice::from_raw_parts_mut(value.cast::<u8>(), libc::strlen(value));
        let secret = (!bytes.is_empty()).then(|| Secret::new(bytes));
        wipe(bytes);
        libc::unsetenv(c_name.as_ptr());
        secret
    }
}

/// Zeroes `bytes` with volatile writes: a plain memset right before a
/// free is a dead store the optimiser is allowed to delete.
pub fn wipe(bytes: &mut [u8]) {
    bytes.zeroize();
}

static DONTDUMP_WARNING: Once = Once::new();

/// Says once (not per secret) that a protection is unavailable here.
fn warn_once(once: &Once, what: &str) {
    once.call_once(|| {
        log::warn!(
            "{what} failed ({}): secrets may appear in core dumps of this process",
            std::io::Error::last_os_error()
        )
    });
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `/proc/self/smaps` shows the mapping at `addr` with the
    /// `dd` (do not dump) flag, as the kernel and gcore read it.
    fn excluded_from_dumps(addr: usize) -> bool {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((start, end)) = range.split_once('-') {
                    if let (Ok(s), Ok(e)) = (
                        usize::from_str_radix(start, 16),
                        usize::from_str_radix(end, 16),
                    ) {
                        inside = (s..e).contains(&addr);
                        continue;
                    }
                }
            }
            if inside && line.starts_with("VmFlags:") {
                return line.split_whitespace().any(|flag| flag == "dd");
            }
        }
        false
    }

    #[test]
    fn formatting_never_shows_the_bytes() {
        let secret = Secret::new(b"hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Config {
            password: Option<Secret>,
        }
        let config = Config {
            password: Some(secret.clone()),
        };
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(config.password.unwrap().expose(), b"hunter2");
    }

    #[test]
    fn the_bytes_live_in_a_mapping_that_dumps_skip() {
        let secret = Secret::new(b"hunter2");
        let addr = secret.expose().as_ptr() as usize;
        assert_eq!(addr % page_size(), 0, "not page-aligned");
        assert!(excluded_from_dumps(addr), "no dd flag in smaps");
        let empty = Secret::new(b"");
        assert!(empty.is_empty() && excluded_from_dumps(empty.expose().as_ptr() as usize));
    }

    #[test]
    fn built_in_place_or_copied() {
        let header = Secret::build(16, |buf| {
            buf[..6].copy_from_slice(b"Basic ");
            buf[6..9].copy_from_slice(b"abc");
            9
        });
        assert_eq!(header.expose(), b"Basic abc");
        assert_eq!(header.len(), 9);
        let copy = Secret::new(b"k3y");
        assert_eq!(copy.expose_str(), Ok("k3y"));
        assert_eq!(copy.clone(), copy);
        // Larger than a page still works (several pages).
        let big = Secret::new(&[7u8; 10_000]);
        assert_eq!(big.expose().len(), 10_000);
    }

    #[test]
    fn environment_secrets_are_taken_out_of_the_environment() {
        // A name no other test uses (tests share the environment).
        std::env::set_var("PLUGIN_GLUE_TEST_SECRET", "hunter2");
        let taken = take_env("PLUGIN_GLUE_TEST_SECRET").unwrap();
        assert_eq!(taken.expose(), b"hunter2");
        assert!(std::env::var_os("PLUGIN_GLUE_TEST_SECRET").is_none());
        assert!(take_env("PLUGIN_GLUE_TEST_SECRET").is_none());
        std::env::set_var("PLUGIN_GLUE_TEST_EMPTY", "");
        assert!(take_env("PLUGIN_GLUE_TEST_EMPTY").is_none());
    }

    #[test]
    fn take_moves_the_bytes_and_zeroes_the_source() {
        let mut source = *b"password from nbdkit";
        let secret = Secret::take(&mut source);
        assert_eq!(secret.expose(), b"password from nbdkit");
        assert!(source.iter().all(|&b| b == 0), "{source:?}");
    }

    #[test]
    fn wipe_zeroes() {
        let mut bytes = *b"Authorization: Basic abc";
        wipe(&mut bytes);
        assert!(bytes.iter().all(|&b| b == 0));
    }
}
