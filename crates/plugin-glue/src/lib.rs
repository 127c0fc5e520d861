//! Glue shared by every nbdkit plugin of this project.
//!
//! - [`guard`]: run a callback body so that a panic becomes `EIO` instead of
//!   aborting nbdkit (the `nbdkit` crate's callbacks are non-unwinding
//!   `extern fn`s: a panic escaping them kills the whole server).
//! - [`ToErrno`]: the one place where a plugin's error type becomes the errno
//!   the NBD client sees.
//! - [`config`]: parsing of keys shared across plugins (sizes, booleans,
//!   durations, passwords) and a registry that refuses unknown keys.
//! - [`keys`]: each plugin's table of keys, defined once; from it
//!   [`help`] renders `nbdkit NAME --help` and [`manpage`] the
//!   `nbdkit-NAME-plugin(1)` page (in [`roff`]).
//! - [`logging`]: a `log` backend writing through `nbdkit_error` /
//!   `nbdkit_debug`, so messages honour nbdkit's `--log` and `-v`.
//! - [`secret`]: passwords and keys kept out of logs and core dumps.
//! - [`refreshable`], [`watched_file`]: secrets read again from their
//!   files when rotated, without restarting nbdkit.
//!
//! Not here: anything specific to one backend.

pub mod config;
pub mod errno;
pub mod help;
pub mod keys;
pub mod logging;
pub mod manpage;
pub mod refreshable;
pub mod roff;
pub mod secret;
pub mod watched_file;

pub use errno::{guard, ToErrno};
pub use secret::Secret;
