//! `iotpki init`: a complete authority in a new directory, or nothing at all.
//!
//! Everything is made in a sibling directory `DIR.partial-XXXX` and renamed
//! into place at the end, so a failure (or a kill) never leaves a half
//! authority at `DIR`. With an HSM, the CA keys are generated inside the
//! token, and deleted from it again if init fails.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iotpki_core::keys::{self, KeyType, Signer, SoftKey};
use iotpki_core::name::NameBuilder;
use iotpki_core::profile::{self, CertParams, Issuer, Profile};
use iotpki_core::{pem, serial};
use iotpki_hsm::{HsmKey, Pin, Pkcs11Uri, Token};
use iotpki_store::postgres::PgStore;
use iotpki_store::prelude::*;
use iotpki_store::sqlite::SqliteStore;
use iotpki_store::{AuditEvent, CertRecord, CertStatus, Issuance};
use spki::der::Decode;
use x509_cert::name::Name;

use crate::config::{
    CaConfig, CaRole, Config, HsmConfig, LabelConfig, ServerConfig, StoreConfig, TokenConfig, CONFIG_FILE,
};
use crate::keyfile::{self, Passphrase};
use crate::AuthorityError;
use iotpki_core::clock::Clock;

pub(crate) const YEAR: i64 = 365 * 24 * 3600;

/// Choices for a new authority.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Organisation named in every subject.
    pub organization: String,
    /// Key type of all CA and server keys.
    pub key_type: KeyType,
    /// DNS names and IP addresses of the server certificate. DNS names must be
    /// fully qualified (`est.example.com`): linters flag single labels such as `localhost`.
    pub server_names: Vec<String>,
    /// Default listen address written to the config.
    pub listen: String,
    /// Plain-HTTP listen address for CRLs and OCSP written to the config (None: none).
    pub http_listen: Option<String>,
    /// Base URL written into issued certificates for CRLs and OCSP (None: none).
    pub public_http_url: Option<String>,
    /// A PostgreSQL database for the state (written to the config), instead
    /// of `store.db` in the directory. It must hold no authority's state yet.
    pub database: Option<String>,
    /// Generate the CA keys in this PKCS#11 token instead of key files.
    pub hsm: Option<HsmInit>,
    /// Partition each issuing CA's CRL into this many shards (`crl_shards` in its config).
    pub crl_shards: Option<u32>,
}

/// Where `init` generates the CA keys when they live in an HSM.
#[derive(Clone, Debug)]
pub struct HsmInit {
    /// The vendor's PKCS#11 module.
    pub module: PathBuf,
    /// The token: `pkcs11:token=LABEL`.
    pub token: Pkcs11Uri,
    /// The token's user PIN.
    pub pin: Pin,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            organization: "iotpki".into(),
            key_type: KeyType::EcdsaP256,
            server_names: vec!["127.0.0.1".into(), "::1".into()],
            listen: "127.0.0.1:8443".into(),
            http_listen: Some("127.0.0.1:8080".into()),
            public_http_url: Some("http://127.0.0.1:8080".into()),
            database: None,
            hsm: None,
            crl_shards: None,
        }
    }
}

/// What `init` made.
#[derive(Clone, Debug)]
pub struct InitReport {
    /// The authority's directory.
    pub dir: PathBuf,
    /// The root CA certificate (PEM file): the trust anchor devices need.
    pub root_cert: PathBuf,
}

pub(crate) struct Made {
    pub(crate) name: Name,
    pub(crate) kid: Vec<u8>,
    pub(crate) not_after: i64,
    pub(crate) der: Vec<u8>,
}

/// Create a new authority at `dir` (which must not exist, or be empty).
pub fn init(
    dir: &Path,
    opts: &InitOptions,
    pass: &Passphrase,
    clock: &dyn Clock,
) -> Result<InitReport, AuthorityError> {
    if dir.join(CONFIG_FILE).exists() {
        return Err(AuthorityError::Config(format!("{} is already an authority directory", dir.display())));
    }
    if let Ok(mut it) = std::fs::read_dir(dir) {
        if it.next().is_some() {
            return Err(AuthorityError::Config(format!("{} exists and is not empty", dir.display())));
        }
    }
    if let Some(s) = opts.crl_shards {
        if let Some(why) = crate::config::crl_shards_problem(s, opts.public_http_url.is_some()) {
            return Err(AuthorityError::Config(format!("--crl-shards {s}: {why}")));
        }
    }
    // A shared database is checked before any key is made: it must be empty.
    let shared: Option<Arc<dyn Store>> = match &opts.database {
        Some(url) => {
            crate::config::check_database(url)?;
            let store = PgStore::open(url)?;
            let (certs, audit) = (store.count_certificates()?, store.verify_audit()?.entries);
            if certs > 0 || audit > 0 {
                return Err(AuthorityError::Config(format!(
                    "database {} already holds an authority's state ({certs} certificates, {audit} audit entries): \
                     give a new, empty database, or use this one with `iotpki serve --database` from the \
                     authority's own directory",
                    iotpki_store::postgres::redact(url)
                )));
            }
            Some(Arc::new(store))
        }
        None => None,
    };
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| AuthorityError::io(parent, e))?;
    let base = dir.file_name().and_then(|n| n.to_str()).unwrap_or("authority");
    let partial = parent.join(format!(".{base}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    // Refuse a token we cannot use before anything is made.
    let token = match &opts.hsm {
        Some(h) => {
            let t = Token::open(&h.module, &h.token)?;
            t.check_pin(&h.pin)?;
            if !t.supports(opts.key_type)? {
                return Err(AuthorityError::Config(format!(
                    "token {:?} cannot generate and sign with {} keys (for Ed25519 it must offer CKM_EDDSA); \
                     choose another --key-type",
                    t.label(),
                    opts.key_type
                )));
            }
            Some(t)
        }
        None => None,
    };
    let mut keys = KeyMaker { hsm: token.as_ref().zip(opts.hsm.as_ref()), made: Vec::new() };
    let result = build(&partial, opts, pass, clock, shared, &mut keys).and_then(|()| {
        // An empty `dir` is replaced by the rename; a non-empty one was refused above.
        Ok(iotpki_fs::rename_durable(&partial, dir)?)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
        for k in keys.made.drain(..) {
            if let Err(e) = k.destroy() {
                tracing::error!(key = %k.uri(), error = %e, "init failed and could not delete the key it made in the token");
            }
        }
    }
    result?;
    Ok(InitReport { dir: dir.to_path_buf(), root_cert: dir.join("ca/root.crt") })
}

/// Makes the CA keys: key files, or keys in the token (remembered so that a
/// failed init can delete them).
struct KeyMaker<'a> {
    hsm: Option<(&'a Token, &'a HsmInit)>,
    made: Vec<Arc<HsmKey>>,
}

/// A new CA key and where the config says it is.
struct NewKey {
    signer: Arc<dyn Signer>,
    soft: Option<Arc<SoftKey>>,
    uri: Option<String>,
}

impl KeyMaker<'_> {
    fn generate(&mut self, kt: KeyType, name: &str) -> Result<NewKey, AuthorityError> {
        let Some((token, h)) = self.hsm else {
            let k = Arc::new(SoftKey::generate(kt)?);
            return Ok(NewKey { signer: k.clone(), soft: Some(k), uri: None });
        };
        let mut tag = [0u8; 4];
        aws_lc_rs::rand::fill(&mut tag).map_err(|_| AuthorityError::Config("the system RNG failed".into()))?;
        let label = format!("iotpki-{name}-{}", hex::encode(tag));
        let key = Arc::new(HsmKey::generate(token, &h.pin, kt, &label)?);
        self.made.push(key.clone());
        Ok(NewKey { uri: Some(key.uri().to_string()), signer: key, soft: None })
    }
}

fn build(
    dir: &Path,
    opts: &InitOptions,
    pass: &Passphrase,
    clock: &dyn Clock,
    shared: Option<Arc<dyn Store>>,
    keys: &mut KeyMaker<'_>,
) -> Result<(), AuthorityError> {
    for d in ["", "ca", "tls"] {
        let p = dir.join(d);
        // The authority's directory holds its keys and store: its owner's only.
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&p).map_err(|e| AuthorityError::io(&p, e))?;
    }
    let now = clock.now();
    let org = opts.organization.as_str();
    let store: Arc<dyn Store> = match shared {
        Some(s) => s,
        None => Arc::new(SqliteStore::open(&dir.join("store.db"))?),
    };
    let mut records = Vec::new();

    let root_key = keys.generate(opts.key_type, "root")?;
    let root_name = NameBuilder::default().organization(org)?.common_name(&format!("{org} Root CA"))?.build();
    let root_spki = spki_of(root_key.signer.as_ref())?;
    let root_kid = keys::key_identifier(&root_spki);
    let root_end = now + 25 * YEAR;
    let root_issuer =
        Issuer { subject: &root_name, key_id: &root_kid, not_after: root_end, signer: root_key.signer.as_ref() };
    let root = make(
        Profile::Root,
        root_name.clone(),
        root_key.signer.as_ref(),
        now,
        root_end,
        vec![],
        &root_issuer,
        "root",
        None,
        &mut records,
    )?;
    let mut cas = vec![save(dir, "root", CaRole::Root, &root_key, &root.der, pass)?];
    // The CA certificates name the root's CRL (its ARL, signed below).
    let root_revocation = opts.public_http_url.as_deref().map(|base| Revocation { base, shards: None });
    let mut operational = None;
    // The manufacturing CA may delegate one level: stations' offline sub-CAs for a batch.
    for (name, title, profile) in [
        ("manufacturing", "Manufacturing CA", Profile::DelegatingCa),
        ("operational", "Operational CA", Profile::IssuingCa),
    ] {
        let key = keys.generate(opts.key_type, name)?;
        let subject = NameBuilder::default().organization(org)?.common_name(&format!("{org} {title}"))?.build();
        let made = make(
            profile,
            subject,
            key.signer.as_ref(),
            now,
            now + 20 * YEAR,
            vec![],
            &root_issuer,
            "root",
            root_revocation,
            &mut records,
        )?;
        let mut entry = save(dir, name, CaRole::Issuing, &key, &made.der, pass)?;
        entry.crl_shards = opts.crl_shards;
        cas.push(entry);
        if name == "operational" {
            operational = Some((key, made));
        }
    }
    let (op_key, op) = operational.ok_or_else(|| AuthorityError::Config("operational CA missing".into()))?;

    // The server's TLS certificate, from the operational CA: devices trust the root, not the leaf.
    let server_key = SoftKey::generate(opts.key_type)?;
    for n in &opts.server_names {
        check_server_name(n)?;
    }
    let server_subject = NameBuilder::default().organization(org)?.common_name(&format!("{org} EST server"))?.build();
    let op_issuer =
        Issuer { subject: &op.name, key_id: &op.kid, not_after: op.not_after, signer: op_key.signer.as_ref() };
    let server = make(
        Profile::Server,
        server_subject,
        &server_key,
        now,
        now + YEAR,
        opts.server_names.clone(),
        &op_issuer,
        "operational",
        opts.public_http_url.as_deref().map(|base| Revocation { base, shards: opts.crl_shards }),
        &mut records,
    )?;
    keyfile::write_encrypted(&dir.join("tls/server.key"), &server_key, pass)?;
    let chain = format!("{}{}", pem::encode("CERTIFICATE", &server.der), pem::encode("CERTIFICATE", &op.der));
    keyfile::write_public(&dir.join("tls/server.crt"), chain.as_bytes())?;

    // Every key type the authority signs and verifies with, ML-DSA included: a fleet can
    // move to ML-DSA device keys (and a CA of any type certifies a key of any type).
    let all_keys: Vec<String> = KeyType::soft_signing().iter().map(|k| k.to_string()).collect();
    let cfg = Config {
        organization: org.into(),
        key_type: opts.key_type.to_string(),
        default_label: "operational".into(),
        store: StoreConfig { sqlite: "store.db".into(), database: opts.database.clone() },
        server: ServerConfig {
            listen: opts.listen.clone(),
            cert: "tls/server.crt".into(),
            key: "tls/server.key".into(),
            http_listen: opts.http_listen.clone(),
            public_http_url: opts.public_http_url.clone(),
            coaps_listen: None,
            coaps_dtls12: false,
            metrics_listen: None,
        },
        tokens: TokenConfig { default_ttl_secs: 3600, max_ttl_secs: 30 * 24 * 3600 },
        limits: Default::default(),
        console: Default::default(),
        events: Default::default(),
        matter: None,
        hsm: opts.hsm.as_ref().map(|h| HsmConfig {
            module: h.module.clone(),
            token: Pkcs11Uri { token: h.token.token.clone(), ..Default::default() }.to_string(),
        }),
        ca: cas,
        label: vec![
            LabelConfig {
                name: "operational".into(),
                ca: "operational".into(),
                validity_days: 90,
                allowed_keys: all_keys.clone(),
                template: None,
            },
            LabelConfig {
                name: "birth".into(),
                ca: "manufacturing".into(),
                validity_days: 0,
                allowed_keys: all_keys,
                template: None,
            },
        ],
        template: vec![],
        lint: Default::default(),
    };
    // A database URL with a password in it makes the config a secret.
    let secret = opts.database.as_deref().is_some_and(|u| iotpki_store::postgres::redact(u) != u);
    let write = if secret { keyfile::write_private } else { keyfile::write_public };
    write(&dir.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;

    for (rec, target) in records {
        store.record_issuance(Issuance {
            audit: AuditEvent {
                at: now,
                actor: "admin".into(),
                action: "init.issue".into(),
                target,
                detail: format!("{} {}", rec.profile, rec.subject),
            },
            cert: rec,
            preconditions: vec![],
        })?;
    }
    // The root's first ARL (empty), so strict relying parties find a CRL for
    // every CA certificate from the start; `iotpki ca sign-arl` signs the next.
    crate::revocation::publish_arl(
        store.as_ref(),
        "root",
        &root_issuer,
        now,
        crate::revocation::ARL_VALIDITY_SECS,
        "admin",
    )?;
    Ok(())
}

/// A server name is an IP address or a fully qualified DNS name in preferred
/// name syntax (RFC 1034 section 3.5, lowercase LDH labels).
pub(crate) fn check_server_name(n: &str) -> Result<(), AuthorityError> {
    if n.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let labels: Vec<&str> = n.split('.').collect();
    let ok_label = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if n.len() > 253 || labels.len() < 2 || !labels.iter().all(ok_label) {
        return Err(AuthorityError::Config(format!(
            "server name {n:?} must be an IP address or a fully qualified lowercase DNS name such as est.example.com"
        )));
    }
    Ok(())
}

fn spki_of(k: &dyn Signer) -> Result<spki::SubjectPublicKeyInfoOwned, AuthorityError> {
    spki::SubjectPublicKeyInfoOwned::from_der(k.public_key_der())
        .map_err(|e| AuthorityError::Config(format!("public key: {e}")))
}

#[allow(clippy::too_many_arguments)]
fn make(
    profile: Profile,
    subject: Name,
    key: &dyn Signer,
    now: i64,
    not_after: i64,
    server_names: Vec<String>,
    issuer: &Issuer<'_>,
    ca_name: &str,
    revocation: Option<Revocation<'_>>,
    records: &mut Vec<(CertRecord, String)>,
) -> Result<Made, AuthorityError> {
    make_for(profile, subject, spki_of(key)?, now, not_after, server_names, issuer, ca_name, revocation, records)
}

/// Where the certificates an issuer signs point relying parties for their
/// status: the authority's public base URL (`server.public_http_url`) and the
/// issuer's CRL shard count. The URLs follow [`crate::open::revocation_urls`]: a
/// root's CRL (its ARL) is `/crl/ROOT.crl`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Revocation<'a> {
    pub(crate) base: &'a str,
    pub(crate) shards: Option<u32>,
}

/// Like `make`, for a public key given as is (a CA certified again under a new root).
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_for(
    profile: Profile,
    subject: Name,
    spki: spki::SubjectPublicKeyInfoOwned,
    now: i64,
    not_after: i64,
    server_names: Vec<String>,
    issuer: &Issuer<'_>,
    ca_name: &str,
    revocation: Option<Revocation<'_>>,
    records: &mut Vec<(CertRecord, String)>,
) -> Result<Made, AuthorityError> {
    let spki_der = spki::der::Encode::to_der(&spki).map_err(|e| AuthorityError::Config(format!("public key: {e}")))?;
    let kid = keys::key_identifier(&spki);
    let (sn, sn_hex) = serial::system_random_serial(now)?;
    let (ip_addrs, dns_names): (Vec<_>, Vec<_>) = server_names.into_iter().partition(|n| n.parse::<IpAddr>().is_ok());
    let params = CertParams {
        profile,
        serial: sn,
        subject: subject.clone(),
        spki,
        not_before: now - 60,
        not_after,
        dns_names,
        ip_addrs: ip_addrs.iter().filter_map(|s| s.parse().ok()).collect(),
        permitted_subtree: None,
    };
    // The issuer's CRL (and OCSP, for an end entity) in every certificate but a root's.
    let urls = revocation.map(|r| crate::open::revocation_urls(r.base, ca_name, r.shards, &sn_hex));
    let issued = profile::issue_with(&params, issuer, urls.as_ref())?;
    records.push((
        CertRecord {
            serial: sn_hex.clone(),
            ca: ca_name.into(),
            profile: profile.name().into(),
            subject: subject.to_string(),
            device_serial: None,
            not_before: issued.not_before,
            not_after: issued.not_after,
            issued_at: now,
            spki_sha256: keys::spki_fingerprint(&spki_der),
            replaces: None,
            replaced_by: None,
            template: None,
            status: CertStatus::Good,
            der: issued.der.clone(),
        },
        sn_hex,
    ));
    Ok(Made { name: subject, kid, not_after: issued.not_after, der: issued.der })
}

/// Write the CA's certificate (and its key file, unless the key is in the token); its config entry.
fn save(
    dir: &Path,
    name: &str,
    role: CaRole,
    key: &NewKey,
    der: &[u8],
    pass: &Passphrase,
) -> Result<CaConfig, AuthorityError> {
    let mut key_file = None;
    if let Some(soft) = &key.soft {
        let rel = PathBuf::from(format!("ca/{name}.key"));
        keyfile::write_encrypted(&dir.join(&rel), soft, pass)?;
        key_file = Some(rel);
    }
    let cert = PathBuf::from(format!("ca/{name}.crt"));
    keyfile::write_public(&dir.join(&cert), pem::encode("CERTIFICATE", der).as_bytes())?;
    Ok(CaConfig {
        name: name.into(),
        cert,
        key: key_file,
        key_uri: key.uri.clone(),
        role,
        older_certs: vec![],
        crl_shards: None,
        successor: None,
    })
}
