//! `tests/machine/build-image.sh --print-mirrors` on sample apt sources: the
//! mirror the image is built from, as the host's apt configuration says it,
//! including the `mirror+file:` URIs of Debian's official cloud images. Boots
//! no machine and changes nothing on the host.

use std::fs;
use std::path::Path;
use std::process::Command;

use cairn_e2e::workspace_root;

/// A host root holding only the files given as `(path under the root, content)`.
fn host_root(files: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = root.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
    }
    root
}

/// Runs `build-image.sh --print-mirrors` on the apt sources under `root`, with
/// `env` set; returns its exit code, stdout and stderr.
fn print_mirrors(root: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(workspace_root().join("tests/machine/build-image.sh"))
        .arg("--print-mirrors")
        .env_remove("CAIRN_DEBIAN_MIRROR")
        .env_remove("CAIRN_DEBIAN_SECURITY_MIRROR")
        .env("CAIRN_HOST_ROOT", root)
        .envs(env.iter().copied())
        .output()
        .expect("could not run tests/machine/build-image.sh");
    (
        out.status.code().expect("build-image.sh was killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `/etc/apt/sources.list.d/debian.sources` as Debian's bookworm cloud images
/// ship it (genericcloud, nocloud): the mirrors are in files of their own.
const CLOUD_SOURCES: &str = "\
Types: deb deb-src
URIs: mirror+file:///etc/apt/mirrors/debian.list
Suites: bookworm bookworm-updates bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: mirror+file:///etc/apt/mirrors/debian-security.list
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

#[test]
fn cloud_image_sources_name_the_mirror_through_a_mirror_list() {
    let root = host_root(&[
        ("etc/apt/sources.list.d/debian.sources", CLOUD_SOURCES),
        (
            "etc/apt/mirrors/debian.list",
            "# the first mirror is the one apt tries first\n\nhttps://deb.debian.org/debian/\tpriority:1\nhttp://ftp.de.debian.org/debian\n",
        ),
        (
            "etc/apt/mirrors/debian-security.list",
            "https://deb.debian.org/debian-security\n",
        ),
    ]);
    assert_eq!(
        print_mirrors(root.path(), &[]),
        (
            0,
            "https://deb.debian.org/debian\nhttps://deb.debian.org/debian-security\n".into(),
            String::new()
        )
    );
}

#[test]
fn a_missing_mirror_list_is_named() {
    let root = host_root(&[("etc/apt/sources.list.d/debian.sources", CLOUD_SOURCES)]);
    let (code, out, err) = print_mirrors(root.path(), &[]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("mirror list /etc/apt/mirrors/debian.list, which does not exist"),
        "{err}"
    );
    assert!(
        err.contains("found no Debian mirror") && err.contains("help: set CAIRN_DEBIAN_MIRROR"),
        "{err}"
    );
}

#[test]
fn one_line_sources_with_options() {
    let root = host_root(&[(
        "etc/apt/sources.list",
        "# deb http://commented.example/debian bookworm main\n\
         deb-src http://src.example/debian bookworm main\n\
         deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm main\n\
         deb http://security.example/debian-security bookworm-security main\n",
    )]);
    assert_eq!(
        print_mirrors(root.path(), &[]).1,
        "http://mirror.example/debian\nhttp://security.example/debian-security\n"
    );
}

#[test]
fn deb822_skips_disabled_and_source_only_stanzas() {
    let root = host_root(&[(
        "etc/apt/sources.list.d/debian.sources",
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nEnabled: no\n\n\
         Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
         # a comment between stanzas\n\
         Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n",
    )]);
    assert_eq!(
        print_mirrors(root.path(), &[]).1,
        "http://mirror.example/debian\n\n",
        "no security mirror: an empty second line"
    );
}

#[test]
fn the_environment_overrides_the_sources() {
    let root = host_root(&[]);
    let (code, _, err) = print_mirrors(root.path(), &[]);
    assert_eq!(code, 1);
    assert!(err.contains("found no Debian mirror"), "{err}");
    let env = [
        ("CAIRN_DEBIAN_MIRROR", "http://override.example/debian/"),
        (
            "CAIRN_DEBIAN_SECURITY_MIRROR",
            "http://override.example/debian-security",
        ),
    ];
    assert_eq!(
        print_mirrors(root.path(), &env).1,
        "http://override.example/debian\nhttp://override.example/debian-security\n"
    );
}
