//! Ending a request from another thread, at once.
//!
//! A request waits for its reply in a blocking `recv` bounded only by its
//! deadline. When another thread learns that the wait is pointless (for
//! multihttp: the server stopped answering and another one can serve),
//! [`Abort::abort`] shuts the request's socket down, which wakes the
//! blocked call with an error or end of file right away; a request that
//! is not on a socket yet (waiting for a pooled connection) fails as soon
//! as it would take one. Nothing is closed from the other thread: the
//! request's own thread drops the connection as after any failure, so a
//! file descriptor is never closed under someone else's feet.
//!
//! Each request is numbered ([`Abort::begin`]) and [`Abort::abort`] names
//! the request it means, so an abort that comes late, after its request
//! ended and the thread started the next one, touches nothing.

use std::os::fd::RawFd;
use std::sync::Mutex;

use lock_ext::LockIgnoringPoison;

/// One thread's current request, as far as aborting it goes.
#[derive(Debug, Default)]
pub struct Abort {
    /// Every update is a single assignment: valid after a panic (so its
    /// lock ignores poisoning).
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Number of the request in progress (0: none yet).
    request: u64,
    /// The socket that request is using right now.
    socket: Option<RawFd>,
    aborted: bool,
}

impl Abort {
    pub fn new() -> Abort {
        Abort::default()
    }

    /// A new request starts; returns its number for [`Abort::abort`].
    pub fn begin(&self) -> u64 {
        let mut state = self.state.lock_ignoring_poison();
        state.request += 1;
        state.socket = None;
        state.aborted = false;
        state.request
    }

    /// Whether the request in progress was aborted.
    pub fn is_aborted(&self) -> bool {
        self.state.lock_ignoring_poison().aborted
    }

    /// Ends request `request` if it is still the one in progress: its
    /// socket, if it has one, is shut down both ways. Returns whether it
    /// was still in progress.
    pub fn abort(&self, request: u64) -> bool {
        let mut state = self.state.lock_ignoring_poison();
        if state.request != request || state.aborted {
            return false;
        }
        state.aborted = true;
        if let Some(fd) = state.socket {
            // SAFETY: the fd is the request's open socket: it is closed
            // only after `disarm`, which needs this lock.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        true
    }

    /// The request is about to use `socket`. Fails if it was aborted.
    pub(crate) fn arm(&self, socket: RawFd) -> Result<(), Aborted> {
        let mut state = self.state.lock_ignoring_poison();
        if state.aborted {
            return Err(Aborted);
        }
        state.socket = Some(socket);
        Ok(())
    }

    /// The request no longer uses its socket (before it is pooled or
    /// closed).
    pub(crate) fn disarm(&self) {
        self.state.lock_ignoring_poison().socket = None;
    }
}

/// The request was aborted before it could use a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn an_abort_wakes_a_read_blocked_on_a_silent_server_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let abort = Arc::new(Abort::new());
        let request = abort.begin();
        abort.arm(client.as_raw_fd()).unwrap();
        let aborter = {
            let abort = Arc::clone(&abort);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                assert!(abort.abort(request));
            })
        };
        let started = Instant::now();
        let mut byte = [0u8; 1];
        let n = client.read(&mut byte).unwrap_or(0);
        assert_eq!(n, 0, "a read after shutdown ends the stream");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the read waited for its own timeout: {:?}",
            started.elapsed()
        );
        aborter.join().unwrap();
        assert!(abort.is_aborted());
    }

    #[test]
    fn a_late_abort_leaves_the_next_request_alone() {
        let abort = Abort::new();
        let first = abort.begin();
        abort.disarm();
        let second = abort.begin();
        assert!(!abort.abort(first), "an abort of an ended request applied");
        assert!(!abort.is_aborted());
        assert!(abort.arm(7).is_ok());
        abort.disarm();
        assert!(abort.abort(second));
        assert_eq!(abort.arm(7), Err(Aborted), "an aborted request armed");
        assert!(!abort.abort(second), "aborted twice");
    }
}
