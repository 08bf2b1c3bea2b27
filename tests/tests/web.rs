//! `recipes/web` on a fresh machine: nginx from Debian's archive serving the
//! templated page, a second run that changes nothing, drift that `--noop`
//! reports and a real run repairs, and a refresh that survives a failed run.

use cairn_e2e::Machine;
use cairn_proto::report::ResourceStatus::{Changed, Failed, Skipped, Unchanged, WouldChange};

const WEB: &str = "/srv/recipes/web";
const SITE: &str = "/etc/nginx/sites-enabled/default";
const HAND_EDIT: &str = "# edited by hand";

/// systemd's catalog ids for "unit started" and "unit stopping".
const STARTED: &str = "39f53479d3a045ac8e11786248231fbf";
const STOPPING: &str = "de5b426a63be47a7b6ac3eaac82e2f6f";

/// How many times since boot systemd logged `message_id` for nginx. (Counted
/// from the start: journalctl 252 finds nothing when `--after-cursor` is
/// combined with field matches.)
fn nginx_events(m: &Machine, message_id: &str) -> usize {
    m.sh_ok(&format!(
        "journalctl --sync && journalctl --quiet --no-pager --output=cat _PID=1 UNIT=nginx.service MESSAGE_ID={message_id}"
    ))
    .lines()
    .count()
}

/// How often nginx was started and stopped since boot, by systemd's journal.
fn nginx_starts_stops(m: &Machine) -> (usize, usize) {
    (nginx_events(m, STARTED), nginx_events(m, STOPPING))
}

fn main_pid(m: &Machine) -> String {
    let pid = m.unit_property("nginx.service", "MainPID");
    assert_ne!(pid, "0", "nginx has no main process");
    pid
}

#[test]
fn web_role_converges_is_idempotent_and_repairs_drift() {
    let m = Machine::boot("web");
    // A fresh image has no package lists: the agent has to cope.
    assert_eq!(
        m.sh_ok("ls /var/lib/apt/lists | grep -v -e '^partial$' -e '^lock$' | wc -l")
            .trim(),
        "0"
    );

    // 1. First run: everything is created.
    let run = m.apply_json(WEB, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "changes and no failures: {run}");
    let mut changed = run.ids(Changed);
    changed.sort_unstable();
    assert_eq!(
        changed,
        [
            "directory:/srv/www",
            "file:/etc/nginx/sites-enabled/default",
            "file:/srv/www/index.html",
            "group:ops",
            "package:nginx",
            "service:nginx",
            "user:deploy",
        ],
        "{run}"
    );

    let status = m.sh_ok("dpkg-query --show --showformat='${Status} ${Version}' nginx");
    assert!(
        status.starts_with("install ok installed "),
        "nginx is not installed: {status}"
    );
    let policy = m.sh_ok("apt-cache policy nginx");
    assert!(!policy.contains("Installed: (none)"), "{policy}");

    let hostname = m.sh_ok("hostname").trim().to_string();
    assert_eq!(hostname, m.name());
    let page = m.sh_ok("curl --fail --silent --show-error http://127.0.0.1:8080/");
    assert!(
        page.contains("<title>Cairn status</title>"),
        "the page lacks the title var:\n{page}"
    );
    assert!(
        page.contains(&hostname),
        "the page lacks the hostname {hostname}:\n{page}"
    );

    assert_eq!(m.sh_ok("systemctl is-active nginx").trim(), "active");
    assert_eq!(m.sh_ok("systemctl is-enabled nginx").trim(), "enabled");
    assert!(m.sh_ok("getent group ops").starts_with("ops:"));
    let passwd = m.sh_ok("getent passwd deploy");
    assert!(
        passwd.trim_end().ends_with(":/home/deploy:/bin/bash"),
        "{passwd}"
    );
    let groups = m.sh_ok("id -nG deploy");
    assert!(
        groups.split_whitespace().any(|g| g == "ops"),
        "deploy is not in ops: {groups}"
    );
    assert_eq!(
        m.sh_ok("stat -c '%U:%G %a' /srv/www /srv/www/index.html"),
        "deploy:ops 755\ndeploy:ops 644\n"
    );
    // Debian ships the site as a link to sites-available; the role replaced it.
    m.sh_ok(&format!("test -f {SITE} && ! test -L {SITE}"));

    // 2. Second run: converged, nothing to do.
    let pid = main_pid(&m);
    let run = m.apply_json(WEB, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.report.summary.changed, 0, "{run}");
    assert_eq!(
        run.ids(Unchanged).len(),
        run.report.resources.len(),
        "{run}"
    );
    assert_eq!(main_pid(&m), pid, "a no-change run touched nginx");

    // 3. Drift: the site edited by hand, nginx stopped.
    m.sh_ok(&format!(
        "echo '{HAND_EDIT}' >> {SITE} && systemctl stop nginx"
    ));
    let run = m.apply_json(WEB, &["--noop", "--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.report.noop);
    assert_eq!(
        run.ids(WouldChange),
        [format!("file:{SITE}").as_str(), "service:nginx"],
        "{run}"
    );
    assert_eq!(
        run.ids(Unchanged).len(),
        run.report.resources.len() - 2,
        "{run}"
    );
    let diff = run
        .resource(&format!("file:{SITE}"))
        .diff
        .as_deref()
        .unwrap_or("");
    assert!(
        diff.contains(&format!("-{HAND_EDIT}")),
        "the diff does not remove the edit:\n{run}"
    );
    assert!(
        run.has_change("service:nginx", "running", "false", "true"),
        "{run}"
    );
    // --noop left both alone.
    assert!(m.sh_ok(&format!("cat {SITE}")).contains(HAND_EDIT));
    assert_eq!(
        String::from_utf8_lossy(&m.sh("systemctl is-active nginx").stdout).trim(),
        "inactive"
    );

    let (starts, stops) = nginx_starts_stops(&m);
    let run = m.apply_json(WEB, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(
        run.ids(Changed),
        [format!("file:{SITE}").as_str(), "service:nginx"],
        "{run}"
    );
    assert!(
        run.has_change("service:nginx", "running", "false", "true"),
        "{run}"
    );
    let service = run.resource("service:nginx");
    assert!(
        service.changes.iter().all(|c| c.property != "refresh"),
        "nginx was started by this run; a restart on top is one too many:\n{run}"
    );
    assert!(!m.sh_ok(&format!("cat {SITE}")).contains(HAND_EDIT));
    assert_eq!(m.sh_ok("systemctl is-active nginx").trim(), "active");
    // systemd's account: started once, never stopped, no automatic restarts.
    assert_eq!(
        nginx_starts_stops(&m),
        (starts + 1, stops),
        "nginx was not started exactly once, or was stopped"
    );
    assert_eq!(m.unit_property("nginx.service", "NRestarts"), "0");
    assert_eq!(
        m.unit_property("nginx.service", "ExecMainPID"),
        main_pid(&m)
    );
    let page = m.sh_ok("curl --fail --silent --show-error http://127.0.0.1:8080/");
    assert!(page.contains("<title>Cairn status</title>"), "{page}");

    // And converged again.
    let run = m.apply_json(WEB, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 0, "{run}");
}

/// A role whose config file notifies nginx, and nginx requires a gate that
/// fails while `/run/cairn-gate` exists.
fn gate_role(generation: u32) -> String {
    format!(
        r##"
[role]
name = "gate"

[[package]]
name = "nginx"

[[file]]
path = "/etc/nginx/conf.d/cairn-gate.conf"
content = "# generation {generation}\n"
requires = ["package:nginx"]
notify = ["service:nginx"]

[[exec]]
name = "gate"
command = "test ! -e /run/cairn-gate"

[[service]]
name = "nginx"
running = true
requires = ["package:nginx", "exec:gate"]
"##
    )
}

#[test]
fn refresh_interrupted_by_a_failure_is_done_next_run() {
    let m = Machine::boot("web-refresh");
    const ROLE: &str = "/root/roles/gate";
    m.write_file(&format!("{ROLE}/role.toml"), gate_role(1));
    let run = m.apply_json(ROLE, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(run.ids(Failed), Vec::<&str>::new(), "{run}");
    let pid = main_pid(&m);

    // Run 1: the file changes, the gate fails, so nginx is skipped and its
    // restart is owed.
    m.write_file(&format!("{ROLE}/role.toml"), gate_role(2));
    m.sh_ok("touch /run/cairn-gate");
    let (starts, stops) = nginx_starts_stops(&m);
    let run = m.apply_json(ROLE, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 6, "changes and failures: {run}");
    assert_eq!(
        run.ids(Changed),
        ["file:/etc/nginx/conf.d/cairn-gate.conf"],
        "{run}"
    );
    assert_eq!(run.ids(Failed), ["exec:gate"], "{run}");
    assert_eq!(run.ids(Skipped), ["service:nginx"], "{run}");
    assert_eq!(
        main_pid(&m),
        pid,
        "nginx was restarted although it was skipped"
    );
    assert_eq!(
        nginx_starts_stops(&m),
        (starts, stops),
        "nginx was touched although it was skipped"
    );

    // Run 2: the gate opens; the file is already right, but the restart it
    // owed is done now.
    m.sh_ok("rm /run/cairn-gate");
    let run = m.apply_json(ROLE, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(
        run.resource("file:/etc/nginx/conf.d/cairn-gate.conf")
            .status,
        Unchanged,
        "{run}"
    );
    assert_eq!(run.resource("service:nginx").status, Changed, "{run}");
    assert!(
        run.has_change("service:nginx", "refresh", "", "restarted"),
        "{run}"
    );
    let restarted = main_pid(&m);
    assert_ne!(
        restarted, pid,
        "nginx's main process is the same: it was not restarted"
    );
    assert_eq!(
        nginx_starts_stops(&m),
        (starts + 1, stops + 1),
        "nginx was not restarted exactly once"
    );

    // Run 3: the refresh was done once, and is not owed any more.
    let run = m.apply_json(ROLE, &["--detailed-exitcodes"]);
    assert_eq!(run.resource("service:nginx").status, Unchanged, "{run}");
    assert_eq!(run.ids(Failed), Vec::<&str>::new(), "{run}");
    assert_eq!(main_pid(&m), restarted);
    assert_eq!(
        nginx_starts_stops(&m),
        (starts + 1, stops + 1),
        "nginx was restarted again"
    );
}

/// One resource's part in what a run changed (or, in noop, would change).
#[derive(Debug, PartialEq)]
struct Outcome {
    id: String,
    /// (property, before, after), noop's wording of a refresh mapped to a run's.
    changes: Vec<(String, String, String)>,
    diff: Option<String>,
}

fn outcome(run: &cairn_e2e::Run) -> Vec<Outcome> {
    let status = if run.report.noop {
        WouldChange
    } else {
        Changed
    };
    run.report
        .resources
        .iter()
        .filter(|r| r.status == status)
        .map(|r| Outcome {
            id: r.id.clone(),
            changes: r
                .changes
                .iter()
                .map(|c| {
                    let after = match c.after.as_str() {
                        "would restart" => "restarted",
                        "would execute" => "executed",
                        other => other,
                    };
                    (c.property.clone(), c.before.clone(), after.to_string())
                })
                .collect(),
            diff: r.diff.clone(),
        })
        .collect()
}

/// A dry run that can be trusted: for two kinds of drift, `--noop` reports
/// exactly what the real run then does, change for change.
#[test]
fn noop_predicts_exactly_what_the_run_does() {
    let m = Machine::boot("web-noop");
    let run = m.apply_json(WEB, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");

    let drifts = [
        // The site edited while nginx runs: rewrite, then restart.
        format!("echo '{HAND_EDIT}' >> {SITE}"),
        // The site edited and nginx stopped: rewrite, then start (no restart).
        format!("echo '{HAND_EDIT}' >> {SITE} && systemctl stop nginx"),
    ];
    for drift in drifts {
        m.sh_ok(&drift);
        let noop = m.apply_json(WEB, &["--noop", "--detailed-exitcodes"]);
        assert_eq!(noop.code, 2, "{noop}");
        let real = m.apply_json(WEB, &["--detailed-exitcodes"]);
        assert_eq!(real.code, 2, "{real}");
        assert_eq!(
            outcome(&noop),
            outcome(&real),
            "after `{drift}`, --noop predicted:\n{noop}\nbut the run did:\n{real}"
        );
    }
}
