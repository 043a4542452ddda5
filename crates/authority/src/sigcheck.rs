//! The signature checks of a client certificate's path, without doing again
//! what cannot have changed.
//!
//! A device renewing presents a certificate the path check has never seen: its
//! path costs two signature checks, the leaf's by its issuing CA and the CA's
//! by the root. Two things spare them, and nothing else of webpki's checks
//! (validity, basic constraints, key usage, names, unknown critical
//! extensions, the path to one of our anchors) is skipped:
//!
//! - [`SignatureMemo`]: a signature that verified, keyed by SHA-256 of
//!   everything its verdict depends on (the algorithms, the key, the message
//!   and the signature). A verdict is a pure function of those, so it is
//!   remembered, bounded; in practice it holds the CA certificates' signatures.
//! - [`Recorded`]: the leaf's own signature, when the leaf is, octet for
//!   octet, a certificate the store recorded as issued by one of our issuing
//!   CAs, and the key webpki checks it with is that CA's own key and names it
//!   by its key identifier. The authority made that signature; checking it
//!   again proves nothing the record does not.

use std::collections::HashSet;
use std::sync::Mutex;

use rustls_pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};
use sha2::{Digest, Sha256};

/// Signatures that verified (see the module's documentation).
#[derive(Default)]
pub(crate) struct SignatureMemo(Mutex<HashSet<[u8; 32]>>);

impl SignatureMemo {
    /// Most verdicts kept (all are forgotten when it is full).
    const MAX: usize = 4_096;

    fn key(alg: &dyn SignatureVerificationAlgorithm, public_key: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [alg.public_key_alg_id().as_ref(), alg.signature_alg_id().as_ref(), public_key, message, signature]
        {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    }

    fn holds(&self, key: &[u8; 32]) -> bool {
        self.0.lock().is_ok_and(|m| m.contains(key))
    }

    fn remember(&self, key: [u8; 32]) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= Self::MAX {
                m.clear();
            }
            m.insert(key);
        }
    }
}

/// The leaf taken on record: its TBS and signature as presented, and the
/// subjectPublicKey of the issuing CA the store says signed it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recorded<'a> {
    pub(crate) issuer_key: &'a [u8],
    pub(crate) tbs: &'a [u8],
    pub(crate) signature: &'a [u8],
}

/// One of webpki's algorithms, with the memo and the record in front of it.
#[derive(Debug)]
struct Checked<'a> {
    inner: &'static dyn SignatureVerificationAlgorithm,
    memo: &'a SignatureMemo,
    recorded: Option<Recorded<'a>>,
}

impl std::fmt::Debug for SignatureMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignatureMemo")
    }
}

impl SignatureVerificationAlgorithm for Checked<'_> {
    fn verify_signature(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), InvalidSignature> {
        if let Some(r) = &self.recorded {
            if r.issuer_key == public_key && r.tbs == message && r.signature == signature {
                return Ok(());
            }
        }
        let key = SignatureMemo::key(self.inner, public_key, message, signature);
        if self.memo.holds(&key) {
            return Ok(());
        }
        self.inner.verify_signature(public_key, message, signature)?;
        self.memo.remember(key);
        Ok(())
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.signature_alg_id()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

/// webpki's algorithms behind the memo and, when there is one, the record;
/// `f` gets them in webpki's form.
pub(crate) fn with_algorithms<T>(
    memo: &SignatureMemo,
    recorded: Option<Recorded<'_>>,
    f: impl FnOnce(&[&dyn SignatureVerificationAlgorithm]) -> T,
) -> T {
    let checked: Vec<Checked<'_>> =
        webpki::ALL_VERIFICATION_ALGS.iter().map(|&inner| Checked { inner, memo, recorded }).collect();
    let algs: Vec<&dyn SignatureVerificationAlgorithm> =
        checked.iter().map(|c| c as &dyn SignatureVerificationAlgorithm).collect();
    f(&algs)
}

/// The TBS and the signature (the BIT STRING's octets) of a certificate, as
/// its DER holds them; `None` when it is not a certificate's outer shape.
pub(crate) fn tbs_and_signature(der: &[u8]) -> Option<(&[u8], &[u8])> {
    use der::{Decode, Reader};
    let mut r = der::SliceReader::new(der).ok()?;
    let outer = der::Header::decode(&mut r).ok()?;
    if outer.tag != der::Tag::Sequence {
        return None;
    }
    let tbs = r.tlv_bytes().ok()?;
    let _algorithm = r.tlv_bytes().ok()?;
    let sig = der::asn1::BitStringRef::decode(&mut r).ok()?;
    if !r.is_finished() {
        return None;
    }
    Some((tbs, sig.as_bytes()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotpki_core::clock::SystemClock;

    /// The operational CA's certificate and the root's subjectPublicKey (its signer).
    fn ca_pair() -> (Vec<u8>, Vec<u8>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let pass = crate::keyfile::Passphrase::new("sigcheck test passphrase".into()).unwrap();
        crate::init::init(&dir, &Default::default(), &pass, &SystemClock).unwrap();
        let read = |f: &str| {
            iotpki_core::pem::decode_one("CERTIFICATE", &std::fs::read_to_string(dir.join("ca").join(f)).unwrap())
                .unwrap()
        };
        let root = iotpki_core::profile::cert_info(&read("root.crt")).unwrap();
        let key = root.cert.tbs_certificate.subject_public_key_info.subject_public_key.as_bytes().unwrap().to_vec();
        (read("operational.crt"), key)
    }

    fn verify(memo: &SignatureMemo, recorded: Option<Recorded<'_>>, key: &[u8], tbs: &[u8], sig: &[u8]) -> bool {
        with_algorithms(memo, recorded, |algs| {
            let ecdsa = algs
                .iter()
                .find(|a| a.signature_alg_id() == webpki::aws_lc_rs::ECDSA_P256_SHA256.signature_alg_id())
                .unwrap();
            ecdsa.verify_signature(key, tbs, sig).is_ok()
        })
    }

    #[test]
    fn a_signature_is_checked_remembered_only_when_good_and_taken_on_record_only_as_recorded() {
        let (cert, root_key) = ca_pair();
        let (tbs, sig) = tbs_and_signature(&cert).unwrap();
        let mut bad_sig = sig.to_vec();
        *bad_sig.last_mut().unwrap() ^= 1;
        let memo = SignatureMemo::default();
        // A bad signature fails, and fails again: a refusal is never remembered.
        assert!(!verify(&memo, None, &root_key, tbs, &bad_sig));
        assert!(!verify(&memo, None, &root_key, tbs, &bad_sig));
        assert_eq!(memo.0.lock().unwrap().len(), 0);
        // The good one verifies and is remembered, under its whole input.
        assert!(verify(&memo, None, &root_key, tbs, sig));
        assert!(memo.holds(&SignatureMemo::key(webpki::aws_lc_rs::ECDSA_P256_SHA256, &root_key, tbs, sig)));
        assert!(!verify(&memo, None, &root_key, &tbs[1..], sig), "another message is checked, not remembered");
        // On record: exactly the recorded key, message and signature, nothing else.
        let memo = SignatureMemo::default();
        let rec = Recorded { issuer_key: &root_key, tbs, signature: &bad_sig };
        assert!(verify(&memo, Some(rec), &root_key, tbs, &bad_sig), "taken on record");
        assert_eq!(memo.0.lock().unwrap().len(), 0, "a record is no verdict");
        let mut other_key = root_key.clone();
        *other_key.last_mut().unwrap() ^= 1;
        assert!(!verify(&memo, Some(rec), &other_key, tbs, &bad_sig), "another key");
        assert!(!verify(&memo, Some(rec), &root_key, &tbs[..tbs.len() - 1], &bad_sig), "another message");
        let mut other_sig = bad_sig.clone();
        other_sig[8] ^= 1;
        assert!(!verify(&memo, Some(rec), &root_key, tbs, &other_sig), "another signature");
    }

    #[test]
    fn the_tbs_and_signature_are_the_certificates_own_octets_and_nothing_else_parses() {
        let (cert, _) = ca_pair();
        let (tbs, sig) = tbs_and_signature(&cert).unwrap();
        let info = iotpki_core::profile::cert_info(&cert).unwrap();
        assert_eq!(sig, info.cert.signature.as_bytes().unwrap());
        assert_eq!(tbs, der::Encode::to_der(&info.cert.tbs_certificate).unwrap().as_slice());
        let mut longer = cert.clone();
        longer.push(0);
        assert_eq!(tbs_and_signature(&longer), None, "trailing octets");
        assert_eq!(tbs_and_signature(&cert[..cert.len() - 1]), None, "cut short");
        assert_eq!(tbs_and_signature(tbs), None, "a TBS is no certificate");
    }
}
