//! The metrics listener (`--metrics-listen ADDR:PORT`): `GET /metrics`
//! (Prometheus) and `GET /status` (JSON) on a socket of its own, never on
//! the data port, so that it can be bound to localhost or a management
//! network. `--allow` and `--auth-file` do not apply to it: whoever can
//! reach the address can read the pages.
//!
//! It must never hurt the data path, so it is small and bounded: one
//! accept thread, at most [`MAX_CONNECTIONS`] answered at once (others are
//! closed at once), one request per connection, a head of at most
//! [`MAX_HEAD_BYTES`] that must arrive within [`HEAD_TIME`], and a reply
//! that must be taken within [`REPLY_TIME`]. It reads the data port's
//! counters and never takes a lock the data path holds for long.

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::drbd;
use crate::exposition::{self, DrbdFacts, HeldDisk, Report};
use crate::http::{self, HeadError, Request};
use crate::state::State;

/// Connections answered at once; more are closed without a reply.
pub const MAX_CONNECTIONS: usize = 4;
/// Time a client has to send its whole request head.
pub const HEAD_TIME: Duration = Duration::from_secs(2);
/// Time a client has to take the reply (a /status on DRBD may first wait
/// up to 5 s for drbdsetup).
pub const REPLY_TIME: Duration = Duration::from_secs(5);
/// Largest request head read; a longer one gets no reply.
pub const MAX_HEAD_BYTES: u64 = 8 * 1024;
/// Most bytes and time spent draining what a client still sends after
/// its reply, so the close does not reset the reply away.
const DRAIN_BYTES: u64 = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_millis(200);

/// Binds the metrics socket, with an error that names the flag.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            format!(
                "cannot listen for metrics on {addr} (--metrics-listen): port {} is already in use",
                addr.port()
            )
        } else {
            format!("cannot listen for metrics on {addr} (--metrics-listen): {e}")
        }
    })
}

/// What the pages are made of.
struct Pages {
    state: Arc<State>,
    /// `--disk` as given: the disk may not be open yet.
    disk_path: PathBuf,
}

/// Serves the pages on `listener` from a thread of its own, for the life
/// of the process.
pub fn spawn(listener: TcpListener, state: Arc<State>, disk_path: PathBuf) -> Result<(), String> {
    let pages = Arc::new(Pages { state, disk_path });
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || accept_loop(&listener, &pages))
        .map(|_| ())
        .map_err(|e| format!("cannot start the metrics thread: {e}"))
}

fn accept_loop(listener: &TcpListener, pages: &Arc<Pages>) {
    let answering = Arc::new(AtomicUsize::new(0));
    for accepted in listener.incoming() {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("metrics listener: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if answering.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            log::debug!("metrics listener: {MAX_CONNECTIONS} scrapes in progress, closing another");
            continue;
        }
        answering.fetch_add(1, Ordering::SeqCst);
        let (pages, answering) = (Arc::clone(pages), Arc::clone(&answering));
        let spawned = thread::Builder::new()
            .name("metrics scrape".into())
            .spawn(move || {
                if let Err(e) = answer(&stream, &pages) {
                    log::debug!("metrics listener: {e}");
                }
                answering.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::warn!("metrics listener: cannot start a thread: {e}");
        }
    }
}

/// Reads of a stream that end at `deadline`, however the client dribbles.
struct Deadlined<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

/// One reply of the listener.
struct Page {
    status: u16,
    content_type: &'static str,
    allow_get: bool,
    body: String,
}

impl Page {
    fn text(status: u16, body: &str) -> Page {
        Page {
            status,
            content_type: "text/plain; charset=utf-8",
            allow_get: false,
            body: format!("{body}\n"),
        }
    }
}

/// Reads one request, replies, and closes.
fn answer(stream: &TcpStream, pages: &Pages) -> io::Result<()> {
    stream.set_write_timeout(Some(REPLY_TIME))?;
    let head = Deadlined {
        stream,
        deadline: Instant::now() + HEAD_TIME,
    };
    let mut reader = BufReader::new(head.take(MAX_HEAD_BYTES));
    let page = match http::read_head(&mut reader) {
        Ok(Some(request)) => route(&request, pages),
        Ok(None) => return Ok(()),
        Err(HeadError::Gone(e)) => return Err(e),
        Err(HeadError::Bad(e)) => Page::text(e.status, &e.reason),
    };
    let mut headers = vec![("Content-Type".to_owned(), page.content_type.to_owned())];
    if page.allow_get {
        headers.push(("Allow".to_owned(), "GET".to_owned()));
    }
    let mut out = io::BufWriter::new(stream);
    http::write_head(
        &mut out,
        page.status,
        &headers,
        page.body.len() as u64,
        false,
        false,
    )?;
    out.write_all(page.body.as_bytes())?;
    out.flush()?;
    drop(out);
    drain(stream);
    Ok(())
}

/// Stops sending and reads what the client still sends (a refused PUT
/// body), bounded, so that closing does not reset the reply away.
fn drain(stream: &TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut rest = Deadlined {
        stream,
        deadline: Instant::now() + DRAIN_TIME,
    }
    .take(DRAIN_BYTES);
    let _ = io::copy(&mut rest, &mut io::sink());
}

fn route(request: &Request, pages: &Pages) -> Page {
    if request.method != "GET" {
        let mut page = Page::text(
            405,
            "the metrics listener serves only GET /metrics and GET /status",
        );
        page.allow_get = true;
        return page;
    }
    let path = request.target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => Page {
            status: 200,
            content_type: exposition::PROMETHEUS_CONTENT_TYPE,
            allow_get: false,
            body: exposition::prometheus(&pages.report(false)),
        },
        "/status" => {
            let status = exposition::status(&pages.report(true));
            Page {
                status: 200,
                content_type: "application/json",
                allow_get: false,
                body: format!("{status:#}\n"),
            }
        }
        _ => Page::text(
            404,
            "not found: this is the metrics listener (GET /metrics, GET /status); \
             the disk is served on the data port",
        ),
    }
}

impl Pages {
    /// The server as it is now; `with_drbd` asks drbdsetup (bounded, and
    /// only for /status, so a Prometheus scrape never runs a process).
    fn report(&self, with_drbd: bool) -> Report {
        let state = &self.state;
        let drbd = if with_drbd {
            drbd::resource_status(&self.disk_path).map(|status| {
                status.map(|s| DrbdFacts {
                    resource: s.name,
                    role: s.role,
                })
            })
        } else {
            None
        };
        Report {
            version: env!("CARGO_PKG_VERSION"),
            disk_path: self.disk_path.display().to_string(),
            disk: state.disk.get().map(|disk| HeldDisk {
                size: disk.size(),
                block_device: disk.is_block_device(),
            }),
            readonly: state.config.readonly,
            drbd,
            connections_open: state.active.load(Ordering::SeqCst) as u64,
            connections_idle: state.idle.count() as u64,
            workers: state.config.workers as u64,
            counts: state.metrics.counts(),
        }
    }
}
