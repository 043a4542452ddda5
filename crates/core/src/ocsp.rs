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
        &crate::backend::digest::SHA1_FOR_LEGACY_USE_ONLY
    } else if id.hash_algorithm.oid == ID_SHA_256 {
        &crate::backend::digest::SHA256
    } else {
        return false;
    };
    let Ok(name) = issuer.tbs_certificate.subject.to_der() else { return false };
    let key = issuer.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
    crate::backend::digest::digest(alg, &name).as_ref() == id.issuer_name_hash.as_bytes()
        && crate::backend::digest::digest(alg, key).as_ref() == id.issuer_key_hash.as_bytes()
}

/// An OCSPRequest (no nonce, unsigned) for one certificate issued by `issuer`,
/// with a SHA-256 CertID: what a client sends to learn one certificate's status.
pub fn request(cert_der: &[u8], issuer_der: &[u8]) -> Result<Vec<u8>, Error> {
    build_request(cert_der, issuer_der, None)
}

/// As [`request`], with a nonce extension (RFC 8954, 1 to 32 octets) that the
/// answer must echo ([`verify_response`]): an answer recorded earlier cannot be replayed.
pub fn request_with_nonce(cert_der: &[u8], issuer_der: &[u8], nonce: &[u8]) -> Result<Vec<u8>, Error> {
    build_request(cert_der, issuer_der, Some(nonce_extension(nonce)?))
}

fn nonce_extension(nonce: &[u8]) -> Result<x509_cert::ext::Extension, Error> {
    if nonce.is_empty() || nonce.len() > 32 {
        return Err(Error::der("OCSP nonce", format!("{} octets (1 to 32)", nonce.len())));
    }
    let inner = OctetString::new(nonce).and_then(|o| o.to_der()).map_err(|e| Error::der("OCSP nonce", e))?;
    Ok(x509_cert::ext::Extension {
        extn_id: const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE,
        critical: false,
        extn_value: OctetString::new(inner).map_err(|e| Error::der("OCSP nonce", e))?,
    })
}

fn build_request(
    cert_der: &[u8],
    issuer_der: &[u8],
    nonce: Option<x509_cert::ext::Extension>,
) -> Result<Vec<u8>, Error> {
    let cert = Certificate::from_der(cert_der).map_err(|e| Error::der("certificate", e))?;
    let issuer = Certificate::from_der(issuer_der).map_err(|e| Error::der("issuer certificate", e))?;
    let name = issuer.tbs_certificate.subject.to_der().map_err(|e| Error::der("issuer name", e))?;
    let key = issuer.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
    let hash = |b: &[u8]| {
        OctetString::new(crate::backend::digest::digest(&crate::backend::digest::SHA256, b).as_ref().to_vec())
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
            request_extensions: nonce.map(|n| vec![n]),
        },
        optional_signature: None,
    };
    req.to_der().map_err(|e| Error::der("OCSP request", e))
}

/// Largest OCSP response a client reads.
pub const MAX_RESPONSE_LEN: usize = 64 * 1024;
/// Most certificates in a response a client looks at for its responder.
const MAX_RESPONSE_CERTS: usize = 4;

/// What a verified OCSP response says about one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The status.
    pub status: Status,
    /// When the responder knew it to be so (thisUpdate), Unix seconds.
    pub this_update: i64,
    /// Until when the answer may be used (nextUpdate), Unix seconds.
    pub next_update: i64,
    /// Who signed: the issuing CA itself or its delegated OCSP signer (subject).
    pub responder: String,
}

/// Why an OCSP response was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseError {
    /// Not an OCSP response, or not a basic one, or too large.
    Malformed(String),
    /// The responder answered with an error status (malformedRequest, unauthorized, ...).
    NotSuccessful(String),
    /// Not signed by the issuer, nor by an OCSP signer the issuer certified and that is valid now.
    Responder(String),
    /// The signature does not verify with the responder's key.
    BadSignature,
    /// The nonce sent is not in the answer, or another one is: a replayed or made-up answer.
    Nonce(String),
    /// The answer says nothing about the certificate asked about.
    NoAnswer,
    /// thisUpdate is later than now (beyond the allowed clock skew).
    NotYetValid {
        /// Its thisUpdate.
        this_update: i64,
        /// The time it was checked at.
        now: i64,
    },
    /// nextUpdate has passed (or is absent): the answer is stale.
    Stale {
        /// Its nextUpdate, if any.
        next_update: Option<i64>,
        /// The time it was checked at.
        now: i64,
    },
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = |s: &i64| crate::time::rfc3339(*s);
        match self {
            Self::Malformed(d) => write!(f, "malformed OCSP response: {d}"),
            Self::NotSuccessful(s) => write!(f, "the OCSP responder answered {s}"),
            Self::Responder(d) => write!(f, "the OCSP response is not signed by a responder for this issuer: {d}"),
            Self::BadSignature => f.write_str("the OCSP response's signature does not verify (altered or forged)"),
            Self::Nonce(d) => write!(f, "the OCSP response's nonce does not match the request: {d}"),
            Self::NoAnswer => f.write_str("the OCSP response says nothing about this certificate"),
            Self::NotYetValid { this_update, now } => write!(
                f,
                "the OCSP response is from the future (thisUpdate {}, now {}); check the clocks",
                t(this_update),
                t(now)
            ),
            Self::Stale { next_update: Some(n), now } => {
                write!(f, "the OCSP response is stale (nextUpdate {}, now {})", t(n), t(now))
            }
            Self::Stale { next_update: None, .. } => f.write_str("the OCSP response has no nextUpdate"),
        }
    }
}

impl std::error::Error for ResponseError {}

fn unix(t: &OcspGeneralizedTime) -> i64 {
    i64::try_from(t.0.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

fn extended_key_usage_has(cert: &Certificate, oid: const_oid::ObjectIdentifier) -> bool {
    use x509_cert::ext::pkix::ExtendedKeyUsage;
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_EXT_KEY_USAGE)
        .filter_map(|e| ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok())
        .any(|eku| eku.0.contains(&oid))
}

/// Whether `cert` was signed by `issuer`'s key.
fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    let (Ok(tbs), Some(sig)) = (cert.tbs_certificate.to_der(), cert.signature.as_bytes()) else { return false };
    cert.tbs_certificate.issuer == issuer.tbs_certificate.subject
        && crate::keys::verify(&issuer.tbs_certificate.subject_public_key_info, &cert.signature_algorithm, &tbs, sig)
            .is_ok()
}

/// Verify an OCSP response about `cert_der` (issued by `issuer_der`) at `now`:
/// what a client does before believing it (RFC 6960 section 3.2).
///
/// 1. it is a successful basic response of at most [`MAX_RESPONSE_LEN`] octets;
/// 2. its signer is the one the ResponderID names: the issuer itself, or a
///    certificate in the response that the issuer signed, with extendedKeyUsage
///    id-kp-OCSPSigning, valid at `now` (± `skew`) (else [`ResponseError::Responder`]);
/// 3. the signature over the ResponseData verifies with that key ([`ResponseError::BadSignature`]);
/// 4. with `nonce` (the one sent with [`request_with_nonce`]), the answer carries
///    exactly that nonce ([`ResponseError::Nonce`]);
/// 5. one of its SingleResponses names this certificate (issuer name and key
///    hash, serial) ([`ResponseError::NoAnswer`]);
/// 6. thisUpdate <= now + skew ([`ResponseError::NotYetValid`]) and now < nextUpdate
///    ([`ResponseError::Stale`]; an answer without nextUpdate is refused too).
pub fn verify_response(
    response_der: &[u8],
    cert_der: &[u8],
    issuer_der: &[u8],
    nonce: Option<&[u8]>,
    now: i64,
    skew: i64,
) -> Result<Checked, ResponseError> {
    let m = |what: &str, e: &dyn std::fmt::Display| ResponseError::Malformed(format!("{what}: {e}"));
    if response_der.len() > MAX_RESPONSE_LEN {
        return Err(ResponseError::Malformed(format!("{} octets, at most {MAX_RESPONSE_LEN}", response_der.len())));
    }
    let cert = Certificate::from_der(cert_der).map_err(|e| m("certificate", &e))?;
    let issuer = Certificate::from_der(issuer_der).map_err(|e| m("issuer certificate", &e))?;
    let resp = OcspResponse::from_der(response_der).map_err(|e| m("OCSPResponse", &e))?;
    if resp.response_status != x509_ocsp::OcspResponseStatus::Successful {
        return Err(ResponseError::NotSuccessful(format!("{:?}", resp.response_status)));
    }
    let bytes = resp.response_bytes.ok_or_else(|| ResponseError::Malformed("no responseBytes".into()))?;
    if bytes.response_type != const_oid::db::rfc6960::ID_PKIX_OCSP_BASIC {
        return Err(ResponseError::Malformed(format!(
            "response type {} is not id-pkix-ocsp-basic",
            bytes.response_type
        )));
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).map_err(|e| m("BasicOCSPResponse", &e))?;
    let data = &basic.tbs_response_data;
    let names = |c: &Certificate| match &data.responder_id {
        ResponderId::ByName(n) => *n == c.tbs_certificate.subject,
        ResponderId::ByKey(h) => {
            let key = c.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
            crate::backend::digest::digest(&crate::backend::digest::SHA1_FOR_LEGACY_USE_ONLY, key).as_ref()
                == h.as_bytes()
        }
    };
    let certs = basic.certs.as_deref().unwrap_or_default();
    if certs.len() > MAX_RESPONSE_CERTS {
        return Err(ResponseError::Malformed(format!("{} certificates, at most {MAX_RESPONSE_CERTS}", certs.len())));
    }
    let responder = if names(&issuer) {
        issuer.clone()
    } else {
        let c = certs.iter().find(|c| names(c)).ok_or_else(|| {
            ResponseError::Responder(
                "the ResponderID names neither the issuer nor a certificate in the response".into(),
            )
        })?;
        if !signed_by(c, &issuer) {
            return Err(ResponseError::Responder(format!(
                "{} is not certified by the issuer {}",
                c.tbs_certificate.subject, issuer.tbs_certificate.subject
            )));
        }
        if !extended_key_usage_has(c, const_oid::db::rfc5280::ID_KP_OCSP_SIGNING) {
            return Err(ResponseError::Responder(format!(
                "{} is not an OCSP signer (no id-kp-OCSPSigning)",
                c.tbs_certificate.subject
            )));
        }
        let v = &c.tbs_certificate.validity;
        let (nb, na) = (v.not_before.to_unix_duration().as_secs(), v.not_after.to_unix_duration().as_secs());
        let (nb, na) = (i64::try_from(nb).unwrap_or(i64::MAX), i64::try_from(na).unwrap_or(i64::MAX));
        if now.saturating_add(skew) < nb || now > na {
            return Err(ResponseError::Responder(format!(
                "the OCSP signer {} is not valid now",
                c.tbs_certificate.subject
            )));
        }
        c.clone()
    };
    let tbs = data.to_der().map_err(|e| m("ResponseData", &e))?;
    let sig = basic.signature.as_bytes().ok_or(ResponseError::BadSignature)?;
    crate::keys::verify(&responder.tbs_certificate.subject_public_key_info, &basic.signature_algorithm, &tbs, sig)
        .map_err(|_| ResponseError::BadSignature)?;
    if let Some(n) = nonce {
        let want = nonce_extension(n).map_err(|e| ResponseError::Nonce(e.to_string()))?;
        let got =
            data.response_extensions.iter().flatten().find(|e| e.extn_id == const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE);
        match got {
            None => return Err(ResponseError::Nonce("the answer carries no nonce (a replayed answer?)".into())),
            Some(e) if e.extn_value != want.extn_value => {
                return Err(ResponseError::Nonce("the answer carries another nonce (a replayed answer?)".into()))
            }
            Some(_) => {}
        }
    }
    let single = data
        .responses
        .iter()
        .find(|r| r.cert_id.serial_number == cert.tbs_certificate.serial_number && issued_by(&r.cert_id, &issuer))
        .ok_or(ResponseError::NoAnswer)?;
    let this_update = unix(&single.this_update);
    if this_update > now.saturating_add(skew) {
        return Err(ResponseError::NotYetValid { this_update, now });
    }
    let next_update = single.next_update.as_ref().map(unix);
    let next_update = match next_update {
        Some(n) if now < n => n,
        _ => return Err(ResponseError::Stale { next_update, now }),
    };
    let status = match &single.cert_status {
        CertStatus::Good(_) => Status::Good,
        CertStatus::Unknown(_) => Status::Unknown,
        CertStatus::Revoked(r) => {
            Status::Revoked { at: unix(&r.revocation_time), reason: r.revocation_reason.map(|c| c as u8).unwrap_or(0) }
        }
    };
    Ok(Checked { status, this_update, next_update, responder: responder.tbs_certificate.subject.to_string() })
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
    let key_hash = crate::backend::digest::digest(&crate::backend::digest::SHA1_FOR_LEGACY_USE_ONLY, key);
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

    struct Pki {
        ca_key: SoftKey,
        ca: Vec<u8>,
        leaf: Vec<u8>,
        signer_key: SoftKey,
        signer: Vec<u8>,
    }

    fn pki() -> Pki {
        pki_with(KeyType::EcdsaP256, KeyType::EcdsaP256, KeyType::EcdsaP256)
    }

    fn pki_with(ca: KeyType, leaf: KeyType, responder: KeyType) -> Pki {
        let ca_key = SoftKey::generate(ca).unwrap();
        let ca_spki = spki::SubjectPublicKeyInfoOwned::from_der(ca_key.public_key_der()).unwrap();
        let ca_name = NameBuilder::default().common_name("CA").unwrap().build();
        let kid = key_identifier(&ca_spki);
        let issuer = Issuer { subject: &ca_name, key_id: &kid, not_after: 9_000_000_000, signer: &ca_key };
        let ca = cert(Profile::Root, "CA", &ca_key, &issuer);
        let leaf = cert(Profile::Device, "dev-1", &SoftKey::generate(leaf).unwrap(), &issuer);
        let signer_key = SoftKey::generate(responder).unwrap();
        let signer = cert(Profile::OcspSigner, "CA OCSP", &signer_key, &issuer);
        Pki { ca_key, ca, leaf, signer_key, signer }
    }

    const T: i64 = 1_750_000_000;

    fn answer(p: &Pki, signer: (&dyn Signer, &[u8]), status: Status, req: &[u8], at: i64) -> Vec<u8> {
        let r = parse_request(req).unwrap();
        let answers: Vec<_> = r.cert_ids.into_iter().map(|id| (id, status)).collect();
        let _ = p;
        respond(signer.0, signer.1, at, at + 3600, &answers, r.nonce).unwrap()
    }

    #[test]
    fn a_client_verifies_good_and_revoked_answers_with_its_nonce() {
        let p = pki();
        let nonce = [7u8; 16];
        let req = request_with_nonce(&p.leaf, &p.ca, &nonce).unwrap();
        assert!(parse_request(&req).unwrap().nonce.is_some());
        let good = answer(&p, (&p.signer_key, &p.signer), Status::Good, &req, T);
        let c = verify_response(&good, &p.leaf, &p.ca, Some(&nonce), T + 10, 300).unwrap();
        assert_eq!((c.status, c.this_update, c.next_update), (Status::Good, T, T + 3600));
        assert!(c.responder.contains("CA OCSP"), "{}", c.responder);
        let revoked = Status::Revoked { at: T - 5, reason: 1 };
        let r = answer(&p, (&p.signer_key, &p.signer), revoked, &req, T);
        assert_eq!(verify_response(&r, &p.leaf, &p.ca, Some(&nonce), T, 300).unwrap().status, revoked);
        // Signed by the CA itself: accepted too (RFC 6960 4.2.2.2).
        let by_ca = answer(&p, (&p.ca_key, &p.ca), Status::Good, &req, T);
        assert_eq!(verify_response(&by_ca, &p.leaf, &p.ca, Some(&nonce), T, 300).unwrap().status, Status::Good);
    }

    /// ML-DSA CAs, responders and devices, mixed with P-256: every answer
    /// verifies, and a flipped signature octet is caught.
    #[cfg(feature = "aws-lc")]
    #[test]
    fn ml_dsa_and_p256_mixed_answers_verify() {
        let (e, m44, m65) = (KeyType::EcdsaP256, KeyType::MlDsa44, KeyType::MlDsa65);
        for (ca, leaf, responder) in [(m65, e, m65), (e, m44, m44), (m65, m44, e), (KeyType::MlDsa87, m65, m65)] {
            let p = pki_with(ca, leaf, responder);
            let nonce = [9u8; 16];
            let req = request_with_nonce(&p.leaf, &p.ca, &nonce).unwrap();
            for signer in [(&p.signer_key as &dyn Signer, p.signer.as_slice()), (&p.ca_key, p.ca.as_slice())] {
                let good = answer(&p, signer, Status::Good, &req, T);
                let c = verify_response(&good, &p.leaf, &p.ca, Some(&nonce), T, 300).unwrap();
                assert_eq!(c.status, Status::Good, "{ca}/{leaf}/{responder}");
                // Flip one octet inside the response's own signature (the certificates follow it).
                let resp = OcspResponse::from_der(&good).unwrap();
                let basic = BasicOcspResponse::from_der(resp.response_bytes.unwrap().response.as_bytes()).unwrap();
                let sig = basic.signature.raw_bytes();
                let at = good.windows(sig.len()).position(|w| w == sig).unwrap() + sig.len() / 2;
                let mut bad = good.clone();
                bad[at] ^= 1;
                let r = verify_response(&bad, &p.leaf, &p.ca, Some(&nonce), T, 300);
                assert!(matches!(r, Err(ResponseError::BadSignature)), "{ca}/{leaf}/{responder}: {r:?}");
            }
        }
    }

    #[test]
    fn a_client_refuses_replayed_forged_stale_or_foreign_answers() {
        let p = pki();
        let nonce = [7u8; 16];
        let req = request_with_nonce(&p.leaf, &p.ca, &nonce).unwrap();
        let good = answer(&p, (&p.signer_key, &p.signer), Status::Good, &req, T);
        // Another nonce (a replay of an answer to another request), or none at all.
        let err = verify_response(&good, &p.leaf, &p.ca, Some(&[8u8; 16]), T, 300).unwrap_err();
        assert!(matches!(err, ResponseError::Nonce(_)), "{err}");
        let plain = answer(&p, (&p.signer_key, &p.signer), Status::Good, &request(&p.leaf, &p.ca).unwrap(), T);
        let err = verify_response(&plain, &p.leaf, &p.ca, Some(&nonce), T, 300).unwrap_err();
        assert!(matches!(&err, ResponseError::Nonce(d) if d.contains("no nonce")), "{err}");
        // Any octet of the answer changed: refused (never panics).
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(verify_response(&bad, &p.leaf, &p.ca, Some(&nonce), T, 300).is_err(), "octet {i}");
        }
        // Stale, from the future.
        let err = verify_response(&good, &p.leaf, &p.ca, Some(&nonce), T + 3600, 300).unwrap_err();
        assert_eq!(err, ResponseError::Stale { next_update: Some(T + 3600), now: T + 3600 });
        let err = verify_response(&good, &p.leaf, &p.ca, Some(&nonce), T - 301, 300).unwrap_err();
        assert!(matches!(err, ResponseError::NotYetValid { .. }), "{err}");
        // A responder the issuer did not certify (another CA's OCSP signer, or a self-made one).
        let q = pki();
        let foreign = answer(&p, (&q.signer_key, &q.signer), Status::Good, &req, T);
        let err = verify_response(&foreign, &p.leaf, &p.ca, Some(&nonce), T, 300).unwrap_err();
        assert!(matches!(&err, ResponseError::Responder(d) if d.contains("not certified")), "{err}");
        // A certificate the issuer made that is not an OCSP signer (the device's own, say).
        let leaf_key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let ca_spki = spki::SubjectPublicKeyInfoOwned::from_der(p.ca_key.public_key_der()).unwrap();
        let ca_name = NameBuilder::default().common_name("CA").unwrap().build();
        let kid = key_identifier(&ca_spki);
        let issuer = Issuer { subject: &ca_name, key_id: &kid, not_after: 9_000_000_000, signer: &p.ca_key };
        let not_signer = cert(Profile::Device, "dev-2", &leaf_key, &issuer);
        let r = answer(&p, (&leaf_key, &not_signer), Status::Good, &req, T);
        let err = verify_response(&r, &p.leaf, &p.ca, Some(&nonce), T, 300).unwrap_err();
        assert!(matches!(&err, ResponseError::Responder(d) if d.contains("not an OCSP signer")), "{err}");
        // An answer about another certificate.
        let other = request_with_nonce(&q.leaf, &q.ca, &nonce).unwrap();
        let r = answer(&q, (&q.signer_key, &q.signer), Status::Good, &other, T);
        assert!(verify_response(&r, &p.leaf, &p.ca, Some(&nonce), T, 300).is_err());
        // Error statuses and junk.
        let err = verify_response(&unauthorized(), &p.leaf, &p.ca, None, T, 300).unwrap_err();
        assert!(matches!(err, ResponseError::NotSuccessful(_)), "{err}");
        assert!(matches!(verify_response(b"junk", &p.leaf, &p.ca, None, T, 300), Err(ResponseError::Malformed(_))));
    }
}
