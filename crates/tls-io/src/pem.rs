//! Certificates, keys and CA bundles from PEM files, with errors that say
//! which file and what is wrong with it (they end up in start-up errors).

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// Every certificate (`BEGIN CERTIFICATE` block) of a PEM file, in order:
/// a server certificate followed by its intermediates, or a CA bundle.
/// Other blocks (a key in the same file) are skipped.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| explain(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| explain(path, e))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in it (PEM \"BEGIN CERTIFICATE\" blocks expected)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{}: no private key in it (PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" \
             or \"BEGIN EC PRIVATE KEY\" block expected)",
            path.display()
        ),
        other => explain(path, other),
    })
}

/// The CA certificates of a PEM bundle, as trust anchors. Certificates
/// webpki cannot use are skipped (system bundles hold a few); a bundle
/// without a single usable one is an error.
pub fn root_store(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certificates(path)?);
    if added == 0 {
        return Err(format!(
            "{}: none of its {ignored} certificates is a usable CA certificate",
            path.display()
        ));
    }
    Ok(roots)
}

fn explain(path: &Path, error: pem::Error) -> String {
    match error {
        pem::Error::Io(e) => format!("cannot read {}: {e}", path.display()),
        pem::Error::NoItemsFound => format!("{}: no PEM block in it", path.display()),
        other => format!("{}: not a valid PEM file: {other}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A self-signed certificate, for parsing only (made with `openssl req
    // -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj /CN=pem-test`).
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBfDCCASGgAwIBAgIUVqtTZnd2Alft+RKpecPXuq8d6VIwCgYIKoZIzj0EAwIw
EzERMA8GA1UEAwwIcGVtLXRlc3QwHhcNMjYxMTI1MTgwMzI0WhcNMzYxMTIyMTgw
MzI0WjATMREwDwYDVQQDDAhwZW0tdGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABNtRv9OdfdRFeHLxRPzQ3VOt76hrqXUK83+yVBpfEEYGzGQJUOHJclJ8m7zL
uVDzmMhFnQJNgNMK38yIXt3un5GjUzBRMB0GA1UdDgQWBBTcH2ngcsly54m5jOrE
Z+SrXQDTqDAfBgNVHSMEGDAWgBTcH2ngcsly54m5jOrEZ+SrXQDTqDAPBgNVHRMB
Af8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQDMupQwWVQboDPBE60mTRQmvuq1
9Rq1spUMesgJnAs14QIhAJh8Tq0PIXolv3efz0R8pGYtkwN08WQd7oczWmTcVKNq
-----END CERTIFICATE-----
";

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = certificates(&missing).unwrap_err();
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let garbage = file(&dir, "garbage.pem", "hello\n");
        let e = certificates(&garbage).unwrap_err();
        assert!(
            e.contains("garbage.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = private_key(&garbage).unwrap_err();
        assert!(
            e.contains("garbage.pem") && e.contains("no private key"),
            "{e}"
        );
        let cut = file(&dir, "cut.pem", &CERT[..200]);
        let e = certificates(&cut).unwrap_err();
        assert!(
            e.contains("cut.pem") && e.contains("not a valid PEM"),
            "{e}"
        );
    }

    #[test]
    fn certificates_and_keys_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let cert = file(&dir, "cert.pem", CERT);
        assert_eq!(certificates(&cert).unwrap().len(), 1);
        let e = private_key(&cert).unwrap_err();
        assert!(e.contains("no private key"), "{e}");
    }
}
