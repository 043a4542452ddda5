//! The authority's configuration: `iotpki.toml` in its directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::AuthorityError;

/// File name of the config inside the authority's directory.
pub const CONFIG_FILE: &str = "iotpki.toml";

/// The whole config file. Relative paths are relative to the authority's directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The organisation named in every subject.
    pub organization: String,
    /// Key type of the authority's keys (`p256`, `p384`, `ed25519`).
    pub key_type: String,
    /// The label used when a request names none.
    pub default_label: String,
    /// Where the state lives.
    pub store: StoreConfig,
    /// The HTTPS server.
    pub server: ServerConfig,
    /// One-time enrollment tokens.
    pub tokens: TokenConfig,
    /// The PKCS#11 token holding the CA keys, if they are not key files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsm: Option<HsmConfig>,
    /// The CAs, root first.
    pub ca: Vec<CaConfig>,
    /// EST labels: which CA and profile a request path selects.
    pub label: Vec<LabelConfig>,
    /// Limits on connections, requests and request rates (defaults when absent).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The web console under `/console/` (defaults when absent).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Events out: webhooks (none when absent). Checked by `iotpki serve`
    /// when it starts (docs/events.md).
    #[serde(default, skip_serializing_if = "EventsConfig::is_empty")]
    pub events: EventsConfig,
    /// Matter device attestation: the PAA and the PAIs (`iotpki matter paa`,
    /// `iotpki matter pai`; docs/matter.md). None until `iotpki matter paa`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matter: Option<MatterConfig>,
    /// Certificate templates (`[[template]]`, docs/templates.md): checked
    /// against RFC 5280 when the config loads, and each sample certificate
    /// linted when the authority opens (and by pkilint at `iotpki serve`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub template: Vec<iotpki_core::template::TemplateSpec>,
    /// `[lint]`: the linters we did not write that vet templates at `serve` start.
    #[serde(default, skip_serializing_if = "LintConfig::is_empty")]
    pub lint: LintConfig,
}

/// `[lint]`: external linters run on each template's sample certificates
/// when `iotpki serve` starts (and by `iotpki template check`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LintConfig {
    /// pkilint's `lint_pkix_cert` executable; `$IOTPKI_PKILINT` overrides it.
    /// A template whose sample it finds anything in at WARNING or above is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkilint: Option<PathBuf>,
}

impl LintConfig {
    /// No linter configured.
    pub fn is_empty(&self) -> bool {
        self.pkilint.is_none()
    }
}

/// `[matter]`: the Product Attestation Authority and its intermediates.
/// Their keys are key files (encrypted like the other CA keys); the PAA's
/// stays locked (like the root's), the PAIs' are unlocked when the authority opens.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatterConfig {
    /// The PAA (a self-signed root for Matter commissioners).
    pub paa: MatterCaConfig,
    /// One PAI per vendor id, under the PAA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pai: Vec<MatterCaConfig>,
}

/// One Matter CA: its certificate and key files, and the ids its subject carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatterCaConfig {
    /// Its name (`matter-paa`, `matter-pai-FFF1`): the `ca` of what it issues in the store.
    pub name: String,
    /// Its certificate (PEM).
    pub cert: PathBuf,
    /// Its key (encrypted PKCS#8 PEM).
    pub key: PathBuf,
    /// A PAI's Vendor ID, four hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    /// A PAI's Product ID when it is bound to one product, four hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
}

/// The web console (`/console/` on the TLS listener; docs/console.md).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Whether `/console/` is served at all.
    pub enabled: bool,
    /// A session unused this long ends, seconds.
    pub idle_timeout_secs: u64,
    /// A session ends this long after it opened, however used, seconds.
    pub session_lifetime_secs: u64,
    /// Sessions open at once; the oldest ends to make room.
    pub max_sessions: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self { enabled: true, idle_timeout_secs: 15 * 60, session_lifetime_secs: 12 * 3600, max_sessions: 1000 }
    }
}

/// `[events]`: where the authority reports what happens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// `[[events.webhook]]`: each gets every event it asks for, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook: Vec<WebhookConfig>,
}

impl EventsConfig {
    /// No webhook configured.
    pub fn is_empty(&self) -> bool {
        self.webhook.is_empty()
    }
}

/// Days ahead a certificate is announced as expiring, unless a webhook says.
pub const DEFAULT_EXPIRING_WITHIN_DAYS: u32 = 30;

fn default_expiring_within_days() -> u32 {
    DEFAULT_EXPIRING_WITHIN_DAYS
}

/// One `[[events.webhook]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Its name (unique): its deliveries' cursor in the store is kept under it.
    pub name: String,
    /// Where events are POSTed: `http://` or `https://`.
    pub url: String,
    /// The file holding the HMAC key that signs each delivery (owner-only).
    pub secret_file: PathBuf,
    /// The event types it gets; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// `certificate.expiring` is sent this many days before a certificate's notAfter.
    #[serde(default = "default_expiring_within_days")]
    pub expiring_within_days: u32,
    /// For `https://`: the CA certificates (PEM) that the receiver's
    /// certificate must chain to, instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Limits on connections, requests and request rates.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    /// Seconds a TLS handshake may take.
    pub handshake_timeout_secs: u64,
    /// Seconds for a request's headers to arrive.
    pub header_timeout_secs: u64,
    /// Seconds for a whole request, body and work, before 408.
    pub request_timeout_secs: u64,
    /// Requests per second per client (certificate, Basic user or address); 0: no limit.
    pub client_rate_per_s: f64,
    /// Requests a client may burst.
    pub client_burst: u32,
    /// Requests per second per factory station; 0: no limit.
    pub station_rate_per_s: f64,
    /// Requests a station may burst.
    pub station_burst: u32,
    /// Refused requests (4xx) per second per client address, counted before
    /// any per-name bucket; 0: no limit.
    pub refusal_rate_per_s: f64,
    /// Refused requests an address may burst.
    pub refusal_burst: u32,
    /// Seconds of one refusal-audit window (see `refusals`).
    pub refusal_audit_window_secs: u64,
    /// Refusals written one entry each per window; past it they are summed up.
    pub refusal_audit_individual: u32,
    /// Seconds a write to a client may block (a peer that does not read).
    pub write_timeout_secs: u64,
    /// Seconds a connection may be idle (no byte read or written) between requests.
    pub idle_timeout_secs: u64,
    /// Seconds a connection may live at most, however busy.
    pub connection_lifetime_secs: u64,
    /// Requests served on one connection; the last answer closes it.
    pub max_requests_per_connection: u32,
    /// EST over secure CoAP (UDP): DTLS handshakes in progress at once, all
    /// peers together; past it, the oldest that never got past its first
    /// datagram makes room, else the new ClientHello is dropped.
    pub udp_max_handshakes: usize,
    /// DTLS sessions (handshaking or established) one IP address may hold.
    pub udp_sessions_per_address: usize,
    /// Datagrams per second one IP address may send before they are dropped unread; 0: no limit.
    pub udp_datagram_rate_per_s: f64,
    /// Datagrams an address may burst.
    pub udp_datagram_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshake_timeout_secs: 10,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            client_rate_per_s: 20.0,
            client_burst: 40,
            station_rate_per_s: 20_000.0,
            station_burst: 40_000,
            refusal_rate_per_s: 2.0,
            refusal_burst: 60,
            refusal_audit_window_secs: 60,
            refusal_audit_individual: 100,
            write_timeout_secs: 30,
            idle_timeout_secs: 60,
            connection_lifetime_secs: 600,
            max_requests_per_connection: 10_000,
            udp_max_handshakes: 512,
            udp_sessions_per_address: 64,
            udp_datagram_rate_per_s: 200.0,
            udp_datagram_burst: 400,
        }
    }
}

/// Where the state lives: the embedded SQLite file, unless `database` names
/// a PostgreSQL database (which several authority nodes may share).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite database file (unused when `database` is set).
    pub sqlite: PathBuf,
    /// A PostgreSQL database, `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`.
    /// `iotpki --database URL` (or `$IOTPKI_DATABASE`) overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// The HTTPS server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Default listen address.
    pub listen: String,
    /// The server certificate chain (PEM: leaf first, then its CA).
    pub cert: PathBuf,
    /// The server's private key (encrypted PKCS#8).
    pub key: PathBuf,
    /// Where to serve CRLs and OCSP over plain HTTP (none: not served on HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
    /// The base URL of that listener as relying parties reach it
    /// (`http://host:port`): issued certificates point there for their CRL
    /// (`/crl/CA.crl`) and OCSP (`/ocsp`). None: no such pointers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_http_url: Option<String>,
    /// Where to serve EST over secure CoAP (RFC 9148, UDP, DTLS 1.3), `HOST:PORT`
    /// (none: not served; `iotpki serve --coaps-listen` overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coaps_listen: Option<String>,
    /// Accept DTLS 1.2 on that listener too, for device stacks without 1.3 (default: 1.3 only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub coaps_dtls12: bool,
    /// Where to serve `GET /metrics` (Prometheus text format) over plain
    /// HTTP, `HOST:PORT`, alone; it is then not served on the `http_listen`
    /// listener (none: `/metrics` is on that listener, when there is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

/// The PKCS#11 token (HSM) that holds the CA keys. Its PIN is never in the
/// config: it comes from `--pin-file FILE` or `$IOTPKI_PIN`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// The vendor's PKCS#11 module (a shared library).
    pub module: PathBuf,
    /// The token, as an RFC 7512 URI: `pkcs11:token=LABEL`.
    pub token: String,
}

/// One-time enrollment tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Lifetime when `--ttl` is not given, seconds.
    pub default_ttl_secs: u64,
    /// Longest lifetime allowed, seconds.
    pub max_ttl_secs: u64,
}

/// One CA.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Its name (`root`, `manufacturing`, `operational`).
    pub name: String,
    /// Its certificate (PEM).
    pub cert: PathBuf,
    /// Its private key as a file (encrypted PKCS#8 PEM)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// ...or in the `[hsm]` token: the key's RFC 7512 URI (`pkcs11:token=..;object=..;id=..`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_uri: Option<String>,
    /// `root` for the trust anchor, `issuing` for a CA that signs end entities,
    /// `retiring` for a previous root still trusted until `iotpki ca retire`.
    pub role: CaRole,
    /// Earlier certificates of this CA's key, under a retiring root (`iotpki ca rotate`):
    /// chains through them are accepted until the retiring root is retired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub older_certs: Vec<PathBuf>,
    /// An issuing CA's CRL split into this many shards (a power of two, 2 to
    /// 1024; RFC 5280 partitioned CRLs): each certificate it issues from then
    /// on names its shard's CRL, `/crl/CA/S/K.crl`, in its cRLDistributionPoints.
    /// Unset: one CRL, `/crl/CA.crl`, which is served in any case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_shards: Option<u32>,
    /// The issuing CA that took over from this one with a key of its own
    /// (`iotpki ca rotate --new-issuing-keys`): this one issues nothing more
    /// (no label names it); it still signs the CRLs and OCSP answers of what
    /// it issued, and those certificates still renew and commission, into
    /// the successor's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
}

/// Why `shards` cannot be the CRL shard count of an authority's issuing CAs
/// (`has_public_url`: it has a `server.public_http_url`), if it cannot.
pub fn crl_shards_problem(shards: u32, has_public_url: bool) -> Option<String> {
    if !iotpki_core::crl::valid_shard_count(shards) {
        return Some(format!("give a power of two from 2 to {}", iotpki_core::crl::MAX_SHARDS));
    }
    (!has_public_url).then(|| "needs server.public_http_url (certificates name their shard's URL there)".into())
}

/// What a CA is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaRole {
    /// The trust anchor: signs CAs only, its key stays offline (not loaded by `serve`).
    Root,
    /// Signs end-entity certificates.
    Issuing,
    /// A previous root, replaced by `iotpki ca rotate`: still trusted for the
    /// certificates issued under it until `iotpki ca retire`.
    Retiring,
}

/// An EST label (`/.well-known/est/LABEL/...`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    /// The label.
    pub name: String,
    /// The issuing CA's name.
    pub ca: String,
    /// Validity of issued certificates in days; 0 means as long as the CA.
    pub validity_days: u32,
    /// Key types a request may carry.
    pub allowed_keys: Vec<String>,
    /// The certificate template its enrollments get when neither their token
    /// nor their batch names one (none: the built-in device profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

impl Config {
    /// Read and check `DIR/iotpki.toml`.
    pub fn load(dir: &Path) -> Result<Self, AuthorityError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                AuthorityError::Config(format!(
                    "{} not found: is {} an authority directory? (create one with `iotpki init --dir {}`)",
                    path.display(),
                    dir.display(),
                    dir.display()
                ))
            } else {
                AuthorityError::io(&path, e)
            }
        })?;
        let cfg: Config =
            toml::from_str(&text).map_err(|e| AuthorityError::Config(format!("{}: {e}", path.display())))?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), AuthorityError> {
        let bad = |m: String| Err(AuthorityError::Config(m));
        if self.ca.iter().filter(|c| c.role == CaRole::Root).count() != 1 {
            return bad("exactly one CA must have role = \"root\"".into());
        }
        for c in &self.ca {
            match (&c.key, &c.key_uri) {
                (Some(_), None) => {}
                (None, Some(_)) if self.hsm.is_some() => {}
                (None, Some(_)) => {
                    return bad(format!("CA {}: key_uri needs an [hsm] section (module, token)", c.name))
                }
                _ => return bad(format!("CA {}: give exactly one of key (a file) or key_uri (a PKCS#11 key)", c.name)),
            }
        }
        for c in &self.ca {
            if let Some(next) = &c.successor {
                if c.role != CaRole::Issuing || !self.ca.iter().any(|n| &n.name == next && n.role == CaRole::Issuing) {
                    return bad(format!("CA {}: its successor {next} must be an issuing CA, and it one too", c.name));
                }
            }
        }
        // Successors lead somewhere: no CA is its own successor, however far down.
        for c in &self.ca {
            let mut at = c;
            for _ in 0..=self.ca.len() {
                match at.successor.as_ref().and_then(|n| self.ca.iter().find(|x| &x.name == n)) {
                    Some(next) => at = next,
                    None => break,
                }
            }
            if at.successor.is_some() {
                return bad(format!("CA {}: its successors run in a circle", c.name));
            }
        }
        for l in &self.label {
            match self.ca.iter().find(|c| c.name == l.ca) {
                Some(c) if c.successor.is_some() => {
                    return bad(format!(
                        "label {}: CA {} was succeeded by CA {}: name that one",
                        l.name,
                        l.ca,
                        c.successor.as_deref().unwrap_or_default()
                    ))
                }
                Some(c) if c.role == CaRole::Issuing => {}
                Some(_) => return bad(format!("label {}: CA {} is not an issuing CA", l.name, l.ca)),
                None => return bad(format!("label {}: no CA named {}", l.name, l.ca)),
            }
            if l.allowed_keys.is_empty() {
                return bad(format!("label {}: allowed_keys is empty", l.name));
            }
            if l.name.is_empty() || !l.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return bad(format!("label {:?}: use letters, digits, - and _", l.name));
            }
        }
        let templates = iotpki_core::template::parse_specs(self.template.clone())
            .map_err(|e| AuthorityError::Config(format!("{e}")))?;
        for l in &self.label {
            if let Some(t) = &l.template {
                if !templates.iter().any(|x| x.name() == t)
                    && !iotpki_core::template::builtins().iter().any(|x| x.name() == t)
                {
                    return bad(format!("label {}: no template named {t}", l.name));
                }
            }
        }
        if !self.label.iter().any(|l| l.name == self.default_label) {
            return bad(format!("default_label {} is not a label", self.default_label));
        }
        if let Some(u) = &self.server.public_http_url {
            let rest = u.strip_prefix("http://").unwrap_or_default();
            if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
                return bad(format!(
                    "server.public_http_url {u:?}: give a plain http://HOST:PORT (relying parties fetch CRLs and OCSP there)"
                ));
            }
        }
        for c in &self.ca {
            if let Some(s) = c.crl_shards {
                if let Some(why) = crl_shards_problem(s, self.server.public_http_url.is_some()) {
                    return bad(format!("CA {}: crl_shards = {s}: {why}", c.name));
                }
                if c.role != CaRole::Issuing {
                    return bad(format!("CA {}: crl_shards is for issuing CAs only", c.name));
                }
            }
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.handshake_timeout_secs == 0
            || l.header_timeout_secs == 0
            || l.request_timeout_secs == 0
            || l.write_timeout_secs == 0
            || l.idle_timeout_secs == 0
            || l.connection_lifetime_secs == 0
            || l.max_requests_per_connection == 0
            || l.refusal_audit_window_secs == 0
        {
            return bad("limits: connections and timeouts must be at least 1".into());
        }
        if l.idle_timeout_secs < l.request_timeout_secs {
            return bad(format!(
                "limits: idle_timeout_secs ({}) must be at least request_timeout_secs ({}): a request being worked on \
                 is not idle",
                l.idle_timeout_secs, l.request_timeout_secs
            ));
        }
        if !(l.client_rate_per_s >= 0.0 && l.station_rate_per_s >= 0.0 && l.refusal_rate_per_s >= 0.0)
            || l.client_burst == 0
            || l.station_burst == 0
            || l.refusal_burst == 0
        {
            return bad("limits: rates must be >= 0 (0 switches limiting off) and bursts at least 1".into());
        }
        if let Some(url) = &self.store.database {
            check_database(url)?;
        }
        if let Some(m) = &self.matter {
            if self.hsm.is_some() {
                return bad(
                    "[matter]: Matter CAs are key files; an authority whose CA keys are in an HSM has none".into()
                );
            }
            for p in &m.pai {
                let vid = p.vendor_id.as_deref().unwrap_or_default();
                iotpki_core::matter::VendorId::parse(vid)
                    .map_err(|e| AuthorityError::Config(format!("PAI {}: {e}", p.name)))?;
                if let Some(pid) = &p.product_id {
                    iotpki_core::matter::ProductId::parse(pid)
                        .map_err(|e| AuthorityError::Config(format!("PAI {}: {e}", p.name)))?;
                }
            }
        }
        if self.tokens.default_ttl_secs == 0 || self.tokens.default_ttl_secs > self.tokens.max_ttl_secs {
            return bad("tokens: need 0 < default_ttl_secs <= max_ttl_secs".into());
        }
        Ok(())
    }

    /// Use the PostgreSQL database at `url` instead of what the file says.
    pub fn set_database(&mut self, url: &str) -> Result<(), AuthorityError> {
        check_database(url)?;
        self.store.database = Some(url.to_string());
        Ok(())
    }

    /// Write the config as TOML.
    pub fn to_toml(&self) -> Result<String, AuthorityError> {
        toml::to_string_pretty(self).map_err(|e| AuthorityError::Config(e.to_string()))
    }
}

/// A database URL must name PostgreSQL (SQLite is configured by `store.sqlite`).
pub fn check_database(url: &str) -> Result<(), AuthorityError> {
    if iotpki_store::postgres::is_postgres_url(url) {
        Ok(())
    } else {
        Err(AuthorityError::Config(format!(
            "database {}: expected a PostgreSQL URL postgres://USER@HOST:PORT/DATABASE (for SQLite set store.sqlite \
             in the config and give no database)",
            iotpki_store::postgres::redact(url)
        )))
    }
}
