//! Connections: the accept loop, one worker thread per connection (at most
//! `--workers`), and the request loop of a connection (keep-alive, idle
//! timeout, replies, per-request logs). A thread per connection with
//! socket timeouts is what guarantees that an idle or slow client only
//! ever holds its own worker, never the others.

use std::io::{self, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::admission;
use crate::auth;
use crate::handlers::{self, BodySource};
use crate::http::{self, HeadError};
use crate::metrics::Op;
use crate::reload;
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

/// Polls one fd for input for at most `timeout`.
fn poll_in(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
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
fn serve_connection(stream: TcpStream, peer: SocketAddr, state: &State) {
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
            return;
        }
    };
    let session = match state.tls.as_ref().map(|t| tls::Session::new(t.current())) {
        None => None,
        Some(Ok(session)) => Some(session),
        Some(Err(e)) => {
            log::error!("{peer}: cannot set up TLS: {e}");
            return;
        }
    };
    let mut reader = BufReader::with_capacity(
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
    let mut writer =
        BufWriter::with_capacity(64 * 1024, Outgoing::new(write_half, session.clone()));
    let fd = reader.get_ref().stream.as_raw_fd();
    log::debug!("{peer}: connected");
    // Set when the server closes while the client may still be sending.
    let mut linger = false;
    loop {
        let ticket = state.idle.begin_wait(fd, peer);
        let request_came = wait_for_request(&reader, idle);
        if !state.idle.end_wait(ticket) || !request_came {
            // Closed to make room for a new client, silent past the idle
            // timeout, gone, or the server stops.
            break;
        }
        let started = Instant::now();
        reader.get_mut().deadline = Some(started + idle);
        if let Err(e) = reader.get_mut().finish_handshake() {
            tls::log_handshake_failure(peer, &e);
            break;
        }
        let head = http::read_head(&mut reader);
        reader.get_mut().deadline = None;
        let request = match head {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(HeadError::Gone(e)) => {
                log::debug!("{peer}: connection ended in a request head: {e}");
                break;
            }
            Err(HeadError::Bad(e)) => {
                state.metrics.count_request(Op::Other, e.status);
                let reply = Reply::error(e.status, e.reason).closing();
                log::debug!("{peer}: bad request -> {} {}", reply.status, reply.reason());
                let _ = reply::send(&mut writer, &reply, false, false, false, None);
                linger = true;
                break;
            }
        };
        let _in_flight = state.metrics.request_started();
        // The peer is checked first, so a refused peer learns nothing
        // else about the server and none of its body is read.
        let policy = state.policy.current();
        let prelude = handlers::check_peer(peer.ip(), &policy)
            .and_then(|_| handlers::check_credentials(&request, &policy))
            .and_then(|_| request.framing())
            .and_then(|framing| Ok((framing, request.expects_continue()?)));
        let (reply, framing, consumed) = match prelude {
            Err(e) if e.status == 401 => {
                let reply = Reply::error(e.status, e.reason).closing();
                (reply.with("WWW-Authenticate", auth::CHALLENGE), None, false)
            }
            Err(e) => (Reply::error(e.status, e.reason).closing(), None, false),
            Ok((framing, expect_continue)) => {
                let mut body = BodySource {
                    reader: &mut reader,
                    writer: &mut writer,
                    framing,
                    expect_continue,
                    consumed: false,
                    client_gone: &|| match &session {
                        None => client_closed(fd),
                        Some(session) => session.peer_has_closed_now(fd),
                    },
                };
                let reply = handlers::handle(&request, state, &mut body);
                let consumed = body.consumed;
                (reply, Some(framing), consumed)
            }
        };
        // A body left unread (refused request) leaves the stream at an
        // unknown place: the connection cannot carry another request.
        let body_pending = framing.is_none_or(|f| f.has_body() && !consumed);
        let keep_alive =
            request.keep_alive() && !reply.close && !body_pending && !signals::stopping();
        let result = reply::send(
            &mut writer,
            &reply,
            keep_alive,
            request.minor == 0,
            request.method == "HEAD",
            state.disk.get(),
        );
        state
            .metrics
            .count_reply(&request, &reply, &result, state.disk.get().is_some());
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
                describe_range(&request),
                reply.status,
                match reply.reason() {
                    "" => String::new(),
                    reason => format!(" {reason}"),
                },
                started.elapsed().as_millis()
            );
        }
        if let Err(e) = result {
            log::debug!("{peer}: reply not delivered: {e}");
            break;
        }
        if !keep_alive {
            linger = body_pending;
            break;
        }
    }
    if linger {
        linger_close(&mut reader);
    }
    log::debug!("{peer}: closed");
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
    use std::io::Read;
    use std::net::TcpListener;
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
