//! An in-memory backend for unit tests, in both modes (partial writes or
//! whole-chunk only), counting calls so tests can check sparseness and
//! how many requests a store would have made, optionally as slow as a
//! remote store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::backend::ChunkBackend;
use crate::error::StoreError;

pub struct MemoryBackend {
    pub chunk_size: u64,
    pub partial: bool,
    pub chunks: Mutex<BTreeMap<u64, Vec<u8>>>,
    /// Calls of `read` and `write` so far.
    pub reads: AtomicUsize,
    pub writes: AtomicUsize,
    /// How long each `write` takes (outside the data's lock).
    pub write_delay: Duration,
}

impl MemoryBackend {
    pub fn new(chunk_size: u64, partial: bool) -> MemoryBackend {
        MemoryBackend {
            chunk_size,
            partial,
            chunks: Mutex::new(BTreeMap::new()),
            reads: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            write_delay: Duration::ZERO,
        }
    }

    pub fn stored(&self) -> usize {
        self.chunks.lock().unwrap().len()
    }
}

impl ChunkBackend for MemoryBackend {
    fn read(&self, index: u64, offset: u64, buf: &mut [u8]) -> Result<bool, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let chunks = self.chunks.lock().unwrap();
        let Some(chunk) = chunks.get(&index) else {
            return Ok(false);
        };
        buf.copy_from_slice(&chunk[offset as usize..offset as usize + buf.len()]);
        Ok(true)
    }

    fn write(&self, index: u64, offset: u64, data: &[u8], _fua: bool) -> Result<(), StoreError> {
        assert!(
            self.partial || (offset == 0 && data.len() as u64 == self.chunk_size),
            "partial write to a whole-chunk backend"
        );
        self.writes.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(self.write_delay);
        let mut chunks = self.chunks.lock().unwrap();
        let chunk = chunks
            .entry(index)
            .or_insert_with(|| vec![0; self.chunk_size as usize]);
        chunk[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn delete(&self, index: u64, _fua: bool) -> Result<(), StoreError> {
        self.chunks.lock().unwrap().remove(&index);
        Ok(())
    }

    fn existing(&self, first: u64, last: u64) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .chunks
            .lock()
            .unwrap()
            .range(first..=last)
            .map(|(i, _)| *i)
            .collect())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn partial_writes(&self) -> bool {
        self.partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Geometry;
    use crate::store::ChunkStore;

    /// xorshift: repeatable randomness without a crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random reads, writes (some all-zero), zeros and extents over a store
    /// and a plain byte array; they must always agree.
    fn model_check(partial: bool, seed: u64) {
        const CHUNK: u64 = 4096;
        const SIZE: u64 = CHUNK * 9 + 123; // last chunk partial
        let store = ChunkStore::new(
            Geometry::new(SIZE, CHUNK).unwrap(),
            MemoryBackend::new(CHUNK, partial),
        );
        let mut model = vec![0u8; SIZE as usize];
        let mut rng = Rng(seed | 1);
        for step in 0..3000 {
            let offset = rng.below(SIZE);
            let len = rng.below((SIZE - offset).min(3 * CHUNK)) + 1;
            let (o, l) = (offset as usize, len as usize);
            match rng.below(5) {
                0 | 1 => {
                    let zeros = rng.below(4) == 0;
                    let data: Vec<u8> = (0..l)
                        .map(|_| if zeros { 0 } else { rng.next() as u8 | 1 })
                        .collect();
                    store.write(&data, offset, rng.below(2) == 0).unwrap();
                    model[o..o + l].copy_from_slice(&data);
                }
                2 => {
                    store.zero(offset, len, false).unwrap();
                    model[o..o + l].fill(0);
                }
                3 => {
                    let mut buf = vec![0xAA; l];
                    store.read(&mut buf, offset).unwrap();
                    assert_eq!(buf, &model[o..o + l], "step {step}: read {len} at {offset}");
                }
                _ => {
                    let extents = store.extents(offset, len).unwrap();
                    let mut next = offset;
                    for e in &extents {
                        assert_eq!(e.offset, next, "step {step}: extents not contiguous");
                        if e.hole {
                            let (eo, el) = (e.offset as usize, e.len as usize);
                            assert!(
                                model[eo..eo + el].iter().all(|&b| b == 0),
                                "step {step}: hole over data"
                            );
                        }
                        next += e.len;
                    }
                    assert_eq!(
                        next,
                        offset + len,
                        "step {step}: extents do not cover the range"
                    );
                }
            }
        }
        let mut all = vec![0u8; SIZE as usize];
        store.read(&mut all, 0).unwrap();
        assert_eq!(all, model);
        // Sparse: no stored chunk is all zeros in whole-chunk mode.
        if !partial {
            for chunk in store.backend().chunks.lock().unwrap().values() {
                assert!(
                    chunk.iter().any(|&b| b != 0),
                    "an all-zero chunk was stored"
                );
            }
        }
    }

    #[test]
    fn randomized_model_check_with_partial_writes() {
        for seed in [1, 2, 3] {
            model_check(true, seed);
        }
    }

    #[test]
    fn randomized_model_check_with_whole_chunk_writes() {
        for seed in [4, 5, 6] {
            model_check(false, seed);
        }
    }

    /// Partial writes sent into the same chunks at once by many threads
    /// (a sequential writer with many requests in flight) all land, in far
    /// fewer whole-chunk writes than writes, and a batch that covers its
    /// chunk is stored without reading it first.
    #[test]
    fn concurrent_partial_writes_into_one_chunk_are_stored_together() {
        const CHUNK: u64 = 64 * 1024;
        const CHUNKS: u64 = 4;
        const WRITERS: u64 = 16;
        const SLOT: u64 = CHUNK / WRITERS;
        let mut backend = MemoryBackend::new(CHUNK, false);
        backend.write_delay = Duration::from_millis(20);
        let store = ChunkStore::new(Geometry::new(CHUNK * CHUNKS, CHUNK).unwrap(), backend);
        let start = std::sync::Barrier::new(WRITERS as usize);
        std::thread::scope(|scope| {
            for writer in 0..WRITERS {
                let (store, start) = (&store, &start);
                scope.spawn(move || {
                    start.wait();
                    for chunk in 0..CHUNKS {
                        let data = vec![(writer + 1) as u8; SLOT as usize];
                        store
                            .write(&data, chunk * CHUNK + writer * SLOT, false)
                            .unwrap();
                    }
                });
            }
        });
        let mut all = vec![0u8; (CHUNK * CHUNKS) as usize];
        store.read(&mut all, 0).unwrap();
        for (i, slot) in all.chunks(SLOT as usize).enumerate() {
            let writer = i as u64 % WRITERS;
            assert!(
                slot.iter().all(|&b| b == (writer + 1) as u8),
                "slot {i} lost its write"
            );
        }
        let backend = store.backend();
        let writes = backend.writes.load(Ordering::Relaxed);
        assert!(
            writes <= (CHUNKS * WRITERS / 2) as usize,
            "{writes} chunk writes for {} partial writes",
            CHUNKS * WRITERS
        );
    }

    /// Writes queued behind a slow one that together cover the chunk are
    /// stored without reading it.
    #[test]
    fn a_batch_that_covers_its_chunk_is_not_read_first() {
        const CHUNK: u64 = 64 * 1024;
        const WRITERS: u64 = 16;
        const SLOT: u64 = CHUNK / WRITERS;
        let mut backend = MemoryBackend::new(CHUNK, false);
        backend.write_delay = Duration::from_millis(300);
        let store = ChunkStore::new(Geometry::new(CHUNK, CHUNK).unwrap(), backend);
        std::thread::scope(|scope| {
            let store = &store;
            // The first write: read, then a slow write of the chunk.
            scope.spawn(move || store.write(&[9; 10], 0, false).unwrap());
            for _ in 0..500 {
                if store.backend().writes.load(Ordering::Relaxed) == 1 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            // Meanwhile, every slot of the chunk: they wait together.
            for writer in 0..WRITERS {
                scope.spawn(move || {
                    let data = vec![(writer + 1) as u8; SLOT as usize];
                    store.write(&data, writer * SLOT, false).unwrap();
                });
            }
        });
        let backend = store.backend();
        assert_eq!(backend.writes.load(Ordering::Relaxed), 2);
        assert_eq!(
            backend.reads.load(Ordering::Relaxed),
            1,
            "the batch read the chunk"
        );
        let mut all = vec![0u8; CHUNK as usize];
        store.read(&mut all, 0).unwrap();
        for (writer, slot) in all.chunks(SLOT as usize).enumerate() {
            assert!(slot.iter().all(|&b| b == (writer + 1) as u8));
        }
    }

    #[test]
    fn zero_writes_and_whole_chunk_zeroes_store_nothing() {
        let store = ChunkStore::new(
            Geometry::new(4096 * 4, 4096).unwrap(),
            MemoryBackend::new(4096, true),
        );
        store.write(&[0u8; 4096 * 4], 0, false).unwrap();
        assert_eq!(store.backend().stored(), 0);
        store.write(&[1u8; 10], 5000, false).unwrap();
        assert_eq!(store.backend().stored(), 1);
        store.zero(4096, 4096, false).unwrap();
        assert_eq!(store.backend().stored(), 0);
        let extents = store.extents(0, 4096 * 4).unwrap();
        assert_eq!(
            extents,
            vec![crate::store::Extent {
                offset: 0,
                len: 4096 * 4,
                hole: true
            }]
        );
    }

    #[test]
    fn out_of_range_is_enospc() {
        let store = ChunkStore::new(
            Geometry::new(4096, 4096).unwrap(),
            MemoryBackend::new(4096, true),
        );
        let mut buf = [0u8; 2];
        assert_eq!(store.read(&mut buf, 4095).unwrap_err().errno, libc::ENOSPC);
        assert_eq!(
            store.write(&buf, 4095, false).unwrap_err().errno,
            libc::ENOSPC
        );
    }
}
