//! Progress on stderr while a run goes: step number, estimated total,
//! what is running and its figure.

use std::io::Write;
use std::time::Instant;

pub struct Progress {
    step: usize,
    total: usize,
    started: Instant,
}

impl Progress {
    /// `total` is an estimate of the steps (runs) to come.
    pub fn new(total: usize) -> Progress {
        Progress {
            step: 0,
            total,
            started: Instant::now(),
        }
    }

    pub fn start(&mut self, what: &str) {
        self.step += 1;
        self.total = self.total.max(self.step);
        eprint!(
            "[{:>3}/{} {:>4}s] {what} ... ",
            self.step,
            self.total,
            self.started.elapsed().as_secs()
        );
        let _ = std::io::stderr().flush();
    }

    pub fn done(&mut self, figure: &str) {
        eprintln!("{figure}");
    }

    /// A planned step that will not run (counted so the total stays true).
    pub fn skip(&mut self) {
        self.step += 1;
    }

    pub fn note(&mut self, line: &str) {
        eprintln!("      {line}");
    }
}
