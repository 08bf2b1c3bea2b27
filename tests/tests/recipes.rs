//! Every recipe in `recipes/` (listed when the test runs, so a new recipe is
//! covered without touching this file) converges a fresh machine without a
//! failure, and a second run finds nothing to change.

use cairn_e2e::{GUEST_RECIPES, Machine, recipe_names};

/// Converges one recipe on its own machine; returns what went wrong, if anything.
fn converge(recipe: &str) -> Result<(), String> {
    let m = Machine::boot(&format!("recipe-{recipe}"));
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

#[test]
fn every_recipe_converges_and_then_is_idempotent() {
    let recipes = recipe_names();
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
