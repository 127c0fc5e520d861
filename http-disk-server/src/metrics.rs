//! The counters of the data port: requests by operation and status,
//! bytes moved, errors, refusals, requests in flight.
//!
//! Every worker bumps them on every request, so they are plain relaxed
//! atomics: no lock, no allocation, no ordering between counters (a
//! scrape may see a request counted whose bytes are not yet, which a
//! monitoring system does not care about). They are read by the metrics
//! listener (`metrics_listener.rs`) and rendered by `exposition.rs`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_disk_protocol::{headers, ContentRange};

use crate::http::Request;
use crate::reply::{Body, Reply};

/// What a request asked for, from its method and `X-Disk-Op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Zero,
    Trim,
    Head,
    /// Anything else: unknown methods or operations, unparsable heads.
    Other,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Zero,
        Op::Trim,
        Op::Head,
        Op::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Zero => "zero",
            Op::Trim => "trim",
            Op::Head => "head",
            Op::Other => "other",
        }
    }

    /// The operation of `request`, looked up without allocating.
    pub fn of(request: &Request) -> Op {
        match request.method.as_str() {
            "GET" => Op::Read,
            "PUT" => Op::Write,
            "HEAD" => Op::Head,
            "POST" => {
                let op = request
                    .headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(headers::OP))
                    .map(|(_, value)| value.trim());
                match op {
                    Some(op) if op.eq_ignore_ascii_case(headers::OP_FLUSH) => Op::Flush,
                    Some(op) if op.eq_ignore_ascii_case(headers::OP_ZERO) => Op::Zero,
                    Some(op) if op.eq_ignore_ascii_case(headers::OP_TRIM) => Op::Trim,
                    _ => Op::Other,
                }
            }
            _ => Op::Other,
        }
    }
}

/// Why a client was turned away before its request was handled: the
/// `reason` label of the refusal counter, one per cause the server has
/// (of which the access lists' own, `access::ListRefusal`, is one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// 403: the access lists refuse the peer (in `--deny`, or not in
    /// `--allow`).
    NotAllowed,
    /// 401: missing or wrong `--auth-file` credentials.
    Unauthorized,
    /// 503 at accept: every worker busy with a request.
    Busy,
    /// 503 at accept: the peer already holds `--max-connections-per-peer`
    /// connections, all busy with requests.
    PeerCap,
    /// 503: the disk is not held (DRBD peer Primary, device missing).
    NotHeld,
    /// 503: too much write-body memory in use already.
    Overloaded,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 6] = [
        RefusalReason::NotAllowed,
        RefusalReason::Unauthorized,
        RefusalReason::Busy,
        RefusalReason::PeerCap,
        RefusalReason::NotHeld,
        RefusalReason::Overloaded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RefusalReason::NotAllowed => "not_allowed",
            RefusalReason::Unauthorized => "unauthorized",
            RefusalReason::Busy => "busy",
            RefusalReason::PeerCap => "peer_cap",
            RefusalReason::NotHeld => "not_held",
            RefusalReason::Overloaded => "overloaded",
        }
    }

    /// What the reason means, for the `/metrics` help text.
    pub fn meaning(self) -> &'static str {
        match self {
            RefusalReason::NotAllowed => "403, --allow",
            RefusalReason::Unauthorized => "401, --auth-file",
            RefusalReason::Busy => "503, every worker busy",
            RefusalReason::PeerCap => "503, --max-connections-per-peer reached",
            RefusalReason::NotHeld => "503, disk not held",
            RefusalReason::Overloaded => "503, write memory full",
        }
    }
}

/// Requests that went wrong on the server's side of the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The disk failed: a 500 reply (read, write, fdatasync, zero), or a
    /// read cut mid-body by EIO.
    Disk,
    /// The reply could not be delivered: the client closed, reset, or
    /// stalled past `--idle-timeout`.
    ClientGone,
}

impl Failure {
    pub const ALL: [Failure; 2] = [Failure::Disk, Failure::ClientGone];

    pub fn name(self) -> &'static str {
        match self {
            Failure::Disk => "disk",
            Failure::ClientGone => "client_gone",
        }
    }
}

/// Status codes are counted exactly, each in its own slot: 100..=599.
const FIRST_STATUS: u16 = 100;
const STATUSES: usize = 500;

/// The counters; one per server, in `State` (state.rs, which imports this
/// module, not the other way round).
pub struct Metrics {
    started: Instant,
    /// `Op::ALL.len() * STATUSES` counters, by op then status.
    requests: Box<[AtomicU64]>,
    in_flight: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    failures: [AtomicU64; Failure::ALL.len()],
    refusals: [AtomicU64; RefusalReason::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            started: Instant::now(),
            requests: (0..Op::ALL.len() * STATUSES)
                .map(|_| AtomicU64::new(0))
                .collect(),
            in_flight: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            failures: Default::default(),
            refusals: Default::default(),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Counts a request as in flight until dropped.
#[must_use]
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One (op, status) pair that was counted at least once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestCount {
    pub op: Op,
    pub status: u16,
    pub count: u64,
}

/// The counters at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counts {
    pub uptime: Duration,
    pub in_flight: u64,
    /// Non-zero pairs only, by op (in `Op::ALL` order) then status.
    pub requests: Vec<RequestCount>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub failures: Vec<(Failure, u64)>,
    pub refusals: Vec<(RefusalReason, u64)>,
}

impl Metrics {
    /// A request head was read; it is in flight until the guard drops.
    pub fn request_started(&self) -> InFlight<'_> {
        bump(&self.in_flight, 1);
        InFlight(&self.in_flight)
    }

    pub fn refused(&self, why: RefusalReason) {
        bump(&self.refusals[why as usize], 1);
    }

    /// Counts a request with status `status` (no bytes).
    pub fn count_request(&self, op: Op, status: u16) {
        let slot = usize::from(status.clamp(FIRST_STATUS, FIRST_STATUS + STATUSES as u16 - 1))
            - usize::from(FIRST_STATUS);
        bump(&self.requests[op as usize * STATUSES + slot], 1);
    }

    /// Counts a handled request once its reply was sent (`sent`), with the
    /// bytes it moved, its refusal or failure. `held` is whether the disk
    /// was held, which tells one 503 from the other.
    pub fn count_reply(&self, request: &Request, reply: &Reply, sent: &io::Result<()>, held: bool) {
        let op = Op::of(request);
        self.count_request(op, reply.status);
        match reply.status {
            403 => self.refused(RefusalReason::NotAllowed),
            401 => self.refused(RefusalReason::Unauthorized),
            503 if !held => self.refused(RefusalReason::NotHeld),
            503 => self.refused(RefusalReason::Overloaded),
            500 => bump(&self.failures[Failure::Disk as usize], 1),
            _ => {}
        }
        match sent {
            Ok(()) => {}
            // The disk's own error, passed up by sendfile or pread.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                bump(&self.failures[Failure::Disk as usize], 1)
            }
            Err(_) => bump(&self.failures[Failure::ClientGone as usize], 1),
        }
        if !(200..300).contains(&reply.status) {
            return;
        }
        match (op, &reply.body) {
            (Op::Read, Body::Disk { len, .. }) if sent.is_ok() => bump(&self.bytes_read, *len),
            (Op::Write, _) => {
                // A 2xx PUT wrote exactly its Content-Range, checked by
                // the handler before writing.
                let written = request
                    .headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case("Content-Range"))
                    .and_then(|(_, value)| ContentRange::parse(value).ok())
                    .map_or(0, |cr| cr.range.len());
                bump(&self.bytes_written, written);
            }
            _ => {}
        }
    }

    /// Reads every counter.
    pub fn counts(&self) -> Counts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut requests = Vec::new();
        for op in Op::ALL {
            for slot in 0..STATUSES {
                let count = load(&self.requests[op as usize * STATUSES + slot]);
                if count > 0 {
                    requests.push(RequestCount {
                        op,
                        status: FIRST_STATUS + slot as u16,
                        count,
                    });
                }
            }
        }
        Counts {
            uptime: self.started.elapsed(),
            in_flight: load(&self.in_flight),
            requests,
            bytes_read: load(&self.bytes_read),
            bytes_written: load(&self.bytes_written),
            failures: Failure::ALL
                .iter()
                .map(|&f| (f, load(&self.failures[f as usize])))
                .collect(),
            refusals: RefusalReason::ALL
                .iter()
                .map(|&r| (r, load(&self.refusals[r as usize])))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &[u8]) -> Request {
        crate::http::read_head(&mut std::io::Cursor::new(raw.to_vec()))
            .unwrap()
            .unwrap()
    }

    fn ok(status: u16, body: Body) -> Reply {
        let mut reply = Reply::error(status, "");
        reply.body = body;
        reply
    }

    #[test]
    fn operations_are_told_apart() {
        for (raw, op) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], Op::Read),
            (b"PUT / HTTP/1.1\r\n\r\n", Op::Write),
            (b"HEAD / HTTP/1.1\r\n\r\n", Op::Head),
            (b"POST / HTTP/1.1\r\nx-disk-op:  Flush \r\n\r\n", Op::Flush),
            (b"POST / HTTP/1.1\r\nX-Disk-Op: zero\r\n\r\n", Op::Zero),
            (b"POST / HTTP/1.1\r\nX-Disk-Op: trim\r\n\r\n", Op::Trim),
            (b"POST / HTTP/1.1\r\nX-Disk-Op: discard\r\n\r\n", Op::Other),
            (b"POST / HTTP/1.1\r\n\r\n", Op::Other),
            (b"DELETE / HTTP/1.1\r\n\r\n", Op::Other),
        ] {
            assert_eq!(
                Op::of(&request(raw)),
                op,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn replies_count_by_op_status_bytes_and_reason() {
        let metrics = Metrics::default();
        let get = request(b"GET / HTTP/1.1\r\nRange: bytes=0-9\r\n\r\n");
        let put = request(b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-99/*\r\n\r\n");
        let read = || ok(206, Body::Disk { start: 0, len: 10 });
        metrics.count_reply(&get, &read(), &Ok(()), true);
        metrics.count_reply(&get, &read(), &Ok(()), true);
        metrics.count_reply(&get, &read(), &Err(io::ErrorKind::BrokenPipe.into()), true);
        let eio = io::Error::from_raw_os_error(libc::EIO);
        metrics.count_reply(&get, &read(), &Err(eio), true);
        metrics.count_reply(&put, &ok(200, Body::Empty), &Ok(()), true);
        metrics.count_reply(&put, &Reply::error(400, "no"), &Ok(()), true);
        metrics.count_reply(&put, &Reply::error(500, "EIO"), &Ok(()), true);
        metrics.count_reply(&get, &Reply::error(403, "no"), &Ok(()), true);
        metrics.count_reply(&get, &Reply::error(401, "no"), &Ok(()), true);
        metrics.count_reply(&get, &Reply::error(503, "no"), &Ok(()), false);
        metrics.count_reply(&put, &Reply::error(503, "no"), &Ok(()), true);
        metrics.refused(RefusalReason::Busy);
        metrics.count_request(Op::Other, 400);
        let in_flight = metrics.request_started();
        let counts = metrics.counts();
        drop(in_flight);

        let count = |op, status| RequestCount {
            op,
            status,
            count: 1,
        };
        assert_eq!(
            counts.requests,
            vec![
                RequestCount {
                    op: Op::Read,
                    status: 206,
                    count: 4
                },
                count(Op::Read, 401),
                count(Op::Read, 403),
                count(Op::Read, 503),
                count(Op::Write, 200),
                count(Op::Write, 400),
                count(Op::Write, 500),
                count(Op::Write, 503),
                count(Op::Other, 400),
            ]
        );
        // Only delivered reads count as bytes read.
        assert_eq!(counts.bytes_read, 20);
        assert_eq!(counts.bytes_written, 100);
        assert_eq!(
            counts.failures,
            vec![(Failure::Disk, 2), (Failure::ClientGone, 1)]
        );
        assert_eq!(
            counts.refusals,
            vec![
                (RefusalReason::NotAllowed, 1),
                (RefusalReason::Unauthorized, 1),
                (RefusalReason::Busy, 1),
                (RefusalReason::PeerCap, 0),
                (RefusalReason::NotHeld, 1),
                (RefusalReason::Overloaded, 1),
            ]
        );
        assert_eq!(counts.in_flight, 1);
        assert_eq!(metrics.counts().in_flight, 0);
    }
}
