//! Run reports waiting for a server: one file per run under `reports/` in
//! the state directory, written before delivery is tried and removed only
//! once a server acknowledged it. A report is therefore delivered at least
//! once; the server stores it once (it deduplicates by run id).
//!
//! The spool is bounded in count and bytes: a long outage drops the oldest
//! reports, each with a log line, never the agent's disk.

use anyhow::{Context, Result, bail};
use cairn_proto::pb;
use prost::Message;

use crate::state::StateDir;

/// The spool's directory in the state directory.
pub const SPOOL_DIR: &str = "reports";

/// How much the spool keeps at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub count: usize,
    pub bytes: u64,
}

impl Default for Bounds {
    /// A day and more of 30-minute runs, and room for reports with diffs.
    fn default() -> Self {
        Bounds {
            count: 100,
            bytes: 16 << 20,
        }
    }
}

/// One spooled report, known from its file name: `NANOS.RUN_ID.BYTES.report`
/// (the time it was spooled, zero-padded so names sort oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub run_id: String,
    pub bytes: u64,
}

impl Entry {
    fn parse(name: &str) -> Option<Entry> {
        let mut parts = name.strip_suffix(".report")?.split('.');
        let (nanos, run_id, bytes) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || nanos.len() != 20 || !nanos.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(Entry {
            name: name.to_string(),
            run_id: run_id.to_string(),
            bytes: bytes.parse().ok()?,
        })
    }
}

/// The spool of the agent whose state directory is `state`.
pub struct Spool<'s> {
    state: &'s StateDir,
    bounds: Bounds,
}

impl<'s> Spool<'s> {
    pub fn new(state: &'s StateDir, bounds: Bounds) -> Self {
        Spool { state, bounds }
    }

    /// Keeps `request` until a server acknowledges it, then drops the oldest
    /// reports beyond the bounds, saying so on stderr.
    pub fn push(&self, request: &pb::ReportRequest) -> Result<()> {
        let report = request.report.as_ref().context("no report to spool")?;
        // The run id goes into a file name: only what a UUID is made of.
        let run_id = &report.run_id;
        if run_id.is_empty()
            || run_id.len() > 64
            || !run_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            bail!("cannot spool a report with run id {run_id:?}");
        }
        let data = request.encode_to_vec();
        let bytes = data.len() as u64;
        if bytes > self.bounds.bytes {
            eprintln!(
                "cairn-agent: the report of run {run_id} ({bytes} bytes) is larger than the \
                 whole report spool ({} bytes): it was not spooled",
                self.bounds.bytes
            );
            return Ok(());
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{nanos:020}.{run_id}.{bytes}.report");
        let write = || -> Result<()> {
            self.state.make_dir(SPOOL_DIR)?;
            self.state
                .write(&format!("{SPOOL_DIR}/{name}"), &data, 0o600)
        };
        write().with_context(|| format!("could not spool the report of run {run_id}"))?;
        self.trim()
    }

    /// Drops the oldest reports while the spool holds more than its bounds.
    fn trim(&self) -> Result<()> {
        let entries = self.pending()?;
        let mut count = entries.len();
        let mut bytes: u64 = entries.iter().map(|e| e.bytes).sum();
        for oldest in &entries {
            if count <= self.bounds.count && bytes <= self.bounds.bytes {
                break;
            }
            self.remove(oldest)?;
            eprintln!(
                "cairn-agent: the report spool is full ({} reports or {} bytes at most): \
                 dropped the oldest report, of run {}",
                self.bounds.count, self.bounds.bytes, oldest.run_id
            );
            count -= 1;
            bytes -= oldest.bytes;
        }
        Ok(())
    }

    /// The spooled reports, oldest first.
    pub fn pending(&self) -> Result<Vec<Entry>> {
        let names = self
            .state
            .list(SPOOL_DIR)
            .context("could not list the report spool")?;
        // Anything else there (an interrupted write's temporary file) is not a report.
        Ok(names.iter().filter_map(|n| Entry::parse(n)).collect())
    }

    /// The spooled report `entry`.
    pub fn read(&self, entry: &Entry) -> Result<pb::ReportRequest> {
        let path = self.path(entry);
        let read = || -> Result<pb::ReportRequest> {
            let data = self
                .state
                .read(&format!("{SPOOL_DIR}/{}", entry.name))?
                .context("it disappeared")?;
            Ok(pb::ReportRequest::decode(data.as_slice())?)
        };
        read().with_context(|| format!("could not read the spooled report {}", path.display()))
    }

    /// Removes `entry`: a server acknowledged it, or it cannot be delivered.
    pub fn remove(&self, entry: &Entry) -> Result<()> {
        self.state
            .remove(&format!("{SPOOL_DIR}/{}", entry.name))
            .with_context(|| {
                format!(
                    "could not remove the spooled report {}",
                    self.path(entry).display()
                )
            })
    }

    fn path(&self, entry: &Entry) -> std::path::PathBuf {
        self.state.path().join(SPOOL_DIR).join(&entry.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(run_id: &str, size: usize) -> pb::ReportRequest {
        pb::ReportRequest {
            report: Some(pb::RunReport {
                run_id: run_id.into(),
                node: "n1".into(),
                ..Default::default()
            }),
            facts_json: "x".repeat(size),
            ..Default::default()
        }
    }

    fn run_ids(spool: &Spool) -> Vec<String> {
        spool
            .pending()
            .unwrap()
            .into_iter()
            .map(|e| e.run_id)
            .collect()
    }

    #[test]
    fn reports_come_back_oldest_first_and_stay_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let spool = Spool::new(&state, Bounds::default());
        assert!(spool.pending().unwrap().is_empty());
        for id in ["c", "a", "b"] {
            spool.push(&request(id, 10)).unwrap();
        }
        assert_eq!(run_ids(&spool), ["c", "a", "b"]);
        let entries = spool.pending().unwrap();
        assert_eq!(spool.read(&entries[1]).unwrap(), request("a", 10));
        // Reading is not delivering: nothing goes until it is removed.
        assert_eq!(run_ids(&spool), ["c", "a", "b"]);
        spool.remove(&entries[0]).unwrap();
        assert_eq!(run_ids(&spool), ["a", "b"]);
        // Only the spool's own names count as reports.
        std::fs::write(dir.path().join("state/reports/notes.txt"), "x").unwrap();
        assert_eq!(run_ids(&spool), ["a", "b"]);
    }

    #[test]
    fn the_oldest_reports_go_when_a_bound_is_passed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let one = request("r0", 100).encoded_len() as u64;
        let spool = Spool::new(
            &state,
            Bounds {
                count: 3,
                bytes: 10 * one,
            },
        );
        for i in 0..5 {
            spool.push(&request(&format!("r{i}"), 100)).unwrap();
        }
        assert_eq!(run_ids(&spool), ["r2", "r3", "r4"]);

        // By bytes: a large report pushes out as many old ones as it needs.
        spool.push(&request("big", 100 + 7 * one as usize)).unwrap();
        assert_eq!(run_ids(&spool), ["r4", "big"]);
        // One larger than the whole spool is not kept, and drops nothing.
        spool
            .push(&request("huge", 100 + 20 * one as usize))
            .unwrap();
        assert_eq!(run_ids(&spool), ["r4", "big"]);
        let sizes: u64 = spool.pending().unwrap().iter().map(|e| e.bytes).sum();
        assert!(sizes <= 10 * one, "{sizes}");
    }

    #[test]
    fn run_ids_that_are_not_file_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let spool = Spool::new(&state, Bounds::default());
        for bad in ["", "../x", "a.b", "a/b"] {
            let err = spool.push(&request(bad, 1)).unwrap_err().to_string();
            assert!(err.contains("cannot spool"), "{bad}: {err}");
        }
        assert!(spool.pending().unwrap().is_empty());
    }
}
