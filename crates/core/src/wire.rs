//! The JSON bodies of ours that cross the network (and the delegation file a
//! station keeps), typed once for the server that writes them and the
//! station, agent and CLI that read them.
//!
//! Every field an answer promises is required: a body without it is refused
//! with an error that names the field, never read as 0 or "". Requests (what
//! the server reads from a client) also refuse fields they do not know.
//! Field names and values are part of the interface: scripts and the
//! acceptance checks read them; add fields, never rename one.
//!
//! With the `openapi` feature (the server's), the admin API's types derive
//! their JSON Schemas for the server's OpenAPI document; device builds leave
//! it off.
//!
//! Times are Unix seconds where a program acts on them (the factory API) and
//! RFC 3339 text where people read them (the admin API), as they always were.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Parse `bytes` as the JSON body `T`; the error says which body (`what`) and
/// what was wrong with it (a missing field names the field).
pub fn from_slice<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, crate::Error> {
    serde_json::from_slice(bytes).map_err(|e| crate::Error::Json { what: what.to_string(), detail: e.to_string() })
}

/// The JSON text of `body`.
pub fn to_string<T: Serialize>(body: &T) -> String {
    // Serializing these types cannot fail: string keys, no maps with other keys,
    // no non-finite floats.
    serde_json::to_string(body).unwrap_or_default()
}

/// A revocation, as every answer that shows one renders it: the RFC 5280
/// CRLReason both by name (`reason`) and by code (`reason_code`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedEntry {
    /// The certificate serial, hex.
    pub serial: String,
    /// When it was revoked, Unix seconds.
    pub at: i64,
    /// The RFC 5280 CRLReason name (`keyCompromise`).
    pub reason: String,
    /// The RFC 5280 CRLReason code (1).
    pub reason_code: u8,
}

impl RevokedEntry {
    /// The entry for `serial`, revoked at `at` for reason `code`.
    pub fn new(serial: String, at: i64, code: u8) -> Self {
        Self { serial, at, reason: crate::crl::reason_name(code).to_string(), reason_code: code }
    }
}

// --- the factory API (a station, over mutual TLS) ---------------------------

/// `GET /factory/sync?batch=ID`: how far the authority holds this station's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The last record entry the authority holds (0: none).
    pub last_seq: u64,
    /// That entry's hash (the chain's genesis when none).
    pub head: String,
}

/// One birth the authority flagged at sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flagged {
    /// The birth certificate's serial.
    pub cert_serial: String,
    /// Why (`off-allowlist`, `over-quota`, `clone`, ...).
    pub reason: String,
}

/// `POST /factory/sync?batch=ID`: what the uploaded entries did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncOutcome {
    /// Births recorded.
    pub born: u64,
    /// Births flagged (and revoked).
    pub flagged: Vec<Flagged>,
}

/// `GET /factory/crl?batch=ID`: what the next CRL of a station's delegated CA must say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlTerms {
    /// Its CRL number.
    pub number: u64,
    /// Its nextUpdate, Unix seconds.
    pub next_update: i64,
    /// Exactly what it must list.
    pub revoked: Vec<RevokedEntry>,
}

/// `POST /factory/crl?batch=ID`: the CRL accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlAccepted {
    /// Its CRL number.
    pub number: u64,
}

/// `GET /factory/batches/ID?unborn=N`: a batch as its station sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationBatch {
    /// The batch id.
    pub id: String,
    /// The product.
    pub product: String,
    /// Births allowed.
    pub quota: u64,
    /// Births so far.
    pub issued: u64,
    /// Births refused.
    pub refused: u64,
    /// Births flagged at sync.
    pub flagged: u64,
    /// First second of the window, Unix seconds.
    pub valid_from: i64,
    /// First second after it.
    pub valid_until: i64,
    /// Whether it is open.
    pub open: bool,
    /// Serials on its allowlist.
    pub allowlist: u64,
    /// Serials of the allowlist not born yet (as many as asked for).
    pub unborn: Vec<String>,
    /// What its births get: `device` or `matter-dac` (docs/matter.md).
    #[serde(default = "device_profile")]
    pub profile: String,
    /// A `matter-dac` batch: the PAI and then the PAA certificates (PEM) its DACs chain to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matter_chain: Vec<String>,
}

/// `POST /factory/tpm-challenge`: a station asks a challenge for a device's TPM key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmChallengeRequest {
    /// The batch.
    pub batch: String,
    /// The device serial.
    pub serial: String,
    /// The device key's TPMT_PUBLIC, base64.
    pub public: String,
}

/// The answer to a [`TpmChallengeRequest`] (204 and no body: no attestation asked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmChallenge {
    /// The challenge's id, sent back with the recovered secret.
    pub id: String,
    /// TPM2_ActivateCredential's credential blob, base64.
    pub credential_blob: String,
    /// Its encrypted secret, base64.
    pub encrypted_secret: String,
}

/// The HTTP header that carries a TPM challenge's answer on a station's
/// simpleenroll: `ID:SECRET` (SECRET in base64).
pub const TPM_ACTIVATION_HEADER: &str = "iotpki-tpm-activation";

/// What the authority gave a station with its delegated CA (`delegation.json`
/// in the station's directory, written by `iotpki station delegate`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The batch.
    pub batch: String,
    /// The organisation: births are named `O=org, OU=batch, CN=serial, serialNumber=serial`.
    pub organization: String,
    /// Births this station may still issue.
    pub quota: u64,
    /// First second it may issue in.
    pub valid_from: i64,
    /// First second it may no longer issue in.
    pub valid_until: i64,
    /// The serials it may give birth to.
    pub allowlist: Vec<String>,
    /// The delegated CA's certificate, PEM.
    pub cert_pem: String,
    /// The certificates above it (the manufacturing CA), PEM.
    pub chain_pem: String,
    /// Where the delegated CA's CRL is served: the births it signs name it as
    /// their cRLDistributionPoint (none when the authority has no public URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_url: Option<String>,
}

// --- the admin API (and the CLI's --json output of the same records) --------

/// A certificate record: `GET /admin/v1/certificates[/SERIAL]`, `iotpki cert show --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertRecord {
    /// The certificate serial, hex.
    pub serial: String,
    /// The issuing CA's name.
    pub ca: String,
    /// The profile.
    pub profile: String,
    /// The subject, RFC 4514.
    pub subject: String,
    /// The device it names, if any.
    pub device_serial: Option<String>,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339.
    pub issued_at: String,
    /// SHA-256 of its SubjectPublicKeyInfo, hex.
    pub spki_sha256: String,
    /// The certificate it renewed.
    pub replaces: Option<String>,
    /// The certificate that renewed it.
    pub replaced_by: Option<String>,
    /// The certificate template it was issued under (docs/templates.md);
    /// null: the built-in profile. Its renewals follow the same one.
    #[serde(default)]
    pub template: Option<String>,
    /// Good and not renewed.
    pub current: bool,
    /// `good`, or `revoked TIME (REASON)`.
    pub status: String,
    /// When and why it was revoked (absent while it is not): its fields
    /// `revoked_at`, `reason` and `reason_code` sit beside the others.
    /// (The schema of the OpenAPI document, which cannot say "flattened when
    /// present", lists these fields among the record's own as optional.)
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub revocation: Option<Revocation>,
    /// The certificate, PEM (when one certificate is shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
}

/// When and why a certificate was revoked, in a [`CertRecord`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revocation {
    /// When it was revoked, RFC 3339.
    pub revoked_at: String,
    /// The RFC 5280 CRLReason name.
    pub reason: String,
    /// The RFC 5280 CRLReason code.
    pub reason_code: u8,
}

impl Revocation {
    /// Revoked at `at` (Unix seconds) for reason `code`.
    pub fn new(at: i64, code: u8) -> Self {
        Self {
            revoked_at: crate::time::rfc3339(at),
            reason: crate::crl::reason_name(code).to_string(),
            reason_code: code,
        }
    }
}

/// A certificate's status as [`CertRecord::status`] writes it: `good`, or
/// `revoked TIME (REASON)` given `revoked = Some((at, reason code))`.
pub fn status_text(revoked: Option<(i64, u8)>) -> String {
    match revoked {
        None => "good".into(),
        Some((at, reason)) => format!("revoked {} ({})", crate::time::rfc3339(at), crate::crl::reason_name(reason)),
    }
}

/// A production batch: `GET /admin/v1/batches[/ID]`, `iotpki batch show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Batch {
    /// The batch id.
    pub id: String,
    /// The product.
    pub product: String,
    /// Births allowed.
    pub quota: u64,
    /// Births so far.
    pub issued: u64,
    /// Births refused.
    pub refused: u64,
    /// Births flagged at sync.
    pub flagged: u64,
    /// Births left.
    pub remaining: u64,
    /// Serials on its allowlist.
    pub allowlist: u64,
    /// First second of the window, RFC 3339.
    pub from: String,
    /// First second after it, RFC 3339.
    pub until: String,
    /// `open` or `closed`.
    pub status: String,
    /// RFC 3339.
    pub created_at: String,
    /// `required` or `no`: whether its births must prove their key is in the
    /// TPM registered for their serial (absent from servers before 2026-12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_attestation: Option<String>,
    /// What its births get: `device` (a birth certificate) or `matter-dac`
    /// (a Matter Device Attestation Certificate; docs/matter.md).
    #[serde(default = "device_profile")]
    pub profile: String,
    /// A `matter-dac` batch's Matter Vendor ID, four uppercase hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    /// A `matter-dac` batch's Matter Product ID, four uppercase hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
}

fn device_profile() -> String {
    "device".into()
}

/// `GET /admin/v1/whoami`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Whoami {
    /// The admin's name.
    pub admin: String,
    /// The certificate it called with.
    pub cert_serial: String,
}

/// `POST /admin/v1/.../revoke`: what was revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revoked {
    /// The certificate serials revoked.
    pub revoked: Vec<String>,
    /// The RFC 5280 CRLReason name.
    pub reason: String,
    /// The RFC 5280 CRLReason code.
    pub reason_code: u8,
}

impl Revoked {
    /// `serials`, revoked for reason `code`.
    pub fn new(serials: Vec<String>, code: u8) -> Self {
        Self { revoked: serials, reason: crate::crl::reason_name(code).to_string(), reason_code: code }
    }
}

/// `POST /admin/v1/batches/ID/close`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Closed {
    /// The batch closed.
    pub closed: String,
}

/// One entry of `GET /admin/v1/audit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Its place in the chain.
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Details.
    pub detail: String,
    /// The chain hash up to it, hex.
    pub hash: String,
}

/// `GET /admin/v1/audit/verify`: `ok` with the chain's length and head, or the problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditVerified {
    /// Whether the chain verifies.
    pub ok: bool,
    /// Entries verified (when ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// The head hash (when ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// What is wrong (when not ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `POST /admin/v1/tokens`: the token made (shown once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    /// The device serial it is for.
    pub serial: String,
    /// The token.
    pub token: String,
}

// --- the key registry (admin API, `iotpki key ... --json`, `firmware scan --json`) ---

/// A blocked key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlockedKey {
    /// SHA-256 of its subjectPublicKeyInfo, hex.
    pub spki_sha256: String,
    /// Why it was blocked.
    pub reason: String,
    /// Where it was seen.
    pub source: String,
    /// When, RFC 3339.
    pub blocked_at: String,
    /// Who blocked it.
    pub blocked_by: String,
}

/// `GET /admin/v1/keys/HASH`: whose key it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyRegistry {
    /// SHA-256 of its subjectPublicKeyInfo, hex.
    pub spki_sha256: String,
    /// `ca`, `delegated-ca`, `station`, `device`, `manufacturer`, `other` or `unknown`.
    pub role: String,
    /// The device serial, the CA's, station's or certificate's subject, the manufacturer's name.
    pub name: Option<String>,
    /// Blocked, and why.
    pub blocked: Option<BlockedKey>,
    /// Every certificate of the key, newest first.
    pub certificates: Vec<CertRecord>,
}

/// `POST /admin/v1/keys/block`: what was done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeysBlocked {
    /// Keys blocked now.
    pub blocked: Vec<String>,
    /// Keys that were blocked already.
    pub already: Vec<String>,
    /// Certificates revoked (keyCompromise).
    pub revoked: Vec<String>,
    /// Good certificates of these keys not revoked (a CA's, or all without `revoke`).
    pub not_revoked: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_state_without_last_seq_is_refused_and_the_error_names_it() {
        let err = from_slice::<SyncState>("sync state", br#"{"head":"00"}"#).unwrap_err().to_string();
        assert!(err.contains("sync state") && err.contains("missing field `last_seq`"), "{err}");
        let ok: SyncState = from_slice("sync state", br#"{"last_seq":7,"head":"ab"}"#).unwrap();
        assert_eq!(ok, SyncState { last_seq: 7, head: "ab".into() });
        // A number of the wrong kind is refused as well, never read as 0.
        assert!(from_slice::<SyncState>("sync state", br#"{"last_seq":"7","head":"ab"}"#).is_err());
    }

    #[test]
    fn answers_keep_their_field_names() {
        let v: serde_json::Value = serde_json::from_str(&to_string(&SyncOutcome {
            born: 2,
            flagged: vec![Flagged { cert_serial: "0a".into(), reason: "off-allowlist".into() }],
        }))
        .unwrap();
        assert_eq!(v, serde_json::json!({"born": 2, "flagged": [{"cert_serial": "0a", "reason": "off-allowlist"}]}));
        let r: serde_json::Value = serde_json::from_str(&to_string(&Revoked::new(vec!["0b".into()], 1))).unwrap();
        assert_eq!(r, serde_json::json!({"revoked": ["0b"], "reason": "keyCompromise", "reason_code": 1}));
        let e = RevokedEntry::new("0c".into(), 5, 4);
        assert_eq!((e.reason.as_str(), e.reason_code), ("superseded", 4));
    }

    #[test]
    fn a_revoked_certificate_record_carries_its_reason_by_name_and_code() {
        let good = CertRecord {
            serial: "0a".into(),
            ca: "operational".into(),
            profile: "device".into(),
            subject: "CN=S".into(),
            device_serial: Some("S".into()),
            not_before: "t0".into(),
            not_after: "t1".into(),
            issued_at: "t0".into(),
            spki_sha256: "ab".into(),
            replaces: None,
            replaced_by: None,
            template: Some("sensor".into()),
            current: true,
            status: status_text(None),
            revocation: None,
            pem: None,
        };
        let v: serde_json::Value = serde_json::from_str(&to_string(&good)).unwrap();
        assert!(v.get("reason").is_none() && v.get("revoked_at").is_none() && v["replaces"].is_null(), "{v}");
        assert_eq!(from_slice::<CertRecord>("record", to_string(&good).as_bytes()).unwrap(), good);
        let revoked = CertRecord {
            current: false,
            status: status_text(Some((0, 1))),
            revocation: Some(Revocation::new(0, 1)),
            ..good
        };
        let v: serde_json::Value = serde_json::from_str(&to_string(&revoked)).unwrap();
        assert_eq!((v["reason"].as_str(), v["reason_code"].as_u64()), (Some("keyCompromise"), Some(1)), "{v}");
        assert_eq!(v["revoked_at"], "1970-01-01T00:00:00Z");
        assert_eq!(v["status"], "revoked 1970-01-01T00:00:00Z (keyCompromise)");
        assert_eq!(from_slice::<CertRecord>("record", to_string(&revoked).as_bytes()).unwrap(), revoked);
    }

    #[test]
    fn a_request_with_an_unknown_field_is_refused() {
        let err = from_slice::<TpmChallengeRequest>(
            "TPM challenge request",
            br#"{"batch":"B","serial":"S","public":"AA==","extra":1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `extra`"), "{err}");
        assert!(from_slice::<TpmChallengeRequest>("x", br#"{"batch":"B","serial":"S"}"#).is_err());
    }
}
