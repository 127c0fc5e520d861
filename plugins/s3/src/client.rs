//! S3 requests for the disk's objects: ranged GET, PUT, DELETE, batched
//! DeleteObjects, ListObjectsV2, bucket check. Signed with `rusty-s3`
//! (presigned URLs, SigV4), sent with `ureq` over a bounded keep-alive pool.
//!
//! Failures: network errors, 5xx and 429 are retried with backoff (100 ms
//! doubling to 2 s) until `retry-window` has passed, then the request fails
//! with EIO. 403 is EPERM at once (credentials or policy: retrying cannot
//! help). Each request has a deadline of `io-timeout` plus 1 s per MiB it
//! carries (ureq 2 keeps no socket timeouts on pooled connections).

use std::io::Read;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chunk_store::StoreError;
use plugin_glue::Secret;
use rusty_s3::actions::{DeleteObjects, ListObjectsV2, ObjectIdentifier};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::config::Config;

/// Validity of each presigned URL: long enough for any retry of it.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Slowest payload rate a working store is allowed (1 MiB/s).
const MIN_TRANSFER_RATE: f64 = (1 << 20) as f64;
/// At most this many pages when listing (1000 keys each): bounded.
const MAX_LIST_PAGES: usize = 100_000;

/// Why one attempt failed.
enum Failure {
    /// Worth retrying (network, 5xx, 429).
    Transient(String),
    /// Retrying cannot help.
    Final(StoreError),
}

/// The key pair (and session token) as we keep it: the secret parts in
/// [`Secret`] memory, out of core dumps. rusty-s3 wants a [`Credentials`]
/// holding the secret in a heap `String`; one is made for each signature
/// and dropped right after it (rusty-s3 zeroes it on drop), so the heap
/// holds the secret for microseconds per request, not for the life of
/// the process.
struct KeyPair {
    access_key: String,
    /// Checked to be UTF-8 at start-up.
    secret_key: Secret,
    session_token: Option<Secret>,
}

impl KeyPair {
    fn credentials(&self) -> Credentials {
        let secret = self.secret_key.expose_str().unwrap_or_default();
        match self
            .session_token
            .as_ref()
            .and_then(|t| t.expose_str().ok())
        {
            Some(token) => Credentials::new_with_token(self.access_key.clone(), secret, token),
            None => Credentials::new(self.access_key.clone(), secret),
        }
    }
}

pub struct S3Client {
    bucket: Bucket,
    keys: Option<KeyPair>,
    agent: ureq::Agent,
    io_timeout: Duration,
    retry_window: Duration,
}

/// `cafile=`: TLS trusting exactly the CAs of that PEM bundle (ureq's
/// default is Mozilla's list, which knows no private CA).
fn tls_config(cafile: &std::path::Path) -> Result<Arc<tls_io::rustls::ClientConfig>, String> {
    let config = tls_io::client_trusting(cafile).map_err(|e| format!("cafile: {e}"))?;
    Ok(Arc::new(config))
}

/// The `<Code>` of an S3 error body, if any.
fn error_code(body: &str) -> &str {
    body.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map_or("", |(code, _)| code)
}

impl S3Client {
    pub fn new(config: &Config) -> Result<S3Client, String> {
        let endpoint = url::Url::parse(&config.endpoint)
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
        let keys = match (&config.access_key, &config.secret_key) {
            (Some(access_key), Some(secret_key)) => {
                secret_key
                    .expose_str()
                    .map_err(|_| "the secret key is not UTF-8 text".to_owned())?;
                Some(KeyPair {
                    access_key: access_key.clone(),
                    secret_key: secret_key.clone(),
                    session_token: config.session_token.clone(),
                })
            }
            _ => None,
        };
        let mut agent = ureq::AgentBuilder::new();
        if let Some(cafile) = &config.cafile {
            agent = agent.tls_config(tls_config(cafile)?);
        }
        let agent = agent
            .timeout_connect(config.connect_timeout)
            .max_idle_connections(config.pool_size)
            .max_idle_connections_per_host(config.pool_size)
            .redirects(0)
            .user_agent(concat!("nbdkit-s3-plugin/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(S3Client {
            bucket,
            keys,
            agent,
            io_timeout: config.io_timeout,
            retry_window: config.retry_window,
        })
    }

    pub fn bucket_name(&self) -> &str {
        self.bucket.name()
    }

    /// Runs `sign` with credentials that exist only for this call (see
    /// [`KeyPair`]); anonymous requests when no key was given.
    fn signed<T>(&self, sign: impl FnOnce(Option<&Credentials>) -> T) -> T {
        let credentials = self.keys.as_ref().map(KeyPair::credentials);
        sign(credentials.as_ref())
    }

    fn deadline(&self, bytes: usize) -> Duration {
        self.io_timeout + Duration::from_secs_f64(bytes as f64 / MIN_TRANSFER_RATE)
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry
    /// window is over.
    fn with_retries<T>(
        &self,
        what: &dyn Fn() -> String,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            match attempt() {
                Ok(value) => return Ok(value),
                Err(Failure::Final(error)) => return Err(error),
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

    /// Sorts a ureq result: the response, or why it failed. `missing_ok`:
    /// a 404 NoSuchKey is returned as `Ok(None)`.
    fn classify(
        &self,
        what: &str,
        result: Result<ureq::Response, ureq::Error>,
        missing_ok: bool,
    ) -> Result<Option<ureq::Response>, Failure> {
        match result {
            Ok(response) => Ok(Some(response)),
            Err(ureq::Error::Transport(t)) => Err(Failure::Transient(format!(
                "{what}: {}",
                describe_transport(&t)
            ))),
            Err(ureq::Error::Status(status, response)) => {
                let mut body = String::new();
                let _ = response
                    .into_reader()
                    .take(64 * 1024)
                    .read_to_string(&mut body);
                let code = error_code(&body);
                match status {
                    404 if code == "NoSuchKey" && missing_ok => Ok(None),
                    404 if code == "NoSuchBucket" => Err(Failure::Final(StoreError::new(
                        libc::EIO,
                        format!("{what}: bucket {:?} does not exist", self.bucket.name()),
                    ))),
                    403 => Err(Failure::Final(StoreError::new(
                        libc::EPERM,
                        format!(
                            "{what}: access denied ({code}): check the credentials and the bucket's policy"
                        ),
                    ))),
                    429 | 500..=599 => Err(Failure::Transient(format!("{what}: {status} {code}"))),
                    _ => Err(Failure::Final(StoreError::new(
                        libc::EIO,
                        format!("{what}: unexpected {status} {code}"),
                    ))),
                }
            }
        }
    }

    /// Reads `buf.len()` bytes at `offset` of object `key`; `false` when the
    /// object does not exist.
    pub fn get_range(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<bool, StoreError> {
        let last = offset + buf.len() as u64 - 1;
        let what = || format!("GET {key} bytes {offset}-{last}");
        self.with_retries(&what, || {
            let url = self.signed(|c| self.bucket.get_object(c, key).sign(SIGNED_FOR));
            let result = self
                .agent
                .get(url.as_str())
                .timeout(self.deadline(buf.len()))
                .set("Range", &format!("bytes={offset}-{last}"))
                .call();
            let Some(response) = self.classify(&what(), result, true)? else {
                return Ok(false);
            };
            // A 200 is the whole object: usable only when asking from 0.
            let whole = response.status() == 200 && offset == 0;
            let range_ok = response.status() == 206
                && response
                    .header("Content-Range")
                    .is_some_and(|v| v.starts_with(&format!("bytes {offset}-{last}/")));
            if !(whole || range_ok) {
                return Err(Failure::Final(StoreError::new(
                    libc::EIO,
                    format!(
                        "{}: answered {} with Content-Range {:?}: the object is not a whole chunk",
                        what(),
                        response.status(),
                        response.header("Content-Range")
                    ),
                )));
            }
            let mut reader = response.into_reader();
            reader
                .read_exact(buf)
                .map_err(|e| Failure::Transient(format!("{}: body cut short: {e}", what())))?;
            Ok(true)
        })
    }

    /// The whole object `key`, or `None` if it does not exist.
    pub fn get_all(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let what = || format!("GET {key}");
        self.with_retries(&what, || {
            let url = self.signed(|c| self.bucket.get_object(c, key).sign(SIGNED_FOR));
            let result = self.agent.get(url.as_str()).timeout(self.io_timeout).call();
            let Some(response) = self.classify(&what(), result, true)? else {
                return Ok(None);
            };
            let mut body = Vec::new();
            response
                .into_reader()
                .take(limit)
                .read_to_end(&mut body)
                .map_err(|e| Failure::Transient(format!("{}: {e}", what())))?;
            Ok(Some(body))
        })
    }

    pub fn put(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let what = || format!("PUT {key} ({} bytes)", data.len());
        self.with_retries(&what, || {
            let url = self.signed(|c| self.bucket.put_object(c, key).sign(SIGNED_FOR));
            let result = self
                .agent
                .put(url.as_str())
                .timeout(self.deadline(data.len()))
                .send_bytes(data);
            self.classify(&what(), result, false)?;
            Ok(())
        })
    }

    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        let what = || format!("DELETE {key}");
        self.with_retries(&what, || {
            let url = self.signed(|c| self.bucket.delete_object(c, key).sign(SIGNED_FOR));
            let result = self
                .agent
                .delete(url.as_str())
                .timeout(self.io_timeout)
                .call();
            // Deleting a missing object is a success in S3 (204).
            self.classify(&what(), result, true)?;
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
        self.with_retries(&what, || {
            let (url, body, md5) = self.signed(|c| {
                let mut action = DeleteObjects::new(&self.bucket, c, objects.iter());
                action.set_quiet(true);
                let url = action.sign(SIGNED_FOR);
                let (body, md5) = action.body_with_md5();
                (url, body, md5)
            });
            let result = self
                .agent
                .post(url.as_str())
                .timeout(self.deadline(body.len()))
                .set("Content-MD5", &md5)
                .send_string(&body);
            let Some(response) = self.classify(&what(), result, false)? else {
                return Ok(());
            };
            let mut reply = String::new();
            let _ = response
                .into_reader()
                .take(1 << 20)
                .read_to_string(&mut reply);
            // Quiet mode lists only the failures.
            if reply.contains("<Error>") {
                return Err(Failure::Transient(format!(
                    "{}: some objects were not deleted: {}",
                    what(),
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
            let page = self.with_retries(&what, || {
                let url = self.signed(|c| {
                    let mut action = ListObjectsV2::new(&self.bucket, c);
                    action.with_prefix(prefix);
                    if let Some(token) = &token {
                        action.with_continuation_token(token.clone());
                    }
                    action.sign(SIGNED_FOR)
                });
                let result = self.agent.get(url.as_str()).timeout(self.io_timeout).call();
                let Some(response) = self.classify(&what(), result, false)? else {
                    return Err(Failure::Final(StoreError::new(libc::EIO, "listing: 404")));
                };
                let mut body = String::new();
                response
                    .into_reader()
                    .take(64 << 20)
                    .read_to_string(&mut body)
                    .map_err(|e| Failure::Transient(format!("{}: {e}", what())))?;
                ListObjectsV2::parse_response(&body).map_err(|e| {
                    Failure::Final(StoreError::new(
                        libc::EIO,
                        format!("{}: unreadable listing: {e}", what()),
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
        self.with_retries(&what, || {
            let url = self.signed(|c| self.bucket.head_bucket(c).sign(SIGNED_FOR));
            let result = self
                .agent
                .head(url.as_str())
                .timeout(self.io_timeout)
                .call();
            match result {
                // HEAD replies have no body to tell NoSuchBucket: a 404 on
                // the bucket itself means it.
                Err(ureq::Error::Status(404, _)) => Err(Failure::Final(StoreError::new(
                    libc::EIO,
                    format!("bucket {:?} does not exist", self.bucket.name()),
                ))),
                other => self.classify(&what(), other, false).map(|_| ()),
            }
        })
    }
}

/// A ureq transport error without its URL: ours are presigned, and their
/// query (signature, key id, session token) lets anyone repeat the request
/// for an hour. `what` in our messages already names the object.
fn describe_transport(error: &ureq::Transport) -> String {
    let mut text = error.kind().to_string();
    if let Some(message) = error.message() {
        text.push_str(": ");
        text.push_str(message);
    }
    if let Some(source) = std::error::Error::source(error) {
        text.push_str(": ");
        text.push_str(&source.to_string());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_code;

    #[test]
    fn error_codes_are_read_from_s3_error_bodies() {
        let body =
            "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>x</Message></Error>";
        assert_eq!(error_code(body), "NoSuchKey");
        assert_eq!(error_code("garbage"), "");
    }
}
