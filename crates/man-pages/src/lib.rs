//! The project's man pages, each rendered from the definition the program
//! itself uses, so a page cannot list a key or flag the program does not
//! take (or miss one it does):
//! - `nbdkit-{multihttp,sharded,s3}-plugin(1)` from the plugins' key tables
//!   ([`plugins`]), the same tables that give `nbdkit NAME --help` and the
//!   unknown-key error;
//! - `http-disk-server(1)` from the server's clap definition ([`server`]);
//! - `nbd-http-server(8)` from the wrapper's flag table ([`wrapper`]), which
//!   a test holds equal to the flags the script parses.
//!
//! `http-nbd-transfer-man-pages DIR` (src/main.rs) writes them as
//! `DIR/man1/...` and `DIR/man8/...`; `scripts/install` runs it.

pub mod plugins;
pub mod server;
pub mod wrapper;

/// One rendered page.
#[derive(Debug, Clone)]
pub struct ManPage {
    /// `nbdkit-multihttp-plugin`, as given to man(1).
    pub name: String,
    /// "1" or "8".
    pub section: &'static str,
    /// man(7) roff.
    pub text: String,
}

impl ManPage {
    /// Where the page goes under a man directory: `man1/NAME.1`.
    pub fn relative_path(&self) -> String {
        format!("man{0}/{1}.{0}", self.section, self.name)
    }
}

/// Every page the project installs.
pub fn all() -> Vec<ManPage> {
    let mut pages = plugins::pages();
    pages.push(server::page());
    pages.push(wrapper::page());
    pages
}
