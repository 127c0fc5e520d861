//! End-to-end tests of the sharded plugin: real nbdkit loading
//! target/release/libsharded.so on a chunk directory in a temp dir, real
//! NBD clients (nbdsh, qemu-io, nbdcopy, nbdinfo), strace for durability.
//!
//! Run: `cargo test --release -p integration-tests --test sharded`

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{
    artifact, debian_tool, nbd_scripts, nbdsh, pattern_file, run_ok, wait_until, Nbdkit, TempDir,
};

const MIB: u64 = 1 << 20;

fn plugin() -> PathBuf {
    artifact("libsharded.so")
}

fn start(dir: &Path, extra: &[&str]) -> Nbdkit {
    let dir = format!("dir={}", dir.display());
    let mut params = vec![dir.as_str()];
    params.extend_from_slice(extra);
    Nbdkit::start(&[], &plugin(), &params)
}

/// nbdkit's output when it refuses to start with these parameters.
fn refusal(dir: &Path, extra: &[&str]) -> String {
    let dir = format!("dir={}", dir.display());
    let mut params = vec![dir.as_str()];
    params.extend_from_slice(extra);
    Nbdkit::refusal(&[], &plugin(), &params)
}

fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for fanout in fs::read_dir(dir.join("chunks")).unwrap().flatten() {
        for chunk in fs::read_dir(fanout.path()).unwrap().flatten() {
            files.push(chunk.path());
        }
    }
    files.sort();
    files
}

#[test]
fn random_unaligned_io_across_chunks_matches_a_model_and_survives_a_restart() {
    let dir = TempDir::new().unwrap();
    let disk = dir.path().join("disk");
    let expected = dir.path().join("expected.img");
    {
        let nbdkit = start(&disk, &["size=3M", "chunk-size=64K"]);
        let script = format!(
            "import nbd\nOUT = {:?}\n{}",
            expected.display().to_string(),
            nbd_scripts::MODEL_CHECK
        );
        assert!(nbdsh(&nbdkit.uri(), &script).contains("model ok"));
    }
    // nbdkit was SIGKILLed (dropped) after the flush: reopened without
    // size=, the metadata is the truth and every flushed byte is there.
    let nbdkit = start(&disk, &[]);
    let copy = dir.path().join("copy.img");
    let mut out = debian_tool("nbdcopy");
    out.arg(nbdkit.uri()).arg(&copy);
    run_ok(out, Duration::from_secs(60));
    assert!(fs::read(&copy).unwrap() == fs::read(&expected).unwrap());

    // qemu-io across a chunk boundary (64 KiB) at an odd offset.
    let mut qemu = Command::new("qemu-io");
    qemu.args(["-f", "raw", "-c", "write -P 0x3c 65000 2000"])
        .args(["-c", "read -P 0x3c 65000 2000"])
        .arg(nbdkit.uri());
    let output = run_ok(qemu, Duration::from_secs(60));
    assert!(!output.contains("verification failed"), "{output}");
}

#[test]
fn nbdcopy_in_and_out_is_byte_exact() {
    let dir = TempDir::new().unwrap();
    let source = pattern_file(dir.path(), "source.img", (5 * MIB + 4096) as usize, 21);
    let nbdkit = start(&dir.path().join("disk"), &["size=5246976"]);
    let mut into = debian_tool("nbdcopy");
    into.arg(&source).arg(nbdkit.uri());
    run_ok(into, Duration::from_secs(60));
    let copy = dir.path().join("copy.img");
    let mut out = debian_tool("nbdcopy");
    out.arg(nbdkit.uri()).arg(&copy);
    run_ok(out, Duration::from_secs(60));
    assert!(fs::read(&copy).unwrap() == fs::read(&source).unwrap());
}

#[test]
fn holes_are_reported_and_zeros_never_allocate() {
    let dir = TempDir::new().unwrap();
    let disk = dir.path().join("disk");
    let nbdkit = start(&disk, &["size=8M", "chunk-size=1M"]);
    // All-zero writes (whole chunks and parts) store nothing.
    nbdsh(
        &nbdkit.uri(),
        "h.pwrite(bytes(2 << 20), 0)\nh.pwrite(bytes(5000), 3 << 20)\nh.flush()",
    );
    assert!(chunk_files(&disk).is_empty(), "{:?}", chunk_files(&disk));
    // Data in chunk 3 only: the map shows hole, data, hole.
    nbdsh(
        &nbdkit.uri(),
        "h.pwrite(b'\\x01' * 4096, 3 << 20)\nh.flush()",
    );
    assert_eq!(chunk_files(&disk).len(), 1);
    let mut map = debian_tool("nbdinfo");
    map.args(["--map", &nbdkit.uri()]);
    let map = run_ok(map, Duration::from_secs(30));
    let lines: Vec<Vec<String>> = map
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(lines[0][0], "0");
    assert!(lines[0].last().unwrap().contains("hole"), "{map}");
    let data = lines
        .iter()
        .find(|l| l.last().unwrap() == "data")
        .unwrap_or_else(|| panic!("no data extent: {map}"));
    assert_eq!(data[0], (3 * MIB).to_string(), "{map}");
    assert!(
        lines.last().unwrap().last().unwrap().contains("hole"),
        "{map}"
    );
    // Trimming the whole chunk deletes its file.
    nbdsh(&nbdkit.uri(), "h.trim(1 << 20, 3 << 20)\nh.flush()");
    assert!(chunk_files(&disk).is_empty());
    let mut map = debian_tool("nbdinfo");
    map.args(["--map", &nbdkit.uri()]);
    let map = run_ok(map, Duration::from_secs(30));
    assert_eq!(map.lines().count(), 1, "{map}");
    assert!(map.contains("hole"), "{map}");
}

#[test]
fn existing_disks_refuse_conflicting_parameters_and_grow_only_when_asked() {
    let dir = TempDir::new().unwrap();
    let disk = dir.path().join("disk");
    let no_size = refusal(&disk, &[]);
    assert!(no_size.contains("size="), "{no_size}");
    drop(start(&disk, &["size=4M", "chunk-size=256K"]));
    let other_size = refusal(&disk, &["size=8M"]);
    assert!(other_size.contains("grow=true"), "{other_size}");
    let other_chunk = refusal(&disk, &["chunk-size=1M"]);
    assert!(other_chunk.contains("chunk-size"), "{other_chunk}");
    let shrink = refusal(&disk, &["size=2M", "grow=true"]);
    assert!(shrink.contains("shrinking"), "{shrink}");
    let grown = start(&disk, &["size=8M", "grow=true"]);
    assert_eq!(nbdsh(&grown.uri(), "print(h.get_size())").trim(), "8388608");
    drop(grown);
    let reopened = start(&disk, &[]);
    assert_eq!(
        nbdsh(&reopened.uri(), "print(h.get_size())").trim(),
        "8388608"
    );
    // A directory with someone else's files is never taken over.
    let foreign = dir.path().join("foreign");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("notes.txt"), b"mine").unwrap();
    let taken = refusal(&foreign, &["size=1M"]);
    assert!(taken.contains("not a sharded disk"), "{taken}");
}

#[test]
fn flush_makes_new_chunks_and_their_names_durable() {
    let dir = TempDir::new().unwrap();
    let disk = dir.path().join("disk");
    drop(start(&disk, &["size=4M", "chunk-size=1M"]));
    let trace = dir.path().join("trace.txt");
    let trace_arg = trace.display().to_string();
    let wrapper = [
        "strace",
        "-f",
        "-y",
        "-e",
        "trace=fsync,fdatasync",
        "-o",
        &trace_arg,
    ];
    let dir_arg = format!("dir={}", disk.display());
    let nbdkit = Nbdkit::try_start_wrapped(&wrapper, &[], &plugin(), &[&dir_arg])
        .unwrap_or_else(|p| panic!("{:?}", p.output.snapshot()));
    let syncs = || fs::read_to_string(&trace).unwrap_or_default();
    nbdsh(&nbdkit.uri(), "h.pwrite(b'\\x07' * 1000, (2 << 20) + 10)");
    let chunk = "chunks/000000/0000000000000002>";
    // A plain write is write-back: nothing synced yet.
    assert!(!syncs().contains(chunk), "{}", syncs());
    nbdsh(&nbdkit.uri(), "h.flush()");
    let synced = |needle: &str| wait_until(Duration::from_secs(5), || syncs().contains(needle));
    assert!(synced(chunk), "{}", syncs());
    assert!(syncs().contains("fdatasync("), "{}", syncs());
    assert!(
        synced("chunks/000000>"),
        "fan-out directory not synced: {}",
        syncs()
    );
    assert!(
        synced("chunks>"),
        "chunks directory not synced: {}",
        syncs()
    );
    // FUA: durable before the reply, without a flush.
    nbdsh(
        &nbdkit.uri(),
        "import nbd\nh.pwrite(b'\\x08' * 10, 3 << 20, nbd.CMD_FLAG_FUA)",
    );
    assert!(synced("chunks/000000/0000000000000003>"), "{}", syncs());
}

#[test]
fn a_flush_on_one_connection_covers_another() {
    let dir = TempDir::new().unwrap();
    let nbdkit = start(&dir.path().join("disk"), &["size=2M", "chunk-size=64K"]);
    let script = format!(
        "import nbd\n\
         assert h.can_multi_conn()\n\
         h2 = nbd.NBD()\n\
         h2.connect_uri({:?})\n\
         for i in range(40):\n\
         \x20   h.pwrite(bytes([i + 1]) * 3001, 65000 + i * 3001)\n\
         \x20   h.flush()\n\
         \x20   assert h2.pread(3001, 65000 + i * 3001) == bytes([i + 1]) * 3001\n\
         print('ok')",
        nbdkit.uri()
    );
    assert!(nbdsh(&nbdkit.uri(), &script).contains("ok"));
}

#[test]
fn sparse_random_data_in_and_qemu_img_convert_out_and_back() {
    let dir = TempDir::new().unwrap();
    let nbdkit = start(&dir.path().join("disk"), &["size=8M", "chunk-size=256K"]);
    // nbdkit's sparse-random plugin: random data with large zero runs.
    let source = Nbdkit::start(&[], Path::new("sparse-random"), &["8M", "seed=7"]);
    let mut copy = debian_tool("nbdcopy");
    copy.arg(source.uri()).arg(nbdkit.uri());
    run_ok(copy, Duration::from_secs(60));
    let from_source = dir.path().join("source.img");
    let from_sharded = dir.path().join("sharded.img");
    for (uri, file) in [(source.uri(), &from_source), (nbdkit.uri(), &from_sharded)] {
        let mut convert = Command::new("qemu-img");
        convert
            .args(["convert", "-f", "raw", "-O", "raw", &uri])
            .arg(file);
        run_ok(convert, Duration::from_secs(60));
    }
    assert!(fs::read(&from_sharded).unwrap() == fs::read(&from_source).unwrap());
    // Zero runs of the source stay holes: fewer chunk files than chunks.
    let files = chunk_files(&dir.path().join("disk")).len();
    assert!(files < 32, "{files} chunk files for a sparse source");
    // And back in: qemu-img writes a file into the existing export.
    let other = pattern_file(dir.path(), "other.img", 8 << 20, 41);
    let mut convert = Command::new("qemu-img");
    convert
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&other)
        .arg(nbdkit.uri());
    run_ok(convert, Duration::from_secs(60));
    let mut out = Command::new("qemu-img");
    out.args(["convert", "-f", "raw", "-O", "raw", &nbdkit.uri()])
        .arg(&from_sharded);
    run_ok(out, Duration::from_secs(60));
    assert!(fs::read(&from_sharded).unwrap() == fs::read(&other).unwrap());
}

#[test]
fn fio_random_writes_verify() {
    let dir = TempDir::new().unwrap();
    let nbdkit = start(&dir.path().join("disk"), &["size=16M", "chunk-size=64K"]);
    let mut fio = debian_tool("fio");
    fio.args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", nbdkit.uri()),
        "--rw=randwrite",
        "--bs=4k",
        "--size=16M",
        "--iodepth=16",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
    ]);
    let output = run_ok(fio, Duration::from_secs(120));
    assert!(!output.contains("verify: bad"), "{output}");
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallFs {
    dir: TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = TempDir::new().unwrap();
        let mut mount = Command::new("mount");
        mount
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path());
        run_ok(mount, Duration::from_secs(10));
        SmallFs { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let mut umount = Command::new("umount");
        umount.args(["-l"]).arg(self.dir.path());
        let _ = harness::run(umount, Duration::from_secs(10));
    }
}

/// A read-only bind mount of a directory, unmounted on drop: root ignores
/// permission bits, so only a read-only mount really forbids writes.
struct ReadOnlyView {
    dir: TempDir,
}

impl ReadOnlyView {
    fn of(source: &Path) -> ReadOnlyView {
        let dir = TempDir::new().unwrap();
        let mut bind = Command::new("mount");
        bind.args(["--bind"]).arg(source).arg(dir.path());
        run_ok(bind, Duration::from_secs(10));
        let view = ReadOnlyView { dir };
        let mut remount = Command::new("mount");
        remount.args(["-o", "remount,bind,ro"]).arg(view.dir.path());
        run_ok(remount, Duration::from_secs(10));
        view
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        let mut umount = Command::new("umount");
        umount.args(["-l"]).arg(self.dir.path());
        let _ = harness::run(umount, Duration::from_secs(10));
    }
}

/// `nbdkit -r` serves a disk whose directory cannot be written at all (a
/// read-only mount, e.g. a snapshot or a replica): the plugin opens and
/// reads without writing anything, and writes are refused with EPERM.
#[test]
fn nbdkit_readonly_serves_a_disk_on_a_readonly_mount() {
    let dir = TempDir::new().unwrap();
    let disk = dir.path().join("disk");
    {
        let nbdkit = start(&disk, &["size=4M", "chunk-size=64K"]);
        nbdsh(
            &nbdkit.uri(),
            "h.pwrite(b'\\x07' * 100000, 12345)\nh.flush()",
        );
    }
    let view = ReadOnlyView::of(dir.path());
    let params = [format!("dir={}", view.dir.path().join("disk").display())];
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let nbdkit = Nbdkit::start(&["-r"], &plugin(), &params);
    let result = nbdsh(
        &nbdkit.uri(),
        "import errno, nbd\n\
         print('read_only', h.is_read_only())\n\
         print('data', h.pread(100000, 12345) == b'\\x07' * 100000)\n\
         print('zeros', h.pread(4096, 0) == bytes(4096))\n\
         try:\n\
         \x20   h.pwrite(b'x' * 512, 0)\n\
         except nbd.Error as e:\n\
         \x20   print('write', errno.errorcode.get(e.errno, e.errno))",
    );
    for line in ["read_only True", "data True", "zeros True", "write EPERM"] {
        assert!(result.contains(line), "{line}: {result}");
    }
    drop(nbdkit);
}

/// After ENOSPC: the data written before reads back, the failed write's
/// range holds only old or new bytes, freeing space (a trim deletes chunk
/// files) lets the same write succeed, and a restarted nbdkit on the same
/// directory serves exactly that.
#[test]
fn a_full_filesystem_gives_enospc_and_nbdkit_keeps_serving() {
    let fs_ = SmallFs::mount("2m");
    let disk = fs_.dir.path().join("disk");
    let nbdkit = start(&disk, &["size=16M", "chunk-size=1M"]);
    let result = nbdsh(
        &nbdkit.uri(),
        "import errno, nbd\n\
         MIB = 1 << 20\n\
         h.pwrite(b'\\x01' * 4096, 0)\n\
         written = 0\n\
         try:\n\
         \x20   for i in range(1, 16):\n\
         \x20       h.pwrite(b'\\x02' * MIB, i * MIB)\n\
         \x20       written = i\n\
         \x20   print('no error')\n\
         except nbd.Error as e:\n\
         \x20   print('write', errno.errorcode.get(e.errnum, e.errnum))\n\
         failed = written + 1\n\
         print('still', h.pread(4096, 0) == b'\\x01' * 4096)\n\
         print('before intact', all(h.pread(MIB, i * MIB) == b'\\x02' * MIB for i in range(1, failed)))\n\
         print('failed range old or new', set(h.pread(MIB, failed * MIB)) <= {0, 2})\n\
         if written:\n\
         \x20   h.trim(written * MIB, MIB)\n\
         h.pwrite(b'\\x03' * MIB, failed * MIB)\n\
         h.flush()\n\
         print('recovered', h.pread(MIB, failed * MIB) == b'\\x03' * MIB)\n\
         print('failed at', failed)",
    );
    assert!(result.contains("write ENOSPC"), "{result}");
    for line in [
        "still True",
        "before intact True",
        "failed range old or new True",
        "recovered True",
    ] {
        assert!(result.contains(line), "{line}: {result}");
    }
    let later = nbdsh(&nbdkit.uri(), "print(len(h.pread(512, 0)))");
    assert_eq!(later.trim(), "512");
    let failed: u64 = result
        .lines()
        .find_map(|l| l.strip_prefix("failed at "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the script names the failed MiB");
    drop(nbdkit);
    // Restarted: block 0, the trimmed MiBs as zeros, the rewritten MiB.
    let nbdkit = start(&disk, &["size=16M", "chunk-size=1M"]);
    let script = format!(
        "MIB = 1 << 20\n\
         model = bytearray(16 * MIB)\n\
         model[0:4096] = b'\\x01' * 4096\n\
         model[{failed} * MIB:{next} * MIB] = b'\\x03' * MIB\n\
         print(b''.join(h.pread(MIB, i * MIB) for i in range(16)) == model)",
        next = failed + 1
    );
    assert_eq!(nbdsh(&nbdkit.uri(), &script).trim(), "True");
    drop(nbdkit);
}

#[test]
fn bad_keys_and_a_file_instead_of_a_directory_are_refused_clearly() {
    let dir = TempDir::new().unwrap();
    let unknown = refusal(&dir.path().join("disk"), &["size=1M", "colour=blue"]);
    assert!(
        unknown.contains("colour")
            && unknown.contains(
                "unknown parameter (known: dir, size, chunk-size, grow, lease-time, force)"
            ),
        "{unknown}"
    );
    let bad_size = refusal(&dir.path().join("disk"), &["size=lots"]);
    assert!(bad_size.contains("size"), "{bad_size}");
    let odd_chunk = refusal(&dir.path().join("disk"), &["size=1M", "chunk-size=3000"]);
    assert!(odd_chunk.contains("power of two"), "{odd_chunk}");
    let file = dir.path().join("a-file");
    fs::write(&file, b"not a directory").unwrap();
    let not_dir = refusal(&file, &["size=1M"]);
    assert!(not_dir.contains("a-file"), "{not_dir}");
}
