//! `[[package]]`: an OS package installed (at a version, when pinned) or absent.
//! What is installed and how to change it is the package provider's business
//! (apt on Debian and Ubuntu); this type only compares and asks.

use anyhow::Result;
use cairn_proto::role::{self, PackageState};

use super::{Drift, Resource};
use crate::providers::Host;

pub struct PackageResource<'a>(pub &'a role::Package);

impl Resource for PackageResource<'_> {
    /// `ensure` when presence differs (`absent` → the wanted version or
    /// `installed`, or the installed version → `absent`); `version` when a
    /// pinned package is installed at another version.
    fn check(&self, host: &Host) -> Result<Drift> {
        let p = self.0;
        let current = host.packages()?.installed(&p.name)?;
        let mut drift = Drift::default();
        match (p.state, current) {
            (PackageState::Absent, None) => {}
            (PackageState::Absent, Some(have)) => drift.push("ensure", have, "absent"),
            (PackageState::Installed, None) => {
                drift.push(
                    "ensure",
                    "absent",
                    p.version.as_deref().unwrap_or("installed"),
                );
            }
            (PackageState::Installed, Some(have)) => {
                if let Some(want) = &p.version
                    && *want != have
                {
                    drift.push("version", have, want.as_str());
                }
            }
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, _drift: &Drift) -> Result<()> {
        let p = self.0;
        let packages = host.packages()?;
        match p.state {
            PackageState::Installed => packages.install(&p.name, p.version.as_deref()),
            PackageState::Absent => packages.remove(&p.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::report::PropertyChange;

    use super::*;
    use crate::providers::process;

    /// Small, depends on libc6 only, not installed on a base system.
    const PKG: &str = "figlet";
    const UNKNOWN: &str = "cairn-no-such-package-x";

    fn host() -> Host {
        Host::new(crate::facts::gather().unwrap())
    }

    fn package(name: &str, version: Option<&str>, state: PackageState) -> role::Package {
        role::Package {
            name: name.into(),
            version: version.map(Into::into),
            state,
        }
    }

    /// The installed version as dpkg itself reports it: an oracle independent
    /// of the provider's parser.
    fn dpkg_version(name: &str) -> Option<String> {
        let ran = process::run(
            "dpkg-query",
            ["-W", "-f", "${db:Status-Status} ${Version}", name],
            &[],
        )
        .unwrap();
        let out = ran.stdout.trim();
        out.strip_prefix("installed ")
            .filter(|_| ran.success)
            .map(str::to_owned)
    }

    /// Purges, so the host is left as before the test (the resource only
    /// removes, which keeps configuration files).
    fn apt_purge(name: &str) -> Result<process::Ran> {
        process::run_ok(
            "apt-get",
            ["-q", "-y", "-o", "DPkg::Lock::Timeout=300", "purge", name],
            &[("DEBIAN_FRONTEND", "noninteractive")],
        )
    }

    /// Purges the test package however the test ends, panics included.
    struct RemoveOnDrop(&'static str);

    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            if let Err(e) = apt_purge(self.0) {
                eprintln!("cleanup: could not remove {}: {e:#}", self.0);
            }
        }
    }

    /// The whole life of a package on this real host, through the real apt.
    #[test]
    fn package_timeline_on_this_host() {
        if dpkg_version(PKG).is_some() {
            apt_purge(PKG).unwrap();
        }
        let _cleanup = RemoveOnDrop(PKG);
        assert_eq!(
            dpkg_version(PKG),
            None,
            "precondition: {PKG} is not installed"
        );

        // Install: check reports, touches nothing; apply converges.
        let want = package(PKG, None, PackageState::Installed);
        let res = PackageResource(&want);
        let h = host();
        let drift = res.check(&h).unwrap();
        assert_eq!(
            drift.changes,
            vec![PropertyChange::new("ensure", "absent", "installed")]
        );
        assert_eq!(dpkg_version(PKG), None, "check installed the package");
        res.apply(&h, &drift).unwrap();
        assert!(res.verify(&h).unwrap().is_empty());
        let version = dpkg_version(PKG).expect("dpkg does not list the package after apply");

        // A later run (new host, database read afresh) sees nothing to do.
        let h = host();
        assert!(res.check(&h).unwrap().is_empty());
        let pinned = package(PKG, Some(&version), PackageState::Installed);
        assert!(PackageResource(&pinned).check(&h).unwrap().is_empty());

        // A version the archive does not have: drift, then an error naming both.
        let bogus = package(PKG, Some("0.0-cairn-nonexistent"), PackageState::Installed);
        let res = PackageResource(&bogus);
        let drift = res.check(&h).unwrap();
        assert_eq!(
            drift.changes,
            vec![PropertyChange::new(
                "version",
                version.as_str(),
                "0.0-cairn-nonexistent"
            )]
        );
        let msg = format!("{:#}", res.apply(&h, &drift).unwrap_err());
        assert!(
            msg.contains(&format!(
                "could not install package {PKG} version 0.0-cairn-nonexistent"
            )),
            "{msg}"
        );
        assert!(msg.contains("was not found"), "{msg}");
        assert_eq!(
            dpkg_version(PKG).as_ref(),
            Some(&version),
            "a failed pin changed the package"
        );

        // Remove.
        let gone = package(PKG, None, PackageState::Absent);
        let res = PackageResource(&gone);
        let drift = res.check(&h).unwrap();
        assert_eq!(
            drift.changes,
            vec![PropertyChange::new("ensure", version.as_str(), "absent")]
        );
        res.apply(&h, &drift).unwrap();
        assert!(res.verify(&h).unwrap().is_empty());
        assert_eq!(dpkg_version(PKG), None);
        assert!(res.check(&host()).unwrap().is_empty());
    }

    #[test]
    fn package_unknown_fails_apply_naming_it() {
        let h = host();
        let absent = package(UNKNOWN, None, PackageState::Absent);
        assert!(PackageResource(&absent).check(&h).unwrap().is_empty());

        let want = package(UNKNOWN, None, PackageState::Installed);
        let res = PackageResource(&want);
        let drift = res.check(&h).unwrap();
        assert_eq!(
            drift.changes,
            vec![PropertyChange::new("ensure", "absent", "installed")]
        );
        let msg = format!("{:#}", res.apply(&h, &drift).unwrap_err());
        assert!(
            msg.contains(&format!("could not install package {UNKNOWN}")),
            "{msg}"
        );
        assert!(msg.contains("Unable to locate package"), "{msg}");
        assert_eq!(dpkg_version(UNKNOWN), None);
    }
}
