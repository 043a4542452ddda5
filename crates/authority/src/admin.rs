//! The admin role: admin certificates, and what an authenticated admin may do.
//!
//! An admin is a person or a tool with an `admin` certificate from the
//! operational CA (extKeyUsage clientAuth and id-kp-cmcRA, see
//! [`iotpki_core::profile::ADMIN_ROLE`]), its key made where it is used
//! (`iotpki admin add NAME --out DIR`). The admin API authenticates it by
//! mutual TLS: [`Authority::admin`] checks the chain to our root, validity
//! now, that the certificate is the one recorded, not revoked, of profile
//! `admin` and carrying the role. What it then does goes through the same
//! functions as the CLI, with `admin:NAME` as the actor in the audit chain;
//! reads are audited too, and so is every refusal (`refuse.admin`), except
//! the fleet console's reads (`fleet_overview`, `device_view`, ...: see
//! `fleet.rs`), which a console polls: only their refusals are.

use iotpki_core::asn1::der::asn1::ObjectIdentifier;
use iotpki_core::keys;
use iotpki_core::name::{self, DeviceSerial};
use iotpki_core::profile::{self, CertParams, Profile};
use iotpki_core::serial;
use iotpki_store::{
    AuditEntry, AuditEvent, AuditReport, BatchRecord, CertQuery, CertRecord, CertStatus, Issuance, Store,
};
use rustls_pki_types::CertificateDer;
use spki::der::Decode;

use crate::auth::{Caller, Who};
use crate::error::Refusal;
use crate::factory::{self, NewBatch};
use crate::revocation::{self, Target};
use crate::{Authority, AuthorityError, Credential, BACKDATE_SECS};
use iotpki_core::clock::Clock;

pub use crate::fleet::{CaStatus, DeviceView, DEVICE_AUDIT, TIMELINE_DAYS};

/// id-at-commonName: an admin certificate names its admin there.
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// The organizational unit of every admin certificate's subject.
pub const ADMIN_OU: &str = "Administrators";

/// How long an admin certificate is valid unless asked otherwise.
pub const DEFAULT_VALIDITY_SECS: i64 = 365 * 86_400;

/// Longest lifetime of an admin certificate.
pub const MAX_VALIDITY_SECS: i64 = 2 * 365 * 86_400;

/// Most audit entries or certificates one admin request lists.
pub const MAX_LIST: u32 = 10_000;

/// An admin certificate as the store has it.
#[derive(Clone, Debug)]
pub struct AdminCert {
    /// The admin's name (the certificate's commonName).
    pub name: String,
    /// The certificate's record.
    pub record: CertRecord,
}

/// Every admin certificate in the store, newest first.
pub fn admins(store: &dyn Store) -> Result<Vec<AdminCert>, AuthorityError> {
    let q = CertQuery { profile: Some(Profile::Admin.name().into()), ..Default::default() };
    let mut out = Vec::new();
    for record in store.list_certificates(&q)? {
        let info = profile::cert_info(&record.der)?;
        let name = name::attribute(&info.cert.tbs_certificate.subject, COMMON_NAME).unwrap_or_default();
        out.push(AdminCert { name, record });
    }
    Ok(out)
}

/// Revoke every certificate of admin `name` that is not revoked yet (CLI:
/// `iotpki admin revoke`); returns their serials.
pub fn revoke_admin(
    store: &dyn Store,
    clock: &dyn Clock,
    name: &str,
    reason: u8,
    actor: &str,
) -> Result<Vec<String>, AuthorityError> {
    let good: Vec<String> = admins(store)?
        .into_iter()
        .filter(|a| a.name == name && a.record.status == CertStatus::Good)
        .map(|a| a.record.serial)
        .collect();
    if good.is_empty() {
        return Err(AuthorityError::not_found(format!("admin {name:?} has no certificate that is not revoked")));
    }
    let mut out = Vec::new();
    for s in &good {
        out.extend(revocation::revoke(store, clock, Target::Serial(s), reason, actor)?);
    }
    Ok(out)
}

impl Authority {
    /// Certify a new admin `name` (CLI: `iotpki admin add`). Its key was made
    /// where it will be used; only `spki_der` comes here. Issued by the
    /// default label's CA (the operational CA). Refused while `name` holds a
    /// certificate that is neither revoked nor expired. Returns the
    /// certificate and its issuing chain.
    pub fn add_admin(
        &self,
        admin: &str,
        spki_der: &[u8],
        validity_secs: Option<i64>,
        actor: &str,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), AuthorityError> {
        factory::check_name("admin name", admin)?;
        let validity = validity_secs.unwrap_or(DEFAULT_VALIDITY_SECS);
        if !(60..=MAX_VALIDITY_SECS).contains(&validity) {
            return Err(AuthorityError::malformed(format!(
                "an admin certificate lives between 60 s and {} days",
                MAX_VALIDITY_SECS / 86_400
            )));
        }
        let now = self.clock.now();
        if let Some(a) = admins(self.store.as_ref())?
            .into_iter()
            .find(|a| a.name == admin && a.record.status == CertStatus::Good && a.record.not_after > now)
        {
            return Err(AuthorityError::malformed(format!(
                "admin {admin} exists already (certificate {}); revoke it first (iotpki admin revoke {admin})",
                a.record.serial
            )));
        }
        let ca = &self.label(None)?.ca;
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(spki_der)
            .map_err(|e| AuthorityError::malformed(format!("admin public key: {e}")))?;
        let (sn, sn_hex) = serial::system_random_serial(now)?;
        let subject = name::NameBuilder::default()
            .organization(&self.cfg.organization)?
            .organizational_unit(ADMIN_OU)?
            .common_name(admin)?
            .build();
        let params = CertParams {
            profile: Profile::Admin,
            serial: sn,
            subject,
            spki,
            not_before: now - BACKDATE_SECS,
            not_after: now + validity,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let cert = ca.sign(&params, sn_hex.clone(), None, None, now)?;
        let audit = AuditEvent {
            at: now,
            actor: actor.into(),
            action: "admin.add".into(),
            target: format!("admin:{admin}"),
            detail: format!("cert={sn_hex} key={}", keys::spki_fingerprint(spki_der)),
        };
        let der = cert.der.clone();
        self.store.record_issuance(Issuance { cert, preconditions: vec![], audit })?;
        self.metrics.issued.with(&["admin.add"]).inc();
        Ok((der, vec![ca.cert_der.clone()]))
    }

    /// Authenticate an admin by its TLS client certificate chain. Refusals
    /// (no certificate: 401; not ours, expired, revoked, not an admin's: 403)
    /// are audited as `refuse.admin`.
    pub fn admin(&self, chain: &[CertificateDer<'_>]) -> Result<Admin<'_>, AuthorityError> {
        let r = self.admin_inner(chain);
        let cred = if chain.is_empty() { Credential::None } else { Credential::ClientCert(chain) };
        self.audit_refusal(&r, || crate::auth::actor_of(cred), None, "refuse.admin");
        r
    }

    /// The admin that [`Authority::admit`] found calling (no second
    /// authentication); any other caller is refused (401), audited as `refuse.admin`.
    pub fn admin_of(&self, caller: &Caller) -> Result<Admin<'_>, AuthorityError> {
        match &caller.0 {
            Who::Admin { name, serial } => Ok(Admin {
                authority: self,
                actor: format!("admin:{name}"),
                name: name.clone(),
                serial: serial.clone(),
            }),
            _ => {
                let r = Err(AuthorityError::unauthenticated(
                    "the admin API needs an admin certificate (mutual TLS; iotpki admin add)".into(),
                ));
                self.audit_refusal(&r, || caller.actor(), None, "refuse.admin");
                r
            }
        }
    }

    fn admin_inner(&self, chain: &[CertificateDer<'_>]) -> Result<Admin<'_>, AuthorityError> {
        if chain.is_empty() {
            return Err(AuthorityError::unauthenticated(
                "the admin API needs an admin certificate (mutual TLS; iotpki admin add)".into(),
            ));
        }
        let id = self.authenticate(chain)?;
        if id.record.profile != Profile::Admin.name() || !profile::has_admin_role(&id.cert) {
            return Err(AuthorityError::Refused(Refusal::Client(format!(
                "a {} certificate is not an admin's: the admin API needs an admin certificate",
                id.record.profile
            ))));
        }
        let name = name::attribute(&id.cert.tbs_certificate.subject, COMMON_NAME)
            .ok_or_else(|| AuthorityError::Refused(Refusal::Client("the admin certificate names no admin".into())))?;
        Ok(Admin { authority: self, actor: format!("admin:{name}"), name, serial: id.record.serial })
    }
}

/// An authenticated admin: every method is audited with `admin:NAME` as the
/// actor, refusals as `refuse.admin`.
pub struct Admin<'a> {
    authority: &'a Authority,
    name: String,
    serial: String,
    actor: String,
}

impl std::fmt::Debug for Admin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("name", &self.name).field("serial", &self.serial).finish()
    }
}

impl<'a> Admin<'a> {
    /// `name`, authenticated otherwise than by its certificate on this
    /// request (a console session); `serial` is its good admin certificate.
    pub(crate) fn new(authority: &'a Authority, name: String, serial: String) -> Self {
        Admin { authority, actor: format!("admin:{name}"), name, serial }
    }
}

impl Admin<'_> {
    /// The admin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The names of the certificate templates a token or batch may name
    /// (built-in first, then the config's): what the console's forms offer.
    pub fn template_names(&self) -> Vec<String> {
        self.authority.templates().iter().map(|t| t.name().to_string()).collect()
    }

    /// The serial of the certificate it authenticated with.
    pub fn cert_serial(&self) -> &str {
        &self.serial
    }

    fn store(&self) -> &dyn Store {
        self.authority.store.as_ref()
    }

    /// The authority's time now (Unix seconds).
    pub fn now(&self) -> i64 {
        self.clock().now()
    }

    /// The authority it acts on (the console's reads, `crate::fleet`).
    pub(crate) fn authority(&self) -> &Authority {
        self.authority
    }

    fn clock(&self) -> &dyn Clock {
        self.authority.clock.as_ref()
    }

    /// Audit a read (`admin.ACTION`), or a refusal of any action.
    fn audited<T>(&self, r: Result<T, AuthorityError>, action: &str, target: &str) -> Result<T, AuthorityError> {
        match r {
            Ok(v) => {
                let ev = AuditEvent {
                    at: self.clock().now(),
                    actor: self.actor.clone(),
                    action: format!("admin.{action}"),
                    target: target.into(),
                    detail: String::new(),
                };
                self.store().append_audit(ev)?;
                Ok(v)
            }
            Err(e) => Err(self.refused(e, action, target)),
        }
    }

    /// Audit a refusal of a write (the write audits itself when it succeeds).
    fn refusal_audited<T>(
        &self,
        r: Result<T, AuthorityError>,
        action: &str,
        target: &str,
    ) -> Result<T, AuthorityError> {
        r.map_err(|e| self.refused(e, action, target))
    }

    /// Record a refusal of `action` (also of input refused before any call
    /// here, such as a bad request body) as `refuse.admin`; returns `e`.
    /// Our own failures are not refusals and are not recorded.
    pub fn refused(&self, e: AuthorityError, action: &str, target: &str) -> AuthorityError {
        if !e.is_refusal() {
            return e;
        }
        let ev = AuditEvent {
            at: self.clock().now(),
            actor: self.actor.clone(),
            action: "refuse.admin".into(),
            target: target.into(),
            detail: format!("{action}: {}", e.public_message()),
        };
        match self.store().append_audit(ev) {
            Ok(()) => e,
            Err(se) => se.into(),
        }
    }

    /// Who this admin is (name, certificate serial), audited as `admin.whoami`.
    pub fn whoami(&self) -> Result<(String, String), AuthorityError> {
        self.audited(Ok((self.name.clone(), self.serial.clone())), "whoami", "")
    }

    /// Certificates, newest first (at most [`MAX_LIST`]).
    pub fn certificates(&self, mut q: CertQuery) -> Result<Vec<CertRecord>, AuthorityError> {
        q.limit = Some(q.limit.unwrap_or(MAX_LIST).min(MAX_LIST));
        let target = q.device_serial.as_deref().map(|d| format!("device:{d}")).unwrap_or_default();
        let r = self.store().list_certificates(&q).map_err(AuthorityError::from);
        self.audited(r, "cert.list", &target)
    }

    /// One certificate by serial (hex).
    pub fn certificate(&self, serial: &str) -> Result<CertRecord, AuthorityError> {
        let serial = serial.to_ascii_lowercase();
        let r =
            self.store().certificate(&serial).map_err(AuthorityError::from).and_then(|c| {
                c.ok_or_else(|| AuthorityError::not_found(format!("no certificate with serial {serial}")))
            });
        self.audited(r, "cert.show", &serial)
    }

    /// Revoke a certificate or every certificate of a device (RFC 5280 reason code).
    pub fn revoke(&self, target: Target<'_>, reason: u8) -> Result<Vec<String>, AuthorityError> {
        let what = match target {
            Target::Serial(s) => s.to_ascii_lowercase(),
            Target::Device(d) => format!("device:{d}"),
        };
        let r = match target {
            Target::Serial(s) if self.store().certificate(&s.to_ascii_lowercase())?.is_none() => {
                Err(AuthorityError::not_found(format!("no certificate with serial {s}")))
            }
            _ => revocation::revoke(self.store(), self.clock(), target, reason, &self.actor),
        };
        self.refusal_audited(r, "revoke", &what)
    }

    /// Create a production batch.
    pub fn create_batch(&self, nb: NewBatch) -> Result<BatchRecord, AuthorityError> {
        let target = nb.id.clone().map(|b| format!("batch:{b}")).unwrap_or_default();
        let r = match &nb.template {
            Some(t) => crate::templates::check_known(self.authority.config(), t),
            None => Ok(()),
        }
        .and_then(|()| factory::create_batch(self.store(), self.clock(), nb, &self.actor));
        self.refusal_audited(r, "batch.create", &target)
    }

    /// Close a batch: it issues nothing more.
    pub fn close_batch(&self, id: &str) -> Result<(), AuthorityError> {
        let r = factory::close_batch(self.store(), self.clock(), id, &self.actor);
        self.refusal_audited(r, "batch.close", &format!("batch:{id}"))
    }

    /// Every batch, newest first.
    pub fn batches(&self) -> Result<Vec<BatchRecord>, AuthorityError> {
        let r = self.store().list_batches().map_err(AuthorityError::from);
        self.audited(r, "batch.list", "")
    }

    /// One batch.
    pub fn batch(&self, id: &str) -> Result<BatchRecord, AuthorityError> {
        let r = self
            .store()
            .batch(id)
            .map_err(AuthorityError::from)
            .and_then(|b| b.ok_or_else(|| AuthorityError::not_found(format!("no batch {id}"))));
        self.audited(r, "batch.show", &format!("batch:{id}"))
    }

    /// Audit entries from `from` (sequence number), at most `limit` ([`MAX_LIST`]).
    pub fn audit_entries(&self, from: u64, limit: u32) -> Result<Vec<AuditEntry>, AuthorityError> {
        let r = self.store().audit_entries(from.max(1), limit.min(MAX_LIST)).map_err(AuthorityError::from);
        self.audited(r, "audit.list", "")
    }

    /// Walk the audit chain (before this request's own entry): its report, or where it is broken.
    pub fn verify_audit(&self) -> Result<Result<AuditReport, String>, AuthorityError> {
        let r = match self.store().verify_audit() {
            Ok(rep) => Ok(Ok(rep)),
            Err(e @ iotpki_store::StoreError::AuditBroken { .. }) => Ok(Err(e.to_string())),
            Err(e) => Err(e.into()),
        };
        self.audited(r, "audit.verify", "")
    }

    /// A one-time enrollment token for device `serial`.
    pub fn create_token(&self, serial: &str, ttl_secs: Option<u64>) -> Result<String, AuthorityError> {
        self.create_token_with_template(serial, ttl_secs, None)
    }

    /// [`Admin::create_token`], its enrollment getting certificate
    /// template `template` (docs/templates.md), which the config must have.
    pub fn create_token_with_template(
        &self,
        serial: &str,
        ttl_secs: Option<u64>,
        template: Option<&str>,
    ) -> Result<String, AuthorityError> {
        let r = DeviceSerial::parse(serial)
            .map_err(|e| AuthorityError::malformed(format!("device serial: {e}")))
            .and_then(|d| self.authority.create_token_with_template(&d, ttl_secs, template, &self.actor));
        self.refusal_audited(r, "token.create", &format!("device:{serial}"))
    }

    /// The certificates flagged in batch `id` (overbuild, clones, keys): (serial, flag).
    pub fn batch_flags(&self, id: &str) -> Result<Vec<(String, iotpki_store::Flag)>, AuthorityError> {
        let r = self.store().flagged(id).map_err(AuthorityError::from);
        self.audited(r, "batch.flags", &format!("batch:{id}"))
    }

    /// Claim the devices of a births file (see [`crate::commission::claim_devices`]):
    /// `(listed, new)`.
    pub fn claim_births(&self, births: &str) -> Result<(usize, u64), AuthorityError> {
        let r = crate::commission::claim_devices(self.store(), self.clock(), births, &self.actor);
        self.refusal_audited(r, "device.claim", "")
    }

    /// The blocked keys, oldest first.
    pub fn blocked_keys(&self) -> Result<Vec<iotpki_store::BlockedKey>, AuthorityError> {
        let r = self.store().blocked_keys().map_err(AuthorityError::from);
        self.audited(r, "key.list", "")
    }

    /// Whose key `spki_sha256` is.
    pub fn key(&self, spki_sha256: &str) -> Result<crate::key_registry::KeyInfo, AuthorityError> {
        let r = crate::key_registry::parse_spki_hash(spki_sha256)
            .and_then(|h| crate::key_registry::lookup(self.store(), &h));
        self.audited(r, "key.show", &format!("key:{}", crate::refusals::clean(spki_sha256, 80)))
    }

    /// Block keys by hash (and revoke their certificates when asked).
    pub fn block_keys(
        &self,
        hashes: &[String],
        reason: &str,
        revoke: bool,
    ) -> Result<iotpki_store::KeysBlocked, AuthorityError> {
        let keys: Vec<(String, String)> =
            hashes.iter().map(|h| (h.clone(), format!("admin API, {}", self.name))).collect();
        let r = crate::key_registry::block(self.store(), self.clock(), &keys, &[], reason, revoke, &self.actor);
        self.refusal_audited(r, "key.block", "")
    }
}
