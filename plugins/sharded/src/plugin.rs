//! The nbdkit callbacks: configuration, then every request handed to the
//! chunk store. Exercised under a real nbdkit by `tests/tests/sharded.rs`.

use std::sync::{Mutex, OnceLock};

use chunk_store::{ChunkStore, Geometry, StoreError};
use nbdkit::{plugin, ExtentHandle, ExtentType, Flags, FuaFlags, Server, ThreadModel};
use plugin_glue::config::ConfigError;
use plugin_glue::{guard, logging};

use crate::config::{ConfigBuilder, HELP};
use crate::files::{open_disk, FileChunks};

static BUILDER: Mutex<Option<ConfigBuilder>> = Mutex::new(None);
static STORE: OnceLock<ChunkStore<FileChunks>> = OnceLock::new();

fn store() -> Result<&'static ChunkStore<FileChunks>, StoreError> {
    STORE
        .get()
        .ok_or_else(|| StoreError::new(libc::EIO, "plugin not configured"))
}

/// One NBD connection; all of them share the one store (so a flush on
/// any connection covers writes from all: multi-conn is safe).
struct Sharded;

impl Server for Sharded {
    fn name() -> &'static str {
        "sharded"
    }

    fn version() -> Option<&'static str> {
        Some(env!("CARGO_PKG_VERSION"))
    }

    fn description() -> Option<&'static str> {
        Some("a sparse disk as a directory of fixed-size chunk files")
    }

    fn config_help() -> Option<&'static str> {
        Some(HELP)
    }

    fn load() {
        logging::init();
    }

    fn thread_model() -> nbdkit::Result<ThreadModel> {
        Ok(ThreadModel::Parallel)
    }

    fn config(key: &str, value: &str) -> nbdkit::Result<()> {
        guard(
            || format!("sharded: {key}"),
            || -> Result<(), ConfigError> {
                let mut builder = BUILDER.lock().unwrap_or_else(|p| p.into_inner());
                builder
                    .get_or_insert_with(ConfigBuilder::default)
                    .set(key, value)
            },
        )
    }

    fn config_complete() -> nbdkit::Result<()> {
        guard(
            || "sharded: configuration".to_owned(),
            || -> Result<(), StoreError> {
                let builder = BUILDER.lock().unwrap_or_else(|p| p.into_inner());
                let config = builder
                    .clone()
                    .unwrap_or_default()
                    .build()
                    .map_err(|e| StoreError::new(libc::EINVAL, e.to_string()))?;
                let (metadata, files) = open_disk(&config.dir, &config.request)
                    .map_err(|e| StoreError::new(libc::EINVAL, e))?;
                let geometry = Geometry::new(metadata.size, metadata.chunk_size)
                    .map_err(|e| StoreError::new(libc::EINVAL, e))?;
                log::debug!(
                    "sharded: {}: {} bytes in chunks of {}",
                    config.dir.display(),
                    metadata.size,
                    metadata.chunk_size
                );
                let _ = STORE.set(ChunkStore::new(geometry, files));
                Ok(())
            },
        )
    }

    fn open(_readonly: bool) -> nbdkit::Result<Box<dyn Server>> {
        guard(
            || "sharded: open".to_owned(),
            || store().map(|_| Box::new(Sharded) as Box<dyn Server>),
        )
    }

    fn get_size(&self) -> nbdkit::Result<i64> {
        guard(
            || "sharded: get_size".to_owned(),
            || Ok::<_, StoreError>(store()?.geometry().size() as i64),
        )
    }

    fn can_multi_conn(&self) -> nbdkit::Result<bool> {
        Ok(true)
    }

    fn can_flush(&self) -> nbdkit::Result<bool> {
        Ok(true)
    }

    fn can_fua(&self) -> nbdkit::Result<FuaFlags> {
        Ok(FuaFlags::Native)
    }

    fn can_trim(&self) -> nbdkit::Result<bool> {
        Ok(true)
    }

    fn can_zero(&self) -> nbdkit::Result<bool> {
        Ok(true)
    }

    fn can_fast_zero(&self) -> nbdkit::Result<bool> {
        // Zeroing deletes whole chunks and punches holes in partial ones:
        // metadata operations, never a write of zeros (except on a
        // filesystem without hole punching, for the partial edges).
        Ok(true)
    }

    fn can_extents(&self) -> nbdkit::Result<bool> {
        Ok(true)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> nbdkit::Result<()> {
        let len = buf.len();
        guard(
            || format!("sharded: read of {len} bytes at {offset}"),
            || store()?.read(buf, offset),
        )
    }

    fn write_at(&self, buf: &[u8], offset: u64, flags: Flags) -> nbdkit::Result<()> {
        guard(
            || format!("sharded: write of {} bytes at {offset}", buf.len()),
            || store()?.write(buf, offset, flags.contains(Flags::FUA)),
        )
    }

    fn flush(&self) -> nbdkit::Result<()> {
        guard(|| "sharded: flush".to_owned(), || store()?.flush())
    }

    fn trim(&self, count: u32, offset: u64, flags: Flags) -> nbdkit::Result<()> {
        guard(
            || format!("sharded: trim of {count} bytes at {offset}"),
            || store()?.zero(offset, count.into(), flags.contains(Flags::FUA)),
        )
    }

    fn zero(&self, count: u32, offset: u64, flags: Flags) -> nbdkit::Result<()> {
        guard(
            || format!("sharded: zero of {count} bytes at {offset}"),
            || store()?.zero(offset, count.into(), flags.contains(Flags::FUA)),
        )
    }

    fn extents(
        &self,
        count: u32,
        offset: u64,
        _flags: Flags,
        handle: &mut ExtentHandle,
    ) -> nbdkit::Result<()> {
        guard(
            || format!("sharded: extents of {count} bytes at {offset}"),
            || -> Result<(), StoreError> {
                for extent in store()?.extents(offset, count.into())? {
                    let kind = if extent.hole {
                        ExtentType::HoleZero
                    } else {
                        ExtentType::Allocated
                    };
                    handle.add(extent.offset, extent.len, kind).map_err(|e| {
                        StoreError::new(libc::EIO, format!("adding an extent: {e}"))
                    })?;
                }
                Ok(())
            },
        )
    }
}

plugin!(Sharded {
    thread_model,
    load,
    config,
    config_complete,
    write_at,
    flush,
    trim,
    zero,
    extents,
    can_multi_conn,
    can_flush,
    can_fua,
    can_trim,
    can_zero,
    can_fast_zero,
    can_extents
});
