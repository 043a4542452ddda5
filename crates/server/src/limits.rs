//! Limits that keep one client from exhausting the server.
//!
//! - Connections: at most `max_connections` at once; one more is closed at
//!   once (before TLS), so a flood of idle sockets cannot take every slot for long:
//!   each must finish its TLS handshake within `handshake_timeout` and send
//!   its request headers within `header_timeout` (slowloris).
//! - Requests: each must be answered within `request_timeout`, body
//!   included, or it gets 408 (a body sent a byte at a time).
//! - Refusals: a token bucket per client IP address, taken from by every
//!   answer 400-499 (but 429) and looked at before any other bucket: an
//!   address whose bucket is empty gets 429 before its request is looked at,
//!   whatever name it claims. Junk credentials cost the sender, not the audit log.
//! - Rates: a token bucket per client. The client is its TLS certificate if
//!   it has one, else the HTTP Basic user if it is a well-formed device serial
//!   (the device a token is for), else its IP address. Factory stations (`/factory/...` and
//!   `simpleenroll?batch=`) get their own, larger bucket. Past the bucket: 429
//!   with Retry-After, before any work or audit write is done. CRLs, OCSP,
//!   /cacerts, /csrattrs, bundles, vouchers and /healthz are reads and not rate limited.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Limits on connections, requests and request rates.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Request headers must arrive within this.
    pub header_timeout: Duration,
    /// A request must be answered (body read, work done) within this.
    pub request_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Requests per second per client (devices, anonymous).
    pub client_rate: f64,
    /// Requests a client may make at once before its rate applies.
    pub client_burst: u32,
    /// Requests per second per factory station.
    pub station_rate: f64,
    /// A station's burst.
    pub station_burst: u32,
    /// Refused requests per second per client address (before any per-name bucket).
    pub refusal_rate: f64,
    /// Refusals an address may burst.
    pub refusal_burst: u32,
    /// How often refusals summed up by the authority are written ([`iotpki_authority::Authority::flush_refusals`]).
    pub refusal_flush: Duration,
    /// A write to the peer may block this long (a peer that does not read).
    pub write_timeout: Duration,
    /// A connection may be idle (nothing read or written) this long.
    pub idle_timeout: Duration,
    /// A connection lives at most this long.
    pub connection_lifetime: Duration,
    /// Requests served on one connection.
    pub max_requests_per_connection: u32,
    /// DTLS handshakes in progress at once (EST over secure CoAP).
    pub udp_max_handshakes: usize,
    /// DTLS sessions one IP address may hold.
    pub udp_sessions_per_address: usize,
    /// Datagrams per second per IP address (0: no limit).
    pub udp_datagram_rate: f64,
    /// Datagrams an address may burst.
    pub udp_datagram_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self::from(&iotpki_authority::config::LimitsConfig::default())
    }
}

impl From<&iotpki_authority::config::LimitsConfig> for Limits {
    fn from(c: &iotpki_authority::config::LimitsConfig) -> Self {
        Self {
            handshake_timeout: Duration::from_secs(c.handshake_timeout_secs),
            header_timeout: Duration::from_secs(c.header_timeout_secs),
            request_timeout: Duration::from_secs(c.request_timeout_secs),
            max_connections: c.max_connections,
            client_rate: c.client_rate_per_s,
            client_burst: c.client_burst,
            station_rate: c.station_rate_per_s,
            station_burst: c.station_burst,
            refusal_rate: c.refusal_rate_per_s,
            refusal_burst: c.refusal_burst,
            refusal_flush: Duration::from_secs(c.refusal_audit_window_secs),
            write_timeout: Duration::from_secs(c.write_timeout_secs),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            connection_lifetime: Duration::from_secs(c.connection_lifetime_secs),
            max_requests_per_connection: c.max_requests_per_connection,
            udp_max_handshakes: c.udp_max_handshakes,
            udp_sessions_per_address: c.udp_sessions_per_address,
            udp_datagram_rate: c.udp_datagram_rate_per_s,
            udp_datagram_burst: c.udp_datagram_burst,
        }
    }
}

/// The limits that new connections and new requests get. A reload
/// (`iotpki serve` on SIGHUP) replaces them: a connection keeps the timeouts
/// it began with, each request is judged by the limits current when it
/// arrives, and the rate limiter keeps its buckets (their tokens) and refills
/// them at the new rates.
#[derive(Clone, Debug)]
pub struct LimitsHandle(Arc<RwLock<Arc<Limits>>>);

impl LimitsHandle {
    /// Start with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(limits))))
    }

    /// The limits in force now.
    pub fn current(&self) -> Arc<Limits> {
        // A poisoned lock still holds a whole Arc: the writer only assigns it.
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// From now on, new connections and new requests get `limits`.
    pub fn replace(&self, limits: Limits) {
        let limits = Arc::new(limits);
        match self.0.write() {
            Ok(mut g) => *g = limits,
            Err(p) => *p.into_inner() = limits,
        }
    }
}

/// The peer's address, put on every request by the connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAddr(pub SocketAddr);

struct Bucket {
    tokens: f64,
    last: Instant,
}

const SHARDS: usize = 16;
/// Buckets kept per shard before full (idle) ones are dropped.
const PRUNE_AT: usize = 8192;

/// Token buckets per client key.
pub(crate) struct RateLimiter {
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
    /// Picks a key's shard: SipHash with this process's random keys, so that
    /// nobody can choose keys that all land in one shard.
    shard_of: RandomState,
    limits: LimitsHandle,
}

impl RateLimiter {
    pub(crate) fn new(limits: LimitsHandle) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Self { shards, shard_of: RandomState::new(), limits }
    }

    /// The limits in force now.
    fn limits(&self) -> Arc<Limits> {
        self.limits.current()
    }

    /// Take one token for `key`; when none is left, how long until one is.
    pub(crate) fn take(&self, key: &str, station: bool) -> Result<(), Duration> {
        let l = self.limits();
        let (rate, burst) = if station {
            (l.station_rate, f64::from(l.station_burst))
        } else {
            (l.client_rate, f64::from(l.client_burst))
        };
        self.bucket(&format!("{}{key}", if station { "station/" } else { "" }), rate, burst, 1.0)
    }

    /// Take one token from the datagram bucket of the address `ip` (EST
    /// over secure CoAP): a datagram past it is dropped unread.
    pub(crate) fn datagram(&self, ip: &str) -> Result<(), Duration> {
        let l = self.limits();
        self.bucket(&format!("udp/{ip}"), l.udp_datagram_rate, f64::from(l.udp_datagram_burst), 1.0)
    }

    /// Whether the address `ip` may still be refused (a token left in its
    /// refusal bucket); when not, how long until it may.
    pub(crate) fn refusals_left(&self, ip: &str) -> Result<(), Duration> {
        let l = self.limits();
        let (rate, burst) = (l.refusal_rate, f64::from(l.refusal_burst));
        self.bucket(&format!("refusals/{ip}"), rate, burst, 0.0)
    }

    /// Count a refusal against the address `ip`.
    pub(crate) fn refused(&self, ip: &str) {
        let l = self.limits();
        let (rate, burst) = (l.refusal_rate, f64::from(l.refusal_burst));
        let _ = self.bucket(&format!("refusals/{ip}"), rate, burst, 1.0);
    }

    /// The bucket `key` (refilled at `rate` up to `burst`): take `cost` if a
    /// whole token is there, else say how long until one is.
    fn bucket(&self, key: &str, rate: f64, burst: f64, cost: f64) -> Result<(), Duration> {
        if rate <= 0.0 {
            return Ok(()); // limiting switched off
        }
        let shard = (self.shard_of.hash_one(key) % SHARDS as u64) as usize;
        let Ok(mut map) = self.shards[shard].lock() else { return Ok(()) };
        let now = Instant::now();
        if map.len() >= PRUNE_AT {
            map.retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let b = map.entry(key.to_string()).or_insert(Bucket { tokens: burst, last: now });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

/// The rate limiter's key for a client certificate (its connection keeps it:
/// [`crate::http::PeerChain::rate_key`]).
pub(crate) fn cert_key(leaf: &[u8]) -> String {
    format!("cert:{}", hex::encode(Sha256::digest(leaf)))
}

/// The rate limiter's key for a request: its certificate's (`cert`, from
/// [`cert_key`]), else its Basic user's when that could be a device serial,
/// else its address.
fn client_key<'a>(req: &Request, cert: Option<&'a str>) -> Cow<'a, str> {
    if let Some(key) = cert {
        return Cow::Borrowed(key);
    }
    let basic_user = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|up| up.split_once(':').map(|(u, _)| u.to_string()))
        // Only a name that could be a device's is a key (and may reach a log line).
        .filter(|u| iotpki_core::name::DeviceSerial::parse(u).is_ok());
    if let Some(u) = basic_user {
        return Cow::Owned(format!("user:{u}"));
    }
    Cow::Owned(ip_key(req))
}

fn ip_key(req: &Request) -> String {
    match req.extensions().get::<PeerAddr>() {
        Some(p) => format!("ip:{}", p.0.ip()),
        None => "ip:unknown".into(),
    }
}

fn too_many(secs: u64, what: &str) -> Response {
    let mut r = (StatusCode::TOO_MANY_REQUESTS, format!("too many {what}; retry after {secs} s\n")).into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Cached reads that write nothing: CRLs, OCSP, the CA certificates and CSR attributes.
fn exempt(path: &str) -> bool {
    path.starts_with("/crl/")
        || path == "/ocsp"
        || path.starts_with("/ocsp/")
        || path == "/healthz"
        || path.ends_with("/cacerts")
        || path.ends_with("/csrattrs")
        || path.starts_with("/.well-known/iotpki/")
}

/// Whether the request takes a station's bucket: a station's endpoint (the
/// gate's `Gate::Station` ones: `/factory/...`, a birth's `simpleenroll?batch=`)
/// called with a client certificate, which a station must present. Decided
/// before the caller is authenticated, so it is no more than what the gate
/// then requires: anyone else there is refused by the gate, and its refusals
/// count against its address. A `batch=` anywhere else takes a client's bucket.
fn is_station(req: &Request, has_certificate: bool) -> bool {
    if !has_certificate {
        return false;
    }
    let path = req.uri().path();
    let birth = path.starts_with("/.well-known/est/")
        && path.ends_with("/simpleenroll")
        && req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv.starts_with("batch=")));
    path.starts_with("/factory/") || birth
}

/// The middleware: rate limit, then answer within the request timeout.
pub(crate) async fn guard(State(limiter): State<Arc<RateLimiter>>, req: Request, next: Next) -> Response {
    let request_timeout = limiter.limits().request_timeout;
    let limited = !exempt(req.uri().path());
    let ip = ip_key(&req);
    if limited {
        // The address first: a refused client cannot start afresh under another name.
        if let Err(wait) = limiter.refusals_left(&ip) {
            tracing::info!(client = %ip, "refusals rate limited");
            return too_many(wait.as_secs().max(1), "refused requests from this address");
        }
        let peer = req.extensions().get::<crate::http::PeerChain>();
        let cert_key = peer.and_then(crate::http::PeerChain::rate_key);
        let station = is_station(&req, cert_key.is_some());
        let key = client_key(&req, cert_key);
        if let Err(wait) = limiter.take(&key, station) {
            tracing::info!(client = %key, "rate limited");
            return too_many(wait.as_secs().max(1), "requests from this client");
        }
    }
    match tokio::time::timeout(request_timeout, next.run(req)).await {
        Ok(r) => {
            if limited && r.status().is_client_error() && r.status() != StatusCode::TOO_MANY_REQUESTS {
                limiter.refused(&ip);
            }
            r
        }
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!("the request was not complete within {} s\n", request_timeout.as_secs()),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_their_rate_and_are_per_client() {
        let l = Limits { client_rate: 10.0, client_burst: 3, ..Limits::default() };
        let r = RateLimiter::new(LimitsHandle::new(l));
        for _ in 0..3 {
            r.take("a", false).unwrap();
        }
        let wait = r.take("a", false).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO, "{wait:?}");
        r.take("b", false).expect("another client has its own bucket");
        r.take("a", true).expect("the station bucket is separate and larger");
    }

    /// A `batch=` query does not buy the station's bucket: only a station's
    /// endpoint called with a client certificate takes it (the gate then
    /// admits only a station there). Behind the middleware, a certificate's
    /// re-enrollments and an anonymous read with `?batch=` get 429 past the
    /// client's burst.
    #[tokio::test]
    async fn a_batch_query_gives_no_one_but_a_station_the_station_bucket() {
        use crate::http::PeerChain;
        use rustls::pki_types::CertificateDer;
        use tower::ServiceExt as _;
        let req = |uri: &str| Request::post(uri).body(axum::body::Body::empty()).unwrap();
        for (uri, cert, station) in [
            ("/.well-known/est/simpleenroll?batch=B1", true, true),
            ("/.well-known/est/arm/simpleenroll?x=1&batch=B1", true, true),
            ("/factory/sync", true, true),
            ("/.well-known/est/simpleenroll?batch=B1", false, false),
            ("/factory/sync", false, false),
            ("/.well-known/est/simplereenroll?batch=x", true, false),
            ("/.well-known/est/simpleenroll", true, false),
            ("/admin/v1/openapi.json?batch=x", false, false),
            ("/console/batches?batch=1", true, false),
        ] {
            assert_eq!(is_station(&req(uri), cert), station, "{uri} with a certificate: {cert}");
        }
        let limits = LimitsHandle::new(Limits { client_rate: 0.001, client_burst: 2, ..Limits::default() });
        let app = axum::Router::new()
            .fallback(|| async { "ok" })
            .layer(axum::middleware::from_fn_with_state(Arc::new(RateLimiter::new(limits)), guard));
        let status = |uri: &'static str, conn: Option<PeerChain>| {
            let mut req = req(uri);
            if let Some(c) = conn {
                req.extensions_mut().insert(c);
            }
            req.extensions_mut().insert(PeerAddr(SocketAddr::from(([192, 0, 2, 7], 1000))));
            let app = app.clone();
            async move { app.oneshot(req).await.unwrap().status() }
        };
        let device = PeerChain::new(vec![CertificateDer::from(vec![3; 40])]);
        for _ in 0..2 {
            assert_eq!(status("/.well-known/est/simplereenroll?batch=x", Some(device.clone())).await, StatusCode::OK);
        }
        let r = status("/.well-known/est/simplereenroll?batch=x", Some(device.clone())).await;
        assert_eq!(r, StatusCode::TOO_MANY_REQUESTS, "a device's re-enrollments are a client's");
        for _ in 0..2 {
            assert_eq!(status("/admin/v1/openapi.json?batch=x", None).await, StatusCode::OK);
        }
        let r = status("/admin/v1/openapi.json?batch=x", None).await;
        assert_eq!(r, StatusCode::TOO_MANY_REQUESTS, "an anonymous client's reads are a client's");
        let station = PeerChain::new(vec![CertificateDer::from(vec![4; 40])]);
        for _ in 0..10 {
            let r = status("/.well-known/est/simpleenroll?batch=B1", Some(station.clone())).await;
            assert_eq!(r, StatusCode::OK, "a station's births take the station's bucket");
        }
    }

    /// Behind the middleware, requests over mutual TLS are limited by their
    /// certificate: on one connection or another, whatever their address,
    /// and apart from another certificate's on the same address.
    #[tokio::test]
    async fn a_certificates_requests_share_one_bucket_across_its_connections() {
        use crate::http::PeerChain;
        use rustls::pki_types::CertificateDer;
        use tower::ServiceExt as _;
        let limits = LimitsHandle::new(Limits { client_rate: 0.001, client_burst: 2, ..Limits::default() });
        let app = axum::Router::new()
            .route("/x", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(Arc::new(RateLimiter::new(limits)), guard));
        let status = |conn: &PeerChain, port: u16| {
            let mut req = Request::get("/x").body(axum::body::Body::empty()).unwrap();
            req.extensions_mut().insert(conn.clone());
            req.extensions_mut().insert(PeerAddr(SocketAddr::from(([192, 0, 2, 1], port))));
            let app = app.clone();
            async move { app.oneshot(req).await.unwrap().status() }
        };
        let cert = |b: u8| PeerChain::new(vec![CertificateDer::from(vec![b; 40])]);
        let (a1, a2, b) = (cert(1), cert(1), cert(2));
        assert_eq!(status(&a1, 1000).await, StatusCode::OK);
        assert_eq!(status(&a1, 1000).await, StatusCode::OK);
        assert_eq!(status(&a1, 1000).await, StatusCode::TOO_MANY_REQUESTS, "over its burst on its connection");
        assert_eq!(status(&a2, 1001).await, StatusCode::TOO_MANY_REQUESTS, "a new connection is the same client");
        assert_eq!(status(&b, 1000).await, StatusCode::OK, "another certificate has its own bucket");
    }

    /// A client certificate is a credential anyone can make (the TLS layer takes
    /// any chain whose key signs the handshake): one made afresh for every
    /// request gets its own bucket, but its refusals still count against its
    /// address, which is then refused before anything else.
    #[tokio::test]
    async fn certificates_made_afresh_for_each_request_do_not_get_past_the_address_refusal_limit() {
        use crate::http::PeerChain;
        use rustls::pki_types::CertificateDer;
        use tower::ServiceExt as _;
        let limits =
            Limits { client_rate: 0.001, client_burst: 1, refusal_rate: 0.001, refusal_burst: 3, ..Limits::default() };
        let app = axum::Router::new()
            .route("/x", axum::routing::get(|| async { (StatusCode::UNAUTHORIZED, "unknown certificate") }))
            .layer(axum::middleware::from_fn_with_state(Arc::new(RateLimiter::new(LimitsHandle::new(limits))), guard));
        let send = |i: u8, addr: [u8; 4]| {
            let mut req = Request::get("/x").body(axum::body::Body::empty()).unwrap();
            req.extensions_mut().insert(PeerChain::new(vec![CertificateDer::from(vec![i; 40])]));
            req.extensions_mut().insert(PeerAddr(SocketAddr::from((addr, 4000 + u16::from(i)))));
            let app = app.clone();
            async move {
                let r = app.oneshot(req).await.unwrap();
                let status = r.status();
                let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let attacker = [198, 51, 100, 7];
        for i in 0..3 {
            assert_eq!(send(i, attacker).await.0, StatusCode::UNAUTHORIZED, "certificate {i}");
        }
        for i in 3..10 {
            let (status, body) = send(i, attacker).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "certificate {i}: {body}");
            assert!(body.contains("refused requests from this address"), "{body}");
        }
        assert_eq!(send(10, [198, 51, 100, 8]).await.0, StatusCode::UNAUTHORIZED, "another address is not held back");
    }

    #[test]
    fn idle_buckets_are_pruned() {
        let r = RateLimiter::new(LimitsHandle::new(Limits { client_rate: 1e9, client_burst: 1, ..Limits::default() }));
        for i in 0..(PRUNE_AT * SHARDS * 2) {
            r.take(&format!("k{i}"), false).unwrap();
        }
        let total: usize = r.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= PRUNE_AT * SHARDS, "{total}");
    }

    #[test]
    fn replaced_limits_apply_to_the_next_take_and_buckets_keep_their_tokens() {
        let handle = LimitsHandle::new(Limits { client_rate: 1000.0, client_burst: 1000, ..Limits::default() });
        let r = RateLimiter::new(handle.clone());
        for _ in 0..5 {
            r.take("a", false).unwrap();
        }
        // Tight now: "a" keeps its bucket (capped at the new burst) and refills at the new rate.
        handle.replace(Limits { client_rate: 0.01, client_burst: 2, ..Limits::default() });
        r.take("a", false).unwrap();
        r.take("a", false).unwrap();
        let wait = r.take("a", false).unwrap_err();
        assert!(wait > Duration::from_secs(50), "refilled at the new rate: {wait:?}");
        // Generous again: the same bucket, refilled at the new rate at once.
        handle.replace(Limits { client_rate: 1e9, client_burst: 3, ..Limits::default() });
        r.take("a", false).expect("the new rate applies to the bucket");
    }
}
