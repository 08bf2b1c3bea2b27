//! `[[apt_repository]]`: an apt source in deb822 form
//! (`/etc/apt/sources.list.d/NAME.sources`) whose `Signed-By` names its own
//! key (`/etc/apt/keyrings/NAME.gpg`), the key taken from the role and held
//! to a pinned fingerprint; or both files absent. Every package of the role
//! converges after every repository, so it is installed from lists that
//! know the repository.

use serde::Deserialize;
use toml::Spanned;

use super::{Kind, Presence, ResourceKind, path_requires};
use crate::openpgp;
use crate::role::content::{ContentFrom, PendingContent};
use crate::role::diagnostic::clip;
use crate::role::id::ResourceId;
use crate::role::rules::Table;

/// The longest name taken, leaving room for `.sources` within a file name's
/// 255 bytes.
const MAX_NAME_BYTES: usize = 200;
/// The most entries of one list (`uris`, `suites`, …).
const MAX_ENTRIES: usize = 32;
/// The longest URI, suite, component or architecture.
const MAX_VALUE_BYTES: usize = 1024;

const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
const KEYRINGS_DIR: &str = "/etc/apt/keyrings";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptRepository {
    /// The files are `NAME.sources` and `NAME.gpg`.
    pub name: String,
    /// What the source must be; `None` when both files must be absent.
    pub source: Option<AptSource>,
}

/// A repository that must be present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    /// `deb`, `deb-src`, or both.
    pub types: Vec<String>,
    pub uris: Vec<String>,
    /// Distributions (`bookworm`), or one exact path ending in `/` (a flat
    /// repository, which has no components).
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// Empty: apt's own choice (the host's architectures).
    pub architectures: Vec<String>,
    /// The pinned fingerprint: 40 uppercase hexadecimal digits.
    pub fingerprint: String,
    /// The key in binary form, its primary key's fingerprint the pinned
    /// one (filled once the role's file is read).
    pub key: Vec<u8>,
}

impl AptRepository {
    pub fn source_path(&self) -> String {
        format!("{SOURCES_DIR}/{}.sources", self.name)
    }

    pub fn key_path(&self) -> String {
        format!("{KEYRINGS_DIR}/{}.gpg", self.name)
    }

    /// The content of [`AptRepository::source_path`]; `None` when absent.
    pub fn source_file(&self) -> Option<String> {
        let s = self.source.as_ref()?;
        let mut out = format!(
            "# Managed by Cairn ([[apt_repository]] {}); changes here are replaced.\n\
             Types: {}\nURIs: {}\nSuites: {}\n",
            self.name,
            s.types.join(" "),
            s.uris.join(" "),
            s.suites.join(" "),
        );
        if !s.components.is_empty() {
            out += &format!("Components: {}\n", s.components.join(" "));
        }
        if !s.architectures.is_empty() {
            out += &format!("Architectures: {}\n", s.architectures.join(" "));
        }
        out += &format!("Signed-By: {}\n", self.key_path());
        Some(out)
    }

    /// Takes the role's key file for this repository: it must be one public
    /// key whose primary key has the pinned fingerprint. The error says
    /// why not, with a help line.
    pub(in crate::role) fn take_key(&mut self, data: &[u8]) -> Result<(), (String, String)> {
        let source = self
            .source
            .as_mut()
            .expect("only a present repository has a key to read");
        let key = openpgp::read_public_key(data).map_err(|why| {
            (
                format!("the key {why}"),
                "export the repository's public key with `gpg --export` (binary) or \
                 `gpg --armor --export`"
                    .to_string(),
            )
        })?;
        // A pin that is missing or not a fingerprint is reported already.
        if openpgp::is_fingerprint(&source.fingerprint) && key.fingerprint != source.fingerprint {
            let help = if key.subkeys.contains(&source.fingerprint) {
                format!(
                    "the pin is the fingerprint of a subkey; pin the primary key's, {}",
                    key.fingerprint
                )
            } else {
                "if the repository changed its key, check the new fingerprint from a source \
                 you trust before pinning it"
                    .to_string()
            };
            return Err((
                format!(
                    "the key's fingerprint is {}, not the pinned {}",
                    key.fingerprint, source.fingerprint
                ),
                help,
            ));
        }
        source.key = key.binary;
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::role) struct RawAptRepository {
    name: Spanned<String>,
    types: Option<Spanned<Vec<Spanned<String>>>>,
    uris: Option<Spanned<Vec<Spanned<String>>>>,
    suites: Option<Spanned<Vec<Spanned<String>>>>,
    components: Option<Spanned<Vec<Spanned<String>>>>,
    architectures: Option<Spanned<Vec<Spanned<String>>>>,
    key: Option<Spanned<String>>,
    fingerprint: Option<Spanned<String>>,
    state: Option<Spanned<Presence>>,
}

/// A file name apt reads in `sources.list.d`: letters, digits, `_`, `-`
/// and `.`, not starting with `.` or `-`.
fn is_repository_name(n: &str) -> bool {
    n.len() <= MAX_NAME_BYTES
        && n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// One word of a deb822 field: no space, nothing invisible.
fn word_problem(v: &str) -> Option<String> {
    if v.is_empty() {
        Some("is empty".into())
    } else if v.len() > MAX_VALUE_BYTES {
        Some(format!("is longer than {MAX_VALUE_BYTES} bytes"))
    } else if v.contains(|c: char| c.is_whitespace() || c.is_control()) {
        Some("contains a space or a control character".into())
    } else {
        None
    }
}

/// What is wrong with one entry of a list, and a help line if one helps;
/// `None` when nothing is.
type Problem = Option<(String, Option<String>)>;

/// What is wrong with a URI apt is to fetch from, beyond [`word_problem`].
fn uri_problem(uri: &str) -> Problem {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Some((
            "has no scheme".into(),
            Some("write the full URI, like \"https://apt.example.com/debian\"".into()),
        ));
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
    if !scheme_ok {
        return Some((format!("has an invalid scheme {:?}", clip(scheme)), None));
    }
    let authority = rest
        .strip_prefix("//")
        .map(|r| r.split('/').next().unwrap_or(""));
    if authority.is_some_and(|a| a.contains('@')) {
        return Some((
            "holds credentials, which the sources file would show to every user".into(),
            Some(
                "put them in /etc/apt/auth.conf.d/ (a [[file]] with mode \"0600\") and leave \
                 them out of the URI"
                    .into(),
            ),
        ));
    }
    None
}

/// Checks a list field; `valid` adds the field's own rule for one entry.
fn list(
    t: &mut Table<'_, '_>,
    field: &str,
    values: Option<Spanned<Vec<Spanned<String>>>>,
    valid: fn(&str) -> Problem,
) -> Vec<String> {
    let Some(values) = values else {
        return Vec::new();
    };
    let span = values.span();
    let values = values.into_inner();
    if values.is_empty() {
        t.error(span, Some(field), format!("`{field}` is empty"), None);
    } else if values.len() > MAX_ENTRIES {
        t.error(
            span,
            Some(field),
            format!(
                "`{field}` has {} entries, more than {MAX_ENTRIES}",
                values.len()
            ),
            None,
        );
    }
    for v in &values {
        let problem = word_problem(v.get_ref())
            .map(|why| (why, None))
            .or_else(|| valid(v.get_ref()));
        if let Some((why, help)) = problem {
            t.error(
                v.span(),
                Some(field),
                format!("invalid entry {:?} in `{field}`: {why}", clip(v.get_ref())),
                help,
            );
        }
    }
    values.into_iter().map(Spanned::into_inner).collect()
}

fn any_entry(_: &str) -> Problem {
    None
}

fn source_type(v: &str) -> Problem {
    (!matches!(v, "deb" | "deb-src"))
        .then(|| ("a source type is \"deb\" or \"deb-src\"".into(), None))
}

fn architecture(v: &str) -> Problem {
    (!v.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    .then(|| {
        (
            "an architecture is lowercase letters, digits and -, like \"amd64\"".into(),
            None,
        )
    })
}

impl ResourceKind for AptRepository {
    type Raw = RawAptRepository;
    const PRECEDES_EVERY: &'static [Kind] = &[Kind::Package];

    fn name(raw: &RawAptRepository) -> &Spanned<String> {
        &raw.name
    }

    fn check(r: RawAptRepository, t: &mut Table<'_, '_>) -> AptRepository {
        t.check_name(
            &r.name,
            "name",
            is_repository_name,
            "a repository name is letters, digits, _ . and - (its files are \
             /etc/apt/sources.list.d/NAME.sources and /etc/apt/keyrings/NAME.gpg)",
        );
        let absent = r.state.as_ref().map(|s| *s.get_ref()) == Some(Presence::Absent);
        if absent {
            t.set_when_absent(
                ("an apt_repository", "name"),
                &[
                    ("types", r.types.as_ref().map(Spanned::span)),
                    ("uris", r.uris.as_ref().map(Spanned::span)),
                    ("suites", r.suites.as_ref().map(Spanned::span)),
                    ("components", r.components.as_ref().map(Spanned::span)),
                    ("architectures", r.architectures.as_ref().map(Spanned::span)),
                    ("key", r.key.as_ref().map(Spanned::span)),
                    ("fingerprint", r.fingerprint.as_ref().map(Spanned::span)),
                ],
            );
            return AptRepository {
                name: r.name.into_inner(),
                source: None,
            };
        }
        for (field, given) in [
            ("uris", r.uris.is_some()),
            ("suites", r.suites.is_some()),
            ("key", r.key.is_some()),
            ("fingerprint", r.fingerprint.is_some()),
        ] {
            if !given && !t.dropped.iter().any(|f| f == field) {
                t.error(
                    t.span.start..t.span.start,
                    Some(field),
                    format!("missing field `{field}`"),
                    Some(
                        "a present repository needs `uris`, `suites`, `key` and `fingerprint`"
                            .into(),
                    ),
                );
            }
        }
        let fingerprint = match &r.fingerprint {
            Some(f) => {
                let normal = openpgp::normalize_fingerprint(f.get_ref());
                if !openpgp::is_fingerprint(&normal) {
                    t.error(
                        f.span(),
                        Some("fingerprint"),
                        format!("invalid fingerprint {:?}", clip(f.get_ref())),
                        Some(
                            "write the primary key's full fingerprint, 40 hexadecimal digits \
                             (spaces allowed), as `gpg --show-keys KEYFILE` prints it"
                                .into(),
                        ),
                    );
                }
                normal
            }
            None => String::new(),
        };
        let types_given = r.types.is_some();
        let mut types = list(t, "types", r.types, source_type);
        if !types_given {
            types = vec!["deb".into()];
        }
        let uris = list(t, "uris", r.uris, uri_problem);
        let suites_span = r.suites.as_ref().map(Spanned::span);
        let suites = list(t, "suites", r.suites, any_entry);
        let components_span = r.components.as_ref().map(Spanned::span);
        let components = list(t, "components", r.components, any_entry);
        let architectures = list(t, "architectures", r.architectures, architecture);
        let flat = suites.iter().filter(|s| s.ends_with('/')).count();
        if flat > 0 && flat < suites.len() {
            t.error(
                suites_span.clone().expect("suites were given"),
                Some("suites"),
                "`suites` mixes exact paths (ending in /) with distributions",
                Some("declare a flat repository and a distribution as two repositories".into()),
            );
        } else if flat > 0 {
            if let Some(span) = components_span {
                t.error(
                    span,
                    Some("components"),
                    "a flat repository (its suite ends in /) has no components",
                    Some("leave `components` out".into()),
                );
            }
        } else if let Some(span) = suites_span
            && components_span.is_none()
            && !t.dropped.iter().any(|f| f == "components")
        {
            t.error(
                span,
                Some("components"),
                "a suite that is a distribution needs `components`",
                Some(
                    "name them, like components = [\"main\"], or give an exact path ending in / \
                     for a flat repository"
                        .into(),
                ),
            );
        }
        // The key is read from the role once every table is read, and held
        // to the fingerprint then.
        t.pending_content = r
            .key
            .map(|name| PendingContent::new(ContentFrom::Key, name));
        AptRepository {
            name: r.name.into_inner(),
            source: Some(AptSource {
                types,
                uris,
                suites,
                components,
                architectures,
                fingerprint,
                key: Vec::new(),
            }),
        }
    }

    fn implicit_requires(&self) -> Vec<ResourceId> {
        let mut out = path_requires(&self.source_path(), None, None);
        out.extend(path_requires(&self.key_path(), None, None));
        out
    }
}
