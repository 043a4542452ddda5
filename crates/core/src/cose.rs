//! The COSE (RFC 9052, algorithms RFC 9053) and CBOR pieces that trust bundles
//! ([`crate::bundle`]) and ownership vouchers ([`crate::voucher`]) share: the three
//! signature algorithms, key identifiers, and the bridge between [`Signer`]'s
//! X.509-style signatures and COSE's.
//!
//! COSE carries an ECDSA signature as `r || s`, each left-padded to the curve's
//! size (RFC 9053, section 2.1), where X.509 carries a DER `ECDSA-Sig-Value`; a
//! [`Signer`] returns the latter, so signing converts DER to `r || s` and
//! verification converts back before handing over to [`keys::verify`], the one
//! verification path of the crate. Ed25519 signatures are the same 64 octets in both,
//! and so are ML-DSA's (the FIPS 204 signature; COSE algorithms ML-DSA-44/65/87,
//! -48/-49/-50, draft-ietf-cose-dilithium).

use std::fmt;

use coset::iana;
use coset::{Algorithm, RegisteredLabelWithPrivate};
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;

use crate::keys::{self, KeyType, Signer};

/// A key identifier: the SHA-256 of the signer's DER subjectPublicKeyInfo, in
/// its one canonical form ([`keys::canonical_spki`]; every key a bundle or
/// voucher names is checked to be in it, so one key has one kid).
///
/// The same octets, in hex, are the key's fingerprint everywhere else in iotpki
/// ([`keys::spki_fingerprint`]), so a `kid` in a file can be matched by eye.
pub type KeyId = [u8; 32];

/// The key identifier (`kid`) of a DER subjectPublicKeyInfo.
pub fn key_id(spki_der: &[u8]) -> KeyId {
    sha256(spki_der)
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = crate::backend::digest::digest(&crate::backend::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The COSE signature algorithms we sign and verify with: one per key type.
///
/// The ML-DSA ones sign and verify in the aws-lc build; the ring build parses
/// them and refuses them by name ([`keys::verify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoseAlg {
    /// ECDSA with SHA-256 on P-256 (COSE `ES256`, -7).
    Es256,
    /// ECDSA with SHA-384 on P-384 (COSE `ES384`, -35).
    Es384,
    /// Ed25519 (COSE `EdDSA`, -8).
    EdDsa,
    /// ML-DSA-44 (COSE `ML-DSA-44`, -48).
    MlDsa44,
    /// ML-DSA-65 (COSE `ML-DSA-65`, -49).
    MlDsa65,
    /// ML-DSA-87 (COSE `ML-DSA-87`, -50).
    MlDsa87,
}

impl CoseAlg {
    /// The algorithm a key of type `kt` signs with, or `None` for a key type we do not sign with (RSA).
    pub fn for_key(kt: KeyType) -> Option<Self> {
        match kt {
            KeyType::EcdsaP256 => Some(Self::Es256),
            KeyType::EcdsaP384 => Some(Self::Es384),
            KeyType::Ed25519 => Some(Self::EdDsa),
            KeyType::MlDsa44 => Some(Self::MlDsa44),
            KeyType::MlDsa65 => Some(Self::MlDsa65),
            KeyType::MlDsa87 => Some(Self::MlDsa87),
            KeyType::Rsa(_) => None,
        }
    }

    /// The key type this algorithm needs.
    pub fn key_type(self) -> KeyType {
        match self {
            Self::Es256 => KeyType::EcdsaP256,
            Self::Es384 => KeyType::EcdsaP384,
            Self::EdDsa => KeyType::Ed25519,
            Self::MlDsa44 => KeyType::MlDsa44,
            Self::MlDsa65 => KeyType::MlDsa65,
            Self::MlDsa87 => KeyType::MlDsa87,
        }
    }

    pub(crate) fn iana(self) -> iana::Algorithm {
        match self {
            Self::Es256 => iana::Algorithm::ES256,
            Self::Es384 => iana::Algorithm::ES384,
            Self::EdDsa => iana::Algorithm::EdDSA,
            Self::MlDsa44 => iana::Algorithm::ML_DSA_44,
            Self::MlDsa65 => iana::Algorithm::ML_DSA_65,
            Self::MlDsa87 => iana::Algorithm::ML_DSA_87,
        }
    }

    pub(crate) fn from_label(label: &Algorithm) -> Option<Self> {
        match label {
            RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES256) => Some(Self::Es256),
            RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES384) => Some(Self::Es384),
            RegisteredLabelWithPrivate::Assigned(iana::Algorithm::EdDSA) => Some(Self::EdDsa),
            RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ML_DSA_44) => Some(Self::MlDsa44),
            RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ML_DSA_65) => Some(Self::MlDsa65),
            RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ML_DSA_87) => Some(Self::MlDsa87),
            _ => None,
        }
    }

    /// Octets of each of `r` and `s` for ECDSA.
    fn field_len(self) -> Option<usize> {
        match self {
            Self::Es256 => Some(32),
            Self::Es384 => Some(48),
            Self::EdDsa | Self::MlDsa44 | Self::MlDsa65 | Self::MlDsa87 => None,
        }
    }
}

impl fmt::Display for CoseAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
            Self::MlDsa44 => "ML-DSA-44",
            Self::MlDsa65 => "ML-DSA-65",
            Self::MlDsa87 => "ML-DSA-87",
        })
    }
}

/// Parse a DER subjectPublicKeyInfo of a key type we verify COSE signatures with.
pub(crate) fn parse_signer_key(spki_der: &[u8]) -> Result<(SubjectPublicKeyInfoOwned, CoseAlg), String> {
    // One key, one encoding: the kid is a hash of these octets, and signers are
    // counted by kid (a compressed twin of a key would count twice).
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der).map_err(|e| format!("not a subjectPublicKeyInfo: {e}"))?;
    keys::canonical_spki(spki_der).map_err(|e| e.to_string())?;
    let kt = KeyType::of_spki(&spki).map_err(|e| e.to_string())?;
    let alg = CoseAlg::for_key(kt)
        .ok_or_else(|| format!("a {kt} key cannot sign here (use p256, p384, ed25519 or ml-dsa-*)"))?;
    Ok((spki, alg))
}

/// Sign `tbs` (a COSE `Sig_structure`) with `signer`, returning the COSE form of the signature.
///
/// The fresh signature is verified before it is returned, so a broken key backend
/// cannot put a signature into a file that no device would accept.
pub(crate) fn sign(signer: &dyn Signer, tbs: &[u8]) -> Result<(CoseAlg, Vec<u8>), String> {
    let kt = signer.key_type();
    let alg = CoseAlg::for_key(kt)
        .ok_or_else(|| format!("a {kt} key cannot sign here (use p256, p384, ed25519 or ml-dsa-*)"))?;
    let sig = signer.sign(tbs).map_err(|e| e.to_string())?;
    let cose_sig = match alg.field_len() {
        Some(n) => ecdsa_der_to_fixed(&sig, n)?,
        None => sig,
    };
    verify(signer.public_key_der(), alg, tbs, &cose_sig).map_err(|e| format!("the signer's own signature: {e}"))?;
    Ok((alg, cose_sig))
}

/// Verify the COSE signature `sig` over `tbs` by the key `spki_der`, which must be of `alg`'s key type.
pub(crate) fn verify(spki_der: &[u8], alg: CoseAlg, tbs: &[u8], sig: &[u8]) -> Result<(), String> {
    let (spki, key_alg) = parse_signer_key(spki_der)?;
    if key_alg != alg {
        return Err(format!("the signature says {alg} but the key is {}", key_alg.key_type()));
    }
    let x509_sig = match alg.field_len() {
        Some(n) => ecdsa_fixed_to_der(sig, n)?,
        None => sig.to_vec(),
    };
    let x509_alg = alg.key_type().signature_algorithm().map_err(|e| e.to_string())?;
    keys::verify(&spki, &x509_alg, tbs, &x509_sig).map_err(|e| match e {
        // Said by name (an ML-DSA signature in the ring build), not as a bad signature.
        crate::Error::UnsupportedAlgorithm(m) => m,
        _ => "the signature does not verify".to_string(),
    })
}

#[derive(der::Sequence)]
struct EcdsaSig<'a> {
    r: der::asn1::UintRef<'a>,
    s: der::asn1::UintRef<'a>,
}

fn ecdsa_der_to_fixed(der_sig: &[u8], n: usize) -> Result<Vec<u8>, String> {
    let sig = EcdsaSig::from_der(der_sig).map_err(|e| format!("signer returned a malformed ECDSA signature: {e}"))?;
    let mut out = vec![0u8; 2 * n];
    for (i, v) in [sig.r.as_bytes(), sig.s.as_bytes()].into_iter().enumerate() {
        if v.len() > n {
            return Err("signer returned an ECDSA signature for another curve".into());
        }
        let end = (i + 1) * n;
        out[end - v.len()..end].copy_from_slice(v);
    }
    Ok(out)
}

fn ecdsa_fixed_to_der(sig: &[u8], n: usize) -> Result<Vec<u8>, String> {
    if sig.len() != 2 * n {
        return Err(format!("an ECDSA signature here is {} octets, this one is {}", 2 * n, sig.len()));
    }
    let (r, s) = sig.split_at(n);
    let r = der::asn1::UintRef::new(r).map_err(|e| e.to_string())?;
    let s = der::asn1::UintRef::new(s).map_err(|e| e.to_string())?;
    EcdsaSig { r, s }.to_der().map_err(|e| e.to_string())
}

/// CBOR in and out: one item, no trailing bytes, and nothing but the deterministic
/// encoding of RFC 8949 section 4.2.1 (which is what [`to_vec`] writes).
pub(crate) mod cbor {
    pub(crate) use ciborium::Value;

    /// Encode a value. Values we build have only integers, strings, arrays, maps
    /// and tags, which ciborium always encodes (shortest form, definite lengths).
    pub(crate) fn to_vec(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail and our values are always serialisable.
        let _ = ciborium::ser::into_writer(v, &mut out);
        out
    }

    /// Decode exactly one item from `bytes`, which must be its deterministic encoding.
    pub(crate) fn from_slice(bytes: &[u8]) -> Result<Value, String> {
        let mut rest = bytes;
        let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, 16).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after the CBOR item", rest.len()));
        }
        if to_vec(&v) != bytes {
            return Err("not in deterministic CBOR encoding (RFC 8949, section 4.2.1)".into());
        }
        Ok(v)
    }

    /// A map's entries, which must have exactly the unsigned integer keys `keys`, in that order.
    pub(crate) fn int_map(v: Value, keys: &[u64]) -> Result<Vec<Value>, String> {
        let Value::Map(entries) = v else { return Err("expected a map".into()) };
        if entries.len() != keys.len() {
            return Err(format!("expected a map of {} entries, found {}", keys.len(), entries.len()));
        }
        let mut out = Vec::with_capacity(keys.len());
        for ((k, v), want) in entries.into_iter().zip(keys) {
            match k.as_integer().and_then(|i| u64::try_from(i).ok()) {
                Some(got) if got == *want => out.push(v),
                _ => return Err(format!("expected map key {want}, found {k:?}")),
            }
        }
        Ok(out)
    }

    pub(crate) fn uint(v: &Value, what: &str) -> Result<u64, String> {
        v.as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| format!("{what}: expected an unsigned integer"))
    }

    /// A time: an unsigned integer of Unix seconds that fits an `i64`.
    pub(crate) fn time(v: &Value, what: &str) -> Result<i64, String> {
        i64::try_from(uint(v, what)?).map_err(|_| format!("{what}: out of range"))
    }

    pub(crate) fn bytes(v: Value, what: &str) -> Result<Vec<u8>, String> {
        match v {
            Value::Bytes(b) => Ok(b),
            _ => Err(format!("{what}: expected a byte string")),
        }
    }

    pub(crate) fn hash(v: Value, what: &str) -> Result<[u8; 32], String> {
        let b = bytes(v, what)?;
        b.try_into().map_err(|_| format!("{what}: expected 32 octets"))
    }

    pub(crate) fn text(v: Value, what: &str) -> Result<String, String> {
        match v {
            Value::Text(t) => Ok(t),
            _ => Err(format!("{what}: expected a text string")),
        }
    }

    pub(crate) fn array(v: Value, what: &str, max: usize) -> Result<Vec<Value>, String> {
        match v {
            Value::Array(a) if a.len() <= max => Ok(a),
            Value::Array(a) => Err(format!("{what}: {} items, at most {max} allowed", a.len())),
            _ => Err(format!("{what}: expected an array")),
        }
    }

    pub(crate) fn time_value(t: i64) -> Value {
        Value::Integer(t.max(0).into())
    }
}

/// Hex of a key id, as people see it.
pub(crate) fn kid_hex(kid: &KeyId) -> String {
    hex::encode(kid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SoftKey;

    #[test]
    fn sign_and_verify_each_algorithm() {
        for &kt in KeyType::soft_signing() {
            let k = SoftKey::generate(kt).unwrap();
            // Many signatures, so that short r or s (leading zero octets) are met and padded.
            for i in 0..64u8 {
                let msg = [i; 7];
                let (alg, sig) = sign(&k, &msg).unwrap();
                assert_eq!(alg.key_type(), kt);
                if let Some(n) = alg.field_len() {
                    assert_eq!(sig.len(), 2 * n);
                }
                verify(k.public_key_der(), alg, &msg, &sig).unwrap();
                assert!(verify(k.public_key_der(), alg, b"other", &sig).is_err());
            }
        }
    }

    #[test]
    fn wrong_algorithm_or_length_is_refused() {
        let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let (_, sig) = sign(&k, b"m").unwrap();
        let err = verify(k.public_key_der(), CoseAlg::Es384, b"m", &sig).unwrap_err();
        assert!(err.contains("the key is p256"), "{err}");
        let err = verify(k.public_key_der(), CoseAlg::Es256, b"m", &sig[..63]).unwrap_err();
        assert!(err.contains("64 octets"), "{err}");
    }

    #[test]
    fn ml_dsa_cose_labels_are_the_draft_ones() {
        // draft-ietf-cose-dilithium: ML-DSA-44 = -48, ML-DSA-65 = -49, ML-DSA-87 = -50.
        for (alg, label) in [(CoseAlg::MlDsa44, -48), (CoseAlg::MlDsa65, -49), (CoseAlg::MlDsa87, -50)] {
            assert_eq!(alg.iana() as i64, label);
            assert_eq!(CoseAlg::from_label(&Algorithm::Assigned(alg.iana())), Some(alg));
            assert_eq!(CoseAlg::for_key(alg.key_type()), Some(alg));
        }
    }

    /// The ring build reads an ML-DSA signer and says it cannot check it, by name.
    #[cfg(not(feature = "aws-lc"))]
    #[test]
    fn ml_dsa_signatures_are_refused_by_name_on_ring() {
        let spki = spki::SubjectPublicKeyInfoOwned {
            algorithm: KeyType::MlDsa44.signature_algorithm().unwrap(),
            subject_public_key: der::asn1::BitString::from_bytes(&[7; 1312]).unwrap(),
        }
        .to_der()
        .unwrap();
        let err = verify(&spki, CoseAlg::MlDsa44, b"m", &[0; 2420]).unwrap_err();
        assert!(err.contains("aws-lc"), "{err}");
    }

    #[test]
    fn cbor_must_be_deterministic() {
        // 1 encoded in two octets instead of one.
        assert!(cbor::from_slice(&[0x18, 0x01]).unwrap_err().contains("deterministic"));
        assert!(cbor::from_slice(&[0x01, 0x01]).unwrap_err().contains("after"));
        assert_eq!(cbor::from_slice(&[0x01]).unwrap(), cbor::Value::Integer(1.into()));
    }
}
