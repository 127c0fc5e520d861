//! What a lease says, and its stored form: a few `key=value` lines, so an
//! operator can read who holds a disk with `cat` or `aws s3 cp ... -`.
//!
//! ```text
//! chunk-store-lease 1
//! host=xcp-host-2
//! boot-id=8d9c...
//! pid=4242
//! process-start=123456789
//! token=5f3a9c0e12b4d6f8
//! generation=7
//! renewal=113
//! expires-unix-ms=1796640000000
//! duration-ms=30000
//! ```
//!
//! `generation` grows by one at every change of owner (it is the fencing
//! number); `renewal` at every renewal, so a reader whose clock disagrees
//! with the owner's can still see an owner alive by watching it change.

use std::fmt::Write as _;

const HEADER: &str = "chunk-store-lease 1";

/// Who holds (or held) a lease: enough to name it in a refusal and, on
/// the same host, to tell whether that process is still alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`: another boot of the same host
    /// means the owner is gone.
    pub boot_id: String,
    pub pid: u32,
    /// The process's start time in clock ticks since boot (`/proc/PID/stat`
    /// field 22), so a reused pid is not taken for the owner.
    pub process_start: u64,
    /// Random, per opening of the disk: two openings by one process are
    /// two owners.
    pub token: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub owner: Owner,
    pub generation: u64,
    pub renewal: u64,
    /// Wall clock (milliseconds since the epoch) after which the lease is
    /// free, as the owner's clock saw it at its last renewal.
    pub expires_unix_ms: u64,
    pub duration_ms: u64,
}

impl LeaseRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        let o = &self.owner;
        let mut text = String::new();
        let _ = write!(
            text,
            "{HEADER}\nhost={}\nboot-id={}\npid={}\nprocess-start={}\ntoken={:016x}\n\
             generation={}\nrenewal={}\nexpires-unix-ms={}\nduration-ms={}\n",
            o.host,
            o.boot_id,
            o.pid,
            o.process_start,
            o.token,
            self.generation,
            self.renewal,
            self.expires_unix_ms,
            self.duration_ms
        );
        text.into_bytes()
    }

    /// Parses a stored lease; the error says what is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<LeaseRecord, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("does not start with {HEADER:?}"));
        }
        let mut fields = std::collections::HashMap::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not key=value"))?;
            fields.insert(key, value);
        }
        let text_field = |key: &str| -> Result<String, String> {
            fields
                .get(key)
                .map(|v| v.to_string())
                .ok_or_else(|| format!("no {key}="))
        };
        let number = |key: &str| -> Result<u64, String> {
            text_field(key)?
                .parse()
                .map_err(|_| format!("{key}= is not a number"))
        };
        let token = u64::from_str_radix(&text_field("token")?, 16)
            .map_err(|_| "token= is not hexadecimal".to_owned())?;
        Ok(LeaseRecord {
            owner: Owner {
                host: text_field("host")?,
                boot_id: text_field("boot-id")?,
                pid: u32::try_from(number("pid")?).map_err(|_| "pid= is too large".to_owned())?,
                process_start: number("process-start")?,
                token,
            },
            generation: number("generation")?,
            renewal: number("renewal")?,
            expires_unix_ms: number("expires-unix-ms")?,
            duration_ms: number("duration-ms")?,
        })
    }

    /// `host xcp-2 pid 4242 (generation 7)`, for messages.
    pub fn describe_owner(&self) -> String {
        format!(
            "host {} pid {} (generation {})",
            self.owner.host, self.owner.pid, self.generation
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> LeaseRecord {
        LeaseRecord {
            owner: Owner {
                host: "h1".into(),
                boot_id: "b-1".into(),
                pid: 42,
                process_start: 99,
                token: 0xabc,
            },
            generation: 3,
            renewal: 5,
            expires_unix_ms: 1_000_000,
            duration_ms: 30_000,
        }
    }

    #[test]
    fn round_trip_and_clear_errors() {
        let record = sample();
        let bytes = record.to_bytes();
        assert!(String::from_utf8_lossy(&bytes).contains("token=0000000000000abc\n"));
        assert_eq!(LeaseRecord::parse(&bytes).unwrap(), record);
        assert!(LeaseRecord::parse(b"x")
            .unwrap_err()
            .contains("does not start"));
        let no_pid = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("pid=42\n", "");
        assert_eq!(
            LeaseRecord::parse(no_pid.as_bytes()).unwrap_err(),
            "no pid="
        );
        let bad = String::from_utf8(bytes)
            .unwrap()
            .replace("generation=3", "generation=x");
        assert!(LeaseRecord::parse(bad.as_bytes())
            .unwrap_err()
            .contains("generation="));
        assert_eq!(record.describe_owner(), "host h1 pid 42 (generation 3)");
    }
}
