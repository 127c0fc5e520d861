//! How long and how big a run is: the default run (meant to finish in
//! well under 15 minutes on a 2-core machine) or the `--quick` smoke run.

use std::path::PathBuf;
use std::time::Duration;

use crate::workload::{FioJob, Workload};

#[derive(Clone)]
pub struct Settings {
    pub quick: bool,
    /// Length of one fio or wrk run.
    pub runtime: Duration,
    /// Runs of each case per target, alternating targets.
    pub repeats: usize,
    /// Size of the disks served (files, chunk stores).
    pub disk_size: u64,
    /// Runs of each write-through case per target (see
    /// [`Settings::write_through`]; `--repeats` sets it too).
    pub write_through_repeats: usize,
    /// Failover pauses measured.
    pub failovers: usize,
    /// Scratch directory, removed at the end.
    pub work: PathBuf,
}

impl Settings {
    pub fn new(quick: bool, repeats: Option<usize>, work: PathBuf) -> Settings {
        let (runtime, default_repeats, disk_size, failovers) = if quick {
            (Duration::from_millis(1000), 1, 32 << 20, 2)
        } else {
            // Five short runs rather than three long ones: on a shared
            // 2-core machine a single run can land in a slow scheduling
            // pattern (a 4-connection case swung 0.8-1.5x between runs),
            // and a median of five alternations rides over one or two
            // such runs; the total stays about the same.
            (Duration::from_secs(2), 5, 256 << 20, 7)
        };
        let write_through_repeats = if quick { 1 } else { 3 };
        Settings {
            quick,
            runtime,
            repeats: repeats.unwrap_or(default_repeats).max(1),
            write_through_repeats: repeats.unwrap_or(write_through_repeats).max(1),
            disk_size,
            failovers,
            work,
        }
    }

    /// The block-device workloads: random 4 KiB at queue depth 16 and
    /// sequential 1 MiB, read and write, on 1 and 4 connections (quick:
    /// 1 connection only), plus whole-disk copies in and out.
    pub fn block_workloads(&self, source_file: PathBuf) -> Vec<Workload> {
        let connections: &[u32] = if self.quick { &[1] } else { &[1, 4] };
        let mut workloads = Vec::new();
        for &connections in connections {
            for (rw, block_size, iodepth) in [
                ("randread", 4096, 16),
                ("randwrite", 4096, 16),
                ("read", 1 << 20, 4),
                ("write", 1 << 20, 4),
            ] {
                workloads.push(Workload::Fio(FioJob {
                    rw,
                    block_size,
                    iodepth,
                    connections,
                    fsync: 0,
                }));
            }
        }
        workloads.push(Workload::CopyOut);
        workloads.push(Workload::CopyIn(source_file));
        workloads
    }

    /// The write-through group's settings: 1 s runs (each still times
    /// thousands of writes) and three repetitions by default (quick: one),
    /// so that the group adds about half a minute to the full run, which
    /// must stay under 15 minutes.
    pub fn write_through(&self) -> Settings {
        Settings {
            runtime: self.runtime.min(Duration::from_secs(1)),
            repeats: self.write_through_repeats,
            ..self.clone()
        }
    }

    /// The write-through group's cases: random 4 KiB writes at queue
    /// depth 1 and 16, on one connection (how the wrapper attaches).
    pub fn write_through_workloads(&self) -> Vec<Workload> {
        [1, 16]
            .map(|iodepth| {
                Workload::Fio(FioJob {
                    rw: "randwrite",
                    block_size: 4096,
                    iodepth,
                    connections: 1,
                    fsync: 0,
                })
            })
            .to_vec()
    }
}
