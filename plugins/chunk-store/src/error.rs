//! Errors of the chunk store and its backends, with the errno the NBD
//! client should see (nbdkit passes EIO, EPERM, ENOSPC, ENOMEM on; any
//! other errno would reach the client as EINVAL).

use std::fmt;
use std::io;

use plugin_glue::ToErrno;

/// What failed, where, and why; carries the errno for the client.
#[derive(Debug, Clone)]
pub struct StoreError {
    pub what: String,
    pub errno: i32,
}

impl StoreError {
    /// A backend I/O failure on `what` (e.g. "write chunk 0x12 (dir/…)").
    /// Out-of-space and permission errors keep their meaning; everything
    /// else is EIO.
    pub fn io(what: impl Into<String>, error: &io::Error) -> StoreError {
        let errno = match error.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => libc::ENOSPC,
            Some(libc::EPERM | libc::EACCES | libc::EROFS) => libc::EPERM,
            Some(libc::ENOMEM) => libc::ENOMEM,
            _ => libc::EIO,
        };
        StoreError {
            what: format!("{}: {error}", what.into()),
            errno,
        }
    }

    /// A failure with a given errno (EIO for remote stores, EPERM for
    /// refused credentials, ENOSPC for ranges past the end...).
    pub fn new(errno: i32, what: impl Into<String>) -> StoreError {
        StoreError {
            what: what.into(),
            errno,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for StoreError {}

impl ToErrno for StoreError {
    fn errno(&self) -> i32 {
        self.errno
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_only_errnos_nbdkit_passes_on() {
        let e = |n| StoreError::io("x", &io::Error::from_raw_os_error(n)).errno;
        assert_eq!(e(libc::ENOSPC), libc::ENOSPC);
        assert_eq!(e(libc::EDQUOT), libc::ENOSPC);
        assert_eq!(e(libc::EACCES), libc::EPERM);
        assert_eq!(e(libc::ENOENT), libc::EIO);
        assert_eq!(e(libc::ETIMEDOUT), libc::EIO);
    }
}
