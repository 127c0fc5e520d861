//! Writes the results: BENCHMARKS.md (tables, machine facts, exact
//! commands, goals met or missed) and an SVG bar chart of the ratios.

use std::fmt::Write as _;

use crate::results::{Comparison, Results, Series};
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
    match (peer.goal, comparison.goal_met(peer)) {
        (Some(goal), Some(true)) => format!("≥ {goal}× met"),
        (Some(goal), Some(false)) => format!("≥ {goal}× **missed**"),
        (Some(goal), None) => format!("≥ {goal}× (no ratio)"),
        (None, _) => "reference".into(),
    }
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
    for fact in facts {
        let _ = writeln!(md, "- {fact}");
    }
    let mut group = String::new();
    for comparison in &results.comparisons {
        if comparison.group != group {
            group = comparison.group.clone();
            let _ = writeln!(md, "\n## {group}\n");
            let _ = writeln!(
                md,
                "| case | unit | ours | spread | peer | peer figure | spread | ratio | goal |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        }
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
    let _ = writeln!(md, "\n{}", include_str!("../ANALYSIS.md").trim_end());
    if !results.skipped.is_empty() {
        let _ = writeln!(md, "\n## Not run\n");
        for (group, why) in &results.skipped {
            let _ = writeln!(md, "- {group}: {why}");
        }
    }
    let _ = writeln!(md, "\n## Commands\n");
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
