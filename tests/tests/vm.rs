//! The kernel attach path, proven in a VM: this machine's kernel has no
//! nbd driver, so `tests/vm/run` boots Debian's kernel under QEMU (TCG)
//! with an initramfs of this host's binaries and the installed project,
//! and runs `tests/vm/guest-test` there (real nbd.ko, real nbd-client,
//! real loop device, real http-disk-server and multihttp plugin).
//! The guest prints `VM-RESULT: PASS|FAIL <scenario>`; this test asserts it.
//!
//! Needs: qemu-system-x86, busybox-static, cpio (scripts/install-deps), the
//! release build, and apt access once to fetch the kernel (cached in
//! /var/cache/http-nbd-transfer/vm-kernel).
//! Run: `cargo test --release -p integration-tests --test vm`

use std::process::Command;
use std::time::Duration;

use harness::{artifact, workspace_root, Proc};

/// Boot + both scenarios take ~30 s here; TCG on a loaded CI host is
/// slower. QEMU itself is also bounded inside tests/vm/run.
const VM_TIMEOUT: Duration = Duration::from_secs(280);

fn run_vm(scenarios: &str) -> (Option<i32>, Vec<String>) {
    let mut cmd = Command::new(workspace_root().join("tests/vm/run"));
    cmd.arg(scenarios).env("HND_VM_TIMEOUT", "260");
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

#[test]
fn kernel_attach_failover_and_concurrent_wrappers_in_a_vm() {
    artifact("http-disk-server");
    artifact("libmultihttp.so");
    let (code, lines) = run_vm("concurrent,failover");
    let console = lines.join("\n");
    for scenario in ["concurrent", "failover"] {
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
