//! The real server over real TLS: bad input at the wire, authentication,
//! durability under SIGKILL, graceful shutdown, health and metrics.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_proto::client::{self, Credentials};
use cairn_proto::pb;
use cairn_proto::pb::roles_client::RolesClient;
use cairn_server::serve::{self, ServeConfig};
use common::*;
use tonic::Code;

fn manifest(name: &str) -> pb::BundleFile {
    file(
        b"role.toml",
        format!("[role]\nname = \"{name}\"\n").as_bytes(),
    )
}

async fn push(
    client: &mut RolesClient<tonic::transport::Channel>,
    files: Vec<pb::BundleFile>,
) -> Result<pb::PushResponse, tonic::Status> {
    client
        .push(pb::PushRequest {
            bundle: Some(pb::Bundle { files }),
            message: "test".into(),
            promote_to: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn malformed_bundles_are_refused_and_the_server_keeps_serving() {
    let server = Server::start();
    let creds = server.operator("pat", "publisher");
    let mut client = connect(&creds).await.roles();

    let cases: Vec<(&str, Vec<pb::BundleFile>, &str)> = vec![
        (
            "dot-dot",
            vec![manifest("x"), file(b"files/../../etc/passwd", b"x")],
            "contains . or ..",
        ),
        (
            "absolute",
            vec![manifest("x"), file(b"/etc/passwd", b"x")],
            "absolute",
        ),
        (
            "not utf-8",
            vec![manifest("x"), file(b"files/\xff\xfe", b"x")],
            "not valid UTF-8",
        ),
        (
            "duplicate",
            vec![manifest("x"), manifest("x")],
            "appears twice",
        ),
    ];
    for (what, files, expect) in cases {
        let err = push(&mut client, files).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(expect), "{what}: {}", err.message());
    }
    // An invalid role is rejected in the response, with its diagnostics.
    let invalid: Vec<(&str, Vec<pb::BundleFile>, &str, &str)> = vec![
        (
            "no manifest",
            vec![file(b"files/a", b"x")],
            "role.toml:0:0",
            "role.toml is missing",
        ),
        (
            "invalid role",
            vec![file(
                b"role.toml",
                b"[role]\nname = \"x\"\n\n[[file]]\npath = \"rel\"\ncontent = \"\"\n",
            )],
            "role.toml:5:8",
            "must be absolute",
        ),
    ];
    for (what, files, location, message) in invalid {
        let resp = push(&mut client, files).await.unwrap();
        assert!(resp.rejected && resp.version.is_none(), "{what}: {resp:?}");
        let d = &resp.diagnostics[0];
        assert_eq!(
            format!("{}:{}:{}", d.file, d.line, d.column),
            location,
            "{what}"
        );
        assert!(d.message.contains(message), "{what}: {d:?}");
    }
    let too_many: Vec<_> = (0..1001)
        .map(|i| file(format!("files/{i}").as_bytes(), b""))
        .collect();
    let err = push(&mut client, too_many).await.unwrap_err();
    assert!(err.message().contains("at most 1000"), "{err:?}");
    let big = vec![manifest("x"), file(b"files/big", &vec![0u8; 17 << 20])];
    let err = push(&mut client, big).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
        ),
        "{err:?}"
    );

    // Nothing was stored, and the server still serves.
    let roles_now = client
        .list(pb::ListRolesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(roles_now.roles.is_empty(), "{roles_now:?}");
    let ok = push(&mut client, bundle_of(&recipes().join("web")).files)
        .await
        .unwrap();
    assert_eq!(ok.version.unwrap().version, 1);
}

#[tokio::test]
async fn requests_without_a_valid_certificate_are_refused() {
    let server = Server::start();
    let creds = server.operator("ann", "admin");
    let ca = Credentials::load(&creds).unwrap().ca;

    // No client certificate: TLS works, the call is refused with a clear status.
    let mut anon = connect_to(&server.url(), &ca, None).await.roles();
    let err = anon.list(pb::ListRolesRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("operator add"), "{err:?}");

    // A certificate from another CA is refused by the handshake.
    let other = Server::start();
    let foreign = Credentials::load(&other.operator("mallory", "admin")).unwrap();
    let refused = match client::connect(&server.url(), &ca, Some(foreign.identity())).await {
        Err(_) => true,
        Ok(conn) => conn.roles().list(pb::ListRolesRequest {}).await.is_err(),
    };
    assert!(refused, "a foreign certificate was accepted");

    // Refusals are audited.
    let mut audit = connect(&creds).await.audit();
    let log = audit
        .list(pb::AuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(
        log.iter()
            .any(|e| e.actor == "anonymous" && e.outcome.starts_with("denied")),
        "{log:?}"
    );
}

/// Regression: input was checked before the caller, so a caller without a
/// certificate sending an empty role name got INVALID_ARGUMENT.
#[tokio::test]
async fn the_caller_is_authorized_before_its_input_is_checked() {
    let server = Server::start();
    let admin = Credentials::load(&server.operator("ann", "admin")).unwrap();
    let auditor = Credentials::load(&server.operator("aud", "auditor")).unwrap();

    // Every call with input no handler accepts: no role name, a bad channel, version 0.
    async fn bad_calls(conn: &client::Connection) -> Vec<(&'static str, tonic::Status)> {
        let mut roles = conn.roles();
        let bad_channel = "Not A Channel!".to_string();
        let calls = [
            (
                "versions",
                roles
                    .versions(pb::VersionsRequest { role: "".into() })
                    .await
                    .map(drop),
            ),
            (
                "get",
                roles
                    .get(pb::GetRoleRequest {
                        role: "".into(),
                        version: 0,
                    })
                    .await
                    .map(drop),
            ),
            (
                "channels",
                roles
                    .channels(pb::ChannelsRequest { role: "".into() })
                    .await
                    .map(drop),
            ),
            (
                "promote",
                roles
                    .promote(pb::PromoteRequest {
                        role: "".into(),
                        version: 0,
                        channel: bad_channel.clone(),
                    })
                    .await
                    .map(drop),
            ),
            (
                "rollback",
                roles
                    .rollback(pb::RollbackRequest {
                        role: "".into(),
                        channel: bad_channel.clone(),
                    })
                    .await
                    .map(drop),
            ),
            (
                "push",
                roles
                    .push(pb::PushRequest {
                        bundle: Some(pb::Bundle {
                            files: vec![file(b"../escape", b"x")],
                        }),
                        message: String::new(),
                        promote_to: bad_channel,
                    })
                    .await
                    .map(drop),
            ),
        ];
        calls
            .into_iter()
            .map(|(what, result)| (what, result.expect_err(what)))
            .collect()
    }

    // The input really is bad: an admin is told so.
    let admin_conn = connect_to(&server.url(), &admin.ca, Some(&admin)).await;
    for (what, status) in bad_calls(&admin_conn).await {
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    // Without a certificate, every call is refused as unauthenticated first.
    let anon = connect_to(&server.url(), &admin.ca, None).await;
    for (what, status) in bad_calls(&anon).await {
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }
    // An auditor may read but not write: the writes are denied before their input is looked at.
    let auditor_conn = connect_to(&server.url(), &auditor.ca, Some(&auditor)).await;
    for (what, status) in bad_calls(&auditor_conn).await {
        let expected = match what {
            "promote" | "rollback" | "push" => Code::PermissionDenied,
            _ => Code::InvalidArgument,
        };
        assert_eq!(status.code(), expected, "{what}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_push_survives_sigkill() {
    acknowledged_pushes_survive_sigkill(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_push_survives_sigkill_on_postgres() {
    let cluster = postgres::PgCluster::start();
    let database = cluster.database();
    acknowledged_pushes_survive_sigkill(Some(&database)).await;
}

/// Pushes in a loop, kills the server, starts it again on the same data (in
/// the data directory, or in `database`), and finds every acknowledged version.
async fn acknowledged_pushes_survive_sigkill(database: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (grpc, http) = free_ports();
    let args: Vec<&str> = database
        .map(|d| ["--database", d])
        .into_iter()
        .flatten()
        .collect();
    let mut server = Daemon::start_with(&data, grpc, http, "info", &args);
    let creds = add_operator_to(
        database,
        &data,
        &server.work,
        "pat",
        "publisher",
        &server.url(),
    );
    let mut client = connect(&creds).await.roles();

    // Push distinct versions in a loop; kill the server mid-stream.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    let pusher = tokio::spawn(async move {
        let mut acked = BTreeMap::new();
        for i in 0.. {
            let files = vec![
                manifest("crash"),
                file(b"files/n", format!("{i}").as_bytes()),
            ];
            match push(&mut client, files).await {
                Ok(r) => {
                    let v = r.version.unwrap();
                    acked.insert(v.version, (i, v.digest));
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
        acked
    });
    // Kill it mid-stream, once pushes are flowing (however slow this machine is).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count.load(std::sync::atomic::Ordering::Relaxed) < 20
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    let acked = pusher.await.unwrap();
    assert!(acked.len() > 5, "only {} pushes acknowledged", acked.len());

    // Restarted on the same ports, so the credential's URL reaches it.
    let _server = Daemon::start_with(&data, grpc, http, "info", &args);
    let mut client = connect(&creds).await.roles();
    for (version, (i, digest)) in &acked {
        let got = client
            .get(pb::GetRoleRequest {
                role: "crash".into(),
                version: *version,
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged version {version} lost: {e:?}"))
            .into_inner();
        assert_eq!(&got.version.unwrap().digest, digest);
        let content = got
            .bundle
            .unwrap()
            .files
            .into_iter()
            .find(|f| f.path == b"files/n")
            .unwrap()
            .content;
        assert_eq!(content, i.to_string().as_bytes());
    }
    // Numbers stay consecutive: nothing half-written took a number.
    let versions: Vec<u64> = client
        .versions(pb::VersionsRequest {
            role: "crash".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    assert!(versions.len() >= acked.len());
    // The versions were where --database said, not in the data directory.
    assert_eq!(
        data.join(cairn_server::store::DEFAULT_DB_FILE).exists(),
        database.is_none()
    );
}

#[test]
fn an_unreachable_postgres_database_is_a_clear_error_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = free_ports();
    // Nothing listens on a port just freed.
    let closed = free_ports().0.port();
    let out = std::process::Command::new(server_bin())
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", &grpc.to_string(), "--http", &http.to_string()])
        .args([
            "--database",
            &format!("postgres://cairn:hunter2@127.0.0.1:{closed}/cairn"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("could not open the database")
            && stderr.contains(&format!(
                "could not connect to the database cairn at 127.0.0.1:{closed}"
            ))
            && stderr.contains("refused"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = free_ports();
    let mut server = Daemon::start_in(&dir.path().join("data"), grpc, http);
    let creds = server.operator("pat", "publisher");
    let mut client = connect(&creds).await.roles();
    push(&mut client, bundle_of(&recipes().join("web")).files)
        .await
        .unwrap();

    let get = |path: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                &format!("http://{}{path}", server.http),
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(get("/healthz").ends_with("200"));
    assert!(get("/readyz").ends_with("200"));
    let metrics = get("/metrics");
    assert!(
        metrics.contains("cairn_role_versions_created_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cairn_grpc_requests_total{method=\"push\",code=\"Ok\"} 1"),
        "{metrics}"
    );

    // SIGTERM with a client still connected: the server drains and exits 0.
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(
        status.success(),
        "SIGTERM should stop the server cleanly: {status:?}"
    );
    drop(client);
}

/// Sends arbitrary bytes as a gRPC message, so a test can send what no
/// well-behaved client would.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[tokio::test]
async fn garbage_messages_are_refused_with_a_status() {
    let server = Server::start();
    let creds = server.operator("pat", "publisher");
    let conn = connect(&creds).await;
    let mut raw = tonic::client::Grpc::new(conn.channel());
    for garbage in [
        vec![0xff; 64],
        b"\x0a\xff\xff\xff\xff\x0f".to_vec(),
        vec![0x12, 0x05, b'a'],
    ] {
        raw.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/cairn.v1.Roles/Push");
        let err = raw
            .unary(tonic::Request::new(garbage.clone()), path, RawCodec)
            .await
            .expect_err("garbage was accepted");
        assert!(
            matches!(err.code(), Code::Internal | Code::InvalidArgument),
            "{garbage:?}: {err:?}"
        );
    }
    // The server keeps serving well-formed requests on the same connection.
    let mut client = conn.roles();
    let ok = push(&mut client, bundle_of(&recipes().join("web")).files)
        .await
        .unwrap();
    assert!(ok.created);
}

#[tokio::test]
async fn a_second_server_on_one_data_directory_is_refused() {
    let server = Server::start();
    let config = ServeConfig::new(
        server.data_dir.clone(),
        cairn_server::store::default_url(&server.data_dir).unwrap(),
        vec!["localhost".into()],
    );
    let err = serve::Server::open(&config)
        .await
        .err()
        .expect("a second server opened the directory");
    assert_eq!(
        format!("{err:#}"),
        format!(
            "another cairn-server is using data directory {}\n  help: stop it first, or give this one its own --data-dir",
            server.data_dir.display()
        )
    );
    // Once the first one stops, the directory is free again.
    drop(server);
    serve::Server::open(&config)
        .await
        .expect("the directory was not released");
}

#[tokio::test]
async fn a_data_directory_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = ServeConfig::new(
        dir.clone(),
        cairn_server::store::default_url(&dir).unwrap(),
        vec!["localhost".into()],
    );
    let err = serve::Server::open(&config)
        .await
        .err()
        .expect("an open data directory was used");
    assert_eq!(
        format!("{err:#}"),
        format!(
            "data directory {0} is open to other users (mode 0755); it holds the CA's private key\n  help: chmod 700 {0}",
            dir.display()
        )
    );
    assert!(
        !dir.join("ca.key").exists() && std::fs::read_dir(&dir).unwrap().next().is_none(),
        "something was written"
    );
}
