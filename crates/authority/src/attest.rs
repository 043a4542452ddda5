//! TPM attestation at birth: a batch can require that every device proves
//! its new key is in a TPM whose endorsement key (EK) the manufacturer
//! registered for that serial.
//!
//! The proof is credential activation on the device key itself: the station
//! relays the key's public area (TPMT_PUBLIC) from the device; the authority
//! checks its attributes (fixedTPM, fixedParent, sensitiveDataOrigin, a
//! signing key used with its authorisation value), makes a credential for
//! the key's Name with the registered EK's public key (TPM2_MakeCredential,
//! in software, [`iotpki_core::tpm::make_credential`]) around a random
//! secret, and keeps the challenge; the device's TPM recovers the secret
//! (TPM2_ActivateCredential) only if that EK is its own and the key with
//! that Name is loaded in it (a key loaded from outside has no usable
//! authorisation there); the station sends the secret back with the
//! request, whose key must be the attested one. The EK's fingerprint goes
//! into the issuance's audit entry.
//!
//! The requirement is the batch's own (`BatchRecord::tpm_attestation`),
//! fixed when the batch is created, in the same transaction: it can be
//! neither added to a batch that has births nor taken from one. The
//! registrations are artifacts in the store, `tpm-ek/BATCH/SERIAL` (the
//! EK's subjectPublicKeyInfo), each published with an audit entry. Challenges live in the serving node's memory for
//! [`CHALLENGE_TTL`] seconds and are used once: a birth is challenged and
//! completed on the same node (behind a load balancer, pin a station's
//! connection to one node), and a restart means the station starts that
//! birth again.

use std::collections::HashMap;
use std::sync::Mutex;

use iotpki_core::keys::spki_fingerprint;
use iotpki_store::{Artifact, AuditEvent, Store, StoreError};

use crate::AuthorityError;
use iotpki_core::clock::Clock;

/// How long a challenge may be answered, in seconds.
pub const CHALLENGE_TTL: i64 = 300;
/// Most challenges kept at once (a flood from a station is refused, not stored).
pub const MAX_CHALLENGES: usize = 10_000;

fn ek_kind(batch: &str, serial: &str) -> String {
    format!("tpm-ek/{batch}/{serial}")
}

/// Whether births in `batch` must prove their key is in a registered TPM
/// (`false` for a batch that does not exist).
pub fn required(store: &dyn Store, batch: &str) -> Result<bool, AuthorityError> {
    Ok(store.batch(batch)?.is_some_and(|b| b.tpm_attestation))
}

/// The EK public key registered for `serial` in `batch`, if any.
pub fn registered_ek(store: &dyn Store, batch: &str, serial: &str) -> Result<Option<Vec<u8>>, AuthorityError> {
    Ok(store.artifact(&ek_kind(batch, serial))?.map(|a| a.body))
}

/// Register the EK public key (DER subjectPublicKeyInfo, ECC P-256) of the
/// TPM in device `serial` of `batch`. A serial has one EK: registering
/// another is refused.
pub fn add_ek(
    store: &dyn Store,
    clock: &dyn Clock,
    batch: &str,
    serial: &str,
    ek_spki: &[u8],
    actor: &str,
) -> Result<String, AuthorityError> {
    crate::factory::check_name("batch id", batch)?;
    let serial =
        iotpki_core::name::DeviceSerial::parse(serial).map_err(|e| AuthorityError::malformed(e.to_string()))?;
    if !required(store, batch)? {
        return Err(AuthorityError::malformed(format!(
            "batch {batch} does not require TPM attestation (batch create --require-tpm-attestation): its EKs would not be checked"
        )));
    }
    iotpki_core::tpm::check_ek(ek_spki).map_err(|e| AuthorityError::malformed(e.to_string()))?;
    let fpr = spki_fingerprint(ek_spki);
    if let Some(old) = registered_ek(store, batch, serial.as_str())? {
        if old == ek_spki {
            return Ok(fpr);
        }
        return Err(AuthorityError::forbidden(format!(
            "serial {serial} in batch {batch} already has EK {} registered; a device has one TPM",
            spki_fingerprint(&old)
        )));
    }
    let now = clock.now();
    let audit = AuditEvent {
        at: now,
        actor: actor.into(),
        action: "tpm.add-ek".into(),
        target: format!("{batch}/{serial}"),
        detail: format!("ek={fpr}"),
    };
    let kind = ek_kind(batch, serial.as_str());
    match store.publish_artifact(Artifact { kind, version: 1, body: ek_spki.to_vec(), published_at: now }, audit) {
        Ok(()) => Ok(fpr),
        Err(StoreError::NotNewer { .. }) => Err(AuthorityError::forbidden(format!(
            "serial {serial} in batch {batch} got an EK registered at the same time; check `batch show`"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// What the station relays to the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Names the challenge when the answer comes back.
    pub id: String,
    /// For TPM2_ActivateCredential: the TPM2_ID_OBJECT's contents.
    pub credential_blob: Vec<u8>,
    /// For TPM2_ActivateCredential: the TPM2B_ENCRYPTED_SECRET's contents.
    pub encrypted_secret: Vec<u8>,
}

struct Pending {
    batch: String,
    serial: String,
    spki_sha256: String,
    ek_sha256: String,
    secret: Vec<u8>,
    expires: i64,
}

/// The challenges issued and not yet answered (this node's memory).
#[derive(Default)]
pub struct Challenges(Mutex<HashMap<String, Pending>>);

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenges")
    }
}

fn random(n: usize) -> Result<Vec<u8>, AuthorityError> {
    let mut v = vec![0u8; n];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut v)
        .map_err(|_| AuthorityError::Config("RNG failed".into()))?;
    Ok(v)
}

impl Challenges {
    /// Challenge device `serial` of `batch` (which requires attestation) to
    /// prove that the key whose TPMT_PUBLIC is `public_area` is in its TPM.
    pub fn issue(
        &self,
        store: &dyn Store,
        now: i64,
        batch: &str,
        serial: &str,
        public_area: &[u8],
    ) -> Result<Challenge, AuthorityError> {
        let ek = registered_ek(store, batch, serial)?.ok_or_else(|| {
            AuthorityError::forbidden(format!(
                "no TPM endorsement key is registered for serial {serial} in batch {batch}: register it \
                 (iotpki batch add-ek) before this device's birth"
            ))
        })?;
        let public = iotpki_core::tpm::parse_ecc_public(public_area)
            .map_err(|e| AuthorityError::malformed(format!("the device's TPM key: {e}")))?;
        public.check_device_key().map_err(|e| AuthorityError::forbidden(format!("the device's TPM key: {e}")))?;
        let spki = public.spki_der()?;
        let secret = random(32)?;
        let cred = iotpki_core::tpm::make_credential(&ek, &public.name, &secret)?;
        let id = hex::encode(random(16)?);
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, p| p.expires > now);
        if m.len() >= MAX_CHALLENGES {
            return Err(AuthorityError::Unavailable(format!(
                "{MAX_CHALLENGES} TPM challenges are waiting for answers; try again later"
            )));
        }
        m.insert(
            id.clone(),
            Pending {
                batch: batch.into(),
                serial: serial.into(),
                spki_sha256: spki_fingerprint(&spki),
                ek_sha256: spki_fingerprint(&ek),
                secret,
                expires: now + CHALLENGE_TTL,
            },
        );
        Ok(Challenge { id, credential_blob: cred.credential_blob, encrypted_secret: cred.encrypted_secret })
    }

    /// Check the answer to challenge `id` for a request for `serial` in
    /// `batch` whose key's subjectPublicKeyInfo hashes to `spki_sha256`; the
    /// challenge is used up either way. Returns the EK's fingerprint.
    pub fn check(
        &self,
        now: i64,
        id: &str,
        secret: &[u8],
        batch: &str,
        serial: &str,
        spki_sha256: &str,
    ) -> Result<String, AuthorityError> {
        let p = self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        let p = p.filter(|p| p.expires > now).ok_or_else(|| {
            AuthorityError::forbidden(format!(
                "TPM challenge {id} is unknown, used or expired (answers within {CHALLENGE_TTL} s, on the node that \
                 issued it): start this birth again"
            ))
        })?;
        if p.batch != batch || p.serial != serial {
            return Err(AuthorityError::forbidden(format!(
                "TPM challenge {id} was for serial {} in batch {}, not {serial} in {batch}",
                p.serial, p.batch
            )));
        }
        if p.spki_sha256 != spki_sha256 {
            return Err(AuthorityError::forbidden("the request's key is not the TPM key that was attested".into()));
        }
        if aws_lc_rs::constant_time::verify_slices_are_equal(&p.secret, secret).is_err() {
            return Err(AuthorityError::forbidden(
                "the TPM did not recover the challenge's secret: the key is not in the TPM whose EK is registered \
                 for this serial"
                    .into(),
            ));
        }
        Ok(p.ek_sha256)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use iotpki_core::keys::{KeyType, Signer, SoftKey};
    use iotpki_core::tpm::attr;
    use iotpki_store::sqlite::SqliteStore;

    use super::*;
    use iotpki_core::clock::FixedClock;

    /// The uncompressed point of a P-256 subjectPublicKeyInfo.
    fn point(spki: &[u8]) -> Vec<u8> {
        let s = <spki::SubjectPublicKeyInfoOwned as spki::der::Decode>::from_der(spki).unwrap();
        s.subject_public_key.raw_bytes().to_vec()
    }

    /// A TPMT_PUBLIC for an ECDSA P-256 key with `attributes` and the point of `spki`.
    fn public_area(attributes: u32, spki: &[u8]) -> Vec<u8> {
        let p = point(spki);
        let mut v = vec![0x00, 0x23, 0x00, 0x0b];
        v.extend_from_slice(&attributes.to_be_bytes());
        v.extend_from_slice(&[0, 0]); // no policy
        v.extend_from_slice(&[0x00, 0x10]); // symmetric: null
        v.extend_from_slice(&[0x00, 0x18, 0x00, 0x0b]); // ECDSA with SHA-256
        v.extend_from_slice(&[0x00, 0x03]); // P-256
        v.extend_from_slice(&[0x00, 0x10]); // kdf: null
        for c in [&p[1..33], &p[33..65]] {
            v.extend_from_slice(&32u16.to_be_bytes());
            v.extend_from_slice(c);
        }
        v
    }

    const DEVICE_KEY: u32 =
        attr::FIXED_TPM | attr::FIXED_PARENT | attr::SENSITIVE_DATA_ORIGIN | attr::USER_WITH_AUTH | attr::SIGN;

    #[test]
    fn registrations_and_challenges_refuse_what_does_not_hold() {
        let d = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&d.path().join("s.db")).unwrap();
        let clock = FixedClock::new(1_800_000_000);
        let ek = SoftKey::generate(KeyType::EcdsaP256).unwrap().public_key_der().to_vec();

        let e = add_ek(&store, &clock, "B", "S-1", &ek, "t").unwrap_err().to_string();
        assert!(e.contains("does not require TPM attestation"), "{e}");
        assert!(!required(&store, "B").unwrap());
        let nb = crate::factory::NewBatch {
            tpm_attestation: true,
            ..crate::factory::NewBatch::open("B", "p", "S-1\nS-2".into(), 2, (0, 2_000_000_000))
        };
        crate::factory::create_batch(&store, &clock, nb, "t").unwrap();
        assert!(required(&store, "B").unwrap());
        // A batch made without the requirement does not check EKs, and a second
        // create of its id with the requirement fails, writing nothing.
        let nb = crate::factory::NewBatch::open("B2", "p", "S-1".into(), 1, (0, 2_000_000_000));
        crate::factory::create_batch(&store, &clock, nb.clone(), "t").unwrap();
        let audit = iotpki_store::AuditLog::verify_audit(&store).unwrap().entries;
        let again = crate::factory::NewBatch { tpm_attestation: true, ..nb };
        let e = crate::factory::create_batch(&store, &clock, again, "t").unwrap_err().to_string();
        assert!(e.contains("batch B2 exists already"), "{e}");
        assert!(!required(&store, "B2").unwrap());
        assert_eq!(iotpki_store::AuditLog::verify_audit(&store).unwrap().entries, audit, "nothing written");
        let e = add_ek(&store, &clock, "B2", "S-1", &ek, "t").unwrap_err().to_string();
        assert!(e.contains("does not require TPM attestation"), "{e}");
        let ed = SoftKey::generate(KeyType::Ed25519).unwrap().public_key_der().to_vec();
        let e = add_ek(&store, &clock, "B", "S-1", &ed, "t").unwrap_err().to_string();
        assert!(e.contains("not an ECC P-256 key"), "{e}");
        let fpr = add_ek(&store, &clock, "B", "S-1", &ek, "t").unwrap();
        assert_eq!(add_ek(&store, &clock, "B", "S-1", &ek, "t").unwrap(), fpr, "the same EK again: fine");
        let other = SoftKey::generate(KeyType::EcdsaP256).unwrap().public_key_der().to_vec();
        let e = add_ek(&store, &clock, "B", "S-1", &other, "t").unwrap_err().to_string();
        assert!(e.contains("already has EK"), "{e}");

        let c = Challenges::default();
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let spki = key.public_key_der().to_vec();
        let key_fpr = spki_fingerprint(&spki);
        let now = clock.now();
        let e = c.issue(&store, now, "B", "S-2", &public_area(DEVICE_KEY, &spki)).unwrap_err().to_string();
        assert!(e.contains("no TPM endorsement key is registered for serial S-2"), "{e}");
        // A key that could leave the TPM, or a decryption key: refused, named.
        let e = c
            .issue(&store, now, "B", "S-1", &public_area(DEVICE_KEY & !attr::FIXED_TPM, &spki))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing: fixedTPM"), "{e}");
        let e =
            c.issue(&store, now, "B", "S-1", &public_area(DEVICE_KEY | attr::DECRYPT, &spki)).unwrap_err().to_string();
        assert!(e.contains("not allowed: decrypt"), "{e}");
        assert!(c.issue(&store, now, "B", "S-1", b"junk").is_err());

        // Without the EK's private key the secret is unknown: a guess is refused, and the challenge is gone.
        let ch = c.issue(&store, now, "B", "S-1", &public_area(DEVICE_KEY, &spki)).unwrap();
        let e = c.check(now, &ch.id, &[0; 32], "B", "S-1", &key_fpr).unwrap_err().to_string();
        assert!(e.contains("did not recover the challenge's secret"), "{e}");
        let e = c.check(now, &ch.id, &[0; 32], "B", "S-1", &key_fpr).unwrap_err().to_string();
        assert!(e.contains("unknown, used or expired"), "{e}");
        // Another serial, another key, too late: refused.
        let ch = c.issue(&store, now, "B", "S-1", &public_area(DEVICE_KEY, &spki)).unwrap();
        let e = c.check(now, &ch.id, &[0; 32], "B", "S-9", &key_fpr).unwrap_err().to_string();
        assert!(e.contains("was for serial S-1 in batch B"), "{e}");
        let ch = c.issue(&store, now, "B", "S-1", &public_area(DEVICE_KEY, &spki)).unwrap();
        let e = c.check(now, &ch.id, &[0; 32], "B", "S-1", "00").unwrap_err().to_string();
        assert!(e.contains("not the TPM key that was attested"), "{e}");
        let ch = c.issue(&store, now, "B", "S-1", &public_area(DEVICE_KEY, &spki)).unwrap();
        let e = c.check(now + CHALLENGE_TTL, &ch.id, &[0; 32], "B", "S-1", &key_fpr).unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");
    }
}
