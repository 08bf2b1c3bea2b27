//! `reload` against a real systemd (a unit that can reload keeps its main
//! process; one that cannot is restarted, and the report says which), and
//! `validate` with the real `visudo`: a bad sudoers file is refused, the live
//! one stays, and `sudo` keeps working.

use cairn_e2e::{Machine, Timeline};
use cairn_proto::report::ResourceStatus::{Changed, Failed, Unchanged, WouldChange};

const RELOADER: &str = "cairn-reloader.service";

/// Its reload appends to a file, so a test can count reloads from outside the
/// agent.
const RELOADER_UNIT: &str = "\
[Service]
ExecStart=/bin/sleep infinity
ExecReload=/bin/sh -c 'echo reloaded >> /run/cairn-reloads'
";

const SLEEPER: &str = "cairn-sleeper.service";

const SLEEPER_UNIT: &str = "\
[Service]
ExecStart=/bin/sleep infinity
";

const ROLE_DIR: &str = "/root/roles/reload";

fn role(conf: &str, unit_conf: &str) -> String {
    format!(
        r#"[role]
name = "reload"

[[file]]
path = "/etc/cairn-reloader.conf"
content = "{conf}"
reload = ["service:cairn-reloader", "service:cairn-sleeper"]

[[file]]
path = "/etc/cairn-reloader.unit-conf"
content = "{unit_conf}"
notify = ["service:cairn-reloader"]

[[service]]
name = "cairn-reloader"
running = true

[[service]]
name = "cairn-sleeper"
running = true
"#
    )
}

fn reloads(m: &Machine) -> usize {
    m.sh_ok("cat /run/cairn-reloads 2>/dev/null; true")
        .lines()
        .count()
}

fn refresh_of<'r>(run: &'r cairn_e2e::Run, id: &str) -> &'r str {
    let r = run.resource(id);
    r.changes
        .iter()
        .find(|c| c.property == "refresh")
        .map_or("", |c| c.after.as_str())
}

#[test]
fn a_reload_keeps_the_main_process_and_a_restart_asked_by_anyone_wins() {
    let m = Machine::boot("reload");
    m.write_file(&format!("/etc/systemd/system/{RELOADER}"), RELOADER_UNIT);
    m.write_file(&format!("/etc/systemd/system/{SLEEPER}"), SLEEPER_UNIT);
    m.sh_ok(&format!(
        "systemctl daemon-reload && systemctl start {RELOADER} {SLEEPER}"
    ));
    m.write_file("/etc/cairn-reloader.unit-conf", "u1");
    let pid = m.unit_property(RELOADER, "MainPID");
    let sleeper_pid = m.unit_property(SLEEPER, "MainPID");
    assert_ne!(pid, "0");

    // Noop: the reload is announced, nothing is done.
    m.write_file(&format!("{ROLE_DIR}/role.toml"), role("v1", "u1"));
    let run = m.apply_json(ROLE_DIR, &["--noop", "--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(run.resource("service:cairn-reloader").status, WouldChange);
    assert_eq!(refresh_of(&run, "service:cairn-reloader"), "would reload");
    assert_eq!(reloads(&m), 0);

    // The config changes: the unit reloads and keeps its process; the unit
    // that cannot reload is restarted, and the report says so.
    let run = m.apply_json(ROLE_DIR, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(
        refresh_of(&run, "service:cairn-reloader"),
        "reloaded",
        "{run}"
    );
    assert_eq!(
        refresh_of(&run, "service:cairn-sleeper"),
        "restarted (the unit cannot reload)",
        "{run}"
    );
    assert_eq!(reloads(&m), 1);
    assert_eq!(m.unit_property(RELOADER, "MainPID"), pid);
    let restarted = m.unit_property(SLEEPER, "MainPID");
    assert!(restarted != sleeper_pid && restarted != "0", "{restarted}");

    // Converged: nothing at all.
    let run = m.apply_json(ROLE_DIR, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.ids(Changed), Vec::<&str>::new(), "{run}");
    assert_eq!(reloads(&m), 1);
    assert_eq!(m.unit_property(RELOADER, "MainPID"), pid);

    // A reload and a restart asked in one run: one restart, no reload.
    m.write_file(&format!("{ROLE_DIR}/role.toml"), role("v2", "u2"));
    let run = m.apply_json(ROLE_DIR, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(
        refresh_of(&run, "service:cairn-reloader"),
        "restarted",
        "{run}"
    );
    assert_eq!(reloads(&m), 1);
    let new_pid = m.unit_property(RELOADER, "MainPID");
    assert!(new_pid != pid && new_pid != "0", "{new_pid}");
    let run = m.apply_json(ROLE_DIR, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.resource("service:cairn-reloader").status, Unchanged);
}

const SUDOERS: &str = "/etc/sudoers.d/cairn-ops";

fn sudoers_role(content: &str) -> String {
    format!(
        "[[package]]\nname = \"sudo\"\n\n\
         [[file]]\npath = \"{SUDOERS}\"\ncontent = \"{content}\"\nmode = \"0440\"\n\
         validate = \"/usr/sbin/visudo -cf %\"\nrequires = [\"package:sudo\"]\n"
    )
}

#[test]
fn a_bad_sudoers_file_is_refused_and_sudo_keeps_working() {
    let m = Machine::boot("validate-sudoers");
    m.write_file(
        "/root/roles/sudo/role.toml",
        "[role]\nname = \"sudo\"\n\n[[package]]\nname = \"sudo\"\n",
    );
    let run = m.apply_json("/root/roles/sudo", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");

    // The machine's own view: the live file, whether sudo works, and every
    // name in the directory (a leftover temporary file would show).
    let probe = format!(
        "cat {SUDOERS} 2>/dev/null; sudo -n true && echo sudo works; ls -A /etc/sudoers.d; true"
    );
    let t = Timeline::new(&m, &format!("file:{SUDOERS}"), &probe);
    let good = "%sudo ALL=(ALL:ALL) NOPASSWD: ALL\\n";
    let after = t.converges(&sudoers_role(good), &[("ensure", "absent", "file")]);
    assert_eq!(
        after,
        "%sudo ALL=(ALL:ALL) NOPASSWD: ALL\nsudo works\nREADME\ncairn-ops\n"
    );
    assert_eq!(m.sh_ok(&format!("stat -c '%a %U' {SUDOERS}")), "440 root\n");

    // A syntax error: refused with visudo's words, nothing changed.
    m.write_file(
        &format!("{}/role.toml", "/root/roles/timeline"),
        format!(
            "[role]\nname = \"timeline\"\n\n{}",
            sudoers_role("%sudo ALL=(ALL:ALL NOPASSWD ALL\\n")
        ),
    );
    let run = m.apply_json("/root/roles/timeline", &["--noop", "--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(run.resource(&format!("file:{SUDOERS}")).status, WouldChange);
    let run = m.apply_json("/root/roles/timeline", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 4, "{run}");
    let r = run.resource(&format!("file:{SUDOERS}"));
    assert_eq!(r.status, Failed, "{run}");
    let error = r.error.as_deref().unwrap_or_default();
    for part in [
        "/usr/sbin/visudo -cf '/etc/sudoers.d/.cairn-ops.cairn-tmp.",
        "syntax error",
        "/etc/sudoers.d/cairn-ops is unchanged",
    ] {
        assert!(error.contains(part), "{part:?} not in {error}");
    }
    assert_eq!(t.probe(), after);

    // Back to the good content: nothing to do.
    t.holds(&sudoers_role(good));
}
