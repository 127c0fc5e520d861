//! fio's outcome, for tests that run it as a verifying client: its exit
//! status, its JSON report (`--output-format=json --output=FILE`) and its
//! messages.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::Proc;

/// One job of fio's JSON report.
#[derive(Debug)]
pub struct FioJob {
    pub name: String,
    pub error: i64,
    pub writes: u64,
    /// Reads, which in a verifying write job are the verify reads.
    pub reads: u64,
    /// Write completion latency (fio's clat: submission to completion),
    /// seconds: median, 99th percentile, max (0 without writes).
    pub write_latency: [f64; 3],
}

/// What fio's JSON report says, per job.
pub fn fio_jobs(json: &Path) -> Vec<FioJob> {
    let text = fs::read_to_string(json).expect("fio wrote its JSON report");
    let report: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("fio's report is not JSON ({e}):\n{text}"));
    let jobs = report["jobs"].as_array().expect("fio's jobs");
    jobs.iter()
        .map(|job| FioJob {
            name: job["jobname"].as_str().unwrap_or("?").to_owned(),
            error: job["error"].as_i64().expect("job error"),
            writes: job["write"]["total_ios"].as_u64().expect("write total_ios"),
            reads: job["read"]["total_ios"].as_u64().expect("read total_ios"),
            write_latency: {
                let clat = &job["write"]["clat_ns"];
                let seconds = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / 1e9;
                [
                    seconds(&clat["percentile"]["50.000000"]),
                    seconds(&clat["percentile"]["99.000000"]),
                    seconds(&clat["max"]),
                ]
            },
        })
        .collect()
}

/// Waits (at most `timeout`) for fio to exit, and asserts it succeeded
/// with `expected_jobs` jobs, each with error 0, writes and verify reads
/// done, and no verify complaint. Returns the jobs.
pub fn assert_fio_clean(
    fio: &mut Proc,
    json: &Path,
    timeout: Duration,
    expected_jobs: usize,
) -> Vec<FioJob> {
    let status = fio.wait_timeout(timeout);
    let log = fio.output.snapshot().join("\n");
    assert!(
        status.is_some_and(|s| s.success()),
        "fio failed ({status:?}):\n{log}\n{}",
        fs::read_to_string(json).unwrap_or_default()
    );
    assert!(!log.contains("verify"), "fio reported:\n{log}");
    let jobs = fio_jobs(json);
    assert_eq!(jobs.len(), expected_jobs, "fio's jobs: {jobs:?}");
    for job in &jobs {
        assert_eq!(job.error, 0, "fio job {}'s error", job.name);
        assert!(
            job.writes > 0 && job.reads > 0,
            "fio job {} did no I/O",
            job.name
        );
    }
    jobs
}

/// Starts fio as a verifying load on the NBD export at `uri`: one job,
/// 4 KiB random writes at queue depth 4 over the first `size` bytes,
/// passes over the region until `runtime`, every block read back and
/// checked (crc32c and fio's header) after each 256 writes and at the
/// end. Any I/O error or bad block ends it with a failure; its report
/// goes to `json` (check it with [`assert_fio_clean`]). Not `time_based`:
/// fio then skips the write-number check that tells a stale block from
/// the latest one.
pub fn start_verifying_load(uri: &str, size: &str, runtime: Duration, json: &Path) -> Proc {
    let mut fio = crate::debian_tool("fio");
    fio.args([
        "--name=load",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        &format!("--size={size}"),
        "--iodepth=4",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--verify_backlog=256",
        "--loops=1000000",
        &format!("--runtime={}s", runtime.as_secs()),
        "--output-format=json",
    ])
    .arg(format!("--output={}", json.display()));
    Proc::spawn("fio", fio)
}
