//! What the metrics listener serves, as text: `GET /metrics` in the
//! Prometheus text exposition format 0.0.4, `GET /status` as JSON. Pure
//! functions of a [`Report`], so the formats are unit-tested without a
//! socket; gathering the report is `metrics_listener.rs`'s job.

use std::fmt::{Display, Write};

use serde_json::{json, Map, Value};

use crate::metrics::{Counts, RefusalReason};

/// Everything a page shows, gathered at one moment.
#[derive(Clone, Debug)]
pub struct Report {
    pub version: &'static str,
    /// `--disk` as given.
    pub disk_path: String,
    /// `None` while the disk is not held (waiting for the device).
    pub disk: Option<HeldDisk>,
    pub readonly: bool,
    /// `None` for a device that is not DRBD (and on /metrics, which never
    /// runs drbdsetup); otherwise what drbdsetup said, or why it could not.
    pub drbd: Option<Result<DrbdFacts, String>>,
    pub connections_open: u64,
    pub connections_idle: u64,
    pub workers: u64,
    pub counts: Counts,
}

#[derive(Clone, Copy, Debug)]
pub struct HeldDisk {
    pub size: u64,
    pub block_device: bool,
}

#[derive(Clone, Debug)]
pub struct DrbdFacts {
    pub resource: String,
    pub role: String,
}

/// Prefix of every metric name.
const PREFIX: &str = "http_disk_server_";

/// The `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds a text exposition: each family once with `# HELP` and `# TYPE`,
/// then its samples.
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {PREFIX}{name} {help}");
        let _ = writeln!(self.text, "# TYPE {PREFIX}{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        let _ = write!(self.text, "{PREFIX}{name}");
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(label, value)| format!("{label}=\"{}\"", escape_label(value)))
                .collect();
            let _ = write!(self.text, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and newline (format 0.0.4).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `GET /metrics` page.
pub fn prometheus(report: &Report) -> String {
    let mut out = Exposition {
        text: String::with_capacity(4096),
    };
    server_and_disk(&mut out, report);
    connections(&mut out, report);
    traffic(&mut out, &report.counts);
    out.text
}

/// The families of `/metrics` about the server and its disk.
fn server_and_disk(out: &mut Exposition, report: &Report) {
    out.single("up", "gauge", "1 while the server runs.", 1);
    out.family(
        "info",
        "gauge",
        "Always 1; the labels name the version, the disk and its kind.",
    );
    let kind = match report.disk {
        Some(disk) if disk.block_device => "block_device",
        Some(_) => "file",
        None => "unknown",
    };
    out.sample(
        "info",
        &[
            ("version", report.version),
            ("disk", &report.disk_path),
            ("kind", kind),
        ],
        1,
    );
    out.single(
        "disk_held",
        "gauge",
        "1 when the disk is open and served, 0 while waiting for it (503).",
        u8::from(report.disk.is_some()),
    );
    out.family(
        "disk_size_bytes",
        "gauge",
        "Size of the served disk (absent while it is not held).",
    );
    if let Some(disk) = report.disk {
        out.sample("disk_size_bytes", &[], disk.size);
    }
    out.single(
        "readonly",
        "gauge",
        "1 when started with --readonly.",
        u8::from(report.readonly),
    );
    out.single(
        "uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        report.counts.uptime.as_secs(),
    );
}

/// The families of `/metrics` about connections and workers, now.
fn connections(out: &mut Exposition, report: &Report) {
    out.single(
        "connections_open",
        "gauge",
        "Data connections open now, busy or idle.",
        report.connections_open,
    );
    out.single(
        "connections_idle",
        "gauge",
        "Data connections waiting for their next request.",
        report.connections_idle,
    );
    out.single(
        "workers",
        "gauge",
        "Most data connections served at once (--workers).",
        report.workers,
    );
    out.single(
        "requests_in_flight",
        "gauge",
        "Requests being handled now.",
        report.counts.in_flight,
    );
}

/// The counters of `/metrics`: requests, bytes, errors, refusals.
fn traffic(out: &mut Exposition, counts: &Counts) {
    out.family(
        "requests_total",
        "counter",
        "Requests answered, by operation and status code.",
    );
    for request in &counts.requests {
        let code = request.status.to_string();
        out.sample(
            "requests_total",
            &[("op", request.op.name()), ("code", &code)],
            request.count,
        );
    }
    out.single(
        "bytes_read_total",
        "counter",
        "Bytes of the disk sent in replies to reads.",
        counts.bytes_read,
    );
    out.single(
        "bytes_written_total",
        "counter",
        "Bytes written to the disk by successful writes.",
        counts.bytes_written,
    );
    out.family(
        "errors_total",
        "counter",
        "Requests that failed on the server side: disk = the disk failed \
         (500, or a read cut by EIO), client_gone = the reply could not be delivered.",
    );
    for (failure, count) in &counts.failures {
        out.sample("errors_total", &[("kind", failure.name())], count);
    }
    // From the reasons themselves, so a new one cannot be left out.
    let reasons: Vec<String> = RefusalReason::ALL
        .iter()
        .map(|r| format!("{} ({})", r.name(), r.meaning()))
        .collect();
    out.family(
        "refused_total",
        "counter",
        &format!("Clients turned away: {}.", reasons.join(", ")),
    );
    for (refusal, count) in &counts.refusals {
        out.sample("refused_total", &[("reason", refusal.name())], count);
    }
}

/// The `GET /status` page.
pub fn status(report: &Report) -> Value {
    let counts = &report.counts;
    let mut by_op = Map::new();
    let mut by_class = Map::new();
    for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
        by_class.insert(class.to_owned(), json!(0));
    }
    for op in crate::metrics::Op::ALL {
        by_op.insert(op.name().to_owned(), json!(0));
    }
    let mut total = 0;
    for request in &counts.requests {
        total += request.count;
        let add = |map: &mut Map<String, Value>, key: &str| {
            let before = map.get(key).and_then(Value::as_u64).unwrap_or(0);
            map.insert(key.to_owned(), json!(before + request.count));
        };
        add(&mut by_op, request.op.name());
        add(&mut by_class, &format!("{}xx", request.status / 100));
    }
    let drbd = match &report.drbd {
        None => Value::Null,
        Some(Ok(facts)) => json!({ "resource": facts.resource, "role": facts.role }),
        Some(Err(why)) => json!({ "error": why }),
    };
    json!({
        "version": report.version,
        "disk": {
            "path": report.disk_path,
            "state": if report.disk.is_some() { "held" } else { "waiting" },
            "size": report.disk.map(|d| d.size),
            "kind": report.disk.map(|d| if d.block_device { "block device" } else { "file" }),
            "readonly": report.readonly,
            "drbd": drbd,
        },
        "uptime_seconds": counts.uptime.as_secs(),
        "connections": {
            "open": report.connections_open,
            "idle": report.connections_idle,
            "workers": report.workers,
        },
        "requests_in_flight": counts.in_flight,
        "requests": {
            "total": total,
            "by_op": by_op,
            "by_class": by_class,
        },
        "bytes": { "read": counts.bytes_read, "written": counts.bytes_written },
        "errors": counts.failures.iter()
            .map(|(f, n)| (f.name().to_owned(), json!(n)))
            .collect::<Map<_, _>>(),
        "refused": counts.refusals.iter()
            .map(|(r, n)| (r.name().to_owned(), json!(n)))
            .collect::<Map<_, _>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Failure, Op, RefusalReason, RequestCount};
    use std::time::Duration;

    fn report() -> Report {
        Report {
            version: "1.2.3",
            disk_path: "/dev/drbd/by-res/a \"b\"\\c/0".into(),
            disk: Some(HeldDisk {
                size: 4096,
                block_device: true,
            }),
            readonly: false,
            drbd: Some(Ok(DrbdFacts {
                resource: "a".into(),
                role: "Primary".into(),
            })),
            connections_open: 3,
            connections_idle: 2,
            workers: 1024,
            counts: Counts {
                uptime: Duration::from_millis(61_500),
                in_flight: 1,
                requests: vec![
                    RequestCount {
                        op: Op::Read,
                        status: 206,
                        count: 10,
                    },
                    RequestCount {
                        op: Op::Write,
                        status: 200,
                        count: 5,
                    },
                    RequestCount {
                        op: Op::Read,
                        status: 403,
                        count: 1,
                    },
                ],
                bytes_read: 40960,
                bytes_written: 20480,
                failures: vec![(Failure::Disk, 0), (Failure::ClientGone, 2)],
                refusals: vec![(RefusalReason::NotAllowed, 1), (RefusalReason::Busy, 0)],
            },
        }
    }

    #[test]
    fn prometheus_text_has_help_and_type_before_samples() {
        let text = prometheus(&report());
        let mut described = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                described.push(rest.split(' ').next().unwrap().to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(Some(&name.to_owned()), described.last(), "{line}");
                assert!(kind == "counter" || kind == "gauge", "{line}");
                assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(Some(&name.to_owned()), described.last(), "{line}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        for sample in [
            "http_disk_server_up 1\n",
            "http_disk_server_info{version=\"1.2.3\",disk=\"/dev/drbd/by-res/a \\\"b\\\"\\\\c/0\",kind=\"block_device\"} 1\n",
            "http_disk_server_disk_size_bytes 4096\n",
            "http_disk_server_uptime_seconds 61\n",
            "http_disk_server_connections_idle 2\n",
            "http_disk_server_requests_in_flight 1\n",
            "http_disk_server_requests_total{op=\"read\",code=\"206\"} 10\n",
            "http_disk_server_requests_total{op=\"write\",code=\"200\"} 5\n",
            "http_disk_server_requests_total{op=\"read\",code=\"403\"} 1\n",
            "http_disk_server_bytes_read_total 40960\n",
            "http_disk_server_bytes_written_total 20480\n",
            "http_disk_server_errors_total{kind=\"client_gone\"} 2\n",
            "http_disk_server_refused_total{reason=\"not_allowed\"} 1\n",
            "http_disk_server_refused_total{reason=\"busy\"} 0\n",
        ] {
            assert!(text.contains(sample), "{sample} missing from:\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE http_disk_server_requests_total")
                .count(),
            1
        );
        let help = text
            .lines()
            .find(|l| l.starts_with("# HELP http_disk_server_refused_total "))
            .unwrap();
        for reason in RefusalReason::ALL {
            assert!(help.contains(&format!("{} (", reason.name())), "{help}");
        }
    }

    #[test]
    fn a_disk_not_held_has_no_size_sample() {
        let mut report = report();
        report.disk = None;
        let text = prometheus(&report);
        assert!(text.contains("http_disk_server_disk_held 0\n"));
        assert!(text.contains("kind=\"unknown\""));
        assert!(!text
            .lines()
            .any(|l| l.starts_with("http_disk_server_disk_size_bytes")));
        assert_eq!(status(&report)["disk"]["state"], "waiting");
        assert_eq!(status(&report)["disk"]["size"], Value::Null);
    }

    #[test]
    fn status_json_sums_by_op_and_class() {
        let status = status(&report());
        assert_eq!(status["version"], "1.2.3");
        assert_eq!(status["disk"]["size"], 4096);
        assert_eq!(status["disk"]["kind"], "block device");
        assert_eq!(status["disk"]["drbd"]["role"], "Primary");
        assert_eq!(status["uptime_seconds"], 61);
        assert_eq!(status["requests"]["total"], 16);
        assert_eq!(status["requests"]["by_op"]["read"], 11);
        assert_eq!(status["requests"]["by_op"]["trim"], 0);
        assert_eq!(status["requests"]["by_class"]["2xx"], 15);
        assert_eq!(status["requests"]["by_class"]["4xx"], 1);
        assert_eq!(status["bytes"]["written"], 20480);
        assert_eq!(status["errors"]["client_gone"], 2);
        assert_eq!(status["refused"]["not_allowed"], 1);
        assert_eq!(status["connections"]["open"], 3);
    }
}
