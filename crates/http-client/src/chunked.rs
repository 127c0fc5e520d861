//! `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1), decoded
//! incrementally from whatever pieces the socket delivers, into a
//! `Vec` bounded by a limit.
//!
//! Only for small bodies (S3 listings and error documents: other stores
//! than Garage send them chunked). Strict where laxness could be
//! exploited: chunk sizes are hex digits only (no sign, no `0x`, at most
//! 16 digits so they cannot overflow), every line ends in CRLF, and size
//! lines, extensions and trailers are bounded.

/// Longest chunk-size line (with extensions) accepted.
pub const MAX_SIZE_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// A decoder for one body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// The size line or trailer line being received.
    line: Vec<u8>,
    trailer_bytes: usize,
    limit: usize,
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
    pub fn new(limit: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size,
            line: Vec::new(),
            trailer_bytes: 0,
            limit,
        }
    }

    /// Whether the whole body (last chunk and trailers) was decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending body bytes to `out`. Returns how
    /// many input bytes were used: all of them, or fewer once the body
    /// is complete (the rest belongs to the next reply).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            match self.state {
                State::Done => break,
                State::Size => {
                    let (taken, line_done) =
                        self.take_line(rest, MAX_SIZE_LINE, "chunk size line")?;
                    used += taken;
                    if line_done {
                        let size = parse_size_line(&self.line)?;
                        self.line.clear();
                        if size > (self.limit - out.len()) as u64 {
                            return Err(format!("body larger than {} bytes", self.limit));
                        }
                        self.state = if size == 0 {
                            State::Trailer
                        } else {
                            State::Data(size)
                        };
                    }
                }
                State::Data(left) => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..n]);
                    used += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd(0)
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd(seen) => {
                    let expected = b"\r\n"[usize::from(seen)];
                    if rest[0] != expected {
                        return Err("chunk data not followed by CRLF".into());
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
                    self.trailer_bytes += taken;
                    if line_done {
                        // Trailer fields are not used: only their end matters.
                        if self.line == b"\r\n" {
                            self.state = State::Done;
                        }
                        self.line.clear();
                    }
                }
            }
        }
        Ok(used)
    }

    /// Moves bytes up to and including a LF into `self.line`: how many
    /// were taken, and whether the line is complete (it must end in CRLF).
    fn take_line(&mut self, input: &[u8], max: usize, what: &str) -> Result<(usize, bool), String> {
        let (taken, done) = match input.iter().position(|&b| b == b'\n') {
            Some(lf) => (lf + 1, true),
            None => (input.len(), false),
        };
        if self.line.len() + taken > max {
            return Err(format!("{what} longer than {max} bytes"));
        }
        self.line.extend_from_slice(&input[..taken]);
        if done && !self.line.ends_with(b"\r\n") {
            return Err(format!("{what} not ended by CRLF"));
        }
        Ok((taken, done))
    }
}

/// `1*HEXDIG [ BWS ";" extensions ] CRLF` → the size.
fn parse_size_line(line: &[u8]) -> Result<u64, String> {
    let line = &line[..line.len() - 2];
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (hex, after) = line.split_at(digits);
    let ext = after.trim_ascii_start();
    if hex.is_empty() || hex.len() > 16 || !(ext.is_empty() || ext[0] == b';') {
        return Err(format!(
            "malformed chunk size {:?}",
            String::from_utf8_lossy(&line[..line.len().min(40)])
        ));
    }
    // At most 16 hex digits: always fits.
    let hex = std::str::from_utf8(hex).expect("hex digits are ASCII");
    Ok(u64::from_str_radix(hex, 16).expect("checked hex digits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes: body and bytes used.
    fn decode(wire: &[u8], step: usize, limit: usize) -> Result<(Vec<u8>, usize), String> {
        let mut decoder = ChunkedDecoder::new(limit);
        let mut out = Vec::new();
        let mut used = 0;
        for piece in wire.chunks(step) {
            let n = decoder.feed(piece, &mut out)?;
            used += n;
            if decoder.is_done() {
                return Ok((out, used));
            }
            assert_eq!(n, piece.len(), "input left over before the end");
        }
        Err("incomplete".into())
    }

    const WIRE: &[u8] =
        b"5\r\nhello\r\n1;name=\"v\"\r\n \r\n00006 ; x\r\nworld!\r\n0\r\nX-Trailer: 1\r\n\r\nHTTP/1.1";

    #[test]
    fn decodes_in_any_split_and_stops_at_the_end() {
        for step in 1..=WIRE.len() {
            let (body, used) = decode(WIRE, step, 100).unwrap();
            assert_eq!(body, b"hello world!", "step {step}");
            assert_eq!(&WIRE[used..], b"HTTP/1.1", "step {step}");
        }
        let (body, _) = decode(b"0\r\n\r\n", 1, 0).unwrap();
        assert!(body.is_empty());
        let upper = b"A\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(decode(upper, 3, 10).unwrap().0, b"0123456789");
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
            b"11111111111111111\r\n",
            b"1\nx\r\n",
            b"1\r\nxy\r\n",
            b"1\r\nx\n0\r\n\r\n",
            b"0\r\nX: 1\n\r\n",
        ] {
            for step in [1, 3, bad.len()] {
                assert!(
                    decode(bad, step, 100).is_err_and(|e| e != "incomplete"),
                    "{:?} accepted",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        // Largest size that parses, then refused by the limit (no overflow).
        let e = decode(b"ffffffffffffffff\r\n", 4, 100).unwrap_err();
        assert!(e.contains("larger than 100"), "{e}");
    }

    #[test]
    fn limits_bound_the_body_the_size_line_and_the_trailers() {
        let wire = b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n";
        assert_eq!(decode(wire, 2, 10).unwrap().0, b"helloworld");
        assert!(decode(wire, 2, 9).unwrap_err().contains("larger than 9"));
        let long_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_SIZE_LINE));
        assert!(decode(long_ext.as_bytes(), 100, 10)
            .unwrap_err()
            .contains("chunk size line longer"));
        let endless = format!("0\r\n{}\r\n\r\n", "X-T: 1\r\n".repeat(MAX_TRAILERS / 8 + 1));
        assert!(decode(endless.as_bytes(), 7, 10)
            .unwrap_err()
            .contains("trailers longer"));
        // An endless size line with no LF is cut off too.
        let mut decoder = ChunkedDecoder::new(10);
        let mut out = Vec::new();
        let zeros = vec![b'0'; 1024];
        let failed = (0..10).any(|_| decoder.feed(&zeros, &mut out).is_err());
        assert!(failed);
    }
}
