//! `http-disk-server(1)`: NAME, SYNOPSIS, DESCRIPTION and OPTIONS rendered
//! by clap_mangen from the server's own clap definition (so every flag the
//! binary takes is on the page, with its help text), then the behaviour a
//! flag table cannot show: output, signals, exit status.

use clap::CommandFactory;
use http_disk_server::cli::Args;
use plugin_glue::roff::{bold, Page};

use crate::ManPage;

pub fn page() -> ManPage {
    let mut text = Vec::new();
    clap_mangen::Man::new(Args::command())
        .section("1")
        .manual("http-nbd-transfer")
        .source(concat!("http-nbd-transfer ", env!("CARGO_PKG_VERSION")))
        .render(&mut text)
        .expect("rendering into a Vec cannot fail");
    let mut text = String::from_utf8(text).expect("clap_mangen writes UTF-8");
    text.push_str(&behaviour());
    ManPage {
        name: "http-disk-server".into(),
        section: "1",
        text,
    }
}

fn behaviour() -> String {
    let mut page = Page::continuation();
    page.section("OUTPUT");
    page.paragraph(
        "\"Server ready!\" on standard output, on its own line and flushed, \
         once the server listens (XCP-ng's storage manager waits for it). \
         Logs go to standard error, one line each, prefixed with the base \
         name of the resolved disk path in brackets (e.g. [drbd1000]).",
    );
    page.section("SIGNALS");
    page.tagged(
        &format!("{}, {}", bold("SIGTERM"), bold("SIGINT")),
        "Stop accepting, finish the requests in flight (at most 10 s), \
         fdatasync the disk, exit 0.",
    );
    page.tagged(
        &bold("SIGHUP"),
        "Read --allow-file, --deny-file, --auth-file and the TLS \
         certificate and key again, without dropping any client; each \
         connection's next request is judged by the new policy. A bad or \
         unreadable file changes nothing and is logged naming file:line.",
    );
    page.section("EXIT STATUS");
    page.paragraph(
        "0 after SIGTERM or SIGINT. 1 on a fatal error at start (the disk is \
         not a disk or regular file, a policy or TLS file is bad, the \
         address cannot be bound); the message names which and why. 2 on a \
         usage error.",
    );
    page.see_also(&[
        "nbdkit-multihttp-plugin(1)",
        "nbd-http-server(8)",
        "drbdsetup(8)",
    ]);
    page.finish()
}
