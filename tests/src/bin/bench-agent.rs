//! The agent's no-change benchmark (a benchmark, not a test): how long a
//! `cairn-agent apply` takes, and how much memory it needs, when the machine is
//! already converged, beside CFEngine's `cf-agent` keeping the same state on the
//! same machine.
//!
//! Boots one machine, installs CFEngine (Debian's `cfengine3`) in it, and for
//! each size generates one state: files with content, owner, group and mode;
//! directories; groups; users; and execs guarded by `creates` or by `unless`.
//! The state is written twice, as a Cairn role and as a CFEngine policy (execs
//! guarded the CFEngine way: a class from `fileexists()` or `returnszero()`).
//! Cairn converges the machine, a second Cairn run must change nothing, and
//! CFEngine's first run on that machine must repair nothing: so both describe
//! the same state. Then `--runs` rounds alternate one Cairn run and one
//! CFEngine run (the order flips every round), each timed inside the machine
//! (bash's `$EPOCHREALTIME` around the command, so `nsenter` is not counted);
//! every Cairn run must exit 0 with `--detailed-exitcodes` and every CFEngine
//! run must print nothing with `-I`, or the bench fails. Peak RSS comes from
//! GNU time (`%M`, `ru_maxrss` as `wait4` reports it).
//!
//! What a guard costs: the same comparison for one file alone, then with
//! `GUARD_EXECS` execs guarded by `creates`, then by `unless` (a process).
//!
//! Refuses a debug build of the agent. `scripts/bench-agent.sh` builds the
//! release agent and runs this. Flags: `--runs N` (30), `--sizes 100,1000`,
//! `--profile`: also times the role without owners and groups, and without
//! execs (Cairn only, alternating with the full role), and prints
//! `strace -c -f` of a run and the paths it opens.

use std::collections::BTreeMap;
use std::process::{Command, ExitCode};

use cairn_e2e::{GUEST_AGENT, Machine};
use cairn_proto::report::RunReport;

/// The targets from the issue: (resources, wall ms, peak RSS MiB).
const TARGETS: [(usize, f64, Option<f64>); 2] = [(100, 15.0, Some(10.0)), (1000, 100.0, None)];
/// How many no-change runs of each tool are measured under GNU time for the
/// peak RSS.
const RSS_RUNS: usize = 10;
/// How many no-change runs print a JSON report for the breakdown.
const REPORT_RUNS: usize = 5;
/// How many guarded execs the guard roles have.
const GUARD_EXECS: usize = 50;
/// Where the roles, scripts and outputs go inside the machine.
const BENCH_DIR: &str = "/root/cairn-bench";
/// The policy `cf-agent` runs when given no `-f`, as `cf-execd` runs it. A
/// policy given with `-f` is validated again, by spawning `cf-promises`, on
/// every run; this one only when it changed, as in production.
const CF_POLICY: &str = "/var/lib/cfengine3/inputs/promises.cf";
/// `-K`: ignore CFEngine's locks, else a run within a minute of the last one
/// skips every promise; `-I`: print every repair, so that a run which changes
/// nothing prints nothing.
const CF_AGENT: &str = "cf-agent -K -I";
/// The CFEngine bundle the policies define.
const CF_BUNDLE: &str = "cairn_bench";
/// The CFEngine units the package starts; stopped, so that only the measured
/// runs use the machine.
const CF_UNITS: &str = "cfengine3.service cf-execd.service cf-serverd.service cf-monitord.service";

/// `time.sh RUNS CMD…`: RUNS rounds of every CMD (a string for `eval`, its
/// stdout discarded unless it redirects it itself), in order on even rounds
/// and in reverse on odd ones. Prints `K EXIT START END` per run, K the
/// command's index.
const TIME_SCRIPT: &str = r#"#!/bin/bash
runs=$1
shift
cmds=("$@")
n=${#cmds[@]}
for ((i = 0; i < runs; i++)); do
  for ((j = 0; j < n; j++)); do
    k=$((i % 2 ? n - 1 - j : j))
    start=$EPOCHREALTIME
    eval "${cmds[k]}" >/dev/null 2>/tmp/cairn-bench.err.$k
    rc=$?
    end=$EPOCHREALTIME
    echo "$k $rc $start $end"
  done
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
                if args.sizes.iter().any(|&n| !(20..=20_000).contains(&n)) {
                    return Err(
                        "--sizes: each size must be 20 (for the mix) to 20000 (for the ids)".into(),
                    );
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

/// How many resources of each kind a role has.
#[derive(Clone, Copy, Default)]
struct Mix {
    files: usize,
    directories: usize,
    groups: usize,
    users: usize,
    creates: usize,
    unless: usize,
}

impl Mix {
    /// A tenth directories, a fiftieth groups and as many users, a twentieth
    /// execs with `creates` and a hundredth with `unless` (a process each),
    /// files for the rest.
    fn of(n: usize) -> Mix {
        let directories = (n / 10).max(1);
        let groups = (n / 50).max(1);
        let creates = (n / 20).max(1);
        let unless = (n / 100).max(1);
        Mix {
            files: n - directories - 2 * groups - creates - unless,
            directories,
            groups,
            users: groups,
            creates,
            unless,
        }
    }
}

struct DirSpec {
    path: String,
    owner: &'static str,
    group: &'static str,
    mode: &'static str,
}

struct FileSpec {
    path: String,
    content: String,
    owner: &'static str,
    group: &'static str,
    mode: &'static str,
}

struct GroupSpec {
    name: String,
    gid: u32,
}

/// A user with shell `/bin/sh`, home `/home/NAME`, and one supplementary group.
struct UserSpec {
    name: String,
    uid: u32,
    group: String,
    comment: String,
}

/// How an exec knows it has already run.
enum Guard {
    /// A path its command creates.
    Creates(String),
    /// A command that succeeds once it has run.
    Unless(String),
}

/// Which guard the guard roles' execs have.
#[derive(Clone, Copy)]
enum GuardKind {
    Creates,
    Unless,
}

struct ExecSpec {
    name: String,
    command: String,
    guard: Guard,
}

/// A managed state, which both tools are given.
struct State {
    /// The role's name, which also names its directory.
    name: String,
    description: String,
    directories: Vec<DirSpec>,
    files: Vec<FileSpec>,
    groups: Vec<GroupSpec>,
    users: Vec<UserSpec>,
    execs: Vec<ExecSpec>,
}

const OWNERS: [&str; 3] = ["root", "daemon", "nobody"];
const GROUPS: [&str; 3] = ["root", "adm", "nogroup"];
const FILE_MODES: [&str; 3] = ["0644", "0640", "0600"];
const DIR_MODES: [&str; 2] = ["0755", "0750"];

/// A config file of 0.4 to 1.5 KiB.
fn file_content(f: usize, n: usize) -> String {
    let mut content = format!("# cairn benchmark file {f} of {n}\n");
    for k in 0..(16 + f % 48) {
        content += &format!("key_{k:02} = value-{f}-{k}\n");
    }
    content
}

fn exec_creates(dir: &str, k: usize) -> ExecSpec {
    let done = format!("{dir}/exec-c{k}.done");
    ExecSpec {
        name: format!("c{k}"),
        command: format!("touch {done}"),
        guard: Guard::Creates(done),
    }
}

fn exec_unless(dir: &str, k: usize) -> ExecSpec {
    let state = format!("{dir}/exec-u{k}.state");
    ExecSpec {
        name: format!("u{k}"),
        command: format!("echo ok >{state}"),
        guard: Guard::Unless(format!("grep -qx ok {state}")),
    }
}

impl State {
    /// The mix of `n` resources: directories under `/srv/cairn-bench-N`, files
    /// in them (with owners, groups and modes that differ from the defaults),
    /// groups and users with ids from `id_base`, and execs whose guards live in
    /// the top directory.
    fn mixed(n: usize, id_base: u32) -> State {
        let mix = Mix::of(n);
        let root = format!("/srv/cairn-bench-{n}");
        let dir = |d: usize| {
            if d == 0 {
                root.clone()
            } else {
                format!("{root}/d{d:03}")
            }
        };
        let directories = (0..mix.directories)
            .map(|d| DirSpec {
                path: dir(d),
                owner: OWNERS[d % 2],
                group: GROUPS[d % 3],
                mode: DIR_MODES[d % 2],
            })
            .collect();
        let files = (0..mix.files)
            .map(|f| FileSpec {
                path: format!("{}/f{f:04}.conf", dir(f % mix.directories)),
                content: file_content(f, n),
                owner: OWNERS[f % 3],
                group: GROUPS[(f / 3) % 3],
                mode: FILE_MODES[f % 3],
            })
            .collect();
        let group_name = |g: usize| format!("cb{n}-g{g}");
        let groups = (0..mix.groups)
            .map(|g| GroupSpec {
                name: group_name(g),
                gid: id_base + g as u32,
            })
            .collect();
        let users = (0..mix.users)
            .map(|u| UserSpec {
                name: format!("cb{n}-u{u}"),
                uid: id_base + u as u32,
                group: group_name(u % mix.groups),
                comment: format!("cairn bench user {u}"),
            })
            .collect();
        let execs = (0..mix.creates)
            .map(|k| exec_creates(&root, k))
            .chain((0..mix.unless).map(|k| exec_unless(&root, k)))
            .collect();
        State {
            name: format!("bench-{n}"),
            description: format!(
                "no-change benchmark: {} files, {} directories, {} groups, {} users, {} execs with creates, {} with unless",
                mix.files, mix.directories, mix.groups, mix.users, mix.creates, mix.unless
            ),
            directories,
            files,
            groups,
            users,
            execs,
        }
    }

    /// A guard role: one file in `/srv/cairn-bench-guard`, and `execs` execs
    /// guarded as `guard` says, or none.
    fn guarded(guard: Option<GuardKind>, execs: usize) -> State {
        let dir = "/srv/cairn-bench-guard";
        let (execs, label): (Vec<ExecSpec>, _) = match guard {
            Some(GuardKind::Creates) => (
                (0..execs).map(|k| exec_creates(dir, k)).collect(),
                "creates",
            ),
            Some(GuardKind::Unless) => {
                ((0..execs).map(|k| exec_unless(dir, k)).collect(), "unless")
            }
            None => (Vec::new(), "none"),
        };
        State {
            name: format!("guard-{label}"),
            description: format!("guard benchmark: one file, {} execs ({label})", execs.len()),
            directories: Vec::new(),
            files: vec![FileSpec {
                path: format!("{dir}/base.conf"),
                content: file_content(0, 1),
                owner: "root",
                group: "root",
                mode: "0644",
            }],
            groups: Vec::new(),
            users: Vec::new(),
            execs,
        }
    }

    fn mix(&self) -> Mix {
        let creates = self
            .execs
            .iter()
            .filter(|e| matches!(e.guard, Guard::Creates(_)))
            .count();
        Mix {
            files: self.files.len(),
            directories: self.directories.len(),
            groups: self.groups.len(),
            users: self.users.len(),
            creates,
            unless: self.execs.len() - creates,
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

/// A CFEngine quoted string. Newlines stay literal; `$(…)`, `${…}`, `@(…)`
/// and `@{…}` would be expanded, so a generated value must not hold them.
fn cf_str(s: &str) -> String {
    assert!(
        !["$(", "${", "@(", "@{"].iter().any(|v| s.contains(v)),
        "{s:?} would be expanded by CFEngine"
    );
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What a Cairn role declares: the full role has everything; the profile's
/// variants leave one part out to measure what it costs.
#[derive(Clone, Copy)]
struct Variant {
    label: &'static str,
    /// `owner` and `group` on files and directories.
    owners: bool,
    /// The `[[exec]]` resources.
    execs: bool,
}

const FULL: Variant = Variant {
    label: "full",
    owners: true,
    execs: true,
};
/// Leave-one-out variants of the same, already converged, role.
const VARIANTS: [Variant; 2] = [
    Variant {
        label: "no-owners",
        owners: false,
        execs: true,
    },
    Variant {
        label: "no-execs",
        owners: true,
        execs: false,
    },
];

/// The state as a Cairn `role.toml`.
fn role_toml(s: &State, v: Variant) -> String {
    let mut t = format!(
        "[role]\nname = {}\ndescription = {}\n",
        toml_str(&s.name),
        toml_str(&s.description)
    );
    let owned = |owner: &str, group: &str| {
        if v.owners {
            format!("owner = \"{owner}\"\ngroup = \"{group}\"\n")
        } else {
            String::new()
        }
    };
    for d in &s.directories {
        t += &format!("\n[[directory]]\npath = {}\n", toml_str(&d.path));
        t += &owned(d.owner, d.group);
        t += &format!("mode = \"{}\"\n", d.mode);
    }
    for f in &s.files {
        t += &format!(
            "\n[[file]]\npath = {}\ncontent = {}\n",
            toml_str(&f.path),
            toml_str(&f.content),
        );
        t += &owned(f.owner, f.group);
        t += &format!("mode = \"{}\"\n", f.mode);
    }
    for g in &s.groups {
        t += &format!(
            "\n[[group]]\nname = {}\ngid = {}\n",
            toml_str(&g.name),
            g.gid
        );
    }
    for u in &s.users {
        t += &format!(
            "\n[[user]]\nname = {name}\nuid = {}\ngroups = [{}]\nshell = \"/bin/sh\"\nhome = \"/home/{}\"\ncomment = {}\n",
            u.uid,
            toml_str(&u.group),
            u.name,
            toml_str(&u.comment),
            name = toml_str(&u.name),
        );
    }
    for e in s.execs.iter().filter(|_| v.execs) {
        t += &format!(
            "\n[[exec]]\nname = {}\ncommand = {}\n",
            toml_str(&e.name),
            toml_str(&e.command)
        );
        t += &match &e.guard {
            Guard::Creates(path) => format!("creates = {}\n", toml_str(path)),
            Guard::Unless(cmd) => format!("unless = {}\n", toml_str(cmd)),
        };
    }
    t
}

/// The state as a CFEngine policy, written the way CFEngine's documentation
/// does: `files` promises with `content` and `perms`; `users` promises; a
/// group as a class from `getgid()` guarding a `groupadd` (CFEngine has no
/// group promise); an exec guarded by `creates` as a command with
/// `if => not(fileexists(…))`, by `unless` as a class from `returnszero(…)`.
/// Commands run with `/bin/sh -c`, as Cairn runs them. A user is `locked`:
/// Cairn leaves the password as `useradd` sets it (`!`, locked), while
/// CFEngine's `present` would unlock it.
fn cf_policy(s: &State) -> String {
    let mut p = format!(
        "# {}\n\
         body common control\n{{\n  bundlesequence => {{ \"{CF_BUNDLE}\" }};\n}}\n\n\
         body perms cairn_mog(m, o, g)\n{{\n  mode => \"$(m)\";\n  owners => {{ \"$(o)\" }};\n  groups => {{ \"$(g)\" }};\n  rxdirs => \"false\";\n}}\n\n\
         body contain cairn_shell\n{{\n  useshell => \"useshell\";\n}}\n\n\
         bundle agent {CF_BUNDLE}\n{{\n",
        s.description
    );
    p += "  classes:\n";
    for (i, g) in s.groups.iter().enumerate() {
        p += &format!(
            "    \"group_{i}_ok\" expression => strcmp(getgid({}), \"{}\");\n",
            cf_str(&g.name),
            g.gid
        );
    }
    for (i, e) in s.execs.iter().enumerate() {
        if let Guard::Unless(cmd) = &e.guard {
            p += &format!(
                "    \"exec_{i}_done\" expression => returnszero({}, \"useshell\");\n",
                cf_str(cmd)
            );
        }
    }
    p += "\n  files:\n";
    for d in &s.directories {
        p += &format!(
            "    {}\n      create => \"true\",\n      perms => cairn_mog(\"{}\", \"{}\", \"{}\");\n",
            cf_str(&format!("{}/.", d.path)),
            d.mode,
            d.owner,
            d.group
        );
    }
    for f in &s.files {
        p += &format!(
            "    {}\n      create => \"true\",\n      content => {},\n      perms => cairn_mog(\"{}\", \"{}\", \"{}\");\n",
            cf_str(&f.path),
            cf_str(&f.content),
            f.mode,
            f.owner,
            f.group
        );
    }
    p += "\n  users:\n";
    for u in &s.users {
        p += &format!(
            "    {}\n      policy => \"locked\",\n      uid => \"{}\",\n      groups_secondary => {{ {} }},\n      shell => \"/bin/sh\",\n      home_dir => \"/home/{}\",\n      description => {};\n",
            cf_str(&u.name),
            u.uid,
            cf_str(&u.group),
            u.name,
            cf_str(&u.comment)
        );
    }
    p += "\n  commands:\n";
    for (i, g) in s.groups.iter().enumerate() {
        p += &format!(
            "    !group_{i}_ok::\n      \"/usr/sbin/groupadd -g {} {}\";\n",
            g.gid, g.name
        );
    }
    for (i, e) in s.execs.iter().enumerate() {
        p += &match &e.guard {
            Guard::Creates(path) => format!(
                "    any::\n      {}\n        if => not(fileexists({})),\n        contain => cairn_shell;\n",
                cf_str(&e.command),
                cf_str(path)
            ),
            Guard::Unless(_) => format!(
                "    !exec_{i}_done::\n      {}\n        contain => cairn_shell;\n",
                cf_str(&e.command)
            ),
        };
    }
    p += "}\n";
    p
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

/// Min, median, p90 and max of some wall times.
struct Spread {
    min: f64,
    median: f64,
    p90: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Spread {
            min: v[0],
            median: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            max: v[v.len() - 1],
        }
    }
}

/// Alternating runs of Cairn and CFEngine keeping the same state.
struct Comparison {
    /// Wall time of each Cairn run (human output), ms.
    cairn_ms: Vec<f64>,
    /// Wall time of each CFEngine run, ms, in the same rounds.
    cf_ms: Vec<f64>,
    /// Peak RSS of each run under GNU time, KiB.
    cairn_rss_kib: Vec<u64>,
    cf_rss_kib: Vec<u64>,
    /// The promises CFEngine counted as kept (none repaired or not kept).
    cf_kept: usize,
}

impl Comparison {
    /// CFEngine's median over Cairn's.
    fn ratio(&self) -> f64 {
        Spread::of(&self.cf_ms).median / Spread::of(&self.cairn_ms).median
    }

    /// The median of the ratios of the runs of one round: robust to the load
    /// changing between rounds.
    fn round_ratio(&self) -> f64 {
        let mut r: Vec<f64> = self
            .cf_ms
            .iter()
            .zip(&self.cairn_ms)
            .map(|(cf, cairn)| cf / cairn)
            .collect();
        median(&mut r)
    }
}

/// What one size measured.
struct Measured {
    n: usize,
    mix: Mix,
    cmp: Comparison,
    /// Runs with `--format json`: median wall, engine span, and outside it.
    json_wall_ms: f64,
    engine_ms: f64,
    outside_ms: f64,
    /// Per resource type: count, median of the summed µs, median of the max.
    types: BTreeMap<String, (usize, f64, f64)>,
    /// Median ms of `cairn-agent --version` and of `validate ROLE`.
    start_ms: f64,
    validate_ms: f64,
    /// With `--profile`: the leave-one-out roles.
    variants: Vec<VariantRuns>,
}

/// A leave-one-out role's runs, alternating with the full role's.
struct VariantRuns {
    label: &'static str,
    /// Medians, ms.
    full_ms: f64,
    variant_ms: f64,
    peak_kib: u64,
}

/// Runs `rounds` rounds of `cmds` (shell command lines, without `'`) with
/// `time.sh`, alternating them; returns the wall time of each command's runs
/// in ms. Any exit but 0 is an error: for the agent with
/// `--detailed-exitcodes`, 2 means a no-change run changed something.
fn time_runs(m: &Machine, rounds: usize, cmds: &[&str]) -> Result<Vec<Vec<f64>>, String> {
    let quoted: Vec<String> = cmds
        .iter()
        .map(|c| {
            assert!(!c.contains('\''), "{c:?} cannot be quoted for time.sh");
            format!("'{c}'")
        })
        .collect();
    let text = m.sh_ok(&format!(
        "bash {BENCH_DIR}/time.sh {rounds} {}",
        quoted.join(" ")
    ));
    let mut wall = vec![Vec::with_capacity(rounds); cmds.len()];
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [k, rc, start, end] = f[..] else {
            return Err(format!("time.sh printed {line:?}"));
        };
        let k: usize = k
            .parse()
            .ok()
            .filter(|&k| k < cmds.len())
            .ok_or_else(|| format!("time.sh printed {line:?}"))?;
        if rc != "0" {
            let err = m.sh_ok(&format!("cat /tmp/cairn-bench.err.{k}"));
            return Err(format!(
                "`{}` exited {rc} (for the agent: 2 changes, 4 failures, 6 both):\n{err}",
                cmds[k]
            ));
        }
        wall[k].push((epoch_us(end) - epoch_us(start)) as f64 / 1000.0);
    }
    if let Some(short) = wall.iter().position(|w| w.len() != rounds) {
        return Err(format!(
            "time.sh printed {} runs of `{}`, not {rounds}",
            wall[short].len(),
            cmds[short]
        ));
    }
    Ok(wall)
}

/// `time_runs` of one command.
fn time_one(m: &Machine, runs: usize, cmd: &str) -> Result<Vec<f64>, String> {
    Ok(time_runs(m, runs, &[cmd])?.remove(0))
}

/// Runs `cmd` (changing nothing) `RSS_RUNS` times under GNU time; returns each
/// run's `%M`, KiB.
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

/// Writes the Cairn role of `state` (as `variant` says), converges it, and
/// checks that a second run changes nothing; returns its directory inside
/// the machine.
fn prepare(m: &Machine, state: &State, v: Variant) -> Result<String, String> {
    let role = format!("{BENCH_DIR}/{}-{}", state.name, v.label);
    m.write_file(&format!("{role}/role.toml"), role_toml(state, v));
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

/// Makes `state` CFEngine's policy, on a machine Cairn has converged to it.
/// CFEngine's first run must repair nothing (so the policy describes the state
/// Cairn made), and the next must find the policy already validated (so the
/// timed runs spawn no `cf-promises`). Returns the promises CFEngine kept.
fn prepare_cf(m: &Machine, state: &State) -> Result<usize, String> {
    m.write_file(CF_POLICY, cf_policy(state));
    let first = m.sh_ok(&format!("{CF_AGENT} 2>&1"));
    if !first.trim().is_empty() {
        return Err(format!(
            "CFEngine's first run of the policy of {} on the state Cairn converged \
             was not a no-change run (the two do not describe the same state):\n{first}",
            state.name
        ));
    }
    let verbose = m.sh_ok("cf-agent -K -v 2>&1");
    if !verbose.contains("Policy is already validated") {
        return Err(format!(
            "cf-agent validated the unchanged policy {CF_POLICY} again:\n{}",
            verbose
                .lines()
                .filter(|l| l.contains("valid"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    let count = |what: &str| -> Result<usize, String> {
        let key = format!("Promises {what} in '{CF_BUNDLE}' = ");
        verbose
            .lines()
            .find_map(|l| l.split_once(&key).map(|(_, n)| n.trim()))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("cf-agent -v printed no {key:?}"))
    };
    let (kept, repaired, not_kept) = (count("kept")?, count("repaired")?, count("not kept")?);
    if repaired + not_kept > 0 {
        return Err(format!(
            "CFEngine's verbose run of {} repaired {repaired} promises and did not keep {not_kept}",
            state.name
        ));
    }
    // Every file, directory and user promise was checked and kept; the
    // commands were skipped by their guards, which counts as neither.
    let checked = state.files.len() + state.directories.len() + state.users.len();
    if kept != checked {
        return Err(format!(
            "CFEngine kept {kept} promises of {}, not its {checked} files, directories and users",
            state.name
        ));
    }
    Ok(kept)
}

/// Converges `state` with Cairn, checks CFEngine agrees, then alternates
/// no-change runs of both, `runs` rounds, and reads their peak RSS. Returns
/// the comparison and the role's directory.
fn compare(m: &Machine, state: &State, runs: usize) -> Result<(Comparison, String), String> {
    let role = prepare(m, state, FULL)?;
    let cf_kept = prepare_cf(m, state)?;
    let apply = format!("{GUEST_AGENT} apply {role} --detailed-exitcodes");
    // CFEngine's output of every run goes to one file, which must stay empty.
    let cf_out = format!("{BENCH_DIR}/{}.cf-out", state.name);
    m.sh_ok(&format!(": >{cf_out}"));
    let cf = format!("{CF_AGENT} >>{cf_out} 2>&1");
    let mut wall = time_runs(m, runs, &[&apply, &cf])?;
    let printed = m.sh_ok(&format!("head -c 4000 {cf_out}"));
    if !printed.is_empty() {
        return Err(format!(
            "a no-change CFEngine run of {} printed (repaired) something:\n{printed}",
            state.name
        ));
    }
    let cf_ms = wall.pop().expect("two commands");
    let cairn_ms = wall.pop().expect("two commands");
    let cmp = Comparison {
        cairn_ms,
        cf_ms,
        cairn_rss_kib: peak_rss(m, &apply)?,
        cf_rss_kib: peak_rss(m, CF_AGENT)?,
        cf_kept,
    };
    Ok((cmp, role))
}

fn bench(m: &Machine, n: usize, id_base: u32, args: &Args) -> Result<Measured, String> {
    let state = State::mixed(n, id_base);
    let mix = state.mix();
    eprintln!("bench {n}: {}", state.description);
    let (cmp, role) = compare(m, &state, args.runs)?;
    let apply = format!("{GUEST_AGENT} apply {role} --detailed-exitcodes");

    // What a run costs before the engine: starting the binary (`--version`),
    // and starting plus reading, parsing and validating the role (`validate`).
    let mut start_ms = time_one(m, args.runs, &format!("{GUEST_AGENT} --version"))?;
    let mut validate_ms = time_one(m, args.runs, &format!("{GUEST_AGENT} validate {role}"))?;

    // Where the time goes: runs with a JSON report, each timed inside, the
    // report giving the engine's span and each resource's duration.
    let prefix = format!("{BENCH_DIR}/report-{n}");
    let mut json_wall = time_one(
        m,
        REPORT_RUNS,
        &format!("{apply} --format json >{prefix}.$i"),
    )?;
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
        // Each variant alternates with the full role, whose runs must still
        // change nothing: a variant leaves the state as the full role made it.
        for v in VARIANTS {
            let role = prepare(m, &state, v)?;
            let cmd = format!("{GUEST_AGENT} apply {role} --detailed-exitcodes");
            let mut wall = time_runs(m, args.runs, &[&apply, &cmd])?;
            let kib = peak_rss(m, &cmd)?.into_iter().max().unwrap_or(0);
            variants.push(VariantRuns {
                label: v.label,
                full_ms: median(&mut wall[0]),
                variant_ms: median(&mut wall[1]),
                peak_kib: kib,
            });
        }
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
        cmp,
        json_wall_ms: median(&mut json_wall),
        engine_ms: median(&mut engine),
        outside_ms: median(&mut outside),
        types,
        start_ms: median(&mut start_ms),
        validate_ms: median(&mut validate_ms),
        variants,
    })
}

/// What a guard costs: the comparison of one file alone, then with
/// `GUARD_EXECS` execs guarded by `creates`, then by `unless`.
fn bench_guards(m: &Machine, runs: usize) -> Result<Vec<(&'static str, Comparison)>, String> {
    m.sh_ok("mkdir -p /srv/cairn-bench-guard");
    let mut out = Vec::new();
    for (label, guard) in [
        ("one file", None),
        ("+ execs with creates", Some(GuardKind::Creates)),
        ("+ execs with unless", Some(GuardKind::Unless)),
    ] {
        let state = State::guarded(guard, GUARD_EXECS);
        eprintln!("bench guards: {}", state.description);
        out.push((label, compare(m, &state, runs)?.0));
    }
    Ok(out)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn max_mib(kib: &[u64]) -> f64 {
    mib(kib.iter().copied().max().unwrap_or(0))
}

fn print_results(results: &[Measured], guards: &[(&str, Comparison)], runs: usize) {
    println!(
        "\n== converged runs, release build: {runs} rounds alternating cairn-agent apply and cf-agent -K -I; peak RSS over {RSS_RUNS} runs each"
    );
    println!(
        "| resources | files | dirs | groups | users | execs creates | execs unless | Cairn median ms | Cairn p90 ms | CFEngine median ms | CFEngine p90 ms | ratio CFEngine/Cairn | ratio, median of rounds | Cairn peak RSS MiB | CFEngine peak RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let (c, cf) = (Spread::of(&r.cmp.cairn_ms), Spread::of(&r.cmp.cf_ms));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}× | {:.1}× | {:.1} | {:.1} |",
            r.n,
            r.mix.files,
            r.mix.directories,
            r.mix.groups,
            r.mix.users,
            r.mix.creates,
            r.mix.unless,
            c.median,
            c.p90,
            cf.median,
            cf.p90,
            r.cmp.ratio(),
            r.cmp.round_ratio(),
            max_mib(&r.cmp.cairn_rss_kib),
            max_mib(&r.cmp.cf_rss_kib),
        );
    }
    println!("\n== cairn-agent apply against the targets (wall time of the same {runs} runs)");
    println!("| resources | min ms | median ms | p90 ms | max ms | peak RSS MiB | target | met |");
    println!("|---:|---:|---:|---:|---:|---:|---|---|");
    for r in results {
        let w = Spread::of(&r.cmp.cairn_ms);
        let peak = max_mib(&r.cmp.cairn_rss_kib);
        let (target, met) = match TARGETS.iter().find(|t| t.0 == r.n) {
            Some(&(_, ms, rss)) => {
                let mut text = format!("≤ {ms} ms");
                let mut ok = w.median <= ms;
                if let Some(rss) = rss {
                    text += &format!(", ≤ {rss} MiB");
                    ok &= peak <= rss;
                }
                (text, if ok { "yes" } else { "no" })
            }
            None => ("—".to_string(), "—"),
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {peak:.1} | {target} | {met} |",
            r.n, w.min, w.median, w.p90, w.max,
        );
    }
    for r in results {
        println!(
            "\n== {} resources: where a Cairn run's time goes (medians of {REPORT_RUNS} runs with --format json)",
            r.n
        );
        println!(
            "  CFEngine kept {} promises (files, directories, users), repaired none; its guards skipped the commands",
            r.cmp.cf_kept
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
        println!(
            "  peak RSS {:.1} MiB (GNU time %M: ru_maxrss of the agent and of the children it waited for)",
            max_mib(&r.cmp.cairn_rss_kib)
        );
        println!(
            "  `cairn-agent --version`: {:.2} ms; `cairn-agent validate` of the role: {:.2} ms (medians)",
            r.start_ms, r.validate_ms
        );
        for v in &r.variants {
            println!(
                "  role without {:<9} median {:6.2} ms (full role, alternating: {:.2} ms; {:+.2} ms), peak RSS {:.1} MiB",
                v.label.trim_start_matches("no-"),
                v.variant_ms,
                v.full_ms,
                v.variant_ms - v.full_ms,
                mib(v.peak_kib)
            );
        }
    }
    if let Some((_, base)) = guards.first() {
        println!(
            "\n== what a guard costs: one file, then with {GUARD_EXECS} guarded execs ({runs} alternating rounds)"
        );
        println!(
            "| role | Cairn median ms | Cairn per exec µs | CFEngine median ms | CFEngine per exec µs | ratio CFEngine/Cairn |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        let base_cairn = Spread::of(&base.cairn_ms).median;
        let base_cf = Spread::of(&base.cf_ms).median;
        for (i, (label, c)) in guards.iter().enumerate() {
            let (cairn, cf) = (Spread::of(&c.cairn_ms).median, Spread::of(&c.cf_ms).median);
            let per_exec = |ms: f64, base: f64| {
                if i == 0 {
                    "—".to_string()
                } else {
                    format!("{:.0}", (ms - base) * 1000.0 / GUARD_EXECS as f64)
                }
            };
            println!(
                "| {label} | {cairn:.2} | {} | {cf:.2} | {} | {:.1}× |",
                per_exec(cairn, base_cairn),
                per_exec(cf, base_cf),
                c.ratio()
            );
        }
    }
}

/// Refuses a debug build: `cairn-agent --version` says "(debug build)".
fn check_release_build() -> Result<String, String> {
    let bin = cairn_e2e::agent_binary();
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("could not run {} --version: {e}", bin.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || version.is_empty() {
        return Err(format!(
            "{} --version failed ({})",
            bin.display(),
            out.status
        ));
    }
    if version.contains("debug build") {
        return Err(format!(
            "{} is a debug build ({version}); only release builds are measured\n\
             help: run scripts/bench-agent.sh, which builds and measures the release agent",
            bin.display()
        ));
    }
    Ok(version)
}

fn run(args: &Args) -> Result<(), String> {
    let version = check_release_build()?;
    let m = Machine::boot("bench-agent");
    let mut tools = vec!["time", "cfengine3"];
    if args.profile {
        tools.push("strace");
    }
    eprintln!("installing {} in the machine", tools.join(", "));
    // `policy-rc.d` keeps the package from starting CFEngine's daemons.
    m.write_file("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n");
    m.sh_ok(&format!(
        "chmod +x /usr/sbin/policy-rc.d && export DEBIAN_FRONTEND=noninteractive; \
         apt-get update -qq && apt-get install -y -qq --no-install-recommends {} >/dev/null; \
         rc=$?; rm -f /usr/sbin/policy-rc.d; exit $rc",
        tools.join(" ")
    ));
    m.sh_ok(&format!("systemctl stop {CF_UNITS}"));
    let daemons = m.sh("grep -l '^cf-' /proc/[0-9]*/comm");
    if !daemons.stdout.is_empty() {
        return Err(format!(
            "CFEngine processes run in the machine: {}",
            String::from_utf8_lossy(&daemons.stdout)
        ));
    }
    m.write_file(&format!("{BENCH_DIR}/time.sh"), TIME_SCRIPT);
    println!(
        "machine: {}",
        m.sh_ok("nproc; grep -m1 'model name' /proc/cpuinfo")
            .replace('\n', "; ")
    );
    println!("agent: {version}");
    println!("cfengine: {}", m.sh_ok("cf-agent --version").trim());
    println!(
        "load average before: {}",
        m.sh_ok("cat /proc/loadavg").trim()
    );

    let mut results = Vec::new();
    for (i, &n) in args.sizes.iter().enumerate() {
        // Each size has its own users and groups, with their own ids.
        let id_base = 20_000 + 1_000 * i as u32;
        results.push(bench(&m, n, id_base, args)?);
    }
    let guards = bench_guards(&m, args.runs)?;
    println!(
        "load average after: {}",
        m.sh_ok("cat /proc/loadavg").trim()
    );
    print_results(&results, &guards, args.runs);
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
