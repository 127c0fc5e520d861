//! `Garage`: a real S3-compatible server (Garage, a Rust distributed object
//! store) as a single node on loopback for the s3 plugin's tests: sqlite
//! metadata, replication factor 1, one bucket and one key made at start-up
//! (`--single-node --default-bucket`). Killed with its process group when
//! dropped; `stop`/`start_again` keep its data for outage tests.
//!
//! The binary comes from `scripts/install-deps` (cargo install, cached in
//! /var/cache/http-nbd-transfer/garage); `HND_GARAGE` overrides the path.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{free_port, run, wait_until, Proc, TempDir};

pub const REGION: &str = "garage";

pub fn garage_binary() -> PathBuf {
    let path = std::env::var_os("HND_GARAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/http-nbd-transfer/garage/bin/garage"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-deps (it builds Garage once)",
        path.display()
    );
    path
}

pub struct Garage {
    proc: Option<Proc>,
    dir: TempDir,
    pub s3_port: u16,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

/// `n` hex digits from a seed (keys and secrets must be hex for Garage).
fn hex(seed: u64, n: usize) -> String {
    crate::pattern(n, seed)
        .iter()
        .map(|b| format!("{:x}", b & 15))
        .collect()
}

/// Writes a node's config in `dir`; returns its path and S3 port.
fn write_config(dir: &Path, rpc_secret: &str, replication: u32) -> (PathBuf, u16) {
    fs::create_dir_all(dir).expect("node dir");
    let rpc_port = free_port();
    let s3_port = free_port();
    let root = dir.display().to_string();
    let config = format!(
        "metadata_dir = \"{root}/meta\"\ndata_dir = \"{root}/data\"\ndb_engine = \"sqlite\"\n\
         replication_factor = {replication}\nrpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
         rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{rpc_secret}\"\n\
         [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n"
    );
    let path = dir.join("garage.toml");
    fs::write(&path, config).expect("write garage.toml");
    (path, s3_port)
}

/// Runs `garage -c CONFIG args...` (the CLI talks to the running node).
fn cli(config: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(garage_binary());
    cmd.arg("-c").arg(config).args(args);
    crate::run_ok(cmd, Duration::from_secs(60))
}

/// A signed curl request to `url`; the status code for HEAD, else the body.
fn signed_curl(access_key: &str, secret_key: &str, method: &str, url: &str) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "5", "--aws-sigv4"])
        .arg(format!("aws:amz:{REGION}:s3"))
        .arg("--user")
        .arg(format!("{access_key}:{secret_key}"))
        // Garage requires the payload hash header, which curl's SigV4
        // (7.88) does not add by itself.
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
    if method == "HEAD" {
        cmd.args(["-I", "-o", "/dev/null", "-w", "%{http_code}"]);
    }
    cmd.arg(url);
    let out = run(cmd, Duration::from_secs(10));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Garage {
    pub fn start() -> Garage {
        let dir = TempDir::new().expect("temp dir");
        let seed = u64::from(std::process::id()) << 20 ^ u64::from(free_port());
        let (_, s3_port) = write_config(dir.path(), &hex(seed, 64), 1);
        let mut garage = Garage {
            proc: None,
            dir,
            s3_port,
            bucket: "disks".into(),
            access_key: format!("GK{}", hex(seed + 1, 24)),
            secret_key: hex(seed + 2, 64),
        };
        garage.start_again();
        garage
    }

    /// Starts the server (again, on the same data and ports) and waits
    /// until a signed request on the bucket succeeds.
    pub fn start_again(&mut self) {
        let mut cmd = Command::new(garage_binary());
        cmd.arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "garage=warn");
        let mut proc = Proc::spawn("garage", cmd);
        let ready = wait_until(Duration::from_secs(60), || {
            proc.exited().is_none() && self.curl("HEAD", "") == "200"
        });
        assert!(
            ready,
            "garage did not become ready: {:?}",
            proc.output.snapshot()
        );
        self.proc = Some(proc);
    }

    /// Stops the server (SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// The running server's pid (for CPU accounting), if it runs.
    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().map(Proc::pid)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The plugin keys for this server, with the secret in a file.
    pub fn params(&self, prefix: &str) -> Vec<String> {
        let secret_file = self.dir.path().join("secret");
        fs::write(&secret_file, &self.secret_key).expect("write secret file");
        vec![
            format!("endpoint={}", self.endpoint()),
            format!("bucket={}", self.bucket),
            format!("region={REGION}"),
            format!("prefix={prefix}"),
            format!("access-key={}", self.access_key),
            format!("secret-key=+{}", secret_file.display()),
        ]
    }

    /// The plugin keys for this server with a second key that may only
    /// read the bucket (made on first use through the `garage` CLI).
    pub fn read_only_params(&self, prefix: &str) -> Vec<String> {
        let access_key = format!("GK{}", &self.secret_key[..24]);
        let secret_key: String = self.secret_key.chars().rev().collect();
        let secret_file = self.dir.path().join("read-only-secret");
        if !secret_file.exists() {
            self.import_key("reader", &access_key, &secret_key, &["--read"]);
            fs::write(&secret_file, &secret_key).expect("write secret file");
        }
        let mut params = self.params(prefix);
        params.retain(|p| !p.starts_with("access-key=") && !p.starts_with("secret-key="));
        params.push(format!("access-key={access_key}"));
        params.push(format!("secret-key=+{}", secret_file.display()));
        params
    }

    /// Makes a new key named `name` that may read and write the bucket
    /// (as an operator rotating keys does first); returns its id and
    /// secret.
    pub fn add_key(&self, name: &str) -> (String, String) {
        let seed = u64::from(std::process::id()) << 24
            ^ name
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
        let access_key = format!("GK{}", hex(seed, 24));
        let secret_key = hex(seed + 1, 64);
        self.import_key(name, &access_key, &secret_key, &["--read", "--write"]);
        (access_key, secret_key)
    }

    /// Imports the key `access_key`/`secret_key` as `name` and gives it
    /// `rights` (`--read`, `--write`) on the bucket, through the CLI.
    fn import_key(&self, name: &str, access_key: &str, secret_key: &str, rights: &[&str]) {
        let config = self.dir.path().join("garage.toml");
        cli(
            &config,
            &["key", "import", "--yes", "-n", name, access_key, secret_key],
        );
        let mut allow = vec!["bucket", "allow"];
        allow.extend_from_slice(rights);
        allow.extend_from_slice(&[&self.bucket, "--key", access_key]);
        cli(&config, &allow);
    }

    /// Deletes the key `access_key`: requests signed with it are refused
    /// from then on. [`Garage::objects`] signs with the key made at
    /// start-up, so it no longer works once that one is deleted.
    pub fn delete_key(&self, access_key: &str) {
        let config = self.dir.path().join("garage.toml");
        cli(&config, &["key", "delete", "--yes", access_key]);
    }

    fn curl(&self, method: &str, query: &str) -> String {
        let url = format!("{}/{}{query}", self.endpoint(), self.bucket);
        signed_curl(&self.access_key, &self.secret_key, method, &url)
    }

    /// Keys of the objects under `prefix` (one page: tests stay small).
    pub fn objects(&self, prefix: &str) -> Vec<String> {
        // '/' must be percent-encoded in a signed query string.
        let prefix = prefix.replace('/', "%2F");
        let body = self.curl("GET", &format!("?list-type=2&prefix={prefix}"));
        body.split("<Key>")
            .skip(1)
            .filter_map(|part| part.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect()
    }
}

/// Several Garage nodes on loopback forming one cluster with
/// `replication_factor` = the node count: layout assigned and applied, a
/// bucket and a key made through the `garage` CLI. Every node is killed
/// when dropped; `kill_node` stops one mid-test.
pub struct GarageCluster {
    nodes: Vec<(Proc, u16)>,
    _dir: TempDir,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl GarageCluster {
    pub fn start(count: u32) -> GarageCluster {
        let dir = TempDir::new().expect("temp dir");
        let seed = u64::from(std::process::id()) << 21 ^ u64::from(free_port());
        let secret = hex(seed, 64);
        let mut configs = Vec::new();
        let mut nodes = Vec::new();
        for n in 0..count {
            let (config, s3_port) =
                write_config(&dir.path().join(format!("node{n}")), &secret, count);
            let mut cmd = Command::new(garage_binary());
            cmd.arg("-c")
                .arg(&config)
                .arg("server")
                .env("RUST_LOG", "garage=warn");
            nodes.push((Proc::spawn(&format!("garage{n}"), cmd), s3_port));
            configs.push(config);
        }
        // Node ids need the nodes up; then connect them and lay them out.
        let mut ids = Vec::new();
        for config in &configs {
            let mut id = String::new();
            wait_until(Duration::from_secs(30), || {
                let mut cmd = Command::new(garage_binary());
                cmd.arg("-c").arg(config).args(["node", "id", "-q"]);
                let out = run(cmd, Duration::from_secs(10));
                id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                out.status.success() && id.contains('@')
            });
            assert!(id.contains('@'), "no node id from {}", config.display());
            ids.push(id);
        }
        for id in &ids[1..] {
            cli(&configs[0], &["node", "connect", id]);
        }
        for id in &ids {
            let short = id.split('@').next().unwrap_or_default();
            cli(
                &configs[0],
                &["layout", "assign", "-z", "dc1", "-c", "1G", short],
            );
        }
        cli(&configs[0], &["layout", "apply", "--version", "1"]);
        let cluster = GarageCluster {
            nodes,
            _dir: dir,
            bucket: "disks".into(),
            access_key: format!("GK{}", hex(seed + 1, 24)),
            secret_key: hex(seed + 2, 64),
        };
        let bucket = cluster.bucket.clone();
        // Layout changes take a moment to reach every node: retry.
        let made = wait_until(Duration::from_secs(30), || {
            let mut cmd = Command::new(garage_binary());
            cmd.arg("-c")
                .arg(&configs[0])
                .args(["bucket", "create", &bucket]);
            run(cmd, Duration::from_secs(20)).status.success()
        });
        assert!(made, "bucket creation failed");
        cli(
            &configs[0],
            &[
                "key",
                "import",
                "--yes",
                "-n",
                "test",
                &cluster.access_key,
                &cluster.secret_key,
            ],
        );
        cli(
            &configs[0],
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                &bucket,
                "--key",
                &cluster.access_key,
            ],
        );
        let url = format!("{}/{bucket}", cluster.endpoint(0));
        let ready = wait_until(Duration::from_secs(30), || {
            signed_curl(&cluster.access_key, &cluster.secret_key, "HEAD", &url) == "200"
        });
        assert!(ready, "the cluster's S3 API did not answer");
        cluster
    }

    pub fn endpoint(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].1)
    }

    pub fn kill_node(&mut self, node: usize) {
        self.nodes[node].0.kill();
    }
}
