//! The pages list every key and flag the programs take, nothing else, and
//! are clean man(7) for groff.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use clap::CommandFactory;
use man_pages::{plugins::PLUGINS, wrapper, ManPage};

fn page(name: &str) -> ManPage {
    man_pages::all()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no page {name}"))
}

/// A literal as the pages write it: `-` as `\-`.
fn roff(text: &str) -> String {
    text.replace('-', "\\-")
}

#[test]
fn every_plugin_key_is_a_parameter_of_its_page() {
    for plugin in PLUGINS {
        let page = page(&format!("nbdkit-{}-plugin", plugin.name));
        let parameters = section(&page.text, "PARAMETERS");
        for key in plugin.keys {
            let tag = format!(".TP\n\\fB{}=\\fR", roff(key.name));
            assert!(
                parameters.contains(&tag),
                "{}: key {} missing",
                page.name,
                key.name
            );
        }
        assert_eq!(
            parameters.matches(".TP\n").count(),
            plugin.keys.len(),
            "{}: a parameter that is not a key",
            page.name
        );
    }
}

#[test]
fn every_server_flag_is_an_option_of_its_page() {
    let page = page("http-disk-server");
    let options = section(&page.text, "OPTIONS");
    let command = http_disk_server::cli::Args::command();
    let mut flags = 0;
    for arg in command.get_arguments() {
        let long = arg.get_long().expect("every server flag has a long form");
        flags += 1;
        assert!(
            options.contains(&format!("\\fB\\-\\-{}\\fR", roff(long))),
            "--{long} missing from http-disk-server(1)"
        );
    }
    assert!(
        flags > 15,
        "only {flags} flags found: is the clap definition read?"
    );
    for part in [
        "--disk",
        "--allow-file",
        "--tls-cert",
        "--max-connections-per-peer",
    ] {
        assert!(options.contains(&roff(part)), "{part}");
    }
}

/// The wrapper's table against the script itself: the flags its option
/// loop accepts, the flags its --help shows, the HND_* variables its
/// header documents.
#[test]
fn wrapper_flags_are_the_ones_the_script_parses() {
    let script_path = workspace().join("scripts/nbd-http-server");
    let script = std::fs::read_to_string(&script_path).unwrap();
    let parsed = parsed_flags(&script);
    let table: BTreeSet<String> = wrapper::FLAGS
        .iter()
        .flat_map(|f| f.short.into_iter().chain([f.long]))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        parsed, table,
        "the script's case arms and the man page's flags differ"
    );
    assert!(parsed.len() >= 10, "parsed only {parsed:?}");

    let help = Command::new(&script_path).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in &table {
        assert!(
            help.contains(flag.as_str()),
            "{flag} missing from --help:\n{help}"
        );
    }

    let documented: BTreeSet<&str> = script
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("#   HND_"))
        .map(|l| &l[..l.find(' ').unwrap_or(l.len())])
        .collect();
    let table: BTreeSet<&str> = wrapper::ENVIRONMENT
        .iter()
        .map(|v| v.name.strip_prefix("HND_").unwrap())
        .collect();
    assert_eq!(
        documented, table,
        "the script's HND_* variables and the man page's differ"
    );

    let page = page("nbd-http-server");
    for flag in wrapper::FLAGS {
        assert!(
            page.text.contains(&format!("\\fB{}\\fR", roff(flag.long))),
            "{}",
            flag.long
        );
    }
    for var in wrapper::ENVIRONMENT {
        assert!(
            page.text
                .contains(&format!(".TP\n\\fB{}\\fR", roff(var.name))),
            "{}",
            var.name
        );
    }
}

/// `groff -man -ww -z`: every warning is a failure (a stray request, an
/// unknown macro, a bad escape).
#[test]
fn pages_are_clean_for_groff() {
    let dir = tempfile::tempdir().unwrap();
    for page in man_pages::all() {
        let path = dir.path().join(page.relative_path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &page.text).unwrap();
        let out = Command::new("groff")
            .args(["-man", "-ww", "-z"])
            .arg(&path)
            .output()
            .expect("groff (package groff-base) runs");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.is_empty(),
            "{}: {warnings}",
            page.name
        );
        assert!(
            page.text.starts_with(".TH ") || page.text.contains("\n.TH "),
            "{}",
            page.name
        );
    }
}

#[test]
fn a_bad_page_is_caught_by_the_groff_check() {
    // The check above can fail: a request groff does not know warns.
    let out = Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b".TH X 1\n.SH NAME\n.NOTAMACRO\nx\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        !out.stderr.is_empty(),
        "groff did not warn about an unknown macro"
    );
}

/// The flags of the script's option loop (`while (($#)); do case $1 in`):
/// every `-x | --xyz)` arm, without the `--flag=*` pattern arms.
fn parsed_flags(script: &str) -> BTreeSet<String> {
    let start = script
        .find("while (($#)); do\n    case $1 in\n")
        .expect("the option loop");
    let body = &script[start..];
    let body = &body[..body.find("\n    esac\n").expect("the loop's esac")];
    body.lines()
        .filter_map(|l| l.strip_prefix("    -"))
        .filter_map(|l| l.split_once(')').map(|(pattern, _)| format!("-{pattern}")))
        .flat_map(|pattern| {
            pattern
                .split('|')
                .map(|p| p.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|p| !p.contains('*'))
        .collect()
}

/// The text from `.SH NAME` to the next `.SH`.
fn section<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text
        .find(&format!(".SH {name}\n"))
        .unwrap_or_else(|| panic!("no {name}"));
    let rest = &text[start + 1..];
    &rest[..rest.find("\n.SH ").map_or(rest.len(), |end| end + 1)]
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}
