//! `hnd-bench` (run it through `bench/run`): measures each component of
//! the project side by side with the tool a user would pick instead, in
//! the same run, and writes BENCHMARKS.md plus a chart of the ratios.
//! Speed is reported, never asserted: CI runs `--quick` as a smoke test.

mod compare;
mod cpu;
mod failover;
mod http;
mod local_sync;
mod machine;
mod progress;
mod report;
mod results;
mod s3_cache;
mod settings;
mod stats;
mod store_load;
mod targets;
mod workload;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use harness::{artifact, bin_dir, pattern_file, DiskServer, TempDir};

use compare::{compare_block_targets, Lineup, Peer};
use cpu::Watched;
use local_sync::LocalSync;
use progress::Progress;
use results::{MemoryReading, Results};
use settings::Settings;
use store_load::{DirectStore, StoreAccess};
use targets::{NbdTarget, SyncedAfterRun, Target};
use workload::Workload;

const GROUPS: [&str; 7] = [
    "multihttp",
    "server",
    "write-through",
    "sharded",
    "s3",
    "s3-cache",
    "failover",
];

#[derive(Parser)]
#[command(about = "Benchmarks of http-nbd-transfer against peer tools, on loopback")]
struct Cli {
    /// One-minute smoke run: short runs, one repetition, small disks.
    #[arg(long)]
    quick: bool,
    /// Repetitions of each case per target (default 5, quick 1).
    #[arg(long)]
    repeats: Option<usize>,
    /// Measure nothing: copy the current bench/ANALYSIS.md into the report
    /// (`--out`, default BENCHMARKS.md), keeping its measured sections.
    #[arg(long)]
    update_analysis: bool,
    /// Only these groups (comma-separated): multihttp, server, write-through, sharded, s3,
    /// s3-cache, failover.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Report file (default BENCHMARKS.md; quick: target/bench/BENCHMARKS-quick.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Chart file (default: bench/ratios.svg; quick: next to the report).
    #[arg(long)]
    chart: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    for group in &cli.only {
        if !GROUPS.contains(&group.as_str()) {
            eprintln!("unknown group {group:?}; groups: {}", GROUPS.join(", "));
            std::process::exit(2);
        }
    }
    if cli.update_analysis {
        let (out, _) = output_paths(&cli, &harness::workspace_root());
        if let Err(why) = update_analysis(&out) {
            eprintln!("{}: {why}", out.display());
            std::process::exit(1);
        }
        println!("updated the analysis in {}", out.display());
        return;
    }
    let wanted = |group: &str| cli.only.is_empty() || cli.only.iter().any(|g| g == group);
    let scratch = TempDir::new().expect("temp dir for the benchmark");
    let settings = Settings::new(cli.quick, cli.repeats, scratch.path().to_path_buf());
    let root = harness::workspace_root();
    let (out, chart) = output_paths(&cli, &root);

    let mut results = Results::default();
    let mut progress = Progress::new(estimate_steps(&settings));
    let disk = pattern_file(&settings.work, "disk.img", settings.disk_size as usize, 1);
    let source = pattern_file(&settings.work, "source.img", settings.disk_size as usize, 2);
    let workloads = settings.block_workloads(source.clone());

    if wanted("multihttp") || wanted("server") || wanted("write-through") {
        // One server serves the plugin comparisons and the HTTP-only
        // one, so its peak memory covers the heaviest of them.
        let server = DiskServer::start(&disk, &[]);
        results.note_command(format!(
            "http-disk-server --disk {} --ip 127.0.0.1 --port PORT",
            disk.display()
        ));
        if wanted("multihttp") {
            multihttp_group(
                &mut results,
                &settings,
                &mut progress,
                &server,
                &disk,
                &workloads,
            );
        }
        if wanted("server") {
            server_group(&mut results, &settings, &mut progress, &server, &disk);
        }
        if wanted("write-through") {
            write_through_group(&mut results, &settings, &mut progress, &server, &disk);
        }
        record_memory(
            &mut results,
            "http-disk-server",
            "all of the above",
            server.proc.pid(),
        );
    }
    if wanted("sharded") {
        sharded_group(&mut results, &settings, &mut progress, &source, &workloads);
    }
    if wanted("s3") {
        s3_group(&mut results, &settings, &mut progress);
    }
    if wanted("s3-cache") {
        s3_cache::s3_cache_group(&mut results, &settings, &mut progress);
    }
    if wanted("failover") {
        failover::measure_failover(&mut results, &settings, &mut progress);
    }

    let mode = if settings.quick {
        "quick smoke run: figures are indicative only".to_owned()
    } else {
        format!(
            "{} repetitions of {} s runs, {} MiB disks",
            settings.repeats,
            settings.runtime.as_secs(),
            settings.disk_size >> 20
        )
    };
    write_report(&results, &mode, &out, &chart);
    drop(scratch);
    // Speed is never asserted, but our own components failing a case (or
    // a client error during failover) is a bug the smoke run must report.
    let our_failures: Vec<String> = results
        .comparisons
        .iter()
        .filter_map(|c| {
            c.ours
                .failure
                .as_ref()
                .map(|why| format!("{} / {}: {why}", c.group, c.case))
        })
        .chain(
            results
                .failover_failure
                .iter()
                .map(|why| format!("failover: {why}")),
        )
        .collect();
    if !our_failures.is_empty() {
        eprintln!("our components failed:\n  {}", our_failures.join("\n  "));
        std::process::exit(1);
    }
}

fn update_analysis(report: &Path) -> Result<(), String> {
    let text = fs::read_to_string(report).map_err(|e| e.to_string())?;
    let updated = report::with_analysis(&text, report::ANALYSIS)?;
    fs::write(report, updated).map_err(|e| e.to_string())
}

fn output_paths(cli: &Cli, root: &Path) -> (PathBuf, PathBuf) {
    let out = cli.out.clone().unwrap_or_else(|| {
        if cli.quick {
            root.join("target/bench/BENCHMARKS-quick.md")
        } else {
            root.join("BENCHMARKS.md")
        }
    });
    let chart = cli.chart.clone().unwrap_or_else(|| {
        if cli.quick {
            out.with_extension("svg")
        } else {
            root.join("bench/ratios.svg")
        }
    });
    (out, chart)
}

fn estimate_steps(settings: &Settings) -> usize {
    let block_cases = settings.block_workloads(PathBuf::new()).len();
    let write_through_cases = settings.write_through_workloads().len();
    // multihttp: 3 targets, server: 5 runs per repetition, sharded: 2
    // targets, s3: 3 (ours, the peer, the store alone); write-through: 3,
    // and write-back in one case; s3-cache: 3 per case.
    let s3_cache = s3_cache::settings(settings);
    settings.repeats * (block_cases * 3 + 5 + block_cases * 5)
        + settings.write_through_repeats * (write_through_cases * 3 + 1)
        + s3_cache.repeats * s3_cache::workloads().len() * 3
        + settings.failovers
}

/// multihttp -> http-disk-server, against nbdkit's curl plugin -> the same
/// server (goal 1.2x) and nbdkit's file plugin on the same file (the
/// ceiling without HTTP, no goal).
fn multihttp_group(
    results: &mut Results,
    settings: &Settings,
    progress: &mut Progress,
    server: &DiskServer,
    disk: &Path,
    workloads: &[Workload],
) {
    let started = (|| {
        let ours = NbdTarget::start(
            "multihttp",
            &[],
            &artifact("libmultihttp.so"),
            &[
                format!("urls={}", server.url()),
                format!("device-size={}", settings.disk_size),
            ],
        )?;
        let curl = NbdTarget::start(
            "nbdkit curl",
            &[],
            Path::new("curl"),
            &[format!("url={}/", server.url())],
        )?;
        let file = NbdTarget::start(
            "nbdkit file",
            &[],
            Path::new("file"),
            &[format!("file={}", disk.display())],
        )?;
        Ok::<_, String>((ours, curl, file))
    })();
    let (ours, curl, file) = match started {
        Ok(targets) => targets,
        Err(why) => return results.skipped.push(("multihttp".into(), why)),
    };
    compare_block_targets(
        results,
        settings,
        progress,
        &Lineup {
            group: "multihttp → http-disk-server",
            ours: &ours,
            peers: &[
                Peer {
                    target: &curl,
                    goal: Some(1.2),
                },
                Peer {
                    target: &file,
                    goal: None,
                },
            ],
            alone: None,
            backend: &[Watched {
                role: "http-disk-server".into(),
                pid: server.proc.pid(),
            }],
            latency: false,
        },
        workloads,
    );
    record_memory(results, "nbdkit + multihttp", "multihttp group", ours.pid());
    record_memory(results, "nbdkit + curl", "multihttp group", curl.pid());
}

fn server_group(
    results: &mut Results,
    settings: &Settings,
    progress: &mut Progress,
    server: &DiskServer,
    disk: &Path,
) {
    let nginx = http::Nginx::start(&settings.work, disk);
    if let Err(why) = &nginx {
        progress.note(why);
    }
    results.note_command(
        "nginx -c nginx.conf (worker_processes auto, sendfile on, serving the same file)".into(),
    );
    http::compare_servers(
        results,
        settings,
        progress,
        &format!("{}/", server.url()),
        nginx.as_ref().ok(),
        nginx.as_ref().err().map(String::as_str),
    );
}

/// What write-through (multihttp's default: a write is acknowledged once
/// the server has made it durable) costs: random 4 KiB writes at queue
/// depth 1 and 16 through multihttp -> http-disk-server, against the same
/// file written here with `pwrite` + `fdatasync` per write (the physical
/// limit, measured: what the server does per PUT, without NBD or HTTP)
/// and nbdkit's file plugin on that file with FUA forced on every write
/// (a local NBD export as durable); at queue depth 1 also multihttp with
/// `writeback=true` (acknowledged before durable), for context. No goal:
/// the figures are the cost.
fn write_through_group(
    results: &mut Results,
    settings: &Settings,
    progress: &mut Progress,
    server: &DiskServer,
    disk: &Path,
) {
    let settings = settings.write_through();
    let storage = machine::storage_fact(disk);
    progress.note(&storage);
    results
        .facts
        .push(format!("write-through group: {storage}"));
    let started = (|| {
        // Earlier groups leave dirty pages in the file (nbdkit file writes
        // without syncing): the first measured fdatasync must not carry them.
        let file = File::options()
            .write(true)
            .open(disk)
            .and_then(|file| file.sync_data().map(|()| file))
            .map_err(|e| format!("syncing {}: {e}", disk.display()))?;
        let multihttp = |name: &str, extra: &[&str]| {
            let mut params = vec![
                format!("urls={}", server.url()),
                format!("device-size={}", settings.disk_size),
            ];
            params.extend(extra.iter().map(|p| p.to_string()));
            NbdTarget::start(name, &[], &artifact("libmultihttp.so"), &params)
        };
        let ours = multihttp("multihttp (write-through)", &[])?;
        let writeback = multihttp("multihttp writeback=true", &["writeback=true"])?;
        let file_fua = NbdTarget::start(
            "nbdkit file, FUA forced",
            &["--filter=fua"],
            Path::new("file"),
            &[format!("file={}", disk.display()), "fuamode=force".into()],
        )?;
        let local = LocalSync::open("pwrite+fdatasync alone", disk, settings.disk_size)?;
        Ok::<_, String>((file, ours, writeback, file_fua, local))
    })();
    let (file, ours, writeback, file_fua, local) = match started {
        Ok(targets) => targets,
        Err(why) => return results.skipped.push(("write-through".into(), why)),
    };
    // Every run leaves the file clean for the next (see SyncedAfterRun).
    let synced = |inner| SyncedAfterRun { inner, file: &file };
    let (ours, writeback, file_fua, local) = (
        synced(&ours),
        synced(&writeback),
        synced(&file_fua),
        synced(&local),
    );
    let backend = [Watched {
        role: "http-disk-server".into(),
        pid: server.proc.pid(),
    }];
    for workload in settings.write_through_workloads() {
        let mut peers = vec![Peer {
            target: &file_fua,
            goal: None,
        }];
        // Write-back only where one writer waits for each write: what
        // the sync costs it. (Kept out of queue depth 16 for time.)
        if matches!(&workload, Workload::Fio(job) if job.iodepth == 1) {
            peers.push(Peer {
                target: &writeback,
                goal: None,
            });
        }
        compare_block_targets(
            results,
            &settings,
            progress,
            &Lineup {
                group: "multihttp write-through → http-disk-server",
                ours: &ours,
                peers: &peers,
                alone: Some(&local),
                backend: &backend,
                latency: true,
            },
            std::slice::from_ref(&workload),
        );
    }
}

/// sharded (a chunk directory) against nbdkit's file plugin on a plain
/// file on the same filesystem (goal 0.8x); both prefilled with the same
/// data first, so reads read data, not holes.
fn sharded_group(
    results: &mut Results,
    settings: &Settings,
    progress: &mut Progress,
    source: &Path,
    workloads: &[Workload],
) {
    let plugin = bin_dir().join("libsharded.so");
    if !plugin.exists() {
        results.skipped.push((
            "sharded".into(),
            format!("{} is not built", plugin.display()),
        ));
        return;
    }
    let dir = settings.work.join("sharded");
    let plain = settings.work.join("plain.img");
    let started = (|| {
        let ours = NbdTarget::start(
            "sharded",
            &[],
            &plugin,
            &[
                format!("dir={}", dir.display()),
                format!("size={}", settings.disk_size),
            ],
        )?;
        fs::File::create(&plain)
            .and_then(|f| f.set_len(settings.disk_size))
            .map_err(|e| format!("creating {}: {e}", plain.display()))?;
        let file = NbdTarget::start(
            "nbdkit file",
            &[],
            Path::new("file"),
            &[format!("file={}", plain.display())],
        )?;
        Ok::<_, String>((ours, file))
    })();
    let (ours, file) = match started {
        Ok(targets) => targets,
        Err(why) => return results.skipped.push(("sharded".into(), why)),
    };
    for target in [&ours, &file] {
        let fill = Workload::CopyIn(source.to_path_buf());
        if let Err(why) = fill.run(
            &target.uri(),
            settings.disk_size,
            Duration::ZERO,
            &settings.work,
        ) {
            results.skipped.push((
                "sharded".into(),
                format!("prefilling {}: {why}", target.name),
            ));
            return;
        }
    }
    compare_block_targets(
        results,
        settings,
        progress,
        &Lineup {
            group: "sharded",
            ours: &ours,
            peers: &[Peer {
                target: &file,
                goal: Some(0.8),
            }],
            alone: None,
            backend: &[],
            latency: false,
        },
        workloads,
    );
    record_memory(results, "nbdkit + sharded", "sharded group", ours.pid());
}

/// s3 on Garage against nbdkit's own S3 plugin (Python, boto3) on the
/// same Garage bucket (goal 5x). Both use 64 KiB objects: nbdkit 1.32's S3
/// plugin refuses larger ones ("minimum block size between 1 and 64K"),
/// and it needs the blocksize filter to accept requests that are not
/// multiples of its object size (what a user would put in front of it).
/// The disk is capped at 32 MiB: the peer is slow to fill.
const OBJECT_SIZE: u64 = 64 << 10;

fn s3_group(results: &mut Results, settings: &Settings, progress: &mut Progress) {
    let plugin = bin_dir().join("libs3.so");
    if !plugin.exists() {
        results
            .skipped
            .push(("s3".into(), format!("{} is not built", plugin.display())));
        return;
    }
    if let Some(why) = garage_missing() {
        return results.skipped.push(("s3".into(), why));
    }
    let mut settings = settings.clone();
    settings.disk_size = settings.disk_size.min(32 << 20);
    let source = pattern_file(
        &settings.work,
        "s3-source.img",
        settings.disk_size as usize,
        3,
    );
    let workloads = settings.block_workloads(source.clone());
    let garage = harness::garage::Garage::start();
    results.note_command(
        "garage server --single-node --default-bucket (sqlite, replication 1)".into(),
    );
    let started = (|| {
        let mut ours_params = garage.params("ours/");
        ours_params.push(format!("size={}", settings.disk_size));
        ours_params.push(format!("chunk-size={OBJECT_SIZE}"));
        let ours = NbdTarget::start("s3", &[], &plugin, &ours_params)?;
        let access = format!("AWS_ACCESS_KEY_ID={}", garage.access_key);
        let secret = format!("AWS_SECRET_ACCESS_KEY={}", garage.secret_key);
        let region = format!("AWS_DEFAULT_REGION={}", harness::garage::REGION);
        let path = format!(
            "PATH=/usr/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        let peer = NbdTarget::start_wrapped(
            "nbdkit S3 (boto3)",
            &["env", &access, &secret, &region, &path],
            &["--filter=blocksize"],
            Path::new("S3"),
            &[
                format!("endpoint-url={}", garage.endpoint()),
                format!("bucket={}", garage.bucket),
                "key=peer/".into(),
                format!("size={}", settings.disk_size),
                format!("object-size={OBJECT_SIZE}"),
            ],
        )?;
        Ok::<_, String>((ours, peer))
    })();
    let (ours, peer) = match started {
        Ok(targets) => targets,
        Err(why) => return results.skipped.push(("s3".into(), why)),
    };
    let store = match DirectStore::start(
        "Garage alone",
        &StoreAccess {
            endpoint: &garage.endpoint(),
            bucket: &garage.bucket,
            region: harness::garage::REGION,
            access_key: &garage.access_key,
            secret_key: &garage.secret_key,
        },
        "direct/",
        OBJECT_SIZE,
        settings.disk_size,
    ) {
        // Ours and the peer are still compared without the ceiling.
        Ok(store) => Some(store),
        Err(why) => {
            results.skipped.push(("s3: Garage alone".into(), why));
            None
        }
    };
    for target in [&ours, &peer] {
        let fill = Workload::CopyIn(source.clone());
        if let Err(why) = fill.run(
            &target.uri(),
            settings.disk_size,
            Duration::ZERO,
            &settings.work,
        ) {
            results
                .skipped
                .push(("s3".into(), format!("prefilling {}: {why}", target.name)));
            return;
        }
    }
    compare_block_targets(
        results,
        &settings,
        progress,
        &Lineup {
            group: "s3 on Garage",
            ours: &ours,
            peers: &[Peer {
                target: &peer,
                goal: Some(5.0),
            }],
            alone: store.as_ref().map(|store| store as &dyn Target),
            backend: &garage
                .pid()
                .map(|pid| Watched {
                    role: "Garage".into(),
                    pid,
                })
                .into_iter()
                .collect::<Vec<_>>(),
            latency: false,
        },
        &workloads,
    );
    record_memory(results, "nbdkit + s3", "s3 group", ours.pid());
    record_memory(results, "nbdkit + S3 (boto3)", "s3 group", peer.pid());
}

/// Why the groups on Garage cannot run, if they cannot.
fn garage_missing() -> Option<String> {
    let garage_path = std::env::var_os("HND_GARAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/http-nbd-transfer/garage/bin/garage"));
    (!garage_path.exists())
        .then(|| "Garage is not installed (scripts/install-deps builds it)".to_owned())
}

fn record_memory(results: &mut Results, process: &str, after: &str, pid: i32) {
    if let Some(peak_kib) = machine::peak_rss_kib(pid) {
        results.memory.push(MemoryReading {
            process: process.into(),
            after: after.into(),
            peak_kib,
        });
    }
}

fn write_report(results: &Results, mode: &str, out: &Path, chart: &Path) {
    let out_dir = out.parent().unwrap_or(Path::new("."));
    for path in [out, chart] {
        if let Some(parent) = path.parent() {
            let _ = fs::create_dir_all(parent);
        }
    }
    let chart_link = chart
        .strip_prefix(out_dir)
        .map_or_else(|_| chart.display().to_string(), |p| p.display().to_string());
    let markdown = report::markdown(results, &machine::facts(), mode, Some(&chart_link));
    if let Err(e) = fs::write(out, markdown) {
        eprintln!("cannot write {}: {e}", out.display());
        std::process::exit(1);
    }
    if let Err(e) = fs::write(chart, report::svg_chart(results)) {
        eprintln!("cannot write {}: {e}", chart.display());
        std::process::exit(1);
    }
    eprintln!("wrote {} and {}", out.display(), chart.display());
}
