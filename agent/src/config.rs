//! The agent's configuration file, `/etc/cairn/agent.toml`:
//!
//! ```toml
//! servers = ["https://cairn1.example.org:7443", "https://cairn2.example.org:7443"]
//! ca_pin = "sha256:…"          # `cairn-server ca pin` prints it
//! state_dir = "/var/lib/cairn" # the default
//! interval = "30m"             # between drift-correcting runs (the default)
//! splay = "5m"                 # at most this much random delay more (the default)
//! name = "web-1"               # the node's name; by default machine id + hostname
//! ```
//!
//! Every key is optional in the file (a command's flags may give it), unknown
//! keys are refused, and every error names the file, the line and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_proto::client::{CaPin, check_url};
use serde::Deserialize;
use toml::Spanned;

use crate::state;

pub const DEFAULT_PATH: &str = "/etc/cairn/agent.toml";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_SPLAY: Duration = Duration::from_secs(5 * 60);
/// The shortest and longest interval accepted.
const INTERVAL_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600));
/// The most servers one file may list.
pub const MAX_SERVERS: usize = 16;
/// A larger file is refused before it is parsed.
const MAX_FILE_BYTES: u64 = 64 << 10;

/// The configuration, checked; defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// In order of preference; empty when the file lists none.
    pub servers: Vec<String>,
    pub ca_pin: Option<CaPin>,
    pub state_dir: PathBuf,
    pub interval: Duration,
    pub splay: Duration,
    pub name: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            servers: Vec::new(),
            ca_pin: None,
            state_dir: PathBuf::from(state::DEFAULT_DIR),
            interval: DEFAULT_INTERVAL,
            splay: DEFAULT_SPLAY,
            name: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    servers: Option<Spanned<Vec<Spanned<String>>>>,
    ca_pin: Option<Spanned<String>>,
    state_dir: Option<Spanned<PathBuf>>,
    interval: Option<Spanned<String>>,
    splay: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
}

impl Config {
    /// Reads the file at `path`; when it does not exist, the defaults if
    /// `required` is false (the default path), an error otherwise (a path
    /// the user gave).
    pub fn load(path: &Path, required: bool) -> Result<Config> {
        let text = match read_bounded(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default());
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("could not read agent configuration {}", path.display())
                });
            }
        };
        Config::parse(&text, path)
    }

    /// Parses the text of the file at `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let raw: Raw = toml::from_str(text)
            .with_context(|| format!("invalid agent configuration {}", path.display()))?;
        let at = |span: std::ops::Range<usize>, key: &str| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("{}:{line}: `{key}`", path.display())
        };
        let mut config = Config::default();
        if let Some(servers) = raw.servers {
            if servers.get_ref().is_empty() || servers.get_ref().len() > MAX_SERVERS {
                bail!(
                    "{}: list one to {MAX_SERVERS} servers (https://HOST:PORT)",
                    at(servers.span(), "servers")
                );
            }
            for url in servers.into_inner() {
                check_url(url.get_ref()).with_context(|| at(url.span(), "servers"))?;
                config.servers.push(url.into_inner());
            }
        }
        if let Some(pin) = raw.ca_pin {
            config.ca_pin = Some(
                pin.get_ref()
                    .parse()
                    .map_err(anyhow::Error::msg)
                    .with_context(|| at(pin.span(), "ca_pin"))?,
            );
        }
        if let Some(dir) = raw.state_dir {
            if !dir.get_ref().is_absolute() {
                bail!(
                    "{}: the state directory must be an absolute path",
                    at(dir.span(), "state_dir")
                );
            }
            config.state_dir = dir.into_inner();
        }
        if let Some(interval) = raw.interval {
            let d =
                duration(interval.get_ref()).with_context(|| at(interval.span(), "interval"))?;
            let (min, max) = INTERVAL_BOUNDS;
            if d < min || d > max {
                bail!(
                    "{}: the interval must be between {} and {}",
                    at(interval.span(), "interval"),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                );
            }
            config.interval = d;
        }
        if let Some(splay) = raw.splay {
            let d = duration(splay.get_ref()).with_context(|| at(splay.span(), "splay"))?;
            if d > config.interval {
                bail!(
                    "{}: the splay ({}) must not be longer than the interval ({})",
                    at(splay.span(), "splay"),
                    humantime::format_duration(d),
                    humantime::format_duration(config.interval)
                );
            }
            config.splay = d;
        } else {
            config.splay = config.splay.min(config.interval);
        }
        if let Some(name) = raw.name {
            cairn_proto::node::check_name(name.get_ref())
                .with_context(|| at(name.span(), "name"))?;
            config.name = Some(name.into_inner());
        }
        Ok(config)
    }
}

/// A duration as people write it: `30m`, `1h 30m`, `90s`.
pub fn duration(text: &str) -> Result<Duration> {
    humantime::parse_duration(text)
        .with_context(|| format!("invalid duration {text:?} (write it like 30m, 1h or 90s)"))
}

/// The file's text, refused past [`MAX_FILE_BYTES`].
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "it is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/cairn/agent.toml"))
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn a_full_file_and_the_defaults() {
        let config = parse(&format!(
            "servers = [\"https://a.example.org:7443\", \"https://b.example.org:7443\"]\n\
             ca_pin = \"{PIN}\"\nstate_dir = \"/srv/cairn\"\ninterval = \"1h\"\nsplay = \"90s\"\nname = \"web-1\"\n"
        ))
        .unwrap();
        assert_eq!(config.servers.len(), 2);
        assert_eq!(config.ca_pin.unwrap().to_string(), PIN);
        assert_eq!(config.state_dir, Path::new("/srv/cairn"));
        assert_eq!(
            (config.interval, config.splay),
            (Duration::from_secs(3600), Duration::from_secs(90))
        );
        assert_eq!(config.name.as_deref(), Some("web-1"));
        assert_eq!(parse("").unwrap(), Config::default());
        // A short interval takes the splay down with it.
        let short = parse("interval = \"10s\"").unwrap();
        assert_eq!(short.splay, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        for (text, expect) in [
            ("servers = [\"https://a:1\"]\nservres = []\n", "line 2"),
            ("\n\nservers = [\"http://a:1\"]", "agent.toml:3: `servers`"),
            ("servers = []", "agent.toml:1: `servers`: list one to"),
            (
                "\nca_pin = \"sha256:abc\"",
                "agent.toml:2: `ca_pin`: invalid CA pin",
            ),
            (
                "interval = \"soon\"",
                "agent.toml:1: `interval`: invalid duration",
            ),
            ("interval = \"0s\"", "must be between 1s and 7days"),
            ("interval = \"1m\"\nsplay = \"2m\"", "agent.toml:2: `splay`"),
            (
                "name = \"Web_1\"",
                "agent.toml:1: `name`: invalid node name",
            ),
            ("state_dir = \"var/lib\"", "absolute"),
        ] {
            let err = error(text);
            assert!(err.contains(expect), "{text:?}: {err}");
            assert!(err.contains("agent.toml"), "{text:?}: {err}");
        }
        assert!(error("servres = []").contains("servres"));
    }

    #[test]
    fn a_missing_file_is_the_defaults_only_when_not_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("agent.toml");
        assert_eq!(Config::load(&missing, false).unwrap(), Config::default());
        let err = format!("{:#}", Config::load(&missing, true).unwrap_err());
        assert!(err.contains("could not read agent configuration"), "{err}");
        std::fs::write(&missing, "x".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        let err = format!("{:#}", Config::load(&missing, false).unwrap_err());
        assert!(err.contains("larger than"), "{err}");
    }
}
