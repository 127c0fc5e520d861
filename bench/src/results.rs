//! What a benchmark run measured: comparisons of our component against
//! its peers, case by case, plus the figures that have no peer (failover
//! pauses, peak memory). Filled by the groups, read by the report.

use crate::cpu::CpuUse;
use crate::stats::{median, percentile, spread_percent};

/// How long the I/Os of one run took, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// From every I/O's time, in seconds; `None` when there are none.
    pub fn of(samples: &mut [f64]) -> Option<Latency> {
        samples.sort_by(f64::total_cmp);
        Some(Latency {
            median: percentile(samples, 50.0)?,
            p99: percentile(samples, 99.0)?,
            max: *samples.last()?,
        })
    }
}

/// What one run measured: its figure in the case's unit and, when the
/// load tool timed each I/O, their latency.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub value: f64,
    pub latency: Option<Latency>,
}

impl From<f64> for Measured {
    fn from(value: f64) -> Measured {
        Measured {
            value,
            latency: None,
        }
    }
}

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
    /// Latency of each successful run that timed its I/Os.
    pub latency: Vec<Latency>,
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
            latency: Vec::new(),
        }
    }

    /// A series of the backend driven alone (see [`Series::ceiling`]).
    pub fn ceiling(target: &str) -> Series {
        Series {
            ceiling: true,
            ..Series::new(target, None)
        }
    }

    pub fn record(&mut self, outcome: Result<Measured, String>, cpu: CpuUse) {
        match outcome {
            Ok(measured) => {
                self.samples.push(measured.value);
                self.cpu.push(cpu);
                self.latency.extend(measured.latency);
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

    /// Latency over the runs: the median of each run's median and p99,
    /// and the largest of any run; `None` when no run timed its I/Os or
    /// one failed.
    pub fn latency(&self) -> Option<Latency> {
        if self.failure.is_some() {
            return None;
        }
        let of = |figure: fn(&Latency) -> f64| {
            let values: Vec<f64> = self.latency.iter().map(figure).collect();
            median(&values)
        };
        Some(Latency {
            median: of(|l| l.median)?,
            p99: of(|l| l.p99)?,
            max: self.latency.iter().map(|l| l.max).reduce(f64::max)?,
        })
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
    /// Whether the report gives each target's I/O latency in this case
    /// (where a consumer's time budget per write is the question).
    pub latency: bool,
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
    /// What a group found about where it ran (the filesystem under its
    /// backing file), reported with the machine's facts.
    pub facts: Vec<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_of_a_run_and_over_runs() {
        let mut times: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let run = Latency::of(&mut times).unwrap();
        assert_eq!(
            run,
            Latency {
                median: 50.0,
                p99: 99.0,
                max: 100.0
            }
        );
        assert_eq!(Latency::of(&mut []), None);
        let mut series = Series::new("ours", None);
        for (median, max) in [(1.0, 5.0), (3.0, 9.0), (2.0, 4.0)] {
            let latency = Some(Latency {
                median,
                p99: median * 2.0,
                max,
            });
            series.record(
                Ok(Measured {
                    value: 1.0,
                    latency,
                }),
                CpuUse::default(),
            );
        }
        // Medians of the runs' figures; the slowest I/O of any run.
        assert_eq!(
            series.latency(),
            Some(Latency {
                median: 2.0,
                p99: 4.0,
                max: 9.0
            })
        );
        series.record(Err("failed".into()), CpuUse::default());
        assert_eq!(series.latency(), None);
    }
}
