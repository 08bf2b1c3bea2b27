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
    /// What the hardware says the cloud is, from DMI, with or without
    /// cloud-init: `aws`, `gcp`, `azure`, `digitalocean`, `openstack`,
    /// `hetzner` or `none`.
    pub cloud_provider: String,
    /// What cloud-init says about this instance, where it has run; `None`
    /// (JSON `null`, so `{{#if facts.cloud}}` works in strict mode) elsewhere.
    pub cloud: Option<CloudFacts>,
}

/// The provider-neutral instance data cloud-init keeps in
/// `/run/cloud-init/instance-data.json` (its standard `v1` keys), read
/// without calling any provider's API. A value the data source does not know
/// (NoCloud has no region) is an empty string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudFacts {
    /// cloud-init's name of the cloud: `aws`, `gce`, `azure`, `openstack`,
    /// `nocloud`, … (`v1.cloud_name`).
    pub cloud_name: String,
    /// The cloud and any partition of it: `aws`, `aws-china`, `azure-gov`, …
    /// (`v1.cloud_id`; `cloud_name` when cloud-init gives none).
    pub cloud_id: String,
    /// The data source's platform: `ec2`, `gce`, `nocloud`, `openstack`, …
    pub platform: String,
    pub region: String,
    pub availability_zone: String,
    pub instance_id: String,
    /// The instance's size (`t3.micro`, `n2-standard-2`) where the data source
    /// publishes it in its metadata as `instance_type`, `instance-type` or
    /// `machine_type`; cloud-init's `v1` has no such key.
    pub instance_type: String,
    /// The hostname the cloud gave the instance (`v1.local_hostname`).
    pub local_hostname: String,
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
            cloud_provider: "none".into(),
            cloud: Some(CloudFacts {
                cloud_name: "nocloud".into(),
                cloud_id: "nocloud".into(),
                platform: "nocloud".into(),
                region: "region-1".into(),
                availability_zone: "region-1a".into(),
                instance_id: "i-0123456789abcdef0".into(),
                instance_type: "small".into(),
                local_hostname: "node".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Templates;

    /// Renders `source` with `facts` as templates see them (`facts.…`).
    fn render(source: &str, facts: &Facts) -> Result<String, String> {
        let mut t = Templates::new();
        t.add("t", source).map_err(|e| e.message)?;
        t.render("t", &serde_json::json!({ "facts": facts }), 1 << 20)
            .map_err(|e| e.message)
    }

    #[test]
    fn placeholder_facts_let_templates_name_every_cloud_key() {
        let every_key = "{{facts.cloud_provider}} {{facts.cloud.cloud_name}} {{facts.cloud.cloud_id}} \
             {{facts.cloud.platform}} {{facts.cloud.region}} {{facts.cloud.availability_zone}} \
             {{facts.cloud.instance_id}} {{facts.cloud.instance_type}} {{facts.cloud.local_hostname}}";
        assert!(render(every_key, &Facts::placeholder()).is_ok());
        // Strict mode: a misspelt key fails against the placeholder, as on a node.
        let err = render("{{facts.cloud.regoin}}", &Facts::placeholder()).unwrap_err();
        assert!(err.contains("regoin"), "{err}");
    }

    #[test]
    fn a_template_branches_on_whether_cloud_init_ran() {
        let branch = "{{#if facts.cloud}}in {{facts.cloud.region}}{{else}}no cloud-init{{/if}}";
        let mut node = Facts::placeholder();
        assert_eq!(render(branch, &node).unwrap(), "in region-1");
        node.cloud = None;
        assert_eq!(render(branch, &node).unwrap(), "no cloud-init");
        // Unguarded, the value is missing: an error, never an empty string.
        assert!(render("{{facts.cloud.region}}", &node).is_err());
        // `null` in JSON, so the key itself exists for `#if`.
        let json = serde_json::to_value(&node).unwrap();
        assert_eq!(json["cloud"], serde_json::Value::Null);
    }
}
