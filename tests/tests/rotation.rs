//! Rotating multihttp's password and CA without restarting nbdkit (issue
//! #20): the plugin re-reads `password=+FILE` when it changes and when a
//! server answers 401, and `cafile=` when it changes and when a server's
//! certificate does not verify. Real nbdkit, real http-disk-server
//! (`--auth-file` reloaded by SIGHUP; TLS certificates of a CA made with
//! openssl), real NBD clients (fio verifying under load, nbdsh).
//!
//!     cargo test --release -p integration-tests --test rotation

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::disk_server::{auth_line, replace_file};
use harness::fio::{assert_fio_clean, start_verifying_load};
use harness::test_ca::{ServerCert, TestCa};
use harness::{nbdsh, pattern_file, DiskServer, Nbdkit, TempDir};

const USER: &str = "alice";
const DISK_SIZE: usize = 8 << 20;

/// How long fio runs: enough for every rotation of a test on a slow
/// machine; a test checks that fio was still running when it ended.
const LOAD_RUNTIME: Duration = Duration::from_secs(60);

/// How long the plugin may take to see a rewritten file by its `stat`
/// (it looks at most once a second), with a margin.
const FILE_SEEN: Duration = Duration::from_millis(1300);

fn password(round: usize) -> String {
    format!("rotation-test-password-{round}-{}", std::process::id())
}

fn write_password(path: &Path, password: &str) {
    replace_file(path, &format!("{password}\n"));
}

/// The server with `--auth-file` holding `password(0)`, and nbdkit with
/// the plugin reading `password=+FILE` (also `password(0)`).
struct PasswordSetup {
    server: DiskServer,
    nbdkit: Nbdkit,
    auth: PathBuf,
    password_file: PathBuf,
    dir: TempDir,
}

fn start_with_password() -> PasswordSetup {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", DISK_SIZE, 3);
    let auth = dir.path().join("auth");
    replace_file(&auth, &auth_line(USER, &password(0)));
    let server = DiskServer::start(&disk, &["--auth-file", &auth.display().to_string()]);
    let password_file = dir.path().join("password");
    write_password(&password_file, &password(0));
    let user = format!("user={USER}");
    let password_param = format!("password=+{}", password_file.display());
    // A short failover window: a request refused for good fails in 3 s
    // instead of the default's wait, so a broken rotation shows quickly.
    let nbdkit = Nbdkit::multihttp(
        &[server.url()],
        &[&user, &password_param, "failover-window=3s"],
    );
    PasswordSetup {
        server,
        nbdkit,
        auth,
        password_file,
        dir,
    }
}

#[test]
fn twenty_password_rotations_under_fio_cost_no_request_and_no_restart() {
    let mut setup = start_with_password();
    let pid = setup.nbdkit.proc.pid();
    let json = setup.dir.path().join("fio.json");
    let mut fio = start_verifying_load(&setup.nbdkit.uri(), "8M", LOAD_RUNTIME, &json);
    let started = Instant::now();
    for round in 1..=20 {
        let (old, new) = (password(round - 1), password(round));
        // The procedure README gives: (1) both lines, reload; (2) the
        // client's new file; (3) once it is read, the old line out, reload.
        let both = format!("{}{}", auth_line(USER, &old), auth_line(USER, &new));
        replace_file(&setup.auth, &both);
        assert!(setup.server.reload().contains("1 user"), "reload {round}");
        write_password(&setup.password_file, &new);
        std::thread::sleep(FILE_SEEN);
        replace_file(&setup.auth, &auth_line(USER, &new));
        setup.server.reload();
        assert!(
            fio.exited().is_none(),
            "fio ended at rotation {round}, {:?} in",
            started.elapsed()
        );
    }
    assert_fio_clean(&mut fio, &json, LOAD_RUNTIME * 2, 1);
    assert!(setup.nbdkit.proc.exited().is_none(), "nbdkit exited");
    assert_eq!(setup.nbdkit.proc.pid(), pid);
    let log = setup.nbdkit.proc.output.snapshot().join("\n");
    assert_eq!(
        log.matches("read a new value").count(),
        20,
        "one re-read per rotation:\n{log}"
    );
    assert!(!log.contains(&password(0)), "a password was logged");
}

/// nbdsh: 32 writes of 4 KiB and their read-back, each its own request.
fn write_and_verify(uri: &str, seed: usize) {
    let script = format!(
        "for i in range(32):\n    h.pwrite(bytes([({seed} + i) % 256]) * 4096, i * 4096)\n\
         for i in range(32):\n    assert h.pread(4096, i * 4096) == bytes([({seed} + i) % 256]) * 4096\n\
         print('ok')\n"
    );
    assert_eq!(nbdsh(uri, &script).trim(), "ok", "round {seed}");
}

#[test]
fn a_server_that_takes_only_the_new_password_is_served_after_a_401() {
    let mut setup = start_with_password();
    let pid = setup.nbdkit.proc.pid();
    let uri = setup.nbdkit.uri();
    write_and_verify(&uri, 1);
    // The server moves first, with no overlap, and the file is rewritten
    // at once: the client's next request, within the second in which it
    // does not look at the file, is refused with the old password, which
    // makes it read the file now and send the request again.
    replace_file(&setup.auth, &auth_line(USER, &password(1)));
    setup.server.reload();
    write_password(&setup.password_file, &password(1));
    write_and_verify(&uri, 2);
    assert!(setup.nbdkit.proc.exited().is_none(), "nbdkit exited");
    assert_eq!(setup.nbdkit.proc.pid(), pid);
    // A 401 with a password the file does not change stays an error, and
    // is not retried without end: the read fails within the window.
    replace_file(&setup.auth, &auth_line(USER, &password(2)));
    setup.server.reload();
    let script = "try:\n    h.pread(4096, 0)\n    print('read ok')\n\
                  except nbd.Error as e:\n    print('read failed')\n";
    assert_eq!(nbdsh(&uri, script).trim(), "read failed");
    assert!(setup.nbdkit.proc.exited().is_none(), "nbdkit exited");
}

/// The disk served over HTTPS on `port` with `cert`, started anew: its
/// clients must make new connections, so each one's certificate is
/// verified against the plugin's CAs of that moment.
fn https_server_on(disk: &Path, port: u16, cert: &ServerCert) -> DiskServer {
    let (cert, key) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    DiskServer::start_on_port(disk, port, &["--tls-cert", &cert, "--tls-key", &key])
        .unwrap_or_else(|p| panic!("server did not start:\n{}", p.output.snapshot().join("\n")))
}

fn pem_of(cas: &[&TestCa]) -> String {
    cas.iter()
        .map(|ca| std::fs::read_to_string(&ca.cert).unwrap())
        .collect()
}

#[test]
fn the_ca_rotates_under_fio_while_the_server_moves_to_certificates_of_the_new_ca() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", DISK_SIZE, 5);
    let cas: Vec<TestCa> = (0..4).map(|i| TestCa::new(&format!("ca{i}"))).collect();
    let certs: Vec<ServerCert> = cas.iter().map(TestCa::loopback_cert).collect();
    let cafile = dir.path().join("ca.pem");
    replace_file(&cafile, &pem_of(&[&cas[0]]));
    let mut server = DiskServer::start(
        &disk,
        &[
            "--tls-cert",
            &certs[0].cert.display().to_string(),
            "--tls-key",
            &certs[0].key.display().to_string(),
        ],
    );
    let port = server.port;
    let nbdkit = Nbdkit::multihttp(
        &[server.https_url()],
        &[&format!("cafile={}", cafile.display())],
    );
    let pid = nbdkit.proc.pid();
    let json = dir.path().join("fio.json");
    let mut fio = start_verifying_load(&nbdkit.uri(), "8M", LOAD_RUNTIME, &json);
    for round in 1..cas.len() {
        // (1) The new CA joins the file; (2) the server gets a
        // certificate of the new CA and restarts, which makes the plugin
        // reconnect and verify it; (3) the old CA leaves the file, and
        // the server restarts again, verified against the new CA alone.
        replace_file(&cafile, &pem_of(&[&cas[round - 1], &cas[round]]));
        drop(server);
        server = https_server_on(&disk, port, &certs[round]);
        std::thread::sleep(FILE_SEEN);
        replace_file(&cafile, &pem_of(&[&cas[round]]));
        drop(server);
        server = https_server_on(&disk, port, &certs[round]);
        std::thread::sleep(FILE_SEEN);
        assert!(fio.exited().is_none(), "fio ended at rotation {round}");
    }
    // Without the overlap: the file holds only the next CA when the
    // server presents its certificate, within the second in which the
    // plugin does not look at the file: the failed verification makes it
    // read the file at once.
    let next = TestCa::new("ca-next");
    replace_file(&cafile, &pem_of(&[&next]));
    drop(server);
    let _server = https_server_on(&disk, port, &next.loopback_cert());
    assert_fio_clean(&mut fio, &json, LOAD_RUNTIME * 2, 1);
    assert_eq!(nbdkit.proc.pid(), pid);
    let log = nbdkit.proc.output.snapshot().join("\n");
    assert!(log.contains("read the CAs again"), "{log}");
}
