//! The role format: `role.toml` plus `templates/` and `files/`.
//!
//! [`load`] turns a [`RoleBundle`] into a [`Role`] whose every resource is fully
//! resolved (templates rendered, sources read, paths checked, dependencies
//! ordered), or into every [`Diagnostic`] found, each naming the file, line and
//! field. Nothing here touches the host: the agent calls it before it changes
//! anything, the server before it stores a version.
//!
//! The steps, each in its own module: `manifest` reads `role.toml` table by
//! table and hands each resource table to its kind in `kinds` (one file per
//! kind: fields, checks, implicit edges); `content` reads templates and
//! sources; `order` checks references and orders the resources. Rules shared
//! by several kinds are in `rules`; every problem becomes a [`Diagnostic`].

mod content;
mod diagnostic;
mod id;
mod kinds;
mod manifest;
mod order;
mod rules;

use std::collections::BTreeMap;

pub use diagnostic::{Diagnostic, Diagnostics, MAX_DIAGNOSTICS};
pub use id::ResourceId;
// `Kind`, `Spec`, `Presence` and each kind's checked form (`File`, …).
pub(crate) use diagnostic::clip_to;
pub use kinds::*;
pub use rules::{
    ROLE_NAME_RULE, check_abs_path, check_path_text, check_rel_path, is_role_name, parse_mode,
};

use crate::bundle::{MANIFEST, RoleBundle};
use crate::facts::Facts;
use diagnostic::{Diags, line_col_bytes};

/// Where a resource was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub id: ResourceId,
    pub spec: Spec,
    /// Declared `requires` plus implicit ones (managed parent directory, owner
    /// user, group; every apt repository, for a package): what must converge
    /// first, and whose failure skips this one.
    pub requires: Vec<ResourceId>,
    /// Resources that refresh after this one changes: a service restarts,
    /// an exec runs.
    pub notify: Vec<ResourceId>,
    /// Services that reload after this one changes (a restart asked by
    /// another resource wins).
    pub reload: Vec<ResourceId>,
    pub location: Location,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub vars: serde_json::Value,
    pub digest: String,
    /// In convergence order: by type, then declaration order, reordered by
    /// `requires`, `notify` and `reload` edges.
    pub resources: Vec<Resource>,
}

impl Role {
    pub fn get(&self, id: &ResourceId) -> Option<&Resource> {
        self.resources.iter().find(|r| &r.id == id)
    }
}

/// Parses and validates a role, rendering its templates with `facts`.
///
/// Validation without a node (the server, `cairn-agent validate`) passes
/// [`Facts::placeholder`]: every fact exists, so strict mode still catches a
/// misspelled name.
pub fn load(bundle: &RoleBundle, facts: &Facts) -> Result<Role, Diagnostics> {
    let src = manifest_text(bundle)?;
    let mut diags = Diags::new(src);
    let Some(manifest::Manifest {
        meta,
        vars,
        mut decls,
    }) = manifest::parse(src, &mut diags)
    else {
        return Err(diags.finish());
    };
    order::check_duplicates(&mut diags, &decls);
    content::resolve(&mut diags, bundle, facts, &meta, &vars, &mut decls);
    let resources = order::order(&mut diags, decls);
    if diags.any() {
        return Err(diags.finish());
    }
    Ok(Role {
        name: meta.name,
        description: meta.description,
        vars,
        digest: bundle.digest(),
        resources,
    })
}

/// The text of `role.toml`, which must exist and be UTF-8.
fn manifest_text(bundle: &RoleBundle) -> Result<&str, Diagnostics> {
    let Some(raw) = bundle.get(MANIFEST) else {
        return Err(Diagnostics(vec![Diagnostic {
            file: MANIFEST.into(),
            line: 0,
            column: 0,
            context: None,
            field: None,
            message: "role.toml is missing".into(),
            help: Some("a role is a directory with role.toml at its top".into()),
        }]));
    };
    std::str::from_utf8(raw).map_err(|e| {
        let (line, column) = line_col_bytes(raw, e.valid_up_to());
        Diagnostics(vec![Diagnostic {
            file: MANIFEST.into(),
            line,
            column,
            context: None,
            field: None,
            message: "role.toml is not valid UTF-8".into(),
            help: None,
        }])
    })
}

/// Builds a bundle from `(path, text)` pairs, for tests.
pub fn bundle_from_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> RoleBundle {
    let mut b = RoleBundle::default();
    let map: BTreeMap<_, _> = files.into_iter().collect();
    for (p, c) in map {
        b.insert(p.to_string(), c.as_bytes().to_vec())
            .expect("test bundle paths are valid");
    }
    b
}
