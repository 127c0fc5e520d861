//! The comparison loop shared by every block-device group: each case is
//! run `repeats` times, alternating ours and the peers inside each
//! repetition, so a slow phase of the machine hits all of them alike.

use crate::progress::Progress;
use crate::results::{Comparison, Results, Series};
use crate::settings::Settings;
use crate::targets::NbdTarget;
use crate::workload::Workload;

/// A peer and the smallest acceptable ratio ours/peer (if any).
pub struct Peer<'a> {
    pub target: &'a NbdTarget,
    pub goal: Option<f64>,
}

pub fn compare_block_targets(
    results: &mut Results,
    settings: &Settings,
    progress: &mut Progress,
    group: &str,
    ours: &NbdTarget,
    peers: &[Peer],
    workloads: &[Workload],
) {
    for target in std::iter::once(ours).chain(peers.iter().map(|p| p.target)) {
        results.note_command(target.command.clone());
    }
    for workload in workloads {
        results.note_command(workload.command_line(settings.runtime));
        let mut comparison = Comparison {
            group: group.to_owned(),
            case: workload.label(),
            unit: workload.unit(),
            ours: Series::new(&ours.name, None),
            peers: peers
                .iter()
                .map(|p| Series::new(&p.target.name, p.goal))
                .collect(),
        };
        for _ in 0..settings.repeats {
            let outcome = run_one(settings, progress, group, workload, ours);
            comparison.ours.record(outcome);
            for (series, peer) in comparison.peers.iter_mut().zip(peers) {
                // A peer that failed once (e.g. cannot write) is not retried.
                if series.failure.is_some() {
                    progress.skip();
                    continue;
                }
                let outcome = run_one(settings, progress, group, workload, peer.target);
                series.record(outcome);
            }
        }
        results.comparisons.push(comparison);
    }
}

fn run_one(
    settings: &Settings,
    progress: &mut Progress,
    group: &str,
    workload: &Workload,
    target: &NbdTarget,
) -> Result<f64, String> {
    let label = format!("{group}: {} on {}", workload.label(), target.name);
    progress.start(&label);
    let outcome = workload.run(
        &target.uri(),
        settings.disk_size,
        settings.runtime,
        &settings.work,
    );
    match &outcome {
        Ok(value) => progress.done(&format!("{value:.1} {}", workload.unit())),
        Err(why) => progress.done(&format!("FAILED: {why}")),
    }
    outcome
}
