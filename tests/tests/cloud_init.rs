//! A first boot with real cloud-init, the whole story: the real
//! `cairn-server` on loopback with a role pushed and promoted and a join
//! token made; a Debian machine gets only a NoCloud seed whose user-data is
//! the example of `docs/cloud-init.md`, placeholders filled in. cloud-init
//! fetches the statically linked agent, checks its checksum, installs it,
//! enrolls the node, converges the role and leaves the daemon running; the
//! server lists the node and its reports, and a promote reaches the daemon
//! through its watch. And the static agent itself: statically linked, and it
//! runs.
//!
//! A second machine, booted the same way with the first of its two servers
//! down, goes through what a node must survive and what it must not get:
//! failover (it enrolls, converges and watches through the second server); an
//! outage (`cairn-agent run` converges from its cache, correcting drift, and
//! spools its report, delivered once when the server is back); enrollments
//! with a wrong CA pin, a used token and an expired token; and a revocation
//! (the daemon's watch stream ends at once, its next run is refused). Each
//! refusal the server sees is in `cairn audit`. Refusals no honest agent can
//! provoke (asking for another role, posting another node's report) are
//! proven with a crafted client in `server/tests/fleet.rs`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_e2e::{
    FirstBoot, Machine, Operator, Server, cloud_init_image_dir, down_server_url,
    static_agent_binary, wait_for,
};
use serde_json::Value;

const ROLE: &str = "first-boot";
const CHANNEL: &str = "production";
/// The file the role renders from `facts.cloud`.
const MANAGED: &str = "/etc/cairn-cloud.txt";

/// Writes the role into `dir`: [`MANAGED`] rendered from `facts.cloud`,
/// its first line saying which `release` of the role made it.
fn write_role(dir: &Path, release: u32) {
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("role.toml"),
        format!(
            "[role]\nname = \"{ROLE}\"\n\n[[file]]\npath = \"{MANAGED}\"\ntemplate = \"cloud.txt\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("templates/cloud.txt"),
        format!(
            "release={release}\n{{{{#if facts.cloud}}}}cloud_id={{{{facts.cloud.cloud_id}}}} \
             platform={{{{facts.cloud.platform}}}} instance_id={{{{facts.cloud.instance_id}}}} \
             local_hostname={{{{facts.cloud.local_hostname}}}} region={{{{facts.cloud.region}}}}\
             {{{{else}}}}no cloud-init{{{{/if}}}}\n"
        ),
    )
    .unwrap();
}

#[test]
fn the_cloud_init_image_is_fresh_and_reads_only_nocloud() {
    let image = cloud_init_image_dir();
    let read = |path: &str| std::fs::read_to_string(image.join(path)).unwrap_or_default();
    assert_eq!(
        read("etc/machine-id"),
        "",
        "systemd makes up the machine id at boot"
    );
    let cfg = read("etc/cloud/cloud.cfg.d/90-cairn-test.cfg");
    assert!(
        cfg.contains("datasource_list: [ NoCloud, None ]") && cfg.contains("locale: C.UTF-8"),
        "{cfg}"
    );
    assert!(
        !image.join("var/lib/cloud").exists(),
        "no cloud-init state: every machine is a first boot"
    );
    let lists: Vec<_> = std::fs::read_dir(image.join("var/lib/apt/lists"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "partial" && n != "lock")
        .collect();
    assert!(
        lists.is_empty(),
        "package lists left in the image: {lists:?}"
    );
}

#[test]
fn the_static_agent_is_statically_linked_and_runs() {
    let agent = static_agent_binary();
    let file = Command::new("file").arg(&agent).output().unwrap();
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "{file}"
    );
    let ldd = Command::new("ldd").arg(&agent).output().unwrap();
    let ldd = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(ldd.contains("statically linked"), "ldd says: {ldd}");
    let version = Command::new(&agent).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("cairn-agent "),
        "{version:?}"
    );
}

#[test]
fn the_documented_user_data_installs_the_agent_and_converges_on_first_boot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let ops = server.add_operator("ops", &dir.path().join("ops.toml"));
    let role = dir.path().join("role");
    write_role(&role, 1);
    assert_eq!(ops.push(&role, "first", CHANNEL), 1);
    let boot = FirstBoot::new(
        &server,
        &ops,
        (ROLE, CHANNEL),
        &[server.url()],
        "cairn-first-boot",
    );
    let (seed, ca_pin) = (&boot.seed, &boot.ca_pin);
    let m = Machine::boot_cloud_init("cloud-init", seed, &[]);

    let log = m.cloud_init_output();
    let status = m.cloud_init_status();
    assert!(
        status.contains("status: done"),
        "cloud-init did not succeed:\n{status}\nuser-data:\n{}\ncloud-init-output.log:\n{log}\n\
         the server's log:\n{}",
        seed.user_data,
        server.log()
    );

    // write_files: the agent's configuration; runcmd: the agent served on
    // loopback, checked and installed, enrolled (which deleted the token).
    assert!(
        m.sh_ok("cat /etc/cairn/agent.toml")
            .contains(&format!("ca_pin = \"{ca_pin}\""))
    );
    assert_eq!(
        m.sh_ok("sha256sum /usr/local/bin/cairn-agent")[..64],
        *boot.downloads.agent_sha256()
    );
    assert_eq!(
        m.sh("test -e /etc/cairn/token").status.code(),
        Some(1),
        "enrollment deletes the join token"
    );
    assert_eq!(m.sh_ok("hostname").trim(), "cairn-first-boot");

    // The first run converged, printing its progress into cloud-init's log,
    // one line per resource and nothing transient.
    assert!(
        log.contains(&format!("changed      file:{MANAGED} ("))
            && log.contains(&format!("Applied role {ROLE} (")),
        "{log}"
    );
    assert!(!log.contains(['\r', '\x1b']), "{log:?}");
    let rendered = |release: u32| {
        format!(
            "release={release}\ncloud_id=nocloud platform=nocloud instance_id={} \
             local_hostname=cairn-first-boot region=\n",
            seed.instance_id
        )
    };
    assert_eq!(m.sh_ok(&format!("cat {MANAGED}")), rendered(1));

    // The daemon runs, from the unit the user-data downloaded.
    assert_eq!(m.sh_ok("systemctl is-active cairn-agent").trim(), "active");
    let journal = || m.sh_ok("journalctl -u cairn-agent --no-pager -o cat");

    // The server knows the node: its role, and its newest run, converged.
    let nodes = ops.cairn_json(&["node", "list"]);
    let nodes = nodes["nodes"].as_array().expect("a node list");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let node = &nodes[0];
    let name = node["name"].as_str().unwrap();
    assert!(name.ends_with("cairn-first-boot"), "{node}");
    assert_eq!(node["role"], ROLE, "{node}");
    assert_eq!(node["channel"], CHANNEL, "{node}");
    assert_eq!(node["stale"], false, "{node}");
    let last = &node["last_run"];
    assert_eq!(last["role_version"], 1, "{node}");
    assert!(
        matches!(last["status"].as_str(), Some("changed" | "unchanged")),
        "{node}"
    );
    assert_eq!(last["from_cache"], false, "{node}");

    // Its first report, the run in cloud-init, changed the file.
    let reports = ops.cairn_json(&["report", "list", "--node", name]);
    let first = reports["reports"]
        .as_array()
        .and_then(|r| r.last())
        .unwrap_or_else(|| panic!("no reports: {reports}"));
    let id = first["id"].as_u64().unwrap().to_string();
    let shown = ops.cairn_json(&["report", "show", &id]);
    assert_eq!(shown["summary"]["status"], "changed", "{shown}");
    assert_eq!(shown["report"]["role_version"], 1, "{shown}");
    let resources = shown["report"]["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 1, "{shown}");
    assert_eq!(resources[0]["id"], format!("file:{MANAGED}"), "{shown}");
    assert_eq!(resources[0]["status"], "changed", "{shown}");
    let human = ops.cairn(&["report", "show", &id]);
    assert!(human.contains(&format!("file:{MANAGED}")), "{human}");

    // A promote reaches the daemon through its watch: the interval is the
    // default half hour, and its first run was at start.
    write_role(&role, 2);
    let promoted = Instant::now();
    assert_eq!(ops.push(&role, "second", CHANNEL), 2);
    let deadline = promoted + Duration::from_secs(60);
    while m.sh_ok(&format!("cat {MANAGED}")) != rendered(2) {
        assert!(
            Instant::now() < deadline,
            "{MANAGED} never moved to release 2; the agent's journal:\n{}",
            journal()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = promoted.elapsed();
    let journal = journal();
    assert!(
        journal.contains(&format!(
            "role {ROLE} at channel {CHANNEL} moved to version 2"
        )),
        "{journal}"
    );
    assert!(journal.contains("a run every 1800s"), "{journal}");
    eprintln!("promote to converged: {took:?}");
    wait_for("a report of version 2", Duration::from_secs(60), || {
        ops.cairn_json(&["node", "list"])["nodes"][0]["last_run"]["role_version"] == 2
    });

    // `cairn-agent facts` shows what cloud-init wrote.
    let (code, out, err) = m.agent(&["facts"]);
    assert_eq!(code, 0, "{err}");
    let facts: Value = serde_json::from_str(&out).unwrap();
    let cloud = &facts["cloud"];
    assert_eq!(cloud["instance_id"], seed.instance_id.as_str(), "{out}");
    assert_eq!(cloud["cloud_id"], "nocloud", "{out}");
    assert_eq!(cloud["platform"], "nocloud", "{out}");
    assert_eq!(cloud["local_hostname"], "cairn-first-boot", "{out}");
    assert_eq!(cloud["region"], "", "{out}");
}

/// The audit entries whose `target` or `actor` is `who`, as
/// (action, outcome), oldest first (`cairn audit`).
fn audited(ops: &Operator, who: &str) -> Vec<(String, String)> {
    let log = ops.cairn_json(&["audit"]);
    log["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no audit entries in {log}"))
        .iter()
        .filter(|e| e["target"] == who || e["actor"] == who)
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (text("action"), text("outcome"))
        })
        .collect()
}

/// Waits, with a generous deadline, until the daemon's journal says `what`
/// `times` times.
fn wait_for_journal(m: &Machine, what: &str, times: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let journal = m.sh_ok("journalctl -u cairn-agent --no-pager -o cat");
        if journal.matches(what).count() >= times {
            return journal;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon's journal never said {what:?} {times} times:\n{journal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_booted_node_fails_over_survives_an_outage_and_is_refused_what_it_may_not_have() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let ops = server.add_operator("ops", &dir.path().join("ops.toml"));
    let role = dir.path().join("role");
    write_role(&role, 1);
    assert_eq!(ops.push(&role, "first", CHANNEL), 1);
    let down = down_server_url();
    let url = server.url();
    let boot = FirstBoot::new(
        &server,
        &ops,
        (ROLE, CHANNEL),
        &[down.clone(), url.clone()],
        "cairn-outage",
    );
    let m = Machine::boot_cloud_init("cloud-init-outage", &boot.seed, &[]);
    let status = m.cloud_init_status();
    assert!(
        status.contains("status: done"),
        "cloud-init did not succeed:\n{status}\ncloud-init-output.log:\n{}\nthe server's log:\n{}",
        m.cloud_init_output(),
        server.log()
    );

    // Failover: enrolled, converged and reported, and the daemon watches,
    // all through the second server.
    let config = m.sh_ok("cat /etc/cairn/agent.toml");
    assert!(
        config.contains(&format!("servers = [\"{down}\", \"{url}\"]")),
        "{config}"
    );
    let nodes = ops.cairn_json(&["node", "list"]);
    let node = &nodes["nodes"][0];
    let name = node["name"].as_str().unwrap_or_else(|| panic!("{nodes}"));
    assert_eq!(node["last_run"]["role_version"], 1, "{node}");
    assert_eq!(node["last_run"]["from_cache"], false, "{node}");
    let watching = format!("watching for new versions at {url}");
    wait_for_journal(&m, &watching, 1);
    let rendered = m.sh_ok(&format!("cat {MANAGED}"));
    assert!(rendered.starts_with("release=1\n"), "{rendered}");

    // Enrollments the server must not grant, each in a state directory of
    // its own (the node's identity stays as it is).
    let enroll = |token: &str, pin: &str, name: &str| {
        m.write_file("/root/probe/token", token);
        m.agent(&[
            "enroll",
            "--server",
            &url,
            "--ca-pin",
            pin,
            "--token-file",
            "/root/probe/token",
            "--name",
            name,
            "--state-dir",
            "/root/probe",
        ])
    };
    // A wrong pin: the handshake fails, so the token is never sent (the
    // refusal is the node's: the server sees no call) and is kept.
    let fresh = ops.token(ROLE, CHANNEL);
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let (code, _, err) = enroll(&fresh, &wrong_pin, "probe-wrong-pin");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not the one pinned"), "{err}");
    m.sh_ok("test -s /root/probe/token");
    let tokens = ops.cairn_json(&["token", "list"]);
    let id = fresh.split('.').next().unwrap();
    let listed = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("token {id} not in {tokens}"));
    assert_eq!(listed["uses_used"], 0, "{listed}");
    assert!(audited(&ops, "probe-wrong-pin").is_empty());
    // The token cloud-init used, again; and a token that expired.
    let (code, _, err) = enroll(&boot.token, &boot.ca_pin, "probe-used");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is used up"), "{err}");
    let short = ops.cairn_json(&[
        "token",
        "create",
        "--role",
        ROLE,
        "--channel",
        CHANNEL,
        "--ttl",
        "1s",
    ]);
    std::thread::sleep(Duration::from_millis(1100));
    let (code, _, err) = enroll(
        short["token"].as_str().unwrap(),
        &boot.ca_pin,
        "probe-expired",
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("expired at"), "{err}");
    m.sh_ok("test ! -e /root/probe/node.toml && test -s /root/probe/token");
    for (target, action, says) in [
        ("probe-used", "enroll (used-up token)", "is used up"),
        ("probe-expired", "enroll (expired token)", "expired at"),
    ] {
        let entries = audited(&ops, target);
        assert!(
            entries
                .iter()
                .any(|(a, o)| a == action && o.starts_with("denied: ") && o.contains(says)),
            "{target}: {entries:?}"
        );
    }

    // An outage: no daemon, no server, and the node drifts. `run` converges
    // from the cache and spools its report.
    m.sh_ok("systemctl stop cairn-agent");
    server.stop();
    m.sh_ok(&format!("echo drifted > {MANAGED}"));
    let run = || {
        let (code, out, err) = m.agent(&["run", "--format", "json"]);
        let report: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("no report ({e}); exit {code}\n{out}\n{err}"));
        (code, report, err)
    };
    let (code, cached, err) = run();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        m.sh_ok(&format!("cat {MANAGED}")),
        rendered,
        "drift corrected"
    );
    assert_eq!(cached["from_cache"], true, "{cached}");
    assert_eq!(cached["summary"]["changed"], 1, "{cached}");
    assert!(
        err.contains("cached role") && err.contains(&down) && err.contains(&url),
        "{err}"
    );
    let spool = "ls -A /var/lib/cairn/reports 2>/dev/null | wc -l";
    assert_eq!(m.sh_ok(spool).trim(), "1");
    // The server is back: the next run delivers the spooled report, once.
    server.restart();
    let (code, after, err) = run();
    assert_eq!(code, 0, "{err}");
    assert!(after.get("from_cache").is_none(), "{after}");
    assert_eq!(m.sh_ok(spool).trim(), "0");
    let reports = ops.cairn_json(&["report", "list", "--node", name]);
    let runs: Vec<(&str, bool)> = reports["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["run_id"].as_str().unwrap(), r["from_cache"] == true))
        .collect();
    let id = |r: &Value| r["run_id"].as_str().unwrap().to_string();
    let (cached_id, after_id) = (id(&cached), id(&after));
    assert_eq!(
        runs.iter().filter(|(r, _)| *r == cached_id).count(),
        1,
        "{runs:?}"
    );
    assert_eq!(runs[0], (after_id.as_str(), false), "{runs:?}");
    assert!(runs.contains(&(cached_id.as_str(), true)), "{runs:?}");

    // A revocation: the daemon's open watch stream ends at once, and its
    // next call is refused, audited against the node.
    let watched = m
        .sh_ok("journalctl -u cairn-agent --no-pager -o cat")
        .matches(&watching)
        .count();
    m.sh_ok("systemctl start cairn-agent");
    wait_for_journal(&m, &watching, watched + 1);
    let revoked = Instant::now();
    ops.cairn(&["node", "revoke", name]);
    let ended = format!("the watch stream broke: credential revoked: node {name} was revoked");
    wait_for_journal(&m, &ended, 1);
    eprintln!("revoke to the watch stream ended: {:?}", revoked.elapsed());
    m.sh_ok("systemctl stop cairn-agent");
    let (code, _, err) = m.agent(&["run"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&format!("node {name} was revoked")), "{err}");
    let entries = audited(&ops, name);
    assert!(
        entries.iter().any(|(a, o)| a == "node revoke" && o == "ok"),
        "{entries:?}"
    );
    assert!(
        entries
            .iter()
            .any(|(_, o)| o.starts_with("denied: credential revoked: node")),
        "{entries:?}"
    );
}
