//! Every kind of bad input is reported with file, line and field; good roles load.

use cairn_proto::bundle::RoleBundle;
use cairn_proto::facts::Facts;
use cairn_proto::role::{self, Diagnostic, Kind, PackageState, Role, Spec, bundle_from_files};

fn load(files: &[(&str, &str)]) -> Result<Role, Vec<Diagnostic>> {
    role::load(
        &bundle_from_files(files.iter().copied()),
        &Facts::placeholder(),
    )
    .map_err(|d| d.0)
}

fn errors(files: &[(&str, &str)]) -> Vec<Diagnostic> {
    match load(files) {
        Ok(_) => panic!("role was accepted"),
        Err(d) => d,
    }
}

/// The one diagnostic of a role with a single problem.
fn only_error(toml: &str) -> Diagnostic {
    let d = errors(&[("role.toml", toml)]);
    assert_eq!(d.len(), 1, "expected one error, got: {d:#?}");
    d.into_iter().next().unwrap()
}

const HEAD: &str = "[role]\nname = \"t\"\n";

#[test]
fn a_full_role_loads_and_orders_by_type_then_edges() {
    let toml = format!(
        "{HEAD}
[vars]
port = 8080

[[service]]
name = \"nginx\"
running = true

[[file]]
path = \"/etc/app.conf\"
template = \"app.conf.hbs\"
mode = \"0640\"
owner = \"app\"
notify = [\"service:nginx\"]

[[package]]
name = \"nginx\"

[[user]]
name = \"app\"
groups = [\"ops\"]

[[group]]
name = \"ops\"

[[exec]]
name = \"early\"
command = \"true\"
creates = \"/tmp/x\"

[[directory]]
path = \"/etc\"

[[file]]
path = \"/etc/motd\"
content = \"hi\"
requires = [\"exec:early\"]
"
    );
    let role = load(&[
        ("role.toml", &toml),
        (
            "templates/app.conf.hbs",
            "port={{vars.port}} host={{facts.hostname}} role={{role.name}}\n",
        ),
    ])
    .unwrap();
    let order: Vec<String> = role.resources.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(
        order,
        [
            "group:ops",
            "user:app",
            "package:nginx",
            "directory:/etc",
            "file:/etc/app.conf",
            "exec:early",
            "file:/etc/motd",
            "service:nginx"
        ]
    );
    let Spec::File(f) = &role
        .get(&"file:/etc/app.conf".parse().unwrap())
        .unwrap()
        .spec
    else {
        panic!()
    };
    assert_eq!(
        f.content.as_deref(),
        Some(&b"port=8080 host=node role=t\n"[..])
    );
    assert_eq!(f.mode, Some(0o640));
    // Implicit edges: owner user and managed parent directory.
    let app = role.get(&"file:/etc/app.conf".parse().unwrap()).unwrap();
    let reqs: Vec<String> = app.requires.iter().map(ToString::to_string).collect();
    assert_eq!(reqs, ["directory:/etc", "user:app"]);
    assert_eq!(role.digest.len(), "sha256:".len() + 64);
}

#[test]
fn malformed_toml_names_the_line() {
    let d = only_error("[role]\nname = \"t\"\n\n[[file]]\npath = \"/x\nmode = 1\n");
    assert_eq!((d.file.as_str(), d.line), ("role.toml", 5), "{d}");
    assert!(d.message.contains("invalid TOML"), "{d}");
}

#[test]
fn unknown_key_is_located_and_gets_a_suggestion() {
    let d = only_error(&format!(
        "{HEAD}\n[[file]]\npath = \"/x\"\ncontent = \"\"\nownr = \"root\"\n"
    ));
    assert_eq!(d.line, 7, "{d}");
    assert_eq!(d.field.as_deref(), Some("ownr"), "{d}");
    assert_eq!(d.help.as_deref(), Some("did you mean `owner`?"), "{d}");
    assert!(
        d.to_string()
            .starts_with("role.toml:7:1: [[file]] \"/x\", field `ownr`: unknown field"),
        "{d}"
    );
}

#[test]
fn unknown_section_gets_a_suggestion() {
    let d = only_error(&format!("{HEAD}\n[[fiel]]\npath = \"/x\"\n"));
    assert_eq!((d.line, d.field.as_deref()), (4, None), "{d}");
    assert_eq!(d.help.as_deref(), Some("did you mean `file`?"));
    // A section is called a section, not a field.
    assert_eq!(
        d.to_string(),
        "role.toml:4:3: unknown section `fiel`\n  help: did you mean `file`?"
    );
    let d = only_error(&format!("{HEAD}\n[file]\npath = \"/x\"\n"));
    assert_eq!(
        d.to_string(),
        "role.toml:4:1: section `file` must be an array of tables\n  \
         help: write each one as [[file]]"
    );
}

/// Problems found before a table's name is known (its fields' types) and
/// after (its values) name the resource the same way.
#[test]
fn one_resource_is_named_one_way_in_the_list() {
    let d = errors(&[(
        "role.toml",
        &format!(
            "{HEAD}\n[[user]]\nname = \"app\"\nshel = \"/bin/sh\"\ngroups = [\"Ops\"]\n\n\
             [[file]]\ncontent = \"x\"\n"
        ),
    )]);
    let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 3, "{shown:#?}");
    assert!(
        shown[0].starts_with("role.toml:6:1: [[user]] \"app\", field `shel`: unknown field"),
        "{shown:#?}"
    );
    assert!(
        shown[1].starts_with("role.toml:7:11: [[user]] \"app\", field `groups`: invalid name"),
        "{shown:#?}"
    );
    // Without a name, its place in the role names it.
    assert!(
        shown[2].starts_with("role.toml:9:1: [[file]] #1, field `path`: missing field"),
        "{shown:#?}"
    );
}

#[test]
fn a_users_primary_group_is_checked_and_followed() {
    let role = load(&[(
        "role.toml",
        &format!(
            "{HEAD}\n[[user]]\nname = \"app\"\ngroup = \"web\"\ngroups = [\"ops\"]\n\n\
             [[group]]\nname = \"ops\"\n\n[[group]]\nname = \"web\"\n"
        ),
    )])
    .unwrap();
    let app = role.get(&"user:app".parse().unwrap()).unwrap();
    let reqs: Vec<String> = app.requires.iter().map(ToString::to_string).collect();
    assert_eq!(reqs, ["group:web", "group:ops"]);
    let Spec::User(u) = &app.spec else { panic!() };
    assert_eq!(u.group.as_deref(), Some("web"));

    let d = only_error(&format!(
        "{HEAD}\n[[user]]\nname = \"app\"\ngroup = \"Web Team\"\n"
    ));
    assert_eq!((d.line, d.field.as_deref()), (6, Some("group")), "{d}");
    assert!(d.message.contains("invalid name"), "{d}");
}

#[test]
fn wrong_type_names_the_field() {
    let d = only_error(&format!(
        "{HEAD}\n[[service]]\nname = \"x\"\nrunning = \"yes\"\n"
    ));
    assert_eq!((d.line, d.field.as_deref()), (6, Some("running")), "{d}");
    assert!(d.message.contains("invalid type"), "{d}");
}

#[test]
fn bad_enum_value_gets_a_suggestion() {
    let d = only_error(&format!(
        "{HEAD}\n[[package]]\nname = \"vim\"\nstate = \"instaled\"\n"
    ));
    assert_eq!(d.line, 6, "{d}");
    assert_eq!(
        d.help.as_deref(),
        Some("did you mean \"installed\"?"),
        "{d}"
    );
}

#[test]
fn bad_modes() {
    for mode in ["\"0999\"", "\"rwx\"", "\"12345\""] {
        let d = only_error(&format!(
            "{HEAD}\n[[directory]]\npath = \"/x\"\nmode = {mode}\n"
        ));
        assert_eq!((d.line, d.field.as_deref()), (6, Some("mode")), "{d}");
        assert!(d.message.contains("invalid mode"), "{d}");
    }
    // A number is a type error, not silently decimal 644.
    let d = only_error(&format!(
        "{HEAD}\n[[directory]]\npath = \"/x\"\nmode = 644\n"
    ));
    assert_eq!(d.field.as_deref(), Some("mode"), "{d}");
}

#[test]
fn relative_and_unnormalized_paths() {
    for path in ["etc/motd", "/etc/../motd", "/etc//motd", "/etc/"] {
        let d = only_error(&format!(
            "{HEAD}\n[[file]]\npath = \"{path}\"\ncontent = \"\"\n"
        ));
        assert_eq!(
            (d.line, d.field.as_deref()),
            (5, Some("path")),
            "{path}: {d}"
        );
    }
    let d = only_error(&format!(
        "{HEAD}\n[[exec]]\nname = \"x\"\ncommand = \"true\"\ncreates = \"tmp/x\"\n"
    ));
    assert_eq!(d.field.as_deref(), Some("creates"), "{d}");
}

#[test]
fn duplicate_ids() {
    let d = only_error(&format!(
        "{HEAD}\n[[package]]\nname = \"vim\"\n\n[[package]]\nname = \"vim\"\n"
    ));
    assert_eq!(d.line, 7, "{d}");
    assert!(
        d.message
            .contains("duplicate resource package:vim (first declared on line 4)"),
        "{d}"
    );
}

#[test]
fn missing_references_are_reported_with_suggestions() {
    let d = only_error(&format!(
        "{HEAD}\n[[service]]\nname = \"nginx\"\n\n[[file]]\npath = \"/x\"\ncontent = \"\"\nnotify = [\"service:ngnix\"]\n"
    ));
    assert_eq!((d.line, d.field.as_deref()), (10, Some("notify")), "{d}");
    assert!(d.message.contains("service:ngnix is not declared"), "{d}");
    assert_eq!(d.help.as_deref(), Some("did you mean `service:nginx`?"));
    let d = only_error(&format!(
        "{HEAD}\n[[file]]\npath = \"/x\"\ncontent = \"\"\nrequires = [\"nginx\"]\n"
    ));
    assert!(d.message.contains("expected TYPE:NAME"), "{d}");
}

#[test]
fn only_services_and_execs_can_be_notified() {
    let d = only_error(&format!(
        "{HEAD}\n[[package]]\nname = \"vim\"\n\n[[file]]\npath = \"/x\"\ncontent = \"\"\nnotify = [\"package:vim\"]\n"
    ));
    assert!(d.message.contains("cannot be notified"), "{d}");
}

#[test]
fn dependency_cycles_are_reported_with_the_path() {
    let d = only_error(&format!(
        "{HEAD}
[[exec]]
name = \"a\"
command = \"true\"
requires = [\"exec:b\"]

[[exec]]
name = \"b\"
command = \"true\"
requires = [\"exec:c\"]

[[exec]]
name = \"c\"
command = \"true\"
requires = [\"exec:a\"]
"
    ));
    assert!(d.message.starts_with("dependency cycle: exec:"), "{d}");
    for n in ["exec:a", "exec:b", "exec:c"] {
        assert!(d.message.contains(n), "{d}");
    }
}

#[test]
fn templates_and_sources_must_exist_inside_the_role() {
    for (field, name) in [
        ("template", "../../etc/passwd"),
        ("source", "/etc/passwd"),
        ("template", "missing.hbs"),
    ] {
        let d = only_error(&format!(
            "{HEAD}\n[[file]]\npath = \"/x\"\n{field} = \"{name}\"\n"
        ));
        assert_eq!((d.line, d.field.as_deref()), (6, Some(field)), "{d}");
    }
}

#[test]
fn template_syntax_error_is_located_in_the_template() {
    let d = errors(&[
        (
            "role.toml",
            &format!("{HEAD}\n[[file]]\npath = \"/x\"\ntemplate = \"a.hbs\"\n"),
        ),
        ("templates/a.hbs", "line one\n{{#if vars.x}}\nno close\n"),
    ]);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].file, "templates/a.hbs");
    assert!(d[0].message.contains("template syntax error"), "{}", d[0]);
}

#[test]
fn undefined_template_variable_is_an_error() {
    let d = errors(&[
        (
            "role.toml",
            &format!("{HEAD}\n[vars]\nport = 1\n\n[[file]]\npath = \"/x\"\ntemplate = \"a.hbs\"\n"),
        ),
        (
            "templates/a.hbs",
            "ok {{vars.port}}\nport {{vars.prot}}\nhost {{facts.hostnme}}\n",
        ),
    ]);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(
        (d[0].file.as_str(), d[0].line),
        ("templates/a.hbs", 2),
        "{}",
        d[0]
    );
    assert!(d[0].message.contains("vars.prot"), "{}", d[0]);
}

#[test]
fn content_and_template_both_set() {
    let d = errors(&[
        (
            "role.toml",
            &format!("{HEAD}\n[[file]]\npath = \"/x\"\ncontent = \"a\"\ntemplate = \"a.hbs\"\n"),
        ),
        ("templates/a.hbs", "a"),
    ]);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(
        (d[0].line, d[0].field.as_deref()),
        (7, Some("template")),
        "{}",
        d[0]
    );
    assert!(
        d[0].message
            .contains("`content` and `template` are both set"),
        "{}",
        d[0]
    );
    let d = only_error(&format!("{HEAD}\n[[file]]\npath = \"/x\"\n"));
    assert!(d.message.contains("needs exactly one of"), "{d}");
    let d = only_error(&format!(
        "{HEAD}\n[[file]]\npath = \"/x\"\nstate = \"absent\"\ncontent = \"a\"\n"
    ));
    assert_eq!(d.field.as_deref(), Some("content"), "{d}");
}

#[test]
fn every_error_is_reported_at_once() {
    let d = errors(&[(
        "role.toml",
        &format!(
            "{HEAD}
[[file]]
path = \"relative\"
content = \"x\"
mode = \"999\"

[[user]]
name = \"Bad Name\"

[[package]]
name = \"vim\"
colour = \"red\"

[[service]]
name = \"x\"
requires = [\"package:vmi\"]
"
        ),
    )]);
    let fields: Vec<_> = d
        .iter()
        .map(|d| (d.line, d.field.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        fields,
        [
            (5, "path".to_string()),
            (7, "mode".into()),
            (10, "name".into()),
            (14, "colour".into()),
            (18, "requires".into())
        ],
        "{d:#?}"
    );
}

#[test]
fn role_meta_errors() {
    let d = only_error("[[package]]\nname = \"vim\"\n");
    assert!(d.message.contains("[role] table is missing"), "{d}");
    let d = only_error("[role]\nname = \"Web Server\"\n");
    assert_eq!((d.line, d.field.as_deref()), (2, Some("name")), "{d}");
    let d = errors(&[("templates/x.hbs", "")]);
    assert!(d[0].message.contains("role.toml is missing"));
    let mut b = RoleBundle::default();
    b.insert("role.toml".into(), b"[role]\nname = \"\xff\"\n".to_vec())
        .unwrap();
    let d = role::load(&b, &Facts::placeholder()).unwrap_err().0;
    assert_eq!(d[0].line, 2);
}

#[test]
fn kinds_round_trip_through_ids() {
    for k in Kind::ALL {
        let id: role::ResourceId = format!("{}:x", k.as_str()).parse().unwrap();
        assert_eq!(id.kind, k);
    }
}

#[test]
fn recipes_in_the_repo_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // recipes/README.md describes them.
        if !path.is_dir() {
            continue;
        }
        let bundle = RoleBundle::from_dir(&path).unwrap();
        if let Err(d) = role::load(&bundle, &Facts::placeholder()) {
            panic!("{}:\n{d}", path.display());
        }
        n += 1;
    }
    assert!(n >= 1);
}

#[test]
fn every_bad_field_of_one_table_is_reported() {
    let d = errors(&[(
        "role.toml",
        &format!(
            "{HEAD}\n[[file]]\npath = \"relative\"\nownr = \"root\"\nmdoe = \"0644\"\ncontent = 7\nmode = \"999\"\n"
        ),
    )]);
    let fields: Vec<_> = d
        .iter()
        .map(|d| (d.line, d.field.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        fields,
        [
            (5, "path".to_string()),
            (6, "ownr".into()),
            (7, "mdoe".into()),
            (8, "content".into()),
            (9, "mode".into())
        ],
        "{d:#?}"
    );
    assert_eq!(d[2].help.as_deref(), Some("did you mean `mode`?"));
}

/// The smallest valid table of each kind, and the NAME of its id. Every kind
/// must be here: the tests below run each case for every kind.
const MINIMAL: [(&str, &str, &str); 11] = [
    ("group", "name = \"ops\"", "ops"),
    ("user", "name = \"app\"", "app"),
    (
        "apt_repository",
        "name = \"example\"\nstate = \"absent\"",
        "example",
    ),
    ("package", "name = \"vim\"", "vim"),
    ("directory", "path = \"/srv\"", "/srv"),
    (
        "file",
        "path = \"/etc/motd\"\ncontent = \"hi\"",
        "/etc/motd",
    ),
    (
        "link",
        "path = \"/etc/alt\"\ntarget = \"/usr/bin/vim\"",
        "/etc/alt",
    ),
    (
        "sysctl",
        "key = \"net.ipv4.ip_forward\"\nvalue = 1",
        "net.ipv4.ip_forward",
    ),
    ("exec", "name = \"warm\"\ncommand = \"true\"", "warm"),
    ("service", "name = \"nginx\"", "nginx"),
    (
        "timer",
        "name = \"tidy\"\non_calendar = \"daily\"\ncommand = \"true\"",
        "tidy",
    ),
];

#[test]
fn every_kind_has_a_minimal_case() {
    let covered: Vec<&str> = MINIMAL.iter().map(|(k, _, _)| *k).collect();
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(covered, kinds, "MINIMAL lists every kind, in Kind order");
}

#[test]
fn every_kind_loads_its_minimal_table_under_its_id() {
    for (kind, body, name) in MINIMAL {
        let role = load(&[("role.toml", &format!("{HEAD}\n[[{kind}]]\n{body}\n"))])
            .unwrap_or_else(|d| panic!("{kind}: {d:#?}"));
        let ids: Vec<String> = role.resources.iter().map(|r| r.id.to_string()).collect();
        assert_eq!(ids, [format!("{kind}:{name}")]);
    }
}

#[test]
fn every_kind_takes_requires_notify_and_reload_and_knows_them() {
    for (kind, body, _) in MINIMAL {
        let d = errors(&[(
            "role.toml",
            &format!(
                "{HEAD}\n[[{kind}]]\n{body}\nrequires = [\"exec:nope\"]\nnotify = 1\nbogus = 1\n"
            ),
        )]);
        let found: Vec<_> = d.iter().map(|d| d.field.as_deref().unwrap_or("")).collect();
        assert_eq!(found, ["requires", "notify", "bogus"], "{kind}: {d:#?}");
        assert!(
            d[0].message.contains("exec:nope is not declared"),
            "{}",
            d[0]
        );
        assert!(d[1].message.contains("invalid type"), "{}", d[1]);
        // Read apart from the kind's own fields, but listed with them.
        assert!(
            d[2].message.ends_with("`requires`, `notify`, `reload`"),
            "{kind}: {}",
            d[2]
        );
        assert!(
            d[2].help
                .as_deref()
                .is_some_and(|h| h.ends_with("requires, notify, reload")),
            "{kind}: {}",
            d[2]
        );
    }
}

#[test]
fn an_unknown_section_lists_every_kind() {
    let d = only_error(&format!("{HEAD}\n[[zzzzzzzz]]\n"));
    let help = d.help.unwrap();
    for kind in Kind::ALL {
        assert!(help.contains(kind.as_str()), "{help}");
    }
}

// Hostile input: each of these crashed, stalled or leaked on the old code.

/// A role whose file `/etc/x` is rendered from `templates/x.hbs`.
fn with_template(template: &str) -> Result<Role, Vec<Diagnostic>> {
    let toml = format!("{HEAD}\n[[file]]\npath = \"/etc/x\"\ntemplate = \"x.hbs\"\n");
    load(&[("role.toml", &toml), ("templates/x.hbs", template)])
}

#[test]
fn templates_including_each_other_are_refused_not_recursed() {
    let toml = format!("{HEAD}\n[[file]]\npath = \"/etc/x\"\ntemplate = \"a.hbs\"\n");
    let d = errors(&[
        ("role.toml", &toml),
        ("templates/a.hbs", "a\n{{> b.hbs}}"),
        ("templates/b.hbs", "{{#> a.hbs}}{{/a.hbs}}"),
    ]);
    let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "templates/a.hbs:2:1: template syntax error: partials ({{> name}}) are not supported in role templates",
            "templates/b.hbs:1:1: template syntax error: partials ({{> name}}) are not supported in role templates",
        ]
    );
    let d = with_template("{{#*inline \"r\"}}{{> r}}{{/inline}}{{> r}}").unwrap_err();
    assert_eq!(
        d[0].message,
        "template syntax error: decorators ({{* name}}, {{#* inline}}) are not supported in role templates"
    );
}

#[test]
fn templates_cannot_write_to_the_log() {
    let d = with_template("ok\n  {{log \"injected line\" level=\"error\"}}").unwrap_err();
    assert_eq!(
        d[0].to_string(),
        "templates/x.hbs:2:3: template syntax error: the `log` helper is not available in role templates"
    );
}

#[test]
fn deeply_nested_templates_are_refused_not_overflowing() {
    let n = 10_000;
    let d = with_template(&("{{#if vars}}".repeat(n) + &"{{/if}}".repeat(n))).unwrap_err();
    assert_eq!(
        d[0].message,
        "template syntax error: blocks and subexpressions are nested more than 64 deep"
    );
}

#[test]
fn rendered_size_is_bounded_per_template_and_per_role() {
    // 5^9 × 16 bytes: 30 MiB from a few hundred bytes.
    let each = "{{#each @root.vars.l}}".repeat(9);
    let template = format!("{each}0123456789abcdef{}", "{{/each}}".repeat(9));
    let toml = format!(
        "{HEAD}[vars]\nl = [1, 2, 3, 4, 5]\n\n[[file]]\npath = \"/etc/x\"\ntemplate = \"x.hbs\"\n"
    );
    let d = errors(&[("role.toml", &toml), ("templates/x.hbs", &template)]);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(
        d[0].to_string(),
        "templates/x.hbs:1:199: rendering for file:/etc/x: the template renders to more than 16 MiB\n  help: use `source` for large files"
    );
    // 4^9 × 48 bytes, 12 MiB each: five files fit, not six.
    let template = format!("{each}{}", "{{/each}}".repeat(9)).replace(
        "{{#each @root.vars.l}}{{/each}}",
        &format!(
            "{{{{#each @root.vars.l}}}}{}{{{{/each}}}}",
            "0123456789ab".repeat(4)
        ),
    );
    let files: String = (0..6)
        .map(|i| format!("[[file]]\npath = \"/etc/x{i}\"\ntemplate = \"x.hbs\"\n"))
        .collect();
    let toml = format!("{HEAD}[vars]\nl = [1, 2, 3, 4]\n\n{files}");
    let d = errors(&[("role.toml", &toml), ("templates/x.hbs", &template)]);
    let messages: Vec<&str> = d.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        ["the role's templates render to more than 64 MiB in all"; 1]
    );
}

#[test]
fn long_misspelled_ids_are_reported_shortly() {
    let long = "x".repeat(120_000);
    let toml = format!(
        "{HEAD}\n[[package]]\nname = \"vim\"\n\n[[service]]\nname = \"a\"\nrequires = [\"package:{long}\", \"package:{long}y\"]\n"
    );
    let d = errors(&[("role.toml", &toml)]);
    assert_eq!(d.len(), 2, "{d:#?}");
    let clipped = format!("package:{}…", "x".repeat(56));
    assert_eq!(
        d[0].message,
        format!("{clipped} is not declared in this role")
    );
    assert_eq!(d[0].help, None);
    // A short misspelling still gets its suggestion.
    let d = only_error(&format!(
        "{HEAD}\n[[package]]\nname = \"vim\"\n\n[[service]]\nname = \"a\"\nrequires = [\"package:vin\"]\n"
    ));
    assert_eq!(d.help.as_deref(), Some("did you mean `package:vim`?"));
}

#[test]
fn names_are_capped() {
    let long = "a".repeat(256);
    for kind in ["package", "service", "exec"] {
        let d = only_error(
            &format!("{HEAD}\n[[{kind}]]\nname = \"{long}\"\ncommand = \"true\"\n").replace(
                "command = \"true\"\n",
                if kind == "exec" {
                    "command = \"true\"\n"
                } else {
                    ""
                },
            ),
        );
        assert_eq!(
            d.message,
            format!("name \"{}…\" is 256 bytes long, more than 255", &long[..64]),
            "{kind}"
        );
    }
    let d = only_error(&format!(
        "{HEAD}\n[[exec]]\nname = \"a\\tb\"\ncommand = \"true\"\n"
    ));
    assert_eq!(d.message, "invalid name \"a\\tb\"");
}

#[test]
fn paths_that_cannot_exist_on_disk_are_refused() {
    let component = "c".repeat(256);
    let deep = "/d".repeat(2048);
    for (path, why) in [
        (
            format!("/etc/{component}"),
            "has a component longer than 255 bytes",
        ),
        (deep.clone(), "is longer than 4095 bytes"),
        ("/etc/a\\nb".to_string(), "contains a control character"),
        ("/etc/a\\u007fb".to_string(), "contains a control character"),
    ] {
        let d = only_error(&format!(
            "{HEAD}\n[[file]]\npath = \"{path}\"\ncontent = \"\"\n"
        ));
        assert!(d.message.ends_with(why), "{path}: {d}");
        assert_eq!(d.field.as_deref(), Some("path"));
    }
    let d = only_error(&format!(
        "{HEAD}\n[[file]]\npath = \"/x\"\nsource = \"a\\u0001b\"\n"
    ));
    assert_eq!(
        d.message,
        "source \"a\\u{1}b\" contains a control character"
    );
}

#[test]
fn diagnostics_stop_at_a_hundred_and_say_how_many_more() {
    let tables: String = (0..250)
        .map(|i| format!("[[group]]\nname = \"Bad{i}\"\n"))
        .collect();
    let d = errors(&[("role.toml", &format!("{HEAD}{tables}"))]);
    assert_eq!(d.len(), role::MAX_DIAGNOSTICS + 1);
    assert_eq!(d[0].message, "invalid name \"Bad0\"");
    assert_eq!(
        d[100].to_string(),
        "role.toml: and 150 more problems not shown\n  help: only the first 100 are listed"
    );
    let all = role::load(
        &bundle_from_files([("role.toml", format!("{HEAD}{tables}").as_str())]),
        &Facts::placeholder(),
    )
    .unwrap_err();
    assert_eq!(all.summary(), "more than 100 problems");
}

#[test]
fn a_table_with_thousands_of_unknown_fields_stops_at_a_hundred() {
    let fields: String = (0..5_000).map(|i| format!("f{i} = 1\n")).collect();
    let d = errors(&[(
        "role.toml",
        &format!("{HEAD}[[group]]\nname = \"g\"\n{fields}"),
    )]);
    assert_eq!(d.len(), role::MAX_DIAGNOSTICS + 1);
    assert_eq!(
        d[100].message,
        "and more problems not shown (checking stopped after 100)"
    );
}

// [[link]], [[sysctl]], [[timer]]: each check names its line and field.

/// The one diagnostic of a role with one table of `kind` holding `body`, as
/// `(line, field, message)`; the table starts on line 4.
fn kind_error(kind: &str, body: &str) -> (usize, Option<String>, String) {
    let d = only_error(&format!("{HEAD}\n[[{kind}]]\n{body}\n"));
    assert_eq!(d.file, "role.toml", "{d}");
    assert!(
        d.context
            .as_deref()
            .is_some_and(|c| c.starts_with(&format!("[[{kind}]] "))),
        "{d}"
    );
    (d.line, d.field, d.message)
}

fn at(line: usize, field: &str, message: &str) -> (usize, Option<String>, String) {
    (line, Some(field.to_string()), message.to_string())
}

#[test]
fn links_load_with_their_edges_and_defaults() {
    let toml = format!(
        "{HEAD}
[[directory]]
path = \"/etc/app\"

[[user]]
name = \"app\"

[[link]]
path = \"/etc/app/current\"
target = \"../releases/42\"
owner = \"app\"

[[link]]
path = \"/etc/app/old\"
state = \"absent\"
"
    );
    let role = load(&[("role.toml", &toml)]).unwrap();
    let link = role.get(&"link:/etc/app/current".parse().unwrap()).unwrap();
    let reqs: Vec<String> = link.requires.iter().map(ToString::to_string).collect();
    assert_eq!(reqs, ["directory:/etc/app", "user:app"]);
    let Spec::Link(l) = &link.spec else { panic!() };
    assert_eq!(
        (l.target.as_deref(), l.owner.as_deref(), l.force),
        (Some("../releases/42"), Some("app"), false)
    );
    let Spec::Link(old) = &role
        .get(&"link:/etc/app/old".parse().unwrap())
        .unwrap()
        .spec
    else {
        panic!()
    };
    assert_eq!(old.target, None);
}

#[test]
fn link_checks_name_their_line_and_field() {
    let cases = [
        (
            "path = \"etc/x\"\ntarget = \"/y\"",
            at(
                5,
                "path",
                "invalid path \"etc/x\": must be absolute (start with /)",
            ),
        ),
        (
            "path = \"/x\"\ntarget = \"\"",
            at(6, "target", "invalid target \"\": is empty"),
        ),
        (
            "path = \"/x\"\ntarget = \"/a\\nb\"",
            at(
                6,
                "target",
                "invalid target \"/a\\nb\": contains a control character",
            ),
        ),
        (
            "path = \"/x\"\nstate = \"absent\"\nforce = true",
            at(
                7,
                "force",
                "`force` cannot be set on a link with state = \"absent\"",
            ),
        ),
        (
            "path = \"/x\"\ntarget = \"/y\"\nowner = \"Root\"",
            at(7, "owner", "invalid name \"Root\""),
        ),
    ];
    for (body, want) in cases {
        assert_eq!(kind_error("link", body), want, "{body}");
    }
    let (line, field, message) = kind_error("link", "path = \"/x\"");
    assert_eq!(
        (line, field, message.as_str()),
        (4, None, "a link needs a `target`, or state = \"absent\"")
    );
}

#[test]
fn sysctl_values_load_as_the_kernel_prints_them() {
    let toml = format!(
        "{HEAD}
[[sysctl]]
key = \"net.ipv4.tcp_rmem\"
value = \"4096\\t87380   6291456\"

[[sysctl]]
key = \"vm.swappiness\"
value = 10
"
    );
    let role = load(&[("role.toml", &toml)]).unwrap();
    let values: Vec<(String, String)> = role
        .resources
        .iter()
        .map(|r| match &r.spec {
            Spec::Sysctl(s) => (s.key.clone(), s.value.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        values,
        [
            ("net.ipv4.tcp_rmem".into(), "4096 87380 6291456".into()),
            ("vm.swappiness".into(), "10".into())
        ]
    );
    let Spec::Sysctl(s) = &role.resources[1].spec else {
        panic!()
    };
    assert_eq!(s.proc_path(), "/proc/sys/vm/swappiness");
    assert_eq!(s.conf_path(), "/etc/sysctl.d/99-cairn-vm.swappiness.conf");
}

#[test]
fn sysctl_checks_name_their_line_and_field() {
    let long = format!("net.{}", "a".repeat(200));
    for key in [
        "net..ipv4",
        "net/ipv4/ip_forward",
        "../etc/passwd",
        ".net",
        "net.",
        "",
        long.as_str(),
    ] {
        let (line, field, message) = kind_error("sysctl", &format!("key = \"{key}\"\nvalue = 1"));
        assert_eq!((line, field.as_deref()), (5, Some("key")), "{key}");
        assert!(message.starts_with("invalid key"), "{key}: {message}");
    }
    let cases = [
        (
            "value = \"1\\n2\"",
            at(
                6,
                "value",
                "invalid value \"1\\n2\": contains a control character",
            ),
        ),
        (
            "value = \" \"",
            at(6, "value", "invalid value \" \": is empty"),
        ),
        (
            "value = true",
            at(6, "value", "the value must be a string or an integer"),
        ),
    ];
    for (body, want) in cases {
        assert_eq!(
            kind_error("sysctl", &format!("key = \"vm.swappiness\"\n{body}")),
            want,
            "{body}"
        );
    }
    let (_, field, message) = kind_error(
        "sysctl",
        &format!("key = \"vm.swappiness\"\nvalue = \"{}\"", "1".repeat(1025)),
    );
    assert_eq!(field.as_deref(), Some("value"));
    assert!(message.ends_with("is longer than 1024 bytes"), "{message}");
}

#[test]
fn timers_load_as_unit_files_with_their_edges() {
    let toml = format!(
        "{HEAD}
[[user]]
name = \"metrics\"

[[timer]]
name = \"textfile\"
on_calendar = \"*-*-* *:00/5:00\"
command = \"printf '%s\\\\n' \\\"$HOME\\\" > /tmp/out\"
user = \"metrics\"
description = \"Collect 100% of it\"
"
    );
    let role = load(&[("role.toml", &toml)]).unwrap();
    let timer = role.get(&"timer:textfile".parse().unwrap()).unwrap();
    let reqs: Vec<String> = timer.requires.iter().map(ToString::to_string).collect();
    assert_eq!(reqs, ["user:metrics"]);
    let Spec::Timer(t) = &timer.spec else {
        panic!()
    };
    assert_eq!(t.timer_path(), "/etc/systemd/system/textfile.timer");
    assert_eq!(
        t.timer_file(),
        "# Managed by Cairn ([[timer]] textfile); changes here are replaced.\n\
         [Unit]\nDescription=Collect 100%% of it\n\n\
         [Timer]\nOnCalendar=*-*-* *:00/5:00\nUnit=textfile.service\n\n\
         [Install]\nWantedBy=timers.target\n"
    );
    assert_eq!(
        t.service_file(),
        "# Managed by Cairn ([[timer]] textfile); changes here are replaced.\n\
         [Unit]\nDescription=Collect 100%% of it\n\n\
         [Service]\nType=oneshot\nUser=metrics\n\
         ExecStart=/bin/sh -c \"printf '%%s\\\\n' \\\"$$HOME\\\" > /tmp/out\"\n"
    );
}

#[test]
fn timer_checks_name_their_line_and_field() {
    let ok = [
        "name = \"t\"",
        "on_calendar = \"daily\"",
        "command = \"true\"",
    ];
    let with = |i: usize, line: &str| {
        let mut body = ok.to_vec();
        body[i] = line;
        body.join("\n")
    };
    let cases = [
        (
            with(0, "name = \"a/b\""),
            at(5, "name", "invalid name \"a/b\""),
        ),
        (
            with(0, "name = \"-x\""),
            at(5, "name", "invalid name \"-x\""),
        ),
        (
            with(1, "on_calendar = \"daily\\nExecStart=/bin/evil\""),
            at(
                6,
                "on_calendar",
                "invalid calendar expression \"daily\\nExecStart=/bin/evil\"",
            ),
        ),
        (
            with(1, "on_calendar = \"\""),
            at(6, "on_calendar", "invalid calendar expression \"\""),
        ),
        (
            with(2, "command = \"  \""),
            at(7, "command", "the command is empty"),
        ),
        (
            with(2, "command = \"a\\u0000b\""),
            at(
                7,
                "command",
                "the command contains a control character other than a line break or a tab",
            ),
        ),
        (
            format!("{}\nuser = \"Bad\"", ok.join("\n")),
            at(8, "user", "invalid name \"Bad\""),
        ),
        (
            format!("{}\ndescription = \"a\\nb\"", ok.join("\n")),
            at(
                8,
                "description",
                "invalid description \"a\\nb\": one line of at most 255 bytes",
            ),
        ),
    ];
    for (body, want) in cases {
        assert_eq!(kind_error("timer", &body), want, "{body}");
    }
    let (_, field, message) = kind_error(
        "timer",
        &with(2, &format!("command = \"{}\"", "x".repeat(131_072))),
    );
    assert_eq!(
        (field.as_deref(), message.as_str()),
        (Some("command"), "the command is longer than 131071 bytes")
    );
    let d = only_error(&format!(
        "{HEAD}\n[[timer]]\nname = \"t\"\ncommand = \"true\"\n"
    ));
    assert!(d.message.contains("on_calendar"), "{d}");
}

/// Every command a role writes (an exec's `command`, `unless` and `onlyif`,
/// a file's `validate`, a timer's `command`) is held to one rule.
#[test]
fn every_command_is_held_to_one_rule() {
    let tables = [
        ("exec", "name = \"e\"\ncommand = ", "command", "the command"),
        (
            "exec",
            "name = \"e\"\ncommand = \"true\"\nunless = ",
            "unless",
            "the `unless` command",
        ),
        (
            "exec",
            "name = \"e\"\ncommand = \"true\"\nonlyif = ",
            "onlyif",
            "the `onlyif` command",
        ),
        (
            "file",
            "path = \"/etc/x\"\ncontent = \"\"\nvalidate = ",
            "validate",
            "the `validate` command",
        ),
        (
            "timer",
            "name = \"t\"\non_calendar = \"daily\"\ncommand = ",
            "command",
            "the command",
        ),
    ];
    let long = format!("\"{} %\"", "x".repeat(131_070));
    for (kind, head, field, what) in tables {
        for (value, why) in [
            ("\" \"", "is empty".to_string()),
            (long.as_str(), "is longer than 131071 bytes".to_string()),
            (
                "\"true % \\r\"",
                "contains a control character other than a line break or a tab".to_string(),
            ),
        ] {
            let (_, got_field, message) = kind_error(kind, &format!("{head}{value}"));
            assert_eq!(
                (got_field.as_deref(), message),
                (Some(field), format!("{what} {why}")),
                "[[{kind}]] {field}"
            );
        }
        // A line break and a tab are commands' own; 131,071 bytes is the most.
        let ok = format!("{HEAD}\n[[{kind}]]\n{head}\"true %\\n\\ttrue\"\n");
        assert!(load(&[("role.toml", &ok)]).is_ok(), "{ok}");
        // `validate` is held to it with `%` replaced by the new content's
        // quoted path: `'/etc/x'` and the 28 bytes of its temporary name.
        let spare = if kind == "file" { 8 + 28 - 1 } else { 0 };
        let longest = format!(
            "{HEAD}\n[[{kind}]]\n{head}\"{} %\"\n",
            "x".repeat(131_069 - spare)
        );
        assert!(
            load(&[("role.toml", &longest)]).is_ok(),
            "[[{kind}]] {field}"
        );
    }
}

#[test]
fn an_absent_timer_takes_its_name_alone() {
    let role = load(&[(
        "role.toml",
        &format!(
            "{HEAD}\n[[directory]]\npath = \"/etc/systemd/system\"\n\n\
             [[timer]]\nname = \"old\"\nstate = \"absent\"\n"
        ),
    )])
    .unwrap();
    let timer = role.get(&"timer:old".parse().unwrap()).unwrap();
    let Spec::Timer(t) = &timer.spec else {
        panic!("{timer:?}")
    };
    assert_eq!(t.state, cairn_proto::role::Presence::Absent);
    assert_eq!(t.timer_path(), "/etc/systemd/system/old.timer");
    let reqs: Vec<String> = timer.requires.iter().map(ToString::to_string).collect();
    assert_eq!(reqs, ["directory:/etc/systemd/system"]);

    for (line, field) in [
        ("on_calendar = \"daily\"", "on_calendar"),
        ("command = \"true\"", "command"),
        ("user = \"nobody\"", "user"),
        ("description = \"d\"", "description"),
    ] {
        let body = format!("name = \"t\"\nstate = \"absent\"\n{line}");
        assert_eq!(
            kind_error("timer", &body),
            at(
                7,
                field,
                &format!("`{field}` cannot be set on a timer with state = \"absent\""),
            ),
            "{body}"
        );
    }
    // Every field set where none is read is named at once, in each kind
    // that can be absent.
    for (kind, body, fields) in [
        (
            "timer",
            "name = \"t\"\nstate = \"absent\"\non_calendar = \"daily\"\ncommand = \"true\"\nuser = \"u\"",
            &["on_calendar", "command", "user"][..],
        ),
        (
            "link",
            "path = \"/x\"\nstate = \"absent\"\ntarget = \"/y\"\nforce = true",
            &["target", "force"][..],
        ),
        (
            "file",
            "path = \"/x\"\nstate = \"absent\"\ncontent = \"a\"\nsource = \"b\"\nvalidate = \"v %\"",
            &["content", "source", "validate"][..],
        ),
    ] {
        let d = errors(&[("role.toml", &format!("{HEAD}\n[[{kind}]]\n{body}\n"))]);
        let got: Vec<_> = d.iter().map(|d| d.field.as_deref().unwrap_or("")).collect();
        assert_eq!(got, fields, "[[{kind}]]: {d:#?}");
        assert!(
            d.iter()
                .all(|d| d.message.contains("with state = \"absent\"")),
            "{d:#?}"
        );
    }
    let (line, field, message) = kind_error("timer", "name = \"t\"\non_calendar = \"daily\"");
    assert_eq!(
        (line, field, message.as_str()),
        (4, None, "a timer needs `command`, or state = \"absent\"")
    );
    let (_, _, message) = kind_error("timer", "name = \"t\"");
    assert_eq!(
        message,
        "a timer needs `on_calendar` and `command`, or state = \"absent\""
    );
}

// [[package]] install_recommends and state = "purged".

#[test]
fn packages_load_install_recommends_and_purged() {
    let toml = format!(
        "{HEAD}
[[package]]
name = \"nginx\"
install_recommends = false

[[package]]
name = \"apache2\"
state = \"purged\"

[[package]]
name = \"vim\"
"
    );
    let role = load(&[("role.toml", &toml)]).unwrap();
    let package = |name: &str| {
        let id = format!("package:{name}").parse().unwrap();
        let Spec::Package(p) = &role.get(&id).unwrap().spec else {
            panic!()
        };
        (p.state, p.install_recommends)
    };
    assert_eq!(package("nginx"), (PackageState::Installed, Some(false)));
    assert_eq!(package("apache2"), (PackageState::Purged, None));
    assert_eq!(package("vim"), (PackageState::Installed, None));
}

#[test]
fn package_options_that_install_nothing_are_refused() {
    for state in ["absent", "purged"] {
        assert_eq!(
            kind_error(
                "package",
                &format!("name = \"vim\"\nstate = \"{state}\"\ninstall_recommends = false")
            ),
            at(
                7,
                "install_recommends",
                &format!(
                    "install_recommends makes no sense with state = \"{state}\": nothing is installed"
                )
            ),
        );
        assert_eq!(
            kind_error(
                "package",
                &format!("name = \"vim\"\nversion = \"1.0\"\nstate = \"{state}\"")
            ),
            at(
                6,
                "version",
                &format!("a version makes no sense with state = \"{state}\"")
            ),
        );
    }
    let (line, field, message) =
        kind_error("package", "name = \"vim\"\ninstall_recommends = \"no\"");
    assert_eq!(
        (line, field.as_deref()),
        (6, Some("install_recommends")),
        "{message}"
    );
}

#[test]
fn a_user_password_must_be_a_hash_and_is_never_echoed() {
    let role = load(&[(
        "role.toml",
        &format!(
            "{HEAD}\n[[user]]\nname = \"app\"\npassword = \"$6$salt$abc./XYZ\"\n\
             groups_exact = true\n\n[[user]]\nname = \"locked\"\npassword = \"!\"\n"
        ),
    )])
    .unwrap();
    let app = role.get(&"user:app".parse().unwrap()).unwrap();
    let Spec::User(u) = &app.spec else { panic!() };
    assert_eq!(u.password.as_deref(), Some("$6$salt$abc./XYZ"));
    assert!(u.groups_exact);

    let d = only_error(&format!(
        "{HEAD}\n[[user]]\nname = \"app\"\npassword = \"hunter2\"\n"
    ));
    assert_eq!((d.line, d.field.as_deref()), (6, Some("password")), "{d}");
    let shown = d.to_string();
    assert!(shown.starts_with("role.toml:6:"), "{shown}");
    assert!(shown.contains("not a password hash"), "{shown}");
    assert!(
        !shown.contains("hunter2"),
        "the error echoes the password: {shown}"
    );
}
