//! A `log` backend that writes through nbdkit, so plugin messages go where
//! nbdkit sends its own (stderr in the foreground, syslog with `--log`).
//!
//! Levels: error, warn and info go through `nbdkit_error` because it is the
//! only channel operators see without `-v` (server switches must be seen);
//! debug and trace go through `nbdkit_debug`, printed only with `-v`.

use std::ffi::CString;
use std::os::raw::c_char;

extern "C" {
    fn nbdkit_error(fmt: *const c_char, ...);
    fn nbdkit_debug(fmt: *const c_char, ...);
}

struct NbdkitLogger;

static LOGGER: NbdkitLogger = NbdkitLogger;

impl log::Log for NbdkitLogger {
    fn enabled(&self, _metadata: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
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

/// Installs the nbdkit logger for the `log` macros. Call from the plugin's
/// `load` callback; calling it again is harmless.
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}
