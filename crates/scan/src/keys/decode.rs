//! From the DER of one private key to the SubjectPublicKeyInfo the store would
//! hash for its public half.
//!
//! Every decoder takes exactly one DER value and returns `None` for anything
//! that is not a whole, valid key: a scanner whose findings trigger
//! revocations must not report garbage that happens to parse.

use der::Encode;
use zeroize::Zeroizing;

use super::der::{self as d, Reader};
use crate::{FindingKind, KeyFormat};

pub(crate) const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
pub(crate) const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
pub(crate) const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub(crate) const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
pub(crate) const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
pub(crate) const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_X25519: &[u8] = &[0x2b, 0x65, 0x6e];
const OID_X448: &[u8] = &[0x2b, 0x65, 0x6f];
const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];
/// 1.2.840.113549.1.5.13, PBES2.
const OID_PBES2: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d];
/// The prefix of PKCS#5 v1 (1.2.840.113549.1.5.x) and PKCS#12 (1.2.840.113549.1.12.1.x) PBE schemes.
const OID_PKCS5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05];
const OID_PKCS12_PBE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01];

/// What a decoder learned about one private key.
#[derive(Debug)]
pub(crate) struct Derived {
    pub algorithm: String,
    pub spki: Option<Vec<u8>>,
    pub encrypted: bool,
    pub note: Option<String>,
}

impl Derived {
    fn known(algorithm: impl Into<String>, spki: Vec<u8>) -> Self {
        Derived { algorithm: algorithm.into(), spki: Some(spki), encrypted: false, note: None }
    }

    pub fn into_finding(self, format: KeyFormat, encoding: &str) -> FindingKind {
        FindingKind::PrivateKey {
            format,
            algorithm: self.algorithm,
            encrypted: self.encrypted,
            spki_sha256: self.spki.map(|s| super::sha256_hex(&s)),
            encoding: encoding.to_string(),
            note: self.note,
        }
    }
}

/// The whole of `der` as one SEQUENCE's content.
fn sequence(der: &[u8]) -> Option<Reader<'_>> {
    let t = d::tlv(der)?;
    (t.tag == d::SEQUENCE && t.raw.len() == der.len()).then(|| Reader::new(t.content))
}

// ---- EC -------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    pub fn from_oid(oid: &[u8]) -> Option<Curve> {
        match oid {
            OID_P256 => Some(Curve::P256),
            OID_P384 => Some(Curve::P384),
            OID_P521 => Some(Curve::P521),
            _ => None,
        }
    }

    pub fn oid(self) -> &'static [u8] {
        match self {
            Curve::P256 => OID_P256,
            Curve::P384 => OID_P384,
            Curve::P521 => OID_P521,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "ec-p256",
            Curve::P384 => "ec-p384",
            Curve::P521 => "ec-p521",
        }
    }

    fn scalar_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// The uncompressed public point for a private scalar; `None` for a
    /// scalar that is zero or not below the group order.
    pub fn public_from_scalar(self, scalar: &[u8]) -> Option<Vec<u8>> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let len = self.scalar_len();
        let skip = scalar.iter().take_while(|&&b| b == 0).count();
        let s = &scalar[skip..];
        if s.is_empty() || s.len() > len {
            return None;
        }
        let mut padded = Zeroizing::new(vec![0u8; len]);
        padded[len - s.len()..].copy_from_slice(s);
        let point = match self {
            Curve::P256 => {
                p256::SecretKey::from_slice(&padded).ok()?.public_key().to_encoded_point(false).as_bytes().to_vec()
            }
            Curve::P384 => {
                p384::SecretKey::from_slice(&padded).ok()?.public_key().to_encoded_point(false).as_bytes().to_vec()
            }
            Curve::P521 => {
                p521::SecretKey::from_slice(&padded).ok()?.public_key().to_encoded_point(false).as_bytes().to_vec()
            }
        };
        Some(point)
    }

    /// The uncompressed form of an encoded point, if it is on the curve.
    pub fn check_point(self, point: &[u8]) -> Option<Vec<u8>> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        Some(match self {
            Curve::P256 => p256::PublicKey::from_sec1_bytes(point).ok()?.to_encoded_point(false).as_bytes().to_vec(),
            Curve::P384 => p384::PublicKey::from_sec1_bytes(point).ok()?.to_encoded_point(false).as_bytes().to_vec(),
            Curve::P521 => p521::PublicKey::from_sec1_bytes(point).ok()?.to_encoded_point(false).as_bytes().to_vec(),
        })
    }
}

/// The namedCurve OID of EC parameters: a namedCurve itself, or explicit
/// ECParameters whose group order is that of a curve we know (an old
/// OpenSSL's `-param_enc explicit`); the SPKI is then written with the named
/// curve, as certificates carry it. Explicit parameters of other curves: `None`.
fn curve_oid(params: d::Tlv<'_>) -> Option<&[u8]> {
    use p256::elliptic_curve::bigint::ArrayEncoding;
    use p256::elliptic_curve::Curve as _;
    match params.tag {
        d::OID => Some(params.content),
        d::SEQUENCE => {
            // ECParameters { version, fieldID, curve, base, order, cofactor OPTIONAL }
            let mut r = Reader::new(params.content);
            if r.small()? != 1 {
                return None;
            }
            r.expect(d::SEQUENCE)?;
            r.expect(d::SEQUENCE)?;
            r.expect(d::OCTET_STRING)?;
            let order = r.positive()?;
            let is = |n: &[u8]| n[n.iter().take_while(|&&b| b == 0).count()..] == *order;
            if is(&p256::NistP256::ORDER.to_be_byte_array()) {
                Some(OID_P256)
            } else if is(&p384::NistP384::ORDER.to_be_byte_array()) {
                Some(OID_P384)
            } else if is(&p521::NistP521::ORDER.to_be_byte_array()) {
                Some(OID_P521)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// id-ecPublicKey with a namedCurve OID.
fn ec_algorithm_identifier(curve_oid: &[u8]) -> Vec<u8> {
    let mut c = d::encode(d::OID, OID_EC_PUBLIC_KEY);
    c.extend_from_slice(&d::encode(d::OID, curve_oid));
    d::encode(d::SEQUENCE, &c)
}

pub(crate) fn ec_spki(curve_oid: &[u8], point: &[u8]) -> Vec<u8> {
    d::spki(&ec_algorithm_identifier(curve_oid), point)
}

/// SEC1 ECPrivateKey. `outer_curve` is the namedCurve of an enclosing PKCS#8.
pub(crate) fn sec1(der: &[u8], outer_curve: Option<&[u8]>) -> Option<Derived> {
    let mut r = sequence(der)?;
    if r.small()? != 1 {
        return None;
    }
    let scalar = r.expect(d::OCTET_STRING)?.content;
    let params = match r.optional(0xa0) {
        Some(t) => {
            let inner = d::tlv(t.content)?;
            if inner.raw.len() != t.content.len() {
                return None;
            }
            Some(curve_oid(inner)?)
        }
        None => None,
    };
    let embedded = match r.optional(0xa1) {
        Some(t) => {
            let bits = d::tlv(t.content)?;
            if bits.tag != d::BIT_STRING || bits.raw.len() != t.content.len() || bits.content.first() != Some(&0) {
                return None;
            }
            Some(&bits.content[1..])
        }
        None => None,
    };
    if !r.is_empty() || scalar.is_empty() || scalar.len() > 66 || scalar.iter().all(|&b| b == 0) {
        return None;
    }
    let curve_oid = match (params, outer_curve) {
        (Some(a), Some(b)) if a != b => return None,
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    match curve_oid {
        Some(oid) => match Curve::from_oid(oid) {
            Some(curve) => {
                let point = curve.public_from_scalar(scalar)?;
                let mut out = Derived::known(curve.name(), ec_spki(oid, &point));
                if embedded.is_some_and(|e| curve.check_point(e).as_deref() != Some(point.as_slice())) {
                    out.note = Some(
                        "the embedded public key does not match the private scalar: SPKI derived from the scalar"
                            .into(),
                    );
                }
                Some(out)
            }
            None => {
                let name = d::oid_string(oid);
                Some(match embedded {
                    Some(p) if p.first() == Some(&4) && p.len() % 2 == 1 && p.len() > 1 => Derived {
                        algorithm: "ec".into(),
                        spki: Some(ec_spki(oid, p)),
                        encrypted: false,
                        note: Some(format!("curve {name} is not known to the scanner: SPKI from the embedded public key, not checked against the scalar")),
                    },
                    _ => Derived {
                        algorithm: "ec".into(),
                        spki: None,
                        encrypted: false,
                        note: Some(format!("curve {name} is not known to the scanner and no usable public key is embedded: SPKI not derived")),
                    },
                })
            }
        },
        None => sec1_without_curve(scalar, embedded),
    }
}

/// A SEC1 key with no curve named anywhere: the embedded public key decides
/// when there is one, else the scalar's length where only one of our curves has it.
fn sec1_without_curve(scalar: &[u8], embedded: Option<&[u8]>) -> Option<Derived> {
    let curves = [Curve::P256, Curve::P384, Curve::P521];
    if let Some(e) = embedded {
        for curve in curves {
            if let (Some(mine), Some(theirs)) = (curve.public_from_scalar(scalar), curve.check_point(e)) {
                if mine == theirs {
                    return Some(Derived::known(curve.name(), ec_spki(curve.oid(), &mine)));
                }
            }
        }
        return Some(Derived {
            algorithm: "ec".into(),
            spki: None,
            encrypted: false,
            note: Some("no curve parameters, and the embedded public key is not this scalar's on P-256, P-384 or P-521: SPKI not derived".into()),
        });
    }
    let (curve, note) = match scalar.len() {
        65 | 66 => (Curve::P521, None),
        48 => (Curve::P384, Some("no curve parameters and no public key: P-384 assumed from the 48-octet scalar (brainpoolP384r1 has the same length)")),
        32 => (Curve::P256, Some("no curve parameters and no public key: P-256 assumed from the 32-octet scalar (secp256k1 and brainpoolP256r1 have the same length)")),
        n => {
            return Some(Derived {
                algorithm: "ec".into(),
                spki: None,
                encrypted: false,
                note: Some(format!("no curve parameters and no public key: the curve of a {n}-octet scalar is ambiguous, SPKI not derived")),
            })
        }
    };
    let point = curve.public_from_scalar(scalar)?;
    let mut out = Derived::known(curve.name(), ec_spki(curve.oid(), &point));
    out.note = note.map(String::from);
    Some(out)
}

// ---- RSA ------------------------------------------------------------------

/// PKCS#1 RSAPrivateKey: reported only if its primes multiply to its modulus.
pub(crate) fn pkcs1(der: &[u8]) -> Option<Derived> {
    let mut r = sequence(der)?;
    let version = r.small()?;
    if version > 1 {
        return None;
    }
    let n = r.positive()?;
    let e = r.positive()?;
    let _d = r.positive()?;
    let p = r.positive()?;
    let q = r.positive()?;
    for _ in 0..3 {
        r.positive()?;
    }
    let mut primes = vec![p, q];
    if version == 1 {
        let mut others = Reader::new(r.expect(d::SEQUENCE)?.content);
        while !others.is_empty() {
            let mut info = Reader::new(others.expect(d::SEQUENCE)?.content);
            primes.push(info.positive()?);
            info.positive()?;
            info.positive()?;
            if !info.is_empty() {
                return None;
            }
        }
    }
    if !r.is_empty() {
        return None;
    }
    rsa_checked(n, e, &primes)
}

/// An RSA key whose primes multiply to its modulus.
pub(crate) fn rsa_checked(n: &[u8], e: &[u8], primes: &[&[u8]]) -> Option<Derived> {
    if n.len() < 64
        || n.len() > 2048
        || n[n.len() - 1] & 1 == 0
        || e[e.len() - 1] & 1 == 0
        || e == [1]
        || e.len() > n.len()
    {
        return None;
    }
    // The primes and their partial products are secret: wiped when dropped.
    let mut product = Zeroizing::new(vec![1u32]);
    for prime in primes {
        product = Zeroizing::new(mul(&product, &Zeroizing::new(limbs(prime))));
    }
    if trim(std::mem::take(&mut *product)) != trim(limbs(n)) {
        return None;
    }
    let bits = n.len() * 8 - n[0].leading_zeros() as usize;
    Some(Derived::known(format!("rsa-{bits}"), rsa_spki(n, e)))
}

pub(crate) fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut alg = d::encode(d::OID, OID_RSA);
    alg.extend_from_slice(&[d::NULL, 0]);
    let mut key = d::encode_uint(n);
    key.extend_from_slice(&d::encode_uint(e));
    d::spki(&d::encode(d::SEQUENCE, &alg), &d::encode(d::SEQUENCE, &key))
}

/// Little-endian 32-bit limbs of a big-endian magnitude.
fn limbs(be: &[u8]) -> Vec<u32> {
    be.rchunks(4).map(|c| c.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))).collect()
}

fn trim(mut v: Vec<u32>) -> Vec<u32> {
    while v.len() > 1 && v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// Schoolbook product (a few hundred limbs at most).
fn mul(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = vec![0u32; a.len() + b.len()];
    for (i, &x) in a.iter().enumerate() {
        let mut carry = 0u64;
        for (j, &y) in b.iter().enumerate() {
            let t = u64::from(x) * u64::from(y) + u64::from(out[i + j]) + carry;
            out[i + j] = t as u32;
            carry = t >> 32;
        }
        out[i + b.len()] = carry as u32;
    }
    out
}

// ---- Ed25519 ----------------------------------------------------------------

pub(crate) fn ed25519_spki(public: &[u8; 32]) -> Vec<u8> {
    d::spki(&d::encode(d::SEQUENCE, &d::encode(d::OID, OID_ED25519)), public)
}

pub(crate) fn ed25519_public(seed: &[u8]) -> Option<[u8; 32]> {
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(seed.try_into().ok()?);
    Some(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes())
}

// ---- PKCS#8 -----------------------------------------------------------------

/// PKCS#8 PrivateKeyInfo (v1) or OneAsymmetricKey (v2).
pub(crate) fn pkcs8(der: &[u8]) -> Option<Derived> {
    let mut r = sequence(der)?;
    let version = r.small()?;
    if version > 1 {
        return None;
    }
    let alg = r.expect(d::SEQUENCE)?;
    let mut a = Reader::new(alg.content);
    let oid = a.expect(d::OID)?.content;
    let params = a.any();
    if !a.is_empty() {
        return None;
    }
    let private = r.expect(d::OCTET_STRING)?.content;
    r.optional(0xa0);
    let public = match r.optional(0x81) {
        Some(t) if version == 1 && t.content.first() == Some(&0) => Some(&t.content[1..]),
        Some(_) => return None,
        None => None,
    };
    if !r.is_empty() || private.is_empty() {
        return None;
    }
    match oid {
        OID_RSA => {
            if params.is_some_and(|p| p.raw != [d::NULL, 0]) {
                return None;
            }
            pkcs1(private)
        }
        OID_EC_PUBLIC_KEY => sec1(private, Some(curve_oid(params?)?)),
        OID_ED25519 => {
            let seed = d::tlv(private)?;
            if params.is_some() || seed.tag != d::OCTET_STRING || seed.raw.len() != private.len() {
                return None;
            }
            let mine = ed25519_public(seed.content)?;
            let mut out = Derived::known("ed25519", ed25519_spki(&mine));
            if public.is_some_and(|p| p != mine) {
                out.note = Some(
                    "the embedded public key does not match the private key: SPKI derived from the private key".into(),
                );
            }
            Some(out)
        }
        _ => {
            let name = match oid {
                OID_X25519 => "x25519",
                OID_X448 => "x448",
                OID_ED448 => "ed448",
                _ => "unknown",
            };
            let what = if name == "unknown" {
                format!("algorithm {} is not known to the scanner", d::oid_string(oid))
            } else {
                format!("the scanner does not derive {name} public keys")
            };
            Some(match public {
                Some(p) => Derived {
                    algorithm: name.into(),
                    spki: Some(d::spki(alg.raw, p)),
                    encrypted: false,
                    note: Some(format!("{what}: SPKI from the key's own public key field")),
                },
                None => Derived {
                    algorithm: name.into(),
                    spki: None,
                    encrypted: false,
                    note: Some(format!("{what}: SPKI not derived")),
                },
            })
        }
    }
}

/// PKCS#8 EncryptedPrivateKeyInfo under a password-based scheme.
pub(crate) fn encrypted_pkcs8(der: &[u8]) -> Option<Derived> {
    let mut r = sequence(der)?;
    let alg = r.expect(d::SEQUENCE)?;
    let mut a = Reader::new(alg.content);
    let oid = a.expect(d::OID)?.content;
    let params = a.expect(d::SEQUENCE)?;
    let data = r.expect(d::OCTET_STRING)?.content;
    if !a.is_empty() || !r.is_empty() || data.len() < 8 {
        return None;
    }
    let scheme = if oid == OID_PBES2 {
        let mut p = Reader::new(params.content);
        p.expect(d::SEQUENCE)?;
        p.expect(d::SEQUENCE)?;
        "PBES2"
    } else if oid.len() == OID_PKCS5.len() + 1 && oid.starts_with(OID_PKCS5) {
        "PBES1"
    } else if oid.len() == OID_PKCS12_PBE.len() + 1 && oid.starts_with(OID_PKCS12_PBE) {
        "PKCS#12 PBE"
    } else {
        return None;
    };
    Some(Derived {
        algorithm: "unknown".into(),
        spki: None,
        encrypted: true,
        note: Some(format!("encrypted PKCS#8 ({scheme}): not opened, the scanner has no password; its algorithm and public key are inside the encryption")),
    })
}

/// A certificate's key as the store names it: its one canonical form (the
/// core's `canonical_spki`), so an EC point the certificate writes compressed
/// is hashed uncompressed, as its private key's is: one key, one fingerprint,
/// however a (rogue) issuer encoded it. A point not on its curve stays as written.
fn canonical_spki(spki: &spki::SubjectPublicKeyInfoOwned) -> Option<Vec<u8>> {
    let written = spki.to_der().ok()?;
    if spki.algorithm.oid.as_bytes() != OID_EC_PUBLIC_KEY {
        return Some(written);
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
        .and_then(|o| Curve::from_oid(o.as_bytes()));
    match (curve, spki.subject_public_key.as_bytes()) {
        (Some(c), Some(point)) if matches!(point.first(), Some(0x02 | 0x03)) => {
            Some(c.check_point(point).map_or(written, |p| ec_spki(c.oid(), &p)))
        }
        _ => Some(written),
    }
}

/// An X.509 certificate, exactly `der`.
pub(crate) fn certificate(der: &[u8]) -> Option<FindingKind> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = &cert.tbs_certificate;
    let spki = canonical_spki(&tbs.subject_public_key_info)?;
    Some(FindingKind::Certificate {
        spki_sha256: super::sha256_hex(&spki),
        // As iotpki_core::serial::serial_hex: the INTEGER's content octets.
        serial: hex::encode(tbs.serial_number.as_bytes()),
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bignum_product() {
        // 0xffffffff * 0xffffffff = 0xfffffffe00000001
        let p = mul(&limbs(&[0xff; 4]), &limbs(&[0xff; 4]));
        assert_eq!(trim(p), limbs(&[0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 1]));
        assert_eq!(limbs(&[1, 2, 3, 4, 5]), vec![0x02030405, 1]);
    }

    #[test]
    fn scalars_out_of_range_give_no_key() {
        assert!(Curve::P256.public_from_scalar(&[0xff; 32]).is_none());
        assert!(Curve::P256.public_from_scalar(&[0; 32]).is_none());
        assert!(Curve::P256.public_from_scalar(&[1]).is_some());
    }

    #[test]
    fn a_compressed_point_is_hashed_as_its_uncompressed_form() {
        use der::Decode;
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let public = p256::SecretKey::from_slice(&[7; 32]).unwrap().public_key();
        let full = ec_spki(OID_P256, public.to_encoded_point(false).as_bytes());
        let short = ec_spki(OID_P256, public.to_encoded_point(true).as_bytes());
        let parse = |d: &[u8]| spki::SubjectPublicKeyInfoOwned::from_der(d).unwrap();
        assert_eq!(canonical_spki(&parse(&short)).unwrap(), full);
        assert_eq!(canonical_spki(&parse(&full)).unwrap(), full);
    }
}
