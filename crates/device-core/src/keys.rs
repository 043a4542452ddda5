//! Public keys and signature checks for the three key types the authority
//! certifies and signs with: ECDSA P-256, ECDSA P-384, Ed25519.

use alloc::vec::Vec;

use const_oid::db::{rfc5912, rfc8410};
use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use sha2::Digest;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use crate::Error;

/// The key types the device side signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256 (the authority's default).
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl KeyType {
    /// The X.509 signature algorithm a key of this type signs requests with.
    pub fn signature_oid(self) -> ObjectIdentifier {
        match self {
            Self::EcdsaP256 => rfc5912::ECDSA_WITH_SHA_256,
            Self::EcdsaP384 => rfc5912::ECDSA_WITH_SHA_384,
            Self::Ed25519 => rfc8410::ID_ED_25519,
        }
    }

    /// Octets of each of `r` and `s` in an ECDSA signature; `None` for Ed25519.
    pub(crate) fn field_len(self) -> Option<usize> {
        match self {
            Self::EcdsaP256 => Some(32),
            Self::EcdsaP384 => Some(48),
            Self::Ed25519 => None,
        }
    }
}

/// A public key parsed from its subjectPublicKeyInfo, ready to verify with.
#[derive(Clone, Debug)]
pub struct PublicKey {
    kind: Inner,
}

#[derive(Clone, Debug)]
enum Inner {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    /// Kept as its octets: like the core (aws-lc), any 32 octets are a key
    /// until a signature is checked with it.
    Ed25519([u8; 32]),
}

impl PublicKey {
    /// Parse a DER subjectPublicKeyInfo in the one form iotpki names keys in
    /// (the core's `canonical_spki`): exact DER, EC points uncompressed on
    /// their named curve, Ed25519 without parameters. Other forms are refused,
    /// since keys are compared and counted by the hash of these octets.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, Error> {
        let spki = SubjectPublicKeyInfoOwned::from_der(der).map_err(|e| Error::der("subjectPublicKeyInfo", e))?;
        if spki.to_der().ok().as_deref() != Some(der) {
            return Err(Error::UnsupportedKey("not in DER (its re-encoding differs)"));
        }
        Self::from_spki(&spki)
    }

    pub(crate) fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Self, Error> {
        let key =
            spki.subject_public_key.as_bytes().ok_or(Error::UnsupportedKey("the key BIT STRING has unused bits"))?;
        let alg = &spki.algorithm;
        let kind = if alg.oid == rfc5912::ID_EC_PUBLIC_KEY {
            let curve: ObjectIdentifier = alg
                .parameters
                .as_ref()
                .ok_or(Error::UnsupportedKey("an EC key without a named curve"))?
                .decode_as()
                .map_err(|_| Error::UnsupportedKey("an EC key whose parameters are not a named curve"))?;
            let len = if curve == rfc5912::SECP_256_R_1 {
                65
            } else if curve == rfc5912::SECP_384_R_1 {
                97
            } else {
                return Err(Error::UnsupportedKey("an EC curve other than P-256 and P-384"));
            };
            if key.first() != Some(&0x04) || key.len() != len {
                return Err(Error::UnsupportedKey("an EC point that is not uncompressed (04 || x || y)"));
            }
            let invalid = |_| Error::UnsupportedKey("an EC point not on its curve");
            if len == 65 {
                Inner::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(key).map_err(invalid)?)
            } else {
                Inner::P384(p384::ecdsa::VerifyingKey::from_sec1_bytes(key).map_err(invalid)?)
            }
        } else if alg.oid == rfc8410::ID_ED_25519 {
            if alg.parameters.is_some() {
                return Err(Error::UnsupportedKey("an Ed25519 key with algorithm parameters"));
            }
            let raw: [u8; 32] = key.try_into().map_err(|_| Error::UnsupportedKey("an Ed25519 key not of 32 octets"))?;
            Inner::Ed25519(raw)
        } else {
            return Err(Error::UnsupportedKey("a key algorithm other than EC and Ed25519"));
        };
        Ok(Self { kind })
    }

    /// Its type.
    pub fn key_type(&self) -> KeyType {
        match self.kind {
            Inner::P256(_) => KeyType::EcdsaP256,
            Inner::P384(_) => KeyType::EcdsaP384,
            Inner::Ed25519(_) => KeyType::Ed25519,
        }
    }

    /// Verify an X.509 signature (DER ECDSA-Sig-Value, or Ed25519's 64
    /// octets) over `msg` by signature algorithm `alg`. ECDSA with SHA-256
    /// or SHA-384 on either curve, as the authority's verifier takes them.
    pub(crate) fn verify_x509(&self, alg: &AlgorithmIdentifierOwned, msg: &[u8], sig: &[u8]) -> Result<(), ()> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let digest = |oid: ObjectIdentifier| -> Option<Vec<u8>> {
            if alg.parameters.is_some() {
                return None; // RFC 5758: the ECDSA algorithm identifiers have none
            }
            if oid == rfc5912::ECDSA_WITH_SHA_256 {
                Some(sha2::Sha256::digest(msg).to_vec())
            } else if oid == rfc5912::ECDSA_WITH_SHA_384 {
                Some(sha2::Sha384::digest(msg).to_vec())
            } else {
                None
            }
        };
        match &self.kind {
            Inner::P256(k) => {
                let h = digest(alg.oid).ok_or(())?;
                let s = p256::ecdsa::Signature::from_der(sig).map_err(|_| ())?;
                k.verify_prehash(&h, &s).map_err(|_| ())
            }
            Inner::P384(k) => {
                let h = digest(alg.oid).ok_or(())?;
                let s = p384::ecdsa::Signature::from_der(sig).map_err(|_| ())?;
                k.verify_prehash(&h, &s).map_err(|_| ())
            }
            Inner::Ed25519(k) => {
                if alg.oid != rfc8410::ID_ED_25519 || alg.parameters.is_some() {
                    return Err(());
                }
                ed25519(k, msg, sig)
            }
        }
    }

    /// Verify a signature in its fixed form (ECDSA `r || s`, as COSE carries
    /// it, with the curve's own hash; Ed25519's 64 octets).
    pub(crate) fn verify_fixed(&self, msg: &[u8], sig: &[u8]) -> Result<(), ()> {
        use p256::ecdsa::signature::Verifier;
        match &self.kind {
            Inner::P256(k) => k.verify(msg, &p256::ecdsa::Signature::from_slice(sig).map_err(|_| ())?).map_err(|_| ()),
            Inner::P384(k) => k.verify(msg, &p384::ecdsa::Signature::from_slice(sig).map_err(|_| ())?).map_err(|_| ()),
            Inner::Ed25519(k) => ed25519(k, msg, sig),
        }
    }
}

fn ed25519(key: &[u8; 32], msg: &[u8], sig: &[u8]) -> Result<(), ()> {
    let k = ed25519_dalek::VerifyingKey::from_bytes(key).map_err(|_| ())?;
    k.verify_strict(msg, &ed25519_dalek::Signature::from_slice(sig).map_err(|_| ())?).map_err(|_| ())
}

/// SHA-256 of `data`: key ids (of a DER subjectPublicKeyInfo), birth certificate hashes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

/// An ECDSA signature in fixed form (`r || s`, each `n` octets) as DER.
pub(crate) fn ecdsa_fixed_to_der(sig: &[u8], n: usize) -> Option<Vec<u8>> {
    if sig.len() != 2 * n {
        return None;
    }
    let (r, s) = sig.split_at(n);
    #[derive(der::Sequence)]
    struct EcdsaSig<'a> {
        r: der::asn1::UintRef<'a>,
        s: der::asn1::UintRef<'a>,
    }
    EcdsaSig { r: der::asn1::UintRef::new(r).ok()?, s: der::asn1::UintRef::new(s).ok()? }.to_der().ok()
}
