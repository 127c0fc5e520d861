//! `https://` URLs: the rustls client configuration built once from
//! `cafile=` (or the system CA bundle) and `tls-verify=`.
//!
//! The CA file is read again when it is rewritten, and when a server's
//! certificate does not verify after it was (see [`RotatingCa`]): a CA is
//! rotated by adding the new CA to the file, renewing the servers'
//! certificates, then removing the old CA, with no nbdkit restart.
//!
//! Verification checks the server's certificate chain against those CAs
//! and its name against the URL's host (a DNS name, or an IP address
//! against the certificate's IP SANs). `tls-verify=false` turns both
//! off: the connection is still encrypted, but anyone able to intercept
//! it can pose as the server, so it is logged loudly at start-up.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use lock_ext::RwLockIgnoringPoison;
use plugin_glue::config::ConfigError;
use tls_io::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tls_io::rustls::client::WebPkiServerVerifier;
use tls_io::rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use tls_io::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tls_io::rustls::{self, ClientConfig, DigitallySignedStruct, SignatureScheme};

use plugin_glue::watched_file::WatchedFile;

/// CA bundles used for `https://` URLs when `cafile=` is not given, the
/// first that exists: Debian/Ubuntu's, then RHEL/CentOS's (XCP-ng dom0).
pub const SYSTEM_CA_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// What the TLS client configuration is made from (keys `urls=`,
/// `cafile=`, `tls-verify=`).
pub struct TlsKeys<'a> {
    /// Some URL is `https://`.
    pub any_https: bool,
    pub cafile: Option<&'a Path>,
    pub verify: bool,
}

/// The client configuration for the `https://` URLs, `None` when all
/// URLs are plain `http://`.
pub fn client_config(keys: &TlsKeys<'_>) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    if !keys.any_https {
        // A cafile= with no https URL is still read: a typo should fail now.
        if let Some(cafile) = keys.cafile {
            tls_io::pem::root_store(cafile).map_err(|e| ConfigError::new("cafile", e))?;
        }
        return Ok(None);
    }
    let verifier: Arc<dyn ServerCertVerifier> = if keys.verify {
        let system = || {
            SYSTEM_CA_BUNDLES
                .iter()
                .map(Path::new)
                .find(|path| path.exists())
        };
        let Some(cafile) = keys.cafile.or_else(system) else {
            return Err(ConfigError::new(
                "cafile",
                format!(
                    "https:// URLs need CA certificates: no system bundle ({}), give cafile=PATH",
                    SYSTEM_CA_BUNDLES.join(", ")
                ),
            ));
        };
        Arc::new(
            RotatingCa::new(cafile.to_owned(), tls_io::provider())
                .map_err(|e| ConfigError::new("cafile", e))?,
        )
    } else {
        log::warn!(
            "multihttp: WARNING: tls-verify=false: the certificates and names of https:// servers \
             are NOT checked; the traffic is encrypted, but anyone on the network path can pose \
             as a server and read or change the disk's data"
        );
        Arc::new(NoVerification(tls_io::provider()))
    };
    let client = tls_io::client_config(tls_io::Trust::Verifier(verifier))
        .map_err(|e| ConfigError::new("urls", e))?;
    Ok(Some(Arc::new(client)))
}

pub use http_client::endpoint::server_name;

/// Verifies servers against the CAs of a PEM file that may be rotated
/// under a running nbdkit. The file is looked at (a `stat`, at most once
/// a second) before a certificate is checked, and at once when one does
/// not verify: the servers may have been given certificates of the new
/// CA within the same second. A file that cannot be read or holds no CA
/// keeps the CAs in use (logged), so a half-written file never stops the
/// disk.
#[derive(Debug)]
pub struct RotatingCa {
    file: WatchedFile,
    provider: Arc<CryptoProvider>,
    verifier: RwLock<Arc<WebPkiServerVerifier>>,
}

impl RotatingCa {
    pub fn new(cafile: PathBuf, provider: Arc<CryptoProvider>) -> Result<RotatingCa, String> {
        let verifier = verifier_for(&cafile, &provider)?;
        Ok(RotatingCa {
            file: WatchedFile::new(cafile),
            provider,
            verifier: RwLock::new(verifier),
        })
    }

    fn current(&self) -> Arc<WebPkiServerVerifier> {
        Arc::clone(&self.verifier.read_ignoring_poison())
    }

    /// Reads the file again; `false` (and the CAs in use kept) when it
    /// cannot be used.
    fn reload(&self) -> bool {
        match verifier_for(self.file.path(), &self.provider) {
            Ok(verifier) => {
                *self.verifier.write_ignoring_poison() = verifier;
                log::info!("cafile {}: read the CAs again", self.file.path().display());
                true
            }
            Err(e) => {
                log::warn!("cafile: {e}; keeping the CAs in use");
                false
            }
        }
    }
}

fn verifier_for(
    cafile: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let roots = tls_io::pem::root_store(cafile)?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| format!("{}: {e}", cafile.display()))
}

impl ServerCertVerifier for RotatingCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.file.changed() {
            self.reload();
        }
        let verify = || {
            self.current().verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )
        };
        match verify() {
            Err(rustls::Error::InvalidCertificate(_))
                if self.file.changed_now() && self.reload() =>
            {
                verify()
            }
            outcome => outcome,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// `tls-verify=false`: any certificate, any name. Handshake signatures
/// are still checked (the server must hold the key of the certificate
/// it sent), which costs nothing and keeps the handshake well-formed.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
