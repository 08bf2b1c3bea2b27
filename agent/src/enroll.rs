//! `cairn-agent enroll`: the node makes its key, asks a server it knows by
//! its CA pin for a certificate with a join token, and keeps the identity it
//! gets ([`NodeIdentity`]) in its state directory.
//!
//! The key is made here and never sent: the server gets a certificate request
//! (its public key). The token is sent only over a connection whose CA
//! matched the pin ([`client::connect_pinned`]), and the token file is
//! deleted once the identity is stored (kept, with the error, otherwise).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use cairn_proto::client::{self, CaPin, Refusal};
use cairn_proto::facts::Facts;
use cairn_proto::node::{self, Assignment};
use cairn_proto::pb;
use rcgen::KeyPair;

use crate::identity::{NodeIdentity, key_and_request};

/// A longer token file is refused (a token is 23 characters).
const MAX_TOKEN_FILE_BYTES: u64 = 4 << 10;
/// How many hex digits of the machine id a default name takes.
const MACHINE_ID_DIGITS: usize = 12;

/// What an enrollment needs, every part decided (flags over the file).
#[derive(Debug, Clone)]
pub struct Request {
    /// In order: the first that answers is used.
    pub servers: Vec<String>,
    pub ca_pin: CaPin,
    pub token_file: PathBuf,
    pub name: String,
    pub state_dir: PathBuf,
}

/// The default node name: the first [`MACHINE_ID_DIGITS`] hex digits of the
/// machine id, a dash, and the hostname (lowercased, other characters made
/// dashes), within [`node::MAX_NAME_LEN`]: unique per machine even where
/// hostnames repeat, and still telling people which machine it is.
pub fn default_name(facts: &Facts) -> Result<String> {
    let id: String = facts
        .machine_id
        .trim()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(MACHINE_ID_DIGITS)
        .collect::<String>()
        .to_ascii_lowercase();
    let host: String = facts
        .hostname
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '-') => c,
            _ => '-',
        })
        .collect();
    let mut name = match (id.is_empty(), host.is_empty()) {
        (true, true) => String::new(),
        (false, true) => id,
        (true, false) => host,
        (false, false) => format!("{id}-{host}"),
    };
    name.truncate(node::MAX_NAME_LEN);
    let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    node::check_name(name).map_err(|e| {
        anyhow!("{e}\n  help: this machine has no usable machine id or hostname; give --name")
    })?;
    Ok(name.to_string())
}

/// Reads the join token from `path`: its first line, trimmed.
fn read_token(path: &Path) -> Result<String> {
    let read = || -> Result<String> {
        let mut text = String::new();
        std::fs::File::open(path)?
            .take(MAX_TOKEN_FILE_BYTES + 1)
            .read_to_string(&mut text)?;
        if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
            bail!("it is larger than {MAX_TOKEN_FILE_BYTES} bytes; a join token is one short line");
        }
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            bail!("it is empty");
        }
        Ok(token)
    };
    read().with_context(|| format!("could not read the join token from {}", path.display()))
}

/// Enrolls this node (see the module's comment); `facts` are sent along, as
/// the node's facts at enrollment.
pub async fn enroll(req: &Request, facts: &Facts) -> Result<NodeIdentity> {
    if req.servers.is_empty() {
        bail!(
            "no server to enroll with: give --server URL (or `servers` in the configuration file)"
        );
    }
    let token = read_token(&req.token_file)?;
    let (key, csr) = key_and_request(&req.name)?;
    let request = pb::EnrollRequest {
        token,
        csr_pem: csr,
        node_name: req.name.clone(),
        facts_json: serde_json::to_string(facts).context("could not encode the facts")?,
    };
    let mut failures = Vec::new();
    let mut answer = None;
    for url in &req.servers {
        let conn = match client::connect_pinned(url, req.ca_pin).await {
            Ok(conn) => conn,
            Err(e) => {
                failures.push(describe(&e));
                continue;
            }
        };
        match conn
            .enrollment()
            .enroll(request.clone())
            .await
            .refused_by(&conn)
        {
            Ok(response) => {
                answer = Some((url, response));
                break;
            }
            // The connection broke: the next server may answer.
            Err(client::Error::Refused(r)) if r.status.code() == tonic::Code::Unavailable => {
                failures.push(describe(&client::Error::Refused(r)));
            }
            // The server refused the enrollment: another one would too.
            Err(e) => {
                return Err(anyhow!(describe(&e))).context(format!(
                    "could not enroll node {}; the token file {} is kept",
                    req.name,
                    req.token_file.display()
                ));
            }
        }
    }
    let Some((url, response)) = answer else {
        bail!(
            "could not enroll node {}: no server answered; the token file {} is kept\n{}",
            req.name,
            req.token_file.display(),
            failures.join("\n")
        );
    };
    let identity = checked(req, url, response, key)?;
    identity.save(&req.state_dir)?;
    Ok(identity)
}

/// The error and its causes on one line each, then its help.
fn describe(e: &client::Error) -> String {
    let mut text = e.to_string();
    let mut last = text.clone();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        // Transport errors often repeat their source's message; say it once.
        let line = cause.to_string();
        if line != last {
            text.push_str(&format!("\n  caused by: {line}"));
        }
        last = line;
        source = cause.source();
    }
    if let Some(help) = e.help() {
        text.push_str(&format!("\n  help: {help}"));
    }
    text
}

/// The identity from the server's answer, once it is what was asked for and
/// comes from the pinned CA.
fn checked(
    req: &Request,
    url: &str,
    response: pb::EnrollResponse,
    key: KeyPair,
) -> Result<NodeIdentity> {
    let refuse =
        |why: String| anyhow!("the server at {url} answered the enrollment wrongly: {why}");
    if response.node_name != req.name {
        return Err(refuse(format!(
            "it named the node {:?}, not {:?}",
            response.node_name, req.name
        )));
    }
    match CaPin::of_cert_pem(&response.ca_pem) {
        Ok(pin) if pin == req.ca_pin => {}
        Ok(pin) => return Err(refuse(format!("its CA's pin is {pin}, not {}", req.ca_pin))),
        Err(e) => return Err(refuse(e)),
    }
    let assignment: Assignment = response
        .assignment
        .ok_or_else(|| refuse("it gave no assignment".into()))?
        .into();
    Ok(NodeIdentity {
        name: response.node_name,
        servers: req.servers.clone(),
        ca: response.ca_pem,
        cert: response.cert_pem,
        key: key.serialize_pem(),
        assignment,
    })
}

/// Deletes the token file after a successful enrollment; a failure to is
/// only worth a warning (the token is used, or has uses left an admin can revoke).
pub fn delete_token_file(path: &Path) -> Option<String> {
    std::fs::remove_file(path).err().map(|e| {
        format!(
            "warning: could not delete the token file {}: {e}; delete it by hand",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(machine_id: &str, hostname: &str) -> Facts {
        Facts {
            machine_id: machine_id.into(),
            hostname: hostname.into(),
            ..Facts::placeholder()
        }
    }

    #[test]
    fn default_names() {
        let id = "3F2A9C1B0D4E4F5A8B7C6D5E4F3A2B1C\n";
        assert_eq!(
            default_name(&facts(id, "web-1")).unwrap(),
            "3f2a9c1b0d4e-web-1"
        );
        assert_eq!(
            default_name(&facts(id, "Web_1")).unwrap(),
            "3f2a9c1b0d4e-web-1"
        );
        assert_eq!(default_name(&facts("", "web-1")).unwrap(), "web-1");
        assert_eq!(default_name(&facts(id, "")).unwrap(), "3f2a9c1b0d4e");
        let long = default_name(&facts(id, &"h".repeat(100))).unwrap();
        assert_eq!(long.len(), node::MAX_NAME_LEN);
        assert_eq!(default_name(&facts(id, "x-")).unwrap(), "3f2a9c1b0d4e-x");
        let err = default_name(&facts("", "_")).unwrap_err().to_string();
        assert!(err.contains("give --name"), "{err}");
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abcdef.0123456789abcdef\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "abcdef.0123456789abcdef");
        for bad in ["", "\n", &"x".repeat(5000)] {
            std::fs::write(&path, bad).unwrap();
            let err = format!("{:#}", read_token(&path).unwrap_err());
            assert!(err.contains("could not read the join token"), "{err}");
        }
        assert!(delete_token_file(&path).is_none());
        assert!(
            delete_token_file(&path)
                .unwrap()
                .contains("could not delete")
        );
    }
}
