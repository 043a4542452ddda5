//! The store's records as the JSON the admin API answers ([`iotpki_core::wire`]),
//! rendered here once: the server and the CLI's `--json` output use the same.

use iotpki_authority::key_registry::{Holder, KeyInfo};
use iotpki_core::time::rfc3339;
use iotpki_core::wire;
use iotpki_store::{BatchProfile, BatchRecord, BatchStatus, BlockedKey, CertRecord, CertStatus, KeysBlocked};

/// A certificate record (without its PEM).
pub fn cert_record(r: &CertRecord) -> wire::CertRecord {
    let revoked = match r.status {
        CertStatus::Good => None,
        CertStatus::Revoked { at, reason } => Some((at, reason)),
    };
    wire::CertRecord {
        serial: r.serial.clone(),
        ca: r.ca.clone(),
        profile: r.profile.clone(),
        subject: r.subject.clone(),
        device_serial: r.device_serial.clone(),
        not_before: rfc3339(r.not_before),
        not_after: rfc3339(r.not_after),
        issued_at: rfc3339(r.issued_at),
        spki_sha256: r.spki_sha256.clone(),
        replaces: r.replaces.clone(),
        replaced_by: r.replaced_by.clone(),
        template: r.template.clone(),
        current: revoked.is_none() && r.replaced_by.is_none(),
        status: wire::status_text(revoked),
        revocation: revoked.map(|(at, code)| wire::Revocation::new(at, code)),
        pem: None,
    }
}

/// A production batch.
pub fn batch(b: &BatchRecord) -> wire::Batch {
    wire::Batch {
        id: b.id.clone(),
        product: b.product.clone(),
        quota: b.quota,
        issued: b.issued,
        refused: b.refused,
        flagged: b.flagged,
        remaining: b.quota.saturating_sub(b.issued),
        allowlist: b.allowlist,
        from: rfc3339(b.valid_from),
        until: rfc3339(b.valid_until),
        status: if b.status == BatchStatus::Open { "open" } else { "closed" }.into(),
        created_at: rfc3339(b.created_at),
        tpm_attestation: Some(if b.tpm_attestation { "required" } else { "no" }.into()),
        profile: b.profile.name().into(),
        vendor_id: match b.profile {
            BatchProfile::MatterDac { vendor_id, .. } => Some(format!("{vendor_id:04X}")),
            BatchProfile::Device => None,
        },
        product_id: match b.profile {
            BatchProfile::MatterDac { product_id, .. } => Some(format!("{product_id:04X}")),
            BatchProfile::Device => None,
        },
    }
}

/// A blocked key.
pub fn blocked_key(k: &BlockedKey) -> wire::BlockedKey {
    wire::BlockedKey {
        spki_sha256: k.spki_sha256.clone(),
        reason: k.reason.clone(),
        source: k.source.clone(),
        blocked_at: rfc3339(k.blocked_at),
        blocked_by: k.blocked_by.clone(),
    }
}

/// What the registry knows of a key.
pub fn key_registry(info: &KeyInfo) -> wire::KeyRegistry {
    let name = match &info.holder {
        Holder::Ca { subject, .. }
        | Holder::DelegatedCa { subject }
        | Holder::Station { subject }
        | Holder::Other { subject, .. } => Some(subject.clone()),
        Holder::Device { device } => Some(device.clone()),
        Holder::Manufacturer { name } => Some(name.clone()),
        Holder::Unknown => None,
    };
    wire::KeyRegistry {
        spki_sha256: info.spki_sha256.clone(),
        role: info.holder.role().into(),
        name,
        blocked: info.blocked.as_ref().map(blocked_key),
        certificates: info.certificates.iter().map(cert_record).collect(),
    }
}

/// What a key block did.
pub fn keys_blocked(k: &KeysBlocked) -> wire::KeysBlocked {
    wire::KeysBlocked {
        blocked: k.blocked.clone(),
        already: k.already.clone(),
        revoked: k.revoked.clone(),
        not_revoked: k.spared.clone(),
    }
}
