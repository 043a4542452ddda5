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

/// Encode DER as base64 in lines of 64 characters, each ending CRLF.
pub fn encode_body(der: &[u8]) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(flat.len() + flat.len() / 32 + 2);
    for chunk in flat.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// The /csrattrs answer (RFC 7030 section 4.5.2): the signature algorithm we
/// want, the key type (id-ecPublicKey with its curve, or Ed25519), and that
/// the subject must carry serialNumber.
pub fn csr_attrs(key_type: KeyType) -> Result<Vec<u8>, Error> {
    #[derive(der::Sequence)]
    struct Attr {
        oid: ObjectIdentifier,
        values: der::asn1::SetOfVec<ObjectIdentifier>,
    }
    #[derive(der::Choice)]
    enum AttrOrOid {
        Oid(ObjectIdentifier),
        Attr(Attr),
    }
    let mut items = vec![AttrOrOid::Oid(key_type.signature_algorithm()?.oid)];
    match key_type {
        KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
            let curve = if key_type == KeyType::EcdsaP256 { rfc5912::SECP_256_R_1 } else { rfc5912::SECP_384_R_1 };
            let values = der::asn1::SetOfVec::try_from(vec![curve]).map_err(|e| Error::der("csrattrs", e))?;
            items.push(AttrOrOid::Attr(Attr { oid: rfc5912::ID_EC_PUBLIC_KEY, values }));
        }
        KeyType::Ed25519 | KeyType::Rsa(_) => {}
    }
    items.push(AttrOrOid::Oid(rfc4519::SERIAL_NUMBER));
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
        let lf = encode_body(&der).replace("\r\n", "\n");
        assert_eq!(decode_body(lf.as_bytes()).unwrap(), der);
        assert_eq!(decode_body(flat.trim_end_matches('=').as_bytes()).unwrap(), der);
    }

    #[test]
    fn refuses_garbage() {
        assert!(decode_body(b"not*base64!").is_err());
        assert!(decode_body(b"  \r\n").is_err());
        assert!(decode_body(&vec![b'A'; MAX_BODY + 1]).is_err());
    }

    #[test]
    fn lines_are_64_wide() {
        let s = encode_body(&[7u8; 300]);
        assert!(s.split("\r\n").all(|l| l.len() <= 64));
    }

    #[test]
    fn csrattrs_is_der_sequence() {
        let d = csr_attrs(KeyType::EcdsaP256).unwrap();
        assert_eq!(d[0], 0x30);
    }
}
