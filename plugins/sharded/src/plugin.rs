//! The nbdkit side: configuration and opening the disk; every callback
//! comes from `chunk_store::chunk_store_plugin!`, shared with the s3
//! plugin. Exercised under a real nbdkit by `tests/tests/sharded.rs`.

use std::sync::Arc;

use chunk_store::{
    chunk_store_plugin, ChunkStore, Fenced, Geometry, LeaseKeeper, StoreError, WriteBack,
};
use plugin_glue::config::Collector;

use crate::config::ConfigBuilder;
use crate::files::{open_disk, FileChunks};
use crate::keys::PLUGIN;
use crate::lease_file::FileLease;

static CONFIG: Collector<ConfigBuilder> = Collector::new(&PLUGIN);

fn config(key: &str, value: &str) -> nbdkit::Result<()> {
    CONFIG.config(key, value)
}

fn open_store() -> Result<ChunkStore<WriteBack<FileChunks>>, StoreError> {
    let config = CONFIG
        .collected()
        .build()
        .map_err(|e| StoreError::new(libc::EINVAL, e.to_string()))?;
    let lease = LeaseKeeper::new(Arc::new(FileLease::new(&config.dir)), config.lease);
    let (metadata, files) = open_disk(&config.dir, &config.request, &|| {
        lease.for_writing().map(drop)
    })?;
    let geometry = Geometry::new(metadata.size, metadata.chunk_size)
        .map_err(|e| StoreError::new(libc::EINVAL, e))?;
    log::debug!(
        "sharded: {}: {} bytes in chunks of {}",
        config.dir.display(),
        metadata.size,
        metadata.chunk_size
    );
    // Chunk files are local already: no write-back cache in front of them.
    Ok(ChunkStore::new(
        geometry,
        WriteBack::direct(Fenced::new(files, lease)),
    ))
}

chunk_store_plugin! {
    plugin: Sharded,
    keys: PLUGIN,
    backend: FileChunks,
    config: config,
    open_store: open_store,
}
