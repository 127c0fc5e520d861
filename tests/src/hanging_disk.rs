//! A disk file that can be made to stop answering, as a disk that hangs
//! does: a FUSE file (libnbd's `nbdfuse`) over nbdkit's `file` plugin on an
//! image. While that nbdkit is SIGSTOPped, every read, write and
//! fdatasync on the file waits in the kernel (uninterruptibly, state D),
//! while the process using it and its connections stay fine. The kernel
//! here has no device-mapper (no `dmsetup suspend`); this needs only FUSE.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{run, wait_until, Nbdkit, Proc, TempDir};

pub struct HangingDisk {
    /// The FUSE file to serve.
    pub file: PathBuf,
    mountpoint: PathBuf,
    // Dropped in this order, after `drop` below resumed and unmounted.
    fuse: Proc,
    daemon: Nbdkit,
    _dir: TempDir,
}

impl HangingDisk {
    /// Mounts `image` (whole 512-byte sectors) as a FUSE file, once its
    /// size shows there.
    pub fn over(image: &Path) -> HangingDisk {
        let size = std::fs::metadata(image).expect("disk image").len();
        let daemon = Nbdkit::start(&[], Path::new("file"), &[&image.display().to_string()]);
        let dir = TempDir::new().expect("temp dir");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("mount point");
        let file = mountpoint.join("disk");
        let mut cmd = Command::new("nbdfuse");
        cmd.arg(&file).arg("--unix").arg(&daemon.socket);
        let fuse = Proc::spawn("nbdfuse", cmd);
        let disk = HangingDisk {
            file,
            mountpoint,
            fuse,
            daemon,
            _dir: dir,
        };
        let mounted = || std::fs::metadata(&disk.file).is_ok_and(|m| m.len() == size);
        assert!(
            wait_until(Duration::from_secs(10), mounted),
            "nbdfuse did not mount {} within 10 s: {:?}",
            image.display(),
            disk.fuse.output.snapshot()
        );
        disk
    }

    /// The process to SIGSTOP for the disk to stop answering, and to
    /// SIGCONT for it to come back.
    pub fn daemon_pid(&self) -> i32 {
        self.daemon.proc.pid()
    }

    /// Lets the waiting I/O through (harmless when not stopped).
    pub fn resume(&self) {
        self.daemon.proc.signal(libc::SIGCONT);
    }
}

impl Drop for HangingDisk {
    fn drop(&mut self) {
        self.resume();
        let mut umount = Command::new("umount");
        umount.arg(&self.mountpoint);
        let _ = run(umount, Duration::from_secs(30));
    }
}

/// Resumes `disks` on drop: declared after the processes using them, it
/// runs before they are killed, which then need not wait for a stopped
/// disk.
pub struct ResumeOnDrop<'a>(pub &'a [HangingDisk]);

impl Drop for ResumeOnDrop<'_> {
    fn drop(&mut self) {
        for disk in self.0 {
            disk.resume();
        }
    }
}
