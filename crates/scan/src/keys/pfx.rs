//! PKCS#12 (PFX): opened with the empty password in both conventions
//! (OpenSSL's `pass:`, a BMPString of just its terminator, and no password at
//! all, zero octets); a file that needs a real password is reported as such.

use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
use der::asn1::OctetString;
use der::{Decode, Encode};
use hmac::Mac;
use pkcs12::kdf::{derive_key, Pkcs12KeyType};
use zeroize::Zeroizing;

use super::decode::{self, Derived};
use super::der::{self as d, Reader};
use crate::{FindingKind, KeyFormat};

/// Passwords to try, as the PKCS#12 KDF takes them (BMPString octets with the
/// terminator) and as PBES2 takes them (UTF-8 octets).
const PASSWORDS: [(&[u8], &[u8]); 2] = [(&[0, 0], b""), (&[], b"")];

/// Key-derivation iterations above this are not tried: a crafted file must
/// not make the scanner spin (OpenSSL writes 2048).
const MAX_ITERATIONS: u64 = 100_000;

/// Nested SafeContents bags deeper than this are not opened.
const MAX_DEPTH: usize = 4;

const OID_DATA: &str = "1.2.840.113549.1.7.1";
const OID_ENCRYPTED_DATA: &str = "1.2.840.113549.1.7.6";
const OID_KEY_BAG: &str = "1.2.840.113549.1.12.10.1.1";
const OID_SHROUDED_KEY_BAG: &str = "1.2.840.113549.1.12.10.1.2";
const OID_CERT_BAG: &str = "1.2.840.113549.1.12.10.1.3";
const OID_SAFE_CONTENTS_BAG: &str = "1.2.840.113549.1.12.10.1.6";
const OID_X509_CERT: &str = "1.2.840.113549.1.9.22.1";

fn protected(note: &str) -> FindingKind {
    Derived { algorithm: "unknown".into(), spki: None, encrypted: true, note: Some(note.into()) }
        .into_finding(KeyFormat::Pkcs12, "DER")
}

/// Findings for the PFX that is exactly `der`; `None` if it is not one.
pub(crate) fn pfx(der: &[u8]) -> Option<Vec<FindingKind>> {
    let pfx = pkcs12::pfx::Pfx::from_der(der).ok()?;
    if pfx.version != pkcs12::pfx::Version::V3 {
        return None;
    }
    if pfx.auth_safe.content_type.to_string() != OID_DATA {
        return Some(vec![protected("PKCS#12 in public-key integrity mode: not opened")]);
    }
    let data = pfx.auth_safe.content.decode_as::<OctetString>().ok()?;
    let data = data.as_bytes();
    let safes = Vec::<cms::content_info::ContentInfo>::from_der(data).ok()?;
    let candidates: Vec<(&[u8], &[u8])> = match &pfx.mac_data {
        Some(mac) => match PASSWORDS.iter().find(|(bmp, _)| verify_mac(mac, bmp, data) == Some(true)) {
            Some(p) => vec![*p],
            None => {
                let note = if verify_mac(mac, &[0, 0], data).is_none() {
                    "PKCS#12 with a MAC the scanner cannot check (algorithm or iteration count): not opened"
                } else {
                    "PKCS#12 protected by a password: not opened"
                };
                return Some(vec![protected(note)]);
            }
        },
        None => PASSWORDS.to_vec(),
    };
    let mut out = Vec::new();
    for ci in &safes {
        let kind = ci.content_type.to_string();
        let contents = if kind == OID_DATA {
            Zeroizing::new(ci.content.decode_as::<OctetString>().ok()?.as_bytes().to_vec())
        } else if kind == OID_ENCRYPTED_DATA {
            let ed = ci.content.decode_as::<cms::encrypted_data::EncryptedData>().ok()?;
            let info = &ed.enc_content_info;
            let Some(ct) = info.encrypted_content.as_ref() else { continue };
            let alg = info.content_enc_alg.to_der().ok()?;
            match candidates.iter().find_map(|p| decrypt(&alg, ct.as_bytes(), *p)) {
                Some(plain) => plain,
                None => {
                    out.push(protected("PKCS#12 protected by a password: not opened"));
                    continue;
                }
            }
        } else {
            continue;
        };
        bags(&contents, &candidates, 0, &mut out);
    }
    // A PFX with nothing we read in it is still not a key: nothing is reported.
    Some(out)
}

fn bags(contents: &[u8], candidates: &[(&[u8], &[u8])], depth: usize, out: &mut Vec<FindingKind>) {
    let Ok(list) = Vec::<pkcs12::safe_bag::SafeBag>::from_der(contents) else { return };
    for mut bag in list {
        scan_bag(&bag, candidates, depth, out);
        // A key bag's value is a clear private key.
        zeroize::Zeroize::zeroize(&mut bag.bag_value);
    }
}

fn scan_bag(bag: &pkcs12::safe_bag::SafeBag, candidates: &[(&[u8], &[u8])], depth: usize, out: &mut Vec<FindingKind>) {
    let Some(value) = d::tlv(&bag.bag_value).filter(|t| t.tag == 0xa0).map(|t| t.content) else { return };
    match bag.bag_id.to_string().as_str() {
        OID_KEY_BAG => {
            if let Some(k) = decode::pkcs8(value) {
                out.push(k.into_finding(KeyFormat::Pkcs12, "DER"));
            }
        }
        OID_SHROUDED_KEY_BAG => {
            let mut r = Reader::new(d::tlv(value).filter(|t| t.tag == d::SEQUENCE).map_or(&[][..], |t| t.content));
            let (Some(alg), Some(ct)) = (r.expect(d::SEQUENCE), r.expect(d::OCTET_STRING)) else { return };
            match candidates.iter().find_map(|p| decrypt(alg.raw, ct.content, *p)) {
                Some(plain) => {
                    if let Some(k) = decode::pkcs8(&plain) {
                        out.push(k.into_finding(KeyFormat::Pkcs12, "DER"));
                    }
                }
                None => out.push(protected("PKCS#12 key bag protected by a password: not opened")),
            }
        }
        OID_CERT_BAG => {
            let Ok(cert) = pkcs12::cert_type::CertBag::from_der(value) else { return };
            if cert.cert_id.to_string() == OID_X509_CERT {
                if let Some(c) = decode::certificate(cert.cert_value.as_bytes()) {
                    out.push(c);
                }
            }
        }
        OID_SAFE_CONTENTS_BAG if depth < MAX_DEPTH => bags(value, candidates, depth + 1, out),
        _ => {}
    }
}

/// `Some(true)` if the MAC verifies with this password, `None` if it cannot be checked.
fn verify_mac(mac: &pkcs12::mac_data::MacData, password: &[u8], data: &[u8]) -> Option<bool> {
    let iterations = u64::try_from(mac.iterations).ok().filter(|&i| i > 0 && i <= MAX_ITERATIONS)?;
    let rounds = i32::try_from(iterations).ok()?;
    let salt = mac.mac_salt.as_bytes();
    let expected = mac.mac.digest.as_bytes();
    macro_rules! check {
        ($d:ty) => {{
            let key = Zeroizing::new(derive_key::<$d>(
                password,
                salt,
                Pkcs12KeyType::Mac,
                rounds,
                <$d as sha2::Digest>::output_size(),
            ));
            let mut m = hmac::Hmac::<$d>::new_from_slice(&key).ok()?;
            m.update(data);
            Some(m.verify_slice(expected).is_ok())
        }};
    }
    match mac.mac.algorithm.oid.to_string().as_str() {
        "1.3.14.3.2.26" => check!(sha1::Sha1),
        "2.16.840.1.101.3.4.2.1" => check!(sha2::Sha256),
        "2.16.840.1.101.3.4.2.2" => check!(sha2::Sha384),
        "2.16.840.1.101.3.4.2.3" => check!(sha2::Sha512),
        _ => None,
    }
}

/// Decrypts under a PBES2 or PKCS#12 PBE AlgorithmIdentifier (`alg`, DER).
fn decrypt(alg: &[u8], ciphertext: &[u8], (bmp, utf8): (&[u8], &[u8])) -> Option<Zeroizing<Vec<u8>>> {
    let t = d::tlv(alg)?;
    let mut r = Reader::new(t.content);
    let oid = d::oid_string(r.expect(d::OID)?.content);
    if oid == "1.2.840.113549.1.5.13" {
        let scheme = pkcs8::pkcs5::EncryptionScheme::from_der(alg).ok()?;
        if let pkcs8::pkcs5::EncryptionScheme::Pbes2(p) = &scheme {
            let iterations = match &p.kdf {
                pkcs8::pkcs5::pbes2::Kdf::Pbkdf2(k) => u64::from(k.iteration_count),
                _ => return None,
            };
            if iterations > MAX_ITERATIONS {
                return None;
            }
        }
        return scheme.decrypt(utf8, ciphertext).ok().map(Zeroizing::new);
    }
    let params = r.expect(d::SEQUENCE)?;
    let mut p = Reader::new(params.content);
    let salt = p.expect(d::OCTET_STRING)?.content;
    let iterations = p.uint()?;
    if iterations == 0 || iterations > MAX_ITERATIONS {
        return None;
    }
    let rounds = i32::try_from(iterations).ok()?;
    let key_len = match oid.as_str() {
        "1.2.840.113549.1.12.1.3" => 24,
        "1.2.840.113549.1.12.1.4" | "1.2.840.113549.1.12.1.5" => 16,
        "1.2.840.113549.1.12.1.6" => 5,
        _ => return None,
    };
    let key = Zeroizing::new(derive_key::<sha1::Sha1>(bmp, salt, Pkcs12KeyType::EncryptionKey, rounds, key_len));
    let iv = derive_key::<sha1::Sha1>(bmp, salt, Pkcs12KeyType::Iv, rounds, 8);
    let plain = match oid.as_str() {
        "1.2.840.113549.1.12.1.3" => cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
            .ok()?
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .ok()?,
        "1.2.840.113549.1.12.1.4" => cbc::Decryptor::<des::TdesEde2>::new_from_slices(&key, &iv)
            .ok()?
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .ok()?,
        _ => {
            use cbc::cipher::InnerIvInit;
            let rc2 = rc2::Rc2::new_with_eff_key_len(&key, key_len * 8);
            cbc::Decryptor::<rc2::Rc2>::inner_iv_slice_init(rc2, &iv)
                .ok()?
                .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
                .ok()?
        }
    };
    Some(Zeroizing::new(plain))
}
