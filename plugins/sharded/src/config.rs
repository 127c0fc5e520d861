//! The plugin's keys, their validation and the `config_help` text.

use std::path::PathBuf;

use chunk_store::MetadataRequest;
use plugin_glue::config::{parse_bool, parse_size, Builder, ConfigError};

pub const HELP: &str = "\
dir=DIR               (required) Directory holding the disk: metadata file
                      and chunk files. Created with size= on first use.
size=SIZE             Disk size (nbdkit size syntax: 1G, 512M...). Needed to
                      create the disk; afterwards the stored size is the
                      truth and a different size= is refused.
chunk-size=SIZE       Chunk size when creating (power of two, 4K to 1G;
                      default 4M). A different value for an existing disk
                      is refused.
grow=BOOL             Allow size= larger than the stored size to grow the
                      disk (default false).";

#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    dir: Option<PathBuf>,
    request: MetadataRequest,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub dir: PathBuf,
    pub request: MetadataRequest,
}

impl Builder for ConfigBuilder {
    fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "dir" => self.dir = Some(PathBuf::from(value)),
            "size" => self.request.size = Some(parse_size(key, value)?),
            "chunk-size" => self.request.chunk_size = Some(parse_size(key, value)?),
            "grow" => self.request.allow_grow = parse_bool(key, value)?,
            _ => {
                return Err(ConfigError::new(
                    key,
                    "unknown key (keys: dir, size, chunk-size, grow)",
                ))
            }
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
        assert!(b.set("sise", "1").is_err());
        assert!(b.set("size", "lots").is_err());
        let c = b.build().unwrap();
        assert_eq!(c.request.size, Some(1 << 30));
        assert_eq!(c.request.chunk_size, Some(64 << 10));
        assert!(c.request.allow_grow);
        assert!(ConfigBuilder::default().build().is_err());
    }
}
