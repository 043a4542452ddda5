//! Commissioning: an operator's authority issues operational certificates to
//! devices born elsewhere. It trusts the birth certificates of the
//! manufacturers it imported (`iotpki trust add-manufacturer`), and issues
//! only to devices it owns (`iotpki device claim`, or an ownership voucher).
//!
//! The device connects with its birth certificate (mutual TLS 1.3, possession
//! of the birth key proven by the handshake) and asks `simpleenroll` for a
//! certificate for a fresh key. Checked, in this order:
//! - the birth chain validates (RFC 5280, with name constraints, by
//!   [`iotpki_core::chain`]) up to a trusted manufacturing CA, now, for client auth;
//! - the leaf is a birth certificate, not another certificate under the same CA
//!   (`not_a_birth`), and the trusted CA is a manufacturing CA, never a root or
//!   an operational CA (`add_manufacturer` refuses those);
//! - if this authority issued the birth certificate itself, it is not revoked;
//! - the request carries the birth certificate's serial and a key that is not the birth key;
//! - in the issuance's transaction: the device is owned and neither revoked nor handed on.

use iotpki_core::asn1::der::asn1::ObjectIdentifier;
use iotpki_core::asn1::der::oid::AssociatedOid;
use iotpki_core::asn1::der::Decode;
use iotpki_core::asn1::x509_cert::ext::pkix::constraints::name::NameConstraints;
use iotpki_core::asn1::x509_cert::ext::pkix::name::GeneralName;
use iotpki_core::asn1::x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use iotpki_core::asn1::x509_cert::name::RdnSequence;
use iotpki_core::asn1::x509_cert::Certificate;
use iotpki_core::name::{self, DeviceSerial};
use iotpki_core::profile;
use iotpki_core::{keys, pem};
use iotpki_store::{AuditEvent, CertStatus, Claim, ManufacturerRecord, OwnershipStatus, Store};
use rustls_pki_types::CertificateDer;

use crate::error::Refusal;
use crate::{Authority, AuthorityError};
use iotpki_core::clock::Clock;

/// id-kp-clientAuth (RFC 5280 section 4.2.1.12).
const CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

/// id-at-commonName.
pub(crate) const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// Longest claim list accepted in one go.
pub const MAX_CLAIM: usize = 1_000_000;

/// A birth certificate that passed every check.
#[derive(Clone, Debug)]
pub struct Birth {
    /// The device serial it names.
    pub device: DeviceSerial,
    /// The manufacturer whose CA it chains to.
    pub manufacturer: String,
    /// That manufacturing CA's certificate, DER.
    pub manufacturer_cert: Vec<u8>,
    /// SHA-256 of the birth key (subjectPublicKeyInfo).
    pub spki_sha256: String,
    /// SHA-256 (hex) of the manufacturing CA's subjectPublicKeyInfo.
    pub manufacturer_spki: String,
    /// SHA-256 (hex) of the birth certificate's DER.
    pub birth_sha256: String,
    /// The birth certificate's serial (hex).
    pub cert_serial: String,
    /// The birth certificate, DER.
    pub cert_der: Vec<u8>,
}

/// Trust the manufacturing CA in `pem_text` (the first certificate) as a
/// birth issuer under `name` (its subject's CN when `None`).
pub fn add_manufacturer(
    store: &dyn Store,
    clock: &dyn Clock,
    name: Option<&str>,
    pem_text: &str,
    actor: &str,
) -> Result<ManufacturerRecord, AuthorityError> {
    let der = pem::decode_all("CERTIFICATE", pem_text)
        .map_err(|e| AuthorityError::malformed(format!("manufacturer certificate: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| AuthorityError::malformed("the file holds no certificate".into()))?;
    let info = profile::cert_info(&der)?;
    if let Some(why) = not_a_manufacturing_ca(&info.cert) {
        return Err(AuthorityError::malformed(format!(
            "{} is not a manufacturing CA ({why}): import the manufacturer's manufacturing CA, the one that \
             signs its birth certificates (ca/manufacturing.crt of its authority), not its root or operational CA",
            name::to_rfc4514(&info.cert.tbs_certificate.subject)
        )));
    }
    let now = clock.now();
    if info.not_after <= now {
        return Err(AuthorityError::malformed(format!(
            "the manufacturing CA expired at {}",
            iotpki_core::time::rfc3339(info.not_after)
        )));
    }
    let name = match name {
        Some(n) => n.to_string(),
        None => name::attribute(&info.cert.tbs_certificate.subject, COMMON_NAME)
            .ok_or_else(|| AuthorityError::malformed("the CA has no common name: give --name".into()))?,
    };
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
        return Err(AuthorityError::malformed("a manufacturer name is 1 to 128 printable characters".into()));
    }
    let rec = ManufacturerRecord { name: name.clone(), cert_der: der, spki_sha256: info.spki_sha256, added_at: now };
    let audit = AuditEvent {
        at: now,
        actor: actor.into(),
        action: "trust.add-manufacturer".into(),
        target: name,
        detail: format!("subject={} spki={}", info.cert.tbs_certificate.subject, rec.spki_sha256),
    };
    store.add_manufacturer(rec.clone(), audit)?;
    Ok(rec)
}

/// Why `cert` is not a manufacturing (birth-issuing) CA as our profiles make
/// one ([`profile::Profile::DelegatingCa`]): a CA under a root, not
/// self-issued, with keyCertSign, pathLenConstraint 1 (it certifies births
/// and, one level down, its stations' delegated CAs), and no
/// extendedKeyUsage that excludes client authentication. A root would make
/// every certificate of the maker a birth (its operational certificates
/// too); an operational CA (pathLenConstraint 0) issues operational
/// certificates, not births.
fn not_a_manufacturing_ca(cert: &Certificate) -> Option<String> {
    let tbs = &cert.tbs_certificate;
    if name::rfc5280_equal(&tbs.subject, &tbs.issuer) {
        return Some("it is self-issued: a root CA".into());
    }
    let bc = match extension::<BasicConstraints>(cert) {
        Ok(Some(bc)) if bc.ca => bc,
        Ok(_) => return Some("basicConstraints does not make it a CA".into()),
        Err(e) => return Some(e),
    };
    if bc.path_len_constraint != Some(1) {
        return Some(format!(
            "pathLenConstraint {}, where a manufacturing CA has 1 (an operational CA has 0, a root none)",
            bc.path_len_constraint.map_or("absent".to_string(), |p| p.to_string())
        ));
    }
    match extension::<KeyUsage>(cert) {
        Ok(Some(ku)) if ku.key_cert_sign() => {}
        Ok(_) => return Some("its keyUsage lacks keyCertSign".into()),
        Err(e) => return Some(e),
    }
    match extension::<ExtendedKeyUsage>(cert) {
        Ok(Some(eku)) if !eku.0.contains(&CLIENT_AUTH) => {
            Some("its extendedKeyUsage excludes client authentication".into())
        }
        Ok(_) => None,
        Err(e) => Some(e),
    }
}

fn extension<T: for<'a> Decode<'a> + AssociatedOid>(cert: &Certificate) -> Result<Option<T>, String> {
    let mut found =
        cert.tbs_certificate.extensions.as_deref().unwrap_or_default().iter().filter(|e| e.extn_id == T::OID);
    let Some(e) = found.next() else { return Ok(None) };
    if found.next().is_some() {
        return Err(format!("extension {} appears twice", T::OID));
    }
    T::from_der(e.extn_value.as_bytes()).map(Some).map_err(|err| format!("extension {} is malformed: {err}", T::OID))
}

/// Why `leaf`, which chains to a trusted manufacturing CA, is not a birth
/// certificate (an IEEE 802.1AR IDevID as our device profile makes it):
/// keyUsage digitalSignature and no CA usage; extendedKeyUsage clientAuth
/// and no other role; a subject naming one serial, as its CN and
/// serialNumber; issued by the manufacturing CA itself or by a delegated CA
/// (a station's name-constrained sub-CA). An operational certificate, a
/// station's or a server's, is refused here even when it chains to the same CA.
fn not_a_birth(leaf: &Certificate, inter: &[Certificate], anchor: &Certificate) -> Option<String> {
    match extension::<KeyUsage>(leaf) {
        Ok(Some(ku)) if ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign() => {}
        Ok(_) => return Some("its keyUsage is not digitalSignature alone".into()),
        Err(e) => return Some(e),
    }
    match extension::<ExtendedKeyUsage>(leaf) {
        Ok(Some(eku)) if eku.0 == [CLIENT_AUTH] => {}
        Ok(_) => return Some("its extendedKeyUsage is not clientAuth alone".into()),
        Err(e) => return Some(e),
    }
    // One CN and one serialNumber, equal: a name inside a delegated CA's subtree
    // `O=org, OU=batch, CN=S-1` may carry more RDNs (`..., CN=S-1, serialNumber=V-1`).
    let subject = &leaf.tbs_certificate.subject;
    let serials = name::serial_numbers(subject);
    let cns = subject.0.iter().flat_map(|r| r.0.iter()).filter(|a| a.oid == COMMON_NAME).count();
    if serials.len() != 1 || cns != 1 || name::attribute(subject, COMMON_NAME).as_deref() != Some(serials[0].as_str()) {
        return Some("its subject does not name exactly one serial, as its one CN and its one serialNumber".into());
    }
    let issuer = &leaf.tbs_certificate.issuer;
    if name::rfc5280_equal(issuer, &anchor.tbs_certificate.subject) {
        return None;
    }
    let issuers: Vec<&Certificate> =
        inter.iter().filter(|c| name::rfc5280_equal(&c.tbs_certificate.subject, issuer)).collect();
    if issuers.is_empty() {
        return Some("it was issued neither by the manufacturing CA nor by a station's delegated CA".into());
    }
    // Issued by a delegated CA: path validation matched its subtrees as RFC 5280
    // 7.1 asks (case and spaces folded); a birth must also be inside one exactly,
    // so that a subtree for serial `S-1` never admits serial `s-1`.
    for ca in issuers {
        let permitted = match extension::<NameConstraints>(ca) {
            Ok(Some(nc)) => nc.permitted_subtrees.unwrap_or_default(),
            Ok(None) => {
                return Some("it was issued neither by the manufacturing CA nor by a station's delegated CA".into())
            }
            Err(e) => return Some(e),
        };
        let exact = permitted.iter().any(|t| match &t.base {
            GeneralName::DirectoryName(base) => {
                base.0.len() <= subject.0.len()
                    && name::equivalent(base, &RdnSequence(subject.0[..base.0.len()].to_vec()))
            }
            _ => false,
        });
        if !exact {
            return Some("its subject is not exactly inside a subtree its delegated CA was given".into());
        }
    }
    None
}

/// The first line of a births file (`iotpki device export-births`).
pub const BIRTHS_HEADER: &str = "# iotpki births v1";

/// The column line of a births file.
pub const BIRTHS_COLUMNS: &str = "serial,birth_sha256,manufacturer_ca_sha256";

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parse a births file: after [`BIRTHS_HEADER`] and [`BIRTHS_COLUMNS`], one
/// device a line, `SERIAL,SHA256 OF THE BIRTH CERTIFICATE (DER),SHA256 OF THE
/// MANUFACTURING CA'S subjectPublicKeyInfo`, lowercase hex; blank lines and
/// `#` comments skipped; a serial at most once.
pub fn parse_births(text: &str) -> Result<Vec<Claim>, AuthorityError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, l)) if l.trim() == BIRTHS_HEADER => {}
        _ => {
            return Err(AuthorityError::malformed(format!(
                "a births file starts with {BIRTHS_HEADER:?} (make it with `iotpki device export-births` at the \
                 manufacturer); a list of bare serials no longer claims devices"
            )))
        }
    }
    for (i, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line == BIRTHS_COLUMNS {
            continue;
        }
        let bad = |m: String| AuthorityError::malformed(format!("births line {}: {m}", i + 1));
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [serial, birth, mfg] = f.as_slice() else {
            return Err(bad(format!("expected {BIRTHS_COLUMNS}, found {} fields", f.len())));
        };
        let s = DeviceSerial::parse(serial).map_err(|e| bad(e.to_string()))?;
        if !is_sha256_hex(birth) || !is_sha256_hex(mfg) {
            return Err(bad("the hashes are 64 lowercase hex digits (SHA-256)".into()));
        }
        if !seen.insert(s.to_string()) {
            return Err(bad(format!("serial {s} is listed twice")));
        }
        out.push(Claim {
            device_serial: s.to_string(),
            birth_sha256: birth.to_string(),
            manufacturer_spki: mfg.to_string(),
        });
        if out.len() > MAX_CLAIM {
            return Err(AuthorityError::malformed(format!("claim at most {MAX_CLAIM} devices at once")));
        }
    }
    if out.is_empty() {
        return Err(AuthorityError::malformed("the births file names no device".into()));
    }
    Ok(out)
}

/// Take ownership of the devices in the births file `text` (see
/// [`parse_births`]): each bound to its birth certificate and its
/// manufacturing CA, which must be a trusted manufacturer. Commissioning then
/// accepts exactly that birth certificate for the serial, no other. Answers
/// `(listed, new)`. A bare serial does not claim: a key that chains to the
/// manufacturer (a station's delegated CA, say) could present any birth for it.
pub fn claim_devices(
    store: &dyn Store,
    clock: &dyn Clock,
    text: &str,
    actor: &str,
) -> Result<(usize, u64), AuthorityError> {
    let claims = parse_births(text)?;
    let trusted: std::collections::HashSet<String> =
        store.manufacturers()?.into_iter().map(|m| m.spki_sha256).collect();
    if let Some(c) = claims.iter().find(|c| !trusted.contains(&c.manufacturer_spki)) {
        return Err(AuthorityError::malformed(format!(
            "device {} was born under manufacturing CA {}, which this authority does not trust \
             (`iotpki trust add-manufacturer` first)",
            c.device_serial, c.manufacturer_spki
        )));
    }
    let listed = claims.len();
    let now = clock.now();
    let audit = AuditEvent {
        at: now,
        actor: actor.into(),
        action: "device.claim".into(),
        target: format!("{listed} devices"),
        detail: format!(
            "first={} birth={} last={} birth={}",
            claims[0].device_serial,
            claims[0].birth_sha256,
            claims[listed - 1].device_serial,
            claims[listed - 1].birth_sha256
        ),
    };
    let new = store.claim_devices(claims, "claim", now, audit)?;
    Ok((listed, new))
}

impl Authority {
    /// A births file (see [`parse_births`]) for the devices born here, online
    /// or offline (synced from a station), whose birth certificate is good:
    /// all, or the serials in `serials` (each must have one). What a
    /// manufacturer hands an operator with the devices it sells; the operator
    /// feeds it to `device claim --births`.
    pub fn export_births(&self, serials: Option<&[String]>) -> Result<String, AuthorityError> {
        // The manufacturing CA each birth chains to: the birth CA, or one it
        // succeeded (`ca rotate --new-issuing-keys`), directly or through a
        // station's delegated CA.
        let mut mfg_of: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
        let q = iotpki_store::CertQuery { profile: Some(profile::Profile::Device.name().into()), ..Default::default() };
        // Newest first: the first good birth of a serial is its current one.
        let mut births = std::collections::BTreeMap::new();
        for c in self.store.list_certificates(&q)? {
            let (CertStatus::Good, Some(sn)) = (&c.status, &c.device_serial) else { continue };
            if births.contains_key(sn) {
                continue;
            }
            if !mfg_of.contains_key(&c.ca) {
                let mfg = match self.birth_issuer(&c.ca)? {
                    Some(ca) => Some(profile::cert_info(&ca.cert_der)?.spki_sha256),
                    None => None,
                };
                mfg_of.insert(c.ca.clone(), mfg);
            }
            if let Some(Some(mfg)) = mfg_of.get(&c.ca) {
                births.insert(sn.clone(), (keys::sha256_hex(&c.der), mfg.clone()));
            }
        }
        let mut out = format!("{BIRTHS_HEADER}\n{BIRTHS_COLUMNS}\n");
        let mut line = |sn: &str, (h, mfg): &(String, String)| out.push_str(&format!("{sn},{h},{mfg}\n"));
        match serials {
            None => births.iter().for_each(|(sn, h)| line(sn, h)),
            Some(list) => {
                for sn in list {
                    let h = births.get(sn).ok_or_else(|| {
                        AuthorityError::not_found(format!(
                            "device {sn} has no good birth certificate from this authority"
                        ))
                    })?;
                    line(sn, h);
                }
            }
        }
        Ok(out)
    }

    /// Check a birth certificate chain (leaf first) as presented in the TLS handshake.
    pub fn check_birth(&self, chain: &[CertificateDer<'_>]) -> Result<Birth, AuthorityError> {
        let leaf = chain.first().ok_or_else(|| {
            AuthorityError::unauthenticated(
                "commissioning needs the birth certificate as the TLS client certificate".into(),
            )
        })?;
        let info = profile::cert_info(leaf)
            .map_err(|e| AuthorityError::Refused(Refusal::Client(format!("client certificate is malformed: {e}"))))?;
        // Before anything else: a key in another encoding (an EC point compressed, say) has a
        // fingerprint that names no key, so the blocked-key and one-key-one-device checks
        // below would compare nothing. No birth iotpki issues or records has one.
        profile::key_canonical(&info.cert).map_err(|e| {
            AuthorityError::Refused(Refusal::Client(format!("the birth certificate's key is refused: {e}")))
        })?;
        let inter: Vec<Vec<u8>> = chain[1..].iter().map(|c| c.to_vec()).collect();
        let now = self.clock.now();
        let manufacturers = self.store.manufacturers()?;
        if manufacturers.is_empty() {
            return Err(AuthorityError::Refused(Refusal::Client(
                "this authority trusts no manufacturer yet (`iotpki trust add-manufacturer`)".into(),
            )));
        }
        let mut why = Vec::new();
        let mut found = None;
        for m in &manufacturers {
            match iotpki_core::chain::verify(leaf, &inter, &m.cert_der, now, CLIENT_AUTH) {
                Ok(()) => {
                    found = Some((m.name.clone(), m.cert_der.clone(), m.spki_sha256.clone()));
                    break;
                }
                Err(e) => why.push(e.to_string()),
            }
        }
        let Some((manufacturer, manufacturer_cert, manufacturer_spki)) = found else {
            let detail = if manufacturers.len() == 1 { format!(" ({})", why.join("; ")) } else { String::new() };
            return Err(AuthorityError::Refused(Refusal::Client(format!(
                "the birth certificate does not chain to a trusted manufacturer{detail}"
            ))));
        };
        if info.is_ca {
            return Err(AuthorityError::Refused(Refusal::Client("a CA certificate is not a birth certificate".into())));
        }
        // A birth key or a manufacturer's CA key found in a firmware image proves nothing.
        self.refuse_blocked_key(&info.spki_sha256)?;
        self.refuse_blocked_key(&manufacturer_spki)?;
        let parsed: Vec<Certificate> = inter.iter().filter_map(|d| Certificate::from_der(d).ok()).collect();
        let anchor = Certificate::from_der(&manufacturer_cert).map_err(|e| {
            AuthorityError::Refused(Refusal::Client(format!("the trusted manufacturing CA is unreadable: {e}")))
        })?;
        if let Some(why) = not_a_birth(&info.cert, &parsed, &anchor) {
            return Err(AuthorityError::Refused(Refusal::Client(format!(
                "the client certificate chains to manufacturer {manufacturer} but is not a birth certificate ({why})"
            ))));
        }
        // Issued here (the authority is its own manufacturer): our record must agree.
        if let Some(rec) = self.store.certificate(&info.serial)? {
            if rec.der == leaf.as_ref() {
                if let CertStatus::Revoked { .. } = rec.status {
                    return Err(AuthorityError::Refused(Refusal::Client(format!(
                        "birth certificate {} is revoked",
                        info.serial
                    ))));
                }
                if rec.profile != profile::Profile::Device.name() {
                    return Err(AuthorityError::Refused(Refusal::Client(format!(
                        "a {} certificate is not a birth certificate",
                        rec.profile
                    ))));
                }
            }
        }
        let serials = name::serial_numbers(&info.cert.tbs_certificate.subject);
        let [serial] = serials.as_slice() else {
            return Err(AuthorityError::Refused(Refusal::Client(format!(
                "a birth certificate names exactly one serialNumber (found {})",
                serials.len()
            ))));
        };
        let device =
            DeviceSerial::parse(serial).map_err(|e| AuthorityError::Refused(Refusal::Client(e.to_string())))?;
        let birth_sha256 = keys::sha256_hex(leaf.as_ref());
        Ok(Birth {
            device,
            manufacturer,
            manufacturer_cert,
            spki_sha256: info.spki_sha256,
            manufacturer_spki,
            birth_sha256,
            cert_serial: info.serial,
            cert_der: leaf.to_vec(),
        })
    }

    /// Whether this authority owns the device of `birth`, by a claim of
    /// exactly this birth certificate or by the voucher it claimed (its chain
    /// checked again, but for the date that bounded only its claim):
    /// the cheap refusal before any signature work (the issuance's
    /// transaction checks ownership again).
    pub(crate) fn check_owned(&self, birth: &Birth) -> Result<(), AuthorityError> {
        match self.store.ownership(birth.device.as_str())? {
            None => Err(iotpki_store::StoreError::NotOwned { device: birth.device.to_string() }.into()),
            Some(o) if o.status != OwnershipStatus::Owned => Err(iotpki_store::StoreError::DeviceReleased {
                device: birth.device.to_string(),
                status: o.status.as_str(),
            }
            .into()),
            Some(o) if o.via.starts_with("voucher:") => {
                // Owned by voucher: the whole chain, from the manufacturer that made
                // this very birth certificate to this authority, must hold now.
                self.check_voucher(&birth.device, &birth.cert_der, &birth.manufacturer_cert)
            }
            // Owned by claim: exactly the birth certificate claimed, from the
            // manufacturer claimed (a claim never changes to another birth).
            Some(o) => match (&o.birth_sha256, &o.manufacturer_spki) {
                (Some(b), Some(m)) if *b == birth.birth_sha256 && *m == birth.manufacturer_spki => Ok(()),
                (Some(b), Some(_)) => Err(AuthorityError::forbidden(format!(
                    "device {} is claimed with birth certificate sha256 {b} from manufacturing CA {}; this \
                     one (sha256 {}, manufacturer {}) is not it: a clone, a forgery or a device born twice",
                    birth.device,
                    o.manufacturer_spki.as_deref().unwrap_or_default(),
                    birth.birth_sha256,
                    birth.manufacturer
                ))),
                _ => Err(AuthorityError::forbidden(format!(
                    "device {} was claimed by bare serial, which binds no birth: claim it again with the \
                     manufacturer's births file (`iotpki device claim --births`)",
                    birth.device
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotpki_core::asn1::spki::SubjectPublicKeyInfoOwned;
    use iotpki_core::keys::{self, KeyType, Signer, SoftKey};
    use iotpki_core::name::NameBuilder;
    use iotpki_core::profile::{issue, CertParams, Issuer, Profile};
    use iotpki_core::serial::system_random_serial;

    fn spki(k: &SoftKey) -> SubjectPublicKeyInfoOwned {
        SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap()
    }

    fn params(profile: Profile, subject: iotpki_core::asn1::x509_cert::name::Name, k: &SoftKey) -> CertParams {
        CertParams {
            profile,
            serial: system_random_serial(1_000).unwrap().0,
            subject,
            spki: spki(k),
            not_before: 1_000,
            not_after: 9_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        }
    }

    #[test]
    fn a_birth_must_name_one_serial_exactly_inside_its_delegated_cas_subtree() {
        let (rk, mk, dk) = (
            SoftKey::generate(KeyType::EcdsaP256).unwrap(),
            SoftKey::generate(KeyType::EcdsaP256).unwrap(),
            SoftKey::generate(KeyType::EcdsaP256).unwrap(),
        );
        let root_name = NameBuilder::default().organization("Maker").unwrap().common_name("Root").unwrap().build();
        let rkid = keys::key_identifier(&spki(&rk));
        let root_issuer = Issuer { subject: &root_name, key_id: &rkid, not_after: 9_000_000, signer: &rk };
        let mfg_name = NameBuilder::default().organization("Maker").unwrap().common_name("Mfg").unwrap().build();
        let mfg = issue(&params(Profile::DelegatingCa, mfg_name.clone(), &mk), &root_issuer).unwrap().der;
        let mfg = Certificate::from_der(&mfg).unwrap();
        assert_eq!(not_a_manufacturing_ca(&mfg), None);
        let root = issue(&params(Profile::Root, root_name.clone(), &rk), &root_issuer).unwrap().der;
        assert!(not_a_manufacturing_ca(&Certificate::from_der(&root).unwrap()).unwrap().contains("self-issued"));

        let mkid = keys::key_identifier(&spki(&mk));
        let mfg_issuer = Issuer { subject: &mfg_name, key_id: &mkid, not_after: 9_000_000, signer: &mk };
        let sub_name = NameBuilder::default().organization("Maker").unwrap().common_name("line-1 B1").unwrap().build();
        let subtree = NameBuilder::default()
            .organization("Maker")
            .unwrap()
            .organizational_unit("B1")
            .unwrap()
            .common_name("S-1")
            .unwrap()
            .build();
        let mut p = params(Profile::DelegatedCa, sub_name.clone(), &dk);
        p.permitted_subtree = Some(vec![subtree]);
        let sub = Certificate::from_der(&issue(&p, &mfg_issuer).unwrap().der).unwrap();
        let dkid = keys::key_identifier(&spki(&dk));
        let sub_issuer = Issuer { subject: &sub_name, key_id: &dkid, not_after: 9_000_000, signer: &dk };
        let born = |cn: &str, sn: &str, extra_cn: bool| {
            let mut b = NameBuilder::default().organization("Maker").unwrap().organizational_unit("B1").unwrap();
            b = b.common_name(cn).unwrap();
            if extra_cn {
                b = b.common_name(sn).unwrap();
            }
            let b = b.serial_number(&DeviceSerial::parse(sn).unwrap()).unwrap();
            let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
            let der = issue(&params(Profile::Device, b.build(), &k), &sub_issuer).unwrap().der;
            Certificate::from_der(&der).unwrap()
        };
        let inter = [sub.clone(), mfg.clone()];
        assert_eq!(not_a_birth(&born("S-1", "S-1", false), &inter, &mfg), None);
        // Inside the subtree by RDN prefix, but naming another serial.
        let why = not_a_birth(&born("S-1", "V-1", false), &inter, &mfg).unwrap();
        assert!(why.contains("exactly one serial"), "{why}");
        let why = not_a_birth(&born("S-1", "V-1", true), &inter, &mfg).unwrap();
        assert!(why.contains("exactly one serial"), "{why}");
        // Inside the subtree only after case folding: another serial, refused.
        let why = not_a_birth(&born("s-1", "s-1", false), &inter, &mfg).unwrap();
        assert!(why.contains("not exactly inside"), "{why}");
        // An operational-looking certificate straight from a CA that is neither.
        let why = not_a_birth(&born("S-1", "S-1", false), &[], &mfg).unwrap();
        assert!(why.contains("neither by the manufacturing CA"), "{why}");
    }
}
