//! The plugin's keys, defined once: `nbdkit s3 --help`, the unknown-key
//! error, which keys are secrets, and the man page `nbdkit-s3-plugin(1)`
//! are all rendered from this table.
//!
//! Only `plugin_glue::keys` and chunk-store's lease and cache keys may be used here: the man page generator
//! (`crates/man-pages`) includes this file as a module of its own.

use chunk_store::lease::keys::{FORCE, LEASE_TIME};
use chunk_store::writeback::keys::{CACHE_DIR, CACHE_SIZE};
use plugin_glue::keys::{EnvVar, Key, Plugin};

pub static PLUGIN: Plugin = Plugin {
    name: "s3",
    summary: "a disk as one object per chunk in an S3-compatible store",
    magic_key: None,
    description: &[
        "The s3 plugin stores a disk as one object per chunk in any \
         S3-compatible store (Ceph RGW, Garage, MinIO, AWS S3): how a volume \
         outgrows one machine, with the object store doing the replication. \
         It shares its core with nbdkit-sharded-plugin(1): missing objects \
         read as zeros, whole-chunk trims and zeroes delete objects, and \
         multi-conn is advertised.",
        "Requests are signed with AWS SigV4. Credentials never have to be on \
         the command line: they come from the environment, a shared \
         credentials file, or a file or descriptor (secret-key=+FILE), and \
         are never logged. A read-only key gives a read-only disk (nbdkit \
         -r).",
        "Example: nbdkit s3 endpoint=https://s3.example.net bucket=disks \
         prefix=vol1/ size=100G creates the disk; without size= it opens it \
         again.",
    ],
    keys: &[
        Key {
            required: true,
            ..Key::new("endpoint", "URL", "S3 endpoint, http:// or https://.", "")
        },
        Key::new(
            "cafile",
            "PATH",
            "PEM bundle of the CA certificates trusted for an https:// endpoint.",
            "Default: Mozilla's list built into the plugin, not the system's \
             bundle.",
        ),
        Key {
            required: true,
            ..Key::new("bucket", "NAME", "Bucket holding the disk.", "")
        },
        Key::new(
            "prefix",
            "PREFIX",
            "Key prefix of the disk's objects (default: none; e.g. disks/vol1/).",
            "One disk per prefix.",
        ),
        Key::new(
            "region",
            "REGION",
            "Signing region (default us-east-1).",
            "",
        ),
        Key::new(
            "addressing",
            "STYLE",
            "path (default: endpoint/bucket/key) or virtual (bucket.endpoint/key).",
            "",
        ),
        Key::new(
            "size",
            "SIZE",
            "Disk size; needed to create the disk.",
            "Then the stored size is the truth (a different size= is refused).",
        ),
        Key::new(
            "chunk-size",
            "SIZE",
            "Object size when creating (power of two, 4K to 1G; default 4M).",
            "A different value later is refused.",
        ),
        Key::new(
            "grow",
            "BOOL",
            "Allow size= larger than the stored size (default false).",
            "",
        ),
        Key::new(
            "access-key",
            "ID",
            "Access key id (default: $AWS_ACCESS_KEY_ID).",
            "",
        ),
        Key {
            secret: true,
            ..Key::new(
                "secret-key",
                "+FILE",
                "Secret key, as in nbdkit: +FILE, -FD or -.",
                "A literal key shows in ps and in nbdkit -v. A +FILE is read \
                 again when rewritten and when the store refuses a request \
                 (403): rotation without restarting nbdkit. Default: \
                 $AWS_SECRET_ACCESS_KEY.",
            )
        },
        Key {
            secret: true,
            ..Key::new(
                "session-token",
                "+FILE",
                "Session token of temporary credentials.",
                "Same forms and re-reading; also read again on ExpiredToken. \
                 Default: $AWS_SESSION_TOKEN when set.",
            )
        },
        Key::new(
            "credentials-file",
            "PATH",
            "AWS shared credentials file: the key id, secret and token of \
             profile=.",
            "Read again as a whole when the file is rewritten or a request is \
             refused, so a key with a new id can replace the old one. Default: \
             $AWS_SHARED_CREDENTIALS_FILE when no key is given otherwise \
             (~/.aws/credentials is not read unless named).",
        ),
        Key::new(
            "profile",
            "NAME",
            "Profile in credentials-file= (default: $AWS_PROFILE, else default).",
            "",
        ),
        Key::new(
            "pool-size",
            "N",
            "Idle keep-alive connections kept for the next requests.",
            "Default 16, one per nbdkit thread of an NBD connection. It \
             never holds requests back: more run at once on extra \
             connections, closed after their reply. 0: a new connection per \
             request.",
        ),
        Key::new(
            "connect-timeout",
            "TIME",
            "TCP connect timeout (default 5s).",
            "",
        ),
        Key::new(
            "io-timeout",
            "TIME",
            "Deadline of one request, plus 1 s per MiB (default 30s).",
            "",
        ),
        Key::new(
            "retry-window",
            "TIME",
            "How long network errors and 5xx replies are retried, with \
             backoff, before the request fails with EIO (default 30s).",
            "",
        ),
        LEASE_TIME,
        FORCE,
        CACHE_DIR,
        CACHE_SIZE,
    ],
    environment: &[
        EnvVar {
            name: "AWS_ACCESS_KEY_ID",
            text: "Access key id when access-key= is not given.",
        },
        EnvVar {
            name: "AWS_SECRET_ACCESS_KEY",
            text: "Secret key when secret-key= is not given.",
        },
        EnvVar {
            name: "AWS_SESSION_TOKEN",
            text: "Session token when session-token= is not given.",
        },
        EnvVar {
            name: "AWS_SHARED_CREDENTIALS_FILE",
            text: "Shared credentials file when no key is given otherwise.",
        },
        EnvVar {
            name: "AWS_PROFILE",
            text: "Profile in the credentials file when profile= is not given.",
        },
    ],
    environment_note: "The AWS_* variables are removed from the environment \
                       once read (/proc/PID/environ, core dumps, --run).",
    see_also: &[
        "nbdkit(1)",
        "nbdkit-plugin(3)",
        "nbdkit-sharded-plugin(1)",
        "nbdkit-multihttp-plugin(1)",
        "nbd-http-server(8)",
    ],
};
