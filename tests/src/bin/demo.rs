//! The main job, the whole story on one machine: a Cairn server on loopback,
//! `recipes/web` pushed and promoted, a join token made; then a fresh Debian
//! machine boots with nothing but the cloud-init user-data of
//! `docs/cloud-init.md`, which installs the static agent, enrolls it,
//! converges the role and starts the daemon; the server lists the node and
//! shows its first report. `scripts/demo.sh` builds everything and runs this.
//! With `--keep`, the server and the machine stay until Enter is pressed, and
//! a sign-in link to the server's web dashboard is printed.

use std::time::{Duration, Instant};

use cairn_e2e::{FirstBoot, Machine, Server, workspace_root};

const ROLE: &str = "web";
const CHANNEL: &str = "production";

fn main() {
    let dir = tempfile::tempdir().expect("could not make a temporary directory");

    let server = Server::start(dir.path());
    println!(
        "== cairn-server serve   (SQLite and its CA in a temporary directory; listening at {})",
        server.url()
    );
    let ops = server.add_operator("demo", &dir.path().join("demo.toml"));

    println!("\n== cairn role push recipes/{ROLE} --promote {CHANNEL}; cairn role list");
    let recipe = workspace_root().join("recipes").join(ROLE);
    let version = ops.push(&recipe, "demo", CHANNEL);
    print!("{}", ops.cairn(&["role", "list"]));

    println!("\n== cairn token create --role {ROLE}   and   cairn-server ca pin");
    let boot = FirstBoot::new(
        &server,
        &ops,
        (ROLE, CHANNEL),
        &[server.url()],
        "cairn-demo",
    );
    println!("join token {}\nCA pin {}", boot.token, boot.ca_pin);
    let seed = &boot.seed;
    println!("\n== the user-data of docs/cloud-init.md, filled in");
    print!("{}", seed.user_data);

    println!("\n== a fresh machine boots with it (systemd and cloud-init in systemd-nspawn)");
    let vm = Machine::boot_cloud_init("cairn-demo", seed, &[]);
    let status = vm.cloud_init_status();
    println!(
        "\n== /var/log/cloud-init-output.log, its final stage   (runcmd: download, enroll, first run, daemon)"
    );
    let log = vm.cloud_init_output();
    // The earlier stages print cloud-init's own network tables and warnings.
    let final_stage = log
        .find("running 'modules:final'")
        .map_or(0, |at| log[..at].rfind('\n').map_or(0, |line| line + 1));
    print!("{}", &log[final_stage..]);
    if !status.contains("status: done") {
        eprintln!("cloud-init did not succeed:\n{status}");
        std::process::exit(1);
    }
    println!(
        "\n== systemctl is-active cairn-agent: {}",
        vm.sh_ok("systemctl is-active cairn-agent").trim()
    );

    // The daemon's first run at start reports too; wait for it so the list
    // below is the settled picture.
    let deadline = Instant::now() + Duration::from_secs(60);
    let reports = loop {
        let list = ops.cairn_json(&["report", "list"]);
        let reports = list["reports"].as_array().cloned().unwrap_or_default();
        if reports.len() >= 2 || Instant::now() > deadline {
            break reports;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let Some(first) = reports.last() else {
        eprintln!("the node never reported");
        std::process::exit(1);
    };

    println!("\n== cairn node list");
    print!("{}", ops.cairn(&["node", "list"]));
    println!("\n== cairn report list");
    print!("{}", ops.cairn(&["report", "list"]));
    let id = first["id"].to_string();
    println!("\n== cairn report show {id}   (the first run, in cloud-init)");
    print!("{}", ops.cairn(&["report", "show", &id]));
    println!("\n== cairn status");
    print!("{}", ops.cairn(&["status"]));

    println!(
        "\n== curl http://127.0.0.1:8080/   (inside the machine: role {ROLE} version {version})"
    );
    print!("{}", vm.sh_ok("curl -fsS http://127.0.0.1:8080/"));
    if std::env::args().any(|a| a == "--keep") {
        let credentials = dir.path().join("demo.toml");
        println!(
            "\n== cairn ui login   (the web dashboard at {}; another link: cairn --credentials {} ui login)",
            server.ui_url(),
            credentials.display()
        );
        print!("{}", ops.cairn(&["ui", "login"]));
        println!("\npress Enter to stop the server and remove the machine");
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    println!("\n== the machine is halted and removed, and the server stopped, now");
}
