//! What installing a role's packages in one apt transaction saves (a
//! benchmark, not a test): the same packages installed by `cairn-agent apply`
//! on a fresh machine, once with nothing ordering them apart (so in one
//! `apt-get install`) and once each requiring the one before (so one by one).
//!
//! Every run boots a new machine from the image: no package lists, nothing
//! installed, as a VM on its first boot, so both ways pay the same `apt-get
//! update` and download from the same mirror. The rounds alternate the two
//! ways (the order flips every round) so the mirror's and the host's changing
//! load fall on both. A run counts only if it exits 2 with every package
//! `changed`, dpkg has them all installed, and apt's history holds one
//! transaction (together) or one per package (one by one); else the bench
//! fails. The time is the agent's run inside the machine (bash's
//! `$EPOCHREALTIME` around it, so `nsenter` is not counted); apt and dpkg are
//! most of it, so a debug build of the agent measures the same.
//!
//! `scripts/bench-packages.sh` builds the agent and runs this. Flags:
//! `--runs N` (3 rounds), `--packages a,b,c,d` (four small packages from
//! Debian's archive).

use std::process::ExitCode;

use cairn_e2e::{GUEST_AGENT, Machine};
use cairn_proto::report::{ResourceStatus, RunReport};

/// Small, not on a base system, with few dependencies that they do not share.
const PACKAGES: [&str; 4] = ["figlet", "tree", "jq", "htop"];
/// Where the role goes inside the machine.
const ROLE_DIR: &str = "/root/bench-packages";

struct Args {
    runs: usize,
    packages: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        runs: 3,
        packages: PACKAGES.map(String::from).to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                let v = it.next().ok_or("--runs needs a number")?;
                args.runs = match v.parse() {
                    Ok(n) if (1..=50).contains(&n) => n,
                    _ => return Err(format!("--runs {v:?}: a number from 1 to 50")),
                };
            }
            "--packages" => {
                let v = it
                    .next()
                    .ok_or("--packages needs a list like figlet,tree")?;
                args.packages = v.split(',').map(|p| p.trim().to_string()).collect();
                let valid = |p: &String| {
                    p.len() >= 2
                        && p.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b)
                        })
                };
                if !(2..=20).contains(&args.packages.len()) || !args.packages.iter().all(valid) {
                    return Err(format!(
                        "--packages {v:?}: 2 to 20 Debian package names, comma-separated"
                    ));
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Together,
    OneByOne,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Together => "one transaction",
            Way::OneByOne => "one by one",
        }
    }

    /// The role: the packages alone, or each requiring the one before.
    fn role(self, packages: &[String]) -> String {
        let mut toml = String::from("[role]\nname = \"bench-packages\"\n");
        for (i, p) in packages.iter().enumerate() {
            toml.push_str(&format!("\n[[package]]\nname = \"{p}\"\n"));
            if self == Way::OneByOne && i > 0 {
                toml.push_str(&format!("requires = [\"package:{}\"]\n", packages[i - 1]));
            }
        }
        toml
    }

    /// The apt transactions the run must have made.
    fn transactions(self, packages: &[String]) -> usize {
        match self {
            Way::Together => 1,
            Way::OneByOne => packages.len(),
        }
    }
}

/// Boots a fresh machine and times one converging run the `way` asks.
fn measure(way: Way, round: usize, packages: &[String]) -> Result<f64, String> {
    let m = Machine::boot(&format!("bench-packages-{round}-{}", way as u8));
    m.write_file(&format!("{ROLE_DIR}/role.toml"), way.role(packages));
    let timed = m.sh_ok(&format!(
        "exec bash -c 'start=$EPOCHREALTIME; {GUEST_AGENT} apply {ROLE_DIR} --format json \
         --detailed-exitcodes >/root/report.json 2>/root/agent.err; rc=$?; \
         end=$EPOCHREALTIME; echo $rc $start $end'"
    ));
    let fields: Vec<&str> = timed.split_whitespace().collect();
    let [rc, start, end] = fields[..] else {
        return Err(format!("unexpected timing output {timed:?}"));
    };
    let report: RunReport = serde_json::from_str(&m.sh_ok("cat /root/report.json"))
        .map_err(|e| format!("no report ({e}): {}", m.sh_ok("cat /root/agent.err")))?;
    let all_changed = report.resources.len() == packages.len()
        && report
            .resources
            .iter()
            .all(|r| r.status == ResourceStatus::Changed);
    if rc != "2" || !all_changed {
        return Err(format!(
            "{}: exit {rc}, expected 2 with every package changed:\n{}",
            way.name(),
            report.human()
        ));
    }
    let installed = m.sh_ok(&format!(
        "dpkg-query --show --showformat='${{db:Status-Abbrev}}\\n' {} | grep -c '^ii'; true",
        packages.join(" ")
    ));
    if installed.trim() != packages.len().to_string() {
        return Err(format!(
            "{}: dpkg has {} of {} installed",
            way.name(),
            installed.trim(),
            packages.len()
        ));
    }
    let transactions = m.sh_ok("grep -c '^Start-Date:' /var/log/apt/history.log; true");
    if transactions.trim() != way.transactions(packages).to_string() {
        return Err(format!(
            "{}: apt's history holds {} transactions, expected {}",
            way.name(),
            transactions.trim(),
            way.transactions(packages)
        ));
    }
    let seconds = |s: &str| s.parse::<f64>().map_err(|e| format!("{s:?}: {e}"));
    Ok(seconds(end)? - seconds(start)?)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn run(args: &Args) -> Result<(), String> {
    println!("packages: {}", args.packages.join(", "));
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.runs {
        let order = if round.is_multiple_of(2) {
            [Way::Together, Way::OneByOne]
        } else {
            [Way::OneByOne, Way::Together]
        };
        for way in order {
            let s = measure(way, round, &args.packages)?;
            eprintln!("round {}: {} in {s:.2} s", round + 1, way.name());
            times[way as usize].push(s);
        }
    }
    println!("| way | runs | min s | median s | max s |\n|---|---|---|---|---|");
    for way in [Way::OneByOne, Way::Together] {
        let t = &times[way as usize];
        let min = t.iter().copied().fold(f64::INFINITY, f64::min);
        let max = t.iter().copied().fold(0.0, f64::max);
        println!(
            "| {} | {} | {min:.2} | {:.2} | {max:.2} |",
            way.name(),
            t.len(),
            median(t)
        );
    }
    let (one, together) = (median(&times[1]), median(&times[0]));
    println!(
        "one transaction saves {:.2} s of {one:.2} s ({:.0} %) at the median",
        one - together,
        100.0 * (one - together) / one
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
