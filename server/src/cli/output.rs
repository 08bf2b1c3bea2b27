//! What each command prints. Every command builds one of these structs from
//! the server's answer; `--output json` serializes it (the field names are a
//! contract), `--output table` renders [`Render::human`].
//!
//! The generated protobuf types are converted here and never serialized
//! directly, so a change in the wire format cannot silently change the JSON.
//!
//! Everything here comes from the server, and much of it from whoever pushed
//! a role: [`render`] shows every control character in the text for people
//! as a visible escape (table cells are escaped before they are laid out, so
//! columns stay aligned).

use anyhow::Context;
use cairn_proto::bundle::{MANIFEST, RoleBundle, short_digest};
use cairn_proto::diff::FileDiff;
use cairn_proto::pb;
use cairn_proto::report::count;
use cairn_proto::role::{Diagnostic, Diagnostics, Role};
use cairn_proto::terminal;
use comfy_table::{Table, TableComponent, presets};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Output of one command.
pub trait Render: Serialize {
    /// The text for people, ending in a newline; [`render`] escapes it.
    fn human(&self) -> String;
}

/// What a command prints: one JSON document, or the text for people with
/// every control character escaped (line breaks kept).
pub fn render<T: Render>(out: &T, fmt: super::Output) -> anyhow::Result<String> {
    Ok(match fmt {
        super::Output::Table => terminal::escape_lines(&out.human()),
        super::Output::Json => {
            let mut s =
                serde_json::to_string_pretty(out).context("could not encode the output as JSON")?;
            s.push('\n');
            s
        }
    })
}

/// What redacted files say in place of their content, for people.
pub const REDACTED_NOTE: &str = "redacted: sensitive; a publisher can read it";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    pub role: String,
    pub version: u64,
    pub digest: String,
    pub author: String,
    pub message: String,
    /// RFC 3339, as the server sent it.
    pub created_at: String,
}

impl From<pb::VersionInfo> for Version {
    fn from(v: pb::VersionInfo) -> Self {
        Version {
            role: v.role,
            version: v.version,
            digest: v.digest,
            author: v.author,
            message: v.message,
            created_at: v.created_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Channel {
    pub role: String,
    pub channel: String,
    pub version: u64,
    pub updated_at: String,
    pub updated_by: String,
}

impl From<pb::ChannelInfo> for Channel {
    fn from(c: pb::ChannelInfo) -> Self {
        Channel {
            role: c.role,
            channel: c.channel,
            version: c.version,
            updated_at: c.updated_at,
            updated_by: c.updated_by,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelEvent {
    pub channel: String,
    /// `promote` or `rollback`.
    pub action: String,
    /// `null` when the channel did not exist before.
    pub from_version: Option<u64>,
    pub to_version: u64,
    pub actor: String,
    pub at: String,
}

impl From<pb::ChannelEvent> for ChannelEvent {
    fn from(e: pb::ChannelEvent) -> Self {
        ChannelEvent {
            channel: e.channel,
            action: e.action,
            from_version: nonzero(e.from_version),
            to_version: e.to_version,
            actor: e.actor,
            at: e.at,
        }
    }
}

/// `cairn role push`.
#[derive(Debug, Serialize)]
pub struct PushOut {
    /// False when the content equals the latest version: nothing was stored.
    pub created: bool,
    pub version: Version,
    /// Where `--promote` moved the channel.
    pub channel: Option<Channel>,
}

impl PushOut {
    pub fn new(r: pb::PushResponse) -> anyhow::Result<Self> {
        let version = r.version.ok_or_else(|| {
            anyhow::anyhow!("the server accepted the push but did not say which version it is")
        })?;
        Ok(PushOut {
            created: r.created,
            version: version.into(),
            channel: r.channel.map(Channel::from),
        })
    }
}

impl Render for PushOut {
    fn human(&self) -> String {
        let v = &self.version;
        let mut s = if self.created {
            format!("pushed {} version {} {}\n", v.role, v.version, v.digest)
        } else {
            format!(
                "{} unchanged: version {} {} has the same content\n",
                v.role, v.version, v.digest
            )
        };
        if let Some(c) = &self.channel {
            s.push_str(&format!(
                "promoted {} version {} to {}\n",
                c.role, c.version, c.channel
            ));
        }
        s
    }
}

/// `cairn role push` of a role the server found invalid: nothing was stored.
#[derive(Debug, Serialize)]
pub struct RejectedOut {
    /// Always true: tells this document from a [`PushOut`].
    pub rejected: bool,
    /// "3 problems", or "more than 100 problems" when the list was cut.
    pub summary: String,
    /// Every diagnostic the server sent, the last saying how many more when cut.
    pub diagnostics: Vec<Diagnostic>,
}

impl RejectedOut {
    pub fn new(r: pb::PushResponse) -> Self {
        let diagnostics = Diagnostics(r.diagnostics.into_iter().map(Diagnostic::from).collect());
        let summary = if diagnostics.0.is_empty() {
            "problems the server did not list".to_string()
        } else {
            diagnostics.summary()
        };
        RejectedOut {
            rejected: true,
            summary,
            diagnostics: diagnostics.0,
        }
    }
}

impl Render for RejectedOut {
    /// Every diagnostic, then how many; the caller prints it as an error.
    fn human(&self) -> String {
        let mut s = format!(
            "the role is invalid ({}); nothing was stored:\n",
            self.summary
        );
        for d in &self.diagnostics {
            s.push_str(&format!("{d}\n"));
        }
        s
    }
}

#[derive(Debug, Serialize)]
pub struct RoleOut {
    pub name: String,
    pub latest: Option<Version>,
    pub channels: Vec<Channel>,
}

/// `cairn role list`.
#[derive(Debug, Serialize)]
pub struct ListOut {
    pub roles: Vec<RoleOut>,
}

impl ListOut {
    pub fn new(r: pb::ListRolesResponse) -> Self {
        ListOut {
            roles: r
                .roles
                .into_iter()
                .map(|r| RoleOut {
                    name: r.name,
                    latest: r.latest.map(Version::from),
                    channels: r.channels.into_iter().map(Channel::from).collect(),
                })
                .collect(),
        }
    }
}

impl Render for ListOut {
    fn human(&self) -> String {
        if self.roles.is_empty() {
            return "no roles yet; push one with `cairn role push DIR`\n".into();
        }
        let mut t = table(["ROLE", "LATEST", "DIGEST", "PUSHED", "BY", "CHANNELS"]);
        for r in &self.roles {
            let channels = r
                .channels
                .iter()
                .map(|c| format!("{}={}", c.channel, c.version))
                .collect::<Vec<_>>()
                .join(" ");
            match &r.latest {
                Some(v) => t.add_row([
                    r.name.clone(),
                    v.version.to_string(),
                    short_digest(&v.digest).to_string(),
                    short_time(&v.created_at),
                    v.author.clone(),
                    channels,
                ]),
                None => t.add_row([
                    r.name.clone(),
                    "-".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    channels,
                ]),
            };
        }
        format!("{t}\n")
    }
}

/// `cairn role versions`.
#[derive(Debug, Serialize)]
pub struct VersionsOut {
    pub role: String,
    /// Oldest first.
    pub versions: Vec<Version>,
}

impl VersionsOut {
    pub fn new(role: String, r: pb::VersionsResponse) -> Self {
        VersionsOut {
            role,
            versions: r.versions.into_iter().map(Version::from).collect(),
        }
    }
}

impl Render for VersionsOut {
    fn human(&self) -> String {
        if self.versions.is_empty() {
            return format!("role {} has no versions\n", self.role);
        }
        let mut t = table(["VERSION", "DIGEST", "PUSHED", "BY", "MESSAGE"]);
        for v in &self.versions {
            t.add_row([
                v.version.to_string(),
                short_digest(&v.digest).to_string(),
                short_time(&v.created_at),
                v.author.clone(),
                v.message.clone(),
            ]);
        }
        format!("{t}\n")
    }
}

#[derive(Debug, Serialize)]
pub struct FileOut {
    pub path: String,
    /// Of the content as received: the marker's when redacted.
    pub size: usize,
    /// The server replaced its sensitive content (the caller is below publisher).
    pub redacted: bool,
}

#[derive(Debug, Serialize)]
pub struct ResourceOut {
    /// `type:name`, e.g. `package:nginx`.
    pub id: String,
    /// Where it is declared in role.toml.
    pub line: usize,
}

/// `cairn role show`.
#[derive(Debug, Serialize)]
pub struct ShowOut {
    pub version: Version,
    pub description: Option<String>,
    pub files: Vec<FileOut>,
    /// In convergence order.
    pub resources: Vec<ResourceOut>,
    /// Why the stored role no longer validates here (resources then empty);
    /// the server validated it when it was pushed.
    pub problems: Vec<String>,
}

impl ShowOut {
    /// `redacted`: the paths whose content the server replaced.
    pub fn new(
        info: pb::VersionInfo,
        bundle: &RoleBundle,
        redacted: &[String],
        role: Result<Role, Diagnostics>,
    ) -> Self {
        let files = bundle
            .files()
            .map(|(p, d)| FileOut {
                path: p.to_string(),
                size: d.len(),
                redacted: redacted.iter().any(|r| r == p),
            })
            .collect();
        let (description, resources, problems) = match role {
            Ok(role) => (
                Some(role.description).filter(|d| !d.is_empty()),
                role.resources
                    .iter()
                    .map(|r| ResourceOut {
                        id: r.id.to_string(),
                        line: r.location.line,
                    })
                    .collect(),
                vec![],
            ),
            Err(d) => (None, vec![], d.0.iter().map(ToString::to_string).collect()),
        };
        ShowOut {
            version: info.into(),
            description,
            files,
            resources,
            problems,
        }
    }
}

impl Render for ShowOut {
    fn human(&self) -> String {
        let v = &self.version;
        let mut s = format!("role {} version {}\n", v.role, v.version);
        let mut field = |name: &str, value: &str| {
            if !value.is_empty() {
                s.push_str(&format!("  {name:<12} {value}\n"));
            }
        };
        field("description", self.description.as_deref().unwrap_or(""));
        field("digest", &v.digest);
        field("pushed", &short_time(&v.created_at));
        field("by", &v.author);
        field("message", &v.message);

        let mut files = table(["FILE", "SIZE"]);
        for f in &self.files {
            let size = if f.redacted {
                REDACTED_NOTE.to_string()
            } else {
                f.size.to_string()
            };
            files.add_row([f.path.clone(), size]);
        }
        s.push_str(&format!("\n{files}\n"));

        if self.problems.is_empty() {
            let mut res = table(["#", "RESOURCE", "LINE"]);
            for (i, r) in self.resources.iter().enumerate() {
                res.add_row([(i + 1).to_string(), r.id.clone(), r.line.to_string()]);
            }
            s.push_str(&format!(
                "\n{}, in the order they converge:\n{res}\n",
                count(self.resources.len() as u64, "resource")
            ));
        } else {
            s.push_str("\nthis version does not validate with this cairn's role format:\n");
            for p in &self.problems {
                s.push_str(p);
                s.push('\n');
            }
        }
        s
    }
}

/// `cairn role diff`.
#[derive(Debug, Serialize)]
pub struct DiffOut {
    pub role: String,
    pub from: u64,
    pub to: u64,
    /// Only the files that differ, in path order; a redacted file is left
    /// out (it is listed in `redacted`), but role.toml is kept, the inline
    /// content of its sensitive files replaced.
    pub files: Vec<FileDiff>,
    /// Paths whose content the server replaced in either version because it
    /// is sensitive (the caller is below publisher): not compared.
    pub redacted: Vec<String>,
}

impl DiffOut {
    /// `redacted`: the paths the server redacted in either version.
    pub fn new(
        role: String,
        (from, to): (u64, u64),
        files: Vec<FileDiff>,
        redacted: Vec<String>,
    ) -> Self {
        let files = files
            .into_iter()
            .filter(|f| f.path == MANIFEST || !redacted.contains(&f.path))
            .collect();
        DiffOut {
            role,
            from,
            to,
            files,
            redacted,
        }
    }
}

impl Render for DiffOut {
    fn human(&self) -> String {
        let mut s: String = self.files.iter().map(FileDiff::text).collect();
        if self.files.is_empty() {
            s = format!(
                "versions {} and {} of role {} have the same content\n",
                self.from, self.to, self.role
            );
        }
        if !self.redacted.is_empty() {
            s.push_str(&format!(
                "not compared ({REDACTED_NOTE}): {}\n",
                self.redacted.join(", ")
            ));
        }
        s
    }
}

/// `cairn role promote` and `cairn role rollback`.
#[derive(Debug, Serialize)]
pub struct ChannelMoveOut {
    /// `promote` or `rollback`.
    pub action: &'static str,
    pub channel: Channel,
    /// Where the channel pointed before; `null` when it is new.
    pub previous_version: Option<u64>,
}

impl ChannelMoveOut {
    pub fn new(action: &'static str, r: pb::ChannelResponse) -> anyhow::Result<Self> {
        let channel = r.channel.ok_or_else(|| {
            anyhow::anyhow!("the server did the {action} but did not say where the channel points")
        })?;
        Ok(ChannelMoveOut {
            action,
            channel: channel.into(),
            previous_version: nonzero(r.previous_version),
        })
    }
}

impl Render for ChannelMoveOut {
    fn human(&self) -> String {
        let c = &self.channel;
        let was = self
            .previous_version
            .map_or_else(|| "new channel".to_string(), |v| format!("was version {v}"));
        if self.action == "rollback" {
            format!(
                "rolled back {} {} to version {} ({was})\n",
                c.role, c.channel, c.version
            )
        } else {
            format!(
                "promoted {} version {} to {} ({was})\n",
                c.role, c.version, c.channel
            )
        }
    }
}

/// `cairn role channels`.
#[derive(Debug, Serialize)]
pub struct ChannelsOut {
    pub role: String,
    pub channels: Vec<Channel>,
    /// Newest first.
    pub history: Vec<ChannelEvent>,
}

impl ChannelsOut {
    pub fn new(role: String, r: pb::ChannelsResponse) -> Self {
        ChannelsOut {
            role,
            channels: r.channels.into_iter().map(Channel::from).collect(),
            history: r.history.into_iter().map(ChannelEvent::from).collect(),
        }
    }
}

impl Render for ChannelsOut {
    fn human(&self) -> String {
        if self.channels.is_empty() {
            return format!(
                "role {} has no channels; create one with `cairn role promote {} VERSION`\n",
                self.role, self.role
            );
        }
        let mut t = table(["CHANNEL", "VERSION", "SINCE", "BY"]);
        for c in &self.channels {
            t.add_row([
                c.channel.clone(),
                c.version.to_string(),
                short_time(&c.updated_at),
                c.updated_by.clone(),
            ]);
        }
        let mut h = table(["AT", "CHANNEL", "ACTION", "FROM", "TO", "BY"]);
        for e in &self.history {
            h.add_row([
                short_time(&e.at),
                e.channel.clone(),
                e.action.clone(),
                e.from_version.map_or_else(|| "-".into(), |v| v.to_string()),
                e.to_version.to_string(),
                e.actor.clone(),
            ]);
        }
        format!("{t}\n\nhistory, newest first:\n{h}\n")
    }
}

#[derive(Debug, Serialize)]
pub struct AuditEntry {
    pub id: u64,
    pub at: String,
    pub actor: String,
    pub actor_role: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub peer: String,
    /// `ok`, `denied` or `failed: …`.
    pub outcome: String,
    /// Chains the entry to the one before (`cairn audit verify` checks it).
    pub hash: String,
}

/// `cairn audit`.
#[derive(Debug, Serialize)]
pub struct AuditOut {
    /// Oldest first.
    pub entries: Vec<AuditEntry>,
}

impl AuditOut {
    /// `entries` oldest first.
    pub fn new(entries: Vec<pb::AuditEntry>) -> Self {
        AuditOut {
            entries: entries
                .into_iter()
                .map(|e| AuditEntry {
                    id: e.id,
                    at: e.at,
                    actor: e.actor,
                    actor_role: e.actor_role,
                    action: e.action,
                    target: e.target,
                    detail: e.detail,
                    peer: e.peer,
                    outcome: e.outcome,
                    hash: e.hash,
                })
                .collect(),
        }
    }
}

impl Render for AuditOut {
    fn human(&self) -> String {
        if self.entries.is_empty() {
            return "no audit entries in that period\n".into();
        }
        let mut t = table([
            "ID", "AT", "ACTOR", "ROLE", "ACTION", "TARGET", "DETAIL", "OUTCOME", "PEER",
        ]);
        for e in &self.entries {
            t.add_row([
                e.id.to_string(),
                short_time(&e.at),
                e.actor.clone(),
                e.actor_role.clone(),
                e.action.clone(),
                e.target.clone(),
                e.detail.clone(),
                e.outcome.clone(),
                e.peer.clone(),
            ]);
        }
        format!("{t}\n")
    }
}

/// A table whose cells are escaped as they are added: an escape sequence
/// from the server cannot reach the terminal, and the escaped text is what
/// the columns are measured on.
pub(crate) struct Escaped(Table);

impl Escaped {
    pub(crate) fn add_row<const N: usize>(&mut self, cells: [String; N]) {
        self.0
            .add_row(cells.map(|c| terminal::escape(&c).into_owned()));
    }
}

impl std::fmt::Display for Escaped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

pub(crate) fn table<const N: usize>(header: [&str; N]) -> Escaped {
    let mut t = Table::new();
    // Lines around the table and under the header; none between rows.
    t.load_preset(presets::UTF8_HORIZONTAL_ONLY)
        .remove_style(TableComponent::HorizontalLines)
        .remove_style(TableComponent::MiddleIntersections)
        .remove_style(TableComponent::LeftBorderIntersections)
        .remove_style(TableComponent::RightBorderIntersections)
        .set_header(header);
    Escaped(t)
}

fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

/// An RFC 3339 time in UTC to the second, `2025-03-01 10:30:00Z`; anything
/// unparsable as it came.
pub(crate) fn short_time(s: &str) -> String {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .and_then(|t| t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .map_or_else(|| s.to_string(), |t| t.replacen('T', " ", 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Output;
    use cairn_proto::facts::Facts;

    fn info(version: u64) -> pb::VersionInfo {
        pb::VersionInfo {
            role: "web".into(),
            version,
            digest: format!("sha256:{}", "ab".repeat(32)),
            author: "ada".into(),
            message: "first".into(),
            created_at: "2025-03-01T10:30:00.123456Z".into(),
        }
    }

    fn json<T: Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn push_lines() {
        let resp = |created, channel| pb::PushResponse {
            version: Some(info(3)),
            created,
            channel,
            ..Default::default()
        };
        let out = PushOut::new(resp(true, None)).unwrap();
        assert_eq!(
            out.human(),
            format!("pushed web version 3 sha256:{}\n", "ab".repeat(32))
        );
        let out = PushOut::new(resp(
            false,
            Some(pb::ChannelInfo {
                role: "web".into(),
                channel: "staging".into(),
                version: 3,
                updated_at: "2025-03-01T10:31:00Z".into(),
                updated_by: "ada".into(),
            }),
        ))
        .unwrap();
        assert_eq!(
            out.human(),
            format!(
                "web unchanged: version 3 sha256:{} has the same content\npromoted web version 3 to staging\n",
                "ab".repeat(32)
            )
        );
        let j = json(&out);
        assert_eq!(j["created"], false);
        assert_eq!(j["version"]["version"], 3);
        assert_eq!(j["version"]["created_at"], "2025-03-01T10:30:00.123456Z");
        assert_eq!(j["channel"]["channel"], "staging");
        let err = PushOut::new(pb::PushResponse::default()).unwrap_err();
        assert!(
            err.to_string().contains("did not say which version"),
            "{err}"
        );
    }

    #[test]
    fn channel_moves() {
        let resp = |version, previous| pb::ChannelResponse {
            channel: Some(pb::ChannelInfo {
                role: "web".into(),
                channel: "production".into(),
                version,
                updated_at: String::new(),
                updated_by: "ada".into(),
            }),
            previous_version: previous,
        };
        let p = ChannelMoveOut::new("promote", resp(2, 0)).unwrap();
        assert_eq!(
            p.human(),
            "promoted web version 2 to production (new channel)\n"
        );
        assert_eq!(json(&p)["previous_version"], serde_json::Value::Null);
        let p = ChannelMoveOut::new("promote", resp(3, 2)).unwrap();
        assert_eq!(
            p.human(),
            "promoted web version 3 to production (was version 2)\n"
        );
        let r = ChannelMoveOut::new("rollback", resp(2, 3)).unwrap();
        assert_eq!(
            r.human(),
            "rolled back web production to version 2 (was version 3)\n"
        );
        assert_eq!(json(&r)["channel"]["version"], 2);
        assert_eq!(json(&r)["previous_version"], 3);
    }

    #[test]
    fn show_lists_files_and_resources_in_order() {
        let bundle = cairn_proto::role::bundle_from_files([
            (
                "role.toml",
                "[role]\nname = \"web\"\ndescription = \"status page\"\n\n[[package]]\nname = \"nginx\"\n\n\
                 [[directory]]\npath = \"/srv/www\"\n",
            ),
            ("files/extra", "12345"),
        ]);
        let role = cairn_proto::role::load(&bundle, &Facts::placeholder());
        let out = ShowOut::new(info(1), &bundle, &[], role);
        let j = json(&out);
        assert_eq!(j["description"], "status page");
        assert_eq!(
            j["files"][0],
            serde_json::json!({"path": "files/extra", "size": 5, "redacted": false})
        );
        let ids: Vec<_> = out.resources.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["package:nginx", "directory:/srv/www"]);
        assert_eq!(out.resources[0].line, 5);
        let text = out.human();
        assert!(text.starts_with("role web version 1\n"), "{text}");
        assert!(
            text.contains("2 resources, in the order they converge:"),
            "{text}"
        );
        assert!(text.contains("2025-03-01 10:30:00Z"), "{text}");

        // A stored version this CLI cannot parse still shows, with the reasons.
        let bad = cairn_proto::role::bundle_from_files([("role.toml", "[role]\n")]);
        let out = ShowOut::new(
            info(2),
            &bad,
            &[],
            cairn_proto::role::load(&bad, &Facts::placeholder()),
        );
        assert!(out.resources.is_empty());
        assert!(!out.problems.is_empty());
        assert!(out.human().contains("does not validate"));
    }

    #[test]
    fn tables_show_every_row() {
        let out = VersionsOut::new(
            "web".into(),
            pb::VersionsResponse {
                versions: vec![info(1), info(2)],
            },
        );
        let text = out.human();
        assert!(
            text.contains("VERSION") && text.contains(&format!("sha256:{}", "ab".repeat(6))),
            "{text}"
        );
        assert!(
            !text.contains(&"ab".repeat(7)),
            "digest not shortened: {text}"
        );
        assert_eq!(json(&out)["versions"].as_array().unwrap().len(), 2);
        assert_eq!(
            json(&out)["versions"][1]["digest"],
            format!("sha256:{}", "ab".repeat(32))
        );

        let out = ChannelsOut::new(
            "web".into(),
            pb::ChannelsResponse {
                channels: vec![],
                history: vec![],
            },
        );
        assert!(out.human().contains("cairn role promote web VERSION"));
        let out = ChannelsOut::new(
            "web".into(),
            pb::ChannelsResponse {
                channels: vec![pb::ChannelInfo {
                    role: "web".into(),
                    channel: "production".into(),
                    version: 1,
                    updated_at: "2025-03-01T10:30:00Z".into(),
                    updated_by: "ada".into(),
                }],
                history: vec![pb::ChannelEvent {
                    channel: "production".into(),
                    action: "promote".into(),
                    from_version: 0,
                    to_version: 1,
                    actor: "ada".into(),
                    at: "2025-03-01T10:30:00Z".into(),
                }],
            },
        );
        let j = json(&out);
        assert_eq!(j["history"][0]["from_version"], serde_json::Value::Null);
        assert_eq!(j["channels"][0]["updated_by"], "ada");
    }

    #[test]
    fn diffs_show_a_pushers_escape_sequences_instead_of_running_them() {
        let bundle =
            |content: &str| cairn_proto::role::bundle_from_files([("files/motd", content)]);
        let files = cairn_proto::diff::bundles(&bundle("hi\n"), &bundle("\u{1b}]0;owned\u{7}\n"));
        let out = DiffOut::new("web".into(), (1, 2), files, vec![]);
        assert_eq!(
            render(&out, Output::Table).unwrap(),
            "--- a/files/motd\n+++ b/files/motd\n@@ -1 +1 @@\n-hi\n+\\u{1b}]0;owned\\u{7}\n"
        );
        // JSON carries the content as it is; serde escapes it.
        assert_eq!(
            json(&out)["files"][0]["diff"],
            "--- a/files/motd\n+++ b/files/motd\n@@ -1 +1 @@\n-hi\n+\u{1b}]0;owned\u{7}\n"
        );
        let same = DiffOut::new("web".into(), (1, 2), vec![], vec![]);
        assert_eq!(
            same.human(),
            "versions 1 and 2 of role web have the same content\n"
        );
    }

    #[test]
    fn redacted_files_are_named_not_compared() {
        let v1 = cairn_proto::role::bundle_from_files([
            ("role.toml", "a = 1\n"),
            ("files/key", "(marker)\n"),
            ("files/motd", "hi\n"),
        ]);
        let v2 = cairn_proto::role::bundle_from_files([
            ("role.toml", "a = 2\n"),
            ("files/key", "(other)\n"),
            ("files/motd", "hi\n"),
        ]);
        let files = cairn_proto::diff::bundles(&v1, &v2);
        let redacted = vec!["files/key".to_string(), "role.toml".to_string()];
        let out = DiffOut::new("db".into(), (1, 2), files, redacted);
        let paths: Vec<&str> = out.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["role.toml"]);
        let text = out.human();
        assert!(
            text.ends_with(&format!(
                "not compared ({REDACTED_NOTE}): files/key, role.toml\n"
            )),
            "{text}"
        );
        assert_eq!(json(&out)["redacted"][0], "files/key");
    }

    #[test]
    fn table_cells_and_lines_from_the_server_are_escaped() {
        let mut evil = info(1);
        evil.author = "ada\u{1b}[2J".into();
        evil.message = "fix\u{1b}]0;owned\u{7}\nsecond line".into();
        let out = VersionsOut::new(
            "web".into(),
            pb::VersionsResponse {
                versions: vec![evil.clone()],
            },
        );
        let text = render(&out, Output::Table).unwrap();
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text}"
        );
        assert!(
            text.contains("fix\\u{1b}]0;owned\\u{7}\\nsecond line"),
            "{text}"
        );
        evil.role = "web\u{1b}[31m".into();
        let out = PushOut::new(pb::PushResponse {
            version: Some(evil),
            created: true,
            ..Default::default()
        })
        .unwrap();
        let text = render(&out, Output::Table).unwrap();
        assert!(
            text.starts_with("pushed web\\u{1b}[31m version 1"),
            "{text}"
        );
    }

    #[test]
    fn a_rejected_push_lists_every_diagnostic() {
        let d = |line: u32, message: &str, help: &str| pb::Diagnostic {
            file: "role.toml".into(),
            line,
            column: 1,
            message: message.into(),
            help: help.into(),
            ..Default::default()
        };
        let out = RejectedOut::new(pb::PushResponse {
            rejected: true,
            diagnostics: vec![
                d(3, "bad", ""),
                d(4, "worse", "fix it"),
                d(
                    0,
                    "and 7 more problems not shown",
                    "only the first 100 are listed",
                ),
            ],
            ..Default::default()
        });
        assert_eq!(
            out.human(),
            "the role is invalid (more than 2 problems); nothing was stored:\n\
             role.toml:3:1: bad\n\
             role.toml:4:1: worse\n  help: fix it\n\
             role.toml: and 7 more problems not shown\n  help: only the first 100 are listed\n"
        );
        let j = json(&out);
        assert_eq!(j["rejected"], true);
        assert_eq!(j["diagnostics"][1]["help"], "fix it");
        assert_eq!(j["diagnostics"][0]["context"], serde_json::Value::Null);
    }

    #[test]
    fn times_for_people() {
        assert_eq!(
            short_time("2025-03-01T10:30:00.5+01:00"),
            "2025-03-01 09:30:00Z"
        );
        assert_eq!(short_time("garbage"), "garbage");
    }
}
