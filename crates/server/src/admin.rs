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
//! | POST | `/admin/v1/batches` | create one: `{"id", "product", "serials": [..], "quota", "from", "until"}` (RFC 3339) |
//! | GET  | `/admin/v1/batches/ID` | one batch |
//! | POST | `/admin/v1/batches/ID/close` | close it |
//! | GET  | `/admin/v1/audit?from=&limit=` | audit entries |
//! | GET  | `/admin/v1/audit/verify` | walk the audit chain |
//! | POST | `/admin/v1/tokens` | a one-time enrollment token: `{"serial", "ttl_secs"}` |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use iotpki_authority::admin::Admin;
use iotpki_authority::factory::NewBatch;
use iotpki_authority::revocation::Target;
use iotpki_authority::{Authority, AuthorityError, Caller};
use iotpki_core::name::DeviceSerial;
use iotpki_core::time::rfc3339;
use iotpki_store::{BatchRecord, BatchStatus, CertQuery, CertRecord, CertStatus};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{blocking, json as json_answer, ApiError};

/// The admin routes (merged into the TLS router).
pub(crate) fn routes() -> Router<Arc<Authority>> {
    Router::new()
        .route("/admin/v1/whoami", get(whoami))
        .route("/admin/v1/certificates", get(list_certs))
        .route("/admin/v1/certificates/{serial}", get(show_cert))
        .route("/admin/v1/certificates/{serial}/revoke", post(revoke_cert))
        .route("/admin/v1/devices/{serial}/revoke", post(revoke_device))
        .route("/admin/v1/batches", get(list_batches).post(create_batch))
        .route("/admin/v1/batches/{id}", get(show_batch))
        .route("/admin/v1/batches/{id}/close", post(close_batch))
        .route("/admin/v1/audit", get(audit_list))
        .route("/admin/v1/audit/verify", get(audit_verify))
        .route("/admin/v1/tokens", post(create_token))
}

/// Run `f` as the admin the gate admitted (not authenticated again), off the
/// async workers (the store blocks).
async fn as_admin<F>(a: Arc<Authority>, caller: Caller, f: F) -> Result<Response, ApiError>
where
    F: FnOnce(&Admin<'_>) -> Result<Value, AuthorityError> + Send + 'static,
{
    let v = blocking(move || {
        let admin = a.admin_of(&caller)?;
        f(&admin)
    })
    .await??;
    Ok(json_answer(v))
}

/// A JSON request body (an empty body is `{}`), refused with a one-line reason.
fn body<T: DeserializeOwned>(b: &[u8]) -> Result<T, AuthorityError> {
    let b = if b.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { b };
    serde_json::from_slice(b)
        .map_err(|e| AuthorityError::malformed(format!("the request body is not the JSON expected: {e}")))
}

fn status_text(s: &CertStatus) -> String {
    match s {
        CertStatus::Good => "good".into(),
        CertStatus::Revoked { at, reason } => {
            format!("revoked {} ({})", rfc3339(*at), iotpki_core::crl::reason_name(*reason))
        }
    }
}

fn cert_json(r: &CertRecord) -> Value {
    json!({
        "serial": r.serial, "ca": r.ca, "profile": r.profile, "subject": r.subject,
        "device_serial": r.device_serial, "not_before": rfc3339(r.not_before), "not_after": rfc3339(r.not_after),
        "issued_at": rfc3339(r.issued_at), "spki_sha256": r.spki_sha256, "replaces": r.replaces,
        "replaced_by": r.replaced_by, "current": r.status == CertStatus::Good && r.replaced_by.is_none(),
        "status": status_text(&r.status),
    })
}

fn batch_json(b: &BatchRecord) -> Value {
    json!({
        "id": b.id, "product": b.product, "quota": b.quota, "issued": b.issued, "refused": b.refused,
        "flagged": b.flagged, "allowlist": b.allowlist, "from": rfc3339(b.valid_from),
        "until": rfc3339(b.valid_until), "status": if b.status == BatchStatus::Open { "open" } else { "closed" },
    })
}

async fn whoami(State(a): State<Arc<Authority>>, Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    as_admin(a, caller, |adm| {
        let (name, serial) = adm.whoami()?;
        Ok(json!({ "admin": name, "cert_serial": serial }))
    })
    .await
}

#[derive(Deserialize)]
struct CertsQuery {
    device: Option<String>,
    ca: Option<String>,
    profile: Option<String>,
    limit: Option<u32>,
}

async fn list_certs(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<CertsQuery>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| {
        let q = CertQuery {
            device_serial: q.device,
            ca: q.ca,
            expiring_before: None,
            expiring_after: None,
            limit: q.limit,
            profile: q.profile,
        };
        Ok(Value::Array(adm.certificates(q)?.iter().map(cert_json).collect()))
    })
    .await
}

async fn show_cert(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Path(serial): Path<String>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| {
        let r = adm.certificate(&serial)?;
        let mut v = cert_json(&r);
        v["pem"] = Value::String(iotpki_core::pem::encode("CERTIFICATE", &r.der));
        Ok(v)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default = "unspecified")]
    reason: String,
}

fn unspecified() -> String {
    "unspecified".into()
}

fn revoked_json(serials: Vec<String>, reason: u8) -> Value {
    json!({ "revoked": serials, "reason": iotpki_core::crl::reason_name(reason) })
}

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
        Ok(revoked_json(adm.revoke(Target::Serial(&serial), reason)?, reason))
    })
    .await
}

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
        Ok(revoked_json(adm.revoke(Target::Device(&d), reason)?, reason))
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

async fn list_batches(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, |adm| Ok(Value::Array(adm.batches()?.iter().map(batch_json).collect()))).await
}

async fn show_batch(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| Ok(batch_json(&adm.batch(&id)?))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    id: Option<String>,
    product: String,
    serials: Vec<String>,
    quota: u64,
    from: Option<String>,
    until: Option<String>,
}

fn parse_time(field: &str, s: &str) -> Result<i64, AuthorityError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| AuthorityError::malformed(format!("{field}: {s:?} is not an RFC 3339 time: {e}")))
}

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
            Ok(NewBatch {
                id: bb.id,
                product: bb.product,
                allowlist: bb.serials.join("\n"),
                quota: bb.quota,
                from,
                until,
            })
        });
        let nb = refuse_bad_input(adm, r, "batch.create", "")?;
        Ok(batch_json(&adm.create_batch(nb)?))
    })
    .await
}

async fn close_batch(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| {
        adm.close_batch(&id)?;
        Ok(json!({ "closed": id }))
    })
    .await
}

#[derive(Deserialize)]
struct AuditQuery {
    from: Option<u64>,
    limit: Option<u32>,
}

async fn audit_list(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| {
        let entries = adm.audit_entries(q.from.unwrap_or(1), q.limit.unwrap_or(100))?;
        Ok(Value::Array(
            entries
                .iter()
                .map(|e| {
                    json!({
                        "seq": e.seq, "at": rfc3339(e.event.at), "actor": e.event.actor, "action": e.event.action,
                        "target": e.event.target, "detail": e.event.detail, "hash": e.hash,
                    })
                })
                .collect(),
        ))
    })
    .await
}

async fn audit_verify(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, |adm| {
        Ok(match adm.verify_audit()? {
            Ok(r) => json!({ "ok": true, "entries": r.entries, "head": r.head }),
            Err(problem) => json!({ "ok": false, "problem": problem }),
        })
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    serial: String,
    ttl_secs: Option<u64>,
}

async fn create_token(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    b: Bytes,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| {
        let tb = refuse_bad_input(adm, body::<TokenBody>(&b), "token.create", "")?;
        let token = adm.create_token(&tb.serial, tb.ttl_secs)?;
        Ok(json!({ "serial": tb.serial, "token": token }))
    })
    .await
}
