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

/// The stand-in nbd-netlink, for the wrapper's restart logic (the real one
/// keeps a real device across restarts in the VM, `tests/vm.rs`): attaches
/// like the stand-in nbd-client (a real handshake first), says so as
/// nbd-netlink does, then stays until SIGTERM, which "disconnects".
const FAKE_NBD_NETLINK: &str = r#"#!/usr/bin/env bash
set -euo pipefail
echo "$*" >>"$FAKE_NETLINK_LOG"
[[ $1 == attach ]] || { echo "fake nbd-netlink: unexpected call $*" >&2; exit 2; }
shift
while (($#)); do
    case $1 in
    --socket) sock=$2 ;;
    --device) dev=$2 ;;
    esac
    shift 2
done
nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null || { echo "fake nbd-netlink: $sock does not answer" >&2; exit 1; }
marker=$HND_SYSFS_BLOCK/${dev##*/}/pid
echo $$ >"$marker"
trap 'rm -f "$marker"; exit 0' TERM INT
echo "attached $dev"
while :; do sleep 0.1; done
"#;

/// A sandbox for one or more wrappers: fake /dev and /sys/block trees,
/// run dir, lock file, the stand-ins for nbd-client (the default here,
/// `HND_ATTACH=nbd-client`) and nbd-netlink.
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
        for (name, script) in [
            ("nbd-client", FAKE_NBD_CLIENT),
            ("nbd-netlink", FAKE_NBD_NETLINK),
        ] {
            let path = sandbox.path("bin").join(name);
            fs::write(&path, script).expect("write a stand-in");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
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
        self.wrapper_at(
            &workspace_root().join("scripts/nbd-http-server"),
            name,
            args,
            fake_client,
        )
    }

    /// As [`Sandbox::wrapper`], running the wrapper file `script`.
    fn wrapper_at(&self, script: &Path, name: &str, args: &[&str], fake_client: bool) -> Command {
        let mut cmd = Command::new(script);
        cmd.arg("--socket-path")
            .arg(self.socket(name))
            .args(["--nbd-name", name])
            .args(args)
            .env("HND_RUN_DIR", self.path("run"))
            .env("HND_DEV_DIR", self.path("dev"))
            .env("HND_SYSFS_BLOCK", self.path("sys"))
            .env("HND_LOCK_FILE", self.path("nbd.lock"))
            .env("HND_ATTACH", "nbd-client")
            .env("FAKE_NBD_LOG", self.path("nbd-client.log"))
            .env("FAKE_NETLINK_LOG", self.path("nbd-netlink.log"));
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

/// The arguments nbdkit `pid` runs with, space-separated.
fn nbdkit_command_line(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
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

#[test]
fn losing_the_output_reader_does_not_break_the_stop() {
    // SM's log helper may go away; the wrapper's later log lines then hit
    // a closed pipe. They must be dropped, not kill it mid-clean-up.
    let sandbox = Sandbox::new(&["nbd0"]);
    let wrapper = sandbox.wrapper("vol", MEMORY, true);
    let mut shell = Command::new("bash");
    shell
        .arg("-c")
        .arg(r#""$@" 2>&1 | sed -n '/is now attached/{p;q}'"#)
        .arg("bash")
        .arg(wrapper.get_program())
        .args(wrapper.get_args());
    for (key, value) in wrapper.get_envs() {
        if let Some(value) = value {
            shell.env(key, value);
        }
    }
    let mut pipeline = Proc::spawn("pipeline", shell);
    wait_attached(&pipeline);
    let nbdkit = nbdkit_pid(&sandbox, "vol");
    // The reader (sed) quit after the attached line; the pipe is closed.
    let parent = |pid: i32| -> i32 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let after = stat.rsplit(')').next().expect("stat format");
        after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("ppid")
    };
    let wrapper_pid = parent(nbdkit);
    // SAFETY: SIGTERM to the wrapper process found above.
    unsafe { libc::kill(wrapper_pid, libc::SIGTERM) };
    assert!(
        pipeline.wait_timeout(EXIT_TIMEOUT).is_some(),
        "wrapper did not stop"
    );
    assert!(
        sandbox.client_calls().contains("-d "),
        "not detached: {}",
        sandbox.client_calls()
    );
    sandbox.assert_cleaned_up("vol", Some(nbdkit));
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
    assert!(
        !nbdkit_command_line(pid).contains("supersede="),
        "a plugin without supersede= was given it"
    );

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

/// SIGHUP is not a stop: the wrapper has nothing to reload, keeps nbdkit
/// and the device, and still stops cleanly on SIGTERM afterwards.
#[test]
fn sighup_to_the_wrapper_keeps_the_volume_attached() {
    let sandbox = Sandbox::new(&["nbd0"]);
    let mut wrapper = Proc::spawn("wrapper", sandbox.wrapper("vol", MEMORY, true));
    wait_attached(&wrapper);
    let pid = nbdkit_pid(&sandbox, "vol");
    for round in 1..=3 {
        wrapper.signal(libc::SIGHUP);
        assert!(
            wait_until(EXIT_TIMEOUT, || wrapper
                .output
                .count("got SIGHUP: nothing to reload, still serving")
                >= round),
            "{}",
            wrapper.output.snapshot().join("\n")
        );
    }
    assert_eq!(wrapper.wait_timeout(Duration::from_millis(500)), None);
    assert_eq!(nbdkit_pid(&sandbox, "vol"), pid);
    // SAFETY: signal 0 only checks that the nbdkit we started still exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "nbdkit is gone");
    assert!(sandbox.path("sys/nbd0/pid").exists(), "detached");
    assert!(!sandbox.client_calls().contains("-d "), "detached");
    group_signal(&wrapper, libc::SIGTERM);
    let status = wrapper
        .wait_timeout(EXIT_TIMEOUT)
        .expect("wrapper exits on SIGTERM");
    assert_eq!(status.code(), Some(0));
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

/// The pid of the `restarts`-th nbdkit the wrapper restarted, once it
/// logged it ready (the wrapper's own readiness check: killing an nbdkit
/// still starting would be a failed start, not a restart), checked
/// against the pidfile and a real handshake.
fn restarted_nbdkit_pid(sandbox: &Sandbox, name: &str, restarts: usize, wrapper: &Proc) -> i32 {
    let said = "nbdkit restarted (pid ";
    let back = wait_until(ATTACH_TIMEOUT, || wrapper.output.count(said) >= restarts);
    let output = wrapper.output.snapshot();
    assert!(back, "nbdkit was not restarted:\n{}", output.join("\n"));
    let pid: i32 = output
        .iter()
        .filter_map(|l| l.split_once(said))
        .nth(restarts - 1)
        .and_then(|(_, rest)| rest.split(')').next()?.parse().ok())
        .expect("a pid in the restart line");
    assert_eq!(nbdkit_pid(sandbox, name), pid, "pidfile");
    let uri = format!("nbd+unix:///?socket={}", sandbox.socket(name).display());
    let mut info = Command::new("nbdinfo");
    info.args(["--size", &uri]);
    assert!(
        run(info, Duration::from_secs(10)).status.success(),
        "the restarted nbdkit does not answer"
    );
    pid
}

/// With nbd-netlink keeping the device (the default), nbdkit dying is not
/// the end: the wrapper restarts it on the same socket, logs each
/// restart, keeps the device; SIGHUP restarts it too (an in-place upgrade
/// of the plugin); SIGTERM still detaches and exits 0.
#[test]
fn with_nbd_netlink_a_killed_nbdkit_is_restarted_and_the_device_kept() {
    let sandbox = Sandbox::new(&["nbd0"]);
    let mut cmd = sandbox.wrapper("vol", MEMORY, true);
    cmd.env("HND_ATTACH", "netlink");
    let mut wrapper = Proc::spawn("wrapper", cmd);
    wait_attached(&wrapper);
    let attach = fs::read_to_string(sandbox.path("nbd-netlink.log")).unwrap_or_default();
    let socket = sandbox.socket("vol").display().to_string();
    let dev = sandbox.path("dev/nbd0").display().to_string();
    assert_eq!(
        attach.trim(),
        format!("attach --socket {socket} --export vol --device {dev} --timeout 10 --dead-conn-timeout 60"),
        "nbd-netlink arguments"
    );
    let mut pid = nbdkit_pid(&sandbox, "vol");
    for restart in 1..=3 {
        // SAFETY: kill(2) on the nbdkit our wrapper started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        pid = restarted_nbdkit_pid(&sandbox, "vol", restart, &wrapper);
        let said = format!("restarting it (restart {restart}), {dev} stays attached");
        assert!(
            wrapper.output.contains(&said),
            "{}",
            wrapper.output.snapshot().join("\n")
        );
    }
    wrapper.signal(libc::SIGHUP);
    pid = restarted_nbdkit_pid(&sandbox, "vol", 4, &wrapper);
    assert!(wrapper.output.contains("got SIGHUP: restarting nbdkit"));
    assert!(sandbox.path("sys/nbd0/pid").exists(), "detached");
    assert_eq!(wrapper.wait_timeout(Duration::from_millis(300)), None);
    group_signal(&wrapper, libc::SIGTERM);
    let status = wrapper
        .wait_timeout(EXIT_TIMEOUT)
        .expect("wrapper exits on SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        wrapper.output.snapshot().join("\n")
    );
    assert!(!sandbox.path("sys/nbd0/pid").exists(), "still attached");
    sandbox.assert_cleaned_up("vol", Some(pid));
}

/// The in-place upgrade of the wrapper itself: after its file is replaced
/// (a new inode renamed over, as a package manager does), SIGHUP makes
/// the same process run the new file, which adopts the device and the
/// nbd-netlink keeping it and starts a new nbdkit. Twice, then an nbdkit
/// death is still restarted and SIGTERM still detaches.
#[test]
fn sighup_runs_the_upgraded_wrapper_in_the_same_process_and_keeps_the_device() {
    let sandbox = Sandbox::new(&["nbd0"]);
    // Next to the stand-in nbd-netlink, which the wrapper looks for there.
    let script = sandbox.path("bin/nbd-http-server");
    let original = fs::read_to_string(workspace_root().join("scripts/nbd-http-server")).unwrap();
    fs::write(&script, &original).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = sandbox.wrapper_at(&script, "vol", MEMORY, true);
    cmd.env("HND_ATTACH", "netlink");
    let mut wrapper = Proc::spawn("wrapper", cmd);
    wait_attached(&wrapper);
    let marker = sandbox.path("sys/nbd0/pid");
    let netlink_pid = fs::read_to_string(&marker).unwrap().trim().to_owned();
    let dev = sandbox.path("dev/nbd0").display().to_string();
    for upgrade in 1..=2 {
        let said = format!("upgraded wrapper {upgrade} adopting");
        let upgraded = original.replace(
            "adopt_device() {\n",
            &format!("adopt_device() {{\n    log \"{said}\"\n"),
        );
        assert_ne!(upgraded, original, "adopt_device not found in the wrapper");
        let next = sandbox.path("bin/nbd-http-server.new");
        fs::write(&next, upgraded).unwrap();
        fs::set_permissions(&next, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&next, &script).unwrap();
        wrapper.signal(libc::SIGHUP);
        restarted_nbdkit_pid(&sandbox, "vol", upgrade, &wrapper);
        let output = wrapper.output.snapshot().join("\n");
        assert!(
            output.contains(&said),
            "the new file did not run:\n{output}"
        );
        assert!(
            output.contains(&format!(
                "(in-place upgrade): {dev} and nbd-netlink (pid {netlink_pid}) carry on"
            )),
            "{output}"
        );
        assert_eq!(wrapper.wait_timeout(Duration::from_millis(300)), None);
        assert_eq!(
            fs::read_to_string(&marker).unwrap_or_default().trim(),
            netlink_pid,
            "the device is not held by the same nbd-netlink"
        );
    }
    // The adopted wrapper still restarts a killed nbdkit.
    let pid = nbdkit_pid(&sandbox, "vol");
    // SAFETY: kill(2) on the nbdkit our wrapper started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let pid = restarted_nbdkit_pid(&sandbox, "vol", 3, &wrapper);
    assert!(wrapper.output.contains("restarting it (restart 1)"));
    group_signal(&wrapper, libc::SIGTERM);
    let status = wrapper
        .wait_timeout(EXIT_TIMEOUT)
        .expect("wrapper exits on SIGTERM");
    let output = wrapper.output.snapshot().join("\n");
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains(&format!("detached {dev}")), "{output}");
    assert!(!marker.exists(), "still attached");
    let netlink_pid: i32 = netlink_pid.parse().unwrap();
    assert!(
        wait_until(EXIT_TIMEOUT, || {
            // SAFETY: signal 0 only checks whether the stand-in still runs.
            let alive = unsafe { libc::kill(netlink_pid, 0) } == 0;
            !alive
        }),
        "nbd-netlink left behind"
    );
    sandbox.assert_cleaned_up("vol", Some(pid));
}

/// An nbdkit that cannot come back (its disk is gone) is retried for
/// HND_RESTART_WINDOW, then the wrapper detaches and exits 1.
#[test]
fn with_nbd_netlink_an_nbdkit_that_cannot_restart_detaches_after_the_window() {
    let sandbox = Sandbox::new(&["nbd0"]);
    let disk = sandbox.path("disk.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let file_param = format!("file={}", disk.display());
    let mut cmd = sandbox.wrapper("vol", &["--plugin", "file", &file_param], true);
    cmd.env("HND_ATTACH", "netlink")
        .env("HND_RESTART_WINDOW", "3");
    let mut wrapper = Proc::spawn("wrapper", cmd);
    wait_attached(&wrapper);
    let pid = nbdkit_pid(&sandbox, "vol");
    fs::remove_file(&disk).unwrap();
    // SAFETY: kill(2) on the nbdkit our wrapper started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let status = wrapper
        .wait_timeout(EXIT_TIMEOUT)
        .expect("the wrapper gives up");
    let output = wrapper.output.snapshot().join("\n");
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("restarting nbdkit failed: nbdkit exited during start-up"),
        "{output}"
    );
    assert!(
        output.contains("nbdkit could not be restarted within 3s; detaching"),
        "{output}"
    );
    assert!(!sandbox.path("sys/nbd0/pid").exists(), "still attached");
    sandbox.assert_cleaned_up("vol", None);
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

// ---------------------------------------------------------------- install

/// Runs `scripts/install` with `envs` and returns its stdout.
fn install(envs: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(workspace_root().join("scripts/install"));
    cmd.env("BIN_DIR", harness::bin_dir());
    for (key, value) in envs {
        cmd.env(key, value);
    }
    let out = run(cmd, EXIT_TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "install failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `nbdkit --dump-plugin` must load the installed file and name it.
fn assert_loadable_plugin(path: &Path, name: &str) {
    let mut cmd = Command::new("nbdkit");
    cmd.arg("--dump-plugin").arg(path);
    let out = run(cmd, EXIT_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("name={name}\n")),
        "nbdkit cannot load {}: {stdout}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn install_into_destdir_puts_plugins_in_nbdkit_plugindir() {
    harness::artifact("http-disk-server");
    harness::artifact("libmultihttp.so");
    let dest = tempfile::tempdir().expect("temp dir");
    install(&[("DESTDIR", dest.path())]);
    let config = run(
        {
            let mut c = Command::new("nbdkit");
            c.arg("--dump-config");
            c
        },
        EXIT_TIMEOUT,
    );
    let config = String::from_utf8_lossy(&config.stdout).into_owned();
    let plugindir = config
        .lines()
        .find_map(|l| l.strip_prefix("plugindir="))
        .expect("nbdkit --dump-config names its plugindir");
    let root = dest.path();
    let inside = |p: &str| root.join(p.trim_start_matches('/'));
    let plugin = inside(&format!("{plugindir}/nbdkit-multihttp-plugin.so"));
    assert_loadable_plugin(&plugin, "multihttp");
    for file in [
        "/usr/local/bin/http-disk-server",
        "/usr/local/bin/nbd-http-server",
        "/usr/local/lib/systemd/system/http-disk-server@.service",
        "/usr/local/lib/systemd/system/nbd-http-server@.service",
        "/etc/http-nbd-transfer/volume.env.example",
    ] {
        assert!(inside(file).is_file(), "{file} not installed");
    }
    // The old plugin file name, pointing at the real plugin once installed.
    let legacy = inside("/usr/local/lib/http-nbd-transfer/multi-http-plugin.so");
    let target = fs::read_link(&legacy).expect("legacy name is a link");
    assert_eq!(
        target,
        Path::new(plugindir).join("nbdkit-multihttp-plugin.so")
    );
    // The old package's plugin file (issue #22): whatever loads that path
    // gets multihttp.
    let old_file = inside(&format!("{plugindir}/nbdkit-multi-http-plugin.so"));
    let target = fs::read_link(&old_file).expect("the old plugin file is a link");
    assert_eq!(target, Path::new("nbdkit-multihttp-plugin.so"));
    assert_loadable_plugin(&old_file, "multihttp");
    // Units point at the installed binaries, no placeholder left.
    let unit = fs::read_to_string(inside(
        "/usr/local/lib/systemd/system/nbd-http-server@.service",
    ))
    .expect("read unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/nbd-http-server "));
    assert!(!unit.contains("@BINDIR@") && !unit.contains("@SYSCONFDIR@"));
    assert_man_pages_installed(&inside("/usr/local/share/man"));
}

/// man(1) finds every page by name in the installed man directory.
fn assert_man_pages_installed(mandir: &Path) {
    for page in [
        "nbdkit-multihttp-plugin",
        "nbdkit-sharded-plugin",
        "nbdkit-s3-plugin",
        "http-disk-server",
        "nbd-http-server",
    ] {
        let mut cmd = Command::new("man");
        cmd.arg("-M").arg(mandir).args(["-w", page]);
        let out = run(cmd, EXIT_TIMEOUT);
        let found = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && found.trim_end().starts_with(&*mandir.to_string_lossy()),
            "man -M {} -w {page}: {found}{}",
            mandir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `systemd-analyze verify` checks that ExecStart binaries exist, so the
/// units are verified as installed under a temporary PREFIX (their
/// ExecStart then names the temp tree). Warnings count as failures.
#[test]
fn installed_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = dir.path().join("prefix");
    let units = prefix.join("lib/systemd/system");
    install(&[
        ("PREFIX", &prefix),
        ("PLUGINDIR", &dir.path().join("plugins")),
        ("SYSCONFDIR", &dir.path().join("etc")),
    ]);
    assert_loadable_plugin(
        &dir.path().join("plugins/nbdkit-multihttp-plugin.so"),
        "multihttp",
    );
    assert_loadable_plugin(
        &prefix.join("lib/http-nbd-transfer/multi-http-plugin.so"),
        "multihttp",
    );
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify")
        .arg(units.join("http-disk-server@statefile.service"))
        .arg(units.join("nbd-http-server@statefile.service"));
    let out = run(cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "verify: {stderr}"
    );
    let unit = fs::read_to_string(units.join("http-disk-server@.service")).expect("unit");
    let exec = format!(
        "ExecStart={}/bin/http-disk-server $SERVER_ARGS",
        prefix.display()
    );
    assert!(unit.contains(&exec), "{unit}");
    let env = dir.path().join("etc/http-nbd-transfer/%i.env");
    assert!(unit.contains(&format!("EnvironmentFile={}", env.display())));
}

// ------------------------------------------- multihttp (the default plugin)

/// The wrapper for multihttp as SM runs it, with the built plugin.
fn multihttp_wrapper(sandbox: &Sandbox, name: &str, urls: &str, size: usize) -> Command {
    let size = size.to_string();
    let mut cmd = sandbox.wrapper(name, &["--urls", urls, "--device-size", &size], true);
    cmd.env("HND_PLUGIN_DIR", harness::bin_dir());
    cmd
}

#[test]
fn multihttp_export_writes_through_to_the_servers_disk() {
    harness::artifact("libmultihttp.so");
    const SIZE: usize = 1 << 20;
    let sandbox = Sandbox::new(&["nbd0"]);
    let disk = harness::pattern_file(sandbox.dir.path(), "disk.img", SIZE, 1);
    let first = harness::DiskServer::start(&disk, &[]);
    let second = harness::DiskServer::start(&disk, &[]);
    let urls = format!("{},{}", first.url(), second.url());
    let mut wrapper = Proc::spawn("wrapper", multihttp_wrapper(&sandbox, "vol", &urls, SIZE));
    wait_attached(&wrapper);
    // The kernel is the one client: a connection it gave up on must not
    // write after its new one (multihttp_supersede.rs).
    let pid = nbdkit_pid(&sandbox, "vol");
    assert!(
        nbdkit_command_line(pid).contains(" supersede=true"),
        "{}",
        nbdkit_command_line(pid)
    );
    // What the kernel would send through /dev/nbdX, sent on the socket.
    let uri = format!("nbd+unix:///vol?socket={}", sandbox.socket("vol").display());
    harness::nbdsh(
        &uri,
        "assert h.get_size() == 1048576\n\
         h.pwrite(b'\\xab' * 65536, 4096)\n\
         h.flush()",
    );
    let content = fs::read(&disk).expect("read disk");
    assert!(content[4096..4096 + 65536].iter().all(|&b| b == 0xab));
    assert_eq!(content[..4096], harness::pattern(SIZE, 1)[..4096]);
    group_signal(&wrapper, libc::SIGTERM);
    assert_eq!(
        wrapper.wait_timeout(EXIT_TIMEOUT).and_then(|s| s.code()),
        Some(0)
    );
}

/// SM lists every host of the pool (up to 64), dead ones included, and
/// gives the wrapper 10 s to print the attached line.
#[test]
fn multihttp_attaches_within_sm_deadline_when_no_server_answers() {
    harness::artifact("libmultihttp.so");
    let sandbox = Sandbox::new(&["nbd0"]);
    let urls: Vec<String> = (0..64)
        .map(|_| format!("http://127.0.0.1:{}", harness::free_port()))
        .collect();
    let started = std::time::Instant::now();
    let mut wrapper = Proc::spawn(
        "wrapper",
        multihttp_wrapper(&sandbox, "vol", &urls.join(","), 4 << 20),
    );
    wait_attached(&wrapper);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "attached after {took:?}");
    group_signal(&wrapper, libc::SIGTERM);
    assert_eq!(
        wrapper.wait_timeout(EXIT_TIMEOUT).and_then(|s| s.code()),
        Some(0)
    );
}
