//! Matter device attestation: vendor and product ids, the subjects of the
//! attestation certificates, and a checker written from the Matter core
//! specification's rules (Matter 1.x core specification, chapter 6:
//! 6.2.2 "Device Attestation Certificate (DAC)", 6.2.2.2 "Encoding of Vendor
//! ID and Product ID in subject and issuer fields", 6.2.2.3 DAC, 6.2.2.4
//! "Product Attestation Intermediate (PAI) Certificate", 6.2.2.5 "Product
//! Attestation Authority (PAA) Certificate", and the common X.509 rules of
//! 6.1 "Certificate Common Conventions").
//!
//! The chain is DAC → PAI → PAA: a PAA is a self-signed root a commissioner
//! trusts (in production, one listed in the CSA's Distributed Compliance
//! Ledger), a PAI is a CA for one vendor id (optionally one product id), a
//! DAC is a device's attestation identity. The checker ([`check`],
//! [`check_chain`]) reports every rule a certificate breaks, each with the
//! section it comes from; it does not stop at the first.
//!
//! What it does not check: certification declarations (CD), the DCL,
//! revocation (Matter 1.4's DAC revocation sets) and the legacy `Mvid:`/`Mpid:`
//! common-name encoding (accepted by commissioners, never written here).

use std::fmt;

use const_oid::db::rfc5912;
use const_oid::{AssociatedOid, ObjectIdentifier};
use der::asn1::Utf8StringRef;
use der::{Any, Decode, Encode, Tag, Tagged};
use x509_cert::certificate::Version;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::keys::{self, KeyType};
use crate::name::DeviceSerial;
use crate::Error;

/// The Matter Vendor ID DN attribute, `1.3.6.1.4.1.37244.2.1` (6.2.2.2).
pub const VID_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.37244.2.1");
/// The Matter Product ID DN attribute, `1.3.6.1.4.1.37244.2.2` (6.2.2.2).
pub const PID_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.37244.2.2");

/// Largest DER encoding of an attestation certificate, octets (6.2.2: a DAC,
/// PAI or PAA is at most 600 octets, what commissioners allocate for it).
pub const MAX_CERT_BYTES: usize = 600;

/// A Matter Vendor ID: four hex digits, 0x0001 to 0xFFF4 (0x0000 is
/// "unspecified"; 0xFFF1 to 0xFFF4 are the test vendor ids; above 0xFFF4 is
/// reserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VendorId(pub u16);

/// A Matter Product ID: four hex digits, 0x0001 to 0xFFFF (0x0000 is reserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProductId(pub u16);

fn four_hex(what: &str, s: &str) -> Result<u16, Error> {
    if s.len() != 4 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::BadName(format!("{what} {s:?} must be exactly four hex digits (such as FFF1)")));
    }
    u16::from_str_radix(s, 16).map_err(|e| Error::BadName(format!("{what} {s:?}: {e}")))
}

impl VendorId {
    /// Parse four hex digits (either case) and refuse the ids no product may carry.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let v = four_hex("vendor id", s)?;
        if v == 0 || v > 0xFFF4 {
            return Err(Error::BadName(format!(
                "vendor id {s}: 0000 is unspecified and FFF5 to FFFF are reserved; give a CSA-assigned vendor id or \
                 a test vendor id FFF1 to FFF4"
            )));
        }
        Ok(Self(v))
    }

    /// Whether this is a test vendor id (0xFFF1 to 0xFFF4): for development only.
    pub fn is_test(self) -> bool {
        (0xFFF1..=0xFFF4).contains(&self.0)
    }
}

impl ProductId {
    /// Parse four hex digits (either case); 0000 is refused.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let v = four_hex("product id", s)?;
        if v == 0 {
            return Err(Error::BadName(format!("product id {s}: 0000 is reserved")));
        }
        Ok(Self(v))
    }
}

impl fmt::Display for VendorId {
    /// As the certificates carry it: four uppercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X}", self.0)
    }
}

impl fmt::Display for ProductId {
    /// As the certificates carry it: four uppercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X}", self.0)
    }
}

fn push_utf8(
    rdns: &mut Vec<x509_cert::name::RelativeDistinguishedName>,
    oid: ObjectIdentifier,
    v: &str,
) -> Result<(), Error> {
    let value = Any::from(Utf8StringRef::new(v).map_err(|e| Error::BadName(e.to_string()))?);
    let set = der::asn1::SetOfVec::try_from(vec![x509_cert::attr::AttributeTypeAndValue { oid, value }])
        .map_err(|e| Error::BadName(e.to_string()))?;
    rdns.push(x509_cert::name::RelativeDistinguishedName(set));
    Ok(())
}

fn with_ids(base: Name, vid: Option<VendorId>, pid: Option<ProductId>) -> Result<Name, Error> {
    let mut rdns = base.0;
    if let Some(v) = vid {
        push_utf8(&mut rdns, VID_OID, &v.to_string())?;
    }
    if let Some(p) = pid {
        push_utf8(&mut rdns, PID_OID, &p.to_string())?;
    }
    Ok(x509_cert::name::RdnSequence(rdns))
}

/// A PAA's subject: `O=org, CN=org Matter PAA` (no VID: a PAA for many vendors; 6.2.2.5).
pub fn paa_subject(org: &str) -> Result<Name, Error> {
    Ok(crate::name::NameBuilder::default().organization(org)?.common_name(&format!("{org} Matter PAA"))?.build())
}

/// A PAI's subject: `O=org, CN=org Matter PAI VID, VID[, PID]` (6.2.2.4).
pub fn pai_subject(org: &str, vid: VendorId, pid: Option<ProductId>) -> Result<Name, Error> {
    let base =
        crate::name::NameBuilder::default().organization(org)?.common_name(&format!("{org} Matter PAI {vid}"))?.build();
    with_ids(base, Some(vid), pid)
}

/// A DAC's subject: `O=org, CN=serial, serialNumber=serial, VID, PID` (6.2.2.3).
pub fn dac_subject(org: &str, serial: &DeviceSerial, vid: VendorId, pid: ProductId) -> Result<Name, Error> {
    with_ids(crate::name::device_subject(org, serial)?, Some(vid), Some(pid))
}

/// Which attestation certificate a checked certificate should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Product Attestation Authority (6.2.2.5).
    Paa,
    /// Product Attestation Intermediate (6.2.2.4).
    Pai,
    /// Device Attestation Certificate (6.2.2.3).
    Dac,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Paa => "PAA",
            Self::Pai => "PAI",
            Self::Dac => "DAC",
        }
    }

    fn section(self) -> &'static str {
        match self {
            Self::Paa => "6.2.2.5",
            Self::Pai => "6.2.2.4",
            Self::Dac => "6.2.2.3",
        }
    }
}

/// One broken rule: where in the specification it is, and what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The certificate it is about (`DAC`, `PAI`, `PAA`, or `chain`).
    pub cert: &'static str,
    /// The rule's short name, stable for tests and scripts (`key-usage`, `vid-format`...).
    pub rule: &'static str,
    /// The section of the Matter core specification.
    pub section: &'static str,
    /// What was found.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}, Matter {}]: {}", self.cert, self.rule, self.section, self.detail)
    }
}

/// What the checker read from a certificate, for the chain rules.
struct Read {
    cert: Certificate,
    vid: Option<String>,
    pid: Option<String>,
    ski: Option<Vec<u8>>,
    aki: Option<Vec<u8>>,
    not_before: i64,
    not_after: i64,
}

struct Out<'a> {
    cert: &'static str,
    v: &'a mut Vec<Violation>,
}

impl Out<'_> {
    fn add(&mut self, rule: &'static str, section: &'static str, detail: String) {
        self.v.push(Violation { cert: self.cert, rule, section, detail });
    }
}

/// The values of attribute `oid` in `name`, each as a string if it is a
/// UTF8String, else `Err(tag)`.
fn values(name: &Name, oid: ObjectIdentifier) -> Vec<Result<String, Tag>> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|a| a.oid == oid)
        .map(|a| match a.value.tag() {
            Tag::Utf8String => std::str::from_utf8(a.value.value()).map(str::to_owned).map_err(|_| Tag::Utf8String),
            t => Err(t),
        })
        .collect()
}

/// Check one id attribute (6.2.2.2): at most one, UTF8String, four uppercase hex digits.
fn id_attr(
    o: &mut Out<'_>,
    name: &Name,
    oid: ObjectIdentifier,
    what: &'static str,
    rule: &'static str,
) -> Option<String> {
    let vals = values(name, oid);
    if vals.len() > 1 {
        o.add(rule, "6.2.2.2", format!("the subject carries {} {what} attributes; at most one", vals.len()));
    }
    match vals.into_iter().next()? {
        Err(tag) => {
            o.add(rule, "6.2.2.2", format!("the {what} attribute is a {tag}, not a UTF8String"));
            // Present, if badly encoded: reported once, as its format.
            Some(format!("({tag})"))
        }
        Ok(s) => {
            if s.len() != 4 || !s.chars().all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)) {
                o.add(rule, "6.2.2.2", format!("the {what} {s:?} is not exactly four uppercase hex digits"));
            }
            Some(s)
        }
    }
}

fn find(cert: &Certificate, oid: ObjectIdentifier) -> Vec<&x509_cert::ext::Extension> {
    cert.tbs_certificate.extensions.as_deref().unwrap_or_default().iter().filter(|e| e.extn_id == oid).collect()
}

/// The rules of one certificate of `kind`, appended to `v`.
fn check_one(der: &[u8], kind: Kind, v: &mut Vec<Violation>) -> Option<Read> {
    let sec = kind.section();
    let mut o = Out { cert: kind.name(), v };
    let cert = match Certificate::from_der(der) {
        Ok(c) => c,
        Err(e) => {
            o.add("der", "6.2.2", format!("not a DER X.509 certificate: {e}"));
            return None;
        }
    };
    if der.len() > MAX_CERT_BYTES {
        o.add("size", "6.2.2", format!("{} octets, above the {MAX_CERT_BYTES} allowed", der.len()));
    }
    let tbs = &cert.tbs_certificate;
    if tbs.version != Version::V3 {
        o.add("version", "6.1", format!("version {:?}, not v3", tbs.version));
    }
    let sn = tbs.serial_number.as_bytes();
    if sn.is_empty() || sn.len() > 20 || sn[0] & 0x80 != 0 || sn.iter().all(|b| *b == 0) {
        o.add("serial", "6.1", "the serial number must be positive and at most 20 octets".into());
    }
    if cert.signature_algorithm.oid != rfc5912::ECDSA_WITH_SHA_256 || tbs.signature.oid != rfc5912::ECDSA_WITH_SHA_256 {
        o.add(
            "signature-algorithm",
            sec,
            format!("signed with {}, not ecdsa-with-SHA256", cert.signature_algorithm.oid),
        );
    }
    if cert.signature_algorithm != tbs.signature {
        o.add("signature-algorithm", "6.1", "signatureAlgorithm differs from the TBS signature field".into());
    }
    match KeyType::of_spki(&tbs.subject_public_key_info) {
        Ok(KeyType::EcdsaP256) => {}
        Ok(kt) => o.add("public-key", sec, format!("a {kt} key; the key must be EC P-256 (prime256v1)")),
        Err(e) => o.add("public-key", sec, format!("{e}; the key must be EC P-256 (prime256v1)")),
    }
    let not_before = crate::time::unix(&tbs.validity.not_before);
    let not_after = crate::time::unix(&tbs.validity.not_after);
    if not_before >= not_after {
        o.add("validity", "6.1", "notBefore is not before notAfter".into());
    }
    // Extensions: each at most once; none critical that we (and commissioners) do not know.
    let exts = tbs.extensions.as_deref().unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    let known = [BasicConstraints::OID, KeyUsage::OID, SubjectKeyIdentifier::OID, AuthorityKeyIdentifier::OID];
    for e in exts {
        if !seen.insert(e.extn_id) {
            o.add("extensions", "6.1", format!("extension {} appears twice", e.extn_id));
        }
        if e.critical && !known.contains(&e.extn_id) {
            o.add("extensions", sec, format!("unknown critical extension {}", e.extn_id));
        }
    }
    // basicConstraints: present, critical, CA as the kind says, path length per kind.
    match find(&cert, BasicConstraints::OID).first() {
        None => o.add("basic-constraints", sec, "basicConstraints is missing".into()),
        Some(e) => {
            if !e.critical {
                o.add("basic-constraints", sec, "basicConstraints is not critical".into());
            }
            match BasicConstraints::from_der(e.extn_value.as_bytes()) {
                Err(err) => o.add("basic-constraints", sec, format!("basicConstraints: {err}")),
                Ok(bc) => {
                    let want_ca = kind != Kind::Dac;
                    if bc.ca != want_ca {
                        o.add("basic-constraints", sec, format!("cA is {}, must be {want_ca}", bc.ca));
                    }
                    let plen = bc.path_len_constraint;
                    let ok = match kind {
                        Kind::Dac => plen.is_none(),
                        Kind::Pai => plen == Some(0),
                        Kind::Paa => plen.is_none() || plen == Some(1),
                    };
                    if !ok {
                        let want = match kind {
                            Kind::Dac => "absent",
                            Kind::Pai => "0",
                            Kind::Paa => "absent or 1",
                        };
                        o.add("path-length", sec, format!("pathLenConstraint is {plen:?}, must be {want}"));
                    }
                }
            }
        }
    }
    // keyUsage: present, critical; a DAC signs only, a CA signs certificates and CRLs.
    match find(&cert, KeyUsage::OID).first() {
        None => o.add("key-usage", sec, "keyUsage is missing".into()),
        Some(e) => {
            if !e.critical {
                o.add("key-usage", sec, "keyUsage is not critical".into());
            }
            match KeyUsage::from_der(e.extn_value.as_bytes()) {
                Err(err) => o.add("key-usage", sec, format!("keyUsage: {err}")),
                Ok(ku) => {
                    let bits = ku.0;
                    let ok = match kind {
                        Kind::Dac => bits == der::flagset::FlagSet::from(KeyUsages::DigitalSignature),
                        Kind::Pai | Kind::Paa => {
                            let need = KeyUsages::KeyCertSign | KeyUsages::CRLSign;
                            bits.contains(need) && (bits & !(need | KeyUsages::DigitalSignature)).is_empty()
                        }
                    };
                    if !ok {
                        let want = match kind {
                            Kind::Dac => "digitalSignature only",
                            _ => "keyCertSign and cRLSign (digitalSignature allowed), nothing else",
                        };
                        o.add("key-usage", sec, format!("keyUsage is {bits:?}, must be {want}"));
                    }
                }
            }
        }
    }
    let key_id = |e: &x509_cert::ext::Extension| -> Option<Vec<u8>> {
        SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).ok().map(|s| s.0.as_bytes().to_vec())
    };
    let ski = find(&cert, SubjectKeyIdentifier::OID).first().and_then(|e| key_id(e));
    match &ski {
        None => o.add("subject-key-id", sec, "subjectKeyIdentifier is missing (or unreadable)".into()),
        Some(k) if k.len() != 20 => {
            o.add("subject-key-id", sec, format!("subjectKeyIdentifier is {} octets, not 20", k.len()))
        }
        Some(_) => {}
    }
    let aki = find(&cert, AuthorityKeyIdentifier::OID)
        .first()
        .and_then(|e| AuthorityKeyIdentifier::from_der(e.extn_value.as_bytes()).ok())
        .and_then(|a| a.key_identifier.map(|k| k.as_bytes().to_vec()));
    match (&aki, kind) {
        (None, Kind::Paa) => {}
        (None, _) => o.add("authority-key-id", sec, "authorityKeyIdentifier (keyIdentifier) is missing".into()),
        (Some(a), Kind::Paa) if Some(a) != ski.as_ref() => o.add(
            "authority-key-id",
            sec,
            "a PAA's authorityKeyIdentifier, when present, equals its subjectKeyIdentifier".into(),
        ),
        (Some(a), _) if a.len() != 20 => {
            o.add("authority-key-id", sec, format!("authorityKeyIdentifier is {} octets, not 20", a.len()))
        }
        _ => {}
    }
    // The subject's VID and PID (6.2.2.2).
    let vid = id_attr(&mut o, &tbs.subject, VID_OID, "Vendor ID", "vid-format");
    let pid = id_attr(&mut o, &tbs.subject, PID_OID, "Product ID", "pid-format");
    match kind {
        Kind::Dac if vid.is_none() => o.add("vid-missing", sec, "a DAC's subject must carry the Vendor ID".into()),
        Kind::Pai if vid.is_none() => o.add("vid-missing", sec, "a PAI's subject must carry the Vendor ID".into()),
        _ => {}
    }
    match kind {
        Kind::Dac if pid.is_none() => o.add("pid-missing", sec, "a DAC's subject must carry the Product ID".into()),
        Kind::Paa if pid.is_some() => o.add("pid-present", sec, "a PAA's subject must not carry a Product ID".into()),
        _ => {}
    }
    if kind == Kind::Paa {
        if tbs.issuer != tbs.subject {
            o.add("self-signed", sec, "a PAA is self-signed: its issuer must be its subject".into());
        } else if let Err(e) = verify_by(&cert, &cert) {
            o.add("signature", sec, format!("the self-signature does not verify: {e}"));
        }
    }
    Some(Read { cert, vid, pid, ski, aki, not_before, not_after })
}

fn verify_by(child: &Certificate, issuer: &Certificate) -> Result<(), Error> {
    let tbs = child.tbs_certificate.to_der().map_err(|e| Error::der("TBS certificate", e))?;
    let sig = child.signature.as_bytes().ok_or_else(|| Error::Profile("signature has unused bits".into()))?;
    keys::verify(&issuer.tbs_certificate.subject_public_key_info, &child.signature_algorithm, &tbs, sig)
}

/// Every rule one certificate of `kind` breaks (empty: it conforms).
pub fn check(der: &[u8], kind: Kind) -> Vec<Violation> {
    let mut v = Vec::new();
    check_one(der, kind, &mut v);
    v
}

/// Every rule a DAC, its PAI and their PAA break, each alone and together
/// (6.2.2, 6.2.3 "Device Attestation Procedure" chain rules): names and
/// signatures link DAC → PAI → PAA; authority key ids match the issuers'
/// subject key ids; the DAC's validity lies within the PAI's and the PAI's
/// within the PAA's; the DAC's VID is the PAI's (and the PAA's, when it
/// carries one); a PAI's PID, when present, is the DAC's. With `now`, each
/// certificate must be valid at `now` too.
pub fn check_chain(dac: &[u8], pai: &[u8], paa: &[u8], now: Option<i64>) -> Vec<Violation> {
    let mut v = Vec::new();
    let d = check_one(dac, Kind::Dac, &mut v);
    let i = check_one(pai, Kind::Pai, &mut v);
    let a = check_one(paa, Kind::Paa, &mut v);
    let (Some(d), Some(i), Some(a)) = (d, i, a) else { return v };
    let mut o = Out { cert: "chain", v: &mut v };
    for (child, parent, what) in [(&d, &i, "DAC → PAI"), (&i, &a, "PAI → PAA")] {
        if child.cert.tbs_certificate.issuer != parent.cert.tbs_certificate.subject {
            o.add("issuer-name", "6.2.3", format!("{what}: the issuer name is not the issuer's subject"));
        }
        if let Err(e) = verify_by(&child.cert, &parent.cert) {
            o.add("signature", "6.2.3", format!("{what}: the signature does not verify: {e}"));
        }
        if child.aki.is_some() && child.aki != parent.ski {
            o.add(
                "authority-key-id",
                "6.2.3",
                format!("{what}: authorityKeyIdentifier is not the issuer's subjectKeyIdentifier"),
            );
        }
        if child.not_before < parent.not_before || child.not_after > parent.not_after {
            o.add("validity", "6.2.3", format!("{what}: the validity period is not within the issuer's"));
        }
    }
    if let Some(now) = now {
        for (r, name) in [(&d, "DAC"), (&i, "PAI"), (&a, "PAA")] {
            if now < r.not_before || now > r.not_after {
                o.add("validity", "6.2.3", format!("the {name} is not valid now ({now})"));
            }
        }
    }
    if d.vid.is_some() && d.vid != i.vid {
        o.add("vid-mismatch", "6.2.3", format!("the DAC's VID {:?} is not the PAI's {:?}", d.vid, i.vid));
    }
    if a.vid.is_some() && a.vid != i.vid {
        o.add("vid-mismatch", "6.2.3", format!("the PAI's VID {:?} is not the PAA's {:?}", i.vid, a.vid));
    }
    if i.pid.is_some() && i.pid != d.pid {
        o.add("pid-mismatch", "6.2.3", format!("the PAI's PID {:?} is not the DAC's {:?}", i.pid, d.pid));
    }
    v
}

/// Which kind a certificate looks like (for `iotpki matter check` on files
/// given in any order): self-signed is a PAA, a CA otherwise a PAI, else a DAC.
pub fn kind_of(der: &[u8]) -> Result<Kind, Error> {
    let c = Certificate::from_der(der).map_err(|e| Error::der("certificate", e))?;
    if c.tbs_certificate.issuer == c.tbs_certificate.subject {
        return Ok(Kind::Paa);
    }
    let ca = find(&c, BasicConstraints::OID)
        .first()
        .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
        .is_some_and(|b| b.ca);
    Ok(if ca { Kind::Pai } else { Kind::Dac })
}

/// The VID and PID in a subject, as written (for display).
pub fn ids_of(name: &Name) -> (Option<String>, Option<String>) {
    let first = |oid| values(name, oid).into_iter().next().and_then(Result::ok);
    (first(VID_OID), first(PID_OID))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Signer, SoftKey};
    use crate::profile::{self, CertParams, Issuer, Profile};
    use der::asn1::{BitString, OctetString};
    use spki::SubjectPublicKeyInfoOwned;
    use x509_cert::ext::Extension;
    use x509_cert::TbsCertificate;

    const NOW: i64 = 1_800_000_000;

    struct Ca {
        key: SoftKey,
        der: Vec<u8>,
        name: Name,
        kid: Vec<u8>,
        not_after: i64,
    }

    impl Ca {
        fn issuer(&self) -> Issuer<'_> {
            Issuer { subject: &self.name, key_id: &self.kid, not_after: self.not_after, signer: &self.key }
        }
    }

    fn spki_of(k: &SoftKey) -> SubjectPublicKeyInfoOwned {
        SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap()
    }

    fn params(profile: Profile, subject: Name, key: &SoftKey, nb: i64, na: i64) -> CertParams {
        CertParams {
            profile,
            serial: crate::serial::system_random_serial(NOW).unwrap().0,
            subject,
            spki: spki_of(key),
            not_before: nb,
            not_after: na,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        }
    }

    fn paa() -> Ca {
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let name = paa_subject("Acme").unwrap();
        let kid = keys::key_identifier(&spki_of(&key));
        let na = NOW + 1000 * 86_400;
        let issuer = Issuer { subject: &name, key_id: &kid, not_after: na, signer: &key };
        let der = profile::issue(&params(Profile::MatterPaa, name.clone(), &key, NOW - 100, na), &issuer).unwrap().der;
        Ca { key, der, name, kid, not_after: na }
    }

    fn pai(paa: &Ca, pid: Option<ProductId>) -> Ca {
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let name = pai_subject("Acme", VendorId::parse("FFF1").unwrap(), pid).unwrap();
        let kid = keys::key_identifier(&spki_of(&key));
        let na = NOW + 900 * 86_400;
        let der =
            profile::issue(&params(Profile::MatterPai, name.clone(), &key, NOW - 50, na), &paa.issuer()).unwrap().der;
        Ca { key, der, name, kid, not_after: na }
    }

    fn dac_with(pai: &Ca, key: &SoftKey, vid: &str, pid: &str) -> Vec<u8> {
        let sn = DeviceSerial::parse("SN-1").unwrap();
        let name = dac_subject("Acme", &sn, VendorId::parse(vid).unwrap(), ProductId::parse(pid).unwrap()).unwrap();
        profile::issue(&params(Profile::MatterDac, name, key, NOW - 10, NOW + 5000 * 86_400), &pai.issuer())
            .unwrap()
            .der
    }

    fn dac(pai: &Ca) -> Vec<u8> {
        dac_with(pai, &SoftKey::generate(KeyType::EcdsaP256).unwrap(), "FFF1", "8000")
    }

    /// `der` changed by `f` and signed again by `signer`.
    fn resign(der: &[u8], signer: &SoftKey, f: impl FnOnce(&mut TbsCertificate)) -> Vec<u8> {
        let mut c = Certificate::from_der(der).unwrap();
        f(&mut c.tbs_certificate);
        let sig = signer.sign(&c.tbs_certificate.to_der().unwrap()).unwrap();
        c.signature_algorithm = c.tbs_certificate.signature.clone();
        c.signature = BitString::from_bytes(&sig).unwrap();
        c.to_der().unwrap()
    }

    fn ext_mut(t: &mut TbsCertificate, oid: ObjectIdentifier) -> &mut Extension {
        t.extensions.as_mut().unwrap().iter_mut().find(|e| e.extn_id == oid).unwrap()
    }

    fn rules(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|x| x.rule).collect()
    }

    #[test]
    fn ids_parse_strictly() {
        assert_eq!(VendorId::parse("fff1").unwrap().to_string(), "FFF1");
        assert!(VendorId::parse("FFF1").unwrap().is_test());
        for bad in ["0000", "FFF5", "FFFF", "FFF", "FFF10", "GGGG", "", "0x01"] {
            assert!(VendorId::parse(bad).is_err(), "{bad}");
        }
        assert!(ProductId::parse("0000").is_err());
        assert_eq!(ProductId::parse("8000").unwrap().to_string(), "8000");
    }

    #[test]
    fn issued_paa_pai_and_dac_conform() {
        let a = paa();
        for pid in [None, Some(ProductId(0x8000))] {
            let i = pai(&a, pid);
            let d = dac(&i);
            assert_eq!(check(&a.der, Kind::Paa), vec![]);
            assert_eq!(check(&i.der, Kind::Pai), vec![]);
            assert_eq!(check(&d, Kind::Dac), vec![]);
            assert_eq!(check_chain(&d, &i.der, &a.der, Some(NOW)), vec![]);
            assert_eq!(kind_of(&d).unwrap(), Kind::Dac);
            assert_eq!(kind_of(&i.der).unwrap(), Kind::Pai);
            assert_eq!(kind_of(&a.der).unwrap(), Kind::Paa);
            assert!(d.len() <= MAX_CERT_BYTES);
            // The DAC's notAfter is clamped into the PAI's.
            let c = Certificate::from_der(&d).unwrap();
            assert_eq!(crate::time::unix(&c.tbs_certificate.validity.not_after), i.not_after);
        }
    }

    #[test]
    fn each_broken_rule_is_reported_by_name() {
        let a = paa();
        let i = pai(&a, None);
        let d = dac(&i);
        // A DAC with keyCertSign in its keyUsage.
        let ku = KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyCertSign);
        let bad = resign(&d, &i.key, |t| {
            ext_mut(t, KeyUsage::OID).extn_value = OctetString::new(ku.to_der().unwrap()).unwrap()
        });
        assert_eq!(rules(&check(&bad, Kind::Dac)), vec!["key-usage"]);
        // A DAC whose basicConstraints is not critical.
        let bad = resign(&d, &i.key, |t| ext_mut(t, BasicConstraints::OID).critical = false);
        assert_eq!(rules(&check(&bad, Kind::Dac)), vec!["basic-constraints"]);
        // A DAC whose keyUsage is not critical.
        let bad = resign(&d, &i.key, |t| ext_mut(t, KeyUsage::OID).critical = false);
        assert_eq!(rules(&check(&bad, Kind::Dac)), vec!["key-usage"]);
        // A DAC without its VID.
        let bad = resign(&d, &i.key, |t| {
            t.subject.0.retain(|r| r.0.iter().all(|a| a.oid != VID_OID));
        });
        let v = check(&bad, Kind::Dac);
        assert_eq!(rules(&v), vec!["vid-missing"], "{v:?}");
        // ...and in the chain, its missing VID is the missing rule (no mismatch is invented).
        let (ok_pai, ok_paa) = (i.der.clone(), a.der.clone());
        assert!(rules(&check_chain(&bad, &ok_pai, &ok_paa, None)).contains(&"vid-missing"));
        // A lowercase PID.
        let bad = resign(&d, &i.key, |t| {
            for rdn in t.subject.0.iter_mut() {
                let mut atvs: Vec<_> = rdn.0.iter().cloned().collect();
                for a in atvs.iter_mut().filter(|a| a.oid == PID_OID) {
                    a.value = Any::from(Utf8StringRef::new("800a").unwrap());
                }
                rdn.0 = der::asn1::SetOfVec::try_from(atvs).unwrap();
            }
        });
        assert_eq!(rules(&check(&bad, Kind::Dac)), vec!["pid-format"]);
        // A PrintableString VID.
        let bad = resign(&d, &i.key, |t| {
            for rdn in t.subject.0.iter_mut() {
                let mut atvs: Vec<_> = rdn.0.iter().cloned().collect();
                for a in atvs.iter_mut().filter(|a| a.oid == VID_OID) {
                    a.value = Any::from(der::asn1::PrintableStringRef::new("FFF1").unwrap());
                }
                rdn.0 = der::asn1::SetOfVec::try_from(atvs).unwrap();
            }
        });
        assert_eq!(rules(&check(&bad, Kind::Dac)), vec!["vid-format"]);
        // A DAC for a P-384 key (signed outside our profile, which refuses it).
        let p384 = SoftKey::generate(KeyType::EcdsaP384).unwrap();
        let bad = resign(&d, &i.key, |t| t.subject_public_key_info = spki_of(&p384));
        assert_eq!(rules(&check(&bad, Kind::Dac)), vec!["public-key"]);
        let sn = DeviceSerial::parse("SN-2").unwrap();
        let name = dac_subject("Acme", &sn, VendorId(0xFFF1), ProductId(0x8000)).unwrap();
        let refused = profile::issue(&params(Profile::MatterDac, name, &p384, NOW, NOW + 10), &i.issuer());
        assert!(matches!(refused, Err(Error::Profile(m)) if m.contains("P-256")));
        // A PAI with path length 1.
        let bc = BasicConstraints { ca: true, path_len_constraint: Some(1) };
        let bad_pai = resign(&i.der, &a.key, |t| {
            ext_mut(t, BasicConstraints::OID).extn_value = OctetString::new(bc.to_der().unwrap()).unwrap()
        });
        assert_eq!(rules(&check(&bad_pai, Kind::Pai)), vec!["path-length"]);
        // A PAA with path length 2.
        let bc = BasicConstraints { ca: true, path_len_constraint: Some(2) };
        let bad_paa = resign(&a.der, &a.key, |t| {
            ext_mut(t, BasicConstraints::OID).extn_value = OctetString::new(bc.to_der().unwrap()).unwrap()
        });
        assert_eq!(rules(&check(&bad_paa, Kind::Paa)), vec!["path-length"]);
        // A DAC of another vendor under the FFF1 PAI.
        let other = dac_with(&i, &SoftKey::generate(KeyType::EcdsaP256).unwrap(), "FFF2", "8000");
        assert_eq!(check(&other, Kind::Dac), vec![]);
        assert_eq!(rules(&check_chain(&other, &i.der, &a.der, None)), vec!["vid-mismatch"]);
        // A PAI bound to product 8001 over a DAC of 8000.
        let i2 = pai(&a, Some(ProductId(0x8001)));
        assert_eq!(rules(&check_chain(&dac(&i2), &i2.der, &a.der, None)), vec!["pid-mismatch"]);
        // A DAC signed by another PAI than the one presented.
        let stranger = pai(&a, None);
        let v = check_chain(&dac(&stranger), &i.der, &a.der, None);
        assert_eq!(rules(&v), vec!["signature", "authority-key-id"], "{v:?}");
        // Outside its validity now.
        assert_eq!(rules(&check_chain(&d, &i.der, &a.der, Some(NOW - 1000))), vec!["validity"; 3]);
        // A DAC valid beyond its PAI (signed outside our profile, which clamps).
        let late = resign(&d, &i.key, |t| t.validity.not_after = crate::time::x509_time(i.not_after + 1).unwrap());
        assert_eq!(rules(&check_chain(&late, &i.der, &a.der, None)), vec!["validity"]);
        // Not a certificate at all.
        assert_eq!(rules(&check(b"junk", Kind::Dac)), vec!["der"]);
    }
}
