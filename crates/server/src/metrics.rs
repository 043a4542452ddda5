//! `GET /metrics`: the Prometheus text format (0.0.4), on the plain-HTTP
//! listener, or only on `[server] metrics_listen` when that is set.
//!
//! A scrape reads counters (atomics), two histograms of the store's group
//! commit, one small query (the store's schema version: the health probe),
//! the age of each CRL this node serves (from its cache), and the count of
//! certificates expiring within 7 and 30 days, which is read from the store
//! (two indexed counts) at most once a minute
//! ([`iotpki_authority::metrics::EXPIRING_TTL`]). Nothing is done per
//! certificate. The route takes no parameters: a query string is refused (400).
//!
//! Every request on every HTTP listener is timed here (`track`), by its
//! route template (never the raw path, which a client chooses) and status class.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use iotpki_authority::Authority;
use iotpki_metrics::Text;

use crate::http::{blocking, ApiError};

/// The route of the scrape.
pub const METRICS_PATH: &str = "/metrics";

/// Time the request and count it under its route template and status class.
pub(crate) async fn track(State(a): State<Arc<Authority>>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    // The template the router matched: a closed set. Unmatched paths share one label.
    // (An Arc clone: no allocation per request.)
    let route = req.extensions().get::<MatchedPath>().cloned();
    let r = next.run(req).await;
    let code = match r.status().as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    };
    a.metrics()
        .http_requests
        .with(&[route.as_ref().map_or("unmatched", MatchedPath::as_str), code])
        .observe_duration(started.elapsed());
    r
}

/// `GET /metrics`.
pub(crate) async fn scrape(State(a): State<Arc<Authority>>, req: Request) -> Result<Response, ApiError> {
    if req.uri().query().is_some() {
        return Err(iotpki_authority::AuthorityError::malformed(
            "/metrics takes no parameters: scrape it without a query string".into(),
        )
        .into());
    }
    let body = blocking(move || render(&a)).await?;
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(iotpki_metrics::CONTENT_TYPE));
    Ok(r)
}

/// Every metric, in the text format.
pub fn render(a: &Authority) -> String {
    let m = a.metrics();
    let mut t = Text::new();
    t.counters("iotpki_issued_total", "Certificates issued, by path (the audit action).", &m.issued);
    t.counters(
        "iotpki_refused_total",
        "Requests refused, by path (the endpoint's audit action) and reason (the refusal's family).",
        &m.refused,
    );
    t.histograms(
        "iotpki_http_request_duration_seconds",
        "HTTP request latency, by route template and status class.",
        &m.http_requests,
    );
    let open: Vec<(String, f64)> =
        m.open_connections.series().into_iter().map(|(l, g)| (l.join(","), g.get() as f64)).collect();
    t.gauges("iotpki_open_connections", "Connections open now (coaps: DTLS sessions), by listener.", "listener", &open);
    t.counters(
        "iotpki_connections_accepted_total",
        "Connections accepted, by listener: TCP connections (those closed at once at the connection limit included); coaps: DTLS handshakes completed.",
        &m.accepted_connections,
    );

    let store = a.store();
    let stats = store.writer_stats();
    t.histogram(
        "iotpki_store_commit_batch_size",
        "Write operations committed per transaction by the store's group commit.",
        &stats.batch_size,
    );
    t.histogram(
        "iotpki_store_commit_seconds",
        "Time to commit one group-commit transaction (its audit rows and COMMIT: the fsync or WAL flush).",
        &stats.commit_seconds,
    );
    let probe = store.probe();
    if let Err(e) = &probe {
        tracing::warn!(error = %e, "metrics: the store's health probe failed");
    }
    t.gauge("iotpki_store_up", "1 when the store answered a read now, else 0.", if probe.is_ok() { 1.0 } else { 0.0 });
    // No sample when the probe failed: the version is unknown, not 0.
    let version: Vec<(Vec<&str>, f64)> = probe.iter().map(|v| (vec![], *v as f64)).collect();
    t.gauges_by("iotpki_store_schema_version", "The store's schema version (its last migration).", &[], &version);

    let ages: Vec<(String, f64)> = a.crl_ages().into_iter().map(|(ca, s)| (ca, s as f64)).collect();
    t.gauges(
        "iotpki_crl_age_seconds",
        "Seconds since thisUpdate of the oldest CRL this node serves, per CA (none before a CRL is made).",
        "ca",
        &ages,
    );
    t.counter("iotpki_ocsp_cache_hits_total", "OCSP answers served from the cache.", m.ocsp_cache_hits.get());
    t.counter(
        "iotpki_ocsp_cache_misses_total",
        "OCSP answers signed anew (not cached, stale, or not cacheable).",
        m.ocsp_cache_misses.get(),
    );
    let (entries, bytes) = a.ocsp_cache_size();
    t.gauge("iotpki_ocsp_cache_entries", "OCSP answers held in the cache.", entries as f64);
    t.gauge("iotpki_ocsp_cache_bytes", "Bytes held in the OCSP cache.", bytes as f64);

    let expiring = match m.expiring(store.as_ref(), a.clock().now()) {
        Ok(e) => vec![("7d".to_string(), e.within_7d as f64), ("30d".to_string(), e.within_30d as f64)],
        Err(e) => {
            tracing::warn!(error = %e, "metrics: could not count the certificates expiring soon");
            Vec::new()
        }
    };
    t.gauges(
        "iotpki_certificates_expiring",
        "Current certificates (good, not renewed) whose notAfter is within 7 or 30 days (counted at most once a minute).",
        "within",
        &expiring,
    );
    t.finish()
}
