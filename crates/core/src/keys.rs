//! Keys and signatures: the [`Signer`] trait every key backend implements
//! (key file, PKCS#11 token, TPM), the software key [`SoftKey`], and
//! signature verification for the algorithms we accept.

use std::fmt;

use crate::backend::rand::SystemRandom;
use crate::backend::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use const_oid::db::{rfc5912, rfc8410};
use const_oid::ObjectIdentifier;
use der::asn1::{AnyRef, BitString};
use der::{Decode, Encode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use crate::Error;

/// Key types a profile can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256 (the default).
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA of the given modulus size: recognised so it can be refused by name.
    Rsa(usize),
    /// ML-DSA-44 (FIPS 204, security category 2; RFC 9881 `id-ml-dsa-44`).
    MlDsa44,
    /// ML-DSA-65 (FIPS 204, security category 3; RFC 9881 `id-ml-dsa-65`).
    MlDsa65,
    /// ML-DSA-87 (FIPS 204, security category 5; RFC 9881 `id-ml-dsa-87`).
    MlDsa87,
}

/// `id-ml-dsa-44` (RFC 9881, NIST sigAlgs 17): the key and the signature algorithm.
pub const ID_ML_DSA_44: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.17");
/// `id-ml-dsa-65` (RFC 9881, NIST sigAlgs 18).
pub const ID_ML_DSA_65: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.18");
/// `id-ml-dsa-87` (RFC 9881, NIST sigAlgs 19).
pub const ID_ML_DSA_87: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.19");

/// Why an ML-DSA operation is refused in the ring build: one message everywhere.
#[cfg(not(feature = "aws-lc"))]
const ML_DSA_NEEDS_AWS_LC: &str = "ML-DSA needs iotpki's aws-lc build (ring, the small device build, has no ML-DSA)";

impl KeyType {
    /// The types we can generate and sign with.
    /// These are the classical types, which every build (aws-lc and ring) and
    /// every key backend (key file, PKCS#11, TPM where the curve fits) has;
    /// the ML-DSA types ([`KeyType::ML_DSA`]) are software keys of the aws-lc build.
    pub const SIGNING: [KeyType; 3] = [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519];

    /// The ML-DSA (FIPS 204) types, in the order of their security categories.
    pub const ML_DSA: [KeyType; 3] = [KeyType::MlDsa44, KeyType::MlDsa65, KeyType::MlDsa87];

    /// Every type this build can generate and sign with as a software key
    /// ([`KeyType::SIGNING`], and [`KeyType::ML_DSA`] in the aws-lc build).
    pub fn soft_signing() -> &'static [KeyType] {
        #[cfg(feature = "aws-lc")]
        const ALL: [KeyType; 6] = [
            KeyType::EcdsaP256,
            KeyType::EcdsaP384,
            KeyType::Ed25519,
            KeyType::MlDsa44,
            KeyType::MlDsa65,
            KeyType::MlDsa87,
        ];
        #[cfg(not(feature = "aws-lc"))]
        const ALL: [KeyType; 3] = KeyType::SIGNING;
        &ALL
    }

    /// Whether this is one of the ML-DSA types.
    pub fn is_ml_dsa(self) -> bool {
        matches!(self, Self::MlDsa44 | Self::MlDsa65 | Self::MlDsa87)
    }

    /// The RFC 9881 OID of an ML-DSA type (its key and its signature algorithm alike).
    pub fn ml_dsa_oid(self) -> Option<ObjectIdentifier> {
        match self {
            Self::MlDsa44 => Some(ID_ML_DSA_44),
            Self::MlDsa65 => Some(ID_ML_DSA_65),
            Self::MlDsa87 => Some(ID_ML_DSA_87),
            _ => None,
        }
    }

    /// The octets of an ML-DSA public key of this type (FIPS 204, table 2).
    fn ml_dsa_public_key_len(self) -> Option<usize> {
        match self {
            Self::MlDsa44 => Some(1312),
            Self::MlDsa65 => Some(1952),
            Self::MlDsa87 => Some(2592),
            _ => None,
        }
    }

    fn of_ml_dsa_oid(oid: ObjectIdentifier) -> Option<Self> {
        Self::ML_DSA.into_iter().find(|k| k.ml_dsa_oid() == Some(oid))
    }

    /// Parse the CLI / config name (`p256`, `p384`, `ed25519`, `ml-dsa-44`, `ml-dsa-65`, `ml-dsa-87`).
    pub fn from_name(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "ecdsa-p256" | "p-256" | "secp256r1" | "prime256v1" => Ok(Self::EcdsaP256),
            "p384" | "ecdsa-p384" | "p-384" | "secp384r1" => Ok(Self::EcdsaP384),
            "ed25519" => Ok(Self::Ed25519),
            "ml-dsa-44" | "mldsa44" | "ml-dsa44" => Ok(Self::MlDsa44),
            "ml-dsa-65" | "mldsa65" | "ml-dsa65" => Ok(Self::MlDsa65),
            "ml-dsa-87" | "mldsa87" | "ml-dsa87" => Ok(Self::MlDsa87),
            other => Err(Error::UnsupportedAlgorithm(format!(
                "key type {other:?} (use p256, p384, ed25519, ml-dsa-44, ml-dsa-65 or ml-dsa-87)"
            ))),
        }
    }

    /// RSA modulus sizes a label may allow for device keys (older stacks and
    /// TPMs): `rsa-2048` and `rsa-3072`. Off unless a label's `allowed_keys`
    /// names them; we never make or sign with RSA keys ourselves.
    pub const DEVICE_RSA_BITS: [usize; 2] = [2048, 3072];

    /// Parse a key type a label's `allowed_keys` may name: those of
    /// [`KeyType::from_name`], and `rsa-2048` / `rsa-3072` for device keys.
    pub fn from_policy_name(s: &str) -> Result<Self, Error> {
        let l = s.to_ascii_lowercase();
        if let Some(bits) = l.strip_prefix("rsa-").or_else(|| l.strip_prefix("rsa")) {
            return match bits.parse::<usize>() {
                Ok(b) if Self::DEVICE_RSA_BITS.contains(&b) => Ok(Self::Rsa(b)),
                _ => Err(Error::UnsupportedAlgorithm(format!(
                    "key type {s:?}: RSA device keys are rsa-2048 or rsa-3072"
                ))),
            };
        }
        Self::from_name(s).map_err(|_| {
            Error::UnsupportedAlgorithm(format!(
                "key type {s:?} (use p256, p384, ed25519, ml-dsa-44, ml-dsa-65, ml-dsa-87, rsa-2048 or rsa-3072)"
            ))
        })
    }

    /// The signature algorithm a key of this type signs certificates with.
    pub fn signature_algorithm(self) -> Result<AlgorithmIdentifierOwned, Error> {
        let oid = match self {
            Self::EcdsaP256 => rfc5912::ECDSA_WITH_SHA_256,
            Self::EcdsaP384 => rfc5912::ECDSA_WITH_SHA_384,
            Self::Ed25519 => rfc8410::ID_ED_25519,
            Self::Rsa(_) => return Err(Error::UnsupportedAlgorithm("signing with RSA".into())),
            // RFC 9881, section 2: the parameters are absent.
            Self::MlDsa44 => ID_ML_DSA_44,
            Self::MlDsa65 => ID_ML_DSA_65,
            Self::MlDsa87 => ID_ML_DSA_87,
        };
        Ok(AlgorithmIdentifierOwned { oid, parameters: None })
    }

    /// Identify the key type of a subjectPublicKeyInfo.
    pub fn of_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Self, Error> {
        let alg = &spki.algorithm;
        if alg.oid == rfc5912::ID_EC_PUBLIC_KEY {
            let curve: ObjectIdentifier = alg
                .parameters
                .as_ref()
                .ok_or_else(|| Error::UnsupportedAlgorithm("EC key without named curve".into()))?
                .decode_as()
                .map_err(|e| Error::der("EC curve parameter", e))?;
            match curve {
                c if c == rfc5912::SECP_256_R_1 => Ok(Self::EcdsaP256),
                c if c == rfc5912::SECP_384_R_1 => Ok(Self::EcdsaP384),
                c => Err(Error::UnsupportedAlgorithm(format!("EC curve {c}"))),
            }
        } else if alg.oid == rfc8410::ID_ED_25519 {
            Ok(Self::Ed25519)
        } else if alg.oid == rfc5912::RSA_ENCRYPTION {
            // modulus size: RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
            let bits = rsa_modulus_bits(spki.subject_public_key.raw_bytes()).unwrap_or(0);
            Ok(Self::Rsa(bits))
        } else if let Some(kt) = Self::of_ml_dsa_oid(alg.oid) {
            Ok(kt)
        } else {
            Err(Error::UnsupportedAlgorithm(format!("public key algorithm {}", alg.oid)))
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("p256"),
            Self::EcdsaP384 => f.write_str("p384"),
            Self::Ed25519 => f.write_str("ed25519"),
            Self::Rsa(bits) => write!(f, "rsa-{bits}"),
            Self::MlDsa44 => f.write_str("ml-dsa-44"),
            Self::MlDsa65 => f.write_str("ml-dsa-65"),
            Self::MlDsa87 => f.write_str("ml-dsa-87"),
        }
    }
}

fn rsa_modulus_bits(pk: &[u8]) -> Option<usize> {
    #[derive(der::Sequence)]
    struct RsaPub<'a> {
        modulus: der::asn1::UintRef<'a>,
        _e: der::asn1::UintRef<'a>,
    }
    let k = RsaPub::from_der(pk).ok()?;
    let m = k.modulus.as_bytes();
    let lead = m.first().map(|b| 8 - b.leading_zeros() as usize).unwrap_or(0);
    Some(m.len().saturating_sub(1) * 8 + lead)
}

fn rsa_is_der(pk: &[u8]) -> bool {
    #[derive(der::Sequence)]
    struct RsaPub<'a> {
        modulus: der::asn1::UintRef<'a>,
        e: der::asn1::UintRef<'a>,
    }
    RsaPub::from_der(pk).ok().and_then(|k| k.to_der().ok()).as_deref() == Some(pk)
}

/// A private key that can sign: a key file, an HSM object, a TPM key.
///
/// Signatures are returned in the form X.509 and PKCS#10 carry them: DER
/// `ECDSA-Sig-Value` for ECDSA, the raw 64 bytes for Ed25519, the raw FIPS 204
/// signature for ML-DSA (pure ML-DSA, empty context, as RFC 9881 says).
pub trait Signer: Send + Sync {
    /// The key's type.
    fn key_type(&self) -> KeyType;
    /// The public key as a DER subjectPublicKeyInfo.
    fn public_key_der(&self) -> &[u8];
    /// Sign `message` (hashing it as the key type's algorithm says).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error>;
}

enum SoftInner {
    Ecdsa(EcdsaKeyPair),
    /// P-256 in the ring build: RustCrypto's arithmetic, not ring's table ([`crate::ec_p256`]).
    #[cfg(not(feature = "aws-lc"))]
    P256(crate::ec_p256::KeyPair),
    Ed25519(Ed25519KeyPair),
    #[cfg(feature = "aws-lc")]
    MlDsa(sig::PqdsaKeyPair),
}

/// A software key held in memory (aws-lc or ring), loaded from or saved to PKCS#8.
pub struct SoftKey {
    inner: SoftInner,
    key_type: KeyType,
    spki: Vec<u8>,
    rng: SystemRandom,
    /// ring cannot export a key: the PKCS#8 it was made from is kept (wiped on drop).
    #[cfg(not(feature = "aws-lc"))]
    pkcs8: zeroize::Zeroizing<Vec<u8>>,
}

impl fmt::Debug for SoftKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SoftKey").field("key_type", &self.key_type).finish_non_exhaustive()
    }
}

#[cfg(feature = "aws-lc")]
fn ml_dsa_alg(kt: KeyType) -> Result<&'static sig::PqdsaSigningAlgorithm, Error> {
    match kt {
        KeyType::MlDsa44 => Ok(&sig::ML_DSA_44_SIGNING),
        KeyType::MlDsa65 => Ok(&sig::ML_DSA_65_SIGNING),
        KeyType::MlDsa87 => Ok(&sig::ML_DSA_87_SIGNING),
        other => Err(Error::UnsupportedAlgorithm(format!("{other} is not ML-DSA"))),
    }
}

fn ecdsa_alg(kt: KeyType) -> Result<&'static sig::EcdsaSigningAlgorithm, Error> {
    match kt {
        #[cfg(feature = "aws-lc")]
        KeyType::EcdsaP256 => Ok(&sig::ECDSA_P256_SHA256_ASN1_SIGNING),
        KeyType::EcdsaP384 => Ok(&sig::ECDSA_P384_SHA384_ASN1_SIGNING),
        other => Err(Error::UnsupportedAlgorithm(format!("{other} is not ECDSA"))),
    }
}

impl SoftKey {
    /// Generate a fresh key of type `kt`.
    #[cfg(feature = "aws-lc")]
    pub fn generate(kt: KeyType) -> Result<Self, Error> {
        match kt {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
                let kp = EcdsaKeyPair::generate(ecdsa_alg(kt)?)
                    .map_err(|_| Error::Key("EC key generation failed".into()))?;
                Self::from_ecdsa(kp, kt)
            }
            KeyType::Ed25519 => {
                let kp = Ed25519KeyPair::generate().map_err(|_| Error::Key("Ed25519 key generation failed".into()))?;
                Self::from_ed25519(kp)
            }
            KeyType::Rsa(_) => Err(Error::UnsupportedAlgorithm("RSA key generation".into())),
            KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => {
                let kp = sig::PqdsaKeyPair::generate(ml_dsa_alg(kt)?)
                    .map_err(|_| Error::Key(format!("{kt} key generation failed")))?;
                Self::from_ml_dsa(kp, kt)
            }
        }
    }

    /// Generate a fresh key of type `kt`.
    #[cfg(not(feature = "aws-lc"))]
    pub fn generate(kt: KeyType) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let doc = match kt {
            KeyType::EcdsaP256 => {
                let doc = crate::ec_p256::KeyPair::generate_pkcs8()
                    .map_err(|_| Error::Key("EC key generation failed".into()))?;
                return Self::from_pkcs8(&doc);
            }
            KeyType::EcdsaP384 => EcdsaKeyPair::generate_pkcs8(ecdsa_alg(kt)?, &rng)
                .map_err(|_| Error::Key("EC key generation failed".into()))?,
            KeyType::Ed25519 => {
                Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| Error::Key("Ed25519 key generation failed".into()))?
            }
            KeyType::Rsa(_) => return Err(Error::UnsupportedAlgorithm("RSA key generation".into())),
            KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => {
                return Err(Error::UnsupportedAlgorithm(format!("{kt}: {ML_DSA_NEEDS_AWS_LC}")))
            }
        };
        Self::from_pkcs8(doc.as_ref())
    }

    #[cfg(feature = "aws-lc")]
    fn from_ecdsa(kp: EcdsaKeyPair, kt: KeyType) -> Result<Self, Error> {
        let curve = if kt == KeyType::EcdsaP256 { rfc5912::SECP_256_R_1 } else { rfc5912::SECP_384_R_1 };
        let spki = spki_der(rfc5912::ID_EC_PUBLIC_KEY, Some(curve), kp.public_key().as_ref())?;
        Ok(Self { inner: SoftInner::Ecdsa(kp), key_type: kt, spki, rng: SystemRandom::new() })
    }

    #[cfg(feature = "aws-lc")]
    fn from_ed25519(kp: Ed25519KeyPair) -> Result<Self, Error> {
        let spki = spki_der(rfc8410::ID_ED_25519, None, kp.public_key().as_ref())?;
        Ok(Self { inner: SoftInner::Ed25519(kp), key_type: KeyType::Ed25519, spki, rng: SystemRandom::new() })
    }

    #[cfg(feature = "aws-lc")]
    fn from_ml_dsa(kp: sig::PqdsaKeyPair, kt: KeyType) -> Result<Self, Error> {
        // RFC 9881, section 4: the raw public key in the BIT STRING, no parameters.
        let oid = kt.ml_dsa_oid().ok_or_else(|| Error::UnsupportedAlgorithm(format!("{kt} is not ML-DSA")))?;
        let spki = spki_der(oid, None, kp.public_key().as_ref())?;
        Ok(Self { inner: SoftInner::MlDsa(kp), key_type: kt, spki, rng: SystemRandom::new() })
    }

    #[cfg(not(feature = "aws-lc"))]
    fn from_ecdsa(kp: EcdsaKeyPair, kt: KeyType, pkcs8: &[u8]) -> Result<Self, Error> {
        let curve = if kt == KeyType::EcdsaP256 { rfc5912::SECP_256_R_1 } else { rfc5912::SECP_384_R_1 };
        let spki = spki_der(rfc5912::ID_EC_PUBLIC_KEY, Some(curve), kp.public_key().as_ref())?;
        let pkcs8 = zeroize::Zeroizing::new(pkcs8.to_vec());
        Ok(Self { inner: SoftInner::Ecdsa(kp), key_type: kt, spki, rng: SystemRandom::new(), pkcs8 })
    }

    #[cfg(not(feature = "aws-lc"))]
    fn from_ed25519(kp: Ed25519KeyPair, pkcs8: &[u8]) -> Result<Self, Error> {
        let spki = spki_der(rfc8410::ID_ED_25519, None, kp.public_key().as_ref())?;
        // Kept as v1, what `to_pkcs8` promises (ring makes v2, with the public key).
        let mut info = pkcs8::PrivateKeyInfo::from_der(pkcs8).map_err(|e| Error::der("PKCS#8 private key", e))?;
        info.public_key = None;
        let pkcs8 = zeroize::Zeroizing::new(info.to_der().map_err(|e| Error::der("PKCS#8 private key", e))?);
        Ok(Self { inner: SoftInner::Ed25519(kp), key_type: KeyType::Ed25519, spki, rng: SystemRandom::new(), pkcs8 })
    }

    /// Load an unencrypted PKCS#8 (v1 or v2) private key.
    ///
    /// An ML-DSA key (aws-lc build only) may be in any of RFC 9881's three
    /// private key forms (seed, expanded key, both; both must agree); it is
    /// written back ([`SoftKey::to_pkcs8`]) in the seed form RFC 9881 prefers.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, Error> {
        let info = pkcs8::PrivateKeyInfo::from_der(der).map_err(|e| Error::der("PKCS#8 private key", e))?;
        let oid = info.algorithm.oid;
        if let Some(kt) = KeyType::of_ml_dsa_oid(oid) {
            if info.algorithm.parameters.is_some() {
                return Err(Error::Key(format!("{kt} PKCS#8: the algorithm parameters must be absent (RFC 9881)")));
            }
            #[cfg(feature = "aws-lc")]
            {
                let kp = sig::PqdsaKeyPair::from_pkcs8(ml_dsa_alg(kt)?, der)
                    .map_err(|e| Error::Key(format!("{kt} PKCS#8: {e}")))?;
                return Self::from_ml_dsa(kp, kt);
            }
            #[cfg(not(feature = "aws-lc"))]
            return Err(Error::UnsupportedAlgorithm(format!("{kt}: {ML_DSA_NEEDS_AWS_LC}")));
        }
        if oid == rfc8410::ID_ED_25519 {
            let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|e| Error::Key(format!("Ed25519 PKCS#8: {e}")))?;
            #[cfg(feature = "aws-lc")]
            return Self::from_ed25519(kp);
            #[cfg(not(feature = "aws-lc"))]
            return Self::from_ed25519(kp, der);
        }
        if oid != rfc5912::ID_EC_PUBLIC_KEY {
            return Err(Error::UnsupportedAlgorithm(format!("private key algorithm {oid}")));
        }
        let curve: ObjectIdentifier = info
            .algorithm
            .parameters
            .ok_or_else(|| Error::Key("EC private key without named curve".into()))?
            .decode_as()
            .map_err(|e| Error::der("EC curve parameter", e))?;
        let kt = if curve == rfc5912::SECP_256_R_1 {
            KeyType::EcdsaP256
        } else if curve == rfc5912::SECP_384_R_1 {
            KeyType::EcdsaP384
        } else {
            return Err(Error::UnsupportedAlgorithm(format!("EC curve {curve}")));
        };
        #[cfg(feature = "aws-lc")]
        {
            let kp =
                EcdsaKeyPair::from_pkcs8(ecdsa_alg(kt)?, der).map_err(|e| Error::Key(format!("EC PKCS#8: {e}")))?;
            Self::from_ecdsa(kp, kt)
        }
        #[cfg(not(feature = "aws-lc"))]
        if kt == KeyType::EcdsaP256 {
            let kp = crate::ec_p256::KeyPair::from_pkcs8(der).map_err(|e| Error::Key(format!("EC PKCS#8: {e}")))?;
            let spki = spki_der(rfc5912::ID_EC_PUBLIC_KEY, Some(rfc5912::SECP_256_R_1), kp.public_key())?;
            let pkcs8 = zeroize::Zeroizing::new(der.to_vec());
            return Ok(Self { inner: SoftInner::P256(kp), key_type: kt, spki, rng: SystemRandom::new(), pkcs8 });
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            let kp = EcdsaKeyPair::from_pkcs8(ecdsa_alg(kt)?, der, &SystemRandom::new())
                .map_err(|e| Error::Key(format!("EC PKCS#8: {e}")))?;
            Self::from_ecdsa(kp, kt, der)
        }
    }

    /// The key as unencrypted PKCS#8 v1 DER. Handle with care: this is the secret.
    #[cfg(not(feature = "aws-lc"))]
    pub fn to_pkcs8(&self) -> Result<Vec<u8>, Error> {
        Ok(self.pkcs8.to_vec())
    }

    /// The key as unencrypted PKCS#8 v1 DER. Handle with care: this is the secret.
    #[cfg(feature = "aws-lc")]
    pub fn to_pkcs8(&self) -> Result<Vec<u8>, Error> {
        let doc = match &self.inner {
            SoftInner::Ecdsa(kp) => kp.to_pkcs8v1(),
            SoftInner::Ed25519(kp) => kp.to_pkcs8v1(),
            // The seed form (RFC 9881, section 6): 32 octets the whole key is derived from.
            SoftInner::MlDsa(kp) => kp.to_pkcs8v1(),
        }
        .map_err(|_| Error::Key("PKCS#8 export failed".into()))?;
        Ok(doc.as_ref().to_vec())
    }
}

impl Signer for SoftKey {
    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        match &self.inner {
            SoftInner::Ecdsa(kp) => kp
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| Error::Signing("ECDSA signing failed".into())),
            #[cfg(not(feature = "aws-lc"))]
            SoftInner::P256(kp) => {
                let hash = crate::backend::digest::digest(&crate::backend::digest::SHA256, message);
                kp.sign_digest(&self.rng, hash.as_ref()).map_err(|_| Error::Signing("ECDSA signing failed".into()))
            }
            SoftInner::Ed25519(kp) => Ok(kp.sign(message).as_ref().to_vec()),
            #[cfg(feature = "aws-lc")]
            SoftInner::MlDsa(kp) => {
                let mut out = vec![0u8; kp.algorithm().signature_len()];
                let n = kp
                    .sign(message, &mut out)
                    .map_err(|_| Error::Signing(format!("{} signing failed", self.key_type)))?;
                out.truncate(n);
                Ok(out)
            }
        }
    }
}

fn spki_der(alg: ObjectIdentifier, param: Option<ObjectIdentifier>, key: &[u8]) -> Result<Vec<u8>, Error> {
    let parameters = param.map(|p| der::Any::from(AnyRef::from(&p)));
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned { oid: alg, parameters },
        subject_public_key: BitString::from_bytes(key).map_err(|e| Error::der("public key", e))?,
    };
    spki.to_der().map_err(|e| Error::der("subjectPublicKeyInfo", e))
}

/// Check that `der` is a subjectPublicKeyInfo in the one form iotpki compares,
/// counts and names keys in, and return those octets.
///
/// A key has many encodings (an EC point compressed or uncompressed, DER or BER
/// lengths, parameters absent or NULL, trailing octets); hashing or comparing
/// octets then counts one key as several (a k-of-n threshold met by one signer
/// twice, a blocked key slipping through re-encoded). So every place that
/// compares or counts keys (bundle signers, voucher owners and key ids,
/// fingerprints) takes only this form and refuses the others: nothing is
/// silently converted, the sender is told what to send.
///
/// The canonical form is exact DER (re-encoding gives the same octets, nothing
/// after the structure) of a key type we know, with its algorithm's parameters
/// exactly as RFC 5480 / RFC 8410 / RFC 3279 say:
/// - EC (`id-ecPublicKey`, namedCurve P-256 or P-384): the point uncompressed
///   (`04 || x || y`, 65 or 97 octets) and on the curve;
/// - Ed25519: no parameters, 32 octets;
/// - ML-DSA (`id-ml-dsa-44/65/87`, RFC 9881): no parameters, the raw public key
///   of its exact size (1312, 1952 or 2592 octets; every string of that size is
///   a key, so the size is the whole check, the same in both builds);
/// - RSA (`rsaEncryption`, NULL parameters): a DER RSAPublicKey that parses
///   (recognised so it can be refused by name elsewhere, and still compared in one form).
pub fn canonical_spki(der: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = |d: String| Error::Key(format!("public key not in canonical form: {d}"));
    let spki =
        SubjectPublicKeyInfoOwned::from_der(der).map_err(|e| bad(format!("not a DER subjectPublicKeyInfo: {e}")))?;
    if spki.to_der().ok().as_deref() != Some(der) {
        return Err(bad("not in DER (its re-encoding differs: non-minimal lengths or other BER)".into()));
    }
    let key =
        spki.subject_public_key.as_bytes().ok_or_else(|| bad("the public key BIT STRING has unused bits".into()))?;
    let alg = &spki.algorithm;
    let params_der = alg.parameters.as_ref().map(|p| p.to_der()).transpose().map_err(|e| bad(e.to_string()))?;
    let kt = KeyType::of_spki(&spki).map_err(|e| bad(e.to_string()))?;
    let (want_params, check): (Option<Vec<u8>>, bool) = match kt {
        KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
            let (curve, len) =
                if kt == KeyType::EcdsaP256 { (rfc5912::SECP_256_R_1, 65) } else { (rfc5912::SECP_384_R_1, 97) };
            match key.first() {
                Some(0x04) if key.len() == len => {}
                Some(0x02 | 0x03) => {
                    return Err(bad(format!(
                        "the {kt} point is compressed; send it uncompressed (04 || x || y, {len} octets)"
                    )))
                }
                _ => return Err(bad(format!("a {kt} point must be uncompressed: 04 || x || y, {len} octets"))),
            }
            (Some(curve.to_der().map_err(|e| bad(e.to_string()))?), true)
        }
        KeyType::Ed25519 => {
            if key.len() != 32 {
                return Err(bad(format!("an Ed25519 key is 32 octets, this one {}", key.len())));
            }
            (None, true)
        }
        KeyType::Rsa(_) => {
            // Any size: the profiles refuse RSA by name; here it only has to have one encoding.
            if rsa_modulus_bits(key).is_none() || !rsa_is_der(key) {
                return Err(bad("the RSA key is not a DER RSAPublicKey".into()));
            }
            (Some(der::asn1::Null.to_der().map_err(|e| bad(e.to_string()))?), false)
        }
        KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => {
            let len = kt.ml_dsa_public_key_len().unwrap_or(0);
            if key.len() != len {
                return Err(bad(format!("an {kt} key is {len} octets, this one {}", key.len())));
            }
            (None, false)
        }
    };
    if params_der != want_params {
        return Err(bad(format!("the {kt} algorithm parameters are not the ones RFC 5480/8410/3279/9881 prescribe")));
    }
    if check {
        check_public_key(kt, key).map_err(|e| bad(format!("the {kt} key itself is invalid: {e}")))?;
    }
    Ok(der.to_vec())
}

/// The key is one the library can use: for EC, a point on the curve.
#[cfg(feature = "aws-lc")]
fn check_public_key(kt: KeyType, key: &[u8]) -> Result<(), String> {
    let v: &'static dyn sig::VerificationAlgorithm = match kt {
        KeyType::EcdsaP256 => &sig::ECDSA_P256_SHA256_ASN1,
        KeyType::EcdsaP384 => &sig::ECDSA_P384_SHA384_ASN1,
        KeyType::Ed25519 => &sig::ED25519,
        _ => return Ok(()),
    };
    sig::ParsedPublicKey::new(v, key).map(|_| ()).map_err(|_| "not a point on the curve".to_string())
}

/// The key is one the library can use: for EC, a point on the curve. ring parses
/// public keys only inside an operation: an ECDH with a fresh key checks the
/// point as aws-lc's parse does (on the curve, not the identity). An Ed25519 key
/// is 32 octets to both libraries (checked above). A P-256 point is checked by
/// [`crate::ec_p256`] (on the curve, uncompressed), as ring's ECDH checked it.
#[cfg(not(feature = "aws-lc"))]
fn check_public_key(kt: KeyType, key: &[u8]) -> Result<(), String> {
    use crate::backend::agreement;
    let alg = match kt {
        KeyType::EcdsaP256 => {
            return crate::ec_p256::parse_point(key).map(|_| ()).ok_or_else(|| "not a point on the curve".to_string())
        }
        KeyType::EcdsaP384 => &agreement::ECDH_P384,
        _ => return Ok(()),
    };
    let mine = agreement::EphemeralPrivateKey::generate(alg, &SystemRandom::new())
        .map_err(|_| "no randomness to check it with".to_string())?;
    agreement::agree_ephemeral(mine, &agreement::UnparsedPublicKey::new(alg, key), |_| ())
        .map_err(|_| "not a point on the curve".to_string())
}

/// The fingerprint of a key in its canonical form ([`canonical_spki`]): the one
/// to compare keys by (blocked keys, "one key, one device"), refusing other encodings.
pub fn canonical_fingerprint(spki_der: &[u8]) -> Result<String, Error> {
    canonical_spki(spki_der).map(|c| sha256_hex(&c))
}

/// SHA-256 of a DER subjectPublicKeyInfo, hex: how the store names a key.
///
/// The octets are hashed as given: call it on keys that passed [`canonical_spki`]
/// (every key iotpki makes or accepts into a certificate, bundle or voucher), or
/// use [`canonical_fingerprint`] on keys from outside.
pub fn spki_fingerprint(spki_der: &[u8]) -> String {
    sha256_hex(spki_der)
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(crate::backend::digest::digest(&crate::backend::digest::SHA256, bytes))
}

/// The key identifier we put in SKI/AKI: the leftmost 160 bits of the SHA-256
/// of the subjectPublicKey bits (RFC 7093, section 2, method 1).
pub fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let d = crate::backend::digest::digest(&crate::backend::digest::SHA256, spki.subject_public_key.raw_bytes());
    d.as_ref()[..20].to_vec()
}

/// Verify `signature` over `message` by the key in `spki`, using signature algorithm `alg`.
pub fn verify(
    spki: &SubjectPublicKeyInfoOwned,
    alg: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Error> {
    let kt = KeyType::of_spki(spki)?;
    if let KeyType::Rsa(bits) = kt {
        // Below 2048 bits is too weak; over 8192 is a cost an attacker chooses.
        if !(2048..=8192).contains(&bits) {
            return Err(Error::UnsupportedAlgorithm(format!(
                "an RSA key of {bits} bits (RSA device keys are 2048 or 3072 bits, where a label allows them)"
            )));
        }
    }
    let a = alg.oid;
    if kt.is_ml_dsa() {
        return verify_ml_dsa(kt, spki, alg, message, signature);
    }
    #[cfg(not(feature = "aws-lc"))]
    if kt == KeyType::EcdsaP256 && (a == rfc5912::ECDSA_WITH_SHA_256 || a == rfc5912::ECDSA_WITH_SHA_384) {
        use crate::backend::digest;
        let alg = if a == rfc5912::ECDSA_WITH_SHA_256 { &digest::SHA256 } else { &digest::SHA384 };
        let hash = digest::digest(alg, message);
        return if crate::ec_p256::verify_digest(spki.subject_public_key.raw_bytes(), hash.as_ref(), signature) {
            Ok(())
        } else {
            Err(Error::BadSignature { what: "message" })
        };
    }
    let algorithm: &dyn sig::VerificationAlgorithm = match kt {
        #[cfg(feature = "aws-lc")]
        KeyType::EcdsaP256 if a == rfc5912::ECDSA_WITH_SHA_256 => &sig::ECDSA_P256_SHA256_ASN1,
        #[cfg(feature = "aws-lc")]
        KeyType::EcdsaP256 if a == rfc5912::ECDSA_WITH_SHA_384 => &sig::ECDSA_P256_SHA384_ASN1,
        KeyType::EcdsaP384 if a == rfc5912::ECDSA_WITH_SHA_384 => &sig::ECDSA_P384_SHA384_ASN1,
        KeyType::EcdsaP384 if a == rfc5912::ECDSA_WITH_SHA_256 => &sig::ECDSA_P384_SHA256_ASN1,
        KeyType::Ed25519 if a == rfc8410::ID_ED_25519 => &sig::ED25519,
        KeyType::Rsa(_) if a == rfc5912::SHA_256_WITH_RSA_ENCRYPTION => &sig::RSA_PKCS1_2048_8192_SHA256,
        KeyType::Rsa(_) if a == rfc5912::SHA_384_WITH_RSA_ENCRYPTION => &sig::RSA_PKCS1_2048_8192_SHA384,
        KeyType::Rsa(_) if a == rfc5912::SHA_512_WITH_RSA_ENCRYPTION => &sig::RSA_PKCS1_2048_8192_SHA512,
        _ => return Err(Error::UnsupportedAlgorithm(format!("signature algorithm {a} with a {kt} key"))),
    };
    sig::UnparsedPublicKey::new(algorithm, spki.subject_public_key.raw_bytes())
        .verify(message, signature)
        .map_err(|_| Error::BadSignature { what: "message" })
}

/// An ML-DSA signature: the algorithm is the key's own OID, with no parameters (RFC 9881).
fn verify_ml_dsa(
    kt: KeyType,
    spki: &SubjectPublicKeyInfoOwned,
    alg: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Error> {
    if Some(alg.oid) != kt.ml_dsa_oid() || alg.parameters.is_some() {
        return Err(Error::UnsupportedAlgorithm(format!(
            "signature algorithm {} with a {kt} key (RFC 9881: the key's own OID, parameters absent)",
            alg.oid
        )));
    }
    #[cfg(feature = "aws-lc")]
    {
        let algorithm: &'static sig::PqdsaVerificationAlgorithm = match kt {
            KeyType::MlDsa44 => &sig::ML_DSA_44,
            KeyType::MlDsa65 => &sig::ML_DSA_65,
            _ => &sig::ML_DSA_87,
        };
        sig::UnparsedPublicKey::new(algorithm, spki.subject_public_key.raw_bytes())
            .verify(message, signature)
            .map_err(|_| Error::BadSignature { what: "message" })
    }
    #[cfg(not(feature = "aws-lc"))]
    {
        let _ = (spki, message, signature);
        Err(Error::UnsupportedAlgorithm(format!("{kt} signature: {ML_DSA_NEEDS_AWS_LC}")))
    }
}

/// The same EC key with its point compressed (02/03 || x): a test's second encoding of one key.
#[cfg(test)]
pub(crate) fn compressed_spki(der: &[u8]) -> Vec<u8> {
    let spki = SubjectPublicKeyInfoOwned::from_der(der).unwrap();
    let p = spki.subject_public_key.raw_bytes();
    let n = (p.len() - 1) / 2;
    let mut c = vec![0x02 | (p[2 * n] & 1)];
    c.extend_from_slice(&p[1..=n]);
    let curve: ObjectIdentifier = spki.algorithm.parameters.as_ref().unwrap().decode_as().unwrap();
    spki_der(rfc5912::ID_EC_PUBLIC_KEY, Some(curve), &c).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_spki_accepts_the_keys_we_make() {
        for &kt in KeyType::soft_signing() {
            let k = SoftKey::generate(kt).unwrap();
            assert_eq!(canonical_spki(k.public_key_der()).unwrap(), k.public_key_der());
            assert_eq!(canonical_fingerprint(k.public_key_der()).unwrap(), spki_fingerprint(k.public_key_der()));
        }
    }

    #[test]
    fn canonical_spki_refuses_every_other_encoding_of_one_key() {
        let refused = |der: &[u8], want: &str| {
            let e = canonical_spki(der).unwrap_err().to_string();
            assert!(e.contains("not in canonical form") && e.contains(want), "{e} lacks {want:?}");
        };
        for kt in [KeyType::EcdsaP256, KeyType::EcdsaP384] {
            let k = SoftKey::generate(kt).unwrap();
            let good = k.public_key_der();
            // The same key, compressed: a valid key to aws-lc, another hash. Refused, not converted.
            let c = compressed_spki(good);
            assert_ne!(c, good);
            refused(&c, "compressed");
            // Trailing data.
            let mut t = good.to_vec();
            t.push(0);
            refused(&t, "DER");
            // A non-minimal length (0x81 0x59 for 0x59): BER, not DER.
            let mut ber = vec![0x30, 0x81];
            ber.extend_from_slice(&good[1..]);
            refused(&ber, "DER");
            // NULL where the curve must be, and no parameters at all.
            let pk = SubjectPublicKeyInfoOwned::from_der(good).unwrap();
            let mut no_curve = pk.clone();
            no_curve.algorithm.parameters = None;
            refused(&no_curve.to_der().unwrap(), "");
            // A point off the curve.
            let mut off = good.to_vec();
            let last = off.len() - 1;
            off[last] ^= 1;
            refused(&off, "invalid");
            // A hybrid point (06/07): refused by form.
            let mut hybrid = good.to_vec();
            let at = good.len() - if kt == KeyType::EcdsaP256 { 65 } else { 97 };
            hybrid[at] = 0x06;
            refused(&hybrid, "uncompressed");
        }
        let ed = SoftKey::generate(KeyType::Ed25519).unwrap();
        let mut with_null = SubjectPublicKeyInfoOwned::from_der(ed.public_key_der()).unwrap();
        with_null.algorithm.parameters = Some(der::Any::from(der::asn1::Null));
        refused(&with_null.to_der().unwrap(), "parameters");
        let short = spki_der(rfc8410::ID_ED_25519, None, &[7; 31]).unwrap();
        refused(&short, "32 octets");
        // 32 octets that are no canonical point (y = 2^255 - 1, above the prime): aws-lc takes an
        // Ed25519 key as 32 octets, as ring does; its signatures then never verify.
        let mut not_a_point = [0xffu8; 32];
        not_a_point[31] = 0x7f;
        let odd = spki_der(rfc8410::ID_ED_25519, None, &not_a_point).unwrap();
        assert_eq!(canonical_spki(&odd).unwrap(), odd, "both libraries take 32 octets");
        let unknown = spki_der(ObjectIdentifier::new_unwrap("1.2.3.4"), None, &[7; 32]).unwrap();
        refused(&unknown, "1.2.3.4");
        refused(b"junk", "DER");
    }

    #[test]
    fn sign_verify_round_trip_each_type() {
        for &kt in KeyType::soft_signing() {
            let k = SoftKey::generate(kt).unwrap();
            let spki = SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap();
            assert_eq!(KeyType::of_spki(&spki).unwrap(), kt);
            let s = k.sign(b"hello").unwrap();
            let alg = kt.signature_algorithm().unwrap();
            verify(&spki, &alg, b"hello", &s).unwrap();
            assert!(verify(&spki, &alg, b"hellO", &s).is_err());
            let again = SoftKey::from_pkcs8(&k.to_pkcs8().unwrap()).unwrap();
            assert_eq!(again.public_key_der(), k.public_key_der());
        }
    }

    /// ML-DSA keys from a fixed seed: the public key and the seed-form PKCS#8
    /// (RFC 9881, section 6) that OpenSSL 4 (through pyca/cryptography 50)
    /// derives from seed 00..1f, checked against ours.
    #[cfg(feature = "aws-lc")]
    #[test]
    fn ml_dsa_keys_from_a_seed_match_openssl() {
        let seed: Vec<u8> = (0u8..32).collect();
        let known = [
            (KeyType::MlDsa44, 0x11, "837832708c5236d951581f1fddf2b79991b3424a0486d16da1ddad0fd69701be", 1334),
            (KeyType::MlDsa65, 0x12, "b8b62131bfbe84433efb2273d7f5b87f7a22854a2cfd366fc2aead86d837c52d", 1974),
            (KeyType::MlDsa87, 0x13, "07e57c4f14dbad1267f621ec3777b4e2e6c4fbc4c22fbb87510ff8e0b3c6a642", 2614),
        ];
        for (kt, last_arc, spki_sha256, spki_len) in known {
            // PrivateKeyInfo { 0, { id-ml-dsa-NN }, OCTET STRING { [0] IMPLICIT seed } }
            let mut p8 = hex::decode("3034020100300b06096086480165030403").unwrap();
            p8.push(last_arc);
            p8.extend_from_slice(&hex::decode("04228020").unwrap());
            p8.extend_from_slice(&seed);
            let k = SoftKey::from_pkcs8(&p8).unwrap();
            assert_eq!(k.key_type(), kt);
            assert_eq!(k.public_key_der().len(), spki_len, "{kt}");
            assert_eq!(spki_fingerprint(k.public_key_der()), spki_sha256, "{kt}");
            assert_eq!(k.to_pkcs8().unwrap(), p8, "{kt}: written back in the seed form");
            // Parameters present (NULL) are refused: RFC 9881 says absent.
            let mut with_null = p8.clone();
            with_null[1] += 2;
            with_null[6] += 2;
            with_null.splice(18..18, [0x05, 0x00]);
            assert!(pkcs8::PrivateKeyInfo::from_der(&with_null).is_ok());
            assert!(SoftKey::from_pkcs8(&with_null).unwrap_err().to_string().contains("absent"), "{kt}");
        }
    }

    #[cfg(feature = "aws-lc")]
    #[test]
    fn ml_dsa_signatures_name_their_own_algorithm() {
        let k = SoftKey::generate(KeyType::MlDsa65).unwrap();
        let spki = SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap();
        let s = k.sign(b"m").unwrap();
        assert_eq!(s.len(), 3309);
        verify(&spki, &KeyType::MlDsa65.signature_algorithm().unwrap(), b"m", &s).unwrap();
        // Another level's OID, or parameters present: refused by name, not tried.
        let other = KeyType::MlDsa44.signature_algorithm().unwrap();
        assert!(matches!(verify(&spki, &other, b"m", &s), Err(Error::UnsupportedAlgorithm(_))));
        let mut with_null = KeyType::MlDsa65.signature_algorithm().unwrap();
        with_null.parameters = Some(der::Any::from(der::asn1::Null));
        assert!(matches!(verify(&spki, &with_null, b"m", &s), Err(Error::UnsupportedAlgorithm(_))));
        // An ML-DSA-65 key cannot verify a P-256 signature algorithm.
        let ec = KeyType::EcdsaP256.signature_algorithm().unwrap();
        assert!(verify(&spki, &ec, b"m", &s).is_err());
    }

    #[test]
    fn ml_dsa_public_keys_are_canonical_by_size() {
        for (kt, len) in [(KeyType::MlDsa44, 1312), (KeyType::MlDsa65, 1952), (KeyType::MlDsa87, 2592)] {
            let oid = kt.ml_dsa_oid().unwrap();
            let good = spki_der(oid, None, &vec![7; len]).unwrap();
            assert_eq!(canonical_spki(&good).unwrap(), good);
            let spki = SubjectPublicKeyInfoOwned::from_der(&good).unwrap();
            assert_eq!(KeyType::of_spki(&spki).unwrap(), kt);
            let short = spki_der(oid, None, &vec![7; len - 1]).unwrap();
            assert!(canonical_spki(&short).unwrap_err().to_string().contains(&format!("{len} octets")));
            let null = spki_der(oid, None, &vec![7; len]).unwrap();
            let mut with_null = SubjectPublicKeyInfoOwned::from_der(&null).unwrap();
            with_null.algorithm.parameters = Some(der::Any::from(der::asn1::Null));
            assert!(canonical_spki(&with_null.to_der().unwrap()).unwrap_err().to_string().contains("parameters"));
        }
    }

    /// The ring build names ML-DSA and refuses it with one clear message.
    #[cfg(not(feature = "aws-lc"))]
    #[test]
    fn ml_dsa_is_refused_by_name_on_ring() {
        for kt in KeyType::ML_DSA {
            let e = SoftKey::generate(kt).unwrap_err().to_string();
            assert!(e.contains("aws-lc") && e.contains(&kt.to_string()), "{e}");
        }
        let p8 = hex::decode(
            "3034020100300b060960864801650304031104228020000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        )
        .unwrap();
        assert!(SoftKey::from_pkcs8(&p8).unwrap_err().to_string().contains("aws-lc"));
        let spki = spki_der(ID_ML_DSA_44, None, &[7; 1312]).unwrap();
        let spki = SubjectPublicKeyInfoOwned::from_der(&spki).unwrap();
        let alg = KeyType::MlDsa44.signature_algorithm().unwrap();
        assert!(verify(&spki, &alg, b"m", &[0; 2420]).unwrap_err().to_string().contains("aws-lc"));
    }

    #[test]
    fn names_parse() {
        for kt in KeyType::ML_DSA {
            assert_eq!(KeyType::from_name(&kt.to_string()).unwrap(), kt);
        }
        assert_eq!(KeyType::from_name("ML-DSA-65").unwrap(), KeyType::MlDsa65);
        assert_eq!(KeyType::from_name("P384").unwrap(), KeyType::EcdsaP384);
        assert!(KeyType::from_name("rsa").is_err());
    }
}
