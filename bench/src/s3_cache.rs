//! The `s3-cache` group (issue #23): the s3 plugin with its write-back
//! journal cache (`cache-dir=`, on the local disk) against the same
//! plugin without it and the same plugin under nbdkit's cache filter in
//! write-back mode, all three on one Garage (each its own prefix), on
//! random 4 KiB writes with an NBD flush every 16 and every 256 writes:
//! what the cache buys a client that flushes, and what it costs against
//! the cache a user could already put in front of the plugin.
//!
//! The cache target uploads in the background, so a run leaves work
//! going when fio ends. After each of its runs, outside the measurement,
//! it is stopped cleanly (which uploads everything its journal holds and
//! leaves the journal empty, checked) and started again on the same
//! cache directory: no upload of one run lands in the next, of any
//! target. How long those stops took is reported with the machine's
//! facts: the backlog the cache built up during the run.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{bin_dir, pattern_file};

use crate::compare::{compare_block_targets, Lineup, Peer};
use crate::cpu::Watched;
use crate::progress::Progress;
use crate::results::{Measured, Results};
use crate::settings::Settings;
use crate::stats::median;
use crate::targets::{NbdTarget, Target};
use crate::workload::{FioJob, Workload};
use crate::{garage_missing, record_memory, OBJECT_SIZE};

const GROUP: &str = "s3-cache";
/// The plugin's clean stop uploads for up to 30 s (chunk-store's
/// `DRAIN_LIMIT`); beyond this the stop is a failure.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// The group's cases: random 4 KiB writes at the queue depth of the
/// other 4 KiB cases, one connection, a flush every 16 and every 256.
pub fn workloads() -> Vec<Workload> {
    [16, 256]
        .map(|fsync| {
            Workload::Fio(FioJob {
                rw: "randwrite",
                block_size: 4096,
                iodepth: 16,
                connections: 1,
                fsync,
            })
        })
        .to_vec()
}

/// The group's settings: the disk of the s3 group (32 MiB, 512 objects
/// of 64 KiB), runs of at least 2 s (with a flush every 256 writes, a
/// shorter run holds only a few flushes), and the write-through group's
/// repetitions (3, quick 1), which keep it near two minutes of the full
/// run.
pub fn settings(settings: &Settings) -> Settings {
    Settings {
        disk_size: settings.disk_size.min(32 << 20),
        runtime: settings.runtime.max(Duration::from_secs(2)),
        repeats: settings.write_through_repeats,
        ..settings.clone()
    }
}

pub fn s3_cache_group(results: &mut Results, settings: &Settings, progress: &mut Progress) {
    let plugin = bin_dir().join("libs3.so");
    if !plugin.exists() {
        results
            .skipped
            .push((GROUP.into(), format!("{} is not built", plugin.display())));
        return;
    }
    if let Some(why) = garage_missing() {
        return results.skipped.push((GROUP.into(), why));
    }
    let settings = self::settings(settings);
    let work = settings.work.join("s3-cache");
    let cache_dir = work.join("cache-dir");
    // The filter's cache file (in $TMPDIR) on the same disk as cache-dir.
    let filter_tmp = work.join("filter-tmp");
    if let Err(e) = fs::create_dir_all(&filter_tmp) {
        return results
            .skipped
            .push((GROUP.into(), format!("{}: {e}", filter_tmp.display())));
    }
    let source = pattern_file(&work, "source.img", settings.disk_size as usize, 4);
    let garage = harness::garage::Garage::start();
    results.note_command(
        "garage server --single-node --default-bucket (sqlite, replication 1)".into(),
    );
    let s3_params = |prefix: &str, extra: &[String]| {
        let mut params = garage.params(prefix);
        params.push(format!("size={}", settings.disk_size));
        params.push(format!("chunk-size={OBJECT_SIZE}"));
        params.extend_from_slice(extra);
        params
    };
    let started = (|| {
        let cached = Restarting::start(
            "s3 cache-dir=",
            &plugin,
            s3_params("cached/", &[format!("cache-dir={}", cache_dir.display())]),
            cache_dir.join("journal"),
        )?;
        let plain = NbdTarget::start("s3, no cache", &[], &plugin, &s3_params("plain/", &[]))?;
        let tmpdir = format!("TMPDIR={}", filter_tmp.display());
        let filter = NbdTarget::start_wrapped(
            "s3 + nbdkit cache filter",
            &["env", &tmpdir],
            &["--filter=cache"],
            &plugin,
            &s3_params(
                "filter/",
                &[
                    "cache=writeback".into(),
                    // Its blocks the size of the plugin's objects (its
                    // default, 64K, made explicit).
                    format!("cache-min-block-size={OBJECT_SIZE}"),
                ],
            ),
        )?;
        Ok::<_, String>((cached, plain, filter))
    })();
    let (cached, plain, filter) = match started {
        Ok(targets) => targets,
        Err(why) => return results.skipped.push((GROUP.into(), why)),
    };
    // Every disk holds data first, so each write into an object reads
    // one that exists (as on a disk in use). The copy ends with a flush,
    // which empties the filter; the cache target settles like after a run.
    let disks = [
        (cached.name(), cached.uri()),
        (plain.name(), Some(plain.uri())),
        (filter.name(), Some(filter.uri())),
    ];
    for (name, uri) in disks {
        let fill = Workload::CopyIn(source.clone());
        let filled = uri
            .ok_or_else(|| "not running".to_owned())
            .and_then(|uri| fill.run(&uri, settings.disk_size, Duration::ZERO, &settings.work));
        if let Err(why) = filled {
            return results
                .skipped
                .push((GROUP.into(), format!("prefilling {name}: {why}")));
        }
    }
    if let Err(why) = cached.settle() {
        return results.skipped.push((
            GROUP.into(),
            format!("after prefilling {}: {why}", cached.name()),
        ));
    }
    cached.stops.borrow_mut().clear();
    let backend: Vec<Watched> = garage
        .pid()
        .map(|pid| Watched {
            role: "Garage".into(),
            pid,
        })
        .into_iter()
        .collect();
    for workload in workloads() {
        compare_block_targets(
            results,
            &settings,
            progress,
            &Lineup {
                group: "s3 + cache-dir= on Garage",
                ours: &cached,
                peers: &[
                    Peer {
                        target: &plain,
                        goal: None,
                    },
                    Peer {
                        target: &filter,
                        goal: None,
                    },
                ],
                alone: None,
                backend: &backend,
                latency: true,
            },
            std::slice::from_ref(&workload),
        );
        let stops = std::mem::take(&mut *cached.stops.borrow_mut());
        if let Some(middle) = median(&stops) {
            results.facts.push(format!(
                "{GROUP} group, {}: the cache target's clean stop after each run (its \
                 journal uploaded, not measured) took {middle:.1} s (median of {}, max \
                 {:.1} s)",
                workload.label(),
                stops.len(),
                stops.iter().copied().fold(0.0, f64::max)
            ));
        }
    }
    record_memory(
        results,
        "nbdkit + s3 cache-dir=",
        "s3-cache group (its last run)",
        cached.pid(),
    );
    record_memory(
        results,
        "nbdkit + cache filter + s3",
        "s3-cache group",
        filter.pid(),
    );
    // Processes end with their guards: nbdkit (its process group, with
    // SIGKILL; the cache target's journal is empty after its last
    // settle), then Garage.
    drop((cached, plain, filter));
    drop(garage);
}

/// A target that is stopped cleanly and started again after each run:
/// the s3 plugin with `cache-dir=`, whose clean stop uploads its whole
/// journal (see the module's comment).
struct Restarting {
    name: String,
    command: String,
    plugin: PathBuf,
    params: Vec<String>,
    /// `cache-dir/journal`: no segment left in it after a clean stop.
    journal: PathBuf,
    current: RefCell<Option<NbdTarget>>,
    /// Seconds each clean stop took, since last taken.
    stops: RefCell<Vec<f64>>,
}

impl Restarting {
    fn start(
        name: &str,
        plugin: &Path,
        params: Vec<String>,
        journal: PathBuf,
    ) -> Result<Restarting, String> {
        let first = NbdTarget::start(name, &[], plugin, &params)?;
        Ok(Restarting {
            name: name.to_owned(),
            command: first.command.clone(),
            plugin: plugin.to_owned(),
            params,
            journal,
            current: RefCell::new(Some(first)),
            stops: RefCell::new(Vec::new()),
        })
    }

    /// Stops the running nbdkit with SIGTERM and waits for it: the
    /// plugin's unload uploads the journal first.
    fn stop(&self, target: &mut NbdTarget) -> Result<(), String> {
        let started = Instant::now();
        target.nbdkit.proc.signal(libc::SIGTERM);
        let status = target.nbdkit.proc.wait_timeout(STOP_LIMIT);
        let output = || target.nbdkit.proc.output.snapshot().join(" | ");
        match status {
            None => {
                return Err(format!(
                    "nbdkit did not stop within {} s of SIGTERM: {}",
                    STOP_LIMIT.as_secs(),
                    output()
                ))
            }
            Some(status) if !status.success() => {
                return Err(format!("nbdkit stopped with {status}: {}", output()))
            }
            Some(_) => {}
        }
        let left: Vec<String> = fs::read_dir(&self.journal)
            .map_err(|e| format!("{}: {e}", self.journal.display()))?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".journal"))
            .collect();
        if !left.is_empty() {
            return Err(format!(
                "a clean stop left journal segments {left:?}: {}",
                output()
            ));
        }
        self.stops
            .borrow_mut()
            .push(started.elapsed().as_secs_f64());
        Ok(())
    }
}

impl Restarting {
    fn uri(&self) -> Option<String> {
        self.current.borrow().as_ref().map(NbdTarget::uri)
    }
}

impl Target for Restarting {
    fn name(&self) -> &str {
        &self.name
    }

    fn command(&self) -> &str {
        &self.command
    }

    fn pid(&self) -> i32 {
        self.current.borrow().as_ref().map_or(0, NbdTarget::pid)
    }

    fn run(&self, workload: &Workload, settings: &Settings) -> Result<Measured, String> {
        match &*self.current.borrow() {
            Some(target) => target.run(workload, settings),
            None => Err("not running (a restart after an earlier run failed)".into()),
        }
    }

    fn settle(&self) -> Result<(), String> {
        let mut current = self.current.borrow_mut();
        let Some(mut running) = current.take() else {
            return Err("not running".into());
        };
        self.stop(&mut running)?;
        drop(running);
        *current = Some(NbdTarget::start(
            &self.name,
            &[],
            &self.plugin,
            &self.params,
        )?);
        Ok(())
    }
}
