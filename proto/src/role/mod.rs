//! The role format: `role.toml` plus `templates/` and `files/`.
//!
//! [`load`] turns a [`RoleBundle`] into a [`Role`] whose every resource is fully
//! resolved (templates rendered, sources read, paths checked, dependencies
//! ordered), or into every [`Diagnostic`] found, each naming the file, line and
//! field. Nothing here touches the host: the agent calls it before it changes
//! anything, the server before it stores a version.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::bundle::{MANIFEST, RoleBundle};
use crate::facts::Facts;
use crate::template::Templates;

// ---------------------------------------------------------------------------
// The resolved role
// ---------------------------------------------------------------------------

/// Resource types, in the order a run converges them (before `requires` edges).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Group,
    User,
    Package,
    Directory,
    File,
    Exec,
    Service,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Group,
        Kind::User,
        Kind::Package,
        Kind::Directory,
        Kind::File,
        Kind::Exec,
        Kind::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Group => "group",
            Kind::User => "user",
            Kind::Package => "package",
            Kind::Directory => "directory",
            Kind::File => "file",
            Kind::Exec => "exec",
            Kind::Service => "service",
        }
    }

    /// Whether a resource of this kind can be the target of `notify`.
    pub fn refreshable(self) -> bool {
        matches!(self, Kind::Exec | Kind::Service)
    }
}

impl FromStr for Kind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or(())
    }
}

/// `TYPE:NAME`, e.g. `service:nginx` or `file:/etc/motd`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId {
    pub kind: Kind,
    pub name: String,
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.name)
    }
}

impl FromStr for ResourceId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            format!("{s:?} is not a resource id (expected TYPE:NAME, like service:nginx)")
        })?;
        let kind = kind.parse::<Kind>().map_err(|()| {
            let kinds: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            format!(
                "{s:?} has unknown resource type {kind:?} (one of {})",
                kinds.join(", ")
            )
        })?;
        if name.is_empty() {
            return Err(format!("{s:?} has an empty name"));
        }
        Ok(ResourceId {
            kind,
            name: name.to_string(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Present,
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageState {
    Installed,
    Absent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: Option<u32>,
    pub system: bool,
    pub state: Presence,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: Option<u32>,
    /// Supplementary groups the user must belong to (others are left alone).
    pub groups: Vec<String>,
    pub shell: Option<String>,
    pub home: Option<String>,
    pub comment: Option<String>,
    pub system: bool,
    pub state: Presence,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: Option<String>,
    pub state: PackageState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    pub path: String,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<u32>,
    pub state: Presence,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: String,
    /// The exact bytes the file must hold (templates already rendered), or
    /// `None` when the file must be absent.
    pub content: Option<Vec<u8>>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<u32>,
    /// The content is secret: reports show that it changed, never what it is.
    pub sensitive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub name: String,
    pub command: String,
    pub creates: Option<String>,
    pub unless: Option<String>,
    pub onlyif: Option<String>,
    pub cwd: Option<String>,
    pub refresh_only: bool,
}

impl Exec {
    pub fn has_guard(&self) -> bool {
        self.creates.is_some() || self.unless.is_some() || self.onlyif.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub running: Option<bool>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    Group(Group),
    User(User),
    Package(Package),
    Directory(Directory),
    File(File),
    Exec(Exec),
    Service(Service),
}

/// Where a resource was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub id: ResourceId,
    pub spec: Spec,
    /// Declared `requires` plus implicit ones (managed parent directory, owner
    /// user, group): what must converge first, and whose failure skips this one.
    pub requires: Vec<ResourceId>,
    pub notify: Vec<ResourceId>,
    pub location: Location,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub vars: serde_json::Value,
    pub digest: String,
    /// In convergence order: by type, then declaration order, reordered by
    /// `requires` and `notify` edges.
    pub resources: Vec<Resource>,
}

impl Role {
    pub fn get(&self, id: &ResourceId) -> Option<&Resource> {
        self.resources.iter().find(|r| &r.id == id)
    }
}

// ---------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------

/// One problem in a role, located to a file, line and (where known) field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Path inside the role: `role.toml`, `templates/site.conf.hbs`, …
    pub file: String,
    /// 1-based; 0 when the problem is the file as a whole (e.g. it is missing).
    pub line: usize,
    pub column: usize,
    /// What the problem is in: `[[file]] "/etc/motd"`, `[role]`, …
    pub context: Option<String>,
    pub field: Option<String>,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": ")?;
        match (&self.context, &self.field) {
            (Some(c), Some(field)) => write!(f, "{c}, field `{field}`: ")?,
            (Some(c), None) => write!(f, "{c}: ")?,
            (None, Some(field)) => write!(f, "field `{field}`: ")?,
            (None, None) => {}
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in a role; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

// ---------------------------------------------------------------------------
// Raw, as written in role.toml
// ---------------------------------------------------------------------------

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: S<String>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: S<String>,
    gid: Option<u32>,
    #[serde(default)]
    system: bool,
    state: Option<Presence>,
    #[serde(default)]
    requires: Vec<S<String>>,
    #[serde(default)]
    notify: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: S<String>,
    uid: Option<u32>,
    #[serde(default)]
    groups: Vec<S<String>>,
    shell: Option<S<String>>,
    home: Option<S<String>>,
    comment: Option<String>,
    #[serde(default)]
    system: bool,
    state: Option<Presence>,
    #[serde(default)]
    requires: Vec<S<String>>,
    #[serde(default)]
    notify: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    name: S<String>,
    version: Option<S<String>>,
    state: Option<PackageState>,
    #[serde(default)]
    requires: Vec<S<String>>,
    #[serde(default)]
    notify: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    path: S<String>,
    owner: Option<S<String>>,
    group: Option<S<String>>,
    mode: Option<S<String>>,
    state: Option<Presence>,
    #[serde(default)]
    requires: Vec<S<String>>,
    #[serde(default)]
    notify: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: S<String>,
    content: Option<S<String>>,
    template: Option<S<String>>,
    source: Option<S<String>>,
    state: Option<S<Presence>>,
    owner: Option<S<String>>,
    group: Option<S<String>>,
    mode: Option<S<String>>,
    #[serde(default)]
    sensitive: bool,
    #[serde(default)]
    requires: Vec<S<String>>,
    #[serde(default)]
    notify: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    name: S<String>,
    command: S<String>,
    creates: Option<S<String>>,
    unless: Option<String>,
    onlyif: Option<String>,
    cwd: Option<S<String>>,
    #[serde(default)]
    refresh_only: bool,
    #[serde(default)]
    requires: Vec<S<String>>,
    #[serde(default)]
    notify: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: S<String>,
    running: Option<bool>,
    enabled: Option<bool>,
    #[serde(default)]
    requires: Vec<S<String>>,
    #[serde(default)]
    notify: Vec<S<String>>,
}

const TOP_LEVEL_KEYS: [&str; 9] = [
    "role",
    "vars",
    "group",
    "user",
    "package",
    "directory",
    "file",
    "exec",
    "service",
];

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Parses and validates a role, rendering its templates with `facts`.
///
/// Validation without a node (the server, `cairn-agent validate`) passes
/// [`Facts::placeholder`]: every fact exists, so strict mode still catches a
/// misspelled name.
pub fn load(bundle: &RoleBundle, facts: &Facts) -> Result<Role, Diagnostics> {
    let Some(raw) = bundle.get(MANIFEST) else {
        return Err(Diagnostics(vec![Diagnostic {
            file: MANIFEST.into(),
            line: 0,
            column: 0,
            context: None,
            field: None,
            message: "role.toml is missing".into(),
            help: Some("a role is a directory with role.toml at its top".into()),
        }]));
    };
    let src = match std::str::from_utf8(raw) {
        Ok(s) => s,
        Err(e) => {
            let mut p = Parser::new("");
            let (line, column) = line_col_bytes(raw, e.valid_up_to());
            p.diags.push(Diagnostic {
                file: MANIFEST.into(),
                line,
                column,
                context: None,
                field: None,
                message: "role.toml is not valid UTF-8".into(),
                help: None,
            });
            return Err(Diagnostics(p.diags));
        }
    };
    let mut p = Parser::new(src);
    let decls = p.parse_manifest();
    let Some((meta, vars, decls)) = decls else {
        p.diags.sort_by_key(|d| (d.line, d.column));
        return Err(Diagnostics(p.diags));
    };
    let resources = p.resolve(bundle, facts, &meta, &vars, decls);
    if !p.diags.is_empty() {
        // Reading order, whatever order the checks ran in.
        p.diags
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        return Err(Diagnostics(p.diags));
    }
    Ok(Role {
        name: meta.name,
        description: meta.description,
        vars,
        digest: bundle.digest(),
        resources,
    })
}

struct Meta {
    name: String,
    description: String,
}

/// A resource after field checks, before cross-resource checks.
struct Decl {
    id: ResourceId,
    spec: Spec,
    requires: Vec<S<String>>,
    notify: Vec<S<String>>,
    context: String,
    span: Range<usize>,
    /// Template or source to resolve, with the span of the field naming it.
    pending_content: Option<(ContentFrom, S<String>)>,
}

#[derive(Clone, Copy)]
enum ContentFrom {
    Template,
    Source,
}

struct Parser<'a> {
    src: &'a str,
    line_starts: Vec<usize>,
    diags: Vec<Diagnostic>,
    /// Fields of the table just deserialized that were reported and left out;
    /// checks of that table must not complain that they are missing.
    dropped: Vec<String>,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Parser {
            src,
            line_starts,
            diags: Vec::new(),
            dropped: Vec::new(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self.src[start..offset.min(self.src.len())].chars().count() + 1;
        (line, col)
    }

    fn error(
        &mut self,
        span: Range<usize>,
        context: Option<&str>,
        field: Option<&str>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let (line, column) = self.line_col(span.start);
        self.diags.push(Diagnostic {
            file: MANIFEST.into(),
            line,
            column,
            context: context.map(str::to_string),
            field: field.map(str::to_string),
            message: message.into(),
            help,
        });
    }

    fn parse_manifest(&mut self) -> Option<(Meta, serde_json::Value, Vec<Decl>)> {
        let doc = match DeTable::parse(self.src) {
            Ok(doc) => doc,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                self.error(
                    span,
                    None,
                    None,
                    format!("invalid TOML: {}", e.message()),
                    None,
                );
                return None;
            }
        };
        let doc_span = doc.span();
        let doc = doc.into_inner();

        let mut meta = None;
        let mut vars = serde_json::Value::Object(Default::default());
        let mut decls = Vec::new();
        for (key, value) in doc {
            let key_span = key.span();
            let key = key.into_inner();
            match key.as_ref() {
                "role" => {
                    if let Some(m) = self.deserialize::<RawMeta>(value, "[role]") {
                        meta = Some(self.check_meta(m));
                    }
                }
                "vars" => {
                    let span = value.span();
                    if !matches!(value.get_ref(), DeValue::Table(_)) {
                        self.error(span, Some("[vars]"), None, "must be a table", None);
                        continue;
                    }
                    match serde_json::Value::deserialize(ValueDeserializer::from(value)) {
                        Ok(v) => vars = v,
                        Err(e) => self.error(
                            e.span().unwrap_or(span),
                            Some("[vars]"),
                            None,
                            e.message().to_string(),
                            None,
                        ),
                    }
                }
                k => match k.parse::<Kind>() {
                    Ok(kind) => self.parse_section(kind, value, &mut decls),
                    Err(()) => {
                        let help = suggest(k, TOP_LEVEL_KEYS)
                            .map(|s| format!("did you mean `{s}`?"))
                            .or_else(|| {
                                Some(format!("known sections: {}", TOP_LEVEL_KEYS.join(", ")))
                            });
                        self.error(
                            key_span,
                            None,
                            Some(k),
                            format!("unknown section `{k}`"),
                            help,
                        );
                    }
                },
            }
        }
        let Some(meta) = meta else {
            if !self
                .diags
                .iter()
                .any(|d| d.context.as_deref() == Some("[role]"))
            {
                self.error(
                    doc_span.start..doc_span.start,
                    None,
                    None,
                    "the [role] table is missing",
                    Some("start role.toml with [role] and name = \"…\"".into()),
                );
            }
            return None;
        };
        Some((meta, vars, decls))
    }

    /// Deserializes one table, turning serde's error into a located diagnostic.
    fn deserialize<T: DeserializeOwned>(
        &mut self,
        value: Spanned<DeValue<'_>>,
        context: &str,
    ) -> Option<T> {
        let span = value.span();
        let DeValue::Table(mut table) = value.into_inner() else {
            self.error(span, Some(context), None, "must be a table", None);
            return None;
        };
        // serde stops at the first problem; to report every one, the field at
        // fault is reported, dropped, and the table tried again.
        let mut dropped: Vec<String> = Vec::new();
        loop {
            let attempt = Spanned::new(span.clone(), DeValue::Table(table.clone()));
            let e = match T::deserialize(ValueDeserializer::from(attempt)) {
                Ok(v) => {
                    self.dropped = dropped;
                    return Some(v);
                }
                Err(e) => e,
            };
            let err_span = e.span().unwrap_or(span.clone());
            let message = e.message().to_string();
            let (named, help) = explain_serde(&message);
            // Name the field whose key or value holds the error.
            let field = named.or_else(|| {
                table
                    .iter()
                    .find(|(k, v)| {
                        k.span().start <= err_span.start
                            && err_span.end <= v.span().end
                            && err_span != span
                    })
                    .map(|(k, _)| k.get_ref().to_string())
            });
            // A field dropped here is now missing; that was reported already.
            let already = message.starts_with("missing field")
                && field.as_ref().is_some_and(|f| dropped.contains(f));
            if !already {
                self.error(err_span, Some(context), field.as_deref(), message, help);
            }
            match field.filter(|f| table.keys().any(|k| k.get_ref().as_ref() == f.as_str())) {
                Some(f) => {
                    table.remove(f.as_str());
                    dropped.push(f);
                }
                None => return None,
            }
        }
    }

    fn parse_section(&mut self, kind: Kind, value: Spanned<DeValue<'_>>, decls: &mut Vec<Decl>) {
        let span = value.span();
        let DeValue::Array(items) = value.into_inner() else {
            self.error(
                span,
                None,
                Some(kind.as_str()),
                format!("`{}` must be an array of tables", kind.as_str()),
                Some(format!("write each one as [[{}]]", kind.as_str())),
            );
            return;
        };
        for (i, item) in items.into_iter().enumerate() {
            let span = item.span();
            let context = format!("[[{}]] #{}", kind.as_str(), i + 1);
            let decl = match kind {
                Kind::Group => self
                    .deserialize(item, &context)
                    .map(|r| self.group(r, span)),
                Kind::User => self.deserialize(item, &context).map(|r| self.user(r, span)),
                Kind::Package => self
                    .deserialize(item, &context)
                    .map(|r| self.package(r, span)),
                Kind::Directory => self
                    .deserialize(item, &context)
                    .map(|r| self.directory(r, span)),
                Kind::File => self.deserialize(item, &context).map(|r| self.file(r, span)),
                Kind::Exec => self.deserialize(item, &context).map(|r| self.exec(r, span)),
                Kind::Service => self
                    .deserialize(item, &context)
                    .map(|r| self.service(r, span)),
            };
            if let Some(d) = decl {
                decls.push(d);
            }
        }
    }

    fn check_meta(&mut self, m: RawMeta) -> Meta {
        if !is_role_name(m.name.get_ref()) {
            self.error(
                m.name.span(),
                Some("[role]"),
                Some("name"),
                format!("invalid role name {:?}", m.name.get_ref()),
                Some(
                    "use lowercase letters, digits and dashes, starting with a letter or digit"
                        .into(),
                ),
            );
        }
        Meta {
            name: m.name.into_inner(),
            description: m.description,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn decl(
        &mut self,
        kind: Kind,
        name: S<String>,
        spec: Spec,
        requires: Vec<S<String>>,
        notify: Vec<S<String>>,
        context: &str,
        span: Range<usize>,
    ) -> Decl {
        let id = ResourceId {
            kind,
            name: name.into_inner(),
        };
        Decl {
            context: context.to_string(),
            id,
            spec,
            requires,
            notify,
            span,
            pending_content: None,
        }
    }

    fn check_name(
        &mut self,
        name: &S<String>,
        context: &str,
        field: &str,
        valid: fn(&str) -> bool,
        rule: &str,
    ) -> bool {
        if valid(name.get_ref()) {
            return true;
        }
        self.error(
            name.span(),
            Some(context),
            Some(field),
            format!("invalid name {:?}", name.get_ref()),
            Some(rule.to_string()),
        );
        false
    }

    fn check_abs_path(&mut self, path: &S<String>, context: &str, field: &str) -> bool {
        match check_abs_path(path.get_ref()) {
            Ok(()) => true,
            Err(why) => {
                self.error(
                    path.span(),
                    Some(context),
                    Some(field),
                    format!("invalid path {:?}: {why}", path.get_ref()),
                    None,
                );
                false
            }
        }
    }

    fn mode(&mut self, mode: Option<S<String>>, context: &str) -> Option<u32> {
        let mode = mode?;
        match parse_mode(mode.get_ref()) {
            Ok(m) => Some(m),
            Err(why) => {
                self.error(
                    mode.span(),
                    Some(context),
                    Some("mode"),
                    format!("invalid mode {:?}: {why}", mode.get_ref()),
                    Some("write the mode as an octal string, like \"0644\" or \"0755\"".into()),
                );
                None
            }
        }
    }

    fn owner(&mut self, owner: Option<S<String>>, context: &str, field: &str) -> Option<String> {
        let owner = owner?;
        self.check_name(&owner, context, field, is_account_name, ACCOUNT_RULE);
        Some(owner.into_inner())
    }

    fn group(&mut self, r: RawGroup, span: Range<usize>) -> Decl {
        let context = &named(Kind::Group, r.name.get_ref());
        self.check_name(&r.name, context, "name", is_account_name, ACCOUNT_RULE);
        let spec = Spec::Group(Group {
            name: r.name.get_ref().clone(),
            gid: r.gid,
            system: r.system,
            state: r.state.unwrap_or(Presence::Present),
        });
        self.decl(
            Kind::Group,
            r.name,
            spec,
            r.requires,
            r.notify,
            context,
            span,
        )
    }

    fn user(&mut self, r: RawUser, span: Range<usize>) -> Decl {
        let context = &named(Kind::User, r.name.get_ref());
        self.check_name(&r.name, context, "name", is_account_name, ACCOUNT_RULE);
        for g in &r.groups {
            self.check_name(g, context, "groups", is_account_name, ACCOUNT_RULE);
        }
        if let Some(shell) = &r.shell {
            self.check_abs_path(shell, context, "shell");
        }
        if let Some(home) = &r.home {
            self.check_abs_path(home, context, "home");
        }
        let spec = Spec::User(User {
            name: r.name.get_ref().clone(),
            uid: r.uid,
            groups: r.groups.into_iter().map(Spanned::into_inner).collect(),
            shell: r.shell.map(Spanned::into_inner),
            home: r.home.map(Spanned::into_inner),
            comment: r.comment,
            system: r.system,
            state: r.state.unwrap_or(Presence::Present),
        });
        self.decl(
            Kind::User,
            r.name,
            spec,
            r.requires,
            r.notify,
            context,
            span,
        )
    }

    fn package(&mut self, r: RawPackage, span: Range<usize>) -> Decl {
        let context = &named(Kind::Package, r.name.get_ref());
        self.check_name(
            &r.name,
            context,
            "name",
            is_package_name,
            "package names are lowercase letters, digits and + - . (at least two characters)",
        );
        let state = r.state.unwrap_or(PackageState::Installed);
        if let Some(v) = &r.version {
            if state == PackageState::Absent {
                self.error(
                    v.span(),
                    Some(context),
                    Some("version"),
                    "a version makes no sense with state = \"absent\"",
                    None,
                );
            } else if v.get_ref().is_empty() || v.get_ref().contains(char::is_whitespace) {
                self.error(
                    v.span(),
                    Some(context),
                    Some("version"),
                    format!("invalid version {:?}", v.get_ref()),
                    None,
                );
            }
        }
        let spec = Spec::Package(Package {
            name: r.name.get_ref().clone(),
            version: r.version.map(Spanned::into_inner),
            state,
        });
        self.decl(
            Kind::Package,
            r.name,
            spec,
            r.requires,
            r.notify,
            context,
            span,
        )
    }

    fn directory(&mut self, r: RawDirectory, span: Range<usize>) -> Decl {
        let context = &named(Kind::Directory, r.path.get_ref());
        self.check_abs_path(&r.path, context, "path");
        let spec = Spec::Directory(Directory {
            path: r.path.get_ref().clone(),
            owner: self.owner(r.owner, context, "owner"),
            group: self.owner(r.group, context, "group"),
            mode: self.mode(r.mode, context),
            state: r.state.unwrap_or(Presence::Present),
        });
        self.decl(
            Kind::Directory,
            r.path,
            spec,
            r.requires,
            r.notify,
            context,
            span,
        )
    }

    fn file(&mut self, r: RawFile, span: Range<usize>) -> Decl {
        let context = &named(Kind::File, r.path.get_ref());
        self.check_abs_path(&r.path, context, "path");
        let absent = r.state.as_ref().map(|s| *s.get_ref()) == Some(Presence::Absent);
        let given: Vec<(&str, Range<usize>)> = [
            ("content", r.content.as_ref().map(|s| s.span())),
            ("template", r.template.as_ref().map(|s| s.span())),
            ("source", r.source.as_ref().map(|s| s.span())),
        ]
        .into_iter()
        .filter_map(|(n, s)| s.map(|s| (n, s)))
        .collect();
        if absent {
            if let Some((field, span)) = given.first() {
                self.error(
                    span.clone(),
                    Some(context),
                    Some(field),
                    format!("`{field}` cannot be set on a file with state = \"absent\""),
                    None,
                );
            }
        } else if given.is_empty()
            && !self
                .dropped
                .iter()
                .any(|f| ["content", "template", "source"].contains(&f.as_str()))
        {
            self.error(
                span.start..span.start,
                Some(context),
                None,
                "a file needs exactly one of `content`, `template` or `source`, or state = \"absent\"",
                None,
            );
        } else if given.len() > 1 {
            let names: Vec<_> = given.iter().map(|(n, _)| format!("`{n}`")).collect();
            self.error(
                given[1].1.clone(),
                Some(context),
                Some(given[1].0),
                format!(
                    "{} are both set; a file takes exactly one",
                    names.join(" and ")
                ),
                Some("keep one of them".into()),
            );
        }
        let pending = match (r.template, r.source) {
            (Some(t), _) => Some((ContentFrom::Template, t)),
            (None, Some(s)) => Some((ContentFrom::Source, s)),
            _ => None,
        };
        let content = if absent {
            None
        } else {
            Some(
                r.content
                    .map(|c| c.into_inner().into_bytes())
                    .unwrap_or_default(),
            )
        };
        let spec = Spec::File(File {
            path: r.path.get_ref().clone(),
            content,
            owner: self.owner(r.owner, context, "owner"),
            group: self.owner(r.group, context, "group"),
            mode: self.mode(r.mode, context),
            sensitive: r.sensitive,
        });
        let mut d = self.decl(
            Kind::File,
            r.path,
            spec,
            r.requires,
            r.notify,
            context,
            span,
        );
        d.pending_content = pending.filter(|_| !absent);
        d
    }

    fn exec(&mut self, r: RawExec, span: Range<usize>) -> Decl {
        let context = &named(Kind::Exec, r.name.get_ref());
        self.check_name(
            &r.name,
            context,
            "name",
            |n| !n.is_empty() && !n.contains(['\n', '\r']),
            "an exec name is one non-empty line",
        );
        if r.command.get_ref().trim().is_empty() {
            self.error(
                r.command.span(),
                Some(context),
                Some("command"),
                "the command is empty",
                None,
            );
        }
        if let Some(c) = &r.creates {
            self.check_abs_path(c, context, "creates");
        }
        if let Some(c) = &r.cwd {
            self.check_abs_path(c, context, "cwd");
        }
        let spec = Spec::Exec(Exec {
            name: r.name.get_ref().clone(),
            command: r.command.into_inner(),
            creates: r.creates.map(Spanned::into_inner),
            unless: r.unless,
            onlyif: r.onlyif,
            cwd: r.cwd.map(Spanned::into_inner),
            refresh_only: r.refresh_only,
        });
        self.decl(
            Kind::Exec,
            r.name,
            spec,
            r.requires,
            r.notify,
            context,
            span,
        )
    }

    fn service(&mut self, r: RawService, span: Range<usize>) -> Decl {
        let context = &named(Kind::Service, r.name.get_ref());
        self.check_name(
            &r.name,
            context,
            "name",
            |n| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ":_.@-\\".contains(c))
            },
            "a systemd unit name: letters, digits and : _ . @ - \\",
        );
        let spec = Spec::Service(Service {
            name: r.name.get_ref().clone(),
            running: r.running,
            enabled: r.enabled,
        });
        self.decl(
            Kind::Service,
            r.name,
            spec,
            r.requires,
            r.notify,
            context,
            span,
        )
    }

    /// Cross-resource checks, content resolution and ordering.
    fn resolve(
        &mut self,
        bundle: &RoleBundle,
        facts: &Facts,
        meta: &Meta,
        vars: &serde_json::Value,
        mut decls: Vec<Decl>,
    ) -> Vec<Resource> {
        // Duplicate ids.
        let mut seen: HashMap<ResourceId, usize> = HashMap::new();
        for i in 0..decls.len() {
            if let Some(&first) = seen.get(&decls[i].id) {
                let (line, _) = self.line_col(decls[first].span.start);
                let (span, ctx, id) = (
                    decls[i].span.clone(),
                    decls[i].context.clone(),
                    decls[i].id.to_string(),
                );
                self.error(
                    span,
                    Some(&ctx),
                    None,
                    format!("duplicate resource {id} (first declared on line {line})"),
                    Some("each TYPE:NAME may be declared once; merge the two".into()),
                );
            } else {
                seen.insert(decls[i].id.clone(), i);
            }
        }

        // Templates: compile every one so a syntax error is caught even in a
        // template nothing uses yet.
        let mut templates = Templates::new();
        let mut compiled = HashSet::new();
        for (path, data) in bundle.files() {
            let Some(name) = path.strip_prefix("templates/") else {
                continue;
            };
            match std::str::from_utf8(data) {
                Ok(text) => match templates.add(name, text) {
                    Ok(()) => {
                        compiled.insert(name.to_string());
                    }
                    Err(e) => self.diags.push(Diagnostic {
                        file: path.to_string(),
                        line: e.line,
                        column: e.column,
                        context: None,
                        field: None,
                        message: format!("template syntax error: {}", e.message),
                        help: None,
                    }),
                },
                Err(_) => self.diags.push(Diagnostic {
                    file: path.to_string(),
                    line: 0,
                    column: 0,
                    context: None,
                    field: None,
                    message: "template is not valid UTF-8".into(),
                    help: None,
                }),
            }
        }
        let data = serde_json::json!({
            "facts": facts,
            "vars": vars,
            "role": { "name": meta.name, "description": meta.description },
        });
        for d in &mut decls {
            let Some((from, name)) = d.pending_content.take() else {
                continue;
            };
            let field = match from {
                ContentFrom::Template => "template",
                ContentFrom::Source => "source",
            };
            let dir = match from {
                ContentFrom::Template => "templates",
                ContentFrom::Source => "files",
            };
            let path = format!("{dir}/{}", name.get_ref());
            if let Err(why) = check_rel_path(name.get_ref()) {
                let msg = format!("{field} {:?} {why}", name.get_ref());
                let ctx = d.context.clone();
                self.error(
                    name.span(),
                    Some(&ctx),
                    Some(field),
                    msg,
                    Some(format!("name a file inside the role's {dir}/ directory")),
                );
                continue;
            }
            let Some(bytes) = bundle.get(&path) else {
                let ctx = d.context.clone();
                self.error(
                    name.span(),
                    Some(&ctx),
                    Some(field),
                    format!("{path} does not exist in the role"),
                    None,
                );
                continue;
            };
            let content = match from {
                ContentFrom::Source => bytes.to_vec(),
                ContentFrom::Template if !compiled.contains(name.get_ref()) => continue, // reported above
                ContentFrom::Template => match templates.render(name.get_ref(), &data) {
                    Ok(s) => s.into_bytes(),
                    Err(e) => {
                        self.diags.push(Diagnostic {
                            file: path,
                            line: e.line,
                            column: e.column,
                            context: Some(format!("rendering for {}", d.id)),
                            field: None,
                            message: e.message,
                            help: Some("templates see `facts`, `vars` and `role`; an undefined name is an error".into()),
                        });
                        continue;
                    }
                },
            };
            if let Spec::File(f) = &mut d.spec {
                f.content = Some(content);
            }
        }

        // References, then implicit edges.
        let ids: HashMap<ResourceId, usize> = decls
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone(), i))
            .collect();
        let mut requires: Vec<Vec<ResourceId>> = vec![Vec::new(); decls.len()];
        let mut notify: Vec<Vec<ResourceId>> = vec![Vec::new(); decls.len()];
        for (i, d) in decls.iter().enumerate() {
            for (field, refs, out) in [
                ("requires", &d.requires, &mut requires[i]),
                ("notify", &d.notify, &mut notify[i]),
            ] {
                for r in refs {
                    let (line, column) = self.line_col(r.span().start);
                    let mut push = |message: String, help: Option<String>| {
                        self.diags.push(Diagnostic {
                            file: MANIFEST.into(),
                            line,
                            column,
                            context: Some(d.context.clone()),
                            field: Some(field.into()),
                            message,
                            help,
                        })
                    };
                    let id = match r.get_ref().parse::<ResourceId>() {
                        Ok(id) => id,
                        Err(e) => {
                            push(e, None);
                            continue;
                        }
                    };
                    if !ids.contains_key(&id) {
                        let help = suggest(&id.to_string(), ids.keys().map(|k| k.to_string()))
                            .map(|s| format!("did you mean `{s}`?"));
                        push(format!("{id} is not declared in this role"), help);
                        continue;
                    }
                    if id == d.id {
                        push(format!("{id} refers to itself"), None);
                        continue;
                    }
                    if field == "notify" && !id.kind.refreshable() {
                        push(
                            format!(
                                "{id} cannot be notified: only services and execs react to a refresh"
                            ),
                            None,
                        );
                        continue;
                    }
                    if !out.contains(&id) {
                        out.push(id);
                    }
                }
            }
        }
        for (i, d) in decls.iter().enumerate() {
            for id in implicit_requires(&d.spec) {
                if ids.contains_key(&id) && id != d.id && !requires[i].contains(&id) {
                    requires[i].push(id);
                }
            }
        }

        if !self.diags.is_empty() {
            return Vec::new();
        }

        // Order: Kahn's algorithm, always taking the ready resource that comes
        // first by (type, declaration order), so the order is stable and edges
        // only move what they must.
        let n = decls.len();
        let mut after: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut indegree = vec![0usize; n];
        for i in 0..n {
            for dep in &requires[i] {
                after[ids[dep]].push(i);
                indegree[i] += 1;
            }
            for target in &notify[i] {
                after[i].push(ids[target]);
                indegree[ids[target]] += 1;
            }
        }
        let key = |i: usize| std::cmp::Reverse((decls[i].id.kind, i));
        let mut ready: BinaryHeap<_> = (0..n).filter(|&i| indegree[i] == 0).map(key).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse((_, i))) = ready.pop() {
            order.push(i);
            for &j in &after[i] {
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    ready.push(key(j));
                }
            }
        }
        if order.len() < n {
            let cycle = find_cycle(&after, &indegree);
            let names: Vec<String> = cycle.iter().map(|&i| decls[i].id.to_string()).collect();
            let first = cycle[0];
            let (span, ctx) = (decls[first].span.clone(), decls[first].context.clone());
            self.error(
                span,
                Some(&ctx),
                None,
                format!("dependency cycle: {} → {}", names.join(" → "), names[0]),
                Some(
                    "`requires` and `notify` both order resources; remove one edge of the cycle"
                        .into(),
                ),
            );
            return Vec::new();
        }

        let mut slots: Vec<Option<Decl>> = decls.into_iter().map(Some).collect();
        order
            .into_iter()
            .map(|i| {
                let d = slots[i]
                    .take()
                    .expect("each index appears once in a topological order");
                Resource {
                    location: Location {
                        line: self.line_col(d.span.start).0,
                    },
                    id: d.id,
                    spec: d.spec,
                    requires: std::mem::take(&mut requires[i]),
                    notify: std::mem::take(&mut notify[i]),
                }
            })
            .collect()
    }
}

fn named(kind: Kind, name: &str) -> String {
    format!("[[{}]] {name:?}", kind.as_str())
}

/// Dependencies every operator expects without writing them: a file or
/// directory after its managed parent directory, owner and group.
fn implicit_requires(spec: &Spec) -> Vec<ResourceId> {
    let id = |kind, name: &str| ResourceId {
        kind,
        name: name.to_string(),
    };
    let (path, owner, group) = match spec {
        Spec::File(f) => (&f.path, &f.owner, &f.group),
        Spec::Directory(d) => (&d.path, &d.owner, &d.group),
        Spec::User(u) => return u.groups.iter().map(|g| id(Kind::Group, g)).collect(),
        _ => return Vec::new(),
    };
    let mut out: Vec<ResourceId> = std::path::Path::new(path)
        .ancestors()
        .skip(1)
        .filter_map(|p| p.to_str())
        .map(|p| id(Kind::Directory, p))
        .collect();
    out.extend(owner.iter().map(|o| id(Kind::User, o)));
    out.extend(group.iter().map(|g| id(Kind::Group, g)));
    out
}

/// Finds one cycle among the nodes Kahn's algorithm could not order.
fn find_cycle(after: &[Vec<usize>], indegree: &[usize]) -> Vec<usize> {
    let stuck: Vec<bool> = indegree.iter().map(|&d| d > 0).collect();
    let start = stuck.iter().position(|&s| s).expect("a cycle exists");
    // Every stuck node has a stuck predecessor; walk successors until a repeat.
    let mut path = vec![start];
    let mut pos: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let mut cur = start;
    loop {
        let next = *after[cur]
            .iter()
            .find(|&&j| stuck[j] && reaches(after, &stuck, j, cur))
            .expect("a stuck node on a cycle has a successor on it");
        if let Some(&p) = pos.get(&next) {
            return path[p..].to_vec();
        }
        pos.insert(next, path.len());
        path.push(next);
        cur = next;
    }
}

fn reaches(after: &[Vec<usize>], stuck: &[bool], from: usize, to: usize) -> bool {
    let mut seen = vec![false; after.len()];
    let mut stack = vec![from];
    while let Some(i) = stack.pop() {
        if i == to {
            return true;
        }
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        stack.extend(after[i].iter().copied().filter(|&j| stuck[j]));
    }
    false
}

// ---------------------------------------------------------------------------
// Field rules
// ---------------------------------------------------------------------------

const ACCOUNT_RULE: &str = "user and group names start with a lowercase letter or _, then lowercase letters, digits, _ or - (at most 32)";

fn is_role_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.len() <= 63
}

fn is_account_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && s.len() <= 32
}

fn is_package_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() >= 2
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// An absolute, normalized path: no `.`/`..` components, no `//`, no trailing `/`.
pub fn check_abs_path(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("must be absolute (start with /)");
    }
    if p == "/" {
        return Err("cannot be the root directory");
    }
    if p.ends_with('/') {
        return Err("must not end with /");
    }
    if p.contains('\0') {
        return Err("contains a NUL byte");
    }
    for part in p[1..].split('/') {
        match part {
            "" => return Err("contains an empty component (//)"),
            "." | ".." => return Err("contains . or .. components"),
            _ => {}
        }
    }
    Ok(())
}

fn check_rel_path(p: &str) -> Result<(), &'static str> {
    if p.starts_with('/') {
        return Err("is absolute; it must be relative to the role");
    }
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("escapes the role or is not a plain relative path");
    }
    Ok(())
}

/// Parses `"0644"`-style octal permission strings (3 or 4 digits, at most 07777).
pub fn parse_mode(s: &str) -> Result<u32, &'static str> {
    if !(3..=4).contains(&s.len()) {
        return Err("expected 3 or 4 octal digits");
    }
    if !s.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err("octal digits are 0 to 7");
    }
    u32::from_str_radix(s, 8).map_err(|_| "not an octal number")
}

/// Adds a "did you mean" to serde's unknown-field and unknown-variant errors and
/// names the field they are about.
fn explain_serde(message: &str) -> (Option<String>, Option<String>) {
    let ticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let Some((&got, expected)) = ticked.split_first() else {
        return (None, None);
    };
    if message.starts_with("unknown field") {
        let help = suggest(got, expected.iter().copied())
            .map(|s| format!("did you mean `{s}`?"))
            .or_else(|| Some(format!("known fields: {}", expected.join(", "))));
        return (Some(got.to_string()), help);
    }
    if message.starts_with("unknown variant") {
        let help = suggest(got, expected.iter().copied()).map(|s| format!("did you mean \"{s}\"?"));
        return (None, help);
    }
    if message.starts_with("missing field") {
        return (Some(got.to_string()), None);
    }
    (None, None)
}

fn suggest<I, T>(got: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = T>,
    T: AsRef<str>,
{
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(got, c.as_ref()),
                c.as_ref().to_string(),
            )
        })
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d > 0)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn line_col_bytes(raw: &[u8], offset: usize) -> (usize, usize) {
    let before = &raw[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, col)
}

/// Builds a bundle from `(path, text)` pairs, for tests.
pub fn bundle_from_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> RoleBundle {
    let mut b = RoleBundle::default();
    let map: BTreeMap<_, _> = files.into_iter().collect();
    for (p, c) in map {
        b.insert(p.to_string(), c.as_bytes().to_vec())
            .expect("test bundle paths are valid");
    }
    b
}
