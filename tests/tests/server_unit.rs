//! The server's systemd unit, in a real booted machine: it starts, serves
//! operators over TLS, stops cleanly on `systemctl stop` (SIGTERM), and keeps
//! what it acknowledged across the restart.

use cairn_e2e::{GUEST_RECIPES, Machine, workspace_binary, workspace_root};

#[test]
fn the_unit_runs_the_server_and_restarts_keep_the_data() {
    let server = workspace_binary("cairn-server");
    let cli = workspace_binary("cairn");
    let vm = Machine::boot_with(
        "server-unit",
        &[
            (server.as_path(), "/usr/local/bin/cairn-server"),
            (cli.as_path(), "/usr/local/bin/cairn"),
        ],
    );
    let unit =
        std::fs::read_to_string(workspace_root().join("server/systemd/cairn-server.service"))
            .unwrap();
    vm.write_file("/etc/systemd/system/cairn-server.service", unit);
    vm.write_file(
        "/etc/systemd/system/cairn-server.service.d/names.conf",
        "[Service]\nEnvironment=CAIRN_SERVER_NAMES=\"--name 127.0.0.1 --name localhost\"\n",
    );
    vm.sh_ok("systemctl daemon-reload && systemctl enable --now cairn-server");
    let wait_ready = "for i in $(seq 100); do curl -fsS http://127.0.0.1:9090/readyz && exit 0; sleep 0.1; done; \
                      systemctl status cairn-server; journalctl -u cairn-server --no-pager; exit 1";
    assert_eq!(vm.sh_ok(wait_ready).trim(), "ready");
    assert_eq!(vm.unit_property("cairn-server", "ActiveState"), "active");
    assert_eq!(vm.sh_ok("stat -c %a /var/lib/cairn-server").trim(), "700");
    assert_eq!(
        vm.sh_ok("stat -c %a /var/lib/cairn-server/ca.key").trim(),
        "600"
    );

    vm.sh_ok(
        "cairn-server operator add ops --role admin --out /root/ops.toml --server https://127.0.0.1:7443 \
         && chmod 600 /root/ops.toml",
    );
    let pushed = vm.sh_ok(&format!(
        "cairn --credentials /root/ops.toml role push {GUEST_RECIPES}/web -m first --promote production"
    ));
    assert!(pushed.contains("version 1"), "{pushed}");

    // systemctl stop sends SIGTERM: the server drains and exits 0.
    vm.sh_ok("systemctl stop cairn-server");
    assert_eq!(vm.unit_property("cairn-server", "Result"), "success");
    let journal = vm.sh_ok("journalctl -u cairn-server --no-pager -o cat");
    assert!(journal.contains("stopped"), "{journal}");

    vm.sh_ok("systemctl start cairn-server");
    assert_eq!(vm.sh_ok(wait_ready).trim(), "ready");
    let versions = vm.sh_ok("cairn --credentials /root/ops.toml --output json role versions web");
    assert!(versions.contains("\"version\": 1"), "{versions}");
    let channels = vm.sh_ok("cairn --credentials /root/ops.toml role channels web");
    assert!(channels.contains("production"), "{channels}");
}
