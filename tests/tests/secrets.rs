//! Secrets (multihttp's `password=`, the HTTP Basic header made from it,
//! s3's `secret-key=`) stay out of what others can read: `ps`
//! (`/proc/PID/cmdline`), nbdkit's output with `-v` in normal operation and
//! in failures, and core dumps of the running plugin (`gcore`, which
//! honours `MADV_DONTDUMP` like the kernel does).
//!
//! Every run uses a fresh random secret, so a match can only come from
//! this run's plugin. Real nbdkit, real http-disk-server with
//! `--auth-file`, real Garage.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::disk_server::auth_file;
use harness::garage::{Garage, REGION};
use harness::{
    artifact, bin_dir, nbdsh, pattern_file, run, run_ok, workspace_root, DiskServer, Nbdkit,
    TempDir,
};

const MIB: usize = 1 << 20;
const USER: &str = "alice";

/// A secret no program prints by chance: 32 random hex digits from the
/// kernel, behind a marker.
fn random_secret() -> String {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("Sekr1t{hex}")
}

/// `text` in base64, by coreutils (what an HTTP Basic header carries).
fn base64(text: &str) -> String {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", "printf '%s' \"$1\" | base64 -w0", "base64", text]);
    run_ok(cmd, Duration::from_secs(10)).trim().to_owned()
}

/// The forms under which multihttp's password could leak: itself, the
/// base64 of `user:password` and the whole Basic header value.
fn password_forms(password: &str) -> Vec<(&'static str, String)> {
    let token = base64(&format!("{USER}:{password}"));
    vec![
        ("the password", password.to_owned()),
        ("base64(user:password)", token.clone()),
        ("the Basic header", format!("Basic {token}")),
    ]
}

/// Panics naming each form of a secret found in `haystack` (bytes of a
/// log, a command line, a core file).
fn assert_absent(what: &str, haystack: &[u8], forms: &[(&str, String)]) {
    let found: Vec<&str> = forms
        .iter()
        .filter(|(_, needle)| contains(haystack, needle.as_bytes()))
        .map(|(name, _)| *name)
        .collect();
    assert!(found.is_empty(), "{what} contains {found:?}");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A file holding `secret` and a newline, as an operator writes it.
fn secret_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("{secret}\n")).expect("write secret file");
    path
}

fn command_line(nbdkit: &Nbdkit) -> Vec<u8> {
    fs::read(format!("/proc/{}/cmdline", nbdkit.proc.pid())).expect("read cmdline")
}

fn output(nbdkit: &Nbdkit) -> Vec<u8> {
    nbdkit.proc.output.snapshot().join("\n").into_bytes()
}

/// A core file of the running `pid` made by gdb's `gcore` (the process
/// goes on afterwards); its bytes.
fn core_dump(pid: i32, dir: &Path) -> Vec<u8> {
    let prefix = dir.join("core");
    let mut cmd = Command::new("gcore");
    cmd.arg("-o").arg(&prefix).arg(pid.to_string());
    run_ok(cmd, Duration::from_secs(120));
    let path = PathBuf::from(format!("{}.{pid}", prefix.display()));
    let core = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let _ = fs::remove_file(&path);
    core
}

/// Reads in a loop and prints whether the reads worked: `read ok` or
/// `read failed: <error>`.
const TRY_READ: &str = "try:\n    h.pread(4096, 0)\n    print('read ok')\n\
                        except nbd.Error as e:\n    print('read failed:', e)\n";

/// 64 writes and 64 reads of 4 KiB, each its own HTTP request: plenty of
/// request buffers that carried the Authorization header.
const TRAFFIC: &str = "for i in range(64):\n    h.pwrite(bytes([i]) * 4096, i * 4096)\n\
                       for i in range(64):\n    assert h.pread(4096, i * 4096) == bytes([i]) * 4096\n\
                       print('traffic ok')\n";

mod multihttp {
    use super::*;

    fn plugin() -> PathBuf {
        artifact("libmultihttp.so")
    }

    /// An http-disk-server requiring `alice` with `password`, and its disk.
    struct AuthServer {
        server: DiskServer,
        dir: TempDir,
    }

    impl AuthServer {
        fn start(password: &str) -> AuthServer {
            let dir = TempDir::new().unwrap();
            let disk = pattern_file(dir.path(), "disk.img", MIB, 7);
            let auth = auth_file(dir.path(), USER, password);
            let auth = auth.display().to_string();
            let server = DiskServer::start(&disk, &["--auth-file", &auth]);
            AuthServer { server, dir }
        }

        /// nbdkit `-v` with the plugin on this server, the password given
        /// as `password=+FILE`.
        fn nbdkit(&self, password: &str, extra: &[&str]) -> Nbdkit {
            let file = secret_file(self.dir.path(), "password", password);
            let password = format!("password=+{}", file.display());
            self.nbdkit_wrapped(&[], &password, extra)
        }

        /// nbdkit `-v` started through `wrapper` with `password_param`.
        fn nbdkit_wrapped(&self, wrapper: &[&str], password_param: &str, extra: &[&str]) -> Nbdkit {
            let urls = format!("urls={}", self.server.url());
            let user = format!("user={USER}");
            let mut params = vec![urls.as_str(), &user, password_param, "device-size=1M"];
            params.extend_from_slice(extra);
            Nbdkit::try_start_wrapped(wrapper, &["-v"], &plugin(), &params)
                .unwrap_or_else(|p| panic!("nbdkit did not start: {}", p.output_when_closed()))
        }
    }

    #[test]
    fn a_password_from_an_inherited_descriptor_authenticates_and_stays_off_the_command_line() {
        let password = random_secret();
        let forms = password_forms(&password);
        let auth = AuthServer::start(&password);
        let file = secret_file(auth.dir.path(), "password-for-fd", &password);
        let file = file.display().to_string();
        // bash opens the file as fd 3 and execs nbdkit in its place.
        let wrapper = ["bash", "-c", "exec \"$@\" 3<\"$0\"", &file];
        let nbdkit = auth.nbdkit_wrapped(&wrapper, "password=-3", &[]);
        // The server has --auth-file: traffic proves the password was read.
        assert_eq!(nbdsh(&nbdkit.uri(), TRAFFIC).trim(), "traffic ok");
        assert_absent("nbdkit's command line", &command_line(&nbdkit), &forms);
        assert_absent("nbdkit -v output", &output(&nbdkit), &forms);
    }

    #[test]
    fn the_password_is_in_no_command_line_and_no_log_even_when_requests_fail() {
        let password = random_secret();
        let forms = password_forms(&password);
        let mut auth = AuthServer::start(&password);
        let nbdkit = auth.nbdkit(&password, &["failover-window=2s", "connect-timeout=500ms"]);
        assert_absent("nbdkit's command line", &command_line(&nbdkit), &forms);
        assert_eq!(nbdsh(&nbdkit.uri(), TRAFFIC).trim(), "traffic ok");

        // The server refuses a wrong password (401), then is gone.
        let wrong = random_secret();
        let refused = auth.nbdkit(&wrong, &["failover-window=2s"]);
        let result = nbdsh(&refused.uri(), TRY_READ);
        assert!(result.starts_with("read failed"), "{result}");
        assert!(
            refused.proc.output.contains("401"),
            "the refusal was not logged"
        );
        auth.server.proc.kill();
        let result = nbdsh(&nbdkit.uri(), TRY_READ);
        assert!(result.starts_with("read failed"), "{result}");
        assert!(
            nbdkit.proc.output.contains("failover-window"),
            "the outage was not logged"
        );

        assert_absent("nbdkit -v output", &output(&nbdkit), &forms);
        let mut all_forms = forms.clone();
        all_forms.extend(password_forms(&wrong));
        assert_absent(
            "nbdkit -v output with a wrong password",
            &output(&refused),
            &all_forms,
        );
    }

    #[test]
    fn a_url_with_credentials_is_refused_without_echoing_them() {
        let password = random_secret();
        let url = format!("urls=http://{USER}:{password}@127.0.0.1:9/");
        // Not -v: nbdkit itself prints every key=value it is given.
        let refused = Nbdkit::refusal(&[], &plugin(), &[&url]);
        assert!(refused.contains("user=/password="), "{refused}");
        assert_absent(
            "the refusal",
            refused.as_bytes(),
            &[("the password", password)],
        );
    }

    #[test]
    fn a_core_dump_after_traffic_holds_neither_the_password_nor_the_basic_header() {
        let password = random_secret();
        let auth = AuthServer::start(&password);
        let nbdkit = auth.nbdkit(&password, &[]);
        assert_eq!(nbdsh(&nbdkit.uri(), TRAFFIC).trim(), "traffic ok");
        let dir = TempDir::new().unwrap();
        let core = core_dump(nbdkit.proc.pid(), dir.path());
        // The plugin is in the dump (so the test looks at the right process).
        assert!(contains(&core, b"multihttp"), "not a core of nbdkit");
        // A freed heap block loses its first 16 bytes to the allocator's
        // list pointers: look for the end of the password too.
        let mut forms = password_forms(&password);
        forms.push(("the password's end", password[16..].to_owned()));
        assert_absent("the core dump", &core, &forms);
    }

    /// The server checks each request's credentials; the decoded password
    /// must not stay behind in its memory. (The base64 form can: it is in
    /// the raw bytes of the connection's read buffer, like the disk data.)
    #[test]
    fn the_servers_core_dump_after_traffic_holds_no_client_password() {
        let password = random_secret();
        let auth = AuthServer::start(&password);
        let nbdkit = auth.nbdkit(&password, &[]);
        assert_eq!(nbdsh(&nbdkit.uri(), TRAFFIC).trim(), "traffic ok");
        // Some connections end (their requests freed), one stays open.
        drop(nbdkit);
        let nbdkit = auth.nbdkit(&password, &[]);
        assert_eq!(nbdsh(&nbdkit.uri(), TRAFFIC).trim(), "traffic ok");
        let dir = TempDir::new().unwrap();
        let core = core_dump(auth.server.proc.pid(), dir.path());
        assert!(
            contains(&core, b"http-disk-server"),
            "not a core of the server"
        );
        assert!(
            contains(&core, base64(&format!("{USER}:{password}")).as_bytes()),
            "the traffic did not reach this server"
        );
        assert_absent(
            "the server's core dump",
            &core,
            &[
                ("the password", password.clone()),
                ("the password's end", password[16..].to_owned()),
            ],
        );
    }
}

mod s3 {
    use super::*;

    fn plugin() -> PathBuf {
        artifact("libs3.so")
    }

    /// The plugin's keys for `garage`, without credentials.
    fn store_params(garage: &Garage) -> Vec<String> {
        vec![
            format!("endpoint={}", garage.endpoint()),
            format!("bucket={}", garage.bucket),
            format!("region={REGION}"),
            "prefix=secrets/".to_owned(),
            "size=1M".to_owned(),
        ]
    }

    /// The plugin's keys for `garage` with `secret` in a file of `dir`.
    fn params(garage: &Garage, dir: &Path, secret: &str, extra: &[&str]) -> Vec<String> {
        let file = secret_file(dir, "secret-key", secret);
        let mut params = store_params(garage);
        params.push(format!("access-key={}", garage.access_key));
        params.push(format!("secret-key=+{}", file.display()));
        params.extend(extra.iter().map(|s| s.to_string()));
        params
    }

    fn try_start(params: &[String]) -> Result<Nbdkit, harness::Proc> {
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        Nbdkit::try_start(&["-v"], &plugin(), &params)
    }

    /// The query of a presigned URL: its signature lets anyone repeat the
    /// request for an hour (the key id is not secret: it is a plain
    /// `access-key=` that nbdkit -v itself prints).
    fn signed_url_forms() -> Vec<(&'static str, String)> {
        vec![
            ("a presigned URL's signature", "X-Amz-Signature".to_owned()),
            (
                "a presigned URL's credential scope",
                "X-Amz-Credential".to_owned(),
            ),
        ]
    }

    #[test]
    fn the_secret_key_is_in_no_command_line_and_no_log_even_when_requests_fail() {
        let mut garage = Garage::start();
        let dir = TempDir::new().unwrap();
        let secret = vec![("the secret key", garage.secret_key.clone())];
        let nbdkit = try_start(&params(
            &garage,
            dir.path(),
            &garage.secret_key,
            &["retry-window=1s"],
        ))
        .unwrap_or_else(|p| panic!("{}", p.output_when_closed()));
        assert_absent("nbdkit's command line", &command_line(&nbdkit), &secret);
        assert_eq!(nbdsh(&nbdkit.uri(), TRAFFIC).trim(), "traffic ok");

        // A wrong secret: the store answers 403 and nbdkit refuses to start.
        let wrong = random_secret();
        let refused = match try_start(&params(&garage, dir.path(), &wrong, &[])) {
            Ok(_) => panic!("a wrong secret key was accepted"),
            Err(proc) => proc.output_when_closed(),
        };
        assert!(refused.contains("access denied"), "{refused}");
        assert_absent(
            "nbdkit -v output with a wrong secret",
            refused.as_bytes(),
            &[("the wrong secret", wrong)],
        );

        // The store is gone: network errors, retried, then EIO.
        garage.stop();
        let result = nbdsh(
            &nbdkit.uri(),
            &TRY_READ.replace("h.pread(4096, 0)", "h.pread(4096, 512 * 1024)"),
        );
        assert!(result.starts_with("read failed"), "{result}");
        assert!(
            nbdkit.proc.output.contains("Connection Failed"),
            "the network errors were not logged"
        );
        let mut forms = secret.clone();
        forms.extend(signed_url_forms());
        assert_absent("nbdkit -v output", &output(&nbdkit), &forms);
    }

    /// `AWS_*` variables are not on the command line, but a process's
    /// environment is in `/proc/PID/environ` and in its core dumps: the
    /// plugin takes the secret ones out once it has read them.
    #[test]
    fn credentials_from_the_environment_are_taken_out_of_it() {
        let garage = Garage::start();
        let token = random_secret();
        let variables = [
            format!("AWS_ACCESS_KEY_ID={}", garage.access_key),
            format!("AWS_SECRET_ACCESS_KEY={}", garage.secret_key),
            format!("AWS_SESSION_TOKEN={token}"),
        ];
        let mut wrapper = vec!["env"];
        wrapper.extend(variables.iter().map(String::as_str));
        let params = store_params(&garage);
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        let nbdkit = Nbdkit::try_start_wrapped(&wrapper, &["-v"], &plugin(), &params)
            .unwrap_or_else(|p| panic!("{}", p.output_when_closed()));
        let result = nbdsh(&nbdkit.uri(), TRAFFIC);
        assert_eq!(result.trim(), "traffic ok");
        let environ = fs::read(format!("/proc/{}/environ", nbdkit.proc.pid())).unwrap();
        let forms = [
            ("the secret key", garage.secret_key.clone()),
            ("the session token", token.clone()),
        ];
        assert_absent("nbdkit's command line", &command_line(&nbdkit), &forms);
        assert_absent("/proc/PID/environ", &environ, &forms);
        assert!(contains(&environ, b"PATH="), "not an environment");
        let dir = TempDir::new().unwrap();
        let core = core_dump(nbdkit.proc.pid(), dir.path());
        assert_absent("the core dump", &core, &forms[..1]);
    }

    #[test]
    fn an_endpoint_with_credentials_is_refused_without_echoing_them() {
        let secret = random_secret();
        let endpoint = format!("endpoint=http://key:{secret}@127.0.0.1:9");
        let refused = Nbdkit::refusal(&[], &plugin(), &[&endpoint, "bucket=b"]);
        assert!(refused.contains("secret-key="), "{refused}");
        assert_absent("the refusal", refused.as_bytes(), &[("the secret", secret)]);
    }

    /// The secret read from a rotated `credentials-file=` (an AWS shared
    /// credentials file) is kept like `secret-key=+FILE`: its bytes zeroed
    /// once parsed, the key in never-dumped memory, no log line with it,
    /// also after the file was read again.
    #[test]
    fn a_credentials_file_leaves_its_secret_in_no_core_dump_and_no_log() {
        let garage = Garage::start();
        let dir = TempDir::new().unwrap();
        let credentials = dir.path().join("credentials");
        let profile = format!(
            "[disks]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            garage.access_key, garage.secret_key
        );
        fs::write(&credentials, &profile).unwrap();
        let mut params = store_params(&garage);
        params.push(format!("credentials-file={}", credentials.display()));
        params.push("profile=disks".to_owned());
        let nbdkit = try_start(&params).unwrap_or_else(|p| panic!("{}", p.output_when_closed()));
        assert_eq!(nbdsh(&nbdkit.uri(), TRAFFIC).trim(), "traffic ok");
        // Rewritten (same content, new inode): read again on the next look.
        let next = dir.path().join("credentials.new");
        fs::write(&next, &profile).unwrap();
        fs::rename(&next, &credentials).unwrap();
        std::thread::sleep(Duration::from_millis(1300));
        assert_eq!(nbdsh(&nbdkit.uri(), TRAFFIC).trim(), "traffic ok");
        let forms = [("the secret key", garage.secret_key.clone())];
        let log = nbdkit.proc.output.snapshot().join("\n");
        assert_absent("nbdkit's log", log.as_bytes(), &forms);
        let core = core_dump(nbdkit.proc.pid(), dir.path());
        assert!(
            contains(&core, b"X-Amz-Date"),
            "not a core of the s3 plugin"
        );
        assert_absent("the core dump", &core, &forms);
    }

    #[test]
    fn a_core_dump_after_traffic_holds_no_secret_key() {
        let garage = Garage::start();
        let dir = TempDir::new().unwrap();
        let nbdkit = try_start(&params(&garage, dir.path(), &garage.secret_key, &[]))
            .unwrap_or_else(|p| panic!("{}", p.output_when_closed()));
        assert_eq!(nbdsh(&nbdkit.uri(), TRAFFIC).trim(), "traffic ok");
        let core = core_dump(nbdkit.proc.pid(), dir.path());
        assert!(
            contains(&core, b"X-Amz-Date"),
            "not a core of the s3 plugin"
        );
        assert_absent(
            "the core dump",
            &core,
            &[("the secret key", garage.secret_key.clone())],
        );
    }
}

mod wrapper {
    use super::*;

    /// Runs `scripts/nbd-http-server` with `args`, every path of its own in
    /// a temp dir (no real device is ever reached: refusals come first,
    /// and without them nbdkit would not become ready on a dead URL);
    /// returns its exit code and everything it printed.
    fn refusal(args: &[&str]) -> (Option<i32>, String) {
        let dir = TempDir::new().unwrap();
        let mut cmd = Command::new(workspace_root().join("scripts/nbd-http-server"));
        cmd.arg("--socket-path")
            .arg(dir.path().join("s.socket"))
            .args(["--nbd-name", "secrets"])
            .args(args)
            .env("HND_PLUGIN_DIR", bin_dir())
            .env("HND_RUN_DIR", dir.path())
            .env("HND_DEV_DIR", dir.path())
            .env("HND_SYSFS_BLOCK", dir.path())
            .env("HND_LOCK_FILE", dir.path().join("lock"))
            .env("HND_READY_TIMEOUT", "2");
        let out = run(cmd, Duration::from_secs(30));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    #[test]
    fn literal_secrets_and_urls_with_credentials_are_refused_without_echo() {
        let secret = random_secret();
        let password = format!("password={secret}");
        let secret_key = format!("secret-key={secret}");
        let session_token = format!("session-token={secret}");
        let url = format!("http://{USER}:{secret}@127.0.0.1:9");
        let endpoint = format!("endpoint={url}");
        let dead = "http://127.0.0.1:9";
        let cases: [&[&str]; 5] = [
            &["--urls", dead, "user=alice", &password],
            &["--plugin", "s3", "bucket=b", &secret_key],
            &["--plugin", "s3", "bucket=b", &session_token],
            &["--urls", &url],
            &["--plugin", "s3", &endpoint, "secret-key=+/dev/null"],
        ];
        for args in cases {
            let (code, text) = refusal(args);
            assert_eq!(code, Some(2), "not refused as a usage error: {text}");
            assert!(text.contains("+FILE"), "{text}");
            assert_absent(
                "the refusal",
                text.as_bytes(),
                &[("the secret", secret.clone())],
            );
        }
    }
}
