//! What a model writer reported (write `n` issued to block `b`, flushes),
//! and the check of one block of the disk against it: the crash tests of
//! s3's write-back cache (`s3_cache.rs`, SIGKILL; `vm.rs`, power cut)
//! both hold their disks to it.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct WriteModel {
    /// Write numbers issued per block, ascending.
    issued: HashMap<u64, Vec<u64>>,
    /// The newest write issued, and the newest a flush covered.
    pub last_issued: u64,
    pub flushed: u64,
}

/// What a block holds, when it checks out.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    Zeros,
    Write(u64),
}

impl WriteModel {
    pub fn issue(&mut self, n: u64, block: u64) {
        self.issued.entry(block).or_default().push(n);
        self.last_issued = self.last_issued.max(n);
    }

    pub fn flush(&mut self, n: u64) {
        self.flushed = self.flushed.max(n);
    }

    /// Every write before the newest was acknowledged (the writer issues
    /// one at a time).
    pub fn acknowledged(&self) -> u64 {
        self.last_issued.saturating_sub(1)
    }

    pub fn writes(&self) -> usize {
        self.issued.values().map(Vec::len).sum()
    }

    /// The oldest write `block` may hold: its newest one at or before
    /// `upto` (0: none, zeros allowed).
    pub fn floor(&self, block: u64, upto: u64) -> u64 {
        self.issued
            .get(&block)
            .and_then(|ns| ns.iter().copied().filter(|&n| n <= upto).max())
            .unwrap_or(0)
    }

    /// Checks `block`'s bytes: zeros only if no write to it at or before
    /// `upto`; else `stamp` (the write number and block its bytes name,
    /// `None` when they are torn or foreign) must be a write issued to
    /// this block, no older than that one.
    pub fn check(
        &self,
        block: u64,
        bytes: &[u8],
        stamp: Option<(u64, u64)>,
        upto: u64,
    ) -> Result<Held, String> {
        let floor = self.floor(block, upto);
        if bytes.iter().all(|&b| b == 0) {
            return match floor {
                0 => Ok(Held::Zeros),
                _ => Err(format!(
                    "block {block} is zeros, but write {floor} to it must be there"
                )),
            };
        }
        let Some((n, stamped)) = stamp else {
            return Err(format!(
                "block {block} is torn or foreign: {:02x?}",
                &bytes[..16]
            ));
        };
        if stamped != block || !self.issued.get(&block).is_some_and(|ns| ns.contains(&n)) {
            return Err(format!(
                "block {block} holds write {n} of block {stamped}, never issued to it"
            ));
        }
        if n < floor {
            return Err(format!(
                "block {block} holds write {n}, older than write {floor}, which must be there"
            ));
        }
        Ok(Held::Write(n))
    }
}
