//! Prometheus metrics of the signer. Labels are method names, status codes, formats and policy
//! rule ids: never keys, sessions or anything secret.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shared::musig::SignatureFormat;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Format {
    format: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rule {
    rule: String,
}

/// The signer's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<MethodCode, Counter>,
    latency: Family<Method, Histogram>,
    nonces_issued: Family<Format, Counter>,
    partial_signatures: Family<Format, Counter>,
    refusals: Family<Rule, Counter>,
    nonces_held: Gauge,
    journal_seq: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register everything.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("musig2_signer");
        let requests = Family::<MethodCode, Counter>::default();
        let latency = Family::<Method, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0])
        });
        let nonces_issued = Family::<Format, Counter>::default();
        let partial_signatures = Family::<Format, Counter>::default();
        let refusals = Family::<Rule, Counter>::default();
        let nonces_held = Gauge::default();
        let journal_seq = Gauge::default();
        registry.register(
            "requests",
            "gRPC requests by method and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "gRPC handling time by method",
            latency.clone(),
        );
        registry.register(
            "nonces_issued",
            "Nonces issued by format",
            nonces_issued.clone(),
        );
        registry.register(
            "partial_signatures",
            "Partial signatures produced by format",
            partial_signatures.clone(),
        );
        registry.register(
            "policy_refusals",
            "Policy refusals by rule id",
            refusals.clone(),
        );
        registry.register(
            "nonces_held",
            "Nonce slots in memory (pending and completed)",
            nonces_held.clone(),
        );
        registry.register(
            "journal_sequence",
            "Sequence number of the last audit journal record",
            journal_seq.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
            nonces_issued,
            partial_signatures,
            refusals,
            nonces_held,
            journal_seq,
        }
    }

    pub(crate) fn request(&self, method: &str, code: &str, took: Duration) {
        self.requests
            .get_or_create(&MethodCode {
                method: method.into(),
                code: code.into(),
            })
            .inc();
        self.latency
            .get_or_create(&Method {
                method: method.into(),
            })
            .observe(took.as_secs_f64());
    }
    pub(crate) fn nonce_issued(&self, f: SignatureFormat, held: usize) {
        self.nonces_issued
            .get_or_create(&Format {
                format: f.as_str().into(),
            })
            .inc();
        self.nonces_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }
    pub(crate) fn partial_signed(&self, f: SignatureFormat) {
        self.partial_signatures
            .get_or_create(&Format {
                format: f.as_str().into(),
            })
            .inc();
    }
    pub(crate) fn refusal(&self, rule: &str) {
        self.refusals
            .get_or_create(&Rule { rule: rule.into() })
            .inc();
    }
    pub(crate) fn journal_seq(&self, seq: u64) {
        self.journal_seq.set(i64::try_from(seq).unwrap_or(i64::MAX));
    }

    /// OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
