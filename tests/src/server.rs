//! The real `cairn-server` on loopback and an operator driving it with the
//! real `cairn` CLI: what the tests and the demo stand a fleet up with.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::workspace_binary;

/// A `cairn-server serve` process with its data directory, restartable on
/// the same ports. Its certificate names `127.0.0.1`, so machines (which
/// share the host's network) reach it at [`Server::url`] too.
pub struct Server {
    child: Option<Child>,
    data: PathBuf,
    /// `--database`, when not SQLite in the data directory.
    database: Option<String>,
    /// More arguments for `cairn-server serve`.
    args: Vec<String>,
    grpc: SocketAddr,
    http: SocketAddr,
    /// The web dashboard's.
    ui: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts a server keeping its data and log in `dir`.
    pub fn start(dir: &Path) -> Server {
        Self::start_on(dir, None, &[])
    }

    /// Starts a server keeping its data and log in `dir`, with more
    /// arguments for `cairn-server serve` (e.g. `--node-cert-lifetime 90s`).
    pub fn start_with(dir: &Path, args: &[&str]) -> Server {
        Self::start_on(dir, None, args)
    }

    /// Starts a replica keeping its data and log in `dir`, on the database
    /// at `database` (a PostgreSQL URL that other replicas share, and with it
    /// their CA).
    pub fn start_replica(dir: &Path, database: &str) -> Server {
        Self::start_on(dir, Some(database), &[])
    }

    fn start_on(dir: &Path, database: Option<&str>, args: &[&str]) -> Server {
        let data = dir.join("server");
        std::fs::create_dir_all(&data)
            .unwrap_or_else(|e| panic!("could not create {}: {e}", data.display()));
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap_or_else(|e| panic!("could not restrict {}: {e}", data.display()));
        let (grpc, http, ui) = free_ports();
        let mut server = Server {
            child: None,
            data,
            database: database.map(String::from),
            args: args.iter().map(|a| a.to_string()).collect(),
            grpc,
            http,
            ui,
            log: dir.join("server.log"),
        };
        server.restart();
        server
    }

    /// Where agents and operators reach it.
    pub fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// Its CA's certificate (PEM), which its certificates chain to.
    pub fn ca_file(&self) -> PathBuf {
        self.data.join("ca.crt")
    }

    /// Where a browser reaches its web dashboard.
    pub fn ui_url(&self) -> String {
        format!("https://{}", self.ui)
    }

    /// Starts it (again) and waits until it answers `/healthz`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("could not open {}: {e}", self.log.display()));
        let child = Command::new(workspace_binary("cairn-server"))
            .args(["serve", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", &self.grpc.to_string()])
            .args(["--http", &self.http.to_string()])
            .args(["--ui", &self.ui.to_string()])
            .args(["--name", "127.0.0.1"])
            .args(self.database.iter().flat_map(|d| ["--database", d]))
            .args(&self.args)
            .stdout(log.try_clone().expect("could not duplicate the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start cairn-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !healthy(self.http) {
            assert!(
                Instant::now() < deadline,
                "cairn-server did not start; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and waits for it to exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the server is not running");
        terminate(&child);
        let status = child.wait().expect("could not wait for cairn-server");
        assert!(status.success(), "cairn-server exited {status}");
    }

    /// SIGKILL, as a crash would end it; [`Server::restart`] starts it again.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the server is not running");
        child
            .kill()
            .unwrap_or_else(|e| panic!("could not kill cairn-server: {e}"));
        child.wait().expect("could not wait for cairn-server");
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `cairn-server ARGS… --data-dir DATA`; its standard output.
    pub fn server_cmd(&self, args: &[&str]) -> String {
        let out = Command::new(workspace_binary("cairn-server"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .output()
            .unwrap_or_else(|e| panic!("could not run cairn-server: {e}"));
        succeeded(&out, &format!("cairn-server {args:?}"))
    }

    /// The pin of its CA (`sha256:…`), as `cairn-server ca pin` prints it.
    pub fn ca_pin(&self) -> String {
        self.server_cmd(&["ca", "pin"]).trim().to_string()
    }

    /// A new admin operator, its credentials written to `out`.
    pub fn add_operator(&self, name: &str, out: &Path) -> Operator {
        self.add_operator_as(name, "admin", out)
    }

    /// A new operator with `role` (admin, publisher or auditor), its
    /// credentials written to `out`.
    pub fn add_operator_as(&self, name: &str, role: &str, out: &Path) -> Operator {
        let url = self.url();
        let path = out.to_str().expect("a UTF-8 path");
        let mut args = vec![
            "operator", "add", name, "--role", role, "--out", path, "--server", &url,
        ];
        if let Some(database) = &self.database {
            args.extend(["--database", database]);
        }
        self.server_cmd(&args);
        Operator {
            credentials: out.to_path_buf(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An operator's credentials, for the `cairn` CLI.
pub struct Operator {
    credentials: PathBuf,
}

impl Operator {
    /// `cairn ARGS…` as this operator; its standard output.
    pub fn cairn(&self, args: &[&str]) -> String {
        let out = Command::new(workspace_binary("cairn"))
            .arg("--credentials")
            .arg(&self.credentials)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("could not run cairn: {e}"));
        succeeded(&out, &format!("cairn {args:?}"))
    }

    /// `cairn --output json ARGS…`, parsed.
    pub fn cairn_json(&self, args: &[&str]) -> Value {
        let out = self.cairn(&[&["--output", "json"], args].concat());
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("cairn {args:?} printed no JSON ({e}):\n{out}"))
    }

    /// `cairn role push DIR -m MESSAGE --promote CHANNEL`; the new version.
    pub fn push(&self, role_dir: &Path, message: &str, channel: &str) -> u64 {
        let dir = role_dir.to_str().expect("a UTF-8 path");
        let v = self.cairn_json(&["role", "push", dir, "-m", message, "--promote", channel]);
        v["version"]["version"]
            .as_u64()
            .or_else(|| v["version"].as_u64())
            .unwrap_or_else(|| panic!("no version in {v}"))
    }

    /// `cairn token create --role ROLE --channel CHANNEL`: a join token for
    /// one enrollment.
    pub fn token(&self, role: &str, channel: &str) -> String {
        let v = self.cairn_json(&["token", "create", "--role", role, "--channel", channel]);
        v["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {v}"))
            .to_string()
    }
}

/// The URL of a server that is down: a loopback port nothing listens on.
pub fn down_server_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0").expect("could not listen on 127.0.0.1");
    format!(
        "https://{}",
        port.local_addr().expect("a bound listener has an address")
    )
}

/// Waits until `done`, failing the test with `what` after `within`.
#[track_caller]
pub fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_ports() -> (SocketAddr, SocketAddr, SocketAddr) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("could not listen on 127.0.0.1");
    let (a, b, c) = (bind(), bind(), bind());
    let addr = |l: TcpListener| l.local_addr().expect("a bound listener has an address");
    (addr(a), addr(b), addr(c))
}

fn healthy(http: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&http, Duration::from_secs(1)) else {
        return false;
    };
    let mut reply = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).is_ok()
        && s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .and_then(|()| s.read_to_string(&mut reply))
            .is_ok()
        && reply.contains(" 200 ")
}

/// Sends SIGTERM to `child`.
pub fn terminate(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap_or_else(|e| panic!("could not signal process {}: {e}", child.id()));
}

/// SIGTERM to `child`, then waits for it: its exit status and all it
/// printed (standard output, then standard error; both must be piped).
pub fn terminate_and_read(mut child: Child) -> (std::process::ExitStatus, String) {
    terminate(&child);
    let status = child.wait().unwrap();
    let mut log = String::new();
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read>),
    ] {
        out.expect("the child's output is piped")
            .read_to_string(&mut log)
            .unwrap();
    }
    (status, log)
}

/// The standard output of `out`; panics with all of it unless `what`
/// succeeded.
pub fn succeeded(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} exited {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
