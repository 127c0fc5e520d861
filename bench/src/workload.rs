//! The NBD workloads every block-device comparison runs: fio with its
//! `nbd` engine (random 4 KiB at queue depth 16, sequential 1 MiB; one and
//! four connections) and whole-disk copies with `nbdcopy`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{debian_tool, run};

use crate::results::{Latency, Measured};

/// One fio job shape.
#[derive(Clone, Copy, Debug)]
pub struct FioJob {
    pub rw: &'static str,
    pub block_size: u64,
    pub iodepth: u32,
    /// fio opens one NBD connection per job (`numjobs`).
    pub connections: u32,
    /// An NBD flush after every this many writes (fio's `fsync=`); 0:
    /// none.
    pub fsync: u32,
}

/// A workload run against an NBD URI.
#[derive(Clone, Debug)]
pub enum Workload {
    Fio(FioJob),
    /// `nbdcopy URI null:`: the whole disk read once.
    CopyOut,
    /// `nbdcopy FILE URI`: the whole disk written once, then flushed.
    CopyIn(PathBuf),
}

impl Workload {
    pub fn label(&self) -> String {
        match self {
            Workload::Fio(job) => {
                let size = if job.block_size >= 1 << 20 {
                    format!("{}M", job.block_size >> 20)
                } else {
                    format!("{}k", job.block_size >> 10)
                };
                let conns = if job.connections == 1 {
                    "conn"
                } else {
                    "conns"
                };
                let fsync = if job.fsync > 0 {
                    format!(", fsync={}", job.fsync)
                } else {
                    String::new()
                };
                format!(
                    "fio {size} {} qd{}, {} {conns}{fsync}",
                    job.rw, job.iodepth, job.connections
                )
            }
            Workload::CopyOut => "nbdcopy disk -> null:".into(),
            Workload::CopyIn(_) => "nbdcopy file -> disk".into(),
        }
    }

    pub fn unit(&self) -> &'static str {
        match self {
            Workload::Fio(job) if job.block_size < 1 << 20 => "IOPS",
            _ => "MiB/s",
        }
    }

    /// The exact command line (for the report), with `URI` as placeholder.
    pub fn command_line(&self, runtime: Duration) -> String {
        let args = self.args("URI", Path::new("OUT.json"), runtime);
        args.join(" ")
    }

    fn args(&self, uri: &str, output: &Path, runtime: Duration) -> Vec<String> {
        match self {
            Workload::Fio(job) => [
                "fio".into(),
                "--name=bench".into(),
                "--ioengine=nbd".into(),
                format!("--uri={uri}"),
                format!("--rw={}", job.rw),
                format!("--bs={}", job.block_size),
                format!("--iodepth={}", job.iodepth),
                format!("--numjobs={}", job.connections),
                "--group_reporting".into(),
                "--time_based".into(),
                format!("--runtime={}ms", runtime.as_millis()),
                "--output-format=json".into(),
                format!("--output={}", output.display()),
            ]
            .into_iter()
            .chain((job.fsync > 0).then(|| format!("--fsync={}", job.fsync)))
            .collect(),
            Workload::CopyOut => vec!["nbdcopy".into(), uri.into(), "null:".into()],
            Workload::CopyIn(file) => {
                vec!["nbdcopy".into(), file.display().to_string(), uri.into()]
            }
        }
    }

    /// How much work a run that measured `value` did: I/Os for IOPS
    /// figures, MiB for throughput figures (fio runs for `runtime`; a
    /// copy moves the whole disk).
    pub fn work_done(&self, value: f64, runtime: Duration, disk_size: u64) -> f64 {
        match self {
            Workload::Fio(_) => value * runtime.as_secs_f64(),
            Workload::CopyOut | Workload::CopyIn(_) => disk_size as f64 / (1 << 20) as f64,
        }
    }

    /// Runs once against `uri` (a disk of `disk_size` bytes); returns the
    /// figure in [`Workload::unit`] (with fio, and fio's latency of each
    /// I/O), or why it failed.
    pub fn run(
        &self,
        uri: &str,
        disk_size: u64,
        runtime: Duration,
        scratch: &Path,
    ) -> Result<Measured, String> {
        let output = scratch.join("fio.json");
        let _ = std::fs::remove_file(&output);
        let args = self.args(uri, &output, runtime);
        let mut cmd = debian_tool(&args[0]);
        cmd.args(&args[1..]);
        let started = Instant::now();
        let result = run(cmd, runtime + Duration::from_secs(120));
        let elapsed = started.elapsed().as_secs_f64();
        if !result.status.success() {
            return Err(format!(
                "{} failed ({}): {}",
                args[0],
                result.status,
                last_line(&result.stderr)
            ));
        }
        match self {
            Workload::Fio(job) => parse_fio(&output, job),
            Workload::CopyOut | Workload::CopyIn(_) => {
                Ok((disk_size as f64 / (1 << 20) as f64 / elapsed).into())
            }
        }
    }
}

/// The aggregate figure of a `--group_reporting` fio JSON result, and
/// its completion latency (submission to completion of each I/O).
fn parse_fio(output: &Path, job: &FioJob) -> Result<Measured, String> {
    let text = std::fs::read_to_string(output)
        .map_err(|e| format!("reading fio output {}: {e}", output.display()))?;
    // fio may print lines (e.g. "connected to NBD server") before the JSON.
    let json_start = text.find('{').ok_or("fio wrote no JSON")?;
    let value: serde_json::Value = serde_json::from_str(&text[json_start..])
        .map_err(|e| format!("fio JSON unreadable: {e}"))?;
    let result = &value["jobs"][0];
    let error = result["error"].as_i64().unwrap_or(-1);
    if error != 0 {
        return Err(format!(
            "fio reported error {error} ({})",
            errno_name(error)
        ));
    }
    let direction = if job.rw.contains("write") {
        "write"
    } else {
        "read"
    };
    let figures = &result[direction];
    let figure = if job.block_size < 1 << 20 {
        figures["iops"].as_f64()
    } else {
        figures["bw_bytes"].as_f64().map(|b| b / (1 << 20) as f64)
    };
    let value = figure.ok_or_else(|| format!("fio JSON has no {direction} figure"))?;
    let clat = &figures["clat_ns"];
    let ns = |value: &serde_json::Value| value.as_f64().map(|ns| ns / 1e9);
    let latency = (|| {
        Some(Latency {
            median: ns(&clat["percentile"]["50.000000"])?,
            p99: ns(&clat["percentile"]["99.000000"])?,
            max: ns(&clat["max"])?,
        })
    })();
    Ok(Measured { value, latency })
}

fn errno_name(errno: i64) -> &'static str {
    match errno {
        5 => "EIO",
        1 => "EPERM",
        22 => "EINVAL",
        28 => "ENOSPC",
        _ => "see errno(3)",
    }
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_owned()
}

/// Runs `cmd` and returns stdout, or why it failed.
pub fn output_of(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    cmd.env("LC_ALL", "C");
    let description = format!("{cmd:?}");
    let out = run(cmd, timeout);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{description} failed ({}): {}",
            out.status,
            last_line(&out.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_interval_is_in_the_label_and_the_command() {
        let job = |fsync| {
            Workload::Fio(FioJob {
                rw: "randwrite",
                block_size: 4096,
                iodepth: 16,
                connections: 1,
                fsync,
            })
        };
        let runtime = Duration::from_secs(2);
        assert_eq!(job(16).label(), "fio 4k randwrite qd16, 1 conn, fsync=16");
        assert!(job(16).command_line(runtime).ends_with(" --fsync=16"));
        assert_eq!(job(0).label(), "fio 4k randwrite qd16, 1 conn");
        assert!(!job(0).command_line(runtime).contains("fsync"));
    }
}
