//! One writer at a time, for both chunk-store plugins, under real nbdkit
//! processes: sharded on a directory, s3 on a real Garage.
//!
//! - A second writer on the same disk is refused, naming the first; a
//!   read-only one is served.
//! - Takeover: writer A holds a connection and the lease, A is SIGSTOPped,
//!   B takes the lease (force=true, or once A's lease expired), writes its
//!   pattern everywhere and stops; A is continued and its client's next
//!   writes and flush all fail (EPERM: the plugin's EROFS). The disk then
//!   equals B's pattern byte for byte.
//! - A writer killed with SIGKILL leaves a lease its successor on the same
//!   host takes at once (its process is gone), without force.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use harness::garage::Garage;
use harness::{artifact, debian_tool, nbdsh, wait_stopped, Nbdkit};
use tempfile::TempDir;

const MIB: usize = 1 << 20;
/// Short, so expiry takes seconds: renewals every 0.5 s, a write checks
/// the lease when its confirmation is older than 0.75 s.
const LEASE_TIME: &str = "lease-time=3s";

/// A disk of one of the two backends.
enum Disk {
    Sharded(TempDir),
    S3(Box<Garage>),
}

impl Disk {
    fn sharded() -> Disk {
        Disk::Sharded(TempDir::new().unwrap())
    }

    fn s3() -> Disk {
        Disk::S3(Box::new(Garage::start()))
    }

    fn plugin(&self) -> PathBuf {
        artifact(match self {
            Disk::Sharded(_) => "libsharded.so",
            Disk::S3(_) => "libs3.so",
        })
    }

    /// The keys of the disk plus `extra`.
    fn params(&self, extra: &[&str]) -> Vec<String> {
        let mut params = match self {
            Disk::Sharded(dir) => vec![format!("dir={}", dir.path().join("disk").display())],
            Disk::S3(garage) => garage.params("vol/"),
        };
        params.extend(["size=1M", "chunk-size=64K", LEASE_TIME].map(String::from));
        params.extend(extra.iter().map(|s| s.to_string()));
        params
    }

    fn start(&self, options: &[&str], extra: &[&str]) -> Nbdkit {
        let params = self.params(extra);
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        Nbdkit::start(options, &self.plugin(), &params)
    }
}

/// Fills the whole disk with `byte` and flushes: `ok`, or the errno name.
fn fill(byte: u8) -> String {
    format!(
        "import errno, nbd\n\
         try:\n\
         \x20   for off in range(0, {MIB}, 65536):\n\
         \x20       h.pwrite(bytes([{byte}]) * 65536, off)\n\
         \x20   h.flush()\n\
         \x20   print('fill ok')\n\
         except nbd.Error as e:\n\
         \x20   print('fill', errno.errorcode.get(e.errno, e.errno))"
    )
}

/// Everything on the disk is `byte`.
fn assert_whole_disk_is(nbdkit: &Nbdkit, byte: u8) {
    let out = nbdsh(
        &nbdkit.uri(),
        &format!(
            "data = b''.join(h.pread(65536, o) for o in range(0, {MIB}, 65536))\n\
             print('same', data == bytes([{byte}]) * {MIB})\n\
             print('differ', sum(1 for o in range(0, {MIB}, 65536) if data[o:o + 65536] != bytes([{byte}]) * 65536))"
        ),
    );
    assert!(
        out.contains("same True"),
        "the disk is not all {byte:#x}: {out}"
    );
}

/// A writable connection to A kept open across SIGSTOP/SIGCONT: fills the
/// disk with 0xA1, says `ready`, then on a line from the test tries 16
/// writes and a flush and prints how each went.
struct HeldClient {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl HeldClient {
    fn start(nbdkit: &Nbdkit) -> HeldClient {
        let script = format!(
            "import errno, nbd, sys\n\
             for off in range(0, {MIB}, 65536):\n\
             \x20   h.pwrite(b'\\xa1' * 65536, off)\n\
             h.flush()\n\
             print('ready', flush=True)\n\
             sys.stdin.readline()\n\
             for i in range(16):\n\
             \x20   try:\n\
             \x20       h.pwrite(b'\\xa2' * 4096, i * 65536 + 1000)\n\
             \x20       print('write ok', flush=True)\n\
             \x20   except nbd.Error as e:\n\
             \x20       print('write', errno.errorcode.get(e.errno, e.errno), flush=True)\n\
             try:\n\
             \x20   h.flush()\n\
             \x20   print('flush ok', flush=True)\n\
             except nbd.Error as e:\n\
             \x20   print('flush', errno.errorcode.get(e.errno, e.errno), flush=True)\n\
             print('done', flush=True)\n"
        );
        let mut child = debian_tool("nbdsh")
            .args(["-u", &nbdkit.uri(), "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nbdsh runs");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        let client = HeldClient {
            child,
            stdin,
            lines,
        };
        assert_eq!(client.next_line(), "ready");
        client
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("a line from the held client within 60 s")
    }

    /// Lets the client write; returns what it printed until `done`.
    fn go(&mut self) -> Vec<String> {
        writeln!(self.stdin, "go").unwrap();
        self.stdin.flush().unwrap();
        let mut lines = Vec::new();
        for _ in 0..32 {
            let line = self.next_line();
            if line == "done" {
                return lines;
            }
            lines.push(line);
        }
        panic!("no 'done' from the held client: {lines:?}");
    }
}

impl Drop for HeldClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug)]
enum Takeover {
    Force,
    Expiry,
}

fn a_second_writer_is_refused_and_a_reader_served(disk: Disk) {
    let a = disk.start(&[], &[]);
    assert_eq!(nbdsh(&a.uri(), &fill(0x11)).trim(), "fill ok");
    let b = disk.start(&[], &[]);
    let refused = debian_tool("nbdsh")
        .args(["-u", &b.uri(), "-c", &fill(0x22)])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "B's writable connection was served"
    );
    b.proc
        .output
        .wait_for("is in use by host ", Duration::from_secs(10));
    let log = b.proc.output.snapshot().join("\n");
    assert!(
        log.contains("is in use by host ") && log.contains(&format!("pid {} ", a.proc.pid())),
        "B's refusal does not name A (pid {}): {log}",
        a.proc.pid()
    );
    assert!(log.contains("force=true"), "{log}");
    drop(b);
    let reader = disk.start(&["-r"], &[]);
    assert_whole_disk_is(&reader, 0x11);
    drop(reader);
    // A never noticed anything.
    assert_eq!(nbdsh(&a.uri(), &fill(0x33)).trim(), "fill ok");
}

fn a_stopped_writer_taken_over_writes_nothing_after(disk: Disk, how: Takeover) {
    let a = disk.start(&[], &[]);
    let mut client = HeldClient::start(&a);
    a.proc.signal(libc::SIGSTOP);
    assert!(
        wait_stopped(a.proc.pid(), Duration::from_secs(10)),
        "A did not stop"
    );

    let b = match how {
        Takeover::Force => disk.start(&[], &["force=true"]),
        Takeover::Expiry => {
            // Past A's expiry: 3 s lease, then B watches it a second.
            std::thread::sleep(Duration::from_millis(3500));
            disk.start(&[], &[])
        }
    };
    assert_eq!(
        nbdsh(&b.uri(), &fill(0xb7)).trim(),
        "fill ok",
        "B could not write ({how:?})"
    );
    let b_log = b.proc.output.snapshot().join("\n");
    drop(b);

    a.proc.signal(libc::SIGCONT);
    let results = client.go();
    assert_eq!(results.len(), 17, "{results:?}");
    for line in &results {
        assert!(
            line.ends_with(" EPERM"),
            "A went on writing after the takeover: {results:?}\nB: {b_log}"
        );
    }
    a.proc
        .output
        .wait_for("lease was taken over by host", Duration::from_secs(10));
    let a_log = a.proc.output.snapshot().join("\n");
    assert!(
        a_log.contains("lease was taken over by host"),
        "A does not say why: {a_log}"
    );
    drop(client);
    // A stays read-only: a new writable connection is refused.
    let again = debian_tool("nbdsh")
        .args(["-u", &a.uri(), "-c", &fill(0x44)])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&again.stdout);
    assert!(
        !again.status.success() || printed.contains("fill EPERM"),
        "{printed}"
    );
    drop(a);

    let reader = disk.start(&["-r"], &[]);
    assert_whole_disk_is(&reader, 0xb7);
}

fn a_killed_writers_lease_is_taken_at_once_on_its_host(disk: Disk) {
    let mut a = disk.start(&[], &[]);
    assert_eq!(nbdsh(&a.uri(), &fill(0x55)).trim(), "fill ok");
    a.proc.kill();
    // Without force, and well within the 3 s the lease still has.
    let b = disk.start(&[], &[]);
    assert_eq!(nbdsh(&b.uri(), &fill(0x66)).trim(), "fill ok");
    b.proc
        .output
        .wait_for("taking the lease of", Duration::from_secs(10));
    let log = b.proc.output.snapshot().join("\n");
    assert!(
        log.contains("lock was free") || log.contains("that process is gone"),
        "B did not take the lease as a dead owner's: {log}"
    );
}

#[test]
fn sharded_a_second_writer_is_refused_and_a_reader_served() {
    a_second_writer_is_refused_and_a_reader_served(Disk::sharded());
}

#[test]
fn sharded_a_stopped_writer_taken_over_by_force_writes_nothing_after() {
    a_stopped_writer_taken_over_writes_nothing_after(Disk::sharded(), Takeover::Force);
}

#[test]
fn sharded_a_stopped_writer_whose_lease_expired_writes_nothing_after() {
    a_stopped_writer_taken_over_writes_nothing_after(Disk::sharded(), Takeover::Expiry);
}

#[test]
fn sharded_a_killed_writers_lease_is_taken_at_once() {
    a_killed_writers_lease_is_taken_at_once_on_its_host(Disk::sharded());
}

#[test]
fn s3_a_second_writer_is_refused_and_a_reader_served() {
    a_second_writer_is_refused_and_a_reader_served(Disk::s3());
}

#[test]
fn s3_a_stopped_writer_taken_over_by_force_writes_nothing_after() {
    a_stopped_writer_taken_over_writes_nothing_after(Disk::s3(), Takeover::Force);
}

#[test]
fn s3_a_stopped_writer_whose_lease_expired_writes_nothing_after() {
    a_stopped_writer_taken_over_writes_nothing_after(Disk::s3(), Takeover::Expiry);
}

#[test]
fn s3_a_killed_writers_lease_is_taken_at_once() {
    a_killed_writers_lease_is_taken_at_once_on_its_host(Disk::s3());
}
