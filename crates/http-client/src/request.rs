//! Request heads, written straight into the buffer that is sent (one
//! `send` per request: head and a small body together).
//!
//! Every part is checked before it is written: a CR or LF in a header
//! value or a space in the target would let a value split the request
//! into two (request smuggling). Our callers build them from constants,
//! checked URLs and numbers, so a refusal means a bug, reported as an
//! error rather than sent.

use std::io::Write as _;

use http_disk_protocol::is_tchar;

use crate::connection::COALESCE_BODY;

/// A request body as sent: the part copied after the head into one write,
/// and the tail sent by itself after it (a large body is not copied; see
/// [`crate::connection::Connection::exchange`]).
pub fn split_body(body: &[u8]) -> (&[u8], &[u8]) {
    if body.len() > COALESCE_BODY {
        (&[], body)
    } else {
        (body, &[])
    }
}

/// One request's head.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query (`/bucket/key?X-Amz-...`), already percent-encoded.
    pub target: &'a str,
    /// The `Host` header: `HOST[:PORT]`.
    pub host: &'a str,
    pub user_agent: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    /// `Content-Length`: given for requests with a body (and for PUT/POST
    /// with an empty one). Bodies are never chunked: not every server
    /// takes chunked requests, and ours are all in memory anyway.
    pub content_length: Option<u64>,
}

/// A header whose value is secret (e.g. `Authorization`): written from
/// bytes the caller keeps in protected memory and wipes afterwards.
pub struct SecretHeader<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

impl Request<'_> {
    /// An upper bound of the head's size with `secret`, so that the
    /// caller can size its buffer once: a reallocation would leave a
    /// copy of a secret header in freed memory.
    pub fn capacity(&self, secret: Option<&SecretHeader<'_>>) -> usize {
        // "METHOD TARGET HTTP/1.1\r\n", "Host: \r\n", "User-Agent: \r\n",
        // "Content-Length: 20-digits\r\n" and the blank line.
        const FIXED: usize = 12 + 8 + 14 + 38 + 2;
        FIXED
            + self.method.len()
            + self.target.len()
            + self.host.len()
            + self.user_agent.len()
            + secret.map_or(0, |s| s.name.len() + s.value.len() + 4)
            + self
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len() + 4)
                .sum::<usize>()
    }

    /// What to send for this request with `body` and no secret header:
    /// the head and, for a small body, the body itself in one buffer
    /// sized once, then the tail of a large body, sent by itself (see
    /// [`split_body`]). Or which part of the head is malformed.
    pub fn wire<'b>(&self, body: &'b [u8]) -> Result<(Vec<u8>, &'b [u8]), String> {
        let (inline_body, tail) = split_body(body);
        let mut wire = Vec::with_capacity(self.capacity(None) + inline_body.len());
        self.write_head(&mut wire, None)?;
        wire.extend_from_slice(inline_body);
        Ok((wire, tail))
    }

    /// Appends the head (request line, `Host`, `User-Agent`, `secret`,
    /// the other headers, `Content-Length`, blank line) to `wire`, or
    /// says which part is malformed (then `wire` is unchanged).
    pub fn write_head(
        &self,
        wire: &mut Vec<u8>,
        secret: Option<&SecretHeader<'_>>,
    ) -> Result<(), String> {
        self.check()?;
        if let Some(secret) = secret {
            check_header(secret.name, secret.value)?;
        }
        // Writing to a Vec cannot fail.
        let _ = write!(
            wire,
            "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\n",
            self.method, self.target, self.host, self.user_agent
        );
        if let Some(secret) = secret {
            wire.extend_from_slice(secret.name.as_bytes());
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(secret.value);
            wire.extend_from_slice(b"\r\n");
        }
        for (name, value) in self.headers {
            let _ = write!(wire, "{name}: {value}\r\n");
        }
        if let Some(length) = self.content_length {
            let _ = write!(wire, "Content-Length: {length}\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        if !is_token(self.method) {
            return Err(format!("bad request method {:?}", self.method));
        }
        // The target is not echoed: it may carry a presigned signature.
        if !self.target.starts_with('/') || self.target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("bad request target (not a path, or spaces or control characters)".into());
        }
        check_header("Host", self.host.as_bytes())?;
        check_header("User-Agent", self.user_agent.as_bytes())?;
        for (name, value) in self.headers {
            check_header(name, value.as_bytes())?;
        }
        Ok(())
    }
}

/// A header line must stay one line: a token name and a value without
/// CR, LF or NUL. The value is not echoed (it may be secret).
fn check_header(name: &str, value: &[u8]) -> Result<(), String> {
    if !is_token(name) {
        return Err(format!("bad header name {name:?}"));
    }
    if value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(format!("control characters in the {name} header"));
    }
    Ok(())
}

/// RFC 9110 `token` (method and header names).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
        Request {
            method: "GET",
            target: "/disks/x/chunks/0001?X-Amz-Signature=ab",
            host: "127.0.0.1:3900",
            user_agent: "test/1",
            headers,
            content_length: None,
        }
    }

    fn written(request: &Request<'_>, secret: Option<&SecretHeader<'_>>) -> String {
        let mut wire = Vec::with_capacity(request.capacity(secret));
        let capacity = wire.capacity();
        request.write_head(&mut wire, secret).unwrap();
        assert!(wire.len() <= capacity, "{} > {capacity}", wire.len());
        assert_eq!(wire.capacity(), capacity, "the buffer was reallocated");
        String::from_utf8(wire).unwrap()
    }

    #[test]
    fn heads_carry_method_target_host_headers_and_length() {
        let get = written(&request(&[("Range", "bytes=0-4095")]), None);
        assert_eq!(
            get,
            "GET /disks/x/chunks/0001?X-Amz-Signature=ab HTTP/1.1\r\nHost: 127.0.0.1:3900\r\n\
             User-Agent: test/1\r\nRange: bytes=0-4095\r\n\r\n"
        );
        let md5 = [("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg==")];
        let post = Request {
            method: "POST",
            content_length: Some(u64::MAX),
            ..request(&md5)
        };
        let secret = SecretHeader {
            name: "Authorization",
            value: &[b'x'; 300],
        };
        let text = written(&post, Some(&secret));
        assert!(text.starts_with("POST /disks/"), "{text}");
        assert!(
            text.contains("User-Agent: test/1\r\nAuthorization: xxx"),
            "{text}"
        );
        assert!(
            text.ends_with(&format!(
                "Content-MD5: 1B2M2Y8AsgTpgAmY7PhCfg==\r\nContent-Length: {}\r\n\r\n",
                u64::MAX
            )),
            "{text}"
        );
    }

    #[test]
    fn small_bodies_go_with_the_head_large_ones_after_it() {
        let small = vec![1u8; COALESCE_BODY];
        assert_eq!(split_body(&small), (&small[..], &[][..]));
        let large = vec![1u8; COALESCE_BODY + 1];
        assert_eq!(split_body(&large), (&[][..], &large[..]));
        // What `wire` sends: the head, then the small body in the same
        // buffer, or the large one as the tail.
        let put = Request {
            method: "PUT",
            target: "/k",
            host: "h",
            user_agent: "t",
            headers: &[],
            content_length: Some(small.len() as u64),
        };
        let (wire, tail) = put.wire(&small).unwrap();
        assert!(wire.ends_with(&small) && tail.is_empty());
        assert!(wire.starts_with(b"PUT /k HTTP/1.1\r\n"));
        let (wire, tail) = put.wire(&large).unwrap();
        assert!(wire.ends_with(b"\r\n\r\n") && tail == &large[..]);
    }

    #[test]
    fn parts_that_would_split_the_request_are_refused() {
        let refused = |r: Request<'_>| {
            let mut wire = Vec::new();
            let e = r.write_head(&mut wire, None).unwrap_err();
            assert!(wire.is_empty());
            assert!(!e.contains("Signature"), "{e}");
            e
        };
        refused(Request {
            target: "/a b?X-Amz-Signature=1",
            ..request(&[])
        });
        refused(Request {
            target: "http://h/a",
            ..request(&[])
        });
        refused(Request {
            method: "GET /x",
            ..request(&[])
        });
        refused(Request {
            host: "h\r\nX: y",
            ..request(&[])
        });
        refused(request(&[("Range", "bytes=0-1\r\nX-Evil: 1")]));
        refused(request(&[("Bad Name", "v")]));
        refused(request(&[("", "v")]));
        let bad_secret = SecretHeader {
            name: "Authorization",
            value: b"Basic x\nY: z",
        };
        let mut wire = Vec::new();
        let e = request(&[])
            .write_head(&mut wire, Some(&bad_secret))
            .unwrap_err();
        assert!(!e.contains("Basic"), "{e}");
    }
}
