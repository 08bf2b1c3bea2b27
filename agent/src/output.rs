//! Rendering a run report for people: one block per resource that changed,
//! would change, failed or was skipped, then a summary line.

use std::fmt::Write;

use cairn_proto::report::{ResourceStatus, RunReport};

pub fn human(report: &RunReport) -> String {
    let mut out = String::new();
    for r in &report.resources {
        let label = match r.status {
            ResourceStatus::Unchanged => continue,
            ResourceStatus::Changed => "changed",
            ResourceStatus::WouldChange => "would change",
            ResourceStatus::Failed => "FAILED",
            ResourceStatus::Skipped => "skipped",
        };
        let _ = writeln!(out, "{label:<12} {}", r.id);
        for c in &r.changes {
            let _ = match (c.before.is_empty(), r.status) {
                (true, _) => writeln!(out, "    {}: {}", c.property, c.after),
                _ => writeln!(out, "    {}: {} → {}", c.property, c.before, c.after),
            };
        }
        if let Some(diff) = &r.diff {
            for line in diff.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
        if let Some(err) = &r.error {
            let _ = writeln!(out, "    error: {err}");
        }
    }
    let s = &report.summary;
    let changed = if report.noop {
        format!("{} would change", s.would_change)
    } else {
        format!("{} changed", s.changed)
    };
    let _ = writeln!(
        out,
        "{} role {} ({}) on {}: {changed}, {} failed, {} skipped, {} unchanged ({} resources) in {}",
        if report.noop { "Checked" } else { "Applied" },
        report.role,
        short_digest(&report.role_digest),
        report.node,
        s.failed,
        s.skipped,
        s.unchanged,
        s.total,
        elapsed(report),
    );
    out
}

fn short_digest(d: &str) -> &str {
    d.get(..19).unwrap_or(d)
}

fn elapsed(report: &RunReport) -> String {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    let parse = |s: &str| OffsetDateTime::parse(s, &Rfc3339).ok();
    let Some(secs) = parse(&report.started_at)
        .zip(parse(&report.finished_at))
        .map(|(a, b)| (b - a).as_seconds_f64())
    else {
        return "?".into();
    };
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1000.0)
    } else {
        format!("{secs:.2} s")
    }
}
