//! `[[user]]`: a local user's existence, uid, shell, home, comment and
//! supplementary groups. Properties the role leaves out are neither compared
//! nor changed. `system` only matters when the user is created. A uid change
//! goes through `usermod`, which re-owns the files in the home directory only;
//! files elsewhere keep the old uid.

use anyhow::{Result, anyhow};
use cairn_proto::role::{self, Presence};

use super::{Drift, Resource};
use crate::providers::{Host, UserChanges, UserEntry};

/// Group membership is a minimum: the user must belong to every declared
/// group, and groups the role does not declare are left alone (another role,
/// a package or an operator may have added them). A user is never removed from
/// a group here.
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
        if !missing.is_empty() {
            let after: Vec<&String> = cur.groups.iter().chain(&missing).collect();
            let after: Vec<&str> = after.into_iter().map(String::as_str).collect();
            drift.push("groups", cur.groups.join(","), after.join(","));
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
            return accounts.create_user(u);
        }
        // Only what drifted; each value comes from the spec, which `check`
        // compared it with.
        let take =
            |property: &str, value: &Option<String>| value.clone().filter(|_| drift.has(property));
        let mut changes = UserChanges {
            uid: u.uid.filter(|_| drift.has("uid")),
            home: take("home", &u.home),
            shell: take("shell", &u.shell),
            comment: take("comment", &u.comment),
            add_groups: Vec::new(),
        };
        if drift.has("groups") {
            let current = accounts
                .user(&u.name)?
                .ok_or_else(|| anyhow!("user {} disappeared since it was checked", u.name))?;
            changes.add_groups = self.missing_groups(&current);
        }
        accounts.modify_user(&u.name, &changes)
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::report::PropertyChange;
    use nix::unistd::{Group, User};

    use super::*;
    use crate::providers::process::run_ok;
    use crate::resources::group::tests::{Cleanup, free_id, host, unique_name};

    fn converge(res: &UserResource, host: &Host) -> Drift {
        let drift = res.check(host).unwrap();
        assert!(!drift.is_empty());
        res.apply(host, &drift).unwrap();
        assert_eq!(
            res.verify(host).unwrap(),
            Drift::default(),
            "converged in one apply"
        );
        drift
    }

    /// Users the C library (not our parser) lists as members of `group`.
    fn members(group: &str) -> Vec<String> {
        Group::from_name(group)
            .unwrap()
            .map(|g| g.mem)
            .unwrap_or_default()
    }

    fn make_group(name: &str) {
        run_ok("groupadd", [name], &[]).unwrap();
    }

    #[test]
    fn user_timeline_on_this_host() {
        let name = unique_name("usr");
        let (ga, gb) = (unique_name("ga"), unique_name("gb"));
        let _cleanup = Cleanup {
            users: vec![name.clone()],
            // Debian's userdel removes the user's own group; this is in case it did not.
            groups: vec![ga.clone(), gb.clone(), name.clone()],
        };
        make_group(&ga);
        make_group(&gb);
        let (uid, new_uid) = (free_id(3), free_id(4));
        let home = format!("/home/{name}");
        let _home_guard = HomeGuard(home.clone().into());
        let host = host();
        let mut spec = role::User {
            name: name.clone(),
            uid: Some(uid),
            groups: vec![ga.clone()],
            shell: Some("/bin/bash".into()),
            home: Some(home.clone()),
            comment: Some("Cairn test user".into()),
            system: false,
            state: Presence::Present,
        };

        // Noop view: check reports the creation and changes nothing.
        let drift = UserResource(&spec).check(&host).unwrap();
        assert_eq!(
            drift.changes,
            [PropertyChange::new("ensure", "absent", "present")]
        );
        assert!(
            User::from_name(&name).unwrap().is_none(),
            "check must not create the user"
        );

        // Apply creates it with every declared property and a home directory.
        converge(&UserResource(&spec), &host);
        let pw = User::from_name(&name).unwrap().expect("user created");
        assert_eq!(pw.uid.as_raw(), uid);
        assert_eq!(pw.shell.to_str(), Some("/bin/bash"));
        assert_eq!(pw.dir.to_str(), Some(home.as_str()));
        assert_eq!(pw.gecos.to_str().unwrap(), "Cairn test user");
        assert!(
            std::path::Path::new(&home).is_dir(),
            "useradd --create-home made {home}"
        );
        assert!(members(&ga).contains(&name) && !members(&gb).contains(&name));
        assert!(UserResource(&spec).check(&host).unwrap().is_empty());

        // Changed by hand: exactly that drift, and apply puts it back.
        run_ok("usermod", ["--shell", "/bin/sh", name.as_str()], &[]).unwrap();
        let drift = converge(&UserResource(&spec), &host);
        assert_eq!(
            drift.changes,
            [PropertyChange::new("shell", "/bin/sh", "/bin/bash")]
        );
        assert_eq!(
            User::from_name(&name).unwrap().unwrap().shell.to_str(),
            Some("/bin/bash")
        );

        // Membership is a minimum: an undeclared group added by hand stays ...
        run_ok(
            "usermod",
            ["--append", "--groups", gb.as_str(), name.as_str()],
            &[],
        )
        .unwrap();
        assert!(UserResource(&spec).check(&host).unwrap().is_empty());
        // ... and a declared one removed by hand comes back without dropping it.
        run_ok("gpasswd", ["--delete", name.as_str(), ga.as_str()], &[]).unwrap();
        let drift = converge(&UserResource(&spec), &host);
        assert_eq!(
            drift.changes,
            [PropertyChange::new(
                "groups",
                gb.clone(),
                format!("{gb},{ga}")
            )]
        );
        assert!(members(&ga).contains(&name) && members(&gb).contains(&name));

        // The role changes uid and comment: both, and nothing else, change.
        spec.uid = Some(new_uid);
        spec.comment = Some("Renamed".into());
        let drift = converge(&UserResource(&spec), &host);
        assert_eq!(
            drift.changes,
            [
                PropertyChange::new("uid", uid.to_string(), new_uid.to_string()),
                PropertyChange::new("comment", "Cairn test user", "Renamed"),
            ]
        );
        let pw = User::from_name(&name).unwrap().unwrap();
        assert_eq!(
            (pw.uid.as_raw(), pw.gecos.to_str().unwrap()),
            (new_uid, "Renamed")
        );

        // Unmanaged properties are never compared.
        let loose = role::User {
            uid: None,
            shell: None,
            home: None,
            comment: None,
            groups: vec![],
            ..spec.clone()
        };
        run_ok(
            "usermod",
            ["--shell", "/bin/sh", "--comment", "by hand", name.as_str()],
            &[],
        )
        .unwrap();
        run_ok("gpasswd", ["--delete", name.as_str(), ga.as_str()], &[]).unwrap();
        assert!(UserResource(&loose).check(&host).unwrap().is_empty());

        // Absent removes the account (the home stays), then is clean.
        spec.state = Presence::Absent;
        let drift = converge(&UserResource(&spec), &host);
        assert_eq!(
            drift.changes,
            [PropertyChange::new("ensure", "present", "absent")]
        );
        assert!(User::from_name(&name).unwrap().is_none());
        assert!(
            std::path::Path::new(&home).is_dir(),
            "removing a user keeps its home"
        );
        assert!(UserResource(&spec).check(&host).unwrap().is_empty());
    }

    #[test]
    fn system_user_gets_declared_home_without_skeleton() {
        let name = unique_name("sys");
        let _cleanup = Cleanup {
            users: vec![name.clone()],
            groups: vec![name.clone()],
        };
        let home = std::env::temp_dir().join(&name);
        let home_str = home.to_str().unwrap().to_string();
        let _home_guard = HomeGuard(home.clone());
        let host = host();
        let spec = role::User {
            name: name.clone(),
            uid: None,
            groups: vec![],
            shell: Some("/usr/sbin/nologin".into()),
            home: Some(home_str.clone()),
            comment: None,
            system: true,
            state: Presence::Present,
        };
        converge(&UserResource(&spec), &host);
        let pw = User::from_name(&name).unwrap().expect("user created");
        assert!(pw.uid.as_raw() < 1000, "a system uid, got {}", pw.uid);
        let meta = std::fs::metadata(&home).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!((meta.uid(), meta.gid()), (pw.uid.as_raw(), pw.gid.as_raw()));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        assert_eq!(
            std::fs::read_dir(&home).unwrap().count(),
            0,
            "no skeleton files"
        );

        // A system user without a declared home gets no directory.
        let bare = unique_name("sys2");
        let _cleanup2 = Cleanup {
            users: vec![bare.clone()],
            groups: vec![bare.clone()],
        };
        let spec = role::User {
            name: bare.clone(),
            home: None,
            shell: None,
            ..spec
        };
        converge(&UserResource(&spec), &host);
        let pw = User::from_name(&bare).unwrap().expect("user created");
        assert!(!pw.dir.exists(), "{} should not exist", pw.dir.display());
    }

    /// Removes a test home that `userdel --remove` cannot once the user is gone.
    struct HomeGuard(std::path::PathBuf);

    impl Drop for HomeGuard {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
