//! The `Dashboard` gRPC service: `cairn ui login` asks it for a one-time
//! sign-in link ([`super::session`]), with the operator's certificate like
//! every call (the gate checked it; any operator role may sign in).

use cairn_proto::pb;
use tonic::{Request, Response, Status};

use super::session::{LINK_LIFETIME, new_secret, sha256};
use crate::auth::{self, Permission};
use crate::service::{Api, rfc3339, store_status};
use crate::store::{NewSignInLink, now_micros};

#[derive(Clone)]
pub struct DashboardApi {
    api: Api,
    /// `https://HOST:PORT` of the dashboard, `None` when the server serves none.
    base_url: Option<String>,
}

impl DashboardApi {
    pub fn new(api: Api, base_url: Option<String>) -> Self {
        DashboardApi { api, base_url }
    }
}

#[tonic::async_trait]
impl pb::dashboard_server::Dashboard for DashboardApi {
    async fn sign_in_link(
        &self,
        req: Request<pb::SignInLinkRequest>,
    ) -> Result<Response<pb::SignInLinkResponse>, Status> {
        self.api
            .observed("sign_in_link", async {
                let actor = self
                    .api
                    .authorize(
                        &req,
                        Permission::Read,
                        "ui link",
                        "",
                        "sign in to the dashboard",
                    )
                    .await?;
                let Some(base) = &self.base_url else {
                    return Err(Status::failed_precondition(
                        "this server serves no dashboard: start cairn-server with --ui ADDRESS",
                    ));
                };
                // The session is bound to the certificate the link was asked with.
                let fingerprint = req
                    .peer_certs()
                    .and_then(|certs| certs.first().map(|c| auth::fingerprint(c.as_ref())))
                    .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
                let secret = new_secret()
                    .map_err(|e| Status::internal(format!("could not make a sign-in link: {e}")))?;
                let expires_at = now_micros() + LINK_LIFETIME.as_micros() as i64;
                self.api
                    .store
                    .create_sign_in_link(
                        NewSignInLink {
                            secret_sha256: sha256(&secret),
                            operator: actor.name.clone(),
                            role: actor.role.clone(),
                            fingerprint,
                            expires_at,
                        },
                        &actor,
                    )
                    .await
                    .map_err(store_status)?;
                Ok(pb::SignInLinkResponse {
                    url: format!("{base}/sign-in/{secret}"),
                    expires_at: rfc3339(expires_at),
                })
            })
            .await
    }
}
