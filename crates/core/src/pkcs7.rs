//! PKCS#7 / CMS "certs-only" messages (RFC 5652 SignedData with no signers),
//! the container EST uses for certificates (RFC 7030 section 4.1.3).

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use const_oid::db::rfc5911::{ID_DATA, ID_SIGNED_DATA};
use der::{Decode, Encode};

use crate::Error;

/// A certs-only ContentInfo carrying `certs` (each DER), encoded by hand so
/// the certificates are copied, not re-parsed. DER sorts SET OF elements.
pub fn certs_only(certs: &[&[u8]]) -> Result<Vec<u8>, Error> {
    let mut sorted: Vec<&[u8]> = certs.to_vec();
    sorted.sort();
    sorted.dedup();
    let cert_set = tlv(0xa0, &sorted.concat()); // [0] IMPLICIT CertificateSet
    let mut sd = Vec::new();
    sd.extend(tlv(0x02, &[1])); // version 1
    sd.extend(tlv(0x31, &[])); // digestAlgorithms: empty SET
    sd.extend(tlv(0x30, &tlv(0x06, ID_DATA.as_bytes()))); // encapContentInfo: id-data, no content
    sd.extend(cert_set);
    sd.extend(tlv(0x31, &[])); // signerInfos: empty SET
    let mut ci = tlv(0x06, ID_SIGNED_DATA.as_bytes());
    ci.extend(tlv(0xa0, &tlv(0x30, &sd)));
    Ok(tlv(0x30, &ci))
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let be = n.to_be_bytes();
        let skip = be.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (be.len() - skip) as u8);
        out.extend_from_slice(&be[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The certificates (DER) of a PKCS#7 certs-only message.
pub fn parse_certs_only(der: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let ci = ContentInfo::from_der(der).map_err(|e| Error::der("PKCS#7 ContentInfo", e))?;
    if ci.content_type != ID_SIGNED_DATA {
        return Err(Error::der("PKCS#7 ContentInfo", format!("content type {} is not signedData", ci.content_type)));
    }
    let sd: SignedData = ci.content.decode_as().map_err(|e| Error::der("PKCS#7 SignedData", e))?;
    let mut out = Vec::new();
    for choice in sd.certificates.map(|c| c.0.into_vec()).unwrap_or_default() {
        if let CertificateChoices::Certificate(c) = choice {
            out.push(c.to_der().map_err(|e| Error::der("certificate", e))?);
        }
    }
    if out.is_empty() {
        return Err(Error::der("PKCS#7 SignedData", "no certificates"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyType, SoftKey};
    use crate::name::NameBuilder;
    use crate::profile::{issue, CertParams, Issuer, Profile};

    fn cert(cn: &str) -> Vec<u8> {
        let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(crate::keys::Signer::public_key_der(&k)).unwrap();
        let n = NameBuilder::default().common_name(cn).unwrap().build();
        let kid = crate::keys::key_identifier(&spki);
        let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: &k };
        let p = CertParams {
            profile: Profile::Root,
            serial: crate::serial::system_random_serial(1_800_000_000).unwrap().0,
            subject: n.clone(),
            spki,
            not_before: 1_700_000_000,
            not_after: 2_000_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        issue(&p, &issuer).unwrap().der
    }

    #[test]
    fn round_trip_and_decodes_with_cms() {
        let (a, b) = (cert("a"), cert("b"));
        let p7 = certs_only(&[&a, &b]).unwrap();
        let mut got = parse_certs_only(&p7).unwrap();
        got.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(got, want);
        // And the structure re-encodes identically through the cms crate (it is DER).
        let ci = ContentInfo::from_der(&p7).unwrap();
        assert_eq!(ci.to_der().unwrap(), p7);
    }

    #[test]
    fn refuses_non_signed_data() {
        assert!(parse_certs_only(&tlv(0x30, &tlv(0x06, ID_DATA.as_bytes()))).is_err());
        assert!(parse_certs_only(b"junk").is_err());
    }
}
