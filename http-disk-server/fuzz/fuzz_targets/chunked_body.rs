//! Bytes -> the chunked body decoder shared by server and client.
//! The checks: `http_disk_server_fuzz::check_chunked`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| http_disk_server_fuzz::check_chunked(data));
