//! iotpki authority: decides who gets which certificate.
//!
//! The server translates HTTP into calls on [`Authority`]; the authority
//! authenticates the caller (one-time token or client certificate), checks
//! the request against the label's profile, signs, records the certificate
//! durably in the store (with its audit entry, in one transaction) and only
//! then returns it. Every refusal is written to the audit log with its reason.

#![forbid(unsafe_code)]

pub mod admin;
pub mod attest;
pub mod clock;
pub mod commission;
pub mod config;
mod error;
pub mod factory;
pub mod init;
pub mod keyfile;
pub mod ocsp_cache;
pub mod refusals;
pub mod revocation;
pub mod rotation;
pub mod servers;
pub mod tokens;
pub mod trust;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iotpki_core::keys::{self, KeyType, Signer, SoftKey};
use iotpki_core::name::{self, DeviceSerial};
use iotpki_core::profile::{self, CertParams, Issuer, Profile};
use iotpki_core::{csr, est, pem, pkcs7, serial};
use iotpki_store::postgres::PgStore;
use iotpki_store::sqlite::SqliteStore;
use iotpki_store::{
    AuditEvent, BatchRecord, CertRecord, CertStatus, Issuance, Precondition, StationRecord, StationStatus, Store,
    StoreError, SyncEntry, SyncOutcome, SyncUpload,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spki::der::{Decode, Encode};
use x509_cert::name::Name;

pub use clock::{Clock, SystemClock};
pub use config::Config;
pub use error::AuthorityError;
pub use iotpki_hsm::Pin;
pub use keyfile::Passphrase;

/// The EST label whose CA (the manufacturing CA) issues birth certificates.
pub const BIRTH_LABEL: &str = "birth";

/// Why a device may not renew its birth certificate (or get one any way but
/// from a station): the refusal every such path answers with.
pub(crate) const BIRTH_ONLY_ON_THE_LINE: &str = "birth certificates are issued only to a factory station on the line, \
     under its batch's rules (allowlist, quota, window, attestation); a device never renews its birth \
     certificate and a token, an owner or an admin cannot make one";

/// How long before "now" issued certificates start, for devices with slow clocks.
const BACKDATE_SECS: i64 = 60;

/// An issuing CA with its key loaded.
pub struct CaKey {
    /// Its name in the config.
    pub name: String,
    /// Its certificate, DER.
    pub cert_der: Vec<u8>,
    cert: x509_cert::Certificate,
    subject: Name,
    key_id: Vec<u8>,
    not_after: i64,
    signer: Box<dyn Signer>,
    /// `server.public_http_url`: where relying parties fetch CRLs and OCSP.
    public_http_url: Option<String>,
    /// The CA's CRL shard count, when its CRL is partitioned.
    crl_shards: Option<u32>,
}

impl CaKey {
    fn issuer(&self) -> Issuer<'_> {
        Issuer { subject: &self.subject, key_id: &self.key_id, not_after: self.not_after, signer: self.signer.as_ref() }
    }

    /// The CRL (its shard's, when the CA's CRL is partitioned) and OCSP URLs
    /// for the certificate with serial `serial_hex`.
    fn revocation_urls(&self, serial_hex: &str) -> Option<profile::RevocationUrls> {
        let base = self.public_http_url.as_ref()?;
        Some(revocation_urls(base, &self.name, self.crl_shards, serial_hex))
    }

    /// Sign `params` and describe the result as the store records it.
    fn sign(
        &self,
        params: &CertParams,
        serial_hex: String,
        device_serial: Option<String>,
        replaces: Option<String>,
        now: i64,
    ) -> Result<CertRecord, AuthorityError> {
        let urls = self.revocation_urls(&serial_hex);
        let issued = profile::issue_with(params, &self.issuer(), urls.as_ref())?;
        let spki_der = params.spki.to_der().map_err(|e| AuthorityError::Config(format!("public key: {e}")))?;
        Ok(CertRecord {
            serial: serial_hex,
            ca: self.name.clone(),
            profile: params.profile.name().into(),
            subject: name::to_rfc4514(&params.subject),
            device_serial,
            not_before: issued.not_before,
            not_after: issued.not_after,
            issued_at: now,
            spki_sha256: keys::spki_fingerprint(&spki_der),
            replaces,
            replaced_by: None,
            status: CertStatus::Good,
            der: issued.der,
        })
    }
}

/// The revocation URLs written into a certificate with serial `serial_hex`
/// issued by CA `ca` (a root or an issuing CA), under the public base URL
/// `base`: the CA's CRL (its shard's, when `shards` partitions it; a root's
/// is its ARL at `/crl/ROOT.crl`) and the OCSP responder.
pub(crate) fn revocation_urls(base: &str, ca: &str, shards: Option<u32>, serial_hex: &str) -> profile::RevocationUrls {
    let path = match shards.and_then(|s| Some((s, iotpki_core::crl::shard_of(serial_hex, s)?))) {
        Some((s, k)) => iotpki_core::crl::shard_path(ca, s, k),
        None => format!("/crl/{ca}.crl"),
    };
    profile::RevocationUrls { crl: format!("{base}{path}"), ocsp: Some(format!("{base}/ocsp")) }
}

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
}

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

/// A device authenticated by its certificate.
#[derive(Clone, Debug)]
pub struct DeviceIdentity {
    /// The store's record of its certificate.
    pub record: CertRecord,
    /// The certificate.
    pub cert: x509_cert::Certificate,
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
    verified_paths: VerifiedPaths,
    /// Refusals written to the audit log, with a bound per window.
    refusals: refusals::RefusalAudit,
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

/// Client certificates whose certification paths verified recently: SHA-256 of
/// the leaf → the span (unix seconds) in which that verdict stands. A station
/// on a kept-alive connection presents the same certificate with every
/// request; its path (two signature checks) is verified once, not each time.
/// Only the path is remembered: whether the certificate is the one recorded
/// and not revoked is asked of the store every time.
#[derive(Default)]
struct VerifiedPaths(std::sync::Mutex<HashMap<[u8; 32], (i64, i64)>>);

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

/// Open the store of the authority at `dir` (no keys needed): the PostgreSQL
/// database `store.database` when set, else the SQLite file `store.sqlite`.
pub fn open_store(dir: &Path, cfg: &Config) -> Result<Arc<dyn Store>, AuthorityError> {
    if let Some(url) = &cfg.store.database {
        config::check_database(url)?;
        return Ok(Arc::new(PgStore::open(url)?));
    }
    let path = keyfile::resolve(dir, &cfg.store.sqlite);
    Ok(Arc::new(SqliteStore::open(&path)?))
}

fn read_cert_pem(path: &Path) -> Result<Vec<Vec<u8>>, AuthorityError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuthorityError::io(path, e))?;
    let certs = pem::decode_all("CERTIFICATE", &text)
        .map_err(|e| AuthorityError::Config(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(AuthorityError::Config(format!("{}: no certificate", path.display())));
    }
    Ok(certs)
}

impl Authority {
    /// Open the authority at `dir`: read the config, unlock the issuing CA
    /// keys and the server key with `pass` (the root key stays locked), open the store.
    /// When the CA keys are in a PKCS#11 token, its PIN comes from `$IOTPKI_PIN`
    /// (see [`Authority::open_with_pin`]).
    pub fn open(dir: &Path, pass: &Passphrase, clock: Arc<dyn Clock>) -> Result<Self, AuthorityError> {
        Self::open_with(dir, Config::load(dir)?, pass, None, clock)
    }

    /// Like [`Authority::open`] with a config the caller read (and perhaps
    /// adjusted, e.g. [`Config::set_database`]).
    pub fn open_with_config(
        dir: &Path,
        cfg: Config,
        pass: &Passphrase,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuthorityError> {
        Self::open_with(dir, cfg, pass, None, clock)
    }

    /// Like [`Authority::open_with_config`], with the token's PIN when the CA
    /// keys are in an HSM (`None`: from `$IOTPKI_PIN`, if the config names a token).
    pub fn open_with(
        dir: &Path,
        cfg: Config,
        pass: &Passphrase,
        pin: Option<&Pin>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuthorityError> {
        let store = open_store(dir, &cfg)?;
        Self::with_store(dir, cfg, pass, pin, store, clock)
    }

    /// Like [`Authority::open`], with the token's PIN when the CA keys are in
    /// an HSM (`None`: from `$IOTPKI_PIN`, if the config names a token).
    pub fn open_with_pin(
        dir: &Path,
        pass: &Passphrase,
        pin: Option<&Pin>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuthorityError> {
        Self::open_with(dir, Config::load(dir)?, pass, pin, clock)
    }

    /// Like [`Authority::open_with_pin`] with a store given by the caller.
    pub fn with_store(
        dir: &Path,
        cfg: Config,
        pass: &Passphrase,
        pin: Option<&Pin>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuthorityError> {
        let token = match &cfg.hsm {
            Some(h) => {
                let pin = match pin {
                    Some(p) => p.clone(),
                    None => Pin::from_file_or_env(None)?,
                };
                let module = keyfile::resolve(dir, &h.module);
                let token = iotpki_hsm::Token::open(&module, &iotpki_hsm::Pkcs11Uri::parse(&h.token)?)?;
                token.check_pin(&pin)?;
                Some((token, pin))
            }
            None => None,
        };
        let mut root_der = None;
        let mut retiring = Vec::new();
        let mut older = Vec::new();
        let mut issuing = Vec::new();
        for ca in &cfg.ca {
            let cert_der = read_cert_pem(&keyfile::resolve(dir, &ca.cert))?.remove(0);
            match ca.role {
                config::CaRole::Root => {
                    root_der = Some(cert_der);
                    continue;
                }
                config::CaRole::Retiring => {
                    retiring.push(cert_der);
                    continue;
                }
                config::CaRole::Issuing => {}
            }
            for o in &ca.older_certs {
                older.push(read_cert_pem(&keyfile::resolve(dir, o))?.remove(0));
            }
            let key: Box<dyn Signer> = match (&ca.key, &ca.key_uri, &token) {
                (Some(file), _, _) => Box::new(keyfile::read_encrypted(&keyfile::resolve(dir, file), pass)?),
                (None, Some(uri), Some((token, pin))) => {
                    Box::new(iotpki_hsm::HsmKey::open(token, pin, &iotpki_hsm::Pkcs11Uri::parse(uri)?)?)
                }
                _ => return Err(AuthorityError::Config(format!("CA {}: no key configured", ca.name))),
            };
            let info = profile::cert_info(&cert_der)?;
            if keys::spki_fingerprint(key.public_key_der()) != info.spki_sha256 {
                return Err(AuthorityError::Config(format!("CA {}: key does not match certificate", ca.name)));
            }
            let key_id = info.ski.clone().ok_or_else(|| AuthorityError::Config(format!("CA {}: no SKI", ca.name)))?;
            issuing.push(Arc::new(CaKey {
                name: ca.name.clone(),
                subject: info.cert.tbs_certificate.subject.clone(),
                cert: info.cert.clone(),
                not_after: info.not_after,
                key_id,
                cert_der,
                signer: key,
                public_http_url: cfg.server.public_http_url.clone(),
                crl_shards: ca.crl_shards,
            }));
        }
        let root_der = root_der.ok_or_else(|| AuthorityError::Config("no root CA".into()))?;
        // The store must be this authority's: a node pointed at another
        // authority's database (or an empty one) would record into the wrong state.
        let root_serial = profile::cert_info(&root_der)?.serial;
        match store.certificate(&root_serial)? {
            Some(rec) if rec.der == root_der => {}
            _ => {
                return Err(AuthorityError::Config(format!(
                    "the store does not hold this authority's root certificate (serial {root_serial}): it is another \
                     authority's or empty. Check store.database / store.sqlite in {} and --database / \
                     $IOTPKI_DATABASE",
                    dir.join(config::CONFIG_FILE).display()
                )))
            }
        }
        let mut labels = HashMap::new();
        for l in &cfg.label {
            let ca = issuing
                .iter()
                .find(|c| c.name == l.ca)
                .cloned()
                .ok_or_else(|| AuthorityError::Config(format!("label {}: no CA {}", l.name, l.ca)))?;
            let allowed = l.allowed_keys.iter().map(|k| KeyType::from_policy_name(k)).collect::<Result<Vec<_>, _>>()?;
            let cacerts = pkcs7::certs_only(&[&ca.cert_der, &root_der])?;
            let validity_secs = (l.validity_days > 0).then(|| i64::from(l.validity_days) * 86_400);
            labels.insert(l.name.clone(), Label { name: l.name.clone(), ca, validity_secs, allowed, cacerts });
        }
        let server_chain = read_cert_pem(&keyfile::resolve(dir, &cfg.server.cert))?;
        let server_key = keyfile::read_encrypted(&keyfile::resolve(dir, &cfg.server.key), pass)?.to_pkcs8()?;
        let mut anchors = Vec::new();
        for der in std::iter::once(&root_der).chain(retiring.iter()) {
            anchors.push(
                webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                    .map_err(|e| AuthorityError::Config(format!("root certificate: {e}")))?
                    .to_owned(),
            );
        }
        let intermediates = issuing
            .iter()
            .map(|c| CertificateDer::from(c.cert_der.clone()))
            .chain(older.into_iter().map(CertificateDer::from))
            .collect();
        let refusals =
            refusals::RefusalAudit::new(cfg.limits.refusal_audit_window_secs, cfg.limits.refusal_audit_individual);
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg,
            root_der,
            labels,
            issuing,
            store,
            clock,
            server_chain,
            server_key,
            anchors,
            retiring,
            intermediates,
            crls: std::sync::Mutex::new(HashMap::new()),
            revoked_lists: std::sync::Mutex::new(HashMap::new()),
            ocsp_signers: std::sync::Mutex::new(HashMap::new()),
            ocsp_cache: std::sync::Mutex::new(ocsp_cache::OcspCache::default()),
            arl_warned: std::sync::atomic::AtomicI64::new(i64::MIN),
            tpm_challenges: attest::Challenges::default(),
            verified_paths: VerifiedPaths::default(),
            refusals,
        })
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
        self.labels.get(n).ok_or_else(|| AuthorityError::NotFound(format!("no EST label {n:?}")))
    }

    /// Whether `ca` (a CA name) issues birth certificates: the CA of the
    /// `birth` label (the manufacturing CA). Its device certificates come only
    /// from [`Self::station_birth`], under a batch's rules; every other path
    /// that would sign under it is refused ([`Self::issue_device`] checks).
    pub fn is_birth_ca(&self, ca: &str) -> bool {
        self.labels.get(BIRTH_LABEL).is_some_and(|l| l.ca.name == ca)
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

    /// The current CRL (DER) of the issuing CA `ca`, complete (every
    /// certificate it revoked): cached, made again when something was revoked
    /// since or half its validity has passed.
    pub fn crl(&self, ca: &str) -> Result<Vec<u8>, AuthorityError> {
        self.crl_scoped(ca, None)
    }

    /// The current CRL (DER) of the issuing CA `ca`: complete when `shard` is
    /// `None`, else shard `k` of `s` of its partitioned CRL
    /// ([`iotpki_core::crl::shard_path`]): the revoked certificates of that
    /// shard, with a critical issuingDistributionPoint naming its URL. Any
    /// valid shard count is served, so certificates issued under an earlier
    /// count stay covered. Cached; made again when its own entries changed or
    /// half its validity has passed.
    pub fn crl_scoped(&self, ca: &str, shard: Option<(u32, u32)>) -> Result<Vec<u8>, AuthorityError> {
        if shard.is_none() && self.cfg.ca.iter().any(|c| c.name == ca && c.role != config::CaRole::Issuing) {
            return self.arl(ca);
        }
        if let Some((s, k)) = shard {
            if !iotpki_core::crl::valid_shard_count(s) || k >= s {
                return Err(AuthorityError::NotFound(format!(
                    "no CRL shard {k} of {s}: shard counts are powers of two from 2 to {}",
                    iotpki_core::crl::MAX_SHARDS
                )));
            }
        }
        let key = self
            .issuing
            .iter()
            .find(|c| c.name == ca)
            .ok_or_else(|| AuthorityError::NotFound(format!("no issuing CA named {ca:?}")))?;
        let scope_url = match shard {
            None => None,
            Some((s, k)) => {
                let base = key.public_http_url.as_ref().ok_or_else(|| {
                    AuthorityError::NotFound(format!(
                        "CA {ca} has no partitioned CRLs (the authority has no server.public_http_url)"
                    ))
                })?;
                Some(format!("{base}{}", iotpki_core::crl::shard_path(ca, s, k)))
            }
        };
        let cache_key = CrlScope { ca: ca.to_string(), shard };
        let now = self.clock.now();
        let mark = self.store.revocation_mark(ca)?;
        let fresh = |c: &revocation::Cached| now < c.this_update + revocation::CRL_VALIDITY_SECS / 2;
        let mut cache = self.crls.lock().map_err(|_| AuthorityError::Config("CRL cache poisoned".into()))?;
        if let Some(c) = cache.get(&cache_key) {
            if c.mark == mark && fresh(c) {
                return Ok(c.der.clone());
            }
        }
        let all = self.revoked_list(ca, mark)?;
        // An entry stays until its certificate has been expired for a while
        // (RFC 5280 3.3: at least one regularly scheduled CRL after its expiry
        // lists it); after that it leaves, so a CRL holds about one
        // certificate lifetime of revocations, not every one ever made.
        let revoked: Vec<iotpki_core::crl::Revoked> = all
            .iter()
            .filter(|r| r.not_after.saturating_add(revocation::EXPIRED_KEPT_SECS) > now)
            .filter(|r| shard.is_none_or(|(s, k)| iotpki_core::crl::shard_of(&r.serial, s) == Some(k)))
            .map(|r| iotpki_core::crl::Revoked { serial: r.serial.clone(), at: r.revoked_at, reason: r.reason })
            .collect();
        let digest = revocation::entries_digest(&revoked);
        if let Some(c) = cache.get_mut(&cache_key) {
            // A revocation in another shard: this one's entries are the same.
            if c.entries == digest && fresh(c) {
                c.mark = mark;
                return Ok(c.der.clone());
            }
        }
        let audit = AuditEvent {
            at: now,
            actor: "authority".into(),
            action: "crl.issue".into(),
            target: match shard {
                None => ca.to_string(),
                Some((s, k)) => format!("{ca}/{s}/{k}"),
            },
            detail: format!("entries={}", revoked.len()),
        };
        let number = self.store.next_crl_number(ca, audit)?;
        let der = iotpki_core::crl::build_scoped(
            &key.issuer(),
            number,
            now,
            now + revocation::CRL_VALIDITY_SECS,
            &revoked,
            scope_url.as_deref(),
        )?;
        cache.insert(cache_key, revocation::Cached { der: der.clone(), mark, this_update: now, entries: digest });
        Ok(der)
    }

    /// The ARL of root `root` (current or retiring), as `iotpki ca sign-arl`
    /// (or init, or rotation) last signed and published it: the server never
    /// holds a root key, so it serves the stored one, never makes one. A
    /// stale one (past its nextUpdate) is still served: the relying party
    /// decides. Within [`revocation::ARL_WARN_SECS`] of its nextUpdate, or
    /// past it, the log says so (at most hourly) so that an operator signs
    /// the next.
    pub fn arl(&self, root: &str) -> Result<Vec<u8>, AuthorityError> {
        let art = self.store.artifact(&revocation::arl_kind(root))?.ok_or_else(|| {
            AuthorityError::NotFound(format!(
                "root {root} has no revocation list yet: sign one with `iotpki ca sign-arl` (it needs the root key)"
            ))
        })?;
        let now = self.clock.now();
        if let Ok(next) = iotpki_core::crl::next_update(&art.body) {
            let last = self.arl_warned.load(std::sync::atomic::Ordering::Relaxed);
            if next <= now.saturating_add(revocation::ARL_WARN_SECS) && now.saturating_sub(last) >= 3600 {
                self.arl_warned.store(now, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    root,
                    next_update = %iotpki_core::time::rfc3339(next),
                    "the root's ARL is stale or nearly so: sign the next with `iotpki ca sign-arl`"
                );
            }
        }
        Ok(art.body)
    }

    /// The CA's revoked certificates as of `mark`, read from the store once per mark.
    fn revoked_list(&self, ca: &str, mark: (u64, i64)) -> Result<Arc<Vec<iotpki_store::RevokedCert>>, AuthorityError> {
        let mut lists =
            self.revoked_lists.lock().map_err(|_| AuthorityError::Config("revoked list cache poisoned".into()))?;
        if let Some(l) = lists.get(ca) {
            if l.mark == mark {
                return Ok(l.entries.clone());
            }
        }
        let entries = Arc::new(self.store.revoked(ca)?);
        lists.insert(ca.into(), revocation::RevokedList { mark, entries: entries.clone() });
        Ok(entries)
    }

    /// The CRLs this node keeps fresh ([`Self::crl_scoped`]): the complete CRL
    /// of each issuing CA, and every shard someone asked for; and each root's
    /// ARL, which it cannot sign but looks at (a warning in the log when it
    /// is missing or within [`revocation::ARL_WARN_SECS`] of its nextUpdate).
    pub fn crl_scopes(&self) -> Vec<CrlScope> {
        let mut out: Vec<CrlScope> = self
            .cfg
            .ca
            .iter()
            .filter(|c| c.role != config::CaRole::Issuing)
            .map(|c| CrlScope { ca: c.name.clone(), shard: None })
            .chain(self.issuing.iter().map(|c| CrlScope { ca: c.name.clone(), shard: None }))
            .collect();
        if let Ok(cache) = self.crls.lock() {
            out.extend(cache.keys().filter(|k| k.shard.is_some()).cloned());
        }
        out
    }

    /// Answer an OCSP request (DER) with an OCSP response (DER), always: a
    /// malformed request gets `malformedRequest`, one about a CA we do not
    /// serve `unauthorized`, our own failure `internalError` (logged).
    /// Answers without a nonce are cached until something is revoked or half
    /// their validity has passed.
    pub fn ocsp(&self, request: &[u8]) -> Vec<u8> {
        match self.ocsp_inner(request) {
            Ok(der) => der,
            Err(e) => {
                tracing::error!(error = %e, "OCSP answer failed");
                x509_ocsp_internal_error()
            }
        }
    }

    fn ocsp_inner(&self, request: &[u8]) -> Result<Vec<u8>, AuthorityError> {
        let Ok(req) = iotpki_core::ocsp::parse_request(request) else { return Ok(iotpki_core::ocsp::malformed()) };
        let found =
            self.issuing.iter().find(|c| req.cert_ids.iter().all(|id| iotpki_core::ocsp::issued_by(id, &c.cert)));
        let Some(ca) = found.cloned() else { return Ok(iotpki_core::ocsp::unauthorized()) };
        let now = self.clock.now();
        let mark = self.store.revocation_mark(&ca.name)?;
        // Only one certificate's answer, without a nonce, is cached, keyed by its CertID.
        let cache_key = match (req.nonce.is_none(), req.cert_ids.as_slice()) {
            (true, [id]) => id.to_der().ok(),
            _ => None,
        };
        if let Some(key) = &cache_key {
            let cache = self.ocsp_cache.lock().map_err(|_| AuthorityError::Config("OCSP cache poisoned".into()))?;
            if let Some(c) = cache.get(key) {
                if c.ca == ca.name && c.mark == mark && now < c.produced + revocation::OCSP_VALIDITY_SECS / 2 {
                    return Ok(c.der.clone());
                }
            }
        }
        let mut answers = Vec::with_capacity(req.cert_ids.len());
        for id in &req.cert_ids {
            let serial = hex::encode(id.serial_number.as_bytes());
            let status = match self.store.certificate(&serial)? {
                Some(rec) if rec.ca == ca.name => match rec.status {
                    CertStatus::Good => iotpki_core::ocsp::Status::Good,
                    CertStatus::Revoked { at, reason } => iotpki_core::ocsp::Status::Revoked { at, reason },
                },
                _ => iotpki_core::ocsp::Status::Unknown,
            };
            answers.push((id.clone(), status));
        }
        // An answer about a serial we never issued is not kept: anyone can ask about any number.
        let known = answers.iter().all(|(_, s)| !matches!(s, iotpki_core::ocsp::Status::Unknown));
        let signer = self.ocsp_signer(&ca, now)?;
        let der = iotpki_core::ocsp::respond(
            &signer.key,
            &signer.cert_der,
            now,
            now + revocation::OCSP_VALIDITY_SECS,
            &answers,
            req.nonce,
        )?;
        if let (Some(key), true) = (cache_key, known) {
            let mut cache = self.ocsp_cache.lock().map_err(|_| AuthorityError::Config("OCSP cache poisoned".into()))?;
            cache.insert(key, ocsp_cache::Cached { der: der.clone(), ca: ca.name.clone(), mark, produced: now });
        }
        Ok(der)
    }

    /// Answers in the OCSP cache, and their bytes (for tests and metrics).
    pub fn ocsp_cache_size(&self) -> (usize, usize) {
        self.ocsp_cache.lock().map(|c| c.size()).unwrap_or_default()
    }

    /// The CA's delegated OCSP signer, made (and recorded) when first needed
    /// or when its certificate has less than a quarter of its life left.
    fn ocsp_signer(&self, ca: &Arc<CaKey>, now: i64) -> Result<Arc<revocation::OcspSigner>, AuthorityError> {
        let mut signers =
            self.ocsp_signers.lock().map_err(|_| AuthorityError::Config("OCSP signers poisoned".into()))?;
        if let Some(s) = signers.get(&ca.name) {
            if now < s.not_after - revocation::OCSP_SIGNER_SECS / 4 {
                return Ok(s.clone());
            }
        }
        let key = SoftKey::generate(KeyType::from_name(&self.cfg.key_type)?)?;
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der())
            .map_err(|e| AuthorityError::Config(format!("OCSP key: {e}")))?;
        let (sn, sn_hex) = serial::system_random_serial(now)?;
        let subject = name::NameBuilder::default()
            .organization(&self.cfg.organization)?
            .common_name(&format!("{} {} OCSP responder", self.cfg.organization, ca.name))?
            .build();
        let params = CertParams {
            profile: Profile::OcspSigner,
            serial: sn,
            subject,
            spki,
            not_before: now - BACKDATE_SECS,
            not_after: now + revocation::OCSP_SIGNER_SECS,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let record = ca.sign(&params, sn_hex.clone(), None, None, now)?;
        let signer =
            Arc::new(revocation::OcspSigner { key, cert_der: record.der.clone(), not_after: record.not_after });
        let audit = AuditEvent {
            at: now,
            actor: "authority".into(),
            action: "ocsp.signer".into(),
            target: sn_hex,
            detail: format!("ca={}", ca.name),
        };
        self.store.record_issuance(Issuance { cert: record, preconditions: vec![], audit })?;
        signers.insert(ca.name.clone(), signer.clone());
        Ok(signer)
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

    /// EST `simpleenroll`: a first enrollment. Either a device with a one-time
    /// token (HTTP Basic), or a factory station with its certificate asking
    /// for a device's birth certificate in `batch`. `body` is the request body
    /// as received (base64 of a DER PKCS#10).
    pub fn simple_enroll(
        &self,
        label: Option<&str>,
        cred: Credential<'_>,
        batch: Option<&str>,
        body: &[u8],
    ) -> Result<Enrolled, AuthorityError> {
        self.simple_enroll_attested(label, cred, batch, None, body)
    }

    /// [`Self::simple_enroll`], with the answer to a TPM attestation challenge
    /// (its id and the secret the device's TPM recovered) for a station's
    /// enrollment in a batch that requires attestation ([`attest`]).
    pub fn simple_enroll_attested(
        &self,
        label: Option<&str>,
        cred: Credential<'_>,
        batch: Option<&str>,
        activation: Option<(&str, &[u8])>,
        body: &[u8],
    ) -> Result<Enrolled, AuthorityError> {
        let (r, counted) = match (cred, batch) {
            (Credential::ClientCert(chain), Some(batch)) => match self.authenticate_station(chain) {
                // Only an authenticated station's refusals count against the batch:
                // anyone else could inflate its counters.
                Ok(station) => (self.station_birth(label, station, batch, activation, body), Some(batch)),
                Err(e) => (Err(e), None),
            },
            (_, Some(_)) => (
                Err(AuthorityError::Unauthorized(
                    "an enrollment for a batch needs a factory station's certificate (mutual TLS)".into(),
                )),
                None,
            ),
            // A device with its birth certificate: commissioning by its owner.
            (Credential::ClientCert(chain), None) => (self.commission(label, chain, body), None),
            (_, None) => (self.enroll_inner(label, cred, body), None),
        };
        self.audit_refusal(&r, cred, counted, "refuse.enroll");
        r
    }

    /// EST `simplereenroll`: renewal authenticated by the current certificate
    /// (mutual TLS). Subject and subjectAltName must be those of the current
    /// certificate (RFC 7030 section 4.2.2).
    pub fn simple_reenroll(
        &self,
        label: Option<&str>,
        cred: Credential<'_>,
        body: &[u8],
    ) -> Result<Enrolled, AuthorityError> {
        let r = self.reenroll_inner(label, cred, body);
        self.audit_refusal(&r, cred, None, "refuse.reenroll");
        r
    }

    /// Write a refusal (never our own failures) to the audit log, counted
    /// against `batch` when the request named one; past the window's budget
    /// of single entries, counted for a summary ([`refusals`]).
    fn audit_refusal<T>(&self, r: &Result<T, AuthorityError>, cred: Credential<'_>, batch: Option<&str>, action: &str) {
        let Err(e) = r else { return };
        if !e.is_refusal() {
            return;
        }
        let ev = AuditEvent {
            at: self.clock.now(),
            actor: actor_of(cred),
            action: action.into(),
            target: batch.map(|b| format!("batch:{b}")).unwrap_or_default(),
            detail: e.public_message(),
        };
        self.refusals.record(self.store.as_ref(), batch, ev, e.http_status());
    }

    /// Write the refusals counted in the current window to the audit log now
    /// (the server calls this every window and when it shuts down); returns
    /// how many refusals the entries written sum up.
    pub fn flush_refusals(&self) -> u64 {
        self.refusals.flush(self.store.as_ref())
    }

    /// Whether the caller of an endpoint is who the endpoint needs, before
    /// its request body is read: the server asks this first, so that no byte
    /// of a body is buffered for a caller that will be refused anyway. The
    /// full check runs again with the body; a refusal here is audited as the
    /// endpoint's (`refuse.enroll`, `refuse.sync`, ...).
    /// `label` is the EST label the request names, if any.
    pub fn admit(&self, gate: Gate, label: Option<&str>, cred: Credential<'_>) -> Result<(), AuthorityError> {
        let (r, action) = match gate {
            Gate::Station(action) => {
                let r = match cred {
                    Credential::ClientCert(chain) => self.authenticate_station(chain).map(|_| ()),
                    _ => Err(AuthorityError::Unauthorized(
                        "a factory station's certificate is needed (mutual TLS)".into(),
                    )),
                };
                (r, action)
            }
            Gate::Certificate(action) => {
                let r = match cred {
                    // A superseded certificate passes here; the re-enrollment only
                    // gives it its successor again (see `authenticate_renewable`).
                    Credential::ClientCert(chain) => self.authenticate_renewable(chain).map(|_| ()),
                    _ => Err(AuthorityError::Unauthorized(
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
                return self.admin(chain).map(|_| ());
            }
            Gate::Enroll => (self.admit_label(label, cred).and_then(|()| self.admit_enroll(cred)), "refuse.enroll"),
        };
        self.audit_refusal(&r, cred, None, action);
        r
    }

    /// A first enrollment's label: it must exist and must not be the birth
    /// label (births come only from a station on the line), whoever calls.
    fn admit_label(&self, label: Option<&str>, cred: Credential<'_>) -> Result<(), AuthorityError> {
        let label = self.label(label)?;
        if !self.is_birth_ca(&label.ca.name) {
            return Ok(());
        }
        Err(AuthorityError::Forbidden(match cred {
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
    fn admit_enroll(&self, cred: Credential<'_>) -> Result<(), AuthorityError> {
        match cred {
            Credential::Token { user, password } => {
                let device = DeviceSerial::parse(user).map_err(|_| {
                    AuthorityError::Unauthorized(format!(
                        "the Basic user must be a device serial (1 to 64 printable characters; got {} bytes)",
                        user.len()
                    ))
                })?;
                tokens::precheck(self.store.as_ref(), &tokens::hash(password), &device, self.clock.now()).map(|_| ())
            }
            Credential::ClientCert(chain) => self.check_birth(chain).map(|_| ()),
            Credential::None => Err(AuthorityError::Unauthorized(
                "enrollment needs a one-time token: HTTP Basic with the device serial as user and the token as password"
                    .into(),
            )),
        }
    }

    fn enroll_inner(&self, label: Option<&str>, cred: Credential<'_>, body: &[u8]) -> Result<Enrolled, AuthorityError> {
        let label = self.label(label)?;
        if self.is_birth_ca(&label.ca.name) {
            return Err(AuthorityError::Forbidden(format!(
                "label {} issues birth certificates: {BIRTH_ONLY_ON_THE_LINE}",
                label.name
            )));
        }
        let (user, password) = match cred {
            Credential::Token { user, password } => (user, password),
            _ => {
                return Err(AuthorityError::Unauthorized(
                    "enrollment needs a one-time token: HTTP Basic with the device serial as user and the token as password"
                        .into(),
                ))
            }
        };
        let device = DeviceSerial::parse(user)
            .map_err(|e| AuthorityError::Unauthorized(format!("the Basic user must be a device serial: {e}")))?;
        let token_hash = tokens::hash(password);
        let now = self.clock.now();
        // Cheap pre-check, so a bad token costs no signature; the store re-checks in the transaction.
        let state = tokens::precheck(self.store.as_ref(), &token_hash, &device, now)?;
        let der = est::decode_body(body)?;
        let req = csr::parse_and_verify(&der)?;
        if let tokens::TokenState::Spent { cert_serial, used_at } = state {
            return self.replay(label, &device, &cert_serial, used_at, &req);
        }
        self.check_key(label, req.key_type)?;
        check_requested_serial(&req.subject, device.as_str(), "the token")?;
        let subject = name::device_subject(&self.cfg.organization, &device)?;
        let issued = self.issue_device(
            label,
            subject,
            &req,
            Some(device.to_string()),
            None,
            vec![Precondition::ConsumeToken { token_hash: token_hash.clone(), device_serial: device.to_string(), now }],
            format!("device:{device}"),
            "enroll",
            None,
        );
        match issued {
            // Lost a race for this token to a request with the same key (a client retrying
            // before its first answer came): answer with the certificate that request got.
            Err(AuthorityError::Unauthorized(_)) => {
                match tokens::precheck(self.store.as_ref(), &token_hash, &device, now)? {
                    tokens::TokenState::Spent { cert_serial, used_at } => {
                        self.replay(label, &device, &cert_serial, used_at, &req)
                    }
                    tokens::TokenState::Fresh => issued,
                }
            }
            other => other,
        }
    }

    /// A retry with a spent token: if the request proves possession of the
    /// very key the token's certificate was issued for (same device, same
    /// label), the answer is that certificate again. Nothing new is issued;
    /// an answer lost on the way (network, power cut) is not a lost identity.
    fn replay(
        &self,
        label: &Label,
        device: &DeviceSerial,
        cert_serial: &str,
        used_at: i64,
        req: &csr::VerifiedCsr,
    ) -> Result<Enrolled, AuthorityError> {
        let used = || AuthorityError::from(StoreError::TokenUsed { used_at });
        let Some(rec) = self.store.certificate(cert_serial)? else { return Err(used()) };
        if rec.spki_sha256 != keys::spki_fingerprint(&req.spki_der)
            || rec.ca != label.ca.name
            || rec.device_serial.as_deref() != Some(device.as_str())
        {
            return Err(used());
        }
        if let CertStatus::Revoked { .. } = rec.status {
            return Err(AuthorityError::Forbidden(format!(
                "enrollment token already used for certificate {cert_serial}, which is revoked: ask the operator \
                 for a new token (iotpki token create)"
            )));
        }
        self.store.append_audit(AuditEvent {
            at: self.clock.now(),
            actor: format!("device:{device}"),
            action: "enroll.replay".into(),
            target: rec.serial.clone(),
            detail: "same token and key: the certificate issued before is sent again".into(),
        })?;
        let pkcs7 = pkcs7::certs_only(&[&rec.der])?;
        Ok(Enrolled { cert_der: rec.der, serial: rec.serial, pkcs7 })
    }

    /// A birth certificate for a device on the factory line, asked for by a
    /// station with its certificate: the station must be authorised for the
    /// batch, and the request (made on the device) must carry the device's
    /// serial; the store checks quota, allowlist and one birth per serial in
    /// the issuance's transaction.
    fn station_birth(
        &self,
        label: Option<&str>,
        station: (StationRecord, DeviceIdentity),
        batch: &str,
        activation: Option<(&str, &[u8])>,
        body: &[u8],
    ) -> Result<Enrolled, AuthorityError> {
        let label = self.label(label)?;
        if label.ca.name != station.1.record.ca {
            return Err(AuthorityError::Forbidden(format!(
                "station enrollments go to a label of CA {} (label {} issues from CA {})",
                station.1.record.ca, label.name, label.ca.name
            )));
        }
        let der = est::decode_body(body)?;
        let req = csr::parse_and_verify(&der)?;
        self.check_key(label, req.key_type)?;
        let in_csr = name::serial_numbers(&req.subject);
        let [serial] = in_csr.as_slice() else {
            return Err(AuthorityError::BadRequest(format!(
                "the device's request must carry exactly one serialNumber (found {})",
                in_csr.len()
            )));
        };
        let device = DeviceSerial::parse(serial).map_err(|e| AuthorityError::BadRequest(e.to_string()))?;
        let subject = name::device_subject(&self.cfg.organization, &device)?;
        let now = self.clock.now();
        // A batch that requires TPM attestation: the device proved, through a
        // challenge, that this very key is in the TPM registered for its serial.
        let mut note = None;
        if attest::required(self.store.as_ref(), batch)? {
            if !st_authorized(&station.0, batch) {
                return Err(
                    StoreError::StationNotAuthorized { station: station.0.name.clone(), batch: batch.into() }.into()
                );
            }
            let (id, secret) = activation.ok_or_else(|| {
                AuthorityError::Forbidden(format!(
                    "batch {batch} requires TPM attestation and device {device} did not prove its key is in a TPM \
                     (a key in a file or a PKCS#11 token cannot): give it a TPM keystore, with its EK registered \
                     (batch add-ek)"
                ))
            })?;
            let spki = iotpki_core::keys::spki_fingerprint(
                &req.spki.to_der().map_err(|e| AuthorityError::BadRequest(e.to_string()))?,
            );
            let ek = self.tpm_challenges.check(now, id, secret, batch, device.as_str(), &spki)?;
            note = Some(format!("tpm-ek={ek}"));
        }
        self.issue_device(
            label,
            subject,
            &req,
            Some(device.to_string()),
            None,
            vec![Precondition::Birth {
                batch: batch.to_string(),
                station: station.0.name.clone(),
                device_serial: device.to_string(),
                now,
            }],
            format!("station:{}", station.0.name),
            "birth",
            note.as_deref(),
        )
    }

    /// A TPM attestation challenge for device `serial` of `batch`, asked by a
    /// station for the key whose TPMT_PUBLIC is `public_area`; `None` when the
    /// batch does not require attestation.
    pub fn tpm_challenge(
        &self,
        chain: &[CertificateDer<'_>],
        batch: &str,
        serial: &str,
        public_area: &[u8],
    ) -> Result<Option<attest::Challenge>, AuthorityError> {
        // Like a birth's, the refusal of an authorised station counts against the batch.
        let (r, counted) = match self.authenticate_station(chain) {
            Ok((st, _)) if !st_authorized(&st, batch) => {
                (Err(StoreError::StationNotAuthorized { station: st.name, batch: batch.into() }.into()), None)
            }
            Ok(_) => (self.tpm_challenge_inner(batch, serial, public_area), Some(batch)),
            Err(e) => (Err(e), None),
        };
        self.audit_refusal(&r, Credential::ClientCert(chain), counted, "refuse.tpm-challenge");
        r
    }

    fn tpm_challenge_inner(
        &self,
        batch: &str,
        serial: &str,
        public_area: &[u8],
    ) -> Result<Option<attest::Challenge>, AuthorityError> {
        if !attest::required(self.store.as_ref(), batch)? {
            return Ok(None);
        }
        let serial = DeviceSerial::parse(serial).map_err(|e| AuthorityError::BadRequest(e.to_string()))?;
        let now = self.clock.now();
        Ok(Some(self.tpm_challenges.issue(self.store.as_ref(), now, batch, serial.as_str(), public_area)?))
    }

    /// A station authenticated by its certificate, with that certificate's identity.
    fn authenticate_station(
        &self,
        chain: &[CertificateDer<'_>],
    ) -> Result<(StationRecord, DeviceIdentity), AuthorityError> {
        let id = self.authenticate(chain)?;
        if id.record.profile != Profile::Station.name() {
            return Err(AuthorityError::Forbidden(format!(
                "a {} certificate is not a factory station's",
                id.record.profile
            )));
        }
        let st = self
            .store
            .station_by_cert(&id.record.serial)?
            .ok_or_else(|| AuthorityError::Forbidden(format!("no station holds certificate {}", id.record.serial)))?;
        if let StationStatus::Revoked { .. } = st.status {
            return Err(StoreError::StationRevoked { station: st.name }.into());
        }
        Ok((st, id))
    }

    /// What a station may know of one of its batches: the record and up to
    /// `limit` serials of its allowlist that are not born yet, in order.
    pub fn station_batch(
        &self,
        chain: &[CertificateDer<'_>],
        batch: &str,
        limit: u32,
    ) -> Result<(BatchRecord, Vec<String>), AuthorityError> {
        let (st, _) = self.authenticate_station(chain)?;
        if !st.batches.iter().any(|b| b == batch) {
            return Err(StoreError::StationNotAuthorized { station: st.name, batch: batch.into() }.into());
        }
        let rec = self.store.batch(batch)?.ok_or_else(|| StoreError::BatchUnknown { batch: batch.into() })?;
        Ok((rec, self.store.unborn_serials(batch, limit.min(100_000))?))
    }

    /// Certify a new factory station `name` for `batches` (admin). Its key was
    /// made on the station: only its public key (`spki_der`) comes here. The
    /// certificate comes from the CA of the `birth` label (default: the
    /// manufacturing CA). Returns the certificate and its issuing chain.
    pub fn add_station(
        &self,
        name: &str,
        batches: &[String],
        spki_der: &[u8],
        actor: &str,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), AuthorityError> {
        factory::check_name("station name", name)?;
        if batches.is_empty() {
            return Err(AuthorityError::BadRequest("a station needs at least one batch (--batches B1,B2)".into()));
        }
        for b in batches {
            factory::check_name("batch id", b)?;
        }
        let ca = &self.label(Some(BIRTH_LABEL))?.ca;
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(spki_der)
            .map_err(|e| AuthorityError::BadRequest(format!("station public key: {e}")))?;
        let now = self.clock.now();
        let (sn, sn_hex) = serial::system_random_serial(now)?;
        let subject = name::NameBuilder::default()
            .organization(&self.cfg.organization)?
            .organizational_unit("Factory stations")?
            .common_name(name)?
            .build();
        let params = CertParams {
            profile: Profile::Station,
            serial: sn,
            subject: subject.clone(),
            spki,
            not_before: now - BACKDATE_SECS,
            not_after: now + 2 * 365 * 86_400,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let cert = ca.sign(&params, sn_hex.clone(), None, None, now)?;
        let station = StationRecord {
            name: name.into(),
            cert_serial: sn_hex.clone(),
            batches: batches.to_vec(),
            status: StationStatus::Active,
            created_at: now,
        };
        let audit = AuditEvent {
            at: now,
            actor: actor.into(),
            action: "station.add".into(),
            target: name.into(),
            detail: format!("cert={sn_hex} batches={}", batches.join(",")),
        };
        let der = cert.der.clone();
        self.store.add_station(station, cert, audit)?;
        Ok((der, vec![ca.cert_der.clone()]))
    }

    /// Certify a station's offline sub-CA for `batch` (admin), for all the
    /// batch's serials not born yet: see [`Self::delegate_station_serials`].
    pub fn delegate_station(
        &self,
        station: &str,
        batch: &str,
        spki_der: &[u8],
        actor: &str,
    ) -> Result<Delegated, AuthorityError> {
        self.delegate_station_serials(station, batch, spki_der, None, actor)
    }

    /// Certify a station's offline sub-CA for `batch` (admin): issued by the
    /// `birth` label's CA, path length 0, valid only inside the batch's window,
    /// and name-constrained to exactly the device names of the serials it may
    /// give birth to (`O=org, OU=batch, CN=serial, serialNumber=serial`, one
    /// permitted directoryName subtree per serial), so that any RFC 5280
    /// validator refuses a birth it signs for any other serial. The serials are
    /// `serials` (a slice of the batch's allowlist, none born yet) or, when
    /// `None`, every serial of the batch not born yet; at most
    /// [`factory::MAX_DELEGATED_SERIALS`], and the certificate at most
    /// [`factory::MAX_DELEGATED_CERT_BYTES`] (above either: refused, delegate
    /// slices). Its key was made on the station; only `spki_der` comes here.
    /// Returns the certificate and its issuing chain, and the batch's terms for
    /// the station.
    pub fn delegate_station_serials(
        &self,
        station: &str,
        batch: &str,
        spki_der: &[u8],
        serials: Option<&[String]>,
        actor: &str,
    ) -> Result<Delegated, AuthorityError> {
        let rec = self.store.batch(batch)?.ok_or_else(|| StoreError::BatchUnknown { batch: batch.into() })?;
        if attest::required(self.store.as_ref(), batch)? {
            return Err(AuthorityError::Forbidden(format!(
                "batch {batch} requires TPM attestation, which the authority checks online at each birth: \
                 its stations cannot issue offline"
            )));
        }
        let ca = &self.label(Some(BIRTH_LABEL))?.ca;
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(spki_der)
            .map_err(|e| AuthorityError::BadRequest(format!("delegated CA public key: {e}")))?;
        let now = self.clock.now();
        if now >= rec.valid_until {
            return Err(StoreError::BatchOutsideWindow {
                batch: batch.into(),
                from: rec.valid_from,
                until: rec.valid_until,
            }
            .into());
        }
        let unborn = self.store.unborn_serials(batch, u32::try_from(factory::MAX_ALLOWLIST).unwrap_or(u32::MAX))?;
        let allowlist = factory::delegation_slice(batch, &unborn, serials)?;
        let subtrees = allowlist
            .iter()
            .map(|sn| {
                let sn = DeviceSerial::parse(sn).map_err(|e| AuthorityError::Config(format!("allowlist: {e}")))?;
                Ok(name::batch_device_subject(&self.cfg.organization, batch, &sn)?)
            })
            .collect::<Result<Vec<_>, AuthorityError>>()?;
        let (sn, sn_hex) = serial::system_random_serial(now)?;
        let subject = name::NameBuilder::default()
            .organization(&self.cfg.organization)?
            .organizational_unit("Factory stations")?
            .common_name(&format!("{station} offline CA for {batch}"))?
            .build();
        let params = CertParams {
            profile: Profile::DelegatedCa,
            serial: sn,
            subject: subject.clone(),
            spki,
            not_before: rec.valid_from.max(now - BACKDATE_SECS),
            not_after: rec.valid_until,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: Some(subtrees),
        };
        let cert = ca.sign(&params, sn_hex.clone(), None, None, now)?;
        if cert.der.len() > factory::MAX_DELEGATED_CERT_BYTES {
            return Err(AuthorityError::BadRequest(format!(
                "the delegated CA for {} serials of batch {batch} would take {} bytes, above the {} a device's TLS \
                 chain can carry: delegate fewer serials at once (--serials FILE with a slice of the allowlist)",
                allowlist.len(),
                cert.der.len(),
                factory::MAX_DELEGATED_CERT_BYTES
            )));
        }
        let audit = AuditEvent {
            at: now,
            actor: actor.into(),
            action: "station.delegate".into(),
            target: station.into(),
            detail: format!(
                "batch={batch} cert={sn_hex} serials={} first={} last={}",
                allowlist.len(),
                allowlist.first().map(String::as_str).unwrap_or_default(),
                allowlist.last().map(String::as_str).unwrap_or_default()
            ),
        };
        let der = cert.der.clone();
        self.store.add_delegation(station, batch, cert, audit)?;
        let crl_url = ca.public_http_url.as_ref().map(|b| format!("{b}{}", delegated_crl_path(station, batch)));
        Ok(Delegated { cert: der, chain: vec![ca.cert_der.clone()], batch: rec, allowlist, crl_url })
    }

    /// The station's delegated CA for `batch`: its store name and certificate.
    fn delegate_of(&self, station: &str, batch: &str) -> Result<(String, Vec<u8>), AuthorityError> {
        let serial = self.store.delegation(station, batch)?.ok_or_else(|| {
            AuthorityError::Forbidden(format!("station {station} has no delegated CA for batch {batch}"))
        })?;
        let rec = self
            .store
            .certificate(&serial)?
            .ok_or_else(|| AuthorityError::Config(format!("delegated CA {serial} is not in the store")))?;
        Ok((format!("delegated:{station}:{batch}"), rec.der))
    }

    /// What the station's next CRL for its delegated CA of `batch` must say:
    /// the births the authority revoked under it, its cRLNumber, and its
    /// nextUpdate (a week on, or the delegated CA's notAfter once the batch is
    /// closed: the final CRL, which must outlive every birth it covers).
    pub fn delegated_crl_terms(
        &self,
        chain: &[CertificateDer<'_>],
        batch: &str,
    ) -> Result<DelegatedCrlTerms, AuthorityError> {
        let (station, _) = self.authenticate_station(chain)?;
        let (ca, der) = self.delegate_of(&station.name, batch)?;
        let not_after = profile::cert_info(&der)?.not_after;
        let now = self.clock.now();
        let closed = self.store.batch(batch)?.is_some_and(|b| b.status == iotpki_store::BatchStatus::Closed);
        let next_update = if closed { not_after } else { (now + DELEGATED_CRL_SECS).min(not_after) };
        let number = self.store.artifact(&format!("crl/{ca}"))?.map(|a| a.version).unwrap_or(0) + 1;
        let revoked = self
            .store
            .revoked(&ca)?
            .into_iter()
            .map(|r| iotpki_core::crl::Revoked { serial: r.serial, at: r.revoked_at, reason: r.reason })
            .collect();
        Ok(DelegatedCrlTerms { number, next_update, revoked })
    }

    /// A station uploads the CRL it signed with its delegated CA for `batch`:
    /// checked against the delegated certificate (issuer, signature, current),
    /// its number above the last one, its nextUpdate no later than the terms
    /// allow, and its entries exactly the births the authority revoked under
    /// that CA (a station cannot leave one off). Then it is what
    /// `/crl/delegated/STATION/BATCH.crl` serves.
    pub fn upload_delegated_crl(
        &self,
        chain: &[CertificateDer<'_>],
        batch: &str,
        der: &[u8],
    ) -> Result<u64, AuthorityError> {
        let r = (|| {
            let (station, _) = self.authenticate_station(chain)?;
            let terms = self.delegated_crl_terms(chain, batch)?;
            let (ca, cert) = self.delegate_of(&station.name, batch)?;
            let now = self.clock.now();
            let bad = |m: String| AuthorityError::Forbidden(format!("delegated CA CRL for batch {batch}: {m}"));
            let checked = iotpki_core::crl::check(der, &cert, now, BACKDATE_SECS).map_err(|e| bad(e.to_string()))?;
            if checked.number < terms.number {
                return Err(bad(format!(
                    "cRLNumber {} is not above the last one ({})",
                    checked.number,
                    terms.number - 1
                )));
            }
            if checked.next_update > terms.next_update {
                return Err(bad(format!(
                    "nextUpdate {} is later than {} allows",
                    checked.next_update, terms.next_update
                )));
            }
            if checked.scope.is_some() {
                return Err(bad("a delegated CA's CRL is complete (no issuingDistributionPoint)".into()));
            }
            let mut want: Vec<&str> = terms.revoked.iter().map(|r| r.serial.as_str()).collect();
            let mut got: Vec<&str> = checked.revoked.iter().map(String::as_str).collect();
            want.sort_unstable();
            got.sort_unstable();
            if want != got {
                return Err(bad(format!(
                    "it lists {} certificates; the authority revoked {} under this CA (exactly those must be listed)",
                    got.len(),
                    want.len()
                )));
            }
            let audit = AuditEvent {
                at: now,
                actor: format!("station:{}", station.name),
                action: "factory.crl".into(),
                target: format!("batch:{batch}"),
                detail: format!("number={} revoked={} next_update={}", checked.number, got.len(), checked.next_update),
            };
            let art = iotpki_store::Artifact {
                kind: format!("crl/{ca}"),
                version: checked.number,
                body: der.to_vec(),
                published_at: now,
            };
            self.store.publish_artifact(art, audit)?;
            Ok(checked.number)
        })();
        self.audit_refusal(&r, Credential::ClientCert(chain), None, "refuse.factory-crl");
        r
    }

    /// The latest CRL a station uploaded for its delegated CA: `rest` is
    /// `STATION/BATCH.crl` (the path after `/crl/delegated/`).
    pub fn delegated_crl(&self, rest: &str) -> Result<Vec<u8>, AuthorityError> {
        let not_found = || AuthorityError::NotFound(format!("no delegated CA CRL at {rest:?}"));
        let (station, batch) = rest.strip_suffix(".crl").and_then(|r| r.split_once('/')).ok_or_else(not_found)?;
        factory::check_name("station", station).map_err(|_| not_found())?;
        factory::check_name("batch", batch).map_err(|_| not_found())?;
        let a = self.store.artifact(&format!("crl/delegated:{station}:{batch}"))?.ok_or_else(|| {
            AuthorityError::NotFound(format!(
                "station {station} has uploaded no CRL for batch {batch} yet (it does at each factory sync)"
            ))
        })?;
        Ok(a.body)
    }

    /// A station uploads its production record for `batch` (the entries after
    /// the last sync). The chain must continue the synced one and every entry
    /// carry the station's signature; every certificate must come from the
    /// station's delegated CA for this batch, for the entry's serial, inside the
    /// batch's namespace. A forged upload is refused whole. Then every
    /// certificate is recorded: births within the batch's rights, the rest
    /// flagged (off the allowlist, a clone, beyond the quota) and revoked.
    pub fn sync(&self, chain: &[CertificateDer<'_>], batch: &str, record: &str) -> Result<SyncOutcome, AuthorityError> {
        let r = self.sync_inner(chain, batch, record);
        self.audit_refusal(&r, Credential::ClientCert(chain), None, "refuse.sync");
        r
    }

    fn sync_inner(
        &self,
        chain: &[CertificateDer<'_>],
        batch: &str,
        record: &str,
    ) -> Result<SyncOutcome, AuthorityError> {
        let (station, id) = self.authenticate_station(chain)?;
        let entries = iotpki_core::record::parse(record)?;
        let (first, last) = match (entries.first(), entries.last()) {
            (Some(f), Some(l)) => (f.clone(), l.clone()),
            _ => return Err(AuthorityError::BadRequest("the production record upload is empty".into())),
        };
        let (synced, head) = self.store.sync_state(&station.name, batch)?;
        if first.seq != synced + 1 {
            return Err(StoreError::SyncOutOfOrder { expected_seq: synced + 1, got_seq: first.seq }.into());
        }
        iotpki_core::record::verify(&entries, synced + 1, &head, &id.cert.tbs_certificate.subject_public_key_info)
            .map_err(|e| AuthorityError::Forbidden(e.to_string()))?;
        let delegate_serial = self.store.delegation(&station.name, batch)?.ok_or_else(|| {
            AuthorityError::Forbidden(format!("station {} has no delegated CA for batch {batch}", station.name))
        })?;
        let delegate = self
            .store
            .certificate(&delegate_serial)?
            .ok_or_else(|| AuthorityError::Config(format!("delegated CA {delegate_serial} is not in the store")))?;
        let delegate = profile::cert_info(&delegate.der)?;
        let namespace = name::batch_namespace(&self.cfg.organization, batch)?;
        let now = self.clock.now();
        let mut out = Vec::with_capacity(entries.len());
        for e in &entries {
            let bad = |m: String| AuthorityError::Forbidden(format!("production record entry {}: {m}", e.seq));
            if e.batch != batch {
                return Err(bad(format!("names batch {}, not {batch}", e.batch)));
            }
            let der = e.cert_der()?;
            let info = profile::cert_info(&der).map_err(|x| bad(x.to_string()))?;
            let tbs = &info.cert.tbs_certificate;
            let tbs_der = tbs.to_der().map_err(|x| bad(x.to_string()))?;
            let sig = info.cert.signature.as_bytes().ok_or_else(|| bad("malformed signature".into()))?;
            if tbs.issuer != delegate.cert.tbs_certificate.subject
                || keys::verify(
                    &delegate.cert.tbs_certificate.subject_public_key_info,
                    &info.cert.signature_algorithm,
                    &tbs_der,
                    sig,
                )
                .is_err()
            {
                return Err(bad("the certificate was not issued by the station's delegated CA for this batch".into()));
            }
            let serials = name::serial_numbers(&tbs.subject);
            let within =
                tbs.subject.0.len() > namespace.0.len() && tbs.subject.0[..namespace.0.len()] == namespace.0[..];
            if serials != vec![e.serial.clone()] || !within {
                return Err(bad(format!("the certificate does not name device {} inside batch {batch}", e.serial)));
            }
            // Outside the serials signed into the delegation: flagged, whatever the batch's allowlist says.
            let outside_delegation = !name::permitted_by(&delegate.cert, &tbs.subject)?;
            out.push(SyncEntry {
                outside_delegation,
                device_serial: e.serial.clone(),
                cert: CertRecord {
                    serial: info.serial.clone(),
                    ca: format!("delegated:{}:{batch}", station.name),
                    profile: Profile::Device.name().into(),
                    subject: name::to_rfc4514(&tbs.subject),
                    device_serial: Some(e.serial.clone()),
                    not_before: info.not_before,
                    not_after: info.not_after,
                    issued_at: e.at,
                    spki_sha256: info.spki_sha256.clone(),
                    replaces: None,
                    replaced_by: None,
                    status: CertStatus::Good,
                    der,
                },
            });
        }
        let audit = AuditEvent {
            at: now,
            actor: format!("station:{}", station.name),
            action: "factory.sync".into(),
            target: format!("batch:{batch}"),
            detail: format!("entries={}..={}", first.seq, last.seq),
        };
        Ok(self.store.apply_sync(SyncUpload {
            station: station.name.clone(),
            batch: batch.into(),
            from_seq: first.seq,
            from_head: head,
            to_seq: last.seq,
            to_head: last.hash.clone(),
            entries: out,
            now,
            audit,
        })?)
    }

    /// Where `station`'s record for `batch` was synced up to, for the station itself.
    pub fn sync_state(&self, chain: &[CertificateDer<'_>], batch: &str) -> Result<(u64, String), AuthorityError> {
        let (station, _) = self.authenticate_station(chain)?;
        Ok(self.store.sync_state(&station.name, batch)?)
    }

    fn reenroll_inner(
        &self,
        label: Option<&str>,
        cred: Credential<'_>,
        body: &[u8],
    ) -> Result<Enrolled, AuthorityError> {
        let label = self.label(label)?;
        let chain = match cred {
            Credential::ClientCert(chain) => chain,
            _ => {
                return Err(AuthorityError::Unauthorized(
                    "re-enrollment needs the current certificate as the TLS client certificate".into(),
                ))
            }
        };
        // A certificate renewed already is let in here, and only to get its
        // successor again (a renewal whose answer was lost): see `renewal_replay`.
        let (id, superseded) = self.authenticate_renewable(chain)?;
        if id.record.profile != Profile::Device.name() {
            return Err(AuthorityError::Forbidden(format!("a {} certificate cannot re-enroll", id.record.profile)));
        }
        if self.is_birth_ca(&id.record.ca) || self.is_birth_ca(&label.ca.name) {
            return Err(AuthorityError::Forbidden(format!(
                "a birth certificate is never renewed and nothing renews into one: {BIRTH_ONLY_ON_THE_LINE}"
            )));
        }
        if id.record.ca != label.ca.name {
            return Err(AuthorityError::Forbidden(format!(
                "the current certificate is from CA {}; label {} issues from CA {}",
                id.record.ca, label.name, label.ca.name
            )));
        }
        let der = est::decode_body(body)?;
        let req = csr::parse_and_verify(&der)?;
        self.check_key(label, req.key_type)?;
        // The new certificate gets the current one's subject (and, like every
        // device certificate, no subjectAltName), whatever the request says
        // besides: RFC 7030 4.2.2 asks clients to repeat them, and some send only
        // a CN or a DNS name. A request that names another serial is refused.
        let current_subject = &id.cert.tbs_certificate.subject;
        let bound = name::serial_numbers(current_subject);
        let [current_serial] = bound.as_slice() else {
            return Err(AuthorityError::Forbidden(format!(
                "the current certificate carries {} serialNumber attributes, not one: it cannot re-enroll; enroll \
                 with a new token",
                bound.len()
            )));
        };
        check_requested_serial(&req.subject, current_serial, "the current certificate")?;
        // The request is one this certificate could make: if it was renewed
        // already, the answer is that renewal again (same key) or a refusal.
        if let Some(next) = superseded {
            return self.renewal_replay(&id.record, &next, &req);
        }
        let old = id.record.serial.clone();
        let actor = format!("device:{}", id.record.device_serial.clone().unwrap_or_default());
        let issued = self.issue_device(
            label,
            current_subject.clone(),
            &req,
            id.record.device_serial.clone(),
            Some(old.clone()),
            vec![Precondition::Supersede { serial: old.clone(), now: self.clock.now() }],
            actor,
            "reenroll",
            None,
        );
        match issued {
            // Lost a race to another renewal of the same certificate (a client
            // retrying before its first answer came): the same key gets that one.
            Err(e) => match self.store.certificate(&old)?.and_then(|r| r.replaced_by.clone().map(|n| (r, n))) {
                Some((rec, next)) => self.renewal_replay(&rec, &next, &req),
                None => Err(e),
            },
            ok => ok,
        }
    }

    /// A renewal presented with a certificate that was renewed already: if
    /// the request proves possession of the key its successor was issued for,
    /// the answer is that successor again (the device never got the first
    /// answer: network, power cut). Nothing new is issued, so a lost answer
    /// neither costs the device its identity nor gives it two certificates.
    /// Any other key is refused: a superseded certificate renews nothing.
    fn renewal_replay(&self, old: &CertRecord, next: &str, req: &csr::VerifiedCsr) -> Result<Enrolled, AuthorityError> {
        let refused = || {
            AuthorityError::Forbidden(format!(
                "certificate {} was renewed already (its successor is {next}): renew with the successor, or \
                 commission again with the birth certificate",
                old.serial
            ))
        };
        let Some(rec) = self.store.certificate(next)? else { return Err(refused()) };
        if rec.spki_sha256 != keys::spki_fingerprint(&req.spki_der) || rec.device_serial != old.device_serial {
            return Err(refused());
        }
        if let CertStatus::Revoked { .. } = rec.status {
            return Err(AuthorityError::Forbidden(format!(
                "certificate {} was renewed already; its successor {next} is revoked",
                old.serial
            )));
        }
        self.store.append_audit(AuditEvent {
            at: self.clock.now(),
            actor: format!("device:{}", old.device_serial.clone().unwrap_or_default()),
            action: "reenroll.replay".into(),
            target: rec.serial.clone(),
            detail: format!("replaces={} same key: the renewal issued before is sent again", old.serial),
        })?;
        let pkcs7 = pkcs7::certs_only(&[&rec.der])?;
        Ok(Enrolled { cert_der: rec.der, serial: rec.serial, pkcs7 })
    }

    fn check_key(&self, label: &Label, kt: KeyType) -> Result<(), AuthorityError> {
        if label.allowed.contains(&kt) {
            return Ok(());
        }
        let allowed = label.allowed.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ");
        Err(iotpki_core::Error::KeyNotAllowed { offered: kt.to_string(), allowed }.into())
    }

    #[allow(clippy::too_many_arguments)]
    fn issue_device(
        &self,
        label: &Label,
        subject: Name,
        req: &csr::VerifiedCsr,
        device_serial: Option<String>,
        replaces: Option<String>,
        preconditions: Vec<Precondition>,
        actor: String,
        action: &str,
        note: Option<&str>,
    ) -> Result<Enrolled, AuthorityError> {
        // The one gate: under the birth CA, only a station's birth (whose
        // transaction checks the batch's rules) is ever signed.
        let is_birth = preconditions.iter().any(|p| matches!(p, Precondition::Birth { .. }));
        if self.is_birth_ca(&label.ca.name) != is_birth {
            return Err(AuthorityError::Forbidden(if is_birth {
                format!("label {} does not issue birth certificates", label.name)
            } else {
                format!("label {} issues birth certificates: {BIRTH_ONLY_ON_THE_LINE}", label.name)
            }));
        }
        let now = self.clock.now();
        let ca = &label.ca;
        let not_after = match label.validity_secs {
            Some(v) => now + v,
            None => ca.not_after,
        };
        // A serial collision (2^-127 odds) is retried once with a fresh serial.
        for attempt in 0..2 {
            let (sn, sn_hex) = serial::system_random_serial(now)?;
            let params = CertParams {
                profile: Profile::Device,
                serial: sn,
                subject: subject.clone(),
                spki: req.spki.clone(),
                not_before: now - BACKDATE_SECS,
                not_after,
                dns_names: vec![],
                ip_addrs: vec![],
                permitted_subtree: None,
            };
            let record = ca.sign(&params, sn_hex.clone(), device_serial.clone(), replaces.clone(), now)?;
            let der = record.der.clone();
            let mut detail = match &replaces {
                Some(old) => format!("label={} key={} replaces={old}", label.name, req.key_type),
                None => format!("label={} key={}", label.name, req.key_type),
            };
            if let Some(note) = note {
                detail = format!("{detail} {note}");
            }
            let audit =
                AuditEvent { at: now, actor: actor.clone(), action: action.into(), target: sn_hex.clone(), detail };
            match self.store.record_issuance(Issuance { cert: record, preconditions: preconditions.clone(), audit }) {
                Ok(()) => {
                    let pkcs7 = pkcs7::certs_only(&[&der])?;
                    tracing::info!(serial = %sn_hex, action, label = %label.name, "issued");
                    return Ok(Enrolled { cert_der: der, serial: sn_hex, pkcs7 });
                }
                Err(StoreError::DuplicateSerial { .. }) if attempt == 0 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthorityError::Store(StoreError::Database("serial number collision twice".into())))
    }

    /// Authenticate a TLS client certificate chain: it must chain to our root
    /// through one of our issuing CAs, be valid now for client auth, be the
    /// very certificate the store recorded, and not be revoked.
    pub fn authenticate(&self, chain: &[CertificateDer<'_>]) -> Result<DeviceIdentity, AuthorityError> {
        let id = self.authenticate_recorded(chain)?;
        if let CertStatus::Revoked { .. } = id.record.status {
            return Err(AuthorityError::Forbidden(format!("client certificate {} is revoked", id.record.serial)));
        }
        Ok(id)
    }

    /// A re-enrollment's caller: [`Self::authenticate`], but a certificate
    /// superseded by a renewal is let in too, with its successor's serial, and
    /// only to get that successor again (a renewal whose answer was lost).
    fn authenticate_renewable(
        &self,
        chain: &[CertificateDer<'_>],
    ) -> Result<(DeviceIdentity, Option<String>), AuthorityError> {
        let id = self.authenticate_recorded(chain)?;
        let superseded = match (&id.record.status, &id.record.replaced_by) {
            (CertStatus::Good, _) => None,
            (CertStatus::Revoked { reason: 4, .. }, Some(next)) => Some(next.clone()),
            (CertStatus::Revoked { .. }, _) => {
                return Err(AuthorityError::Forbidden(format!("client certificate {} is revoked", id.record.serial)))
            }
        };
        Ok((id, superseded))
    }

    /// [`Self::authenticate`] without the revocation check: the path verifies
    /// and the certificate is the one recorded, revoked or not.
    fn authenticate_recorded(&self, chain: &[CertificateDer<'_>]) -> Result<DeviceIdentity, AuthorityError> {
        let leaf = chain.first().ok_or_else(|| AuthorityError::Unauthorized("no client certificate".into()))?;
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| AuthorityError::Forbidden(format!("client certificate is malformed: {e}")))?;
        let now = self.clock.now();
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(leaf.as_ref()).into();
        let path_verified = self.verified_paths.holds(&digest, now);
        if !path_verified {
            self.verify_path(&ee, now)?;
        }
        let info = profile::cert_info(leaf)?;
        if !path_verified {
            let not_after = iotpki_core::time::unix(&info.cert.tbs_certificate.validity.not_after);
            self.verified_paths.remember(digest, now, not_after);
        }
        let record = self.store.certificate(&info.serial)?.ok_or_else(|| {
            AuthorityError::Forbidden(format!("client certificate {} is not known to this authority", info.serial))
        })?;
        if record.der != leaf.as_ref() {
            return Err(AuthorityError::Forbidden(format!(
                "client certificate {} differs from the one issued",
                info.serial
            )));
        }
        Ok(DeviceIdentity { record, cert: info.cert })
    }

    /// The client certificate's path to one of our anchors, at `time`, for clientAuth.
    fn verify_path(&self, ee: &webpki::EndEntityCert<'_>, now: i64) -> Result<(), AuthorityError> {
        let time = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &self.intermediates,
            time,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| {
            AuthorityError::Forbidden(match e {
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
            })
        })
    }
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
        Some(other) => Err(AuthorityError::Forbidden(format!(
            "the request names serialNumber={other}, but {bound_by} is for serial {device}: request for {device}, \
             or leave the subject to the authority (a CN alone will do)"
        ))),
    }
}

fn x509_ocsp_internal_error() -> Vec<u8> {
    // OCSPResponse { responseStatus internalError (2) }
    vec![0x30, 0x03, 0x0a, 0x01, 0x02]
}

/// Who a credential claims to be, for the audit log: `device:SERIAL` for a
/// token, `cert:SERIAL` for a client certificate, else `anonymous`.
fn actor_of(cred: Credential<'_>) -> String {
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

/// Whether station `st` may make devices of `batch`.
fn st_authorized(st: &StationRecord, batch: &str) -> bool {
    st.batches.iter().any(|b| b == batch)
}
