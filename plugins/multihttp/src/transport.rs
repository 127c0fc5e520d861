//! HTTP requests to one server: HEAD probe, ranged GET, PUT, and the POST
//! extensions, over keep-alive connections kept per server.
//!
//! Timeouts: `connect-timeout` bounds the TCP connect and a whole HEAD
//! probe. Each data request gets a deadline of `io-timeout` plus the time
//! its payload needs at a floor rate ([`MIN_TRANSFER_RATE`]), so a large
//! transfer on a slow but working link is not cut while a stopped server
//! is given up after about `io-timeout`. Every failure comes back as an
//! [`Attempt`]: fail over, or a fatal error for the client.
//!
//! Why our own HTTP/1.1 client (`connection`, `response`, `endpoint`)
//! instead of ureq 2: measured with `strace -c` on 4 KiB reads, ureq spent
//! ~31 syscalls per request where nbdkit's curl plugin spends ~9: two
//! setsockopt before every recv (its per-request deadline), two more when
//! a connection goes back to its pool, two fcntl/ioctl mode switches to
//! check a pooled connection, and every body byte went through an 8 KiB
//! buffer (a 1 MiB read was 128 recvs, 256 setsockopts and an extra copy).
//! ureq 3 arms the socket timeout the same way. The requests this plugin
//! sends are few and fixed (and its servers ours or the old one), so ~400
//! lines give: one send per request, body bytes received straight into
//! nbdkit's buffer, a liveness check that is one non-blocking peek, and no
//! setsockopt while a request is far from its deadline.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tls_io::rustls::ClientConfig;

use base64::Engine;
use http_disk_protocol::{headers, ByteRange};

use crate::config::Config;
use crate::connection::{Deadline, Failure, COALESCE_BODY};
use crate::endpoint::{Address, Endpoint, Lease, Slot};
use crate::error::Attempt;
use crate::reply::{self, ServerInfo};
use crate::response::{Body, ResponseHead};

/// Slowest payload rate a working server is allowed (1 MiB/s).
pub const MIN_TRANSFER_RATE: u64 = 1 << 20;
/// Slowest rate at which a server may zero or trim a range (64 MiB/s:
/// zeroing a block device without hardware offload writes the zeros).
pub const MIN_ZERO_RATE: u64 = 64 << 20;

pub struct Transport {
    /// By URL exactly as configured (what the cluster passes in).
    endpoints: HashMap<String, Endpoint>,
    connect_timeout: Duration,
    io_timeout: Duration,
    authorization: Option<String>,
}

/// Kept-alive connections found closed by the server, in a row, before a
/// request gives up.
const MAX_STALE_RETRIES: usize = 3;

/// Error replies with bodies up to this size are read to keep their
/// connection; larger ones are dropped with it.
const SKIPPABLE_BODY: u64 = 64 * 1024;

/// What a POST extension asks for.
#[derive(Clone, Copy, Debug)]
pub enum PostOp {
    Flush,
    Trim(ByteRange),
    Zero { range: ByteRange, may_trim: bool },
}

impl Transport {
    /// `tls`: the client configuration for `https://` URLs (see
    /// `tls::client_config`), present when there is one.
    pub fn new(config: &Config, tls: Option<Arc<ClientConfig>>) -> Transport {
        let endpoints = config
            .urls
            .iter()
            .map(|url| {
                // Config checked every URL with the same parser, and the
                // host of https:// URLs as a TLS server name.
                let address = Address::parse(url).expect("URLs are checked by config");
                let tls = match (&tls, address.tls) {
                    (Some(config), true) => {
                        let name = crate::tls::server_name(&address.host)
                            .expect("https hosts are checked by config");
                        Some((Arc::clone(config), name))
                    }
                    _ => None,
                };
                (url.clone(), Endpoint::new(address, config.pool_size, tls))
            })
            .collect();
        let authorization = config.user.as_ref().map(|user| {
            let password = config.password.as_deref().unwrap_or("");
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        Transport {
            endpoints,
            connect_timeout: config.connect_timeout,
            io_timeout: config.io_timeout,
            authorization,
        }
    }

    /// Deadline of a whole request moving `bytes` at `rate` or faster.
    fn data_deadline(&self, bytes: u64, rate: u64) -> Deadline {
        let total = self.io_timeout + Duration::from_secs_f64(bytes as f64 / rate as f64);
        Deadline::new(total, self.io_timeout)
    }

    /// Sends one request and reads the reply head. A pooled connection the
    /// server had closed while idle is not a server failure: the request
    /// goes again on a new connection (every request here is idempotent).
    fn exchange(
        &self,
        url: &str,
        method: &str,
        extra_headers: &[(&str, &str)],
        body: &[u8],
        deadline: &Deadline,
    ) -> Result<(Lease<'_>, ResponseHead), String> {
        let endpoint = self
            .endpoints
            .get(url)
            .ok_or_else(|| format!("{url} is not a configured URL"))?;
        let tail = if body.len() > COALESCE_BODY {
            body
        } else {
            &[]
        };
        let mut wire = Vec::with_capacity(512 + body.len() - tail.len());
        self.write_head(&mut wire, endpoint, method, extra_headers, body.len());
        if tail.is_empty() {
            wire.extend_from_slice(body);
        }
        let mut slot = endpoint.acquire(deadline.at())?;
        // Bounded: after a stale connection the idle ones are dropped, so
        // the next try is normally on a new connection.
        for _ in 0..MAX_STALE_RETRIES {
            let (mut lease, fresh) = match slot {
                Slot::Pooled(lease) => (lease, false),
                Slot::New(new) => (new.connect(self.connect_timeout, deadline)?, true),
            };
            match lease.exchange(&wire, tail, deadline) {
                Ok(head) => return Ok((lease, head)),
                Err(Failure::ClosedBeforeReply(_)) if !fresh => {
                    // Free this slot before taking one for the new connection.
                    drop(lease);
                    // The server probably restarted: its other idle
                    // connections are stale too.
                    endpoint.drop_idle();
                    slot = endpoint.acquire(deadline.at())?;
                }
                Err(failure) => return Err(failure.into_message()),
            }
        }
        Err(format!(
            "{MAX_STALE_RETRIES} kept-alive connections in a row were closed by the server"
        ))
    }

    fn write_head(
        &self,
        wire: &mut Vec<u8>,
        endpoint: &Endpoint,
        method: &str,
        extra_headers: &[(&str, &str)],
        body_len: usize,
    ) {
        let mut head = String::with_capacity(256);
        let address = &endpoint.address;
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: multihttp/{}\r\n",
            address.target,
            address.authority,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(value) = &self.authorization {
            let _ = write!(head, "Authorization: {value}\r\n");
        }
        for (name, value) in extra_headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        // Bodies are always Content-Length framed: the old server never
        // answers `100 Continue`, and chunked bodies would need it.
        if matches!(method, "PUT" | "POST") {
            let _ = write!(head, "Content-Length: {body_len}\r\n");
        }
        head.push_str("\r\n");
        let _ = wire.write_all(head.as_bytes());
    }

    /// HEAD probe, bounded as a whole by `connect-timeout`.
    pub fn probe(&self, url: &str, expected_size: Option<u64>) -> Result<ServerInfo, String> {
        let deadline = Deadline::new(self.connect_timeout, self.connect_timeout);
        let (lease, head) = self.exchange(url, "HEAD", &[], &[], &deadline)?;
        if head.keep_alive() {
            lease.keep();
        }
        if head.status != 200 {
            return Err(format!("HEAD answered {} {}", head.status, reason(&head)));
        }
        reply::check_head(
            head.status,
            head.header("Accept-Ranges"),
            head.header("Content-Length"),
            head.header(headers::FEATURES),
            expected_size,
        )
    }

    /// Reads `buf.len()` bytes at `offset`, checking the reply fully
    /// before the caller may use a single byte.
    pub fn read(&self, url: &str, offset: u64, buf: &mut [u8]) -> Result<(), Attempt> {
        let Some(range) = ByteRange::from_offset_len(offset, buf.len() as u64) else {
            return Ok(());
        };
        let what = format!("GET {range}");
        let failover = |why: String| Attempt::Failover(format!("{what}: {why}"));
        let deadline = self.data_deadline(range.len(), MIN_TRANSFER_RATE);
        let range_header = range.to_range_header();
        let (mut lease, head) = self
            .exchange(url, "GET", &[("Range", &range_header)], &[], &deadline)
            .map_err(failover)?;
        if head.status >= 400 {
            finish_unwanted(lease, &head, "GET", &deadline);
            return Err(reply::classify_status(&what, head.status, &reason(&head)));
        }
        reply::check_read_reply(
            head.status,
            head.header("Content-Range"),
            head.header("Content-Length"),
            range,
        )?;
        match head.body("GET").map_err(failover)? {
            Body::Length(len) if len == range.len() => {
                lease.read_body(buf, &deadline).map_err(failover)?;
                if head.keep_alive() {
                    lease.keep();
                }
                Ok(())
            }
            Body::UntilClose => {
                lease.read_body(buf, &deadline).map_err(failover)?;
                // More bytes than asked means the server answered something else.
                match lease.at_end(&deadline).map_err(failover)? {
                    true => Ok(()),
                    false => Err(failover(format!(
                        "body longer than the {} bytes asked for",
                        buf.len()
                    ))),
                }
            }
            other => Err(failover(format!("unusable body framing {other:?}"))),
        }
    }

    /// Writes `data` at `offset` with `Content-Length` and
    /// `Content-Range: bytes B-E/size` (never chunked, never `Expect`).
    /// `writeback` defers durability to the next flush (new servers only).
    pub fn write(
        &self,
        url: &str,
        offset: u64,
        data: &[u8],
        size: u64,
        writeback: bool,
    ) -> Result<(), Attempt> {
        let Some(range) = ByteRange::from_offset_len(offset, data.len() as u64) else {
            return Ok(());
        };
        let what = format!("PUT {range}");
        let content_range = range.to_content_range(size);
        let mut extra = vec![("Content-Range", content_range.as_str())];
        if writeback {
            extra.push((headers::WRITEBACK, "1"));
        }
        let deadline = self.data_deadline(range.len(), MIN_TRANSFER_RATE);
        self.send_expecting_success(url, "PUT", &what, &extra, data, &deadline)
    }

    /// Sends one POST extension (flush, trim, zero).
    pub fn post(&self, url: &str, op: PostOp, writeback: bool) -> Result<(), Attempt> {
        let (work, what, range_header) = match op {
            PostOp::Flush => (0, "POST flush".to_owned(), None),
            PostOp::Trim(range) => (
                range.len(),
                format!("POST trim {range}"),
                Some(range.to_range_header()),
            ),
            PostOp::Zero { range, .. } => (
                range.len(),
                format!("POST zero {range}"),
                Some(range.to_range_header()),
            ),
        };
        let name = match op {
            PostOp::Flush => headers::OP_FLUSH,
            PostOp::Trim(_) => headers::OP_TRIM,
            PostOp::Zero { .. } => headers::OP_ZERO,
        };
        let mut extra = vec![(headers::OP, name)];
        if let Some(range) = &range_header {
            extra.push((headers::RANGE, range.as_str()));
        }
        if let PostOp::Zero { may_trim: true, .. } = op {
            extra.push((headers::MAY_TRIM, "1"));
        }
        if writeback && !matches!(op, PostOp::Flush) {
            extra.push((headers::WRITEBACK, "1"));
        }
        let deadline = self.data_deadline(work, MIN_ZERO_RATE);
        self.send_expecting_success(url, "POST", &what, &extra, &[], &deadline)
    }

    /// A write-like request: 200/201/204 is success; its (small) body is
    /// read so the connection can carry the next request.
    fn send_expecting_success(
        &self,
        url: &str,
        method: &str,
        what: &str,
        extra_headers: &[(&str, &str)],
        body: &[u8],
        deadline: &Deadline,
    ) -> Result<(), Attempt> {
        let (lease, head) = self
            .exchange(url, method, extra_headers, body, deadline)
            .map_err(|why| Attempt::Failover(format!("{what}: {why}")))?;
        finish_unwanted(lease, &head, method, deadline);
        if !matches!(head.status, 200 | 201 | 204) {
            return Err(reply::classify_status(what, head.status, &reason(&head)));
        }
        Ok(())
    }
}

/// Reads a reply body nobody needs (error text, a PUT's short answer) so
/// the connection can be reused; drops the connection when that is not
/// possible or not worth it.
fn finish_unwanted(mut lease: Lease<'_>, head: &ResponseHead, method: &str, deadline: &Deadline) {
    let reusable = match head.body(method) {
        Ok(Body::None) => true,
        Ok(Body::Length(len)) if len <= SKIPPABLE_BODY => lease.skip_body(len, deadline).is_ok(),
        _ => false,
    };
    if reusable && head.keep_alive() {
        lease.keep();
    }
}

/// The server's one-line reason for an error reply.
fn reason(head: &ResponseHead) -> String {
    head.header(headers::ERROR)
        .unwrap_or(&head.reason)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}
