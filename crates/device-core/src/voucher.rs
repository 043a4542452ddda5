//! Ownership vouchers: the chain of signed hand-overs from the manufacturer
//! to the device's current owner (docs/voucher.md). The rules are the
//! agent's (the core's `voucher::verify` and `voucher::check_extends`).
//!
//! The device checks an offered voucher with [`verify`] (from the
//! manufacturing CA's key in its birth chain, for its serial and birth
//! certificate) and, when it holds one already, with [`check_extends`]: the
//! held entries octet for octet, then new ones, so a past owner's fork from
//! an older copy and a rollback are refused.

use alloc::vec::Vec;
use core::fmt;

use crate::cbor::{self, Value};
use crate::cose::{self, KeyId};
use crate::error::Hex;
use crate::keys::{sha256, KeyType};
use crate::{Error, MAX_CLOCK_SKEW};

/// The content type in each entry's protected header.
pub const CONTENT_TYPE: &str = "application/vnd.iotpki.voucher-entry+cbor";
/// Largest encoded voucher accepted, in octets.
pub const MAX_VOUCHER_BYTES: usize = 64 * 1024;
/// Most entries in one voucher.
pub const MAX_ENTRIES: usize = 32;
/// The `prev` of the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// One hand-over, as decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// SHA-256 of the device's birth certificate (DER).
    pub birth_cert_sha256: [u8; 32],
    /// The next owner's key: DER subjectPublicKeyInfo.
    pub next_owner: Vec<u8>,
    /// When it was made, Unix seconds.
    pub created_at: i64,
    /// The first second it may no longer be used.
    pub expires_at: i64,
    serial: Vec<u8>,
    prev: [u8; 32],
    kid: KeyId,
    alg: KeyType,
    protected: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
    hash: [u8; 32],
}

impl Entry {
    /// The device serial it names.
    pub fn serial(&self) -> &str {
        core::str::from_utf8(&self.serial).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        let Value::Tag(18, inner) = cbor::decode(bytes)? else {
            return Err("an entry is not a tagged COSE_Sign1 (CBOR tag 18)");
        };
        let Value::Array(parts) = *inner else { return Err("an entry is not a COSE_Sign1") };
        let [p, u, payload, sig] = &parts[..] else { return Err("an entry is not a COSE_Sign1") };
        let protected = p.bytes("an entry's protected header is not a byte string")?;
        let (alg, kid) = cose::read_protected(protected, Some(CONTENT_TYPE))?;
        if *u != Value::Map(Vec::new()) {
            return Err("an entry's unprotected header must be empty");
        }
        let payload = payload.bytes("detached payloads are not supported")?;
        let signature = sig.bytes("an entry's signature is not a byte string")?;
        let v = cbor::decode(payload)?;
        let f = v.int_map(6, "an entry's payload is not the map {1..6}")?;
        let serial = f[0].text("serial: expected a text string")?;
        crate::csr::check_serial(serial).map_err(|_| "serial: not a device serial")?;
        let birth_cert_sha256 = f[1].hash("birth certificate hash: expected 32 octets")?;
        let next_owner = f[2].bytes("next owner: expected a byte string")?;
        cose::signer_key(next_owner)?;
        let created_at = f[3].time("created_at: expected Unix seconds")?;
        let expires_at = f[4].time("expires_at: expected Unix seconds")?;
        if expires_at <= created_at {
            return Err("expires_at is not after created_at");
        }
        let prev = f[5].hash("prev: expected 32 octets")?;
        Ok(Self {
            birth_cert_sha256,
            next_owner: next_owner.to_vec(),
            created_at,
            expires_at,
            serial: serial.as_bytes().to_vec(),
            prev,
            kid,
            alg,
            protected: protected.to_vec(),
            payload: payload.to_vec(),
            signature: signature.to_vec(),
            hash: sha256(bytes),
        })
    }
}

/// Decode a voucher (a CBOR array of byte strings, each an entry's COSE_Sign1)
/// without checking signatures or the chain.
pub fn decode(bytes: &[u8]) -> Result<Vec<Entry>, Error> {
    let m = |d| Error::Voucher(VoucherError::Malformed(d));
    if bytes.len() > MAX_VOUCHER_BYTES {
        return Err(m("larger than 64 KiB"));
    }
    let v = cbor::decode(bytes).map_err(m)?;
    let items = v.array("not an array of at most 32 entries", MAX_ENTRIES).map_err(m)?;
    if items.is_empty() {
        return Err(VoucherError::Empty.into());
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(Entry::decode(item.bytes("an entry is not a byte string").map_err(m)?).map_err(m)?);
    }
    Ok(out)
}

/// What a valid voucher tells the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The current owner's key (DER SPKI): the last entry's next owner.
    pub owner: Vec<u8>,
    /// Every entry, first to last.
    pub entries: Vec<Entry>,
}

fn secs(now: u64) -> i64 {
    i64::try_from(now).unwrap_or(i64::MAX)
}

/// Entry `index` (made at `created_at`) may follow `prev` only if made after
/// it (not "while `prev` was valid": an owner may hand the device on after its
/// own entry's date, as in the core).
fn check_succession(index: usize, prev: &Entry, created_at: i64) -> Result<(), VoucherError> {
    if created_at < prev.created_at {
        return Err(VoucherError::Gap { index, detail: "it was made before the entry it extends" });
    }
    Ok(())
}

/// Verify a voucher for this device (`serial`, `birth_cert_der`) from its
/// manufacturer's key `manufacturer_spki` (DER SPKI of the manufacturing CA
/// that issued the birth certificate), at `now`. For each entry in order:
/// it follows the one before ([`VoucherError::Gap`]), the key that had to
/// sign it did ([`VoucherError::WrongSigner`]) and its signature verifies
/// ([`VoucherError::BadSignature`]), it names this device
/// ([`VoucherError::WrongDevice`]), it was not made more than
/// [`MAX_CLOCK_SKEW`] after `now` ([`VoucherError::CreatedInFuture`]) and it
/// was not made before the entry before it; finally `now` is before the
/// last entry's `expires_at` ([`VoucherError::Expired`]).
pub fn verify(
    voucher: &[u8],
    manufacturer_spki: &[u8],
    serial: &str,
    birth_cert_der: &[u8],
    now: u64,
) -> Result<Verified, Error> {
    verify_at(voucher, manufacturer_spki, serial, birth_cert_der, now, true)
}

/// [`verify`] for a voucher accepted before (the one the device installed),
/// checked again: every rule but the last entry's expiry, which bounded only
/// when it could be accepted (as the core's `voucher::verify_accepted`).
pub fn verify_accepted(
    voucher: &[u8],
    manufacturer_spki: &[u8],
    serial: &str,
    birth_cert_der: &[u8],
    now: u64,
) -> Result<Verified, Error> {
    verify_at(voucher, manufacturer_spki, serial, birth_cert_der, now, false)
}

fn verify_at(
    voucher: &[u8],
    manufacturer_spki: &[u8],
    serial: &str,
    birth_cert_der: &[u8],
    now: u64,
    check_expiry: bool,
) -> Result<Verified, Error> {
    let now = secs(now);
    let entries = decode(voucher)?;
    let birth = sha256(birth_cert_der);
    let mut signer: &[u8] = manufacturer_spki;
    for (index, e) in entries.iter().enumerate() {
        let prev = index.checked_sub(1).map(|i| &entries[i]);
        if e.prev != prev.map_or(GENESIS, |p| p.hash) {
            let detail = if index == 0 {
                "the first entry does not start at the manufacturer (its prev is not the genesis value)"
            } else {
                "its prev is not the hash of the entry before (an entry is missing or out of order)"
            };
            return Err(VoucherError::Gap { index, detail }.into());
        }
        let expected = cose::key_id(signer);
        if e.kid != expected {
            return Err(VoucherError::WrongSigner { index, expected, found: e.kid }.into());
        }
        let tbs = cose::sig_structure(&e.protected, None, &e.payload);
        cose::verify(signer, e.alg, &tbs, &e.signature)
            .map_err(|detail| VoucherError::BadSignature { index, detail })?;
        if e.serial != serial.as_bytes() {
            return Err(VoucherError::WrongDevice { index, detail: "it is for another serial" }.into());
        }
        if e.birth_cert_sha256 != birth {
            let detail = "it names another birth certificate (same serial: a cloned or re-made device?)";
            return Err(VoucherError::WrongDevice { index, detail }.into());
        }
        if e.created_at > now.saturating_add(MAX_CLOCK_SKEW) {
            return Err(VoucherError::CreatedInFuture { index, created_at: e.created_at, now }.into());
        }
        if let Some(p) = prev {
            check_succession(index, p, e.created_at)?;
        }
        signer = &e.next_owner;
    }
    let last = entries.last().ok_or(VoucherError::Empty)?;
    if check_expiry && now >= last.expires_at {
        return Err(VoucherError::Expired { index: entries.len() - 1, expires_at: last.expires_at, at: now }.into());
    }
    Ok(Verified { owner: last.next_owner.clone(), entries })
}

/// How an offered voucher relates to the held one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension {
    /// The same voucher: nothing to change.
    Unchanged,
    /// The held entries, then this many new ones.
    Extended {
        /// Entries added.
        added: usize,
    },
}

/// Check that `offered` only extends `installed` (the voucher the device
/// holds): its first entries are the held ones octet for octet
/// ([`VoucherError::Diverges`], [`VoucherError::Shorter`]), and each new
/// entry is made no earlier than the one it follows
/// ([`VoucherError::TimeGoesBack`]) and not more than [`MAX_CLOCK_SKEW`]
/// after `now`. No signatures are checked: [`verify`] the offered one too.
pub fn check_extends(installed: &[u8], offered: &[u8], now: u64) -> Result<Extension, Error> {
    let now = secs(now);
    let old = decode(installed).map_err(|_| VoucherError::Malformed("the installed voucher does not decode"))?;
    let new = decode(offered)?;
    for (index, (o, n)) in old.iter().zip(&new).enumerate() {
        if o.hash != n.hash {
            return Err(VoucherError::Diverges { index, installed: old.len(), offered: new.len() }.into());
        }
    }
    if new.len() < old.len() {
        return Err(VoucherError::Shorter { installed: old.len(), offered: new.len() }.into());
    }
    let added = new.len() - old.len();
    if added == 0 {
        return Ok(Extension::Unchanged);
    }
    for index in old.len()..new.len() {
        let (e, prev) = (&new[index], &new[index - 1]);
        if e.created_at < prev.created_at {
            return Err(VoucherError::TimeGoesBack { index, created_at: e.created_at, before: prev.created_at }.into());
        }
        if e.created_at > now.saturating_add(MAX_CLOCK_SKEW) {
            return Err(VoucherError::CreatedInFuture { index, created_at: e.created_at, now }.into());
        }
    }
    Ok(Extension::Extended { added })
}

/// Why a voucher was refused (the core's `VoucherError`, the same cases).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VoucherError {
    /// The voucher has no entries.
    Empty,
    /// Not a voucher: bad CBOR or COSE, a field missing or out of range, too large, not deterministic.
    Malformed(&'static str),
    /// An entry does not follow the one before it.
    Gap {
        /// The entry (from 0).
        index: usize,
        /// What is wrong.
        detail: &'static str,
    },
    /// An entry is for another device.
    WrongDevice {
        /// The entry (from 0).
        index: usize,
        /// What differs.
        detail: &'static str,
    },
    /// An entry is signed by someone other than the owner before it (the manufacturer, for the first).
    WrongSigner {
        /// The entry (from 0).
        index: usize,
        /// The key id that had to sign.
        expected: [u8; 32],
        /// The key id that did.
        found: [u8; 32],
    },
    /// An entry's signature does not verify.
    BadSignature {
        /// The entry (from 0).
        index: usize,
        /// Why.
        detail: &'static str,
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
    /// An entry is made further in the future than clock skew explains.
    CreatedInFuture {
        /// The entry (from 0).
        index: usize,
        /// Its `created_at`.
        created_at: i64,
        /// The time it was checked at.
        now: i64,
    },
    /// The offered voucher forks from the held one at entry `index`.
    Diverges {
        /// The first entry that differs.
        index: usize,
        /// Entries held.
        installed: usize,
        /// Entries offered.
        offered: usize,
    },
    /// The offered voucher has fewer entries than the held one (a rollback).
    Shorter {
        /// Entries held.
        installed: usize,
        /// Entries offered.
        offered: usize,
    },
    /// A new entry was made before the one it follows.
    TimeGoesBack {
        /// The entry (from 0).
        index: usize,
        /// Its `created_at`.
        created_at: i64,
        /// The `created_at` of the entry before it.
        before: i64,
    },
}

impl fmt::Display for VoucherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the voucher has no entries"),
            Self::Malformed(d) => write!(f, "malformed voucher: {d}"),
            Self::Gap { index, detail } => write!(f, "voucher entry {index} does not follow the chain: {detail}"),
            Self::WrongDevice { index, detail } => write!(f, "voucher entry {index} is for another device: {detail}"),
            Self::WrongSigner { index, expected, found } => write!(
                f,
                "voucher entry {index} is signed by key {}, but only the {} (key {}) may sign it",
                Hex(found),
                if *index == 0 { "manufacturer" } else { "previous owner" },
                Hex(expected)
            ),
            Self::BadSignature { index, detail } => write!(f, "voucher entry {index} has a bad signature: {detail}"),
            Self::Expired { index, expires_at, at } => write!(
                f,
                "voucher entry {index} expired at {expires_at} but was used at {at} (Unix seconds); \
                 the owner must issue a fresh one"
            ),
            Self::CreatedInFuture { index, created_at, now } => write!(
                f,
                "voucher entry {index} is made at {created_at}, more than {MAX_CLOCK_SKEW} s after now ({now}); \
                 check the clocks"
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
                "voucher entry {index} is made at {created_at}, before the entry it follows ({before}): \
                 time does not go back"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for VoucherError {}
