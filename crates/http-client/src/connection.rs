//! One keep-alive HTTP/1.1 connection: sends a request in as few writes as
//! possible, reads the reply head through a small buffer and the body
//! straight into the caller's buffer, all under a per-request deadline.
//!
//! Cost per request is the point of this module (see multihttp's
//! `transport.rs` for why it replaced ureq): a healthy 4 KiB read is one
//! send and one or two recvs, with no setsockopt (s3 adds one: quick ACKs
//! below). Socket timeouts are set once per connection
//! to the request's step timeout (`io-timeout` for data) and lowered only
//! when the deadline is closer than that, so a request ends at most
//! [`DEADLINE_SLACK`] after its deadline.
//!
//! `https://`: the same, through a rustls connection. The TLS loops
//! (`tls-io`) arm the socket timeout before every socket call they make,
//! with the same rule, so the deadline bounds the handshake and every TLS
//! read and write too. Plain connections never touch that code.
//!
//! Quick ACKs ([`Connection::connect`]'s `quick_ack`, s3 only): one
//! `TCP_QUICKACK` setsockopt per request, between sending it and reading
//! its reply. Why: Garage (hyper, Nagle on) writes a reply's head and its
//! body in two segments, and sends the body only once the head is ACKed;
//! on a kept-alive connection Linux delays that ACK by ~40 ms (it has
//! switched to delayed-ACK mode, seeing requests and replies alternate),
//! so every GET took ~43 ms. New connections start in quick-ACK mode,
//! which is why a connection per request (s3's old `pool-size=0`) did not
//! stall. The flag is not sticky (the kernel drops back to delayed ACKs
//! when we send the next request), hence once per request, after the
//! send. Not for multihttp: http-disk-server sets TCP_NODELAY, so its
//! replies never wait for our ACK, and multihttp's requests are tuned to
//! as few syscalls as possible (a setsockopt would add a fourth to a
//! 4 KiB read's three, for nothing).

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tls_io::rustls::pki_types::ServerName;
use tls_io::rustls::{ClientConfig, ClientConnection};

use http_disk_protocol::chunked::ChunkedDecoder;
use socket2::{Domain, Protocol, Socket as Socket2, Type};

use crate::abort::{Abort, Aborted};
use crate::response::{self, Body, ResponseHead};

/// Largest reply head accepted (status line and headers). Our server's
/// are ~200 bytes; a peer sending endless headers is cut off here.
pub const MAX_HEAD: usize = 16 * 1024;
/// Size of a connection's receive buffer: reply heads are parsed in it,
/// and plain-HTTP bodies pass through it (see [`Connection::read_body`]).
/// 64 KiB measured best for 1 MiB reads (16 KiB and 256 KiB cost more).
const RECEIVE_BUFFER: usize = 64 * 1024;
/// Interim (1xx) replies skipped before the real one.
const MAX_INTERIM_REPLIES: usize = 4;
/// Request bodies up to this size go out in the same write as the head.
pub const COALESCE_BODY: usize = 64 * 1024;
/// How far past its deadline a request may end: a socket timeout is only
/// lowered when the time left is this much shorter than it.
pub const DEADLINE_SLACK: Duration = Duration::from_millis(250);

/// When a request must be over, and the timeout of each blocking call
/// while the deadline is further away than that.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
    step: Duration,
}

/// Slowest payload rate a working server or store is allowed (1 MiB/s):
/// see [`Deadline::for_payload`].
pub const MIN_TRANSFER_RATE: u64 = 1 << 20;

impl Deadline {
    pub fn new(total: Duration, step: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + total,
            step: step.min(total),
        }
    }

    /// The one deadline rule of a request carrying `bytes` (multihttp's
    /// and s3's): `io_timeout` plus the time the payload needs at `rate`
    /// bytes a second, each blocking call bounded by `io_timeout`. A large
    /// transfer on a slow but working link is not cut, while a peer that
    /// stopped is given up after about `io_timeout`.
    pub fn for_payload(io_timeout: Duration, bytes: u64, rate: u64) -> Deadline {
        let total = io_timeout + Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
        Deadline::new(total, io_timeout)
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    /// This deadline, or `limit` from now if that comes first.
    fn within(&self, limit: Duration) -> Deadline {
        let at = self.at.min(Instant::now() + limit);
        Deadline {
            at,
            step: self.step.min(limit),
        }
    }

    /// Timeout for the next blocking call; `TimedOut` once the deadline
    /// has passed.
    fn next_timeout(&self) -> io::Result<Duration> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(left.min(self.step))
    }
}

/// Why a request on a connection failed.
#[derive(Debug)]
pub enum Failure {
    /// The connection was closed or reset before a single byte of the
    /// reply arrived: on a reused connection, the server had dropped it
    /// while idle; the request can be sent again on a new one.
    ClosedBeforeReply(String),
    /// Anything else: timeout, reset mid-reply, malformed reply.
    Other(String),
}

impl Failure {
    pub fn into_message(self) -> String {
        match self {
            Failure::ClosedBeforeReply(m) | Failure::Other(m) => m,
        }
    }
}

pub struct Connection {
    socket: Socket,
    /// `https://`: the TLS connection all bytes go through.
    tls: Option<Box<ClientConnection>>,
    /// Reply bytes received but not consumed yet: `buf[start..end]`.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Set `TCP_QUICKACK` after each request is sent (see the top comment).
    quick_ack: bool,
}

/// A connecting socket armed for [`Abort`]; disarmed on drop, before the
/// socket can be closed (an abort must never shut down a reused fd).
struct ArmedConnect<'a>(&'a Abort);

impl<'a> ArmedConnect<'a> {
    fn arm(abort: &'a Abort, fd: RawFd) -> io::Result<ArmedConnect<'a>> {
        abort
            .arm(fd)
            .map_err(|Aborted| io::Error::other("aborted"))?;
        Ok(ArmedConnect(abort))
    }
}

impl Drop for ArmedConnect<'_> {
    fn drop(&mut self) {
        self.0.disarm();
    }
}

/// The TCP socket and its timeouts as last set.
struct Socket {
    stream: TcpStream,
    read_timeout: Duration,
    write_timeout: Duration,
}

/// What an `https://` connection is checked against.
pub struct TlsTarget<'a> {
    pub config: &'a Arc<ClientConfig>,
    /// The URL's host: the certificate must name it.
    pub name: &'a ServerName<'static>,
}

impl Connection {
    /// Connects, and for `tls` completes the handshake; both within
    /// `connect_timeout` and the deadline. `quick_ack`: see the top comment.
    /// `abort` may end both at once from another thread: the socket is
    /// armed from before its connect starts, so a connect to a host that
    /// drops every packet (no reset, no refusal) need not run out its
    /// timeout; it is disarmed again before this returns.
    pub fn connect(
        address: SocketAddr,
        connect_timeout: Duration,
        deadline: &Deadline,
        tls: Option<TlsTarget<'_>>,
        quick_ack: bool,
        abort: Option<&Abort>,
    ) -> io::Result<Connection> {
        let socket = Socket2::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        let _armed = match abort {
            Some(abort) => Some(ArmedConnect::arm(abort, socket.as_raw_fd())?),
            None => None,
        };
        let connection =
            Self::connect_on(socket, address, connect_timeout, deadline, tls, quick_ack);
        match abort {
            Some(abort) if abort.is_aborted() => Err(io::Error::other("aborted")),
            _ => connection,
        }
    }

    fn connect_on(
        socket: Socket2,
        address: SocketAddr,
        connect_timeout: Duration,
        deadline: &Deadline,
        tls: Option<TlsTarget<'_>>,
        quick_ack: bool,
    ) -> io::Result<Connection> {
        let timeout = deadline.next_timeout()?.min(connect_timeout);
        socket.connect_timeout(&address.into(), timeout)?;
        let stream: TcpStream = socket.into();
        // Requests are single writes already; never let Nagle hold one
        // back waiting for the ACK of the previous one.
        stream.set_nodelay(true)?;
        let step = deadline.next_timeout()?;
        stream.set_read_timeout(Some(step))?;
        stream.set_write_timeout(Some(step))?;
        let mut socket = Socket {
            stream,
            read_timeout: step,
            write_timeout: step,
        };
        let tls = match tls {
            None => None,
            Some(target) => Some(handshake(
                &mut socket,
                target,
                &deadline.within(connect_timeout),
            )?),
        };
        Ok(Connection {
            socket,
            tls,
            buf: vec![0; RECEIVE_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            quick_ack,
        })
    }

    /// The socket, for [`crate::abort::Abort`].
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.socket.stream.as_raw_fd()
    }

    /// Whether an idle connection can carry a request: nothing unread is
    /// buffered and the server has neither closed it nor sent anything
    /// (one non-blocking peek, no mode switch).
    pub fn is_reusable_now(&self) -> bool {
        if self.start != self.end {
            return false;
        }
        let mut byte = 0u8;
        // SAFETY: a valid socket fd and a 1-byte buffer we own.
        let n = unsafe {
            libc::recv(
                self.socket.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// Sends a request (`request`, then `tail` when the body was too large
    /// to copy after the head), then reads the reply head.
    pub fn exchange(
        &mut self,
        request: &[u8],
        tail: &[u8],
        deadline: &Deadline,
    ) -> Result<ResponseHead, Failure> {
        let sent = if let Some(tls) = &mut self.tls {
            let mut socket = Armed {
                socket: &mut self.socket,
                deadline,
            };
            tls_io::write_all(tls, &mut socket, request)
                .and_then(|()| tls_io::write_all(tls, &mut socket, tail))
        } else if tail.is_empty() {
            self.send_all(request, 0, deadline)
        } else {
            self.send_all(request, libc::MSG_MORE, deadline)
                .and_then(|()| self.send_all(tail, 0, deadline))
        };
        if let Err(e) = sent {
            return Err(match e.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                    Failure::ClosedBeforeReply(format!("sending the request: {e}"))
                }
                _ => Failure::Other(format!("sending the request: {}", describe(&e))),
            });
        }
        if self.quick_ack {
            self.socket.quick_ack();
        }
        self.read_head(deadline)
    }

    fn send_all(
        &mut self,
        mut data: &[u8],
        flags: libc::c_int,
        deadline: &Deadline,
    ) -> io::Result<()> {
        while !data.is_empty() {
            self.socket.arm_write(deadline)?;
            // SAFETY: a valid socket fd and a buffer of data.len() bytes.
            // MSG_NOSIGNAL: a closed peer is an EPIPE error, never a
            // SIGPIPE that nbdkit did not ask for.
            let n = unsafe {
                libc::send(
                    self.socket.stream.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    flags | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Err(timed_out("send")),
                    _ => return Err(e),
                }
            }
            data = &data[n as usize..];
        }
        Ok(())
    }

    /// Reads until a complete final (non-1xx) reply head is buffered.
    fn read_head(&mut self, deadline: &Deadline) -> Result<ResponseHead, Failure> {
        let mut received_any = false;
        let mut interim = 0;
        loop {
            // Parsing at most MAX_HEAD bytes: a longer head never parses,
            // however much of it one read brought in.
            let window = self.end.min(self.start + MAX_HEAD);
            match response::parse_head(&self.buf[self.start..window]) {
                Ok(Some((head, len))) => {
                    self.start += len;
                    if !(100..200).contains(&head.status) {
                        return Ok(head);
                    }
                    interim += 1;
                    if interim > MAX_INTERIM_REPLIES {
                        return Err(Failure::Other(format!(
                            "more than {MAX_INTERIM_REPLIES} interim (1xx) replies"
                        )));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(why) => return Err(Failure::Other(format!("malformed reply: {why}"))),
            }
            if self.end - self.start >= MAX_HEAD {
                return Err(Failure::Other(format!(
                    "reply head larger than {MAX_HEAD} bytes"
                )));
            }
            self.compact();
            match self.fill(deadline) {
                Ok(0) if !received_any => {
                    return Err(Failure::ClosedBeforeReply(
                        "connection closed before any reply".into(),
                    ))
                }
                Ok(0) => return Err(Failure::Other("connection closed mid reply head".into())),
                Ok(_) => received_any = true,
                Err(e) if !received_any && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(Failure::ClosedBeforeReply(format!("before any reply: {e}")))
                }
                Err(e) => {
                    return Err(Failure::Other(format!(
                        "reading the reply: {}",
                        describe(&e)
                    )))
                }
            }
        }
    }

    /// Fills `dest` with the next body bytes: first what is buffered, then
    /// from the socket, through the connection's buffer on plain HTTP.
    ///
    /// Why through the buffer, an extra copy: receiving a 1 MiB body
    /// straight into `dest` (nbdkit's request buffer) spent half of
    /// nbdkit's CPU in the kernel's copy to user space. Measured
    /// 2026-11-26 (fio 1 MiB reads through multihttp, 1 and 4 NBD
    /// connections, interleaved runs): receiving into this 64 KiB buffer,
    /// which stays in cache, and copying from it cut nbdkit's CPU per MiB
    /// from 720–850 µs to 490–630 µs (nbdkit + curl: 530–600) and raised
    /// throughput by 15–40 %. Receiving straight into `dest` in 64 KiB
    /// pieces did not help: what costs is the kernel writing the large,
    /// cache-cold destination (nbdkit keeps a buffer per worker thread,
    /// 16 per NBD connection). TLS decrypts from rustls' own buffers.
    pub fn read_body(&mut self, dest: &mut [u8], deadline: &Deadline) -> Result<(), String> {
        let buffered = (self.end - self.start).min(dest.len());
        dest[..buffered].copy_from_slice(&self.buf[self.start..self.start + buffered]);
        self.start += buffered;
        let mut filled = buffered;
        while filled < dest.len() {
            let received = if self.tls.is_some() {
                receive(
                    &mut self.socket,
                    &mut self.tls,
                    &mut dest[filled..],
                    deadline,
                )
            } else {
                self.receive_through_buffer(&mut dest[filled..], deadline)
            };
            match received {
                Ok(0) => {
                    return Err(format!(
                        "body cut short: {filled} of {} bytes, then the connection closed",
                        dest.len()
                    ))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(format!(
                        "body cut short at {filled} of {} bytes: {}",
                        dest.len(),
                        describe(&e)
                    ))
                }
            }
        }
        Ok(())
    }

    /// Reads a whole body delimited as `body` into a new buffer, refusing
    /// one of more than `limit` bytes. After `Ok`, the connection is at
    /// the next reply (reusable if the head allows keep-alive), except
    /// after [`Body::UntilClose`], where the server has closed it.
    pub fn read_to_vec(
        &mut self,
        body: Body,
        limit: usize,
        deadline: &Deadline,
    ) -> Result<Vec<u8>, String> {
        match body {
            Body::None => Ok(Vec::new()),
            Body::Length(len) => {
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&len| len <= limit)
                    .ok_or_else(|| format!("body of {len} bytes, more than {limit}"))?;
                let mut out = vec![0; len];
                self.read_body(&mut out, deadline)?;
                Ok(out)
            }
            Body::Chunked => self.read_chunked(limit, deadline),
            Body::UntilClose => {
                let mut out = Vec::new();
                loop {
                    out.extend_from_slice(&self.buf[self.start..self.end]);
                    self.start = self.end;
                    if out.len() > limit {
                        return Err(format!("body longer than {limit} bytes"));
                    }
                    self.compact();
                    match self.fill(deadline) {
                        Ok(0) => return Ok(out),
                        Ok(_) => {}
                        Err(e) => return Err(format!("reading the body: {}", describe(&e))),
                    }
                }
            }
            Body::Encoded => Err("a Transfer-Encoding other than chunked".into()),
        }
    }

    fn read_chunked(&mut self, limit: usize, deadline: &Deadline) -> Result<Vec<u8>, String> {
        let mut decoder = ChunkedDecoder::new(limit as u64);
        let mut out = Vec::new();
        loop {
            let used = decoder
                .feed(&self.buf[self.start..self.end], &mut out)
                .map_err(|e| format!("chunked body: {e}"))?;
            self.start += used;
            if decoder.is_done() {
                return Ok(out);
            }
            self.compact();
            match self.fill(deadline) {
                Ok(0) => return Err("chunked body cut short: the connection closed".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("chunked body: {}", describe(&e))),
            }
        }
    }

    /// Reads and drops `len` body bytes.
    pub fn skip_body(&mut self, mut len: u64, deadline: &Deadline) -> Result<(), String> {
        loop {
            let buffered = ((self.end - self.start) as u64).min(len);
            self.start += buffered as usize;
            len -= buffered;
            if len == 0 {
                return Ok(());
            }
            self.compact();
            match self.fill(deadline) {
                Ok(0) => return Err(format!("body cut short: {len} bytes missing")),
                Ok(_) => {}
                Err(e) => return Err(describe(&e)),
            }
        }
    }

    /// Whether the peer closes the connection with nothing more sent (for
    /// bodies delimited by the connection's end).
    pub fn at_end(&mut self, deadline: &Deadline) -> Result<bool, String> {
        if self.start != self.end {
            return Ok(false);
        }
        self.compact();
        match self.fill(deadline) {
            Ok(0) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(describe(&e)),
        }
    }

    fn compact(&mut self) {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
    }

    /// One read of at most `dest.len()` bytes into the (empty) buffer,
    /// copied to `dest`: never reads past the body.
    fn receive_through_buffer(
        &mut self,
        dest: &mut [u8],
        deadline: &Deadline,
    ) -> io::Result<usize> {
        debug_assert_eq!(self.start, self.end, "buffered bytes are consumed first");
        (self.start, self.end) = (0, 0);
        let want = dest.len().min(self.buf.len());
        let n = receive(
            &mut self.socket,
            &mut self.tls,
            &mut self.buf[..want],
            deadline,
        )?;
        dest[..n].copy_from_slice(&self.buf[..n]);
        Ok(n)
    }

    /// One read into the free end of the buffer.
    fn fill(&mut self, deadline: &Deadline) -> io::Result<usize> {
        loop {
            match receive(
                &mut self.socket,
                &mut self.tls,
                &mut self.buf[self.end..],
                deadline,
            ) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(timed_out("receive")),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Socket {
    /// ACK what arrives now at once (see the top comment). A failure
    /// costs only speed: ignored.
    fn quick_ack(&self) {
        #[cfg(target_os = "linux")]
        {
            let one: libc::c_int = 1;
            // SAFETY: a valid socket fd and an int option of its size.
            unsafe {
                libc::setsockopt(
                    self.stream.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    fn arm_read(&mut self, deadline: &Deadline) -> io::Result<()> {
        let want = deadline.next_timeout()?;
        if needs_change(self.read_timeout, want) {
            self.stream.set_read_timeout(Some(want))?;
            self.read_timeout = want;
        }
        Ok(())
    }

    fn arm_write(&mut self, deadline: &Deadline) -> io::Result<()> {
        let want = deadline.next_timeout()?;
        if needs_change(self.write_timeout, want) {
            self.stream.set_write_timeout(Some(want))?;
            self.write_timeout = want;
        }
        Ok(())
    }
}

/// The socket under a TLS connection, armed against one deadline.
struct Armed<'a> {
    socket: &'a mut Socket,
    deadline: &'a Deadline,
}

impl tls_io::Socket for Armed<'_> {
    fn raw_fd(&self) -> RawFd {
        self.socket.stream.as_raw_fd()
    }
    fn arm_read(&mut self) -> io::Result<()> {
        self.socket.arm_read(self.deadline)
    }
    fn arm_write(&mut self) -> io::Result<()> {
        self.socket.arm_write(self.deadline)
    }
}

/// One read of reply bytes into `dest`: straight from the socket, or
/// decrypted from as many TLS records as it takes.
fn receive(
    socket: &mut Socket,
    tls: &mut Option<Box<ClientConnection>>,
    dest: &mut [u8],
    deadline: &Deadline,
) -> io::Result<usize> {
    match tls {
        None => {
            socket.arm_read(deadline)?;
            socket.stream.read(dest)
        }
        Some(tls) => tls_io::read(tls, &mut Armed { socket, deadline }, dest),
    }
}

/// The TLS handshake of a new connection. The error says it is TLS and
/// carries rustls' reason (e.g. "invalid peer certificate: UnknownIssuer").
fn handshake(
    socket: &mut Socket,
    target: TlsTarget<'_>,
    deadline: &Deadline,
) -> io::Result<Box<ClientConnection>> {
    let mut tls = ClientConnection::new(Arc::clone(target.config), target.name.clone())
        .map_err(|e| io::Error::other(format!("TLS set-up: {e}")))?;
    tls_io::handshake(&mut tls, &mut Armed { socket, deadline })
        .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {}", describe(&e))))?;
    Ok(Box::new(tls))
}

/// Raise a socket timeout back to the step timeout; lower it only when the
/// deadline is more than the slack closer (keeps healthy requests free of
/// setsockopt calls).
fn needs_change(current: Duration, want: Duration) -> bool {
    want > current || want + DEADLINE_SLACK < current
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// An I/O error for the log, with the plain words for a timeout.
fn describe(e: &io::Error) -> String {
    if is_timeout(e) {
        format!("timed out ({e})")
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_change_only_when_needed() {
        let step = Duration::from_secs(30);
        assert!(!needs_change(step, step));
        assert!(!needs_change(step, step - Duration::from_millis(100)));
        assert!(needs_change(step, Duration::from_secs(2)));
        assert!(needs_change(Duration::from_secs(2), step));
    }

    /// A listener that drops every SYN, as a blackholed host does: its
    /// accept queue (backlog 0) is filled and never accepted from, and
    /// Linux then drops new SYNs instead of answering them. Returns the
    /// listener and the connections that filled it (kept open).
    fn silent_listener() -> (Socket2, SocketAddr, Vec<TcpStream>) {
        let listener = Socket2::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        listener.bind(&any.into()).unwrap();
        listener.listen(0).unwrap();
        let address = listener.local_addr().unwrap().as_socket().unwrap();
        let mut filling = Vec::new();
        for _ in 0..8 {
            match TcpStream::connect_timeout(&address, Duration::from_millis(300)) {
                Ok(stream) => filling.push(stream),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return (listener, address, filling)
                }
                Err(e) => panic!("filling the accept queue: {e}"),
            }
        }
        panic!("8 connections did not fill an accept queue of backlog 0");
    }

    #[test]
    fn an_abort_ends_a_connect_to_a_host_that_drops_every_packet() {
        let (_listener, address, _filling) = silent_listener();
        let abort = Arc::new(Abort::new());
        let request = abort.begin();
        let aborter = {
            let abort = Arc::clone(&abort);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                assert!(abort.abort(request));
            })
        };
        let started = Instant::now();
        let deadline = Deadline::new(Duration::from_secs(30), Duration::from_secs(30));
        let connect_timeout = Duration::from_secs(20);
        let result = Connection::connect(
            address,
            connect_timeout,
            &deadline,
            None,
            false,
            Some(&abort),
        );
        let waited = started.elapsed();
        aborter.join().unwrap();
        let error = result
            .err()
            .expect("a connect to a silent listener succeeded");
        assert_eq!(error.to_string(), "aborted");
        assert!(
            waited < Duration::from_secs(10),
            "the connect waited for its own timeout: {waited:?}"
        );
        // Disarmed on the way out: a later abort of the same request
        // shuts nothing down (the fd may already be someone else's).
        assert!(!abort.abort(request), "aborted twice");
    }

    #[test]
    fn a_connect_without_an_abort_to_a_silent_host_times_out() {
        // The other half of the test above: the listener really drops the
        // SYN (no abort, a short timeout, and the connect times out).
        let (_listener, address, _filling) = silent_listener();
        let deadline = Deadline::new(Duration::from_secs(30), Duration::from_secs(30));
        let result = Connection::connect(
            address,
            Duration::from_millis(300),
            &deadline,
            None,
            false,
            None,
        );
        let error = result
            .err()
            .expect("a connect to a silent listener succeeded");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    }

    #[test]
    fn a_passed_deadline_is_a_timeout() {
        let d = Deadline::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(
            d.next_timeout().unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        let d = Deadline::new(Duration::from_secs(60), Duration::from_secs(5));
        assert_eq!(d.next_timeout().unwrap(), Duration::from_secs(5));
    }

    #[test]
    fn a_payload_lengthens_the_deadline_not_each_call() {
        let io = Duration::from_secs(30);
        let d = Deadline::for_payload(io, 64 * MIN_TRANSFER_RATE, MIN_TRANSFER_RATE);
        let left = d.at.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(93) && left <= Duration::from_secs(94),
            "{left:?}"
        );
        assert_eq!(d.step, io);
        let small = Deadline::for_payload(io, 0, MIN_TRANSFER_RATE);
        assert!(small.at.saturating_duration_since(Instant::now()) <= io);
    }
}
