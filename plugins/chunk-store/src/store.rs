//! The disk over a backend: byte ranges split into chunk parts, per-chunk
//! locks, read-modify-write where the backend needs it (concurrent partial
//! writes into one chunk combined: `coalesce`), sparse zero/trim and
//! extents.

use std::collections::HashSet;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use lock_ext::RwLockIgnoringPoison;

use crate::backend::ChunkBackend;
use crate::coalesce::{self, Coalescer, Part};
use crate::error::StoreError;
use crate::geometry::{ChunkSpan, Geometry};

/// Lock stripes: a chunk's lock is `locks[index % LOCK_STRIPES]`. Requests
/// on one chunk are serialized correctly; requests on different chunks
/// collide only when their indices share a stripe (1 in 1024).
const LOCK_STRIPES: u64 = 1024;

/// Largest batch of whole chunks deleted at once by `zero` (S3's
/// DeleteObjects takes up to 1000 keys); below LOCK_STRIPES, so the chunks
/// of one batch never share a lock stripe.
const DELETE_BATCH: usize = 1000;

/// A run of the disk for the extents callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    /// A hole that reads as zeros (else data).
    pub hole: bool,
}

pub struct ChunkStore<B> {
    geometry: Geometry,
    backend: B,
    locks: Vec<RwLock<()>>,
    /// Partial writes waiting for their chunk (whole-chunk backends).
    pending: Coalescer,
}

pub(crate) fn is_zero(data: &[u8]) -> bool {
    // Word-at-a-time would be faster; this is already far cheaper than
    // the I/O it can save.
    data.iter().all(|&b| b == 0)
}

impl<B: ChunkBackend> ChunkStore<B> {
    pub fn new(geometry: Geometry, backend: B) -> ChunkStore<B> {
        ChunkStore {
            geometry,
            backend,
            locks: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            pending: Coalescer::default(),
        }
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn shared(&self, index: u64) -> RwLockReadGuard<'_, ()> {
        // A panic under a lock (turned into EIO by the plugin glue) leaves
        // no half-updated state in the lock itself: ignore the poison.
        self.locks[(index % LOCK_STRIPES) as usize].read_ignoring_poison()
    }

    fn exclusive(&self, index: u64) -> RwLockWriteGuard<'_, ()> {
        self.locks[(index % LOCK_STRIPES) as usize].write_ignoring_poison()
    }

    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), StoreError> {
        self.geometry.check(offset, buf.len() as u64)?;
        for span in self.geometry.spans(offset, buf.len() as u64) {
            let part = &mut buf[span.buf_offset as usize..(span.buf_offset + span.len) as usize];
            let _lock = self.shared(span.index);
            if !self.backend.read(span.index, span.offset, part)? {
                part.fill(0);
            }
        }
        Ok(())
    }

    pub fn write(&self, data: &[u8], offset: u64, fua: bool) -> Result<(), StoreError> {
        self.geometry.check(offset, data.len() as u64)?;
        let chunk_size = self.geometry.chunk_size();
        for span in self.geometry.spans(offset, data.len() as u64) {
            let part = &data[span.buf_offset as usize..(span.buf_offset + span.len) as usize];
            if !span.is_whole(chunk_size) && !self.backend.partial_writes() {
                // Zeros included: the chunk is deleted if it ends up all zeros.
                self.pending
                    .write(span.index, span.offset, part, fua, |parts| {
                        self.store_parts(span.index, parts)
                    })?;
                continue;
            }
            let _lock = self.exclusive(span.index);
            if is_zero(part) {
                // Zeros never allocate: delete or punch instead.
                self.zero_span(&span, fua)?;
            } else {
                self.backend.write(span.index, span.offset, part, fua)?;
            }
        }
        Ok(())
    }

    /// Stores a batch of partial writes into chunk `index` (whole-chunk
    /// backends): one read of the chunk, none when the parts cover it,
    /// then one write.
    fn store_parts(&self, index: u64, parts: &[Part]) -> Result<(), StoreError> {
        let _lock = self.exclusive(index);
        let fua = parts.iter().any(|p| p.fua);
        let covered = coalesce::cover(parts, self.geometry.chunk_size());
        self.rewrite_chunk(index, fua, !covered, |chunk| {
            for part in parts {
                let start = part.offset as usize;
                chunk[start..start + part.data.len()].copy_from_slice(&part.data);
            }
        })
    }

    /// Zeroes a range: whole chunks are deleted, partial ones zeroed in
    /// place (hole-punched where the backend can). Trim is the same: a
    /// trimmed range reads back as zeros, which NBD allows and clients like.
    pub fn zero(&self, offset: u64, len: u64, fua: bool) -> Result<(), StoreError> {
        self.geometry.check(offset, len)?;
        let chunk_size = self.geometry.chunk_size();
        let mut whole: Vec<u64> = Vec::new();
        for span in self.geometry.spans(offset, len) {
            if span.is_whole(chunk_size) {
                whole.push(span.index);
                if whole.len() == DELETE_BATCH {
                    self.delete_batch(&whole, fua)?;
                    whole.clear();
                }
                continue;
            }
            let _lock = self.exclusive(span.index);
            self.zero_span(&span, fua)?;
        }
        if !whole.is_empty() {
            self.delete_batch(&whole, fua)?;
        }
        Ok(())
    }

    /// Deletes whole chunks (fewer than LOCK_STRIPES, so each has its own
    /// stripe) under all their locks, taken in stripe order so two batches
    /// can never wait on each other in a cycle.
    fn delete_batch(&self, indices: &[u64], fua: bool) -> Result<(), StoreError> {
        let mut stripes: Vec<u64> = indices.iter().map(|i| i % LOCK_STRIPES).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let _locks: Vec<_> = stripes
            .iter()
            .map(|&stripe| self.exclusive(stripe))
            .collect();
        self.backend.delete_many(indices, fua)
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.backend.flush()
    }

    /// Called with the chunk's exclusive lock held.
    fn zero_span(&self, span: &ChunkSpan, fua: bool) -> Result<(), StoreError> {
        if span.is_whole(self.geometry.chunk_size()) {
            return self.backend.delete(span.index, fua);
        }
        if self.backend.existing(span.index, span.index)?.is_empty() {
            return Ok(()); // Missing chunk: already zeros.
        }
        if self.backend.partial_writes() {
            self.backend
                .zero_part(span.index, span.offset, span.len, fua)
        } else {
            let range = span.offset as usize..(span.offset + span.len) as usize;
            self.rewrite_chunk(span.index, fua, true, |chunk| chunk[range].fill(0))
        }
    }

    /// Whole-chunk update for backends without partial writes: the chunk
    /// read (unless `read_first` is false: every byte will be changed),
    /// changed, and written back, or deleted if it ends up all zeros.
    /// Called with the chunk's exclusive lock held.
    fn rewrite_chunk(
        &self,
        index: u64,
        fua: bool,
        read_first: bool,
        change: impl FnOnce(&mut [u8]),
    ) -> Result<(), StoreError> {
        let mut chunk = vec![0u8; self.geometry.chunk_size() as usize];
        if read_first && !self.backend.read(index, 0, &mut chunk)? {
            chunk.fill(0);
        }
        change(&mut chunk);
        if is_zero(&chunk) {
            self.backend.delete(index, fua)
        } else {
            self.backend.write(index, 0, &chunk, fua)
        }
    }

    /// Data and holes over `len` bytes at `offset`, ascending, contiguous,
    /// adjacent runs of one kind merged. Missing chunks are holes.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, StoreError> {
        self.geometry.check(offset, len)?;
        let mut extents: Vec<Extent> = Vec::new();
        if len == 0 {
            return Ok(extents);
        }
        let chunk_size = self.geometry.chunk_size();
        let first = offset / chunk_size;
        let last = (offset + len - 1) / chunk_size;
        let existing: HashSet<u64> = self.backend.existing(first, last)?.into_iter().collect();
        let mut push = |offset: u64, len: u64, hole: bool| match extents.last_mut() {
            Some(prev) if prev.hole == hole && prev.offset + prev.len == offset => prev.len += len,
            _ => extents.push(Extent { offset, len, hole }),
        };
        for span in self.geometry.spans(offset, len) {
            let base = span.index * chunk_size;
            if !existing.contains(&span.index) {
                push(base + span.offset, span.len, true);
                continue;
            }
            let layout = {
                let _lock = self.shared(span.index);
                self.backend.layout(span.index, span.offset, span.len)?
            };
            // Trust but verify: a layout that does not tile the span exactly
            // is reported as data (the safe answer) rather than passed on.
            let tiles = layout.iter().map(|e| e.len).sum::<u64>() == span.len
                && layout.first().is_some_and(|e| e.offset == span.offset);
            if tiles {
                for e in layout {
                    push(base + e.offset, e.len, !e.data);
                }
            } else {
                push(base + span.offset, span.len, false);
            }
        }
        Ok(extents)
    }
}
