//! Ownership vouchers: who owns a device, as a chain of signed hand-overs
//! back to its manufacturer (the idea of RFC 8366 vouchers and of FIDO Device
//! Onboard's ownership voucher, in our own CBOR/COSE form).
//!
//! A voucher is an append-only list of entries. Each entry is a COSE_Sign1
//! (RFC 9052, tag 18) signed by the device's owner at the time, and names
//! - the device: its serial and the SHA-256 of its birth certificate;
//! - the next owner: the DER subjectPublicKeyInfo of the next owner's key;
//! - when it was made and until when it may be used;
//! - the SHA-256 of the previous entry's octets (32 zero octets for the first).
//!
//! The first entry is signed by the manufacturer; every later one by the key the
//! entry before it named. The device checks the chain with [`verify`] from its
//! manufacturer anchor (which it got at birth) and learns its owner's key.
//! docs/voucher.md has the exact layout.
//!
//! Why the next owner is a key (SPKI) and not a CA certificate: the chain is a
//! chain of signing keys (the next entry is verified with exactly this key),
//! a key is what [`Signer::public_key_der`] gives the owner's authority, it is
//! small, and it carries no second validity period that could disagree with the
//! entry's. The device pins its new owner's CA by this key when it first meets
//! the owner's server.
//!
//! ```
//! use iotpki_core::keys::{KeyType, SoftKey, Signer};
//! use iotpki_core::name::DeviceSerial;
//! use iotpki_core::voucher::{self, Voucher};
//!
//! let maker = SoftKey::generate(KeyType::EcdsaP256)?;
//! let (alice, bob) = (SoftKey::generate(KeyType::EcdsaP384)?, SoftKey::generate(KeyType::Ed25519)?);
//! let serial = DeviceSerial::parse("SN-0001")?;
//! let birth_cert = b"the device's birth certificate, DER";
//! let now = 1_700_000_000;
//! let mut v = Voucher::first(&maker, &serial, birth_cert, alice.public_key_der(), now, now + 86_400)?;
//! v.extend(&alice, bob.public_key_der(), now + 10, now + 86_400)?;
//! let ok = voucher::verify(&v.encode(), maker.public_key_der(), &serial, birth_cert, now + 20)?;
//! assert_eq!(ok.owner_anchor, bob.public_key_der());
//! assert_eq!(ok.entries.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use coset::{AsCborValue, CoseSign1, Header, HeaderBuilder, ProtectedHeader, TaggedCborSerializable};

use crate::bundle::MAX_CLOCK_SKEW;
use crate::cose::{self, cbor, kid_hex, CoseAlg, KeyId};
use crate::keys::Signer;
use crate::name::DeviceSerial;

/// The COSE content type in each entry's protected header.
pub const CONTENT_TYPE: &str = "application/vnd.iotpki.voucher-entry+cbor";
/// Largest encoded voucher accepted, in octets.
pub const MAX_VOUCHER_BYTES: usize = 64 * 1024;
/// Most entries (hand-overs) in one voucher.
pub const MAX_ENTRIES: usize = 32;
/// The `prev` of the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

const K_SERIAL: u64 = 1;
const K_BIRTH: u64 = 2;
const K_OWNER: u64 = 3;
const K_CREATED: u64 = 4;
const K_EXPIRES: u64 = 5;
const K_PREV: u64 = 6;
const KEYS: [u64; 6] = [K_SERIAL, K_BIRTH, K_OWNER, K_CREATED, K_EXPIRES, K_PREV];

/// One hand-over, as decoded (the signature is checked by [`verify`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoucherEntry {
    /// The device serial.
    pub serial: DeviceSerial,
    /// SHA-256 of the device's birth certificate (DER).
    pub birth_cert_sha256: [u8; 32],
    /// The next owner's key: DER subjectPublicKeyInfo (P-256, P-384 or Ed25519).
    pub next_owner: Vec<u8>,
    /// When the entry was made, Unix seconds.
    pub created_at: i64,
    /// The first second the entry may no longer be used, Unix seconds.
    pub expires_at: i64,
    /// SHA-256 of the previous entry's encoded COSE_Sign1, or [`GENESIS`].
    pub prev: [u8; 32],
    /// The key id the entry's signature names: SHA-256 of the signer's SPKI.
    pub signer_kid: KeyId,
    /// The signature algorithm.
    pub alg: CoseAlg,
}

impl VoucherEntry {
    fn payload(&self) -> Vec<u8> {
        use cbor::Value;
        let int = |k: u64| Value::Integer(k.into());
        cbor::to_vec(&Value::Map(vec![
            (int(K_SERIAL), Value::Text(self.serial.as_str().to_string())),
            (int(K_BIRTH), Value::Bytes(self.birth_cert_sha256.to_vec())),
            (int(K_OWNER), Value::Bytes(self.next_owner.clone())),
            (int(K_CREATED), cbor::time_value(self.created_at)),
            (int(K_EXPIRES), cbor::time_value(self.expires_at)),
            (int(K_PREV), Value::Bytes(self.prev.to_vec())),
        ]))
    }

    /// Decode one entry's tagged COSE_Sign1, without checking its signature.
    fn decode(bytes: &[u8]) -> Result<(Self, CoseSign1), String> {
        let cbor::Value::Tag(tag, inner) = cbor::from_slice(bytes)? else {
            return Err("not a tagged COSE_Sign1 (CBOR tag 18)".into());
        };
        if tag != CoseSign1::TAG {
            return Err(format!("CBOR tag {tag}, expected 18 (COSE_Sign1)"));
        }
        let cose = CoseSign1::from_cbor_value(*inner).map_err(|e| format!("not a COSE_Sign1: {e}"))?;
        let h = &cose.protected.header;
        let alg = h.alg.as_ref().and_then(CoseAlg::from_label).ok_or("alg must be ES256, ES384 or EdDSA")?;
        let kid: KeyId = h.key_id.clone().try_into().map_err(|_| "kid must be 32 octets (SHA-256 of the key)")?;
        if cose.protected.original_data.as_deref() != Some(&protected_bytes(alg, &kid)[..]) {
            return Err(format!("the protected header must be exactly {{1: alg, 3: \"{CONTENT_TYPE}\", 4: kid}}"));
        }
        if cose.unprotected != Header::default() {
            return Err("the unprotected header must be empty".into());
        }
        let payload = cose.payload.as_deref().ok_or("detached payloads are not supported")?;
        let mut f = cbor::int_map(cbor::from_slice(payload)?, &KEYS)?.into_iter();
        let mut next = || f.next().ok_or_else(|| "payload map too short".to_string());
        let serial = cbor::text(next()?, "serial")?;
        let serial = DeviceSerial::parse(&serial).map_err(|e| format!("serial: {e}"))?;
        let birth_cert_sha256 = cbor::hash(next()?, "birth certificate hash")?;
        let next_owner = cbor::bytes(next()?, "next owner")?;
        cose::parse_signer_key(&next_owner).map_err(|e| format!("next owner key: {e}"))?;
        let created_at = cbor::time(&next()?, "created_at")?;
        let expires_at = cbor::time(&next()?, "expires_at")?;
        if expires_at <= created_at {
            return Err(format!("expires_at {expires_at} is not after created_at {created_at}"));
        }
        let prev = cbor::hash(next()?, "prev")?;
        let entry = Self { serial, birth_cert_sha256, next_owner, created_at, expires_at, prev, signer_kid: kid, alg };
        Ok((entry, cose))
    }
}

fn protected(alg: CoseAlg, kid: &KeyId) -> ProtectedHeader {
    ProtectedHeader {
        original_data: None,
        header: HeaderBuilder::new()
            .algorithm(alg.iana())
            .content_type(CONTENT_TYPE.into())
            .key_id(kid.to_vec())
            .build(),
    }
}

fn protected_bytes(alg: CoseAlg, kid: &KeyId) -> Vec<u8> {
    match protected(alg, kid).cbor_bstr() {
        Ok(cbor::Value::Bytes(b)) => b,
        _ => Vec::new(),
    }
}

/// A voucher: entries in order, each with its encoded octets (which the next
/// entry's `prev` hashes). Decoding checks the form only; [`verify`] checks the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voucher {
    entries: Vec<(VoucherEntry, Vec<u8>)>,
}

impl Voucher {
    /// The first entry: `manufacturer` hands the device (`serial`, `birth_cert_der`)
    /// to `next_owner` (a DER SPKI), valid from `created_at` until `expires_at`.
    pub fn first(
        manufacturer: &dyn Signer,
        serial: &DeviceSerial,
        birth_cert_der: &[u8],
        next_owner: &[u8],
        created_at: i64,
        expires_at: i64,
    ) -> Result<Self, VoucherError> {
        let birth = cose::sha256(birth_cert_der);
        let entry = sign_entry(manufacturer, serial, birth, next_owner, created_at, expires_at, GENESIS)?;
        Ok(Self { entries: vec![entry] })
    }

    /// Append a hand-over from the current owner, who signs with `owner`, to
    /// `next_owner` (a DER SPKI). Refused, with nothing changed, if `owner` is not
    /// the key the last entry named ([`VoucherError::WrongSigner`]), if the last
    /// entry was made after `created_at`, or if the voucher is full. The last
    /// entry may have expired: its owner accepted the device while it was valid.
    pub fn extend(
        &mut self,
        owner: &dyn Signer,
        next_owner: &[u8],
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), VoucherError> {
        let index = self.entries.len();
        let (last, last_bytes) = self.entries.last().ok_or(VoucherError::Empty)?;
        if index >= MAX_ENTRIES {
            return Err(VoucherError::Invalid(format!("the voucher already has {MAX_ENTRIES} entries")));
        }
        let expected = cose::key_id(&last.next_owner);
        let found = cose::key_id(owner.public_key_der());
        if found != expected {
            return Err(VoucherError::WrongSigner { index, expected, found });
        }
        check_succession(index, last, created_at)?;
        let prev = cose::sha256(last_bytes);
        let entry = sign_entry(owner, &last.serial, last.birth_cert_sha256, next_owner, created_at, expires_at, prev)?;
        self.entries.push(entry);
        Ok(())
    }

    /// The voucher's octets: a CBOR array of byte strings, each one entry's tagged COSE_Sign1.
    pub fn encode(&self) -> Vec<u8> {
        let items = self.entries.iter().map(|(_, b)| cbor::Value::Bytes(b.clone())).collect();
        cbor::to_vec(&cbor::Value::Array(items))
    }

    /// Decode a voucher. Bounded ([`MAX_VOUCHER_BYTES`], [`MAX_ENTRIES`]), only
    /// the deterministic encoding; never panics. Signatures and the chain are not
    /// checked: that is [`verify`]'s job.
    pub fn decode(bytes: &[u8]) -> Result<Self, VoucherError> {
        let m = VoucherError::Malformed;
        if bytes.len() > MAX_VOUCHER_BYTES {
            return Err(m(format!("{} octets, at most {MAX_VOUCHER_BYTES} allowed", bytes.len())));
        }
        let items = cbor::array(cbor::from_slice(bytes).map_err(m)?, "voucher", MAX_ENTRIES).map_err(m)?;
        if items.is_empty() {
            return Err(VoucherError::Empty);
        }
        let mut entries = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let b = cbor::bytes(item, &format!("entry {i}")).map_err(m)?;
            let (e, _) = VoucherEntry::decode(&b).map_err(|e| m(format!("entry {i}: {e}")))?;
            entries.push((e, b));
        }
        Ok(Self { entries })
    }

    /// The entries, first (the manufacturer's) to last.
    pub fn entries(&self) -> Vec<&VoucherEntry> {
        self.entries.iter().map(|(e, _)| e).collect()
    }

    /// The key the last entry hands the device to (not verified).
    pub fn owner(&self) -> &[u8] {
        self.entries.last().map(|(e, _)| e.next_owner.as_slice()).unwrap_or_default()
    }

    /// SHA-256 of entry `index`'s octets: what the entry after it names as `prev`.
    pub fn entry_hash(&self, index: usize) -> Option<[u8; 32]> {
        self.entries.get(index).map(|(_, b)| cose::sha256(b))
    }
}

fn sign_entry(
    signer: &dyn Signer,
    serial: &DeviceSerial,
    birth_cert_sha256: [u8; 32],
    next_owner: &[u8],
    created_at: i64,
    expires_at: i64,
    prev: [u8; 32],
) -> Result<(VoucherEntry, Vec<u8>), VoucherError> {
    cose::parse_signer_key(next_owner).map_err(|e| VoucherError::Invalid(format!("next owner key: {e}")))?;
    if created_at < 0 || expires_at <= created_at {
        return Err(VoucherError::Invalid(format!(
            "expires_at {expires_at} must be after created_at {created_at} >= 0"
        )));
    }
    let alg = CoseAlg::for_key(signer.key_type()).ok_or_else(|| {
        VoucherError::Signer(format!("a {} key cannot sign a voucher (use p256, p384 or ed25519)", signer.key_type()))
    })?;
    let kid = cose::key_id(signer.public_key_der());
    let entry = VoucherEntry {
        serial: serial.clone(),
        birth_cert_sha256,
        next_owner: next_owner.to_vec(),
        created_at,
        expires_at,
        prev,
        signer_kid: kid,
        alg,
    };
    let mut cose = CoseSign1 {
        protected: protected(alg, &kid),
        unprotected: Header::default(),
        payload: Some(entry.payload()),
        signature: Vec::new(),
    };
    let (_, sig) = cose::sign(signer, &cose.tbs_data(&[])).map_err(VoucherError::Signer)?;
    cose.signature = sig;
    // Encoding our own structure cannot fail: every header is one we built.
    let bytes = cose.to_tagged_vec().map_err(|e| VoucherError::Signer(e.to_string()))?;
    Ok((entry, bytes))
}

/// Entry `index` (made at `created_at`) may follow `prev` only if made after it.
/// Not "while `prev` was valid": an entry's expiry bounds when the voucher
/// ending in it may be accepted, not how long its owner owns the device, who
/// may hand it on years later.
fn check_succession(index: usize, prev: &VoucherEntry, created_at: i64) -> Result<(), VoucherError> {
    if created_at < prev.created_at {
        return Err(VoucherError::Gap {
            index,
            detail: format!("it was made at {created_at}, before the entry it extends ({})", prev.created_at),
        });
    }
    Ok(())
}

/// What a valid voucher tells the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The current owner's key (DER SPKI): the last entry's next owner.
    pub owner_anchor: Vec<u8>,
    /// Every entry, first to last.
    pub entries: Vec<VoucherEntry>,
}

/// Verify a voucher for the device (`device_serial`, `birth_cert_der`) from its
/// manufacturer's key `manufacturer_spki` (DER SPKI), at `now`.
///
/// For each entry, in order: its `prev` is the hash of the entry before (the
/// first: [`GENESIS`]) (else [`VoucherError::Gap`]); its `kid` names the key
/// that must sign it, the manufacturer's for the first and the previous entry's
/// next owner after that (else [`VoucherError::WrongSigner`]); the signature
/// verifies with that key (else [`VoucherError::BadSignature`]); it names this
/// device (else [`VoucherError::WrongDevice`]); it was not made more than
/// [`MAX_CLOCK_SKEW`] after `now` (else [`VoucherError::CreatedInFuture`]); and
/// it was not made before the entry before it (else [`VoucherError::Gap`]).
/// Finally `now` must be before the last entry's `expires_at`
/// ([`VoucherError::Expired`]): a voucher is accepted (applied on the device,
/// claimed by its owner's authority) only while its last entry is valid;
/// earlier entries are history. Once accepted, it is checked again with
/// [`verify_accepted`], which does not look at expiry.
pub fn verify(
    voucher: &[u8],
    manufacturer_spki: &[u8],
    device_serial: &DeviceSerial,
    birth_cert_der: &[u8],
    now: i64,
) -> Result<Verified, VoucherError> {
    let birth = cose::sha256(birth_cert_der);
    verify_for(Voucher::decode(voucher)?, manufacturer_spki, device_serial, birth, now, Expiry::Checked)
}

/// [`verify`] for a voucher accepted before (installed on the device, held by
/// its owner's authority), checked again when the device commissions: every
/// rule but the last entry's expiry, which bounded only when it could be
/// accepted. An owner keeps the device after its voucher's date; what ends
/// an ownership is a longer voucher (a hand-over) or a revocation.
pub fn verify_accepted(
    voucher: &[u8],
    manufacturer_spki: &[u8],
    device_serial: &DeviceSerial,
    birth_cert_der: &[u8],
    now: i64,
) -> Result<Verified, VoucherError> {
    let birth = cose::sha256(birth_cert_der);
    verify_for(Voucher::decode(voucher)?, manufacturer_spki, device_serial, birth, now, Expiry::Accepted)
}

/// Whether the last entry's expiry is checked: when a voucher is accepted,
/// not when one accepted before is checked again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Checked,
    Accepted,
}

/// [`verify`] for whoever does not hold the device's birth certificate (an
/// owner claiming the device with its voucher before it ever saw it): every
/// entry must name the device and the birth certificate hash its first entry
/// names, and every signature, link and time rule of [`verify`] holds. The
/// birth certificate itself is checked against that hash when the device
/// shows it.
pub fn verify_chain(voucher: &[u8], manufacturer_spki: &[u8], now: i64) -> Result<Verified, VoucherError> {
    let v = Voucher::decode(voucher)?;
    let (serial, birth) = match v.entries.first() {
        Some((e, _)) => (e.serial.clone(), e.birth_cert_sha256),
        None => return Err(VoucherError::Empty),
    };
    verify_for(v, manufacturer_spki, &serial, birth, now, Expiry::Checked)
}

fn verify_for(
    v: Voucher,
    manufacturer_spki: &[u8],
    device_serial: &DeviceSerial,
    birth: [u8; 32],
    now: i64,
    expiry: Expiry,
) -> Result<Verified, VoucherError> {
    let mut signer_spki = manufacturer_spki;
    let mut prev: Option<(&VoucherEntry, &[u8])> = None;
    for (index, (e, bytes)) in v.entries.iter().enumerate() {
        let want_prev = prev.map(|(_, b)| cose::sha256(b)).unwrap_or(GENESIS);
        if e.prev != want_prev {
            let detail = if index == 0 {
                "the first entry does not start at the manufacturer (its prev is not the genesis value)".into()
            } else {
                format!("its prev is not the hash of entry {} (an entry is missing or out of order)", index - 1)
            };
            return Err(VoucherError::Gap { index, detail });
        }
        let expected = cose::key_id(signer_spki);
        if e.signer_kid != expected {
            return Err(VoucherError::WrongSigner { index, expected, found: e.signer_kid });
        }
        let (_, cose_entry) = VoucherEntry::decode(bytes).map_err(VoucherError::Malformed)?;
        // (Decoded again only to reach the signed structure; Voucher keeps the octets.)
        cose::verify(signer_spki, e.alg, &cose_entry.tbs_data(&[]), &cose_entry.signature)
            .map_err(|detail| VoucherError::BadSignature { index, detail })?;
        if e.serial != *device_serial {
            let detail = format!("it is for device {}, this is {}", e.serial, device_serial);
            return Err(VoucherError::WrongDevice { index, detail });
        }
        if e.birth_cert_sha256 != birth {
            let detail = "it names another birth certificate (same serial: a cloned or re-made device?)".into();
            return Err(VoucherError::WrongDevice { index, detail });
        }
        if e.created_at > now.saturating_add(MAX_CLOCK_SKEW) {
            return Err(VoucherError::CreatedInFuture { index, created_at: e.created_at, now });
        }
        if let Some((p, _)) = prev {
            check_succession(index, p, e.created_at)?;
        }
        prev = Some((e, bytes));
        signer_spki = &e.next_owner;
    }
    let (last, _) = v.entries.last().ok_or(VoucherError::Empty)?;
    if expiry == Expiry::Checked && now >= last.expires_at {
        return Err(VoucherError::Expired { index: v.entries.len() - 1, expires_at: last.expires_at, at: now });
    }
    Ok(Verified { owner_anchor: last.next_owner.clone(), entries: v.entries.into_iter().map(|(e, _)| e).collect() })
}

/// How an offered voucher relates to the one a device (or an authority) holds: see [`check_extends`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension {
    /// The same voucher, octet for octet: nothing to change.
    Unchanged,
    /// The installed entries, unchanged, followed by this many new ones.
    Extended {
        /// Entries added.
        added: usize,
    },
}

/// Check that `offered` only *extends* `installed`: ownership moves forward, never sideways.
///
/// `verify` alone cannot see a fork: an owner who handed the device on still
/// holds the voucher from before the hand-over and can extend *that* one
/// (to a second key of its own and back), making a longer voucher that chains
/// correctly from the manufacturer to itself. What tells the fork apart is the
/// voucher the device already holds. So the offered voucher is accepted only if
/// - its first N entries are the N installed entries, octet for octet (the
///   encoded COSE_Sign1s, signatures included), else [`VoucherError::Diverges`]
///   naming the first index that differs, or [`VoucherError::Shorter`] if it
///   has fewer entries (a rollback);
/// - each new entry's `created_at` is not before the entry it follows (else
///   [`VoucherError::TimeGoesBack`]) and not more than [`MAX_CLOCK_SKEW`] after
///   `now` (else [`VoucherError::CreatedInFuture`]).
///
/// Pure and cheap (decoding only, no signature checks): the caller still
/// [`verify`]s the offered voucher for the device. Both inputs are bounded by [`Voucher::decode`].
pub fn check_extends(installed: &[u8], offered: &[u8], now: i64) -> Result<Extension, VoucherError> {
    let old = Voucher::decode(installed).map_err(|e| VoucherError::Malformed(format!("the installed voucher: {e}")))?;
    let new = Voucher::decode(offered)?;
    for (index, (o, n)) in old.entries.iter().zip(&new.entries).enumerate() {
        if o.1 != n.1 {
            return Err(VoucherError::Diverges { index, installed: old.entries.len(), offered: new.entries.len() });
        }
    }
    if new.entries.len() < old.entries.len() {
        return Err(VoucherError::Shorter { installed: old.entries.len(), offered: new.entries.len() });
    }
    let added = new.entries.len() - old.entries.len();
    if added == 0 {
        return Ok(Extension::Unchanged);
    }
    for index in old.entries.len()..new.entries.len() {
        let (e, prev) = (&new.entries[index].0, &new.entries[index - 1].0);
        if e.created_at < prev.created_at {
            return Err(VoucherError::TimeGoesBack { index, created_at: e.created_at, before: prev.created_at });
        }
        if e.created_at > now.saturating_add(MAX_CLOCK_SKEW) {
            return Err(VoucherError::CreatedInFuture { index, created_at: e.created_at, now });
        }
    }
    Ok(Extension::Extended { added })
}

/// Why a voucher was refused, or could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VoucherError {
    /// The voucher has no entries.
    Empty,
    /// The octets are not a voucher: bad CBOR or COSE, a field missing or out of
    /// range, too large, or not the deterministic encoding.
    Malformed(String),
    /// An entry does not follow the one before it: one is missing, they are out
    /// of order, or the first does not start at the manufacturer.
    Gap {
        /// The entry (from 0).
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// An entry is for another device.
    WrongDevice {
        /// The entry (from 0).
        index: usize,
        /// What differs.
        detail: String,
    },
    /// An entry is signed by someone other than the owner before it (the
    /// manufacturer, for the first).
    WrongSigner {
        /// The entry (from 0).
        index: usize,
        /// The key id that had to sign.
        expected: KeyId,
        /// The key id that did.
        found: KeyId,
    },
    /// An entry's signature does not verify with the key that had to sign it.
    BadSignature {
        /// The entry (from 0).
        index: usize,
        /// Why.
        detail: String,
    },
    /// The last entry had expired when the voucher was offered for acceptance.
    Expired {
        /// The entry (from 0).
        index: usize,
        /// Its `expires_at`.
        expires_at: i64,
        /// When it was used.
        at: i64,
    },
    /// An entry says it was made further in the future than clock skew explains.
    CreatedInFuture {
        /// The entry (from 0).
        index: usize,
        /// Its `created_at`.
        created_at: i64,
        /// The time it was checked at.
        now: i64,
    },
    /// The offered voucher is not an extension of the one held: entry `index`
    /// differs from the held one (a fork: someone extended an older copy).
    Diverges {
        /// The first entry (from 0) that differs.
        index: usize,
        /// Entries in the held voucher.
        installed: usize,
        /// Entries in the offered one.
        offered: usize,
    },
    /// The offered voucher has fewer entries than the one held (a rollback).
    Shorter {
        /// Entries in the held voucher.
        installed: usize,
        /// Entries in the offered one.
        offered: usize,
    },
    /// A new entry was made before the entry it follows.
    TimeGoesBack {
        /// The entry (from 0).
        index: usize,
        /// Its `created_at`.
        created_at: i64,
        /// The `created_at` of the entry before it.
        before: i64,
    },
    /// [`Voucher::first`] or [`Voucher::extend`] was given something that breaks a rule.
    Invalid(String),
    /// The signer could not sign.
    Signer(String),
}

impl fmt::Display for VoucherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |s: &i64| crate::time::rfc3339(*s);
        match self {
            Self::Empty => f.write_str("the voucher has no entries"),
            Self::Malformed(d) => write!(f, "malformed voucher: {d}"),
            Self::Gap { index, detail } => write!(f, "voucher entry {index} does not follow the chain: {detail}"),
            Self::WrongDevice { index, detail } => {
                write!(f, "voucher entry {index} is for another device: {detail}")
            }
            Self::WrongSigner { index, expected, found } => write!(
                f,
                "voucher entry {index} is signed by key {}, but only the {} (key {}) may sign it",
                kid_hex(found),
                if *index == 0 { "manufacturer" } else { "previous owner" },
                kid_hex(expected)
            ),
            Self::BadSignature { index, detail } => write!(f, "voucher entry {index} has a bad signature: {detail}"),
            Self::Expired { index, expires_at, at } => write!(
                f,
                "voucher entry {index} expired at {} but was used at {}; the owner must issue a fresh one",
                t(expires_at),
                t(at)
            ),
            Self::CreatedInFuture { index, created_at, now } => write!(
                f,
                "voucher entry {index} is made at {}, more than {MAX_CLOCK_SKEW} s after now ({}); check the clocks",
                t(created_at),
                t(now)
            ),
            Self::Diverges { index, installed, offered } => write!(
                f,
                "the voucher ({offered} entries) does not extend the installed one ({installed} entries): \
                 entry {index} differs (a fork from an older copy; ownership only moves forward, \
                 ask the current owner for a voucher that extends the installed one)"
            ),
            Self::Shorter { installed, offered } => write!(
                f,
                "the voucher has {offered} entries, the installed one {installed}: a rollback to an earlier owner"
            ),
            Self::TimeGoesBack { index, created_at, before } => write!(
                f,
                "voucher entry {index} is made at {}, before the entry it follows ({}): time does not go back",
                t(created_at),
                t(before)
            ),
            Self::Invalid(d) => write!(f, "cannot make the voucher entry: {d}"),
            Self::Signer(d) => write!(f, "cannot sign the voucher entry: {d}"),
        }
    }
}

impl std::error::Error for VoucherError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyType, SoftKey};

    const NOW: i64 = 1_750_000_000;
    const DAY: i64 = 86_400;
    const BIRTH: &[u8] = b"birth certificate of SN-1";

    struct World {
        maker: SoftKey,
        owners: Vec<SoftKey>,
        serial: DeviceSerial,
    }

    fn world() -> World {
        World {
            maker: SoftKey::generate(KeyType::EcdsaP256).unwrap(),
            owners: [KeyType::EcdsaP384, KeyType::Ed25519, KeyType::EcdsaP256, KeyType::Ed25519]
                .into_iter()
                .map(|kt| SoftKey::generate(kt).unwrap())
                .collect(),
            serial: DeviceSerial::parse("SN-1").unwrap(),
        }
    }

    /// maker -> owners[0] -> owners[1] -> owners[2], a day apart, each valid 30 days.
    fn chain(w: &World) -> Voucher {
        let o = &w.owners;
        let mut v =
            Voucher::first(&w.maker, &w.serial, BIRTH, o[0].public_key_der(), NOW - 3 * DAY, NOW + 27 * DAY).unwrap();
        v.extend(&o[0], o[1].public_key_der(), NOW - 2 * DAY, NOW + 28 * DAY).unwrap();
        v.extend(&o[1], o[2].public_key_der(), NOW - DAY, NOW + 29 * DAY).unwrap();
        v
    }

    fn check(w: &World, bytes: &[u8], now: i64) -> Result<Verified, VoucherError> {
        verify(bytes, w.maker.public_key_der(), &w.serial, BIRTH, now)
    }

    fn from_entries(entries: Vec<(VoucherEntry, Vec<u8>)>) -> Vec<u8> {
        Voucher { entries }.encode()
    }

    /// Vouchers signed with COSE ML-DSA: an ML-DSA-87 manufacturer, ML-DSA and
    /// P-256 owners; a damaged signature refuses the voucher.
    #[cfg(feature = "aws-lc")]
    #[test]
    fn ml_dsa_makers_and_owners_sign_vouchers() {
        let w = World {
            maker: SoftKey::generate(KeyType::MlDsa87).unwrap(),
            owners: [KeyType::MlDsa44, KeyType::EcdsaP256, KeyType::MlDsa65]
                .into_iter()
                .map(|kt| SoftKey::generate(kt).unwrap())
                .collect(),
            serial: DeviceSerial::parse("SN-1").unwrap(),
        };
        let bytes = chain(&w).encode();
        let ok = check(&w, &bytes, NOW).unwrap();
        assert_eq!(ok.owner_anchor, w.owners[2].public_key_der());
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(check(&w, &bad, NOW).is_err());
    }

    #[test]
    fn a_chain_to_the_manufacturer_is_accepted() {
        let w = world();
        let v = chain(&w);
        let bytes = v.encode();
        let ok = check(&w, &bytes, NOW).unwrap();
        assert_eq!(ok.owner_anchor, w.owners[2].public_key_der());
        assert_eq!(ok.entries.len(), 3);
        assert_eq!(ok.entries[0].prev, GENESIS);
        assert_eq!(Some(ok.entries[1].prev), v.entry_hash(0));
        assert_eq!(ok.entries[0].signer_kid, cose::key_id(w.maker.public_key_der()));
        assert_eq!(ok.entries[2].alg, CoseAlg::EdDsa);
        assert_eq!(ok.entries[0].birth_cert_sha256, cose::sha256(BIRTH));
        let again = Voucher::decode(&bytes).unwrap();
        assert_eq!(again, v);
        assert_eq!(again.encode(), bytes);
        assert_eq!(again.owner(), w.owners[2].public_key_der());
        // A single entry is a voucher too.
        let one = Voucher::first(&w.maker, &w.serial, BIRTH, w.owners[0].public_key_der(), NOW, NOW + DAY).unwrap();
        assert_eq!(check(&w, &one.encode(), NOW).unwrap().owner_anchor, w.owners[0].public_key_der());
    }

    #[test]
    fn empty_is_refused() {
        let w = world();
        assert_eq!(check(&w, &[0x80], NOW).unwrap_err(), VoucherError::Empty);
        assert_eq!(Voucher::decode(&[0x80]).unwrap_err().to_string(), "the voucher has no entries");
    }

    #[test]
    fn a_gap_or_reordering_is_refused() {
        let w = world();
        let e = chain(&w).entries;
        // Entry 1 left out: entry 2's prev does not match entry 0.
        let err = check(&w, &from_entries(vec![e[0].clone(), e[2].clone()]), NOW).unwrap_err();
        assert!(matches!(&err, VoucherError::Gap { index: 1, .. }), "{err}");
        assert!(err.to_string().contains("missing or out of order"), "{err}");
        // Swapped.
        let err = check(&w, &from_entries(vec![e[0].clone(), e[2].clone(), e[1].clone()]), NOW).unwrap_err();
        assert!(matches!(err, VoucherError::Gap { index: 1, .. }), "{err}");
        // The head cut off: the chain does not start at the manufacturer.
        let err = check(&w, &from_entries(vec![e[1].clone(), e[2].clone()]), NOW).unwrap_err();
        assert!(matches!(&err, VoucherError::Gap { index: 0, .. }), "{err}");
        assert!(err.to_string().contains("genesis"), "{err}");
    }

    #[test]
    fn another_device_is_refused() {
        let w = world();
        let bytes = chain(&w).encode();
        let other = DeviceSerial::parse("SN-2").unwrap();
        let err = verify(&bytes, w.maker.public_key_der(), &other, BIRTH, NOW).unwrap_err();
        assert!(matches!(&err, VoucherError::WrongDevice { index: 0, detail } if detail.contains("SN-1")), "{err}");
        let err = verify(&bytes, w.maker.public_key_der(), &w.serial, b"another birth", NOW).unwrap_err();
        assert!(matches!(&err, VoucherError::WrongDevice { index: 0, detail } if detail.contains("birth")), "{err}");
    }

    #[test]
    fn only_the_previous_owner_may_sign() {
        let w = world();
        let bytes = chain(&w).encode();
        // Another manufacturer.
        let stranger = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let err = verify(&bytes, stranger.public_key_der(), &w.serial, BIRTH, NOW).unwrap_err();
        assert!(matches!(err, VoucherError::WrongSigner { index: 0, .. }), "{err}");
        assert!(err.to_string().contains("only the manufacturer"), "{err}");
        // extend by someone who is not the current owner: refused, nothing changed.
        let mut v = chain(&w);
        let before = v.clone();
        let err = v.extend(&w.owners[0], w.owners[3].public_key_der(), NOW, NOW + DAY).unwrap_err();
        assert_eq!(
            err,
            VoucherError::WrongSigner {
                index: 3,
                expected: cose::key_id(w.owners[2].public_key_der()),
                found: cose::key_id(w.owners[0].public_key_der())
            }
        );
        assert_eq!(v, before);
        // A forged entry by a former owner, correctly chained, is refused by verify too.
        let last = &v.entries[2];
        let forged = sign_entry(
            &w.owners[0],
            &w.serial,
            cose::sha256(BIRTH),
            w.owners[3].public_key_der(),
            NOW,
            NOW + DAY,
            cose::sha256(&last.1),
        )
        .unwrap();
        let mut e = v.entries.clone();
        e.push(forged);
        let err = check(&w, &from_entries(e), NOW).unwrap_err();
        assert!(matches!(err, VoucherError::WrongSigner { index: 3, .. }), "{err}");
        assert!(err.to_string().contains("previous owner"), "{err}");
    }

    fn resign(bytes: &[u8], f: impl FnOnce(&mut CoseSign1)) -> Vec<u8> {
        let (_, mut cose) = VoucherEntry::decode(bytes).unwrap();
        f(&mut cose);
        cose.to_tagged_vec().unwrap()
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let w = world();
        let mut e = chain(&w).entries;
        for i in 0..3 {
            let mut bad = e.clone();
            bad[i].1 = resign(&bad[i].1, |c| c.signature[3] ^= 1);
            let err = check(&w, &from_entries(bad), NOW).unwrap_err();
            assert!(matches!(err, VoucherError::BadSignature { index, .. } if index == i), "{err}");
        }
        // Someone claims to be the owner (right kid) but signs with another key.
        let stranger = SoftKey::generate(KeyType::EcdsaP384).unwrap();
        e[1].1 = resign(&e[1].1, |c| {
            c.signature = cose::sign(&stranger, &c.tbs_data(&[])).unwrap().1;
        });
        let err = check(&w, &from_entries(e), NOW).unwrap_err();
        assert!(matches!(err, VoucherError::BadSignature { index: 1, .. }), "{err}");
    }

    /// A voucher is accepted only while its last entry is valid; once
    /// accepted it is checked again without its expiry (`verify_accepted`),
    /// and its owner may hand the device on long after its own entry's date:
    /// the expiry bounded when the voucher could be accepted, not the ownership.
    #[test]
    fn expiry_rules() {
        let w = world();
        let bytes = chain(&w).encode();
        // History may have expired; the last entry may not.
        check(&w, &bytes, NOW + 28 * DAY).unwrap();
        let err = check(&w, &bytes, NOW + 29 * DAY).unwrap_err();
        assert_eq!(err, VoucherError::Expired { index: 2, expires_at: NOW + 29 * DAY, at: NOW + 29 * DAY });
        assert!(err.to_string().contains("fresh one"), "{err}");
        // Accepted before: still the device's owner years later.
        let later = NOW + 3_650 * DAY;
        let v = verify_accepted(&bytes, w.maker.public_key_der(), &w.serial, BIRTH, later).unwrap();
        assert_eq!(v.owner_anchor, w.owners[2].public_key_der());
        // Every other rule still holds for an accepted voucher.
        let err = verify_accepted(&bytes, w.owners[0].public_key_der(), &w.serial, BIRTH, later).unwrap_err();
        assert!(matches!(err, VoucherError::WrongSigner { index: 0, .. }), "{err}");
        let err = verify_accepted(&bytes, w.maker.public_key_der(), &w.serial, b"another birth", later).unwrap_err();
        assert!(matches!(err, VoucherError::WrongDevice { .. }), "{err}");
        // Its owner hands it on after its own entry expired; the new voucher
        // is accepted while its new last entry is valid.
        let mut v = chain(&w);
        v.extend(&w.owners[2], w.owners[3].public_key_der(), later, later + DAY).unwrap();
        assert_eq!(check(&w, &v.encode(), later).unwrap().owner_anchor, w.owners[3].public_key_der());
        let err = check(&w, &v.encode(), later + DAY).unwrap_err();
        assert_eq!(err, VoucherError::Expired { index: 3, expires_at: later + DAY, at: later + DAY });
    }

    #[test]
    fn time_order_and_future_entries_are_refused() {
        let w = world();
        let v = Voucher::first(&w.maker, &w.serial, BIRTH, w.owners[0].public_key_der(), NOW, NOW + DAY).unwrap();
        let mut early = v.clone();
        let err = early.extend(&w.owners[0], w.owners[1].public_key_der(), NOW - 1, NOW + DAY).unwrap_err();
        assert!(matches!(err, VoucherError::Gap { index: 1, .. }), "{err}");
        let err = check(&w, &v.encode(), NOW - MAX_CLOCK_SKEW - 1).unwrap_err();
        assert_eq!(err, VoucherError::CreatedInFuture { index: 0, created_at: NOW, now: NOW - MAX_CLOCK_SKEW - 1 });
        check(&w, &v.encode(), NOW - MAX_CLOCK_SKEW).unwrap();
    }

    #[test]
    fn bad_input_to_first_and_extend() {
        let w = world();
        let err = Voucher::first(&w.maker, &w.serial, BIRTH, b"not a key", NOW, NOW + 1).unwrap_err();
        assert!(matches!(&err, VoucherError::Invalid(d) if d.contains("next owner key")), "{err}");
        let err = Voucher::first(&w.maker, &w.serial, BIRTH, w.owners[0].public_key_der(), NOW, NOW).unwrap_err();
        assert!(matches!(err, VoucherError::Invalid(_)), "{err}");
        let mut v = Voucher::first(&w.maker, &w.serial, BIRTH, w.maker.public_key_der(), NOW, NOW + DAY).unwrap();
        for _ in 1..MAX_ENTRIES {
            v.extend(&w.maker, w.maker.public_key_der(), NOW, NOW + DAY).unwrap();
        }
        let err = v.extend(&w.maker, w.maker.public_key_der(), NOW, NOW + DAY).unwrap_err();
        assert!(matches!(&err, VoucherError::Invalid(d) if d.contains("already has")), "{err}");
        check(&w, &v.encode(), NOW).unwrap();
    }

    #[test]
    fn extends_an_equal_voucher_is_unchanged_and_a_longer_one_extends() {
        let w = world();
        let v = chain(&w);
        let installed = v.encode();
        assert_eq!(check_extends(&installed, &installed, NOW).unwrap(), Extension::Unchanged);
        let mut longer = v.clone();
        longer.extend(&w.owners[2], w.owners[3].public_key_der(), NOW, NOW + DAY).unwrap();
        longer.extend(&w.owners[3], w.owners[0].public_key_der(), NOW, NOW + DAY).unwrap();
        assert_eq!(check_extends(&installed, &longer.encode(), NOW).unwrap(), Extension::Extended { added: 2 });
    }

    #[test]
    fn extends_refuses_a_shorter_voucher() {
        let w = world();
        let v = chain(&w);
        for keep in 1..3 {
            let short = from_entries(v.entries[..keep].to_vec());
            let err = check_extends(&v.encode(), &short, NOW).unwrap_err();
            assert_eq!(err, VoucherError::Shorter { installed: 3, offered: keep });
            assert!(err.to_string().contains("rollback"), "{err}");
        }
    }

    /// For each index i of a 3-entry installed voucher, a voucher that keeps
    /// entries 0..i, replaces entry i and then grows past the installed length:
    /// refused, naming i. At i = 0 the maker re-signs; later, the owner who
    /// signed entry i hands the device elsewhere from a saved copy (the fork).
    #[test]
    fn extends_refuses_divergence_at_every_index() {
        let w = world();
        let v = chain(&w);
        let installed = v.encode();
        let signers: [&SoftKey; 3] = [&w.maker, &w.owners[0], &w.owners[1]];
        for (i, signer) in signers.iter().enumerate() {
            let mut e = v.entries[..i].to_vec();
            let prev = e.last().map(|(_, b)| cose::sha256(b)).unwrap_or(GENESIS);
            let created = NOW - 3 * DAY + i as i64 * DAY;
            // Entry i made again by the one who had to sign it, to another owner (owners[3]).
            let forked = sign_entry(
                *signer,
                &w.serial,
                cose::sha256(BIRTH),
                w.owners[3].public_key_der(),
                created,
                NOW + DAY,
                prev,
            )
            .unwrap();
            e.push(forked);
            let mut fork = Voucher { entries: e };
            // ... and extended until longer than the installed one, back to a past owner.
            while fork.entries.len() <= 3 {
                fork.extend(&w.owners[3], w.owners[3].public_key_der(), NOW, NOW + DAY).unwrap();
            }
            let bytes = fork.encode();
            // The fork is a well-formed chain from the manufacturer: verify alone accepts it.
            check(&w, &bytes, NOW).unwrap();
            let err = check_extends(&installed, &bytes, NOW).unwrap_err();
            assert_eq!(err, VoucherError::Diverges { index: i, installed: 3, offered: 4 }, "fork at {i}");
            assert!(err.to_string().contains(&format!("entry {i} differs")), "{err}");
        }
        // The same content signed again (a fresh ECDSA P-384 signature) is another entry too: octets, not meaning.
        let mut e = v.entries.clone();
        e[1] = sign_entry(
            &w.owners[0],
            &w.serial,
            cose::sha256(BIRTH),
            w.owners[1].public_key_der(),
            NOW - 2 * DAY,
            NOW + 28 * DAY,
            cose::sha256(&e[0].1),
        )
        .unwrap();
        assert_eq!(e[1].0, v.entries[1].0);
        assert_ne!(e[1].1, v.entries[1].1);
        let err = check_extends(&installed, &from_entries(e), NOW).unwrap_err();
        assert!(matches!(err, VoucherError::Diverges { index: 1, .. }), "{err}");
    }

    #[test]
    fn extends_refuses_time_going_back_or_a_future_entry() {
        let w = world();
        let v = chain(&w);
        let installed = v.encode();
        let next = |created_at: i64| {
            let mut e = v.entries.clone();
            let prev = cose::sha256(&e[2].1);
            e.push(
                sign_entry(
                    &w.owners[2],
                    &w.serial,
                    cose::sha256(BIRTH),
                    w.owners[3].public_key_der(),
                    created_at,
                    NOW + DAY,
                    prev,
                )
                .unwrap(),
            );
            from_entries(e)
        };
        // Entry 2 was made at NOW - DAY: a successor dated before it goes back in time.
        let err = check_extends(&installed, &next(NOW - DAY - 1), NOW).unwrap_err();
        assert_eq!(err, VoucherError::TimeGoesBack { index: 3, created_at: NOW - DAY - 1, before: NOW - DAY });
        assert!(err.to_string().contains("time does not go back"), "{err}");
        let err = check_extends(&installed, &next(NOW + MAX_CLOCK_SKEW + 1), NOW).unwrap_err();
        assert!(matches!(err, VoucherError::CreatedInFuture { index: 3, .. }), "{err}");
        assert_eq!(check_extends(&installed, &next(NOW - DAY), NOW).unwrap(), Extension::Extended { added: 1 });
    }

    #[test]
    fn extends_refuses_a_malformed_installed_or_offered_voucher() {
        let w = world();
        let good = chain(&w).encode();
        let err = check_extends(b"junk", &good, NOW).unwrap_err();
        assert!(matches!(&err, VoucherError::Malformed(d) if d.contains("installed")), "{err}");
        assert!(matches!(check_extends(&good, b"junk", NOW).unwrap_err(), VoucherError::Malformed(_)));
    }

    #[test]
    fn a_compressed_owner_key_is_refused() {
        let w = world();
        let p256 = &w.owners[2];
        let compressed = crate::keys::compressed_spki(p256.public_key_der());
        let err = Voucher::first(&w.maker, &w.serial, BIRTH, &compressed, NOW, NOW + DAY).unwrap_err();
        assert!(matches!(&err, VoucherError::Invalid(d) if d.contains("compressed")), "{err}");
        // Hand-built: an entry naming the compressed twin decodes as malformed.
        let forged =
            sign_entry(&w.maker, &w.serial, cose::sha256(BIRTH), p256.public_key_der(), NOW, NOW + DAY, GENESIS)
                .unwrap();
        let (mut entry, _) = forged;
        entry.next_owner = compressed;
        let mut c = CoseSign1 {
            protected: protected(entry.alg, &entry.signer_kid),
            unprotected: Header::default(),
            payload: Some(entry.payload()),
            signature: Vec::new(),
        };
        c.signature = cose::sign(&w.maker, &c.tbs_data(&[])).unwrap().1;
        let bytes = from_entries(vec![(entry, c.to_tagged_vec().unwrap())]);
        let err = check(&w, &bytes, NOW).unwrap_err();
        assert!(matches!(&err, VoucherError::Malformed(d) if d.contains("compressed")), "{err}");
    }

    #[test]
    fn malformed_input_is_refused_never_panics() {
        let w = world();
        let good = chain(&w).encode();
        let malformed = |bytes: &[u8], want: &str| match Voucher::decode(bytes) {
            Err(VoucherError::Malformed(d)) => assert!(d.contains(want), "{d} lacks {want:?}"),
            other => panic!("{other:?}"),
        };
        malformed(b"", "");
        malformed(b"junk", "");
        malformed(&vec![0x80; MAX_VOUCHER_BYTES + 1], "at most");
        malformed(&[0x81, 0x01], "entry 0: expected a byte string");
        malformed(&[0x81, 0x41, 0x00], "entry 0");
        let mut long = good.clone();
        long.push(0);
        malformed(&long, "after the CBOR item");
        for n in 0..good.len() {
            assert!(Voucher::decode(&good[..n]).is_err());
            let mut m = good.clone();
            m[n] ^= 0x24;
            let _ = check(&w, &m, NOW);
        }
        // An entry with an extra header, or tagged as a COSE_Sign.
        let e = chain(&w).entries;
        let mut x = e.clone();
        x[0].1 = resign(&e[0].1, |c| c.unprotected = HeaderBuilder::new().key_id(vec![1]).build());
        malformed(&from_entries(x), "unprotected");
        let (_, cose) = VoucherEntry::decode(&e[0].1).unwrap();
        let wrong_tag = cbor::to_vec(&cbor::Value::Tag(98, Box::new(cose.to_cbor_value().unwrap())));
        let mut x = e.clone();
        x[0].1 = wrong_tag;
        malformed(&from_entries(x), "expected 18");
        // Too many entries.
        let many = cbor::to_vec(&cbor::Value::Array(vec![cbor::Value::Bytes(e[0].1.clone()); MAX_ENTRIES + 1]));
        malformed(&many, "at most 32 allowed");
    }
}
