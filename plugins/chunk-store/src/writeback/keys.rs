//! The cache's keys (`cache-dir=`, `cache-size=`): their table entries,
//! listed by the plugins that offer a cache (s3), and their parsing.

use std::path::PathBuf;

use plugin_glue::config::{parse_size, ConfigError};
use plugin_glue::keys::Key;

/// Default `cache-size=`.
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// Smallest `cache-size=`.
pub const MIN_SIZE: u64 = 16 << 20;

pub const CACHE_DIR: Key = Key::new(
    "cache-dir",
    "DIR",
    "Local write-back cache directory (default: none, every write goes to \
     the store before it is acknowledged).",
    "Writes are acknowledged once appended to a journal in DIR, made \
     durable there (fdatasync) by FUA and flush, and uploaded in the \
     background, the writes into one chunk coalesced into one object. \
     Reads of data not yet uploaded come from the journal. After a crash \
     the journal is replayed to the store before the disk is served; only \
     the writer that made it may replay it (if another writer held the \
     disk meanwhile, the start is refused rather than putting older data \
     over newer). A clean stop uploads everything first (up to 30s). DIR \
     serves one disk and one process; put it on a local file system. \
     Until uploaded, writes exist only in DIR: losing that disk loses \
     them.",
);

pub const CACHE_SIZE: Key = Key::new(
    "cache-size",
    "SIZE",
    "Most bytes the cache's journal holds (default 1G, at least 16M and 4 \
     chunks).",
    "A writer that would exceed it waits until uploads free space \
     (backpressure): writes are slowed to the store's pace, never failed.",
);

/// `cache-dir=` and `cache-size=` as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheRequest {
    pub dir: Option<PathBuf>,
    pub size: u64,
}

impl Default for CacheRequest {
    fn default() -> CacheRequest {
        CacheRequest {
            dir: None,
            size: DEFAULT_SIZE,
        }
    }
}

impl CacheRequest {
    /// The size checked against the disk's chunk size (known once the
    /// disk is open).
    pub fn check_size(&self, chunk_size: u64) -> Result<(), ConfigError> {
        if self.size < MIN_SIZE.max(4 * chunk_size) {
            return Err(ConfigError::new(
                "cache-size",
                format!(
                    "{} bytes is too small: at least {} (16M and 4 chunks of {chunk_size})",
                    self.size,
                    MIN_SIZE.max(4 * chunk_size)
                ),
            ));
        }
        Ok(())
    }
}

/// Sets `key` if it is a cache key: `None` when it is not one.
pub fn set(request: &mut CacheRequest, key: &str, value: &str) -> Option<Result<(), ConfigError>> {
    let result = match key {
        "cache-dir" => {
            if value.is_empty() {
                Err(ConfigError::new(key, "must be a directory"))
            } else {
                request.dir = Some(PathBuf::from(value));
                Ok(())
            }
        }
        "cache-size" => parse_size(key, value).map(|size| request.size = size),
        _ => return None,
    };
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys() {
        let mut r = CacheRequest::default();
        assert!(set(&mut r, "size", "1").is_none());
        set(&mut r, "cache-dir", "/var/cache/vol1")
            .unwrap()
            .unwrap();
        set(&mut r, "cache-size", "64M").unwrap().unwrap();
        assert_eq!(r.dir, Some(PathBuf::from("/var/cache/vol1")));
        assert_eq!(r.size, 64 << 20);
        assert!(r.check_size(4 << 20).is_ok());
        let e = r.check_size(32 << 20).unwrap_err().to_string();
        assert!(e.contains("4 chunks"), "{e}");
        assert!(set(&mut r, "cache-dir", "").unwrap().is_err());
    }
}
