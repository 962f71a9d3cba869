//! The Prometheus exporter every `oprun` process that serves `/metrics`
//! installs: the run durations and queue waits (`*_seconds`) are
//! histograms with buckets that suit runs, which Prometheus aggregates
//! across workers (summaries, the exporter's default, are per-process
//! quantiles that cannot be summed).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Buckets, in seconds, of every `*_seconds` histogram: from a no-op run's
/// milliseconds to an hour-long collection of a big tenant.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// The exporter's builder with those buckets.
pub fn prometheus_builder() -> PrometheusBuilder {
    let builder = PrometheusBuilder::new();
    // Only an empty bucket list is refused, and this one is not empty.
    match builder.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS) {
        Ok(b) => b,
        Err(_) => PrometheusBuilder::new(),
    }
}
