//! `supersede=true`: one NBD client at a time, the newest (issue #20).
//!
//! Why: nbd-http-server attaches the kernel with one connection and a
//! request timeout (`--nbd-timeout`). When every server is stopped for
//! longer than that, the kernel gives up on the connection, connects
//! again (nbd-netlink) and resends the requests that had no reply. The
//! old copies are still here, retried until `failover-window`: when the
//! servers come back, an old copy could be applied after a newer write
//! to the same block that the kernel sent on the new connection, and put
//! stale data over it. So, once a newer connection sends its first
//! change (write, trim, zero) or flush, every older connection is
//! superseded: its requests waiting for a server fail (the kernel, which
//! closed that connection, sees nothing), those on the wire are
//! abandoned (their sockets shut down: http-disk-server does not apply a
//! write whose connection closed before it was read), and its later
//! requests fail at once.
//!
//! A connection that only reads (nbdinfo, qemu-img info on the socket)
//! supersedes nothing. Off by default: clients that open several
//! connections at once (qemu, nbdcopy with multi-conn) would fail.

use std::sync::atomic::{AtomicU64, Ordering};

/// One NBD connection, numbered in the order they opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    generation: u64,
}

impl Client {
    pub fn generation(self) -> u64 {
        self.generation
    }
}

#[derive(Debug)]
pub struct Clients {
    enabled: bool,
    opened: AtomicU64,
    /// The newest connection that sent a change or flush; every older one
    /// is superseded (with `enabled`).
    writer: AtomicU64,
}

impl Clients {
    pub fn new(enabled: bool) -> Clients {
        Clients {
            enabled,
            opened: AtomicU64::new(0),
            writer: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A new NBD connection.
    pub fn opened(&self) -> Client {
        Client {
            generation: self.opened.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }

    /// Before a change or flush of `client` is sent: makes it the writer
    /// if it is newer. `true` when it just took over from an older one,
    /// whose running requests the caller must then abandon, before this
    /// request is sent.
    pub fn take_over(&self, client: Client) -> bool {
        if !self.enabled {
            return false;
        }
        let previous = self.writer.fetch_max(client.generation, Ordering::SeqCst);
        // Generation 1 is the first connection: nobody older to abandon.
        previous < client.generation && client.generation > 1
    }

    /// Whether a newer connection took over from `client`: its requests
    /// must not be sent any more.
    pub fn superseded(&self, client: Client) -> bool {
        self.enabled && self.writer.load(Ordering::SeqCst) > client.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_change_of_a_newer_connection_supersedes_the_older_ones() {
        let clients = Clients::new(true);
        let (old, reader, new) = (clients.opened(), clients.opened(), clients.opened());
        assert!(!clients.take_over(old), "the first writer replaces nobody");
        assert!(!clients.superseded(reader), "reading supersedes nothing");
        assert!(clients.take_over(new));
        assert!(clients.superseded(old) && clients.superseded(reader));
        assert!(!clients.superseded(new));
        assert!(!clients.take_over(new), "once");
        assert!(!clients.take_over(old), "an older one cannot take it back");
        assert!(clients.superseded(old));
    }

    #[test]
    fn without_supersede_every_connection_is_served() {
        let clients = Clients::new(false);
        let (old, new) = (clients.opened(), clients.opened());
        assert!(!clients.take_over(new));
        assert!(!clients.superseded(old));
    }
}
