//! The real `cairn-agent` binary against real files and commands in a temporary
//! directory: resource timelines (apply → changed, again → unchanged, drift →
//! noop reports and touches nothing, apply restores), ordering, failure
//! isolation, refreshes and exit codes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cairn_proto::report::{ResourceStatus, RunReport};

struct Sandbox {
    dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    report: RunReport,
    stderr: String,
}

impl Sandbox {
    fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A path under the sandbox, as a string for role files.
    fn p(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    fn role(&self, toml: &str) -> PathBuf {
        let role = self.dir.path().join("role");
        fs::create_dir_all(role.join("templates")).unwrap();
        fs::write(
            role.join("role.toml"),
            format!("[role]\nname = \"t\"\n\n{toml}"),
        )
        .unwrap();
        role
    }

    fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_via(&[], args)
    }

    /// `cairn-agent ARGS…`, started by `launcher` (a command that runs the
    /// command line it is given) unless that is empty.
    fn cmd_via(&self, launcher: &[&str], args: &[&str]) -> Command {
        let agent = env!("CARGO_BIN_EXE_cairn-agent");
        let mut cmd = match launcher.split_first() {
            Some((program, launcher_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(launcher_args).arg(agent);
                cmd
            }
            None => Command::new(agent),
        };
        cmd.args(args)
            .env("CAIRN_STATE_DIR", self.dir.path().join("state"));
        cmd
    }

    fn apply(&self, extra: &[&str]) -> Run {
        self.apply_via(&[], extra)
    }

    /// `cairn-agent apply ROLE --format json --detailed-exitcodes EXTRA…`,
    /// started by `launcher` (see [`Sandbox::cmd_via`]); its report.
    fn apply_via(&self, launcher: &[&str], extra: &[&str]) -> Run {
        let role = self.dir.path().join("role");
        let mut args = vec![
            "apply",
            role.to_str().unwrap(),
            "--format",
            "json",
            "--detailed-exitcodes",
        ];
        args.extend_from_slice(extra);
        let out = self.cmd_via(launcher, &args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); stdout: {}\nstderr: {stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        Run {
            code: out.status.code().unwrap(),
            report,
            stderr,
        }
    }

    /// `cairn-agent apply` where systemd is absent, whatever this host is: in
    /// a mount namespace of its own whose `/run` is an empty tmpfs, the agent
    /// sees what it would on a host where systemd never ran (no
    /// `/run/systemd/system`, no system bus).
    fn apply_without_systemd(&self) -> Run {
        assert!(
            !self.dir.path().starts_with("/run"),
            "the sandbox {} would be hidden under the empty /run",
            self.dir.path().display()
        );
        let mut unshare = vec!["unshare", "--mount", "--propagation", "private"];
        if !nix::unistd::geteuid().is_root() {
            // Mounting needs privileges: a user namespace gives them.
            unshare.push("--map-root-user");
        }
        let mount_run = r#"mount -t tmpfs cairn-no-systemd /run && exec "$@""#;
        unshare.extend(["--", "/bin/sh", "-c", mount_run, "sh"]);
        self.apply_via(&unshare, &[])
    }
}

impl Run {
    fn status(&self, id: &str) -> ResourceStatus {
        self.resource(id).status
    }

    fn resource(&self, id: &str) -> &cairn_proto::report::ResourceReport {
        self.report
            .resources
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("{id} not in report: {:#?}", self.report))
    }

    fn changed(&self) -> Vec<&str> {
        self.report
            .resources
            .iter()
            .filter(|r| r.status != ResourceStatus::Unchanged)
            .map(|r| r.id.as_str())
            .collect()
    }
}

fn mode(path: &str) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn file_timeline() {
    let sb = Sandbox::new();
    let path = sb.p("motd");
    sb.role(&format!("[vars]\nwho = \"world\"\n\n[[file]]\npath = \"{path}\"\ntemplate = \"motd.hbs\"\nmode = \"0600\"\n"));
    fs::write(
        sb.dir.path().join("role/templates/motd.hbs"),
        "hello {{vars.who}}\n",
    )
    .unwrap();
    let id = format!("file:{path}");

    // Noop on a missing file: would change, nothing written.
    let run = sb.apply(&["--noop"]);
    assert_eq!(
        (run.code, run.status(&id)),
        (2, ResourceStatus::WouldChange)
    );
    assert!(!Path::new(&path).exists());

    let run = sb.apply(&[]);
    assert_eq!(
        (run.code, run.status(&id)),
        (2, ResourceStatus::Changed),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "hello world\n");
    assert_eq!(mode(&path), 0o600);

    let run = sb.apply(&[]);
    assert_eq!((run.code, run.status(&id)), (0, ResourceStatus::Unchanged));

    // Drift in content and mode: noop shows both and a diff, touches nothing.
    fs::write(&path, "hello tampered\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let run = sb.apply(&["--noop"]);
    assert_eq!(run.code, 2);
    let r = run.resource(&id);
    assert_eq!(r.status, ResourceStatus::WouldChange);
    let props: Vec<_> = r.changes.iter().map(|c| c.property.as_str()).collect();
    assert_eq!(props, ["content", "mode"]);
    let diff = r.diff.as_deref().unwrap();
    assert!(
        diff.contains("-hello tampered") && diff.contains("+hello world"),
        "{diff}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "hello tampered\n");
    assert_eq!(mode(&path), 0o644);

    let run = sb.apply(&[]);
    assert_eq!((run.code, run.status(&id)), (2, ResourceStatus::Changed));
    assert_eq!(fs::read_to_string(&path).unwrap(), "hello world\n");
    assert_eq!(mode(&path), 0o600);

    // Mode drift alone is fixed in place.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let run = sb.apply(&[]);
    let props: Vec<_> = run
        .resource(&id)
        .changes
        .iter()
        .map(|c| (c.property.as_str(), c.before.as_str(), c.after.as_str()))
        .collect();
    assert_eq!(props, [("mode", "0640", "0600")]);
    assert!(run.resource(&id).diff.is_none());
}

#[test]
fn absent_file_and_directory_timeline() {
    let sb = Sandbox::new();
    let dir = sb.p("d");
    let gone = sb.p("gone");
    fs::write(&gone, "x").unwrap();
    sb.role(&format!(
        "[[directory]]\npath = \"{dir}\"\nmode = \"0750\"\n\n[[file]]\npath = \"{gone}\"\nstate = \"absent\"\n"
    ));
    let run = sb.apply(&["--noop"]);
    assert_eq!(
        run.changed(),
        [format!("directory:{dir}"), format!("file:{gone}")]
    );
    assert!(Path::new(&gone).exists() && !Path::new(&dir).exists());

    let run = sb.apply(&[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(!Path::new(&gone).exists());
    assert_eq!(mode(&dir), 0o750);
    assert_eq!(sb.apply(&[]).code, 0);

    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let run = sb.apply(&["--noop"]);
    assert_eq!(run.changed(), [format!("directory:{dir}")]);
    assert_eq!(mode(&dir), 0o777);
    sb.apply(&[]);
    assert_eq!(mode(&dir), 0o750);

    // Absent directory: removed with its content.
    fs::write(Path::new(&dir).join("inner"), "x").unwrap();
    sb.role(&format!(
        "[[directory]]\npath = \"{dir}\"\nstate = \"absent\"\n"
    ));
    assert_eq!(sb.apply(&[]).code, 2);
    assert!(!Path::new(&dir).exists());
    assert_eq!(sb.apply(&[]).code, 0);
}

#[test]
fn exec_timeline_with_guards() {
    let sb = Sandbox::new();
    let marker = sb.p("marker");
    let count = sb.p("count");
    sb.role(&format!(
        "[[exec]]\nname = \"make-marker\"\ncommand = \"echo run >> {count} && touch {marker}\"\ncreates = \"{marker}\"\n\n\
         [[exec]]\nname = \"unless-ok\"\ncommand = \"echo unless >> {count}\"\nunless = \"true\"\n\n\
         [[exec]]\nname = \"onlyif-no\"\ncommand = \"echo onlyif >> {count}\"\nonlyif = \"false\"\n"
    ));
    let run = sb.apply(&["--noop"]);
    assert_eq!(run.changed(), ["exec:make-marker"]);
    assert!(!Path::new(&count).exists());

    let run = sb.apply(&[]);
    assert_eq!((run.code, run.changed()), (2, vec!["exec:make-marker"]));
    assert_eq!(sb.apply(&[]).code, 0);
    assert_eq!(fs::read_to_string(&count).unwrap(), "run\n");

    // A command that does not satisfy its own guard is a failure, not a silent success.
    sb.role(&format!(
        "[[exec]]\nname = \"liar\"\ncommand = \"true\"\ncreates = \"{}\"\n",
        sb.p("never")
    ));
    let run = sb.apply(&[]);
    assert_eq!(run.code, 4);
    assert!(
        run.resource("exec:liar")
            .error
            .as_deref()
            .unwrap()
            .contains("guard still asks"),
        "{:?}",
        run.report
    );
}

#[test]
fn failure_skips_dependents_and_the_rest_goes_on() {
    let sb = Sandbox::new();
    let after = sb.p("after");
    let unrelated = sb.p("unrelated");
    sb.role(&format!(
        "[[exec]]\nname = \"boom\"\ncommand = \"echo exploding >&2; exit 3\"\n\n\
         [[file]]\npath = \"{after}\"\ncontent = \"x\"\nrequires = [\"exec:boom\"]\n\n\
         [[file]]\npath = \"{unrelated}\"\ncontent = \"y\"\n\n\
         [[exec]]\nname = \"later\"\ncommand = \"true\"\nrequires = [\"file:{after}\"]\n"
    ));
    let run = sb.apply(&[]);
    assert_eq!(run.code, 6, "changes and failures");
    assert_eq!(run.status("exec:boom"), ResourceStatus::Failed);
    let err = run.resource("exec:boom").error.clone().unwrap();
    assert!(
        err.contains("exit status 3") && err.contains("exploding"),
        "{err}"
    );
    assert_eq!(
        run.status(&format!("file:{after}")),
        ResourceStatus::Skipped
    );
    assert_eq!(run.status("exec:later"), ResourceStatus::Skipped);
    assert_eq!(
        run.status(&format!("file:{unrelated}")),
        ResourceStatus::Changed
    );
    assert!(!Path::new(&after).exists());

    // Without --detailed-exitcodes a failed run is exit 1, a good one 0.
    let role = sb.dir.path().join("role");
    let out = sb.cmd(&["apply", role.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("FAILED       exec:boom") && human.contains("1 failed, 2 skipped"),
        "{human}"
    );
}

#[test]
fn notify_refreshes_once_after_all_notifiers_and_only_on_change() {
    let sb = Sandbox::new();
    let (a, b, log) = (sb.p("a"), sb.p("b"), sb.p("log"));
    sb.role(&format!(
        "[[exec]]\nname = \"reload\"\ncommand = \"cat {a} {b} >> {log}\"\nrefresh_only = true\n\n\
         [[file]]\npath = \"{a}\"\ncontent = \"a1\\n\"\nnotify = [\"exec:reload\"]\n\n\
         [[file]]\npath = \"{b}\"\ncontent = \"b1\\n\"\nnotify = [\"exec:reload\"]\n"
    ));
    let run = sb.apply(&["--noop"]);
    let reload = run.resource("exec:reload");
    assert_eq!(reload.status, ResourceStatus::WouldChange);
    assert_eq!(reload.changes[0].after, "would execute");
    assert!(!Path::new(&log).exists());

    let run = sb.apply(&[]);
    // Ran once, after both files were written: it saw both new contents.
    assert_eq!(fs::read_to_string(&log).unwrap(), "a1\nb1\n");
    let order: Vec<_> = run.report.resources.iter().map(|r| r.id.clone()).collect();
    assert_eq!(order.last().unwrap(), "exec:reload");
    assert_eq!(run.resource("exec:reload").changes[0].after, "executed");

    // No change, no refresh.
    assert_eq!(sb.apply(&[]).code, 0);
    assert_eq!(fs::read_to_string(&log).unwrap(), "a1\nb1\n");
}

#[test]
fn a_refresh_lost_to_a_failure_is_done_next_run() {
    let sb = Sandbox::new();
    let (conf, log, gate) = (sb.p("conf"), sb.p("log"), sb.p("gate"));
    fs::write(&gate, "").unwrap();
    sb.role(&format!(
        "[[exec]]\nname = \"gate\"\ncommand = \"test ! -e {gate}\"\n\n\
         [[exec]]\nname = \"restart\"\ncommand = \"echo restarted >> {log}\"\nrefresh_only = true\nrequires = [\"exec:gate\"]\n\n\
         [[file]]\npath = \"{conf}\"\ncontent = \"v2\\n\"\nnotify = [\"exec:restart\"]\n"
    ));
    let run = sb.apply(&[]);
    assert_eq!(run.code, 6);
    assert_eq!(run.status(&format!("file:{conf}")), ResourceStatus::Changed);
    assert_eq!(run.status("exec:restart"), ResourceStatus::Skipped);
    assert!(!Path::new(&log).exists());

    fs::remove_file(&gate).unwrap();
    // Noop sees the owed refresh and still does not do it.
    let run = sb.apply(&["--noop"]);
    assert_eq!(run.status("exec:restart"), ResourceStatus::WouldChange);
    assert!(!Path::new(&log).exists());

    let run = sb.apply(&[]);
    assert_eq!(
        run.status(&format!("file:{conf}")),
        ResourceStatus::Unchanged
    );
    assert_eq!(run.status("exec:restart"), ResourceStatus::Changed);
    assert_eq!(fs::read_to_string(&log).unwrap(), "restarted\n");

    let run = sb.apply(&[]);
    assert_eq!(run.status("exec:restart"), ResourceStatus::Unchanged);
    assert_eq!(fs::read_to_string(&log).unwrap(), "restarted\n");
}

#[test]
fn invalid_role_changes_nothing_and_exits_1() {
    let sb = Sandbox::new();
    let path = sb.p("never-written");
    sb.role(&format!("[[file]]\npath = \"{path}\"\ncontent = \"x\"\n\n[[file]]\npath = \"relative\"\ncontent = \"y\"\n"));
    let role = sb.dir.path().join("role");
    let out = sb.cmd(&["apply", role.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("role.toml:9:8: [[file]] \"relative\", field `path`"),
        "{stderr}"
    );
    assert!(!Path::new(&path).exists());

    let out = sb
        .cmd(&["validate", role.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// How long a test waits for a file another process is to create.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// Waits until `path` exists; panics after [`WAIT_LIMIT`].
fn wait_for_file(path: &str) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !Path::new(path).exists() {
        assert!(
            Instant::now() < deadline,
            "{path} did not appear within {WAIT_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the process when dropped, so a failed assertion does not leave it running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_run_is_refused_while_one_holds_the_lock() {
    let sb = Sandbox::new();
    let gate = sb.p("release");
    let started = sb.p("started");
    // The first run holds the lock until the test opens the gate, or gives up
    // after as long as the test would wait.
    let tries = WAIT_LIMIT.as_millis() / 50;
    sb.role(&format!(
        "[[exec]]\nname = \"slow\"\ncommand = \"touch {started}; i=0; while [ ! -e {gate} ] && [ $i -lt {tries} ]; do sleep 0.05; i=$((i+1)); done\"\n"
    ));
    let role = sb.dir.path().join("role");
    let mut first = KillOnDrop(sb.cmd(&["apply", role.to_str().unwrap()]).spawn().unwrap());
    wait_for_file(&started);
    let out = sb.cmd(&["apply", role.to_str().unwrap()]).output().unwrap();
    fs::write(&gate, "").unwrap();
    assert!(first.0.wait().unwrap().success());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another cairn-agent run is in progress"),
        "{stderr}"
    );
}

#[test]
fn noop_does_not_fail_what_waits_on_a_pending_change() {
    let sb = Sandbox::new();
    let dir = sb.p("later");
    let file = sb.p("later/f");
    // The exec's guard cannot run before the directory exists (cwd).
    sb.role(&format!(
        "[[directory]]\npath = \"{dir}\"\n\n[[file]]\npath = \"{file}\"\ncontent = \"x\"\n\n\
         [[exec]]\nname = \"in-dir\"\ncommand = \"true\"\ncwd = \"{dir}\"\nunless = \"test -e f.done\"\nrequires = [\"directory:{dir}\"]\n"
    ));
    let run = sb.apply(&["--noop"]);
    assert_eq!(
        run.code, 2,
        "pending changes, no failures: {:#?}",
        run.report
    );
    let exec = run.resource("exec:in-dir");
    assert_eq!(exec.status, ResourceStatus::WouldChange);
    assert!(
        exec.error
            .as_deref()
            .unwrap()
            .starts_with(&format!("not checked until directory:{dir} is applied"))
    );
    assert!(!Path::new(&dir).exists());
}

#[test]
fn services_need_systemd_but_the_rest_of_the_role_does_not() {
    // Where systemd is not running (a container, an image build), the service
    // fails with a clear error and the file converges anyway.
    let sb = Sandbox::new();
    let path = sb.p("f");
    sb.role(&format!("[[file]]\npath = \"{path}\"\ncontent = \"x\"\n\n[[service]]\nname = \"nginx\"\nrunning = true\n"));
    let run = sb.apply_without_systemd();
    assert_eq!(run.code, 6, "{:#?}\n{}", run.report, run.stderr);
    assert_eq!(run.status(&format!("file:{path}")), ResourceStatus::Changed);
    let err = run.resource("service:nginx").error.clone().unwrap();
    assert!(err.contains("systemd is not running"), "{err}");
}

#[test]
fn sensitive_file_content_never_reaches_a_report() {
    let sb = Sandbox::new();
    let path = sb.p("secret.env");
    fs::write(&path, "PASSWORD=old-hunter2\n").unwrap();
    sb.role(&format!(
        "[[file]]\npath = \"{path}\"\ncontent = \"PASSWORD=new-correct-horse\\n\"\nmode = \"0600\"\nsensitive = true\n"
    ));
    let id = format!("file:{path}");
    let role = sb.dir.path().join("role");
    for args in [vec!["--noop"], vec![]] {
        let mut cmd_args = vec!["apply", role.to_str().unwrap(), "--format", "json"];
        cmd_args.extend(&args);
        let json = sb.cmd(&cmd_args).output().unwrap();
        let human = sb
            .cmd(&["apply", role.to_str().unwrap(), "--noop"])
            .output()
            .unwrap();
        for out in [&json.stdout, &human.stdout] {
            let text = String::from_utf8_lossy(out);
            assert!(
                !text.contains("hunter2") && !text.contains("correct-horse"),
                "{text}"
            );
        }
        let report: RunReport = serde_json::from_slice(&json.stdout).unwrap();
        let r = report.resources.iter().find(|r| r.id == id).unwrap();
        assert!(r.diff.is_none());
        assert!(
            r.changes
                .iter()
                .any(|c| c.property == "content" && c.after == "(sensitive)"),
            "{r:?}"
        );
    }
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "PASSWORD=new-correct-horse\n"
    );
    assert_eq!(sb.apply(&[]).code, 0);
}

#[test]
fn file_validate_timeline() {
    let sb = Sandbox::new();
    let path = sb.p("script.sh");
    let seen = sb.p("seen");
    let id = format!("file:{path}");
    // A real validator (the shell's own syntax check) that also records what
    // it was given and insists on the mode the file will have.
    let role = |content: &str| {
        sb.role(&format!(
            "[[file]]\npath = \"{path}\"\ncontent = \"{content}\"\nmode = \"0750\"\n\
             validate = \"echo % >> {seen} && test -n \\\"$(find % -perm 0750)\\\" && /bin/sh -n %\"\n"
        ))
    };
    let seen_lines = || {
        fs::read_to_string(&seen)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let names = || {
        let mut n: Vec<String> = fs::read_dir(sb.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    };

    role("echo ok\\n");
    let run = sb.apply(&["--noop"]);
    assert_eq!(
        (run.code, run.status(&id)),
        (2, ResourceStatus::WouldChange)
    );
    assert!(!Path::new(&path).exists());
    assert_eq!(seen_lines(), 0, "noop ran the validator");

    let run = sb.apply(&[]);
    assert_eq!(
        (run.code, run.status(&id)),
        (2, ResourceStatus::Changed),
        "{:?}",
        run.report
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "echo ok\n");
    assert_eq!(mode(&path), 0o750);
    // It saw the new content next to the file, under a temporary name now gone.
    let given = fs::read_to_string(&seen).unwrap();
    let given = Path::new(given.trim());
    assert_eq!(given.parent(), Path::new(&path).parent());
    let temp = given.file_name().unwrap().to_str().unwrap();
    assert!(temp.starts_with(".script.sh.cairn-tmp."), "{temp}");
    assert!(!given.exists());

    let run = sb.apply(&[]);
    assert_eq!((run.code, run.status(&id)), (0, ResourceStatus::Unchanged));
    assert_eq!(seen_lines(), 1, "a converged file was validated again");

    // Content the validator refuses: the live file stays, the new content is
    // gone, and the error carries the validator's own words.
    role("if then (\\n");
    let run = sb.apply(&["--noop"]);
    assert_eq!(
        (run.code, run.status(&id)),
        (2, ResourceStatus::WouldChange)
    );
    let run = sb.apply(&[]);
    assert_eq!((run.code, run.status(&id)), (4, ResourceStatus::Failed));
    let error = run.resource(&id).error.clone().unwrap();
    for part in [
        &format!("could not apply {id}"),
        "refused the new content (exit status 2: ",
        "Syntax error",
        &format!("{path} is unchanged"),
    ] {
        assert!(error.contains(part), "{part:?} not in {error}");
    }
    assert_eq!(fs::read_to_string(&path).unwrap(), "echo ok\n");
    assert_eq!(mode(&path), 0o750);
    assert_eq!(names(), ["role", "script.sh", "seen", "state"]);
    assert_eq!(seen_lines(), 2);

    // Mode drift: the file is written anew, so it is validated again.
    role("echo ok\\n");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
    let run = sb.apply(&[]);
    assert_eq!((run.code, run.status(&id)), (2, ResourceStatus::Changed));
    assert_eq!(mode(&path), 0o750);
    assert_eq!(seen_lines(), 3);
}

#[test]
fn values_in_commands_are_quoted_so_a_var_cannot_add_a_command() {
    let sb = Sandbox::new();
    let pwned = sb.p("pwned");
    let dir = sb.p("my dir");
    fs::create_dir(&dir).unwrap();
    let vars = format!("[vars]\nevil = \"'; touch {pwned}; '\"\ndir = \"{dir}\"\ncount = 3\n\n");
    sb.role(&format!(
        "{vars}[[exec]]\nname = \"echo\"\ncommand = \"echo {{{{sh vars.evil}}}} {{{{vars.count}}}} > out\"\n\
         cwd = \"{{{{vars.dir}}}}\"\nunless = \"test -e {{{{sh vars.dir}}}}/out\"\n"
    ));
    let run = sb.apply(&[]);
    assert_eq!(
        (run.code, run.status("exec:echo")),
        (2, ResourceStatus::Changed)
    );
    assert_eq!(
        fs::read_to_string(Path::new(&dir).join("out")).unwrap(),
        format!("'; touch {pwned}; ' 3\n")
    );
    assert!(!Path::new(&pwned).exists(), "the var ran as a command");
    let run = sb.apply(&[]);
    assert_eq!(
        (run.code, run.status("exec:echo")),
        (0, ResourceStatus::Unchanged)
    );

    // Inserted without the helper, a string is refused before anything runs.
    sb.role(&format!(
        "{vars}[[exec]]\nname = \"raw\"\ncommand = \"echo {{{{vars.evil}}}}\"\n"
    ));
    let role = sb.dir.path().join("role");
    let out = sb.cmd(&["apply", role.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[[exec]] \"raw\", field `command`")
            && stderr.contains("write {{sh vars.evil}}"),
        "{stderr}"
    );
    assert!(!Path::new(&pwned).exists());
}

/// The target and owner (uid) of the link at `path`.
fn link_of(path: &str) -> (String, u32) {
    use std::os::unix::fs::MetadataExt;
    let target = fs::read_link(path).unwrap().display().to_string();
    (target, fs::symlink_metadata(path).unwrap().uid())
}

/// `(property, before, after)` of each change `run` reports for `id`.
fn changes<'r>(run: &'r Run, id: &str) -> Vec<(&'r str, &'r str, &'r str)> {
    run.resource(id)
        .changes
        .iter()
        .map(|c| (c.property.as_str(), c.before.as_str(), c.after.as_str()))
        .collect()
}

const NOBODY: u32 = 65534;

#[test]
fn link_timeline() {
    let sb = Sandbox::new();
    let path = sb.p("current");
    let id = format!("link:{path}");
    let role = |extra: &str| {
        sb.role(&format!(
            "[[link]]\npath = \"{path}\"\ntarget = \"releases/2\"\nowner = \"nobody\"\n{extra}"
        ))
    };
    role("");

    let run = sb.apply(&["--noop"]);
    assert_eq!(
        (run.code, run.status(&id)),
        (2, ResourceStatus::WouldChange)
    );
    assert_eq!(changes(&run, &id), [("ensure", "absent", "link")]);
    assert!(fs::symlink_metadata(&path).is_err(), "noop made the link");

    let run = sb.apply(&[]);
    assert_eq!(
        (run.code, run.status(&id)),
        (2, ResourceStatus::Changed),
        "{}",
        run.stderr
    );
    assert_eq!(link_of(&path), ("releases/2".into(), NOBODY));
    let run = sb.apply(&[]);
    assert_eq!((run.code, run.status(&id)), (0, ResourceStatus::Unchanged));

    // Pointed elsewhere and owned by root: noop says both, touches nothing.
    fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("releases/1", &path).unwrap();
    let run = sb.apply(&["--noop"]);
    assert_eq!(
        changes(&run, &id),
        [
            ("target", "releases/1", "releases/2"),
            ("owner", "root", "nobody")
        ]
    );
    assert_eq!(link_of(&path), ("releases/1".into(), 0));
    let run = sb.apply(&[]);
    assert_eq!((run.code, run.status(&id)), (2, ResourceStatus::Changed));
    assert_eq!(link_of(&path), ("releases/2".into(), NOBODY));

    // The owner alone is changed on the link itself, not on what it points to.
    let target = sb.p("releases/2");
    fs::create_dir_all(sb.p("releases")).unwrap();
    fs::write(&target, "release").unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        Path::new(&path),
        Some(nix::unistd::Uid::from_raw(0)),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let run = sb.apply(&[]);
    assert_eq!(changes(&run, &id), [("owner", "root", "nobody")]);
    assert_eq!(link_of(&path), ("releases/2".into(), NOBODY));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&target).unwrap().uid(),
        0,
        "the target was chowned"
    );
}

#[test]
fn a_link_replaces_a_file_only_when_forced_and_never_a_directory() {
    let sb = Sandbox::new();
    let path = sb.p("conf");
    let id = format!("link:{path}");
    fs::write(&path, "a real file").unwrap();
    sb.role(&format!(
        "[[link]]\npath = \"{path}\"\ntarget = \"/etc/hostname\"\n"
    ));
    let run = sb.apply(&[]);
    assert_eq!((run.code, run.status(&id)), (4, ResourceStatus::Failed));
    assert_eq!(
        run.resource(&id).error.as_deref(),
        Some(format!("could not check {id}: {path} is a file; set force = true to replace it with the link").as_str())
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "a real file");

    sb.role(&format!(
        "[[link]]\npath = \"{path}\"\ntarget = \"/etc/hostname\"\nforce = true\n"
    ));
    let run = sb.apply(&["--noop"]);
    assert_eq!(changes(&run, &id), [("ensure", "file", "link")]);
    assert_eq!(fs::read_to_string(&path).unwrap(), "a real file");
    let run = sb.apply(&[]);
    assert_eq!((run.code, run.status(&id)), (2, ResourceStatus::Changed));
    assert_eq!(link_of(&path), ("/etc/hostname".into(), 0));
    assert_eq!(sb.apply(&[]).code, 0);

    let dir = sb.p("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(sb.p("dir/inside"), "kept").unwrap();
    sb.role(&format!(
        "[[link]]\npath = \"{dir}\"\ntarget = \"/etc\"\nforce = true\n"
    ));
    let run = sb.apply(&[]);
    assert_eq!(run.code, 4);
    assert_eq!(
        run.resource(&format!("link:{dir}")).error.as_deref(),
        Some(
            format!("could not check link:{dir}: {dir} is a directory; a link replaces only a file (with force = true)")
                .as_str()
        )
    );
    assert_eq!(fs::read_to_string(sb.p("dir/inside")).unwrap(), "kept");
}

#[test]
fn an_absent_link_is_removed_and_nothing_else_is() {
    let sb = Sandbox::new();
    let path = sb.p("old");
    let id = format!("link:{path}");
    let target = sb.p("target");
    fs::write(&target, "kept").unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    sb.role(&format!(
        "[[link]]\npath = \"{path}\"\nstate = \"absent\"\n"
    ));
    let run = sb.apply(&["--noop"]);
    assert_eq!(changes(&run, &id), [("ensure", "link", "absent")]);
    assert!(fs::symlink_metadata(&path).is_ok());
    let run = sb.apply(&[]);
    assert_eq!((run.code, run.status(&id)), (2, ResourceStatus::Changed));
    assert!(fs::symlink_metadata(&path).is_err());
    assert_eq!(fs::read_to_string(&target).unwrap(), "kept");
    assert_eq!(sb.apply(&[]).code, 0);

    // A file where the link was is not the link's to remove.
    fs::write(&path, "someone's file").unwrap();
    let run = sb.apply(&[]);
    assert_eq!(run.code, 4);
    assert_eq!(
        run.resource(&id).error.as_deref(),
        Some(
            format!(
                "could not check {id}: {path} is a file, not a link; a [[link]] with state = \"absent\" removes only links"
            )
            .as_str()
        )
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "someone's file");
}

#[test]
fn no_link_is_made_below_a_link_a_user_placed() {
    let sb = Sandbox::new();
    // `nobody` planted `shared` → `victim`: a link made "in shared" would land
    // in the victim's directory.
    let victim = sb.p("victim");
    fs::create_dir(&victim).unwrap();
    let planted = sb.p("shared");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        Path::new(&planted),
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let path = format!("{planted}/authorized_keys");
    sb.role(&format!(
        "[[link]]\npath = \"{path}\"\ntarget = \"/etc/shadow\"\n"
    ));
    let run = sb.apply(&[]);
    assert_eq!(run.code, 4);
    let error = run.resource(&format!("link:{path}")).error.clone().unwrap();
    assert!(
        error.contains(&format!("{planted} is a symbolic link owned by nobody")),
        "{error}"
    );
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
}
