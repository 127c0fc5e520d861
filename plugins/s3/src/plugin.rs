//! The nbdkit side: configuration (credentials never required on the
//! command line, never logged) and opening the disk; every callback comes
//! from `chunk_store::chunk_store_plugin!`, shared with the sharded plugin.
//! Exercised under a real nbdkit against a real Garage by `tests/tests/s3.rs`.

use std::sync::Arc;

use chunk_store::{
    chunk_store_plugin, CacheSettings, ChunkStore, Fenced, Geometry, LeaseKeeper, StoreError,
    WriteBack,
};
use plugin_glue::config::Collector;

use crate::backend::{open_disk, S3Chunks};
use crate::client::S3Client;
use crate::config::{Config, ConfigBuilder};
use crate::keys::PLUGIN;
use crate::lease_object::ObjectLease;

static CONFIG: Collector<ConfigBuilder> = Collector::new(&PLUGIN);

fn config(key: &str, value: &str) -> nbdkit::Result<()> {
    CONFIG.config(key, value)
}

fn open_store() -> Result<ChunkStore<WriteBack<S3Chunks>>, StoreError> {
    let config = CONFIG
        .collected()
        .build(plugin_glue::secret::take_env)
        .map_err(|e| StoreError::new(libc::EINVAL, e.to_string()))?;
    let client = S3Client::new(&config).map_err(|e| StoreError::new(libc::EINVAL, e))?;
    let lease = LeaseKeeper::new(Arc::new(lease_object(&client, &config)?), config.lease);
    let (metadata, chunks) = open_disk(client, &config.prefix, &config.request, &|| {
        lease.for_writing().map(drop)
    })?;
    let geometry = Geometry::new(metadata.size, metadata.chunk_size)
        .map_err(|e| StoreError::new(libc::EINVAL, e))?;
    log::debug!(
        "s3: {}/{}: {} bytes in objects of {}",
        config.bucket,
        config.prefix,
        metadata.size,
        metadata.chunk_size
    );
    let fenced = Fenced::new(chunks, lease);
    let backend = match &config.cache.dir {
        None => WriteBack::direct(fenced),
        Some(dir) => {
            config
                .cache
                .check_size(metadata.chunk_size)
                .map_err(|e| StoreError::new(libc::EINVAL, e.to_string()))?;
            let settings = CacheSettings {
                dir: dir.clone(),
                size: config.cache.size,
                // As many uploads in flight as the pool has connections.
                uploaders: config.pool_size,
            };
            // Bucket and prefix, not the endpoint: one store is often
            // reached under several names (a VM's 10.0.2.2, a DNS alias).
            // A journal taken to another store is still never replayed
            // there: that store's lease was not taken from its writer.
            let disk = format!("{}/{}", config.bucket, config.prefix);
            WriteBack::cached(fenced, &settings, metadata.chunk_size, &disk)?
        }
    };
    Ok(ChunkStore::new(geometry, backend))
}

/// The lease object, with a client of its own (same keys): renewals never
/// queue behind chunk traffic, and give up within a quarter of lease-time
/// (whatever retry-window says), so a writer that cannot reach the store
/// finds out before its lease could expire.
fn lease_object(client: &S3Client, config: &Config) -> Result<ObjectLease, StoreError> {
    let lease_config = Config {
        retry_window: config.retry_window.min(config.lease.duration / 4),
        pool_size: 1,
        ..config.clone()
    };
    let client = client
        .sibling(&lease_config)
        .map_err(|e| StoreError::new(libc::EINVAL, e))?;
    Ok(ObjectLease::new(client, &config.prefix))
}

chunk_store_plugin! {
    plugin: S3,
    keys: PLUGIN,
    backend: S3Chunks,
    config: config,
    open_store: open_store,
}
