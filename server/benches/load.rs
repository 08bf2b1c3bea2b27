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
//! created a version, with the digest of the content sent. After the loads the
//! server is stopped and started again on the same data directory, and the
//! stored versions are listed and compared with the acknowledged ones, and each
//! acknowledged version is fetched and its content's digest checked against
//! the acknowledged digest: the bench fails if one is missing, extra or
//! different, or if any request failed.
//!
//! The report names the filesystem of the data directory: on tmpfs a commit
//! never waits for a disk, so pushes look faster than they are.
//!
//! Run with `scripts/bench-server.sh` (or `cargo bench -p cairn-server --bench load`).
//! `CAIRN_BENCH_CLIENTS` and `CAIRN_BENCH_SECS` change the client count and the
//! length of each load (defaults 64 and 10); `CAIRN_BENCH_DIR` the directory
//! the data directory is created in (default: the system's temporary directory);
//! `CAIRN_BENCH_PIN` the CPUs of the server and of the clients (`0/1`), and
//! `CAIRN_SERVER_BIN` another build of the server to run (to compare two builds).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cairn_proto::bundle::RoleBundle;
use cairn_proto::client::Credentials;
use cairn_proto::pb;
use common::Daemon;
use tonic::transport::Channel;

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use support::{cpu_time, env_number};

type Client = pb::roles_client::RolesClient<Channel>;

const SHARED_ROLE: &str = "bench-shared";
const FETCHED_ROLE: &str = "web";

fn main() -> ExitCode {
    support::exit(run)
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

    let parent = std::env::var_os("CAIRN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("cairn-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("could not create a directory in {}", parent.display()))?;
    let data = dir.path().join("data");
    let filesystem = filesystem_of(dir.path())?;
    let (grpc, http) = common::free_ports();
    let pinning = Pinning::from_env()?;
    if let Some(p) = &pinning {
        p.pin(&p.server)?;
    }
    // Per-request info lines (one per stored version) are left out.
    let mut server = Daemon::start_logging(&data, grpc, http, "warn");
    let creds = server.operator("bench", "publisher");
    // The runtime's threads inherit the affinity of the thread that makes them.
    if let Some(p) = &pinning {
        p.pin(&p.clients)?;
    }

    let runtime = tokio::runtime::Runtime::new().context("could not start the async runtime")?;
    let (phases, acked) = runtime.block_on(bench(&creds, server.child.id(), clients, duration))?;
    let peak_rss_kib = peak_rss_kib(&server)?;
    let status = server.terminate();
    ensure!(
        status.success(),
        "cairn-server did not stop cleanly on SIGTERM: {status}"
    );

    // What was acknowledged must be what a new server process finds on disk.
    let mut server = Daemon::start_logging(&data, grpc, http, "warn");
    let durability = runtime.block_on(verify(&creds, clients, &acked))?;
    let status = server.terminate();
    ensure!(
        status.success(),
        "the restarted cairn-server did not stop cleanly on SIGTERM: {status}"
    );

    let report = Report { phases, durability };
    print_report(
        &report,
        clients,
        secs,
        peak_rss_kib,
        &load_before,
        &filesystem,
        pinning.as_ref().map(|p| p.text.as_str()),
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
    if let Some(problem) = &report.durability.problem {
        bail!("after the restart, stored versions differ from acknowledged pushes: {problem}");
    }
    Ok(())
}

/// `CAIRN_BENCH_PIN=SERVER_CPUS/CLIENT_CPUS` (e.g. `0/1`): the server and the
/// clients on separate CPUs, so that neither steals the other's time and runs
/// of two builds can be compared.
struct Pinning {
    server: nix::sched::CpuSet,
    clients: nix::sched::CpuSet,
    text: String,
}

impl Pinning {
    fn from_env() -> Result<Option<Pinning>> {
        let Ok(text) = std::env::var("CAIRN_BENCH_PIN") else {
            return Ok(None);
        };
        let (server, clients) = text.split_once('/').with_context(|| {
            format!("CAIRN_BENCH_PIN={text:?}: expected SERVER_CPUS/CLIENT_CPUS")
        })?;
        Ok(Some(Pinning {
            server: cpu_set(server)
                .with_context(|| format!("CAIRN_BENCH_PIN={text:?}: server CPUs"))?,
            clients: cpu_set(clients)
                .with_context(|| format!("CAIRN_BENCH_PIN={text:?}: client CPUs"))?,
            text,
        }))
    }

    /// Pins the calling thread; processes and threads it starts inherit the set.
    fn pin(&self, set: &nix::sched::CpuSet) -> Result<()> {
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set)
            .with_context(|| format!("could not pin to CPUs {}", self.text))
    }
}

/// `0,2` → CPUs 0 and 2.
fn cpu_set(list: &str) -> Result<nix::sched::CpuSet> {
    let mut set = nix::sched::CpuSet::new();
    for cpu in list.split(',') {
        let cpu: usize = cpu
            .trim()
            .parse()
            .with_context(|| format!("{cpu:?} is not a CPU number"))?;
        set.set(cpu)
            .with_context(|| format!("CPU {cpu} is out of range"))?;
    }
    Ok(set)
}

/// The filesystem `path` is on, from the mount with the longest mount point
/// containing it in `/proc/self/mountinfo`: e.g. `ext4 (/dev/sda1 on /)`.
fn filesystem_of(path: &Path) -> Result<String> {
    let path = path
        .canonicalize()
        .with_context(|| format!("could not resolve {}", path.display()))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .context("could not read /proc/self/mountinfo")?;
    mountinfo
        .lines()
        .filter_map(parse_mount)
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len())
        .map(|m| format!("{} ({} on {})", m.fstype, m.source, m.point.display()))
        .with_context(|| format!("no mount in /proc/self/mountinfo holds {}", path.display()))
}

struct Mount {
    point: PathBuf,
    fstype: String,
    source: String,
}

/// One line of mountinfo: `ID PARENT MAJ:MIN ROOT POINT OPTIONS [TAGS…] - FSTYPE SOURCE SUPEROPTIONS`.
fn parse_mount(line: &str) -> Option<Mount> {
    let (head, tail) = line.split_once(" - ")?;
    let point = head.split(' ').nth(4)?;
    let mut tail = tail.split(' ');
    Some(Mount {
        point: PathBuf::from(unescape_octal(point)),
        fstype: tail.next()?.to_string(),
        source: unescape_octal(tail.next()?),
    })
}

/// Mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// VmHWM of the server: the largest resident set the process has had.
fn peak_rss_kib(server: &Daemon) -> Result<u64> {
    let path = format!("/proc/{}/status", server.child.id());
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM line in {path}"))
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
    /// Every acknowledged push.
    acked: Vec<Ack>,
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

/// A push the server acknowledged: what it said it stored, and what was sent.
#[derive(Clone)]
struct Ack {
    role: String,
    version: u64,
    digest: String,
    /// The content of `files/n` in the pushed role.
    content: String,
}

/// What a new server process found on disk after the loads.
struct Durability {
    acked: usize,
    stored: usize,
    /// Acknowledged versions fetched, and their content's digest checked.
    checked: usize,
    /// Set when the stored versions are not exactly the acknowledged ones, or differ from them.
    problem: Option<String>,
}

struct Report {
    phases: Vec<Phase>,
    durability: Durability,
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
) -> Result<Option<Ack>, String> {
    let content = format!("client {id} push {i}\n");
    let request = match load {
        Load::PushOwnRole => push_request(&own_role(id), content.clone()),
        Load::PushSharedRole => push_request(SHARED_ROLE, content.clone()),
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
    Ok(Some(Ack {
        role: v.role,
        version: v.version,
        digest: v.digest,
        content,
    }))
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
) -> Result<(Vec<Client>, Phase, Vec<Ack>)> {
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

/// Runs the three loads; returns their figures and every acknowledged push.
async fn bench(
    creds_path: &Path,
    server_pid: u32,
    n: usize,
    duration: Duration,
) -> Result<(Vec<Phase>, Vec<Ack>)> {
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

    Ok((phases, acked))
}

/// Checks what the server has against what it acknowledged: the same versions,
/// none missing, none extra, numbered without gaps, each with the content that
/// was pushed and the digest that was acknowledged. `n` clients share the fetches.
async fn verify(creds_path: &Path, n: usize, acked: &[Ack]) -> Result<Durability> {
    let creds = Credentials::load(creds_path)?;
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(creds.connect().await?.roles());
    }
    let by_key: BTreeMap<(&str, u64), &Ack> = acked
        .iter()
        .map(|a| ((a.role.as_str(), a.version), a))
        .collect();
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
    let acked_keys: BTreeSet<(String, u64)> =
        by_key.keys().map(|(r, v)| (r.to_string(), *v)).collect();
    let mut per_role: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (r, v) in &stored {
        per_role.entry(r).or_default().push(*v);
    }
    let gaps = per_role
        .iter()
        .find(|(_, vs)| **vs != (1..=vs.len() as u64).collect::<Vec<_>>());
    let mut problem = if by_key.len() != acked.len() {
        Some(format!(
            "{} acknowledgements name a version already acknowledged",
            acked.len() - by_key.len()
        ))
    } else if stored != acked_keys {
        let missing = acked_keys.difference(&stored).count();
        let extra = stored.difference(&acked_keys).count();
        Some(format!(
            "{missing} acknowledged versions missing, {extra} stored but not acknowledged"
        ))
    } else {
        gaps.map(|(r, _)| format!("the versions of {r} have gaps"))
    };

    // Every acknowledged version, fetched: its content and digest are what was acknowledged.
    let mut tasks = Vec::with_capacity(n);
    for (i, mut client) in clients.into_iter().enumerate() {
        let share: Vec<Ack> = acked.iter().skip(i).step_by(n).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for (checked, ack) in share.iter().enumerate() {
                if let Some(p) = check_stored(&mut client, ack).await {
                    return (checked, Some(p));
                }
            }
            (share.len(), None)
        }));
    }
    let mut checked = 0;
    for t in tasks {
        let (count, p) = t.await.context("a verifying task panicked")?;
        checked += count;
        if problem.is_none() {
            problem = p;
        }
    }
    Ok(Durability {
        acked: acked.len(),
        stored: stored.len(),
        checked,
        problem,
    })
}

/// Fetches one acknowledged version; says what is wrong with it, if anything.
async fn check_stored(client: &mut Client, ack: &Ack) -> Option<String> {
    let what = format!("version {} of {}", ack.version, ack.role);
    let got = match client
        .get(pb::GetRoleRequest {
            role: ack.role.clone(),
            version: ack.version,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return Some(format!("{what}: {:?}: {}", s.code(), s.message())),
    };
    let sent = push_request(&ack.role, ack.content.clone());
    let sent_digest = RoleBundle::from_wire(sent.bundle.unwrap_or_default())
        .map(|b| b.digest())
        .unwrap_or_default();
    let stored_digest = match RoleBundle::from_wire(got.bundle.unwrap_or_default()) {
        Ok(b) => b.digest(),
        Err(e) => return Some(format!("{what}: the stored bundle is unusable: {e}")),
    };
    let meta_digest = got.version.map(|v| v.digest).unwrap_or_default();
    if [&sent_digest, &stored_digest, &meta_digest]
        .iter()
        .any(|d| **d != ack.digest)
    {
        return Some(format!(
            "{what}: acknowledged {}, pushed content {sent_digest}, stored content {stored_digest}, stored digest {meta_digest}",
            ack.digest
        ));
    }
    None
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

fn print_report(
    r: &Report,
    clients: usize,
    secs: u64,
    peak_rss_kib: u64,
    load_before: &str,
    filesystem: &str,
    pinned: Option<&str>,
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "cairn-server load: {clients} clients (one TLS connection and tokio task each), {secs} s per load, loopback"
    );
    println!(
        "machine: {cores} cores ({}); {}; load average before: {}",
        cpu_model(),
        match pinned {
            Some(p) => format!("server/clients pinned to CPUs {p}"),
            None => "clients and server share them".into(),
        },
        load_before,
    );
    println!("data directory on: {filesystem}");
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
    let d = &r.durability;
    println!(
        "after a restart: acknowledged pushes: {}; versions stored: {}; fetched and digest-checked: {}; {}",
        d.acked,
        d.stored,
        d.checked,
        match &d.problem {
            None => "all acknowledged versions stored with their content, none extra".to_string(),
            Some(p) => format!("MISMATCH: {p}"),
        }
    );
    println!(
        "server peak RSS (VmHWM): {:.1} MiB",
        peak_rss_kib as f64 / 1024.0
    );
}
