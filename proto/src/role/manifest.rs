//! Reading `role.toml`: `[role]`, `[vars]` and every resource table, span-aware
//! (`toml::de::DeTable`), each table deserialized on its own so that one bad
//! table does not hide the others.

use std::ops::Range;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::content::{PendingContent, PendingText};
use super::diagnostic::{Diags, clip, clip_to, suggest};
use super::id::ResourceId;
use super::kinds::{self, Kind, ResourceKind, Spec};
use super::rules::{ROLE_NAME_RULE, Table, is_role_name};

/// `[role]`, checked.
pub(super) struct Meta {
    pub(super) name: String,
    pub(super) description: String,
}

/// `role.toml` with every table checked on its own, before the checks across
/// resources.
pub(super) struct Manifest {
    pub(super) meta: Meta,
    pub(super) vars: serde_json::Value,
    pub(super) decls: Vec<Decl>,
}

/// A resource after field checks, before cross-resource checks.
pub(super) struct Decl {
    pub(super) id: ResourceId,
    pub(super) spec: Spec,
    pub(super) requires: Vec<Spanned<String>>,
    pub(super) notify: Vec<Spanned<String>>,
    pub(super) reload: Vec<Spanned<String>>,
    /// What its diagnostics are in: `[[file]] "/etc/motd"`.
    pub(super) context: String,
    pub(super) span: Range<usize>,
    pub(super) pending_content: Option<PendingContent>,
    pub(super) pending_texts: Vec<PendingText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
}

/// The fields every kind has, read apart from the kind's own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdges {
    #[serde(default)]
    requires: Vec<Spanned<String>>,
    #[serde(default)]
    notify: Vec<Spanned<String>>,
    #[serde(default)]
    reload: Vec<Spanned<String>>,
}

const EDGE_FIELDS: [&str; 3] = ["requires", "notify", "reload"];

/// serde's messages quote keys and values from the role; longer ones are cut.
const MAX_SERDE_MESSAGE_CHARS: usize = 512;

/// `[role]`, `[vars]`, then one key per kind.
fn top_level_keys() -> Vec<&'static str> {
    ["role", "vars"]
        .into_iter()
        .chain(Kind::ALL.map(Kind::as_str))
        .collect()
}

/// Reads `src`, the text of `role.toml`; `None` if it cannot go further (bad
/// TOML, no valid `[role]`).
pub(super) fn parse(src: &str, diags: &mut Diags<'_>) -> Option<Manifest> {
    let doc = match DeTable::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            diags.error(
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
                if let Some((m, _)) = deserialize::<RawMeta>(diags, value, "[role]", &[]) {
                    meta = Some(check_meta(diags, m));
                }
            }
            "vars" => {
                let span = value.span();
                if !matches!(value.get_ref(), DeValue::Table(_)) {
                    diags.error(span, Some("[vars]"), None, "must be a table", None);
                    continue;
                }
                match serde_json::Value::deserialize(ValueDeserializer::from(value)) {
                    Ok(v) => vars = v,
                    Err(e) => diags.error(
                        e.span().unwrap_or(span),
                        Some("[vars]"),
                        None,
                        e.message().to_string(),
                        None,
                    ),
                }
            }
            k => match k.parse::<Kind>() {
                Ok(kind) => read_section(diags, kind, value, &mut decls),
                Err(()) => {
                    let known = top_level_keys();
                    let help = suggest(k, &known)
                        .map(|s| format!("did you mean `{s}`?"))
                        .or_else(|| Some(format!("known sections: {}", known.join(", "))));
                    diags.error(
                        key_span,
                        None,
                        None,
                        format!("unknown section `{}`", clip(k)),
                        help,
                    );
                }
            },
        }
    }
    let Some(meta) = meta else {
        if !diags.any_in("[role]") {
            diags.error(
                doc_span.start..doc_span.start,
                None,
                None,
                "the [role] table is missing",
                Some("start role.toml with [role] and name = \"…\"".into()),
            );
        }
        return None;
    };
    Some(Manifest { meta, vars, decls })
}

fn check_meta(diags: &mut Diags<'_>, m: RawMeta) -> Meta {
    if !is_role_name(m.name.get_ref()) {
        diags.error(
            m.name.span(),
            Some("[role]"),
            Some("name"),
            format!("invalid role name {:?}", clip(m.name.get_ref())),
            Some(ROLE_NAME_RULE.into()),
        );
    }
    Meta {
        name: m.name.into_inner(),
        description: m.description,
    }
}

/// Reads every `[[kind]]` table.
fn read_section(
    diags: &mut Diags<'_>,
    kind: Kind,
    value: Spanned<DeValue<'_>>,
    decls: &mut Vec<Decl>,
) {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        diags.error(
            span,
            None,
            None,
            format!("section `{}` must be an array of tables", kind.as_str()),
            Some(format!("write each one as [[{}]]", kind.as_str())),
        );
        return;
    };
    for (i, item) in items.into_iter().enumerate() {
        let context = format!("[[{}]] #{}", kind.as_str(), i + 1);
        decls.extend(kinds::read(kind, diags, item, context));
    }
}

/// Reads one table of kind `K`: `requires`, `notify` and `reload` here, the
/// rest by the kind. `context` locates serde's errors (`[[file]] #2`) until
/// the table's name is known; then every problem names the resource instead.
pub(super) fn read_resource<K: ResourceKind + Into<Spec>>(
    kind: Kind,
    diags: &mut Diags<'_>,
    item: Spanned<DeValue<'_>>,
    context: String,
) -> Option<Decl> {
    let span = item.span();
    let DeValue::Table(table) = item.into_inner() else {
        diags.error(span, Some(&context), None, "must be a table", None);
        return None;
    };
    let (mut own, mut edges) = (DeTable::new(), DeTable::new());
    for (key, value) in table {
        if EDGE_FIELDS.contains(&key.get_ref().as_ref()) {
            edges.insert(key, value);
        } else {
            own.insert(key, value);
        }
    }
    let edges = deserialize_table::<RawEdges>(diags, edges, span.clone(), &context, &[]);
    let (raw, dropped) =
        deserialize_table::<K::Raw>(diags, own, span.clone(), &context, &EDGE_FIELDS)?;
    let (edges, _) = edges?;
    let name = K::name(&raw).get_ref().clone();
    let numbered = context;
    let context = format!("[[{}]] {:?}", kind.as_str(), clip(&name));
    // Named from here on, so are the problems already found in it: one
    // resource, one name in the list.
    diags.rename_context(&numbered, &context);
    let mut table = Table::new(diags, context, span.clone(), dropped);
    let spec = K::check(raw, &mut table).into();
    Some(Decl {
        id: ResourceId::new(kind, name),
        spec,
        requires: edges.requires,
        notify: edges.notify,
        reload: edges.reload,
        context: table.context,
        span,
        pending_content: table.pending_content,
        pending_texts: table.pending_texts,
    })
}

/// Deserializes one table, turning serde's errors into located diagnostics.
/// Also returns the fields reported and left out.
fn deserialize<T: DeserializeOwned>(
    diags: &mut Diags<'_>,
    value: Spanned<DeValue<'_>>,
    context: &str,
    also_known: &[&str],
) -> Option<(T, Vec<String>)> {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        diags.error(span, Some(context), None, "must be a table", None);
        return None;
    };
    deserialize_table(diags, table, span, context, also_known)
}

/// [`deserialize`] for a table already taken apart. `also_known` are fields
/// of the same table read apart: an unknown field's message lists them too.
fn deserialize_table<T: DeserializeOwned>(
    diags: &mut Diags<'_>,
    mut table: DeTable<'_>,
    span: Range<usize>,
    context: &str,
    also_known: &[&str],
) -> Option<(T, Vec<String>)> {
    // serde stops at the first problem; to report every one, the field at
    // fault is reported, dropped, and the table tried again.
    let mut dropped: Vec<String> = Vec::new();
    loop {
        let attempt = Spanned::new(span.clone(), DeValue::Table(table.clone()));
        let e = match T::deserialize(ValueDeserializer::from(attempt)) {
            Ok(v) => return Some((v, dropped)),
            Err(e) => e,
        };
        let err_span = e.span().unwrap_or(span.clone());
        let message = list_also_known(e.message(), also_known);
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
            // serde quotes the role's keys and values whole.
            let shown_field = field.as_deref().map(clip);
            let message = clip_to(&message, MAX_SERDE_MESSAGE_CHARS).into_owned();
            diags.error(
                err_span,
                Some(context),
                shown_field.as_deref(),
                message,
                help,
            );
        }
        // Each retry costs the whole table again: stop once nothing more is kept.
        if diags.full() {
            diags.give_up();
            return None;
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

/// serde's unknown-field message lists the fields of the struct it was
/// filling; the fields read apart from it (`requires`, `notify`) belong in
/// that list too.
fn list_also_known(message: &str, also_known: &[&str]) -> String {
    let unchanged = || message.to_string();
    if also_known.is_empty() {
        return unchanged();
    }
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return unchanged();
    };
    // The unknown name comes from the role and may hold anything; the list
    // after it holds only field names.
    let (got, expected) = match rest.strip_suffix("`, there are no fields") {
        Some(got) => (got, Vec::new()),
        None => {
            let Some(at) = rest.rfind("`, expected ") else {
                return unchanged();
            };
            let list = &rest[at + "`, expected ".len()..];
            (&rest[..at], list.split('`').skip(1).step_by(2).collect())
        }
    };
    let known: Vec<String> = expected
        .into_iter()
        .chain(also_known.iter().copied())
        .map(|f| format!("`{f}`"))
        .collect();
    let list = match known.as_slice() {
        [one] => one.clone(),
        [a, b] => format!("{a} or {b}"),
        _ => format!("one of {}", known.join(", ")),
    };
    format!("unknown field `{got}`, expected {list}")
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
