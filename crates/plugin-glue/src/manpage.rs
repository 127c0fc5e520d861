//! A plugin's man page, `nbdkit-NAME-plugin(1)`, rendered from its key
//! table in man(7) roff: NAME, SYNOPSIS, DESCRIPTION, PARAMETERS (one
//! `.TP` per key, the same text as `--help`), ENVIRONMENT, SEE ALSO.

use crate::keys::{Key, Plugin};
use crate::roff::{bold, italic, Page};

/// The page's name, as given to man(1): `nbdkit-NAME-plugin` (section 1).
pub fn page_name(plugin: &Plugin) -> String {
    format!("nbdkit-{}-plugin", plugin.name)
}

pub fn render(plugin: &Plugin) -> String {
    let title = page_name(plugin);
    let mut page = Page::new(&title, "1", "nbdkit plugins");
    page.section("NAME");
    page.formatted(&format!(
        "{} \\- {}",
        title.replace('-', "\\-"),
        crate::roff::escape(plugin.summary)
    ));
    page.section("SYNOPSIS");
    page.formatted(&synopsis(plugin));
    page.section("DESCRIPTION");
    for paragraph in plugin.description {
        page.paragraph(paragraph);
    }
    page.section("PARAMETERS");
    for key in plugin.keys {
        page.tagged(&usage(key, false), &key.text());
    }
    if !plugin.environment.is_empty() || !plugin.environment_note.is_empty() {
        page.section("ENVIRONMENT");
        for var in plugin.environment {
            page.tagged(&bold(var.name), var.text);
        }
        if !plugin.environment_note.is_empty() {
            page.paragraph(plugin.environment_note);
        }
    }
    page.see_also(plugin.see_also);
    page.finish()
}

/// `nbdkit NAME` and every key: required ones bare, the others in
/// brackets, the magic key's `name=` optional.
fn synopsis(plugin: &Plugin) -> String {
    let mut words = vec![format!("{} {}", bold("nbdkit"), bold(plugin.name))];
    for key in plugin.keys {
        let magic = plugin.magic_key == Some(key.name);
        let word = usage(key, magic);
        words.push(if key.required {
            word
        } else {
            format!("[{word}]")
        });
    }
    words.join("\n")
}

/// `\fBname=\fIVALUE\fR`, or `[\fBname=\fR]\fIVALUE\fR` for the magic key.
fn usage(key: &Key, magic: bool) -> String {
    let name = bold(&format!("{}=", key.name));
    if magic {
        format!("[{name}]{}", italic(key.value))
    } else {
        format!("{name}{}", italic(key.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::SAMPLE;

    #[test]
    fn every_part_of_the_page() {
        let page = render(&SAMPLE);
        assert_eq!(page_name(&SAMPLE), "nbdkit-sample-plugin");
        for part in [
            ".TH NBDKIT\\-SAMPLE\\-PLUGIN 1 ",
            ".SH NAME\nnbdkit\\-sample\\-plugin \\- a plugin for tests\n",
            ".SH SYNOPSIS\n\\fBnbdkit\\fR \\fBsample\\fR\n[\\fBdir=\\fR]\\fIDIR\\fR\n[\\fBsize=\\fR\\fISIZE\\fR]\n",
            ".PP\n\\&.not a request\n",
            ".TP\n\\fBdir=\\fR\\fIDIR\\fR\n(required) Directory of the disk. Created on first use.\n",
            ".TP\n\\fBpassword=\\fR\\fI+FILE\\fR\nA password, as in nbdkit: +FILE, -FD or -. A back\\eslash stays one.\n",
            ".SH ENVIRONMENT\n.TP\n\\fBSAMPLE_DIR\\fR\nDefault of dir=.\n.PP\nRemoved",
            ".SH SEE ALSO\n\\fBnbdkit\\fR(1),\n\\fBnbdkit\\-plugin\\fR(3)\n",
        ] {
            assert!(page.contains(part), "{part:?} not in:\n{page}");
        }
    }
}
