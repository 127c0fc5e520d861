//! HTTPS (`--tls-cert`, `--tls-key`): the server configuration, loaded
//! again on SIGHUP ([`ServerTls::reload`]), and the two halves of a
//! TLS connection the request loop reads and writes.
//!
//! A connection is served by one worker thread, and its read half
//! (`connection::TimedStream`) and write half ([`Outgoing`]) share one rustls
//! connection: an `Rc<RefCell<..>>`, never borrowed by both at once
//! (each call borrows it for its own duration only). The TLS I/O loops,
//! which re-arm the socket timeout before every socket call, are in the
//! `tls-io` crate (shared with the multihttp plugin).
//!
//! Plain HTTP is untouched by this module: its write half is the socket
//! itself ([`Outgoing::Plain`], with sendfile for large reads).

use std::cell::RefCell;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use tls_io::rustls::{self, ServerConfig, ServerConnection};
use tls_io::Socket;

use crate::live::Live;

/// Reads `--tls-cert` (PEM chain: the server's certificate first) and
/// `--tls-key` into a server configuration: TLS 1.2 and 1.3, HTTP/1.1.
/// Errors name the file and what is wrong with it.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = tls_io::pem::certificates(cert).map_err(|e| format!("--tls-cert: {e}"))?;
    let private_key = tls_io::pem::private_key(key).map_err(|e| format!("--tls-key: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(tls_io::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| {
            format!(
                "cannot use --tls-key {} with --tls-cert {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `--tls-cert`/`--tls-key` and the configuration new connections get.
/// Connections keep the one they started with, so a reload (a renewed
/// certificate, SIGHUP) never disturbs a connection being served.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    config: Live<ServerConfig>,
}

impl ServerTls {
    /// Loads the files (see [`load`]); errors name the file and why.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            config: Live::from_arc(load(cert, key)?),
        })
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.current()
    }

    /// Reads the same files again; on error the previous configuration
    /// stays in force.
    pub fn reload(&self) -> Result<(), String> {
        self.config.replace_arc(load(&self.cert, &self.key)?);
        Ok(())
    }

    /// The certificate file, for the log.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

/// One connection's TLS state, shared by its read and write halves.
#[derive(Clone)]
pub struct Session(Rc<RefCell<ServerConnection>>);

impl Session {
    pub fn new(config: Arc<ServerConfig>) -> io::Result<Session> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Session(Rc::new(RefCell::new(conn))))
    }

    /// Completes the handshake, every socket call armed by `socket`.
    pub fn handshake(&self, socket: &mut dyn Socket) -> io::Result<()> {
        let mut conn = self.0.borrow_mut();
        if !conn.is_handshaking() {
            return Ok(());
        }
        tls_io::handshake(&mut conn, socket)
    }

    pub fn read(&self, socket: &mut dyn Socket, buf: &mut [u8]) -> io::Result<usize> {
        tls_io::read(&mut self.0.borrow_mut(), socket, buf)
    }

    /// Whether input is waiting inside rustls (see
    /// [`tls_io::has_buffered_input`]): polling the socket would miss it.
    pub fn has_buffered_input(&self) -> bool {
        tls_io::has_buffered_input(&mut self.0.borrow_mut())
    }

    /// Whether the client has closed the connection (for writes whose
    /// client gave up: see `handlers::abandoned`). A TLS client's close
    /// is a `close_notify` record before the TCP end, which a peek at the
    /// socket would take for a pipelined request: so the bytes are read
    /// into rustls and looked at.
    pub fn peer_has_closed_now(&self, fd: RawFd) -> bool {
        tls_io::peer_has_closed_now(&mut self.0.borrow_mut(), fd)
    }
}

/// Where a connection's replies go: the socket itself, or encrypted.
pub enum Outgoing {
    Plain(TcpStream),
    Tls { socket: TcpStream, session: Session },
}

impl Outgoing {
    pub fn new(socket: TcpStream, session: Option<Session>) -> Outgoing {
        match session {
            None => Outgoing::Plain(socket),
            Some(session) => Outgoing::Tls { socket, session },
        }
    }

    /// The socket, when bytes may be written to it directly (sendfile):
    /// never on TLS, where every byte is encrypted in user space.
    pub fn plain_socket(&self) -> Option<&TcpStream> {
        match self {
            Outgoing::Plain(socket) => Some(socket),
            Outgoing::Tls { .. } => None,
        }
    }
}

/// The write half's socket: its send timeout (the idle timeout) was set
/// once for the connection, nothing to arm per call.
struct PresetTimeouts(RawFd);

impl Socket for PresetTimeouts {
    fn raw_fd(&self) -> RawFd {
        self.0
    }
    fn arm_read(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn arm_write(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for Outgoing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Outgoing::Plain(socket) => socket.write(buf),
            Outgoing::Tls { socket, session } => tls_io::write(
                &mut session.0.borrow_mut(),
                &mut PresetTimeouts(socket.as_raw_fd()),
                buf,
            ),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Outgoing::Plain(socket) => socket.flush(),
            // `write` sends everything it encrypts.
            Outgoing::Tls { .. } => Ok(()),
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if let Outgoing::Tls { socket, session } = self {
            match session.0.try_borrow_mut() {
                // After a failed handshake the alert said it all.
                Ok(mut conn) if !conn.is_handshaking() => {
                    tls_io::close_notify(&mut conn, socket.as_raw_fd())
                }
                _ => {}
            }
        }
    }
}

/// Logs a handshake that did not complete. A client that stays silent or
/// leaves is routine (port checks, a client giving up): debug. Anything
/// that spoke but not acceptable TLS is worth an operator's look: plain
/// HTTP sent to this HTTPS port, or a client refusing our certificate
/// (its alert is in the message).
pub fn log_handshake_failure(peer: SocketAddr, error: &io::Error) {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        None => log::debug!("{peer}: no TLS handshake: {error}"),
        Some(rustls::Error::InvalidMessage(_)) => log::warn!(
            "{peer}: TLS handshake failed: {error} (plain HTTP sent to this HTTPS port?)"
        ),
        Some(_) => log::warn!("{peer}: TLS handshake failed: {error}"),
    }
}
