//! Names and ids an operator sends (roles, channels, token ids, node names)
//! are checked before anything is looked up, against the real server over
//! real TLS on loopback: a hostile one is refused with `INVALID_ARGUMENT` and
//! a short message that quotes it cut, never echoed whole into a status
//! header; a role is read by any name, and named cut when not found.

mod common;

use cairn_proto::pb;
use common::*;
use tonic::{Code, Status};

/// A refusal quotes at most this much of what was sent.
const SHORT: usize = 300;

#[track_caller]
fn invalid<T: std::fmt::Debug>(result: Result<tonic::Response<T>, Status>, says: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().len() < SHORT,
        "{} bytes: {:.200}",
        status.message().len(),
        status.message()
    );
    assert!(status.message().contains(says), "{}", status.message());
}

#[tokio::test]
async fn names_and_ids_are_checked_before_lookup_and_quoted_cut() {
    let server = Server::start();
    let ops = connect(&server.operator("ada", "admin")).await;
    let huge = "x".repeat(200_000);
    let escape = "web\u{1b}[2J".to_string();

    for role in [&huge, &escape] {
        invalid(
            ops.access()
                .create_token(pb::CreateTokenRequest {
                    role: role.clone(),
                    ..Default::default()
                })
                .await,
            "invalid role name",
        );
        // Read by any name (roles stored before the rule are still read by
        // theirs), and named cut when not found.
        let status = ops
            .roles()
            .versions(pb::VersionsRequest { role: role.clone() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().len() < SHORT, "{:.200}", status.message());
    }
    invalid(
        ops.access()
            .create_token(pb::CreateTokenRequest {
                role: "web".into(),
                channel: huge.clone(),
                ..Default::default()
            })
            .await,
        "invalid channel name",
    );
    invalid(
        ops.roles()
            .promote(pb::PromoteRequest {
                role: "web".into(),
                version: 1,
                channel: huge.clone(),
            })
            .await,
        "invalid channel name",
    );
    for id in [&huge, &escape, &"abcdef.0123456789abcdef".to_string()] {
        invalid(
            ops.access()
                .revoke_token(pb::RevokeTokenRequest { id: id.clone() })
                .await,
            "invalid token id",
        );
    }
    invalid(
        ops.access()
            .revoke_node(pb::RevokeNodeRequest { name: huge.clone() })
            .await,
        "invalid node name",
    );
    for name in [&huge, &escape] {
        invalid(
            ops.fleet()
                .get_node(pb::GetNodeRequest {
                    name: name.clone(),
                    history: 0,
                })
                .await,
            "invalid node name",
        );
    }

    // Well-formed names of nothing stored are still just not found.
    let status = ops
        .access()
        .revoke_token(pb::RevokeTokenRequest {
            id: "abcdef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = ops
        .fleet()
        .get_node(pb::GetNodeRequest {
            name: "web-1".into(),
            history: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}
