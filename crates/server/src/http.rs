//! EST over HTTP/1.1: routes, the one place errors become responses, and the
//! per-connection plumbing that hands the TLS client chain to handlers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use iotpki_authority::{Authority, AuthorityError, Caller, EnrollRequest, Enrolled, Queued, Started};
use iotpki_core::{csr, est, wire};
use rustls::pki_types::CertificateDer;
use tower::ServiceExt as _;

use crate::gate::Admission;
use crate::limits::PeerAddr;
use crate::Limits;
use zeroize::Zeroizing;

/// The TLS client certificate chain of the connection a request came on,
/// and the station admitted on that connection for its births
/// ([`crate::gate::Admission::admit_for`]): one per connection, shared by its requests.
#[derive(Clone, Default)]
pub(crate) struct PeerChain(Arc<Peer>);

#[derive(Default)]
struct Peer {
    certs: Vec<CertificateDer<'static>>,
    kept: std::sync::Mutex<Option<Arc<Caller>>>,
    /// The rate limiter's key for the leaf, hashed at the connection's first request.
    rate_key: std::sync::OnceLock<String>,
}

impl PeerChain {
    /// A connection's chain, leaf first, with no admission kept yet.
    pub(crate) fn new(certs: Vec<CertificateDer<'static>>) -> Self {
        Self(Arc::new(Peer { certs, ..Peer::default() }))
    }

    /// The client's certificate, if it sent one.
    pub(crate) fn leaf(&self) -> Option<&[u8]> {
        self.0.certs.first().map(|c| c.as_ref())
    }

    /// The whole chain, leaf first (empty without a client certificate).
    pub(crate) fn chain(&self) -> &[CertificateDer<'static>] {
        &self.0.certs
    }

    /// The rate limiter's key for the client's certificate
    /// ([`crate::limits::cert_key`]), computed at the connection's first
    /// request: the leaf cannot change while it is open. `None` without a certificate.
    pub(crate) fn rate_key(&self) -> Option<&str> {
        let leaf = self.leaf()?;
        Some(self.0.rate_key.get_or_init(|| crate::limits::cert_key(leaf)))
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Caller>>> {
        // Nothing can be left half-written in an Option: a poisoned lock is still sound.
        self.0.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The admission kept on this connection, if any.
    pub(crate) fn kept(&self) -> Option<Arc<Caller>> {
        self.slot().clone()
    }

    /// Keep `caller` for this connection's next births.
    pub(crate) fn keep(&self, caller: Arc<Caller>) {
        *self.slot() = Some(caller);
    }

    /// Drop the kept admission: the next request is admitted afresh.
    pub(crate) fn forget(&self) {
        *self.slot() = None;
    }
}

/// Every error answer, in one place: the authority's errors and refusals
/// (status from [`iotpki_authority::Refusal::http_status`], 503 when the store
/// cannot record, else 500 with a generic message and the details in the
/// log), and what the server refuses itself before a body is read (URI too
/// long, body too large, wrong Content-Type, unreadable body). One line of
/// plain text for the client.
pub(crate) enum ApiError {
    /// The authority refused or failed.
    Authority(AuthorityError),
    /// The request URI is longer than [`crate::gate::MAX_URI`] (414).
    UriTooLong {
        /// Its length.
        len: usize,
    },
    /// The body is (or is announced) larger than the endpoint takes (413).
    TooLarge {
        /// `METHOD /path`, cut for the answer.
        what: String,
        /// The limit.
        max: usize,
    },
    /// An enrollment whose Content-Type is not PKCS#10 (415).
    UnsupportedMediaType {
        /// The type sent, cut for the answer.
        got: String,
    },
    /// The body could not be read (400).
    UnreadableBody(String),
}

impl From<AuthorityError> for ApiError {
    fn from(e: AuthorityError) -> Self {
        Self::Authority(e)
    }
}

impl ApiError {
    /// The status and the one line the client sees.
    pub(crate) fn answer(&self) -> (StatusCode, String) {
        match self {
            Self::Authority(e) => {
                (StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), e.public_message())
            }
            Self::UriTooLong { len } => {
                (StatusCode::URI_TOO_LONG, format!("the request URI is {len} bytes; at most {}", crate::gate::MAX_URI))
            }
            Self::TooLarge { what, max } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body of {what} may be at most {max} bytes; send less (or in parts)"),
            ),
            Self::UnsupportedMediaType { got } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("Content-Type must be {} (got {got})", est::CT_PKCS10))
            }
            Self::UnreadableBody(why) => {
                (StatusCode::BAD_REQUEST, format!("the request body could not be read: {why}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = self.answer();
        match &self {
            Self::Authority(e) if status.is_server_error() => tracing::error!(error = %e, "request failed"),
            Self::Authority(e) => {
                // A refusal's reason may quote the request: bounded and printable in the log.
                let reason = iotpki_authority::refusals::clean(&e.to_string(), iotpki_authority::refusals::MAX_DETAIL);
                tracing::info!(status = status.as_u16(), %reason, "request refused");
            }
            _ => tracing::info!(status = status.as_u16(), reason = %message, "request refused"),
        }
        let mut resp = (status, format!("{message}\n")).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"iotpki EST\""));
        }
        resp
    }
}

fn base64_answer(content_type: &'static str, der: &[u8]) -> Response {
    let mut r = est::encode_body(der).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("content-transfer-encoding", HeaderValue::from_static("base64"));
    r
}

/// The EST routes, with and without a label.
pub fn router(authority: Arc<Authority>) -> Router {
    Router::new()
        .route("/.well-known/est/cacerts", get(|s: State<Arc<Authority>>| cacerts(s, None)))
        .route(
            "/.well-known/est/{label}/cacerts",
            get(|s: State<Arc<Authority>>, Path(l): Path<String>| cacerts(s, Some(l))),
        )
        .route("/.well-known/est/csrattrs", get(|s: State<Arc<Authority>>| csrattrs(s, None)))
        .route(
            "/.well-known/est/{label}/csrattrs",
            get(|s: State<Arc<Authority>>, Path(l): Path<String>| csrattrs(s, Some(l))),
        )
        .route(
            "/.well-known/est/simpleenroll",
            post(|s: State<Arc<Authority>>, p: Extension<Admission>, q: Query<EnrollQuery>, h: HeaderMap, b: Bytes| {
                enroll(s, p, q, h, b, None, Op::Enroll)
            }),
        )
        .route(
            "/.well-known/est/{label}/simpleenroll",
            post(
                |s: State<Arc<Authority>>,
                 Path(l): Path<String>,
                 p: Extension<Admission>,
                 q: Query<EnrollQuery>,
                 h: HeaderMap,
                 b: Bytes| { enroll(s, p, q, h, b, Some(l), Op::Enroll) },
            ),
        )
        .route(
            "/.well-known/est/simplereenroll",
            post(|s: State<Arc<Authority>>, p: Extension<Admission>, q: Query<EnrollQuery>, h: HeaderMap, b: Bytes| {
                enroll(s, p, q, h, b, None, Op::Reenroll)
            }),
        )
        .route(
            "/.well-known/est/{label}/simplereenroll",
            post(
                |s: State<Arc<Authority>>,
                 Path(l): Path<String>,
                 p: Extension<Admission>,
                 q: Query<EnrollQuery>,
                 h: HeaderMap,
                 b: Bytes| { enroll(s, p, q, h, b, Some(l), Op::Reenroll) },
            ),
        )
        .route("/factory/batches/{id}", get(station_batch))
        .route("/factory/tpm-challenge", post(tpm_challenge))
        .route("/factory/sync", get(sync_state).post(sync_upload))
        .route("/factory/crl", get(factory_crl_terms).post(factory_crl_upload))
        .route("/crl/{*file}", get(crl))
        .route("/ocsp", post(ocsp_post))
        .route("/ocsp/{*request}", get(ocsp_get))
        .route(BUNDLE_PATH, get(bundle))
        .route("/.well-known/iotpki/voucher/{serial}", get(voucher))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(crate::admin::routes())
        .merge(if authority.config().console.enabled {
            crate::console::routes(authority.clone())
        } else {
            Router::new()
        })
        // The gate reads bodies (after the caller is known, capped per endpoint).
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(authority.clone(), crate::gate::gate))
        .layer(axum::middleware::from_fn_with_state(authority.clone(), crate::metrics::track))
        .with_state(authority)
}

/// What anyone may fetch over plain HTTP (the revocation pointers in issued
/// certificates lead here): CRLs and OCSP. Nothing that issues.
///
/// `GET /metrics` is here too, unless `[server] metrics_listen` is set (it is
/// then served on that listener only: [`metrics_router`]).
pub fn public_router(authority: Arc<Authority>) -> Router {
    let mut r = Router::new()
        .route("/crl/{*file}", get(crl))
        .route("/ocsp", post(ocsp_post))
        .route("/ocsp/{*request}", get(ocsp_get))
        .route(BUNDLE_PATH, get(bundle))
        .route("/.well-known/iotpki/voucher/{serial}", get(voucher))
        .route("/healthz", get(|| async { "ok\n" }));
    if authority.config().server.metrics_listen.is_none() {
        r = r.route(crate::metrics::METRICS_PATH, get(crate::metrics::scrape));
    }
    r.layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(authority.clone(), crate::gate::public_gate))
        .layer(axum::middleware::from_fn_with_state(authority.clone(), crate::metrics::track))
        .with_state(authority)
}

/// The routes of `[server] metrics_listen`: `GET /metrics` only.
pub fn metrics_router(authority: Arc<Authority>) -> Router {
    Router::new()
        .route(crate::metrics::METRICS_PATH, get(crate::metrics::scrape))
        .layer(axum::middleware::from_fn_with_state(authority.clone(), crate::gate::public_gate))
        .layer(axum::middleware::from_fn_with_state(authority.clone(), crate::metrics::track))
        .with_state(authority)
}

/// Where the latest trust bundle is served.
pub const BUNDLE_PATH: &str = "/.well-known/iotpki/bundle";

fn cose_answer(body: Vec<u8>) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/cose"));
    r
}

/// `GET /.well-known/iotpki/bundle`: the latest published trust bundle (COSE_Sign).
async fn bundle(State(a): State<Arc<Authority>>) -> Result<Response, ApiError> {
    let body = blocking(move || a.published(iotpki_authority::trust::BUNDLE)).await??;
    Ok(cose_answer(body))
}

/// `GET /.well-known/iotpki/voucher/SERIAL`: the device's ownership voucher.
async fn voucher(State(a): State<Arc<Authority>>, Path(serial): Path<String>) -> Result<Response, ApiError> {
    iotpki_core::name::DeviceSerial::parse(&serial).map_err(|e| AuthorityError::malformed(e.to_string()))?;
    let kind = iotpki_authority::trust::voucher_kind(&serial);
    let body = blocking(move || a.published(&kind)).await??;
    Ok(cose_answer(body))
}

async fn cacerts(State(a): State<Arc<Authority>>, label: Option<String>) -> Result<Response, ApiError> {
    Ok(base64_answer(est::CT_PKCS7, a.cacerts(label.as_deref())?))
}

async fn csrattrs(State(a): State<Arc<Authority>>, label: Option<String>) -> Result<Response, ApiError> {
    Ok(base64_answer(est::CT_CSRATTRS, &a.csr_attrs(label.as_deref())?))
}

/// `?batch=ID` on simpleenroll: a factory station enrolling a device of that batch.
#[derive(serde::Deserialize, Default)]
struct EnrollQuery {
    batch: Option<String>,
}

/// `?unborn=N` on /factory/batches/ID: how many not-yet-born serials to list.
#[derive(serde::Deserialize)]
struct BatchQuery {
    unborn: Option<u32>,
}

/// `GET /factory/batches/ID`: a station's view of one of its batches (JSON).
async fn station_batch(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<BatchQuery>,
) -> Result<Response, ApiError> {
    let (rec, unborn, matter_chain) = blocking(move || {
        let (rec, unborn) = a.station_batch(&caller, &id, q.unborn.unwrap_or(0))?;
        // A Matter batch's births chain to its vendor's PAI and the PAA, not to the root.
        let chain = match rec.profile {
            iotpki_store::BatchProfile::MatterDac { vendor_id, .. } => a
                .matter_chain(iotpki_core::matter::VendorId(vendor_id))
                .map(|(pai, paa)| {
                    vec![iotpki_core::pem::encode("CERTIFICATE", &pai), iotpki_core::pem::encode("CERTIFICATE", &paa)]
                })
                .unwrap_or_default(),
            iotpki_store::BatchProfile::Device => vec![],
        };
        Ok::<_, iotpki_authority::AuthorityError>((rec, unborn, chain))
    })
    .await??;
    Ok(json(wire::StationBatch {
        profile: rec.profile.name().into(),
        matter_chain,
        id: rec.id,
        product: rec.product,
        quota: rec.quota,
        issued: rec.issued,
        refused: rec.refused,
        flagged: rec.flagged,
        valid_from: rec.valid_from,
        valid_until: rec.valid_until,
        open: rec.status == iotpki_store::BatchStatus::Open,
        allowlist: rec.allowlist,
        unborn,
    }))
}

/// The header that carries a TPM challenge's answer on a station's
/// simpleenroll: `ID:SECRET` (SECRET in base64).
pub const TPM_ACTIVATION_HEADER: &str = wire::TPM_ACTIVATION_HEADER;

/// `POST /factory/tpm-challenge` (JSON `{batch, serial, public}`): a TPM
/// attestation challenge for a device's key (JSON `{id, credential_blob,
/// encrypted_secret}`, base64), or 204 when the batch does not require one.
async fn tpm_challenge(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ask: wire::TpmChallengeRequest = wire::from_slice("TPM challenge request", &body)
        .map_err(|e| AuthorityError::malformed(format!("{e} (JSON batch, serial, public)")))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let public =
        b64.decode(&ask.public).map_err(|_| AuthorityError::malformed("TPM challenge: public is not base64".into()))?;
    let c = blocking(move || a.tpm_challenge(&caller, &ask.batch, &ask.serial, &public)).await??;
    let Some(c) = c else { return Ok(StatusCode::NO_CONTENT.into_response()) };
    Ok(json(wire::TpmChallenge {
        id: c.id,
        credential_blob: b64.encode(&c.credential_blob),
        encrypted_secret: b64.encode(&c.encrypted_secret),
    }))
}

/// `GET /crl/CA-NAME.crl`: the CA's complete CRL; `GET /crl/CA-NAME/S/K.crl`:
/// shard K of S of its partitioned CRL. DER (`application/pkix-crl`), or PEM
/// when the client asks for it in `Accept`.
async fn crl(
    State(a): State<Arc<Authority>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found =
        || AuthorityError::not_found(format!("no CRL at {file:?} (try /crl/CA-NAME.crl or /crl/CA-NAME/S/K.crl)"));
    // A station's delegated CA: the CRL the station signed and uploaded.
    if let Some(rest) = file.strip_prefix("delegated/") {
        let (a, rest) = (a.clone(), rest.to_string());
        let der = blocking(move || a.delegated_crl(&rest)).await??;
        let mut r = der.into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pkix-crl"));
        return Ok(r);
    }
    let scope = match file.strip_suffix(".crl") {
        Some(ca) if !ca.contains('/') => (ca.to_string(), None),
        _ => {
            let (ca, s, k) = iotpki_core::crl::parse_shard_path(&file).ok_or_else(not_found)?;
            (ca.to_string(), Some((s, k)))
        }
    };
    let der = blocking(move || a.crl_scoped(&scope.0, scope.1)).await??;
    let wants_pem = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("pem"));
    let mut r =
        if wants_pem { iotpki_core::pem::encode("X509 CRL", &der).into_response() } else { der.into_response() };
    let ct = if wants_pem { "application/x-pem-file" } else { "application/pkix-crl" };
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    Ok(r)
}

fn ocsp_answer(der: Vec<u8>) -> Response {
    let mut r = der.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/ocsp-response"));
    r
}

/// `POST /ocsp` (RFC 6960 A.1): a DER OCSPRequest in the body.
async fn ocsp_post(State(a): State<Arc<Authority>>, body: Bytes) -> Result<Response, ApiError> {
    let der = blocking(move || a.ocsp(&body)).await?;
    Ok(ocsp_answer(der))
}

/// `GET /ocsp/BASE64` (RFC 6960 A.1): the request base64-encoded in the path.
async fn ocsp_get(State(a): State<Arc<Authority>>, Path(request): Path<String>) -> Result<Response, ApiError> {
    let compact: String = request.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(compact.trim_end_matches('=')))
        .map_err(|_| AuthorityError::malformed("the OCSP request in the path is not base64".into()))?;
    let der = blocking(move || a.ocsp(&der)).await?;
    Ok(ocsp_answer(der))
}

/// `?batch=ID` on /factory/sync.
#[derive(serde::Deserialize)]
struct SyncQuery {
    batch: String,
}

pub(crate) fn json<T: serde::Serialize>(v: T) -> Response {
    let mut r = iotpki_core::wire::to_string(&v).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `GET /factory/sync?batch=ID`: where this station's production record was synced up to.
async fn sync_state(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<SyncQuery>,
) -> Result<Response, ApiError> {
    let (seq, head) = blocking(move || a.sync_state(&caller, &q.batch)).await??;
    Ok(json(wire::SyncState { last_seq: seq, head }))
}

/// `POST /factory/sync?batch=ID`: upload production record entries (JSON lines).
async fn sync_upload(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<SyncQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| AuthorityError::malformed("the production record must be UTF-8 JSON lines".into()))?;
    let out = blocking(move || a.sync(&caller, &q.batch, &text)).await??;
    let flagged = out
        .flagged
        .iter()
        .map(|(serial, f)| wire::Flagged { cert_serial: serial.clone(), reason: f.name().to_string() })
        .collect();
    Ok(json(wire::SyncOutcome { born: out.born, flagged }))
}

/// `GET /factory/crl?batch=ID`: what the station's next CRL for its delegated CA must say.
async fn factory_crl_terms(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<SyncQuery>,
) -> Result<Response, ApiError> {
    let t = blocking(move || a.delegated_crl_terms(&caller, &q.batch)).await??;
    let revoked = t.revoked.into_iter().map(|r| wire::RevokedEntry::new(r.serial, r.at, r.reason)).collect();
    Ok(json(wire::CrlTerms { number: t.number, next_update: t.next_update, revoked }))
}

/// `POST /factory/crl?batch=ID`: the station's CRL (DER) for its delegated CA.
async fn factory_crl_upload(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<SyncQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let n = blocking(move || a.upload_delegated_crl(&caller, &q.batch, &body)).await??;
    Ok(json(wire::CrlAccepted { number: n }))
}

#[derive(Clone, Copy)]
enum Op {
    Enroll,
    Reenroll,
}

/// HTTP Basic credentials, if the header is there and well-formed.
/// HTTP Basic's user and password (a one-time token: zeroised when dropped,
/// as are the decoded bytes it came from).
pub(crate) fn basic_auth(headers: &HeaderMap) -> Result<Option<(String, Zeroizing<String>)>, AuthorityError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let bad = || AuthorityError::unauthenticated("malformed Authorization header (expected Basic)".into());
    let v = v.to_str().map_err(|_| bad())?;
    let (scheme, rest) = v.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthorityError::unauthenticated(format!(
            "authorization scheme {scheme} is not supported; use Basic"
        )));
    }
    let raw = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(rest.trim()).map_err(|_| bad())?);
    let text = std::str::from_utf8(&raw).map_err(|_| bad())?;
    let (u, p) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some((u.to_string(), Zeroizing::new(p.to_string()))))
}

async fn enroll(
    State(a): State<Arc<Authority>>,
    Extension(admission): Extension<Admission>,
    Query(query): Query<EnrollQuery>,
    headers: HeaderMap,
    body: Bytes,
    label: Option<String>,
    op: Op,
) -> Result<Response, ApiError> {
    // Content-Type and the size were checked before the body (crate::gate);
    // the caller is authenticated once, in the worker call below.
    let activation = match headers.get(TPM_ACTIVATION_HEADER) {
        None => None,
        Some(v) => {
            let bad = || AuthorityError::malformed(format!("malformed {TPM_ACTIVATION_HEADER} header (ID:BASE64)"));
            let (id, secret) = v.to_str().map_err(|_| bad())?.split_once(':').ok_or_else(bad)?;
            let secret = base64::engine::general_purpose::STANDARD.decode(secret.trim()).map_err(|_| bad())?;
            Some((id.trim().to_string(), secret))
        }
    };
    let asked = Asked { op, batch: query.batch, activation };
    // A station's admission kept on its connection is dropped at its first
    // refusal: the next request is admitted afresh (crate::gate::Admission::admit_for).
    let peer = admission.peer();
    let enrolled = enrolled(a, admission, body, label, asked).await.inspect_err(|_| peer.forget())?;
    Ok(base64_answer(est::CT_CERTS_ONLY, &enrolled.pkcs7))
}

/// [`enroll`]'s work: admitted, verified, signed, recorded.
async fn enrolled(
    a: Arc<Authority>,
    admission: Admission,
    body: Bytes,
    label: Option<String>,
    asked: Asked,
) -> Result<Enrolled, AuthorityError> {
    // Verifying the request's signature, signing and the durable store write
    // block: keep them off the async workers. When every blocking thread is
    // taken, the record is queued for the store's group commit and awaited
    // here, holding no thread (crate::sched).
    let a2 = Arc::clone(&a);
    let step = blocking(move || {
        let caller = admission.admit_for(&a2, asked.batch.as_deref())?;
        // The body is decoded and the request parsed once, here: the
        // authority is handed the verified request.
        let csr = est::decode_body(&body)
            .and_then(|der| csr::parse_and_verify(&der))
            .map_err(|e| a2.refuse(&caller, asked.request(), e.into()))?;
        // A station's births (a factory line, over kept-alive connections)
        // are queued when threads are scarce, or always on PostgreSQL; a
        // device's own enrollment, whose connection's handshake keeps the
        // async worker busy, waits on its thread (crate::sched).
        if asked.batch.is_none() || !crate::sched::queue_birth() {
            return a2.enroll(label.as_deref(), &caller, asked.request(), &csr).map(Step::Answered);
        }
        Ok(match a2.enroll_queued(label.as_deref(), &caller, asked.request(), &csr) {
            Started::Answered(r) => Step::Answered(r?),
            // Made here, so that it is carried to its end also when the
            // client leaves before this closure returns.
            Started::Queued(q) => Step::Queued(Completion { a: a2, queued: Some(Box::new((q, caller, csr, asked))) }),
        })
    })
    .await??;
    match step {
        Step::Answered(e) => Ok(e),
        Step::Queued(completion) => completion.run().await,
    }
}

/// A queued record's wait and what follows it, carried to its end even when
/// the client leaves first (hyper then drops the request's future, and with
/// it this, or the blocking task's answer holding this): a certificate
/// recorded is counted and logged, a refusal by the store is audited, as
/// they are for a request that waited on its thread.
struct Completion {
    a: Arc<Authority>,
    queued: Option<Box<Waiting>>,
}

/// A queued record, and what its end needs: who asked, and what.
type Waiting = (Queued, Arc<Caller>, csr::VerifiedCsr, Asked);

impl Completion {
    async fn run(mut self) -> Result<Enrolled, AuthorityError> {
        let outcome = match self.queued.as_mut() {
            Some(q) => q.0.recording().await,
            None => return Err(AuthorityError::Config("a queued record was answered twice".into())),
        };
        match self.queued.take() {
            Some(queued) => finish(Arc::clone(&self.a), *queued, outcome).await,
            None => Err(AuthorityError::Config("a queued record was answered twice".into())),
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let Some(queued) = self.queued.take() else { return };
        // Outside a runtime (the server shutting down) the commit still happens; only the count is lost.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let a = Arc::clone(&self.a);
            rt.spawn(async move {
                let mut queued = *queued;
                let outcome = queued.0.recording().await;
                let _ = finish(a, queued, outcome).await;
            });
        }
    }
}

/// A queued record's outcome to the answer: the certificate, or (refused by
/// the store: a lost race, a serial collision, a quota) back to a blocking thread.
async fn finish(
    a: Arc<Authority>,
    (q, caller, csr, asked): Waiting,
    outcome: Result<(), iotpki_store::StoreError>,
) -> Result<Enrolled, AuthorityError> {
    match a.enroll_recorded(q, outcome) {
        Ok(e) => Ok(e),
        Err(u) => blocking(move || a.enroll_unrecorded(u, &caller, asked.request(), &csr)).await?,
    }
}

/// Where an enrollment's blocking part left it.
enum Step {
    /// Answered (recorded, or sent again).
    Answered(Enrolled),
    /// Signed, its record queued.
    Queued(Completion),
}

/// An enrollment's request, besides its CSR, owned (it crosses the await of the record).
struct Asked {
    op: Op,
    batch: Option<String>,
    activation: Option<(String, Vec<u8>)>,
}

impl Asked {
    fn request(&self) -> EnrollRequest<'_> {
        match self.op {
            Op::Enroll => EnrollRequest::Enroll {
                batch: self.batch.as_deref(),
                activation: self.activation.as_ref().map(|(id, s)| (id.as_str(), s.as_slice())),
            },
            Op::Reenroll => EnrollRequest::Reenroll,
        }
    }
}

/// Run blocking work (the store, signing, signature checks) off the async
/// workers, on a thread a little below them in the scheduler
/// ([`crate::sched`]). A worker that panicked is our failure (500), logged.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, AuthorityError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    crate::sched::spawn_blocking(f).await.map_err(|e| AuthorityError::Config(format!("worker failed: {e}")))
}

/// Run one TLS connection: handshake (bounded in time), then HTTP/1.1 with
/// the peer's chain attached to every request.
pub(crate) async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let started = tokio::time::Instant::now();
    let tls = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| format!("TLS handshake from {peer} timed out"))??;
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    let peer_chain = PeerChain::new(chain);
    let app = app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer_chain.clone());
        req
    });
    run_http(tls, peer, app, limits, started).await
}

/// One plain-HTTP connection (the public routes): the same limits, no TLS.
pub(crate) async fn serve_plain_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let started = tokio::time::Instant::now();
    run_http(tcp, peer, app.map_request(|r: axum::http::Request<hyper::body::Incoming>| r), limits, started).await
}

/// Largest buffer hyper keeps per connection: request head, and pipelined
/// requests read ahead (so a 350 KB header is refused, 431, unread).
const MAX_BUF: usize = 64 * 1024;

/// HTTP/1.1 on `io` with every connection limit: the header timeout, the
/// write and idle timeouts ([`crate::io::TimedIo`]), a bounded read-ahead
/// (pipelined requests are answered one at a time from a buffer of at most
/// [`MAX_BUF`]), at most `max_requests_per_connection` requests (the last
/// answer says `Connection: close`), and a lifetime cap counted from `started`.
async fn run_http<IO, S>(
    io: IO,
    peer: SocketAddr,
    app: S,
    limits: &Limits,
    started: tokio::time::Instant,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let served = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let max_requests = limits.max_requests_per_connection.max(1);
    // Header names in canonical case on the wire (crate::case), on both listeners.
    let case = crate::case::extensions().await;
    let svc = app
        .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            req
        })
        .map_response(move |mut r: Response| {
            let n = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n >= max_requests {
                r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r.extensions_mut().extend(case.clone());
            r
        });
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let io = crate::io::TimedIo::new(io, limits.write_timeout, limits.idle_timeout);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_BUF)
        .pipeline_flush(false)
        .title_case_headers(true)
        .preserve_header_case(true);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    let left = limits.connection_lifetime.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, conn).await {
        Ok(r) => r?,
        Err(_) => {
            tracing::debug!(%peer, "connection closed at its lifetime cap");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use iotpki_authority::Passphrase;
    use iotpki_core::clock::SystemClock;

    #[test]
    fn a_connections_leaf_is_keyed_once_and_shared_by_its_requests() {
        let leaf = vec![1u8, 2, 3];
        let conn = PeerChain::new(vec![CertificateDer::from(leaf.clone())]);
        let (first, second) = (conn.clone(), conn.clone());
        let key = first.rate_key().expect("a certificate has a key");
        assert_eq!(key, crate::limits::cert_key(&leaf));
        assert!(
            std::ptr::eq(key, second.rate_key().unwrap()),
            "the second request of a connection hashed its leaf again"
        );
        let other = PeerChain::new(vec![CertificateDer::from(vec![9u8; 5])]);
        assert_ne!(other.rate_key(), Some(key), "another certificate has another key");
        assert_eq!(PeerChain::default().rate_key(), None, "no certificate, no key");
    }

    /// The router without a socket (tower `oneshot`), with a real authority behind it.
    async fn call(app: Router, req: axum::http::Request<Body>) -> (StatusCode, String) {
        let mut req = req;
        req.extensions_mut().insert(PeerChain::default());
        call_on(app, req).await
    }

    /// [`call`], on the connection `req` names (its [`PeerChain`]).
    async fn call_on(app: Router, req: axum::http::Request<Body>) -> (StatusCode, String) {
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn authority() -> (tempfile::TempDir, Arc<Authority>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let pass = Passphrase::new("server unit test passphrase".into()).unwrap();
        iotpki_authority::init::init(&dir, &Default::default(), &pass, &SystemClock).unwrap();
        let a = Arc::new(Authority::open(&dir, &pass, Arc::new(SystemClock)).unwrap());
        (tmp, a)
    }

    fn post(path: &str, ct: &str, body: Vec<u8>) -> axum::http::Request<Body> {
        axum::http::Request::post(path).header(header::CONTENT_TYPE, ct).body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn limits_and_content_types_without_a_socket() {
        let (_tmp, a) = authority();
        let before = a.store().count_certificates().unwrap();
        let app = router(a.clone());
        // Over the enrollment limit, announced: 413 before anything else, with the limit.
        let big = vec![b'A'; crate::gate::ENROLL_MAX + 1];
        let mut req = post("/.well-known/est/simpleenroll", est::CT_PKCS10, big.clone());
        req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(big.len()));
        let (s, b) = call(app.clone(), req).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(b.contains(&format!("at most {} bytes", crate::gate::ENROLL_MAX)), "{b}");
        // Not announced, and no credentials: refused before the body is read.
        let (s, _) = call(app.clone(), post("/.well-known/est/simpleenroll", est::CT_PKCS10, big)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, b) = call(app.clone(), post("/.well-known/est/simpleenroll", "application/json", b"{}".to_vec())).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(b.contains("application/pkcs10"), "{b}");
        let (s, b) = call(app.clone(), post("/.well-known/est/simpleenroll", est::CT_PKCS10, b"AAAA".to_vec())).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(b.lines().count(), 1);
        // A false token is refused the same way, by the enrollment's worker call.
        let mut req = post("/.well-known/est/simpleenroll", est::CT_PKCS10, b"AAAA".to_vec());
        let junk = base64::engine::general_purpose::STANDARD.encode("SN-1:not-a-token");
        req.headers_mut().insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {junk}")).unwrap());
        let (s, b) = call(app.clone(), req).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
        assert!(b.contains("token"), "{b}");
        // What a false token can make the server read is bounded by the
        // enrollment's limit: past it, 413 (the body unannounced), nothing stored.
        let oversize = vec![b'A'; crate::gate::ENROLL_MAX + 1];
        let mut req = post("/.well-known/est/simpleenroll", est::CT_PKCS10, oversize);
        req.headers_mut().insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {junk}")).unwrap());
        let (s, b) = call(app.clone(), req).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
        let (s, _) =
            call(app.clone(), axum::http::Request::get("/.well-known/est/cacerts").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(app.clone(), axum::http::Request::get("/nowhere").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(a.store().count_certificates().unwrap(), before);
    }

    /// Batch `id` of `serials` with `quota`, and a station for it: the chain
    /// its client presents (as the TLS layer hands it on).
    fn station_line(a: &Authority, id: &str, serials: &[&str], quota: u64) -> PeerChain {
        use iotpki_core::keys::{KeyType, Signer as _, SoftKey};
        let now = iotpki_core::clock::Clock::now(&SystemClock);
        let nb = iotpki_authority::factory::NewBatch::open(
            id,
            "widget",
            serials.join("\n"),
            quota,
            (now - 60, now + 86_400),
        );
        iotpki_authority::factory::create_batch(a.store().as_ref(), &SystemClock, nb, "test").unwrap();
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let (cert, chain) = a.add_station(&format!("line-{id}"), &[id.into()], key.public_key_der(), "test").unwrap();
        PeerChain::new(std::iter::once(cert).chain(chain).map(CertificateDer::from).collect())
    }

    /// A station's request for the birth of device `serial` in `batch`, over `peer`.
    fn birth_request(serial: &str, batch: &str, peer: &PeerChain) -> axum::http::Request<Body> {
        use iotpki_core::keys::{KeyType, SoftKey};
        birth_request_with(serial, batch, peer, &SoftKey::generate(KeyType::EcdsaP256).unwrap())
    }

    /// [`birth_request`] for the device's key `key`.
    fn birth_request_with(
        serial: &str,
        batch: &str,
        peer: &PeerChain,
        key: &iotpki_core::keys::SoftKey,
    ) -> axum::http::Request<Body> {
        use iotpki_core::name::{DeviceSerial, NameBuilder};
        let serial = DeviceSerial::parse(serial).unwrap();
        let name = NameBuilder::default().common_name("device").unwrap().serial_number(&serial).unwrap().build();
        let der = iotpki_core::csr::build(&name, key, vec![]).unwrap();
        let body = base64::engine::general_purpose::STANDARD.encode(der).into_bytes();
        let mut req = post(&format!("/.well-known/est/birth/simpleenroll?batch={batch}"), est::CT_PKCS10, body);
        req.extensions_mut().insert(peer.clone());
        req
    }

    /// A station's births on one connection are admitted once: the station
    /// admitted for the first is taken again for the next ones. Its
    /// certificate revoked alone, or its key blocked, while the connection
    /// stays open: the next birth on it is refused by the transaction that
    /// would record it (nothing recorded), the kept admission is dropped,
    /// and the birth after that is refused at its admission.
    #[tokio::test]
    async fn a_station_admitted_on_a_connection_is_kept_until_a_refusal() {
        let (_tmp, a) = authority();
        let app = router(a.clone());
        for (batch, revoke) in [("BR", true), ("BB", false)] {
            let serials: Vec<String> = (1..=4).map(|n| format!("{batch}-{n}")).collect();
            let peer = station_line(&a, batch, &serials.iter().map(String::as_str).collect::<Vec<_>>(), 4);
            let birth = |n: u32| call_on(app.clone(), birth_request(&format!("{batch}-{n}"), batch, &peer));
            assert_eq!(birth(1).await.0, StatusCode::OK);
            let kept = peer.kept().expect("the station's admission is kept on its connection");
            assert_eq!(birth(2).await.0, StatusCode::OK);
            assert!(Arc::ptr_eq(&kept, &peer.kept().unwrap()), "the second birth was not admitted again");
            let leaf = iotpki_core::profile::cert_info(peer.leaf().unwrap()).unwrap();
            let store = a.store();
            match revoke {
                true => {
                    let target = iotpki_authority::revocation::Target::Serial(&leaf.serial);
                    iotpki_authority::revocation::revoke(store.as_ref(), &SystemClock, target, 1, "test").unwrap();
                }
                false => {
                    // The key's hash as the store recorded it with the certificate.
                    let spki = store.certificate(&leaf.serial).unwrap().unwrap().spki_sha256;
                    let keys = [(spki, "a firmware image".to_string())];
                    iotpki_authority::key_registry::block(
                        store.as_ref(),
                        &SystemClock,
                        &keys,
                        &[],
                        "leaked",
                        false,
                        "test",
                    )
                    .unwrap();
                }
            }
            let certs = store.count_certificates().unwrap();
            let (s, b) = birth(3).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
            assert!(b.contains("authenticates nothing"), "{b}");
            assert!(peer.kept().is_none(), "a refusal drops the kept admission");
            let (s, b) = birth(4).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
            assert!(!b.contains("authenticates nothing") && (b.contains("revoked") || b.contains("blocked")), "{b}");
            assert!(peer.kept().is_none());
            assert_eq!(store.count_certificates().unwrap(), certs, "nothing recorded");
            assert_eq!(store.batch(batch).unwrap().unwrap().issued, 2);
        }
    }

    /// When every blocking thread is taken, a station's births are queued
    /// for the store's group commit and awaited on the async worker: each
    /// answer comes once its certificate is recorded, and the one birth over
    /// the batch's quota is refused, recording nothing.
    #[tokio::test]
    async fn station_births_queued_when_threads_are_scarce_are_answered_once_recorded() {
        // No thread to spare: every birth takes the queued path (crate::sched).
        crate::sched::set_blocking_threads(0);
        queued_births_are_answered_once_recorded().await;
    }

    /// With threads to spare, once births are queued whatever the threads
    /// (as `iotpki serve` asks on PostgreSQL): while another connection
    /// holds the store's write lock, the first birth leads the commit on its
    /// thread and waits there for the lock; the four after it queue their
    /// records and give their threads back (waiting on their threads, they
    /// would hold four), and none is answered before its commit. Then four
    /// are answered, recorded, and the one over the quota is refused.
    #[tokio::test]
    async fn station_births_queued_whatever_the_threads_give_their_threads_back_and_are_answered_once_recorded() {
        crate::sched::queue_station_births();
        assert!(!crate::sched::threads_scarce());
        let (tmp, a) = authority();
        let serials = ["W-1", "W-2", "W-3", "W-4", "W-5"];
        let peer = station_line(&a, "BW", &serials, 4);
        let app = router(a.clone());
        let before = a.store().count_certificates().unwrap();
        let birth = |serial: &str| spawn_birth(&app, &a, serial, "BW", &peer);
        let lock = WriteLock::hold(&tmp, &a);
        let first = birth(serials[0]);
        // Well within the store's busy timeout (30 s), which would fail the leader's commit.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        lock.until_a_commit_waits(&a, until, "the first birth did not lead a commit").await;
        let handed = crate::sched::handed_out();
        let rest: Vec<_> = serials[1..].iter().map(|s| birth(s)).collect();
        // Each of the four takes a thread to be signed, then gives it back.
        let (mut started, mut held) = (0, 0);
        while started < 4 || held != 1 {
            assert!(
                std::time::Instant::now() < until,
                "{started} of 4 births on a thread, {held} threads held: the leader's alone expected"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            // Read in this order, a birth counted as started is in `held` until it gives its thread back.
            started = crate::sched::handed_out() - handed;
            held = crate::sched::in_flight();
        }
        // Signed (no request is left on a thread), not yet recorded: not answered.
        assert!(!first.is_finished() && rest.iter().all(|b| !b.is_finished()), "answered before recorded");
        assert_eq!(a.store().count_certificates().unwrap(), before);
        lock.release();
        four_born_one_over_the_quota(&a, "BW", std::iter::once(first).chain(rest).collect(), before).await;
    }

    /// Five births for a quota of four, queued (as `crate::sched` says): four
    /// answered once recorded, one refused, recording nothing.
    async fn queued_births_are_answered_once_recorded() {
        let (_tmp, a) = authority();
        let peer = station_line(&a, "BQ", &["Q-1", "Q-2", "Q-3", "Q-4", "Q-5"], 4);
        let app = router(a.clone());
        let before = a.store().count_certificates().unwrap();
        let births: Vec<_> = (1..=5).map(|i| spawn_birth(&app, &a, &format!("Q-{i}"), "BQ", &peer)).collect();
        four_born_one_over_the_quota(&a, "BQ", births, before).await;
    }

    /// Another connection's write lock on the authority's SQLite store:
    /// commits wait for it (up to the store's busy timeout, 30 s) until
    /// [`WriteLock::release`].
    struct WriteLock {
        conn: rusqlite::Connection,
        /// Commits led before the lock was taken.
        led: u64,
    }

    impl WriteLock {
        fn hold(tmp: &tempfile::TempDir, a: &Authority) -> Self {
            let conn = rusqlite::Connection::open(tmp.path().join("ca").join("store.db")).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            Self { conn, led: a.store().writer_stats().batch_size.snapshot().count }
        }

        /// Until a commit has been led since the lock was taken (its leader now waits for the lock).
        async fn until_a_commit_waits(&self, a: &Authority, until: std::time::Instant, what: &str) {
            while a.store().writer_stats().batch_size.snapshot().count == self.led {
                assert!(std::time::Instant::now() < until, "{what}");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }

        fn release(self) {
            self.conn.execute_batch("ROLLBACK").unwrap();
        }
    }

    /// The serial of the certificate in an EST answer's body.
    fn answered_serial(body: &str) -> String {
        let p7 = est::decode_body(body.as_bytes()).unwrap();
        let der = iotpki_core::pkcs7::parse_certs_only(&p7).unwrap().remove(0);
        iotpki_core::profile::cert_info(&der).unwrap().serial
    }

    /// A station's birth of `serial` in `batch` over `peer`, on a task of its
    /// own: its status and body; a certificate answered is checked to be in
    /// the store as the answer arrives.
    fn spawn_birth(
        app: &Router,
        a: &Arc<Authority>,
        serial: &str,
        batch: &str,
        peer: &PeerChain,
    ) -> tokio::task::JoinHandle<(StatusCode, String)> {
        let (app, a) = (app.clone(), a.clone());
        let req = birth_request(serial, batch, peer);
        tokio::spawn(async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
            if status == StatusCode::OK {
                let serial = answered_serial(&body);
                assert!(a.store().certificate(&serial).unwrap().is_some(), "{serial} answered before recorded");
            }
            (status, body)
        })
    }

    /// Five `births` in `batch` (quota 4): four born, one refused over the
    /// quota and counted; four certificates more than `before`.
    async fn four_born_one_over_the_quota(
        a: &Authority,
        batch: &str,
        births: Vec<tokio::task::JoinHandle<(StatusCode, String)>>,
        before: u64,
    ) {
        let mut answered = Vec::new();
        for b in births {
            answered.push(b.await.unwrap());
        }
        assert_eq!(answered.iter().filter(|(s, _)| *s == StatusCode::OK).count(), 4, "{answered:?}");
        let refused: Vec<_> = answered.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
        assert_eq!(refused.len(), 1, "{answered:?}");
        assert_eq!(refused[0].0, StatusCode::FORBIDDEN, "{refused:?}");
        assert!(refused[0].1.contains("quota"), "{refused:?}");
        assert_eq!(a.store().batch(batch).unwrap().unwrap().refused, 1);
        assert_eq!(a.store().count_certificates().unwrap(), before + 4);
    }

    /// A station whose client leaves while its queued birth waits for the
    /// commit does not take the rest with it: the birth the store refuses
    /// (over the quota) is refused, counted and audited all the same.
    #[tokio::test]
    async fn a_queued_birth_whose_client_left_is_still_carried_to_its_end() {
        crate::sched::set_blocking_threads(0);
        let (tmp, a) = authority();
        let peer = station_line(&a, "BL", &["L-1", "L-2"], 1);
        let app = router(a.clone());
        let birth = |serial: &str| tokio::spawn(app.clone().oneshot(birth_request(serial, "BL", &peer)));
        let (certs, audited) = (a.store().count_certificates().unwrap(), a.store().verify_audit().unwrap().entries);
        // Another connection's write lock holds the next commit.
        let lock = WriteLock::hold(&tmp, &a);
        // The first birth leads that commit (on its thread, waiting for the lock)...
        let first = birth("L-1");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        lock.until_a_commit_waits(&a, until, "the first birth did not lead a commit").await;
        // ...the second is queued behind it, and its client leaves before any answer.
        let second = birth("L-2");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        second.abort();
        assert!(second.await.unwrap_err().is_cancelled());
        lock.release();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        while a.store().batch("BL").unwrap().unwrap().refused == 0 {
            assert!(std::time::Instant::now() < until, "the left birth's refusal was not counted");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(a.store().count_certificates().unwrap(), certs + 1);
        let entries = a.store().audit_entries(audited + 1, 10).unwrap();
        let actions: Vec<_> = entries.iter().map(|e| e.event.action.as_str()).collect();
        assert_eq!(actions, ["birth", "refuse.enroll"], "the birth, then the left one's refusal");
    }

    /// A station whose client leaves before its birth's answer (its
    /// connection cut while the commit waits for the store's lock) asks again
    /// for the same device with the key the device kept: the birth recorded
    /// meanwhile is the answer, sent again (`birth.replay`), nothing issued
    /// or counted. The same serial with another key is refused.
    #[tokio::test]
    async fn a_birth_whose_client_left_before_its_answer_is_sent_again_to_the_same_key() {
        use iotpki_core::keys::{KeyType, SoftKey};
        let (tmp, a) = authority();
        let peer = station_line(&a, "BA", &["A-1"], 1);
        let app = router(a.clone());
        let certs = a.store().count_certificates().unwrap();
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        // Another connection's write lock holds the birth's commit; its client leaves meanwhile.
        let lock = WriteLock::hold(&tmp, &a);
        let first = tokio::spawn(app.clone().oneshot(birth_request_with("A-1", "BA", &peer, &key)));
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        lock.until_a_commit_waits(&a, until, "the birth did not reach the store").await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        lock.release();
        while a.store().count_certificates().unwrap() == certs {
            assert!(std::time::Instant::now() < until, "the birth whose client left was not recorded");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let born = a.store().born("A-1").unwrap().expect("born");
        // Asked again: the same certificate, nothing issued, no refusal counted.
        let (s, body) = call_on(app.clone(), birth_request_with("A-1", "BA", &peer, &key)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(answered_serial(&body), born.cert_serial);
        let batch = a.store().batch("BA").unwrap().unwrap();
        assert_eq!((a.store().count_certificates().unwrap(), batch.issued, batch.refused), (certs + 1, 1, 0));
        let last = a.store().audit_entries(a.store().verify_audit().unwrap().entries, 1).unwrap().remove(0);
        assert_eq!(
            (last.event.action.as_str(), last.event.target.as_str()),
            ("birth.replay", born.cert_serial.as_str())
        );
        // Another key for that serial: refused (over the quota, and born already).
        let (s, body) = call_on(app.clone(), birth_request("A-1", "BA", &peer)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(a.store().count_certificates().unwrap(), certs + 1);
    }

    #[tokio::test]
    async fn the_admin_api_refuses_a_caller_without_a_certificate() {
        let (_tmp, a) = authority();
        let app = router(a.clone());
        for (method, path) in [("GET", "/admin/v1/whoami"), ("POST", "/admin/v1/tokens"), ("GET", "/admin/v1/audit")] {
            let entries = a.store().verify_audit().unwrap().entries;
            let req = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .body(Body::from(r#"{"serial":"SN-1"}"#))
                .unwrap();
            let (s, b) = call(app.clone(), req).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {b}");
            assert_eq!(b.trim_end().lines().count(), 1, "{b}");
            assert!(b.contains("needs an admin certificate"), "{b}");
            assert_eq!(a.store().verify_audit().unwrap().entries, entries + 1, "{path}: the refusal alone is audited");
            let last = a.store().audit_entries(entries + 1, 1).unwrap().remove(0);
            assert_eq!((last.event.actor.as_str(), last.event.action.as_str()), ("anonymous", "refuse.admin"));
        }
    }
}
