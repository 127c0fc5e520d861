//! `nbd-netlink attach`: attaches an NBD export served on a Unix socket
//! (nbdkit, started by the wrapper) to a /dev/nbdX through the kernel's
//! netlink interface, then stays to keep that same device working when
//! the server restarts. The kernel is told a dead-connection timeout: when
//! the connection dies (nbdkit killed, upgraded), the device does not fail
//! I/O but waits; the kernel announces the dead link on its multicast
//! group, and we reconnect to the socket (the wrapper restarts nbdkit on
//! it), negotiate again and hand the kernel the new socket
//! (NBD_CMD_RECONFIGURE). Requests that were in flight are requeued by
//! the kernel once their timeout passes, and sent on the new connection.
//!
//! Debian's nbd-client (3.24) has netlink but no reconfigure, and its
//! `-persist` only works in ioctl mode; upstream's netlink persist mode
//! is not packaged anywhere our hosts run.
//!
//! Ends: SIGTERM or SIGINT disconnect the device and exit 0; so does a
//! device disconnected by someone else (`nbd-client -d`). A connection
//! that cannot be made again within the dead-connection timeout:
//! disconnect, exit 1.

mod genl;
mod handshake;
mod nbd;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use nbd::{Nbd, Settings};

#[derive(Parser)]
#[command(
    version,
    about = "Attach an NBD Unix socket to /dev/nbdX over netlink, and keep it across server restarts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach, print `attached /dev/nbdN`, and keep the device connected
    /// until SIGTERM/SIGINT.
    Attach {
        /// The server's Unix socket.
        #[arg(long)]
        socket: PathBuf,
        /// The export name to ask for.
        #[arg(long, default_value = "")]
        export: String,
        /// The device to attach (/dev/nbdN); the first free one if not given.
        #[arg(long)]
        device: Option<String>,
        /// Seconds a request may go without a reply before the kernel
        /// requeues it on a new connection.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Seconds the device waits for a new connection after one died
        /// before failing I/O; a restart must fit in it.
        #[arg(long, default_value_t = 60)]
        dead_conn_timeout: u64,
        /// Logical block size of the device.
        #[arg(long, default_value_t = 512)]
        block_size: u64,
    },
}

/// Set by SIGTERM/SIGINT.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// How long one negotiation may take (a hung server must not hold up the
/// retry loop).
const NEGOTIATE_TIMEOUT: Duration = Duration::from_secs(2);
/// Between two tries to reconnect.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// How often the loop looks at signals and the device.
const TICK: Duration = Duration::from_millis(200);

fn log(message: &str) {
    let _ = writeln!(std::io::stderr(), "nbd-netlink: {message}");
}

fn main() -> ExitCode {
    let Command::Attach {
        socket,
        export,
        device,
        timeout,
        dead_conn_timeout,
        block_size,
    } = Cli::parse().command;
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, on_stop as *const () as libc::sighandler_t) };
    }
    let index = match device.as_deref().map(device_index).transpose() {
        Ok(index) => index,
        Err(e) => {
            log(&e);
            return ExitCode::from(2);
        }
    };
    let attach = Attach {
        socket,
        export,
        dead_conn_timeout: Duration::from_secs(dead_conn_timeout.max(1)),
    };
    match attach.run(index, Duration::from_secs(timeout.max(1)), block_size) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(&format!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// `/dev/nbdN` → N.
fn device_index(device: &str) -> Result<u32, String> {
    Path::new(device)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("nbd"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("--device must be /dev/nbdN: {device}"))
}

struct Attach {
    socket: PathBuf,
    export: String,
    dead_conn_timeout: Duration,
}

impl Attach {
    fn negotiate(&self) -> Result<handshake::Negotiated, String> {
        handshake::negotiate(&self.socket, &self.export, NEGOTIATE_TIMEOUT).map_err(|e| {
            format!(
                "cannot negotiate export {:?} on {}: {e}",
                self.export,
                self.socket.display()
            )
        })
    }

    fn run(&self, index: Option<u32>, timeout: Duration, block_size: u64) -> Result<(), String> {
        let mut nbd = Nbd::open().map_err(|e| e.to_string())?;
        // Joined before the connect: no dead link can go unheard.
        let events = nbd
            .events()
            .map_err(|e| format!("cannot listen for nbd events: {e}"))?;
        let first = self.negotiate()?;
        let settings = Settings {
            size: first.size,
            block_size,
            server_flags: first.flags,
            timeout,
            dead_conn_timeout: self.dead_conn_timeout,
        };
        let index = nbd
            .connect(index, &first.socket, &settings)
            .map_err(|e| format!("netlink connect failed: {e}"))?;
        // The kernel holds its own reference to the socket now.
        drop(first);
        let device = format!("/dev/nbd{index}");
        println!("attached {device}");
        let _ = std::io::stdout().flush();
        let mut restarts = 0u64;
        let mut next_check = Instant::now();
        while !STOP.load(Ordering::SeqCst) {
            let dead = match events.dead_links(TICK) {
                Ok(dead) => dead.contains(&index),
                // Events lost (ENOBUFS): ours may have been one.
                Err(e) => {
                    log(&format!("nbd events: {e}; checking {device}"));
                    true
                }
            };
            if dead {
                restarts += 1;
                if let Err(e) = self.reconnect(&mut nbd, index, settings.size, restarts) {
                    let _ = nbd.disconnect(index);
                    return Err(format!("{device}: {e}; disconnected"));
                }
            }
            if Instant::now() >= next_check {
                next_check = Instant::now() + Duration::from_secs(1);
                if !Path::new(&format!("/sys/block/nbd{index}/pid")).exists() {
                    log(&format!(
                        "{device} was disconnected by someone else; exiting"
                    ));
                    return Ok(());
                }
            }
        }
        log(&format!("stopping: disconnecting {device}"));
        nbd.disconnect(index)
            .map_err(|e| format!("netlink disconnect of {device} failed: {e}"))
    }

    /// Connects again until the server answers, within the dead-connection
    /// timeout, and gives the kernel the new socket.
    fn reconnect(&self, nbd: &mut Nbd, index: u32, size: u64, restart: u64) -> Result<(), String> {
        let started = Instant::now();
        log(&format!(
            "/dev/nbd{index}: connection {restart} died; reconnecting to {}",
            self.socket.display()
        ));
        let mut last_error = String::new();
        let mut tries = 0u64;
        while started.elapsed() < self.dead_conn_timeout {
            if STOP.load(Ordering::SeqCst) {
                return Err("stopped while reconnecting".into());
            }
            tries += 1;
            match self.negotiate() {
                Ok(again) if again.size != size => {
                    // Another disk behind the same socket: never attach it
                    // under the old device's data.
                    return Err(format!(
                        "the export's size changed from {size} to {} bytes",
                        again.size
                    ));
                }
                Ok(again) => match nbd.reconfigure(index, &again.socket) {
                    Ok(()) => {
                        log(&format!(
                            "/dev/nbd{index}: reconnected after {} ms ({tries} tries)",
                            started.elapsed().as_millis()
                        ));
                        return Ok(());
                    }
                    // ENOSPC: no dead connection (an event for a link
                    // already replaced, or a lost event that was not ours).
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(()),
                    Err(e) => last_error = format!("netlink reconfigure: {e}"),
                },
                Err(e) => last_error = e,
            }
            std::thread::sleep(RETRY_INTERVAL);
        }
        Err(format!(
            "no new connection within the dead-connection timeout ({} s, {tries} tries; last: {last_error})",
            self.dead_conn_timeout.as_secs()
        ))
    }
}
