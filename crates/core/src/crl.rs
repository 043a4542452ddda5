//! Certificate revocation lists (RFC 5280 section 5): version 2, with the
//! authorityKeyIdentifier and cRLNumber extensions, and a reasonCode on
//! each entry whose reason is not `unspecified` (RFC 5280 5.3.1 recommends
//! omitting that one).
//!
//! Partitioned CRLs (RFC 5280 5.2.5): an issuing CA may split its revocations
//! into `S` shards (a power of two). A certificate belongs to shard
//! [`shard_of`] its serial, and its cRLDistributionPoints names that shard's
//! URL ([`shard_path`]); the shard's CRL carries a critical
//! issuingDistributionPoint naming the same URL, so one shard's CRL cannot
//! stand in for another's ([`covers`]). The serial's low octets are random,
//! so shards fill evenly.

use const_oid::AssociatedOid;
use der::asn1::{BitString, OctetString, Uint};
use der::Encode;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::CrlNumber;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlReason};
use x509_cert::ext::Extension;
#[cfg(test)]
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::Version;

use crate::profile::Issuer;
use crate::time::x509_time;
use crate::Error;

/// RFC 5280 CRLReason names, by code (7 is unused).
pub const REASONS: [(u8, &str); 10] = [
    (0, "unspecified"),
    (1, "keyCompromise"),
    (2, "cACompromise"),
    (3, "affiliationChanged"),
    (4, "superseded"),
    (5, "cessationOfOperation"),
    (6, "certificateHold"),
    (8, "removeFromCRL"),
    (9, "privilegeWithdrawn"),
    (10, "aACompromise"),
];

/// The code of a reason name (case-insensitive), as `iotpki revoke --reason` takes it.
pub fn reason_code(name: &str) -> Result<u8, Error> {
    REASONS
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name))
        .map(|(c, _)| *c)
        .ok_or_else(|| Error::BadName(format!("reason {name:?}: use one of {}", REASONS.map(|(_, n)| n).join(", "))))
}

/// The name of a reason code.
pub fn reason_name(code: u8) -> &'static str {
    REASONS.iter().find(|(c, _)| *c == code).map(|(_, n)| *n).unwrap_or("unspecified")
}

fn reason(code: u8) -> Option<CrlReason> {
    Some(match code {
        1 => CrlReason::KeyCompromise,
        2 => CrlReason::CaCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        6 => CrlReason::CertificateHold,
        8 => CrlReason::RemoveFromCRL,
        9 => CrlReason::PrivilegeWithdrawn,
        10 => CrlReason::AaCompromise,
        _ => return None,
    })
}

fn ext<T: Encode + AssociatedOid>(value: &T) -> Result<Extension, Error> {
    Ok(Extension {
        extn_id: T::OID,
        critical: false,
        extn_value: OctetString::new(value.to_der().map_err(|e| Error::der("CRL extension", e))?)
            .map_err(|e| Error::der("CRL extension", e))?,
    })
}

/// One revoked certificate: serial (hex), when, reason code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Serial, lowercase hex.
    pub serial: String,
    /// When it was revoked, Unix seconds.
    pub at: i64,
    /// RFC 5280 reason code.
    pub reason: u8,
}

/// Most shards a CA's CRL may be split into.
pub const MAX_SHARDS: u32 = 1024;

/// id-ce-issuingDistributionPoint (RFC 5280 5.2.5). Spelled out here: the
/// `AssociatedOid` of x509-cert 0.2's `IssuingDistributionPoint` is wrong
/// (it names id-pe-subjectInfoAccess).
pub const ID_CE_ISSUING_DISTRIBUTION_POINT: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("2.5.29.28");

/// Whether `shards` is a shard count we make: a power of two from 2 to [`MAX_SHARDS`].
pub fn valid_shard_count(shards: u32) -> bool {
    (2..=MAX_SHARDS).contains(&shards) && shards.is_power_of_two()
}

/// The shard (of `shards`) the certificate with serial `serial_hex` belongs
/// to: its last four octets (random in our serials) modulo `shards`. `None`
/// when the serial is not hex or `shards` is not a valid count.
pub fn shard_of(serial_hex: &str, shards: u32) -> Option<u32> {
    if !valid_shard_count(shards) {
        return None;
    }
    let bytes = hex::decode(serial_hex).ok()?;
    let low = bytes.iter().rev().take(4).rev().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    Some(low % shards)
}

/// The path of shard `shard` of `shards` of CA `ca`'s CRL: `/crl/CA/S/K.crl`.
/// The shard count is in the path, so certificates issued while the CA had
/// another count keep a URL that still names their shard.
pub fn shard_path(ca: &str, shards: u32, shard: u32) -> String {
    format!("/crl/{ca}/{shards}/{shard}.crl")
}

/// The inverse of [`shard_path`] for what follows `/crl/`: `CA/S/K.crl` gives
/// `(CA, S, K)` when `S` is a valid shard count and `K < S`.
pub fn parse_shard_path(rest: &str) -> Option<(&str, u32, u32)> {
    let mut parts = rest.split('/');
    let (ca, s, k) = (parts.next()?, parts.next()?, parts.next()?.strip_suffix(".crl")?);
    if parts.next().is_some() || ca.is_empty() {
        return None;
    }
    let canonical =
        |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && (t == "0" || !t.starts_with('0'));
    if !canonical(s) || !canonical(k) {
        return None;
    }
    let (s, k) = (s.parse().ok()?, k.parse().ok()?);
    (valid_shard_count(s) && k < s).then_some((ca, s, k))
}

/// Build and sign the CRL number `number` of `issuer`, valid from `this_update` to `next_update`.
pub fn build(
    issuer: &Issuer<'_>,
    number: u64,
    this_update: i64,
    next_update: i64,
    revoked: &[Revoked],
) -> Result<Vec<u8>, Error> {
    build_scoped(issuer, number, this_update, next_update, revoked, None)
}

/// [`build`], for a partitioned CRL when `scope_url` is given: it then carries
/// a critical issuingDistributionPoint whose distributionPoint is that URL
/// (the one in the cRLDistributionPoints of the certificates it covers).
pub fn build_scoped(
    issuer: &Issuer<'_>,
    number: u64,
    this_update: i64,
    next_update: i64,
    revoked: &[Revoked],
    scope_url: Option<&str>,
) -> Result<Vec<u8>, Error> {
    let mut entries = Vec::with_capacity(revoked.len());
    for r in revoked {
        let bytes = hex::decode(&r.serial).map_err(|e| Error::Profile(format!("serial {}: {e}", r.serial)))?;
        let serial_number =
            SerialNumber::new(&bytes).map_err(|e| Error::Profile(format!("serial {}: {e}", r.serial)))?;
        let crl_entry_extensions = match reason(r.reason) {
            Some(code) => Some(vec![ext(&code)?]),
            None => None,
        };
        entries.push(RevokedCert { serial_number, revocation_date: x509_time(r.at)?, crl_entry_extensions });
    }
    let signature = issuer.signer.key_type().signature_algorithm()?;
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(issuer.key_id).map_err(|e| Error::der("AKI", e))?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    let number = CrlNumber(Uint::new(&number.to_be_bytes()).map_err(|e| Error::der("CRL number", e))?);
    let mut crl_extensions = vec![ext(&aki)?, ext(&number)?];
    if let Some(url) = scope_url {
        crl_extensions.push(idp_extension(url)?);
    }
    let tbs = TbsCertList {
        version: Version::V2,
        signature: signature.clone(),
        issuer: issuer.subject.clone(),
        this_update: x509_time(this_update)?,
        next_update: Some(x509_time(next_update)?),
        // RFC 5280 5.1.2.6: absent, not empty, when nothing is revoked.
        revoked_certificates: (!entries.is_empty()).then_some(entries),
        crl_extensions: Some(crl_extensions),
    };
    let tbs_der = tbs.to_der().map_err(|e| Error::der("TBS CRL", e))?;
    let sig = issuer.signer.sign(&tbs_der)?;
    let crl = CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: signature,
        signature: BitString::from_bytes(&sig).map_err(|e| Error::der("CRL signature", e))?,
    };
    crl.to_der().map_err(|e| Error::der("CRL", e))
}

fn idp_extension(url: &str) -> Result<Extension, Error> {
    use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
    use x509_cert::ext::pkix::name::DistributionPointName;
    // The same URL as in the cRLDistributionPoints of the certificates it covers.
    let idp = IssuingDistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![crate::profile::uri(url)?])),
        only_contains_user_certs: false,
        only_contains_ca_certs: false,
        only_some_reasons: None,
        indirect_crl: false,
        only_contains_attribute_certs: false,
    };
    Ok(Extension {
        extn_id: ID_CE_ISSUING_DISTRIBUTION_POINT,
        // Critical (RFC 5280 5.2.5; CA/Browser Forum ballot SC-58 for partitioned CRLs).
        critical: true,
        extn_value: OctetString::new(idp.to_der().map_err(|e| Error::der("issuingDistributionPoint", e))?)
            .map_err(|e| Error::der("issuingDistributionPoint", e))?,
    })
}

/// The scope a CRL's issuingDistributionPoint gives (its distributionPoint
/// URIs), `None` when it has none (a complete CRL). Refuses what we do not
/// handle: scopes by reason, indirect CRLs, attribute-certificate CRLs,
/// user- or CA-only CRLs, and a scope named other than by URIs.
fn scope_of(exts: &[Extension]) -> Result<Option<Vec<String>>, Error> {
    use der::Decode;
    use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
    let mut scope = None;
    for e in exts {
        if e.extn_id == ID_CE_ISSUING_DISTRIBUTION_POINT {
            if scope.is_some() {
                return Err(Error::Profile("the CRL has two issuingDistributionPoint extensions".into()));
            }
            let idp = IssuingDistributionPoint::from_der(e.extn_value.as_bytes())
                .map_err(|e| Error::der("issuingDistributionPoint", e))?;
            if idp.only_some_reasons.is_some()
                || idp.indirect_crl
                || idp.only_contains_attribute_certs
                || idp.only_contains_user_certs
                || idp.only_contains_ca_certs
            {
                return Err(Error::Profile(
                    "the CRL's issuingDistributionPoint limits it by reason, issuer or kind of certificate: not supported"
                        .into(),
                ));
            }
            let Some(DistributionPointName::FullName(names)) = idp.distribution_point else {
                return Err(Error::Profile("the CRL's issuingDistributionPoint names no URL".into()));
            };
            let mut urls = Vec::new();
            for n in names {
                if let GeneralName::UniformResourceIdentifier(u) = n {
                    urls.push(u.to_string());
                }
            }
            if urls.is_empty() {
                return Err(Error::Profile("the CRL's issuingDistributionPoint names no URL".into()));
            }
            scope = Some(urls);
        } else if e.critical && e.extn_id != CrlNumber::OID && e.extn_id != AuthorityKeyIdentifier::OID {
            return Err(Error::Profile(format!("the CRL has an unknown critical extension {}", e.extn_id)));
        }
    }
    Ok(scope)
}

/// Whether a checked CRL covers a certificate whose cRLDistributionPoints
/// names `dp_urls`: a complete CRL covers every certificate of its issuer, a
/// partitioned one only those whose distribution point it names.
pub fn covers(crl: &CheckedCrl, dp_urls: &[String]) -> bool {
    match &crl.scope {
        None => true,
        Some(scope) => scope.iter().any(|u| dp_urls.contains(u)),
    }
}

fn number_of(exts: &[Extension]) -> Result<u64, Error> {
    use der::Decode;
    Ok(exts
        .iter()
        .find(|e| e.extn_id == CrlNumber::OID)
        .map(|e| {
            CrlNumber::from_der(e.extn_value.as_bytes()).map_err(|e| Error::der("cRLNumber", e)).map(|n| {
                n.0.as_bytes().iter().fold(0u64, |acc, b| acc.saturating_mul(256).saturating_add(u64::from(*b)))
            })
        })
        .transpose()?
        .unwrap_or(0))
}

/// A DER CRL read without decoding its entries: the fields a relying party
/// checks, owned (they are small), and the entries left as the octets of the
/// revokedCertificates SEQUENCE, walked one at a time by [`View::entries`].
/// A device checking a CRL of N entries for its own serial so needs memory for
/// the CRL's octets, not for N decoded entries (about ten times as much).
struct View<'a> {
    /// The TBSCertList's encoding: what the signature covers.
    tbs_der: &'a [u8],
    inner_algorithm: spki::AlgorithmIdentifierOwned,
    algorithm: spki::AlgorithmIdentifierOwned,
    signature: &'a [u8],
    issuer: x509_cert::name::Name,
    this_update: x509_cert::time::Time,
    next_update: Option<x509_cert::time::Time>,
    entries: &'a [u8],
    extensions: Vec<Extension>,
}

impl<'a> View<'a> {
    fn read(der: &'a [u8]) -> Result<Self, Error> {
        Self::read_der(der).map_err(|e| Error::der("CRL", e))
    }

    fn read_der(der: &'a [u8]) -> der::Result<Self> {
        use der::asn1::{AnyRef, BitStringRef, ContextSpecific};
        use der::{Decode, Reader, SliceReader, Tag, TagNumber, Tagged};
        let mut outer = SliceReader::new(der)?;
        let (tbs_der, algorithm, signature) = outer.sequence(|r| {
            let tbs = AnyRef::decode(r)?;
            tbs.tag().assert_eq(Tag::Sequence)?;
            let algorithm = spki::AlgorithmIdentifierOwned::decode(r)?;
            let sig = BitStringRef::decode(r)?;
            Ok((tbs, algorithm, sig))
        })?;
        outer.finish(())?;
        let signature = signature.as_bytes().ok_or_else(|| Tag::BitString.value_error())?;
        let tbs_value = tbs_der.value();
        // The TBSCertList's own header and value, as they stand in `der` (DER's
        // lengths are minimal, so the header re-encodes to the same octets).
        let tbs_len = usize::try_from(tbs_der.encoded_len()?)?;
        let start = usize::try_from(der::Header::decode(&mut SliceReader::new(der)?)?.encoded_len()?)?;
        let tbs_der = der.get(start..start + tbs_len).ok_or_else(|| Tag::Sequence.length_error())?;

        let mut r = SliceReader::new(tbs_value)?;
        if r.peek_tag()? == Tag::Integer {
            // Only v2 has a version field; v1 CRLs have neither it nor extensions.
            if Version::decode(&mut r)? != Version::V2 {
                return Err(Tag::Integer.value_error());
            }
        }
        let inner_algorithm = spki::AlgorithmIdentifierOwned::decode(&mut r)?;
        let issuer = x509_cert::name::Name::decode(&mut r)?;
        let this_update = x509_cert::time::Time::decode(&mut r)?;
        let next_update = match r.is_finished() {
            false if matches!(r.peek_tag()?, Tag::UtcTime | Tag::GeneralizedTime) => {
                Some(x509_cert::time::Time::decode(&mut r)?)
            }
            _ => None,
        };
        let entries = match r.is_finished() {
            false if r.peek_tag()? == Tag::Sequence => AnyRef::decode(&mut r)?.value(),
            _ => &[],
        };
        let extensions = ContextSpecific::<Vec<Extension>>::decode_explicit(&mut r, TagNumber::N0)?
            .map(|c| c.value)
            .unwrap_or_default();
        r.finish(())?;
        Ok(Self {
            tbs_der,
            inner_algorithm,
            algorithm,
            signature,
            issuer,
            this_update,
            next_update,
            entries,
            extensions,
        })
    }

    /// Each entry's serial (lowercase hex), decoded and dropped one at a time.
    fn for_each_serial(&self, mut f: impl FnMut(String)) -> Result<(), Error> {
        use der::{Decode, Reader, SliceReader};
        let mut walk = || -> der::Result<()> {
            let mut r = SliceReader::new(self.entries)?;
            while !r.is_finished() {
                f(crate::serial::serial_hex(&RevokedCert::decode(&mut r)?.serial_number));
            }
            Ok(())
        };
        walk().map_err(|e| Error::der("CRL entry", e))
    }
}

/// The cRLNumber of a DER CRL (0 when absent), without checking anything else.
pub fn number(der: &[u8]) -> Result<u64, Error> {
    number_of(&View::read(der)?.extensions)
}

/// The issuer named in a DER CRL, without checking anything else.
pub fn issuer(der: &[u8]) -> Result<x509_cert::name::Name, Error> {
    Ok(View::read(der)?.issuer)
}

/// The nextUpdate of a DER CRL (Unix seconds), without checking anything
/// else; an error when it has none (we never make one without).
pub fn next_update(der: &[u8]) -> Result<i64, Error> {
    View::read(der)?
        .next_update
        .map(|t| crate::time::unix(&t))
        .ok_or_else(|| Error::Profile("the CRL has no nextUpdate".into()))
}

/// What a relying party learns from a CRL that checks out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedCrl {
    /// Its cRLNumber (0 when absent).
    pub number: u64,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    /// The revoked serials, lowercase hex.
    pub revoked: Vec<String>,
    /// The URLs of its issuingDistributionPoint: the certificates it covers
    /// name one of them in their cRLDistributionPoints. `None`: a complete CRL.
    pub scope: Option<Vec<String>>,
}

/// Largest CRL a device takes.
pub const MAX_CRL_BYTES: usize = 4 * 1024 * 1024;

/// Check a DER CRL as a relying party must before believing it: issued (name
/// and signature) by `issuer_cert_der`, current at `now` (thisUpdate not in the
/// future beyond `skew`; nextUpdate present and not passed: a stale CRL is refused).
pub fn check(der: &[u8], issuer_cert_der: &[u8], now: i64, skew: i64) -> Result<CheckedCrl, Error> {
    check_listing(der, issuer_cert_der, now, skew, |_| true)
}

/// [`check`], keeping in [`CheckedCrl::revoked`] only those of `serials`
/// (lowercase hex) that the CRL lists: what a device asks of a CRL about its
/// own certificates. Every entry is still decoded (a malformed one refuses the
/// CRL), one at a time, so memory does not grow with the number of entries.
pub fn check_for(
    der: &[u8],
    issuer_cert_der: &[u8],
    now: i64,
    skew: i64,
    serials: &[String],
) -> Result<CheckedCrl, Error> {
    check_listing(der, issuer_cert_der, now, skew, |s| serials.iter().any(|w| w == s))
}

fn check_listing(
    der: &[u8],
    issuer_cert_der: &[u8],
    now: i64,
    skew: i64,
    keep: impl Fn(&str) -> bool,
) -> Result<CheckedCrl, Error> {
    use der::Decode;
    if der.len() > MAX_CRL_BYTES {
        return Err(Error::Profile(format!("CRL of {} octets is larger than {MAX_CRL_BYTES}", der.len())));
    }
    let crl = View::read(der)?;
    let issuer = x509_cert::Certificate::from_der(issuer_cert_der).map_err(|e| Error::der("CRL issuer", e))?;
    if crl.issuer != issuer.tbs_certificate.subject {
        return Err(Error::Profile(format!(
            "the CRL is issued by {}, not by {}",
            crate::name::to_rfc4514(&crl.issuer),
            crate::name::to_rfc4514(&issuer.tbs_certificate.subject)
        )));
    }
    if crl.inner_algorithm != crl.algorithm {
        // RFC 5280 5.1.1.2: the two must be the same.
        return Err(Error::Profile("the CRL names two different signature algorithms".into()));
    }
    crate::keys::verify(&issuer.tbs_certificate.subject_public_key_info, &crl.algorithm, crl.tbs_der, crl.signature)
        .map_err(|_| Error::Profile("the CRL's signature does not verify with its issuer's key".into()))?;
    let this_update = crate::time::unix(&crl.this_update);
    let next_update = crl
        .next_update
        .as_ref()
        .map(crate::time::unix)
        .ok_or_else(|| Error::Profile("the CRL has no nextUpdate".into()))?;
    if this_update > now + skew {
        return Err(Error::Profile(format!("the CRL's thisUpdate {this_update} is in the future (now {now})")));
    }
    if next_update <= now {
        return Err(Error::Profile(format!(
            "the CRL is stale: its nextUpdate {} has passed",
            crate::time::rfc3339(next_update)
        )));
    }
    let number = number_of(&crl.extensions)?;
    let scope = scope_of(&crl.extensions)?;
    let mut revoked = Vec::new();
    crl.for_each_serial(|s| {
        if keep(&s) {
            revoked.push(s)
        }
    })?;
    Ok(CheckedCrl { number, this_update, next_update, revoked, scope })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{self, KeyType, Signer, SoftKey};
    use crate::name::NameBuilder;
    use der::Decode;

    #[test]
    fn builds_a_signed_v2_crl() {
        for &kt in KeyType::soft_signing() {
            builds_a_signed_v2_crl_with(kt);
        }
    }

    fn builds_a_signed_v2_crl_with(kt: KeyType) {
        let k = SoftKey::generate(kt).unwrap();
        let n = NameBuilder::default().common_name("CA").unwrap().build();
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap();
        let kid = keys::key_identifier(&spki);
        let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: &k };
        let revoked = [
            Revoked { serial: "01aa".into(), at: 1_700_000_000, reason: 1 },
            Revoked { serial: "01bb".into(), at: 1_700_000_001, reason: 0 },
        ];
        let der = build(&issuer, 7, 1_700_000_100, 1_700_086_500, &revoked).unwrap();
        let crl = CertificateList::from_der(&der).unwrap();
        let tbs = &crl.tbs_cert_list;
        assert_eq!(tbs.version, Version::V2);
        let entries = tbs.revoked_certificates.as_ref().unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries[0].crl_entry_extensions.is_some(), "keyCompromise carries a reasonCode");
        assert!(entries[1].crl_entry_extensions.is_none(), "unspecified carries none");
        keys::verify(&spki, &crl.signature_algorithm, &tbs.to_der().unwrap(), crl.signature.raw_bytes()).unwrap();
        let empty = CertificateList::from_der(&build(&issuer, 8, 1, 2, &[]).unwrap()).unwrap();
        assert!(empty.tbs_cert_list.revoked_certificates.is_none());
        assert_eq!(reason_code("KEYCOMPROMISE").unwrap(), 1);
        assert!(reason_code("nope").is_err());
        assert_eq!(reason_name(5), "cessationOfOperation");
    }

    fn self_signed(k: &SoftKey, cn: &str) -> (Vec<u8>, Name, Vec<u8>) {
        use crate::profile::{issue, CertParams, Profile};
        let n = NameBuilder::default().common_name(cn).unwrap().build();
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap();
        let kid = keys::key_identifier(&spki);
        let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: k };
        let p = CertParams {
            profile: Profile::Root,
            serial: crate::serial::system_random_serial(1_700_000_000).unwrap().0,
            subject: n.clone(),
            spki,
            not_before: 1_600_000_000,
            not_after: 2_000_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        (issue(&p, &issuer).unwrap().der, n, kid)
    }

    #[test]
    fn a_relying_party_checks_issuer_signature_and_freshness() {
        let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let (ca, n, kid) = self_signed(&k, "CA");
        let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: &k };
        let revoked = [Revoked { serial: "01aa".into(), at: 1_700_000_000, reason: 1 }];
        let der = build(&issuer, 9, 1_700_000_100, 1_700_086_500, &revoked).unwrap();
        let c = check(&der, &ca, 1_700_000_200, 300).unwrap();
        assert_eq!((c.number, c.revoked.as_slice()), (9, ["01aa".to_string()].as_slice()));
        assert_eq!(number(&der).unwrap(), 9);
        let stale = check(&der, &ca, 1_700_086_500, 300).unwrap_err().to_string();
        assert!(stale.contains("stale"), "{stale}");
        assert!(check(&der, &ca, 1_699_000_000, 300).unwrap_err().to_string().contains("future"));
        let other = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let (impostor, _, _) = self_signed(&other, "CA");
        assert!(check(&der, &impostor, 1_700_000_200, 300).unwrap_err().to_string().contains("does not verify"));
        let (stranger, _, _) = self_signed(&other, "Other CA");
        assert!(check(&der, &stranger, 1_700_000_200, 300).unwrap_err().to_string().contains("issued by"));
        let mut bad = der.clone();
        let i = bad.len() - 3;
        bad[i] ^= 1;
        assert!(check(&bad, &ca, 1_700_000_200, 300).is_err());
    }

    /// The entry-by-entry reader agrees with x509-cert's whole decode, keeps
    /// only the serials asked about, and refuses what x509-cert refuses plus a
    /// TBSCertList whose signature algorithm is not the outer one.
    fn whole_alg(der: &[u8]) -> Vec<u8> {
        CertificateList::from_der(der).unwrap().signature_algorithm.to_der().unwrap()
    }

    #[test]
    fn a_device_reads_entries_one_at_a_time_and_keeps_only_its_own() {
        let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let (ca, n, kid) = self_signed(&k, "CA");
        let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: &k };
        let revoked: Vec<Revoked> = (0..300u32)
            .map(|i| Revoked { serial: format!("01{i:08x}"), at: 1_700_000_000, reason: u8::from(i % 2 == 1) })
            .collect();
        let der = build(&issuer, 12, 1_700_000_100, 1_700_086_500, &revoked).unwrap();
        let all = check(&der, &ca, 1_700_000_200, 300).unwrap();
        let whole = CertificateList::from_der(&der).unwrap();
        let listed: Vec<String> = whole
            .tbs_cert_list
            .revoked_certificates
            .unwrap()
            .iter()
            .map(|r| crate::serial::serial_hex(&r.serial_number))
            .collect();
        assert_eq!(all.revoked, listed);
        assert_eq!(all.revoked.len(), 300);
        let wanted = ["0100000007".to_string(), "01deadbeef".to_string(), "010000012b".to_string()];
        let mine = check_for(&der, &ca, 1_700_000_200, 300, &wanted).unwrap();
        assert_eq!(mine.revoked, ["0100000007", "010000012b"]);
        assert_eq!((mine.number, mine.next_update, &mine.scope), (all.number, all.next_update, &all.scope));
        assert_eq!(super::issuer(&der).unwrap(), n);
        assert_eq!(next_update(&der).unwrap(), 1_700_086_500);
        // Trailing octets, after the CRL or inside it, are refused.
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(check(&trailing, &ca, 1_700_000_200, 300).unwrap_err().to_string().contains("malformed CRL"));
        // A damaged entry (its serial's INTEGER tag made a BOOLEAN), signed by the
        // issuer all the same, refuses the whole CRL, whichever serial is asked about.
        let at = der.windows(6).position(|w| w == [0x02, 0x05, 0x01, 0x00, 0x00, 0x00]).unwrap();
        let mut damaged = der.clone();
        damaged[at] = 0x01;
        let damaged = {
            use der::{asn1::AnyRef, Decode, Header, Length, Reader, SliceReader, Tag};
            let h = usize::try_from(
                Header::decode(&mut SliceReader::new(&damaged).unwrap()).unwrap().encoded_len().unwrap(),
            )
            .unwrap();
            let mut r = SliceReader::new(&damaged[h..]).unwrap();
            let tbs_len = usize::try_from(AnyRef::decode(&mut r).unwrap().encoded_len().unwrap()).unwrap();
            let tbs = &damaged[h..h + tbs_len];
            assert!(r.peek_tag().is_ok());
            let alg = whole_alg(&der);
            let sig = BitString::from_bytes(&k.sign(tbs).unwrap()).unwrap().to_der().unwrap();
            let body = [tbs, &alg, &sig].concat();
            let mut out = Header::new(Tag::Sequence, Length::try_from(body.len()).unwrap()).unwrap().to_der().unwrap();
            out.extend(body);
            out
        };
        // Octets after the signature, inside the CRL's SEQUENCE: refused too.
        let padded = {
            use der::{asn1::AnyRef, Decode, Header, Length, Reader, SliceReader, Tag};
            let mut r = SliceReader::new(&der).unwrap();
            let body = AnyRef::decode(&mut r).unwrap().value().to_vec();
            let body = [&body[..], &[0x05, 0x00]].concat();
            let mut out = Header::new(Tag::Sequence, Length::try_from(body.len()).unwrap()).unwrap().to_der().unwrap();
            out.extend(body);
            assert!(r.is_finished());
            out
        };
        let e = check(&padded, &ca, 1_700_000_200, 300).unwrap_err().to_string();
        assert!(e.contains("malformed CRL"), "{e}");
        for asked in [&wanted[..], &[]] {
            let e = check_for(&damaged, &ca, 1_700_000_200, 300, asked).unwrap_err().to_string();
            assert!(e.contains("malformed CRL entry"), "{e}");
        }
        // The TBSCertList's algorithm must be the outer one (RFC 5280 5.1.1.2).
        let mut two = CertificateList::from_der(&der).unwrap();
        two.tbs_cert_list.signature.oid = const_oid::db::rfc5912::ECDSA_WITH_SHA_384;
        two.signature = BitString::from_bytes(&k.sign(&two.tbs_cert_list.to_der().unwrap()).unwrap()).unwrap();
        let e = check(&two.to_der().unwrap(), &ca, 1_700_000_200, 300).unwrap_err().to_string();
        assert!(e.contains("two different signature algorithms"), "{e}");
    }

    #[test]
    fn shards_split_serials_evenly_and_paths_round_trip() {
        assert!(valid_shard_count(2) && valid_shard_count(64) && valid_shard_count(MAX_SHARDS));
        for bad in [0, 1, 3, 48, MAX_SHARDS * 2] {
            assert!(!valid_shard_count(bad), "{bad}");
            assert_eq!(shard_of("01aa", bad), None);
        }
        let mut counts = [0u32; 16];
        for _ in 0..16_000 {
            let (_, h) = crate::serial::system_random_serial(1_800_000_000).unwrap();
            counts[shard_of(&h, 16).unwrap() as usize] += 1;
        }
        // 1,000 expected in each; 6 standard deviations (about 190) either side.
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert_eq!(shard_of("01020304050607", 1024), Some(0x0607 % 1024), "0x04050607 mod 1024");
        assert_eq!(shard_of("0100000041", 64), Some(1), "the last four octets: 0x00000041 mod 64");
        assert_eq!(shard_of("zz", 64), None);
        assert_eq!(shard_path("operational", 64, 7), "/crl/operational/64/7.crl");
        assert_eq!(parse_shard_path("operational/64/7.crl"), Some(("operational", 64, 7)));
        for bad in [
            "operational/64/64.crl",
            "operational/48/1.crl",
            "operational/64/07.crl",
            "op/064/1.crl",
            "op/64/1",
            "op/64/1.crl/x",
            "/64/1.crl",
            "op/64/-1.crl",
            "op/64/+1.crl",
            "op/1/0.crl",
            "op.crl",
        ] {
            assert_eq!(parse_shard_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_partitioned_crl_names_its_shard_and_covers_only_it() {
        let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let (ca, n, kid) = self_signed(&k, "CA");
        let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: &k };
        let url = "http://pki.example:8080/crl/operational/64/7.crl";
        let revoked = [Revoked { serial: "01aa".into(), at: 1_700_000_000, reason: 1 }];
        let der = build_scoped(&issuer, 3, 1_700_000_100, 1_700_086_500, &revoked, Some(url)).unwrap();
        let crl = CertificateList::from_der(&der).unwrap();
        let idp =
            crl.tbs_cert_list.crl_extensions.as_ref().unwrap().iter().find(|e| e.extn_id.to_string() == "2.5.29.28");
        assert!(idp.is_some_and(|e| e.critical), "a critical issuingDistributionPoint");
        let c = check(&der, &ca, 1_700_000_200, 300).unwrap();
        assert_eq!(c.scope.as_deref(), Some([url.to_string()].as_slice()));
        assert!(covers(&c, &[url.to_string()]));
        assert!(!covers(&c, &["http://pki.example:8080/crl/operational/64/8.crl".to_string()]), "another shard");
        assert!(!covers(&c, &[]), "a certificate with no distribution point");
        let complete =
            check(&build(&issuer, 4, 1_700_000_100, 1_700_086_500, &revoked).unwrap(), &ca, 1_700_000_200, 300)
                .unwrap();
        assert_eq!(complete.scope, None);
        assert!(covers(&complete, &[url.to_string()]) && covers(&complete, &[]));
        assert!(build_scoped(&issuer, 5, 1, 2, &[], Some("ftp://x/y.crl")).is_err());
    }

    /// `der` with its CRL extensions changed by `f`, signed again by `k`.
    fn resigned(der: &[u8], k: &SoftKey, f: impl FnOnce(&mut Vec<Extension>)) -> Vec<u8> {
        let mut crl = CertificateList::from_der(der).unwrap();
        f(crl.tbs_cert_list.crl_extensions.as_mut().unwrap());
        let sig = k.sign(&crl.tbs_cert_list.to_der().unwrap()).unwrap();
        crl.signature = BitString::from_bytes(&sig).unwrap();
        crl.to_der().unwrap()
    }

    #[test]
    fn a_relying_party_refuses_scopes_and_critical_extensions_it_does_not_handle() {
        use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
        let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let (ca, n, kid) = self_signed(&k, "CA");
        let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: &k };
        let url = "http://pki.example/crl/operational/2/0.crl";
        let der = build_scoped(&issuer, 3, 1_700_000_100, 1_700_086_500, &[], Some(url)).unwrap();
        let check_it = |d: &[u8]| check(d, &ca, 1_700_000_200, 300).map_err(|e| e.to_string());
        assert!(check_it(&der).is_ok());
        let other = |critical: bool| Extension {
            extn_id: const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.99999.1"),
            critical,
            extn_value: OctetString::new(vec![0x05, 0x00]).unwrap(),
        };
        let e = check_it(&resigned(&der, &k, |x| x.push(other(true)))).unwrap_err();
        assert!(e.contains("unknown critical extension 1.3.6.1.4.1.99999.1"), "{e}");
        assert!(check_it(&resigned(&der, &k, |x| x.push(other(false)))).is_ok(), "a non-critical one is ignored");
        let e = check_it(&resigned(&der, &k, |x| {
            let idp = x.last().unwrap().clone();
            x.push(idp)
        }))
        .unwrap_err();
        assert!(e.contains("two issuingDistributionPoint"), "{e}");
        let with_idp = |idp: IssuingDistributionPoint| {
            resigned(&der, &k, |x| {
                x.last_mut().unwrap().extn_value = OctetString::new(idp.to_der().unwrap()).unwrap();
            })
        };
        let full = IssuingDistributionPoint::from_der(
            CertificateList::from_der(&der)
                .unwrap()
                .tbs_cert_list
                .crl_extensions
                .unwrap()
                .last()
                .unwrap()
                .extn_value
                .as_bytes(),
        )
        .unwrap();
        let e = check_it(&with_idp(IssuingDistributionPoint { only_contains_user_certs: true, ..full.clone() }))
            .unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = check_it(&with_idp(IssuingDistributionPoint { indirect_crl: true, ..full.clone() })).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = check_it(&with_idp(IssuingDistributionPoint { distribution_point: None, ..full })).unwrap_err();
        assert!(e.contains("names no URL"), "{e}");
    }
}
