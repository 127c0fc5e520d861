//! The text of `nbdkit NAME --help` (nbdkit's `config_help`), rendered
//! from the plugin's key table: `name=VALUE` in a column, the key's whole
//! text wrapped beside it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use lock_ext::LockIgnoringPoison;

use crate::keys::Plugin;

/// Lines are wrapped to this width (a terminal's 80, with a margin).
const WIDTH: usize = 78;

/// The help text, as nbdkit's `config_help` wants it: `&'static str`.
/// Rendered once per plugin and kept (nbdkit reads it at load time).
pub fn config_help(plugin: &'static Plugin) -> &'static str {
    static RENDERED: OnceLock<Mutex<HashMap<&'static str, &'static str>>> = OnceLock::new();
    let mut rendered = RENDERED
        .get_or_init(Default::default)
        .lock_ignoring_poison();
    rendered
        .entry(plugin.name)
        .or_insert_with(|| Box::leak(render(plugin).into_boxed_str()))
}

/// Keys, then the environment variables and their note, if any. No
/// trailing newline (nbdkit adds one).
pub fn render(plugin: &Plugin) -> String {
    let usages: Vec<String> = plugin.keys.iter().map(|k| k.usage()).collect();
    let mut out = String::new();
    let key_column = column(usages.iter().map(String::len));
    for (key, usage) in plugin.keys.iter().zip(&usages) {
        entry(&mut out, usage, &key.text(), key_column);
    }
    if !plugin.environment.is_empty() {
        out.push_str("\nEnvironment:\n");
        let column = column(plugin.environment.iter().map(|v| v.name.len()));
        for var in plugin.environment {
            entry(&mut out, var.name, var.text, column);
        }
    }
    if !plugin.environment_note.is_empty() {
        for line in wrap(plugin.environment_note, WIDTH) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// Where the texts start: two spaces after the longest label.
fn column(labels: impl Iterator<Item = usize>) -> usize {
    labels.max().unwrap_or(0) + 2
}

/// `label` padded to `column`, then `text` wrapped; continuation lines
/// indented to `column`. A label too long for its column gets the text on
/// the next line.
fn entry(out: &mut String, label: &str, text: &str, column: usize) {
    let lines = wrap(text, WIDTH - column);
    out.push_str(label);
    let mut first = true;
    if label.len() >= column {
        out.push('\n');
        first = false;
    }
    for line in lines {
        if first {
            out.push_str(&" ".repeat(column - label.len()));
            first = false;
        } else {
            out.push_str(&" ".repeat(column));
        }
        out.push_str(&line);
        out.push('\n');
    }
}

/// Greedy word wrap; a word longer than `width` gets a line of its own.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::SAMPLE;

    #[test]
    fn keys_in_a_column_with_wrapped_text() {
        let help = render(&SAMPLE);
        let expected = "\
dir=DIR         (required) Directory of the disk. Created on first use.
size=SIZE       Disk size (nbdkit size syntax: 1G, 512M).
password=+FILE  A password, as in nbdkit: +FILE, -FD or -. A back\\slash stays
                one.

Environment:
SAMPLE_DIR  Default of dir=.
Removed from the environment once read.";
        assert_eq!(help, expected);
        for line in help.lines() {
            assert!(line.len() <= WIDTH, "{line:?}");
        }
        assert_eq!(config_help(&SAMPLE), expected);
        assert!(std::ptr::eq(config_help(&SAMPLE), config_help(&SAMPLE)));
    }

    #[test]
    fn wrapping() {
        assert_eq!(wrap("a bb  ccc\n dddd", 6), ["a bb", "ccc", "dddd"]);
        assert_eq!(wrap("averylongword x", 4), ["averylongword", "x"]);
        assert!(wrap("  ", 10).is_empty());
    }
}
