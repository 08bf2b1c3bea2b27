//! `[[user]]`: a user account. It follows its primary group and the groups it
//! must be in.

use serde::Deserialize;
use toml::Spanned;

use super::{Kind, Presence, ResourceKind};
use crate::role::id::ResourceId;
use crate::role::rules::{ACCOUNT_RULE, Table, is_account_name};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: Option<u32>,
    /// The primary group, by name. Left out, a new user's primary group is
    /// the group named as the user: the existing one, else a new one.
    pub group: Option<String>,
    /// Supplementary groups the user must belong to; with `groups_exact`,
    /// the only ones (others are left alone otherwise).
    pub groups: Vec<String>,
    pub groups_exact: bool,
    /// The crypt(3) hash for /etc/shadow (or a locked form: `!`, `*`,
    /// `!` before a hash). Sensitive: never shown, only compared.
    pub password: Option<String>,
    pub shell: Option<String>,
    pub home: Option<String>,
    pub comment: Option<String>,
    pub system: bool,
    pub state: Presence,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::role) struct RawUser {
    name: Spanned<String>,
    uid: Option<u32>,
    group: Option<Spanned<String>>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    #[serde(default)]
    groups_exact: bool,
    password: Option<Spanned<String>>,
    shell: Option<Spanned<String>>,
    home: Option<Spanned<String>>,
    comment: Option<String>,
    #[serde(default)]
    system: bool,
    state: Option<Presence>,
}

impl ResourceKind for User {
    type Raw = RawUser;

    fn name(raw: &RawUser) -> &Spanned<String> {
        &raw.name
    }

    fn check(r: RawUser, t: &mut Table<'_, '_>) -> User {
        t.check_name(&r.name, "name", is_account_name, ACCOUNT_RULE);
        for g in &r.groups {
            t.check_name(g, "groups", is_account_name, ACCOUNT_RULE);
        }
        if let Some(password) = &r.password
            && let Err(why) = check_password_hash(password.get_ref())
        {
            // The value is never echoed: it may be a cleartext password.
            t.error(
                password.span(),
                Some("password"),
                format!("not a password hash: {why}"),
                Some(PASSWORD_RULE.to_string()),
            );
        }
        if let Some(shell) = &r.shell {
            t.check_abs_path(shell, "shell");
        }
        if let Some(home) = &r.home {
            t.check_abs_path(home, "home");
        }
        User {
            name: r.name.into_inner(),
            uid: r.uid,
            group: t.account(r.group, "group"),
            groups: r.groups.into_iter().map(Spanned::into_inner).collect(),
            groups_exact: r.groups_exact,
            password: r.password.map(Spanned::into_inner),
            shell: r.shell.map(Spanned::into_inner),
            home: r.home.map(Spanned::into_inner),
            comment: r.comment,
            system: r.system,
            state: r.state.unwrap_or(Presence::Present),
        }
    }

    fn implicit_requires(&self) -> Vec<ResourceId> {
        self.group
            .iter()
            .chain(&self.groups)
            .map(|g| ResourceId::new(Kind::Group, g))
            .collect()
    }
}

const PASSWORD_RULE: &str = "write a crypt(3) hash such as `$y$…` or `$6$…` (from `mkpasswd`), \
                             or `!` or `*` for a locked password; never the password itself";

/// Longer than any crypt(3) hash the shadow tools write.
const MAX_PASSWORD_BYTES: usize = 512;

/// Whether `value` is a hash form /etc/shadow holds: `$id$…` made of the
/// characters crypt(3) uses, `*`, or `!` (locked) alone or before a hash.
fn check_password_hash(value: &str) -> Result<(), &'static str> {
    if value.len() > MAX_PASSWORD_BYTES {
        return Err("too long");
    }
    if value.is_empty() {
        return Err("it is empty");
    }
    let unlocked = value.trim_start_matches('!');
    if unlocked.is_empty() || unlocked == "*" {
        return Ok(());
    }
    let Some(rest) = unlocked.strip_prefix('$') else {
        return Err("it does not start with `$`, `!` or `*`");
    };
    let Some((id, body)) = rest.split_once('$') else {
        return Err("it has no `$` after the method");
    };
    let crypt_char = |c: char| c.is_ascii_alphanumeric() || "./$=,+-".contains(c);
    if id.is_empty() || body.is_empty() || !unlocked.chars().all(crypt_char) {
        return Err("it holds characters a crypt(3) hash does not");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_password_hash;

    #[test]
    fn password_hash_forms() {
        for ok in [
            "$6$salt$0123456789abcdefABCDEF./",
            "$y$j9T$Fq0ZsN1$Tz1uOoCj/abc.def",
            "!$6$salt$hash",
            "!",
            "*",
            "!*",
        ] {
            assert_eq!(check_password_hash(ok), Ok(()), "{ok}");
        }
        for bad in [
            "hunter2",
            "",
            "$6",
            "$$x",
            "$6$salt hash",
            "$6$a:b",
            "x$6$a$b",
        ] {
            assert!(check_password_hash(bad).is_err(), "{bad}");
        }
    }
}
