//! Unified diffs of file content, for people: the content drift in the
//! agent's run report, `cairn role diff`, and whatever shows them later.
//!
//! Only text gets a line diff. Content that is not UTF-8, or holds a NUL, is
//! binary; content above [`MAX_INPUT`] bytes is too large: nobody reads
//! megabytes of diff, and a report carrying one grows as large. Either is
//! summarized in one line instead. A line diff costs time in proportion to
//! size times changes, so one that takes longer than [`TIMEOUT`] (two long
//! files with nothing in common) is approximated: still a correct diff, but
//! not the shortest one.
//!
//! The diff is data, printed raw in JSON; print it on a terminal through
//! [`crate::terminal::escape_lines`].

use std::time::Duration;

use serde::Serialize;
use similar::TextDiff;

use crate::bundle::RoleBundle;

/// Lines of unchanged context around each change.
pub const CONTEXT: usize = 3;

/// Content larger than this, on either side, is summarized, not diffed.
pub const MAX_INPUT: usize = 1 << 20;

/// How long the search for the shortest diff may take before it approximates.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// How the two versions are named on the `---` and `+++` lines. An absent
/// version is `/dev/null` with either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// `a/PATH` and `b/PATH`, as git names them: for a path inside a role.
    Git,
    /// The path itself on both lines: for an absolute path on a node.
    Path,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Modified,
}

/// One file that differs between two versions. The field names are part of
/// `cairn role diff --output json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDiff {
    pub path: String,
    pub change: Change,
    /// Either side is not text (not UTF-8, or contains NUL): no line diff.
    pub binary: bool,
    /// Either side is larger than [`MAX_INPUT`]: no line diff.
    pub too_large: bool,
    /// Size in bytes of the old version; absent for an added file.
    pub old_size: Option<usize>,
    pub new_size: Option<usize>,
    /// Unified diff (`---`/`+++` headers, `@@` hunks); absent when binary or too large.
    pub diff: Option<String>,
}

impl FileDiff {
    /// The unified diff, or one line saying how the file changed when there is none.
    pub fn text(&self) -> String {
        if let Some(d) = &self.diff {
            return d.clone();
        }
        let size =
            |s: Option<usize>| s.map_or_else(|| "absent".to_string(), |n| format!("{n} bytes"));
        let change = match self.change {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Modified => "differs",
        };
        let (kind, why) = if self.binary {
            ("Binary file", "")
        } else {
            ("File", ", too large to diff")
        };
        format!(
            "{kind} {} {change} ({} -> {}){why}\n",
            self.path,
            size(self.old_size),
            size(self.new_size)
        )
    }
}

/// How the file at `path` changed from `old` to `new` (`None`: absent), or
/// `None` when both are the same.
pub fn file(
    path: &str,
    old: Option<&[u8]>,
    new: Option<&[u8]>,
    labels: Labels,
) -> Option<FileDiff> {
    let change = match (old, new) {
        (None, None) => return None,
        (Some(a), Some(b)) if a == b => return None,
        (None, Some(_)) => Change::Added,
        (Some(_), None) => Change::Removed,
        (Some(_), Some(_)) => Change::Modified,
    };
    let old_text = old.map(as_text);
    let new_text = new.map(as_text);
    let binary = matches!(old_text, Some(None)) || matches!(new_text, Some(None));
    let too_large = [old, new]
        .into_iter()
        .flatten()
        .any(|d| d.len() > MAX_INPUT);
    let diff = (!binary && !too_large).then(|| {
        let label = |side: Option<&[u8]>, git_prefix: &str| match (side, labels) {
            (None, _) => "/dev/null".to_string(),
            (Some(_), Labels::Git) => format!("{git_prefix}{path}"),
            (Some(_), Labels::Path) => path.to_string(),
        };
        TextDiff::configure()
            .timeout(TIMEOUT)
            .diff_lines(
                old_text.flatten().unwrap_or(""),
                new_text.flatten().unwrap_or(""),
            )
            .unified_diff()
            .context_radius(CONTEXT)
            .header(&label(old, "a/"), &label(new, "b/"))
            .to_string()
    });
    Some(FileDiff {
        path: path.to_string(),
        change,
        binary,
        too_large,
        old_size: old.map(<[u8]>::len),
        new_size: new.map(<[u8]>::len),
        diff,
    })
}

/// Every file that differs between two versions of a role, in path order,
/// added and removed files included.
pub fn bundles(old: &RoleBundle, new: &RoleBundle) -> Vec<FileDiff> {
    let mut paths: Vec<&str> = old
        .files()
        .map(|(p, _)| p)
        .chain(new.files().map(|(p, _)| p))
        .collect();
    paths.sort_unstable();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|path| file(path, old.get(path), new.get(path), Labels::Git))
        .collect()
}

fn as_text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok().filter(|s| !s.contains('\0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(files: &[(&str, &[u8])]) -> RoleBundle {
        let mut b = RoleBundle::default();
        for (p, d) in files {
            b.insert((*p).to_string(), d.to_vec()).unwrap();
        }
        b
    }

    #[test]
    fn identical_bundles_have_no_diff() {
        let a = bundle(&[
            ("role.toml", b"[role]\nname = \"web\"\n"),
            ("files/x", b"\0\x01"),
        ]);
        assert_eq!(bundles(&a, &a.clone()), vec![]);
    }

    #[test]
    fn modified_added_and_removed_files() {
        let old = bundle(&[
            (
                "role.toml",
                b"[role]\nname = \"web\"\n\n[vars]\nport = 8080\n",
            ),
            ("templates/old.hbs", b"gone\n"),
            ("templates/same.hbs", b"same\n"),
        ]);
        let new = bundle(&[
            (
                "role.toml",
                b"[role]\nname = \"web\"\n\n[vars]\nport = 8081\n",
            ),
            ("templates/new.hbs", b"hello\nworld\n"),
            ("templates/same.hbs", b"same\n"),
        ]);
        let d = bundles(&old, &new);
        let summary: Vec<_> = d.iter().map(|f| (f.path.as_str(), f.change)).collect();
        assert_eq!(
            summary,
            [
                ("role.toml", Change::Modified),
                ("templates/new.hbs", Change::Added),
                ("templates/old.hbs", Change::Removed),
            ]
        );
        assert_eq!(
            d[0].diff.as_deref().unwrap(),
            "--- a/role.toml\n+++ b/role.toml\n@@ -2,4 +2,4 @@\n name = \"web\"\n \n [vars]\n-port = 8080\n+port = 8081\n"
        );
        assert_eq!(
            d[1].diff.as_deref().unwrap(),
            "--- /dev/null\n+++ b/templates/new.hbs\n@@ -0,0 +1,2 @@\n+hello\n+world\n"
        );
        assert_eq!(
            d[2].diff.as_deref().unwrap(),
            "--- a/templates/old.hbs\n+++ /dev/null\n@@ -1 +0,0 @@\n-gone\n"
        );
        assert_eq!(d[2].text(), d[2].diff.clone().unwrap());
        assert_eq!((d[1].old_size, d[1].new_size), (None, Some(12)));
        assert_eq!((d[2].old_size, d[2].new_size), (Some(5), None));
    }

    #[test]
    fn binary_files_are_summarized() {
        let old = bundle(&[("files/logo.png", b"\x89PNG\0\0\x01")]);
        let new = bundle(&[
            ("files/logo.png", b"\x89PNG\0\0\x02\x03"),
            ("files/blob", b"a\0b"),
        ]);
        let d = bundles(&old, &new);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].path, "files/blob");
        assert!(d[0].binary && !d[0].too_large && d[0].diff.is_none());
        assert_eq!(
            d[0].text(),
            "Binary file files/blob added (absent -> 3 bytes)\n"
        );
        assert_eq!(
            d[1].text(),
            "Binary file files/logo.png differs (7 bytes -> 8 bytes)\n"
        );
        // Text that becomes binary is binary too.
        let old = bundle(&[("f", b"text\n")]);
        let new = bundle(&[("f", &[0xff, 0xfe])]);
        assert!(bundles(&old, &new)[0].binary);
    }

    #[test]
    fn a_file_on_a_node_is_named_by_its_path() {
        let d = file(
            "/etc/motd",
            Some(b"one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\n"),
            Some(b"one\ntwo\nthree\nfour\nfive\nsix\nseven\nEIGHT\n"),
            Labels::Path,
        )
        .unwrap();
        assert_eq!(
            d.text(),
            "--- /etc/motd\n+++ /etc/motd\n@@ -5,4 +5,4 @@\n five\n six\n seven\n-eight\n+EIGHT\n"
        );
        // The agent diffs a missing file as empty content, not as /dev/null.
        let d = file("/etc/motd", Some(b""), Some(b"hi\n"), Labels::Path).unwrap();
        assert_eq!(
            d.text(),
            "--- /etc/motd\n+++ /etc/motd\n@@ -0,0 +1 @@\n+hi\n"
        );
        assert_eq!(
            file("/etc/motd", Some(b"x"), Some(b"x"), Labels::Path),
            None
        );
    }

    #[test]
    fn large_content_is_summarized_not_diffed() {
        let big = "line\n".repeat(MAX_INPUT / 5 + 1);
        let d = file(
            "files/big",
            Some(b"line\n"),
            Some(big.as_bytes()),
            Labels::Git,
        )
        .unwrap();
        assert!(d.too_large && !d.binary && d.diff.is_none());
        assert_eq!(
            d.text(),
            format!(
                "File files/big differs (5 bytes -> {} bytes), too large to diff\n",
                big.len()
            )
        );
        // Exactly the limit is still diffed.
        let limit = "x".repeat(MAX_INPUT);
        assert!(
            file("f", Some(b""), Some(limit.as_bytes()), Labels::Git)
                .unwrap()
                .diff
                .is_some()
        );
    }

    #[test]
    fn long_files_with_nothing_in_common_get_an_approximate_diff() {
        // Without the timeout this search takes minutes.
        let lines = |tag: &str| {
            (0..30_000)
                .map(|i| format!("{tag}{i}\n"))
                .collect::<String>()
        };
        let (old, new) = (lines("old "), lines("new "));
        let d = file("f", Some(old.as_bytes()), Some(new.as_bytes()), Labels::Git).unwrap();
        // Approximated, still correct: every old line removed, every new one added.
        let diff = d.diff.unwrap();
        let count = |prefix: &str| diff.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!((count("-old "), count("+new ")), (30_000, 30_000));
    }
}
