//! A run's progress as it happens. The engine tells an [`Observer`] when each
//! resource starts and when it finishes; observers only watch, the engine
//! alone decides.
//!
//! [`Printer`] is what `cairn-agent apply` shows people: each resource's
//! block (status, id, duration; changes, diff, error) the moment it finishes,
//! so cloud-init's console and the journal show a first boot's progress
//! instead of silence until the end. On a terminal it also shows the resource
//! in progress on a status line that the next output clears; anywhere else
//! (a pipe, a file, the journal) it writes nothing transient.

use std::io::{IsTerminal, Write};

use cairn_proto::report::ResourceReport;
use cairn_proto::role::ResourceId;
use cairn_proto::terminal::escape;

/// Told about each resource of a run, in the order the engine takes them.
pub trait Observer {
    /// The engine takes resource `index` (from 0) of `total`.
    fn started(&mut self, index: usize, total: usize, id: &ResourceId) {
        let _ = (index, total, id);
    }

    /// The engine is done with a resource; `report` is what the run report
    /// will hold for it.
    fn finished(&mut self, report: &ResourceReport) {
        let _ = report;
    }
}

/// Watches nothing: runs whose caller prints the report as a whole (JSON).
pub struct Silent;

impl Observer for Silent {}

/// The longest status line shown, in characters; the terminal cuts it
/// shorter (line wrap is off while it is written).
const STATUS_MAX: usize = 200;
/// Clears the terminal's current line and returns to its start.
const CLEAR_LINE: &str = "\r\x1b[2K";
/// Turn the terminal's line wrap off and on: a status line longer than the
/// terminal is cut, never wrapped onto a line the next clear would miss.
const WRAP_OFF: &str = "\x1b[?7l";
const WRAP_ON: &str = "\x1b[?7h";

/// Prints each finished resource's block to `out`. Output errors (a closed
/// pipe) are ignored here: progress is a courtesy, and the caller's final
/// write reports them.
pub struct Printer<W: Write> {
    out: W,
    /// Whether `out` is a terminal: only then is a status line shown.
    terminal: bool,
    /// Whether a status line is on the screen now, to be cleared.
    status_shown: bool,
}

impl Printer<std::io::Stdout> {
    /// Progress on standard output, with a status line when it is a terminal.
    pub fn stdout() -> Self {
        let out = std::io::stdout();
        let terminal = out.is_terminal();
        Printer::new(out, terminal)
    }
}

impl<W: Write> Printer<W> {
    /// Progress on `out`; `terminal` says whether to show a status line.
    pub fn new(out: W, terminal: bool) -> Self {
        Printer {
            out,
            terminal,
            status_shown: false,
        }
    }

    /// Clears the status line, if one is shown.
    fn clear_status(&mut self) {
        if self.status_shown {
            let _ = self.out.write_all(CLEAR_LINE.as_bytes());
            self.status_shown = false;
        }
    }
}

impl<W: Write> Observer for Printer<W> {
    fn started(&mut self, index: usize, total: usize, id: &ResourceId) {
        if !self.terminal {
            return;
        }
        let text: String = format!("[{}/{total}] {} …", index + 1, escape(&id.to_string()))
            .chars()
            .take(STATUS_MAX)
            .collect();
        let line = format!("{CLEAR_LINE}{WRAP_OFF}{text}{WRAP_ON}");
        let _ = self.out.write_all(line.as_bytes());
        let _ = self.out.flush();
        self.status_shown = true;
    }

    fn finished(&mut self, report: &ResourceReport) {
        self.clear_status();
        // One write per resource, flushed at once: the line is visible while
        // the next resource runs.
        let _ = self.out.write_all(report.human(true).as_bytes());
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::report::ResourceStatus;

    use super::*;

    fn report(id: &str, status: ResourceStatus) -> ResourceReport {
        ResourceReport {
            id: id.into(),
            status,
            changes: vec![],
            diff: None,
            duration_us: 1500,
            error: None,
        }
    }

    fn id(s: &str) -> ResourceId {
        s.parse().unwrap()
    }

    #[test]
    fn off_a_terminal_only_finished_resources_are_written() {
        let mut out = Vec::new();
        let mut p = Printer::new(&mut out, false);
        p.started(0, 2, &id("file:/etc/motd"));
        p.finished(&report("file:/etc/motd", ResourceStatus::Changed));
        p.started(1, 2, &id("exec:boom"));
        let mut boom = report("exec:boom", ResourceStatus::Failed);
        boom.error = Some("exit status 3".into());
        p.finished(&boom);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "changed      file:/etc/motd (1.5 ms)\nFAILED       exec:boom (1.5 ms)\n    error: exit status 3\n"
        );
    }

    #[test]
    fn on_a_terminal_the_resource_in_progress_shows_until_it_finishes() {
        let mut out = Vec::new();
        let mut p = Printer::new(&mut out, true);
        p.started(0, 3, &id("package:nginx"));
        p.finished(&report("package:nginx", ResourceStatus::Unchanged));
        p.started(1, 3, &id("service:nginx\u{1b}[2J"));
        p.finished(&report("service:nginx", ResourceStatus::Changed));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "\r\x1b[2K\x1b[?7l[1/3] package:nginx …\x1b[?7h\r\x1b[2K\
             unchanged    package:nginx (1.5 ms)\n\
             \r\x1b[2K\x1b[?7l[2/3] service:nginx\\u{1b}[2J …\x1b[?7h\r\x1b[2K\
             changed      service:nginx (1.5 ms)\n"
        );
    }
}
