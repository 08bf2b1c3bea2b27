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
//!
//! [`PgStandbyPair`]: a primary and a synchronous streaming standby, made as
//! an operator of Debian would, with `pg_createcluster` and `pg_basebackup`.

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
    /// Given to the server as `-c` options at every start (TLS).
    settings: String,
}

impl PgCluster {
    /// Makes and starts a cluster; panics, saying why, if it cannot (never
    /// skips: a test that needs PostgreSQL fails without it).
    pub fn start() -> PgCluster {
        Self::start_with(|_| String::new())
    }

    /// [`PgCluster::start`] with `ssl = on`, presenting the certificate
    /// `cert_pem` (its chain) with the key `key_pem`.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> PgCluster {
        Self::start_with(|cluster| {
            let (cert, key) = (
                cluster.dir.path().join("server.crt"),
                cluster.dir.path().join("server.key"),
            );
            std::fs::write(&cert, cert_pem).unwrap();
            std::fs::write(&key, key_pem).unwrap();
            // PostgreSQL refuses a key others may read.
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if let Some(user) = &cluster.run_as {
                for path in [&cert, &key] {
                    std::os::unix::fs::chown(
                        path,
                        Some(user.uid.as_raw()),
                        Some(user.gid.as_raw()),
                    )
                    .unwrap();
                }
            }
            format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            )
        })
    }

    /// Makes the cluster, asks `configure` for more server options (given
    /// the cluster, before it starts), and starts it.
    fn start_with(configure: impl FnOnce(&PgCluster) -> String) -> PgCluster {
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
            settings: String::new(),
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
        cluster.settings = configure(&cluster);
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
            "-p {} -k {} -c listen_addresses=127.0.0.1{}",
            self.port,
            self.dir.path().join("socket").display(),
            self.settings
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

/// The `application_name` the standby streams as, which the primary's
/// `synchronous_standby_names` names.
pub const STANDBY_NAME: &str = "cairn_standby";

/// A primary and a standby streaming from it synchronously (a commit is
/// acknowledged only once the standby has it), each a cluster made with
/// Debian's `pg_createcluster` on a free loopback port (trust
/// authentication), its data, socket and log in a temporary directory. Both
/// are dropped (`pg_dropcluster --stop`) when this is, also when the test
/// fails; clusters left by a test process that was killed are dropped by the
/// next one.
///
/// Needs root: `pg_createcluster` writes the configuration under
/// `/etc/postgresql`.
pub struct PgStandbyPair {
    pub primary: DebianCluster,
    pub standby: DebianCluster,
    databases: AtomicUsize,
}

/// Prefix of the test clusters' names: `PREFIX{pid}_{n}_{primary|standby}`.
const CLUSTER_PREFIX: &str = "cairn_t";

impl PgStandbyPair {
    /// Makes both clusters, the standby from a base backup of the primary,
    /// and waits until it streams synchronously; panics, saying why, if it
    /// cannot.
    pub fn start() -> PgStandbyPair {
        static PAIRS: AtomicUsize = AtomicUsize::new(0);
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "{}",
            missing("this test is not root, which `pg_createcluster` needs")
        );
        drop_leftover_clusters();
        let bin = binaries();
        // Debian's layout: /usr/lib/postgresql/VERSION/bin.
        let version = bin
            .parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{}",
                    missing(&format!(
                        "{} is not Debian's VERSION/bin, which pg_createcluster needs",
                        bin.display()
                    ))
                )
            });
        let n = PAIRS.fetch_add(1, Ordering::Relaxed);
        let name = |what: &str| format!("{CLUSTER_PREFIX}{}_{n}_{what}", std::process::id());
        let primary = DebianCluster::create(&bin, version, &name("primary"));
        primary.start_on_a_free_port();
        let standby = DebianCluster::create(&bin, version, &name("standby"));
        // The standby's data is a copy of the primary's, streaming from it
        // as STANDBY_NAME (`-R` writes `primary_conninfo` and `standby.signal`).
        let data = standby.data_dir();
        for entry in std::fs::read_dir(&data).unwrap() {
            let path = entry.unwrap().path();
            match path.is_dir() {
                true => std::fs::remove_dir_all(&path).unwrap(),
                false => std::fs::remove_file(&path).unwrap(),
            }
        }
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres application_name={STANDBY_NAME}",
            primary.port()
        );
        let out = as_postgres(&bin.join("pg_basebackup"))
            .args(["-d", &conninfo, "-R", "-X", "stream", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("could not run pg_basebackup");
        check("pg_basebackup", &out);
        standby.start_on_a_free_port();
        let pair = PgStandbyPair {
            primary,
            standby,
            databases: AtomicUsize::new(0),
        };
        let streaming = format!(
            "SELECT state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
        );
        pair.primary.wait_for(&streaming, "streaming");
        // Synchronous from now on: what the DBA writes in postgresql.conf.
        pair.primary.sql(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'"
        ));
        pair.primary
            .sql("ALTER SYSTEM SET synchronous_commit = 'on'");
        pair.primary.sql("SELECT pg_reload_conf()");
        pair.primary.wait_for(
            &format!(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
            ),
            "sync",
        );
        pair
    }

    /// Creates a new, empty database on the primary; returns its name once
    /// the standby has replayed it (a synchronous standby acknowledges what
    /// it wrote to disk, and replays it a moment later).
    pub fn database(&self) -> String {
        let name = format!(
            "cairn_test_{}",
            self.databases.fetch_add(1, Ordering::Relaxed)
        );
        self.primary.sql(&format!("CREATE DATABASE {name}"));
        self.standby.wait_for(
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
            "1",
        );
        name
    }

    /// The URL of database `name` naming both clusters, the primary first,
    /// in libpq's multi-host form.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{name}?target_session_attrs=read-write",
            self.primary.port(),
            self.standby.port()
        )
    }

    /// [`PgStandbyPair::url`] with the standby first.
    pub fn url_standby_first(&self, name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{name}?target_session_attrs=read-write",
            self.standby.port(),
            self.primary.port()
        )
    }

    /// How the standby replicates, as the primary sees it (`sync`, `async`,
    /// or empty when it does not stream).
    pub fn sync_state(&self) -> String {
        self.primary.sql(&format!(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
        ))
    }

    /// Stops the primary at once, as a crash would.
    pub fn stop_primary(&self) {
        self.primary.ctl(&["stop", "-m", "immediate"]);
    }

    /// Promotes the standby (`pg_ctlcluster … promote`, which waits until
    /// it accepts writes).
    pub fn promote(&self) {
        self.standby.ctl(&["promote"]);
        assert_eq!(self.standby.sql("SELECT pg_is_in_recovery()"), "f");
    }
}

/// A cluster made with `pg_createcluster`, dropped with `pg_dropcluster
/// --stop` on drop.
pub struct DebianCluster {
    /// Holds `data/`, `socket/` and `server.log`.
    dir: TempDir,
    bin: PathBuf,
    version: String,
    name: String,
    port: std::sync::atomic::AtomicU16,
}

impl DebianCluster {
    fn create(bin: &Path, version: u32, name: &str) -> DebianCluster {
        let dir = tempfile::Builder::new()
            .prefix("cairn-pg-")
            .tempdir()
            .unwrap();
        let postgres = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{}", missing("there is no `postgres` user to run it as")));
        std::os::unix::fs::chown(
            dir.path(),
            Some(postgres.uid.as_raw()),
            Some(postgres.gid.as_raw()),
        )
        .unwrap();
        let cluster = DebianCluster {
            dir,
            bin: bin.to_path_buf(),
            version: version.to_string(),
            name: name.to_string(),
            port: free_port().into(),
        };
        let (data, socket, log) = (
            cluster.data_dir(),
            cluster.dir.path().join("socket"),
            cluster.log_path(),
        );
        let out = Command::new("pg_createcluster")
            .args([
                &cluster.version,
                &cluster.name,
                "-p",
                &cluster.port().to_string(),
            ])
            .arg("-d")
            .arg(&data)
            .arg("-s")
            .arg(&socket)
            .arg("-l")
            .arg(&log)
            // Listening on `localhost` only: Debian's default.
            .args([
                "--",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .output()
            .expect("could not run pg_createcluster");
        check("pg_createcluster", &out);
        cluster
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// The URL of database `name` on this cluster alone.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port())
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts it; a port free a moment ago may be taken before the server
    /// binds it: then another one.
    fn start_on_a_free_port(&self) {
        for _ in 0..5 {
            let started = Command::new("pg_ctlcluster")
                .args([&self.version, &self.name, "start"])
                .output()
                .expect("could not run pg_ctlcluster");
            if started.status.success() {
                return;
            }
            let port = free_port();
            self.port.store(port, Ordering::Relaxed);
            let out = Command::new("pg_conftool")
                .args([&self.version, &self.name, "set", "port", &port.to_string()])
                .output()
                .expect("could not run pg_conftool");
            check("pg_conftool", &out);
        }
        panic!(
            "could not start cluster {}; its log:\n{}",
            self.name,
            self.log()
        );
    }

    /// `pg_ctlcluster VERSION NAME ARGS…`, which must succeed.
    pub fn ctl(&self, args: &[&str]) {
        let out = Command::new("pg_ctlcluster")
            .args([&self.version, &self.name])
            .args(args)
            .output()
            .expect("could not run pg_ctlcluster");
        check(&format!("pg_ctlcluster {} {args:?}", self.name), &out);
    }

    /// Runs `sql` in database `postgres` with `psql`; returns what it printed, trimmed.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_in("postgres", sql)
    }

    /// Runs `sql` in database `database` with `psql`; returns what it printed, trimmed.
    pub fn sql_in(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port().to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                database,
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("could not run psql");
        check(&format!("psql -c {sql:?} on cluster {}", self.name), &out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits (at most 60 s) until `query` prints `expected`.
    fn wait_for(&self, query: &str, expected: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let got = self.sql(query);
            if got == expected {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{query} printed {got:?}, not {expected:?}, for 60 s; the log of cluster {}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for DebianCluster {
    fn drop(&mut self) {
        drop_cluster(&self.version, &self.name);
    }
}

fn drop_cluster(version: &str, name: &str) {
    let _ = Command::new("pg_dropcluster")
        .args(["--stop", version, name])
        .output();
}

/// Drops the test clusters whose process is gone (killed before its drop
/// guards ran), so that none piles up.
fn drop_leftover_clusters() {
    let Ok(out) = Command::new("pg_lsclusters").arg("-h").output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut fields = line.split_whitespace();
        let (Some(version), Some(name)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(CLUSTER_PREFIX)
            .and_then(|rest| rest.split('_').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            drop_cluster(version, name);
        }
    }
}

/// `program` run as the `postgres` user.
fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}
