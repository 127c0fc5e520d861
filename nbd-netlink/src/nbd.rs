//! The kernel's nbd netlink family (include/uapi/linux/nbd-netlink.h):
//! connect a device to sockets, give a device whose connection died a new
//! one, disconnect, and the multicast event that says a connection died.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::genl::{self, Attr, Family, Socket};

const FAMILY: &str = "nbd";
const VERSION: u8 = 1;
const MULTICAST_GROUP: &str = "nbd_mc_group";

const CMD_CONNECT: u8 = 1;
const CMD_DISCONNECT: u8 = 2;
const CMD_RECONFIGURE: u8 = 3;
pub const CMD_LINK_DEAD: u8 = 4;

const ATTR_INDEX: u16 = 1;
const ATTR_SIZE_BYTES: u16 = 2;
const ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const ATTR_TIMEOUT: u16 = 4;
const ATTR_SERVER_FLAGS: u16 = 5;
const ATTR_SOCKETS: u16 = 7;
const ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const SOCK_ITEM: u16 = 1;
const SOCK_FD: u16 = 1;

/// What a connect asks of the kernel.
pub struct Settings {
    pub size: u64,
    pub block_size: u64,
    pub server_flags: u16,
    /// A request without a reply for this long is requeued (and the
    /// connection it was on declared dead).
    pub timeout: Duration,
    /// How long the device waits for a new connection after one died
    /// before it fails I/O: the window a restart must fit in.
    pub dead_conn_timeout: Duration,
}

pub struct Nbd {
    socket: Socket,
    family: Family,
}

impl Nbd {
    pub fn open() -> io::Result<Nbd> {
        let mut socket = Socket::open()?;
        let family = genl::resolve(&mut socket, FAMILY).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the kernel has no nbd netlink family (is the nbd module loaded?): {e}"),
            )
        })?;
        Ok(Nbd { socket, family })
    }

    fn sockets(connection: &UnixStream) -> Attr {
        Attr::nested(
            ATTR_SOCKETS,
            &[Attr::nested(
                SOCK_ITEM,
                &[Attr::u32(SOCK_FD, connection.as_raw_fd() as u32)],
            )],
        )
    }

    /// Connects `index` (or the first free device, which the kernel picks
    /// atomically, when None) to `connection`; returns the device's index.
    pub fn connect(
        &mut self,
        index: Option<u32>,
        connection: &UnixStream,
        settings: &Settings,
    ) -> io::Result<u32> {
        let mut attrs = vec![
            Attr::u64(ATTR_SIZE_BYTES, settings.size),
            Attr::u64(ATTR_BLOCK_SIZE_BYTES, settings.block_size),
            Attr::u64(ATTR_SERVER_FLAGS, u64::from(settings.server_flags)),
            Attr::u64(ATTR_TIMEOUT, settings.timeout.as_secs().max(1)),
            Attr::u64(
                ATTR_DEAD_CONN_TIMEOUT,
                settings.dead_conn_timeout.as_secs().max(1),
            ),
            Self::sockets(connection),
        ];
        if let Some(index) = index {
            attrs.push(Attr::u32(ATTR_INDEX, index));
        }
        let replies = self
            .socket
            .request(self.family.id, VERSION, CMD_CONNECT, &attrs)?;
        replies
            .iter()
            .find_map(|m| m.u32(ATTR_INDEX))
            .or(index)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the kernel's connect reply named no device",
                )
            })
    }

    /// Gives device `index`, whose connection died, `connection` instead.
    /// The kernel resends the requests that were waiting for it.
    pub fn reconfigure(&mut self, index: u32, connection: &UnixStream) -> io::Result<()> {
        let attrs = [Attr::u32(ATTR_INDEX, index), Self::sockets(connection)];
        self.socket
            .request(self.family.id, VERSION, CMD_RECONFIGURE, &attrs)
            .map(drop)
    }

    pub fn disconnect(&mut self, index: u32) -> io::Result<()> {
        self.socket
            .request(
                self.family.id,
                VERSION,
                CMD_DISCONNECT,
                &[Attr::u32(ATTR_INDEX, index)],
            )
            .map(drop)
    }

    /// A socket that receives the family's events (a dead link).
    pub fn events(&self) -> io::Result<Events> {
        let group = self
            .family
            .groups
            .iter()
            .find(|(name, _)| name == MULTICAST_GROUP)
            .map(|(_, id)| *id)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "the nbd family has no nbd_mc_group",
                )
            })?;
        let socket = Socket::open()?;
        socket.join(group)?;
        Ok(Events { socket })
    }
}

pub struct Events {
    socket: Socket,
}

impl Events {
    /// Indexes of devices whose connection died, received within
    /// `timeout` (empty when none).
    pub fn dead_links(&self, timeout: Duration) -> io::Result<Vec<u32>> {
        self.socket.set_timeout(Some(timeout))?;
        match self.socket.receive() {
            Ok(messages) => Ok(messages
                .iter()
                .filter(|m| m.command == CMD_LINK_DEAD)
                .filter_map(|m| m.u32(ATTR_INDEX))
                .collect()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }
}
