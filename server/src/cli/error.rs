//! Errors as the operator sees them: what failed, why, and what to do.

use std::fmt;

use tonic::{Code, Status};

use super::connect::Server;

/// The server answered a call with an error status.
#[derive(Debug)]
pub struct Refused {
    pub status: Status,
    /// The server it came from, for the help line.
    pub url: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = self.status.message();
        match self.status.code() {
            // Role diagnostics: one per line, already complete; print them as they are.
            Code::InvalidArgument => write!(f, "the server refused it:\n{msg}"),
            Code::PermissionDenied => write!(f, "permission denied: {msg}"),
            Code::Unauthenticated => write!(f, "not authenticated: {msg}"),
            Code::NotFound => write!(f, "not found: {msg}"),
            Code::Unavailable => write!(f, "server unavailable: {msg}"),
            Code::DeadlineExceeded => write!(f, "no answer in time: {msg}"),
            Code::FailedPrecondition | Code::AlreadyExists | Code::OutOfRange => {
                write!(f, "refused: {msg}")
            }
            Code::Unknown => write!(f, "the call failed: {msg}"),
            // Client side: the connection went away under the call.
            Code::Cancelled => write!(f, "the connection was closed: {msg}"),
            Code::Internal | Code::DataLoss => write!(f, "the server failed: {msg}"),
            code => write!(f, "the server answered {code:?}: {msg}"),
        }
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The transport error under an `Unavailable`, when there is one.
        std::error::Error::source(&self.status)
    }
}

impl Refused {
    /// What the operator can do about it.
    pub fn help(&self) -> Option<String> {
        let url = &self.url;
        Some(match self.status.code() {
            Code::Unauthenticated => "use an operator credential from `cairn-server operator add` \
                 (pass it with --credentials FILE or CAIRN_CREDENTIALS)"
                .into(),
            Code::PermissionDenied => "ask an admin for a credential with the role named above \
                 (`cairn-server operator add NAME --role ROLE`)"
                .into(),
            // A refused client certificate shows as any of these, depending on
            // when the server's TLS alert arrives.
            Code::Unavailable | Code::Unknown | Code::Cancelled => format!(
                "is cairn-server running at {url}? If it is, it may have refused this credential's \
                 certificate: use one issued by that server (`cairn-server operator add`)"
            ),
            Code::InvalidArgument => "fix the problems above and try again".into(),
            Code::NotFound => {
                "`cairn role list` shows the roles, `cairn role versions NAME` their versions"
                    .into()
            }
            Code::DeadlineExceeded => {
                format!("the server at {url} is slow or overloaded; try again")
            }
            Code::Internal | Code::DataLoss => {
                format!("the server at {url} failed; its log says more")
            }
            _ => return None,
        })
    }
}

/// The connection could not be opened: nothing reached the server.
#[derive(Debug)]
pub struct Unreachable {
    pub url: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not connect to cairn-server at {}", self.url)
    }
}

impl Unreachable {
    pub fn help(&self) -> String {
        format!(
            "is cairn-server running at {}? The URL's host must be one of the server certificate's names \
             (`cairn-server serve --name`). If it is running, it may have refused this credential's \
             certificate, or the credential's CA is not this server's: use one from that server's \
             `cairn-server operator add`",
            self.url
        )
    }
}

/// Turns a call's status into an error naming the operation, with the help
/// the status calls for.
pub trait RpcResult<T> {
    fn rpc(self, server: &Server, what: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T> RpcResult<T> for Result<tonic::Response<T>, Status> {
    fn rpc(self, server: &Server, what: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map(tonic::Response::into_inner).map_err(|status| {
            anyhow::Error::new(Refused {
                status,
                url: server.url.clone(),
            })
            .context(what())
        })
    }
}

/// Prints the whole chain to stderr, then the help line if the error has one.
pub fn print(e: &anyhow::Error) {
    eprint!("{}", render(e));
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
    // anyhow finds both the root error and a context value at any depth.
    if let Some(r) = e.downcast_ref::<Refused>() {
        return r.help();
    }
    e.downcast_ref::<Unreachable>().map(Unreachable::help)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: Status) -> anyhow::Error {
        anyhow::Error::new(Refused {
            status,
            url: "https://cairn.example.org:8443".into(),
        })
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

    #[test]
    fn unreachable_names_the_url() {
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
            .context(Unreachable {
                url: "https://127.0.0.1:1".into(),
            });
        let text = render(&e);
        assert!(
            text.starts_with("error: could not connect to cairn-server at https://127.0.0.1:1\n"),
            "{text}"
        );
        assert!(text.contains("caused by: connection refused"), "{text}");
        assert!(
            text.contains("help: is cairn-server running at https://127.0.0.1:1?"),
            "{text}"
        );
    }
}
