//! The certificate gate: a layer in front of every gRPC service that refuses a
//! call whose connection presented no valid client certificate, from its
//! headers and the connection's TLS state alone. The request body is never
//! polled, so such a caller cannot make the server read or decode a message;
//! the refusal is recorded by [`Refusals`]. What an operator may do is still
//! checked by each handler (`PERMISSION_DENIED`).

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

use crate::auth::{self, Permission};
use crate::refusals::{Refusal, Refusals};

/// gRPC paths (`/package.Service/Method`) a caller without a certificate may
/// reach, for a handler that authenticates its caller another way. None yet.
pub const EXEMPT_PATHS: &[&str] = &[];

/// Wraps each gRPC service in a [`Gate`].
#[derive(Clone)]
pub struct GateLayer {
    refusals: Arc<Refusals>,
    exempt: &'static [&'static str],
}

impl GateLayer {
    pub fn new(refusals: Arc<Refusals>, exempt: &'static [&'static str]) -> Self {
        GateLayer { refusals, exempt }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            refusals: self.refusals.clone(),
            exempt: self.exempt,
        }
    }
}

#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    refusals: Arc<Refusals>,
    exempt: &'static [&'static str],
}

impl<S, B> Service<Request<B>> for Gate<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        if self.exempt.contains(&path) {
            return Box::pin(self.inner.call(req));
        }
        // The same identification the handlers make, on the connection's TLS
        // state only; the lowest permission, so only a missing or unusable
        // certificate is refused here.
        let mut extensions = tonic::Extensions::new();
        if let Some(tls) = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() {
            extensions.insert(tls.clone());
        }
        let probe = tonic::Request::from_parts(MetadataMap::new(), extensions, ());
        let Err(denied) = auth::authorize(&probe, Permission::Read, "call this server") else {
            return Box::pin(self.inner.call(req));
        };
        let action = path.trim_start_matches('/').to_string();
        // The body is dropped unread: hyper resets the stream after the refusal.
        drop(req);
        let refusals = self.refusals.clone();
        Box::pin(async move {
            refusals
                .record(Refusal {
                    actor: &denied.actor,
                    action: &action,
                    target: "",
                    status: &denied.status,
                })
                .await;
            Ok(denied.status.into_http())
        })
    }
}
