//! What changed between two versions of a role, file by file.

use cairn_proto::bundle::RoleBundle;
use serde::Serialize;
use similar::TextDiff;

/// Lines of unchanged context around each change.
const CONTEXT: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Modified,
}

/// One file that differs between the two bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDiff {
    pub path: String,
    pub change: Change,
    /// Either side is not text (not UTF-8, or contains NUL): no line diff.
    pub binary: bool,
    /// Size in bytes in the old bundle; absent for an added file.
    pub old_size: Option<usize>,
    pub new_size: Option<usize>,
    /// Unified diff (`---`/`+++` headers, `@@` hunks); absent for binary files.
    pub diff: Option<String>,
}

impl FileDiff {
    /// The diff as printed for people: the unified diff, or one line for a binary file.
    pub fn text(&self) -> String {
        match &self.diff {
            Some(d) => d.clone(),
            None => {
                let size = |s: Option<usize>| {
                    s.map_or_else(|| "absent".to_string(), |n| format!("{n} bytes"))
                };
                format!(
                    "Binary file {} {} ({} -> {})\n",
                    self.path,
                    match self.change {
                        Change::Added => "added",
                        Change::Removed => "removed",
                        Change::Modified => "differs",
                    },
                    size(self.old_size),
                    size(self.new_size)
                )
            }
        }
    }
}

/// Every file that differs, in path order, including added and removed files.
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
        .filter_map(|path| file(path, old.get(path), new.get(path)))
        .collect()
}

fn file(path: &str, old: Option<&[u8]>, new: Option<&[u8]>) -> Option<FileDiff> {
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
    let diff = (!binary).then(|| {
        let a = old_text.flatten().unwrap_or("");
        let b = new_text.flatten().unwrap_or("");
        let old_name = if old.is_some() {
            format!("a/{path}")
        } else {
            "/dev/null".into()
        };
        let new_name = if new.is_some() {
            format!("b/{path}")
        } else {
            "/dev/null".into()
        };
        TextDiff::from_lines(a, b)
            .unified_diff()
            .context_radius(CONTEXT)
            .header(&old_name, &new_name)
            .to_string()
    });
    Some(FileDiff {
        path: path.to_string(),
        change,
        binary,
        old_size: old.map(<[u8]>::len),
        new_size: new.map(<[u8]>::len),
        diff,
    })
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
        assert!(d[0].binary && d[0].diff.is_none());
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
}
