//! Failover pause: two http-disk-servers on one file, the multihttp plugin
//! under nbdkit, and an nbdsh loop writing 4 KiB blocks and stamping each
//! completed write with CLOCK_MONOTONIC. The active server is SIGKILLed;
//! the pause is the time from the kill to the next completed write. The
//! killed server is restarted on its port before the next round, so each
//! round kills whichever server the plugin moved to.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{artifact, debian_tool, DiskServer, Proc};

use crate::progress::Progress;
use crate::results::Results;
use crate::settings::Settings;
use crate::targets::NbdTarget;

/// The writer: nbdsh runs it with `h` connected. Timestamps go to a file
/// (not stdout) so tens of thousands of lines cost nothing to collect.
/// It stops at its deadline or, once the rounds are done, when the STOP
/// file appears (looked for every 64 writes).
const WRITER: &str = r#"
import os, time
out = open(os.environ["STAMPS"], "w", buffering=1)
deadline = time.monotonic() + float(os.environ["SECONDS"])
stop = os.environ["STOP"]
block = b"\xa5" * 4096
blocks = h.get_size() // 4096
i = 0
while time.monotonic() < deadline and not (i % 64 == 0 and os.path.exists(stop)):
    h.pwrite(block, (i % blocks) * 4096)
    out.write("%.6f\n" % time.monotonic())
    i += 1
out.close()
"#;

fn monotonic_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Bytes a process has written through syscalls so far (/proc/PID/io).
fn written_bytes(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Index of the server the writes currently go to: the one whose written
/// byte count grows over a short window.
fn active_server(servers: &[DiskServer]) -> Option<usize> {
    let before: Vec<u64> = servers
        .iter()
        .map(|s| written_bytes(s.proc.pid()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let growth: Vec<u64> = servers
        .iter()
        .zip(&before)
        .map(|(s, b)| written_bytes(s.proc.pid()).saturating_sub(*b))
        .collect();
    let (index, grew) = growth.iter().enumerate().max_by_key(|(_, g)| **g)?;
    (*grew > 0).then_some(index)
}

pub fn measure_failover(results: &mut Results, settings: &Settings, progress: &mut Progress) {
    match run_rounds(results, settings, progress) {
        Ok(pauses) => results.failover_pauses = pauses,
        Err(why) => {
            progress.note(&format!("failover measurement failed: {why}"));
            results.failover_failure = Some(why);
        }
    }
}

fn run_rounds(
    results: &mut Results,
    settings: &Settings,
    progress: &mut Progress,
) -> Result<Vec<f64>, String> {
    let disk = settings.work.join("failover.img");
    let file = fs::File::create(&disk).map_err(|e| format!("creating {}: {e}", disk.display()))?;
    file.set_len(16 << 20)
        .map_err(|e| format!("sizing {}: {e}", disk.display()))?;
    let mut servers = vec![DiskServer::start(&disk, &[]), DiskServer::start(&disk, &[])];
    let urls = format!("urls={},{}", servers[0].url(), servers[1].url());
    let target = NbdTarget::start(
        "multihttp",
        &[],
        &artifact("libmultihttp.so"),
        &[urls, format!("device-size={}", 16 << 20)],
    )?;
    results.note_command(target.command.clone());

    let stamps = settings.work.join("failover-stamps.txt");
    let stop = settings.work.join("failover-stop");
    let script = settings.work.join("failover-writer.py");
    fs::write(&script, WRITER).map_err(|e| format!("writing {}: {e}", script.display()))?;
    // Each round: ~1 s of steady writes, the kill, ~1.5 s to recover and
    // restart the killed server. Plus slack for start-up.
    let seconds = settings.failovers as f64 * 3.0 + 3.0;
    let mut cmd = debian_tool("nbdsh");
    cmd.args(["-u", &target.uri(), "-c"])
        .arg(format!(
            "exec(open({:?}).read())",
            script.display().to_string()
        ))
        .env("STAMPS", &stamps)
        .env("STOP", &stop)
        .env("SECONDS", seconds.to_string());
    results.note_command(
        "nbdsh -u URI -c <loop: h.pwrite(4 KiB); stamp CLOCK_MONOTONIC> while SIGKILLing the active server".into(),
    );
    let mut writer = Proc::spawn("nbdsh-writer", cmd);
    let started = Instant::now();
    let mut kills = Vec::new();
    std::thread::sleep(Duration::from_secs(1));
    for round in 0..settings.failovers {
        progress.start(&format!(
            "failover round {}/{}",
            round + 1,
            settings.failovers
        ));
        let Some(active) = active_server(&servers) else {
            progress.done("no writes seen");
            return Err(format!(
                "round {round}: no server is receiving writes; writer output: {}",
                writer.output.snapshot().join(" | ")
            ));
        };
        let kill_time = monotonic_now();
        servers[active].proc.kill();
        kills.push(kill_time);
        std::thread::sleep(Duration::from_millis(1500));
        let port = servers[active].port;
        servers[active] = DiskServer::start_on_port(&disk, port, &[]).map_err(|p| {
            format!(
                "restarting server on port {port}: {}",
                p.output.snapshot().join(" | ")
            )
        })?;
        progress.done(&format!("killed server {active}"));
        std::thread::sleep(Duration::from_millis(500));
    }
    // Each round ends with writes going again for 0.5 s: stop the writer
    // instead of letting it run out the slack of its deadline.
    fs::write(&stop, "").map_err(|e| format!("writing {}: {e}", stop.display()))?;
    let remaining = Duration::from_secs_f64(seconds + 30.0).saturating_sub(started.elapsed());
    let status = writer.wait_timeout(remaining);
    match status {
        Some(s) if s.success() => {}
        other => {
            return Err(format!(
                "the writer failed ({other:?}): a client saw an error during failover: {}",
                writer.output.snapshot().join(" | ")
            ))
        }
    }
    let completions = read_stamps(&stamps)?;
    kills
        .iter()
        .map(|kill| {
            completions
                .iter()
                .find(|t| *t > kill)
                .map(|t| t - kill)
                .ok_or_else(|| format!("no write completed after the kill at {kill:.3}"))
        })
        .collect()
}

fn read_stamps(path: &Path) -> Result<Vec<f64>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}
