//! iotpki store: the authority's durable state behind one interface.
//!
//! The store holds issued certificates, one-time enrollment tokens and the
//! hash-chained audit log. It knows nothing of X.509: the authority hands it
//! plain records. Every write that the authority relies on (an issuance, a
//! token) is committed durably (fsync) before the call returns.
//!
//! Writes go through [`Certificates::record_issuance`] and friends with explicit
//! [`Precondition`]s that the store checks *inside* the same transaction as the
//! insert, so that concurrent requests (threads or processes) cannot both
//! consume one token or both pass a check that only one may pass.
//!
//! The embedded default is [`sqlite::SqliteStore`]; [`postgres::PgStore`] keeps the
//! same contract on a PostgreSQL database that several authority nodes share.

#![forbid(unsafe_code)]

mod audit;
mod engine;
mod error;
mod fleet;
mod ops;
pub mod postgres;
pub mod sqlite;

#[doc(hidden)]
pub mod conformance;

pub use audit::{audit_hash, AuditEntry, AuditEvent, AuditReport, GENESIS_HASH};
pub use engine::Recording;
pub use error::StoreError;
pub use fleet::{
    day_of, refusals_in, AuditFilter, BatchProgress, BulkLoad, CaRevocations, DayCount, DeviceStates, Fleet,
    FleetOverview, StationActivity, DAY, EXPIRING_SECS, HISTORY_DAYS, MAX_AUDIT_PAGE, MAX_OVERVIEW_DAYS,
};

use std::sync::Arc;

/// Seconds since the Unix epoch (UTC).
pub type UnixTime = i64;

/// Revocation state of a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertStatus {
    /// Not revoked.
    Good,
    /// Revoked at `at` with the RFC 5280 CRLReason code `reason`.
    Revoked {
        /// When the revocation was recorded.
        at: UnixTime,
        /// RFC 5280 CRLReason code (0 = unspecified).
        reason: u8,
    },
}

/// A revoked certificate, as a CRL lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedCert {
    /// Its serial, lowercase hex.
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: UnixTime,
    /// RFC 5280 reason code.
    pub reason: u8,
    /// Its notAfter: once it has passed, the entry may leave the CRL (RFC 5280 3.3).
    pub not_after: UnixTime,
}

/// One issued certificate, as recorded before it is returned to anyone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRecord {
    /// Serial number: lowercase hex of the DER INTEGER content bytes.
    pub serial: String,
    /// Name of the issuing CA (for example `manufacturing`, `operational`).
    pub ca: String,
    /// Name of the certificate profile (for example `device`, `server`).
    pub profile: String,
    /// Subject distinguished name, RFC 4514 string form.
    pub subject: String,
    /// The device serial number from the subject, when the certificate is a device's.
    pub device_serial: Option<String>,
    /// notBefore, Unix seconds.
    pub not_before: UnixTime,
    /// notAfter, Unix seconds.
    pub not_after: UnixTime,
    /// When the authority issued it, Unix seconds.
    pub issued_at: UnixTime,
    /// Lowercase hex SHA-256 of the subjectPublicKeyInfo DER.
    pub spki_sha256: String,
    /// Serial of the certificate this one renews, if any.
    pub replaces: Option<String>,
    /// Serial of the certificate that renewed this one (its successor), if
    /// any: set by the store in the renewal's transaction
    /// ([`Precondition::Supersede`]); ignored when a certificate is recorded.
    /// A device's current certificate is its good one with no successor.
    pub replaced_by: Option<String>,
    /// The certificate template it was issued under (docs/templates.md);
    /// `None`: the built-in profile. Its renewals follow the same template.
    pub template: Option<String>,
    /// Revocation state.
    pub status: CertStatus,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

/// A one-time enrollment token. Only the token's SHA-256 is ever stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// Lowercase hex SHA-256 of the token secret.
    pub token_hash: String,
    /// The device serial the token is bound to.
    pub device_serial: String,
    /// When it was created, Unix seconds.
    pub created_at: UnixTime,
    /// When it stops working, Unix seconds.
    pub expires_at: UnixTime,
    /// When it was used, if it was.
    pub used_at: Option<UnixTime>,
    /// The serial of the certificate it was used for, if it was.
    pub cert_serial: Option<String>,
    /// The certificate template its enrollment gets (docs/templates.md), if it names one.
    pub template: Option<String>,
}

/// A one-time login link of the web console (`iotpki admin console-link`).
/// Only the SHA-256 of the link's secret is ever stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleLink {
    /// Lowercase hex SHA-256 of the link's secret.
    pub link_hash: String,
    /// The admin the session opened with it acts as.
    pub admin: String,
    /// `read` (reads only) or `admin` (reads and actions).
    pub role: String,
    /// When it was made, Unix seconds.
    pub created_at: UnixTime,
    /// When it stops working, Unix seconds.
    pub expires_at: UnixTime,
    /// When it was used, if it was.
    pub used_at: Option<UnixTime>,
}

/// A condition that must hold, checked in the same transaction as the write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Consume a one-time token: it must exist, be bound to `device_serial`,
    /// be unused and not expired at `now`. It is marked used by the write,
    /// and remembers the serial of the certificate it was spent on.
    ConsumeToken {
        /// Lowercase hex SHA-256 of the token.
        token_hash: String,
        /// The serial the request claims.
        device_serial: String,
        /// The authority's clock.
        now: UnixTime,
    },
    /// The certificate `serial` must be recorded and not revoked (re-enrollment).
    CertIsGood {
        /// Serial (lowercase hex) of the certificate.
        serial: String,
    },
    /// A birth certificate on the factory line: the station is active and
    /// authorised for the batch; the batch is open and inside its window at
    /// `now`; its quota is not used up; the serial is on its allowlist and was
    /// never born. The write counts the birth against the quota and records
    /// it (one birth per serial, by constraint).
    Birth {
        /// The batch.
        batch: String,
        /// The station asking.
        station: String,
        /// The device serial.
        device_serial: String,
        /// The authority's clock.
        now: UnixTime,
    },
    /// Renewal: the certificate `serial` must be recorded, good and not renewed
    /// yet. The write revokes it with reason superseded (RFC 5280 reason 4)
    /// at `now` and records the new certificate as its successor
    /// ([`CertRecord::replaced_by`]), in the same transaction: there is never
    /// a moment with two good certificates from one renewal, nor a renewal
    /// recorded without its predecessor superseded.
    Supersede {
        /// Serial (lowercase hex) of the certificate renewed.
        serial: String,
        /// The authority's clock.
        now: UnixTime,
    },
    /// Commissioning: this authority owns the device (claimed or by voucher)
    /// and has neither revoked it nor handed it on.
    Owned {
        /// The device serial.
        device_serial: String,
    },
    /// Commissioning: what [`Precondition::Owned`] checks, and the device's
    /// earlier identities ended: every good certificate of the device but
    /// its births (those of `keep_cas`, or of a station's delegated CA,
    /// `delegated:…`) is revoked with reason superseded (RFC 5280 reason 4)
    /// at `now`, each with a `revoke` audit entry, in the same transaction as
    /// the new certificate's record, whose audit entry names them
    /// (`superseded=SERIAL,…`). Whoever holds the birth key and certificate
    /// (the device, or a copy of its storage) gets one good operational
    /// certificate at a time, never a second one beside the first. A good
    /// certificate of the device for the very key being certified (a retry
    /// whose answer was lost) refuses the write with
    /// [`StoreError::Commissioned`]: that certificate is the answer.
    Commission {
        /// The device serial.
        device_serial: String,
        /// Store names of the CAs whose certificates of the device stay good:
        /// those its birth certificates come from (as [`HandOver::keep_cas`]).
        keep_cas: Vec<String>,
        /// The authority's clock.
        now: UnixTime,
    },
    /// A voucher claim: the voucher this authority holds for the device (the
    /// latest artifact `voucher/SERIAL`) is still the one the offered voucher
    /// was checked to extend, so two claims checked against one held voucher
    /// cannot both be stored (a fork). Refused with
    /// [`StoreError::VoucherChanged`].
    VoucherHeld {
        /// The device serial.
        device_serial: String,
        /// Lowercase hex SHA-256 of the held voucher's octets; `None` when
        /// none was held.
        sha256: Option<String>,
    },
}

/// A signed thing the authority publishes: a trust bundle (kind `bundle`) or
/// an ownership voucher (kind `voucher/SERIAL`). Versions only grow per kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// What it is.
    pub kind: String,
    /// Its version (a bundle's version; a voucher's number of entries).
    pub version: u64,
    /// Its octets.
    pub body: Vec<u8>,
    /// When it was published.
    pub published_at: UnixTime,
}

/// A manufacturer whose manufacturing CA this authority trusts as a birth issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManufacturerRecord {
    /// A name for it (unique).
    pub name: String,
    /// Its manufacturing CA certificate, DER.
    pub cert_der: Vec<u8>,
    /// SHA-256 of the CA's subjectPublicKeyInfo, lowercase hex (unique).
    pub spki_sha256: String,
    /// When it was added.
    pub added_at: UnixTime,
}

/// Whether this authority still owns a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnershipStatus {
    /// Owned: it may commission and renew.
    Owned,
    /// Revoked by this owner: it is refused from now on.
    Revoked,
    /// Handed to the next owner with a voucher.
    Transferred,
}

impl OwnershipStatus {
    /// Its name in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owned => "owned",
            Self::Revoked => "revoked",
            Self::Transferred => "transferred",
        }
    }

    /// From its name in the store.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "owned" => Ok(Self::Owned),
            "revoked" => Ok(Self::Revoked),
            "transferred" => Ok(Self::Transferred),
            other => Err(StoreError::Database(format!("unknown ownership status {other:?}"))),
        }
    }
}

/// This authority's ownership of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// The device serial.
    pub device_serial: String,
    /// How it came: `claim`, or `voucher:<sha256 of the voucher>`.
    pub via: String,
    /// Since when.
    pub since: UnixTime,
    /// Whether it still holds.
    pub status: OwnershipStatus,
    /// When the status last changed away from owned.
    pub changed_at: Option<UnixTime>,
    /// For a claim: SHA-256 (hex) of the subjectPublicKeyInfo of the
    /// manufacturing CA the birth chains to. `None` by voucher (the voucher
    /// binds it) or for a bare-serial claim of an older version (it no longer
    /// commissions).
    pub manufacturer_spki: Option<String>,
    /// For a claim: SHA-256 (hex) of the birth certificate's DER.
    pub birth_sha256: Option<String>,
}

/// One device an operator claims: bound to its birth, not to a bare serial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The device serial.
    pub device_serial: String,
    /// SHA-256 (hex) of the manufacturing CA's subjectPublicKeyInfo.
    pub manufacturer_spki: String,
    /// SHA-256 (hex) of the birth certificate's DER.
    pub birth_sha256: String,
}

/// In a claim's transaction: an existing claim of this serial must name the
/// same birth (a claim never rebinds a device to another birth certificate).
pub(crate) fn check_claim(o: &Ownership, c: &Claim) -> Result<(), StoreError> {
    if o.via != "claim" {
        return Ok(());
    }
    if o.birth_sha256.as_deref() != Some(c.birth_sha256.as_str())
        || o.manufacturer_spki.as_deref() != Some(c.manufacturer_spki.as_str())
    {
        return Err(StoreError::ClaimConflict {
            device: c.device_serial.clone(),
            claimed: o.birth_sha256.clone().unwrap_or_default(),
        });
    }
    Ok(())
}

/// Whether a batch still issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchStatus {
    /// Issues inside its window, up to its quota.
    Open,
    /// Closed by the admin: issues nothing more.
    Closed,
}

/// A device serial's birth: its one birth certificate, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Born {
    /// The birth certificate's serial.
    pub cert_serial: String,
    /// The batch it was born in.
    pub batch: String,
    /// The station that gave it (online), or whose production record brought it (offline).
    pub station: String,
    /// When.
    pub born_at: UnixTime,
}

/// A production batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    /// Its id.
    pub id: String,
    /// The product it makes.
    pub product: String,
    /// Most birth certificates it may issue.
    pub quota: u64,
    /// Birth certificates issued so far.
    pub issued: u64,
    /// Requests refused for it so far.
    pub refused: u64,
    /// Certificates flagged (overbuild, clones) so far.
    pub flagged: u64,
    /// First second it issues in.
    pub valid_from: UnixTime,
    /// First second it no longer issues in.
    pub valid_until: UnixTime,
    /// Open or closed.
    pub status: BatchStatus,
    /// When it was created.
    pub created_at: UnixTime,
    /// Size of its serial allowlist.
    pub allowlist: u64,
    /// What its births are.
    pub profile: BatchProfile,
    /// The certificate template its births get (docs/templates.md), if it names one.
    pub template: Option<String>,
    /// Its births must prove, by TPM credential activation, that their key is
    /// in the TPM whose EK is registered for their serial. Fixed at creation.
    pub tpm_attestation: bool,
}

/// What a batch's births are: which certificate a station's birth gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchProfile {
    /// A birth certificate (IDevID) under the manufacturing CA.
    #[default]
    Device,
    /// A Matter Device Attestation Certificate under the PAI of `vendor_id`,
    /// carrying `vendor_id` and `product_id` (docs/matter.md).
    MatterDac {
        /// The Matter Vendor ID (0x0001..=0xFFF4).
        vendor_id: u16,
        /// The Matter Product ID (0x0001..=0xFFFF).
        product_id: u16,
    },
}

impl BatchProfile {
    /// The profile's name as stored and shown: `device` or `matter-dac`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::MatterDac { .. } => "matter-dac",
        }
    }
}

/// Whether a station may still enroll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StationStatus {
    /// May enroll for its batches.
    Active,
    /// Revoked at this time: refused everywhere, its certificate revoked too.
    Revoked {
        /// When.
        at: UnixTime,
    },
}

/// One entry of a station's production record, as the authority records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncEntry {
    /// The device serial the station gave birth to.
    pub device_serial: String,
    /// The certificate (status Good; the store revokes it if it flags it).
    pub cert: CertRecord,
    /// Its name is outside the delegated CA's permitted names (the serials
    /// signed into the delegation): flagged off-allowlist even when the serial
    /// is on the batch's allowlist.
    pub outside_delegation: bool,
    /// Its key is not in the one canonical form (`iotpki_core::keys::canonical_spki`:
    /// say an EC point compressed): its fingerprint names no key the store
    /// compares, so it could hide a blocked key or another device's. Flagged
    /// non-canonical-key and revoked (keyCompromise), never counted as a birth.
    pub key_not_canonical: bool,
}

/// An upload of production record entries `from_seq..=to_seq`.
#[derive(Clone, Debug)]
pub struct SyncUpload {
    /// The station.
    pub station: String,
    /// The batch.
    pub batch: String,
    /// The first entry's sequence number: one after the last synced.
    pub from_seq: u64,
    /// The hash the first entry links to: the last synced entry's.
    pub from_head: String,
    /// The last entry's sequence number.
    pub to_seq: u64,
    /// The last entry's hash.
    pub to_head: String,
    /// The entries, in order.
    pub entries: Vec<SyncEntry>,
    /// The authority's clock.
    pub now: UnixTime,
    /// The audit event.
    pub audit: AuditEvent,
}

/// Why a certificate from a production record was flagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    /// Its serial is not on the batch's allowlist.
    OffAllowlist,
    /// Its serial was born before (a clone).
    Clone,
    /// The batch's quota was used up (overbuild).
    Overbuild,
    /// Its key is blocked as compromised.
    BlockedKey,
    /// Its key is certified already for another device (a cloned key).
    SharedKey,
    /// Its key is not in its one canonical form (an EC point compressed, say):
    /// another encoding of a key, maybe a blocked one or another device's.
    NonCanonicalKey,
}

impl Flag {
    /// Its name as stored.
    pub fn name(self) -> &'static str {
        match self {
            Self::OffAllowlist => "off-allowlist",
            Self::Clone => "clone",
            Self::Overbuild => "overbuild",
            Self::BlockedKey => "blocked-key",
            Self::SharedKey => "shared-key",
            Self::NonCanonicalKey => "non-canonical-key",
        }
    }
}

/// What a sync recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Certificates counted as births.
    pub born: u64,
    /// Certificates flagged (and revoked), with why.
    pub flagged: Vec<(String, Flag)>,
}

/// A certificate presented to authenticate: [`Certificates::presented`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presented {
    pub record: CertRecord,
    /// The block on the certificate's key ([`Keys::blocked_key`]).
    pub key_blocked: Option<BlockedKey>,
    /// The station whose certificate it is ([`Stations::station_by_cert`]), when asked.
    pub station: Option<StationRecord>,
}

/// A factory station.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StationRecord {
    /// Its name.
    pub name: String,
    /// Serial of its certificate.
    pub cert_serial: String,
    /// The batches it may serve.
    pub batches: Vec<String>,
    /// Active or revoked.
    pub status: StationStatus,
    /// When it was added.
    pub created_at: UnixTime,
}

/// A certificate to record, with the checks that guard it and its audit entry.
#[derive(Clone, Debug)]
pub struct Issuance {
    /// The certificate.
    pub cert: CertRecord,
    /// Conditions checked in the same transaction; any failure writes nothing.
    pub preconditions: Vec<Precondition>,
    /// The audit event appended in the same transaction.
    pub audit: AuditEvent,
}

/// What [`Revocations::revoke_device`] revokes, and how it audits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRevocation {
    /// The device serial.
    pub device_serial: String,
    /// RFC 5280 reason code for every certificate revoked.
    pub reason: u8,
    /// When.
    pub at: UnixTime,
    /// Who asked (audit actor).
    pub actor: String,
    /// Audit detail of each entry (e.g. `reason=keyCompromise`).
    pub detail: String,
}

impl DeviceRevocation {
    /// The audit entry of the device's ownership going to revoked.
    pub(crate) fn device_event(&self) -> AuditEvent {
        self.event("device.revoke", format!("device:{}", self.device_serial))
    }

    /// The audit entry of certificate `serial` being revoked.
    pub(crate) fn cert_event(&self, serial: &str) -> AuditEvent {
        self.event("revoke", serial.to_string())
    }

    fn event(&self, action: &str, target: String) -> AuditEvent {
        AuditEvent {
            at: self.at,
            actor: self.actor.clone(),
            action: action.into(),
            target,
            detail: self.detail.clone(),
        }
    }
}

/// What [`Revocations::revoke_device`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceRevoked {
    /// The certificates revoked (all that were good), by serial.
    pub serials: Vec<String>,
    /// Whether the device's ownership went from owned to revoked.
    pub released: bool,
}

/// A device handed on to its next owner with a voucher: see [`Owners::hand_over`].
#[derive(Clone, Debug)]
pub struct HandOver {
    /// The device serial.
    pub device_serial: String,
    /// The voucher naming the next owner, published as artifact `voucher/SERIAL`
    /// (its version above every one published before).
    pub voucher: Artifact,
    /// Store names of the CAs whose certificates of the device stay good: those
    /// its birth certificate comes from. Certificates of a station's delegated
    /// CA (`delegated:…`) stay good too: they are births.
    pub keep_cas: Vec<String>,
    /// When.
    pub at: UnixTime,
    /// Who asked (audit actor).
    pub actor: String,
    /// The audit detail of the voucher's entry (`voucher.issue`).
    pub detail: String,
    /// The next owner's key fingerprint, for the `device.transfer` entry.
    pub to: String,
}

/// What [`Owners::hand_over`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandedOver {
    /// The device's certificates revoked (affiliationChanged), by serial.
    pub revoked: Vec<String>,
    /// Whether this authority's ownership went from owned to transferred.
    pub released: bool,
}

/// Filter for [`Certificates::list_certificates`].
#[derive(Clone, Debug, Default)]
pub struct CertQuery {
    /// Only certificates for this device serial.
    pub device_serial: Option<String>,
    /// Only certificates from this CA.
    pub ca: Option<String>,
    /// Only certificates whose notAfter is at or before this time.
    pub expiring_before: Option<UnixTime>,
    /// Only certificates of this profile (`device`, `station`, `admin`, ...).
    pub profile: Option<String>,
    /// Only certificates whose notAfter is at or after this time (with
    /// `expiring_before`: "expires in the next N days", not the expired ones).
    pub expiring_after: Option<UnixTime>,
    /// At most this many (newest first); `None` for all.
    pub limit: Option<u32>,
}

/// The order of [`Certificates::list_certificates`]: newest first (issuedAt descending), then by serial.
pub(crate) fn newest_first(rows: &mut [CertRecord]) {
    rows.sort_unstable_by(|a, b| b.issued_at.cmp(&a.issued_at).then_with(|| a.serial.cmp(&b.serial)));
}

/// The authority's durable state, every role in one: what the authority and
/// the CLI hold (`Arc<dyn Store>`). Implemented for anything that implements
/// every role; bring the roles' methods into scope with
/// `use iotpki_store::prelude::*`.
pub trait Store:
    Certificates
    + Tokens
    + AuditLog
    + Batches
    + Stations
    + Revocations
    + Owners
    + Artifacts
    + Keys
    + ConsoleLinks
    + Fleet
    + Events
    + Health
    + Send
    + Sync
{
}

impl<T> Store for T where
    T: Certificates
        + Tokens
        + AuditLog
        + Batches
        + Stations
        + Revocations
        + Owners
        + Artifacts
        + Keys
        + ConsoleLinks
        + Fleet
        + Events
        + Health
        + Send
        + Sync
        + ?Sized
{
}

/// The store's traits, to `use iotpki_store::prelude::*` wherever a store's methods are called.
pub mod prelude {
    pub use crate::{
        Artifacts, AuditLog, Batches, Certificates, ConsoleLinks, Events, Fleet, Health, Keys, Owners, Revocations,
        Stations, Store, Tokens,
    };
}

// Each role below: every method blocks until its work is durable (writes) or read;
// implementations are safe to share between threads.

/// The web console's one-time login links.
pub trait ConsoleLinks {
    /// Record a new link (and `audit`); refused with [`StoreError::TokenExists`] if its hash is taken.
    fn create_console_link(&self, link: ConsoleLink, audit: AuditEvent) -> Result<(), StoreError>;

    /// Spend the link `link_hash` at `now` (and record `audit`), in one
    /// transaction: of callers racing with one link, one gets it. Refused with
    /// [`StoreError::TokenUnknown`], [`StoreError::TokenUsed`] or
    /// [`StoreError::TokenExpired`], recording nothing.
    fn use_console_link(&self, link_hash: &str, now: UnixTime, audit: AuditEvent) -> Result<ConsoleLink, StoreError>;

    /// The link `link_hash`, if there is one (a read: spends nothing).
    fn console_link(&self, link_hash: &str) -> Result<Option<ConsoleLink>, StoreError>;
}

/// Issued certificates: recording one under its preconditions, and reading them.
pub trait Certificates {
    /// Atomically: check every precondition, insert the certificate (its
    /// serial must be new), apply the preconditions' effects (mark a token
    /// used) and append the audit event. Durable when it returns `Ok`.
    /// On any error nothing is written.
    fn record_issuance(&self, issuance: Issuance) -> Result<(), StoreError>;

    /// [`Self::record_issuance`] without holding the calling thread: the
    /// issuance is queued for the next group commit, and the [`Recording`]
    /// resolves (or [`Recording::wait`]s) when that commit has answered:
    /// durable when `Ok`, nothing written when `Err`. For a server, whose
    /// threads sign the next request meanwhile.
    fn record_issuance_queued(&self, issuance: Issuance) -> Recording;

    /// One certificate by serial (lowercase hex).
    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError>;

    /// A certificate presented to authenticate, as one read (one statement, so one
    /// snapshot and, on PostgreSQL, one round trip): its record, the block on its
    /// key if there is one, and with `station` the station holding it, if any.
    fn presented(&self, serial: &str, station: bool) -> Result<Option<Presented>, StoreError>;

    /// Certificates matching `query`, newest first (issuedAt descending, then by serial).
    fn list_certificates(&self, query: &CertQuery) -> Result<Vec<CertRecord>, StoreError>;

    /// Number of certificates recorded.
    fn count_certificates(&self) -> Result<u64, StoreError>;

    /// Number of current certificates (good, not renewed) whose notAfter is
    /// in `[from, until)`: read through the index on notAfter, so its cost
    /// grows with the certificates in the window, not with all of them.
    fn count_expiring(&self, from: UnixTime, until: UnixTime) -> Result<u64, StoreError>;

    /// The latest notAfter of the good (unrevoked) certificates issuing CA
    /// `ca` issued, if it issued any: how long that CA must still be trusted.
    fn latest_not_after(&self, ca: &str) -> Result<Option<UnixTime>, StoreError>;
}

/// How the store is doing, for the metrics: a cheap probe, and what its
/// group commit did so far.
pub trait Health {
    /// Read the schema version the database holds: one small query, which
    /// fails when the database cannot be read.
    fn probe(&self) -> Result<i64, StoreError>;

    /// The group commit's batch sizes and commit latencies since the store was opened.
    fn writer_stats(&self) -> Arc<WriterStats>;
}

/// What the store's group commit did, counted as it happens (a few relaxed
/// atomic adds per transaction, none per read).
#[derive(Debug)]
pub struct WriterStats {
    /// Operations committed per transaction.
    pub batch_size: iotpki_metrics::Histogram,
    /// Seconds per commit: the batch's audit rows and `COMMIT` (SQLite's
    /// fsync of its WAL, PostgreSQL's WAL flush).
    pub commit_seconds: iotpki_metrics::Histogram,
}

impl Default for WriterStats {
    fn default() -> Self {
        Self {
            batch_size: iotpki_metrics::Histogram::new(iotpki_metrics::BATCH_SIZES),
            commit_seconds: iotpki_metrics::Histogram::new(iotpki_metrics::COMMIT_SECONDS),
        }
    }
}

/// One-time enrollment tokens.
pub trait Tokens {
    /// Record a new token and its audit event, atomically and durably.
    fn create_token(&self, token: TokenRecord, audit: AuditEvent) -> Result<(), StoreError>;

    /// Look a token up by its hash (read-only; used for a cheap pre-check).
    fn token(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError>;
}

/// The hash-chained audit log.
pub trait AuditLog {
    /// Append one audit event (refusals, admin actions), durably.
    fn append_audit(&self, event: AuditEvent) -> Result<(), StoreError>;

    /// Audit entries with `seq >= from`, in order, at most `limit`.
    fn audit_entries(&self, from: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;

    /// Walk the whole audit chain and check every link.
    fn verify_audit(&self) -> Result<AuditReport, StoreError>;
}

/// Production batches: quotas, allowlists, refusals and flags.
pub trait Batches {
    /// Create a batch with its serial allowlist (ids and serials must be new to it).
    fn create_batch(&self, batch: BatchRecord, serials: Vec<String>, audit: AuditEvent) -> Result<(), StoreError>;

    /// One batch.
    fn batch(&self, id: &str) -> Result<Option<BatchRecord>, StoreError>;

    /// Every batch, newest first.
    fn list_batches(&self) -> Result<Vec<BatchRecord>, StoreError>;

    /// Close a batch: it issues nothing more.
    fn close_batch(&self, id: &str, audit: AuditEvent) -> Result<(), StoreError>;

    /// Serials on a batch's allowlist that have no birth certificate yet, in order, at most `limit`.
    fn unborn_serials(&self, id: &str, limit: u32) -> Result<Vec<String>, StoreError>;

    /// The birth of `device_serial`, if it has one.
    fn born(&self, device_serial: &str) -> Result<Option<Born>, StoreError>;

    /// Audit a refused request and count it against `batch`, if it names one that exists.
    fn record_refusal(&self, batch: Option<&str>, audit: AuditEvent) -> Result<(), StoreError>;

    /// The certificates flagged in a batch, with why.
    fn flagged(&self, batch: &str) -> Result<Vec<(String, Flag)>, StoreError>;
}

/// Factory stations: their certificates, delegated sub-CAs and production record syncs.
pub trait Stations {
    /// Record a station with its certificate, atomically. Its batches must exist.
    fn add_station(&self, station: StationRecord, cert: CertRecord, audit: AuditEvent) -> Result<(), StoreError>;

    /// One station by name.
    fn station(&self, name: &str) -> Result<Option<StationRecord>, StoreError>;

    /// The station whose certificate has this serial.
    fn station_by_cert(&self, cert_serial: &str) -> Result<Option<StationRecord>, StoreError>;

    /// Revoke a station and its certificate (reason: cessationOfOperation).
    fn revoke_station(&self, name: &str, at: UnixTime, audit: AuditEvent) -> Result<(), StoreError>;

    /// Record a station's delegated sub-CA for a batch (one per station and
    /// batch; the station must be active and authorised for it).
    fn add_delegation(&self, station: &str, batch: &str, cert: CertRecord, audit: AuditEvent)
        -> Result<(), StoreError>;

    /// The serial of a station's delegated sub-CA for a batch.
    fn delegation(&self, station: &str, batch: &str) -> Result<Option<String>, StoreError>;

    /// Where a station's production record for a batch was synced up to:
    /// `(last sequence number, its hash)`, `(0, GENESIS)` before the first sync.
    fn sync_state(&self, station: &str, batch: &str) -> Result<(u64, String), StoreError>;

    /// Record an upload, atomically: it must continue exactly where the last
    /// sync ended (else [`StoreError::SyncOutOfOrder`]). Every certificate is
    /// recorded; one within the batch's rights counts as a birth, the others
    /// are flagged and revoked.
    fn apply_sync(&self, sync: SyncUpload) -> Result<SyncOutcome, StoreError>;
}

/// Revocation: of certificates and devices, and the CRL numbers.
pub trait Revocations {
    /// Revoke a certificate (it must be recorded and good) with an RFC 5280 reason code.
    fn revoke(&self, serial: &str, reason: u8, at: UnixTime, audit: AuditEvent) -> Result<(), StoreError>;

    /// Revoke a device, atomically: every certificate of it that is good now
    /// (each with an audit entry `revoke`), and its ownership when this
    /// authority owns it (audit entry `device.revoke`; it can no longer
    /// commission). One transaction, so that every certificate recorded for
    /// the device before it commits is revoked by it, whatever issues
    /// concurrently. [`StoreError::NothingToRevoke`] (nothing written) when
    /// the device has no good certificate and is not owned.
    fn revoke_device(&self, revocation: DeviceRevocation) -> Result<DeviceRevoked, StoreError>;

    /// A CA's revoked certificates, oldest revocation first.
    fn revoked(&self, ca: &str) -> Result<Vec<RevokedCert>, StoreError>;

    /// How many of a CA's certificates are revoked, and the latest revocation time:
    /// a cheap way to tell whether a CRL is stale.
    fn revocation_mark(&self, ca: &str) -> Result<(u64, UnixTime), StoreError>;

    /// Take the next CRL number of a CA (1, 2, ...), durably, with its audit event.
    fn next_crl_number(&self, ca: &str, audit: AuditEvent) -> Result<u64, StoreError>;
}

/// Ownership: trusted manufacturers, claims, vouchers and releases.
pub trait Owners {
    /// Trust a manufacturer's CA as a birth issuer (name and key must be new).
    fn add_manufacturer(&self, m: ManufacturerRecord, audit: AuditEvent) -> Result<(), StoreError>;

    /// Every trusted manufacturer, by name.
    fn manufacturers(&self) -> Result<Vec<ManufacturerRecord>, StoreError>;

    /// Take ownership of devices, each bound to its birth, atomically with one
    /// audit event. Serials this authority knows already (owned, revoked or
    /// handed on) are left as they are, except a bare-serial claim of an older
    /// version, which is bound to the birth now; a claim naming another birth
    /// than the one a serial is claimed with fails the whole call
    /// ([`StoreError::ClaimConflict`]). Answers how many were new.
    fn claim_devices(&self, claims: Vec<Claim>, via: &str, at: UnixTime, audit: AuditEvent) -> Result<u64, StoreError>;

    /// This authority's ownership of a device, if it ever had it.
    fn ownership(&self, device_serial: &str) -> Result<Option<Ownership>, StoreError>;

    /// Own a device by an ownership voucher, atomically: the ownership (new,
    /// or back from handed on; never a revoked device) and the voucher published
    /// as artifact `voucher/SERIAL`, once `held` holds in the same transaction
    /// (its serial must be `device_serial`).
    fn own_by_voucher(
        &self,
        device_serial: &str,
        via: &str,
        voucher: Artifact,
        held: Precondition,
        audit: AuditEvent,
    ) -> Result<(), StoreError>;

    /// Hand a device on, atomically: publish its voucher (audit
    /// `voucher.issue`), revoke every certificate of it that is good now
    /// except its births (reason affiliationChanged, audit `revoke` each), and
    /// mark its ownership transferred when this authority owns it (audit
    /// `device.transfer`). One transaction, so that a renewal committing
    /// concurrently is either revoked by it or refused after it, and a refusal
    /// (a newer voucher published meanwhile: [`StoreError::NotNewer`]) leaves
    /// everything as it was.
    fn hand_over(&self, h: HandOver) -> Result<HandedOver, StoreError>;

    /// Mark an owned device revoked or transferred (it must be owned now).
    fn release_device(
        &self,
        device_serial: &str,
        status: OwnershipStatus,
        at: UnixTime,
        audit: AuditEvent,
    ) -> Result<(), StoreError>;
}

/// Published artifacts: trust bundles, vouchers, ARLs.
pub trait Artifacts {
    /// Publish an artifact; its version must be above every published one of its kind.
    fn publish_artifact(&self, artifact: Artifact, audit: AuditEvent) -> Result<(), StoreError>;

    /// The latest artifact of a kind.
    fn artifact(&self, kind: &str) -> Result<Option<Artifact>, StoreError>;
}

/// A key no issuance path certifies again (found in a firmware image,
/// leaked, compromised), by the SHA-256 of its subjectPublicKeyInfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedKey {
    /// Lowercase hex SHA-256 of the DER subjectPublicKeyInfo.
    pub spki_sha256: String,
    /// Why (said back to whoever asks for a certificate for it).
    pub reason: String,
    /// Where the key was seen: a firmware image, a file, an imported list.
    pub source: String,
    /// When it was blocked.
    pub blocked_at: UnixTime,
    /// Who blocked it (audit actor).
    pub blocked_by: String,
}

/// What [`Keys::block_keys`] blocks, and whether it revokes their certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyBlock {
    /// The keys, each audited (`key.block`) with its reason and source.
    pub keys: Vec<BlockedKey>,
    /// Revoke every good certificate of these keys (reason keyCompromise),
    /// in the same transaction, each audited (`revoke`).
    pub revoke: bool,
    /// Unused enrollment tokens to withdraw (by hash), each audited
    /// (`token.withdraw`) with `reason`, `at` and `actor`: they enroll
    /// nothing from then on.
    pub tokens: Vec<String>,
    /// Why the tokens are withdrawn.
    pub reason: String,
    /// When.
    pub at: UnixTime,
    /// Who asked (audit actor).
    pub actor: String,
    /// Profiles not revoked here (a CA's certificate is revoked with the
    /// root's revocation list signed again, which the store cannot do):
    /// reported in [`KeysBlocked::spared`].
    pub spare_profiles: Vec<String>,
}

/// What [`Keys::block_keys`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeysBlocked {
    /// Keys blocked now.
    pub blocked: Vec<String>,
    /// Keys that were blocked already (left as they were).
    pub already: Vec<String>,
    /// Certificates revoked, by serial.
    pub revoked: Vec<String>,
    /// Good certificates of these keys left alone: of a spared profile, or
    /// every one when `revoke` is off.
    pub spared: Vec<String>,
    /// The device serials of the tokens withdrawn now (unknown, used and
    /// already withdrawn ones are left as they are).
    pub withdrawn: Vec<String>,
}

/// The key registry: every certificate by its key, and the blocked keys.
/// Every issuance (and every station upload) is checked against both in the
/// transaction that records it: a blocked key is refused, and a key
/// certified for one device (or for no device: a CA, a station, a server) is
/// refused for another (a clone).
pub trait Keys {
    /// Block keys (and revoke their certificates when asked), atomically.
    fn block_keys(&self, block: KeyBlock) -> Result<KeysBlocked, StoreError>;

    /// A blocked key by hash.
    fn blocked_key(&self, spki_sha256: &str) -> Result<Option<BlockedKey>, StoreError>;

    /// Every blocked key, oldest first.
    fn blocked_keys(&self) -> Result<Vec<BlockedKey>, StoreError>;

    /// Every certificate of a key, newest first.
    fn certificates_by_key(&self, spki_sha256: &str) -> Result<Vec<CertRecord>, StoreError>;
}

/// The kinds of event the store records for webhooks (see docs/events.md).
pub const EVENT_KINDS: &[&str] =
    &[EVENT_CERT_REVOKED, EVENT_DEVICE_REVOKED, EVENT_STATION_REVOKED, EVENT_BATCH_FLAGGED, EVENT_CERT_EXPIRING];
/// A certificate was revoked (by serial, with its device, or with its blocked key).
pub const EVENT_CERT_REVOKED: &str = "certificate.revoked";
/// A device was revoked: its certificates and this authority's ownership.
pub const EVENT_DEVICE_REVOKED: &str = "device.revoked";
/// A factory station was revoked, with its certificate.
pub const EVENT_STATION_REVOKED: &str = "station.revoked";
/// A station's production record held a certificate it had no right to
/// (overbuild, clone, off the allowlist, a blocked or shared key): flagged and revoked.
pub const EVENT_BATCH_FLAGGED: &str = "batch.flagged";
/// A current, unrevoked certificate expires within a webhook's threshold.
pub const EVENT_CERT_EXPIRING: &str = "certificate.expiring";

/// One event of the outbox, written in the transaction of the change it reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Its place in the outbox: grows with every event (commit order).
    pub seq: u64,
    /// One of [`EVENT_KINDS`].
    pub kind: String,
    /// What it is about: a certificate serial, a device serial, a station, a batch.
    pub subject: String,
    /// When the change happened, Unix seconds.
    pub created_at: UnixTime,
    /// Its data: a JSON object (see docs/events.md).
    pub data: String,
}

/// What [`Events::note_expiring`] looks at: one page of the certificates
/// whose notAfter falls in `(now, now + within_days]`, in notAfter order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiringScan {
    /// The authority's clock.
    pub now: UnixTime,
    /// The threshold, in days.
    pub within_days: u32,
    /// Resume after this `(not_after, serial)` (the `next` of the page before).
    pub after: Option<(UnixTime, String)>,
    /// Most certificates read for this page.
    pub limit: u32,
}

/// What [`Events::note_expiring`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpiringNoted {
    /// Events recorded now (certificates not announced before at this threshold).
    pub recorded: u64,
    /// Where the next page starts; `None` when this page was the last.
    pub next: Option<(UnixTime, String)>,
}

/// The events outbox and its deliveries: each webhook has a cursor (the last
/// event it was given) and a lease (the one node delivering to it).
pub trait Events {
    /// Events with `seq > after`, in order, at most `limit`.
    fn events_after(&self, after: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError>;

    /// The last event's seq (0 when none).
    fn last_event_seq(&self) -> Result<u64, StoreError>;

    /// A webhook's cursor: the last event it was given, if it has one.
    fn webhook_cursor(&self, name: &str) -> Result<Option<u64>, StoreError>;

    /// Take or keep the lease on webhook `name` for `owner` until `until`:
    /// granted when nobody holds it, `owner` holds it, or the holder's lease
    /// ended before `now`. A webhook seen for the first time starts at the
    /// last event recorded (it is given what happens from now on). Answers
    /// its cursor when granted, `None` when another owner holds it.
    fn lease_webhook(&self, name: &str, owner: &str, now: UnixTime, until: UnixTime)
        -> Result<Option<u64>, StoreError>;

    /// Move webhook `name`'s cursor forward to `seq` (never back) and extend
    /// the lease to `until`, if `owner` holds the lease; else
    /// [`StoreError::WebhookLeaseLost`] and nothing changes.
    fn advance_webhook(&self, name: &str, owner: &str, seq: u64, until: UnixTime) -> Result<(), StoreError>;

    /// Give up the lease (a clean stop): another node may take it at once.
    fn release_webhook(&self, name: &str, owner: &str) -> Result<(), StoreError>;

    /// Record a `certificate.expiring` event for each current (good, not
    /// renewed) certificate of one page of [`ExpiringScan`] that was not
    /// announced at this threshold before, atomically.
    fn note_expiring(&self, scan: ExpiringScan) -> Result<ExpiringNoted, StoreError>;
}
