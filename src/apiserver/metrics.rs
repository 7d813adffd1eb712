//! Prometheus metrics of the API server: request counts and latency histograms per verb,
//! resource and code, and in-flight watches.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a request metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Kubernetes verb (`GET`-style for non-resource requests).
    pub verb: String,
    /// API group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// HTTP status code.
    pub code: String,
}

/// Labels of a latency metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// Kubernetes verb.
    pub verb: String,
    /// API group.
    pub group: String,
    /// Resource.
    pub resource: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0,
        10.0, 30.0, 60.0,
    ])
}

/// The API server's metrics.
pub struct Metrics {
    registry: Registry,
    /// `apiserver_request_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `apiserver_request_duration_seconds`.
    pub latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    /// `apiserver_longrunning_requests` (watches in flight).
    pub watches: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let watches = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, group, version, resource and HTTP response code.",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, group and resource.",
            latency.clone(),
        );
        registry.register(
            "apiserver_longrunning_requests",
            "Number of long-running requests (watches) in flight.",
            watches.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            watches,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                verb: "LIST".into(),
                group: "".into(),
                version: "v1".into(),
                resource: "pods".into(),
                subresource: "".into(),
                code: "200".into(),
            })
            .inc();
        m.latency
            .get_or_create(&LatencyLabels {
                verb: "LIST".into(),
                group: "".into(),
                resource: "pods".into(),
            })
            .observe(0.01);
        let text = m.encode();
        assert!(
            text.contains("apiserver_request_total{verb=\"LIST\""),
            "{text}"
        );
        assert!(
            text.contains("apiserver_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
