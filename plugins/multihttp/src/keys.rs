//! The plugin's keys, defined once: `nbdkit multihttp --help`, the
//! unknown-key error, `--dump-plugin`'s key list and the man page
//! `nbdkit-multihttp-plugin(1)` are all rendered from this table.
//!
//! Only `plugin_glue::keys` may be used here: the man page generator
//! (`crates/man-pages`) includes this file as a module of its own.

use plugin_glue::keys::{Key, Plugin};

pub static PLUGIN: Plugin = Plugin {
    name: "multihttp",
    summary: "one disk behind several http-disk-server URLs, with failover",
    magic_key: Some("urls"),
    description: &[
        "The multihttp plugin serves one shared disk that several \
         http-disk-server(1) processes serve over HTTP (only the one whose \
         host holds the disk, e.g. the DRBD Primary, answers at a time). It \
         finds the server that holds the disk and sends every NBD request to \
         it, failing over to another URL when that server stops answering. \
         An NBD client sees an error only when no listed server could serve \
         the request for failover-window.",
        "It also talks to the old Python server, and writes go through to \
         the server's disk before they are acknowledged unless \
         writeback=true is given. nbd-http-server(8) attaches it as a \
         /dev/nbdX.",
        "Example: nbdkit multihttp urls=http://a:8076,http://b:8076 device-size=4M",
    ],
    keys: &[
        Key {
            required: true,
            ..Key::new(
                "urls",
                "URL,URL,...",
                "http-disk-server URLs of one shared disk.",
                "Comma-separated, whitespace ignored; bare URLs work (magic key) \
                 and repeated urls= keys add to the list.",
            )
        },
        Key::new(
            "device-size",
            "SIZE",
            "Expected disk size (nbdkit size syntax: 4194304, 4M).",
            "Servers of another size are never used. When given, connections \
             open even if no server answers yet. Default: the size of the \
             first server that answers.",
        ),
        Key::new("user", "USER", "HTTP Basic auth user name.", ""),
        Key {
            secret: true,
            ..Key::new(
                "password",
                "+FILE",
                "HTTP Basic auth password.",
                "As in nbdkit: +FILE (first line of FILE), -FD (inherited descriptor) or - \
                 (prompt). A literal password=PASSWORD works but shows in ps \
                 and in nbdkit -v: never in production. +FILE is read again \
                 when the file is rewritten or a server answers 401 (rotation, \
                 no restart).",
            )
        },
        Key::new(
            "connect-timeout",
            "TIME",
            "TCP connect and HEAD probe timeout (default 2s).",
            "All URLs are probed in parallel: start-up and each failover cost \
             at most one connect-timeout.",
        ),
        Key::new(
            "io-timeout",
            "TIME",
            "How long a request may take, plus 1 s per MiB it carries, before \
             its server is considered dead and the request fails over \
             (default 30s).",
            "",
        ),
        Key::new(
            "stall-timeout",
            "TIME",
            "A request without reply for this long (plus 1 s per 64 MiB it \
             carries) makes the other servers be probed.",
            "If one can serve the disk, the request and every other one \
             waiting moves there (default 500ms). A server that is the only \
             one able to serve is waited for (io-timeout, failover-window).",
        ),
        Key::new(
            "failover-window",
            "TIME",
            "How long a request keeps trying the servers before it fails with \
             EIO (default 60s).",
            "",
        ),
        Key::new(
            "pool-size",
            "N",
            "Connections open to one server at most, kept alive between \
             requests.",
            "Default: 16 per NBD client connection, at most 64.",
        ),
        Key::new(
            "writeback",
            "true",
            "Acknowledge writes, trims and zeroes once the server has them, \
             durable only at the next flush or FUA write.",
            "Faster; for clients that flush: file systems, qemu, nbdcopy. \
             Default false: every write is durable on the server before it is \
             acknowledged, as O_DIRECT clients that never flush (XCP-ng's HA \
             statefile, the redo log) need.",
        ),
        Key::new(
            "journal-size",
            "SIZE",
            "With writeback=true: how much of the writes, trims and zeroes \
             acknowledged since the last flush is kept, to replay on the next \
             server after a failover.",
            "The flush then still succeeds (default 64M; 0: keep none). A failover after more than \
             this went unflushed makes the next flush fail with EIO.",
        ),
        Key::new(
            "supersede",
            "true",
            "One NBD client at a time.",
            "The first write, trim, zero or flush of a newer connection ends \
             the older connections' requests still waiting for a server (EIO; \
             those on the wire are abandoned, and a server drops a write whose \
             connection closed), and their later requests fail. For the \
             kernel's reconnect after its timeout (nbd-http-server sets it): a \
             request it gave up on and resent must not land after newer \
             writes. Turns multi-conn off. Default false.",
        ),
        Key::new(
            "status-file",
            "PATH",
            "Keep PATH (key=value lines) up to date with the server in use, \
             the failover count and each URL's last error and last success.",
            "Replaced atomically on every change. Default: none.",
        ),
        Key::new(
            "cafile",
            "PATH",
            "PEM bundle of the CA certificates trusted for https:// URLs.",
            "Default: the system bundle, /etc/ssl/certs/ca-certificates.crt \
             or /etc/pki/tls/certs/ca-bundle.crt. The server's certificate \
             must also name the URL's host (DNS name or IP address). http:// \
             and https:// URLs may mix. Read again when the file is rewritten \
             or a certificate does not verify (CA rotation).",
        ),
        Key::new(
            "tls-verify",
            "false",
            "DANGEROUS: check neither certificates nor names of https:// \
             servers.",
            "Still encrypted, but anyone on the path can pose as a server. \
             Logged as a warning.",
        ),
    ],
    environment: &[],
    environment_note: "",
    see_also: &[
        "nbdkit(1)",
        "nbdkit-plugin(3)",
        "http-disk-server(1)",
        "nbd-http-server(8)",
        "nbdkit-sharded-plugin(1)",
        "nbdkit-s3-plugin(1)",
    ],
};
