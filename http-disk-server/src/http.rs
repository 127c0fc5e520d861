//! A small, strict HTTP/1.1 wire layer: request head parsing with hard
//! limits, request bodies (Content-Length, or chunked through the decoder
//! shared with the plugins' client, `http_disk_protocol::chunked`) read
//! with a bound, and responses.
//!
//! Why not tiny_http (the workspace's chosen HTTP server): it never sets a
//! socket timeout and does not expose the accepted socket, so a silent
//! client holds its connection thread forever (the old server's flaw this
//! issue must fix); it reads header lines into memory without a limit,
//! spawns an unbounded number of threads, and its accept thread cannot be
//! stopped for a clean SIGTERM. Owning the ~300 lines below gives every
//! limit the server promises: idle timeouts, header limits, 403/413/503
//! before any body byte is read, and `100 Continue` only when the body is
//! really wanted.

use std::io::{self, BufRead, Write};

use http_disk_protocol::chunked::{self, ChunkedError};
use http_disk_protocol::is_tchar;
use zeroize::Zeroize;

/// Longest request line or header line.
pub const MAX_LINE: usize = 8 * 1024;
/// Most header lines in one request.
pub const MAX_HEADERS: usize = 100;
/// Most bytes in all header lines of one request.
pub const MAX_HEAD: usize = 64 * 1024;

/// A request that cannot be handled; the connection is closed after the
/// reply because where the next request starts is unknown.
#[derive(Debug)]
pub struct HttpError {
    pub status: u16,
    pub reason: String,
}

impl HttpError {
    pub fn new(status: u16, reason: impl Into<String>) -> HttpError {
        HttpError {
            status,
            reason: reason.into(),
        }
    }
}

/// The parsed head of a request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<(String, String)>,
}

/// A client's credentials are not left behind in freed memory (a core dump
/// of the server would otherwise show recent clients' passwords).
impl Drop for Request {
    fn drop(&mut self) {
        for (name, value) in &mut self.headers {
            if name.eq_ignore_ascii_case("Authorization") {
                value.zeroize();
            }
        }
    }
}

impl Request {
    /// The value of header `name` (case-insensitive). A header that occurs
    /// more than once is returned joined by ", ", as RFC 9110 allows.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    /// The value of a header that must occur once, borrowed (no copy): for
    /// credentials, which should not be duplicated in memory. None when
    /// absent or repeated.
    pub fn single_header(&self, name: &str) -> Option<&str> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let (_, value) = values.next()?;
        values.next().is_none().then_some(value.as_str())
    }

    /// Whether the client allows the connection to stay open afterwards.
    pub fn keep_alive(&self) -> bool {
        let connection = self.header("Connection").unwrap_or_default();
        let has = |token: &str| {
            connection
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if self.minor == 0 {
            has("keep-alive") && !has("close")
        } else {
            !has("close")
        }
    }

    /// How the body is delimited, checked strictly: both Content-Length
    /// and Transfer-Encoding, several different lengths, or a coding other
    /// than `chunked` are refused (they are how requests get smuggled).
    pub fn framing(&self) -> Result<Framing, HttpError> {
        let lengths: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .collect();
        let coding = self.header("Transfer-Encoding");
        match (coding, lengths.is_empty()) {
            (Some(_), false) => Err(HttpError::new(
                400,
                "both Content-Length and Transfer-Encoding",
            )),
            (Some(coding), true) => {
                if self.minor == 0 {
                    Err(HttpError::new(
                        400,
                        "Transfer-Encoding in an HTTP/1.0 request",
                    ))
                } else if coding.trim().eq_ignore_ascii_case("chunked") {
                    Ok(Framing::Chunked)
                } else {
                    Err(HttpError::new(
                        501,
                        format!("unsupported Transfer-Encoding {coding:?}"),
                    ))
                }
            }
            (None, true) => Ok(Framing::Length(0)),
            (None, false) => {
                let first = lengths[0];
                if lengths.iter().any(|l| *l != first) {
                    return Err(HttpError::new(400, "conflicting Content-Length values"));
                }
                parse_decimal(first)
                    .map(Framing::Length)
                    .ok_or_else(|| HttpError::new(400, format!("bad Content-Length {first:?}")))
            }
        }
    }

    /// Whether the client waits for `100 Continue` before sending the body.
    /// Any other expectation is refused (417), as RFC 9110 says.
    pub fn expects_continue(&self) -> Result<bool, HttpError> {
        match self.header("Expect") {
            None => Ok(false),
            Some(v) if v.trim().eq_ignore_ascii_case("100-continue") => Ok(true),
            Some(v) => Err(HttpError::new(417, format!("unsupported Expect {v:?}"))),
        }
    }
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
}

impl Framing {
    /// Whether body bytes (may) follow the head.
    pub fn has_body(self) -> bool {
        self != Framing::Length(0)
    }
}

/// Digits only, no sign, no overflow.
pub fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Reads one line ending in LF (a preceding CR is dropped) of at most
/// `max` bytes. `Ok(None)` on EOF before any byte.
fn read_line(reader: &mut impl BufRead, max: usize) -> Result<Option<Vec<u8>>, LineError> {
    let mut line = Vec::new();
    loop {
        let available = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LineError::Io(e)),
        };
        if available.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(LineError::Io(io::ErrorKind::UnexpectedEof.into()))
            };
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        if line.len() + chunk.len() > max + 2 {
            return Err(LineError::TooLong);
        }
        line.extend_from_slice(chunk);
        let used = chunk.len();
        reader.consume(used);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > max {
                return Err(LineError::TooLong);
            }
            return Ok(Some(line));
        }
    }
}

#[derive(Debug)]
enum LineError {
    TooLong,
    Io(io::Error),
}

/// Why no request head could be read.
#[derive(Debug)]
pub enum HeadError {
    /// The client closed, timed out or broke the connection: no reply.
    Gone(io::Error),
    /// A malformed or oversized head: reply with this error, then close.
    Bad(HttpError),
}

/// Reads a request head. `Ok(None)` when the client closed cleanly before
/// sending anything (end of a keep-alive connection).
pub fn read_head(reader: &mut impl BufRead) -> Result<Option<Request>, HeadError> {
    let line_error = |e: LineError, what: &str, too_long: u16| match e {
        LineError::TooLong => HeadError::Bad(HttpError::new(too_long, format!("{what} too long"))),
        LineError::Io(e) => HeadError::Gone(e),
    };
    // RFC 9112 2.2: ignore at least one empty line before the request line.
    let mut line =
        match read_line(reader, MAX_LINE).map_err(|e| line_error(e, "request line", 414))? {
            Some(line) => line,
            None => return Ok(None),
        };
    if line.is_empty() {
        line = read_line(reader, MAX_LINE)
            .map_err(|e| line_error(e, "request line", 414))?
            .ok_or_else(|| HeadError::Gone(io::ErrorKind::UnexpectedEof.into()))?;
    }
    let bad = |why: String| HeadError::Bad(HttpError::new(400, why));
    let text = std::str::from_utf8(&line).map_err(|_| bad("request line is not UTF-8".into()))?;
    let parts: Vec<&str> = text.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(bad(format!("malformed request line {text:?}")));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(bad(format!("bad method in {text:?}")));
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(bad(format!("bad request target in {text:?}")));
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.len() == 8
            && v.starts_with("HTTP/")
            && v.as_bytes()[5].is_ascii_digit()
            && v.as_bytes()[6] == b'.'
            && v.as_bytes()[7].is_ascii_digit() =>
        {
            return Err(HeadError::Bad(HttpError::new(
                505,
                format!("HTTP version {v} is not supported (1.0 and 1.1 are)"),
            )))
        }
        _ => return Err(bad(format!("bad HTTP version in {text:?}"))),
    };
    let mut headers = Vec::new();
    let mut head_bytes = line.len();
    loop {
        let line = read_line(reader, MAX_LINE)
            .map_err(|e| line_error(e, "header line", 431))?
            .ok_or_else(|| HeadError::Gone(io::ErrorKind::UnexpectedEof.into()))?;
        if line.is_empty() {
            break;
        }
        head_bytes += line.len();
        if headers.len() >= MAX_HEADERS || head_bytes > MAX_HEAD {
            return Err(HeadError::Bad(HttpError::new(431, "too many header bytes")));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(bad("obsolete header line folding".into()));
        }
        let text = std::str::from_utf8(&line).map_err(|_| bad("header is not UTF-8".into()))?;
        let (name, value) = text
            .split_once(':')
            // Not echoed: a mangled line may be a credential.
            .ok_or_else(|| bad(format!("header line without ':' ({} bytes)", text.len())))?;
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(bad(format!("bad header name {name:?}")));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(bad(format!("control character in header {name}")));
        }
        headers.push((name.to_owned(), value.to_owned()));
    }
    Ok(Some(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        minor,
        headers,
    }))
}

/// Why a body could not be received.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than allowed: 413 or 400, depending on the caller.
    TooLong,
    /// Bad chunked framing.
    Malformed(String),
    /// Connection closed, timed out or failed mid-body.
    Io(io::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLong => write!(f, "body longer than allowed"),
            BodyError::Malformed(why) => write!(f, "bad chunked body: {why}"),
            BodyError::Io(e) => write!(f, "body not received completely: {e}"),
        }
    }
}

/// The shared decoder's refusals, as the handlers tell them apart:
/// too long (400 or 413), malformed (400), or the client gone.
impl From<ChunkedError> for BodyError {
    fn from(e: ChunkedError) -> BodyError {
        match e {
            ChunkedError::TooLarge { .. } => BodyError::TooLong,
            ChunkedError::Malformed { what } => BodyError::Malformed(what),
            ChunkedError::Io(e) => BodyError::Io(e),
        }
    }
}

/// Reads a whole body of at most `max` bytes. A Content-Length larger than
/// `max` is refused before reading anything.
pub fn read_body(
    reader: &mut impl BufRead,
    framing: Framing,
    max: u64,
) -> Result<Vec<u8>, BodyError> {
    match framing {
        Framing::Length(len) => {
            if len > max {
                return Err(BodyError::TooLong);
            }
            let len = usize::try_from(len).map_err(|_| BodyError::TooLong)?;
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).map_err(BodyError::Io)?;
            Ok(body)
        }
        Framing::Chunked => Ok(chunked::read_chunked(reader, max)?),
    }
}

/// The standard reason phrase of the status codes this server sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Writes a status line and headers (plus `Content-Length` and
/// `Connection`), ending the head. The body, if any, follows separately.
pub fn write_head(
    out: &mut impl Write,
    status: u16,
    headers: &[(String, String)],
    content_length: u64,
    keep_alive: bool,
    http10: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {content_length}\r\n"));
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    } else if http10 {
        head.push_str("Connection: keep-alive\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}

/// Sends the interim `100 Continue` reply.
pub fn write_continue(out: &mut impl Write) -> io::Result<()> {
    out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn head(raw: &str) -> Result<Option<Request>, HeadError> {
        read_head(&mut Cursor::new(raw.as_bytes().to_vec()))
    }

    fn status(raw: &str) -> u16 {
        match head(raw) {
            Err(HeadError::Bad(e)) => e.status,
            Err(HeadError::Gone(_)) => 0,
            Ok(_) => 200,
        }
    }

    #[test]
    fn parses_a_request() {
        let rq = head("PUT /x HTTP/1.1\r\nContent-Range: bytes 0-1/-1\r\nA:  b \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (rq.method.as_str(), rq.target.as_str(), rq.minor),
            ("PUT", "/x", 1)
        );
        assert_eq!(rq.header("content-range").as_deref(), Some("bytes 0-1/-1"));
        assert_eq!(rq.header("a").as_deref(), Some("b"));
        assert!(rq.keep_alive());
        assert_eq!(rq.framing().unwrap(), Framing::Length(0));
        assert!(head("").unwrap().is_none());
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &str| head(raw).unwrap().unwrap().keep_alive();
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(ka("GET / HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn malformed_heads() {
        assert_eq!(status("GARBAGE\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1 extra\r\n\r\n"), 400);
        assert_eq!(status("GET  / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("G(T / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status("GET / FTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.x\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nNoColon\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nA: b\x01c\r\n\r\n"), 400);
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_LINE));
        assert_eq!(status(&long), 414);
        let long = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "a".repeat(MAX_LINE));
        assert_eq!(status(&long), 431);
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
        // Truncated heads: the client is gone, nothing to reply.
        assert_eq!(status("GET / HTTP/1.1\r\nA: b\r\n"), 0);
    }

    #[test]
    fn framing_rules() {
        let framing = |hdrs: &str| {
            head(&format!("PUT / HTTP/1.1\r\n{hdrs}\r\n"))
                .unwrap()
                .unwrap()
                .framing()
                .map_err(|e| e.status)
        };
        assert_eq!(framing("Content-Length: 5\r\n"), Ok(Framing::Length(5)));
        assert_eq!(
            framing("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing("Transfer-Encoding: chunked\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing("Content-Length: 5\r\nContent-Length: 6\r\n"),
            Err(400)
        );
        assert_eq!(framing("Content-Length: -5\r\n"), Err(400));
        assert_eq!(framing("Content-Length: +5\r\n"), Err(400));
        assert_eq!(
            framing("Content-Length: 99999999999999999999999\r\n"),
            Err(400)
        );
        assert_eq!(
            framing("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
            Err(400)
        );
        assert_eq!(framing("Transfer-Encoding: gzip, chunked\r\n"), Err(501));
    }

    fn chunked(raw: &str, max: u64) -> Result<Vec<u8>, BodyError> {
        read_body(
            &mut Cursor::new(raw.as_bytes().to_vec()),
            Framing::Chunked,
            max,
        )
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            chunked("3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: v\r\n\r\n", 10).unwrap(),
            b"abcde"
        );
        assert!(matches!(
            chunked("3\r\nabc\r\n0\r\n\r\n", 2),
            Err(BodyError::TooLong)
        ));
        assert!(matches!(
            chunked("3\r\nabcd\r\n0\r\n\r\n", 10),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            chunked("x\r\nabc\r\n0\r\n\r\n", 10),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            chunked("-3\r\nabc\r\n0\r\n\r\n", 10),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            chunked("fffffffffffffffff\r\n", 10),
            Err(BodyError::Malformed(_))
        ));
        // Strict framing (the shared decoder): no bare LF, no overflow.
        for strict in [
            "3\nabc\r\n0\r\n\r\n",
            "3\r\nabc\r\n0\r\n\n",
            "10000000000000003\r\nabc\r\n0\r\n\r\n",
        ] {
            let refused = chunked(strict, 10);
            assert!(
                matches!(refused, Err(BodyError::Malformed(_))),
                "{strict:?}"
            );
        }
        assert!(matches!(chunked("3\r\nab", 10), Err(BodyError::Io(_))));
        assert!(matches!(chunked("3\r\nabc\r\n", 10), Err(BodyError::Io(_))));
        let fixed = read_body(&mut Cursor::new(b"abc".to_vec()), Framing::Length(5), 10);
        assert!(matches!(fixed, Err(BodyError::Io(_))));
        let big = read_body(&mut Cursor::new(Vec::new()), Framing::Length(11), 10);
        assert!(matches!(big, Err(BodyError::TooLong)));
    }
}
