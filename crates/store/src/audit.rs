//! The hash-chained audit log: types and the one hash function both writer and verifier use.

use sha2::{Digest, Sha256};

use crate::UnixTime;

/// The `prev_hash` of the first entry: 32 zero bytes, hex.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Something that happened, to be appended to the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// When, Unix seconds.
    pub at: UnixTime,
    /// Who: `admin`, `device:SN`, `station:NAME`, `anonymous`, ...
    pub actor: String,
    /// What: `issue`, `reenroll`, `token.create`, `refuse.enroll`, ...
    pub action: String,
    /// On what: a certificate serial, a device serial, ...
    pub target: String,
    /// Free-form detail (a reason, JSON); never a secret.
    pub detail: String,
}

/// An event as stored, with its position and chain hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the log, starting at 1, without gaps.
    pub seq: u64,
    /// The event.
    pub event: AuditEvent,
    /// Hash of the previous entry (`GENESIS_HASH` for seq 1), hex.
    pub prev_hash: String,
    /// This entry's hash: [`audit_hash`] of `prev_hash`, `seq` and the event, hex.
    pub hash: String,
}

/// What a successful walk of the chain found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReport {
    /// Number of entries checked.
    pub entries: u64,
    /// Hash of the last entry (`GENESIS_HASH` when empty).
    pub head: String,
}

/// SHA-256 over `prev_hash`, `seq` and every field of the event, each field
/// length-prefixed (u64 big-endian) so that no two events hash alike by
/// shifting bytes between fields. Returns lowercase hex.
pub fn audit_hash(prev_hash: &str, seq: u64, event: &AuditEvent) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(prev_hash.as_bytes());
    field(&seq.to_be_bytes());
    field(&event.at.to_be_bytes());
    field(event.actor.as_bytes());
    field(event.action.as_bytes());
    field(event.target.as_bytes());
    field(event.detail.as_bytes());
    hex::encode(h.finalize())
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// [`crate::Precondition::VoucherHeld`], once for both backends: `body` is the
/// latest voucher held for `device`, if any.
pub(crate) fn voucher_held(device: &str, expected: Option<&str>, body: Option<&[u8]>) -> Result<(), crate::StoreError> {
    let held = body.map(sha256_hex);
    if held.as_deref() == expected {
        return Ok(());
    }
    Err(crate::StoreError::VoucherChanged { device: device.into(), expected: expected.map(Into::into), held })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(actor: &str, action: &str) -> AuditEvent {
        AuditEvent { at: 1, actor: actor.into(), action: action.into(), target: "t".into(), detail: String::new() }
    }

    #[test]
    fn field_boundaries_matter() {
        assert_ne!(audit_hash(GENESIS_HASH, 1, &ev("ab", "c")), audit_hash(GENESIS_HASH, 1, &ev("a", "bc")));
    }

    #[test]
    fn chain_position_matters() {
        let e = ev("a", "b");
        assert_ne!(audit_hash(GENESIS_HASH, 1, &e), audit_hash(GENESIS_HASH, 2, &e));
    }
}
