//! The HTTP/1.1 client of the `multihttp` and `s3` plugins.
//!
//! Why our own and not ureq: per-request cost (see multihttp's
//! `transport.rs`: ureq 2 spent ~31 syscalls on a 4 KiB read where this
//! client spends ~3, and copied every body byte through its own buffer)
//! and control of the socket (ureq 2 gives no hook on it; s3 needs
//! `TCP_QUICKACK`, see [`connection`]).
//!
//! - [`endpoint`]: a URL ([`endpoint::Address`]) and its bounded pool of
//!   keep-alive connections, and one request/reply exchange on it that
//!   retries a kept-alive connection the server had closed;
//! - [`connection`]: one keep-alive connection under a per-request
//!   [`connection::Deadline`], plain or TLS (`tls-io`);
//! - [`request`]: request heads;
//! - [`response`]: reply heads (httparse) and how their body is delimited;
//! - [`abort`]: ending a request blocked on its socket from another thread.

pub mod abort;
pub mod connection;
pub mod endpoint;
pub mod request;
pub mod response;
