//! `[[group]]`: a local group's existence and gid. `system` only matters when
//! the group is created (it picks the gid range); an existing group is never
//! recreated to change it.

use anyhow::Result;
use cairn_proto::role::{self, Presence};

use super::{Drift, Resource};
use crate::providers::Host;

pub struct GroupResource<'a>(pub &'a role::Group);

impl Resource for GroupResource<'_> {
    fn check(&self, host: &Host) -> Result<Drift> {
        let g = self.0;
        let mut drift = Drift::default();
        let current = host.accounts()?.group(&g.name)?;
        match (g.state, current) {
            (Presence::Absent, None) => {}
            (Presence::Absent, Some(_)) => drift.push("ensure", "present", "absent"),
            // Creation sets every declared property at once.
            (Presence::Present, None) => drift.push("ensure", "absent", "present"),
            (Presence::Present, Some(cur)) => {
                if let Some(gid) = g.gid
                    && cur.gid != gid
                {
                    drift.push("gid", cur.gid.to_string(), gid.to_string());
                }
            }
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, drift: &Drift) -> Result<()> {
        let g = self.0;
        let accounts = host.accounts()?;
        match g.state {
            Presence::Absent => accounts.delete_group(&g.name),
            Presence::Present if drift.has("ensure") => accounts.create_group(g),
            Presence::Present => match g.gid {
                Some(gid) if drift.has("gid") => accounts.set_gid(&g.name, gid),
                _ => Ok(()),
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use cairn_proto::report::PropertyChange;
    use nix::unistd::Group;

    use super::*;
    use crate::providers::process::run_ok;

    /// Deletes the named test users and groups when dropped, even when the
    /// test panics half-way, so a failed run leaves the host clean.
    pub(crate) struct Cleanup {
        pub users: Vec<String>,
        pub groups: Vec<String>,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            for u in &self.users {
                // --remove: the test's home directory goes too.
                let _ = crate::providers::process::run("userdel", ["--remove", u.as_str()], &[]);
            }
            for g in &self.groups {
                let _ = crate::providers::process::run("groupdel", [g.as_str()], &[]);
            }
        }
    }

    /// A name no other test, and no other concurrent test process, uses.
    pub(crate) fn unique_name(tag: &str) -> String {
        format!("cairn-t-{}-{tag}", std::process::id())
    }

    /// An id unused as a uid and as a gid, from a range that depends on the
    /// process id and `slot`, so concurrent tests do not pick the same one.
    pub(crate) fn free_id(slot: u32) -> u32 {
        let start = 40_000 + (std::process::id() % 2_000) * 10 + slot;
        (start..)
            .step_by(20_000)
            .find(|&id| {
                nix::unistd::User::from_uid(id.into()).unwrap().is_none()
                    && Group::from_gid(id.into()).unwrap().is_none()
            })
            .expect("a free id")
    }

    pub(crate) fn host() -> Host {
        Host::new(crate::facts::gather().unwrap())
    }

    /// What the C library (not our parser) says the group's gid is.
    fn system_gid(name: &str) -> Option<u32> {
        Group::from_name(name).unwrap().map(|g| g.gid.as_raw())
    }

    fn converge(res: &GroupResource, host: &Host) -> Drift {
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

    #[test]
    fn group_timeline_on_this_host() {
        let name = unique_name("grp");
        let _cleanup = Cleanup {
            users: vec![],
            groups: vec![name.clone()],
        };
        let (gid, other_gid, new_gid) = (free_id(0), free_id(1), free_id(2));
        let host = host();
        let mut spec = role::Group {
            name: name.clone(),
            gid: Some(gid),
            system: false,
            state: Presence::Present,
        };

        // Noop view: check reports the creation and changes nothing.
        let drift = GroupResource(&spec).check(&host).unwrap();
        assert_eq!(
            drift.changes,
            [PropertyChange::new("ensure", "absent", "present")]
        );
        assert_eq!(system_gid(&name), None, "check must not create the group");

        // Apply creates it with the declared gid; a second check is clean.
        converge(&GroupResource(&spec), &host);
        assert_eq!(system_gid(&name), Some(gid));
        assert!(GroupResource(&spec).check(&host).unwrap().is_empty());

        // Changed by hand: exactly that drift, and apply puts it back.
        run_ok(
            "groupmod",
            ["--gid", &other_gid.to_string(), name.as_str()],
            &[],
        )
        .unwrap();
        let drift = converge(&GroupResource(&spec), &host);
        assert_eq!(
            drift.changes,
            [PropertyChange::new(
                "gid",
                other_gid.to_string(),
                gid.to_string()
            )]
        );
        assert_eq!(system_gid(&name), Some(gid));

        // A gid left unmanaged is never compared.
        let unmanaged = role::Group {
            gid: None,
            ..spec.clone()
        };
        run_ok(
            "groupmod",
            ["--gid", &other_gid.to_string(), name.as_str()],
            &[],
        )
        .unwrap();
        assert!(GroupResource(&unmanaged).check(&host).unwrap().is_empty());

        // The role changes the gid.
        spec.gid = Some(new_gid);
        let drift = converge(&GroupResource(&spec), &host);
        assert_eq!(
            drift.changes,
            [PropertyChange::new(
                "gid",
                other_gid.to_string(),
                new_gid.to_string()
            )]
        );
        assert_eq!(system_gid(&name), Some(new_gid));

        // Absent removes it, then is clean.
        spec.state = Presence::Absent;
        let drift = converge(&GroupResource(&spec), &host);
        assert_eq!(
            drift.changes,
            [PropertyChange::new("ensure", "present", "absent")]
        );
        assert_eq!(system_gid(&name), None);
        assert!(GroupResource(&spec).check(&host).unwrap().is_empty());
    }
}
