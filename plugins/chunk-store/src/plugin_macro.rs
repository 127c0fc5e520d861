//! `chunk_store_plugin!`: the whole nbdkit side of a chunk-store plugin,
//! so the sharded and s3 plugins share one set of callbacks and differ
//! only in their configuration and backend.
//!
//! The plugin crate provides its key table (a `static`
//! `plugin_glue::keys::Plugin`: name, description, `--help`), two
//! functions and a backend type:
//! - `fn config(key: &str, value: &str) -> nbdkit::Result<()>`
//! - `fn open_store() -> Result<chunk_store::ChunkStore<WriteBack<Backend>>, chunk_store::StoreError>`
//!   (called once, from `config_complete`): the backend wrapped in its
//!   lease ([`crate::Fenced`]), with or without the write-back cache
//!   ([`crate::WriteBack`]).
//!
//! The lease: a writable open takes it (a refusal, naming the owner,
//! fails that open; read-only opens need none), every write checks it,
//! and `unload` uploads what the cache holds, then releases it.
//!
//! What the generated plugin advertises, and why it is true for every
//! chunk store: thread model Parallel (per-chunk locks); multi-conn (one
//! store shared by all connections, so a flush covers them all); native
//! FUA (backends sync the touched chunk); trim and zero (deletes and
//! punches); fast zero (zeroing never writes data blocks: whole chunks are
//! deleted, parts punched or, for object stores, rewritten in one PUT);
//! extents (missing chunks are holes).
//! The crate using it must depend on `nbdkit`, `plugin-glue` and `libc`.

#[macro_export]
macro_rules! chunk_store_plugin {
    (
        plugin: $plugin:ident,
        keys: $keys:path,
        backend: $backend:ty,
        config: $config:path,
        open_store: $open_store:path $(,)?
    ) => {
        static STORE: ::std::sync::OnceLock<$crate::ChunkStore<$crate::WriteBack<$backend>>> =
            ::std::sync::OnceLock::new();

        fn store() -> ::std::result::Result<
            &'static $crate::ChunkStore<$crate::WriteBack<$backend>>,
            $crate::StoreError,
        > {
            STORE
                .get()
                .ok_or_else(|| $crate::StoreError::new(::libc::EIO, "plugin not configured"))
        }

        /// One NBD connection; every connection shares the one store.
        struct $plugin;

        impl ::nbdkit::Server for $plugin {
            fn name() -> &'static str {
                $keys.name
            }

            fn version() -> ::std::option::Option<&'static str> {
                Some(env!("CARGO_PKG_VERSION"))
            }

            fn description() -> ::std::option::Option<&'static str> {
                Some($keys.summary)
            }

            fn config_help() -> ::std::option::Option<&'static str> {
                Some(::plugin_glue::help::config_help(&$keys))
            }

            fn magic_config_key() -> ::std::option::Option<&'static str> {
                $keys.magic_key
            }

            fn load() {
                ::plugin_glue::logging::init();
            }

            fn thread_model() -> ::nbdkit::Result<::nbdkit::ThreadModel> {
                Ok(::nbdkit::ThreadModel::Parallel)
            }

            fn config(key: &str, value: &str) -> ::nbdkit::Result<()> {
                $config(key, value)
            }

            fn config_complete() -> ::nbdkit::Result<()> {
                ::plugin_glue::guard(
                    || format!("{}: opening the disk", $keys.name),
                    || -> ::std::result::Result<(), $crate::StoreError> {
                        let opened = $open_store()?;
                        let _ = STORE.set(opened);
                        Ok(())
                    },
                )
            }

            fn unload() {
                if let Some(store) = STORE.get() {
                    store.backend().shut_down();
                }
            }

            fn open(readonly: bool) -> ::nbdkit::Result<Box<dyn ::nbdkit::Server>> {
                ::plugin_glue::guard(
                    || format!("{}: open", $keys.name),
                    || -> ::std::result::Result<Box<dyn ::nbdkit::Server>, $crate::StoreError> {
                        let store = store()?;
                        if !readonly {
                            store.backend().lease().open_for_writing()?;
                        }
                        Ok(Box::new($plugin))
                    },
                )
            }

            fn get_size(&self) -> ::nbdkit::Result<i64> {
                ::plugin_glue::guard(
                    || format!("{}: get_size", $keys.name),
                    || Ok::<_, $crate::StoreError>(store()?.geometry().size() as i64),
                )
            }

            fn can_multi_conn(&self) -> ::nbdkit::Result<bool> {
                Ok(true)
            }

            fn can_flush(&self) -> ::nbdkit::Result<bool> {
                Ok(true)
            }

            fn can_fua(&self) -> ::nbdkit::Result<::nbdkit::FuaFlags> {
                Ok(::nbdkit::FuaFlags::Native)
            }

            fn can_trim(&self) -> ::nbdkit::Result<bool> {
                Ok(true)
            }

            fn can_zero(&self) -> ::nbdkit::Result<bool> {
                Ok(true)
            }

            fn can_fast_zero(&self) -> ::nbdkit::Result<bool> {
                Ok(true)
            }

            fn can_extents(&self) -> ::nbdkit::Result<bool> {
                Ok(true)
            }

            fn read_at(&self, buf: &mut [u8], offset: u64) -> ::nbdkit::Result<()> {
                let len = buf.len();
                ::plugin_glue::guard(
                    || format!("{}: read of {len} bytes at {offset}", $keys.name),
                    || store()?.read(buf, offset),
                )
            }

            fn write_at(
                &self,
                buf: &[u8],
                offset: u64,
                flags: ::nbdkit::Flags,
            ) -> ::nbdkit::Result<()> {
                ::plugin_glue::guard(
                    || format!("{}: write of {} bytes at {offset}", $keys.name, buf.len()),
                    || store()?.write(buf, offset, flags.contains(::nbdkit::Flags::FUA)),
                )
            }

            fn flush(&self) -> ::nbdkit::Result<()> {
                ::plugin_glue::guard(|| format!("{}: flush", $keys.name), || store()?.flush())
            }

            fn trim(
                &self,
                count: u32,
                offset: u64,
                flags: ::nbdkit::Flags,
            ) -> ::nbdkit::Result<()> {
                ::plugin_glue::guard(
                    || format!("{}: trim of {count} bytes at {offset}", $keys.name),
                    || store()?.zero(offset, count.into(), flags.contains(::nbdkit::Flags::FUA)),
                )
            }

            fn zero(
                &self,
                count: u32,
                offset: u64,
                flags: ::nbdkit::Flags,
            ) -> ::nbdkit::Result<()> {
                ::plugin_glue::guard(
                    || format!("{}: zero of {count} bytes at {offset}", $keys.name),
                    || store()?.zero(offset, count.into(), flags.contains(::nbdkit::Flags::FUA)),
                )
            }

            fn extents(
                &self,
                count: u32,
                offset: u64,
                _flags: ::nbdkit::Flags,
                handle: &mut ::nbdkit::ExtentHandle,
            ) -> ::nbdkit::Result<()> {
                ::plugin_glue::guard(
                    || format!("{}: extents of {count} bytes at {offset}", $keys.name),
                    || -> ::std::result::Result<(), $crate::StoreError> {
                        for extent in store()?.extents(offset, count.into())? {
                            let kind = if extent.hole {
                                ::nbdkit::ExtentType::HoleZero
                            } else {
                                ::nbdkit::ExtentType::Allocated
                            };
                            handle.add(extent.offset, extent.len, kind).map_err(|e| {
                                $crate::StoreError::new(
                                    ::libc::EIO,
                                    format!("adding an extent: {e}"),
                                )
                            })?;
                        }
                        Ok(())
                    },
                )
            }
        }

        ::nbdkit::plugin!($plugin {
            thread_model,
            load,
            unload,
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
    };
}
