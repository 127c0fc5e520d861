//! `DiskServer`: the real `http-disk-server` binary serving one disk on a
//! free loopback port, for end-to-end tests of the server and of the
//! plugins that talk to it. Killed (with its process group) on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{artifact, free_port, Proc};

/// Where servers listen unless a test asks for another address.
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// How long the server gets to print `Server ready!`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `http-disk-server` on 127.0.0.1 (or `::1`, see
/// [`DiskServer::start_on_ip`]).
pub struct DiskServer {
    pub proc: Proc,
    /// The address it listens on (`--ip`).
    pub ip: IpAddr,
    pub port: u16,
    pub disk: PathBuf,
    /// Port of `--metrics-listen` on 127.0.0.1, when started with it.
    pub metrics_port: Option<u16>,
}

impl DiskServer {
    /// Starts the server on `disk` with extra `args` (e.g. `["--readonly"]`)
    /// on a free port of 127.0.0.1, and waits for `Server ready!`.
    /// Panics with the server's output if it does not become ready.
    pub fn start(disk: &Path, args: &[&str]) -> DiskServer {
        Self::try_launch(disk, LOOPBACK, args, false, None).unwrap_or_else(not_ready)
    }

    /// As [`DiskServer::start`], listening on `ip` (e.g. `::1`) instead.
    pub fn start_on_ip(disk: &Path, ip: IpAddr, args: &[&str]) -> DiskServer {
        Self::try_launch(disk, ip, args, false, None).unwrap_or_else(not_ready)
    }

    /// As [`DiskServer::start`], with `--metrics-listen` on a second free
    /// port of 127.0.0.1 ([`DiskServer::metrics_url`]).
    pub fn start_with_metrics(disk: &Path, args: &[&str]) -> DiskServer {
        Self::try_launch(disk, LOOPBACK, args, true, None).unwrap_or_else(not_ready)
    }

    /// As [`DiskServer::start`], run under `strace -f -e
    /// trace=fdatasync,fsync -o TRACE`: a power cut cannot be played here,
    /// so durability tests count the server's syncs instead ([`syncs`]).
    /// `proc` is then strace's (a signal reaches strace, not the server;
    /// dropping it kills both).
    pub fn start_traced(disk: &Path, args: &[&str], trace: &Path) -> DiskServer {
        Self::try_launch(disk, LOOPBACK, args, false, Some(trace)).unwrap_or_else(not_ready)
    }

    /// As [`DiskServer::start`] but returns the process when it exits or
    /// does not print `Server ready!` in time, so tests can check refusals.
    /// Retries with another port if the free port was taken meanwhile.
    pub fn try_start(disk: &Path, args: &[&str]) -> Result<DiskServer, Proc> {
        Self::try_launch(disk, LOOPBACK, args, false, None)
    }

    fn try_launch(
        disk: &Path,
        ip: IpAddr,
        args: &[&str],
        metrics: bool,
        trace: Option<&Path>,
    ) -> Result<DiskServer, Proc> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let metrics_port = metrics.then(free_port);
            match Self::launch(disk, ip, port, metrics_port, args, trace) {
                Ok(server) => return Ok(server),
                Err(proc) if attempt < 3 && proc.output.contains("already in use") => continue,
                Err(proc) => return Err(proc),
            }
        }
    }

    /// Starts the server on a given port of 127.0.0.1 (no retry).
    pub fn start_on_port(disk: &Path, port: u16, args: &[&str]) -> Result<DiskServer, Proc> {
        Self::launch(disk, LOOPBACK, port, None, args, None)
    }

    fn launch(
        disk: &Path,
        ip: IpAddr,
        port: u16,
        metrics_port: Option<u16>,
        args: &[&str],
        trace: Option<&Path>,
    ) -> Result<DiskServer, Proc> {
        let mut cmd = match trace {
            Some(trace) => {
                let mut cmd = Command::new("strace");
                cmd.args(["-f", "-qq", "-e", "trace=fdatasync,fsync", "-o"])
                    .arg(trace)
                    .arg(artifact("http-disk-server"));
                cmd
            }
            None => Command::new(artifact("http-disk-server")),
        };
        cmd.arg("--disk")
            .arg(disk)
            .args(["--ip", &ip.to_string(), "--port", &port.to_string()]);
        if let Some(metrics_port) = metrics_port {
            cmd.arg("--metrics-listen")
                .arg(format!("127.0.0.1:{metrics_port}"));
        }
        cmd.args(args);
        let mut proc = Proc::spawn("http-disk-server", cmd);
        let ready = crate::wait_until(READY_TIMEOUT, || {
            proc.output.contains("Server ready!") || proc.exited().is_some()
        });
        if !ready || !proc.output.contains("Server ready!") {
            return Err(proc);
        }
        Ok(DiskServer {
            proc,
            ip,
            port,
            disk: disk.to_path_buf(),
            metrics_port,
        })
    }

    /// `http://127.0.0.1:METRICS_PORT`; panics if started without metrics.
    pub fn metrics_url(&self) -> String {
        let port = self
            .metrics_port
            .expect("server started without --metrics-listen (use start_with_metrics)");
        format!("http://127.0.0.1:{port}")
    }

    /// `http://127.0.0.1:PORT` (`http://[::1]:PORT` on IPv6).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `https://127.0.0.1:PORT`, for a server started with `--tls-cert`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr())
    }

    /// `127.0.0.1:PORT` (`[::1]:PORT` on IPv6), for raw TCP clients.
    pub fn addr(&self) -> String {
        SocketAddr::new(self.ip, self.port).to_string()
    }

    /// Sends raw bytes on a fresh connection, half-closes it, and returns
    /// everything the server replied until it closed (or 10 s passed).
    pub fn raw(&self, request: &[u8]) -> Vec<u8> {
        raw_exchange(&self.addr(), request, true)
    }

    /// Sends SIGHUP and waits for the server to log the reload's outcome
    /// (each reload logs one line starting `SIGHUP: `); returns that line.
    /// Waiting for it also keeps signals from merging into one reload.
    pub fn reload(&self) -> String {
        const MARK: &str = "SIGHUP: ";
        let before = self.proc.output.count(MARK);
        self.proc.signal(libc::SIGHUP);
        let logged = crate::wait_until(Duration::from_secs(10), || {
            self.proc.output.count(MARK) > before
        });
        assert!(logged, "no reload logged within 10 s of SIGHUP");
        let lines = self.proc.output.snapshot();
        let mut reloads = lines.iter().filter(|l| l.contains(MARK));
        reloads.nth(before).cloned().unwrap_or_default()
    }

    /// Whether the server answers a HEAD with 200 right now.
    pub fn answers(&self) -> bool {
        let reply = raw_exchange(
            &self.addr(),
            b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            false,
        );
        reply.starts_with(b"HTTP/1.1 200")
    }
}

/// Successful `fdatasync` and `fsync` calls so far in the strace log of a
/// [`DiskServer::start_traced`] server, including those strace printed in
/// two parts because another thread's call came between
/// (`<... fdatasync resumed>) = 0`).
pub fn syncs(trace: &Path) -> usize {
    std::fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .filter(|l| (l.contains("fdatasync") || l.contains("fsync")) && l.ends_with("= 0"))
        .count()
}

fn not_ready(proc: Proc) -> DiskServer {
    panic!(
        "http-disk-server did not become ready; output:\n{}",
        proc.output.snapshot().join("\n")
    )
}

/// Sends `request` on a new connection to `addr` and reads until EOF (max
/// 10 s). `half_close` shuts down the write side after sending, which tells
/// the server no more bytes come (e.g. for truncated bodies).
pub fn raw_exchange(addr: &str, request: &[u8], half_close: bool) -> Vec<u8> {
    match TcpStream::connect(addr) {
        Ok(stream) => exchange(stream, request, half_close),
        Err(_) => Vec::new(),
    }
}

/// As [`raw_exchange`], from the local address `source` (see
/// [`connect_from`]).
pub fn raw_exchange_from(source: IpAddr, addr: &str, request: &[u8]) -> Vec<u8> {
    match connect_from(source, addr) {
        Ok(stream) => exchange(stream, request, false),
        Err(_) => Vec::new(),
    }
}

fn exchange(mut stream: TcpStream, request: &[u8], half_close: bool) -> Vec<u8> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    // The server may reply and close before taking all of a bad request:
    // a failed write is then expected, the reply is what counts.
    let _ = stream.write_all(request);
    if half_close {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply
}

/// The status code of a raw HTTP reply (`0` when there is none).
pub fn status_of(reply: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(reply);
    text.split_whitespace()
        .nth(1)
        .filter(|_| text.starts_with("HTTP/1."))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Writes `dir/auth`, an `--auth-file` with one line for `user` and
/// `password` (see [`auth_line`]).
pub fn auth_file(dir: &Path, user: &str, password: &str) -> PathBuf {
    let file = dir.join("auth");
    std::fs::write(&file, format!("# test\n{}", auth_line(user, password))).unwrap();
    file
}

/// One `--auth-file` line (with its newline) for `user` and `password`,
/// made by the shell recipe README gives (openssl salt, sha256sum), so the
/// recipe is tested too.
pub fn auth_line(user: &str, password: &str) -> String {
    let script = r#"salt=$(openssl rand -hex 16)
printf '%s:%s:%s\n' "$1" "$salt" "$(printf '%s%s' "$salt" "$2" | sha256sum | cut -d' ' -f1)""#;
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script, "auth", user, password]);
    crate::run_ok(cmd, Duration::from_secs(10))
}

/// Replaces `path` with `text` in one step (write a temporary file beside
/// it, rename over it), as an operator's editor or config tool does, so a
/// server reloading meanwhile never reads half a file.
pub fn replace_file(path: &Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// A TCP connection to `addr` from the local address `source`, bound
/// before connecting: with 127.0.0.2, 127.0.0.3... (all of 127/8 is
/// loopback) a test acts as several client hosts.
pub fn connect_from(source: IpAddr, addr: &str) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (IpAddr::V4(source), Ok(SocketAddr::V4(target))) = (source, addr.parse::<SocketAddr>())
    else {
        panic!("connect_from handles IPv4 only ({source} -> {addr})");
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    // SAFETY: plain socket(2); the TcpStream owns (and closes) the fd.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh socket nobody else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = sockaddr(source, 0);
    let remote = sockaddr(*target.ip(), target.port());
    // SAFETY: bind/connect with pointers to live sockaddr_in of that size.
    check(unsafe { libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) })?;
    check(unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) })?;
    Ok(stream)
}

/// A reply read from a [`KeptAlive`] connection.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A kept-alive raw HTTP connection: exact request bytes in, parsed
/// replies out, for checks that depend on the connection (keep-alive,
/// idle closes, a later request treated differently after a reload).
pub struct KeptAlive {
    reader: BufReader<TcpStream>,
}

impl KeptAlive {
    /// Connects to `addr` (IPv4 or IPv6) from the kernel's choice of
    /// source address.
    pub fn open(addr: &str) -> KeptAlive {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        KeptAlive::over(stream)
    }

    /// Connects to `addr` from `source` (see [`connect_from`]).
    pub fn open_from(source: IpAddr, addr: &str) -> KeptAlive {
        let stream = connect_from(source, addr)
            .unwrap_or_else(|e| panic!("connect from {source} to {addr}: {e}"));
        KeptAlive::over(stream)
    }

    fn over(stream: TcpStream) -> KeptAlive {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        KeptAlive {
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.reader
            .get_mut()
            .write_all(raw)
            .expect("send the request");
    }

    /// Reads one final reply (skipping `100 Continue`); `head` = reply to
    /// a HEAD request (no body whatever Content-Length says). Panics when
    /// none comes: [`KeptAlive::try_reply`] when that is expected.
    pub fn reply(&mut self, head: bool) -> Reply {
        self.try_reply(head).expect("a reply")
    }

    /// [`KeptAlive::reply`], or `None` when the connection is closed (or
    /// reset) instead of a complete reply.
    pub fn try_reply(&mut self, head: bool) -> Option<Reply> {
        loop {
            let status_line = self.line()?;
            let status = status_of(status_line.as_bytes());
            assert!(status != 0, "no reply (got {status_line:?})");
            let mut headers = Vec::new();
            loop {
                let line = self.line()?;
                if line.is_empty() {
                    break;
                }
                let (n, v) = line.split_once(':').expect("header with ':'");
                headers.push((n.trim().to_owned(), v.trim().to_owned()));
            }
            if status == 100 {
                continue;
            }
            let mut reply = Reply {
                status,
                headers,
                body: Vec::new(),
            };
            // Replies to HEAD, error replies to HEAD included, carry none.
            if !head {
                let len: usize = reply
                    .header("Content-Length")
                    .map(|v| v.parse().expect("numeric Content-Length"))
                    .unwrap_or(0);
                reply.body = vec![0; len];
                self.reader.read_exact(&mut reply.body).ok()?;
            }
            return Some(reply);
        }
    }

    /// One line without its line end; `None` at EOF or on an error.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
        }
    }

    /// Sends `raw` and reads its reply (a HEAD's when `raw` is one).
    pub fn request(&mut self, raw: &[u8]) -> Reply {
        self.send(raw);
        self.reply(raw.starts_with(b"HEAD "))
    }

    /// Sends a HEAD with `extra` header lines (each ending in CRLF) and
    /// reads its reply; `None` when the connection is closed instead.
    pub fn head(&mut self, extra: &str) -> Option<Reply> {
        let request = format!("HEAD / HTTP/1.1\r\nHost: t\r\n{extra}\r\n");
        self.reader.get_mut().write_all(request.as_bytes()).ok()?;
        self.try_reply(true)
    }

    /// The next line exactly as sent (an interim `100 Continue` is not
    /// skipped), without its line end; panics when none comes.
    pub fn next_line(&mut self) -> String {
        self.line().expect("a line from the server")
    }

    /// Whether the server closed the connection (EOF or reset within
    /// 10 s of silence; whatever it sent before closing is dropped);
    /// false when it is still open after that (read timed out).
    pub fn closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    }
}

/// The `Authorization` header line (with CRLF) for `user` and `password`.
pub fn basic_auth(user: &str, password: &str) -> String {
    let token = run_base64(&format!("{user}:{password}"));
    format!("Authorization: Basic {token}\r\n")
}

fn run_base64(text: &str) -> String {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", "printf '%s' \"$1\" | base64 -w0", "b64", text]);
    crate::run_ok(cmd, Duration::from_secs(10))
        .trim()
        .to_owned()
}
