//! Waiting for input on a few fds at once (poll(2)): the accept loop
//! (listening socket and signal pipe) and a connection between requests.

use std::io;
use std::time::Duration;

/// Polls one fd (or a few) for input for at most `timeout`; a poll
/// interrupted by a signal reports none ready.
pub fn poll_in(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll(2) on a live array of pollfd of the given length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}
