//! What a caller below publisher reads of a stored role: everything but the
//! content of sensitive files and users' password hashes.
//!
//! A `[[file]]` with `sensitive = true` takes its content from one of three
//! places: `content` in role.toml, `source` (a file under `files/`) or
//! `template` (under `templates/`). Each is replaced by [`MARKER`]: the inline
//! value by editing that one TOML string (the rest of role.toml, with its
//! lines and comments, stays readable), a source or template whole. When the
//! role cannot be read that precisely (it no longer validates, or role.toml
//! and the validated role disagree on how many files are sensitive), every
//! file's content is replaced: nothing sensitive may slip through an odd
//! case. A `[[user]]`'s `password` is replaced the same way as inline content.

use std::collections::BTreeSet;

use cairn_proto::bundle::{MANIFEST, RoleBundle};
use cairn_proto::facts::Facts;
use cairn_proto::pb;
use cairn_proto::role::{self, Spec};
use toml_edit::{DocumentMut, TableLike};

/// What redacted content is replaced with.
pub const MARKER: &str = "(redacted: sensitive; a publisher can read it)\n";

/// `stored` with sensitive content replaced by [`MARKER`], and the paths
/// whose content was changed, in path order. CPU work in proportion to the
/// role (it validates it): run it off the async workers.
pub fn sensitive(stored: pb::Bundle) -> (pb::Bundle, Vec<String>) {
    let paths: Vec<Vec<u8>> = stored.files.iter().map(|f| f.path.clone()).collect();
    let precise = RoleBundle::from_wire(stored)
        .ok()
        .and_then(redact_sensitive);
    match precise {
        Some((bundle, redacted)) => (bundle.to_wire(), redacted),
        None => redact_all(paths),
    }
}

/// The bundle with its sensitive content replaced, or `None` when which
/// content is sensitive cannot be told for sure.
fn redact_sensitive(mut bundle: RoleBundle) -> Option<(RoleBundle, Vec<String>)> {
    let loaded = role::load(&bundle, &Facts::placeholder()).ok()?;
    let expected = loaded
        .resources
        .iter()
        .filter(|r| matches!(&r.spec, Spec::File(f) if f.sensitive))
        .count();
    let text = std::str::from_utf8(bundle.get(MANIFEST)?).ok()?;
    let mut doc: DocumentMut = text.parse().ok()?;
    let mut files = BTreeSet::new();
    let mut inline = false;
    let mut found = 0;
    let mut visit = |table: &mut dyn TableLike| -> Option<()> {
        let sensitive = match table.get("sensitive") {
            None => false,
            Some(item) => item.as_bool()?,
        };
        if !sensitive {
            return Some(());
        }
        found += 1;
        if let Some(content) = table.get_mut("content") {
            content.as_str()?;
            // One line: the lines after it keep their numbers (unless the
            // secret spanned several).
            *content = toml_edit::value(MARKER.trim_end());
            inline = true;
        }
        for (field, dir) in [("source", "files"), ("template", "templates")] {
            if let Some(name) = table.get(field) {
                files.insert(format!("{dir}/{}", name.as_str()?));
            }
        }
        Some(())
    };
    each_table(&mut doc, "file", &mut visit)?;
    if found != expected {
        return None;
    }
    // A user's password hash: always sensitive.
    let expected = loaded
        .resources
        .iter()
        .filter(|r| matches!(&r.spec, Spec::User(u) if u.password.is_some()))
        .count();
    let mut found = 0;
    each_table(&mut doc, "user", &mut |table| {
        if let Some(password) = table.get_mut("password") {
            password.as_str()?;
            *password = toml_edit::value(MARKER.trim_end());
            found += 1;
            inline = true;
        }
        Some(())
    })?;
    if found != expected {
        return None;
    }
    if inline {
        files.insert(MANIFEST.to_string());
        bundle
            .insert(MANIFEST.to_string(), doc.to_string().into_bytes())
            .ok()?;
    }
    for path in &files {
        if path != MANIFEST && bundle.get(path).is_some() {
            bundle
                .insert(path.clone(), MARKER.as_bytes().to_vec())
                .ok()?;
        }
    }
    let redacted = files
        .into_iter()
        .filter(|p| bundle.get(p).is_some())
        .collect();
    Some((bundle, redacted))
}

/// Runs `visit` on each `[[KIND]]` table of `doc`, or each inline table of
/// `KIND = [{ … }]`; `None` when one cannot be read so or `visit` fails.
fn each_table(
    doc: &mut DocumentMut,
    kind: &str,
    visit: &mut dyn FnMut(&mut dyn TableLike) -> Option<()>,
) -> Option<()> {
    match doc.get_mut(kind) {
        None => {}
        Some(item) if item.is_array_of_tables() => {
            for table in item.as_array_of_tables_mut()?.iter_mut() {
                visit(table)?;
            }
        }
        Some(item) => {
            for value in item.as_array_mut()?.iter_mut() {
                visit(value.as_inline_table_mut()?)?;
            }
        }
    }
    Some(())
}

/// Every file's content replaced.
fn redact_all(paths: Vec<Vec<u8>>) -> (pb::Bundle, Vec<String>) {
    let redacted = paths
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let files = paths
        .into_iter()
        .map(|path| pb::BundleFile {
            path,
            content: MARKER.as_bytes().to_vec(),
        })
        .collect();
    (pb::Bundle { files }, redacted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(files: &[(&str, &str)]) -> pb::Bundle {
        role::bundle_from_files(files.iter().copied()).to_wire()
    }

    fn content_of<'a>(b: &'a pb::Bundle, path: &str) -> &'a str {
        let f = b.files.iter().find(|f| f.path == path.as_bytes()).unwrap();
        std::str::from_utf8(&f.content).unwrap()
    }

    const ROLE: &str = "[role]\nname = \"db\"\n\n[vars]\nx = 1\n\n\
        [[file]]\npath = \"/etc/db/password\"\ncontent = \"hunter2\"\nsensitive = true\n\n\
        [[file]]\npath = \"/etc/db/key\"\nsource = \"key\"\nsensitive = true\n\n\
        [[file]]\npath = \"/etc/db/conf\"\ntemplate = \"conf.hbs\"\nsensitive = true\n\n\
        # kept: not sensitive\n[[file]]\npath = \"/etc/motd\"\nsource = \"motd\"\n";

    #[test]
    fn each_place_sensitive_content_comes_from_is_replaced() {
        let stored = wire(&[
            ("role.toml", ROLE),
            ("files/key", "PRIVATE KEY"),
            ("files/motd", "hello"),
            ("templates/conf.hbs", "password={{vars.x}}secret"),
        ]);
        let (out, redacted) = sensitive(stored);
        assert_eq!(
            redacted,
            ["files/key", "role.toml", "templates/conf.hbs"],
            "{out:?}"
        );
        assert_eq!(content_of(&out, "files/key"), MARKER);
        assert_eq!(content_of(&out, "templates/conf.hbs"), MARKER);
        assert_eq!(content_of(&out, "files/motd"), "hello");
        let manifest = content_of(&out, "role.toml");
        assert!(!manifest.contains("hunter2"), "{manifest}");
        // Only the value changed: comments and other lines are as written.
        assert_eq!(
            manifest,
            ROLE.replace(
                "content = \"hunter2\"",
                &format!("content = {:?}", MARKER.trim_end())
            )
        );
        // And the result still reads as a role.
        let back = RoleBundle::from_wire(out).unwrap();
        role::load(&back, &Facts::placeholder()).unwrap();
    }

    #[test]
    fn content_in_any_string_form_is_replaced() {
        for content in [
            "'hunter2'",
            "'''\nhunter2\nline two\n'''",
            "\"\"\"\nhunter2\\\n  continued\n\"\"\"",
            "\"\\u0068unter2\"",
        ] {
            let toml = format!(
                "[role]\nname = \"db\"\n\n[[file]]\npath = \"/x\"\nsensitive = true\ncontent = {content}\n"
            );
            let (out, redacted) = sensitive(wire(&[("role.toml", &toml)]));
            assert_eq!(redacted, ["role.toml"], "{content}");
            let manifest = content_of(&out, "role.toml");
            assert!(
                !manifest.contains("hunter2") && !manifest.contains("unter2"),
                "{manifest}"
            );
            assert!(manifest.contains(MARKER.trim_end()), "{manifest}");
        }
    }

    #[test]
    fn inline_tables_are_read_too() {
        let toml = "[role]\nname = \"db\"\nfile = [{ path = \"/x\", content = \"hunter2\", sensitive = true }]\n";
        let (out, redacted) = sensitive(wire(&[("role.toml", toml)]));
        assert_eq!(redacted, ["role.toml"]);
        assert!(!content_of(&out, "role.toml").contains("hunter2"));
    }

    #[test]
    fn user_password_hashes_are_replaced() {
        let toml = "[role]\nname = \"db\"\n\n[[user]]\nname = \"app\"\npassword = \"$6$salt$SECRETHASH\"\n\n\
                    [[user]]\nname = \"web\"\n";
        let (out, redacted) = sensitive(wire(&[("role.toml", toml)]));
        assert_eq!(redacted, ["role.toml"]);
        let manifest = content_of(&out, "role.toml");
        assert_eq!(
            manifest,
            toml.replace(
                "\"$6$salt$SECRETHASH\"",
                &format!("{:?}", MARKER.trim_end())
            )
        );
        let inline =
            "[role]\nname = \"db\"\nuser = [{ name = \"app\", password = \"$6$s$SECRETHASH\" }]\n";
        let (out, _) = sensitive(wire(&[("role.toml", inline)]));
        assert!(!content_of(&out, "role.toml").contains("SECRETHASH"));
    }

    #[test]
    fn a_role_without_sensitive_files_is_untouched() {
        let stored = wire(&[
            (
                "role.toml",
                "[role]\nname = \"web\"\n\n[[file]]\npath = \"/x\"\nsource = \"x\"\n",
            ),
            ("files/x", "public"),
        ]);
        let (out, redacted) = sensitive(stored.clone());
        assert!(redacted.is_empty());
        assert_eq!(out, stored);
    }

    #[test]
    fn a_role_that_does_not_validate_is_redacted_whole() {
        let toml = "[role]\nname = \"db\"\n\n[[file]]\npath = \"/x\"\ncontent = \"hunter2\"\nsensitive = \"yes\"\n";
        let (out, redacted) = sensitive(wire(&[("role.toml", toml), ("files/k", "PRIVATE")]));
        assert_eq!(redacted, ["files/k", "role.toml"]);
        assert!(out.files.iter().all(|f| f.content == MARKER.as_bytes()));
        // Nor when the stored bundle itself is no longer accepted.
        let odd = pb::Bundle {
            files: vec![pb::BundleFile {
                path: b"files/a\x1bb".to_vec(),
                content: b"PRIVATE".to_vec(),
            }],
        };
        let (out, redacted) = sensitive(odd);
        assert_eq!(redacted, ["files/a\u{1b}b"]);
        assert_eq!(out.files[0].content, MARKER.as_bytes());
    }
}
