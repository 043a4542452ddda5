//! Before a body: who may send one, and how big it may be.
//!
//! One table ([`rule`]) says, per endpoint, which caller it needs and the
//! largest body it takes. For every request, in this order and before any
//! byte of its body is read:
//!
//! 1. the URI is at most [`MAX_URI`] bytes (else 414);
//! 2. a `Content-Length` over the endpoint's limit is answered 413 at once;
//! 3. an enrollment's `Content-Type`, when given, must be PKCS#10 (else 415);
//! 4. the caller is authenticated where the endpoint needs it
//!    ([`Authority::admit`]: station, certificate, token or birth
//!    certificate, admin), else 401/403, audited; the [`Caller`] found goes
//!    to the handler as a request extension, so that the handler does not
//!    authenticate again (nor parse the client's certificate again);
//! 5. only then is the body read, through a reader capped at the limit
//!    (413 past it, whatever `Content-Length` said or did not say).
//!
//! An enrollment that presents a credential (a token, or a client
//! certificate) is the exception to the order of 4 and 5: its body, at most
//! [`ENROLL_MAX`], is read first, and its handler gets an [`Admission`] and
//! authenticates the caller in the same worker call as the enrollment, so
//! that a request costs one hand-off to a blocking thread instead of two
//! (issue #14's benchmark). The refusals and their audit entries are the
//! same; a false credential costs the server reading those 16 KiB at most. An
//! enrollment without any credential is refused at step 4, unread.
//!
//! | endpoint | caller | largest body |
//! |---|---|---|
//! | `POST …/simpleenroll` | one-time token or birth certificate | [`ENROLL_MAX`] |
//! | `POST …/simpleenroll?batch=` | factory station | [`ENROLL_MAX`] |
//! | `POST …/simplereenroll` | a certificate of ours | [`ENROLL_MAX`] |
//! | `POST /factory/tpm-challenge` | factory station | [`SMALL_JSON_MAX`] |
//! | `POST /factory/sync` | factory station | [`SYNC_MAX`] |
//! | `POST /factory/crl` | factory station (its delegated CA's CRL) | [`iotpki_core::crl::MAX_CRL_BYTES`] |
//! | `POST /admin/v1/batches` | admin | [`BATCH_MAX`] |
//! | `POST /admin/v1/…` (other) | admin | [`SMALL_JSON_MAX`] |
//! | `GET /admin/v1/openapi.json` | anyone (the API's description: no fleet data) | 0 |
//! | `POST /ocsp` | anyone | [`iotpki_core::ocsp::MAX_REQUEST_LEN`] |
//! | `POST /console/batches`, `/console/claims` | (the console's session or admin certificate) | [`BATCH_MAX`] |
//! | `GET /factory/…` | factory station | 0 |
//! | any other POST | (its handler decides) | [`SMALL_JSON_MAX`] |
//! | any other method | as its POST | 0 |

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use iotpki_authority::{Authority, AuthorityError, Caller, Credential, Gate};
use iotpki_core::est;

use crate::http::{basic_auth, blocking, ApiError, PeerChain};

/// Longest request URI (path and query), in bytes.
pub const MAX_URI: usize = 12 * 1024;
/// An EST enrollment: base64 of one PKCS#10 request (an RSA-4096 CSR is about 2.5 KB).
pub const ENROLL_MAX: usize = 16 * 1024;
/// A small JSON request (TPM challenge, admin actions).
pub const SMALL_JSON_MAX: usize = 64 * 1024;
/// A request to an endpoint that names no caller (a console form, OCSP aside):
/// what is read before anyone is known.
pub const ANONYMOUS_MAX: usize = 16 * 1024;
/// A batch with its allowlist (up to a million serials).
pub const BATCH_MAX: usize = 32 * 1024 * 1024;
/// One production record upload (stations upload in chunks well under it).
pub const SYNC_MAX: usize = 16 * 1024 * 1024;

/// What an endpoint needs before its body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rule {
    /// Who must be calling (`None`: the handler decides, or anyone).
    pub(crate) caller: Option<Gate>,
    /// The largest body taken.
    pub(crate) max_body: usize,
    /// Whether the body, if typed, must be a PKCS#10 request.
    pub(crate) pkcs10: bool,
    /// The body is handed on unread (capped at `max_body`): the endpoint
    /// knows its caller only after the gate, and reads it once it does (the
    /// console's forms that carry lists, [`crate::console`]).
    pub(crate) unread: bool,
}

/// The rule of the request `method path?query`. The caller an endpoint needs
/// does not depend on the method (a GET of `/admin/v1/...` needs an admin as a
/// POST does); only POST requests carry bodies, every other method's limit is 0.
pub(crate) fn rule(method: &Method, path: &str, query: Option<&str>) -> Rule {
    let est = path.strip_prefix("/.well-known/est/").map(|rest| rest.rsplit('/').next().unwrap_or(rest));
    let batch = query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("batch=")));
    let (caller, max_body, pkcs10) = match (est, path) {
        (Some("simpleenroll"), _) => {
            (Some(if batch { Gate::Station("refuse.enroll") } else { Gate::Enroll }), ENROLL_MAX, true)
        }
        (Some("simplereenroll"), _) => (Some(Gate::Certificate("refuse.reenroll")), ENROLL_MAX, true),
        (_, "/factory/tpm-challenge") => (Some(Gate::Station("refuse.tpm-challenge")), SMALL_JSON_MAX, false),
        (_, "/factory/sync") => (Some(Gate::Station("refuse.sync")), SYNC_MAX, false),
        (_, "/factory/crl") => (Some(Gate::Station("refuse.station")), iotpki_core::crl::MAX_CRL_BYTES, false),
        (_, p) if p.starts_with("/factory/") => (Some(Gate::Station("refuse.station")), SMALL_JSON_MAX, false),
        // The OpenAPI document holds no fleet data: any TLS client may read it
        // (this exact path only; every other one under /admin/ needs an admin).
        (_, crate::admin::OPENAPI_PATH) => (None, 0, false),
        (_, "/admin/v1/batches") => (Some(Gate::Admin), BATCH_MAX, false),
        (_, p) if p.starts_with("/admin/") => (Some(Gate::Admin), SMALL_JSON_MAX, false),
        (_, "/ocsp") => (None, iotpki_core::ocsp::MAX_REQUEST_LEN, false),
        // The console's forms that carry lists: a batch's allowlist, a births
        // file. Read by the console once it knows an admin sent them.
        (_, "/console/batches" | "/console/claims") => {
            let max_body = if method == Method::POST { BATCH_MAX } else { 0 };
            return Rule { caller: None, max_body, pkcs10: false, unread: true };
        }
        _ => (None, ANONYMOUS_MAX, false),
    };
    let max_body = if method == Method::POST { max_body } else { 0 };
    Rule { caller, max_body, pkcs10, unread: false }
}

/// The EST label a path names: `/.well-known/est/LABEL/OPERATION`.
fn est_label(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/.well-known/est/")?;
    rest.rsplit_once('/').map(|(label, _)| label)
}

fn too_large(method: &Method, path: &str, max: usize) -> Response {
    // The path is at most MAX_URI bytes here; cut it further for the one-line answer.
    let shown: String = path.chars().take(80).collect();
    ApiError::TooLarge { what: format!("{method} {shown}"), max }.into_response()
}

/// The middleware: steps 1 to 5 above.
pub(crate) async fn gate(State(a): State<Arc<Authority>>, req: Request, next: Next) -> Response {
    gate_with(a, req, next, true).await
}

/// The middleware of the public (plain-HTTP) routes: sizes only, as no route
/// there needs a caller (the others answer 404, unaudited).
pub(crate) async fn public_gate(State(a): State<Arc<Authority>>, req: Request, next: Next) -> Response {
    gate_with(a, req, next, false).await
}

async fn gate_with(a: Arc<Authority>, mut req: Request, next: Next, callers: bool) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI {
        return ApiError::UriTooLong { len: uri_len }.into_response();
    }
    let path = req.uri().path().to_string();
    let mut r = rule(req.method(), &path, req.uri().query());
    if !callers {
        r.caller = None;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > r.max_body as u64) {
        return too_large(req.method(), &path, r.max_body);
    }
    if r.pkcs10 {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = String::from_utf8_lossy(ct.as_bytes()).into_owned();
            let mime = ct.split(';').next().unwrap_or_default().trim();
            if !mime.eq_ignore_ascii_case(est::CT_PKCS10) {
                return ApiError::UnsupportedMediaType { got: ct.chars().take(80).collect() }.into_response();
            }
        }
    }
    if let Some(gate) = r.caller {
        let basic = match basic_auth(req.headers()) {
            Ok(b) => b,
            Err(e) => return ApiError::from(e).into_response(),
        };
        let admission = Admission {
            gate,
            label: est_label(&path).map(str::to_string),
            basic,
            chain: req.extensions().get::<PeerChain>().cloned().unwrap_or_default(),
        };
        if r.pkcs10 && admission.presents_credential() {
            // An enrollment (at most ENROLL_MAX bytes) with a credential is
            // admitted in the same worker call as the enrollment: one thread
            // hand-off, not two. One without is refused here, unread.
            req.extensions_mut().insert(admission);
        } else {
            match blocking(move || admission.admit(&a)).await {
                // The handler gets who was admitted, and does not authenticate again.
                Ok(Ok(caller)) => {
                    req.extensions_mut().insert(caller);
                }
                Ok(Err(e)) | Err(e) => return ApiError::from(e).into_response(),
            }
        }
    }
    let (parts, body) = req.into_parts();
    if r.unread {
        let body = Body::new(http_body_util::Limited::new(body, r.max_body));
        return next.run(Request::from_parts(parts, body)).await;
    }
    let method = parts.method.clone();
    let bytes = match http_body_util::Limited::new(body, r.max_body).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(&method, &path, r.max_body),
        Err(e) => return ApiError::UnreadableBody(e.to_string()).into_response(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// What the gate found to authenticate a caller with (step 4). An
/// enrollment's handler is given this rather than a [`Caller`]: the only way
/// to a caller is [`Admission::admit`], which it runs in its worker call.
#[derive(Clone)]
pub(crate) struct Admission {
    gate: Gate,
    label: Option<String>,
    /// HTTP Basic's user and password (zeroised when dropped).
    basic: Option<(String, zeroize::Zeroizing<String>)>,
    chain: PeerChain,
}

impl Admission {
    /// Whether the caller sent anything to be authenticated by.
    fn presents_credential(&self) -> bool {
        self.basic.is_some() || !self.chain.chain().is_empty()
    }

    /// The connection the request came on.
    pub(crate) fn peer(&self) -> PeerChain {
        self.chain.clone()
    }

    /// [`Self::admit`], for an enrollment of `batch` (a station's birth when
    /// given): the station admitted for an earlier birth on the same
    /// connection is taken again, with no read of the store and no parse of
    /// its certificate, while [`Authority::still_admitted`] says so; the
    /// birth's own transaction judges what may have changed since. Else it is
    /// admitted, and kept for the connection's next births.
    pub(crate) fn admit_for(&self, a: &Authority, batch: Option<&str>) -> Result<Arc<Caller>, AuthorityError> {
        let (Gate::Station(_), Some(batch)) = (self.gate, batch) else { return self.admit(a).map(Arc::new) };
        if let Some(kept) = self.chain.kept().filter(|c| a.still_admitted(c, batch)) {
            return Ok(kept);
        }
        let caller = Arc::new(self.admit(a)?);
        self.chain.keep(Arc::clone(&caller));
        Ok(caller)
    }

    /// [`Authority::admit`] (blocks: the store, and a refusal's audit entry).
    pub(crate) fn admit(&self, a: &Authority) -> Result<Caller, AuthorityError> {
        // A token if one is sent (a first enrollment), else the certificate.
        let cred = match (&self.basic, self.gate) {
            (Some((u, p)), Gate::Enroll) => Credential::Token { user: u, password: p },
            _ if !self.chain.chain().is_empty() => Credential::ClientCert(self.chain.chain()),
            _ => Credential::None,
        };
        a.admit(self.gate, self.label.as_deref(), cred)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_a_caller_and_a_limit_for_every_endpoint_with_a_body() {
        let post = |p: &str, q: Option<&str>| rule(&Method::POST, p, q);
        assert_eq!(post("/.well-known/est/simpleenroll", None).caller, Some(Gate::Enroll));
        assert_eq!(
            post("/.well-known/est/lbl/simpleenroll", Some("batch=B1")).caller,
            Some(Gate::Station("refuse.enroll"))
        );
        assert_eq!(post("/.well-known/est/lbl/simplereenroll", None).max_body, ENROLL_MAX);
        assert_eq!(post("/factory/sync", Some("batch=B1")).max_body, SYNC_MAX);
        assert_eq!(post("/factory/sync", None).caller, Some(Gate::Station("refuse.sync")));
        assert_eq!(post("/factory/crl", Some("batch=B1")).max_body, iotpki_core::crl::MAX_CRL_BYTES);
        assert_eq!(post("/admin/v1/tokens", None).caller, Some(Gate::Admin));
        assert_eq!(post("/ocsp", None), Rule { caller: None, max_body: 8 * 1024, pkcs10: false, unread: false });
        // No caller named: what is read before anyone is known is small...
        assert_eq!(post("/console/login", None).max_body, ANONYMOUS_MAX);
        assert_eq!(post("/no/such/path", Some("batch=B1")).max_body, ANONYMOUS_MAX);
        // ...but for the console's lists, handed on unread to the console, which reads them for an admin only.
        assert_eq!(
            post("/console/batches", None),
            Rule { caller: None, max_body: BATCH_MAX, pkcs10: false, unread: true }
        );
        assert!(post("/console/claims", None).unread);
        assert_eq!(rule(&Method::GET, "/console/claims", None).max_body, 0);
        assert_eq!(rule(&Method::GET, "/factory/sync", None).max_body, 0);
        assert_eq!(rule(&Method::GET, "/admin/v1/audit", None).caller, Some(Gate::Admin));
        // The OpenAPI document is the one admin path anyone may GET; no other is let through with it.
        assert_eq!(
            rule(&Method::GET, "/admin/v1/openapi.json", None),
            Rule { caller: None, max_body: 0, pkcs10: false, unread: false }
        );
        assert_eq!(rule(&Method::POST, "/admin/v1/openapi.json", None).max_body, 0);
        for p in [
            "/admin/v1/openapi.json/",
            "/admin/v1/openapi.jsonx",
            "/admin/v1/openapi.json/../whoami",
            "/admin/v2/openapi.json",
        ] {
            assert_eq!(rule(&Method::GET, p, None).caller, Some(Gate::Admin), "{p}");
        }
        for r in crate::admin::table() {
            let want = if r.path == crate::admin::OPENAPI_PATH { None } else { Some(Gate::Admin) };
            assert_eq!(rule(&r.method, r.path, None).caller, want, "{} {}", r.method, r.path);
        }
        assert_eq!(rule(&Method::GET, "/factory/batches/B1", None).caller, Some(Gate::Station("refuse.station")));
        assert_eq!(rule(&Method::GET, "/.well-known/est/cacerts", None).caller, None);
    }
}
