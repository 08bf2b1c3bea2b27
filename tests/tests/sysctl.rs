//! `[[sysctl]]` in a booted machine with a network namespace of its own, so
//! the keys it changes (`net.*`) are the machine's alone: the timeline, the
//! file that sets the value again at boot, a value the kernel refuses, and
//! the host's own value left alone.

use std::fs;

use cairn_e2e::{Machine, Timeline};
use cairn_proto::report::ResourceStatus::Failed;

const LIVE: &str = "/proc/sys/net/ipv4/ip_forward";
const CONF: &str = "/etc/sysctl.d/99-cairn-net.ipv4.ip_forward.conf";

fn role(value: &str) -> String {
    format!("[[sysctl]]\nkey = \"net.ipv4.ip_forward\"\nvalue = {value}\n")
}

#[test]
fn sysctl_timeline_in_the_machines_own_network_namespace() {
    let host_before = fs::read_to_string(LIVE).unwrap();
    let m = Machine::boot_private_network("sysctl");
    // A new namespace starts with the host's IPv4 settings: aim for the other value.
    let start = m.sh_ok(&format!("cat {LIVE}")).trim().to_string();
    let want = if start == "1" { "0" } else { "1" };
    let t = Timeline::new(
        &m,
        "sysctl:net.ipv4.ip_forward",
        &format!("cat {LIVE}; cat {CONF} 2>/dev/null; true"),
    );
    let after = t.converges(
        &role(want),
        &[("value", &start, want), ("persisted", "absent", want)],
    );
    assert_eq!(
        after,
        format!(
            "{want}\n# Managed by Cairn ([[sysctl]] net.ipv4.ip_forward); changes here are \
             replaced.\nnet.ipv4.ip_forward = {want}\n"
        )
    );

    // The file is what systemd-sysctl applies at boot.
    m.sh_ok(&format!(
        "echo {start} > {LIVE}; /lib/systemd/systemd-sysctl {CONF}"
    ));
    assert_eq!(m.sh_ok(&format!("cat {LIVE}")).trim(), want);

    // Drift in the live value alone: only it is written.
    m.sh_ok(&format!("echo {start} > {LIVE}"));
    t.converges(&role(want), &[("value", &start, want)]);
    // And in the file alone.
    m.sh_ok(&format!("sed -i 's/= {want}/= {start}/' {CONF}"));
    t.converges(&role(want), &[("persisted", &start, want)]);
    // A file others may write would set what they like at boot: made root's alone.
    m.sh_ok(&format!("chmod 666 {CONF}"));
    let before = format!("{want}, owner root:root, mode 0666");
    t.converges(&role(want), &[("persisted", &before, want)]);
    assert_eq!(m.sh_ok(&format!("stat -c %a {CONF}")), "644\n");

    assert_eq!(
        fs::read_to_string(LIVE).unwrap(),
        host_before,
        "the host's value changed"
    );
}

#[test]
fn sysctl_values_of_several_fields_and_refused_values() {
    let m = Machine::boot_private_network("sysctl-range");
    let live = "/proc/sys/net/ipv4/ip_local_port_range";
    let key = "net.ipv4.ip_local_port_range";
    let t = Timeline::new(&m, &format!("sysctl:{key}"), &format!("cat {live}"));
    // The kernel prints the fields with a tab between them.
    let start = m
        .sh_ok(&format!("cat {live}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let range = |value: &str| format!("[[sysctl]]\nkey = \"{key}\"\nvalue = \"{value}\"\n");
    assert_ne!(start, "20000 40000");
    let after = t.converges(
        &range("20000 40000"),
        &[
            ("value", &start, "20000 40000"),
            ("persisted", "absent", "20000 40000"),
        ],
    );
    assert_eq!(after, "20000\t40000\n");

    // The kernel refuses a range that ends before it starts: the run fails
    // saying so, and nothing is persisted to fail again at every boot.
    t.fails(
        &range("40000 30000"),
        &[
            ("value", "20000 40000", "40000 30000"),
            ("persisted", "20000 40000", "40000 30000"),
        ],
        &["could not write /proc/sys/net/ipv4/ip_local_port_range"],
    );
    assert!(
        m.sh_ok(&format!("cat /etc/sysctl.d/99-cairn-{key}.conf"))
            .ends_with(&format!("{key} = 20000 40000\n"))
    );

    // A key the kernel does not have.
    m.write_file(
        "/root/roles/nokey/role.toml",
        "[role]\nname = \"nokey\"\n\n[[sysctl]]\nkey = \"net.ipv4.cairn_no_such_key\"\nvalue = 1\n",
    );
    let run = m.apply_json("/root/roles/nokey", &["--detailed-exitcodes"]);
    assert_eq!(
        (run.code, run.ids(Failed)),
        (4, vec!["sysctl:net.ipv4.cairn_no_such_key"]),
        "{run}"
    );
    assert_eq!(
        run.resource("sysctl:net.ipv4.cairn_no_such_key")
            .error
            .as_deref(),
        Some(
            "could not check sysctl:net.ipv4.cairn_no_such_key: the kernel has no parameter \
             net.ipv4.cairn_no_such_key \
             (/proc/sys/net/ipv4/cairn_no_such_key does not exist)"
        ),
        "{run}"
    );
}
