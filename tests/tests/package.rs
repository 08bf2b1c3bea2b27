//! `[[package]]` through the real agent and the real apt, on a fresh machine
//! (no package lists, so the agent has to update them): install, a pin at
//! the installed version, a pin the archive does not have, removal, and a
//! package the archive does not know. dpkg-query is the oracle.

use cairn_e2e::{Machine, Timeline};

/// Small, depends on libc6 only, not installed on a base system.
const PKG: &str = "figlet";
const UNKNOWN: &str = "cairn-no-such-package-x";
const BOGUS_VERSION: &str = "0.0-cairn-nonexistent";

/// What dpkg says of `name`: "STATUS VERSION", or nothing when it never heard of it.
fn dpkg_probe(name: &str) -> String {
    format!(
        "dpkg-query --show --showformat='${{db:Status-Status}} ${{Version}}' {name} 2>/dev/null; true"
    )
}

#[test]
fn package_timeline() {
    let m = Machine::boot("package");
    let t = Timeline::new(&m, &format!("package:{PKG}"), &dpkg_probe(PKG));
    assert_eq!(t.probe(), "", "precondition: dpkg does not know {PKG}");

    let installed = format!("[[package]]\nname = \"{PKG}\"\n");
    let after = t.converges(&installed, &[("ensure", "absent", "installed")]);
    let version = after
        .strip_prefix("installed ")
        .unwrap_or_else(|| panic!("dpkg does not list {PKG} as installed: {after:?}"))
        .to_string();

    // Pinned at the version it has: nothing to do.
    t.holds(&format!("{installed}version = \"{version}\"\n"));

    // A version the archive does not have: drift, then an error naming both,
    // and the installed package left as it was.
    t.fails(
        &format!("{installed}version = \"{BOGUS_VERSION}\"\n"),
        &[("version", &version, BOGUS_VERSION)],
        &[
            &format!("could not install package {PKG} version {BOGUS_VERSION}"),
            "was not found",
        ],
    );

    let after = t.converges(
        &format!("{installed}state = \"absent\"\n"),
        &[("ensure", &version, "absent")],
    );
    assert!(
        !after.starts_with("installed"),
        "{PKG} is still installed: {after:?}"
    );
}

#[test]
fn a_package_the_archive_does_not_know_fails_naming_it() {
    let m = Machine::boot("package-unknown");
    let t = Timeline::new(&m, &format!("package:{UNKNOWN}"), &dpkg_probe(UNKNOWN));
    let installed = format!("[[package]]\nname = \"{UNKNOWN}\"\n");
    t.holds(&format!("{installed}state = \"absent\"\n"));
    t.fails(
        &installed,
        &[("ensure", "absent", "installed")],
        &[
            &format!("could not install package {UNKNOWN}"),
            &format!("Unable to locate package {UNKNOWN}"),
        ],
    );
    assert_eq!(t.probe(), "");
}
