//! The certificate gate: a layer in front of every gRPC service that refuses a
//! call whose connection presented no valid client certificate (none, unusable,
//! or revoked: [`auth::authenticate`]; or a node's previous certificate
//! calling anything but a renewal: [`auth::admit`]), from its path, headers
//! and the connection's TLS state alone. The request body is never polled, so such a caller cannot
//! make the server read or decode a message; the refusal is recorded by
//! [`Refusals`]. An accepted call carries its [`auth::Authenticated`] operator
//! or node to the handler, which checks what it may do (`PERMISSION_DENIED`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tonic::metadata::MetadataMap;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower_layer::Layer;

use crate::auth;
use crate::refusals::{Refusal, Refusals};
use crate::store::Store;

/// gRPC paths (`/package.Service/Method`) a caller without a certificate may
/// reach, for a handler that authenticates its caller another way: a node
/// enrolling, with a join token ([`crate::enroll`]).
pub const EXEMPT_PATHS: &[&str] = &[crate::enroll::ENROLL_PATH];

/// Wraps each gRPC service in a [`Gate`].
#[derive(Clone)]
pub struct GateLayer {
    store: Arc<dyn Store>,
    refusals: Arc<Refusals>,
    exempt: &'static [&'static str],
}

impl GateLayer {
    pub fn new(
        store: Arc<dyn Store>,
        refusals: Arc<Refusals>,
        exempt: &'static [&'static str],
    ) -> Self {
        GateLayer {
            store,
            refusals,
            exempt,
        }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            store: self.store.clone(),
            refusals: self.refusals.clone(),
            exempt: self.exempt,
        }
    }
}

#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    store: Arc<dyn Store>,
    refusals: Arc<Refusals>,
    exempt: &'static [&'static str],
}

impl<S, B> Service<Request<B>> for Gate<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if self.exempt.contains(&req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The service that was polled ready is the one to call; a clone takes
        // its place for the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let store = self.store.clone();
        let refusals = self.refusals.clone();
        Box::pin(async move {
            // The handlers' identification, on the connection's TLS state only.
            let mut extensions = tonic::Extensions::new();
            if let Some(tls) = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() {
                extensions.insert(tls.clone());
            }
            let probe = tonic::Request::from_parts(MetadataMap::new(), extensions, ());
            let path = req.uri().path();
            match auth::authenticate(&probe, store.as_ref())
                .await
                .and_then(|known| auth::admit(known, path))
            {
                Ok(known) => {
                    req.extensions_mut().insert(known);
                    inner.call(req).await
                }
                Err(denied) => {
                    let action = req.uri().path().trim_start_matches('/').to_string();
                    // The body is dropped unread: hyper resets the stream after the refusal.
                    drop(req);
                    refusals
                        .record(Refusal {
                            actor: &denied.actor,
                            action: &action,
                            target: "",
                            status: &denied.status,
                        })
                        .await;
                    Ok(denied.status.into_http())
                }
            }
        })
    }
}
