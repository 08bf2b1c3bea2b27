//! Facts: what the agent observed about its node before a run.
//!
//! Gathering lives in the agent; the shape lives here because templates (and so
//! validation on the server) depend on it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub hostname: String,
    pub fqdn: String,
    pub os: OsFacts,
    /// Kernel release, as `uname -r` prints it.
    pub kernel: String,
    /// Machine hardware name, as `uname -m` prints it (`x86_64`, `aarch64`).
    pub arch: String,
    pub cpu_count: u32,
    pub memory: MemoryFacts,
    pub ip_addresses: IpFacts,
    /// Contents of `/etc/machine-id`, empty when the image has none yet.
    pub machine_id: String,
    /// `aws`, `gcp`, `azure`, `digitalocean`, `openstack`, `hetzner` or `none`.
    pub cloud: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsFacts {
    /// `ID` from os-release: `debian`, `ubuntu`, …
    pub id: String,
    /// The first of `ID_LIKE`, or `ID` itself: `debian` for Ubuntu and Debian.
    pub family: String,
    /// `VERSION_ID` from os-release: `12`, `24.04`.
    pub version: String,
    /// `VERSION_CODENAME` from os-release: `bookworm`; may be empty.
    pub codename: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFacts {
    pub total_bytes: u64,
    pub total_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpFacts {
    /// Non-loopback IPv4 addresses, in interface order.
    pub ipv4: Vec<String>,
    /// Non-loopback, non-link-local IPv6 addresses.
    pub ipv6: Vec<String>,
}

impl Facts {
    /// Placeholder facts with every field present, for validating templates where
    /// no real node exists (the server, `cairn-agent validate`). Strict mode then
    /// catches a misspelled `facts.…` name exactly as a real run would.
    pub fn placeholder() -> Self {
        Facts {
            hostname: "node".into(),
            fqdn: "node.example.org".into(),
            os: OsFacts {
                id: "debian".into(),
                family: "debian".into(),
                version: "12".into(),
                codename: "bookworm".into(),
            },
            kernel: "6.1.0".into(),
            arch: "x86_64".into(),
            cpu_count: 2,
            memory: MemoryFacts {
                total_bytes: 2 << 30,
                total_mib: 2048,
            },
            ip_addresses: IpFacts {
                ipv4: vec!["192.0.2.10".into()],
                ipv6: vec![],
            },
            machine_id: "00000000000000000000000000000000".into(),
            cloud: "none".into(),
        }
    }
}
