//! Starting the real `cairn-server` binary on loopback and talking to it as an
//! operator with real TLS.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_proto::pb;
use cairn_server::credentials::Credentials;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    pub grpc: String,
    pub http: String,
}

impl Server {
    /// Starts `cairn-server serve` on ephemeral loopback ports in `data_dir`.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_on(data_dir, "127.0.0.1:0")
    }

    pub fn start_on(data_dir: &Path, listen: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-server"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen",
                listen,
                "--http",
                "127.0.0.1:0",
                "--name",
                "127.0.0.1",
                "--name",
                "localhost",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start cairn-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                .to_string()
        };
        Server {
            grpc: field("grpc="),
            http: field("http="),
            child,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// Issues a credential with `cairn-server operator add` and returns its path.
    pub fn operator(&self, name: &str, role: &str) -> PathBuf {
        let out = self.data_dir.parent().unwrap().join(format!("{name}.toml"));
        let status = Command::new(env!("CARGO_BIN_EXE_cairn-server"))
            .args(["operator", "add", name, "--role", role, "--out"])
            .arg(&out)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--server", &self.url()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        out
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

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

pub async fn channel(creds: &Path) -> Channel {
    let c = Credentials::load(creds).unwrap();
    channel_with(&c.server, &c.ca, Some((&c.cert, &c.key))).await
}

pub async fn channel_with(url: &str, ca: &str, id: Option<(&str, &str)>) -> Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = id {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

pub fn roles(ch: Channel) -> pb::roles_client::RolesClient<Channel> {
    pb::roles_client::RolesClient::new(ch).max_encoding_message_size(64 << 20)
}

pub fn recipes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes")
}

pub fn bundle_of(dir: &Path) -> pb::Bundle {
    cairn_server::service::bundle_to_wire(&cairn_proto::bundle::RoleBundle::from_dir(dir).unwrap())
}

pub fn file(path: &[u8], content: &[u8]) -> pb::BundleFile {
    pb::BundleFile {
        path: path.to_vec(),
        content: content.to_vec(),
    }
}
