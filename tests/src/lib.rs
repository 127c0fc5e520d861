//! Test harness for the end-to-end tests in `tests/tests/`.
//!
//! Everything a test starts is owned by a guard that kills it (and its
//! process group) on drop, so a failing assertion never leaks a server.
//! Every wait is bounded by a deadline. Binaries are the release build
//! (`scripts/test` builds them first); set `HND_BIN_DIR` to use others.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

pub use tempfile::TempDir;

pub mod block;
pub mod disk_server;
pub mod fio;
pub mod garage;
pub mod hanging_disk;
pub mod nbd_scripts;
pub mod netns;
pub mod packages;
pub mod scripted_peer;
pub mod test_ca;
pub mod tls_proxy;
pub mod write_model;
pub use disk_server::DiskServer;

/// Root of the workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where the built binaries and plugins are: `$HND_BIN_DIR`, else
/// `$CARGO_TARGET_DIR/release`, else `<workspace>/target/release`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HND_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release")
}

/// Path of a built artifact (`http-disk-server`, `libmultihttp.so`...),
/// panicking with a hint when it was not built.
pub fn artifact(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --workspace` (scripts/test does)",
        path.display()
    );
    path
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Lines a child printed, collected by background reader threads, each
/// with the wall-clock time it arrived (to line a log up with events other
/// processes timestamp, e.g. a client's requests).
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<(SystemTime, String)>>>);

impl Lines {
    pub fn snapshot(&self) -> Vec<String> {
        self.timed().into_iter().map(|(_, line)| line).collect()
    }

    /// The lines with their arrival times (`SystemTime::now()` when the
    /// reader thread got them, a few ms at most after they were written).
    pub fn timed(&self) -> Vec<(SystemTime, String)> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.snapshot().iter().any(|l| l.contains(needle))
    }

    pub fn count(&self, needle: &str) -> usize {
        self.snapshot()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until some line contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.contains(needle))
    }

    fn collect(&self, label: String, stream: impl Read + Send + 'static) {
        let lines = self.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                // Shown by the test runner only when the test fails.
                println!("[{label}] {line}");
                if let Ok(mut all) = lines.0.lock() {
                    all.push((SystemTime::now(), line));
                }
            }
        });
    }
}

/// Waits until process `pid` is stopped (state `T` in /proc/PID/stat):
/// SIGSTOP takes effect asynchronously, and a test that goes on before
/// it did races the process it meant to freeze.
pub fn wait_stopped(pid: i32, timeout: Duration) -> bool {
    wait_until(timeout, || {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                == Some("T")
        })
    })
}

/// A child process killed, with its whole process group, when dropped.
pub struct Proc {
    child: Child,
    pub name: String,
    /// stdout and stderr lines, merged.
    pub output: Lines,
}

impl Proc {
    /// Starts `cmd` in its own process group with stdout/stderr captured.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let output = Lines::default();
        if let Some(out) = child.stdout.take() {
            output.collect(name.to_owned(), out);
        }
        if let Some(err) = child.stderr.take() {
            output.collect(name.to_owned(), err);
        }
        Proc {
            child,
            name: name.to_owned(),
            output,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal to the process (not its group).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Whether the process has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for exit up to `timeout`; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.exited();
            status.is_some()
        });
        status
    }

    /// The output of a process that has exited, once the reader threads
    /// have drained its pipes (they may lag the exit by a moment).
    pub fn output_when_closed(&self) -> String {
        let mut previous = usize::MAX;
        // Settled when two looks 100 ms apart see the same lines.
        wait_until(Duration::from_secs(5), || {
            thread::sleep(Duration::from_millis(100));
            let now = self.output.snapshot().len();
            let settled = now == previous && now > 0;
            previous = now;
            settled
        });
        self.output.snapshot().join("\n")
    }

    /// SIGKILLs the process group and reaps the child.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            // SAFETY: negative pid = our child's process group.
            unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion with a time limit, killing it if it
/// overruns. Returns its output; panics if it could not start or overran.
pub fn run(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let description = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let Some(status) = status else {
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        panic!("{description} did not finish within {timeout:?}");
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Like [`run`], and also asserts success, returning stdout as text.
pub fn run_ok(cmd: Command, timeout: Duration) -> String {
    let description = format!("{cmd:?}");
    let output = run(cmd, timeout);
    assert!(
        output.status.success(),
        "{description} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A Command for a tool that needs Debian's python3 with the `nbd`
/// module (`nbdsh`): `/usr/bin` first on PATH, because the first python3
/// on this machine's PATH may lack the module.
pub fn debian_tool(program: &str) -> Command {
    let mut cmd = Command::new(program);
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("/usr/bin:/usr/sbin:{path}"));
    cmd
}

/// qemu-io, a second real NBD client: writes 7000 bytes of 0x5a at the
/// odd offset 12345 of the raw export at `uri` and reads them back
/// verified. The caller checks where they landed.
pub fn qemu_io_odd_write_and_verify(uri: &str) {
    let mut qemu = Command::new("qemu-io");
    qemu.args(["-f", "raw", "-c", "write -P 0x5a 12345 7000"])
        .args(["-c", "read -P 0x5a 12345 7000"])
        .arg(uri);
    let output = run_ok(qemu, Duration::from_secs(60));
    assert!(!output.contains("verification failed"), "{output}");
}

/// Runs an `nbdsh` Python snippet against `uri` (variable `h` is the
/// connected handle) and returns its stdout.
pub fn nbdsh(uri: &str, script: &str) -> String {
    let mut cmd = debian_tool("nbdsh");
    cmd.args(["-u", uri, "-c", script]);
    run_ok(cmd, Duration::from_secs(120))
}

/// An nbdkit process serving one export on a Unix socket in a temp dir.
pub struct Nbdkit {
    pub proc: Proc,
    pub socket: PathBuf,
    _dir: TempDir,
}

impl Nbdkit {
    /// nbdkit with the multihttp plugin on `urls` plus extra `key=value`
    /// parameters, once it serves.
    pub fn multihttp(urls: &[String], extra: &[&str]) -> Nbdkit {
        let urls = format!("urls={}", urls.join(","));
        let mut params = vec![urls.as_str()];
        params.extend_from_slice(extra);
        Nbdkit::start(&[], &artifact("libmultihttp.so"), &params)
    }

    /// Port of the server the multihttp plugin last chose, from its log
    /// line ("using URL" / "switched from URL to URL"), for http:// and
    /// https:// URLs alike.
    pub fn multihttp_active_port(&self) -> Option<u16> {
        self.proc
            .output
            .snapshot()
            .iter()
            .rev()
            .filter(|l| l.contains("multihttp: using ") || l.contains("multihttp: switched from "))
            .find_map(|l| {
                // The last URL of the line: its port after the host.
                let authority = l.rsplit("://").next()?;
                let port = &authority[authority.find(':')? + 1..];
                port.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .ok()
            })
    }

    /// Starts `nbdkit -f -U <sock> <plugin> <params...>` with extra nbdkit
    /// options before the plugin (e.g. `-r`, `--filter=...`), and waits
    /// until the socket accepts (nbdkit writes the pidfile only then).
    pub fn start(options: &[&str], plugin: &Path, params: &[&str]) -> Nbdkit {
        Self::try_start(options, plugin, params).unwrap_or_else(not_ready)
    }

    /// As [`Nbdkit::start`], with the nbdkit binary at `nbdkit` instead of
    /// the one on PATH (e.g. an older release: `tests/tests/old_nbdkit.rs`).
    pub fn start_program(
        nbdkit: &Path,
        options: &[&str],
        plugin: &Path,
        params: &[&str],
    ) -> Nbdkit {
        Self::try_start_command(Command::new(nbdkit), options, plugin, params)
            .unwrap_or_else(not_ready)
    }

    /// As [`Nbdkit::start`], but returns the process when nbdkit exits or
    /// does not become ready, so tests can check refusals.
    pub fn try_start(options: &[&str], plugin: &Path, params: &[&str]) -> Result<Nbdkit, Proc> {
        Self::try_start_wrapped(&[], options, plugin, params)
    }

    /// As [`Nbdkit::try_start`], with nbdkit run through `wrapper` (e.g.
    /// `["ip", "netns", "exec", NS]`, which execs nbdkit in place, so
    /// `--exit-with-parent` still ties it to the test).
    pub fn try_start_wrapped(
        wrapper: &[&str],
        options: &[&str],
        plugin: &Path,
        params: &[&str],
    ) -> Result<Nbdkit, Proc> {
        let cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg("nbdkit");
                cmd
            }
            None => Command::new("nbdkit"),
        };
        Self::try_start_command(cmd, options, plugin, params)
    }

    /// Runs `cmd` (nbdkit, or what execs it) with the options, the plugin
    /// and its parameters, and waits until the socket accepts.
    fn try_start_command(
        mut cmd: Command,
        options: &[&str],
        plugin: &Path,
        params: &[&str],
    ) -> Result<Nbdkit, Proc> {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("nbd.sock");
        let pidfile = dir.path().join("nbdkit.pid");
        cmd.args(["-f", "--exit-with-parent", "-U"])
            .arg(&socket)
            .arg("-P")
            .arg(&pidfile)
            .args(options)
            .arg(plugin)
            .args(params);
        let mut proc = Proc::spawn("nbdkit", cmd);
        let ready = wait_until(Duration::from_secs(30), || {
            pidfile.exists() || proc.exited().is_some()
        });
        if !ready || proc.exited().is_some() {
            return Err(proc);
        }
        Ok(Nbdkit {
            proc,
            socket,
            _dir: dir,
        })
    }

    /// Starts nbdkit expecting it to refuse `params` (exit before serving);
    /// returns everything it printed. Panics if it started serving.
    pub fn refusal(options: &[&str], plugin: &Path, params: &[&str]) -> String {
        match Self::try_start(options, plugin, params) {
            Ok(_) => panic!("nbdkit accepted {params:?}"),
            Err(proc) => proc.output_when_closed(),
        }
    }

    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }
}

/// Panics with the output of an nbdkit that did not become ready.
fn not_ready(proc: Proc) -> Nbdkit {
    panic!(
        "nbdkit did not become ready; output:\n{}",
        proc.output.snapshot().join("\n")
    )
}

/// A file of `size` bytes filled with a deterministic pattern, in `dir`.
pub fn pattern_file(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, pattern(size, seed)).expect("write pattern file");
    path
}

/// `size` pseudo-random bytes from `seed` (xorshift: cheap and repeatable).
pub fn pattern(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// What the kernel says a process holds (from /proc/PID/status and fd/).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessUsage {
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: usize,
}

/// Reads [`ProcessUsage`] of `pid`; panics if the process is gone.
pub fn process_usage(pid: i32) -> ProcessUsage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count();
    ProcessUsage {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
    }
}

/// CPU time `pid` has used so far (user + system), in clock ticks
/// (usually 100 a second); panics if the process is gone.
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces), from field 3.
    let after_name = &stat[stat.rfind(')').expect("comm in /proc/PID/stat") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let field = |n: usize| fields[n - 3].parse::<u64>().expect("numeric tick count");
    field(14) + field(15)
}

/// Makes the close of `stream` (when it is dropped) a reset (RST) instead
/// of a FIN: SO_LINGER with a zero timeout.
pub fn reset_on_close(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live socket with a pointer to a live linger.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}
