//! The device asks about its own certificate: an OCSP client (RFC 6960).
//!
//! The responder is the one the certificate names (authorityInfoAccess,
//! id-ad-ocsp), asked over plain HTTP like the CRLs: the answer is signed, the
//! transport need not be. Each request carries a fresh 16-octet nonce, and an
//! answer is believed only if [`iotpki_core::ocsp::verify_response`] accepts
//! it: signed by the issuing CA or by an OCSP signer that CA certified (and valid
//! now), for this certificate, with this nonce, thisUpdate not in the future
//! and nextUpdate not passed. Anything else is an error, never a status.
//!
//! `iotpki agent ocsp` reports the status; `iotpki agent run` asks every round
//! (see [`crate::daemon`] for what it does on `revoked`).

use std::path::Path;

use iotpki_core::ocsp::{self, Checked, Status};
use iotpki_core::pem;

use crate::clock::now;
use crate::{state, AgentError};

/// Allowed clock difference for thisUpdate and the signer's validity.
const SKEW: i64 = 300;

/// The answer about the device's current certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcspReport {
    /// The certificate's serial (hex).
    pub cert_serial: String,
    /// Whether it is the birth certificate (never commissioned yet).
    pub is_birth: bool,
    /// The responder asked.
    pub url: String,
    /// What it said, verified.
    pub checked: Checked,
}

impl OcspReport {
    /// One line for people: the status, the reason when revoked, and the answer's validity.
    pub fn describe(&self) -> String {
        let t = iotpki_core::time::rfc3339;
        let what = match self.checked.status {
            Status::Good => "good".to_string(),
            Status::Unknown => "unknown to the responder".to_string(),
            Status::Revoked { at, reason } => format!("REVOKED at {} ({})", t(at), reason_name(reason)),
        };
        format!(
            "certificate {} is {what} (OCSP {}, signed by {}, thisUpdate {}, nextUpdate {})",
            self.cert_serial,
            self.url,
            self.checked.responder,
            t(self.checked.this_update),
            t(self.checked.next_update)
        )
    }
}

/// The RFC 5280 name of a CRL reason code.
pub fn reason_name(code: u8) -> &'static str {
    match code {
        0 => "unspecified",
        1 => "keyCompromise",
        2 => "cACompromise",
        3 => "affiliationChanged",
        4 => "superseded",
        5 => "cessationOfOperation",
        6 => "certificateHold",
        8 => "removeFromCRL",
        9 => "privilegeWithdrawn",
        10 => "aACompromise",
        _ => "unknown reason",
    }
}

/// The OCSP responder URLs a certificate names (authorityInfoAccess, id-ad-ocsp).
pub fn responder_urls(cert_der: &[u8]) -> Vec<String> {
    use der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::AuthorityInfoAccessSyntax;
    let aia = der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.1");
    let ad_ocsp = der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1");
    let Ok(c) = x509_cert::Certificate::from_der(cert_der) else { return Vec::new() };
    let mut out = Vec::new();
    for e in c.tbs_certificate.extensions.iter().flatten().filter(|e| e.extn_id == aia) {
        let Ok(list) = AuthorityInfoAccessSyntax::from_der(e.extn_value.as_bytes()) else { continue };
        for ad in list.0 {
            if let (true, GeneralName::UniformResourceIdentifier(u)) = (ad.access_method == ad_ocsp, ad.access_location)
            {
                out.push(u.to_string());
            }
        }
    }
    out
}

/// Ask the OCSP responder about the device's current certificate (`url`
/// instead of the one it names, if given). `Ok(None)`: the certificate names
/// no responder and no `url` was given.
pub async fn check_own(dir: &Path, url: Option<&str>) -> Result<Option<OcspReport>, AgentError> {
    let id = state::load(dir)?;
    let cert = pem::decode_one("CERTIFICATE", &id.cert_pem).map_err(|e| AgentError::State(e.to_string()))?;
    let is_birth = id.birth.as_ref().is_some_and(|b| b.cert_pem == id.cert_pem);
    let chain_pem = match (&id.birth, is_birth) {
        (Some(b), true) => b.chain_pem.clone(),
        _ => id.chain_pem.clone(),
    };
    let info = iotpki_core::profile::cert_info(&cert)?;
    let issuer = pem::decode_all("CERTIFICATE", &chain_pem)
        .map_err(|e| AgentError::State(e.to_string()))?
        .into_iter()
        .find(|c| {
            iotpki_core::profile::cert_info(c)
                .is_ok_and(|i| i.cert.tbs_certificate.subject == info.cert.tbs_certificate.issuer)
        })
        .ok_or_else(|| AgentError::State("the stored chain holds no issuer of the certificate".into()))?;
    let Some(url) = url.map(str::to_string).or_else(|| responder_urls(&cert).into_iter().next()) else {
        return Ok(None);
    };
    let mut nonce = [0u8; 16];
    crate::fill_random(&mut nonce).map_err(|_| AgentError::State("no randomness for the OCSP nonce".into()))?;
    let req = ocsp::request_with_nonce(&cert, &issuer, &nonce)?;
    let anchors = crate::flow::trusted_roots(
        dir,
        &pem::decode_one("CERTIFICATE", &id.anchor_pem).map_err(|e| AgentError::State(e.to_string()))?,
    )?;
    let (status, body) =
        crate::trust::exchange("POST", &url, Some("application/ocsp-request"), req, &anchors, ocsp::MAX_RESPONSE_LEN)
            .await?;
    if status != 200 {
        return Err(AgentError::Refused {
            status,
            reason: String::from_utf8_lossy(&body).lines().next().unwrap_or_default().into(),
        });
    }
    let checked = ocsp::verify_response(&body, &cert, &issuer, Some(&nonce), now(), SKEW)
        .map_err(|e| AgentError::Untrusted(format!("OCSP answer from {url} refused: {e}")))?;
    Ok(Some(OcspReport { cert_serial: info.serial, is_birth, url, checked }))
}
