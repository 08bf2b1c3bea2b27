//! Fleet benchmark of the real `cairn-server` binary: many lightweight
//! simulated agents on loopback.
//!
//! Starts the release binary on `127.0.0.1:0` (caps raised for the load),
//! pushes and promotes a role, creates one join token, then:
//!
//! 1. **Enrollment**: `CAIRN_FLEET_NODES` nodes (default 1,000) enroll, 32 at
//!    once, each with its own key and certificate request, as `cairn-agent
//!    enroll` does (the key is made before the clock starts).
//! 2. **Watch streams**: for each step of `CAIRN_FLEET_STEPS` (default
//!    1,000, 5,000, 10,000, 20,000) more simulated agents connect, each its own
//!    TLS connection from one of 250 source addresses (127.0.1.1 …) and one
//!    `Nodes.Watch` stream, until the step's count is connected; the server's
//!    resident memory is read before the first and after the last, then a new
//!    version is promoted and the time until every stream has seen it is
//!    measured. Node certificates are reused round robin (the server keeps
//!    per-connection state, not per-certificate state, for a stream). A step
//!    that cannot be reached ends the benchmark there, and the report says why.
//! 3. **Report ingest**: `CAIRN_FLEET_REPORTERS` nodes (default 512), each on
//!    its own connection, submit run reports, each with a new run id, as fast as
//!    the server acknowledges them for `CAIRN_BENCH_SECS` (default 10); the
//!    server's CPU time over that span is read from `/proc`; afterwards every
//!    acknowledged run id must be listed by the server.
//!
//! With `CAIRN_FLEET_REPLICAS=N` (N ≥ 2), N servers share one PostgreSQL
//! database (a throwaway cluster on loopback, as the tests make): agent `i`
//! connects to replica `i mod N`, the promote goes through the first replica
//! (so most streams learn of it through PostgreSQL's notifications), reporters
//! are split over the replicas too, and memory and CPU are summed over them.
//!
//! Run with `scripts/bench-fleet.sh` (as root: it raises the descriptor limit).

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cairn_proto::client::{self, Credentials};
use cairn_proto::pb;
use common::Daemon;
use common::postgres::PgCluster;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use support::{cpu_time, env_number};

const ROLE: &str = "fleet";
const CHANNEL: &str = "stable";
/// Source addresses the simulated agents connect from: 127.0.1.1 to 127.0.1.250.
const SOURCES: u32 = 250;
const ENROLL_CONCURRENCY: usize = 32;
/// Nodes reporting at once in the ingest phase, unless `CAIRN_FLEET_REPORTERS` says otherwise.
const REPORTERS: u64 = 512;
/// More replicas than this is no longer a benchmark of a 2-core machine.
const MAX_REPLICAS: u64 = 8;
/// How long to wait for every stream to see a promote before giving up.
const NOTIFY_DEADLINE: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    support::exit(run)
}

fn steps() -> Result<Vec<usize>> {
    let text =
        std::env::var("CAIRN_FLEET_STEPS").unwrap_or_else(|_| "1000,5000,10000,20000".into());
    let steps: Vec<usize> = text
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("CAIRN_FLEET_STEPS: {s:?} is not a number"))
        })
        .collect::<Result<_>>()?;
    ensure!(
        steps.windows(2).all(|w| w[0] < w[1]) && steps.first().is_some_and(|s| *s > 0),
        "CAIRN_FLEET_STEPS must be increasing positive numbers"
    );
    Ok(steps)
}

fn run() -> Result<()> {
    let steps = steps()?;
    let most = *steps.last().expect("steps are not empty");
    let nodes = env_number("CAIRN_FLEET_NODES", 1000)? as usize;
    let secs = env_number("CAIRN_BENCH_SECS", 10)?;
    let reporters = env_number("CAIRN_FLEET_REPORTERS", REPORTERS)? as usize;
    let replicas = env_number("CAIRN_FLEET_REPLICAS", 1)?;
    ensure!(
        (1..=MAX_REPLICAS).contains(&replicas),
        "CAIRN_FLEET_REPLICAS must be 1 (one server on SQLite) to {MAX_REPLICAS} (replicas on PostgreSQL)"
    );
    ensure!(
        reporters > 0 && nodes >= reporters,
        "CAIRN_FLEET_NODES must be at least CAIRN_FLEET_REPORTERS ({reporters}), which must be positive"
    );
    // Every simulated agent holds a descriptor here and one in the server.
    let limit = raise_descriptor_limit(most as u64 + 4096)?;
    // What the server and this process need beside the agents' connections.
    let reachable = (limit as usize).saturating_sub(1024);

    let dir = tempfile::Builder::new()
        .prefix("cairn-fleet-bench-")
        .tempdir()
        .context("could not create a temporary directory")?;
    let connections = (most + 1024).to_string();
    // Dropped after the servers (declared first), which use it to the end.
    let cluster = (replicas > 1).then(PgCluster::start);
    let database = cluster.as_ref().map(PgCluster::database);
    let mut servers: Vec<Daemon> = (0..replicas)
        .map(|i| {
            let data = dir.path().join(format!("replica-{i}")).join("data");
            let (grpc, http) = common::free_ports();
            let mut args = vec!["--max-connections", connections.as_str()];
            if let Some(database) = &database {
                args.extend(["--database", database.as_str()]);
            }
            Daemon::start_with(&data, grpc, http, "warn", &args)
        })
        .collect();
    let first = &servers[0];
    let admin = Credentials::load(&common::add_operator_to(
        database.as_deref(),
        &first.data_dir,
        &first.work,
        "bench",
        "admin",
        &first.url(),
    ))?;

    let runtime = tokio::runtime::Runtime::new().context("could not start the async runtime")?;
    let outcome = runtime.block_on(bench(
        &admin,
        &servers,
        (&steps, reachable, limit),
        (nodes, reporters),
        secs,
    ));
    let statuses: Vec<_> = servers.iter_mut().map(Daemon::terminate).collect();
    let report = outcome?;
    for status in statuses {
        ensure!(
            status.success(),
            "cairn-server did not stop cleanly on SIGTERM: {status}"
        );
    }
    report.print(servers.len(), nodes, reporters, secs);
    if let Some(problem) = &report.ingest_problem {
        bail!("report ingest: {problem}");
    }
    Ok(())
}

/// Raises this process's descriptor limit toward `want` (the server, its
/// child, inherits it); returns the limit reached. Without the privilege to
/// raise the hard limit, the soft one goes as far as the hard one.
fn raise_descriptor_limit(want: u64) -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("could not read the descriptor limit")?;
    if soft >= want {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_ok() {
        return Ok(want);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .with_context(|| format!("could not raise the descriptor limit to {hard}"))?;
    Ok(hard)
}

struct Step {
    streams: usize,
    connect: Duration,
    /// The server's resident memory with no stream, and with `streams` connected.
    rss_idle_kib: u64,
    rss_after_kib: u64,
    /// Time from the promote call until each stream saw the new version, sorted.
    notified: Vec<Duration>,
}

struct Fleet {
    enrolled: usize,
    enroll_time: Duration,
    steps: Vec<Step>,
    /// Why the next step could not be reached, if one could not.
    stopped: Option<String>,
    server_peak_kib: u64,
    ingest: Ingest,
    ingest_problem: Option<String>,
}

struct Ingest {
    acked: usize,
    elapsed: Duration,
    /// The server's CPU time (user + system) over `elapsed`.
    server_cpu: Duration,
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

impl Fleet {
    fn print(&self, replicas: usize, nodes: usize, reporters: usize, secs: u64) {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let servers = match replicas {
            1 => "one server on SQLite".to_string(),
            n => {
                format!("{n} replicas on one PostgreSQL database (memory and CPU summed over them)")
            }
        };
        println!();
        println!(
            "cairn-server fleet: {servers}; simulated agents on loopback, {cores} cores shared by the servers and the agents"
        );
        println!();
        println!(
            "enrollment: {} nodes in {:.2} s: {:.0} enrollments/s ({ENROLL_CONCURRENCY} at once)",
            self.enrolled,
            self.enroll_time.as_secs_f64(),
            self.enrolled as f64 / self.enroll_time.as_secs_f64()
        );
        println!();
        println!(
            "| watch streams | connect s | server RSS MiB | KiB per agent | promote → all notified ms | p50 ms | p99 ms |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for s in &self.steps {
            let per_agent =
                (s.rss_after_kib.saturating_sub(s.rss_idle_kib)) as f64 / s.streams as f64;
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
                s.streams,
                s.connect.as_secs_f64(),
                s.rss_after_kib as f64 / 1024.0,
                per_agent,
                ms(s.notified.last().copied().unwrap_or_default()),
                ms(percentile(&s.notified, 50.0)),
                ms(percentile(&s.notified, 99.0)),
            );
        }
        if let Some(why) = &self.stopped {
            println!();
            println!("stopped: {why}");
        }
        println!();
        println!(
            "server peak RSS: {:.1} MiB; enrolled nodes: {nodes}",
            self.server_peak_kib as f64 / 1024.0
        );
        let i = &self.ingest;
        let mut sorted = i.latencies.clone();
        sorted.sort_unstable();
        println!(
            "report ingest: {reporters} nodes, {secs} s: {} reports acknowledged, {:.0} reports/s, \
             server CPU {:.0} µs per report ({:.2} cores), p50 {} ms, p99 {} ms, {} errors{}",
            i.acked,
            i.acked as f64 / i.elapsed.as_secs_f64(),
            i.server_cpu.as_secs_f64() * 1e6 / i.acked.max(1) as f64,
            i.server_cpu.as_secs_f64() / i.elapsed.as_secs_f64(),
            ms(percentile(&sorted, 50.0)),
            ms(percentile(&sorted, 99.0)),
            i.errors,
            i.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
        );
        match &self.ingest_problem {
            None => println!("every acknowledged report was listed by the server"),
            Some(p) => println!("PROBLEM: {p}"),
        }
    }
}

/// A node's credential: its certificate and key.
#[derive(Clone)]
struct Node {
    name: String,
    identity: Identity,
}

async fn bench(
    admin: &Credentials,
    servers: &[Daemon],
    (steps, reachable, limit): (&[usize], usize, u64),
    (nodes, reporters): (usize, usize),
    secs: u64,
) -> Result<Fleet> {
    let conn = admin.connect().await?;
    let mut version = push_and_promote(&conn, 1).await?;
    let token = conn
        .access()
        .create_token(pb::CreateTokenRequest {
            role: ROLE.into(),
            channel: CHANNEL.into(),
            ttl_seconds: 3600,
            uses: nodes as u32,
        })
        .await
        .context("create a join token")?
        .into_inner()
        .token;

    let (enrolled, enroll_time) = enroll(admin, &token, nodes).await?;
    let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let grpcs: Vec<SocketAddr> = servers.iter().map(|s| s.grpc).collect();

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&admin.ca))
        .domain_name("localhost");
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(usize, u64, Instant)>();
    let mut open = 0usize;
    let mut done = Vec::new();
    let mut stopped = None;
    let rss_idle_kib = rss_kib(&pids, "VmRSS")?;
    'steps: for &target in steps {
        if target > reachable {
            stopped = Some(format!(
                "{target} streams need more descriptors than the {limit} a process may open here \
                 (the hard limit, which only a process with CAP_SYS_RESOURCE can raise)"
            ));
            break;
        }
        let started = Instant::now();
        // Connect in waves, so the handshakes do not all time out at once.
        while open < target {
            let wave: Vec<_> = (open..target.min(open + 500))
                .map(|i| {
                    let node = enrolled[i % enrolled.len()].clone();
                    let tls = tls.clone();
                    let seen = seen_tx.clone();
                    let grpc = grpcs[i % grpcs.len()];
                    tokio::spawn(async move { watch(i, node, grpc, tls, seen).await })
                })
                .collect();
            for (k, t) in wave.into_iter().enumerate() {
                match t.await.context("a simulated agent panicked")? {
                    Ok(()) => open += 1,
                    Err(e) => {
                        stopped = Some(format!(
                            "agent {} of {target} could not open its watch stream: {e:#}",
                            open + k + 1
                        ));
                        break 'steps;
                    }
                }
            }
        }
        let connect = started.elapsed();
        // Each stream's first message (the current version) has arrived.
        drain(&mut seen_rx);
        let rss_after_kib = rss_kib(&pids, "VmRSS")?;
        version += 1;
        let promoted = Instant::now();
        let v = push_and_promote(&conn, version).await?;
        ensure!(
            v == version,
            "the promote made version {v}, expected {version}"
        );
        let mut notified = Vec::with_capacity(open);
        let mut seen = HashSet::with_capacity(open);
        let deadline = promoted + NOTIFY_DEADLINE;
        while seen.len() < open {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, seen_rx.recv()).await {
                Ok(Some((i, v, at))) if v == version && seen.insert(i) => {
                    notified.push(at.saturating_duration_since(promoted));
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("every watch stream ended"),
                Err(_) => {
                    stopped = Some(format!(
                        "only {} of {open} streams saw version {version} within {NOTIFY_DEADLINE:?}",
                        seen.len()
                    ));
                    break 'steps;
                }
            }
        }
        notified.sort_unstable();
        done.push(Step {
            streams: open,
            connect,
            rss_idle_kib,
            rss_after_kib,
            notified,
        });
    }
    let server_peak_kib = rss_kib(&pids, "VmHWM")?;
    let (ingest, ingest_problem) =
        ingest(admin, &enrolled[..reporters], (&grpcs, &pids), &tls, secs).await?;
    Ok(Fleet {
        enrolled: enrolled.len(),
        enroll_time,
        steps: done,
        stopped,
        server_peak_kib,
        ingest,
        ingest_problem,
    })
}

fn drain<T>(rx: &mut mpsc::UnboundedReceiver<T>) {
    while rx.try_recv().is_ok() {}
}

/// Pushes a new version of the bench role (its content numbered `n`) and
/// promotes it; returns the version.
async fn push_and_promote(conn: &client::Connection, n: u64) -> Result<u64> {
    let file = |path: &str, content: String| pb::BundleFile {
        path: path.as_bytes().to_vec(),
        content: content.into_bytes(),
    };
    let pushed = conn
        .roles()
        .push(pb::PushRequest {
            bundle: Some(pb::Bundle {
                files: vec![
                    file(
                        "role.toml",
                        format!(
                            "[role]\nname = \"{ROLE}\"\n\n[[file]]\npath = \"/tmp/cairn-fleet-bench\"\ncontent = \"{n}\\n\"\n"
                        ),
                    ),
                ],
            }),
            message: format!("bench {n}"),
            promote_to: CHANNEL.into(),
        })
        .await
        .context("push and promote")?
        .into_inner();
    ensure!(
        !pushed.rejected,
        "the bench role was rejected: {:?}",
        pushed.diagnostics
    );
    Ok(pushed.version.context("push returned no version")?.version)
}

/// Enrolls `count` nodes with `token`; returns their credentials and the time
/// the enrollments took (keys made beforehand).
async fn enroll(admin: &Credentials, token: &str, count: usize) -> Result<(Vec<Node>, Duration)> {
    let requests: Vec<(String, KeyPair, String)> = (0..count)
        .map(|i| {
            let name = format!("bench-node-{i:05}");
            let key = KeyPair::generate().context("generate a node key")?;
            let mut params = CertificateParams::default();
            params.distinguished_name = {
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, name.as_str());
                dn
            };
            let csr = params
                .serialize_request(&key)
                .and_then(|c| c.pem())
                .context("make a certificate request")?;
            Ok((name, key, csr))
        })
        .collect::<Result<_>>()?;
    let started = Instant::now();
    let queue = Arc::new(std::sync::Mutex::new(requests));
    let workers: Vec<_> = (0..ENROLL_CONCURRENCY)
        .map(|_| {
            let queue = queue.clone();
            let (url, ca) = (admin.server.clone(), admin.ca.clone());
            let token = token.to_string();
            tokio::spawn(async move {
                let conn = client::connect(&url, &ca, None).await?;
                let mut out = Vec::new();
                loop {
                    let Some((name, key, csr)) = queue.lock().expect("queue lock").pop() else {
                        return anyhow::Ok(out);
                    };
                    let got = conn
                        .enrollment()
                        .enroll(pb::EnrollRequest {
                            token: token.clone(),
                            csr_pem: csr,
                            node_name: name.clone(),
                            facts_json: String::new(),
                        })
                        .await
                        .with_context(|| format!("enroll {name}"))?
                        .into_inner();
                    out.push(Node {
                        name,
                        identity: Identity::from_pem(got.cert_pem, key.serialize_pem()),
                    });
                }
            })
        })
        .collect();
    let mut nodes = Vec::with_capacity(count);
    for w in workers {
        nodes.extend(w.await.context("an enrolling task panicked")??);
    }
    let elapsed = started.elapsed();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((nodes, elapsed))
}

fn assignment() -> pb::Assignment {
    pb::Assignment {
        role: ROLE.into(),
        channel: CHANNEL.into(),
    }
}

/// A TLS channel for `node` from the source address of agent `i`.
async fn channel(
    i: usize,
    node: &Node,
    grpc: SocketAddr,
    tls: &ClientTlsConfig,
) -> Result<Channel> {
    let source = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 1, 1)) + (i as u32 % SOURCES));
    let endpoint = Endpoint::from_shared(format!("https://localhost:{}", grpc.port()))?
        .tls_config(tls.clone().identity(node.identity.clone()))?
        .connect_timeout(Duration::from_secs(30))
        .http2_keep_alive_interval(Duration::from_secs(60))
        .keep_alive_while_idle(true);
    endpoint
        .connect_with_connector(FromSource {
            source: IpAddr::V4(source),
            server: grpc,
        })
        .await
        .context("connect")
}

/// Agent `i`: opens its watch stream, reports every version it is told of.
/// Returns once the first message (the current version) arrived; the stream is
/// then read by a task of its own.
async fn watch(
    i: usize,
    node: Node,
    grpc: SocketAddr,
    tls: ClientTlsConfig,
    seen: mpsc::UnboundedSender<(usize, u64, Instant)>,
) -> Result<()> {
    let channel = channel(i, &node, grpc, &tls).await?;
    let mut stream = pb::nodes_client::NodesClient::new(channel)
        .watch(pb::WatchRequest {
            assignment: Some(assignment()),
        })
        .await
        .context("watch")?
        .into_inner();
    let first = stream
        .message()
        .await
        .context("first watch message")?
        .context("the watch stream ended before its first message")?;
    let _ = seen.send((i, first.version, Instant::now()));
    tokio::spawn(async move {
        while let Ok(Some(moved)) = stream.message().await {
            if seen.send((i, moved.version, Instant::now())).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Connects from a given loopback source address, so the simulated agents
/// are spread over many peers as a fleet is.
#[derive(Clone)]
struct FromSource {
    source: IpAddr,
    server: SocketAddr,
}

impl tower_service::Service<Uri> for FromSource {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (source, server) = (self.source, self.server);
        Box::pin(async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let stream = socket.connect(server).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The `reporters` submit reports as fast as they are acknowledged for `secs`,
/// each on its own connection (reporter `i` to replica `i mod N`); then every
/// acknowledged run id must be listed by the servers.
async fn ingest(
    admin: &Credentials,
    reporters: &[Node],
    (grpcs, pids): (&[SocketAddr], &[u32]),
    tls: &ClientTlsConfig,
    secs: u64,
) -> Result<(Ingest, Option<String>)> {
    // Connected before the clock starts, so that handshakes are not counted.
    let mut clients = Vec::with_capacity(reporters.len());
    for (i, node) in reporters.iter().enumerate() {
        let channel = channel(i, node, grpcs[i % grpcs.len()], tls).await?;
        clients.push((node.clone(), pb::nodes_client::NodesClient::new(channel)));
    }
    let cpu_before = servers_cpu(pids)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(node, mut client)| {
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut latencies = Vec::new();
                let (mut errors, mut first_error) = (0u64, None);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let run_id = format!("{}-{n}", node.name);
                    let sent = Instant::now();
                    match client
                        .report(pb::ReportRequest {
                            report: Some(report(&node.name, &run_id)),
                            facts_json: String::new(),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(r) if r.get_ref().created => {
                            latencies.push(sent.elapsed());
                            acked.push(run_id);
                        }
                        Ok(_) => {
                            errors += 1;
                            first_error.get_or_insert(format!("{run_id}: not created"));
                        }
                        Err(s) => {
                            errors += 1;
                            first_error.get_or_insert(format!("{:?}: {}", s.code(), s.message()));
                        }
                    }
                }
                anyhow::Ok((acked, latencies, errors, first_error))
            })
        })
        .collect();
    let mut all = Ingest {
        acked: 0,
        elapsed: Duration::ZERO,
        server_cpu: Duration::ZERO,
        latencies: Vec::new(),
        errors: 0,
        first_error: None,
    };
    let mut acked_ids = HashSet::new();
    for t in tasks {
        let (acked, latencies, errors, first_error) = t.await.context("a reporter panicked")??;
        all.acked += acked.len();
        acked_ids.extend(acked);
        all.latencies.extend(latencies);
        all.errors += errors;
        if all.first_error.is_none() {
            all.first_error = first_error;
        }
    }
    all.elapsed = started.elapsed();
    all.server_cpu = servers_cpu(pids)?.saturating_sub(cpu_before);
    let listed = listed_run_ids(admin, reporters).await?;
    let missing = acked_ids.difference(&listed).count();
    let problem = (missing > 0)
        .then(|| format!("{missing} acknowledged reports are not listed by the server"));
    Ok((all, problem))
}

/// A small run report of `node`: three resources, one changed with a diff.
fn report(node: &str, run_id: &str) -> pb::RunReport {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a time formats as RFC 3339");
    let resource = |id: &str, status: pb::ResourceStatus, diff: &str| pb::ResourceReport {
        id: id.into(),
        status: status as i32,
        changes: vec![],
        diff: diff.into(),
        duration_us: 120,
        error: String::new(),
    };
    pb::RunReport {
        run_id: run_id.into(),
        node: node.into(),
        role: ROLE.into(),
        role_digest: format!("sha256:{}", "0".repeat(64)),
        noop: false,
        started_at: now.clone(),
        finished_at: now,
        resources: vec![
            resource("package:nginx", pb::ResourceStatus::Unchanged, ""),
            resource(
                "file:/etc/motd",
                pb::ResourceStatus::Changed,
                "--- a\n+++ b\n@@ -1 +1 @@\n-old\n+new\n",
            ),
            resource("service:nginx", pb::ResourceStatus::Unchanged, ""),
        ],
        summary: Some(pb::RunSummary {
            total: 3,
            unchanged: 2,
            changed: 1,
            ..Default::default()
        }),
        agent_version: "bench".into(),
        channel: CHANNEL.into(),
        role_version: 1,
        from_cache: false,
    }
}

/// The run ids the server lists for `nodes`.
async fn listed_run_ids(admin: &Credentials, nodes: &[Node]) -> Result<HashSet<String>> {
    let conn = admin.connect().await?;
    let mut ids = HashSet::new();
    for node in nodes {
        let mut before_id = 0;
        loop {
            let page = conn
                .fleet()
                .list_reports(pb::ListReportsRequest {
                    node: node.name.clone(),
                    before_id,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("list the reports of {}", node.name))?
                .into_inner();
            let last = page.reports.last().map(|r| r.id);
            ids.extend(page.reports.into_iter().map(|r| r.run_id));
            match last {
                Some(id) if page.more => before_id = id,
                _ => break,
            }
        }
    }
    Ok(ids)
}

/// The CPU time the servers `pids` have used, together.
fn servers_cpu(pids: &[u32]) -> Result<Duration> {
    pids.iter().map(|pid| cpu_time(&pid.to_string())).sum()
}

/// A line of `/proc/PID/status` summed over `pids`, in KiB: `VmRSS` (now) or
/// `VmHWM` (peak: the sum of each one's peak).
fn rss_kib(pids: &[u32], field: &str) -> Result<u64> {
    pids.iter()
        .map(|pid| {
            let path = format!("/proc/{pid}/status");
            let status =
                std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
            status
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .with_context(|| format!("no {field} line in {path}"))
        })
        .sum()
}
