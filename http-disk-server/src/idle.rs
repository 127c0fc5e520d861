//! The connections waiting, idle, for their next request, so that a new
//! client never has to be turned away while a worker only holds a silent
//! connection.
//!
//! Every connection has its own worker until it closes or idles out
//! (`--idle-timeout`), and kept-alive connections spend most of their life
//! idle. When every worker is taken, the accept loop closes the
//! connection that has been idle the longest and serves the new one in its
//! place, instead of answering 503: a pool of clients keeping connections
//! open (or a client opening silent ones) can no longer lock others out.
//! A closed kept-alive connection costs its client a reconnect (multihttp
//! retries a request on a new connection when a kept-alive one was closed
//! before any reply), never a request: a connection is only closed while
//! its worker waits between requests, and the worker then reads nothing
//! more from it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::RawFd;
use std::sync::Mutex;
use std::time::Instant;

use lock_ext::LockIgnoringPoison;

use crate::access::canonical;

/// The idle connections, oldest first.
#[derive(Default)]
pub struct IdleConnections {
    /// A worker that panicked while holding its lock left it consistent
    /// (every change is one insert or remove), so the lock ignores
    /// poisoning.
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// Keyed by a counter that only grows, so the first entry is the
    /// connection that started waiting the longest ago.
    by_age: BTreeMap<u64, IdleConnection>,
    next: u64,
}

struct IdleConnection {
    fd: RawFd,
    peer: SocketAddr,
    since: Instant,
}

/// A connection's registration as idle; give it back with
/// [`IdleConnections::end_wait`].
#[must_use]
pub struct IdleTicket(u64);

impl IdleConnections {
    /// The connection on `fd` starts waiting for its next request. Its
    /// worker must keep `fd` open until it calls [`end_wait`]: the accept
    /// loop may shut the socket down until then.
    ///
    /// [`end_wait`]: IdleConnections::end_wait
    pub fn begin_wait(&self, fd: RawFd, peer: SocketAddr) -> IdleTicket {
        let mut waiting = self.waiting.lock_ignoring_poison();
        let id = waiting.next;
        waiting.next += 1;
        waiting.by_age.insert(
            id,
            IdleConnection {
                fd,
                peer,
                since: Instant::now(),
            },
        );
        IdleTicket(id)
    }

    /// The wait is over (a request came, the client left or idled out).
    /// False when the connection was closed to make room meanwhile: the
    /// worker must then end it without reading a request from it.
    pub fn end_wait(&self, ticket: IdleTicket) -> bool {
        self.waiting
            .lock_ignoring_poison()
            .by_age
            .remove(&ticket.0)
            .is_some()
    }

    /// Shuts down the connection idle the longest, which wakes its worker
    /// to end it. False when no connection is idle.
    pub fn close_longest_idle(&self) -> bool {
        self.close_first(|_| true, "all workers taken")
    }

    /// As [`close_longest_idle`], among the connections of one peer address
    /// only (`--max-connections-per-peer`): a peer at its cap makes room
    /// for its own newcomer, never at another peer's expense.
    ///
    /// [`close_longest_idle`]: IdleConnections::close_longest_idle
    pub fn close_longest_idle_of(&self, peer: IpAddr) -> bool {
        self.close_first(
            |connection| canonical(connection.peer.ip()) == peer,
            "its peer holds --max-connections-per-peer",
        )
    }

    /// Closes the oldest idle connection that `chosen` accepts.
    fn close_first(&self, chosen: impl Fn(&IdleConnection) -> bool, why: &str) -> bool {
        let mut waiting = self.waiting.lock_ignoring_poison();
        // Found and removed under one lock: the first match is there.
        let first = waiting
            .by_age
            .iter()
            .find(|(_, connection)| chosen(connection))
            .map(|(id, _)| *id);
        let Some(oldest) = first.and_then(|id| waiting.by_age.remove(&id)) else {
            return false;
        };
        // The worker cannot close `fd` before its `end_wait`, which waits
        // for this lock: the descriptor is still this connection's.
        // SAFETY: shutdown(2) on a live socket descriptor.
        unsafe { libc::shutdown(oldest.fd, libc::SHUT_RDWR) };
        log::debug!(
            "{}: closed, idle for {} ms, to make room for a new connection ({why})",
            oldest.peer,
            oldest.since.elapsed().as_millis()
        );
        true
    }

    /// How many connections are idle now (for tests and the metrics
    /// listener; takes the lock, so never on the request path).
    pub fn count(&self) -> usize {
        self.waiting.lock_ignoring_poison().by_age.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn the_longest_idle_connection_is_closed_first_and_its_worker_told() {
        let idle = IdleConnections::default();
        let (mut old_client, old_server) = pair();
        let (_new_client, new_server) = pair();
        let peer = old_server.peer_addr().unwrap();
        let old = idle.begin_wait(old_server.as_raw_fd(), peer);
        let new = idle.begin_wait(new_server.as_raw_fd(), peer);
        assert_eq!(idle.count(), 2);

        assert!(idle.close_longest_idle());
        // The client of the closed connection sees its end at once.
        let mut byte = [0u8; 1];
        assert_eq!(old_client.read(&mut byte).unwrap(), 0);
        assert!(!idle.end_wait(old), "the worker must learn it was closed");
        assert!(idle.end_wait(new), "the other connection goes on");
        assert_eq!(idle.count(), 0);
        assert!(!idle.close_longest_idle(), "nothing idle is left");
    }

    #[test]
    fn a_peer_at_its_cap_only_closes_its_own_idle_connection() {
        let idle = IdleConnections::default();
        let (mut other_client, other_server) = pair();
        let (mut own_client, own_server) = pair();
        // Two peers; the other one has been idle the longest.
        let other_peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let own_peer: SocketAddr = "[::ffff:10.0.0.2]:4000".parse().unwrap();
        let other = idle.begin_wait(other_server.as_raw_fd(), other_peer);
        let own = idle.begin_wait(own_server.as_raw_fd(), own_peer);

        assert!(!idle.close_longest_idle_of("10.0.0.3".parse().unwrap()));
        assert!(idle.close_longest_idle_of("10.0.0.2".parse().unwrap()));
        let mut byte = [0u8; 1];
        assert_eq!(own_client.read(&mut byte).unwrap(), 0);
        assert!(!idle.end_wait(own));
        // The other peer's connection was left alone.
        other_client.set_nonblocking(true).unwrap();
        assert_eq!(
            other_client.read(&mut byte).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        assert!(idle.end_wait(other));
    }
}
