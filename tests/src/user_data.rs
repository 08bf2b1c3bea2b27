//! The first-boot user-data of `docs/cloud-init.md`, filled in: what the
//! cloud-init test boots and the demo shows, so the document's example is the
//! one that is run.

use std::path::Path;
use std::process::Command;

use crate::{FileServer, NoCloudSeed, Operator, Server, static_agent_binary, workspace_root};

/// Where the example is, and the comment that comes right before it.
const CLOUD_INIT_DOC: &str = "docs/cloud-init.md";
const EXAMPLE_MARK: &str = "<!-- The block below is the example tests/tests/cloud_init.rs boots";
/// The agent's unit in the repository, which the user-data downloads.
const UNIT: &str = "agent/systemd/cairn-agent.service";

/// The user-data example of [`CLOUD_INIT_DOC`]: the first ```yaml block
/// after its mark, placeholders and all.
fn documented_user_data() -> String {
    let path = workspace_root().join(CLOUD_INIT_DOC);
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("could not read {}: {e}", path.display()));
    let after = &doc[doc
        .find(EXAMPLE_MARK)
        .unwrap_or_else(|| panic!("{CLOUD_INIT_DOC} has no {EXAMPLE_MARK:?}"))..];
    let start = after
        .find("```yaml\n")
        .expect("a ```yaml block after the mark")
        + 8;
    let len = after[start..].find("```").expect("the block ends");
    after[start..start + len].to_string()
}

/// The static agent ([`static_agent_binary`]) and its unit file, served on
/// loopback as an operator's download server would serve them.
pub struct AgentDownloads {
    files: FileServer,
    agent_sha256: String,
}

impl AgentDownloads {
    /// Starts serving them, at `/cairn-agent` and `/cairn-agent.service`.
    pub fn serve() -> AgentDownloads {
        let agent = static_agent_binary();
        let unit = workspace_root().join(UNIT);
        let files = FileServer::serve(&[
            ("/cairn-agent", agent.as_path()),
            ("/cairn-agent.service", unit.as_path()),
        ]);
        let agent_sha256 = sha256(&agent);
        AgentDownloads {
            files,
            agent_sha256,
        }
    }

    /// Its SHA-256, in hex.
    pub fn agent_sha256(&self) -> &str {
        &self.agent_sha256
    }
}

/// A fresh machine's NoCloud seed for a [`Server`]: the user-data of
/// [`first_boot_user_data`] with a new join token, the server's CA pin, and
/// the static agent served on loopback. What the cloud-init tests and the
/// demo boot.
pub struct FirstBoot {
    pub seed: NoCloudSeed,
    /// The join token in the user-data (one use, made by the operator).
    pub token: String,
    pub ca_pin: String,
    /// Serves the agent and its unit: keep it until the machine has booted.
    pub downloads: AgentDownloads,
}

impl FirstBoot {
    /// The seed of a machine named `hostname` that enrolls for `role` at
    /// `channel` with the servers `servers` (in that order; the server's own
    /// URL among them) and trusts `server`'s CA.
    pub fn new(
        server: &Server,
        ops: &Operator,
        (role, channel): (&str, &str),
        servers: &[String],
        hostname: &str,
    ) -> FirstBoot {
        let token = ops.token(role, channel);
        let ca_pin = server.ca_pin();
        let downloads = AgentDownloads::serve();
        let enrollment = Enrollment {
            servers,
            ca_pin: &ca_pin,
            token: &token,
        };
        let seed = NoCloudSeed {
            instance_id: format!("iid-{hostname}-{:x}", std::process::id()),
            local_hostname: hostname.into(),
            user_data: first_boot_user_data(&enrollment, &downloads),
        };
        FirstBoot {
            seed,
            token,
            ca_pin,
            downloads,
        }
    }
}

/// What a machine needs to enroll: the servers' URLs, the pin of their CA
/// (`cairn-server ca pin`) and a join token (`cairn token create`).
pub struct Enrollment<'a> {
    pub servers: &'a [String],
    pub ca_pin: &'a str,
    pub token: &'a str,
}

/// [`documented_user_data`] with every placeholder filled in: the
/// `servers` line, `CA_PIN`, `JOIN_TOKEN`, `AGENT_URL`, `AGENT_SHA256` and
/// `UNIT_URL`. Each must be in the example once, so a change to the document
/// that the machines would not follow fails here.
pub fn first_boot_user_data(enrollment: &Enrollment, downloads: &AgentDownloads) -> String {
    let documented = documented_user_data();
    let servers = documented
        .lines()
        .filter(|l| l.trim_start().starts_with("servers = ["))
        .collect::<Vec<_>>();
    assert_eq!(
        servers.len(),
        1,
        "{CLOUD_INIT_DOC}'s example should hold one `servers` line:\n{documented}"
    );
    let indent = &servers[0][..servers[0].len() - servers[0].trim_start().len()];
    let urls = enrollment
        .servers
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut user_data = replace_once(
        &documented,
        servers[0],
        &format!("{indent}servers = [{urls}]"),
    );
    for (placeholder, value) in [
        ("CA_PIN", enrollment.ca_pin),
        ("JOIN_TOKEN", enrollment.token),
        ("AGENT_URL", &downloads.files.url("/cairn-agent")),
        ("AGENT_SHA256", downloads.agent_sha256()),
        ("UNIT_URL", &downloads.files.url("/cairn-agent.service")),
    ] {
        user_data = replace_once(&user_data, placeholder, value);
    }
    user_data
}

/// `text` with `from` replaced by `to`, which must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{CLOUD_INIT_DOC}'s example should hold {from:?} once:\n{text}"
    );
    text.replacen(from, to, 1)
}

/// The SHA-256 of a file, in hex, by `sha256sum` (as the user-data checks it).
fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("could not run sha256sum: {e}"));
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}
