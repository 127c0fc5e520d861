//! http-disk-server: placeholder until the server lands (issue 2).
fn main() {}
