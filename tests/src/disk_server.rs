//! `DiskServer`: the real `http-disk-server` binary serving one disk on a
//! free loopback port, for end-to-end tests of the server and of the
//! plugins that talk to it. Killed (with its process group) on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{artifact, free_port, Proc};

/// How long the server gets to print `Server ready!`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `http-disk-server` on 127.0.0.1.
pub struct DiskServer {
    pub proc: Proc,
    pub port: u16,
    pub disk: PathBuf,
}

impl DiskServer {
    /// Starts the server on `disk` with extra `args` (e.g. `["--readonly"]`)
    /// on a free port of 127.0.0.1, and waits for `Server ready!`.
    /// Panics with the server's output if it does not become ready.
    pub fn start(disk: &Path, args: &[&str]) -> DiskServer {
        Self::try_start(disk, args).unwrap_or_else(|p| {
            panic!(
                "http-disk-server did not become ready; output:\n{}",
                p.output.snapshot().join("\n")
            )
        })
    }

    /// As [`DiskServer::start`] but returns the process when it exits or
    /// does not print `Server ready!` in time, so tests can check refusals.
    /// Retries with another port if the free port was taken meanwhile.
    pub fn try_start(disk: &Path, args: &[&str]) -> Result<DiskServer, Proc> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            match Self::start_on_port(disk, port, args) {
                Ok(server) => return Ok(server),
                Err(proc) if attempt < 3 && proc.output.contains("already in use") => continue,
                Err(proc) => return Err(proc),
            }
        }
    }

    /// Starts the server on a given port of 127.0.0.1 (no retry).
    pub fn start_on_port(disk: &Path, port: u16, args: &[&str]) -> Result<DiskServer, Proc> {
        let mut cmd = Command::new(artifact("http-disk-server"));
        cmd.arg("--disk")
            .arg(disk)
            .args(["--ip", "127.0.0.1", "--port", &port.to_string()])
            .args(args);
        let mut proc = Proc::spawn("http-disk-server", cmd);
        let ready = crate::wait_until(READY_TIMEOUT, || {
            proc.output.contains("Server ready!") || proc.exited().is_some()
        });
        if !ready || !proc.output.contains("Server ready!") {
            return Err(proc);
        }
        Ok(DiskServer {
            proc,
            port,
            disk: disk.to_path_buf(),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:PORT`, for a server started with `--tls-cert`.
    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, for raw TCP clients.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends raw bytes on a fresh connection, half-closes it, and returns
    /// everything the server replied until it closed (or 10 s passed).
    pub fn raw(&self, request: &[u8]) -> Vec<u8> {
        raw_exchange(&self.addr(), request, true)
    }

    /// Whether the server answers a HEAD with 200 right now.
    pub fn answers(&self) -> bool {
        let reply = raw_exchange(
            &self.addr(),
            b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            false,
        );
        reply.starts_with(b"HTTP/1.1 200")
    }
}

/// Sends `request` on a new connection to `addr` and reads until EOF (max
/// 10 s). `half_close` shuts down the write side after sending, which tells
/// the server no more bytes come (e.g. for truncated bodies).
pub fn raw_exchange(addr: &str, request: &[u8], half_close: bool) -> Vec<u8> {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return Vec::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    // The server may reply and close before taking all of a bad request:
    // a failed write is then expected, the reply is what counts.
    let _ = stream.write_all(request);
    if half_close {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply
}

/// The status code of a raw HTTP reply (`0` when there is none).
pub fn status_of(reply: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(reply);
    text.split_whitespace()
        .nth(1)
        .filter(|_| text.starts_with("HTTP/1."))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Writes `dir/auth`, an `--auth-file` with one line for `user` and
/// `password`, made by the shell recipe README gives (openssl salt,
/// sha256sum), so the recipe is tested too.
pub fn auth_file(dir: &Path, user: &str, password: &str) -> PathBuf {
    let file = dir.join("auth");
    let script = r#"salt=$(openssl rand -hex 16)
printf '%s:%s:%s\n' "$1" "$salt" "$(printf '%s%s' "$salt" "$2" | sha256sum | cut -d' ' -f1)""#;
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script, "auth", user, password]);
    let line = crate::run_ok(cmd, Duration::from_secs(10));
    std::fs::write(&file, format!("# test\n{line}")).unwrap();
    file
}
