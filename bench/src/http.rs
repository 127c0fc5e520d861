//! http-disk-server alone, against nginx serving the same file: random
//! Range GETs of 4 KiB and 1 MiB, and random 4 KiB PUTs (ours only: nginx
//! does not write), driven by `wrk` with a Lua script per case.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{free_port, wait_until, Proc};

use crate::cpu::CpuUse;
use crate::progress::Progress;
use crate::results::{Comparison, Measured, Results, Series};
use crate::settings::Settings;
use crate::workload::output_of;

/// wrk load: 2 threads (one per core here), 16 connections.
const WRK_THREADS: u32 = 2;
const WRK_CONNECTIONS: u32 = 16;

/// nginx on a free loopback port serving `disk` as `/disk.img`.
pub struct Nginx {
    /// Kept only to stop nginx (with its workers) when dropped.
    _proc: Proc,
    pub url: String,
}

impl Nginx {
    pub fn start(work: &Path, disk: &Path) -> Result<Nginx, String> {
        let root = work.join("nginx");
        let www = root.join("www");
        fs::create_dir_all(&www).map_err(|e| format!("creating {}: {e}", www.display()))?;
        let served = www.join("disk.img");
        let _ = fs::remove_file(&served);
        std::os::unix::fs::symlink(disk, &served)
            .map_err(|e| format!("linking {}: {e}", served.display()))?;
        let port = free_port();
        let r = root.display();
        // Temp paths inside our directory: the packaged defaults under
        // /var/lib/nginx may not exist when nginx was never started.
        let config = format!(
            "daemon off;\nworker_processes auto;\npid {r}/nginx.pid;\nerror_log {r}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 1000000;\n\
               client_body_temp_path {r}/body;\n  proxy_temp_path {r}/proxy;\n\
               fastcgi_temp_path {r}/fastcgi;\n  uwsgi_temp_path {r}/uwsgi;\n\
               scgi_temp_path {r}/scgi;\n\
               server {{ listen 127.0.0.1:{port}; root {www}; }}\n}}\n",
            www = www.display()
        );
        let config_path = root.join("nginx.conf");
        fs::write(&config_path, config)
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-c").arg(&config_path).arg("-p").arg(&root);
        let mut proc = Proc::spawn("nginx", cmd);
        let address = format!("127.0.0.1:{port}");
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(&address).is_ok() || proc.exited().is_some()
        });
        if !up || proc.exited().is_some() {
            return Err(format!(
                "nginx did not start: {}",
                proc.output.snapshot().join(" | ")
            ));
        }
        Ok(Nginx {
            _proc: proc,
            url: format!("http://{address}/disk.img"),
        })
    }
}

/// One HTTP case: a wrk script drawing random aligned ranges.
struct HttpCase {
    label: &'static str,
    method: &'static str,
    block_size: u64,
}

const CASES: [HttpCase; 3] = [
    HttpCase {
        label: "Range GET 4 KiB",
        method: "GET",
        block_size: 4096,
    },
    HttpCase {
        label: "Range GET 1 MiB",
        method: "GET",
        block_size: 1 << 20,
    },
    HttpCase {
        label: "PUT 4 KiB",
        method: "PUT",
        block_size: 4096,
    },
];

/// The Lua script for one case: random block-aligned ranges inside the disk.
fn wrk_script(case: &HttpCase, disk_size: u64) -> String {
    let blocks = disk_size / case.block_size;
    let request = if case.method == "GET" {
        "wrk.format(\"GET\", nil, {[\"Range\"] = \"bytes=\" .. first .. \"-\" .. last})".to_owned()
    } else {
        format!(
            "wrk.format(\"PUT\", nil, {{[\"Content-Range\"] = \"bytes \" .. first .. \"-\" .. last .. \"/{disk_size}\"}}, body)"
        )
    };
    format!(
        "math.randomseed(42)\n\
         body = string.rep(\"x\", {bs})\n\
         request = function()\n\
           local first = math.random(0, {last_block}) * {bs}\n\
           local last = first + {bs} - 1\n\
           return {request}\n\
         end\n",
        bs = case.block_size,
        last_block = blocks - 1,
    )
}

/// Runs wrk once; requests per second, or why it failed (including any
/// non-2xx reply: a fast error is not a result).
fn wrk(url: &str, script: &Path, runtime: Duration) -> Result<f64, String> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        format!("-t{WRK_THREADS}"),
        format!("-c{WRK_CONNECTIONS}"),
        format!("-d{}s", runtime.as_secs().max(1)),
        "-s".into(),
        script.display().to_string(),
        url.into(),
    ]);
    let out = output_of(cmd, runtime + Duration::from_secs(60))?;
    if let Some(line) = out
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        return Err(format!("wrk saw errors: {}", line.trim()));
    }
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk output: {out}"))
}

/// Server alone vs nginx on the same file.
pub fn compare_servers(
    results: &mut Results,
    settings: &Settings,
    progress: &mut Progress,
    ours_url: &str,
    nginx: Option<&Nginx>,
    nginx_failure: Option<&str>,
) {
    let scripts_dir: PathBuf = settings.work.join("wrk");
    let _ = fs::create_dir_all(&scripts_dir);
    results.note_command(format!(
        "wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{}s -s SCRIPT.lua URL",
        settings.runtime.as_secs().max(1)
    ));
    for (index, case) in CASES.iter().enumerate() {
        let script = scripts_dir.join(format!("case{index}.lua"));
        if let Err(e) = fs::write(&script, wrk_script(case, settings.disk_size)) {
            progress.note(&format!("cannot write {}: {e}", script.display()));
            continue;
        }
        // Only GETs have a peer (goal 0.9x nginx); nginx cannot PUT.
        let peer_runs = case.method == "GET";
        let mut comparison = Comparison {
            group: "http-disk-server alone".into(),
            case: case.label.into(),
            unit: "req/s",
            // nginx runs as several processes: no CPU accounting here.
            cpu_roles: Vec::new(),
            latency: false,
            ours: Series::new("http-disk-server", None),
            peers: if peer_runs {
                vec![Series::new("nginx", Some(0.9))]
            } else {
                Vec::new()
            },
        };
        if let (Some(series), Some(why)) = (comparison.peers.first_mut(), nginx_failure) {
            series.failure = Some(why.to_owned());
        }
        for _ in 0..settings.repeats {
            progress.start(&format!("server: {} on http-disk-server", case.label));
            let outcome = wrk(ours_url, &script, settings.runtime);
            report(progress, &outcome);
            comparison
                .ours
                .record(outcome.map(Measured::from), CpuUse::default());
            if let (Some(series), Some(nginx)) = (comparison.peers.first_mut(), nginx) {
                progress.start(&format!("server: {} on nginx", case.label));
                let outcome = wrk(&nginx.url, &script, settings.runtime);
                report(progress, &outcome);
                series.record(outcome.map(Measured::from), CpuUse::default());
            }
        }
        results.comparisons.push(comparison);
    }
}

fn report(progress: &mut Progress, outcome: &Result<f64, String>) {
    match outcome {
        Ok(v) => progress.done(&format!("{v:.0} req/s")),
        Err(why) => progress.done(&format!("FAILED: {why}")),
    }
}
