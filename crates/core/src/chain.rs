//! Certification path validation (RFC 5280 section 6).
//!
//! rustls-webpki rejects every certificate under a directoryName name
//! constraint (it does not implement them; RFC 5280 allows rejecting). Our
//! delegated CAs are constrained to their batch's namespace with exactly
//! that, so their chains are validated here. What is checked:
//!
//! - **Path building** from the leaf up through the given intermediates to
//!   the trust anchor, issuers matched by name (RFC 5280 7.1 comparison) and
//!   signature. Every candidate issuer is tried, with backtracking: a path
//!   that dead-ends or fails a rule below does not hide another that holds.
//!   The work is capped by a [`Budget`] (signature checks, path-building
//!   steps, name-constraint comparisons), so a hostile pile of
//!   intermediates costs a bounded amount.
//! - **Every certificate**, the anchor included: well-formed, no extension
//!   twice (RFC 5280 4.2), every extension we read well-formed (the
//!   subjectAltName included), no critical extension we do not process,
//!   valid at `now`; below the anchor, the inner and outer signature
//!   algorithms equal (4.1.1.2) and the signature verified.
//! - **The anchor and every intermediate** are CAs (basicConstraints cA),
//!   with keyCertSign when keyUsage is present, and with
//!   pathLenConstraint honoured as 6.1.4 (l, m) says (self-issued
//!   intermediates do not count); an extendedKeyUsage on a CA restricts the
//!   purposes below it.
//! - **Name constraints** of the anchor and every intermediate, on every
//!   certificate below (a self-issued intermediate's own names excepted,
//!   6.1.3 b): directoryName on the subject and directoryName SANs (RDN
//!   prefix, values compared as 7.1 says), dNSName, rfc822Name (and the
//!   subject's emailAddress when there is no SAN), iPAddress and URI hosts.
//!   A name must be in some permitted subtree of its form (when the CA
//!   permits any of that form) and in no excluded one. directoryName
//!   subtrees are looked up in a hash set of prefixes, so a CA with one
//!   subtree per device (10,000 and more) costs the same per name as one
//!   with a single subtree. A constraint on any other name form refuses the
//!   certificates that carry a name of that form (fail closed, 4.2.1.10).
//! - **The leaf** is an end entity (not cA), its extendedKeyUsage lists the
//!   purpose asked for, and its keyUsage, when present, allows
//!   digitalSignature (a TLS client or server signs).
//!
//! Not done here: revocation (CRLs and OCSP are checked by their own code),
//! certificate policies (a critical policy extension is refused as
//! unprocessed), DSA and other algorithms `keys::verify` does not know.
//! NIST PKITS runs over this validator: crates/core/tests/pkits.rs lists
//! each case it handles and each it does not, with the reason.

use std::collections::{HashMap, HashSet};
use std::fmt;

use const_oid::db::rfc5280;
use const_oid::{AssociatedOid, ObjectIdentifier};
use der::Decode;
use x509_cert::ext::pkix::constraints::name::{GeneralSubtree, NameConstraints};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::keys;
use crate::name::{prepare, prepare_rdn, PreparedName, PreparedValue};

/// Longest path accepted, counting the leaf, the intermediates and the
/// anchor: a leaf, at most six intermediates, and the anchor.
pub const MAX_DEPTH: usize = 8;

/// Most intermediates a caller may hand in (the pool paths are built from).
pub const MAX_INTERMEDIATES: usize = 256;

/// The work one validation may do; exceeding any part refuses the path with
/// [`ChainError::BudgetExceeded`]. Every part is far above what a genuine
/// chain needs (ours: three signatures, a handful of steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Signature verifications (each an RSA or ECDSA verify).
    pub signatures: usize,
    /// Issuer candidates considered while building paths.
    pub build_steps: usize,
    /// Name-constraint comparisons (one per subtree compared, one per
    /// prefix looked up for directoryName).
    pub name_comparisons: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self { signatures: 100, build_steps: 400, name_comparisons: 250_000 }
    }
}

/// What the leaf is to be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The leaf must list this extendedKeyUsage (or anyExtendedKeyUsage), no
    /// CA on the path may exclude it, and the leaf's keyUsage, if present,
    /// must allow digitalSignature.
    ExtendedKeyUsage(ObjectIdentifier),
    /// RFC 5280 path validation only, no purpose (used to run NIST PKITS,
    /// whose end entities carry no extendedKeyUsage).
    AnyPurpose,
}

/// What to check a path against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The leaf's purpose.
    pub purpose: Purpose,
    /// The work cap.
    pub budget: Budget,
}

impl Policy {
    /// The default budget, for `purpose`.
    pub fn new(purpose: Purpose) -> Self {
        Self { purpose, budget: Budget::default() }
    }
}

/// Which certificate of a path a [`ChainError`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Which {
    /// Position: 0 is the leaf, the anchor is last.
    pub depth: usize,
    /// Whether it is the trust anchor.
    pub anchor: bool,
    /// Its subject, RFC 4514.
    pub subject: String,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.depth, self.anchor) {
            (_, true) => write!(f, "the trust anchor ({})", self.subject),
            (0, false) => write!(f, "the leaf ({})", self.subject),
            (d, false) => write!(f, "intermediate {d} ({})", self.subject),
        }
    }
}

/// Why a certification path was refused: one variant per rule.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainError {
    /// A certificate is not DER we can read.
    Malformed {
        /// What was being read ("leaf", "anchor", "intermediate 3").
        what: String,
        /// The decoder's message.
        detail: String,
    },
    /// More intermediates than [`MAX_INTERMEDIATES`] were handed in.
    TooManyIntermediates {
        /// How many.
        given: usize,
    },
    /// A certificate carries one extension twice (RFC 5280 4.2).
    DuplicateExtension {
        /// The certificate.
        cert: Which,
        /// The extension.
        oid: ObjectIdentifier,
    },
    /// An extension's value is malformed.
    BadExtension {
        /// The certificate.
        cert: Which,
        /// The extension.
        oid: ObjectIdentifier,
        /// The decoder's message.
        detail: String,
    },
    /// A critical extension this validator does not process.
    UnknownCriticalExtension {
        /// The certificate.
        cert: Which,
        /// The extension.
        oid: ObjectIdentifier,
    },
    /// The signature algorithm inside the TBS differs from the outer one (RFC 5280 4.1.1.2).
    SignatureAlgorithmMismatch {
        /// The certificate.
        cert: Which,
    },
    /// A certificate is not valid at the time of validation.
    NotValidNow {
        /// The certificate.
        cert: Which,
        /// notBefore, Unix seconds.
        not_before: i64,
        /// notAfter, Unix seconds.
        not_after: i64,
        /// The time of validation.
        now: i64,
    },
    /// An issuer (intermediate or anchor) is not a CA.
    NotACa {
        /// The certificate.
        cert: Which,
    },
    /// An issuer's keyUsage does not allow keyCertSign.
    NoKeyCertSign {
        /// The certificate.
        cert: Which,
    },
    /// More non-self-issued intermediates below a CA than its pathLenConstraint allows.
    PathLengthExceeded {
        /// The intermediate that is one too many.
        cert: Which,
    },
    /// A name is outside every permitted subtree of its form.
    NameNotPermitted {
        /// The constraining CA.
        ca: Which,
        /// The constrained certificate.
        cert: Which,
        /// The name.
        name: String,
    },
    /// A name is inside an excluded subtree.
    NameExcluded {
        /// The constraining CA.
        ca: Which,
        /// The constrained certificate.
        cert: Which,
        /// The name.
        name: String,
    },
    /// A name constraint this validator cannot apply meets a name of its form,
    /// or a constraint is malformed.
    UnsupportedNameConstraint {
        /// The constraining CA.
        ca: Which,
        /// What is wrong.
        detail: String,
    },
    /// The leaf is a CA certificate, used as an end entity.
    CaAsEndEntity {
        /// The leaf.
        cert: Which,
    },
    /// The leaf's extendedKeyUsage does not list the purpose, or a CA's excludes it.
    PurposeNotAllowed {
        /// The certificate.
        cert: Which,
        /// The purpose asked for.
        purpose: ObjectIdentifier,
    },
    /// The leaf's keyUsage does not allow digitalSignature.
    LeafKeyUsage {
        /// The leaf.
        cert: Which,
    },
    /// No issuer was found for a certificate (none in the pool or the anchor
    /// whose name and signature fit).
    NoIssuer {
        /// The certificate without an issuer.
        cert: Which,
        /// Its issuer name.
        issuer: String,
    },
    /// Every path would be longer than [`MAX_DEPTH`].
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// The work cap was reached before a path was found.
    BudgetExceeded {
        /// Which part ran out.
        what: &'static str,
    },
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { what, detail } => write!(f, "the {what} certificate is malformed: {detail}"),
            Self::TooManyIntermediates { given } => {
                write!(f, "{given} intermediates given; at most {MAX_INTERMEDIATES} are read")
            }
            Self::DuplicateExtension { cert, oid } => write!(f, "{cert} carries extension {oid} twice"),
            Self::BadExtension { cert, oid, detail } => write!(f, "{cert}: extension {oid} is malformed: {detail}"),
            Self::UnknownCriticalExtension { cert, oid } => {
                write!(f, "{cert} carries a critical extension this validator does not process: {oid}")
            }
            Self::SignatureAlgorithmMismatch { cert } => {
                write!(f, "{cert}: the signature algorithm inside the certificate differs from the outer one")
            }
            Self::NotValidNow { cert, not_before, not_after, now } => write!(
                f,
                "{cert} is not valid at {} (valid {} to {})",
                crate::time::rfc3339(*now),
                crate::time::rfc3339(*not_before),
                crate::time::rfc3339(*not_after)
            ),
            Self::NotACa { cert } => write!(f, "{cert} issues certificates but is not a CA (basicConstraints)"),
            Self::NoKeyCertSign { cert } => write!(f, "{cert} may not sign certificates (keyUsage lacks keyCertSign)"),
            Self::PathLengthExceeded { cert } => {
                write!(f, "{cert} is one CA too many below a CA's path length constraint")
            }
            Self::NameNotPermitted { ca, cert, name } => {
                write!(f, "{cert}: {name} is outside the permitted names of {ca}")
            }
            Self::NameExcluded { ca, cert, name } => write!(f, "{cert}: {name} is an excluded name of {ca}"),
            Self::UnsupportedNameConstraint { ca, detail } => write!(f, "{ca}: name constraint: {detail}"),
            Self::CaAsEndEntity { cert } => write!(f, "{cert} is a CA certificate, not an end entity"),
            Self::PurposeNotAllowed { cert, purpose } => {
                write!(f, "{cert}: its extendedKeyUsage does not allow {purpose}")
            }
            Self::LeafKeyUsage { cert } => write!(f, "{cert}: its keyUsage does not allow digitalSignature"),
            Self::NoIssuer { cert, issuer } => {
                write!(f, "no issuer found for {cert}: nothing named {issuer} signed it")
            }
            Self::TooDeep { max } => write!(f, "no path to the trust anchor within {max} certificates"),
            Self::BudgetExceeded { what } => write!(f, "path validation gave up: too many {what}"),
        }
    }
}

impl std::error::Error for ChainError {}

impl From<ChainError> for crate::Error {
    fn from(e: ChainError) -> Self {
        crate::Error::Profile(format!("chain: {e}"))
    }
}

/// Validate `leaf` (DER) up to `anchor` through `intermediates` (any order,
/// any extras), at `now`, for the extendedKeyUsage `usage` (e.g. clientAuth),
/// with the default [`Budget`].
pub fn verify(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    anchor: &[u8],
    now: i64,
    usage: ObjectIdentifier,
) -> Result<(), ChainError> {
    verify_with(leaf, intermediates, anchor, now, &Policy::new(Purpose::ExtendedKeyUsage(usage)))
}

/// Like [`verify`], with the purpose and budget given by `policy`.
pub fn verify_with(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    anchor: &[u8],
    now: i64,
    policy: &Policy,
) -> Result<(), ChainError> {
    if intermediates.len() > MAX_INTERMEDIATES {
        return Err(ChainError::TooManyIntermediates { given: intermediates.len() });
    }
    let leaf = Node::parse(leaf, "leaf")?;
    let anchor = Node::parse(anchor, "trust anchor")?;
    let mut pool = Vec::with_capacity(intermediates.len());
    for (i, d) in intermediates.iter().enumerate() {
        if d.as_slice() == leaf.der.as_slice() || d.as_slice() == anchor.der.as_slice() {
            continue;
        }
        pool.push(Node::parse(d, &format!("intermediate {}", i + 1))?);
    }
    let mut by_subject: HashMap<PreparedName, Vec<usize>> = HashMap::new();
    for (i, n) in pool.iter().enumerate() {
        by_subject.entry(n.subject.clone()).or_default().push(i);
    }
    let mut b = Builder {
        leaf,
        anchor,
        pool,
        by_subject,
        policy: *policy,
        now,
        used: Budget { signatures: 0, build_steps: 0, name_comparisons: 0 },
        signed: HashMap::new(),
        best: None,
    };
    let mut path = Vec::new();
    if b.build(&mut path)? {
        return Ok(());
    }
    Err(b.best.map(|(_, e)| e).unwrap_or(ChainError::TooDeep { max: MAX_DEPTH }))
}

/// Something wrong with one certificate whatever its place in a path.
#[derive(Clone, Debug)]
enum Problem {
    Duplicate(ObjectIdentifier),
    Bad(ObjectIdentifier, String),
    UnknownCritical(ObjectIdentifier),
    Constraint(String),
}

/// The extensions we read, each decoded once.
#[derive(Default)]
struct Exts {
    bc: Option<BasicConstraints>,
    ku: Option<KeyUsage>,
    eku: Option<Vec<ObjectIdentifier>>,
    nc: Option<Constraints>,
    san: Option<Vec<GeneralName>>,
}

/// One side (permitted or excluded) of a name constraints extension, made
/// ready for matching.
#[derive(Default)]
struct Subtrees {
    /// directoryName bases, as prepared RDN sequences (prefix lookup).
    dir: HashSet<Vec<Vec<(ObjectIdentifier, PreparedValue)>>>,
    dir_any: bool,
    dns: Vec<String>,
    email: Vec<String>,
    ip: Vec<(Vec<u8>, Vec<u8>)>,
    uri: Vec<String>,
    /// Name forms constrained that we cannot match (otherName, ediPartyName, registeredID).
    other: Vec<&'static str>,
}

#[derive(Default)]
struct Constraints {
    permitted: Option<Subtrees>,
    excluded: Subtrees,
}

struct Node {
    der: Vec<u8>,
    tbs: std::ops::Range<usize>,
    cert: Certificate,
    subject: PreparedName,
    issuer: PreparedName,
    self_issued: bool,
    exts: Exts,
    problem: Option<Problem>,
    alg_mismatch: bool,
}

fn form(n: &GeneralName) -> &'static str {
    match n {
        GeneralName::OtherName(_) => "otherName",
        GeneralName::Rfc822Name(_) => "rfc822Name",
        GeneralName::DnsName(_) => "dNSName",
        GeneralName::DirectoryName(_) => "directoryName",
        GeneralName::EdiPartyName(_) => "ediPartyName",
        GeneralName::UniformResourceIdentifier(_) => "uniformResourceIdentifier",
        GeneralName::IpAddress(_) => "iPAddress",
        GeneralName::RegisteredId(_) => "registeredID",
    }
}

fn subtrees(list: &[GeneralSubtree]) -> Result<Subtrees, String> {
    let mut s = Subtrees::default();
    if list.is_empty() {
        // GeneralSubtrees is SIZE (1..MAX): an empty list would permit nothing or
        // everything depending on the reader; refuse it.
        return Err("an empty list of subtrees (RFC 5280 4.2.1.10: SIZE 1..MAX)".into());
    }
    for t in list {
        if t.minimum != 0 || t.maximum.is_some() {
            return Err("a subtree with minimum or maximum (RFC 5280 4.2.1.10: MUST be 0 and absent)".into());
        }
        match &t.base {
            GeneralName::DirectoryName(n) => {
                s.dir_any = true;
                s.dir.insert(prepare(n).0);
            }
            GeneralName::DnsName(d) => s.dns.push(d.as_str().to_ascii_lowercase()),
            GeneralName::Rfc822Name(m) => s.email.push(m.as_str().to_owned()),
            GeneralName::UniformResourceIdentifier(u) => s.uri.push(u.as_str().to_ascii_lowercase()),
            GeneralName::IpAddress(ip) => {
                let b = ip.as_bytes();
                if b.len() != 8 && b.len() != 32 {
                    return Err(format!("an iPAddress subtree of {} octets (8 or 32 expected)", b.len()));
                }
                let (addr, mask) = b.split_at(b.len() / 2);
                s.ip.push((addr.to_vec(), mask.to_vec()));
            }
            other => s.other.push(form(other)),
        }
    }
    Ok(s)
}

fn known_critical(oid: &ObjectIdentifier) -> bool {
    [
        BasicConstraints::OID,
        KeyUsage::OID,
        ExtendedKeyUsage::OID,
        NameConstraints::OID,
        SubjectAltName::OID,
        SubjectKeyIdentifier::OID,
        AuthorityKeyIdentifier::OID,
    ]
    .contains(oid)
}

fn decode<T: for<'a> Decode<'a> + AssociatedOid>(v: &[u8]) -> Result<T, Problem> {
    T::from_der(v).map_err(|e| Problem::Bad(T::OID, e.to_string()))
}

fn read_exts(cert: &Certificate) -> Result<Exts, Problem> {
    let list = cert.tbs_certificate.extensions.as_deref().unwrap_or_default();
    let mut seen = HashSet::with_capacity(list.len());
    let mut x = Exts::default();
    for e in list {
        if !seen.insert(e.extn_id) {
            return Err(Problem::Duplicate(e.extn_id));
        }
        let v = e.extn_value.as_bytes();
        match e.extn_id {
            BasicConstraints::OID => x.bc = Some(decode(v)?),
            KeyUsage::OID => x.ku = Some(decode(v)?),
            ExtendedKeyUsage::OID => x.eku = Some(decode::<ExtendedKeyUsage>(v)?.0),
            SubjectAltName::OID => x.san = Some(decode::<SubjectAltName>(v)?.0),
            NameConstraints::OID => {
                let nc: NameConstraints = decode(v)?;
                let permitted =
                    nc.permitted_subtrees.as_deref().map(subtrees).transpose().map_err(Problem::Constraint)?;
                let excluded = match nc.excluded_subtrees.as_deref() {
                    Some(list) => subtrees(list).map_err(Problem::Constraint)?,
                    None => Subtrees::default(),
                };
                if permitted.is_none() && nc.excluded_subtrees.is_none() {
                    return Err(Problem::Constraint(
                        "neither permitted nor excluded subtrees (RFC 5280 4.2.1.10)".into(),
                    ));
                }
                x.nc = Some(Constraints { permitted, excluded });
            }
            SubjectKeyIdentifier::OID => drop(decode::<SubjectKeyIdentifier>(v)?),
            AuthorityKeyIdentifier::OID => drop(decode::<AuthorityKeyIdentifier>(v)?),
            oid if e.critical => return Err(Problem::UnknownCritical(oid)),
            _ => {}
        }
    }
    // Every extension decoded: now the unknown critical ones (after duplicates, whatever the order).
    debug_assert!(list.iter().all(|e| !e.critical || known_critical(&e.extn_id)));
    Ok(x)
}

/// The byte range of the TBS inside the certificate's DER: the signature is
/// over those bytes as sent, not over a re-encoding.
fn tbs_range(der: &[u8]) -> Result<std::ops::Range<usize>, der::Error> {
    use der::Reader;
    let mut r = der::SliceReader::new(der)?;
    let _outer = der::Header::decode(&mut r)?;
    let start = usize::try_from(r.position())?;
    let tbs = r.tlv_bytes()?;
    Ok(start..start + tbs.len())
}

impl Node {
    fn parse(der: &[u8], what: &str) -> Result<Self, ChainError> {
        let bad = |e: der::Error| ChainError::Malformed { what: what.to_string(), detail: e.to_string() };
        let cert = Certificate::from_der(der).map_err(bad)?;
        let tbs = tbs_range(der).map_err(bad)?;
        let (exts, problem) = match read_exts(&cert) {
            Ok(x) => (x, None),
            Err(p) => (Exts::default(), Some(p)),
        };
        let t = &cert.tbs_certificate;
        let subject = prepare(&t.subject);
        let issuer = prepare(&t.issuer);
        Ok(Self {
            der: der.to_vec(),
            tbs,
            self_issued: subject == issuer,
            alg_mismatch: t.signature != cert.signature_algorithm,
            subject,
            issuer,
            exts,
            problem,
            cert,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum At {
    Leaf,
    Pool(usize),
    Anchor,
}

struct Builder {
    leaf: Node,
    anchor: Node,
    pool: Vec<Node>,
    by_subject: HashMap<PreparedName, Vec<usize>>,
    policy: Policy,
    now: i64,
    used: Budget,
    signed: HashMap<(At, At), bool>,
    /// The most telling refusal so far: (rank, error); a complete path's
    /// failure (2) beats a dead end (1).
    best: Option<(u8, ChainError)>,
}

fn which(n: &Node, depth: usize, anchor: bool) -> Which {
    Which { depth, anchor, subject: crate::name::to_rfc4514(&n.cert.tbs_certificate.subject) }
}

impl Builder {
    fn node(&self, at: At) -> &Node {
        match at {
            At::Leaf => &self.leaf,
            At::Pool(i) => &self.pool[i],
            At::Anchor => &self.anchor,
        }
    }

    fn note(&mut self, rank: u8, e: ChainError) {
        if self.best.as_ref().is_none_or(|(r, _)| *r < rank) {
            self.best = Some((rank, e));
        }
    }

    fn step(&mut self) -> Result<(), ChainError> {
        self.used.build_steps += 1;
        if self.used.build_steps > self.policy.budget.build_steps {
            return Err(ChainError::BudgetExceeded { what: "path-building steps" });
        }
        Ok(())
    }

    /// Whether `issuer` signed `child` (names already match).
    fn signed_by(&mut self, child: At, issuer: At) -> Result<bool, ChainError> {
        if let Some(v) = self.signed.get(&(child, issuer)) {
            return Ok(*v);
        }
        self.used.signatures += 1;
        if self.used.signatures > self.policy.budget.signatures {
            return Err(ChainError::BudgetExceeded { what: "signature checks" });
        }
        let (c, i) = (self.node(child), self.node(issuer));
        let ok = c.cert.signature.as_bytes().is_some_and(|sig| {
            keys::verify(
                &i.cert.tbs_certificate.subject_public_key_info,
                &c.cert.signature_algorithm,
                &c.der[c.tbs.clone()],
                sig,
            )
            .is_ok()
        });
        self.signed.insert((child, issuer), ok);
        Ok(ok)
    }

    /// Depth-first: extend `path` (pool indices above the leaf) until the
    /// anchor signs and the whole path validates. Err only when the budget
    /// runs out.
    fn build(&mut self, path: &mut Vec<usize>) -> Result<bool, ChainError> {
        let top = path.last().map_or(At::Leaf, |i| At::Pool(*i));
        let mut issuer_found = false;
        if self.node(top).issuer == self.anchor.subject {
            self.step()?;
            if self.signed_by(top, At::Anchor)? {
                issuer_found = true;
                match self.validate(path) {
                    Ok(()) => return Ok(true),
                    Err(e @ ChainError::BudgetExceeded { .. }) => return Err(e),
                    Err(e) => self.note(2, e),
                }
            }
        }
        let candidates = self.by_subject.get(&self.node(top).issuer).cloned().unwrap_or_default();
        // Certificates so far: the leaf, the path, one more intermediate, and the anchor.
        if !candidates.is_empty() && path.len() + 3 > MAX_DEPTH {
            self.note(1, ChainError::TooDeep { max: MAX_DEPTH });
            return Ok(false);
        }
        for c in candidates {
            self.step()?;
            if path.contains(&c) || !self.signed_by(top, At::Pool(c))? {
                continue;
            }
            issuer_found = true;
            path.push(c);
            if self.build(path)? {
                return Ok(true);
            }
            path.pop();
        }
        if !issuer_found {
            let n = self.node(top);
            let e = ChainError::NoIssuer {
                cert: which(n, path.len(), false),
                issuer: crate::name::to_rfc4514(&n.cert.tbs_certificate.issuer),
            };
            self.note(1, e);
        }
        Ok(false)
    }

    /// RFC 5280 6.1 over one complete path: leaf, `path`, anchor.
    fn validate(&mut self, path: &[usize]) -> Result<(), ChainError> {
        let mut at = vec![At::Leaf];
        at.extend(path.iter().map(|i| At::Pool(*i)));
        at.push(At::Anchor);
        let last = at.len() - 1;
        let w = |s: &Self, i: usize| which(s.node(at[i]), i, i == last);
        // Each certificate on its own.
        for (i, &a) in at.iter().enumerate() {
            let n = self.node(a);
            if let Some(p) = &n.problem {
                let cert = w(self, i);
                return Err(match p.clone() {
                    Problem::Duplicate(oid) => ChainError::DuplicateExtension { cert, oid },
                    Problem::Bad(oid, detail) => ChainError::BadExtension { cert, oid, detail },
                    Problem::UnknownCritical(oid) => ChainError::UnknownCriticalExtension { cert, oid },
                    Problem::Constraint(detail) => ChainError::UnsupportedNameConstraint { ca: cert, detail },
                });
            }
            if i != last && n.alg_mismatch {
                return Err(ChainError::SignatureAlgorithmMismatch { cert: w(self, i) });
            }
            let v = &n.cert.tbs_certificate.validity;
            let (nb, na) = (crate::time::unix(&v.not_before), crate::time::unix(&v.not_after));
            if self.now < nb || self.now > na {
                return Err(ChainError::NotValidNow { cert: w(self, i), not_before: nb, not_after: na, now: self.now });
            }
        }
        // From the anchor down (6.1.2 to 6.1.4): the CAs' rules.
        let mut max_path = usize::MAX;
        let mut constraining: Vec<usize> = Vec::new();
        for i in (1..=last).rev() {
            let n = self.node(at[i]);
            if i != last && !n.self_issued {
                for &ca in &constraining {
                    self.names_within(&at, ca, i, last)?;
                }
            }
            let n = self.node(at[i]);
            let Some(bc) = n.exts.bc.as_ref().filter(|b| b.ca) else {
                return Err(ChainError::NotACa { cert: w(self, i) });
            };
            if n.exts.ku.as_ref().is_some_and(|k| !k.key_cert_sign()) {
                return Err(ChainError::NoKeyCertSign { cert: w(self, i) });
            }
            if let (Purpose::ExtendedKeyUsage(p), Some(eku)) = (self.policy.purpose, &n.exts.eku) {
                if !eku.contains(&p) && !eku.contains(&rfc5280::ANY_EXTENDED_KEY_USAGE) {
                    return Err(ChainError::PurposeNotAllowed { cert: w(self, i), purpose: p });
                }
            }
            if i != last && !n.self_issued {
                if max_path == 0 {
                    return Err(ChainError::PathLengthExceeded { cert: w(self, i) });
                }
                max_path -= 1;
            }
            if let Some(pl) = bc.path_len_constraint {
                max_path = max_path.min(usize::from(pl));
            }
            if n.exts.nc.is_some() {
                constraining.push(i);
            }
        }
        // The leaf (6.1.3, 6.1.5).
        for &ca in &constraining {
            self.names_within(&at, ca, 0, last)?;
        }
        let n = &self.leaf;
        if n.exts.bc.as_ref().is_some_and(|b| b.ca) {
            return Err(ChainError::CaAsEndEntity { cert: w(self, 0) });
        }
        if let Purpose::ExtendedKeyUsage(p) = self.policy.purpose {
            let eku = n.exts.eku.as_deref().unwrap_or_default();
            if !eku.contains(&p) && !eku.contains(&rfc5280::ANY_EXTENDED_KEY_USAGE) {
                return Err(ChainError::PurposeNotAllowed { cert: w(self, 0), purpose: p });
            }
            if n.exts.ku.as_ref().is_some_and(|k| !k.0.contains(KeyUsages::DigitalSignature)) {
                return Err(ChainError::LeafKeyUsage { cert: w(self, 0) });
            }
        }
        Ok(())
    }

    /// The names of certificate `i` of the path against the name constraints of CA `ca`.
    fn names_within(&mut self, at: &[At], ca: usize, i: usize, last: usize) -> Result<(), ChainError> {
        let limit = self.policy.budget.name_comparisons;
        let (c, n) = (self.node(at[ca]), self.node(at[i]));
        let Some(nc) = &n_constraints(c) else { return Ok(()) };
        let mut names: Vec<Named<'_>> = Vec::new();
        let subject = &n.cert.tbs_certificate.subject;
        if !subject.0.is_empty() {
            names.push(Named::Dir(subject));
        }
        match &n.exts.san {
            Some(san) => names.extend(san.iter().map(Named::General)),
            None => {
                // 4.2.1.10: without a SAN, rfc822Name constraints apply to the subject's emailAddress.
                for atv in subject.0.iter().flat_map(|r| r.0.iter()) {
                    if atv.oid == const_oid::db::rfc3280::EMAIL_ADDRESS {
                        let v = der::asn1::Ia5StringRef::try_from(&atv.value).map(|s| s.as_str().to_owned());
                        names.push(Named::Email(v.unwrap_or_default()));
                    }
                }
            }
        }
        let mut used = self.used.name_comparisons;
        let mut verdict = Ok(());
        for name in &names {
            match check_name(nc, name, &mut used) {
                Ok(()) => {}
                Err(v) => {
                    let (ca_w, cert_w) = (which(c, ca, ca == last), which(n, i, false));
                    verdict = Err(match v {
                        Verdict::NotPermitted(name) => ChainError::NameNotPermitted { ca: ca_w, cert: cert_w, name },
                        Verdict::Excluded(name) => ChainError::NameExcluded { ca: ca_w, cert: cert_w, name },
                        Verdict::Unsupported(detail) => ChainError::UnsupportedNameConstraint { ca: ca_w, detail },
                    });
                    break;
                }
            }
            if used > limit {
                verdict = Err(ChainError::BudgetExceeded { what: "name-constraint comparisons" });
                break;
            }
        }
        self.used.name_comparisons = used;
        if self.used.name_comparisons > limit {
            return Err(ChainError::BudgetExceeded { what: "name-constraint comparisons" });
        }
        verdict
    }
}

fn n_constraints(n: &Node) -> &Option<Constraints> {
    &n.exts.nc
}

enum Named<'a> {
    Dir(&'a Name),
    General(&'a GeneralName),
    Email(String),
}

enum Verdict {
    NotPermitted(String),
    Excluded(String),
    Unsupported(String),
}

fn check_name(nc: &Constraints, name: &Named<'_>, used: &mut usize) -> Result<(), Verdict> {
    let shown = |s: &str, what: &str| format!("{what} {s:?}");
    let (form_name, text): (&'static str, String) = match name {
        Named::Dir(n) => ("directoryName", crate::name::to_rfc4514(n)),
        Named::Email(e) => ("rfc822Name", e.clone()),
        Named::General(g) => (form(g), String::new()),
    };
    // Unsupported constraint forms: refuse a name of that form.
    for side in nc.permitted.iter().chain(std::iter::once(&nc.excluded)) {
        if side.other.contains(&form_name) {
            return Err(Verdict::Unsupported(format!(
                "constraints on {form_name}, which this validator does not match"
            )));
        }
    }
    // (in the permitted side: some subtree of the form exists, and whether one matches)
    let (has, matches, excluded, shown_name): (bool, bool, bool, String) = match name {
        Named::Dir(n) => dir_verdict(nc, n, used),
        Named::General(GeneralName::DirectoryName(n)) => dir_verdict(nc, n, used),
        Named::Email(e) => email_verdict(nc, e, used, &text),
        Named::General(GeneralName::Rfc822Name(e)) => email_verdict(nc, e.as_str(), used, e.as_str()),
        Named::General(GeneralName::DnsName(d)) => {
            let d = d.as_str().to_ascii_lowercase();
            let f = |t: &Subtrees, used: &mut usize| {
                t.dns.iter().any(|c| {
                    *used += 1;
                    dns_within(&d, c)
                })
            };
            let p = nc.permitted.as_ref();
            let has = p.is_some_and(|t| !t.dns.is_empty());
            let m = has && p.is_some_and(|t| f(t, used));
            (has, m, f(&nc.excluded, used), shown(&d, "dNSName"))
        }
        Named::General(GeneralName::UniformResourceIdentifier(u)) => {
            let host = uri_host(u.as_str());
            let f = |t: &Subtrees, used: &mut usize| {
                t.uri.iter().any(|c| {
                    *used += 1;
                    host.as_deref().is_some_and(|h| host_within(h, c))
                })
            };
            let p = nc.permitted.as_ref();
            let has = p.is_some_and(|t| !t.uri.is_empty());
            let m = has && p.is_some_and(|t| f(t, used));
            (has, m, f(&nc.excluded, used), shown(u.as_str(), "URI"))
        }
        Named::General(GeneralName::IpAddress(ip)) => {
            let ip = ip.as_bytes();
            let f = |t: &Subtrees, used: &mut usize| {
                t.ip.iter().any(|(a, m)| {
                    *used += 1;
                    a.len() == ip.len() && ip.iter().zip(a).zip(m).all(|((x, a), m)| x & m == a & m)
                })
            };
            let p = nc.permitted.as_ref();
            let has = p.is_some_and(|t| !t.ip.is_empty());
            let m = has && p.is_some_and(|t| f(t, used));
            (has, m, f(&nc.excluded, used), format!("iPAddress {}", hex::encode(ip)))
        }
        // otherName, ediPartyName, registeredID under no constraint of their form.
        Named::General(_) => (false, false, false, String::new()),
    };
    if excluded {
        return Err(Verdict::Excluded(shown_name));
    }
    if has && !matches {
        return Err(Verdict::NotPermitted(shown_name));
    }
    Ok(())
}

fn dir_verdict(nc: &Constraints, n: &Name, used: &mut usize) -> (bool, bool, bool, String) {
    // The name's RDN prefixes looked up in the subtree set: the cost is the
    // name's length, whatever the number of subtrees.
    let prepared: Vec<_> = n.0.iter().map(prepare_rdn).collect();
    let within = |t: &Subtrees, used: &mut usize| {
        (0..=prepared.len()).any(|k| {
            *used += 1;
            t.dir.contains(&prepared[..k])
        })
    };
    let p = nc.permitted.as_ref();
    let has = p.is_some_and(|t| t.dir_any);
    let m = has && p.is_some_and(|t| within(t, used));
    let x = nc.excluded.dir_any && within(&nc.excluded, used);
    (has, m, x, format!("directoryName {:?}", crate::name::to_rfc4514(n)))
}

fn email_verdict(nc: &Constraints, e: &str, used: &mut usize, shown: &str) -> (bool, bool, bool, String) {
    let f = |t: &Subtrees, used: &mut usize| {
        t.email.iter().any(|c| {
            *used += 1;
            email_within(e, c)
        })
    };
    let p = nc.permitted.as_ref();
    let has = p.is_some_and(|t| !t.email.is_empty());
    let m = has && p.is_some_and(|t| f(t, used));
    (has, m, f(&nc.excluded, used), format!("rfc822Name {shown:?}"))
}

/// dNSName `d` (lowercase) within constraint `c` (lowercase): `c` itself or
/// a name made by adding labels on its left; a leading dot means subdomains only.
fn dns_within(d: &str, c: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    let c = c.strip_suffix('.').unwrap_or(c);
    if c.is_empty() {
        return true;
    }
    if c.starts_with('.') {
        return d.len() > c.len() && d.ends_with(c);
    }
    d == c || (d.len() > c.len() && d.ends_with(c) && d.as_bytes()[d.len() - c.len() - 1] == b'.')
}

/// A host (URI) within constraint `c`: that host, or with a leading dot, any host below it.
fn host_within(h: &str, c: &str) -> bool {
    if c.starts_with('.') {
        h.len() > c.len() && h.ends_with(c)
    } else {
        h == c
    }
}

/// An rfc822Name within constraint `c`: a whole mailbox, a host, or (leading dot) a domain.
fn email_within(e: &str, c: &str) -> bool {
    let Some((local, host)) = e.rsplit_once('@') else { return false };
    if let Some((cl, ch)) = c.rsplit_once('@') {
        return local == cl && host.eq_ignore_ascii_case(ch);
    }
    let host = host.to_ascii_lowercase();
    let c = c.to_ascii_lowercase();
    if c.starts_with('.') {
        host.len() > c.len() && host.ends_with(&c)
    } else {
        host == c
    }
}

/// The host of a URI with an authority (`scheme://[user@]host[:port]/...`), lowercase.
fn uri_host(u: &str) -> Option<String> {
    let (_, rest) = u.split_once("://")?;
    let auth = rest.split(['/', '?', '#']).next()?;
    let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    let host =
        if host.starts_with('[') { host.split(']').next()?.trim_start_matches('[') } else { host.split(':').next()? };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyType, Signer, SoftKey};
    use crate::name::NameBuilder;
    use crate::profile::{issue, CertParams, Issuer, Profile};

    struct Ca {
        key: SoftKey,
        name: Name,
        kid: Vec<u8>,
        der: Vec<u8>,
    }

    fn spki(k: &SoftKey) -> spki::SubjectPublicKeyInfoOwned {
        spki::SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap()
    }

    fn make(profile: Profile, name: Name, parent: Option<&Ca>, subtree: Option<Name>) -> Ca {
        make_with(KeyType::EcdsaP256, profile, name, parent, subtree)
    }

    fn make_with(kt: KeyType, profile: Profile, name: Name, parent: Option<&Ca>, subtree: Option<Name>) -> Ca {
        let key = SoftKey::generate(kt).unwrap();
        let kid = keys::key_identifier(&spki(&key));
        let p = CertParams {
            profile,
            serial: crate::serial::system_random_serial(1_000).unwrap().0,
            subject: name.clone(),
            spki: spki(&key),
            not_before: 1_000,
            not_after: 9_000_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: subtree.map(|n| vec![n]),
        };
        let der = match parent {
            Some(pa) => {
                issue(&p, &Issuer { subject: &pa.name, key_id: &pa.kid, not_after: 9_000_000_000, signer: &pa.key })
                    .unwrap()
                    .der
            }
            None => {
                issue(&p, &Issuer { subject: &name, key_id: &kid, not_after: 9_000_000_000, signer: &key }).unwrap().der
            }
        };
        Ca { key, name, kid, der }
    }

    fn n(parts: &[(&str, &str)]) -> Name {
        let mut b = NameBuilder::default();
        for (k, v) in parts {
            b = match *k {
                "O" => b.organization(v).unwrap(),
                "OU" => b.organizational_unit(v).unwrap(),
                _ => b.common_name(v).unwrap(),
            };
        }
        b.build()
    }

    /// RFC 9881 chains: ML-DSA roots over P-256 issuing CAs and devices, and
    /// the other way round; a root of another key type is no issuer.
    #[cfg(feature = "aws-lc")]
    #[test]
    fn ml_dsa_and_p256_chains_verify_across_algorithms() {
        let (e, m44, m65, m87) = (KeyType::EcdsaP256, KeyType::MlDsa44, KeyType::MlDsa65, KeyType::MlDsa87);
        for (root_kt, ca_kt, leaf_kt) in [(m65, e, e), (e, m65, m44), (m87, m65, m44), (m44, m44, e)] {
            let root = make_with(root_kt, Profile::Root, n(&[("CN", "Root")]), None, None);
            let ca = make_with(ca_kt, Profile::IssuingCa, n(&[("CN", "Issuing")]), Some(&root), None);
            let leaf = make_with(leaf_kt, Profile::Device, n(&[("CN", "dev-1")]), Some(&ca), None);
            verify(&leaf.der, std::slice::from_ref(&ca.der), &root.der, 2_000, rfc5280::ID_KP_CLIENT_AUTH)
                .unwrap_or_else(|e| panic!("{root_kt}/{ca_kt}/{leaf_kt}: {e}"));
            // The same names under a root with another key: the signature does not verify.
            let other = make_with(root_kt, Profile::Root, n(&[("CN", "Root")]), None, None);
            assert!(verify(&leaf.der, std::slice::from_ref(&ca.der), &other.der, 2_000, rfc5280::ID_KP_CLIENT_AUTH)
                .is_err());
        }
    }

    #[test]
    fn delegated_chain_inside_and_outside_its_namespace() {
        let root = make(Profile::Root, n(&[("O", "Acme"), ("CN", "Root")]), None, None);
        let mfg = make(Profile::DelegatingCa, n(&[("O", "Acme"), ("CN", "Mfg")]), Some(&root), None);
        let sub = make(
            Profile::DelegatedCa,
            n(&[("O", "Acme"), ("OU", "Stations"), ("CN", "line-1 B1")]),
            Some(&mfg),
            Some(n(&[("O", "Acme"), ("OU", "B1")])),
        );
        let ok = make(Profile::Device, n(&[("O", "Acme"), ("OU", "B1"), ("CN", "D-1")]), Some(&sub), None);
        let out = make(Profile::Device, n(&[("O", "Acme"), ("OU", "B2"), ("CN", "D-2")]), Some(&sub), None);
        let inter = vec![sub.der.clone(), mfg.der.clone()];
        verify(&ok.der, &inter, &root.der, 2_000, rfc5280::ID_KP_CLIENT_AUTH).unwrap();
        let e = verify(&out.der, &inter, &root.der, 2_000, rfc5280::ID_KP_CLIENT_AUTH).unwrap_err();
        assert!(e.to_string().contains("outside the permitted names"), "{e}");
        // Expired, wrong usage, missing intermediate, a sub-CA under the delegated CA (pathLen 0).
        assert!(verify(&ok.der, &inter, &root.der, 9_000_000_001, rfc5280::ID_KP_CLIENT_AUTH).is_err());
        assert!(verify(&ok.der, &inter, &root.der, 2_000, rfc5280::ID_KP_SERVER_AUTH).is_err());
        assert!(verify(&ok.der, std::slice::from_ref(&mfg.der), &root.der, 2_000, rfc5280::ID_KP_CLIENT_AUTH).is_err());
        let deeper = make(Profile::IssuingCa, n(&[("O", "Acme"), ("OU", "B1"), ("CN", "sneaky")]), Some(&sub), None);
        let leaf = make(Profile::Device, n(&[("O", "Acme"), ("OU", "B1"), ("CN", "D-3")]), Some(&deeper), None);
        let e = verify(
            &leaf.der,
            &[deeper.der.clone(), sub.der.clone(), mfg.der.clone()],
            &root.der,
            2_000,
            rfc5280::ID_KP_CLIENT_AUTH,
        )
        .unwrap_err();
        assert!(e.to_string().contains("path length"), "{e}");
        // A device certificate is not an issuer.
        let fake = make(
            Profile::Device,
            n(&[("O", "Acme"), ("OU", "B1"), ("CN", "D-4")]),
            Some(&Ca {
                key: SoftKey::from_pkcs8(&ok.key.to_pkcs8().unwrap()).unwrap(),
                name: ok.name.clone(),
                kid: ok.kid.clone(),
                der: ok.der.clone(),
            }),
            None,
        );
        assert!(verify(
            &fake.der,
            &[ok.der.clone(), sub.der.clone(), mfg.der.clone()],
            &root.der,
            2_000,
            rfc5280::ID_KP_CLIENT_AUTH
        )
        .is_err());
    }

    // ---- Certificates built by hand, one rule at a time. ----

    use der::asn1::{BitString, OctetString};
    use der::Encode;
    use spki::AlgorithmIdentifierOwned;
    use x509_cert::certificate::{TbsCertificate, Version};
    use x509_cert::ext::Extension;
    use x509_cert::time::Validity;

    const NOW: i64 = 2_000_000;
    const CLIENT: ObjectIdentifier = rfc5280::ID_KP_CLIENT_AUTH;

    fn key() -> SoftKey {
        SoftKey::generate(KeyType::EcdsaP256).unwrap()
    }

    fn x<T: Encode + AssociatedOid>(v: &T, critical: bool) -> Extension {
        Extension { extn_id: T::OID, critical, extn_value: OctetString::new(v.to_der().unwrap()).unwrap() }
    }

    fn bc(ca: bool, path_len: Option<u8>) -> Extension {
        x(&BasicConstraints { ca, path_len_constraint: path_len }, true)
    }

    fn ku(k: impl Into<der::flagset::FlagSet<KeyUsages>>) -> Extension {
        x(&KeyUsage(k.into()), true)
    }

    fn eku(oids: &[ObjectIdentifier]) -> Extension {
        x(&ExtendedKeyUsage(oids.to_vec()), false)
    }

    fn ca_exts(path_len: Option<u8>) -> Vec<Extension> {
        vec![bc(true, path_len), ku(KeyUsages::KeyCertSign | KeyUsages::CRLSign)]
    }

    fn leaf_exts() -> Vec<Extension> {
        vec![bc(false, None), ku(KeyUsages::DigitalSignature), eku(&[CLIENT])]
    }

    fn dir_subtrees(names: impl IntoIterator<Item = Name>) -> Vec<GeneralSubtree> {
        names
            .into_iter()
            .map(|n| GeneralSubtree { base: GeneralName::DirectoryName(n), minimum: 0, maximum: None })
            .collect()
    }

    fn nc(permitted: Vec<GeneralSubtree>, excluded: Vec<GeneralSubtree>) -> Extension {
        let some = |v: Vec<GeneralSubtree>| (!v.is_empty()).then_some(v);
        x(&NameConstraints { permitted_subtrees: some(permitted), excluded_subtrees: some(excluded) }, true)
    }

    /// A certificate for `subject`'s key, signed by `issuer`.
    struct Made {
        key: SoftKey,
        name: Name,
        der: Vec<u8>,
    }

    fn cert_with(
        subject: &Name,
        key: SoftKey,
        issuer: Option<(&Name, &SoftKey)>,
        exts: Vec<Extension>,
        validity: (i64, i64),
        inner_alg: Option<AlgorithmIdentifierOwned>,
    ) -> Made {
        let (iname, ikey) = issuer.unwrap_or((subject, &key));
        let alg = ikey.key_type().signature_algorithm().unwrap();
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: crate::serial::system_random_serial(1_000).unwrap().0,
            signature: inner_alg.unwrap_or_else(|| alg.clone()),
            issuer: iname.clone(),
            validity: Validity {
                not_before: crate::time::x509_time(validity.0).unwrap(),
                not_after: crate::time::x509_time(validity.1).unwrap(),
            },
            subject: subject.clone(),
            subject_public_key_info: spki(&key),
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(exts),
        };
        let sig = ikey.sign(&tbs.to_der().unwrap()).unwrap();
        let c = Certificate {
            tbs_certificate: tbs,
            signature_algorithm: alg,
            signature: BitString::from_bytes(&sig).unwrap(),
        };
        Made { key, name: subject.clone(), der: c.to_der().unwrap() }
    }

    fn cert(subject: &Name, issuer: Option<&Made>, exts: Vec<Extension>) -> Made {
        cert_with(subject, key(), issuer.map(|i| (&i.name, &i.key)), exts, (1_000, 9_000_000), None)
    }

    fn root() -> Made {
        cert(&n(&[("O", "Maker"), ("CN", "Root")]), None, ca_exts(None))
    }

    fn check(leaf: &Made, inter: &[&Made], anchor: &Made) -> Result<(), ChainError> {
        let inter: Vec<Vec<u8>> = inter.iter().map(|m| m.der.clone()).collect();
        verify(&leaf.der, &inter, &anchor.der, NOW, CLIENT)
    }

    fn device(serial: &str) -> Name {
        n(&[("O", "Maker"), ("OU", "B1"), ("CN", serial)])
    }

    #[test]
    fn a_ca_certificate_is_refused_as_the_end_entity() {
        let r = root();
        let ca_leaf =
            cert(&device("S-1"), Some(&r), vec![bc(true, None), ku(KeyUsages::DigitalSignature), eku(&[CLIENT])]);
        assert!(matches!(check(&ca_leaf, &[], &r), Err(ChainError::CaAsEndEntity { cert }) if cert.depth == 0));
        let ok = cert(&device("S-1"), Some(&r), leaf_exts());
        check(&ok, &[], &r).unwrap();
    }

    #[test]
    fn a_duplicated_extension_is_refused_not_read_first_copy() {
        let r = root();
        // basicConstraints twice: cA=FALSE then cA=TRUE (a reader of the first copy sees an end entity).
        let mut e = leaf_exts();
        e.push(bc(true, None));
        let leaf = cert(&device("S-1"), Some(&r), e);
        let err = check(&leaf, &[], &r).unwrap_err();
        assert!(matches!(&err, ChainError::DuplicateExtension { oid, .. } if *oid == BasicConstraints::OID), "{err}");
        // A CA with two nameConstraints, the first one permitting everything.
        let mut e = ca_exts(Some(0));
        e.push(nc(vec![], dir_subtrees([n(&[("O", "Other")])])));
        e.push(nc(dir_subtrees([n(&[("O", "Maker"), ("OU", "B2")])]), vec![]));
        let sub = cert(&n(&[("O", "Maker"), ("CN", "Sub")]), Some(&r), e);
        let leaf = cert(&device("S-1"), Some(&sub), leaf_exts());
        let err = check(&leaf, &[&sub], &r).unwrap_err();
        assert!(
            matches!(&err, ChainError::DuplicateExtension { cert, oid } if *oid == NameConstraints::OID && cert.depth == 1),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_subject_alt_name_is_refused() {
        let r = root();
        let mut e = leaf_exts();
        e.push(Extension {
            extn_id: SubjectAltName::OID,
            critical: false,
            extn_value: OctetString::new(vec![0x30, 0x03, 0x82, 0x05, b'a']).unwrap(),
        });
        let leaf = cert(&device("S-1"), Some(&r), e);
        let err = check(&leaf, &[], &r).unwrap_err();
        assert!(matches!(&err, ChainError::BadExtension { oid, .. } if *oid == SubjectAltName::OID), "{err}");
    }

    #[test]
    fn an_intermediate_whose_extended_key_usage_excludes_the_purpose_is_refused() {
        let r = root();
        let mut e = ca_exts(Some(0));
        e.push(eku(&[rfc5280::ID_KP_SERVER_AUTH]));
        let servers_only = cert(&n(&[("O", "Maker"), ("CN", "TLS servers CA")]), Some(&r), e);
        let leaf = cert(&device("S-1"), Some(&servers_only), leaf_exts());
        let err = check(&leaf, &[&servers_only], &r).unwrap_err();
        assert!(
            matches!(&err, ChainError::PurposeNotAllowed { cert, purpose } if cert.depth == 1 && *purpose == CLIENT),
            "{err}"
        );
        // An intermediate that lists the purpose is fine; so is the leaf's own EKU check.
        let mut e = ca_exts(Some(0));
        e.push(eku(&[CLIENT]));
        let clients = cert(&n(&[("O", "Maker"), ("CN", "Clients CA")]), Some(&r), e);
        let leaf = cert(&device("S-1"), Some(&clients), leaf_exts());
        check(&leaf, &[&clients], &r).unwrap();
        let server_leaf = cert(
            &device("S-2"),
            Some(&r),
            vec![bc(false, None), ku(KeyUsages::DigitalSignature), eku(&[rfc5280::ID_KP_SERVER_AUTH])],
        );
        assert!(
            matches!(check(&server_leaf, &[], &r), Err(ChainError::PurposeNotAllowed { cert, .. }) if cert.depth == 0)
        );
    }

    #[test]
    fn inner_and_outer_signature_algorithms_must_agree() {
        let r = root();
        let inner = AlgorithmIdentifierOwned { oid: const_oid::db::rfc5912::ECDSA_WITH_SHA_384, parameters: None };
        let leaf =
            cert_with(&device("S-1"), key(), Some((&r.name, &r.key)), leaf_exts(), (1_000, 9_000_000), Some(inner));
        let err = check(&leaf, &[], &r).unwrap_err();
        assert!(matches!(&err, ChainError::SignatureAlgorithmMismatch { cert } if cert.depth == 0), "{err}");
    }

    #[test]
    fn the_leaf_key_usage_must_allow_digital_signature() {
        let r = root();
        let leaf =
            cert(&device("S-1"), Some(&r), vec![bc(false, None), ku(KeyUsages::KeyEncipherment), eku(&[CLIENT])]);
        assert!(matches!(check(&leaf, &[], &r), Err(ChainError::LeafKeyUsage { .. })));
    }

    #[test]
    fn name_constraints_apply_to_directory_name_sans_and_excluded_subtrees_win() {
        let r = root();
        let mut e = ca_exts(Some(0));
        e.push(nc(dir_subtrees([n(&[("O", "Maker"), ("OU", "B1")])]), dir_subtrees([device("S-9")])));
        let sub = cert(&n(&[("O", "Maker"), ("CN", "line-1 B1")]), Some(&r), e);
        // Subject inside, but a directoryName SAN outside: refused.
        let mut e = leaf_exts();
        e.push(x(
            &SubjectAltName(vec![GeneralName::DirectoryName(n(&[("O", "Maker"), ("OU", "B2"), ("CN", "V-1")]))]),
            false,
        ));
        let leaf = cert(&device("S-1"), Some(&sub), e);
        let err = check(&leaf, &[&sub], &r).unwrap_err();
        assert!(matches!(&err, ChainError::NameNotPermitted { name, .. } if name.contains("OU=B2")), "{err}");
        // Inside the permitted subtree but in the excluded one: refused.
        let leaf = cert(&device("S-9"), Some(&sub), leaf_exts());
        assert!(matches!(check(&leaf, &[&sub], &r), Err(ChainError::NameExcluded { .. })));
        // Case and spacing do not matter (RFC 5280 7.1); RDN order does.
        let leaf = cert(&n(&[("O", "maker"), ("OU", "  b1 "), ("CN", "S-1")]), Some(&sub), leaf_exts());
        check(&leaf, &[&sub], &r).unwrap();
        let leaf = cert(&n(&[("OU", "B1"), ("O", "Maker"), ("CN", "S-1")]), Some(&sub), leaf_exts());
        assert!(matches!(check(&leaf, &[&sub], &r), Err(ChainError::NameNotPermitted { .. })));
    }

    #[test]
    fn ip_constraints_and_unsupported_forms() {
        let r = root();
        let ip_sub = |addr: [u8; 8]| GeneralSubtree {
            base: GeneralName::IpAddress(OctetString::new(addr.to_vec()).unwrap()),
            minimum: 0,
            maximum: None,
        };
        let mut e = ca_exts(Some(0));
        e.push(nc(vec![ip_sub([10, 0, 0, 0, 255, 0, 0, 0])], vec![]));
        let sub = cert(&n(&[("O", "Maker"), ("CN", "Net")]), Some(&r), e);
        let with_ip = |ip: [u8; 4]| {
            let mut e = leaf_exts();
            e.push(x(&SubjectAltName(vec![GeneralName::IpAddress(OctetString::new(ip.to_vec()).unwrap())]), false));
            cert(&device("S-1"), Some(&sub), e)
        };
        check(&with_ip([10, 1, 2, 3]), &[&sub], &r).unwrap();
        assert!(matches!(check(&with_ip([192, 168, 1, 1]), &[&sub], &r), Err(ChainError::NameNotPermitted { .. })));
        // A constraint on registeredID: a certificate carrying one is refused, one without passes.
        let mut e = ca_exts(Some(0));
        let reg = GeneralSubtree {
            base: GeneralName::RegisteredId(ObjectIdentifier::new_unwrap("1.2.3.4")),
            minimum: 0,
            maximum: None,
        };
        e.push(nc(vec![reg], vec![]));
        let sub = cert(&n(&[("O", "Maker"), ("CN", "Reg")]), Some(&r), e);
        let mut e = leaf_exts();
        e.push(x(&SubjectAltName(vec![GeneralName::RegisteredId(ObjectIdentifier::new_unwrap("1.2.3.4.5"))]), false));
        let leaf = cert(&device("S-1"), Some(&sub), e);
        assert!(matches!(check(&leaf, &[&sub], &r), Err(ChainError::UnsupportedNameConstraint { .. })));
        check(&cert(&device("S-2"), Some(&sub), leaf_exts()), &[&sub], &r).unwrap();
        // An empty nameConstraints, or an empty list of subtrees, is refused (fail closed).
        for bad in [
            nc(vec![], vec![]),
            x(&NameConstraints { permitted_subtrees: Some(vec![]), excluded_subtrees: None }, true),
        ] {
            let mut e = ca_exts(Some(0));
            e.push(bad);
            let sub = cert(&n(&[("O", "Maker"), ("CN", "Empty")]), Some(&r), e);
            let leaf = cert(&device("S-1"), Some(&sub), leaf_exts());
            assert!(matches!(check(&leaf, &[&sub], &r), Err(ChainError::UnsupportedNameConstraint { .. })));
        }
    }

    #[test]
    fn the_anchor_is_checked_for_validity_and_constraints() {
        let name = n(&[("O", "Maker"), ("CN", "Root")]);
        let expired = cert_with(&name, key(), None, ca_exts(None), (1_000, NOW - 1), None);
        let leaf = cert(&device("S-1"), Some(&expired), leaf_exts());
        assert!(matches!(check(&leaf, &[], &expired), Err(ChainError::NotValidNow { cert, .. }) if cert.anchor));
        let not_ca = cert(&name, None, vec![bc(false, None), ku(KeyUsages::KeyCertSign)]);
        let leaf = cert(&device("S-1"), Some(&not_ca), leaf_exts());
        assert!(matches!(check(&leaf, &[], &not_ca), Err(ChainError::NotACa { cert }) if cert.anchor));
        let no_sign = cert(&name, None, vec![bc(true, None), ku(KeyUsages::CRLSign)]);
        let leaf = cert(&device("S-1"), Some(&no_sign), leaf_exts());
        assert!(matches!(check(&leaf, &[], &no_sign), Err(ChainError::NoKeyCertSign { cert }) if cert.anchor));
        // The anchor's pathLenConstraint 0: no intermediate below it.
        let pl0 = cert(&name, None, ca_exts(Some(0)));
        let sub = cert(&n(&[("O", "Maker"), ("CN", "Sub")]), Some(&pl0), ca_exts(None));
        let leaf = cert(&device("S-1"), Some(&sub), leaf_exts());
        assert!(matches!(check(&leaf, &[&sub], &pl0), Err(ChainError::PathLengthExceeded { cert }) if cert.depth == 1));
        // The anchor's name constraints bind its whole tree.
        let mut e = ca_exts(None);
        e.push(nc(dir_subtrees([n(&[("O", "Maker"), ("OU", "B1")])]), vec![]));
        let constrained = cert(&name, None, e);
        let sub = cert(&n(&[("O", "Maker"), ("OU", "B1"), ("CN", "Sub")]), Some(&constrained), ca_exts(None));
        check(&cert(&device("S-1"), Some(&sub), leaf_exts()), &[&sub], &constrained).unwrap();
        let out = cert(&n(&[("O", "Maker"), ("OU", "B2"), ("CN", "V-1")]), Some(&sub), leaf_exts());
        assert!(
            matches!(check(&out, &[&sub], &constrained), Err(ChainError::NameNotPermitted { ca, .. }) if ca.anchor)
        );
    }

    #[test]
    fn path_building_backtracks_past_dead_ends_and_failing_paths() {
        let r = root();
        let name = n(&[("O", "Maker"), ("CN", "Issuing")]);
        let k = key();
        let pkcs8 = k.to_pkcs8().unwrap();
        let same_key = || SoftKey::from_pkcs8(&pkcs8).unwrap();
        // Three certificates for one issuing key: one from a stranger's root (dead end),
        // one from our root but expired (a complete path that fails), one good.
        let stranger = cert(&n(&[("O", "Maker"), ("CN", "Root")]), None, ca_exts(None));
        let dead_end = cert_with(
            &name,
            same_key(),
            Some((&stranger.name, &stranger.key)),
            ca_exts(Some(0)),
            (1_000, 9_000_000),
            None,
        );
        let expired = cert_with(&name, same_key(), Some((&r.name, &r.key)), ca_exts(Some(0)), (1_000, NOW - 1), None);
        let good = cert_with(&name, same_key(), Some((&r.name, &r.key)), ca_exts(Some(0)), (1_000, 9_000_000), None);
        let leaf = cert(&device("S-1"), Some(&good), leaf_exts());
        check(&leaf, &[&dead_end, &expired, &good], &r).unwrap();
        // Without the good one, the refusal names the real failure, not the dead end.
        let err = check(&leaf, &[&dead_end, &expired], &r).unwrap_err();
        assert!(matches!(&err, ChainError::NotValidNow { cert, .. } if cert.depth == 1), "{err}");
    }

    #[test]
    fn self_issued_intermediates_do_not_count_against_path_length() {
        let r = root();
        let ca_name = n(&[("O", "Maker"), ("CN", "Issuing")]);
        let old = cert(&ca_name, Some(&r), ca_exts(Some(0)));
        // Key rollover: the new key certified by the old one (self-issued: same name).
        let new = cert(&ca_name, Some(&old), ca_exts(Some(0)));
        let leaf = cert(&device("S-1"), Some(&new), leaf_exts());
        check(&leaf, &[&new, &old], &r).unwrap();
        // A CA that is not self-issued in the same place is one too many.
        let other = cert(&n(&[("O", "Maker"), ("CN", "Below")]), Some(&old), ca_exts(None));
        let leaf = cert(&device("S-1"), Some(&other), leaf_exts());
        assert!(matches!(check(&leaf, &[&other, &old], &r), Err(ChainError::PathLengthExceeded { .. })));
    }

    #[test]
    fn the_depth_limit_counts_leaf_intermediates_and_anchor() {
        let r = root();
        let mut chain = Vec::new();
        for i in 0..MAX_DEPTH - 1 {
            let parent = chain.last().unwrap_or(&r);
            let c = cert(&n(&[("O", "Maker"), ("CN", &format!("CA {i}"))]), Some(parent), ca_exts(None));
            chain.push(c);
        }
        // MAX_DEPTH - 2 intermediates: leaf + them + anchor = MAX_DEPTH certificates, accepted.
        let leaf = cert(&device("S-1"), Some(&chain[MAX_DEPTH - 3]), leaf_exts());
        let inter: Vec<&Made> = chain[..MAX_DEPTH - 2].iter().collect();
        check(&leaf, &inter, &r).unwrap();
        // One more intermediate: MAX_DEPTH + 1 certificates, refused.
        let leaf = cert(&device("S-1"), Some(&chain[MAX_DEPTH - 2]), leaf_exts());
        let inter: Vec<&Made> = chain.iter().collect();
        assert!(matches!(check(&leaf, &inter, &r), Err(ChainError::TooDeep { max: MAX_DEPTH })));
    }

    #[test]
    fn a_hostile_pool_of_lookalike_issuers_costs_a_bounded_number_of_signature_checks() {
        let r = root();
        let name = n(&[("O", "Maker"), ("CN", "Issuing")]);
        let real = cert(&name, Some(&r), ca_exts(Some(0)));
        let leaf = cert(&device("S-1"), Some(&real), leaf_exts());
        // 150 certificates with the issuer's name and other keys, ahead of the real one.
        let mut pool: Vec<Vec<u8>> = (0..150).map(|_| cert(&name, Some(&r), ca_exts(Some(0))).der).collect();
        pool.push(real.der.clone());
        let err = verify(&leaf.der, &pool, &r.der, NOW, CLIENT).unwrap_err();
        assert_eq!(err, ChainError::BudgetExceeded { what: "signature checks" });
        // A budget large enough finds the real one.
        let big = Policy {
            purpose: Purpose::ExtendedKeyUsage(CLIENT),
            budget: Budget { signatures: 200, ..Budget::default() },
        };
        verify_with(&leaf.der, &pool, &r.der, NOW, &big).unwrap();
        // And a genuine chain fits a small budget: two signatures, two steps.
        let tiny = Policy {
            purpose: Purpose::ExtendedKeyUsage(CLIENT),
            budget: Budget { signatures: 2, build_steps: 2, name_comparisons: 0 },
        };
        verify_with(&leaf.der, std::slice::from_ref(&real.der), &r.der, NOW, &tiny).unwrap();
    }

    #[test]
    fn ten_thousand_permitted_subtrees_cost_per_name_what_one_does() {
        // A delegated CA allowed 10,000 device serials, one permitted subtree each.
        let r = root();
        let mut e = ca_exts(Some(0));
        e.push(nc(dir_subtrees((0..10_000).map(|i| device(&format!("S-{i}")))), vec![]));
        let sub = cert(&n(&[("O", "Maker"), ("OU", "Stations"), ("CN", "line-1 B1")]), Some(&r), e);
        let born = |cn: &str| {
            let sn = crate::name::DeviceSerial::parse(cn).unwrap();
            cert(&crate::name::batch_device_subject("Maker", "B1", &sn).unwrap(), Some(&sub), leaf_exts())
        };
        // The budget allows 16 name comparisons: the two subjects (sub-CA's and device's, each
        // looked up by its 3 to 5 RDN prefixes) fit, however many subtrees the CA carries.
        let policy = Policy {
            purpose: Purpose::ExtendedKeyUsage(CLIENT),
            budget: Budget { name_comparisons: 16, ..Budget::default() },
        };
        let run = |leaf: &Made| verify_with(&leaf.der, std::slice::from_ref(&sub.der), &r.der, NOW, &policy);
        for s in ["S-0", "S-4711", "S-9999"] {
            run(&born(s)).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        for s in ["S-10000", "S-47110", "V-1"] {
            let err = run(&born(s)).unwrap_err();
            assert!(matches!(&err, ChainError::NameNotPermitted { name, .. } if name.contains(s)), "{s}: {err}");
        }
        let started = std::time::Instant::now();
        run(&born("S-9999")).unwrap();
        eprintln!("10,000 subtrees: one validation in {:?}, parsing included", started.elapsed());
    }
}
