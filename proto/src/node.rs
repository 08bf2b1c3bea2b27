//! What identifies a node to the server: its name, and its assignment (the
//! role it converges to and the channel it follows). The server checks names
//! with [`check_name`] when a node enrolls and again on every call it makes;
//! the agent checks them before it asks, so both sides hold the same rule.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pb;

/// The longest node name, in bytes (a DNS label's bound: names often are one).
pub const MAX_NAME_LEN: usize = 63;

/// Why a name is not a node name; the message says the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node name {name:?}: {reason}")]
pub struct NameError {
    /// The name as given, cut to a few more characters than the bound.
    pub name: String,
    pub reason: &'static str,
}

/// A node name is 1 to [`MAX_NAME_LEN`] lowercase letters, digits, dots and
/// dashes, beginning and ending with a letter or digit: it is a certificate's
/// common name, a table key, and printed in tables and logs.
pub fn check_name(name: &str) -> Result<(), NameError> {
    let refuse = |reason| {
        Err(NameError {
            name: name.chars().take(MAX_NAME_LEN + 8).collect(),
            reason,
        })
    };
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (None, _) | (_, None) => refuse("it is empty"),
        _ if bytes.len() > MAX_NAME_LEN => refuse("it is longer than 63 characters"),
        _ if !bytes.iter().all(|&c| alnum(c) || c == b'.' || c == b'-') => {
            refuse("use lowercase letters, digits, '.' and '-'")
        }
        (Some(&first), Some(&last)) if !alnum(first) || !alnum(last) => {
            refuse("it must begin and end with a lowercase letter or a digit")
        }
        _ => Ok(()),
    }
}

/// Where a node's role comes from: one role at one channel. Kept a type of
/// its own so that it can become an ordered list of roles without changing
/// who passes it around.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    pub role: String,
    pub channel: String,
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "role {} at channel {}", self.role, self.channel)
    }
}

impl From<Assignment> for pb::Assignment {
    fn from(a: Assignment) -> Self {
        pb::Assignment {
            role: a.role,
            channel: a.channel,
        }
    }
}

impl From<pb::Assignment> for Assignment {
    fn from(a: pb::Assignment) -> Self {
        Assignment {
            role: a.role,
            channel: a.channel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in [
            "a",
            "web-1",
            "3f2a9c1b0d4e-web1.example.org",
            &"a".repeat(63),
        ] {
            check_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, why) in [
            ("", "empty"),
            (&"a".repeat(64) as &str, "longer than 63"),
            ("Web1", "lowercase"),
            ("web_1", "lowercase"),
            ("web 1", "lowercase"),
            ("wéb", "lowercase"),
            ("web\n1", "lowercase"),
            ("-web", "begin and end"),
            ("web.", "begin and end"),
            ("..etc", "begin and end"),
            ("../etc", "lowercase"),
        ] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let err = check_name(&"x".repeat(10_000)).unwrap_err();
        assert!(err.name.len() <= MAX_NAME_LEN + 8);
    }

    #[test]
    fn assignment_round_trips_through_the_wire_type() {
        let a = Assignment {
            role: "web".into(),
            channel: "stable".into(),
        };
        assert_eq!(Assignment::from(pb::Assignment::from(a.clone())), a);
        assert_eq!(a.to_string(), "role web at channel stable");
    }
}
