//! This process as a lease owner, and whether another owner on this host
//! is still alive: read from /proc, so a restart after a crash on the same
//! host does not wait for the dead owner's lease to expire.

use std::time::{SystemTime, UNIX_EPOCH};

use super::record::Owner;

/// This process, with a fresh random token.
pub fn this_process() -> Owner {
    Owner {
        host: host_name(),
        boot_id: boot_id(),
        pid: std::process::id(),
        process_start: process_start(std::process::id()).unwrap_or(0),
        token: random_token(),
    }
}

/// `Some(false)` when `owner` is known dead: same host and it booted again
/// since, or its pid is gone or now another process. `None` when this
/// host cannot tell (another host, or /proc unreadable).
pub fn is_alive(owner: &Owner) -> Option<bool> {
    if owner.host != host_name() || owner.boot_id.is_empty() {
        return None;
    }
    if owner.boot_id != boot_id() {
        return Some(false);
    }
    match process_start(owner.pid) {
        Some(start) => Some(start == owner.process_start),
        None if std::path::Path::new("/proc/self/stat").exists() => Some(false),
        None => None,
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Field 22 of /proc/PID/stat (after the command name, which may hold
/// spaces and parentheses: parse from the last `)`).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 on; starttime is field 22, the 20th of these.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn random_token() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        // Not secret, only distinct: time and pid will do.
        return unix_ms() ^ (u64::from(std::process::id()) << 40);
    }
    u64::from_ne_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_gone_pid_is_not() {
        let me = this_process();
        assert_eq!(me.pid, std::process::id());
        assert!(me.process_start > 0);
        assert_eq!(is_alive(&me), Some(true));
        let reused = Owner {
            process_start: me.process_start + 1,
            ..me.clone()
        };
        assert_eq!(
            is_alive(&reused),
            Some(false),
            "a reused pid is not the owner"
        );
        let rebooted = Owner {
            boot_id: "another-boot".into(),
            ..me.clone()
        };
        assert_eq!(is_alive(&rebooted), Some(false));
        let elsewhere = Owner {
            host: "another-host".into(),
            ..me.clone()
        };
        assert_eq!(is_alive(&elsewhere), None);
        assert_ne!(this_process().token, me.token);
    }
}
