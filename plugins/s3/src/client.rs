//! S3 requests for the disk's objects: ranged GET, PUT, DELETE, batched
//! DeleteObjects, ListObjectsV2, bucket check. Signed with `rusty-s3`
//! (presigned URLs, SigV4), sent with the shared `http-client` over
//! keep-alive connections to the endpoint.
//!
//! Failures: network errors, 5xx and 429 are retried with backoff (100 ms
//! doubling to 2 s) until `retry-window` has passed, then the request fails
//! with EIO. 403 is EPERM at once (credentials or policy: retrying cannot
//! help). Each request has a deadline of `io-timeout` plus 1 s per MiB it
//! carries. A kept-alive connection the store closed while idle is not a
//! failure: the request goes again on a new one (http-client's endpoint).
//!
//! Why not ureq (used before): Garage (hyper, Nagle on) writes a GET
//! reply's head and body in two segments and sends the body only once the
//! head is ACKed, and Linux delays that ACK ~40 ms on a kept-alive
//! connection: 4 KiB reads ran at ~360 IOPS instead of ~1,600. The fix is
//! a `TCP_QUICKACK` per request (see http-client's `connection`), and
//! ureq 2 gives no hook on its socket. Data GET bodies are received
//! straight into nbdkit's buffer.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chunk_store::StoreError;
use http_client::connection::{Deadline, MIN_TRANSFER_RATE};
use http_client::endpoint::{server_name, Address, Endpoint, Lease, Pool, SendError};
use http_client::request::Request;
use http_client::response::{Body, ResponseHead};
use plugin_glue::refreshable::Refreshable;
use rusty_s3::actions::{DeleteObjects, ListObjectsV2, ObjectIdentifier};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tls_io::rustls::{ClientConfig, RootCertStore};
use tls_io::Trust;
use url::{Position, Url};

use crate::config::Config;
use crate::credentials::KeyPair;

/// Validity of each presigned URL: long enough for any retry of it.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// At most this many pages when listing (1000 keys each): bounded.
const MAX_LIST_PAGES: usize = 100_000;
/// Error documents are read up to this size (for their `<Code>`), and
/// the connection kept; larger ones are dropped with it.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest DeleteObjects reply read (quiet mode lists only failures).
const MAX_DELETE_REPLY: usize = 1 << 20;
/// Largest ListObjectsV2 page (1000 keys of up to 1 KiB, and XML around).
const MAX_LIST_PAGE: usize = 64 << 20;
/// How many times one request is sent again at once after a refusal,
/// each time with a key pair read anew: more than one rotation during
/// one request is possible, an endless loop is not.
const MAX_ROTATION_RESENDS: usize = 3;
/// Error codes of a 400 that mean the session token, not the request.
const TOKEN_REFUSED: [&str; 3] = ["ExpiredToken", "InvalidToken", "TokenRefreshRequired"];
const USER_AGENT: &str = concat!("nbdkit-s3-plugin/", env!("CARGO_PKG_VERSION"));

/// Why one attempt failed.
enum Failure {
    /// Worth retrying (network, 5xx, 429).
    Transient(String),
    /// Retrying cannot help.
    Final(StoreError),
    /// The credentials were refused: worth sending again only with a new
    /// key pair (see [`S3Client::with_retries`]), else final.
    Refused(StoreError),
}

/// Runs `sign` with credentials that exist only for this call (see
/// [`KeyPair`]); anonymous requests when no key was given.
fn signed<T>(keys: Option<&KeyPair>, sign: impl FnOnce(Option<&Credentials>) -> T) -> T {
    let credentials = keys.map(KeyPair::credentials);
    sign(credentials.as_ref())
}

pub struct S3Client {
    bucket: Bucket,
    /// `None`: anonymous requests.
    /// Shared by [`S3Client::sibling`]s: one re-read of a rotated key
    /// serves them all.
    keys: Option<Arc<Refreshable<KeyPair>>>,
    /// The store (the bucket's host with virtual-host addressing) and its
    /// keep-alive connections.
    endpoint: Endpoint,
    /// The `Host` header, exactly as rusty-s3 signs it.
    host: String,
    connect_timeout: Duration,
    io_timeout: Duration,
    retry_window: Duration,
}

/// The TLS client configuration of an `https://` endpoint: trusting
/// exactly the CAs of `cafile=`, else Mozilla's list built in
/// (webpki-roots, what the plugin trusted through ureq before). Not the
/// system bundle as multihttp: S3 stores are mostly public services
/// with public CAs, and the built-in list is the same on every host,
/// whatever its bundle's age or path (dom0s differ); a private CA is
/// what `cafile=` is for.
fn tls_config(cafile: Option<&std::path::Path>) -> Result<Arc<ClientConfig>, String> {
    let roots = match cafile {
        Some(cafile) => tls_io::pem::root_store(cafile).map_err(|e| format!("cafile: {e}"))?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    tls_io::client_config(Trust::Roots(roots)).map(Arc::new)
}

/// The `Host` header of `url` as rusty-s3 signs it: the host, and the
/// port unless it is the scheme's default (which `Url` leaves out).
fn host_header(url: &Url) -> &str {
    &url[Position::BeforeHost..Position::AfterPort]
}

/// The `<Code>` of an S3 error body, if any.
fn error_code(body: &str) -> &str {
    body.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map_or("", |(code, _)| code)
}

impl S3Client {
    pub fn new(config: &Config) -> Result<S3Client, String> {
        let endpoint = Url::parse(&config.endpoint)
            .map_err(|e| format!("endpoint {:?}: {e}", config.endpoint))?;
        let style = if config.virtual_host {
            UrlStyle::VirtualHost
        } else {
            UrlStyle::Path
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| format!("bucket {:?} at {}: {e}", config.bucket, config.endpoint))?;
        let keys = config
            .keys
            .clone()
            .map(|source| Arc::new(source.into_refreshable()));
        let base = bucket.base_url();
        let address = Address::parse(base.as_str())
            .map_err(|e| format!("endpoint {:?}: {e}", config.endpoint))?;
        // A cafile= with an http:// endpoint is still read: a typo fails now.
        let tls = match (address.tls, config.cafile.as_deref()) {
            (true, cafile) => Some((tls_config(cafile)?, server_name(&address.host)?)),
            (false, Some(cafile)) => tls_config(Some(cafile)).map(|_| None)?,
            (false, None) => None,
        };
        let pool = Pool {
            // Not bounded: nbdkit's threads (16 per NBD connection) all
            // send at once, and the store takes any number of connections.
            max_open: usize::MAX,
            max_idle: config.pool_size,
            quick_ack: true,
        };
        Ok(S3Client {
            host: host_header(base).to_owned(),
            endpoint: Endpoint::new(address, pool, tls),
            bucket,
            keys,
            connect_timeout: config.connect_timeout,
            io_timeout: config.io_timeout,
            retry_window: config.retry_window,
        })
    }

    /// Another client of the same store, signing with this one's keys,
    /// with the connection and timing settings of `config` (the lease's:
    /// its own connections, a shorter retry window).
    pub fn sibling(&self, config: &Config) -> Result<S3Client, String> {
        let mut sibling = S3Client::new(&Config {
            keys: None,
            ..config.clone()
        })?;
        sibling.keys = self.keys.clone();
        Ok(sibling)
    }

    pub fn bucket_name(&self) -> &str {
        self.bucket.name()
    }

    /// The deadline of a request carrying `bytes`.
    fn deadline(&self, bytes: usize) -> Deadline {
        Deadline::for_payload(self.io_timeout, bytes as u64, MIN_TRANSFER_RATE)
    }

    /// Runs `attempt`, signing with the key pair in use (see [`signed`]),
    /// until it succeeds, fails for good, or the retry window is over. A
    /// refusal is sent again at once, up to [`MAX_ROTATION_RESENDS`]
    /// times, when the key files hold another key than the one refused:
    /// the store may have moved to a new key before this plugin looked
    /// at its files.
    fn with_retries<T>(
        &self,
        what: &dyn Fn() -> String,
        mut attempt: impl FnMut(Option<&KeyPair>) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut resends = 0;
        loop {
            let keys = self.keys.as_deref().map(Refreshable::current);
            match attempt(keys.as_deref()) {
                Ok(value) => return Ok(value),
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Refused(error)) => {
                    let rotated = resends < MAX_ROTATION_RESENDS
                        && self
                            .keys
                            .as_ref()
                            .zip(keys.as_ref())
                            .is_some_and(|(keys, used)| keys.reload_after_refusal(used));
                    if !rotated {
                        return Err(error);
                    }
                    resends += 1;
                    log::info!("s3: {} refused, sending it again with the new key", what());
                }
                Err(Failure::Transient(why)) => {
                    let elapsed = started.elapsed();
                    if elapsed >= self.retry_window {
                        return Err(StoreError::new(
                            libc::EIO,
                            format!(
                                "{} failed for {:?} (retry-window); last error: {why}",
                                what(),
                                self.retry_window
                            ),
                        ));
                    }
                    log::debug!("s3: {} failed, retrying: {why}", what());
                    thread::sleep(backoff.min(self.retry_window - elapsed));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Sends one request to the presigned `url` and reads the reply head.
    /// Errors never carry the URL: its query (signature, key id, session
    /// token) lets anyone repeat the request for an hour; `what` names
    /// the object instead.
    fn send(
        &self,
        what: &str,
        method: &str,
        url: &Url,
        headers: &[(&str, &str)],
        body: &[u8],
        deadline: &Deadline,
    ) -> Result<(Lease<'_>, ResponseHead), Failure> {
        let final_error =
            |why: String| Failure::Final(StoreError::new(libc::EIO, format!("{what}: {why}")));
        // rusty-s3 builds every URL on the bucket's base URL: same host.
        if host_header(url) != self.host {
            return Err(final_error(format!(
                "signed for host {:?}, not the endpoint's {:?}",
                host_header(url),
                self.host
            )));
        }
        let request = Request {
            method,
            target: &url[Position::BeforePath..],
            host: &self.host,
            user_agent: USER_AGENT,
            headers,
            content_length: matches!(method, "PUT" | "POST").then_some(body.len() as u64),
        };
        let (wire, tail) = request.wire(body).map_err(final_error)?;
        self.endpoint
            .send(&wire, tail, self.connect_timeout, deadline)
            .map_err(|e| {
                Failure::Transient(match e {
                    // The words ureq used: logs and scripts look for them.
                    SendError::Connect(why) => format!("{what}: Connection Failed: {why}"),
                    SendError::Exchange(why) => format!("{what}: {why}"),
                })
            })
    }

    /// Sorts a reply: a 2xx is returned for its body to be read; any other
    /// is an error, its S3 error document read (and its connection kept
    /// when possible). `missing_ok`: a 404 NoSuchKey is `Ok(None)`.
    fn classify<'a>(
        &self,
        what: &str,
        method: &str,
        (mut lease, head): (Lease<'a>, ResponseHead),
        missing_ok: bool,
        deadline: &Deadline,
    ) -> Result<Option<(Lease<'a>, ResponseHead)>, Failure> {
        let status = head.status;
        if (200..300).contains(&status) {
            return Ok(Some((lease, head)));
        }
        let body = head
            .body(method)
            .and_then(|framing| {
                let body = lease.read_to_vec(framing, MAX_ERROR_BODY, deadline)?;
                if framing != Body::UntilClose && head.keep_alive() {
                    lease.keep();
                }
                Ok(body)
            })
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body);
        let code = error_code(&body);
        match status {
            404 if code == "NoSuchKey" && missing_ok => Ok(None),
            404 if code == "NoSuchBucket" => Err(Failure::Final(StoreError::new(
                libc::EIO,
                format!("{what}: bucket {:?} does not exist", self.bucket.name()),
            ))),
            403 => Err(Failure::Refused(StoreError::new(
                libc::EPERM,
                format!(
                    "{what}: access denied ({code}): check the credentials and the bucket's policy"
                ),
            ))),
            // AWS answers an expired or unknown session token with a 400.
            400 if TOKEN_REFUSED.contains(&code) => Err(Failure::Refused(StoreError::new(
                libc::EPERM,
                format!("{what}: session token refused ({code}): give a new one"),
            ))),
            429 | 500..=599 => Err(Failure::Transient(format!("{what}: {status} {code}"))),
            _ => Err(Failure::Final(StoreError::new(
                libc::EIO,
                format!("{what}: unexpected {status} {code}"),
            ))),
        }
    }

    /// Reads a whole (small) 2xx body of at most `limit` bytes, keeping the
    /// connection when the store does.
    fn read_small_body(
        &self,
        what: &str,
        method: &str,
        (mut lease, head): (Lease<'_>, ResponseHead),
        limit: usize,
        deadline: &Deadline,
    ) -> Result<Vec<u8>, Failure> {
        let framing = head
            .body(method)
            .map_err(|e| Failure::Transient(format!("{what}: {e}")))?;
        if let Body::Length(len) = framing {
            if len > limit as u64 {
                return Err(Failure::Final(StoreError::new(
                    libc::EIO,
                    format!("{what}: a reply of {len} bytes, more than the {limit} expected"),
                )));
            }
        }
        let body = lease
            .read_to_vec(framing, limit, deadline)
            .map_err(|e| Failure::Transient(format!("{what}: {e}")))?;
        if framing != Body::UntilClose && head.keep_alive() {
            lease.keep();
        }
        Ok(body)
    }

    /// Reads `buf.len()` bytes at `offset` of object `key`; `false` when the
    /// object does not exist.
    pub fn get_range(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<bool, StoreError> {
        let last = offset + buf.len() as u64 - 1;
        let what = || format!("GET {key} bytes {offset}-{last}");
        let range = format!("bytes={offset}-{last}");
        self.with_retries(&what, |keys| {
            let what = what();
            let url = signed(keys, |c| self.bucket.get_object(c, key).sign(SIGNED_FOR));
            let deadline = self.deadline(buf.len());
            let reply = self.send(&what, "GET", &url, &[("Range", &range)], &[], &deadline)?;
            let Some((mut lease, head)) = self.classify(&what, "GET", reply, true, &deadline)?
            else {
                return Ok(false);
            };
            // A 200 is the whole object: usable only when asking from 0.
            let whole = head.status == 200 && offset == 0;
            let range_ok = head.status == 206
                && head
                    .header("Content-Range")
                    .is_some_and(|v| v.starts_with(&format!("bytes {offset}-{last}/")));
            if !(whole || range_ok) {
                return Err(Failure::Final(StoreError::new(
                    libc::EIO,
                    format!(
                        "{what}: answered {} with Content-Range {:?}: the object is not a whole chunk",
                        head.status,
                        head.header("Content-Range")
                    ),
                )));
            }
            let cut = |why: String| Failure::Transient(format!("{what}: {why}"));
            let wanted = buf.len() as u64;
            match head.body("GET").map_err(cut)? {
                // The usual reply: straight into nbdkit's buffer.
                Body::Length(len) if len == wanted => {
                    lease.read_body(buf, &deadline).map_err(cut)?;
                    if head.keep_alive() {
                        lease.keep();
                    }
                }
                // The whole object, longer than asked (it holds the chunk
                // from offset 0): the rest is not read, the connection dropped.
                Body::Length(len) if whole && len > wanted => {
                    lease.read_body(buf, &deadline).map_err(cut)?;
                }
                Body::UntilClose => lease.read_body(buf, &deadline).map_err(cut)?,
                Body::Chunked => {
                    let body = lease
                        .read_to_vec(Body::Chunked, buf.len(), &deadline)
                        .map_err(cut)?;
                    if body.len() != buf.len() {
                        return Err(cut(format!("{} bytes instead of {wanted}", body.len())));
                    }
                    buf.copy_from_slice(&body);
                    if head.keep_alive() {
                        lease.keep();
                    }
                }
                other => return Err(cut(format!("{other:?} body for {wanted} bytes asked"))),
            }
            Ok(true)
        })
    }

    /// The whole object `key` (at most `limit` bytes), or `None` if it
    /// does not exist.
    pub fn get_all(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get_tagged(key, limit)?.map(|(body, _)| body))
    }

    /// Like [`S3Client::get_all`], with the object's ETag (empty when the
    /// store sends none).
    pub fn get_tagged(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        let what = || format!("GET {key}");
        self.with_retries(&what, |keys| {
            let what = what();
            let url = signed(keys, |c| self.bucket.get_object(c, key).sign(SIGNED_FOR));
            let deadline = self.deadline(0);
            let reply = self.send(&what, "GET", &url, &[], &[], &deadline)?;
            match self.classify(&what, "GET", reply, true, &deadline)? {
                None => Ok(None),
                Some(reply) => {
                    let etag = reply.1.header("ETag").unwrap_or_default().to_owned();
                    self.read_small_body(&what, "GET", reply, limit, &deadline)
                        .map(|body| Some((body, etag)))
                }
            }
        })
    }

    pub fn put(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        // Without a precondition there is nothing to refuse it for.
        self.put_if(key, data, None).map(drop)
    }

    /// PUT with a precondition header (`If-Match: ETAG`, `If-None-Match:
    /// *`): `false` when the store refused it for that precondition (412,
    /// or AWS's 409 ConditionalRequestConflict). A store that does not
    /// know conditional PUTs ignores the header and stores the object.
    pub fn put_if(
        &self,
        key: &str,
        data: &[u8],
        precondition: Option<(&str, &str)>,
    ) -> Result<bool, StoreError> {
        let what = || format!("PUT {key} ({} bytes)", data.len());
        let headers: Vec<(&str, &str)> = precondition.into_iter().collect();
        self.with_retries(&what, |keys| {
            let what = what();
            let url = signed(keys, |c| self.bucket.put_object(c, key).sign(SIGNED_FOR));
            let deadline = self.deadline(data.len());
            let reply = self.send(&what, "PUT", &url, &headers, data, &deadline)?;
            if precondition.is_some() && matches!(reply.1.status, 409 | 412) {
                return Ok(false);
            }
            if let Some(reply) = self.classify(&what, "PUT", reply, false, &deadline)? {
                self.read_small_body(&what, "PUT", reply, MAX_ERROR_BODY, &deadline)?;
            }
            Ok(true)
        })
    }

    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        let what = || format!("DELETE {key}");
        self.with_retries(&what, |keys| {
            let what = what();
            let url = signed(keys, |c| self.bucket.delete_object(c, key).sign(SIGNED_FOR));
            let deadline = self.deadline(0);
            let reply = self.send(&what, "DELETE", &url, &[], &[], &deadline)?;
            // Deleting a missing object is a success in S3 (204).
            if let Some(reply) = self.classify(&what, "DELETE", reply, true, &deadline)? {
                self.read_small_body(&what, "DELETE", reply, MAX_ERROR_BODY, &deadline)?;
            }
            Ok(())
        })
    }

    /// Deletes up to 1000 objects in one DeleteObjects request.
    pub fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        let what = || format!("DeleteObjects of {} keys from {}", keys.len(), keys[0]);
        let objects: Vec<ObjectIdentifier> = keys
            .iter()
            .map(|k| ObjectIdentifier::new(k.clone()))
            .collect();
        self.with_retries(&what, |keys| {
            let what = what();
            let (url, body, md5) = signed(keys, |c| {
                let mut action = DeleteObjects::new(&self.bucket, c, objects.iter());
                action.set_quiet(true);
                let url = action.sign(SIGNED_FOR);
                let (body, md5) = action.body_with_md5();
                (url, body, md5)
            });
            let deadline = self.deadline(body.len());
            let headers = [("Content-MD5", md5.as_str())];
            let reply = self.send(&what, "POST", &url, &headers, body.as_bytes(), &deadline)?;
            let Some(reply) = self.classify(&what, "POST", reply, false, &deadline)? else {
                return Ok(());
            };
            let reply = self.read_small_body(&what, "POST", reply, MAX_DELETE_REPLY, &deadline)?;
            let reply = String::from_utf8_lossy(&reply);
            // Quiet mode lists only the failures.
            if reply.contains("<Error>") {
                return Err(Failure::Transient(format!(
                    "{what}: some objects were not deleted: {}",
                    reply.chars().take(300).collect::<String>()
                )));
            }
            Ok(())
        })
    }

    /// Every key under `prefix`, in S3's (lexicographic) order.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let what = || format!("ListObjectsV2 {prefix}");
            let page = self.with_retries(&what, |keys| {
                let what = what();
                let url = signed(keys, |c| {
                    let mut action = ListObjectsV2::new(&self.bucket, c);
                    action.with_prefix(prefix);
                    if let Some(token) = &token {
                        action.with_continuation_token(token.clone());
                    }
                    action.sign(SIGNED_FOR)
                });
                let deadline = self.deadline(0);
                let reply = self.send(&what, "GET", &url, &[], &[], &deadline)?;
                let Some(reply) = self.classify(&what, "GET", reply, false, &deadline)? else {
                    return Err(Failure::Final(StoreError::new(libc::EIO, "listing: 404")));
                };
                let body = self.read_small_body(&what, "GET", reply, MAX_LIST_PAGE, &deadline)?;
                let body = String::from_utf8_lossy(&body);
                ListObjectsV2::parse_response(&body).map_err(|e| {
                    Failure::Final(StoreError::new(
                        libc::EIO,
                        format!("{what}: unreadable listing: {e}"),
                    ))
                })
            })?;
            keys.extend(page.contents.into_iter().map(|c| c.key));
            match page.next_continuation_token {
                Some(next) => token = Some(next),
                None => return Ok(keys),
            }
        }
        Err(StoreError::new(
            libc::EIO,
            format!("listing {prefix}: more than {MAX_LIST_PAGES} pages"),
        ))
    }

    /// Fails clearly when the bucket is missing or not ours to use.
    pub fn check_bucket(&self) -> Result<(), StoreError> {
        let what = || format!("HEAD bucket {}", self.bucket.name());
        self.with_retries(&what, |keys| {
            let what = what();
            let url = signed(keys, |c| self.bucket.head_bucket(c).sign(SIGNED_FOR));
            let deadline = self.deadline(0);
            let (lease, head) = self.send(&what, "HEAD", &url, &[], &[], &deadline)?;
            // HEAD replies have no body to tell NoSuchBucket: a 404 on the
            // bucket itself means it.
            if head.status == 404 {
                return Err(Failure::Final(StoreError::new(
                    libc::EIO,
                    format!("bucket {:?} does not exist", self.bucket.name()),
                )));
            }
            if let Some((lease, head)) =
                self.classify(&what, "HEAD", (lease, head), false, &deadline)?
            {
                if head.keep_alive() {
                    lease.keep();
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_is_the_one_rusty_s3_signs() {
        let host = |url: &str| host_header(&Url::parse(url).unwrap()).to_owned();
        assert_eq!(host("http://127.0.0.1:3900/disks/k?X=1"), "127.0.0.1:3900");
        // Url drops a default port: so does the signature's host.
        assert_eq!(host("http://S3.Example:80/b"), "s3.example");
        assert_eq!(host("https://s3.example:443/b"), "s3.example");
        assert_eq!(host("https://[::1]:8443/b"), "[::1]:8443");
    }

    #[test]
    fn https_without_cafile_trusts_the_built_in_list() {
        let config = tls_config(None).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let missing = tls_config(Some(std::path::Path::new("/nonexistent/ca.pem")));
        assert!(missing.is_err_and(|e| e.starts_with("cafile")));
    }

    #[test]
    fn error_codes_are_read_from_s3_error_bodies() {
        let body =
            "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>x</Message></Error>";
        assert_eq!(error_code(body), "NoSuchKey");
        assert_eq!(error_code("garbage"), "");
    }
}
