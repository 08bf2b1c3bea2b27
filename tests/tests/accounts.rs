//! `[[group]]` and `[[user]]` through the real agent and the real shadow
//! tools, on a fresh machine: creation with every declared property, drift
//! made by hand that exactly it repairs, properties left unmanaged that are
//! never compared, changes the role makes, and removal. `getent` (the C
//! library's view, not the agent's parser) is the oracle.

use cairn_e2e::{Machine, Timeline};

/// The fields of `name`'s passwd entry, or `None` when there is none.
fn passwd(m: &Machine, name: &str) -> Option<Vec<String>> {
    let line = m.sh_ok(&format!("getent passwd {name}; true"));
    let line = line.trim_end();
    (!line.is_empty()).then(|| line.split(':').map(String::from).collect())
}

/// The passwd entry of `name`, which must exist.
fn user(m: &Machine, name: &str) -> Vec<String> {
    passwd(m, name).unwrap_or_else(|| panic!("getent knows no user {name}"))
}

/// The members of `group`, as the group database lists them.
fn members(m: &Machine, group: &str) -> Vec<String> {
    let line = m.sh_ok(&format!("getent group {group}"));
    let list = line.trim_end().rsplit(':').next().unwrap_or_default();
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn group_timeline() {
    let m = Machine::boot("group");
    let t = Timeline::new(&m, "group:cairn-grp", "getent group cairn-grp; true");
    assert_eq!(t.probe(), "", "precondition: no group cairn-grp");
    let group = |gid: &str| format!("[[group]]\nname = \"cairn-grp\"\n{gid}");

    let after = t.converges(&group("gid = 4200\n"), &[("ensure", "absent", "present")]);
    assert_eq!(after, "cairn-grp:x:4200:\n");

    // Changed by hand: exactly that drift, and apply puts it back.
    m.sh_ok("groupmod --gid 4201 cairn-grp");
    let after = t.converges(&group("gid = 4200\n"), &[("gid", "4201", "4200")]);
    assert_eq!(after, "cairn-grp:x:4200:\n");

    // A gid the role leaves out is never compared.
    m.sh_ok("groupmod --gid 4201 cairn-grp");
    t.holds(&group(""));

    // The role changes the gid.
    let after = t.converges(&group("gid = 4202\n"), &[("gid", "4201", "4202")]);
    assert_eq!(after, "cairn-grp:x:4202:\n");

    let after = t.converges(
        &group("state = \"absent\"\n"),
        &[("ensure", "present", "absent")],
    );
    assert_eq!(after, "");
}

#[test]
fn user_timeline() {
    let m = Machine::boot("user");
    let (name, home) = ("cairn-usr", "/home/cairn-usr");
    let t = Timeline::new(
        &m,
        &format!("user:{name}"),
        &format!(
            "getent passwd {name}; getent group cairn-ga cairn-gb; ls -d {home} 2>/dev/null; true"
        ),
    );
    m.sh_ok("groupadd cairn-ga && groupadd cairn-gb");
    assert_eq!(passwd(&m, name), None, "precondition: no user {name}");
    let spec = |uid: u32, comment: &str| {
        format!(
            "[[user]]\nname = \"{name}\"\nuid = {uid}\ngroups = [\"cairn-ga\"]\n\
             shell = \"/bin/bash\"\nhome = \"{home}\"\ncomment = \"{comment}\"\n"
        )
    };

    // Created with every declared property and a home directory.
    t.converges(
        &spec(4300, "Cairn test user"),
        &[("ensure", "absent", "present")],
    );
    let pw = user(&m, name);
    assert_eq!(
        (&*pw[2], &*pw[4], &*pw[5], &*pw[6]),
        ("4300", "Cairn test user", home, "/bin/bash")
    );
    m.sh_ok(&format!("test -d {home}"));
    assert_eq!(members(&m, "cairn-ga"), [name]);
    assert!(members(&m, "cairn-gb").is_empty());

    // Changed by hand: exactly that drift, and apply puts it back.
    m.sh_ok(&format!("usermod --shell /bin/sh {name}"));
    t.converges(
        &spec(4300, "Cairn test user"),
        &[("shell", "/bin/sh", "/bin/bash")],
    );
    assert_eq!(user(&m, name)[6], "/bin/bash");

    // Membership is a minimum: an undeclared group added by hand stays ...
    m.sh_ok(&format!("usermod --append --groups cairn-gb {name}"));
    t.holds(&spec(4300, "Cairn test user"));
    // ... and a declared one removed by hand comes back without dropping it.
    m.sh_ok(&format!("gpasswd --delete {name} cairn-ga"));
    t.converges(
        &spec(4300, "Cairn test user"),
        &[("groups", "cairn-gb", "cairn-gb,cairn-ga")],
    );
    assert_eq!(
        (members(&m, "cairn-ga"), members(&m, "cairn-gb")),
        (vec![name.to_string()], vec![name.to_string()])
    );

    // The role changes uid and comment: both, and nothing else, change.
    t.converges(
        &spec(4301, "Renamed"),
        &[
            ("uid", "4300", "4301"),
            ("comment", "Cairn test user", "Renamed"),
        ],
    );
    let pw = user(&m, name);
    assert_eq!((&*pw[2], &*pw[4]), ("4301", "Renamed"));

    // Properties the role leaves out are never compared.
    m.sh_ok(&format!(
        "usermod --shell /bin/sh --comment 'by hand' {name} && gpasswd --delete {name} cairn-ga"
    ));
    t.holds(&format!("[[user]]\nname = \"{name}\"\n"));

    // Absent removes the account; its home stays.
    t.converges(
        &format!("[[user]]\nname = \"{name}\"\nstate = \"absent\"\n"),
        &[("ensure", "present", "absent")],
    );
    assert_eq!(passwd(&m, name), None);
    m.sh_ok(&format!("test -d {home}"));
}

/// The primary group: the group named as the user when one exists (useradd
/// would refuse to make it), the declared one otherwise, changed when the
/// role changes it or someone changes it by hand.
#[test]
fn user_primary_group_timeline() {
    let m = Machine::boot("user-group");
    let name = "cairn-app";
    let t = Timeline::new(
        &m,
        &format!("user:{name}"),
        &format!("id {name} 2>/dev/null; getent group {name} cairn-web; true"),
    );
    // A group of the user's name, made earlier (by a package, by hand).
    m.sh_ok(&format!("groupadd --gid 4400 {name}"));
    let after = t.converges(
        &format!("[[user]]\nname = \"{name}\"\nuid = 4410\n"),
        &[("ensure", "absent", "present")],
    );
    assert_eq!(
        after,
        format!("uid=4410({name}) gid=4400({name}) groups=4400({name})\n{name}:x:4400:\n")
    );

    // The role names a group it declares: it is made first, then the user
    // moves to it.
    let with_group = |group: &str| {
        format!(
            "[[group]]\nname = \"cairn-web\"\ngid = 4401\n\n\
             [[user]]\nname = \"{name}\"\nuid = 4410\ngroup = \"{group}\"\n"
        )
    };
    let run = {
        m.write_file(
            "/root/roles/primary/role.toml",
            format!("[role]\nname = \"primary\"\n\n{}", with_group("cairn-web")),
        );
        m.apply_json("/root/roles/primary", &["--detailed-exitcodes"])
    };
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(
        run.ids(cairn_proto::report::ResourceStatus::Changed),
        ["group:cairn-web", &format!("user:{name}")],
        "{run}"
    );
    assert!(
        run.has_change(&format!("user:{name}"), "group", name, "cairn-web"),
        "{run}"
    );
    assert_eq!(
        m.sh_ok(&format!("id {name}")),
        format!("uid=4410({name}) gid=4401(cairn-web) groups=4401(cairn-web)\n")
    );
    t.holds(&with_group("cairn-web"));

    // Changed by hand: exactly that drift, and apply puts it back.
    m.sh_ok(&format!("usermod --gid {name} {name}"));
    let after = t.converges(&with_group("cairn-web"), &[("group", name, "cairn-web")]);
    assert!(
        after.starts_with(&format!("uid=4410({name}) gid=4401(cairn-web)")),
        "{after}"
    );

    // A new user created with a declared group gets no group of its own.
    let t = Timeline::new(
        &m,
        "user:cairn-api",
        "id cairn-api 2>/dev/null; getent group cairn-api; true",
    );
    let after = t.converges(
        "[[group]]\nname = \"cairn-web\"\ngid = 4401\n\n\
         [[user]]\nname = \"cairn-api\"\nuid = 4411\ngroup = \"cairn-web\"\n",
        &[("ensure", "absent", "present")],
    );
    assert_eq!(
        after,
        "uid=4411(cairn-api) gid=4401(cairn-web) groups=4401(cairn-web)\n"
    );
}

#[test]
fn system_users_get_their_declared_home_only_and_no_skeleton() {
    let m = Machine::boot("system-user");
    let (name, home) = ("cairn-sys", "/var/lib/cairn-sys");
    let t = Timeline::new(
        &m,
        &format!("user:{name}"),
        &format!(
            "getent passwd {name}; stat -c '%u:%g %a' {home} 2>/dev/null; ls -A {home} 2>/dev/null; true"
        ),
    );
    t.converges(
        &format!(
            "[[user]]\nname = \"{name}\"\nsystem = true\nshell = \"/usr/sbin/nologin\"\nhome = \"{home}\"\n"
        ),
        &[("ensure", "absent", "present")],
    );
    let pw = user(&m, name);
    let uid: u32 = pw[2].parse().unwrap();
    assert!(uid < 1000, "a system uid, got {uid}");
    assert_eq!(pw[5], home);
    // Owned by the user, 0755, and empty: no skeleton files.
    assert_eq!(
        m.sh_ok(&format!("stat -c '%u:%g %a' {home}; ls -A {home}")),
        format!("{}:{} 755\n", pw[2], pw[3])
    );

    // A system user without a declared home gets no directory.
    let bare = "cairn-sys2";
    let t = Timeline::new(
        &m,
        &format!("user:{bare}"),
        &format!("getent passwd {bare}; true"),
    );
    t.converges(
        &format!("[[user]]\nname = \"{bare}\"\nsystem = true\n"),
        &[("ensure", "absent", "present")],
    );
    let dir = &user(&m, bare)[5];
    assert_eq!(
        m.sh(&format!("test -e {dir}")).status.code(),
        Some(1),
        "{dir} should not exist"
    );
}

/// Swaps each home named on its command line, in order, for a link to root's
/// directory the moment it appears under `/home/eve/homes`: an unprivileged
/// user who owns the parent racing whoever makes the home, between making
/// it and filling it from `/etc/skel`. Each wait spins on one `lstat`, so the
/// swap comes within microseconds.
const HOME_SWAPPER: &str = r#"
my $dir = "/home/eve/homes";
my $swaps = 0;
$SIG{TERM} = sub { print "swaps $swaps\n"; exit 0 };
$| = 1;
print "swapping\n";
for my $name (@ARGV) {
    1 until !-l "$dir/$name" && -d _;
    rename("$dir/$name", "$dir/moved-$name") or die "rename: $!";
    symlink("/root/secret", "$dir/$name") or die "symlink: $!";
    $swaps++;
}
print "swaps $swaps\n";
"#;

/// Homes made for users are made through the agent's walk: a home swapped
/// for a link while it is made and filled from `/etc/skel` is refused, by
/// name, and root's directory the link leads to is untouched.
#[test]
fn a_home_swapped_for_a_link_while_it_is_made_is_refused() {
    let m = Machine::boot("home-race");
    m.sh_ok(
        "useradd --create-home eve && mkdir -m 0700 /root/secret \
         && echo root > /root/secret/keys && chmod 0600 /root/secret/keys \
         && runuser -u eve -- mkdir /home/eve/homes",
    );
    let victim = "cd /root/secret && find . -printf '%p %u:%g %m\\n' | sort && cat keys";
    let before = m.sh_ok(victim);
    m.write_file("/tmp/swapper.pl", HOME_SWAPPER);
    let names: Vec<String> = (0..5)
        .flat_map(|round| (0..10).map(move |i| format!("u{round}{i}")))
        .collect();
    m.sh_ok(&format!(
        "runuser -u eve -- perl /tmp/swapper.pl {} >/tmp/swapper.log 2>&1 &",
        names.join(" ")
    ));
    m.sh_ok(
        "for i in $(seq 50); do grep -q swapping /tmp/swapper.log && exit 0; sleep 0.1; done; \
         cat /tmp/swapper.log; exit 1",
    );
    // Users whose home the swap caught: their creation is refused, naming
    // the link (or the home gone, between the swapper's two steps).
    let mut caught = 0;
    for round in 0..5 {
        if caught > 0 {
            break;
        }
        let mut role = format!("[role]\nname = \"homes{round}\"\n");
        for i in 0..10 {
            role += &format!(
                "\n[[user]]\nname = \"u{round}{i}\"\nhome = \"/home/eve/homes/u{round}{i}\"\n"
            );
        }
        m.write_file("/root/roles/homes/role.toml", role);
        let run = m.apply_json("/root/roles/homes", &[]);
        assert_eq!(m.sh_ok(victim), before, "the victim changed:\n{run}");
        for r in &run.report.resources {
            let Some(err) = &r.error else {
                continue;
            };
            let link = format!("/home/eve/{}", r.id.replace("user:", "homes/"));
            assert!(
                err.contains(&format!(
                    "{link} is a symbolic link owned by eve; Cairn does not write through it"
                )) || err.contains("it is a symbolic link; Cairn does not follow it")
                    // Caught between the swapper's rename and its link.
                    || err.contains(&format!("{link} does not exist")),
                "{}: {err}\n{run}",
                r.id
            );
            caught += 1;
        }
    }
    let log = m.sh_ok("pkill -TERM -u eve; sleep 0.5; cat /tmp/swapper.log");
    assert_eq!(m.sh_ok(victim), before);
    assert!(
        caught > 0,
        "no home was swapped while it was made; swapper: {log}"
    );
}

/// The shadow hash of `name`, as the C library reads it.
fn shadow_hash(m: &Machine, name: &str) -> String {
    let line = m.sh_ok(&format!("getent shadow {name}"));
    line.split(':').nth(1).unwrap_or_default().to_string()
}

const FIRST_HASH: &str = "$6$cairnsalt1$.GxGpWzcL/..0NJk8Y3R9LXAYhJB.B9yN2q/A69uTgMrx9/vgZBoLmX5tPYdiEYARavSKDCS7QC1TcrKjnBEB0";
const SECOND_HASH: &str = "$6$cairnsalt2$ycNuLFg00AKcJW7Spigz8ZLioe9kpvVr3eCSO41cjhc3ltex0LqMif8En4CyFIMBZ8UjVtRbhAkwmQHqr6FqI.";

/// A password hash is set at creation and repaired after, and drift names
/// the property but never shows a hash: not in the JSON report, not in the
/// human output, not on stderr.
#[test]
fn password_timeline_never_shows_the_hash() {
    let m = Machine::boot("user-password");
    let name = "cairn-pw";
    let t = Timeline::new(
        &m,
        &format!("user:{name}"),
        &format!("getent shadow {name} | cut -d: -f1,2; true"),
    );
    let spec = |hash: &str| format!("[[user]]\nname = \"{name}\"\npassword = \"{hash}\"\n");

    t.converges(&spec(FIRST_HASH), &[("ensure", "absent", "present")]);
    assert_eq!(shadow_hash(&m, name), FIRST_HASH);

    // The role changes the hash: drift without values.
    t.converges(
        &spec(SECOND_HASH),
        &[("password", "(sensitive)", "(sensitive)")],
    );
    assert_eq!(shadow_hash(&m, name), SECOND_HASH);

    // Changed by hand (locked), drift is found and repaired.
    m.sh_ok(&format!("usermod --lock {name}"));
    t.converges(
        &spec(SECOND_HASH),
        &[("password", "(sensitive)", "(sensitive)")],
    );
    assert_eq!(shadow_hash(&m, name), SECOND_HASH);

    // No output of the agent, in either format, holds either hash.
    m.sh_ok(&format!("usermod --password '{FIRST_HASH}' {name}"));
    for format in ["json", "human"] {
        let (code, out, err) = m.agent(&[
            "apply",
            "/root/roles/timeline",
            "--noop",
            "--format",
            format,
        ]);
        assert_eq!(code, 0, "{format} noop: {out}\n{err}");
        for hash in [FIRST_HASH, SECOND_HASH] {
            let secret = hash.rsplit('$').next().unwrap();
            assert!(
                !out.contains(secret) && !err.contains(secret),
                "{format} output shows a hash:\n{out}\n{err}"
            );
        }
        assert!(out.contains("password"), "{format}: {out}");
    }
    assert_eq!(
        shadow_hash(&m, name),
        FIRST_HASH,
        "noop left the host alone"
    );
}

/// `groups_exact`: memberships the role does not list are removed, and the
/// listed ones kept or added.
#[test]
fn groups_exact_timeline() {
    let m = Machine::boot("user-groups-exact");
    let name = "cairn-gx";
    let t = Timeline::new(
        &m,
        &format!("user:{name}"),
        &format!("id -nG {name} 2>/dev/null; true"),
    );
    m.sh_ok("groupadd cairn-gx1 && groupadd cairn-gx2 && groupadd cairn-gx3");
    m.sh_ok(&format!("useradd --groups cairn-gx1,cairn-gx2 {name}"));
    let spec = |exact: bool| {
        format!(
            "[[user]]\nname = \"{name}\"\ngroups = [\"cairn-gx1\", \"cairn-gx3\"]\n\
             groups_exact = {exact}\n"
        )
    };

    // Not exact: only the missing one is added.
    t.converges(
        &spec(false),
        &[(
            "groups",
            "cairn-gx1,cairn-gx2",
            "cairn-gx1,cairn-gx2,cairn-gx3",
        )],
    );
    assert_eq!(members(&m, "cairn-gx2"), [name]);

    // Exact: the unlisted one goes.
    t.converges(
        &spec(true),
        &[(
            "groups",
            "cairn-gx1,cairn-gx2,cairn-gx3",
            "cairn-gx1,cairn-gx3",
        )],
    );
    assert!(members(&m, "cairn-gx2").is_empty());
    assert_eq!(
        (members(&m, "cairn-gx1"), members(&m, "cairn-gx3")),
        (vec![name.to_string()], vec![name.to_string()])
    );

    // Added by hand and removed by hand: exactly that drift, both repaired.
    m.sh_ok(&format!(
        "usermod --append --groups cairn-gx2 {name} && gpasswd --delete {name} cairn-gx1"
    ));
    t.converges(
        &spec(true),
        &[("groups", "cairn-gx2,cairn-gx3", "cairn-gx3,cairn-gx1")],
    );
    assert!(members(&m, "cairn-gx2").is_empty());
    assert_eq!(members(&m, "cairn-gx1"), [name]);
}
