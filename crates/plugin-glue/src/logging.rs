//! A `log` backend that writes through nbdkit, so plugin messages go where
//! nbdkit sends its own (stderr in the foreground, syslog with `--log`).
//!
//! Levels: error, warn and info go through `nbdkit_error` because it is the
//! only channel operators see without `-v` (server switches must be seen);
//! debug and trace go through `nbdkit_debug`, printed only with `-v`.
//!
//! Debug and trace records of third-party crates are dropped before they
//! are formatted: nbdkit gives a plugin no way to ask whether `-v` is on,
//! and a dependency's per-request debug lines cost their formatting (ureq,
//! which the plugins used before their own HTTP client, spent 5 of ~31
//! syscalls per 4 KiB read on formatting such lines), all for lines
//! nbdkit then throws away without `-v`. rustls logs per connection.

use std::ffi::CString;
use std::os::raw::c_char;

extern "C" {
    fn nbdkit_error(fmt: *const c_char, ...);
    fn nbdkit_debug(fmt: *const c_char, ...);
}

struct NbdkitLogger;

static LOGGER: NbdkitLogger = NbdkitLogger;

impl log::Log for NbdkitLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info || is_workspace_target(metadata.target())
    }

    fn log(&self, record: &log::Record) {
        // The log macros do not ask `enabled`; checking here, before the
        // message is formatted, is what saves the work.
        if !self.enabled(record.metadata()) {
            return;
        }
        // A NUL would truncate the message; escape it instead.
        let text = format!("{}", record.args()).replace('\0', "\\0");
        let Ok(message) = CString::new(text) else {
            return;
        };
        let fmt = c"%s".as_ptr();
        // SAFETY: both functions are printf-like; we pass "%s" and one
        // valid NUL-terminated string, so no format string comes from data.
        unsafe {
            match record.level() {
                log::Level::Error | log::Level::Warn | log::Level::Info => {
                    nbdkit_error(fmt, message.as_ptr())
                }
                log::Level::Debug | log::Level::Trace => nbdkit_debug(fmt, message.as_ptr()),
            }
        }
    }

    fn flush(&self) {}
}

/// Crates of this workspace that log (a target is a module path such as
/// `multihttp::cluster`).
const WORKSPACE_CRATES: [&str; 5] = ["multihttp", "plugin_glue", "chunk_store", "s3", "sharded"];

/// Whether a record comes from one of our crates (their debug lines are
/// rare: failures and retries), not from a dependency.
fn is_workspace_target(target: &str) -> bool {
    let crate_name = target.split("::").next().unwrap_or(target);
    WORKSPACE_CRATES.contains(&crate_name)
}

/// Installs the nbdkit logger for the `log` macros. Call from the plugin's
/// `load` callback; calling it again is harmless.
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;

    fn enabled(level: log::Level, target: &str) -> bool {
        NbdkitLogger.enabled(&log::Metadata::builder().level(level).target(target).build())
    }

    #[test]
    fn dependency_debug_lines_are_dropped_but_their_errors_kept() {
        assert!(!enabled(log::Level::Debug, "rusty_s3::signing"));
        assert!(!enabled(log::Level::Trace, "rustls::client"));
        assert!(enabled(log::Level::Warn, "rusty_s3::signing"));
        assert!(enabled(log::Level::Info, "rustls"));
    }

    #[test]
    fn our_debug_lines_are_kept() {
        assert!(enabled(log::Level::Debug, "multihttp::cluster"));
        assert!(enabled(log::Level::Debug, "s3"));
        assert!(enabled(log::Level::Trace, "chunk_store::store"));
        assert!(!enabled(log::Level::Debug, "s3x::y"));
    }
}
