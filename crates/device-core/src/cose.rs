//! The COSE pieces bundles and vouchers share (RFC 9052, algorithms RFC
//! 9053): the three signature algorithms, key ids, the headers the
//! authority writes (compared octet for octet), and the Sig_structure a
//! signature covers.

use alloc::vec::Vec;

use crate::cbor::{self, Value};
use crate::keys::{sha256, KeyType, PublicKey};

/// A key id: SHA-256 of the signer's DER subjectPublicKeyInfo, in its canonical form.
pub(crate) type KeyId = [u8; 32];

/// COSE algorithm of a key type: ES256 (-7), ES384 (-35), EdDSA (-8).
pub(crate) fn alg_of(kt: KeyType) -> u64 {
    // Stored as the CBOR negative integer's argument (-1 - n).
    match kt {
        KeyType::EcdsaP256 => 6,
        KeyType::EcdsaP384 => 34,
        KeyType::Ed25519 => 7,
    }
}

fn key_type_of_alg(v: &Value<'_>) -> Option<KeyType> {
    match v {
        Value::Nint(6) => Some(KeyType::EcdsaP256),
        Value::Nint(34) => Some(KeyType::EcdsaP384),
        Value::Nint(7) => Some(KeyType::Ed25519),
        _ => None,
    }
}

/// A signer key named in a bundle or voucher: canonical SPKI of a type we verify.
pub(crate) fn signer_key(spki_der: &[u8]) -> Result<PublicKey, &'static str> {
    PublicKey::from_spki_der(spki_der).map_err(|_| "a key that is not a canonical P-256, P-384 or Ed25519 key")
}

/// The protected header `{1: alg, [3: content type,] 4: kid}` as the authority encodes it.
pub(crate) fn protected(alg: KeyType, content_type: Option<&str>, kid: &KeyId) -> Vec<u8> {
    let mut out = Vec::new();
    cbor::put_head(&mut out, 5, if content_type.is_some() { 3 } else { 2 });
    out.push(0x01);
    cbor::put_head(&mut out, 1, alg_of(alg));
    if let Some(ct) = content_type {
        out.push(0x03);
        cbor::put_text(&mut out, ct);
    }
    out.push(0x04);
    cbor::put_bytes(&mut out, kid);
    out
}

/// The protected header `{3: content type}` of a bundle's body.
pub(crate) fn protected_content_type(content_type: &str) -> Vec<u8> {
    let mut out = alloc::vec![0xa1, 0x03];
    cbor::put_text(&mut out, content_type);
    out
}

/// Read the alg and kid of a protected header that must be exactly
/// `{1: alg, [3: content_type,] 4: kid}` in the authority's encoding.
pub(crate) fn read_protected(bytes: &[u8], content_type: Option<&str>) -> Result<(KeyType, KeyId), &'static str> {
    let v = cbor::decode(bytes)?;
    let Value::Map(m) = &v else { return Err("the protected header is not a map") };
    let alg = m
        .first()
        .filter(|(k, _)| *k == Value::Uint(1))
        .and_then(|(_, v)| key_type_of_alg(v))
        .ok_or("alg must be ES256, ES384 or EdDSA")?;
    let kid: KeyId = m
        .last()
        .filter(|(k, _)| *k == Value::Uint(4))
        .and_then(|(_, v)| v.hash("kid").ok())
        .ok_or("kid must be 32 octets (SHA-256 of the key)")?;
    if protected(alg, content_type, &kid) != bytes {
        return Err("the protected header is not exactly {1: alg, 3: content type, 4: kid}");
    }
    Ok((alg, kid))
}

/// The Sig_structure (RFC 9052 4.4) of a COSE_Sign signature or a COSE_Sign1, empty external AAD.
pub(crate) fn sig_structure(body_protected: &[u8], sign_protected: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + body_protected.len() + 64);
    match sign_protected {
        Some(sp) => {
            cbor::put_head(&mut out, 4, 5);
            cbor::put_text(&mut out, "Signature");
            cbor::put_bytes(&mut out, body_protected);
            cbor::put_bytes(&mut out, sp);
        }
        None => {
            cbor::put_head(&mut out, 4, 4);
            cbor::put_text(&mut out, "Signature1");
            cbor::put_bytes(&mut out, body_protected);
        }
    }
    cbor::put_bytes(&mut out, &[]);
    cbor::put_bytes(&mut out, payload);
    out
}

/// Verify a COSE signature by the key `spki_der`, which must be of `alg`'s type.
pub(crate) fn verify(spki_der: &[u8], alg: KeyType, tbs: &[u8], sig: &[u8]) -> Result<(), &'static str> {
    let key = signer_key(spki_der)?;
    if key.key_type() != alg {
        return Err("the signature's algorithm is not the key's");
    }
    key.verify_fixed(tbs, sig).map_err(|()| "the signature does not verify")
}

/// The key id of a DER subjectPublicKeyInfo.
pub(crate) fn key_id(spki_der: &[u8]) -> KeyId {
    sha256(spki_der)
}
