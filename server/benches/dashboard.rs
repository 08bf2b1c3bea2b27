//! The dashboard's pages on a large fleet, in process: a SQLite store in a
//! temporary directory is filled with `CAIRN_DASH_NODES` enrolled nodes
//! (default 10,000) and `CAIRN_DASH_REPORTS` stored reports (default
//! 1,000,000, spread over the nodes and the last 48 hours; one node in 50
//! failing, one in 10 on an older version, one in 100 never reported), then
//! each page is asked for `CAIRN_DASH_ROUNDS` times (default 20) through the
//! dashboard's router with a signed-in session: the overview, the first and a
//! later page of nodes, nodes filtered by state and by a fact, a node, and a
//! report. Prints per page the median and the slowest server time and the
//! size of the page sent, then each of the overview's store reads timed
//! alone. TLS and the network are not included.
//!
//! Run with `scripts/bench-dashboard.sh`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cairn_proto::pb;
use cairn_proto::report::{ResourceReport, ResourceStatus, RunReport, RunSummary};
use cairn_server::nodes::ChannelMoves;
use cairn_server::refusals::Refusals;
use cairn_server::store::{
    self, Actor, Enrollment, NewReport, NewSession, NewSignInLink, NewToken, NewVersion,
    ReportMeta, RunStatus, Store, now_micros,
};
use cairn_server::ui::{UiState, router, session};
use prost::Message;
use tower_service::Service;

// Shared by the benchmarks; this one uses part of it.
#[allow(dead_code)]
mod support;

use support::env_number;

const ROLE: &str = "web";
const CHANNEL: &str = "production";
/// Reports stored per transaction while filling the store.
const BATCH: usize = 1000;
const HOUR: i64 = 3_600_000_000;

fn main() -> ExitCode {
    support::exit(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run())
    })
}

fn node_name(i: u64) -> String {
    format!("node-{i:05}")
}

async fn run() -> Result<()> {
    let nodes = env_number("CAIRN_DASH_NODES", 10_000)?;
    let reports = env_number("CAIRN_DASH_REPORTS", 1_000_000)?;
    let rounds = env_number("CAIRN_DASH_ROUNDS", 20)?.max(1);
    ensure!(nodes > 0, "CAIRN_DASH_NODES must be at least 1");
    let dir = tempfile::tempdir()?;
    let store = store::open(&store::default_url(dir.path())?).await?;
    let admin = Actor {
        name: "bench".into(),
        role: "admin".into(),
        peer: "local".into(),
    };

    let filling = Instant::now();
    for (version, digest) in [(1, "d1"), (2, "d2")] {
        store
            .push(
                NewVersion {
                    role: ROLE.into(),
                    digest: digest.into(),
                    message: format!("version {version}"),
                    bundle: digest.as_bytes().to_vec(),
                },
                &admin,
            )
            .await?;
    }
    store.promote(ROLE, CHANNEL, 2, &admin).await?;
    store
        .create_token(
            NewToken {
                id: "benchtk".into(),
                secret_sha256: "s".into(),
                assignment: store::Assignment {
                    role: ROLE.into(),
                    channel: CHANNEL.into(),
                },
                expires_at: now_micros() + HOUR,
                uses_allowed: nodes as u32,
            },
            &admin,
        )
        .await?;
    for i in 0..nodes {
        store
            .enroll(
                Enrollment {
                    token_id: "benchtk".into(),
                    secret_sha256: "s".into(),
                    name: node_name(i),
                    fingerprint: format!("f{i}"),
                    facts_json: None,
                },
                &admin,
            )
            .await?
            .map_err(|r| anyhow::anyhow!("enrollment refused: {r:?}"))?;
    }
    // Reports round robin over the nodes that report, oldest first, so each
    // node's newest run is among the last.
    let reporting: Vec<u64> = (0..nodes).filter(|i| i % 100 != 99).collect();
    let now = now_micros();
    let span = 48 * HOUR;
    let report = run_report();
    let mut batch = Vec::with_capacity(BATCH);
    for n in 0..reports {
        let i = reporting[(n % reporting.len() as u64) as usize];
        let finished_at = now - span + (span / reports.max(1) as i64) * n as i64;
        let status = match (i % 50, n % 7) {
            (0, _) => RunStatus::Failed,
            (_, 0) => RunStatus::Changed,
            _ => RunStatus::Unchanged,
        };
        batch.push(NewReport {
            meta: ReportMeta {
                id: 0,
                node: node_name(i),
                run_id: format!("run-{n}"),
                role: ROLE.into(),
                channel: CHANNEL.into(),
                role_version: if i % 10 == 1 { 1 } else { 2 },
                role_digest: "d2".into(),
                status,
                noop: false,
                from_cache: false,
                resources: 12,
                changed: u64::from(status == RunStatus::Changed),
                failed: u64::from(status == RunStatus::Failed),
                finished_at,
                received_at: finished_at,
            },
            interval_secs: 1800,
            facts_json: format!(
                "{{\"os\":{{\"id\":\"debian\",\"release\":\"{}\"}},\"hostname\":\"{}\"}}",
                if i.is_multiple_of(3) { 11 } else { 12 },
                node_name(i)
            ),
            report: report.clone(),
        });
        if batch.len() == BATCH {
            store.store_reports(&batch).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.store_reports(&batch).await?;
    }
    println!(
        "filled: {nodes} nodes, {reports} reports in {:.1} s",
        filling.elapsed().as_secs_f64()
    );

    let cookie = sign_in(store.as_ref(), &admin).await?;
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let mut app = router(Arc::new(UiState::new(
        store.clone(),
        Arc::new(Refusals::new(store.clone())),
        Arc::new(ChannelMoves::new(store.clone())),
        stopping,
    )));
    let newest = store
        .reports(&store::ReportQuery {
            limit: 1,
            ..Default::default()
        })
        .await?;
    let report = newest.first().context("no report stored")?.id;
    let middle = node_name(nodes / 2);
    let pages = [
        ("overview", "/".to_string()),
        ("nodes, first page", "/nodes".into()),
        ("nodes, a later page", format!("/nodes?after={middle}")),
        ("nodes, failed", "/nodes?state=failed".into()),
        ("nodes, by fact", "/nodes?fact=os.release%3D11".into()),
        ("node", format!("/nodes/{middle}")),
        ("report", format!("/reports/{report}")),
    ];
    println!(
        "{:<22} {:>12} {:>12} {:>10}",
        "page", "median", "slowest", "bytes"
    );
    for (what, path) in pages {
        let mut times = Vec::with_capacity(rounds as usize);
        let mut size = 0;
        for _ in 0..rounds {
            let req = Request::get(&path)
                .header(header::COOKIE, &cookie)
                .body(Body::empty())?;
            let started = Instant::now();
            let res = app.call(req).await?;
            let status = res.status();
            let body = axum::body::to_bytes(res.into_body(), usize::MAX).await?;
            times.push(started.elapsed());
            ensure!(status == StatusCode::OK, "{path} answered {status}");
            size = body.len();
        }
        times.sort();
        println!(
            "{what:<22} {:>12} {:>12} {size:>10}",
            ms(times[times.len() / 2]),
            ms(*times.last().expect("at least one round"))
        );
    }
    overview_reads(store.as_ref(), rounds).await
}

/// Each of the overview's store reads on its own (the page makes them at
/// once, so it takes as long as the slowest): median and slowest.
async fn overview_reads(store: &dyn Store, rounds: u64) -> Result<()> {
    println!("the overview's reads, each alone:");
    for what in [
        "nodes by state",
        "rollout",
        "runs per hour",
        "last failures",
    ] {
        let mut times = Vec::with_capacity(rounds as usize);
        for _ in 0..rounds {
            let now = now_micros();
            let started = Instant::now();
            match what {
                "nodes by state" => drop(store.state_counts(now).await?),
                "rollout" => drop(store.fleet_status(now).await?),
                "runs per hour" => drop(store.runs_by_hour(now - 24 * HOUR).await?),
                _ => drop(
                    store
                        .reports(&store::ReportQuery {
                            status: Some(RunStatus::Failed),
                            limit: 10,
                            ..Default::default()
                        })
                        .await?,
                ),
            }
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "  {what:<20} {:>12} {:>12}",
            ms(times[times.len() / 2]),
            ms(*times.last().expect("at least one round"))
        );
    }
    Ok(())
}

/// A report of twelve resources, one of them a changed file with its diff:
/// what every stored report holds (the page decodes the one it shows).
fn run_report() -> Vec<u8> {
    let mut resources: Vec<ResourceReport> = (0..12)
        .map(|i| ResourceReport {
            id: format!("file:/etc/app/conf-{i}"),
            status: ResourceStatus::Unchanged,
            changes: vec![],
            diff: None,
            duration_us: 900,
            error: None,
        })
        .collect();
    resources[0].status = ResourceStatus::Changed;
    resources[0].diff =
        Some("--- /etc/app/conf-0\n+++ /etc/app/conf-0\n@@ -1 +1 @@\n-a = 1\n+a = 2\n".into());
    let report = RunReport {
        run_id: "run".into(),
        node: "node".into(),
        role: ROLE.into(),
        role_digest: "d2".into(),
        noop: false,
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: "2026-01-01T00:00:01Z".into(),
        agent_version: "0.1.0".into(),
        channel: CHANNEL.into(),
        role_version: 2,
        from_cache: false,
        summary: RunSummary::of(&resources),
        resources,
    };
    pb::RunReport::from(report).encode_to_vec()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A session for an admin recorded with the fingerprint it signs in with;
/// the `Cookie` header that carries it.
async fn sign_in(store: &dyn Store, admin: &Actor) -> Result<String> {
    store.add_operator("bench", "admin", "fp", admin).await?;
    let (link, secret) = (session::new_secret()?, session::new_secret()?);
    store
        .create_sign_in_link(
            NewSignInLink {
                secret_sha256: session::sha256(&link),
                operator: "bench".into(),
                role: "admin".into(),
                fingerprint: "fp".into(),
                expires_at: now_micros() + HOUR,
            },
            admin,
        )
        .await?;
    store
        .sign_in(
            &session::sha256(&link),
            NewSession {
                secret_sha256: session::sha256(&secret),
                expires_at: now_micros() + HOUR,
            },
            now_micros(),
            "local",
        )
        .await?
        .map_err(|r| anyhow::anyhow!("sign-in refused: {r:?}"))?;
    Ok(format!("{}={secret}", session::COOKIE))
}
