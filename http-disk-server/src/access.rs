//! Access control by peer address: `--allow CIDR` / `--allow-file` (which
//! peers may talk to the server) and `--deny CIDR` / `--deny-file` (which
//! may not, whatever the allow list says). Checked right after a request's
//! headers, before any body is read.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

/// The networks allowed and denied.
#[derive(Clone, Debug, Default)]
pub struct AccessList {
    /// `None`: no allow list was given, everyone not denied is served.
    /// `Some` of an empty list (an allow file emptied) serves nobody: an
    /// operator who removes every entry means "nobody", not "everyone".
    allow: Option<Vec<IpNet>>,
    deny: Vec<IpNet>,
}

/// Which access list refuses a peer, for its 403 reason and the log.
/// (The metrics count both as one reason: `metrics::RefusalReason`.)
#[derive(Debug, PartialEq, Eq)]
pub enum ListRefusal {
    /// In a `--deny` network.
    Denied,
    /// An allow list was given and the peer is in none of its networks.
    NotAllowed,
}

impl AccessList {
    pub fn new(allow: Option<Vec<IpNet>>, deny: Vec<IpNet>) -> AccessList {
        AccessList { allow, deny }
    }

    /// Whether `peer` may be served: not in a denied network (deny wins),
    /// and in an allowed one when an allow list was given. An IPv4 peer reaching an
    /// IPv6 socket shows up as `::ffff:a.b.c.d`: it is matched as the IPv4
    /// address it is, so `--allow 10.0.0.0/8` works whatever `--ip` is.
    pub fn check(&self, peer: IpAddr) -> Result<(), ListRefusal> {
        let peer = canonical(peer);
        if self.deny.iter().any(|net| net.contains(&peer)) {
            return Err(ListRefusal::Denied);
        }
        match &self.allow {
            Some(allow) if !allow.iter().any(|net| net.contains(&peer)) => {
                Err(ListRefusal::NotAllowed)
            }
            _ => Ok(()),
        }
    }

    pub fn permits(&self, peer: IpAddr) -> bool {
        self.check(peer).is_ok()
    }

    /// Networks allowed (`None`: everyone) and networks denied.
    pub fn counts(&self) -> (Option<usize>, usize) {
        (self.allow.as_ref().map(Vec::len), self.deny.len())
    }
}

/// The address a peer really has: an IPv4-mapped IPv6 address (an IPv4
/// client on a dual-stack socket) as the IPv4 address it is.
pub fn canonical(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    }
}

/// Parses `10.0.0.0/8`, `::1/128`, or a bare address (a single host).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        // Normalise so 10.1.2.3/8 matches like 10.0.0.0/8.
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not an IP network (ADDR/PREFIX) or address"))
}

/// Reads a list file (`--allow-file`, `--deny-file`): one network or
/// address per line, `#` comments (whole line or after an entry) and blank
/// lines ignored. An empty file is a valid, empty list. The error names
/// the file and line, so a typo is found at once.
pub fn load_list(path: &Path) -> Result<Vec<IpNet>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_list(&text).map_err(|e| format!("{}:{e}", path.display()))
}

/// The lines of a list file; the error starts with the line number.
fn parse_list(text: &str) -> Result<Vec<IpNet>, String> {
    let mut nets = Vec::new();
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        nets.push(parse_cidr(entry).map_err(|e| format!("{number}: {e}"))?);
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(cidrs: &[&str]) -> Vec<IpNet> {
        cidrs.iter().map(|c| parse_cidr(c).unwrap()).collect()
    }

    fn list(cidrs: &[&str]) -> AccessList {
        AccessList::new(Some(nets(cidrs)), Vec::new())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn no_list_allows_everyone_an_emptied_one_nobody() {
        let open = AccessList::default();
        assert!(open.permits(ip("203.0.113.9")));
        assert!(open.permits(ip("::1")));
        assert_eq!(list(&[]).check(ip("::1")), Err(ListRefusal::NotAllowed));
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

    #[test]
    fn deny_wins_over_allow() {
        let access = AccessList::new(
            Some(nets(&["10.0.0.0/8", "::1"])),
            nets(&["10.1.0.0/16", "::1"]),
        );
        assert_eq!(access.check(ip("10.2.0.1")), Ok(()));
        assert_eq!(access.check(ip("10.1.2.3")), Err(ListRefusal::Denied));
        assert_eq!(
            access.check(ip("::ffff:10.1.2.3")),
            Err(ListRefusal::Denied)
        );
        assert_eq!(access.check(ip("::1")), Err(ListRefusal::Denied));
        assert_eq!(access.check(ip("11.0.0.1")), Err(ListRefusal::NotAllowed));
        // Deny alone: everyone else is served.
        let deny_only = AccessList::new(None, nets(&["192.0.2.0/24"]));
        assert!(deny_only.permits(ip("198.51.100.1")));
        assert_eq!(deny_only.check(ip("192.0.2.9")), Err(ListRefusal::Denied));
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert_eq!(parse_cidr("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        for bad in [
            "",
            "10.0.0.0/33",
            "host",
            "10.0.0/8",
            "::1/129",
            "1.2.3.4/-1",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn list_files_skip_comments_and_blank_lines() {
        let text = "# pool hosts\n\n10.0.0.1\n  fd00::/8  # storage network\n192.168.0.0/16\n";
        let parsed = parse_list(text).unwrap();
        assert_eq!(parsed, nets(&["10.0.0.1", "fd00::/8", "192.168.0.0/16"]));
        assert_eq!(parse_list("# nobody yet\n").unwrap(), Vec::new());
    }

    #[test]
    fn a_bad_line_is_named() {
        let error = parse_list("10.0.0.1\n\n10.0.0.0/33\n").unwrap_err();
        assert!(error.starts_with("3: "), "{error}");
        assert!(error.contains("10.0.0.0/33"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("allow");
        std::fs::write(&file, "host.example\n").unwrap();
        let error = load_list(&file).unwrap_err();
        assert!(
            error.starts_with(&format!("{}:1: ", file.display())),
            "{error}"
        );
        let missing = load_list(&dir.path().join("missing")).unwrap_err();
        assert!(missing.starts_with("cannot read "), "{missing}");
    }
}
