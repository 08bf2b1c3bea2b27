//! A converged run of links, sysctls and timers spawns no process: the agent
//! allocates no more PIDs in the machine's own PID namespace for a role full
//! of them than for a role of one service alone (which reads systemd over
//! D-Bus, as timers do). A service only notified costs no process either,
//! even where the agent has no system bus (and would ask `systemctl`).

use cairn_e2e::Machine;

/// A role of one running service, and `more` after it.
fn role(more: &str) -> String {
    format!(
        "[role]\nname = \"converged\"\n\n[[service]]\nname = \"systemd-journald\"\nrunning = true\n\n{more}"
    )
}

/// The fewest PIDs the machine allocated around one converged run of the
/// role in `dir` (the fewest of five runs, so that something else the
/// machine starts meanwhile is not counted). The shell's own forks are the
/// same for every role.
fn pids_of_a_converged_run(m: &Machine, dir: &str) -> u64 {
    pids_of_a_converged_run_with(m, "", dir)
}

/// [`pids_of_a_converged_run`] with `env` (`NAME=VALUE …`) set for the agent.
fn pids_of_a_converged_run_with(m: &Machine, env: &str, dir: &str) -> u64 {
    (0..5)
        .map(|_| {
            let out = m.sh_ok(&format!(
                "a=$(cat /proc/sys/kernel/ns_last_pid); \
                 env {env} cairn-agent apply {dir} --detailed-exitcodes > /dev/null; code=$?; \
                 b=$(cat /proc/sys/kernel/ns_last_pid); echo $code $((b - a))"
            ));
            let (code, pids) = out.trim().split_once(' ').unwrap();
            assert_eq!(code, "0", "the run in {dir} was not converged");
            pids.parse::<u64>().unwrap()
        })
        .min()
        .unwrap()
}

#[test]
fn a_converged_run_of_links_sysctls_and_timers_spawns_no_process() {
    let m = Machine::boot_private_network("converged");
    let mut kinds = String::from("[[directory]]\npath = \"/srv/links\"\n\n");
    for i in 0..50 {
        kinds += &format!(
            "[[link]]\npath = \"/srv/links/l{i}\"\ntarget = \"/etc/hostname\"\nowner = \"nobody\"\n\n"
        );
    }
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "2"),
        ("net.ipv4.conf.default.rp_filter", "2"),
        ("net.ipv4.icmp_echo_ignore_broadcasts", "1"),
        ("net.ipv4.ip_local_port_range", "20000 40000"),
    ] {
        kinds += &format!("[[sysctl]]\nkey = \"{key}\"\nvalue = \"{value}\"\n\n");
    }
    for i in 0..5 {
        kinds += &format!(
            "[[timer]]\nname = \"cairn-t{i}\"\non_calendar = \"daily\"\ncommand = \"true\"\n\n"
        );
    }
    m.write_file("/root/roles/service/role.toml", role(""));
    m.write_file("/root/roles/kinds/role.toml", role(&kinds));
    let first = m.apply_json("/root/roles/kinds", &["--detailed-exitcodes"]);
    assert_eq!(first.code, 2, "{first}");
    assert_eq!(first.report.summary.changed, 61, "{first}");

    let service_alone = pids_of_a_converged_run(&m, "/root/roles/service");
    let with_kinds = pids_of_a_converged_run(&m, "/root/roles/kinds");
    assert_eq!(
        with_kinds, service_alone,
        "a converged run of 50 links, 5 sysctls and 5 timers allocated more PIDs than one of a \
         service alone"
    );
}

#[test]
fn a_converged_run_spawns_nothing_for_a_service_only_notified_even_without_a_system_bus() {
    let m = Machine::boot("converged-notified");
    let file = "[[file]]\npath = \"/etc/cairn-flag\"\ncontent = \"1\"\n";
    m.write_file(
        "/root/roles/file/role.toml",
        format!("[role]\nname = \"file\"\n\n{file}"),
    );
    m.write_file(
        "/root/roles/notified/role.toml",
        format!(
            "[role]\nname = \"notified\"\n\n{file}notify = [\"service:systemd-journald\"]\n\n\
             [[service]]\nname = \"systemd-journald\"\n"
        ),
    );
    for dir in ["/root/roles/file", "/root/roles/notified"] {
        let run = m.apply_json(dir, &["--detailed-exitcodes"]);
        assert!(matches!(run.code, 0 | 2), "{run}");
    }
    // zbus finds no bus at this address, so the agent would fall back to
    // `systemctl show` for any service state it reads.
    let no_bus = "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/cairn-no-bus";
    let file_alone = pids_of_a_converged_run_with(&m, no_bus, "/root/roles/file");
    let notified = pids_of_a_converged_run_with(&m, no_bus, "/root/roles/notified");
    assert_eq!(
        notified, file_alone,
        "a converged run with a service only notified allocated more PIDs than one without"
    );
    // The fallback is real: a service with a declared state costs a process.
    m.write_file(
        "/root/roles/declared/role.toml",
        format!("[role]\nname = \"declared\"\n\n{file}\n[[service]]\nname = \"systemd-journald\"\nrunning = true\n"),
    );
    let declared = pids_of_a_converged_run_with(&m, no_bus, "/root/roles/declared");
    assert!(
        declared > file_alone,
        "{declared} PIDs, {file_alone} without a service"
    );
}
