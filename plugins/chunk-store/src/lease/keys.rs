//! The lease's keys, shared by every chunk-store plugin: their table
//! entries (each plugin's `keys.rs` lists them; the man page generator
//! reads them through this crate) and their parsing.

use std::time::Duration;

use plugin_glue::config::{parse_bool, parse_duration, ConfigError};
use plugin_glue::keys::Key;

use super::{LeaseSettings, MIN_DURATION};

/// Longest `lease-time=`: a crashed writer on another host blocks its
/// disk this long.
const MAX_DURATION: Duration = Duration::from_secs(3600);

pub const LEASE_TIME: Key = Key::new(
    "lease-time",
    "TIME",
    "How long the writer's lease lasts without renewal (default 30s, at \
     least 2s).",
    "One writer at a time: the first writable connection takes the disk's \
     lease, renewed every sixth of this; a second writer is refused, naming \
     the owner, until the lease is released or expired (a writer whose \
     process died on this host is noticed at once). A writer whose lease was \
     taken over fails every later write with EROFS (EPERM to the client). \
     Read-only connections need no lease. Clocks of hosts sharing a disk \
     should be in sync; an expired-looking lease that is still renewed is \
     not taken.",
);

pub const FORCE: Key = Key::new(
    "force",
    "BOOL",
    "Take the disk's lease even if another writer holds it (default false).",
    "Only when that writer is dead or stopped: a live one may still write \
     for up to a quarter of lease-time before it notices.",
);

/// Sets `key` if it is a lease key: `None` when it is not one.
pub fn set(
    settings: &mut LeaseSettings,
    key: &str,
    value: &str,
) -> Option<Result<(), ConfigError>> {
    let result = match key {
        "lease-time" => parse_duration(key, value).and_then(|duration| {
            if !(MIN_DURATION..=MAX_DURATION).contains(&duration) {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "must be at least {}s and at most {}s",
                        MIN_DURATION.as_secs(),
                        MAX_DURATION.as_secs()
                    ),
                ));
            }
            settings.duration = duration;
            Ok(())
        }),
        "force" => parse_bool(key, value).map(|force| settings.force = force),
        _ => return None,
    };
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys() {
        let mut s = LeaseSettings::default();
        assert!(set(&mut s, "size", "1").is_none());
        set(&mut s, "lease-time", "5s").unwrap().unwrap();
        set(&mut s, "force", "true").unwrap().unwrap();
        assert_eq!(
            s,
            LeaseSettings {
                duration: Duration::from_secs(5),
                force: true
            }
        );
        let e = set(&mut s, "lease-time", "1s")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 2s"), "{e}");
    }
}
