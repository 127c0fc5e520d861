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
//! With `writeback=true`, every change acknowledged since the last flush is
//! also kept in the journal (`journal.rs`) and replayed on the next server
//! after a failover, so the flush still succeeds.
//!
//! A read-only server (`readonly` feature) refuses writes with EPERM.

use http_disk_protocol::{ByteRange, Feature};

use crate::clients::Client;
use crate::cluster::{Active, Cluster};
use http_client::abort::Abort;

use crate::error::{Attempt, Error};
use crate::journal::ChangeRef;
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

pub fn read(cluster: &Cluster, client: Client, buf: &mut [u8], offset: u64) -> Result<(), Error> {
    let len = buf.len();
    check_range(cluster, offset, len as u64)?;
    let what = || format!("read of {len} bytes at {offset}");
    cluster.run(client, &what, len as u64, |active, abort| {
        cluster
            .transport()
            .read(active.index, offset, &mut *buf, abort)
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
    let writeback = writeback(cluster, active, fua);
    let size = cluster.size().unwrap_or(0);
    cluster
        .transport()
        .write(active.index, offset, data, size, writeback, abort)
}

/// Applies one change on `active`: the one place that turns a write, trim
/// or zero into requests, for the client's requests and for the replay of
/// the write-back journal after a failover. `fast`: a zero must fail
/// rather than fall back to writing zeros (NBD_CMD_FLAG_FAST_ZERO).
pub fn apply(
    cluster: &Cluster,
    active: &Active,
    change: ChangeRef<'_>,
    fua: bool,
    fast: bool,
    abort: &Abort,
) -> Result<(), Attempt> {
    refuse_readonly(cluster, active)?;
    match change {
        ChangeRef::Write { offset, data } => put(cluster, active, data, offset, fua, abort),
        ChangeRef::Trim(range) => {
            if !active.info.has(Feature::Trim) {
                // Trim is a hint: doing nothing is correct (the connection
                // was opened on a server with trim and failed over to one
                // without).
                return Ok(());
            }
            let writeback = writeback(cluster, active, fua);
            cluster
                .transport()
                .post(active.index, PostOp::Trim(range), writeback, abort)
        }
        ChangeRef::Zero { range, may_trim } => {
            if active.info.has(Feature::Zero) {
                let writeback = writeback(cluster, active, fua);
                let op = PostOp::Zero { range, may_trim };
                return cluster.transport().post(active.index, op, writeback, abort);
            }
            if fast {
                return Err(Attempt::Fatal(Error::NotFast(format!(
                    "{} has no zero extension",
                    cluster.url(active)
                ))));
            }
            // Old server: write the zeros. A failover repeats the whole
            // range, which is harmless (same bytes).
            let zeros = vec![0u8; ZERO_CHUNK.min(range.len() as usize)];
            let mut offset = range.start();
            while offset < range.end() {
                let n = (range.end() - offset).min(zeros.len() as u64) as usize;
                put(cluster, active, &zeros[..n], offset, fua, abort)?;
                offset += n as u64;
            }
            Ok(())
        }
    }
}

/// Runs one client change through the failover loop and, with
/// `writeback=true`, records it in the journal once acknowledged.
fn change(
    cluster: &Cluster,
    client: Client,
    what: &dyn Fn() -> String,
    change: ChangeRef<'_>,
    fua: bool,
    fast: bool,
) -> Result<(), Error> {
    let bytes = match change {
        ChangeRef::Write { data, .. } => data.len() as u64,
        ChangeRef::Trim(range) | ChangeRef::Zero { range, .. } => range.len(),
    };
    cluster.take_over(client);
    cluster.run(client, what, bytes, |active, abort| {
        apply(cluster, active, change, fua, fast, abort)?;
        cluster.record(active, change)
    })
}

pub fn write(
    cluster: &Cluster,
    client: Client,
    data: &[u8],
    offset: u64,
    fua: bool,
) -> Result<(), Error> {
    check_range(cluster, offset, data.len() as u64)?;
    let what = || format!("write of {} bytes at {offset}", data.len());
    change(
        cluster,
        client,
        &what,
        ChangeRef::Write { offset, data },
        fua,
        false,
    )
}

pub fn flush(cluster: &Cluster, client: Client) -> Result<(), Error> {
    cluster.take_over(client);
    if !cluster.config.writeback {
        // Write-through: every write, trim and zero acknowledged so far
        // was durable on its server before its reply. Nothing to send.
        return Ok(());
    }
    let mark = cluster.journal().mark();
    let mut flushed_on = String::new();
    cluster.run(client, &|| "flush".to_owned(), 0, |active, abort| {
        if active.info.has(Feature::Flush) {
            cluster
                .transport()
                .post(active.index, PostOp::Flush, false, abort)?;
        }
        // Old server: every PUT it acknowledged was already synced.
        flushed_on = cluster.url(active).to_owned();
        Ok(())
    })?;
    // The server flushed has every change acknowledged before the mark:
    // by its own hand, or replayed from the journal when it was chosen.
    cluster.journal().flushed(mark);
    // Unless the journal overflowed and a server was left meanwhile: then
    // some changes are on no server we can flush, and a flush that says
    // "durable" would lie. Reported once, so later flushes mean what they say.
    if cluster.take_unflushed_elsewhere() {
        return Err(Error::Unflushed(format!(
            "write-back changes were acknowledged by a server that was left before a flush, \
             and they were more than journal-size ({} bytes) could keep for replay; \
             {flushed_on} is flushed, but those changes survive only if that host did not crash",
            cluster.journal().limit()
        )));
    }
    Ok(())
}

pub fn trim(
    cluster: &Cluster,
    client: Client,
    count: u32,
    offset: u64,
    fua: bool,
) -> Result<(), Error> {
    check_range(cluster, offset, count.into())?;
    let Some(range) = ByteRange::from_offset_len(offset, count.into()) else {
        return Ok(());
    };
    let what = || format!("trim of {count} bytes at {offset}");
    change(cluster, client, &what, ChangeRef::Trim(range), fua, false)
}

/// Zeroes a range. `fast`: the client wants an error rather than a slow
/// fallback (NBD_CMD_FLAG_FAST_ZERO).
pub fn zero(
    cluster: &Cluster,
    client: Client,
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
    let what = || format!("zero of {count} bytes at {offset}");
    change(
        cluster,
        client,
        &what,
        ChangeRef::Zero { range, may_trim },
        fua,
        fast,
    )
}
