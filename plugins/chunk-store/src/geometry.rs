//! How byte ranges of the disk map to chunks, and back.

use crate::error::StoreError;

/// Default chunk size: 4 MiB (as nbd-rs, and a good object size for S3).
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// Smallest chunk size: one 4 KiB page.
pub const MIN_CHUNK_SIZE: u64 = 4096;
/// Largest chunk size: a whole chunk may be held in memory (S3 RMW).
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

/// Size of the disk and of its chunks (a power of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    size: u64,
    chunk_size: u64,
}

/// The part of one chunk a request touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    pub index: u64,
    /// Offset inside the chunk.
    pub offset: u64,
    pub len: u64,
    /// Offset of this part inside the request's buffer.
    pub buf_offset: u64,
}

impl ChunkSpan {
    /// Whether the span covers its whole chunk.
    pub fn is_whole(&self, chunk_size: u64) -> bool {
        self.offset == 0 && self.len == chunk_size
    }
}

impl Geometry {
    pub fn new(size: u64, chunk_size: u64) -> Result<Geometry, String> {
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(format!(
                "chunk size {chunk_size} must be a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
            ));
        }
        if size == 0 {
            return Err("disk size must be greater than 0".into());
        }
        Ok(Geometry { size, chunk_size })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Number of chunks (the last one may extend past the disk's end).
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }

    /// Checks that `len` bytes at `offset` lie inside the disk.
    pub fn check(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(StoreError::new(
                libc::ENOSPC,
                format!(
                    "{len} bytes at {offset} run past the end of the {}-byte disk",
                    self.size
                ),
            )),
        }
    }

    /// The chunk parts `len` bytes at `offset` touch, in order.
    pub fn spans(&self, offset: u64, len: u64) -> impl Iterator<Item = ChunkSpan> {
        let chunk_size = self.chunk_size;
        let end = offset + len;
        let mut position = offset;
        std::iter::from_fn(move || {
            if position >= end {
                return None;
            }
            let index = position / chunk_size;
            let in_chunk = position % chunk_size;
            let part = (chunk_size - in_chunk).min(end - position);
            let span = ChunkSpan {
                index,
                offset: in_chunk,
                len: part,
                buf_offset: position - offset,
            };
            position += part;
            Some(span)
        })
    }
}

/// Whether the ranges `(start, end)` together cover `start..end`.
pub(crate) fn covers(mut ranges: Vec<(u64, u64)>, start: u64, end: u64) -> bool {
    ranges.sort_unstable();
    let mut covered = start;
    for (from, to) in ranges {
        if covered >= end {
            break;
        }
        if from > covered {
            return false;
        }
        covered = covered.max(to);
    }
    covered >= end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_checked() {
        assert!(Geometry::new(1 << 20, 4096).is_ok());
        assert!(Geometry::new(1 << 20, 2048).is_err());
        assert!(Geometry::new(1 << 20, 12288).is_err());
        assert!(Geometry::new(0, 4096).is_err());
    }

    #[test]
    fn spans_cover_the_range_exactly_at_any_alignment() {
        let g = Geometry::new(100_000, 4096).unwrap();
        for (offset, len) in [(0, 1), (4095, 2), (1, 4096 * 3), (8192, 4096), (99_999, 1)] {
            let spans: Vec<_> = g.spans(offset, len).collect();
            assert_eq!(spans.iter().map(|s| s.len).sum::<u64>(), len);
            let mut next = offset;
            for s in &spans {
                assert_eq!(s.index * 4096 + s.offset, next);
                assert_eq!(s.buf_offset, next - offset);
                assert!(s.offset + s.len <= 4096);
                next += s.len;
            }
        }
        assert_eq!(g.spans(5, 0).count(), 0);
        assert!(g.check(99_999, 2).is_err());
        assert_eq!(g.chunks(), 25);
    }
}
