//! nbdkit plugin `sharded`: a sparse disk stored as a directory of
//! fixed-size chunk files (see `files` for the layout), on the shared
//! chunk-store core; `lease_file` keeps its single-writer lease.

mod config;
mod files;
mod keys;
mod lease_file;
mod plugin;
