//! The multihttp plugin's HTTP connections: how many it opens to a server
//! and what it does when a server closes a kept-alive one. Real nbdkit,
//! real http-disk-server and fio; the closing server is a scripted peer
//! (no real server closes a connection exactly as a request arrives on
//! purpose, the race this covers).
//!
//! Run: `cargo test --release -p integration-tests --test multihttp_connections`

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use harness::scripted_peer::{Script, ScriptedPeer};
use harness::{artifact, debian_tool, nbdsh, pattern_file, DiskServer, Nbdkit, Proc, TempDir};

const MIB: usize = 1 << 20;

fn plugin() -> PathBuf {
    artifact("libmultihttp.so")
}

/// TCP states in /proc/net/tcp.
const ESTABLISHED: &str = "01";
const TIME_WAIT: &str = "06";

/// Client-side sockets (remote port `port`) in `state`, from the kernel's
/// table: what the plugin really has open, whatever it believes.
fn sockets_to(port: u16, state: &str) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(table).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && fields.get(3) == Some(&state)
        })
        .count()
}

#[test]
fn concurrent_requests_share_at_most_pool_size_connections() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 16 * MIB, 3);
    let server = DiskServer::start(&disk, &[]);
    let before = sockets_to(server.port, TIME_WAIT);
    let mut nbdkit = Nbdkit::start(
        &[],
        &plugin(),
        &[
            &format!("urls={}", server.url()),
            "device-size=16M",
            "pool-size=2",
        ],
    );
    // 2 NBD connections x queue depth 16: up to 32 requests in flight in
    // nbdkit, which must queue for the 2 HTTP connections.
    let mut fio = debian_tool("fio");
    fio.args([
        "--name=load",
        "--ioengine=nbd",
        &format!("--uri={}", nbdkit.uri()),
        "--rw=randrw",
        "--bs=4k",
        "--iodepth=16",
        "--numjobs=2",
        "--time_based",
        "--runtime=2s",
        "--output-format=terse",
    ]);
    let mut load = Proc::spawn("fio", fio);
    let mut most_open = 0;
    let started = Instant::now();
    while load.exited().is_none() && started.elapsed() < Duration::from_secs(30) {
        most_open = most_open.max(sockets_to(server.port, ESTABLISHED));
        thread::sleep(Duration::from_millis(20));
    }
    let status = load.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "fio failed: {}",
        load.output_when_closed()
    );
    assert!(most_open >= 1, "no connection to the server was ever seen");
    assert!(
        most_open <= 2,
        "{most_open} connections open with pool-size=2"
    );
    // Closing nbdkit closes its connections: each one the plugin ever
    // opened is now in TIME_WAIT on its side. One per request (what an
    // idle-only pool bound gives under this load) would be thousands.
    nbdkit.proc.kill();
    let opened = sockets_to(server.port, TIME_WAIT) - before;
    assert!(opened <= 3, "{opened} connections opened for one fio run");
}

/// The most connections to `port` seen while `load` runs (for at most
/// 30 s); the load must then succeed.
fn most_connections_while(mut load: Proc, port: u16) -> usize {
    let mut most_open = 0;
    let started = Instant::now();
    while load.exited().is_none() && started.elapsed() < Duration::from_secs(30) {
        most_open = most_open.max(sockets_to(port, ESTABLISHED));
        thread::sleep(Duration::from_millis(10));
    }
    let status = load.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "load failed: {}",
        load.output_when_closed()
    );
    most_open
}

/// 64 reads in flight at a time for 2 s on exactly one NBD connection
/// (one libnbd handle; fio may open a second connection to read the size
/// while its first is still closing).
fn one_client_load(nbdkit: &Nbdkit) -> Proc {
    let mut nbdsh = debian_tool("nbdsh");
    nbdsh.args([
        "-u",
        &nbdkit.uri(),
        "-c",
        "import time\n\
         end = time.monotonic() + 2\n\
         n = 0\n\
         while time.monotonic() < end:\n\
         \x20   for i in range(64):\n\
         \x20       h.aio_pread(nbd.Buffer(4096), (n * 7919 % 4096) * 4096,\n\
         \x20                   completion=lambda err: 1)\n\
         \x20       n += 1\n\
         \x20   while h.aio_in_flight() > 0:\n\
         \x20       h.poll(-1)\n\
         print('reads', n)",
    ]);
    Proc::spawn("nbdsh", nbdsh)
}

/// fio 4 KiB random reads at queue depth 16 on 4 NBD connections, 2 s.
fn four_clients_load(nbdkit: &Nbdkit) -> Proc {
    let mut fio = debian_tool("fio");
    fio.args([
        "--name=load",
        "--ioengine=nbd",
        &format!("--uri={}", nbdkit.uri()),
        "--rw=randread",
        "--bs=4k",
        "--iodepth=16",
        "--numjobs=4",
        "--time_based",
        "--runtime=2s",
        "--output-format=terse",
    ]);
    Proc::spawn("fio", fio)
}

/// The default pool is 16 connections per NBD client connection (nbdkit's
/// 16 request threads each), at most 64: more clients get more HTTP
/// connections instead of queueing for 16, and the extra ones close when
/// the clients leave.
#[test]
fn the_default_pool_grows_with_the_nbd_clients_and_shrinks_after() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 16 * MIB, 4);
    let server = DiskServer::start(&disk, &[]);
    let nbdkit = Nbdkit::start(
        &[],
        &plugin(),
        &[&format!("urls={}", server.url()), "device-size=16M"],
    );
    let one_client = most_connections_while(one_client_load(&nbdkit), server.port);
    assert!(
        (1..=16).contains(&one_client),
        "{one_client} connections for one NBD client with 64 reads in flight"
    );
    // 4 clients x 16 requests in flight: beyond one client's 16.
    let four_clients = most_connections_while(four_clients_load(&nbdkit), server.port);
    assert!(
        (17..=64).contains(&four_clients),
        "{four_clients} connections for four NBD clients (16 each, at most 64)"
    );
    // The clients are gone: back to one client's bound, at once.
    let started = Instant::now();
    while sockets_to(server.port, ESTABLISHED) > 16 && started.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(20));
    }
    let left = sockets_to(server.port, ESTABLISHED);
    assert!(left <= 16, "{left} connections kept after the clients left");
}

#[test]
fn a_kept_alive_connection_closed_by_the_server_is_retried_not_failed_over() {
    let peer = ScriptedPeer::start(Script::OneReplyPerConnection { size: MIB as u64 });
    let nbdkit = Nbdkit::start(
        &[],
        &plugin(),
        &[&format!("urls={}", peer.url()), "device-size=1M"],
    );
    // Every read arrives on the connection the previous request left
    // idle, which the peer closes instead of answering.
    let result = nbdsh(
        &nbdkit.uri(),
        "for i in range(5):\n\
         \x20   assert h.pread(4096, i * 8192) == b'\\x5a' * 4096\n\
         print('reads ok')",
    );
    assert!(result.contains("reads ok"), "{result}");
    let log = nbdkit.proc.output.snapshot().join("\n");
    assert!(
        !log.contains("leaving"),
        "a stale connection caused a failover:\n{log}"
    );
    // The probe plus one new connection per read: the path was taken.
    let connections = peer.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        connections >= 6,
        "only {connections} connections: nothing was retried"
    );
}
