//! End-to-end tests of the s3 plugin against a real S3-compatible server:
//! Garage, one single-node instance per test on loopback
//! (`harness::garage`), real nbdkit loading target/release/libs3.so, real
//! NBD clients.
//!
//! Run: `cargo test --release -p integration-tests --test s3`

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::garage::{Garage, GarageCluster};
use harness::{artifact, debian_tool, nbd_scripts, nbdsh, pattern_file, run_ok, Nbdkit, TempDir};

fn plugin() -> PathBuf {
    artifact("libs3.so")
}

fn start(garage: &Garage, prefix: &str, extra: &[&str]) -> Nbdkit {
    try_start(garage, prefix, extra).unwrap_or_else(|why| panic!("{why}"))
}

fn try_start(garage: &Garage, prefix: &str, extra: &[&str]) -> Result<Nbdkit, String> {
    let mut params = garage.params(prefix);
    params.extend(extra.iter().map(|s| s.to_string()));
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    Nbdkit::try_start(&[], &plugin(), &params).map_err(|proc| proc.output_when_closed())
}

fn chunk_objects(garage: &Garage, prefix: &str) -> Vec<String> {
    garage.objects(&format!("{prefix}chunks/"))
}

#[test]
fn random_unaligned_io_matches_a_model_and_persists_across_a_reopen() {
    let garage = Garage::start();
    let dir = TempDir::new().unwrap();
    let expected = dir.path().join("expected.img");
    {
        let nbdkit = start(&garage, "vol1/", &["size=3M", "chunk-size=64K"]);
        let script = format!(
            "import nbd\nOUT = {:?}\n{}",
            expected.display().to_string(),
            nbd_scripts::MODEL_CHECK
        );
        assert!(nbdsh(&nbdkit.uri(), &script).contains("model ok"));
    }
    // Reopened without size=: the metadata object is the truth.
    let nbdkit = start(&garage, "vol1/", &[]);
    let copy = dir.path().join("copy.img");
    let mut out = debian_tool("nbdcopy");
    out.arg(nbdkit.uri()).arg(&copy);
    run_ok(out, Duration::from_secs(120));
    assert!(fs::read(&copy).unwrap() == fs::read(&expected).unwrap());
    // qemu-io across a chunk boundary at an odd offset.
    let mut qemu = Command::new("qemu-io");
    qemu.args(["-f", "raw", "-c", "write -P 0x5e 65000 2000"])
        .args(["-c", "read -P 0x5e 65000 2000"])
        .arg(nbdkit.uri());
    let output = run_ok(qemu, Duration::from_secs(60));
    assert!(!output.contains("verification failed"), "{output}");
}

/// nbdcopy writes 256 KiB requests, several in flight into each 1 MiB
/// object: the store combines them (chunk-store's `coalesce`), and the
/// copy must still be byte-exact.
#[test]
fn nbdcopy_in_and_out_is_byte_exact() {
    let garage = Garage::start();
    let dir = TempDir::new().unwrap();
    let source = pattern_file(dir.path(), "source.img", 6 << 20, 31);
    let nbdkit = start(&garage, "copy/", &["size=6M", "chunk-size=1M"]);
    let mut into = debian_tool("nbdcopy");
    into.arg(&source).arg(nbdkit.uri());
    run_ok(into, Duration::from_secs(120));
    assert_eq!(chunk_objects(&garage, "copy/").len(), 6);
    let copy = dir.path().join("copy.img");
    let mut out = debian_tool("nbdcopy");
    out.arg(nbdkit.uri()).arg(&copy);
    run_ok(out, Duration::from_secs(120));
    assert!(fs::read(&copy).unwrap() == fs::read(&source).unwrap());
}

#[test]
fn zeros_are_never_stored_and_holes_show_in_the_map() {
    let garage = Garage::start();
    let nbdkit = start(&garage, "sparse/", &["size=8M", "chunk-size=1M"]);
    nbdsh(
        &nbdkit.uri(),
        "h.pwrite(bytes(2 << 20), 0)\nh.pwrite(bytes(5000), 3 << 20)",
    );
    assert!(chunk_objects(&garage, "sparse/").is_empty());
    nbdsh(&nbdkit.uri(), "h.pwrite(b'\\x01' * 4096, (3 << 20) + 100)");
    assert_eq!(
        chunk_objects(&garage, "sparse/"),
        vec!["sparse/chunks/0000000000000003".to_owned()]
    );
    let mut map = debian_tool("nbdinfo");
    map.args(["--map", &nbdkit.uri()]);
    let map = run_ok(map, Duration::from_secs(30));
    let data: Vec<&str> = map.lines().filter(|l| l.ends_with("data")).collect();
    assert_eq!(data.len(), 1, "{map}");
    assert!(
        data[0].trim_start().starts_with(&(3u64 << 20).to_string()),
        "{map}"
    );
    // Zeroing the data part of the chunk leaves an all-zero chunk: deleted.
    nbdsh(&nbdkit.uri(), "h.zero(4096, (3 << 20) + 100)");
    assert!(chunk_objects(&garage, "sparse/").is_empty());
    // Large trims delete in batches.
    nbdsh(&nbdkit.uri(), "h.pwrite(b'\\x02' * (8 << 20), 0)");
    assert_eq!(chunk_objects(&garage, "sparse/").len(), 8);
    nbdsh(
        &nbdkit.uri(),
        "h.trim(8 << 20, 0)\nassert h.pread(16, 5 << 20) == bytes(16)",
    );
    assert!(chunk_objects(&garage, "sparse/").is_empty());
}

#[test]
fn conflicting_parameters_wrong_credentials_and_missing_buckets_are_refused_clearly() {
    let garage = Garage::start();
    drop(start(&garage, "vol/", &["size=4M", "chunk-size=256K"]));
    let other_size = try_start(&garage, "vol/", &["size=8M"]).err().unwrap();
    assert!(other_size.contains("grow=true"), "{other_size}");
    let other_chunk = try_start(&garage, "vol/", &["chunk-size=1M"])
        .err()
        .unwrap();
    assert!(other_chunk.contains("chunk-size"), "{other_chunk}");
    let no_size = try_start(&garage, "new/", &[]).err().unwrap();
    assert!(no_size.contains("size="), "{no_size}");

    // A wrong secret: EPERM-class refusal naming the cause, secret unlogged.
    let dir = TempDir::new().unwrap();
    let wrong = dir.path().join("wrong-secret");
    fs::write(&wrong, "0".repeat(64)).unwrap();
    let mut params = garage.params("vol/");
    params.retain(|p| !p.starts_with("secret-key="));
    params.push(format!("secret-key=+{}", wrong.display()));
    params.push("retry-window=1s".into());
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let refused = Nbdkit::refusal(&[], &plugin(), &params);
    assert!(refused.contains("access denied"), "{refused}");
    assert!(
        !refused.contains(&garage.secret_key),
        "the secret was logged"
    );

    let mut params = garage.params("vol/");
    params.retain(|p| !p.starts_with("bucket="));
    params.push("bucket=no-such-bucket".into());
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let missing = Nbdkit::refusal(&[], &plugin(), &params);
    assert!(
        missing.contains("no-such-bucket") && missing.contains("does not exist"),
        "{missing}"
    );
}

/// A reader with a key that may only read the bucket: `nbdkit -r` serves
/// the disk (nothing is written at open), and without `-r` a write is
/// refused by the store with EPERM, not retried as an outage.
#[test]
fn a_read_only_key_serves_the_disk_with_nbdkit_readonly() {
    let garage = Garage::start();
    {
        let nbdkit = start(&garage, "vol1/", &["size=1M", "chunk-size=64K"]);
        nbdsh(&nbdkit.uri(), "h.pwrite(b'\\x09' * 70000, 1000)");
    }
    let params = garage.read_only_params("vol1/");
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let script = "import errno, nbd\n\
                  print('read_only', h.is_read_only())\n\
                  print('data', h.pread(70000, 1000) == b'\\x09' * 70000)\n\
                  try:\n\
                  \x20   h.pwrite(b'x' * 512, 0)\n\
                  \x20   print('write accepted')\n\
                  except nbd.Error as e:\n\
                  \x20   print('write', errno.errorcode.get(e.errno, e.errno))";
    let readonly = Nbdkit::start(&["-r"], &plugin(), &params);
    let result = nbdsh(&readonly.uri(), script);
    for line in ["read_only True", "data True", "write EPERM"] {
        assert!(result.contains(line), "{line}: {result}");
    }
    drop(readonly);
    let writable = Nbdkit::start(&[], &plugin(), &params);
    let result = nbdsh(&writable.uri(), script);
    for line in ["read_only False", "data True", "write EPERM"] {
        assert!(result.contains(line), "{line}: {result}");
    }
}

#[test]
fn credentials_from_the_environment_work() {
    let garage = Garage::start();
    let access = format!("AWS_ACCESS_KEY_ID={}", garage.access_key);
    let secret = format!("AWS_SECRET_ACCESS_KEY={}", garage.secret_key);
    // `env` execs nbdkit with the variables set (the test's own
    // environment is shared by parallel tests and is left alone).
    let wrapper = ["env", access.as_str(), secret.as_str()];
    let endpoint = format!("endpoint={}", garage.endpoint());
    let bucket = format!("bucket={}", garage.bucket);
    let params = [
        endpoint.as_str(),
        bucket.as_str(),
        "region=garage",
        "prefix=env/",
        "size=1M",
    ];
    let nbdkit = Nbdkit::try_start_wrapped(&wrapper, &[], &plugin(), &params)
        .unwrap_or_else(|p| panic!("{:?}", p.output.snapshot()));
    let result = nbdsh(
        &nbdkit.uri(),
        "h.pwrite(b'e' * 10, 0)\nprint(h.pread(10, 0))",
    );
    assert!(result.contains("eeeeeeeeee"), "{result}");
    assert_eq!(chunk_objects(&garage, "env/").len(), 1);
}

/// The disk this test expects after recovery, as a Python `model`: 0x0f
/// at 0, 0x0e over 300,000 bytes at 50,000 (written before the outage),
/// 0x1e over 200,000 bytes at 100,000 (failed during it, then redone).
const OUTAGE_MODEL: &str = "model = bytearray(1 << 20)\n\
     model[0:4096] = b'\\x0f' * 4096\n\
     model[50000:350000] = b'\\x0e' * 300000\n\
     model[100000:300000] = b'\\x1e' * 200000\n";

/// A read and a write during the outage fail with EIO once the retry
/// window has passed; after it, what was written before reads back, the
/// failed write left each 64 KiB object wholly old or wholly new (a PUT
/// replaces an object whole), the same write then succeeds, and a new
/// nbdkit on the same prefix serves exactly that.
#[test]
fn a_stopped_store_gives_eio_after_the_retry_window_and_service_resumes() {
    let mut garage = Garage::start();
    let params = [
        "size=1M",
        "chunk-size=64K",
        "retry-window=2s",
        "connect-timeout=1s",
    ];
    let nbdkit = start(&garage, "outage/", &params);
    nbdsh(
        &nbdkit.uri(),
        "h.pwrite(b'\\x0f' * 4096, 0)\nh.pwrite(b'\\x0e' * 300000, 50000)",
    );
    garage.stop();
    let started = Instant::now();
    let result = nbdsh(
        &nbdkit.uri(),
        "import errno, nbd\n\
         for name, call in [('read', lambda: h.pread(4096, 0)),\n\
         \x20                  ('write', lambda: h.pwrite(b'\\x1e' * 200000, 100000))]:\n\
         \x20   try:\n\
         \x20       call()\n\
         \x20       print(name, 'no error')\n\
         \x20   except nbd.Error as e:\n\
         \x20       print(name, errno.errorcode.get(e.errnum, e.errnum))",
    );
    assert!(result.contains("read EIO"), "{result}");
    assert!(result.contains("write EIO"), "{result}");
    assert!(started.elapsed() < Duration::from_secs(60));
    garage.start_again();
    let after = format!(
        "{OUTAGE_MODEL}\
         got = h.pread(1 << 20, 0)\n\
         print('before intact', got[:100000] == model[:100000] and got[300000:] == model[300000:])\n\
         old = bytearray(model)\n\
         old[100000:300000] = b'\\x0e' * 200000\n\
         print('objects old or new', all(got[o:o + 65536] in (old[o:o + 65536], model[o:o + 65536]) \
                                       for o in range(0, 1 << 20, 65536)))\n\
         h.pwrite(b'\\x1e' * 200000, 100000)\n\
         h.flush()\n\
         print('redone', h.pread(1 << 20, 0) == model)"
    );
    let result = nbdsh(&nbdkit.uri(), &after);
    for line in [
        "before intact True",
        "objects old or new True",
        "redone True",
    ] {
        assert!(result.contains(line), "{line}: {result}");
    }
    drop(nbdkit);
    let reopened = start(&garage, "outage/", &[]);
    let check = format!("{OUTAGE_MODEL}print(h.pread(1 << 20, 0) == model)");
    assert_eq!(nbdsh(&reopened.uri(), &check).trim(), "True");
}

/// A store restart closes every kept-alive connection while it is idle:
/// the next requests go on new connections without a failed attempt
/// (nbdkit -v logs each retried failure as "failed, retrying"), so a
/// stale connection costs no backoff and never counts toward the retry
/// window.
#[test]
fn connections_the_store_closed_while_idle_are_replaced_without_a_failed_attempt() {
    let mut garage = Garage::start();
    let mut params = garage.params("stale/");
    params.extend(["size=1M".to_owned(), "chunk-size=64K".to_owned()]);
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let nbdkit = Nbdkit::try_start(&["-v"], &plugin(), &params)
        .unwrap_or_else(|proc| panic!("{}", proc.output_when_closed()));
    nbdsh(&nbdkit.uri(), "h.pwrite(b'\\x3c' * (1 << 20), 0)");
    garage.stop();
    garage.start_again();
    let result = nbdsh(
        &nbdkit.uri(),
        "print(h.pread(1 << 20, 0) == b'\\x3c' * (1 << 20))\n\
         h.pwrite(b'\\x3d' * 4096, 0)\n\
         print(h.pread(4096, 0) == b'\\x3d' * 4096)",
    );
    assert_eq!(result.trim(), "True\nTrue");
    let log = nbdkit.proc.output.snapshot().join("\n");
    assert!(log.contains("bytes in objects of"), "no debug lines: {log}");
    assert!(!log.contains("failed, retrying"), "{log}");
}

#[test]
fn an_outage_shorter_than_the_retry_window_is_invisible_to_the_client() {
    let mut garage = Garage::start();
    let nbdkit = start(
        &garage,
        "blip/",
        &[
            "size=1M",
            "chunk-size=64K",
            "retry-window=60s",
            "connect-timeout=1s",
        ],
    );
    nbdsh(&nbdkit.uri(), "h.pwrite(b'\\x0a' * 70000, 1000)");
    garage.stop();
    let result = std::thread::scope(|scope| {
        let restart = scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            garage.start_again();
        });
        let result = nbdsh(
            &nbdkit.uri(),
            "h.pwrite(b'\\x0b' * 5000, 60000)\n\
             print(h.pread(70000, 1000) == b'\\x0a' * 59000 + b'\\x0b' * 5000 + b'\\x0a' * 6000)",
        );
        restart.join().unwrap();
        result
    });
    assert_eq!(result.trim(), "True");
}

#[test]
fn sparse_random_data_copies_in_and_back_and_connections_agree() {
    let garage = Garage::start();
    let dir = TempDir::new().unwrap();
    let nbdkit = start(&garage, "sr/", &["size=8M", "chunk-size=256K"]);
    let source = Nbdkit::start(
        &[],
        std::path::Path::new("sparse-random"),
        &["8M", "seed=9"],
    );
    let mut into = debian_tool("nbdcopy");
    into.arg(source.uri()).arg(nbdkit.uri());
    run_ok(into, Duration::from_secs(120));
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    for (uri, file) in [(source.uri(), &a), (nbdkit.uri(), &b)] {
        let mut out = debian_tool("nbdcopy");
        out.arg(uri).arg(file);
        run_ok(out, Duration::from_secs(120));
    }
    assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap());
    assert!(
        chunk_objects(&garage, "sr/").len() < 32,
        "zero runs were stored"
    );
    let script = format!(
        "import nbd\n\
         assert h.can_multi_conn()\n\
         h2 = nbd.NBD()\n\
         h2.connect_uri({:?})\n\
         for i in range(20):\n\
         \x20   h.pwrite(bytes([i + 1]) * 3001, 262000 + i * 3001)\n\
         \x20   h.flush()\n\
         \x20   assert h2.pread(3001, 262000 + i * 3001) == bytes([i + 1]) * 3001\n\
         print('ok')",
        nbdkit.uri()
    );
    assert!(nbdsh(&nbdkit.uri(), &script).contains("ok"));
}

#[test]
fn a_three_node_cluster_loses_a_node_under_fio_verify_without_client_errors() {
    let mut cluster = GarageCluster::start(3);
    let dir = TempDir::new().unwrap();
    let secret = dir.path().join("secret");
    fs::write(&secret, &cluster.secret_key).unwrap();
    let params = [
        format!("endpoint={}", cluster.endpoint(0)),
        format!("bucket={}", cluster.bucket),
        "region=garage".to_owned(),
        "prefix=scale/".to_owned(),
        format!("access-key={}", cluster.access_key),
        format!("secret-key=+{}", secret.display()),
        "size=16M".to_owned(),
        "chunk-size=256K".to_owned(),
    ];
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let nbdkit = Nbdkit::start(&[], &plugin(), &params);
    let mut fio = debian_tool("fio");
    fio.args([
        "--name=scale",
        "--ioengine=nbd",
        &format!("--uri={}", nbdkit.uri()),
        "--rw=randwrite",
        "--bs=16k",
        "--size=16M",
        "--iodepth=4",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
    ]);
    let mut workload = harness::Proc::spawn("fio", fio);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        workload.exited().is_none(),
        "fio finished before the node was killed: the test proves nothing"
    );
    // A storage node (not the one the plugin talks to) dies: with three
    // replicas, writes still reach a quorum and reads find a copy.
    cluster.kill_node(2);
    let status = workload.wait_timeout(Duration::from_secs(240));
    let output = workload.output.snapshot().join("\n");
    assert!(status.is_some_and(|s| s.success()), "fio failed:\n{output}");
    assert!(!output.contains("verify: bad"), "{output}");
}

/// Distinct TCP connections to (or from) `port` the kernel knows now: an
/// open one has an entry on both sides, a closed one keeps its TIME_WAIT
/// entry on the side that closed first for 60 s. So this counts every
/// connection of the last minute, each by its ephemeral port.
fn connections_with(port: u16) -> BTreeSet<u16> {
    let port_of = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let (local, remote) = (port_of(fields.get(1)?)?, port_of(fields.get(2)?)?);
                    match (local == port, remote == port) {
                        (true, false) => Some(remote),
                        (false, true) => Some(local),
                        _ => None,
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// 4 KiB reads, one at a time, spread over the 32 chunks of a 2 MiB disk
/// written first: each is one ranged GET. Prints the seconds the reads took.
const SEQUENTIAL_SMALL_READS: &str = "
import time
h.pwrite(b'\\x5a' * (2 << 20), 0)
start = time.monotonic()
for i in range(COUNT):
    assert h.pread(4096, (i * 7919) % 512 * 4096) == b'\\x5a' * 4096
print('seconds', time.monotonic() - start)
";

/// Runs [`SEQUENTIAL_SMALL_READS`]: how long the reads took.
fn time_small_reads(nbdkit: &Nbdkit, count: usize) -> Duration {
    let script = SEQUENTIAL_SMALL_READS.replace("COUNT", &count.to_string());
    let output = nbdsh(&nbdkit.uri(), &script);
    let seconds = output
        .lines()
        .find_map(|l| l.strip_prefix("seconds "))
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no timing in {output:?}"));
    Duration::from_secs_f64(seconds)
}

/// With the default pool-size, requests reuse kept-alive connections: a
/// few hundred reads (plus the writes before them) open a handful of
/// connections, not one per request as with pool-size=0 or a client that
/// reconnects each time.
#[test]
fn requests_reuse_kept_alive_connections() {
    const READS: usize = 300;
    let garage = Garage::start();
    let nbdkit = start(&garage, "reuse/", &["size=2M", "chunk-size=64K"]);
    let before = connections_with(garage.s3_port);
    time_small_reads(&nbdkit, READS);
    let new: Vec<u16> = connections_with(garage.s3_port)
        .difference(&before)
        .copied()
        .collect();
    eprintln!("{READS} reads: {} new connections", new.len());
    // nbdsh sends one request at a time; a few more connections may come
    // from the writes' overlap or a connection the store closed.
    assert!(
        new.len() <= 8,
        "{} new TCP connections to the store for {READS} reads and 32 writes",
        new.len()
    );
}

/// Guards a known mechanism, not a speed goal: Garage (hyper, Nagle on)
/// sends a GET reply's body only once its head is ACKed, and Linux delays
/// that ACK ~40 ms on a kept-alive connection, so every read took ~43 ms
/// until the plugin set TCP_QUICKACK after each request. Hundreds of
/// kept-alive 4 KiB reads must take far less than 40 ms each (a 5x
/// margin: ~1 ms each on loopback when the ACK is not delayed).
#[test]
fn kept_alive_reads_do_not_wait_for_a_delayed_ack() {
    const READS: usize = 400;
    const DELAYED_ACK: Duration = Duration::from_millis(40);
    let garage = Garage::start();
    let nbdkit = start(&garage, "quickack/", &["size=2M", "chunk-size=64K"]);
    let took = time_small_reads(&nbdkit, READS);
    eprintln!("{READS} kept-alive reads took {took:?}");
    let limit = DELAYED_ACK * READS as u32 / 5;
    assert!(
        took < limit,
        "{READS} reads took {took:?} (limit {limit:?}): {:?} each, the delayed-ACK stall is back",
        took / READS as u32
    );
}
