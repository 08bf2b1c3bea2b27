//! The `service` resource against a real systemd: the two-pass timeline
//! (changed, then unchanged), drift seen by `--noop` without touching the unit,
//! repair, a unit systemd does not know, and a unit file changed on disk.

use cairn_e2e::Machine;
use cairn_proto::report::ResourceStatus::{Changed, Failed, Unchanged, WouldChange};

const UNIT: &str = "cairn-sleeper.service";

const UNIT_FILE: &str = "\
[Unit]
Description=Cairn test service that sleeps

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
";

const ROLE: &str = r#"
[role]
name = "sleeper"

[[service]]
name = "cairn-sleeper"
running = true
enabled = true
"#;

fn state(m: &Machine) -> (String, String) {
    // Both commands exit non-zero for inactive/disabled; only the words matter.
    let active = m.sh(&format!("systemctl is-active {UNIT}"));
    let enabled = m.sh(&format!("systemctl is-enabled {UNIT}"));
    (
        String::from_utf8_lossy(&active.stdout).trim().to_string(),
        String::from_utf8_lossy(&enabled.stdout).trim().to_string(),
    )
}

#[test]
fn service_timeline_against_systemd() {
    let m = Machine::boot("service");
    m.write_file(&format!("/etc/systemd/system/{UNIT}"), UNIT_FILE);
    m.sh_ok("systemctl daemon-reload");
    m.write_file("/root/roles/sleeper/role.toml", ROLE);
    assert_eq!(state(&m), ("inactive".into(), "disabled".into()));

    // First run: started and enabled.
    let run = m.apply_json("/root/roles/sleeper", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(run.ids(Changed), ["service:cairn-sleeper"], "{run}");
    assert!(
        run.has_change("service:cairn-sleeper", "running", "false", "true"),
        "{run}"
    );
    assert!(
        run.has_change("service:cairn-sleeper", "enabled", "false", "true"),
        "{run}"
    );
    assert_eq!(state(&m), ("active".into(), "enabled".into()));
    let pid = m.unit_property(UNIT, "MainPID");
    assert_ne!(pid, "0");

    // Second run: nothing to do, and the process was left alone.
    let run = m.apply_json("/root/roles/sleeper", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.ids(Unchanged), ["service:cairn-sleeper"], "{run}");
    assert_eq!(run.report.summary.changed, 0, "{run}");
    assert_eq!(m.unit_property(UNIT, "MainPID"), pid);

    // Drift by hand; noop reports it and changes nothing.
    m.sh_ok(&format!("systemctl disable --now {UNIT}"));
    assert_eq!(state(&m), ("inactive".into(), "disabled".into()));
    let run = m.apply_json("/root/roles/sleeper", &["--noop", "--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.report.noop);
    assert_eq!(run.ids(WouldChange), ["service:cairn-sleeper"], "{run}");
    assert!(
        run.has_change("service:cairn-sleeper", "running", "false", "true"),
        "{run}"
    );
    assert!(
        run.has_change("service:cairn-sleeper", "enabled", "false", "true"),
        "{run}"
    );
    assert_eq!(
        state(&m),
        ("inactive".into(), "disabled".into()),
        "--noop changed the unit"
    );

    // A real run repairs it, and then the machine is converged again.
    let run = m.apply_json("/root/roles/sleeper", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(run.ids(Changed), ["service:cairn-sleeper"], "{run}");
    assert_eq!(state(&m), ("active".into(), "enabled".into()));
    let run = m.apply_json("/root/roles/sleeper", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 0, "{run}");
}

#[test]
fn unknown_service_fails_naming_it() {
    let m = Machine::boot("service-unknown");
    m.write_file(
        "/root/roles/ghost/role.toml",
        r#"
[role]
name = "ghost"

[[service]]
name = "cairn-no-such-unit"
running = true

[[file]]
path = "/etc/cairn-ghost-independent"
content = "converged despite the failing service\n"
"#,
    );
    let run = m.apply_json("/root/roles/ghost", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 6, "a failure and an unrelated change: {run}");
    assert_eq!(run.ids(Failed), ["service:cairn-no-such-unit"], "{run}");
    let error = run
        .resource("service:cairn-no-such-unit")
        .error
        .as_deref()
        .unwrap_or("");
    assert!(
        error.contains("cairn-no-such-unit"),
        "the error does not name the service: {error:?}\n{run}"
    );
    // The failure is data in the report: the rest of the run went on.
    assert_eq!(
        run.ids(Changed),
        ["file:/etc/cairn-ghost-independent"],
        "{run}"
    );
    assert_eq!(
        m.sh_ok("cat /etc/cairn-ghost-independent"),
        "converged despite the failing service\n"
    );

    // Without --detailed-exitcodes a failed run exits 1.
    let run = m.apply_json("/root/roles/ghost", &[]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.ids(Failed), ["service:cairn-no-such-unit"], "{run}");
}

#[test]
fn a_converged_run_reads_service_states_without_spawning_systemctl() {
    let m = Machine::boot("service-dbus");
    m.write_file(&format!("/etc/systemd/system/{UNIT}"), UNIT_FILE);
    m.sh_ok("systemctl daemon-reload");
    m.write_file("/root/roles/sleeper/role.toml", ROLE);
    // A systemctl earlier in PATH that logs each call, then does the real work.
    m.write_file(
        "/usr/local/sbin/systemctl",
        "#!/bin/sh\necho \"$*\" >> /run/systemctl-calls\nexec /usr/bin/systemctl \"$@\"\n",
    );
    m.sh_ok("chmod 755 /usr/local/sbin/systemctl");

    let run = m.apply_json("/root/roles/sleeper", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    // Changes go through systemctl, which waits for the job to finish.
    let calls = m.sh_ok("cat /run/systemctl-calls");
    assert_eq!(calls, format!("enable {UNIT}\nstart {UNIT}\n"));

    m.sh_ok("rm /run/systemctl-calls");
    let run = m.apply_json("/root/roles/sleeper", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.ids(Unchanged), ["service:cairn-sleeper"], "{run}");
    // State was read over D-Bus: no process at all.
    assert_eq!(m.sh("test -e /run/systemctl-calls").status.code(), Some(1));
}

/// A role that writes `cairn-app.service` (sleeping `seconds`) and notifies
/// the service.
fn app_role(seconds: u32) -> String {
    format!(
        r#"
[role]
name = "app"

[[file]]
path = "/etc/systemd/system/cairn-app.service"
content = """
[Service]
ExecStart=/bin/sleep {seconds}

[Install]
WantedBy=multi-user.target
"""
notify = ["service:cairn-app"]

[[service]]
name = "cairn-app"
running = true
enabled = true
"#
    )
}

/// A property of `cairn-app.service`, from the real systemctl (not the
/// wrapper a test puts first in PATH to log the agent's calls).
fn show(m: &Machine, property: &str) -> String {
    m.sh_ok(&format!(
        "/usr/bin/systemctl show --property={property} --value cairn-app.service"
    ))
    .trim()
    .to_string()
}

/// What the running service is, from systemd and from the process itself.
fn app(m: &Machine) -> (String, String) {
    let pid = show(m, "MainPID");
    let command = m.sh_ok(&format!("tr '\\0' ' ' < /proc/{pid}/cmdline"));
    let exec = show(m, "ExecStart");
    let argv = exec
        .split("argv[]=")
        .nth(1)
        .and_then(|rest| rest.split(" ;").next())
        .unwrap_or_default()
        .to_string();
    (argv, command.trim_end().to_string())
}

/// A role changes a unit file and notifies the service: systemd reloads
/// the unit before the restart (so the new definition runs), once, and the
/// report says so; a converged run spawns no process. A drop-in changed by
/// hand is seen by `--noop` without reloading.
#[test]
fn a_changed_unit_file_is_reloaded_before_its_service_restarts() {
    let m = Machine::boot("service-reload");
    m.write_file("/root/roles/app/role.toml", app_role(1001));
    let run = m.apply_json("/root/roles/app", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(
        app(&m),
        ("/bin/sleep 1001".into(), "/bin/sleep 1001".into())
    );

    // The unit changes.
    m.write_file("/root/roles/app/role.toml", app_role(1002));
    m.write_file(
        "/usr/local/sbin/systemctl",
        "#!/bin/sh\necho \"$*\" >> /run/systemctl-calls\nexec /usr/bin/systemctl \"$@\"\n",
    );
    m.sh_ok("chmod 755 /usr/local/sbin/systemctl");
    let run = m.apply_json("/root/roles/app", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    let service = run.resource("service:cairn-app");
    let changes: Vec<_> = service
        .changes
        .iter()
        .map(|c| (c.property.as_str(), c.before.as_str(), c.after.as_str()))
        .collect();
    assert_eq!(
        changes,
        [
            ("systemd", "unit changed on disk", "reloaded"),
            ("refresh", "", "restarted")
        ],
        "{run}"
    );
    assert_eq!(
        m.sh_ok("cat /run/systemctl-calls"),
        "daemon-reload\nrestart cairn-app.service\n"
    );
    assert_eq!(show(&m, "NeedDaemonReload"), "no");
    assert_eq!(
        app(&m),
        ("/bin/sleep 1002".into(), "/bin/sleep 1002".into())
    );

    // Converged: nothing to do, and no process spawned.
    m.sh_ok("rm /run/systemctl-calls");
    let run = m.apply_json("/root/roles/app", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(m.sh("test -e /run/systemctl-calls").status.code(), Some(1));

    // A drop-in changed by hand (systemd sees new drop-in directories only
    // when it reloads): noop says a reload is due and makes none.
    let drop_in = "/etc/systemd/system/cairn-app.service.d/cairn.conf";
    m.write_file(drop_in, "[Service]\nEnvironment=CAIRN=0\n");
    m.sh_ok("/usr/bin/systemctl daemon-reload");
    m.write_file(drop_in, "[Service]\nEnvironment=CAIRN=1\n");
    assert_eq!(show(&m, "NeedDaemonReload"), "yes");
    let run = m.apply_json("/root/roles/app", &["--noop", "--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.has_change(
            "service:cairn-app",
            "systemd",
            "unit changed on disk",
            "reloaded"
        ),
        "{run}"
    );
    assert_eq!(show(&m, "NeedDaemonReload"), "yes");
    assert_eq!(m.sh("test -e /run/systemctl-calls").status.code(), Some(1));
    // A real run reloads, and only that: the running process is left alone.
    let pid = show(&m, "MainPID");
    let run = m.apply_json("/root/roles/app", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(m.sh_ok("cat /run/systemctl-calls"), "daemon-reload\n");
    assert_eq!(show(&m, "Environment"), "CAIRN=1");
    assert_eq!(show(&m, "MainPID"), pid);
    let run = m.apply_json("/root/roles/app", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 0, "{run}");
}
