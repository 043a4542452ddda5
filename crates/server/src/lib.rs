//! iotpki server: EST (RFC 7030) over TLS 1.3.
//!
//! The server only translates HTTP into [`Authority`] calls and back. TLS is
//! 1.3 only. Client certificates are *optional* at the TLS layer and judged
//! per request by the authority:
//!
//! - At the handshake, rustls checks the client's CertificateVerify signature
//!   against the leaf's public key (proof of possession). The chain itself is
//!   not judged there, so that a certificate from an unknown CA, an expired
//!   or a revoked one gets an HTTP 403 with a reason instead of a bare TLS alert.
//! - Endpoints that need a certificate then run full path validation to our
//!   root and check the store's record, once per request, before the body is
//!   read ([`Authority::admit`]); the handler gets the caller found. One
//!   exception: a station's births on one connection are admitted once, at
//!   the first, and each birth's own transaction judges again what may have
//!   changed since (its certificate revoked, its key blocked, the station
//!   revoked); the first refusal drops that admission
//!   (`gate::Admission::admit_for`).
//! - The admin API (`/admin/v1/`, see the `admin` module) needs an admin
//!   certificate ([`Authority::admin`]), but for its OpenAPI document
//!   (`/admin/v1/openapi.json`, no fleet data), which any TLS client may read.

#![forbid(unsafe_code)]

mod admin;
mod case;
pub mod coaps;
mod console;
pub mod events;
mod gate;
mod http;
mod io;
mod limits;
pub mod metrics;
mod sched;
pub use sched::{lower_blocking_threads, queue_station_births, set_blocking_threads};
mod tls;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use iotpki_metrics::{Counter, Gauge};
use std::sync::Arc;
use std::time::Duration;

use iotpki_authority::Authority;
use tokio::net::TcpListener;

pub use admin::openapi_json;
pub use http::{metrics_router, public_router, router};
pub use limits::{Limits, LimitsHandle};
pub use tls::{server_config, server_config_with};

/// The TLS configuration that new connections get. A reload (`iotpki serve`
/// on SIGHUP) replaces it; a connection keeps the one it began with, so
/// kept-alive connections are not dropped.
#[derive(Clone, Debug)]
pub struct TlsConfigs(Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>);

impl TlsConfigs {
    /// Start with `cfg`.
    pub fn new(cfg: Arc<rustls::ServerConfig>) -> Self {
        Self(Arc::new(std::sync::RwLock::new(cfg)))
    }

    /// The configuration a connection accepted now gets.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        // A poisoned lock still holds a whole Arc: the writer only assigns it.
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// From now on, new connections get `cfg`.
    pub fn replace(&self, cfg: Arc<rustls::ServerConfig>) {
        match self.0.write() {
            Ok(mut g) => *g = cfg,
            Err(p) => *p.into_inner() = cfg,
        }
    }
}

/// Serve EST on `listener` until `shutdown` completes.
pub async fn serve(
    authority: Arc<Authority>,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let tls = TlsConfigs::new(server_config(&authority).map_err(std::io::Error::other)?);
    serve_with(authority, listener, LimitsHandle::new(limits), tls, shutdown).await
}

/// [`serve`], with the TLS configuration taken from `tls` for each new
/// connection and the limits from `limits` for each new connection and
/// request (so that both can be replaced while serving).
pub async fn serve_with(
    authority: Arc<Authority>,
    listener: TcpListener,
    limits: LimitsHandle,
    tls: TlsConfigs,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let limiter = Arc::new(limits::RateLimiter::new(limits.clone()));
    let refresher = tokio::spawn(refresh_crls(authority.clone()));
    // The window is the authority's (set when it was opened): not reloaded.
    let flusher = tokio::spawn(flush_refusals(authority.clone(), limits.current().refusal_flush));
    let app = router(authority.clone()).layer(axum::middleware::from_fn_with_state(limiter, limits::guard));
    let _stop_refreshing = AbortOnDrop(refresher);
    let _stop_flushing = AbortOnDrop(flusher);
    let max = limits.clone();
    let counted = ListenerMetrics::of(&authority, "tls");
    let r = accept_loop(
        listener,
        counted,
        move || max.current().max_connections,
        shutdown,
        move |tcp, peer| {
            let (acceptor, app, limits) =
                (tokio_rustls::TlsAcceptor::from(tls.current()), app.clone(), limits.current());
            async move { http::serve_connection(acceptor, tcp, peer, app, &limits).await }
        },
    )
    .await;
    // Refusals summed up in the current window are written before the end.
    if let Err(e) = http::blocking(move || authority.flush_refusals()).await {
        tracing::error!(error = %e, "could not write the refusals summed up");
    }
    r
}

/// Write the refusals the authority summed up, every `every`.
async fn flush_refusals(authority: Arc<Authority>, every: Duration) {
    loop {
        tokio::time::sleep(every.max(Duration::from_secs(1))).await;
        let a = authority.clone();
        if let Err(e) = http::blocking(move || a.flush_refusals()).await {
            tracing::error!(error = %e, "could not write the refusals summed up");
        }
    }
}

/// Serve the public routes ([`public_router`]: CRLs, OCSP) over plain HTTP
/// on `listener` until `shutdown` completes, with the same header timeout as on TLS.
pub async fn serve_http(
    authority: Arc<Authority>,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_http_with(authority, listener, LimitsHandle::new(limits), shutdown).await
}

/// [`serve_http`], with the limits taken from `limits` for each new
/// connection and request (so that they can be replaced while serving).
pub async fn serve_http_with(
    authority: Arc<Authority>,
    listener: TcpListener,
    limits: LimitsHandle,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let counted = ListenerMetrics::of(&authority, "http");
    serve_plain(public_router(authority), counted, listener, limits, shutdown).await
}

/// Serve `GET /metrics` alone over plain HTTP on `listener` (`[server]
/// metrics_listen`) until `shutdown` completes, with the same limits as the
/// other listeners (from `limits`, replaceable while serving).
pub async fn serve_metrics_with(
    authority: Arc<Authority>,
    listener: TcpListener,
    limits: LimitsHandle,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let counted = ListenerMetrics::of(&authority, "metrics");
    serve_plain(metrics_router(authority), counted, listener, limits, shutdown).await
}

/// Serve `app` over plain HTTP on `listener` until `shutdown`, rate-limited
/// and capped by `limits`, its connections counted in `counted`.
async fn serve_plain(
    app: axum::Router,
    counted: ListenerMetrics,
    listener: TcpListener,
    limits: LimitsHandle,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let limiter = Arc::new(limits::RateLimiter::new(limits.clone()));
    let app = app.layer(axum::middleware::from_fn_with_state(limiter, limits::guard));
    let max = limits.clone();
    accept_loop(
        listener,
        counted,
        move || max.current().max_connections,
        shutdown,
        move |tcp, peer| {
            let (app, limits) = (app.clone(), limits.current());
            async move { http::serve_plain_connection(tcp, peer, app, &limits).await }
        },
    )
    .await
}

type ConnResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// How often the CRLs are looked at: each is made again once half its validity
/// has passed (or after a revocation), whether or not anyone asked for it.
const CRL_REFRESH: Duration = Duration::from_secs(600);

/// Keep every issuing CA's CRL, and every CRL shard asked for, fresh on a
/// schedule, not only on request.
async fn refresh_crls(authority: Arc<Authority>) {
    loop {
        // First after a while: a CRL is made on the first request anyway.
        tokio::time::sleep(CRL_REFRESH).await;
        let a = authority.clone();
        let refreshed = http::blocking(move || {
            for s in a.crl_scopes() {
                if let Err(e) = a.crl_scoped(&s.ca, s.shard) {
                    tracing::warn!(ca = %s.ca, shard = ?s.shard, error = %e, "could not refresh the CRL");
                }
            }
        })
        .await;
        if let Err(e) = refreshed {
            tracing::error!(error = %e, "the CRL refresh failed");
        }
    }
}

/// A listener's connections in the metrics: open now, and accepted in all.
struct ListenerMetrics {
    open: Arc<Gauge>,
    accepted: Arc<Counter>,
}

impl ListenerMetrics {
    fn of(authority: &Authority, listener: &str) -> Self {
        let m = authority.metrics();
        Self { open: m.open_connections.with(&[listener]), accepted: m.accepted_connections.with(&[listener]) }
    }
}

/// One open connection, counted while it lives (in the loop's count and in
/// the listener's gauge for /metrics).
struct Slot(Arc<AtomicUsize>, Arc<Gauge>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, gauge: &Arc<Gauge>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        gauge.inc();
        Self(open.clone(), gauge.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.dec();
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accept connections until `shutdown`, each served by `conn` on its own
/// task, at most `max()` at once (asked at each accept, so that a reload
/// applies): one more is closed at once. Each is counted in `counted`.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    counted: ListenerMetrics,
    max: impl Fn() -> usize,
    shutdown: impl Future<Output = ()>,
    conn: F,
) -> std::io::Result<()>
where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ConnResult> + Send + 'static,
{
    let open = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        counted.accepted.inc();
        let max = max().max(1);
        // Only this loop adds to `open`, so the check and the add cannot race.
        if open.load(Ordering::Acquire) >= max {
            tracing::warn!(%peer, max, "connection limit reached: closing a new connection");
            drop(tcp);
            continue;
        }
        let permit = Slot::take(&open, &counted.open);
        let _ = tcp.set_nodelay(true);
        let fut = conn(tcp, peer);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// A server running in the background of this process (demo, tests).
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Start serving on `addr` (port 0 picks a free port) with the limits of the authority's config.
    pub async fn start(authority: Arc<Authority>, addr: SocketAddr) -> std::io::Result<Self> {
        let limits = Limits::from(&authority.config().limits);
        Self::start_with(authority, addr, limits).await
    }

    /// Start serving on `addr` with `limits`.
    pub async fn start_with(authority: Arc<Authority>, addr: SocketAddr, limits: Limits) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(authority, listener, limits, async move {
            let _ = rx.await;
        }));
        Ok(Self { addr, stop: Some(tx), task })
    }

    /// Serve the public routes over plain HTTP on `addr` (port 0 picks a free port).
    pub async fn start_http(authority: Arc<Authority>, addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_http_on(authority, TcpListener::bind(addr).await?)
    }

    /// Serve the public routes over plain HTTP on a listener bound already,
    /// with the limits of the authority's config.
    pub fn start_http_on(authority: Arc<Authority>, listener: TcpListener) -> std::io::Result<Self> {
        let limits = Limits::from(&authority.config().limits);
        Self::start_http_with(authority, listener, limits)
    }

    /// Serve the public routes over plain HTTP on a listener bound already, with `limits`.
    pub fn start_http_with(authority: Arc<Authority>, listener: TcpListener, limits: Limits) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_http(authority, listener, limits, async move {
            let _ = rx.await;
        }));
        Ok(Self { addr, stop: Some(tx), task })
    }

    /// Serve `GET /metrics` alone over plain HTTP on a listener bound already,
    /// with the limits of the authority's config (`[server] metrics_listen`).
    pub fn start_metrics_on(authority: Arc<Authority>, listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let limits = LimitsHandle::new(Limits::from(&authority.config().limits));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_metrics_with(authority, listener, limits, async move {
            let _ = rx.await;
        }));
        Ok(Self { addr, stop: Some(tx), task })
    }

    /// Serve EST over secure CoAP on UDP `addr` (port 0 picks a free port) with `limits` and `options`.
    pub async fn start_coaps(
        authority: Arc<Authority>,
        addr: SocketAddr,
        limits: Limits,
        options: coaps::CoapsOptions,
    ) -> std::io::Result<Self> {
        // DTLS (dimpl) signs with ECDSA only: an ML-DSA server key is refused here,
        // before a socket is bound, rather than at every device's handshake.
        let (chain, _) = authority.server_tls();
        let server_kt = chain
            .first()
            .and_then(|c| iotpki_core::profile::cert_info(c).ok())
            .and_then(|i| iotpki_core::keys::KeyType::of_spki(&i.cert.tbs_certificate.subject_public_key_info).ok());
        if let Some(kt) = server_kt.filter(|k| k.is_ml_dsa()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "EST over secure CoAP: DTLS has no {kt} signatures, and this authority's server key is {kt}; \
                     serve coaps from an authority with a p256 or p384 server key (HTTPS carries ML-DSA)"
                ),
            ));
        }
        let socket = tokio::net::UdpSocket::bind(addr).await?;
        let addr = socket.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let identity = coaps::DtlsIdentity::of(&authority);
        let task = tokio::spawn(async move {
            coaps::serve_coaps(authority, socket, LimitsHandle::new(limits), identity, options, async move {
                let _ = rx.await;
            })
            .await
            .map(|_| ())
        });
        Ok(Self { addr, stop: Some(tx), task })
    }

    /// The coaps URL of a listener from [`Running::start_coaps`], `coaps://127.0.0.1:PORT`.
    pub fn coaps_url(&self) -> String {
        format!("coaps://{}", self.addr)
    }

    /// The base URL, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stop accepting and wait for the accept loop to end.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.map_err(std::io::Error::other)?
    }
}
