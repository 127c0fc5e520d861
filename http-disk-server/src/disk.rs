//! The served disk: one block device or regular file, opened once and kept
//! open for the life of the process (on DRBD, the open read-write fd is
//! what holds the Primary role). All I/O is positional (`pread`/`pwrite`),
//! so worker threads never share a seek position.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// `_IOR(0x12, 114, size_t)`: size of a block device in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IO(0x12, 104)`: logical sector size of a block device.
const BLKSSZGET: libc::c_ulong = 0x1268;
/// `_IO(0x12, 127)`: write zeros to a range; since Linux 4.12 it never
/// deallocates (`BLKDEV_ZERO_NOUNMAP`).
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// Chunk used when zeros must be written by hand, and for streaming reads.
pub const IO_CHUNK: usize = 1 << 20;

/// An open disk and what the server needs to know about it.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    size: u64,
    /// Logical sector size for block devices (alignment of zero/trim
    /// ioctls); `None` for regular files, where any range is fine.
    sector: Option<u64>,
    readonly: bool,
}

impl Disk {
    /// Opens `path` (read-write unless `readonly`) and finds its size:
    /// `BLKGETSIZE64` for a block device, the file length for a file.
    /// Anything else (directory, character device...) is refused.
    pub fn open(path: &Path, readonly: bool) -> io::Result<Disk> {
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            // Never become the controlling terminal of some odd device,
            // and never follow a path that turned into a FIFO.
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)?;
        let kind = file.metadata()?.file_type();
        let (size, sector) = if kind.is_block_device() {
            (ioctl_u64(&file, BLKGETSIZE64)?, Some(sector_size(&file)?))
        } else if kind.is_file() {
            (file.metadata()?.len(), None)
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a block device or regular file",
            ));
        };
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            size,
            sector,
            readonly,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_block_device(&self) -> bool {
        self.sector.is_some()
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Fills `buf` from `offset` (the caller checked the range).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Sends `len` bytes from `offset` straight to `socket` with
    /// `sendfile(2)`: no copy through user space, which is what lets large
    /// Range GETs keep up with a static file server. Returns how many bytes
    /// went out before a failure; `Err` only if none did, so the caller
    /// can fall back to [`Disk::read_at`] when the kernel refuses sendfile
    /// for this kind of file. A disk that ends early (shrunk under us) is
    /// an error, never a silent short body.
    pub fn send_to(&self, socket: &impl AsRawFd, offset: u64, len: u64) -> io::Result<u64> {
        let mut sent = 0u64;
        while sent < len {
            let mut position = (offset + sent) as libc::off_t;
            // Bounded per call so a huge GET makes progress in steps.
            let count = (len - sent).min(1 << 30) as usize;
            // SAFETY: both fds are open for the duration of the call and
            // `position` is a valid off_t the kernel updates.
            let n = unsafe {
                libc::sendfile(
                    socket.as_raw_fd(),
                    self.file.as_raw_fd(),
                    &mut position,
                    count,
                )
            };
            match n {
                n if n > 0 => sent += n as u64,
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("disk ended at {} while sending", offset + sent),
                    ))
                }
                _ => {
                    let error = io::Error::last_os_error();
                    if error.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    if sent == 0 {
                        return Err(error);
                    }
                    return Err(io::Error::new(
                        error.kind(),
                        format!("after {sent} of {len} bytes: {error}"),
                    ));
                }
            }
        }
        Ok(sent)
    }

    /// Writes all of `data` at `offset` (the caller checked the range).
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// Makes every completed write durable: `fdatasync`, which on a block
    /// device also flushes the device's volatile cache.
    pub fn sync(&self) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// Zeroes `len` bytes at `offset`. With `may_deallocate` the range may
    /// become a hole / be unmapped (trim, or zero with `X-Disk-May-Trim`);
    /// without it, the range stays allocated. Either way it reads back as
    /// zeros afterwards.
    ///
    /// Files: `fallocate(PUNCH_HOLE)` or `fallocate(ZERO_RANGE)`. Block
    /// devices: `fallocate(PUNCH_HOLE)` (the kernel turns it into a
    /// zero-out that may unmap, i.e. a discard that is guaranteed to read
    /// back zeros) or `BLKZEROOUT`, on the sector-aligned middle; unaligned
    /// edges are written as zeros. Whatever the kernel or file system does
    /// not support falls back to writing zeros.
    pub fn zero(&self, offset: u64, len: u64, may_deallocate: bool) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= self.size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range past the disk"))?;
        let align = self.sector.unwrap_or(1);
        let middle_start = offset.div_ceil(align) * align;
        let middle_end = (end / align) * align;
        if middle_start >= middle_end {
            return self.write_zeros(offset, end);
        }
        self.write_zeros(offset, middle_start)?;
        self.write_zeros(middle_end, end)?;
        let (start, length) = (middle_start, middle_end - middle_start);
        let done = if may_deallocate {
            self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start,
                length,
            )
        } else if self.is_block_device() {
            self.blkzeroout(start, length)
        } else {
            self.fallocate(libc::FALLOC_FL_ZERO_RANGE, start, length)
        };
        match done {
            Ok(()) => Ok(()),
            Err(e) if unsupported(&e) => self.write_zeros(start, start + length),
            Err(e) => Err(e),
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (offset, len) = (to_off(offset)?, to_off(len)?);
        // SAFETY: fallocate(2) on an fd we own; no memory is passed.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn blkzeroout(&self, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKZEROOUT reads two u64 (start, length) from the pointer,
        // which points at a live array of exactly that.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Writes zeros over `start..end` by hand.
    fn write_zeros(&self, start: u64, end: u64) -> io::Result<()> {
        let zeros = vec![0u8; IO_CHUNK.min((end - start) as usize)];
        let mut at = start;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// Errors meaning "this kernel / file system / device cannot do that
/// operation", after which writing zeros is the right fallback.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

fn to_off(n: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(n)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

fn ioctl_u64(file: &File, request: libc::c_ulong) -> io::Result<u64> {
    let mut value: u64 = 0;
    // SAFETY: the request writes one u64 through the pointer, which points
    // at a live u64.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, &mut value as *mut u64) };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sector_size(file: &File) -> io::Result<u64> {
    let mut value: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut value as *mut libc::c_int) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(value).ok().filter(|s| *s > 0).unwrap_or(512))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_with(content: &[u8]) -> (tempfile::TempDir, Disk) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, content).unwrap();
        let disk = Disk::open(&path, false).unwrap();
        (dir, disk)
    }

    #[test]
    fn positional_io_and_size() {
        let (_dir, disk) = disk_with(&[7u8; 10000]);
        assert_eq!(disk.size(), 10000);
        assert!(!disk.is_block_device());
        disk.write_at(b"hello", 4097).unwrap();
        let mut buf = [0u8; 7];
        disk.read_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"\x07hello\x07");
        disk.sync().unwrap();
    }

    #[test]
    fn zero_and_trim_unaligned_ranges() {
        for may_deallocate in [false, true] {
            let (_dir, disk) = disk_with(&[0xAAu8; 3 * 65536]);
            disk.zero(100, 2 * 65536, may_deallocate).unwrap();
            let mut all = vec![0u8; 3 * 65536];
            disk.read_at(&mut all, 0).unwrap();
            assert!(all[..100].iter().all(|b| *b == 0xAA));
            assert!(all[100..100 + 2 * 65536].iter().all(|b| *b == 0));
            assert!(all[100 + 2 * 65536..].iter().all(|b| *b == 0xAA));
            assert_eq!(disk.size(), 3 * 65536, "zeroing must not change the size");
            assert!(disk.zero(3 * 65536 - 1, 2, may_deallocate).is_err());
        }
    }

    #[test]
    fn refuses_directories_and_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Disk::open(dir.path(), true).is_err());
        let missing = Disk::open(&dir.path().join("nope"), false).unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn readonly_disk_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, [1u8; 512]).unwrap();
        let disk = Disk::open(&path, true).unwrap();
        assert!(disk.readonly());
        assert!(disk.write_at(b"x", 0).is_err());
    }
}
