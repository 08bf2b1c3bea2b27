//! Errors as the operator sees them: what failed, why, and what to do.
//!
//! Reaching the server and its refusals are [`cairn_proto::client::Error`]s,
//! which carry the help every caller shares; this adds what only an operator
//! can do (which credential, which role, which command).

use cairn_proto::bundle::BundleError;
use cairn_proto::client::{self, Connection, Refusal};
use cairn_proto::terminal;
use tonic::{Code, Status};

/// The server found the pushed role invalid; holds its diagnostics as printed.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.trim_end())]
pub struct RoleRejected(pub String);

/// Whether `e` is a refusal of the operator's input (the role, a path in
/// it, its size, the message), not a failure to reach or use the server.
pub fn is_invalid_input(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<RoleRejected>()
            || cause
                .downcast_ref::<BundleError>()
                .is_some_and(|b| !matches!(b, BundleError::Walk { .. } | BundleError::Read { .. }))
            || matches!(
                cause.downcast_ref::<client::Error>(),
                Some(client::Error::Refused(r)) if r.status.code() == Code::InvalidArgument
            )
    })
}

/// Turns a call's status into an error naming the operation, with the help
/// the status calls for.
pub trait RpcResult<T> {
    fn rpc(self, conn: &Connection, what: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T> RpcResult<T> for Result<tonic::Response<T>, Status> {
    fn rpc(self, conn: &Connection, what: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.refused_by(conn)
            .map_err(|e| anyhow::Error::new(e).context(what()))
    }
}

/// Prints the whole chain to stderr, then the help line if the error has one.
/// The server's messages and the role's diagnostics quote what others
/// wrote: their control characters are shown, not sent to the terminal.
pub fn print(e: &anyhow::Error) {
    eprint!("{}", terminal::escape_lines(&render(e)));
}

/// The text [`print`] writes.
pub fn render(e: &anyhow::Error) -> String {
    let mut out = format!("error: {e}\n");
    // Transport errors often repeat their source's message; say it once.
    let mut last = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if text != last {
            out.push_str(&format!("  caused by: {text}\n"));
        }
        last = text;
    }
    if let Some(help) = help(e) {
        out.push_str(&format!("help: {help}\n"));
    }
    out
}

fn help(e: &anyhow::Error) -> Option<String> {
    if e.chain().any(|c| c.is::<RoleRejected>()) {
        return Some("fix the problems above and try again".into());
    }
    // anyhow finds both the root error and a context value at any depth.
    let e = e.downcast_ref::<client::Error>()?;
    if let client::Error::Refused(r) = e
        && let Some(help) = operator_help(r.status.code(), r.status.message())
    {
        return Some(help.to_string());
    }
    e.help()
}

/// What an operator can do about a refusal whose remedy depends on the caller
/// (and, for something not found, on what it was).
fn operator_help(code: Code, message: &str) -> Option<&'static str> {
    Some(match code {
        Code::Unauthenticated => {
            "use an operator credential from `cairn-server operator add` \
             (pass it with --credentials FILE or CAIRN_CREDENTIALS)"
        }
        Code::PermissionDenied => {
            "ask an admin for a credential with the role named above \
             (`cairn-server operator add NAME --role ROLE`)"
        }
        Code::InvalidArgument => "fix the problems above and try again",
        Code::NotFound if message.starts_with("token ") => {
            "`cairn token list` shows the join tokens"
        }
        Code::NotFound if message.starts_with("node ") => return None,
        Code::NotFound => {
            "`cairn role list` shows the roles, `cairn role versions NAME` their versions"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: Status) -> anyhow::Error {
        anyhow::Error::new(client::Error::Refused(client::Refused {
            status,
            url: "https://cairn.example.org:8443".into(),
        }))
        .context("could not push role web")
    }

    #[test]
    fn diagnostics_are_printed_verbatim() {
        let diags = "role.toml:12:1: [[file]] \"/etc/x\", field `mode`: invalid mode\n  help: e.g. \"0644\"\n\
                     templates/a.hbs:3:5: unknown variable `vars.prot`";
        let text = render(&refused(Status::invalid_argument(diags)));
        assert!(
            text.starts_with("error: could not push role web\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("the server refused it:\n{diags}\n")),
            "{text}"
        );
        assert!(
            text.ends_with("help: fix the problems above and try again\n"),
            "{text}"
        );
    }

    #[test]
    fn each_code_says_what_to_do() {
        let cases = [
            (
                Status::unauthenticated("no client certificate"),
                "cairn-server operator add",
            ),
            (
                Status::permission_denied(
                    "operator bob is an auditor and may not push roles; that needs the publisher role or above",
                ),
                "--role ROLE",
            ),
            (
                Status::unavailable("connection reset"),
                "running at https://cairn.example.org:8443",
            ),
            (Status::not_found("role webb not found"), "cairn role list"),
        ];
        for (status, hint) in cases {
            let msg = status.message().to_string();
            let text = render(&refused(status));
            assert!(text.contains(&msg), "{text}");
            let help = text.lines().last().unwrap();
            assert!(help.starts_with("help: ") && help.contains(hint), "{text}");
        }
        // A refusal the CLI has nothing to add to gets no help line.
        let text = render(&refused(Status::failed_precondition(
            "channel production has no promotion to undo",
        )));
        assert!(!text.contains("help:"), "{text}");
        assert!(
            text.contains("caused by: refused: channel production has no promotion"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn unreachable_names_the_url() {
        // Nothing listens on port 1 of loopback.
        let e = client::connect("https://127.0.0.1:1", "", None)
            .await
            .map_err(anyhow::Error::new)
            .unwrap_err();
        let text = render(&e);
        assert!(
            text.starts_with("error: could not connect to cairn-server at https://127.0.0.1:1\n"),
            "{text}"
        );
        assert!(text.contains("caused by: "), "{text}");
        assert!(
            text.contains("help: is cairn-server running at https://127.0.0.1:1?"),
            "{text}"
        );
    }
}
