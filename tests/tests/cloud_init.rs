//! A first boot with real cloud-init: a Debian machine gets only a NoCloud
//! seed whose user-data is the example of `docs/cloud-init.md`, placeholders
//! filled in; cloud-init fetches the statically linked agent from a server on
//! loopback, checks its checksum, installs it and runs it. And the static
//! agent itself: statically linked, and it runs.
//!
//! Until the agent can enroll and fetch its role from a server, the example's
//! `enroll`, `run` and daemon lines are replaced by `cairn-agent apply` of a
//! role the user-data writes (see [`until_enrollment_exists`]).

use std::path::Path;
use std::process::Command;

use cairn_e2e::{
    FileServer, Machine, NoCloudSeed, cloud_init_image_dir, static_agent_binary, workspace_root,
};

/// Where the example is, and the comment that comes right before it.
const DOC: &str = "docs/cloud-init.md";
const EXAMPLE_MARK: &str = "<!-- The block below is the example tests/tests/cloud_init.rs boots";

/// The user-data example of `docs/cloud-init.md`: the first ```yaml block
/// after [`EXAMPLE_MARK`].
fn documented_user_data() -> String {
    let path = workspace_root().join(DOC);
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("could not read {}: {e}", path.display()));
    let after = &doc[doc
        .find(EXAMPLE_MARK)
        .unwrap_or_else(|| panic!("{DOC} has no {EXAMPLE_MARK:?}"))..];
    let start = after
        .find("```yaml\n")
        .expect("a ```yaml block after the mark")
        + 8;
    let len = after[start..].find("```").expect("the block ends");
    after[start..start + len].to_string()
}

/// `text` with `from` replaced by `to`, which must occur exactly once, so the
/// test fails when the document changes under it.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{DOC}'s example should hold {from:?} once:\n{text}"
    );
    text.replacen(from, to, 1)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The role the user-data writes, as `write_files` entries: a file rendered
/// from `facts.cloud`.
const ROLE_FILES: &str = r#"  - path: /etc/cairn/role/role.toml
    content: |
      [role]
      name = "first-boot"

      [[file]]
      path = "/etc/cairn-cloud.txt"
      template = "cloud.txt"
  - path: /etc/cairn/role/templates/cloud.txt
    content: |
      {{#if facts.cloud}}cloud_id={{facts.cloud.cloud_id}} platform={{facts.cloud.platform}} instance_id={{facts.cloud.instance_id}} local_hostname={{facts.cloud.local_hostname}} region={{facts.cloud.region}}{{else}}no cloud-init{{/if}}
"#;

/// What stands in today for the example's commands that need a server: the
/// role comes from `write_files` and is applied. When `enroll`, `run` and the
/// daemon's unit exist, this goes, and the test starts a server, pushes the
/// role, and fills in `CA_PIN`, `JOIN_TOKEN` and `UNIT_URL` for real.
fn until_enrollment_exists(user_data: &str) -> String {
    let user_data = replace_once(
        user_data,
        "write_files:\n",
        &format!("write_files:\n{ROLE_FILES}"),
    );
    let server_lines = "  - cairn-agent enroll --token-file /etc/cairn/token\n  - cairn-agent run\n  \
         - curl -fsS --retry 10 --retry-connrefused -o /etc/systemd/system/cairn-agent.service UNIT_URL\n  \
         - systemctl enable --now cairn-agent\n";
    replace_once(
        &user_data,
        server_lines,
        "  - cairn-agent apply /etc/cairn/role\n",
    )
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
    let agent = static_agent_binary();
    let downloads = FileServer::serve(&[("/cairn-agent", agent.as_path())]);
    let mut user_data = documented_user_data();
    for (placeholder, value) in [
        ("AGENT_URL", downloads.url("/cairn-agent")),
        ("AGENT_SHA256", sha256(&agent)),
        ("CA_PIN", format!("sha256:{}", "0".repeat(64))),
        ("JOIN_TOKEN", "not-used-until-enrollment".to_string()),
    ] {
        user_data = replace_once(&user_data, placeholder, &value);
    }
    let user_data = until_enrollment_exists(&user_data);
    let seed = NoCloudSeed {
        instance_id: format!("iid-cairn-{:x}", std::process::id()),
        local_hostname: "cairn-first-boot".into(),
        user_data,
    };
    let m = Machine::boot_cloud_init("cloud-init", &seed, &[]);

    let log = m.cloud_init_output();
    let status = m.cloud_init_status();
    assert!(
        status.contains("status: done"),
        "cloud-init did not succeed:\n{status}\nuser-data:\n{}\ncloud-init-output.log:\n{log}",
        seed.user_data
    );

    // write_files: the agent's configuration, and the token for root alone.
    assert!(
        m.sh_ok("cat /etc/cairn/agent.toml")
            .contains("ca_pin = \"sha256:000")
    );
    assert_eq!(
        m.sh_ok("stat -c '%a %U' /etc/cairn/token").trim(),
        "600 root"
    );
    // runcmd: the agent served on loopback, checked and installed.
    assert_eq!(
        m.sh_ok("sha256sum /usr/local/bin/cairn-agent")[..64],
        sha256(&agent)
    );
    assert_eq!(m.sh_ok("hostname").trim(), "cairn-first-boot");

    // The first run converged, printing its progress into cloud-init's log,
    // one line per resource and nothing transient.
    assert!(
        log.contains("changed      file:/etc/cairn-cloud.txt (")
            && log.contains("Applied role first-boot ("),
        "{log}"
    );
    assert!(!log.contains(['\r', '\x1b']), "{log:?}");
    assert_eq!(
        m.sh_ok("cat /etc/cairn-cloud.txt").trim(),
        format!(
            "cloud_id=nocloud platform=nocloud instance_id={} local_hostname=cairn-first-boot region=",
            seed.instance_id
        )
    );
    let (code, out, err) = m.agent(&["apply", "/etc/cairn/role", "--detailed-exitcodes"]);
    assert_eq!(code, 0, "a second run changes nothing:\n{out}{err}");

    // `cairn-agent facts` shows what cloud-init wrote.
    let (code, out, err) = m.agent(&["facts"]);
    assert_eq!(code, 0, "{err}");
    let facts: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cloud = &facts["cloud"];
    assert_eq!(cloud["instance_id"], seed.instance_id.as_str(), "{out}");
    assert_eq!(cloud["cloud_id"], "nocloud", "{out}");
    assert_eq!(cloud["platform"], "nocloud", "{out}");
    assert_eq!(cloud["local_hostname"], "cairn-first-boot", "{out}");
    assert_eq!(cloud["region"], "", "{out}");
}
