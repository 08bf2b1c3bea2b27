//! The agent's no-change benchmark (a benchmark, not a test): how long a
//! `cairn-agent apply` takes, and how much memory it needs, when the machine is
//! already converged.
//!
//! Boots one machine, generates roles of 100 and 1,000 resources inside it
//! (files with content, owner and mode; directories; packages that are
//! installed; services that run), converges each once, checks that a second
//! run changes nothing, then times `--runs` no-change runs from inside the
//! machine (bash's `$EPOCHREALTIME` around the command, so `nsenter` is not
//! counted) and reads the peak RSS with GNU time (`%M`, the agent's
//! `ru_maxrss` as `wait4` reports it). Prints a table, where the time of a run
//! goes (from the agent's own report), and exits non-zero when a no-change run
//! changed something.
//!
//! `scripts/bench-agent.sh` builds the release agent and runs this. Flags:
//! `--runs N` (30), `--sizes 100,1000`, `--profile`: also times the same role
//! without owners and groups, and without services (what each costs), and
//! prints `strace -c -f` of a run and the paths it opens.

use std::collections::BTreeMap;
use std::process::ExitCode;

use cairn_e2e::{GUEST_AGENT, Machine};
use cairn_proto::report::RunReport;

/// The targets from the issue: (resources, wall ms, peak RSS MiB).
const TARGETS: [(usize, f64, Option<f64>); 2] = [(100, 15.0, Some(10.0)), (1000, 100.0, None)];
/// How many no-change runs are measured under GNU time for the peak RSS.
const RSS_RUNS: usize = 10;
/// How many no-change runs print a JSON report for the breakdown.
const REPORT_RUNS: usize = 5;
/// Where the roles and scripts go inside the machine.
const BENCH_DIR: &str = "/root/cairn-bench";

/// `time.sh RUNS OUT CMD…`: runs CMD RUNS times, its stdout to `OUT.I` (or
/// discarded when OUT is `-`), and prints `EXIT START END` per run.
const TIME_SCRIPT: &str = r#"#!/bin/bash
runs=$1 out=$2
shift 2
for ((i = 0; i < runs; i++)); do
  dest=/dev/null
  [ "$out" = - ] || dest=$out.$i
  start=$EPOCHREALTIME
  "$@" >"$dest" 2>/tmp/cairn-bench.err
  rc=$?
  end=$EPOCHREALTIME
  echo "$rc $start $end"
done
"#;

struct Args {
    runs: usize,
    sizes: Vec<usize>,
    profile: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        runs: 30,
        sizes: vec![100, 1000],
        profile: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                let v = it.next().ok_or("--runs needs a number")?;
                args.runs = v
                    .parse()
                    .map_err(|e| format!("--runs {v:?}: {e}"))
                    .and_then(|n: usize| {
                        if n == 0 {
                            Err("--runs must be at least 1".into())
                        } else {
                            Ok(n)
                        }
                    })?;
            }
            "--sizes" => {
                let v = it.next().ok_or("--sizes needs a list like 100,1000")?;
                args.sizes = v
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--sizes {v:?}: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
                if args.sizes.iter().any(|&n| n < 20) {
                    return Err("--sizes: a role needs at least 20 resources for the mix".into());
                }
            }
            "--profile" => args.profile = true,
            "-h" | "--help" => {
                println!("usage: bench-agent [--runs N] [--sizes 100,1000] [--profile]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(args)
}

/// What the machine has that a role may declare without changing anything.
struct Inventory {
    /// Installed packages, sorted.
    packages: Vec<String>,
    /// Running services (without `.service`), sorted.
    services: Vec<String>,
}

fn inventory(m: &Machine) -> Inventory {
    let mut packages: Vec<String> = m
        .sh_ok("dpkg-query -W -f '${db:Status-Status} ${Package}\\n'")
        .lines()
        .filter_map(|l| l.strip_prefix("installed "))
        .map(str::to_string)
        .collect();
    packages.sort();
    packages.dedup();
    let mut services: Vec<String> = m
        .sh_ok("systemctl list-units --type=service --state=running --no-legend --plain")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|u| !u.contains('@'))
        .filter_map(|u| u.strip_suffix(".service"))
        .map(str::to_string)
        .collect();
    services.sort();
    Inventory { packages, services }
}

/// How many resources of each kind a role has.
#[derive(Clone, Copy)]
struct Mix {
    files: usize,
    directories: usize,
    packages: usize,
    services: usize,
}

impl Mix {
    /// A tenth directories, a fifth packages (as many as are installed), a
    /// twentieth services (as many as run), files for the rest.
    fn of(n: usize, inv: &Inventory) -> Mix {
        let services = inv.services.len().min((n / 20).max(1));
        let packages = inv.packages.len().min(n / 5);
        let directories = (n / 10).max(1);
        Mix {
            files: n - services - packages - directories,
            directories,
            packages,
            services,
        }
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What a role declares beyond paths and contents: the full role has both;
/// the profile's variants leave one out to measure what it costs.
#[derive(Clone, Copy)]
struct Variant {
    label: &'static str,
    /// `owner` and `group` on files and directories.
    owners: bool,
    /// The `[[service]]` resources.
    services: bool,
}

const FULL: Variant = Variant {
    label: "full",
    owners: true,
    services: true,
};
/// Leave-one-out variants of the same, already converged, role.
const VARIANTS: [Variant; 2] = [
    Variant {
        label: "no-owners",
        owners: false,
        services: true,
    },
    Variant {
        label: "no-services",
        owners: true,
        services: false,
    },
];

/// The role of `n` resources: directories under `/srv/cairn-bench-N`, files in
/// them (0.4 to 1.5 KiB each, with owners, groups and modes that differ from
/// the defaults), installed packages and running services.
fn role_toml(n: usize, mix: Mix, inv: &Inventory, v: Variant) -> String {
    const OWNERS: [&str; 3] = ["root", "daemon", "nobody"];
    const GROUPS: [&str; 3] = ["root", "adm", "nogroup"];
    const FILE_MODES: [&str; 3] = ["0644", "0640", "0600"];
    const DIR_MODES: [&str; 2] = ["0755", "0750"];
    let root = format!("/srv/cairn-bench-{n}");
    let mut t = format!(
        "[role]\nname = \"bench-{n}\"\ndescription = \"no-change benchmark: {} files, {} directories, {} packages, {} services\"\n",
        mix.files, mix.directories, mix.packages, mix.services
    );
    let dir = |d: usize| {
        if d == 0 {
            root.clone()
        } else {
            format!("{root}/d{d:03}")
        }
    };
    for d in 0..mix.directories {
        t += &format!("\n[[directory]]\npath = \"{}\"\n", dir(d));
        if v.owners {
            t += &format!(
                "owner = \"{}\"\ngroup = \"{}\"\n",
                OWNERS[d % 2],
                GROUPS[d % 3]
            );
        }
        t += &format!("mode = \"{}\"\n", DIR_MODES[d % 2]);
    }
    for f in 0..mix.files {
        let mut content = format!("# cairn benchmark file {f} of {n}\n");
        for k in 0..(16 + f % 48) {
            content += &format!("key_{k:02} = value-{f}-{k}\n");
        }
        t += &format!(
            "\n[[file]]\npath = \"{}/f{f:04}.conf\"\ncontent = {}\n",
            dir(f % mix.directories),
            toml_str(&content),
        );
        if v.owners {
            t += &format!(
                "owner = \"{}\"\ngroup = \"{}\"\n",
                OWNERS[f % 3],
                GROUPS[(f / 3) % 3]
            );
        }
        t += &format!("mode = \"{}\"\n", FILE_MODES[f % 3]);
    }
    for p in inv.packages.iter().take(mix.packages) {
        t += &format!("\n[[package]]\nname = \"{p}\"\n");
    }
    for s in inv
        .services
        .iter()
        .take(if v.services { mix.services } else { 0 })
    {
        t += &format!("\n[[service]]\nname = \"{s}\"\nrunning = true\n");
    }
    t
}

/// Seconds since the epoch, exactly, as microseconds: `$EPOCHREALTIME`.
fn epoch_us(s: &str) -> u64 {
    let (sec, frac) = s.split_once('.').unwrap_or((s, "0"));
    let frac = format!("{frac:0<6}");
    sec.parse::<u64>().expect("seconds") * 1_000_000
        + frac[..6].parse::<u64>().expect("microseconds")
}

/// Seconds since midnight of an RFC 3339 UTC timestamp (`…T12:34:56.789Z`).
fn day_secs(ts: &str) -> f64 {
    let time = ts.split_once('T').map_or(ts, |(_, t)| t);
    let time = time.trim_end_matches('Z').trim_end_matches("+00:00");
    let mut parts = time.split(':');
    let mut next = || {
        parts
            .next()
            .and_then(|p| p.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    next() * 3600.0 + next() * 60.0 + next()
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 50.0)
}

/// What one size measured.
struct Measured {
    n: usize,
    mix: Mix,
    /// Wall time of the no-change runs (human output), ms.
    wall_ms: Vec<f64>,
    /// Peak RSS of each run under GNU time, KiB.
    rss_kib: Vec<u64>,
    /// `systemctl show` of the role's services on its own: (median ms, KiB).
    systemctl: Option<(f64, u64)>,
    /// Runs with `--format json`: median wall, engine span, and outside it.
    json_wall_ms: f64,
    engine_ms: f64,
    outside_ms: f64,
    /// Per resource type: count, median of the summed µs, median of the max.
    types: BTreeMap<String, (usize, f64, f64)>,
    /// Median ms of `cairn-agent --version` and of `validate ROLE`.
    start_ms: f64,
    validate_ms: f64,
    /// With `--profile`: (variant, median wall ms, peak RSS KiB) of the
    /// leave-one-out roles.
    variants: Vec<(&'static str, f64, u64)>,
}

/// Runs `cmd` (a shell command line) `runs` times with `time.sh`; returns the
/// wall time of each run in ms. Any exit but 0 is an error: for the agent
/// with `--detailed-exitcodes`, 2 means a no-change run changed something.
fn time_runs(m: &Machine, runs: usize, out: &str, cmd: &str) -> Result<Vec<f64>, String> {
    let text = m.sh_ok(&format!("bash {BENCH_DIR}/time.sh {runs} {out} {cmd}"));
    let mut wall = Vec::with_capacity(runs);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [rc, start, end] = f[..] else {
            return Err(format!("time.sh printed {line:?}"));
        };
        if rc != "0" {
            let err = m.sh_ok("cat /tmp/cairn-bench.err");
            return Err(format!(
                "`{cmd}` exited {rc} (for the agent: 2 changes, 4 failures, 6 both):\n{err}"
            ));
        }
        wall.push((epoch_us(end) - epoch_us(start)) as f64 / 1000.0);
    }
    if wall.len() != runs {
        return Err(format!("time.sh printed {} runs of {runs}", wall.len()));
    }
    Ok(wall)
}

/// Runs `cmd` (the agent, changing nothing) `RSS_RUNS` times under GNU time;
/// returns each run's `%M`, KiB.
fn peak_rss(m: &Machine, cmd: &str) -> Result<Vec<u64>, String> {
    let mut kib = Vec::with_capacity(RSS_RUNS);
    for _ in 0..RSS_RUNS {
        let text = m.sh_ok(&format!(
            "/usr/bin/time -f '%x %M' -o /tmp/cairn-bench.rss {cmd} >/dev/null; cat /tmp/cairn-bench.rss"
        ));
        let mut f = text.split_whitespace();
        let (Some(rc), Some(k)) = (f.next(), f.next().and_then(|k| k.parse().ok())) else {
            return Err(format!("GNU time printed {text:?}"));
        };
        if rc != "0" {
            return Err(format!("`{cmd}` under GNU time exited {rc}"));
        }
        kib.push(k);
    }
    Ok(kib)
}

/// Writes role `variant` of `n` resources, converges it, and checks that a
/// second run changes nothing; returns its directory inside the machine.
fn prepare(m: &Machine, n: usize, mix: Mix, inv: &Inventory, v: Variant) -> Result<String, String> {
    let role = format!("{BENCH_DIR}/r{n}-{}", v.label);
    m.write_file(&format!("{role}/role.toml"), role_toml(n, mix, inv, v));
    let first = m.apply_json(&role, &["--detailed-exitcodes"]);
    let s = &first.report.summary;
    if first.code & 4 != 0 || s.failed + s.skipped > 0 {
        return Err(format!("the converging run of {role} failed:\n{first}"));
    }
    let second = m.apply_json(&role, &["--detailed-exitcodes"]);
    let s = &second.report.summary;
    if second.code != 0 || s.changed != 0 || s.unchanged != s.total {
        return Err(format!(
            "the second run of {role} was not a no-change run:\n{second}"
        ));
    }
    Ok(role)
}

fn bench(m: &Machine, n: usize, inv: &Inventory, args: &Args) -> Result<Measured, String> {
    let mix = Mix::of(n, inv);
    eprintln!(
        "bench {n}: {} files, {} directories, {} packages, {} services",
        mix.files, mix.directories, mix.packages, mix.services
    );
    let role = prepare(m, n, mix, inv, FULL)?;
    let apply = format!("{GUEST_AGENT} apply {role} --detailed-exitcodes");

    // Wall time, measured inside: the product's default (human) output.
    let wall_ms = time_runs(m, args.runs, "-", &apply)?;

    // Peak RSS, with GNU time, of runs that also change nothing.
    let rss_kib = peak_rss(m, &apply)?;

    // What a run costs before the engine: starting the binary (`--version`),
    // and starting plus reading, parsing and validating the role (`validate`).
    let mut start_ms = time_runs(m, args.runs, "-", &format!("{GUEST_AGENT} --version"))?;
    let mut validate_ms = time_runs(m, args.runs, "-", &format!("{GUEST_AGENT} validate {role}"))?;

    // The agent reads service states with one `systemctl show`: a child whose
    // time is in the first service's check and whose peak RSS counts in the
    // agent's `ru_maxrss`. Measured on its own, the same call.
    let systemctl = if mix.services > 0 {
        let units: Vec<String> = inv
            .services
            .iter()
            .take(mix.services)
            .map(|s| format!("{s}.service"))
            .collect();
        let show = format!(
            "systemctl show --property=Id,LoadState,ActiveState,UnitFileState {}",
            units.join(" ")
        );
        let mut ms = time_runs(m, args.runs, "-", &show)?;
        let kib = m
            .sh_ok(&format!(
                "/usr/bin/time -f '%M' -o /tmp/cairn-bench.rss {show} >/dev/null; cat /tmp/cairn-bench.rss"
            ))
            .trim()
            .parse()
            .map_err(|e| format!("GNU time's %M of systemctl: {e}"))?;
        Some((median(&mut ms), kib))
    } else {
        None
    };

    // Where the time goes: runs with a JSON report, each timed inside, the
    // report giving the engine's span and each resource's duration.
    let prefix = format!("{BENCH_DIR}/report-{n}");
    let mut json_wall = time_runs(m, REPORT_RUNS, &prefix, &format!("{apply} --format json"))?;
    let mut engine = Vec::new();
    let mut outside = Vec::new();
    let mut per_type: BTreeMap<String, (usize, Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (i, wall) in json_wall.iter().enumerate() {
        let text = m.sh_ok(&format!("cat {prefix}.{i}"));
        let r: RunReport =
            serde_json::from_str(&text).map_err(|e| format!("{prefix}.{i} is no report: {e}"))?;
        if r.summary.unchanged != r.summary.total {
            return Err(format!(
                "a no-change run of {role} changed something: {:?}",
                r.summary
            ));
        }
        let mut span = day_secs(&r.finished_at) - day_secs(&r.started_at);
        if span < 0.0 {
            span += 86_400.0;
        }
        engine.push(span * 1000.0);
        outside.push(wall - span * 1000.0);
        let mut sums: BTreeMap<String, (usize, f64, f64)> = BTreeMap::new();
        for res in &r.resources {
            let kind = res.id.split_once(':').map_or(res.id.as_str(), |(k, _)| k);
            let e = sums.entry(kind.to_string()).or_default();
            let ms = res.duration_us as f64 / 1000.0;
            e.0 += 1;
            e.1 += ms;
            e.2 = e.2.max(ms);
        }
        for (k, (count, sum, max)) in sums {
            let e = per_type.entry(k).or_default();
            e.0 = count;
            e.1.push(sum);
            e.2.push(max);
        }
    }
    let types = per_type
        .into_iter()
        .map(|(k, (count, mut sums, mut maxes))| {
            (k, (count, median(&mut sums), median(&mut maxes)))
        })
        .collect();

    let mut variants = Vec::new();
    if args.profile {
        for v in VARIANTS {
            if !v.services && mix.services == 0 {
                continue;
            }
            let role = prepare(m, n, mix, inv, v)?;
            let cmd = format!("{GUEST_AGENT} apply {role} --detailed-exitcodes");
            let mut ms = time_runs(m, args.runs, "-", &cmd)?;
            let kib = peak_rss(m, &cmd)?.into_iter().max().unwrap_or(0);
            variants.push((v.label, median(&mut ms), kib));
        }
        // Restore the full role's state (the variants leave owners alone).
        prepare(m, n, mix, inv, FULL)?;
        let text = m.sh(&format!(
            "strace -f -c -o /tmp/cairn-bench.strace {apply} >/dev/null; head -n 12 /tmp/cairn-bench.strace; \
             strace -f -qq -e trace=openat,execve -o /tmp/cairn-bench.opens {apply} >/dev/null; \
             echo '-- openat/execve calls by path (top 8):'; \
             grep -o -e 'openat([^\"]*\"[^\"]*\"' -e 'execve(\"[^\"]*\"' /tmp/cairn-bench.opens \
               | sed -e 's/openat([^\"]*\"/openat /' -e 's/execve(\"/execve /' -e 's/\"$//' \
               | sed -E 's|^openat /srv/cairn-bench-[0-9]+/.*|openat (a managed file or directory)|' \
               | sort | uniq -c | sort -rn | head -n 8; \
             strace -f -qq -e trace=write -o /tmp/cairn-bench.writes {apply} --format json >/dev/null; \
             echo \"-- write calls of a run with --format json: $(grep -c '^[0-9]* *write(1,' /tmp/cairn-bench.writes) to stdout\""
        ));
        println!(
            "\n== strace of a no-change run of {n} resources\n{}",
            String::from_utf8_lossy(&text.stdout)
        );
    }

    Ok(Measured {
        n,
        mix,
        wall_ms,
        rss_kib,
        systemctl,
        json_wall_ms: median(&mut json_wall),
        engine_ms: median(&mut engine),
        outside_ms: median(&mut outside),
        types,
        start_ms: median(&mut start_ms),
        validate_ms: median(&mut validate_ms),
        variants,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_results(results: &[Measured], runs: usize) {
    println!(
        "\n== cairn-agent apply, converged, release build: wall time over {runs} runs, peak RSS over {RSS_RUNS}"
    );
    println!(
        "| resources | files | dirs | packages | services | min ms | median ms | p95 ms | max ms | peak RSS MiB | target | met |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for r in results {
        let mut w = r.wall_ms.clone();
        w.sort_by(f64::total_cmp);
        let peak = r.rss_kib.iter().copied().max().unwrap_or(0);
        let (target, met) = match TARGETS.iter().find(|t| t.0 == r.n) {
            Some(&(_, ms, rss)) => {
                let mut text = format!("≤ {ms} ms");
                let mut ok = percentile(&w, 50.0) <= ms;
                if let Some(rss) = rss {
                    text += &format!(", ≤ {rss} MiB");
                    ok &= mib(peak) <= rss;
                }
                (text, if ok { "yes" } else { "no" })
            }
            None => ("—".to_string(), "—"),
        };
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {target} | {met} |",
            r.n,
            r.mix.files,
            r.mix.directories,
            r.mix.packages,
            r.mix.services,
            w[0],
            percentile(&w, 50.0),
            percentile(&w, 95.0),
            w[w.len() - 1],
            mib(peak),
        );
    }
    for r in results {
        let peak = r.rss_kib.iter().copied().max().unwrap_or(0);
        let mut w = r.wall_ms.clone();
        let wall = median(&mut w);
        println!(
            "\n== {} resources: where a run's time goes (medians of {REPORT_RUNS} runs with --format json)",
            r.n
        );
        println!(
            "  wall, --format json                {:8.2} ms",
            r.json_wall_ms
        );
        println!(
            "  engine (report started→finished)   {:8.2} ms",
            r.engine_ms
        );
        println!(
            "  outside the engine                 {:8.2} ms  (exec, facts, role load, output, exit)",
            r.outside_ms
        );
        for (kind, (count, sum, max)) in &r.types {
            println!(
                "  {kind:<10} {count:5} resources     {sum:8.2} ms  (slowest one {max:.2} ms, mean {:.1} µs)",
                sum * 1000.0 / *count as f64
            );
        }
        if let Some((ms, kib)) = r.systemctl {
            println!(
                "  `systemctl show` of the {} services, alone: {ms:.2} ms median, {:.1} MiB peak RSS",
                r.mix.services,
                mib(kib)
            );
        }
        println!(
            "  peak RSS {:.1} MiB (GNU time %M: ru_maxrss of the agent and of the children it waited for)",
            mib(peak)
        );
        println!(
            "  `cairn-agent --version`: {:.2} ms; `cairn-agent validate` of the role: {:.2} ms (medians)",
            r.start_ms, r.validate_ms
        );
        for (label, ms, kib) in &r.variants {
            println!(
                "  role without {:<9} median {ms:6.2} ms (full role {wall:.2} ms: {:+.2} ms), peak RSS {:.1} MiB",
                label.trim_start_matches("no-"),
                ms - wall,
                mib(*kib)
            );
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let m = Machine::boot("bench-agent");
    let mut tools = vec!["time"];
    if args.profile {
        tools.push("strace");
    }
    eprintln!("installing {} in the machine", tools.join(", "));
    m.sh_ok(&format!(
        "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends {} >/dev/null",
        tools.join(" ")
    ));
    m.write_file(&format!("{BENCH_DIR}/time.sh"), TIME_SCRIPT);
    let inv = inventory(&m);
    eprintln!(
        "{} packages installed, running services: {}",
        inv.packages.len(),
        inv.services.join(" ")
    );
    println!(
        "machine: {}",
        m.sh_ok("nproc; grep -m1 'model name' /proc/cpuinfo")
            .replace('\n', "; ")
    );
    println!(
        "agent: {}",
        m.sh_ok(&format!("{GUEST_AGENT} --version")).trim()
    );
    println!(
        "load average before: {}",
        m.sh_ok("cat /proc/loadavg").trim()
    );

    let mut results = Vec::new();
    for &n in &args.sizes {
        match bench(&m, n, &inv, &args) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "load average after: {}",
        m.sh_ok("cat /proc/loadavg").trim()
    );
    print_results(&results, args.runs);
    ExitCode::SUCCESS
}
