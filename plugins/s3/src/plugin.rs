//! The nbdkit side: configuration (credentials never required on the
//! command line, never logged) and opening the disk; every callback comes
//! from `chunk_store::chunk_store_plugin!`, shared with the sharded plugin.
//! Exercised under a real nbdkit against a real Garage by `tests/tests/s3.rs`.

use chunk_store::{chunk_store_plugin, ChunkStore, Geometry, StoreError};
use plugin_glue::config::Collector;

use crate::backend::{open_disk, S3Chunks};
use crate::client::S3Client;
use crate::config::ConfigBuilder;
use crate::keys::PLUGIN;

static CONFIG: Collector<ConfigBuilder> = Collector::new(&PLUGIN);

fn config(key: &str, value: &str) -> nbdkit::Result<()> {
    CONFIG.config(key, value)
}

fn open_store() -> Result<ChunkStore<S3Chunks>, StoreError> {
    let config = CONFIG
        .collected()
        .build(plugin_glue::secret::take_env)
        .map_err(|e| StoreError::new(libc::EINVAL, e.to_string()))?;
    let client = S3Client::new(&config).map_err(|e| StoreError::new(libc::EINVAL, e))?;
    let (metadata, chunks) = open_disk(client, &config.prefix, &config.request)?;
    let geometry = Geometry::new(metadata.size, metadata.chunk_size)
        .map_err(|e| StoreError::new(libc::EINVAL, e))?;
    log::debug!(
        "s3: {}/{}: {} bytes in objects of {}",
        config.bucket,
        config.prefix,
        metadata.size,
        metadata.chunk_size
    );
    Ok(ChunkStore::new(geometry, chunks))
}

chunk_store_plugin! {
    plugin: S3,
    keys: PLUGIN,
    backend: S3Chunks,
    config: config,
    open_store: open_store,
}
