//! Access control (`--allow CIDR`): which peers may talk to the server.
//! Checked right after a request's headers, before any body is read.

use std::net::IpAddr;

use ipnet::IpNet;

/// The networks allowed to use the server; empty means everyone.
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    nets: Vec<IpNet>,
}

impl AllowList {
    pub fn new(nets: Vec<IpNet>) -> AllowList {
        AllowList { nets }
    }

    /// Whether `peer` may be served. An IPv4 peer reaching an IPv6 socket
    /// shows up as `::ffff:a.b.c.d`: it is matched as the IPv4 address it
    /// is, so `--allow 10.0.0.0/8` works whatever `--ip` is.
    pub fn permits(&self, peer: IpAddr) -> bool {
        if self.nets.is_empty() {
            return true;
        }
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        self.nets.iter().any(|net| net.contains(&peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse_cidr;

    fn list(cidrs: &[&str]) -> AllowList {
        AllowList::new(cidrs.iter().map(|c| parse_cidr(c).unwrap()).collect())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn empty_list_allows_everyone() {
        assert!(list(&[]).permits(ip("203.0.113.9")));
        assert!(list(&[]).permits(ip("::1")));
    }

    #[test]
    fn ipv4_networks() {
        let allow = list(&["10.0.0.0/8", "192.168.1.7/32"]);
        assert!(allow.permits(ip("10.255.0.1")));
        assert!(allow.permits(ip("192.168.1.7")));
        assert!(!allow.permits(ip("192.168.1.8")));
        assert!(!allow.permits(ip("11.0.0.1")));
        assert!(!allow.permits(ip("::1")));
        // An IPv4 client on a dual-stack socket.
        assert!(allow.permits(ip("::ffff:10.1.2.3")));
        assert!(!allow.permits(ip("::ffff:11.1.2.3")));
    }

    #[test]
    fn ipv6_networks() {
        let allow = list(&["fd00::/8", "::1"]);
        assert!(allow.permits(ip("fd12:3456::1")));
        assert!(allow.permits(ip("::1")));
        assert!(!allow.permits(ip("fe80::1")));
        assert!(!allow.permits(ip("127.0.0.1")));
    }

    #[test]
    fn zero_prefix_allows_a_whole_family() {
        let allow = list(&["0.0.0.0/0"]);
        assert!(allow.permits(ip("8.8.8.8")));
        assert!(!allow.permits(ip("2001:db8::1")));
    }
}
