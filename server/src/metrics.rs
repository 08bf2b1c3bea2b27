//! Prometheus metrics, served as text on the HTTP listener's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub calls: Family<CallLabels, Counter>,
    pub latency: Family<MethodLabels, Histogram>,
    pub versions_created: Counter,
    /// Role validations running on the blocking pool, and waiting for a turn.
    pub validations_running: Gauge,
    pub validations_waiting: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cairn");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC requests by method and status code",
            calls.clone(),
        );
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to about 6.5 s.
            Histogram::new(exponential_buckets(0.0001, 2.0, 17))
        });
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC request latency by method",
            latency.clone(),
        );
        let versions_created = Counter::default();
        registry.register(
            "role_versions_created",
            "Role versions stored",
            versions_created.clone(),
        );
        let validations_running = Gauge::default();
        registry.register(
            "role_validations_running",
            "Role validations running now",
            validations_running.clone(),
        );
        let validations_waiting = Gauge::default();
        registry.register(
            "role_validations_waiting",
            "Role validations waiting for a turn",
            validations_waiting.clone(),
        );
        Metrics {
            registry,
            calls,
            latency,
            versions_created,
            validations_running,
            validations_waiting,
        }
    }
}

impl Metrics {
    pub fn observe(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        self.calls
            .get_or_create(&CallLabels {
                method,
                code: format!("{code:?}"),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels { method })
            .observe(seconds);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
