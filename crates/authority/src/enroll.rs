//! The enrollment pipeline: every way a device gets a certificate, one path.
//!
//! ```text
//!   Caller (authenticated once, by Authority::admit)
//!     └─ Enrollment::of(caller, request)      the way in: token, station birth
//!          │                                   (TPM-attested when its batch says so),
//!          │                                   commissioning, renewal
//!          └─ Authority::authorize(way, label, VerifiedCsr)
//!               ├─ Decision::Resend   a retry whose answer was lost: the
//!               │                     certificate issued before, again
//!               └─ Decision::Issue(Plan)
//!                    └─ Authority::sign(plan): sign, and record (certificate,
//!                       store preconditions and audit entry in one
//!                       transaction) on this thread or queued
//!                       └─ Authority::enroll_recorded: answer once
//!                          recorded; a refusal by the store (a lost race, a
//!                          serial collision) goes to enroll_unrecorded
//! ```
//!
//! [`Authority::enroll`] runs it all on the calling thread. A server runs
//! [`Authority::enroll_queued`] on a blocking thread, awaits the
//! [`Queued`] record without holding that thread (the store's group commit
//! takes every record in flight), and answers from the async worker; only a
//! refusal by the store goes back to a blocking thread.
//!
//! Each way in has its own rules in [`Authority::authorize`]; what is signed
//! is decided there, whole, as a [`Plan`]: the label (CA, key types,
//! validity), subject, key, store preconditions (token consumed, batch
//! rules, ownership, supersession), audit event, and what to do when the
//! store's transaction finds the request lost a race to its own retry. The
//! one [`Authority::sign`] carries out any plan; nothing else signs a
//! device certificate. A new way in (EST-coaps, the next issues) is a new
//! [`Enrollment`] variant and its arm of `authorize`.

use iotpki_core::csr::VerifiedCsr;
use iotpki_core::keys::{self, KeyType};
use iotpki_core::matter::{ProductId, VendorId};
use iotpki_core::name::{self, DeviceSerial};
use iotpki_core::profile::{CertParams, Profile};
use iotpki_core::template::{Context, Template};
use iotpki_core::{pkcs7, serial};
use iotpki_store::{AuditEvent, BatchProfile, CertRecord, CertStatus, Issuance, Precondition, Recording, StoreError};
use spki::der::Encode;
use spki::SubjectPublicKeyInfoOwned;
use std::sync::Arc;
use x509_cert::ext::Extension;
use x509_cert::name::Name;

use crate::auth::{Caller, DeviceIdentity, Station, TokenHolder, Who};
use crate::commission::Birth;
use crate::error::{KeyRefusal, Refusal};
use crate::tokens::{self, TokenState};
use crate::{Authority, AuthorityError, CaKey, Enrolled, Label, BACKDATE_SECS, BIRTH_ONLY_ON_THE_LINE};

/// What the client asked for, besides its certificate request.
#[derive(Clone, Copy, Debug)]
pub enum EnrollRequest<'a> {
    /// EST `simpleenroll`. `batch` (`?batch=`) makes it a station's request
    /// for a birth certificate; `activation` is the answer to a TPM
    /// attestation challenge (its id and the secret the device's TPM
    /// recovered), for a batch that requires attestation ([`attest`](crate::attest)).
    Enroll {
        /// The batch a station enrolls a device of.
        batch: Option<&'a str>,
        /// A TPM challenge's id and recovered secret.
        activation: Option<(&'a str, &'a [u8])>,
    },
    /// EST `simplereenroll`: renewal with the current certificate.
    Reenroll,
}

impl EnrollRequest<'_> {
    /// How a refusal of this request is audited.
    fn refusal_action(&self) -> &'static str {
        match self {
            Self::Enroll { .. } => "refuse.enroll",
            Self::Reenroll => "refuse.reenroll",
        }
    }
}

/// The ways in: how a caller may get a device certificate.
#[derive(Debug)]
pub(crate) enum Enrollment<'a> {
    /// A device with a one-time token (HTTP Basic): a first operational certificate.
    Token(&'a TokenHolder),
    /// A factory station asking, for a device of `batch` on its line, for
    /// the device's birth certificate; with a TPM challenge's answer when the
    /// batch requires attestation.
    StationBirth { station: &'a Station, batch: &'a str, activation: Option<(&'a str, &'a [u8])> },
    /// A device with its birth certificate, owned by this authority: an
    /// operational certificate for a fresh key.
    Commissioning(&'a Birth),
    /// A device renewing its current certificate (`superseded`: renewed
    /// already, with that successor).
    Renewal { current: &'a DeviceIdentity, superseded: Option<&'a str> },
}

impl<'a> Enrollment<'a> {
    /// The way in of `caller` asking `req`, or the refusal of a caller that
    /// has none.
    pub(crate) fn of(caller: &'a Caller, req: EnrollRequest<'a>) -> Result<Self, AuthorityError> {
        match (req, &caller.0) {
            (EnrollRequest::Enroll { batch: Some(batch), activation }, Who::Station(station)) => {
                Ok(Self::StationBirth { station, batch, activation })
            }
            (EnrollRequest::Enroll { batch: Some(_), .. }, _) => Err(AuthorityError::unauthenticated(
                "an enrollment for a batch needs a factory station's certificate (mutual TLS)".into(),
            )),
            (EnrollRequest::Enroll { batch: None, .. }, Who::Token(t)) => Ok(Self::Token(t)),
            (EnrollRequest::Enroll { batch: None, .. }, Who::Birth(b)) => Ok(Self::Commissioning(b)),
            (EnrollRequest::Enroll { batch: None, .. }, _) => Err(AuthorityError::unauthenticated(
                "enrollment needs a one-time token: HTTP Basic with the device serial as user and the token as password"
                    .into(),
            )),
            (EnrollRequest::Reenroll, Who::Certificate { id, superseded }) => {
                Ok(Self::Renewal { current: id, superseded: superseded.as_deref() })
            }
            (EnrollRequest::Reenroll, _) => Err(AuthorityError::unauthenticated(
                "re-enrollment needs the current certificate as the TLS client certificate".into(),
            )),
        }
    }
}

/// What [`Authority::authorize`] decided.
pub(crate) enum Decision {
    /// Sign and record this.
    Issue(Plan),
    /// Send a certificate issued before again (nothing new is signed).
    Resend(Resend),
}

/// Where an issuance's record is committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commit {
    /// On the calling thread, before [`Authority::sign`] returns.
    Here,
    /// Queued for the store's next group commit ([`iotpki_store::Recording`]).
    Queued,
}

/// An enrollment under way ([`Authority::enroll_queued`]).
#[derive(Debug)]
pub enum Started {
    /// Its answer: a certificate sent again, or the refusal (audited).
    Answered(Result<Enrolled, AuthorityError>),
    /// Signed, its record queued: await [`Queued::recording`], then hand
    /// the outcome to [`Authority::enroll_recorded`].
    Queued(Queued),
}

/// A certificate signed, whose record is queued for the store's next group commit.
pub struct Queued {
    plan: Box<Plan>,
    enrolled: Enrolled,
    recording: Recording,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued").field("serial", &self.enrolled.serial).finish_non_exhaustive()
    }
}

impl Queued {
    /// The record's commit: resolves once the store has answered.
    pub fn recording(&mut self) -> &mut Recording {
        &mut self.recording
    }
}

/// A queued record the store refused (nothing of it was written), for
/// [`Authority::enroll_unrecorded`].
pub struct Unrecorded {
    plan: Box<Plan>,
    error: StoreError,
}

impl std::fmt::Debug for Unrecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unrecorded").field("error", &self.error).finish_non_exhaustive()
    }
}

/// Everything one issuance signs and records, decided.
pub(crate) struct Plan {
    /// The label's name, for the audit (and to find it again after a lost race).
    pub(crate) label: String,
    /// The label's CA: the one that signs, unless `signer` says otherwise.
    pub(crate) ca: Arc<CaKey>,
    /// The certificate's profile (its extensions).
    pub(crate) profile: Profile,
    /// Who signs, when not the label's CA: a Matter DAC's PAI.
    pub(crate) signer: Option<Arc<CaKey>>,
    /// The subject the authority writes.
    pub(crate) subject: Name,
    /// The certificate template's extensions, written over the device
    /// profile's (docs/templates.md); none without a template.
    pub(crate) extensions: Vec<Extension>,
    /// The template's name, for the audit.
    pub(crate) template: Option<String>,
    /// The key certified.
    pub(crate) spki: SubjectPublicKeyInfoOwned,
    /// Its type (for the audit).
    pub(crate) key_type: KeyType,
    /// notBefore and notAfter.
    pub(crate) validity: (i64, i64),
    /// When the plan was made (the record's issued_at, the audit's time).
    pub(crate) now: i64,
    /// The device serial the record carries.
    pub(crate) device_serial: String,
    /// The certificate it supersedes (a renewal).
    pub(crate) replaces: Option<String>,
    /// What the store checks in the issuance's transaction.
    pub(crate) preconditions: Vec<Precondition>,
    /// The audit entry's actor and action, and a note for its detail.
    pub(crate) actor: String,
    pub(crate) action: &'static str,
    pub(crate) note: Option<String>,
    /// What a refusal by the store may mean: a race lost to a retry of the
    /// same request, whose certificate is the answer.
    pub(crate) on_race: Race,
}

/// A retry that lost the race to its own first attempt (the client sent the
/// request again before the first answer came) gets that attempt's answer.
#[derive(Clone, Debug)]
pub(crate) enum Race {
    /// The token was spent meanwhile: by a request with the same key?
    Token { device: DeviceSerial, token_hash: String },
    /// The certificate was renewed meanwhile: with the same key?
    Renewal { old: String },
    /// The serial was born already (or, since its birth, its batch's quota
    /// is spent, the batch closed or out of its window): by a request with
    /// the same key, whose birth certificate is the answer? (The device,
    /// batch, station and CA are the plan's own.)
    Birth,
    /// The device was commissioned meanwhile: by a request with the same key,
    /// whose certificate is the answer? (`used` names the birth certificate.)
    Commission { device: DeviceSerial, used: String },
}

impl Race {
    /// Whether the store's refusal `e` may be this race: the token refused
    /// (spent meanwhile), any refusal of a renewal (superseded meanwhile), a
    /// commissioning refused for a key the device holds a certificate for.
    fn follows(&self, e: &AuthorityError) -> bool {
        match self {
            Self::Token { .. } => matches!(e.refusal(), Some(Refusal::Token(_))),
            Self::Renewal { .. } => true,
            Self::Birth => matches!(e.refusal(), Some(Refusal::Batch(_))),
            Self::Commission { .. } => {
                matches!(e.refusal(), Some(Refusal::Certificate(StoreError::Commissioned { .. })))
            }
        }
    }
}

/// A certificate to send again, and the audit entry that says so.
#[derive(Debug)]
pub(crate) struct Resend {
    pub(crate) record: CertRecord,
    pub(crate) audit: AuditEvent,
}

impl Authority {
    /// EST `simpleenroll` or `simplereenroll` for `caller` (from
    /// [`Authority::admit`]) with its verified request `csr`: authorized by
    /// the rules of the caller's way in, issued and recorded, or refused
    /// (refusals audited, a station's counted against its batch).
    pub fn enroll(
        &self,
        label: Option<&str>,
        caller: &Caller,
        req: EnrollRequest<'_>,
        csr: &VerifiedCsr,
    ) -> Result<Enrolled, AuthorityError> {
        match self.start(label, caller, req, csr, Commit::Here) {
            Started::Answered(r) => r,
            Started::Queued(mut q) => {
                let outcome = q.recording.wait();
                self.enroll_recorded(q, outcome).or_else(|u| self.enroll_unrecorded(u, caller, req, csr))
            }
        }
    }

    /// [`Self::enroll`] up to the record: authorized, signed, and its record
    /// queued for the store's next group commit, without waiting for it
    /// (or answered already: a refusal, audited, or a certificate sent again).
    pub fn enroll_queued(
        &self,
        label: Option<&str>,
        caller: &Caller,
        req: EnrollRequest<'_>,
        csr: &VerifiedCsr,
    ) -> Started {
        self.start(label, caller, req, csr, Commit::Queued)
    }

    /// The answer to a queued enrollment once its record's commit answered
    /// `outcome`: the certificate, recorded; or what the store refused, for
    /// [`Self::enroll_unrecorded`]. Does not block.
    pub fn enroll_recorded(&self, q: Queued, outcome: Result<(), StoreError>) -> Result<Enrolled, Unrecorded> {
        match outcome {
            Ok(()) => Ok(self.issued(&q.plan, q.enrolled)),
            Err(error) => Err(Unrecorded { plan: q.plan, error }),
        }
    }

    /// After the store refused a queued enrollment's record: a serial
    /// collision is signed again, a race lost to the request's own retry is
    /// answered with that retry's certificate, anything else is the refusal
    /// (audited). Blocks (the store): the same `caller`, `req` and `csr` as
    /// the enrollment's.
    pub fn enroll_unrecorded(
        &self,
        u: Unrecorded,
        caller: &Caller,
        req: EnrollRequest<'_>,
        csr: &VerifiedCsr,
    ) -> Result<Enrolled, AuthorityError> {
        let r = self.after_unrecorded(u, csr);
        self.refused_request(&r, caller, req);
        r
    }

    /// Authorize, then answer (a refusal, audited; a certificate sent again)
    /// or sign with the record committed as `commit` says.
    fn start(
        &self,
        label: Option<&str>,
        caller: &Caller,
        req: EnrollRequest<'_>,
        csr: &VerifiedCsr,
        commit: Commit,
    ) -> Started {
        let r = Enrollment::of(caller, req).and_then(|way| {
            let label = self.label(label)?;
            match self.authorize(&way, label, csr)? {
                Decision::Resend(r) => self.resend(r).map(|e| Started::Answered(Ok(e))),
                Decision::Issue(plan) => self.sign(plan, commit).map(Started::Queued),
            }
        });
        match r {
            Ok(s) => s,
            Err(e) => {
                let r = Err(e);
                self.refused_request(&r, caller, req);
                Started::Answered(r)
            }
        }
    }

    /// Audit the refusal of `caller`'s request `req` for a reason found
    /// outside the authority (its body is no PKCS#10 request, or its
    /// signature does not verify); returns `e`.
    pub fn refuse(&self, caller: &Caller, req: EnrollRequest<'_>, e: AuthorityError) -> AuthorityError {
        let r: Result<std::convert::Infallible, _> = Err(e);
        self.refused_request(&r, caller, req);
        match r {
            Err(e) => e,
            Ok(never) => match never {},
        }
    }

    fn refused_request<T>(&self, r: &Result<T, AuthorityError>, caller: &Caller, req: EnrollRequest<'_>) {
        // Only an authenticated station's refusals count against its batch:
        // anyone else could inflate the batch's counters.
        let counted = match (req, &caller.0) {
            (EnrollRequest::Enroll { batch: Some(batch), .. }, Who::Station(_)) => Some(batch),
            _ => None,
        };
        // A clone (a key certified for another device) or a blocked key is
        // audited under its own action, so that an operator finds them.
        let action = match r {
            Err(AuthorityError::Refused(Refusal::Key(StoreError::KeyInUse { .. }))) => "refuse.clone",
            Err(AuthorityError::Refused(Refusal::Key(StoreError::KeyBlocked { .. }))) => "refuse.blocked-key",
            _ => req.refusal_action(),
        };
        self.audit_refusal_as(
            r,
            || caller.actor(),
            counted,
            action,
            req.refusal_action().trim_start_matches("refuse."),
        );
    }

    /// What a refused record leads to (see [`Self::enroll_unrecorded`]).
    fn after_unrecorded(&self, u: Unrecorded, csr: &VerifiedCsr) -> Result<Enrolled, AuthorityError> {
        let Unrecorded { mut plan, mut error } = u;
        if matches!(error, StoreError::DuplicateSerial { .. }) {
            // A serial collision (2^-127 odds) is signed again, once, with a fresh serial.
            let mut q = self.sign(*plan, Commit::Here)?;
            match q.recording.wait() {
                Ok(()) => return Ok(self.issued(&q.plan, q.enrolled)),
                Err(e) => (plan, error) = (q.plan, e),
            }
        }
        let e = AuthorityError::from(error);
        if !plan.on_race.follows(&e) {
            return Err(e);
        }
        match self.after_race(&plan, csr)? {
            Some(r) => self.resend(r),
            None => Err(e),
        }
    }

    /// The rules of each way in: a plan for what to sign, a certificate to
    /// send again, or the refusal.
    pub(crate) fn authorize(
        &self,
        way: &Enrollment<'_>,
        label: &Label,
        csr: &VerifiedCsr,
    ) -> Result<Decision, AuthorityError> {
        let now = self.clock.now();
        let plan = match *way {
            Enrollment::Token(t) => {
                if self.is_birth_ca(&label.ca.name) {
                    return Err(AuthorityError::forbidden(format!(
                        "label {} issues birth certificates: {BIRTH_ONLY_ON_THE_LINE}",
                        label.name
                    )));
                }
                if let TokenState::Spent { cert_serial, used_at } = &t.state {
                    return self.token_replay(label, &t.device, cert_serial, *used_at, csr).map(Decision::Resend);
                }
                self.check_key(label, csr.key_type)?;
                check_requested_serial(&csr.subject, t.device.as_str(), "the token")?;
                let template = self.template_for(t.template.as_deref(), label, "the token")?;
                let (subject, extensions) = match &template {
                    None => (name::device_subject(&self.cfg.organization, &t.device)?, vec![]),
                    Some(tp) => self.apply_template(tp, &t.device, None, csr)?,
                };
                PlanFor {
                    subject,
                    extensions,
                    template,
                    device: t.device.to_string(),
                    replaces: None,
                    precondition: Precondition::ConsumeToken {
                        token_hash: t.token_hash.clone(),
                        device_serial: t.device.to_string(),
                        now,
                    },
                    actor: format!("device:{}", t.device),
                    action: "enroll",
                    note: None,
                    on_race: Race::Token { device: t.device.clone(), token_hash: t.token_hash.clone() },
                    matter: None,
                }
            }
            Enrollment::StationBirth { station, batch, activation } => {
                if label.ca.name != self.current_ca(&station.id.record.ca) {
                    return Err(AuthorityError::forbidden(format!(
                        "station enrollments go to a label of CA {} (label {} issues from CA {})",
                        station.id.record.ca, label.name, label.ca.name
                    )));
                }
                // A Matter batch's births are DACs under its vendor's PAI (docs/matter.md).
                let rules = self.batch_rules(batch)?;
                let matter_ids = match rules.as_ref().map(|r| r.profile) {
                    Some(BatchProfile::MatterDac { vendor_id, product_id }) => {
                        if !station.may_make(batch) {
                            return Err(StoreError::StationNotAuthorized {
                                station: station.record.name.clone(),
                                batch: batch.into(),
                            }
                            .into());
                        }
                        Some((VendorId(vendor_id), ProductId(product_id)))
                    }
                    _ => None,
                };
                match matter_ids {
                    // Matter 6.2.2.3: a DAC certifies an EC P-256 key, whatever the label allows.
                    Some(_) if csr.key_type != KeyType::EcdsaP256 => {
                        return Err(iotpki_core::Error::KeyNotAllowed {
                            offered: csr.key_type.to_string(),
                            allowed: "p256 (a Matter DAC certifies a P-256 key: Matter core specification 6.2.2.3)"
                                .into(),
                        }
                        .into())
                    }
                    Some(_) => {}
                    None => self.check_key(label, csr.key_type)?,
                }
                let in_csr = name::serial_numbers(&csr.subject);
                let [serial] = in_csr.as_slice() else {
                    return Err(AuthorityError::malformed(format!(
                        "the device's request must carry exactly one serialNumber (found {})",
                        in_csr.len()
                    )));
                };
                let device = DeviceSerial::parse(serial).map_err(|e| AuthorityError::malformed(e.to_string()))?;
                // A batch's template, else the birth label's (never a Matter batch's: refused at its creation).
                let template = match (&matter_ids, &rules) {
                    (None, Some(r)) => self.template_for(r.template.as_deref(), label, "the batch")?,
                    (None, None) => self.template_for(None, label, "the batch")?,
                    (Some(_), _) => None,
                };
                let mut extensions = vec![];
                let (subject, matter) = match matter_ids {
                    None => match &template {
                        None => (name::device_subject(&self.cfg.organization, &device)?, None),
                        Some(tp) => {
                            let product = rules.as_ref().map(|r| r.product.as_str()).unwrap_or_default();
                            let (s, x) = self.apply_template(tp, &device, Some((batch, product)), csr)?;
                            extensions = x;
                            (s, None)
                        }
                    },
                    Some((vid, pid)) => {
                        let pai = self.matter_pais.get(&vid).ok_or_else(|| {
                            AuthorityError::forbidden(format!(
                                "batch {batch} issues Matter DACs of vendor id {vid}, and this authority has no PAI \
                                 for it loaded: make one (iotpki matter pai --vendor-id {vid}) and restart the server"
                            ))
                        })?;
                        if pai.product_id.is_some_and(|p| p != pid) {
                            return Err(AuthorityError::forbidden(format!(
                                "the PAI of vendor id {vid} is bound to another product than {pid} (batch {batch})"
                            )));
                        }
                        (
                            iotpki_core::matter::dac_subject(&self.cfg.organization, &device, vid, pid)?,
                            Some(pai.ca.clone()),
                        )
                    }
                };
                // A batch that requires TPM attestation: the device proved, through a
                // challenge, that this very key is in the TPM registered for its serial.
                let mut note = None;
                if rules.as_ref().is_some_and(|r| r.tpm_attestation) {
                    if !station.may_make(batch) {
                        return Err(StoreError::StationNotAuthorized {
                            station: station.record.name.clone(),
                            batch: batch.into(),
                        }
                        .into());
                    }
                    let (id, secret) = activation.ok_or_else(|| {
                        AuthorityError::forbidden(format!(
                            "batch {batch} requires TPM attestation and device {device} did not prove its key is in \
                             a TPM (a key in a file or a PKCS#11 token cannot): give it a TPM keystore, with its EK \
                             registered (batch add-ek)"
                        ))
                    })?;
                    let spki = keys::spki_fingerprint(
                        &csr.spki.to_der().map_err(|e| AuthorityError::malformed(e.to_string()))?,
                    );
                    let ek = self.tpm_challenges.check(now, id, secret, batch, device.as_str(), &spki)?;
                    note = Some(format!("tpm-ek={ek}"));
                }
                PlanFor {
                    subject,
                    extensions,
                    template,
                    device: device.to_string(),
                    replaces: None,
                    precondition: Precondition::Birth {
                        batch: batch.to_string(),
                        station: station.record.name.clone(),
                        device_serial: device.to_string(),
                        now,
                    },
                    actor: format!("station:{}", station.record.name),
                    action: "birth",
                    note,
                    on_race: Race::Birth,
                    matter,
                }
            }
            Enrollment::Commissioning(birth) => {
                if self.is_birth_ca(&label.ca.name) {
                    return Err(AuthorityError::forbidden(format!(
                        "label {} issues birth certificates: commissioning gives an operational certificate \
                         (use an operational label); {BIRTH_ONLY_ON_THE_LINE}",
                        label.name
                    )));
                }
                // Cheap refusal before any signature work; the transaction checks again.
                self.check_owned(birth)?;
                self.check_key(label, csr.key_type)?;
                check_requested_serial(&csr.subject, birth.device.as_str(), "the birth certificate")?;
                if keys::spki_fingerprint(&csr.spki_der) == birth.spki_sha256 {
                    return Err(Refusal::KeyPolicy(KeyRefusal::BirthKey).into());
                }
                // Named in the audit entry of what it gets: which birth certificate was used.
                let used = format!("birth={} birth_sha256={}", birth.cert_serial, birth.birth_sha256);
                // The request is one this device made already (the same key), whose
                // answer was lost: that certificate again, nothing revoked.
                if let Some(r) = self.commission_replay(&birth.device, &used, label, csr)? {
                    return Ok(Decision::Resend(r));
                }
                let template = self.template_for(None, label, "the label")?;
                let (subject, extensions) = match &template {
                    None => (name::device_subject(&self.cfg.organization, &birth.device)?, vec![]),
                    Some(tp) => self.apply_template(tp, &birth.device, None, csr)?,
                };
                PlanFor {
                    subject,
                    extensions,
                    template,
                    device: birth.device.to_string(),
                    replaces: None,
                    // Whoever holds the birth key gets one good operational certificate:
                    // the device's earlier ones are revoked as this one is recorded.
                    precondition: Precondition::Commission {
                        device_serial: birth.device.to_string(),
                        keep_cas: self.birth_cas(),
                        now,
                    },
                    actor: format!("device:{}", birth.device),
                    action: "commission",
                    note: Some(used.clone()),
                    on_race: Race::Commission { device: birth.device.clone(), used },
                    matter: None,
                }
            }
            Enrollment::Renewal { current, superseded } => {
                if current.record.profile != Profile::Device.name() {
                    return Err(AuthorityError::Refused(Refusal::Renewal(format!(
                        "a {} certificate cannot re-enroll",
                        current.record.profile
                    ))));
                }
                if self.is_birth_ca(&current.record.ca) || self.is_birth_ca(&label.ca.name) {
                    return Err(AuthorityError::Refused(Refusal::Renewal(format!(
                        "a birth certificate is never renewed and nothing renews into one: {BIRTH_ONLY_ON_THE_LINE}"
                    ))));
                }
                if self.current_ca(&current.record.ca) != label.ca.name {
                    return Err(AuthorityError::Refused(Refusal::Renewal(format!(
                        "the current certificate is from CA {}; label {} issues from CA {}",
                        current.record.ca, label.name, label.ca.name
                    ))));
                }
                self.check_key(label, csr.key_type)?;
                // The new certificate gets the current one's subject (and, like every
                // device certificate, no subjectAltName), whatever the request says
                // besides: RFC 7030 4.2.2 asks clients to repeat them, and some send only
                // a CN or a DNS name. A request that names another serial is refused.
                let current_subject = &current.cert.tbs_certificate.subject;
                let bound = name::serial_numbers(current_subject);
                let [current_serial] = bound.as_slice() else {
                    return Err(AuthorityError::Refused(Refusal::Renewal(format!(
                        "the current certificate carries {} serialNumber attributes, not one: it cannot re-enroll; \
                         enroll with a new token",
                        bound.len()
                    ))));
                };
                check_requested_serial(&csr.subject, current_serial, "the current certificate")?;
                // The request is one this certificate could make: if it was renewed
                // already, the answer is that renewal again (same key) or a refusal.
                if let Some(next) = superseded {
                    return self.renewal_replay(&current.record, next, csr).map(Decision::Resend);
                }
                // A renewal is the same certificate for a new key: the template it
                // was issued under gives the key types and the lifetime, and its
                // extensions are carried over. (A certificate recorded before store
                // version 15 names none: the label's template, as it was then.)
                let template = match current.record.template.as_deref() {
                    None => self.template_for(None, label, "the label")?,
                    Some(n) => Some(self.templates.get(n).cloned().ok_or_else(|| {
                        AuthorityError::forbidden(format!(
                            "certificate {} was issued under certificate template {n}, which this authority's \
                             config no longer has: add it back (docs/templates.md) and restart, or enroll the \
                             device again with a token",
                            current.record.serial
                        ))
                    })?),
                };
                if let Some(tp) = &template {
                    tp.check_key(csr.key_type)?;
                }
                let extensions = carried_extensions(&current.cert);
                let old = current.record.serial.clone();
                let device = current.record.device_serial.clone().unwrap_or_default();
                PlanFor {
                    subject: current_subject.clone(),
                    extensions,
                    template,
                    device: device.clone(),
                    replaces: Some(old.clone()),
                    precondition: Precondition::Supersede { serial: old.clone(), now },
                    actor: format!("device:{device}"),
                    action: "reenroll",
                    note: None,
                    on_race: Race::Renewal { old },
                    matter: None,
                }
            }
        };
        Ok(Decision::Issue(self.plan(label, csr, now, plan)))
    }

    /// A plan for `csr` under `label` at `now`: the label's validity, a
    /// device certificate.
    fn plan(&self, label: &Label, csr: &VerifiedCsr, now: i64, f: PlanFor) -> Plan {
        let validity = f.template.as_ref().and_then(|t| t.lifetime_secs()).or(label.validity_secs);
        let not_after = match (&f.matter, validity) {
            // A DAC lives as long as its PAI (Matter 6.2.2.3: within the PAI's validity).
            (Some(pai), _) => pai.not_after,
            (None, Some(v)) => now + v,
            (None, None) => label.ca.not_after,
        };
        Plan {
            label: label.name.clone(),
            ca: Arc::clone(&label.ca),
            profile: if f.matter.is_some() { Profile::MatterDac } else { Profile::Device },
            signer: f.matter,
            subject: f.subject,
            extensions: f.extensions,
            template: f.template.map(|t| t.name().to_string()),
            spki: csr.spki.clone(),
            key_type: csr.key_type,
            validity: (now - BACKDATE_SECS, not_after),
            now,
            device_serial: f.device,
            replaces: f.replaces,
            preconditions: vec![f.precondition],
            actor: f.actor,
            action: f.action,
            note: f.note,
            on_race: f.on_race,
        }
    }

    /// Carry out a plan: sign, and record the certificate with its
    /// preconditions and audit entry in one transaction, committed as
    /// `commit` says; the answer waits for the record. The one place a device
    /// certificate is signed.
    fn sign(&self, plan: Plan, commit: Commit) -> Result<Queued, AuthorityError> {
        // The one gate: under the birth CA, only a station's birth (whose
        // transaction checks the batch's rules) is ever signed.
        let is_birth = plan.preconditions.iter().any(|p| matches!(p, Precondition::Birth { .. }));
        if self.is_birth_ca(&plan.ca.name) != is_birth {
            return Err(AuthorityError::forbidden(if is_birth {
                format!("label {} does not issue birth certificates", plan.label)
            } else {
                format!("label {} issues birth certificates: {BIRTH_ONLY_ON_THE_LINE}", plan.label)
            }));
        }
        let now = plan.now;
        let ca: &CaKey = plan.signer.as_deref().unwrap_or(&plan.ca);
        let mut detail = match &plan.replaces {
            Some(old) => format!("label={} key={} replaces={old}", plan.label, plan.key_type),
            None => format!("label={} key={}", plan.label, plan.key_type),
        };
        if let Some(note) = &plan.note {
            detail = format!("{detail} {note}");
        }
        if plan.signer.is_some() {
            detail = format!("{detail} profile={} issuer={}", plan.profile.name(), ca.name);
        }
        if let Some(t) = &plan.template {
            detail = format!("{detail} template={t}");
        }
        let (sn, sn_hex) = serial::system_random_serial(now)?;
        let params = CertParams {
            profile: plan.profile,
            serial: sn,
            subject: plan.subject.clone(),
            spki: plan.spki.clone(),
            not_before: plan.validity.0,
            not_after: plan.validity.1,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let mut record = ca.sign_templated(
            &params,
            &plan.extensions,
            sn_hex.clone(),
            Some(plan.device_serial.clone()),
            plan.replaces.clone(),
            now,
        )?;
        // Recorded, so its renewals follow it: a device certificate without
        // a configured template was shaped by the built-in `device` one.
        record.template = plan.template.clone().or_else(|| plan.signer.is_none().then(|| "device".to_string()));
        let pkcs7 = pkcs7::certs_only(&[&record.der])?;
        let enrolled = Enrolled { cert_der: record.der.clone(), serial: sn_hex.clone(), pkcs7 };
        let audit =
            AuditEvent { at: now, actor: plan.actor.clone(), action: plan.action.into(), target: sn_hex, detail };
        let issuance = Issuance { cert: record, preconditions: plan.preconditions.clone(), audit };
        let recording = match commit {
            Commit::Here => Recording::answered(self.store.record_issuance(issuance)),
            Commit::Queued => self.store.record_issuance_queued(issuance),
        };
        Ok(Queued { plan: Box::new(plan), enrolled, recording })
    }

    /// A certificate of `plan`, recorded: counted, logged, answered.
    fn issued(&self, plan: &Plan, enrolled: Enrolled) -> Enrolled {
        self.metrics.issued.with(&[plan.action]).inc();
        tracing::info!(serial = %enrolled.serial, action = plan.action, label = %plan.label, "issued");
        enrolled
    }

    /// After the store refused a plan: was it a race lost to a retry of the
    /// same request (same key), whose certificate is then the answer?
    fn after_race(&self, plan: &Plan, csr: &VerifiedCsr) -> Result<Option<Resend>, AuthorityError> {
        match &plan.on_race {
            // Lost a race for this token to a request with the same key (a client retrying
            // before its first answer came): answer with the certificate that request got.
            Race::Token { device, token_hash } => {
                match tokens::precheck(self.store.as_ref(), token_hash, device, self.clock.now())? {
                    TokenState::Spent { cert_serial, used_at } => {
                        self.token_replay(self.label(Some(&plan.label))?, device, &cert_serial, used_at, csr).map(Some)
                    }
                    TokenState::Fresh => Ok(None),
                }
            }
            // Lost a race to another renewal of the same certificate (a client
            // retrying before its first answer came): the same key gets that one.
            Race::Renewal { old } => {
                match self.store.certificate(old)?.and_then(|r| r.replaced_by.clone().map(|n| (r, n))) {
                    Some((rec, next)) => self.renewal_replay(&rec, &next, csr).map(Some),
                    None => Ok(None),
                }
            }
            Race::Birth => self.birth_replay(plan, csr),
            Race::Commission { device, used } => {
                self.commission_replay(device, used, self.label(Some(&plan.label))?, csr)
            }
        }
    }

    /// A commissioning with a key the device holds a good operational
    /// certificate of this label's CA for already: a client that sent the same
    /// request again (its first answer lost, a connection cut after the commit),
    /// and the answer is that certificate again. (`iotpki agent commission`
    /// makes a new key each time: its retry is a new commissioning, which
    /// supersedes the certificate whose answer it lost.) Nothing new is issued
    /// and nothing revoked: the device does not end its own identity by
    /// asking again. Any other key is a new commissioning, which supersedes it.
    fn commission_replay(
        &self,
        device: &DeviceSerial,
        used: &str,
        label: &Label,
        req: &VerifiedCsr,
    ) -> Result<Option<Resend>, AuthorityError> {
        let spki = keys::spki_fingerprint(&req.spki_der);
        let births = self.birth_cas();
        let found = self.store.certificates_by_key(&spki)?.into_iter().find(|r| {
            r.device_serial.as_deref() == Some(device.as_str())
                && r.status == CertStatus::Good
                && !births.contains(&r.ca)
                && !r.ca.starts_with("delegated:")
                && self.current_ca(&r.ca) == label.ca.name
        });
        let Some(rec) = found else { return Ok(None) };
        // A key blocked since gets no certificate, not even one issued before.
        self.refuse_blocked_key(&rec.spki_sha256)?;
        let audit = AuditEvent {
            at: self.clock.now(),
            actor: format!("device:{device}"),
            action: "commission.replay".into(),
            target: rec.serial.clone(),
            detail: format!("{used} same key: the certificate issued before is sent again"),
        };
        Ok(Some(Resend { record: rec, audit }))
    }

    /// A station's birth refused for a serial born already (or, born, for a
    /// batch whose quota that birth spent, or closed or out of its window
    /// since): if the serial was born in the same batch, by the CA its births
    /// come from, and the request proves possession of the very key its
    /// birth certificate was issued for, the answer is that certificate
    /// again. Its first answer was lost (a connection cut after the commit, a
    /// database that failed over before acknowledging it, a station
    /// restarted), and the device, which kept its key, would otherwise never
    /// hold the one birth its serial gets. Nothing new is issued or counted.
    /// Any other key or batch, a revoked birth certificate or a blocked key
    /// keeps the refusal.
    fn birth_replay(&self, plan: &Plan, req: &VerifiedCsr) -> Result<Option<Resend>, AuthorityError> {
        let Some((batch, station, device)) = plan.preconditions.iter().find_map(|p| match p {
            Precondition::Birth { batch, station, device_serial, .. } => Some((batch, station, device_serial)),
            _ => None,
        }) else {
            return Ok(None);
        };
        let Some(born) = self.store.born(device)? else { return Ok(None) };
        if &born.batch != batch {
            return Ok(None);
        }
        let Some(rec) = self.store.certificate(&born.cert_serial)? else { return Ok(None) };
        let spki = keys::spki_fingerprint(&req.spki_der);
        // The CA that signs the batch's births (a Matter batch's PAI), or its successor.
        let ca = &plan.signer.as_deref().unwrap_or(&plan.ca).name;
        if rec.spki_sha256 != spki
            || rec.device_serial.as_deref() != Some(device.as_str())
            || self.current_ca(&rec.ca) != self.current_ca(ca)
            || matches!(rec.status, CertStatus::Revoked { .. })
            || self.store.blocked_key(&spki)?.is_some()
        {
            return Ok(None);
        }
        let audit = AuditEvent {
            at: self.clock.now(),
            actor: format!("station:{station}"),
            action: "birth.replay".into(),
            target: rec.serial.clone(),
            detail: format!(
                "device={device} batch={batch} same key: the birth certificate issued before (by station {}) is \
                 sent again",
                born.station
            ),
        };
        Ok(Some(Resend { record: rec, audit }))
    }

    /// Send a certificate issued before again, audited.
    fn resend(&self, r: Resend) -> Result<Enrolled, AuthorityError> {
        self.store.append_audit(r.audit)?;
        let pkcs7 = pkcs7::certs_only(&[&r.record.der])?;
        Ok(Enrolled { cert_der: r.record.der, serial: r.record.serial, pkcs7 })
    }

    /// A retry with a spent token: if the request proves possession of the
    /// very key the token's certificate was issued for (same device, same
    /// label), the answer is that certificate again. Nothing new is issued;
    /// an answer lost on the way (network, power cut) is not a lost identity.
    fn token_replay(
        &self,
        label: &Label,
        device: &DeviceSerial,
        cert_serial: &str,
        used_at: i64,
        req: &VerifiedCsr,
    ) -> Result<Resend, AuthorityError> {
        let used = || AuthorityError::from(StoreError::TokenUsed { used_at });
        let Some(rec) = self.store.certificate(cert_serial)? else { return Err(used()) };
        if rec.spki_sha256 != keys::spki_fingerprint(&req.spki_der)
            || self.current_ca(&rec.ca) != label.ca.name
            || rec.device_serial.as_deref() != Some(device.as_str())
        {
            return Err(used());
        }
        if let CertStatus::Revoked { .. } = rec.status {
            return Err(AuthorityError::forbidden(format!(
                "enrollment token already used for certificate {cert_serial}, which is revoked: ask the operator \
                 for a new token (iotpki token create)"
            )));
        }
        // A key blocked since (found in a firmware image) gets no certificate, not even one issued before.
        self.refuse_blocked_key(&rec.spki_sha256)?;
        let audit = AuditEvent {
            at: self.clock.now(),
            actor: format!("device:{device}"),
            action: "enroll.replay".into(),
            target: rec.serial.clone(),
            detail: "same token and key: the certificate issued before is sent again".into(),
        };
        Ok(Resend { record: rec, audit })
    }

    /// A renewal presented with a certificate that was renewed already: if
    /// the request proves possession of the key its successor was issued for,
    /// the answer is that successor again (the device never got the first
    /// answer: network, power cut). Nothing new is issued, so a lost answer
    /// neither costs the device its identity nor gives it two certificates.
    /// Any other key is refused: a superseded certificate renews nothing.
    fn renewal_replay(&self, old: &CertRecord, next: &str, req: &VerifiedCsr) -> Result<Resend, AuthorityError> {
        let refused = || {
            AuthorityError::Refused(Refusal::Renewal(format!(
                "certificate {} was renewed already (its successor is {next}): renew with the successor, or \
                 commission again with the birth certificate",
                old.serial
            )))
        };
        let Some(rec) = self.store.certificate(next)? else { return Err(refused()) };
        if rec.spki_sha256 != keys::spki_fingerprint(&req.spki_der) || rec.device_serial != old.device_serial {
            return Err(refused());
        }
        if let CertStatus::Revoked { .. } = rec.status {
            return Err(AuthorityError::Refused(Refusal::Renewal(format!(
                "certificate {} was renewed already; its successor {next} is revoked",
                old.serial
            ))));
        }
        self.refuse_blocked_key(&rec.spki_sha256)?;
        let audit = AuditEvent {
            at: self.clock.now(),
            actor: format!("device:{}", old.device_serial.clone().unwrap_or_default()),
            action: "reenroll.replay".into(),
            target: rec.serial.clone(),
            detail: format!("replaces={} same key: the renewal issued before is sent again", old.serial),
        };
        Ok(Resend { record: rec, audit })
    }

    /// The label's key policy: the request's key type must be one it allows.
    pub(crate) fn check_key(&self, label: &Label, kt: KeyType) -> Result<(), AuthorityError> {
        if label.allowed.contains(&kt) {
            return Ok(());
        }
        let allowed = label.allowed.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ");
        Err(iotpki_core::Error::KeyNotAllowed { offered: kt.to_string(), allowed }.into())
    }
}

/// What differs between the plans of the ways in.
struct PlanFor {
    subject: Name,
    /// The template's extensions (none without a template).
    extensions: Vec<Extension>,
    /// The template, if the enrollment gets one.
    template: Option<Arc<Template>>,
    device: String,
    replaces: Option<String>,
    precondition: Precondition,
    actor: String,
    action: &'static str,
    note: Option<String>,
    on_race: Race,
    /// A Matter batch's birth: the PAI that signs its DAC.
    matter: Option<Arc<CaKey>>,
}

/// RFC 7030 leaves the subject to the CA: a request that carries only a CN,
/// or no subject at all, is enrolled when its credential (`bound_by`: the
/// token, the birth or the current certificate) already binds the serial, and
/// the certificate gets the subject the authority writes. Only a request
/// that names another serial (a serialNumber attribute other than `device`)
/// is refused.
pub(crate) fn check_requested_serial(subject: &Name, device: &str, bound_by: &str) -> Result<(), AuthorityError> {
    let in_csr = name::serial_numbers(subject);
    match in_csr.iter().find(|s| s.as_str() != device) {
        None => Ok(()),
        Some(other) => Err(AuthorityError::forbidden(format!(
            "the request names serialNumber={other}, but {bound_by} is for serial {device}: request for {device}, \
             or leave the subject to the authority (a CN alone will do)"
        ))),
    }
}

/// Most batches' rules [`Authority::batch_rules`] keeps (then it starts again).
const MAX_CACHED_PROFILES: usize = 100_000;

/// What a batch says about its births, fixed when it is created.
#[derive(Clone, Debug)]
pub(crate) struct BatchRules {
    /// Its profile.
    pub(crate) profile: BatchProfile,
    /// The template its births get, if it names one.
    pub(crate) template: Option<String>,
    /// Its product (a template's `{product}`).
    pub(crate) product: String,
    /// Its births must prove their key is in the TPM registered for their serial.
    pub(crate) tpm_attestation: bool,
}

impl Authority {
    /// A batch's rules (`None`: no such batch), from the store the first time
    /// and from memory after: a birth's hot path reads them once per batch
    /// (they never change after the batch's creation).
    pub(crate) fn batch_rules(&self, batch: &str) -> Result<Option<BatchRules>, AuthorityError> {
        let cached = self.batch_profiles.lock().unwrap_or_else(|p| p.into_inner()).get(batch).cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let Some(b) = self.store.batch(batch)? else { return Ok(None) };
        let rules = BatchRules {
            profile: b.profile,
            template: b.template,
            product: b.product,
            tpm_attestation: b.tpm_attestation,
        };
        let mut map = self.batch_profiles.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CACHED_PROFILES {
            map.clear();
        }
        map.insert(batch.to_string(), rules.clone());
        Ok(Some(rules))
    }

    /// The template `named` by a token or batch (`by`), else the label's;
    /// `None`: the built-in device profile. A name the config no longer has
    /// is refused: nothing is issued from a template that was not checked.
    fn template_for(
        &self,
        named: Option<&str>,
        label: &Label,
        by: &str,
    ) -> Result<Option<Arc<Template>>, AuthorityError> {
        match named {
            Some(n) => self.templates.get(n).cloned().map(Some).ok_or_else(|| {
                AuthorityError::forbidden(format!(
                    "{by} names certificate template {n}, which this authority's config does not have: add it back \
                     (docs/templates.md) and restart, or use another token or batch"
                ))
            }),
            None => Ok(label.template.clone()),
        }
    }

    /// Template `t` rendered for `device` (with its batch id and product, for
    /// a birth): the subject and extensions, after refusing a key type it does
    /// not allow and a request asking for what it does not give.
    fn apply_template(
        &self,
        t: &Template,
        device: &DeviceSerial,
        batch: Option<(&str, &str)>,
        csr: &VerifiedCsr,
    ) -> Result<(Name, Vec<Extension>), AuthorityError> {
        t.check_key(csr.key_type)?;
        let ctx = Context {
            organization: &self.cfg.organization,
            serial: device,
            batch: batch.map(|b| b.0),
            product: batch.map(|b| b.1),
            csr_subject: &csr.subject,
        };
        let r = t.render(&ctx)?;
        // The built-in templates take the request as the built-in profile always did.
        if !t.is_builtin() {
            t.check_request(&csr.subject, csr.requested_san.as_ref(), device, &r)?;
        }
        Ok((r.subject, r.extensions))
    }
}

/// The extensions a renewal carries over from the current certificate: all
/// but those the device profile writes for every certificate anew
/// (basicConstraints, key identifiers, revocation pointers). keyUsage and
/// extKeyUsage replace the profile's in place, so a certificate made without
/// a template renews byte for byte as before.
fn carried_extensions(cert: &x509_cert::Certificate) -> Vec<Extension> {
    use spki::der::oid::db::rfc5280 as r;
    let anew = [
        r::ID_CE_BASIC_CONSTRAINTS,
        r::ID_CE_SUBJECT_KEY_IDENTIFIER,
        r::ID_CE_AUTHORITY_KEY_IDENTIFIER,
        r::ID_CE_CRL_DISTRIBUTION_POINTS,
        r::ID_PE_AUTHORITY_INFO_ACCESS,
    ];
    cert.tbs_certificate.extensions.iter().flatten().filter(|e| !anew.contains(&e.extn_id)).cloned().collect()
}
