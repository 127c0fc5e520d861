//! Writes the results: BENCHMARKS.md (tables, machine facts, exact
//! commands, goals met or missed) and an SVG bar chart of the ratios.

use std::fmt::Write as _;

use crate::results::{Comparison, Latency, Results, Series};
use crate::stats::median;

fn figure(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "—".into(),
    }
}

fn spread(series: &Series) -> String {
    series
        .spread()
        .map_or_else(|| "—".into(), |s| format!("±{:.0} %", s / 2.0))
}

fn verdict(comparison: &Comparison, peer: &Series) -> String {
    let ceiling = comparison.measured_ceiling();
    match (peer.goal, comparison.goal_met(peer), ceiling) {
        (Some(goal), Some(true), _) => format!("≥ {goal}× met"),
        (Some(goal), Some(false), Some(ceiling)) if ceiling < goal => {
            format!("≥ {goal}× **missed**: the backend alone reaches {ceiling:.2}×")
        }
        (Some(goal), Some(false), _) => format!("≥ {goal}× **missed**"),
        (Some(goal), None, _) => format!("≥ {goal}× (no ratio)"),
        (None, _, Some(ceiling)) if peer.ceiling => {
            format!("measured ceiling: the backend alone is {ceiling:.2}× the goal peer")
        }
        (None, _, None) if peer.ceiling => "measured ceiling".into(),
        (None, _, _) => "reference".into(),
    }
}

/// The hand-written analysis of the misses (bench/ANALYSIS.md), copied
/// into every report between the measured sections and the generated
/// "Not run" / "Commands" ones.
pub const ANALYSIS: &str = include_str!("../ANALYSIS.md");

/// The generated sections written after the analysis, in this order.
const NOT_RUN: &str = "## Not run";
const COMMANDS: &str = "## Commands";

/// `report` with its copy of the analysis replaced by `analysis`, keeping
/// every measured and generated section as it is: an edit of ANALYSIS.md
/// reaches BENCHMARKS.md without a new run (`bench/run --update-analysis`),
/// and without pasting by hand, which once cut the Commands section off.
pub fn with_analysis(report: &str, analysis: &str) -> Result<String, String> {
    let heading = analysis
        .lines()
        .next()
        .filter(|line| line.starts_with("## "))
        .ok_or("the analysis does not start with a '## ' heading")?;
    let start = report
        .find(&format!("\n{heading}\n"))
        .map(|at| at + 1)
        .ok_or_else(|| format!("the report has no {heading:?} section"))?;
    let end = [NOT_RUN, COMMANDS]
        .iter()
        .filter_map(|heading| report[start..].find(&format!("\n{heading}\n")))
        .min()
        .map(|at| start + at)
        .ok_or("the report has no Commands section after the analysis")?;
    Ok(format!(
        "{}{}\n{}",
        &report[..start],
        analysis.trim_end(),
        &report[end..]
    ))
}

/// The markdown report.
pub fn markdown(results: &Results, facts: &[String], mode: &str, chart: Option<&str>) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `bench/run{}` ({mode}). Each case ran several times, \
         alternating ours and the peers inside each repetition; figures are \
         medians, spread is half the min–max range relative to the median. \
         Higher is better everywhere. Ratio = ours / peer.\n",
        if mode.starts_with("quick") {
            " --quick"
        } else {
            ""
        }
    );
    if let Some(chart) = chart {
        let _ = writeln!(md, "![ratios ours/peer]({chart})\n");
    }
    let _ = writeln!(md, "## Machine\n");
    for fact in facts.iter().chain(&results.facts) {
        let _ = writeln!(md, "- {fact}");
    }
    let mut groups: Vec<&str> = Vec::new();
    for comparison in &results.comparisons {
        if !groups.contains(&comparison.group.as_str()) {
            groups.push(&comparison.group);
        }
    }
    for group in groups {
        let comparisons: Vec<&Comparison> = results
            .comparisons
            .iter()
            .filter(|c| c.group == group)
            .collect();
        ratio_table(&mut md, group, &comparisons);
        latency_table(&mut md, &comparisons);
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        cpu_table(&mut md, &comparisons, cores);
    }
    let _ = writeln!(md, "\n## Failover pause\n");
    if let Some(why) = &results.failover_failure {
        let _ = writeln!(md, "Failed: {why}");
    } else if results.failover_pauses.is_empty() {
        let _ = writeln!(md, "Not measured.");
    } else {
        let pauses = &results.failover_pauses;
        let median = median(pauses).unwrap_or(f64::NAN);
        let max = pauses.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "Time from SIGKILL of the active http-disk-server to the next completed 4 KiB \
             write through multihttp, {} rounds: median **{:.0} ms**, max {:.0} ms \
             (goal: median < 1 s: {}). Every write succeeded.",
            pauses.len(),
            median * 1000.0,
            max * 1000.0,
            if median < 1.0 { "met" } else { "**missed**" }
        );
    }
    let _ = writeln!(md, "\n## Peak memory (VmHWM)\n");
    if results.memory.is_empty() {
        let _ = writeln!(md, "Not measured.");
    } else {
        let _ = writeln!(md, "| process | after | peak RSS |");
        let _ = writeln!(md, "|---|---|---|");
        for reading in &results.memory {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} MiB |",
                reading.process,
                reading.after,
                reading.peak_kib as f64 / 1024.0
            );
        }
    }
    // The analysis of each missed goal is written by hand (it comes from
    // profiling, not from this run), kept next to the code that measures.
    let _ = writeln!(md, "\n{}", ANALYSIS.trim_end());
    if !results.skipped.is_empty() {
        let _ = writeln!(md, "\n{NOT_RUN}\n");
        for (group, why) in &results.skipped {
            let _ = writeln!(md, "- {group}: {why}");
        }
    }
    let _ = writeln!(md, "\n{COMMANDS}\n");
    let _ = writeln!(
        md,
        "Everything runs on loopback in a temp directory; `SOCK`/`URI`/`URL` are that run's."
    );
    let _ = writeln!(md, "\n```");
    for command in &results.commands {
        let _ = writeln!(md, "{command}");
    }
    let _ = writeln!(md, "```");
    md
}

/// The group's table: each case, ours against each peer.
fn ratio_table(md: &mut String, group: &str, comparisons: &[&Comparison]) {
    let _ = writeln!(md, "\n## {group}\n");
    let _ = writeln!(
        md,
        "| case | unit | ours | spread | peer | peer figure | spread | ratio | goal |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for comparison in comparisons {
        let ours = comparison.ours.failure.as_ref().map_or_else(
            || figure(comparison.ours.median()),
            |w| format!("failed: {w}"),
        );
        if comparison.peers.is_empty() {
            let _ = writeln!(
                md,
                "| {} | {} | {ours} | {} | — | — | — | — | no peer |",
                comparison.case,
                comparison.unit,
                spread(&comparison.ours)
            );
        }
        for peer in &comparison.peers {
            let peer_figure = peer
                .failure
                .as_ref()
                .map_or_else(|| figure(peer.median()), |w| format!("cannot: {w}"));
            let _ = writeln!(
                md,
                "| {} | {} | {ours} | {} | {} | {peer_figure} | {} | {} | {} |",
                comparison.case,
                comparison.unit,
                spread(&comparison.ours),
                peer.target,
                spread(peer),
                comparison
                    .ratio(peer)
                    .map_or_else(|| "—".into(), |r| format!("{r:.2}×")),
                verdict(comparison, peer)
            );
        }
    }
}

/// Per-I/O latency of each target, in the cases that report it, with
/// ours's latency over each peer's (lower is better there).
fn latency_table(md: &mut String, comparisons: &[&Comparison]) {
    let comparisons: Vec<&&Comparison> = comparisons.iter().filter(|c| c.latency).collect();
    if comparisons.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nLatency of each I/O (fio's completion latency; for a target driven by this \
         benchmark, its own timing of each call): median and p99 are medians over the \
         runs, max is the slowest I/O of any run. Ours ÷ target: ours's latency over \
         the target's, **lower is better** here.\n"
    );
    let _ = writeln!(
        md,
        "| case | target | median | p99 | max | ours ÷ target, median | ours ÷ target, p99 |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for comparison in comparisons {
        let ours = comparison.ours.latency();
        for series in std::iter::once(&comparison.ours).chain(&comparison.peers) {
            let latency = series.latency();
            let over = |figure: fn(&Latency) -> f64| match (ours, latency) {
                _ if std::ptr::eq(series, &comparison.ours) => "—".to_owned(),
                (Some(ours), Some(theirs)) if figure(&theirs) > 0.0 => {
                    format!("{:.2}×", figure(&ours) / figure(&theirs))
                }
                _ => "—".to_owned(),
            };
            let cell = |figure: fn(&Latency) -> f64| {
                latency.map_or_else(|| "—".to_owned(), |l| duration_figure(figure(&l)))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                comparison.case,
                series.target,
                cell(|l| l.median),
                cell(|l| l.p99),
                cell(|l| l.max),
                over(|l| l.median),
                over(|l| l.p99)
            );
        }
    }
}

/// A duration in a unit that reads well: µs under 1 ms, ms under 1 s.
fn duration_figure(seconds: f64) -> String {
    match seconds {
        s if s < 1e-3 => format!("{:.0} µs", s * 1e6),
        s if s < 1e-2 => format!("{:.2} ms", s * 1e3),
        s if s < 1.0 => format!("{:.1} ms", s * 1e3),
        s => format!("{s:.2} s"),
    }
}

/// Where the CPU went in each case (medians over the runs): cores used by
/// each target's nbdkit and by the backend, the machine's busy cores, and
/// CPU time of nbdkit + backend per unit of work. Groups that did not
/// watch processes (the HTTP-only group) get none.
fn cpu_table(md: &mut String, comparisons: &[&Comparison], cores_available: usize) {
    let Some(first) = comparisons.first() else {
        return;
    };
    if first.cpu_roles.is_empty() {
        return;
    }
    let roles = &first.cpu_roles;
    let _ = writeln!(
        md,
        "\nCPU while each ran (medians; cores used, of {cores_available}): the \
         throughput ratio on this machine is bounded by CPU per operation when the \
         machine is busy, and by the backend when it is the one saturated. \
         Stolen: time the hypervisor gave other guests (a noisy neighbour). \
         Backend ceiling: the ratio against the goal peer that any client sending \
         the backend the same requests could reach here, if the backend had every \
         core to itself (its CPU per operation while ours ran): a goal above it \
         cannot be met on this machine by any change to the client. A target \
         named \"... alone\" is the backend driven directly by this benchmark \
         with ours's requests (its nbdkit column: the benchmark's own threads), \
         which measures that ceiling instead of estimating it.\n"
    );
    let with_ceiling = roles.len() > 1;
    let role_headers: String = roles.iter().map(|r| format!(" {r} |")).collect();
    let _ = writeln!(
        md,
        "| case | target |{role_headers} load tool | machine | of which stolen | CPU per op ({}) |{}",
        roles.join(" + "),
        if with_ceiling { " backend ceiling |" } else { "" }
    );
    let _ = writeln!(
        md,
        "|---|---|{}---|---|---|---|{}",
        "---|".repeat(roles.len()),
        if with_ceiling { "---|" } else { "" }
    );
    for comparison in comparisons {
        for series in std::iter::once(&comparison.ours).chain(&comparison.peers) {
            if series.cpu.is_empty() {
                continue;
            }
            let cores: String = (0..roles.len())
                .map(|i| {
                    let value = series.cpu_median(|u| u.cores.get(i).copied().flatten());
                    format!(" {} |", cores_figure(value))
                })
                .collect();
            let load_tool = cores_figure(series.cpu_median(|u| u.load_tool_cores));
            let machine = cores_figure(series.cpu_median(|u| u.machine_cores));
            let steal = cores_figure(series.cpu_median(|u| u.steal_cores));
            let per_op =
                per_unit_figure(series.cpu_median(|u| u.seconds_per_unit), comparison.unit);
            let ceiling = match (with_ceiling, std::ptr::eq(series, &comparison.ours)) {
                (false, _) => String::new(),
                (true, false) => " — |".into(),
                (true, true) => format!(
                    " {} |",
                    comparison
                        .backend_ceiling(cores_available as f64)
                        .map_or_else(|| "—".into(), |c| format!("≤ {c:.1}×"))
                ),
            };
            let _ = writeln!(
                md,
                "| {} | {} |{cores} {load_tool} | {machine} | {steal} | {per_op} |{ceiling}",
                comparison.case, series.target
            );
        }
    }
}

fn cores_figure(value: Option<f64>) -> String {
    value.map_or_else(|| "—".into(), |v| format!("{v:.2}"))
}

/// CPU seconds per unit of work, in a unit that reads well: µs per I/O
/// for IOPS cases, ms per MiB for throughput cases.
fn per_unit_figure(seconds: Option<f64>, unit: &str) -> String {
    match seconds {
        None => "—".into(),
        Some(s) if unit == "IOPS" => format!("{:.0} µs/IO", s * 1e6),
        Some(s) => format!("{:.2} ms/MiB", s * 1e3),
    }
}

/// An SVG bar chart: one bar per (case, peer) ratio, a line at 1×, and the
/// goal marked on each bar that has one.
pub fn svg_chart(results: &Results) -> String {
    let bars: Vec<(String, f64, Option<f64>)> = results
        .comparisons
        .iter()
        .flat_map(|c| {
            c.peers.iter().filter_map(move |p| {
                c.ratio(p).map(|r| {
                    (
                        format!("{}: {} vs {}", c.group, c.case, p.target),
                        r,
                        p.goal,
                    )
                })
            })
        })
        .collect();
    let label_width = 520.0;
    let plot_width = 420.0;
    let row = 22.0;
    let height = 40.0 + row * bars.len() as f64;
    let max_ratio = bars
        .iter()
        .map(|(_, r, g)| r.max(g.unwrap_or(0.0)))
        .fold(1.5_f64, f64::max);
    let scale = plot_width / max_ratio;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
        label_width + plot_width + 80.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="4" y="16" font-weight="bold">ratio ours / peer (higher is better; | = goal)</text>"#
    );
    for (index, (label, ratio, goal)) in bars.iter().enumerate() {
        let y = 30.0 + row * index as f64;
        let colour = match goal {
            Some(goal) if ratio < goal => "#c0392b",
            _ => "#2e86c1",
        };
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{label_width}" y="{y}" width="{:.1}" height="16" fill="{colour}"/><text x="{:.1}" y="{}">{ratio:.2}×</text>"#,
            label_width - 6.0,
            y + 12.0,
            escape(label),
            ratio * scale,
            label_width + ratio * scale + 4.0,
            y + 12.0
        );
        if let Some(goal) = goal {
            let x = label_width + goal * scale;
            let _ = writeln!(
                svg,
                r#"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{}" stroke="black" stroke-width="2"/>"#,
                y - 2.0,
                y + 18.0
            );
        }
    }
    let one = label_width + scale;
    let _ = writeln!(
        svg,
        r##"<line x1="{one:.1}" x2="{one:.1}" y1="24" y2="{height}" stroke="#555" stroke-dasharray="4 3"/>"##
    );
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuUse;
    use crate::results::Measured;

    #[test]
    fn the_analysis_is_replaced_and_the_generated_sections_kept() {
        let report = "# Benchmarks\n\n| table |\n\n## Why each remaining miss is a miss\n\nold text\n\n## Not run\n\n- s3: no Garage\n\n## Commands\n\n```\nfio\n```\n";
        let analysis = "## Why each remaining miss is a miss\n\nnew text\n";
        let updated = with_analysis(report, analysis).unwrap();
        assert_eq!(
            updated,
            "# Benchmarks\n\n| table |\n\n## Why each remaining miss is a miss\n\nnew text\n\n## Not run\n\n- s3: no Garage\n\n## Commands\n\n```\nfio\n```\n"
        );
        // Idempotent, and a report without the sections is refused.
        assert_eq!(with_analysis(&updated, analysis).unwrap(), updated);
        assert!(with_analysis("# Benchmarks\n", analysis).is_err());
        let cut = "## Why each remaining miss is a miss\n\nold\n";
        assert!(with_analysis(&format!("x\n{cut}"), analysis).is_err());
    }

    /// The published report carries the current analysis and all of its
    /// generated sections (fix: `bench/run --update-analysis`).
    #[test]
    fn benchmarks_md_is_complete_and_has_the_current_analysis() {
        let published = include_str!("../../BENCHMARKS.md");
        assert!(
            published.contains(&format!("\n{COMMANDS}\n")),
            "BENCHMARKS.md lost its Commands section"
        );
        assert_eq!(
            with_analysis(published, ANALYSIS).as_deref(),
            Ok(published),
            "BENCHMARKS.md does not carry the current bench/ANALYSIS.md: run bench/run --update-analysis"
        );
    }

    fn series(name: &str, value: f64, cpu: CpuUse) -> Series {
        let mut series = Series::new(name, None);
        series.record(Ok(value.into()), cpu);
        series
    }

    fn used(nbdkit: f64, backend: f64, machine: f64, per_unit: f64) -> CpuUse {
        CpuUse {
            cores: vec![Some(nbdkit), Some(backend)],
            machine_cores: Some(machine),
            steal_cores: Some(0.0),
            load_tool_cores: Some(0.3),
            watched_seconds: None,
            seconds_per_unit: Some(per_unit),
        }
    }

    #[test]
    fn cpu_table_has_a_row_per_target_with_its_medians() {
        let comparison = Comparison {
            group: "g".into(),
            case: "fio 4k randread".into(),
            unit: "IOPS",
            cpu_roles: vec!["nbdkit".into(), "Garage".into()],
            latency: false,
            ours: series("ours", 10.0, used(0.25, 1.5, 1.9, 0.000_120)),
            peers: vec![{
                let mut peer = series("peer", 2.0, used(0.5, 0.4, 1.0, 0.004));
                peer.goal = Some(5.0);
                peer
            }],
        };
        let mut md = String::new();
        cpu_table(&mut md, &[&comparison], 2);
        assert!(
            md.contains("| case | target | nbdkit | Garage | load tool | machine |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| fio 4k randread | ours | 0.25 | 1.50 | 0.30 | 1.90 | 0.00 | 120 µs/IO |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| fio 4k randread | peer | 0.50 | 0.40 | 0.30 | 1.00 | 0.00 | 4000 µs/IO |"
            ),
            "{md}"
        );
    }

    #[test]
    fn no_cpu_table_for_groups_that_watched_nothing() {
        let comparison = Comparison {
            group: "http".into(),
            case: "GET".into(),
            unit: "req/s",
            cpu_roles: Vec::new(),
            latency: false,
            ours: series("ours", 1.0, CpuUse::default()),
            peers: Vec::new(),
        };
        let mut md = String::new();
        cpu_table(&mut md, &[&comparison], 2);
        assert_eq!(md, "");
    }

    #[test]
    fn a_miss_under_the_measured_ceiling_says_so() {
        let with_alone = |alone_figure: f64| {
            let mut peer = series("peer", 10.0, CpuUse::default());
            peer.goal = Some(5.0);
            let mut alone = Series::ceiling("store alone");
            alone.record(Ok(alone_figure.into()), CpuUse::default());
            Comparison {
                group: "s3".into(),
                case: "fio 1M write".into(),
                unit: "MiB/s",
                cpu_roles: Vec::new(),
                latency: false,
                ours: series("ours", 20.0, CpuUse::default()),
                peers: vec![peer, alone],
            }
        };
        let bound = with_alone(25.0);
        assert_eq!(
            verdict(&bound, &bound.peers[0]),
            "≥ 5× **missed**: the backend alone reaches 2.50×"
        );
        assert_eq!(
            verdict(&bound, &bound.peers[1]),
            "measured ceiling: the backend alone is 2.50× the goal peer"
        );
        // A backend that could do more: the miss is ours to explain.
        let not_bound = with_alone(80.0);
        assert_eq!(verdict(&not_bound, &not_bound.peers[0]), "≥ 5× **missed**");
    }

    #[test]
    fn latency_table_gives_ours_over_each_target() {
        let timed = |name: &str, median: f64, p99: f64, max: f64| {
            let mut series = Series::new(name, None);
            let latency = Some(Latency { median, p99, max });
            series.record(
                Ok(Measured {
                    value: 1.0,
                    latency,
                }),
                CpuUse::default(),
            );
            series
        };
        let mut comparison = Comparison {
            group: "write-through".into(),
            case: "fio 4k randwrite qd1, 1 conn".into(),
            unit: "IOPS",
            cpu_roles: Vec::new(),
            latency: true,
            ours: timed("ours", 300e-6, 900e-6, 0.0021),
            peers: vec![
                timed("disk alone", 150e-6, 300e-6, 0.0005),
                Series::new("untimed", None),
            ],
        };
        let mut md = String::new();
        latency_table(&mut md, &[&comparison]);
        assert!(
            md.contains(
                "| fio 4k randwrite qd1, 1 conn | ours | 300 µs | 900 µs | 2.10 ms | — | — |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| disk alone | 150 µs | 300 µs | 500 µs | 2.00× | 3.00× |"),
            "{md}"
        );
        assert!(md.contains("| untimed | — | — | — | — | — |"), "{md}");
        // Only cases that ask for it.
        comparison.latency = false;
        let mut md = String::new();
        latency_table(&mut md, &[&comparison]);
        assert_eq!(md, "");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_figure(0.000_268), "268 µs");
        assert_eq!(duration_figure(0.002_156), "2.16 ms");
        assert_eq!(duration_figure(0.0421), "42.1 ms");
        assert_eq!(duration_figure(2.5), "2.50 s");
    }

    #[test]
    fn throughput_cases_are_per_mib() {
        assert_eq!(per_unit_figure(Some(0.0125), "MiB/s"), "12.50 ms/MiB");
        assert_eq!(per_unit_figure(None, "IOPS"), "—");
    }
}
