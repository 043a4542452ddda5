//! Trust bundles: the versioned, signed set of trust anchors a device trusts.
//!
//! A bundle names the CA certificates the device may trust (`anchors`), the
//! servers it may talk to, and its own signer set: the keys (`signers`) of which
//! `threshold` distinct ones must sign the bundle that replaces it. It is CBOR,
//! signed as a COSE_Sign (RFC 9052, tag 98) with one COSE_Signature per signer;
//! docs/trust-bundle.md has the exact layout and the rules.
//!
//! Why COSE_Sign rather than COSE_Sign1: a threshold needs several independent
//! signatures over one payload, added one at a time by people who never hold each
//! other's keys. COSE_Sign carries exactly that (one payload, a list of
//! signatures, each with its own protected `alg` and `kid`), and adding a
//! signature leaves the payload and every earlier signature untouched.
//!
//! The life of a bundle:
//!
//! 1. [`UnsignedBundle::new`] checks the content and [`UnsignedBundle::encode`]
//!    writes it with no signatures yet (a *draft*: not a valid COSE_Sign until
//!    it has one, and no verifier accepts it).
//! 2. Each signer [`Bundle::decode`]s the file, [`Bundle::add_signature`]s and
//!    writes [`Bundle::encode`] back.
//! 3. The factory puts the first bundle into the device, which checks it with
//!    [`verify_initial`]; every later one is checked with [`verify_update`]
//!    against the bundle the device holds.
//!
//! Signatures are counted by distinct key, never by number: the same key signing
//! twice counts once, and a signature by a key the bundles do not name does not
//! count at all. A signature by a named key that does not verify is an error,
//! not a signature that is skipped.
//!
//! ```
//! use iotpki_core::bundle::{self, Bundle, BundleContent, UnsignedBundle};
//! use iotpki_core::keys::{KeyType, SoftKey, Signer};
//! # use iotpki_core::profile::{issue, CertParams, Issuer, Profile};
//! # fn ca_cert() -> Result<Vec<u8>, Box<dyn std::error::Error>> {
//! #     let k = SoftKey::generate(KeyType::EcdsaP256)?;
//! #     let spki = iotpki_core::asn1::spki::SubjectPublicKeyInfoOwned::try_from(k.public_key_der())?;
//! #     let n = iotpki_core::name::NameBuilder::default().common_name("Root")?.build();
//! #     let kid = iotpki_core::keys::key_identifier(&spki);
//! #     let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: &k };
//! #     let p = CertParams { profile: Profile::Root, serial: iotpki_core::serial::system_random_serial(1)?.0,
//! #         subject: n.clone(), spki, not_before: 1_700_000_000, not_after: 2_000_000_000,
//! #         dns_names: vec![], ip_addrs: vec![], permitted_subtree: None };
//! #     Ok(issue(&p, &issuer)?.der)
//! # }
//!
//! let (a, b) = (SoftKey::generate(KeyType::EcdsaP256)?, SoftKey::generate(KeyType::Ed25519)?);
//! let content = BundleContent {
//!     version: 1,
//!     issued_at: 1_700_000_000,
//!     expires_at: 1_800_000_000,
//!     anchors: vec![ca_cert()?],
//!     servers: vec!["est.example.com".into()],
//!     threshold: 2,
//!     signers: vec![a.public_key_der().to_vec(), b.public_key_der().to_vec()],
//! };
//! let draft = UnsignedBundle::new(content)?.encode();
//! let mut signed = Bundle::decode(&draft)?;
//! signed.add_signature(&a)?;
//! signed.add_signature(&b)?;
//! let trusted = bundle::verify_initial(&signed.encode(), 1_700_000_100)?;
//! assert_eq!(trusted.content().version, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use coset::{AsCborValue, CoseSign, CoseSignature, Header, HeaderBuilder, ProtectedHeader, TaggedCborSerializable};
use der::Decode;
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;

use crate::cose::{self, cbor, kid_hex, CoseAlg, KeyId};
use crate::keys::Signer;

/// The COSE content type in the body's protected header: it keeps a bundle
/// signature from ever being taken for a signature over anything else.
pub const CONTENT_TYPE: &str = "application/vnd.iotpki.trust-bundle+cbor";

/// Largest encoded bundle accepted, in octets.
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024;
/// Most trust anchors in one bundle.
pub const MAX_ANCHORS: usize = 32;
/// Largest anchor certificate, in octets.
pub const MAX_ANCHOR_BYTES: usize = 16 * 1024;
/// Most server names in one bundle.
pub const MAX_SERVERS: usize = 32;
/// Longest server name (a DNS name's limit).
pub const MAX_SERVER_NAME: usize = 253;
/// Most signer keys one bundle names.
pub const MAX_SIGNERS: usize = 16;
/// Most signatures on one bundle (bounds the verification work).
pub const MAX_SIGNATURES: usize = 32;
/// How far in the future `issued_at` may be before the device refuses the bundle,
/// in seconds: clocks on devices drift.
pub const MAX_CLOCK_SKEW: i64 = 300;

// Payload map keys.
const K_VERSION: u64 = 1;
const K_ISSUED: u64 = 2;
const K_EXPIRES: u64 = 3;
const K_ANCHORS: u64 = 4;
const K_SERVERS: u64 = 5;
const K_THRESHOLD: u64 = 6;
const K_SIGNERS: u64 = 7;
const KEYS: [u64; 7] = [K_VERSION, K_ISSUED, K_EXPIRES, K_ANCHORS, K_SERVERS, K_THRESHOLD, K_SIGNERS];

/// What a bundle says: everything its signatures cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleContent {
    /// Strictly increasing from one bundle to the next.
    pub version: u64,
    /// When it was made, Unix seconds.
    pub issued_at: i64,
    /// The first second it is no longer valid, Unix seconds.
    pub expires_at: i64,
    /// DER X.509 CA certificates the device trusts (1 to [`MAX_ANCHORS`], distinct).
    pub anchors: Vec<Vec<u8>>,
    /// Names of the servers the device may talk to (0 to [`MAX_SERVERS`], distinct,
    /// printable ASCII without spaces).
    pub servers: Vec<String>,
    /// How many distinct `signers` must sign the bundle that replaces this one (and this one itself).
    pub threshold: u8,
    /// DER subjectPublicKeyInfos of the signer keys: P-256, P-384 or Ed25519 (1 to [`MAX_SIGNERS`], distinct).
    pub signers: Vec<Vec<u8>>,
}

impl BundleContent {
    fn check(&self) -> Result<(), String> {
        if self.issued_at < 0 {
            return Err("issued_at is before 1970".into());
        }
        if self.expires_at <= self.issued_at {
            return Err(format!("expires_at {} is not after issued_at {}", self.expires_at, self.issued_at));
        }
        if self.anchors.is_empty() || self.anchors.len() > MAX_ANCHORS {
            return Err(format!("{} anchors: 1 to {MAX_ANCHORS} allowed", self.anchors.len()));
        }
        let mut seen = BTreeSet::new();
        for (i, a) in self.anchors.iter().enumerate() {
            check_anchor(a).map_err(|e| format!("anchor {}: {e}", i + 1))?;
            if !seen.insert(cose::sha256(a)) {
                return Err(format!("anchor {} appears twice", i + 1));
            }
        }
        if self.servers.len() > MAX_SERVERS {
            return Err(format!("{} servers: at most {MAX_SERVERS} allowed", self.servers.len()));
        }
        let mut seen = BTreeSet::new();
        for s in &self.servers {
            if s.is_empty() || s.len() > MAX_SERVER_NAME || !s.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(format!("server name {s:?}: 1 to {MAX_SERVER_NAME} printable ASCII characters, no spaces"));
            }
            if !seen.insert(s.as_str()) {
                return Err(format!("server name {s:?} appears twice"));
            }
        }
        if self.signers.is_empty() || self.signers.len() > MAX_SIGNERS {
            return Err(format!("{} signer keys: 1 to {MAX_SIGNERS} allowed", self.signers.len()));
        }
        let mut seen = BTreeSet::new();
        for (i, s) in self.signers.iter().enumerate() {
            cose::parse_signer_key(s).map_err(|e| format!("signer key {}: {e}", i + 1))?;
            if !seen.insert(cose::key_id(s)) {
                return Err(format!("signer key {} appears twice", i + 1));
            }
        }
        if self.threshold == 0 || usize::from(self.threshold) > self.signers.len() {
            return Err(format!(
                "threshold {} must be 1 to the number of signer keys ({})",
                self.threshold,
                self.signers.len()
            ));
        }
        Ok(())
    }

    fn to_value(&self) -> cbor::Value {
        use cbor::Value;
        let int = |k: u64| Value::Integer(k.into());
        Value::Map(vec![
            (int(K_VERSION), Value::Integer(self.version.into())),
            (int(K_ISSUED), cbor::time_value(self.issued_at)),
            (int(K_EXPIRES), cbor::time_value(self.expires_at)),
            (int(K_ANCHORS), Value::Array(self.anchors.iter().cloned().map(Value::Bytes).collect())),
            (int(K_SERVERS), Value::Array(self.servers.iter().cloned().map(Value::Text).collect())),
            (int(K_THRESHOLD), Value::Integer(self.threshold.into())),
            (int(K_SIGNERS), Value::Array(self.signers.iter().cloned().map(Value::Bytes).collect())),
        ])
    }

    fn from_payload(payload: &[u8]) -> Result<Self, String> {
        let mut f = cbor::int_map(cbor::from_slice(payload)?, &KEYS)?.into_iter();
        let mut next = || f.next().ok_or_else(|| "payload map too short".to_string());
        let version = cbor::uint(&next()?, "version")?;
        let issued_at = cbor::time(&next()?, "issued_at")?;
        let expires_at = cbor::time(&next()?, "expires_at")?;
        let anchors = cbor::array(next()?, "anchors", MAX_ANCHORS)?
            .into_iter()
            .map(|v| cbor::bytes(v, "anchor"))
            .collect::<Result<_, _>>()?;
        let servers = cbor::array(next()?, "servers", MAX_SERVERS)?
            .into_iter()
            .map(|v| cbor::text(v, "server"))
            .collect::<Result<_, _>>()?;
        let threshold =
            u8::try_from(cbor::uint(&next()?, "threshold")?).map_err(|_| "threshold: more than 255".to_string())?;
        let signers = cbor::array(next()?, "signers", MAX_SIGNERS)?
            .into_iter()
            .map(|v| cbor::bytes(v, "signer key"))
            .collect::<Result<_, _>>()?;
        let c = Self { version, issued_at, expires_at, anchors, servers, threshold, signers };
        c.check()?;
        Ok(c)
    }
}

fn check_anchor(der: &[u8]) -> Result<(), String> {
    if der.len() > MAX_ANCHOR_BYTES {
        return Err(format!("{} octets, at most {MAX_ANCHOR_BYTES} allowed", der.len()));
    }
    let cert = Certificate::from_der(der).map_err(|e| format!("not a DER X.509 certificate: {e}"))?;
    let bc = cert
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.extn_id == <BasicConstraints as const_oid::AssociatedOid>::OID)
        .map(|e| BasicConstraints::from_der(e.extn_value.as_bytes()))
        .transpose()
        .map_err(|e| format!("basicConstraints: {e}"))?;
    if !bc.is_some_and(|bc| bc.ca) {
        return Err("not a CA certificate (basicConstraints cA is not set)".into());
    }
    // Keys are compared in one form only (an anchor's key is what chains are checked against).
    let spki = der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info).map_err(|e| e.to_string())?;
    crate::keys::canonical_spki(&spki).map_err(|e| e.to_string())?;
    Ok(())
}

/// Bundle content that passed [`UnsignedBundle::new`]'s checks, ready to encode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedBundle(BundleContent);

impl UnsignedBundle {
    /// Check `content` (see [`BundleContent`]'s field docs for the rules).
    pub fn new(content: BundleContent) -> Result<Self, BundleError> {
        content.check().map_err(BundleError::Invalid)?;
        Ok(Self(content))
    }

    /// The content.
    pub fn content(&self) -> &BundleContent {
        &self.0
    }

    /// The draft: a COSE_Sign with no signatures yet. The same content always
    /// encodes to the same octets.
    pub fn encode(&self) -> Vec<u8> {
        let cose = CoseSign {
            protected: body_protected(),
            unprotected: Header::default(),
            payload: Some(cbor::to_vec(&self.0.to_value())),
            signatures: Vec::new(),
        };
        cose_bytes(cose)
    }
}

fn body_protected() -> ProtectedHeader {
    ProtectedHeader { original_data: None, header: HeaderBuilder::new().content_type(CONTENT_TYPE.into()).build() }
}

fn signature_protected(alg: CoseAlg, kid: &KeyId) -> ProtectedHeader {
    ProtectedHeader {
        original_data: None,
        header: HeaderBuilder::new().algorithm(alg.iana()).key_id(kid.to_vec()).build(),
    }
}

/// The encoded form of a protected header we would write ourselves.
fn protected_bytes(h: ProtectedHeader) -> Vec<u8> {
    match h.cbor_bstr() {
        Ok(cbor::Value::Bytes(b)) => b,
        _ => Vec::new(),
    }
}

fn cose_bytes(cose: CoseSign) -> Vec<u8> {
    // Encoding our own structures cannot fail: every header is one we built.
    cose.to_tagged_vec().unwrap_or_default()
}

/// One signature on a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleSignature {
    /// The signer's key id: SHA-256 of its DER subjectPublicKeyInfo.
    pub kid: KeyId,
    /// The algorithm it claims.
    pub alg: CoseAlg,
}

/// Whether one of a bundle's own signer keys has signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureState {
    /// A signature by this key is on the bundle and verifies.
    Valid,
    /// A signature by this key is on the bundle but does not verify (why).
    Invalid(String),
    /// This key has not signed.
    Missing,
}

/// One of a bundle's own signer keys and whether it has signed (see [`Bundle::own_signers`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerStatus {
    /// The key, DER subjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// Its key id.
    pub kid: KeyId,
    /// Whether it has signed.
    pub state: SignatureState,
}

/// A decoded bundle: well-formed, its content checked, its signatures NOT yet
/// verified. Only [`verify_initial`] and [`verify_update`] return bundles a device may trust.
#[derive(Clone, Debug)]
pub struct Bundle {
    content: BundleContent,
    signatures: Vec<BundleSignature>,
    cose: CoseSign,
    bytes: Vec<u8>,
}

impl PartialEq for Bundle {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Bundle {
    /// Decode a bundle (signed or a draft). Bounded: at most [`MAX_BUNDLE_BYTES`],
    /// only the deterministic encoding, every field checked; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, BundleError> {
        let m = |s: String| BundleError::Malformed(s);
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(m(format!("{} octets, at most {MAX_BUNDLE_BYTES} allowed", bytes.len())));
        }
        let value = cbor::from_slice(bytes).map_err(m)?;
        let cbor::Value::Tag(tag, inner) = value else {
            return Err(m("not a tagged COSE_Sign (CBOR tag 98)".into()));
        };
        if tag != CoseSign::TAG {
            return Err(m(format!("CBOR tag {tag}, expected 98 (COSE_Sign)")));
        }
        let cose = CoseSign::from_cbor_value(*inner).map_err(|e| m(format!("not a COSE_Sign: {e}")))?;
        if cose.protected.original_data.as_deref() != Some(&protected_bytes(body_protected())[..]) {
            return Err(m(format!("the protected header must be exactly {{3: \"{CONTENT_TYPE}\"}}")));
        }
        if cose.unprotected != Header::default() {
            return Err(m("the unprotected header must be empty".into()));
        }
        let payload = cose.payload.as_deref().ok_or_else(|| m("detached payloads are not supported".into()))?;
        let content = BundleContent::from_payload(payload).map_err(|e| m(format!("payload: {e}")))?;
        if cose.signatures.len() > MAX_SIGNATURES {
            return Err(m(format!("{} signatures, at most {MAX_SIGNATURES} allowed", cose.signatures.len())));
        }
        let mut signatures = Vec::with_capacity(cose.signatures.len());
        for (i, s) in cose.signatures.iter().enumerate() {
            signatures.push(decode_signature(s).map_err(|e| m(format!("signature {}: {e}", i + 1)))?);
        }
        Ok(Self { content, signatures, cose, bytes: bytes.to_vec() })
    }

    /// The encoded bundle, exactly the octets it was decoded from (or built as).
    pub fn encode(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// What the bundle says.
    pub fn content(&self) -> &BundleContent {
        &self.content
    }

    /// The signatures on it, in the order they were added (not verified).
    pub fn signatures(&self) -> &[BundleSignature] {
        &self.signatures
    }

    /// Add `signer`'s signature. Any key of a supported type may sign (the keys
    /// of the bundle a device holds sign the bundle that replaces it, and they need
    /// not be named in the new one); a key that has already signed is refused, and
    /// nothing changes on any error.
    pub fn add_signature(&mut self, signer: &dyn Signer) -> Result<(), BundleError> {
        let kid = cose::key_id(signer.public_key_der());
        if self.signatures.iter().any(|s| s.kid == kid) {
            return Err(BundleError::AlreadySigned { kid });
        }
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err(BundleError::Signer(format!("the bundle already has {MAX_SIGNATURES} signatures")));
        }
        let alg = CoseAlg::for_key(signer.key_type()).ok_or_else(|| {
            BundleError::Signer(format!("a {} key cannot sign a bundle (use p256, p384 or ed25519)", signer.key_type()))
        })?;
        let mut sig = CoseSignature {
            protected: signature_protected(alg, &kid),
            unprotected: Header::default(),
            signature: Vec::new(),
        };
        let tbs = self.cose.tbs_data(&[], &sig);
        let (_, value) = cose::sign(signer, &tbs).map_err(BundleError::Signer)?;
        sig.signature = value;
        let mut cose = self.cose.clone();
        cose.signatures.push(sig);
        // Decoding what we wrote keeps one source of truth for what a bundle is.
        *self = Self::decode(&cose_bytes(cose))?;
        Ok(())
    }

    /// Each of the bundle's own signer keys, in order, and whether it has signed.
    pub fn own_signers(&self) -> Vec<SignerStatus> {
        self.content
            .signers
            .iter()
            .map(|spki| {
                let kid = cose::key_id(spki);
                let state = match self.signatures.iter().position(|s| s.kid == kid) {
                    None => SignatureState::Missing,
                    Some(i) => match self.check(i, spki) {
                        Ok(()) => SignatureState::Valid,
                        Err(e) => SignatureState::Invalid(e),
                    },
                };
                SignerStatus { spki: spki.clone(), kid, state }
            })
            .collect()
    }

    /// Key ids of signatures by keys the bundle does not name itself (signers of
    /// the bundle it replaces, or keys nobody knows).
    pub fn foreign_signatures(&self) -> Vec<KeyId> {
        let own: BTreeSet<KeyId> = self.content.signers.iter().map(|s| cose::key_id(s)).collect();
        self.signatures.iter().filter(|s| !own.contains(&s.kid)).map(|s| s.kid).collect()
    }

    fn check(&self, index: usize, spki: &[u8]) -> Result<(), String> {
        let (Some(s), Some(raw)) = (self.signatures.get(index), self.cose.signatures.get(index)) else {
            return Err("no such signature".into());
        };
        cose::verify(spki, s.alg, &self.cose.tbs_data(&[], raw), &raw.signature)
    }

    /// Verify every signature whose key is in `keys` (a duplicate key is checked
    /// each time it signed); count the distinct keys that signed.
    fn tally(&self, keys: &BTreeMap<KeyId, &[u8]>) -> Result<Tally, BundleError> {
        let mut t = Tally::default();
        for (i, s) in self.signatures.iter().enumerate() {
            match keys.get(&s.kid) {
                Some(spki) => {
                    self.check(i, spki).map_err(|detail| BundleError::BadSignature { kid: s.kid, detail })?;
                    t.valid.insert(s.kid);
                }
                None => {
                    if !t.unknown.contains(&s.kid) {
                        t.unknown.push(s.kid);
                    }
                }
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

fn decode_signature(s: &CoseSignature) -> Result<BundleSignature, String> {
    let h = &s.protected.header;
    let alg = h.alg.as_ref().and_then(CoseAlg::from_label).ok_or("alg must be ES256, ES384 or EdDSA")?;
    let kid: KeyId = h.key_id.clone().try_into().map_err(|_| "kid must be 32 octets (SHA-256 of the key)")?;
    if s.protected.original_data.as_deref() != Some(&protected_bytes(signature_protected(alg, &kid))[..]) {
        return Err("the protected header must be exactly {1: alg, 4: kid}".into());
    }
    if s.unprotected != Header::default() {
        return Err("the unprotected header must be empty".into());
    }
    Ok(BundleSignature { kid, alg })
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
            return Ok(());
        }
        if self.unknown.is_empty() {
            Err(BundleError::BelowThreshold { have, need, whose })
        } else {
            Err(BundleError::UnknownSigner { kids: self.unknown.clone(), have, need, whose })
        }
    }
}

fn key_map<'a>(sets: &[&'a [Vec<u8>]]) -> BTreeMap<KeyId, &'a [u8]> {
    sets.iter().flat_map(|s| s.iter()).map(|k| (cose::key_id(k), k.as_slice())).collect()
}

/// Check the first bundle a device is given (at the factory): signed by at
/// least its own `threshold` distinct keys of its own `signers`, not expired at
/// `now`, not issued more than [`MAX_CLOCK_SKEW`] after `now`.
pub fn verify_initial(bytes: &[u8], now: i64) -> Result<Bundle, BundleError> {
    let b = Bundle::decode(bytes)?;
    let tally = b.tally(&key_map(&[&b.content.signers]))?;
    tally.require(&b.content.signers, b.content.threshold, Whose::Own)?;
    b.check_time(now)?;
    Ok(b)
}

/// Check the first bundle of a device's owner, taken without a factory: the
/// device holds no bundle (it was handed over, and the previous owner's was
/// set aside; or it was claimed without one) and an ownership voucher that
/// names `owner_spki` (DER SubjectPublicKeyInfo, the owner's root key), in
/// the voucher's last entry, made at `owned_since`. The voucher's owner stands
/// where a current bundle's signers stand in [`verify_update`]: accepted only
/// if, in this order,
/// 1. it decodes (else [`BundleError::Malformed`]);
/// 2. every signature by the owner key or by a key it names verifies (else
///    [`BundleError::BadSignature`]);
/// 3. the owner key signed it (else [`BundleError::BelowThreshold`] or
///    [`BundleError::UnknownSigner`], whose [`Whose::Owner`]): anyone can make
///    a bundle that its own signers sign, only the owner can sign with the key
///    the voucher names;
/// 4. its own `threshold` of its own keys signed it (as [`verify_initial`]), so
///    that its signers can sign the next update;
/// 5. it was issued at or after `owned_since` (else [`BundleError::BeforeOwnership`]):
///    the device holds no version to roll back from, so this is what keeps an
///    older bundle of the same owner (roots and signers it has dropped since,
///    still within its expiry) from being replayed to a device it just got;
/// 6. the time rules of [`verify_initial`].
///
/// A later bundle of this owner replaces this one by [`verify_update`].
pub fn verify_owned(bytes: &[u8], owner_spki: &[u8], owned_since: i64, now: i64) -> Result<Bundle, BundleError> {
    let b = Bundle::decode(bytes)?;
    let owner = [owner_spki.to_vec()];
    let tally = b.tally(&key_map(&[&owner, &b.content.signers]))?;
    tally.require(&owner, 1, Whose::Owner)?;
    tally.require(&b.content.signers, b.content.threshold, Whose::Own)?;
    if b.content.issued_at < owned_since {
        return Err(BundleError::BeforeOwnership { issued_at: b.content.issued_at, owned_since });
    }
    b.check_time(now)?;
    Ok(b)
}

/// Check a bundle offered to replace `current`, the one the device trusts.
///
/// `current` is the bundle the device holds: checked when it was installed, and
/// read back from the device's own storage with [`Bundle::decode`]. Its expiry
/// is not checked here on purpose: a device that was offline past its bundle's
/// `expires_at` must still be able to take the successor its signers approved.
///
/// Accepted only if all of these hold, checked in this order:
/// 1. it decodes (else [`BundleError::Malformed`]);
/// 2. every signature by a key named in `current` or in the candidate verifies
///    (else [`BundleError::BadSignature`]);
/// 3. at least `current.threshold` distinct keys named in `current` signed it, and
/// 4. at least its own `threshold` distinct keys named in itself signed it
///    (else [`BundleError::BelowThreshold`], or [`BundleError::UnknownSigner`] when
///    signatures by keys neither names were present and did not count);
/// 5. its version is greater than `current`'s (else [`BundleError::Rollback`]);
/// 6. `now` is before its `expires_at` (else [`BundleError::Expired`]) and its
///    `issued_at` is at most [`MAX_CLOCK_SKEW`] after `now` (else [`BundleError::IssuedInFuture`]).
pub fn verify_update(current: &Bundle, candidate: &[u8], now: i64) -> Result<Bundle, BundleError> {
    let b = Bundle::decode(candidate)?;
    let tally = b.tally(&key_map(&[&current.content.signers, &b.content.signers]))?;
    tally.require(&current.content.signers, current.content.threshold, Whose::Current)?;
    tally.require(&b.content.signers, b.content.threshold, Whose::Own)?;
    if b.content.version <= current.content.version {
        return Err(BundleError::Rollback { stored: current.content.version, offered: b.content.version });
    }
    b.check_time(now)?;
    Ok(b)
}

/// Whose threshold a bundle failed to meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whose {
    /// The bundle the device holds now.
    Current,
    /// The bundle's own (the one being checked).
    Own,
    /// The device's owner: the key its installed ownership voucher names ([`verify_owned`]).
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

/// Why a bundle was refused, or could not be built or signed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BundleError {
    /// The octets are not a bundle: bad CBOR or COSE, a field missing or out of
    /// range, too large, or not the deterministic encoding.
    Malformed(String),
    /// [`UnsignedBundle::new`] was given content that breaks a rule.
    Invalid(String),
    /// The offered version is not newer than the one the device holds.
    Rollback {
        /// The version the device holds.
        stored: u64,
        /// The version offered.
        offered: u64,
    },
    /// The bundle has expired.
    Expired {
        /// Its `expires_at`.
        expires_at: i64,
        /// The time it was checked at.
        now: i64,
    },
    /// The bundle says it was issued further in the future than clock skew explains.
    IssuedInFuture {
        /// Its `issued_at`.
        issued_at: i64,
        /// The time it was checked at.
        now: i64,
    },
    /// An owner's first bundle ([`verify_owned`]) issued before the voucher
    /// entry that made it the device's owner.
    BeforeOwnership {
        /// Its `issued_at`.
        issued_at: i64,
        /// When the voucher's last entry was made.
        owned_since: i64,
    },
    /// Too few distinct keys signed.
    BelowThreshold {
        /// Distinct keys of the set that signed with a valid signature.
        have: usize,
        /// The threshold.
        need: u8,
        /// Whose keys and threshold.
        whose: Whose,
    },
    /// Too few distinct keys signed, and some signatures were by keys that
    /// neither bundle names, which do not count.
    UnknownSigner {
        /// Key ids of the signatures that did not count.
        kids: Vec<KeyId>,
        /// Distinct keys of the set that signed with a valid signature.
        have: usize,
        /// The threshold.
        need: u8,
        /// Whose keys and threshold.
        whose: Whose,
    },
    /// A signature by a key the bundles name does not verify.
    BadSignature {
        /// The key id the signature names.
        kid: KeyId,
        /// Why.
        detail: String,
    },
    /// This key has already signed the bundle.
    AlreadySigned {
        /// Its key id.
        kid: KeyId,
    },
    /// The signer could not sign.
    Signer(String),
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(d) => write!(f, "malformed trust bundle: {d}"),
            Self::Invalid(d) => write!(f, "invalid trust bundle content: {d}"),
            Self::Rollback { stored, offered } => write!(
                f,
                "trust bundle version {offered} is not newer than the version {stored} the device holds \
                 (rollback or replay refused; issue a bundle with a higher version)"
            ),
            Self::Expired { expires_at, now } => write!(
                f,
                "trust bundle expired at {} (now {}); issue a new one, or check the device clock",
                crate::time::rfc3339(*expires_at),
                crate::time::rfc3339(*now)
            ),
            Self::IssuedInFuture { issued_at, now } => write!(
                f,
                "trust bundle is issued at {}, more than {MAX_CLOCK_SKEW} s after now ({}); check the clocks",
                crate::time::rfc3339(*issued_at),
                crate::time::rfc3339(*now)
            ),
            Self::BeforeOwnership { issued_at, owned_since } => write!(
                f,
                "trust bundle was issued at {}, before the voucher entry that made its signer the device's owner \
                 ({}): a device takes as its owner's first bundle only one issued since (an older one may trust \
                 roots or signers the owner has dropped); publish a new version (iotpki bundle create, sign, publish)",
                crate::time::rfc3339(*issued_at),
                crate::time::rfc3339(*owned_since)
            ),
            Self::BelowThreshold { have, need, whose } => write!(
                f,
                "trust bundle is signed by {have} distinct key(s) named in {whose}, {need} needed; \
                 collect more signatures (iotpki bundle sign)"
            ),
            Self::UnknownSigner { kids, have, need, whose } => {
                let list: Vec<String> = kids.iter().map(kid_hex).collect();
                write!(
                    f,
                    "trust bundle is signed by {have} distinct key(s) named in {whose}, {need} needed; \
                     signature(s) by key(s) no bundle names do not count: kid {}",
                    list.join(", ")
                )
            }
            Self::BadSignature { kid, detail } => {
                write!(f, "trust bundle signature by key {} is bad: {detail}", kid_hex(kid))
            }
            Self::AlreadySigned { kid } => write!(f, "key {} has already signed this bundle", kid_hex(kid)),
            Self::Signer(d) => write!(f, "cannot sign the trust bundle: {d}"),
        }
    }
}

impl std::error::Error for BundleError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyType, SoftKey};
    use crate::profile::{issue, CertParams, Issuer, Profile};

    const NOW: i64 = 1_750_000_000;

    pub(crate) fn ca(cn: &str) -> Vec<u8> {
        let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap();
        let n = crate::name::NameBuilder::default().common_name(cn).unwrap().build();
        let kid = crate::keys::key_identifier(&spki);
        let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: &k };
        let p = CertParams {
            profile: Profile::Root,
            serial: crate::serial::system_random_serial(NOW).unwrap().0,
            subject: n.clone(),
            spki,
            not_before: 1_700_000_000,
            not_after: 2_000_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        issue(&p, &issuer).unwrap().der
    }

    fn keys() -> Vec<SoftKey> {
        [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519, KeyType::EcdsaP256, KeyType::Ed25519]
            .into_iter()
            .map(|kt| SoftKey::generate(kt).unwrap())
            .collect()
    }

    fn content(version: u64, signers: &[&SoftKey], threshold: u8) -> BundleContent {
        BundleContent {
            version,
            issued_at: NOW - 60,
            expires_at: NOW + 86_400,
            anchors: vec![ca("Root A")],
            servers: vec!["est.example.com".into(), "10.0.0.1".into()],
            threshold,
            signers: signers.iter().map(|k| k.public_key_der().to_vec()).collect(),
        }
    }

    fn signed(c: BundleContent, by: &[&SoftKey]) -> Vec<u8> {
        let mut b = Bundle::decode(&UnsignedBundle::new(c).unwrap().encode()).unwrap();
        for k in by {
            b.add_signature(*k).unwrap();
        }
        b.encode()
    }

    #[test]
    fn initial_accepts_a_threshold_of_its_own_keys() {
        let k = keys();
        let c = content(1, &[&k[0], &k[1], &k[2]], 2);
        let draft = UnsignedBundle::new(c.clone()).unwrap().encode();
        assert_eq!(draft, UnsignedBundle::new(c.clone()).unwrap().encode(), "deterministic");
        let bytes = signed(c.clone(), &[&k[1], &k[2]]);
        let b = verify_initial(&bytes, NOW).unwrap();
        assert_eq!(b.content(), &c);
        assert_eq!(b.encode(), bytes);
        assert_eq!(b.signatures().len(), 2);
        assert_eq!(b.signatures()[0].alg, CoseAlg::Es384);
        assert_eq!(b.signatures()[1].alg, CoseAlg::EdDsa);
        // Decoding and encoding again gives the same octets.
        assert_eq!(Bundle::decode(&bytes).unwrap().encode(), bytes);
        let states: Vec<_> = b.own_signers().into_iter().map(|s| s.state).collect();
        assert_eq!(states, [SignatureState::Missing, SignatureState::Valid, SignatureState::Valid]);
        assert!(b.foreign_signatures().is_empty());
    }

    #[test]
    fn initial_refuses_too_few_signatures() {
        let k = keys();
        let bytes = signed(content(1, &[&k[0], &k[1], &k[2]], 2), &[&k[0]]);
        let err = verify_initial(&bytes, NOW).unwrap_err();
        assert_eq!(err, BundleError::BelowThreshold { have: 1, need: 2, whose: Whose::Own });
        assert!(err.to_string().contains("1 distinct key(s) named in the offered bundle itself, 2 needed"), "{err}");
        // A draft has no signature at all.
        let draft = UnsignedBundle::new(content(1, &[&k[0]], 1)).unwrap().encode();
        assert!(matches!(verify_initial(&draft, NOW), Err(BundleError::BelowThreshold { have: 0, need: 1, .. })));
    }

    #[test]
    fn a_key_signing_twice_counts_once() {
        let k = keys();
        let mut b = Bundle::decode(&signed(content(1, &[&k[0], &k[1]], 2), &[&k[0]])).unwrap();
        let before = b.encode();
        assert_eq!(
            b.add_signature(&k[0]),
            Err(BundleError::AlreadySigned { kid: cose::key_id(k[0].public_key_der()) })
        );
        assert_eq!(b.encode(), before, "nothing changed");
        // Forge the duplicate into the file by hand: it still counts once.
        let mut cose = b.cose.clone();
        cose.signatures.push(cose.signatures[0].clone());
        let twice = cose_bytes(cose);
        assert_eq!(Bundle::decode(&twice).unwrap().signatures().len(), 2);
        let err = verify_initial(&twice, NOW).unwrap_err();
        assert_eq!(err, BundleError::BelowThreshold { have: 1, need: 2, whose: Whose::Own });
    }

    /// A COSE_Sign over `c` (not checked) with one signature per (kid, signing key).
    fn hand_built(c: &BundleContent, sigs: &[(KeyId, &SoftKey)]) -> Vec<u8> {
        let mut cose = CoseSign {
            protected: body_protected(),
            unprotected: Header::default(),
            payload: Some(cbor::to_vec(&c.to_value())),
            signatures: Vec::new(),
        };
        for (kid, key) in sigs {
            let alg = CoseAlg::for_key(key.key_type()).unwrap();
            let mut sig = CoseSignature {
                protected: signature_protected(alg, kid),
                unprotected: Header::default(),
                signature: Vec::new(),
            };
            sig.signature = cose::sign(*key, &cose.tbs_data(&[], &sig)).unwrap().1;
            cose.signatures.push(sig);
        }
        cose_bytes(cose)
    }

    #[test]
    fn one_key_compressed_and_uncompressed_does_not_meet_a_threshold_of_two() {
        let k = keys();
        let key = &k[0];
        let twin = crate::keys::compressed_spki(key.public_key_der());
        let mut c = content(1, &[key], 2);
        c.signers.push(twin.clone());
        let err = UnsignedBundle::new(c.clone()).unwrap_err();
        assert!(
            matches!(&err, BundleError::Invalid(d) if d.contains("signer key 2") && d.contains("compressed")),
            "{err}"
        );
        // Hand-built: the one key signs once under each encoding's kid. Before
        // canonical keys this counted as two signers; now the file is refused.
        let sigs = [(cose::key_id(key.public_key_der()), key), (cose::key_id(&twin), key)];
        let bytes = hand_built(&c, &sigs);
        for err in [verify_initial(&bytes, NOW).unwrap_err(), Bundle::decode(&bytes).unwrap_err()] {
            assert!(matches!(&err, BundleError::Malformed(d) if d.contains("compressed")), "{err}");
        }
        // As an update: the current bundle names the key once with threshold 2 of
        // {key, k1}; the offered one names the twin and is signed under both kids.
        let current = Bundle::decode(&signed(content(1, &[key, &k[1]], 2), &[key, &k[1]])).unwrap();
        let mut next = content(2, &[key], 2);
        next.signers.push(twin.clone());
        let err = verify_update(&current, &hand_built(&next, &sigs), NOW).unwrap_err();
        assert!(matches!(&err, BundleError::Malformed(d) if d.contains("compressed")), "{err}");
        // And a bundle that names the key once, signed under the twin's kid too: the twin counts for nothing.
        let only = content(2, &[key, &k[1]], 2);
        let err = verify_update(&current, &hand_built(&only, &sigs), NOW).unwrap_err();
        assert!(matches!(err, BundleError::UnknownSigner { have: 1, need: 2, .. }), "{err}");
    }

    #[test]
    fn an_unknown_signer_does_not_count() {
        let k = keys();
        let stranger = &k[4];
        let bytes = signed(content(1, &[&k[0], &k[1]], 2), &[&k[0], stranger]);
        let err = verify_initial(&bytes, NOW).unwrap_err();
        let kid = cose::key_id(stranger.public_key_der());
        assert_eq!(err, BundleError::UnknownSigner { kids: vec![kid], have: 1, need: 2, whose: Whose::Own });
        assert!(err.to_string().contains(&hex::encode(kid)), "{err}");
        assert_eq!(Bundle::decode(&bytes).unwrap().foreign_signatures(), vec![kid]);
        // With the threshold met, an extra unknown signature is harmless.
        let bytes = signed(content(1, &[&k[0], &k[1]], 2), &[&k[0], stranger, &k[1]]);
        verify_initial(&bytes, NOW).unwrap();
    }

    fn corrupt_signature(bytes: &[u8], index: usize) -> Vec<u8> {
        let mut cose = Bundle::decode(bytes).unwrap().cose;
        let s = &mut cose.signatures[index].signature;
        s[5] ^= 1;
        cose_bytes(cose)
    }

    #[test]
    fn a_bad_signature_is_an_error_even_above_threshold() {
        let k = keys();
        let good = signed(content(1, &[&k[0], &k[1], &k[2]], 2), &[&k[0], &k[1], &k[2]]);
        for i in 0..3 {
            let bad = corrupt_signature(&good, i);
            let err = verify_initial(&bad, NOW).unwrap_err();
            assert!(
                matches!(&err, BundleError::BadSignature { kid, .. } if *kid == cose::key_id(k[i].public_key_der())),
                "{err}"
            );
            let states: Vec<_> = Bundle::decode(&bad).unwrap().own_signers().into_iter().map(|s| s.state).collect();
            assert!(matches!(states[i], SignatureState::Invalid(_)));
        }
        // A signature lifted from one bundle onto another does not verify.
        let other = signed(content(2, &[&k[0], &k[1], &k[2]], 2), &[]);
        let mut cose = Bundle::decode(&other).unwrap().cose;
        cose.signatures.push(Bundle::decode(&good).unwrap().cose.signatures[0].clone());
        assert!(matches!(verify_initial(&cose_bytes(cose), NOW), Err(BundleError::BadSignature { .. })));
    }

    /// COSE ML-DSA (-48/-49/-50) signers count towards a threshold with
    /// classical ones; a bundle names an ML-DSA root like any other anchor; a
    /// damaged ML-DSA signature is caught.
    #[cfg(feature = "aws-lc")]
    #[test]
    fn ml_dsa_signers_meet_a_threshold_with_classical_ones() {
        let k: Vec<SoftKey> = [KeyType::MlDsa65, KeyType::EcdsaP256, KeyType::MlDsa44, KeyType::MlDsa87]
            .into_iter()
            .map(|kt| SoftKey::generate(kt).unwrap())
            .collect();
        let mut c = content(1, &[&k[0], &k[1], &k[2], &k[3]], 3);
        c.anchors.push(ca("Root A"));
        let good = signed(c.clone(), &[&k[0], &k[2], &k[3]]);
        let b = verify_initial(&good, NOW).unwrap();
        let algs: Vec<_> = b.signatures().iter().map(|s| s.alg).collect();
        assert_eq!(algs, [CoseAlg::MlDsa65, CoseAlg::MlDsa44, CoseAlg::MlDsa87]);
        for i in 0..3 {
            let err = verify_initial(&corrupt_signature(&good, i), NOW).unwrap_err();
            assert!(matches!(&err, BundleError::BadSignature { .. }), "{err}");
        }
        // Two of three: below the threshold.
        let short = signed(c, &[&k[0], &k[1]]);
        assert!(verify_initial(&short, NOW).is_err());
    }

    #[test]
    fn time_rules() {
        let k = keys();
        let c = content(1, &[&k[0]], 1);
        let bytes = signed(c.clone(), &[&k[0]]);
        verify_initial(&bytes, c.expires_at - 1).unwrap();
        assert_eq!(
            verify_initial(&bytes, c.expires_at).unwrap_err(),
            BundleError::Expired { expires_at: c.expires_at, now: c.expires_at }
        );
        verify_initial(&bytes, c.issued_at - MAX_CLOCK_SKEW).unwrap();
        let early = c.issued_at - MAX_CLOCK_SKEW - 1;
        let err = verify_initial(&bytes, early).unwrap_err();
        assert_eq!(err, BundleError::IssuedInFuture { issued_at: c.issued_at, now: early });
        assert!(err.to_string().contains("check the clocks"), "{err}");
    }

    #[test]
    fn update_with_key_rotation_is_accepted() {
        let k = keys();
        let current = verify_initial(&signed(content(1, &[&k[0], &k[1], &k[2]], 2), &[&k[0], &k[2]]), NOW).unwrap();
        // v2 replaces keys 1 and 2 by 3 and 4: signed by two current keys and two of its own.
        let mut c2 = content(2, &[&k[0], &k[3], &k[4]], 2);
        c2.anchors.push(ca("Root B"));
        let bytes = signed(c2.clone(), &[&k[1], &k[2], &k[3], &k[4]]);
        let next = verify_update(&current, &bytes, NOW).unwrap();
        assert_eq!(next.content(), &c2);
        assert_eq!(next.foreign_signatures().len(), 2);
        // A version jump is fine.
        let bytes = signed(content(7, &[&k[0], &k[1], &k[2]], 2), &[&k[0], &k[1]]);
        assert_eq!(verify_update(&current, &bytes, NOW).unwrap().content().version, 7);
    }

    #[test]
    fn update_needs_the_current_threshold() {
        let k = keys();
        let current = verify_initial(&signed(content(1, &[&k[0], &k[1], &k[2]], 2), &[&k[0], &k[1]]), NOW).unwrap();
        // Signed only by keys the candidate names itself: someone else's bundle.
        let bytes = signed(content(2, &[&k[3], &k[4]], 2), &[&k[3], &k[4]]);
        let err = verify_update(&current, &bytes, NOW).unwrap_err();
        assert_eq!(err, BundleError::BelowThreshold { have: 0, need: 2, whose: Whose::Current });
        assert!(err.to_string().contains("named in the current bundle"), "{err}");
        // One current key and a stranger.
        let bytes = signed(content(2, &[&k[0], &k[1]], 1), &[&k[0], &k[4]]);
        let err = verify_update(&current, &bytes, NOW).unwrap_err();
        assert!(matches!(err, BundleError::UnknownSigner { have: 1, need: 2, whose: Whose::Current, .. }), "{err}");
    }

    #[test]
    fn an_owners_first_bundle_needs_the_owner_key_and_its_own_threshold() {
        let k = keys();
        let owner = k[3].public_key_der();
        // The owner's voucher entry was made an hour before; the bundles, a minute before now.
        const SINCE: i64 = NOW - 3600;
        let c = content(1, &[&k[0], &k[1], &k[2]], 2);
        // Its own signers alone: anyone can make such a bundle.
        let err = verify_owned(&signed(c.clone(), &[&k[0], &k[1]]), owner, SINCE, NOW).unwrap_err();
        assert_eq!(err, BundleError::BelowThreshold { have: 0, need: 1, whose: Whose::Owner });
        assert!(err.to_string().contains("ownership voucher"), "{err}");
        // And a key that is not the owner's.
        let err = verify_owned(&signed(c.clone(), &[&k[0], &k[1], &k[4]]), owner, SINCE, NOW).unwrap_err();
        assert!(matches!(err, BundleError::UnknownSigner { have: 0, need: 1, whose: Whose::Owner, .. }), "{err}");
        // The owner and a threshold of its own keys.
        let bytes = signed(c.clone(), &[&k[0], &k[1], &k[3]]);
        let b = verify_owned(&bytes, owner, SINCE, NOW).unwrap();
        assert_eq!(b.content(), &c);
        assert_eq!(b.foreign_signatures(), vec![cose::key_id(owner)]);
        assert!(verify_initial(&bytes, NOW).is_ok(), "a factory would take it too");
        // The owner, below the bundle's own threshold: its signers could not sign the next one.
        let err = verify_owned(&signed(c.clone(), &[&k[0], &k[3]]), owner, SINCE, NOW).unwrap_err();
        assert_eq!(err, BundleError::BelowThreshold { have: 1, need: 2, whose: Whose::Own });
        // The owner key named among the signers counts for both.
        let named = content(1, &[&k[3], &k[0]], 1);
        assert!(verify_owned(&signed(named, &[&k[3]]), owner, SINCE, NOW).is_ok());
        // The owner's signature damaged: an error, not a signature skipped.
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let err = verify_owned(&bad, owner, SINCE, NOW).unwrap_err();
        assert!(matches!(err, BundleError::BadSignature { kid, .. } if kid == cose::key_id(owner)), "{err}");
        // Issued before the owner got the device (an older bundle of its own, replayed): refused.
        let err = verify_owned(&bytes, owner, NOW - 59, NOW).unwrap_err();
        assert_eq!(err, BundleError::BeforeOwnership { issued_at: NOW - 60, owned_since: NOW - 59 });
        assert!(err.to_string().contains("before the voucher entry"), "{err}");
        assert!(verify_owned(&bytes, owner, NOW - 60, NOW).is_ok(), "issued in the second the entry was made");
        // Time rules as for the first bundle.
        let err = verify_owned(&bytes, owner, SINCE, NOW + 86_400).unwrap_err();
        assert!(matches!(err, BundleError::Expired { .. }), "{err}");
        // Another owner's key decides nothing.
        let err = verify_owned(&bytes, k[4].public_key_der(), SINCE, NOW).unwrap_err();
        assert!(matches!(err, BundleError::UnknownSigner { whose: Whose::Owner, .. }), "{err}");
    }

    #[test]
    fn update_needs_its_own_threshold() {
        let k = keys();
        let current = verify_initial(&signed(content(1, &[&k[0], &k[1]], 2), &[&k[0], &k[1]]), NOW).unwrap();
        // The current keys sign a bundle naming new keys, only one of which has signed.
        let bytes = signed(content(2, &[&k[3], &k[4]], 2), &[&k[0], &k[1], &k[3]]);
        let err = verify_update(&current, &bytes, NOW).unwrap_err();
        assert_eq!(err, BundleError::BelowThreshold { have: 1, need: 2, whose: Whose::Own });
    }

    #[test]
    fn update_refuses_rollback_and_replay() {
        let k = keys();
        let cur = verify_initial(&signed(content(5, &[&k[0]], 1), &[&k[0]]), NOW).unwrap();
        for v in [5, 4, 0] {
            let bytes = signed(content(v, &[&k[0]], 1), &[&k[0]]);
            let err = verify_update(&cur, &bytes, NOW).unwrap_err();
            assert_eq!(err, BundleError::Rollback { stored: 5, offered: v });
            assert!(err.to_string().contains("not newer"), "{err}");
        }
        assert!(matches!(verify_update(&cur, &cur.encode(), NOW), Err(BundleError::Rollback { .. })));
    }

    #[test]
    fn update_refuses_expired_and_future() {
        let k = keys();
        let cur = verify_initial(&signed(content(1, &[&k[0]], 1), &[&k[0]]), NOW).unwrap();
        let c = content(2, &[&k[0]], 1);
        let bytes = signed(c.clone(), &[&k[0]]);
        assert!(matches!(verify_update(&cur, &bytes, c.expires_at + 5), Err(BundleError::Expired { .. })));
        assert!(matches!(verify_update(&cur, &bytes, c.issued_at - 3600), Err(BundleError::IssuedInFuture { .. })));
        verify_update(&cur, &bytes, NOW).unwrap();
    }

    #[test]
    fn an_expired_current_bundle_still_authorises_its_successor() {
        let k = keys();
        let c1 = content(1, &[&k[0]], 1);
        let cur = Bundle::decode(&signed(c1.clone(), &[&k[0]])).unwrap();
        let later = c1.expires_at + 30 * 86_400;
        assert!(matches!(verify_initial(&cur.encode(), later), Err(BundleError::Expired { .. })));
        let mut c2 = content(2, &[&k[0]], 1);
        c2.issued_at = later - 60;
        c2.expires_at = later + 86_400;
        verify_update(&cur, &signed(c2, &[&k[0]]), later).unwrap();
    }

    #[test]
    fn update_refuses_a_bad_signature_by_a_current_key() {
        let k = keys();
        let cur = verify_initial(&signed(content(1, &[&k[0], &k[1]], 1), &[&k[0]]), NOW).unwrap();
        // k[1] is named only in the current bundle; its broken signature is still an error.
        let bytes = signed(content(2, &[&k[0]], 1), &[&k[0], &k[1]]);
        let bad = corrupt_signature(&bytes, 1);
        let err = verify_update(&cur, &bad, NOW).unwrap_err();
        assert!(matches!(err, BundleError::BadSignature { kid, .. } if kid == cose::key_id(k[1].public_key_der())));
    }

    #[test]
    fn content_rules() {
        let k = keys();
        let ok = content(1, &[&k[0], &k[1]], 2);
        let bad = |f: &dyn Fn(&mut BundleContent), want: &str| {
            let mut c = ok.clone();
            f(&mut c);
            match UnsignedBundle::new(c) {
                Err(BundleError::Invalid(d)) => assert!(d.contains(want), "{d} lacks {want:?}"),
                other => panic!("{other:?}"),
            }
        };
        bad(&|c| c.threshold = 0, "threshold 0");
        bad(&|c| c.threshold = 3, "threshold 3");
        bad(&|c| c.anchors.clear(), "0 anchors");
        bad(&|c| c.anchors.push(b"junk".to_vec()), "anchor 2: not a DER X.509 certificate");
        bad(&|c| c.anchors.push(c.anchors[0].clone()), "anchor 2 appears twice");
        bad(&|c| c.signers.push(c.signers[0].clone()), "signer key 3 appears twice");
        bad(&|c| c.signers[0] = b"junk".to_vec(), "signer key 1: not a subjectPublicKeyInfo");
        bad(&|c| c.signers.clear(), "0 signer keys");
        bad(&|c| c.expires_at = c.issued_at, "is not after issued_at");
        bad(&|c| c.issued_at = -1, "before 1970");
        bad(&|c| c.servers.push("bad name".into()), "printable ASCII");
        bad(&|c| c.servers.push(String::new()), "printable ASCII");
        bad(&|c| c.servers.push("est.example.com".into()), "appears twice");
        let mut c = ok.clone();
        c.servers.clear();
        UnsignedBundle::new(c).unwrap();
    }

    #[test]
    fn an_end_entity_certificate_is_not_an_anchor() {
        let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let issuer_der = ca("Issuer");
        let issuer_cert = Certificate::from_der(&issuer_der).unwrap();
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap();
        let subject = crate::name::NameBuilder::default().common_name("server").unwrap().build();
        let kid = crate::keys::key_identifier(&spki);
        let issuer = Issuer {
            subject: &issuer_cert.tbs_certificate.subject,
            key_id: &kid,
            not_after: 2_000_000_000,
            signer: &k,
        };
        let p = CertParams {
            profile: Profile::Server,
            serial: crate::serial::system_random_serial(NOW).unwrap().0,
            subject,
            spki,
            not_before: 1_700_000_000,
            not_after: 1_800_000_000,
            dns_names: vec!["est.example.com".into()],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let leaf = issue(&p, &issuer).unwrap().der;
        let err = check_anchor(&leaf).unwrap_err();
        assert!(err.contains("not a CA certificate"), "{err}");
    }

    #[test]
    fn malformed_input_is_refused_never_panics() {
        let k = keys();
        let good = signed(content(1, &[&k[0], &k[2]], 1), &[&k[0], &k[2]]);
        let malformed = |bytes: &[u8], want: &str| match Bundle::decode(bytes) {
            Err(BundleError::Malformed(d)) => assert!(d.contains(want), "{d} lacks {want:?}"),
            other => panic!("{other:?}"),
        };
        malformed(b"", "");
        malformed(b"junk", "");
        malformed(&good[..good.len() - 1], "");
        let mut long = good.clone();
        long.push(0);
        malformed(&long, "after the CBOR item");
        malformed(&vec![0u8; MAX_BUNDLE_BYTES + 1], "at most");
        // Every prefix and every one-octet change: an error or a bundle, never a panic.
        for n in 0..good.len() {
            assert!(Bundle::decode(&good[..n]).is_err());
            let mut m = good.clone();
            m[n] ^= 0x41;
            let _ = Bundle::decode(&m).map(|b| verify_initial(&b.encode(), NOW));
        }
        // The same structure with another tag (COSE_Sign1 is 18).
        let mut cose = Bundle::decode(&good).unwrap().cose;
        let v = cbor::Value::Tag(18, Box::new(cose.clone().to_cbor_value().unwrap()));
        malformed(&cbor::to_vec(&v), "expected 98");
        // Untagged.
        malformed(&cbor::to_vec(&cose.clone().to_cbor_value().unwrap()), "tagged");
        // Another content type.
        let mut other = cose.clone();
        other.protected = ProtectedHeader {
            original_data: None,
            header: HeaderBuilder::new().content_type("text/plain".into()).build(),
        };
        malformed(&cose_bytes(other), "protected header");
        // An unprotected header.
        let mut other = cose.clone();
        other.unprotected = HeaderBuilder::new().key_id(vec![1]).build();
        malformed(&cose_bytes(other), "unprotected");
        // A signature whose kid is not 32 octets.
        let mut other = cose.clone();
        other.signatures[0].protected.original_data = None;
        other.signatures[0].protected.header.key_id = vec![1, 2];
        malformed(&cose_bytes(other), "kid must be 32 octets");
        // A signature with an algorithm we do not take.
        let mut other = cose.clone();
        other.signatures[0].protected.original_data = None;
        other.signatures[0].protected.header.alg = Some(coset::iana::Algorithm::PS256.into());
        malformed(&cose_bytes(other), "alg must be");
        // A payload with an extra field.
        let mut v = Bundle::decode(&good).unwrap().content.to_value();
        if let cbor::Value::Map(m) = &mut v {
            m.push((cbor::Value::Integer(8.into()), cbor::Value::Null));
        }
        cose.payload = Some(cbor::to_vec(&v));
        malformed(&cose_bytes(cose.clone()), "payload: expected a map of 7 entries");
        // A payload integer in a longer form than needed: not deterministic.
        let mut p = Bundle::decode(&good).unwrap().cose.payload.unwrap();
        assert_eq!(&p[..3], &[0xa7, 0x01, 0x01], "map(7), key 1, version 1");
        p.splice(2..3, [0x18, 0x01]);
        cose.payload = Some(p);
        malformed(&cose_bytes(cose), "deterministic");
    }
}
