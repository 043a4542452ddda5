//! iotpki authority: decides who gets which certificate.
//!
//! The server translates HTTP into calls on [`Authority`]; the authority
//! authenticates the caller (one-time token or client certificate), checks
//! the request against the label's profile, signs, records the certificate
//! durably in the store (with its audit entry, in one transaction) and only
//! then returns it. Every refusal is written to the audit log with its reason.
//!
//! Where each part lives:
//! - `open`: opening an authority (config, CA keys from files or an HSM,
//!   store, trust anchors) and [`CaKey`];
//! - `auth`: who is calling ([`Authority::admit`] → [`Caller`]), once per
//!   request (a station's births: once per connection, [`Authority::still_admitted`]);
//! - `enroll`: the one enrollment pipeline ([`Authority::enroll`]): each way
//!   in authorizes a verified request into a signing plan, one issue step signs
//!   and records;
//! - [`revocation`]: revoking, CRLs (sharded), ARLs and OCSP;
//! - [`factory`]: batches, stations, delegated sub-CAs, production-record sync;
//! - [`commission`], [`trust`], [`admin`], [`servers`], [`attest`], [`tokens`]:
//!   ownership and commissioning, trust bundles and vouchers, the admin role,
//!   service certificates, TPM attestation, one-time tokens;
//! - [`AuthorityError`] with its [`Refusal`] families: why a request was refused.

#![forbid(unsafe_code)]

pub mod admin;
pub mod attest;
mod auth;
pub mod commission;
pub mod config;
pub mod console;
mod enroll;
mod error;
pub mod factory;
mod fleet;
pub mod init;
pub mod key_registry;
pub mod keyfile;
pub mod matter;
pub mod metrics;
pub mod ocsp_cache;
mod open;
pub mod refusals;
pub mod revocation;
pub mod rotation;
pub mod servers;
mod sigcheck;
pub mod templates;
pub mod tokens;
pub mod trust;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iotpki_core::keys::KeyType;
use iotpki_core::name::DeviceSerial;
use iotpki_core::{est, profile};
use iotpki_store::{BatchRecord, Store};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spki::der::Encode;

pub use auth::{Caller, Credential, DeviceIdentity, Gate};
pub use config::Config;
pub use enroll::{EnrollRequest, Queued, Started, Unrecorded};
pub use error::{AuthorityError, KeyRefusal, Refusal};
pub use iotpki_core::clock::{Clock, SystemClock};
pub use iotpki_hsm::Pin;
pub use keyfile::Passphrase;
pub use open::{open_store, CaKey};

/// The EST label whose CA (the manufacturing CA) issues birth certificates.
pub const BIRTH_LABEL: &str = "birth";

/// Why a device may not renew its birth certificate (or get one any way but
/// from a station): the refusal every such path answers with.
pub(crate) const BIRTH_ONLY_ON_THE_LINE: &str = "birth certificates are issued only to a factory station on the line, \
     under its batch's rules (allowlist, quota, window, attestation); a device never renews its birth \
     certificate and a token, an owner or an admin cannot make one";

/// How long before "now" issued certificates start, for devices with slow clocks.
const BACKDATE_SECS: i64 = 60;

/// How long a delegated CA's CRL is valid while its batch is open: the
/// station signs a new one at each sync.
pub const DELEGATED_CRL_SECS: i64 = 7 * 86_400;

/// Where the CRL of station `station`'s delegated CA for `batch` is served.
pub fn delegated_crl_path(station: &str, batch: &str) -> String {
    format!("/crl/delegated/{station}/{batch}.crl")
}

/// What a station's next CRL for its delegated CA must say.
#[derive(Clone, Debug)]
pub struct DelegatedCrlTerms {
    /// Its cRLNumber.
    pub number: u64,
    /// Its latest nextUpdate.
    pub next_update: i64,
    /// The births the authority revoked under the delegated CA.
    pub revoked: Vec<iotpki_core::crl::Revoked>,
}

/// An EST label, resolved.
pub struct Label {
    /// Its name.
    pub name: String,
    /// The CA that signs under it.
    pub ca: Arc<CaKey>,
    validity_secs: Option<i64>,
    allowed: Vec<KeyType>,
    cacerts: Vec<u8>,
    /// The template its enrollments get when their token or batch names none.
    template: Option<Arc<iotpki_core::template::Template>>,
}

/// A certificate the authority issued and recorded.
#[derive(Clone, Debug)]
pub struct Enrolled {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// Its serial, lowercase hex.
    pub serial: String,
    /// The answer body: a PKCS#7 certs-only structure with the certificate.
    pub pkcs7: Vec<u8>,
}

/// A station's delegated CA for a batch, and what the station needs with it.
#[derive(Clone, Debug)]
pub struct Delegated {
    /// The delegated CA's certificate, DER.
    pub cert: Vec<u8>,
    /// The certificates above it up to (not including) the root, DER.
    pub chain: Vec<Vec<u8>>,
    /// The batch as it stands now (quota left = quota - issued).
    pub batch: BatchRecord,
    /// The serials the delegated CA may give birth to, in order: the station's
    /// allowlist, signed into the certificate (one permitted subtree each).
    pub allowlist: Vec<String>,
    /// Where the delegated CA's CRL is served (the births it signs name it as
    /// their cRLDistributionPoint), when the authority has a public HTTP URL.
    pub crl_url: Option<String>,
}

/// The certificate authority: CAs, labels, store and clock.
pub struct Authority {
    dir: PathBuf,
    cfg: Config,
    root_der: Vec<u8>,
    labels: HashMap<String, Label>,
    issuing: Vec<Arc<CaKey>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    server_chain: Vec<Vec<u8>>,
    server_key: Vec<u8>,
    /// The root, then any retiring roots: what client certificates may chain to.
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
    retiring: Vec<Vec<u8>>,
    intermediates: Vec<CertificateDer<'static>>,
    crls: std::sync::Mutex<HashMap<CrlScope, revocation::Cached>>,
    /// Per CA: its revoked certificates as of a revocation mark, so that the
    /// shards of a partitioned CRL are cut from one read of the store.
    revoked_lists: std::sync::Mutex<HashMap<String, revocation::RevokedList>>,
    ocsp_signers: std::sync::Mutex<HashMap<String, Arc<revocation::OcspSigner>>>,
    ocsp_cache: std::sync::Mutex<ocsp_cache::OcspCache>,
    /// When a root's ARL was last found stale or close to its nextUpdate
    /// (Unix seconds): the warning is logged at most once an hour.
    arl_warned: std::sync::atomic::AtomicI64,
    /// TPM attestation challenges waiting for their answers.
    tpm_challenges: attest::Challenges,
    /// Client certificates whose paths to our anchors verified recently.
    verified_paths: auth::VerifiedPaths,
    /// Signatures of certification paths that verified (the CAs' own, in practice).
    signature_memo: sigcheck::SignatureMemo,
    /// Refusals written to the audit log, with a bound per window.
    refusals: refusals::RefusalAudit,
    /// What `/metrics` reports.
    metrics: metrics::Metrics,
    /// Matter PAIs, keys unlocked, by vendor id; and the PAA's certificate.
    matter_pais: matter::Pais,
    matter_paa: Option<Vec<u8>>,
    /// Batches' profiles, read once per batch: a profile never changes after
    /// creation, and a station birth needs it before the store's transaction.
    batch_profiles: std::sync::Mutex<HashMap<String, enroll::BatchRules>>,
    /// The certificate templates, built-in and configured, by name (`templates`).
    templates: HashMap<String, Arc<iotpki_core::template::Template>>,
}

/// Which CRL of an issuing CA: the complete one (`shard` is `None`) or shard
/// `k` of `s` of its partitioned CRL (`Some((s, k))`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CrlScope {
    /// The issuing CA's name.
    pub ca: String,
    /// Shard count and shard.
    pub shard: Option<(u32, u32)>,
}

impl Drop for Authority {
    fn drop(&mut self) {
        // Refusals counted in the current window are not lost at an orderly end.
        self.flush_refusals();
    }
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Authority {
    /// What the authority counts for `/metrics` (the server adds its own there).
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// The authority's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The root CA certificate, DER: what devices trust.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// Previous roots still trusted (after `iotpki ca rotate`, until `iotpki ca retire`).
    pub fn retiring_roots(&self) -> &[Vec<u8>] {
        &self.retiring
    }

    /// Subjects (DER) of every CA, for the TLS CertificateRequest hint.
    pub fn ca_subjects(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for der in std::iter::once(&self.root_der).chain(self.issuing.iter().map(|c| &c.cert_der)) {
            if let Ok(info) = profile::cert_info(der) {
                if let Ok(s) = info.cert.tbs_certificate.subject.to_der() {
                    out.push(s);
                }
            }
        }
        out
    }

    /// The server's TLS certificate chain and key.
    pub fn server_tls(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let chain = self.server_chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
        (chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone())))
    }

    /// Resolve a label (`None`: the default label).
    pub fn label(&self, name: Option<&str>) -> Result<&Label, AuthorityError> {
        let n = name.unwrap_or(&self.cfg.default_label);
        self.labels.get(n).ok_or_else(|| AuthorityError::not_found(format!("no EST label {n:?}")))
    }

    /// Whether `ca` (a CA name) issues birth certificates: the CA of the
    /// `birth` label (the manufacturing CA). Its device certificates come only
    /// from a station's birth, under a batch's rules; every other path that
    /// would sign under it is refused (the enrollment pipeline's one issue step checks).
    pub fn is_birth_ca(&self, ca: &str) -> bool {
        self.labels.get(BIRTH_LABEL).is_some_and(|l| l.ca.name == self.current_ca(ca))
    }

    /// Store names of the CAs whose certificates are births: the birth
    /// label's CA and those it succeeded, and the Matter PAIs (a DAC is the
    /// device's birth certificate). A device's certificates from them outlive
    /// a hand-over and a commissioning; the others end there.
    pub(crate) fn birth_cas(&self) -> Vec<String> {
        let pais = self.matter_pais.values().map(|p| p.ca.name.clone());
        self.cfg.ca.iter().map(|c| c.name.clone()).filter(|n| self.is_birth_ca(n)).chain(pais).collect()
    }

    /// The issuing CA that issues today in `ca`'s place: `ca` itself, or the
    /// last of its successors (`iotpki ca rotate --new-issuing-keys`). What a
    /// certificate of `ca` renews, commissions and is born into.
    pub fn current_ca<'a>(&'a self, ca: &'a str) -> &'a str {
        let mut at = ca;
        // The config's check refuses a circle; the bound is for safety.
        for _ in 0..=self.cfg.ca.len() {
            match self.cfg.ca.iter().find(|c| c.name == at).and_then(|c| c.successor.as_deref()) {
                Some(next) => at = next,
                None => break,
            }
        }
        at
    }

    /// `/cacerts`: the label's issuing CA and the root, PKCS#7 certs-only.
    pub fn cacerts(&self, label: Option<&str>) -> Result<&[u8], AuthorityError> {
        Ok(&self.label(label)?.cacerts)
    }

    /// `/csrattrs`: what a request under the label should look like.
    pub fn csr_attrs(&self, label: Option<&str>) -> Result<Vec<u8>, AuthorityError> {
        let l = self.label(label)?;
        let kt = l.allowed.first().copied().unwrap_or(KeyType::EcdsaP256);
        Ok(est::csr_attrs(kt)?)
    }

    /// Create a one-time token for `serial` (see [`tokens::create`]).
    pub fn create_token(
        &self,
        serial: &DeviceSerial,
        ttl_secs: Option<u64>,
        actor: &str,
    ) -> Result<String, AuthorityError> {
        tokens::create(self.store.as_ref(), &self.cfg, self.clock.as_ref(), serial, ttl_secs, actor)
    }

    /// [`Authority::create_token`], its enrollment getting certificate template `template`.
    pub fn create_token_with_template(
        &self,
        serial: &DeviceSerial,
        ttl_secs: Option<u64>,
        template: Option<&str>,
        actor: &str,
    ) -> Result<String, AuthorityError> {
        tokens::create_with_template(
            self.store.as_ref(),
            &self.cfg,
            self.clock.as_ref(),
            serial,
            ttl_secs,
            template,
            actor,
        )
    }

    /// The Matter chain above a DAC of vendor `vid`: its PAI's certificate
    /// and the PAA's (DER), when the authority has a PAI for `vid`.
    pub fn matter_chain(&self, vid: iotpki_core::matter::VendorId) -> Option<(Vec<u8>, Vec<u8>)> {
        let pai = self.matter_pais.get(&vid)?;
        Some((pai.ca.cert_der.clone(), self.matter_paa.clone()?))
    }

    /// Write the refusals counted in the current window to the audit log now
    /// (the server calls this every window and when it shuts down); returns
    /// how many refusals the entries written sum up.
    pub fn flush_refusals(&self) -> u64 {
        self.refusals.flush(self.store.as_ref())
    }
}
