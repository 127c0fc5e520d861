//! What a benchmark run measured: comparisons of our component against
//! its peers, case by case, plus the figures that have no peer (failover
//! pauses, peak memory). Filled by the groups, read by the report.

use crate::cpu::CpuUse;
use crate::stats::{median, spread_percent};

/// One measured target in one case: its samples, or why it could not run.
#[derive(Clone, Debug)]
pub struct Series {
    pub target: String,
    pub samples: Vec<f64>,
    /// Set when a run failed (e.g. a peer that cannot write); the reason
    /// goes in the report instead of a number.
    pub failure: Option<String>,
    /// For a peer: the smallest acceptable ratio ours/peer, if any.
    pub goal: Option<f64>,
    /// The backend driven alone with ours's requests by a client that
    /// costs next to nothing: its figure is the most any client sending
    /// those requests reaches on this machine.
    pub ceiling: bool,
    /// CPU used during each successful run, in the order of `samples`.
    pub cpu: Vec<CpuUse>,
}

impl Series {
    pub fn new(target: &str, goal: Option<f64>) -> Series {
        Series {
            target: target.to_owned(),
            samples: Vec::new(),
            failure: None,
            goal,
            ceiling: false,
            cpu: Vec::new(),
        }
    }

    /// A series of the backend driven alone (see [`Series::ceiling`]).
    pub fn ceiling(target: &str) -> Series {
        Series {
            ceiling: true,
            ..Series::new(target, None)
        }
    }

    pub fn record(&mut self, outcome: Result<f64, String>, cpu: CpuUse) {
        match outcome {
            Ok(value) => {
                self.samples.push(value);
                self.cpu.push(cpu);
            }
            Err(why) => {
                if self.failure.is_none() {
                    self.failure = Some(why);
                }
            }
        }
    }

    /// The median, only when every run succeeded.
    pub fn median(&self) -> Option<f64> {
        if self.failure.is_some() {
            return None;
        }
        median(&self.samples)
    }

    pub fn spread(&self) -> Option<f64> {
        spread_percent(&self.samples)
    }

    /// Median over the runs of one CPU figure (`None` if no run has it).
    pub fn cpu_median(&self, figure: impl Fn(&CpuUse) -> Option<f64>) -> Option<f64> {
        let values: Vec<f64> = self.cpu.iter().filter_map(figure).collect();
        median(&values)
    }
}

/// One case (e.g. "4k randread qd16, 1 conn"): ours first, then peers.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub group: String,
    pub case: String,
    /// "IOPS", "MiB/s", "req/s": higher is better for all of them.
    pub unit: &'static str,
    /// Processes whose CPU each run recorded: "nbdkit" (the target's),
    /// then the backend's (e.g. "http-disk-server", "Garage").
    pub cpu_roles: Vec<String>,
    pub ours: Series,
    pub peers: Vec<Series>,
}

impl Comparison {
    /// ours/peer medians, when both exist.
    pub fn ratio(&self, peer: &Series) -> Option<f64> {
        let peer = peer.median()?;
        if peer == 0.0 {
            return None;
        }
        Some(self.ours.median()? / peer)
    }

    /// The highest ratio against the goal peer that any client sending
    /// the backend the same requests as ours could reach on this machine:
    /// the backend's CPU per operation while ours ran, as if it had all
    /// `cores` to itself (and the client and load tool cost nothing),
    /// against the peer's measured figure. A goal above it cannot be met
    /// here by any change to the client; one below it is not bound by
    /// the backend. `None` without a backend, a goal peer or figures.
    pub fn backend_ceiling(&self, cores: f64) -> Option<f64> {
        if self.cpu_roles.len() < 2 {
            return None;
        }
        let backend_cores = self
            .ours
            .cpu_median(|used| used.cores[1..].iter().copied().sum::<Option<f64>>())?;
        let peer = self.peers.iter().find(|p| p.goal.is_some())?.median()?;
        if backend_cores <= 0.0 || peer <= 0.0 {
            return None;
        }
        Some(cores * self.ours.median()? / backend_cores / peer)
    }

    /// The backend alone against the goal peer: the highest ratio any
    /// client sending the backend ours's requests reached here, measured
    /// (see [`Series::ceiling`]). `None` without both figures.
    pub fn measured_ceiling(&self) -> Option<f64> {
        let alone = self.peers.iter().find(|p| p.ceiling)?.median()?;
        let peer = self.peers.iter().find(|p| p.goal.is_some())?.median()?;
        (peer > 0.0).then(|| alone / peer)
    }

    /// Whether the goal against `peer` is met; `None` without a goal or
    /// a ratio.
    pub fn goal_met(&self, peer: &Series) -> Option<bool> {
        Some(self.ratio(peer)? >= peer.goal?)
    }
}

/// Peak resident memory of one process after a group's heaviest load.
#[derive(Clone, Debug)]
pub struct MemoryReading {
    pub process: String,
    pub after: String,
    pub peak_kib: u64,
}

/// Everything one run measured.
#[derive(Default, Debug)]
pub struct Results {
    pub comparisons: Vec<Comparison>,
    /// Seconds from SIGKILL of the active server to the next completed write.
    pub failover_pauses: Vec<f64>,
    pub failover_failure: Option<String>,
    pub memory: Vec<MemoryReading>,
    /// Groups not run, and why (e.g. a plugin not built).
    pub skipped: Vec<(String, String)>,
    /// Exact command lines used, in order of first use.
    pub commands: Vec<String>,
}

impl Results {
    pub fn note_command(&mut self, command: String) {
        if !self.commands.contains(&command) {
            self.commands.push(command);
        }
    }
}
