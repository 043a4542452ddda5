//! The EST-coaps resources (RFC 9148 §4): what a whole CoAP request asks of
//! the authority, and its answer as CoAP. The authority's refusals are the
//! HTTPS server's ([`crate::http::ApiError`]), mapped to CoAP codes in
//! [`coap_code`]; the work is the same calls, in the same order.
//!
//! A first enrollment with a one-time token (RFC 9148 leaves the method
//! open): the request carries `SERIAL:TOKEN`, what HTTP Basic carries over
//! HTTPS, in its PKCS#10 challengePassword attribute, and the DTLS client
//! certificate must be a certificate (self-signed will do) of the very key
//! the request is for. The token is read before the request's signature is
//! checked (a wrong one costs no signature); the request is then verified,
//! and its key must be the handshake's: the token is only spent by the
//! holder of the key that proved itself on this channel. docs/coaps.md says
//! why this and not a PSK.

use std::sync::Arc;

use iotpki_authority::{Authority, AuthorityError, Credential, EnrollRequest, Gate};
use iotpki_coap::est::{self as coap_est, Op};
use iotpki_coap::msg::Code;
use iotpki_coap::server::{Request, Response};
use iotpki_core::csr;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::http::{blocking, ApiError};
use crate::limits::RateLimiter;

/// 4.09 Conflict (RFC 8132).
const CONFLICT: Code = Code::new(4, 9);
/// 4.29 Too Many Requests (RFC 8516).
const TOO_MANY_REQUESTS: Code = Code::new(4, 29);

/// What a request asks, checked up to the point where the authority is needed.
pub(super) enum Work {
    /// `/crts`: the CA certificates.
    Crts { label: Option<String>, single: bool },
    /// `/att`: the CSR attributes.
    Att { label: Option<String> },
    /// `/sen` or `/sren`.
    /// The request may carry a one-time token (its challengePassword): wiped when dropped.
    Enroll { label: Option<String>, reenroll: bool, csr: zeroize::Zeroizing<Vec<u8>>, leaf: Arc<Vec<u8>>, single: bool },
}

impl Work {
    /// The work `request` asks for, or the answer when it needs none (an
    /// error, the discovery answer). Enrollments are rate limited here,
    /// like HTTPS ones: the address's refusals first, then the certificate.
    pub(super) fn of(
        request: &Request,
        leaf: Option<Arc<Vec<u8>>>,
        limiter: &RateLimiter,
        ip: &str,
        labels: &[String],
    ) -> Result<Self, Response> {
        let path: Vec<&str> = request.path.iter().map(String::as_str).collect();
        if coap_est::is_well_known_core(&path) {
            if request.method != Code::GET {
                return Err(text(Code::METHOD_NOT_ALLOWED, "/.well-known/core answers GET".into()));
            }
            return Err(Response {
                code: Code::CONTENT,
                content_format: Some(coap_est::CT_LINK_FORMAT),
                max_age: None,
                payload: coap_est::well_known_core(
                    &labels.iter().map(String::as_str).collect::<Vec<_>>(),
                    &request.query,
                )
                .into_bytes(),
            });
        }
        let Some(route) = coap_est::route(&path) else {
            return Err(text(Code::NOT_FOUND, format!("no resource /{}", path.join("/"))));
        };
        let label = route.label.clone();
        let single = match (route.op, request.accept) {
            (_, None) => false,
            (Op::Crts | Op::Sen | Op::Sren, Some(coap_est::CT_PKCS7_CERTS_ONLY)) => false,
            (Op::Crts | Op::Sen | Op::Sren, Some(coap_est::CT_PKIX_CERT)) => true,
            (Op::Att, Some(coap_est::CT_CSRATTRS)) => false,
            (_, Some(other)) => {
                return Err(text(Code::NOT_ACCEPTABLE, format!("content format {other} is not served here")))
            }
        };
        let (reenroll, get) = match route.op {
            Op::Crts => (false, true),
            Op::Att => (false, true),
            Op::Sen => (false, false),
            Op::Sren => (true, false),
            Op::Skg | Op::Skc => {
                return Err(text(
                    Code::NOT_FOUND,
                    "server-side key generation is not offered: keys are made on the device".into(),
                ))
            }
        };
        let want = if get { Code::GET } else { Code::POST };
        if request.method != want {
            return Err(text(
                Code::METHOD_NOT_ALLOWED,
                format!("this resource answers {}", if get { "GET" } else { "POST" }),
            ));
        }
        if !request.query.is_empty() {
            return Err(text(Code::BAD_OPTION, "no Uri-Query is defined here (factory births use HTTPS)".into()));
        }
        match route.op {
            Op::Crts => return Ok(Self::Crts { label, single }),
            Op::Att => return Ok(Self::Att { label }),
            _ => {}
        }
        if request.content_format != Some(coap_est::CT_PKCS10) {
            return Err(text(
                Code::UNSUPPORTED_CONTENT_FORMAT,
                format!("Content-Format must be {} (application/pkcs10)", coap_est::CT_PKCS10),
            ));
        }
        let Some(leaf) = leaf else {
            return Err(text(Code::UNAUTHORIZED, "the DTLS handshake showed no client certificate".into()));
        };
        if let Err(wait) = limiter.refusals_left(ip) {
            return Err(too_many(wait.as_secs().max(1), "refused requests from this address"));
        }
        let key = format!("cert:{}", hex::encode(Sha256::digest(leaf.as_slice())));
        if let Err(wait) = limiter.take(&key, false) {
            return Err(too_many(wait.as_secs().max(1), "requests from this client"));
        }
        Ok(Self::Enroll { label, reenroll, csr: zeroize::Zeroizing::new(request.payload.clone()), leaf, single })
    }

    /// Do it (on the blocking pool) and say the answer.
    pub(super) async fn run(self, a: Arc<Authority>) -> Response {
        let r = blocking(move || self.answer(&a)).await.and_then(|r| r);
        match r {
            Ok(resp) => resp,
            Err(e) => refusal(ApiError::from(e)),
        }
    }

    fn answer(self, a: &Authority) -> Result<Response, AuthorityError> {
        match self {
            Self::Crts { label, single } => {
                let p7 = a.cacerts(label.as_deref())?;
                if !single {
                    return Ok(body(coap_est::CT_PKCS7_CERTS_ONLY, p7.to_vec()));
                }
                let certs = iotpki_core::pkcs7::parse_certs_only(p7)?;
                match <[Vec<u8>; 1]>::try_from(certs) {
                    Ok([one]) => Ok(body(coap_est::CT_PKIX_CERT, one)),
                    Err(all) => Ok(text(
                        Code::NOT_ACCEPTABLE,
                        format!(
                            "the CA certificates are {} certificates: ask for content format {}",
                            all.len(),
                            coap_est::CT_PKCS7_CERTS_ONLY
                        ),
                    )),
                }
            }
            Self::Att { label } => Ok(body(coap_est::CT_CSRATTRS, a.csr_attrs(label.as_deref())?)),
            Self::Enroll { label, reenroll, csr: der, leaf, single } => {
                let chain = [CertificateDer::from(leaf.as_slice())];
                let (caller, req, token) = if reenroll {
                    let c = a.admit(
                        Gate::Certificate("refuse.reenroll"),
                        label.as_deref(),
                        Credential::ClientCert(&chain),
                    )?;
                    (c, EnrollRequest::Reenroll, false)
                } else {
                    let req = EnrollRequest::Enroll { batch: None, activation: None };
                    match csr::challenge_password(&der) {
                        Ok(Some(pw)) => {
                            let (user, password) = pw.split_once(':').ok_or_else(|| {
                                AuthorityError::unauthenticated(
                                    "the challengePassword must be SERIAL:TOKEN (the device serial, a colon, the one-time token)"
                                        .into(),
                                )
                            })?;
                            let c = a.admit(Gate::Enroll, label.as_deref(), Credential::Token { user, password })?;
                            (c, req, true)
                        }
                        // No token (or a request too broken to hold one): a birth certificate commissions.
                        _ => (a.admit(Gate::Enroll, label.as_deref(), Credential::ClientCert(&chain))?, req, false),
                    }
                };
                let verified = csr::parse_and_verify(&der).map_err(|e| a.refuse(&caller, req, e.into()))?;
                if token && !same_key(&leaf, &verified.spki_der) {
                    return Err(a.refuse(
                        &caller,
                        req,
                        AuthorityError::forbidden(
                            "the DTLS client certificate must be for the key in the request (a token is spent only by \
                             the key that proved itself in the handshake)"
                                .into(),
                        ),
                    ));
                }
                let enrolled = a.enroll(label.as_deref(), &caller, req, &verified)?;
                Ok(if single {
                    body(coap_est::CT_PKIX_CERT, enrolled.cert_der)
                } else {
                    body(coap_est::CT_PKCS7_CERTS_ONLY, enrolled.pkcs7)
                })
            }
        }
    }
}

/// Whether the certificate `leaf` (DER) is for the key `spki_der`.
fn same_key(leaf: &[u8], spki_der: &[u8]) -> bool {
    use der::{Decode, Encode};
    x509_cert::Certificate::from_der(leaf)
        .ok()
        .and_then(|c| c.tbs_certificate.subject_public_key_info.to_der().ok())
        .is_some_and(|k| k == spki_der)
}

fn body(content_format: u16, payload: Vec<u8>) -> Response {
    Response { code: Code::CONTENT, content_format: Some(content_format), max_age: None, payload }
}

/// An error answer: a diagnostic payload (RFC 7252 §5.5.2: text, no Content-Format).
fn text(code: Code, message: String) -> Response {
    Response { code, content_format: None, max_age: None, payload: message.into_bytes() }
}

fn too_many(secs: u64, what: &str) -> Response {
    Response {
        code: TOO_MANY_REQUESTS,
        content_format: None,
        max_age: Some(u32::try_from(secs).unwrap_or(u32::MAX)),
        payload: format!("too many {what}; retry after {secs} s").into_bytes(),
    }
}

/// A refusal, as the HTTPS server words it, with the CoAP code for its status.
fn refusal(e: ApiError) -> Response {
    let (status, message) = e.answer();
    let code = coap_code(status.as_u16());
    if code.class() == 5 {
        tracing::error!(reason = %message, "EST-coaps request failed");
    } else {
        tracing::info!(code = %code, reason = %message, "EST-coaps request refused");
    }
    Response {
        code,
        content_format: None,
        // As HTTPS's Retry-After on 503.
        max_age: (code == Code::SERVICE_UNAVAILABLE).then_some(30),
        payload: message.into_bytes(),
    }
}

/// The CoAP response code for an HTTP status (RFC 8075 §7's mapping, and
/// RFC 8132's 4.09 and RFC 8516's 4.29).
pub(super) fn coap_code(status: u16) -> Code {
    match status {
        400 => Code::BAD_REQUEST,
        401 => Code::UNAUTHORIZED,
        403 => Code::FORBIDDEN,
        404 => Code::NOT_FOUND,
        405 => Code::METHOD_NOT_ALLOWED,
        406 => Code::NOT_ACCEPTABLE,
        409 => CONFLICT,
        412 => Code::PRECONDITION_FAILED,
        413 => Code::REQUEST_ENTITY_TOO_LARGE,
        415 => Code::UNSUPPORTED_CONTENT_FORMAT,
        429 => TOO_MANY_REQUESTS,
        503 => Code::SERVICE_UNAVAILABLE,
        s if (400..500).contains(&s) => Code::BAD_REQUEST,
        _ => Code::INTERNAL_SERVER_ERROR,
    }
}

/// A second request while one is with the authority (NSTART = 1).
pub(super) fn busy() -> Response {
    Response {
        code: Code::SERVICE_UNAVAILABLE,
        content_format: None,
        max_age: Some(1),
        payload: b"one request at a time per session".to_vec(),
    }
}

/// The authority did not answer within the request timeout.
pub(super) fn timed_out(t: std::time::Duration) -> Response {
    Response {
        code: Code::SERVICE_UNAVAILABLE,
        content_format: None,
        max_age: Some(5),
        payload: format!("the request was not answered within {} s", t.as_secs()).into_bytes(),
    }
}

/// Whether an answer counts against the address's refusal bucket (as a 4xx but 429 does over HTTPS).
pub(super) fn counts_as_refusal(r: &Response) -> bool {
    r.code.class() == 4 && r.code != TOO_MANY_REQUESTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_their_coap_codes() {
        for (http, coap) in [
            (400, "4.00"),
            (401, "4.01"),
            (403, "4.03"),
            (404, "4.04"),
            (409, "4.09"),
            (413, "4.13"),
            (415, "4.15"),
            (429, "4.29"),
            (418, "4.00"),
            (500, "5.00"),
            (503, "5.03"),
        ] {
            assert_eq!(coap_code(http).to_string(), coap, "HTTP {http}");
        }
    }
}
