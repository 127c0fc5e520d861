//! `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1), decoded into a
//! `Vec` bounded by a limit: the one decoder of the server (request
//! bodies, through [`read_chunked`] over its `BufRead`) and of the
//! plugins' HTTP client (reply bodies, fed with [`ChunkedDecoder::feed`]
//! from whatever pieces its socket delivers under a deadline).
//!
//! One state machine fed by slices serves both, so the two sides cannot
//! drift apart on what a chunked body is. Strict where laxness could be
//! exploited (request smuggling, memory exhaustion):
//! - a chunk size is hex digits only: no sign, no `0x`, no leading
//!   whitespace, and a value that does not fit 64 bits is refused (leading
//!   zeros are fine, as the grammar allows);
//! - chunk extensions must follow the grammar (`;` token [`=` token or
//!   quoted-string], with optional whitespace around `;` and `=`); their
//!   meaning is ignored;
//! - every line, and the data of every chunk, ends in CRLF: a bare LF or a
//!   bare CR is refused;
//! - trailer fields must be `name: value` lines without obsolete folding
//!   or control characters; they are read and ignored;
//! - the body is refused as soon as a chunk size says it would pass the
//!   limit, before any of its bytes is stored, and size lines and the
//!   trailer section are bounded too.

use std::fmt;
use std::io::{self, BufRead};

use crate::is_tchar;

/// Most bytes in a chunk-size line (with extensions) before its CRLF:
/// the server's bound on any request line.
pub const MAX_SIZE_LINE: usize = 8 * 1024;
/// Most bytes in the trailer section (every line with its CRLF): the
/// server's bound on a request head.
pub const MAX_TRAILERS: usize = 64 * 1024;

/// Why a chunked body was refused.
#[derive(Debug)]
pub enum ChunkedError {
    /// The decoded body would be longer than `limit` bytes.
    TooLarge { limit: u64 },
    /// The framing breaks RFC 9112; `what` says where.
    Malformed { what: String },
    /// The reader failed, or ended before the body did.
    Io(io::Error),
}

impl fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkedError::TooLarge { limit } => write!(f, "body larger than {limit} bytes"),
            ChunkedError::Malformed { what } => f.write_str(what),
            ChunkedError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ChunkedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChunkedError::Io(e) => Some(e),
            _ => None,
        }
    }
}

fn malformed(what: impl Into<String>) -> ChunkedError {
    ChunkedError::Malformed { what: what.into() }
}

/// Reads one whole chunked body of at most `limit` bytes from `reader`,
/// which is left just after the body's last CRLF (at the next message).
pub fn read_chunked(reader: &mut impl BufRead, limit: u64) -> Result<Vec<u8>, ChunkedError> {
    let mut decoder = ChunkedDecoder::new(limit);
    let mut body = Vec::new();
    while !decoder.is_done() {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ChunkedError::Io(e)),
        };
        if available.is_empty() {
            return Err(ChunkedError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body cut short",
            )));
        }
        let used = decoder.feed(available, &mut body)?;
        reader.consume(used);
    }
    Ok(body)
}

/// A decoder for one body, fed with its bytes in pieces of any size.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// The size line or trailer line being received, with its line end.
    line: Vec<u8>,
    /// Bytes of the trailer lines already complete.
    trailer_bytes: usize,
    /// Body bytes decoded so far, and the most allowed.
    decoded: u64,
    limit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Receiving a chunk-size line.
    Size,
    /// This many data bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data; how many of its 2 bytes arrived.
    DataEnd(u8),
    /// Receiving trailer lines, up to the empty one.
    Trailer,
    Done,
}

impl ChunkedDecoder {
    /// A decoder refusing bodies of more than `limit` decoded bytes.
    pub fn new(limit: u64) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size,
            line: Vec::new(),
            trailer_bytes: 0,
            decoded: 0,
            limit,
        }
    }

    /// Whether the whole body (last chunk and trailers) was decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending body bytes to `out`. Returns how
    /// many input bytes were used: all of them, or fewer once the body
    /// is complete (the rest belongs to the next message).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkedError> {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            match self.state {
                State::Done => break,
                State::Size => {
                    let (taken, line_done) =
                        self.take_line(rest, MAX_SIZE_LINE + 2, "chunk size line")?;
                    used += taken;
                    if line_done {
                        let size = parse_size_line(&self.line)?;
                        self.line.clear();
                        self.start_chunk(size, out)?;
                    }
                }
                State::Data(left) => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..n]);
                    used += n;
                    self.decoded += n as u64;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd(0)
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd(seen) => {
                    if rest[0] != b"\r\n"[usize::from(seen)] {
                        return Err(malformed(
                            "chunk data not followed by CRLF (chunk longer than its size?)",
                        ));
                    }
                    used += 1;
                    self.state = if seen == 1 {
                        State::Size
                    } else {
                        State::DataEnd(1)
                    };
                }
                State::Trailer => {
                    let room = MAX_TRAILERS - self.trailer_bytes;
                    let (taken, line_done) = self.take_line(rest, room, "trailers")?;
                    used += taken;
                    if line_done {
                        self.trailer_bytes += self.line.len();
                        if self.line == b"\r\n" {
                            self.state = State::Done;
                        } else {
                            check_trailer_field(&self.line)?;
                        }
                        self.line.clear();
                    }
                }
            }
        }
        Ok(used)
    }

    /// Checks a new chunk's size against the limit before any of its
    /// bytes is stored, then room is made for it at once (bounded by the
    /// limit) rather than by doubling as its pieces arrive.
    fn start_chunk(&mut self, size: u64, out: &mut Vec<u8>) -> Result<(), ChunkedError> {
        if size > self.limit - self.decoded {
            return Err(ChunkedError::TooLarge { limit: self.limit });
        }
        if size == 0 {
            self.state = State::Trailer;
        } else {
            out.reserve(usize::try_from(size).unwrap_or(0));
            self.state = State::Data(size);
        }
        Ok(())
    }

    /// Moves bytes up to and including a LF into `self.line`: how many
    /// were taken, and whether the line is complete (it must end in CRLF).
    /// `max` bounds the line with its line end.
    fn take_line(
        &mut self,
        input: &[u8],
        max: usize,
        what: &str,
    ) -> Result<(usize, bool), ChunkedError> {
        let (taken, done) = match input.iter().position(|&b| b == b'\n') {
            Some(lf) => (lf + 1, true),
            None => (input.len(), false),
        };
        if self.line.len() + taken > max {
            return Err(malformed(format!("{what} longer than {max} bytes")));
        }
        self.line.extend_from_slice(&input[..taken]);
        if done && !self.line.ends_with(b"\r\n") {
            return Err(malformed(format!("{what} not ended by CRLF")));
        }
        Ok((taken, done))
    }
}

/// `1*HEXDIG *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF`
/// → the size. Whitespace before the CRLF is taken as BWS too.
fn parse_size_line(line: &[u8]) -> Result<u64, ChunkedError> {
    let line = &line[..line.len() - 2];
    let shown = || String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned();
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 {
        return Err(malformed(format!("malformed chunk size {:?}", shown())));
    }
    let mut size: u64 = 0;
    for &digit in &line[..digits] {
        let value = u64::from(char::from(digit).to_digit(16).expect("a hex digit"));
        size = size
            .checked_mul(16)
            .and_then(|size| size.checked_add(value))
            .ok_or_else(|| malformed(format!("chunk size {:?} overflows 64 bits", shown())))?;
    }
    if !valid_extensions(&line[digits..]) {
        return Err(malformed(format!(
            "malformed chunk extension in {:?}",
            shown()
        )));
    }
    Ok(size)
}

/// Whether `rest` (what follows the size digits) is a well-formed list of
/// chunk extensions, possibly empty.
fn valid_extensions(mut rest: &[u8]) -> bool {
    loop {
        rest = skip_bws(rest);
        let Some(after_semicolon) = rest.strip_prefix(b";") else {
            return rest.is_empty();
        };
        let Some(after_name) = skip_token(skip_bws(after_semicolon)) else {
            return false;
        };
        rest = skip_bws(after_name);
        if let Some(after_equals) = rest.strip_prefix(b"=") {
            let value = skip_bws(after_equals);
            let after_value = if value.first() == Some(&b'"') {
                skip_quoted_string(value)
            } else {
                skip_token(value)
            };
            let Some(after_value) = after_value else {
                return false;
            };
            rest = after_value;
        }
    }
}

fn skip_bws(text: &[u8]) -> &[u8] {
    let n = text
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(text.len());
    &text[n..]
}

/// What follows a non-empty token at the start of `text`.
fn skip_token(text: &[u8]) -> Option<&[u8]> {
    let n = text
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(text.len());
    (n > 0).then(|| &text[n..])
}

/// What follows the quoted-string (RFC 9110 §5.6.4) at the start of `text`.
fn skip_quoted_string(text: &[u8]) -> Option<&[u8]> {
    let is_text = |b: u8| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80;
    let mut i = 1;
    while i < text.len() {
        match text[i] {
            b'"' => return Some(&text[i + 1..]),
            b'\\' if text.get(i + 1).is_some_and(|&b| is_text(b)) => i += 2,
            b if is_text(b) && b != b'\\' => i += 1,
            _ => return None,
        }
    }
    None
}

/// A trailer line (with its CRLF): `token ":" field-value`, not folded,
/// no control characters but HTAB.
fn check_trailer_field(line: &[u8]) -> Result<(), ChunkedError> {
    let line = &line[..line.len() - 2];
    let valid = skip_token(line)
        .and_then(|rest| rest.strip_prefix(b":"))
        .is_some_and(|value| value.iter().all(|&b| b == b'\t' || !b.is_ascii_control()));
    if valid {
        Ok(())
    } else {
        // Not echoed: a trailer may carry a credential.
        Err(malformed(format!(
            "malformed trailer field ({} bytes)",
            line.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Decodes `wire` fed in pieces of `step` bytes: body and bytes used.
    /// `None` if the input ended before the body did.
    fn decode(
        wire: &[u8],
        step: usize,
        limit: u64,
    ) -> Result<Option<(Vec<u8>, usize)>, ChunkedError> {
        let mut decoder = ChunkedDecoder::new(limit);
        let mut out = Vec::new();
        let mut used = 0;
        for piece in wire.chunks(step) {
            let n = decoder.feed(piece, &mut out)?;
            used += n;
            if decoder.is_done() {
                return Ok(Some((out, used)));
            }
            assert_eq!(n, piece.len(), "input left over before the end");
        }
        Ok(None)
    }

    /// The error of `wire` in every split, which must be the same one,
    /// and which [`read_chunked`] must give too.
    fn refused(wire: &[u8], limit: u64) -> ChunkedError {
        let whole = decode(wire, wire.len().max(1), limit)
            .expect_err(&format!("{:?} accepted", String::from_utf8_lossy(wire)));
        // Every small split (long inputs: a few larger ones too, not all).
        let steps = (1..wire.len().min(64)).chain([wire.len() / 3, wire.len() / 2]);
        for step in steps.filter(|&step| step > 0) {
            let e = decode(wire, step, limit).expect_err("accepted in pieces");
            assert_eq!(e.to_string(), whole.to_string(), "step {step}");
        }
        let read = read_chunked(&mut Cursor::new(wire), limit).unwrap_err();
        assert_eq!(read.to_string(), whole.to_string());
        whole
    }

    fn malformed_what(wire: &[u8]) -> String {
        match refused(wire, 100) {
            ChunkedError::Malformed { what } => what,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(wire)),
        }
    }

    const WIRE: &[u8] =
        b"5\r\nhello\r\n1;name=\"v\"\r\n \r\n00006 ; x\r\nworld!\r\n0\r\nX-Trailer: 1\r\n\r\nHTTP/1.1";

    #[test]
    fn decodes_in_any_split_and_stops_at_the_end() {
        for step in 1..=WIRE.len() {
            let (body, used) = decode(WIRE, step, 100).unwrap().unwrap();
            assert_eq!(body, b"hello world!", "step {step}");
            assert_eq!(&WIRE[used..], b"HTTP/1.1", "step {step}");
        }
        let (body, _) = decode(b"0\r\n\r\n", 1, 0).unwrap().unwrap();
        assert!(body.is_empty());
        let upper = b"A\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(decode(upper, 3, 10).unwrap().unwrap().0, b"0123456789");
    }

    #[test]
    fn read_chunked_leaves_the_reader_at_the_next_message() {
        let mut reader = Cursor::new(WIRE);
        assert_eq!(read_chunked(&mut reader, 100).unwrap(), b"hello world!");
        assert_eq!(&WIRE[reader.position() as usize..], b"HTTP/1.1");
        // A body cut anywhere is an I/O error (nothing more will come).
        for cut in 0..WIRE.len() - b"HTTP/1.1".len() {
            let e = read_chunked(&mut Cursor::new(&WIRE[..cut]), 100).unwrap_err();
            assert!(
                matches!(&e, ChunkedError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof)
            );
        }
    }

    #[test]
    fn extensions_and_leading_zeros_that_the_grammar_allows_are_accepted() {
        for line in [
            "3;a",
            "3;a=b",
            "3 ;a=b",
            "3; a = b",
            "3;a=\"x y;z\"",
            "3;a=\"q\\\"d\"",
            "3;a;b=c;d=\"\"",
            "3\t",
            "00000000000000000000000003",
        ] {
            let wire = format!("{line}\r\nabc\r\n0\r\n\r\n");
            let decoded = decode(wire.as_bytes(), 2, 10).unwrap().unwrap().0;
            assert_eq!(decoded, b"abc", "{line:?}");
        }
    }

    #[test]
    fn malformed_sizes_and_framing_are_refused() {
        for bad in [
            &b"\r\nx\r\n0\r\n\r\n"[..],
            b"-1\r\n",
            b"+1\r\nx\r\n",
            b"0x1\r\nx\r\n",
            b"g\r\n",
            b"1 2\r\n",
            b" 1\r\nx\r\n0\r\n\r\n",
            b"1;\r\nx\r\n",
            b"1;=v\r\nx\r\n",
            b"1;a=\r\nx\r\n",
            b"1;a=\"open\r\nx\r\n",
            b"1;a b\r\nx\r\n",
            b"1;a=\x01\r\nx\r\n",
            b"1\r\nxy\r\n",
            b"1\r\nx\n0\r\n\r\n",
            b"0\r\nX : 1\r\n\r\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nNoColon\r\n\r\n",
            b"0\r\nX: a\x00b\r\n\r\n",
        ] {
            malformed_what(bad);
        }
    }

    #[test]
    fn bare_lf_and_bare_cr_are_refused() {
        // A bare LF ends no line: not after a size, not after data, not
        // after a trailer, not as the last line.
        for bad in [
            &b"1\nx\r\n0\r\n\r\n"[..],
            b"1\r\nx\n0\r\n\r\n",
            b"1\r\nx\r\n0\n\r\n",
            b"1\r\nx\r\n0\r\nX: 1\n\r\n",
            b"1\r\nx\r\n0\r\n\n",
        ] {
            malformed_what(bad);
        }
        // Nor does a bare CR.
        assert!(malformed_what(b"1\rx\r\n").contains("malformed chunk"));
        assert!(malformed_what(b"1\r\nx\rx0\r\n\r\n").contains("not followed by CRLF"));
        assert!(malformed_what(b"0\r\nX: 1\r2\r\n\r\n").contains("trailer"));
    }

    #[test]
    fn sizes_that_overflow_64_bits_are_refused_not_wrapped() {
        for bad in [
            "11111111111111111",
            "fffffffffffffffff",
            "10000000000000000",
        ] {
            let what = malformed_what(format!("{bad}\r\n").as_bytes());
            assert!(what.contains("overflows 64 bits"), "{what}");
        }
        // The largest size that parses, then refused by the limit.
        let e = refused(b"ffffffffffffffff\r\n", 100);
        assert!(matches!(e, ChunkedError::TooLarge { limit: 100 }), "{e:?}");
        assert_eq!(e.to_string(), "body larger than 100 bytes");
    }

    #[test]
    fn the_limit_is_checked_before_a_chunk_is_stored() {
        let wire = b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n";
        assert_eq!(decode(wire, 2, 10).unwrap().unwrap().0, b"helloworld");
        assert!(matches!(
            refused(wire, 9),
            ChunkedError::TooLarge { limit: 9 }
        ));
        // Refused on the size line alone, with nothing stored: the data
        // never arrives here.
        let mut decoder = ChunkedDecoder::new(1 << 20);
        let mut out = Vec::new();
        let e = decoder.feed(b"100001\r\n", &mut out).unwrap_err();
        assert!(matches!(e, ChunkedError::TooLarge { .. }), "{e:?}");
        assert_eq!(out.capacity(), 0, "room made for a refused chunk");
    }

    #[test]
    fn a_body_without_its_final_crlf_is_not_complete() {
        for cut in [
            &b"1\r\nx\r\n0\r\n"[..],
            b"1\r\nx\r\n0\r\n\r",
            b"1\r\nx\r\n0\r\nX: 1\r\n",
            b"1\r\nx\r\n",
            b"1\r\nx",
        ] {
            assert!(decode(cut, 1, 10).unwrap().is_none(), "{cut:?}");
            let e = read_chunked(&mut Cursor::new(cut), 10).unwrap_err();
            assert!(matches!(e, ChunkedError::Io(_)), "{cut:?}: {e:?}");
        }
    }

    #[test]
    fn size_lines_and_trailers_are_bounded() {
        let long_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_SIZE_LINE));
        assert!(malformed_what(long_ext.as_bytes()).contains("chunk size line longer"));
        let just_fits = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_SIZE_LINE - 2));
        assert_eq!(
            decode(just_fits.as_bytes(), 100, 10).unwrap().unwrap().0,
            b"x"
        );
        let endless = format!("0\r\n{}\r\n", "X-T: 1\r\n".repeat(MAX_TRAILERS / 8 + 1));
        assert!(malformed_what(endless.as_bytes()).contains("trailers longer"));
        // An endless size line with no LF is cut off too.
        let mut decoder = ChunkedDecoder::new(10);
        let mut out = Vec::new();
        let zeros = vec![b'0'; 1024];
        let failed = (0..10).any(|_| decoder.feed(&zeros, &mut out).is_err());
        assert!(failed);
    }
}
