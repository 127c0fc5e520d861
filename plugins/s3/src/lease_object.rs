//! The disk's lease as one object, `PREFIX/chunk-store.lease`
//! (chunk-store's [`LeaseStore`]).
//!
//! Lease writes carry S3's conditions, `If-None-Match: *` to create and
//! `If-Match: ETAG` to replace, which AWS S3, MinIO and Ceph RGW enforce
//! (412: someone else wrote first). Stores that ignore them on PUT
//! (Garage 2.x does) store the object anyway; so every write is read back,
//! and a lease that is not the one written counts as a conflict. There the
//! guarantee is weaker: two writers racing within one round trip can both
//! believe they won, and the loser finds out at its next renewal (a sixth
//! of lease-time later), when it stops writing.

use chunk_store::lease::{Condition, LeaseStore, Version, Written};
use chunk_store::StoreError;

use crate::client::S3Client;

const LEASE_KEY: &str = "chunk-store.lease";
/// A lease record is a few hundred bytes.
const MAX_LEASE_SIZE: usize = 4096;

pub struct ObjectLease {
    client: S3Client,
    prefix: String,
}

impl ObjectLease {
    pub fn new(client: S3Client, prefix: &str) -> ObjectLease {
        ObjectLease {
            client,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self) -> String {
        format!("{}{LEASE_KEY}", self.prefix)
    }
}

impl LeaseStore for ObjectLease {
    fn location(&self) -> String {
        format!("{}/{}", self.client.bucket_name(), self.prefix)
    }

    fn read(&self) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        Ok(self
            .client
            .get_tagged(&self.key(), MAX_LEASE_SIZE)?
            .map(|(bytes, etag)| (bytes, Version(etag))))
    }

    fn write(&self, bytes: &[u8], condition: Condition<'_>) -> Result<Written, StoreError> {
        let precondition = match condition {
            Condition::Absent => ("If-None-Match", "*"),
            Condition::Unchanged(Version(etag)) => ("If-Match", etag.as_str()),
        };
        if !self.client.put_if(&self.key(), bytes, Some(precondition))? {
            return Ok(Written::Conflict);
        }
        // Read back: the only check a store ignoring conditions allows.
        match self.read()? {
            Some((stored, _)) if stored == bytes => Ok(Written::Done),
            _ => Ok(Written::Conflict),
        }
    }

    fn remove(&self, _version: &Version) -> Result<(), StoreError> {
        // The caller has just read it back as its own; S3 has no
        // conditional DELETE for general-purpose buckets.
        self.client.delete(&self.key())
    }
}
