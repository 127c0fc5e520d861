//! Real block devices for tests: a loop device over a file, detached on
//! drop even when a test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{run, run_ok};

/// A loop device over a file, detached on drop.
pub struct LoopDevice {
    pub device: PathBuf,
}

impl LoopDevice {
    pub fn attach(file: &Path) -> LoopDevice {
        let mut cmd = Command::new("losetup");
        cmd.args(["-f", "--show"]).arg(file);
        let device = run_ok(cmd, Duration::from_secs(30)).trim().to_owned();
        assert!(device.starts_with("/dev/loop"), "losetup said {device:?}");
        LoopDevice {
            device: PathBuf::from(device),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let mut cmd = Command::new("losetup");
        cmd.arg("-d").arg(&self.device);
        let _ = run(cmd, Duration::from_secs(30));
    }
}
