//! `[[user]]`: a local user's existence, uid, primary group, shell, home,
//! comment, supplementary groups and password hash. Properties the role
//! leaves out are neither compared nor changed. `system` only matters when
//! the user is created. A uid change goes through `usermod`, which re-owns
//! the files in the home directory only; files elsewhere keep the old uid.

use anyhow::{Result, anyhow};
use cairn_proto::role::{self, Presence};

use super::{Drift, Resource};
use crate::providers::{Host, UserChanges, UserEntry};

/// Group membership is a minimum: the user must belong to every declared
/// group, and groups the role does not declare are left alone (another role,
/// a package or an operator may have added them), unless `groups_exact` says
/// the declared groups are the only ones.
///
/// The password hash is sensitive: drift names the property, never a value.
pub struct UserResource<'a>(pub &'a role::User);

impl UserResource<'_> {
    /// Declared groups the user is not in yet, in declaration order.
    fn missing_groups(&self, current: &UserEntry) -> Vec<String> {
        self.0
            .groups
            .iter()
            .filter(|g| !current.groups.contains(g))
            .cloned()
            .collect()
    }

    /// With `groups_exact`, the user's groups the role does not declare.
    fn extra_groups<'c>(&self, current: &'c UserEntry) -> Vec<&'c String> {
        if !self.0.groups_exact {
            return Vec::new();
        }
        current
            .groups
            .iter()
            .filter(|g| !self.0.groups.contains(g))
            .collect()
    }
}

impl Resource for UserResource<'_> {
    fn check(&self, host: &Host) -> Result<Drift> {
        let u = self.0;
        let mut drift = Drift::default();
        let current = host.accounts()?.user(&u.name)?;
        let cur = match (u.state, current) {
            (Presence::Absent, None) => return Ok(drift),
            (Presence::Absent, Some(_)) => {
                drift.push("ensure", "present", "absent");
                return Ok(drift);
            }
            // Creation sets every declared property at once.
            (Presence::Present, None) => {
                drift.push("ensure", "absent", "present");
                return Ok(drift);
            }
            (Presence::Present, Some(cur)) => cur,
        };
        if let Some(uid) = u.uid
            && cur.uid != uid
        {
            drift.push("uid", cur.uid.to_string(), uid.to_string());
        }
        let text_props = [
            ("group", &u.group, &cur.group),
            ("shell", &u.shell, &cur.shell),
            ("home", &u.home, &cur.home),
            ("comment", &u.comment, &cur.comment),
        ];
        for (property, want, have) in text_props {
            if let Some(want) = want
                && want != have
            {
                drift.push(property, have.as_str(), want.as_str());
            }
        }
        let missing = self.missing_groups(&cur);
        let extra = self.extra_groups(&cur);
        if !missing.is_empty() || !extra.is_empty() {
            let after: Vec<&str> = cur
                .groups
                .iter()
                .filter(|g| !extra.contains(g))
                .chain(&missing)
                .map(String::as_str)
                .collect();
            drift.push("groups", cur.groups.join(","), after.join(","));
        }
        if let Some(want) = &u.password
            && host.accounts()?.password(&u.name)?.as_ref() != Some(want)
        {
            drift.push("password", "(sensitive)", "(sensitive)");
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, drift: &Drift) -> Result<()> {
        let u = self.0;
        let accounts = host.accounts()?;
        if u.state == Presence::Absent {
            return accounts.delete_user(&u.name);
        }
        if drift.has("ensure") {
            return accounts.create_user(u, host.files());
        }
        // Only what drifted; each value comes from the spec, which `check`
        // compared it with.
        let take =
            |property: &str, value: &Option<String>| value.clone().filter(|_| drift.has(property));
        let mut changes = UserChanges {
            uid: u.uid.filter(|_| drift.has("uid")),
            group: take("group", &u.group),
            home: take("home", &u.home),
            shell: take("shell", &u.shell),
            comment: take("comment", &u.comment),
            add_groups: Vec::new(),
            set_groups: None,
            password: u.password.clone().filter(|_| drift.has("password")),
        };
        if drift.has("groups") {
            if u.groups_exact {
                changes.set_groups = Some(u.groups.clone());
            } else {
                let current = accounts
                    .user(&u.name)?
                    .ok_or_else(|| anyhow!("user {} disappeared since it was checked", u.name))?;
                changes.add_groups = self.missing_groups(&current);
            }
        }
        accounts.modify_user(&u.name, &changes, host.files())
    }
}
