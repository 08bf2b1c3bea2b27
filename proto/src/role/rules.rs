//! Rules several kinds share (account names, paths, modes), and [`Table`], the
//! resource table being checked, which reports a broken rule at its field.

use std::ops::Range;

use toml::Spanned;

use super::content::{MAX_COMMAND_BYTES, PendingContent, PendingText};
use super::diagnostic::{Diags, clip};

/// The longest path the kernel takes (`PATH_MAX`, counting the final NUL).
pub const MAX_PATH_BYTES: usize = 4095;
/// The longest name of one path component (`NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// The longest name of a package, a service or an exec.
pub const MAX_NAME_BYTES: usize = 255;

pub(super) const ACCOUNT_RULE: &str = "user and group names start with a lowercase letter or _, then lowercase letters, digits, _ or - (at most 32)";

/// What [`is_role_name`] accepts, as a fix to show.
pub const ROLE_NAME_RULE: &str =
    "use 1 to 63 lowercase letters, digits and dashes, starting with a letter or digit";

/// A role's name (role.toml's `name`), and a channel's.
pub fn is_role_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.len() <= 63
}

pub(super) fn is_account_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && s.len() <= 32
}

/// An absolute, normalized path: no `.`/`..` components, no `//`, no trailing `/`.
/// At most [`MAX_PATH_BYTES`] long, each component at most
/// [`MAX_COMPONENT_BYTES`], no control characters.
pub fn check_abs_path(p: &str) -> Result<(), &'static str> {
    check_path_text(p)?;
    if !p.starts_with('/') {
        return Err("must be absolute (start with /)");
    }
    if p == "/" {
        return Err("cannot be the root directory");
    }
    if p.ends_with('/') {
        return Err("must not end with /");
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

/// The rule for a shell command, as written or as rendered: not empty, at
/// most [`MAX_COMMAND_BYTES`], and no control character other than a line
/// break or a tab.
pub fn check_command(command: &str) -> Result<(), String> {
    if command.trim().is_empty() {
        Err("is empty".into())
    } else if command.len() > MAX_COMMAND_BYTES {
        Err(format!("is longer than {MAX_COMMAND_BYTES} bytes"))
    } else if command.contains(|c: char| c.is_control() && c != '\n' && c != '\t') {
        Err("contains a control character other than a line break or a tab".into())
    } else {
        Ok(())
    }
}

/// A path inside the role (a bundle's file, a `template` or `source` name):
/// relative, `/`-separated, without `.`, `..` or empty components, no
/// backslash, and within the limits of [`check_path_text`]. The one rule for
/// both, so that what a role names is what a bundle can hold.
pub fn check_rel_path(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("is empty");
    }
    check_path_text(p)?;
    if p.starts_with('/') {
        return Err("is absolute; it must be relative to the role");
    }
    if p.contains('\\') {
        return Err("contains a backslash");
    }
    for part in p.split('/') {
        match part {
            "" => return Err("contains an empty component"),
            "." | ".." => return Err("contains . or .."),
            _ => {}
        }
    }
    Ok(())
}

/// What any path must be to exist on disk: not too long, no control
/// characters (a NUL cannot be in a path; a newline breaks every tool that
/// lists paths).
pub fn check_path_text(p: &str) -> Result<(), &'static str> {
    if p.len() > MAX_PATH_BYTES {
        return Err("is longer than 4095 bytes");
    }
    if p.split('/').any(|c| c.len() > MAX_COMPONENT_BYTES) {
        return Err("has a component longer than 255 bytes");
    }
    if p.contains(char::is_control) {
        return Err("contains a control character");
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

/// One resource table (`[[file]]`, …) whose fields a kind is checking: every
/// problem is reported with the table as context.
pub(super) struct Table<'t, 'a> {
    diags: &'t mut Diags<'a>,
    /// What the problems are in: `[[file]] "/etc/motd"`.
    pub(super) context: String,
    /// The whole table, for a problem no single field holds.
    pub(super) span: Range<usize>,
    /// Fields already reported and left out: checks must not call them missing.
    pub(super) dropped: Vec<String>,
    /// Content to read from a template or a source once every table is read
    /// (a template sees every var, wherever `[vars]` is written).
    pub(super) pending_content: Option<PendingContent>,
    /// Fields that are templates, rendered once every table is read.
    pub(super) pending_texts: Vec<PendingText>,
}

impl<'t, 'a> Table<'t, 'a> {
    pub(super) fn new(
        diags: &'t mut Diags<'a>,
        context: String,
        span: Range<usize>,
        dropped: Vec<String>,
    ) -> Self {
        Table {
            diags,
            context,
            span,
            dropped,
            pending_content: None,
            pending_texts: Vec::new(),
        }
    }

    pub(super) fn error(
        &mut self,
        span: Range<usize>,
        field: Option<&str>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.diags
            .error(span, Some(&self.context), field, message, help);
    }

    /// Fields of a `kind` ("a file") with state = "absent", where only its
    /// `key` (its name or path) says what to remove and nothing reads them:
    /// each one set (its span given) is an error rather than a surprise, all
    /// reported at once.
    pub(super) fn set_when_absent(
        &mut self,
        (kind, key): (&str, &str),
        fields: &[(&str, Option<Range<usize>>)],
    ) {
        let noun = kind.split_once(' ').map_or(kind, |(_, noun)| noun);
        for (field, span) in fields {
            if let Some(span) = span {
                self.error(
                    span.clone(),
                    Some(field),
                    format!("`{field}` cannot be set on {kind} with state = \"absent\""),
                    Some(format!("an absent {noun} needs only its {key}")),
                );
            }
        }
    }

    /// Checks `text`, the shell command of `field` as written (an exec's
    /// `command`, `unless` and `onlyif`, a file's `validate`, a timer's
    /// `command`): not empty, at most [`MAX_COMMAND_BYTES`], and no control
    /// character other than a line break or a tab. Returns whether it passed.
    pub(super) fn check_command(&mut self, text: &Spanned<String>, field: &str) -> bool {
        let Err(why) = check_command(text.get_ref()) else {
            return true;
        };
        let what = match field {
            "command" => "the command".to_string(),
            _ => format!("the `{field}` command"),
        };
        self.error(text.span(), Some(field), format!("{what} {why}"), None);
        false
    }

    /// Checks a name against `valid`; `rule` says what a valid one looks like.
    pub(super) fn check_name(
        &mut self,
        name: &Spanned<String>,
        field: &str,
        valid: fn(&str) -> bool,
        rule: &str,
    ) -> bool {
        let n = name.get_ref();
        if n.len() > MAX_NAME_BYTES {
            self.error(
                name.span(),
                Some(field),
                format!(
                    "name {:?} is {} bytes long, more than {MAX_NAME_BYTES}",
                    clip(n),
                    n.len()
                ),
                Some(rule.to_string()),
            );
            return false;
        }
        if valid(n) {
            return true;
        }
        self.error(
            name.span(),
            Some(field),
            format!("invalid name {:?}", clip(n)),
            Some(rule.to_string()),
        );
        false
    }

    pub(super) fn check_abs_path(&mut self, path: &Spanned<String>, field: &str) -> bool {
        match check_abs_path(path.get_ref()) {
            Ok(()) => true,
            Err(why) => {
                self.error(
                    path.span(),
                    Some(field),
                    format!("invalid path {:?}: {why}", clip(path.get_ref())),
                    None,
                );
                false
            }
        }
    }

    /// The `mode` field as a number, if set and valid.
    pub(super) fn mode(&mut self, mode: Option<Spanned<String>>) -> Option<u32> {
        let mode = mode?;
        match parse_mode(mode.get_ref()) {
            Ok(m) => Some(m),
            Err(why) => {
                self.error(
                    mode.span(),
                    Some("mode"),
                    format!("invalid mode {:?}: {why}", clip(mode.get_ref())),
                    Some("write the mode as an octal string, like \"0644\" or \"0755\"".into()),
                );
                None
            }
        }
    }

    /// An `owner` or `group` field: a user or group name, if set.
    pub(super) fn account(&mut self, name: Option<Spanned<String>>, field: &str) -> Option<String> {
        let name = name?;
        self.check_name(&name, field, is_account_name, ACCOUNT_RULE);
        Some(name.into_inner())
    }
}
