//! HTTPS end to end: http-disk-server with `--tls-cert`/`--tls-key`
//! driven by curl and raw TCP clients, and the multihttp plugin in a real
//! nbdkit reading and writing through `https://` URLs, with certificates
//! from a throwaway CA (`harness::test_ca`).
//!
//! Run: `cargo build --release --workspace &&
//!       cargo test --release -p integration-tests --test tls`

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use harness::disk_server::raw_exchange;
use harness::garage::Garage;
use harness::test_ca::{tls_exchange, ServerCert, TestCa};
use harness::tls_proxy::TlsProxy;
use harness::{
    artifact, debian_tool, nbdsh, pattern, pattern_file, run, DiskServer, Nbdkit, TempDir,
};

const SIZE: usize = 4 << 20;

/// Starts a TLS server on `disk` with `cert`, plus `args`.
fn https_server(disk: &Path, cert: &ServerCert, args: &[&str]) -> DiskServer {
    https_server_on(IpAddr::V4(Ipv4Addr::LOCALHOST), disk, cert, args)
}

const IPV6_LOOPBACK: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// As [`https_server`], listening on `ip`.
fn https_server_on(ip: IpAddr, disk: &Path, cert: &ServerCert, args: &[&str]) -> DiskServer {
    let (cert, key) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let mut all = vec!["--tls-cert", &cert, "--tls-key", &key];
    all.extend_from_slice(args);
    DiskServer::start_on_ip(disk, ip, &all)
}

/// Runs curl (silent, errors shown, 30 s at most) with `args`.
fn curl(args: &[&str]) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30"]).args(args);
    run(cmd, Duration::from_secs(60))
}

fn curl_ok(args: &[&str]) -> Vec<u8> {
    let out = curl(args);
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn read_disk(path: &Path, offset: usize, len: usize) -> Vec<u8> {
    std::fs::read(path).unwrap()[offset..offset + len].to_vec()
}

// ------------------------------------------------------ http-disk-server

/// SIGHUP re-reads `--tls-cert`/`--tls-key` (a renewed certificate, here
/// from another CA): new connections get the new one; a broken file on
/// reload keeps the previous one in force.
#[test]
fn sighup_loads_a_renewed_certificate_and_keeps_the_old_one_if_the_new_is_broken() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", SIZE, 9);
    let (old_ca, new_ca) = (TestCa::new("old"), TestCa::new("renewed"));
    let (old_cert, new_cert) = (old_ca.loopback_cert(), new_ca.loopback_cert());
    // The files the server is started with, replaced as an operator would.
    let (live_cert, live_key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let install = |from: &ServerCert| {
        std::fs::copy(&from.cert, &live_cert).unwrap();
        std::fs::copy(&from.key, &live_key).unwrap();
    };
    install(&old_cert);
    let (cert_arg, key_arg) = (
        live_cert.display().to_string(),
        live_key.display().to_string(),
    );
    let server = DiskServer::start(&disk, &["--tls-cert", &cert_arg, "--tls-key", &key_arg]);
    let url = server.https_url();
    let trusts = |ca: &TestCa| {
        let ca = ca.cert.display().to_string();
        curl(&["--cacert", &ca, "-I", &url]).status.success()
    };
    assert!(trusts(&old_ca) && !trusts(&new_ca));

    let reloaded = "SIGHUP: TLS certificate and key reloaded";
    install(&new_cert);
    server.proc.signal(libc::SIGHUP);
    assert!(server
        .proc
        .output
        .wait_for(reloaded, Duration::from_secs(10)));
    assert!(
        trusts(&new_ca) && !trusts(&old_ca),
        "the renewed certificate is not served"
    );

    std::fs::write(&live_cert, "not a certificate\n").unwrap();
    server.proc.signal(libc::SIGHUP);
    assert!(server.proc.output.wait_for(
        "SIGHUP: TLS NOT reloaded, the previous certificate stays",
        Duration::from_secs(10)
    ));
    assert!(
        trusts(&new_ca),
        "a broken file on reload stopped the server's TLS"
    );
    assert_eq!(server.proc.output.count(reloaded), 1);
}

#[test]
fn https_head_get_and_put_round_trip_byte_exact() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", SIZE, 1);
    // Signed by an intermediate: the certificate file is a chain, and
    // curl, trusting only the root, needs the server to send all of it.
    let root = TestCa::new("root");
    let cert = root.intermediate("intermediate").loopback_cert();
    let server = https_server(&disk, &cert, &[]);
    let ca = root.cert.display().to_string();
    let url = server.https_url();

    let head = String::from_utf8(curl_ok(&["--cacert", &ca, "-I", &url])).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("Content-Length: {SIZE}")), "{head}");

    // A small read (sent inline with the head) and a large one (streamed
    // in many TLS records), by address and by host name.
    let expected = pattern(SIZE, 1);
    let small = curl_ok(&["--cacert", &ca, "-r", "100-4195", &url]);
    assert!(small == expected[100..4196], "small range differs");
    let localhost = format!("https://localhost:{}/", server.port);
    let large = curl_ok(&["--cacert", &ca, "-r", "1000-3001000", &localhost]);
    assert!(large == expected[1000..3_001_001], "large range differs");

    // Writes, small and large (more than the 64 KiB read buffer).
    for (offset, len, seed) in [(5000usize, 3000usize, 2u64), (1 << 20, 2 << 20, 3)] {
        let body = pattern_file(dir.path(), "body", len, seed);
        let range = format!("Content-Range: bytes {offset}-{}/{SIZE}", offset + len - 1);
        curl_ok(&[
            "--cacert",
            &ca,
            "-T",
            &body.display().to_string(),
            "-H",
            &range,
            "-f",
            &url,
        ]);
        assert!(
            read_disk(&disk, offset, len) == pattern(len, seed),
            "PUT of {len} bytes at {offset} not on disk byte-exact"
        );
        let back = curl_ok(&[
            "--cacert",
            &ca,
            "-r",
            &format!("{offset}-{}", offset + len - 1),
            &url,
        ]);
        assert!(back == pattern(len, seed), "GET after PUT differs");
    }
}

#[test]
fn clients_that_do_not_trust_the_certificate_are_refused() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", 1 << 20, 1);
    let ca = TestCa::new("server ca");
    let server = https_server(&disk, &ca.loopback_cert(), &[]);
    let url = server.https_url();

    // curl's own CA store, then another CA: both refuse (60: peer
    // certificate cannot be authenticated).
    let out = curl(&["-I", &url]);
    assert_eq!(out.status.code(), Some(60), "{out:?}");
    let other = TestCa::new("other ca");
    let out = curl(&["--cacert", &other.cert.display().to_string(), "-I", &url]);
    assert_eq!(out.status.code(), Some(60), "{out:?}");
    // The server logs why, with the client's alert.
    assert!(
        server
            .proc
            .output
            .wait_for("TLS handshake failed", Duration::from_secs(5)),
        "no handshake failure logged"
    );
    // And serves those that trust it.
    let ok = curl(&["--cacert", &ca.cert.display().to_string(), "-I", &url]);
    assert!(ok.status.success(), "{ok:?}");
}

#[test]
fn plain_http_silent_and_dribbling_clients_only_cost_their_own_worker() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", 1 << 20, 1);
    let ca = TestCa::new("ca");
    let mut server = https_server(
        &disk,
        &ca.loopback_cert(),
        &["--idle-timeout", "2", "--workers", "2", "-v"],
    );
    let cacert = ca.cert.display().to_string();
    let url = server.https_url();
    let served = || curl(&["--cacert", &cacert, "-I", &url]).status.success();

    // Plain HTTP to the HTTPS port: no HTTP reply, a warning that says
    // what probably happened.
    let reply = raw_exchange(
        &server.addr(),
        b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        false,
    );
    assert!(!reply.starts_with(b"HTTP/"), "plain HTTP answered in clear");
    assert!(
        server.proc.output.wait_for(
            "plain HTTP sent to this HTTPS port?",
            Duration::from_secs(5)
        ),
        "no warning about plain HTTP"
    );

    // Silent connections on every worker: a client is still served (the
    // longest-idle one makes room, as on plain HTTP).
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    assert!(served(), "a silent connection kept a client out");

    // A client sending its handshake one byte per 300 ms is dropped once
    // the idle timeout (2 s) has passed since the first byte, although
    // every single read is well within the timeout.
    let mut dribbler = TcpStream::connect(server.addr()).unwrap();
    dribbler
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // A TLS record header announcing a 512-byte handshake message.
    let hello = [
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let started = Instant::now();
    let mut dropped_after = None;
    for byte in hello.iter().cycle().take(40) {
        if dribbler.write_all(&[*byte]).is_err() {
            dropped_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        match dribbler.read(&mut buf) {
            Ok(0) => {
                dropped_after = Some(started.elapsed());
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                dropped_after = Some(started.elapsed());
                break;
            }
        }
    }
    let dropped_after = dropped_after.expect("a dribbling handshake was never dropped");
    assert!(
        dropped_after < Duration::from_secs(4),
        "dribbling handshake dropped only after {dropped_after:?}"
    );

    // Meanwhile and after, the server serves and is alive.
    assert!(served(), "not served after the bad clients");
    assert!(server.proc.exited().is_none(), "server exited");
    drop(silent);
}

#[test]
fn a_write_whose_tls_client_has_closed_is_not_applied() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", 1 << 20, 1);
    let ca = TestCa::new("ca");
    let server = https_server(&disk, &ca.loopback_cert(), &[]);
    let put = format!(
        "PUT / HTTP/1.1\r\nHost: t\r\nContent-Range: bytes 0-2/{}\r\n\
         Content-Length: 3\r\nConnection: close\r\n\r\nabc",
        1 << 20
    );
    // The client closes (close_notify, then its TCP side) right behind
    // the request: the write must not be applied, as on plain HTTP.
    let reply = tls_exchange(&server.addr(), &ca.cert, "localhost", put.as_bytes(), true);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.contains("nothing changed"), "{reply}");
    assert!(
        read_disk(&disk, 0, 3) == pattern(1 << 20, 1)[..3],
        "abandoned write applied"
    );
    // The same request from a client that waits is applied.
    let reply = tls_exchange(&server.addr(), &ca.cert, "localhost", put.as_bytes(), false);
    assert!(
        reply.starts_with(b"HTTP/1.1 20"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(read_disk(&disk, 0, 3), b"abc");
}

#[test]
fn with_every_worker_in_a_handshake_a_newcomer_is_closed_not_kept_waiting() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", 1 << 20, 1);
    let ca = TestCa::new("ca");
    let server = https_server(
        &disk,
        &ca.loopback_cert(),
        &["--idle-timeout", "5", "--workers", "1"],
    );
    // The only worker is busy with a handshake that has begun (one byte
    // of a record header): not idle, so it is not closed to make room.
    let mut busy = TcpStream::connect(server.addr()).unwrap();
    busy.write_all(&[0x16]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A 503 would need a handshake in the accept loop: the newcomer's
    // connection is closed at once instead, so it can go elsewhere.
    let started = Instant::now();
    let out = curl(&[
        "--cacert",
        &ca.cert.display().to_string(),
        "-I",
        &server.https_url(),
    ]);
    assert!(!out.status.success(), "served without a free worker");
    assert!(started.elapsed() < Duration::from_secs(3), "kept waiting");
    assert!(server.proc.output.wait_for(
        "all 1 workers busy with requests, closing the new connection",
        Duration::from_secs(5)
    ));
    drop(busy);
}

#[test]
fn unusable_certificate_or_key_files_are_refused_at_start() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", 1 << 20, 1);
    let ca = TestCa::new("ca");
    let good = ca.loopback_cert();
    let other = ca.server_cert("other", &["DNS:other"]);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let text = |p: &Path| p.display().to_string();

    let cases: [(&[String], &[&str]); 6] = [
        (
            &[text(&missing), text(&good.key)],
            &["--tls-cert", "missing.pem", "cannot read"],
        ),
        (
            &[text(&garbage), text(&good.key)],
            &["--tls-cert", "garbage.pem", "no certificate"],
        ),
        (
            &[text(&good.cert), text(&garbage)],
            &["--tls-key", "garbage.pem", "no private key"],
        ),
        // A key file with only a certificate in it.
        (
            &[text(&good.cert), text(&good.cert)],
            &["--tls-key", "no private key"],
        ),
        (
            &[text(&good.cert), text(&other.key)],
            &["cannot use --tls-key", "other.key"],
        ),
        (
            &[text(&good.cert), text(&missing)],
            &["--tls-key", "missing.pem", "cannot read"],
        ),
    ];
    for (files, expected) in cases {
        let args = ["--tls-cert", &files[0], "--tls-key", &files[1]];
        let Err(proc) = DiskServer::try_start(&disk, &args) else {
            panic!("server started with {files:?}");
        };
        let output = proc.output_when_closed();
        for needle in expected {
            assert!(
                output.contains(needle),
                "{files:?}: {needle:?} not in:\n{output}"
            );
        }
    }
    // One without the other.
    for args in [
        ["--tls-cert", &text(&good.cert)],
        ["--tls-key", &text(&good.key)],
    ] {
        let Err(proc) = DiskServer::try_start(&disk, &args) else {
            panic!("server started with {args:?}");
        };
        let output = proc.output_when_closed();
        assert!(output.contains("required"), "{args:?}:\n{output}");
    }
}

// ------------------------------------------------------------ multihttp

fn cafile(ca: &TestCa) -> String {
    format!("cafile={}", ca.cert.display())
}

/// nbdsh: writes at odd offsets and sizes (up to 1 MiB + 13), reads each
/// back, flushes, then prints `ok`.
const ROUND_TRIPS: &str = "import os\n\
    for off, n in [(0, 1), (1, 4095), (4095, 2), (65537, 70000), (1234567, (1 << 20) + 13)]:\n\
    \x20   data = os.urandom(n)\n\
    \x20   h.pwrite(data, off)\n\
    \x20   assert h.pread(n, off) == data, (off, n)\n\
    h.flush()\n\
    print('ok')\n";

/// nbdsh: the whole export, compared with the file at `disk`.
fn export_matches(nbdkit: &Nbdkit, disk: &Path) {
    let script = format!(
        "got = b''.join(h.pread(min(1 << 20, h.get_size() - o), o) for o in range(0, h.get_size(), 1 << 20))\n\
         assert got == open({:?}, 'rb').read(), 'export differs from the disk'\n\
         print('same')\n",
        disk.display().to_string()
    );
    assert!(nbdsh(&nbdkit.uri(), &script).contains("same"));
}

#[test]
fn multihttp_reads_and_writes_through_https_in_a_mixed_list() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", SIZE, 4);
    let ca = TestCa::new("ca");
    let tls = https_server(&disk, &ca.loopback_cert(), &[]);
    let plain = DiskServer::start(&disk, &[]);
    // By host name, and a plain server listed too (stopped, so that the
    // HTTPS one is the one used).
    let urls = [format!("https://localhost:{}", tls.port), plain.url()];
    plain.proc.signal(libc::SIGSTOP);
    let nbdkit = Nbdkit::multihttp(&urls, &[&cafile(&ca), "device-size=4M"]);
    assert!(nbdsh(&nbdkit.uri(), ROUND_TRIPS).contains("ok"));
    export_matches(&nbdkit, &disk);
    assert_eq!(nbdkit.multihttp_active_port(), Some(tls.port));

    // qemu-io, a second real client.
    harness::qemu_io_odd_write_and_verify(&nbdkit.uri());
    assert!(read_disk(&disk, 12345, 7000).iter().all(|&b| b == 0x5a));
    plain.proc.signal(libc::SIGCONT);
}

#[test]
fn multihttp_fails_over_between_two_tls_servers() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", SIZE, 8);
    let ca = TestCa::new("ca");
    let cert = ca.loopback_cert();
    let mut servers = [
        https_server(&disk, &cert, &[]),
        https_server(&disk, &cert, &[]),
    ];
    let urls: Vec<String> = servers.iter().map(DiskServer::https_url).collect();
    let nbdkit = Nbdkit::multihttp(&urls, &[&cafile(&ca), "device-size=4M"]);
    assert!(nbdsh(&nbdkit.uri(), ROUND_TRIPS).contains("ok"));
    // The server in use dies with TLS connections open in the plugin's
    // pool: the next requests fail over, the client sees no error.
    let port = nbdkit
        .multihttp_active_port()
        .expect("the plugin logs the server it uses");
    let victim = servers.iter_mut().find(|s| s.port == port).unwrap();
    victim.proc.kill();
    assert!(nbdsh(&nbdkit.uri(), ROUND_TRIPS).contains("ok"));
    assert!(nbdkit
        .proc
        .output
        .contains(&format!("leaving https://127.0.0.1:{port}")));
    assert!(nbdkit.proc.output.contains(&format!(
        "switched from https://127.0.0.1:{port} to https://"
    )));
    export_matches(&nbdkit, &disk);
}

#[test]
fn an_untrusted_server_is_failed_over_and_alone_is_named_with_the_reason() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", SIZE, 5);
    let trusted = TestCa::new("trusted");
    let untrusted = TestCa::new("untrusted");
    let bad = https_server(&disk, &untrusted.loopback_cert(), &[]);
    let good = https_server(&disk, &trusted.loopback_cert(), &[]);

    // Bad first in the list: the plugin uses the good one, the client
    // sees no error.
    let nbdkit = Nbdkit::multihttp(&[bad.https_url(), good.https_url()], &[&cafile(&trusted)]);
    assert!(nbdsh(&nbdkit.uri(), ROUND_TRIPS).contains("ok"));
    assert_eq!(nbdkit.multihttp_active_port(), Some(good.port));
    drop(nbdkit);

    // Alone, it is refused with its URL and rustls' reason.
    let output = refused_with(&[bad.https_url()], &[&cafile(&trusted)]);
    assert!(output.contains(&bad.https_url()), "{output}");
    assert!(output.contains("TLS handshake"), "{output}");
    assert!(output.contains("UnknownIssuer"), "{output}");
    // Without cafile=, the system bundle is what is trusted: not our CA.
    let output = refused_with(&[good.https_url()], &[]);
    assert!(output.contains("UnknownIssuer"), "{output}");
}

/// Starts nbdkit on `urls` and connects a client, expecting the open to
/// fail because no server is usable; returns nbdkit's output.
fn refused_with(urls: &[String], extra: &[&str]) -> String {
    let mut params = vec!["connect-timeout=2s"];
    params.extend_from_slice(extra);
    let nbdkit = Nbdkit::multihttp(urls, &params);
    let mut cmd = debian_tool("nbdsh");
    cmd.args(["-u", &nbdkit.uri(), "-c", "h.pread(1, 0)"]);
    let client = run(cmd, Duration::from_secs(60));
    assert!(!client.status.success(), "the client was served");
    assert!(
        nbdkit
            .proc
            .output
            .wait_for("no server can serve the disk", Duration::from_secs(10)),
        "no refusal logged"
    );
    nbdkit.proc.output.snapshot().join("\n")
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", SIZE, 6);
    let ca = TestCa::new("ca");
    // Trusted CA, but the certificate is for another host.
    let server = https_server(&disk, &ca.server_cert("other", &["DNS:other.example"]), &[]);
    let output = refused_with(&[server.https_url()], &[&cafile(&ca)]);
    assert!(output.contains("not valid for name"), "{output}");
    // An address certificate does not serve a name, nor the reverse.
    let by_ip = https_server(&disk, &ca.server_cert("ip", &["IP:127.0.0.1"]), &[]);
    let url = format!("https://localhost:{}", by_ip.port);
    let output = refused_with(std::slice::from_ref(&url), &[&cafile(&ca)]);
    assert!(
        output.contains(&url) && output.contains("not valid for name"),
        "{output}"
    );
}

#[test]
fn an_ipv6_literal_url_is_checked_against_the_certificate_address() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", SIZE, 9);
    let ca = TestCa::new("ca");
    // A certificate for the address ::1 only: the brackets of the URL are
    // not part of the name checked.
    let server = https_server_on(
        IPV6_LOOPBACK,
        &disk,
        &ca.server_cert("v6", &["IP:::1"]),
        &[],
    );
    let url = server.https_url();
    let nbdkit = Nbdkit::multihttp(
        std::slice::from_ref(&url),
        &[&cafile(&ca), "device-size=4M"],
    );
    assert!(nbdsh(&nbdkit.uri(), ROUND_TRIPS).contains("ok"));
    export_matches(&nbdkit, &disk);
    drop(nbdkit);
    // A certificate for 127.0.0.1 does not serve ::1.
    let other = https_server_on(
        IPV6_LOOPBACK,
        &disk,
        &ca.server_cert("v4", &["IP:127.0.0.1"]),
        &[],
    );
    let url = other.https_url();
    let output = refused_with(std::slice::from_ref(&url), &[&cafile(&ca)]);
    assert!(
        output.contains(&url) && output.contains("not valid for name"),
        "{output}"
    );
}

#[test]
fn tls_verify_false_connects_to_an_untrusted_server_and_warns() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk", SIZE, 7);
    let untrusted = TestCa::new("untrusted");
    let server = https_server(&disk, &untrusted.server_cert("x", &["DNS:x.example"]), &[]);
    let nbdkit = Nbdkit::multihttp(&[server.https_url()], &["tls-verify=false"]);
    assert!(nbdsh(&nbdkit.uri(), ROUND_TRIPS).contains("ok"));
    export_matches(&nbdkit, &disk);
    assert!(
        nbdkit.proc.output.contains("tls-verify=false")
            && nbdkit.proc.output.contains("NOT checked"),
        "no warning in nbdkit's output"
    );
}

#[test]
fn a_server_silent_in_the_handshake_is_bounded_by_the_timeouts() {
    // Accepts connections (the kernel does) and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let ca = TestCa::new("ca");
    let nbdkit = Nbdkit::multihttp(
        &[url],
        &[
            &cafile(&ca),
            "device-size=1M",
            "connect-timeout=1s",
            "io-timeout=1s",
            "failover-window=2s",
        ],
    );
    let started = Instant::now();
    let mut cmd = debian_tool("nbdsh");
    cmd.args(["-u", &nbdkit.uri(), "-c", "h.pread(512, 0)"]);
    let client = run(cmd, Duration::from_secs(60));
    assert!(!client.status.success(), "read from a silent server");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "a silent handshake held a read for {took:?}"
    );
    // And the plugin gave up each handshake itself (closed its end), not
    // only stopped waiting for a probe thread that would hang on forever.
    silent.set_nonblocking(true).unwrap();
    let mut handshakes = 0;
    while let Ok((mut conn, _)) = silent.accept() {
        handshakes += 1;
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut hello = vec![0u8; 64 * 1024];
        // Read the ClientHello, then expect the end (bounded: 100 reads).
        let closed = (0..100)
            .map(|_| conn.read(&mut hello))
            .find(|r| !matches!(r, Ok(n) if *n > 0))
            .is_some_and(|r| match r {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            });
        assert!(closed, "the plugin still holds handshake {handshakes} open");
    }
    assert!(handshakes > 0, "the plugin never connected");
}

// ------------------------------------------------------------------- s3

#[test]
fn s3_reaches_an_https_endpoint_through_its_cafile() {
    let garage = Garage::start();
    let ca = TestCa::new("ca");
    let proxy = TlsProxy::start(garage.s3_port, &ca.loopback_cert());
    let endpoint = format!("endpoint=https://127.0.0.1:{}", proxy.port);
    let mut params: Vec<String> = garage
        .params("tls/")
        .into_iter()
        .filter(|p| !p.starts_with("endpoint="))
        .collect();
    params.extend([endpoint, "size=4M".into(), "chunk-size=64K".into()]);
    let with = |extra: &str| -> Vec<String> {
        let mut all = params.clone();
        all.push(extra.to_owned());
        all
    };
    let start = |params: &[String]| {
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        Nbdkit::try_start(&[], &artifact("libs3.so"), &params)
    };

    // Trusting the CA: data round-trips through nginx's TLS.
    let nbdkit =
        start(&with(&cafile(&ca))).unwrap_or_else(|p| panic!("{}", p.output_when_closed()));
    assert!(nbdsh(&nbdkit.uri(), ROUND_TRIPS).contains("ok"));
    drop(nbdkit);

    // Without it (the plugin's built-in Mozilla roots) the store is refused.
    let other = TestCa::new("other");
    for extra in [String::new(), cafile(&other)] {
        // Retrying cannot help: no need to wait the default 30 s.
        let mut params = with("retry-window=1s");
        if !extra.is_empty() {
            params.push(extra.clone());
        }
        let output = match start(&params) {
            Err(proc) => proc.output_when_closed(),
            Ok(nbdkit) => {
                let mut cmd = debian_tool("nbdsh");
                cmd.args(["-u", &nbdkit.uri(), "-c", "h.pread(1, 0)"]);
                let client = run(cmd, Duration::from_secs(120));
                assert!(
                    !client.status.success(),
                    "served through an untrusted certificate"
                );
                nbdkit.proc.output.snapshot().join("\n")
            }
        };
        assert!(output.contains("UnknownIssuer"), "{extra}: {output}");
    }
}
