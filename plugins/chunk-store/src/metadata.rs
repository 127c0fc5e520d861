//! The metadata that makes a directory or a bucket prefix a disk: its size,
//! chunk size and format version. Created once (with `size=`), then it is
//! the truth: a conflicting `size=` or `chunk-size=` is refused rather than
//! silently reshaping someone's disk. Growing is allowed only when asked.

use crate::geometry::{Geometry, DEFAULT_CHUNK_SIZE};

/// Version of the chunk layout and of this file's format.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub size: u64,
    pub chunk_size: u64,
}

/// What the user asked for on the command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request {
    pub size: Option<u64>,
    pub chunk_size: Option<u64>,
    /// `size=` larger than the stored size grows the disk.
    pub allow_grow: bool,
}

impl Metadata {
    pub fn geometry(&self) -> Result<Geometry, String> {
        Geometry::new(self.size, self.chunk_size)
    }

    /// The stored form: a few `key=value` lines, readable by an operator.
    pub fn to_bytes(&self) -> Vec<u8> {
        format!(
            "# chunk-store disk metadata: do not edit\nformat=chunk-store\nversion={FORMAT_VERSION}\nsize={}\nchunk-size={}\n",
            self.size, self.chunk_size
        )
        .into_bytes()
    }

    pub fn parse(bytes: &[u8]) -> Result<Metadata, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "metadata is not text".to_owned())?;
        let (mut format, mut version, mut size, mut chunk_size) = (None, None, None, None);
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("metadata line {line:?} is not key=value"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("metadata {key}={value:?} is not a number"))
            };
            match key {
                "format" => format = Some(value.to_owned()),
                "version" => version = Some(number()?),
                "size" => size = Some(number()?),
                "chunk-size" => chunk_size = Some(number()?),
                _ => return Err(format!("unknown metadata key {key:?}")),
            }
        }
        if format.as_deref() != Some("chunk-store") {
            return Err("not chunk-store metadata (format= missing or different)".into());
        }
        match version {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "metadata version {v} is not supported (this program reads version {FORMAT_VERSION})"
                ))
            }
            None => return Err("metadata has no version".into()),
        }
        let metadata = Metadata {
            size: size.ok_or("metadata has no size")?,
            chunk_size: chunk_size.ok_or("metadata has no chunk-size")?,
        };
        metadata.geometry()?;
        Ok(metadata)
    }
}

/// Decides the disk's metadata from what is stored (if anything) and what
/// was asked. Returns it and whether it must be (re)written.
pub fn reconcile(stored: Option<Metadata>, request: &Request) -> Result<(Metadata, bool), String> {
    let Some(stored) = stored else {
        let size = request
            .size
            .ok_or("the disk does not exist yet: give size= to create it")?;
        let metadata = Metadata {
            size,
            chunk_size: request.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE),
        };
        metadata.geometry()?;
        return Ok((metadata, true));
    };
    if let Some(chunk_size) = request.chunk_size {
        if chunk_size != stored.chunk_size {
            return Err(format!(
                "chunk-size={chunk_size} conflicts with the disk's chunk size {} \
                 (chunk size cannot change; drop chunk-size= to use the disk)",
                stored.chunk_size
            ));
        }
    }
    match request.size {
        None => Ok((stored, false)),
        Some(size) if size == stored.size => Ok((stored, false)),
        Some(size) if size > stored.size && request.allow_grow => {
            Ok((Metadata { size, ..stored }, true))
        }
        Some(size) if size > stored.size => Err(format!(
            "size={size} conflicts with the disk's size {} (add grow=true to grow it)",
            stored.size
        )),
        Some(size) => Err(format!(
            "size={size} is smaller than the disk's size {}: shrinking is refused \
             (it would drop data)",
            stored.size
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(size: Option<u64>, chunk_size: Option<u64>, allow_grow: bool) -> Request {
        Request {
            size,
            chunk_size,
            allow_grow,
        }
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let m = Metadata {
            size: 1 << 30,
            chunk_size: 1 << 20,
        };
        assert_eq!(Metadata::parse(&m.to_bytes()), Ok(m));
        assert!(
            Metadata::parse(b"format=chunk-store\nversion=2\nsize=1\nchunk-size=4096\n").is_err()
        );
        assert!(Metadata::parse(b"size=4096\n").is_err());
        assert!(
            Metadata::parse(b"format=chunk-store\nversion=1\nsize=4096\nchunk-size=1000\n")
                .is_err()
        );
        assert!(Metadata::parse(b"\xff").is_err());
    }

    #[test]
    fn creation_needs_a_size_and_uses_the_default_chunk() {
        assert!(reconcile(None, &req(None, None, false)).is_err());
        let (m, write) = reconcile(None, &req(Some(1 << 30), None, false)).unwrap();
        assert_eq!(m.chunk_size, DEFAULT_CHUNK_SIZE);
        assert!(write);
    }

    #[test]
    fn stored_metadata_is_the_truth() {
        let metadata = Metadata {
            size: 1 << 30,
            chunk_size: 1 << 20,
        };
        let stored = Some(metadata);
        assert_eq!(
            reconcile(stored, &req(None, None, false)),
            Ok((metadata, false))
        );
        assert!(reconcile(stored, &req(None, Some(4096), false)).is_err());
        assert!(reconcile(stored, &req(Some(2 << 30), None, false)).is_err());
        assert!(reconcile(stored, &req(Some(1 << 29), None, true)).is_err());
        let (grown, write) = reconcile(stored, &req(Some(2 << 30), None, true)).unwrap();
        assert_eq!(grown.size, 2 << 30);
        assert!(write);
    }
}
