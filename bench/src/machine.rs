//! Facts about the machine and tool versions, printed with the results so
//! numbers from different machines are never compared blindly.

use std::fs;
use std::path::Path;
use std::process::Command;

/// One line per fact: CPU, cores, memory, kernel, tool versions.
pub fn facts() -> Vec<String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let mut facts = vec![
        format!("CPU: {cpu}, {cores} cores available"),
        format!("Memory: {memory}"),
        format!("Kernel: {}", first_line("uname", &["-r"])),
    ];
    for (tool, args) in [
        ("nbdkit", &["--version"][..]),
        ("fio", &["--version"]),
        ("nbdcopy", &["--version"]),
        ("wrk", &["--version"]),
        ("nginx", &["-v"]),
    ] {
        facts.push(format!("{tool}: {}", first_line(tool, args)));
    }
    facts
}

/// First non-empty line a command prints (stdout or stderr: `nginx -v`
/// and `wrk --version` use stderr, and wrk exits non-zero).
fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("(no output)")
                .to_owned()
        }
        Err(e) => format!("not available ({e})"),
    }
}

/// Peak resident set size (VmHWM) of a live process, in KiB.
pub fn peak_rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What an `fdatasync` of `path` waits for there: its filesystem and
/// device, and whether the device has a volatile write cache (then each
/// `fdatasync` ends with a cache flush) or is tmpfs (then it does nothing).
pub fn storage_fact(path: &Path) -> String {
    let mut findmnt = Command::new("findmnt");
    findmnt.args(["-n", "-o", "FSTYPE,SOURCE", "-T"]).arg(path);
    let found = findmnt.output().ok().map(|out| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = text.split_whitespace();
        let fs_type = words.next().unwrap_or("unknown").to_owned();
        (fs_type, words.next().unwrap_or("unknown").to_owned())
    });
    let Some((fs_type, source)) = found else {
        return format!(
            "backing file {}: filesystem unknown (no findmnt)",
            path.display()
        );
    };
    let what = match fs_type.as_str() {
        "tmpfs" | "ramfs" => "in memory: fdatasync does nothing there, so the local figure \
             is no disk's limit (run with TMPDIR on a disk-backed filesystem)"
            .to_owned(),
        _ => match source.strip_prefix("/dev/").and_then(write_cache) {
            Some(cache) if cache == "write back" => format!(
                "device write cache \"{cache}\": each fdatasync ends with a cache flush \
                 the device must complete"
            ),
            Some(cache) => format!(
                "device write cache \"{cache}\": no volatile cache, fdatasync waits \
                 for the write itself"
            ),
            None => "device write cache unknown".to_owned(),
        },
    };
    format!("backing file on {fs_type} ({source}), {what}",)
}

/// `/sys/block/DEV/queue/write_cache` of a block device or, for a
/// partition, of the disk holding it.
fn write_cache(device: &str) -> Option<String> {
    let node = fs::canonicalize(format!("/sys/class/block/{device}")).ok()?;
    [node.join("queue"), node.parent()?.join("queue")]
        .iter()
        .find_map(|queue| fs::read_to_string(queue.join("write_cache")).ok())
        .map(|cache| cache.trim().to_owned())
}
