//! The client side of the NBD fixed-newstyle handshake, just far enough
//! to hand the socket to the kernel: the kernel's nbd driver only speaks
//! the transmission phase, so whoever attaches (nbd-client, us) must
//! negotiate first. NBD_OPT_EXPORT_NAME is the one option every server
//! answers (nbdkit included) and it returns exactly what the kernel needs:
//! the export's size and transmission flags.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const NBDMAGIC: &[u8; 8] = b"NBDMAGIC";
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_EXPORT_NAME: u32 = 1;
/// Longest export name the protocol allows.
const MAX_NAME: usize = 4096;

/// A socket in the transmission phase, with what the server said.
#[derive(Debug)]
pub struct Negotiated {
    pub socket: UnixStream,
    pub size: u64,
    /// NBD transmission flags (NBD_FLAG_HAS_FLAGS, SEND_FLUSH, ...), for
    /// the kernel's NBD_ATTR_SERVER_FLAGS.
    pub flags: u16,
}

/// Connects to the server on `socket_path` and negotiates `export`;
/// every step bounded by `timeout` (a hung server must not hang us).
pub fn negotiate(socket_path: &Path, export: &str, timeout: Duration) -> io::Result<Negotiated> {
    if export.len() > MAX_NAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "export name over 4096 bytes",
        ));
    }
    let mut socket = UnixStream::connect(socket_path)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    let mut greeting = [0u8; 18];
    socket.read_exact(&mut greeting)?;
    if &greeting[..8] != NBDMAGIC
        || u64::from_be_bytes(greeting[8..16].try_into().unwrap()) != IHAVEOPT
    {
        return Err(protocol("the server is not a newstyle NBD server"));
    }
    let server_flags = u16::from_be_bytes([greeting[16], greeting[17]]);
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(protocol(
            "the server does not offer fixed newstyle negotiation",
        ));
    }
    let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
    let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | if no_zeroes { FLAG_NO_ZEROES } else { 0 });
    let mut request = Vec::with_capacity(20 + export.len());
    request.extend_from_slice(&client_flags.to_be_bytes());
    request.extend_from_slice(&IHAVEOPT.to_be_bytes());
    request.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    request.extend_from_slice(&(export.len() as u32).to_be_bytes());
    request.extend_from_slice(export.as_bytes());
    socket.write_all(&request)?;
    // A server that refuses the name closes the connection: read_exact
    // then fails with UnexpectedEof, which says as much.
    let mut reply = [0u8; 10];
    socket.read_exact(&mut reply).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no reply to export {export:?} (unknown export?): {e}"),
        )
    })?;
    if !no_zeroes {
        socket.read_exact(&mut [0u8; 124])?;
    }
    // The kernel has its own timeouts from here on.
    socket.set_read_timeout(None)?;
    socket.set_write_timeout(None)?;
    Ok(Negotiated {
        socket,
        size: u64::from_be_bytes(reply[..8].try_into().unwrap()),
        flags: u16::from_be_bytes([reply[8], reply[9]]),
    })
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// Makes each test's directory its own.
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    /// nbdkit's memory plugin on a socket in a temp dir; killed on drop.
    struct Server {
        child: Child,
        dir: PathBuf,
    }

    impl Server {
        fn start(args: &[&str]) -> Server {
            let dir = std::env::temp_dir().join(format!(
                "nbd-netlink-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let socket = dir.join("sock");
            let child = Command::new("nbdkit")
                .args(["-f", "-U"])
                .arg(&socket)
                .args(args)
                .stdin(Stdio::null())
                .spawn()
                .expect("nbdkit (scripts/install-deps installs it)");
            let server = Server { child, dir };
            let started = Instant::now();
            while !socket.exists() && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            server
        }
        fn socket(&self) -> PathBuf {
            self.dir.join("sock")
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn nbdkit_gives_the_size_and_flags_of_the_named_export() {
        let server = Server::start(&["-e", "vol", "memory", "3M"]);
        let negotiated = negotiate(&server.socket(), "vol", Duration::from_secs(5)).unwrap();
        assert_eq!(negotiated.size, 3 << 20);
        const HAS_FLAGS: u16 = 1;
        const SEND_FLUSH: u16 = 4;
        assert_eq!(negotiated.flags & HAS_FLAGS, HAS_FLAGS);
        assert_eq!(
            negotiated.flags & SEND_FLUSH,
            SEND_FLUSH,
            "flags {:#x}",
            negotiated.flags
        );
    }

    #[test]
    fn a_read_only_export_says_so() {
        let server = Server::start(&["-r", "memory", "1M"]);
        let negotiated = negotiate(&server.socket(), "", Duration::from_secs(5)).unwrap();
        const READ_ONLY: u16 = 2;
        assert_eq!(negotiated.flags & READ_ONLY, READ_ONLY);
    }

    #[test]
    fn something_that_is_not_an_nbd_server_is_refused() {
        let dir = std::env::temp_dir().join(format!("nbd-netlink-test-{}-x", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let talker = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            peer.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        });
        let error = negotiate(&path, "", Duration::from_secs(5)).unwrap_err();
        assert!(
            error.to_string().contains("not a newstyle NBD server"),
            "{error}"
        );
        talker.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
