//! Rotating the s3 plugin's keys without restarting nbdkit (issues #20
//! and #23): the plugin reads `credentials-file=` and `secret-key=+FILE`
//! again when they are rewritten and when the store refuses a request.
//! Real nbdkit loading libs3.so, a real Garage whose keys are made and
//! deleted with its own CLI, fio verifying under load, nbdsh.
//!
//!     cargo test --release -p integration-tests --test s3_rotation

use std::path::Path;
use std::time::{Duration, Instant};

use harness::disk_server::replace_file;
use harness::fio::{assert_fio_clean, start_verifying_load};
use harness::garage::Garage;
use harness::{artifact, nbdsh, Nbdkit, TempDir};

/// How long fio runs: enough for every rotation on a slow machine; the
/// test checks fio was still running after the last one.
const LOAD_RUNTIME: Duration = Duration::from_secs(30);
const ROTATIONS: usize = 6;

/// How long the plugin may take to see a rewritten file by its `stat`
/// (it looks at most once a second), with a margin.
const FILE_SEEN: Duration = Duration::from_millis(1300);

fn write_profile(path: &Path, access_key: &str, secret_key: &str) {
    replace_file(
        path,
        &format!(
            "# written by the test\n[disks]\naws_access_key_id = {access_key}\n\
             aws_secret_access_key = {secret_key}\n"
        ),
    );
}

/// The plugin on `garage` with `keys` instead of the harness's
/// access-key= and secret-key=.
fn start(garage: &Garage, prefix: &str, keys: &[String]) -> Nbdkit {
    let mut params = garage.params(prefix);
    params.retain(|p| !p.starts_with("access-key=") && !p.starts_with("secret-key="));
    params.extend(keys.iter().cloned());
    // Short windows: a request refused for good fails at once (403 is
    // not retried) and a broken rotation shows as an fio error.
    params.extend(["size=8M", "chunk-size=64K", "retry-window=3s"].map(String::from));
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    Nbdkit::start(&[], &artifact("libs3.so"), &params)
}

#[test]
fn keys_replaced_in_garage_under_fio_cost_no_request_and_no_restart() {
    let garage = Garage::start();
    let dir = TempDir::new().unwrap();
    let credentials = dir.path().join("credentials");
    write_profile(&credentials, &garage.access_key, &garage.secret_key);
    let mut nbdkit = start(
        &garage,
        "rotated/",
        &[
            format!("credentials-file={}", credentials.display()),
            "profile=disks".into(),
        ],
    );
    let pid = nbdkit.proc.pid();
    let json = dir.path().join("fio.json");
    let mut fio = start_verifying_load(&nbdkit.uri(), "4M", LOAD_RUNTIME, &json);
    let started = Instant::now();
    let mut old_key = garage.access_key.clone();
    let mut secrets = vec![garage.secret_key.clone()];
    for round in 1..=ROTATIONS {
        std::thread::sleep(Duration::from_millis(500));
        // The operator's sequence: a new key with the bucket's rights,
        // the plugin's file rewritten, the old key deleted. In odd rounds
        // the old key goes at once, before the plugin has looked at its
        // file: requests then signed with it are refused, which makes the
        // plugin read the file now and send them again.
        let (access_key, secret_key) = garage.add_key(&format!("rotation-{round}"));
        write_profile(&credentials, &access_key, &secret_key);
        if round % 2 == 0 {
            std::thread::sleep(FILE_SEEN);
        }
        garage.delete_key(&old_key);
        old_key = access_key;
        secrets.push(secret_key);
        assert!(
            fio.exited().is_none(),
            "fio ended at rotation {round}, {:?} in",
            started.elapsed()
        );
    }
    assert_fio_clean(&mut fio, &json, LOAD_RUNTIME * 2, 1);
    assert!(nbdkit.proc.exited().is_none(), "nbdkit exited");
    assert_eq!(nbdkit.proc.pid(), pid);
    let log = nbdkit.proc.output.snapshot().join("\n");
    assert_eq!(
        log.matches("read a new value").count(),
        ROTATIONS,
        "one re-read per rotation:\n{log}"
    );
    assert!(
        log.contains("refused, sending it again with the new key"),
        "no request was refused and resent: the rounds that delete the \
         old key at once did not test that path:\n{log}"
    );
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a secret was logged");
    }
}

/// nbdsh: 16 writes of 4 KiB and their read-back; `false` if the first
/// write failed.
fn write_and_verify(uri: &str, seed: usize) -> bool {
    let script = format!(
        "try:\n    h.pwrite(bytes([{seed}]) * 4096, 0)\nexcept nbd.Error:\n    print('refused')\n    \
         exit(0)\n\
         for i in range(16):\n    h.pwrite(bytes([({seed} + i) % 256]) * 4096, i * 65536)\n\
         for i in range(16):\n    assert h.pread(4096, i * 65536) == bytes([({seed} + i) % 256]) * 4096\n\
         print('ok')\n"
    );
    match nbdsh(uri, &script).trim() {
        "ok" => true,
        "refused" => false,
        other => panic!("round {seed}: {other}"),
    }
}

#[test]
fn a_rewritten_secret_file_is_used_without_a_restart() {
    // Garage cannot give an existing key id a new secret, so the path is
    // shown the other way round: a wrong secret written to the file is
    // used (and refused by the store), and the right one written back
    // serves again, all in the same nbdkit.
    let garage = Garage::start();
    let dir = TempDir::new().unwrap();
    let secret_file = dir.path().join("secret");
    replace_file(&secret_file, &format!("{}\n", garage.secret_key));
    let mut nbdkit = start(
        &garage,
        "secret-file/",
        &[
            format!("access-key={}", garage.access_key),
            format!("secret-key=+{}", secret_file.display()),
        ],
    );
    let pid = nbdkit.proc.pid();
    let uri = nbdkit.uri();
    assert!(write_and_verify(&uri, 1));
    let wrong: String = garage.secret_key.chars().rev().collect();
    replace_file(&secret_file, &format!("{wrong}\n"));
    std::thread::sleep(FILE_SEEN);
    assert!(!write_and_verify(&uri, 2), "the wrong secret was not used");
    replace_file(&secret_file, &format!("{}\n", garage.secret_key));
    assert!(
        write_and_verify(&uri, 3),
        "a refusal did not read the file again"
    );
    assert!(nbdkit.proc.exited().is_none(), "nbdkit exited");
    assert_eq!(nbdkit.proc.pid(), pid);
}
