//! http-disk-server: serves one block device or regular file over HTTP for
//! the multihttp nbdkit plugin (and the old C plugin). See README.md,
//! section "http-disk-server", for the protocol and every flag.
//!
//! `main` only wires the modules: command line, logging, listening socket,
//! signals, getting hold of the disk (retrying while DRBD says no), the
//! accept loop, and the orderly stop.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

use http_disk_server::live::Live;
use http_disk_server::policy::{Policy, PolicySources};
use http_disk_server::state::{Config, State};
use http_disk_server::{budget, cli, disk, drbd, metrics_listener, server, signals, tls};

/// Longest wait for in-flight requests after SIGTERM before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    // Before anything else (argument parsing included), so that a SIGHUP
    // sent as soon as the process exists (systemd allows `reload` right
    // after exec) never meets the default action, which would kill it. A
    // stop or reload asked for meanwhile waits in the pipe for the accept
    // loop.
    let signal_fd = signals::install();
    let args = cli::Args::parse();
    init_logging(&args.disk, args.verbose);
    let result = signal_fd
        .map_err(|e| format!("cannot install signal handlers: {e}"))
        .and_then(|fd| run(args, fd));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// env_logger on stderr, every line prefixed with `[<disk name>]` (the
/// basename of the resolved disk path, e.g. `drbd1000`), so merged syslog
/// lines of several servers can be told apart. `-v` adds per-request lines.
fn init_logging(disk: &Path, verbose: bool) {
    let resolved = std::fs::canonicalize(disk).unwrap_or_else(|_| disk.to_path_buf());
    let name = resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| resolved.display().to_string());
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    env_logger::Builder::new()
        .filter_level(level)
        // rustls' debug lines (cipher suite, ALPN) would add three lines
        // per HTTPS connection to -v; its warnings still show.
        .filter_module("rustls", log::LevelFilter::Info)
        // The HTTP layer is ours; nothing else logs usefully at debug.
        .format(move |buf, record| writeln!(buf, "[{name}] {}: {}", record.level(), record.args()))
        .target(env_logger::Target::Stderr)
        .init();
}

/// Binds the listening socket; with no `--ip`, all interfaces (IPv6 and
/// IPv4 on one dual-stack socket, or IPv4 only where IPv6 is disabled).
fn bind(ip: Option<IpAddr>, port: u16) -> Result<TcpListener, String> {
    let explain = |addr: SocketAddr, e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("cannot listen on {addr}: port {port} is already in use (another http-disk-server?)")
        } else {
            format!("cannot listen on {addr}: {e}")
        }
    };
    match ip {
        Some(ip) => {
            let addr = SocketAddr::new(ip, port);
            TcpListener::bind(addr).map_err(|e| explain(addr, e))
        }
        None => {
            let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
            match bind_dual_stack(port) {
                Ok(listener) => Ok(listener),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(explain(v6, e)),
                Err(_) => {
                    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
                    TcpListener::bind(v4).map_err(|e| explain(v4, e))
                }
            }
        }
    }
}

/// A listening socket on `[::]:port` that also accepts IPv4 clients, set
/// explicitly (`IPV6_V6ONLY` = 0) rather than left to the
/// `net.ipv6.bindv6only` sysctl. std cannot set that option before bind.
fn bind_dual_stack(port: u16) -> std::io::Result<TcpListener> {
    use std::os::unix::io::FromRawFd;
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    // SAFETY: plain socket(2); the fd is owned by the TcpListener below,
    // or closed on every error path.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh socket we own; from here the TcpListener owns
    // it and closes it on drop, also when a later step fails.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let set = |level, name, value: libc::c_int| {
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        check(unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
    };
    set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    // Like std's bind: a restarted server must not wait for TIME_WAITs.
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    // SAFETY: an all-zero sockaddr_in6 is valid ([::], port 0); we set
    // the family and port, and pass its exact size.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    addr.sin6_port = port.to_be();
    check(unsafe {
        libc::bind(
            fd,
            &addr as *const libc::sockaddr_in6 as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    })?;
    // SAFETY: listen(2) on our bound socket.
    check(unsafe { libc::listen(fd, 128) })?;
    Ok(listener)
}

/// `Server ready!` on stdout, on its own line, flushed: SM waits for it.
fn announce_ready() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "Server ready!");
    let _ = out.flush();
}

/// File descriptors needed besides the two of each connection (the disk,
/// the listener, logging, DRBD status pipes...).
const SPARE_FDS: u64 = 64;

/// Raises the soft open-file limit to what `workers` connections need (two
/// descriptors each), up to the hard limit. The usual soft limit of 1024
/// would otherwise cut the server off near 500 connections, with accepts
/// failing (EMFILE) while workers are free. If the hard limit is too low
/// too, says so: the operator raises it (systemd `LimitNOFILE=`).
fn raise_open_file_limit(workers: u64) {
    let needed = workers.saturating_mul(2).saturating_add(SPARE_FDS);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur >= needed {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: needed.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        log::warn!(
            "cannot raise the open file limit from {}: {}",
            limit.rlim_cur,
            std::io::Error::last_os_error()
        );
        return;
    }
    if raised.rlim_cur < needed {
        log::warn!(
            "the open file limit ({}) allows about {} connections, fewer than --workers {workers}: \
             raise it (systemd LimitNOFILE=) or lower --workers",
            raised.rlim_cur,
            raised.rlim_cur.saturating_sub(SPARE_FDS) / 2
        );
    }
}

/// `signal_fd`: the read end of the signal self-pipe (`signals::install`).
fn run(args: cli::Args, signal_fd: std::os::unix::io::RawFd) -> Result<(), String> {
    raise_open_file_limit(args.workers);
    let policy_sources = args.policy_sources();
    let policy = policy_sources.load()?;
    log::info!("access policy: {}", policy.summary());
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::ServerTls::load(cert, key)?),
        _ => None,
    };
    let listener = bind(args.ip, args.port)?;
    let metrics_listener = args
        .metrics_listen
        .map(metrics_listener::bind)
        .transpose()?;
    let state = new_state(&args, policy_sources, policy, tls);
    let local = listener
        .local_addr()
        .map_err(|e| format!("listening socket: {e}"))?;
    let path = args.disk.clone();
    if let Some(metrics) = metrics_listener {
        log::info!(
            "serving /metrics and /status on {} (no --allow or --auth-file there)",
            metrics
                .local_addr()
                .map_err(|e| format!("metrics socket: {e}"))?
        );
        metrics_listener::spawn(metrics, Arc::clone(&state), path.clone())?;
    }

    // First attempt in line, so the common case says "ready" only once it
    // really serves; a fatal error (not a disk, no permission) exits here.
    let waiting = match drbd::try_open(&path, args.readonly) {
        Ok(disk) => {
            hold(&state, disk);
            None
        }
        Err(Err(e)) => return Err(format!("cannot open {}: {e}", path.display())),
        Err(Ok(wait)) => {
            log::warn!("{}: {wait}; answering 503 until then", path.display());
            Some(wait)
        }
    };
    log_listening(&args, local);
    // Also printed while waiting for the device: SM gives up after 10 s,
    // and clients fail over on our 503 meanwhile.
    announce_ready();

    if let Some(wait) = waiting {
        open_disk_later(Arc::clone(&state), path, args.readonly, wait)?;
    }

    server::accept_loop(&listener, signal_fd, &state)
        .map_err(|e| format!("accept loop failed: {e}"))?;
    drop(listener);
    finish(&state)
}

/// What every connection will share, from the command line.
fn new_state(
    args: &cli::Args,
    policy_sources: PolicySources,
    policy: Policy,
    tls: Option<tls::ServerTls>,
) -> Arc<State> {
    let workers = usize::try_from(args.workers).unwrap_or(usize::MAX);
    Arc::new(State {
        config: Config {
            readonly: args.readonly,
            policy_sources,
            max_request_size: args.max_request_size,
            idle_timeout: Duration::from_secs(args.idle_timeout),
            workers,
            max_connections_per_peer: usize::try_from(args.max_connections_per_peer)
                .unwrap_or(usize::MAX),
        },
        disk: OnceLock::new(),
        policy: Live::new(policy),
        active: AtomicUsize::new(0),
        peers: Default::default(),
        bodies: budget::Budget::new(body_budget(args.max_request_size)),
        idle: Default::default(),
        metrics: Default::default(),
        tls,
    })
}

/// The start-up log lines saying what is served where, and how.
fn log_listening(args: &cli::Args, local: SocketAddr) {
    log::info!(
        "listening on {local} for {} ({}{})",
        args.disk.display(),
        if args.readonly {
            "read-only"
        } else {
            "read-write"
        },
        if args.allow.is_empty() {
            String::new()
        } else {
            let nets: Vec<String> = args.allow.iter().map(ToString::to_string).collect();
            format!(", allowed: {}", nets.join(" "))
        }
    );
    if let Some(cert) = &args.tls_cert {
        log::info!("HTTPS only, certificate {}", cert.display());
    }
}

/// The disk could not be held at start (`wait` says why): a thread keeps
/// trying, and holds it when it can, while requests get 503.
fn open_disk_later(
    state: Arc<State>,
    path: PathBuf,
    readonly: bool,
    wait: drbd::Wait,
) -> Result<(), String> {
    thread::Builder::new()
        .name("open-disk".into())
        .spawn(move || {
            match drbd::open_when_possible(&path, readonly, &signals::STOP, Some(wait)) {
                Ok(Some(disk)) => hold(&state, disk),
                Ok(None) => {}
                Err(e) => {
                    // Retrying cannot fix it; keep answering 503 so
                    // clients go elsewhere, and say why loudly.
                    log::error!("giving up on {}: {e}", path.display())
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the open-disk thread: {e}"))
}

/// After the accept loop: lets the requests in flight finish (for at most
/// [`SHUTDOWN_GRACE`]), then makes the disk durable.
fn finish(state: &State) -> Result<(), String> {
    log::info!("stopping: no new connections; finishing requests in flight");
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while state.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let left = state.active.load(Ordering::SeqCst);
    if left > 0 {
        log::warn!("{left} connection(s) still busy after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    if let Some(disk) = state.disk.get() {
        disk.sync()
            .map_err(|e| format!("final fdatasync of {} failed: {e}", disk.path().display()))?;
    }
    log::info!("stopped");
    Ok(())
}

/// Memory all write bodies together may hold: 8 of the largest, and at
/// least 256 MiB so the default (32 MiB) allows 8 full-size writes at once.
fn body_budget(max_request_size: u64) -> u64 {
    max_request_size
        .saturating_add(1)
        .saturating_mul(8)
        .max(256 << 20)
}

/// Records the open disk; from now on requests are served.
fn hold(state: &State, disk: disk::Disk) {
    log::info!(
        "holding {} ({} bytes, {})",
        disk.path().display(),
        disk.size(),
        if disk.is_block_device() {
            "block device"
        } else {
            "regular file"
        }
    );
    let _ = state.disk.set(disk);
}
