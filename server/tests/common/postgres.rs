//! A throwaway PostgreSQL server for tests: a cluster made with `initdb` in a
//! temporary directory, listening on a free loopback port only (trust
//! authentication, so reachable by this machine alone) with its Unix socket in
//! a private directory, stopped and removed when dropped. Nothing of the
//! machine's own clusters (Debian's `main`) is used or touched.
//!
//! Shared by the store's unit tests (included with `#[path]`), the
//! integration tests (`mod common`) and the end-to-end replica tests
//! (`tests/tests/replicas.rs`, with `#[path]`).
//!
//! PostgreSQL refuses to run as root: as root, its commands run as the
//! `postgres` user (which Debian's package creates) through `runuser`.

#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use tempfile::TempDir;

/// Where Debian installs the server binaries of each major version.
const DEBIAN_BINARIES: &str = "/usr/lib/postgresql";

pub struct PgCluster {
    /// Holds `data/`, `socket/` and `server.log`; removed on drop.
    dir: TempDir,
    bin: PathBuf,
    /// The account the server runs as, when this process is root.
    run_as: Option<nix::unistd::User>,
    port: u16,
    databases: AtomicUsize,
}

impl PgCluster {
    /// Makes and starts a cluster; panics, saying why, if it cannot (never
    /// skips: a test that needs PostgreSQL fails without it).
    pub fn start() -> PgCluster {
        let bin = binaries();
        let run_as = if nix::unistd::Uid::effective().is_root() {
            Some(
                nix::unistd::User::from_name("postgres")
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| {
                        panic!("{}", missing("there is no `postgres` user to run it as"))
                    }),
            )
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("cairn-pg-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("socket")).unwrap();
        if let Some(user) = &run_as {
            for path in [dir.path().to_path_buf(), dir.path().join("socket")] {
                std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .unwrap();
            }
        }
        let mut cluster = PgCluster {
            dir,
            bin,
            run_as,
            port: 0,
            databases: AtomicUsize::new(0),
        };
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                // A test's cluster need not survive a power cut.
                "--no-sync".as_ref(),
            ],
        );
        // A port free a moment ago may be taken before the server binds it:
        // then another one.
        for _ in 0..5 {
            cluster.port = free_port();
            if cluster.try_start() {
                return cluster;
            }
        }
        panic!(
            "could not start PostgreSQL on loopback; its log:\n{}",
            cluster.log()
        );
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` as the superuser `postgres` (no password:
    /// trust on loopback).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn database(&self) -> String {
        let name = format!(
            "cairn_test_{}",
            self.databases.fetch_add(1, Ordering::Relaxed)
        );
        let port = self.port.to_string();
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", &name])
            .output()
            .expect("could not run createdb");
        check("createdb", &out);
        self.url(&name)
    }

    /// Stops the server at once (as a crash would); [`PgCluster::restart`]
    /// starts it again on the same port.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
    }

    pub fn restart(&self) {
        assert!(
            self.try_start(),
            "PostgreSQL did not start again; its log:\n{}",
            self.log()
        );
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn try_start(&self) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().join("socket").display()
        );
        let log = self.dir.path().join("server.log");
        let data = self.data_dir();
        self.command(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
            ],
        )
        .status
        .success()
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data_dir();
        let mut all: Vec<&std::ffi::OsStr> = vec!["-D".as_ref(), data.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        self.command("pg_ctl", &all)
    }

    /// Runs one of the server's programs, as `postgres` when this is root.
    fn command(&self, program: &str, args: &[&std::ffi::OsStr]) -> Output {
        let path = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", &user.name, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", path.display()))
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let out = self.command(program, args);
        check(program, &out);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // The directory goes with `dir`; the server must go first.
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
    }
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The directory of `initdb` and `pg_ctl`: `CAIRN_PG_BIN`, or the newest
/// version Debian's packages installed.
fn binaries() -> PathBuf {
    find_binaries(std::env::var_os("CAIRN_PG_BIN"), Path::new(DEBIAN_BINARIES))
        .unwrap_or_else(|why| panic!("{why}"))
}

/// The directory `given`, or the newest `VERSION/bin` under `debian`, if it
/// holds `initdb`; else what to install.
pub fn find_binaries(given: Option<OsString>, debian: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = given {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        return Err(missing(&format!(
            "CAIRN_PG_BIN={} holds no initdb",
            dir.display()
        )));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(debian)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => Err(missing(&format!(
            "there is no {}/VERSION/bin/initdb",
            debian.display()
        ))),
    }
}

fn missing(why: &str) -> String {
    format!(
        "this test needs a PostgreSQL server, and {why}.\n  \
         help: run scripts/setup.sh, which installs Debian's `postgresql` package \
         (`apt-get install postgresql`), or set CAIRN_PG_BIN to the directory holding initdb and pg_ctl"
    )
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
