//! PKCS#10 certification requests: parse, prove possession, and build.

use const_oid::db::rfc5912;
use der::asn1::BitString;
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, ExtensionReq, Version};

use crate::keys::{self, KeyType, Signer};
use crate::Error;

/// Requests larger than this are refused before parsing.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// A PKCS#10 request whose signature has been verified with its own key.
#[derive(Clone, Debug)]
pub struct VerifiedCsr {
    /// The requested subject.
    pub subject: Name,
    /// The public key.
    pub spki: SubjectPublicKeyInfoOwned,
    /// The public key, DER.
    pub spki_der: Vec<u8>,
    /// Its type.
    pub key_type: KeyType,
    /// The subjectAltName requested in an extensionRequest attribute, if any.
    pub requested_san: Option<SubjectAltName>,
}

/// Parse a DER PKCS#10 request and check its signature (proof of possession).
pub fn parse_and_verify(der: &[u8]) -> Result<VerifiedCsr, Error> {
    if der.len() > MAX_CSR_LEN {
        return Err(Error::der("PKCS#10 request", format!("{} bytes is over the {MAX_CSR_LEN}-byte limit", der.len())));
    }
    let req = CertReq::from_der(der).map_err(|e| Error::der("PKCS#10 request", e))?;
    if req.info.version != Version::V1 {
        return Err(Error::der("PKCS#10 request", "version must be v1 (0)"));
    }
    let info_der = req.info.to_der().map_err(|e| Error::der("PKCS#10 request info", e))?;
    let sig = req.signature.as_bytes().ok_or_else(|| Error::der("PKCS#10 request", "signature has unused bits"))?;
    let key_type = KeyType::of_spki(&req.info.public_key)?;
    keys::verify(&req.info.public_key, &req.algorithm, &info_der, sig).map_err(|e| match e {
        Error::BadSignature { .. } => Error::BadSignature { what: "PKCS#10 request" },
        other => other,
    })?;
    let mut requested_san = None;
    for attr in req.info.attributes.iter() {
        if attr.oid != rfc5912::ID_EXTENSION_REQ {
            continue;
        }
        for v in attr.values.iter() {
            let exts: ExtensionReq = v.decode_as().map_err(|e| Error::der("extensionRequest attribute", e))?;
            for ext in exts.0 {
                if ext.extn_id == rfc5912::ID_CE_SUBJECT_ALT_NAME {
                    let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                        .map_err(|e| Error::der("requested subjectAltName", e))?;
                    requested_san = Some(san);
                }
            }
        }
    }
    let spki_der = req.info.public_key.to_der().map_err(|e| Error::der("public key", e))?;
    // The key is named by the hash of these octets ("one key, one device", leaked
    // keys): only its one canonical encoding is certified.
    keys::canonical_spki(&spki_der)?;
    Ok(VerifiedCsr { subject: req.info.subject, spki: req.info.public_key, spki_der, key_type, requested_san })
}

/// The challengePassword attribute (PKCS#9, RFC 2985 §5.4.1): EST over
/// secure CoAP carries a device's one-time token in it (`SERIAL:TOKEN`, what
/// HTTP Basic carries over HTTPS), see docs/coaps.md.
pub const CHALLENGE_PASSWORD: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7");

/// The challengePassword of a DER PKCS#10 request, if it has one, read
/// without checking the request's signature (so that a wrong token costs no
/// signature check; the request is verified with [`parse_and_verify`] before
/// anything is issued). Refused: more than one, or one that is not a
/// PrintableString or UTF8String (RFC 2985's DirectoryString choices in use).
pub fn challenge_password(der: &[u8]) -> Result<Option<zeroize::Zeroizing<String>>, Error> {
    if der.len() > MAX_CSR_LEN {
        return Err(Error::der("PKCS#10 request", format!("{} bytes is over the {MAX_CSR_LEN}-byte limit", der.len())));
    }
    let req = CertReq::from_der(der).map_err(|e| Error::der("PKCS#10 request", e))?;
    let mut found = None;
    for attr in req.info.attributes.iter().filter(|a| a.oid == CHALLENGE_PASSWORD) {
        for v in attr.values.iter() {
            if found.is_some() {
                return Err(Error::der("challengePassword attribute", "more than one value"));
            }
            let text = match der::Tagged::tag(v) {
                der::Tag::PrintableString | der::Tag::Utf8String => std::str::from_utf8(v.value())
                    .map_err(|_| Error::der("challengePassword attribute", "not UTF-8"))?,
                t => {
                    return Err(Error::der(
                        "challengePassword attribute",
                        format!("a {t} (a PrintableString or UTF8String is needed)"),
                    ))
                }
            };
            found = Some(zeroize::Zeroizing::new(text.to_string()));
        }
    }
    Ok(found)
}

/// Build and sign a PKCS#10 request for `subject` with `signer` (on the device).
/// `extensions` go into an extensionRequest attribute when not empty.
pub fn build(subject: &Name, signer: &dyn Signer, extensions: Vec<Extension>) -> Result<Vec<u8>, Error> {
    build_with_challenge(subject, signer, extensions, None)
}

/// [`build`], with a challengePassword attribute (a UTF8String) when
/// `challenge` is given: the one-time token of a first enrollment over
/// secure CoAP ([`challenge_password`]).
pub fn build_with_challenge(
    subject: &Name,
    signer: &dyn Signer,
    extensions: Vec<Extension>,
    challenge: Option<&str>,
) -> Result<Vec<u8>, Error> {
    let public_key =
        SubjectPublicKeyInfoOwned::from_der(signer.public_key_der()).map_err(|e| Error::der("signer public key", e))?;
    let mut attributes = der::asn1::SetOfVec::new();
    if !extensions.is_empty() {
        let value = der::Any::encode_from(&ExtensionReq(extensions)).map_err(|e| Error::der("extensionRequest", e))?;
        let values = der::asn1::SetOfVec::try_from(vec![value]).map_err(|e| Error::der("extensionRequest", e))?;
        attributes
            .insert(x509_cert::attr::Attribute { oid: rfc5912::ID_EXTENSION_REQ, values })
            .map_err(|e| Error::der("attributes", e))?;
    }
    if let Some(c) = challenge {
        let value =
            der::Any::encode_from(&der::asn1::Utf8StringRef::new(c).map_err(|e| Error::der("challengePassword", e))?)
                .map_err(|e| Error::der("challengePassword", e))?;
        let values = der::asn1::SetOfVec::try_from(vec![value]).map_err(|e| Error::der("challengePassword", e))?;
        attributes
            .insert(x509_cert::attr::Attribute { oid: CHALLENGE_PASSWORD, values })
            .map_err(|e| Error::der("attributes", e))?;
    }
    let info = CertReqInfo { version: Version::V1, subject: subject.clone(), public_key, attributes };
    let info_der = info.to_der().map_err(|e| Error::der("request info", e))?;
    let signature = signer.sign(&info_der)?;
    let req = CertReq {
        info,
        algorithm: signer.key_type().signature_algorithm()?,
        signature: BitString::from_bytes(&signature).map_err(|e| Error::der("signature", e))?,
    };
    req.to_der().map_err(|e| Error::der("PKCS#10 request", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SoftKey;
    use crate::name::{device_subject, serial_numbers, DeviceSerial};

    #[test]
    fn a_challenge_password_is_read_back_and_the_request_still_verifies() {
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let subject = device_subject("Acme", &DeviceSerial::parse("SN1").unwrap()).unwrap();
        let plain = build(&subject, &key, vec![]).unwrap();
        assert!(challenge_password(&plain).unwrap().is_none());
        let der = build_with_challenge(&subject, &key, vec![], Some("SN1:s3cr3t")).unwrap();
        assert_eq!(challenge_password(&der).unwrap().as_deref().map(String::as_str), Some("SN1:s3cr3t"));
        parse_and_verify(&der).expect("the attribute is signed with the rest");
        // openssl's own encoding of the attribute (a PrintableString) reads too.
        let ours = der::asn1::Utf8StringRef::new("SN1:s3cr3t").unwrap().to_der().unwrap();
        let mut printable = ours.clone();
        printable[0] = 0x13;
        let mut patched = der.clone();
        let at = patched.windows(ours.len()).position(|w| w == ours).unwrap();
        patched[at..at + ours.len()].copy_from_slice(&printable);
        assert_eq!(challenge_password(&patched).unwrap().as_deref().map(String::as_str), Some("SN1:s3cr3t"));
        // Another string type is refused, with the reason.
        patched[at] = 0x16; // IA5String
        let e = challenge_password(&patched).unwrap_err().to_string();
        assert!(e.contains("PrintableString or UTF8String"), "{e}");
    }

    #[test]
    fn build_then_verify_each_key_type() {
        for &kt in KeyType::soft_signing() {
            let key = SoftKey::generate(kt).unwrap();
            let subject = device_subject("Acme", &DeviceSerial::parse("SN1").unwrap()).unwrap();
            let der = build(&subject, &key, vec![]).unwrap();
            let csr = parse_and_verify(&der).unwrap();
            assert_eq!(csr.key_type, kt);
            assert_eq!(serial_numbers(&csr.subject), vec!["SN1".to_string()]);
            assert_eq!(csr.spki_der, key.public_key_der());
        }
    }

    #[test]
    fn tampered_request_fails_signature() {
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let subject = device_subject("Acme", &DeviceSerial::parse("SN1").unwrap()).unwrap();
        let der = build(&subject, &key, vec![]).unwrap();
        // Flip one byte of the serial inside the subject: still DER, signature breaks.
        let pos = der.windows(3).position(|w| w == b"SN1").unwrap();
        let mut bad = der.clone();
        bad[pos + 2] = b'2';
        assert_eq!(parse_and_verify(&bad).unwrap_err(), Error::BadSignature { what: "PKCS#10 request" });
    }

    #[test]
    fn garbage_and_trailing_bytes_refused() {
        assert!(matches!(parse_and_verify(b"\x30\x03\x02\x01\x00"), Err(Error::Der { .. })));
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let subject = device_subject("Acme", &DeviceSerial::parse("SN1").unwrap()).unwrap();
        let mut der = build(&subject, &key, vec![]).unwrap();
        der.push(0);
        assert!(matches!(parse_and_verify(&der), Err(Error::Der { .. })));
    }
}
