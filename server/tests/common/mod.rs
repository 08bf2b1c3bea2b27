//! Running the real server on loopback and talking to it as an operator with
//! real TLS: in this process ([`Server`]: the test binds the listeners and
//! calls `serve::run`), or as the `cairn-server` binary ([`Daemon`]) for what
//! only a process shows (SIGKILL, SIGTERM, memory). The load benchmark
//! (`benches/load.rs`) uses it too.

#![allow(dead_code)]

pub mod cli;
pub mod postgres;
pub mod replicas;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cairn_proto::client::{self, Connection, Credentials};
use cairn_proto::pb;
use cairn_server::serve::{self, Listeners, ServeConfig};
use cairn_server::transport::Limits;
use tempfile::TempDir;

/// The names the server certificate is issued for.
const NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// The server running in this process, on its own thread and runtime (so sync
/// and async tests alike can use it), on loopback ports the test bound.
pub struct Server {
    pub data_dir: PathBuf,
    /// Credential files and role copies go here.
    pub work: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// Dropping it begins the graceful shutdown ([`Server::stop`]).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Dropping it ends the server at once (as the test ends): a client still
    /// connected from the test's runtime, blocked by the join, cannot answer
    /// the drain.
    abort: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
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
        Self::start_configured(data_dir, |_| {})
    }

    /// Starts a server with a fresh data directory and connection caps `limits`.
    pub fn start_limited(limits: Limits) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let mut server = Self::start_configured(&tmp.path().join("data"), |c| c.limits = limits);
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server on `data_dir` with the default configuration changed by `configure`.
    pub fn start_configured(data_dir: &Path, configure: impl FnOnce(&mut ServeConfig)) -> Server {
        let work = data_dir.parent().unwrap().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mut config = ServeConfig::new(
            data_dir.to_path_buf(),
            cairn_server::store::default_url(data_dir).unwrap(),
            NAMES.map(String::from).to_vec(),
        );
        configure(&mut config);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (abort, aborted) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let server = serve::Server::open(&config).await?;
                let loopback: SocketAddr = "127.0.0.1:0".parse()?;
                let listeners = Listeners::bind(loopback, loopback, None).await?;
                bound_tx.send((listeners.grpc.local_addr()?, listeners.http.local_addr()?))?;
                let serving = serve::run(server, listeners, async {
                    let _ = stopped.await;
                });
                tokio::select! {
                    result = serving => result,
                    _ = aborted => Ok(()),
                }
            })
        });
        let Ok((grpc, http)) = bound_rx.recv() else {
            let result = thread.join().expect("the server thread panicked");
            panic!("the server did not start: {:#}", result.unwrap_err());
        };
        Server {
            data_dir: data_dir.to_path_buf(),
            work,
            grpc,
            http,
            stop: Some(stop),
            abort: Some(abort),
            thread: Some(thread),
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

    /// Shuts the server down as the daemon does on SIGTERM; returns how `serve::run` ended.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        drop(self.stop.take());
        match self.thread.take() {
            Some(t) => t.join().expect("the server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.abort.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Two loopback addresses (gRPC, HTTP) that were free a moment ago, for a
/// [`Daemon`]: it binds them itself, so another process could take one in
/// between, which its start then reports.
pub fn free_ports() -> (SocketAddr, SocketAddr) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Both held at once, so they differ.
    let (a, b) = (bind(), bind());
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

/// A `cairn-server serve` process on loopback ports the test chose.
pub struct Daemon {
    pub child: Child,
    pub data_dir: PathBuf,
    /// Credential files and the server's log (`server.log`) go here.
    pub work: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Daemon {
    /// Starts `cairn-server serve` on `data_dir` listening on `grpc` and
    /// `http`, and waits until it answers `/healthz`.
    pub fn start_in(data_dir: &Path, grpc: SocketAddr, http: SocketAddr) -> Daemon {
        Self::start_logging(data_dir, grpc, http, "info")
    }

    /// [`Daemon::start_in`] with `RUST_LOG` set to `rust_log` (the load benchmark
    /// leaves out the info line of every stored version).
    pub fn start_logging(
        data_dir: &Path,
        grpc: SocketAddr,
        http: SocketAddr,
        rust_log: &str,
    ) -> Daemon {
        Self::start_with(data_dir, grpc, http, rust_log, &[])
    }

    /// [`Daemon::start_logging`] with more arguments for `cairn-server serve`.
    pub fn start_with(
        data_dir: &Path,
        grpc: SocketAddr,
        http: SocketAddr,
        rust_log: &str,
        args: &[&str],
    ) -> Daemon {
        let work = data_dir.parent().unwrap().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let log_path = work.join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = Command::new(server_bin());
        cmd.args(["serve", "--data-dir"]).arg(data_dir).args([
            "--listen",
            &grpc.to_string(),
            "--http",
            &http.to_string(),
        ]);
        for name in NAMES {
            cmd.args(["--name", name]);
        }
        cmd.args(args);
        let child = cmd
            .env("RUST_LOG", rust_log)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("could not start cairn-server");
        let mut daemon = Daemon {
            child,
            data_dir: data_dir.to_path_buf(),
            work,
            grpc,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !daemon.healthy() {
            let exited = daemon.child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                daemon.kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("cairn-server did not answer on {http} ({exited:?}); its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// `GET /healthz` answers `ok`: this server, not another process on the port.
    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.http, Duration::from_secs(1)) else {
            return false;
        };
        let mut reply = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .and_then(|()| s.read_to_string(&mut reply))
            .is_ok()
            && reply.starts_with("HTTP/1.")
            && reply.contains(" 200 ")
            && reply.ends_with("\r\n\r\nok\n")
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }

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

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `cairn-server` binary to run: this build's, or `CAIRN_SERVER_BIN` (the
/// load benchmark compares two builds under the same load).
pub fn server_bin() -> PathBuf {
    std::env::var_os("CAIRN_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cairn-server")))
}

/// `cairn-server operator add NAME --role ROLE`, the file written into `work`.
pub fn add_operator(data_dir: &Path, work: &Path, name: &str, role: &str, url: &str) -> PathBuf {
    add_operator_to(None, data_dir, work, name, role, url)
}

/// [`add_operator`] recorded in the database at `database` (`--database`)
/// rather than the data directory's.
pub fn add_operator_to(
    database: Option<&str>,
    data_dir: &Path,
    work: &Path,
    name: &str,
    role: &str,
    url: &str,
) -> PathBuf {
    let out = work.join(format!("{name}.toml"));
    let o = Command::new(server_bin())
        .args(["operator", "add", name, "--role", role, "--out"])
        .arg(&out)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--server", url])
        .args(database.map(|d| ["--database", d]).into_iter().flatten())
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

/// A new node key and a certificate request for it, naming `name` (CN) if
/// given, as the agent makes one to enroll or renew.
pub fn node_request(name: Option<&str>) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    if let Some(name) = name {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
    }
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

/// The code of a call a node makes to the node API (a Fetch of its own role,
/// `web` at `stable`).
pub async fn node_api(conn: &Connection) -> tonic::Code {
    let fetched = conn
        .nodes()
        .fetch(pb::FetchRequest {
            assignment: Some(pb::Assignment {
                role: "web".into(),
                channel: "stable".into(),
            }),
            known_digest: String::new(),
        })
        .await;
    match fetched {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}
