//! OCSP (RFC 6960): parse requests, answer with signed BasicOCSPResponses.
//!
//! The responder is a CA's delegated OCSP signer (profile `ocsp-signer`):
//! its certificate goes in the response, its key hash is the ResponderID.
//! A CertID may use SHA-1 (what most clients, openssl included, send) or
//! SHA-256; answers echo the CertID as asked.

use const_oid::db::rfc5912::{ID_SHA_1, ID_SHA_256};
use der::asn1::{BitString, GeneralizedTime, OctetString};
use der::{Decode, Encode};
use x509_cert::Certificate;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse, ResponderId, ResponseData,
    RevokedInfo, SingleResponse, Version,
};

use crate::keys::Signer;
use crate::Error;

/// Most CertIDs answered in one request.
pub const MAX_REQUESTS: usize = 20;

/// Largest request accepted.
pub const MAX_REQUEST_LEN: usize = 8 * 1024;

/// A certificate's status, as the store knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not revoked.
    Good,
    /// Revoked at `at` (Unix seconds) for RFC 5280 reason `reason`.
    Revoked {
        /// When.
        at: i64,
        /// Reason code.
        reason: u8,
    },
    /// Not issued by this CA, as far as we know.
    Unknown,
}

/// A parsed request: its CertIDs and its nonce extension, if any.
#[derive(Clone, Debug)]
pub struct Request {
    /// What is asked about.
    pub cert_ids: Vec<CertId>,
    /// The nonce extension, echoed in the answer.
    pub nonce: Option<x509_cert::ext::Extension>,
}

/// Parse a DER OCSPRequest (signed requests are accepted; their signature is not needed).
pub fn parse_request(der: &[u8]) -> Result<Request, Error> {
    if der.len() > MAX_REQUEST_LEN {
        return Err(Error::der("OCSP request", format!("{} bytes is over {MAX_REQUEST_LEN}", der.len())));
    }
    let req = OcspRequest::from_der(der).map_err(|e| Error::der("OCSP request", e))?;
    let n = req.tbs_request.request_list.len();
    if n == 0 || n > MAX_REQUESTS {
        return Err(Error::der("OCSP request", format!("{n} certificates asked about (1 to {MAX_REQUESTS})")));
    }
    let nonce = req
        .tbs_request
        .request_extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE)
        .cloned();
    Ok(Request { cert_ids: req.tbs_request.request_list.into_iter().map(|r| r.req_cert).collect(), nonce })
}

/// Whether `id` names a certificate issued by `issuer` (by name and key hash).
pub fn issued_by(id: &CertId, issuer: &Certificate) -> bool {
    let alg = if id.hash_algorithm.oid == ID_SHA_1 {
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY
    } else if id.hash_algorithm.oid == ID_SHA_256 {
        &aws_lc_rs::digest::SHA256
    } else {
        return false;
    };
    let Ok(name) = issuer.tbs_certificate.subject.to_der() else { return false };
    let key = issuer.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
    aws_lc_rs::digest::digest(alg, &name).as_ref() == id.issuer_name_hash.as_bytes()
        && aws_lc_rs::digest::digest(alg, key).as_ref() == id.issuer_key_hash.as_bytes()
}

/// An OCSPRequest (no nonce, unsigned) for one certificate issued by `issuer`,
/// with a SHA-256 CertID: what a client sends to learn one certificate's status.
pub fn request(cert_der: &[u8], issuer_der: &[u8]) -> Result<Vec<u8>, Error> {
    let cert = Certificate::from_der(cert_der).map_err(|e| Error::der("certificate", e))?;
    let issuer = Certificate::from_der(issuer_der).map_err(|e| Error::der("issuer certificate", e))?;
    let name = issuer.tbs_certificate.subject.to_der().map_err(|e| Error::der("issuer name", e))?;
    let key = issuer.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
    let hash = |b: &[u8]| {
        OctetString::new(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref().to_vec())
            .map_err(|e| Error::der("CertID hash", e))
    };
    let req_cert = CertId {
        hash_algorithm: spki::AlgorithmIdentifierOwned { oid: ID_SHA_256, parameters: None },
        issuer_name_hash: hash(&name)?,
        issuer_key_hash: hash(key)?,
        serial_number: cert.tbs_certificate.serial_number.clone(),
    };
    let req = OcspRequest {
        tbs_request: x509_ocsp::TbsRequest {
            version: Version::V1,
            requestor_name: None,
            request_list: vec![x509_ocsp::Request { req_cert, single_request_extensions: None }],
            request_extensions: None,
        },
        optional_signature: None,
    };
    req.to_der().map_err(|e| Error::der("OCSP request", e))
}

fn gt(unix: i64) -> Result<OcspGeneralizedTime, Error> {
    let secs = u64::try_from(unix).map_err(|_| Error::Profile(format!("time {unix}")))?;
    GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .map(OcspGeneralizedTime)
        .map_err(|e| Error::Profile(format!("time {unix}: {e}")))
}

/// A successful response: every `(CertID, status)` answered, valid from
/// `now` to `next_update`, signed by the responder (`signer`, whose
/// certificate is `signer_cert`), the request's nonce echoed.
pub fn respond(
    signer: &dyn Signer,
    signer_cert: &[u8],
    now: i64,
    next_update: i64,
    answers: &[(CertId, Status)],
    nonce: Option<x509_cert::ext::Extension>,
) -> Result<Vec<u8>, Error> {
    let cert = Certificate::from_der(signer_cert).map_err(|e| Error::der("OCSP signer certificate", e))?;
    let key = cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
    let key_hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut responses = Vec::with_capacity(answers.len());
    for (id, status) in answers {
        let cert_status = match status {
            Status::Good => CertStatus::good(),
            Status::Unknown => CertStatus::unknown(),
            Status::Revoked { at, reason } => {
                CertStatus::revoked(RevokedInfo { revocation_time: gt(*at)?, revocation_reason: crl_reason(*reason) })
            }
        };
        responses.push(SingleResponse {
            cert_id: id.clone(),
            cert_status,
            this_update: gt(now)?,
            next_update: Some(gt(next_update)?),
            single_extensions: None,
        });
    }
    let data = ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(OctetString::new(key_hash.as_ref()).map_err(|e| Error::der("key hash", e))?),
        produced_at: gt(now)?,
        responses,
        response_extensions: nonce.map(|n| vec![n]),
    };
    let tbs = data.to_der().map_err(|e| Error::der("OCSP ResponseData", e))?;
    let sig = signer.sign(&tbs)?;
    let basic = BasicOcspResponse {
        tbs_response_data: data,
        signature_algorithm: signer.key_type().signature_algorithm()?,
        signature: BitString::from_bytes(&sig).map_err(|e| Error::der("OCSP signature", e))?,
        certs: Some(vec![cert]),
    };
    OcspResponse::successful(basic).and_then(|r| r.to_der()).map_err(|e| Error::der("OCSP response", e))
}

fn crl_reason(code: u8) -> Option<x509_cert::ext::pkix::CrlReason> {
    use x509_cert::ext::pkix::CrlReason as R;
    Some(match code {
        0 => R::Unspecified,
        1 => R::KeyCompromise,
        2 => R::CaCompromise,
        3 => R::AffiliationChanged,
        4 => R::Superseded,
        5 => R::CessationOfOperation,
        6 => R::CertificateHold,
        8 => R::RemoveFromCRL,
        9 => R::PrivilegeWithdrawn,
        10 => R::AaCompromise,
        _ => return None,
    })
}

/// The answer to a request we cannot parse.
pub fn malformed() -> Vec<u8> {
    OcspResponse::malformed_request().to_der().unwrap_or_default()
}

/// The answer to a request about a CA we are not the responder for.
pub fn unauthorized() -> Vec<u8> {
    OcspResponse { response_status: x509_ocsp::OcspResponseStatus::Unauthorized, response_bytes: None }
        .to_der()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{key_identifier, KeyType, SoftKey};
    use crate::name::NameBuilder;
    use crate::profile::{issue, CertParams, Issuer, Profile};

    fn cert(profile: Profile, cn: &str, key: &SoftKey, issuer: &Issuer<'_>) -> Vec<u8> {
        let p = CertParams {
            profile,
            serial: crate::serial::system_random_serial(1_000).unwrap().0,
            subject: NameBuilder::default().common_name(cn).unwrap().build(),
            spki: spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der()).unwrap(),
            not_before: 1_000,
            not_after: 9_000_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        issue(&p, issuer).unwrap().der
    }

    #[test]
    fn a_built_request_names_the_certificate_and_only_its_issuer() {
        let (ca_key, other_key, leaf_key) = (
            SoftKey::generate(KeyType::EcdsaP256).unwrap(),
            SoftKey::generate(KeyType::EcdsaP256).unwrap(),
            SoftKey::generate(KeyType::EcdsaP256).unwrap(),
        );
        let spki_of = |k: &SoftKey| spki::SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap();
        let ca_name = NameBuilder::default().common_name("CA").unwrap().build();
        let kid = key_identifier(&spki_of(&ca_key));
        let issuer = Issuer { subject: &ca_name, key_id: &kid, not_after: 9_000_000_000, signer: &ca_key };
        let ca = cert(Profile::Root, "CA", &ca_key, &issuer);
        let leaf = cert(Profile::Device, "dev-1", &leaf_key, &issuer);
        // Same name, another key: not the issuer.
        let other_kid = key_identifier(&spki_of(&other_key));
        let other_issuer =
            Issuer { subject: &ca_name, key_id: &other_kid, not_after: 9_000_000_000, signer: &other_key };
        let other = cert(Profile::Root, "CA", &other_key, &other_issuer);

        let der = request(&leaf, &ca).unwrap();
        let req = parse_request(&der).unwrap();
        assert_eq!(req.cert_ids.len(), 1);
        assert!(req.nonce.is_none());
        let leaf_cert = Certificate::from_der(&leaf).unwrap();
        assert_eq!(req.cert_ids[0].serial_number, leaf_cert.tbs_certificate.serial_number);
        assert!(issued_by(&req.cert_ids[0], &Certificate::from_der(&ca).unwrap()));
        assert!(!issued_by(&req.cert_ids[0], &Certificate::from_der(&other).unwrap()));
        assert!(request(b"not a certificate", &ca).is_err());
    }
}
