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
//! | GET  | `/admin/v1/keys/blocked` | the blocked keys |
//! | POST | `/admin/v1/keys/block` | block keys: `{"spki_sha256": [..], "reason", "revoke"}` (docs/leaked-keys.md) |
//! | GET  | `/admin/v1/keys/HASH` | whose key it is, its certificates, whether it is blocked |
//!
//! The answers are the types of [`iotpki_core::wire`] ([`wire::CertRecord`],
//! [`wire::Batch`], [`wire::Revoked`], ...), rendered from the store's records
//! by [`crate::views`], as the CLI's `--json` output is: a revoked certificate
//! carries its reason by RFC 5280 name (`reason`) and code (`reason_code`).

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
use iotpki_core::wire;
use iotpki_store::CertQuery;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::http::{blocking, json as json_answer, ApiError};
use crate::views;

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
        .route("/admin/v1/keys/blocked", get(blocked_keys))
        .route("/admin/v1/keys/block", post(block_keys))
        .route("/admin/v1/keys/{hash}", get(show_key))
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

/// A JSON request body (an empty body is `{}`), refused with a one-line reason.
fn body<T: DeserializeOwned>(b: &[u8]) -> Result<T, AuthorityError> {
    let b = if b.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { b };
    serde_json::from_slice(b)
        .map_err(|e| AuthorityError::malformed(format!("the request body is not the JSON expected: {e}")))
}

async fn whoami(State(a): State<Arc<Authority>>, Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    as_admin(a, caller, |adm| {
        let (name, serial) = adm.whoami()?;
        Ok(wire::Whoami { admin: name, cert_serial: serial })
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
        Ok(adm.certificates(q)?.iter().map(views::cert_record).collect::<Vec<_>>())
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
        Ok(wire::CertRecord { pem: Some(iotpki_core::pem::encode("CERTIFICATE", &r.der)), ..views::cert_record(&r) })
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

async fn list_batches(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, |adm| Ok(adm.batches()?.iter().map(views::batch).collect::<Vec<_>>())).await
}

async fn show_batch(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| Ok(views::batch(&adm.batch(&id)?))).await
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

pub(crate) fn parse_time(field: &str, s: &str) -> Result<i64, AuthorityError> {
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
        Ok(views::batch(&adm.create_batch(nb)?))
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
        Ok(wire::Closed { closed: id })
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
        Ok(wire::TokenCreated { serial: tb.serial, token })
    })
    .await
}

async fn blocked_keys(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, |adm| Ok(adm.blocked_keys()?.iter().map(views::blocked_key).collect::<Vec<_>>())).await
}

async fn show_key(
    State(a): State<Arc<Authority>>,
    Extension(caller): Extension<Caller>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    as_admin(a, caller, move |adm| Ok(views::key_registry(&adm.key(&hash)?))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    spki_sha256: Vec<String>,
    #[serde(default = "compromised")]
    reason: String,
    #[serde(default)]
    revoke: bool,
}

fn compromised() -> String {
    "compromised".into()
}

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
