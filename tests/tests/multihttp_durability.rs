//! When multihttp acknowledges a write, is it durable? Write-through (the
//! default) must make the server sync every write, trim and zero before
//! the NBD reply; `writeback=true` must not, and its flush must.
//!
//! A power cut cannot be played here (the VM test does that: tests/vm.rs),
//! so these tests watch the real server's system calls (strace, as
//! http_disk_server.rs's `writes_are_durable_before_the_reply_unless_write_back`
//! does for the server alone): after each NBD write returns, the server
//! has called fdatasync for it.
//!
//! Run: `cargo test --release -p integration-tests --test multihttp_durability`

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::{artifact, free_port, nbdsh, pattern_file, Nbdkit, Proc, TempDir};

const MIB: usize = 1 << 20;

/// http-disk-server under `strace -e fdatasync,fsync`, on 127.0.0.1.
struct TracedServer {
    _proc: Proc,
    port: u16,
    trace: std::path::PathBuf,
}

impl TracedServer {
    fn start(disk: &Path, dir: &Path) -> TracedServer {
        let trace = dir.join("strace.out");
        let port = free_port();
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-qq", "-e", "trace=fdatasync,fsync", "-o"])
            .arg(&trace)
            .arg(artifact("http-disk-server"))
            .arg("--disk")
            .arg(disk)
            .args(["--ip", "127.0.0.1", "--port", &port.to_string()]);
        let proc = Proc::spawn("strace-http-disk-server", cmd);
        assert!(
            proc.output
                .wait_for("Server ready!", Duration::from_secs(20)),
            "server not ready: {:?}",
            proc.output.snapshot()
        );
        TracedServer {
            _proc: proc,
            port,
            trace,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// An nbdsh script that, after each change, prints how many syncs the
/// server has made by then (read from `trace`), so every count is taken
/// right after that change's NBD reply and before the next request.
fn counting_script(trace: &Path, changes: &[&str]) -> String {
    let mut script = format!(
        "def syncs():\n\
         \x20   with open({trace:?}) as f:\n\
         \x20       return sum(1 for l in f if ('fdatasync(' in l or 'fsync(' in l) and '= 0' in l)\n\
         print('syncs', syncs())\n",
        trace = trace.display().to_string()
    );
    for change in changes {
        script.push_str(change);
        script.push_str("\nprint('syncs', syncs())\n");
    }
    script
}

fn sync_counts(output: &str) -> Vec<usize> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("syncs "))
        .map(|n| n.trim().parse().expect("a count"))
        .collect()
}

const CHANGES: [&str; 5] = [
    "h.pwrite(b'\\x11' * 4096, 0)",
    "h.pwrite(b'\\x22' * 65536, 8192)",
    "h.trim(65536, 131072)",
    "h.zero(4096, 262144)",
    "h.pwrite(b'\\x33' * 512, 300000)",
];

#[test]
fn by_default_every_write_trim_and_zero_is_synced_before_its_reply() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", MIB, 91);
    let server = TracedServer::start(&disk, dir.path());
    let nbdkit = Nbdkit::multihttp(&[server.url()], &["device-size=1M"]);
    let output = nbdsh(&nbdkit.uri(), &counting_script(&server.trace, &CHANGES));
    let counts = sync_counts(&output);
    assert_eq!(counts.len(), CHANGES.len() + 1, "{output}");
    for (i, pair) in counts.windows(2).enumerate() {
        assert!(
            pair[1] > pair[0],
            "{} was acknowledged before the server synced it (syncs {counts:?})",
            CHANGES[i]
        );
    }
    // Nothing is left to flush, and the flush says so by succeeding.
    let flushed = nbdsh(&nbdkit.uri(), "h.flush()\nprint('flushed')");
    assert!(flushed.contains("flushed"), "{flushed}");
}

#[test]
fn with_writeback_changes_are_synced_by_the_flush_not_before() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", MIB, 92);
    let server = TracedServer::start(&disk, dir.path());
    let nbdkit = Nbdkit::multihttp(&[server.url()], &["device-size=1M", "writeback=true"]);
    let mut changes = CHANGES.to_vec();
    changes.push("h.flush()");
    let output = nbdsh(&nbdkit.uri(), &counting_script(&server.trace, &changes));
    let counts = sync_counts(&output);
    assert_eq!(counts.len(), changes.len() + 1, "{output}");
    let before_flush = counts[CHANGES.len()];
    assert_eq!(
        before_flush, counts[0],
        "write-back changes must not sync before the flush (syncs {counts:?})"
    );
    assert!(
        counts[CHANGES.len() + 1] > before_flush,
        "the flush must sync (syncs {counts:?})"
    );
    // FUA still means durable before the reply in write-back mode.
    let fua = counting_script(
        &server.trace,
        &["h.pwrite(b'\\x44' * 4096, 0, nbd.CMD_FLAG_FUA)"],
    );
    let counts_fua = sync_counts(&nbdsh(&nbdkit.uri(), &fua));
    assert!(
        counts_fua[1] > counts_fua[0],
        "FUA write not synced: {counts_fua:?}"
    );
}
