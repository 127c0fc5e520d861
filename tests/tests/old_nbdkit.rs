//! The three plugins under an old nbdkit: the oldest release whose source
//! this network has (Ubuntu focal's 1.16.2, or Debian bullseye's 1.24.1
//! when archive.ubuntu.com cannot be reached), built once by
//! `scripts/install-deps` into /var/cache/http-nbd-transfer/nbdkit-old
//! (`HND_OLD_NBDKIT` names another binary). Bookworm's nbdkit 1.32, which
//! every other test uses, is much newer than what the plugins claim to
//! support (docs/packaging.md, "Minimum versions"); XCP-ng ships 1.8.0,
//! checked by hand (same page). The test fails when the old nbdkit is
//! missing: it never skips.
//!
//! Run: `cargo test --release -p integration-tests --test old_nbdkit`

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use harness::garage::Garage;
use harness::{artifact, nbdsh, pattern_file, run, run_ok, DiskServer, Nbdkit, TempDir};

const CACHE: &str = "/var/cache/http-nbd-transfer/nbdkit-old";
const MIB: usize = 1 << 20;

/// The old nbdkit binary, after printing (once, past the test runner's
/// capture) which version it is and where it came from.
fn old_nbdkit() -> PathBuf {
    static CHECKED: OnceLock<PathBuf> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let path = std::env::var_os("HND_OLD_NBDKIT")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(CACHE).join("sbin/nbdkit"));
            assert!(
                path.exists(),
                "{} is missing: run scripts/install-deps (it builds an old nbdkit once)",
                path.display()
            );
            let mut cmd = Command::new(&path);
            cmd.arg("--version");
            let version = run_ok(cmd, Duration::from_secs(30)).trim().to_owned();
            // install-deps writes where it came from next to sbin/.
            let source = path
                .parent()
                .and_then(Path::parent)
                .map(|root| root.join("SOURCE"))
                .and_then(|file| fs::read_to_string(file).ok())
                .map(|s| s.trim().replace('\n', "; "))
                .unwrap_or_else(|| "no SOURCE file next to it".into());
            // Straight to stderr: the runner captures only print! macros.
            let _ = writeln!(
                std::io::stderr(),
                "old_nbdkit: testing with {version} at {} ({source})",
                path.display()
            );
            let minor: u32 = version
                .strip_prefix("nbdkit 1.")
                .and_then(|v| v.split('.').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("unexpected `nbdkit --version`: {version}"));
            assert!(
                minor < 32,
                "{version} is not older than bookworm's 1.32: this test would check nothing new"
            );
            path
        })
        .clone()
}

/// An nbdsh script (needs `MODEL`, `SEED`, `STEPS` defined before it):
/// checks the export equals the file MODEL, that FUA, flush, zero and trim
/// are offered, then makes STEPS random unaligned changes, each applied to
/// the model too: writes with and without FUA, zeroes that may and may not
/// trim, trims (with FUA or not), fast zeroes where offered (or ENOTSUP,
/// then a plain zero), flushes. Compares the whole export with the model
/// again and saves the model to MODEL. Prints `model ok`.
const MODEL_SCRIPT: &str = r#"
import random
size = h.get_size()
model = bytearray(open(MODEL, 'rb').read())
assert len(model) == size, (len(model), size)
def read_all():
    return b''.join(h.pread(min(1 << 20, size - o), o) for o in range(0, size, 1 << 20))
assert read_all() == bytes(model), 'the export differs from the model before any change'
flags = dict(fua=h.can_fua(), flush=h.can_flush(), zero=h.can_zero(), trim=h.can_trim(),
             fast_zero=h.can_fast_zero(), multi_conn=h.can_multi_conn(), read_only=h.is_read_only())
print('flags', sorted(flags.items()))
assert not flags['read_only'] and all(flags[f] for f in ('fua', 'flush', 'zero', 'trim')), flags
rng = random.Random(SEED)
fast_zeros = 0
for step in range(STEPS):
    off = rng.randrange(size)
    n = rng.randrange(1, min(size - off, 200000) + 1)
    op = rng.randrange(6)
    if op < 2:
        data = rng.randbytes(n)
        h.pwrite(data, off, nbd.CMD_FLAG_FUA if op == 1 else 0)
        model[off:off + n] = data
    elif op == 2:
        h.zero(n, off)
        model[off:off + n] = bytes(n)
    elif op == 3:
        h.zero(n, off, nbd.CMD_FLAG_NO_HOLE)
        model[off:off + n] = bytes(n)
    elif op == 4:
        h.trim(n, off, nbd.CMD_FLAG_FUA if rng.randrange(2) else 0)
        model[off:off + n] = bytes(n)
    else:
        if flags['fast_zero']:
            try:
                h.zero(n, off, nbd.CMD_FLAG_FAST_ZERO)
                fast_zeros += 1
            except nbd.Error as e:
                assert e.errno == 'ENOTSUP', e.string
                h.zero(n, off)
            model[off:off + n] = bytes(n)
        h.flush()
    if step % 20 == 0:
        assert h.pread(n, off) == bytes(model[off:off + n]), ('read back', step, off, n)
h.flush()
assert read_all() == bytes(model), 'the export differs from the model'
open(MODEL, 'wb').write(model)
print('model ok; fast zeros:', fast_zeros)
"#;

/// Runs [`MODEL_SCRIPT`] against `nbdkit`'s export; returns its output.
fn model_check(nbdkit: &Nbdkit, model: &Path, seed: u64, steps: usize) -> String {
    let script = format!(
        "import nbd\nMODEL = {:?}\nSEED = {seed}\nSTEPS = {steps}\n{MODEL_SCRIPT}",
        model.display().to_string()
    );
    let output = nbdsh(&nbdkit.uri(), &script);
    println!("{output}");
    assert!(output.contains("model ok"), "{output}");
    output
}

fn start(plugin: &str, params: &[&str]) -> Nbdkit {
    Nbdkit::start_program(&old_nbdkit(), &[], &artifact(plugin), params)
}

/// `nm -D` of `file`: its dynamic symbols named `nbdkit_*`, undefined
/// (imported) ones or defined (exported) ones.
fn nbdkit_symbols(file: &Path, undefined: bool) -> Vec<String> {
    let mut nm = Command::new("nm");
    nm.arg("-D")
        .arg(if undefined {
            "--undefined-only"
        } else {
            "--defined-only"
        })
        .arg(file);
    run_ok(nm, Duration::from_secs(30))
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|s| s.starts_with("nbdkit_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_plugin_loads_with_api_version_2_and_the_parallel_thread_model() {
    let nbdkit = old_nbdkit();
    let exported = nbdkit_symbols(&nbdkit, false);
    for (plugin, name) in [
        ("libmultihttp.so", "multihttp"),
        ("libsharded.so", "sharded"),
        ("libs3.so", "s3"),
    ] {
        let path = artifact(plugin);
        // What the plugin imports, the old nbdkit has (else dlopen fails).
        let imported = nbdkit_symbols(&path, true);
        assert!(
            !imported.is_empty(),
            "{plugin} imports nothing from nbdkit?"
        );
        for symbol in &imported {
            assert!(
                exported.contains(symbol),
                "{plugin} needs {symbol}, which this nbdkit does not export"
            );
        }
        let mut dump = Command::new(&nbdkit);
        dump.arg("--dump-plugin").arg(&path);
        let out = run(dump, Duration::from_secs(30));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{plugin}: {text}");
        let lines: Vec<&str> = text.lines().collect();
        for line in [
            format!("name={name}").as_str(),
            "api_version=2",
            "thread_model=parallel",
            "has_pread=1",
            "has_pwrite=1",
            "has_flush=1",
            "has_trim=1",
            "has_zero=1",
            "has_can_fua=1",
        ] {
            assert!(lines.contains(&line), "{plugin}: no `{line}` in:\n{text}");
        }
        if name == "multihttp" {
            assert!(
                text.contains("multihttp_version="),
                "multihttp's own lines are missing:\n{text}"
            );
        } else {
            // Extents are why sharded and s3 need nbdkit >= 1.12.
            for line in ["has_can_extents=1", "has_extents=1"] {
                assert!(lines.contains(&line), "{plugin}: no `{line}` in:\n{text}");
            }
        }
    }
}

#[test]
fn multihttp_reads_and_writes_byte_for_byte_and_fails_over_when_a_server_is_killed() {
    let dir = TempDir::new().unwrap();
    let disk = pattern_file(dir.path(), "disk.img", 4 * MIB, 7);
    let model = dir.path().join("model.img");
    fs::copy(&disk, &model).unwrap();
    let mut servers = [DiskServer::start(&disk, &[]), DiskServer::start(&disk, &[])];
    let urls = format!("urls={},{}", servers[0].url(), servers[1].url());
    let nbdkit = start("libmultihttp.so", &[&urls, "device-size=4M"]);

    model_check(&nbdkit, &model, 1, 120);
    let active = nbdkit
        .multihttp_active_port()
        .expect("the plugin logged the server it uses");
    let victim = servers
        .iter_mut()
        .find(|s| s.port == active)
        .expect("the active port is one of the servers");
    victim.proc.kill();
    // The first reads of this run go through the other server.
    model_check(&nbdkit, &model, 2, 120);
    assert!(
        nbdkit.proc.output.contains("multihttp: switched from"),
        "no failover in the log: {:?}",
        nbdkit.proc.output.snapshot()
    );
    assert_ne!(nbdkit.multihttp_active_port(), Some(active));
    // What the clients saw is what the shared disk holds.
    assert!(
        fs::read(&disk).unwrap() == fs::read(&model).unwrap(),
        "the backing file differs from the model"
    );
}

#[test]
fn sharded_writes_read_back_and_persist_across_a_restart() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("disk");
    let model = dir.path().join("model.img");
    fs::write(&model, vec![0; 3 * MIB]).unwrap();
    let store_key = format!("dir={}", store.display());
    {
        let nbdkit = start("libsharded.so", &[&store_key, "size=3M", "chunk-size=64K"]);
        model_check(&nbdkit, &model, 3, 200);
    }
    // Reopened without size=: the chunk directory's metadata is the truth.
    let nbdkit = start("libsharded.so", &[&store_key]);
    model_check(&nbdkit, &model, 4, 100);
}

#[test]
fn s3_on_garage_writes_read_back_and_persist_across_a_restart() {
    let garage = Garage::start();
    let dir = TempDir::new().unwrap();
    let model = dir.path().join("model.img");
    fs::write(&model, vec![0; 3 * MIB]).unwrap();
    let base = garage.params("old-nbdkit/");
    let mut params: Vec<&str> = base.iter().map(String::as_str).collect();
    {
        params.extend(["size=3M", "chunk-size=64K"]);
        let nbdkit = start("libs3.so", &params);
        model_check(&nbdkit, &model, 5, 200);
        params.truncate(base.len());
    }
    assert!(
        !garage.objects("old-nbdkit/chunks/").is_empty(),
        "no chunk object in the bucket"
    );
    // Reopened without size=: the metadata object is the truth.
    let nbdkit = start("libs3.so", &params);
    model_check(&nbdkit, &model, 6, 100);
}
