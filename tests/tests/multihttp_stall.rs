//! Failover inside the consumers' budgets when the server in use hangs
//! (SIGSTOP: connections stay open, nothing answers), with the plugin's
//! default timeouts: xapi gives a redo-log write 2 s before it declares
//! the device dead, so every write must complete within that while
//! another server can serve. And a hung server that is the only one able
//! to serve must be waited for, not answered with EIO.
//!
//! Run: `cargo test --release -p integration-tests --test multihttp_stall -- --nocapture`

use std::fs;

use harness::hanging_disk::{HangingDisk, ResumeOnDrop};
use harness::nbd_scripts::STOP_FOR_SURE;
use harness::netns::Netns;
use harness::{artifact, nbdsh, pattern_file, DiskServer, Nbdkit, TempDir};

const MIB: usize = 1 << 20;
/// xapi's redo-log budget per write (`redo_log_max_block_time_writedelta`).
const WRITE_BUDGET_S: f64 = 2.0;

/// An nbdsh script: `writes` 4 KiB verified writes in a loop, timing each;
/// before write `hang_at` it runs the Python statement `hang` (the server
/// in use stops answering), and `unhang` at the end, even on failure.
/// Prints `max <seconds>` and `ok`.
fn hang_during_writes(hang: &str, unhang: &str, writes: usize, hang_at: usize) -> String {
    format!(
        "import os, signal, subprocess, time\n\
         {STOP_FOR_SURE}\
         worst = 0.0\n\
         try:\n\
         \x20   for i in range({writes}):\n\
         \x20       if i == {hang_at}:\n\
         \x20           {hang}\n\
         \x20       data = bytes([i % 251 + 1]) * 4096\n\
         \x20       t = time.monotonic()\n\
         \x20       h.pwrite(data, (i % 64) * 4096)\n\
         \x20       worst = max(worst, time.monotonic() - t)\n\
         \x20       assert h.pread(4096, (i % 64) * 4096) == data, i\n\
         finally:\n\
         \x20   {unhang}\n\
         print('max', worst)\n\
         print('ok')"
    )
}

/// [`hang_during_writes`] with a SIGSTOP of `victim`, SIGCONT at the end.
fn stop_during_writes(victim: i32, writes: usize, stop_at: usize) -> String {
    hang_during_writes(
        &format!("stop_for_sure({victim})"),
        &format!("os.kill({victim}, signal.SIGCONT)"),
        writes,
        stop_at,
    )
}

/// The budget held across the hang, and the stall watch (not the I/O
/// timeout) is what moved.
fn assert_left_within_budget(output: &str, nbdkit: &Nbdkit, hang: &str) {
    assert!(output.contains("ok"), "{output}");
    let worst = worst_pause(output);
    println!("longest write across the {hang}: {worst:.3} s");
    let log = nbdkit.proc.output.snapshot().join("\n");
    assert!(
        worst < WRITE_BUDGET_S,
        "a write took {worst:.3} s across the {hang} (budget {WRITE_BUDGET_S} s):\n{log}"
    );
    assert!(
        log.contains("can serve the disk") && log.contains("switched from"),
        "the stall watch did not switch:\n{log}"
    );
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
    assert_left_within_budget(&output, &nbdkit, "SIGSTOP");
}

/// A blackholed host: every packet to and from the server in use is
/// dropped (nftables in a network namespace of the test's own), so its
/// TCP connections neither answer nor break, as when a host's link goes
/// down. The stall watch must leave it within the budget, with nothing
/// learnt from a reset or a refused connect.
#[test]
fn a_blackholed_server_in_use_is_left_within_the_redo_log_budget() {
    let netns = Netns::new("stall");
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", MIB, 73);
    // Fixed ports: the namespace is the test's own.
    let ports = [30101u16, 30102];
    let _servers = ports.map(|port| netns.disk_server(&disk, port));
    let urls: Vec<String> = ports
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    let urls_param = format!("urls={}", urls.join(","));
    let nbdkit = Nbdkit::try_start_wrapped(
        &netns.wrapper(),
        &[],
        &artifact("libmultihttp.so"),
        &[&urls_param, "device-size=1M"],
    )
    .unwrap_or_else(|p| panic!("nbdkit did not start: {:?}", p.output.snapshot()));
    nbdsh(&nbdkit.uri(), "h.pread(512, 0)");
    let active = nbdkit.multihttp_active_port().expect("a server in use");
    let table = "hnd_blackhole";
    let rules = dir.path().join("blackhole.nft");
    // Input on lo sees both directions: requests to the port, replies
    // from it. Established connections are dropped too (no conntrack).
    fs::write(
        &rules,
        format!(
            "table inet {table} {{\n  chain input {{\n    \
             type filter hook input priority raw; policy accept;\n    \
             tcp dport {active} drop\n    tcp sport {active} drop\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let in_netns = |args: &[&str]| {
        let words: Vec<String> = netns
            .wrapper()
            .iter()
            .chain(args)
            .map(|w| format!("{w:?}"))
            .collect();
        format!("subprocess.run([{}], check=True)", words.join(", "))
    };
    let rules = rules.display().to_string();
    let output = nbdsh(
        &nbdkit.uri(),
        &hang_during_writes(
            &in_netns(&["nft", "-f", &rules]),
            &in_netns(&["nft", "delete", "table", "inet", table]),
            40,
            10,
        ),
    );
    assert_left_within_budget(&output, &nbdkit, "blackhole");
}

/// A disk that stops answering under the server in use (a FUSE disk
/// whose daemon is stopped: the server's writes and fdatasync wait in the
/// kernel, the server process and its connections are fine). Each server
/// has its own copy of the disk, so what the hung one writes when its disk
/// comes back lands on its copy only (on a pool, DRBD's fence keeps it off
/// the others).
#[test]
fn a_server_whose_disk_stops_answering_is_left_within_the_redo_log_budget() {
    let dir = TempDir::new().unwrap();
    let disks: Vec<HangingDisk> = ["a", "b"]
        .iter()
        .map(|copy| HangingDisk::over(&pattern_file(dir.path(), &format!("{copy}.img"), MIB, 74)))
        .collect();
    let servers: Vec<DiskServer> = disks
        .iter()
        .map(|disk| DiskServer::start(&disk.file, &[]))
        .collect();
    // Dropped first: the servers then stop without waiting on a disk.
    let _resume = ResumeOnDrop(&disks);
    let urls: Vec<String> = servers.iter().map(DiskServer::url).collect();
    let nbdkit = Nbdkit::multihttp(&urls, &["device-size=1M"]);
    nbdsh(&nbdkit.uri(), "h.pread(512, 0)");
    let active = nbdkit.multihttp_active_port().expect("a server in use");
    let hung = servers.iter().position(|s| s.port == active).unwrap();
    let output = nbdsh(
        &nbdkit.uri(),
        &stop_during_writes(disks[hung].daemon_pid(), 40, 10),
    );
    assert_left_within_budget(&output, &nbdkit, "hung disk");
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
             {STOP_FOR_SURE}\
             pid = {pid}\n\
             stop_for_sure(pid)\n\
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
