//! File content named by `template` or `source`, and fields that are
//! templates themselves (an exec's `command`, guards and `cwd`): read from the
//! role once every table is read, templates rendered with the node's facts.

use std::collections::HashSet;

use toml::Spanned;

use super::Spec;
use super::diagnostic::{Diagnostic, Diags, clip};
use super::manifest::{Decl, Meta};
use super::rules::{check_abs_path, check_command, check_rel_path};
use crate::bundle::RoleBundle;
use crate::facts::Facts;
use crate::template::{MAX_RENDERED_BYTES, TemplateError, Templates};

/// The most all of a role's templates may render to together: the same
/// template may be used by many files.
pub(super) const MAX_ROLE_RENDERED_BYTES: usize = 64 << 20;

#[derive(Clone, Copy)]
pub(super) enum ContentFrom {
    Template,
    Source,
    /// An apt repository's key: a file of `files/`, as a source.
    Key,
}

impl ContentFrom {
    fn field(self) -> &'static str {
        match self {
            ContentFrom::Template => "template",
            ContentFrom::Source => "source",
            ContentFrom::Key => "key",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            ContentFrom::Template => "templates",
            ContentFrom::Source | ContentFrom::Key => "files",
        }
    }
}

/// A template or source to read, with the field naming it (for diagnostics).
pub(super) struct PendingContent {
    from: ContentFrom,
    name: Spanned<String>,
}

impl PendingContent {
    pub(super) fn new(from: ContentFrom, name: Spanned<String>) -> Self {
        PendingContent { from, name }
    }
}

/// The longest command: Linux takes no single argument longer
/// (`MAX_ARG_STRLEN`, 32 pages, counting the final NUL), and a command is
/// one argument of `/bin/sh -c`.
pub const MAX_COMMAND_BYTES: usize = (128 << 10) - 1;

/// A field of a resource that is a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TextField {
    Command,
    Unless,
    Onlyif,
    Cwd,
}

impl TextField {
    fn name(self) -> &'static str {
        match self {
            TextField::Command => "command",
            TextField::Unless => "unless",
            TextField::Onlyif => "onlyif",
            TextField::Cwd => "cwd",
        }
    }

    /// Whether it runs in a shell, so that it may insert values only through
    /// `{{sh …}}` or as numbers; a `cwd` is a path, values go in as they are.
    fn is_command(self) -> bool {
        self != TextField::Cwd
    }
}

/// A field whose text is a template, rendered once every table is read.
pub(super) struct PendingText {
    field: TextField,
    text: Spanned<String>,
}

impl PendingText {
    pub(super) fn new(field: TextField, text: Spanned<String>) -> Self {
        PendingText { field, text }
    }

    /// Whether `text` is a template: it has a tag. Text without one renders
    /// as itself, and is taken as it is.
    pub(super) fn is_template(text: &Spanned<String>) -> bool {
        text.get_ref().contains("{{")
    }
}

/// Reads every pending content into its file's spec, and renders every
/// templated field into its resource's spec.
pub(super) fn resolve(
    diags: &mut Diags<'_>,
    bundle: &RoleBundle,
    facts: &Facts,
    meta: &Meta,
    vars: &serde_json::Value,
    decls: &mut [Decl],
) {
    let (templates, compiled) = compile_templates(diags, bundle);
    let data = serde_json::json!({
        "facts": facts,
        "vars": vars,
        "role": { "name": meta.name, "description": meta.description },
    });
    // Commands and files draw on one budget, so a role renders at most this
    // much in all, however its output is split.
    let mut rendered_left = MAX_ROLE_RENDERED_BYTES;
    // Apart from the role's template files, so no name can collide.
    let mut texts = Templates::new();
    for d in decls.iter_mut() {
        for pending in std::mem::take(&mut d.pending_texts) {
            render_text(diags, &mut texts, &data, &mut rendered_left, d, pending);
        }
    }
    for d in decls {
        let Some(pending) = d.pending_content.take() else {
            continue;
        };
        let (span, path) = (pending.name.span(), pending.name.get_ref().clone());
        let templates = (&templates, &compiled, &data);
        let Some(content) = read(diags, bundle, templates, &mut rendered_left, d, pending) else {
            continue;
        };
        match &mut d.spec {
            Spec::File(f) => f.content = Some(content),
            // An apt repository's key, held to its pinned fingerprint.
            Spec::AptRepository(a) => {
                if let Err((message, help)) = a.take_key(&content) {
                    let message = format!("files/{}: {message}", clip(&path));
                    diags.error(span, Some(&d.context), Some("key"), message, Some(help));
                }
            }
            _ => unreachable!("only files and apt repositories have content to read"),
        }
    }
}

/// Renders the templated field `pending` of `d` into `d`'s spec, or reports
/// why it cannot.
fn render_text(
    diags: &mut Diags<'_>,
    texts: &mut Templates,
    data: &serde_json::Value,
    rendered_left: &mut usize,
    d: &mut Decl,
    pending: PendingText,
) {
    let PendingText { field, text } = pending;
    let name = format!("{} {}", d.id, field.name());
    let (added, max) = if field.is_command() {
        (texts.add_command(&name, text.get_ref()), MAX_COMMAND_BYTES)
    } else {
        (
            texts.add(&name, text.get_ref()),
            super::rules::MAX_PATH_BYTES,
        )
    };
    let report = |diags: &mut Diags<'_>, message: String, help: &str| {
        diags.error(
            text.span(),
            Some(&d.context),
            Some(field.name()),
            message,
            Some(help.into()),
        )
    };
    let help = if field.is_command() {
        "a command sees `facts`, `vars` and `role`; insert a value with {{sh vars.name}}, \
         which quotes it as one shell word"
    } else {
        "`cwd` sees `facts`, `vars` and `role`; an undefined name is an error"
    };
    let at = |e: &TemplateError| {
        if e.line > 1 {
            format!(
                " (line {}, column {} of `{}`)",
                e.line,
                e.column,
                field.name()
            )
        } else {
            format!(" (column {} of `{}`)", e.column, field.name())
        }
    };
    if let Err(e) = added {
        let message = format!("template syntax error: {}{}", e.message, at(&e));
        return report(diags, message, help);
    }
    let rendered = match texts.render(&name, data, max.min(*rendered_left)) {
        Ok(r) => r,
        Err(e) if e.too_large && *rendered_left < max => {
            let message = format!(
                "the role's templates render to more than {} MiB in all",
                MAX_ROLE_RENDERED_BYTES >> 20
            );
            return report(diags, message, help);
        }
        Err(e) if e.too_large => {
            let message = format!("`{}` renders to more than {max} bytes", field.name());
            return report(diags, message, help);
        }
        Err(e) => return report(diags, format!("{}{}", e.message, at(&e)), help),
    };
    // What a value brought in is held to the rule the text as written was:
    // a fact with a NUL or an escape fails here, before the host is touched.
    if field.is_command()
        && let Err(why) = check_command(&rendered)
    {
        let message = format!("`{}` as rendered {why}", field.name());
        return report(diags, message, help);
    }
    if field == TextField::Cwd
        && let Err(why) = check_abs_path(&rendered)
    {
        let message = format!("invalid path {:?}: {why}", clip(&rendered));
        let help = "`cwd` is a path, not a command: values go in as they are, without {{sh …}}";
        return report(diags, message, help);
    }
    *rendered_left -= rendered.len();
    let Spec::Exec(e) = &mut d.spec else {
        unreachable!("only execs have templated fields")
    };
    let slot = match field {
        TextField::Command => &mut e.command,
        TextField::Unless => e.unless.get_or_insert_default(),
        TextField::Onlyif => e.onlyif.get_or_insert_default(),
        TextField::Cwd => e.cwd.get_or_insert_default(),
    };
    *slot = rendered;
}

/// Compiles every template, so a syntax error is caught even in a template
/// nothing uses yet. Returns them and the names of those that compiled.
fn compile_templates(diags: &mut Diags<'_>, bundle: &RoleBundle) -> (Templates, HashSet<String>) {
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
                Err(e) => diags.push(Diagnostic {
                    file: path.to_string(),
                    line: e.line,
                    column: e.column,
                    context: None,
                    field: None,
                    message: format!("template syntax error: {}", e.message),
                    help: None,
                }),
            },
            Err(_) => diags.push(Diagnostic {
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
    (templates, compiled)
}

/// The bytes `pending` names for `d`, or `None` once the problem is reported.
/// `templates` are the compiled templates, the names of those that compiled
/// and the data they see; a rendering is taken from `rendered_left`.
fn read(
    diags: &mut Diags<'_>,
    bundle: &RoleBundle,
    (templates, compiled, data): (&Templates, &HashSet<String>, &serde_json::Value),
    rendered_left: &mut usize,
    d: &Decl,
    pending: PendingContent,
) -> Option<Vec<u8>> {
    let PendingContent { from, name } = pending;
    let (field, dir) = (from.field(), from.dir());
    let path = format!("{dir}/{}", name.get_ref());
    if let Err(why) = check_rel_path(name.get_ref()) {
        diags.error(
            name.span(),
            Some(&d.context),
            Some(field),
            format!("{field} {:?} {why}", clip(name.get_ref())),
            Some(format!("name a file inside the role's {dir}/ directory")),
        );
        return None;
    }
    let Some(bytes) = bundle.get(&path) else {
        diags.error(
            name.span(),
            Some(&d.context),
            Some(field),
            format!("{} does not exist in the role", clip(&path)),
            None,
        );
        return None;
    };
    match from {
        ContentFrom::Source | ContentFrom::Key => Some(bytes.to_vec()),
        // Its syntax error is reported already.
        ContentFrom::Template if !compiled.contains(name.get_ref()) => None,
        ContentFrom::Template => match templates.render(name.get_ref(), data, *rendered_left) {
            Ok(s) => {
                *rendered_left -= s.len();
                Some(s.into_bytes())
            }
            Err(e) => {
                let (message, help) = if !e.too_large {
                    let help =
                        "templates see `facts`, `vars` and `role`; an undefined name is an error";
                    (e.message, help)
                } else if *rendered_left < MAX_RENDERED_BYTES {
                    let message = format!(
                        "the role's templates render to more than {} MiB in all",
                        MAX_ROLE_RENDERED_BYTES >> 20
                    );
                    (message, "use `source` for large files")
                } else {
                    let message = format!(
                        "the template renders to more than {} MiB",
                        MAX_RENDERED_BYTES >> 20
                    );
                    (message, "use `source` for large files")
                };
                diags.push(Diagnostic {
                    file: path,
                    line: e.line,
                    column: e.column,
                    context: Some(format!("rendering for {}", d.id)),
                    field: None,
                    message,
                    help: Some(help.into()),
                });
                None
            }
        },
    }
}
