//! A run report for people: one block per resource that changed, would
//! change, failed or was skipped, then a summary line. The server shows a
//! stored report so; the agent prints each resource's block as it finishes
//! (with its duration, unchanged ones too), then the summary line.
//!
//! Every string in a report comes from a role or a node, so each is printed
//! through [`crate::terminal::escape`]: a hostile resource id or diff line
//! shows its control characters instead of sending them to the terminal.

use std::fmt::Write;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{ResourceReport, ResourceStatus, RunReport};
use crate::bundle::short_digest;
use crate::terminal::escape;

/// Indent of the lines under a resource.
const INDENT: &str = "    ";

impl RunReport {
    /// The report as printed for people, ending in a newline: the block of
    /// every resource that did not stay unchanged, then [`RunReport::human_summary`].
    pub fn human(&self) -> String {
        let mut out = String::new();
        for r in &self.resources {
            if r.status != ResourceStatus::Unchanged {
                out.push_str(&r.human(false));
            }
        }
        out.push_str(&self.human_summary());
        out
    }

    /// The closing line: what the run did in all, on which node, how long it took.
    pub fn human_summary(&self) -> String {
        let s = &self.summary;
        let changed = if self.noop {
            format!("{} would change", s.would_change)
        } else {
            format!("{} changed", s.changed)
        };
        format!(
            "{} role {} ({}) on {}: {changed}, {} failed, {} skipped, {} unchanged ({}) in {}\n",
            if self.noop { "Checked" } else { "Applied" },
            escape(&self.role),
            escape(short_digest(&self.role_digest)),
            escape(&self.node),
            s.failed,
            s.skipped,
            s.unchanged,
            count(s.total.into(), "resource"),
            self.elapsed(),
        )
    }

    /// From start to finish, `9.8 ms` or `8.40 s`; `?` if either time is unreadable.
    fn elapsed(&self) -> String {
        let parse = |s: &str| OffsetDateTime::parse(s, &Rfc3339).ok();
        match parse(&self.started_at)
            .zip(parse(&self.finished_at))
            .map(|(a, b)| (b - a).as_seconds_f64())
        {
            Some(secs) => seconds(secs),
            None => "?".into(),
        }
    }
}

impl ResourceReport {
    /// One resource for people, ending in a newline: its status and id (with
    /// `duration`, how long it took), then its changes, diff and error,
    /// indented.
    pub fn human(&self, duration: bool) -> String {
        let mut out = String::new();
        let label = match self.status {
            ResourceStatus::Unchanged => "unchanged",
            ResourceStatus::Changed => "changed",
            ResourceStatus::WouldChange => "would change",
            ResourceStatus::Failed => "FAILED",
            ResourceStatus::Skipped => "skipped",
        };
        let _ = write!(out, "{label:<12} {}", escape(&self.id));
        if duration {
            let _ = write!(out, " ({})", seconds(self.duration_us as f64 / 1e6));
        }
        out.push('\n');
        for c in &self.changes {
            let property = escape(&c.property);
            let after = escape(&c.after);
            let _ = if c.before.is_empty() {
                writeln!(out, "{INDENT}{property}: {after}")
            } else {
                writeln!(out, "{INDENT}{property}: {} → {after}", escape(&c.before))
            };
        }
        if let Some(diff) = &self.diff {
            for line in diff.split_terminator('\n') {
                let _ = writeln!(out, "{INDENT}{}", escape(line));
            }
        }
        if let Some(err) = &self.error {
            // A command's error carries its stderr on further lines: keep
            // them under the first, aligned after `error: `.
            let mut lines = err.split_terminator('\n');
            let first = lines.next().unwrap_or_default();
            let _ = writeln!(out, "{INDENT}error: {}", escape(first));
            for line in lines {
                let _ = writeln!(out, "{INDENT}       {}", escape(line));
            }
        }
        out
    }
}

/// `n` things for people: `1 resource`, `2 resources`, `0 resources`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A duration for people: `9.8 ms` under a second, else `8.40 s`.
fn seconds(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1000.0)
    } else {
        format!("{secs:.2} s")
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PropertyChange, RunSummary};
    use super::*;

    fn resource(id: &str, status: ResourceStatus) -> ResourceReport {
        ResourceReport {
            id: id.into(),
            status,
            changes: vec![],
            diff: None,
            duration_us: 5,
            error: None,
        }
    }

    fn report(noop: bool, finished_at: &str, resources: Vec<ResourceReport>) -> RunReport {
        RunReport {
            run_id: "r1".into(),
            node: "web-1".into(),
            role: "web".into(),
            role_digest: format!("sha256:{}", "aa3cb36ec69e".repeat(5)),
            noop,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: finished_at.into(),
            agent_version: "0.1.0".into(),
            channel: String::new(),
            role_version: 0,
            from_cache: false,
            summary: RunSummary::of(&resources),
            resources,
        }
    }

    #[test]
    fn a_run_lists_what_it_did_then_sums_up() {
        let mut file = resource("file:/etc/motd", ResourceStatus::Changed);
        file.changes = vec![
            PropertyChange::new("ensure", "link", "file"),
            PropertyChange::new("refresh", "", "restarted"),
        ];
        file.diff = Some("--- /etc/motd\n+++ /etc/motd\n@@ -0,0 +1 @@\n+hello\n".into());
        let mut boom = resource("exec:boom", ResourceStatus::Failed);
        boom.error = Some("exit status 3\nstderr: no\nsuch thing".into());
        let mut skipped = resource("service:nginx", ResourceStatus::Skipped);
        skipped.error = Some("dependency exec:boom failed".into());
        let r = report(
            false,
            "2026-01-01T00:00:08.4Z",
            vec![
                resource("package:nginx", ResourceStatus::Unchanged),
                file,
                boom,
                skipped,
            ],
        );
        assert_eq!(
            r.human(),
            "\
changed      file:/etc/motd
    ensure: link → file
    refresh: restarted
    --- /etc/motd
    +++ /etc/motd
    @@ -0,0 +1 @@
    +hello
FAILED       exec:boom
    error: exit status 3
           stderr: no
           such thing
skipped      service:nginx
    error: dependency exec:boom failed
Applied role web (sha256:aa3cb36ec69e) on web-1: 1 changed, 1 failed, 1 skipped, 1 unchanged (4 resources) in 8.40 s
"
        );
    }

    #[test]
    fn a_noop_run_says_what_would_change() {
        let mut mode = resource("directory:/srv/www", ResourceStatus::WouldChange);
        mode.changes = vec![PropertyChange::new("mode", "0700", "0755")];
        let r = report(true, "2026-01-01T00:00:00.0098Z", vec![mode]);
        assert_eq!(
            r.human(),
            "\
would change directory:/srv/www
    mode: 0700 → 0755
Checked role web (sha256:aa3cb36ec69e) on web-1: 1 would change, 0 failed, 0 skipped, 0 unchanged (1 resource) in 9.8 ms
"
        );
        let r = report(true, "not a time", vec![]);
        assert!(r.human().ends_with(" in ?\n"), "{}", r.human());
    }

    #[test]
    fn hostile_strings_cannot_reach_the_terminal() {
        // What a role could put in a path, a file's content or a command's
        // output: clear the screen, retitle the window, fake a summary line.
        let mut file = resource("file:/tmp/\u{1b}[2Jx", ResourceStatus::Changed);
        file.changes = vec![PropertyChange::new("owner", "a\u{7}", "b\nApplied role")];
        file.diff = Some("--- x\n+++ x\n@@ -1 +1 @@\n-\u{1b}]0;owned\u{7}\r\n+ok\u{202e}\n".into());
        file.error = Some("bad\u{9b}31m".into());
        let mut r = report(false, "2026-01-01T00:00:01Z", vec![file]);
        r.node = "web-1\u{1b}[1A".into();
        let text = r.human();
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
            "{text:?}"
        );
        assert_eq!(
            text,
            "\
changed      file:/tmp/\\u{1b}[2Jx
    owner: a\\u{7} → b\\nApplied role
    --- x
    +++ x
    @@ -1 +1 @@
    -\\u{1b}]0;owned\\u{7}\\r
    +ok\\u{202e}
    error: bad\\u{9b}31m
Applied role web (sha256:aa3cb36ec69e) on web-1\\u{1b}[1A: 1 changed, 0 failed, 0 skipped, 0 unchanged (1 resource) in 1.00 s
"
        );
    }

    #[test]
    fn a_resource_alone_with_its_duration() {
        let mut boom = resource("exec:boom", ResourceStatus::Failed);
        boom.duration_us = 8_400_000;
        boom.error = Some("exit status 3\nstderr: no".into());
        assert_eq!(
            boom.human(true),
            "FAILED       exec:boom (8.40 s)\n    error: exit status 3\n           stderr: no\n"
        );
        let ok = resource("package:nginx", ResourceStatus::Unchanged);
        assert_eq!(ok.human(true), "unchanged    package:nginx (0.0 ms)\n");
        assert_eq!(ok.human(false), "unchanged    package:nginx\n");
    }
}
