//! Events out: webhooks (`[[events.webhook]]`, docs/events.md).
//!
//! The store keeps an outbox: every change a webhook reports writes its
//! event in the transaction that makes the change. This module delivers
//! them: one task per webhook reads the events after the webhook's cursor,
//! POSTs each (JSON, signed with an HMAC of the webhook's secret), in order,
//! and moves the cursor in the store once the receiver answered 2xx. A failed
//! delivery is retried with a capped exponential backoff with jitter; one
//! webhook's failures never hold another's events. A webhook's deliveries
//! are leased in the store to one node (`serve` process) at a time, so that
//! several nodes on one PostgreSQL database do not deliver one event twice.
//!
//! Guarantees: at least once; exactly once when the server stops cleanly
//! (an answered delivery's cursor is written before the task ends). After a
//! crash between a receiver's 2xx and the cursor's write, that event is
//! delivered again: receivers dedupe by event id.
//!
//! A second task records `certificate.expiring` events, at start and every
//! hour, for each threshold the webhooks ask for, in bounded pages.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use iotpki_authority::config::{EventsConfig, WebhookConfig};
use iotpki_authority::Authority;
use iotpki_store::{EventRecord, ExpiringScan, Store, StoreError, EVENT_CERT_EXPIRING, EVENT_KINDS};
use zeroize::Zeroizing;

/// Events read from the store at once.
const PAGE: u32 = 100;
/// Certificates looked at in one transaction of the expiring check.
const EXPIRING_PAGE: u32 = 500;
/// How often a webhook with nothing to send looks for new events.
const POLL: Duration = Duration::from_secs(1);
/// How often the expiring check runs (and once at start).
const EXPIRING_EVERY: Duration = Duration::from_secs(3600);
/// How long a node's lease on a webhook's deliveries lasts unless renewed
/// (it is renewed before each attempt and with each delivery).
const LEASE: Duration = Duration::from_secs(60);
/// Longest a delivery may take: connect, TLS, request and answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff: the first retry after about this long...
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// ...doubling up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(600);
/// Longest answer body read from a receiver (it is only logged on failure).
const MAX_ANSWER: usize = 4096;
/// Largest secret file read.
const MAX_SECRET: u64 = 4096;

/// A webhook configuration refused, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfigError(pub String);

impl std::fmt::Display for WebhookConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WebhookConfigError {}

/// `http://` or `https://`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// Where a webhook's deliveries go, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    scheme: Scheme,
    host: String,
    port: u16,
    /// Path and query, `/` at least.
    path: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(other) => return Err(format!("url {url:?}: scheme {other} is not http or https")),
            None => return Err(format!("url {url:?} names no scheme (http:// or https://)")),
        };
        let authority = uri.authority().ok_or_else(|| format!("url {url:?} names no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "url {url:?}: credentials in the URL are not supported (the HMAC signs each delivery)"
            ));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(format!("url {url:?} names no host"));
        }
        let port = authority.port_u16().unwrap_or(if scheme == Scheme::Https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/".to_string(), |p| p.as_str().to_string());
        let path = if path.is_empty() { "/".to_string() } else { path };
        Ok(Self { scheme, host, port, path })
    }

    /// The `Host` header.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match (self.scheme, self.port) {
            (Scheme::Http, 80) | (Scheme::Https, 443) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

/// One webhook, checked: its endpoint, secret, filter and threshold.
pub struct Webhook {
    name: String,
    endpoint: Endpoint,
    secret: Zeroizing<Vec<u8>>,
    /// The event types it gets.
    kinds: BTreeSet<String>,
    expiring_within_days: u32,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("kinds", &self.kinds)
            .field("expiring_within_days", &self.expiring_within_days)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it gets `ev`: its type is one it asked for, and an expiring
    /// notice is at its own threshold.
    fn wants(&self, ev: &EventRecord) -> bool {
        if !self.kinds.contains(&ev.kind) {
            return false;
        }
        if ev.kind == EVENT_CERT_EXPIRING {
            let days = serde_json::from_str::<serde_json::Value>(&ev.data)
                .ok()
                .and_then(|d| d.get("within_days").and_then(serde_json::Value::as_u64));
            return days == Some(u64::from(self.expiring_within_days));
        }
        true
    }
}

/// Read and check every `[[events.webhook]]` of the config (relative paths
/// from the authority's directory `dir`): names unique and plain, URLs
/// http(s) with a host, event types known, secrets readable by their owner
/// only and not empty, CA files readable. The first problem is the error.
pub fn load_webhooks(dir: &Path, cfg: &EventsConfig) -> Result<Vec<Webhook>, WebhookConfigError> {
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(cfg.webhook.len());
    for w in &cfg.webhook {
        let bad = |m: String| WebhookConfigError(format!("[[events.webhook]] {:?}: {m}", w.name));
        if w.name.is_empty()
            || w.name.len() > 64
            || !w.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(bad("name must be 1 to 64 letters, digits, '-', '_' or '.'".into()));
        }
        if !names.insert(w.name.clone()) {
            return Err(bad("two webhooks have this name".into()));
        }
        out.push(load_one(dir, w).map_err(bad)?);
    }
    Ok(out)
}

fn load_one(dir: &Path, w: &WebhookConfig) -> Result<Webhook, String> {
    let endpoint = Endpoint::parse(&w.url)?;
    let kinds: BTreeSet<String> = match &w.events {
        None => EVENT_KINDS.iter().map(|k| k.to_string()).collect(),
        Some(list) => {
            if list.is_empty() {
                return Err("events is empty: list the event types it gets, or leave it out for all".into());
            }
            for k in list {
                if !EVENT_KINDS.contains(&k.as_str()) {
                    return Err(format!("unknown event type {k:?} (known: {})", EVENT_KINDS.join(", ")));
                }
            }
            list.iter().cloned().collect()
        }
    };
    if w.expiring_within_days == 0 || w.expiring_within_days > 3650 {
        return Err(format!("expiring_within_days {} must be 1 to 3650", w.expiring_within_days));
    }
    let secret = read_secret(&dir.join(&w.secret_file))?;
    let tls = match endpoint.scheme {
        Scheme::Http => {
            if w.ca_file.is_some() {
                return Err("ca_file is for an https:// url".into());
            }
            None
        }
        Scheme::Https => Some(client_tls(dir, w.ca_file.as_deref())?),
    };
    Ok(Webhook { name: w.name.clone(), endpoint, secret, kinds, expiring_within_days: w.expiring_within_days, tls })
}

/// A webhook's secret: the file's bytes, a final newline dropped; refused
/// when others may read it (like the authority's key files) or when empty.
fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|e| format!("secret_file {}: {e}", path.display()))?;
    let meta = f.metadata().map_err(|e| format!("secret_file {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "secret_file {} may be read by others (mode {mode:03o}): make it readable by its owner only \
                 (chmod 600)",
                path.display()
            ));
        }
    }
    if !meta.is_file() {
        return Err(format!("secret_file {} is not a file", path.display()));
    }
    let mut buf = Zeroizing::new(Vec::new());
    f.take(MAX_SECRET + 1).read_to_end(&mut buf).map_err(|e| format!("secret_file {}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_SECRET {
        return Err(format!("secret_file {} is larger than {MAX_SECRET} bytes", path.display()));
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    if buf.len() < 16 {
        return Err(format!("secret_file {} holds fewer than 16 bytes: use a long random secret", path.display()));
    }
    Ok(buf)
}

/// Where Debian, Fedora and Alpine keep the system's CA bundle.
const SYSTEM_ROOTS: &[&str] =
    &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// TLS to an https receiver: its certificate must chain to `ca_file`'s
/// certificates, or to the system's.
fn client_tls(dir: &Path, ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let (path, text) = match ca_file {
        Some(p) => {
            let p = dir.join(p);
            let t = std::fs::read_to_string(&p).map_err(|e| format!("ca_file {}: {e}", p.display()))?;
            (p, t)
        }
        None => {
            let found = SYSTEM_ROOTS.iter().find_map(|p| std::fs::read_to_string(p).ok().map(|t| (p.into(), t)));
            found.ok_or_else(|| {
                format!("no system CA bundle found ({}): name the receiver's CA in ca_file", SYSTEM_ROOTS.join(", "))
            })?
        }
    };
    let ders = iotpki_core::pem::decode_all("CERTIFICATE", &text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for der in ders {
        // A system bundle may hold a certificate webpki cannot use as an anchor: skip it.
        let _ = roots.add(rustls_pki_types::CertificateDer::from(der));
    }
    if roots.is_empty() {
        return Err(format!("{} holds no CA certificate", path.display()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// `sha256=HEX`: HMAC-SHA256 with the webhook's secret over
/// `TIMESTAMP.BODY` (the `X-Iotpki-Timestamp` header, a dot, the body).
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

/// Whether `header` (an `X-Iotpki-Signature`) is the signature of `body`
/// sent at `timestamp` with `secret`, compared in constant time: what a
/// receiver written in Rust runs.
pub fn verify_signature(secret: &[u8], timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut msg = Vec::with_capacity(timestamp.len() + 1 + body.len());
    msg.extend_from_slice(timestamp.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    aws_lc_rs::hmac::verify(&key, &msg, &sig).is_ok()
}

/// How long to wait before retry number `attempt` (0 for the first retry):
/// 1 s doubling to at most 10 min, less up to a quarter by `jitter` (in
/// [0, 1)), never under 1 s: retries of many webhooks do not march in step.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = BACKOFF_MIN.saturating_mul(1u32 << attempt.min(20)).min(BACKOFF_MAX);
    let cut = base.mul_f64(jitter.clamp(0.0, 1.0) / 4.0);
    base.saturating_sub(cut).max(BACKOFF_MIN)
}

/// The JSON body of one delivery: `{"id", "type", "at", "data"}`.
pub fn body(ev: &EventRecord) -> Vec<u8> {
    let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or(serde_json::Value::Null);
    let body = serde_json::json!({
        "id": ev.seq.to_string(),
        "type": ev.kind,
        "subject": ev.subject,
        "at": rfc3339(ev.created_at),
        "data": data,
    });
    body.to_string().into_bytes()
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Why a delivery failed.
#[derive(Debug)]
enum Failure {
    /// The receiver answered, but not 2xx.
    Status(u16, String),
    /// Connecting, TLS or HTTP failed.
    Io(String),
    /// It took longer than [`TIMEOUT`].
    Timeout,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(s, b) if b.is_empty() => write!(f, "the receiver answered {s}"),
            Self::Status(s, b) => write!(f, "the receiver answered {s}: {b}"),
            Self::Io(e) => f.write_str(e),
            Self::Timeout => write!(f, "no answer within {} s", TIMEOUT.as_secs()),
        }
    }
}

/// POST one event to the webhook; `Ok` on a 2xx answer.
async fn post(w: &Webhook, ev: &EventRecord) -> Result<(), Failure> {
    match tokio::time::timeout(TIMEOUT, post_once(w, ev)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}

async fn post_once(w: &Webhook, ev: &EventRecord) -> Result<(), Failure> {
    let io = |what: &str, e: &dyn std::fmt::Display| Failure::Io(format!("{what}: {e}"));
    let body = body(ev);
    let ts = now_unix().to_string();
    let sig = signature(&w.secret, &ts, &body);
    let req = hyper::Request::post(&w.endpoint.path)
        .header(hyper::header::HOST, w.endpoint.host_header())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("iotpki/", env!("CARGO_PKG_VERSION")))
        .header("X-Iotpki-Event-Id", ev.seq.to_string())
        .header("X-Iotpki-Event-Type", ev.kind.as_str())
        .header("X-Iotpki-Timestamp", ts.as_str())
        .header("X-Iotpki-Signature", sig)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| io("request", &e))?;
    let tcp = tokio::net::TcpStream::connect((w.endpoint.host.as_str(), w.endpoint.port))
        .await
        .map_err(|e| io(&format!("connect to {}:{}", w.endpoint.host, w.endpoint.port), &e))?;
    let _ = tcp.set_nodelay(true);
    let resp = match &w.tls {
        None => send(hyper_util::rt::TokioIo::new(tcp), req).await?,
        Some(cfg) => {
            let name =
                rustls_pki_types::ServerName::try_from(w.endpoint.host.clone()).map_err(|e| io("server name", &e))?;
            let tls =
                tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp).await.map_err(|e| io("TLS", &e))?;
            send(hyper_util::rt::TokioIo::new(tls), req).await?
        }
    };
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Ok(());
    }
    // A little of the answer, for the log (bounded).
    let mut text = Vec::new();
    let mut b = resp.into_body();
    while let Some(Ok(frame)) = b.frame().await {
        if let Some(d) = frame.data_ref() {
            text.extend_from_slice(&d[..d.len().min(MAX_ANSWER - text.len())]);
        }
        if text.len() >= MAX_ANSWER {
            break;
        }
    }
    let text: String = String::from_utf8_lossy(&text).chars().filter(|c| !c.is_control()).take(200).collect();
    Err(Failure::Status(status, text))
}

async fn send<T>(
    io: hyper_util::rt::TokioIo<T>,
    req: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, Failure>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| Failure::Io(format!("HTTP: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| Failure::Io(format!("HTTP: {e}")))
}

/// Run a store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    crate::sched::spawn_blocking(f).await.unwrap_or_else(|e| Err(StoreError::Database(format!("worker failed: {e}"))))
}

/// Sleep `d`, or less if `stop` turns true; answers whether it did.
async fn sleep_or_stop(d: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        // A dropped sender is a stop too.
        _ = async { let _ = stop.wait_for(|s| *s).await; } => return true,
    }
    let stopped = *stop.borrow();
    stopped
}

/// The delivery tasks, running until [`Deliveries::stop`].
pub struct Deliveries {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Deliveries {
    /// Start one delivery task per webhook and the expiring check, on the
    /// current tokio runtime. `owner` names this node in the leases (unique
    /// per process).
    ///
    /// A webhook seen for the first time gets its cursor here, at the last
    /// event recorded, before the expiring check records anything: it is
    /// given every event recorded from this start on.
    pub async fn start(authority: Arc<Authority>, webhooks: Vec<Webhook>, owner: String) -> Result<Self, StoreError> {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let store = authority.store().clone();
        for w in &webhooks {
            let (s, n, o) = (store.clone(), w.name.clone(), owner.clone());
            blocking(move || {
                if s.webhook_cursor(&n)?.is_none() {
                    // Creates the cursor; the lease taken is released at once.
                    let now = now_unix();
                    s.lease_webhook(&n, &o, now, now)?;
                    s.release_webhook(&n, &o)?;
                }
                Ok(())
            })
            .await?;
        }
        let mut tasks = Vec::new();
        let thresholds: BTreeSet<u32> =
            webhooks.iter().filter(|w| w.kinds.contains(EVENT_CERT_EXPIRING)).map(|w| w.expiring_within_days).collect();
        if !thresholds.is_empty() {
            tasks.push(tokio::spawn(expiring_loop(authority.clone(), thresholds, rx.clone())));
        }
        for w in webhooks {
            tasks.push(tokio::spawn(deliver_loop(store.clone(), Arc::new(w), owner.clone(), rx.clone())));
        }
        Ok(Self { stop, tasks })
    }

    /// Stop: each task finishes the delivery in flight (bounded by the
    /// delivery timeout), writes its cursor and releases its lease; answers
    /// once all have.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A unique owner name for this process's leases.
pub fn lease_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}:{:08x}", host.trim(), std::process::id(), rand::random::<u32>())
}

/// At start and every [`EXPIRING_EVERY`]: record `certificate.expiring` for
/// each threshold, page by page (each page one short transaction).
async fn expiring_loop(
    authority: Arc<Authority>,
    thresholds: BTreeSet<u32>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        for &days in &thresholds {
            let mut after = None;
            loop {
                if *stop.borrow() {
                    return;
                }
                let (store, now) = (authority.store().clone(), authority.clock().now());
                let scan = ExpiringScan { now, within_days: days, after: after.clone(), limit: EXPIRING_PAGE };
                match blocking(move || store.note_expiring(scan)).await {
                    Ok(n) => {
                        if n.recorded > 0 {
                            tracing::info!(
                                within_days = days,
                                recorded = n.recorded,
                                "certificates expiring: events recorded"
                            );
                        }
                        match n.next {
                            Some(next) => after = Some(next),
                            None => break,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(within_days = days, error = %e, "the expiring-certificates check failed");
                        break;
                    }
                }
            }
        }
        if sleep_or_stop(EXPIRING_EVERY, &mut stop).await {
            return;
        }
    }
}

/// Deliver one webhook's events, in order, until stopped.
async fn deliver_loop(
    store: Arc<dyn Store>,
    w: Arc<Webhook>,
    owner: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let lease = LEASE.as_secs() as i64;
    let mut attempt: u32 = 0;
    'outer: loop {
        if *stop.borrow() {
            break;
        }
        // Idle, look with reads only: the lease is a write (on PostgreSQL it
        // waits for the writers' lock), taken only when there is work.
        let (s, n) = (store.clone(), w.name.clone());
        match blocking(move || Ok(s.last_event_seq()? > s.webhook_cursor(&n)?.unwrap_or(0))).await {
            Ok(true) => {}
            Ok(false) => {
                if sleep_or_stop(POLL, &mut stop).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(webhook = %w.name, error = %e, "cannot read the webhook's cursor");
                if sleep_or_stop(backoff(attempt, rand::random()), &mut stop).await {
                    break;
                }
                attempt = attempt.saturating_add(1);
                continue;
            }
        }
        let (s, n, o) = (store.clone(), w.name.clone(), owner.clone());
        let now = now_unix();
        let cursor = match blocking(move || s.lease_webhook(&n, &o, now, now + lease)).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                // Another node delivers this webhook now; look again before its lease ends.
                tracing::debug!(webhook = %w.name, "delivered by another node");
                if sleep_or_stop(LEASE / 2, &mut stop).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(webhook = %w.name, error = %e, "cannot read the webhook's cursor");
                if sleep_or_stop(backoff(attempt, rand::random()), &mut stop).await {
                    break;
                }
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        let s = store.clone();
        let events = match blocking(move || s.events_after(cursor, PAGE)).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(webhook = %w.name, error = %e, "cannot read the events");
                if sleep_or_stop(backoff(attempt, rand::random()), &mut stop).await {
                    break;
                }
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        if events.is_empty() {
            if sleep_or_stop(POLL, &mut stop).await {
                break;
            }
            continue;
        }
        // The seq the cursor may move to: events delivered, or not for this webhook.
        let mut done = cursor;
        for ev in &events {
            if !w.wants(ev) {
                done = ev.seq;
                continue;
            }
            // Skipped events first, so that the cursor written after this delivery is exact.
            loop {
                match post(&w, ev).await {
                    Ok(()) => break,
                    Err(f) => {
                        let wait = backoff(attempt, rand::random());
                        tracing::warn!(
                            webhook = %w.name,
                            event = ev.seq,
                            r#type = %ev.kind,
                            attempt = attempt + 1,
                            retry_in_ms = wait.as_millis() as u64,
                            error = %f,
                            "webhook delivery failed"
                        );
                        attempt = attempt.saturating_add(1);
                        if done > cursor {
                            // Do not hold skipped events' progress hostage to a dead receiver.
                            let _ = advance(&store, &w.name, &owner, done).await;
                        }
                        if sleep_or_stop(wait, &mut stop).await {
                            break 'outer;
                        }
                        // Keep (or lose) the lease before trying again.
                        let (s, n, o) = (store.clone(), w.name.clone(), owner.clone());
                        let now = now_unix();
                        match blocking(move || s.lease_webhook(&n, &o, now, now + lease)).await {
                            Ok(Some(c)) if c < ev.seq => {}
                            // Lost, or another node delivered it meanwhile: start over.
                            _ => continue 'outer,
                        }
                    }
                }
            }
            attempt = 0;
            done = ev.seq;
            match advance(&store, &w.name, &owner, done).await {
                Ok(()) => {}
                Err(StoreError::WebhookLeaseLost { .. }) => {
                    tracing::warn!(webhook = %w.name, event = ev.seq, "lease lost to another node after a delivery: it may be delivered again");
                    continue 'outer;
                }
                Err(e) => {
                    tracing::error!(webhook = %w.name, event = ev.seq, error = %e, "delivered, but the cursor was not written: it will be delivered again");
                    continue 'outer;
                }
            }
            if *stop.borrow() {
                break 'outer;
            }
        }
        if done > cursor {
            let _ = advance(&store, &w.name, &owner, done).await;
        }
    }
    let (s, n, o) = (store.clone(), w.name.clone(), owner.clone());
    if let Err(e) = blocking(move || s.release_webhook(&n, &o)).await {
        tracing::warn!(webhook = %w.name, error = %e, "could not release the webhook's lease (it ends by itself)");
    }
}

async fn advance(store: &Arc<dyn Store>, name: &str, owner: &str, seq: u64) -> Result<(), StoreError> {
    let (s, n, o) = (store.clone(), name.to_string(), owner.to_string());
    let until = now_unix() + LEASE.as_secs() as i64;
    blocking(move || s.advance_webhook(&n, &o, seq, until)).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 shape: key "Jefe", message "what do ya want for nothing?".
        let sig = signature(b"Jefe", "what do ya want", b" for nothing?");
        // "what do ya want" + "." + " for nothing?" is not the RFC's message: check against a direct HMAC.
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"Jefe");
        let want = hex::encode(aws_lc_rs::hmac::sign(&key, b"what do ya want. for nothing?").as_ref());
        assert_eq!(sig, format!("sha256={want}"));
        // And the RFC's own vector, through the same function (timestamp "what do ya want for nothing?" split at the dot is
        // impossible, so the vector is checked on the primitive).
        let rfc = aws_lc_rs::hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(hex::encode(rfc.as_ref()), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(verify_signature(b"Jefe", "what do ya want", b" for nothing?", &sig));
    }

    /// A receiver cannot be fooled by a delivery forged without the secret:
    /// another key, an edited body, an edited timestamp or a malformed header all fail.
    #[test]
    fn a_forged_or_edited_delivery_fails_verification() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let body = br#"{"id":"7","type":"certificate.revoked"}"#;
        let sig = signature(secret, "1700000000", body);
        assert!(verify_signature(secret, "1700000000", body, &sig));
        assert!(!verify_signature(b"another secret, guessed........", "1700000000", body, &sig));
        assert!(!verify_signature(secret, "1700000001", body, &sig), "the timestamp is signed (replay window)");
        assert!(!verify_signature(secret, "1700000000", br#"{"id":"8","type":"certificate.revoked"}"#, &sig));
        assert!(!verify_signature(secret, "1700000000", body, &sig.replace("sha256=", "sha1=")));
        assert!(!verify_signature(secret, "1700000000", body, "sha256=zz"));
        let forged = signature(b"not the secret at all, 32 bytes.", "1700000000", body);
        assert!(!verify_signature(secret, "1700000000", body, &forged));
    }

    #[test]
    fn backoff_doubles_from_one_second_to_ten_minutes_with_jitter() {
        let s = |a, j| backoff(a, j).as_secs_f64();
        assert_eq!(s(0, 0.0), 1.0);
        assert_eq!(s(0, 0.99), 1.0, "never under a second");
        assert_eq!(s(1, 0.0), 2.0);
        assert_eq!(s(3, 0.0), 8.0);
        assert!((6.0..8.0).contains(&s(3, 0.999)), "jitter takes up to a quarter off");
        assert_eq!(s(9, 0.0), 512.0);
        assert_eq!(s(10, 0.0), 600.0, "capped at 10 minutes");
        assert_eq!(s(u32::MAX, 0.0), 600.0);
        assert!((450.0..=600.0).contains(&s(40, 0.5)));
        for a in 0..30 {
            assert!(backoff(a + 1, 0.0) >= backoff(a, 0.0), "never shrinks");
        }
    }

    #[test]
    fn urls_are_parsed_or_refused_with_the_reason() {
        let e = Endpoint::parse("http://127.0.0.1:8080/hook?x=1").unwrap();
        assert_eq!(
            (e.scheme, e.host.as_str(), e.port, e.path.as_str()),
            (Scheme::Http, "127.0.0.1", 8080, "/hook?x=1")
        );
        assert_eq!(e.host_header(), "127.0.0.1:8080");
        let e = Endpoint::parse("https://hooks.example.com").unwrap();
        assert_eq!((e.port, e.path.as_str(), e.host_header().as_str()), (443, "/", "hooks.example.com"));
        let e = Endpoint::parse("http://[::1]:9/x").unwrap();
        assert_eq!((e.host.as_str(), e.host_header().as_str()), ("::1", "[::1]:9"));
        assert!(Endpoint::parse("ftp://h/x").unwrap_err().contains("not http or https"));
        assert!(Endpoint::parse("/just/a/path").unwrap_err().contains("no scheme"));
        assert!(Endpoint::parse("not a url").is_err());
        assert!(Endpoint::parse("http://user:pw@h/x").unwrap_err().contains("credentials"));
    }

    fn cfg(dir: &Path, f: impl FnOnce(&mut WebhookConfig)) -> EventsConfig {
        let mut w = WebhookConfig {
            name: "ops".into(),
            url: "http://127.0.0.1:9/hook".into(),
            secret_file: dir.join("hook.secret"),
            events: None,
            expiring_within_days: 30,
            ca_file: None,
        };
        f(&mut w);
        EventsConfig { webhook: vec![w] }
    }

    #[cfg(unix)]
    #[test]
    fn a_bad_webhook_config_is_refused_with_what_is_wrong() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("hook.secret");
        std::fs::write(&secret, "a long enough random secret\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ok = load_webhooks(d.path(), &cfg(d.path(), |_| {})).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(&ok[0].secret[..], b"a long enough random secret", "the final newline is not part of it");
        assert!(!format!("{:?}", ok[0]).contains("random secret"), "Debug never shows the secret");
        let err = |f: &dyn Fn(&mut WebhookConfig)| load_webhooks(d.path(), &cfg(d.path(), f)).unwrap_err().0;
        assert!(err(&|w| w.url = "ftp://x/y".into()).contains("not http or https"));
        assert!(err(&|w| w.events = Some(vec!["certificate.revokd".into()]))
            .contains("unknown event type \"certificate.revokd\""));
        assert!(err(&|w| w.events = Some(vec![])).contains("events is empty"));
        assert!(err(&|w| w.secret_file = d.path().join("missing")).contains("secret_file"));
        assert!(err(&|w| w.name = "bad name".into()).contains("name must be"));
        assert!(err(&|w| w.expiring_within_days = 0).contains("expiring_within_days"));
        assert!(err(&|w| w.ca_file = Some("ca.pem".into())).contains("ca_file is for an https"));
        let two = {
            let mut c = cfg(d.path(), |_| {});
            c.webhook.push(c.webhook[0].clone());
            c
        };
        assert!(load_webhooks(d.path(), &two).unwrap_err().0.contains("two webhooks have this name"));
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = err(&|_| {});
        assert!(e.contains("may be read by others (mode 644)") && e.contains("chmod 600"), "{e}");
        assert!(!e.contains("random secret"), "the error never shows the secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&secret, "short").unwrap();
        assert!(err(&|_| {}).contains("fewer than 16 bytes"));
    }

    #[test]
    fn a_webhook_gets_the_types_it_asked_for_and_expiring_notices_at_its_threshold() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("hook.secret"), "a long enough random secret").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(d.path().join("hook.secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let w = load_webhooks(
            d.path(),
            &cfg(d.path(), |w| {
                w.events = Some(vec!["certificate.expiring".into(), "station.revoked".into()]);
                w.expiring_within_days = 7;
            }),
        )
        .unwrap()
        .remove(0);
        let ev = |kind: &str, data: &str| EventRecord {
            seq: 1,
            kind: kind.into(),
            subject: "s".into(),
            created_at: 0,
            data: data.into(),
        };
        assert!(w.wants(&ev("station.revoked", "{}")));
        assert!(!w.wants(&ev("certificate.revoked", "{}")));
        assert!(w.wants(&ev("certificate.expiring", r#"{"within_days":7}"#)));
        assert!(!w.wants(&ev("certificate.expiring", r#"{"within_days":30}"#)));
        let b: serde_json::Value = serde_json::from_slice(&body(&EventRecord {
            seq: 42,
            kind: "station.revoked".into(),
            subject: "line-1".into(),
            created_at: 1_700_000_000,
            data: r#"{"station":"line-1"}"#.into(),
        }))
        .unwrap();
        assert_eq!(
            b,
            serde_json::json!({"id": "42", "type": "station.revoked", "subject": "line-1",
                "at": "2023-11-14T22:13:20Z", "data": {"station": "line-1"}})
        );
    }
}
