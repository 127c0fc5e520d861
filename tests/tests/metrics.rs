//! Status and metrics, end to end: the real `http-disk-server` with
//! `--metrics-listen`, scraped with real `curl`, its Prometheus text
//! parsed and each counter checked against a known workload; the real
//! multihttp plugin's `status-file=` across a real failover; nbdkit's own
//! stats filter in front of the plugin.
//!
//! Run: `cargo test --release -p integration-tests --test metrics`

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::disk_server::{raw_exchange, status_of};
use harness::{pattern_file, run, DiskServer, TempDir};

const KIB: usize = 1024;

/// Runs `curl -s ARGS` and returns the status code (0 when there was no
/// reply) and the body.
fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args);
    let mut out = run(cmd, Duration::from_secs(30)).stdout;
    let split = out.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&out[split..])
        .trim()
        .parse()
        .unwrap_or(0);
    out.truncate(split);
    (code, out)
}

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `GET /metrics` page.
struct Scrape {
    samples: Vec<Sample>,
    text: String,
}

impl Scrape {
    /// Parses the text format 0.0.4 strictly enough for our pages: every
    /// non-comment line is `name{labels} value`, and each sample's metric
    /// was described by `# HELP` then `# TYPE` before it.
    fn parse(text: &str) -> Scrape {
        let mut help = Vec::new();
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                help.push(rest.split(' ').next().unwrap().to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(help.contains(&name.to_owned()), "TYPE before HELP: {line}");
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(labels.strip_suffix('}').unwrap())),
                None => (series, BTreeMap::new()),
            };
            let kind = types
                .get(name)
                .unwrap_or_else(|| panic!("sample without HELP/TYPE: {line}"));
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "counters and only counters end in _total: {line}"
            );
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().unwrap_or_else(|_| panic!("value of {line}")),
            });
        }
        Scrape {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of `name{labels}`, 0 when absent (counters of a label
    /// set appear with their first event).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map_or(0.0, |s| s.value)
    }

    /// Sum of every sample of `name`.
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }
}

/// `a="x",b="y\"z"` into a map, undoing the format's escapes.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("unterminated label value") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

fn scrape(server: &DiskServer) -> Scrape {
    let (code, body) = curl(&[&format!("{}/metrics", server.metrics_url())]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    Scrape::parse(&String::from_utf8(body).expect("metrics are UTF-8"))
}

fn status(server: &DiskServer) -> serde_json::Value {
    let (code, body) = curl(&[&format!("{}/status", server.metrics_url())]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("/status is JSON")
}

const READS: usize = 7;
const READ_SIZE: usize = 4 * KIB;
const WRITES: usize = 3;
const WRITE_SIZE: usize = 8 * KIB;

#[test]
fn counters_move_by_exactly_the_requests_made() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 1 << 20, 1);
    let server = DiskServer::start_with_metrics(&disk, &["--allow", "127.0.0.1"]);
    let before = scrape(&server);

    for i in 0..READS {
        let range = format!("{}-{}", i * READ_SIZE, (i + 1) * READ_SIZE - 1);
        let (code, body) = curl(&["-r", &range, &server.url()]);
        assert_eq!((code, body.len()), (206, READ_SIZE));
    }
    let data = harness::pattern_file(dir.path(), "write.bin", WRITE_SIZE, 2);
    for i in 0..WRITES {
        let range = format!(
            "Content-Range: bytes {}-{}/*",
            i * WRITE_SIZE,
            (i + 1) * WRITE_SIZE - 1
        );
        let body = format!("@{}", data.display());
        let (code, _) = curl(&[
            "-X",
            "PUT",
            "-H",
            &range,
            "--data-binary",
            &body,
            &server.url(),
        ]);
        assert_eq!(code, 200);
    }
    // A peer outside --allow (127.0.0.2 is loopback too).
    let (code, _) = curl(&["--interface", "127.0.0.2", "-r", "0-9", &server.url()]);
    assert_eq!(code, 403);
    // A 404 of the metrics listener is not a data request.
    let (code, _) = curl(&[&format!("{}/nowhere", server.metrics_url())]);
    assert_eq!(code, 404);

    let after = scrape(&server);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let requests = "http_disk_server_requests_total";
    assert_eq!(
        moved(requests, &[("op", "read"), ("code", "206")]),
        READS as f64
    );
    assert_eq!(
        moved(requests, &[("op", "write"), ("code", "200")]),
        WRITES as f64
    );
    assert_eq!(moved(requests, &[("op", "read"), ("code", "403")]), 1.0);
    assert_eq!(
        after.sum(requests) - before.sum(requests),
        (READS + WRITES + 1) as f64,
        "requests counted that were not made (scrapes? the 404?):\n{}",
        after.text
    );
    assert_eq!(
        moved("http_disk_server_bytes_read_total", &[]),
        (READS * READ_SIZE) as f64
    );
    assert_eq!(
        moved("http_disk_server_bytes_written_total", &[]),
        (WRITES * WRITE_SIZE) as f64
    );
    let refused = "http_disk_server_refused_total";
    assert_eq!(moved(refused, &[("reason", "not_allowed")]), 1.0);
    assert_eq!(after.sum(refused) - before.sum(refused), 1.0);
    assert_eq!(after.sum("http_disk_server_errors_total"), 0.0);
    assert_eq!(after.value("http_disk_server_requests_in_flight", &[]), 0.0);
    assert_eq!(after.value("http_disk_server_up", &[]), 1.0);
    assert_eq!(
        after.value("http_disk_server_disk_size_bytes", &[]),
        (1 << 20) as f64
    );

    // /status sums the same counters.
    let status = status(&server);
    assert_eq!(status["requests"]["by_op"]["read"], READS + 1);
    assert_eq!(status["requests"]["by_op"]["write"], WRITES);
    assert_eq!(status["requests"]["by_class"]["2xx"], READS + WRITES);
    assert_eq!(status["requests"]["by_class"]["4xx"], 1);
    assert_eq!(status["bytes"]["read"], READS * READ_SIZE);
    assert_eq!(status["bytes"]["written"], WRITES * WRITE_SIZE);
    assert_eq!(status["refused"]["not_allowed"], 1);
}

#[test]
fn status_names_the_disk_its_size_and_mode() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 192 * KIB, 3);
    for readonly in [false, true] {
        let args: &[&str] = if readonly { &["--readonly"] } else { &[] };
        let server = DiskServer::start_with_metrics(&disk, args);
        let status = status(&server);
        assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(status["disk"]["path"], disk.display().to_string());
        assert_eq!(status["disk"]["size"], 192 * KIB);
        assert_eq!(status["disk"]["kind"], "file");
        assert_eq!(status["disk"]["state"], "held");
        assert_eq!(status["disk"]["readonly"], readonly);
        assert_eq!(status["disk"]["drbd"], serde_json::Value::Null);
        assert_eq!(status["requests"]["total"], 0);
        assert!(status["uptime_seconds"].as_u64().unwrap() < 60);
        let scrape = scrape(&server);
        assert_eq!(
            scrape.value("http_disk_server_readonly", &[]),
            f64::from(u8::from(readonly))
        );
    }
}

#[test]
fn a_server_waiting_for_its_device_says_so() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("not-yet");
    let server = DiskServer::start_with_metrics(&missing, &[]);
    let (code, _) = curl(&["-r", "0-9", &server.url()]);
    assert_eq!(code, 503);
    let status = status(&server);
    assert_eq!(status["disk"]["state"], "waiting");
    assert_eq!(status["disk"]["size"], serde_json::Value::Null);
    assert_eq!(status["refused"]["not_held"], 1);
    let scrape = scrape(&server);
    assert_eq!(scrape.value("http_disk_server_disk_held", &[]), 0.0);
    assert_eq!(
        scrape.value(
            "http_disk_server_requests_total",
            &[("op", "read"), ("code", "503")]
        ),
        1.0
    );
}

#[test]
fn a_request_in_flight_and_a_client_turned_away_busy_are_seen() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 64 * KIB, 9);
    let server = DiskServer::start_with_metrics(&disk, &["--workers", "1"]);
    // The only worker is busy receiving a write body that stalls.
    let mut writer = TcpStream::connect(server.addr()).unwrap();
    writer
        .write_all(
            b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-9/*\r\nContent-Length: 10\r\n\r\n01234",
        )
        .unwrap();
    let busy = harness::wait_until(Duration::from_secs(5), || {
        scrape(&server).value("http_disk_server_requests_in_flight", &[]) == 1.0
    });
    assert!(busy, "the stalled write is not in flight");
    assert_eq!(curl(&["-r", "0-9", &server.url()]).0, 503);
    let during = scrape(&server);
    assert_eq!(during.value("http_disk_server_connections_open", &[]), 1.0);
    assert_eq!(
        during.value("http_disk_server_refused_total", &[("reason", "busy")]),
        1.0
    );
    // Turned away at accept: no request of it was read, so none counted.
    assert_eq!(during.sum("http_disk_server_requests_total"), 0.0);
    writer.write_all(b"56789").unwrap();
    assert!(harness::wait_until(Duration::from_secs(5), || {
        let after = scrape(&server);
        after.value("http_disk_server_requests_in_flight", &[]) == 0.0
            && after.value(
                "http_disk_server_requests_total",
                &[("op", "write"), ("code", "200")],
            ) == 1.0
    }));
}

#[test]
fn the_metrics_port_serves_no_data_and_the_data_port_no_metrics() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 64 * KIB, 4);
    let original = std::fs::read(&disk).unwrap();
    let server = DiskServer::start_with_metrics(&disk, &[]);
    let metrics = server.metrics_url();

    // Data requests on the metrics port: a Range GET is 404, other
    // methods 405, and nothing is written.
    assert_eq!(curl(&["-r", "0-9", &format!("{metrics}/")]).0, 404);
    assert_eq!(curl(&["-I", &format!("{metrics}/metrics")]).0, 405);
    let put = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Range: bytes 0-4/*",
        "--data-binary",
        "xxxxx",
        &format!("{metrics}/"),
    ]);
    assert_eq!(put.0, 405);
    assert_eq!(std::fs::read(&disk).unwrap(), original);

    // The data port takes /metrics as what it always was: a GET without
    // Range, i.e. the whole disk.
    let (code, body) = curl(&[&format!("{}/metrics", server.url())]);
    assert_eq!(code, 200);
    assert!(
        body == original,
        "GET /metrics on the data port is not the disk"
    );
    assert_eq!(
        scrape(&server).value(
            "http_disk_server_requests_total",
            &[("op", "read"), ("code", "200")]
        ),
        1.0
    );
}

#[test]
fn a_metrics_port_in_use_is_refused_clearly_at_start() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 64 * KIB, 5);
    let first = DiskServer::start_with_metrics(&disk, &[]);
    let taken = format!("127.0.0.1:{}", first.metrics_port.unwrap());
    let Err(mut second) = DiskServer::try_start(&disk, &["--metrics-listen", &taken]) else {
        panic!("a second server started on metrics address {taken}");
    };
    assert!(second.wait_timeout(Duration::from_secs(10)).is_some());
    let output = second.output_when_closed();
    assert!(
        output.contains(&format!(
            "cannot listen for metrics on {taken} (--metrics-listen): port {} is already in use",
            first.metrics_port.unwrap()
        )),
        "{output}"
    );
}

/// Whether the metrics listener closes a new connection without reading
/// a request from it (all its scrape slots taken).
fn closed_without_reply(addr: &str) -> bool {
    raw_exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n", false).is_empty()
}

#[test]
fn silent_scrapers_take_no_more_than_four_slots_and_only_for_two_seconds() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 64 * KIB, 6);
    let server = DiskServer::start_with_metrics(&disk, &[]);
    let addr = server
        .metrics_url()
        .trim_start_matches("http://")
        .to_owned();
    let silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // Let the listener take all four before the fifth comes.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert!(closed_without_reply(&addr), "a fifth scrape was answered");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The data port does not care.
    assert!(server.answers());
    // The silent ones are dropped after the 2 s head time; scrapes work again.
    assert!(harness::wait_until(Duration::from_secs(5), || {
        status_of(&raw_exchange(
            &addr,
            b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n",
            false,
        )) == 200
    }));
    drop(silent);
}

// ------------------------------------------------------- multihttp plugin

fn multihttp() -> std::path::PathBuf {
    harness::artifact("libmultihttp.so")
}

/// The `key=value` lines of a plugin status file.
fn status_file(path: &std::path::Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("status file {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (key, value) = l.split_once('=').unwrap_or_else(|| panic!("line {l:?}"));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn the_plugin_status_file_follows_a_failover_from_a_to_b() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 1 << 20, 7);
    let mut servers = [DiskServer::start(&disk, &[]), DiskServer::start(&disk, &[])];
    let urls = format!("urls={},{}", servers[0].url(), servers[1].url());
    let file = dir.path().join("multihttp.status");
    let status_key = format!("status-file={}", file.display());
    let nbdkit = harness::Nbdkit::start(
        &["-v"],
        &multihttp(),
        &[&urls, "device-size=1M", &status_key],
    );
    // Written at start-up, before any server was probed.
    let start = status_file(&file);
    assert_eq!(start["current"], "");
    assert_eq!(start["failovers"], "0");
    assert_eq!(start["urls"], "2");

    harness::nbdsh(&nbdkit.uri(), "h.pread(4096, 0)");
    let before = status_file(&file);
    // Whichever server answered the probes first is in use.
    let first = servers
        .iter()
        .position(|s| before["current"] == s.url())
        .unwrap_or_else(|| panic!("current is no server: {before:?}"));
    let (other, n_first, n_other) = (1 - first, first + 1, 2 - first);
    assert_eq!(before["failovers"], "0");
    assert_eq!(before[&format!("url.{n_first}.state")], "ok");
    assert_ne!(before[&format!("url.{n_first}.last_success")], "0");

    servers[first].proc.kill();
    harness::nbdsh(&nbdkit.uri(), "h.pread(4096, 0); h.pwrite(b'x' * 512, 0)");
    let after = status_file(&file);
    assert_eq!(after["current"], servers[other].url(), "{after:?}");
    assert_eq!(after["failovers"], "1", "{after:?}");
    assert_eq!(after[&format!("url.{n_first}.state")], "failing");
    assert!(!after[&format!("url.{n_first}.last_error")].is_empty());
    assert_ne!(after[&format!("url.{n_first}.last_error_time")], "0");
    assert_eq!(after[&format!("url.{n_other}.state")], "ok");
    // The debug line (-v) names the new server and the count.
    let line = format!(
        "current server is now {} (failovers so far: 1)",
        servers[other].url()
    );
    assert!(nbdkit.proc.output.wait_for(&line, Duration::from_secs(5)));
    // No temporary file is left behind.
    assert!(!dir.path().join("multihttp.status.tmp").exists());
}

#[test]
fn an_unwritable_status_file_stops_nbdkit_at_start() {
    let urls = "urls=http://127.0.0.1:1";
    let output = harness::Nbdkit::refusal(
        &[],
        &multihttp(),
        &[
            urls,
            "device-size=1M",
            "status-file=/nonexistent/dir/status",
        ],
    );
    assert!(
        output.contains("status-file") && output.contains("/nonexistent/dir/status"),
        "{output}"
    );
}

#[test]
fn dump_plugin_lists_the_status_facts() {
    let mut cmd = Command::new("nbdkit");
    cmd.arg(multihttp()).arg("--dump-plugin");
    let dump = harness::run_ok(cmd, Duration::from_secs(30));
    for fact in [
        "multihttp_version=",
        "multihttp_url_schemes=http,https",
        "multihttp_status_file=yes",
        "multihttp_status_file_refresh=10s",
    ] {
        assert!(dump.contains(fact), "{fact} missing:\n{dump}");
    }
    let keys = dump
        .lines()
        .find_map(|l| l.strip_prefix("multihttp_keys="))
        .expect("multihttp_keys");
    assert!(keys.split(',').any(|k| k == "status-file"), "{keys}");
}

/// `read: 10 ops, 0.001 s, 40.00 KiB, ...` of nbdkit's stats filter:
/// the op count and the bytes (exact for whole KiB).
fn stats_line(stats: &str, op: &str) -> (u64, u64) {
    let line = stats
        .lines()
        .find(|l| l.starts_with(&format!("{op}: ")))
        .unwrap_or_else(|| panic!("no {op} line in:\n{stats}"));
    let fields: Vec<&str> = line.split(", ").collect();
    let ops = fields[0]
        .trim_start_matches(&format!("{op}: "))
        .trim_end_matches(" ops")
        .parse()
        .unwrap();
    let (amount, unit) = fields[2].split_once(' ').unwrap();
    let scale = match unit {
        "bytes" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        other => panic!("unit {other} in {line}"),
    };
    (ops, (amount.parse::<f64>().unwrap() * scale).round() as u64)
}

#[test]
fn nbdkit_stats_filter_and_the_server_count_the_same_workload() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 1 << 20, 8);
    let server = DiskServer::start_with_metrics(&disk, &[]);
    let stats = dir.path().join("nbdkit.stats");
    let mut nbdkit = harness::Nbdkit::start(
        &["--filter=stats"],
        &multihttp(),
        &[
            &format!("statsfile={}", stats.display()),
            &format!("urls={}", server.url()),
        ],
    );
    const NBD_READS: u64 = 10;
    const NBD_READ: u64 = 4096;
    const NBD_WRITES: u64 = 5;
    const NBD_WRITE: u64 = 12288;
    let before = scrape(&server);
    harness::nbdsh(
        &nbdkit.uri(),
        &format!(
            "for i in range({NBD_READS}): h.pread({NBD_READ}, i * {NBD_READ})\n\
             for i in range({NBD_WRITES}): h.pwrite(b'w' * {NBD_WRITE}, i * {NBD_WRITE})\n"
        ),
    );
    let after = scrape(&server);
    // The stats filter writes its file when nbdkit exits.
    nbdkit.proc.signal(libc::SIGTERM);
    assert!(nbdkit.proc.wait_timeout(Duration::from_secs(20)).is_some());
    let text = std::fs::read_to_string(&stats).expect("stats file written at exit");
    assert_eq!(stats_line(&text, "read"), (NBD_READS, NBD_READS * NBD_READ));
    assert_eq!(
        stats_line(&text, "write"),
        (NBD_WRITES, NBD_WRITES * NBD_WRITE)
    );
    assert_eq!(
        stats_line(&text, "total"),
        (
            NBD_READS + NBD_WRITES,
            NBD_READS * NBD_READ + NBD_WRITES * NBD_WRITE
        )
    );
    // And the server saw one HTTP request per NBD request.
    let moved = |name: &str, labels: &[(&str, &str)]| {
        (after.value(name, labels) - before.value(name, labels)) as u64
    };
    let requests = "http_disk_server_requests_total";
    assert_eq!(
        moved(requests, &[("op", "read"), ("code", "206")]),
        NBD_READS
    );
    assert_eq!(
        moved(requests, &[("op", "write"), ("code", "200")]),
        NBD_WRITES
    );
    assert_eq!(
        moved("http_disk_server_bytes_read_total", &[]),
        NBD_READS * NBD_READ
    );
    assert_eq!(
        moved("http_disk_server_bytes_written_total", &[]),
        NBD_WRITES * NBD_WRITE
    );
}
