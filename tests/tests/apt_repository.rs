//! `[[apt_repository]]` through the real agent and the real apt, against a
//! real signed repository the test builds inside the machine
//! (`apt-ftparchive`, keys made there with `gpg`) and serves on loopback
//! (busybox httpd): the source and key written, the lists refreshed before a
//! package from the repository is installed in the same run, nothing to do
//! after; a changed source; a key that is not the pinned one refused before
//! anything is touched; a key apt cannot verify the repository with, put
//! back (or removed, for a new repository); the repository removed; a first
//! boot without package lists. apt itself is the oracle: every apt-get
//! the agent runs is logged, and dpkg-query says what is installed.

use std::net::TcpListener;

use cairn_e2e::{Machine, Timeline};
use cairn_proto::report::ResourceStatus;

const NAME: &str = "cairn-test";
const ID: &str = "apt_repository:cairn-test";
const PACKAGE: &str = "cairn-hello";
const SOURCE: &str = "/etc/apt/sources.list.d/cairn-test.sources";
const KEY: &str = "/etc/apt/keyrings/cairn-test.gpg";

/// Tools from Debian's archive, then every apt-get logged (the real one
/// diverted, so the agent's PATH does not matter), then a package built,
/// indexed into a `dists/` repository, its `Release` signed with a key made
/// here, and served on 127.0.0.1:$1. A second key signs nothing.
const BUILD_AND_SERVE: &str = r#"
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends gpg gpg-agent apt-utils busybox >/dev/null
dpkg-divert --quiet --local --rename --add /usr/bin/apt-get
printf '#!/bin/sh\necho "$*" >> /run/cairn-apt-get.log\nexec /usr/bin/apt-get.distrib "$@"\n' > /usr/bin/apt-get
chmod 755 /usr/bin/apt-get

arch=$(dpkg --print-architecture)
pkg=/root/build/cairn-hello
mkdir -p $pkg/DEBIAN $pkg/usr/share/cairn-hello
echo hello > $pkg/usr/share/cairn-hello/marker
printf 'Package: cairn-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Cairn tests <tests@cairn.invalid>\nDescription: Cairn test package\n' > $pkg/DEBIAN/control
mkdir -p /srv/repo/pool/main /srv/repo/dists/cairn/main/binary-$arch
dpkg-deb --root-owner-group --build $pkg /srv/repo/pool/main/cairn-hello_1.0_all.deb >/dev/null
cd /srv/repo
apt-ftparchive packages pool/main > dists/cairn/main/binary-$arch/Packages
apt-ftparchive -o APT::FTPArchive::Release::Suite=cairn -o APT::FTPArchive::Release::Codename=cairn \
    -o APT::FTPArchive::Release::Components=main -o APT::FTPArchive::Release::Architectures=$arch \
    release dists/cairn > dists/cairn/Release

export GNUPGHOME=/root/gnupg
mkdir -m 700 -p $GNUPGHOME /root/keys
for who in repo other; do
    gpg --batch -q --passphrase '' --quick-gen-key "Cairn $who <$who@cairn.invalid>" ed25519 sign never
    gpg --export $who@cairn.invalid > /root/keys/$who.gpg
    gpg --with-colons --list-keys $who@cairn.invalid | awk -F: '/^fpr/ {print $10; exit}' > /root/keys/$who.fpr
done
gpg --armor --export other@cairn.invalid > /root/keys/other.asc
gpg --batch --yes --local-user repo@cairn.invalid --clearsign -o dists/cairn/InRelease dists/cairn/Release
gpgconf --kill gpg-agent

systemd-run --quiet --unit=cairn-repo busybox httpd -f -p 127.0.0.1:$1 -h /srv/repo
for i in $(seq 100); do
    busybox wget -q -O /dev/null http://127.0.0.1:$1/dists/cairn/InRelease && exit 0
    sleep 0.1
done
echo "the repository is not served" >&2
exit 1
"#;

/// The machine's own view: the two files (content, digest, owner and mode)
/// and the lists apt keeps of the repository.
const PROBE: &str = "cd /etc/apt; cat sources.list.d/cairn-test.sources 2>/dev/null; \
    sha256sum keyrings/cairn-test.gpg 2>/dev/null; \
    stat -c '%U:%G %a %n' sources.list.d/cairn-test.sources keyrings/cairn-test.gpg 2>/dev/null; \
    ls /var/lib/apt/lists | grep '^127.0.0.1'; true";

const ROLE_DIR: &str = "/root/roles/timeline";

/// A free port on loopback, which the machine shares with this host.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("could not bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// How a report names content: `sha256:` and 12 hex digits, and its size.
fn digest_label(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(data);
    let short: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{short}…, {} bytes", data.len())
}

/// A fingerprint as people write it: groups of four, two spaces midway.
fn spaced(fpr: &str) -> String {
    let groups: Vec<&str> = (0..10).map(|i| &fpr[i * 4..i * 4 + 4]).collect();
    format!("{}  {}", groups[..5].join(" "), groups[5..].join(" "))
}

struct Repo {
    port: u16,
    arch: String,
}

impl Repo {
    /// The `[[apt_repository]]` table, `extra` lines at its end.
    fn table(&self, key: &str, fingerprint: &str, extra: &str) -> String {
        format!(
            "[[apt_repository]]\nname = \"{NAME}\"\nuris = [\"http://127.0.0.1:{}/\"]\n\
             suites = [\"cairn\"]\ncomponents = [\"main\"]\nkey = \"{key}\"\n\
             fingerprint = \"{fingerprint}\"\n{extra}",
            self.port
        )
    }

    /// The source file the agent must write, with `extra` lines before
    /// `Signed-By`.
    fn source_file(&self, extra: &str) -> String {
        format!(
            "# Managed by Cairn ([[apt_repository]] {NAME}); changes here are replaced.\n\
             Types: deb\nURIs: http://127.0.0.1:{}/\nSuites: cairn\nComponents: main\n{extra}\
             Signed-By: {KEY}\n",
            self.port
        )
    }
}

fn binary(m: &Machine, path: &str) -> Vec<u8> {
    let out = m.sh(&format!("cat {path}"));
    assert!(out.status.success(), "cannot read {path}");
    out.stdout
}

#[test]
fn apt_repository_timeline_against_a_signed_repository_on_loopback() {
    let m = Machine::boot("apt-repository");
    let port = free_port();
    m.write_file("/root/build-repo.sh", BUILD_AND_SERVE);
    m.sh_ok(&format!("sh /root/build-repo.sh {port}"));
    let repo = Repo {
        port,
        arch: m.sh_ok("dpkg --print-architecture").trim().to_string(),
    };
    let repo_key = binary(&m, "/root/keys/repo.gpg");
    let other_key = binary(&m, "/root/keys/other.gpg");
    let repo_fpr = m.sh_ok("cat /root/keys/repo.fpr").trim().to_string();
    let other_fpr = m.sh_ok("cat /root/keys/other.fpr").trim().to_string();
    m.sh_ok(&format!(
        "mkdir -p {ROLE_DIR}/files && cp /root/keys/repo.gpg /root/keys/other.asc {ROLE_DIR}/files/"
    ));
    let t = Timeline::new(&m, ID, PROBE);
    assert_eq!(
        t.probe(),
        "",
        "precondition: apt knows nothing of the repository"
    );

    // The repository and a package only it has, in one role.
    let table = repo.table("repo.gpg", &spaced(&repo_fpr), "");
    let with_package = format!("{table}\n[[package]]\nname = \"{PACKAGE}\"\n");
    m.write_file(
        &format!("{ROLE_DIR}/role.toml"),
        format!("[role]\nname = \"timeline\"\n\n{with_package}"),
    );
    let source = repo.source_file("");
    let added = [
        (
            "source",
            "absent".to_string(),
            digest_label(source.as_bytes()),
        ),
        ("key", "absent".to_string(), digest_label(&repo_key)),
    ];
    let noop = m.apply_json(ROLE_DIR, &["--detailed-exitcodes", "--noop"]);
    assert_eq!(noop.code, 2, "{noop}");
    assert_eq!(
        noop.resource(ID).status,
        ResourceStatus::WouldChange,
        "{noop}"
    );
    for (property, before, after) in &added {
        assert!(noop.has_change(ID, property, before, after), "{noop}");
    }
    let diff = noop.resource(ID).diff.as_deref().unwrap_or_default();
    assert!(
        diff.contains("+Signed-By: /etc/apt/keyrings/cairn-test.gpg"),
        "{noop}"
    );
    assert!(
        noop.has_change(
            &format!("package:{PACKAGE}"),
            "ensure",
            "absent",
            "installed"
        ),
        "{noop}"
    );
    assert_eq!(t.probe(), "", "--noop touched the host");

    m.sh_ok("rm -f /run/cairn-apt-get.log");
    let run = m.apply_json(ROLE_DIR, &["--detailed-exitcodes"]);
    assert_eq!(
        (run.code, run.ids(ResourceStatus::Changed)),
        (2, vec![ID, "package:cairn-hello"]),
        "{run}"
    );
    for (property, before, after) in &added {
        assert!(run.has_change(ID, property, before, after), "{run}");
    }
    let after = t.probe();
    let lists = format!(
        "127.0.0.1:{port}_dists_cairn_InRelease\n\
         127.0.0.1:{port}_dists_cairn_main_binary-{}_Packages\n",
        repo.arch
    );
    assert_eq!(
        after,
        format!(
            "{source}{}  keyrings/cairn-test.gpg\nroot:root 644 sources.list.d/cairn-test.sources\n\
             root:root 644 keyrings/cairn-test.gpg\n{lists}",
            sha256_hex(&repo_key)
        )
    );
    assert_eq!(
        m.sh_ok(&format!(
            "dpkg-query --show --showformat='${{db:Status-Abbrev}}${{Version}}' {PACKAGE}"
        )),
        "ii 1.0"
    );
    // apt's lists of the repository alone were refreshed, and before the
    // package was installed: one update, of the new source only.
    let calls = m.sh_ok("cat /run/cairn-apt-get.log");
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert!(
        calls[0].contains("Dir::Etc::sourcelist=/")
            && calls[0].contains("Dir::Etc::sourceparts=-")
            && calls[0].ends_with("--error-on=any update"),
        "{calls:#?}"
    );
    assert!(
        calls[1].contains("install") && calls[1].ends_with(PACKAGE),
        "{calls:#?}"
    );

    // Nothing to do, and nothing run to find that out.
    m.sh_ok("rm -f /run/cairn-apt-get.log");
    let again = m.apply_json(ROLE_DIR, &["--detailed-exitcodes"]);
    assert_eq!(
        (again.code, again.ids(ResourceStatus::Unchanged).len()),
        (0, 2),
        "{again}"
    );
    assert_eq!(m.sh_ok("cat /run/cairn-apt-get.log 2>/dev/null; true"), "");
    assert_eq!(t.probe(), after);

    // A changed source: only it changes, and its lists are refreshed.
    let arch_line = format!("Architectures: {}\n", repo.arch);
    let narrowed = repo.table(
        "repo.gpg",
        &repo_fpr,
        &format!("architectures = [\"{}\"]\n", repo.arch),
    );
    let narrowed_source = repo.source_file(&arch_line);
    let after = t.converges(
        &narrowed,
        &[(
            "source",
            &digest_label(source.as_bytes()),
            &digest_label(narrowed_source.as_bytes()),
        )],
    );
    assert!(after.starts_with(&narrowed_source), "{after}");

    // The role carries a key that is not the pinned one: the role is
    // refused, naming the file, line and field, and nothing is touched.
    let wrong = repo.table("other.asc", &repo_fpr, "");
    m.write_file(
        &format!("{ROLE_DIR}/role.toml"),
        format!("[role]\nname = \"timeline\"\n\n{wrong}"),
    );
    let (code, out, err) = m.agent(&["apply", ROLE_DIR]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains(&format!(
            "role.toml:9:7: [[apt_repository]] \"{NAME}\", field `key`: files/other.asc: the key's \
             fingerprint is {other_fpr}, not the pinned {repo_fpr}"
        )),
        "{err}"
    );
    assert_eq!(t.probe(), after, "a refused role touched the host");

    // A key pinned right but not the one the repository is signed with:
    // apt refuses the repository, the run fails saying why, and the old key
    // is put back, so apt still works with the repository. The package,
    // which follows the repository, is skipped.
    let unverifiable = repo.table(
        "other.asc",
        &other_fpr,
        &format!("architectures = [\"{}\"]\n", repo.arch),
    );
    let failed = t.fails(
        &format!("{unverifiable}\n[[package]]\nname = \"{PACKAGE}\"\n"),
        &[("key", &digest_label(&repo_key), &digest_label(&other_key))],
        &[
            &format!("{SOURCE} was not written and {KEY} is as it was"),
            "could not refresh the package lists of cairn-test",
            "NO_PUBKEY",
        ],
    );
    let skipped = failed.resource(&format!("package:{PACKAGE}"));
    assert_eq!(
        (skipped.status, skipped.error.as_deref()),
        (
            ResourceStatus::Skipped,
            Some("skipped because apt_repository:cairn-test failed")
        ),
        "{failed}"
    );
    m.sh_ok("apt-get update --error-on=any -q >/dev/null");

    // Removed: both files go; apt goes on without the repository.
    let after = t.converges(
        &format!("[[apt_repository]]\nname = \"{NAME}\"\nstate = \"absent\"\n"),
        &[
            (
                "source",
                &digest_label(narrowed_source.as_bytes()),
                "absent",
            ),
            ("key", &digest_label(&repo_key), "absent"),
        ],
    );
    assert!(!after.contains("cairn-test"), "{after}");
    m.sh_ok("apt-get update -q >/dev/null");

    // A new repository apt refuses leaves neither file behind.
    t.fails(
        &unverifiable,
        &[
            (
                "source",
                "absent",
                &digest_label(narrowed_source.as_bytes()),
            ),
            ("key", "absent", &digest_label(&other_key)),
        ],
        &["NO_PUBKEY"],
    );
    assert!(!t.probe().contains("cairn-test"), "{}", t.probe());

    // A first boot, with no package lists at all: the repository's own
    // refresh does not pass for the other sources', which are refreshed
    // before a package from Debian's archive is installed (and no install
    // fails first for want of them).
    m.sh_ok("rm -rf /var/lib/apt/lists/* /run/cairn-apt-get.log");
    m.write_file(
        &format!("{ROLE_DIR}/role.toml"),
        format!("[role]\nname = \"timeline\"\n\n{table}\n[[package]]\nname = \"figlet\"\n"),
    );
    let run = m.apply_json(ROLE_DIR, &["--detailed-exitcodes"]);
    assert_eq!(
        (run.code, run.ids(ResourceStatus::Changed)),
        (2, vec![ID, "package:figlet"]),
        "{run}"
    );
    let calls = m.sh_ok("cat /run/cairn-apt-get.log");
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert!(
        calls[0].contains("Dir::Etc::sourceparts=-") && calls[0].ends_with("update"),
        "{calls:#?}"
    );
    assert!(
        calls[1].ends_with(" update") && !calls[1].contains("Dir::Etc::sourcelist"),
        "{calls:#?}"
    );
    assert!(
        calls[2].contains("install") && calls[2].ends_with(" figlet"),
        "{calls:#?}"
    );
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
