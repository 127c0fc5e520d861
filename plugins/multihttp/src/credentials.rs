//! The Authorization header, read again from `password=+FILE` when the
//! file is rewritten or a server answers 401, so that a password can be
//! rotated without restarting nbdkit (issue #20; see plugin-glue's
//! [`Refreshable`]). A literal password or `password=-FD` cannot be read
//! again and keeps the start-up value.

use std::path::PathBuf;

use base64::Engine;
use plugin_glue::refreshable::Refreshable;
use plugin_glue::secret::Secret;

/// `Basic base64(user:password)` for the Authorization header, assembled
/// and encoded in [`Secret`] memory only (`user:password` never exists in
/// ordinary memory, and is zeroed as soon as it is encoded).
fn basic_authorization(user: &str, password: Option<&Secret>) -> Secret {
    const PREFIX: &[u8] = b"Basic ";
    let password = password.map_or(&[][..], Secret::expose);
    let credentials = Secret::build(user.len() + 1 + password.len(), |buf| {
        let (name, rest) = buf.split_at_mut(user.len());
        name.copy_from_slice(user.as_bytes());
        rest[0] = b':';
        rest[1..].copy_from_slice(password);
        buf.len()
    });
    let encoded_len = base64::encoded_len(credentials.len(), true).expect("a short credential");
    Secret::build(PREFIX.len() + encoded_len, |buf| {
        let (prefix, token) = buf.split_at_mut(PREFIX.len());
        prefix.copy_from_slice(PREFIX);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(credentials.expose(), token)
            .expect("sized by encoded_len");
        PREFIX.len() + written
    })
}

/// `Basic base64(user:password)`, never in ordinary memory.
pub type Credentials = Refreshable<Secret>;

pub fn credentials(user: &str, password: Option<&Secret>, file: Option<PathBuf>) -> Credentials {
    let header = basic_authorization(user, password);
    let Some(file) = file else {
        return Refreshable::fixed(header);
    };
    let user = user.to_owned();
    let path = file.clone();
    Refreshable::from_files(
        header,
        format!("password file {}", file.display()),
        vec![file],
        move || {
            Secret::read_first_line(&path)
                .map(|password| basic_authorization(&user, Some(&password)))
                .map_err(|e| e.to_string())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_basic_header_is_base64_of_user_colon_password() {
        let header = basic_authorization("alice", Some(&Secret::new(b"s3cr3t")));
        assert_eq!(header.expose(), b"Basic YWxpY2U6czNjcjN0");
        let no_password = basic_authorization("bob", None);
        assert_eq!(no_password.expose(), b"Basic Ym9iOg==");
    }

    fn header_for(password: &[u8]) -> Secret {
        basic_authorization("alice", Some(&Secret::new(password)))
    }

    #[test]
    fn the_header_follows_the_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "old\n").unwrap();
        let credentials = credentials("alice", Some(&Secret::new(b"old")), Some(path.clone()));
        let used = credentials.current();
        assert!(*used == header_for(b"old"));
        std::fs::write(&path, "new-and-longer\nsecond line ignored\n").unwrap();
        assert!(credentials.reload_after_refusal(&used));
        assert!(*credentials.current() == header_for(b"new-and-longer"));
    }

    #[test]
    fn a_password_without_a_file_is_never_re_read() {
        let credentials = credentials("alice", Some(&Secret::new(b"x")), None);
        let used = credentials.current();
        assert!(!credentials.reload_after_refusal(&used));
        assert!(*credentials.current() == header_for(b"x"));
    }
}
