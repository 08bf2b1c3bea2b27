//! The push path against hostile input, and what readers get back: the real
//! server over real TLS, the real `cairn` binary where an operator would
//! see the result.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_proto::client::Connection;
use cairn_proto::pb;
use cairn_server::store::{self, Actor};
use common::cli::*;
use common::*;
use prost::Message;
use serde_json::Value;
use tonic::Code;

/// Writes `files` (path, content) as a role directory `work/name`.
fn role_dir(work: &Path, name: &str, files: &[(&str, &str)]) -> String {
    let dir = work.join(name);
    for (path, content) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir.to_str().unwrap().to_string()
}

/// `GET path` on the server's HTTP listener: the status line and body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

/// The value of an unlabelled metric in `/metrics`, 0 when absent.
fn metric(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

async fn audit_outcomes(conn: &Connection, action: &str) -> Vec<String> {
    conn.audit()
        .list(pb::AuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .filter(|e| e.action == action)
        .map(|e| e.outcome)
        .collect()
}

fn request(files: Vec<pb::BundleFile>, message: &str) -> pb::PushRequest {
    pb::PushRequest {
        bundle: Some(pb::Bundle { files }),
        message: message.into(),
        promote_to: String::new(),
    }
}

/// Issue 7: two pushes with 120 KB misspelled ids held both of the server's
/// async workers in validation, and `/healthz` and every other caller
/// waited for them (51 s). Now they are validated on the blocking pool.
#[test]
fn health_and_other_callers_answer_while_hostile_pushes_validate() {
    let server = Server::start();
    let publisher = server.operator("pat", "publisher");
    let auditor = server.operator("aud", "auditor");
    let rt = tokio::runtime::Runtime::new().unwrap();

    // As large as a push may be: about 14 MB of misspelled references.
    let long = "n".repeat(120_000);
    let mut toml = String::from("[role]\nname = \"slow\"\n");
    for i in 0..60 {
        toml.push_str(&format!(
            "\n[[package]]\nname = \"p{i}\"\nrequires = [\"package:{long}{i}\", \"pakage:{long}\"]\n"
        ));
    }
    let pushes: Vec<_> = (0..2)
        .map(|_| {
            let (creds, toml) = (publisher.clone(), toml.clone());
            rt.spawn(async move {
                let conn = connect(&creds).await;
                let files = vec![file(b"role.toml", toml.as_bytes())];
                conn.roles().push(request(files, "")).await
            })
        })
        .collect();

    // Both pushes are admitted (running or waiting for a core), and at least one runs.
    let in_flight = |m: &str| {
        let (running, waiting) = (
            metric(m, "cairn_role_validations_running"),
            metric(m, "cairn_role_validations_waiting"),
        );
        running >= 1 && running + waiting == 2
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !in_flight(&http_get(server.http, "/metrics")) {
        assert!(
            Instant::now() < deadline,
            "the two pushes never showed as validating"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Meanwhile the server answers its health check and another caller.
    let health = http_get(server.http, "/healthz");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    let listed = rt.block_on(async {
        let conn = connect(&auditor).await;
        conn.roles().list(pb::ListRolesRequest {}).await
    });
    assert!(listed.is_ok(), "{listed:?}");
    // Neither push had finished: both answers came while they validated.
    assert!(
        in_flight(&http_get(server.http, "/metrics")),
        "a push finished before the other callers got their answers; the test proves nothing"
    );

    for push in pushes {
        let resp = rt.block_on(push).unwrap().unwrap().into_inner();
        assert!(resp.rejected, "{resp:?}");
        let last = resp.diagnostics.last().unwrap();
        assert!(last.message.contains("more problems not shown"), "{last:?}");
    }
}

/// Issue 7: a role with 300 problems reached the operator as `h2 protocol
/// error`: the diagnostics rode in the `grpc-message` header.
#[test]
fn every_diagnostic_of_a_role_with_300_problems_reaches_the_operator() {
    let server = Server::start();
    let ada = server.operator("ada", "publisher");
    let mut toml = String::from("[role]\nname = \"broken\"\n");
    for i in 0..300 {
        toml.push_str(&format!("\n[[user]]\nname = \"Not A Valid Name {i}\"\n"));
    }
    let dir = role_dir(&server.work, "broken", &[("role.toml", &toml)]);

    let o = cairn(&ada, &["role", "push", &dir]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(o.stdout.is_empty());
    assert!(
        err.starts_with(&format!(
            "error: could not push role {dir}\n  caused by: the role is invalid (more than 100 problems); nothing was stored:\n"
        )),
        "{err}"
    );
    let listed = (0..100)
        .filter(|i| err.contains(&format!("invalid name \"Not A Valid Name {i}\"")))
        .count();
    assert_eq!(listed, 100, "{err}");
    assert!(
        err.contains("role.toml: and 200 more problems not shown\n"),
        "{err}"
    );
    assert!(
        err.ends_with("help: fix the problems above and try again\n"),
        "{err}"
    );

    // Scripts get the same as one JSON document, and the same exit code.
    let o = cairn(&ada, &["role", "push", &dir, "--output", "json"]);
    assert_eq!(o.status.code(), Some(65));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["rejected"], true);
    assert_eq!(j["summary"], "more than 100 problems");
    assert_eq!(j["diagnostics"].as_array().unwrap().len(), 101);
    assert_eq!(j["diagnostics"][0]["line"], 5);
    assert_eq!(j["diagnostics"][0]["field"], "name");

    // Nothing stored; both rejections audited.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = connect(&ada).await;
        let roles = conn.roles().list(pb::ListRolesRequest {}).await.unwrap();
        assert!(roles.into_inner().roles.is_empty());
        assert_eq!(
            audit_outcomes(&conn, "push").await,
            ["rejected: more than 100 problems in the role"; 2]
        );
    });
}

/// Issue 7: paths no file system can hold, and unbounded or control-laden
/// messages, are refused at push, and every such refusal is audited (bundle
/// rejections returned before the audit write).
#[tokio::test]
async fn what_cannot_be_written_to_disk_is_refused_at_push_and_audited() {
    let server = Server::start();
    let creds = server.operator("pat", "publisher");
    let conn = connect(&creds).await;
    let manifest = || file(b"role.toml", b"[role]\nname = \"x\"\n");
    let long_component = format!("files/{}", "c".repeat(256));
    let long_path = format!("files/{}f", "d/".repeat(2100));
    let cases: Vec<(&str, Vec<pb::BundleFile>, String, &str)> = vec![
        (
            "a file that is also a directory",
            vec![manifest(), file(b"files/a", b"1"), file(b"files/a/b", b"2")],
            String::new(),
            "\"files/a\" is a file, and a directory of \"files/a/b\"",
        ),
        (
            "a control character in a path",
            vec![manifest(), file(b"files/a\x1b[2Jb", b"1")],
            String::new(),
            "contains a control character",
        ),
        (
            "a component longer than 255 bytes",
            vec![manifest(), file(long_component.as_bytes(), b"1")],
            String::new(),
            "has a component longer than 255 bytes",
        ),
        (
            "a path longer than 4095 bytes",
            vec![manifest(), file(long_path.as_bytes(), b"1")],
            String::new(),
            "is longer than 4095 bytes",
        ),
        (
            "a message longer than 4 KiB",
            vec![manifest()],
            "m".repeat(4097),
            "the message is 4097 bytes long; at most 4096 are accepted",
        ),
        (
            "a control character in the message",
            vec![manifest()],
            "fix\u{1b}]0;owned\u{7}".into(),
            "the message contains a control character",
        ),
        (
            "too many files",
            (0..1001)
                .map(|i| file(format!("files/{i}").as_bytes(), b""))
                .collect(),
            String::new(),
            "at most 1000 are accepted",
        ),
    ];
    for (what, files, message, expect) in &cases {
        let err = conn
            .roles()
            .push(request(files.clone(), message))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(expect), "{what}: {}", err.message());
    }
    let outcomes = audit_outcomes(&conn, "push").await;
    assert_eq!(outcomes.len(), cases.len(), "{outcomes:#?}");
    for ((what, _, _, expect), outcome) in cases.iter().zip(&outcomes) {
        assert!(
            outcome.starts_with("rejected: ") && outcome.contains(expect),
            "{what}: {outcome}"
        );
    }

    // A message of 4 KiB with lines and tabs is fine.
    let message = "line\n\tindented.\n".repeat(256);
    assert_eq!(message.len(), 4096);
    let resp = conn
        .roles()
        .push(request(vec![manifest()], &message))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.version.unwrap().message, message);
}

const SECRETS: [&str; 3] = ["hunter2-inline", "PRIVATE-KEY-source", "db-pass-template"];

/// Version `n` of a role with a secret in each place content comes from.
fn secret_role(work: &Path, n: u32) -> String {
    let toml = format!(
        "[role]\nname = \"db\"\n\n\
         [[file]]\npath = \"/etc/db/password\"\ncontent = \"{}-{n}\"\nsensitive = true\n\n\
         [[file]]\npath = \"/etc/db/key\"\nsource = \"key\"\nsensitive = true\n\n\
         [[file]]\npath = \"/etc/db/conf\"\ntemplate = \"conf.hbs\"\nsensitive = true\n\n\
         [[file]]\npath = \"/etc/motd\"\nsource = \"motd\"\n",
        SECRETS[0]
    );
    let key = format!("{}-{n}\n", SECRETS[1]);
    let conf = format!("host={{{{facts.hostname}}}}\npassword={}-{n}\n", SECRETS[2]);
    let motd = format!("public motd {n}\n");
    role_dir(
        work,
        &format!("db{n}"),
        &[
            ("role.toml", &toml),
            ("files/key", &key),
            ("templates/conf.hbs", &conf),
            ("files/motd", &motd),
        ],
    )
}

fn holds_secret(text: &str) -> Option<&'static str> {
    SECRETS.into_iter().find(|s| text.contains(s))
}

/// Issue 7: an auditor's `cairn role diff` printed `sensitive = true`
/// content. The server now redacts it in `Get` for callers below publisher;
/// it never logs content either.
#[test]
fn sensitive_content_is_redacted_for_readers_below_publisher() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = free_ports();
    let mut server = Daemon::start_in(&dir.path().join("data"), grpc, http);
    let publisher = server.operator("pat", "publisher");
    let auditor = server.operator("aud", "auditor");
    for n in [1, 2] {
        ok(&publisher, &["role", "push", &secret_role(&server.work, n)]);
    }

    // What an auditor can print: no secret, and it says what was redacted.
    let show = ok(&auditor, &["role", "show", "db@2"]);
    assert_eq!(holds_secret(&show), None, "{show}");
    assert!(
        show.contains("files/key") && show.contains("redacted: sensitive; a publisher can read it"),
        "{show}"
    );
    assert!(show.contains("4 resources"), "{show}");
    let show_json = ok(&auditor, &["role", "show", "db", "--output", "json"]);
    assert_eq!(holds_secret(&show_json), None, "{show_json}");
    let diff = ok(&auditor, &["role", "diff", "db", "1", "2"]);
    assert_eq!(holds_secret(&diff), None, "{diff}");
    assert!(diff.contains("+public motd 2"), "{diff}");
    assert!(
        diff.ends_with(
            "not compared (redacted: sensitive; a publisher can read it): files/key, role.toml, templates/conf.hbs\n"
        ),
        "{diff}"
    );
    let diff_json = ok(
        &auditor,
        &["role", "diff", "db", "1", "2", "--output", "json"],
    );
    assert_eq!(holds_secret(&diff_json), None, "{diff_json}");

    // The call itself: every file, and the digest of what is stored.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get = |creds: &Path| {
        rt.block_on(async {
            let conn = connect(creds).await;
            let req = pb::GetRoleRequest {
                role: "db".into(),
                version: 2,
            };
            conn.roles().get(req).await.unwrap().into_inner()
        })
    };
    let (full, redacted) = (get(&publisher), get(&auditor));
    let all = |r: &pb::GetRoleResponse| String::from_utf8_lossy(&r.encode_to_vec()).into_owned();
    assert_eq!(holds_secret(&all(&redacted)), None);
    assert_eq!(
        redacted.redacted,
        ["files/key", "role.toml", "templates/conf.hbs"]
    );
    assert_eq!(
        redacted.version, full.version,
        "the digest is the stored one"
    );
    assert_eq!(
        redacted.bundle.as_ref().unwrap().files.len(),
        full.bundle.as_ref().unwrap().files.len()
    );

    // A publisher reads everything.
    assert!(full.redacted.is_empty());
    for secret in SECRETS {
        assert!(all(&full).contains(&format!("{secret}-2")), "{secret}");
    }
    let diff = ok(&publisher, &["role", "diff", "db", "1", "2"]);
    for secret in SECRETS {
        assert!(diff.contains(&format!("{secret}-2")), "{secret}: {diff}");
    }
    assert!(!diff.contains("not compared"), "{diff}");

    // The server's log never held file content.
    server.terminate();
    let log = std::fs::read_to_string(server.work.join("server.log")).unwrap();
    assert!(log.contains("version stored"), "{log}");
    assert_eq!(holds_secret(&log), None, "{log}");
}

/// Issue 7: a role name, message or author stored with an escape sequence
/// (before pushes refused them, or written by another tool) reached the
/// operator's terminal raw.
#[test]
fn stored_text_with_escape_sequences_prints_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_in(&data);
    server.stop().unwrap();
    drop(server);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = store::open(&store::default_url(&data).unwrap())
            .await
            .unwrap();
        let bundle =
            cairn_proto::role::bundle_from_files([("role.toml", "[role]\nname = \"web\"\n")]);
        let actor = Actor {
            name: "eve\u{1b}[2J".into(),
            role: "publisher".into(),
            peer: "127.0.0.1:1".into(),
        };
        let new = store::NewVersion {
            role: "web\u{1b}]0;owned\u{7}".into(),
            digest: bundle.digest(),
            message: "fix\u{1b}[1A\u{1b}[2Kapproved by security".into(),
            bundle: bundle.to_wire().encode_to_vec(),
        };
        store.push(new, &actor).await.unwrap();
    });
    let server = Server::start_in(&data);
    let ada = server.operator("ada", "admin");

    let role = "web\u{1b}]0;owned\u{7}";
    // Each command, with the stored text it prints.
    let cases: [(Vec<&str>, &[&str]); 3] = [
        (
            vec!["role", "list"],
            &["web\\u{1b}]0;owned\\u{7}", "eve\\u{1b}[2J"],
        ),
        (
            vec!["role", "versions", role],
            &["eve\\u{1b}[2J", "fix\\u{1b}[1A\\u{1b}[2Kapproved"],
        ),
        (
            vec!["role", "show", role],
            &[
                "role web\\u{1b}]0;owned\\u{7} version 1",
                "eve\\u{1b}[2J",
                "fix\\u{1b}[1A\\u{1b}[2Kapproved",
            ],
        ),
    ];
    for (args, shown) in cases {
        let out = ok(&ada, &args);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}'),
            "{args:?}: {out:?}"
        );
        for s in shown {
            assert!(out.contains(s), "{args:?}: {s} not in\n{out}");
        }
    }
    // Errors quoting the server's message too.
    let o = cairn(&ada, &["role", "versions", "nope\u{1b}[2J"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains('\u{1b}') && err.contains("nope\\u{1b}[2J"),
        "{err:?}"
    );
}
