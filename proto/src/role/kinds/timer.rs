//! `[[timer]]`: a systemd timer and the oneshot service it starts, written as
//! unit files under `/etc/systemd/system`, enabled and started; or, with
//! state = "absent", stopped, disabled and both files removed. It follows the
//! user the command runs as.

use serde::Deserialize;
use toml::Spanned;

use super::{Presence, ResourceKind, path_requires};
use crate::role::diagnostic::clip;
use crate::role::id::ResourceId;
use crate::role::rules::Table;

/// The longest name taken, leaving room for `.service` within a unit name's
/// 255 bytes.
const MAX_TIMER_NAME_BYTES: usize = 200;
/// The longest `on_calendar` or `description`.
const MAX_TIMER_TEXT_BYTES: usize = 255;
/// Where the unit files go: the administrator's units, which override the
/// packages' ones.
const UNIT_DIR: &str = "/etc/systemd/system";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// The units are `NAME.timer` and `NAME.service`.
    pub name: String,
    /// Absent: the timer stopped and disabled, its two unit files removed;
    /// the other fields are then empty.
    pub state: Presence,
    /// When it fires, in systemd's calendar syntax (`daily`, `*-*-* 04:00:00`).
    pub on_calendar: String,
    /// Run with `/bin/sh -c`, as an exec's command.
    pub command: String,
    /// Who the command runs as; root when `None`.
    pub user: Option<String>,
    pub description: Option<String>,
}

impl Timer {
    pub fn timer_unit(&self) -> String {
        format!("{}.timer", self.name)
    }

    pub fn service_unit(&self) -> String {
        format!("{}.service", self.name)
    }

    pub fn timer_path(&self) -> String {
        format!("{UNIT_DIR}/{}", self.timer_unit())
    }

    pub fn service_path(&self) -> String {
        format!("{UNIT_DIR}/{}", self.service_unit())
    }

    fn description_line(&self) -> String {
        let d = match &self.description {
            Some(d) => d.clone(),
            None => format!("Cairn timer {}", self.name),
        };
        // `%` starts a specifier in every unit setting.
        format!("Description={}\n", d.replace('%', "%%"))
    }

    /// The content of `NAME.timer`.
    pub fn timer_file(&self) -> String {
        format!(
            "# Managed by Cairn ([[timer]] {}); changes here are replaced.\n\
             [Unit]\n{}\n[Timer]\nOnCalendar={}\nUnit={}\n\n[Install]\nWantedBy=timers.target\n",
            self.name,
            self.description_line(),
            self.on_calendar,
            self.service_unit(),
        )
    }

    /// The content of `NAME.service`: a oneshot running the command with
    /// `/bin/sh -c`, quoted so that systemd hands the shell the command
    /// exactly as the role wrote it.
    pub fn service_file(&self) -> String {
        let user = match &self.user {
            Some(u) => format!("User={u}\n"),
            None => String::new(),
        };
        format!(
            "# Managed by Cairn ([[timer]] {}); changes here are replaced.\n\
             [Unit]\n{}\n[Service]\nType=oneshot\n{user}ExecStart=/bin/sh -c {}\n",
            self.name,
            self.description_line(),
            exec_quote(&self.command),
        )
    }
}

/// One argument of `ExecStart=`, double-quoted: systemd unescapes C escapes
/// inside the quotes (so `\`, `"` and a line break are escaped), expands
/// specifiers (`%` → `%%`) and environment variables (`$` → `$$`).
fn exec_quote(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for c in arg.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::role) struct RawTimer {
    name: Spanned<String>,
    on_calendar: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    description: Option<Spanned<String>>,
    state: Option<Spanned<Presence>>,
}

/// A unit name without its suffix: letters, digits, `_`, `-`, `.`, not
/// starting with `.` or `-` (no template `@`, no path).
fn is_timer_name(n: &str) -> bool {
    n.len() <= MAX_TIMER_NAME_BYTES
        && n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// What a calendar expression is made of (`Mon..Fri *-*-* 04:00:00
/// Europe/Berlin`): anything else, such as a line break, is refused.
fn is_calendar_text(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || " *-:.,/~+_".contains(c))
}

fn check_calendar(on_calendar: &Spanned<String>, t: &mut Table<'_, '_>) {
    let calendar = on_calendar.get_ref();
    if calendar.trim().is_empty()
        || calendar.len() > MAX_TIMER_TEXT_BYTES
        || !is_calendar_text(calendar)
    {
        t.error(
            on_calendar.span(),
            Some("on_calendar"),
            format!("invalid calendar expression {:?}", clip(calendar)),
            Some(
                "write it as systemd.time(7) does, like \"daily\" or \"Mon..Fri *-*-* 04:00:00\" \
                 (letters, digits, spaces and * - : . , / ~ + _)"
                    .into(),
            ),
        );
    }
}

impl ResourceKind for Timer {
    type Raw = RawTimer;

    fn name(raw: &RawTimer) -> &Spanned<String> {
        &raw.name
    }

    fn check(r: RawTimer, t: &mut Table<'_, '_>) -> Timer {
        t.check_name(
            &r.name,
            "name",
            is_timer_name,
            "a timer name is letters, digits, _ . and - (the units are NAME.timer and NAME.service)",
        );
        let state = r.state.map_or(Presence::Present, Spanned::into_inner);
        if state == Presence::Absent {
            t.set_when_absent(
                ("a timer", "name"),
                &[
                    ("on_calendar", r.on_calendar.as_ref().map(Spanned::span)),
                    ("command", r.command.as_ref().map(Spanned::span)),
                    ("user", r.user.as_ref().map(Spanned::span)),
                    ("description", r.description.as_ref().map(Spanned::span)),
                ],
            );
            return Timer {
                name: r.name.into_inner(),
                state,
                on_calendar: String::new(),
                command: String::new(),
                user: None,
                description: None,
            };
        }
        let missing: Vec<String> = [("on_calendar", &r.on_calendar), ("command", &r.command)]
            .into_iter()
            .filter(|(f, v)| v.is_none() && !t.dropped.iter().any(|d| d == f))
            .map(|(f, _)| format!("`{f}`"))
            .collect();
        if !missing.is_empty() {
            t.error(
                t.span.start..t.span.start,
                None,
                format!(
                    "a timer needs {}, or state = \"absent\"",
                    missing.join(" and ")
                ),
                None,
            );
        }
        if let Some(on_calendar) = &r.on_calendar {
            check_calendar(on_calendar, t);
        }
        if let Some(command) = &r.command {
            t.check_command(command, "command");
        }
        if let Some(d) = &r.description
            && (d.get_ref().len() > MAX_TIMER_TEXT_BYTES || d.get_ref().contains(char::is_control))
        {
            t.error(
                d.span(),
                Some("description"),
                format!(
                    "invalid description {:?}: one line of at most {MAX_TIMER_TEXT_BYTES} bytes",
                    clip(d.get_ref())
                ),
                None,
            );
        }
        Timer {
            name: r.name.into_inner(),
            state,
            on_calendar: r.on_calendar.map(Spanned::into_inner).unwrap_or_default(),
            command: r.command.map(Spanned::into_inner).unwrap_or_default(),
            user: t.account(r.user, "user"),
            description: r.description.map(Spanned::into_inner),
        }
    }

    fn implicit_requires(&self) -> Vec<ResourceId> {
        path_requires(&self.timer_path(), self.user.as_deref(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_quoted_for_exec_start() {
        assert_eq!(exec_quote("echo hi"), "\"echo hi\"");
        assert_eq!(
            exec_quote("printf '%s\\n' \"$HOME\" 100%\nid"),
            "\"printf '%%s\\\\n' \\\"$$HOME\\\" 100%%\\nid\""
        );
    }
}
