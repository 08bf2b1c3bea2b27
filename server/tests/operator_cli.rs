//! The operator CLI end to end: the real `cairn` binary against the real
//! `cairn-server` on loopback, with real mutual TLS and the repository's recipes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_proto::bundle::RoleBundle;
use cairn_proto::client::Credentials;
use cairn_proto::facts::Facts;
use common::cli::*;
use common::{Server, add_operator};
use serde_json::Value;

fn recipes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes")
}

fn recipe(name: &str) -> PathBuf {
    recipes().join(name)
}

/// A copy of a recipe that the test may change.
fn copy_recipe(name: &str, into: &Path) -> PathBuf {
    let dst = into.join(name);
    let src = recipe(name);
    for entry in walk(&src) {
        let rel = entry.strip_prefix(&src).unwrap();
        let to = dst.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    dst
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains(from),
        "{} does not contain {from:?}",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn version_numbers(v: &Value) -> Vec<u64> {
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect()
}

#[test]
fn every_recipe_pushes_once_and_shows_its_resources() {
    let server = Server::start();
    let ada = server.operator("ada", "admin");
    let mut names = vec![];
    for entry in std::fs::read_dir(recipes()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("role.toml").is_file() {
            continue;
        }
        let bundle = RoleBundle::from_dir(&dir).unwrap();
        let role = cairn_proto::role::load(&bundle, &Facts::placeholder()).unwrap();
        let dir_arg = dir.to_str().unwrap();

        let out = ok(
            &ada,
            &["role", "push", dir_arg, "-m", "from the repository"],
        );
        assert_eq!(
            out,
            format!("pushed {} version 1 {}\n", role.name, bundle.digest())
        );
        // The same content again stores nothing.
        let out = ok(&ada, &["role", "push", dir_arg]);
        assert_eq!(
            out,
            format!(
                "{} unchanged: version 1 {} has the same content\n",
                role.name,
                bundle.digest()
            )
        );
        let j = json(&ada, &["role", "push", dir_arg]);
        assert_eq!(j["created"], false);
        assert_eq!(j["version"]["version"], 1);
        assert_eq!(j["version"]["digest"], bundle.digest());
        assert_eq!(j["channel"], Value::Null);

        let v = json(&ada, &["role", "versions", &role.name]);
        assert_eq!(version_numbers(&v), [1]);
        assert_eq!(v["versions"][0]["author"], "ada");
        assert_eq!(v["versions"][0]["message"], "from the repository");

        // `show` lists the files and the resources in convergence order, as the agent would load them.
        let s = json(&ada, &["role", "show", &role.name]);
        let ids: Vec<&str> = s["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = role.resources.iter().map(|r| r.id.to_string()).collect();
        assert_eq!(ids, expected, "{}", role.name);
        let files: Vec<(&str, u64)> = s["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["path"].as_str().unwrap(), f["size"].as_u64().unwrap()))
            .collect();
        let expected: Vec<(&str, u64)> = bundle.files().map(|(p, d)| (p, d.len() as u64)).collect();
        assert_eq!(files, expected);
        assert_eq!(s["problems"], serde_json::json!([]));
        let text = ok(&ada, &["role", "show", &format!("{}@1", role.name)]);
        assert!(
            text.starts_with(&format!("role {} version 1\n", role.name)),
            "{text}"
        );
        for r in &role.resources {
            assert!(
                text.contains(&r.id.to_string()),
                "{} missing from:\n{text}",
                r.id
            );
        }
        names.push(role.name);
    }
    assert!(names.len() >= 3, "recipes found: {names:?}");
    names.sort();

    let list = json(&ada, &["role", "list"]);
    let listed: Vec<&str> = list["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, names);
    let table = ok(&ada, &["role", "list"]);
    for n in &names {
        assert!(table.contains(n.as_str()), "{table}");
    }
}

#[test]
fn versions_diff_promote_rollback_channels_and_audit() {
    let server = Server::start();
    let pub_ = server.operator("paula", "publisher");
    let web = copy_recipe("web", &server.work);
    let web_arg = web.to_str().unwrap();

    ok(&pub_, &["role", "push", web_arg, "-m", "v1"]);
    edit(&web.join("role.toml"), "port = 8080", "port = 8081");
    edit(
        &web.join("templates/index.html.hbs"),
        "<h1>",
        "<h1 class=\"status\">",
    );
    std::fs::write(web.join("templates/unused.hbs"), "extra\n").unwrap();
    let out = ok(
        &pub_,
        &["role", "push", web_arg, "-m", "v2", "--promote", "staging"],
    );
    let digest2 = RoleBundle::from_dir(&web).unwrap().digest();
    assert_eq!(
        out,
        format!("pushed web version 2 {digest2}\npromoted web version 2 to staging\n")
    );
    std::fs::remove_file(web.join("templates/unused.hbs")).unwrap();
    let j = json(&pub_, &["role", "push", web_arg, "-m", "v3"]);
    assert_eq!(
        (j["created"].as_bool(), j["version"]["version"].as_u64()),
        (Some(true), Some(3))
    );

    let v = json(&pub_, &["role", "versions", "web"]);
    assert_eq!(version_numbers(&v), [1, 2, 3]);
    let messages: Vec<&str> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["v1", "v2", "v3"]);
    let table = ok(&pub_, &["role", "versions", "web"]);
    assert_eq!(
        table.lines().filter(|l| l.contains("paula")).count(),
        3,
        "{table}"
    );

    // The diff names exactly the changed files, added ones included.
    let diff = ok(&pub_, &["role", "diff", "web", "1", "2"]);
    assert!(
        diff.contains("--- a/role.toml\n+++ b/role.toml\n"),
        "{diff}"
    );
    assert!(diff.contains("\n-port = 8080\n+port = 8081\n"), "{diff}");
    assert!(
        diff.contains(
            "-    <h1>{{vars.title}}</h1>\n+    <h1 class=\"status\">{{vars.title}}</h1>\n"
        ),
        "{diff}"
    );
    assert!(
        diff.contains("--- /dev/null\n+++ b/templates/unused.hbs\n@@ -0,0 +1 @@\n+extra\n"),
        "{diff}"
    );
    assert!(
        !diff.contains("site.conf.hbs"),
        "unchanged file in the diff:\n{diff}"
    );
    let d = json(&pub_, &["role", "diff", "web", "2", "3"]);
    assert_eq!((d["from"].as_u64(), d["to"].as_u64()), (Some(2), Some(3)));
    assert_eq!(d["files"].as_array().unwrap().len(), 1);
    assert_eq!(d["files"][0]["path"], "templates/unused.hbs");
    assert_eq!(d["files"][0]["change"], "removed");
    let same = ok(&pub_, &["role", "diff", "web", "2", "2"]);
    assert_eq!(same, "versions 2 and 2 of role web have the same content\n");
    let err = fails(&pub_, &["role", "diff", "web", "1", "9"]);
    assert!(
        err.contains("could not fetch version 9 of role web"),
        "{err}"
    );
    assert!(err.contains("help: `cairn role list`"), "{err}");

    // Channels: promote twice, roll back once.
    let out = ok(&pub_, &["role", "promote", "web", "1"]);
    assert_eq!(out, "promoted web version 1 to production (new channel)\n");
    let p = json(&pub_, &["role", "promote", "web", "3"]);
    assert_eq!(p["action"], "promote");
    assert_eq!(p["channel"]["version"], 3);
    assert_eq!(p["previous_version"], 1);
    let out = ok(&pub_, &["role", "rollback", "web"]);
    assert_eq!(
        out,
        "rolled back web production to version 1 (was version 3)\n"
    );
    ok(&pub_, &["role", "promote", "web", "2"]);
    let r = json(
        &pub_,
        &["role", "rollback", "web", "--channel", "production"],
    );
    assert_eq!(r["action"], "rollback");
    assert_eq!(r["channel"]["channel"], "production");
    assert_eq!(r["channel"]["version"], 1);
    assert_eq!(r["previous_version"], 2);
    // staging saw a single promotion: there is nothing to go back to.
    let err = fails(&pub_, &["role", "rollback", "web", "--channel", "staging"]);
    assert!(
        err.starts_with("error: could not roll back channel staging of role web\n"),
        "{err}"
    );

    let c = json(&pub_, &["role", "channels", "web"]);
    let production = c["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "production")
        .unwrap();
    assert_eq!(production["version"], 1);
    assert_eq!(production["updated_by"], "paula");
    let history: Vec<(&str, Option<u64>, u64, &str)> = c["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["channel"] == "production")
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["from_version"].as_u64(),
                e["to_version"].as_u64().unwrap(),
                e["actor"].as_str().unwrap(),
            )
        })
        .collect();
    // Newest first.
    assert_eq!(
        history,
        [
            ("rollback", Some(2), 1, "paula"),
            ("promote", Some(1), 2, "paula"),
            ("rollback", Some(3), 1, "paula"),
            ("promote", Some(1), 3, "paula"),
            ("promote", None, 1, "paula"),
        ]
    );
    let table = ok(&pub_, &["role", "channels", "web"]);
    assert!(
        table.contains("production") && table.contains("history, newest first:"),
        "{table}"
    );

    let err = fails(&pub_, &["role", "versions", "nope"]);
    assert!(
        err.starts_with("error: could not list the versions of role nope\n"),
        "{err}"
    );
    assert!(
        err.contains("help: `cairn role list` shows the roles"),
        "{err}"
    );

    // The audit log names who did each of these.
    let a = json(&pub_, &["audit", "--since", "1h"]);
    let done: Vec<(&str, &str, &str)> = a["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "paula" && e["outcome"] == "ok")
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["actor_role"].as_str().unwrap(),
            )
        })
        .collect();
    for action in ["push", "promote", "rollback"] {
        assert!(
            done.iter()
                .any(|(a, t, r)| *a == action && *t == "web" && *r == "publisher"),
            "no {action} by paula in {done:?}"
        );
    }
    assert_eq!(
        done.iter().filter(|(a, ..)| *a == "rollback").count(),
        2,
        "{done:?}"
    );
    let table = ok(&pub_, &["audit"]);
    assert!(
        table.contains("paula") && table.contains("rollback"),
        "{table}"
    );
    // --since reaches the server: nothing is newer than the far future.
    let future = json(&pub_, &["audit", "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(future["entries"], serde_json::json!([]));
    let limited = json(&pub_, &["audit", "--limit", "2"]);
    assert_eq!(limited["entries"].as_array().unwrap().len(), 2);
}

#[test]
fn an_invalid_role_is_refused_with_every_diagnostic_and_nothing_stored() {
    let server = Server::start();
    let ada = server.operator("ada", "admin");
    let web = copy_recipe("web", &server.work);
    let web_arg = web.to_str().unwrap();
    ok(&ada, &["role", "push", web_arg]);

    edit(&web.join("role.toml"), "mode = \"0644\"", "mode = \"0999\"");
    edit(
        &web.join("templates/index.html.hbs"),
        "<title>{{vars.title}}",
        "<title>{{vars.titel}}",
    );
    let manifest = std::fs::read_to_string(web.join("role.toml")).unwrap();
    let line = manifest.lines().position(|l| l.contains("0999")).unwrap() + 1;

    let err = fails(&ada, &["role", "push", web_arg, "-m", "broken"]);
    assert!(
        err.starts_with(&format!("error: could not push role {web_arg}\n")),
        "{err}"
    );
    assert!(
        err.contains(&format!("\nrole.toml:{line}:"))
            && err.contains("field `mode`")
            && err.contains("\"0999\""),
        "no located mode diagnostic in:\n{err}"
    );
    assert!(
        err.contains("\ntemplates/index.html.hbs:3:") && err.contains("vars.titel"),
        "no located template diagnostic in:\n{err}"
    );
    assert!(
        err.ends_with("help: fix the problems above and try again\n"),
        "{err}"
    );
    let v = json(&ada, &["role", "versions", "web"]);
    assert_eq!(version_numbers(&v), [1], "a refused push stored a version");

    // A role with a new name that is refused does not come into existence.
    let other = copy_recipe("postgres", &server.work);
    std::fs::write(
        other.join("role.toml"),
        "[role]\nname = \"ghost\"\n\n[[package]]\nnam = \"x\"\n",
    )
    .unwrap();
    let err = fails(&ada, &["role", "push", other.to_str().unwrap()]);
    assert!(err.contains("role.toml:5:"), "{err}");
    let err = fails(&ada, &["role", "versions", "ghost"]);
    assert!(err.contains("not found"), "{err}");

    // Symbolic links are refused before anything is sent.
    std::os::unix::fs::symlink("/etc/hostname", web.join("templates/link.hbs")).unwrap();
    let err = fails(&ada, &["role", "push", web_arg]);
    assert!(err.contains("symbolic links are not allowed"), "{err}");
}

#[test]
fn operator_roles_decide_who_may_push_and_promote() {
    let server = Server::start();
    let admin = server.operator("ada", "admin");
    let publisher = server.operator("paula", "publisher");
    let auditor = server.operator("otto", "auditor");
    let web = recipe("web");
    let web_arg = web.to_str().unwrap();

    // The auditor reads but cannot change anything.
    let err = fails(&auditor, &["role", "push", web_arg]);
    assert!(
        err.contains("permission denied: operator otto is an auditor and may not push roles"),
        "{err}"
    );
    assert!(err.contains("publisher role"), "{err}");
    assert!(
        err.contains("help: ask an admin for a credential with the role named above"),
        "{err}"
    );

    let out = ok(&publisher, &["role", "push", web_arg]);
    assert!(out.starts_with("pushed web version 1 "), "{out}");
    assert_eq!(json(&auditor, &["role", "list"])["roles"][0]["name"], "web");
    assert_eq!(
        version_numbers(&json(&auditor, &["role", "versions", "web"])),
        [1]
    );
    json(&auditor, &["role", "show", "web@1"]);
    json(&auditor, &["role", "diff", "web", "1", "1"]);

    let err = fails(&auditor, &["role", "promote", "web", "1"]);
    assert!(
        err.contains("operator otto is an auditor and may not"),
        "{err}"
    );
    ok(&publisher, &["role", "promote", "web", "1"]);
    let err = fails(&auditor, &["role", "rollback", "web"]);
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(
        json(&auditor, &["role", "channels", "web"])["channels"][0]["version"],
        1
    );

    // The admin may do what the publisher may.
    let base = recipe("base");
    ok(
        &admin,
        &[
            "role",
            "push",
            base.to_str().unwrap(),
            "--promote",
            "production",
        ],
    );
    let web2 = copy_recipe("web", &server.work);
    edit(&web2.join("role.toml"), "port = 8080", "port = 8082");
    let out = ok(&admin, &["role", "push", web2.to_str().unwrap()]);
    assert!(out.starts_with("pushed web version 2 "), "{out}");
    ok(&admin, &["role", "promote", "web", "2"]);
    let out = ok(&admin, &["role", "rollback", "web"]);
    assert_eq!(
        out,
        "rolled back web production to version 1 (was version 2)\n"
    );
    ok(
        &admin,
        &["role", "promote", "web", "1", "--channel", "staging"],
    );

    // Refusals are audited against the operator who was refused.
    let a = json(&auditor, &["audit"]);
    let refused: Vec<&str> = a["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "otto" && e["outcome"].as_str().unwrap().starts_with("denied"))
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(refused, ["push", "promote", "rollback"]);
}

#[test]
fn credentials_from_another_ca_are_refused() {
    let server = Server::start();
    let ada = server.operator("ada", "admin");
    ok(&ada, &["role", "push", recipe("web").to_str().unwrap()]);

    // Another installation: its own CA, an admin there.
    let elsewhere = tempfile::tempdir().unwrap();
    let eve = add_operator(
        &elsewhere.path().join("data"),
        elsewhere.path(),
        "eve",
        "admin",
        &server.url(),
    );

    // Its CA does not vouch for this server: the CLI refuses to talk.
    let err = fails(&eve, &["role", "list"]);
    assert!(
        err.starts_with(&format!(
            "error: could not connect to cairn-server at {}\n",
            server.url()
        )),
        "{err}"
    );
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("help: "), "{err}");

    // Trusting this server's CA but presenting the other CA's client certificate:
    // the server refuses the handshake.
    let mut mixed = Credentials::load(&eve).unwrap();
    mixed.ca = Credentials::load(&ada).unwrap().ca;
    let mixed_path = elsewhere.path().join("mixed.toml");
    std::fs::write(&mixed_path, mixed.to_toml()).unwrap();
    let err = fails(
        &mixed_path,
        &["role", "push", recipe("base").to_str().unwrap()],
    );
    assert!(err.contains("could not"), "{err}");
    assert!(
        err.contains("it may have refused this credential's certificate"),
        "{err}"
    );

    // Nothing from eve reached the store.
    let list = json(&ada, &["role", "list"]);
    assert_eq!(list["roles"].as_array().unwrap().len(), 1);
    let a = json(&ada, &["audit"]);
    assert!(
        a["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] != "eve"),
        "{a}"
    );
}

#[test]
fn server_url_flag_and_a_stopped_server() {
    let mut server = Server::start();
    let ada = server.operator("ada", "admin");
    let port = server.grpc.port();

    // --server overrides the file; the host must be a name in the server certificate.
    let by_name = format!("https://localhost:{port}");
    json(&ada, &["role", "list", "--server", &by_name]);
    let o = Command::new(CAIRN)
        .env("CAIRN_CREDENTIALS", &ada)
        .env("CAIRN_SERVER", &by_name)
        .args(["role", "list", "--output", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = fails(
        &ada,
        &[
            "role",
            "list",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ],
    );
    assert!(err.contains("must start with https://"), "{err}");

    // A missing credential file says how to get one.
    let err = fails(&server.work.join("none.toml"), &["role", "list"]);
    assert!(err.contains("cairn-server operator add"), "{err}");

    server.stop().expect("the server did not stop cleanly");
    let err = fails(&ada, &["role", "list"]);
    assert!(
        err.starts_with(&format!(
            "error: could not connect to cairn-server at {}\n",
            server.url()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "help: is cairn-server running at {}?",
            server.url()
        )),
        "{err}"
    );
}
