//! The HTTP methods of the disk protocol, one handler each (HEAD, GET,
//! PUT, POST), plus the checks every request goes through first: access
//! list, framing, method, device held. Handlers decide (a `Reply`, which
//! `reply.rs` writes); they do no socket I/O except reading the request
//! body through [`BodySource`], so every refusal happens before a body
//! byte is read.

use std::io::{BufRead, Write};
use std::net::IpAddr;

use http_disk_protocol::{
    headers, ByteRange, ContentRange, ContentTotal, Feature, FeatureSet, RangeError, RangeSpec,
};

use crate::access::ListRefusal;
use crate::disk::Disk;
use crate::http::{self, BodyError, Framing, HttpError, Request};
use crate::policy::Policy;
use crate::reply::{Body, Reply};
use crate::state::State;

/// The request body, read only when a handler asks for it; `100 Continue`
/// is sent at that moment, never earlier.
pub struct BodySource<'a> {
    pub reader: &'a mut dyn BufRead,
    pub writer: &'a mut dyn Write,
    pub framing: Framing,
    pub expect_continue: bool,
    /// Set once the body has been read completely.
    pub consumed: bool,
    /// Whether the client has closed (or reset) its connection since it
    /// sent the request. Asked just before a write is applied: see
    /// [`abandoned`].
    pub client_gone: &'a dyn Fn() -> bool,
}

impl BodySource<'_> {
    /// Reads the whole body, refusing more than `max` bytes.
    fn read(&mut self, max: u64) -> Result<Vec<u8>, BodyError> {
        if self.expect_continue {
            http::write_continue(&mut self.writer).map_err(BodyError::Io)?;
            self.expect_continue = false;
        }
        let body = http::read_body(&mut self.reader, self.framing, max)?;
        self.consumed = true;
        Ok(body)
    }
}

/// The `--allow`/`--deny` check, done before anything else about a
/// request, against the policy current when its head arrived.
pub fn check_peer(peer: IpAddr, policy: &Policy) -> Result<(), HttpError> {
    match policy.access.check(peer) {
        Ok(()) => Ok(()),
        Err(ListRefusal::Denied) => {
            Err(HttpError::new(403, format!("{peer} is in the --deny list")))
        }
        Err(ListRefusal::NotAllowed) => Err(HttpError::new(
            403,
            format!("{peer} is not in the --allow list"),
        )),
    }
}

/// The `--auth-file` check, right after the peer check: a request without
/// the right credentials gets 401 and none of its body is read.
pub fn check_credentials(req: &Request, policy: &Policy) -> Result<(), HttpError> {
    match &policy.credentials {
        Some(credentials) if !credentials.permits(req.single_header("Authorization")) => Err(
            HttpError::new(401, "missing or wrong credentials (--auth-file)"),
        ),
        _ => Ok(()),
    }
}

/// Handles one request whose head was read and whose peer is allowed.
pub fn handle(req: &Request, state: &State, body: &mut BodySource) -> Reply {
    let config = &state.config;
    let method = req.method.as_str();
    if !matches!(method, "HEAD" | "GET" | "PUT" | "POST") {
        return Reply::error(501, format!("method {method} is not implemented"))
            .with("Allow", "HEAD, GET, PUT, POST");
    }
    let Some(disk) = state.disk.get() else {
        return Reply::error(
            503,
            "the disk is not held by this server (DRBD peer Primary or device missing)",
        )
        .with("Retry-After", "1");
    };
    match method {
        "HEAD" => head(disk, config.readonly),
        "GET" => get(req, disk),
        "PUT" => put(req, disk, state, body),
        _ => post(req, disk, body),
    }
}

/// The extensions this server offers.
fn features(readonly: bool) -> FeatureSet {
    let all = FeatureSet::empty()
        .with(Feature::Flush)
        .with(Feature::Trim)
        .with(Feature::Zero)
        .with(Feature::Writeback);
    if readonly {
        all.with(Feature::Readonly)
    } else {
        all
    }
}

/// HEAD: the size and the extensions.
fn head(disk: &Disk, readonly: bool) -> Reply {
    Reply::new(200, Body::HeadOnly(disk.size()))
        .with("Accept-Ranges", "bytes")
        .with(headers::FEATURES, &features(readonly).to_string())
}

fn unsatisfiable(size: u64, why: impl std::fmt::Display) -> Reply {
    Reply::error(416, why.to_string()).with("Content-Range", &format!("bytes */{size}"))
}

/// GET: one range (206) or, without Range, the whole disk (200), streamed.
fn get(req: &Request, disk: &Disk) -> Reply {
    let size = disk.size();
    let Some(value) = req.header("Range") else {
        let body = if size == 0 {
            Body::Empty
        } else {
            Body::Disk {
                start: 0,
                len: size,
            }
        };
        return Reply::new(200, body).with("Accept-Ranges", "bytes");
    };
    // Like the old server: any unusable Range is 416, never a silent 200
    // with the whole disk (a client asking for 4 KiB must not get 4 GiB).
    match RangeSpec::parse(&value).and_then(|spec| spec.resolve(size)) {
        Ok(range) => Reply::new(
            206,
            Body::Disk {
                start: range.start(),
                len: range.len(),
            },
        )
        .with("Accept-Ranges", "bytes")
        .with("Content-Range", &range.to_content_range(size)),
        Err(e) => unsatisfiable(size, e),
    }
}

/// `X-Disk-Writeback` / `X-Disk-May-Trim`: absent or `0` = false, `1` = true.
fn flag(req: &Request, name: &str) -> Result<bool, Reply> {
    match req.header(name).as_deref().map(str::trim) {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(Reply::error(
            400,
            format!("{name} must be 0 or 1, not {other:?}"),
        )),
    }
}

/// Makes the disk durable unless the client asked for write-back.
fn durable(disk: &Disk, writeback: bool, what: &str) -> Reply {
    if writeback {
        return Reply::new(200, Body::Empty);
    }
    match disk.sync() {
        Ok(()) => Reply::new(200, Body::Empty),
        Err(e) => Reply::error(500, format!("{what} done but fdatasync failed: {e}")),
    }
}

/// PUT: validate everything, receive the whole body, check its length,
/// and only then write, so a bad or broken request writes nothing.
fn put(req: &Request, disk: &Disk, state: &State, body: &mut BodySource) -> Reply {
    let size = disk.size();
    if disk.readonly() {
        return Reply::error(405, "the server is read-only (--readonly)")
            .with("Allow", "HEAD, GET, POST");
    }
    let writeback = match flag(req, headers::WRITEBACK) {
        Ok(flag) => flag,
        Err(reply) => return reply,
    };
    let range = match write_range(req, size, state.config.max_request_size, body.framing) {
        Ok(range) => range,
        Err(reply) => return reply,
    };
    let Some(_room) = state
        .bodies
        .reserve(range.len() + 1, state.config.idle_timeout)
    else {
        return Reply::error(503, "too many large writes in progress; retry")
            .with("Retry-After", "1");
    };
    // For chunked bodies, one byte more than the range is allowed so that
    // a long body is told apart from an exact one.
    let data = match body.read(range.len().saturating_add(1)) {
        Ok(data) => data,
        Err(BodyError::TooLong) => {
            return Reply::error(400, format!("body longer than the range {range}")).closing()
        }
        Err(e) => return Reply::error(400, format!("{e}; nothing written")).closing(),
    };
    if data.len() as u64 != range.len() {
        return Reply::error(
            400,
            format!(
                "body of {} bytes does not match the range {range}; nothing written",
                data.len()
            ),
        );
    }
    if (body.client_gone)() {
        return abandoned("write", range);
    }
    if let Err(e) = disk.write_at(&data, range.start()) {
        return Reply::error(500, format!("write of {range} failed: {e}"));
    }
    durable(disk, writeback, "write")
}

/// The range a PUT writes, from its `Content-Range`, checked against the
/// disk, `--max-request-size` and the body's announced length: the 4xx
/// reply otherwise, before a body byte is read.
fn write_range(
    req: &Request,
    size: u64,
    max_request_size: u64,
    framing: Framing,
) -> Result<ByteRange, Reply> {
    let Some(value) = req.header("Content-Range") else {
        return Err(Reply::error(
            400,
            "PUT needs a Content-Range: bytes B-E/total header",
        ));
    };
    let content_range = match ContentRange::parse(&value) {
        Ok(cr) => cr,
        Err(e) => return Err(Reply::error(400, format!("Content-Range {value:?}: {e}"))),
    };
    let range = content_range.range;
    if let ContentTotal::Known(total) = content_range.total {
        if total != size {
            return Err(Reply::error(
                400,
                format!("Content-Range total {total} is not the disk size {size}"),
            ));
        }
    }
    if !range.fits_in(size) {
        return Err(unsatisfiable(
            size,
            format!("range {range} is outside the disk of {size} bytes"),
        ));
    }
    if range.len() > max_request_size {
        return Err(Reply::error(
            413,
            format!(
                "a write of {} bytes is larger than --max-request-size {}",
                range.len(),
                max_request_size
            ),
        ));
    }
    if let Framing::Length(len) = framing {
        if len != range.len() {
            return Err(Reply::error(
                400,
                format!(
                    "Content-Length {len} does not match the range {range} ({} bytes)",
                    range.len()
                ),
            ));
        }
    }
    Ok(range)
}

/// A change whose client already closed the connection is not applied.
///
/// A client gives up on a request after its I/O timeout, closes the
/// connection and sends the request again elsewhere (multihttp fails
/// over), then goes on with newer writes. If this server was only stalled
/// (SIGSTOP, a frozen VM, a long pause) and resumes, the abandoned request
/// is still in its socket buffer: applying it now would put old data over
/// the newer writes. Nobody can be told the outcome anyway, and an NBD
/// write that was never acknowledged may or may not have happened, so
/// dropping it is allowed. (A write already inside `pwrite` when the
/// server stalled cannot be recalled: fencing a stalled Primary is DRBD's
/// job.) A client that merely half-closes after its request is refused
/// the same way; no HTTP client we know of does that.
fn abandoned(what: &str, range: impl std::fmt::Display) -> Reply {
    log::warn!(
        "the client closed its connection before its {what} of {range} was applied: \
         not applied (it may retry elsewhere; applying it late could overwrite newer data)"
    );
    Reply::error(
        400,
        format!(
            "the connection was closed before the {what} of {range} was applied; nothing changed"
        ),
    )
    .closing()
}

/// POST: `X-Disk-Op: flush | trim | zero`. No body allowed.
fn post(req: &Request, disk: &Disk, body: &mut BodySource) -> Reply {
    if body.framing.has_body() {
        return Reply::error(400, "POST requests of this protocol carry no body");
    }
    let Some(op) = req.header(headers::OP) else {
        return Reply::error(
            400,
            format!("POST needs an {} header (flush, trim, zero)", headers::OP),
        );
    };
    let writeback = match flag(req, headers::WRITEBACK) {
        Ok(flag) => flag,
        Err(reply) => return reply,
    };
    let op = op.trim().to_ascii_lowercase();
    if op == headers::OP_FLUSH {
        return match disk.sync() {
            Ok(()) => Reply::new(200, Body::Empty),
            Err(e) => Reply::error(500, format!("flush (fdatasync) failed: {e}")),
        };
    }
    if op != headers::OP_TRIM && op != headers::OP_ZERO {
        return Reply::error(
            400,
            format!("unknown {} {op:?} (flush, trim, zero)", headers::OP),
        );
    }
    if disk.readonly() {
        return Reply::error(
            405,
            format!("{op} refused: the server is read-only (--readonly)"),
        )
        .with("Allow", "HEAD, GET, POST");
    }
    let may_trim = match flag(req, headers::MAY_TRIM) {
        Ok(flag) => flag,
        Err(reply) => return reply,
    };
    let Some(value) = req.header(headers::RANGE) else {
        return Reply::error(400, format!("{op} needs an {} header", headers::RANGE));
    };
    let size = disk.size();
    let range = match RangeSpec::parse(&value).and_then(|spec| spec.resolve_exact(size)) {
        Ok(range) => range,
        Err(e @ RangeError::Unsatisfiable { .. }) => return unsatisfiable(size, e),
        Err(e) => return Reply::error(400, format!("{} {value:?}: {e}", headers::RANGE)),
    };
    let deallocate = op == headers::OP_TRIM || may_trim;
    if (body.client_gone)() {
        return abandoned(&op, range);
    }
    if let Err(e) = disk.zero(range.start(), range.len(), deallocate) {
        return Reply::error(500, format!("{op} of {range} failed: {e}"));
    }
    durable(disk, writeback, &op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Config;
    use std::io::Cursor;
    use std::sync::atomic::AtomicUsize;
    use std::sync::OnceLock;
    use std::time::Duration;

    const SIZE: usize = 8192;

    fn state(readonly: bool, with_disk: bool) -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0xEEu8; SIZE]).unwrap();
        let disk = OnceLock::new();
        if with_disk {
            disk.set(Disk::open(&path, readonly).unwrap()).unwrap();
        }
        let config = Config {
            readonly,
            policy_sources: Default::default(),
            max_request_size: 4096,
            idle_timeout: Duration::from_secs(5),
            workers: 4,
            max_connections_per_peer: 4,
        };
        let active = AtomicUsize::new(0);
        (
            dir,
            State {
                config,
                disk,
                policy: Default::default(),
                active,
                peers: Default::default(),
                bodies: crate::budget::Budget::new(1 << 20),
                idle: Default::default(),
                metrics: Default::default(),
                tls: None,
            },
        )
    }

    /// Runs one raw request through `handle`; returns the reply, what was
    /// written to the client before it (100 Continue), and whether the
    /// body was consumed.
    fn call(state: &State, raw: &[u8]) -> (Reply, Vec<u8>, bool) {
        call_from(state, raw, false)
    }

    /// [`call`] from a client that has (`gone`) or has not closed its
    /// connection since sending the request.
    fn call_from(state: &State, raw: &[u8], gone: bool) -> (Reply, Vec<u8>, bool) {
        let mut input = Cursor::new(raw.to_vec());
        let req = http::read_head(&mut input).unwrap().unwrap();
        let mut out = Vec::new();
        let mut body = BodySource {
            reader: &mut input,
            writer: &mut out,
            framing: req.framing().unwrap(),
            expect_continue: req.expects_continue().unwrap(),
            consumed: false,
            client_gone: &move || gone,
        };
        let reply = handle(&req, state, &mut body);
        let consumed = body.consumed;
        (reply, out, consumed)
    }

    fn content(dir: &tempfile::TempDir) -> Vec<u8> {
        std::fs::read(dir.path().join("disk")).unwrap()
    }

    #[test]
    fn put_writes_only_a_complete_matching_body() {
        let (dir, state) = state(false, true);
        let ok = b"PUT / HTTP/1.1\r\nContent-Range: bytes 3-5/-1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc";
        let (reply, out, consumed) = call(&state, ok);
        assert_eq!(reply.status, 200);
        assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(consumed);
        assert_eq!(&content(&dir)[2..7], b"\xEEabc\xEE");

        for (raw, status) in [
            (&b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-9/-1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n0\r\n\r\n"[..], 400),
            (b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-9/-1\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n0123456789X\r\n0\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-9/-1\r\nContent-Length: 10\r\n\r\n01234", 400),
            (b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-9/100\r\nContent-Length: 10\r\n\r\n0123456789", 400),
            (b"PUT / HTTP/1.1\r\nContent-Range: bytes 8190-8199/*\r\nContent-Length: 10\r\n\r\n0123456789", 416),
            (b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-4096/*\r\nContent-Length: 4097\r\n\r\n", 413),
        ] {
            let before = content(&dir);
            let (reply, _, _) = call(&state, raw);
            assert_eq!(reply.status, status, "{}", String::from_utf8_lossy(raw));
            assert_eq!(content(&dir), before, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn changes_whose_client_has_gone_are_not_applied() {
        let (dir, state) = state(false, true);
        let before = content(&dir);
        for raw in [
            &b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-2/-1\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nX-Disk-Op: zero\r\nX-Disk-Range: bytes=0-9\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-Disk-Op: trim\r\nX-Disk-Range: bytes=0-9\r\n\r\n",
        ] {
            let (reply, _, _) = call_from(&state, raw, true);
            assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(raw));
            assert!(reply.close && reply.reason().contains("nothing changed"));
            assert_eq!(content(&dir), before, "{}", String::from_utf8_lossy(raw));
        }
        // A flush changes nothing, so it is still done.
        let flush = b"POST / HTTP/1.1\r\nX-Disk-Op: flush\r\n\r\n";
        assert_eq!(call_from(&state, flush, true).0.status, 200);
    }

    #[test]
    fn writes_wait_for_body_memory_then_get_503() {
        let (dir, mut state) = state(false, true);
        state.config.idle_timeout = Duration::from_millis(20);
        let hog = state.bodies.reserve(1 << 20, Duration::ZERO).unwrap();
        let raw = b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-2/-1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc";
        let (reply, out, consumed) = call(&state, raw);
        assert_eq!(reply.status, 503);
        assert!(out.is_empty() && !consumed, "body read without room for it");
        drop(hog);
        assert_eq!(call(&state, raw).0.status, 200);
        assert_eq!(&content(&dir)[..3], b"abc");
    }

    #[test]
    fn refusals_happen_before_the_body() {
        let (_dir, state) = state(false, true);
        // Wrong Content-Length for the range: no 100 Continue, body unread.
        let raw = b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-9/-1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n01234";
        let (reply, out, consumed) = call(&state, raw);
        assert_eq!(reply.status, 400);
        assert!(out.is_empty() && !consumed);
    }

    #[test]
    fn readonly_and_not_held() {
        let (_dir, readonly) = state(true, true);
        let put = b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-0/-1\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(call(&readonly, put).0.status, 405);
        let trim = b"POST / HTTP/1.1\r\nX-Disk-Op: trim\r\nX-Disk-Range: bytes=0-9\r\n\r\n";
        assert_eq!(call(&readonly, trim).0.status, 405);
        let flush = b"POST / HTTP/1.1\r\nX-Disk-Op: flush\r\n\r\n";
        assert_eq!(call(&readonly, flush).0.status, 200);

        let (_dir, waiting) = state(false, false);
        let reply = call(&waiting, b"HEAD / HTTP/1.1\r\n\r\n").0;
        assert_eq!(reply.status, 503);
        assert!(reply
            .headers
            .iter()
            .any(|(n, v)| n == "Retry-After" && v == "1"));
    }

    #[test]
    fn ranges_out_of_the_disk_carry_the_size() {
        let (_dir, state) = state(false, true);
        for raw in [
            &b"GET / HTTP/1.1\r\nRange: bytes=8192-\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nRange: bytes=junk\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-Disk-Op: zero\r\nX-Disk-Range: bytes=8000-8192\r\n\r\n",
        ] {
            let reply = call(&state, raw).0;
            assert_eq!(reply.status, 416);
            assert!(reply
                .headers
                .iter()
                .any(|(n, v)| n == "Content-Range" && v == "bytes */8192"));
        }
        let reply = call(&state, b"GET / HTTP/1.1\r\nRange: bytes=-10\r\n\r\n").0;
        assert_eq!(reply.status, 206);
        assert!(matches!(
            reply.body,
            Body::Disk {
                start: 8182,
                len: 10
            }
        ));
    }
}
