//! The nbdkit callbacks. Kept out of unit tests (`cargo test` cannot link
//! the `nbdkit_*` symbols); exercised under a real nbdkit by
//! `tests/tests/multihttp*.rs`.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, OnceLock};

use http_disk_protocol::Feature;
use nbdkit::{plugin, FuaFlags, Server, ThreadModel};
use plugin_glue::config::{Collector, ConfigError};
use plugin_glue::{guard, logging};

use crate::clients::Client;
use crate::cluster::Cluster;
use crate::config::{self, ConfigBuilder};
use crate::error::Error;
use crate::keys::PLUGIN;
use crate::ops;
use crate::reply::ServerInfo;

static CONFIG: Collector<ConfigBuilder> = Collector::new(&PLUGIN);
static CLUSTER: OnceLock<Arc<Cluster>> = OnceLock::new();

fn cluster() -> Result<&'static Arc<Cluster>, Error> {
    CLUSTER
        .get()
        .ok_or_else(|| Error::Rejected("plugin not configured".into()))
}

/// One NBD connection. What it advertises (trim, fast zero, read-only)
/// is fixed at open from the server in use then; the requests themselves
/// adapt to whichever server serves them.
struct MultiHttp {
    cluster: Arc<Cluster>,
    /// This connection among the others (`supersede=true`).
    client: Client,
    server_at_open: Option<ServerInfo>,
}

/// Closing the NBD connection: the pools may shrink back.
impl Drop for MultiHttp {
    fn drop(&mut self) {
        self.cluster.transport().client_connection(false);
    }
}

impl MultiHttp {
    fn has(&self, feature: Feature) -> bool {
        self.server_at_open.is_some_and(|info| info.has(feature))
    }
}

impl Server for MultiHttp {
    fn name() -> &'static str {
        PLUGIN.name
    }

    fn version() -> Option<&'static str> {
        Some(env!("CARGO_PKG_VERSION"))
    }

    fn description() -> Option<&'static str> {
        Some(PLUGIN.summary)
    }

    fn magic_config_key() -> Option<&'static str> {
        PLUGIN.magic_key
    }

    fn config_help() -> Option<&'static str> {
        Some(plugin_glue::help::config_help(&PLUGIN))
    }

    fn load() {
        logging::init();
    }

    /// The stall watch thread must be gone before nbdkit unloads the .so.
    fn unload() {
        let _ = std::panic::catch_unwind(|| {
            if let Some(cluster) = CLUSTER.get() {
                cluster.stop_watch();
            }
        });
    }

    fn thread_model() -> nbdkit::Result<ThreadModel> {
        Ok(ThreadModel::Parallel)
    }

    fn dump_plugin() {
        // Facts for scripts (`nbdkit multihttp --dump-plugin`). Write
        // errors (closed stdout) are ignored rather than panicking.
        let _ = std::panic::catch_unwind(|| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "multihttp_version={}", env!("CARGO_PKG_VERSION"));
            let _ = writeln!(out, "multihttp_keys={}", PLUGIN.key_names().join(","));
            let _ = writeln!(
                out,
                "multihttp_default_connect_timeout={:?}",
                config::DEFAULT_CONNECT_TIMEOUT
            );
            let _ = writeln!(
                out,
                "multihttp_default_io_timeout={:?}",
                config::DEFAULT_IO_TIMEOUT
            );
            let _ = writeln!(
                out,
                "multihttp_default_stall_timeout={:?}",
                config::DEFAULT_STALL_TIMEOUT
            );
            let _ = writeln!(
                out,
                "multihttp_default_failover_window={:?}",
                config::DEFAULT_FAILOVER_WINDOW
            );
            let _ = writeln!(
                out,
                "multihttp_default_pool_size={}",
                config::DEFAULT_POOL_SIZE
            );
            let _ = writeln!(
                out,
                "multihttp_default_pool_size_max={}",
                config::DEFAULT_POOL_MAX
            );
            let _ = writeln!(out, "multihttp_default_pool_per_client_connection=yes");
            let _ = writeln!(out, "multihttp_default_writeback=false");
            let _ = writeln!(
                out,
                "multihttp_default_journal_size={}",
                config::DEFAULT_JOURNAL_SIZE
            );
            let _ = writeln!(out, "multihttp_max_urls={}", config::MAX_URLS);
            let _ = writeln!(out, "multihttp_parallel_probe=yes");
            let _ = writeln!(out, "multihttp_https=yes");
            let _ = writeln!(
                out,
                "multihttp_protocol_extensions=flush,trim,zero,writeback"
            );
            let _ = writeln!(out, "multihttp_old_server_compatible=yes");
            let _ = writeln!(out, "multihttp_url_schemes=http,https");
            let _ = writeln!(out, "multihttp_status_file=yes");
            // nbd-http-server passes supersede=true only to a plugin that
            // says it has it (an older one would refuse the key).
            let _ = writeln!(out, "multihttp_supersede=yes");
            let _ = writeln!(
                out,
                "multihttp_status_file_refresh={:?}",
                crate::health::REFRESH
            );
            let _ = out.flush();
        });
    }

    fn config(key: &str, value: &str) -> nbdkit::Result<()> {
        CONFIG.config(key, value)
    }

    fn config_complete() -> nbdkit::Result<()> {
        guard(
            || "multihttp: configuration".to_owned(),
            || -> Result<(), ConfigError> {
                let config = CONFIG.collected().build()?;
                let tls = crate::tls::client_config(&config.tls_keys())?;
                // Builds the HTTP agent only: no thread starts before nbdkit
                // forks (probe threads start in open/requests).
                let cluster = Cluster::new(config, tls);
                // Written now so that a wrong status-file= stops nbdkit at
                // start-up instead of going unnoticed.
                if let Some(path) = &cluster.config.status_file {
                    cluster.health().write_now().map_err(|e| {
                        ConfigError::new(
                            "status-file",
                            format!("cannot write {}: {e}", path.display()),
                        )
                    })?;
                }
                let _ = CLUSTER.set(Arc::new(cluster));
                Ok(())
            },
        )
    }

    fn open(_readonly: bool) -> nbdkit::Result<Box<dyn Server>> {
        guard(
            || "multihttp: open".to_owned(),
            || -> Result<Box<dyn Server>, Error> {
                let cluster = Arc::clone(cluster()?);
                // After nbdkit forked (threads do not survive the fork).
                cluster.start_watch();
                let server_at_open = match cluster.current() {
                    Some(active) => Some(active.info),
                    None => match cluster.ensure(&HashSet::new(), cluster.config.connect_timeout) {
                        Ok(active) => Some(active.info),
                        // With device-size, open anyway: the server may
                        // be starting (SM starts us before or meanwhile).
                        Err(_) if cluster.size().is_some() => None,
                        Err(not_found) => {
                            return Err(Error::Unavailable(format!(
                                "no server answers and device-size= is not given: {}",
                                not_found.describe(&cluster.config.urls)
                            )))
                        }
                    },
                };
                cluster.transport().client_connection(true);
                Ok(Box::new(MultiHttp {
                    client: cluster.client_opened(),
                    cluster,
                    server_at_open,
                }))
            },
        )
    }

    fn get_size(&self) -> nbdkit::Result<i64> {
        guard(
            || "multihttp: get_size".to_owned(),
            || {
                self.cluster
                    .size()
                    .and_then(|s| i64::try_from(s).ok())
                    .ok_or_else(|| Error::Unavailable("disk size unknown".into()))
            },
        )
    }

    fn can_write(&self) -> nbdkit::Result<bool> {
        Ok(!self.has(Feature::Readonly))
    }

    /// Both modes take flushes and FUA. Write-through (the default): every
    /// write is durable before its reply, so a flush has nothing to do and
    /// FUA changes nothing; advertising them anyway keeps clients that
    /// flush working (libnbd refuses a flush the server did not
    /// advertise). `writeback=true`: a flush makes the server sync, FUA
    /// writes skip the write-back.
    fn can_flush(&self) -> nbdkit::Result<bool> {
        Ok(true)
    }

    fn can_fua(&self) -> nbdkit::Result<FuaFlags> {
        Ok(FuaFlags::Native)
    }

    fn can_multi_conn(&self) -> nbdkit::Result<bool> {
        // All connections share one server choice, each flush is an
        // fdatasync of the whole device (or every write was synced, on an
        // old server): a flush on one connection covers all of them.
        // Not with supersede=true: a second connection's first write
        // would end the first one's requests.
        Ok(!self.cluster.supersedes())
    }

    fn can_trim(&self) -> nbdkit::Result<bool> {
        Ok(self.has(Feature::Trim) && !self.has(Feature::Readonly))
    }

    fn can_zero(&self) -> nbdkit::Result<bool> {
        Ok(true)
    }

    fn can_fast_zero(&self) -> nbdkit::Result<bool> {
        Ok(self.has(Feature::Zero))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> nbdkit::Result<()> {
        let len = buf.len();
        guard(
            || format!("multihttp: read of {len} bytes at {offset}"),
            || ops::read(&self.cluster, self.client, buf, offset),
        )
    }

    fn write_at(&self, buf: &[u8], offset: u64, flags: nbdkit::Flags) -> nbdkit::Result<()> {
        guard(
            || format!("multihttp: write of {} bytes at {offset}", buf.len()),
            || {
                ops::write(
                    &self.cluster,
                    self.client,
                    buf,
                    offset,
                    flags.contains(nbdkit::Flags::FUA),
                )
            },
        )
    }

    fn flush(&self) -> nbdkit::Result<()> {
        guard(
            || "multihttp: flush".to_owned(),
            || ops::flush(&self.cluster, self.client),
        )
    }

    fn trim(&self, count: u32, offset: u64, flags: nbdkit::Flags) -> nbdkit::Result<()> {
        guard(
            || format!("multihttp: trim of {count} bytes at {offset}"),
            || {
                ops::trim(
                    &self.cluster,
                    self.client,
                    count,
                    offset,
                    flags.contains(nbdkit::Flags::FUA),
                )
            },
        )
    }

    fn zero(&self, count: u32, offset: u64, flags: nbdkit::Flags) -> nbdkit::Result<()> {
        guard(
            || format!("multihttp: zero of {count} bytes at {offset}"),
            || {
                ops::zero(
                    &self.cluster,
                    self.client,
                    count,
                    offset,
                    flags.contains(nbdkit::Flags::MAY_TRIM),
                    flags.contains(nbdkit::Flags::FUA),
                    flags.contains(nbdkit::Flags::FAST_ZERO),
                )
            },
        )
    }
}

plugin!(MultiHttp {
    thread_model,
    load,
    unload,
    config,
    config_complete,
    dump_plugin,
    write_at,
    flush,
    trim,
    zero,
    can_write,
    can_flush,
    can_fua,
    can_multi_conn,
    can_trim,
    can_zero,
    can_fast_zero
});
