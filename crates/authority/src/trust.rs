//! What the authority publishes for devices to verify themselves: trust
//! bundles (`iotpki bundle publish`) and ownership vouchers (`iotpki voucher
//! issue`, `iotpki device claim --voucher`).
//!
//! A bundle is published only if the devices that trust the published one
//! would accept it ([`bundle::verify_update`]; the first with
//! [`bundle::verify_initial`]), so the authority never serves what devices
//! must refuse. Vouchers are signed with the key the device expects next: the
//! manufacturing CA's for the first entry (the device knows that CA from its
//! birth chain), then the root key of the owner the previous entry named.

use iotpki_core::bundle::{self, Bundle};
use iotpki_core::keys::{self, Signer};
use iotpki_core::name::DeviceSerial;
use iotpki_core::voucher::{self, Voucher};
use iotpki_store::{Artifact, AuditEvent, CertQuery, CertStatus, HandOver, Precondition, Store};
use spki::der::{Decode, Encode};

use std::sync::Arc;

use crate::open::CaKey;
use crate::{Authority, AuthorityError};
use iotpki_core::clock::Clock;

/// The artifact kind of trust bundles.
pub const BUNDLE: &str = "bundle";

/// The artifact kind of a device's voucher.
pub fn voucher_kind(serial: &str) -> String {
    format!("voucher/{serial}")
}

fn bad_bundle(e: bundle::BundleError) -> AuthorityError {
    AuthorityError::malformed(format!("bundle refused: {e}"))
}

fn bad_voucher(e: voucher::VoucherError) -> AuthorityError {
    AuthorityError::malformed(format!("voucher refused: {e}"))
}

/// Publish a signed trust bundle: it must be one that devices trusting the
/// published bundle accept (signers, thresholds, a higher version, not expired).
pub fn publish_bundle(
    store: &dyn Store,
    clock: &dyn Clock,
    bytes: &[u8],
    actor: &str,
) -> Result<Bundle, AuthorityError> {
    let now = clock.now();
    let verified = match store.artifact(BUNDLE)? {
        None => bundle::verify_initial(bytes, now).map_err(bad_bundle)?,
        Some(cur) => {
            let current = Bundle::decode(&cur.body).map_err(bad_bundle)?;
            bundle::verify_update(&current, bytes, now).map_err(bad_bundle)?
        }
    };
    let c = verified.content();
    let audit = AuditEvent {
        at: now,
        actor: actor.into(),
        action: "bundle.publish".into(),
        target: format!("bundle v{}", c.version),
        detail: format!("anchors={} threshold={} expires={}", c.anchors.len(), c.threshold, c.expires_at),
    };
    store.publish_artifact(
        Artifact { kind: BUNDLE.into(), version: c.version, body: bytes.to_vec(), published_at: now },
        audit,
    )?;
    Ok(verified)
}

/// The DER subjectPublicKeyInfo of a certificate.
pub fn spki_of(cert_der: &[u8]) -> Result<Vec<u8>, AuthorityError> {
    let c = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| AuthorityError::malformed(format!("certificate: {e}")))?;
    c.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| AuthorityError::malformed(format!("public key: {e}")))
}

/// A voucher issued: the file's octets and what else happened.
#[derive(Clone, Debug)]
pub struct IssuedVoucher {
    /// The whole voucher (every entry so far).
    pub bytes: Vec<u8>,
    /// Its number of entries.
    pub entries: usize,
    /// This authority's certificates for the device revoked by the hand-over.
    pub revoked: Vec<String>,
}

impl Authority {
    /// The published artifact `kind` (the latest trust bundle, a device's voucher).
    pub fn published(&self, kind: &str) -> Result<Vec<u8>, AuthorityError> {
        self.store
            .artifact(kind)?
            .map(|a| a.body)
            .ok_or_else(|| AuthorityError::not_found(format!("nothing published as {kind}")))
    }

    /// The root CA's subjectPublicKeyInfo (DER): this authority as an owner in vouchers.
    pub fn root_spki(&self) -> Result<Vec<u8>, AuthorityError> {
        spki_of(&self.root_der)
    }

    /// Whether `spki` (DER) is the key of this authority's root or of a retiring root.
    fn is_our_root(&self, spki: &[u8]) -> Result<bool, AuthorityError> {
        for r in std::iter::once(&self.root_der).chain(self.retiring.iter()) {
            if spki_of(r)? == spki {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The birth certificate this authority (as manufacturer) issued to `serial`,
    /// online or through a station's delegated CA, and the manufacturing CA it
    /// chains to (the birth CA, or one it succeeded).
    fn birth_certificate(&self, serial: &str) -> Result<(Vec<u8>, Arc<CaKey>), AuthorityError> {
        let q = CertQuery { device_serial: Some(serial.into()), ..Default::default() };
        let mut births = Vec::new();
        for c in self.store.list_certificates(&q)? {
            if c.status == CertStatus::Good {
                if let Some(mfg) = self.birth_issuer(&c.ca)? {
                    births.push((c.issued_at, c.der, mfg));
                }
            }
        }
        births.sort_by_key(|b| b.0);
        births.into_iter().next().map(|(_, der, mfg)| (der, mfg)).ok_or_else(|| {
            AuthorityError::not_found(format!(
                "device {serial} has no birth certificate from this authority, and no voucher of it names this authority"
            ))
        })
    }

    /// The manufacturing CA behind a certificate whose record names issuer
    /// `ca`, if it is a birth certificate: `ca` itself when it is the birth CA
    /// or one the birth CA succeeded (`ca rotate --new-issuing-keys`); for
    /// `delegated:STATION:BATCH`, the CA that certified that delegated CA.
    pub(crate) fn birth_issuer(&self, ca: &str) -> Result<Option<Arc<CaKey>>, AuthorityError> {
        let name = match ca.strip_prefix("delegated:").and_then(|r| r.split_once(':')) {
            Some((station, batch)) => match self.store.delegation(station, batch)? {
                Some(serial) => match self.store.certificate(&serial)? {
                    Some(r) => r.ca,
                    None => return Ok(None),
                },
                None => return Ok(None),
            },
            None => ca.to_string(),
        };
        if !self.is_birth_ca(&name) {
            return Ok(None);
        }
        Ok(self.issuing.iter().find(|c| c.name == name).cloned())
    }

    /// Hand `serial` to the owner whose key is `to_spki` (DER SPKI), until
    /// `expires_at`. The first voucher of a device is signed by the
    /// manufacturing CA (this authority made the device); a later one extends
    /// the published voucher, signed by `owner_key` (this authority's root key,
    /// which the last entry must name). The voucher is published, and this
    /// authority's operational certificates for the device are revoked
    /// (affiliationChanged) and its ownership marked handed on.
    pub fn issue_voucher(
        &self,
        serial: &DeviceSerial,
        to_spki: &[u8],
        expires_at: i64,
        owner_key: Option<&dyn Signer>,
        actor: &str,
    ) -> Result<IssuedVoucher, AuthorityError> {
        let now = self.clock.now();
        if expires_at <= now {
            return Err(AuthorityError::malformed("the voucher would be expired already".into()));
        }
        spki::SubjectPublicKeyInfoOwned::from_der(to_spki)
            .map_err(|e| AuthorityError::malformed(format!("the next owner's key: {e}")))
            .and_then(|k| {
                iotpki_core::keys::KeyType::of_spki(&k)
                    .map_err(|e| AuthorityError::malformed(format!("the next owner's key: {e}")))
            })?;
        if self.is_our_root(to_spki)? {
            return Err(AuthorityError::malformed("the next owner is this authority itself".into()));
        }
        let kind = voucher_kind(serial.as_str());
        let voucher = match self.store.artifact(&kind)? {
            Some(prev) => {
                let mut v = Voucher::decode(&prev.body).map_err(bad_voucher)?;
                let key = owner_key.ok_or_else(|| {
                    AuthorityError::malformed(
                        "the device has a voucher: extending it needs this authority's root key (--root-key)".into(),
                    )
                })?;
                if v.owner() != key.public_key_der() {
                    return Err(AuthorityError::forbidden(format!(
                        "the voucher of {serial} names another owner than this key: this authority does not own it"
                    )));
                }
                v.extend(key, to_spki, now, expires_at).map_err(bad_voucher)?;
                v
            }
            None => {
                // Signed by the manufacturing CA the device's birth chain ends in.
                let (birth, mfg) = self.birth_certificate(serial.as_str())?;
                Voucher::first(mfg.signer.as_ref(), serial, &birth, to_spki, now, expires_at).map_err(bad_voucher)?
            }
        };
        let bytes = voucher.encode();
        let entries = voucher.entries().len();
        // The hand-over, in one transaction: the voucher published, this
        // authority's operational certificates ended (the birth certificate
        // stays), its ownership transferred.
        let keep_cas = self.birth_cas();
        let to = keys::spki_fingerprint(to_spki);
        let done = self.store.hand_over(HandOver {
            device_serial: serial.to_string(),
            voucher: Artifact { kind, version: entries as u64, body: bytes.clone(), published_at: now },
            keep_cas,
            at: now,
            actor: actor.into(),
            detail: format!("entries={entries} to={to} expires={expires_at}"),
            to,
        })?;
        let revoked = done.revoked;
        Ok(IssuedVoucher { bytes, entries, revoked })
    }

    /// Take ownership of a device with its voucher: the last entry must name
    /// this authority's root key, the first must be signed by a trusted
    /// manufacturer, and every signature and link between them must hold
    /// ([`voucher::verify_chain`]). The birth certificate it names is checked
    /// when the device commissions (the chain is verified again then, in full).
    pub fn claim_by_voucher(&self, bytes: &[u8], actor: &str) -> Result<DeviceSerial, AuthorityError> {
        let v = Voucher::decode(bytes).map_err(bad_voucher)?;
        let entries = v.entries();
        let (first, last) = match (entries.first(), entries.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => return Err(bad_voucher(voucher::VoucherError::Empty)),
        };
        if !self.is_our_root(v.owner())? {
            return Err(AuthorityError::forbidden(
                "the voucher hands the device to another owner, not this authority".into(),
            ));
        }
        let now = self.clock.now();
        if now >= last.expires_at {
            return Err(AuthorityError::forbidden("the voucher has expired".into()));
        }
        let Some(mfg) = self
            .store
            .manufacturers()?
            .iter()
            .filter_map(|m| spki_of(&m.cert_der).ok())
            .find(|spki| iotpki_core::cose::key_id(spki) == first.signer_kid)
        else {
            return Err(AuthorityError::forbidden(
                "the voucher's first entry is not signed by a trusted manufacturer (`iotpki trust add-manufacturer`)"
                    .into(),
            ));
        };
        // Every signature, from that manufacturer's key to this authority's:
        // a key id is public, so naming the manufacturer's proves nothing.
        voucher::verify_chain(bytes, &mfg, now)
            .map_err(|e| AuthorityError::forbidden(format!("voucher refused: {e}")))?;
        let serial = first.serial.clone();
        // Ownership only moves forward: a voucher for a device this authority
        // has a voucher of must extend that one (else a past owner's fork from
        // an older copy would be recorded); nothing is stored on refusal.
        // The store records it only if the held voucher is still the one
        // checked here (`VoucherHeld`, in the writing transaction): of two
        // claims racing against one held voucher, one is stored, not a fork.
        let held = self.store.artifact(&voucher_kind(serial.as_str()))?;
        if let Some(held) = &held {
            // (The same voucher again is left to the store, which refuses it as not newer.)
            voucher::check_extends(&held.body, bytes, now)
                .map_err(|e| AuthorityError::forbidden(format!("voucher refused: {e}")))?;
        }
        let held = Precondition::VoucherHeld {
            device_serial: serial.to_string(),
            sha256: held.map(|h| keys::sha256_hex(&h.body)),
        };
        let hash = keys::sha256_hex(bytes);
        let audit = AuditEvent {
            at: now,
            actor: actor.into(),
            action: "device.claim".into(),
            target: format!("device:{serial}"),
            detail: format!("voucher={hash} entries={}", entries.len()),
        };
        let art = Artifact {
            kind: voucher_kind(serial.as_str()),
            version: entries.len() as u64,
            body: bytes.to_vec(),
            published_at: now,
        };
        match self.store.own_by_voucher(serial.as_str(), &format!("voucher:{hash}"), art, held, audit) {
            Ok(()) => {}
            // This voucher or a longer one is held already: the caller's to fix.
            Err(e @ iotpki_store::StoreError::NotNewer { .. }) => {
                return Err(AuthorityError::forbidden(format!("voucher refused: {e}")))
            }
            Err(e) => return Err(e.into()),
        }
        Ok(serial)
    }

    /// For a device owned by voucher: verify the stored voucher in full for this
    /// birth certificate, from the manufacturer's key to this authority.
    pub(crate) fn check_voucher(
        &self,
        serial: &DeviceSerial,
        birth_der: &[u8],
        mfg_cert: &[u8],
    ) -> Result<(), AuthorityError> {
        let v = self.store.artifact(&voucher_kind(serial.as_str()))?.ok_or_else(|| {
            AuthorityError::forbidden(format!("device {serial} is owned by voucher but none is stored"))
        })?;
        // Claimed before (its expiry checked then): the ownership holds past the voucher's date.
        let verified = voucher::verify_accepted(&v.body, &spki_of(mfg_cert)?, serial, birth_der, self.clock.now())
            .map_err(|e| AuthorityError::forbidden(format!("the device's voucher does not hold: {e}")))?;
        if !self.is_our_root(&verified.owner_anchor)? {
            return Err(AuthorityError::forbidden("the device's voucher names another owner".into()));
        }
        Ok(())
    }
}
