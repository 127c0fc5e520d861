//! The plugin's `key=value` parameters: their defaults and validation
//! (which keys exist, and their help text, are in [`crate::keys`]).
//!
//! Pure Rust: everything except `password=` (which reads through nbdkit)
//! is unit-tested with `cargo test`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::endpoint::Address;
use crate::keys::PLUGIN;
use plugin_glue::config::{
    parse_bool, parse_count, parse_duration, parse_size, Builder, ConfigError,
};
use plugin_glue::Secret;

/// Default of `connect-timeout=`: TCP connect and HEAD probe limit. Probes
/// run in parallel, so this is what start-up and failover cost at most.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of `io-timeout=`: base deadline of one request (plus 1 s per MiB).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `stall-timeout=`: a request without reply for this long
/// (plus 1 s per 64 MiB it carries) makes the other servers be probed, and
/// moves to one that can serve. Chosen for xapi's redo log, which gives a
/// write 2 s before it declares the device dead: 0.5 s of patience, then
/// a probe (milliseconds on a LAN) and the retry leave over a second of
/// margin; and long enough that an fdatasync on a loaded disk is not
/// mistaken for a hang (on a pool a false alarm costs only probes: the
/// other servers answer 503 while DRBD keeps the disk on this one).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Default of `failover-window=`: long enough to ride through a DRBD
/// Primary moving to another host.
pub const DEFAULT_FAILOVER_WINDOW: Duration = Duration::from_secs(60);
/// Default of `pool-size=`: connections open to one server per NBD client
/// connection. nbdkit runs 16 request threads per NBD connection (its
/// default `--threads`), so each can have its own HTTP connection: a
/// thread waiting for a connection costs a futex hand-off per request
/// (measured: 4 NBD connections with 16 shared HTTP connections spent
/// ~20 % more nbdkit CPU per 4 KiB read than with 64).
pub const DEFAULT_POOL_SIZE: usize = 16;
/// The default pool grows with the NBD connections up to this: well under
/// http-disk-server's default `--max-connections-per-peer` (128), so a
/// host with several clients is never turned away by its cap.
pub const DEFAULT_POOL_MAX: usize = 64;
/// Default of `journal-size=`: write-back changes kept since the last
/// flush, to replay on the next server after a failover. Large enough for
/// the bursts between a file system's or qemu's flushes (an ext4 commit
/// interval of a busy small volume), small enough for a host with several
/// attached disks.
pub const DEFAULT_JOURNAL_SIZE: u64 = 64 << 20;
/// Pools have up to 64 hosts; leave room, but refuse absurd lists.
pub const MAX_URLS: usize = 1024;

/// A validated plugin configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub urls: Vec<String>,
    /// `urls`, parsed once here (same order): what requests are sent to.
    pub addresses: Vec<Address>,
    pub device_size: Option<u64>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// `password=+FILE`: re-read when it changes or a server answers 401.
    pub password_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub stall_timeout: Duration,
    pub failover_window: Duration,
    pub pool_size: PoolSize,
    pub status_file: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    /// `tls-verify=false` clears it (default true).
    pub tls_verify: bool,
    /// `writeback=true`: writes are acknowledged before they are durable
    /// (new servers' `X-Disk-Writeback`); default false, write-through.
    pub writeback: bool,
    /// `journal-size=`: bytes of write-back changes kept for replay.
    pub journal_size: u64,
    /// `supersede=true`: a newer NBD connection's first change ends the
    /// older connections' requests (see `cluster::Clients`).
    pub supersede: bool,
}

/// How many connections may be open to one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolSize {
    /// `pool-size=N`: that many, however many NBD clients there are.
    Fixed(usize),
    /// The default: [`DEFAULT_POOL_SIZE`] per NBD client connection open
    /// (one counts while none is), at most [`DEFAULT_POOL_MAX`].
    PerClientConnection,
}

impl Config {
    /// The keys the TLS client configuration is made from.
    pub fn tls_keys(&self) -> crate::tls::TlsKeys<'_> {
        crate::tls::TlsKeys {
            any_https: self.addresses.iter().any(|address| address.tls),
            cafile: self.cafile.as_deref(),
            verify: self.tls_verify,
        }
    }
}

impl PoolSize {
    /// The bound while `client_connections` NBD connections are open.
    pub fn bound(self, client_connections: usize) -> usize {
        match self {
            PoolSize::Fixed(n) => n,
            PoolSize::PerClientConnection => {
                (DEFAULT_POOL_SIZE * client_connections.max(1)).min(DEFAULT_POOL_MAX)
            }
        }
    }
}

/// Keys as nbdkit hands them over, before `config_complete` validates the
/// whole.
#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    urls: Vec<String>,
    addresses: Vec<Address>,
    device_size: Option<u64>,
    user: Option<String>,
    password: Option<Secret>,
    password_file: Option<PathBuf>,
    connect_timeout: Option<Duration>,
    io_timeout: Option<Duration>,
    stall_timeout: Option<Duration>,
    failover_window: Option<Duration>,
    pool_size: Option<usize>,
    status_file: Option<PathBuf>,
    cafile: Option<PathBuf>,
    tls_verify: Option<bool>,
    writeback: Option<bool>,
    journal_size: Option<u64>,
    supersede: Option<bool>,
}

impl Builder for ConfigBuilder {
    /// Takes one key, except `password` (see `set_secret`).
    fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "urls" => {
                for (url, address) in parse_urls(value)? {
                    self.urls.push(url);
                    self.addresses.push(address);
                }
            }
            "device-size" => {
                let size = parse_size(key, value)?;
                if size == 0 {
                    return Err(ConfigError::new(key, "the size must not be 0"));
                }
                self.device_size = Some(size);
            }
            "user" => self.user = Some(value.to_owned()),
            "connect-timeout" => self.connect_timeout = Some(positive(key, value)?),
            "io-timeout" => self.io_timeout = Some(positive(key, value)?),
            "stall-timeout" => self.stall_timeout = Some(positive(key, value)?),
            "failover-window" => self.failover_window = Some(parse_duration(key, value)?),
            "pool-size" => self.pool_size = Some(parse_count(key, value, 1024)?),
            "status-file" => {
                if value.is_empty() {
                    return Err(ConfigError::new(key, "needs a file path"));
                }
                self.status_file = Some(PathBuf::from(value));
            }
            "cafile" => {
                if value.is_empty() {
                    return Err(ConfigError::new(key, "empty path"));
                }
                self.cafile = Some(PathBuf::from(value));
            }
            "tls-verify" => self.tls_verify = Some(parse_bool(key, value)?),
            "writeback" => self.writeback = Some(parse_bool(key, value)?),
            "journal-size" => self.journal_size = Some(parse_size(key, value)?),
            "supersede" => self.supersede = Some(parse_bool(key, value)?),
            _ => return Err(PLUGIN.unknown_key(key)),
        }
        Ok(())
    }

    /// `password`, already read with nbdkit's password syntax (see
    /// [`plugin_glue::config::read_password`]).
    fn set_secret(&mut self, key: &str, value: Secret) -> Result<(), ConfigError> {
        match key {
            "password" => self.password = Some(value),
            _ => return Err(PLUGIN.unknown_key(key)),
        }
        Ok(())
    }

    /// Only `+FILE` can be read again; a later `password=` of another
    /// form replaces it, like the password itself.
    fn secret_file(&mut self, key: &str, path: Option<&Path>) {
        if key == "password" {
            self.password_file = path.map(Path::to_owned);
        }
    }
}

impl ConfigBuilder {
    /// Checks the whole configuration once every key is in.
    pub fn build(&self) -> Result<Config, ConfigError> {
        if self.urls.is_empty() {
            return Err(ConfigError::missing("urls"));
        }
        if self.urls.len() > MAX_URLS {
            return Err(ConfigError::new(
                "urls",
                format!("{} URLs given, at most {MAX_URLS}", self.urls.len()),
            ));
        }
        if self.password.is_some() && self.user.is_none() {
            return Err(ConfigError::new("password", "given without user="));
        }
        Ok(Config {
            urls: self.urls.clone(),
            addresses: self.addresses.clone(),
            device_size: self.device_size,
            user: self.user.clone(),
            password: self.password.clone(),
            password_file: self.password_file.clone(),
            connect_timeout: self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            io_timeout: self.io_timeout.unwrap_or(DEFAULT_IO_TIMEOUT),
            stall_timeout: self.stall_timeout.unwrap_or(DEFAULT_STALL_TIMEOUT),
            failover_window: self.failover_window.unwrap_or(DEFAULT_FAILOVER_WINDOW),
            pool_size: self
                .pool_size
                .map_or(PoolSize::PerClientConnection, PoolSize::Fixed),
            status_file: self.status_file.clone(),
            cafile: self.cafile.clone(),
            tls_verify: self.tls_verify.unwrap_or(true),
            // Write-through unless asked: HA's statefile writer never
            // flushes, so a write acknowledged before it is durable could
            // be lost with the server's host (see ops.rs).
            writeback: self.writeback.unwrap_or(false),
            journal_size: self.journal_size.unwrap_or(DEFAULT_JOURNAL_SIZE),
            supersede: self.supersede.unwrap_or(false),
        })
    }
}

/// A timeout of 0 would mean "no timeout" to the HTTP library: refuse it.
fn positive(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(key, value)?;
    if d.is_zero() {
        return Err(ConfigError::new(key, "must be longer than 0"));
    }
    Ok(d)
}

/// Splits a comma-separated URL list (whitespace ignored, empty entries
/// skipped so a trailing comma is harmless) and parses each URL.
pub fn parse_urls(value: &str) -> Result<Vec<(String, Address)>, ConfigError> {
    let urls: Vec<String> = value
        .split(',')
        .map(|u| u.chars().filter(|c| !c.is_whitespace()).collect::<String>())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(ConfigError::new("urls", "no URL in the list"));
    }
    urls.into_iter()
        .map(|url| match check_url(&url) {
            Ok(address) => Ok((url, address)),
            // Never echo what may be credentials typed into the URL.
            Err(why) => Err(ConfigError::new(
                "urls",
                format!("{:?}: {why}", redact_userinfo(&url)),
            )),
        })
        .collect()
}

/// `url` for a message, with everything before an `@` (what would be
/// `user:password@`, even a malformed one) replaced by `<redacted>`.
pub fn redact_userinfo(url: &str) -> String {
    match url.rsplit_once('@') {
        None => url.to_owned(),
        Some((before, host_and_path)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://<redacted>@{host_and_path}"),
            None => format!("<redacted>@{host_and_path}"),
        },
    }
}

/// Accepts `http[s]://HOST[:PORT][/PATH]` (see [`Address::parse`]): a typo
/// should fail at start-up, not at failover. Any `@` is refused first, even
/// in the path: a password containing `/` would otherwise end the host part
/// early, and the parser's "bad port" error would quote a piece of it.
fn check_url(url: &str) -> Result<Address, String> {
    if url.contains('@') {
        return Err("put credentials in user=/password=, not in the URL".into());
    }
    let address = Address::parse(url)?;
    if address.tls {
        crate::tls::server_name(&address.host)?;
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_required_keys() {
        let mut b = ConfigBuilder::default();
        assert_eq!(b.build().unwrap_err(), ConfigError::missing("urls"));
        b.set("urls", "http://a:8076").unwrap();
        let c = b.build().unwrap();
        assert_eq!(c.device_size, None);
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.io_timeout, DEFAULT_IO_TIMEOUT);
        assert_eq!(c.stall_timeout, DEFAULT_STALL_TIMEOUT);
        assert_eq!(c.failover_window, DEFAULT_FAILOVER_WINDOW);
        assert_eq!(c.pool_size, PoolSize::PerClientConnection);
        assert_eq!(c.status_file, None);
        assert_eq!((c.cafile, c.tls_verify), (None, true));
        assert!(!c.writeback, "write-back must be asked for");
        b.set("writeback", "true").unwrap();
        assert!(b.build().unwrap().writeback);
        assert!(b.set("writeback", "sometimes").is_err());
        assert!(!b.build().unwrap().supersede, "several clients by default");
        b.set("supersede", "true").unwrap();
        assert!(b.build().unwrap().supersede);
        assert_eq!(c.journal_size, DEFAULT_JOURNAL_SIZE);
        b.set("journal-size", "1M").unwrap();
        assert_eq!(b.build().unwrap().journal_size, 1 << 20);
        b.set("journal-size", "0").unwrap();
        assert_eq!(b.build().unwrap().journal_size, 0, "0 keeps no journal");
        assert!(b.set("journal-size", "lots").is_err());
    }

    #[test]
    fn tls_keys() {
        let mut b = ConfigBuilder::default();
        b.set("urls", "http://a:8076, https://b:8443").unwrap();
        b.set("cafile", "/etc/ca.pem").unwrap();
        b.set("tls-verify", "false").unwrap();
        let c = b.build().unwrap();
        assert_eq!(c.urls, ["http://a:8076", "https://b:8443"]);
        assert_eq!(c.cafile, Some(PathBuf::from("/etc/ca.pem")));
        assert!(!c.tls_verify);
        assert!(b.set("tls-verify", "maybe").is_err());
        assert!(b.set("cafile", "").is_err());
    }

    #[test]
    fn url_lists() {
        let mut b = ConfigBuilder::default();
        b.set("urls", " http://a:8076 ,\n http://b:8076/,").unwrap();
        b.set("urls", "http://[::1]:80/x").unwrap();
        assert_eq!(
            b.build().unwrap().urls,
            ["http://a:8076", "http://b:8076/", "http://[::1]:80/x"]
        );
        let many: Vec<String> = (0..70).map(|i| format!("http://10.0.0.{i}:8076")).collect();
        let mut b = ConfigBuilder::default();
        b.set("urls", &many.join(",")).unwrap();
        assert_eq!(b.build().unwrap().urls.len(), 70);
        // Empty lists, and one bad URL among good ones (each URL's own
        // rules are tested with `Address::parse`).
        for bad in ["", ",", "http://a:8076,ftp://b", "http://a,http://u:p@b"] {
            assert!(parse_urls(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes_timeouts_and_unknown_keys() {
        let mut b = ConfigBuilder::default();
        b.set("urls", "http://a").unwrap();
        b.set("device-size", "4M").unwrap();
        b.set("connect-timeout", "500ms").unwrap();
        b.set("io-timeout", "5").unwrap();
        b.set("stall-timeout", "200ms").unwrap();
        b.set("failover-window", "0").unwrap();
        b.set("pool-size", "4").unwrap();
        b.set("status-file", "/run/multihttp/vol1.status").unwrap();
        let c = b.build().unwrap();
        assert_eq!(
            c.status_file.as_deref(),
            Some(std::path::Path::new("/run/multihttp/vol1.status"))
        );
        assert_eq!(c.device_size, Some(4 << 20));
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.io_timeout, Duration::from_secs(5));
        assert_eq!(c.stall_timeout, Duration::from_millis(200));
        assert!(b.set("stall-timeout", "0").is_err());
        assert_eq!(c.failover_window, Duration::ZERO);
        assert_eq!(c.pool_size, PoolSize::Fixed(4));
        assert!(b.set("device-size", "0").is_err());
        assert!(b.set("io-timeout", "0").is_err());
        assert!(b.set("pool-size", "0").is_err());
        assert!(b.set("status-file", "").is_err());
        let e = b.set("timeout", "3").unwrap_err();
        assert!(e.to_string().contains("unknown parameter"), "{e}");
        let mut b = ConfigBuilder::default();
        b.set("urls", "http://a").unwrap();
        b.set_secret("password", Secret::new(b"x")).unwrap();
        assert!(b.build().is_err(), "password without user accepted");
        assert!(
            b.set("password", "x").is_err(),
            "password taken as plain text"
        );
    }

    #[test]
    fn urls_with_credentials_are_refused_without_echoing_them() {
        for url in [
            "http://u:hunter2@b:80/",
            "http://u:hun/ter2@b",
            "u:hunter2@b",
        ] {
            let e = parse_urls(url).unwrap_err().to_string();
            assert!(!e.contains("hunter2") && e.contains("<redacted>@b"), "{e}");
        }
        assert_eq!(redact_userinfo("http://a:80/x"), "http://a:80/x");
    }

    #[test]
    fn every_key_of_the_table_is_taken_and_help_names_it() {
        let help = plugin_glue::help::render(&PLUGIN);
        let mut b = ConfigBuilder::default();
        for key in PLUGIN.keys {
            assert!(
                help.contains(&format!("{}=", key.name)),
                "{} missing in help",
                key.name
            );
            // A key of the table that `set` does not know would be refused
            // as unknown although the help lists it.
            if !key.secret {
                let e = b.set(key.name, "").err().map(|e| e.to_string());
                assert!(
                    !e.as_deref().unwrap_or("").contains("unknown parameter"),
                    "{}: {e:?}",
                    key.name
                );
            }
        }
    }

    #[test]
    fn the_default_pool_grows_with_the_clients_up_to_its_cap() {
        let auto = PoolSize::PerClientConnection;
        assert_eq!(auto.bound(0), DEFAULT_POOL_SIZE);
        assert_eq!(auto.bound(1), 16);
        assert_eq!(auto.bound(3), 48);
        assert_eq!(auto.bound(4), DEFAULT_POOL_MAX);
        assert_eq!(auto.bound(100), DEFAULT_POOL_MAX);
        assert_eq!(PoolSize::Fixed(2).bound(100), 2);
    }
}
