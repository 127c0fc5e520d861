//! The plugin's errors and the one place where each becomes the errno the
//! NBD client sees.
//!
//! nbdkit 1.32 turns any errno it does not know (ETIMEDOUT, ECONNREFUSED…)
//! into EINVAL, which tells a client "your request was wrong". Every
//! network or server failure is therefore reported as EIO.

use std::fmt;

use plugin_glue::ToErrno;

/// Why one attempt on one server did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The server cannot serve this request now (down, timeout, 5xx, 503,
    /// wrong reply): try another server.
    Failover(String),
    /// Retrying elsewhere cannot help: report this to the client.
    Fatal(Error),
}

/// A request failure as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No listed server could serve the request within the failover window
    /// (or, at open, none answered). `EIO`.
    Unavailable(String),
    /// The server refused in a way another server would too (e.g. an
    /// unexpected 4xx). `EIO`.
    Rejected(String),
    /// The server is read-only (405). `EPERM`.
    ReadOnly(String),
    /// The request lies outside the disk. `ENOSPC` (what NBD clients expect
    /// for writes past the end).
    OutOfRange(String),
    /// A flush cannot promise durability: write-back writes were
    /// acknowledged by a server that was left before they were flushed
    /// (if its host crashed, they are gone). `EIO`, once: the client must
    /// learn that its data may be lost rather than get a lying flush.
    Unflushed(String),
    /// A fast zero was asked for and cannot be fast here. `EOPNOTSUPP`, which
    /// nbdkit turns into NBD's ENOTSUP so the client falls back.
    NotFast(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable(why) => write!(f, "no server could serve the request: {why}"),
            Error::Rejected(why) => write!(f, "server refused the request: {why}"),
            Error::ReadOnly(why) => write!(f, "the disk is read-only: {why}"),
            Error::OutOfRange(why) => write!(f, "out of range: {why}"),
            Error::Unflushed(why) => write!(f, "flush cannot vouch for earlier writes: {why}"),
            Error::NotFast(why) => write!(f, "fast zero not possible: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl ToErrno for Error {
    fn errno(&self) -> i32 {
        match self {
            Error::Unavailable(_) | Error::Rejected(_) | Error::Unflushed(_) => libc::EIO,
            Error::ReadOnly(_) => libc::EPERM,
            Error::OutOfRange(_) => libc::ENOSPC,
            Error::NotFast(_) => libc::EOPNOTSUPP,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_are_ones_nbdkit_passes_on() {
        assert_eq!(Error::Unavailable("x".into()).errno(), libc::EIO);
        assert_eq!(Error::Rejected("x".into()).errno(), libc::EIO);
        assert_eq!(Error::Unflushed("x".into()).errno(), libc::EIO);
        assert_eq!(Error::ReadOnly("x".into()).errno(), libc::EPERM);
        assert_eq!(Error::OutOfRange("x".into()).errno(), libc::ENOSPC);
        assert_eq!(Error::NotFast("x".into()).errno(), libc::EOPNOTSUPP);
    }
}
