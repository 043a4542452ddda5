//! The admin API under `/admin/v1/`: JSON over the TLS listener, for admins
//! with an admin certificate (mutual TLS). Every request is authenticated by
//! [`Authority::admin`]; no certificate is a 401, any other certificate a 403,
//! each with a one-line reason. What an admin does is audited with its name.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET  | `/admin/v1/whoami` | the admin's name and certificate serial |
//! | GET  | `/admin/v1/certificates?device=&ca=&profile=&limit=` | certificates, newest first |
//! | GET  | `/admin/v1/certificates/SERIAL` | one certificate, with its PEM |
//! | POST | `/admin/v1/certificates/SERIAL/revoke` | revoke it; body `{"reason": "keyCompromise"}` (optional) |
//! | POST | `/admin/v1/devices/SERIAL/revoke` | revoke every certificate of a device (and its ownership) |
//! | GET  | `/admin/v1/batches` | batches |
//! | POST | `/admin/v1/batches` | create one: `{"id", "product", "serials": [..], "quota", "from", "until"}` (RFC 3339), optionally `"profile": "matter-dac", "vendor_id", "product_id"` |
//! | GET  | `/admin/v1/batches/ID` | one batch |
//! | POST | `/admin/v1/batches/ID/close` | close it |
//! | GET  | `/admin/v1/audit?from=&limit=` | audit entries |
//! | GET  | `/admin/v1/audit/verify` | walk the audit chain |
//! | POST | `/admin/v1/tokens` | a one-time enrollment token: `{"serial", "ttl_secs"}` |
//! | GET  | `/admin/v1/keys/blocked` | the blocked keys |
//! | POST | `/admin/v1/keys/block` | block keys: `{"spki_sha256": [..], "reason", "revoke"}` (docs/leaked-keys.md) |
//! | GET  | `/admin/v1/keys/HASH` | whose key it is, its certificates, whether it is blocked |
//! | GET  | `/admin/v1/openapi.json` | this API as an OpenAPI 3.1 document (any TLS client: it holds no fleet data) |
//!
//! The OpenAPI document is generated from this file ([`ApiDoc`]): each
//! handler's `#[utoipa::path]` says its method, path, parameters, body and
//! every status it answers with; the answers' schemas are derived from
//! [`iotpki_core::wire`] (its `openapi` feature). [`table`] is the one list
//! of routes; a test checks that the document describes exactly these.
//!
//! The answers are the types of [`iotpki_core::wire`] ([`wire::CertRecord`],
//! [`wire::Batch`], [`wire::Revoked`], ...), rendered from the store's records
//! by [`crate::views`], as the CLI's `--json` output is: a revoked certificate
//! carries its reason by RFC 5280 name (`reason`) and code (`reason_code`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::response::Response;
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Router};
use iotpki_authority::admin::Admin;
use iotpki_authority::factory::{self, NewBatch};
use iotpki_authority::revocation::Target;
use iotpki_authority::{Authority, AuthorityError, Caller};
use iotpki_core::name::DeviceSerial;
use iotpki_core::time::rfc3339;
use iotpki_core::wire;
use iotpki_store::CertQuery;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::openapi::security::SecurityScheme;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::http::{blocking, json as json_answer, ApiError};
use crate::views;

/// Where the OpenAPI document is served (to any TLS client: [`crate::gate`]).
pub(crate) const OPENAPI_PATH: &str = "/admin/v1/openapi.json";

/// One admin route: its method, its path (axum's syntax, which is OpenAPI's) and its handler.
pub(crate) struct Route {
    // Read by the tests that hold the table against the document and the gate.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    handler: MethodRouter<Arc<Authority>>,
}

fn get_route<H: Handler<T, Arc<Authority>>, T: 'static>(path: &'static str, h: H) -> Route {
    Route { method: Method::GET, path, handler: get(h) }
}

fn post_route<H: Handler<T, Arc<Authority>>, T: 'static>(path: &'static str, h: H) -> Route {
    Route { method: Method::POST, path, handler: post(h) }
}

/// Every admin route, the one list the router is built from. A route added
/// here needs its `#[utoipa::path]` in [`ApiDoc`]: a test compares the two.
pub(crate) fn table() -> Vec<Route> {
    vec![
        get_route("/admin/v1/whoami", whoami),
        get_route("/admin/v1/certificates", list_certs),
        get_route("/admin/v1/certificates/{serial}", show_cert),
        post_route("/admin/v1/certificates/{serial}/revoke", revoke_cert),
        post_route("/admin/v1/devices/{serial}/revoke", revoke_device),
        get_route("/admin/v1/batches", list_batches),
        post_route("/admin/v1/batches", create_batch),
        get_route("/admin/v1/batches/{id}", show_batch),
        post_route("/admin/v1/batches/{id}/close", close_batch),
        get_route("/admin/v1/audit", audit_list),
        get_route("/admin/v1/audit/verify", audit_verify),
        post_route("/admin/v1/tokens", create_token),
        get_route("/admin/v1/keys/blocked", blocked_keys),
        post_route("/admin/v1/keys/block", block_keys),
        get_route("/admin/v1/keys/{hash}", show_key),
        get_route(OPENAPI_PATH, openapi),
    ]
}

/// The admin routes (merged into the TLS router): those of [`table`]. Two
/// routes of one path (GET and POST) are merged into one.
pub(crate) fn routes() -> Router<Arc<Authority>> {
    table().into_iter().fold(Router::new(), |r, route| r.route(route.path, route.handler))
}

/// Run `f` as the admin the gate admitted (not authenticated again), off the
/// async workers (the store blocks).
async fn as_admin<F, T>(a: Arc<Authority>, caller: Caller, f: F) -> Result<Response, ApiError>
where
    F: FnOnce(&Admin<'_>) -> Result<T, AuthorityError> + Send + 'static,
    T: serde::Serialize + Send + 'static,
{
    let v = blocking(move || {
        let admin = a.admin_of(&caller)?;
        f(&admin)
    })
    .await??;
    Ok(json_answer(v))
}

/// The query, or a one-line 400 that says what is wrong with it.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError::from(AuthorityError::malformed(e.body_text())))
}

/// A JSON request body (an empty body is `{}`), refused with a one-line reason.
fn body<T: DeserializeOwned>(b: &[u8]) -> Result<T, AuthorityError> {
    let b = if b.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { b };
    serde_json::from_slice(b)
        .map_err(|e| AuthorityError::malformed(format!("the request body is not the JSON expected: {e}")))
}

#[utoipa::path(
    get,
    path = "/admin/v1/whoami",
    operation_id = "whoami",
    tag = "admin",
    summary = "The admin calling",
    responses(
        (status = 200, description = "The admin's name and the serial of the certificate it called with.", body = wire::Whoami),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn whoami(State(a): State<Arc<Authority>>, Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    as_admin(a, caller, |adm| {
        let (name, serial) = adm.whoami()?;
        Ok(wire::Whoami { admin: name, cert_serial: serial })
    })
    .await
}

/// `GET /admin/v1/certificates`'s filters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CertsQuery {
    /// Only the certificates of this device serial.
    device: Option<String>,
    /// Only those issued by this CA (`manufacturing`, `operational`, ...).
    ca: Option<String>,
    /// Only those of this profile (`device`, `birth`, `admin`, ...).
    profile: Option<String>,
    /// At most this many.
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/admin/v1/certificates",
    operation_id = "list_certs",
    tag = "admin",
    summary = "Certificates, newest first",
    params(CertsQuery),
    responses(
        (status = 200, description = "The certificates that match, newest first (without their PEM).", body = Vec<wire::CertRecord>),
        (status = 400, description = "The request is malformed (its body, query or path): one line saying what was wrong.", body = String, content_type = "text/plain"),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn list_certs(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<CertsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    as_admin(a, caller, move |adm| {
        let q = CertQuery {
            device_serial: q.device,
            ca: q.ca,
            expiring_before: None,
            expiring_after: None,
            limit: q.limit,
            profile: q.profile,
        };
        Ok(adm.certificates(q)?.iter().map(views::cert_record).collect::<Vec<_>>())
    })
    .await
}

#[utoipa::path(
    get,
    path = "/admin/v1/certificates/{serial}",
    operation_id = "show_cert",
    tag = "admin",
    summary = "One certificate, with its PEM",
    params(("serial" = String, Path, description = "The certificate serial, hex.")),
    responses(
        (status = 200, description = "The certificate's record and its PEM.", body = wire::CertRecord),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 404, description = "No certificate with this serial.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn show_cert(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Path(serial): Path<String>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| {
        let r = adm.certificate(&serial)?;
        Ok(wire::CertRecord { pem: Some(iotpki_core::pem::encode("CERTIFICATE", &r.der)), ..views::cert_record(&r) })
    })
    .await
}

/// A revocation's body (optional: an empty body is `{}`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    /// The RFC 5280 CRLReason, by name (any case): `unspecified`, `keyCompromise`,
    /// `cACompromise`, `affiliationChanged`, `superseded`, `cessationOfOperation`,
    /// `certificateHold`, `removeFromCRL`, `privilegeWithdrawn`, `aACompromise`.
    #[serde(default = "unspecified")]
    #[schema(default = "unspecified", example = "keyCompromise")]
    reason: String,
}

fn unspecified() -> String {
    "unspecified".into()
}

#[utoipa::path(
    post,
    path = "/admin/v1/certificates/{serial}/revoke",
    operation_id = "revoke_cert",
    tag = "admin",
    summary = "Revoke a certificate",
    params(("serial" = String, Path, description = "The certificate serial, hex.")),
    request_body(content = RevokeBody, content_type = "application/json"),
    responses(
        (status = 200, description = "What was revoked, and why.", body = wire::Revoked),
        (status = 400, description = "The request is malformed (its body, query or path): one line saying what was wrong.", body = String, content_type = "text/plain"),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 404, description = "No certificate with this serial.", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than the endpoint takes.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn revoke_cert(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Path(serial): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| {
        let r: Result<u8, AuthorityError> =
            body::<RevokeBody>(&b).and_then(|rb| Ok(iotpki_core::crl::reason_code(&rb.reason)?));
        let reason = refuse_bad_input(adm, r, "revoke", &serial)?;
        Ok(wire::Revoked::new(adm.revoke(Target::Serial(&serial), reason)?, reason))
    })
    .await
}

#[utoipa::path(
    post,
    path = "/admin/v1/devices/{serial}/revoke",
    operation_id = "revoke_device",
    tag = "admin",
    summary = "Revoke every certificate of a device (and its ownership)",
    params(("serial" = String, Path, description = "The device serial.")),
    request_body(content = RevokeBody, content_type = "application/json"),
    responses(
        (status = 200, description = "What was revoked, and why.", body = wire::Revoked),
        (status = 400, description = "The request is malformed (its body, query or path): one line saying what was wrong.", body = String, content_type = "text/plain"),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 404, description = "The device has no certificate to revoke.", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than the endpoint takes.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn revoke_device(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Path(serial): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| {
        let r = body::<RevokeBody>(&b).and_then(|rb| {
            let reason = iotpki_core::crl::reason_code(&rb.reason)?;
            let d =
                DeviceSerial::parse(&serial).map_err(|e| AuthorityError::malformed(format!("device serial: {e}")))?;
            Ok((reason, d))
        });
        let (reason, d) = refuse_bad_input(adm, r, "revoke", &format!("device:{serial}"))?;
        Ok(wire::Revoked::new(adm.revoke(Target::Device(&d), reason)?, reason))
    })
    .await
}

/// Input the admin sent that is refused before any authority call: audited as a refusal too.
fn refuse_bad_input<T>(
    adm: &Admin<'_>,
    r: Result<T, AuthorityError>,
    action: &str,
    target: &str,
) -> Result<T, AuthorityError> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => Err(adm.refused(e, action, target)),
    }
}

#[utoipa::path(
    get,
    path = "/admin/v1/batches",
    operation_id = "list_batches",
    tag = "admin",
    summary = "Production batches",
    responses(
        (status = 200, description = "Every batch.", body = Vec<wire::Batch>),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn list_batches(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, |adm| Ok(adm.batches()?.iter().map(views::batch).collect::<Vec<_>>())).await
}

#[utoipa::path(
    get,
    path = "/admin/v1/batches/{id}",
    operation_id = "show_batch",
    tag = "admin",
    summary = "One batch",
    params(("id" = String, Path, description = "The batch id.")),
    responses(
        (status = 200, description = "The batch.", body = wire::Batch),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 404, description = "No batch with this id.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn show_batch(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| Ok(views::batch(&adm.batch(&id)?))).await
}

/// A new production batch.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    /// Its id (one is made when absent).
    id: Option<String>,
    /// The product.
    product: String,
    /// The device serials it may give birth to (its allowlist).
    serials: Vec<String>,
    /// Births allowed.
    quota: u64,
    /// First second of its window, RFC 3339 (default: now).
    from: Option<String>,
    /// First second after it, RFC 3339 (default: 90 days after `from`).
    until: Option<String>,
    /// What its births get: `device` (default) or `matter-dac` (docs/matter.md).
    profile: Option<String>,
    /// A `matter-dac` batch's Matter Vendor ID: four hex digits.
    vendor_id: Option<String>,
    /// A `matter-dac` batch's Matter Product ID: four hex digits.
    product_id: Option<String>,
    /// The certificate template its births get (docs/templates.md; default: the
    /// birth label's, else the built-in device profile). The config must have it.
    template: Option<String>,
    /// Its births must prove their key is in the TPM whose EK is registered
    /// for their serial (docs/tpm.md; default: no). Fixed with the batch.
    #[serde(default)]
    require_tpm_attestation: bool,
}

pub(crate) fn parse_time(field: &str, s: &str) -> Result<i64, AuthorityError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| AuthorityError::malformed(format!("{field}: {s:?} is not an RFC 3339 time: {e}")))
}

#[utoipa::path(
    post,
    path = "/admin/v1/batches",
    operation_id = "create_batch",
    tag = "admin",
    summary = "Create a production batch",
    request_body(content = BatchBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The batch created.", body = wire::Batch),
        (status = 400, description = "The request is malformed (its body, query or path): one line saying what was wrong.", body = String, content_type = "text/plain"),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than the endpoint takes.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn create_batch(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    b: Bytes,
) -> Result<Response, ApiError> {
    as_admin(a.clone(), caller, move |adm| {
        let now = iotpki_authority::Clock::now(a.clock().as_ref());
        let r = body::<BatchBody>(&b).and_then(|bb| {
            let from = bb.from.as_deref().map(|s| parse_time("from", s)).transpose()?.unwrap_or(now);
            let until = bb.until.as_deref().map(|s| parse_time("until", s)).transpose()?.unwrap_or(from + 90 * 86_400);
            if bb.serials.iter().any(|s| s.contains(['\n', '\r', ','])) {
                return Err(AuthorityError::malformed("a serial in \"serials\" holds a line break or a comma".into()));
            }
            let profile =
                factory::batch_profile(bb.profile.as_deref(), bb.vendor_id.as_deref(), bb.product_id.as_deref())?;
            Ok(NewBatch {
                id: bb.id,
                product: bb.product,
                allowlist: bb.serials.join("\n"),
                quota: bb.quota,
                from,
                until,
                profile,
                template: bb.template,
                tpm_attestation: bb.require_tpm_attestation,
            })
        });
        let nb = refuse_bad_input(adm, r, "batch.create", "")?;
        Ok(views::batch(&adm.create_batch(nb)?))
    })
    .await
}

#[utoipa::path(
    post,
    path = "/admin/v1/batches/{id}/close",
    operation_id = "close_batch",
    tag = "admin",
    summary = "Close a batch: no more births in it",
    params(("id" = String, Path, description = "The batch id.")),
    responses(
        (status = 200, description = "The batch closed.", body = wire::Closed),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 404, description = "No batch with this id.", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than the endpoint takes.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn close_batch(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| {
        adm.close_batch(&id)?;
        Ok(wire::Closed { closed: id })
    })
    .await
}

/// `GET /admin/v1/audit`'s range.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// The first entry's place in the chain (default 1).
    from: Option<u64>,
    /// At most this many entries (default 100).
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/admin/v1/audit",
    operation_id = "audit_list",
    tag = "admin",
    summary = "Audit entries",
    params(AuditQuery),
    responses(
        (status = 200, description = "The audit entries from `from` on, at most `limit`.", body = Vec<wire::AuditEntry>),
        (status = 400, description = "The request is malformed (its body, query or path): one line saying what was wrong.", body = String, content_type = "text/plain"),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn audit_list(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    as_admin(a, caller, move |adm| {
        let entries = adm.audit_entries(q.from.unwrap_or(1), q.limit.unwrap_or(100))?;
        Ok(entries
            .into_iter()
            .map(|e| wire::AuditEntry {
                seq: e.seq,
                at: rfc3339(e.event.at),
                actor: e.event.actor,
                action: e.event.action,
                target: e.event.target,
                detail: e.event.detail,
                hash: e.hash,
            })
            .collect::<Vec<_>>())
    })
    .await
}

#[utoipa::path(
    get,
    path = "/admin/v1/audit/verify",
    operation_id = "audit_verify",
    tag = "admin",
    summary = "Walk the audit chain",
    responses(
        (status = 200, description = "Whether the chain verifies: its length and head, or what is wrong.", body = wire::AuditVerified),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn audit_verify(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, |adm| {
        Ok(match adm.verify_audit()? {
            Ok(r) => wire::AuditVerified { ok: true, entries: Some(r.entries), head: Some(r.head), problem: None },
            Err(problem) => wire::AuditVerified { ok: false, entries: None, head: None, problem: Some(problem) },
        })
    })
    .await
}

/// A one-time enrollment token's request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// The device serial it is for.
    serial: String,
    /// How long it is valid, seconds (the authority's default when absent).
    ttl_secs: Option<u64>,
    /// The certificate template its enrollment gets (docs/templates.md; default:
    /// the label's, else the built-in device profile). The config must have it.
    template: Option<String>,
}

#[utoipa::path(
    post,
    path = "/admin/v1/tokens",
    operation_id = "create_token",
    tag = "admin",
    summary = "A one-time enrollment token for a device",
    request_body(content = TokenBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The token (shown once).", body = wire::TokenCreated),
        (status = 400, description = "The request is malformed (its body, query or path): one line saying what was wrong.", body = String, content_type = "text/plain"),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than the endpoint takes.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn create_token(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    b: Bytes,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| {
        let tb = refuse_bad_input(adm, body::<TokenBody>(&b), "token.create", "")?;
        let token = adm.create_token_with_template(&tb.serial, tb.ttl_secs, tb.template.as_deref())?;
        Ok(wire::TokenCreated { serial: tb.serial, token })
    })
    .await
}

#[utoipa::path(
    get,
    path = "/admin/v1/keys/blocked",
    operation_id = "blocked_keys",
    tag = "admin",
    summary = "The blocked keys",
    responses(
        (status = 200, description = "Every blocked key.", body = Vec<wire::BlockedKey>),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn blocked_keys(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, |adm| Ok(adm.blocked_keys()?.iter().map(views::blocked_key).collect::<Vec<_>>())).await
}

#[utoipa::path(
    get,
    path = "/admin/v1/keys/{hash}",
    operation_id = "show_key",
    tag = "admin",
    summary = "Whose key it is, its certificates, whether it is blocked",
    params(("hash" = String, Path, description = "SHA-256 of the key's SubjectPublicKeyInfo, 64 hex digits.")),
    responses(
        (status = 200, description = "What the key registry knows of the key.", body = wire::KeyRegistry),
        (status = 400, description = "The request is malformed (its body, query or path): one line saying what was wrong.", body = String, content_type = "text/plain"),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn show_key(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| Ok(views::key_registry(&adm.key(&hash)?))).await
}

/// Keys to block.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    /// SHA-256 of each key's SubjectPublicKeyInfo, 64 hex digits.
    spki_sha256: Vec<String>,
    /// Why (kept with each key).
    #[serde(default = "compromised")]
    #[schema(default = "compromised")]
    reason: String,
    /// Also revoke (keyCompromise) the good certificates of these keys that are not a CA's.
    #[serde(default)]
    revoke: bool,
}

fn compromised() -> String {
    "compromised".into()
}

#[utoipa::path(
    post,
    path = "/admin/v1/keys/block",
    operation_id = "block_keys",
    tag = "admin",
    summary = "Block keys by the SHA-256 of their SubjectPublicKeyInfo (docs/leaked-keys.md)",
    request_body(content = BlockBody, content_type = "application/json"),
    responses(
        (status = 200, description = "What was blocked and revoked.", body = wire::KeysBlocked),
        (status = 400, description = "The request is malformed (its body, query or path): one line saying what was wrong.", body = String, content_type = "text/plain"),
        (status = 401, description = "No client certificate, or one this authority did not issue.", body = String, content_type = "text/plain"),
        (status = 403, description = "The client certificate is not a valid admin certificate (another role's, revoked or expired), or the authority refuses the action.", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than the endpoint takes.", body = String, content_type = "text/plain"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
        (status = 503, description = "The authority cannot record anything now (its store is away): retry later.", body = String, content_type = "text/plain",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn block_keys(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    b: Bytes,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| {
        let bb = refuse_bad_input(adm, body::<BlockBody>(&b), "key.block", "")?;
        Ok(views::keys_blocked(&adm.block_keys(&bb.spki_sha256, &bb.reason, bb.revoke)?))
    })
    .await
}

/// The admin API's OpenAPI 3.1 document, generated from the handlers'
/// `#[utoipa::path]` and the wire types' schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "iotpki admin API",
        description = "The admin API of an iotpki authority: JSON over its TLS listener (TLS 1.3), for admins \
            with an admin certificate (`iotpki admin add`), mutual TLS. Errors are one line of text/plain. \
            Every admin action is audited with the admin's name."
    ),
    paths(
        whoami,
        list_certs,
        show_cert,
        revoke_cert,
        revoke_device,
        list_batches,
        create_batch,
        show_batch,
        close_batch,
        audit_list,
        audit_verify,
        create_token,
        blocked_keys,
        block_keys,
        show_key,
        openapi
    ),
    modifiers(&Finish),
    security(("mutualTLS" = [])),
    tags((name = "admin", description = "Certificates, batches, tokens, the key registry and the audit log."))
)]
pub(crate) struct ApiDoc;

/// What the derives cannot say: the `mutualTLS` security scheme every
/// operation but the document's own needs; a certificate record's revocation
/// fields (flattened when present, [`wire::CertRecord::revocation`]); and the
/// bodies that may be empty (read as `{}`).
struct Finish;

/// The operations whose request body may be empty.
const OPTIONAL_BODY: [&str; 2] = ["revoke_cert", "revoke_device"];

impl utoipa::Modify for Finish {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, Required, Schema};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "mutualTLS",
            SecurityScheme::MutualTls {
                description: Some(
                    "An admin certificate (`iotpki admin add`) issued by this authority, not revoked nor expired."
                        .into(),
                ),
                extensions: None,
            },
        );
        let revocation = <wire::Revocation as utoipa::PartialSchema>::schema();
        if let (Some(RefOr::T(Schema::Object(record))), RefOr::T(Schema::Object(revocation))) =
            (components.schemas.get_mut("CertRecord"), revocation)
        {
            for (name, field) in revocation.properties {
                let field = match field {
                    RefOr::T(Schema::Object(mut o)) => {
                        let d = o.description.take().unwrap_or_default();
                        o.description = Some(format!("Only when revoked. {d}"));
                        RefOr::T(Schema::Object(o))
                    }
                    other => other,
                };
                record.properties.insert(name, field);
            }
        }
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                // The rate limiter (crate::limits) stands before every admin route.
                op.responses.responses.insert("429".into(), RefOr::T(too_many()));
                if op.operation_id.as_deref().is_some_and(|id| OPTIONAL_BODY.contains(&id)) {
                    if let Some(body) = op.request_body.as_mut() {
                        body.required = Some(Required::False);
                    }
                }
            }
        }
    }
}

/// The answer of the rate limiter ([`crate::limits`]), which stands before every admin route.
fn too_many() -> utoipa::openapi::Response {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{ContentBuilder, HeaderBuilder, ResponseBuilder};
    ResponseBuilder::new()
        .description("Too many requests from this client, or too many refused requests from this address: retry later.")
        .content(
            "text/plain",
            ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::String))).build(),
        )
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)))
                .description(Some("Seconds to wait before retrying."))
                .build(),
        )
        .build()
}

/// The admin API's OpenAPI document, JSON (what `GET /admin/v1/openapi.json` answers).
pub fn openapi_json() -> String {
    // Serializing the document cannot fail: string keys and no floats.
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

#[utoipa::path(
    get,
    path = "/admin/v1/openapi.json",
    operation_id = "openapi",
    tag = "admin",
    summary = "This document",
    security(()),
    responses(
        (status = 200, description = "The admin API's OpenAPI 3.1 document.", body = Object, content_type = "application/json"),
        (status = 414, description = "The request URI (path and query) is longer than 12 KiB.", body = String, content_type = "text/plain"),
    )
)]
async fn openapi() -> Response {
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(openapi_json);
    let mut r = Response::new(axum::body::Body::from(DOC.as_str()));
    r.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each `(METHOD, path)` of the document's operations, sorted.
    fn documented(doc: &serde_json::Value) -> Vec<(String, String)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(k, _)| k) {
                if ["get", "put", "post", "delete", "options", "head", "patch", "trace"].contains(&method.as_str()) {
                    ops.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        ops.sort();
        ops
    }

    #[test]
    fn the_document_describes_exactly_the_routes_of_the_router() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut routed: Vec<(String, String)> =
            table().iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
        routed.sort();
        let n = routed.len();
        routed.dedup();
        assert_eq!(routed.len(), n, "a route is listed twice");
        assert_eq!(documented(&doc), routed, "every admin route, and only those, has its operation in ApiDoc");
    }

    #[test]
    fn every_operation_but_the_document_needs_an_admin_certificate() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        assert_eq!(doc["components"]["securitySchemes"]["mutualTLS"]["type"], "mutualTLS");
        assert_eq!(doc["security"], serde_json::json!([{"mutualTLS": []}]));
        for (method, path) in documented(&doc) {
            let op = &doc["paths"][&path][method.to_lowercase()];
            if path == OPENAPI_PATH {
                assert_eq!(op["security"], serde_json::json!([{}]), "{path}");
            } else {
                assert!(op.get("security").is_none(), "{method} {path} overrides the admin certificate");
                assert!(op["responses"]["401"].is_object() && op["responses"]["403"].is_object(), "{method} {path}");
            }
        }
    }
}
