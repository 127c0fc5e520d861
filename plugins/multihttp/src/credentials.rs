//! The Authorization header, read again from `password=+FILE` when the
//! file is rewritten or a server answers 401, so that a password can be
//! rotated without restarting nbdkit (issue #20; see plugin-glue's
//! [`Refreshable`]). A literal password or `password=-FD` cannot be read
//! again and keeps the start-up value.

use std::path::PathBuf;

use plugin_glue::refreshable::Refreshable;
use plugin_glue::secret::Secret;

use crate::transport::basic_authorization;

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
