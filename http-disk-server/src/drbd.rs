//! DRBD awareness and the "hold the device" loop.
//!
//! A DRBD 9 resource auto-promotes to Primary when opened read-write, and
//! only one node may be Primary. So before opening, the server asks
//! `drbdsetup status <res> --json` whether a peer is Primary; while one is
//! (or the open fails with `EROFS`, or the device is missing) it waits and
//! retries every second until it holds the device or is told to stop.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::disk::Disk;

/// Whether a failing `drbdsetup` was already reported.
static DRBDSETUP_WARNED: AtomicBool = AtomicBool::new(false);

/// Block major number of DRBD devices.
pub const DRBD_MAJOR: u32 = 147;

/// How long to wait between two attempts to get the device.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Longest a `drbdsetup status` call may take before it is killed.
const DRBDSETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The minor number if `path` is a DRBD block device.
pub fn drbd_minor(path: &Path) -> Option<u32> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let rdev = meta.rdev();
    (libc::major(rdev) == DRBD_MAJOR).then(|| libc::minor(rdev))
}

/// The resource name in a `/dev/drbd/by-res/<resource>/<volume>` path.
pub fn resource_from_path(path: &Path) -> Option<String> {
    let parts: Vec<&str> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect();
    parts
        .windows(3)
        .find(|w| w[0] == "drbd" && w[1] == "by-res")
        .map(|w| w[2].to_owned())
}

/// What `drbdsetup status --json` says about one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceStatus {
    pub name: String,
    /// This node's role (`Primary`, `Secondary`).
    pub role: String,
    /// Minor numbers of the resource's volumes.
    pub minors: Vec<u32>,
    /// Names of the peers currently Primary.
    pub primary_peers: Vec<String>,
}

/// Parses the output of `drbdsetup status [<res>] --json`: an array of
/// resources, each with `name`, `role`, `devices[].minor` and
/// `connections[]` carrying `name` and `peer-role`.
pub fn parse_status(json: &str) -> Result<Vec<ResourceStatus>, String> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| format!("drbdsetup output is not JSON: {e}"))?;
    let resources = value
        .as_array()
        .ok_or("drbdsetup output is not a JSON array of resources")?;
    resources
        .iter()
        .map(|res| {
            let name = res
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a resource has no name")?
                .to_owned();
            let role = res
                .get("role")
                .and_then(Value::as_str)
                .unwrap_or("Unknown")
                .to_owned();
            let minors = list(res, "devices")
                .filter_map(|d| d.get("minor").and_then(Value::as_u64))
                .filter_map(|m| u32::try_from(m).ok())
                .collect();
            let primary_peers = list(res, "connections")
                .filter(|c| c.get("peer-role").and_then(Value::as_str) == Some("Primary"))
                .map(|c| {
                    c.get("name")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .or_else(|| c.get("peer-node-id").map(|id| format!("node {id}")))
                        .unwrap_or_else(|| "a peer".to_owned())
                })
                .collect();
            Ok(ResourceStatus {
                name,
                role,
                minors,
                primary_peers,
            })
        })
        .collect()
}

fn list<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    value
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter())
        .into_iter()
        .flatten()
}

/// Runs `drbdsetup status [<resource>] --json` (bounded in time).
fn drbdsetup_status(resource: Option<&str>) -> Result<Vec<ResourceStatus>, String> {
    let mut cmd = Command::new("drbdsetup");
    cmd.arg("status");
    if let Some(resource) = resource {
        cmd.arg(resource);
    }
    cmd.arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run drbdsetup: {e}"))?;
    let deadline = Instant::now() + DRBDSETUP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "drbdsetup status did not answer within {DRBDSETUP_TIMEOUT:?}"
                ));
            }
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("drbdsetup status: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "drbdsetup status failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    parse_status(&String::from_utf8_lossy(&output.stdout))
}

/// What drbdsetup says about the resource of the DRBD device at `path`
/// (minor `minor`), or an error when that could not be found out.
fn status_of(path: &Path, minor: u32) -> Result<ResourceStatus, String> {
    let resource = resource_from_path(path);
    let resources = drbdsetup_status(resource.as_deref())?;
    resources
        .into_iter()
        .find(|r| Some(&r.name) == resource.as_ref() || r.minors.contains(&minor))
        .ok_or_else(|| format!("drbdsetup knows no resource with minor {minor}"))
}

/// The peers that are Primary for the DRBD device at `path` (minor
/// `minor`), or an error when that could not be found out.
fn primary_peers(path: &Path, minor: u32) -> Result<Vec<String>, String> {
    status_of(path, minor).map(|found| found.primary_peers)
}

/// `None` when `path` is not a DRBD device; otherwise its resource as
/// drbdsetup reports it (bounded in time), or why that failed.
pub fn resource_status(path: &Path) -> Option<Result<ResourceStatus, String>> {
    drbd_minor(path).map(|minor| status_of(path, minor))
}

/// Why the device cannot be served right now (retried), as a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    PeerPrimary(String),
    ReadOnly,
    Missing(String),
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::PeerPrimary(peers) => write!(
                f,
                "DRBD peer {peers} is Primary: waiting for it to release the device"
            ),
            Wait::ReadOnly => write!(
                f,
                "device is read-only for us (EROFS: a DRBD peer holds it?): retrying every second"
            ),
            Wait::Missing(why) => {
                write!(f, "device is missing ({why}): retrying every second")
            }
        }
    }
}

/// One attempt: `Ok(disk)`, `Err(Ok(wait))` for a reason to retry, or
/// `Err(Err(e))` for an error retrying cannot fix.
pub fn try_open(path: &Path, readonly: bool) -> Result<Disk, Result<Wait, io::Error>> {
    if let Some(minor) = drbd_minor(path) {
        if !readonly {
            match primary_peers(path, minor) {
                Ok(peers) if !peers.is_empty() => {
                    return Err(Ok(Wait::PeerPrimary(peers.join(", "))))
                }
                Ok(_) => {}
                // Not fatal: the open below still gets EROFS if a peer is
                // Primary; drbdsetup only saves the auto-promote timeout.
                // Said once, not at every retry.
                Err(why) => {
                    if !DRBDSETUP_WARNED.swap(true, Ordering::SeqCst) {
                        log::warn!("cannot check DRBD peers ({why}); opening anyway");
                    }
                }
            }
        }
    }
    match Disk::open(path, readonly) {
        Ok(disk) => Ok(disk),
        Err(e) => match e.raw_os_error() {
            Some(libc::EROFS) | Some(libc::EMEDIUMTYPE) => Err(Ok(Wait::ReadOnly)),
            Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV) | Some(libc::ENOMEDIUM) => {
                Err(Ok(Wait::Missing(e.to_string())))
            }
            _ => Err(Err(e)),
        },
    }
}

/// Retries [`try_open`] every second until it gets the disk (`Ok(Some)`),
/// `stop` is set (`Ok(None)`) or a non-retryable error happens. Each new
/// reason to wait is logged once, then again every minute.
pub fn open_when_possible(
    path: &Path,
    readonly: bool,
    stop: &AtomicBool,
    mut last: Option<Wait>,
) -> io::Result<Option<Disk>> {
    let mut logged_at = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        match try_open(path, readonly) {
            Ok(disk) => return Ok(Some(disk)),
            Err(Err(e)) => return Err(e),
            Err(Ok(wait)) => {
                if last.as_ref() != Some(&wait) || logged_at.elapsed() >= Duration::from_secs(60) {
                    log::warn!("{wait}");
                    logged_at = Instant::now();
                }
                last = Some(wait);
            }
        }
        let until = Instant::now() + RETRY_INTERVAL;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape of `drbdsetup status --json` from DRBD 9.2 (trimmed).
    const TWO_NODES: &str = r#"[
    {
      "name": "xcp-persistent-ha-statefile",
      "node-id": 0,
      "role": "Secondary",
      "suspended": false,
      "devices": [ { "volume": 0, "minor": 1000, "disk-state": "UpToDate" } ],
      "connections": [
        { "peer-node-id": 1, "name": "host2", "connection-state": "Connected",
          "peer-role": "Primary", "peer_devices": [] },
        { "peer-node-id": 2, "name": "host3", "connection-state": "Connected",
          "peer-role": "Secondary", "peer_devices": [] }
      ]
    },
    { "name": "other", "role": "Primary", "devices": [ { "volume": 0, "minor": 1001 } ],
      "connections": [] }
    ]"#;

    #[test]
    fn finds_the_primary_peer() {
        let status = parse_status(TWO_NODES).unwrap();
        assert_eq!(status.len(), 2);
        assert_eq!(status[0].name, "xcp-persistent-ha-statefile");
        assert_eq!(status[0].role, "Secondary");
        assert_eq!(status[0].minors, vec![1000]);
        assert_eq!(status[0].primary_peers, vec!["host2".to_owned()]);
        assert_eq!(status[1].role, "Primary");
        assert!(status[1].primary_peers.is_empty());
    }

    #[test]
    fn peer_without_name_is_still_reported() {
        let json = r#"[{"name":"r","role":"Secondary","devices":[],
            "connections":[{"peer-node-id":3,"peer-role":"Primary"}]}]"#;
        assert_eq!(parse_status(json).unwrap()[0].primary_peers, vec!["node 3"]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_status("").is_err());
        assert!(parse_status("{}").is_err());
        assert!(parse_status("[{\"role\":\"Primary\"}]").is_err());
        assert!(parse_status("not json").is_err());
        assert_eq!(parse_status("[]").unwrap(), vec![]);
    }

    #[test]
    fn resource_name_from_by_res_path() {
        assert_eq!(
            resource_from_path(Path::new("/dev/drbd/by-res/xcp-volume-1/0")).as_deref(),
            Some("xcp-volume-1")
        );
        assert_eq!(resource_from_path(Path::new("/dev/drbd1000")), None);
        assert_eq!(resource_from_path(Path::new("/tmp/drbd/by-res")), None);
    }

    #[test]
    fn regular_files_are_not_drbd() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(drbd_minor(file.path()), None);
        assert_eq!(drbd_minor(Path::new("/nonexistent/x")), None);
    }

    #[test]
    fn missing_device_is_retried_until_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later");
        assert!(matches!(try_open(&path, false), Err(Ok(Wait::Missing(_)))));
        let stop = AtomicBool::new(true);
        assert!(open_when_possible(&path, false, &stop, None)
            .unwrap()
            .is_none());
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let stop = AtomicBool::new(false);
        let disk = open_when_possible(&path, false, &stop, None)
            .unwrap()
            .unwrap();
        assert_eq!(disk.size(), 4096);
    }

    #[test]
    fn a_directory_is_a_fatal_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(try_open(dir.path(), true), Err(Err(_))));
    }
}
