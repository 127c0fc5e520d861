//! The plugin's keys' validation (which keys exist, and their help text,
//! are in [`crate::keys`]).

use std::path::PathBuf;

use chunk_store::{LeaseSettings, MetadataRequest};
use plugin_glue::config::{parse_bool, parse_size, Builder, ConfigError};

use crate::keys::PLUGIN;

#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    dir: Option<PathBuf>,
    request: MetadataRequest,
    lease: LeaseSettings,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub dir: PathBuf,
    pub request: MetadataRequest,
    pub lease: LeaseSettings,
}

impl Builder for ConfigBuilder {
    fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        if let Some(result) = chunk_store::lease::keys::set(&mut self.lease, key, value) {
            return result;
        }
        match key {
            "dir" => self.dir = Some(PathBuf::from(value)),
            "size" => self.request.size = Some(parse_size(key, value)?),
            "chunk-size" => self.request.chunk_size = Some(parse_size(key, value)?),
            "grow" => self.request.allow_grow = parse_bool(key, value)?,
            _ => return Err(PLUGIN.unknown_key(key)),
        }
        Ok(())
    }
}

impl ConfigBuilder {
    pub fn build(self) -> Result<Config, ConfigError> {
        let dir = self
            .dir
            .ok_or_else(|| ConfigError::new("dir", "is required"))?;
        Ok(Config {
            dir,
            request: self.request,
            lease: self.lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_parsed_and_unknown_ones_refused() {
        let mut b = ConfigBuilder::default();
        b.set("dir", "/tmp/x").unwrap();
        b.set("size", "1G").unwrap();
        b.set("chunk-size", "64K").unwrap();
        b.set("grow", "true").unwrap();
        let e = b.set("sise", "1").unwrap_err().to_string();
        assert!(
            e.contains("known: dir, size, chunk-size, grow, lease-time, force"),
            "{e}"
        );
        b.set("force", "yes").unwrap();
        assert!(b.set("size", "lots").is_err());
        let c = b.build().unwrap();
        assert_eq!(c.request.size, Some(1 << 30));
        assert_eq!(c.request.chunk_size, Some(64 << 10));
        assert!(c.request.allow_grow);
        assert!(c.lease.force);
        assert!(ConfigBuilder::default().build().is_err());
    }
}
