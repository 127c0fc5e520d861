//! Command line of `http-disk-server`. The first four flags are those of the
//! old Python server, which XCP-ng's storage manager passes verbatim; the
//! others are new and all optional.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use ipnet::IpNet;

use crate::access::parse_cidr;
use crate::policy::PolicySources;

/// Serves one block device or regular file over HTTP: HEAD gives the size,
/// GET with Range reads, PUT with Content-Range writes (durable before the
/// reply), POST X-Disk-Op flush/trim/zero.
#[derive(Parser, Debug, Clone)]
#[command(name = "http-disk-server", version)]
pub struct Args {
    /// Block device or regular file to serve.
    #[arg(long, value_name = "PATH")]
    pub disk: PathBuf,

    /// Address to listen on (IPv4 or IPv6); all interfaces when omitted.
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<IpAddr>,

    /// TCP port to listen on.
    #[arg(long, default_value_t = 8000, value_name = "N")]
    pub port: u16,

    /// Log one line per request (errors are always logged).
    #[arg(short, long)]
    pub verbose: bool,

    /// Refuse writes: PUT and POST trim/zero get 405. The disk is opened
    /// read-only (so on DRBD this does not take the Primary role).
    #[arg(long)]
    pub readonly: bool,

    /// Only serve peers in this network (repeatable, e.g. 10.0.0.0/24,
    /// 127.0.0.1/32, ::1/128); others get 403 before any body is read.
    /// Every peer is served when neither this nor --allow-file is given.
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_cidr)]
    pub allow: Vec<IpNet>,

    /// Never serve peers in this network (repeatable), even when --allow
    /// lists them: deny wins. They get 403 before any body is read.
    #[arg(long = "deny", value_name = "CIDR", value_parser = parse_cidr)]
    pub deny: Vec<IpNet>,

    /// More --allow entries, from a file: one network or address per line,
    /// `#` comments and blank lines ignored (repeatable). Re-read on
    /// SIGHUP. An allow file left empty allows nobody, not everyone.
    #[arg(long, value_name = "PATH")]
    pub allow_file: Vec<PathBuf>,

    /// More --deny entries, from a file (same format; re-read on SIGHUP).
    #[arg(long, value_name = "PATH")]
    pub deny_file: Vec<PathBuf>,

    /// Require HTTP Basic credentials listed in this file (lines
    /// `user:salt:sha256hex`, the hash of salt + password; see README);
    /// others get 401 before any body is read. Re-read on SIGHUP.
    #[arg(long, value_name = "PATH")]
    pub auth_file: Option<PathBuf>,

    /// Speak HTTPS only on the port, with this certificate: a PEM file,
    /// the server's certificate first, then any intermediates. Needs
    /// --tls-key.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC). Needs
    /// --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Largest request body accepted, in bytes (K, M, G suffixes allowed);
    /// larger writes get 413 before their body is read.
    #[arg(long, default_value = "32M", value_name = "BYTES", value_parser = parse_size)]
    pub max_request_size: u64,

    /// Seconds a client may stay silent (idle between requests, or stalled
    /// while sending a request or receiving a reply) before it is dropped.
    #[arg(long, default_value_t = 30, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout: u64,

    /// Connections served at once, each by its own worker thread. When all
    /// are taken, the longest-idle connection is closed for a newcomer;
    /// only when every worker is busy with a request does one more get 503
    /// with Retry-After. A kept-alive connection holds its worker while
    /// idle (until --idle-timeout), so this should cover every client's
    /// pool: multihttp keeps up to pool-size (16) per host, and a pool has
    /// up to 64 hosts.
    /// An idle worker costs ~80 KiB of memory and two file descriptors.
    #[arg(long, default_value_t = 1024, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub workers: u64,

    /// Serve GET /metrics (Prometheus text) and GET /status (JSON) on this
    /// address, e.g. 127.0.0.1:9100 or a management network address. A
    /// listener of its own, never the data port: --allow and --auth-file
    /// do NOT apply to it, so bind it where only monitoring can reach it.
    /// It shows the disk path, size, DRBD role and traffic counts, never
    /// disk data. Off when omitted.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Connections one peer address may hold at once, so that one client
    /// cannot take every worker from the others. At the cap, that peer's
    /// own longest-idle connection makes room; when all of its
    /// connections are busy, its newcomer gets 503 with Retry-After.
    /// 128 = 8 multihttp processes at their largest pool (pool-size 16)
    /// on one host, e.g. a few readers of a volume during a migration.
    #[arg(long, default_value_t = 128, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_connections_per_peer: u64,
}

impl Args {
    /// Where the access policy comes from (command line and files).
    pub fn policy_sources(&self) -> PolicySources {
        PolicySources {
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            allow_files: self.allow_file.clone(),
            deny_files: self.deny_file.clone(),
            auth_file: self.auth_file.clone(),
        }
    }
}

/// Parses a byte count with an optional K/M/G/T suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("unknown size suffix {suffix:?} in {text:?}")),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size in bytes"))?;
    number
        .checked_mul(1u64 << shift)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("size {text:?} is zero or too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32M"), Ok(32 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1k"), Ok(1024));
        for bad in ["", "0", "-1", "1X", "M", "99999999999T", "1.5M"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn old_command_line_still_parses() {
        let args = Args::try_parse_from([
            "http-disk-server",
            "--disk",
            "/dev/drbd/by-res/xcp-persistent-ha-statefile/0",
            "--ip",
            "10.0.0.1",
            "--port",
            "8076",
            "-v",
        ])
        .unwrap();
        assert_eq!(args.port, 8076);
        assert!(args.verbose && !args.readonly && args.allow.is_empty());
        assert_eq!(args.max_request_size, 32 << 20);
        assert_eq!(args.max_connections_per_peer, 128);
    }

    #[test]
    fn access_flags_repeat_and_add_up() {
        let args = Args::try_parse_from([
            "http-disk-server",
            "--disk",
            "d",
            "--allow",
            "10.0.0.0/8",
            "--deny",
            "10.1.0.0/16",
            "--deny",
            "10.2.0.1",
            "--allow-file",
            "/etc/a",
            "--deny-file",
            "/etc/d",
            "--deny-file",
            "/etc/d2",
        ])
        .unwrap();
        let sources = args.policy_sources();
        assert_eq!(sources.allow.len(), 1);
        assert_eq!(sources.deny.len(), 2);
        assert_eq!(sources.allow_files, [PathBuf::from("/etc/a")]);
        assert_eq!(sources.deny_files.len(), 2);
        assert!(Args::try_parse_from(["x", "--disk", "d", "--deny", "10.0.0.0/33"]).is_err());
        assert!(
            Args::try_parse_from(["x", "--disk", "d", "--max-connections-per-peer", "0"]).is_err()
        );
    }
}
