//! The main job, end to end: boot a fresh Debian machine with systemd and
//! converge `recipes/web` in it with the real agent, printing what it did.
//! `scripts/demo.sh` builds everything and runs this.

use cairn_e2e::{GUEST_RECIPES, Machine};

fn main() {
    let vm = Machine::boot("cairn-demo");
    println!(
        "== booted {} (systemd inside a systemd-nspawn machine)",
        vm.name()
    );

    let role = format!("{GUEST_RECIPES}/web");
    println!("\n== cairn-agent apply {role}   (first run: converges the machine)");
    let (code, out, err) = vm.agent(&["apply", &role]);
    print!("{out}{err}");
    if code != 0 {
        eprintln!("the first run failed (exit {code})");
        std::process::exit(1);
    }

    println!(
        "\n== cairn-agent apply {role} --detailed-exitcodes   (second run: nothing to change)"
    );
    let (code, out, err) = vm.agent(&["apply", &role, "--detailed-exitcodes"]);
    print!("{out}{err}");
    if code != 0 {
        eprintln!("the second run was not a no-change run (exit {code})");
        std::process::exit(1);
    }

    println!("\n== curl http://127.0.0.1:8080/   (inside the machine)");
    print!("{}", vm.sh_ok("curl -fsS http://127.0.0.1:8080/"));
    println!("\n== the machine is halted and removed now");
}
