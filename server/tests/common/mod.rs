//! Starting the real `cairn-server` binary on loopback and talking to it as an
//! operator with real TLS.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cairn_proto::client::{self, Connection, Credentials};
use cairn_proto::pb;
use tempfile::TempDir;

/// A running `cairn-server serve` on ephemeral loopback ports.
pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    /// Credential files, logs and role copies go here.
    pub work: PathBuf,
    pub grpc: String,
    pub http: String,
    _tmp: Option<TempDir>,
}

impl Server {
    /// Starts a server with a fresh data directory in a temporary directory.
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let mut server = Self::start_in(&tmp.path().join("data"));
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server on `data_dir` (which may hold an earlier server's data);
    /// `work` is its sibling directory `work`.
    pub fn start_in(data_dir: &Path) -> Server {
        let work = data_dir.parent().unwrap().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.join("server.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-server"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--name",
                "127.0.0.1",
                "--name",
                "localhost",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("could not start cairn-server");
        // The first line says where it listens; give up rather than hang.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("cairn-server did not say where it listens within 60 s")
            });
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
                .unwrap_or_else(|| {
                    let log = std::fs::read_to_string(work.join("server.log")).unwrap_or_default();
                    panic!("no {k} in {line:?}; server log:\n{log}")
                })
        };
        Server {
            grpc: field("grpc="),
            http: field("http="),
            child,
            data_dir: data_dir.to_path_buf(),
            work: work.clone(),
            _tmp: None,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// Issues a credential with `cairn-server operator add`; returns its path.
    pub fn operator(&self, name: &str, role: &str) -> PathBuf {
        add_operator(&self.data_dir, &self.work, name, role, &self.url())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `cairn-server operator add NAME --role ROLE`, the file written into `work`.
pub fn add_operator(data_dir: &Path, work: &Path, name: &str, role: &str, url: &str) -> PathBuf {
    let out = work.join(format!("{name}.toml"));
    let o = Command::new(env!("CARGO_BIN_EXE_cairn-server"))
        .args(["operator", "add", name, "--role", role, "--out"])
        .arg(&out)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--server", url])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "operator add {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Connects with the credential file at `creds`, to the server it names.
pub async fn connect(creds: &Path) -> Connection {
    Credentials::load(creds).unwrap().connect().await.unwrap()
}

/// Connects to `url` trusting `ca`, presenting the certificate and key of `id` if given.
pub async fn connect_to(url: &str, ca: &str, id: Option<&Credentials>) -> Connection {
    client::connect(url, ca, id.map(Credentials::identity))
        .await
        .unwrap()
}

pub fn recipes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes")
}

pub fn bundle_of(dir: &Path) -> pb::Bundle {
    cairn_proto::bundle::RoleBundle::from_dir(dir)
        .unwrap()
        .to_wire()
}

pub fn file(path: &[u8], content: &[u8]) -> pb::BundleFile {
    pb::BundleFile {
        path: path.to_vec(),
        content: content.to_vec(),
    }
}
