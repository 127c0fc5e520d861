//! Generic netlink, the little of it the nbd family needs: one socket per
//! purpose (requests, or a multicast group's events), messages built from
//! typed attributes, replies parsed back into them, the kernel's error
//! turned into an `io::Error` with its errno.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const NETLINK_GENERIC: i32 = 16;
const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;
const HEADER: usize = 16 + 4; // nlmsghdr + genlmsghdr

/// One attribute to send: its type and payload (nested ones already
/// encoded, see [`Attr::nested`]).
pub struct Attr {
    kind: u16,
    payload: Vec<u8>,
}

impl Attr {
    pub fn u32(kind: u16, value: u32) -> Attr {
        Attr {
            kind,
            payload: value.to_ne_bytes().to_vec(),
        }
    }
    pub fn u64(kind: u16, value: u64) -> Attr {
        Attr {
            kind,
            payload: value.to_ne_bytes().to_vec(),
        }
    }
    pub fn string(kind: u16, value: &str) -> Attr {
        let mut payload = value.as_bytes().to_vec();
        payload.push(0);
        Attr { kind, payload }
    }
    pub fn nested(kind: u16, inner: &[Attr]) -> Attr {
        let mut payload = Vec::new();
        for attr in inner {
            attr.encode(&mut payload);
        }
        Attr {
            kind: kind | NLA_F_NESTED,
            payload,
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&((4 + self.payload.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&self.kind.to_ne_bytes());
        out.extend_from_slice(&self.payload);
        out.resize(align(out.len()), 0);
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A received message's command and attributes (type, payload).
#[derive(Debug)]
pub struct Message {
    pub command: u8,
    pub attrs: Vec<(u16, Vec<u8>)>,
}

impl Message {
    pub fn get(&self, kind: u16) -> Option<&[u8]> {
        find(&self.attrs, kind)
    }
    pub fn u32(&self, kind: u16) -> Option<u32> {
        Some(u32::from_ne_bytes(
            self.get(kind)?.get(..4)?.try_into().ok()?,
        ))
    }
}

fn find(attrs: &[(u16, Vec<u8>)], kind: u16) -> Option<&[u8]> {
    attrs
        .iter()
        .find(|(k, _)| k & !NLA_F_NESTED == kind)
        .map(|(_, v)| v.as_slice())
}

/// Splits an attribute stream (a message's, or a nested attribute's).
fn parse_attrs(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut attrs = Vec::new();
    while bytes.len() >= 4 {
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]);
        if len < 4 || len > bytes.len() {
            break;
        }
        attrs.push((kind, bytes[4..len].to_vec()));
        bytes = &bytes[align(len).min(bytes.len())..];
    }
    attrs
}

/// A generic netlink socket.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl with its family set is valid.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: bind(2) with a valid sockaddr_nl and its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket { fd, seq: 0 })
    }

    /// Receives `group`'s multicast messages from now on.
    pub fn join(&self, group: u32) -> io::Result<()> {
        // SAFETY: setsockopt(2) with a u32 option value.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                (&group as *const u32).cast(),
                4,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// How long [`Socket::receive`] waits (None: for ever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let tv = match timeout {
            Some(t) => libc::timeval {
                tv_sec: t.as_secs() as libc::time_t,
                tv_usec: t.subsec_micros() as libc::suseconds_t,
            },
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        // SAFETY: setsockopt(2) with a timeval.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends `command` of `family` with `attrs` and waits for the kernel's
    /// answer: the reply messages before its acknowledgement, or the
    /// errno it refused the request with.
    pub fn request(
        &mut self,
        family: u16,
        version: u8,
        command: u8,
        attrs: &[Attr],
    ) -> io::Result<Vec<Message>> {
        self.seq = self.seq.wrapping_add(1);
        let mut message = vec![0u8; HEADER];
        for attr in attrs {
            attr.encode(&mut message);
        }
        let len = message.len() as u32;
        message[0..4].copy_from_slice(&len.to_ne_bytes());
        message[4..6].copy_from_slice(&family.to_ne_bytes());
        message[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        message[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        message[16] = command;
        message[17] = version;
        // SAFETY: send(2) of a buffer we own; the kernel is the default peer.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut replies = Vec::new();
        loop {
            for (kind, seq, body) in self.receive_raw()? {
                if seq != self.seq {
                    continue; // a late answer to an earlier request
                }
                match kind {
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(
                            body.get(..4).ok_or_else(short)?.try_into().unwrap(),
                        );
                        return match errno {
                            0 => Ok(replies),
                            e => Err(io::Error::from_raw_os_error(-e)),
                        };
                    }
                    NLMSG_DONE => return Ok(replies),
                    _ => replies.push(genl_message(&body)?),
                }
            }
        }
    }

    /// The next multicast messages (blocks up to the socket's timeout:
    /// then `WouldBlock`).
    pub fn receive(&self) -> io::Result<Vec<Message>> {
        self.receive_raw()?
            .into_iter()
            .filter(|(kind, _, _)| *kind != NLMSG_ERROR && *kind != NLMSG_DONE)
            .map(|(_, _, body)| genl_message(&body))
            .collect()
    }

    /// One datagram's netlink messages: (type, sequence, payload).
    fn receive_raw(&self) -> io::Result<Vec<(u16, u32, Vec<u8>)>> {
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: recv(2) into a buffer we own.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut bytes = &buf[..n as usize];
        let mut messages = Vec::new();
        while bytes.len() >= 16 {
            let len = u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize;
            if len < 16 || len > bytes.len() {
                return Err(short());
            }
            let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
            let seq = u32::from_ne_bytes(bytes[8..12].try_into().unwrap());
            messages.push((kind, seq, bytes[16..len].to_vec()));
            bytes = &bytes[align(len).min(bytes.len())..];
        }
        Ok(messages)
    }
}

fn genl_message(body: &[u8]) -> io::Result<Message> {
    if body.len() < 4 {
        return Err(short());
    }
    Ok(Message {
        command: body[0],
        attrs: parse_attrs(&body[4..]),
    })
}

fn short() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message")
}

/// A family's id and its multicast groups' (name, id).
pub struct Family {
    pub id: u16,
    pub groups: Vec<(String, u32)>,
}

/// Looks `name` up with the generic netlink controller.
pub fn resolve(socket: &mut Socket, name: &str) -> io::Result<Family> {
    let replies = socket.request(
        GENL_ID_CTRL,
        1,
        CTRL_CMD_GETFAMILY,
        &[Attr::string(CTRL_ATTR_FAMILY_NAME, name)],
    )?;
    let reply = replies.first().ok_or_else(short)?;
    let id = reply
        .get(CTRL_ATTR_FAMILY_ID)
        .and_then(|v| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)));
    let id = id.ok_or_else(short)?;
    let mut groups = Vec::new();
    for (_, group) in parse_attrs(reply.get(CTRL_ATTR_MCAST_GROUPS).unwrap_or(&[])) {
        let group = parse_attrs(&group);
        let name = find(&group, CTRL_ATTR_MCAST_GRP_NAME)
            .map(|v| String::from_utf8_lossy(v).trim_end_matches('\0').to_owned());
        let gid = find(&group, CTRL_ATTR_MCAST_GRP_ID)
            .and_then(|v| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)));
        if let (Some(name), Some(gid)) = (name, gid) {
            groups.push((name, gid));
        }
    }
    Ok(Family { id, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_round_trip_with_padding() {
        let attr = Attr::nested(
            7,
            &[Attr::nested(1, &[Attr::u32(1, 42)]), Attr::string(2, "nbd")],
        );
        let mut bytes = Vec::new();
        attr.encode(&mut bytes);
        assert_eq!(bytes.len() % 4, 0);
        let outer = parse_attrs(&bytes);
        assert_eq!(outer.len(), 1);
        assert_eq!(outer[0].0, 7 | NLA_F_NESTED);
        let inner = parse_attrs(&outer[0].1);
        assert_eq!(inner.len(), 2);
        let item = parse_attrs(&inner[0].1);
        assert_eq!(item[0].1, 42u32.to_ne_bytes());
        assert_eq!(inner[1].1, b"nbd\0");
    }

    #[test]
    fn the_controller_resolves_itself() {
        // Every Linux kernel with generic netlink has "nlctrl", id 0x10:
        // a real round trip through the kernel, without the nbd module.
        let mut socket = Socket::open().unwrap();
        let family = resolve(&mut socket, "nlctrl").unwrap();
        assert_eq!(family.id, GENL_ID_CTRL);
        let error = resolve(&mut socket, "no-such-family").err().unwrap();
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT), "{error}");
    }
}
