//! The write operations callers queue for the engine's group commit.

use crate::{
    Artifact, AuditEvent, BatchRecord, CertRecord, DeviceRevocation, DeviceRevoked, ExpiringNoted, ExpiringScan,
    HandOver, HandedOver, Issuance, KeyBlock, KeysBlocked, ManufacturerRecord, OwnershipStatus, Precondition,
    StationRecord, SyncOutcome, SyncUpload, TokenRecord,
};

/// One write, as a caller hands it to the engine.
pub(crate) enum Op {
    Issue(Box<Issuance>),
    Token(TokenRecord, AuditEvent),
    Audit(AuditEvent),
    CreateBatch(Box<BatchRecord>, Vec<String>, AuditEvent),
    CloseBatch(String, AuditEvent),
    AddStation(Box<StationRecord>, Box<CertRecord>, AuditEvent),
    RevokeStation(String, i64, AuditEvent),
    Refusal(Option<String>, AuditEvent),
    Delegation(String, String, Box<CertRecord>, AuditEvent),
    Sync(Box<SyncUpload>),
    Revoke(String, u8, i64, AuditEvent),
    RevokeDevice(Box<DeviceRevocation>),
    CrlNumber(String, AuditEvent),
    AddManufacturer(Box<ManufacturerRecord>, AuditEvent),
    Claim(Vec<crate::Claim>, String, i64, AuditEvent),
    Release(String, OwnershipStatus, i64, AuditEvent),
    HandOver(Box<HandOver>),
    Publish(Box<Artifact>, AuditEvent),
    OwnByVoucher(String, String, Box<Artifact>, Box<Precondition>, AuditEvent),
    BlockKeys(Box<KeyBlock>),
    ConsoleLink(Box<crate::ConsoleLink>, AuditEvent),
    UseConsoleLink(String, i64, AuditEvent),
    /// Build the fleet summaries from the registry: when they were never
    /// built (a store migrated to version 11), or always (`true`).
    FleetRebuild(bool),
    /// Webhook name, owner, now, lease until.
    LeaseWebhook(String, String, i64, i64),
    /// Webhook name, owner, seq, lease until.
    AdvanceWebhook(String, String, u64, i64),
    /// Webhook name, owner.
    ReleaseWebhook(String, String),
    NoteExpiring(Box<ExpiringScan>),
    /// Rows for a benchmark, as they are ([`crate::BulkLoad`]).
    BulkLoad(Box<crate::BulkLoad>),
}

/// What a committed operation hands back to its caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Done {
    Unit,
    Synced(SyncOutcome),
    CrlNumber(u64),
    Count(u64),
    DeviceRevoked(DeviceRevoked),
    HandedOver(HandedOver),
    KeysBlocked(KeysBlocked),
    ConsoleLink(crate::ConsoleLink),
    Lease(Option<u64>),
    Expiring(ExpiringNoted),
}
