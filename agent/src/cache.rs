//! The last good role bundle, kept under the state directory so that a run
//! still converges when no server answers.
//!
//! A bundle is trusted only once the digest of what arrived is the digest the
//! server named for that version: [`Fetched::verify`] checks a bundle from
//! the wire and the one read back from disk alike, so a cache changed on disk
//! is refused with its file named, never used.

use anyhow::{Context, Result, bail};
use cairn_proto::bundle::{RoleBundle, short_digest};
use cairn_proto::pb;
use prost::Message;

use crate::state::StateDir;

/// The cache's file in the state directory: a `FetchResponse` as the server
/// sent it (protobuf).
pub const CACHE_FILE: &str = "bundle.pb";

/// A role bundle and the version it is, its digest checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bundle: RoleBundle,
    pub role: String,
    pub channel: String,
    pub version: u64,
    /// The bundle's digest, equal to the one the server named.
    pub digest: String,
}

impl Fetched {
    /// Checks a response carrying a bundle: its paths (as
    /// [`RoleBundle::from_wire`] does), and that the bundle's digest is the
    /// version's.
    pub fn verify(response: pb::FetchResponse) -> Result<Fetched> {
        let Some(version) = response.version else {
            bail!("the response names no version");
        };
        let Some(wire) = response.bundle else {
            bail!(
                "the response to version {} of role {} holds no bundle",
                version.version,
                version.role
            );
        };
        let bundle = RoleBundle::from_wire(wire).with_context(|| {
            format!(
                "the bundle of version {} of role {} is invalid",
                version.version, version.role
            )
        })?;
        let digest = bundle.digest();
        if digest != version.digest {
            bail!(
                "the bundle of version {} of role {} has digest {}, not the {} it was sent as",
                version.version,
                version.role,
                short_digest(&digest),
                short_digest(&version.digest),
            );
        }
        Ok(Fetched {
            bundle,
            role: version.role,
            channel: response.channel,
            version: version.version,
            digest,
        })
    }

    /// The form it is kept in: what the server sent.
    fn to_wire(&self) -> pb::FetchResponse {
        pb::FetchResponse {
            version: Some(pb::VersionInfo {
                role: self.role.clone(),
                version: self.version,
                digest: self.digest.clone(),
                ..Default::default()
            }),
            channel: self.channel.clone(),
            bundle: Some(self.bundle.to_wire()),
        }
    }
}

/// The cached bundle; `None` when there is none. A file that does not decode
/// or whose bundle is not the digest it was kept with is an error naming the
/// file.
pub fn load(state: &StateDir) -> Result<Option<Fetched>> {
    let path = state.path().join(CACHE_FILE);
    let load = || -> Result<Option<Fetched>> {
        let Some(data) = state.read(CACHE_FILE)? else {
            return Ok(None);
        };
        let response = pb::FetchResponse::decode(data.as_slice()).context("it does not decode")?;
        Fetched::verify(response).map(Some)
    };
    load().with_context(|| {
        format!(
            "the cached role bundle {} is corrupt (delete it: the next run that reaches a \
             server fetches the role again)",
            path.display()
        )
    })
}

/// Keeps `fetched` as the last good bundle, replacing the one before
/// atomically: a crash leaves one or the other whole.
pub fn save(state: &StateDir, fetched: &Fetched) -> Result<()> {
    state
        .write(CACHE_FILE, &fetched.to_wire().encode_to_vec(), 0o600)
        .with_context(|| {
            format!(
                "could not cache the role bundle in {}",
                state.path().join(CACHE_FILE).display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched() -> Fetched {
        let mut bundle = RoleBundle::default();
        bundle
            .insert("role.toml".into(), b"[role]\nname = \"web\"\n".to_vec())
            .unwrap();
        bundle
            .insert("files/motd".into(), b"hello\n".to_vec())
            .unwrap();
        Fetched {
            digest: bundle.digest(),
            bundle,
            role: "web".into(),
            channel: "stable".into(),
            version: 3,
        }
    }

    #[test]
    fn a_bundle_is_trusted_only_with_the_digest_it_was_sent_as() {
        let good = fetched();
        assert_eq!(Fetched::verify(good.to_wire()).unwrap(), good);

        let mut wire = good.to_wire();
        wire.bundle.as_mut().unwrap().files[1].content = b"evil\n".to_vec();
        let err = format!("{:#}", Fetched::verify(wire).unwrap_err());
        assert!(
            err.starts_with("the bundle of version 3 of role web has digest sha256:")
                && err.contains(short_digest(&good.digest)),
            "{err}"
        );

        let mut wire = good.to_wire();
        wire.bundle = None;
        let err = Fetched::verify(wire).unwrap_err().to_string();
        assert!(err.contains("holds no bundle"), "{err}");

        let mut wire = good.to_wire();
        wire.bundle.as_mut().unwrap().files[0].path = b"../role.toml".to_vec();
        let err = format!("{:#}", Fetched::verify(wire).unwrap_err());
        assert!(err.contains("is invalid"), "{err}");
    }

    #[test]
    fn the_cache_round_trips_and_a_corrupt_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        assert_eq!(load(&state).unwrap(), None);
        save(&state, &fetched()).unwrap();
        assert_eq!(load(&state).unwrap(), Some(fetched()));

        // One byte of a file's content changed on disk: the digest no longer
        // matches, and the error names the cache file.
        let path = dir.path().join("state").join(CACHE_FILE);
        let mut data = std::fs::read(&path).unwrap();
        let at = data.windows(6).position(|w| w == b"hello\n").unwrap();
        data[at] = b'j';
        std::fs::write(&path, &data).unwrap();
        let err = format!("{:#}", load(&state).unwrap_err());
        assert!(
            err.starts_with(&format!(
                "the cached role bundle {} is corrupt",
                path.display()
            )) && err.contains("has digest"),
            "{err}"
        );

        std::fs::write(&path, b"\xff\xff\xff").unwrap();
        let err = format!("{:#}", load(&state).unwrap_err());
        assert!(
            err.contains(&path.display().to_string()) && err.contains("does not decode"),
            "{err}"
        );

        // A link planted in its place is not followed.
        std::fs::remove_file(&path).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = format!("{:#}", load(&state).unwrap_err());
        assert!(err.contains("is a link, not a file"), "{err}");
        save(&state, &fetched()).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!path.is_symlink());
        assert_eq!(load(&state).unwrap(), Some(fetched()));
    }
}
