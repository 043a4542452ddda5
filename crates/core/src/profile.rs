//! Certificate profiles and issuance: which extensions each kind of
//! certificate carries, and the signing of the TBS structure.
//!
//! | profile     | basicConstraints        | keyUsage (critical)        | extKeyUsage |
//! |-------------|-------------------------|----------------------------|-------------|
//! | root        | critical, CA            | keyCertSign, cRLSign       | -           |
//! | issuing CA  | critical, CA, pathLen 0 | keyCertSign, cRLSign       | -           |
//! | delegating CA | critical, CA, pathLen 1 | keyCertSign, cRLSign     | -           |
//! | delegated CA  | critical, CA, pathLen 0 | keyCertSign, cRLSign     | -           |
//! | device      | critical, not CA        | digitalSignature           | clientAuth  |
//! | server      | critical, not CA        | digitalSignature           | serverAuth  |
//! | station     | critical, not CA        | digitalSignature           | clientAuth  |
//! | admin       | critical, not CA        | digitalSignature           | clientAuth, [`ADMIN_ROLE`] |
//! | OCSP signer | critical, not CA        | digitalSignature           | OCSPSigning, + id-pkix-ocsp-nocheck |
//! | Matter PAA  | critical, CA, pathLen 1 | keyCertSign, cRLSign       | -           |
//! | Matter PAI  | critical, CA, pathLen 0 | keyCertSign, cRLSign       | -           |
//! | Matter DAC  | critical, not CA        | digitalSignature           | -           |
//!
//! The three Matter profiles (device attestation, Matter core specification
//! 6.2.2; see [`crate::matter`]) carry no revocation pointers and must be
//! P-256 keys signed with ecdsa-with-SHA256 (the lint refuses anything else).
//!
//! Every certificate carries subjectKeyIdentifier and authorityKeyIdentifier
//! (RFC 7093 method 1 key identifiers). notAfter is clamped to the issuer's.
//! A delegated CA (a factory station's offline sub-CA for one batch) also
//! carries critical nameConstraints: it may only issue under
//! [`CertParams::permitted_subtree`] (one directoryName subtree per device
//! name its batch allows it).
//!
//! An admin certificate authenticates a person or tool to the admin API
//! (mutual TLS). Its role marker is an extended key usage of its own,
//! [`ADMIN_ROLE`] (id-kp-cmcRA), next to clientAuth (which TLS client path
//! validation needs): a device or station certificate never carries it, so
//! the role is in the signed certificate, not only in the store's record.

use std::net::IpAddr;

use const_oid::db::rfc5280;
use const_oid::AssociatedOid;
use der::asn1::{BitStringRef, ContextSpecificRef, Ia5String, OctetString};
use der::{Decode, Encode, TagMode, TagNumber};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::{Certificate, Version};
use x509_cert::ext::pkix::constraints::name::{GeneralSubtree, NameConstraints};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use crate::keys::{self, Signer};
use crate::time::x509_time;
use crate::Error;

/// The extended key usage that marks an admin certificate: id-kp-cmcRA
/// (RFC 6402 2.10, `1.3.6.1.5.5.7.3.28`), "the holder acts as a registration
/// authority", which is what an admin of the authority does (approves
/// enrollments with tokens and batches, asks for revocations). Devices and
/// stations never carry it.
pub const ADMIN_ROLE: const_oid::ObjectIdentifier = const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.28");

/// The kinds of certificate we issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Self-signed root CA.
    Root,
    /// An issuing CA under the root (operational).
    IssuingCa,
    /// An issuing CA that may certify one level of delegated CAs (manufacturing).
    DelegatingCa,
    /// A station's offline sub-CA for one batch: name-constrained, no sub-CAs.
    DelegatedCa,
    /// A device identity (IDevID or LDevID): TLS client.
    Device,
    /// A TLS server.
    Server,
    /// A factory station: a TLS client that enrolls devices for its batches.
    Station,
    /// A CA's delegated OCSP responder (RFC 6960 4.2.2.2).
    OcspSigner,
    /// An administrator of the authority: a TLS client of the admin API.
    Admin,
    /// A Matter Product Attestation Authority: a self-signed root (Matter core spec 6.2.2.5).
    MatterPaa,
    /// A Matter Product Attestation Intermediate for one vendor id (6.2.2.4).
    MatterPai,
    /// A Matter Device Attestation Certificate (6.2.2.3).
    MatterDac,
}

impl Profile {
    /// The profile's name as stored.
    pub fn name(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::IssuingCa => "issuing-ca",
            Self::DelegatingCa => "delegating-ca",
            Self::DelegatedCa => "delegated-ca",
            Self::Device => "device",
            Self::Server => "server",
            Self::Station => "station",
            Self::OcspSigner => "ocsp-signer",
            Self::Admin => "admin",
            Self::MatterPaa => "matter-paa",
            Self::MatterPai => "matter-pai",
            Self::MatterDac => "matter-dac",
        }
    }

    fn is_ca(self) -> bool {
        matches!(
            self,
            Self::Root | Self::IssuingCa | Self::DelegatingCa | Self::DelegatedCa | Self::MatterPaa | Self::MatterPai
        )
    }

    /// Whether this is one of the Matter device attestation profiles.
    pub fn is_matter(self) -> bool {
        matches!(self, Self::MatterPaa | Self::MatterPai | Self::MatterDac)
    }
}

/// The CA that signs: its name, key identifier, validity end and key.
pub struct Issuer<'a> {
    /// The issuer's subject (becomes the certificate's issuer).
    pub subject: &'a Name,
    /// The issuer's subjectKeyIdentifier (becomes the authorityKeyIdentifier).
    pub key_id: &'a [u8],
    /// The issuer's notAfter: nothing it signs outlives it.
    pub not_after: i64,
    /// The issuer's signing key.
    pub signer: &'a dyn Signer,
}

/// Where relying parties find the issuer's revocation status: written into
/// the certificates it issues as cRLDistributionPoints and, for end
/// entities, authorityInfoAccess (id-ad-ocsp). Plain `http://` URLs, as
/// RFC 5280 4.2.1.13 and RFC 6960 expect (fetching revocation data over
/// TLS would need revocation data to check the TLS server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationUrls {
    /// The issuer's CRL.
    pub crl: String,
    /// The OCSP responder.
    pub ocsp: Option<String>,
}

/// What varies between two certificates of one profile.
#[derive(Clone, Debug)]
pub struct CertParams {
    /// The profile.
    pub profile: Profile,
    /// The serial number (see [`crate::serial`]).
    pub serial: SerialNumber,
    /// The subject.
    pub subject: Name,
    /// The subject's public key.
    pub spki: SubjectPublicKeyInfoOwned,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds (clamped to the issuer's).
    pub not_after: i64,
    /// DNS names for the subjectAltName.
    pub dns_names: Vec<String>,
    /// IP addresses for the subjectAltName.
    pub ip_addrs: Vec<IpAddr>,
    /// For a delegated CA: the subtrees of directory names it may issue under
    /// (one per allowed device name); it needs at least one. `None` elsewhere.
    pub permitted_subtree: Option<Vec<Name>>,
}

/// A signed certificate and the facts the store records about it.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// notBefore as encoded.
    pub not_before: i64,
    /// notAfter as encoded (after clamping).
    pub not_after: i64,
}

fn ext<T: Encode + AssociatedOid>(value: &T, critical: bool) -> Result<Extension, Error> {
    let bytes = value.to_der().map_err(|e| Error::der("extension", e))?;
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(bytes).map_err(|e| Error::der("extension", e))?,
    })
}

/// A revocation URL (CRL or OCSP) as a GeneralName: plain `http://` only.
pub(crate) fn uri(u: &str) -> Result<GeneralName, Error> {
    if !u.starts_with("http://") || u.len() > 1024 || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Profile(format!("revocation URL {u:?} must be a plain http:// URL")));
    }
    Ok(GeneralName::UniformResourceIdentifier(Ia5String::new(u).map_err(|e| Error::der("URI", e))?))
}

/// cRLDistributionPoints and authorityInfoAccess for `p`, pointing at `urls`.
fn revocation_extensions(p: Profile, urls: &RevocationUrls, out: &mut Vec<Extension>) -> Result<(), Error> {
    use x509_cert::ext::pkix::crl::dp::DistributionPoint;
    use x509_cert::ext::pkix::name::DistributionPointName;
    use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax, CrlDistributionPoints};
    // The root's status is not on a CRL of ours; an OCSP signer is not checked
    // (nocheck); Matter attestation certificates carry no pointers (docs/matter.md).
    if matches!(p, Profile::Root | Profile::OcspSigner) || p.is_matter() {
        return Ok(());
    }
    let dp = DistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![uri(&urls.crl)?])),
        reasons: None,
        crl_issuer: None,
    };
    out.push(ext(&CrlDistributionPoints(vec![dp]), false)?);
    if let (Some(ocsp), false) = (&urls.ocsp, p.is_ca()) {
        let aia = AuthorityInfoAccessSyntax(vec![AccessDescription {
            access_method: const_oid::db::rfc5280::ID_AD_OCSP,
            access_location: uri(ocsp)?,
        }]);
        out.push(ext(&aia, false)?);
    }
    Ok(())
}

/// The extensions `params.profile` asks for.
fn extensions(params: &CertParams, issuer_key_id: &[u8]) -> Result<Vec<Extension>, Error> {
    let p = params.profile;
    let mut out = Vec::with_capacity(6);
    let bc = match p {
        Profile::Root => BasicConstraints { ca: true, path_len_constraint: None },
        Profile::IssuingCa | Profile::DelegatedCa | Profile::MatterPai => {
            BasicConstraints { ca: true, path_len_constraint: Some(0) }
        }
        // Matter 6.2.2.5: a PAA's path length constraint, when present, is 1.
        Profile::DelegatingCa | Profile::MatterPaa => BasicConstraints { ca: true, path_len_constraint: Some(1) },
        Profile::Device
        | Profile::Server
        | Profile::Station
        | Profile::OcspSigner
        | Profile::Admin
        | Profile::MatterDac => BasicConstraints { ca: false, path_len_constraint: None },
    };
    out.push(ext(&bc, true)?);
    // A delegated CA (a station's offline sub-CA) signs its own CRL too: the
    // station signs it at each sync with the authority's revocations.
    let ku = if p.is_ca() {
        KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)
    } else {
        KeyUsage(KeyUsages::DigitalSignature.into())
    };
    out.push(ext(&ku, true)?);
    match p {
        Profile::Device | Profile::Station => {
            out.push(ext(&ExtendedKeyUsage(vec![rfc5280::ID_KP_CLIENT_AUTH]), false)?)
        }
        Profile::OcspSigner => {
            out.push(ext(&ExtendedKeyUsage(vec![rfc5280::ID_KP_OCSP_SIGNING]), false)?);
            // id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1): clients need not check this certificate's status.
            out.push(Extension {
                extn_id: const_oid::db::rfc6960::ID_PKIX_OCSP_NOCHECK,
                critical: false,
                extn_value: OctetString::new(vec![0x05, 0x00]).map_err(|e| Error::der("nocheck", e))?,
            });
        }
        Profile::Server => out.push(ext(&ExtendedKeyUsage(vec![rfc5280::ID_KP_SERVER_AUTH]), false)?),
        Profile::Admin => out.push(ext(&ExtendedKeyUsage(vec![rfc5280::ID_KP_CLIENT_AUTH, ADMIN_ROLE]), false)?),
        // Matter 6.2.2.3: a DAC needs no extKeyUsage; the attestation profiles carry none.
        Profile::Root
        | Profile::IssuingCa
        | Profile::DelegatingCa
        | Profile::DelegatedCa
        | Profile::MatterPaa
        | Profile::MatterPai
        | Profile::MatterDac => {}
    }
    let ski = keys::key_identifier(&params.spki);
    out.push(ext(&SubjectKeyIdentifier(OctetString::new(ski).map_err(|e| Error::der("SKI", e))?), false)?);
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(issuer_key_id).map_err(|e| Error::der("AKI", e))?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    out.push(ext(&aki, false)?);
    let mut names = Vec::new();
    for d in &params.dns_names {
        names
            .push(GeneralName::DnsName(Ia5String::new(d).map_err(|e| Error::BadName(format!("DNS name {d:?}: {e}")))?));
    }
    for ip in &params.ip_addrs {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        names.push(GeneralName::IpAddress(OctetString::new(bytes).map_err(|e| Error::der("IP SAN", e))?));
    }
    if !names.is_empty() {
        // The subject is never empty in our profiles, so the SAN is not critical (RFC 5280 4.2.1.6).
        out.push(ext(&SubjectAltName(names), false)?);
    }
    match (p, &params.permitted_subtree) {
        (Profile::DelegatedCa, Some(bases)) if !bases.is_empty() => {
            let subtrees = bases
                .iter()
                .map(|b| GeneralSubtree { base: GeneralName::DirectoryName(b.clone()), minimum: 0, maximum: None })
                .collect();
            let nc = NameConstraints { permitted_subtrees: Some(subtrees), excluded_subtrees: None };
            // RFC 5280 4.2.1.10: conforming CAs MUST mark this extension critical.
            out.push(ext(&nc, true)?);
        }
        (Profile::DelegatedCa, _) => return Err(Error::Profile("a delegated CA needs a permitted subtree".into())),
        (_, Some(_)) => return Err(Error::Profile("only a delegated CA carries name constraints".into())),
        (_, None) => {}
    }
    Ok(out)
}

/// A TBS certificate that borrows its parts: it is linted and encoded into one
/// buffer without cloning the names and the key (x509-cert's `TbsCertificate`
/// owns them), and encodes to the same DER (version 3, no unique identifiers).
struct TbsRef<'a> {
    serial: &'a SerialNumber,
    signature: &'a AlgorithmIdentifierOwned,
    issuer: &'a Name,
    validity: &'a Validity,
    subject: &'a Name,
    spki: &'a SubjectPublicKeyInfoOwned,
    extensions: &'a Vec<Extension>,
}

impl TbsRef<'_> {
    /// version [0] EXPLICIT and extensions [3] EXPLICIT (RFC 5280 4.1).
    fn tagged(&self) -> (ContextSpecificRef<'_, Version>, ContextSpecificRef<'_, Vec<Extension>>) {
        (
            ContextSpecificRef { tag_number: TagNumber::N0, tag_mode: TagMode::Explicit, value: &Version::V3 },
            ContextSpecificRef { tag_number: TagNumber::N3, tag_mode: TagMode::Explicit, value: self.extensions },
        )
    }
}

impl der::FixedTag for TbsRef<'_> {
    const TAG: der::Tag = der::Tag::Sequence;
}

impl der::EncodeValue for TbsRef<'_> {
    fn value_len(&self) -> der::Result<der::Length> {
        let (version, extensions) = self.tagged();
        [
            version.encoded_len()?,
            self.serial.encoded_len()?,
            self.signature.encoded_len()?,
            self.issuer.encoded_len()?,
            self.validity.encoded_len()?,
            self.subject.encoded_len()?,
            self.spki.encoded_len()?,
            extensions.encoded_len()?,
        ]
        .into_iter()
        .try_fold(der::Length::ZERO, |sum, l| sum + l)
    }

    fn encode_value(&self, w: &mut impl der::Writer) -> der::Result<()> {
        let (version, extensions) = self.tagged();
        version.encode(w)?;
        self.serial.encode(w)?;
        self.signature.encode(w)?;
        self.issuer.encode(w)?;
        self.validity.encode(w)?;
        self.subject.encode(w)?;
        self.spki.encode(w)?;
        extensions.encode(w)
    }
}

/// A certificate around an already encoded TBS: the TBS octets are copied, not
/// encoded a second time.
struct CertRef<'a> {
    tbs_der: &'a [u8],
    signature_algorithm: &'a AlgorithmIdentifierOwned,
    signature: BitStringRef<'a>,
}

impl der::FixedTag for CertRef<'_> {
    const TAG: der::Tag = der::Tag::Sequence;
}

impl der::EncodeValue for CertRef<'_> {
    fn value_len(&self) -> der::Result<der::Length> {
        der::Length::try_from(self.tbs_der.len())?
            + self.signature_algorithm.encoded_len()?
            + self.signature.encoded_len()?
    }

    fn encode_value(&self, w: &mut impl der::Writer) -> der::Result<()> {
        w.write(self.tbs_der)?;
        self.signature_algorithm.encode(w)?;
        self.signature.encode(w)
    }
}

/// Check the TBS against the rules of RFC 5280 that our profiles rely on,
/// before anything is signed. A failure here is a bug or a bad profile, never
/// a certificate.
fn lint(tbs: &TbsRef<'_>, profile: Profile) -> Result<(), Error> {
    let sn = tbs.serial.as_bytes();
    if sn.is_empty() || sn.len() > 20 || sn[0] & 0x80 != 0 {
        return Err(Error::Profile("serial number must be positive and at most 20 octets".into()));
    }
    let nb = crate::time::unix(&tbs.validity.not_before);
    let na = crate::time::unix(&tbs.validity.not_after);
    if nb >= na {
        return Err(Error::Profile(format!("notBefore {nb} is not before notAfter {na}")));
    }
    if tbs.subject.0.is_empty() {
        return Err(Error::Profile("empty subject".into()));
    }
    let exts = tbs.extensions.as_slice();
    let mut seen = std::collections::HashSet::new();
    for e in exts {
        if !seen.insert(e.extn_id) {
            return Err(Error::Profile(format!("extension {} appears twice", e.extn_id)));
        }
    }
    let ku =
        exts.iter().find(|e| e.extn_id == KeyUsage::OID).ok_or_else(|| Error::Profile("keyUsage missing".into()))?;
    if !ku.critical {
        return Err(Error::Profile("keyUsage must be critical".into()));
    }
    let ku = KeyUsage::from_der(ku.extn_value.as_bytes()).map_err(|e| Error::der("keyUsage", e))?;
    if profile.is_ca() != ku.key_cert_sign() {
        return Err(Error::Profile("keyCertSign must be set exactly on CA certificates".into()));
    }
    for oid in [SubjectKeyIdentifier::OID, AuthorityKeyIdentifier::OID, BasicConstraints::OID] {
        if !seen.contains(&oid) {
            return Err(Error::Profile(format!("extension {oid} missing")));
        }
    }
    // The admin role marker is on admin certificates, and only there, always with clientAuth.
    let eku = ekus(exts)?;
    let admin = eku.contains(&ADMIN_ROLE);
    if admin != (profile == Profile::Admin) {
        return Err(Error::Profile(format!("the admin role must be set exactly on admin certificates ({profile:?})")));
    }
    if admin && (!eku.contains(&rfc5280::ID_KP_CLIENT_AUTH) || profile.is_ca()) {
        return Err(Error::Profile("an admin certificate is an end entity with clientAuth".into()));
    }
    // Matter 6.2.2: attestation certificates are P-256 keys signed with ecdsa-with-SHA256.
    if profile.is_matter() {
        if tbs.signature.oid != const_oid::db::rfc5912::ECDSA_WITH_SHA_256 {
            return Err(Error::Profile(format!(
                "a Matter {} certificate is signed with ecdsa-with-SHA256 (its issuer's key must be P-256)",
                profile.name()
            )));
        }
        if keys::KeyType::of_spki(tbs.spki).ok() != Some(keys::KeyType::EcdsaP256) {
            return Err(Error::Profile(format!("a Matter {} certificate certifies a P-256 key", profile.name())));
        }
    }
    Ok(())
}

fn ekus(exts: &[Extension]) -> Result<Vec<const_oid::ObjectIdentifier>, Error> {
    match exts.iter().find(|e| e.extn_id == ExtendedKeyUsage::OID) {
        Some(e) => Ok(ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).map_err(|e| Error::der("extKeyUsage", e))?.0),
        None => Ok(vec![]),
    }
}

/// Whether a certificate carries the admin role ([`ADMIN_ROLE`] in its extKeyUsage).
pub fn has_admin_role(cert: &Certificate) -> bool {
    ekus(cert.tbs_certificate.extensions.as_deref().unwrap_or_default()).is_ok_and(|e| e.contains(&ADMIN_ROLE))
}

/// Build, lint and sign a certificate.
pub fn issue(params: &CertParams, issuer: &Issuer<'_>) -> Result<Issued, Error> {
    issue_with(params, issuer, None)
}

/// Like [`issue`], with the issuer's revocation URLs written into the certificate.
pub fn issue_with(params: &CertParams, issuer: &Issuer<'_>, urls: Option<&RevocationUrls>) -> Result<Issued, Error> {
    issue_templated(params, issuer, urls, &[])
}

/// Like [`issue_with`], with a template's extensions ([`crate::template`]):
/// each replaces the profile's extension of the same OID in its place (a
/// template's keyUsage, extKeyUsage) or is appended after the profile's. The
/// result goes through the same lint as every certificate.
pub fn issue_templated(
    params: &CertParams,
    issuer: &Issuer<'_>,
    urls: Option<&RevocationUrls>,
    template_extensions: &[Extension],
) -> Result<Issued, Error> {
    let not_after = params.not_after.min(issuer.not_after);
    let signature = issuer.signer.key_type().signature_algorithm()?;
    let validity = Validity { not_before: x509_time(params.not_before)?, not_after: x509_time(not_after)? };
    let mut extensions = extensions(params, issuer.key_id)?;
    if let Some(u) = urls {
        revocation_extensions(params.profile, u, &mut extensions)?;
    }
    for t in template_extensions {
        match extensions.iter_mut().find(|e| e.extn_id == t.extn_id) {
            Some(e) => *e = t.clone(),
            None => extensions.push(t.clone()),
        }
    }
    let tbs = TbsRef {
        serial: &params.serial,
        signature: &signature,
        issuer: issuer.subject,
        validity: &validity,
        subject: &params.subject,
        spki: &params.spki,
        extensions: &extensions,
    };
    lint(&tbs, params.profile)?;
    let tbs_der = tbs.to_der().map_err(|e| Error::der("TBS certificate", e))?;
    let sig = issuer.signer.sign(&tbs_der)?;
    let cert = CertRef {
        tbs_der: &tbs_der,
        signature_algorithm: &signature,
        signature: BitStringRef::from_bytes(&sig).map_err(|e| Error::der("signature", e))?,
    };
    let der = cert.to_der().map_err(|e| Error::der("certificate", e))?;
    Ok(Issued { der, not_before: params.not_before, not_after })
}

/// Facts about a certificate that callers need often.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// The parsed certificate.
    pub cert: Certificate,
    /// Serial, lowercase hex.
    pub serial: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// subjectKeyIdentifier, if present.
    pub ski: Option<Vec<u8>>,
    /// SHA-256 of the subjectPublicKeyInfo as the certificate encodes it, hex:
    /// the key's fingerprint only when [`key_canonical`] holds.
    pub spki_sha256: String,
    /// Whether basicConstraints says it is a CA.
    pub is_ca: bool,
}

/// Parse a DER certificate and pull out what the authority and agent use.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, Error> {
    let cert = Certificate::from_der(der).map_err(|e| Error::der("certificate", e))?;
    let tbs = &cert.tbs_certificate;
    let spki_der = tbs.subject_public_key_info.to_der().map_err(|e| Error::der("public key", e))?;
    let ski = tbs
        .extensions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.extn_id == SubjectKeyIdentifier::OID)
        .and_then(|e| SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).ok())
        .map(|s| s.0.as_bytes().to_vec());
    let is_ca = tbs
        .extensions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.extn_id == BasicConstraints::OID)
        .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
        .is_some_and(|b| b.ca);
    Ok(CertInfo {
        is_ca,
        serial: crate::serial::serial_hex(&tbs.serial_number),
        not_before: crate::time::unix(&tbs.validity.not_before),
        not_after: crate::time::unix(&tbs.validity.not_after),
        ski,
        spki_sha256: keys::spki_fingerprint(&spki_der),
        cert,
    })
}

/// A certificate's key is in its one canonical form ([`keys::canonical_spki`]),
/// the only form whose fingerprint ([`CertInfo::spki_sha256`]) names the key:
/// another encoding (an EC point compressed, say) hashes to no key a registry
/// compares, blocked or certified. The error says what is wrong with it.
pub fn key_canonical(cert: &Certificate) -> Result<(), Error> {
    let der = cert.tbs_certificate.subject_public_key_info.to_der().map_err(|e| Error::der("public key", e))?;
    keys::canonical_spki(&der).map(|_| ())
}

/// The subjectAltName of a certificate, if it has one.
pub fn subject_alt_name(cert: &Certificate) -> Result<Option<SubjectAltName>, Error> {
    match cert
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.extn_id == SubjectAltName::OID)
    {
        Some(e) => {
            SubjectAltName::from_der(e.extn_value.as_bytes()).map(Some).map_err(|e| Error::der("subjectAltName", e))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyType, SoftKey};
    use crate::name::NameBuilder;
    use crate::serial::system_random_serial;

    fn spki_of(k: &SoftKey) -> SubjectPublicKeyInfoOwned {
        SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap()
    }

    /// A certificate whose key is written in another encoding (here the EC
    /// point compressed) names no key: `key_canonical` says so, and why.
    #[test]
    fn a_certificates_key_is_canonical_only_in_its_one_encoding() {
        let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let name = NameBuilder::default().common_name("dev").unwrap().build();
        let kid = keys::key_identifier(&spki_of(&k));
        let issuer = Issuer { subject: &name, key_id: &kid, not_after: 2_000_000_000, signer: &k };
        let params = CertParams {
            profile: Profile::Root,
            serial: system_random_serial(1_700_000_000).unwrap().0,
            subject: name.clone(),
            spki: spki_of(&k),
            not_before: 1_700_000_000,
            not_after: 2_000_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let mut cert = cert_info(&issue(&params, &issuer).unwrap().der).unwrap().cert;
        assert!(key_canonical(&cert).is_ok());
        let point = cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes().to_vec();
        let mut short = vec![2 | (point[64] & 1)];
        short.extend_from_slice(&point[1..33]);
        cert.tbs_certificate.subject_public_key_info.subject_public_key =
            der::asn1::BitString::from_bytes(&short).unwrap();
        let e = key_canonical(&cert).unwrap_err().to_string();
        assert!(e.contains("compressed"), "{e}");
    }

    #[test]
    fn root_then_device_chain_verifies_and_clamps() {
        let root_key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let root_name = NameBuilder::default().organization("Acme").unwrap().common_name("Acme Root").unwrap().build();
        let root_spki = spki_of(&root_key);
        let root_kid = keys::key_identifier(&root_spki);
        let issuer = Issuer { subject: &root_name, key_id: &root_kid, not_after: 2_000_000_000, signer: &root_key };
        let root = issue(
            &CertParams {
                profile: Profile::Root,
                serial: system_random_serial(1_700_000_000).unwrap().0,
                subject: root_name.clone(),
                spki: root_spki.clone(),
                not_before: 1_700_000_000,
                not_after: 2_000_000_000,
                dns_names: vec![],
                ip_addrs: vec![],
                permitted_subtree: None,
            },
            &issuer,
        )
        .unwrap();
        let dev_key = SoftKey::generate(KeyType::Ed25519).unwrap();
        let dev = issue(
            &CertParams {
                profile: Profile::Device,
                serial: system_random_serial(1_700_000_000).unwrap().0,
                subject: NameBuilder::default().common_name("dev").unwrap().build(),
                spki: spki_of(&dev_key),
                not_before: 1_700_000_000,
                not_after: 3_000_000_000,
                dns_names: vec![],
                ip_addrs: vec![],
                permitted_subtree: None,
            },
            &issuer,
        )
        .unwrap();
        assert_eq!(dev.not_after, 2_000_000_000, "clamped to the issuer");
        let info = cert_info(&dev.der).unwrap();
        assert_eq!(info.not_after, 2_000_000_000);
        let tbs = info.cert.tbs_certificate.to_der().unwrap();
        keys::verify(&root_spki, &info.cert.signature_algorithm, &tbs, info.cert.signature.raw_bytes()).unwrap();
        assert_eq!(cert_info(&root.der).unwrap().ski.unwrap(), root_kid);
    }

    #[test]
    fn only_admin_certificates_carry_the_admin_role() {
        let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let n = NameBuilder::default().common_name("x").unwrap().build();
        let kid = keys::key_identifier(&spki_of(&k));
        let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: &k };
        let params = |profile| params_for(profile, &n, &k);
        let admin = cert_info(&issue(&params(Profile::Admin), &issuer).unwrap().der).unwrap();
        assert!(has_admin_role(&admin.cert));
        let eku = ekus(admin.cert.tbs_certificate.extensions.as_deref().unwrap()).unwrap();
        assert_eq!(eku, vec![rfc5280::ID_KP_CLIENT_AUTH, ADMIN_ROLE]);
        for p in [Profile::Device, Profile::Station, Profile::Server, Profile::OcspSigner] {
            let c = cert_info(&issue(&params(p), &issuer).unwrap().der).unwrap();
            assert!(!has_admin_role(&c.cert), "{p:?}");
        }
        // The lint refuses a role marker on any other profile.
        let mut tbs = admin.cert.tbs_certificate.clone();
        assert!(lint_tbs(&tbs, Profile::Admin).is_ok());
        assert!(matches!(lint_tbs(&tbs, Profile::Device), Err(Error::Profile(m)) if m.contains("admin role")));
        tbs.extensions.as_mut().unwrap().retain(|e| e.extn_id != ExtendedKeyUsage::OID);
        assert!(matches!(lint_tbs(&tbs, Profile::Admin), Err(Error::Profile(_))));
    }

    /// A certificate of `profile` for `subject` and `key`'s public key, valid 1.7e9 to 1.8e9.
    fn params_for(profile: Profile, subject: &Name, key: &SoftKey) -> CertParams {
        CertParams {
            profile,
            serial: system_random_serial(1_700_000_000).unwrap().0,
            subject: subject.clone(),
            spki: spki_of(key),
            not_before: 1_700_000_000,
            not_after: 1_800_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        }
    }

    fn lint_tbs(t: &x509_cert::TbsCertificate, p: Profile) -> Result<(), Error> {
        let none = Vec::new();
        lint(
            &TbsRef {
                serial: &t.serial_number,
                signature: &t.signature,
                issuer: &t.issuer,
                validity: &t.validity,
                subject: &t.subject,
                spki: &t.subject_public_key_info,
                extensions: t.extensions.as_ref().unwrap_or(&none),
            },
            p,
        )
    }

    /// The TBS and the certificate written by hand into one buffer each are exactly
    /// the DER of x509-cert's structures, for every profile and the optional parts.
    #[test]
    fn the_certificate_built_in_one_buffer_is_the_der_of_the_x509_structures() {
        let ca_key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let ca_name = NameBuilder::default().organization("Acme").unwrap().common_name("Acme CA").unwrap().build();
        let kid = keys::key_identifier(&spki_of(&ca_key));
        let issuer = Issuer { subject: &ca_name, key_id: &kid, not_after: 2_000_000_000, signer: &ca_key };
        let urls =
            RevocationUrls { crl: "http://ca.example/crl/1.crl".into(), ocsp: Some("http://ca.example/ocsp".into()) };
        let dev = NameBuilder::default().organization("Acme").unwrap().common_name("SN-1").unwrap().build();
        for (profile, subtree) in [
            (Profile::Root, None),
            (Profile::IssuingCa, None),
            (Profile::DelegatingCa, None),
            (Profile::DelegatedCa, Some(vec![dev.clone()])),
            (Profile::Device, None),
            (Profile::Server, None),
            (Profile::Station, None),
            (Profile::Admin, None),
            (Profile::OcspSigner, None),
        ] {
            let key = SoftKey::generate(KeyType::Ed25519).unwrap();
            let server = profile == Profile::Server;
            let params = CertParams {
                dns_names: if server { vec!["ca.example".into()] } else { vec![] },
                ip_addrs: if server { vec!["127.0.0.1".parse().unwrap()] } else { vec![] },
                permitted_subtree: subtree,
                ..params_for(profile, &dev, &key)
            };
            for u in [None, Some(&urls)] {
                let issued = issue_with(&params, &issuer, u).unwrap();
                let cert = Certificate::from_der(&issued.der).unwrap();
                assert_eq!(cert.to_der().unwrap(), issued.der, "{profile:?}");
                let tbs = cert.tbs_certificate.to_der().unwrap();
                assert_eq!(cert.tbs_certificate.version, Version::V3);
                assert_eq!(cert.tbs_certificate.subject, dev);
                assert_eq!(cert.tbs_certificate.issuer, ca_name);
                keys::verify(&spki_of(&ca_key), &cert.signature_algorithm, &tbs, cert.signature.raw_bytes()).unwrap();
            }
        }
    }

    #[test]
    fn lint_refuses_inverted_validity() {
        let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let n = NameBuilder::default().common_name("x").unwrap().build();
        let kid = keys::key_identifier(&spki_of(&k));
        let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: &k };
        let params = CertParams {
            profile: Profile::Device,
            serial: system_random_serial(1_700_000_000).unwrap().0,
            subject: n.clone(),
            spki: spki_of(&k),
            not_before: 2_100_000_000,
            not_after: 2_200_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        assert!(matches!(issue(&params, &issuer), Err(Error::Profile(_))));
    }
}
