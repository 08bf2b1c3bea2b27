//! A first boot with real cloud-init, the whole story: the real
//! `cairn-server` on loopback with a role pushed and promoted and a join
//! token made; a Debian machine gets only a NoCloud seed whose user-data is
//! the example of `docs/cloud-init.md`, placeholders filled in. cloud-init
//! fetches the statically linked agent, checks its checksum, installs it,
//! enrolls the node, converges the role and leaves the daemon running; the
//! server lists the node and its reports, and a promote reaches the daemon
//! through its watch. And the static agent itself: statically linked, and it
//! runs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_e2e::{
    AgentDownloads, Enrollment, Machine, NoCloudSeed, Server, cloud_init_image_dir,
    first_boot_user_data, static_agent_binary,
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
    let token = ops.token(ROLE, CHANNEL);
    let ca_pin = server.ca_pin();
    let downloads = AgentDownloads::serve();
    let enrollment = Enrollment {
        servers: &[server.url()],
        ca_pin: &ca_pin,
        token: &token,
    };
    let seed = NoCloudSeed {
        instance_id: format!("iid-cairn-{:x}", std::process::id()),
        local_hostname: "cairn-first-boot".into(),
        user_data: first_boot_user_data(&enrollment, &downloads),
    };
    let m = Machine::boot_cloud_init("cloud-init", &seed, &[]);

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
        *downloads.agent_sha256()
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while ops.cairn_json(&["node", "list"])["nodes"][0]["last_run"]["role_version"] != 2 {
        assert!(Instant::now() < deadline, "no report of version 2");
        std::thread::sleep(Duration::from_millis(100));
    }

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
