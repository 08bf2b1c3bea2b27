//! Gathering [`Facts`] about this node.
//!
//! Everything comes from system calls and small files: no process is spawned
//! and no name is resolved over the network, so a gather costs well under a
//! millisecond and never hangs on a broken resolver. Each parser takes the
//! file's text, so tests feed it samples from other systems and clouds.

use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use cairn_proto::facts::{CloudFacts, Facts, IpFacts, MemoryFacts, OsFacts};
use nix::net::if_::InterfaceFlags;
use serde::Deserialize;

use crate::providers::fs::Posix;

const OS_RELEASE: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];
const DMI_ROOT: &str = "/sys/class/dmi/id";
/// Where cloud-init leaves what it learnt about the instance, readable by all
/// (its secrets go to `instance-data-sensitive.json`, which is not read).
pub const INSTANCE_DATA: &str = "/run/cloud-init/instance-data.json";
/// The most instance data read: real files are a few to a few hundred KiB
/// (the data source's whole metadata is in them).
const INSTANCE_DATA_LIMIT: u64 = 4 << 20;
/// The longest value taken into `facts.cloud`; a longer one makes the file
/// count as malformed.
const CLOUD_VALUE_LIMIT: usize = 1024;

/// Observes the node this agent runs on.
pub fn gather() -> Result<Facts> {
    let hostname = nix::unistd::gethostname()
        .context("could not read the hostname")?
        .into_string()
        .map_err(|h| anyhow!("the hostname {h:?} is not valid UTF-8"))?;
    let fqdn = fqdn(
        &hostname,
        read_optional(Path::new("/etc/hosts"))?.as_deref(),
        read_optional(Path::new("/etc/resolv.conf"))?.as_deref(),
    );
    let uts = nix::sys::utsname::uname().context("could not read the kernel name (uname)")?;
    let cpu_count = std::thread::available_parallelism()
        .context("could not count the CPUs available to this process")?
        .get();
    let meminfo =
        std::fs::read_to_string("/proc/meminfo").context("could not read /proc/meminfo")?;
    let total_bytes = mem_total(&meminfo).context("could not read MemTotal from /proc/meminfo")?;
    let machine_id = read_optional(Path::new("/etc/machine-id"))?
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Ok(Facts {
        hostname: hostname.clone(),
        fqdn,
        os: os_facts()?,
        kernel: uts.release().to_string_lossy().into_owned(),
        arch: uts.machine().to_string_lossy().into_owned(),
        cpu_count: u32::try_from(cpu_count).unwrap_or(u32::MAX),
        memory: MemoryFacts {
            total_bytes,
            total_mib: total_bytes / (1024 * 1024),
        },
        ip_addresses: ip_addresses()?,
        machine_id,
        cloud_provider: detect_cloud(Path::new(DMI_ROOT))?.to_string(),
        cloud: cloud_facts(Path::new(INSTANCE_DATA)),
    })
}

/// The file's text, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
    }
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// The fully qualified name, found the way `hostname -f` would without asking
/// DNS: the hostname itself when it is qualified; else its canonical name in
/// `/etc/hosts` when that is qualified; else the hostname plus the resolver's
/// domain; else the bare hostname.
pub fn fqdn(hostname: &str, hosts: Option<&str>, resolv_conf: Option<&str>) -> String {
    if hostname.contains('.') {
        return hostname.to_string();
    }
    if let Some(canonical) = hosts.and_then(|h| hosts_canonical(h, hostname))
        && canonical.contains('.')
    {
        return canonical.to_string();
    }
    match resolv_conf.and_then(resolver_domain) {
        Some(domain) => format!("{hostname}.{domain}"),
        None => hostname.to_string(),
    }
}

/// The canonical name (first name) of the first `/etc/hosts` line that lists
/// `name`, as the C library's files lookup returns it.
fn hosts_canonical<'a>(hosts: &'a str, name: &str) -> Option<&'a str> {
    hosts.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut names = line.split_whitespace().skip(1);
        let canonical = names.next()?;
        (canonical.eq_ignore_ascii_case(name) || names.any(|n| n.eq_ignore_ascii_case(name)))
            .then_some(canonical)
    })
}

/// The local domain from `resolv.conf`: `domain`, or the first `search` entry.
/// The two are exclusive and the last line of either wins (resolv.conf(5)).
fn resolver_domain(resolv_conf: &str) -> Option<&str> {
    let mut domain = None;
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if let Some("domain" | "search") = words.next() {
            domain = words.next();
        }
    }
    domain
        .map(|d| d.trim_end_matches('.'))
        .filter(|d| !d.is_empty())
}

// ---------------------------------------------------------------------------
// Operating system
// ---------------------------------------------------------------------------

/// Reads os-release from `/etc`, or from `/usr/lib` where images keep only that
/// one (os-release(5)).
fn os_facts() -> Result<OsFacts> {
    for path in OS_RELEASE {
        if let Some(text) = read_optional(Path::new(path))? {
            return Ok(parse_os_release(&text));
        }
    }
    bail!(
        "could not identify the operating system: neither {} nor {} exists",
        OS_RELEASE[0],
        OS_RELEASE[1]
    )
}

pub fn parse_os_release(text: &str) -> OsFacts {
    let mut id = None;
    let mut id_like = None;
    let mut version = String::new();
    let mut codename = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        match key.trim() {
            "ID" => id = Some(value),
            "ID_LIKE" => id_like = Some(value),
            "VERSION_ID" => version = value,
            "VERSION_CODENAME" => codename = value,
            _ => {}
        }
    }
    // os-release(5): ID defaults to "linux" when absent.
    let id = id
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "linux".to_string());
    let family = id_like
        .as_deref()
        .and_then(|l| l.split_whitespace().next())
        .map_or_else(|| id.clone(), str::to_string);
    OsFacts {
        id,
        family,
        version,
        codename,
    }
}

/// Removes shell-style quotes and backslash escapes from an os-release value.
fn unquote(value: &str) -> String {
    let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        return value.to_string();
    };
    let inner = value[1..].strip_suffix(quote).unwrap_or(&value[1..]);
    if quote == '\'' {
        return inner.to_string();
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Hardware
// ---------------------------------------------------------------------------

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn mem_total(meminfo: &str) -> Result<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .ok_or_else(|| anyhow!("no MemTotal line"))?;
    let mut words = line.split_whitespace();
    let n: u64 = words
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("MemTotal is not a number: {line:?}"))?;
    match words.next() {
        Some("kB") => Ok(n * 1024),
        None => Ok(n),
        Some(unit) => bail!("MemTotal has an unknown unit {unit:?}"),
    }
}

fn ip_addresses() -> Result<IpFacts> {
    let mut ips = IpFacts {
        ipv4: Vec::new(),
        ipv6: Vec::new(),
    };
    for ifa in
        nix::ifaddrs::getifaddrs().context("could not list network interfaces (getifaddrs)")?
    {
        if ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK) {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue; // link-layer (AF_PACKET) entries
        };
        if !reportable(ip) {
            continue;
        }
        let list = if ip.is_ipv4() {
            &mut ips.ipv4
        } else {
            &mut ips.ipv6
        };
        let text = ip.to_string();
        if !list.contains(&text) {
            list.push(text);
        }
    }
    Ok(ips)
}

/// Whether an address says something about how to reach the node: loopback,
/// unspecified and IPv6 link-local (fe80::/10) addresses do not.
pub fn reportable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

// ---------------------------------------------------------------------------
// Cloud
// ---------------------------------------------------------------------------

/// The DMI strings clouds identify themselves by (empty when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dmi {
    pub sys_vendor: String,
    pub product_name: String,
    pub bios_vendor: String,
    pub chassis_asset_tag: String,
    pub board_vendor: String,
}

impl Dmi {
    /// Reads the DMI files under `root` (normally `/sys/class/dmi/id`); a missing
    /// file or directory (containers, non-x86 boards) reads as empty.
    pub fn read(root: &Path) -> Result<Dmi> {
        let field = |name: &str| -> Result<String> {
            Ok(read_optional(&root.join(name))?
                .map(|s| s.trim().to_string())
                .unwrap_or_default())
        };
        Ok(Dmi {
            sys_vendor: field("sys_vendor")?,
            product_name: field("product_name")?,
            bios_vendor: field("bios_vendor")?,
            chassis_asset_tag: field("chassis_asset_tag")?,
            board_vendor: field("board_vendor")?,
        })
    }
}

/// Azure's fixed chassis asset tag, which sets it apart from other Hyper-V hosts.
const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

fn detect_cloud(dmi_root: &Path) -> Result<&'static str> {
    Ok(classify_cloud(&Dmi::read(dmi_root)?))
}

/// `aws`, `gcp`, `azure`, `digitalocean`, `openstack`, `hetzner` or `none`,
/// by the same DMI signatures cloud-init's data sources look for.
pub fn classify_cloud(dmi: &Dmi) -> &'static str {
    let has = |field: &str, needle: &str| field.to_ascii_lowercase().contains(needle);
    // Nitro instances say "Amazon EC2"; older Xen ones only "Amazon.com" in the BIOS.
    if has(&dmi.sys_vendor, "amazon")
        || has(&dmi.bios_vendor, "amazon")
        || has(&dmi.board_vendor, "amazon")
    {
        "aws"
    } else if has(&dmi.sys_vendor, "google")
        || dmi.product_name == "Google Compute Engine"
        || has(&dmi.bios_vendor, "google")
    {
        "gcp"
    } else if dmi.sys_vendor == "Microsoft Corporation" && dmi.chassis_asset_tag == AZURE_ASSET_TAG
    {
        "azure"
    } else if dmi.sys_vendor == "DigitalOcean" {
        "digitalocean"
    } else if dmi.sys_vendor == "OpenStack Foundation"
        || matches!(
            dmi.product_name.as_str(),
            "OpenStack Nova" | "OpenStack Compute"
        )
    {
        "openstack"
    } else if dmi.sys_vendor == "Hetzner" {
        "hetzner"
    } else {
        "none"
    }
}

// ---------------------------------------------------------------------------
// cloud-init's instance data
// ---------------------------------------------------------------------------

/// `facts.cloud` from cloud-init's instance data at `path`: `None` where
/// cloud-init has not run (no file). A file that cannot be read or parsed
/// also gives `None`, with a warning on stderr: the run goes on, as it would
/// on a machine without cloud-init, and a template that needs the values
/// fails in strict mode, naming `facts.cloud`.
pub fn cloud_facts(path: &Path) -> Option<CloudFacts> {
    let read = || -> Result<Option<CloudFacts>> {
        let Some(data) = Posix::default().read_bounded(path, INSTANCE_DATA_LIMIT)? else {
            return Ok(None);
        };
        parse_instance_data(&data).map(Some).with_context(|| {
            format!(
                "could not read cloud-init's instance data {}",
                path.display()
            )
        })
    };
    read().unwrap_or_else(|e| {
        eprintln!("warning: facts.cloud is left out: {e:#}");
        None
    })
}

/// The parts of `instance-data.json` Cairn takes; the rest is parsed past,
/// not kept. A missing key, or `null` (a data source that does not know),
/// reads as empty.
#[derive(Deserialize)]
struct InstanceData {
    v1: V1,
    ds: Option<Ds>,
}

/// cloud-init's standard, provider-neutral keys.
#[derive(Deserialize)]
struct V1 {
    cloud_name: Option<String>,
    cloud_id: Option<String>,
    platform: Option<String>,
    region: Option<String>,
    availability_zone: Option<String>,
    instance_id: Option<String>,
    local_hostname: Option<String>,
}

/// The data source's own metadata, for the one thing `v1` lacks: the
/// instance's size, where the metadata names it.
#[derive(Deserialize)]
struct Ds {
    meta_data: Option<serde_json::Value>,
}

/// Parses cloud-init's `instance-data.json`.
pub fn parse_instance_data(data: &[u8]) -> Result<CloudFacts> {
    let parsed: InstanceData =
        serde_json::from_slice(data).context("it is not the JSON cloud-init writes")?;
    let v1 = parsed.v1;
    let value = |key: &str, v: Option<String>| -> Result<String> {
        let v = v.unwrap_or_default();
        if v.len() > CLOUD_VALUE_LIMIT {
            bail!("v1.{key} is longer than {CLOUD_VALUE_LIMIT} bytes");
        }
        Ok(v)
    };
    let cloud_name = value("cloud_name", v1.cloud_name)?;
    let cloud_id = match value("cloud_id", v1.cloud_id)? {
        id if id.is_empty() => cloud_name.clone(),
        id => id,
    };
    let meta = parsed.ds.and_then(|ds| ds.meta_data).unwrap_or_default();
    Ok(CloudFacts {
        cloud_name,
        cloud_id,
        platform: value("platform", v1.platform)?,
        region: value("region", v1.region)?,
        availability_zone: value("availability_zone", v1.availability_zone)?,
        instance_id: value("instance_id", v1.instance_id)?,
        instance_type: instance_type(&meta),
        local_hostname: value("local_hostname", v1.local_hostname)?,
    })
}

/// The instance's size from the data source's metadata: EC2 and the clouds
/// that serve EC2-style metadata (`instance-type`), Azure's IMDS
/// (`imds.compute.vmSize`); empty elsewhere, or when the value is not a short
/// string.
fn instance_type(meta: &serde_json::Value) -> String {
    let azure = || meta.get("imds")?.get("compute")?.get("vmSize");
    ["instance-type", "instance_type"]
        .iter()
        .find_map(|k| meta.get(*k))
        .or_else(azure)
        .and_then(serde_json::Value::as_str)
        .filter(|s| s.len() <= CLOUD_VALUE_LIMIT)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqdn_prefers_qualified_hostname_then_hosts_then_resolver() {
        let hosts = "127.0.0.1 localhost\n127.0.1.1 web1.example.org web1 # added by installer\n";
        let resolv = "nameserver 192.0.2.53\nsearch corp.example lab.example\n";
        assert_eq!(
            fqdn("db.example.net", Some(hosts), Some(resolv)),
            "db.example.net"
        );
        assert_eq!(fqdn("web1", Some(hosts), Some(resolv)), "web1.example.org");
        assert_eq!(fqdn("WEB1", Some(hosts), None), "web1.example.org");
        // Canonical name without a dot: fall through to the resolver's domain.
        assert_eq!(
            fqdn("vm", Some("127.0.0.1 vm\n"), Some(resolv)),
            "vm.corp.example"
        );
        // A name only in a comment does not count.
        assert_eq!(
            fqdn("app", Some("# 10.0.0.1 app.example.org app\n"), None),
            "app"
        );
        assert_eq!(
            fqdn("app", None, Some("domain example.com.\n")),
            "app.example.com"
        );
        // The last of domain/search wins.
        assert_eq!(
            fqdn("app", None, Some("domain a.example\nsearch b.example\n")),
            "app.b.example"
        );
        assert_eq!(fqdn("app", None, Some("nameserver 1.1.1.1\n")), "app");
        assert_eq!(fqdn("app", None, None), "app");
    }

    #[test]
    fn os_release_of_debian_and_ubuntu() {
        let debian = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"#;
        let os = parse_os_release(debian);
        assert_eq!(
            os,
            OsFacts {
                id: "debian".into(),
                family: "debian".into(),
                version: "12".into(),
                codename: "bookworm".into(),
            }
        );
        let ubuntu = r#"PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04.1 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=noble
"#;
        let os = parse_os_release(ubuntu);
        assert_eq!((os.id.as_str(), os.family.as_str()), ("ubuntu", "debian"));
        assert_eq!(
            (os.version.as_str(), os.codename.as_str()),
            ("24.04", "noble")
        );

        let mint = "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\nVERSION_ID='22'\n";
        let os = parse_os_release(mint);
        assert_eq!(
            (
                os.family.as_str(),
                os.version.as_str(),
                os.codename.as_str()
            ),
            ("ubuntu", "22", "")
        );
        // Debian testing has no VERSION_ID; an empty file means "linux".
        assert_eq!(parse_os_release("ID=debian\n").version, "");
        assert_eq!(parse_os_release("").id, "linux");
        assert_eq!(unquote(r#""a \"b\" \\ c""#), r#"a "b" \ c"#);
    }

    #[test]
    fn meminfo_total() {
        let text = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
        assert_eq!(mem_total(text).unwrap(), 24576000 * 1024);
        assert!(mem_total("MemFree: 1 kB\n").is_err());
        assert!(mem_total("MemTotal: lots kB\n").is_err());
    }

    #[test]
    fn address_filter() {
        let ok = |s: &str| reportable(s.parse().unwrap());
        assert!(ok("192.0.2.10") && ok("10.1.2.3") && ok("2001:db8::1") && ok("fd00::1"));
        assert!(
            !ok("127.0.0.1") && !ok("::1") && !ok("fe80::1") && !ok("febf::1") && !ok("0.0.0.0")
        );
        assert!(ok("fec0::1"), "fec0::/10 is not link-local");
    }

    fn dmi(
        sys_vendor: &str,
        product_name: &str,
        bios_vendor: &str,
        asset_tag: &str,
        board_vendor: &str,
    ) -> Dmi {
        Dmi {
            sys_vendor: sys_vendor.into(),
            product_name: product_name.into(),
            bios_vendor: bios_vendor.into(),
            chassis_asset_tag: asset_tag.into(),
            board_vendor: board_vendor.into(),
        }
    }

    #[test]
    fn clouds_by_dmi() {
        let cases = [
            (
                dmi(
                    "Amazon EC2",
                    "t3.micro",
                    "Amazon EC2",
                    "Amazon EC2",
                    "Amazon EC2",
                ),
                "aws",
            ),
            (dmi("Xen", "HVM domU", "Amazon.com", "", ""), "aws"),
            (
                dmi("Google", "Google Compute Engine", "Google", "", "Google"),
                "gcp",
            ),
            (
                dmi(
                    "Microsoft Corporation",
                    "Virtual Machine",
                    "Microsoft Corporation",
                    AZURE_ASSET_TAG,
                    "Microsoft Corporation",
                ),
                "azure",
            ),
            // Hyper-V on a desktop is not Azure.
            (
                dmi(
                    "Microsoft Corporation",
                    "Virtual Machine",
                    "Microsoft Corporation",
                    "1234",
                    "",
                ),
                "none",
            ),
            (
                dmi("DigitalOcean", "Droplet", "DigitalOcean", "", ""),
                "digitalocean",
            ),
            (
                dmi("OpenStack Foundation", "OpenStack Nova", "SeaBIOS", "", ""),
                "openstack",
            ),
            (
                dmi("RDO", "OpenStack Compute", "SeaBIOS", "", ""),
                "openstack",
            ),
            (dmi("Hetzner", "vServer", "Hetzner", "", ""), "hetzner"),
            (
                dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)", "SeaBIOS", "", ""),
                "none",
            ),
            (Dmi::default(), "none"),
        ];
        for (d, want) in cases {
            assert_eq!(classify_cloud(&d), want, "{d:?}");
        }
    }

    #[test]
    fn dmi_files_are_read_from_the_given_root() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect_cloud(&dir.path().join("missing")).unwrap(), "none");
        std::fs::write(dir.path().join("sys_vendor"), "Microsoft Corporation\n").unwrap();
        assert_eq!(detect_cloud(dir.path()).unwrap(), "none");
        std::fs::write(
            dir.path().join("chassis_asset_tag"),
            format!("{AZURE_ASSET_TAG}\n"),
        )
        .unwrap();
        assert_eq!(detect_cloud(dir.path()).unwrap(), "azure");
        std::fs::write(dir.path().join("sys_vendor"), "Hetzner\n").unwrap();
        assert_eq!(detect_cloud(dir.path()).unwrap(), "hetzner");
    }

    fn sample(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/instance-data")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn instance_data_of_nocloud_as_cloud_init_wrote_it() {
        // Written by cloud-init 22.4 (Debian 12) booted with a NoCloud seed.
        let cloud = parse_instance_data(&sample("nocloud.json")).unwrap();
        assert_eq!(
            cloud,
            CloudFacts {
                cloud_name: "unknown".into(),
                cloud_id: "nocloud".into(),
                platform: "nocloud".into(),
                region: String::new(),
                availability_zone: String::new(),
                instance_id: "i-test-1".into(),
                instance_type: String::new(),
                local_hostname: "citest".into(),
            }
        );
    }

    #[test]
    fn instance_data_of_ec2_with_region_zone_and_size() {
        let cloud = parse_instance_data(&sample("ec2.json")).unwrap();
        assert_eq!(
            cloud,
            CloudFacts {
                cloud_name: "aws".into(),
                cloud_id: "aws".into(),
                platform: "ec2".into(),
                region: "eu-central-1".into(),
                availability_zone: "eu-central-1b".into(),
                instance_id: "i-0abc1234def567890".into(),
                instance_type: "t3.micro".into(),
                local_hostname: "ip-10-0-1-23".into(),
            }
        );
    }

    #[test]
    fn instance_data_sizes_from_azure_and_none_elsewhere() {
        let azure = br#"{"v1": {"cloud_name": "azure", "platform": "azure", "region": "westeurope",
            "availability_zone": null, "instance_id": "id", "local_hostname": "vm"},
            "ds": {"meta_data": {"imds": {"compute": {"vmSize": "Standard_B1s"}}}}}"#;
        let cloud = parse_instance_data(azure).unwrap();
        assert_eq!(
            (cloud.instance_type.as_str(), cloud.cloud_id.as_str()),
            ("Standard_B1s", "azure"),
            "cloud_id falls back to cloud_name when cloud-init gives none"
        );
        // Odd metadata is not an error: no size.
        let odd = br#"{"v1": {"cloud_name": "x", "platform": "x", "region": null,
            "availability_zone": null, "instance_id": "i", "local_hostname": "h"},
            "ds": {"meta_data": ["not", "a", "map"]}}"#;
        assert_eq!(parse_instance_data(odd).unwrap().instance_type, "");
        let numeric = br#"{"v1": {"cloud_name": "x", "platform": "x", "region": null,
            "availability_zone": null, "instance_id": "i", "local_hostname": "h"},
            "ds": {"meta_data": {"instance-type": 7}}}"#;
        assert_eq!(parse_instance_data(numeric).unwrap().instance_type, "");
    }

    #[test]
    fn malformed_instance_data_is_an_error_naming_what() {
        let long = format!(r#"{{"v1": {{"region": "{}"}}}}"#, "a".repeat(2000));
        for (data, says) in [
            (&b"not json"[..], "not the JSON"),
            (br#"{"ds": {}}"#, "not the JSON"),
            (br#"{"v1": {"region": 5}}"#, "not the JSON"),
            (long.as_bytes(), "v1.region is longer than 1024 bytes"),
        ] {
            let err = format!("{:#}", parse_instance_data(data).unwrap_err());
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn instance_data_is_read_only_from_a_plain_bounded_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instance-data.json");
        assert_eq!(cloud_facts(&path), None, "no cloud-init, no facts.cloud");
        std::fs::write(&path, sample("nocloud.json")).unwrap();
        assert_eq!(cloud_facts(&path).unwrap().platform, "nocloud");

        // Malformed: left out (with a warning), the run goes on.
        std::fs::write(&path, b"{").unwrap();
        assert_eq!(cloud_facts(&path), None);
        // Larger than the limit: not read past it.
        let big = std::fs::File::create(&path).unwrap();
        big.set_len(INSTANCE_DATA_LIMIT + 1).unwrap();
        let err = Posix::default()
            .read_bounded(&path, INSTANCE_DATA_LIMIT)
            .unwrap_err();
        assert!(format!("{err:#}").contains("larger than"), "{err:#}");
        assert_eq!(cloud_facts(&path), None);

        // A link at the path is not followed, even to good data.
        let good = dir.path().join("good.json");
        std::fs::write(&good, sample("ec2.json")).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&good, &path).unwrap();
        let err = Posix::default().read_bounded(&path, 1 << 20).unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        assert_eq!(cloud_facts(&path), None);

        // A pipe does not hang the gather.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRUSR).unwrap();
        assert_eq!(cloud_facts(&path), None);
    }

    #[test]
    fn gather_on_this_host() {
        let facts = gather().unwrap();
        assert!(!facts.hostname.is_empty());
        assert!(
            facts.fqdn.starts_with(&facts.hostname),
            "{} / {}",
            facts.fqdn,
            facts.hostname
        );
        let text = OS_RELEASE
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .unwrap();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("ID="))
            .map(|v| v.trim_matches('"'))
            .unwrap();
        assert_eq!(facts.os.id, id);
        assert!(facts.cpu_count >= 1);
        assert!(facts.memory.total_mib >= 64, "{:?}", facts.memory);
        assert!(!facts.kernel.is_empty() && !facts.arch.is_empty());
        for ip in facts
            .ip_addresses
            .ipv4
            .iter()
            .chain(&facts.ip_addresses.ipv6)
        {
            assert!(reportable(ip.parse().unwrap()), "{ip}");
        }
    }
}
