//! TLS (rustls, ring provider) for http-disk-server and the plugins that
//! talk to it over HTTPS: PEM loading ([`pem`]) and the I/O loops that move
//! a rustls connection over a blocking socket.
//!
//! Why our own loops instead of `rustls::Stream`: its `read` keeps reading
//! the socket until a whole record is decrypted and its handshake loop
//! keeps going while bytes trickle in, each socket call with the timeout
//! set before the first one. A peer sending one byte per timeout would
//! hold the connection forever. Here the caller's [`Socket`] is asked to
//! arm its timeout before *every* socket call, so its deadline (the
//! server's idle timeout, the plugin's per-request deadline) bounds the
//! handshake and every read and write, exactly as on a plain connection.
//!
//! Sends use `MSG_NOSIGNAL`: a peer that went away is an `EPIPE` error,
//! never a SIGPIPE (the plugins run inside nbdkit).

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::RawFd;

pub use rustls;
use rustls::{ConnectionCommon, SideData};

pub mod pem;

/// The socket under a TLS connection and the caller's timeout policy.
pub trait Socket {
    fn raw_fd(&self) -> RawFd;
    /// Sets the socket's receive timeout for the next read, or fails
    /// (typically `TimedOut`) when the caller's deadline has passed.
    fn arm_read(&mut self) -> io::Result<()>;
    /// As [`Socket::arm_read`], for the next send.
    fn arm_write(&mut self) -> io::Result<()>;
}

/// The CryptoProvider everything here uses (ring: already in the tree,
/// no C toolchain needed like aws-lc).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// How a client verifies the servers it connects to.
pub enum Trust {
    /// Certificates chaining to exactly these roots, naming the host.
    Roots(rustls::RootCertStore),
    /// The caller's own verifier (multihttp's rotating CA file, or its
    /// `tls-verify=false`).
    Verifier(std::sync::Arc<dyn rustls::client::danger::ServerCertVerifier>),
}

/// The one place a client configuration is made (multihttp, s3, tests):
/// the ring provider, safe protocol versions, no client certificate, and
/// ALPN `http/1.1` (all these clients speak). Errors say what failed.
pub fn client_config(trust: Trust) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let mut config = match trust {
        Trust::Roots(roots) => builder.with_root_certificates(roots),
        Trust::Verifier(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(verifier),
    }
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration that trusts exactly the CAs of the PEM bundle
/// at `cafile`. Errors name the file and what is wrong with it.
pub fn client_trusting(cafile: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    client_config(Trust::Roots(pem::root_store(cafile)?))
}

/// Completes the handshake (nothing to do when it is done already).
pub fn handshake<S: SideData>(
    conn: &mut ConnectionCommon<S>,
    socket: &mut dyn Socket,
) -> io::Result<()> {
    while conn.is_handshaking() {
        flush(conn, socket)?;
        if receive(conn, socket)? == 0 && conn.is_handshaking() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection during the TLS handshake",
            ));
        }
    }
    // The last flight (client Finished; server session tickets).
    flush(conn, socket)
}

/// Reads decrypted bytes into `buf`: what rustls holds already, else as
/// many records from the socket as it takes to get some. `Ok(0)` at the
/// end of the connection, with or without `close_notify`: HTTP framing
/// (Content-Length) is what detects a cut reply or request, as on a plain
/// connection.
pub fn read<S: SideData>(
    conn: &mut ConnectionCommon<S>,
    socket: &mut dyn Socket,
    buf: &mut [u8],
) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    loop {
        match conn.reader().read(buf) {
            Ok(n) => return Ok(n),
            // No plaintext yet: needs more records.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        // Records processed may have queued an answer (key update).
        flush(conn, socket)?;
        receive(conn, socket)?;
    }
}

/// Encrypts as much of `data` as rustls takes at once (up to its 64 KiB
/// buffer) and sends it. Returns how much of `data` was taken.
pub fn write<S: SideData>(
    conn: &mut ConnectionCommon<S>,
    socket: &mut dyn Socket,
    data: &[u8],
) -> io::Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    let taken = conn.writer().write(data)?;
    flush(conn, socket)?;
    if taken == 0 {
        // Only before the handshake, which callers complete first.
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "TLS connection takes no data (handshake not complete)",
        ));
    }
    Ok(taken)
}

/// Writes all of `data`.
pub fn write_all<S: SideData>(
    conn: &mut ConnectionCommon<S>,
    socket: &mut dyn Socket,
    mut data: &[u8],
) -> io::Result<()> {
    while !data.is_empty() {
        let taken = write(conn, socket, data)?;
        data = &data[taken..];
    }
    Ok(())
}

/// Sends every TLS record rustls has queued.
pub fn flush<S: SideData>(
    conn: &mut ConnectionCommon<S>,
    socket: &mut dyn Socket,
) -> io::Result<()> {
    while conn.wants_write() {
        socket.arm_write()?;
        match conn.write_tls(&mut Raw::new(socket.raw_fd())) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One socket read into rustls, and the records it completes processed.
/// Returns the bytes read (0: the peer closed the connection).
fn receive<S: SideData>(
    conn: &mut ConnectionCommon<S>,
    socket: &mut dyn Socket,
) -> io::Result<usize> {
    let read = loop {
        socket.arm_read()?;
        match conn.read_tls(&mut Raw::new(socket.raw_fd())) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    process(conn, socket)?;
    Ok(read)
}

/// Processes received records; on a TLS error, sends the alert that
/// tells the peer why (best effort) and returns the error, which carries
/// rustls' reason (e.g. "invalid peer certificate: UnknownIssuer").
fn process<S: SideData>(conn: &mut ConnectionCommon<S>, socket: &mut dyn Socket) -> io::Result<()> {
    if let Err(e) = conn.process_new_packets() {
        let _ = flush(conn, socket);
        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
    }
    Ok(())
}

/// Whether rustls holds input the next [`read`] returns without touching
/// the socket: decrypted bytes, the peer's `close_notify`, or an error.
/// A caller that polls the socket before reading must ask this first, or
/// a request already decrypted (received with the previous one) would
/// wait for input that never comes.
pub fn has_buffered_input<S: SideData>(conn: &mut ConnectionCommon<S>) -> bool {
    match conn.process_new_packets() {
        Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
        Err(_) => true,
    }
}

/// Whether the peer has closed the connection (TCP end, reset, or TLS
/// `close_notify`), without blocking: takes whatever the socket holds into
/// rustls. Bytes of a pipelined next request stay buffered there for the
/// next [`read`].
pub fn peer_has_closed_now<S: SideData>(conn: &mut ConnectionCommon<S>, fd: RawFd) -> bool {
    let mut raw = Raw {
        fd,
        flags: libc::MSG_DONTWAIT,
    };
    match conn.read_tls(&mut raw) {
        Ok(0) => return true,
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        // "received plaintext buffer full": a pipelined request waits.
        Err(e) if e.kind() == io::ErrorKind::Other => return false,
        Err(_) => return true,
    }
    match conn.process_new_packets() {
        Ok(state) => state.peer_has_closed(),
        Err(_) => true,
    }
}

/// Sends `close_notify` before the connection is closed, if the socket
/// takes it at once (never blocks: a peer that stopped reading must not
/// hold a closing connection). Tells the peer the end is deliberate.
pub fn close_notify<S: SideData>(conn: &mut ConnectionCommon<S>, fd: RawFd) {
    conn.send_close_notify();
    let mut raw = Raw {
        fd,
        flags: libc::MSG_DONTWAIT,
    };
    while conn.wants_write() {
        if !matches!(conn.write_tls(&mut raw), Ok(n) if n > 0) {
            return;
        }
    }
}

/// The socket as rustls reads and writes it: recv, and sends with
/// `MSG_NOSIGNAL` (vectored, so rustls' queued records go in one call).
struct Raw {
    fd: RawFd,
    /// Added to every recv and send (`MSG_DONTWAIT` or none).
    flags: libc::c_int,
}

impl Raw {
    fn new(fd: RawFd) -> Raw {
        Raw { fd, flags: 0 }
    }
}

fn check(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Read for Raw {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: recv(2) into a buffer we own, of its length.
        check(unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), self.flags) })
    }
}

impl Write for Raw {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: send(2) from a buffer we own, of its length.
        check(unsafe {
            libc::send(
                self.fd,
                buf.as_ptr().cast(),
                buf.len(),
                self.flags | libc::MSG_NOSIGNAL,
            )
        })
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // At most IOV_MAX (1024) slices per call; rustls queues far fewer.
        let bufs = &bufs[..bufs.len().min(1024)];
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // IoSlice is ABI-compatible with struct iovec on Unix.
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len() as _;
        // SAFETY: sendmsg(2) reading the live slices `msg` points to.
        check(unsafe { libc::sendmsg(self.fd, &msg, self.flags | libc::MSG_NOSIGNAL) })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
