//! The disk's objects in a bucket, as a chunk-store backend.
//!
//! Keys under `prefix=`: `chunk-store.meta` (the chunk-store metadata) and
//! `chunks/YYYYYYYYYYYYYYYY` (chunk number Y in 16 hex digits, so the
//! listing order is the chunk order). Objects are whole chunks: partial
//! writes are read-modify-write by the core under its chunk lock (those in
//! flight into one chunk at once combined into one); all-zero chunks are
//! deleted, never stored.
//!
//! Which chunks exist is listed once at open and then kept in memory,
//! updated by this process's own PUTs and DELETEs: reads of missing chunks
//! cost no request and `extents` is free. This relies on one writer per
//! prefix, which the lease (`lease_object`) enforces.

use std::collections::BTreeSet;
use std::sync::RwLock;

use chunk_store::{
    open_metadata, ChunkBackend, Metadata, MetadataRequest, MetadataStore, StoreError,
};
use lock_ext::RwLockIgnoringPoison;

use crate::client::S3Client;

const METADATA_KEY: &str = "chunk-store.meta";
const CHUNKS: &str = "chunks/";

pub struct S3Chunks {
    client: S3Client,
    prefix: String,
    existing: RwLock<BTreeSet<u64>>,
}

/// The disk's metadata object, for chunk-store's one open sequence.
struct PrefixMetadata<'a> {
    client: &'a S3Client,
    prefix: &'a str,
    /// The chunk objects listed at open.
    chunk_keys: &'a [String],
}

impl PrefixMetadata<'_> {
    fn key(&self) -> String {
        format!("{}{METADATA_KEY}", self.prefix)
    }
}

impl MetadataStore for PrefixMetadata<'_> {
    fn location(&self) -> String {
        format!("{}/{}", self.client.bucket_name(), self.prefix)
    }

    fn metadata_name(&self) -> String {
        self.key()
    }

    fn read_metadata(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.client.get_all(&self.key(), 64 * 1024)
    }

    fn foreign_data(&self) -> Result<Option<String>, StoreError> {
        Ok((!self.chunk_keys.is_empty()).then(|| {
            format!(
                "{}/{}{CHUNKS} holds objects but there is no {}: not a disk of ours",
                self.client.bucket_name(),
                self.prefix,
                self.key()
            )
        }))
    }

    fn write_metadata(&self, metadata: &Metadata) -> Result<(), StoreError> {
        self.client.put(&self.key(), &metadata.to_bytes())
    }
}

/// Opens (or creates, with `size=`) the disk under `prefix`.
/// `before_write` runs before the metadata is written (creating or growing
/// the disk): it takes the lease.
pub fn open_disk(
    client: S3Client,
    prefix: &str,
    request: &MetadataRequest,
    before_write: &dyn Fn() -> Result<(), StoreError>,
) -> Result<(Metadata, S3Chunks), StoreError> {
    client.check_bucket()?;
    let chunk_keys = client.list(&format!("{prefix}{CHUNKS}"))?;
    let metadata = open_metadata(
        &PrefixMetadata {
            client: &client,
            prefix,
            chunk_keys: &chunk_keys,
        },
        request,
        before_write,
    )?;
    let existing = chunk_keys
        .iter()
        .filter_map(|key| key.strip_prefix(&format!("{prefix}{CHUNKS}")))
        .filter(|name| name.len() == 16)
        .filter_map(|name| u64::from_str_radix(name, 16).ok())
        .collect();
    Ok((
        metadata,
        S3Chunks {
            client,
            prefix: prefix.to_owned(),
            existing: RwLock::new(existing),
        },
    ))
}

impl S3Chunks {
    fn key(&self, index: u64) -> String {
        format!("{}{CHUNKS}{index:016x}", self.prefix)
    }
}

impl ChunkBackend for S3Chunks {
    fn read(&self, index: u64, offset: u64, buf: &mut [u8]) -> Result<bool, StoreError> {
        if !self.existing.read_ignoring_poison().contains(&index) {
            return Ok(false);
        }
        // Only the bytes asked for: a ranged GET, never the whole object.
        let found = self.client.get_range(&self.key(index), offset, buf)?;
        if !found {
            self.existing.write_ignoring_poison().remove(&index);
        }
        Ok(found)
    }

    fn write(&self, index: u64, _offset: u64, data: &[u8], _fua: bool) -> Result<(), StoreError> {
        // Whole chunks only (partial_writes is false). A PUT is durable
        // when it returns, so FUA needs nothing more.
        self.client.put(&self.key(index), data)?;
        self.existing.write_ignoring_poison().insert(index);
        Ok(())
    }

    fn delete(&self, index: u64, _fua: bool) -> Result<(), StoreError> {
        if !self.existing.read_ignoring_poison().contains(&index) {
            return Ok(());
        }
        self.client.delete(&self.key(index))?;
        self.existing.write_ignoring_poison().remove(&index);
        Ok(())
    }

    fn delete_many(&self, indices: &[u64], _fua: bool) -> Result<(), StoreError> {
        let present: Vec<u64> = {
            let known = self.existing.read_ignoring_poison();
            indices
                .iter()
                .copied()
                .filter(|i| known.contains(i))
                .collect()
        };
        match present.len() {
            0 => Ok(()),
            1 => self.delete(present[0], false),
            _ => {
                let keys: Vec<String> = present.iter().map(|&i| self.key(i)).collect();
                self.client.delete_many(&keys)?;
                let mut known = self.existing.write_ignoring_poison();
                for index in present {
                    known.remove(&index);
                }
                Ok(())
            }
        }
    }

    fn existing(&self, first: u64, last: u64) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .existing
            .read_ignoring_poison()
            .range(first..=last)
            .copied()
            .collect())
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every PUT and DELETE was acknowledged durable by the store.
        Ok(())
    }

    fn partial_writes(&self) -> bool {
        false
    }
}
