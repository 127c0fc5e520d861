//! The distribution packages (issue #22), built by `packaging/build` from
//! its vendored tarball, offline:
//! - the RPM: its file list (the old package's three paths, the old
//!   plugin file a link to multihttp), its metadata (name, a version
//!   above XCP-ng's 1.7.0-1, no Epoch, Provides, Requires), scriptlets
//!   that never stop or restart anything, and its plugin loading in this
//!   machine's nbdkit through the old file name;
//! - the .deb: its file list at Debian's paths, no maintainer script
//!   that stops or restarts anything, and an install with `dpkg -i` into
//!   a fresh, clean Debian root (scripts/install-deps caches a minbase
//!   debootstrap and the .debs of nbdkit & co.) where the programs and
//!   plugins work by name, without the source tree; then its purge.
//!
//! Needs root (chroot), rpm, dpkg-dev, debhelper, cpio and the cached
//! root (scripts/install-deps). A cold build takes ~3 minutes per
//! package; an unchanged tree builds nothing again.
//! Run: `cargo test --release -p integration-tests --test packaging`

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::packages;
use harness::{run, run_ok};

const QUICK: Duration = Duration::from_secs(60);
const VERSION: &str = env!("CARGO_PKG_VERSION");
const PLUGINDIR_RPM: &str = "/usr/lib64/nbdkit/plugins";
const PLUGINDIR_DEB: &str = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins";

fn output(program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_ok(cmd, QUICK)
}

fn rpm_query(rpm: &Path, args: &[&str]) -> String {
    let mut all = vec!["-qp"];
    all.extend_from_slice(args);
    all.push(rpm.to_str().expect("utf-8 path"));
    output("rpm", &all)
}

/// Files the package must have besides docs and licenses, as `path` or
/// `path -> link target`; man pages end in `man_suffix` (`.gz` when the
/// build compresses them).
fn expected_files(
    plugindir: &str,
    unitdir: &str,
    legacy_target: &str,
    man_suffix: &str,
) -> BTreeSet<String> {
    let mut files: BTreeSet<String> = [
        "/etc/http-nbd-transfer/volume.env.example".to_owned(),
        "/usr/bin/http-disk-server".to_owned(),
        "/usr/bin/nbd-http-server".to_owned(),
        "/usr/bin/nbd-netlink".to_owned(),
        format!("{plugindir}/nbdkit-multihttp-plugin.so"),
        format!("{plugindir}/nbdkit-sharded-plugin.so"),
        format!("{plugindir}/nbdkit-s3-plugin.so"),
        format!("{plugindir}/nbdkit-multi-http-plugin.so -> nbdkit-multihttp-plugin.so"),
        format!("/usr/lib/http-nbd-transfer/multi-http-plugin.so -> {legacy_target}"),
        format!("{unitdir}/http-disk-server@.service"),
        format!("{unitdir}/nbd-http-server@.service"),
    ]
    .into_iter()
    .collect();
    for page in [
        "man1/nbdkit-multihttp-plugin.1",
        "man1/nbdkit-sharded-plugin.1",
        "man1/nbdkit-s3-plugin.1",
        "man1/http-disk-server.1",
        "man8/nbd-http-server.8",
    ] {
        files.insert(format!("/usr/share/man/{page}{man_suffix}"));
    }
    files
}

/// Paths a package may hold besides the expected files: directories,
/// docs and licenses, RPM's build-id links.
fn is_incidental(path: &str) -> bool {
    path.starts_with("/usr/share/doc/")
        || path.starts_with("/usr/share/licenses/")
        || path.starts_with("/usr/lib/.build-id")
}

fn assert_file_list(what: &str, listed: &BTreeSet<String>, expected: &BTreeSet<String>) {
    let missing: Vec<_> = expected.difference(listed).collect();
    assert!(
        missing.is_empty(),
        "{what} lacks {missing:?}; it has {listed:#?}"
    );
    let extra: Vec<_> = listed
        .difference(expected)
        .filter(|p| !is_incidental(p))
        .collect();
    assert!(extra.is_empty(), "{what} has unexpected files {extra:?}");
}

/// Scriptlets or maintainer scripts must not touch running units: SM's
/// servers and wrappers hold the HA statefile (docs/packaging.md).
fn assert_stops_nothing(what: &str, scripts: &str) {
    for word in ["stop", "restart", "disable", "kill", "deb-systemd-invoke"] {
        assert!(
            !scripts.contains(word),
            "{what}'s scripts contain `{word}`:\n{scripts}"
        );
    }
}

/// No build path in what was compiled (cargo-build remaps them).
fn assert_no_build_paths(root: &Path, files: &[&str]) {
    let build_dir = packages::out_dir().join("build");
    let needle = build_dir.to_string_lossy().into_owned();
    for file in files {
        let path = root.join(file.trim_start_matches('/'));
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{file} contains the build path {needle}: not reproducible"
        );
    }
}

#[test]
fn rpm_replaces_the_old_package_in_place_and_loads_through_the_old_plugin_path() {
    let rpm = packages::rpm();

    // Files, with link targets (FILELINKTOS is empty for non-links).
    let listing = rpm_query(
        &rpm,
        &[
            "--queryformat",
            "[%{FILENAMES}|%{FILELINKTOS}|%{FILEMODES:perms}\n]",
        ],
    );
    let listed: BTreeSet<String> = listing
        .lines()
        .filter(|l| !l.ends_with("|drwxr-xr-x") && !l.contains("/.build-id/"))
        .map(|l| {
            let mut parts = l.split('|');
            let (path, target) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            if target.is_empty() {
                path.to_owned()
            } else {
                format!("{path} -> {target}")
            }
        })
        .collect();
    let expected = expected_files(
        PLUGINDIR_RPM,
        "/usr/lib/systemd/system",
        &format!("{PLUGINDIR_RPM}/nbdkit-multihttp-plugin.so"),
        // Debian's rpm has no brp-compress; a Fedora-style build (XCP-ng's)
        // gzips them, which the spec's `.1*` entries take as well.
        "",
    );
    assert_file_list("the RPM", &listed, &expected);
    // The three paths of XCP-ng's http-nbd-transfer 1.7.0, SM's names.
    for old in [
        "/usr/bin/http-disk-server",
        "/usr/bin/nbd-http-server",
        "/usr/lib64/nbdkit/plugins/nbdkit-multi-http-plugin.so",
    ] {
        assert!(
            listing.lines().any(|l| l.starts_with(&format!("{old}|"))),
            "{old} missing"
        );
    }
    let licenses = rpm_query(&rpm, &["--licensefiles", "-l"]);
    for license in ["COPYING", "LICENSE.dependencies", "vendor-licenses/ring-"] {
        assert!(
            licenses.contains(license),
            "no {license} in %license:\n{licenses}"
        );
    }

    // Same name, no Epoch, a version that sorts above the old one, so
    // `dnf upgrade` replaces it (docs/packaging.md).
    let nevr = rpm_query(
        &rpm,
        &["--queryformat", "%{NAME} %{EPOCH} %{VERSION}-%{RELEASE}"],
    );
    let fields: Vec<&str> = nevr.split(' ').collect();
    assert_eq!(fields[0], "http-nbd-transfer", "{nevr}");
    assert_eq!(fields[1], "(none)", "an Epoch is set: {nevr}");
    assert!(fields[2].starts_with(&format!("{VERSION}-")), "{nevr}");
    let lua = format!("%{{lua: print(rpm.vercmp('{}', '1.7.0-1'))}}", fields[2]);
    assert_eq!(
        output("rpm", &["--eval", &lua]).trim(),
        "1",
        "{} must sort above 1.7.0-1",
        fields[2]
    );

    let provides = rpm_query(&rpm, &["--provides"]);
    for provide in [
        format!("http-nbd-transfer = {}", fields[2]),
        format!("nbdkit-multihttp-plugin = {}", fields[2]),
        "bundled(crate(rustls)) = ".to_owned(),
        "bundled(crate(nbdkit)) = ".to_owned(),
    ] {
        assert!(
            provides.contains(&provide),
            "no `{provide}` in:\n{provides}"
        );
    }
    // The plugins are loaded by path, never linked: no soname provides.
    assert!(!provides.contains(".so"), "{provides}");
    // Same name: an upgrade, nothing to obsolete.
    assert_eq!(rpm_query(&rpm, &["--obsoletes"]).trim(), "");
    let requires = rpm_query(&rpm, &["--requires"]);
    for require in [
        // multihttp's floor, XCP-ng's nbdkit (docs/packaging.md).
        "nbdkit >= 1.8.0",
        "nbd",
        "/usr/bin/nbdinfo",
        "util-linux",
        "kmod",
        "libc.so.6(",
    ] {
        assert!(
            requires.lines().any(|l| l.starts_with(require)),
            "no `{require}` in:\n{requires}"
        );
    }
    assert_stops_nothing("the RPM", &rpm_query(&rpm, &["--scripts"]));

    // Unpacked, the old plugin file is multihttp to this machine's nbdkit.
    let root = tempfile::tempdir().expect("temp dir");
    let mut unpack = Command::new("bash");
    unpack
        .arg("-c")
        .arg("rpm2cpio \"$1\" | cpio -idm --quiet")
        .arg("unpack")
        .arg(&rpm)
        .current_dir(root.path());
    run_ok(unpack, QUICK);
    let old_plugin = root
        .path()
        .join("usr/lib64/nbdkit/plugins/nbdkit-multi-http-plugin.so");
    let dump = output("nbdkit", &["--dump-plugin", old_plugin.to_str().unwrap()]);
    assert!(dump.contains("name=multihttp\n"), "{dump}");
    assert_no_build_paths(
        root.path(),
        &[
            "/usr/bin/http-disk-server",
            "/usr/bin/nbd-netlink",
            "/usr/lib64/nbdkit/plugins/nbdkit-multihttp-plugin.so",
        ],
    );
}

/// Runs a command inside `root` (chroot, a plain environment), returning
/// its output; panics with it when it fails.
fn in_root(root: &Path, script: &str) -> String {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .args(["/bin/sh", "-c", script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C")
        .env("DEBIAN_FRONTEND", "noninteractive");
    let out = run(cmd, Duration::from_secs(300));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "in the clean root, `{script}` failed ({}):\n{text}",
        out.status
    );
    text
}

#[test]
fn deb_installs_into_a_clean_debian_root_where_everything_works_by_name() {
    let deb = packages::deb();
    let deb_path = deb.to_str().expect("utf-8 path");

    // Files at Debian's paths (dh_link makes the legacy link relative).
    let contents = output("dpkg-deb", &["--contents", deb_path]);
    let listed: BTreeSet<String> = contents
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_once(" ./").map(|(_, path)| format!("/{path}")))
        .collect();
    let expected = expected_files(
        PLUGINDIR_DEB,
        "/lib/systemd/system",
        "../x86_64-linux-gnu/nbdkit/plugins/nbdkit-multihttp-plugin.so",
        ".gz",
    );
    assert_file_list("the .deb", &listed, &expected);
    for doc in ["copyright", "LICENSE.dependencies"] {
        assert!(
            listed.contains(&format!("/usr/share/doc/http-nbd-transfer/{doc}")),
            "no {doc}"
        );
    }
    let fields = output(
        "dpkg-deb",
        &["--field", deb_path, "Package", "Version", "Depends"],
    );
    assert!(fields.contains("Package: http-nbd-transfer\n"), "{fields}");
    assert!(fields.contains(&format!("Version: {VERSION}-")), "{fields}");
    // nbdkit 1.12: sharded's and s3's floor (docs/packaging.md).
    for depend in [
        "libc6 (>= ",
        "nbdkit (>= 1.12.0)",
        "libnbd-bin",
        "nbd-client",
    ] {
        assert!(fields.contains(depend), "no {depend} in Depends: {fields}");
    }
    let control = tempfile::tempdir().expect("temp dir");
    output(
        "dpkg-deb",
        &["--control", deb_path, control.path().to_str().unwrap()],
    );
    let mut scripts = String::new();
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        if let Ok(text) = fs::read_to_string(control.path().join(script)) {
            scripts.push_str(&text);
        }
    }
    assert_stops_nothing("the .deb", &scripts);

    // A fresh clean root each time; nbdkit's .debs and ours installed
    // together, offline, by the root's own dpkg.
    let cache = packages::debian_root_cache();
    let root_dir = tempfile::Builder::new()
        .prefix("debian-root-")
        .tempdir_in(packages::out_dir())
        .expect("temp dir for the root");
    let root = root_dir.path();
    let mut unpack = Command::new("tar");
    unpack
        .arg("-C")
        .arg(root)
        .arg("-xf")
        .arg(cache.join("root.tar"));
    run_ok(unpack, Duration::from_secs(120));
    assert!(
        !root.join("usr/bin/nbdkit").exists(),
        "the clean root already has nbdkit"
    );
    let debs = root.join("tmp/debs");
    fs::create_dir_all(&debs).expect("mkdir tmp/debs");
    for entry in fs::read_dir(cache.join("debs")).expect("cached debs") {
        let path = entry.expect("entry").path();
        fs::copy(&path, debs.join(path.file_name().unwrap())).expect("copy a .deb");
    }
    fs::copy(&deb, root.join("tmp/http-nbd-transfer.deb")).expect("copy our .deb");
    in_root(root, "dpkg -i /tmp/debs/*.deb /tmp/http-nbd-transfer.deb");
    let status = in_root(
        root,
        "dpkg-query -W -f '${Status} ${Version}' http-nbd-transfer",
    );
    assert!(status.starts_with("install ok installed"), "{status}");

    // By name, as SM and operators call them, without the source tree.
    let help = in_root(root, "nbdkit multihttp --help");
    assert!(help.contains("urls="), "{help}");
    let old_name = in_root(
        root,
        &format!("nbdkit --dump-plugin {PLUGINDIR_DEB}/nbdkit-multi-http-plugin.so"),
    );
    assert!(old_name.contains("name=multihttp\n"), "{old_name}");
    in_root(root, "nbdkit sharded --help");
    in_root(root, "nbdkit s3 --help");
    let wrapper = in_root(root, "nbd-http-server --help");
    assert!(wrapper.contains("--socket-path"), "{wrapper}");
    let server = in_root(root, "http-disk-server --help");
    assert!(server.contains("--disk"), "{server}");
    in_root(root, "nbd-netlink --help");
    // The plugin's page, found by man's own search of the installed root.
    let page = in_root(root, "man nbdkit-multihttp-plugin | head -5");
    assert!(page.to_lowercase().contains("multihttp"), "{page}");

    // Removal leaves nothing of ours but the example env file (a conffile,
    // purge removes it).
    in_root(root, "dpkg --purge http-nbd-transfer");
    for gone in [
        "usr/bin/nbd-http-server",
        "usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-multihttp-plugin.so",
        "usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-multi-http-plugin.so",
        "etc/http-nbd-transfer/volume.env.example",
    ] {
        assert!(
            !root.join(gone).exists() && root.join(gone).symlink_metadata().is_err(),
            "{gone} left after purge"
        );
    }
}
