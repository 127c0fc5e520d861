//! One connection, served by its own worker thread until it closes: reads
//! that never wait past the idle timeout (nor, for a request head, past
//! its deadline), the request loop (keep-alive, replies, per-request
//! logs), and a close that does not destroy the last reply.

use std::io::{self, BufReader, BufWriter};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::auth;
use crate::handlers::{self, BodySource};
use crate::http::{self, HeadError, HttpError, Request};
use crate::metrics::Op;
use crate::poll::poll_in;
use crate::reply::{self, Reply};
use crate::signals;
use crate::state::State;
use crate::tls::{self, Outgoing};

/// The read side of a connection: every read waits at most the idle
/// timeout, and, while a deadline is set (reading a request head), never
/// past that deadline, so a client dribbling a head byte by byte is
/// dropped as surely as a silent one.
///
/// On HTTPS, reads decrypt through `tls`, and the timeout is re-armed
/// before every socket read it makes (the handshake's too).
struct TimedStream {
    stream: TcpStream,
    tls: Option<tls::Session>,
    idle: Duration,
    deadline: Option<Instant>,
    /// The socket's read timeout as last set (`None`: unknown).
    armed: Option<Duration>,
}

/// A read timeout is lowered only when the time left is this much shorter
/// than the one set: a request head may then end up to this much past its
/// deadline, and in exchange a healthy request costs no setsockopt (it
/// was one of five syscalls per 4 KiB read).
const REARM_SLACK: Duration = Duration::from_millis(100);

impl io::Read for TimedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tls.clone() {
            None => {
                tls_io::Socket::arm_read(self)?;
                self.stream.read(buf)
            }
            Some(session) => session.read(self, buf),
        }
    }
}

impl TimedStream {
    /// HTTPS: completes the handshake if not done yet, bounded by the
    /// deadline like a request head.
    fn finish_handshake(&mut self) -> io::Result<()> {
        match self.tls.clone() {
            None => Ok(()),
            Some(session) => session.handshake(self),
        }
    }
}

impl tls_io::Socket for TimedStream {
    fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Sets the socket's read timeout for the next read, when the one set
    /// is too long (by more than [`REARM_SLACK`]) or too short.
    fn arm_read(&mut self) -> io::Result<()> {
        let wait = match self.deadline {
            None => self.idle,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not received within the idle timeout",
                    ));
                }
                left.min(self.idle)
            }
        };
        if needs_rearm(self.armed, wait) {
            self.stream.set_read_timeout(Some(wait))?;
            self.armed = Some(wait);
        }
        Ok(())
    }

    /// The send timeout is the idle timeout, set once per connection.
    fn arm_write(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether a read that must wait at most `wait` needs the socket's read
/// timeout changed from `armed` (see [`REARM_SLACK`]).
fn needs_rearm(armed: Option<Duration>, wait: Duration) -> bool {
    armed.is_none_or(|armed| wait > armed || wait + REARM_SLACK < armed)
}

/// How often a waiting connection checks for a stop request.
const POLL_SLICE: Duration = Duration::from_millis(200);

/// Waits until the connection has input, for at most the idle timeout.
/// False when the client stayed silent, or a stop was requested.
fn wait_for_request(reader: &BufReader<TimedStream>, idle: Duration) -> bool {
    if !reader.buffer().is_empty()
        || (reader.get_ref().tls.as_ref()).is_some_and(tls::Session::has_buffered_input)
    {
        return true;
    }
    let deadline = Instant::now() + idle;
    let mut fds = [libc::pollfd {
        fd: reader.get_ref().stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    loop {
        if signals::stopping() {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        fds[0].revents = 0;
        match poll_in(&mut fds, left.min(POLL_SLICE)) {
            Ok(0) => continue,
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
}

/// Serves the requests of one connection until it closes, idles out, errs
/// or the server stops.
pub fn serve_connection(stream: TcpStream, peer: SocketAddr, state: &State) {
    let Some(mut conn) = Connection::open(stream, peer, state) else {
        return;
    };
    log::debug!("{peer}: connected");
    // Set when the server closes while the client may still be sending.
    let linger = loop {
        match serve_request(&mut conn, state) {
            After::NextRequest => {}
            After::Close => break false,
            After::Linger => break true,
        }
    };
    if linger {
        linger_close(&mut conn.reader);
    }
    log::debug!("{peer}: closed");
}

/// A connection being served: its read and write halves and what both
/// need.
struct Connection {
    peer: SocketAddr,
    reader: BufReader<TimedStream>,
    writer: BufWriter<Outgoing>,
    /// HTTPS: the TLS state both halves share.
    session: Option<tls::Session>,
    /// The socket, for the idle list and for peeking at it.
    fd: RawFd,
    idle: Duration,
}

/// What a connection does after a request.
enum After {
    /// Waits for the next request (keep-alive).
    NextRequest,
    /// Closes at once.
    Close,
    /// Closes while the client may still be sending: stops sending and
    /// drains first ([`linger_close`]).
    Linger,
}

impl Connection {
    /// Sets the socket's timeouts and wraps its two halves, through TLS
    /// on HTTPS. `None` (logged) when the socket or TLS cannot be set up.
    fn open(stream: TcpStream, peer: SocketAddr, state: &State) -> Option<Connection> {
        let idle = state.config.idle_timeout;
        let setup = stream
            .set_read_timeout(Some(idle))
            .and_then(|_| stream.set_write_timeout(Some(idle)))
            .and_then(|_| stream.set_nodelay(true))
            .and_then(|_| stream.try_clone());
        let write_half = match setup {
            Ok(clone) => clone,
            Err(e) => {
                log::error!("{peer}: cannot set up the connection: {e}");
                return None;
            }
        };
        let session = match state.tls.as_ref().map(|t| tls::Session::new(t.current())) {
            None => None,
            Some(Ok(session)) => Some(session),
            Some(Err(e)) => {
                log::error!("{peer}: cannot set up TLS: {e}");
                return None;
            }
        };
        let reader = BufReader::with_capacity(
            64 * 1024,
            TimedStream {
                stream,
                tls: session.clone(),
                idle,
                deadline: None,
                // Set just above.
                armed: Some(idle),
            },
        );
        let writer =
            BufWriter::with_capacity(64 * 1024, Outgoing::new(write_half, session.clone()));
        let fd = reader.get_ref().stream.as_raw_fd();
        Some(Connection {
            peer,
            reader,
            writer,
            session,
            fd,
            idle,
        })
    }
}

/// Serves the connection's next request: waits for it, reads its head,
/// decides the reply, sends it, counts it and logs it.
fn serve_request(conn: &mut Connection, state: &State) -> After {
    let (request, started) = match next_request(conn, state) {
        Ok(next) => next,
        Err(after) => return after,
    };
    let _in_flight = state.metrics.request_started();
    let (reply, body_pending) = decide(conn, &request, state);
    let keep_alive = request.keep_alive() && !reply.close && !body_pending && !signals::stopping();
    let result = reply::send(
        &mut conn.writer,
        &reply,
        keep_alive,
        request.minor == 0,
        request.method == "HEAD",
        state.disk.get(),
    );
    state
        .metrics
        .count_reply(&request, &reply, &result, state.disk.get().is_some());
    log_request(conn.peer, &request, &reply, started);
    if let Err(e) = result {
        log::debug!("{}: reply not delivered: {e}", conn.peer);
        return After::Close;
    }
    match (keep_alive, body_pending) {
        (true, _) => After::NextRequest,
        (false, false) => After::Close,
        (false, true) => After::Linger,
    }
}

/// Waits for the next request and reads its head, the TLS handshake
/// first if not done yet, both within the idle timeout. The request and
/// when it started; `Err` when the connection ends instead.
fn next_request(conn: &mut Connection, state: &State) -> Result<(Request, Instant), After> {
    let peer = conn.peer;
    let ticket = state.idle.begin_wait(conn.fd, peer);
    let request_came = wait_for_request(&conn.reader, conn.idle);
    if !state.idle.end_wait(ticket) || !request_came {
        // Closed to make room for a new client, silent past the idle
        // timeout, gone, or the server stops.
        return Err(After::Close);
    }
    let started = Instant::now();
    conn.reader.get_mut().deadline = Some(started + conn.idle);
    if let Err(e) = conn.reader.get_mut().finish_handshake() {
        tls::log_handshake_failure(peer, &e);
        return Err(After::Close);
    }
    let head = http::read_head(&mut conn.reader);
    conn.reader.get_mut().deadline = None;
    match head {
        Ok(Some(request)) => Ok((request, started)),
        Ok(None) => Err(After::Close),
        Err(HeadError::Gone(e)) => {
            log::debug!("{peer}: connection ended in a request head: {e}");
            Err(After::Close)
        }
        Err(HeadError::Bad(e)) => {
            refuse_bad_head(conn, state, e);
            Err(After::Linger)
        }
    }
}

/// Answers a malformed or oversized head; the connection then closes.
fn refuse_bad_head(conn: &mut Connection, state: &State, e: HttpError) {
    state.metrics.count_request(Op::Other, e.status);
    let reply = Reply::error(e.status, e.reason).closing();
    let peer = conn.peer;
    log::debug!("{peer}: bad request -> {} {}", reply.status, reply.reason());
    let _ = reply::send(&mut conn.writer, &reply, false, false, false, None);
}

/// The reply to a request whose head was read: the checks every request
/// goes through first (peer, credentials, framing, `Expect`), then its
/// handler. Also whether the request's body was left unread.
fn decide(conn: &mut Connection, request: &Request, state: &State) -> (Reply, bool) {
    // The peer is checked first, so a refused peer learns nothing
    // else about the server and none of its body is read.
    let policy = state.policy.current();
    let prelude = handlers::check_peer(conn.peer.ip(), &policy)
        .and_then(|_| handlers::check_credentials(request, &policy))
        .and_then(|_| request.framing())
        .and_then(|framing| Ok((framing, request.expects_continue()?)));
    let (reply, framing, consumed) = match prelude {
        Err(e) if e.status == 401 => {
            let reply = Reply::error(e.status, e.reason).closing();
            (reply.with("WWW-Authenticate", auth::CHALLENGE), None, false)
        }
        Err(e) => (Reply::error(e.status, e.reason).closing(), None, false),
        Ok((framing, expect_continue)) => {
            let (session, fd) = (&conn.session, conn.fd);
            let mut body = BodySource {
                reader: &mut conn.reader,
                writer: &mut conn.writer,
                framing,
                expect_continue,
                consumed: false,
                client_gone: &|| match session {
                    None => client_closed(fd),
                    Some(session) => session.peer_has_closed_now(fd),
                },
            };
            let reply = handlers::handle(request, state, &mut body);
            let consumed = body.consumed;
            (reply, Some(framing), consumed)
        }
    };
    // A body left unread (refused request) leaves the stream at an
    // unknown place: the connection cannot carry another request.
    let body_pending = framing.is_none_or(|f| f.has_body() && !consumed);
    (reply, body_pending)
}

/// The request's log line, once its reply was sent.
fn log_request(peer: SocketAddr, request: &Request, reply: &Reply, started: Instant) {
    // 503 is the expected answer while the disk is held elsewhere:
    // logging each one would flood syslog with every client's retry.
    let level = if reply.status >= 500 && reply.status != 503 {
        log::Level::Error
    } else {
        log::Level::Debug
    };
    // Formatted only when logged: most requests are not (`-v` off).
    if log::log_enabled!(level) {
        log::log!(
            level,
            "{peer} {} {} {}-> {}{} ({} ms)",
            request.method,
            request.target,
            describe_range(request),
            reply.status,
            match reply.reason() {
                "" => String::new(),
                reason => format!(" {reason}"),
            },
            started.elapsed().as_millis()
        );
    }
}

/// Whether the peer of `fd` has closed or reset the connection, without
/// consuming anything: after a request, a waiting client sends nothing
/// more, so the socket has no data (EAGAIN); end of stream or an error
/// means it is gone. Bytes of a pipelined next request mean it is not.
fn client_closed(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is the connection's open socket for the whole call and
    // `byte` is a valid one-byte buffer; MSG_PEEK leaves the data queued.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => !matches!(
            io::Error::last_os_error().kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    }
}

/// Most time and bytes spent draining a refused request before closing.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 4 << 20;

/// Closing a socket with unread input makes the kernel send a reset, which
/// can destroy the error reply before the client reads it (curl would then
/// report "connection reset" instead of our 413). So: stop sending, drain
/// what the client still sends for a short, bounded while, then close.
fn linger_close(reader: &mut BufReader<TimedStream>) {
    let _ = reader.get_ref().stream.shutdown(std::net::Shutdown::Write);
    reader.get_mut().idle = Duration::from_millis(200);
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    let mut buf = [0u8; 64 * 1024];
    while drained < LINGER_BYTES && Instant::now() < deadline {
        match std::io::Read::read(reader, &mut buf) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => break,
        }
    }
}

/// The range headers of a request, for its log line.
fn describe_range(request: &http::Request) -> String {
    ["Range", "Content-Range", "X-Disk-Op", "X-Disk-Range"]
        .iter()
        .filter_map(|name| request.header(name).map(|v| format!("[{name}: {v}] ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread;
    use tls_io::rustls::ClientConnection;

    #[test]
    fn the_read_timeout_is_set_again_only_when_it_must_change() {
        let idle = Duration::from_secs(30);
        // Unknown: set.
        assert!(needs_rearm(None, idle));
        // A head read right after the request started (its deadline is
        // the idle timeout from now): the timeout set is close enough.
        assert!(!needs_rearm(Some(idle), idle));
        assert!(!needs_rearm(Some(idle), idle - Duration::from_millis(1)));
        // A head running late: lowered, so the deadline holds.
        assert!(needs_rearm(Some(idle), idle - REARM_SLACK * 2));
        // Never left shorter than a read may wait.
        assert!(needs_rearm(Some(idle - REARM_SLACK * 2), idle));
    }

    /// A self-signed certificate for localhost, made by the openssl CLI.
    fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
            ])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success());
        (cert, key)
    }

    /// Two requests, each in its own TLS record, sent in one TCP write
    /// after the handshake; the client then waits for the server to close.
    fn pipelining_client(port: u16, cert: std::path::PathBuf) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let config = tls_io::client_trusting(&cert).unwrap();
            let name = "localhost".try_into().unwrap();
            let mut conn = ClientConnection::new(Arc::new(config), name).unwrap();
            let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut socket).unwrap();
            }
            for request in ["HEAD /a HTTP/1.1\r\n\r\n", "HEAD /b HTTP/1.1\r\n\r\n"] {
                conn.writer().write_all(request.as_bytes()).unwrap();
            }
            let mut wire = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut wire).unwrap();
            }
            socket.write_all(&wire).unwrap();
            // Until the server closes (session tickets come meanwhile),
            // 10 s at most.
            let mut buf = [0u8; 4096];
            while matches!(socket.read(&mut buf), Ok(n) if n > 0) {}
        })
    }

    #[test]
    fn a_request_decrypted_inside_tls_is_served_without_waiting_for_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = pipelining_client(listener.local_addr().unwrap().port(), cert.clone());
        let (stream, _) = listener.accept().unwrap();
        let idle = Duration::from_secs(2);
        stream.set_write_timeout(Some(idle)).unwrap();
        let fd = stream.as_raw_fd();
        let session = tls::Session::new(tls::load(&cert, &key).unwrap()).unwrap();
        let mut reader = BufReader::new(TimedStream {
            stream,
            tls: Some(session.clone()),
            idle,
            deadline: Some(Instant::now() + idle),
            armed: None,
        });
        reader.get_mut().finish_handshake().unwrap();
        reader.get_mut().deadline = None;
        // Both requests reach rustls the way `client_gone` takes them in
        // (reading what the socket holds) and nothing stays on the socket.
        assert!(wait_for_request(&reader, idle));
        assert!(!session.peer_has_closed_now(fd));
        let mut none = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(poll_in(&mut none, Duration::ZERO).unwrap(), 0);

        // Waiting for the next request must see them at once, not after
        // the idle timeout.
        let started = Instant::now();
        assert!(wait_for_request(&reader, idle), "the requests were missed");
        assert!(started.elapsed() < Duration::from_secs(1));
        for path in ["/a", "/b"] {
            let request = http::read_head(&mut reader).unwrap().unwrap();
            assert_eq!(request.target, path);
        }
        drop(reader);
        client.join().unwrap();
    }
}
