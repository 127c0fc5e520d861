//! HTTP requests to one server: HEAD probe, ranged GET, PUT, and the POST
//! extensions, over a pool of keep-alive connections (ureq 2).
//!
//! Timeouts: `connect-timeout` bounds the TCP connect and a whole HEAD
//! probe. Each data request gets a deadline of `io-timeout` plus the time
//! its payload needs at a floor rate ([`MIN_TRANSFER_RATE`]), so a large
//! transfer on a slow but working link is not cut while a stopped server
//! is given up after about `io-timeout`. A per-request deadline is needed
//! because ureq 2 clears socket timeouts when a connection goes back to
//! its pool (`Stream::reset`): the agent's read/write timeouts then no
//! longer apply to reused connections, and a stopped server would hang a
//! request forever. Every failure comes back as an [`Attempt`]: fail over,
//! or a fatal error for the client.

use std::io::Read;
use std::time::Duration;

use base64::Engine;
use http_disk_protocol::{headers, ByteRange};

use crate::config::Config;
use crate::error::Attempt;
use crate::reply::{self, ServerInfo};

/// Slowest payload rate a working server is allowed (1 MiB/s).
pub const MIN_TRANSFER_RATE: u64 = 1 << 20;
/// Slowest rate at which a server may zero or trim a range (64 MiB/s:
/// zeroing a block device without hardware offload writes the zeros).
pub const MIN_ZERO_RATE: u64 = 64 << 20;

pub struct Transport {
    agent: ureq::Agent,
    probe_timeout: Duration,
    io_timeout: Duration,
    authorization: Option<String>,
}

/// What a POST extension asks for.
#[derive(Clone, Copy, Debug)]
pub enum PostOp {
    Flush,
    Trim(ByteRange),
    Zero { range: ByteRange, may_trim: bool },
}

impl Transport {
    pub fn new(config: &Config) -> Transport {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(config.connect_timeout)
            .timeout_read(config.io_timeout)
            .timeout_write(config.io_timeout)
            .max_idle_connections(config.pool_size * config.urls.len().min(8))
            .max_idle_connections_per_host(config.pool_size)
            // A redirect could lead to another disk: never follow one.
            .redirects(0)
            .user_agent(concat!("multihttp/", env!("CARGO_PKG_VERSION")))
            .build();
        let authorization = config.user.as_ref().map(|user| {
            let password = config.password.as_deref().unwrap_or("");
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        Transport {
            agent,
            probe_timeout: config.connect_timeout,
            io_timeout: config.io_timeout,
            authorization,
        }
    }

    /// Deadline of a whole request moving `bytes` at `rate` or faster.
    fn deadline(&self, bytes: u64, rate: u64) -> Duration {
        self.io_timeout + Duration::from_secs_f64(bytes as f64 / rate as f64)
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let request = self.agent.request(method, url);
        match &self.authorization {
            Some(value) => request.set("Authorization", value),
            None => request,
        }
    }

    /// HEAD probe, bounded as a whole by `connect-timeout`.
    pub fn probe(&self, url: &str, expected_size: Option<u64>) -> Result<ServerInfo, String> {
        let reply = self.request("HEAD", url).timeout(self.probe_timeout).call();
        let response = match reply {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                return Err(format!("HEAD answered {status} {}", reason(&response)))
            }
            Err(ureq::Error::Transport(t)) => return Err(transport_reason(&t)),
        };
        reply::check_head(
            response.status(),
            response.header("Accept-Ranges"),
            response.header("Content-Length"),
            response.header(headers::FEATURES),
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
        let response = send(
            &what,
            self.request("GET", url)
                .timeout(self.deadline(range.len(), MIN_TRANSFER_RATE))
                .set("Range", &range.to_range_header())
                .call(),
        )?;
        reply::check_read_reply(
            response.status(),
            response.header("Content-Range"),
            response.header("Content-Length"),
            range,
        )?;
        let mut body = response.into_reader();
        body.read_exact(buf)
            .map_err(|e| Attempt::Failover(format!("{what}: body cut short: {e}")))?;
        // More bytes than asked means the server answered something else.
        let mut extra = [0u8; 1];
        match body.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(Attempt::Failover(format!(
                "{what}: body longer than the {} bytes asked for",
                buf.len()
            ))),
            Err(e) => Err(Attempt::Failover(format!("{what}: after the body: {e}"))),
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
        let mut request = self
            .request("PUT", url)
            .timeout(self.deadline(range.len(), MIN_TRANSFER_RATE))
            .set("Content-Range", &range.to_content_range(size));
        if writeback {
            request = request.set(headers::WRITEBACK, "1");
        }
        let response = send(&what, request.send_bytes(data))?;
        expect_success(&what, response)
    }

    /// Sends one POST extension (flush, trim, zero).
    pub fn post(&self, url: &str, op: PostOp, writeback: bool) -> Result<(), Attempt> {
        let work = match op {
            PostOp::Flush => 0,
            PostOp::Trim(range) | PostOp::Zero { range, .. } => range.len(),
        };
        let mut request = self
            .request("POST", url)
            .timeout(self.deadline(work, MIN_ZERO_RATE));
        let what = match op {
            PostOp::Flush => {
                request = request.set(headers::OP, headers::OP_FLUSH);
                "POST flush".to_owned()
            }
            PostOp::Trim(range) => {
                request = request
                    .set(headers::OP, headers::OP_TRIM)
                    .set(headers::RANGE, &range.to_range_header());
                format!("POST trim {range}")
            }
            PostOp::Zero { range, may_trim } => {
                request = request
                    .set(headers::OP, headers::OP_ZERO)
                    .set(headers::RANGE, &range.to_range_header());
                if may_trim {
                    request = request.set(headers::MAY_TRIM, "1");
                }
                format!("POST zero {range}")
            }
        };
        if writeback && !matches!(op, PostOp::Flush) {
            request = request.set(headers::WRITEBACK, "1");
        }
        let response = send(&what, request.send_bytes(&[]))?;
        expect_success(&what, response)
    }
}

/// Turns ureq's result into a response with a 2xx/3xx status, or the
/// attempt's failure.
fn send(
    what: &str,
    result: Result<ureq::Response, ureq::Error>,
) -> Result<ureq::Response, Attempt> {
    match result {
        Ok(response) => Ok(response),
        Err(ureq::Error::Status(status, response)) => {
            Err(reply::classify_status(what, status, &reason(&response)))
        }
        Err(ureq::Error::Transport(t)) => Err(Attempt::Failover(format!(
            "{what}: {}",
            transport_reason(&t)
        ))),
    }
}

/// Accepts 200/201/204 for a write-like request and drains the (small)
/// body so the connection goes back to the pool.
fn expect_success(what: &str, response: ureq::Response) -> Result<(), Attempt> {
    let status = response.status();
    if !matches!(status, 200 | 201 | 204) {
        return Err(reply::classify_status(what, status, &reason(&response)));
    }
    let mut sink = Vec::new();
    let _ = response
        .into_reader()
        .take(64 * 1024)
        .read_to_end(&mut sink);
    Ok(())
}

/// The server's one-line reason for an error reply.
fn reason(response: &ureq::Response) -> String {
    response
        .header(headers::ERROR)
        .unwrap_or_else(|| response.status_text())
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

/// ureq's message plus the underlying I/O error (refused, timed out...).
fn transport_reason(t: &ureq::Transport) -> String {
    use std::error::Error as _;
    match t.source() {
        Some(source) => format!("{t} ({source})"),
        None => t.to_string(),
    }
}
