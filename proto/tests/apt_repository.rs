//! `[[apt_repository]]`: its fields, its key held to the pinned fingerprint,
//! its source file, and every package ordered after it.

use cairn_proto::bundle::RoleBundle;
use cairn_proto::facts::Facts;
use cairn_proto::openpgp;
use cairn_proto::role::{self, Diagnostic, Role, Spec};

const REPO_ASC: &str = include_str!("keys/repo.asc");
const REPO_GPG: &[u8] = include_bytes!("keys/repo.gpg");
const OTHER_ASC: &str = include_str!("keys/other.asc");
const REPO_FPR: &str = "469EA33FDEA8A085D6458369A4CDD6CD0D822EDC";
const REPO_SUBKEY_FPR: &str = "66B819103A175BAA9447033F26A0A8EC16383EB7";
const OTHER_FPR: &str = "CABBF4C266E5DA751AB1A98F6A75DBF599D80F29";

const HEAD: &str = "[role]\nname = \"t\"\n";

/// A role of `body` (after `[role]`), with `files/repo.asc` holding `key`.
fn load_with_key(body: &str, key: &[u8]) -> Result<Role, Vec<Diagnostic>> {
    let mut bundle = RoleBundle::default();
    bundle
        .insert("role.toml".into(), format!("{HEAD}\n{body}").into_bytes())
        .unwrap();
    bundle
        .insert("files/repo.asc".into(), key.to_vec())
        .unwrap();
    role::load(&bundle, &Facts::placeholder()).map_err(|d| d.0)
}

fn only_error(body: &str, key: &[u8]) -> Diagnostic {
    let d = load_with_key(body, key).expect_err("the role was accepted");
    assert_eq!(d.len(), 1, "expected one error, got: {d:#?}");
    d.into_iter().next().unwrap()
}

/// A present repository on lines 4 to 9, `extra` after it.
fn repo(extra: &str) -> String {
    format!(
        "[[apt_repository]]\nname = \"example\"\nuris = [\"http://127.0.0.1:8080/debian\"]\n\
         suites = [\"bookworm\"]\ncomponents = [\"main\"]\nkey = \"repo.asc\"\n{extra}"
    )
}

#[test]
fn fingerprints_match_gpgs() {
    for (data, want) in [(REPO_ASC.as_bytes(), REPO_FPR), (REPO_GPG, REPO_FPR)] {
        let key = openpgp::read_public_key(data).unwrap();
        assert_eq!(key.fingerprint, want);
        assert_eq!(key.subkeys, [REPO_SUBKEY_FPR]);
        // Dearmored, the armored key is the binary one, byte for byte.
        assert_eq!(key.binary, REPO_GPG);
    }
    let other = openpgp::read_public_key(OTHER_ASC.as_bytes()).unwrap();
    assert_eq!(
        (other.fingerprint.as_str(), other.subkeys.len()),
        (OTHER_FPR, 0)
    );
    assert_eq!(
        openpgp::normalize_fingerprint("469e a33f dea8 a085 d645  8369 a4cd d6cd 0d82 2edc"),
        REPO_FPR
    );
}

/// gpg, where it is installed, reads the dearmored key as it reads the
/// armored one, with the same fingerprints (`--show-keys` imports nothing).
#[test]
fn gpg_reads_the_dearmored_key_with_the_same_fingerprints() {
    if cairn_proto_has_no_gpg() {
        eprintln!("gpg is not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in [("repo.asc", REPO_ASC), ("other.asc", OTHER_ASC)] {
        let key = openpgp::read_public_key(data.as_bytes()).unwrap();
        let path = dir.path().join(name).with_extension("gpg");
        std::fs::write(&path, &key.binary).unwrap();
        let out = std::process::Command::new("gpg")
            .args(["--batch", "--with-colons", "--show-keys"])
            .arg(&path)
            .env("GNUPGHOME", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let fprs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("fpr:"))
            .map(|l| l.split(':').nth(9).unwrap().to_string())
            .collect();
        let mut ours = vec![key.fingerprint];
        ours.extend(key.subkeys);
        assert_eq!(fprs, ours, "{name}");
    }
}

fn cairn_proto_has_no_gpg() -> bool {
    std::process::Command::new("gpg")
        .arg("--version")
        .output()
        .is_err()
}

#[test]
fn a_repository_loads_with_its_source_file_and_binary_key() {
    let body = repo(
        "fingerprint = \"469e a33f dea8 a085 d645  8369 a4cd d6cd 0d82 2edc\"\n\
                     architectures = [\"amd64\", \"arm64\"]\n",
    );
    let role = load_with_key(&body, REPO_ASC.as_bytes()).unwrap();
    let Spec::AptRepository(r) = &role.resources[0].spec else {
        panic!("{role:#?}")
    };
    assert_eq!(r.source_path(), "/etc/apt/sources.list.d/example.sources");
    assert_eq!(r.key_path(), "/etc/apt/keyrings/example.gpg");
    assert_eq!(
        r.source_file().unwrap(),
        "# Managed by Cairn ([[apt_repository]] example); changes here are replaced.\n\
         Types: deb\nURIs: http://127.0.0.1:8080/debian\nSuites: bookworm\nComponents: main\n\
         Architectures: amd64 arm64\nSigned-By: /etc/apt/keyrings/example.gpg\n"
    );
    let source = r.source.as_ref().unwrap();
    assert_eq!(
        (source.fingerprint.as_str(), &source.key[..]),
        (REPO_FPR, REPO_GPG)
    );

    // A binary key file, and a flat repository (no components).
    let flat = format!(
        "[[apt_repository]]\nname = \"flat\"\ntypes = [\"deb\", \"deb-src\"]\n\
         uris = [\"file:/srv/repo\"]\nsuites = [\"./\"]\nkey = \"repo.asc\"\n\
         fingerprint = \"{REPO_FPR}\"\n"
    );
    let role = load_with_key(&flat, REPO_GPG).unwrap();
    let Spec::AptRepository(r) = &role.resources[0].spec else {
        panic!()
    };
    assert_eq!(
        r.source_file().unwrap(),
        "# Managed by Cairn ([[apt_repository]] flat); changes here are replaced.\n\
         Types: deb deb-src\nURIs: file:/srv/repo\nSuites: ./\n\
         Signed-By: /etc/apt/keyrings/flat.gpg\n"
    );
    assert_eq!(r.source.as_ref().unwrap().key, REPO_GPG);

    // Absent: the name alone.
    let role = load_with_key(
        "[[apt_repository]]\nname = \"old\"\nstate = \"absent\"\n",
        b"",
    )
    .unwrap();
    let Spec::AptRepository(r) = &role.resources[0].spec else {
        panic!()
    };
    assert_eq!((r.source.as_ref(), r.source_file()), (None, None));
}

#[test]
fn every_package_follows_every_repository_unless_a_repository_needs_it() {
    let body = format!(
        "[[package]]\nname = \"app\"\n\n[[package]]\nname = \"ca-certificates\"\n\n\
         [[package]]\nname = \"curl\"\n\n[[exec]]\nname = \"prepare\"\ncommand = \"true\"\n\
         requires = [\"package:curl\"]\n\n{}\n{}requires = [\"package:ca-certificates\"]\n\n\
         [[apt_repository]]\nname = \"second\"\nuris = [\"https://b.example/\"]\n\
         suites = [\"./\"]\nkey = \"repo.asc\"\nfingerprint = \"{REPO_FPR}\"\n\
         requires = [\"exec:prepare\"]\n",
        "",
        repo(&format!("fingerprint = \"{REPO_FPR}\"\n"))
    );
    let role = load_with_key(&body, REPO_ASC.as_bytes()).unwrap();
    let order: Vec<String> = role.resources.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(
        order,
        [
            "package:ca-certificates",
            "apt_repository:example",
            "package:curl",
            "exec:prepare",
            "apt_repository:second",
            "package:app",
        ]
    );
    let requires = |id: &str| -> Vec<String> {
        role.get(&id.parse().unwrap())
            .unwrap()
            .requires
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        requires("package:app"),
        ["apt_repository:example", "apt_repository:second"]
    );
    // Each is needed by a repository: installed from the lists there are.
    assert!(requires("package:ca-certificates").is_empty());
    assert!(requires("package:curl").is_empty());
}

#[test]
fn a_key_that_is_not_the_pinned_one_is_refused_at_the_key_field() {
    let body = repo(&format!("fingerprint = \"{REPO_FPR}\"\n"));
    let d = only_error(&body, OTHER_ASC.as_bytes());
    assert_eq!(
        (d.file.as_str(), d.line, d.field.as_deref()),
        ("role.toml", 9, Some("key")),
        "{d}"
    );
    assert_eq!(
        d.message,
        format!("files/repo.asc: the key's fingerprint is {OTHER_FPR}, not the pinned {REPO_FPR}")
    );
    assert_eq!(d.context.as_deref(), Some("[[apt_repository]] \"example\""));

    // The subkey's fingerprint pinned: the help names the primary key's.
    let body = repo(&format!("fingerprint = \"{REPO_SUBKEY_FPR}\"\n"));
    let d = only_error(&body, REPO_ASC.as_bytes());
    assert_eq!(d.field.as_deref(), Some("key"));
    assert!(d.help.as_deref().unwrap().contains(REPO_FPR), "{d}");
}

#[test]
fn keys_that_are_not_one_public_key_are_refused() {
    let body = repo(&format!("fingerprint = \"{REPO_FPR}\"\n"));
    let two = format!("{REPO_ASC}{OTHER_ASC}");
    let mut two_binary = REPO_GPG.to_vec();
    two_binary.extend(
        openpgp::read_public_key(OTHER_ASC.as_bytes())
            .unwrap()
            .binary,
    );
    let secret =
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlFgE\n-----END PGP PRIVATE KEY BLOCK-----\n";
    // A secret key packet (tag 5, new format) at the start of a binary file.
    let secret_binary = [0xc5, 0x01, 0x04];
    let cases: [(&[u8], &str); 7] = [
        (b"", "the key is empty"),
        (b"not a key at all", "the key is not an OpenPGP key"),
        (two.as_bytes(), "more than one armored block"),
        (&two_binary, "holds more than one public key"),
        (secret.as_bytes(), "holds a secret key"),
        (&secret_binary, "holds a secret key"),
        (&REPO_GPG[..100], "a packet is cut short"),
    ];
    for (key, want) in cases {
        let d = only_error(&body, key);
        assert_eq!((d.line, d.field.as_deref()), (9, Some("key")), "{d}");
        assert!(d.message.contains(want), "{want:?}: {d}");
    }
}

#[test]
fn bad_fields_are_named_with_their_line() {
    let fpr = format!("fingerprint = \"{REPO_FPR}\"\n");
    let cases: Vec<(String, usize, &str, &str)> = vec![
        (
            repo(&fpr).replace("\"example\"", "\"../etc/passwd\""),
            5,
            "name",
            "invalid name \"../etc/passwd\"",
        ),
        (
            repo("fingerprint = \"469E A33F\"\n"),
            10,
            "fingerprint",
            "invalid fingerprint \"469E A33F\"",
        ),
        (
            repo(&fpr).replace(
                "http://127.0.0.1:8080/debian",
                "https://user:secret@apt.example",
            ),
            6,
            "uris",
            "holds credentials",
        ),
        (
            repo(&fpr).replace("http://127.0.0.1:8080/debian", "apt.example.com"),
            6,
            "uris",
            "has no scheme",
        ),
        (
            repo(&fpr).replace("[\"bookworm\"]", "[\"bookworm main\"]"),
            7,
            "suites",
            "contains a space",
        ),
        (
            repo(&fpr).replace("[\"bookworm\"]", "[\"./\"]"),
            8,
            "components",
            "a flat repository (its suite ends in /) has no components",
        ),
        (
            repo(&fpr).replace("components = [\"main\"]\n", ""),
            7,
            "components",
            "a suite that is a distribution needs `components`",
        ),
        (
            repo(&fpr).replace("[\"main\"]", "[]"),
            8,
            "components",
            "`components` is empty",
        ),
        (
            format!("{}types = [\"rpm\"]\n", repo(&fpr)),
            11,
            "types",
            "a source type is \"deb\" or \"deb-src\"",
        ),
        (
            format!("{}architectures = [\"AMD64\"]\n", repo(&fpr)),
            11,
            "architectures",
            "an architecture is lowercase",
        ),
        (
            repo(&fpr).replace("key = \"repo.asc\"\n", ""),
            4,
            "key",
            "missing field `key`",
        ),
        (
            "[[apt_repository]]\nname = \"old\"\nstate = \"absent\"\nkey = \"repo.asc\"\n".into(),
            7,
            "key",
            "`key` cannot be set on an apt_repository with state = \"absent\"",
        ),
        (
            repo(&fpr).replace("repo.asc", "missing.asc"),
            9,
            "key",
            "files/missing.asc does not exist in the role",
        ),
    ];
    for (body, line, field, message) in cases {
        let d = only_error(&body, REPO_ASC.as_bytes());
        assert_eq!(
            (d.file.as_str(), d.line, d.field.as_deref()),
            ("role.toml", line, Some(field)),
            "{message}: {d}"
        );
        assert!(d.message.contains(message), "{message:?}: {d}");
    }
}

proptest::proptest! {
    /// Whatever the bytes, reading them as a key returns; a valid key cut or
    /// changed anywhere is read or refused, never a panic.
    #[test]
    fn any_bytes_are_read_or_refused(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
        let _ = openpgp::read_public_key(&data);
    }

    #[test]
    fn a_changed_key_is_read_or_refused(at in 0..REPO_GPG.len(), byte in proptest::num::u8::ANY, cut in 0..REPO_GPG.len()) {
        let mut data = REPO_GPG.to_vec();
        data[at] = byte;
        let _ = openpgp::read_public_key(&data);
        let _ = openpgp::read_public_key(&REPO_GPG[..cut]);
    }
}
