//! Bytes -> request head parser -> head validation -> body reading.
//! The checks: `http_disk_server_fuzz::check_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| http_disk_server_fuzz::check_head(data));
