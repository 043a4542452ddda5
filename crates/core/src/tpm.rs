//! What a verifier needs of TPM 2.0, without a TPM: a key's public area
//! (TPMT_PUBLIC) read and checked, its Name, and TPM2_MakeCredential done in
//! software against an endorsement key's public key, so that only the TPM
//! holding that EK, with the named key loaded in it, can recover a secret
//! (TPM2_ActivateCredential).
//!
//! References: TPM 2.0 Library, Part 1 (Architecture) 11.4.9 KDFa,
//! 11.4.10.3 KDFe, 24 Credential Protection (24.4 Symmetric Encrypt, 24.5 HMAC);
//! Part 2 (Structures) 12.2.4 TPMT_PUBLIC, 8.3 TPMA_OBJECT. ECC P-256 EKs and
//! keys with nameAlg SHA-256 only: the templates iotpki uses.

use aws_lc_rs::{agreement, cipher, digest, hmac, rand};
use spki::der::Decode;
use spki::SubjectPublicKeyInfoOwned;

use crate::Error;

/// TPM_ALG_ECC.
const ALG_ECC: u16 = 0x0023;
/// TPM_ALG_SHA256.
const ALG_SHA256: u16 = 0x000b;
/// TPM_ALG_NULL.
const ALG_NULL: u16 = 0x0010;
/// TPM_ECC_NIST_P256.
const ECC_NIST_P256: u16 = 0x0003;

/// TPMA_OBJECT bits (Part 2, 8.3.2).
pub mod attr {
    /// fixedTPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// fixedParent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// sensitiveDataOrigin.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// userWithAuth.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// adminWithPolicy.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// restricted.
    pub const RESTRICTED: u32 = 1 << 16;
    /// decrypt.
    pub const DECRYPT: u32 = 1 << 17;
    /// sign / encrypt.
    pub const SIGN: u32 = 1 << 18;
}

/// An ECC key's public area, as far as a verifier needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EccPublic {
    /// TPMA_OBJECT.
    pub attributes: u32,
    /// The authorisation policy digest (empty: none).
    pub auth_policy: Vec<u8>,
    /// The public point, uncompressed (`04 || x || y`), P-256.
    pub point: Vec<u8>,
    /// The key's Name: nameAlg (SHA-256) || SHA-256(TPMT_PUBLIC).
    pub name: Vec<u8>,
}

fn bad(detail: impl Into<String>) -> Error {
    Error::Der { what: "TPM public area", detail: detail.into() }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn tpm2b(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

/// Read a marshalled TPMT_PUBLIC of an ECC P-256 key with nameAlg SHA-256.
pub fn parse_ecc_public(bytes: &[u8]) -> Result<EccPublic, Error> {
    let mut r = Reader(bytes);
    if r.u16()? != ALG_ECC {
        return Err(bad("not an ECC key"));
    }
    if r.u16()? != ALG_SHA256 {
        return Err(bad("its nameAlg is not SHA-256"));
    }
    let attributes = r.u32()?;
    let auth_policy = r.tpm2b()?.to_vec();
    // TPMS_ECC_PARMS: symmetric, scheme, curveID, kdf.
    if r.u16()? != ALG_NULL {
        r.u16()?; // keyBits
        r.u16()?; // mode
    }
    if r.u16()? != ALG_NULL {
        r.u16()?; // the scheme's hash
    }
    if r.u16()? != ECC_NIST_P256 {
        return Err(bad("the key is not on P-256"));
    }
    if r.u16()? != ALG_NULL {
        r.u16()?; // the KDF's hash
    }
    let (x, y) = (r.tpm2b()?, r.tpm2b()?);
    if !r.0.is_empty() {
        return Err(bad(format!("{} octets after the public area", r.0.len())));
    }
    if x.len() > 32 || y.len() > 32 {
        return Err(bad("a coordinate longer than P-256's"));
    }
    let mut point = vec![0x04];
    point.extend(std::iter::repeat_n(0, 32 - x.len()));
    point.extend_from_slice(x);
    point.extend(std::iter::repeat_n(0, 32 - y.len()));
    point.extend_from_slice(y);
    let mut name = ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    Ok(EccPublic { attributes, auth_policy, point, name })
}

impl EccPublic {
    /// The key as a DER subjectPublicKeyInfo (id-ecPublicKey, P-256).
    pub fn spki_der(&self) -> Result<Vec<u8>, Error> {
        use der::Encode;
        let spki = SubjectPublicKeyInfoOwned {
            algorithm: spki::AlgorithmIdentifierOwned {
                oid: const_oid::db::rfc5912::ID_EC_PUBLIC_KEY,
                parameters: Some(der::Any::from(der::asn1::AnyRef::from(&const_oid::db::rfc5912::SECP_256_R_1))),
            },
            subject_public_key: der::asn1::BitString::from_bytes(&self.point).map_err(|e| bad(e.to_string()))?,
        };
        spki.to_der().map_err(|e| bad(e.to_string()))
    }

    /// Refuse, saying why, unless this is a device key as the TPM keystore
    /// makes them: made in the TPM and unable to leave it (fixedTPM,
    /// fixedParent, sensitiveDataOrigin), an unrestricted signing key used
    /// with its authorisation value (userWithAuth, no adminWithPolicy), not a
    /// decryption key.
    pub fn check_device_key(&self) -> Result<(), Error> {
        let need = [
            (attr::FIXED_TPM, "fixedTPM"),
            (attr::FIXED_PARENT, "fixedParent"),
            (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
            (attr::USER_WITH_AUTH, "userWithAuth"),
            (attr::SIGN, "sign"),
        ];
        let refuse = [
            (attr::ADMIN_WITH_POLICY, "adminWithPolicy"),
            (attr::DECRYPT, "decrypt"),
            (attr::RESTRICTED, "restricted"),
        ];
        let missing: Vec<&str> = need.iter().filter(|(b, _)| self.attributes & b == 0).map(|(_, n)| *n).collect();
        let extra: Vec<&str> = refuse.iter().filter(|(b, _)| self.attributes & b != 0).map(|(_, n)| *n).collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Err(Error::Profile(format!(
                "the TPM key's attributes do not keep it in the TPM as a signing key (missing: {}; not allowed: {})",
                if missing.is_empty() { "none".to_string() } else { missing.join(", ") },
                if extra.is_empty() { "none".to_string() } else { extra.join(", ") },
            )));
        }
        Ok(())
    }
}

/// KDFa with HMAC-SHA-256 (SP 800-108 counter mode as Part 1, 11.4.9.2 has it).
fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let want = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(want + 32);
    let mut counter = 1u32;
    while out.len() < want {
        let mut ctx = hmac::Context::with_key(&k);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter += 1;
    }
    out.truncate(want);
    out
}

/// KDFe with SHA-256 (SP 800-56A concatenation KDF as Part 1, 11.4.10.3 has it).
fn kdfe(z: &[u8], label: &str, party_u: &[u8], party_v: &[u8], bits: u32) -> Vec<u8> {
    let want = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(want + 32);
    let mut counter = 1u32;
    while out.len() < want {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&counter.to_be_bytes());
        ctx.update(z);
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(party_u);
        ctx.update(party_v);
        out.extend_from_slice(ctx.finish().as_ref());
        counter += 1;
    }
    out.truncate(want);
    out
}

/// The public point (uncompressed) of a P-256 subjectPublicKeyInfo.
fn p256_point(spki_der: &[u8]) -> Result<Vec<u8>, Error> {
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der).map_err(|e| Error::der("EK public key", e))?;
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as::<const_oid::ObjectIdentifier>().ok());
    if spki.algorithm.oid != const_oid::db::rfc5912::ID_EC_PUBLIC_KEY
        || curve != Some(const_oid::db::rfc5912::SECP_256_R_1)
    {
        return Err(Error::UnsupportedAlgorithm("the EK public key is not an ECC P-256 key".into()));
    }
    let point = spki.subject_public_key.raw_bytes().to_vec();
    if point.len() != 65 || point[0] != 0x04 {
        return Err(Error::der("EK public key", "not an uncompressed P-256 point"));
    }
    Ok(point)
}

/// Refuse, saying why, unless `ek_spki_der` is a public key an endorsement
/// key can have here: ECC P-256 (the TCG default template L-2).
pub fn check_ek(ek_spki_der: &[u8]) -> Result<(), Error> {
    p256_point(ek_spki_der)?;
    // EKs are registered and matched by fingerprint: only the one encoding of a key.
    crate::keys::canonical_spki(ek_spki_der).map(|_| ())
}

/// A credential for TPM2_ActivateCredential: the contents of its
/// TPM2B_ID_OBJECT (`credential_blob`) and TPM2B_ENCRYPTED_SECRET
/// (`encrypted_secret`, a TPMS_ECC_POINT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// integrityHMAC (a TPM2B_DIGEST) || encIdentity.
    pub credential_blob: Vec<u8>,
    /// The ephemeral ECDH public point, marshalled.
    pub encrypted_secret: Vec<u8>,
}

/// TPM2_MakeCredential in software: protect `secret` (at most 32 octets) so
/// that only the TPM holding the EK whose P-256 public key is `ek_spki_der`
/// (an EK with the TCG template's AES-128-CFB symmetric definition and
/// nameAlg SHA-256), with an object named `object_name` loaded, recovers it.
pub fn make_credential(ek_spki_der: &[u8], object_name: &[u8], secret: &[u8]) -> Result<Credential, Error> {
    if secret.is_empty() || secret.len() > 32 {
        return Err(Error::Key("a credential secret is 1 to 32 octets".into()));
    }
    let ek = p256_point(ek_spki_der)?;
    let rng = rand::SystemRandom::new();
    let eph = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
        .map_err(|_| Error::Key("cannot make an ephemeral P-256 key".into()))?;
    let eph_pub = eph.compute_public_key().map_err(|_| Error::Key("cannot make an ephemeral P-256 key".into()))?;
    let eph_pub = eph_pub.as_ref().to_vec();
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &ek);
    let z = agreement::agree_ephemeral(
        eph,
        peer,
        Error::Key("the EK public key is not a valid P-256 point".into()),
        |z| Ok(z.to_vec()),
    )?;
    let (eph_x, eph_y, ek_x) = (&eph_pub[1..33], &eph_pub[33..65], &ek[1..33]);
    // Part 1, 24.4: the seed from ECDH with the EK, then the keys from the seed.
    let seed = kdfe(&z, "IDENTITY", eph_x, ek_x, 256);
    let sym_key = kdfa(&seed, "STORAGE", object_name, &[], 128);
    let hmac_key = kdfa(&seed, "INTEGRITY", &[], &[], 256);

    let mut enc_identity = (secret.len() as u16).to_be_bytes().to_vec();
    enc_identity.extend_from_slice(secret);
    let key = cipher::UnboundCipherKey::new(&cipher::AES_128, &sym_key).map_err(|_| Error::Key("AES key".into()))?;
    let enc = cipher::EncryptingKey::cfb128(key).map_err(|_| Error::Key("AES-CFB".into()))?;
    let zero_iv = cipher::EncryptionContext::Iv128(aws_lc_rs::iv::FixedLength::from([0u8; 16]));
    enc.less_safe_encrypt(&mut enc_identity, zero_iv).map_err(|_| Error::Key("AES-CFB".into()))?;

    let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &hmac_key));
    mac.update(&enc_identity);
    mac.update(object_name);
    let integrity = mac.sign();
    let mut credential_blob = (integrity.as_ref().len() as u16).to_be_bytes().to_vec();
    credential_blob.extend_from_slice(integrity.as_ref());
    credential_blob.extend_from_slice(&enc_identity);

    let mut encrypted_secret = Vec::with_capacity(68);
    for c in [eph_x, eph_y] {
        encrypted_secret.extend_from_slice(&(c.len() as u16).to_be_bytes());
        encrypted_secret.extend_from_slice(c);
    }
    Ok(Credential { credential_blob, encrypted_secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_counts_and_truncates() {
        // Deterministic, label- and context-sensitive, as long as asked.
        let a = kdfa(b"seed", "STORAGE", b"name", &[], 128);
        assert_eq!(a.len(), 16);
        assert_eq!(a, kdfa(b"seed", "STORAGE", b"name", &[], 128));
        assert_ne!(a, kdfa(b"seed", "INTEGRITY", b"name", &[], 128));
        assert_ne!(a[..], kdfa(b"seed", "STORAGE", b"name", &[], 256)[..16], "the size is in the input");
        assert_eq!(kdfa(b"seed", "X", &[], &[], 512).len(), 64);
        assert_eq!(kdfe(b"z", "IDENTITY", b"u", b"v", 256).len(), 32);
    }

    #[test]
    fn public_area_refusals() {
        assert!(parse_ecc_public(&[]).is_err());
        assert!(parse_ecc_public(&[0x00, 0x01, 0x00, 0x0b]).unwrap_err().to_string().contains("not an ECC key"));
        let e = make_credential(b"not der", b"name", b"secret").unwrap_err();
        assert!(e.to_string().contains("EK public key"), "{e}");
    }
}
