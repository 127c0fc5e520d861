//! A network namespace of the test's own, loopback only: a test may drop
//! packets there (a blackholed host) or use fixed ports without touching
//! the machine's own network.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{artifact, run, run_ok, Proc};

/// `ip netns add hnd-TAG-PID` with its loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("hnd-{tag}-{}", std::process::id());
        let mut add = Command::new("ip");
        add.args(["netns", "add", &name]);
        run_ok(add, Duration::from_secs(10));
        let netns = Netns { name };
        run_ok(
            netns.exec("ip", &["link", "set", "lo", "up"]),
            Duration::from_secs(10),
        );
        netns
    }

    /// `ip netns exec NAME program args...`
    pub fn exec(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }

    /// The words that run a program inside this namespace (for
    /// `Nbdkit::try_start_wrapped` or a script's subprocess).
    pub fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", self.name.as_str()]
    }

    /// http-disk-server on 127.0.0.1:`port` inside the namespace, serving
    /// `disk`, once it is ready.
    pub fn disk_server(&self, disk: &Path, port: u16) -> Proc {
        let server = artifact("http-disk-server");
        let disk = disk.display().to_string();
        let port = port.to_string();
        let cmd = self.exec(
            &server.display().to_string(),
            &["--disk", &disk, "--ip", "127.0.0.1", "--port", &port],
        );
        let proc = Proc::spawn("http-disk-server", cmd);
        assert!(
            proc.output
                .wait_for("Server ready!", Duration::from_secs(20)),
            "server in {} did not start: {:?}",
            self.name,
            proc.output.snapshot()
        );
        proc
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut del = Command::new("ip");
        del.args(["netns", "del", &self.name]);
        let _ = run(del, Duration::from_secs(10));
    }
}
