//! Checking a server's replies: what a usable HEAD looks like, which read
//! replies can be trusted, and what an HTTP error status means for the
//! request (fail over, or give up).
//!
//! Pure functions over status codes and header values, so every rule is
//! unit-tested without a network.

use http_disk_protocol::{ByteRange, ContentRange, Feature, FeatureSet};

use crate::error::{Attempt, Error};

/// Which server program answers: they differ in what NBD operations they
/// can do efficiently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// The old Python server: no extensions, every PUT synced before 200.
    Old,
    /// `http-disk-server`: advertises its extensions in `X-Disk-Features`.
    New,
}

/// What a HEAD probe learned about a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub size: u64,
    pub generation: Generation,
    pub features: FeatureSet,
}

impl ServerInfo {
    pub fn has(&self, feature: Feature) -> bool {
        self.generation == Generation::New && self.features.has(feature)
    }

    /// For logs: `4194304 bytes, new server (flush, trim, zero, writeback)`.
    pub fn describe(&self) -> String {
        match self.generation {
            Generation::Old => format!("{} bytes, old server (no extensions)", self.size),
            Generation::New => format!("{} bytes, new server ({})", self.size, self.features),
        }
    }
}

/// Why a probe found no usable server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// The server holds a disk of another size: another disk, never used
    /// (logged once per server, see `Cluster::note_probe`).
    WrongSize { size: u64, expected: u64 },
    /// Down, refusing, or a reply we cannot use: the next probe may do.
    Unusable(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The words operators and tests look for in the log.
            ProbeError::WrongSize { size, expected } => write!(
                f,
                "WRONG DISK SIZE: the server has {size} bytes, expected {expected}; never using it"
            ),
            ProbeError::Unusable(why) => f.write_str(why),
        }
    }
}

impl From<String> for ProbeError {
    fn from(why: String) -> ProbeError {
        ProbeError::Unusable(why)
    }
}

/// Checks a HEAD reply: 200, `Accept-Ranges: bytes`, a size, and (when
/// known) the expected size. A server of another size serves another disk:
/// writing to it would be worse than failing.
pub fn check_head(
    status: u16,
    accept_ranges: Option<&str>,
    content_length: Option<&str>,
    features: Option<&str>,
    expected_size: Option<u64>,
) -> Result<ServerInfo, ProbeError> {
    if status != 200 {
        return Err(format!("HEAD answered {status}").into());
    }
    if !accept_ranges.is_some_and(|v| v.trim().eq_ignore_ascii_case("bytes")) {
        return Err(format!("HEAD has no 'Accept-Ranges: bytes' (got {accept_ranges:?})").into());
    }
    let size = content_length
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("HEAD has no usable Content-Length ({content_length:?})"))?;
    if size == 0 {
        return Err(ProbeError::Unusable(
            "the server's disk is empty (size 0)".into(),
        ));
    }
    if let Some(expected) = expected_size {
        if size != expected {
            return Err(ProbeError::WrongSize { size, expected });
        }
    }
    let (generation, features) = match features {
        Some(value) => (Generation::New, FeatureSet::parse(value)),
        None => (Generation::Old, FeatureSet::empty()),
    };
    Ok(ServerInfo {
        size,
        generation,
        features,
    })
}

/// Checks the head of a read reply before its body is read: only a 206
/// whose `Content-Range` starts where we asked. The end is not checked
/// (the old server sends a wrong one); the body length is, by the caller,
/// against `Content-Length` here and the bytes actually received.
pub fn check_read_reply(
    status: u16,
    content_range: Option<&str>,
    content_length: Option<&str>,
    range: ByteRange,
) -> Result<(), Attempt> {
    if status != 206 {
        // A 200 carries the whole disk (Range ignored): not what we asked.
        return Err(Attempt::Failover(format!(
            "GET {range} answered {status}, expected 206"
        )));
    }
    let value = content_range
        .ok_or_else(|| Attempt::Failover(format!("GET {range}: 206 without Content-Range")))?;
    let start = ContentRange::parse_start(value)
        .map_err(|e| Attempt::Failover(format!("GET {range}: bad Content-Range {value:?}: {e}")))?;
    if start != range.start() {
        return Err(Attempt::Failover(format!(
            "GET {range}: reply starts at {start} (Content-Range {value:?}): misplaced data refused"
        )));
    }
    if let Some(length) = content_length {
        if length.trim().parse::<u64>().ok() != Some(range.len()) {
            return Err(Attempt::Failover(format!(
                "GET {range}: Content-Length {length:?}, expected {}",
                range.len()
            )));
        }
    }
    Ok(())
}

/// What an error status (or an unexpected success code) means.
/// `reason` is the server's `X-Disk-Error` or status text, for the log.
pub fn classify_status(what: &str, status: u16, reason: &str) -> Attempt {
    let why = format!("{what} answered {status} {reason}");
    match status {
        // Read-only server: another server of the same disk would be too.
        405 => Attempt::Fatal(Error::ReadOnly(why)),
        // 5xx/503: this server cannot serve now (DRBD secondary, overload).
        // 408/429: try again elsewhere. 416: the server's size differs
        // from ours, so it is not our disk (nbdkit checked our bounds).
        // 401/403/404: this server's access policy or path differs from
        // the others'; another server may well accept us.
        // 3xx: we never follow redirects (they could lead to another
        // disk); 1xx/2xx other than expected: broken server.
        401 | 403 | 404 | 408 | 416 | 429 | 500..=599 | 100..=399 => Attempt::Failover(why),
        // Other 4xx: the request itself was refused; another server
        // running the same code would refuse it the same way.
        _ => Attempt::Fatal(Error::Rejected(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, len: u64) -> ByteRange {
        ByteRange::from_offset_len(start, len).unwrap()
    }

    #[test]
    fn head_generations_and_sizes() {
        let new = check_head(
            200,
            Some("bytes"),
            Some("4194304"),
            Some("flush, trim, zero, writeback"),
            Some(4194304),
        )
        .unwrap();
        assert_eq!(new.generation, Generation::New);
        assert!(new.has(Feature::Flush) && new.has(Feature::Writeback));
        assert!(!new.has(Feature::Readonly));
        let old = check_head(200, Some("bytes"), Some("4194304"), None, None).unwrap();
        assert_eq!(old.generation, Generation::Old);
        assert!(!old.has(Feature::Flush));
        // An empty features header is still a new server, without extensions.
        let bare = check_head(200, Some("bytes"), Some("10"), Some(""), None).unwrap();
        assert_eq!(bare.generation, Generation::New);
    }

    #[test]
    fn head_refusals() {
        let e = check_head(200, Some("bytes"), Some("4096"), None, Some(8192)).unwrap_err();
        assert_eq!(
            e,
            ProbeError::WrongSize {
                size: 4096,
                expected: 8192
            }
        );
        let e = e.to_string();
        assert!(e.contains("WRONG DISK SIZE"), "{e}");
        assert!(check_head(503, Some("bytes"), Some("4096"), None, None).is_err());
        assert!(check_head(200, None, Some("4096"), None, None).is_err());
        assert!(check_head(200, Some("none"), Some("4096"), None, None).is_err());
        assert!(check_head(200, Some("bytes"), None, None, None).is_err());
        assert!(check_head(200, Some("bytes"), Some("x"), None, None).is_err());
        assert!(check_head(200, Some("bytes"), Some("0"), None, None).is_err());
    }

    #[test]
    fn read_replies() {
        let range = r(1000, 100);
        assert_eq!(
            check_read_reply(206, Some("bytes 1000-1099/4096"), Some("100"), range),
            Ok(())
        );
        // The old server's wrong end is accepted, so is a missing length.
        assert_eq!(
            check_read_reply(206, Some("bytes 1000-1100/4096"), None, range),
            Ok(())
        );
        for (status, cr, cl) in [
            (200, Some("bytes 1000-1099/4096"), Some("100")),
            (206, Some("bytes 0-99/4096"), Some("100")),
            (206, Some("bytes 1001-1100/4096"), Some("100")),
            (206, None, Some("100")),
            (206, Some("garbage"), Some("100")),
            (206, Some("bytes 1000-1099/4096"), Some("99")),
        ] {
            assert!(
                matches!(
                    check_read_reply(status, cr, cl, range),
                    Err(Attempt::Failover(_))
                ),
                "{status} {cr:?} {cl:?} accepted"
            );
        }
    }

    #[test]
    fn statuses() {
        assert!(matches!(
            classify_status("PUT", 405, ""),
            Attempt::Fatal(Error::ReadOnly(_))
        ));
        for s in [500, 502, 503, 504, 401, 403, 404, 408, 416, 429, 301] {
            assert!(
                matches!(classify_status("GET", s, ""), Attempt::Failover(_)),
                "{s}"
            );
        }
        for s in [400, 411, 413] {
            assert!(
                matches!(
                    classify_status("GET", s, ""),
                    Attempt::Fatal(Error::Rejected(_))
                ),
                "{s}"
            );
        }
    }
}
