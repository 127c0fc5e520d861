//! The HTTP disk protocol shared by `http-disk-server` and the `multihttp`
//! nbdkit plugin: header names, feature names, byte-range types with
//! their parsing and formatting, and the decoder of chunked bodies
//! ([`chunked`]).
//!
//! This crate is pure data and parsing: no I/O of its own (the chunked
//! decoder reads from whatever `BufRead` or bytes it is handed), no HTTP
//! library. Both sides
//! depend on it so that the server and the plugin cannot drift apart on what
//! a header means. The protocol itself is documented in README.md
//! ("HTTP protocol"); the summary:
//!
//! | request | meaning |
//! |---|---|
//! | `HEAD` | size in `Content-Length`, `Accept-Ranges: bytes`, extensions in [`headers::FEATURES`] |
//! | `GET` + `Range: bytes=B-E` | read, `206` + `Content-Range: bytes B-E/size` |
//! | `PUT` + `Content-Range: bytes B-E/total` | write, durable before `200` unless [`headers::WRITEBACK`] |
//! | `POST` + [`headers::OP`]`: flush` | make every earlier write durable |
//! | `POST` + [`headers::OP`]`: trim` or `zero` + [`headers::RANGE`] | discard / zero a range |
//!
//! A server that is up but cannot serve the disk right now (DRBD secondary,
//! device missing) answers `503` with `Retry-After`, which clients treat as
//! "try another server".

use std::fmt;

pub mod chunked;
pub mod features;
pub mod headers;

pub use features::{Feature, FeatureSet};

/// RFC 9110 §5.6.2 `tchar`, what tokens (methods, header names, chunk
/// extension names) are made of: one definition for server and clients.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A non-empty, inclusive byte range `start..=last` as HTTP writes it.
///
/// Invariant: `start <= last`. HTTP ranges cannot express an empty range, so
/// neither can this type; callers with a zero-length request handle it
/// before building a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    start: u64,
    last: u64,
}

impl ByteRange {
    /// The range of `len` bytes starting at `start`; `None` when `len` is 0
    /// or the range would run past `u64::MAX`.
    pub fn from_offset_len(start: u64, len: u64) -> Option<ByteRange> {
        let last = start.checked_add(len.checked_sub(1)?)?;
        Some(ByteRange { start, last })
    }

    /// The range `start..=last`; `None` when `last < start`.
    pub fn from_inclusive(start: u64, last: u64) -> Option<ByteRange> {
        (start <= last).then_some(ByteRange { start, last })
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// The last byte of the range (inclusive), as HTTP writes it.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.last + 1
    }

    /// Number of bytes in the range (at least 1). Saturates for the one
    /// range (`0-18446744073709551615`) whose length does not fit in u64.
    pub fn len(&self) -> u64 {
        (self.last - self.start).saturating_add(1)
    }

    /// Always false: kept so clippy's `len_without_is_empty` is satisfied
    /// and callers can write generic code.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the whole range lies inside a device of `size` bytes.
    pub fn fits_in(&self, size: u64) -> bool {
        self.last < size
    }

    /// The value of a `Range` request header for this range: `bytes=B-E`.
    pub fn to_range_header(&self) -> String {
        format!("bytes={}-{}", self.start, self.last)
    }

    /// The value of a `Content-Range` header for this range in a device of
    /// `size` bytes: `bytes B-E/size`.
    pub fn to_content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.last, size)
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.last)
    }
}

/// Why a range header could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeError {
    /// Not of the form the header requires (bad unit, bad number, `E < B`…).
    Malformed(String),
    /// More than one range in one request: this server never sends
    /// `multipart/byteranges`, so it refuses such requests.
    MultipleRanges,
    /// Well-formed but not satisfiable on a device of this size.
    Unsatisfiable { size: u64 },
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeError::Malformed(why) => write!(f, "malformed range: {why}"),
            RangeError::MultipleRanges => write!(f, "multiple ranges are not supported"),
            RangeError::Unsatisfiable { size } => {
                write!(f, "range not satisfiable on a device of {size} bytes")
            }
        }
    }
}

impl std::error::Error for RangeError {}

/// A parsed `Range: bytes=...` request header, before it is resolved
/// against the device size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=B-E`
    FromTo { start: u64, last: u64 },
    /// `bytes=B-`: from B to the end of the device.
    From { start: u64 },
    /// `bytes=-N`: the last N bytes of the device.
    Suffix { len: u64 },
}

impl RangeSpec {
    /// Parses a `Range` header value (`bytes=B-E`, `bytes=B-`, `bytes=-N`).
    pub fn parse(value: &str) -> Result<RangeSpec, RangeError> {
        let spec = strip_unit(value.trim(), '=')?;
        if spec.contains(',') {
            return Err(RangeError::MultipleRanges);
        }
        let (first, second) = spec
            .split_once('-')
            .ok_or_else(|| RangeError::Malformed(format!("no '-' in {spec:?}")))?;
        let (first, second) = (first.trim(), second.trim());
        match (first.is_empty(), second.is_empty()) {
            (true, true) => Err(RangeError::Malformed("empty range".into())),
            (true, false) => Ok(RangeSpec::Suffix {
                len: parse_number(second)?,
            }),
            (false, true) => Ok(RangeSpec::From {
                start: parse_number(first)?,
            }),
            (false, false) => {
                let (start, last) = (parse_number(first)?, parse_number(second)?);
                if last < start {
                    return Err(RangeError::Malformed(format!(
                        "end {last} before start {start}"
                    )));
                }
                Ok(RangeSpec::FromTo { start, last })
            }
        }
    }

    /// Resolves the request against a device of `size` bytes, the way RFC
    /// 9110 says for a single range: an end past the device is clamped to
    /// the last byte, a start past it is unsatisfiable, a suffix longer than
    /// the device means the whole device.
    pub fn resolve(self, size: u64) -> Result<ByteRange, RangeError> {
        let unsatisfiable = RangeError::Unsatisfiable { size };
        if size == 0 {
            return Err(unsatisfiable);
        }
        let range = match self {
            RangeSpec::FromTo { start, last } => {
                ByteRange::from_inclusive(start, last.min(size - 1))
            }
            RangeSpec::From { start } => ByteRange::from_inclusive(start, size - 1),
            RangeSpec::Suffix { len } => {
                ByteRange::from_offset_len(size - len.min(size), len.min(size))
            }
        };
        range.filter(|r| r.fits_in(size)).ok_or(unsatisfiable)
    }

    /// Resolves the request strictly: the range must lie entirely inside the
    /// device. Used where clamping would be wrong, e.g. a trim range, where
    /// silently doing less than asked would lose the client's intent.
    pub fn resolve_exact(self, size: u64) -> Result<ByteRange, RangeError> {
        match self {
            RangeSpec::FromTo { start, last } => ByteRange::from_inclusive(start, last)
                .filter(|r| r.fits_in(size))
                .ok_or(RangeError::Unsatisfiable { size }),
            _ => self.resolve(size),
        }
    }
}

/// The total announced in a `Content-Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentTotal {
    /// A number: the device size as the client believes it.
    Known(u64),
    /// `*` (RFC) or `-1` (what old multihttp plugins send).
    Unknown,
}

/// A parsed `Content-Range: bytes B-E/total` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentRange {
    pub range: ByteRange,
    pub total: ContentTotal,
}

impl ContentRange {
    /// Parses `bytes B-E/total` where total is a number, `*` or `-1`.
    /// The unsatisfied form `bytes */size` is rejected: it names no bytes.
    pub fn parse(value: &str) -> Result<ContentRange, RangeError> {
        let spec = strip_unit(value.trim(), ' ')?;
        let (range, total) = spec
            .split_once('/')
            .ok_or_else(|| RangeError::Malformed(format!("no '/' in {spec:?}")))?;
        let (first, last) = range
            .split_once('-')
            .ok_or_else(|| RangeError::Malformed(format!("no '-' in {range:?}")))?;
        let (start, last) = (parse_number(first.trim())?, parse_number(last.trim())?);
        let range = ByteRange::from_inclusive(start, last)
            .ok_or_else(|| RangeError::Malformed(format!("end {last} before start {start}")))?;
        let total = match total.trim() {
            "*" | "-1" => ContentTotal::Unknown,
            n => ContentTotal::Known(parse_number(n)?),
        };
        Ok(ContentRange { range, total })
    }

    /// Parses only the start of a `Content-Range` reply header. Old servers
    /// send a wrong end value, so a client checking a reply can only trust
    /// the start (and the body length, which it checks separately).
    pub fn parse_start(value: &str) -> Result<u64, RangeError> {
        let spec = strip_unit(value.trim(), ' ')?;
        let first = spec
            .split_once('-')
            .map(|(first, _)| first)
            .ok_or_else(|| RangeError::Malformed(format!("no '-' in {spec:?}")))?;
        parse_number(first.trim())
    }
}

/// Strips the `bytes` unit and its separator (`=` in `Range`, a space in
/// `Content-Range`). The unit is case-insensitive per RFC 9110.
fn strip_unit(value: &str, separator: char) -> Result<&str, RangeError> {
    let unit = value.get(..5).filter(|u| u.eq_ignore_ascii_case("bytes"));
    let rest = unit
        .map(|_| &value[5..])
        .ok_or_else(|| RangeError::Malformed(format!("unit is not 'bytes' in {value:?}")))?;
    rest.strip_prefix(separator)
        .ok_or_else(|| RangeError::Malformed(format!("expected {separator:?} after 'bytes'")))
}

/// Parses a decimal byte count: ASCII digits only (no sign, no spaces, no
/// `+`), at most u64::MAX. `str::parse` alone would accept a leading `+`.
fn parse_number(text: &str) -> Result<u64, RangeError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RangeError::Malformed(format!(
            "{text:?} is not a byte count"
        )));
    }
    text.parse()
        .map_err(|_| RangeError::Malformed(format!("{text:?} overflows")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, last: u64) -> ByteRange {
        ByteRange::from_inclusive(start, last).unwrap()
    }

    #[test]
    fn byte_range_construction() {
        assert_eq!(ByteRange::from_offset_len(10, 0), None);
        assert_eq!(ByteRange::from_offset_len(10, 5), Some(range(10, 14)));
        assert_eq!(ByteRange::from_offset_len(u64::MAX, 2), None);
        assert_eq!(ByteRange::from_inclusive(5, 4), None);
        let r = range(10, 14);
        assert_eq!((r.len(), r.end()), (5, 15));
        assert!(r.fits_in(15) && !r.fits_in(14));
        assert_eq!(r.to_range_header(), "bytes=10-14");
        assert_eq!(r.to_content_range(100), "bytes 10-14/100");
    }

    #[test]
    fn range_header_forms() {
        assert_eq!(
            RangeSpec::parse("bytes=0-499"),
            Ok(RangeSpec::FromTo {
                start: 0,
                last: 499
            })
        );
        assert_eq!(
            RangeSpec::parse("bytes=9500-"),
            Ok(RangeSpec::From { start: 9500 })
        );
        assert_eq!(
            RangeSpec::parse("bytes=-500"),
            Ok(RangeSpec::Suffix { len: 500 })
        );
        assert_eq!(
            RangeSpec::parse(" Bytes=1-2 "),
            Ok(RangeSpec::FromTo { start: 1, last: 2 })
        );
    }

    #[test]
    fn range_header_rejects_garbage() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "items=0-1",
            "bytes 0-1",
            "bytes=a-1",
            "bytes=1-a",
            "bytes=+1-2",
            "bytes=-+2",
            "bytes=2-1",
            "bytes=1--2",
            "bytes=99999999999999999999-",
            "bytes=0x10-20",
        ] {
            assert!(
                matches!(RangeSpec::parse(bad), Err(RangeError::Malformed(_))),
                "{bad:?} accepted"
            );
        }
        assert_eq!(
            RangeSpec::parse("bytes=0-1,4-5"),
            Err(RangeError::MultipleRanges)
        );
    }

    #[test]
    fn resolve_against_size() {
        let size = 1000;
        let spec = |s| RangeSpec::parse(s).unwrap();
        assert_eq!(spec("bytes=0-999").resolve(size), Ok(range(0, 999)));
        assert_eq!(spec("bytes=990-2000").resolve(size), Ok(range(990, 999)));
        assert_eq!(spec("bytes=100-").resolve(size), Ok(range(100, 999)));
        assert_eq!(spec("bytes=-10").resolve(size), Ok(range(990, 999)));
        assert_eq!(spec("bytes=-5000").resolve(size), Ok(range(0, 999)));
        let unsat = Err(RangeError::Unsatisfiable { size });
        assert_eq!(spec("bytes=1000-1000").resolve(size), unsat);
        assert_eq!(spec("bytes=1000-").resolve(size), unsat);
        assert_eq!(spec("bytes=-0").resolve(size), unsat);
        assert_eq!(
            spec("bytes=0-0").resolve(0),
            Err(RangeError::Unsatisfiable { size: 0 })
        );
        assert_eq!(spec("bytes=990-2000").resolve_exact(size), unsat);
        assert_eq!(
            spec("bytes=990-999").resolve_exact(size),
            Ok(range(990, 999))
        );
    }

    #[test]
    fn content_range_forms() {
        let parsed = ContentRange::parse("bytes 0-4095/-1").unwrap();
        assert_eq!(parsed.range, range(0, 4095));
        assert_eq!(parsed.total, ContentTotal::Unknown);
        let parsed = ContentRange::parse("bytes 10-19/*").unwrap();
        assert_eq!(parsed.total, ContentTotal::Unknown);
        let parsed = ContentRange::parse("bytes 10-19/4194304").unwrap();
        assert_eq!(parsed.total, ContentTotal::Known(4194304));
        for bad in [
            "bytes */100",
            "bytes 5-4/100",
            "bytes 1-2",
            "bytes=1-2/3",
            "bytes -1-2/3",
            "bytes 1-2/-2",
            "bytes 1-2/x",
            "octets 1-2/3",
            "bytes 18446744073709551616-1/*",
        ] {
            assert!(ContentRange::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn content_range_start_only() {
        assert_eq!(ContentRange::parse_start("bytes 4096-0/100"), Ok(4096));
        assert_eq!(ContentRange::parse_start("bytes 7-8/*"), Ok(7));
        assert!(ContentRange::parse_start("bytes */100").is_err());
        assert!(ContentRange::parse_start("7-8/100").is_err());
    }
}
