//! Several `cairn-server` processes (replicas) on one PostgreSQL database,
//! and nodes crafted by the test (a key and a CSR made here, the node API
//! called directly), for `replicas.rs` and `standby.rs`.

use std::time::Duration;

use cairn_proto::client::{self, Connection, Credentials};
use cairn_proto::pb;
use rcgen::{CertificateParams, KeyPair};
use tonic::Streaming;
use tonic::transport::Identity;

use super::*;

/// How long a replica gets to tell a watcher of a change made elsewhere
/// (generous: speed is the benchmarks' business; there is no periodic
/// re-read that could bring it instead).
pub const TOLD_WITHIN: Duration = Duration::from_secs(20);
pub const ROLE: &str = "web";
pub const CHANNEL: &str = "stable";

/// Replicas on one database, the first one's data directory holding the CA
/// the others copy.
pub struct Replicas {
    /// Holds every replica's data and work directories.
    _dir: tempfile::TempDir,
    pub servers: Vec<Daemon>,
    /// An admin's credential, naming the first replica.
    pub admin: std::path::PathBuf,
    pub ca_pem: String,
}

impl Replicas {
    /// Starts one replica per database URL (each may log in as another
    /// database user), the first one creating the CA.
    pub fn start(databases: &[String]) -> Replicas {
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
    pub async fn admin(&self, i: usize) -> Connection {
        let creds = Credentials::load(&self.admin).unwrap();
        connect_to(&self.servers[i].url(), &self.ca_pem, Some(&creds)).await
    }

    /// Pushes the role with `content` in its one file through replica `i`
    /// and promotes it; returns the version.
    pub async fn push(&self, i: usize, content: &str) -> u64 {
        self.try_push(i, content).await.unwrap().version
    }

    /// [`Replicas::push`], returning what the replica answered: the version
    /// stored, or why not.
    pub async fn try_push(
        &self,
        i: usize,
        content: &str,
    ) -> Result<pb::VersionInfo, tonic::Status> {
        let role = format!(
            "[role]\nname = \"{ROLE}\"\n\n[[file]]\npath = \"/etc/motd\"\ncontent = \"{content}\"\n"
        );
        let pushed = self
            .admin(i)
            .await
            .roles()
            .push(pb::PushRequest {
                bundle: Some(pb::Bundle {
                    files: vec![file(b"role.toml", role.as_bytes())],
                }),
                message: content.into(),
                promote_to: CHANNEL.into(),
            })
            .await?;
        Ok(pushed.into_inner().version.unwrap())
    }

    /// Enrolls node `name` through replica `i` with a one-use token.
    pub async fn enroll(&self, i: usize, name: &str) -> Node {
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

    pub async fn revoke(&self, i: usize, node: &str) {
        self.admin(i)
            .await
            .access()
            .revoke_node(pb::RevokeNodeRequest { name: node.into() })
            .await
            .unwrap();
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.servers[i].work.join("server.log")).unwrap_or_default()
    }
}

/// An enrolled node: its key and what enrolling got it.
pub struct Node {
    key: KeyPair,
    enrolled: pb::EnrollResponse,
}

impl Node {
    /// Connects to `server` with the node's certificate.
    pub async fn connect(&self, server: &Daemon) -> Connection {
        let id = Identity::from_pem(&self.enrolled.cert_pem, self.key.serialize_pem());
        client::connect(&server.url(), &self.enrolled.ca_pem, Some(id))
            .await
            .unwrap()
    }

    /// Opens the node's watch stream on `server`.
    pub async fn watch(&self, server: &Daemon) -> Streaming<pb::ChannelMoved> {
        self.connect(server)
            .await
            .nodes()
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
pub async fn next(
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
pub async fn next_version(stream: &mut Streaming<pb::ChannelMoved>, what: &str) -> u64 {
    match next(stream, TOLD_WITHIN).await {
        Some(Ok(moved)) => moved.version,
        Some(Err(status)) => panic!("{what}: the watch stream broke: {status:?}"),
        None => panic!("{what}: nothing within {TOLD_WITHIN:?}"),
    }
}
