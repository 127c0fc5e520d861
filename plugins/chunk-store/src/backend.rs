//! The one thing a storage backend implements: chunk-level operations.
//! Everything about byte ranges, locking and sparseness lives in the store.

use crate::error::StoreError;

/// A run inside one chunk: `len` bytes at `offset` (chunk-relative), data
/// or a hole that reads as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkExtent {
    pub offset: u64,
    pub len: u64,
    pub data: bool,
}

/// Chunk storage: files in a directory, objects in a bucket...
///
/// Chunks are numbered from 0; each is `chunk_size` bytes long (the store
/// knows the size; backends get offsets and lengths inside a chunk). A
/// chunk that does not exist reads as zeros. The store calls these methods
/// with the chunk's lock held (shared for `read`, exclusive for the rest),
/// so a backend never sees two conflicting calls on one chunk at once;
/// calls on different chunks come in parallel from many threads.
pub trait ChunkBackend: Send + Sync {
    /// Fills `buf` from `offset` inside chunk `index`. Returns `false`,
    /// leaving `buf` as it is, when the chunk does not exist.
    fn read(&self, index: u64, offset: u64, buf: &mut [u8]) -> Result<bool, StoreError>;

    /// Writes `data` at `offset` inside chunk `index`, creating the chunk
    /// (zeros elsewhere) if needed. When [`ChunkBackend::partial_writes`] is
    /// false the store only ever writes whole chunks (offset 0, full
    /// length). `fua`: durable before returning.
    fn write(&self, index: u64, offset: u64, data: &[u8], fua: bool) -> Result<(), StoreError>;

    /// Removes chunk `index` (absent already is fine): it reads as zeros.
    fn delete(&self, index: u64, fua: bool) -> Result<(), StoreError>;

    /// Removes several chunks at once (object stores: one batched request
    /// instead of one per chunk). The store holds all their locks.
    /// Default: one `delete` each.
    fn delete_many(&self, indices: &[u64], fua: bool) -> Result<(), StoreError> {
        indices
            .iter()
            .try_for_each(|&index| self.delete(index, fua))
    }

    /// Indices of the chunks that exist in `first..=last`, ascending.
    fn existing(&self, first: u64, last: u64) -> Result<Vec<u64>, StoreError>;

    /// Makes every write and delete done so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Whether `write` can change part of a chunk in place (files). If not
    /// (objects), the store does read-modify-write of whole chunks.
    fn partial_writes(&self) -> bool {
        true
    }

    /// Zeroes `len` bytes at `offset` inside an existing chunk, freeing the
    /// space if the backend can (hole punching). Only called when
    /// `partial_writes` is true. Default: write zeros.
    fn zero_part(&self, index: u64, offset: u64, len: u64, fua: bool) -> Result<(), StoreError> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            self.write(index, offset + done, &zeros[..n as usize], fua)?;
            done += n;
        }
        Ok(())
    }

    /// Data and holes inside an existing chunk over `len` bytes at `offset`,
    /// ascending and contiguous, when the backend can tell. Default: data.
    fn layout(&self, index: u64, offset: u64, len: u64) -> Result<Vec<ChunkExtent>, StoreError> {
        let _ = index;
        Ok(vec![ChunkExtent {
            offset,
            len,
            data: true,
        }])
    }
}
