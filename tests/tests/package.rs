//! `[[package]]` through the real agent and the real apt, on a fresh machine
//! (no package lists, so the agent has to update them): install, a pin at
//! the installed version, a pin the archive does not have, removal, a
//! package the archive does not know, a dpkg killed mid-install, purging
//! (from installed and from what a removal left) and installing without
//! recommends; and the packages of one role installed in one apt transaction
//! (apt's own history says so), a package apt cannot find failing alone.
//! dpkg-query is the oracle.

use cairn_e2e::{Machine, Timeline};
use cairn_proto::report::ResourceStatus;

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

/// Shell functions that build packages into a flat repository on the
/// machine's own disk and make it the only source apt knows.
/// `package NAME [PREINST] [CONTROL-FIELDS] [CONFFILE]` builds NAME 1.0 with
/// a marker file under `/usr/share/NAME`; `publish` indexes the repository.
const REPOSITORY_TOOLS: &str = r#"
set -e
package() {
    dir=/root/build/$1
    mkdir -p "$dir/DEBIAN" "$dir/usr/share/$1"
    echo "$1" > "$dir/usr/share/$1/marker"
    printf 'Package: %s\nVersion: 1.0\nArchitecture: all\nMaintainer: Cairn tests <tests@cairn.invalid>\nDescription: Cairn test package\n' "$1" > "$dir/DEBIAN/control"
    if [ -n "$2" ]; then printf '%s\n' "$2" > "$dir/DEBIAN/preinst"; chmod 755 "$dir/DEBIAN/preinst"; fi
    if [ -n "$3" ]; then printf '%s\n' "$3" >> "$dir/DEBIAN/control"; fi
    if [ -n "$4" ]; then
        mkdir -p "$dir$(dirname "$4")"
        echo "$1 default" > "$dir$4"
        echo "$4" > "$dir/DEBIAN/conffiles"
    fi
    mkdir -p /srv/repo
    dpkg-deb --root-owner-group --build "$dir" "/srv/repo/$1_1.0_all.deb" >/dev/null
}
publish() {
    cd /srv/repo
    for deb in *.deb; do
        dpkg-deb --field "$deb"
        printf 'Filename: ./%s\nSize: %s\nSHA256: %s\n\n' "$deb" "$(stat -c %s "$deb")" "$(sha256sum "$deb" | cut -d' ' -f1)"
    done > Packages
    printf 'Date: %s\nSHA256:\n %s %s Packages\n' "$(date -Ru)" "$(sha256sum Packages | cut -d' ' -f1)" "$(stat -c %s Packages)" > Release
    mkdir -p /root/apt-sources
    mv /etc/apt/sources.list /etc/apt/sources.list.d/* /root/apt-sources/ 2>/dev/null || true
    echo 'deb [trusted=yes] file:/srv/repo ./' > /etc/apt/sources.list.d/cairn.list
    apt-get update -q >/dev/null
}
"#;

/// The local repository with `script` (calls of `package`, then `publish`).
fn local_repository(script: &str) -> String {
    format!("{REPOSITORY_TOOLS}\n{script}")
}

/// `cairn-stuck`, whose preinst waits while `/run/cairn-block` exists (after
/// writing its own and dpkg's pids).
const STUCK: &str = r#"
package cairn-stuck '#!/bin/sh
echo $PPID > /run/cairn-dpkg-pid
echo $$ > /run/cairn-preinst-pid
while [ -e /run/cairn-block ]; do sleep 0.1; done'
"#;

/// Installs `cairn-stuck` and kills dpkg once its preinst runs: dpkg has
/// marked it half installed in its journal and unpacked nothing yet, as when
/// a machine is stopped during its first boot's installs.
const KILL_DPKG_MID_INSTALL: &str = r#"
touch /run/cairn-block
apt-get install -y cairn-stuck >/run/cairn-apt.log 2>&1 &
echo $! > /run/cairn-apt-pid
for i in $(seq 600); do [ -s /run/cairn-preinst-pid ] && break; sleep 0.1; done
[ -s /run/cairn-preinst-pid ] || { cat /run/cairn-apt.log; exit 1; }
kill -KILL "$(cat /run/cairn-dpkg-pid)" "$(cat /run/cairn-preinst-pid)"
rm /run/cairn-block
while kill -0 "$(cat /run/cairn-apt-pid)" 2>/dev/null; do sleep 0.1; done
"#;

#[test]
fn a_dpkg_killed_mid_install_is_finished_before_the_next_change() {
    let m = Machine::boot("package-interrupted");
    m.sh_ok(&local_repository(&format!(
        "{STUCK}\npackage cairn-other\npublish"
    )));
    m.sh_ok(KILL_DPKG_MID_INSTALL);
    // What blocks every apt run until someone finishes dpkg's work.
    let blocked = m.sh("apt-get install -y cairn-other");
    let said = String::from_utf8_lossy(&blocked.stderr);
    assert!(
        !blocked.status.success() && said.contains("dpkg was interrupted"),
        "{said}"
    );

    let t = Timeline::new(
        &m,
        "package:cairn-other",
        "ls /var/lib/dpkg/updates; \
         dpkg-query --show --showformat='${Package} ${db:Status-Abbrev}\\n' 'cairn-*' 2>/dev/null; true",
    );
    assert!(
        t.probe().contains("cairn-stuck iHR"),
        "precondition: cairn-stuck half installed, reinstall required: {}",
        t.probe()
    );
    let after = t.converges(
        "[[package]]\nname = \"cairn-other\"\n",
        &[
            (
                "unfinished",
                "dpkg was interrupted: cairn-stuck half-installed",
                "finished",
            ),
            ("ensure", "absent", "installed"),
        ],
    );
    assert_eq!(after, "cairn-other ii \ncairn-stuck ii \n");
    m.sh_ok("test -e /usr/share/cairn-stuck/marker && apt-get install -y cairn-other");
}

/// What dpkg says of the `cairn-*` packages, one `NAME STATUS` line each.
const CAIRN_PACKAGES: &str =
    "dpkg-query --show --showformat='${Package} ${db:Status-Abbrev}\\n' 'cairn-*' 2>/dev/null";

#[test]
fn a_purged_package_loses_what_a_removal_left() {
    let m = Machine::boot("package-purged");
    m.sh_ok(&local_repository(
        "package cairn-conf '' '' /etc/cairn-conf.conf\npublish",
    ));
    let t = Timeline::new(
        &m,
        "package:cairn-conf",
        &format!("{CAIRN_PACKAGES}; cat /etc/cairn-conf.conf 2>/dev/null; true"),
    );
    assert_eq!(t.probe(), "", "precondition: dpkg does not know cairn-conf");
    let installed = "[[package]]\nname = \"cairn-conf\"\n";
    let purged = format!("{installed}state = \"purged\"\n");
    t.holds(&purged);

    let after = t.converges(installed, &[("ensure", "absent", "installed")]);
    assert_eq!(after, "cairn-conf ii \ncairn-conf default\n");
    // Removed: the configuration stays (dpkg's `rc`), which is absent enough.
    let after = t.converges(
        &format!("{installed}state = \"absent\"\n"),
        &[("ensure", "1.0", "absent")],
    );
    assert_eq!(after, "cairn-conf rc \ncairn-conf default\n");
    // Purged: what the removal left goes, and dpkg forgets the package.
    let after = t.converges(&purged, &[("ensure", "config-files", "purged")]);
    assert_eq!(after, "");

    // From installed straight to purged.
    t.converges(installed, &[("ensure", "absent", "installed")]);
    let after = t.converges(&purged, &[("ensure", "1.0", "purged")]);
    assert_eq!(after, "");
}

#[test]
fn install_recommends_false_leaves_recommended_packages_out() {
    let m = Machine::boot("package-recommends");
    m.sh_ok(&local_repository(
        "package cairn-other\n\
         package cairn-lean '' 'Recommends: cairn-other'\n\
         package cairn-full '' 'Recommends: cairn-other'\n\
         publish",
    ));
    // dpkg lists a recommended package it was told of but did not install as
    // `un`: only installed ones count here.
    let probe = format!("{CAIRN_PACKAGES} | grep ' ii '; true");
    let lean = Timeline::new(&m, "package:cairn-lean", &probe);
    let without = "[[package]]\nname = \"cairn-lean\"\ninstall_recommends = false\n";
    let after = lean.converges(without, &[("ensure", "absent", "installed")]);
    assert_eq!(after, "cairn-lean ii \n", "cairn-other came along");
    // An install option, not a property: an installed package is left alone.
    lean.holds("[[package]]\nname = \"cairn-lean\"\ninstall_recommends = true\n");

    // Without the option, the host's apt setting (Debian's: recommends on).
    let full = Timeline::new(&m, "package:cairn-full", &probe);
    let after = full.converges(
        "[[package]]\nname = \"cairn-full\"\n",
        &[("ensure", "absent", "installed")],
    );
    assert_eq!(after, "cairn-full ii \ncairn-lean ii \ncairn-other ii \n");
}

/// apt's own record of its transactions, one `Start-Date:` stanza each.
const APT_HISTORY: &str = "cat /var/log/apt/history.log 2>/dev/null; true";

/// The role of `names`, each `[[package]]` with nothing between them.
fn packages_role(names: &[&str]) -> String {
    let tables: Vec<String> = names
        .iter()
        .map(|n| format!("[[package]]\nname = \"{n}\"\n"))
        .collect();
    format!("[role]\nname = \"packages\"\n\n{}", tables.join("\n"))
}

/// What apt's history gained since it read `before`.
fn history_since(m: &Machine, before: &str) -> String {
    let now = m.sh_ok(APT_HISTORY);
    assert!(
        now.starts_with(before),
        "apt's history was rewritten:\nbefore:\n{before}\nnow:\n{now}"
    );
    now[before.len()..].to_string()
}

#[test]
fn the_packages_of_one_role_are_installed_in_one_apt_transaction() {
    let m = Machine::boot("package-together");
    let names = ["cairn-one", "cairn-two", "cairn-three"];
    m.sh_ok(&local_repository(
        "package cairn-one\npackage cairn-two\npackage cairn-three\npublish",
    ));
    m.write_file("/root/roles/packages/role.toml", packages_role(&names));
    let history = m.sh_ok(APT_HISTORY);

    let noop = m.apply_json("/root/roles/packages", &["--detailed-exitcodes", "--noop"]);
    assert_eq!(noop.code, 2, "{noop}");
    assert_eq!(noop.ids(ResourceStatus::WouldChange).len(), 3, "{noop}");
    assert_eq!(m.sh_ok(&format!("{CAIRN_PACKAGES}; true")), "");
    assert_eq!(history_since(&m, &history), "", "noop ran apt");

    let run = m.apply_json("/root/roles/packages", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    for name in names {
        let id = format!("package:{name}");
        assert_eq!(run.resource(&id).status, ResourceStatus::Changed, "{run}");
        assert!(
            run.has_change(&id, "ensure", "absent", "installed"),
            "{run}"
        );
    }
    assert_eq!(
        m.sh_ok(CAIRN_PACKAGES),
        "cairn-one ii \ncairn-three ii \ncairn-two ii \n"
    );
    // One transaction, as apt recorded it: one stanza installing all three.
    let added = history_since(&m, &history);
    assert_eq!(added.matches("Start-Date:").count(), 1, "{added}");
    let installed = added
        .lines()
        .find_map(|l| l.strip_prefix("Install: "))
        .unwrap_or_else(|| panic!("no Install: line in\n{added}"));
    for name in names {
        assert!(installed.contains(&format!("{name}:")), "{added}");
    }

    let history = m.sh_ok(APT_HISTORY);
    let again = m.apply_json("/root/roles/packages", &["--detailed-exitcodes"]);
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(again.ids(ResourceStatus::Unchanged).len(), 3, "{again}");
    assert_eq!(history_since(&m, &history), "", "a converged run ran apt");
}

#[test]
fn a_package_apt_cannot_find_fails_alone_and_the_others_of_its_transaction_are_installed() {
    let m = Machine::boot("package-together-unknown");
    m.sh_ok(&local_repository(
        "package cairn-one\npackage cairn-two\npublish",
    ));
    let names = ["cairn-one", UNKNOWN, "cairn-two"];
    m.write_file("/root/roles/packages/role.toml", packages_role(&names));

    // The second run: the others are left alone, the unknown one fails again.
    for (code, others) in [(6, ResourceStatus::Changed), (4, ResourceStatus::Unchanged)] {
        let run = m.apply_json("/root/roles/packages", &["--detailed-exitcodes"]);
        assert_eq!(run.code, code, "{run}");
        assert_eq!(
            run.ids(others),
            ["package:cairn-one", "package:cairn-two"],
            "{run}"
        );
        assert_eq!(
            run.ids(ResourceStatus::Failed),
            [format!("package:{UNKNOWN}")],
            "{run}"
        );
        let error = run
            .resource(&format!("package:{UNKNOWN}"))
            .error
            .as_deref()
            .unwrap_or_default();
        assert!(
            error.contains(&format!("could not install package {UNKNOWN}"))
                && error.contains(&format!("Unable to locate package {UNKNOWN}"))
                && !error.contains("cairn-one"),
            "{run}"
        );
        assert_eq!(m.sh_ok(CAIRN_PACKAGES), "cairn-one ii \ncairn-two ii \n");
    }
}

#[test]
fn a_dpkg_killed_mid_install_is_finished_once_before_a_shared_transaction() {
    let m = Machine::boot("package-together-interrupted");
    m.sh_ok(&local_repository(&format!(
        "{STUCK}\npackage cairn-other\npackage cairn-third\npublish"
    )));
    m.sh_ok(KILL_DPKG_MID_INSTALL);
    m.write_file(
        "/root/roles/packages/role.toml",
        packages_role(&["cairn-other", "cairn-third"]),
    );
    let history = m.sh_ok(APT_HISTORY);

    let run = m.apply_json("/root/roles/packages", &["--detailed-exitcodes"]);
    assert_eq!(run.code, 2, "{run}");
    for id in ["package:cairn-other", "package:cairn-third"] {
        let unfinished = "dpkg was interrupted: cairn-stuck half-installed";
        assert!(
            run.has_change(id, "unfinished", unfinished, "finished"),
            "{run}"
        );
        assert!(run.has_change(id, "ensure", "absent", "installed"), "{run}");
    }
    assert_eq!(
        m.sh_ok(CAIRN_PACKAGES),
        "cairn-other ii \ncairn-stuck ii \ncairn-third ii \n"
    );
    // After what finished dpkg's work, one transaction installed both.
    let added = history_since(&m, &history);
    let installs: Vec<&str> = added
        .lines()
        .filter(|l| l.starts_with("Commandline:") && l.contains("cairn-other"))
        .collect();
    assert!(
        installs.len() == 1 && installs[0].ends_with("install cairn-other cairn-third"),
        "{added}"
    );

    let again = m.apply_json("/root/roles/packages", &["--detailed-exitcodes"]);
    assert_eq!(again.code, 0, "{again}");
}
