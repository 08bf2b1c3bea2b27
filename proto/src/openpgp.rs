//! Just enough OpenPGP (RFC 4880) to pin an apt repository's key: a public
//! key, armored or binary, read into its packets and its primary key's
//! fingerprint, never verified or used to verify anything (apt's `gpgv` does
//! that on the node).
//!
//! Hand-written rather than taken from an OpenPGP crate: a fingerprint is
//! the SHA-1 of one packet, and the crates that parse keys (rpgp, Sequoia)
//! bring every public-key and cipher algorithm with them (Sequoia a C
//! library, Nettle, too) into every party that validates a role, the static
//! agent included.

use base64::Engine;
use sha1::{Digest, Sha1};

/// The largest key taken: a real repository key with its signatures is a
/// few kilobytes (Debian's whole archive keyring is under 100 KiB).
pub const MAX_KEY_BYTES: usize = 256 << 10;

const ARMOR_BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const ARMOR_END: &str = "-----END PGP PUBLIC KEY BLOCK-----";

/// Packet tags (RFC 4880 §4.3) a transferable public key is made of.
const TAG_SIGNATURE: u8 = 2;
const TAG_SECRET_KEY: u8 = 5;
const TAG_PUBLIC_KEY: u8 = 6;
const TAG_SECRET_SUBKEY: u8 = 7;
const TAG_TRUST: u8 = 12;
const TAG_USER_ID: u8 = 13;
const TAG_PUBLIC_SUBKEY: u8 = 14;
const TAG_USER_ATTRIBUTE: u8 = 17;

/// One OpenPGP certificate (a transferable public key), as apt reads a
/// keyring file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key's packets, binary (`gpg --dearmor` of an armored key).
    pub binary: Vec<u8>,
    /// The primary key's v4 fingerprint: 40 uppercase hexadecimal digits.
    pub fingerprint: String,
    /// The fingerprints of its subkeys, in the same form.
    pub subkeys: Vec<String>,
}

/// Reads `data`, a single public key, armored (`-----BEGIN PGP PUBLIC KEY
/// BLOCK-----`) or binary. The error says what is wrong, for a person.
pub fn read_public_key(data: &[u8]) -> Result<PublicKey, String> {
    if data.len() > MAX_KEY_BYTES {
        return Err(format!(
            "is {} bytes long, more than {} KiB: not a single public key",
            data.len(),
            MAX_KEY_BYTES >> 10
        ));
    }
    let binary = if looks_armored(data) {
        dearmor(data)?
    } else {
        data.to_vec()
    };
    let mut primary = None;
    let mut subkeys = Vec::new();
    for (i, packet) in packets(&binary).enumerate() {
        let (tag, body) = packet?;
        match tag {
            TAG_PUBLIC_KEY if primary.is_some() => {
                return Err(
                    "holds more than one public key; apt would trust each of them, \
                            so a pin must cover the whole file"
                        .into(),
                );
            }
            TAG_PUBLIC_KEY => primary = Some(fingerprint(body)?),
            _ if i == 0 => {
                return Err(if matches!(tag, TAG_SECRET_KEY | TAG_SECRET_SUBKEY) {
                    secret_key_error()
                } else {
                    "is not an OpenPGP public key (it does not start with one)".into()
                });
            }
            TAG_PUBLIC_SUBKEY => subkeys.push(fingerprint(body)?),
            TAG_SIGNATURE | TAG_USER_ID | TAG_USER_ATTRIBUTE | TAG_TRUST => {}
            TAG_SECRET_KEY | TAG_SECRET_SUBKEY => return Err(secret_key_error()),
            other => {
                return Err(format!(
                    "holds an OpenPGP packet of type {other}, which is not part of a public key"
                ));
            }
        }
    }
    let fingerprint = primary.ok_or("is empty")?;
    Ok(PublicKey {
        binary,
        fingerprint,
        subkeys,
    })
}

fn secret_key_error() -> String {
    "holds a secret key; a role must carry only the public key \
     (`gpg --export`, never `--export-secret-keys`)"
        .into()
}

/// A fingerprint as people write it (`6ED0 E7B8 2643 E131`, any case, with
/// spaces), as [`PublicKey::fingerprint`] has it: uppercase, no spaces.
pub fn normalize_fingerprint(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Whether `s` (normalized) is a v4 fingerprint: 40 hexadecimal digits.
pub fn is_fingerprint(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn looks_armored(data: &[u8]) -> bool {
    let start = data
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(data.len());
    data[start..].starts_with(b"-----BEGIN ")
}

/// The packets inside an ASCII-armored public key block (RFC 4880 §6.2):
/// the header lines skipped, the base64 decoded, the CRC-24 line ignored, as
/// RFC 9580 lets a reader do.
fn dearmor(data: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(data).map_err(|_| "is armored but not valid UTF-8")?;
    let mut lines = text.lines().map(str::trim);
    let begin = lines.find(|l| !l.is_empty()).ok_or("is empty")?.to_string();
    if begin != ARMOR_BEGIN {
        return Err(if begin.contains("PRIVATE KEY") {
            secret_key_error()
        } else {
            format!(
                "starts with {:?}, not {ARMOR_BEGIN:?}",
                crate::role::clip_to(&begin, 64)
            )
        });
    }
    // Armor headers (`Comment: …`) up to the first blank line.
    let mut lines = lines.skip_while(|l| !l.is_empty());
    let mut base64 = String::new();
    let mut ended = false;
    for line in lines.by_ref() {
        if line == ARMOR_END {
            ended = true;
            break;
        }
        if line.starts_with('=') {
            continue;
        }
        base64.push_str(line);
    }
    if !ended {
        return Err(format!("has no {ARMOR_END:?} line"));
    }
    if lines.any(|l| !l.is_empty()) {
        return Err("holds more than one armored block; a pin covers one key".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(base64)
        .map_err(|e| format!("is armored, but its base64 is broken: {e}"))
}

/// The packets of `data`: `(tag, body)` each, or the error that stops them.
fn packets(data: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), String>> {
    let mut rest = data;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        let next = packet(rest);
        match next {
            Ok((tag, body, after)) => {
                rest = after;
                Some(Ok((tag, body)))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

/// One packet at the start of `data` (RFC 4880 §4.2): its tag, its body and
/// what follows it.
fn packet(data: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let broken = || "is not an OpenPGP key: a packet is cut short or malformed".to_string();
    let (&first, rest) = data.split_first().ok_or_else(broken)?;
    if first & 0x80 == 0 {
        return Err(
            "is not an OpenPGP key (armored keys start with -----BEGIN PGP PUBLIC KEY \
                    BLOCK-----)"
                .into(),
        );
    }
    let (tag, len, rest) = if first & 0x40 != 0 {
        // New format: the length's first octet says how long the length is.
        let tag = first & 0x3f;
        match rest {
            [a @ 0..=191, rest @ ..] => (tag, usize::from(*a), rest),
            [a @ 192..=223, b, rest @ ..] => (
                tag,
                ((usize::from(*a) - 192) << 8) + usize::from(*b) + 192,
                rest,
            ),
            [255, a, b, c, d, rest @ ..] => {
                (tag, u32::from_be_bytes([*a, *b, *c, *d]) as usize, rest)
            }
            // Partial lengths are for data packets, never in a key.
            _ => return Err(broken()),
        }
    } else {
        // Old format: the tag and the length's size share the first octet.
        let tag = (first >> 2) & 0x0f;
        match (first & 0x03, rest) {
            (0, [a, rest @ ..]) => (tag, usize::from(*a), rest),
            (1, [a, b, rest @ ..]) => (tag, usize::from(u16::from_be_bytes([*a, *b])), rest),
            (2, [a, b, c, d, rest @ ..]) => {
                (tag, u32::from_be_bytes([*a, *b, *c, *d]) as usize, rest)
            }
            _ => return Err(broken()),
        }
    };
    if len > rest.len() {
        return Err(broken());
    }
    let (body, after) = rest.split_at(len);
    Ok((tag, body, after))
}

/// The v4 fingerprint of a public key or subkey packet's body (RFC 4880
/// §12.2): SHA-1 over 0x99, the body's two-octet length, and the body.
fn fingerprint(body: &[u8]) -> Result<String, String> {
    match body.first() {
        Some(4) => {}
        Some(v) => {
            return Err(format!(
                "holds a version {v} key; apt's gpgv reads version 4 keys"
            ));
        }
        None => return Err("holds an empty key packet".into()),
    }
    let len = u16::try_from(body.len()).map_err(|_| "holds a key packet too long for version 4")?;
    let mut hash = Sha1::new();
    hash.update([0x99]);
    hash.update(len.to_be_bytes());
    hash.update(body);
    Ok(hash.finalize().iter().map(|b| format!("{b:02X}")).collect())
}
