//! Every recipe in `recipes/` (listed when the test runs, so a new recipe is
//! covered without touching this file) converges a fresh machine without a
//! failure, and a second run finds nothing to change; except those whose own
//! test does that and more ([`CONVERGED_BY_THEIR_OWN_TEST`]).
//!
//! A recipe that sets kernel parameters (`[[sysctl]]`, `net.*` keys) runs on
//! a machine with a network of its own, so that it never sets the host's; its
//! packages are installed before that machine loses Debian's archive.

use cairn_e2e::{GUEST_RECIPES, Machine, recipe_names, workspace_root};
use cairn_proto::bundle::RoleBundle;
use cairn_proto::facts::Facts;
use cairn_proto::role::{self, Kind, PackageState, Spec};

/// A fresh machine for `recipe`: on the host's network, or, when the recipe
/// sets sysctls, on its own with the recipe's packages installed beforehand.
fn machine_for(recipe: &str) -> Machine {
    let dir = workspace_root().join("recipes").join(recipe);
    let bundle = RoleBundle::from_dir(&dir)
        .unwrap_or_else(|e| panic!("could not read {}: {e}", dir.display()));
    let role = role::load(&bundle, &Facts::placeholder())
        .unwrap_or_else(|d| panic!("{}:\n{d}", dir.display()));
    let name = format!("recipe-{recipe}");
    if !role.resources.iter().any(|r| r.id.kind == Kind::Sysctl) {
        return Machine::boot(&name);
    }
    let packages: Vec<&str> = role
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Package(p) if p.state == PackageState::Installed => Some(p.name.as_str()),
            _ => None,
        })
        .collect();
    Machine::boot_private_network_with_packages(&name, &packages)
}

/// Converges one recipe on its own machine; returns what went wrong, if anything.
fn converge(recipe: &str) -> Result<(), String> {
    let m = machine_for(recipe);
    let dir = format!("{GUEST_RECIPES}/{recipe}");

    let first = m.apply_json(&dir, &[]);
    if first.code != 0 || first.report.summary.failed + first.report.summary.skipped > 0 {
        return Err(format!("recipe {recipe}: the first run failed:\n{first}"));
    }
    let second = m.apply_json(&dir, &["--detailed-exitcodes"]);
    if second.code != 0 || second.report.summary.changed != 0 {
        return Err(format!(
            "recipe {recipe}: the second run was not a no-op:\n{second}"
        ));
    }
    Ok(())
}

/// Recipes their own test converges twice the same way (and then checks from
/// outside the agent): `production_roles.rs`. Not converged again here.
const CONVERGED_BY_THEIR_OWN_TEST: [&str; 4] = ["app", "hardening", "monitoring", "proxy"];

#[test]
fn every_recipe_converges_and_then_is_idempotent() {
    let all = recipe_names();
    for name in CONVERGED_BY_THEIR_OWN_TEST {
        assert!(
            all.iter().any(|r| r == name),
            "recipes/{name} is gone: take it off CONVERGED_BY_THEIR_OWN_TEST"
        );
    }
    let recipes: Vec<String> = all
        .into_iter()
        .filter(|r| !CONVERGED_BY_THEIR_OWN_TEST.contains(&r.as_str()))
        .collect();
    assert!(!recipes.is_empty(), "recipes/ has no recipe");
    // Each recipe gets its chance even when an earlier one fails.
    let failures: Vec<String> = recipes
        .iter()
        .filter_map(|r| match std::panic::catch_unwind(|| converge(r)) {
            Ok(result) => result.err(),
            Err(panic) => Some(format!("recipe {r}: {}", panic_message(&panic))),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} recipes ({}) failed:\n\n{}",
        failures.len(),
        recipes.len(),
        recipes.join(", "),
        failures.join("\n")
    );
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("panicked")
}
