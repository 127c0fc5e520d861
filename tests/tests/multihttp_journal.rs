//! The write-back journal (`writeback=true`): changes acknowledged but not
//! yet flushed are replayed on the next server after a failover, in order
//! and before that server serves anything else, so the flush succeeds.
//!
//! Each server here serves its **own copy** of the disk. On a pool all
//! servers front one DRBD volume, and a write-back write the plugin left
//! behind in a crashed host's page cache is on no copy at all; here a
//! SIGKILLed server's page cache survives in its own file, but the file
//! the next server serves never got the write. So whatever the next
//! server's file holds after the flush came from the replay, and a test
//! without the journal (`journal-size=0`) would read the old bytes.
//!
//! Run: `cargo test --release -p integration-tests --test multihttp_journal -- --nocapture`

use std::fs;
use std::path::PathBuf;

use harness::nbd_scripts::STOP_FOR_SURE;
use harness::{nbdsh, pattern, pattern_file, DiskServer, Nbdkit, TempDir};

const MIB: usize = 1 << 20;
const SEED: u64 = 81;

/// Two servers, each on its own copy of the same 1 MiB disk, behind the
/// plugin with `writeback=true` and `extra` keys. Returns them with the
/// server in use first and its copy's path after it.
struct Pair {
    _dir: TempDir,
    nbdkit: Nbdkit,
    in_use: DiskServer,
    _other: DiskServer,
    other_disk: PathBuf,
}

impl Pair {
    fn start(extra: &[&str]) -> Pair {
        let dir = TempDir::new().unwrap();
        let disks = [
            pattern_file(dir.path(), "a.img", MIB, SEED),
            pattern_file(dir.path(), "b.img", MIB, SEED),
        ];
        let mut servers: Vec<DiskServer> =
            disks.iter().map(|d| DiskServer::start(d, &[])).collect();
        let urls: Vec<String> = servers.iter().map(DiskServer::url).collect();
        let mut keys = vec!["device-size=1M", "writeback=true"];
        keys.extend_from_slice(extra);
        let nbdkit = Nbdkit::multihttp(&urls, &keys);
        nbdsh(&nbdkit.uri(), "h.pread(512, 0)");
        let active = nbdkit.multihttp_active_port().expect("a server in use");
        let index = servers.iter().position(|s| s.port == active).unwrap();
        let in_use = servers.remove(index);
        let other = servers.remove(0);
        Pair {
            other_disk: disks[1 - index].clone(),
            _dir: dir,
            nbdkit,
            in_use,
            _other: other,
        }
    }

    fn log(&self) -> String {
        self.nbdkit.proc.output.snapshot().join("\n")
    }
}

/// `expected` with `bytes` put at `offset`.
fn put(expected: &mut [u8], offset: usize, bytes: &[u8]) {
    expected[offset..offset + bytes.len()].copy_from_slice(bytes);
}

#[test]
fn unflushed_changes_are_replayed_on_the_next_server_before_it_serves_anything() {
    let pair = Pair::start(&[]);
    let output = nbdsh(
        &pair.nbdkit.uri(),
        &format!(
            "import nbd, os, signal\n\
             h.pwrite(b'\\x01' * 4096, 0)\n\
             # A FUA write over the same bytes: replayed after the first,\n\
             # or the replay would put the older bytes back.\n\
             h.pwrite(b'\\x02' * 4096, 0, nbd.CMD_FLAG_FUA)\n\
             h.pwrite(b'\\x03' * 4096, 65536)\n\
             h.zero(8192, 131072)\n\
             os.kill({victim}, signal.SIGKILL)\n\
             # The first requests after the failover already see them.\n\
             assert h.pread(4096, 0) == b'\\x02' * 4096, 'FUA write not replayed last'\n\
             assert h.pread(4096, 65536) == b'\\x03' * 4096, 'write not replayed'\n\
             assert h.pread(8192, 131072) == bytes(8192), 'zero not replayed'\n\
             # A newer write over replayed bytes must stay.\n\
             h.pwrite(b'\\x05' * 4096, 65536)\n\
             h.flush()\n\
             print('flushed ok')",
            victim = pair.in_use.proc.pid()
        ),
    );
    assert!(output.contains("flushed ok"), "{output}\n{}", pair.log());
    let mut expected = pattern(MIB, SEED);
    put(&mut expected, 0, &[2; 4096]);
    put(&mut expected, 65536, &[5; 4096]);
    put(&mut expected, 131072, &[0; 8192]);
    assert!(
        fs::read(&pair.other_disk).unwrap() == expected,
        "the next server's disk does not hold the acknowledged changes"
    );
    let log = pair.log();
    assert!(
        log.contains("replayed 4 unflushed write-back change(s)"),
        "no replay logged:\n{log}"
    );
    assert!(!log.contains("flush cannot vouch"), "{log}");
}

#[test]
fn a_stopped_server_is_left_with_its_unflushed_changes_replayed_elsewhere() {
    let pair = Pair::start(&[]);
    // Default stall-timeout: the stall watch moves to the other server
    // and replays there; the write waiting on the stopped one is retried.
    let output = nbdsh(
        &pair.nbdkit.uri(),
        &format!(
            "import os, signal, time\n\
             {STOP_FOR_SURE}\
             pid = {victim}\n\
             h.pwrite(b'\\x0a' * 4096, 4096)\n\
             stop_for_sure(pid)\n\
             t = time.monotonic()\n\
             h.pwrite(b'\\x0b' * 4096, 12288)\n\
             print('write took', time.monotonic() - t)\n\
             h.flush()\n\
             # The fence: a stopped server that was left never resumes.\n\
             os.kill(pid, signal.SIGKILL)\n\
             os.kill(pid, signal.SIGCONT)\n\
             print('flushed ok')",
            victim = pair.in_use.proc.pid()
        ),
    );
    assert!(output.contains("flushed ok"), "{output}\n{}", pair.log());
    let took: f64 = output
        .lines()
        .find_map(|l| l.strip_prefix("write took "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(took < 2.0, "the write took {took:.3} s across the SIGSTOP");
    let mut expected = pattern(MIB, SEED);
    put(&mut expected, 4096, &[0x0a; 4096]);
    put(&mut expected, 12288, &[0x0b; 4096]);
    assert!(fs::read(&pair.other_disk).unwrap() == expected);
    assert!(
        pair.log().contains("replayed 1 unflushed"),
        "{}",
        pair.log()
    );
}

#[test]
fn a_journal_overflow_makes_the_flush_after_a_failover_fail_once_and_says_so() {
    // 64 KiB of journal, 128 KiB of unflushed writes.
    let pair = Pair::start(&["journal-size=64K"]);
    let output = nbdsh(
        &pair.nbdkit.uri(),
        &format!(
            "import errno, nbd, os, signal\n\
             for i in range(32):\n\
             \x20   h.pwrite(bytes([i + 1]) * 4096, i * 4096)\n\
             os.kill({victim}, signal.SIGKILL)\n\
             try:\n\
             \x20   h.flush()\n\
             \x20   print('first flush succeeded')\n\
             except nbd.Error as e:\n\
             \x20   print('first flush', errno.errorcode.get(e.errno, e.errno))\n\
             h.flush()\n\
             print('second flush ok')",
            victim = pair.in_use.proc.pid()
        ),
    );
    assert!(output.contains("first flush EIO"), "{output}");
    assert!(output.contains("second flush ok"), "{output}");
    let log = pair.log();
    assert!(log.contains("write-back journal is full"), "{log}");
    assert!(
        log.contains("more than journal-size (65536 bytes)"),
        "{log}"
    );
    assert!(
        !log.contains("multihttp: replayed"),
        "an incomplete journal was replayed:\n{log}"
    );
}
