//! The key pair the plugin signs with, where it comes from, and reading
//! it again when it is rotated (issue #20, #23): a key file rewritten, or
//! a request refused (403, or an expired session token), makes the
//! plugin read its files again and resend with the new key, without
//! restarting nbdkit. The mechanism is plugin-glue's [`Refreshable`].
//!
//! Sources, first that applies:
//! 1. `access-key=` with `secret-key=` (and `session-token=`): with the
//!    `+FILE` form, each file is read again when rewritten;
//! 2. `credentials-file=` and `profile=`: the AWS shared credentials file
//!    (`[profile]` with `aws_access_key_id`, `aws_secret_access_key`,
//!    `aws_session_token`), read again as a whole: one file holds a new
//!    key id and its secret together, which a store that issues a new
//!    key id per key (Garage, AWS IAM) needs;
//! 3. `$AWS_ACCESS_KEY_ID`, `$AWS_SECRET_ACCESS_KEY`, `$AWS_SESSION_TOKEN`
//!    (fixed: the environment cannot change);
//! 4. `$AWS_SHARED_CREDENTIALS_FILE` with `$AWS_PROFILE`, as 2.
//!
//! `~/.aws/credentials` is not read unless named: nbdkit runs as root
//! from a service, and whether a stray file exists in root's home must
//! not change what the disk is signed with.

use std::path::{Path, PathBuf};

use plugin_glue::refreshable::Refreshable;
use plugin_glue::secret::wipe;
use plugin_glue::Secret;
use rusty_s3::Credentials;

/// The key pair (and session token) as we keep it: the secret parts in
/// [`Secret`] memory, out of core dumps. rusty-s3 wants a [`Credentials`]
/// holding the secret in a heap `String`; one is made for each signature
/// and dropped right after it (rusty-s3 zeroes it on drop), so the heap
/// holds the secret for microseconds per request, not for the life of
/// the process.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyPair {
    pub access_key: String,
    /// Checked to be UTF-8 when read.
    pub secret_key: Secret,
    pub session_token: Option<Secret>,
}

impl KeyPair {
    pub fn credentials(&self) -> Credentials {
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

/// Where the key pair comes from (see the module's list).
#[derive(Clone, Debug, PartialEq)]
pub enum KeySource {
    /// Keys given on the command line or in the environment; the files
    /// of the `+FILE` forms, read again when rotated.
    Given {
        keys: KeyPair,
        secret_file: Option<PathBuf>,
        token_file: Option<PathBuf>,
    },
    /// A profile of an AWS shared credentials file, read at start-up.
    SharedFile {
        keys: KeyPair,
        path: PathBuf,
        profile: String,
    },
}

impl KeySource {
    /// Reads `profile` of the shared credentials file at `path`.
    pub fn shared_file(path: PathBuf, profile: String) -> Result<KeySource, String> {
        let keys = read_profile(&path, &profile)?;
        Ok(KeySource::SharedFile {
            keys,
            path,
            profile,
        })
    }

    /// The key pair as requests take it: read again from its files when
    /// they change or a request is refused.
    pub fn into_refreshable(self) -> Refreshable<KeyPair> {
        match self {
            KeySource::Given {
                keys,
                secret_file: None,
                token_file: None,
            } => Refreshable::fixed(keys),
            KeySource::Given {
                keys,
                secret_file,
                token_file,
            } => {
                let files: Vec<PathBuf> = secret_file.iter().chain(&token_file).cloned().collect();
                let what = format!(
                    "s3 key files {}",
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let fixed = keys.clone();
                Refreshable::from_files(keys, what, files, move || {
                    let secret_key = match &secret_file {
                        Some(path) => read_text_secret(path, "secret-key")?,
                        None => fixed.secret_key.clone(),
                    };
                    let session_token = match &token_file {
                        Some(path) => Some(read_text_secret(path, "session-token")?),
                        None => fixed.session_token.clone(),
                    };
                    Ok(KeyPair {
                        access_key: fixed.access_key.clone(),
                        secret_key,
                        session_token,
                    })
                })
            }
            KeySource::SharedFile {
                keys,
                path,
                profile,
            } => {
                let what = format!("s3 credentials file {} [{profile}]", path.display());
                Refreshable::from_files(keys, what, vec![path.clone()], move || {
                    read_profile(&path, &profile)
                })
            }
        }
    }
}

/// A `+FILE` secret read again: its first line, which must be UTF-8
/// (signing takes text).
fn read_text_secret(path: &Path, key: &str) -> Result<Secret, String> {
    let secret = Secret::read_first_line(path).map_err(|e| format!("{key}: {e}"))?;
    match secret.expose_str() {
        Ok(_) => Ok(secret),
        Err(_) => Err(format!("{key}: {} is not UTF-8 text", path.display())),
    }
}

/// The key pair of `[profile]` in the AWS shared credentials file at
/// `path`. The file's bytes are zeroed once parsed; the secret parts live
/// only in [`Secret`] memory. Errors name the file, the profile and the
/// missing setting, never a value.
pub fn read_profile(path: &Path, profile: &str) -> Result<KeyPair, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("credentials file {}: {e}", path.display()))?;
    let parsed = parse_profile(&bytes, profile);
    wipe(&mut bytes);
    parsed.map_err(|why| format!("credentials file {} [{profile}]: {why}", path.display()))
}

/// The INI dialect of AWS's shared credentials file: `[name]` sections,
/// `key = value` lines, `#` and `;` comment lines; keys compared without
/// regard to case.
fn parse_profile(text: &[u8], profile: &str) -> Result<KeyPair, String> {
    let mut in_profile = false;
    let mut found = false;
    let mut access_key = None;
    let mut secret_key = None;
    let mut session_token = None;
    for line in text.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") || line.starts_with(b";") {
            continue;
        }
        if let Some(name) = line.strip_prefix(b"[").and_then(|l| l.strip_suffix(b"]")) {
            in_profile = name.trim_ascii() == profile.as_bytes();
            found |= in_profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            return Err("a line in the profile is not key = value".into());
        };
        let (key, value) = (line[..eq].trim_ascii(), line[eq + 1..].trim_ascii());
        let text_secret = |name: &str| {
            let secret = Secret::new(value);
            match secret.expose_str() {
                Ok(_) => Ok(secret),
                Err(_) => Err(format!("{name} is not UTF-8 text")),
            }
        };
        match key.to_ascii_lowercase().as_slice() {
            b"aws_access_key_id" => {
                access_key = Some(
                    String::from_utf8(value.to_vec())
                        .map_err(|_| "aws_access_key_id is not UTF-8 text")?,
                )
            }
            b"aws_secret_access_key" => secret_key = Some(text_secret("aws_secret_access_key")?),
            // aws_security_token: the older name AWS tools still read.
            b"aws_session_token" | b"aws_security_token" => {
                session_token = Some(text_secret("aws_session_token")?)
            }
            _ => {}
        }
    }
    if !found {
        return Err("no such profile".into());
    }
    Ok(KeyPair {
        access_key: access_key
            .filter(|key| !key.is_empty())
            .ok_or("no aws_access_key_id")?,
        secret_key: secret_key.ok_or("no aws_secret_access_key")?,
        session_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comment
[default]
aws_access_key_id = AKDEFAULT
aws_secret_access_key = SKDEFAULT

  [ rotated ]
; another comment
AWS_ACCESS_KEY_ID=AK2
aws_secret_access_key= SK2 \t
aws_session_token = TOKEN2
[broken]
aws_access_key_id = AK3
";

    #[test]
    fn profiles_of_a_shared_credentials_file() {
        let keys = parse_profile(FILE.as_bytes(), "default").unwrap();
        assert_eq!(keys.access_key, "AKDEFAULT");
        assert_eq!(keys.secret_key.expose(), b"SKDEFAULT");
        assert_eq!(keys.session_token, None);
        let keys = parse_profile(FILE.as_bytes(), "rotated").unwrap();
        assert_eq!(keys.access_key, "AK2");
        assert_eq!(keys.secret_key.expose(), b"SK2");
        assert_eq!(keys.session_token.unwrap().expose(), b"TOKEN2");
        let e = parse_profile(FILE.as_bytes(), "broken").unwrap_err();
        assert_eq!(e, "no aws_secret_access_key");
        assert_eq!(
            parse_profile(FILE.as_bytes(), "absent").unwrap_err(),
            "no such profile"
        );
        assert!(parse_profile(b"[p]\nnot a setting\n", "p").is_err());
    }

    #[test]
    fn errors_name_the_file_and_profile_never_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, "[p]\naws_secret_access_key = hunter2\n").unwrap();
        let e = read_profile(&path, "p").unwrap_err();
        assert!(e.contains("[p]") && e.contains("credentials"), "{e}");
        assert!(
            e.contains("no aws_access_key_id") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn a_rewritten_credentials_file_gives_the_new_pair() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, FILE).unwrap();
        let keys = KeySource::shared_file(path.clone(), "default".into())
            .unwrap()
            .into_refreshable();
        let used = keys.current();
        std::fs::write(&path, FILE.replace("AKDEFAULT", "AKNEW")).unwrap();
        assert!(keys.reload_after_refusal(&used));
        assert_eq!(keys.current().access_key, "AKNEW");
    }

    #[test]
    fn a_rewritten_secret_file_keeps_the_given_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "SK1\n").unwrap();
        let source = KeySource::Given {
            keys: KeyPair {
                access_key: "AK".into(),
                secret_key: Secret::new(b"SK1"),
                session_token: Some(Secret::new(b"T")),
            },
            secret_file: Some(path.clone()),
            token_file: None,
        };
        let keys = source.into_refreshable();
        let used = keys.current();
        std::fs::write(&path, "SK2\n").unwrap();
        assert!(keys.reload_after_refusal(&used));
        let now = keys.current();
        assert_eq!(
            (now.access_key.as_str(), now.secret_key.expose()),
            ("AK", &b"SK2"[..])
        );
        assert_eq!(now.session_token.as_ref().unwrap().expose(), b"T");
    }
}
