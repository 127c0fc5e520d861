//! End-to-end tests of `http-disk-server`: the real release binary on a
//! regular file and on a loop block device, driven by curl and by raw TCP
//! clients on 127.0.0.1 (and ::1).
//!
//! Run: `cargo build --release -p http-disk-server &&
//!       cargo test --release -p integration-tests --test http_disk_server`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::block::LoopDevice;
use harness::disk_server::{auth_file, raw_exchange, status_of, syncs, KeptAlive, Reply};
use harness::{pattern, pattern_file, run, run_ok, wait_until, DiskServer, TempDir};

const SIZE: usize = 1 << 20;

// ---------------------------------------------------------------- helpers

fn get(addr: &str, range: &str) -> Reply {
    KeptAlive::open(addr).request(
        format!("GET /any/path HTTP/1.1\r\nHost: t\r\nRange: {range}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
}

fn put(addr: &str, start: u64, data: &[u8], extra: &str) -> Reply {
    let last = start + data.len() as u64 - 1;
    let mut raw = format!(
        "PUT / HTTP/1.1\r\nHost: t\r\nContent-Range: bytes {start}-{last}/-1\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        data.len()
    )
    .into_bytes();
    raw.extend_from_slice(data);
    KeptAlive::open(addr).request(&raw)
}

fn post(addr: &str, headers: &str) -> Reply {
    KeptAlive::open(addr).request(
        format!("POST / HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
}

fn read_disk(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read the disk")
}

fn curl() -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "--max-time", "20"]);
    cmd
}

// ------------------------------------------------- round trips, file + loop

/// HEAD / GET / PUT / flush / trim / zero on `disk`, whose content is
/// `expected` at the start; returns when everything checked out.
fn round_trips(disk: &Path, mut expected: Vec<u8>) {
    let server = DiskServer::start(disk, &["-v"]);
    let addr = server.addr();
    let size = expected.len() as u64;

    // HEAD: size, ranges, extensions; no body.
    let head = KeptAlive::open(&addr).request(b"HEAD /whatever HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("Content-Length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(head.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(
        head.header("X-Disk-Features"),
        Some("flush, trim, zero, writeback")
    );

    // GET: the three Range forms at unaligned offsets, exact Content-Range.
    for (range, start, last) in [
        ("bytes=1-1", 1, 1),
        ("bytes=4095-8193", 4095, 8193),
        ("bytes=777-", 777, size - 1),
        ("bytes=-513", size - 513, size - 1),
        ("bytes=1000-99999999", 1000, size - 1),
    ] {
        let reply = get(&addr, range);
        assert_eq!(reply.status, 206, "{range}");
        assert_eq!(
            reply.header("Content-Range"),
            Some(format!("bytes {start}-{last}/{size}").as_str()),
            "{range}"
        );
        assert_eq!(
            reply.body,
            &expected[start as usize..=last as usize],
            "{range}"
        );
    }
    let outside = get(&addr, &format!("bytes={size}-{}", size + 10));
    assert_eq!(outside.status, 416);
    assert_eq!(
        outside.header("Content-Range"),
        Some(format!("bytes */{size}").as_str())
    );
    assert_eq!(get(&addr, "bytes=0-1,3-4").status, 416);

    // PUT with Content-Length at unaligned offsets, then read back.
    for (start, len, seed) in [(3u64, 5usize, 1u64), (4090, 9000, 2), (size - 7, 7, 3)] {
        let data = pattern(len, seed);
        let reply = put(&addr, start, &data, "");
        assert_eq!(
            reply.status,
            200,
            "PUT at {start}: {:?}",
            reply.header("X-Disk-Error")
        );
        expected[start as usize..start as usize + len].copy_from_slice(&data);
        let back = get(&addr, &format!("bytes={start}-{}", start + len as u64 - 1));
        assert_eq!(back.body, data);
    }
    assert_eq!(read_disk(disk), expected, "disk content after PUTs");

    // PUT with a chunked body from curl, total "*".
    let data = pattern(70_000, 9);
    let dir = TempDir::new().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, &data).unwrap();
    let mut cmd = curl();
    cmd.args(["-X", "PUT", "-H", "Transfer-Encoding: chunked"])
        .args(["-H", "Content-Range: bytes 12345-82344/*"])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .args(["-w", "%{http_code}", &server.url()]);
    assert_eq!(run_ok(cmd, Duration::from_secs(30)), "200");
    expected[12345..82345].copy_from_slice(&data);

    // Write-back PUT, then flush.
    let data = pattern(100, 4);
    assert_eq!(
        put(&addr, 50_001, &data, "X-Disk-Writeback: 1\r\n").status,
        200
    );
    expected[50_001..50_101].copy_from_slice(&data);
    assert_eq!(post(&addr, "X-Disk-Op: flush\r\n").status, 200);

    // Trim and zero (with and without may-trim) on unaligned ranges.
    for (op, start, last) in [
        ("trim", 101u64, 70_000u64),
        ("zero", 200_003, 333_333),
        ("zero\r\nX-Disk-May-Trim: 1", 500_001, 600_000),
    ] {
        let reply = post(
            &addr,
            &format!("X-Disk-Op: {op}\r\nX-Disk-Range: bytes={start}-{last}\r\n"),
        );
        assert_eq!(
            reply.status,
            200,
            "{op}: {:?}",
            reply.header("X-Disk-Error")
        );
        expected[start as usize..=last as usize].fill(0);
    }
    let past = post(
        &addr,
        &format!("X-Disk-Op: zero\r\nX-Disk-Range: bytes=5-{size}\r\n"),
    );
    assert_eq!(past.status, 416, "a zero past the end must not be clamped");

    // GET without Range: the whole disk, 200.
    let mut cmd = curl();
    cmd.args(["-o"])
        .arg(dir.path().join("all"))
        .arg(server.url());
    run_ok(cmd, Duration::from_secs(30));
    assert_eq!(std::fs::read(dir.path().join("all")).unwrap(), expected);
    assert_eq!(read_disk(disk), expected, "disk content at the end");

    // Logs: prefixed with the disk's basename, one line per request (-v).
    let name = std::fs::canonicalize(disk).unwrap();
    let prefix = format!("[{}]", name.file_name().unwrap().to_string_lossy());
    let lines = server.proc.output.snapshot();
    assert!(lines
        .iter()
        .any(|l| l.starts_with(&prefix) && l.contains("PUT /")));
    assert!(lines
        .iter()
        .filter(|l| *l != "Server ready!")
        .all(|l| l.starts_with(&prefix)));
}

#[test]
fn round_trips_on_a_regular_file() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 11);
    round_trips(&disk, pattern(SIZE, 11));
}

#[test]
fn round_trips_on_a_loop_block_device() {
    let dir = TempDir::new().unwrap();
    let file = pattern_file(dir.path(), "backing.img", SIZE, 12);
    let device = LoopDevice::attach(&file);
    round_trips(&device.device, pattern(SIZE, 12));
}

// ------------------------------------------------------ old plugin, HTTP/1.x

/// What the old C plugin sends for every write (compat contract): a
/// libcurl PUT of `data` at `start`, chunked, `Expect: 100-continue`,
/// total `-1`, no `X-Disk-*` header. Returns the status code, curl's total
/// time in seconds and its `-v` trace.
fn old_plugin_put(url: &str, start: u64, data: &[u8], dir: &Path) -> (u16, f64, String) {
    let body = dir.join("old-plugin-body");
    std::fs::write(&body, data).unwrap();
    let last = start + data.len() as u64 - 1;
    let mut cmd = curl();
    cmd.args(["-v", "-X", "PUT", "-H", "Transfer-Encoding: chunked"])
        .args(["-H", "Expect: 100-continue"])
        .args(["-H", &format!("Content-Range: bytes {start}-{last}/-1")])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .args(["-w", "%{http_code} %{time_total}", url]);
    let output = run(cmd, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let (code, time) = stdout.split_once(' ').expect("curl -w output");
    (code.parse().unwrap_or(0), time.parse().unwrap(), stderr)
}

#[test]
fn old_plugin_style_write_is_answered_at_once() {
    // On tmpfs, so the timing measures the HTTP exchange (the 1 s stall
    // of a missing 100 Continue), not a busy CI disk's fdatasync.
    let dir = tempfile::Builder::new()
        .tempdir_in("/dev/shm")
        .or_else(|_| TempDir::new())
        .unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 21);
    let server = DiskServer::start(&disk, &[]);
    let data = pattern(4096, 22);
    let (code, seconds, trace) = old_plugin_put(&server.url(), 8192, &data, dir.path());
    assert_eq!(code, 200, "{trace}");
    assert!(trace.contains("HTTP/1.1 100 Continue"), "{trace}");
    // curl waits 1 s for a 100 Continue that never comes (old server).
    assert!(seconds < 0.1, "old-plugin write took {seconds} s");
    assert_eq!(&read_disk(&disk)[8192..12288], &data[..]);
}

/// The old plugin has a single mode: no flush, no FUA (compat contract),
/// because the old server synced every PUT before its 200, so each write
/// it saw acknowledged was durable. The new server must give that PUT,
/// which carries no `X-Disk-Writeback`, the same: `fdatasync` before the
/// reply, on a regular file and on a block device alike, and also when new
/// plugins in write-back mode (a pool half upgraded) left unsynced writes
/// on the same disk just before. Watched with strace: a power cut cannot
/// be played here.
#[test]
fn old_plugin_style_write_is_durable_before_its_reply() {
    let dir = TempDir::new().unwrap();
    let file = pattern_file(dir.path(), "disk.img", SIZE, 23);
    let device = LoopDevice::attach(&file);
    for disk in [&file, &device.device] {
        let trace = dir.path().join("trace");
        let _ = std::fs::remove_file(&trace);
        let server = DiskServer::start_traced(disk, &[], &trace);
        let before = syncs(&trace);
        // A new plugin's write-back write: not synced by itself.
        let reply = put(
            &server.addr(),
            100,
            b"write-back",
            "X-Disk-Writeback: 1\r\n",
        );
        assert_eq!(reply.status, 200);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            syncs(&trace),
            before,
            "{}: write-back PUT synced",
            disk.display()
        );
        let data = pattern(4096, 24);
        let (code, _, curl_trace) = old_plugin_put(&server.url(), 8192, &data, dir.path());
        assert_eq!(code, 200, "{curl_trace}");
        assert_eq!(
            syncs(&trace),
            before + 1,
            "{}: the old plugin's PUT was answered before fdatasync",
            disk.display()
        );
        let now = read_disk(disk);
        assert_eq!(&now[8192..12288], &data[..]);
        assert_eq!(&now[100..110], b"write-back");
    }
}

#[test]
fn keep_alive_and_http_1_0() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 31);
    let mut expected = pattern(SIZE, 31);
    let server = DiskServer::start(&disk, &["-v"]);
    let mut conn = KeptAlive::open(&server.addr());
    for i in 0..150u64 {
        let start = i * 4099 + 1;
        let data = pattern(300, i);
        let mut raw = format!(
            "PUT / HTTP/1.1\r\nHost: t\r\nContent-Range: bytes {start}-{}/{SIZE}\r\nContent-Length: 300\r\nX-Disk-Writeback: 1\r\n\r\n",
            start + 299
        )
        .into_bytes();
        raw.extend_from_slice(&data);
        assert_eq!(conn.request(&raw).status, 200);
        expected[start as usize..start as usize + 300].copy_from_slice(&data);
        let reply = conn.request(
            format!(
                "GET / HTTP/1.1\r\nHost: t\r\nRange: bytes={start}-{}\r\n\r\n",
                start + 299
            )
            .as_bytes(),
        );
        assert_eq!((reply.status, &reply.body[..]), (206, &data[..]));
        assert_eq!(conn.request(b"HEAD / HTTP/1.1\r\n\r\n").status, 200);
    }
    // Pipelined: two requests in one write.
    conn.send(b"HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nRange: bytes=0-9\r\n\r\n");
    assert_eq!(conn.reply(true).status, 200);
    assert_eq!(conn.reply(false).body, &expected[..10]);
    assert_eq!(
        conn.request(b"POST / HTTP/1.1\r\nX-Disk-Op: flush\r\n\r\n")
            .status,
        200
    );
    assert_eq!(
        server.proc.output.count(": connected"),
        1,
        "one connection only"
    );
    assert_eq!(read_disk(&disk), expected);

    // HTTP/1.0: served, then closed, unless it asks for keep-alive.
    let mut old = KeptAlive::open(&server.addr());
    let reply = old.request(b"GET / HTTP/1.0\r\nRange: bytes=5-9\r\n\r\n");
    assert_eq!((reply.status, &reply.body[..]), (206, &expected[5..10]));
    assert!(old.closed_by_server());
    let mut old = KeptAlive::open(&server.addr());
    for _ in 0..3 {
        let reply = old.request(b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(reply.header("Connection"), Some("keep-alive"));
    }
}

// ----------------------------------------------------- concurrency, timeouts

#[test]
fn idle_and_slow_clients_do_not_delay_others() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 41);
    let server = DiskServer::start(&disk, &["--idle-timeout", "30"]);
    // Silent connections, a half-sent head, a half-sent body.
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    let mut slow_head = TcpStream::connect(server.addr()).unwrap();
    slow_head.write_all(b"GET / HTTP/1.1\r\nRange: by").unwrap();
    let mut slow_body = TcpStream::connect(server.addr()).unwrap();
    slow_body
        .write_all(
            b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-99/-1\r\nContent-Length: 100\r\n\r\nabc",
        )
        .unwrap();
    idle.push(slow_head);
    idle.push(slow_body);
    std::thread::sleep(Duration::from_millis(200));
    // Another client is served at once, many times over.
    let started = Instant::now();
    let mut conn = KeptAlive::open(&server.addr());
    for _ in 0..50 {
        assert_eq!(conn.request(b"HEAD / HTTP/1.1\r\n\r\n").status, 200);
        assert_eq!(get(&server.addr(), "bytes=0-99").status, 206);
    }
    let took = started.elapsed();
    // Were the server stalled by them, this would take the idle timeout (30 s).
    assert!(took < Duration::from_secs(10), "other client took {took:?}");
    drop(idle);
}

#[test]
fn idle_timeout_drops_silent_and_slow_clients() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 42);
    let original = read_disk(&disk);
    let server = DiskServer::start(&disk, &["--idle-timeout", "1"]);
    let mut silent = KeptAlive::open(&server.addr());
    let mut slow = KeptAlive::open(&server.addr());
    slow.send(b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-99/-1\r\nContent-Length: 100\r\n\r\nabc");
    let started = Instant::now();
    assert!(silent.closed_by_server());
    assert!(slow.closed_by_server());
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(read_disk(&disk), original, "a stalled body wrote something");
    assert!(server.answers());

    // A client dribbling its head, one byte every 100 ms, never silent for
    // a whole second: dropped all the same once the head takes too long.
    let mut dribble = TcpStream::connect(server.addr()).unwrap();
    dribble
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    dribble.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
    let started = Instant::now();
    let mut dropped = false;
    while !dropped && started.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(100));
        let mut byte = [0u8; 1];
        dropped = dribble.write_all(b"a").is_err()
            || matches!(dribble.read(&mut byte), Ok(0))
            || matches!(dribble.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
    }
    assert!(dropped, "a dribbling client was not dropped");
    assert!(server.answers());
}

#[test]
fn concurrent_writers_land_where_they_aim() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 44);
    let server = DiskServer::start(&disk, &[]);
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let addr = server.addr();
            std::thread::spawn(move || {
                // Interleaved 1000-byte slots, odd offsets: writer w owns
                // slots w, w+8, w+16...
                let mut conn = KeptAlive::open(&addr);
                for round in 0..40u64 {
                    let start = (round * 8 + w) * 1000 + 1;
                    let data = pattern(1000, w * 1000 + round);
                    let mut raw = format!(
                        "PUT / HTTP/1.1\r\nContent-Range: bytes {start}-{}/-1\r\nContent-Length: 1000\r\nX-Disk-Writeback: 1\r\n\r\n",
                        start + 999
                    )
                    .into_bytes();
                    raw.extend_from_slice(&data);
                    assert_eq!(conn.request(&raw).status, 200);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    assert_eq!(post(&server.addr(), "X-Disk-Op: flush\r\n").status, 200);
    let mut expected = pattern(SIZE, 44);
    for w in 0..8u64 {
        for round in 0..40u64 {
            let start = ((round * 8 + w) * 1000 + 1) as usize;
            expected[start..start + 1000].copy_from_slice(&pattern(1000, w * 1000 + round));
        }
    }
    assert_eq!(read_disk(&disk), expected);
}

#[test]
fn busy_server_answers_503_beyond_its_workers() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 43);
    let server = DiskServer::start(&disk, &["--workers", "2"]);
    // Two requests in progress (heads not finished): busy, not idle, so
    // neither can be closed to make room.
    let in_progress = || {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.write_all(b"HEAD / HT").unwrap();
        stream
    };
    let (a, b) = (in_progress(), in_progress());
    // Let both workers read their first bytes (and so stop being idle).
    std::thread::sleep(Duration::from_millis(300));
    assert!(wait_until(Duration::from_secs(5), || {
        let reply = raw_exchange(&server.addr(), b"HEAD / HTTP/1.1\r\n\r\n", false);
        status_of(&reply) == 503 && String::from_utf8_lossy(&reply).contains("Retry-After: 1")
    }));
    drop((a, b));
    assert!(wait_until(Duration::from_secs(5), || server.answers()));
}

/// Kept-alive and silent connections hold a worker each while idle; when
/// all are taken, the one idle the longest is closed for a new client
/// instead of refusing it (http-disk-server `idle.rs`).
#[test]
fn idle_connections_make_room_for_new_clients() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 44);
    let server = DiskServer::start_with_metrics(&disk, &["--workers", "2"]);
    let addr = server.addr();
    let head = b"HEAD / HTTP/1.1\r\n\r\n";
    // A worker registers its connection as idle only after its reply is
    // out, so a client can act before the server counts it: each step
    // waits until both connections are idle, so "the one idle the
    // longest" is the one the test means (CI once saw `silent` counted
    // before `third`, and `silent` closed in its place).
    let both_idle = || {
        assert!(
            wait_until(Duration::from_secs(10), || idle_connections(&server) == 2),
            "the server never counted two idle connections"
        )
    };
    let mut older = KeptAlive::open(&addr);
    assert_eq!(older.request(head).status, 200);
    std::thread::sleep(Duration::from_millis(50));
    let mut newer = KeptAlive::open(&addr);
    assert_eq!(newer.request(head).status, 200);
    both_idle();
    // Both workers are taken by idle kept-alive connections: a newcomer
    // is served, and the one idle the longest closed.
    let mut third = KeptAlive::open(&addr);
    assert_eq!(third.request(head).status, 200, "the newcomer was refused");
    assert!(older.closed_by_server(), "the longest idle was not closed");
    both_idle();
    // Each newcomer takes the place of the longest idle: `newer`, then
    // `third`, then a silent connection that never sent a request.
    let mut silent = TcpStream::connect(&addr).unwrap();
    assert!(newer.closed_by_server());
    both_idle();
    let mut fourth = KeptAlive::open(&addr);
    assert_eq!(fourth.request(head).status, 200);
    assert!(third.closed_by_server());
    both_idle();
    let mut fifth = KeptAlive::open(&addr);
    assert_eq!(fifth.request(head).status, 200);
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        silent.read(&mut [0u8; 1]).unwrap(),
        0,
        "silent one not closed"
    );
    assert_eq!(fourth.request(head).status, 200);
    assert_eq!(fifth.request(head).status, 200);
    assert!(!server.proc.output.contains("workers busy"));
}

/// `http_disk_server_connections_idle` from the metrics listener.
fn idle_connections(server: &DiskServer) -> u64 {
    let metrics = server.metrics_url();
    let addr = metrics.trim_start_matches("http://");
    let reply = raw_exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        false,
    );
    String::from_utf8_lossy(&reply)
        .lines()
        .find_map(|line| line.strip_prefix("http_disk_server_connections_idle "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

// ------------------------------------------------- readonly, allow, limits

#[test]
fn with_an_auth_file_only_the_right_credentials_read_or_write() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 45);
    let original = read_disk(&disk);
    let auth = auth_file(dir.path(), "host1", "0123456789abcdef");
    let server = DiskServer::start(&disk, &["--auth-file", auth.to_str().unwrap()]);
    let body = dir.path().join("body");
    std::fs::write(&body, b"written").unwrap();
    let attempt = |method: &str, credentials: Option<&str>| {
        let mut cmd = curl();
        cmd.args(["-i", "-X", method, "-H", "Range: bytes=0-6"]);
        if method == "PUT" {
            cmd.args(["-H", "Content-Range: bytes 0-6/-1"])
                .arg("--data-binary")
                .arg(format!("@{}", body.display()));
        }
        if let Some(credentials) = credentials {
            cmd.args(["-u", credentials]);
        }
        cmd.arg(server.url());
        let output = run(cmd, Duration::from_secs(30));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    for credentials in [
        None,
        Some("host1:0123456789abcdeF"),
        Some("host2:0123456789abcdef"),
    ] {
        for method in ["HEAD", "GET", "PUT"] {
            let reply = attempt(method, credentials);
            assert!(
                reply.starts_with("HTTP/1.1 401 "),
                "{method} {credentials:?}: {reply}"
            );
            assert!(reply.contains("WWW-Authenticate: Basic realm=\"http-disk-server\""));
        }
    }
    assert_eq!(read_disk(&disk), original, "a refused PUT wrote");
    let right = Some("host1:0123456789abcdef");
    assert!(attempt("PUT", right).starts_with("HTTP/1.1 200 "));
    assert!(attempt("GET", right).ends_with("written"));
    assert!(
        !server.proc.output.contains("0123456789abcdef"),
        "a secret was logged"
    );
    // A bad file is refused at start, naming it.
    let bad = dir.path().join("bad-auth");
    std::fs::write(&bad, "host1:only-two-fields\n").unwrap();
    let refused = DiskServer::try_start(&disk, &["--auth-file", bad.to_str().unwrap()])
        .err()
        .expect("a server with a bad --auth-file started");
    let expected = format!(
        "--auth-file {}:1: expected user:salt:sha256hex",
        bad.display()
    );
    let output = refused.output_when_closed();
    assert!(output.contains(&expected), "{output}");
}

#[test]
fn readonly_server_refuses_writes() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 51);
    let original = read_disk(&disk);
    let server = DiskServer::start(&disk, &["--readonly"]);
    let addr = server.addr();
    let head = KeptAlive::open(&addr).request(b"HEAD / HTTP/1.1\r\n\r\n");
    assert_eq!(
        head.header("X-Disk-Features"),
        Some("flush, trim, zero, writeback, readonly")
    );
    assert_eq!(put(&addr, 0, b"xyz", "").status, 405);
    for op in ["trim", "zero"] {
        let reply = post(
            &addr,
            &format!("X-Disk-Op: {op}\r\nX-Disk-Range: bytes=0-99\r\n"),
        );
        assert_eq!(reply.status, 405, "{op}");
    }
    assert_eq!(post(&addr, "X-Disk-Op: flush\r\n").status, 200);
    assert_eq!(get(&addr, "bytes=0-9").body, &original[..10]);
    assert_eq!(read_disk(&disk), original);
}

#[test]
fn allow_list_refuses_before_the_body() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 52);
    let original = read_disk(&disk);
    let denied = DiskServer::start(&disk, &["--allow", "10.0.0.0/8", "--allow", "fd00::/8"]);
    // A PUT waiting for 100 Continue must get 403 instead, and no body read.
    let mut conn = KeptAlive::open(&denied.addr());
    conn.send(b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-3/-1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let first = conn.next_line();
    assert!(first.starts_with("HTTP/1.1 403"), "{first:?}");
    assert_eq!(get(&denied.addr(), "bytes=0-3").status, 403);
    // Refused before anything else is looked at, even a broken request.
    let broken = b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(status_of(&denied.raw(broken)), 403);
    assert_eq!(read_disk(&disk), original);

    let allowed = DiskServer::start(&disk, &["--allow", "127.0.0.0/8"]);
    assert_eq!(put(&allowed.addr(), 0, b"okay", "").status, 200);
    assert_eq!(&read_disk(&disk)[..4], b"okay");

    // IPv6 loopback, matched by an IPv6 network.
    let v6_server = DiskServer::start_on_ip(&disk, "::1".parse().unwrap(), &["--allow", "::1/128"]);
    let head = b"HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(&v6_server.addr(), head, false);
    assert_eq!(status_of(&reply), 200);
    drop(v6_server);

    // No --ip: one dual-stack socket; IPv4 peers (seen as ::ffff:a.b.c.d)
    // match IPv4 networks, IPv6 peers IPv6 ones.
    let port = harness::free_port();
    let mut cmd = Command::new(harness::artifact("http-disk-server"));
    cmd.arg("--disk").arg(&disk);
    cmd.args(["--port", &port.to_string(), "--allow", "127.0.0.0/8"]);
    let proc = harness::Proc::spawn("http-disk-server-any", cmd);
    assert!(proc
        .output
        .wait_for("Server ready!", Duration::from_secs(20)));
    let v4 = raw_exchange(&format!("127.0.0.1:{port}"), head, false);
    assert_eq!(status_of(&v4), 200);
    let v6 = raw_exchange(&format!("[::1]:{port}"), head, false);
    assert_eq!(status_of(&v6), 403);
}

#[test]
fn oversized_writes_get_413_before_their_body() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 53);
    let original = read_disk(&disk);
    let server = DiskServer::start(&disk, &["--max-request-size", "64K"]);
    let mut conn = KeptAlive::open(&server.addr());
    conn.send(b"PUT / HTTP/1.1\r\nContent-Range: bytes 0-65536/-1\r\nContent-Length: 65537\r\nExpect: 100-continue\r\n\r\n");
    let first = conn.next_line();
    assert!(first.starts_with("HTTP/1.1 413"), "{first:?}");
    // curl sending the body anyway still gets the 413, not a reset.
    let body = dir.path().join("big");
    std::fs::write(&body, vec![7u8; 200_000]).unwrap();
    let mut cmd = curl();
    cmd.args([
        "-X",
        "PUT",
        "-H",
        "Content-Range: bytes 0-199999/-1",
        "-H",
        "Expect:",
    ])
    .arg("--data-binary")
    .arg(format!("@{}", body.display()))
    .args(["-o", "/dev/null", "-w", "%{http_code}", &server.url()]);
    assert_eq!(run_ok(cmd, Duration::from_secs(30)), "413");
    assert_eq!(put(&server.addr(), 0, &[1u8; 65536], "").status, 200);
    assert_eq!(&read_disk(&disk)[65536..], &original[65536..]);
}

// --------------------------------------------------- start-up and shutdown

#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_0() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 61);
    let mut server = DiskServer::start(&disk, &[]);
    let mut conn = KeptAlive::open(&server.addr());
    conn.send(
        b"PUT / HTTP/1.1\r\nContent-Range: bytes 10-19/-1\r\nContent-Length: 10\r\n\r\n01234",
    );
    std::thread::sleep(Duration::from_millis(300));
    server.proc.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    // New connections are refused at once...
    assert!(wait_until(Duration::from_secs(5), || TcpStream::connect(
        server.addr()
    )
    .is_err()));
    // ...while the request in flight completes.
    conn.send(b"56789");
    let reply = conn.reply(false);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Connection"), Some("close"));
    let status = server.proc.wait_timeout(Duration::from_secs(15));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit status {status:?}"
    );
    assert_eq!(&read_disk(&disk)[10..20], b"0123456789");
    // The process has exited, but its last lines may still be on their
    // way through the pipe to the output collector.
    assert!(server
        .proc
        .output
        .wait_for("stopped", Duration::from_secs(5)));
}

#[test]
fn sigint_with_idle_connections_exits_0_quickly() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 62);
    let mut server = DiskServer::start(&disk, &[]);
    let _idle = TcpStream::connect(server.addr()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    server.proc.signal(libc::SIGINT);
    let status = server.proc.wait_timeout(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[test]
fn port_in_use_fails_clearly() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 4096, 63);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut proc = match DiskServer::start_on_port(&disk, port, &[]) {
        Ok(_) => panic!("server started on a port in use"),
        Err(proc) => proc,
    };
    let status = proc.wait_timeout(Duration::from_secs(10)).expect("exited");
    assert_ne!(status.code(), Some(0));
    assert!(
        proc.output
            .wait_for("already in use", Duration::from_secs(5)),
        "{:?}",
        proc.output.snapshot()
    );
    assert!(!proc.output.contains("Server ready!"));
}

#[test]
fn bad_disk_paths_fail_clearly() {
    let dir = TempDir::new().unwrap();
    for (disk, message) in [
        (dir.path(), "Is a directory"),
        (Path::new("/dev/null"), "not a block device or regular file"),
    ] {
        let mut proc = match DiskServer::try_start(disk, &[]) {
            Ok(_) => panic!("server started on {}", disk.display()),
            Err(proc) => proc,
        };
        let status = proc.wait_timeout(Duration::from_secs(10)).expect("exited");
        assert_ne!(status.code(), Some(0));
        assert!(
            proc.output.wait_for(message, Duration::from_secs(5)),
            "{:?}",
            proc.output.snapshot()
        );
        assert!(!proc.output.contains("Server ready!"));
    }
}

/// Stands in for a DRBD device held by a peer or not there yet: the server
/// says ready, answers 503 + Retry-After, and serves once the device shows up.
#[test]
fn missing_device_is_awaited_with_503() {
    let dir = TempDir::new().unwrap();
    let disk = dir.path().join("appears-later.img");
    let mut server = DiskServer::start(&disk, &[]);
    let mut conn = KeptAlive::open(&server.addr());
    for _ in 0..3 {
        // HEAD replies never carry a body, errors included: the same
        // connection must read three clean replies.
        let reply = conn.request(b"HEAD / HTTP/1.1\r\n\r\n");
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("Retry-After"), Some("1"));
        assert!(reply.header("X-Disk-Error").is_some());
    }
    assert!(server.proc.output.contains("device is missing"));
    std::fs::write(&disk, pattern(8192, 64)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || server.answers()));
    assert_eq!(
        get(&server.addr(), "bytes=0-9").body,
        &pattern(8192, 64)[..10]
    );
    server.proc.signal(libc::SIGTERM);
    let status = server.proc.wait_timeout(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[test]
fn sigterm_while_waiting_for_the_device_exits_0() {
    let dir = TempDir::new().unwrap();
    let mut server = DiskServer::start(&dir.path().join("never"), &[]);
    server.proc.signal(libc::SIGTERM);
    let status = server.proc.wait_timeout(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[test]
fn quiet_without_verbose() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "quiet.img", 4096, 65);
    let server = DiskServer::start(&disk, &[]);
    assert_eq!(get(&server.addr(), "bytes=0-1").status, 206);
    assert!(server.answers());
    std::thread::sleep(Duration::from_millis(100));
    let lines = server.proc.output.snapshot();
    assert!(!lines.iter().any(|l| l.contains("GET /")), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("[quiet.img] ")),
        "{lines:?}"
    );
}

// ------------------------------------------------------- bad-input matrix

/// A malformed request and the status it must get.
struct Bad {
    what: &'static str,
    raw: Vec<u8>,
    status: u16,
    /// Close the connection entirely after sending (no reply possible).
    disconnect: bool,
}

fn bad(what: &'static str, raw: impl AsRef<[u8]>, status: u16) -> Bad {
    Bad {
        what,
        raw: raw.as_ref().to_vec(),
        status,
        disconnect: false,
    }
}

fn put_raw(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!("PUT / HTTP/1.1\r\nHost: t\r\n{headers}\r\n").into_bytes();
    raw.extend_from_slice(body);
    raw
}

fn bad_inputs(size: usize) -> Vec<Bad> {
    let long = "a".repeat(10_000);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cr = "Content-Range: bytes 0-9/-1\r\n";
    let mut cases = vec![
        bad("garbage request line", "GARBAGE\r\n\r\n", 400),
        bad("binary request line", b"\x00\x01\x02\xff \xfe\r\n\r\n", 400),
        bad("no HTTP version", "GET /\r\n\r\n", 400),
        bad("bad version", "GET / HTTP/1.x\r\n\r\n", 400),
        bad("double space", "GET  / HTTP/1.1\r\n\r\n", 400),
        bad("request line too long", format!("GET /{long} HTTP/1.1\r\n\r\n"), 414),
        bad("header too long", format!("GET / HTTP/1.1\r\nX-Big: {long}\r\n\r\n"), 431),
        bad("too many headers", format!("GET / HTTP/1.1\r\n{many}\r\n"), 431),
        bad("header without colon", "GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        bad("space in header name", "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        bad("folded header", "GET / HTTP/1.1\r\nA: b\r\n  c\r\n\r\n", 400),
        bad("NUL in header", b"GET / HTTP/1.1\r\nRange: bytes=0-1\x00\r\n\r\n", 400),
        bad("non-UTF-8 header", b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n", 400),
        bad("range not a number", "GET / HTTP/1.1\r\nRange: bytes=abc-\r\n\r\n", 416),
        bad("negative range", "GET / HTTP/1.1\r\nRange: bytes=-1-5\r\n\r\n", 416),
        bad("overflowing range", "GET / HTTP/1.1\r\nRange: bytes=99999999999999999999999-\r\n\r\n", 416),
        bad("reversed range", "GET / HTTP/1.1\r\nRange: bytes=5-1\r\n\r\n", 416),
        bad("multi-range", "GET / HTTP/1.1\r\nRange: bytes=0-1,5-6\r\n\r\n", 416),
        bad("range past the end", format!("GET / HTTP/1.1\r\nRange: bytes={size}-\r\n\r\n"), 416),
        bad("wrong range unit", "GET / HTTP/1.1\r\nRange: items=0-1\r\n\r\n", 416),
        bad("PUT without Content-Range", put_raw("Content-Length: 3\r\n", b"abc"), 400),
        bad("negative Content-Range", put_raw("Content-Range: bytes -5-10/-1\r\nContent-Length: 16\r\n", &[1; 16]), 400),
        bad("overflowing Content-Range", put_raw("Content-Range: bytes 0-18446744073709551616/-1\r\nContent-Length: 1\r\n", b"x"), 400),
        bad("reversed Content-Range", put_raw("Content-Range: bytes 10-5/-1\r\nContent-Length: 6\r\n", &[1; 6]), 400),
        bad("Content-Range past the end", put_raw(&format!("Content-Range: bytes {}-{}/-1\r\nContent-Length: 10\r\n", size - 5, size + 4), &[1; 10]), 416),
        bad("Content-Range total is not the size", put_raw("Content-Range: bytes 0-9/12345\r\nContent-Length: 10\r\n", &[1; 10]), 400),
        bad("Content-Range unsatisfied form", put_raw("Content-Range: bytes */100\r\nContent-Length: 1\r\n", b"x"), 400),
        bad("Content-Length shorter than range", put_raw(&format!("{cr}Content-Length: 5\r\n"), &[1; 5]), 400),
        bad("Content-Length longer than range", put_raw(&format!("{cr}Content-Length: 20\r\n"), &[1; 20]), 400),
        bad("negative Content-Length", put_raw(&format!("{cr}Content-Length: -10\r\n"), &[1; 10]), 400),
        bad("huge Content-Length", put_raw(&format!("{cr}Content-Length: 100000000000000000000000000000\r\n"), &[1; 10]), 400),
        bad("two different Content-Length", put_raw(&format!("{cr}Content-Length: 10\r\nContent-Length: 11\r\n"), &[1; 11]), 400),
        bad("Content-Length and chunked", put_raw(&format!("{cr}Content-Length: 10\r\nTransfer-Encoding: chunked\r\n"), b"a\r\n0123456789\r\n0\r\n\r\n"), 400),
        bad("PUT without body", put_raw(cr, b""), 400),
        bad("chunk size not hex", put_raw(&format!("{cr}Transfer-Encoding: chunked\r\n"), b"zz\r\n0123456789\r\n0\r\n\r\n"), 400),
        bad("negative chunk size", put_raw(&format!("{cr}Transfer-Encoding: chunked\r\n"), b"-a\r\n0123456789\r\n0\r\n\r\n"), 400),
        bad("chunk longer than its size", put_raw(&format!("{cr}Transfer-Encoding: chunked\r\n"), b"5\r\n0123456789\r\n0\r\n\r\n"), 400),
        bad("chunked body longer than range", put_raw(&format!("{cr}Transfer-Encoding: chunked\r\n"), b"b\r\n0123456789X\r\n0\r\n\r\n"), 400),
        bad("chunked body shorter than range", put_raw(&format!("{cr}Transfer-Encoding: chunked\r\n"), b"5\r\n01234\r\n0\r\n\r\n"), 400),
        bad("chunked body without last chunk", put_raw(&format!("{cr}Transfer-Encoding: chunked\r\n"), b"a\r\n0123456789\r\n"), 400),
        bad("chunk size overflowing", put_raw(&format!("{cr}Transfer-Encoding: chunked\r\n"), b"fffffffffffffffffff\r\n0123456789\r\n0\r\n\r\n"), 400),
        bad("body cut short (half-close)", put_raw(&format!("{cr}Content-Length: 10\r\n"), b"01234"), 400),
        bad("unknown Expect", put_raw(&format!("{cr}Content-Length: 10\r\nExpect: 200-ok\r\n"), &[1; 10]), 417),
        bad("bad write-back flag", put_raw(&format!("{cr}Content-Length: 10\r\nX-Disk-Writeback: yes\r\n"), &[1; 10]), 400),
        bad("chunked in HTTP/1.0", format!("PUT / HTTP/1.0\r\n{cr}Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n"), 400),
        bad("POST without op", "POST / HTTP/1.1\r\n\r\n", 400),
        bad("POST unknown op", "POST / HTTP/1.1\r\nX-Disk-Op: explode\r\n\r\n", 400),
        bad("trim without range", "POST / HTTP/1.1\r\nX-Disk-Op: trim\r\n\r\n", 400),
        bad("trim reversed range", "POST / HTTP/1.1\r\nX-Disk-Op: trim\r\nX-Disk-Range: bytes=9-2\r\n\r\n", 400),
        bad("zero past the end", format!("POST / HTTP/1.1\r\nX-Disk-Op: zero\r\nX-Disk-Range: bytes=0-{size}\r\n\r\n"), 416),
        bad("zero bad may-trim", "POST / HTTP/1.1\r\nX-Disk-Op: zero\r\nX-Disk-Range: bytes=0-9\r\nX-Disk-May-Trim: 2\r\n\r\n", 400),
        bad("POST with a body", "POST / HTTP/1.1\r\nX-Disk-Op: zero\r\nX-Disk-Range: bytes=0-9\r\nContent-Length: 3\r\n\r\nabc", 400),
    ];
    for (what, raw) in [
        (
            "disconnect mid-body",
            put_raw(&format!("{cr}Content-Length: 10\r\n"), b"01234"),
        ),
        (
            "disconnect mid-chunk",
            put_raw(
                &format!("{cr}Transfer-Encoding: chunked\r\n"),
                b"a\r\n01234",
            ),
        ),
        (
            "disconnect mid-head",
            b"PUT / HTTP/1.1\r\nContent-Ra".to_vec(),
        ),
    ] {
        cases.push(Bad {
            what,
            raw,
            status: 0,
            disconnect: true,
        });
    }
    cases
}

#[test]
fn bad_input_matrix_gets_4xx_and_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 71);
    let original = read_disk(&disk);
    let server = DiskServer::start(&disk, &["-v"]);
    let cases = bad_inputs(SIZE);
    assert!(cases.iter().filter(|c| !c.disconnect).count() >= 30);
    let mut failures = Vec::new();
    for case in &cases {
        if case.disconnect {
            let mut stream = TcpStream::connect(server.addr()).unwrap();
            stream.write_all(&case.raw).unwrap();
            drop(stream);
            std::thread::sleep(Duration::from_millis(50));
        } else {
            let reply = server.raw(&case.raw);
            let status = status_of(&reply);
            if status != case.status {
                failures.push(format!(
                    "{}: got {status}, want {} ({:?})",
                    case.what,
                    case.status,
                    String::from_utf8_lossy(&reply[..reply.len().min(200)])
                ));
            }
        }
        if read_disk(&disk) != original {
            failures.push(format!("{}: the disk changed", case.what));
            break;
        }
        if !server.answers() {
            failures.push(format!("{}: the server stopped answering", case.what));
            break;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Not 4xx by definition, but refused cleanly too.
    assert_eq!(status_of(&server.raw(b"GET / HTTP/2.0\r\n\r\n")), 505);
    assert_eq!(status_of(&server.raw(b"DELETE / HTTP/1.1\r\n\r\n")), 501);
    assert_eq!(
        status_of(&server.raw(&put_raw(
            "Content-Range: bytes 0-9/-1\r\nTransfer-Encoding: gzip\r\n",
            b"x"
        ))),
        501
    );
    assert_eq!(read_disk(&disk), original);
    assert!(!server.proc.output.contains("panicked"));
}

/// DRBD cannot run here, so this stands in for it: a block device node with
/// DRBD's major number (147; opening it fails with ENXIO, no driver) at a
/// `/dev/drbd/by-res/<res>/0`-like path, and a fake `drbdsetup` on PATH
/// (a mock: it prints the JSON the test chooses and logs its arguments).
/// Checks that the server asks drbdsetup about the right resource, waits
/// while a peer is Primary, answers 503 meanwhile, then retries the open.
#[test]
fn drbd_device_waits_for_the_primary_peer() {
    let dir = TempDir::new().unwrap();
    let by_res = dir.path().join("drbd/by-res/xcp-test");
    std::fs::create_dir_all(&by_res).unwrap();
    let device = by_res.join("0");
    let c_path = std::ffi::CString::new(device.to_str().unwrap()).unwrap();
    // SAFETY: mknod(2) with a valid C string; makedev of DRBD's major.
    let rc = unsafe {
        libc::mknod(
            c_path.as_ptr(),
            libc::S_IFBLK | 0o600,
            libc::makedev(147, 4242),
        )
    };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());

    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let status = dir.path().join("status.json");
    let calls = dir.path().join("calls");
    let primary = r#"[{"name":"xcp-test","role":"Secondary","devices":[{"volume":0,"minor":4242}],
        "connections":[{"peer-node-id":1,"name":"host2","peer-role":"Primary"}]}]"#;
    std::fs::write(&status, primary).unwrap();
    let script = bin.join("drbdsetup");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\ncat '{}'\n",
            calls.display(),
            status.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let port = harness::free_port();
    let mut cmd = Command::new(harness::artifact("http-disk-server"));
    cmd.arg("--disk").arg(&device);
    cmd.args(["--ip", "127.0.0.1", "--port", &port.to_string()]);
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", bin.display()));
    let mut proc = harness::Proc::spawn("http-disk-server-drbd", cmd);
    assert!(proc
        .output
        .wait_for("Server ready!", Duration::from_secs(10)));
    assert!(proc
        .output
        .wait_for("DRBD peer host2 is Primary", Duration::from_secs(5)));
    let addr = format!("127.0.0.1:{port}");
    let reply = raw_exchange(
        &addr,
        b"HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_eq!(status_of(&reply), 503);
    assert!(String::from_utf8_lossy(&reply).contains("Retry-After: 1"));
    assert!(std::fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .any(|l| l == "status xcp-test --json"));
    // The peer steps down: the server now tries to open (ENXIO here: no
    // DRBD driver), which it treats as "missing", and keeps retrying.
    std::fs::write(&status, primary.replace("\"Primary\"", "\"Secondary\"")).unwrap();
    assert!(proc
        .output
        .wait_for("No such device or address", Duration::from_secs(5)));
    assert_eq!(
        status_of(&raw_exchange(
            &addr,
            b"HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n",
            false
        )),
        503
    );
    let name_prefix = "[0] ";
    assert!(proc
        .output
        .snapshot()
        .iter()
        .any(|l| l.starts_with(name_prefix)));
    proc.signal(libc::SIGTERM);
    let exit = proc.wait_timeout(Duration::from_secs(5));
    assert_eq!(exit.and_then(|s| s.code()), Some(0));
}

/// Durability cannot be power-cut here, so the test watches the system
/// calls instead (strace): a plain PUT, trim or flush has called
/// fdatasync by the time its 200 arrives; with `X-Disk-Writeback: 1`,
/// PUT and trim do not sync, and the next flush does.
#[test]
fn writes_are_durable_before_the_reply_unless_write_back() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 81);
    let trace = dir.path().join("trace");
    let server = DiskServer::start_traced(&disk, &[], &trace);
    let addr = server.addr();
    let syncs = || syncs(&trace);
    let before = syncs();
    assert_eq!(
        put(&addr, 7, b"write-back", "X-Disk-Writeback: 1\r\n").status,
        200
    );
    let trim_wb = "X-Disk-Op: trim\r\nX-Disk-Range: bytes=5000-9999\r\nX-Disk-Writeback: 1\r\n";
    assert_eq!(post(&addr, trim_wb).status, 200);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(syncs(), before, "write-back requests must not sync");
    assert_eq!(post(&addr, "X-Disk-Op: flush\r\n").status, 200);
    assert_eq!(syncs(), before + 1, "flush must sync before its reply");
    assert_eq!(put(&addr, 77, b"durable", "").status, 200);
    assert_eq!(
        syncs(),
        before + 2,
        "a plain PUT must sync before its reply"
    );
    let trim = "X-Disk-Op: trim\r\nX-Disk-Range: bytes=20000-29999\r\n";
    assert_eq!(post(&addr, trim).status, 200);
    assert_eq!(
        syncs(),
        before + 3,
        "a plain trim must sync before its reply"
    );
}
