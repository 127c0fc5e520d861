//! End-to-end tests of `http-disk-server`'s access control while it runs:
//! `--deny` against `--allow`, the list files, SIGHUP reloading them and
//! `--auth-file` without dropping any client (under a real multihttp
//! nbdkit with fio verifying every block), and the per-peer connection
//! cap. Several client hosts are played from 127.0.0.2, 127.0.0.3...
//! (all of 127/8 is loopback), each connection bound to its source
//! address before connecting.
//!
//! Run: `cargo build --release --workspace &&
//!       cargo test --release -p integration-tests --test server_access`

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use harness::disk_server::{
    auth_line, basic_auth, connect_from, raw_exchange_from, replace_file, status_of, KeptAlive,
};
use harness::fio::assert_fio_clean;
use harness::{
    artifact, cpu_ticks, debian_tool, pattern_file, run, run_ok, DiskServer, Nbdkit, Proc, TempDir,
};

const SIZE: usize = 1 << 20;

/// The client hosts the tests play.
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const THIRD: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const FOURTH: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));

const HEAD: &[u8] = b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/// Status and text of a HEAD from `source` on a fresh connection.
fn head_from(server: &DiskServer, source: IpAddr) -> (u16, String) {
    let reply = raw_exchange_from(source, &server.addr(), HEAD);
    (
        status_of(&reply),
        String::from_utf8_lossy(&reply).into_owned(),
    )
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

// ------------------------------------------------------- --deny and files

#[test]
fn deny_wins_over_allow_and_files_add_to_the_command_line() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 61);
    let deny_file = dir.path().join("deny");
    std::fs::write(&deny_file, "# retired host\n127.0.0.3 # since Monday\n\n").unwrap();
    let server = DiskServer::start(
        &disk,
        &[
            "--allow",
            "127.0.0.0/8",
            "--deny",
            "127.0.0.2",
            "--deny-file",
            path_arg(&deny_file),
        ],
    );
    assert_eq!(head_from(&server, LOCAL).0, 200);
    for denied in [OTHER, THIRD] {
        let (status, text) = head_from(&server, denied);
        assert_eq!(status, 403, "{denied}: {text}");
        assert!(
            text.contains(&format!("X-Disk-Error: {denied} is in the --deny list")),
            "{text}"
        );
    }
    // curl from a denied source address, as an operator would check.
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-I"])
        .args(["--interface", "127.0.0.2", &server.url()]);
    let output = run(curl, Duration::from_secs(30));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "403");
    drop(server);

    // --allow and --allow-file add up; a comment after an entry is fine.
    let allow_file = dir.path().join("allow");
    std::fs::write(&allow_file, "127.0.0.2 # host 2\n127.0.0.3/32\n").unwrap();
    let server = DiskServer::start(
        &disk,
        &[
            "--allow",
            "127.0.0.1",
            "--allow-file",
            path_arg(&allow_file),
        ],
    );
    for allowed in [LOCAL, OTHER, THIRD] {
        assert_eq!(head_from(&server, allowed).0, 200, "{allowed}");
    }
    let (status, text) = head_from(&server, FOURTH);
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("127.0.0.4 is not in the --allow list"),
        "{text}"
    );
}

#[test]
fn bad_access_files_are_refused_at_start_naming_file_and_line() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 62);
    let refusal = |args: &[&str]| {
        DiskServer::try_start(&disk, args)
            .err()
            .unwrap_or_else(|| panic!("the server started with {args:?}"))
            .output_when_closed()
    };
    let allow_file = dir.path().join("allow");
    std::fs::write(&allow_file, "# hosts\n127.0.0.1\n127.0.0.256\n").unwrap();
    let output = refusal(&["--allow-file", path_arg(&allow_file)]);
    let expected = format!("--allow-file {}:3: \"127.0.0.256\"", allow_file.display());
    assert!(output.contains(&expected), "{output}");
    assert!(!output.contains("Server ready!"), "{output}");

    let deny_file = dir.path().join("deny");
    std::fs::write(&deny_file, "host2.example\n").unwrap();
    let output = refusal(&["--deny-file", path_arg(&deny_file)]);
    let expected = format!("--deny-file {}:1: ", deny_file.display());
    assert!(output.contains(&expected), "{output}");

    let missing = dir.path().join("missing");
    let output = refusal(&["--deny-file", path_arg(&missing)]);
    assert!(
        output.contains(&format!("cannot read {}", missing.display())),
        "{output}"
    );
}

// ------------------------------------------------------------------ SIGHUP

#[test]
fn sighup_with_only_command_line_lists_is_harmless() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 63);
    let mut server = DiskServer::start(&disk, &["--allow", "127.0.0.0/8"]);
    let mut kept = KeptAlive::open_from(LOCAL, &server.addr());
    assert_eq!(kept.head("").map(|r| r.status), Some(200));
    for _ in 0..5 {
        let line = server.reload();
        assert!(line.contains("nothing to re-read"), "{line}");
    }
    assert!(server.proc.exited().is_none(), "SIGHUP killed the server");
    // Back to sleep: the accept loop emptied its wake-up pipe (a byte left
    // there would wake it again and again, spinning a core).
    let before = cpu_ticks(server.proc.pid());
    thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(server.proc.pid()) - before;
    assert!(used < 20, "{used} ticks of CPU in 1 s while idle");
    // The same connection, still served: no client was dropped.
    assert_eq!(kept.head("").map(|r| r.status), Some(200));
    assert_eq!(head_from(&server, OTHER).0, 200);
}

/// Files changed between SIGHUPs: a request on a connection opened before
/// is checked against the new policy; a broken file keeps the old one.
#[test]
fn sighup_applies_new_lists_and_users_to_kept_alive_connections() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 64);
    let allow_file = dir.path().join("allow");
    let auth = dir.path().join("auth");
    let (host1, guest, newcomer) = (
        auth_line("host1", "secret-one-0123456789"),
        auth_line("guest", "secret-two-0123456789"),
        auth_line("newcomer", "secret-three-0123456789"),
    );
    replace_file(&allow_file, "127.0.0.1\n127.0.0.2\n");
    replace_file(&auth, &format!("{host1}{guest}"));
    let server = DiskServer::start(
        &disk,
        &[
            "--allow-file",
            path_arg(&allow_file),
            "--auth-file",
            path_arg(&auth),
        ],
    );
    let as_host1 = basic_auth("host1", "secret-one-0123456789");
    let as_guest = basic_auth("guest", "secret-two-0123456789");
    let as_newcomer = basic_auth("newcomer", "secret-three-0123456789");
    let status = |conn: &mut KeptAlive, credentials: &str| conn.head(credentials).map(|r| r.status);

    let mut from_other = KeptAlive::open_from(OTHER, &server.addr());
    let mut as_guest_conn = KeptAlive::open_from(LOCAL, &server.addr());
    assert_eq!(status(&mut from_other, &as_host1), Some(200));
    assert_eq!(status(&mut as_guest_conn, &as_guest), Some(200));
    assert_eq!(status(&mut as_guest_conn, &as_newcomer), Some(401));
    let mut as_guest_conn = KeptAlive::open_from(LOCAL, &server.addr());
    assert_eq!(status(&mut as_guest_conn, &as_guest), Some(200));

    // 127.0.0.2 leaves the allow list, guest leaves and newcomer joins.
    replace_file(&allow_file, "127.0.0.1\n");
    replace_file(&auth, &format!("{host1}{newcomer}"));
    let line = server.reload();
    assert!(
        line.contains(
            "reloaded (files re-read): 1 allowed network(s), 0 denied network(s), 2 user(s)"
        ),
        "{line}"
    );
    assert_eq!(status(&mut from_other, &as_host1), Some(403));
    assert!(from_other.closed_by_server());
    assert_eq!(status(&mut as_guest_conn, &as_guest), Some(401));
    let mut as_newcomer_conn = KeptAlive::open_from(LOCAL, &server.addr());
    assert_eq!(status(&mut as_newcomer_conn, &as_newcomer), Some(200));

    // Broken files: the reload is refused, naming file and line, and the
    // policy in force stays (newcomer in, guest and 127.0.0.2 out).
    replace_file(&auth, &format!("{host1}guest:no-hash\n"));
    let line = server.reload();
    assert!(line.contains("NOT reloaded"), "{line}");
    let expected = format!("--auth-file {}:2: ", auth.display());
    assert!(line.contains(&expected), "{line}");
    replace_file(&auth, &format!("{host1}{guest}"));
    replace_file(&allow_file, "127.0.0.1\n127.0.0.2\n127.0.0.0/33\n");
    let line = server.reload();
    let expected = format!("--allow-file {}:3: ", allow_file.display());
    assert!(
        line.contains("NOT reloaded") && line.contains(&expected),
        "{line}"
    );
    assert_eq!(status(&mut as_newcomer_conn, &as_newcomer), Some(200));
    let mut conn = KeptAlive::open_from(LOCAL, &server.addr());
    assert_eq!(status(&mut conn, &as_guest), Some(401));
    let mut conn = KeptAlive::open_from(OTHER, &server.addr());
    assert_eq!(status(&mut conn, &as_host1), Some(403));

    let log = server.proc.output.snapshot().join("\n");
    assert!(!log.contains("secret-"), "a password was logged:\n{log}");
    assert!(!log.contains("newcomer"), "a user name was logged:\n{log}");
}

/// The client load: fio through a real multihttp nbdkit, writing 4 KiB
/// blocks at random on 16 MiB at queue depth 8 (so multihttp keeps
/// several connections to the server) and verifying each by reading it
/// back; any I/O error or bad block is fatal. Ends after `runtime`.
fn start_fio(nbdkit: &Nbdkit, runtime: Duration, json: &Path) -> Proc {
    let mut fio = debian_tool("fio");
    fio.args([
        "--name=reload",
        "--ioengine=nbd",
        &format!("--uri={}", nbdkit.uri()),
        "--rw=randwrite",
        "--bs=4k",
        "--size=16M",
        "--iodepth=8",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_backlog=256",
        "--verify_state_save=0",
        "--loops=1000000",
        &format!("--runtime={}s", runtime.as_secs()),
        "--output-format=json",
    ])
    .arg(format!("--output={}", json.display()));
    Proc::spawn("fio", fio)
}

/// At least this many SIGHUPs while fio runs.
const RELOADS: usize = 60;

#[test]
fn sighup_under_load_reloads_every_time_and_drops_no_client() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 16 << 20, 65);
    let allow_file = dir.path().join("allow");
    let deny_file = dir.path().join("deny");
    let auth = dir.path().join("auth");
    let host1 = auth_line("host1", "load-secret-0123456789");
    let guest = auth_line("guest", "guest-secret-0123456789");
    replace_file(&allow_file, "127.0.0.1\n127.0.0.2\n");
    replace_file(&deny_file, "");
    replace_file(&auth, &format!("{host1}{guest}"));
    let server = DiskServer::start(
        &disk,
        &[
            "--allow-file",
            path_arg(&allow_file),
            "--deny-file",
            path_arg(&deny_file),
            "--auth-file",
            path_arg(&auth),
        ],
    );
    let pid = server.proc.pid();
    let password = dir.path().join("password");
    std::fs::write(&password, "load-secret-0123456789\n").unwrap();
    let password = format!("password=+{}", password.display());
    let urls = format!("urls={}", server.url());
    let nbdkit = Nbdkit::start(
        &[],
        &artifact("libmultihttp.so"),
        &[&urls, "user=host1", &password],
    );
    let json = dir.path().join("fio.json");
    let mut fio = start_fio(&nbdkit, Duration::from_secs(20), &json);
    let as_host1 = basic_auth("host1", "load-secret-0123456789");
    let as_guest = basic_auth("guest", "guest-secret-0123456789");

    // Even rounds let 127.0.0.2 and guest in, odd rounds take them out
    // (127.0.0.2 by the allow file or the deny file, by turns), each
    // change checked on connections opened before it.
    let mut reloads = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while (reloads < RELOADS || fio.exited().is_none()) && Instant::now() < deadline {
        if fio.exited().is_some() {
            break;
        }
        let mut from_other = KeptAlive::open_from(OTHER, &server.addr());
        let mut as_guest_conn = KeptAlive::open_from(LOCAL, &server.addr());
        let before = (
            from_other.head(&as_host1).map(|r| r.status),
            as_guest_conn.head(&as_guest).map(|r| r.status),
        );
        let letting_in = reloads % 2 == 1;
        match (letting_in, reloads % 4) {
            (true, _) => {
                replace_file(&allow_file, "127.0.0.1\n127.0.0.2\n");
                replace_file(&deny_file, "");
                replace_file(&auth, &format!("{host1}{guest}"));
            }
            (false, 0) => {
                replace_file(&allow_file, "127.0.0.1\n");
                replace_file(&auth, &host1);
            }
            (false, _) => {
                replace_file(&deny_file, "127.0.0.2 # toggled\n");
                replace_file(&auth, &host1);
            }
        }
        let line = server.reload();
        assert!(line.contains("access policy reloaded"), "{line}");
        reloads += 1;
        let (was, now) = if letting_in {
            (Some(403), Some(200))
        } else {
            (Some(200), Some(403))
        };
        let (was_guest, now_guest) = if letting_in {
            (Some(401), Some(200))
        } else {
            (Some(200), Some(401))
        };
        assert_eq!(before, (was, was_guest), "before reload {reloads}");
        if !letting_in {
            // Requests on the connections opened before the reload.
            assert_eq!(from_other.head(&as_host1).map(|r| r.status), now);
            assert_eq!(as_guest_conn.head(&as_guest).map(|r| r.status), now_guest);
        } else {
            let mut conn = KeptAlive::open_from(OTHER, &server.addr());
            assert_eq!(conn.head(&as_host1).map(|r| r.status), now);
            let mut conn = KeptAlive::open_from(LOCAL, &server.addr());
            assert_eq!(conn.head(&as_guest).map(|r| r.status), now_guest);
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        reloads >= RELOADS,
        "only {reloads} reloads before fio ended:\n{}",
        fio.output.snapshot().join("\n")
    );
    let jobs = assert_fio_clean(&mut fio, &json, Duration::from_secs(90), 1);
    println!("{reloads} reloads during fio: {jobs:?}");
    let mut server = server;
    assert!(server.proc.exited().is_none(), "the server died");
    assert_eq!(server.proc.pid(), pid);
    let log = server.proc.output.snapshot().join("\n");
    assert!(!log.contains("NOT reloaded"), "{log}");
    assert_eq!(server.proc.output.count("access policy reloaded"), reloads);
    // multihttp itself never saw a request fail (it would have left the
    // server, logging why) and so never looked for another one.
    let plugin_log = nbdkit.proc.output.snapshot().join("\n");
    assert!(!plugin_log.contains("multihttp: leaving "), "{plugin_log}");
    assert_eq!(
        nbdkit.proc.output.count("multihttp: using "),
        1,
        "{plugin_log}"
    );
}

// ---------------------------------------------- --max-connections-per-peer

/// A connection from `source` with a request in progress: its head is
/// dribbled, the end still to come, so its worker is busy (not idle).
/// Sending fails when the server refused the connection at once (503 and
/// close): the reply is what the caller checks.
fn request_in_progress(source: IpAddr, addr: &str) -> TcpStream {
    let mut stream = connect_from(source, addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for piece in ["HEAD / HTTP/1.1\r\n", "Host: t\r\n", "X-Slow: 1\r\n"] {
        let _ = stream.write_all(piece.as_bytes());
        thread::sleep(Duration::from_millis(50));
    }
    stream
}

/// Reads what the server sent on `stream` until it closes it (10 s max).
fn read_all(stream: &mut TcpStream) -> String {
    let mut reply = Vec::new();
    let _ = std::io::Read::read_to_end(stream, &mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn one_peer_with_requests_in_progress_cannot_take_every_worker() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 66);
    let server = DiskServer::start_with_metrics(
        &disk,
        &["--workers", "6", "--max-connections-per-peer", "4"],
    );
    let addr = server.addr();
    // 127.0.0.2 opens as many connections as there are workers, each
    // with a request in progress: only 4 get a worker.
    let mut busy: Vec<TcpStream> = (0..4).map(|_| request_in_progress(OTHER, &addr)).collect();
    // Let the 4th worker take its first bytes (leave the idle list).
    thread::sleep(Duration::from_millis(300));
    for _ in 0..2 {
        let mut extra = request_in_progress(OTHER, &addr);
        let reply = read_all(&mut extra);
        assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
        assert!(reply.contains("Retry-After: 1"), "{reply}");
        assert!(
            reply.contains("127.0.0.2 already holds 4 connections, all busy with requests"),
            "{reply}"
        );
    }
    // The other hosts are still served.
    assert_eq!(head_from(&server, LOCAL).0, 200);
    assert_eq!(head_from(&server, THIRD).0, 200);
    assert!(server.proc.output.wait_for(
        "127.0.0.2 already holds 4 connections, all busy with requests (--max-connections-per-peer 4), replying 503",
        Duration::from_secs(5)
    ));
    // Counted apart from a server-wide "busy" in /metrics.
    let mut scrape = Command::new("curl");
    scrape
        .args(["-sS", "--max-time", "5"])
        .arg(format!("{}/metrics", server.metrics_url()));
    let metrics = run_ok(scrape, Duration::from_secs(10));
    assert!(
        metrics.contains("http_disk_server_refused_total{reason=\"peer_cap\"} 2\n")
            && metrics.contains("http_disk_server_refused_total{reason=\"busy\"} 0\n"),
        "{metrics}"
    );
    // The requests in progress were never dropped: they complete now.
    for stream in &mut busy {
        stream.write_all(b"Connection: close\r\n\r\n").unwrap();
        let reply = read_all(stream);
        assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    }
}

#[test]
fn a_peer_at_its_cap_makes_room_with_its_own_idle_connection() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", SIZE, 67);
    let server = DiskServer::start(&disk, &["--max-connections-per-peer", "2"]);
    let addr = server.addr();
    // A worker goes back to waiting (idle) just after its reply is sent:
    // give it a moment, so the idle order is the order of these requests.
    let served_then_idle = |conn: &mut KeptAlive| {
        let status = conn.head("").map(|r| r.status);
        thread::sleep(Duration::from_millis(200));
        status
    };
    // The longest idle connection of all is another host's.
    let mut local = KeptAlive::open_from(LOCAL, &addr);
    assert_eq!(served_then_idle(&mut local), Some(200));
    let mut oldest = KeptAlive::open_from(OTHER, &addr);
    assert_eq!(served_then_idle(&mut oldest), Some(200));
    let mut second = KeptAlive::open_from(OTHER, &addr);
    assert_eq!(served_then_idle(&mut second), Some(200));
    // A third connection from 127.0.0.2: its own oldest idle one goes.
    let mut third = KeptAlive::open_from(OTHER, &addr);
    assert_eq!(third.head("").map(|r| r.status), Some(200));
    assert!(oldest.closed_by_server(), "127.0.0.2's oldest was kept");
    assert_eq!(second.head("").map(|r| r.status), Some(200));
    assert_eq!(third.head("").map(|r| r.status), Some(200));
    assert_eq!(
        local.head("").map(|r| r.status),
        Some(200),
        "another host's idle connection was closed"
    );
    assert!(!server.proc.output.contains("replying 503"));
}
