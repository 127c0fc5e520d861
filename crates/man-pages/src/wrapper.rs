//! `nbd-http-server(8)`, the wrapper XCP-ng's storage manager runs. The
//! wrapper is a shell script, so its flags are listed here once, and the
//! test `flags_are_the_ones_the_script_parses` holds this table equal to
//! the script's `case` arms, its --help and its HND_* variables.

use plugin_glue::keys::EnvVar;
use plugin_glue::roff::{bold, italic, Page};

use crate::ManPage;

/// One command-line flag of the wrapper.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub long: &'static str,
    pub short: Option<&'static str>,
    /// The value's placeholder, for flags that take one.
    pub value: Option<&'static str>,
    pub text: &'static str,
}

pub static FLAGS: &[Flag] = &[
    Flag {
        long: "--socket-path",
        short: None,
        value: Some("PATH"),
        text: "(required) Unix socket nbdkit listens on; removed when the \
               wrapper stops.",
    },
    Flag {
        long: "--nbd-name",
        short: None,
        value: Some("NAME"),
        text: "(required) Export name: letters, digits, '.', '_' or '-'. The \
               pidfile is /var/run/nbd-NAME.pid.",
    },
    Flag {
        long: "--urls",
        short: None,
        value: Some("URL[,URL...]"),
        text: "Comma-separated http-disk-server URLs, served by the multihttp \
               plugin (required unless --plugin is given). No credentials in \
               URLs: use user=NAME password=+FILE.",
    },
    Flag {
        long: "--device-size",
        short: None,
        value: Some("BYTES"),
        text: "Size to announce even if no server answers yet (multihttp \
               only).",
    },
    Flag {
        long: "--plugin",
        short: None,
        value: Some("PLUGIN"),
        text: "Serve this nbdkit plugin instead of multihttp (sharded, s3, \
               or any plugin nbdkit finds by name). Its KEY=VALUE parameters \
               follow as plain arguments, multihttp's too; secrets only as \
               +FILE or -FD, never literally, since every user sees command \
               lines.",
    },
    Flag {
        long: "--nbd-timeout",
        short: None,
        value: Some("SECONDS"),
        text: "Seconds without a reply before the kernel resends a request on \
               a new connection (default 10, or $HND_NBD_TIMEOUT). Requests in \
               flight when nbdkit dies or is upgraded wait this long. A \
               single request slower than this would be resent again and \
               again: raise it for slow links.",
    },
    Flag {
        long: "--verbose",
        short: Some("-v"),
        value: None,
        text: "Verbose nbdkit and wrapper logs.",
    },
    Flag {
        long: "--help",
        short: Some("-h"),
        value: None,
        text: "Print the usage and exit 0.",
    },
];

/// The overrides the script reads (tests and unusual hosts; SM sets none).
pub static ENVIRONMENT: &[EnvVar] = &[
    EnvVar {
        name: "HND_PLUGIN_DIR",
        text: "Look for nbdkit-NAME-plugin.so or libNAME.so there before \
               asking nbdkit for NAME (its plugindir).",
    },
    EnvVar {
        name: "HND_RUN_DIR",
        text: "Pidfile directory (default /var/run).",
    },
    EnvVar {
        name: "HND_DEV_DIR",
        text: "Where the nbdX device nodes are (default /dev).",
    },
    EnvVar {
        name: "HND_SYSFS_BLOCK",
        text: "The sysfs block directory (default /sys/block).",
    },
    EnvVar {
        name: "HND_LOCK_FILE",
        text: "Lock taken while choosing a device (default \
               /run/lock/nbd-http-server.lock).",
    },
    EnvVar {
        name: "HND_READY_TIMEOUT",
        text: "Seconds nbdkit gets to answer a handshake (default 8: SM gives \
               the whole start-up 10 s).",
    },
    EnvVar {
        name: "HND_NBD_TIMEOUT",
        text: "Default of --nbd-timeout (10).",
    },
    EnvVar {
        name: "HND_ATTACH",
        text: "netlink (default: nbd-netlink attaches, and the device waits \
               for a restarted nbdkit) or nbd-client (no restarts: nbdkit \
               dying detaches the device and the wrapper exits 1).",
    },
    EnvVar {
        name: "HND_RESTART_WINDOW",
        text: "Seconds the device waits for a new nbdkit, and the wrapper \
               keeps restarting it, before giving up (default 60).",
    },
];

const DESCRIPTION: &[&str] = &[
    "nbd-http-server serves an nbdkit export on the Unix socket PATH and \
     attaches it to the first free /dev/nbdX, so the host gets a block \
     device. By default the export is the multihttp plugin over --urls; \
     --plugin serves any other plugin the same way.",
    "Start-up: nbdkit is started on the socket (tied to the wrapper's life \
     by --exit-with-parent); once the export answers a real NBD handshake, \
     the first free /dev/nbdX in numeric order is chosen under a lock \
     shared by every wrapper of the host and attached, and the attached \
     line is printed.",
    "The device outlives nbdkit: it is attached by nbd-netlink, which tells \
     the kernel to wait for a new connection when one dies. nbdkit dying on \
     its own is logged and nbdkit restarted on the same socket, for up to \
     HND_RESTART_WINDOW seconds; I/O waits meanwhile, and requests in \
     flight are resent by the kernel after --nbd-timeout. Only when nbdkit \
     cannot be brought back within that window does the wrapper detach and \
     exit 1, so that its supervisor (systemd, SM) restarts it.",
    "It is a drop-in for the wrapper XCP-ng's storage manager (SM) runs: \
     same flags, same output line, same pidfile, same stop by SIGTERM to \
     the whole process group.",
];

pub fn page() -> ManPage {
    let mut page = Page::new("nbd-http-server", "8", "System Administration");
    page.section("NAME");
    page.formatted("nbd\\-http\\-server \\- attach an nbdkit export as /dev/nbdX");
    page.section("SYNOPSIS");
    let common = [("--socket-path", false), ("--nbd-name", false)];
    let tail = [("--nbd-timeout", true), ("-v", true)];
    let multihttp = [("--urls", false), ("--device-size", true)];
    let other = [("--plugin", false), ("KEY=VALUE...", true)];
    for form in [multihttp, other] {
        page.formatted(&synopsis(&[&common[..], &form, &tail].concat()));
        page.formatted(".br");
    }
    page.section("DESCRIPTION");
    for paragraph in DESCRIPTION {
        page.paragraph(paragraph);
    }
    page.section("OPTIONS");
    for flag in FLAGS {
        page.tagged(&usage(flag), flag.text);
    }
    page.section("OUTPUT");
    page.paragraph(
        "Once attached, one line on standard output: NBD `/dev/nbdX` is now \
         attached. (SM reads the device from it.) Logs go to standard error.",
    );
    page.section("SIGNALS");
    page.tagged(
        &format!("{}, {}", bold("SIGTERM"), bold("SIGINT")),
        "Detach the device, stop nbdkit, remove the socket and the pidfile, \
         exit 0.",
    );
    page.tagged(
        &bold("SIGHUP"),
        "In-place upgrade: run the wrapper file now on disk in this same \
         process (after checking its syntax), keep the device, and restart \
         nbdkit with the plugin file now on disk. Replace the files, then \
         send SIGHUP.",
    );
    page.section("ENVIRONMENT");
    for var in ENVIRONMENT {
        page.tagged(&bold(var.name), var.text);
    }
    page.section("EXIT STATUS");
    page.paragraph(
        "0 after SIGTERM or SIGINT, 2 on a usage error, 1 when nbdkit or the \
         attach fails, or nbdkit cannot be brought back within \
         HND_RESTART_WINDOW.",
    );
    page.see_also(&[
        "nbdkit-multihttp-plugin(1)",
        "nbdkit-sharded-plugin(1)",
        "nbdkit-s3-plugin(1)",
        "http-disk-server(1)",
        "nbdkit(1)",
        "nbd-client(8)",
    ]);
    ManPage {
        name: "nbd-http-server".into(),
        section: "8",
        text: page.finish(),
    }
}

/// One synopsis form, as (word, optional) pairs: a word starting with
/// `-` is a flag of [`FLAGS`] (with its value), any other a placeholder.
fn synopsis(words: &[(&str, bool)]) -> String {
    let mut line = vec![bold("nbd-http-server")];
    for &(word, optional) in words {
        let word = match FLAGS
            .iter()
            .find(|f| f.long == word || f.short == Some(word))
        {
            Some(flag) => usage_short(flag),
            None => italic(word),
        };
        line.push(if optional { format!("[{word}]") } else { word });
    }
    line.join("\n")
}

/// `\fB--flag\fR \fIVALUE\fR` or, for a flag with a short form, `\fB-v\fR`.
fn usage_short(flag: &Flag) -> String {
    match flag.short {
        Some(short) => bold(short),
        None => usage(flag),
    }
}

/// `\fB--flag\fR \fIVALUE\fR`, with the short form first when there is one.
fn usage(flag: &Flag) -> String {
    let mut usage = match flag.short {
        Some(short) => format!("{}, {}", bold(short), bold(flag.long)),
        None => bold(flag.long),
    };
    if let Some(value) = flag.value {
        usage.push(' ');
        usage.push_str(&italic(value));
    }
    usage
}
