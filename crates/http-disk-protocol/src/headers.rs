//! Names of the headers the protocol adds to plain HTTP range requests.
//! All are optional for old clients: a request without them gets the old
//! server's behaviour.

/// HEAD reply: comma-separated [`crate::Feature`] names. Old servers do not
/// send it, which is how a client tells them apart.
pub const FEATURES: &str = "X-Disk-Features";

/// Request (PUT, trim, zero): `1` defers durability to the next flush.
/// Without it every write is durable before the reply, because old
/// plugins never send a flush.
pub const WRITEBACK: &str = "X-Disk-Writeback";

/// POST request: the operation, one of [`OP_FLUSH`], [`OP_TRIM`], [`OP_ZERO`].
pub const OP: &str = "X-Disk-Op";

/// POST trim/zero request: the byte range, written like a `Range` header
/// (`bytes=B-E`). It must lie entirely inside the device.
pub const RANGE: &str = "X-Disk-Range";

/// POST zero request: `1` allows the server to deallocate the range (the
/// NBD `NBD_CMD_FLAG_NO_HOLE` flag is absent). Without it the zeroed range
/// stays allocated.
pub const MAY_TRIM: &str = "X-Disk-May-Trim";

/// Error replies: a one-line, human-readable reason (also in the body).
pub const ERROR: &str = "X-Disk-Error";

pub const OP_FLUSH: &str = "flush";
pub const OP_TRIM: &str = "trim";
pub const OP_ZERO: &str = "zero";
