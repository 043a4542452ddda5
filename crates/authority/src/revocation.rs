//! Revocation: `iotpki revoke`, and a CRL per issuing CA.
//!
//! A CRL is made on request and cached. It is made again when a revocation
//! happened since (the store's revocation mark changed, whichever process
//! revoked) or when half its validity has passed, so clients always find
//! one well before its nextUpdate. Each new CRL takes the next CRL number
//! from the store (durable, monotonic, audited).
//!
//! Several nodes on one database (PostgreSQL): no node trusts its own cache
//! without asking the store first. Every CRL and every OCSP request reads the
//! CA's revocation mark (count of revoked certificates, latest revocation
//! time: one indexed query) before it uses a cached answer, and a cached
//! answer is used only while the mark is unchanged. The count only grows
//! (revocations are never undone), so any revocation, committed by whichever
//! node or CLI process, changes the mark. The bound is therefore zero: a
//! request that starts after a revocation committed is answered from the
//! store's state including it, on every node; only a request already being
//! answered when it committed may still say good. Nothing is pushed between
//! nodes and there is no polling interval to tune.

use iotpki_core::name::DeviceSerial;
use iotpki_store::{AuditEvent, CertQuery, CertStatus, OwnershipStatus, Store};

use crate::clock::Clock;
use crate::AuthorityError;

/// How long a CRL is valid (thisUpdate to nextUpdate).
pub const CRL_VALIDITY_SECS: i64 = 24 * 3600;

/// How long after its certificate's notAfter an entry stays on the CRLs.
/// RFC 5280 3.3: an entry may leave once one regularly scheduled CRL issued
/// after the certificate expired has listed it; CRLs are made again at half
/// their validity (on request and by the server's schedule), so two
/// validities leave room for several.
pub const EXPIRED_KEPT_SECS: i64 = 2 * CRL_VALIDITY_SECS;

/// What to revoke.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// One certificate by serial (hex).
    Serial(&'a str),
    /// Every good certificate of a device.
    Device(&'a DeviceSerial),
}

/// Revoke (admin) with an RFC 5280 reason code; returns the serials revoked.
pub fn revoke(
    store: &dyn Store,
    clock: &dyn Clock,
    target: Target<'_>,
    reason: u8,
    actor: &str,
) -> Result<Vec<String>, AuthorityError> {
    let now = clock.now();
    let serials = match target {
        Target::Serial(s) => vec![s.to_ascii_lowercase()],
        Target::Device(d) => {
            let all =
                store.list_certificates(&CertQuery { device_serial: Some(d.to_string()), ..Default::default() })?;
            let good: Vec<String> =
                all.into_iter().filter(|c| c.status == CertStatus::Good).map(|c| c.serial).collect();
            // A device this authority owns is revoked as a device too: it can
            // no longer commission again with its birth certificate.
            let owned = store.ownership(d.as_str())?.is_some_and(|o| o.status == OwnershipStatus::Owned);
            if good.is_empty() && !owned {
                return Err(AuthorityError::NotFound(format!("device {d} has no certificate that is not revoked")));
            }
            if owned {
                let audit = AuditEvent {
                    at: now,
                    actor: actor.into(),
                    action: "device.revoke".into(),
                    target: format!("device:{d}"),
                    detail: format!("reason={}", iotpki_core::crl::reason_name(reason)),
                };
                store.release_device(d.as_str(), OwnershipStatus::Revoked, now, audit)?;
            }
            good
        }
    };
    for s in &serials {
        let audit = AuditEvent {
            at: now,
            actor: actor.into(),
            action: "revoke".into(),
            target: s.clone(),
            detail: format!("reason={}", iotpki_core::crl::reason_name(reason)),
        };
        store.revoke(s, reason, now, audit)?;
    }
    Ok(serials)
}

/// A CRL made earlier, and what it was made from.
#[derive(Clone, Debug)]
pub(crate) struct Cached {
    pub(crate) der: Vec<u8>,
    pub(crate) mark: (u64, i64),
    pub(crate) this_update: i64,
    /// [`entries_digest`] of its entries.
    pub(crate) entries: [u8; 32],
}

/// A CA's revoked certificates as of a revocation mark.
pub(crate) struct RevokedList {
    pub(crate) mark: (u64, i64),
    pub(crate) entries: std::sync::Arc<Vec<iotpki_store::RevokedCert>>,
}

/// SHA-256 over a CRL's entries (serial, time, reason): equal digests, equal entries.
pub(crate) fn entries_digest(entries: &[iotpki_core::crl::Revoked]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for r in entries {
        h.update((r.serial.len() as u64).to_be_bytes());
        h.update(r.serial.as_bytes());
        h.update(r.at.to_be_bytes());
        h.update([r.reason]);
    }
    h.finalize().into()
}

/// How long an OCSP answer is valid (thisUpdate to nextUpdate).
pub const OCSP_VALIDITY_SECS: i64 = 3600;

/// How long a delegated OCSP signer's certificate lives; a new one is made
/// when less than a quarter of that is left.
pub const OCSP_SIGNER_SECS: i64 = 30 * 86_400;

/// A CA's delegated OCSP responder.
pub(crate) struct OcspSigner {
    pub(crate) key: iotpki_core::keys::SoftKey,
    pub(crate) cert_der: Vec<u8>,
    pub(crate) not_after: i64,
}
