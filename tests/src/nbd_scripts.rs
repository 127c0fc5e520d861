//! nbdsh snippets shared by the end-to-end tests of several plugins.

/// A Python model of the disk checked against the export (`h`) after 400
/// random unaligned writes (some all-zero, some FUA), zeroes and trims that
/// cross chunk boundaries; then the whole export is compared with the
/// model, which is saved to the file named by the Python variable `OUT`.
/// Needs `import nbd` and `OUT` defined before it. Prints `model ok`.
pub const MODEL_CHECK: &str = r#"
import random
rng = random.Random(1234)
size = h.get_size()
model = bytearray(size)
for step in range(400):
    off = rng.randrange(size)
    n = rng.randrange(1, min(size - off, 200000) + 1)
    op = rng.randrange(4)
    if op < 2:
        data = bytes([rng.randrange(1, 256)]) * n if rng.randrange(3) else bytes(n)
        h.pwrite(data, off, nbd.CMD_FLAG_FUA if rng.randrange(2) else 0)
        model[off:off + n] = data
    elif op == 2 and n <= 0xffffffff:
        h.zero(n, off)
        model[off:off + n] = bytes(n)
    else:
        h.trim(n, off)
        model[off:off + n] = bytes(n)
h.flush()
got = b''.join(h.pread(min(1 << 20, size - o), o) for o in range(0, size, 1 << 20))
assert got == bytes(model), 'export differs from the model'
open(OUT, 'wb').write(model)
print('model ok')
"#;

/// An nbdsh script that runs `changes` (Python statements) in order and
/// prints `count N` before the first and after each one, N being what the
/// Python function `count()` (defined by `count_def`) returns then. Each
/// count is taken right after that change's NBD reply and before the next
/// request: e.g. how many syncs a server had made by the time the client
/// saw a write acknowledged. Read them back with [`printed_counts`].
pub fn counted_after_each(count_def: &str, changes: &[&str]) -> String {
    let mut script = format!("{count_def}\nprint('count', count())\n");
    for change in changes {
        script.push_str(change);
        script.push_str("\nprint('count', count())\n");
    }
    script
}

/// The counts a [`counted_after_each`] script printed, in order.
pub fn printed_counts(output: &str) -> Vec<usize> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("count "))
        .map(|n| n.trim().parse().expect("a count"))
        .collect()
}

/// Python: `stop_for_sure(pid)` sends SIGSTOP and returns once the process
/// is stopped (state `T`), at most 5 s later: a loaded machine may deliver
/// the signal late, and a request sent meanwhile would still be served.
/// Needs `import os, signal, time` before it.
pub const STOP_FOR_SURE: &str = "\
def stop_for_sure(pid):
    os.kill(pid, signal.SIGSTOP)
    for _ in range(5000):
        if open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()[0] == 'T':
            return
        time.sleep(0.001)
    raise AssertionError('process %d did not stop' % pid)
";
