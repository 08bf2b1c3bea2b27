//! Property tests: whatever a role or a wire bundle holds, loading it ends in
//! a role or in diagnostics, never in a panic, an abort or a stack overflow.
//! Cases are few enough to run in seconds with the other tests.

use cairn_proto::bundle::RoleBundle;
use cairn_proto::facts::Facts;
use cairn_proto::pb;
use cairn_proto::role::{self, bundle_from_files};
use proptest::prelude::*;
use prost::Message;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // No regressions directory: failures print their input instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Loads a role; only a panic (or worse) fails the test.
fn load(files: &[(&str, &str)]) {
    let _ = role::load(
        &bundle_from_files(files.iter().copied()),
        &Facts::placeholder(),
    );
}

/// Decodes a wire bundle and loads the role in it, as the server does.
fn load_wire(bytes: &[u8]) {
    if let Ok(wire) = pb::Bundle::decode(bytes)
        && let Ok(bundle) = RoleBundle::from_wire(wire)
    {
        let _ = role::load(&bundle, &Facts::placeholder());
    }
}

const VALID_ROLE: &str = r#"[role]
name = "web"
description = "a web server"

[vars]
port = 8080
hosts = ["a", "b"]
nested = { deep = { deeper = [1, { x = "y" }] } }

[[group]]
name = "ops"

[[user]]
name = "app"
groups = ["ops"]
home = "/srv/app"

[[package]]
name = "nginx"
version = "1.0"

[[directory]]
path = "/srv/app"
owner = "app"
mode = "0750"

[[file]]
path = "/srv/app/app.conf"
template = "app.conf.hbs"
requires = ["package:nginx"]
notify = ["service:nginx"]

[[file]]
path = "/srv/app/static"
source = "static"

[[exec]]
name = "warm"
command = "true"
creates = "/srv/app/warm"

[[service]]
name = "nginx"
running = true
enabled = true
"#;

const VALID_TEMPLATE: &str = "listen {{vars.port}};\n{{#each vars.hosts}}host {{this}} {{@index}}\n{{else}}none{{/each}}\n{{#if (eq vars.port 80)}}default{{else if vars.port}}{{vars.port}}{{/if}}\n{{lookup vars \"port\"}} {{facts.hostname}}\n";

/// Pieces of TOML and of Handlebars syntax, so mutations reach past the first
/// parse error.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "{{",
    "}}",
    "{{#if ",
    "{{#each ",
    "{{/if}}",
    "{{/each}}",
    "{{else}}",
    "{{else if x}}",
    "{{> ",
    "{{#> ",
    "{{#*inline \"p\"}}",
    "{{log ",
    "(",
    ")",
    "\"",
    "'",
    "\"\"\"",
    "=",
    ",",
    ".",
    "\n",
    "#",
    "\\",
    "/",
    "..",
    "~",
    "@root",
    "vars.port",
    "file",
    "service:nginx",
    "package:",
    "requires = [",
    "notify = [",
    "template = \"",
    "0644",
    "\u{0}",
    "\u{7f}",
    "é",
    "\u{feff}",
    " ",
];

/// `base` with a few edits: tokens inserted, spans deleted or replaced.
fn mutated(base: &'static str) -> impl Strategy<Value = String> {
    let edit = (
        0..base.len() + 1,
        0usize..8,
        prop::sample::select(TOKENS),
        1usize..4,
    );
    prop::collection::vec(edit, 1..6).prop_map(move |edits| {
        let mut s = base.to_string();
        for (at, delete, token, repeat) in edits {
            let mut at = at.min(s.len());
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + delete).min(s.len());
            while !s.is_char_boundary(end) {
                end += 1;
            }
            s.replace_range(at..end, &token.repeat(repeat));
        }
        s
    })
}

/// Text made of syntax tokens and a little of anything.
fn token_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(TOKENS).prop_map(str::to_string),
        1 => any::<String>(),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_role_toml_text(text in any::<String>()) {
        load(&[("role.toml", &text)]);
    }

    #[test]
    fn mutated_role_toml(text in mutated(VALID_ROLE)) {
        load(&[
            ("role.toml", &text),
            ("templates/app.conf.hbs", VALID_TEMPLATE),
            ("files/static", "x"),
        ]);
    }

    #[test]
    fn token_soup_role_toml(text in token_soup()) {
        load(&[("role.toml", &text)]);
    }

    #[test]
    fn mutated_and_random_templates(
        template in prop_oneof![mutated(VALID_TEMPLATE), token_soup()],
        other in token_soup(),
    ) {
        load(&[
            ("role.toml", VALID_ROLE),
            ("templates/app.conf.hbs", &template),
            ("templates/other.hbs", &other),
            ("files/static", "x"),
        ]);
    }

    #[test]
    fn any_bytes_as_a_wire_bundle(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        load_wire(&bytes);
    }

    #[test]
    fn mutated_wire_bundles(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        paths in prop::collection::vec(token_soup(), 0..4),
    ) {
        let mut files = vec![("role.toml", VALID_ROLE), ("templates/app.conf.hbs", VALID_TEMPLATE)];
        files.push(("files/static", "x"));
        let mut wire = bundle_from_files(files).to_wire();
        wire.files.extend(paths.into_iter().map(|p| pb::BundleFile {
            path: p.into_bytes(),
            content: vec![],
        }));
        let mut bytes = wire.encode_to_vec();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        load_wire(&bytes);
    }
}

/// Nesting far past any limit, in every place that nests; rendered where a
/// template could see it.
#[test]
fn deep_nesting_never_overflows() {
    let with_file = "[[file]]\npath = \"/x\"\ntemplate = \"t.hbs\"\n";
    for n in [100, 1_000, 100_000] {
        let open_close = |open: &str, mid: &str, close: &str| {
            format!("{}{mid}{}", open.repeat(n), close.repeat(n))
        };
        let cases = [
            (
                format!("x = {}", open_close("[", "1", "]")),
                "{{vars}}".to_string(),
            ),
            (
                format!("x = {}", open_close("{a=", "1", "}")),
                "{{vars}}".to_string(),
            ),
            (
                format!("[vars.{}]\nb = 1", vec!["a"; n].join(".")),
                "{{vars}}".to_string(),
            ),
            (String::new(), open_close("{{#if vars}}", "x", "{{/if}}")),
            (
                String::new(),
                format!("{{{{#if x}}}}{}{{{{/if}}}}", "{{else if vars}}".repeat(n)),
            ),
            (
                String::new(),
                format!("{{{{eq {} 1}}}}", open_close("(eq ", "1 1", ")")),
            ),
        ];
        for (vars, template) in cases {
            let vars = if vars.starts_with("[vars.") {
                vars
            } else {
                format!("[vars]\n{vars}")
            };
            let toml = format!("[role]\nname = \"t\"\n{with_file}{vars}\n");
            load(&[("role.toml", &toml), ("templates/t.hbs", &template)]);
        }
    }
}
