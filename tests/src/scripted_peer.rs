//! `ScriptedPeer`: a small HTTP peer on a free loopback port that plays a
//! scripted part, for what the real http-disk-server never does:
//! hostile or broken replies (wrong `Content-Range` start, 5xx), and an
//! emulation of the OLD Python server for rolling-upgrade tests.
//!
//! This is a stand-in, used only where no real program behaves that way.
//! The old-server emulation reproduces the contract's description
//! (`shared/reference/compat-contract.md`): HTTP/1.0, the connection closed
//! after every reply, no `X-Disk-Features` header, a `Content-Range` whose
//! end is off by one (it names the byte after the range), PUT data synced
//! before the 200, GET without Range → 400, other methods → 501. Each PUT
//! it synced is also noted in a file ([`old_server_sync_log`]), so a test
//! can tell, from another process, that a write was synced before the
//! client saw it acknowledged.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The part the peer plays.
#[derive(Clone, Debug)]
pub enum Script {
    /// HEAD answers like a server of `size` bytes; every GET/PUT/POST gets
    /// this status with an empty body (e.g. 500, 503).
    FailWith { size: u64, status: u16 },
    /// HEAD as above; GET gets a 206 of the right length whose
    /// `Content-Range` starts `shift` bytes off, filled with 0xEE.
    WrongStart { size: u64, shift: u64 },
    /// HEAD as above; GET gets a 200 with the requested length of 0xEE
    /// (a server ignoring Range).
    IgnoreRange { size: u64 },
    /// The old Python server serving this file (see the module comment);
    /// each PUT it synced adds a line to [`old_server_sync_log`]`(disk)`.
    OldServer { disk: PathBuf },
    /// HEAD as above; GET gets a correct 206 filled with 0x5A. Only the
    /// first request of each connection is answered: the second one is
    /// read and the connection closed without a reply (a server closing a
    /// kept-alive connection just as the client reuses it).
    OneReplyPerConnection { size: u64 },
    /// HEAD as above; every GET gets `how`, then the connection ends.
    Misbehave { size: u64, how: Misbehaviour },
}

/// Broken or hostile ways to answer a GET (the hostile-server matrix).
#[derive(Clone, Copy, Debug)]
pub enum Misbehaviour {
    /// A correct 206 head, then half the body, then close.
    TruncatedBody,
    /// A 206 whose `Content-Length` (and body) is one byte short.
    ShortContentLength,
    /// A 206 without `Content-Length`, 16 bytes longer than asked, then close.
    UnframedLongerBody,
    /// Bytes that are not HTTP at all.
    GarbageHead,
    /// A status line followed by header lines without end (up to 1 MiB).
    EndlessHeaders,
    /// A correct reply, one byte every 250 ms (slowloris).
    Slowloris,
    /// The connection reset (RST) after the request, before any reply.
    ResetBeforeReply,
    /// Half of the reply head, then a reset.
    ResetMidHead,
    /// The head and half the body, then a reset.
    ResetMidBody,
}

/// A running scripted peer; stops (and joins its thread) when dropped.
pub struct ScriptedPeer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Requests received, by method: GET, PUT, and any other than those
    /// and HEAD (e.g. the new servers' POST extensions, which the old
    /// server answers with 501).
    pub gets: Arc<AtomicUsize>,
    pub puts: Arc<AtomicUsize>,
    pub others: Arc<AtomicUsize>,
    /// The `Authorization` header of every request, in order (None when
    /// absent), so tests can check credentials reach every request.
    pub authorizations: Arc<Mutex<Vec<Option<String>>>>,
    /// Requests that carried `Expect` or `Transfer-Encoding` (the old
    /// server never answers `100 Continue`: each such PUT stalls there).
    pub expect_or_chunked: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl ScriptedPeer {
    pub fn start(script: Script) -> ScriptedPeer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted peer");
        let port = listener.local_addr().expect("local addr").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let gets = Arc::new(AtomicUsize::new(0));
        let puts = Arc::new(AtomicUsize::new(0));
        let others = Arc::new(AtomicUsize::new(0));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let (stop2, gets2, puts2) = (stop.clone(), gets.clone(), puts.clone());
        let others2 = others.clone();
        let auth2 = authorizations.clone();
        let expect_or_chunked = Arc::new(AtomicUsize::new(0));
        let framing2 = expect_or_chunked.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let connections2 = connections.clone();
        let thread = thread::spawn(move || {
            // Bounded by the stop flag set on drop; one connection at a
            // time is enough for the tests (and is what the old server did).
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        connections2.fetch_add(1, Ordering::SeqCst);
                        let seen = Seen {
                            gets: &gets2,
                            puts: &puts2,
                            others: &others2,
                            authorizations: &auth2,
                            expect_or_chunked: &framing2,
                        };
                        let _ = serve(stream, &script, &seen);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ScriptedPeer {
            port,
            stop,
            gets,
            puts,
            others,
            authorizations,
            expect_or_chunked,
            connections,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ScriptedPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Request {
    method: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let _target = parts.next()?;
    let _version = parts.next()?;
    let mut headers = Vec::new();
    for _ in 0..100 {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            return Some(Request { method, headers });
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    None
}

/// `bytes=B-E` → (B, E).
fn range_of(value: &str) -> Option<(u64, u64)> {
    let (first, last) = value.strip_prefix("bytes=")?.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// `bytes B-E/total` → (B, E).
fn content_range_of(value: &str) -> Option<(u64, u64)> {
    let (range, _total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

fn read_body(reader: &mut BufReader<TcpStream>, request: &Request) -> Vec<u8> {
    let length: usize = request
        .header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    body
}

fn reply(stream: &mut TcpStream, version: &str, status: &str, headers: &[String], body: &[u8]) {
    let mut head = format!("{version} {status}\r\n");
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

/// Serves one connection: keep-alive for the hostile scripts, one request
/// then close for the old server.
/// What the peer's thread records about requests, for the tests.
struct Seen<'a> {
    gets: &'a AtomicUsize,
    puts: &'a AtomicUsize,
    others: &'a AtomicUsize,
    authorizations: &'a Mutex<Vec<Option<String>>>,
    expect_or_chunked: &'a AtomicUsize,
}

fn serve(stream: TcpStream, script: &Script, seen: &Seen) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    // At most a few hundred requests per connection: bounded either way.
    for served in 0..1000 {
        let Some(request) = read_request(&mut reader) else {
            return Ok(());
        };
        match request.method.as_str() {
            "GET" => seen.gets.fetch_add(1, Ordering::SeqCst),
            "PUT" => seen.puts.fetch_add(1, Ordering::SeqCst),
            "HEAD" => 0,
            _ => seen.others.fetch_add(1, Ordering::SeqCst),
        };
        if let Ok(mut list) = seen.authorizations.lock() {
            list.push(request.header("Authorization").map(str::to_owned));
        }
        if request.header("Expect").is_some() || request.header("Transfer-Encoding").is_some() {
            seen.expect_or_chunked.fetch_add(1, Ordering::SeqCst);
        }
        let body = read_body(&mut reader, &request);
        if served == 1 && matches!(script, Script::OneReplyPerConnection { .. }) {
            return Ok(());
        }
        if let Script::Misbehave { size, how } = script {
            if request.method == "HEAD" {
                healthy_head(&mut writer, *size);
                continue;
            }
            misbehave(&mut writer, *how, *size, &request);
            return Ok(());
        }
        if let Script::OldServer { disk } = script {
            old_server(&mut writer, disk, &request, &body);
            return Ok(());
        }
        hostile(&mut writer, script, &request);
    }
    Ok(())
}

fn hostile(stream: &mut TcpStream, script: &Script, request: &Request) {
    let (Script::FailWith { size, .. }
    | Script::WrongStart { size, .. }
    | Script::IgnoreRange { size }
    | Script::OneReplyPerConnection { size }) = script
    else {
        return;
    };
    let v = "HTTP/1.1";
    if request.method == "HEAD" {
        return healthy_head(stream, *size);
    }
    let range = request.header("Range").and_then(range_of);
    match (script, range) {
        (Script::FailWith { status, .. }, _) => reply(
            stream,
            v,
            &format!("{status} Scripted failure"),
            &["Retry-After: 1".into()],
            b"",
        ),
        (Script::WrongStart { shift, .. }, Some((first, last))) => {
            let len = (last - first + 1) as usize;
            reply(
                stream,
                v,
                "206 Partial Content",
                &[format!(
                    "Content-Range: bytes {}-{}/{size}",
                    first + shift,
                    last + shift
                )],
                &vec![0xEE; len],
            )
        }
        (Script::OneReplyPerConnection { size }, Some((first, last))) => {
            let len = (last - first + 1) as usize;
            let header = format!("Content-Range: bytes {first}-{last}/{size}");
            reply(
                stream,
                v,
                "206 Partial Content",
                &[header],
                &vec![0x5A; len],
            )
        }
        (Script::IgnoreRange { .. }, Some((first, last))) => {
            let len = (last - first + 1) as usize;
            reply(stream, v, "200 OK", &[], &vec![0xEE; len])
        }
        _ => reply(stream, v, "400 Bad Request", &[], b""),
    }
}

fn old_server(stream: &mut TcpStream, disk: &Path, request: &Request, body: &[u8]) {
    let v = "HTTP/1.0";
    let Ok(file) = OpenOptions::new().read(true).write(true).open(disk) else {
        return reply(stream, v, "500 Internal Server Error", &[], b"");
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    match request.method.as_str() {
        "HEAD" => {
            let head =
                format!("{v} 200 OK\r\nAccept-Ranges: bytes\r\nContent-Length: {size}\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
        }
        "GET" => match request.header("Range").and_then(range_of) {
            Some((first, last)) if first <= last && last < size => {
                let mut data = vec![0u8; (last - first + 1) as usize];
                if file.read_exact_at(&mut data, first).is_err() {
                    return reply(stream, v, "500 Internal Server Error", &[], b"");
                }
                // The old server's off-by-one end value.
                let header = format!("Content-Range: bytes {first}-{}/{size}", last + 1);
                reply(stream, v, "206 Partial Content", &[header], &data)
            }
            Some(_) => reply(stream, v, "416 Range Not Satisfiable", &[], b""),
            None => reply(stream, v, "400 Bad Request", &[], b""),
        },
        "PUT" => match request.header("Content-Range").and_then(content_range_of) {
            Some((first, last)) if last + 1 - first == body.len() as u64 => {
                if file
                    .write_all_at(body, first)
                    .and_then(|_| file.sync_data())
                    .is_err()
                {
                    return reply(stream, v, "500 Internal Server Error", &[], b"");
                }
                note_sync(disk, first, last);
                reply(stream, v, "200 OK", &[], b"")
            }
            _ => reply(stream, v, "400 Bad Request", &[], b""),
        },
        _ => reply(stream, v, "501 Not Implemented", &[], b""),
    }
}

/// Where the old-server emulation on `disk` notes each PUT it synced,
/// one `B-E` line each, before replying 200.
pub fn old_server_sync_log(disk: &Path) -> PathBuf {
    let mut log = disk.as_os_str().to_owned();
    log.push(".synced");
    PathBuf::from(log)
}

fn note_sync(disk: &Path, first: u64, last: u64) {
    let noted = OpenOptions::new()
        .create(true)
        .append(true)
        .open(old_server_sync_log(disk))
        .and_then(|mut log| log.write_all(format!("{first}-{last}\n").as_bytes()));
    if let Err(e) = noted {
        eprintln!("[old server] cannot note a sync: {e}");
    }
}

/// A HEAD reply of a usable server of `size` bytes (Content-Length of a
/// HEAD announces the size, with no body).
fn healthy_head(stream: &mut TcpStream, size: u64) {
    let head = format!("HTTP/1.1 200 OK\r\nAccept-Ranges: bytes\r\nContent-Length: {size}\r\n\r\n");
    let _ = stream.write_all(head.as_bytes());
}

/// Answers a GET the way `how` says; the caller ends the connection.
/// Every loop is bounded and stops when the client goes away.
fn misbehave(stream: &mut TcpStream, how: Misbehaviour, size: u64, request: &Request) {
    let (first, last) = request.header("Range").and_then(range_of).unwrap_or((0, 0));
    let len = (last - first + 1) as usize;
    let body = vec![0xEE; len];
    let head = |length: Option<usize>| {
        let mut head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {first}-{last}/{size}\r\n"
        );
        match length {
            Some(length) => head.push_str(&format!("Content-Length: {length}\r\n")),
            None => head.push_str("Connection: close\r\n"),
        }
        head.push_str("\r\n");
        head.into_bytes()
    };
    let _ = match how {
        Misbehaviour::TruncatedBody => stream
            .write_all(&head(Some(len)))
            .and_then(|()| stream.write_all(&body[..len / 2])),
        Misbehaviour::ShortContentLength => stream
            .write_all(&head(Some(len - 1)))
            .and_then(|()| stream.write_all(&body[..len - 1])),
        Misbehaviour::UnframedLongerBody => stream
            .write_all(&head(None))
            .and_then(|()| stream.write_all(&vec![0xEE; len + 16])),
        Misbehaviour::GarbageHead => {
            stream.write_all(b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
        }
        Misbehaviour::EndlessHeaders => {
            let line = format!("X-Pad: {}\r\n", "a".repeat(1000));
            stream
                .write_all(b"HTTP/1.1 206 Partial Content\r\n")
                .and_then(|()| (0..1000).try_for_each(|_| stream.write_all(line.as_bytes())))
        }
        Misbehaviour::Slowloris => {
            let mut reply = head(Some(len));
            reply.extend_from_slice(&body);
            // At most 240 bytes (a minute); a write error ends it early.
            reply.iter().take(240).try_for_each(|byte| {
                thread::sleep(Duration::from_millis(250));
                stream.write_all(&[*byte])
            })
        }
        Misbehaviour::ResetBeforeReply => {
            crate::reset_on_close(stream);
            Ok(())
        }
        Misbehaviour::ResetMidHead => {
            let head = head(Some(len));
            let _ = stream.write_all(&head[..head.len() / 2]);
            crate::reset_on_close(stream);
            Ok(())
        }
        Misbehaviour::ResetMidBody => {
            let _ = stream.write_all(&head(Some(len)));
            let _ = stream.write_all(&body[..len / 2]);
            crate::reset_on_close(stream);
            Ok(())
        }
    };
}
