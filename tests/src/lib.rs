//! The end-to-end harness: real Debian machines, booted with systemd-nspawn,
//! that the real `cairn-agent` binary converges.
//!
//! - [`Machine::boot`] boots the cached image (built by
//!   `tests/machine/build-image.sh`) under a private writable overlay, with
//!   systemd as PID 1; binds the agent at `/usr/local/bin/cairn-agent` and the
//!   repository's `recipes/` at `/srv/recipes`; and waits until systemd says
//!   the system is up.
//! - [`Machine::boot_private_network`] boots it with a network namespace of
//!   its own (loopback only), for what must not touch the host's network
//!   settings (`net.*` sysctls); [`Machine::boot_private_network_with_packages`]
//!   installs packages on the host's network first, then reboots it so.
//! - [`Machine::boot_cloud_init`] boots the image with real cloud-init
//!   (`tests/machine/build-cloud-init-image.sh`) with a [`NoCloudSeed`]
//!   (meta-data and user-data) in its layer, and waits for cloud-init too.
//! - [`Machine::sh`], [`Machine::agent`], [`Machine::apply_json`] run commands
//!   inside, entering the machine's namespaces with `nsenter`.
//! - Dropping a [`Machine`] halts it, waits for it, and removes its layer.
//! - [`Timeline`] drives one resource of a role through the agent's runs
//!   (noop, apply, apply again), checking the report and the machine itself.
//! - [`Server`] runs the real `cairn-server` on loopback, and [`Operator`]
//!   the real `cairn` CLI against it.
//! - [`first_boot_user_data`] fills in the user-data of `docs/cloud-init.md`
//!   for a [`Server`], with the static agent and its unit served by
//!   [`AgentDownloads`]; [`FirstBoot`] makes a machine's seed of it, with a
//!   new join token.
//!
//! Machines share the host's network: two machines that serve the same port
//! must not run at the same time. The nextest configuration runs the tests of
//! this crate one at a time for that reason.

#![forbid(unsafe_code)]

mod server;
mod user_data;

pub use server::{
    Operator, Server, down_server_url, succeeded, terminate, terminate_and_read, wait_for,
};
pub use user_data::{AgentDownloads, Enrollment, FirstBoot, first_boot_user_data};

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cairn_proto::report::{PropertyChange, ResourceReport, ResourceStatus, RunReport};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where the image is when `CAIRN_TEST_IMAGE` does not say.
pub const DEFAULT_IMAGE: &str = "/var/cache/cairn-test/bookworm";
/// Where the agent is inside a machine.
pub const GUEST_AGENT: &str = "/usr/local/bin/cairn-agent";
/// Where the repository's `recipes/` is inside a machine (read-only).
pub const GUEST_RECIPES: &str = "/srv/recipes";

/// How long a machine may take to boot before the test gives up.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long cloud-init may take, all its stages (runcmd's commands too).
const CLOUD_INIT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a machine may take to halt before it is killed.
const HALT_TIMEOUT: Duration = Duration::from_secs(20);
/// The environment commands run with inside: nothing of the test's own.
const GUEST_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
];

/// The repository root: this crate lives in `tests/`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives in a directory of the workspace")
        .to_path_buf()
}

/// The names of the directories under the repository's `recipes/`, sorted.
pub fn recipe_names() -> Vec<String> {
    let dir = workspace_root().join("recipes");
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("could not list {}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap_or_else(|e| panic!("could not list {}: {e}", dir.display())))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The base image: `CAIRN_TEST_IMAGE`, else [`DEFAULT_IMAGE`].
fn base_image() -> PathBuf {
    std::env::var_os("CAIRN_TEST_IMAGE").map_or_else(|| PathBuf::from(DEFAULT_IMAGE), PathBuf::from)
}

fn image_dir() -> PathBuf {
    let image = base_image();
    if !image.join(".complete").is_file() {
        panic!(
            "no machine image at {img} (or it is incomplete)\n\
             help: build it once with `sudo tests/machine/build-image.sh {img}` \
             (or point CAIRN_TEST_IMAGE at an image it built)",
            img = image.display()
        );
    }
    image
}

/// The image with cloud-init: `CAIRN_TEST_CLOUD_INIT_IMAGE`, else the base
/// image's path with `-cloud-init` appended. Panics, saying how to build it,
/// when it is not complete.
pub fn cloud_init_image_dir() -> PathBuf {
    let image = std::env::var_os("CAIRN_TEST_CLOUD_INIT_IMAGE").map_or_else(
        || {
            let mut path = base_image().into_os_string();
            path.push("-cloud-init");
            PathBuf::from(path)
        },
        PathBuf::from,
    );
    if !image.join(".complete").is_file() {
        panic!(
            "no cloud-init machine image at {img} (or it is incomplete)\n\
             help: build it once with `sudo tests/machine/build-cloud-init-image.sh {base} {img}` \
             (or point CAIRN_TEST_CLOUD_INIT_IMAGE at an image it built)",
            img = image.display(),
            base = base_image().display(),
        );
    }
    image
}

/// A binary of the workspace's debug build (`cargo build --bins`), such as
/// `cairn-server` or `cairn`.
pub fn workspace_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let bin = target.join("debug").join(name);
    assert!(
        bin.is_file(),
        "{} does not exist\nhelp: run `cargo build --bins` first",
        bin.display()
    );
    bin
}

/// The agent binary the machines run: `CAIRN_AGENT_BIN`, else the workspace's
/// debug build. Warns when a source file is newer than the binary, since the
/// tests would then exercise old code.
pub fn agent_binary() -> PathBuf {
    let bin = match std::env::var_os("CAIRN_AGENT_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| workspace_root().join("target"), PathBuf::from);
            target.join("debug").join("cairn-agent")
        }
    };
    let Ok(meta) = fs::metadata(&bin) else {
        panic!(
            "the agent binary {} does not exist\n\
             help: run `cargo build --bins` first (or set CAIRN_AGENT_BIN)",
            bin.display()
        );
    };
    if std::env::var_os("CAIRN_AGENT_BIN").is_none()
        && let (Ok(built), Some(newest)) = (meta.modified(), newest_source())
        && newest.1 > built
    {
        eprintln!(
            "warning: {} is newer than {}; run `cargo build --bins` to test the current code",
            newest.0.display(),
            bin.display()
        );
    }
    bin
}

/// The statically linked agent (`scripts/build-static-agent.sh`):
/// `CAIRN_STATIC_AGENT_BIN`, else the debug build for the gnu target.
pub fn static_agent_binary() -> PathBuf {
    let bin = std::env::var_os("CAIRN_STATIC_AGENT_BIN").map_or_else(
        || {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| workspace_root().join("target"), PathBuf::from);
            target.join("x86_64-unknown-linux-gnu/debug/cairn-agent")
        },
        PathBuf::from,
    );
    assert!(
        bin.is_file(),
        "the static agent {} does not exist\n\
         help: run `scripts/build-static-agent.sh` first (or set CAIRN_STATIC_AGENT_BIN)",
        bin.display()
    );
    bin
}

/// The most recently modified Rust source of the agent and the proto crate.
fn newest_source() -> Option<(PathBuf, std::time::SystemTime)> {
    let root = workspace_root();
    let mut newest: Option<(PathBuf, std::time::SystemTime)> = None;
    let mut stack = vec![root.join("agent/src"), root.join("proto/src")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(m) = meta.modified()
                && newest.as_ref().is_none_or(|(_, t)| m > *t)
            {
                newest = Some((path, m));
            }
        }
    }
    newest
}

/// A machine name that is a valid hostname and unique on this host:
/// `NAME-PID-N`, lowercased, at most 63 characters.
fn unique_name(name: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("-{:x}-{n}", std::process::id());
    let mut base: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    base.truncate(63 - suffix.len());
    let base = base.trim_matches('-');
    format!("{}{suffix}", if base.is_empty() { "machine" } else { base })
}

/// A booted machine. Dropping it halts it and removes its files.
pub struct Machine {
    name: String,
    /// Holds the machine's writable layer (`upper/`, `work/`), the mount point
    /// of its root, and the console log; removed on drop, once it is down.
    dir: Option<tempfile::TempDir>,
    /// The image below the layer, and the `--bind-ro=` options: what a
    /// reboot boots again.
    image: PathBuf,
    bind_args: Vec<String>,
    /// The `systemd-nspawn` process; `None` once it has been waited for.
    nspawn: Option<Child>,
    /// The machine's systemd (PID 1 inside), as a host PID; 0 until found.
    init: u32,
}

impl Machine {
    /// Boots the image under a fresh writable layer and waits until systemd
    /// reports the system `running` or `degraded`. Panics, with the console
    /// output, when it does not come up within a minute. The machine halts
    /// when the thread that booted it ends, so keep it in that thread.
    pub fn boot(name: &str) -> Machine {
        Self::boot_with(name, &[])
    }

    /// Like [`Machine::boot`], with more host paths bound read-only into the
    /// machine: `(host path, guest path)`.
    pub fn boot_with(name: &str, binds: &[(&Path, &str)]) -> Machine {
        let agent = agent_binary();
        let mut all = vec![(agent.as_path(), GUEST_AGENT)];
        all.extend_from_slice(binds);
        Self::start(name, &image_dir(), &all, None, &[])
    }

    /// Like [`Machine::boot`], with a network namespace of its own holding
    /// only loopback (`systemd-nspawn --private-network`): what is per
    /// network namespace, as `net.*` sysctls, is the machine's alone, and
    /// nspawn lets the machine write `/proc/sys/net`. The machine reaches no
    /// network, not even the host's loopback.
    pub fn boot_private_network(name: &str) -> Machine {
        let agent = agent_binary();
        Self::start(
            name,
            &image_dir(),
            &[(agent.as_path(), GUEST_AGENT)],
            None,
            &["--private-network"],
        )
    }

    /// Like [`Machine::boot_private_network`], with `packages` installed from
    /// Debian's archive first (`apt-get install --no-install-recommends`),
    /// which a machine without a network could not reach: the machine boots
    /// on the host's network, installs them, and is rebooted from the same
    /// layer with a network of its own. For roles that install packages and
    /// set `net.*` sysctls.
    pub fn boot_private_network_with_packages(name: &str, packages: &[&str]) -> Machine {
        let mut m = Self::boot(name);
        if !packages.is_empty() {
            m.sh_ok(&format!(
                "apt-get update -q && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -q --no-install-recommends {}",
                packages.join(" ")
            ));
        }
        m.reboot(&["--private-network"]);
        m
    }

    /// Boots the image with real cloud-init (built by
    /// `tests/machine/build-cloud-init-image.sh`) with `seed` as its NoCloud
    /// data, waits until cloud-init has finished every stage (`cloud-init
    /// status --wait`; runcmd runs in the last one), then until systemd says
    /// the system is up. No agent is bound in: the user-data installs one.
    /// `binds` as in [`Machine::boot_with`]. Whether cloud-init succeeded is
    /// for the test to ask ([`Machine::cloud_init_status`]).
    pub fn boot_cloud_init(name: &str, seed: &NoCloudSeed, binds: &[(&Path, &str)]) -> Machine {
        Self::start(name, &cloud_init_image_dir(), binds, Some(seed), &[])
    }

    /// Boots `image`; `nspawn_args` are more options for `systemd-nspawn`.
    fn start(
        name: &str,
        image: &Path,
        binds: &[(&Path, &str)],
        seed: Option<&NoCloudSeed>,
        nspawn_args: &[&str],
    ) -> Machine {
        let t0 = Instant::now();
        let recipes = workspace_root().join("recipes");
        let name = unique_name(name);

        // The machine's root is an overlay: the image below, its own writable
        // layer above. Mounted in a mount namespace of its own, which lives as
        // long as nspawn does, so nothing is ever left mounted on the host,
        // however the test ends; and nothing is copied.
        let machines = image.parent().unwrap_or(Path::new("/")).join("machines");
        fs::create_dir_all(&machines)
            .unwrap_or_else(|e| panic!("could not create {}: {e}", machines.display()));
        sweep(&machines);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}."))
            .tempdir_in(&machines)
            .unwrap_or_else(|e| {
                panic!(
                    "could not create a directory in {}: {e}",
                    machines.display()
                )
            });
        let owner = dir.path().join(OWNER_FILE);
        fs::write(&owner, std::process::id().to_string())
            .unwrap_or_else(|e| panic!("could not write {}: {e}", owner.display()));
        let layers = ["upper", "work", "root"].map(|d| dir.path().join(d));
        for layer in &layers {
            fs::create_dir(layer)
                .unwrap_or_else(|e| panic!("could not create {}: {e}", layer.display()));
        }
        // The seed goes into the machine's own layer, as a cloud's NoCloud
        // disk would give it: the image stays untouched.
        if let Some(seed) = seed {
            seed.write_into(&layers[0]);
        }
        for path in [image, dir.path()] {
            let p = path.to_string_lossy();
            assert!(
                !p.contains([',', ':']),
                "{p}: overlayfs cannot take a path with ',' or ':'; help: set CAIRN_TEST_IMAGE to another path"
            );
        }

        // The recipes and the given binds, read-only.
        let mut bind_args = vec![format!("--bind-ro={}:{GUEST_RECIPES}", recipes.display())];
        bind_args.extend(
            binds
                .iter()
                .map(|(host, guest)| format!("--bind-ro={}:{guest}", host.display())),
        );
        let mut machine = Machine {
            name,
            dir: Some(dir),
            image: image.to_path_buf(),
            bind_args,
            nspawn: None,
            init: 0,
        };
        // From here on a panic drops `machine`, which halts and removes it.
        machine.spawn(nspawn_args);
        if seed.is_some() {
            machine.wait_for_cloud_init();
        }
        machine.wait_until_up();
        eprintln!(
            "machine {} up in {:.2} s",
            machine.name,
            t0.elapsed().as_secs_f64()
        );
        machine
    }

    /// Starts nspawn on the machine's layers and finds its systemd; the
    /// console log is appended to.
    fn spawn(&mut self, nspawn_args: &[&str]) {
        let dir = self.dir.as_ref().expect("the machine has its directory");
        let layers = ["upper", "work", "root"].map(|d| dir.path().join(d));
        let console = dir.path().join("console.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console)
            .unwrap_or_else(|e| panic!("could not open {}: {e}", console.display()));
        let log2 = log
            .try_clone()
            .expect("could not duplicate the console log handle");
        // `setpriv`, `unshare` and `sh` exec, so the child is nspawn itself.
        // nspawn halts the machine on SIGTERM, which it gets when the thread
        // that booted the machine dies (`--pdeathsig`), and when the test
        // runner terminates the test's process group, which nspawn stays in.
        let nspawn = Command::new("setpriv")
            .args(["--pdeathsig", "TERM", "--", "unshare"])
            .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(r#"mount -t overlay cairn-machine -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" && root=$4 && shift 4 && exec systemd-nspawn -D "$root" "$@""#)
            .arg("sh")
            .arg(&self.image)
            .args(&layers)
            .args(["--quiet", "-M", &self.name, "--boot", "--register=no", "--keep-unit", "--console=pipe"])
            .args(nspawn_args)
            .args(&self.bind_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("could not start setpriv (util-linux) for systemd-nspawn: {e}")
            });
        self.nspawn = Some(nspawn);
        // After a reboot the old PID may be reused: never signal it.
        self.init = 0;
        self.init = self.find_init();
    }

    /// Halts the machine and boots it again from the same layer (what it has
    /// installed and written stays), with `nspawn_args` instead of the ones
    /// it was booted with; waits until it is up.
    pub fn reboot(&mut self, nspawn_args: &[&str]) {
        let t0 = Instant::now();
        self.shut_down();
        self.spawn(nspawn_args);
        self.wait_until_up();
        eprintln!(
            "machine {} rebooted in {:.2} s",
            self.name,
            t0.elapsed().as_secs_f64()
        );
    }

    /// The machine's name, which is also its hostname.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn console_log(&self) -> String {
        let path = self.dir.as_ref().map(|d| d.path().join("console.log"));
        path.and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Panics, with what nspawn printed, if nspawn has exited.
    fn assert_nspawn_alive(&mut self, doing: &str) {
        let child = self.nspawn.as_mut().expect("nspawn was started");
        if let Ok(Some(status)) = child.try_wait() {
            self.nspawn = None;
            panic!(
                "machine {} exited ({status}) while {doing}; its console said:\n{}",
                self.name,
                self.console_log()
            );
        }
    }

    /// Finds the machine's systemd: the child of nspawn that is PID 1 in its
    /// own PID namespace.
    fn find_init(&mut self) -> u32 {
        let nspawn = self.nspawn.as_ref().expect("nspawn was started").id();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            self.assert_nspawn_alive("starting");
            if let Some(pid) = child_init(nspawn) {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "machine {}: nspawn (pid {nspawn}) started no init within {BOOT_TIMEOUT:?}; console:\n{}",
                self.name,
                self.console_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_until_up(&mut self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut last = String::new();
        loop {
            self.assert_nspawn_alive("booting");
            if let Ok(out) = self.try_sh("systemctl is-system-running") {
                last = format!("{}{}", stdout(&out).trim(), stderr(&out).trim());
                match stdout(&out).trim() {
                    "running" => return,
                    "degraded" => {
                        let failed = self.sh("systemctl --failed --no-pager --plain");
                        eprintln!("machine {} is degraded:\n{}", self.name, stdout(&failed));
                        return;
                    }
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                let jobs = self
                    .try_sh("systemctl list-jobs --no-pager")
                    .map(|o| stdout(&o))
                    .unwrap_or_default();
                panic!(
                    "machine {} did not finish booting within {BOOT_TIMEOUT:?}: \
                     `systemctl is-system-running` said {last:?}\njobs:\n{jobs}\nconsole:\n{}",
                    self.name,
                    self.console_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until cloud-init has run its last stage (or given up), at most
    /// [`CLOUD_INIT_TIMEOUT`]: `cloud-init status --wait` inside.
    fn wait_for_cloud_init(&mut self) {
        let t0 = Instant::now();
        let wait = format!(
            "timeout {} cloud-init status --wait >/dev/null",
            CLOUD_INIT_TIMEOUT.as_secs()
        );
        let out = self.sh(&wait);
        self.assert_nspawn_alive("running cloud-init");
        // 124: `timeout` stopped it. Any other code is cloud-init's answer
        // (1 for an error in a module), which the test reads.
        assert!(
            out.status.code() != Some(124),
            "cloud-init did not finish within {CLOUD_INIT_TIMEOUT:?} in {}; its log:\n{}\nconsole:\n{}",
            self.name,
            self.cloud_init_output(),
            self.console_log()
        );
        eprintln!(
            "machine {}: cloud-init finished in {:.2} s",
            self.name,
            t0.elapsed().as_secs_f64()
        );
    }

    /// `cloud-init status --long` once cloud-init has finished: `status:
    /// done` when every module succeeded.
    pub fn cloud_init_status(&self) -> String {
        stdout(&self.sh("cloud-init status --long"))
    }

    /// What cloud-init's modules printed, runcmd's commands included
    /// (`/var/log/cloud-init-output.log`).
    pub fn cloud_init_output(&self) -> String {
        stdout(&self.sh("cat /var/log/cloud-init-output.log"))
    }

    /// `nsenter` into the machine: mount, UTS, IPC, network and PID namespaces
    /// of its systemd, with a clean environment.
    fn enter(&self) -> Command {
        assert!(self.init != 0, "machine {} has no init yet", self.name);
        let mut cmd = Command::new("nsenter");
        cmd.args([
            "-t",
            &self.init.to_string(),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "--",
        ])
        .env_clear()
        .envs(GUEST_ENV)
        .stdin(Stdio::null());
        cmd
    }

    fn try_sh(&self, script: &str) -> std::io::Result<Output> {
        self.enter().args(["/bin/sh", "-c", script]).output()
    }

    /// Runs `script` with `/bin/sh -c` inside the machine, as root.
    pub fn sh(&self, script: &str) -> Output {
        self.try_sh(script)
            .unwrap_or_else(|e| panic!("could not run nsenter: {e}"))
    }

    /// Runs `script` inside; panics with its output unless it succeeds.
    /// Returns its standard output.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "`{script}` failed in {} ({}):\nstdout:\n{}\nstderr:\n{}",
            self.name,
            out.status,
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// Writes `contents` to `guest_path` inside the machine, creating its
    /// parent directories.
    pub fn write_file(&self, guest_path: &str, contents: impl AsRef<[u8]>) {
        let mut child = self
            .enter()
            .args([
                "/bin/sh",
                "-c",
                r#"mkdir -p -- "$(dirname -- "$1")" && cat > "$1""#,
                "sh",
                guest_path,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not run nsenter: {e}"));
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(contents.as_ref())
            .unwrap_or_else(|e| panic!("could not write {guest_path} in {}: {e}", self.name));
        let out = child
            .wait_with_output()
            .expect("could not wait for nsenter");
        assert!(
            out.status.success(),
            "could not write {guest_path} in {}: {}",
            self.name,
            stderr(&out)
        );
    }

    /// Runs `cairn-agent ARGS…` inside; returns its exit code, stdout, stderr.
    pub fn agent(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .enter()
            .arg(GUEST_AGENT)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("could not run nsenter: {e}"));
        let code = out.status.code().unwrap_or_else(|| {
            panic!(
                "cairn-agent {args:?} was killed ({}); stderr:\n{}",
                out.status,
                stderr(&out)
            )
        });
        (code, stdout(&out), stderr(&out))
    }

    /// `cairn-agent apply ROLE_DIR --format json EXTRA…`, its report parsed.
    /// Panics when the agent could not run at all (no report).
    pub fn apply_json(&self, role_dir: &str, extra: &[&str]) -> Run {
        let mut args = vec!["apply", role_dir, "--format", "json"];
        args.extend_from_slice(extra);
        let t0 = Instant::now();
        let (code, out, err) = self.agent(&args);
        let elapsed = t0.elapsed();
        let report: RunReport = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("cairn-agent {args:?} printed no report ({e}); exit code {code}\nstdout:\n{out}\nstderr:\n{err}")
        });
        eprintln!(
            "agent {args:?}: exit {code} in {:.2} s, {:?}",
            elapsed.as_secs_f64(),
            report.summary
        );
        Run {
            code,
            report,
            stderr: err,
        }
    }

    /// `systemctl show -p PROPERTY --value UNIT`.
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        self.sh_ok(&format!(
            "systemctl show --property={property} --value {unit}"
        ))
        .trim()
        .to_string()
    }

    /// Halts the machine (nspawn's SIGTERM handling asks its systemd to halt),
    /// kills it if it takes too long, and waits for it.
    fn shut_down(&mut self) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + HALT_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "machine {} did not halt within {HALT_TIMEOUT:?}; killing it",
            self.name
        );
        if self.init != 0 {
            // PID 1 of a PID namespace: the kernel kills everything inside.
            let _ = kill(Pid::from_raw(self.init as i32), Signal::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let t0 = Instant::now();
        self.shut_down();
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("warning: could not remove {}: {e}", path.display());
            }
        }
        eprintln!(
            "machine {} down in {:.2} s",
            self.name,
            t0.elapsed().as_secs_f64()
        );
    }
}

/// A NoCloud seed, as a cloud hands a fresh instance its identity and
/// user-data: `meta-data` and `user-data` in `/var/lib/cloud/seed/nocloud/`.
#[derive(Debug, Clone)]
pub struct NoCloudSeed {
    /// cloud-init's `instance-id`: a new one makes cloud-init run again.
    pub instance_id: String,
    /// The hostname cloud-init sets.
    pub local_hostname: String,
    /// The user-data, as given (`#cloud-config` …).
    pub user_data: String,
}

impl NoCloudSeed {
    /// Writes the seed under `root`, a machine's root directory (or layer).
    fn write_into(&self, root: &Path) {
        for (what, value) in [
            ("instance-id", &self.instance_id),
            ("local-hostname", &self.local_hostname),
        ] {
            // Plain YAML scalars, nothing to quote.
            assert!(
                !value.is_empty()
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')),
                "NoCloud {what} {value:?}: use letters, digits, '-' and '.'"
            );
        }
        let dir = root.join("var/lib/cloud/seed/nocloud");
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("could not create {}: {e}", dir.display()));
        let meta = format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            self.instance_id, self.local_hostname
        );
        for (file, content) in [("meta-data", meta.as_str()), ("user-data", &self.user_data)] {
            let path = dir.join(file);
            fs::write(&path, content)
                .unwrap_or_else(|e| panic!("could not write {}: {e}", path.display()));
        }
    }
}

/// Serves files over plain HTTP on 127.0.0.1, as an operator's download
/// server serves the agent; machines share the host's network, so they reach
/// it at [`FileServer::url`]. Stops when dropped.
pub struct FileServer {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    /// Serves each `(URL path, host file)`: `GET /cairn-agent`; any other
    /// request gets 404.
    pub fn serve(files: &[(&str, &Path)]) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("could not listen on 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        listener
            .set_nonblocking(true)
            .expect("could not make the listener non-blocking");
        let files: Vec<(String, PathBuf)> = files
            .iter()
            .map(|(url, path)| (url.to_string(), path.to_path_buf()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Err(e) = answer(conn, &files) {
                            eprintln!("file server: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => eprintln!("file server: accept: {e}"),
                }
            }
        });
        FileServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// The URL of `path` (`/cairn-agent`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one HTTP/1.x request on `conn` from `files`, then closes it.
fn answer(mut conn: TcpStream, files: &[(String, PathBuf)]) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if conn.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let path = match (words.next(), words.next()) {
        (Some("GET"), Some(path)) => path,
        _ => "",
    };
    match files.iter().find(|(url, _)| url == path) {
        Some((_, file)) => {
            let mut f = File::open(file)?;
            let len = f.metadata()?.len();
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            )?;
            std::io::copy(&mut f, &mut conn)?;
        }
        None => conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?,
    }
    conn.flush()
}

/// Names the test process that owns a machine's directory.
const OWNER_FILE: &str = "owner.pid";

/// Removes the directories of machines whose test process is gone: killed
/// before it could drop its machine (which then halted, see `--pdeathsig`).
fn sweep(machines: &Path) {
    let Ok(entries) = fs::read_dir(machines) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        let owner = fs::read_to_string(dir.join(OWNER_FILE)).ok();
        let Some(pid) = owner.and_then(|o| o.trim().parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing {}, left behind by process {pid}", dir.display());
            if let Err(e) = fs::remove_dir_all(&dir) {
                eprintln!("warning: could not remove {}: {e}", dir.display());
            }
        }
    }
}

/// The child of `parent` that is PID 1 of its own PID namespace.
fn child_init(parent: u32) -> Option<u32> {
    let children = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .is_some_and(|ids| {
                        ids.split_whitespace().last() == Some("1")
                            && ids.split_whitespace().count() > 1
                    })
            })
        })
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One `cairn-agent apply --format json` run. Its `Display` is what a person
/// would have seen (the human rendering and stderr), for assertion messages.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub report: RunReport,
    pub stderr: String,
}

impl Run {
    /// The report of resource `id`; panics, showing the run, if absent.
    pub fn resource(&self, id: &str) -> &ResourceReport {
        self.report
            .resources
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("the report has no {id}:\n{self}"))
    }

    /// The ids of the resources with `status`, in report order.
    pub fn ids(&self, status: ResourceStatus) -> Vec<&str> {
        self.report
            .resources
            .iter()
            .filter(|r| r.status == status)
            .map(|r| r.id.as_str())
            .collect()
    }

    /// Whether resource `id` reports a change of `property` from `before` to `after`.
    pub fn has_change(&self, id: &str, property: &str, before: &str, after: &str) -> bool {
        self.resource(id)
            .changes
            .iter()
            .any(|c| c.property == property && c.before == before && c.after == after)
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "exit code {}", self.code)?;
        f.write_str(&self.report.human())?;
        if !self.stderr.trim().is_empty() {
            writeln!(f, "stderr:\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

/// A change as a report states it: `(property, before, after)`.
pub type Change<'a> = (&'a str, &'a str, &'a str);

/// Where [`Timeline`] writes its role inside the machine.
const TIMELINE_ROLE: &str = "/root/roles/timeline";

/// One resource's timeline on a machine, the way mgmt tests a resource: each
/// step gives the role's resources, and the real agent runs as often as it
/// takes to prove what the step claims, from the report and from `probe`, a
/// shell command whose output is the machine's own view of the resource
/// (`getent`, `dpkg-query`: an oracle independent of the agent).
pub struct Timeline<'m> {
    machine: &'m Machine,
    id: String,
    probe: String,
}

impl<'m> Timeline<'m> {
    /// The timeline of resource `id` (`package:figlet`). `probe` must succeed
    /// whatever the state (end it with `; true` when a command fails on
    /// absence).
    pub fn new(machine: &'m Machine, id: &str, probe: &str) -> Self {
        Timeline {
            machine,
            id: id.to_string(),
            probe: probe.to_string(),
        }
    }

    /// What `probe` prints now.
    pub fn probe(&self) -> String {
        self.machine.sh_ok(&self.probe)
    }

    /// `resources` (the role after its `[role]` table) drift from the machine
    /// by exactly `changes`: `--noop` reports them and leaves the probe as it
    /// was; a real run makes them; the next run finds nothing to do and leaves
    /// the probe alone. Returns what the probe prints after the change.
    pub fn converges(&self, resources: &str, changes: &[Change]) -> String {
        self.noop_reports(resources, changes);
        let run = self.apply(false);
        self.expect(
            &run,
            "apply",
            resources,
            2,
            ResourceStatus::Changed,
            changes,
        );
        let after = self.probe();
        self.holds_as_set(resources);
        after
    }

    /// `resources` already describe the machine: a run reports the resource
    /// unchanged and leaves the probe alone.
    pub fn holds(&self, resources: &str) {
        self.set_role(resources);
        self.holds_as_set(resources);
    }

    /// [`Timeline::holds`] for the role already written.
    fn holds_as_set(&self, resources: &str) {
        let before = self.probe();
        let run = self.apply(false);
        let step = "apply with nothing to do";
        self.expect(&run, step, resources, 0, ResourceStatus::Unchanged, &[]);
        self.probe_is(&before, step, resources, &run);
    }

    /// `resources` drift by `changes`, which `--noop` reports, but applying
    /// them fails with an error that contains each of `errors`; neither run
    /// changes what the probe prints. Returns the failed run.
    pub fn fails(&self, resources: &str, changes: &[Change], errors: &[&str]) -> Run {
        let before = self.noop_reports(resources, changes);
        let run = self.apply(false);
        let step = "failing apply";
        let failed = run.ids(ResourceStatus::Failed);
        assert!(
            run.code == 4 && failed == [self.id.as_str()],
            "{}",
            context(
                step,
                &format!("exit code 4 and {} alone failed", self.id),
                resources,
                &run
            )
        );
        let error = run.resource(&self.id).error.as_deref().unwrap_or_default();
        for part in errors {
            assert!(
                error.contains(part),
                "{}",
                context(step, &format!("an error saying {part:?}"), resources, &run)
            );
        }
        self.probe_is(&before, step, resources, &run);
        run
    }

    /// Sets the role; `--noop` reports exactly `changes` and leaves the probe
    /// as it was, which it returns.
    fn noop_reports(&self, resources: &str, changes: &[Change]) -> String {
        self.set_role(resources);
        let before = self.probe();
        let run = self.apply(true);
        let step = "--noop";
        self.expect(
            &run,
            step,
            resources,
            2,
            ResourceStatus::WouldChange,
            changes,
        );
        self.probe_is(&before, step, resources, &run);
        before
    }

    fn set_role(&self, resources: &str) {
        self.machine.write_file(
            &format!("{TIMELINE_ROLE}/role.toml"),
            format!("[role]\nname = \"timeline\"\n\n{resources}"),
        );
    }

    fn apply(&self, noop: bool) -> Run {
        let mut extra = vec!["--detailed-exitcodes"];
        if noop {
            extra.push("--noop");
        }
        self.machine.apply_json(TIMELINE_ROLE, &extra)
    }

    /// The run exited `code`, with the resource in `status` by exactly
    /// `changes`, and every other resource unchanged.
    fn expect(
        &self,
        run: &Run,
        step: &str,
        resources: &str,
        code: i32,
        status: ResourceStatus,
        changes: &[Change],
    ) {
        let others_unchanged = run
            .report
            .resources
            .iter()
            .all(|r| r.id == self.id || r.status == ResourceStatus::Unchanged);
        let resource = run.resource(&self.id);
        let want: Vec<PropertyChange> = changes
            .iter()
            .map(|(property, before, after)| PropertyChange::new(property, *before, *after))
            .collect();
        assert!(
            run.code == code && resource.status == status && others_unchanged,
            "{}",
            context(
                step,
                &format!(
                    "exit code {code}, {} {status:?}, the rest unchanged",
                    self.id
                ),
                resources,
                run
            )
        );
        assert!(
            resource.changes == want,
            "{}",
            context(step, &format!("the changes {want:?}"), resources, run)
        );
    }

    fn probe_is(&self, before: &str, step: &str, resources: &str, run: &Run) {
        let now = self.probe();
        assert!(
            now == before,
            "{}",
            context(
                step,
                &format!("`{}` to print {before:?} still, not {now:?}", self.probe),
                resources,
                run
            )
        );
    }
}

/// An assertion message of a [`Timeline`] step.
fn context(step: &str, expected: &str, resources: &str, run: &Run) -> String {
    format!("{step}: expected {expected}\nrole:\n{resources}\nrun: {run}")
}
