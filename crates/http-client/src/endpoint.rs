//! One server URL: where to connect, what to put in `Host` and the request
//! line, and its connections: at most [`Pool::max_open`] open at once, up
//! to [`Pool::max_idle`] idle ones kept for the next request.
//!
//! multihttp bounds both by its `pool-size`. s3 bounds only the idle ones
//! (its requests go to one store that serves any number of connections,
//! and nbdkit's threads must not queue behind a pool limit).
//!
//! Why a bound on open connections and not only on idle ones: nbdkit runs
//! 16 threads per NBD connection, so a few clients could keep 64 requests
//! in flight; with only the idle count bounded, every request beyond it
//! opened a connection and closed it after one reply (2,200 connects in a
//! 4-second benchmark), and each one holds a worker thread of the server,
//! which serves a whole pool of hosts with a bounded number of workers.

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lock_ext::{ignore_poison, LockIgnoringPoison};
use tls_io::rustls::pki_types::ServerName;
use tls_io::rustls::ClientConfig;

use crate::abort::{Abort, Aborted};
use crate::connection::{Connection, Deadline, Failure, TlsTarget};
use crate::response::{Body, ResponseHead};

/// Kept-alive connections found closed by the server, in a row, before a
/// request gives up.
pub const MAX_STALE_RETRIES: usize = 3;
/// How often a request waiting for a pooled connection checks whether it
/// was aborted (waits only happen when every connection is in use).
pub const ABORT_POLL: Duration = Duration::from_millis(20);

/// The error of a request ended by [`Abort::abort`].
fn aborted() -> SendError {
    SendError::Exchange("abandoned by the client (aborted)".into())
}

/// The parts of `http[s]://HOST[:PORT][/PATH][?QUERY]` a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// `HOST[:PORT]` as written, for the `Host` header.
    pub authority: String,
    /// Host name or address (IPv6 without brackets), for resolving.
    pub host: String,
    pub port: u16,
    /// Path and query for the request line (`/` when the URL has none).
    pub target: String,
    /// `https://`: TLS, the certificate checked against `host`.
    pub tls: bool,
}

impl Address {
    /// Parses an `http://` or `https://` URL, with no credentials in it
    /// (they belong in `user=`/`password=`, which are never logged, while
    /// URLs are).
    pub fn parse(url: &str) -> Result<Address, String> {
        let scheme_is = |scheme: &str| {
            url.get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        };
        let (tls, rest) = if scheme_is("http://") {
            (false, &url[7..])
        } else if scheme_is("https://") {
            (true, &url[8..])
        } else {
            return Err("only http:// and https:// URLs are supported".into());
        };
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, after) = rest.split_at(split);
        if authority.contains('@') {
            return Err("put credentials in user=/password=, not in the URL".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("unclosed '[' in the host")?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or("junk after ']' in the host")?,
                    ),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = match port {
            None if tls => 443,
            None => 80,
            Some(port) => match port.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("bad port {port:?}")),
            },
        };
        // A fragment is never sent; a bare query gets the root path.
        let target = after.split('#').next().unwrap_or("");
        let target = match target.chars().next() {
            None => "/".to_owned(),
            Some('?') => format!("/{target}"),
            Some(_) => target.to_owned(),
        };
        if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("spaces or control characters in the path".into());
        }
        Ok(Address {
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            target,
            tls,
        })
    }
}

/// The name a server's certificate must carry for `host` (an IP address
/// or a DNS name from a URL that [`Address::parse`] accepted).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} is not a host name TLS can verify: {e}"))
}

/// How an endpoint keeps its connections.
#[derive(Clone, Copy, Debug)]
pub struct Pool {
    /// Open connections at most (idle, in use or connecting); requests
    /// beyond wait for one. At least 1.
    pub max_open: usize,
    /// Idle connections kept for the next request; one going idle beyond
    /// this is closed. 0: a new connection per request.
    pub max_idle: usize,
    /// `TCP_QUICKACK` after each request (see `connection`).
    pub quick_ack: bool,
}

/// Why [`Endpoint::send`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No connection could be opened (resolving, connecting, TLS handshake).
    Connect(String),
    /// Waiting for a connection, sending, or reading the reply head.
    Exchange(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(why) | SendError::Exchange(why) => f.write_str(why),
        }
    }
}

/// A server and its connections.
pub struct Endpoint {
    pub address: Address,
    /// `https://`: the client configuration and the name to verify.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// Every update of it is a single step: still valid after a panic
    /// (so its lock ignores poisoning).
    connections: Mutex<Connections>,
    /// Signalled when a connection goes idle or is closed, or the bounds
    /// grow.
    freed: Condvar,
    quick_ack: bool,
}

struct Connections {
    /// Open and unused, most recently used last.
    idle: Vec<Connection>,
    /// Open: idle, in use, or being connected.
    open: usize,
    /// The bounds in force ([`Pool`]'s, or as changed by
    /// [`Endpoint::set_bounds`]); under the lock, so a change is seen by
    /// every waiter and releaser at once.
    max_open: usize,
    max_idle: usize,
    /// Requests waiting in [`Endpoint::acquire`]: a release wakes one
    /// only if there is one (std's `notify_one` is a futex syscall even
    /// with nobody waiting, once per request otherwise).
    waiting: usize,
}

/// What [`Endpoint::acquire`] hands out: a connection to use, or the right
/// to open a new one.
pub enum Slot<'a> {
    Pooled(Lease<'a>),
    New(NewSlot<'a>),
}

/// A connection in use. [`Lease::keep`] returns it to the idle list after
/// a fully read reply; dropped otherwise, it is closed and its slot freed
/// (also when a request panics).
pub struct Lease<'a> {
    endpoint: &'a Endpoint,
    connection: Option<Connection>,
    /// Armed with this connection's socket while the lease holds it.
    abort: Option<&'a Abort>,
}

/// A reserved place for a connection being opened.
pub struct NewSlot<'a> {
    endpoint: &'a Endpoint,
}

impl Endpoint {
    /// `tls` is required for an `https://` address (checked by the
    /// plugins' configuration).
    pub fn new(
        address: Address,
        pool: Pool,
        tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    ) -> Endpoint {
        Endpoint {
            address,
            tls,
            connections: Mutex::new(Connections {
                idle: Vec::new(),
                open: 0,
                max_open: pool.max_open.max(1),
                max_idle: pool.max_idle,
                waiting: 0,
            }),
            freed: Condvar::new(),
            quick_ack: pool.quick_ack,
        }
    }

    /// Changes the bounds (e.g. multihttp's pool growing with its NBD
    /// clients). Requests waiting for a connection see a larger bound at
    /// once; with a smaller one, connections beyond it are closed as they
    /// are released, never taken from a request.
    pub fn set_bounds(&self, max_open: usize, max_idle: usize) {
        let mut pool = self.connections.lock_ignoring_poison();
        pool.max_open = max_open.max(1);
        pool.max_idle = max_idle;
        let excess = pool.idle.len().saturating_sub(max_idle);
        let closed: Vec<Connection> = pool.idle.drain(..excess).collect();
        pool.open -= closed.len();
        self.freed.notify_all();
        drop(pool);
        // Closed outside the lock.
        drop(closed);
    }

    /// The bound on open connections in force.
    pub fn max_open(&self) -> usize {
        self.connections.lock_ignoring_poison().max_open
    }

    /// Sends one request (`request`, then `tail`: see
    /// [`Connection::exchange`]) and reads the reply head. A pooled
    /// connection the server had closed while idle is not a failure: the
    /// request goes again on a new connection (callers send only requests
    /// that may be repeated). Errors say what failed, never the request.
    pub fn send(
        &self,
        request: &[u8],
        tail: &[u8],
        connect_timeout: Duration,
        deadline: &Deadline,
    ) -> Result<(Lease<'_>, ResponseHead), SendError> {
        self.send_with(request, tail, connect_timeout, deadline, None)
    }

    /// As [`Endpoint::send`], and another thread may end the request at
    /// once with `abort` (see [`crate::abort`]): while waiting for a
    /// connection, on its socket, and until the lease is kept or dropped.
    pub fn send_abortable<'a>(
        &'a self,
        request: &[u8],
        tail: &[u8],
        connect_timeout: Duration,
        deadline: &Deadline,
        abort: &'a Abort,
    ) -> Result<(Lease<'a>, ResponseHead), SendError> {
        self.send_with(request, tail, connect_timeout, deadline, Some(abort))
    }

    fn send_with<'a>(
        &'a self,
        request: &[u8],
        tail: &[u8],
        connect_timeout: Duration,
        deadline: &Deadline,
        abort: Option<&'a Abort>,
    ) -> Result<(Lease<'a>, ResponseHead), SendError> {
        let mut slot = self
            .acquire_with(deadline.at(), abort)
            .map_err(SendError::Exchange)?;
        // Bounded: after a stale connection the idle ones are dropped, so
        // the next try is normally on a new connection.
        for _ in 0..MAX_STALE_RETRIES {
            let (mut lease, fresh) = match slot {
                Slot::Pooled(lease) => (lease, false),
                Slot::New(new) => (
                    new.connect_abortable(connect_timeout, deadline, abort)
                        .map_err(SendError::Connect)?,
                    true,
                ),
            };
            if let Some(abort) = abort {
                abort.arm(lease.raw_fd()).map_err(|Aborted| aborted())?;
                lease.abort = Some(abort);
            }
            match lease.exchange(request, tail, deadline) {
                Ok(head) => return Ok((lease, head)),
                Err(Failure::ClosedBeforeReply(_)) if !fresh => {
                    // Free this slot before taking one for the new connection.
                    drop(lease);
                    // The server probably restarted: its other idle
                    // connections are stale too.
                    self.drop_idle();
                    slot = self
                        .acquire_with(deadline.at(), abort)
                        .map_err(SendError::Exchange)?;
                }
                Err(failure) => return Err(SendError::Exchange(failure.into_message())),
            }
        }
        Err(SendError::Exchange(format!(
            "{MAX_STALE_RETRIES} kept-alive connections in a row were closed by the server"
        )))
    }

    /// An idle connection that is still open, or a slot for a new one;
    /// waits for one of them until `until`.
    pub fn acquire(&self, until: Instant) -> Result<Slot<'_>, String> {
        self.acquire_with(until, None)
    }

    /// As [`Endpoint::acquire`], giving up when `abort` is aborted (checked
    /// every [`ABORT_POLL`] while waiting: a waiter is not armed, nothing
    /// wakes it but a released connection).
    fn acquire_with(&self, until: Instant, abort: Option<&Abort>) -> Result<Slot<'_>, String> {
        loop {
            let connection = {
                let mut pool = self.connections.lock_ignoring_poison();
                loop {
                    if let Some(connection) = pool.idle.pop() {
                        break connection;
                    }
                    if pool.open < pool.max_open {
                        pool.open += 1;
                        return Ok(Slot::New(NewSlot { endpoint: self }));
                    }
                    if abort.is_some_and(Abort::is_aborted) {
                        return Err(aborted().to_string());
                    }
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(format!(
                            "all {} connections (pool-size) stayed busy until the deadline",
                            pool.max_open
                        ));
                    }
                    let wait = match abort {
                        Some(_) => left.min(ABORT_POLL),
                        None => left,
                    };
                    pool.waiting += 1;
                    pool = ignore_poison(self.freed.wait_timeout(pool, wait)).0;
                    pool.waiting -= 1;
                }
            };
            // Checked outside the lock: it is a syscall, and with many
            // requests in flight the others need the pool meanwhile.
            if connection.is_reusable_now() {
                return Ok(Slot::Pooled(Lease {
                    endpoint: self,
                    connection: Some(connection),
                    abort: None,
                }));
            }
            // Closed by the server while idle: close it and free its place.
            drop(connection);
            self.release(None);
        }
    }

    /// Closes every idle connection (after one turned out stale: the
    /// server probably restarted, and the others are stale too).
    pub fn drop_idle(&self) {
        let mut pool = self.connections.lock_ignoring_poison();
        pool.open -= pool.idle.len();
        pool.idle.clear();
        self.freed.notify_all();
    }

    fn release(&self, connection: Option<Connection>) {
        let closed = {
            let mut pool = self.connections.lock_ignoring_poison();
            let closed = match connection {
                Some(connection)
                    if pool.idle.len() < pool.max_idle && pool.open <= pool.max_open =>
                {
                    pool.idle.push(connection);
                    None
                }
                other => {
                    pool.open -= 1;
                    other
                }
            };
            if pool.waiting > 0 {
                self.freed.notify_one();
            }
            closed
        };
        // Closed outside the lock.
        drop(closed);
    }
}

impl<'a> NewSlot<'a> {
    /// Opens the connection, trying each address the host resolves to.
    /// On failure the slot is freed (by drop).
    pub fn connect(
        self,
        connect_timeout: Duration,
        deadline: &Deadline,
    ) -> Result<Lease<'a>, String> {
        self.connect_abortable(connect_timeout, deadline, None)
    }

    /// As [`NewSlot::connect`]; `abort` ends each connect attempt at once
    /// (see [`Connection::connect`]).
    fn connect_abortable(
        self,
        connect_timeout: Duration,
        deadline: &Deadline,
        abort: Option<&Abort>,
    ) -> Result<Lease<'a>, String> {
        let Address { host, port, .. } = &self.endpoint.address;
        let addresses: Vec<SocketAddr> = (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        let mut last_error = format!("{host} resolves to no address");
        for address in addresses {
            let tls = self
                .endpoint
                .tls
                .as_ref()
                .map(|(config, name)| TlsTarget { config, name });
            let quick_ack = self.endpoint.quick_ack;
            match Connection::connect(address, connect_timeout, deadline, tls, quick_ack, abort) {
                Ok(connection) => {
                    let endpoint = self.endpoint;
                    // The slot now belongs to the lease.
                    std::mem::forget(self);
                    return Ok(Lease {
                        endpoint,
                        connection: Some(connection),
                        abort: None,
                    });
                }
                Err(e) => {
                    last_error = format!("connect to {address}: {e}");
                    if abort.is_some_and(Abort::is_aborted) {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }
}

impl Drop for NewSlot<'_> {
    fn drop(&mut self) {
        self.endpoint.release(None);
    }
}

impl Lease<'_> {
    /// Returns the connection to the idle list (its reply was fully read
    /// and the server keeps it open).
    pub fn keep(mut self) {
        self.disarm();
        let connection = self.connection.take();
        self.endpoint.release(connection);
    }

    /// Before the connection leaves this request (pooled or closed), an
    /// abort must no longer reach its socket.
    fn disarm(&mut self) {
        if let Some(abort) = self.abort.take() {
            abort.disarm();
        }
    }

    /// Reads a reply body nobody needs (error text, a PUT's short answer)
    /// so the connection can be reused: one of up to `max_skip` bytes
    /// with a known length. Otherwise, or when the server closes it, the
    /// connection is dropped.
    pub fn finish_unwanted(
        mut self,
        head: &ResponseHead,
        method: &str,
        max_skip: u64,
        deadline: &Deadline,
    ) {
        let reusable = match head.body(method) {
            Ok(Body::None) => true,
            Ok(Body::Length(len)) if len <= max_skip => self.skip_body(len, deadline).is_ok(),
            _ => false,
        };
        if reusable && head.keep_alive() {
            self.keep();
        }
    }
}

impl Deref for Lease<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.connection
            .as_ref()
            .expect("a lease holds its connection until kept")
    }
}

impl DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.connection
            .as_mut()
            .expect("a lease holds its connection until kept")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.disarm();
        if self.connection.is_some() {
            // Not kept: its state is unknown, close it.
            self.connection = None;
            self.endpoint.release(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::MAX_HEAD;

    fn parse(url: &str) -> Address {
        Address::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn parts_of_urls() {
        let a = parse("http://a:8076");
        assert_eq!((a.authority.as_str(), a.host.as_str()), ("a:8076", "a"));
        assert_eq!((a.port, a.target.as_str()), (8076, "/"));
        let b = parse("HTTP://[::1]/disk/x?v=1#frag");
        assert_eq!((b.host.as_str(), b.port), ("::1", 80));
        assert_eq!(
            (b.authority.as_str(), b.target.as_str()),
            ("[::1]", "/disk/x?v=1")
        );
        assert_eq!(parse("http://h:1?q").target, "/?q");
        assert_eq!(parse("http://[fe80::1]:9/").port, 9);
        assert!(!a.tls);
        let s = parse("HTTPS://[::1]/d");
        assert_eq!((s.host.as_str(), s.port, s.tls), ("::1", 443, true));
        assert_eq!(parse("https://h:8443").port, 8443);
    }

    #[test]
    fn refused_urls() {
        for bad in [
            "",
            "https:/a",
            "ftp://a",
            "a:8076",
            "http://",
            "http://:80",
            "http://a:0",
            "http://a:99999",
            "http://a:x",
            "http://u:p@a",
            "https://u:p@a",
            "https://",
            "http://[::1",
            "http://[::1]x",
            "http://a/b c",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// A one-thread HTTP server on loopback: accepts connections one
    /// after the other and answers each request head it reads with the
    /// next of `replies`; returns its URL and, at the end, how many
    /// connections it accepted.
    fn serve(replies: Vec<&'static str>) -> (String, std::thread::JoinHandle<usize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/disk", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut replies = replies.into_iter().peekable();
            let mut accepted = 0;
            while replies.peek().is_some() {
                let (mut stream, _) = listener.accept().unwrap();
                accepted += 1;
                'requests: while replies.peek().is_some() {
                    let mut head = Vec::new();
                    let mut byte = [0u8];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            // The client closed this connection: next one.
                            _ => break 'requests,
                        }
                    }
                    let reply = replies.next().expect("peeked");
                    stream.write_all(reply.as_bytes()).unwrap();
                }
            }
            accepted
        });
        (url, handle)
    }

    fn get(endpoint: &Endpoint, limit: usize) -> Result<(Vec<u8>, bool), String> {
        let deadline = Deadline::new(Duration::from_secs(10), Duration::from_secs(10));
        let request = crate::request::Request {
            method: "GET",
            target: &endpoint.address.target,
            host: &endpoint.address.authority,
            user_agent: "test",
            headers: &[],
            content_length: None,
        };
        let mut wire = Vec::new();
        request.write_head(&mut wire, None)?;
        let (mut lease, head) = endpoint
            .send(&wire, &[], Duration::from_secs(5), &deadline)
            .map_err(|e| e.to_string())?;
        let framing = head.body("GET")?;
        let body = lease.read_to_vec(framing, limit, &deadline)?;
        let kept = framing != Body::UntilClose && head.keep_alive();
        if kept {
            lease.keep();
        }
        Ok((body, kept))
    }

    fn pooled(url: &str, max_idle: usize) -> Endpoint {
        let pool = Pool {
            max_open: 4,
            max_idle,
            quick_ack: true,
        };
        Endpoint::new(parse(url), pool, None)
    }

    const CHUNKED: &str =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n";
    const LENGTH: &str = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";

    #[test]
    fn chunked_and_sized_replies_share_one_kept_alive_connection() {
        let (url, server) = serve(vec![CHUNKED, LENGTH, CHUNKED]);
        let endpoint = pooled(&url, 1);
        assert_eq!(get(&endpoint, 100), Ok((b"hello world".to_vec(), true)));
        assert_eq!(get(&endpoint, 100), Ok((b"abc".to_vec(), true)));
        assert_eq!(get(&endpoint, 100), Ok((b"hello world".to_vec(), true)));
        drop(endpoint);
        assert_eq!(server.join().unwrap(), 1, "connections accepted");
    }

    #[test]
    fn no_idle_connections_kept_means_one_connection_per_request() {
        let (url, server) = serve(vec![LENGTH, LENGTH, LENGTH]);
        let endpoint = pooled(&url, 0);
        for _ in 0..3 {
            assert_eq!(get(&endpoint, 100), Ok((b"abc".to_vec(), true)));
        }
        drop(endpoint);
        assert_eq!(server.join().unwrap(), 3, "connections accepted");
    }

    #[test]
    fn bodies_over_the_limit_and_cut_chunked_bodies_are_errors() {
        let (url, server) = serve(vec![CHUNKED, LENGTH]);
        let endpoint = pooled(&url, 1);
        let e = get(&endpoint, 10).unwrap_err();
        assert!(e.contains("larger than 10"), "{e}");
        // That connection was dropped (its body unread): a new one.
        let e = get(&endpoint, 2).unwrap_err();
        assert!(e.contains("more than 2"), "{e}");
        drop(endpoint);
        assert_eq!(server.join().unwrap(), 2, "connections accepted");

        let (url, server) = serve(vec![
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhel",
        ]);
        let e = get(&pooled(&url, 1), 100).unwrap_err();
        assert!(e.contains("cut short"), "{e}");
        server.join().unwrap();
    }

    /// Leaked so that [`serve`] can send it like the constant replies.
    fn leaked(text: String) -> &'static str {
        Box::leak(text.into_boxed_str())
    }

    #[test]
    fn a_body_larger_than_the_receive_buffer_arrives_whole_and_the_next_reply_too() {
        // Several buffers' worth, not a multiple of one, so the body is
        // received in many reads, some of its bytes with the head.
        let body: String = (0..300 * 1024 + 7)
            .map(|i| char::from(b'a' + (i % 23) as u8))
            .collect();
        let big = leaked(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        let (url, server) = serve(vec![big, LENGTH]);
        let endpoint = pooled(&url, 1);
        assert_eq!(get(&endpoint, 1 << 20), Ok((body.into_bytes(), true)));
        assert_eq!(get(&endpoint, 100), Ok((b"abc".to_vec(), true)));
        drop(endpoint);
        assert_eq!(server.join().unwrap(), 1, "connections accepted");
    }

    #[test]
    fn a_reply_head_over_the_limit_is_refused() {
        let padding = "x".repeat(MAX_HEAD);
        let (url, server) = serve(vec![
            leaked(format!(
                "HTTP/1.1 200 OK\r\nX-Pad: {padding}\r\nContent-Length: 0\r\n\r\n"
            )),
            leaked(format!(
                "HTTP/1.1 200 OK\r\nX-Pad: {}\r\nContent-Length: 3\r\n\r\nabc",
                &padding[..MAX_HEAD - 100]
            )),
        ]);
        let endpoint = pooled(&url, 1);
        let e = get(&endpoint, 100).unwrap_err();
        assert!(e.contains(&format!("larger than {MAX_HEAD} bytes")), "{e}");
        // Just under the limit is fine (on a new connection).
        assert_eq!(get(&endpoint, 100), Ok((b"abc".to_vec(), true)));
        drop(endpoint);
        assert_eq!(server.join().unwrap(), 2, "connections accepted");
    }

    /// An endpoint nobody listens on: only its slots are used.
    fn unconnected(max_open: usize) -> Endpoint {
        let pool = Pool {
            max_open,
            max_idle: max_open,
            quick_ack: false,
        };
        Endpoint::new(parse("http://127.0.0.1:9/"), pool, None)
    }

    fn is_new(slot: &Slot<'_>) -> bool {
        matches!(slot, Slot::New(_))
    }

    #[test]
    fn a_request_waiting_for_a_connection_gets_one_when_the_bound_grows() {
        let endpoint = unconnected(1);
        let held = endpoint.acquire(Instant::now() + Duration::from_secs(1));
        assert!(held.as_ref().is_ok_and(is_new));
        // At the bound: a short wait ends in an error naming it.
        let e = endpoint
            .acquire(Instant::now() + Duration::from_millis(50))
            .err()
            .expect("no second slot at max_open 1");
        assert!(e.contains("all 1 connections"), "{e}");
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let started = Instant::now();
                let slot = endpoint.acquire(Instant::now() + Duration::from_secs(30));
                (slot.as_ref().is_ok_and(is_new), started.elapsed())
            });
            std::thread::sleep(Duration::from_millis(100));
            endpoint.set_bounds(2, 2);
            let (got_one, waited) = waiter.join().unwrap();
            assert!(got_one);
            // Woken by the change, not by its 30 s deadline.
            assert!(waited < Duration::from_secs(10), "{waited:?}");
        });
        assert_eq!(endpoint.max_open(), 2);
        drop(held);
    }

    #[test]
    fn a_request_waiting_for_a_connection_is_woken_when_one_is_released() {
        let endpoint = unconnected(1);
        let held = endpoint.acquire(Instant::now() + Duration::from_secs(1));
        assert!(held.as_ref().is_ok_and(is_new));
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let started = Instant::now();
                let slot = endpoint.acquire(Instant::now() + Duration::from_secs(30));
                (slot.as_ref().is_ok_and(is_new), started.elapsed())
            });
            // Released only once the waiter is counted as waiting.
            let deadline = Instant::now() + Duration::from_secs(10);
            while endpoint.connections.lock_ignoring_poison().waiting == 0
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(held);
            let (got_one, waited) = waiter.join().unwrap();
            assert!(got_one);
            // Woken by the release, not by its 30 s deadline.
            assert!(waited < Duration::from_secs(10), "{waited:?}");
        });
        assert_eq!(endpoint.connections.lock_ignoring_poison().waiting, 0);
    }

    #[test]
    fn a_smaller_bound_closes_idle_connections_beyond_it() {
        let (url, server) = serve(vec![LENGTH]);
        let endpoint = pooled(&url, 2);
        get(&endpoint, 100).unwrap();
        let counts = || {
            let pool = endpoint.connections.lock_ignoring_poison();
            (pool.idle.len(), pool.open)
        };
        assert_eq!(counts(), (1, 1), "kept alive after its reply");
        endpoint.set_bounds(1, 0);
        assert_eq!(counts(), (0, 0), "closed by the smaller bound");
        server.join().unwrap();
    }
}
