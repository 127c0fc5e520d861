//! The comparison loop shared by every block-device group: each case is
//! run `repeats` times, alternating ours and the peers inside each
//! repetition, so a slow phase of the machine hits all of them alike.

use std::time::Instant;

use crate::cpu::{self, Watched};
use crate::progress::Progress;
use crate::results::{Comparison, Measured, Results, Series};
use crate::settings::Settings;
use crate::targets::Target;
use crate::workload::Workload;

/// A peer and the smallest acceptable ratio ours/peer (if any).
pub struct Peer<'a> {
    pub target: &'a dyn Target,
    pub goal: Option<f64>,
}

/// What a group compares: our target, its peers, the backend driven
/// alone with ours's requests if the group can (the measured ceiling,
/// see `Series::ceiling`), and the processes behind them whose CPU is
/// accounted in every run (the server or store they all talk to; empty
/// when there is none). With `latency`, the report gives each target's
/// I/O latency next to its figure.
pub struct Lineup<'a> {
    pub group: &'a str,
    pub ours: &'a dyn Target,
    pub peers: &'a [Peer<'a>],
    pub alone: Option<&'a dyn Target>,
    pub backend: &'a [Watched],
    pub latency: bool,
}

pub fn compare_block_targets(
    results: &mut Results,
    settings: &Settings,
    progress: &mut Progress,
    lineup: &Lineup,
    workloads: &[Workload],
) {
    let Lineup {
        group,
        ours,
        peers,
        alone,
        backend,
        latency,
    } = *lineup;
    // Every target after ours, each with its series' role.
    let others: Vec<(&dyn Target, Series)> = peers
        .iter()
        .map(|p| (p.target, Series::new(p.target.name(), p.goal)))
        .chain(alone.map(|a| (a, Series::ceiling(a.name()))))
        .collect();
    for target in std::iter::once(ours).chain(others.iter().map(|(t, _)| *t)) {
        results.note_command(target.command().to_owned());
    }
    for workload in workloads {
        results.note_command(workload.command_line(settings.runtime));
        let mut comparison = Comparison {
            group: group.to_owned(),
            case: workload.label(),
            unit: workload.unit(),
            cpu_roles: cpu_roles(backend),
            latency,
            ours: Series::new(ours.name(), None),
            peers: others.iter().map(|(_, series)| series.clone()).collect(),
        };
        for _ in 0..settings.repeats {
            let (outcome, used) = run_one(settings, progress, group, workload, ours, backend);
            comparison.ours.record(outcome, used);
            for (series, (target, _)) in comparison.peers.iter_mut().zip(&others) {
                // A peer that failed once (e.g. cannot write) is not retried.
                if series.failure.is_some() {
                    progress.skip();
                    continue;
                }
                let (outcome, used) =
                    run_one(settings, progress, group, workload, *target, backend);
                series.record(outcome, used);
            }
        }
        results.comparisons.push(comparison);
    }
}

/// The roles watched in every run of a group: the target's nbdkit, then
/// the backend's processes.
fn cpu_roles(backend: &[Watched]) -> Vec<String> {
    std::iter::once("nbdkit".to_owned())
        .chain(backend.iter().map(|w| w.role.clone()))
        .collect()
}

/// One run of `workload` on `target`: its figure, and the CPU that
/// target's nbdkit, the backend and the machine used meanwhile, with the
/// CPU per unit of work done (per I/O or per MiB); the target is then
/// settled ([`Target::settle`]), outside the measurement.
fn run_one(
    settings: &Settings,
    progress: &mut Progress,
    group: &str,
    workload: &Workload,
    target: &dyn Target,
    backend: &[Watched],
) -> (Result<Measured, String>, cpu::CpuUse) {
    let label = format!("{group}: {} on {}", workload.label(), target.name());
    progress.start(&label);
    let watched: Vec<Watched> = std::iter::once(Watched {
        role: "nbdkit".into(),
        pid: target.pid(),
    })
    .chain(backend.iter().cloned())
    .collect();
    let (outcome, mut used) = cpu::measure(&watched, || {
        let started = Instant::now();
        let outcome = target.run(workload, settings);
        (outcome, started.elapsed().as_secs_f64())
    });
    // Settled after a failed run too: the next run must not inherit it.
    let outcome = match (outcome, target.settle()) {
        (Ok(measured), Ok(())) => Ok(measured),
        (Err(why), _) => Err(why),
        (Ok(_), Err(why)) => Err(format!("after the run: {why}")),
    };
    if let (Ok(measured), Some(seconds)) = (&outcome, used.watched_seconds) {
        let work = workload.work_done(measured.value, settings.runtime, settings.disk_size);
        used.seconds_per_unit = (work > 0.0).then(|| seconds / work);
    }
    match &outcome {
        Ok(Measured {
            value,
            latency: Some(latency),
        }) => progress.done(&format!(
            "{value:.1} {}, latency median {:.0} µs, p99 {:.0} µs",
            workload.unit(),
            latency.median * 1e6,
            latency.p99 * 1e6
        )),
        Ok(measured) => progress.done(&format!("{:.1} {}", measured.value, workload.unit())),
        Err(why) => progress.done(&format!("FAILED: {why}")),
    }
    (outcome, used)
}
