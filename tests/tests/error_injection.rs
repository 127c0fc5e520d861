//! Injected request failures: nbdkit's `error` filter fails a share of
//! reads, writes, zeroes and trims with a chosen errno, under the
//! `blocksize` filter that splits every request into 64 KiB pieces. So one
//! client write becomes several plugin writes of which some never reach
//! the plugin: the partial failure a real backend fault produces, at
//! offsets that cut across the 64 KiB chunks. The client (nbdsh, libnbd)
//! must see exactly the injected errno; after each failure every piece of
//! the range reads as wholly old or wholly new data (never anything else);
//! the writes it retries until they succeed must leave the export
//! byte-exact with a model; and nbdkit restarted *without* the filters on
//! the same backing store must serve exactly the model.
//!
//! The filters sit above the plugin, so what is tested is the plugin's
//! state after some of its requests were never made, not its own error
//! paths; those are `sharded`'s full filesystem and `s3`'s stopped store.
//!
//! Run: `cargo test --release -p integration-tests --test error_injection -- --nocapture`

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::garage::Garage;
use harness::{artifact, debian_tool, nbdsh, pattern_file, run_ok, DiskServer, Nbdkit, TempDir};

/// Export size: 64 chunks of 64 KiB for the chunk stores.
const DISK_SIZE: usize = 4 << 20;

/// What the blocksize filter cuts requests into (maxdata and maxlen); the
/// unit in which a failed request may have taken effect.
const PIECE: usize = 64 << 10;

/// The filters in front of the plugin: the client talks to blocksize,
/// which splits, then error, which fails some pieces.
const FILTERS: &[&str] = &["--filter=blocksize", "--filter=error"];

/// Filter settings: a distinct errno per operation, so a client seeing the
/// wrong one is caught.
fn filter_params() -> Vec<String> {
    [
        format!("maxdata={PIECE}"),
        format!("maxlen={PIECE}"),
        "error-pread=EIO".into(),
        "error-pread-rate=10%".into(),
        "error-pwrite=ENOSPC".into(),
        "error-pwrite-rate=25%".into(),
        "error-zero=EPERM".into(),
        "error-zero-rate=25%".into(),
        "error-trim=EINVAL".into(),
        "error-trim-rate=25%".into(),
    ]
    .into()
}

/// The nbdsh script: fills the export, then 300 random unaligned writes
/// (some FUA), zeroes and trims. Each is tried once; if it fails, the
/// errno must be the injected one and every piece of the range must read
/// as the old or the new data; then it is retried until it succeeds (at
/// most 200 tries) and must read back exactly. Reads retry the same way.
/// Needs MODEL (the export's contents so far, updated on exit) and PIECE.
const FAULTS_SCRIPT: &str = r#"
import errno, random, nbd
INJECTED = {'pread': errno.EIO, 'pwrite': errno.ENOSPC, 'zero': errno.EPERM, 'trim': errno.EINVAL}
failures = {op: 0 for op in INJECTED}
rng = random.Random(4321)
size = h.get_size()
model = bytearray(open(MODEL, 'rb').read())
assert len(model) == size, 'model and export sizes differ'

def injected(op, e):
    # e.errnum is the number (e.errno is its name, or None)
    assert e.errnum == INJECTED[op], f'{op} failed with {e.errno}, not the injected {errno.errorcode[INJECTED[op]]}'
    failures[op] += 1

def until_it_succeeds(op, call):
    for _ in range(200):
        try:
            return call()
        except nbd.Error as e:
            injected(op, e)
    raise AssertionError(f'{op} still failing after 200 tries')

def read(off, n):
    return until_it_succeeds('pread', lambda: h.pread(n, off))

partial = 0  # failed requests that had changed some pieces, not all

def each_piece_old_or_new(op, off, new):
    global partial
    got = read(off, len(new))
    kinds = set()
    for p in range(0, len(new), PIECE):
        end = min(p + PIECE, len(new))
        piece, old = got[p:end], model[off + p:off + end]
        assert piece == old or piece == new[p:end], \
            f'{op} at {off}: the piece at +{p} is neither the old nor the new data'
        if old != new[p:end]:
            kinds.add(piece == old)
    partial += len(kinds) == 2

def change(op, off, new, call):
    try:
        call()
    except nbd.Error as e:
        injected(op, e)
        each_piece_old_or_new(op, off, new)
        until_it_succeeds(op, call)
    model[off:off + len(new)] = new
    assert read(off, len(new)) == new, f'{op} at {off} succeeded but reads back wrong'

# Each piece fails on its own: a 256 KiB write (4 pieces) succeeds whole
# one time in three, so 200 tries are plenty.
for off in range(0, size, 256 << 10):
    data = rng.randbytes(256 << 10)
    change('pwrite', off, data, lambda: h.pwrite(data, off))
for step in range(300):
    off = rng.randrange(size)
    n = rng.randrange(1, min(size - off, 300000) + 1)
    kind = rng.randrange(4)
    if kind < 2:
        data = rng.randbytes(n)
        flags = nbd.CMD_FLAG_FUA if rng.randrange(2) else 0
        change('pwrite', off, data, lambda: h.pwrite(data, off, flags))
    elif kind == 2:
        change('zero', off, bytes(n), lambda: h.zero(n, off))
    else:
        change('trim', off, bytes(n), lambda: h.trim(n, off))
h.flush()
got = b''.join(read(o, min(256 << 10, size - o)) for o in range(0, size, 256 << 10))
assert got == model, 'the export differs from the model'
open(MODEL, 'wb').write(model)
print('failures', ' '.join(f'{op}={n}' for op, n in failures.items()), f'partial={partial}')
print('model ok')
"#;

/// Runs [`FAULTS_SCRIPT`] through the filters, then restarts nbdkit
/// without them on the same store and checks it serves exactly the model.
/// `model` holds the export's initial contents.
fn faults_then_clean_restart(plugin: &str, plugin_params: &[String], model: &Path) {
    let mut params = plugin_params.to_vec();
    params.extend(filter_params());
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let so = artifact(&format!("lib{plugin}.so"));
    {
        let filtered = Nbdkit::start(FILTERS, &so, &params);
        let script = format!(
            "MODEL = {:?}\nPIECE = {PIECE}\n{FAULTS_SCRIPT}",
            model.display().to_string()
        );
        let result = nbdsh(&filtered.uri(), &script);
        println!("{plugin}: {}", result.trim().replace('\n', "; "));
        assert!(result.contains("model ok"), "{result}");
        // Every kind of request was failed at least once, and some failed
        // after changing part of their range, else the run proved nothing.
        let never_failed: Vec<&str> = result
            .split_whitespace()
            .filter(|word| word.ends_with("=0"))
            .collect();
        assert!(
            never_failed.is_empty(),
            "{plugin}: {never_failed:?}: {result}"
        );
    }
    let plugin_params: Vec<&str> = plugin_params.iter().map(String::as_str).collect();
    let clean = Nbdkit::start(&[], &so, &plugin_params);
    let copy = model.with_extension("after-restart");
    let mut nbdcopy = debian_tool("nbdcopy");
    nbdcopy.arg(clean.uri()).arg(&copy);
    run_ok(nbdcopy, Duration::from_secs(120));
    assert!(
        fs::read(&copy).unwrap() == fs::read(model).unwrap(),
        "{plugin}: without the filters the export differs from the model"
    );
}

fn zeros_model(dir: &Path) -> PathBuf {
    let model = dir.join("model.img");
    fs::write(&model, vec![0u8; DISK_SIZE]).unwrap();
    model
}

#[test]
fn sharded_under_injected_errors_keeps_old_or_new_data_and_converges() {
    let dir = TempDir::new().unwrap();
    let params = vec![
        format!("dir={}", dir.path().join("disk").display()),
        format!("size={DISK_SIZE}"),
        "chunk-size=64K".to_owned(),
    ];
    faults_then_clean_restart("sharded", &params, &zeros_model(dir.path()));
}

#[test]
fn s3_under_injected_errors_keeps_old_or_new_data_and_converges() {
    let garage = Garage::start();
    let dir = TempDir::new().unwrap();
    let mut params = garage.params("faults/");
    params.extend([format!("size={DISK_SIZE}"), "chunk-size=64K".to_owned()]);
    faults_then_clean_restart("s3", &params, &zeros_model(dir.path()));
}

#[test]
fn multihttp_under_injected_errors_keeps_old_or_new_data_and_converges() {
    let dir = TempDir::new().unwrap();
    let backing = pattern_file(dir.path(), "backing.img", DISK_SIZE, 3);
    let model = dir.path().join("model.img");
    fs::copy(&backing, &model).unwrap();
    let server = DiskServer::start(&backing, &[]);
    let params = vec![format!("urls={}", server.url())];
    faults_then_clean_restart("multihttp", &params, &model);
    assert!(
        fs::read(&backing).unwrap() == fs::read(&model).unwrap(),
        "the server's backing file differs from the model"
    );
}
