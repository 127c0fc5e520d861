//! Reconnect cycles: one nbdkit per plugin (multihttp on a real
//! http-disk-server, sharded on a temp dir, s3 on a real Garage node) takes
//! 10,000 NBD connections from a real client (libnbd's Python binding, one
//! process looping), and its memory, threads and file descriptors must
//! come back to what they were after a warm-up. The xapi NBD server died
//! after ~500 reconnects (EMFILE in accept, 230 MB RSS): each connection
//! left something behind. Here the per-connection plugin callbacks (open,
//! get_size, can_*, close) run ~8,750 times, pread ~3,750 and pwrite
//! ~2,500 times, and connections also end in the ways servers get wrong:
//! a hang-up without NBD_CMD_DISC, with a read or a write in flight, or in
//! the middle of the handshake (the other 1,250, before open). Then the
//! export must still read back exactly as modelled.
//!
//! Run: `cargo test --release -p integration-tests --test nbd_reconnect -- --nocapture`
//! (`--nocapture` shows the figures: baseline and final RSS, fds, threads,
//! cycles per second).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::garage::Garage;
use harness::{
    artifact, debian_tool, pattern_file, process_usage, run_ok, DiskServer, Nbdkit, ProcessUsage,
    TempDir,
};

/// Connections made after the warm-up, per plugin.
const CYCLES: u32 = 10_000;

/// Connections made before the baseline is taken, so that what nbdkit and
/// the plugin allocate once (malloc arenas of the per-connection threads,
/// the chunk files' descriptor cache, the plugin's HTTP connection pool)
/// is already in it.
const WARM_UP: u32 = 1_000;

/// The cycles run in this many client processes, so RSS is also sampled
/// along the way (the figures show whether it plateaus or climbs).
const BATCHES: u32 = 5;

/// How much nbdkit's RSS may grow over the 10,000 connections. Measured
/// here without a leak: +44 to +96 KiB (sharded, multihttp), +400 to +860
/// KiB (s3, most of it in the first batch), then flat: glibc's per-thread
/// malloc arenas settling, not a per-connection cost. 2 MiB over 10,000
/// connections catches any leak of more than ~210 bytes per connection
/// (~1.7 KiB on a path only 1 cycle in 8 takes); a 1 KiB leak in open
/// shows as +9 MB, and the xapi server leaked ~460 KB per connection.
const RSS_TOLERANCE_KIB: u64 = 2048;

/// How many more file descriptors nbdkit may hold after the cycles than
/// at the baseline: multihttp (and s3 with its default pool) keeps up to
/// `pool-size` (16) idle keep-alive sockets, and how many are open depends on how many requests
/// happened to overlap (an abandoned request still running when the next
/// connection's starts), not on how many connections came and went. A
/// per-connection leak would show as hundreds or thousands.
const FD_TOLERANCE: usize = 16;

/// Export size: 32 chunks of 64 KiB for the chunk stores.
const DISK_SIZE: usize = 2 << 20;

/// The client: one Python process looping over cycles `FIRST..FIRST+COUNT`
/// with libnbd (the real client library of nbdsh, nbdcopy, nbdinfo), or a
/// raw socket for the hang-up mid-handshake that libnbd cannot do. Cycle
/// kinds rotate; writes stamp a 4 KiB block with the cycle number and the
/// model (a file: the expected export) follows them; reads check it.
const CYCLES_SCRIPT: &str = r#"
import nbd, socket, sys, time

SOCK, FIRST, COUNT, MODEL = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
BLOCK = 4096
model = bytearray(open(MODEL, 'rb').read())
blocks = len(model) // BLOCK

def block_of(i):
    return (i * 7919) % blocks * BLOCK

def stamp(i):
    return i.to_bytes(8, 'little') * (BLOCK // 8)

def connected():
    h = nbd.NBD()
    h.connect_unix(SOCK)
    return h

def write_and_read_back(i):
    h = connected()
    off = block_of(i)
    h.pwrite(stamp(i), off)
    model[off:off + BLOCK] = stamp(i)
    assert h.pread(BLOCK, off) == model[off:off + BLOCK], f'cycle {i}: block at {off} reads wrong'
    h.shutdown()

def read_checked(i):
    h = connected()
    off = block_of(i * 31)
    assert h.pread(BLOCK, off) == model[off:off + BLOCK], f'cycle {i}: block at {off} reads wrong'
    h.shutdown()

def vanish_after_handshake(i):
    h = connected()
    del h  # nbd_close: the socket is closed without NBD_CMD_DISC

def vanish_with_read_in_flight(i):
    h = connected()
    h.aio_pread(nbd.Buffer(BLOCK), block_of(i))
    del h

def vanish_with_write_in_flight(i):
    # Rewrites the bytes the block already holds: whether or not the write
    # lands before nbdkit sees the hang-up, the model stays right.
    h = connected()
    off = block_of(i)
    h.aio_pwrite(nbd.Buffer.from_bytearray(model[off:off + BLOCK]), off)
    del h

def vanish_mid_handshake(i):
    s = socket.socket(socket.AF_UNIX)
    s.connect(SOCK)
    s.recv(18)  # NBDMAGIC, IHAVEOPT, handshake flags; then hang up
    s.close()

def handshake_only(i):
    h = connected()
    h.shutdown()

KINDS = [write_and_read_back, read_checked, vanish_after_handshake,
         vanish_with_read_in_flight, vanish_with_write_in_flight,
         vanish_mid_handshake, handshake_only, handshake_only]

started = time.monotonic()
for i in range(FIRST, FIRST + COUNT):
    KINDS[i % len(KINDS)](i)
seconds = time.monotonic() - started
open(MODEL, 'wb').write(model)
print(f'seconds {seconds:.3f}')
"#;

/// nbdkit's usage once the connections just closed are gone: nbdkit
/// tears a connection down (joins its worker threads, calls close) after
/// the client has left, so wait until threads and fds are back to `at_most`
/// (fds within [`FD_TOLERANCE`]) and stop changing, then sample once more
/// for RSS.
fn settled(pid: i32, at_most: Option<ProcessUsage>) -> ProcessUsage {
    let mut last = process_usage(pid);
    harness::wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(200));
        let now = process_usage(pid);
        let stable = now.threads == last.threads && now.fds == last.fds;
        let back =
            at_most.is_none_or(|b| now.threads <= b.threads && now.fds <= b.fds + FD_TOLERANCE);
        last = now;
        stable && back
    });
    process_usage(pid)
}

/// Runs cycles `first..first + count` of [`CYCLES_SCRIPT`]; returns the
/// seconds the client spent in them.
fn run_cycles(nbdkit: &Nbdkit, first: u32, count: u32, model: &Path) -> f64 {
    let mut python = debian_tool("python3");
    python
        .arg("-c")
        .arg(CYCLES_SCRIPT)
        .arg(&nbdkit.socket)
        .arg(first.to_string())
        .arg(count.to_string())
        .arg(model);
    let out = run_ok(python, Duration::from_secs(300));
    out.trim()
        .strip_prefix("seconds ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected client output: {out}"))
}

/// The whole export, read by nbdcopy into a file in `dir`.
fn export_contents(nbdkit: &Nbdkit, dir: &Path) -> Vec<u8> {
    let copy = dir.join("export-copy.img");
    let mut nbdcopy = debian_tool("nbdcopy");
    nbdcopy.arg(nbdkit.uri()).arg(&copy);
    run_ok(nbdcopy, Duration::from_secs(120));
    fs::read(&copy).expect("read the copy")
}

/// Fills a fresh export with a pattern (so every chunk exists before the
/// warm-up) and returns the model file holding the same bytes.
fn fill_with_pattern(nbdkit: &Nbdkit, dir: &Path) -> PathBuf {
    let model = pattern_file(dir, "model.img", DISK_SIZE, 7);
    let mut nbdcopy = debian_tool("nbdcopy");
    nbdcopy.arg(&model).arg(nbdkit.uri());
    run_ok(nbdcopy, Duration::from_secs(120));
    model
}

/// Threads and fds back to the baseline (checked after every batch, so a
/// leak fails the test early).
fn assert_nothing_left_behind(plugin: &str, baseline: ProcessUsage, now: ProcessUsage) {
    assert!(
        now.threads <= baseline.threads,
        "{plugin}: threads left behind: {baseline:?} -> {now:?}"
    );
    assert!(
        now.fds <= baseline.fds + FD_TOLERANCE,
        "{plugin}: file descriptors left behind: {baseline:?} -> {now:?}"
    );
}

/// Warm-up, baseline, 10,000 cycles in batches, then the checks: threads
/// and fds back to the baseline, RSS within [`RSS_TOLERANCE_KIB`], and
/// the export equal to the model. Prints the figures.
fn check_reconnects(plugin: &str, nbdkit: &Nbdkit, model: &Path, dir: &Path) {
    let pid = nbdkit.proc.pid();
    let before_warm_up = settled(pid, None);
    run_cycles(nbdkit, 0, WARM_UP, model);
    let baseline = settled(pid, None);
    let mut seconds = 0.0;
    let mut rss_along = Vec::new();
    let per_batch = CYCLES / BATCHES;
    for batch in 0..BATCHES {
        seconds += run_cycles(nbdkit, WARM_UP + batch * per_batch, per_batch, model);
        let now = settled(pid, Some(baseline));
        assert_nothing_left_behind(plugin, baseline, now);
        rss_along.push(now.rss_kib);
    }
    let after = settled(pid, Some(baseline));
    println!(
        "{plugin}: {CYCLES} cycles at {:.0}/s; before warm-up {before_warm_up:?}; \
         baseline {baseline:?}; after {after:?} (RSS {:+} KiB); RSS along the way {rss_along:?} KiB",
        f64::from(CYCLES) / seconds,
        after.rss_kib as i64 - baseline.rss_kib as i64,
    );
    assert_nothing_left_behind(plugin, baseline, after);
    assert!(
        after.rss_kib <= baseline.rss_kib + RSS_TOLERANCE_KIB,
        "{plugin}: RSS grew by more than {RSS_TOLERANCE_KIB} KiB over {CYCLES} connections: \
         {baseline:?} -> {after:?}, along the way {rss_along:?}"
    );
    let expected = fs::read(model).expect("read the model");
    assert!(
        export_contents(nbdkit, dir) == expected,
        "{plugin}: the export differs from the model after the cycles"
    );
}

/// nbdkit options for these tests: one worker thread per connection.
/// nbdkit 1.32 (Debian bookworm) has a race of its own: when a client hangs
/// up while one worker thread of its connection still sends a reply and
/// another has already seen the hang-up and closed the socket, nbdkit
/// aborts (`connections.c:402: raw_send_socket: Assertion 'sock >= 0'
/// failed`; seen once in CI in the sharded run, the plugin not involved;
/// newer nbdkit has no such assertion). These cycles hang up with requests
/// in flight on purpose, so with several threads per connection they hit
/// it now and then. With one thread the same hang-ups are made and our
/// plugins' per-connection clean-up is measured; their parallel paths are
/// covered by the other tests.
const NBDKIT_OPTIONS: &[&str] = &["--threads", "1"];

#[test]
fn multihttp_returns_to_baseline_after_10000_connections() {
    let dir = TempDir::new().unwrap();
    let backing = pattern_file(dir.path(), "backing.img", DISK_SIZE, 7);
    let model = dir.path().join("model.img");
    fs::copy(&backing, &model).unwrap();
    let server = DiskServer::start(&backing, &[]);
    let urls = format!("urls={}", server.url());
    let nbdkit = Nbdkit::start(NBDKIT_OPTIONS, &artifact("libmultihttp.so"), &[&urls]);
    check_reconnects("multihttp", &nbdkit, &model, dir.path());
    assert!(
        fs::read(&backing).unwrap() == fs::read(&model).unwrap(),
        "the server's backing file differs from the model"
    );
}

#[test]
fn sharded_returns_to_baseline_after_10000_connections() {
    let dir = TempDir::new().unwrap();
    let chunks = format!("dir={}", dir.path().join("disk").display());
    let size = format!("size={DISK_SIZE}");
    let nbdkit = Nbdkit::start(
        NBDKIT_OPTIONS,
        &artifact("libsharded.so"),
        &[&chunks, &size, "chunk-size=64K"],
    );
    let model = fill_with_pattern(&nbdkit, dir.path());
    check_reconnects("sharded", &nbdkit, &model, dir.path());
}

#[test]
fn s3_returns_to_baseline_after_10000_connections() {
    let garage = Garage::start();
    let dir = TempDir::new().unwrap();
    let mut params = garage.params("reconnect/");
    params.extend([format!("size={DISK_SIZE}"), "chunk-size=64K".to_owned()]);
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let nbdkit = Nbdkit::start(NBDKIT_OPTIONS, &artifact("libs3.so"), &params);
    let model = fill_with_pattern(&nbdkit, dir.path());
    check_reconnects("s3", &nbdkit, &model, dir.path());
}
