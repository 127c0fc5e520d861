//! A plugin's keys, defined once: the table every plugin fills in its own
//! `keys.rs`, and what is derived from it, so the key list, the unknown-key
//! error, `nbdkit NAME --help` ([`crate::help`]) and the man page
//! ([`crate::manpage`]) cannot drift apart.
//!
//! Pure data, no nbdkit symbols: the man page generator (`crates/man-pages`)
//! includes each plugin's `keys.rs` as a module of its own, because a
//! cdylib plugin cannot be a Rust dependency.

use crate::config::ConfigError;

/// One `key=value` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub name: &'static str,
    /// The value's syntax as shown after `name=`: `SIZE`, `TIME`, `BOOL`,
    /// `+FILE`, `URL,URL,...`.
    pub value: &'static str,
    /// One line: what the key is for (`--help` and the man page start
    /// with it).
    pub summary: &'static str,
    /// The rest: syntax details, default, caveats. One paragraph; may be
    /// empty.
    pub details: &'static str,
    /// Rendered as `(required)` before the summary.
    pub required: bool,
    /// Read with nbdkit's password syntax (`+FILE`, `-FD`, `-`) by
    /// [`crate::config::Collector`], never seen as plain text.
    pub secret: bool,
}

impl Key {
    /// A key with neither `required` nor `secret` set; the table writes
    /// `Key { required: true, ..Key::new(..) }` for the others.
    pub const fn new(
        name: &'static str,
        value: &'static str,
        summary: &'static str,
        details: &'static str,
    ) -> Key {
        Key {
            name,
            value,
            summary,
            details,
            required: false,
            secret: false,
        }
    }

    /// `name=VALUE`, as the key is written on nbdkit's command line.
    pub fn usage(&self) -> String {
        format!("{}={}", self.name, self.value)
    }

    /// Summary and details as one text, `(required)` first when it is.
    pub fn text(&self) -> String {
        let mut text = String::new();
        if self.required {
            text.push_str("(required) ");
        }
        text.push_str(self.summary);
        if !self.details.is_empty() {
            text.push(' ');
            text.push_str(self.details);
        }
        text
    }
}

/// An environment variable the plugin reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    pub name: &'static str,
    pub text: &'static str,
}

/// Everything that documents one plugin: its table of keys and the prose
/// around them.
#[derive(Debug)]
pub struct Plugin {
    /// As given to nbdkit: `multihttp` (page `nbdkit-multihttp-plugin(1)`).
    pub name: &'static str,
    /// One line: nbdkit's `description` and the man page's NAME line.
    pub summary: &'static str,
    /// The key bare arguments are given to (nbdkit's `magic_config_key`).
    pub magic_key: Option<&'static str>,
    /// The man page's DESCRIPTION, one paragraph per entry.
    pub description: &'static [&'static str],
    pub keys: &'static [Key],
    pub environment: &'static [EnvVar],
    /// Said once after the variables (in `--help` and under ENVIRONMENT).
    pub environment_note: &'static str,
    /// Other pages, as `name(section)`.
    pub see_also: &'static [&'static str],
}

impl Plugin {
    pub fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// Every key name, in table order.
    pub fn key_names(&self) -> Vec<&'static str> {
        self.keys.iter().map(|k| k.name).collect()
    }

    pub fn is_secret(&self, name: &str) -> bool {
        self.key(name).is_some_and(|k| k.secret)
    }

    /// The error for a key not in the table, naming every key that is.
    pub fn unknown_key(&self, name: &str) -> ConfigError {
        ConfigError::unknown_key(name, &self.key_names())
    }

    /// Refuses a key the table does not have (before any builder sees it).
    pub fn check_known(&self, name: &str) -> Result<(), ConfigError> {
        match self.key(name) {
            Some(_) => Ok(()),
            None => Err(self.unknown_key(name)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub static SAMPLE: Plugin = Plugin {
        name: "sample",
        summary: "a plugin for tests",
        magic_key: Some("dir"),
        description: &[
            "Serves nothing. A line starting with a dot:",
            ".not a request",
        ],
        keys: &[
            Key {
                required: true,
                ..Key::new(
                    "dir",
                    "DIR",
                    "Directory of the disk.",
                    "Created on first use.",
                )
            },
            Key::new(
                "size",
                "SIZE",
                "Disk size (nbdkit size syntax: 1G, 512M).",
                "",
            ),
            Key {
                secret: true,
                ..Key::new(
                    "password",
                    "+FILE",
                    "A password, as in nbdkit: +FILE, -FD or -.",
                    "A back\\slash stays one.",
                )
            },
        ],
        environment: &[EnvVar {
            name: "SAMPLE_DIR",
            text: "Default of dir=.",
        }],
        environment_note: "Removed from the environment once read.",
        see_also: &["nbdkit(1)", "nbdkit-plugin(3)"],
    };

    #[test]
    fn lookups_and_the_unknown_key_error() {
        assert_eq!(SAMPLE.key_names(), ["dir", "size", "password"]);
        assert!(SAMPLE.is_secret("password") && !SAMPLE.is_secret("dir"));
        assert!(!SAMPLE.is_secret("colour"));
        assert!(SAMPLE.check_known("size").is_ok());
        assert_eq!(
            SAMPLE.check_known("colour").unwrap_err().to_string(),
            "parameter 'colour': unknown parameter (known: dir, size, password)"
        );
        let dir = SAMPLE.key("dir").unwrap();
        assert_eq!(dir.usage(), "dir=DIR");
        assert_eq!(
            dir.text(),
            "(required) Directory of the disk. Created on first use."
        );
        assert_eq!(
            SAMPLE.key("size").unwrap().text(),
            "Disk size (nbdkit size syntax: 1G, 512M)."
        );
    }
}
