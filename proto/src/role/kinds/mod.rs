//! Resource kinds, one file each: the table as written in `role.toml`
//! (`Raw…`), the checked form the agent converges, its field checks and its
//! implicit edges. The `kinds!` table below registers them.

use std::str::FromStr;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::DeValue;

use super::diagnostic::Diags;
use super::id::ResourceId;
use super::manifest::{self, Decl};
use super::rules::Table;

mod apt_repository;
mod directory;
mod exec;
mod file;
mod group;
mod link;
mod package;
mod service;
mod sysctl;
mod timer;
mod user;

pub use apt_repository::{AptRepository, AptSource};
pub use directory::Directory;
pub use exec::Exec;
pub use file::File;
pub use group::Group;
pub use link::Link;
pub use package::{Package, PackageState};
pub use service::Service;
pub use sysctl::{Sysctl, normalize_sysctl_value};
pub use timer::Timer;
pub use user::User;

/// Whether a group, user, directory or file must exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Present,
    Absent,
}

/// What each kind's file gives the loader. The loader reads `requires`,
/// `notify` and `reload`, which every kind has, and hands the rest of the
/// table to the kind.
pub(super) trait ResourceKind: Sized {
    /// The table as written, without `requires`, `notify` and `reload`; it
    /// denies unknown fields, so a typo is an error.
    type Raw: DeserializeOwned;
    /// Whether the kind reacts to a refresh, so `notify` may name it.
    const REFRESHABLE: bool = false;
    /// Kinds every resource of which converges after every resource of this
    /// kind, unless it must come first (this one requires it): every package
    /// after every apt repository, as puppetlabs-apt orders them.
    const PRECEDES_EVERY: &'static [Kind] = &[];
    /// The field that names the resource: the NAME of its `TYPE:NAME` id.
    fn name(raw: &Self::Raw) -> &Spanned<String>;
    /// Checks the fields, reporting every problem to `table`, and builds the
    /// checked form (which is dropped if anything was reported).
    fn check(raw: Self::Raw, table: &mut Table<'_, '_>) -> Self;
    /// What the resource must follow without the role saying so; an edge to a
    /// resource the role does not declare is left out.
    fn implicit_requires(&self) -> Vec<ResourceId> {
        Vec::new()
    }
}

/// A file or directory follows its parent directories, its owner and its group.
fn path_requires(path: &str, owner: Option<&str>, group: Option<&str>) -> Vec<ResourceId> {
    let mut out: Vec<ResourceId> = std::path::Path::new(path)
        .ancestors()
        .skip(1)
        .filter_map(|p| p.to_str())
        .map(|p| ResourceId::new(Kind::Directory, p))
        .collect();
    out.extend(owner.map(|o| ResourceId::new(Kind::User, o)));
    out.extend(group.map(|g| ResourceId::new(Kind::Group, g)));
    out
}

/// Builds, from one row per kind (`Type = "key"`: a type implementing
/// [`ResourceKind`] and the key of its tables in `role.toml`), everything that
/// lists the kinds: [`Kind`], [`Spec`] and the dispatch from a key to the
/// kind's code. The row order is the convergence order before edges.
macro_rules! kinds {
    ($($ty:ident = $key:literal,)*) => {
        /// Resource types, in the order a run converges them (before `requires` edges).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Kind {
            $($ty,)*
        }

        impl Kind {
            pub const ALL: [Kind; [$($key),*].len()] = [$(Kind::$ty),*];

            /// The key of its tables in `role.toml` and the TYPE of its ids.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Kind::$ty => $key,)*
                }
            }

            /// Whether a resource of this kind can be the target of `notify`.
            pub fn refreshable(self) -> bool {
                match self {
                    $(Kind::$ty => <$ty as ResourceKind>::REFRESHABLE,)*
                }
            }

            /// The kinds whose every resource follows every resource of this
            /// kind ([`ResourceKind::PRECEDES_EVERY`]).
            pub fn precedes_every(self) -> &'static [Kind] {
                match self {
                    $(Kind::$ty => <$ty as ResourceKind>::PRECEDES_EVERY,)*
                }
            }
        }

        /// A checked resource, as the agent converges it.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Spec {
            $($ty($ty),)*
        }

        $(impl From<$ty> for Spec {
            fn from(spec: $ty) -> Spec {
                Spec::$ty(spec)
            }
        })*

        impl Spec {
            pub(in crate::role) fn implicit_requires(&self) -> Vec<ResourceId> {
                match self {
                    $(Spec::$ty(s) => s.implicit_requires(),)*
                }
            }
        }

        /// Reads one table of `kind` with that kind's code.
        pub(in crate::role) fn read(
            kind: Kind,
            diags: &mut Diags<'_>,
            item: Spanned<DeValue<'_>>,
            context: String,
        ) -> Option<Decl> {
            match kind {
                $(Kind::$ty => manifest::read_resource::<$ty>(kind, diags, item, context),)*
            }
        }
    };
}

kinds! {
    Group = "group",
    User = "user",
    AptRepository = "apt_repository",
    Package = "package",
    Directory = "directory",
    File = "file",
    Link = "link",
    Sysctl = "sysctl",
    Exec = "exec",
    Service = "service",
    Timer = "timer",
}

impl FromStr for Kind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or(())
    }
}
