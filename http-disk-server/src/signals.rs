//! Signal handling with a self-pipe: SIGTERM/SIGINT ask for a stop, SIGHUP
//! for a reload (`reload.rs`). A handler only sets a flag and writes one
//! byte to a pipe (both async-signal-safe), and the accept loop polls that
//! pipe next to the listening socket, so a signal wakes it at once; the
//! work (stopping, re-reading files) is done there, never in the handler.
//! Hand-written with `libc::sigaction` rather than a new dependency:
//! `signal-hook` would do the same thing.
//!
//! SIGHUP must be handled: its default action kills the process, so an
//! operator's `systemctl reload` (or a stray `kill -HUP`) would otherwise
//! drop every client.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Set once SIGTERM or SIGINT arrived: stop accepting, finish, exit.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Set when SIGHUP arrived and the reload it asks for is not done yet.
static RELOAD: AtomicBool = AtomicBool::new(false);

/// Write end of the self-pipe, for the handlers.
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

/// The signals handled here; worker threads block them (see
/// [`block_in_this_thread`]).
const HANDLED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

extern "C" fn on_signal(signal: libc::c_int) {
    if signal == libc::SIGHUP {
        RELOAD.store(true, Ordering::SeqCst);
    } else {
        STOP.store(true, Ordering::SeqCst);
    }
    let fd = PIPE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking,
        // so a full pipe (a wake-up already pending) just drops the byte.
        unsafe { libc::write(fd, &byte as *const u8 as *const libc::c_void, 1) };
    }
}

/// Whether a stop was requested.
pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Empties the self-pipe (read end `fd`), then tells whether a reload was
/// asked for since the last call. In that order, so a SIGHUP arriving
/// meanwhile is never lost: either its flag is seen now, or its byte is
/// still in the pipe and wakes the next poll.
pub fn take_reload(fd: RawFd) -> bool {
    let mut buf = [0u8; 64];
    // SAFETY: read(2) into a live buffer of its size; the pipe is
    // non-blocking, so this ends at EAGAIN once it is empty.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    RELOAD.swap(false, Ordering::SeqCst)
}

/// Installs the handlers; returns the read end of the self-pipe, which
/// becomes readable when a stop or a reload is requested.
pub fn install() -> io::Result<RawFd> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    PIPE_WRITE.store(fds[1], Ordering::SeqCst);
    for signal in HANDLED {
        // SAFETY: a zeroed sigaction with a plain handler and an empty mask
        // is valid; the handler only touches atomics and write(2).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(fds[0])
}

/// Blocks the handled signals in the calling thread, so the kernel
/// delivers them to the accept loop's thread instead. Why: SA_RESTART does
/// not restart socket calls with a timeout (SO_RCVTIMEO/SO_SNDTIMEO, which
/// every connection has) nor poll(2); a worker interrupted mid-request
/// would see EINTR where the request's code expects data, and a burst of
/// SIGHUPs could cut clients off. Called first thing by every worker.
pub fn block_in_this_thread() {
    // SAFETY: sigemptyset/sigaddset on a local set, pthread_sigmask on the
    // calling thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in HANDLED {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGHUP sets the reload flag and wakes the pipe, and only once.
    /// (The handlers stay installed for the rest of the test binary,
    /// which is harmless: nothing else sends it signals.)
    #[test]
    fn sighup_asks_for_one_reload_and_does_not_stop() {
        let fd = install().unwrap();
        assert!(!take_reload(fd));
        // SAFETY: raise(3) delivers the signal to this thread, whose
        // handler was installed above.
        unsafe { libc::raise(libc::SIGHUP) };
        let mut poll = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll(2) on one live pollfd.
        assert_eq!(unsafe { libc::poll(poll.as_mut_ptr(), 1, 1000) }, 1);
        assert!(take_reload(fd));
        assert!(!take_reload(fd), "one signal, one reload");
        assert!(!stopping(), "SIGHUP must not stop the server");
    }
}
