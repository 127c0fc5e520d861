//! `https://` URLs: the rustls client configuration built once from
//! `cafile=` (or the system CA bundle) and `tls-verify=`.
//!
//! Verification checks the server's certificate chain against those CAs
//! and its name against the URL's host (a DNS name, or an IP address
//! against the certificate's IP SANs). `tls-verify=false` turns both
//! off: the connection is still encrypted, but anyone able to intercept
//! it can pose as the server, so it is logged loudly at start-up.

use std::path::Path;
use std::sync::Arc;

use plugin_glue::config::ConfigError;
use tls_io::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tls_io::rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use tls_io::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tls_io::rustls::{self, ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::config::Config;
use crate::endpoint::Address;

/// CA bundles used for `https://` URLs when `cafile=` is not given, the
/// first that exists: Debian/Ubuntu's, then RHEL/CentOS's (XCP-ng dom0).
pub const SYSTEM_CA_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The client configuration for the `https://` URLs, `None` when all
/// URLs are plain `http://`.
pub fn client_config(config: &Config) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    let any_https = config
        .urls
        .iter()
        .any(|url| Address::parse(url).is_ok_and(|a| a.tls));
    if !any_https {
        // A cafile= with no https URL is still read: a typo should fail now.
        if let Some(cafile) = &config.cafile {
            tls_io::pem::root_store(cafile).map_err(|e| ConfigError::new("cafile", e))?;
        }
        return Ok(None);
    }
    let mut client = if config.tls_verify {
        let system = || {
            SYSTEM_CA_BUNDLES
                .iter()
                .map(Path::new)
                .find(|path| path.exists())
        };
        let Some(cafile) = config.cafile.as_deref().or_else(system) else {
            return Err(ConfigError::new(
                "cafile",
                format!(
                    "https:// URLs need CA certificates: no system bundle ({}), give cafile=PATH",
                    SYSTEM_CA_BUNDLES.join(", ")
                ),
            ));
        };
        tls_io::client_trusting(cafile).map_err(|e| ConfigError::new("cafile", e))?
    } else {
        log::warn!(
            "multihttp: WARNING: tls-verify=false: the certificates and names of https:// servers \
             are NOT checked; the traffic is encrypted, but anyone on the network path can pose \
             as a server and read or change the disk's data"
        );
        let provider = tls_io::provider();
        ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new("urls", format!("TLS set-up: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    };
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(client)))
}

pub use http_client::endpoint::server_name;

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
