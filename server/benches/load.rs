//! Load benchmark of the real `cairn-server` binary on loopback.
//!
//! Starts the release binary on `127.0.0.1:0` with a fresh data directory,
//! issues a publisher credential with `cairn-server operator add`, opens N
//! clients (default 64), each its own TLS connection and tonic channel driven
//! by its own tokio task, and runs three timed loads one after the other:
//!
//! - `push, one role per client`: every client pushes new versions of its own role;
//! - `push, one shared role`: every client pushes new versions of the same role,
//!   so all pushes contend for that role's version numbers;
//! - `fetch (Roles.Get)`: every client fetches the latest `web` role (recipes/web).
//!
//! Every push carries different content, so every acknowledged push must have
//! created a version. After the pushes the stored versions are listed and
//! compared with the acknowledged ones: the bench fails if one is missing or
//! extra, or if any request failed.
//!
//! Run with `scripts/bench-server.sh` (or `cargo bench -p cairn-server --bench load`).
//! `CAIRN_BENCH_CLIENTS` and `CAIRN_BENCH_SECS` change the client count and the
//! length of each load (defaults 64 and 10).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cairn_proto::client::Credentials;
use cairn_proto::pb;
use tonic::transport::Channel;

type Client = pb::roles_client::RolesClient<Channel>;

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_cairn-server");
const SHARED_ROLE: &str = "bench-shared";
const FETCHED_ROLE: &str = "web";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

fn run() -> Result<()> {
    let clients = env_number("CAIRN_BENCH_CLIENTS", 64)? as usize;
    let secs = env_number("CAIRN_BENCH_SECS", 10)?;
    ensure!(
        clients > 0 && secs > 0,
        "clients and seconds must be positive"
    );
    let duration = Duration::from_secs(secs);

    // Other work on the machine skews the figures; the report shows how much there was.
    let load_before = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());

    let dir = tempfile::tempdir().context("could not create a temporary directory")?;
    let mut server = Server::start(&dir.path().join("data"))?;
    let creds = server.operator(&dir.path().join("bench.toml"))?;

    let runtime = tokio::runtime::Runtime::new().context("could not start the async runtime")?;
    let report = runtime.block_on(bench(&creds, server.child.id(), clients, duration))?;
    let peak_rss_kib = server.peak_rss_kib()?;
    let status = server.terminate()?;

    print_report(&report, clients, secs, peak_rss_kib, &load_before);
    ensure!(
        status.success(),
        "cairn-server did not stop cleanly on SIGTERM: {status}"
    );
    let errors: u64 = report.phases.iter().map(|p| p.errors).sum();
    if errors > 0 {
        for p in report.phases.iter().filter(|p| p.errors > 0) {
            eprintln!(
                "{}: {} errors, first: {}",
                p.name,
                p.errors,
                p.first_error.as_deref().unwrap_or("?")
            );
        }
        bail!("{errors} requests failed");
    }
    if let Some(problem) = &report.lost {
        bail!("stored versions differ from acknowledged pushes: {problem}");
    }
    Ok(())
}

/// The `cairn-server serve` child process; killed if dropped while running.
struct Server {
    child: Child,
    data_dir: PathBuf,
    grpc: String,
}

impl Server {
    fn start(data_dir: &Path) -> Result<Server> {
        let mut child = Command::new(SERVER_BIN)
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--name", "127.0.0.1"])
            // Per-request info lines (one per stored version) are left out.
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {SERVER_BIN}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?)
            .read_line(&mut line)
            .context("could not read the server's listening line")?;
        let grpc = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .with_context(|| format!("no grpc= in the server's first line {line:?}"))?
            .to_string();
        Ok(Server {
            child,
            data_dir: data_dir.to_path_buf(),
            grpc,
        })
    }

    /// Issues a publisher credential with `cairn-server operator add`.
    fn operator(&self, out: &Path) -> Result<PathBuf> {
        let status = Command::new(SERVER_BIN)
            .args(["operator", "add", "bench", "--role", "publisher", "--out"])
            .arg(out)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--server", &format!("https://{}", self.grpc)])
            .stdout(Stdio::null())
            .status()
            .context("could not run cairn-server operator add")?;
        ensure!(
            status.success(),
            "cairn-server operator add failed: {status}"
        );
        Ok(out.to_path_buf())
    }

    /// VmHWM: the largest resident set the process has had.
    fn peak_rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmHWM line in {path}"))
    }

    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .context("could not send SIGTERM to cairn-server")?;
        self.child.wait().context("could not wait for cairn-server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    PushOwnRole,
    PushSharedRole,
    Fetch,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::PushOwnRole => "push, one role per client",
            Load::PushSharedRole => "push, one shared role",
            Load::Fetch => "fetch (Roles.Get)",
        }
    }
}

/// What one client saw during one load.
#[derive(Default)]
struct ClientRun {
    /// Microseconds per successful request.
    latencies: Vec<u64>,
    /// (role, version) of every acknowledged push.
    acked: Vec<(String, u64)>,
    errors: u64,
    first_error: Option<String>,
}

struct Phase {
    name: &'static str,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// From the start until the last client's last request returned.
    elapsed: Duration,
    /// Sorted, microseconds.
    latencies: Vec<u64>,
    /// CPU time (user + system) the server and this process used during the load.
    server_cpu: Duration,
    client_cpu: Duration,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile, in milliseconds.
    fn percentile_ms(&self, p: f64) -> f64 {
        let n = self.latencies.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
        self.latencies[rank.min(n) - 1] as f64 / 1000.0
    }
}

struct Report {
    phases: Vec<Phase>,
    acked_pushes: usize,
    stored_versions: usize,
    /// Set when the stored versions are not exactly the acknowledged ones.
    lost: Option<String>,
}

fn push_request(role: &str, content: String) -> pb::PushRequest {
    let file = |path: &str, content: Vec<u8>| pb::BundleFile {
        path: path.as_bytes().to_vec(),
        content,
    };
    pb::PushRequest {
        bundle: Some(pb::Bundle {
            files: vec![
                file(
                    "role.toml",
                    format!("[role]\nname = \"{role}\"\n").into_bytes(),
                ),
                file("files/n", content.into_bytes()),
            ],
        }),
        message: "bench".into(),
        promote_to: String::new(),
    }
}

fn own_role(client: usize) -> String {
    format!("bench-{client:03}")
}

/// One request of `load`; a push returns the version it created.
async fn request(
    client: &mut Client,
    load: Load,
    id: usize,
    i: u64,
    web_digest: &str,
) -> Result<Option<(String, u64)>, String> {
    let push = |role: String| push_request(&role, format!("client {id} push {i}\n"));
    let request = match load {
        Load::PushOwnRole => push(own_role(id)),
        Load::PushSharedRole => push(SHARED_ROLE.into()),
        Load::Fetch => {
            let got = client
                .get(pb::GetRoleRequest {
                    role: FETCHED_ROLE.into(),
                    version: 0,
                })
                .await
                .map_err(|s| format!("get: {:?}: {}", s.code(), s.message()))?
                .into_inner();
            let digest = got.version.map(|v| v.digest).unwrap_or_default();
            if digest != web_digest || got.bundle.is_none_or(|b| b.files.is_empty()) {
                return Err(format!("get returned digest {digest:?} or no files"));
            }
            return Ok(None);
        }
    };
    let got = client
        .push(request)
        .await
        .map_err(|s| format!("push: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let v = got.version.ok_or("push returned no version")?;
    if !got.created {
        return Err(format!(
            "push of new content did not create a version (got {} {})",
            v.role, v.version
        ));
    }
    Ok(Some((v.role, v.version)))
}

async fn client_loop(
    mut client: Client,
    load: Load,
    id: usize,
    deadline: Instant,
    web_digest: Arc<str>,
) -> (Client, ClientRun) {
    let mut run = ClientRun::default();
    let mut i = 0u64;
    while Instant::now() < deadline {
        let started = Instant::now();
        let outcome = request(&mut client, load, id, i, &web_digest).await;
        let micros = started.elapsed().as_micros() as u64;
        match outcome {
            Ok(ack) => {
                run.latencies.push(micros);
                run.acked.extend(ack);
            }
            Err(e) => {
                run.errors += 1;
                run.first_error.get_or_insert(e);
            }
        }
        i += 1;
    }
    (client, run)
}

/// Runs `load` on every client for `duration`; returns the clients for the
/// next load, the phase's figures and every acknowledged push.
async fn phase(
    clients: Vec<Client>,
    load: Load,
    duration: Duration,
    web_digest: &Arc<str>,
) -> Result<(Vec<Client>, Phase, Vec<(String, u64)>)> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(id, c)| tokio::spawn(client_loop(c, load, id, deadline, web_digest.clone())))
        .collect();
    let mut clients = Vec::with_capacity(tasks.len());
    let mut all = ClientRun::default();
    for t in tasks {
        let (c, run) = t.await.context("a client task panicked")?;
        clients.push(c);
        all.latencies.extend(run.latencies);
        all.acked.extend(run.acked);
        all.errors += run.errors;
        if all.first_error.is_none() {
            all.first_error = run.first_error;
        }
    }
    let elapsed = started.elapsed();
    all.latencies.sort_unstable();
    let phase = Phase {
        name: load.name(),
        ok: all.latencies.len() as u64,
        errors: all.errors,
        first_error: all.first_error,
        elapsed,
        latencies: all.latencies,
        server_cpu: Duration::ZERO,
        client_cpu: Duration::ZERO,
    };
    Ok((clients, phase, all.acked))
}

/// User + system CPU time a process has used, from `/proc/PID/stat`.
fn cpu_time(pid: &str) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces;
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("unexpected format of {path}"))
    };
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .context("could not read the clock tick rate")? as u64;
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / per_second as f64))
}

async fn bench(creds_path: &Path, server_pid: u32, n: usize, duration: Duration) -> Result<Report> {
    let creds = Credentials::load(creds_path)?;
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        // One TLS connection (one tonic channel) each.
        clients.push(creds.connect().await?.roles());
    }

    // The role every fetch reads.
    let web = cairn_proto::bundle::RoleBundle::from_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/web"),
    )
    .context("could not read recipes/web")?;
    let pushed = clients[0]
        .push(pb::PushRequest {
            bundle: Some(web.to_wire()),
            message: "bench setup".into(),
            promote_to: String::new(),
        })
        .await
        .context("could not push recipes/web")?
        .into_inner();
    let web_digest: Arc<str> = pushed.version.context("no version")?.digest.into();

    // Every connection makes one call before any clock starts.
    for c in &mut clients {
        request(c, Load::Fetch, 0, 0, &web_digest)
            .await
            .map_err(anyhow::Error::msg)
            .context("warm-up fetch failed")?;
    }

    let mut phases = Vec::new();
    let mut acked = Vec::new();
    for load in [Load::PushOwnRole, Load::PushSharedRole, Load::Fetch] {
        let server_before = cpu_time(&server_pid.to_string())?;
        let client_before = cpu_time("self")?;
        let (back, mut p, a) = phase(clients, load, duration, &web_digest).await?;
        p.server_cpu = cpu_time(&server_pid.to_string())?.saturating_sub(server_before);
        p.client_cpu = cpu_time("self")?.saturating_sub(client_before);
        clients = back;
        phases.push(p);
        acked.extend(a);
    }

    // Nothing acknowledged is lost, and nothing unacknowledged was stored.
    let acked_set: BTreeSet<(String, u64)> = acked.iter().cloned().collect();
    let mut roles: BTreeSet<String> = (0..n).map(own_role).collect();
    roles.insert(SHARED_ROLE.into());
    let mut stored = BTreeSet::new();
    for role in roles {
        let versions = clients[0]
            .versions(pb::VersionsRequest { role: role.clone() })
            .await
            .with_context(|| format!("could not list the versions of {role}"))?
            .into_inner()
            .versions;
        stored.extend(versions.into_iter().map(|v| (v.role, v.version)));
    }
    let lost = if acked_set.len() != acked.len() {
        Some(format!(
            "{} acknowledgements name a version already acknowledged",
            acked.len() - acked_set.len()
        ))
    } else if stored != acked_set {
        let missing = acked_set.difference(&stored).count();
        let extra = stored.difference(&acked_set).count();
        Some(format!(
            "{missing} acknowledged versions missing, {extra} stored but not acknowledged"
        ))
    } else {
        None
    };
    // Per role, numbers run 1..=n without gaps.
    let mut per_role: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (r, v) in &stored {
        per_role.entry(r).or_default().push(*v);
    }
    let gaps = per_role
        .iter()
        .find(|(_, vs)| **vs != (1..=vs.len() as u64).collect::<Vec<_>>());
    let lost = lost.or_else(|| gaps.map(|(r, _)| format!("the versions of {r} have gaps")));

    Ok(Report {
        phases,
        acked_pushes: acked.len(),
        stored_versions: stored.len(),
        lost,
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn print_report(r: &Report, clients: usize, secs: u64, peak_rss_kib: u64, load_before: &str) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "cairn-server load: {clients} clients (one TLS connection and tokio task each), {secs} s per load, loopback"
    );
    println!(
        "machine: {cores} cores ({}); clients and server share them; load average before: {}",
        cpu_model(),
        load_before,
    );
    println!();
    println!(
        "| load | requests | errors | req/s | p50 ms | p99 ms | max ms | server CPU s | client CPU s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &r.phases {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            p.name,
            p.ok,
            p.errors,
            p.per_second(),
            p.percentile_ms(50.0),
            p.percentile_ms(99.0),
            p.percentile_ms(100.0),
            p.server_cpu.as_secs_f64(),
            p.client_cpu.as_secs_f64(),
        );
    }
    println!();
    println!(
        "acknowledged pushes: {}; versions stored: {}; {}",
        r.acked_pushes,
        r.stored_versions,
        match &r.lost {
            None => "all acknowledged versions stored, none extra".to_string(),
            Some(p) => format!("MISMATCH: {p}"),
        }
    );
    println!(
        "server peak RSS (VmHWM): {:.1} MiB",
        peak_rss_kib as f64 / 1024.0
    );
}
