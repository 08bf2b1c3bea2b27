//! Several `cairn-server` processes (replicas) on one PostgreSQL database, a
//! throwaway cluster on loopback: a node watching one replica is told of a
//! promote or rollback made through another, and its stream ends when it is
//! revoked through another; a replica whose listening connection was cut
//! off while a change happened reads it again once it is back.
//!
//! Nodes here are crafted clients (a key and a CSR made by the test, the
//! node API called directly); the real agent against replicas is in
//! `tests/tests/replicas.rs`.

mod common;

use std::time::{Duration, Instant};

use cairn_proto::pb;
use common::postgres::PgCluster;
use common::replicas::*;
use sqlx::Connection as _;
use tonic::{Code, Streaming};

/// The status a revoked node's stream ends with, within [`TOLD_WITHIN`].
async fn ended(stream: &mut Streaming<pb::ChannelMoved>, what: &str) -> tonic::Status {
    match next(stream, TOLD_WITHIN).await {
        Some(Err(status)) => status,
        Some(Ok(moved)) => panic!("{what}: still told of version {}", moved.version),
        None => panic!("{what}: not ended within {TOLD_WITHIN:?}"),
    }
}

fn assert_revoked(status: &tonic::Status, node: &str) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("node {node} was revoked")),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_or_rollback_through_one_replica_reaches_watchers_of_the_others() {
    let cluster = PgCluster::start();
    let database = cluster.database();
    let replicas = Replicas::start(&[database.clone(), database.clone(), database]);
    assert_eq!(replicas.push(0, "one").await, 1);
    let node = replicas.enroll(0, "web-1").await;
    let mut on_b = node.watch(&replicas.servers[1]).await;
    let mut on_c = node.watch(&replicas.servers[2]).await;
    assert_eq!(next_version(&mut on_b, "B's current version").await, 1);
    assert_eq!(next_version(&mut on_c, "C's current version").await, 1);

    let promoted = Instant::now();
    assert_eq!(replicas.push(0, "two").await, 2);
    assert_eq!(
        next_version(&mut on_b, "a promote through A, on B").await,
        2
    );
    eprintln!(
        "promote through A, told on B: {:?} after the push was sent",
        promoted.elapsed()
    );
    assert_eq!(
        next_version(&mut on_c, "a promote through A, on C").await,
        2
    );

    // A rollback through C: back to 1 on B, and on C, which made it.
    replicas
        .admin(2)
        .await
        .roles()
        .rollback(pb::RollbackRequest {
            role: ROLE.into(),
            channel: CHANNEL.into(),
        })
        .await
        .unwrap();
    assert_eq!(
        next_version(&mut on_b, "a rollback through C, on B").await,
        1
    );
    assert_eq!(
        next_version(&mut on_c, "a rollback through C, on C").await,
        1
    );
    // Told once each, though C heard it from its handler and from the database.
    assert!(next(&mut on_c, Duration::from_secs(1)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_revoked_through_one_replica_has_its_watch_on_another_ended() {
    let cluster = PgCluster::start();
    let database = cluster.database();
    let replicas = Replicas::start(&[database.clone(), database]);
    replicas.push(0, "one").await;
    let gone = replicas.enroll(0, "web-1").await;
    let stays = replicas.enroll(1, "web-2").await;
    let mut gone_on_b = gone.watch(&replicas.servers[1]).await;
    let mut stays_on_b = stays.watch(&replicas.servers[1]).await;
    assert_eq!(next_version(&mut gone_on_b, "web-1's current").await, 1);
    assert_eq!(next_version(&mut stays_on_b, "web-2's current").await, 1);

    replicas.revoke(0, "web-1").await;
    assert_revoked(&ended(&mut gone_on_b, "web-1 on B").await, "web-1");
    // Another node's stream is not ended: it hears the next promote.
    replicas.push(0, "two").await;
    assert_eq!(next_version(&mut stays_on_b, "web-2 on B").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_replica_missed_while_cut_off_from_the_database_reaches_its_watchers_once_it_is_back()
 {
    let cluster = PgCluster::start();
    let database = cluster.database();
    // B logs in as a user of its own, so that it alone can be kept out.
    let mut sql = sqlx::PgConnection::connect(&database).await.unwrap();
    sqlx::query("CREATE ROLE replica_b LOGIN SUPERUSER")
        .execute(&mut sql)
        .await
        .unwrap();
    let as_b = database.replacen("postgres@", "replica_b@", 1);
    assert_ne!(as_b, database);
    let replicas = Replicas::start(&[database, as_b]);
    let b = &replicas.servers[1];
    replicas.push(0, "one").await;
    let watcher = replicas.enroll(0, "web-1").await;
    let revoked = replicas.enroll(0, "web-2").await;
    let mut watching = watcher.watch(b).await;
    let mut to_end = revoked.watch(b).await;
    assert_eq!(next_version(&mut watching, "web-1's current").await, 1);
    assert_eq!(next_version(&mut to_end, "web-2's current").await, 1);

    // B's listening connection is cut, and B may not connect again: a
    // promote and a revocation meanwhile are not told to it.
    sqlx::query("ALTER ROLE replica_b NOLOGIN")
        .execute(&mut sql)
        .await
        .unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE usename = 'replica_b' AND application_name = 'cairn-server changes'",
    )
    .fetch_all(&mut sql)
    .await
    .unwrap();
    assert_eq!(cut, [true], "B's one listening connection");
    replicas.push(0, "two").await;
    replicas.revoke(0, "web-2").await;
    assert!(
        next(&mut watching, Duration::from_secs(3)).await.is_none(),
        "B told of the promote without listening: this test would prove nothing"
    );
    assert!(
        next(&mut to_end, Duration::from_millis(100))
            .await
            .is_none()
    );

    // Back: B reads the channel and its nodes again.
    sqlx::query("ALTER ROLE replica_b LOGIN")
        .execute(&mut sql)
        .await
        .unwrap();
    assert_eq!(next_version(&mut watching, "the missed promote").await, 2);
    assert_revoked(&ended(&mut to_end, "the missed revocation").await, "web-2");
    let log = replicas.log(1);
    assert!(
        log.contains("lost the connection listening for other servers' changes"),
        "{log}"
    );
    assert!(
        log.contains("listening for other servers' changes again"),
        "{log}"
    );
}
