//! The physical limit of a durable write: the backing file driven
//! directly by this benchmark, each write a `pwrite` followed by an
//! `fdatasync` (what http-disk-server does for every write-through PUT),
//! timed one by one. A random 4 KiB write job at queue depth N is N
//! threads, each with one such write in flight, on the same file the
//! server serves.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::results::{Latency, Measured};
use crate::store_load::xorshift;
use crate::workload::Workload;

pub struct LocalSync {
    pub name: String,
    /// What it does, for the report.
    pub command: String,
    file: File,
    size: u64,
}

impl LocalSync {
    /// On `path`, whose first `size` bytes the writes land in.
    pub fn open(name: &str, path: &Path, size: u64) -> Result<LocalSync, String> {
        let file = File::options()
            .write(true)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        Ok(LocalSync {
            name: name.to_owned(),
            command: format!(
                "pwrite + fdatasync of {} from threads of hnd-bench (bench/src/local_sync.rs), \
                 one thread per request in flight",
                path.display()
            ),
            file,
            size,
        })
    }

    /// Runs a random-write fio job's equivalent for `runtime`: its IOPS
    /// and the latency of each `pwrite` + `fdatasync`.
    pub fn run(&self, workload: &Workload, runtime: Duration) -> Result<Measured, String> {
        let job = match workload {
            Workload::Fio(job) if job.rw == "randwrite" => job,
            _ => return Err(format!("{}: random writes only", workload.label())),
        };
        let threads = job.iodepth * job.connections;
        let blocks = (self.size / job.block_size).max(1);
        let started = Instant::now();
        let per_thread: Vec<Result<Vec<f64>, String>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|thread| {
                    scope.spawn(move || {
                        let data = harness::pattern(job.block_size as usize, u64::from(thread) + 7);
                        let mut random = 0x2545_f491_4f6c_dd1du64 ^ u64::from(thread) << 32;
                        let mut times = Vec::new();
                        while started.elapsed() < runtime {
                            random = xorshift(random);
                            let offset = random % blocks * job.block_size;
                            let write = Instant::now();
                            self.file
                                .write_all_at(&data, offset)
                                .and_then(|()| self.file.sync_data())
                                .map_err(|e| format!("pwrite + fdatasync at {offset}: {e}"))?;
                            times.push(write.elapsed().as_secs_f64());
                        }
                        Ok(times)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Err("a writer panicked".into())))
                .collect()
        });
        let elapsed = started.elapsed().as_secs_f64();
        let mut times = Vec::new();
        for thread in per_thread {
            times.extend(thread?);
        }
        let writes = times.len();
        let latency = Latency::of(&mut times).ok_or("no write completed")?;
        Ok(Measured {
            value: writes as f64 / elapsed,
            latency: Some(latency),
        })
    }
}
