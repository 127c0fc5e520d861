//! Parsing of `key=value` plugin parameters shared by all plugins.
//!
//! Pure Rust (no nbdkit symbols) so it is unit-tested with `cargo test`;
//! only [`read_password`] calls into nbdkit.

use std::ffi::CString;
use std::fmt;
use std::os::raw::{c_char, c_int};
use std::time::Duration;

use lock_ext::LockIgnoringPoison;

use crate::keys::Plugin;
use crate::secret::{wipe, Secret};
use crate::ToErrno;

/// A parameter that could not be used: which key, which value, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub why: String,
}

impl ConfigError {
    pub fn new(key: &str, why: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.to_owned(),
            why: why.into(),
        }
    }

    /// The error for a key the plugin does not know, listing the ones it does.
    pub fn unknown_key(key: &str, known: &[&str]) -> ConfigError {
        ConfigError::new(
            key,
            format!("unknown parameter (known: {})", known.join(", ")),
        )
    }

    /// The error for a required key that was not given.
    pub fn missing(key: &str) -> ConfigError {
        ConfigError::new(key, "this parameter is required")
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "parameter '{}': {}", self.key, self.why)
    }
}

impl std::error::Error for ConfigError {}

impl ToErrno for ConfigError {
    fn errno(&self) -> i32 {
        libc::EINVAL
    }
}

/// Parses a size with nbdkit's syntax: a decimal number with an optional
/// suffix `b` (bytes), `s` (512-byte sectors), or `k`/`K`, `M`, `G`, `T`,
/// `P`, `E` (powers of 1024), e.g. `4194304`, `4M`, `1T`.
pub fn parse_size(key: &str, value: &str) -> Result<u64, ConfigError> {
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let bad = |why: &str| ConfigError::new(key, format!("{value:?} is not a size: {why}"));
    if digits.is_empty() {
        return Err(bad(
            "expected a number, optionally followed by b, s, K, M, G, T, P or E",
        ));
    }
    let number: u64 = digits.parse().map_err(|_| bad("number too large"))?;
    let scale: u64 = match suffix {
        "" | "b" | "B" => 1,
        "s" | "S" => 512,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        "p" | "P" => 1 << 50,
        "e" | "E" => 1 << 60,
        _ => return Err(bad("unknown suffix")),
    };
    let size = number
        .checked_mul(scale)
        .ok_or_else(|| bad("size too large"))?;
    // nbdkit sizes are signed 64-bit.
    if size > i64::MAX as u64 {
        return Err(bad("size too large"));
    }
    Ok(size)
}

/// Parses a boolean the way nbdkit does: 1/true/yes/on, 0/false/no/off.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            key,
            format!("{value:?} is not a boolean (use true/false, yes/no, on/off, 1/0)"),
        )),
    }
}

/// Parses a duration: a number with an optional unit `ms`, `s` (default),
/// `m` or `h`; a fractional number of seconds (`0.5`) is accepted too.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let text = value.trim();
    let bad = || {
        ConfigError::new(
            key,
            format!("{value:?} is not a duration (e.g. 500ms, 3s, 2m)"),
        )
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// Parses a positive count (threads, pool size...), at most `max`.
pub fn parse_count(key: &str, value: &str, max: usize) -> Result<usize, ConfigError> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            key,
            format!("{value:?} is not a whole number from 1 to {max}"),
        )),
    }
}

extern "C" {
    fn nbdkit_read_password(value: *const c_char, password: *mut *mut c_char) -> c_int;
}

/// Reads a password with nbdkit's syntax, exactly as nbdkit's own plugins
/// do: `password=SECRET`, `password=-` (prompt on stdin), `password=+FILE`
/// (first line of FILE), `password=-FD` (read from a file descriptor).
/// Must be called from the `config` callback (stdin is only usable then).
/// The copies made on the way (our C string of `value`, which is the
/// password itself in the literal form, and nbdkit's result) are zeroed
/// before they are freed.
pub fn read_password(key: &str, value: &str) -> Result<Secret, ConfigError> {
    let c_value =
        CString::new(value).map_err(|_| ConfigError::new(key, "value contains a NUL byte"))?;
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: nbdkit_read_password reads a C string and stores a malloc'd
    // C string in `out` on success, which we copy, zero and free.
    let status = unsafe { nbdkit_read_password(c_value.as_ptr(), &mut out) };
    wipe(&mut c_value.into_bytes());
    if status == -1 || out.is_null() {
        return Err(ConfigError::new(
            key,
            "could not read the password (see the error above)",
        ));
    }
    // SAFETY: `out` is a NUL-terminated malloc'd string now owned by us.
    let password = unsafe {
        let bytes = std::slice::from_raw_parts_mut(out.cast::<u8>(), libc::strlen(out));
        let password = Secret::take(bytes);
        libc::free(out.cast());
        password
    };
    Ok(password)
}

/// A plugin's key=value parameters as they build up: implemented by each
/// plugin's configuration builder.
pub trait Builder: Default + Clone + Send {
    fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError>;

    /// Takes one of the keys its table marks secret (see [`Collector`]), already
    /// read with nbdkit's password syntax: the value is never a `&str` on
    /// the heap, so it cannot be copied there by mistake. Plugins without
    /// secret keys keep this refusal.
    fn set_secret(&mut self, key: &str, _value: Secret) -> Result<(), ConfigError> {
        Err(ConfigError::new(key, "not a secret key of this plugin"))
    }

    /// The file a secret key was read from (`+FILE`; `None` for the other
    /// forms), told before `set_secret`, for plugins that read it again
    /// when it is rotated.
    fn secret_file(&mut self, _key: &str, _path: Option<&std::path::Path>) {}
}

/// Collects a plugin's parameters from nbdkit's `config` callback (one per
/// process). Its key table decides: a key not in it is refused by name,
/// listing those that are; a secret key is read with nbdkit's password
/// syntax first, so every plugin handles `-`, `+FILE` and `-FD` the same
/// way.
pub struct Collector<B> {
    builder: std::sync::Mutex<Option<B>>,
    plugin: &'static Plugin,
}

impl<B: Builder> Collector<B> {
    pub const fn new(plugin: &'static Plugin) -> Collector<B> {
        Collector {
            builder: std::sync::Mutex::new(None),
            plugin,
        }
    }

    /// The body of the `config` callback. Errors name the key, never a
    /// value (it may be a secret).
    pub fn config(&self, key: &str, value: &str) -> nbdkit::Result<()> {
        crate::guard(
            || format!("{}: {key}", self.plugin.name),
            || -> Result<(), ConfigError> {
                self.plugin.check_known(key)?;
                if self.plugin.is_secret(key) {
                    let secret = read_password(key, value)?;
                    let mut builder = self.builder.lock_ignoring_poison();
                    let builder = builder.get_or_insert_with(B::default);
                    let file = value.strip_prefix('+').map(std::path::Path::new);
                    builder.secret_file(key, file);
                    builder.set_secret(key, secret)
                } else {
                    self.builder
                        .lock_ignoring_poison()
                        .get_or_insert_with(B::default)
                        .set(key, value)
                }
            },
        )
    }

    /// Everything collected so far (for `config_complete`).
    pub fn collected(&self) -> B {
        self.builder
            .lock_ignoring_poison()
            .clone()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("size", "4194304"), Ok(4194304));
        assert_eq!(parse_size("size", "4M"), Ok(4 << 20));
        assert_eq!(parse_size("size", "1k"), Ok(1024));
        assert_eq!(parse_size("size", "2s"), Ok(1024));
        assert_eq!(parse_size("size", " 1T "), Ok(1 << 40));
        assert_eq!(parse_size("size", "0"), Ok(0));
        for bad in ["", "M", "-1", "1.5G", "4X", "16E", "99999999999999999999"] {
            assert!(parse_size("size", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("k", "Yes"), Ok(true));
        assert_eq!(parse_bool("k", "off"), Ok(false));
        assert!(parse_bool("k", "maybe").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("t", "3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("t", "500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("t", "2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("t", "0.25s"), Ok(Duration::from_millis(250)));
        for bad in ["", "s", "-1", "3 days", "1e999"] {
            assert!(parse_duration("t", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn counts_and_messages() {
        assert_eq!(parse_count("pool", "4", 64), Ok(4));
        assert!(parse_count("pool", "0", 64).is_err());
        assert!(parse_count("pool", "65", 64).is_err());
        let e = ConfigError::unknown_key("colour", &["urls", "device-size"]);
        assert_eq!(
            e.to_string(),
            "parameter 'colour': unknown parameter (known: urls, device-size)"
        );
    }
}
