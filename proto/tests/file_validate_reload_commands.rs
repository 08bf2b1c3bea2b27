//! `validate` on files, `reload` edges, and values in exec commands: what a
//! role may write, and every refusal located at its file, line and field.

use cairn_proto::facts::Facts;
use cairn_proto::role::{self, Diagnostic, ResourceId, Role, Spec, bundle_from_files};

const HEAD: &str = "[role]\nname = \"t\"\n";

fn load(toml: &str) -> Result<Role, Vec<Diagnostic>> {
    let toml = format!("{HEAD}{toml}");
    role::load(
        &bundle_from_files([("role.toml", toml.as_str())]),
        &Facts::placeholder(),
    )
    .map_err(|d| d.0)
}

/// The one diagnostic of a role with a single problem.
fn only_error(toml: &str) -> Diagnostic {
    let d = load(toml).expect_err("the role was accepted");
    assert_eq!(d.len(), 1, "expected one error, got: {d:#?}");
    d.into_iter().next().unwrap()
}

fn exec(role: &Role, name: &str) -> cairn_proto::role::Exec {
    let id: ResourceId = format!("exec:{name}").parse().unwrap();
    match &role.get(&id).unwrap().spec {
        Spec::Exec(e) => e.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn validate_needs_the_placeholder_and_content() {
    let role = load(
        "\n[[file]]\npath = \"/etc/sudoers.d/ops\"\ncontent = \"x\"\nvalidate = \"visudo -cf %\"\n",
    )
    .unwrap();
    let Spec::File(f) = &role.resources[0].spec else {
        panic!()
    };
    assert_eq!(f.validate.as_deref(), Some("visudo -cf %"));
    // The path is quoted as one shell word wherever `%` is.
    assert_eq!(
        f.validate_command("/etc/sudoers.d/.ops it's").as_deref(),
        Some(r"visudo -cf '/etc/sudoers.d/.ops it'\''s'")
    );

    let d = only_error("\n[[file]]\npath = \"/x\"\ncontent = \"\"\nvalidate = \"visudo -c\"\n");
    assert_eq!((d.line, d.field.as_deref()), (7, Some("validate")), "{d}");
    assert!(d.message.contains("`%` is missing"), "{d}");
    assert!(d.help.as_deref().unwrap().contains("visudo -cf %"), "{d}");

    let d = only_error("\n[[file]]\npath = \"/x\"\nstate = \"absent\"\nvalidate = \"true %\"\n");
    assert_eq!((d.line, d.field.as_deref()), (7, Some("validate")), "{d}");
    assert!(d.message.contains("state = \"absent\""), "{d}");
}

#[test]
fn reload_names_services_and_orders_them_after_the_reloader() {
    let role = load(
        "\n[[service]]\nname = \"nginx\"\n\n\
         [[file]]\npath = \"/etc/nginx/nginx.conf\"\ncontent = \"x\"\nreload = [\"service:nginx\"]\n",
    )
    .unwrap();
    let ids: Vec<String> = role.resources.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(ids, ["file:/etc/nginx/nginx.conf", "service:nginx"]);
    let file = &role.resources[0];
    assert_eq!(
        file.reload,
        ["service:nginx".parse::<ResourceId>().unwrap()]
    );
    assert!(file.notify.is_empty());

    let d = only_error(
        "\n[[exec]]\nname = \"x\"\ncommand = \"true\"\nrefresh_only = true\n\n\
         [[file]]\npath = \"/x\"\ncontent = \"\"\nreload = [\"exec:x\"]\n",
    );
    assert_eq!((d.line, d.field.as_deref()), (12, Some("reload")), "{d}");
    assert_eq!(d.message, "exec:x cannot be reloaded: only services reload");

    let d = only_error(
        "\n[[service]]\nname = \"nginx\"\n\n[[file]]\npath = \"/x\"\ncontent = \"\"\nreload = [\"service:ngnix\"]\n",
    );
    assert_eq!(d.field.as_deref(), Some("reload"), "{d}");
    assert_eq!(d.help.as_deref(), Some("did you mean `service:nginx`?"));
}

#[test]
fn commands_insert_values_quoted_or_as_numbers() {
    let role = load(
        "\n[vars]\ndir = \"/srv/my app\"\nport = 8080\nevil = \"'; touch /tmp/pwned; '\"\n\n\
         [[exec]]\nname = \"x\"\n\
         command = \"mkdir -p {{sh vars.dir}} && echo {{vars.port}} {{sh vars.evil}} {{sh facts.hostname}}\"\n\
         unless = \"test -d {{sh vars.dir}}\"\n\
         onlyif = \"test {{vars.port}} -gt 1024\"\n\
         cwd = \"{{vars.dir}}/{{vars.port}}\"\n",
    )
    .unwrap();
    let e = exec(&role, "x");
    let host = Facts::placeholder().hostname;
    assert_eq!(
        e.command,
        format!("mkdir -p '/srv/my app' && echo 8080 ''\\''; touch /tmp/pwned; '\\''' '{host}'")
    );
    assert_eq!(e.unless.as_deref(), Some("test -d '/srv/my app'"));
    assert_eq!(e.onlyif.as_deref(), Some("test 8080 -gt 1024"));
    // A working directory is a path: values go in as they are.
    assert_eq!(e.cwd.as_deref(), Some("/srv/my app/8080"));
    // Blocks may choose what to run; what they insert follows the same rule.
    let role = load(
        "\n[vars]\nfiles = [\"a b\", \"c\"]\nverbose = true\n\n[[exec]]\nname = \"x\"\n\
         command = \"ls {{#if vars.verbose}}-l {{/if}}{{#each vars.files}}{{sh this}} {{/each}}\"\n",
    )
    .unwrap();
    assert_eq!(exec(&role, "x").command, "ls -l 'a b' 'c' ");
    // Quotes closed before `sh`, and escaped ones, leave it outside quotes.
    let role = load(
        "\n[vars]\nd = \"a b\"\n\n[[exec]]\nname = \"x\"\n\
         command = \"echo \\\"x\\\\\\\"\\\" 'y\\\\' \\\\' {{sh vars.d}}\"\n",
    )
    .unwrap();
    assert_eq!(exec(&role, "x").command, r#"echo "x\"" 'y\' \' 'a b'"#);
    // Text without a tag is taken as it is.
    let role = load("\n[[exec]]\nname = \"x\"\ncommand = \"awk '{print $1}' f\"\n").unwrap();
    assert_eq!(exec(&role, "x").command, "awk '{print $1}' f");
}

#[test]
fn a_value_other_than_a_number_inserted_unquoted_is_refused_at_its_field() {
    let vars = "\n[vars]\ndir = \"/srv\"\nport = \"8080\"\nlist = [1]\n\n[[exec]]\nname = \"x\"\n";
    let cases = [
        (
            "command = \"rm -rf {{vars.dir}}\"",
            "command",
            "`vars.dir` is a string and is inserted into a command unquoted; only numbers may be: \
             write {{sh vars.dir}}",
        ),
        (
            "command = \"true\"\nunless = \"test -d {{{facts.hostname}}}\"",
            "unless",
            "`facts.hostname` is a string",
        ),
        (
            "command = \"true\"\nonlyif = \"test {{vars.port}} = 1\"",
            "onlyif",
            "`vars.port` is a string",
        ),
        (
            "command = \"echo {{lookup vars \\\"dir\\\"}}\"",
            "command",
            "is a string and is inserted into a command unquoted",
        ),
        (
            "command = \"echo {{#each vars.list}}{{this}}{{/each}} {{vars.dir}}\"",
            "command",
            "`vars.dir` is a string",
        ),
        (
            "command = \"echo {{sh vars.list}}\"",
            "command",
            "`vars.list` is a list",
        ),
        (
            "command = \"echo {{sh vars.nope}}\"",
            "command",
            "undefined variable `vars.nope`",
        ),
        (
            "command = \"echo {{#raw}}x{{/raw}}\"",
            "command",
            "the `{{#raw}}` block cannot be used in a command",
        ),
        (
            "command = \"echo \\\"{{sh vars.dir}}\\\"\"",
            "command",
            "`{{sh …}}` is inside double quotes, where its quoting does not hold",
        ),
        (
            "command = \"echo '{{sh vars.dir}}'\"",
            "command",
            "is inside single quotes",
        ),
        (
            "command = \"echo \\\\\\\\{{sh vars.dir}}\"",
            "command",
            "right after a backslash",
        ),
        (
            "command = \"echo \\\"{{#if vars.dir}}{{sh vars.dir}}{{/if}}\\\"\"",
            "command",
            "is inside double quotes",
        ),
        (
            "command = \"echo {{#if x}}\"",
            "command",
            "template syntax error",
        ),
        (
            "command = \"true\"\ncwd = \"{{sh vars.dir}}\"",
            "cwd",
            "must be absolute",
        ),
        (
            "command = \"true\"\ncwd = \"{{vars.dir}}/../etc\"",
            "cwd",
            "contains . or ..",
        ),
    ];
    for (fields, field, message) in cases {
        let d = only_error(&format!("{vars}{fields}\n"));
        let line = 11 + fields.lines().count() - 1;
        assert_eq!(
            (d.line, d.field.as_deref(), d.context.as_deref()),
            (line, Some(field), Some("[[exec]] \"x\"")),
            "{fields}: {d}"
        );
        assert!(d.message.contains(message), "{fields}: {d}");
    }
    let d = only_error(&format!(
        "{vars}command = \"true\"\ncwd = \"{{{{sh vars.dir}}}}\"\n"
    ));
    assert!(d.help.as_deref().unwrap().contains("not a command"), "{d}");
}

#[test]
fn a_command_is_bounded_by_what_the_kernel_takes_as_one_argument() {
    let long = "x".repeat(100_000);
    let toml = format!(
        "\n[vars]\nlong = \"{long}\"\n\n[[exec]]\nname = \"x\"\ncommand = \"echo {{{{sh vars.long}}}} {{{{sh vars.long}}}}\"\n"
    );
    let d = only_error(&toml);
    assert_eq!(d.field.as_deref(), Some("command"), "{d}");
    assert!(
        d.message.contains("renders to more than 131071 bytes"),
        "{d}"
    );
    let toml = format!(
        "\n[vars]\nlong = \"{long}\"\n\n[[exec]]\nname = \"x\"\ncommand = \"echo {{{{sh vars.long}}}}\"\n"
    );
    assert_eq!(exec(&load(&toml).unwrap(), "x").command.len(), 100_007);
}

/// Commands draw on the role's one rendering budget with its files: each
/// command within its own bound, 600 of them render to more than 64 MiB.
#[test]
fn commands_count_toward_what_a_role_renders_in_all() {
    let word = format!("\"{}\"", "w".repeat(1000));
    let list = vec![word; 120].join(", ");
    let mut toml = format!("\n[vars]\nl = [{list}]\n");
    for i in 0..600 {
        toml += &format!(
            "\n[[exec]]\nname = \"e{i}\"\ncommand = \"echo {{{{#each vars.l}}}}{{{{sh this}}}}{{{{/each}}}}\"\n"
        );
    }
    let errors = load(&toml).expect_err("a role rendering 72 MiB of commands was accepted");
    let first = errors[0].to_string();
    assert!(
        first.contains("the role's templates render to more than 64 MiB in all"),
        "{first}"
    );
}

/// A value brought into a command is held to the rule the command as written
/// is: a NUL or an escape character fails at load, before anything runs.
#[test]
fn a_rendered_command_with_a_control_character_fails_at_load() {
    for (value, field) in [
        ("a\\u0000b", "command"),
        ("a\\u001bb", "unless"),
        ("a\\rb", "onlyif"),
    ] {
        let guard = if field == "command" {
            String::new()
        } else {
            format!("{field} = \"test {{{{sh vars.v}}}}\"\n")
        };
        let command = if field == "command" {
            "echo {{sh vars.v}}"
        } else {
            "true"
        };
        let d = only_error(&format!(
            "\n[vars]\nv = \"{value}\"\n\n[[exec]]\nname = \"x\"\ncommand = \"{command}\"\n{guard}"
        ));
        assert_eq!(d.field.as_deref(), Some(field), "{d}");
        assert!(
            d.message.contains(&format!(
                "`{field}` as rendered contains a control character other than a line break or a tab"
            )),
            "{d}"
        );
    }
    // A line break or a tab is allowed, as in a command written out.
    let role = load(
        "\n[vars]\nv = \"a\\tb\\nc\"\n\n[[exec]]\nname = \"x\"\ncommand = \"echo {{sh vars.v}}\"\n",
    )
    .unwrap();
    assert_eq!(exec(&role, "x").command, "echo 'a\tb\nc'");
}

/// Each `%` of `validate` becomes the quoted path of the new content: a
/// command that would run longer than the kernel takes fails at load.
#[test]
fn validate_is_bounded_with_each_placeholder_replaced() {
    let path = format!("/etc/{}", "p".repeat(200));
    // 600 placeholders of a 230-byte path: short as written, 140 KB run.
    let validate = format!("check {}", "% ".repeat(600));
    let d = only_error(&format!(
        "\n[[file]]\npath = \"{path}\"\ncontent = \"x\"\nvalidate = \"{validate}\"\n"
    ));
    assert_eq!(d.field.as_deref(), Some("validate"), "{d}");
    assert!(
        d.message.contains("replaced by the quoted path") && d.message.contains("131071 bytes"),
        "{d}"
    );
    let validate = format!("check {}", "% ".repeat(400));
    load(&format!(
        "\n[[file]]\npath = \"{path}\"\ncontent = \"x\"\nvalidate = \"{validate}\"\n"
    ))
    .unwrap();
}
