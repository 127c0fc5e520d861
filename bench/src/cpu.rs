//! CPU accounting around each run: how many cores the target's nbdkit,
//! the backend it talks to (http-disk-server, Garage) and the whole
//! machine used, and the CPU time spent per operation.
//!
//! Why: on a 2-core machine that runs the load tool, nbdkit and the
//! backend together, a throughput ratio mixes how efficient a plugin is
//! with how busy the machine was. CPU per operation (nbdkit + backend)
//! changes little when the machine is noisy, and cores used by the
//! backend show when a store, not the plugin, is the limit. Reported per
//! run so the explanations in ANALYSIS.md are measured by every run, not
//! only once by hand.

use std::fs;

/// A process watched during a run, by role ("nbdkit", "Garage", ...).
#[derive(Clone, Debug)]
pub struct Watched {
    pub role: String,
    pub pid: i32,
}

/// CPU counters at one instant: per watched process (`None` when it
/// could not be read) and the machine's busy time, in seconds.
struct Snapshot {
    processes: Vec<Option<f64>>,
    machine: Option<MachineTimes>,
    /// CPU of this process's waited-for children: the load tool (fio,
    /// nbdcopy) is the only child that ends during a run.
    children: f64,
}

/// The machine's CPU time, all CPUs together, in seconds.
#[derive(Clone, Copy)]
struct MachineTimes {
    /// Everything but idle and iowait (steal included: the hypervisor
    /// gave that time to another guest).
    busy: f64,
    /// Time this virtual machine was ready to run but the hypervisor ran
    /// someone else: a noisy neighbour, which no target can help.
    steal: f64,
}

/// What one run used.
#[derive(Clone, Debug, Default)]
pub struct CpuUse {
    /// Cores used by each watched process over the run, in watch order.
    pub cores: Vec<Option<f64>>,
    /// Cores used by the whole machine (everything not idle or iowait).
    pub machine_cores: Option<f64>,
    /// Of `machine_cores`, cores taken by the hypervisor for other guests.
    pub steal_cores: Option<f64>,
    /// Cores used by the load tool (fio, nbdcopy) itself.
    pub load_tool_cores: Option<f64>,
    /// CPU seconds of all watched processes together.
    pub watched_seconds: Option<f64>,
    /// `watched_seconds` per unit of work (one I/O, or one MiB), filled
    /// in by the caller, which knows how much work the run did.
    pub seconds_per_unit: Option<f64>,
}

/// Clock ticks per second of /proc's counters.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all its threads), in seconds.
fn process_seconds(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields after its ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

/// Busy and steal time of all CPUs together, from /proc/stat's `cpu` line.
fn machine_times() -> Option<MachineTimes> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: busy is all
    // but idle (3) and iowait (4); guest time is already in user.
    let busy: f64 = values
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    let steal = values.get(7).copied().unwrap_or(0.0);
    Some(MachineTimes {
        busy: busy / ticks_per_second(),
        steal: steal / ticks_per_second(),
    })
}

/// utime + stime of the children waited for so far, in seconds.
fn children_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn snapshot(watched: &[Watched]) -> Snapshot {
    Snapshot {
        processes: watched.iter().map(|w| process_seconds(w.pid)).collect(),
        machine: machine_times(),
        children: children_seconds(),
    }
}

/// Runs `run` and reports the CPU the watched processes and the machine
/// used meanwhile, over `wall_seconds` (measured by the caller's clock
/// inside `run`, returned with its result).
pub fn measure<T>(watched: &[Watched], run: impl FnOnce() -> (T, f64)) -> (T, CpuUse) {
    let before = snapshot(watched);
    let (result, wall_seconds) = run();
    let after = snapshot(watched);
    (result, usage(&before, &after, wall_seconds))
}

fn usage(before: &Snapshot, after: &Snapshot, wall_seconds: f64) -> CpuUse {
    let spent: Vec<Option<f64>> = before
        .processes
        .iter()
        .zip(&after.processes)
        .map(|(b, a)| Some(a.as_ref()? - b.as_ref()?))
        .collect();
    let per_wall = |seconds: f64| (wall_seconds > 0.0).then(|| seconds / wall_seconds);
    CpuUse {
        cores: spent.iter().map(|s| s.and_then(per_wall)).collect(),
        machine_cores: after
            .machine
            .zip(before.machine)
            .and_then(|(a, b)| per_wall(a.busy - b.busy)),
        steal_cores: after
            .machine
            .zip(before.machine)
            .and_then(|(a, b)| per_wall(a.steal - b.steal)),
        load_tool_cores: per_wall(after.children - before.children),
        watched_seconds: spent.iter().copied().sum(),
        seconds_per_unit: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_of_this_process_shows_up() {
        let me = Watched {
            role: "bench".into(),
            pid: std::process::id() as i32,
        };
        // Spins until this thread has had 300 ms of CPU, however busy the
        // machine is (other tests, other jobs): bounded at 20 s of wall time.
        let ((), used) = measure(&[me], || {
            let started = std::time::Instant::now();
            let mut x = 1u64;
            while thread_cpu_seconds() < 0.3 && started.elapsed().as_secs() < 20 {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            ((), started.elapsed().as_secs_f64())
        });
        // Ticks are 10 ms coarse; other test threads only add to it.
        let spent = used.watched_seconds.expect("own counters readable");
        assert!(spent >= 0.25, "{spent} s");
        assert!(used.cores[0].unwrap() > 0.0);
        assert!(used.machine_cores.expect("machine counters") > 0.0);
    }

    fn thread_cpu_seconds() -> f64 {
        // SAFETY: clock_gettime fills the zeroed timespec it is given.
        let now = unsafe {
            let mut now: libc::timespec = std::mem::zeroed();
            libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now);
            now
        };
        now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
    }

    #[test]
    fn a_child_that_ends_during_the_run_is_the_load_tool() {
        let (wall, used) = measure(&[], || {
            let started = std::time::Instant::now();
            let status = std::process::Command::new("sh")
                .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
                .status()
                .expect("sh runs");
            assert!(status.success());
            let wall = started.elapsed().as_secs_f64();
            (wall, wall)
        });
        // 200,000 shell iterations take well over 50 ms of CPU anywhere.
        let spent = used.load_tool_cores.unwrap() * wall;
        assert!(spent > 0.05, "{spent} s");
    }

    #[test]
    fn a_vanished_process_gives_no_figure() {
        let gone = Watched {
            role: "gone".into(),
            pid: i32::MAX,
        };
        let ((), used) = measure(&[gone], || ((), 1.0));
        assert_eq!(used.cores, vec![None]);
        assert_eq!(used.watched_seconds, None);
    }
}
