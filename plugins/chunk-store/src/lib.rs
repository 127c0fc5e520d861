//! A disk as fixed-size chunks over a small backend trait.
//!
//! The sharded plugin (a directory of chunk files) and the s3 plugin (one
//! object per chunk) share everything here: how byte ranges map to chunks,
//! per-chunk locking, read-modify-write for backends that need it (partial
//! writes in flight into one chunk at once stored together), sparse
//! zero/trim (whole chunks deleted, all-zero chunks never stored), extents,
//! and the metadata that fixes a disk's size and chunk size.
//! A backend implements only [`ChunkBackend`], and [`LeaseStore`] for the
//! single-writer lease ([`lease`]) that [`Fenced`] checks before every write.

mod backend;
mod coalesce;
mod error;
mod geometry;
pub mod lease;
mod metadata;
mod open;
mod plugin_macro;
mod store;
pub mod writeback;

pub use backend::{ChunkBackend, ChunkExtent};
pub use error::StoreError;
pub use geometry::{ChunkSpan, Geometry, DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE};
pub use lease::{Fenced, LeaseKeeper, LeaseSettings, LeaseStore};
pub use metadata::{reconcile, Metadata, Request as MetadataRequest, FORMAT_VERSION};
pub use open::{open_metadata, MetadataStore};
pub use store::{ChunkStore, Extent};
pub use writeback::{CacheSettings, WriteBack};

#[cfg(test)]
mod memory;
