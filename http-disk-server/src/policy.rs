//! Who may use the server: the access lists (`--allow`, `--deny` and their
//! files) and the credentials (`--auth-file`), together one [`Policy`].
//! The files can change while the server runs: SIGHUP re-reads them
//! ([`PolicySources::load`], called by `reload.rs`), and every request is
//! checked against the policy current when its head arrived, so a peer or
//! user removed from a file is refused from its next request on, also on a
//! connection it already has.

use std::path::PathBuf;

use ipnet::IpNet;

use crate::access::{self, AccessList};
use crate::auth::Credentials;

/// One consistent policy: what a request is checked against.
#[derive(Debug, Default)]
pub struct Policy {
    pub access: AccessList,
    /// `--auth-file`: when set, every request needs these credentials.
    pub credentials: Option<Credentials>,
}

/// Where the policy comes from: command-line entries (fixed for the life
/// of the process) and files (re-read on SIGHUP). Both add up.
#[derive(Clone, Debug, Default)]
pub struct PolicySources {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub allow_files: Vec<PathBuf>,
    pub deny_files: Vec<PathBuf>,
    pub auth_file: Option<PathBuf>,
}

impl PolicySources {
    /// Reads every file and builds the policy; the first bad file stops it
    /// with an error naming the file and line (never a secret), so the
    /// caller keeps the policy it had.
    pub fn load(&self) -> Result<Policy, String> {
        let allow = if self.allow.is_empty() && self.allow_files.is_empty() {
            None
        } else {
            Some(with_files(&self.allow, &self.allow_files, "--allow-file")?)
        };
        let deny = with_files(&self.deny, &self.deny_files, "--deny-file")?;
        let credentials = self
            .auth_file
            .as_deref()
            .map(Credentials::load)
            .transpose()?;
        Ok(Policy {
            access: AccessList::new(allow, deny),
            credentials,
        })
    }

    /// Whether anything is read from a file (so a reload can change it).
    pub fn has_files(&self) -> bool {
        !self.allow_files.is_empty() || !self.deny_files.is_empty() || self.auth_file.is_some()
    }
}

/// The command-line entries followed by those of every file.
fn with_files(fixed: &[IpNet], files: &[PathBuf], flag: &str) -> Result<Vec<IpNet>, String> {
    let mut nets = fixed.to_vec();
    for file in files {
        nets.extend(access::load_list(file).map_err(|e| format!("{flag} {e}"))?);
    }
    Ok(nets)
}

impl Policy {
    /// One line for the log: counts only, never a network's or user's name
    /// (the log may be more widely readable than the files).
    pub fn summary(&self) -> String {
        let (allowed, denied) = self.access.counts();
        let allow = match allowed {
            None => "every peer allowed".to_owned(),
            Some(0) => "NO peer allowed (the allow lists are empty)".to_owned(),
            Some(n) => format!("{n} allowed network(s)"),
        };
        let users = match &self.credentials {
            None => "no authentication".to_owned(),
            Some(credentials) => format!("{} user(s)", credentials.user_count()),
        };
        format!("{allow}, {denied} denied network(s), {users}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::parse_cidr;
    use std::net::IpAddr;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn command_line_and_files_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let allow_file = dir.path().join("allow");
        let deny_file = dir.path().join("deny");
        std::fs::write(&allow_file, "# more hosts\n10.2.0.0/16\n").unwrap();
        std::fs::write(&deny_file, "10.1.9.9\n10.2.9.9 # retired\n").unwrap();
        let sources = PolicySources {
            allow: vec![parse_cidr("10.1.0.0/16").unwrap()],
            deny: vec![parse_cidr("10.1.0.1").unwrap()],
            allow_files: vec![allow_file.clone()],
            deny_files: vec![deny_file],
            auth_file: None,
        };
        let policy = sources.load().unwrap();
        for (peer, served) in [
            ("10.1.2.3", true),
            ("10.2.3.4", true),
            ("10.3.0.1", false),
            ("10.1.0.1", false),
            ("10.1.9.9", false),
            ("10.2.9.9", false),
        ] {
            assert_eq!(policy.access.permits(ip(peer)), served, "{peer}");
        }
        assert_eq!(
            policy.summary(),
            "2 allowed network(s), 3 denied network(s), no authentication"
        );
        // Emptied allow file, nothing on the command line: nobody, not everyone.
        std::fs::write(&allow_file, "# nobody for now\n").unwrap();
        let emptied = PolicySources {
            allow_files: vec![allow_file],
            ..Default::default()
        };
        let policy = emptied.load().unwrap();
        assert!(!policy.access.permits(ip("10.1.2.3")));
        assert!(policy.summary().starts_with("NO peer allowed"));
        assert_eq!(
            PolicySources::default().load().unwrap().summary(),
            "every peer allowed, 0 denied network(s), no authentication"
        );
    }

    #[test]
    fn a_bad_file_names_its_flag_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let deny_file = dir.path().join("deny");
        std::fs::write(&deny_file, "10.0.0.1\n10.0.0.300\n").unwrap();
        let sources = PolicySources {
            deny_files: vec![deny_file.clone()],
            ..Default::default()
        };
        let error = sources.load().unwrap_err();
        let expected = format!("--deny-file {}:2: ", deny_file.display());
        assert!(error.starts_with(&expected), "{error}");
    }
}
