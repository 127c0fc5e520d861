//! End-to-end tests of `scripts/nbd-http-server` on this machine: flags,
//! nbdkit start-up and readiness, clean-up on every way out, signals.
//!
//! This kernel has no nbd driver, so the attach step itself is proven in a
//! VM (`tests/vm.rs`). Here the attached life cycle (device order, lock,
//! retry on the next device, SIGTERM, nbdkit death) runs against a stand-in
//! `nbd-client` placed first on PATH: the one mock in this file, because no
//! real nbd device can exist here. It refuses to "attach" unless the socket
//! answers a real NBD handshake (nbdinfo), and keeps the kernel's sysfs
//! markers (`/sys/block/nbdX/pid`) in a temp dir the wrapper is pointed at.
//! nbdkit and its plugins are real.
//!
//! Run: `cargo test --release -p integration-tests --test wrapper`

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{run, wait_until, workspace_root, Proc, TempDir};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The stand-in nbd-client (see the module comment). Logs its arguments
/// one call per line; `-d` removes the connected marker.
const FAKE_NBD_CLIENT: &str = r#"#!/usr/bin/env bash
set -euo pipefail
echo "$*" >>"$FAKE_NBD_LOG"
if [[ $1 == -d ]]; then
    rm -f "$HND_SYSFS_BLOCK/${2##*/}/pid"
    exit 0
fi
[[ $1 == -unix ]] || { echo "fake nbd-client: unexpected call $*" >&2; exit 2; }
sock=$2 dev=$3 name=${3##*/}
[[ " ${FAKE_NBD_FAIL:-} " != *" $name "* ]] || { echo "fake nbd-client: $name refuses" >&2; exit 1; }
nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null || { echo "fake nbd-client: $sock does not answer" >&2; exit 1; }
# Like an nbd-client that cannot tell a device is being taken: connecting
# takes a moment, and two callers racing for one device both "succeed".
# Only the wrapper's lock keeps them apart.
sleep 0.3
echo $$ >"$HND_SYSFS_BLOCK/$name/pid"
"#;

/// A sandbox for one or more wrappers: fake /dev and /sys/block trees,
/// run dir, lock file, the stand-in nbd-client.
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    /// `devices`: nbd device names to create (e.g. `["nbd0", "nbd10"]`).
    fn new(devices: &[&str]) -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let sandbox = Sandbox { dir };
        for sub in ["dev", "sys", "run", "bin"] {
            fs::create_dir_all(sandbox.path(sub)).expect("create sandbox dir");
        }
        for name in devices {
            fs::write(sandbox.path("dev").join(name), b"").expect("fake device node");
            let queue = sandbox.path("sys").join(name).join("queue");
            fs::create_dir_all(&queue).expect("fake sysfs queue");
            fs::write(queue.join("scheduler"), "[mq-deadline] none\n").expect("fake scheduler");
        }
        let client = sandbox.path("bin").join("nbd-client");
        fs::write(&client, FAKE_NBD_CLIENT).expect("write fake nbd-client");
        fs::set_permissions(&client, fs::Permissions::from_mode(0o755)).expect("chmod");
        sandbox
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.path("run").join(format!("{name}.socket"))
    }

    fn pidfile(&self, name: &str) -> PathBuf {
        self.path("run").join(format!("nbd-{name}.pid"))
    }

    /// The stand-in's call log.
    fn client_calls(&self) -> String {
        fs::read_to_string(self.path("nbd-client.log")).unwrap_or_default()
    }

    /// The wrapper for volume `name` with `args` after the common flags,
    /// pointed at this sandbox. `fake_client`: put the stand-in first on
    /// PATH (else the real nbd-client is used).
    fn wrapper(&self, name: &str, args: &[&str], fake_client: bool) -> Command {
        let mut cmd = Command::new(workspace_root().join("scripts/nbd-http-server"));
        cmd.arg("--socket-path")
            .arg(self.socket(name))
            .args(["--nbd-name", name])
            .args(args)
            .env("HND_RUN_DIR", self.path("run"))
            .env("HND_DEV_DIR", self.path("dev"))
            .env("HND_SYSFS_BLOCK", self.path("sys"))
            .env("HND_LOCK_FILE", self.path("nbd.lock"))
            .env("FAKE_NBD_LOG", self.path("nbd-client.log"));
        let path = std::env::var("PATH").unwrap_or_default();
        if fake_client {
            cmd.env(
                "PATH",
                format!("{}:/usr/bin:/usr/sbin:{path}", self.path("bin").display()),
            );
        } else {
            cmd.env("PATH", format!("/usr/bin:/usr/sbin:/sbin:{path}"));
        }
        cmd
    }

    /// Asserts the wrapper of `name` left nothing behind: nbdkit (whose
    /// pid the wrapper logged via its pidfile) gone, socket and pidfile removed.
    fn assert_cleaned_up(&self, name: &str, nbdkit_pid: Option<i32>) {
        assert!(!self.socket(name).exists(), "socket left behind");
        assert!(!self.pidfile(name).exists(), "pidfile left behind");
        if let Some(pid) = nbdkit_pid {
            // SAFETY: signal 0 only checks whether the pid exists.
            let alive = wait_until(
                Duration::from_secs(5),
                || unsafe { libc::kill(pid, 0) } != 0,
            );
            assert!(alive, "nbdkit (pid {pid}) still running");
        }
    }
}

/// Memory plugin: the backend when the test is about the wrapper itself.
const MEMORY: &[&str] = &["--plugin", "memory", "size=1M", "-v"];

fn nbdkit_pid(sandbox: &Sandbox, name: &str) -> i32 {
    let pidfile = sandbox.pidfile(name);
    let mut pid = None;
    wait_until(ATTACH_TIMEOUT, || {
        pid = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap_or_else(|| panic!("no nbdkit pidfile at {}", pidfile.display()))
}

fn attached_line(dev: &Path) -> String {
    format!("NBD `{}` is now attached.", dev.display())
}

/// Waits for the attached line and returns the device it names.
fn wait_attached(wrapper: &Proc) -> String {
    let ok = wrapper.output.wait_for("is now attached.", ATTACH_TIMEOUT);
    assert!(
        ok,
        "wrapper never attached:\n{}",
        wrapper.output.snapshot().join("\n")
    );
    let line = wrapper
        .output
        .snapshot()
        .into_iter()
        .find(|l| l.contains("is now attached."))
        .expect("line seen above");
    let device = line
        .strip_prefix("NBD `")
        .and_then(|rest| rest.strip_suffix("` is now attached."))
        .unwrap_or_else(|| panic!("attached line not exactly as SM parses it: {line:?}"));
    device.to_owned()
}

fn group_signal(proc: &Proc, signal: i32) {
    // SAFETY: negative pid = the wrapper's own process group, as SM does.
    unsafe { libc::kill(-proc.pid(), signal) };
}

// ------------------------------------------------------------------ flags

#[test]
fn bad_flags_print_usage_and_fail() {
    let sandbox = Sandbox::new(&[]);
    let cases: &[&[&str]] = &[
        &["--bogus"],
        &["--urls"],
        &["--urls", "http://127.0.0.1:1", "--device-size", "12x"],
        &["--urls", "http://127.0.0.1:1", "stray"],
        &["--urls", "http://127.0.0.1:1", "--nbd-timeout", "0"],
        &["--plugin", "memory", "--urls", "http://127.0.0.1:1"],
        &[], // neither --urls nor --plugin
    ];
    for args in cases {
        let out = run(sandbox.wrapper("vol", args, true), EXIT_TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("Usage:"), "{args:?}: no usage in {stderr}");
    }
    // Missing --socket-path / --nbd-name, and a name unfit for a file name.
    let script = workspace_root().join("scripts/nbd-http-server");
    for args in [
        vec!["--nbd-name", "v", "--urls", "http://127.0.0.1:1"],
        vec![
            "--socket-path",
            "/tmp/x.sock",
            "--urls",
            "http://127.0.0.1:1",
        ],
        vec![
            "--socket-path",
            "/tmp/x.sock",
            "--nbd-name",
            "../etc",
            "--urls",
            "u",
        ],
    ] {
        let mut cmd = Command::new(&script);
        cmd.args(&args);
        let out = run(cmd, EXIT_TIMEOUT);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    assert!(
        sandbox.client_calls().is_empty(),
        "nothing may run on bad flags"
    );
    let mut help = Command::new(&script);
    help.arg("--help");
    let out = run(help, EXIT_TIMEOUT);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--device-size"));
}

// ------------------------------------------------- start-up and clean-up

#[test]
fn no_nbd_device_fails_clearly_and_cleans_up() {
    // Real nbd-client, no devices, and this kernel cannot load nbd.
    let sandbox = Sandbox::new(&[]);
    let mut wrapper = Proc::spawn("wrapper", sandbox.wrapper("vol", MEMORY, false));
    let pid = nbdkit_pid(&sandbox, "vol");
    let status = wrapper.wait_timeout(EXIT_TIMEOUT).expect("wrapper exits");
    let output = wrapper.output.snapshot().join("\n");
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("nbdkit answers on"),
        "readiness not reached: {output}"
    );
    assert!(
        output.contains("[vol] error: no "),
        "unclear failure: {output}"
    );
    assert!(
        output.contains("nbd kernel module"),
        "unclear failure: {output}"
    );
    assert!(!output.contains("is now attached"), "{output}");
    sandbox.assert_cleaned_up("vol", Some(pid));
}

#[test]
fn nbdkit_refusing_to_start_fails_the_wrapper() {
    let sandbox = Sandbox::new(&["nbd0"]);
    let args = ["--plugin", "memory", "size=not-a-size"];
    let mut wrapper = Proc::spawn("wrapper", sandbox.wrapper("vol", &args, true));
    let status = wrapper.wait_timeout(EXIT_TIMEOUT).expect("wrapper exits");
    let output = wrapper.output.snapshot().join("\n");
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("nbdkit exited during start-up"), "{output}");
    // nbdkit's own reason is shown, with the volume prefix.
    assert!(output.contains("[vol] nbdkit: "), "{output}");
    assert!(sandbox.client_calls().is_empty(), "attached without nbdkit");
    sandbox.assert_cleaned_up("vol", None);
}

#[test]
fn refuses_to_take_over_a_live_socket() {
    let sandbox = Sandbox::new(&["nbd0"]);
    let mut first = Proc::spawn("first", sandbox.wrapper("vol", MEMORY, true));
    wait_attached(&first);
    let out = run(sandbox.wrapper("vol", MEMORY, true), EXIT_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("served by a running instance"), "{stderr}");
    // The running instance keeps its socket and pidfile.
    assert!(sandbox.socket("vol").exists() && sandbox.pidfile("vol").exists());
    assert!(first.exited().is_none(), "first wrapper died");
    group_signal(&first, libc::SIGTERM);
    assert_eq!(
        first.wait_timeout(EXIT_TIMEOUT).and_then(|s| s.code()),
        Some(0)
    );
}

// ------------------------------------------ attached life (stand-in client)

#[test]
fn attaches_first_free_device_in_numeric_order_and_stops_on_sigterm() {
    // nbd0 busy, nbd1 refuses: nbd2 must win over nbd10 (numeric, not
    // lexical order); nbd2p1 is a partition, never a candidate.
    let sandbox = Sandbox::new(&["nbd10", "nbd2", "nbd1", "nbd0", "nbd2p1"]);
    fs::write(sandbox.path("sys").join("nbd0").join("pid"), "1").expect("mark nbd0 busy");
    let mut cmd = sandbox.wrapper("vol", MEMORY, true);
    cmd.env("FAKE_NBD_FAIL", "nbd1")
        .args(["--nbd-timeout", "17"]);
    let mut wrapper = Proc::spawn("wrapper", cmd);
    let device = wait_attached(&wrapper);
    let nbd2 = sandbox.path("dev").join("nbd2");
    assert_eq!(device, nbd2.display().to_string());
    assert!(wrapper.output.contains(&attached_line(&nbd2)));
    let sock = sandbox.socket("vol");
    let calls = sandbox.client_calls();
    let expected = format!(
        "-unix {} {} -b 512 -t 17\n-unix {} {} -b 512 -t 17\n",
        sock.display(),
        sandbox.path("dev").join("nbd1").display(),
        sock.display(),
        nbd2.display()
    );
    assert_eq!(calls, expected, "device order or nbd-client arguments");
    let scheduler = fs::read_to_string(sandbox.path("sys/nbd2/queue/scheduler")).expect("read");
    assert_eq!(scheduler.trim(), "none");
    let pid = nbdkit_pid(&sandbox, "vol");

    // SM stops it with SIGTERM to the whole process group.
    group_signal(&wrapper, libc::SIGTERM);
    let status = wrapper
        .wait_timeout(EXIT_TIMEOUT)
        .expect("wrapper exits on SIGTERM");
    let output = wrapper.output.snapshot().join("\n");
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        sandbox
            .client_calls()
            .ends_with(&format!("-d {}\n", nbd2.display())),
        "not detached: {}",
        sandbox.client_calls()
    );
    assert!(!sandbox.path("sys/nbd2/pid").exists());
    assert!(output.contains("[vol] got SIGTERM, stopping"), "{output}");
    sandbox.assert_cleaned_up("vol", Some(pid));
}

#[test]
fn sigint_to_the_wrapper_alone_also_stops_it_cleanly() {
    let sandbox = Sandbox::new(&["nbd0"]);
    let mut wrapper = Proc::spawn("wrapper", sandbox.wrapper("vol", MEMORY, true));
    wait_attached(&wrapper);
    let pid = nbdkit_pid(&sandbox, "vol");
    wrapper.signal(libc::SIGINT);
    let status = wrapper
        .wait_timeout(EXIT_TIMEOUT)
        .expect("wrapper exits on SIGINT");
    assert_eq!(status.code(), Some(0));
    assert!(sandbox.client_calls().contains("-d "), "not detached");
    sandbox.assert_cleaned_up("vol", Some(pid));
}

#[test]
fn nbdkit_dying_detaches_and_exits_non_zero() {
    let sandbox = Sandbox::new(&["nbd0"]);
    let mut wrapper = Proc::spawn("wrapper", sandbox.wrapper("vol", MEMORY, true));
    wait_attached(&wrapper);
    let pid = nbdkit_pid(&sandbox, "vol");
    // SAFETY: kill(2) on the nbdkit our wrapper started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let status = wrapper
        .wait_timeout(EXIT_TIMEOUT)
        .expect("wrapper notices nbdkit death");
    let output = wrapper.output.snapshot().join("\n");
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("[vol] nbdkit exited on its own"),
        "{output}"
    );
    assert!(sandbox.client_calls().contains("-d "), "not detached");
    assert!(!sandbox.path("sys/nbd0/pid").exists());
    sandbox.assert_cleaned_up("vol", Some(pid));
}

#[test]
fn wrappers_started_together_get_different_devices() {
    let sandbox = Sandbox::new(&["nbd0", "nbd1", "nbd2", "nbd3"]);
    let names = ["a", "b", "c"];
    let mut wrappers: Vec<Proc> = names
        .iter()
        .map(|n| Proc::spawn(n, sandbox.wrapper(n, MEMORY, true)))
        .collect();
    let mut devices: Vec<String> = wrappers.iter().map(wait_attached).collect();
    devices.sort();
    devices.dedup();
    assert_eq!(
        devices.len(),
        names.len(),
        "two wrappers share a device: {devices:?}"
    );
    // The first free devices, in order: nothing skipped, nothing shared.
    let dev = |n: &str| sandbox.path("dev").join(n).display().to_string();
    assert_eq!(devices, vec![dev("nbd0"), dev("nbd1"), dev("nbd2")]);
    for wrapper in &mut wrappers {
        group_signal(wrapper, libc::SIGTERM);
        assert_eq!(
            wrapper.wait_timeout(EXIT_TIMEOUT).and_then(|s| s.code()),
            Some(0)
        );
    }
}
