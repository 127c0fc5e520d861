//! The request fuzzer's bounded run, for `cargo test` (and so CI): the
//! checks of the libFuzzer targets in `http-disk-server/fuzz/` (that
//! crate's `src/lib.rs`, included below as a module, so both runs assert
//! exactly the same invariants) applied to
//! - every seed and every saved regression input (`fuzz/seeds/`,
//!   `fuzz/regressions/`),
//! - a fixed number of requests made by a deterministic generator: well-
//!   formed requests of the disk protocol whose numbers, units, framings
//!   and bodies are drawn around every edge the server has (disk end,
//!   `--max-request-size`, u64 overflow, conflicting lengths, chunk
//!   extensions, 100-continue...), then a few random byte mutations;
//! - a fixed number of chunked bodies, made and mutated the same way, for
//!   the chunked decoder's own check.
//!
//! libFuzzer finds new paths by coverage; this run cannot, but it is
//! repeatable, needs no nightly features, and takes seconds. The long
//! coverage-guided run and its result are in RELIABILITY.md; how to run
//! it: `fuzz/README.md`.
//!
//! A failing input is printed escaped and written to
//! `target/request-fuzz-failure.bin`, which `cargo fuzz run <target> FILE`
//! replays.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod invariants;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Fixed, so every run tries the same inputs; change it to explore more.
const SEED: u64 = 0x5eed_0fd1_5c00;
/// Generated inputs per check, and a bound on the time spent on them
/// (a debug build on a loaded machine stops early and says so).
const HEAD_RUNS: usize = 1_000_000;
const HANDLING_RUNS: usize = 500_000;
const CHUNKED_RUNS: usize = 200_000;
const TIME_CAP: Duration = Duration::from_secs(40);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The committed inputs: hand-written seeds and saved regressions.
fn saved_inputs() -> Vec<(PathBuf, Vec<u8>)> {
    let mut inputs = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            inputs.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    inputs.sort();
    assert!(
        inputs.len() >= 10,
        "seed inputs missing in {:?}",
        fuzz_dir()
    );
    inputs
}

/// Runs `check` on `input`; on a panic, saves the input and fails with it.
fn run_check(name: &str, check: fn(&[u8]), input: &[u8]) {
    if std::panic::catch_unwind(|| check(input)).is_err() {
        let saved =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/request-fuzz-failure.bin");
        let _ = std::fs::write(&saved, input);
        panic!(
            "{name} failed on {:?} (saved to {})",
            String::from_utf8_lossy(input),
            saved.display()
        );
    }
}

#[test]
fn saved_inputs_pass_both_checks() {
    for (path, input) in saved_inputs() {
        eprintln!("{}", path.display());
        run_check("check_head", invariants::check_head, &input);
        run_check("check_handling", invariants::check_handling, &input);
    }
}

#[test]
fn generated_requests_pass_the_head_checks() {
    let ran = generate_and_check("check_head", invariants::check_head, HEAD_RUNS, 1);
    assert!(ran >= 1000, "only {ran} inputs in {TIME_CAP:?}");
}

#[test]
fn generated_requests_pass_the_handling_checks() {
    let ran = generate_and_check(
        "check_handling",
        invariants::check_handling,
        HANDLING_RUNS,
        2,
    );
    assert!(ran >= 1000, "only {ran} inputs in {TIME_CAP:?}");
}

#[test]
fn generated_chunked_bodies_pass_the_chunked_checks() {
    let mut rng = Rng::new(SEED ^ 3);
    let started = Instant::now();
    let mut run = 0;
    while run < CHUNKED_RUNS && started.elapsed() < TIME_CAP {
        // The two control bytes of `check_chunked`: limit, piece size.
        let mut input = vec![rng.below(256) as u8, rng.below(256) as u8];
        let longest = if rng.one_in(4) { 5000 } else { 40 };
        let len = rng.below(longest);
        let body: Vec<u8> = (0..len).map(|_| *rng.pick(b"\r\n0aZ;\x00")).collect();
        input.extend(chunked_body(&mut rng, &body));
        run_check(
            "check_chunked",
            invariants::check_chunked,
            &mutate(&mut rng, input),
        );
        run += 1;
    }
    eprintln!("check_chunked: {run} inputs in {:?}", started.elapsed());
    assert!(run >= 1000, "only {run} inputs in {TIME_CAP:?}");
}

/// Runs `check` on `runs` generated inputs (fewer if [`TIME_CAP`] passes
/// first) and returns how many it ran.
fn generate_and_check(name: &str, check: fn(&[u8]), runs: usize, stream: u64) -> usize {
    let mut rng = Rng::new(SEED ^ stream);
    let seeds: Vec<Vec<u8>> = saved_inputs().into_iter().map(|(_, i)| i).collect();
    let started = Instant::now();
    for run in 0..runs {
        if started.elapsed() > TIME_CAP {
            eprintln!("{name}: time cap reached after {run} of {runs} inputs");
            return run;
        }
        let input = if rng.one_in(8) {
            rng.pick(&seeds).clone()
        } else {
            request(&mut rng)
        };
        let input = mutate(&mut rng, input);
        run_check(name, check, &input);
    }
    eprintln!("{name}: {runs} inputs in {:?}", started.elapsed());
    runs
}

// --------------------------------------------------------------- generator

/// xorshift64*: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A byte count as a client might write it: mostly near an edge of the
/// 8 KiB test disk or of u64, sometimes not a valid count at all.
fn number(rng: &mut Rng) -> String {
    const EDGES: [u64; 12] = [
        0,
        1,
        2,
        9,
        4095,
        4096,
        4097,
        8190,
        8191,
        8192,
        8193,
        u64::MAX,
    ];
    const ODD: [&str; 9] = [
        "18446744073709551616",
        "007",
        "+1",
        "-1",
        "0x10",
        "1e3",
        "",
        " 5",
        "1 2",
    ];
    match rng.below(10) {
        0..=5 => rng.pick(&EDGES).to_string(),
        6 | 7 => rng.below(9000).to_string(),
        8 => rng.next().to_string(),
        _ => rng.pick(&ODD).to_string(),
    }
}

fn unit(rng: &mut Rng, separator: &str) -> String {
    match rng.below(12) {
        0 => format!("BYTES{separator}"),
        1 => "items=".into(),
        2 => "bytes".into(),
        3 => format!("bytes{separator}{separator}"),
        4 => " bytes=".into(),
        _ => format!("bytes{separator}"),
    }
}

/// A `Range` / `X-Disk-Range` value.
fn range_value(rng: &mut Rng) -> String {
    let (a, b) = (number(rng), number(rng));
    let spec = match rng.below(8) {
        0 => format!("{a}-"),
        1 => format!("-{b}"),
        2 => format!("{a}-{b},{}-{}", number(rng), number(rng)),
        3 => format!(" {a} - {b} "),
        4 => "-".into(),
        5 => format!("{a}--{b}"),
        _ => format!("{a}-{b}"),
    };
    format!("{}{spec}", unit(rng, "="))
}

/// A `Content-Range` value, usually of a range inside the disk.
fn content_range_value(rng: &mut Rng, start: u64, last: u64) -> String {
    let total = match rng.below(8) {
        0 => "*".to_owned(),
        1 => "8192".into(),
        2 => "-2".into(),
        3 => number(rng),
        _ => "-1".into(),
    };
    let range = match rng.below(6) {
        0 => format!("{}-{}", number(rng), number(rng)),
        1 => "*".into(),
        _ => format!("{start}-{last}"),
    };
    format!("{}{range}/{total}", unit(rng, " "))
}

/// A request of the disk protocol with its headers drawn around the
/// server's edges. PUTs usually carry a coherent range, length and body,
/// so that accepted writes (and what they wrote) are checked often.
fn request(rng: &mut Rng) -> Vec<u8> {
    let method = *rng.pick(&[
        "GET", "HEAD", "PUT", "PUT", "PUT", "POST", "POST", "OPTIONS", "get",
    ]);
    let version = *rng.pick(&[
        "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x",
    ]);
    let eol = if rng.one_in(10) { "\n" } else { "\r\n" };
    let longest = if rng.one_in(2) { 16 } else { 4200 };
    let len = 1 + rng.below(longest) as u64;
    let size = invariants::DISK_SIZE;
    // Writes ending on the disk's last byte, or one past it, are common.
    let start = match rng.below(4) {
        0 => size.saturating_sub(len),
        1 => size + 1 - len.min(size),
        _ => rng.below(size as usize + 100) as u64,
    };
    let last = start + len - 1;
    let mut headers: Vec<(String, String)> = Vec::new();
    let chunked = method == "PUT" && rng.one_in(3);
    match method {
        "PUT" => {
            let value = content_range_value(rng, start, last);
            headers.push(("Content-Range".into(), value));
            if chunked {
                headers.push(("Transfer-Encoding".into(), "chunked".into()));
            } else {
                let declared = match rng.below(6) {
                    0 => number(rng),
                    1 => format!("{len}, {len}"),
                    _ => len.to_string(),
                };
                headers.push(("Content-Length".into(), declared));
            }
        }
        "POST" => {
            let op = *rng.pick(&["zero", "trim", "flush", "TRIM", " zero ", "erase", ""]);
            headers.push(("X-Disk-Op".into(), op.into()));
            headers.push(("X-Disk-Range".into(), range_value(rng)));
        }
        _ => {
            if !rng.one_in(4) {
                headers.push(("Range".into(), range_value(rng)));
            }
        }
    }
    for _ in 0..rng.below(4) {
        headers.push(extra_header(rng));
    }
    if headers.len() > 1 && rng.one_in(6) {
        let i = rng.below(headers.len());
        let j = rng.below(headers.len());
        headers.swap(i, j);
    }
    let mut out = Vec::new();
    if rng.one_in(20) {
        out.extend_from_slice(eol.as_bytes());
    }
    out.extend_from_slice(format!("{method} / {version}{eol}").as_bytes());
    for (name, value) in &headers {
        out.extend_from_slice(format!("{name}: {value}{eol}").as_bytes());
    }
    out.extend_from_slice(eol.as_bytes());
    if method == "PUT" {
        let body_len = match rng.below(8) {
            0 => len + 1,
            1 => len - 1,
            _ => len,
        };
        let body: Vec<u8> = (0..body_len).map(|_| rng.next() as u8).collect();
        if chunked {
            out.extend(chunked_body(rng, &body));
        } else {
            out.extend(body);
        }
    }
    out
}

/// A header the server looks at (or ignores), with a value near its rules.
fn extra_header(rng: &mut Rng) -> (String, String) {
    let (name, value) = match rng.below(10) {
        0 => ("Content-Length", number(rng)),
        1 => (
            "Transfer-Encoding",
            rng.pick(&["chunked", "gzip, chunked", " CHUNKED "])
                .to_string(),
        ),
        2 => (
            "Expect",
            rng.pick(&["100-continue", "100-Continue", "200-ok"])
                .to_string(),
        ),
        3 => (
            "Connection",
            rng.pick(&["close", "keep-alive", "Keep-Alive, close"])
                .to_string(),
        ),
        4 => (
            "X-Disk-Writeback",
            rng.pick(&["0", "1", "2", "", " 1 "]).to_string(),
        ),
        5 => ("X-Disk-May-Trim", rng.pick(&["0", "1", "yes"]).to_string()),
        6 => ("Range", range_value(rng)),
        7 => ("Content-Range", content_range_value(rng, 0, 0)),
        8 => ("Host", "127.0.0.1:8000".to_owned()),
        _ => ("X-Other", "a\tb".to_owned()),
    };
    (name.to_owned(), value)
}

/// `body` as chunked transfer coding, in random pieces, sometimes with
/// extensions, an upper-case size, a trailer, or a size that lies.
fn chunked_body(rng: &mut Rng, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let take = 1 + rng.below(rest.len());
        let (piece, tail) = rest.split_at(take);
        let size = match rng.below(12) {
            0 => format!("{:X}", take),
            1 => format!("{:x};ext=1", take),
            2 => format!("{:x}", take + 1),
            _ => format!("{:x}", take),
        };
        out.extend_from_slice(format!("{size}\r\n").as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
        rest = tail;
    }
    out.extend_from_slice(b"0\r\n");
    if rng.one_in(4) {
        out.extend_from_slice(b"Trailer: x\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A few random byte edits, half of the time: what turns well-formed
/// requests into the odd ones the parser must refuse cleanly.
fn mutate(rng: &mut Rng, mut input: Vec<u8>) -> Vec<u8> {
    const BYTES: &[u8] = b"\0\t\r\n -,/=*:;09aA\x7f\xff";
    if rng.one_in(2) || input.is_empty() {
        return input;
    }
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(input.len().max(1));
        match rng.below(4) {
            0 if !input.is_empty() => input[at] = *rng.pick(BYTES),
            1 => input.insert(at.min(input.len()), *rng.pick(BYTES)),
            2 if !input.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(input.len());
                input.drain(at..end);
            }
            _ => {
                let end = (at + 1 + rng.below(16)).min(input.len());
                let copy = input[at.min(end)..end].to_vec();
                let to = rng.below(input.len() + 1);
                input.splice(to..to, copy);
            }
        }
    }
    input
}
