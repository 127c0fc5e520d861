//! NBD operations on the cluster, by server generation (decided per
//! attempt, because a failover can land on an older or newer server) and
//! by mode: write-through (the default) or `writeback=true`.
//!
//! | NBD | new server (X-Disk-Features) | old server |
//! |---|---|---|
//! | write | PUT, durable before 200; with `writeback=true` a write-back PUT (`X-Disk-Writeback: 1`) | PUT (synced before 200) |
//! | write + FUA | PUT without write-back (durable before 200) | PUT |
//! | flush | write-through: nothing (every write was durable); write-back: `POST X-Disk-Op: flush` | nothing to do: every PUT was synced |
//! | trim | `POST X-Disk-Op: trim` (write-back only with `writeback=true`) | nothing (trim is advisory; not advertised) |
//! | zero | `POST X-Disk-Op: zero` (likewise) | PUTs of zeros |
//!
//! Why write-through by default: XCP-ng's HA daemon writes its statefile
//! with O_DIRECT and never flushes (xha `sf_open`), so a write the kernel's
//! nbd driver sends without FUA must already be durable when we
//! acknowledge it; a write-back PUT sits in the server host's page cache,
//! above DRBD, and dies with that host.
//!
//! A read-only server (`readonly` feature) refuses writes with EPERM.

use http_disk_protocol::{ByteRange, Feature};

use crate::cluster::{Active, Cluster};
use http_client::abort::Abort;

use crate::error::{Attempt, Error};
use crate::transport::PostOp;

/// Largest PUT of zeros when a server has no zero extension.
const ZERO_CHUNK: usize = 1 << 20;

/// Checks that `len` bytes at `offset` lie inside the disk. nbdkit checks
/// this too; the check here keeps a wrong size from ever reaching a server.
fn check_range(cluster: &Cluster, offset: u64, len: u64) -> Result<(), Error> {
    let size = cluster.size().unwrap_or(0);
    if !matches!(offset.checked_add(len), Some(end) if end <= size) {
        return Err(Error::OutOfRange(format!(
            "{len} bytes at {offset} run past the end of the {size}-byte disk"
        )));
    }
    Ok(())
}

fn refuse_readonly(cluster: &Cluster, active: &Active) -> Result<(), Attempt> {
    if active.info.has(Feature::Readonly) {
        return Err(Attempt::Fatal(Error::ReadOnly(format!(
            "{} serves the disk read-only",
            cluster.url(active)
        ))));
    }
    Ok(())
}

pub fn read(cluster: &Cluster, buf: &mut [u8], offset: u64) -> Result<(), Error> {
    let len = buf.len();
    check_range(cluster, offset, len as u64)?;
    let what = || format!("read of {len} bytes at {offset}");
    cluster.run(&what, len as u64, |active, abort| {
        cluster
            .transport()
            .read(cluster.url(active), offset, &mut *buf, abort)
    })
}

/// Whether a change may be acknowledged before it is durable: only with
/// `writeback=true`, without FUA, on a server that has the extension.
fn writeback(cluster: &Cluster, active: &Active, fua: bool) -> bool {
    cluster.config.writeback && !fua && active.info.has(Feature::Writeback)
}

/// One PUT of `data` at `offset`, write-back when [`writeback`] says so.
fn put(
    cluster: &Cluster,
    active: &Active,
    data: &[u8],
    offset: u64,
    fua: bool,
    abort: &Abort,
) -> Result<(), Attempt> {
    refuse_readonly(cluster, active)?;
    let writeback = writeback(cluster, active, fua);
    let size = cluster.size().unwrap_or(0);
    cluster
        .transport()
        .write(cluster.url(active), offset, data, size, writeback, abort)?;
    if writeback {
        cluster.mark_dirty(active);
    }
    Ok(())
}

pub fn write(cluster: &Cluster, data: &[u8], offset: u64, fua: bool) -> Result<(), Error> {
    check_range(cluster, offset, data.len() as u64)?;
    cluster.run(
        &|| format!("write of {} bytes at {offset}", data.len()),
        data.len() as u64,
        |active, abort| put(cluster, active, data, offset, fua, abort),
    )
}

pub fn flush(cluster: &Cluster) -> Result<(), Error> {
    if !cluster.config.writeback {
        // Write-through: every write, trim and zero acknowledged so far
        // was durable on its server before its reply. Nothing to send.
        return Ok(());
    }
    let previous = cluster.flush_started();
    let unflushed_elsewhere = cluster.take_unflushed_elsewhere();
    let mut flushed_on = String::new();
    let result = cluster.run(&|| "flush".to_owned(), 0, |active, abort| {
        if active.info.has(Feature::Flush) {
            cluster
                .transport()
                .post(cluster.url(active), PostOp::Flush, false, abort)?;
        }
        // Old server: every PUT it acknowledged was already synced.
        flushed_on = cluster.url(active).to_owned();
        Ok(())
    });
    if let Err(error) = result {
        cluster.flush_failed(previous);
        if unflushed_elsewhere {
            cluster.restore_unflushed_elsewhere();
        }
        return Err(error);
    }
    // Write-back writes acknowledged by a server we have since left are
    // not covered by this flush: a flush that says "durable" would lie.
    // Reported once, so the client's later flushes mean what they say.
    if unflushed_elsewhere {
        return Err(Error::Unflushed(format!(
            "write-back writes were acknowledged by a server that failed before a flush; \
             {flushed_on} is flushed, but those writes survive only if that host did not crash"
        )));
    }
    Ok(())
}

pub fn trim(cluster: &Cluster, count: u32, offset: u64, fua: bool) -> Result<(), Error> {
    check_range(cluster, offset, count.into())?;
    let Some(range) = ByteRange::from_offset_len(offset, count.into()) else {
        return Ok(());
    };
    let what = || format!("trim of {count} bytes at {offset}");
    cluster.run(&what, count.into(), |active, abort| {
        refuse_readonly(cluster, active)?;
        if !active.info.has(Feature::Trim) {
            // Trim is a hint: doing nothing is correct (the connection was
            // opened on a server with trim and failed over to one without).
            return Ok(());
        }
        let writeback = writeback(cluster, active, fua);
        cluster
            .transport()
            .post(cluster.url(active), PostOp::Trim(range), writeback, abort)?;
        if writeback {
            cluster.mark_dirty(active);
        }
        Ok(())
    })
}

/// Zeroes a range. `fast`: the client wants an error rather than a slow
/// fallback (NBD_CMD_FLAG_FAST_ZERO).
pub fn zero(
    cluster: &Cluster,
    count: u32,
    offset: u64,
    may_trim: bool,
    fua: bool,
    fast: bool,
) -> Result<(), Error> {
    check_range(cluster, offset, count.into())?;
    let Some(range) = ByteRange::from_offset_len(offset, count.into()) else {
        return Ok(());
    };
    let mut zeros = Vec::new();
    let what = || format!("zero of {count} bytes at {offset}");
    cluster.run(&what, count.into(), |active, abort| {
        refuse_readonly(cluster, active)?;
        if active.info.has(Feature::Zero) {
            let writeback = writeback(cluster, active, fua);
            cluster.transport().post(
                cluster.url(active),
                PostOp::Zero { range, may_trim },
                writeback,
                abort,
            )?;
            if writeback {
                cluster.mark_dirty(active);
            }
            return Ok(());
        }
        if fast {
            return Err(Attempt::Fatal(Error::NotFast(format!(
                "{} has no zero extension",
                cluster.url(active)
            ))));
        }
        // Old server: write the zeros. A failover repeats the whole range,
        // which is harmless (same bytes).
        if zeros.is_empty() {
            zeros = vec![0u8; ZERO_CHUNK.min(count as usize)];
        }
        let mut done = 0u64;
        while done < u64::from(count) {
            let n = (u64::from(count) - done).min(zeros.len() as u64) as usize;
            put(cluster, active, &zeros[..n], offset + done, fua, abort)?;
            done += n as u64;
        }
        Ok(())
    })
}
