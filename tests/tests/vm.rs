//! The kernel attach path, proven in a VM: this machine's kernel has no
//! nbd driver, so `tests/vm/run` boots Debian's kernel under QEMU (TCG)
//! with an initramfs of this host's binaries and the installed project,
//! and runs `tests/vm/guest-test` there (real nbd.ko, real nbd-client,
//! real loop device, real http-disk-server and multihttp plugin).
//! The guest prints `VM-RESULT: PASS|FAIL <scenario>`; this test asserts it.
//!
//! The power-loss tests attach image files as virtio disks with a volatile
//! write cache (a host nbdkit with the cache filter: only a flush writes
//! the image), let the guest write and flush through `/dev/nbdX`, then
//! SIGKILL QEMU and that nbdkit (the power cut: no shutdown, nothing more
//! leaves the guest or the disk's cache) and check on the host that the
//! image holds every flushed byte. `powerloss-noflush` is a client that
//! never flushes (XCP-ng's HA statefile: O_DIRECT writes, no fsync): there
//! every acknowledged write must be in the image, which only write-through
//! (the multihttp default) gives. `HND_VM_PLUGIN_KEYS=writeback=true`
//! (tests/vm/run) shows that test fail.
//!
//! `powerloss-s3-cache` (issue #23) puts the s3 plugin's write-back cache
//! (`cache-dir=`) on the guest's own volatile ext4 disk, its store a
//! Garage on this host (outside the power domain, reached through QEMU's
//! user network, `HND_VM_NET=user`), stopped while the guest writes: only
//! the journal's fdatasync makes a flushed write durable. A second boot
//! replays the journal, then the store is checked here.
//!
//! Needs: qemu-system-x86, busybox-static, cpio (scripts/install-deps),
//! e2fsprogs (mkfs.ext4, e2fsck, debugfs), Garage (for the s3 scenario),
//! the release build, and apt access once to fetch the kernel (cached in
//! /var/cache/http-nbd-transfer/vm-kernel).
//! Run: `cargo test --release -p integration-tests --test vm`

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use harness::garage::Garage;
use harness::write_model::{Held, WriteModel};
use harness::{
    artifact, bin_dir, debian_tool, nbdsh, pattern, run, run_ok, wait_until, workspace_root,
    Nbdkit, Proc, TempDir,
};
use lock_ext::LockIgnoringPoison;

/// Boot + the four scenarios take ~85 s here; TCG on a loaded CI host is
/// slower. QEMU itself is also bounded inside tests/vm/run.
const VM_TIMEOUT: Duration = Duration::from_secs(280);

/// One VM at a time: TCG keeps a core busy, and the bounds above assume
/// the VM has one (the machine has two, shared).
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn vm_slot() -> MutexGuard<'static, ()> {
    // A test that panicked while holding it leaves nothing to protect.
    ONE_VM_AT_A_TIME.lock_ignoring_poison()
}

fn run_vm(scenarios: &str, envs: &[(&str, &OsStr)]) -> (Option<i32>, Vec<String>) {
    let _slot = vm_slot();
    let mut cmd = Command::new(workspace_root().join("tests/vm/run"));
    cmd.arg(scenarios).env("HND_VM_TIMEOUT", "260");
    cmd.envs(envs.iter().copied());
    let mut vm = Proc::spawn("vm", cmd);
    // Proc kills the whole process group (QEMU included) if we give up.
    let status = vm.wait_timeout(VM_TIMEOUT);
    // Give the output readers a moment to drain the last lines.
    harness::wait_until(Duration::from_secs(2), || {
        vm.output.contains("run: ") && status.is_some()
    });
    let lines: Vec<String> = vm
        .output
        .snapshot()
        .into_iter()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect();
    let Some(status) = status else {
        vm.kill();
        panic!(
            "the VM did not finish within {VM_TIMEOUT:?}:\n{}",
            lines.join("\n")
        );
    };
    (status.code(), lines)
}

/// One boot for the scenarios that need no host-side disks: concurrent
/// wrappers, failover through the real nbd driver, and (issue #20) the
/// same /dev/nbdX kept by nbd-netlink across five SIGKILLs of nbdkit and
/// an upgrade, and across both servers down (killed, then SIGSTOPped)
/// for longer than the nbd timeout: no error, no stale block.
///
/// The project in the VM is our .deb (issue #22), installed by `dpkg
/// --root` into a tree the initramfs takes it from: the programs and
/// plugins as the package lays them out, found by name (the deb is
/// built by packaging/build, usually already by packaging.rs).
#[test]
fn kernel_attach_failover_concurrent_wrappers_and_nbdkit_restarts_in_a_vm() {
    let installed = tempfile::Builder::new()
        .prefix("vm-installed-root-")
        .tempdir_in(bin_dir())
        .expect("temp dir for the installed root");
    harness::packages::install_deb_into(installed.path());
    let scenarios = ["concurrent", "failover", "restart", "outage"];
    let (code, lines) = run_vm(
        &scenarios.join(","),
        &[("HND_VM_INSTALLED_ROOT", installed.path().as_os_str())],
    );
    let console = lines.join("\n");
    assert!(
        console.contains("build-initramfs: the project from the installed root"),
        "the VM did not take the project from the package:\n{console}"
    );
    for scenario in scenarios {
        let pass = format!("VM-RESULT: PASS {scenario}");
        assert!(
            lines.iter().any(|l| l.ends_with(&pass)),
            "scenario {scenario} did not pass in the VM:\n{console}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.contains("VM-RESULT: FAIL")),
        "{console}"
    );
    assert_eq!(code, Some(0), "tests/vm/run failed:\n{console}");
}

// --- Power loss -----------------------------------------------------------

/// Must match tests/vm/guest-test: generation g is the pattern's bytes
/// [g*REGION, (g+1)*REGION), written at the same offset of the device.
const REGION: u64 = 4 << 20;
const GENERATIONS: u64 = 10;
/// Generations the guest writes and flushes before the power cut.
const FLUSHED_GENERATIONS: usize = 3;
/// Unit of "bytes found": a sector is found when all its bytes are.
const SECTOR: usize = 512;

/// What the guest reported before the power cut, and when it came.
struct PowerCut {
    console: String,
    lines: Vec<String>,
    boot_to_cut: Duration,
}

impl PowerCut {
    /// (offset, length) of the guest's `<marker><offset> <length>` lines.
    fn ranges(&self, marker: &str) -> Vec<(u64, u64)> {
        reported_ranges(&self.lines, marker)
    }
}

/// Images for one power-loss test, on a real disk under the build
/// directory: QEMU opens the pattern disk with O_DIRECT (cache=none),
/// which a tmpfs /tmp may refuse.
fn image_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("vm-powerloss-")
        .tempdir_in(bin_dir())
        .expect("temp dir for VM images")
}

/// The bytes the guest copies (its `hnd-pattern` disk), also kept here.
fn pattern_disk(dir: &Path) -> (PathBuf, Vec<u8>) {
    let bytes = pattern((GENERATIONS * REGION) as usize, 0x0901_55e5);
    let path = dir.join("pattern.img");
    fs::write(&path, &bytes).expect("write the pattern disk");
    (path, bytes)
}

fn empty_image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    fs::File::create(&path)
        .and_then(|f| f.set_len(size))
        .expect("create an image file");
    path
}

/// `VM-FLUSHED <offset> <length>`-style lines of the console.
fn reported_ranges(lines: &[String], marker: &str) -> Vec<(u64, u64)> {
    lines
        .iter()
        .filter_map(|line| line.split_once(marker).map(|(_, rest)| rest))
        .map(|rest| {
            let numbers: Vec<u64> = rest
                .split_whitespace()
                .map(|n| n.parse().expect("a number in a VM marker line"))
                .collect();
            assert_eq!(numbers.len(), 2, "bad marker line: {marker}{rest}");
            (numbers[0], numbers[1])
        })
        .collect()
}

/// SIGKILL to QEMU, whose pid it wrote to `pidfile`; checks first that
/// the pid is still QEMU's (never kill a recycled pid). tests/vm/run then
/// SIGKILLs the volatile disks' nbdkit, so their caches are lost too.
fn cut_power(pidfile: &Path) {
    let pid: i32 = fs::read_to_string(pidfile)
        .expect("QEMU's pidfile")
        .trim()
        .parse()
        .expect("a pid in QEMU's pidfile");
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert!(
        comm.starts_with("qemu"),
        "pid {pid} from {} is not QEMU any more ({comm:?}): it ended before the power cut",
        pidfile.display()
    );
    // SAFETY: kill(2) with a checked pid and a valid signal number.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(
        rc,
        0,
        "kill -KILL {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// Boots the VM on `scenario` with `disks` (tests/vm/run HND_VM_DISKS
/// entries), waits until the console has `cut_at.1` lines containing
/// `cut_at.0` (what the guest acknowledged so far), then cuts the power.
/// Panics (QEMU killed with its group by Proc) if the guest fails or
/// never gets there.
fn boot_and_cut_power(scenario: &str, disks: &[String], cut_at: (&str, usize)) -> PowerCut {
    boot_and_cut_power_with(scenario, disks, &[], None, cut_at)
}

/// [`boot_and_cut_power`] with more tests/vm/run `envs`, and `step`: once
/// a console line contains `step.0`, `step.1` runs (once) while the guest
/// goes on.
fn boot_and_cut_power_with(
    scenario: &str,
    disks: &[String],
    envs: &[(&str, &str)],
    mut step: Option<(&str, &mut dyn FnMut())>,
    cut_at: (&str, usize),
) -> PowerCut {
    let (marker, count) = cut_at;
    let _slot = vm_slot();
    let pid_dir = TempDir::new().expect("temp dir");
    let pidfile = pid_dir.path().join("qemu.pid");
    let mut cmd = Command::new(workspace_root().join("tests/vm/run"));
    cmd.arg(scenario)
        .env("HND_VM_TIMEOUT", "260")
        .env("HND_VM_DISKS", disks.join(" "))
        .env("HND_VM_PIDFILE", &pidfile)
        .envs(envs.iter().copied());
    let started = Instant::now();
    let mut vm = Proc::spawn("vm", cmd);
    let mut ended = false;
    let failed = |vm: &Proc| vm.output.contains("VM-RESULT: FAIL");
    wait_until(VM_TIMEOUT, || {
        if let Some((when, _)) = &step {
            if vm.output.contains(when) {
                let (_, run_step) = step.take().expect("a step");
                run_step();
            }
        }
        ended = vm.exited().is_some();
        ended || vm.output.count(marker) >= count || failed(&vm)
    });
    if ended || vm.output.count(marker) < count || failed(&vm) {
        vm.kill();
        panic!(
            "{scenario}: the guest failed or never acknowledged {count} `{marker}` lines \
             (ended: {ended}):\n{}",
            vm.output_when_closed()
        );
    }
    cut_power(&pidfile);
    let boot_to_cut = started.elapsed();
    let status = vm.wait_timeout(Duration::from_secs(60));
    let console = vm.output_when_closed();
    let Some(status) = status else {
        vm.kill();
        panic!("{scenario}: tests/vm/run did not end after the power cut:\n{console}");
    };
    assert!(
        status.success(),
        "{scenario}: tests/vm/run failed ({status}):\n{console}"
    );
    let lines: Vec<String> = console
        .lines()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect();
    assert!(
        !lines.iter().any(|l| l.contains("VM-DONE")),
        "{scenario}: the guest got to its clean end before the power cut:\n{console}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("VM-RESULT: FAIL")),
        "{scenario}: the guest failed:\n{console}"
    );
    PowerCut {
        console,
        lines,
        boot_to_cut,
    }
}

/// The two disks of a multihttp power-loss scenario: `data`, the "DRBD
/// device" the guest's http-disk-server serves, volatile (only what the
/// server's fdatasync flushed out of the disk's cache counts), and the
/// read-only pattern.
fn multihttp_disks(data: &Path, pattern: &Path) -> [String; 2] {
    [
        format!("hnd-data={}:volatile", data.display()),
        format!("hnd-pattern={}:ro", pattern.display()),
    ]
}

/// Bytes of `range` that `image` holds as the pattern has them, counted
/// in whole sectors.
fn bytes_found(image: &[u8], pattern: &[u8], (offset, length): (u64, u64)) -> u64 {
    let (start, end) = (offset as usize, (offset + length) as usize);
    let Some(held) = image.get(start..end) else {
        return 0;
    };
    held.chunks(SECTOR)
        .zip(pattern[start..end].chunks(SECTOR))
        .filter(|(held, wanted)| held == wanted)
        .map(|(held, _)| held.len() as u64)
        .sum()
}

/// Every byte of the `durable` ranges (the guest called them `what`)
/// must be in `image`; those of `maybe` are counted and reported, not
/// judged (a power cut may keep or lose them).
fn assert_survived(
    scenario: &str,
    cut: &PowerCut,
    (image, pattern): (&[u8], &[u8]),
    (what, durable): (&str, &[(u64, u64)]),
    maybe: &[(u64, u64)],
) {
    let total = |ranges: &[(u64, u64)]| ranges.iter().map(|r| r.1).sum::<u64>();
    let found = |ranges: &[(u64, u64)]| {
        ranges
            .iter()
            .map(|&r| bytes_found(image, pattern, r))
            .sum::<u64>()
    };
    let maybe_found = match maybe {
        [] => String::new(),
        _ => format!(
            "; acknowledged unflushed {} bytes, found {}",
            total(maybe),
            found(maybe)
        ),
    };
    println!(
        "{scenario}: power cut {:.1} s after start; {what} {} bytes in {} writes, found {}{maybe_found}",
        cut.boot_to_cut.as_secs_f64(),
        total(durable),
        durable.len(),
        found(durable),
    );
    let lost: Vec<((u64, u64), u64)> = durable
        .iter()
        .map(|&range| (range, bytes_found(image, pattern, range)))
        .filter(|&((_, length), found)| found != length)
        .collect();
    assert!(
        lost.is_empty(),
        "{scenario}: {} of {} {what} writes did not survive the power cut \
         ((offset, length), bytes found): {lost:?}\n{}",
        lost.len(),
        durable.len(),
        cut.console
    );
}

/// The flushed generations of `write_until_power_cut` (tests/vm/guest-test)
/// survived, the unflushed ones are reported.
fn assert_flushed_bytes_survived(scenario: &str, cut: &PowerCut, image: &[u8], pattern: &[u8]) {
    let flushed = cut.ranges("VM-FLUSHED ");
    assert_eq!(
        flushed.len(),
        FLUSHED_GENERATIONS,
        "{scenario}: the guest reported {} flushed generations:\n{}",
        flushed.len(),
        cut.console
    );
    let unflushed = cut.ranges("VM-UNFLUSHED ");
    assert_survived(
        scenario,
        cut,
        (image, pattern),
        ("flushed", &flushed),
        &unflushed,
    );
}

/// Runs a multihttp power-loss `scenario` (see [`boot_and_cut_power`]) and
/// returns what the guest reported, the data image after the cut, and
/// the pattern.
fn multihttp_power_cut(scenario: &str, cut_at: (&str, usize)) -> (PowerCut, Vec<u8>, Vec<u8>) {
    artifact("http-disk-server");
    artifact("libmultihttp.so");
    let dir = image_dir();
    let (pattern_path, pattern) = pattern_disk(dir.path());
    let data = empty_image(dir.path(), "data.img", 64 << 20);
    let cut = boot_and_cut_power(scenario, &multihttp_disks(&data, &pattern_path), cut_at);
    let image = fs::read(&data).expect("read the data image");
    (cut, image, pattern)
}

#[test]
fn flushed_writes_through_multihttp_survive_a_vm_power_cut() {
    let (cut, image, pattern) = multihttp_power_cut("powerloss-multihttp", ("VM-UNFLUSHED ", 1));
    assert_flushed_bytes_survived("powerloss-multihttp", &cut, &image, &pattern);
}

/// Must match tests/vm/guest-test: block b of `powerloss-noflush` is the
/// pattern's bytes [b*NOFLUSH_BLOCK, (b+1)*NOFLUSH_BLOCK) at the same
/// offset; the guest checks that nothing flushed after NOFLUSH_CHECKED.
const NOFLUSH_BLOCK: u64 = 4096;
const NOFLUSH_CHECKED: usize = 16;
/// Acknowledged blocks before the power cut: the guest is still writing
/// (up to 64 blocks) when it comes.
const NOFLUSH_CUT_AT: usize = NOFLUSH_CHECKED + 8;

/// Issue #19: XCP-ng's HA daemon writes its statefile with O_DIRECT and
/// never flushes. Through the wrapper with default settings, every write
/// the guest saw acknowledged must survive a power cut: the server synced
/// it before its reply (write-through). The guest checked that neither
/// its nbd device nor the server saw a flush.
///
/// The image is read here once QEMU and the disk's nbdkit are dead: a
/// restarted VM would see exactly that file, through a new nbdkit whose
/// cache starts empty, so this is what it would read (without another
/// boot of ~10 s under TCG).
#[test]
fn acknowledged_writes_of_a_client_that_never_flushes_survive_a_vm_power_cut() {
    let (cut, image, pattern) =
        multihttp_power_cut("powerloss-noflush", ("VM-ACKED ", NOFLUSH_CUT_AT));
    let acked = cut.ranges("VM-ACKED ");
    assert!(
        acked.len() >= NOFLUSH_CUT_AT,
        "powerloss-noflush: only {} acknowledged writes:\n{}",
        acked.len(),
        cut.console
    );
    for (b, range) in acked.iter().enumerate() {
        assert_eq!(
            *range,
            (b as u64 * NOFLUSH_BLOCK, NOFLUSH_BLOCK),
            "powerloss-noflush: acknowledged write {b} is not block {b}"
        );
    }
    assert_survived(
        "powerloss-noflush",
        &cut,
        (&image, &pattern),
        ("acknowledged", &acked),
        &[],
    );
}

#[test]
fn flushed_writes_through_sharded_on_ext4_survive_a_vm_power_cut() {
    artifact("libsharded.so");
    let dir = image_dir();
    let (pattern_path, pattern) = pattern_disk(dir.path());
    let fs_image = empty_image(dir.path(), "fs.img", 128 << 20);
    make_ext4(&fs_image);
    let cut = boot_and_cut_power(
        "powerloss-sharded",
        &[
            format!("hnd-fs={}:volatile", fs_image.display()),
            format!("hnd-pattern={}:ro", pattern_path.display()),
        ],
        ("VM-UNFLUSHED ", 1),
    );
    let image = read_sharded_disk_from_ext4(&fs_image, dir.path());
    assert_flushed_bytes_survived("powerloss-sharded", &cut, &image, &pattern);
}

/// Formats on the host, so the guest needs no mkfs. Inode tables and the
/// journal are written now, not lazily by the guest in the background.
fn make_ext4(image: &Path) {
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(image);
    run_ok(mkfs, Duration::from_secs(60));
}

/// Recovers the filesystem as a reboot would (journal replay, then the
/// free counts a crash leaves stale: `e2fsck -p`, which refuses anything
/// worse), copies the sharded directory out (debugfs: no mount, no root
/// needed), and reads the disk through the real plugin with nbdcopy.
fn read_sharded_disk_from_ext4(fs_image: &Path, work: &Path) -> Vec<u8> {
    let mut fsck = Command::new("e2fsck");
    fsck.arg("-fp").arg(fs_image);
    let fsck = run(fsck, Duration::from_secs(120));
    // 0: clean, 1: errors corrected; anything else is a damaged filesystem.
    assert!(
        matches!(fsck.status.code(), Some(0 | 1)),
        "e2fsck after the power cut: {}\n{}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let extracted = work.join("extracted");
    fs::create_dir(&extracted).expect("create the extraction directory");
    let mut debugfs = Command::new("debugfs");
    debugfs
        .arg("-R")
        .arg(format!("rdump /vol {}", extracted.display()))
        .arg(fs_image);
    run_ok(debugfs, Duration::from_secs(120));
    let dir = extracted.join("vol");
    assert!(
        dir.join("chunk-store.meta").exists(),
        "the sharded disk's metadata did not survive the power cut"
    );
    let nbdkit = Nbdkit::start(
        &["-r"],
        &artifact("libsharded.so"),
        &[&format!("dir={}", dir.display())],
    );
    let copy = work.join("sharded-disk.img");
    let mut nbdcopy = debian_tool("nbdcopy");
    nbdcopy.arg(nbdkit.uri()).arg(&copy);
    run_ok(nbdcopy, Duration::from_secs(120));
    fs::read(&copy).expect("read the copied sharded disk")
}

// --- Power loss under the s3 plugin's write-back cache (issue #23) -------

/// Must match tests/vm/guest-test: write n of the guest's model writer
/// fills 4 KiB block b of the first S3_BLOCKS with 256 copies of the 16
/// bytes `%07d %07d\n` (n, b).
const S3_BLOCK: usize = 4096;
const S3_BLOCKS: u64 = 128;
const S3_UNIT: usize = 16;
/// The writer's flushed writes (a flush every 16), before the unflushed.
const S3_FLUSHED: u64 = 96;
/// Unflushed writes acknowledged when the power is cut.
const S3_CUT_AT: usize = 4;
const S3_PREFIX: &str = "vol/";
/// With the store down, the writer's lease cannot be confirmed: its
/// writes go on for three quarters of this, then fail (the lease could
/// have expired). Ample for the guest's ~5 s of writes under TCG. The
/// replaying boot need not wait for it: the lease's owner ran on the
/// previous boot of the same host.
const S3_LEASE_TIME: &str = "90s";

/// The disk hnd-s3: the plugin keys the guest's s3 plugin gets, as the
/// guest reaches Garage (10.0.2.2 on QEMU's user network is this host's
/// loopback), one KEY=VALUE a line, NUL-padded to whole sectors.
fn s3_keys_disk(garage: &Garage, dir: &Path) -> PathBuf {
    let mut keys = [
        format!("endpoint=http://10.0.2.2:{}", garage.s3_port),
        format!("bucket={}", garage.bucket),
        format!("region={}", harness::garage::REGION),
        format!("prefix={S3_PREFIX}"),
        format!("access-key={}", garage.access_key),
        format!("secret-key={}", garage.secret_key),
        "size=4M".to_owned(),
        "chunk-size=64K".to_owned(),
        format!("lease-time={S3_LEASE_TIME}"),
    ]
    .join("\n")
    .into_bytes();
    keys.push(b'\n');
    keys.resize(keys.len().div_ceil(4096) * 4096, 0);
    let path = dir.join("s3-keys.img");
    fs::write(&path, keys).expect("write the keys disk");
    path
}

/// What the guest's model writer reported before the power cut
/// (`VM-I n block`, `VM-F n`), and how many writes it had acknowledged
/// without a flush (`VM-U n`).
fn s3_model_from_console(lines: &[String]) -> (WriteModel, usize) {
    let numbers = |line: &str, marker: &str| -> Option<Vec<u64>> {
        let (_, rest) = line.split_once(marker)?;
        Some(
            rest.split_whitespace()
                .map(|n| n.parse().expect("a number in a VM marker line"))
                .collect(),
        )
    };
    let mut model = WriteModel::default();
    let mut unflushed = 0;
    for line in lines {
        if let Some(w) = numbers(line, "VM-I ") {
            assert_eq!(w.len(), 2, "bad line: {line}");
            model.issue(w[0], w[1]);
        } else if let Some(w) = numbers(line, "VM-F ") {
            model.flush(w[0]);
        } else if numbers(line, "VM-U ").is_some() {
            unflushed += 1;
        }
    }
    (model, unflushed)
}

/// Checks the model writer's blocks of `disk`: each holds, whole, a write
/// issued to it, no older than its last flushed one. Returns the
/// problems, and how many blocks hold an unflushed write.
fn check_s3_model(disk: &[u8], model: &WriteModel) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut newer = 0;
    for block in 0..S3_BLOCKS {
        let bytes = &disk[block as usize * S3_BLOCK..(block as usize + 1) * S3_BLOCK];
        // 256 copies of the text `%07d %07d\n` (write number, block).
        let unit = &bytes[..S3_UNIT];
        let stamp = std::str::from_utf8(unit)
            .ok()
            .and_then(|u| u.strip_suffix('\n'))
            .and_then(|u| u.split_once(' '))
            .and_then(|(n, b)| Some((n.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .filter(|_| bytes.chunks(S3_UNIT).all(|c| c == unit));
        match model.check(block, bytes, stamp, model.flushed) {
            Ok(Held::Write(n)) if n > model.flushed => newer += 1,
            Ok(_) => {}
            Err(problem) => problems.push(problem),
        }
    }
    (problems, newer)
}

/// Issue #23: the s3 plugin's write-back cache on the guest's own disk,
/// its store on this host. The guest attaches the s3 plugin with
/// `cache-dir=` on an ext4 virtio disk with a volatile write cache; once
/// it is attached Garage is stopped (SIGKILL), so every write of the
/// guest's model writer lands only in the journal, made durable by the
/// flushes alone (fdatasync through ext4 and the virtio disk: background
/// writeback is off in the guest). The power cut (SIGKILL of QEMU and of
/// the disk's nbdkit) comes while it writes without flushing. Garage
/// started again, the store holds no chunk yet; a second boot on the
/// same disk (its kernel recovers ext4) starts the plugin on the same
/// cache-dir, which takes the lease of the previous boot's writer (same
/// host, booted since: known gone) and replays the journal before it
/// serves. The store, read without the cache, then holds every flushed
/// write or a later one in every block, whole, nothing older.
#[test]
fn flushed_writes_in_the_s3_cache_on_the_guests_disk_survive_a_vm_power_cut() {
    artifact("libs3.so");
    let mut garage = Garage::start();
    let dir = image_dir();
    let fs_image = empty_image(dir.path(), "fs.img", 64 << 20);
    make_ext4(&fs_image);
    let keys = s3_keys_disk(&garage, dir.path());
    let keys_disk = format!("hnd-s3={}:ro", keys.display());
    let mut stopped = false;
    let mut stop_store = || {
        garage.stop();
        stopped = true;
    };
    let cut = boot_and_cut_power_with(
        "powerloss-s3-cache",
        &[
            format!("hnd-fs={}:volatile", fs_image.display()),
            keys_disk.clone(),
        ],
        &[("HND_VM_NET", "user")],
        Some(("VM-S3-ATTACHED", &mut stop_store)),
        ("VM-U ", S3_CUT_AT),
    );
    assert!(stopped, "the store was never stopped:\n{}", cut.console);
    let (model, unflushed) = s3_model_from_console(&cut.lines);
    assert_eq!(
        model.flushed, S3_FLUSHED,
        "the guest did not report its flushes:\n{}",
        cut.console
    );
    garage.start_again();
    let chunks: Vec<String> = garage
        .objects(S3_PREFIX)
        .into_iter()
        .filter(|k| k.contains("/chunks/"))
        .collect();
    assert!(
        chunks.is_empty(),
        "chunks reached the store while it was down: {chunks:?}"
    );

    let disks = format!("hnd-fs={} {keys_disk}", fs_image.display());
    let (code, lines) = run_vm(
        "powerloss-s3-cache-replay",
        &[
            ("HND_VM_DISKS", OsStr::new(&disks)),
            ("HND_VM_NET", OsStr::new("user")),
        ],
    );
    let replay_console = lines.join("\n");
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("VM-RESULT: PASS powerloss-s3-cache-replay")),
        "the replaying boot failed:\n{replay_console}"
    );
    assert_eq!(code, Some(0), "tests/vm/run failed:\n{replay_console}");

    let store = Nbdkit::start(
        &["-r"],
        &artifact("libs3.so"),
        &garage
            .read_only_params(S3_PREFIX)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let dump = dir.path().join("store.img");
    nbdsh(
        &store.uri(),
        &format!(
            "open({:?}, 'wb').write(h.pread({}, 0))",
            dump.display().to_string(),
            S3_BLOCKS as usize * S3_BLOCK
        ),
    );
    drop(store);
    let disk = fs::read(&dump).expect("read the store's dump");
    let (problems, newer) = check_s3_model(&disk, &model);
    let writes = model.writes();
    println!(
        "powerloss-s3-cache: power cut {:.1} s after start; {} writes, {} flushed, {} acknowledged \
         unflushed; {} blocks hold an unflushed write",
        cut.boot_to_cut.as_secs_f64(),
        writes,
        model.flushed,
        unflushed,
        newer
    );
    assert!(
        problems.is_empty(),
        "powerloss-s3-cache: {} of {S3_BLOCKS} blocks wrong in the store after the replay: {:#?}\n\
         --- the writing boot:\n{}\n--- the replaying boot:\n{replay_console}",
        problems.len(),
        problems,
        cut.console
    );
    assert!(
        replay_console.contains("replaying the journal"),
        "the second boot did not replay the journal:\n{replay_console}"
    );
}
