//! Data in more than one place: a PostgreSQL primary with a synchronous
//! streaming standby (two clusters made with Debian's `pg_createcluster` on
//! loopback ports), and `cairn-server` processes given both addresses. The
//! primary stops and the standby is promoted: the servers find it by
//! themselves, without a restart, and nothing they acknowledged is lost.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cairn_proto::client::Connection;
use cairn_proto::pb;
use cairn_proto::report::{RunReport, RunSummary};
use common::postgres::PgStandbyPair;
use common::replicas::*;
use tonic::Code;

/// How long after the promotion the servers may take to use the new primary.
const FOLLOWED_WITHIN: Duration = Duration::from_secs(30);

/// Sends a report of run `run_id` as the node connected on `node`; returns
/// whether it was new.
async fn report(node: &Connection, name: &str, run_id: &str) -> Result<bool, tonic::Status> {
    let report: pb::RunReport = RunReport {
        run_id: run_id.into(),
        node: name.into(),
        role: ROLE.into(),
        role_digest: "sha256:00".into(),
        noop: false,
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: "2026-01-01T00:00:01Z".into(),
        agent_version: "0.1.0".into(),
        channel: CHANNEL.into(),
        role_version: 1,
        from_cache: false,
        summary: RunSummary::of(&[]),
        resources: vec![],
    }
    .into();
    node.nodes()
        .report(pb::ReportRequest {
            report: Some(report),
            facts_json: "{}".into(),
            interval_secs: 60,
        })
        .await
        .map(|r| r.into_inner().created)
}

fn assert_unreachable(status: &tonic::Status, what: &str) {
    assert!(
        status.code() == Code::Unavailable
            && status
                .message()
                .contains("the server could not reach its database"),
        "{what}: {status:?}"
    );
}

/// The versions of the role, as (number, digest), read through replica `i`.
async fn versions(replicas: &Replicas, i: usize) -> Result<Vec<(u64, String)>, tonic::Status> {
    let listed = replicas
        .admin(i)
        .await
        .roles()
        .versions(pb::VersionsRequest { role: ROLE.into() })
        .await?;
    Ok(listed
        .into_inner()
        .versions
        .into_iter()
        .map(|v| (v.version, v.digest))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_given_both_addresses_follow_the_promoted_standby_and_lose_nothing_acknowledged() {
    let pair = PgStandbyPair::start();
    assert_eq!(pair.sync_state(), "sync", "the standby is synchronous");
    let url = pair.url(&pair.database());
    let replicas = Replicas::start(&[url.clone(), url]);

    // Acknowledged while the primary runs: versions and reports, through both servers.
    let mut acknowledged = Vec::new();
    for (i, content) in ["one", "two", "three"].into_iter().enumerate() {
        let v = replicas.try_push(i % 2, content).await.unwrap();
        acknowledged.push((v.version, v.digest));
    }
    let node = replicas.enroll(0, "web-1").await;
    let mut runs = BTreeSet::new();
    for i in 0..4 {
        let on = node.connect(&replicas.servers[i % 2]).await;
        let run = format!("run-{i}");
        assert!(report(&on, "web-1", &run).await.unwrap(), "{run} is new");
        runs.insert(run);
    }
    let mut watching = node.watch(&replicas.servers[1]).await;
    assert_eq!(next_version(&mut watching, "the current version").await, 3);

    pair.stop_primary();
    // No primary: a push fails, saying why, and stores nothing.
    let refused = replicas.try_push(0, "never stored").await.unwrap_err();
    assert_unreachable(&refused, "a push while no primary runs");

    pair.promote();
    let promoted = Instant::now();
    for i in 0..2 {
        let listed = loop {
            match versions(&replicas, i).await {
                Ok(listed) => break listed,
                // The gap: refused clearly, so agents try another server or their cache.
                Err(status) => assert_unreachable(&status, &format!("server {i} in the gap")),
            }
            assert!(
                promoted.elapsed() < FOLLOWED_WITHIN,
                "server {i} does not answer {FOLLOWED_WITHIN:?} after the promotion; its log:\n{}",
                replicas.log(i)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!(
            "server {i} answers from the new primary {:?} after the promotion",
            promoted.elapsed()
        );
        // Every acknowledged version, with its digest, and nothing else.
        assert_eq!(listed, acknowledged, "server {i}");
        let log = replicas.log(i);
        assert!(
            log.contains("the primary is gone; looking for the new one")
                && log.contains("the primary is now at another address"),
            "server {i}: {log}"
        );
    }
    // Every acknowledged report.
    let stored: BTreeSet<String> = replicas
        .admin(1)
        .await
        .fleet()
        .list_reports(pb::ListReportsRequest {
            node: "web-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reports
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(stored, runs);
    // Written on the new primary, and told to the node watching the other server.
    let four = replicas.try_push(0, "four").await.unwrap();
    assert_eq!(four.version, 4);
    assert_eq!(
        next_version(&mut watching, "a promote after the failover").await,
        4
    );
    let fetched = node
        .connect(&replicas.servers[1])
        .await
        .nodes()
        .fetch(pb::FetchRequest {
            assignment: Some(pb::Assignment {
                role: ROLE.into(),
                channel: CHANNEL.into(),
            }),
            known_digest: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!((fetched.version, fetched.digest), (4, four.digest));
    assert!(
        report(
            &node.connect(&replicas.servers[1]).await,
            "web-1",
            "run-after"
        )
        .await
        .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_given_the_standby_first_uses_the_primary() {
    let pair = PgStandbyPair::start();
    let name = pair.database();
    // The standby alone is refused, saying why: it would refuse every write.
    let err = match cairn_server::store::open(&pair.standby.url(&name)).await {
        Ok(_) => panic!("a standby was opened as the database"),
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    };
    assert!(
        err.contains(&format!(
            "could not connect to the database {name} at 127.0.0.1:{}",
            pair.standby.port()
        )) && err.contains("a standby (in recovery), which refuses writes"),
        "{err}"
    );

    let replicas = Replicas::start(&[pair.url_standby_first(&name)]);
    let pushed = replicas.try_push(0, "one").await.unwrap();
    assert_eq!(pushed.version, 1);
    assert_eq!(
        pair.primary
            .sql_in(&name, "SELECT digest FROM role_versions WHERE version = 1"),
        pushed.digest
    );
    // Its connections are all on the primary.
    let on_standby = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}' AND application_name LIKE 'cairn-server%'"
    );
    assert_eq!(pair.standby.sql(&on_standby), "0");
    assert_ne!(pair.primary.sql(&on_standby), "0");
}
