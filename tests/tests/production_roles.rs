//! The production-style recipes, each converged twice in a booted machine
//! (the second run changes nothing), then checked from outside the agent:
//!
//! - `app` and `proxy` on one machine: the Python service answers through
//!   nginx's TLS, verified against the certificate the machine made; a
//!   changed variable changes the unit's `Environment=`, and the running
//!   service has it (systemd was reloaded before the restart).
//! - `monitoring`: the node exporter serves the metric the role's timer
//!   writes to its textfile collector.
//! - `hardening`, on a machine with a network of its own: the live kernel
//!   parameters (the host's untouched), masked units (`readlink`), sudo for
//!   the admins; a bad sudoers rule is refused by `visudo`, the live file
//!   unchanged and `sudo -n true` still working; a narrower rule goes live.

use std::fs;
use std::time::{Duration, Instant};

use cairn_e2e::{GUEST_RECIPES, Machine, Run};
use cairn_proto::report::ResourceStatus::{Changed, Failed, Skipped};
use serde_json::Value;

/// Converges the role in `dir` twice: the first run changes the machine
/// without a failure, the second finds nothing to do. Before them, `--noop`
/// reports changes pending and nothing failed or skipped. Returns the first
/// real run.
fn converge_twice(m: &Machine, dir: &str) -> Run {
    let noop = m.apply_json(dir, &["--noop", "--detailed-exitcodes"]);
    assert_eq!(
        (noop.code, noop.ids(Failed), noop.ids(Skipped)),
        (2, vec![], vec![]),
        "--noop of {dir}: {noop}"
    );
    let first = m.apply_json(dir, &["--detailed-exitcodes"]);
    assert_eq!(first.code, 2, "first run of {dir}: {first}");
    let second = m.apply_json(dir, &["--detailed-exitcodes"]);
    assert_eq!(second.code, 0, "second run of {dir}: {second}");
    first
}

/// A copy of recipe `name` at `/root/roles/NAME`, its `[vars]` line
/// `var = …` replaced with `var = value` (`value` as TOML writes it), for a
/// change an operator would make. Returns the copy's directory.
fn recipe_with_var(m: &Machine, name: &str, var: &str, value: &str) -> String {
    let dir = format!("/root/roles/{name}");
    m.sh_ok(&format!(
        "rm -rf {dir} && mkdir -p /root/roles && cp -r {GUEST_RECIPES}/{name} {dir}"
    ));
    let manifest = format!("{dir}/role.toml");
    let text = m.sh_ok(&format!("cat {manifest}"));
    let mut replaced = 0;
    let edited: String = text
        .lines()
        .map(|line| {
            if line.split('=').next().map(str::trim) == Some(var) {
                replaced += 1;
                format!("{var} = {value}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_eq!(replaced, 1, "recipe {name} has no one `{var} = …` line");
    m.write_file(&manifest, edited);
    dir
}

/// `GET /` of the app through the proxy, by the name in its certificate.
const THROUGH_THE_PROXY: &str = "curl -sS --max-time 10 --cacert /etc/nginx/tls/server.crt \
     --resolve app.internal:443:127.0.0.1 https://app.internal/";

/// What `GET /` of the app answers through the proxy, over TLS verified
/// against the certificate the proxy role made on the machine.
fn app_through_the_proxy(m: &Machine) -> Value {
    let body = m.sh_ok(&format!("{THROUGH_THE_PROXY} --fail"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// What `script` prints once it prints `want`, or after 10 s, what it
/// printed last.
fn eventually(m: &Machine, script: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = String::from_utf8_lossy(&m.sh(script).stdout).into_owned();
        if out == want || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main_pid(m: &Machine, unit: &str) -> String {
    m.unit_property(unit, "MainPID")
}

#[test]
fn python_service_behind_the_tls_proxy_takes_a_changed_unit() {
    let m = Machine::boot("app-proxy");
    let app = format!("{GUEST_RECIPES}/app");
    let first = converge_twice(&m, &app);
    assert_eq!(first.resource("service:app").status, Changed, "{first}");
    let first = converge_twice(&m, &format!("{GUEST_RECIPES}/proxy"));
    // nginx, started by its package, took the role's configuration by a reload.
    assert!(
        first.has_change("service:nginx", "refresh", "", "reloaded"),
        "{first}"
    );

    // Through the proxy, over TLS, to the service, as its user. nginx
    // reloads in the background (its old workers may still take a connection
    // with the old configuration for a moment): wait for the new one.
    let status = format!("{THROUGH_THE_PROXY} -o /dev/null -w '%{{http_code}}'");
    assert_eq!(eventually(&m, &status, "200"), "200");
    let answer = app_through_the_proxy(&m);
    assert_eq!(answer["service"], "app", "{answer}");
    assert_eq!(answer["greeting"], "hello from Cairn", "{answer}");
    assert_eq!(answer["forwarded_proto"], "https", "{answer}");
    let pid = main_pid(&m, "app.service");
    assert_eq!(answer["pid"].to_string(), pid, "{answer}");
    assert_eq!(m.sh_ok(&format!("ps -o user= -p {pid}")).trim(), "app");
    // The key was made on the machine, root's alone; plain HTTP redirects.
    assert_eq!(
        m.sh_ok("stat -c '%a %U' /etc/nginx/tls/server.key"),
        "600 root\n"
    );
    let redirect = "curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' http://127.0.0.1/";
    assert_eq!(
        eventually(&m, redirect, "301 https://127.0.0.1/"),
        "301 https://127.0.0.1/"
    );

    // An operator changes the greeting: the unit file changes, systemd
    // reloads it before the service restarts, and the new process has it.
    let changed = recipe_with_var(&m, "app", "greeting", "\"hello again\"");
    let run = converge_twice(&m, &changed);
    let service: Vec<_> = run
        .resource("service:app")
        .changes
        .iter()
        .map(|c| (c.property.as_str(), c.before.as_str(), c.after.as_str()))
        .collect();
    assert_eq!(
        service,
        [
            ("systemd", "unit changed on disk", "reloaded"),
            ("refresh", "", "restarted")
        ],
        "{run}"
    );
    assert_eq!(
        m.unit_property("app.service", "Environment"),
        "APP_PORT=8000 \"APP_GREETING=hello again\""
    );
    assert_eq!(m.unit_property("app.service", "NeedDaemonReload"), "no");
    let new_pid = main_pid(&m, "app.service");
    assert_ne!(new_pid, pid, "the service was not restarted");
    assert!(
        m.sh_ok(&format!("tr '\\0' '\\n' < /proc/{new_pid}/environ"))
            .lines()
            .any(|l| l == "APP_GREETING=hello again"),
        "the running service does not have the new environment"
    );
    let answer = app_through_the_proxy(&m);
    assert_eq!(answer["greeting"], "hello again", "{answer}");
    assert_eq!(answer["pid"].to_string(), new_pid, "{answer}");
}

#[test]
fn node_exporter_serves_the_metric_its_timer_writes() {
    let m = Machine::boot("monitoring");
    let first = converge_twice(&m, &format!("{GUEST_RECIPES}/monitoring"));
    // Started by its package with Debian's arguments, restarted with the role's.
    assert!(
        first.has_change(
            "service:prometheus-node-exporter",
            "refresh",
            "",
            "restarted"
        ),
        "{first}"
    );
    let timer = "apt-upgrades-textfile.timer";
    assert_eq!(m.unit_property(timer, "ActiveState"), "active");
    assert_eq!(m.unit_property(timer, "UnitFileState"), "enabled");
    let pid = main_pid(&m, "prometheus-node-exporter.service");
    assert!(
        m.sh_ok(&format!("tr '\\0' ' ' < /proc/{pid}/cmdline"))
            .contains("--web.listen-address=127.0.0.1:9100"),
        "the exporter does not run with the role's arguments"
    );

    // What the timer starts, run now rather than at the next quarter hour.
    m.sh_ok("systemctl start apt-upgrades-textfile.service");
    assert_eq!(
        m.unit_property("apt-upgrades-textfile.service", "Result"),
        "success"
    );
    assert_eq!(
        m.sh_ok("stat -c %U /var/lib/prometheus/node-exporter/apt.prom"),
        "prometheus\n"
    );
    // The exporter, restarted by the run, listens a moment after it starts.
    let up = "curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:9100/metrics";
    assert_eq!(eventually(&m, up, "200"), "200");
    let metrics = m.sh_ok("curl -sS --fail --max-time 10 http://127.0.0.1:9100/metrics");
    let pending = metrics
        .lines()
        .find_map(|l| l.strip_prefix("apt_upgrades_pending "))
        .unwrap_or_else(|| panic!("no apt_upgrades_pending in the exporter's metrics"));
    assert!(
        pending.parse::<u64>().is_ok(),
        "apt_upgrades_pending {pending}"
    );
    assert!(
        metrics.lines().any(|l| l == "node_textfile_scrape_error 0"),
        "the textfile collector failed"
    );
}

/// The recipe's kernel parameters and the values it sets.
const HARDENING_SYSCTLS: [(&str, &str); 9] = [
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.default.accept_redirects", "0"),
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.send_redirects", "0"),
    ("net.ipv4.conf.all.rp_filter", "1"),
    ("net.ipv4.conf.default.rp_filter", "1"),
    ("net.ipv4.conf.all.log_martians", "1"),
    ("net.ipv4.tcp_syncookies", "1"),
    ("net.ipv4.icmp_echo_ignore_broadcasts", "1"),
];

fn proc_sys(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

const SUDOERS: &str = "/etc/sudoers.d/admins";

/// `sudo -n CMD` as the recipe's admin `ops`: whether sudo let it run.
fn ops_may_sudo(m: &Machine, cmd: &str) -> bool {
    m.sh(&format!("runuser -u ops -- sudo -n {cmd}"))
        .status
        .success()
}

#[test]
fn hardening_sets_the_machines_kernel_parameters_and_refuses_a_bad_sudoers_rule() {
    let host_before: Vec<String> = HARDENING_SYSCTLS
        .iter()
        .map(|(key, _)| fs::read_to_string(proc_sys(key)).unwrap())
        .collect();
    let m = Machine::boot_private_network_with_packages("hardening", &["sudo", "openssh-server"]);
    let recipe = format!("{GUEST_RECIPES}/hardening");
    let first = converge_twice(&m, &recipe);
    for (key, value) in HARDENING_SYSCTLS {
        assert_eq!(
            m.sh_ok(&format!("cat {}", proc_sys(key))).trim(),
            value,
            "{key} in the machine"
        );
        let persisted = m.sh_ok(&format!("cat /etc/sysctl.d/99-cairn-{key}.conf"));
        assert!(
            persisted.ends_with(&format!("\n{key} = {value}\n")),
            "{persisted}"
        );
    }
    assert!(
        first
            .resource("sysctl:net.ipv4.conf.all.send_redirects")
            .status
            == Changed,
        "{first}"
    );
    let host_after: Vec<String> = HARDENING_SYSCTLS
        .iter()
        .map(|(key, _)| fs::read_to_string(proc_sys(key)).unwrap())
        .collect();
    assert_eq!(
        host_after, host_before,
        "the host's kernel parameters changed"
    );

    // Masked units, as `systemctl mask` leaves them.
    for unit in ["ctrl-alt-del.target", "debug-shell.service"] {
        assert_eq!(
            m.sh_ok(&format!("readlink /etc/systemd/system/{unit}")),
            "/dev/null\n"
        );
        assert_eq!(
            m.sh(&format!("systemctl is-enabled {unit}")).stdout,
            b"masked\n"
        );
    }
    // The admin and sudo; sshd runs with the checked drop-in.
    assert_eq!(m.sh_ok("id -nG ops"), "ops admins\n");
    assert!(ops_may_sudo(&m, "true"), "ops cannot sudo");
    let sshd = m.sh_ok("sshd -T");
    for line in [
        "permitrootlogin no",
        "passwordauthentication no",
        "allowgroups admins",
    ] {
        assert!(sshd.lines().any(|l| l == line), "sshd -T lacks {line:?}");
    }
    assert_eq!(m.unit_property("ssh.service", "ActiveState"), "active");

    // A rule with a syntax error: visudo refuses it, the live file stays and
    // sudo keeps working; the run fails saying so.
    let live = m.sh_ok(&format!("sha256sum {SUDOERS}"));
    let bad = recipe_with_var(&m, "hardening", "sudo_commands", "\"ALL, (\"");
    let run = m.apply_json(&bad, &["--detailed-exitcodes"]);
    assert_eq!(run.code, 4, "{run}");
    assert_eq!(run.ids(Failed), [format!("file:{SUDOERS}")], "{run}");
    let error = run
        .resource(&format!("file:{SUDOERS}"))
        .error
        .as_deref()
        .unwrap_or_default();
    for part in [
        "visudo -cqf '/etc/sudoers.d/.admins.cairn-tmp.",
        "refused the new content",
        "/etc/sudoers.d/admins is unchanged",
    ] {
        assert!(error.contains(part), "{part:?} not in {error}");
    }
    assert_eq!(m.sh_ok(&format!("sha256sum {SUDOERS}")), live);
    assert_eq!(m.sh_ok("ls -A /etc/sudoers.d"), "README\nadmins\n");
    assert!(
        ops_may_sudo(&m, "true"),
        "ops cannot sudo after the refusal"
    );

    // A narrower rule is valid: it goes live, and sudo follows it.
    let narrow = recipe_with_var(&m, "hardening", "sudo_commands", "\"/usr/bin/true\"");
    let run = converge_twice(&m, &narrow);
    assert_eq!(run.ids(Changed), [format!("file:{SUDOERS}")], "{run}");
    assert!(ops_may_sudo(&m, "/usr/bin/true"), "ops cannot sudo true");
    assert!(
        !ops_may_sudo(&m, "/usr/bin/id"),
        "ops may still sudo anything"
    );
}
