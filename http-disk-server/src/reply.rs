//! Replies: what a handler decides ([`Reply`], [`Body`]) and how it goes
//! on the wire ([`send`]): the head, then the body from memory or streamed
//! from the disk (sendfile on plain HTTP, copied through the buffer on TLS
//! and for small reads).

use std::io::{self, BufWriter, Write};

use http_disk_protocol::headers;

use crate::disk::{Disk, IO_CHUNK};
use crate::http;
use crate::tls::Outgoing;

/// What a reply carries after its head.
#[derive(Debug)]
pub enum Body {
    Empty,
    Text(String),
    /// `len` bytes of the disk from `start`, streamed.
    Disk {
        start: u64,
        len: u64,
    },
    /// HEAD: announce this Content-Length, send nothing.
    HeadOnly(u64),
}

/// A reply decided by a handler.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Close the connection after this reply.
    pub close: bool,
}

impl Reply {
    pub fn new(status: u16, body: Body) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body,
            close: false,
        }
    }

    /// An error reply: reason in `X-Disk-Error` and as a text body.
    pub fn error(status: u16, reason: impl Into<String>) -> Reply {
        let reason: String = reason.into().replace(['\r', '\n'], " ");
        Reply::new(status, Body::Text(format!("{reason}\n")))
            .with(headers::ERROR, &reason)
            .with("Content-Type", "text/plain; charset=utf-8")
    }

    pub fn with(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn closing(mut self) -> Reply {
        self.close = true;
        self
    }

    /// The reason of an error reply, for logs.
    pub fn reason(&self) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == headers::ERROR)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// Writes a reply; `Body::Disk` is streamed from the disk in chunks. A
/// reply to HEAD announces its length but never carries a body (error
/// replies included), or a keep-alive client would misread the stream.
pub fn send(
    writer: &mut BufWriter<Outgoing>,
    reply: &Reply,
    keep_alive: bool,
    http10: bool,
    head_only: bool,
    disk: Option<&Disk>,
) -> io::Result<()> {
    let length = match &reply.body {
        Body::Empty => 0,
        Body::Text(text) => text.len() as u64,
        Body::Disk { len, .. } => *len,
        Body::HeadOnly(len) => *len,
    };
    http::write_head(
        writer,
        reply.status,
        &reply.headers,
        length,
        keep_alive,
        http10,
    )?;
    match &reply.body {
        _ if head_only => {}
        Body::Empty | Body::HeadOnly(_) => {}
        Body::Text(text) => writer.write_all(text.as_bytes())?,
        // TLS: every byte goes through the encryption in user space.
        Body::Disk { start, len }
            if *len <= INLINE_BODY || writer.get_ref().plain_socket().is_none() =>
        {
            // Small bodies go in the same write as the head: one TCP
            // segment, so the client gets the whole reply in one recv
            // (with sendfile, head and body left as two segments, and a
            // 4 KiB read cost the client an extra recv and wakeup).
            let disk = disk.ok_or_else(|| io::Error::other("no disk to stream from"))?;
            stream_disk(writer, disk, *start, *len)?;
        }
        Body::Disk { start, len } => {
            let disk = disk.ok_or_else(|| io::Error::other("no disk to stream from"))?;
            // The head must be on the wire before sendfile writes the body
            // to the raw socket behind the buffer.
            writer.flush()?;
            let socket = writer
                .get_ref()
                .plain_socket()
                .ok_or_else(|| io::Error::other("no socket for sendfile"))?;
            match disk.send_to(socket, *start, *len) {
                Ok(_) => {}
                // sendfile refused outright (a file kind the kernel cannot
                // splice from): copy through user space instead.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                    stream_disk(writer, disk, *start, *len)?;
                }
                Err(e) => {
                    // EIO is the disk failing; anything else (EPIPE,
                    // ECONNRESET, a send timeout) is the client going away,
                    // which the caller logs at debug level.
                    if e.raw_os_error() == Some(libc::EIO) {
                        log::error!("read of {len} bytes at {start} failed: {e}");
                    }
                    return Err(e);
                }
            }
        }
    }
    writer.flush()
}

/// Disk bodies up to this size are copied into the reply buffer behind
/// the head (which holds 64 KiB) instead of being sent with sendfile.
const INLINE_BODY: u64 = 32 * 1024;

/// Sends `len` bytes of the disk from `start` with bounded memory. A read
/// error mid-way cannot change the status any more: the connection is
/// cut, so the client sees a short body rather than wrong data.
fn stream_disk(writer: &mut impl Write, disk: &Disk, start: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; IO_CHUNK.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        if let Err(e) = disk.read_at(&mut buf[..n], start + done) {
            log::error!("read of {} bytes at {} failed: {e}", n, start + done);
            return Err(e);
        }
        writer.write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}
