//! The plugin's keys' validation (which keys exist, and their help text,
//! are in [`crate::keys`]).
//! Credentials never have to be on the command line: they come from the
//! environment or from a file/stdin, and are never logged.

use std::path::PathBuf;
use std::time::Duration;

use chunk_store::writeback::keys::CacheRequest;
use chunk_store::{LeaseSettings, MetadataRequest};
use plugin_glue::config::{
    parse_bool, parse_count, parse_duration, parse_size, Builder, ConfigError,
};
use plugin_glue::Secret;

use crate::credentials::{KeyPair, KeySource};
use crate::keys::PLUGIN;

#[derive(Clone, Debug)]
pub struct Config {
    pub endpoint: String,
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub virtual_host: bool,
    pub request: MetadataRequest,
    /// `None`: anonymous requests.
    pub keys: Option<KeySource>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub retry_window: Duration,
    pub cafile: Option<PathBuf>,
    pub lease: LeaseSettings,
    pub cache: CacheRequest,
}

#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    endpoint: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    virtual_host: bool,
    request: MetadataRequest,
    access_key: Option<String>,
    secret_key: Option<Secret>,
    secret_file: Option<PathBuf>,
    session_token: Option<Secret>,
    token_file: Option<PathBuf>,
    credentials_file: Option<PathBuf>,
    profile: Option<String>,
    pool_size: Option<usize>,
    connect_timeout: Option<Duration>,
    io_timeout: Option<Duration>,
    retry_window: Option<Duration>,
    cafile: Option<PathBuf>,
    lease: LeaseSettings,
    cache: CacheRequest,
}

impl Builder for ConfigBuilder {
    /// Every key except `secret-key` and `session-token` (see
    /// `set_secret`).
    fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        if let Some(result) = chunk_store::lease::keys::set(&mut self.lease, key, value) {
            return result;
        }
        if let Some(result) = chunk_store::writeback::keys::set(&mut self.cache, key, value) {
            return result;
        }
        match key {
            "endpoint" => {
                if !(value.starts_with("http://") || value.starts_with("https://")) {
                    return Err(ConfigError::new(key, "must start with http:// or https://"));
                }
                // The value is not echoed: what precedes an '@' may be a
                // key pair typed into the URL.
                if value.contains('@') {
                    return Err(ConfigError::new(
                        key,
                        "no credentials in the URL: use access-key= and secret-key=+FILE",
                    ));
                }
                self.endpoint = Some(value.to_owned())
            }
            "bucket" => self.bucket = Some(value.to_owned()),
            "prefix" => self.prefix = Some(value.to_owned()),
            "region" => self.region = Some(value.to_owned()),
            "addressing" => {
                self.virtual_host = match value {
                    "path" => false,
                    "virtual" => true,
                    _ => return Err(ConfigError::new(key, "must be path or virtual")),
                }
            }
            "size" => self.request.size = Some(parse_size(key, value)?),
            "chunk-size" => self.request.chunk_size = Some(parse_size(key, value)?),
            "grow" => self.request.allow_grow = parse_bool(key, value)?,
            "access-key" => self.access_key = Some(value.to_owned()),
            "credentials-file" if value.is_empty() => {
                return Err(ConfigError::new(key, "empty path"))
            }
            "credentials-file" => self.credentials_file = Some(PathBuf::from(value)),
            "profile" => self.profile = Some(value.to_owned()),
            // 0: a new connection per request (see keys.rs).
            "pool-size" if value.trim() == "0" => self.pool_size = Some(0),
            "pool-size" => self.pool_size = Some(parse_count(key, value, 1024)?),
            "connect-timeout" => self.connect_timeout = Some(parse_duration(key, value)?),
            "io-timeout" => self.io_timeout = Some(parse_duration(key, value)?),
            "retry-window" => self.retry_window = Some(parse_duration(key, value)?),
            "cafile" if value.is_empty() => return Err(ConfigError::new(key, "empty path")),
            "cafile" => self.cafile = Some(PathBuf::from(value)),
            _ => return Err(PLUGIN.unknown_key(key)),
        }
        Ok(())
    }

    /// `secret-key` and `session-token`, already read with nbdkit's
    /// password syntax.
    fn set_secret(&mut self, key: &str, value: Secret) -> Result<(), ConfigError> {
        if value.expose_str().is_err() {
            return Err(ConfigError::new(key, "is not UTF-8 text"));
        }
        match key {
            "secret-key" => self.secret_key = Some(value),
            "session-token" => self.session_token = Some(value),
            _ => return Err(PLUGIN.unknown_key(key)),
        }
        Ok(())
    }

    /// The `+FILE` of a secret key: read again when rotated.
    fn secret_file(&mut self, key: &str, path: Option<&std::path::Path>) {
        let path = path.map(std::path::Path::to_path_buf);
        match key {
            "secret-key" => self.secret_file = path,
            "session-token" => self.token_file = path,
            _ => {}
        }
    }
}

impl ConfigBuilder {
    /// `env` takes an environment variable (the plugin passes
    /// [`plugin_glue::secret::take_env`], which also removes it from the
    /// process; a parameter for tests). Variables are only read for what
    /// the keys did not give.
    pub fn build(self, env: impl Fn(&str) -> Option<Secret>) -> Result<Config, ConfigError> {
        let keys = self.key_source(&env)?;
        let nonzero = |key: &str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::new(key, "must be greater than 0"))
            } else {
                Ok(d)
            }
        };
        Ok(Config {
            endpoint: self
                .endpoint
                .ok_or_else(|| ConfigError::new("endpoint", "is required"))?,
            bucket: self
                .bucket
                .ok_or_else(|| ConfigError::new("bucket", "is required"))?,
            prefix: self.prefix.unwrap_or_default(),
            region: self.region.unwrap_or_else(|| "us-east-1".into()),
            virtual_host: self.virtual_host,
            request: self.request,
            keys,
            pool_size: self.pool_size.unwrap_or(16),
            connect_timeout: nonzero(
                "connect-timeout",
                self.connect_timeout.unwrap_or(Duration::from_secs(5)),
            )?,
            io_timeout: nonzero(
                "io-timeout",
                self.io_timeout.unwrap_or(Duration::from_secs(30)),
            )?,
            retry_window: self.retry_window.unwrap_or(Duration::from_secs(30)),
            cafile: self.cafile,
            lease: self.lease,
            cache: self.cache.clone(),
        })
    }
}

impl ConfigBuilder {
    /// Where the key pair comes from: the first source of
    /// [`crate::credentials`]'s list that is given.
    fn key_source(
        &self,
        env: &impl Fn(&str) -> Option<Secret>,
    ) -> Result<Option<KeySource>, ConfigError> {
        let given = self.access_key.is_some() || self.secret_key.is_some();
        if given && self.credentials_file.is_some() {
            return Err(ConfigError::new(
                "credentials-file",
                "either access-key= and secret-key= or credentials-file=, not both",
            ));
        }
        let text = |name: &str| {
            env(name).map(|value| String::from_utf8_lossy(value.expose()).into_owned())
        };
        let shared_file = |path: PathBuf| {
            let profile = self
                .profile
                .clone()
                .or_else(|| text("AWS_PROFILE"))
                .unwrap_or_else(|| "default".into());
            KeySource::shared_file(path, profile)
                .map(Some)
                .map_err(|e| ConfigError::new("credentials-file", e))
        };
        if let Some(path) = &self.credentials_file {
            return shared_file(path.clone());
        }
        let access_key = self
            .access_key
            .clone()
            .or_else(|| text("AWS_ACCESS_KEY_ID"));
        let secret_key = self
            .secret_key
            .clone()
            .or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        match (access_key, secret_key) {
            (Some(access_key), Some(secret_key)) => {
                if secret_key.expose_str().is_err() {
                    return Err(ConfigError::new("secret-key", "is not UTF-8 text"));
                }
                let session_token = self
                    .session_token
                    .clone()
                    .or_else(|| env("AWS_SESSION_TOKEN"))
                    .filter(|token| token.expose_str().is_ok());
                Ok(Some(KeySource::Given {
                    keys: KeyPair {
                        access_key,
                        secret_key,
                        session_token,
                    },
                    secret_file: self.secret_file.clone(),
                    token_file: self.token_file.clone(),
                }))
            }
            (None, None) => match text("AWS_SHARED_CREDENTIALS_FILE") {
                Some(path) if !path.is_empty() => shared_file(PathBuf::from(path)),
                _ => Ok(None),
            },
            _ => Err(ConfigError::new(
                "secret-key",
                "an access key and a secret key go together (keys or AWS_* variables)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<Secret> {
        None
    }

    #[test]
    fn cafile() {
        let mut b = ConfigBuilder::default();
        b.set("endpoint", "https://127.0.0.1:3901").unwrap();
        b.set("bucket", "disks").unwrap();
        assert_eq!(b.clone().build(no_env).unwrap().cafile, None);
        assert!(b.set("cafile", "").is_err());
        b.set("cafile", "/etc/ca.pem").unwrap();
        let c = b.build(no_env).unwrap();
        assert_eq!(c.cafile, Some(PathBuf::from("/etc/ca.pem")));
        let help = plugin_glue::help::render(&PLUGIN);
        assert!(help.contains("cafile=") && PLUGIN.key("cafile").is_some());
    }

    #[test]
    fn required_keys_defaults_and_refusals() {
        let mut b = ConfigBuilder::default();
        assert!(b.set("endpoint", "ftp://x").is_err());
        let e = b.set("endpoint", "http://AK:hunter2@h").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        b.set("endpoint", "http://127.0.0.1:3900").unwrap();
        assert!(b.clone().build(no_env).is_err(), "bucket is required");
        b.set("bucket", "disks").unwrap();
        assert!(b.set("addressing", "sideways").is_err());
        let e = b.set("colour", "blue").unwrap_err().to_string();
        assert!(
            e.contains("unknown parameter") && e.contains("retry-window"),
            "{e}"
        );
        let c = b.clone().build(no_env).unwrap();
        assert_eq!(c.region, "us-east-1");
        assert!(!c.virtual_host);
        assert!(c.keys.is_none(), "anonymous");
    }

    /// The key pair a configuration signs with.
    fn keys(c: &Config) -> &KeyPair {
        match c.keys.as_ref().expect("a key pair") {
            KeySource::Given { keys, .. } | KeySource::SharedFile { keys, .. } => keys,
        }
    }

    #[test]
    fn credentials_come_from_keys_or_the_environment_in_pairs() {
        let mut b = ConfigBuilder::default();
        b.set("endpoint", "https://s3.example").unwrap();
        b.set("bucket", "b").unwrap();
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some(Secret::new(b"AK")),
            "AWS_SECRET_ACCESS_KEY" => Some(Secret::new(b"SK")),
            _ => None,
        };
        let c = b.clone().build(env).unwrap();
        assert_eq!(keys(&c).access_key, "AK");
        assert_eq!(keys(&c).secret_key.expose(), b"SK");
        assert!(format!("{c:?}").contains("secret_key: <redacted>"), "{c:?}");
        let mut given = b.clone();
        given.set("access-key", "AK1").unwrap();
        given.secret_file("secret-key", Some(std::path::Path::new("/run/sk")));
        given.set_secret("secret-key", Secret::new(b"SK1")).unwrap();
        assert!(
            given.set("secret-key", "SK1").is_err(),
            "secret as plain text"
        );
        assert!(given
            .clone()
            .set_secret("secret-key", Secret::new(b"\xff"))
            .is_err());
        let c = given.build(env).unwrap();
        assert_eq!(keys(&c).access_key, "AK1");
        assert_eq!(keys(&c).secret_key.expose(), b"SK1");
        assert!(matches!(
            &c.keys,
            Some(KeySource::Given { secret_file: Some(f), token_file: None, .. })
                if f == std::path::Path::new("/run/sk")
        ));
        let with_token = |name: &str| match name {
            "AWS_SESSION_TOKEN" => Some(Secret::new(b"TOKEN")),
            _ => env(name),
        };
        let c = b.clone().build(with_token).unwrap();
        assert_eq!(
            keys(&c).session_token.as_ref().map(Secret::expose),
            Some(&b"TOKEN"[..])
        );
        let mut token_key = b.clone();
        token_key
            .set_secret("session-token", Secret::new(b"T2"))
            .unwrap();
        let c = token_key.build(with_token).unwrap();
        assert_eq!(
            keys(&c).session_token.as_ref().map(Secret::expose),
            Some(&b"T2"[..]),
            "the key wins over the environment"
        );
        let mut half = b.clone();
        half.set("access-key", "AK2").unwrap();
        assert!(half.build(no_env).is_err());
    }

    #[test]
    fn a_shared_credentials_file_by_key_or_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "[default]\naws_access_key_id=AKD\naws_secret_access_key=SKD\n\
             [ops]\naws_access_key_id=AKO\naws_secret_access_key=SKO\n",
        )
        .unwrap();
        let mut b = ConfigBuilder::default();
        b.set("endpoint", "http://127.0.0.1:3900").unwrap();
        b.set("bucket", "b").unwrap();
        let mut by_key = b.clone();
        by_key
            .set("credentials-file", &path.display().to_string())
            .unwrap();
        assert_eq!(
            keys(&by_key.clone().build(no_env).unwrap()).access_key,
            "AKD"
        );
        let ops_env = |name: &str| (name == "AWS_PROFILE").then(|| Secret::new(b"ops"));
        assert_eq!(
            keys(&by_key.clone().build(ops_env).unwrap()).access_key,
            "AKO"
        );
        let mut missing = by_key.clone();
        missing.set("profile", "nobody").unwrap();
        let e = missing.build(no_env).unwrap_err().to_string();
        assert!(
            e.contains("[nobody]") && e.contains("no such profile"),
            "{e}"
        );
        let mut both = by_key.clone();
        both.set("access-key", "AK").unwrap();
        assert!(both.build(no_env).is_err(), "two sources at once");
        let file_env = |name: &str| match name {
            "AWS_SHARED_CREDENTIALS_FILE" => {
                Some(Secret::new(path.display().to_string().as_bytes()))
            }
            _ => None,
        };
        assert_eq!(keys(&b.clone().build(file_env).unwrap()).access_key, "AKD");
        assert!(b.build(no_env).unwrap().keys.is_none(), "anonymous");
    }
}
