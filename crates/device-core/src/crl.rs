//! CRLs, checked as the agent checks one before it keeps it: issued (name
//! and signature) by a CA the device knows, current at `now` (thisUpdate not
//! beyond the clock skew, nextUpdate present and not passed: a stale CRL is
//! refused), covering the device's certificates (a partitioned CRL's
//! issuingDistributionPoint names one of their distribution points), and
//! newer than the one the device holds (its cRLNumber; the caller keeps the
//! last number, [`Last`]).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use const_oid::{AssociatedOid, ObjectIdentifier};
use der::Decode;
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::crl::CrlNumber;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::AuthorityKeyIdentifier;
use x509_cert::Certificate;

use crate::keys::{sha256, PublicKey};
use crate::{Error, MAX_CLOCK_SKEW};

/// Largest CRL taken, in octets (the agent's limit).
pub const MAX_CRL_BYTES: usize = 4 * 1024 * 1024;

/// id-ce-issuingDistributionPoint (RFC 5280 5.2.5).
const ID_CE_IDP: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.28");

/// What the device keeps of the CRL it holds from an issuer: enough to tell
/// the same CRL again from a rollback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Last {
    /// Its cRLNumber.
    pub number: u64,
    /// SHA-256 of its DER.
    pub sha256: [u8; 32],
}

/// A CRL that checks out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedCrl {
    /// Its cRLNumber (0 when absent).
    pub number: u64,
    /// thisUpdate, Unix seconds.
    pub this_update: u64,
    /// nextUpdate, Unix seconds: fetch the next one before.
    pub next_update: u64,
    /// The revoked serial numbers, as their DER INTEGER content octets.
    pub revoked: Vec<Vec<u8>>,
    /// The URLs of its issuingDistributionPoint; `None`: a complete CRL.
    pub scope: Option<Vec<String>>,
    /// What to keep as [`Last`] once the CRL is stored.
    pub last: Last,
}

impl CheckedCrl {
    /// Whether the certificate with serial number `serial` (its DER INTEGER content octets) is revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.iter().any(|r| r == serial)
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The same CRL as the one held ([`Last::sha256`]): nothing to change.
    Unchanged,
    /// A newer CRL that covers the device: keep it and its [`CheckedCrl::last`].
    New(CheckedCrl),
}

/// Check the DER CRL `der` against its issuer `issuer_cert` (DER, a CA the
/// device knows: its anchor, a CA of its chain, a bundle anchor) at `now`.
/// `covered_urls`: the cRLDistributionPoints URLs of the device's
/// certificates (a partitioned CRL must name one). `last`: what the device
/// holds from this issuer, if anything.
pub fn verify(
    der: &[u8],
    issuer_cert: &[u8],
    now: u64,
    covered_urls: &[&str],
    last: Option<&Last>,
) -> Result<Verdict, Error> {
    let checked = check(der, issuer_cert, now)?;
    if let Some(scope) = &checked.scope {
        if !scope.iter().any(|u| covered_urls.contains(&u.as_str())) {
            return Err(CrlError::NotCovering.into());
        }
    }
    if let Some(l) = last {
        if l.sha256 == checked.last.sha256 {
            return Ok(Verdict::Unchanged);
        }
        if checked.number <= l.number {
            return Err(CrlError::Rollback { installed: l.number, offered: checked.number }.into());
        }
    }
    Ok(Verdict::New(checked))
}

/// [`verify`]'s checks of the CRL itself (issuer, signature, times, scope), without coverage or rollback.
pub fn check(der: &[u8], issuer_cert: &[u8], now: u64) -> Result<CheckedCrl, Error> {
    if der.len() > MAX_CRL_BYTES {
        return Err(CrlError::TooLarge.into());
    }
    let crl = CertificateList::from_der(der).map_err(|_| CrlError::NotACrl)?;
    let issuer = Certificate::from_der(issuer_cert).map_err(|e| Error::der("CRL issuer certificate", e))?;
    let tbs = &crl.tbs_cert_list;
    if tbs.issuer != issuer.tbs_certificate.subject {
        return Err(CrlError::WrongIssuer.into());
    }
    if tbs.signature != crl.signature_algorithm {
        // RFC 5280 5.1.1.2: the two must be the same (the core refuses it too).
        return Err(CrlError::Unsupported("two different signature algorithms").into());
    }
    let key = PublicKey::from_spki(&issuer.tbs_certificate.subject_public_key_info)?;
    let (Some(tbs_der), Some(sig)) = (crate::derx::signed_part(der), crl.signature.as_bytes()) else {
        return Err(CrlError::NotACrl.into());
    };
    key.verify_x509(&crl.signature_algorithm, tbs_der, sig).map_err(|()| CrlError::BadSignature)?;
    let secs = |t: &x509_cert::time::Time| t.to_unix_duration().as_secs();
    let this_update = secs(&tbs.this_update);
    let next_update = tbs.next_update.as_ref().map(secs).ok_or(CrlError::NoNextUpdate)?;
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    if i64::try_from(this_update).unwrap_or(i64::MAX) > now_i.saturating_add(MAX_CLOCK_SKEW) {
        return Err(CrlError::NotYetValid { this_update, now }.into());
    }
    if next_update <= now {
        return Err(CrlError::Stale { next_update, now }.into());
    }
    let exts = tbs.crl_extensions.as_deref().unwrap_or_default();
    // The first cRLNumber counts (as the core reads it).
    let number = match exts.iter().find(|e| e.extn_id == CrlNumber::OID) {
        Some(e) => CrlNumber::from_der(e.extn_value.as_bytes())
            .map_err(|_| CrlError::Unsupported("a malformed cRLNumber"))?
            .0
            .as_bytes()
            .iter()
            .fold(0u64, |acc, b| acc.saturating_mul(256).saturating_add(u64::from(*b))),
        None => 0,
    };
    let mut scope = None;
    for e in exts {
        if e.extn_id == CrlNumber::OID {
            continue;
        } else if e.extn_id == ID_CE_IDP {
            if scope.is_some() {
                return Err(CrlError::Unsupported("two issuingDistributionPoint extensions").into());
            }
            scope = Some(idp_urls(e.extn_value.as_bytes())?);
        } else if e.critical && e.extn_id != AuthorityKeyIdentifier::OID {
            return Err(CrlError::Unsupported("an unknown critical extension").into());
        }
    }
    let revoked = tbs
        .revoked_certificates
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|r| r.serial_number.as_bytes().to_vec())
        .collect();
    Ok(CheckedCrl { number, this_update, next_update, revoked, scope, last: Last { number, sha256: sha256(der) } })
}

fn idp_urls(v: &[u8]) -> Result<Vec<String>, CrlError> {
    let idp = IssuingDistributionPoint::from_der(v)
        .map_err(|_| CrlError::Unsupported("a malformed issuingDistributionPoint"))?;
    if idp.only_some_reasons.is_some()
        || idp.indirect_crl
        || idp.only_contains_attribute_certs
        || idp.only_contains_user_certs
        || idp.only_contains_ca_certs
    {
        return Err(CrlError::Unsupported(
            "an issuingDistributionPoint limited by reason, issuer or kind of certificate",
        ));
    }
    let Some(DistributionPointName::FullName(names)) = idp.distribution_point else {
        return Err(CrlError::Unsupported("an issuingDistributionPoint that names no URL"));
    };
    let urls: Vec<String> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    if urls.is_empty() {
        return Err(CrlError::Unsupported("an issuingDistributionPoint that names no URL"));
    }
    Ok(urls)
}

/// Why a CRL was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CrlError {
    /// Larger than [`MAX_CRL_BYTES`].
    TooLarge,
    /// Not a DER CRL.
    NotACrl,
    /// Issued by another CA than the one given.
    WrongIssuer,
    /// Its signature does not verify with the issuer's key.
    BadSignature,
    /// It has no nextUpdate.
    NoNextUpdate,
    /// Its thisUpdate is further in the future than clock skew explains.
    NotYetValid {
        /// thisUpdate, Unix seconds.
        this_update: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// Its nextUpdate has passed.
    Stale {
        /// nextUpdate, Unix seconds.
        next_update: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// Something we do not handle (scopes by reason, indirect CRLs, unknown critical extensions).
    Unsupported(&'static str),
    /// A partitioned CRL that covers none of the device's certificates.
    NotCovering,
    /// Not newer than the CRL held.
    Rollback {
        /// The held number.
        installed: u64,
        /// The offered number.
        offered: u64,
    },
}

impl fmt::Display for CrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => write!(f, "larger than {MAX_CRL_BYTES} octets"),
            Self::NotACrl => f.write_str("not a CRL"),
            Self::WrongIssuer => f.write_str("it is issued by another CA than the one given"),
            Self::BadSignature => f.write_str("the CRL's signature does not verify with its issuer's key"),
            Self::NoNextUpdate => f.write_str("the CRL has no nextUpdate"),
            Self::NotYetValid { this_update, now } => {
                write!(f, "the CRL's thisUpdate {this_update} is in the future (now {now}); check the device clock")
            }
            Self::Stale { next_update, now } => {
                write!(f, "the CRL is stale: its nextUpdate {next_update} has passed (now {now}); fetch a fresh one")
            }
            Self::Unsupported(d) => write!(f, "the CRL has {d}: not supported"),
            Self::NotCovering => f.write_str("it is a partitioned CRL that covers none of this device's certificates"),
            Self::Rollback { installed, offered } => {
                write!(f, "number {offered} is not newer than the installed {installed} (a rollback)")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for CrlError {}
