//! `supersede=true` (issue #20): when the kernel gives up on its NBD
//! connection after `--nbd-timeout` (every server stopped), it connects
//! again and resends; the old copy of a write, still inside the plugin,
//! must not land after the newer writes of the new connection. Shown
//! here with two nbdsh connections on a real nbdkit and a real
//! http-disk-server, SIGSTOPped so that the first connection's write is
//! on the wire, unanswered, when the second one writes.
//!
//!     cargo test --release -p integration-tests --test multihttp_supersede

use std::process::Command;
use std::time::Duration;

use harness::{debian_tool, nbdsh, pattern_file, wait_until, DiskServer, Nbdkit, Proc, TempDir};

const SIZE: usize = 1 << 20;

/// SIGCONT on drop: a failed assertion must not leave the server stopped
/// (its own drop kills it, which a stopped process also obeys, but the
/// test's output would then show a hang instead of the failure).
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        // SAFETY: a signal to a process this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// nbdsh writing one 4 KiB block of `byte` at 0 in the background;
/// prints `<name> ok`, or `<name> failed: <error>` followed by the outcome
/// of a read on the same connection (`<name> then read ok|failed: ...`).
fn background_write(uri: &str, name: &str, byte: u8) -> Proc {
    let script = format!(
        "try:\n    h.pwrite(bytes([{byte}]) * 4096, 0)\n    print('{name} ok', flush=True)\n\
         except nbd.Error as e:\n    print('{name} failed:', e, flush=True)\n\
         \x20   try:\n        h.pread(4096, 0)\n        print('{name} then read ok', flush=True)\n\
         \x20   except nbd.Error as e:\n        print('{name} then read failed:', e, flush=True)\n"
    );
    let mut cmd: Command = debian_tool("nbdsh");
    cmd.args(["-u", uri, "-c", &script]);
    Proc::spawn(name, cmd)
}

fn wait_for(proc: &mut Proc, needle: &str, within: Duration) -> String {
    wait_until(within, || proc.output.contains(needle));
    proc.output.snapshot().join("\n")
}

fn block_zero(uri: &str) -> Vec<u8> {
    let out = nbdsh(uri, "print(h.pread(4096, 0).hex())");
    (0..8192)
        .step_by(2)
        .map(|i| u8::from_str_radix(&out.trim()[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_newer_connection_that_writes_ends_the_older_ones_unanswered_write() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 1);
    let server = DiskServer::start(&disk, &[]);
    let nbdkit = Nbdkit::multihttp(&[server.url()], &["supersede=true"]);
    let uri = nbdkit.uri();
    nbdsh(&uri, "h.pwrite(b'\\x11' * 4096, 0)");
    let stopped = Stopped::new(server.proc.pid());
    // A's write reaches the stopped server's socket and waits there (the
    // stall watch finds no other server; io-timeout is 30 s).
    let mut old = background_write(&uri, "A", 0xaa);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        old.exited().is_none(),
        "A's write did not wait for the server"
    );
    // B, the kernel's new connection: its write takes over, and A's
    // request is abandoned before B's is sent.
    let mut new = background_write(&uri, "B", 0xbb);
    let a = wait_for(&mut old, "A then read", Duration::from_secs(10));
    assert!(
        a.contains("A failed:"),
        "A's write was not ended by B's: {a}"
    );
    let log = nbdkit.proc.output.snapshot().join("\n");
    assert!(
        log.contains("write of 4096 bytes at 0 not sent: a newer NBD connection took over"),
        "{log}"
    );
    // A later request of the superseded connection fails at once,
    // although the server is still stopped.
    assert!(a.contains("A then read failed:"), "{a}");
    drop(stopped);
    let b = wait_for(&mut new, "B ", Duration::from_secs(30));
    assert!(b.contains("B ok"), "B's write: {b}");
    // The server read A's request after its connection had closed: not
    // applied, so nothing older lands over B's write.
    assert!(
        wait_until(Duration::from_secs(10), || server
            .proc
            .output
            .contains("closed its connection before its write")),
        "the server did not drop A's abandoned write:\n{}",
        server.proc.output.snapshot().join("\n")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        block_zero(&uri).iter().all(|&b| b == 0xbb),
        "B's data was overwritten"
    );
    let log = nbdkit.proc.output.snapshot().join("\n");
    assert!(
        log.contains("supersedes the older ones (supersede=true): 1 of their requests abandoned"),
        "{log}"
    );
    assert!(
        !log.contains("leaving"),
        "the server was left for A's abandoned write: {log}"
    );
}

#[test]
fn without_supersede_both_connections_are_served() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 2);
    let server = DiskServer::start(&disk, &[]);
    let nbdkit = Nbdkit::multihttp(&[server.url()], &[]);
    let uri = nbdkit.uri();
    let stopped = Stopped::new(server.proc.pid());
    let mut old = background_write(&uri, "A", 0xaa);
    std::thread::sleep(Duration::from_secs(1));
    let mut new = background_write(&uri, "B", 0xbb);
    std::thread::sleep(Duration::from_secs(1));
    drop(stopped);
    assert!(wait_for(&mut old, "A ", Duration::from_secs(30)).contains("A ok"));
    assert!(wait_for(&mut new, "B ", Duration::from_secs(30)).contains("B ok"));
}
