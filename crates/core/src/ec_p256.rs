//! ECDSA and ECDH on P-256 for the ring build, on RustCrypto's `p256`
//! arithmetic instead of ring's (issue #16).
//!
//! ring's P-256 brings a 151 KB table of precomputed multiples of the base
//! point into every binary that signs, verifies or agrees on P-256; the device's
//! default build is measured against 2 MB, and this arithmetic costs a fraction
//! of it. Everything else (P-384, Ed25519, X25519, RSA, the hashes, the random
//! numbers) stays ring's. What this module accepts and refuses is what ring's
//! P-256 did: PKCS#8 v1 only, with the same `KeyRejected` names; uncompressed
//! points only; DER signatures with minimal INTEGERs in [1, n). The tests hold
//! it to ring itself (ring is still there in a test build).

use p256::elliptic_curve::ff::{Field as _, PrimeField as _};
use p256::elliptic_curve::group::Group as _;
use p256::elliptic_curve::ops::Reduce as _;
use p256::elliptic_curve::point::AffineCoordinates as _;
use p256::elliptic_curve::sec1::{FromEncodedPoint as _, ToEncodedPoint as _};
use p256::{AffinePoint, EncodedPoint, FieldBytes, ProjectivePoint, Scalar};
use zeroize::Zeroize as _;

use ring::error::Unspecified;
use ring::rand::{SecureRandom, SystemRandom};

/// An uncompressed point: 04 || x || y.
pub const POINT_LEN: usize = 65;

/// PKCS#8 v1 of a P-256 key up to the private scalar, as ring writes it:
/// version 0, id-ecPublicKey with namedCurve prime256v1, and the ECPrivateKey
/// (version 1, the 32-octet scalar) ...
const PKCS8_HEAD: [u8; 36] = [
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
    0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02, 0x01, 0x01, 0x04, 0x20,
];
/// ... then its [1] publicKey BIT STRING (the uncompressed point follows).
const PKCS8_MID: [u8; 5] = [0xa1, 0x44, 0x03, 0x42, 0x00];
/// The AlgorithmIdentifier's contents: id-ecPublicKey, prime256v1.
const ALG_ID: &[u8] = PKCS8_HEAD.split_at(27).0.split_at(8).1;
/// The namedCurve OID (with its tag and length), as ECPrivateKey's [0] may repeat it.
const CURVE_OID: &[u8] = PKCS8_HEAD.split_at(27).0.split_at(17).1;

/// A P-256 private key (the scalar is wiped on drop) and its public point.
pub struct KeyPair {
    d: Scalar,
    public: [u8; POINT_LEN],
}

impl Drop for KeyPair {
    fn drop(&mut self) {
        self.d.zeroize();
    }
}

/// Why a PKCS#8 key was refused, named as ring names it (`KeyRejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRejected(&'static str);

impl std::fmt::Display for KeyRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

const INVALID_ENCODING: KeyRejected = KeyRejected("InvalidEncoding");
const VERSION_NOT_SUPPORTED: KeyRejected = KeyRejected("VersionNotSupported");
const WRONG_ALGORITHM: KeyRejected = KeyRejected("WrongAlgorithm");
const INVALID_COMPONENT: KeyRejected = KeyRejected("InvalidComponent");
const INCONSISTENT_COMPONENTS: KeyRejected = KeyRejected("InconsistentComponents");

/// A scalar in [1, n) from the system's random numbers.
fn random_scalar(rng: &SystemRandom) -> Result<Scalar, Unspecified> {
    // A 32-octet string is at least n with probability below 2^-32: a retry is rare.
    for _ in 0..64 {
        let mut b = FieldBytes::default();
        rng.fill(b.as_mut_slice())?;
        let s = Option::<Scalar>::from(Scalar::from_repr(b));
        b.zeroize();
        if let Some(s) = s.filter(|s| !bool::from(s.is_zero())) {
            return Ok(s);
        }
    }
    Err(Unspecified)
}

fn encode_point(p: &ProjectivePoint) -> [u8; POINT_LEN] {
    let mut out = [0u8; POINT_LEN];
    out.copy_from_slice(p.to_affine().to_encoded_point(false).as_bytes());
    out
}

/// An uncompressed point (04 || x || y) on the curve; nothing else (ring's rule).
pub fn parse_point(bytes: &[u8]) -> Option<AffinePoint> {
    if bytes.len() != POINT_LEN || bytes[0] != 0x04 {
        return None;
    }
    let ep = EncodedPoint::from_bytes(bytes).ok()?;
    AffinePoint::from_encoded_point(&ep).into()
}

/// The leftmost 256 bits of a hash (SHA-256 or SHA-384), reduced mod n (FIPS 186-5, 6.4.1).
fn hash_scalar(hash: &[u8]) -> Scalar {
    let mut b = FieldBytes::default();
    let n = hash.len().min(32);
    b[32 - n..].copy_from_slice(&hash[..n]);
    Scalar::reduce_bytes(&b)
}

/// A DER INTEGER of a non-negative scalar's octets.
fn push_integer(out: &mut Vec<u8>, s: &Scalar) {
    let b = s.to_repr();
    let skip = b.iter().take_while(|&&x| x == 0).count().min(31);
    let v = &b[skip..];
    let pad = v[0] & 0x80 != 0;
    out.push(0x02);
    out.push((v.len() + usize::from(pad)) as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(v);
}

/// One DER tag-length-value off the front of `input`, as ring's reader takes it
/// (single-octet tags, minimal lengths of at most two octets): (value, rest).
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag || t & 0x1f == 0x1f {
        return None;
    }
    let (&l, rest) = rest.split_first()?;
    let (len, rest) = match l {
        0..=0x7f => (usize::from(l), rest),
        0x81 => {
            let (&a, rest) = rest.split_first()?;
            (a >= 0x80).then_some((usize::from(a), rest))?
        }
        0x82 => {
            let (&[a, b], rest) = rest.split_first_chunk::<2>()?;
            (a != 0).then_some((usize::from(a) << 8 | usize::from(b), rest))?
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// ring's `small_nonnegative_integer`: a non-negative INTEGER of one octet
/// (after a necessary leading zero), minimally encoded.
fn small_integer(input: &[u8]) -> Option<(u8, &[u8])> {
    match tlv(input, 0x02)? {
        (&[v], rest) if v < 0x80 => Some((v, rest)),
        (&[0, v], rest) if v >= 0x80 => Some((v, rest)),
        _ => None,
    }
}

/// A positive DER INTEGER below n, minimally encoded (ring's rule for r and s).
fn signature_scalar(input: &[u8]) -> Option<(Scalar, &[u8])> {
    let (v, rest) = tlv(input, 0x02)?;
    let v = match v {
        [] => return None,
        [0, next, ..] if next & 0x80 != 0 => &v[1..],
        [0, ..] => return None,
        [first, ..] if first & 0x80 != 0 => return None,
        _ => v,
    };
    if v.len() > 32 {
        return None;
    }
    let mut b = FieldBytes::default();
    b[32 - v.len()..].copy_from_slice(v);
    let s = Option::<Scalar>::from(Scalar::from_repr(b))?;
    (!bool::from(s.is_zero())).then_some((s, rest))
}

impl KeyPair {
    /// A fresh key, as the PKCS#8 v1 document ring's `generate_pkcs8` would write.
    pub fn generate_pkcs8() -> Result<zeroize::Zeroizing<Vec<u8>>, Unspecified> {
        let d = random_scalar(&SystemRandom::new())?;
        let kp = Self { d, public: encode_point(&(ProjectivePoint::GENERATOR * d)) };
        Ok(kp.to_pkcs8())
    }

    fn to_pkcs8(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(138));
        out.extend_from_slice(&PKCS8_HEAD);
        out.extend_from_slice(&self.d.to_repr());
        out.extend_from_slice(&PKCS8_MID);
        out.extend_from_slice(&self.public);
        out
    }

    /// A key from PKCS#8 v1, refused where ring's `EcdsaKeyPair::from_pkcs8` refuses it.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyRejected> {
        // PrivateKeyInfo (RFC 5208): version 0, this algorithm, all of the input.
        // ring checks what is inside a structure before what follows it: so here.
        let (info, after_info) = tlv(der, 0x30).ok_or(INVALID_ENCODING)?;
        let (version, info) = small_integer(info).ok_or(INVALID_ENCODING)?;
        if version > 1 {
            return Err(VERSION_NOT_SUPPORTED);
        }
        let (alg, info) = tlv(info, 0x30).ok_or(INVALID_ENCODING)?;
        if alg != ALG_ID {
            return Err(WRONG_ALGORITHM);
        }
        if version != 0 {
            return Err(VERSION_NOT_SUPPORTED);
        }
        let (key, mut info) = tlv(info, 0x04).ok_or(INVALID_ENCODING)?;
        if info.first() == Some(&0xa0) {
            info = tlv(info, 0xa0).ok_or(INVALID_ENCODING)?.1;
        }
        if !info.is_empty() || !after_info.is_empty() {
            return Err(INVALID_ENCODING);
        }
        // ECPrivateKey (RFC 5915, section 3): version 1, the scalar, [0] the curve, [1] the point.
        let (ec, after_ec) = tlv(key, 0x30).ok_or(INVALID_ENCODING)?;
        let (version, ec) = small_integer(ec).ok_or(INVALID_ENCODING)?;
        if version != 1 {
            return Err(VERSION_NOT_SUPPORTED);
        }
        let (private, mut ec) = tlv(ec, 0x04).ok_or(INVALID_ENCODING)?;
        if ec.first() == Some(&0xa0) {
            let (curve, rest) = tlv(ec, 0xa0).ok_or(INVALID_ENCODING)?;
            if curve != CURVE_OID {
                return Err(WRONG_ALGORITHM);
            }
            ec = rest;
        }
        // ring requires the public key, though the RFC makes it optional.
        let (wrapped, rest) = tlv(ec, 0xa1).ok_or(INVALID_ENCODING)?;
        if !rest.is_empty() {
            return Err(INVALID_ENCODING);
        }
        let public = match tlv(wrapped, 0x03).ok_or(INVALID_ENCODING)? {
            ([0, public @ ..], []) => public,
            _ => return Err(INVALID_ENCODING),
        };
        if !after_ec.is_empty() {
            return Err(INVALID_ENCODING);
        }
        if private.len() != 32 {
            return Err(INVALID_COMPONENT);
        }
        let d = Option::<Scalar>::from(Scalar::from_repr(*FieldBytes::from_slice(private)))
            .filter(|d| !bool::from(d.is_zero()))
            .ok_or(INVALID_COMPONENT)?;
        let kp = Self { d, public: encode_point(&(ProjectivePoint::GENERATOR * d)) };
        if public != kp.public {
            return Err(INCONSISTENT_COMPONENTS);
        }
        Ok(kp)
    }

    /// The public key: the uncompressed point.
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// An ECDSA signature (DER, RFC 3279) of a message whose hash is `hash`,
    /// with a hedged nonce (`nonce`).
    pub fn sign_digest(&self, rng: &SystemRandom, hash: &[u8]) -> Result<Vec<u8>, Unspecified> {
        let z = hash_scalar(hash);
        for attempt in 0..64u8 {
            let mut k = self.nonce(rng, hash, attempt)?;
            let x = (ProjectivePoint::GENERATOR * k).to_affine().x();
            let r = Scalar::reduce_bytes(&x);
            let k_inv = Option::<Scalar>::from(k.invert());
            k.zeroize();
            let Some(k_inv) = k_inv else { continue };
            let s = k_inv * (z + r * self.d);
            if bool::from(r.is_zero()) || bool::from(s.is_zero()) {
                continue;
            }
            let mut body = Vec::with_capacity(72);
            push_integer(&mut body, &r);
            push_integer(&mut body, &s);
            let mut out = Vec::with_capacity(body.len() + 2);
            out.push(0x30);
            out.push(body.len() as u8);
            out.extend_from_slice(&body);
            return Ok(out);
        }
        Err(Unspecified)
    }
}

impl KeyPair {
    /// A nonce in [1, n): SHA-512 of 32 fresh random octets, the private
    /// scalar, the message's hash and `attempt`, its first 32 octets (a value
    /// of n or more is skipped: odds below 2^-32). Hedged, as ring's nonces
    /// are: a weak or repeating random source alone cannot repeat a nonce
    /// for two messages, which would give the private key away.
    fn nonce(&self, rng: &SystemRandom, hash: &[u8], attempt: u8) -> Result<Scalar, Unspecified> {
        use ring::digest::{Context, SHA512};
        for extra in 0..64u8 {
            let mut fresh = [0u8; 32];
            rng.fill(&mut fresh)?;
            let mut d = self.d.to_repr();
            let mut ctx = Context::new(&SHA512);
            for part in [&fresh[..], d.as_slice(), hash, &[attempt, extra]] {
                ctx.update(part);
            }
            fresh.zeroize();
            d.zeroize();
            let out = ctx.finish();
            let mut b = FieldBytes::default();
            b.copy_from_slice(&out.as_ref()[..32]);
            let k = Option::<Scalar>::from(Scalar::from_repr(b));
            b.zeroize();
            if let Some(k) = k.filter(|k| !bool::from(k.is_zero())) {
                return Ok(k);
            }
        }
        Err(Unspecified)
    }
}

/// Check an ECDSA signature (DER) by the uncompressed point `public` over a
/// message whose hash is `hash` (SHA-256 or SHA-384).
pub fn verify_digest(public: &[u8], hash: &[u8], signature: &[u8]) -> bool {
    let Some(q) = parse_point(public) else { return false };
    let Some((body, [])) = tlv(signature, 0x30) else { return false };
    let Some((r, body)) = signature_scalar(body) else { return false };
    let Some((s, [])) = signature_scalar(body) else { return false };
    let Some(s_inv) = Option::<Scalar>::from(s.invert()) else { return false };
    let z = hash_scalar(hash);
    let p = ProjectivePoint::GENERATOR * (z * s_inv) + ProjectivePoint::from(q) * (r * s_inv);
    if bool::from(p.is_identity()) {
        return false;
    }
    Scalar::reduce_bytes(&p.to_affine().x()) == r
}

/// ECDH: a fresh ephemeral key, for one agreement.
pub struct Ephemeral {
    d: Scalar,
    public: [u8; POINT_LEN],
}

impl Drop for Ephemeral {
    fn drop(&mut self) {
        self.d.zeroize();
    }
}

impl Ephemeral {
    /// A fresh ephemeral key.
    pub fn generate() -> Result<Self, Unspecified> {
        let d = random_scalar(&SystemRandom::new())?;
        Ok(Self { d, public: encode_point(&(ProjectivePoint::GENERATOR * d)) })
    }

    /// The public key: the uncompressed point.
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret (the x coordinate) with the peer's uncompressed point,
    /// or None if it is not one on the curve.
    pub fn agree(self, peer: &[u8]) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        let q = parse_point(peer)?;
        let shared = (ProjectivePoint::from(q) * self.d).to_affine();
        // A point of prime order times a scalar in [1, n) is never the identity.
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&shared.x());
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    //! Against ring's own P-256 (still in a test build): the same keys, the same
    //! refusals, signatures each side verifies, the same shared secrets.
    use ring::signature::{self as rs, KeyPair as _};

    use super::*;

    fn sha256(m: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, m).as_ref().to_vec()
    }

    #[test]
    fn pkcs8_is_what_ring_writes_and_reads() {
        let rng = SystemRandom::new();
        let theirs = rs::EcdsaKeyPair::generate_pkcs8(&rs::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let theirs = theirs.as_ref();
        assert_eq!(theirs.len(), 138);
        assert_eq!(&theirs[..36], &PKCS8_HEAD[..]);
        assert_eq!(&theirs[68..73], &PKCS8_MID[..]);
        let kp = KeyPair::from_pkcs8(theirs).unwrap();
        let ring_kp = rs::EcdsaKeyPair::from_pkcs8(&rs::ECDSA_P256_SHA256_ASN1_SIGNING, theirs, &rng).unwrap();
        assert_eq!(kp.public_key(), ring_kp.public_key().as_ref());
        assert_eq!(&kp.to_pkcs8()[..], theirs);
        let ours = KeyPair::generate_pkcs8().unwrap();
        let ring_kp = rs::EcdsaKeyPair::from_pkcs8(&rs::ECDSA_P256_SHA256_ASN1_SIGNING, &ours, &rng).unwrap();
        assert_eq!(KeyPair::from_pkcs8(&ours).unwrap().public_key(), ring_kp.public_key().as_ref());
    }

    #[test]
    fn pkcs8_refusals_are_rings() {
        let rng = SystemRandom::new();
        let good = KeyPair::generate_pkcs8().unwrap().to_vec();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // Every octet changed, every truncation, one octet more.
        for i in 0..good.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] ^= x;
                cases.push(b);
            }
            cases.push(good[..i].to_vec());
        }
        cases.push([&good[..], &[0]].concat());
        // Found by the fuzz target: a wrong algorithm inside a SEQUENCE shorter than the
        // input (ring names what is inside before what follows).
        cases.push(vec![
            0x30, 0x40, 0x02, 0x01, 0x00, 0x30, 0x01, 0xf7, 0xf0, 0xf0, 0xf0, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x02, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf0,
            0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0x5e, 0xf0, 0xf0, 0xeb, 0xf0, 0x22, 0x00, 0x00, 0x00, 0x00,
            0xe8, 0x01, 0x00, 0x71, 0xe8, 0xe8, 0xe8, 0xe8, 0xe8, 0xe8, 0xe8, 0x00, 0x00, 0x74, 0xe8, 0xe8, 0xe8,
        ]);
        cases.push([&good[..3], &good[3..8], &[0x06, 0x01, 0x00], &good[27..], &[0]].concat());
        // The curve repeated in [0] (accepted), or another one (refused); v2; a scalar of n or 0.
        let with_params = |oid: &[u8]| {
            let ec_body: Vec<u8> = [&good[31..68], &[0xa0, oid.len() as u8], oid, &good[68..]].concat();
            let ec = [&[0x30, ec_body.len() as u8][..], &ec_body].concat();
            let octet = [&[0x04, ec.len() as u8][..], &ec].concat();
            let body = [&good[3..27], &octet[..]].concat();
            [&[0x30, 0x81, body.len() as u8][..], &body].concat()
        };
        cases.push(with_params(CURVE_OID));
        cases.push(with_params(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]));
        let mut v2 = good.clone();
        v2[5] = 1;
        cases.push(v2);
        let n = hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551").unwrap();
        for scalar in [&[0u8; 32][..], &n] {
            let mut b = good.clone();
            b[36..68].copy_from_slice(scalar);
            cases.push(b);
        }
        let mut accepted = 0;
        for case in &cases {
            let ours = KeyPair::from_pkcs8(case).map(|k| k.public_key().to_vec()).map_err(|e| e.to_string());
            let theirs = rs::EcdsaKeyPair::from_pkcs8(&rs::ECDSA_P256_SHA256_ASN1_SIGNING, case, &rng)
                .map(|k| k.public_key().as_ref().to_vec())
                .map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{case:02x?}");
            accepted += usize::from(ours.is_ok());
        }
        assert!(accepted >= 1 && accepted < cases.len() / 2, "{accepted} of {}", cases.len());
    }

    #[test]
    fn signatures_verify_both_ways() {
        let rng = SystemRandom::new();
        let doc = KeyPair::generate_pkcs8().unwrap();
        let kp = KeyPair::from_pkcs8(&doc).unwrap();
        let ring_kp = rs::EcdsaKeyPair::from_pkcs8(&rs::ECDSA_P256_SHA256_ASN1_SIGNING, &doc, &rng).unwrap();
        for m in [&b""[..], b"a message", &[7u8; 1000]] {
            let ours = kp.sign_digest(&rng, &sha256(m)).unwrap();
            rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_ASN1, kp.public_key()).verify(m, &ours).unwrap();
            assert!(verify_digest(kp.public_key(), &sha256(m), &ours));
            let theirs = ring_kp.sign(&rng, m).unwrap();
            assert!(verify_digest(kp.public_key(), &sha256(m), theirs.as_ref()));
            assert!(!verify_digest(kp.public_key(), &sha256(b"another"), theirs.as_ref()));
            // SHA-384 with a P-256 key: the leftmost 256 bits.
            let h384 = ring::digest::digest(&ring::digest::SHA384, m);
            let p = rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA384_ASN1, kp.public_key());
            p.verify(m, &kp.sign_digest(&rng, h384.as_ref()).unwrap()).unwrap();
        }
        // Damaged signatures: each side refuses what the other refuses.
        let m = b"damaged";
        let sig = kp.sign_digest(&rng, &sha256(m)).unwrap();
        let ring_pk = rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_ASN1, kp.public_key());
        for i in 0..sig.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut b = sig.clone();
                b[i] ^= x;
                assert_eq!(verify_digest(kp.public_key(), &sha256(m), &b), ring_pk.verify(m, &b).is_ok(), "{b:02x?}");
            }
            assert!(!verify_digest(kp.public_key(), &sha256(m), &sig[..i]));
        }
        // A compressed point is refused, as ring refuses it.
        let mut c = kp.public_key()[..33].to_vec();
        c[0] = 0x02 | (kp.public_key()[64] & 1);
        assert!(!verify_digest(&c, &sha256(m), &sig));
        assert!(rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_ASN1, &c).verify(m, &sig).is_err());
    }

    #[test]
    fn ecdh_agrees_with_ring() {
        use ring::agreement as ag;
        let rng = SystemRandom::new();
        let theirs = ag::EphemeralPrivateKey::generate(&ag::ECDH_P256, &rng).unwrap();
        let their_pub = theirs.compute_public_key().unwrap();
        let ours = Ephemeral::generate().unwrap();
        let our_pub = ours.public_key().to_vec();
        let s1 = ours.agree(their_pub.as_ref()).unwrap();
        let s2 =
            ag::agree_ephemeral(theirs, &ag::UnparsedPublicKey::new(&ag::ECDH_P256, &our_pub), |s| s.to_vec()).unwrap();
        assert_eq!(&s1[..], &s2[..]);
        let mut off = our_pub.clone();
        off[64] ^= 1;
        assert!(Ephemeral::generate().unwrap().agree(&off).is_none());
        assert!(Ephemeral::generate().unwrap().agree(&our_pub[..33]).is_none());
    }
}
