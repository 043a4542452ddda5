//! Who is calling: a client certificate (a device's, a station's, an
//! admin's, or a birth certificate) or a one-time token, authenticated once
//! per request.
//!
//! The server asks [`Authority::admit`] before it reads a body; the answer,
//! a [`Caller`], is what every later step of that request is given (the
//! enrollment pipeline, the factory endpoints, the admin API): nothing is
//! authenticated twice and the client's leaf is parsed once.

use std::collections::HashMap;

use iotpki_core::name::DeviceSerial;
use iotpki_core::profile::{self, Profile};
use iotpki_store::{AuditEvent, CertRecord, CertStatus, Presented, StationRecord, StationStatus, StoreError};
use rustls_pki_types::CertificateDer;

use crate::commission::Birth;
use crate::error::Refusal;
use crate::sigcheck;
use crate::tokens::{self, TokenState};
use crate::{Authority, AuthorityError, BIRTH_ONLY_ON_THE_LINE};

/// Who an endpoint needs, checked by [`Authority::admit`] before the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// A factory station's certificate; refusals audited as the action named.
    Station(&'static str),
    /// One of our certificates (re-enrollment); refusals audited as the action named.
    Certificate(&'static str),
    /// A one-time token for a device serial, or a birth certificate (simpleenroll).
    Enroll,
    /// An admin's certificate.
    Admin,
}

/// How the caller authenticated.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    /// HTTP Basic: user = device serial, password = one-time token.
    Token {
        /// The device serial claimed.
        user: &'a str,
        /// The token.
        password: &'a str,
    },
    /// The TLS client certificate chain (leaf first), its possession proven by the handshake.
    ClientCert(&'a [CertificateDer<'a>]),
    /// Nothing.
    None,
}

/// A device (or station, or admin) authenticated by its certificate.
#[derive(Clone, Debug)]
pub struct DeviceIdentity {
    /// The store's record of its certificate.
    pub record: CertRecord,
    /// The certificate.
    pub cert: x509_cert::Certificate,
}

/// A device holding a one-time token that may still be used (or was spent
/// on a certificate that a retry may get again).
#[derive(Clone, Debug)]
pub(crate) struct TokenHolder {
    /// The device serial the token is for.
    pub(crate) device: DeviceSerial,
    /// SHA-256 of the token (the token itself is not kept).
    pub(crate) token_hash: String,
    /// What the token's check found.
    pub(crate) state: TokenState,
    /// The certificate template the token names, if any.
    pub(crate) template: Option<String>,
}

/// A factory station authenticated by its certificate.
#[derive(Clone, Debug)]
pub(crate) struct Station {
    /// The station's record.
    pub(crate) record: StationRecord,
    /// Its certificate.
    pub(crate) id: DeviceIdentity,
}

impl Station {
    /// Whether the station may make devices of `batch`.
    pub(crate) fn may_make(&self, batch: &str) -> bool {
        self.record.batches.iter().any(|b| b == batch)
    }
}

/// Who is calling, as [`Authority::admit`] found: the result of the one
/// authentication of a request, handed to every step after it. Only the
/// authority makes one (its content is private), so holding a `Caller` is
/// proof that the request's credential was checked.
#[derive(Clone, Debug)]
pub struct Caller(pub(crate) Who);

/// The kinds of [`Caller`].
#[derive(Clone, Debug)]
pub(crate) enum Who {
    /// A device with a one-time token (first enrollment).
    Token(TokenHolder),
    /// A device with a birth certificate that chains to a trusted
    /// manufacturer (commissioning).
    Birth(Box<Birth>),
    /// A factory station.
    Station(Box<Station>),
    /// One of our certificates (re-enrollment). `superseded` names its
    /// successor when it was renewed already: it may only get that one again.
    Certificate { id: Box<DeviceIdentity>, superseded: Option<String> },
    /// An admin: its name and certificate serial.
    Admin { name: String, serial: String },
}

impl Caller {
    /// Who this is in the audit log: `device:SERIAL` for a token, else
    /// `cert:SERIAL` (the client certificate's serial).
    pub fn actor(&self) -> String {
        match &self.0 {
            Who::Token(t) => format!("device:{}", t.device),
            Who::Birth(b) => format!("cert:{}", b.cert_serial),
            Who::Station(s) => format!("cert:{}", s.id.record.serial),
            Who::Certificate { id, .. } => format!("cert:{}", id.record.serial),
            Who::Admin { serial, .. } => format!("cert:{serial}"),
        }
    }

    /// The station calling, or the refusal of an endpoint only stations may call.
    pub(crate) fn station(&self) -> Result<&Station, AuthorityError> {
        match &self.0 {
            Who::Station(s) => Ok(s),
            _ => Err(AuthorityError::unauthenticated("a factory station's certificate is needed (mutual TLS)".into())),
        }
    }
}

/// Client certificates whose certification paths verified recently: SHA-256 of
/// the leaf → the span (unix seconds) in which that verdict stands. A station
/// on a kept-alive connection presents the same certificate with every
/// request; its path (two signature checks) is verified once, not each time.
/// Only the path is remembered: whether the certificate is the one recorded
/// and not revoked is asked of the store every time.
#[derive(Default)]
pub(crate) struct VerifiedPaths(std::sync::Mutex<HashMap<[u8; 32], (i64, i64)>>);

impl VerifiedPaths {
    /// How long a verdict stands at most.
    const TTL_SECS: i64 = 300;
    /// Most verdicts kept (all are forgotten when it is full).
    const MAX: usize = 16_384;

    fn holds(&self, leaf: &[u8; 32], now: i64) -> bool {
        self.0.lock().ok().and_then(|m| m.get(leaf).copied()).is_some_and(|(from, until)| from <= now && now < until)
    }

    /// Remember that `leaf` verified at `now`; the verdict ends with the
    /// leaf's notAfter (no later than its issuers', as we issue) or the TTL.
    fn remember(&self, leaf: [u8; 32], now: i64, not_after: i64) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= Self::MAX {
                m.clear();
            }
            m.insert(leaf, (now, not_after.min(now + Self::TTL_SECS)));
        }
    }
}

impl Authority {
    /// Write a refusal (never our own failures) to the audit log as `actor`'s,
    /// counted against `batch` when the request named one; past the window's
    /// budget of single entries, counted for a summary ([`crate::refusals`]).
    pub(crate) fn audit_refusal<T>(
        &self,
        r: &Result<T, AuthorityError>,
        actor: impl FnOnce() -> String,
        batch: Option<&str>,
        action: &str,
    ) {
        self.audit_refusal_as(r, actor, batch, action, action.trim_start_matches("refuse."));
    }

    /// [`Self::audit_refusal`], counted in the metrics under `path` (the
    /// endpoint refused, where the audit action names a finer reason:
    /// `refuse.clone` is a refused `enroll`).
    pub(crate) fn audit_refusal_as<T>(
        &self,
        r: &Result<T, AuthorityError>,
        actor: impl FnOnce() -> String,
        batch: Option<&str>,
        action: &str,
        path: &str,
    ) {
        let Err(e) = r else { return };
        if !e.is_refusal() {
            return;
        }
        self.metrics.refusal(path, e);
        let ev = AuditEvent {
            at: self.clock.now(),
            actor: actor(),
            action: action.into(),
            target: batch.map(|b| format!("batch:{b}")).unwrap_or_default(),
            detail: e.public_message(),
        };
        self.refusals.record(self.store.as_ref(), batch, ev, e.http_status());
    }

    /// Whether the caller of an endpoint is who the endpoint needs, before
    /// its request body is read: the server asks this first, so that no byte
    /// of a body is buffered for a caller that will be refused anyway, and
    /// hands the [`Caller`] found to the endpoint: the caller is not
    /// authenticated again. A refusal here is audited as the endpoint's
    /// (`refuse.enroll`, `refuse.sync`, ..., `refuse.admin`).
    /// `label` is the EST label the request names, if any.
    pub fn admit(&self, gate: Gate, label: Option<&str>, cred: Credential<'_>) -> Result<Caller, AuthorityError> {
        let (r, action) = match gate {
            Gate::Station(action) => {
                let r = match cred {
                    Credential::ClientCert(chain) => self
                        .authenticate_station(chain)
                        .map(|(record, id)| Caller(Who::Station(Box::new(Station { record, id })))),
                    _ => Err(AuthorityError::unauthenticated(
                        "a factory station's certificate is needed (mutual TLS)".into(),
                    )),
                };
                (r, action)
            }
            Gate::Certificate(action) => {
                let r = match cred {
                    // A superseded certificate passes here; the re-enrollment only
                    // gives it its successor again (see `authenticate_renewable`).
                    Credential::ClientCert(chain) => self
                        .authenticate_renewable(chain)
                        .map(|(id, superseded)| Caller(Who::Certificate { id: Box::new(id), superseded })),
                    _ => Err(AuthorityError::unauthenticated(
                        "re-enrollment needs the current certificate as the TLS client certificate".into(),
                    )),
                };
                (r, action)
            }
            Gate::Admin => {
                let chain = match cred {
                    Credential::ClientCert(chain) => chain,
                    _ => &[],
                };
                // Audits its own refusal as refuse.admin.
                return self
                    .admin(chain)
                    .map(|a| Caller(Who::Admin { name: a.name().into(), serial: a.cert_serial().into() }));
            }
            Gate::Enroll => (self.admit_label(label, cred).and_then(|()| self.admit_enroll(cred)), "refuse.enroll"),
        };
        self.audit_refusal(&r, || actor_of(cred), None, action);
        r
    }

    /// Whether `caller`, admitted by [`Self::admit`] earlier on the same
    /// connection (the same certificate chain), may ask for a birth of
    /// `batch` now without being admitted again: a station whose certificate
    /// is within its validity now, asking for a batch it held when admitted.
    /// What can change while a connection stays open (its certificate's
    /// revocation, a block on its key, the station's revocation, its right to
    /// the batch) is judged again by the transaction that records the birth
    /// (`Precondition::Birth`): a kept admission never outlives any of them.
    /// The server drops a kept admission at the first refusal, so the next
    /// request is admitted again, and refused there, before its request's signature is checked.
    pub fn still_admitted(&self, caller: &Caller, batch: &str) -> bool {
        let Who::Station(st) = &caller.0 else { return false };
        let (now, r) = (self.clock.now(), &st.id.record);
        // RFC 5280 4.1.2.5: valid from notBefore through notAfter, inclusive (as webpki judges it).
        st.may_make(batch) && r.not_before <= now && now <= r.not_after
    }

    /// A first enrollment's label: it must exist and must not be the birth
    /// label (births come only from a station on the line), whoever calls.
    fn admit_label(&self, label: Option<&str>, cred: Credential<'_>) -> Result<(), AuthorityError> {
        let label = self.label(label)?;
        if !self.is_birth_ca(&label.ca.name) {
            return Ok(());
        }
        Err(AuthorityError::forbidden(match cred {
            Credential::ClientCert(_) => format!(
                "label {} issues birth certificates: commissioning gives an operational certificate \
                 (use an operational label); {BIRTH_ONLY_ON_THE_LINE}",
                label.name
            ),
            _ => format!("label {} issues birth certificates: {BIRTH_ONLY_ON_THE_LINE}", label.name),
        }))
    }

    /// A first enrollment's caller: a token that may still be used for the
    /// device named, or a birth certificate that chains to a trusted manufacturer.
    fn admit_enroll(&self, cred: Credential<'_>) -> Result<Caller, AuthorityError> {
        match cred {
            Credential::Token { user, password } => {
                let device = DeviceSerial::parse(user).map_err(|_| {
                    AuthorityError::unauthenticated(format!(
                        "the Basic user must be a device serial (1 to 64 printable characters; got {} bytes)",
                        user.len()
                    ))
                })?;
                let token_hash = tokens::hash(password);
                // Cheap, so a bad token costs no signature; the store checks again in the issuance.
                let (state, template) =
                    tokens::precheck_with_template(self.store.as_ref(), &token_hash, &device, self.clock.now())?;
                Ok(Caller(Who::Token(TokenHolder { device, token_hash, state, template })))
            }
            Credential::ClientCert(chain) => self.check_birth(chain).map(|b| Caller(Who::Birth(Box::new(b)))),
            Credential::None => Err(AuthorityError::unauthenticated(
                "enrollment needs a one-time token: HTTP Basic with the device serial as user and the token as password"
                    .into(),
            )),
        }
    }

    /// A station authenticated by its certificate, with that certificate's identity.
    pub(crate) fn authenticate_station(
        &self,
        chain: &[CertificateDer<'_>],
    ) -> Result<(StationRecord, DeviceIdentity), AuthorityError> {
        let (id, station) = self.authenticate_recorded(chain, true)?;
        refuse_revoked(&id)?;
        if id.record.profile != Profile::Station.name() {
            return Err(AuthorityError::Refused(Refusal::Client(format!(
                "a {} certificate is not a factory station's",
                id.record.profile
            ))));
        }
        let st = station.ok_or_else(|| {
            AuthorityError::Refused(Refusal::Client(format!("no station holds certificate {}", id.record.serial)))
        })?;
        if let StationStatus::Revoked { .. } = st.status {
            return Err(StoreError::StationRevoked { station: st.name }.into());
        }
        Ok((st, id))
    }

    /// Authenticate a TLS client certificate chain: it must chain to our root
    /// through one of our issuing CAs, be valid now for client auth, be the
    /// very certificate the store recorded, and not be revoked.
    pub fn authenticate(&self, chain: &[CertificateDer<'_>]) -> Result<DeviceIdentity, AuthorityError> {
        let (id, _) = self.authenticate_recorded(chain, false)?;
        refuse_revoked(&id)?;
        Ok(id)
    }

    /// A re-enrollment's caller: [`Self::authenticate`], but a certificate
    /// superseded by a renewal is let in too, with its successor's serial, and
    /// only to get that successor again (a renewal whose answer was lost).
    pub(crate) fn authenticate_renewable(
        &self,
        chain: &[CertificateDer<'_>],
    ) -> Result<(DeviceIdentity, Option<String>), AuthorityError> {
        let (id, _) = self.authenticate_recorded(chain, false)?;
        let superseded = match (&id.record.status, &id.record.replaced_by) {
            (CertStatus::Good, _) => None,
            (CertStatus::Revoked { reason: 4, .. }, Some(next)) => Some(next.clone()),
            (CertStatus::Revoked { .. }, _) => {
                return Err(AuthorityError::Refused(Refusal::Client(format!(
                    "client certificate {} is revoked",
                    id.record.serial
                ))))
            }
        };
        Ok((id, superseded))
    }

    /// [`Self::authenticate`] without the revocation check: the path verifies
    /// and the certificate is the one recorded, revoked or not.
    fn authenticate_recorded(
        &self,
        chain: &[CertificateDer<'_>],
        station: bool,
    ) -> Result<(DeviceIdentity, Option<StationRecord>), AuthorityError> {
        let leaf = chain.first().ok_or_else(|| AuthorityError::unauthenticated("no client certificate".into()))?;
        let now = self.clock.now();
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(leaf.as_ref()).into();
        let path_verified = self.verified_paths.holds(&digest, now);
        let ee = match path_verified {
            true => None,
            false => Some(webpki::EndEntityCert::try_from(leaf).map_err(|e| {
                AuthorityError::Refused(Refusal::Client(format!("client certificate is malformed: {e}")))
            })?),
        };
        let info = profile::cert_info(leaf)?;
        // The record, the block on its key and (for a station) its station: one read.
        let presented = self.store.presented(&info.serial, station)?;
        let record = presented.as_ref().map(|p| &p.record);
        if let Some(ee) = &ee {
            // The record, when it is this very certificate, vouches for the leaf's signature (crate::sigcheck).
            let exact = record.filter(|r| r.der == leaf.as_ref());
            self.verify_path(ee, now, exact.and_then(|r| self.recorded_signature(r, &info.cert)))?;
            let not_after = iotpki_core::time::unix(&info.cert.tbs_certificate.validity.not_after);
            self.verified_paths.remember(digest, now, not_after);
        }
        let presented = presented.ok_or_else(|| {
            AuthorityError::Refused(Refusal::Client(format!(
                "client certificate {} is not known to this authority",
                info.serial
            )))
        })?;
        let Presented { record, key_blocked, station } = presented;
        if record.der != leaf.as_ref() {
            return Err(AuthorityError::Refused(Refusal::Client(format!(
                "client certificate {} differs from the one issued",
                info.serial
            ))));
        }
        // A certificate whose key is blocked (blocked without revoking it, or
        // revoked after this request began) authenticates nothing: whoever
        // holds the leaked key could otherwise renew into a key of their own.
        if let Some(b) = key_blocked {
            return Err(StoreError::KeyBlocked { spki_sha256: b.spki_sha256, reason: b.reason }.into());
        }
        Ok((DeviceIdentity { record, cert: info.cert }, station))
    }

    /// The leaf's signature as the record vouches for it: `record` is the
    /// leaf, octet for octet, and names one of our issuing CAs, whose key
    /// identifier the leaf carries as its authorityKeyIdentifier. `None`
    /// (the signature is checked) for anything else: a delegated CA's
    /// certificate, a Matter DAC, a CA no longer configured.
    fn recorded_signature<'a>(
        &'a self,
        record: &'a CertRecord,
        cert: &x509_cert::Certificate,
    ) -> Option<sigcheck::Recorded<'a>> {
        use der::Decode;
        use x509_cert::der::oid::AssociatedOid;
        use x509_cert::ext::pkix::AuthorityKeyIdentifier;
        let ca = self.issuing.iter().find(|c| c.name == record.ca)?;
        let aki =
            cert.tbs_certificate.extensions.as_deref()?.iter().find(|e| e.extn_id == AuthorityKeyIdentifier::OID)?;
        let aki = AuthorityKeyIdentifier::from_der(aki.extn_value.as_bytes()).ok()?;
        if aki.key_identifier?.as_bytes() != ca.key_id.as_slice() {
            return None;
        }
        let (tbs, signature) = sigcheck::tbs_and_signature(&record.der)?;
        let issuer_key = ca.cert.tbs_certificate.subject_public_key_info.subject_public_key.as_bytes()?;
        Some(sigcheck::Recorded { issuer_key, tbs, signature })
    }

    /// Refuse a blocked key (as the store refuses it at issuance).
    pub(crate) fn refuse_blocked_key(&self, spki_sha256: &str) -> Result<(), AuthorityError> {
        match self.store.blocked_key(spki_sha256)? {
            Some(b) => Err(StoreError::KeyBlocked { spki_sha256: b.spki_sha256, reason: b.reason }.into()),
            None => Ok(()),
        }
    }

    /// The client certificate's path to one of our anchors, at `time`, for clientAuth.
    /// `recorded`: the leaf's signature, taken on record (crate::sigcheck).
    fn verify_path(
        &self,
        ee: &webpki::EndEntityCert<'_>,
        now: i64,
        recorded: Option<sigcheck::Recorded<'_>>,
    ) -> Result<(), AuthorityError> {
        let time = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
        sigcheck::with_algorithms(&self.signature_memo, recorded, |algs| {
            ee.verify_for_usage(
                algs,
                &self.anchors,
                &self.intermediates,
                time,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map(|_| ())
        })
        .map_err(|e| {
            AuthorityError::Refused(Refusal::Client(match e {
                // A CA of another authority with the same name as ours shows up as a bad signature.
                webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                    "client certificate was not issued by this authority".to_string()
                }
                webpki::Error::CertExpired { not_after, .. } => format!(
                    "client certificate expired at {}: it authenticates nothing any more; get a new one (a device: \
                     commission again with its birth certificate, or enroll with a new token)",
                    iotpki_core::time::rfc3339(i64::try_from(not_after.as_secs()).unwrap_or(i64::MAX))
                ),
                webpki::Error::CertNotValidYet { not_before, .. } => format!(
                    "client certificate is not valid until {}: check this device's clock",
                    iotpki_core::time::rfc3339(i64::try_from(not_before.as_secs()).unwrap_or(i64::MAX))
                ),
                other => format!("client certificate rejected: {other}"),
            }))
        })
    }
}

/// Who a credential claims to be, for the audit log: `device:SERIAL` for a
/// token, `cert:SERIAL` for a client certificate, else `anonymous`.
pub(crate) fn actor_of(cred: Credential<'_>) -> String {
    match cred {
        Credential::Token { user, .. } => match DeviceSerial::parse(user) {
            Ok(d) => format!("device:{d}"),
            // Never the claimed name itself: it came from the request, unchecked.
            Err(_) => format!("device:(not a serial, {} bytes)", user.len()),
        },
        Credential::ClientCert(chain) => chain
            .first()
            .and_then(|c| profile::cert_info(c).ok())
            .map(|i| format!("cert:{}", i.serial))
            .unwrap_or_else(|| "client-cert".into()),
        Credential::None => "anonymous".into(),
    }
}

/// A revoked certificate authenticates nothing ([`Authority::authenticate`]).
fn refuse_revoked(id: &DeviceIdentity) -> Result<(), AuthorityError> {
    match id.record.status {
        CertStatus::Revoked { .. } => {
            Err(AuthorityError::Refused(Refusal::Client(format!("client certificate {} is revoked", id.record.serial))))
        }
        CertStatus::Good => Ok(()),
    }
}
