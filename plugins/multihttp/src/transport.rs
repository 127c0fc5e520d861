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
//! Why our own HTTP/1.1 client (the `http-client` crate, shared with s3)
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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_ext::LockIgnoringPoison;
use tls_io::rustls::ClientConfig;

use http_disk_protocol::{headers, ByteRange};
use plugin_glue::secret::{wipe, Secret};

use crate::config::{Config, PoolSize};
use crate::credentials::{credentials, Credentials};
use http_client::abort::Abort;
use http_client::connection::Deadline;
use http_client::endpoint::{Endpoint, Lease, Pool};
use http_client::request::{split_body, Request, SecretHeader};
use http_client::response::{Body, ResponseHead};

use crate::error::Attempt;
use crate::reply::{self, ProbeError, ServerInfo};

pub use http_client::connection::MIN_TRANSFER_RATE;
/// Slowest rate at which a server may zero or trim a range (64 MiB/s:
/// zeroing a block device without hardware offload writes the zeros).
pub const MIN_ZERO_RATE: u64 = 64 << 20;

pub struct Transport {
    /// One per URL, in the configured order: requests name their server
    /// by its index (the cluster's `Active::index`).
    endpoints: Vec<Endpoint>,
    connect_timeout: Duration,
    io_timeout: Duration,
    /// The Authorization header when `user=` is set (re-read on rotation).
    credentials: Option<Credentials>,
    pool_size: PoolSize,
    /// NBD client connections open now (they size the default pool).
    client_connections: Mutex<usize>,
}

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
            .addresses
            .iter()
            .map(|address| {
                // Config checked the host of https:// URLs as a TLS server
                // name; one that fails here gets no TLS and so fails its
                // requests (never a panic inside nbdkit).
                let tls = match (&tls, address.tls) {
                    (Some(config), true) => crate::tls::server_name(&address.host)
                        .ok()
                        .map(|name| (Arc::clone(config), name)),
                    _ => None,
                };
                // pool-size bounds the open connections, not only the idle
                // ones: see http_client::endpoint.
                let bound = config.pool_size.bound(0);
                let pool = Pool {
                    max_open: bound,
                    max_idle: bound,
                    quick_ack: false,
                };
                Endpoint::new(address.clone(), pool, tls)
            })
            .collect();
        let credentials = config
            .user
            .as_ref()
            .map(|user| credentials(user, config.password.as_ref(), config.password_file.clone()));
        Transport {
            endpoints,
            connect_timeout: config.connect_timeout,
            io_timeout: config.io_timeout,
            credentials,
            pool_size: config.pool_size,
            client_connections: Mutex::new(0),
        }
    }

    /// An NBD client connection opened (`true`) or closed: the pools'
    /// bound follows (see [`PoolSize`]). Under one lock, so concurrent
    /// opens and closes apply their bounds in order.
    pub fn client_connection(&self, opened: bool) {
        let mut count = self.client_connections.lock_ignoring_poison();
        *count = if opened {
            *count + 1
        } else {
            count.saturating_sub(1)
        };
        let bound = self.pool_size.bound(*count);
        for endpoint in &self.endpoints {
            endpoint.set_bounds(bound, bound);
        }
        log::debug!(
            "{} NBD client connection(s): up to {bound} HTTP connections per server",
            *count
        );
    }

    /// Deadline of a whole request moving `bytes` at `rate` or faster.
    fn data_deadline(&self, bytes: u64, rate: u64) -> Deadline {
        Deadline::for_payload(self.io_timeout, bytes, rate)
    }

    /// Sends one request and reads the reply head (every request here is
    /// idempotent: the endpoint may send it again on a new connection
    /// when a kept-alive one turns out closed). A 401 re-reads
    /// `password=+FILE` and, if the password changed, sends the request
    /// once more with it: the server may have moved to a new password
    /// before this client looked at its file. Only once, so a password the
    /// server does not take ends as a 401 like before (failover).
    fn exchange<'a>(
        &'a self,
        server: usize,
        method: &str,
        extra_headers: &[(&str, &str)],
        body: &[u8],
        deadline: &Deadline,
        abort: Option<&'a Abort>,
    ) -> Result<(Lease<'a>, ResponseHead), String> {
        let endpoint = self
            .endpoints
            .get(server)
            .ok_or_else(|| format!("server {server} is not configured"))?;
        let send_once = |authorization: Option<&Secret>| {
            let (inline_body, tail) = split_body(body);
            let request = request(endpoint, method, extra_headers, body.len());
            let secret = secret_header(authorization);
            let mut wire =
                RequestBytes::with_capacity(request.capacity(secret.as_ref()) + inline_body.len());
            request.write_head(&mut wire.bytes, secret.as_ref())?;
            if secret.is_some() {
                wire.secret_len = wire.bytes.len();
            }
            wire.bytes.extend_from_slice(inline_body);
            // A reallocation would have left a copy of the head in freed memory.
            debug_assert!(wire.bytes.len() <= wire.capacity, "head capacity too small");
            let sent = match abort {
                Some(abort) => endpoint.send_abortable(
                    &wire.bytes,
                    tail,
                    self.connect_timeout,
                    deadline,
                    abort,
                ),
                None => endpoint.send(&wire.bytes, tail, self.connect_timeout, deadline),
            };
            sent.map_err(|e| e.to_string())
        };
        // Held while the request is on the wire: a rotation meanwhile
        // swaps in another value and does not wait for this one.
        let authorization = self.credentials.as_ref().map(Credentials::current);
        let (lease, head) = send_once(authorization.as_deref())?;
        let refused = head.status == 401
            && self
                .credentials
                .as_ref()
                .zip(authorization.as_ref())
                .is_some_and(|(credentials, used)| credentials.reload_after_refusal(used));
        if !refused {
            return Ok((lease, head));
        }
        // The refused reply's connection is dropped with its unread body.
        drop(lease);
        let authorization = self.credentials.as_ref().map(Credentials::current);
        send_once(authorization.as_deref())
    }

    /// HEAD probe, bounded as a whole by `connect-timeout`.
    pub fn probe(
        &self,
        server: usize,
        expected_size: Option<u64>,
    ) -> Result<ServerInfo, ProbeError> {
        let deadline = Deadline::new(self.connect_timeout, self.connect_timeout);
        let (lease, head) = self.exchange(server, "HEAD", &[], &[], &deadline, None)?;
        if head.keep_alive() {
            lease.keep();
        }
        if head.status != 200 {
            return Err(format!("HEAD answered {} {}", head.status, reason(&head)).into());
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
    /// `abort` lets the stall watch end it (see `stall.rs`), as for every
    /// data request below.
    pub fn read(
        &self,
        server: usize,
        offset: u64,
        buf: &mut [u8],
        abort: &Abort,
    ) -> Result<(), Attempt> {
        let Some(range) = ByteRange::from_offset_len(offset, buf.len() as u64) else {
            return Ok(());
        };
        let what = format!("GET {range}");
        let failover = |why: String| Attempt::Failover(format!("{what}: {why}"));
        let deadline = self.data_deadline(range.len(), MIN_TRANSFER_RATE);
        let range_header = range.to_range_header();
        let (mut lease, head) = self
            .exchange(
                server,
                "GET",
                &[("Range", &range_header)],
                &[],
                &deadline,
                Some(abort),
            )
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
        server: usize,
        offset: u64,
        data: &[u8],
        size: u64,
        writeback: bool,
        abort: &Abort,
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
        self.send_expecting_success(server, "PUT", &what, &extra, data, &deadline, abort)
    }

    /// Sends one POST extension (flush, trim, zero).
    pub fn post(
        &self,
        server: usize,
        op: PostOp,
        writeback: bool,
        abort: &Abort,
    ) -> Result<(), Attempt> {
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
        self.send_expecting_success(server, "POST", &what, &extra, &[], &deadline, abort)
    }

    /// A write-like request: 200/201/204 is success; its (small) body is
    /// read so the connection can carry the next request. (The request's
    /// parts as arguments, each passed straight on: a struct would only
    /// name them a second time.)
    #[allow(clippy::too_many_arguments)]
    fn send_expecting_success(
        &self,
        server: usize,
        method: &str,
        what: &str,
        extra_headers: &[(&str, &str)],
        body: &[u8],
        deadline: &Deadline,
        abort: &Abort,
    ) -> Result<(), Attempt> {
        let (lease, head) = self
            .exchange(server, method, extra_headers, body, deadline, Some(abort))
            .map_err(|why| Attempt::Failover(format!("{what}: {why}")))?;
        finish_unwanted(lease, &head, method, deadline);
        if !matches!(head.status, 200 | 201 | 204) {
            return Err(reply::classify_status(what, head.status, &reason(&head)));
        }
        Ok(())
    }
}

/// The head of a request to `endpoint`. Bodies are always Content-Length
/// framed: the old server never answers `100 Continue`, and chunked
/// bodies would need it.
fn request<'a>(
    endpoint: &'a Endpoint,
    method: &'a str,
    extra_headers: &'a [(&'a str, &'a str)],
    body_len: usize,
) -> Request<'a> {
    Request {
        method,
        target: &endpoint.address.target,
        host: &endpoint.address.authority,
        user_agent: concat!("multihttp/", env!("CARGO_PKG_VERSION")),
        headers: extra_headers,
        content_length: matches!(method, "PUT" | "POST").then_some(body_len as u64),
    }
}

/// The Authorization header of a request, when `user=` is set.
fn secret_header(value: Option<&Secret>) -> Option<SecretHeader<'_>> {
    value.map(|value| SecretHeader {
        name: "Authorization",
        value: value.expose(),
    })
}

/// One request's bytes. When the head carries the Authorization header,
/// those bytes are zeroed once the request is over, on every path (drop):
/// the freed heap block would otherwise keep a copy of the header per
/// request, for a core dump or a later bug to find. The cost: zeroing a
/// ~200-byte head took 4 ns (measured), against ~100 us for a 4 KiB read
/// over loopback; an A/B of 20,000 such reads showed no difference.
struct RequestBytes {
    bytes: Vec<u8>,
    /// How many leading bytes to zero (0 without credentials).
    secret_len: usize,
    /// The capacity asked for, to check that it was never exceeded.
    capacity: usize,
}

impl RequestBytes {
    fn with_capacity(capacity: usize) -> RequestBytes {
        RequestBytes {
            bytes: Vec::with_capacity(capacity),
            secret_len: 0,
            capacity,
        }
    }

    fn wipe_secret(&mut self) {
        wipe(&mut self.bytes[..self.secret_len]);
    }
}

impl Drop for RequestBytes {
    fn drop(&mut self) {
        self.wipe_secret();
    }
}

/// Reads a reply body nobody needs so the connection can be reused, or
/// drops the connection.
fn finish_unwanted(lease: Lease<'_>, head: &ResponseHead, method: &str, deadline: &Deadline) {
    lease.finish_unwanted(head, method, SKIPPABLE_BODY, deadline);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigBuilder;
    use plugin_glue::config::Builder;

    fn transport(url: &str, password: &[u8]) -> Transport {
        let mut b = ConfigBuilder::default();
        b.set("urls", url).unwrap();
        b.set("user", "alice").unwrap();
        b.set_secret("password", Secret::new(password)).unwrap();
        Transport::new(&b.build().unwrap(), None)
    }

    #[test]
    fn request_heads_fit_their_buffer_so_no_copy_is_left_behind() {
        // The longest heads: a long path and host, a long password, a
        // POST zero with every extension header and a huge length.
        let url = format!("http://[::1]:65535/{}", "p".repeat(300));
        let t = transport(&url, &[b'x'; 500]);
        let endpoint = &t.endpoints[0];
        let range = ByteRange::from_offset_len(u64::MAX / 4, u64::MAX / 4).unwrap();
        let range = range.to_range_header();
        let extra = [
            (headers::OP, headers::OP_ZERO),
            (headers::RANGE, range.as_str()),
            (headers::MAY_TRIM, "1"),
            (headers::WRITEBACK, "1"),
        ];
        let request = request(endpoint, "POST", &extra, usize::MAX);
        let authorization = t.credentials.as_ref().map(Credentials::current);
        let secret = secret_header(authorization.as_deref());
        let capacity = request.capacity(secret.as_ref());
        let mut wire = Vec::with_capacity(capacity);
        request.write_head(&mut wire, secret.as_ref()).unwrap();
        assert!(wire.len() <= capacity, "{} > {capacity}", wire.len());
        let text = String::from_utf8(wire).unwrap();
        assert!(
            text.contains("\r\nAuthorization: Basic YWxpY2U6eHh4"),
            "{text}"
        );
    }

    #[test]
    fn a_finished_request_leaves_no_authorization_bytes() {
        let mut wire = RequestBytes::with_capacity(64);
        wire.bytes
            .extend_from_slice(b"Authorization: Basic YWxpY2U6czNjcjN0\r\n\r\nbody");
        wire.secret_len = wire.bytes.len() - 4;
        wire.wipe_secret();
        let (head, body) = wire.bytes.split_at(wire.secret_len);
        assert!(head.iter().all(|&b| b == 0));
        assert_eq!(body, b"body");
    }
}
