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

struct Ops {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

pub fn router(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(Arc::new(Ops { store, metrics }))
}

async fn ready(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    match ops.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage unavailable: {e}\n"),
        ),
    }
}

async fn metrics_text(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ops.metrics.encode(),
    )
}
