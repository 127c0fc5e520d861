//! `TestCa`: a throwaway certificate authority made with the `openssl`
//! CLI in a temp dir, and server certificates it signs, for HTTPS tests
//! (http-disk-server `--tls-cert`, multihttp `cafile=`); and
//! [`tls_exchange`], a TLS client that decides what goes on the wire in
//! which write (curl does not let a test send a request and its
//! `close_notify` in one segment).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::{run_ok, TempDir};

/// A CA: its certificate (what clients trust) and key, in its own dir.
pub struct TestCa {
    /// Shared with the certificates it signs, which live in it too.
    dir: Arc<TempDir>,
    /// PEM certificate of the CA: the `cafile=` / `--cacert` of clients.
    pub cert: PathBuf,
    key: PathBuf,
    /// Certificates between this CA and the root (for an intermediate),
    /// which server certificate files must carry after the leaf.
    chain: Vec<PathBuf>,
}

/// A server certificate file (leaf first, then intermediates) and its key.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: Arc<TempDir>,
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args);
    run_ok(cmd, Duration::from_secs(30))
}

/// A P-256 key (fast to make, supported everywhere) in `dir/name`.
fn new_key(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ],
    );
    dir.join(name)
}

impl TestCa {
    /// A self-signed root CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let key = new_key(dir.path(), "ca.key");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-out",
                "ca.pem",
            ],
        );
        TestCa {
            cert: dir.path().join("ca.pem"),
            key,
            chain: Vec::new(),
            dir,
        }
    }

    /// An intermediate CA signed by this one: its server certificates
    /// only verify with their chain file, as with real CAs.
    pub fn intermediate(&self, name: &str) -> TestCa {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let key = new_key(dir.path(), "ca.key");
        let ext = dir.path().join("ext");
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )
        .unwrap();
        self.sign(dir.path(), &key, name, &ext, &dir.path().join("ca.pem"));
        let mut chain = vec![dir.path().join("ca.pem")];
        chain.extend(self.chain.iter().cloned());
        TestCa {
            cert: dir.path().join("ca.pem"),
            key,
            chain,
            dir,
        }
    }

    /// A server certificate for the subject alternative names `sans`
    /// (e.g. `["IP:127.0.0.1", "DNS:localhost"]`), in files named after
    /// `name`; the certificate file holds the chain up to the root.
    pub fn server_cert(&self, name: &str, sans: &[&str]) -> ServerCert {
        let key = new_key(self.dir.path(), &format!("{name}.key"));
        let ext = self.dir.path().join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                sans.join(",")
            ),
        )
        .unwrap();
        let leaf = self.dir.path().join(format!("{name}.leaf.pem"));
        self.sign(self.dir.path(), &key, name, &ext, &leaf);
        let mut pem = std::fs::read_to_string(&leaf).unwrap();
        for intermediate in &self.chain {
            pem.push_str(&std::fs::read_to_string(intermediate).unwrap());
        }
        let cert = self.dir.path().join(format!("{name}.pem"));
        std::fs::write(&cert, pem).unwrap();
        ServerCert {
            cert,
            key,
            _dir: Arc::clone(&self.dir),
        }
    }

    /// The usual server certificate of the tests: valid for 127.0.0.1,
    /// ::1 and localhost.
    pub fn loopback_cert(&self) -> ServerCert {
        self.server_cert("loopback", &["IP:127.0.0.1", "IP:::1", "DNS:localhost"])
    }

    /// Signs a certificate for `key` (subject `CN=name`, extensions from
    /// `ext`) with this CA, into `out`.
    fn sign(&self, dir: &Path, key: &Path, name: &str, ext: &Path, out: &Path) {
        let csr = dir.join(format!("{name}.csr"));
        let subject = format!("/CN={name}");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &key.display().to_string(),
                "-subj",
                &subject,
                "-out",
                &csr.display().to_string(),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr.display().to_string(),
                "-CA",
                &self.cert.display().to_string(),
                "-CAkey",
                &self.key.display().to_string(),
                "-set_serial",
                &format!("{}", std::process::id() as u64 * 1000 + next_serial()),
                "-days",
                "2",
                "-extfile",
                &ext.display().to_string(),
                "-out",
                &out.display().to_string(),
            ],
        );
    }
}

/// A serial number that differs between certificates of one test run.
fn next_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Connects to `addr` over TLS, trusting `ca_cert`, verifying the server
/// as `host`; sends `request` in one TCP write, followed in that same
/// write by `close_notify` and the end of the sending side when `close`;
/// returns the decrypted reply bytes until the server closes (10 s max).
pub fn tls_exchange(
    addr: &str,
    ca_cert: &Path,
    host: &str,
    request: &[u8],
    close: bool,
) -> Vec<u8> {
    use tls_io::rustls::ClientConnection;
    let config = tls_io::client_trusting(ca_cert).expect("CA certificate");
    let name = host.to_owned().try_into().expect("server name");
    let mut conn = ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut socket).expect("TLS handshake");
    }
    conn.writer().write_all(request).unwrap();
    if close {
        conn.send_close_notify();
    }
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).unwrap();
    }
    socket.write_all(&wire).expect("send");
    if close {
        let _ = socket.shutdown(Shutdown::Write);
    }
    let mut reply = Vec::new();
    let mut tls = tls_io::rustls::Stream::new(&mut conn, &mut socket);
    let _ = tls.read_to_end(&mut reply);
    reply
}
