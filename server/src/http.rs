//! The operations listener: `/healthz` (the process answers), `/readyz` (the
//! storage answers too) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::store::Store;

struct Ops<S> {
    store: Arc<S>,
    metrics: Arc<Metrics>,
}

pub fn router<S: Store>(store: Arc<S>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready::<S>))
        .route("/metrics", get(metrics_text::<S>))
        .with_state(Arc::new(Ops { store, metrics }))
}

async fn ready<S: Store>(State(ops): State<Arc<Ops<S>>>) -> impl IntoResponse {
    match ops.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage unavailable: {e}\n"),
        ),
    }
}

async fn metrics_text<S: Store>(State(ops): State<Arc<Ops<S>>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ops.metrics.encode(),
    )
}
