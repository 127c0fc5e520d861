//! The plugin pages, from each plugin's `keys.rs`. A plugin is a cdylib
//! and cannot be a Rust dependency, so its table file is included here as
//! a module of its own (it uses nothing but `plugin_glue::keys`).

use plugin_glue::keys::Plugin;
use plugin_glue::manpage;

use crate::ManPage;

#[path = "../../../plugins/multihttp/src/keys.rs"]
mod multihttp;
#[path = "../../../plugins/s3/src/keys.rs"]
mod s3;
#[path = "../../../plugins/sharded/src/keys.rs"]
mod sharded;

/// Every plugin's key table.
pub static PLUGINS: [&Plugin; 3] = [&multihttp::PLUGIN, &sharded::PLUGIN, &s3::PLUGIN];

pub fn pages() -> Vec<ManPage> {
    PLUGINS
        .iter()
        .map(|plugin| ManPage {
            name: manpage::page_name(plugin),
            section: "1",
            text: manpage::render(plugin),
        })
        .collect()
}
