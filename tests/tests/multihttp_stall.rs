//! Failover inside the consumers' budgets when the server in use hangs
//! (SIGSTOP: connections stay open, nothing answers), with the plugin's
//! default timeouts: xapi gives a redo-log write 2 s before it declares
//! the device dead, so every write must complete within that while
//! another server can serve. And a hung server that is the only one able
//! to serve must be waited for, not answered with EIO.
//!
//! Run: `cargo test --release -p integration-tests --test multihttp_stall -- --nocapture`

use harness::{nbdsh, pattern_file, DiskServer, Nbdkit, TempDir};

const MIB: usize = 1 << 20;
/// xapi's redo-log budget per write (`redo_log_max_block_time_writedelta`).
const WRITE_BUDGET_S: f64 = 2.0;

/// An nbdsh script: `writes` 4 KiB verified writes in a loop, timing each;
/// after write `stop_at` it SIGSTOPs `victim` (the server in use), and
/// SIGCONTs it at the end. Prints `max <seconds>` and `ok`.
fn stop_during_writes(victim: i32, writes: usize, stop_at: usize) -> String {
    format!(
        "import os, signal, time\n\
         worst = 0.0\n\
         try:\n\
         \x20   for i in range({writes}):\n\
         \x20       if i == {stop_at}:\n\
         \x20           os.kill({victim}, signal.SIGSTOP)\n\
         \x20       data = bytes([i % 251 + 1]) * 4096\n\
         \x20       t = time.monotonic()\n\
         \x20       h.pwrite(data, (i % 64) * 4096)\n\
         \x20       worst = max(worst, time.monotonic() - t)\n\
         \x20       assert h.pread(4096, (i % 64) * 4096) == data, i\n\
         finally:\n\
         \x20   os.kill({victim}, signal.SIGCONT)\n\
         print('max', worst)\n\
         print('ok')"
    )
}

fn worst_pause(output: &str) -> f64 {
    output
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no timing in {output}"))
}

#[test]
fn a_stopped_server_in_use_is_left_within_the_redo_log_budget() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", MIB, 71);
    let servers = [DiskServer::start(&disk, &[]), DiskServer::start(&disk, &[])];
    let urls: Vec<String> = servers.iter().map(DiskServer::url).collect();
    // Default timeouts: io-timeout is 30 s, so only the stall watch can
    // meet the budget.
    let nbdkit = Nbdkit::multihttp(&urls, &["device-size=1M"]);
    nbdsh(&nbdkit.uri(), "h.pread(512, 0)");
    let active = nbdkit.multihttp_active_port().expect("a server in use");
    let victim = servers.iter().find(|s| s.port == active).unwrap();
    let output = nbdsh(
        &nbdkit.uri(),
        &stop_during_writes(victim.proc.pid(), 40, 10),
    );
    assert!(output.contains("ok"), "{output}");
    let worst = worst_pause(&output);
    println!("longest write across the SIGSTOP: {worst:.3} s");
    assert!(
        worst < WRITE_BUDGET_S,
        "a write took {worst:.3} s across the SIGSTOP (budget {WRITE_BUDGET_S} s):\n{}",
        nbdkit.proc.output.snapshot().join("\n")
    );
    let log = nbdkit.proc.output.snapshot().join("\n");
    assert!(
        log.contains("can serve the disk") && log.contains("switched from"),
        "the stall watch did not switch:\n{log}"
    );
}

#[test]
fn a_stopped_server_that_is_the_only_one_is_waited_for_without_error() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", MIB, 72);
    let only = DiskServer::start(&disk, &[]);
    let nbdkit = Nbdkit::multihttp(&[only.url()], &["device-size=1M"]);
    // Stopped for 3 s, six times the stall timeout: the request waits,
    // the probes find nobody else, and it completes once the server
    // continues.
    let output = nbdsh(
        &nbdkit.uri(),
        &format!(
            "import os, signal, threading, time\n\
             pid = {pid}\n\
             os.kill(pid, signal.SIGSTOP)\n\
             threading.Timer(3.0, lambda: os.kill(pid, signal.SIGCONT)).start()\n\
             t = time.monotonic()\n\
             h.pwrite(b'\\x5c' * 4096, 8192)\n\
             print('waited', time.monotonic() - t)\n\
             assert h.pread(4096, 8192) == b'\\x5c' * 4096\n\
             print('ok')",
            pid = only.proc.pid()
        ),
    );
    assert!(output.contains("ok"), "{output}");
    let waited: f64 = output
        .lines()
        .find_map(|l| l.strip_prefix("waited "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(
        waited >= 2.5,
        "the write returned after {waited:.3} s, before the server continued"
    );
    let log = nbdkit.proc.output.snapshot().join("\n");
    assert!(!log.contains("leaving"), "the only server was left:\n{log}");
}
