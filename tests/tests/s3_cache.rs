//! The s3 plugin's write-back cache (`cache-dir=`) under real nbdkit
//! processes on a real Garage, crashed with SIGKILL.
//!
//! - A model writer (libnbd's Python binding) writes 4 KiB blocks, each
//!   stamped with its write number, at random places in the first half
//!   of the disk, flushing every 16 writes, while fio writes 4k random
//!   writes with `fsync=16` into the second half. nbdkit is SIGKILLed
//!   mid-run, once with Garage up, once with Garage stopped for the
//!   last seconds (the writes then land only in the journal, and reads
//!   are served from it). The plugin is started again on the same cache
//!   directory (Garage up again): before it serves, the journal is in
//!   the store. A second nbdkit without the cache then reads the store
//!   itself: every block holds the last flushed write or a later one
//!   (never anything older, never a torn block), and fio's blocks are
//!   whole.
//! - A journal left by a writer whose disk was written by another writer
//!   since is refused, and the store is left as the other writer left it.
//! - A full cache blocks writers while the store is down, and lets them
//!   go on once uploads can free it: no write fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::garage::Garage;
use harness::write_model::{Held, WriteModel};
use harness::{artifact, debian_tool, nbdsh, wait_until, Nbdkit, Proc};
use tempfile::TempDir;

const DISK: u64 = 8 << 20;
const BLOCK: u64 = 4096;
/// The model writer's half of the disk; fio has the other.
const MODEL_BLOCKS: u64 = (DISK / 2) / BLOCK;

/// A disk on `garage` with its cache in `cache`, plus `extra` keys.
fn cached(garage: &Garage, cache: &Path, extra: &[&str]) -> Vec<String> {
    let mut params = garage.params("vol/");
    params.extend(
        [
            format!("size={DISK}"),
            "chunk-size=64K".to_owned(),
            format!("cache-dir={}", cache.display()),
        ]
        .into_iter()
        .chain(extra.iter().map(|s| s.to_string())),
    );
    params
}

fn start(params: &[String], options: &[&str]) -> Nbdkit {
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    Nbdkit::start(options, &artifact("libs3.so"), &params)
}

/// The model writer: block writes stamped `(write number, block)`,
/// printing `I n block` before write n and `F n` after each flush, until
/// killed (or 120 s).
const MODEL_WRITER: &str = r#"
import nbd, random, struct, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
blocks = int(sys.argv[3])
n = 0
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    n += 1
    b = rng.randrange(blocks)
    print("I %d %d" % (n, b), flush=True)
    h.pwrite(struct.pack("<QQ", n, b) * 256, b * 4096)
    if n % 16 == 0:
        h.flush()
        print("F %d" % n, flush=True)
"#;

fn start_model_writer(uri: &str, seed: u64) -> Proc {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", MODEL_WRITER, uri, &seed.to_string()])
        .arg(MODEL_BLOCKS.to_string());
    Proc::spawn("model", cmd)
}

/// fio's crash load: 4k random writes with an fsync every 16, over the
/// second half of the disk, each block filled with its own offset.
fn start_fio(uri: &str) -> Proc {
    let mut fio = debian_tool("fio");
    fio.args([
        "--name=crash",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        &format!("--offset={}", DISK / 2),
        &format!("--size={}", DISK / 2),
        "--iodepth=4",
        "--fsync=16",
        "--verify=pattern",
        "--verify_pattern=%o",
        "--do_verify=0",
        "--time_based",
        "--runtime=120",
    ]);
    Proc::spawn("fio", fio)
}

/// What the model writer's lines (`I n block`, `F n`) say.
fn model_from_lines(lines: &[String]) -> WriteModel {
    let mut model = WriteModel::default();
    for line in lines {
        let mut words = line.split_whitespace();
        let kind = words.next();
        let numbers: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
        match (kind, numbers.as_slice()) {
            (Some("I"), [n, block]) => model.issue(*n, *block),
            (Some("F"), [n]) => model.flush(*n),
            _ => {}
        }
    }
    model
}

/// Checks the model's half of `disk` (the whole disk's bytes): every
/// block holds a whole write issued to it, no older than its last one at
/// or before `upto`. Returns how many blocks hold data.
fn check_model_half(disk: &[u8], model: &WriteModel, upto: u64) -> usize {
    let mut written = 0;
    for block in 0..MODEL_BLOCKS {
        let bytes = &disk[(block * BLOCK) as usize..((block + 1) * BLOCK) as usize];
        // 256 copies of (write number, block), little-endian.
        let stamp = bytes.chunks(16).all(|c| c == &bytes[..16]).then(|| {
            let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            (word(0), word(8))
        });
        match model.check(block, bytes, stamp, upto) {
            Ok(Held::Write(_)) => written += 1,
            Ok(Held::Zeros) => {}
            Err(problem) => panic!("{problem}"),
        }
    }
    written
}

/// fio's half: each block zeros or its own offset (fio's `%o`), whole.
fn check_fio_half(disk: &[u8]) -> usize {
    let mut written = 0;
    for block in MODEL_BLOCKS..DISK / BLOCK {
        let bytes = &disk[(block * BLOCK) as usize..((block + 1) * BLOCK) as usize];
        if bytes.iter().all(|&b| b == 0) {
            continue;
        }
        written += 1;
        let offset = (block * BLOCK).to_le_bytes();
        assert!(
            bytes.chunks(8).all(|c| c == offset),
            "fio's block {block} is not whole: {:02x?}",
            &bytes[..16]
        );
    }
    written
}

/// The whole disk, read with nbdsh.
fn read_disk(uri: &str, dump: &Path) -> Vec<u8> {
    nbdsh(
        uri,
        &format!(
            "open({:?}, 'wb').write(h.pread({DISK}, 0))",
            dump.display().to_string()
        ),
    );
    std::fs::read(dump).unwrap()
}

fn journal_files(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache.join("journal"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "journal"))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs both writers for `run`, optionally stopping Garage `stop_store`
/// before the end, then SIGKILLs nbdkit. Returns the model's lines.
fn write_then_crash(
    garage: &mut Garage,
    cache: &Path,
    seed: u64,
    run: Duration,
    stop_store: Option<Duration>,
    scratch: &Path,
) -> WriteModel {
    let mut nbdkit = start(&cached(garage, cache, &[]), &[]);
    let mut model = start_model_writer(&nbdkit.uri(), seed);
    let mut fio = start_fio(&nbdkit.uri());
    let before_stop = stop_store.map_or(run, |down| run - down);
    std::thread::sleep(before_stop);
    if stop_store.is_some() {
        garage.stop();
        let flushes = model.output.count("F ");
        std::thread::sleep(run - before_stop);
        assert!(
            model.output.count("F ") > flushes + 4,
            "writes must go on into the journal while the store is down: {} flushes, then {}",
            flushes,
            model.output.count("F ")
        );
        // Reads while the store is down come from the journal: what was
        // acknowledged before the read, or writes issued during it.
        let acknowledged = model_from_lines(&model.output.snapshot()).acknowledged();
        let disk = read_disk(&nbdkit.uri(), &scratch.join("during.img"));
        let issued = model_from_lines(&model.output.snapshot());
        assert!(check_model_half(&disk, &issued, acknowledged) > 0);
    } else {
        std::thread::sleep(run - before_stop);
    }
    nbdkit.proc.kill();
    assert!(model.wait_timeout(Duration::from_secs(30)).is_some());
    assert!(fio.wait_timeout(Duration::from_secs(30)).is_some());
    let lines = model.output.snapshot();
    assert!(
        !journal_files(cache).is_empty(),
        "the crash left no journal: nothing was tested"
    );
    let m = model_from_lines(&lines);
    assert!(m.flushed >= 64, "too few flushed writes: {}", m.flushed);
    m
}

fn crash_and_replay(stop_store: bool) {
    let mut garage = Garage::start();
    let cache = TempDir::new().unwrap();
    let scratch = TempDir::new().unwrap();
    let model = write_then_crash(
        &mut garage,
        cache.path(),
        if stop_store { 7 } else { 3 },
        Duration::from_secs(6),
        stop_store.then_some(Duration::from_secs(3)),
        scratch.path(),
    );
    if stop_store {
        garage.start_again();
    }
    // The replaying start: served only once the journal is in the store.
    let mut replayed = start(&cached(&garage, cache.path(), &[]), &[]);
    assert!(
        replayed.proc.output.contains("replaying the journal"),
        "no replay: {:?}",
        replayed.proc.output.snapshot()
    );
    // The store itself, through a plugin without the cache.
    let store = start(&garage.read_only_params("vol/"), &["-r"]);
    let disk = read_disk(&store.uri(), &scratch.path().join("store.img"));
    drop(store);
    // A process kill keeps what was written to the journal: every
    // acknowledged write (so every flushed one too) is in the store.
    let written = check_model_half(&disk, &model, model.acknowledged());
    assert!(written > 0);
    assert!(check_fio_half(&disk) > 0, "fio wrote nothing");
    // A clean stop leaves an empty journal and no lease.
    replayed.proc.signal(libc::SIGTERM);
    assert!(replayed
        .proc
        .wait_timeout(Duration::from_secs(60))
        .is_some());
    assert!(
        journal_files(cache.path()).is_empty(),
        "a clean stop left a journal"
    );
    assert!(!garage
        .objects("vol/")
        .iter()
        .any(|k| k.ends_with("chunk-store.lease")));
}

#[test]
fn flushed_writes_survive_sigkill_and_are_stored_before_the_disk_is_served() {
    crash_and_replay(false);
}

#[test]
fn writes_made_while_the_store_is_down_survive_sigkill() {
    crash_and_replay(true);
}

/// A journal left by A, whose disk C wrote since: refused, and C's data
/// stays.
#[test]
fn a_journal_is_never_replayed_over_another_writers_data() {
    let mut garage = Garage::start();
    let cache = TempDir::new().unwrap();
    let scratch = TempDir::new().unwrap();
    {
        let a = start(&cached(&garage, cache.path(), &[]), &[]);
        nbdsh(&a.uri(), "h.pwrite(b'\\xaa' * 65536, 0); h.flush()");
        // Nothing of A's reaches the store: it is down when A dies.
        garage.stop();
        nbdsh(&a.uri(), "h.pwrite(b'\\xab' * 65536, 65536); h.flush()");
        let mut a = a;
        a.proc.kill();
    }
    garage.start_again();
    // C, without a cache, takes the dead writer's lease and writes.
    {
        let params = {
            let mut p = garage.params("vol/");
            p.push(format!("size={DISK}"));
            p.push("chunk-size=64K".into());
            p
        };
        let mut c = start(&params, &[]);
        nbdsh(&c.uri(), "h.pwrite(b'\\xcc' * 131072, 0); h.flush()");
        c.proc.signal(libc::SIGTERM);
        assert!(c.proc.wait_timeout(Duration::from_secs(60)).is_some());
    }
    let params = cached(&garage, cache.path(), &[]);
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let refusal = Nbdkit::refusal(&[], &artifact("libs3.so"), &params);
    assert!(
        refusal.contains("held by another writer since"),
        "{refusal}"
    );
    let store = start(&garage.read_only_params("vol/"), &["-r"]);
    let disk = read_disk(&store.uri(), &scratch.path().join("store.img"));
    assert!(
        disk[..131072].iter().all(|&b| b == 0xcc),
        "C's data was overwritten"
    );
    assert!(
        !journal_files(cache.path()).is_empty(),
        "the journal was lost"
    );
}

/// A cache of 16M with the store down: writes beyond it wait, none
/// fails, and all complete once the store is back.
#[test]
fn a_full_cache_blocks_writers_until_uploads_free_it() {
    let mut garage = Garage::start();
    let cache = TempDir::new().unwrap();
    let params = {
        let mut p = garage.params("vol/");
        p.extend([
            "size=64M".to_owned(),
            "chunk-size=64K".to_owned(),
            format!("cache-dir={}", cache.path().display()),
            "cache-size=16M".to_owned(),
        ]);
        p
    };
    let nbdkit = start(&params, &[]);
    garage.stop();
    // 24 MiB in 1 MiB writes, numbered as they complete.
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args([
        "-c",
        "import nbd, sys\n\
         h = nbd.NBD(); h.connect_uri(sys.argv[1])\n\
         for i in range(24):\n\
         \x20   h.pwrite(bytes([i + 1]) * 1048576, i * 1048576)\n\
         \x20   print('wrote', i, flush=True)\n\
         h.flush(); print('all written', flush=True)",
        &nbdkit.uri(),
    ]);
    let mut writer = Proc::spawn("writer", cmd);
    assert!(writer.output.wait_for("wrote 10", Duration::from_secs(30)));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !writer.output.contains("wrote 16"),
        "more than 16M accepted with the store down: {:?}",
        writer.output.snapshot()
    );
    assert!(
        writer.exited().is_none(),
        "a full cache must block, not fail"
    );
    garage.start_again();
    assert!(
        writer
            .output
            .wait_for("all written", Duration::from_secs(120)),
        "{:?}",
        writer.output.snapshot()
    );
    assert!(writer
        .wait_timeout(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    assert!(wait_until(Duration::from_secs(60), || {
        // Everything uploads: the journal shrinks to its active segment.
        journal_files(cache.path()).len() <= 1
    }));
    let check = nbdsh(
        &nbdkit.uri(),
        "print(all(h.pread(1048576, i * 1048576) == bytes([i + 1]) * 1048576 for i in range(24)))",
    );
    assert_eq!(check.trim(), "True");
}
