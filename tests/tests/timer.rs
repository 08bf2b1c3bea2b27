//! `[[timer]]` against a real systemd: the timeline (unit files written,
//! systemd reloaded, the timer enabled and started; then nothing to do),
//! the command run as its user exactly as written, a new schedule and a new
//! command taking effect, the timer removed (state = "absent"), a calendar
//! systemd refuses, and a converged run that spawns no process.

use cairn_e2e::{Change, Machine, Timeline};
use cairn_proto::report::ResourceStatus::Failed;
use sha2::{Digest, Sha256};

const ID: &str = "timer:cairn-tick";
const TIMER: &str = "/etc/systemd/system/cairn-tick.timer";
const SERVICE: &str = "/etc/systemd/system/cairn-tick.service";
/// The machine's view: the timer's schedule as systemd holds it, whether it
/// is enabled and active, and whether a unit file changed since the last
/// reload.
const PROBE: &str = "systemctl show -P TimersCalendar cairn-tick.timer; \
                     systemctl show -P NeedDaemonReload cairn-tick.timer; \
                     systemctl show -P NeedDaemonReload cairn-tick.service; \
                     systemctl is-enabled cairn-tick.timer; systemctl is-active cairn-tick.timer; true";

/// A command with everything systemd would otherwise expand or unquote:
/// `%` specifiers, `$` variables, quotes and backslashes.
const COMMAND: &str = r#"printf '%s|%s\n' "$(id -un)" '100% "quoted" $HOME \back' > /tmp/tick"#;

fn role(on_calendar: &str, command: &str) -> String {
    format!(
        "[[timer]]\nname = \"cairn-tick\"\non_calendar = \"{on_calendar}\"\n\
         command = '''{command}'''\nuser = \"nobody\"\n"
    )
}

/// How a report names content: `sha256:PREFIX…, N bytes`.
fn label(content: &str) -> String {
    let hash = Sha256::digest(content.as_bytes());
    let short: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{short}…, {} bytes", content.len())
}

fn label_of(m: &Machine, path: &str) -> String {
    label(&m.sh_ok(&format!("cat {path}")))
}

#[test]
fn timer_timeline_against_systemd() {
    let m = Machine::boot("timer");
    let t = Timeline::new(&m, ID, PROBE);

    // A systemctl earlier in PATH that logs each call, then does the real work.
    m.write_file(
        "/usr/local/sbin/systemctl",
        "#!/bin/sh\necho \"$*\" >> /run/systemctl-calls\nexec /usr/bin/systemctl \"$@\"\n",
    );
    m.sh_ok("chmod 755 /usr/local/sbin/systemctl");
    let calls = || {
        let calls = m.sh_ok("cat /run/systemctl-calls 2>/dev/null; rm -f /run/systemctl-calls");
        // The probe's own calls are not the agent's.
        calls
            .lines()
            .filter(|l| !l.starts_with("show ") && !l.starts_with("is-"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };

    let first = role("*-*-* 04:00:00", COMMAND);
    let after = converge_new(&m, &t, &first);
    assert!(after.contains("OnCalendar=*-*-* 04:00:00 ;"), "{after}");
    assert!(after.ends_with("no\nno\nenabled\nactive\n"), "{after}");
    assert_eq!(
        calls(),
        "daemon-reload\nenable cairn-tick.timer\nstart cairn-tick.timer\n"
    );

    // The service runs the command as its user, exactly as written.
    m.sh_ok("systemctl start cairn-tick.service");
    assert_eq!(
        m.sh_ok("cat /tmp/tick"),
        "nobody|100% \"quoted\" $HOME \\back\n"
    );
    calls();

    // A converged run reads the files and the state over D-Bus: no process.
    t.holds(&first);
    assert_eq!(calls(), "");

    // A new schedule: the timer file alone is rewritten, systemd reloaded,
    // and the running timer restarted to take it.
    let old = label_of(&m, TIMER);
    let second = role("hourly", COMMAND);
    let after = t.converges(
        &second,
        &[("timer", &old, &label_of_new(&m, &second, "timer"))],
    );
    assert!(after.contains("OnCalendar=*-*-* *:00:00 ;"), "{after}");
    assert_eq!(calls(), "daemon-reload\nrestart cairn-tick.timer\n");

    // A new command: the next run of the service is the new one.
    let old = label_of(&m, SERVICE);
    let third = role("hourly", "echo second > /tmp/tick");
    t.converges(
        &third,
        &[("service", &old, &label_of_new(&m, &third, "service"))],
    );
    assert_eq!(calls(), "daemon-reload\n");
    m.sh_ok("systemctl start cairn-tick.service");
    assert_eq!(m.sh_ok("cat /tmp/tick"), "second\n");

    // A unit file others may write would run their command as root: it is
    // written anew, root's alone.
    calls();
    m.sh_ok(&format!("chmod 666 {SERVICE}"));
    let label = label_of(&m, SERVICE);
    let before = format!("{label}, owner root:root, mode 0666");
    t.converges(&third, &[("service", &before, &label)]);
    assert_eq!(m.sh_ok(&format!("stat -c %a {SERVICE}")), "644\n");
    assert_eq!(calls(), "daemon-reload\n");

    // Disabled and stopped by hand: noop says so, a run repairs it.
    m.sh_ok("systemctl disable --now cairn-tick.timer");
    t.converges(
        &third,
        &[("enabled", "false", "true"), ("running", "false", "true")],
    );

    // Absent: stopped and disabled while its file is there, both files
    // removed, systemd reloaded once; then nothing to do, and no process.
    calls();
    let absent = "[[timer]]\nname = \"cairn-tick\"\nstate = \"absent\"\n";
    let (timer, service) = (label_of(&m, TIMER), label_of(&m, SERVICE));
    let after = t.converges(
        absent,
        &[
            ("timer", &timer, "absent"),
            ("service", &service, "absent"),
            ("enabled", "true", "false"),
            ("running", "true", "false"),
        ],
    );
    assert!(after.ends_with("\ninactive\n"), "{after}");
    assert!(
        !after.lines().any(|l| l == "enabled" || l == "yes"),
        "{after}"
    );
    assert_eq!(
        calls(),
        "stop cairn-tick.timer\ndisable cairn-tick.timer\ndaemon-reload\n"
    );
    assert_eq!(
        m.sh_ok(&format!(
            "ls {TIMER} {SERVICE} /etc/systemd/system/timers.target.wants/cairn-tick.timer \
             2>/dev/null; systemctl show -P LoadState cairn-tick.timer"
        )),
        "not-found\n"
    );
}

/// The label of the unit file of `kind` (`timer`, `service`) that `role`
/// makes: set without converging, read from the noop report's drift.
fn label_of_new(m: &Machine, role: &str, kind: &str) -> String {
    m.write_file(
        "/root/roles/peek/role.toml",
        format!("[role]\nname = \"peek\"\n\n{role}"),
    );
    let run = m.apply_json("/root/roles/peek", &["--noop"]);
    run.resource(ID)
        .changes
        .iter()
        .find(|c| c.property == kind)
        .unwrap_or_else(|| panic!("no {kind} change in {run}"))
        .after
        .clone()
}

/// Converges a timer the machine does not have; returns the probe after.
fn converge_new(m: &Machine, t: &Timeline, role: &str) -> String {
    let (timer, service) = (
        label_of_new(m, role, "timer"),
        label_of_new(m, role, "service"),
    );
    let changes: [Change; 4] = [
        ("timer", "absent", &timer),
        ("service", "absent", &service),
        ("enabled", "false", "true"),
        ("running", "false", "true"),
    ];
    let after = t.converges(role, &changes);
    // The labels are those of the files the machine now has.
    assert_eq!((label_of(m, TIMER), label_of(m, SERVICE)), (timer, service));
    after
}

#[test]
fn a_calendar_systemd_refuses_fails_naming_the_timer() {
    let m = Machine::boot("timer-bad");
    m.write_file(
        "/root/roles/bad/role.toml",
        format!(
            "[role]\nname = \"bad\"\n\n{}",
            role("every full moon", "true")
        ),
    );
    for _ in 0..2 {
        let run = m.apply_json("/root/roles/bad", &["--detailed-exitcodes"]);
        assert_eq!((run.code, run.ids(Failed)), (4, vec![ID]), "{run}");
        let error = run.resource(ID).error.clone().unwrap_or_default();
        assert!(
            error.starts_with(
                "could not apply timer:cairn-tick: systemd did not load cairn-tick.timer from \
                 /etc/systemd/system/cairn-tick.timer"
            ),
            "{run}"
        );
    }
    // systemd itself refused the file; nothing was enabled or started.
    assert_eq!(
        m.sh_ok(
            "systemctl show -P LoadState cairn-tick.timer; systemctl is-enabled cairn-tick.timer; \
             systemctl is-active cairn-tick.timer; true"
        ),
        "bad-setting\ndisabled\ninactive\n"
    );
}
