//! Turning plugin errors (and panics) into nbdkit errors with the right errno.
//!
//! nbdkit 1.32 maps errno to NBD errors as: EPERM/EROFS→EPERM, EIO→EIO,
//! ENOMEM→ENOMEM, ENOSPC/EFBIG/EDQUOT→ENOSPC, ESHUTDOWN→ESHUTDOWN, anything
//! else→EINVAL. So a network failure must be reported as EIO, not as
//! ETIMEDOUT or ECONNREFUSED, or the client sees "invalid argument".

use std::fmt::Display;
use std::panic::{self, AssertUnwindSafe};

/// An error that knows which errno the NBD client should see.
pub trait ToErrno: Display {
    fn errno(&self) -> i32;
}

/// Runs one callback body. An `Err(e)` becomes an nbdkit error carrying
/// `e.errno()` and the message `"{what}: {e}"`; a panic becomes EIO with the
/// panic message, and nbdkit keeps serving.
///
/// `what` names the operation for the log (e.g. `"pread 4096 bytes at 0"`),
/// and is only formatted when there is an error.
pub fn guard<T, E, W, F>(what: W, body: F) -> nbdkit::Result<T>
where
    E: ToErrno,
    W: FnOnce() -> String,
    F: FnOnce() -> Result<T, E>,
{
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(to_nbdkit_error(
            error.errno(),
            format!("{}: {error}", what()),
        )),
        Err(payload) => {
            let why = panic_message(payload.as_ref());
            Err(to_nbdkit_error(
                libc::EIO,
                format!("{}: internal error (panic: {why})", what()),
            ))
        }
    }
}

/// Builds an nbdkit error. The message is cleaned of NUL bytes first: the
/// `nbdkit` crate turns messages into C strings with `expect`, so a NUL in
/// a message (e.g. echoed from a server's reply) would panic inside its
/// non-unwinding callback and abort nbdkit.
pub fn to_nbdkit_error(errno: i32, message: String) -> nbdkit::Error {
    nbdkit::Error::new(errno, message.replace('\0', "\\0"))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Full;
    impl fmt::Display for Full {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("disk full")
        }
    }
    impl ToErrno for Full {
        fn errno(&self) -> i32 {
            libc::ENOSPC
        }
    }

    #[test]
    fn ok_passes_through() {
        let r: nbdkit::Result<u32> = guard(|| "op".into(), || Ok::<_, Full>(7));
        assert_eq!(r.unwrap(), 7);
    }

    #[test]
    fn error_keeps_message_and_context() {
        let r: nbdkit::Result<()> = guard(|| "pwrite at 4096".into(), || Err(Full));
        assert_eq!(r.unwrap_err().to_string(), "pwrite at 4096: disk full");
    }

    #[test]
    fn panic_becomes_error_not_abort() {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(|_| {}));
        let r: nbdkit::Result<()> = guard(
            || "pread".into(),
            || -> Result<(), Full> { panic!("boom {}", 42) },
        );
        panic::set_hook(previous);
        let message = r.unwrap_err().to_string();
        assert!(message.contains("panic: boom 42"), "{message}");
    }

    #[test]
    fn nul_bytes_are_escaped() {
        let e = to_nbdkit_error(libc::EIO, "bad\0reply".into());
        assert_eq!(e.to_string(), "bad\\0reply");
    }
}
