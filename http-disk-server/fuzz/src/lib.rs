//! What must hold for any bytes a hostile client sends to
//! `http-disk-server`, checked by the fuzz targets (`fuzz_targets/`, run
//! by libFuzzer through `cargo fuzz`) and by their bounded, deterministic
//! replay in `cargo test` (`http-disk-server/tests/request_fuzz.rs`, which
//! includes this file as a module so both check exactly the same things).
//!
//! Three entry points:
//! - [`check_chunked`]: bytes -> the chunked body decoder shared by the
//!   server and the plugins' client (`http_disk_protocol::chunked`), read
//!   whole and fed in pieces, against an independent walk of the framing.
//! - [`check_head`]: bytes -> request head parser -> every validation the
//!   server applies to a head (framing, `Expect`, `Range`, `Content-Range`,
//!   `X-Disk-Range`) -> body reading. Pure, no disk: millions of runs per
//!   minute.
//! - [`check_handling`]: the same bytes through the whole request path of
//!   one connection (peer check, framing, handler, reply head) against a
//!   real 8 KiB disk file, checking what the disk looks like afterwards.
//!
//! Every check panics with the offending input's story, which is what
//! libFuzzer and the replay test report as a crash.

use std::fs::OpenOptions;
use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::OnceLock;
use std::time::Duration;

use http_disk_protocol::chunked::{self, ChunkedError};
use http_disk_protocol::{ByteRange, ContentRange, ContentTotal, RangeError, RangeSpec};
use http_disk_server::budget::Budget;
use http_disk_server::disk::Disk;
use http_disk_server::handlers::{self, BodySource};
use http_disk_server::http::{self, Framing, HeadError, Request};
use http_disk_server::reply::{Body, Reply};
use http_disk_server::state::{Config, State};

/// Size of the disk [`check_handling`] serves: small, so that the small
/// numbers a fuzzer tries first land on both sides of its end.
pub const DISK_SIZE: u64 = 8192;
/// `--max-request-size` of that server: below the disk size, so writes
/// that fit the disk but are too large (413) are reachable.
pub const MAX_REQUEST: u64 = 4096;
/// Largest body [`check_head`] reads after a head.
const MAX_BODY: u64 = 64 * 1024;
/// Disk sizes every `Range` value is resolved against: empty, one byte,
/// the handler's disk, and the largest a u64 can say.
const SIZES: [u64; 5] = [0, 1, 4096, DISK_SIZE, u64::MAX];

/// Status codes the head parser may refuse a head with.
const HEAD_REFUSALS: [u16; 4] = [400, 414, 431, 505];

// ------------------------------------------------------------ head parsing

/// Parses `data` as a request head the way a connection does, then runs
/// every validation of the head and reads the body it announces.
pub fn check_head(data: &[u8]) {
    let mut input = Cursor::new(data);
    let request = match http::read_head(&mut input) {
        Ok(None) => {
            assert!(data.is_empty(), "no request in {} bytes", data.len());
            return;
        }
        Err(HeadError::Gone(_)) => return,
        Err(HeadError::Bad(e)) => {
            assert!(HEAD_REFUSALS.contains(&e.status), "head refused with {e:?}");
            check_reply_head(&Reply::error(e.status, e.reason).closing());
            return;
        }
        Ok(Some(request)) => request,
    };
    let head_len = input.position() as usize;
    check_request_shape(&request, &data[..head_len]);
    check_reparse(&request);
    for (name, value) in &request.headers {
        check_header_value(name, value);
    }
    check_expect(&request);
    if let Some(framing) = check_framing(&request) {
        check_body(&mut input, framing);
    }
}

/// What an accepted head is made of: only the bytes the grammar allows, a
/// known version, the limits respected, the head ending in a blank line.
fn check_request_shape(request: &Request, head: &[u8]) {
    assert!(head.ends_with(b"\n"), "head does not end a line: {head:?}");
    assert!(request.minor <= 1, "HTTP/1.{} accepted", request.minor);
    assert!(!request.method.is_empty() && request.method.bytes().all(is_tchar));
    assert!(!request.target.is_empty());
    assert!(!request
        .target
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' '));
    assert!(request.headers.len() <= http::MAX_HEADERS);
    let header_bytes: usize = request
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 1)
        .sum();
    assert!(
        header_bytes <= http::MAX_HEAD,
        "{header_bytes} header bytes"
    );
    for (name, value) in &request.headers {
        assert!(
            !name.is_empty() && name.bytes().all(is_tchar),
            "name {name:?}"
        );
        assert!(
            !value.bytes().any(|b| b.is_ascii_control() && b != b'\t'),
            "control byte kept in {name}: {value:?}"
        );
        assert_eq!(value, value.trim_matches([' ', '\t']), "value not trimmed");
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An accepted head written back in canonical form parses to the same
/// request, and nothing after its blank line is taken as part of it.
fn check_reparse(request: &Request) {
    let canonical = serialize(request);
    let mut input = Cursor::new(&canonical[..]);
    let again = match http::read_head(&mut input) {
        Ok(Some(again)) => again,
        other => panic!("canonical form {canonical:?} of an accepted head gives {other:?}"),
    };
    assert_eq!(input.position() as usize, canonical.len());
    assert_eq!(
        (&again.method, &again.target, again.minor, &again.headers),
        (
            &request.method,
            &request.target,
            request.minor,
            &request.headers
        ),
        "canonical form {canonical:?} parses differently"
    );
}

fn serialize(request: &Request) -> Vec<u8> {
    let mut out = format!(
        "{} {} HTTP/1.{}\r\n",
        request.method, request.target, request.minor
    );
    for (name, value) in &request.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The header values the server interprets, checked wherever they occur.
fn check_header_value(name: &str, value: &str) {
    if name.eq_ignore_ascii_case("Range") || name.eq_ignore_ascii_case("X-Disk-Range") {
        check_range(value);
    } else if name.eq_ignore_ascii_case("Content-Range") {
        check_content_range(value);
    }
}

/// `Expect` is honoured only as `100-continue`; anything else is a 417.
fn check_expect(request: &Request) {
    let expect = request.header("Expect");
    match request.expects_continue() {
        Ok(wait) => assert_eq!(
            wait,
            expect.is_some(),
            "Expect {expect:?} taken as wait={wait}"
        ),
        Err(e) => {
            assert_eq!(e.status, 417);
            assert!(!expect.unwrap().trim().eq_ignore_ascii_case("100-continue"));
        }
    }
}

/// How the body is delimited: a length only when every Content-Length
/// says the same digits and no Transfer-Encoding competes (smuggling);
/// chunked only as the sole coding of an HTTP/1.1 request.
fn check_framing(request: &Request) -> Option<Framing> {
    let lengths: Vec<&str> = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    let coding = request.header("Transfer-Encoding");
    match request.framing() {
        Ok(Framing::Length(n)) => {
            assert!(coding.is_none(), "Content-Length with {coding:?}");
            assert!(
                lengths.iter().all(|l| http::parse_decimal(l) == Some(n)),
                "length {n} from {lengths:?}"
            );
            assert!(n == 0 || !lengths.is_empty());
            Some(Framing::Length(n))
        }
        Ok(Framing::Chunked) => {
            assert!(lengths.is_empty() && request.minor == 1);
            assert!(coding.unwrap().trim().eq_ignore_ascii_case("chunked"));
            Some(Framing::Chunked)
        }
        Err(e) => {
            assert!(matches!(e.status, 400 | 501), "framing refused with {e:?}");
            None
        }
    }
}

/// A body is never longer than allowed, and a Content-Length body is
/// exactly the bytes after the head.
fn check_body(input: &mut Cursor<&[u8]>, framing: Framing) {
    let rest = &input.get_ref()[input.position() as usize..];
    match http::read_body(input, framing, MAX_BODY) {
        Ok(body) => {
            assert!(body.len() as u64 <= MAX_BODY);
            if let Framing::Length(n) = framing {
                assert_eq!(body.len() as u64, n);
                assert_eq!(&body[..], &rest[..body.len()]);
            }
        }
        Err(http::BodyError::TooLong) => {
            if let Framing::Length(n) = framing {
                assert!(n > MAX_BODY, "length {n} refused as too long");
            }
        }
        Err(_) => {}
    }
}

// ----------------------------------------------------------- chunked bodies

/// Body limits [`check_chunked`] decodes under, picked by the input's
/// first byte: none, tiny, and the sizes the server uses.
const CHUNKED_LIMITS: [u64; 5] = [0, 1, 16, MAX_REQUEST, MAX_BODY];

/// `data` is a limit selector byte, a piece size byte, then a chunked
/// body. Read whole from a `BufRead` and fed in pieces, the decoder gives
/// the same answer; what it accepts is exactly what an independent walk
/// of the RFC 9112 framing finds, never more than the limit; what it
/// decodes, chunked again, decodes back to itself.
pub fn check_chunked(data: &[u8]) {
    let [limit, step, wire @ ..] = data else {
        return;
    };
    let limit = CHUNKED_LIMITS[usize::from(*limit) % CHUNKED_LIMITS.len()];
    let step = usize::from(*step).max(1);
    let mut reader = Cursor::new(wire);
    let read = chunked::read_chunked(&mut reader, limit);
    let fed = feed_chunked(wire, step, limit);
    let story = format!("limit {limit}, pieces of {step}");
    match (&read, &fed) {
        (Ok(body), Ok(Some((fed_body, used)))) => {
            assert_eq!(body, fed_body, "{story}: pieces decode otherwise");
            assert_eq!(reader.position() as usize, *used, "{story}: ends differ");
            assert!(body.len() as u64 <= limit, "{story}: over the limit");
            let walked = walk_chunked(&wire[..*used]);
            assert_eq!(walked.as_ref(), Some(body), "{story}: framing walk differs");
            let again = chunked::read_chunked(&mut Cursor::new(rechunk(body, step)), limit);
            assert_eq!(again.as_ref().ok(), Some(body), "{story}: re-chunked");
        }
        // Cut short: whole or in pieces, no error before the input ran out.
        (Err(ChunkedError::Io(_)), Ok(None)) => {}
        (Err(e), Err(fed_e)) => {
            assert!(!matches!(e, ChunkedError::Io(_)), "{story}: {e:?}");
            assert_eq!(e.to_string(), fed_e.to_string(), "{story}: errors differ");
            if let ChunkedError::TooLarge { limit: said } = e {
                assert_eq!(*said, limit, "{story}");
            }
        }
        _ => panic!("{story}: read whole {read:?}, in pieces {fed:?}"),
    }
}

/// The decoder fed `wire` in pieces of `step` bytes: body and bytes used,
/// or `None` if the body did not end within `wire`.
fn feed_chunked(
    wire: &[u8],
    step: usize,
    limit: u64,
) -> Result<Option<(Vec<u8>, usize)>, ChunkedError> {
    let mut decoder = chunked::ChunkedDecoder::new(limit);
    let mut body = Vec::new();
    let mut used = 0;
    for piece in wire.chunks(step) {
        used += decoder.feed(piece, &mut body)?;
        if decoder.is_done() {
            return Ok(Some((body, used)));
        }
    }
    Ok(None)
}

/// The body of `wire`, a whole chunked body, found by walking its framing
/// the plain way (every line up to its first CRLF, no LF inside, a hex
/// size, data then CRLF, trailer lines up to an empty one): `None` if the
/// walk does not end exactly at the end of `wire`.
fn walk_chunked(wire: &[u8]) -> Option<Vec<u8>> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let text = next_line(wire, &mut at)?;
        let digits = text.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return None;
        }
        let hex = std::str::from_utf8(&text[..digits]).ok()?;
        let size = usize::from_str_radix(hex, 16).ok()?;
        if size == 0 {
            break;
        }
        body.extend_from_slice(wire.get(at..at.checked_add(size)?)?);
        at += size;
        if wire.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
    while !next_line(wire, &mut at)?.is_empty() {}
    (at == wire.len()).then_some(body)
}

/// The line at `at` up to its first CRLF, which must hold no other CR or
/// LF; `at` moves past the CRLF.
fn next_line<'a>(wire: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let end = *at + wire[*at..].windows(2).position(|w| w == b"\r\n")?;
    let text = &wire[*at..end];
    *at = end + 2;
    (!text.contains(&b'\n') && !text.contains(&b'\r')).then_some(text)
}

/// `body` as chunked coding in pieces of `step` bytes.
fn rechunk(body: &[u8], step: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    for piece in body.chunks(step) {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    wire
}

// ------------------------------------------------------------------ ranges

/// A `Range` / `X-Disk-Range` value: what parses is a single `bytes=`
/// range, prints back to itself, and resolves to bytes inside the disk.
pub fn check_range(value: &str) {
    let spec = match RangeSpec::parse(value) {
        Ok(spec) => spec,
        Err(RangeError::MultipleRanges) => {
            assert!(value.contains(','));
            return;
        }
        Err(RangeError::Malformed(_)) => return,
        Err(e) => panic!("parse of {value:?} said {e:?}"),
    };
    let unit = value.trim().get(..6).unwrap_or("");
    assert!(unit.eq_ignore_ascii_case("bytes="), "{value:?} accepted");
    assert_eq!(RangeSpec::parse(&print_spec(spec)), Ok(spec), "{value:?}");
    for size in SIZES {
        check_resolved(spec, size);
    }
}

fn print_spec(spec: RangeSpec) -> String {
    match spec {
        RangeSpec::FromTo { start, last } => format!("bytes={start}-{last}"),
        RangeSpec::From { start } => format!("bytes={start}-"),
        RangeSpec::Suffix { len } => format!("bytes=-{len}"),
    }
}

/// RFC 9110 single-range resolution on a disk of `size` bytes, and the
/// strict form used for trim/zero.
fn check_resolved(spec: RangeSpec, size: u64) {
    let resolved = spec.resolve(size);
    if let Ok(range) = resolved {
        assert_in_disk(range, size, spec);
        assert_eq!(
            RangeSpec::parse(&range.to_range_header()).and_then(|s| s.resolve(size)),
            Ok(range)
        );
    }
    let expected = match spec {
        _ if size == 0 => None,
        RangeSpec::FromTo { start, last } => (start < size).then(|| (start, last.min(size - 1))),
        RangeSpec::From { start } => (start < size).then_some((start, size - 1)),
        RangeSpec::Suffix { len } => (len > 0).then(|| (size - len.min(size), size - 1)),
    };
    let got = resolved.as_ref().ok().map(|r| (r.start(), r.last()));
    assert_eq!(got, expected, "{spec:?} on {size} bytes");
    if let Err(e) = &resolved {
        assert_eq!(*e, RangeError::Unsatisfiable { size });
    }
    match (spec, spec.resolve_exact(size)) {
        (RangeSpec::FromTo { start, last }, Ok(range)) => {
            assert_eq!((range.start(), range.last()), (start, last));
            assert_in_disk(range, size, spec);
        }
        (RangeSpec::FromTo { last, .. }, Err(_)) => assert!(last >= size, "{spec:?} on {size}"),
        (_, exact) => assert_eq!(exact, resolved),
    }
}

fn assert_in_disk(range: ByteRange, size: u64, spec: RangeSpec) {
    assert!(
        range.start() <= range.last() && range.fits_in(size),
        "{spec:?} resolved to {range} on a disk of {size} bytes"
    );
    assert_eq!(range.len(), range.last() - range.start() + 1);
}

/// A `Content-Range` value: a non-empty range with a numeric, `*` or
/// `-1` total, which prints back to itself.
pub fn check_content_range(value: &str) {
    let Ok(parsed) = ContentRange::parse(value) else {
        return;
    };
    let range = parsed.range;
    assert!(range.start() <= range.last(), "{value:?} gave {range}");
    let total = match parsed.total {
        ContentTotal::Known(total) => total.to_string(),
        ContentTotal::Unknown => "*".to_owned(),
    };
    let printed = format!("bytes {range}/{total}");
    assert_eq!(ContentRange::parse(&printed), Ok(parsed), "{value:?}");
    assert_eq!(ContentRange::parse_start(value), Ok(range.start()));
}

// --------------------------------------------------------- whole requests

/// The server state of [`check_handling`]: a writable 8 KiB disk file,
/// created once per thread (so that parallel test threads never see each
/// other's writes), in /dev/shm when there is one, so that the fdatasync
/// of every durable write costs nothing.
fn state() -> &'static State {
    thread_local! {
        static STATE: &'static State = Box::leak(Box::new(new_state()));
    }
    STATE.with(|state| *state)
}

fn new_state() -> State {
    let dir = ["/dev/shm"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!(
        "http-disk-server-fuzz-{}-{:?}.disk",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("create the fuzz disk");
    file.set_len(DISK_SIZE).unwrap();
    let disk = Disk::open(&path, false).expect("open the fuzz disk");
    // The open fd keeps the file; nothing is left behind on exit.
    let _ = std::fs::remove_file(&path);
    let held = OnceLock::new();
    let _ = held.set(disk);
    State {
        config: Config {
            readonly: false,
            policy_sources: Default::default(),
            max_request_size: MAX_REQUEST,
            idle_timeout: Duration::from_millis(10),
            workers: 4,
            max_connections_per_peer: 4,
        },
        disk: held,
        policy: Default::default(),
        active: AtomicUsize::new(0),
        peers: Default::default(),
        bodies: Budget::new(1 << 20),
        idle: Default::default(),
        metrics: Default::default(),
        tls: None,
    }
}

fn disk_bytes(disk: &Disk) -> Vec<u8> {
    let mut bytes = vec![0u8; disk.size() as usize];
    disk.read_at(&mut bytes, 0).expect("read the fuzz disk");
    bytes
}

/// Runs `data` through everything one connection does with a request
/// (except the socket) and checks the reply and the disk afterwards.
pub fn check_handling(data: &[u8]) {
    let state = state();
    let disk = state.disk.get().expect("disk held");
    let mut input = Cursor::new(data);
    let Ok(Some(request)) = http::read_head(&mut input) else {
        return;
    };
    let body_start = input.position() as usize;
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let prelude = handlers::check_peer(peer, &state.policy.current())
        .and_then(|_| request.framing())
        .and_then(|framing| Ok((framing, request.expects_continue()?)));
    let Ok((framing, expect_continue)) = prelude else {
        return;
    };
    let before = disk_bytes(disk);
    let mut interim = Vec::new();
    let mut body = BodySource {
        reader: &mut input,
        writer: &mut interim,
        framing,
        expect_continue,
        consumed: false,
        client_gone: &|| false,
    };
    let reply = handlers::handle(&request, state, &mut body);
    let consumed = body.consumed;
    let after = disk_bytes(disk);
    if !interim.is_empty() {
        assert!(expect_continue, "interim reply without Expect");
        assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    check_reply_head(&reply);
    check_reply_body(&request, &reply);
    let story = Story {
        request: &request,
        framing,
        body_bytes: &data[body_start..],
    };
    match (request.method.as_str(), reply.status) {
        ("PUT", 200) => check_write(&story, consumed, &before, &after),
        ("POST", 200) => check_zeroed(&story, &before, &after),
        _ => assert!(before == after, "disk changed by {story:?}"),
    }
}

/// One handled request, for the checks of its effect and their messages.
#[derive(Debug)]
struct Story<'a> {
    request: &'a Request,
    framing: Framing,
    body_bytes: &'a [u8],
}

/// A reply head as it goes on the wire: a known status, and no header
/// that could split the reply (CR or LF in a name or value).
fn check_reply_head(reply: &Reply) {
    assert_ne!(http::reason_phrase(reply.status), "Unknown", "{reply:?}");
    for (name, value) in &reply.headers {
        assert!(!name.is_empty() && name.bytes().all(is_tchar), "{reply:?}");
        assert!(!value.contains(['\r', '\n']), "split reply: {reply:?}");
    }
    let mut wire = Vec::new();
    http::write_head(&mut wire, reply.status, &reply.headers, 0, true, false).unwrap();
    let lines = wire.split(|b| *b == b'\n').count();
    // Status line, the headers, Content-Length, the blank line, and the
    // empty piece after the last LF.
    assert_eq!(lines, reply.headers.len() + 4, "{reply:?}");
}

/// What a reply promises to send lies inside the disk, and a 206 says
/// exactly which bytes it carries.
fn check_reply_body(request: &Request, reply: &Reply) {
    match reply.body {
        Body::Disk { start, len } => {
            assert!(request.method == "GET" && matches!(reply.status, 200 | 206));
            assert!(len > 0 && start.checked_add(len).is_some_and(|end| end <= DISK_SIZE));
            if reply.status == 206 {
                let announced = reply
                    .headers
                    .iter()
                    .find(|(n, _)| n == "Content-Range")
                    .map(|(_, v)| v.as_str());
                let expected = format!("bytes {start}-{}/{DISK_SIZE}", start + len - 1);
                assert_eq!(announced, Some(expected.as_str()), "{reply:?}");
            }
        }
        Body::HeadOnly(len) => {
            assert!(request.method == "HEAD" && reply.status == 200 && len == DISK_SIZE)
        }
        Body::Empty | Body::Text(_) => {}
    }
}

/// An accepted PUT wrote exactly its body, of exactly its Content-Range's
/// length, inside the disk, and nothing else.
fn check_write(story: &Story, consumed: bool, before: &[u8], after: &[u8]) {
    let value = story
        .request
        .header("Content-Range")
        .expect("PUT 200 without range");
    let parsed = ContentRange::parse(&value).expect("PUT 200 with a bad range");
    let range = parsed.range;
    assert!(
        range.fits_in(DISK_SIZE) && range.len() <= MAX_REQUEST,
        "{story:?}"
    );
    if let ContentTotal::Known(total) = parsed.total {
        assert_eq!(total, DISK_SIZE, "{story:?}");
    }
    if let Framing::Length(len) = story.framing {
        assert_eq!(len, range.len(), "{story:?}");
    }
    assert!(consumed, "PUT 200 with its body unread: {story:?}");
    let sent = http::read_body(
        &mut Cursor::new(story.body_bytes),
        story.framing,
        range.len() + 1,
    )
    .expect("the body the server accepted reads again");
    assert_eq!(sent.len() as u64, range.len(), "{story:?}");
    let (start, end) = (range.start() as usize, range.end() as usize);
    assert!(after[start..end] == sent[..], "{story:?} wrote other bytes");
    assert!(
        before[..start] == after[..start] && before[end..] == after[end..],
        "{story:?} wrote outside its range"
    );
}

/// An accepted trim/zero zeroed exactly its `X-Disk-Range`; a flush
/// changed nothing.
fn check_zeroed(story: &Story, before: &[u8], after: &[u8]) {
    let op = story.request.header("X-Disk-Op").unwrap_or_default();
    if op.trim().eq_ignore_ascii_case("flush") {
        assert!(before == after, "flush changed the disk: {story:?}");
        return;
    }
    let value = story
        .request
        .header("X-Disk-Range")
        .expect("zero without range");
    let range = RangeSpec::parse(&value)
        .and_then(|spec| spec.resolve_exact(DISK_SIZE))
        .expect("zero 200 with an unusable range");
    let (start, end) = (range.start() as usize, range.end() as usize);
    assert!(after[start..end].iter().all(|b| *b == 0), "{story:?}");
    assert!(
        before[..start] == after[..start] && before[end..] == after[end..],
        "{story:?} zeroed outside its range"
    );
}
