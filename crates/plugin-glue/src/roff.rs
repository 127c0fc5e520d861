//! A small man(7) writer: the macros our pages use (.TH, .SH, .PP, .TP)
//! and the escaping that keeps arbitrary text from being read as roff
//! requests. Shared by the plugin pages ([`crate::manpage`]) and the
//! wrapper's and the server's pages (`crates/man-pages`).

/// A page being written.
pub struct Page {
    text: String,
}

impl Page {
    /// `.TH`: title (upper-cased), section, and the footer naming the
    /// project version.
    pub fn new(title: &str, section: &str, manual: &str) -> Page {
        let mut page = Page {
            text: String::new(),
        };
        page.line(&format!(
            ".TH {} {section} \"\" \"http-nbd-transfer {}\" \"{manual}\"",
            title.to_uppercase().replace('-', "\\-"),
            env!("CARGO_PKG_VERSION"),
        ));
        page
    }

    /// More sections for a page whose title another renderer wrote
    /// (http-disk-server(1): clap_mangen writes the first part).
    pub fn continuation() -> Page {
        Page {
            text: String::new(),
        }
    }

    /// `.SH`
    pub fn section(&mut self, name: &str) {
        self.line(&format!(".SH {name}"));
    }

    /// `.PP` and a paragraph of plain text.
    pub fn paragraph(&mut self, text: &str) {
        self.line(".PP");
        self.line(&escape(text));
    }

    /// A line of already formatted roff (e.g. from [`bold`]), filled.
    pub fn formatted(&mut self, roff: &str) {
        self.line(roff);
    }

    /// `.TP`: a tag (already formatted) and its paragraph of plain text.
    pub fn tagged(&mut self, tag: &str, text: &str) {
        self.line(".TP");
        self.line(tag);
        self.line(&escape(text));
    }

    /// The SEE ALSO line: `name(section)` entries, names in bold.
    pub fn see_also(&mut self, pages: &[&str]) {
        self.section("SEE ALSO");
        let refs: Vec<String> = pages
            .iter()
            .map(|page| match page.split_once('(') {
                Some((name, section)) => format!("{}({section}", bold(name)),
                None => bold(page),
            })
            .collect();
        self.line(&refs.join(",\n"));
    }

    pub fn finish(self) -> String {
        self.text
    }

    /// One input line: a request, or text to fill.
    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }
}

/// Plain text as roff input: backslashes doubled as `\e`, and a `\&` in
/// front of any line that would start with `.` or `'` (a request).
pub fn escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e");
    escaped
        .lines()
        .map(|line| {
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A literal the reader types (key, flag, command): bold, with `-` as
/// `\-` so it copies as an ASCII hyphen-minus.
pub fn bold(text: &str) -> String {
    format!("\\fB{}\\fR", literal(text))
}

/// A placeholder (`SIZE`, `PATH`): italic.
pub fn italic(text: &str) -> String {
    format!("\\fI{}\\fR", literal(text))
}

fn literal(text: &str) -> String {
    escape(text).replace('-', "\\-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cannot_become_requests() {
        assert_eq!(escape(".SH x\n'br\nok \\n"), "\\&.SH x\n\\&'br\nok \\en");
        assert_eq!(bold("pool-size="), "\\fBpool\\-size=\\fR");
        assert_eq!(italic("+FILE"), "\\fI+FILE\\fR");
    }

    #[test]
    fn a_page() {
        let mut page = Page::new("nbd-http-server", "8", "System Administration");
        page.section("NAME");
        page.formatted("nbd\\-http\\-server \\- attach");
        page.tagged(&bold("-v"), "verbose");
        page.see_also(&["nbdkit(1)", "plain"]);
        let text = page.finish();
        assert!(text.starts_with(".TH NBD\\-HTTP\\-SERVER 8 \"\" \"http-nbd-transfer "));
        assert!(text.contains(".TP\n\\fB\\-v\\fR\nverbose\n"), "{text}");
        assert!(text.ends_with(".SH SEE ALSO\n\\fBnbdkit\\fR(1),\n\\fBplain\\fR\n"));
    }
}
