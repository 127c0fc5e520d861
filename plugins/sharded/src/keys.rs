//! The plugin's keys, defined once: `nbdkit sharded --help`, the
//! unknown-key error and the man page `nbdkit-sharded-plugin(1)` are all
//! rendered from this table.
//!
//! Only `plugin_glue::keys` and chunk-store's lease keys may be used here: the man page generator
//! (`crates/man-pages`) includes this file as a module of its own.

use chunk_store::lease::keys::{FORCE, LEASE_TIME};
use plugin_glue::keys::{Key, Plugin};

pub static PLUGIN: Plugin = Plugin {
    name: "sharded",
    summary: "a sparse disk as a directory of fixed-size chunk files",
    magic_key: None,
    description: &[
        "The sharded plugin stores a sparse disk as a directory of \
         fixed-size chunk files, for disks larger than one file should be, \
         or that must stay as sparse as their data.",
        "Layout: DIR/chunk-store.meta (size, chunk size, format version; \
         text, written atomically) and DIR/chunks/XXXXXX/YYYYYYYYYYYYYYYY, \
         chunk number Y (hexadecimal) in fan-out directory X = Y / 256. A \
         missing chunk reads as zeros; all-zero writes and whole-chunk \
         zero/trim delete chunks, partial ones punch holes. One writer at a \
         time: DIR/chunk-store.lease names it, and it holds a flock on \
         DIR/chunk-store.lock (see lease-time=). Flush fdatasyncs \
         every chunk written since the last flush and fsyncs every directory \
         whose entries changed; FUA is native. Multi-conn is advertised.",
        "Example: nbdkit sharded dir=/srv/disks/vol1 size=1T creates the \
         disk; nbdkit sharded dir=/srv/disks/vol1 opens it again.",
    ],
    keys: &[
        Key {
            required: true,
            ..Key::new(
                "dir",
                "DIR",
                "Directory holding the disk: metadata file and chunk files.",
                "Created with size= on first use.",
            )
        },
        Key::new(
            "size",
            "SIZE",
            "Disk size (nbdkit size syntax: 1G, 512M...).",
            "Needed to create the disk; afterwards the stored size is the \
             truth and a different size= is refused.",
        ),
        Key::new(
            "chunk-size",
            "SIZE",
            "Chunk size when creating (power of two, 4K to 1G; default 4M).",
            "A different value for an existing disk is refused.",
        ),
        Key::new(
            "grow",
            "BOOL",
            "Allow size= larger than the stored size to grow the disk \
             (default false).",
            "",
        ),
        LEASE_TIME,
        FORCE,
    ],
    environment: &[],
    environment_note: "",
    see_also: &[
        "nbdkit(1)",
        "nbdkit-plugin(3)",
        "nbdkit-s3-plugin(1)",
        "nbdkit-multihttp-plugin(1)",
        "nbd-http-server(8)",
    ],
};
