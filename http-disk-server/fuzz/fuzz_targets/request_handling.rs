//! Bytes -> one whole request handled against an 8 KiB disk file.
//! The checks: `http_disk_server_fuzz::check_handling`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| http_disk_server_fuzz::check_handling(data));
