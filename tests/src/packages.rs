//! The distribution packages, built by `packaging/build` (issue #22):
//! once per tarball content, so the packaging tests and the VM test share
//! one build (packaging/build serialises itself and skips a package that
//! is up to date). Offline: crates come from ~/.cargo's cache, which
//! scripts/install-deps fills (`cargo fetch`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{run_ok, workspace_root};

/// A cold build of one package takes ~3 minutes on 2 cores; another
/// build may hold packaging/build's lock meanwhile.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1500);

/// Where packaging/build puts its output (its default, made explicit).
pub fn out_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("package")
}

/// The clean Debian root and the .debs of our Depends that
/// scripts/install-deps caches.
pub fn debian_root_cache() -> PathBuf {
    let dir = PathBuf::from("/var/cache/http-nbd-transfer/debian-root");
    assert!(
        dir.join("root.tar").is_file() && dir.join("debs").is_dir(),
        "{} has no root.tar and debs/: run scripts/install-deps",
        dir.display()
    );
    dir
}

/// Runs `packaging/build TARGET` (tarball, rpm or deb) and returns the
/// one `*.TARGET` file of `subdir` in the output whose name starts with
/// `prefix`.
fn build(target: &str, subdir: &str, prefix: &str) -> PathBuf {
    let mut cmd = Command::new(workspace_root().join("packaging/build"));
    cmd.arg(target)
        .env("OUT", out_dir())
        .env("CARGO_NET_OFFLINE", "true");
    run_ok(cmd, BUILD_TIMEOUT);
    let dir = out_dir().join(subdir);
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = name_of(path);
            name.starts_with(prefix) && name.ends_with(&format!(".{target}"))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {prefix}* in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The built RPM (not its debuginfo).
pub fn rpm() -> PathBuf {
    build("rpm", "rpm", "http-nbd-transfer-2")
}

/// The built .deb (not its -dbgsym).
pub fn deb() -> PathBuf {
    build("deb", "deb", "http-nbd-transfer_")
}

/// Installs the .deb into `root` with `dpkg --root` (a tree with only
/// dpkg's database and our package; its Depends not checked: the caller
/// brings nbdkit). What the VM image takes the project from.
pub fn install_deb_into(root: &Path) {
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(dir)).expect("dpkg database dirs");
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").expect("dpkg status");
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--force-script-chrootless", "-i"])
        .arg(deb());
    run_ok(cmd, Duration::from_secs(120));
}
