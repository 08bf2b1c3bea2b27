//! The agent, as root, never follows a link it did not choose: each attack is
//! planted by an unprivileged user who owns the parent directory, against a
//! root-only victim directory that must be untouched afterwards. Links only
//! root could have placed (`/var/run → /run`) keep working.

use cairn_e2e::Machine;
use cairn_proto::report::ResourceStatus::{Changed, Failed};

/// The attacker: an ordinary user with a home of their own.
const USER: &str = "eve";

/// Root's, mode 0700: nothing in it may change.
const VICTIM: &str = "/root/secret";

fn victim_state(m: &Machine) -> String {
    m.sh_ok(&format!(
        "cd {VICTIM} && find . -printf '%p %u:%g %m\\n' | sort && cat keys"
    ))
}

fn as_user(m: &Machine, script: &str) {
    m.sh_ok(&format!("runuser -u {USER} -- /bin/sh -c '{script}'"));
}

fn refused(run: &cairn_e2e::Run, id: &str, link: &str) {
    let r = run.resource(id);
    let want =
        format!("{link} is a symbolic link owned by {USER}; Cairn does not write through it");
    assert_eq!(r.status, Failed, "{id}:\n{run}");
    let err = r.error.as_deref().unwrap_or_default();
    assert!(err.contains(&want), "{id}: {err}\n{run}");
}

const ROLE: &str = r#"
[role]
name = "links"

# A write and a chown below a parent the user made a link to root's directory.
[[file]]
path = "/home/eve/.ssh/keys"
content = "eve's key\n"
owner = "eve"
mode = "0600"

[[directory]]
path = "/home/eve/.ssh/sub"
owner = "eve"
mode = "0777"

# Removing a tree below a linked parent.
[[directory]]
path = "/home/eve/cache/sub"
state = "absent"

# A file the user replaced by a link: replaced again, never written through.
[[file]]
path = "/home/eve/notes"
content = "notes\n"
owner = "eve"

# A home made under a linked parent.
[[user]]
name = "mallory"
home = "/home/eve/homes/mallory"

# Root's own links are followed.
[[directory]]
path = "/var/run/cairn-links"
mode = "0750"

[[file]]
path = "/var/run/cairn-links/pid"
content = "42\n"
"#;

#[test]
fn links_planted_by_a_user_are_not_followed() {
    let m = Machine::boot("links");
    m.sh_ok(&format!(
        "useradd --create-home {USER} && mkdir -m 0700 {VICTIM} {VICTIM}/sub {VICTIM}/sub/deeper \
         && echo root > {VICTIM}/keys && chmod 0600 {VICTIM}/keys"
    ));
    as_user(
        &m,
        &format!(
            "ln -s {VICTIM} ~/.ssh && ln -s {VICTIM} ~/cache && ln -s {VICTIM} ~/homes \
             && ln -s {VICTIM}/keys ~/notes"
        ),
    );
    let before = victim_state(&m);
    m.write_file("/root/roles/links/role.toml", ROLE);

    let run = m.apply_json("/root/roles/links", &[]);
    refused(&run, "file:/home/eve/.ssh/keys", "/home/eve/.ssh");
    refused(&run, "directory:/home/eve/.ssh/sub", "/home/eve/.ssh");
    refused(&run, "directory:/home/eve/cache/sub", "/home/eve/cache");
    refused(&run, "user:mallory", "/home/eve/homes");
    let mut changed = run.ids(Changed);
    changed.sort_unstable();
    assert_eq!(
        changed,
        [
            "directory:/var/run/cairn-links",
            "file:/home/eve/notes",
            "file:/var/run/cairn-links/pid"
        ],
        "{run}"
    );

    assert_eq!(victim_state(&m), before, "the victim changed:\n{run}");
    // The link was replaced by the user's own file; no account was made.
    assert_eq!(
        m.sh_ok("stat -c '%F %U %a' /home/eve/notes && cat /home/eve/notes"),
        "regular file eve 644\nnotes\n"
    );
    assert!(!m.sh("id mallory").status.success(), "mallory was created");
    assert_eq!(
        m.sh_ok("stat -c '%a' /run/cairn-links && cat /run/cairn-links/pid"),
        "750\n42\n"
    );
}

/// Files the user swaps for links while the agent changes their owner and mode.
const SWAPPED: usize = 20;

/// Flips each `fN` in the user's home between the user's own file (content
/// the role declares, so only owner and mode drift) and a link to root's
/// file, as fast as it can, until killed: some flips land between the
/// agent's check and its change. Plain Perl, no system call numbers, so it
/// runs on any architecture. Prints how many flips it made on SIGTERM.
const SWAPPER: &str = r#"
my $home = "/home/eve";
chdir $home or die;
my $flips = 0;
$SIG{TERM} = sub { print "flips $flips\n"; exit 0 };
$| = 1;
print "swapping\n";
while (1) {
    for my $i (0 .. COUNT - 1) {
        symlink("/root/secret/keys", "l$i") or die "symlink: $!";
        rename("l$i", "f$i") or die "rename: $!";
        open(my $f, ">", "n$i") or die "open: $!";
        print $f "x\n";
        close $f;
        rename("n$i", "f$i") or die "rename: $!";
        $flips++;
    }
}
"#;

/// A file swapped for a link between the agent's check and its change: the
/// owner and mode land on a file of the agent's own or nowhere, never on the
/// link's target.
#[test]
fn a_file_swapped_for_a_link_never_gets_the_mode() {
    let m = Machine::boot("links-race");
    m.sh_ok(&format!(
        "useradd --create-home {USER} && mkdir -m 0700 {VICTIM} \
         && echo root > {VICTIM}/keys && chmod 0600 {VICTIM}/keys"
    ));
    let before = victim_state(&m);
    let mut role = String::from("[role]\nname = \"mode\"\n");
    for i in 0..SWAPPED {
        role += &format!(
            "\n[[file]]\npath = \"/home/{USER}/f{i}\"\ncontent = \"x\\n\"\n\
             owner = \"root\"\nmode = \"0640\"\n"
        );
    }
    m.write_file("/root/roles/mode/role.toml", role);
    m.write_file(
        "/tmp/swapper.pl",
        SWAPPER.replace("COUNT", &SWAPPED.to_string()),
    );
    m.sh_ok(&format!(
        "runuser -u {USER} -- perl /tmp/swapper.pl >/tmp/swapper.log 2>&1 &"
    ));
    m.sh_ok(
        "for i in $(seq 50); do grep -q swapping /tmp/swapper.log && exit 0; sleep 0.1; done; \
         cat /tmp/swapper.log; exit 1",
    );
    // Runs that met a link: in their check (the link is replaced) or later
    // (the change is refused).
    let mut met = 0;
    for _ in 0..10 {
        let run = m.apply_json("/root/roles/mode", &[]);
        assert_eq!(victim_state(&m), before, "the victim changed:\n{run}");
        met += (0..SWAPPED)
            .filter(|i| {
                let id = format!("file:/home/{USER}/f{i}");
                run.has_change(&id, "ensure", "link", "file")
                    || run
                        .resource(&id)
                        .error
                        .as_deref()
                        .is_some_and(|e| e.contains("symbolic link"))
            })
            .count();
    }
    let log = m.sh_ok("pkill -TERM -u eve; sleep 0.5; cat /tmp/swapper.log");
    assert_eq!(victim_state(&m), before);
    assert!(met > 0, "the agent never met a link; swapper: {log}");
}

/// A managed file that is a hard link to root's file (as a user can make
/// with `fs.protected_hardlinks` off; made here by root): its content already
/// matches, so only owner and mode drift, and changing them in place would
/// change root's file. The managed path gets a file of its own instead.
#[test]
fn a_hard_link_to_a_root_file_gets_a_file_of_its_own() {
    let m = Machine::boot("links-hard");
    m.sh_ok(&format!(
        "useradd --create-home {USER} && mkdir -m 0700 {VICTIM} \
         && echo root > {VICTIM}/keys && chmod 0600 {VICTIM}/keys \
         && ln {VICTIM}/keys /home/{USER}/keys"
    ));
    let before = victim_state(&m);
    m.write_file(
        "/root/roles/hard/role.toml",
        format!(
            "[role]\nname = \"hard\"\n\n[[file]]\npath = \"/home/{USER}/keys\"\n\
             content = \"root\\n\"\nowner = \"{USER}\"\nmode = \"0644\"\n"
        ),
    );
    let run = m.apply_json("/root/roles/hard", &[]);
    assert_eq!(
        run.ids(Changed),
        [format!("file:/home/{USER}/keys")],
        "{run}"
    );
    assert_eq!(victim_state(&m), before, "the victim changed:\n{run}");
    assert_eq!(
        m.sh_ok(&format!(
            "stat -c '%U %a %h' /home/{USER}/keys {VICTIM}/keys && cat /home/{USER}/keys"
        )),
        format!("{USER} 644 1\nroot 600 1\nroot\n")
    );
    // Converged: a second run changes nothing.
    let again = m.apply_json("/root/roles/hard", &[]);
    assert!(again.ids(Changed).is_empty(), "{again}");
}
