//! The object store alone: for each block workload, the requests the s3
//! plugin sends the store for it, sent straight from threads of this
//! process (no nbdkit, no NBD client), at the concurrency nbdkit would
//! reach. Its figure is what the store serves on this machine to a client
//! that costs next to nothing: the measured ceiling of any plugin that
//! sends those requests, ours or the peer.
//!
//! The requests are the plugin's, one for one (see plugins/s3: every GET
//! is ranged; a write smaller than an object is a GET of the whole object
//! then a PUT of it; a write of whole objects is one PUT each), signed the
//! same way (rusty-s3 presigned URLs) and sent with the same HTTP client
//! (`http-client`, kept-alive connections, `TCP_QUICKACK`). They go to
//! objects of their own prefix, written first with the same kind of data
//! (see [`make_unique`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_client::connection::Deadline;
use http_client::endpoint::{Address, Endpoint, Pool};
use http_client::request::Request;
use http_client::response::Body;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use url::{Position, Url};

use crate::workload::Workload;

/// Threads nbdkit runs per NBD connection for a `parallel` plugin (its
/// `--threads` default): the most requests ours has in flight per
/// connection.
const NBDKIT_WORKERS: u32 = 16;
/// nbdcopy's defaults: 4 connections (the plugin allows multi-conn), 64
/// requests in flight on each, 256 KiB each.
const NBDCOPY_CONNECTIONS: u32 = 4;
const NBDCOPY_REQUEST: u64 = 256 << 10;
const SIGNED_FOR: Duration = Duration::from_secs(3600);
const TIMEOUT: Duration = Duration::from_secs(30);

/// What one operation of a workload asks of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    /// A random read of `len` bytes inside one object: one ranged GET.
    ReadPart { len: u64 },
    /// A random write smaller than an object: GET the object, PUT it.
    UpdateObject,
    /// `objects` consecutive whole objects, one ranged GET each.
    ReadObjects { objects: u64 },
    /// `objects` consecutive whole objects, one PUT each.
    WriteObjects { objects: u64 },
}

/// A workload as the store sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    operation: Operation,
    /// Operations in flight at once.
    concurrency: u32,
    /// Operations per second are reported as IOPS (else as MiB/s of NBD
    /// data, `bytes_per_op` each).
    iops: bool,
    bytes_per_op: u64,
    /// A copy: the whole disk once (else as many operations as fit in
    /// the run's time, as fio does).
    whole_disk: bool,
}

fn plan(workload: &Workload, object_size: u64) -> Plan {
    let (rw, block_size, concurrency, iops) = match workload {
        Workload::Fio(job) => (
            job.rw,
            job.block_size,
            job.iodepth.min(NBDKIT_WORKERS) * job.connections,
            workload.unit() == "IOPS",
        ),
        Workload::CopyOut => (
            "read",
            NBDCOPY_REQUEST,
            NBDCOPY_CONNECTIONS * NBDKIT_WORKERS,
            false,
        ),
        Workload::CopyIn(_) => (
            "write",
            NBDCOPY_REQUEST,
            NBDCOPY_CONNECTIONS * NBDKIT_WORKERS,
            false,
        ),
    };
    let objects = (block_size / object_size).max(1);
    let whole = block_size >= object_size;
    let operation = match (rw.contains("write"), whole) {
        (false, false) => Operation::ReadPart { len: block_size },
        (true, false) => Operation::UpdateObject,
        (false, true) => Operation::ReadObjects { objects },
        (true, true) => Operation::WriteObjects { objects },
    };
    Plan {
        operation,
        concurrency,
        iops,
        bytes_per_op: block_size,
        whole_disk: !matches!(workload, Workload::Fio(_)),
    }
}

/// The store, a bucket and a prefix holding `objects` objects of
/// `object_size` bytes.
pub struct DirectStore {
    pub name: String,
    pub command: String,
    endpoint: Endpoint,
    host: String,
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    object_size: u64,
    objects: u64,
    /// The next [`make_unique`] stamp: each PUT's content is new.
    stamps: AtomicU64,
}

/// Where and as whom [`DirectStore`] sends.
pub struct StoreAccess<'a> {
    pub endpoint: &'a str,
    pub bucket: &'a str,
    pub region: &'a str,
    pub access_key: &'a str,
    pub secret_key: &'a str,
}

impl DirectStore {
    /// Connects and writes the objects (`disk_size / object_size` of
    /// them, non-zero data) under `prefix`.
    pub fn start(
        name: &str,
        access: &StoreAccess<'_>,
        prefix: &str,
        object_size: u64,
        disk_size: u64,
    ) -> Result<DirectStore, String> {
        let base = Url::parse(access.endpoint).map_err(|e| format!("{}: {e}", access.endpoint))?;
        let bucket = Bucket::new(
            base,
            UrlStyle::Path,
            access.bucket.to_owned(),
            access.region.to_owned(),
        )
        .map_err(|e| format!("bucket {}: {e}", access.bucket))?;
        let address = Address::parse(bucket.base_url().as_str())?;
        let pool = Pool {
            max_open: usize::MAX,
            max_idle: 256,
            quick_ack: true,
        };
        let store = DirectStore {
            name: name.to_owned(),
            command: format!(
                "{NBDKIT_WORKERS} requests in flight per NBD connection of the case, \
                 from threads of hnd-bench (bench/src/store_load.rs)"
            ),
            host: bucket.base_url()[Position::BeforeHost..Position::AfterPort].to_owned(),
            endpoint: Endpoint::new(address, pool, None),
            credentials: Credentials::new(access.access_key, access.secret_key),
            bucket,
            prefix: prefix.to_owned(),
            object_size,
            objects: (disk_size / object_size).max(1),
            stamps: AtomicU64::new(0),
        };
        let mut data = harness::pattern(object_size as usize, 1);
        for index in 0..store.objects {
            store.put_new(index, &mut data)?;
        }
        Ok(store)
    }

    fn key(&self, index: u64) -> String {
        format!("{}{index:016x}", self.prefix)
    }

    /// Sends one request and returns its connection and reply head,
    /// refusing a non-2xx reply.
    fn exchange(
        &self,
        method: &str,
        key: &str,
        range: Option<&str>,
        body: &[u8],
        deadline: &Deadline,
    ) -> Result<
        (
            http_client::endpoint::Lease<'_>,
            http_client::response::ResponseHead,
        ),
        String,
    > {
        let action_url = match method {
            "GET" => self
                .bucket
                .get_object(Some(&self.credentials), key)
                .sign(SIGNED_FOR),
            _ => self
                .bucket
                .put_object(Some(&self.credentials), key)
                .sign(SIGNED_FOR),
        };
        let headers: Vec<(&str, &str)> = range.map(|r| ("Range", r)).into_iter().collect();
        let request = Request {
            method,
            target: &action_url[Position::BeforePath..],
            host: &self.host,
            user_agent: "hnd-bench",
            headers: &headers,
            content_length: (method == "PUT").then_some(body.len() as u64),
        };
        let (wire, tail) = request.wire(body)?;
        let (lease, head) = self
            .endpoint
            .send(&wire, tail, TIMEOUT, deadline)
            .map_err(|e| format!("{method} {key}: {e}"))?;
        if !(200..300).contains(&head.status) {
            return Err(format!("{method} {key}: status {}", head.status));
        }
        Ok((lease, head))
    }

    fn get(&self, index: u64, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let key = self.key(index);
        let range = format!("bytes={offset}-{}", offset + buf.len() as u64 - 1);
        let deadline = Deadline::new(TIMEOUT, TIMEOUT);
        let (mut lease, head) = self.exchange("GET", &key, Some(&range), &[], &deadline)?;
        match head.body("GET")? {
            Body::Length(len) if len == buf.len() as u64 => {
                lease.read_body(buf, &deadline)?;
                if head.keep_alive() {
                    lease.keep();
                }
                Ok(())
            }
            other => Err(format!("GET {key} {range}: {other:?} body")),
        }
    }

    /// PUTs `data` as object `index`, first made unlike anything
    /// written before.
    fn put_new(&self, index: u64, data: &mut [u8]) -> Result<(), String> {
        make_unique(data, self.stamps.fetch_add(1, Ordering::Relaxed));
        self.put(index, data)
    }

    fn put(&self, index: u64, data: &[u8]) -> Result<(), String> {
        let key = self.key(index);
        let deadline = Deadline::new(TIMEOUT, TIMEOUT);
        let (mut lease, head) = self.exchange("PUT", &key, None, data, &deadline)?;
        let framing = head.body("PUT")?;
        lease.read_to_vec(framing, 64 << 10, &deadline)?;
        if framing != Body::UntilClose && head.keep_alive() {
            lease.keep();
        }
        Ok(())
    }

    /// One operation starting at a position drawn from `random`.
    fn operate(&self, operation: Operation, random: u64, buf: &mut [u8]) -> Result<(), String> {
        let object = self.object_size as usize;
        let first = random % self.objects;
        match operation {
            Operation::ReadPart { len } => {
                let slots = (self.object_size / len).max(1);
                let offset = (random / self.objects % slots) * len;
                self.get(first, offset, &mut buf[..len as usize])
            }
            Operation::UpdateObject => {
                self.get(first, 0, &mut buf[..object])?;
                self.put_new(first, &mut buf[..object])
            }
            Operation::ReadObjects { objects } => (0..objects)
                .try_for_each(|i| self.get((first + i) % self.objects, 0, &mut buf[..object])),
            Operation::WriteObjects { objects } => (0..objects)
                .try_for_each(|i| self.put_new((first + i) % self.objects, &mut buf[..object])),
        }
    }

    /// Runs `workload`'s requests for `runtime` (a copy: over the whole
    /// disk once); returns its figure in the workload's unit.
    pub fn run(&self, workload: &Workload, runtime: Duration) -> Result<f64, String> {
        let plan = plan(workload, self.object_size);
        let budget = if plan.whole_disk {
            self.objects * self.object_size / plan.bytes_per_op
        } else {
            u64::MAX
        };
        let claimed = AtomicU64::new(0);
        let done = AtomicU64::new(0);
        let failed = AtomicBool::new(false);
        let started = Instant::now();
        let errors: Vec<String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..plan.concurrency)
                .map(|worker| {
                    let (claimed, done, failed) = (&claimed, &done, &failed);
                    scope.spawn(move || {
                        let mut random = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(worker) << 32;
                        let mut buf =
                            harness::pattern(self.object_size as usize, u64::from(worker) + 2);
                        let objects_per_op = (plan.bytes_per_op / self.object_size).max(1);
                        while (plan.whole_disk || started.elapsed() < runtime)
                            && !failed.load(Ordering::Relaxed)
                        {
                            let op = claimed.fetch_add(1, Ordering::Relaxed);
                            if op >= budget {
                                break;
                            }
                            random = if plan.whole_disk {
                                // A copy walks the disk: operation n covers
                                // objects n * objects_per_op onwards.
                                op * objects_per_op
                            } else {
                                xorshift(random)
                            };
                            if let Err(why) = self.operate(plan.operation, random, &mut buf) {
                                failed.store(true, Ordering::Relaxed);
                                return Some(why);
                            }
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        None
                    })
                })
                .collect();
            workers
                .into_iter()
                .filter_map(|w| w.join().unwrap_or(Some("a load thread panicked".into())))
                .collect()
        });
        if let Some(why) = errors.into_iter().next() {
            return Err(why);
        }
        let per_second = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        Ok(if plan.iops {
            per_second
        } else {
            per_second * plan.bytes_per_op as f64 / (1 << 20) as f64
        })
    }
}

/// Makes `data` differ from every other object written: Garage stores a
/// block once per content hash, so writing the same bytes again would
/// cost it almost nothing (fio varies its buffers for the same reason).
/// The data is the harness's pseudo-random pattern: incompressible, like
/// the bench's disks, since Garage compresses blocks with zstd.
fn make_unique(data: &mut [u8], stamp: u64) {
    data[..8].copy_from_slice(&stamp.to_le_bytes());
}

/// One step of xorshift64: the random offsets of the direct loads.
pub(crate) fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::FioJob;

    fn fio(rw: &'static str, block_size: u64, iodepth: u32, connections: u32) -> Workload {
        Workload::Fio(FioJob {
            rw,
            block_size,
            iodepth,
            connections,
            fsync: 0,
        })
    }

    #[test]
    fn each_workload_becomes_the_plugins_requests() {
        let object = 64 << 10;
        let small_read = plan(&fio("randread", 4096, 16, 4), object);
        assert_eq!(small_read.operation, Operation::ReadPart { len: 4096 });
        assert_eq!((small_read.concurrency, small_read.iops), (64, true));
        let small_write = plan(&fio("randwrite", 4096, 16, 1), object);
        assert_eq!(small_write.operation, Operation::UpdateObject);
        assert_eq!(small_write.concurrency, 16);
        let large_read = plan(&fio("read", 1 << 20, 4, 1), object);
        assert_eq!(large_read.operation, Operation::ReadObjects { objects: 16 });
        assert_eq!((large_read.concurrency, large_read.iops), (4, false));
        let large_write = plan(&fio("write", 1 << 20, 4, 4), object);
        assert_eq!(
            large_write.operation,
            Operation::WriteObjects { objects: 16 }
        );
        assert_eq!(large_write.concurrency, 16);
        let copy_in = plan(&Workload::CopyIn("f".into()), object);
        assert_eq!(copy_in.operation, Operation::WriteObjects { objects: 4 });
        assert_eq!(copy_in.concurrency, 64);
        assert_eq!(copy_in.bytes_per_op, 256 << 10);
    }
}
