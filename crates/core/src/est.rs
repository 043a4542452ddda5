//! The EST wire rules (RFC 7030, as clarified by RFC 8951): content types,
//! base64 bodies, and the CSR attributes answer.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use const_oid::db::{rfc4519, rfc5912};
use der::asn1::ObjectIdentifier;
use der::Encode;

use crate::keys::KeyType;
use crate::Error;

/// Content type of a PKCS#10 request body.
pub const CT_PKCS10: &str = "application/pkcs10";
/// Content type of an enrollment answer.
pub const CT_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";
/// Content type of the /cacerts answer.
pub const CT_PKCS7: &str = "application/pkcs7-mime";
/// Content type of the /csrattrs answer.
pub const CT_CSRATTRS: &str = "application/csrattrs";

/// Largest base64 body we decode (a CSR is well under this).
pub const MAX_BODY: usize = 64 * 1024;

/// Padding is optional on input (RFC 8951 asks receivers to be liberal).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decode an EST base64 body: line breaks (CRLF or LF) and other ASCII
/// whitespace anywhere are ignored; a Content-Transfer-Encoding header is
/// irrelevant (RFC 8951 section 3). Bodies over [`MAX_BODY`] are refused.
pub fn decode_body(body: &[u8]) -> Result<Vec<u8>, Error> {
    if body.len() > MAX_BODY {
        return Err(Error::Base64(format!("body of {} bytes is over the {MAX_BODY}-byte limit", body.len())));
    }
    let compact: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(Error::Base64("empty body".into()));
    }
    LENIENT.decode(&compact).map_err(|e| Error::Base64(e.to_string()))
}

/// Encode DER as an EST base64 body: one unbroken line of RFC 4648 section 4
/// base64 (standard alphabet, padded), with no line breaks and no final newline.
///
/// Why this one form: RFC 8951 (section 3) replaced RFC 7030's MIME
/// Content-Transfer-Encoding with plain base64 as RFC 4648 defines it, and
/// RFC 4648 (section 3.1) says encoders MUST NOT add line feeds unless the
/// referring specification directs a line length; neither EST document
/// does. It is also the only form every decoder we met accepts: a strict
/// one (the `est-ca` crate's client, `base64::STANDARD` over the trimmed
/// body) refuses any line break ("Invalid symbol 13, offset 64" for the
/// 64-column CRLF lines we used to send), GNU `base64 -d` refuses CR
/// ("invalid input"), Python's `base64.b64decode` accepts everything.
/// OpenSSL reads it with `openssl base64 -d -A` (-A: "the input is one
/// line"; without -A OpenSSL's line reader stops at about 1 KB per line).
/// Our own decoder ([`decode_body`]) stays liberal, as RFC 8951 asks.
pub fn encode_body(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// The /csrattrs answer (RFC 7030 section 4.5.2): the signature algorithm we
/// want, the key type (id-ecPublicKey with its curve, rsaEncryption with its
/// size, or Ed25519), and that the subject should carry serialNumber.
pub fn csr_attrs(key_type: KeyType) -> Result<Vec<u8>, Error> {
    #[derive(der::Sequence)]
    struct Attr {
        oid: ObjectIdentifier,
        values: der::asn1::SetOfVec<ObjectIdentifier>,
    }
    #[derive(der::Sequence)]
    struct IntAttr {
        oid: ObjectIdentifier,
        values: der::asn1::SetOfVec<u32>,
    }
    fn any(v: &impl Encode) -> Result<der::Any, Error> {
        let d = v.to_der().map_err(|e| Error::der("csrattrs", e))?;
        <der::Any as der::Decode>::from_der(&d).map_err(|e| Error::der("csrattrs", e))
    }
    let set = |e: der::Error| Error::der("csrattrs", e);
    let sig = match key_type {
        // Devices with RSA keys sign their requests with PKCS#1 v1.5 and SHA-256.
        KeyType::Rsa(_) => rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
        k => k.signature_algorithm()?.oid,
    };
    let mut items = vec![any(&sig)?];
    match key_type {
        KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
            let curve = if key_type == KeyType::EcdsaP256 { rfc5912::SECP_256_R_1 } else { rfc5912::SECP_384_R_1 };
            let values = der::asn1::SetOfVec::try_from(vec![curve]).map_err(set)?;
            items.push(any(&Attr { oid: rfc5912::ID_EC_PUBLIC_KEY, values })?);
        }
        KeyType::Rsa(bits) => {
            // RFC 7030 4.5.2's example: rsaEncryption with the modulus size as an INTEGER.
            let b = u32::try_from(bits).map_err(|_| Error::UnsupportedAlgorithm(format!("RSA of {bits} bits")))?;
            let values = der::asn1::SetOfVec::try_from(vec![b]).map_err(set)?;
            items.push(any(&IntAttr { oid: rfc5912::RSA_ENCRYPTION, values })?);
        }
        // The algorithm OID names the key type too (RFC 8410, RFC 9881).
        KeyType::Ed25519 | KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => {}
    }
    items.push(any(&rfc4519::SERIAL_NUMBER)?);
    items.to_der().map_err(|e| Error::der("csrattrs", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_wrapped_unwrapped_padded_or_not() {
        let der: Vec<u8> = (0u8..=200).collect();
        let flat = base64::engine::general_purpose::STANDARD.encode(&der);
        assert_eq!(decode_body(flat.as_bytes()).unwrap(), der);
        assert_eq!(decode_body(format!("{flat}\n").as_bytes()).unwrap(), der);
        assert_eq!(decode_body(encode_body(&der).as_bytes()).unwrap(), der);
        let wrapped: Vec<&str> = flat.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        assert_eq!(decode_body(wrapped.join("\n").as_bytes()).unwrap(), der);
        assert_eq!(decode_body(wrapped.join("\r\n").as_bytes()).unwrap(), der);
        assert_eq!(decode_body(flat.trim_end_matches('=').as_bytes()).unwrap(), der);
    }

    #[test]
    fn csrattrs_for_rsa_name_sha256_with_rsa_and_the_size() {
        let d = csr_attrs(KeyType::Rsa(3072)).unwrap();
        let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        // sha256WithRSAEncryption, rsaEncryption, INTEGER 3072, serialNumber.
        assert!(has(&[6, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 0x0b]));
        assert!(has(&[6, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 1]));
        assert!(has(&[2, 2, 0x0c, 0x00]));
        assert!(has(&[6, 3, 0x55, 4, 5]));
        assert_eq!(KeyType::from_policy_name("rsa-2048").unwrap(), KeyType::Rsa(2048));
        assert_eq!(KeyType::from_policy_name("RSA3072").unwrap(), KeyType::Rsa(3072));
        for bad in ["rsa-1024", "rsa-4096", "rsa", "rsa-x"] {
            let e = KeyType::from_policy_name(bad).unwrap_err().to_string();
            assert!(e.contains("rsa-2048 or rsa-3072"), "{bad}: {e}");
        }
        assert!(KeyType::from_name("rsa-2048").is_err(), "we never make RSA keys");
    }

    #[test]
    fn refuses_garbage() {
        assert!(decode_body(b"not*base64!").is_err());
        assert!(decode_body(b"  \r\n").is_err());
        assert!(decode_body(&vec![b'A'; MAX_BODY + 1]).is_err());
    }

    #[test]
    fn answers_are_one_unbroken_line_a_strict_decoder_accepts() {
        let der: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        let s = encode_body(&der);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)), "no line breaks, no spaces");
        // What a strict client does (the est-ca crate: STANDARD over the body).
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).unwrap(), der);
    }

    #[test]
    fn csrattrs_is_der_sequence() {
        let d = csr_attrs(KeyType::EcdsaP256).unwrap();
        assert_eq!(d[0], 0x30);
    }
}
