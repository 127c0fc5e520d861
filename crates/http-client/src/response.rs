//! Reply heads: parsed with `httparse` (the parser hyper uses), then read
//! for what the plugin needs: status, headers, how the body is delimited,
//! and whether the connection may carry another request.
//!
//! Moved from multihttp (unchanged but for [`Body::Chunked`]) to be shared
//! with s3.

/// Most header lines in a reply; more is refused as malformed.
pub const MAX_HEADERS: usize = 48;

/// A parsed reply head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    /// HTTP/1.0 reply: no keep-alive unless asked for.
    http10: bool,
    headers: Vec<(String, String)>,
}

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    /// `Transfer-Encoding: chunked` (and nothing else): decoded by
    /// [`http_disk_protocol::chunked`] for small bodies (s3: listings and error
    /// documents of stores other than Garage). multihttp's servers never
    /// send it: there it is refused like `Encoded`.
    Chunked,
    /// Any other `Transfer-Encoding` (a compression we never asked for):
    /// not decoded; the connection cannot be reused after such a reply.
    Encoded,
    /// Until the server closes the connection.
    UntilClose,
}

impl ResponseHead {
    /// First value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How the body is delimited (RFC 9112 §6.3), for a reply to
    /// `method`. Conflicting lengths are refused: a reply whose end is
    /// ambiguous could smuggle a second reply.
    pub fn body(&self, method: &str) -> Result<Body, String> {
        if method == "HEAD" || matches!(self.status, 100..=199 | 204 | 304) {
            return Ok(Body::None);
        }
        let mut codings = self
            .all("Transfer-Encoding")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty());
        if let Some(first) = codings.next() {
            let only_chunked = first.eq_ignore_ascii_case("chunked") && codings.next().is_none();
            return Ok(if only_chunked {
                Body::Chunked
            } else {
                Body::Encoded
            });
        }
        let mut length = None;
        for value in self.all("Content-Length") {
            for part in value.split(',') {
                let parsed = part
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?;
                if length.is_some_and(|l| l != parsed) {
                    return Err(format!("conflicting Content-Length values ({value:?})"));
                }
                length = Some(parsed);
            }
        }
        Ok(length.map_or(Body::UntilClose, Body::Length))
    }

    /// Whether the server keeps the connection open after this reply.
    /// Never after a reply with both `Transfer-Encoding` and
    /// `Content-Length` (RFC 9112 §6.1: a sign of smuggling; the
    /// connection must be closed once the reply is read).
    pub fn keep_alive(&self) -> bool {
        if self.header("Transfer-Encoding").is_some() && self.header("Content-Length").is_some() {
            return false;
        }
        let has_token = |token: &str| {
            self.all("Connection")
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if self.http10 {
            has_token("keep-alive")
        } else {
            !has_token("close")
        }
    }
}

/// Parses a complete head at the start of `bytes`: the head and its
/// length, `None` when more bytes are needed, or why it is malformed.
pub fn parse_head(bytes: &[u8]) -> Result<Option<(ResponseHead, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut reply = httparse::Response::new(&mut headers);
    let len = match reply.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let head = ResponseHead {
        status: reply.code.unwrap_or(0),
        reason: reply.reason.unwrap_or("").to_owned(),
        http10: reply.version == Some(0),
        headers: reply
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).trim().to_owned(),
                )
            })
            .collect(),
    };
    Ok(Some((head, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> ResponseHead {
        let (head, len) = parse_head(text.as_bytes()).unwrap().unwrap();
        assert_eq!(len, text.len());
        head
    }

    #[test]
    fn parses_status_headers_and_length() {
        let h = head("HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-3/8\r\nContent-Length: 4\r\n\r\n");
        assert_eq!((h.status, h.reason.as_str()), (206, "Partial Content"));
        assert_eq!(h.header("Content-Range"), Some("bytes 0-3/8"));
        assert_eq!(h.body("GET"), Ok(Body::Length(4)));
        assert_eq!(h.body("HEAD"), Ok(Body::None));
        assert!(h.keep_alive());
    }

    #[test]
    fn partial_and_malformed_heads() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le")
            .unwrap()
            .is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n").is_err());
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(parse_head(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()).is_err());
    }

    #[test]
    fn body_delimiting() {
        assert_eq!(
            head("HTTP/1.1 200 OK\r\n\r\n").body("PUT"),
            Ok(Body::UntilClose)
        );
        assert_eq!(
            head("HTTP/1.1 204 No Content\r\n\r\n").body("PUT"),
            Ok(Body::None)
        );
        let te = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(te.body("GET"), Ok(Body::Chunked));
        assert!(!te.keep_alive(), "both framings: the connection must close");
        let chunked = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(chunked.body("GET"), Ok(Body::Chunked));
        assert!(chunked.keep_alive());
        for other in ["gzip, chunked", "chunked, gzip", "gzip"] {
            let h = head(&format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: {other}\r\n\r\n"
            ));
            assert_eq!(h.body("GET"), Ok(Body::Encoded), "{other}");
        }
        let same = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\n");
        assert_eq!(same.body("GET"), Ok(Body::Length(3)));
        let conflict = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        assert!(conflict.body("GET").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n")
            .body("GET")
            .is_err());
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n").keep_alive());
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive());
        assert!(head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").keep_alive());
    }
}
