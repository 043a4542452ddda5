//! Opening an authority: its config, CA keys (key files or an HSM), store and trust anchors.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use iotpki_core::keys::{self, KeyType, Signer};
use iotpki_core::name;
use iotpki_core::pem;
use iotpki_core::pkcs7;
use iotpki_core::profile::{self, CertParams, Issuer};
use iotpki_store::postgres::PgStore;
use iotpki_store::sqlite::SqliteStore;
use iotpki_store::{CertRecord, CertStatus, Store};
use rustls_pki_types::CertificateDer;
use spki::der::Encode;
use x509_cert::name::Name;

use crate::auth::VerifiedPaths;
use crate::{attest, config, keyfile, ocsp_cache, refusals};
use crate::{Authority, AuthorityError, Clock, Config, Label, Passphrase, Pin};

/// An issuing CA with its key loaded.
pub struct CaKey {
    /// Its name in the config.
    pub name: String,
    /// Its certificate, DER.
    pub cert_der: Vec<u8>,
    pub(crate) cert: x509_cert::Certificate,
    pub(crate) subject: Name,
    pub(crate) key_id: Vec<u8>,
    pub(crate) not_after: i64,
    pub(crate) signer: Box<dyn Signer>,
    /// `server.public_http_url`: where relying parties fetch CRLs and OCSP.
    pub(crate) public_http_url: Option<String>,
    /// The CA's CRL shard count, when its CRL is partitioned.
    pub(crate) crl_shards: Option<u32>,
}

impl CaKey {
    pub(crate) fn issuer(&self) -> Issuer<'_> {
        Issuer { subject: &self.subject, key_id: &self.key_id, not_after: self.not_after, signer: self.signer.as_ref() }
    }

    /// The CRL (its shard's, when the CA's CRL is partitioned) and OCSP URLs
    /// for the certificate with serial `serial_hex`.
    fn revocation_urls(&self, serial_hex: &str) -> Option<profile::RevocationUrls> {
        let base = self.public_http_url.as_ref()?;
        Some(revocation_urls(base, &self.name, self.crl_shards, serial_hex))
    }

    /// Sign `params` and describe the result as the store records it.
    pub(crate) fn sign(
        &self,
        params: &CertParams,
        serial_hex: String,
        device_serial: Option<String>,
        replaces: Option<String>,
        now: i64,
    ) -> Result<CertRecord, AuthorityError> {
        self.sign_templated(params, &[], serial_hex, device_serial, replaces, now)
    }

    /// [`CaKey::sign`] with a template's extensions ([`profile::issue_templated`]).
    pub(crate) fn sign_templated(
        &self,
        params: &CertParams,
        extensions: &[x509_cert::ext::Extension],
        serial_hex: String,
        device_serial: Option<String>,
        replaces: Option<String>,
        now: i64,
    ) -> Result<CertRecord, AuthorityError> {
        let urls = self.revocation_urls(&serial_hex);
        let issued = profile::issue_templated(params, &self.issuer(), urls.as_ref(), extensions)?;
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
            template: None,
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

pub(crate) fn read_cert_pem(path: &Path) -> Result<Vec<Vec<u8>>, AuthorityError> {
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
        // Every template is checked (RFC 5280, a linted sample per key type) before
        // anything can be issued from it.
        let templates = crate::templates::load(&cfg, &issuing, clock.now())?;
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
            let template = match &l.template {
                Some(t) => Some(
                    templates
                        .get(t)
                        .cloned()
                        .ok_or_else(|| AuthorityError::Config(format!("label {}: no template named {t}", l.name)))?,
                ),
                None => None,
            };
            labels
                .insert(l.name.clone(), Label { name: l.name.clone(), ca, validity_secs, allowed, cacerts, template });
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
        let (matter_pais, matter_paa) = crate::matter::load(dir, &cfg, pass)?;
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
            signature_memo: Default::default(),
            refusals,
            metrics: crate::metrics::Metrics::default(),
            matter_pais,
            matter_paa,
            batch_profiles: std::sync::Mutex::new(HashMap::new()),
            templates,
        })
    }
}
