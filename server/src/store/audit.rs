//! What an audit entry may hold, and how entries are chained: the one place
//! both are defined, used by every backend when it writes and reads the log
//! and by `cairn audit verify` when it checks it.
//!
//! Bounds: anything audited may come from a hostile caller, so every field is
//! cut to [`MAX_NAME_CHARS`] (actor, role, peer, action, target) or
//! [`MAX_TEXT_CHARS`] (detail, outcome) characters before it is stored, on a
//! character boundary, ending with [`CUT_MARKER`].
//!
//! Chain: each entry's hash covers the previous entry's hash and the entry's
//! own content, so changing, removing or reordering a stored entry breaks the
//! chain at that entry unless every later hash is recomputed too:
//!
//! ```text
//! content = sha256("cairn.audit.content.v1" ‖ id ‖ at ‖ len‖actor ‖ len‖actor_role ‖ len‖peer
//!                  ‖ len‖action ‖ len‖target ‖ len‖detail ‖ len‖outcome)
//! hash    = sha256("cairn.audit.link.v1" ‖ len‖previous hash ‖ content)
//! ```
//!
//! with integers as 8 bytes big-endian, `len` the byte length of the UTF-8
//! text that follows it, hashes as lowercase hex text, and the previous hash of
//! the first entry empty.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::AuditRecord;

/// Most characters stored of a name-like field: actor, role, peer, action, target.
pub const MAX_NAME_CHARS: usize = 256;
/// Most characters stored of a free-text field: detail, outcome.
pub const MAX_TEXT_CHARS: usize = 1024;
/// Ends a field that was cut; counted within the bound.
pub const CUT_MARKER: &str = "…[cut]";

/// `text`, or its first characters followed by [`CUT_MARKER`] so that the
/// whole is at most `max_chars` characters.
pub fn bounded(text: &str, max_chars: usize) -> Cow<'_, str> {
    // Where the (max_chars + 1)th character starts, if there is one.
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some(_) => {
            let keep = max_chars.saturating_sub(CUT_MARKER.chars().count());
            let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
            Cow::Owned(format!("{}{CUT_MARKER}", &text[..end]))
        }
    }
}

/// The fields of an entry in hashing order, each with its bound.
pub fn fields(r: &AuditRecord) -> [(&str, usize); 7] {
    [
        (&r.actor, MAX_NAME_CHARS),
        (&r.actor_role, MAX_NAME_CHARS),
        (&r.peer, MAX_NAME_CHARS),
        (&r.action, MAX_NAME_CHARS),
        (&r.target, MAX_NAME_CHARS),
        (&r.detail, MAX_TEXT_CHARS),
        (&r.outcome, MAX_TEXT_CHARS),
    ]
}

/// Whether some field of `r` is longer than its bound (possible only for
/// entries stored before the bounds existed).
pub fn oversized(r: &AuditRecord) -> bool {
    fields(r)
        .iter()
        .any(|(text, max)| matches!(bounded(text, *max), Cow::Owned(_)))
}

/// `r` with every field cut to its bound.
pub fn cut(r: &AuditRecord) -> AuditRecord {
    let [actor, actor_role, peer, action, target, detail, outcome] =
        fields(r).map(|(text, max)| bounded(text, max).into_owned());
    AuditRecord {
        actor,
        actor_role,
        peer,
        action,
        target,
        detail,
        outcome,
        ..r.clone()
    }
}

/// The digest of the entry's own content (its id, time and fields), hex.
pub fn content_digest(r: &AuditRecord) -> String {
    let mut h = Sha256::new();
    h.update(b"cairn.audit.content.v1");
    h.update(r.id.to_be_bytes());
    h.update(r.at.to_be_bytes());
    for (text, _) in fields(r) {
        length_prefixed(&mut h, text);
    }
    format!("{:x}", h.finalize())
}

/// The hash of an entry whose content digest is `content`, after the entry
/// whose hash is `previous` (empty for the first entry), hex.
pub fn link(previous: &str, content: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"cairn.audit.link.v1");
    length_prefixed(&mut h, previous);
    h.update(content.as_bytes());
    format!("{:x}", h.finalize())
}

/// The hash `r` must carry when it follows the entry whose hash is `previous`.
pub fn entry_hash(previous: &str, r: &AuditRecord) -> String {
    link(previous, &content_digest(r))
}

/// The hash `r` must carry after the entry whose hash is `previous`; an entry
/// the store cut on reading is checked by the digest of its whole content.
pub fn expected_hash(previous: &str, r: &AuditRecord) -> String {
    match &r.full_digest {
        Some(content) => link(previous, content),
        None => entry_hash(previous, r),
    }
}

/// The id of the first entry of `log` (oldest first, from the log's first
/// entry) whose hash does not follow from the one before; `None` if all do.
pub fn first_break(log: &[AuditRecord]) -> Option<u64> {
    let mut previous = "";
    for e in log {
        if e.hash != expected_hash(previous, e) {
            return Some(e.id);
        }
        previous = &e.hash;
    }
    None
}

fn length_prefixed(h: &mut Sha256, text: &str) {
    h.update((text.len() as u64).to_be_bytes());
    h.update(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            id: 7,
            at: 1_700_000_000_000_000,
            actor: "alice".into(),
            actor_role: "admin".into(),
            action: "push".into(),
            target: "web".into(),
            detail: "version 3".into(),
            peer: "127.0.0.1:1".into(),
            outcome: "ok".into(),
            hash: String::new(),
            full_digest: None,
        }
    }

    #[test]
    fn bounded_cuts_on_a_character_boundary_with_a_marker() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("0123456789", 10), "0123456789");
        let cut = bounded("ééééééééééé", 10);
        assert_eq!(cut.chars().count(), 10, "{cut}");
        assert!(
            cut.ends_with(CUT_MARKER) && cut.starts_with("éééé"),
            "{cut}"
        );
        let huge = "x".repeat(1 << 20);
        assert_eq!(
            bounded(&huge, MAX_NAME_CHARS).chars().count(),
            MAX_NAME_CHARS
        );
    }

    #[test]
    fn every_field_and_its_boundaries_change_the_hash() {
        let base = entry_hash("", &record());
        assert_eq!(base.len(), 64);
        assert_eq!(base, entry_hash("", &record()), "deterministic");
        assert_ne!(
            base,
            entry_hash("00", &record()),
            "the previous hash counts"
        );
        let changes: [fn(&mut AuditRecord); 9] = [
            |r| r.id += 1,
            |r| r.at += 1,
            |r| r.actor.push('x'),
            |r| r.actor_role.push('x'),
            |r| r.peer.push('x'),
            |r| r.action.push('x'),
            |r| r.target.push('x'),
            |r| r.detail.push('x'),
            |r| r.outcome.push('x'),
        ];
        for change in changes {
            let mut r = record();
            change(&mut r);
            assert_ne!(entry_hash("", &r), base, "{r:?}");
        }
        // Moving text from one field to the next is a different entry.
        let mut shifted = record();
        shifted.actor = "alic".into();
        shifted.actor_role = "eadmin".into();
        assert_ne!(entry_hash("", &shifted), base);
    }

    #[test]
    fn cut_entries_keep_their_id_and_time() {
        let mut r = record();
        r.target = "t".repeat(MAX_NAME_CHARS + 1);
        assert!(oversized(&r));
        let c = cut(&r);
        assert!(!oversized(&c));
        assert_eq!((c.id, c.at, c.actor.as_str()), (7, r.at, "alice"));
        assert_eq!(c.target.chars().count(), MAX_NAME_CHARS);
    }
}
