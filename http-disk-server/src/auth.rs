//! HTTP Basic authentication against a credentials file (`--auth-file`).
//!
//! The file holds one `user:salt:sha256hex` line per client, where the
//! hash is SHA-256 of the salt text followed by the password. A user may
//! have more than one line: each line's password gets in. That is how a
//! password is rotated without a refused request: add the new line,
//! reload, give the client its new password, remove the old line, reload. No password
//! is ever on the command line or in the file. SHA-256 is a fast hash: it
//! protects secrets that are long and random (what a pool's hosts share,
//! e.g. `openssl rand -hex 32`), not human-chosen passwords; the file is
//! meant to be readable by root only. Every check hashes and compares in
//! constant time over the whole digest, also for an unknown user, so the
//! time of a reply says nothing about how close a guess was.
//!
//! Lines starting with `#` and blank lines are ignored. A line is made by:
//!
//! ```sh
//! salt=$(openssl rand -hex 16)
//! printf 'host1:%s:%s\n' "$salt" \
//!     "$(printf '%s%s' "$salt" "$password" | sha256sum | cut -d' ' -f1)"
//! ```

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The users allowed in, with their salted password hashes.
#[derive(Debug)]
pub struct Credentials {
    /// Every line of a user: more than one while a password is rotated.
    users: HashMap<String, Vec<Entry>>,
}

#[derive(Debug)]
struct Entry {
    salt: String,
    hash: [u8; 32],
}

/// What the client gets: 401 with this challenge, nothing read or written.
pub const CHALLENGE: &str = "Basic realm=\"http-disk-server\"";

impl Credentials {
    /// Reads and checks the credentials file; the error names the file and
    /// line (never a secret).
    pub fn load(path: &Path) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --auth-file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--auth-file {}{e}", path.display()))
    }

    /// The error starts with `:N: ` (the line) or `: ` (the whole file),
    /// so that with the path in front it reads `PATH:N: why` like the list
    /// files' errors.
    fn parse(text: &str) -> Result<Credentials, String> {
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(':').collect();
            let [user, salt, hex] = fields[..] else {
                return Err(format!(":{number}: expected user:salt:sha256hex"));
            };
            if user.is_empty() {
                return Err(format!(":{number}: empty user name"));
            }
            let hash = parse_digest(hex)
                .ok_or_else(|| format!(":{number}: the hash is not 64 hex digits"))?;
            let entry = Entry {
                salt: salt.to_owned(),
                hash,
            };
            users
                .entry(user.to_owned())
                .or_insert_with(Vec::new)
                .push(entry);
        }
        if users.is_empty() {
            return Err(": no user in the file: every request would be refused".into());
        }
        Ok(Credentials { users })
    }

    /// How many users the file lists (for the log; never who).
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Whether an `Authorization` header value carries a known user and
    /// the right password.
    pub fn permits(&self, authorization: Option<&str>) -> bool {
        let decoded = authorization.and_then(basic).unwrap_or_default();
        let (user, password) = split_user_password(&decoded).unwrap_or_default();
        // An unknown user is checked against a dummy entry, so that the
        // work done (and the time taken) does not tell users apart.
        let dummy = Entry {
            salt: String::new(),
            hash: [0xFF; 32],
        };
        let known = self.users.get(user);
        let entries = known.map_or(std::slice::from_ref(&dummy), Vec::as_slice);
        // Every line of the user is checked, not only up to the first
        // match, so that the time taken does not tell which one matched.
        let any_match = entries
            .iter()
            .fold(false, |any, entry| matches(entry, password) | any);
        any_match && known.is_some()
    }
}

/// Whether `password` hashes to `entry`, compared in constant time.
fn matches(entry: &Entry, password: &[u8]) -> bool {
    let digest = Sha256::new()
        .chain_update(entry.salt.as_bytes())
        .chain_update(password)
        .finalize();
    digest
        .iter()
        .zip(entry.hash.iter())
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

/// `Basic base64(user:password)` → `user:password`, in a buffer zeroed
/// when dropped (no copy of a client's password outlives the check).
fn basic(value: &str) -> Option<Zeroizing<Vec<u8>>> {
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let token = token.trim();
    // Decoded in place of a buffer that is ours from the start: a growing
    // Vec would leave partial copies behind in freed memory.
    let mut decoded = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(token.len())]);
    let len = base64::engine::general_purpose::STANDARD
        .decode_slice(token, &mut decoded[..])
        .ok()?;
    decoded.truncate(len);
    Some(decoded)
}

/// `user:password` → (user, password), borrowed.
fn split_user_password(decoded: &[u8]) -> Option<(&str, &[u8])> {
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = std::str::from_utf8(&decoded[..colon]).ok()?;
    Some((user, &decoded[colon + 1..]))
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// User and salt of a test line; `line` appends the hash.
    const HOST1: &str = "host1:s1:";

    fn line(user_salt: &str, password: &str) -> String {
        let salt = user_salt.split(':').nth(1).unwrap();
        let digest = Sha256::digest(format!("{salt}{password}").as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{user_salt}{hex}")
    }

    fn header(user: &str, password: &str) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {token}")
    }

    #[test]
    fn only_the_right_user_and_password_get_in() {
        let file = format!(
            "# pool hosts\n\n{}\n{}\n",
            line(HOST1, "secret"),
            line("host2:s2:", "other")
        );
        let credentials = Credentials::parse(&file).unwrap();
        assert!(credentials.permits(Some(&header("host1", "secret"))));
        assert!(credentials.permits(Some(&header("host2", "other"))));
        assert!(credentials.permits(Some(&format!("basic  {}", &header("host1", "secret")[6..]))));
        for refused in [
            header("host1", "secreT"),
            header("host1", "other"),
            header("host3", "secret"),
            header("", ""),
            "Bearer secret".to_owned(),
            "Basic !!!not-base64".to_owned(),
            "Basic".to_owned(),
        ] {
            assert!(!credentials.permits(Some(&refused)), "{refused}");
        }
        assert!(!credentials.permits(None));
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        for (text, expected) in [
            ("host1:s1\n", ":1: expected user:salt:sha256hex"),
            ("# only a comment\n", "no user"),
            (
                ":s:0000000000000000000000000000000000000000000000000000000000000000",
                "empty user",
            ),
            ("u:s:abc", ":1: the hash is not 64 hex digits"),
        ] {
            let error = Credentials::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_user_with_two_lines_gets_in_with_either_password() {
        // The rotation sequence: old line, old + new, new only.
        let old = Credentials::parse(&line(HOST1, "old")).unwrap();
        let both = Credentials::parse(&format!(
            "{}\n{}\n",
            line(HOST1, "old"),
            line("host1:s9:", "new")
        ))
        .unwrap();
        let new = Credentials::parse(&line("host1:s9:", "new")).unwrap();
        assert_eq!(both.user_count(), 1, "one user, two lines");
        assert!(old.permits(Some(&header("host1", "old"))));
        assert!(!old.permits(Some(&header("host1", "new"))));
        assert!(both.permits(Some(&header("host1", "old"))));
        assert!(both.permits(Some(&header("host1", "new"))));
        assert!(!both.permits(Some(&header("host1", "neither"))));
        assert!(!both.permits(Some(&header("host2", "new"))));
        assert!(!new.permits(Some(&header("host1", "old"))));
        assert!(new.permits(Some(&header("host1", "new"))));
    }
}
