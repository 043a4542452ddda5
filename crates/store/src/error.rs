//! The store's error type.

use std::fmt;

use crate::UnixTime;

/// Everything a store call can refuse or fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// No token has this hash.
    TokenUnknown,
    /// The token is bound to another device serial.
    TokenWrongSerial,
    /// The token was already used.
    TokenUsed {
        /// When it was used.
        used_at: UnixTime,
    },
    /// The token expired.
    TokenExpired {
        /// When it expired.
        expires_at: UnixTime,
    },
    /// A token with this hash exists already.
    TokenExists,
    /// The token was withdrawn (found where it should not be).
    TokenWithdrawn {
        /// When.
        at: UnixTime,
        /// Why.
        reason: String,
    },
    /// The certificate is not in the store.
    CertUnknown {
        /// Its serial.
        serial: String,
    },
    /// The certificate is revoked.
    CertRevoked {
        /// Its serial.
        serial: String,
    },
    /// The certificate was renewed already: `by` is its successor.
    Superseded {
        /// Its serial.
        serial: String,
        /// The certificate that renewed it.
        by: String,
    },
    /// A commissioning for a key the device holds a good certificate for
    /// already ([`crate::Precondition::Commission`]): a retry whose answer
    /// was lost, answered with that certificate.
    Commissioned {
        /// The device serial.
        device: String,
        /// The good certificate of the key.
        serial: String,
    },
    /// A device revocation found nothing to revoke.
    NothingToRevoke {
        /// The device serial.
        device: String,
    },
    /// Another node holds the lease on this webhook's deliveries now.
    WebhookLeaseLost {
        /// The webhook.
        webhook: String,
    },
    /// A certificate with this serial is recorded already.
    DuplicateSerial {
        /// The serial.
        serial: String,
    },
    /// No batch with this id.
    BatchUnknown {
        /// The id.
        batch: String,
    },
    /// A batch with this id exists already.
    BatchExists {
        /// The id.
        batch: String,
    },
    /// The batch was closed.
    BatchClosed {
        /// The id.
        batch: String,
    },
    /// The batch does not issue at this time.
    BatchOutsideWindow {
        /// The id.
        batch: String,
        /// First second it issues in.
        from: UnixTime,
        /// First second it no longer issues in.
        until: UnixTime,
    },
    /// The batch's quota is used up.
    QuotaExhausted {
        /// The id.
        batch: String,
        /// Its quota.
        quota: u64,
    },
    /// The serial is not on the batch's allowlist.
    SerialNotAllowed {
        /// The batch.
        batch: String,
        /// The serial.
        serial: String,
    },
    /// The serial already has a birth certificate.
    AlreadyBorn {
        /// The serial.
        serial: String,
        /// Its birth certificate.
        cert: String,
    },
    /// No station with this name.
    StationUnknown {
        /// The name.
        station: String,
    },
    /// A station with this name exists already.
    StationExists {
        /// The name.
        station: String,
    },
    /// The station was revoked.
    StationRevoked {
        /// The name.
        station: String,
    },
    /// The certificate the station authenticates with authenticates nothing
    /// any more: revoked, or its key blocked, since the station was let in.
    StationCertificate {
        /// The station.
        station: String,
        /// Its certificate's serial.
        serial: String,
        /// Why, for the station's operator.
        why: String,
    },
    /// The station may not serve this batch.
    StationNotAuthorized {
        /// The station.
        station: String,
        /// The batch.
        batch: String,
    },
    /// An upload does not continue the synced production record.
    SyncOutOfOrder {
        /// The sequence number expected next.
        expected_seq: u64,
        /// The first sequence number uploaded.
        got_seq: u64,
    },
    /// The station has a delegated sub-CA for the batch already.
    DelegationExists {
        /// The station.
        station: String,
        /// The batch.
        batch: String,
    },
    /// A claim names another birth certificate than the one the device is claimed with.
    ClaimConflict {
        /// The device serial.
        device: String,
        /// SHA-256 of the birth certificate it is claimed with.
        claimed: String,
    },
    /// This authority does not own the device.
    NotOwned {
        /// The device serial.
        device: String,
    },
    /// The device's ownership is revoked or was handed on.
    DeviceReleased {
        /// The device serial.
        device: String,
        /// `revoked` or `transferred`.
        status: &'static str,
    },
    /// A manufacturer with this name or key is trusted already.
    ManufacturerExists {
        /// The name or key fingerprint.
        name: String,
    },
    /// A published artifact of this kind has this version or a higher one.
    NotNewer {
        /// The kind.
        kind: String,
        /// The latest version published.
        latest: u64,
        /// The version offered.
        offered: u64,
    },
    /// The voucher held for a device is no longer the one a claim was checked
    /// against ([`crate::Precondition::VoucherHeld`]).
    VoucherChanged {
        /// The device serial.
        device: String,
        /// SHA-256 of the voucher the claim was checked against (`None`: none).
        expected: Option<String>,
        /// SHA-256 of the voucher held now (`None`: none).
        held: Option<String>,
    },
    /// The key is blocked (compromised): no certificate is issued for it.
    KeyBlocked {
        /// SHA-256 of its subjectPublicKeyInfo.
        spki_sha256: String,
        /// Why it was blocked.
        reason: String,
    },
    /// The key is certified already for another device (or for a CA, a
    /// station, a server): the request comes from a clone.
    KeyInUse {
        /// SHA-256 of its subjectPublicKeyInfo.
        spki_sha256: String,
        /// The device it is certified for (`None`: not a device's key).
        device: Option<String>,
        /// A certificate of it.
        serial: String,
    },
    /// The audit chain does not verify at `seq`.
    AuditBroken {
        /// First entry that does not verify.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The database cannot write now (disk full, read-only): nothing was
    /// written; the operation may succeed once the cause is gone.
    Unavailable(String),
    /// The database refused or failed.
    Database(String),
    /// The store was closed (its writer is gone).
    Closed,
}

/// Unix seconds as RFC 3339 (UTC) for people; the number itself if out of range.
pub(crate) fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix} (Unix time)"))
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TokenUnknown => {
                f.write_str("unknown enrollment token: check it was copied whole, or ask for a new one (iotpki token create)")
            }
            Self::TokenWrongSerial => f.write_str(
                "enrollment token belongs to another device serial: enroll with the serial it was made for, or ask \
                 for a token for this serial (iotpki token create --serial SERIAL)",
            ),
            Self::TokenUsed { used_at } => write!(
                f,
                "enrollment token already used at {}: a token enrolls once (the same key may fetch its certificate \
                 again); ask for a new token (iotpki token create), or renew with the certificate",
                rfc3339(*used_at)
            ),
            Self::TokenExpired { expires_at } => write!(
                f,
                "enrollment token expired at {}: ask for a new one (iotpki token create [--ttl DURATION])",
                rfc3339(*expires_at)
            ),
            Self::TokenExists => f.write_str("a token with this value exists already"),
            Self::TokenWithdrawn { at, reason } => write!(
                f,
                "enrollment token withdrawn at {} ({reason}): ask for a new one (iotpki token create)",
                rfc3339(*at)
            ),
            Self::CertUnknown { serial } => write!(f, "certificate {serial} is not in the store"),
            Self::CertRevoked { serial } => write!(f, "certificate {serial} is revoked"),
            Self::Superseded { serial, by } => {
                write!(f, "certificate {serial} was renewed already: its successor is {by}")
            }
            Self::Commissioned { device, serial } => {
                write!(f, "device {device} was commissioned already with this key: its certificate is {serial}")
            }
            Self::WebhookLeaseLost { webhook } => {
                write!(f, "webhook {webhook} is delivered by another node now (its lease was taken)")
            }
            Self::NothingToRevoke { device } => {
                write!(f, "device {device} has no certificate that is not revoked and is not owned")
            }
            Self::DuplicateSerial { serial } => write!(f, "serial number {serial} is already recorded"),
            Self::BatchUnknown { batch } => write!(f, "batch {batch} does not exist"),
            Self::BatchExists { batch } => write!(f, "batch {batch} exists already"),
            Self::BatchClosed { batch } => write!(f, "batch {batch} is closed"),
            Self::BatchOutsideWindow { batch, from, until } => {
                write!(
                    f,
                    "batch {batch} issues only from {} until {}: now is outside that window (check this machine's \
                     clock, or make a batch for these dates)",
                    rfc3339(*from),
                    rfc3339(*until)
                )
            }
            Self::QuotaExhausted { batch, quota } => write!(
                f,
                "batch {batch} has used up its quota of {quota}: more devices need a new batch from the \
                 manufacturer (iotpki batch create)"
            ),
            Self::SerialNotAllowed { batch, serial } => {
                write!(f, "serial {serial} is not on the allowlist of batch {batch}")
            }
            Self::AlreadyBorn { serial, cert } => write!(f, "serial {serial} already has a birth certificate ({cert})"),
            Self::StationUnknown { station } => write!(f, "station {station} does not exist"),
            Self::StationExists { station } => write!(f, "station {station} exists already"),
            Self::StationRevoked { station } => write!(f, "station {station} is revoked"),
            Self::StationCertificate { station, serial, why } => {
                write!(f, "the certificate {serial} of station {station} authenticates nothing: {why}")
            }
            Self::StationNotAuthorized { station, batch } => {
                write!(f, "station {station} is not authorised for batch {batch}")
            }
            Self::SyncOutOfOrder { expected_seq, got_seq } => write!(
                f,
                "the upload starts at entry {got_seq} but the record was synced up to entry {} (replayed or out of order)",
                expected_seq.saturating_sub(1)
            ),
            Self::DelegationExists { station, batch } => {
                write!(f, "station {station} already has a delegated CA for batch {batch}")
            }
            Self::ClaimConflict { device, claimed } => write!(
                f,
                "device {device} is claimed already with birth certificate sha256 {claimed}; a claim cannot bind it \
                 to another birth (revoke the device first if the manufacturer really made it twice)"
            ),
            Self::NotOwned { device } => write!(
                f,
                "device {device} is not owned by this authority (claim it with `iotpki device claim` or present an ownership voucher)"
            ),
            Self::DeviceReleased { device, status } => write!(f, "device {device} is {status} by this authority"),
            Self::ManufacturerExists { name } => write!(f, "manufacturer {name} is trusted already"),
            Self::NotNewer { kind, latest, offered } => {
                write!(f, "{kind} version {offered} is not newer than the published version {latest}")
            }
            Self::VoucherChanged { device, expected, held } => {
                let name = |h: &Option<String>| h.as_deref().map_or("none".to_string(), |h| format!("sha256 {h}"));
                write!(
                    f,
                    "device {device}: the held voucher changed while this one was checked: fetch the current voucher \
                     and extend it (checked against {}, held now {})",
                    name(expected),
                    name(held)
                )
            }
            Self::KeyBlocked { spki_sha256, reason } => write!(
                f,
                "the key (subjectPublicKeyInfo sha256 {spki_sha256}) is blocked as compromised ({reason}): no \
                 certificate is issued for it again; the device needs a fresh key (and firmware that does not ship one)"
            ),
            Self::KeyInUse { spki_sha256, device, serial } => {
                let holder = device.as_deref().map_or("a certificate that is not a device's".to_string(), |d| {
                    format!("device {d}")
                });
                write!(
                    f,
                    "the key (subjectPublicKeyInfo sha256 {spki_sha256}) is certified already for {holder} \
                     (certificate {serial}): one key belongs to one device, so this request comes from a clone or a \
                     copied key; generate a fresh key on the device"
                )
            }
            Self::AuditBroken { seq, reason } => write!(f, "audit chain broken at entry {seq}: {reason}"),
            Self::Unavailable(e) => write!(f, "the store cannot write now ({e})"),
            Self::Database(e) => write!(f, "database error: {e}"),
            Self::Closed => f.write_str("store is closed"),
        }
    }
}

impl std::error::Error for StoreError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refusals name times in RFC 3339 and say what to do next.
    #[test]
    fn refusals_name_times_in_rfc3339_and_say_what_to_do() {
        let used = StoreError::TokenUsed { used_at: 1_796_181_441 }.to_string();
        assert!(used.starts_with("enrollment token already used at 2026-12-02T03:17:21Z: "), "{used}");
        assert!(used.contains("iotpki token create"), "{used}");
        let expired = StoreError::TokenExpired { expires_at: 1_796_181_441 }.to_string();
        assert!(
            expired.starts_with("enrollment token expired at 2026-12-02T03:17:21Z: ask for a new one"),
            "{expired}"
        );
        let window = StoreError::BatchOutsideWindow { batch: "B-1".into(), from: 0, until: 1_796_181_441 }.to_string();
        assert!(window.contains("from 1970-01-01T00:00:00Z until 2026-12-02T03:17:21Z"), "{window}");
        assert!(!window.contains("Unix"), "{window}");
        let quota = StoreError::QuotaExhausted { batch: "B-1".into(), quota: 16 }.to_string();
        assert!(quota.contains("quota of 16: ") && quota.contains("iotpki batch create"), "{quota}");
        // Out of range: the number, labelled.
        assert_eq!(rfc3339(i64::MAX), format!("{} (Unix time)", i64::MAX));
    }
}
