//! The EST answers a device reads (RFC 7030 as RFC 8951 clarifies it), and
//! the check of the certificate it is given.
//!
//! `/simpleenroll` and `/simplereenroll` answer with base64 of a PKCS#7
//! certs-only message holding the one new certificate; `/cacerts` with the
//! CA certificates, the trust anchor among them. The agent's order, which a
//! firmware follows:
//!
//! 1. [`ca_chain`] of the `/cacerts` answer and the anchor it got out of band;
//! 2. [`csr::build`](crate::csr::build), sent to `/simpleenroll`;
//! 3. [`enroll_answer`] of the answer, then [`check_issued`].
//!
//! ```no_run
//! # fn main() -> Result<(), iotpki_device_core::Error> {
//! # let (cacerts_body, answer_body, anchor, device_spki, now) = (b"", b"", &[][..], &[][..], 0u64);
//! use iotpki_device_core::{csr::Subject, est};
//! let chain = est::ca_chain(cacerts_body, anchor)?;
//! let cert = est::enroll_answer(answer_body)?;
//! let issued = est::check_issued(&cert, device_spki, &Subject::Serial("SN-0001"), &chain, anchor, now)?;
//! # let _ = issued; Ok(()) }
//! ```

use alloc::vec::Vec;

use base64ct::Encoding;
use const_oid::db::rfc4519;
use der::{Decode, Encode};
use x509_cert::Certificate;

use crate::chain::{self, Purpose};
use crate::csr::Subject;
use crate::derx::tlv;
use crate::Error;

/// Largest base64 body decoded (the agent's and the server's limit).
pub const MAX_BODY: usize = 64 * 1024;

/// id-signedData (RFC 5652), DER content octets.
const ID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];

/// Decode an EST base64 body: ASCII whitespace and line breaks (CRLF or LF)
/// anywhere are ignored and padding is optional (RFC 8951 section 3 asks
/// receivers to be liberal). Bodies over [`MAX_BODY`] are refused.
pub fn decode_body(body: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = |detail| Error::Malformed { what: "EST base64 body", detail };
    if body.len() > MAX_BODY {
        return Err(bad("over the 64 KiB limit"));
    }
    let mut compact: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(bad("empty"));
    }
    // Padding may be whole, short or absent, never more than the data needs.
    let pad = compact.iter().rev().take_while(|b| **b == b'=').count();
    compact.truncate(compact.len() - pad);
    if pad > (4 - compact.len() % 4) % 4 {
        return Err(bad("wrong padding"));
    }
    base64ct::Base64Unpadded::decode_vec(core::str::from_utf8(&compact).map_err(|_| bad("not ASCII"))?)
        .map_err(|_| bad("not base64 (RFC 4648, standard alphabet)"))
}

/// The certificates (DER, in the message's order) of a PKCS#7 certs-only
/// message: a ContentInfo of type signedData, whatever its signers. Other
/// certificate choices (attribute certificates) are skipped; a message
/// without certificates is refused.
pub fn parse_certs_only(der: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let bad = |detail| Error::Malformed { what: "PKCS#7 certs-only message", detail };
    let ci = tlv(der).filter(|t| t.tag == 0x30 && t.rest.is_empty()).ok_or(bad("not a DER ContentInfo"))?;
    let oid = tlv(ci.content).filter(|t| t.tag == 0x06).ok_or(bad("no content type"))?;
    if oid.content != ID_SIGNED_DATA {
        return Err(bad("the content type is not signedData"));
    }
    let explicit = tlv(oid.rest).filter(|t| t.tag == 0xa0 && t.rest.is_empty()).ok_or(bad("no [0] content"))?;
    let sd = tlv(explicit.content).filter(|t| t.tag == 0x30 && t.rest.is_empty()).ok_or(bad("no SignedData"))?;
    let version = tlv(sd.content).filter(|t| t.tag == 0x02).ok_or(bad("no SignedData version"))?;
    let digests = tlv(version.rest).filter(|t| t.tag == 0x31).ok_or(bad("no digestAlgorithms"))?;
    let encap = tlv(digests.rest).filter(|t| t.tag == 0x30).ok_or(bad("no encapContentInfo"))?;
    let mut next = tlv(encap.rest).ok_or(bad("no signerInfos"))?;
    let mut out = Vec::new();
    if next.tag == 0xa0 {
        let mut set = next.content;
        while !set.is_empty() {
            let c = tlv(set).ok_or(bad("a malformed certificate choice"))?;
            if c.tag == 0x30 {
                Certificate::from_der(c.whole).map_err(|e| Error::der("certificate", e))?;
                out.push(c.whole.to_vec());
            } else if !(0xa0..=0xa3).contains(&c.tag) {
                return Err(bad("an unknown certificate choice"));
            }
            set = c.rest;
        }
        next = tlv(next.rest).ok_or(bad("no signerInfos"))?;
    }
    if next.tag == 0xa1 {
        next = tlv(next.rest).ok_or(bad("no signerInfos"))?;
    }
    if next.tag != 0x31 || !next.rest.is_empty() {
        return Err(bad("no signerInfos at the end of SignedData"));
    }
    if out.is_empty() {
        return Err(bad("no certificates"));
    }
    Ok(out)
}

/// The one certificate of a `/simpleenroll` or `/simplereenroll` answer
/// body (base64 of PKCS#7 certs-only), DER. More or fewer is refused, as the agent does.
pub fn enroll_answer(body: &[u8]) -> Result<Vec<u8>, Error> {
    let mut certs = parse_certs_only(&decode_body(body)?)?;
    if certs.len() != 1 {
        return Err(Error::CertificateCount { found: certs.len() });
    }
    Ok(certs.remove(0))
}

/// The issuing CAs of a `/cacerts` answer body: every certificate but
/// `anchor`, which must be among them, or the server is not the one the
/// device trusts ([`Error::AnchorNotOffered`]).
pub fn ca_chain(body: &[u8], anchor: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let certs = parse_certs_only(&decode_body(body)?)?;
    if !certs.iter().any(|c| c == anchor) {
        return Err(Error::AnchorNotOffered);
    }
    Ok(certs.into_iter().filter(|c| c != anchor).collect())
}

/// A certificate that passed [`check_issued`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The certificate's subject, DER: what a renewal's request names ([`Subject::Name`]).
    pub subject: Vec<u8>,
    /// notBefore, Unix seconds.
    pub not_before: u64,
    /// notAfter, Unix seconds: renew before it.
    pub not_after: u64,
}

/// Check the certificate the server issued, as the agent does before it keeps
/// it: it carries the device's public key (`device_key`, DER
/// subjectPublicKeyInfo) and the expected subject (for [`Subject::Serial`],
/// its serialNumber attributes are exactly the serial; for
/// [`Subject::Name`], the subject is that name), and it chains through
/// `chain` to `anchor` at `now` for TLS client authentication ([`chain::verify`]).
pub fn check_issued(
    cert: &[u8],
    device_key: &[u8],
    expected: &Subject<'_>,
    chain: &[Vec<u8>],
    anchor: &[u8],
    now: u64,
) -> Result<Issued, Error> {
    let c = Certificate::from_der(cert).map_err(|e| Error::der("issued certificate", e))?;
    let spki = c.tbs_certificate.subject_public_key_info.to_der().map_err(|e| Error::der("issued certificate", e))?;
    if spki != device_key {
        return Err(Error::WrongKey);
    }
    chain::verify(cert, chain, anchor, now, Purpose::ClientAuth)?;
    let subject = c.tbs_certificate.subject.to_der().map_err(|e| Error::der("issued certificate", e))?;
    let ok = match expected {
        Subject::Serial(serial) => {
            let mut found = c
                .tbs_certificate
                .subject
                .0
                .iter()
                .flat_map(|rdn| rdn.0.iter())
                .filter(|atv| atv.oid == rfc4519::SERIAL_NUMBER)
                .map(|atv| core::str::from_utf8(atv.value.value()).ok());
            found.next() == Some(Some(*serial)) && found.next().is_none()
        }
        Subject::Name(name) => subject == *name,
    };
    if !ok {
        return Err(Error::WrongSubject);
    }
    let secs = |t: &x509_cert::time::Time| t.to_unix_duration().as_secs();
    Ok(Issued {
        subject,
        not_before: secs(&c.tbs_certificate.validity.not_before),
        not_after: secs(&c.tbs_certificate.validity.not_after),
    })
}
