//! PKCS#10 requests, as the agent makes them: the subject `CN=serial,
//! serialNumber=serial` (UTF8String, PrintableString) for a first enrollment
//! or the current certificate's subject for a renewal, no attributes (or,
//! over EST-coaps, the token in a challengePassword), signed by the device's
//! key through a callback.
//!
//! ```
//! # fn main() -> Result<(), iotpki_device_core::Error> {
//! use iotpki_device_core::csr::{self, Signature, Subject};
//! # use iotpki_core::keys::Signer as _;
//! # let key = iotpki_core::keys::SoftKey::generate(iotpki_core::keys::KeyType::EcdsaP256).unwrap();
//! # let spki = key.public_key_der().to_vec();
//! // `spki`: the device key's DER subjectPublicKeyInfo (from the secure element).
//! let request = csr::build(&Subject::Serial("SN-0001"), &spki, |tbs| {
//!     // The secure element signs `tbs` (here a software key, DER ECDSA).
//!     key.sign(tbs).map(Signature::Der).map_err(|_| "the secure element refused")
//! })?;
//! assert!(iotpki_core::csr::parse_and_verify(&request).is_ok());
//! # Ok(()) }
//! ```

use alloc::vec::Vec;

use const_oid::db::rfc4519;
use der::asn1::{BitString, PrintableStringRef, SetOfVec, Utf8StringRef};
use der::{Any, Decode, Encode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::request::{CertReq, CertReqInfo, Version};

use crate::keys::{KeyType, PublicKey};
use crate::Error;

/// What the signing callback returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// An ECDSA signature as a DER `ECDSA-Sig-Value` (what X.509 carries).
    Der(Vec<u8>),
    /// An ECDSA signature as `r || s`, each the curve's size (what most
    /// secure elements return), or an Ed25519 signature (64 octets).
    Fixed(Vec<u8>),
}

/// Whom the request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A first enrollment (or a birth on the line): `CN=serial, serialNumber=serial`.
    Serial(&'a str),
    /// A renewal: the subject of the current certificate, DER (see [`crate::est::Issued::subject`]).
    Name(&'a [u8]),
}

/// Build and sign a PKCS#10 request for the key `public_key` (DER
/// subjectPublicKeyInfo, see [`PublicKey::from_spki_der`]). `sign` is called
/// once, with the octets to sign (the DER CertificationRequestInfo); the
/// signature it returns is checked with the public key before the request
/// is made, so a secure element that signs with another key, or badly, is
/// caught on the device ([`Error::Signer`]).
pub fn build<F>(subject: &Subject<'_>, public_key: &[u8], sign: F) -> Result<Vec<u8>, Error>
where
    F: FnMut(&[u8]) -> Result<Signature, &'static str>,
{
    build_with_challenge(subject, public_key, None, sign)
}

/// The challengePassword attribute (PKCS#9, RFC 2985 5.4.1).
const CHALLENGE_PASSWORD: const_oid::ObjectIdentifier = const_oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7");

/// [`build`], with a challengePassword attribute (a UTF8String) when
/// `challenge` is given: a first enrollment over EST-coaps carries the
/// one-time token in it as `SERIAL:TOKEN` (docs/coaps.md), as the agent's does.
/// The request then holds the token: wipe it after use.
pub fn build_with_challenge<F>(
    subject: &Subject<'_>,
    public_key: &[u8],
    challenge: Option<&str>,
    mut sign: F,
) -> Result<Vec<u8>, Error>
where
    F: FnMut(&[u8]) -> Result<Signature, &'static str>,
{
    let key = PublicKey::from_spki_der(public_key)?;
    let spki = SubjectPublicKeyInfoOwned::from_der(public_key).map_err(|e| Error::der("subjectPublicKeyInfo", e))?;
    let subject = match subject {
        Subject::Serial(s) => serial_subject(s)?,
        Subject::Name(der) => Name::from_der(der).map_err(|e| Error::der("subject name", e))?,
    };
    let mut attributes = SetOfVec::new();
    if let Some(c) = challenge {
        let value = Any::from(Utf8StringRef::new(c).map_err(|e| Error::der("challengePassword", e))?);
        let values = SetOfVec::try_from(alloc::vec![value]).map_err(|e| Error::der("challengePassword", e))?;
        attributes
            .insert(x509_cert::attr::Attribute { oid: CHALLENGE_PASSWORD, values })
            .map_err(|e| Error::der("challengePassword", e))?;
    }
    let info = CertReqInfo { version: Version::V1, subject, public_key: spki, attributes };
    let info_der = info.to_der().map_err(|e| Error::der("request info", e))?;
    let kt = key.key_type();
    let signature = match (sign(&info_der).map_err(Error::Signer)?, kt.field_len()) {
        (Signature::Der(d), Some(_)) => d,
        (Signature::Fixed(f), Some(n)) => crate::keys::ecdsa_fixed_to_der(&f, n)
            .ok_or(Error::Signer("an ECDSA signature in fixed form must be r || s of the curve's size"))?,
        (Signature::Fixed(f), None) => f,
        (Signature::Der(_), None) => return Err(Error::Signer("an Ed25519 signature has no DER form: return Fixed")),
    };
    let algorithm = AlgorithmIdentifierOwned { oid: kt.signature_oid(), parameters: None };
    key.verify_x509(&algorithm, &info_der, &signature)
        .map_err(|()| Error::Signer("the signature does not verify with the device's public key"))?;
    let req = CertReq {
        info,
        algorithm,
        signature: BitString::from_bytes(&signature).map_err(|e| Error::der("signature", e))?,
    };
    req.to_der().map_err(|e| Error::der("PKCS#10 request", e))
}

/// Check a device serial as the authority does: 1 to 64 characters of the
/// PrintableString set, not starting or ending with a space.
pub fn check_serial(s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > 64 {
        return Err(Error::BadSerial("a device serial is 1 to 64 characters"));
    }
    if s.starts_with(' ') || s.ends_with(' ') {
        return Err(Error::BadSerial("a device serial must not start or end with a space"));
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c)) {
        return Err(Error::BadSerial("a device serial holds only A-Z a-z 0-9, space and ' ( ) + , - . / : = ?"));
    }
    Ok(())
}

fn serial_subject(serial: &str) -> Result<Name, Error> {
    check_serial(serial)?;
    let rdn = |oid, value: Any| -> Result<RelativeDistinguishedName, Error> {
        let set = SetOfVec::try_from(alloc::vec![AttributeTypeAndValue { oid, value }])
            .map_err(|e| Error::der("subject", e))?;
        Ok(RelativeDistinguishedName(set))
    };
    let cn = Any::from(Utf8StringRef::new(serial).map_err(|e| Error::der("subject", e))?);
    let sn = Any::from(PrintableStringRef::new(serial).map_err(|e| Error::der("subject", e))?);
    Ok(RdnSequence(alloc::vec![rdn(rfc4519::CN, cn)?, rdn(rfc4519::SERIAL_NUMBER, sn)?]))
}

/// The key type of a DER subjectPublicKeyInfo, as [`build`] would sign for it.
pub fn key_type(public_key: &[u8]) -> Result<KeyType, Error> {
    PublicKey::from_spki_der(public_key).map(|k| k.key_type())
}
