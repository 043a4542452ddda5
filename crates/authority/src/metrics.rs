//! What the authority counts for `/metrics`: issuances by path, refusals by
//! path and reason, OCSP cache hits and misses, and (filled by the server in
//! front of it, which has no other shared place per authority) request
//! latencies by route and open connections by listener.
//!
//! Every label value comes from a closed set: a path is the audit action the
//! authority records (`enroll`, `birth`, `commission`, `reenroll`,
//! `server.issue`, ...), a reason a [`Refusal`] family ([`Refusal::family`]);
//! never a serial, a name or a message. Each family is capped besides.
//!
//! The certificates expiring soon are a store count read at most once per
//! [`EXPIRING_TTL`], so a scrape never costs more than two indexed counts.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use iotpki_metrics::{Counter, Family, Gauge, Histogram};
use iotpki_store::Store;

use crate::error::Refusal;
use crate::AuthorityError;

/// How long a count of the certificates expiring soon is served before it is read again.
pub const EXPIRING_TTL: Duration = Duration::from_secs(60);

/// Most series per family (a bug that put free text in a label is counted under `other` past it).
const MAX_SERIES: usize = 256;

/// The authority's counters (one set per [`crate::Authority`]).
#[derive(Debug)]
pub struct Metrics {
    /// Certificates issued, by `path` (the audit action).
    pub issued: Family<Counter>,
    /// Refusals, by `path` (the refused endpoint's audit action without its
    /// `refuse.` prefix) and `reason` (the refusal's family).
    pub refused: Family<Counter>,
    /// OCSP answers served from the cache.
    pub ocsp_cache_hits: Counter,
    /// OCSP answers signed anew (not in the cache, stale, or not cacheable: a nonce, several certificates).
    pub ocsp_cache_misses: Counter,
    /// HTTP request latency, by `route` (the route template) and `code` (`2xx`, `4xx`, ...): the server's.
    pub http_requests: Family<Histogram>,
    /// Open connections, by `listener` (`tls`, `http`, `metrics`; `coaps`: DTLS
    /// sessions): the server's.
    pub open_connections: Family<Gauge>,
    /// Connections accepted since the start, by `listener` (`tls`, `http`,
    /// `metrics`: TCP connections, those closed at once at the connection limit
    /// included; `coaps`: DTLS handshakes completed): the server's.
    pub accepted_connections: Family<Counter>,
    expiring: Mutex<Option<(Instant, Expiring)>>,
}

/// Current certificates expiring soon, as counted at `at` (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiring {
    /// Within 7 days.
    pub within_7d: u64,
    /// Within 30 days.
    pub within_30d: u64,
    /// When counted.
    pub at: i64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            issued: Family::new(&["path"], MAX_SERIES, Counter::new),
            refused: Family::new(&["path", "reason"], MAX_SERIES, Counter::new),
            ocsp_cache_hits: Counter::new(),
            ocsp_cache_misses: Counter::new(),
            http_requests: Family::new(&["route", "code"], MAX_SERIES, || Histogram::new(iotpki_metrics::SECONDS)),
            open_connections: Family::new(&["listener"], 16, Gauge::new),
            accepted_connections: Family::new(&["listener"], 16, Counter::new),
            expiring: Mutex::new(None),
        }
    }
}

impl Metrics {
    /// Count a refusal of `path` (a no-op for an error that is not a refusal).
    pub(crate) fn refusal(&self, path: &str, e: &AuthorityError) {
        if let Some(r) = e.refusal() {
            self.refused.with(&[path, r.family()]).inc();
        }
    }

    /// The certificates expiring within 7 and 30 days of `now`, read from
    /// `store` at most once per [`EXPIRING_TTL`].
    pub fn expiring(&self, store: &dyn Store, now: i64) -> Result<Expiring, AuthorityError> {
        let mut cached = self.expiring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((t, e)) = *cached {
            if t.elapsed() < EXPIRING_TTL {
                return Ok(e);
            }
        }
        const DAY: i64 = 86_400;
        let e = Expiring {
            within_7d: store.count_expiring(now, now.saturating_add(7 * DAY))?,
            within_30d: store.count_expiring(now, now.saturating_add(30 * DAY))?,
            at: now,
        };
        *cached = Some((Instant::now(), e));
        Ok(e)
    }
}

impl Refusal {
    /// The family's name, for a metric's label: one word per variant.
    pub fn family(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Request(_) => "request",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Token(_) => "token",
            Self::Client(_) => "client",
            Self::Station(_) => "station",
            Self::Batch(_) => "batch",
            Self::Renewal(_) => "renewal",
            Self::Certificate(_) => "certificate",
            Self::KeyPolicy(_) => "key_policy",
            Self::Ownership(_) => "ownership",
            Self::Key(_) => "key",
            Self::Conflict(_) => "conflict",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
        }
    }
}
