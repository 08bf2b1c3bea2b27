//! Text from outside made safe to print on a terminal.
//!
//! A resource id, a property value, an error or a diff line can come from a
//! hostile role or node. Printed raw, an escape sequence in it could move the
//! cursor, rewrite earlier lines, retitle the window or fake a line of output;
//! a bidirectional-override character could make a line read differently than
//! it is. These functions show such characters as visible escapes instead.
//! JSON output needs none of this: serde escapes control characters itself.

use std::borrow::Cow;
use std::fmt::Write;

/// `s` on one line, every control character but tab escaped: `\u{1b}`, `\r`,
/// `\n`, and the bidirectional controls as `\u{202e}`.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if c.is_control() {
            // `\n`, `\r` and `\0` read better than their code points.
            let _ = write!(out, "{}", c.escape_default());
        } else {
            let _ = write!(out, "{}", c.escape_unicode());
        }
    }
    Cow::Owned(out)
}

/// Each line of `s` escaped as by [`escape`], the line breaks kept: for
/// multi-line text such as a diff. A carriage return before a line break is
/// shown, so a change of line endings is visible.
pub fn escape_lines(s: &str) -> String {
    s.split_inclusive('\n')
        .map(|line| match line.strip_suffix('\n') {
            Some(body) => format!("{}\n", escape(body)),
            None => escape(line).into_owned(),
        })
        .collect()
}

fn unsafe_char(c: char) -> bool {
    (c.is_control() && c != '\t') || bidi_control(c)
}

/// Unicode's explicit directional formatting characters (UAX #9).
fn bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched_and_not_copied() {
        let s = "file:/etc/motd\twith a tab, é and →";
        assert!(matches!(escape(s), Cow::Borrowed(t) if t == s));
        assert_eq!(escape_lines("a\nb\n"), "a\nb\n");
        assert_eq!(escape_lines("no newline at end"), "no newline at end");
    }

    #[test]
    fn control_characters_become_visible() {
        assert_eq!(
            escape("\u{1b}]0;owned\u{7}\u{1b}[2J"),
            "\\u{1b}]0;owned\\u{7}\\u{1b}[2J"
        );
        assert_eq!(escape("a\nApplied role"), "a\\nApplied role");
        assert_eq!(escape("\r\0\u{7f}\u{9b}"), "\\r\\u{0}\\u{7f}\\u{9b}");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
    }

    #[test]
    fn lines_keep_their_breaks_but_not_their_controls() {
        assert_eq!(
            escape_lines("-old\r\n+new\u{1b}[31m\n"),
            "-old\\r\n+new\\u{1b}[31m\n"
        );
    }
}
