//! The accept loop: one worker thread per connection (at most
//! `--workers`, see admission.rs), each serving its connection's requests
//! (connection.rs). A thread per connection with socket timeouts is what
//! guarantees that an idle or slow client only ever holds its own worker,
//! never the others.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::admission;
use crate::connection::serve_connection;
use crate::poll::poll_in;
use crate::reload;
use crate::signals;
use crate::state::State;

/// Accepts connections until a stop is requested (`signal_fd` readable,
/// and the stop flag set); reloads when SIGHUP asked for it.
pub fn accept_loop(listener: &TcpListener, signal_fd: RawFd, state: &Arc<State>) -> io::Result<()> {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: signal_fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    while !signals::stopping() {
        fds[0].revents = 0;
        fds[1].revents = 0;
        if poll_in(&mut fds, Duration::from_secs(1))? == 0 {
            continue;
        }
        if fds[1].revents != 0 && signals::take_reload(signal_fd) {
            reload::reload(state);
        }
        if fds[0].revents == 0 {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            // The peer gave up between poll and accept, or fds ran out:
            // log and keep serving the others.
            Err(e) => {
                log::error!("accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let slot = match admission::admit(state, peer.ip()) {
            Ok(slot) => slot,
            Err((refusal, reason)) => {
                state.metrics.refused(refusal);
                turn_away(stream, peer, &reason, state.tls.is_some());
                continue;
            }
        };
        // A failed spawn drops the closure, and with it the slot.
        let spawned = thread::Builder::new()
            .name(format!("conn {peer}"))
            .spawn(move || {
                signals::block_in_this_thread();
                serve_connection(stream, peer, slot.state());
            });
        if let Err(e) = spawned {
            log::error!("cannot start a worker thread for {peer}: {e}");
        }
    }
    Ok(())
}

/// No worker for this connection, or its peer at its connection cap (see
/// admission.rs): a short 503 so the client retries or fails over,
/// written without blocking the accept loop.
fn turn_away(stream: TcpStream, peer: SocketAddr, reason: &str, tls: bool) {
    if tls {
        // A 503 needs a TLS handshake, which the accept loop must not
        // wait for: the client sees the connection closed, and retries
        // or fails over.
        log::warn!("{peer}: {reason}, closing the new connection");
        return;
    }
    log::warn!("{peer}: {reason}, replying 503");
    let _ = stream.set_nonblocking(true);
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nX-Disk-Error: {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    );
    let _ = (&stream).write_all(reply.as_bytes());
}
