//! Certification path validation for the certificates a device is given
//! (RFC 5280 section 6, the parts our hierarchies use), at a given time.
//!
//! What is checked, as the agent checks it (rustls-webpki, and the core's
//! validator for the delegated CAs' directoryName constraints):
//!
//! - the path is built from the leaf through the given intermediates to the
//!   anchor, each issuer matched by name and by signature (ECDSA P-256 and
//!   P-384 with SHA-256 or SHA-384, Ed25519); at most [`MAX_DEPTH`]
//!   certificates, at most [`MAX_INTERMEDIATES`] given;
//! - every certificate below the anchor: DER, no extension twice, no
//!   critical extension we do not process, the inner and outer signature
//!   algorithms equal, valid at `now` (notBefore ≤ now ≤ notAfter);
//! - every intermediate: a CA (basicConstraints cA), keyCertSign when it has
//!   a keyUsage, its pathLenConstraint honoured (self-issued ones do not
//!   count), an extendedKeyUsage if any that allows the purpose;
//! - the leaf: not a CA, its extendedKeyUsage if any lists the purpose, its
//!   keyUsage if any allows digitalSignature;
//! - name constraints of the anchor and the intermediates on the subjects
//!   below them: directoryName subtrees (RDN prefixes, compared octet for
//!   octet, which is how our CAs write them); a constraint of any other name
//!   form is refused (fail closed: a device's CAs carry none).
//!
//! The anchor is trusted as configured: its name and key, and its name
//! constraints. Its own validity period and extensions are not checked (as
//! rustls-webpki does, and RFC 5280 6.1.1 (d) says). Revocation is the
//! caller's ([`crate::crl`]).

use alloc::vec::Vec;
use core::fmt;

use const_oid::db::rfc5280;
use const_oid::{AssociatedOid, ObjectIdentifier};
use der::{Decode, Encode};
use x509_cert::ext::pkix::constraints::name::{GeneralSubtree, NameConstraints};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::keys::PublicKey;

/// Longest path, counting the leaf and the anchor.
pub const MAX_DEPTH: usize = 8;
/// Most intermediates read.
pub const MAX_INTERMEDIATES: usize = 16;

/// What the leaf is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purpose {
    /// TLS client authentication (id-kp-clientAuth): a device's birth and operational certificates.
    ClientAuth,
}

impl Purpose {
    fn oid(self) -> ObjectIdentifier {
        match self {
            Self::ClientAuth => rfc5280::ID_KP_CLIENT_AUTH,
        }
    }
}

/// Which certificate of a path an error is about: 0 is the leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The leaf.
    Leaf,
    /// The intermediate at this depth (1 is the leaf's issuer).
    Intermediate(usize),
    /// The trust anchor.
    Anchor,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Leaf => f.write_str("the leaf"),
            Self::Intermediate(d) => write!(f, "intermediate {d}"),
            Self::Anchor => f.write_str("the trust anchor"),
        }
    }
}

/// Why a certification path was refused: one variant per rule.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainError {
    /// A certificate is not DER we can read.
    Malformed(Which),
    /// More intermediates were given than [`MAX_INTERMEDIATES`].
    TooManyIntermediates {
        /// How many.
        given: usize,
    },
    /// A certificate carries one extension twice, or one we read is malformed.
    BadExtension(Which),
    /// A certificate carries a critical extension we do not process.
    UnknownCriticalExtension {
        /// The certificate.
        cert: Which,
        /// The extension.
        oid: ObjectIdentifier,
    },
    /// The signature algorithm inside the certificate differs from the outer one.
    SignatureAlgorithmMismatch(Which),
    /// A certificate is not valid at the time of validation.
    NotValidNow {
        /// The certificate.
        cert: Which,
        /// notBefore, Unix seconds.
        not_before: u64,
        /// notAfter, Unix seconds.
        not_after: u64,
        /// The time of validation.
        now: u64,
    },
    /// An issuer is not a CA.
    NotACa(Which),
    /// An issuer's keyUsage lacks keyCertSign.
    NoKeyCertSign(Which),
    /// More CAs below a CA than its pathLenConstraint allows.
    PathLengthExceeded(Which),
    /// A subject is outside the permitted names of a CA above it, or inside its excluded ones.
    NameNotPermitted {
        /// The constraining CA.
        ca: Which,
        /// The certificate.
        cert: Which,
    },
    /// A CA carries a name constraint of a form we do not apply (only directoryName).
    UnsupportedNameConstraint(Which),
    /// The leaf is a CA certificate.
    CaAsEndEntity,
    /// An extendedKeyUsage does not allow the purpose.
    PurposeNotAllowed(Which),
    /// The leaf's keyUsage does not allow digitalSignature.
    LeafKeyUsage,
    /// An issuer's key is of a type we cannot verify with.
    UnsupportedKey(Which),
    /// Nothing given (intermediate or anchor) has this certificate's issuer name and a key that verifies its signature.
    NoIssuer(Which),
    /// No path to the anchor within [`MAX_DEPTH`] certificates.
    TooDeep,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(w) => write!(f, "{w} is not a DER X.509 certificate"),
            Self::TooManyIntermediates { given } => {
                write!(f, "{given} intermediates given; at most {MAX_INTERMEDIATES} are read")
            }
            Self::BadExtension(w) => write!(f, "{w} carries an extension twice, or a malformed one"),
            Self::UnknownCriticalExtension { cert, oid } => {
                write!(f, "{cert} carries a critical extension this validator does not process: {oid}")
            }
            Self::SignatureAlgorithmMismatch(w) => {
                write!(f, "{w}: the signature algorithm inside the certificate differs from the outer one")
            }
            Self::NotValidNow { cert, not_before, not_after, now } => write!(
                f,
                "{cert} is not valid at {now} (valid {not_before} to {not_after}, Unix seconds); check the device clock"
            ),
            Self::NotACa(w) => write!(f, "{w} issues certificates but is not a CA (basicConstraints)"),
            Self::NoKeyCertSign(w) => write!(f, "{w} may not sign certificates (keyUsage lacks keyCertSign)"),
            Self::PathLengthExceeded(w) => write!(f, "{w} is one CA too many below a CA's path length constraint"),
            Self::NameNotPermitted { ca, cert } => write!(f, "{cert}: its subject is outside the names {ca} permits"),
            Self::UnsupportedNameConstraint(w) => {
                write!(f, "{w} carries a name constraint other than directoryName, which is not applied here")
            }
            Self::CaAsEndEntity => f.write_str("the leaf is a CA certificate, not an end entity"),
            Self::PurposeNotAllowed(w) => {
                write!(f, "{w}: its extendedKeyUsage does not allow TLS client authentication")
            }
            Self::LeafKeyUsage => f.write_str("the leaf's keyUsage does not allow digitalSignature"),
            Self::UnsupportedKey(w) => write!(f, "{w} has a key of a type not verified here (P-256, P-384, Ed25519)"),
            Self::NoIssuer(w) => {
                write!(f, "no issuer found for {w}: no CA given with its issuer's name has a key that verifies it")
            }
            Self::TooDeep => write!(f, "no path to the trust anchor within {MAX_DEPTH} certificates"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ChainError {}

struct Node<'a> {
    der: &'a [u8],
    cert: Certificate,
    bc: Option<BasicConstraints>,
    ku: Option<KeyUsage>,
    eku: Option<ExtendedKeyUsage>,
    nc: Option<NameConstraints>,
}

impl<'a> Node<'a> {
    fn read(der: &'a [u8], which: Which) -> Result<Self, ChainError> {
        let cert = Certificate::from_der(der).map_err(|_| ChainError::Malformed(which))?;
        let mut n = Node { der, cert, bc: None, ku: None, eku: None, nc: None };
        let exts = n.cert.tbs_certificate.extensions.clone().unwrap_or_default();
        for (i, e) in exts.iter().enumerate() {
            if exts[..i].iter().any(|p| p.extn_id == e.extn_id) {
                return Err(ChainError::BadExtension(which));
            }
            let v = e.extn_value.as_bytes();
            let bad = |_| ChainError::BadExtension(which);
            match e.extn_id {
                BasicConstraints::OID => n.bc = Some(BasicConstraints::from_der(v).map_err(bad)?),
                KeyUsage::OID => n.ku = Some(KeyUsage::from_der(v).map_err(bad)?),
                ExtendedKeyUsage::OID => n.eku = Some(ExtendedKeyUsage::from_der(v).map_err(bad)?),
                NameConstraints::OID => n.nc = Some(NameConstraints::from_der(v).map_err(bad)?),
                rfc5280::ID_CE_SUBJECT_ALT_NAME => {}
                oid if e.critical => return Err(ChainError::UnknownCriticalExtension { cert: which, oid }),
                _ => {}
            }
        }
        Ok(n)
    }

    fn is_ca(&self) -> bool {
        self.bc.as_ref().is_some_and(|b| b.ca)
    }

    fn self_issued(&self) -> bool {
        self.cert.tbs_certificate.issuer == self.cert.tbs_certificate.subject
    }

    /// Whether `issuer`'s key verifies this certificate's signature.
    fn signed_by(&self, issuer: &Node<'_>, which_issuer: Which) -> Result<bool, ChainError> {
        if self.cert.tbs_certificate.issuer != issuer.cert.tbs_certificate.subject {
            return Ok(false);
        }
        let key = PublicKey::from_spki(&issuer.cert.tbs_certificate.subject_public_key_info)
            .map_err(|_| ChainError::UnsupportedKey(which_issuer))?;
        let (Some(tbs), Some(sig)) = (crate::derx::signed_part(self.der), self.cert.signature.as_bytes()) else {
            return Ok(false);
        };
        Ok(key.verify_x509(&self.cert.signature_algorithm, tbs, sig).is_ok())
    }

    fn check_common(&self, which: Which, now: u64, purpose: Purpose) -> Result<(), ChainError> {
        if self.cert.tbs_certificate.signature != self.cert.signature_algorithm {
            return Err(ChainError::SignatureAlgorithmMismatch(which));
        }
        let v = &self.cert.tbs_certificate.validity;
        let (not_before, not_after) =
            (v.not_before.to_unix_duration().as_secs(), v.not_after.to_unix_duration().as_secs());
        if now < not_before || now > not_after {
            return Err(ChainError::NotValidNow { cert: which, not_before, not_after, now });
        }
        if let Some(eku) = &self.eku {
            if !eku.0.contains(&purpose.oid()) {
                return Err(ChainError::PurposeNotAllowed(which));
            }
        }
        Ok(())
    }
}

/// Validate `leaf` (DER) up to `anchor` through `intermediates` (any order,
/// extras allowed) at `now` (Unix seconds) for `purpose`.
pub fn verify(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    anchor: &[u8],
    now: u64,
    purpose: Purpose,
) -> Result<(), ChainError> {
    if intermediates.len() > MAX_INTERMEDIATES {
        return Err(ChainError::TooManyIntermediates { given: intermediates.len() });
    }
    let anchor = Node::read(anchor, Which::Anchor)?;
    let leaf = Node::read(leaf, Which::Leaf)?;
    let mut pool = Vec::with_capacity(intermediates.len());
    for (i, c) in intermediates.iter().enumerate() {
        pool.push(Some(Node::read(c, Which::Intermediate(i + 1))?));
    }
    // Build the path: leaf first, then issuers, greedily (the pool is the
    // server's few CAs; an issuer must match by name and signature).
    let mut path: Vec<Node<'_>> = alloc::vec![leaf];
    loop {
        if path.len() >= MAX_DEPTH {
            return Err(ChainError::TooDeep);
        }
        let depth = path.len() - 1;
        let which = if depth == 0 { Which::Leaf } else { Which::Intermediate(depth) };
        let child = &path[depth];
        if child.signed_by(&anchor, Which::Anchor)? {
            break;
        }
        let mut found = None;
        for (i, slot) in pool.iter().enumerate() {
            if let Some(n) = slot {
                if child.signed_by(n, Which::Intermediate(depth + 1))? {
                    found = Some(i);
                    break;
                }
            }
        }
        match found.and_then(|i| pool[i].take()) {
            Some(n) => path.push(n),
            None => return Err(ChainError::NoIssuer(which)),
        }
    }
    // The rules, top down.
    let leaf = &path[0];
    leaf.check_common(Which::Leaf, now, purpose)?;
    if leaf.is_ca() {
        return Err(ChainError::CaAsEndEntity);
    }
    if leaf.ku.as_ref().is_some_and(|k| !k.0.contains(KeyUsages::DigitalSignature)) {
        return Err(ChainError::LeafKeyUsage);
    }
    for (depth, n) in path.iter().enumerate().skip(1) {
        let which = Which::Intermediate(depth);
        n.check_common(which, now, purpose)?;
        if !n.is_ca() {
            return Err(ChainError::NotACa(which));
        }
        if n.ku.as_ref().is_some_and(|k| !k.0.contains(KeyUsages::KeyCertSign)) {
            return Err(ChainError::NoKeyCertSign(which));
        }
        if let Some(limit) = n.bc.as_ref().and_then(|b| b.path_len_constraint) {
            // Non-self-issued intermediates below this one (the leaf is not counted).
            let below = path[1..depth].iter().filter(|b| !b.self_issued()).count();
            if below > usize::from(limit) {
                return Err(ChainError::PathLengthExceeded(Which::Intermediate(depth - 1)));
            }
        }
    }
    // Name constraints: the anchor's and each intermediate's, on every subject below.
    let constrainers = core::iter::once((Which::Anchor, &anchor, path.len()))
        .chain(path.iter().enumerate().skip(1).map(|(d, n)| (Which::Intermediate(d), n, d)));
    for (ca, n, below) in constrainers {
        let Some(nc) = &n.nc else { continue };
        for (depth, c) in path[..below].iter().enumerate() {
            // A self-issued intermediate's own name is not constrained (RFC 5280 6.1.3 b).
            if depth > 0 && c.self_issued() {
                continue;
            }
            let cert = if depth == 0 { Which::Leaf } else { Which::Intermediate(depth) };
            check_name(nc, &c.cert.tbs_certificate.subject, ca, cert)?;
        }
    }
    Ok(())
}

fn check_name(nc: &NameConstraints, subject: &Name, ca: Which, cert: Which) -> Result<(), ChainError> {
    let dir = |list: &Option<Vec<GeneralSubtree>>| -> Result<Vec<Name>, ChainError> {
        let mut out = Vec::new();
        for s in list.as_deref().unwrap_or_default() {
            match &s.base {
                GeneralName::DirectoryName(n) if s.minimum == 0 && s.maximum.is_none() => out.push(n.clone()),
                _ => return Err(ChainError::UnsupportedNameConstraint(ca)),
            }
        }
        Ok(out)
    };
    let (permitted, excluded) = (dir(&nc.permitted_subtrees)?, dir(&nc.excluded_subtrees)?);
    let within = |base: &Name| {
        base.0.len() <= subject.0.len()
            && base.0.iter().zip(subject.0.iter()).all(|(a, b)| a.to_der().ok() == b.to_der().ok())
    };
    if (!permitted.is_empty() && !permitted.iter().any(within)) || excluded.iter().any(within) {
        return Err(ChainError::NameNotPermitted { ca, cert });
    }
    Ok(())
}
