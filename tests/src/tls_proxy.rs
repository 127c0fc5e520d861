//! `TlsProxy`: nginx (the system's /usr/sbin/nginx) terminating TLS on a
//! free loopback port in front of a plain HTTP server on another, to give
//! an HTTPS endpoint to servers that have none of their own (Garage).
//! Killed with its process group on drop.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::test_ca::ServerCert;
use crate::{free_port, wait_until, Proc, TempDir};

pub struct TlsProxy {
    pub proc: Proc,
    pub port: u16,
    _dir: TempDir,
}

impl TlsProxy {
    /// Proxies `https://127.0.0.1:PORT` to `http://127.0.0.1:upstream`,
    /// passing the Host header on unchanged (S3 signatures cover it) and
    /// streaming bodies both ways.
    pub fn start(upstream: u16, cert: &ServerCert) -> TlsProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let d = dir.path().display();
        let config = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\n\
             pid {d}/nginx.pid;\nerror_log stderr warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n access_log off;\n\
             client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             server {{\n  listen 127.0.0.1:{port} ssl;\n\
             ssl_certificate {cert};\n  ssl_certificate_key {key};\n\
             client_max_body_size 0;\n\
             location / {{\n   proxy_pass http://127.0.0.1:{upstream};\n\
             proxy_http_version 1.1;\n   proxy_set_header Host $http_host;\n\
             proxy_request_buffering off;\n   proxy_buffering off;\n  }}\n }}\n}}\n",
            cert = cert.cert.display(),
            key = cert.key.display(),
        );
        let conf: PathBuf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).expect("write nginx.conf");
        let mut cmd = Command::new("/usr/sbin/nginx");
        cmd.arg("-c").arg(&conf).arg("-p").arg(dir.path());
        let mut proc = Proc::spawn("nginx", cmd);
        let listening = wait_until(Duration::from_secs(10), || {
            proc.exited().is_none() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            listening,
            "nginx did not start: {:?}",
            proc.output.snapshot()
        );
        TlsProxy {
            proc,
            port,
            _dir: dir,
        }
    }
}
