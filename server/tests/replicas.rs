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

use cairn_proto::client::{self, Connection, Credentials};
use cairn_proto::pb;
use common::postgres::PgCluster;
use common::*;
use rcgen::{CertificateParams, KeyPair};
use sqlx::Connection as _;
use tonic::transport::Identity;
use tonic::{Code, Streaming};

/// How long a replica gets to tell a watcher of a change made elsewhere
/// (generous: speed is the benchmarks' business; there is no periodic
/// re-read that could bring it instead).
const TOLD_WITHIN: Duration = Duration::from_secs(20);
const ROLE: &str = "web";
const CHANNEL: &str = "stable";

/// Replicas on one database, the first one's data directory holding the CA
/// the others copy.
struct Replicas {
    /// Holds every replica's data and work directories.
    _dir: tempfile::TempDir,
    servers: Vec<Daemon>,
    /// An admin's credential, naming the first replica.
    admin: std::path::PathBuf,
    ca_pem: String,
}

impl Replicas {
    /// Starts one replica per database URL (each may log in as another
    /// database user), the first one creating the CA.
    fn start(databases: &[String]) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let mut servers: Vec<Daemon> = Vec::new();
        for (i, database) in databases.iter().enumerate() {
            let data = dir.path().join(format!("replica-{i}")).join("data");
            let (grpc, http) = free_ports();
            servers.push(Daemon::start_with(
                &data,
                grpc,
                http,
                "info",
                &["--database", database],
            ));
        }
        let first = &servers[0];
        let admin = add_operator_to(
            Some(&databases[0]),
            &first.data_dir,
            &first.work,
            "ann",
            "admin",
            &first.url(),
        );
        let ca_pem = std::fs::read_to_string(first.data_dir.join("ca.crt")).unwrap();
        Replicas {
            _dir: dir,
            servers,
            admin,
            ca_pem,
        }
    }

    /// The admin, connected to replica `i`.
    async fn admin(&self, i: usize) -> Connection {
        let creds = Credentials::load(&self.admin).unwrap();
        connect_to(&self.servers[i].url(), &self.ca_pem, Some(&creds)).await
    }

    /// Pushes the role with `content` in its one file through replica `i`
    /// and promotes it; returns the version.
    async fn push(&self, i: usize, content: &str) -> u64 {
        let role = format!(
            "[role]\nname = \"{ROLE}\"\n\n[[file]]\npath = \"/etc/motd\"\ncontent = \"{content}\"\n"
        );
        self.admin(i)
            .await
            .roles()
            .push(pb::PushRequest {
                bundle: Some(pb::Bundle {
                    files: vec![file(b"role.toml", role.as_bytes())],
                }),
                message: content.into(),
                promote_to: CHANNEL.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .version
            .unwrap()
            .version
    }

    /// Enrolls node `name` through replica `i` with a one-use token.
    async fn enroll(&self, i: usize, name: &str) -> Node {
        let admin = self.admin(i).await;
        let token = admin
            .access()
            .create_token(pb::CreateTokenRequest {
                role: ROLE.into(),
                channel: CHANNEL.into(),
                ttl_seconds: 600,
                uses: 1,
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        // Enrolling is the one call made without a certificate.
        let enrolled = connect_to(&self.servers[i].url(), &self.ca_pem, None)
            .await
            .enrollment()
            .enroll(pb::EnrollRequest {
                token,
                csr_pem: csr,
                node_name: name.into(),
                facts_json: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        Node { key, enrolled }
    }

    async fn revoke(&self, i: usize, node: &str) {
        self.admin(i)
            .await
            .access()
            .revoke_node(pb::RevokeNodeRequest { name: node.into() })
            .await
            .unwrap();
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.servers[i].work.join("server.log")).unwrap_or_default()
    }
}

/// An enrolled node: its key and what enrolling got it.
struct Node {
    key: KeyPair,
    enrolled: pb::EnrollResponse,
}

impl Node {
    /// Opens the node's watch stream on `server`.
    async fn watch(&self, server: &Daemon) -> Streaming<pb::ChannelMoved> {
        let id = Identity::from_pem(&self.enrolled.cert_pem, self.key.serialize_pem());
        let conn = client::connect(&server.url(), &self.enrolled.ca_pem, Some(id))
            .await
            .unwrap();
        conn.nodes()
            .watch(pb::WatchRequest {
                assignment: Some(pb::Assignment {
                    role: ROLE.into(),
                    channel: CHANNEL.into(),
                }),
            })
            .await
            .unwrap()
            .into_inner()
    }
}

/// The next message of `stream` within `within`: `None` if none came.
async fn next(
    stream: &mut Streaming<pb::ChannelMoved>,
    within: Duration,
) -> Option<Result<pb::ChannelMoved, tonic::Status>> {
    match tokio::time::timeout(within, stream.message()).await {
        Err(_) => None,
        Ok(Ok(Some(moved))) => Some(Ok(moved)),
        Ok(Ok(None)) => panic!("the watch stream ended without a status"),
        Ok(Err(status)) => Some(Err(status)),
    }
}

/// The version the next message of `stream` names, waiting at most [`TOLD_WITHIN`].
async fn next_version(stream: &mut Streaming<pb::ChannelMoved>, what: &str) -> u64 {
    match next(stream, TOLD_WITHIN).await {
        Some(Ok(moved)) => moved.version,
        Some(Err(status)) => panic!("{what}: the watch stream broke: {status:?}"),
        None => panic!("{what}: nothing within {TOLD_WITHIN:?}"),
    }
}

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
