//! Trust bundles: the versioned set of trust anchors a device trusts, signed
//! k-of-n as a COSE_Sign (docs/trust-bundle.md). The rules are the agent's
//! (the core's `bundle::verify_initial` and `verify_update`), refusals included.
//!
//! The device keeps the bundle it holds (its octets) and decodes it with
//! [`Bundle::decode`] to check the next one against it:
//!
//! ```no_run
//! # fn main() -> Result<(), iotpki_device_core::Error> {
//! # let (stored, offered, now) = (&[][..], &[][..], 0u64);
//! use iotpki_device_core::bundle::{self, Bundle, Update};
//! let current = Bundle::decode(stored)?;
//! match bundle::verify_update(&current, offered, now)? {
//!     Update::Unchanged => {}
//!     Update::New(b) => { /* store `offered` atomically; trust b.content().anchors */ let _ = b; }
//! }
//! # Ok(()) }
//! ```

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use der::Decode;
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;

use crate::cbor::{self, Value};
use crate::cose::{self, KeyId};
use crate::error::Hex;
use crate::keys::{sha256, KeyType};
use crate::{Error, MAX_CLOCK_SKEW};

/// The content type in the body's protected header.
pub const CONTENT_TYPE: &str = "application/vnd.iotpki.trust-bundle+cbor";
/// Largest encoded bundle accepted, in octets.
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024;
/// Most trust anchors in one bundle.
pub const MAX_ANCHORS: usize = 32;
/// Largest anchor certificate, in octets.
pub const MAX_ANCHOR_BYTES: usize = 16 * 1024;
/// Most server names in one bundle.
pub const MAX_SERVERS: usize = 32;
/// Longest server name.
pub const MAX_SERVER_NAME: usize = 253;
/// Most signer keys one bundle names.
pub const MAX_SIGNERS: usize = 16;
/// Most signatures on one bundle.
pub const MAX_SIGNATURES: usize = 32;

/// What a bundle says: everything its signatures cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleContent {
    /// Strictly increasing from one bundle to the next.
    pub version: u64,
    /// When it was made, Unix seconds.
    pub issued_at: i64,
    /// The first second it is no longer valid, Unix seconds.
    pub expires_at: i64,
    /// DER CA certificates the device trusts.
    pub anchors: Vec<Vec<u8>>,
    /// The servers the device may talk to (none: any).
    pub servers: Vec<String>,
    /// How many distinct `signers` must sign the bundle that replaces this one.
    pub threshold: u8,
    /// DER subjectPublicKeyInfos of the signer keys.
    pub signers: Vec<Vec<u8>>,
}

struct Sig {
    kid: KeyId,
    alg: KeyType,
    protected: Vec<u8>,
    signature: Vec<u8>,
}

/// A decoded bundle (its form checked; its signatures are checked by [`verify_initial`] and [`verify_update`]).
pub struct Bundle {
    content: BundleContent,
    body_protected: Vec<u8>,
    payload: Vec<u8>,
    sigs: Vec<Sig>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle").field("content", &self.content).field("signatures", &self.sigs.len()).finish()
    }
}

impl Bundle {
    /// Decode a bundle: bounded, only the deterministic encoding, every field checked.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Self::decode_inner(bytes).map_err(|d| Error::Bundle(BundleError::Malformed(d)))
    }

    fn decode_inner(bytes: &[u8]) -> Result<Self, &'static str> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err("larger than 256 KiB");
        }
        let Value::Tag(98, inner) = cbor::decode(bytes)? else {
            return Err("not a tagged COSE_Sign (CBOR tag 98)");
        };
        let Value::Array(parts) = *inner else { return Err("not a COSE_Sign") };
        let [protected, unprotected, payload, signatures] = &parts[..] else { return Err("not a COSE_Sign") };
        let body_protected = cose::protected_content_type(CONTENT_TYPE);
        if protected.bytes("not a COSE_Sign")? != body_protected {
            return Err("the protected header must be exactly {3: \"application/vnd.iotpki.trust-bundle+cbor\"}");
        }
        if *unprotected != Value::Map(Vec::new()) {
            return Err("the unprotected header must be empty");
        }
        let payload = payload.bytes("detached payloads are not supported")?;
        let content = content(payload)?;
        let signatures = signatures.array("too many signatures, or not an array", MAX_SIGNATURES)?;
        let mut sigs = Vec::with_capacity(signatures.len());
        for s in signatures {
            let Value::Array(s) = s else { return Err("a signature is not a COSE_Signature") };
            let [p, u, sig] = &s[..] else { return Err("a signature is not a COSE_Signature") };
            let p = p.bytes("a signature's protected header is not a byte string")?;
            let (alg, kid) = cose::read_protected(p, None)?;
            if *u != Value::Map(Vec::new()) {
                return Err("a signature's unprotected header must be empty");
            }
            let signature = sig.bytes("a signature is not a byte string")?.to_vec();
            sigs.push(Sig { kid, alg, protected: p.to_vec(), signature });
        }
        Ok(Self { content, body_protected, payload: payload.to_vec(), sigs })
    }

    /// What the bundle says.
    pub fn content(&self) -> &BundleContent {
        &self.content
    }

    /// Whether the bundle lets the device talk to the server `host` (or
    /// `host:port`), the agent's `servers` rule: any server when the list is
    /// empty, else one listed, compared without regard to ASCII case.
    pub fn allows_server(&self, host: &str, host_port: &str) -> bool {
        let s = &self.content.servers;
        s.is_empty() || s.iter().any(|n| n.eq_ignore_ascii_case(host) || n.eq_ignore_ascii_case(host_port))
    }

    fn check(&self, index: usize, spki: &[u8]) -> Result<(), &'static str> {
        let s = &self.sigs[index];
        let tbs = cose::sig_structure(&self.body_protected, Some(&s.protected), &self.payload);
        cose::verify(spki, s.alg, &tbs, &s.signature)
    }

    fn tally(&self, keys: &BTreeMap<KeyId, &[u8]>) -> Result<Tally, BundleError> {
        let mut t = Tally::default();
        for (i, s) in self.sigs.iter().enumerate() {
            match keys.get(&s.kid) {
                Some(spki) => {
                    self.check(i, spki).map_err(|detail| BundleError::BadSignature { kid: s.kid, detail })?;
                    t.valid.insert(s.kid);
                }
                None if !t.unknown.contains(&s.kid) => t.unknown.push(s.kid),
                None => {}
            }
        }
        Ok(t)
    }

    fn check_time(&self, now: i64) -> Result<(), BundleError> {
        let c = &self.content;
        if now >= c.expires_at {
            return Err(BundleError::Expired { expires_at: c.expires_at, now });
        }
        if c.issued_at > now.saturating_add(MAX_CLOCK_SKEW) {
            return Err(BundleError::IssuedInFuture { issued_at: c.issued_at, now });
        }
        Ok(())
    }
}

fn content(payload: &[u8]) -> Result<BundleContent, &'static str> {
    let v = cbor::decode(payload)?;
    let f = v.int_map(7, "the payload is not the map {1..7}")?;
    let version = f[0].uint("version: expected an unsigned integer")?;
    let issued_at = f[1].time("issued_at: expected Unix seconds")?;
    let expires_at = f[2].time("expires_at: expected Unix seconds")?;
    let anchors = f[3]
        .array("anchors: expected an array of at most 32", MAX_ANCHORS)?
        .iter()
        .map(|a| a.bytes("anchor: expected a byte string").map(<[u8]>::to_vec))
        .collect::<Result<Vec<_>, _>>()?;
    let servers = f[4]
        .array("servers: expected an array of at most 32", MAX_SERVERS)?
        .iter()
        .map(|s| s.text("server: expected a text string").map(String::from))
        .collect::<Result<Vec<_>, _>>()?;
    let threshold =
        u8::try_from(f[5].uint("threshold: expected an unsigned integer")?).map_err(|_| "threshold: more than 255")?;
    let signers = f[6]
        .array("signers: expected an array of at most 16", MAX_SIGNERS)?
        .iter()
        .map(|s| s.bytes("signer key: expected a byte string").map(<[u8]>::to_vec))
        .collect::<Result<Vec<_>, _>>()?;
    let c = BundleContent { version, issued_at, expires_at, anchors, servers, threshold, signers };
    check_content(&c)?;
    Ok(c)
}

fn check_content(c: &BundleContent) -> Result<(), &'static str> {
    if c.expires_at <= c.issued_at {
        return Err("expires_at is not after issued_at");
    }
    if c.anchors.is_empty() {
        return Err("no anchors");
    }
    let mut seen = BTreeSet::new();
    for a in &c.anchors {
        check_anchor(a)?;
        if !seen.insert(sha256(a)) {
            return Err("an anchor appears twice");
        }
    }
    let mut seen = BTreeSet::new();
    for s in &c.servers {
        if s.is_empty() || s.len() > MAX_SERVER_NAME || !s.bytes().all(|c| c.is_ascii_graphic()) {
            return Err("a server name is not 1 to 253 printable ASCII characters without spaces");
        }
        if !seen.insert(s.as_str()) {
            return Err("a server name appears twice");
        }
    }
    if c.signers.is_empty() {
        return Err("no signer keys");
    }
    let mut seen = BTreeSet::new();
    for s in &c.signers {
        cose::signer_key(s)?;
        if !seen.insert(cose::key_id(s)) {
            return Err("a signer key appears twice");
        }
    }
    if c.threshold == 0 || usize::from(c.threshold) > c.signers.len() {
        return Err("the threshold is not 1 to the number of signer keys");
    }
    Ok(())
}

fn check_anchor(der: &[u8]) -> Result<(), &'static str> {
    if der.len() > MAX_ANCHOR_BYTES {
        return Err("an anchor is larger than 16 KiB");
    }
    let cert = Certificate::from_der(der).map_err(|_| "an anchor is not a DER X.509 certificate")?;
    let mut bc = None;
    for e in cert.tbs_certificate.extensions.as_deref().unwrap_or_default() {
        if e.extn_id == <BasicConstraints as const_oid::AssociatedOid>::OID {
            bc = Some(
                BasicConstraints::from_der(e.extn_value.as_bytes())
                    .map_err(|_| "an anchor's basicConstraints is malformed")?,
            );
            break;
        }
    }
    if !bc.is_some_and(|b| b.ca) {
        return Err("an anchor is not a CA certificate (basicConstraints cA is not set)");
    }
    let spki = der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info).map_err(|_| "an anchor's key")?;
    let rsa = cert.tbs_certificate.subject_public_key_info.algorithm.oid == const_oid::db::rfc5912::RSA_ENCRYPTION;
    if rsa {
        // An RSA anchor (another PKI's root) is carried, not verified with here: its one DER form is enough.
        #[derive(der::Sequence)]
        struct RsaPub<'a> {
            modulus: der::asn1::UintRef<'a>,
            e: der::asn1::UintRef<'a>,
        }
        let k = &cert.tbs_certificate.subject_public_key_info;
        let params = k.algorithm.parameters.as_ref().and_then(|p| der::Encode::to_der(p).ok());
        let key = k.subject_public_key.as_bytes().unwrap_or_default();
        let again = spki::SubjectPublicKeyInfoOwned::from_der(&spki).and_then(|k| der::Encode::to_der(&k));
        let key_again = RsaPub::from_der(key).and_then(|r| der::Encode::to_der(&r));
        if again.ok().as_deref() != Some(&spki[..])
            || params.as_deref() != Some(&[0x05, 0x00][..])
            || key_again.ok().as_deref() != Some(key)
        {
            return Err("an anchor's RSA key is not in DER (rsaEncryption, NULL parameters, a DER RSAPublicKey)");
        }
    } else {
        crate::keys::PublicKey::from_spki_der(&spki)
            .map_err(|_| "an anchor's key is not a canonical P-256, P-384, Ed25519 or RSA key")?;
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    valid: BTreeSet<KeyId>,
    unknown: Vec<KeyId>,
}

impl Tally {
    fn require(&self, keys: &[Vec<u8>], need: u8, whose: Whose) -> Result<(), BundleError> {
        let have = keys.iter().filter(|k| self.valid.contains(&cose::key_id(k))).count();
        if have >= usize::from(need) {
            Ok(())
        } else if self.unknown.is_empty() {
            Err(BundleError::BelowThreshold { have, need, whose })
        } else {
            Err(BundleError::UnknownSigner { kids: self.unknown.clone(), have, need, whose })
        }
    }
}

fn key_map<'a>(sets: &[&'a [Vec<u8>]]) -> BTreeMap<KeyId, &'a [u8]> {
    sets.iter().flat_map(|s| s.iter()).map(|k| (cose::key_id(k), k.as_slice())).collect()
}

fn secs(now: u64) -> i64 {
    i64::try_from(now).unwrap_or(i64::MAX)
}

/// Check the first bundle a device is given (at the factory): signed by at
/// least its own `threshold` distinct keys of its own `signers`, not expired
/// at `now`, not issued more than [`MAX_CLOCK_SKEW`] after `now`.
pub fn verify_initial(bytes: &[u8], now: u64) -> Result<Bundle, Error> {
    let b = Bundle::decode(bytes)?;
    let tally = b.tally(&key_map(&[&b.content.signers]))?;
    tally.require(&b.content.signers, b.content.threshold, Whose::Own)?;
    b.check_time(secs(now))?;
    Ok(b)
}

/// Check the first bundle of a device's owner, taken without a factory: the
/// device holds no bundle and an ownership voucher naming `owner_spki` (the
/// core's `bundle::verify_owned`). In this order: it decodes; every signature
/// by the owner key or a key it names verifies ([`BundleError::BadSignature`]);
/// the owner key signed it ([`BundleError::BelowThreshold`] or
/// [`BundleError::UnknownSigner`], whose [`Whose::Owner`]); its own threshold of
/// its own keys signed it; it was issued at or after `owned_since`, when the
/// voucher's last entry was made ([`BundleError::BeforeOwnership`]: no older
/// bundle of the owner is replayed); it is not expired at `now` nor issued
/// more than [`MAX_CLOCK_SKEW`] after it.
pub fn verify_owned(bytes: &[u8], owner_spki: &[u8], owned_since: u64, now: u64) -> Result<Bundle, Error> {
    let b = Bundle::decode(bytes)?;
    let owner = [owner_spki.to_vec()];
    let tally = b.tally(&key_map(&[&owner, &b.content.signers]))?;
    tally.require(&owner, 1, Whose::Owner)?;
    tally.require(&b.content.signers, b.content.threshold, Whose::Own)?;
    let owned_since = secs(owned_since);
    if b.content.issued_at < owned_since {
        return Err(BundleError::BeforeOwnership { issued_at: b.content.issued_at, owned_since }.into());
    }
    b.check_time(secs(now))?;
    Ok(b)
}

/// What [`verify_update`] found.
#[derive(Debug)]
pub enum Update {
    /// The offered octets are the bundle the device holds: nothing to change.
    Unchanged,
    /// A newer bundle, accepted: store its octets (atomically) in place of the held one.
    New(Bundle),
}

/// Check a bundle offered to replace `current` (the one the device holds,
/// decoded from its storage; its own expiry is not checked, so a device
/// offline past it can still take the successor). In this order:
/// it decodes; every signature by a key named in `current` or in it verifies
/// ([`BundleError::BadSignature`]); `current`'s threshold of its keys and its
/// own threshold of its own keys signed it ([`BundleError::BelowThreshold`],
/// [`BundleError::UnknownSigner`]); its version is greater than `current`'s
/// ([`BundleError::Rollback`]); it is not expired at `now` nor issued more than
/// [`MAX_CLOCK_SKEW`] after it.
pub fn verify_update(current: &Bundle, offered: &[u8], now: u64) -> Result<Update, Error> {
    let b = Bundle::decode(offered)?;
    if b.payload == current.payload && same_sigs(&b, current) {
        return Ok(Update::Unchanged);
    }
    let tally = b.tally(&key_map(&[&current.content.signers, &b.content.signers]))?;
    tally.require(&current.content.signers, current.content.threshold, Whose::Current)?;
    tally.require(&b.content.signers, b.content.threshold, Whose::Own)?;
    if b.content.version <= current.content.version {
        return Err(BundleError::Rollback { stored: current.content.version, offered: b.content.version }.into());
    }
    b.check_time(secs(now))?;
    Ok(Update::New(b))
}

/// Whether two decoded bundles are the same octets (deterministic encoding:
/// same payload and same signatures in the same order).
fn same_sigs(a: &Bundle, b: &Bundle) -> bool {
    a.sigs.len() == b.sigs.len()
        && a.sigs.iter().zip(&b.sigs).all(|(x, y)| x.protected == y.protected && x.signature == y.signature)
}

/// Whose threshold a bundle failed to meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whose {
    /// The bundle the device holds.
    Current,
    /// The offered bundle's own.
    Own,
    /// The device's owner: the key its installed voucher names ([`verify_owned`]).
    Owner,
}

impl fmt::Display for Whose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Current => "the current bundle",
            Self::Own => "the offered bundle itself",
            Self::Owner => "the device's ownership voucher (its owner's key)",
        })
    }
}

/// Why a bundle was refused (the core's `BundleError`, the same cases).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BundleError {
    /// Not a bundle: bad CBOR or COSE, a field missing or out of range, too large, not deterministic.
    Malformed(&'static str),
    /// The offered version is not newer than the held one.
    Rollback {
        /// The held version.
        stored: u64,
        /// The offered version.
        offered: u64,
    },
    /// The bundle has expired.
    Expired {
        /// Its `expires_at`.
        expires_at: i64,
        /// The time it was checked at.
        now: i64,
    },
    /// Issued further in the future than clock skew explains.
    IssuedInFuture {
        /// Its `issued_at`.
        issued_at: i64,
        /// The time it was checked at.
        now: i64,
    },
    /// An owner's first bundle issued before the voucher entry that made it the owner.
    BeforeOwnership {
        /// Its `issued_at`.
        issued_at: i64,
        /// When the voucher's last entry was made.
        owned_since: i64,
    },
    /// Too few distinct keys signed.
    BelowThreshold {
        /// Distinct keys of the set with a valid signature.
        have: usize,
        /// The threshold.
        need: u8,
        /// Whose keys and threshold.
        whose: Whose,
    },
    /// Too few distinct keys signed, and signatures by keys neither bundle names did not count.
    UnknownSigner {
        /// Key ids of the signatures that did not count.
        kids: Vec<[u8; 32]>,
        /// Distinct keys of the set with a valid signature.
        have: usize,
        /// The threshold.
        need: u8,
        /// Whose keys and threshold.
        whose: Whose,
    },
    /// A signature by a key the bundles name does not verify.
    BadSignature {
        /// The key id it names.
        kid: [u8; 32],
        /// Why.
        detail: &'static str,
    },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(d) => write!(f, "malformed trust bundle: {d}"),
            Self::Rollback { stored, offered } => write!(
                f,
                "trust bundle version {offered} is not newer than the version {stored} the device holds \
                 (rollback or replay refused; issue a bundle with a higher version)"
            ),
            Self::Expired { expires_at, now } => write!(
                f,
                "trust bundle expired at {expires_at} (now {now}, Unix seconds); issue a new one, or check the device clock"
            ),
            Self::IssuedInFuture { issued_at, now } => write!(
                f,
                "trust bundle is issued at {issued_at}, more than {MAX_CLOCK_SKEW} s after now ({now}); check the clocks"
            ),
            Self::BeforeOwnership { issued_at, owned_since } => write!(
                f,
                "trust bundle was issued at {issued_at}, before the voucher entry that made its signer the device's \
                 owner ({owned_since}, Unix seconds): only one issued since is taken as the owner's first"
            ),
            Self::BelowThreshold { have, need, whose } => write!(
                f,
                "trust bundle is signed by {have} distinct key(s) named in {whose}, {need} needed; \
                 collect more signatures (iotpki bundle sign)"
            ),
            Self::UnknownSigner { kids, have, need, whose } => {
                write!(
                    f,
                    "trust bundle is signed by {have} distinct key(s) named in {whose}, {need} needed; \
                     signature(s) by key(s) no bundle names do not count: kid "
                )?;
                for (i, k) in kids.iter().enumerate() {
                    write!(f, "{}{}", if i > 0 { ", " } else { "" }, Hex(k))?;
                }
                Ok(())
            }
            Self::BadSignature { kid, detail } => {
                write!(f, "trust bundle signature by key {} is bad: {detail}", Hex(kid))
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for BundleError {}
