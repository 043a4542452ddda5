//! The authority's commands: init, serve, token, cert, audit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use iotpki_authority::init::InitOptions;
use iotpki_authority::SystemClock;
use iotpki_core::keys::KeyType;
use iotpki_core::name::DeviceSerial;
use iotpki_core::time::rfc3339;
use iotpki_core::wire;
use iotpki_server::views;
use iotpki_store::{CertQuery, CertStatus};

use crate::{DirArg, PassArg};

/// `iotpki init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    pass: PassArg,
    /// Key type of the CA and server keys: p256, p384, ed25519, ml-dsa-44, ml-dsa-65 or ml-dsa-87.
    #[arg(long, default_value = "p256")]
    key_type: String,
    /// Organisation named in every subject.
    #[arg(long, default_value = "iotpki")]
    org: String,
    /// A fully qualified DNS name or an IP address for the server certificate (repeatable).
    #[arg(long = "server-name", default_values = ["127.0.0.1", "::1"])]
    server_names: Vec<String>,
    /// Default listen address written to the config.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    /// Plain-HTTP listen address for CRLs and OCSP, written to the config.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: String,
    /// Base URL written into issued certificates for their CRL and OCSP
    /// (default: http:// and the --http-listen address).
    #[arg(long)]
    public_http_url: Option<String>,
    /// Split each issuing CA's CRL into this many shards (partitioned CRLs, a
    /// power of two from 2 to 1024): a certificate names its shard,
    /// /crl/CA/S/K.crl, so a device fetches only that one. Default: one CRL per CA.
    #[arg(long, value_name = "S")]
    crl_shards: Option<u32>,
    /// Generate the CA keys inside this PKCS#11 token (RFC 7512 URI: 'pkcs11:token=LABEL'); the
    /// PIN comes from --pin-file or $IOTPKI_PIN.
    #[arg(long, value_name = "URI")]
    hsm: Option<String>,
    /// The token vendor's PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, value_name = "PATH", requires = "hsm")]
    pkcs11_module: Option<PathBuf>,
}

pub fn init(a: InitArgs) -> anyhow::Result<()> {
    let pass = a.pass.passphrase()?;
    let hsm = match &a.hsm {
        Some(uri) => {
            let token = iotpki_hsm::Pkcs11Uri::parse(uri)?;
            token.token_label()?;
            if token.object.is_some() || token.id.is_some() {
                bail!("--hsm names the token only (pkcs11:token=LABEL): init generates the keys and names them");
            }
            let module = match (&a.pkcs11_module, &token.module_path) {
                (Some(m), _) => m.clone(),
                (None, Some(m)) => PathBuf::from(m),
                (None, None) => bail!("--hsm needs --pkcs11-module PATH (the token vendor's PKCS#11 library)"),
            };
            // The config resolves relative paths against the authority's directory: record it absolute.
            let module = std::path::absolute(&module)?;
            let pin = iotpki_authority::Pin::from_file_or_env(a.pass.pin_file.as_deref())?;
            Some(iotpki_authority::init::HsmInit { module, token, pin })
        }
        None => None,
    };
    let opts = InitOptions {
        organization: a.org,
        key_type: KeyType::from_name(&a.key_type)?,
        server_names: a.server_names,
        listen: a.listen,
        public_http_url: Some(a.public_http_url.unwrap_or_else(|| format!("http://{}", a.http_listen))),
        http_listen: Some(a.http_listen),
        database: a.dir.database.clone(),
        hsm,
        crl_shards: a.crl_shards,
    };
    let r = iotpki_authority::init::init(&a.dir.dir, &opts, &pass, &SystemClock)?;
    println!("authority created in {}", r.dir.display());
    println!("trust anchor for devices: {}", r.root_cert.display());
    println!("next: iotpki serve --dir {}", r.dir.display());
    Ok(())
}

/// `iotpki serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    pass: PassArg,
    /// Address to listen on (default: the config's).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Plain-HTTP address for CRLs and OCSP (default: the config's `server.http_listen`).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// UDP address for EST over secure CoAP (RFC 9148, DTLS 1.3) (default: the config's `server.coaps_listen`).
    #[arg(long)]
    coaps_listen: Option<SocketAddr>,
    /// Accept DTLS 1.2 on the coaps listener too (default: the config's `server.coaps_dtls12`).
    #[arg(long)]
    coaps_dtls12: bool,
    /// For benchmarks only: no cookie exchange before a DTLS handshake (a round trip
    /// fewer), which lets a spoofed address make the listener send a whole server
    /// flight; logged as a warning.
    #[arg(long)]
    coaps_no_cookie: bool,
    /// Log lines as text, or as one JSON object per line (for journald or a log shipper).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How `serve` writes its log (stderr).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

pub fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let authority = Arc::new(a.dir.authority(&a.pass)?);
    let listen: SocketAddr = match a.listen {
        Some(l) => l,
        None => authority.config().server.listen.parse().context("server.listen in the config")?,
    };
    // Webhooks are checked before anything listens: a bad one stops the start.
    let webhooks = iotpki_server::events::load_webhooks(authority.dir(), &authority.config().events).map_err(|e| {
        anyhow!("events in {}: {e}", authority.dir().join(iotpki_authority::config::CONFIG_FILE).display())
    })?;
    // Templates were checked against RFC 5280 and our lint when the authority
    // opened; pkilint, when configured, vets their samples before anything listens.
    if let Some(exe) = iotpki_authority::templates::pkilint_exe(authority.dir(), authority.config()) {
        let n = authority.lint_templates(&exe).map_err(|e| {
            anyhow!("templates in {}: {e}", authority.dir().join(iotpki_authority::config::CONFIG_FILE).display())
        })?;
        tracing::info!(samples = n, pkilint = %exe.display(), "templates linted");
    }
    let rt = crate::server_runtime(authority.config().store.database.is_none())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            tracing::info!("shutting down");
        };
        let http_listen = match (a.http_listen, &authority.config().server.http_listen) {
            (Some(l), _) => Some(l),
            (None, Some(l)) => Some(l.parse::<SocketAddr>().context("server.http_listen in the config")?),
            (None, None) => None,
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // Both listeners are bound before the server says it is ready: the
        // first line it prints is the signal that every listener answers.
        let http_listener = match http_listen {
            Some(l) => {
                Some(tokio::net::TcpListener::bind(l).await.with_context(|| format!("cannot listen on {l}"))?)
            }
            None => None,
        };
        let coaps_listen = match (a.coaps_listen, &authority.config().server.coaps_listen) {
            (Some(l), _) => Some(l),
            (None, Some(l)) => Some(l.parse::<SocketAddr>().context("server.coaps_listen in the config")?),
            (None, None) => None,
        };
        // `[server] metrics_listen`: /metrics there alone (and not on the plain-HTTP listener).
        let metrics_listener = match &authority.config().server.metrics_listen {
            Some(l) => {
                let l = l.parse::<SocketAddr>().context("server.metrics_listen in the config")?;
                Some(tokio::net::TcpListener::bind(l).await.with_context(|| format!("cannot listen on {l}"))?)
            }
            None => None,
        };
        let coaps_socket = match coaps_listen {
            Some(l) => Some(tokio::net::UdpSocket::bind(l).await.with_context(|| format!("cannot listen on UDP {l}"))?),
            None => None,
        };
        // Cursors of new webhooks are made before the server says it is ready.
        let deliveries = if webhooks.is_empty() {
            None
        } else {
            let names: Vec<&str> = webhooks.iter().map(|w| w.name()).collect();
            tracing::info!(webhooks = %names.join(","), "delivering events");
            Some(
                iotpki_server::events::Deliveries::start(
                    authority.clone(),
                    webhooks,
                    iotpki_server::events::lease_owner(),
                )
                .await
                .context("starting the webhook deliveries")?,
            )
        };
        tracing::info!(%addr, "EST server listening (TLS 1.3)");
        println!("listening on https://{addr}");
        if let Some(u) = &coaps_socket {
            println!("EST-coaps on coaps://{}", u.local_addr()?);
        }
        // One set of limits for both listeners, replaced as a whole on SIGHUP.
        let limits = iotpki_server::LimitsHandle::new(iotpki_server::Limits::from(&authority.config().limits));
        let http = match http_listener {
            Some(listener) => {
                println!("CRL and OCSP on http://{}", listener.local_addr()?);
                let mut rx = stop_rx.clone();
                let stopped = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                Some(tokio::spawn(iotpki_server::serve_http_with(authority.clone(), listener, limits.clone(), stopped)))
            }
            None => None,
        };
        let metrics = match metrics_listener {
            Some(listener) => {
                println!("metrics on http://{}/metrics", listener.local_addr()?);
                let mut rx = stop_rx.clone();
                let stopped = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                Some(tokio::spawn(iotpki_server::serve_metrics_with(authority.clone(), listener, limits.clone(), stopped)))
            }
            None => None,
        };
        let dtls = iotpki_server::coaps::DtlsIdentity::of(&authority);
        let coaps = match coaps_socket {
            Some(socket) => {
                if a.coaps_no_cookie {
                    tracing::warn!("--coaps-no-cookie: DTLS handshakes without a cookie exchange (benchmarks only)");
                }
                let options = iotpki_server::coaps::CoapsOptions {
                    dtls12: a.coaps_dtls12 || authority.config().server.coaps_dtls12,
                    cookie: !a.coaps_no_cookie,
                    ..Default::default()
                };
                let mut rx = stop_rx.clone();
                let stopped = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                Some(tokio::spawn(iotpki_server::coaps::serve_coaps(
                    authority.clone(),
                    socket,
                    limits.clone(),
                    dtls.clone(),
                    options,
                    stopped,
                )))
            }
            None => None,
        };
        let tls = iotpki_server::TlsConfigs::new(iotpki_server::server_config(&authority)?);
        let live = Live { tls: tls.clone(), limits: limits.clone(), dtls };
        let reloader =
            tokio::spawn(reload_on_hangup(authority.clone(), live, a.dir.clone(), a.pass.clone(), a.listen, a.http_listen));
        let r = iotpki_server::serve_with(authority, listener, limits, tls, shutdown).await;
        // The delivery in flight ends and its cursor is written before the server stops.
        if let Some(d) = deliveries {
            d.stop().await;
        }
        reloader.abort();
        let _ = stop_tx.send(true);
        if let Some(h) = http {
            h.await??;
        }
        if let Some(h) = metrics {
            h.await??;
        }
        if let Some(h) = coaps {
            let stats = h.await??;
            tracing::info!(
                datagrams = stats.datagrams_in,
                dropped = stats.dropped,
                handshakes = stats.handshakes,
                failed = stats.failed,
                "EST-coaps stopped"
            );
        }
        r?;
        Ok(())
    })
}

/// What a reload replaces while serving.
#[derive(Clone)]
struct Live {
    tls: iotpki_server::TlsConfigs,
    limits: iotpki_server::LimitsHandle,
    /// The coaps listener's certificate and key.
    dtls: iotpki_server::coaps::DtlsIdentity,
}

/// On each SIGHUP: read the config and the server's certificate and key
/// again, check them all, then apply what can change live:
/// - the server certificate and key: new connections get the new ones, open
///   connections keep theirs;
/// - `[limits]` (rates, bursts, timeouts, connection and request caps) on both
///   listeners: new connections and new requests (on open connections too)
///   get the new values; an open connection keeps the timeouts it began
///   with; the rate limiter's buckets keep their tokens and refill at the new rates.
///
/// What needs a restart (listen addresses, the store, the CAs, labels and
/// tokens, the refusal-audit window) is logged as such (WARN) and left as it runs.
/// A reload that fails (bad TOML, a value the config loader refuses, an
/// unreadable certificate or key) changes nothing and is logged at ERROR.
async fn reload_on_hangup(
    authority: Arc<iotpki_authority::Authority>,
    live: Live,
    dir: DirArg,
    pass: PassArg,
    listen_arg: Option<SocketAddr>,
    http_listen_arg: Option<SocketAddr>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reloading needs a restart");
            return;
        }
    };
    // The limits in force, as configured (to say which ones a reload changes).
    let mut applied = authority.config().limits.clone();
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config and the server certificate");
        let (a, l, d, p, prev) = (authority.clone(), live.clone(), dir.clone(), pass.clone(), applied.clone());
        let r = tokio::task::spawn_blocking(move || reload(&a, &l, &prev, &d, &p, listen_arg, http_listen_arg)).await;
        match r {
            Ok(Ok((serial, limits))) => {
                applied = limits;
                tracing::info!(server_cert = %serial, "reloaded: new connections use this server certificate")
            }
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "reload failed: still serving with the previous configuration")
            }
            Err(e) => tracing::error!(error = %e, "reload failed: still serving with the previous configuration"),
        }
    }
}

/// One reload: everything is read and checked before anything is replaced.
/// Returns the new server certificate's serial and the limits now in force.
fn reload(
    authority: &iotpki_authority::Authority,
    live: &Live,
    applied: &iotpki_authority::config::LimitsConfig,
    dir: &DirArg,
    pass: &PassArg,
    listen_arg: Option<SocketAddr>,
    http_listen_arg: Option<SocketAddr>,
) -> anyhow::Result<(String, iotpki_authority::config::LimitsConfig)> {
    let cfg = dir.config()?;
    let running = authority.config();
    let differs = |a: &dyn erased::Json, b: &dyn erased::Json| a.json() != b.json();
    let mut restart = Vec::new();
    if listen_arg.is_none() && cfg.server.listen != running.server.listen {
        restart.push("server.listen");
    }
    if http_listen_arg.is_none() && cfg.server.http_listen != running.server.http_listen {
        restart.push("server.http_listen");
    }
    if cfg.server.metrics_listen != running.server.metrics_listen {
        restart.push("server.metrics_listen");
    }
    if differs(&cfg.store, &running.store) {
        restart.push("store");
    }
    // The authority sums refusals up in windows set when it was opened.
    if cfg.limits.refusal_audit_window_secs != running.limits.refusal_audit_window_secs
        || cfg.limits.refusal_audit_individual != running.limits.refusal_audit_individual
    {
        restart.push("limits.refusal_audit_window_secs, limits.refusal_audit_individual");
    }
    if cfg.events != running.events {
        restart.push("events");
    }
    if differs(&cfg.ca, &running.ca) || differs(&cfg.label, &running.label) || differs(&cfg.tokens, &running.tokens) {
        restart.push("ca, label or tokens");
    }
    let (chain, key) = iotpki_authority::servers::load_server_tls(authority.dir(), &cfg, &pass.passphrase()?)?;
    let serial =
        chain.first().and_then(|c| iotpki_core::profile::cert_info(c).ok()).map(|i| i.serial).unwrap_or_default();
    let dtls = iotpki_server::coaps::DtlsIdentity::new(
        chain.first().map(|c| c.to_vec()).unwrap_or_default(),
        key.secret_der().to_vec(),
    );
    let tls = iotpki_server::server_config_with(authority, chain, key).context("the server certificate and key")?;
    // All read and checked: from here on nothing fails.
    if !restart.is_empty() {
        tracing::warn!(changed = %restart.join(", "), "changed in the config but not reloaded: restart iotpki serve to apply");
    }
    let mut changed = erased::changed_fields(applied, &cfg.limits);
    changed.retain(|k| !k.starts_with("refusal_audit_"));
    if !changed.is_empty() {
        live.limits.replace(iotpki_server::Limits::from(&cfg.limits));
        tracing::info!(
            changed = %changed.iter().map(|k| format!("limits.{k}")).collect::<Vec<_>>().join(", "),
            "limits reloaded: new connections and requests use them"
        );
    }
    live.tls.replace(tls);
    live.dtls.replace(&dtls);
    Ok((serial, cfg.limits))
}

/// Config sections compared by their serialized form (the config types have no `PartialEq`).
mod erased {
    pub trait Json {
        fn json(&self) -> Option<serde_json::Value>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Option<serde_json::Value> {
            serde_json::to_value(self).ok()
        }
    }

    /// The top-level fields whose values differ between `a` and `b`.
    pub fn changed_fields(a: &dyn Json, b: &dyn Json) -> Vec<String> {
        match (a.json(), b.json()) {
            (Some(serde_json::Value::Object(a)), Some(serde_json::Value::Object(b))) => {
                let mut keys: Vec<String> =
                    a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
                keys.sort();
                keys.dedup();
                keys
            }
            (a, b) if a == b => Vec::new(),
            _ => vec!["(all)".into()],
        }
    }
}

/// `iotpki token ...`.
#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a one-time enrollment token for a device serial; prints it once.
    Create {
        #[command(flatten)]
        dir: DirArg,
        /// The device serial the token is for.
        #[arg(long)]
        serial: String,
        /// Lifetime: 90s, 30m, 1h, 7d (default: the config's, 1h).
        #[arg(long, value_parser = crate::duration::parse_secs)]
        ttl: Option<u64>,
        /// The certificate template the enrollment gets (a `[[template]]` of the
        /// config, docs/templates.md; default: the label's, else the built-in profile).
        #[arg(long, value_name = "NAME")]
        template: Option<String>,
    },
}

pub fn token(c: TokenCmd) -> anyhow::Result<()> {
    match c {
        TokenCmd::Create { dir, serial, ttl, template } => {
            let serial = DeviceSerial::parse(&serial).map_err(|e| anyhow!("--serial: {e}"))?;
            let cfg = dir.config()?;
            let store = iotpki_authority::open_store(&dir.dir, &cfg)?;
            let t = iotpki_authority::tokens::create_with_template(
                store.as_ref(),
                &cfg,
                &SystemClock,
                &serial,
                ttl,
                template.as_deref(),
                "admin:cli",
            )?;
            println!("{t}");
            Ok(())
        }
    }
}

/// `iotpki cert ...`.
#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// List certificates, newest first.
    List {
        #[command(flatten)]
        dir: DirArg,
        /// Only this device's.
        #[arg(long)]
        device: Option<String>,
        /// Only from this CA.
        #[arg(long)]
        ca: Option<String>,
        /// Only of this profile: device, station, admin, server, ocsp-signer, ...
        #[arg(long)]
        profile: Option<String>,
        /// Only those that expire within this long from now (e.g. 7d), not the expired ones.
        #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_secs)]
        expiring_within: Option<u64>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one certificate by serial (hex).
    Show {
        #[command(flatten)]
        dir: DirArg,
        /// The certificate serial, hex.
        serial: String,
        /// Print the certificate as PEM only.
        #[arg(long)]
        pem: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a key and a server certificate for one of the fleet's servers (an MQTT broker, an
    /// HTTPS backend, a gateway): from the operational CA, recorded and audited.
    IssueServer(crate::server_cert::IssueServerArgs),
    /// Renew a server certificate issued by issue-server: a new key, the same names; the old
    /// certificate is superseded.
    RenewServer(crate::server_cert::RenewServerArgs),
    /// Check a client's list of received certificates against the store: each
    /// must be recorded, byte for byte, and none received twice. Exits non-zero otherwise.
    Reconcile {
        #[command(flatten)]
        dir: DirArg,
        /// One line per received certificate: its DER, base64 (as `iotpki loadgen --record` writes).
        file: PathBuf,
    },
}

fn status_text(s: &CertStatus) -> String {
    match s {
        CertStatus::Good => wire::status_text(None),
        CertStatus::Revoked { at, reason } => wire::status_text(Some((*at, *reason))),
    }
}

/// The status column: a renewed certificate names its successor; the current
/// one (good, not renewed) says so.
fn status_line(r: &iotpki_store::CertRecord) -> String {
    match (&r.status, &r.replaced_by) {
        (_, Some(next)) => format!("{}, renewed by {next}", status_text(&r.status)),
        (CertStatus::Good, None) => "good, current".into(),
        (_, None) => status_text(&r.status),
    }
}

pub fn cert(c: CertCmd) -> anyhow::Result<()> {
    match c {
        CertCmd::IssueServer(a) => crate::server_cert::issue(a),
        CertCmd::RenewServer(a) => crate::server_cert::renew(a),
        CertCmd::Reconcile { dir, file } => {
            use base64::Engine as _;
            let store = dir.store()?;
            let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
            let (mut received, mut missing, mut differ, mut twice) = (0u64, Vec::new(), Vec::new(), Vec::new());
            let mut seen = std::collections::HashSet::new();
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let der = base64::engine::general_purpose::STANDARD
                    .decode(line)
                    .map_err(|e| anyhow!("{} line {}: not base64: {e}", file.display(), i + 1))?;
                let info = iotpki_core::profile::cert_info(&der)
                    .map_err(|e| anyhow!("{} line {}: {e}", file.display(), i + 1))?;
                received += 1;
                if !seen.insert(info.serial.clone()) {
                    twice.push(info.serial.clone());
                }
                match store.certificate(&info.serial)? {
                    None => missing.push(info.serial),
                    Some(r) if r.der != der => differ.push(info.serial),
                    Some(_) => {}
                }
            }
            println!(
                "received {received}, recorded {}, missing {}, different {}, received twice {}",
                received - missing.len() as u64 - differ.len() as u64,
                missing.len(),
                differ.len(),
                twice.len()
            );
            for s in missing.iter().chain(&differ).chain(&twice).take(10) {
                println!("  problem: {s}");
            }
            if !(missing.is_empty() && differ.is_empty() && twice.is_empty()) {
                bail!("the store does not account for every certificate received");
            }
            Ok(())
        }
        CertCmd::List { dir, device, ca, profile, expiring_within, limit, json } => {
            let store = dir.store()?;
            let (expiring_after, expiring_before) = match expiring_within {
                Some(d) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .context("the system clock is before 1970")?
                        .as_secs();
                    let now = i64::try_from(now).context("the system clock is out of range")?;
                    let d = i64::try_from(d).context("--expiring-within is too long")?;
                    (Some(now), Some(now.saturating_add(d)))
                }
                None => (None, None),
            };
            let q = CertQuery { device_serial: device, ca, expiring_before, expiring_after, limit, profile };
            let rows = store.list_certificates(&q)?;
            if json {
                for r in &rows {
                    println!("{}", wire::to_string(&views::cert_record(r)));
                }
                return Ok(());
            }
            println!(
                "{:<32}  {:<13}  {:<10}  {:<20}  {:<20}  STATUS",
                "SERIAL", "CA", "PROFILE", "DEVICE", "NOT AFTER"
            );
            for r in &rows {
                println!(
                    "{:<32}  {:<13}  {:<10}  {:<20}  {:<20}  {}",
                    r.serial,
                    r.ca,
                    r.profile,
                    r.device_serial.as_deref().unwrap_or("-"),
                    rfc3339(r.not_after),
                    status_line(r)
                );
            }
            eprintln!("{} certificate(s)", rows.len());
            Ok(())
        }
        CertCmd::Show { dir, serial, pem, json } => {
            let store = dir.store()?;
            let r = store
                .certificate(&serial.to_ascii_lowercase())?
                .ok_or_else(|| anyhow!("no certificate with serial {serial} in the store"))?;
            let pem_text = iotpki_core::pem::encode("CERTIFICATE", &r.der);
            if pem {
                print!("{pem_text}");
            } else if json {
                let v = wire::CertRecord { pem: Some(pem_text), ..views::cert_record(&r) };
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let v = serde_json::to_value(views::cert_record(&r))?;
                for (k, val) in v.as_object().into_iter().flatten() {
                    println!("{k:>13}: {}", val.as_str().map(str::to_string).unwrap_or_else(|| val.to_string()));
                }
                print!("{pem_text}");
            }
            Ok(())
        }
    }
}

/// `iotpki audit ...`.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Walk the whole chain and check every link; exits non-zero if broken.
    Verify {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Print entries.
    List {
        #[command(flatten)]
        dir: DirArg,
        /// First entry (sequence number).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub fn audit(c: AuditCmd) -> anyhow::Result<()> {
    match c {
        AuditCmd::Verify { dir } => {
            let store = dir.store()?;
            match store.verify_audit() {
                Ok(r) => {
                    println!("audit chain OK: {} entries, head {}", r.entries, r.head);
                    Ok(())
                }
                Err(e) => bail!("{e}"),
            }
        }
        AuditCmd::List { dir, from, limit } => {
            let store = dir.store()?;
            for e in store.audit_entries(from, limit)? {
                let ev = &e.event;
                println!(
                    "{:>6}  {}  {:<16}  {:<18}  {:<34}  {}",
                    e.seq,
                    rfc3339(ev.at),
                    ev.actor,
                    ev.action,
                    ev.target,
                    ev.detail
                );
            }
            Ok(())
        }
    }
}

/// Read a PEM file for a flag, with the flag's name in the error.
pub fn read_flag_file(flag: &str, p: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("{flag} {}", p.display()))
}

/// `iotpki revoke`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["serial", "device"])))]
pub struct RevokeArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Revoke this certificate (serial, hex).
    #[arg(long)]
    serial: Option<String>,
    /// Revoke every certificate of this device that is not revoked yet.
    #[arg(long)]
    device: Option<String>,
    /// RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged,
    /// superseded, cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise.
    #[arg(long, default_value = "unspecified")]
    reason: String,
}

pub fn revoke(a: RevokeArgs) -> anyhow::Result<()> {
    use iotpki_authority::revocation::{self, Target};
    let reason = iotpki_core::crl::reason_code(&a.reason)?;
    let store = a.dir.store()?;
    let device = a.device.as_deref().map(DeviceSerial::parse).transpose().map_err(|e| anyhow!("--device: {e}"))?;
    let target = match (&a.serial, &device) {
        (Some(s), _) => Target::Serial(s),
        (None, Some(d)) => Target::Device(d),
        (None, None) => bail!("name --serial or --device"),
    };
    for s in revocation::revoke(store.as_ref(), &SystemClock, target, reason, "admin:cli")? {
        println!("revoked {s} ({})", iotpki_core::crl::reason_name(reason));
    }
    Ok(())
}

/// `iotpki db ...`.
#[derive(Subcommand, Debug)]
pub enum DbCmd {
    /// Apply the migrations a PostgreSQL database lacks (idempotent) and print its schema version.
    Migrate {
        /// The database: `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE`.
        #[arg(long, value_name = "URL", env = "IOTPKI_DATABASE", hide_env_values = true)]
        database: String,
    },
}

pub fn db(c: DbCmd) -> anyhow::Result<()> {
    match c {
        DbCmd::Migrate { database } => {
            iotpki_authority::config::check_database(&database)?;
            let store = iotpki_store::postgres::PgStore::open(&database)?;
            println!("schema version {}", store.schema_version()?);
        }
    }
    Ok(())
}

/// `iotpki hsm ...`.
#[derive(Subcommand, Debug)]
pub enum HsmCmd {
    /// Check every CA key the config names in the token: present, signs, and protected
    /// (never readable or extractable, generated in the token). Fails if one is not.
    Status {
        #[command(flatten)]
        dir: DirArg,
        /// Read the token's user PIN from this file (else from $IOTPKI_PIN).
        #[arg(long, value_name = "FILE")]
        pin_file: Option<PathBuf>,
    },
}

pub fn hsm(c: HsmCmd) -> anyhow::Result<()> {
    match c {
        HsmCmd::Status { dir, pin_file } => {
            let cfg = iotpki_authority::config::Config::load(&dir.dir)?;
            let Some(h) = &cfg.hsm else {
                bail!("{} keeps its CA keys in files, not in a PKCS#11 token", dir.dir.display());
            };
            let pin = iotpki_authority::Pin::from_file_or_env(pin_file.as_deref())?;
            let module = iotpki_authority::keyfile::resolve(&dir.dir, &h.module);
            let token = iotpki_hsm::Token::open(&module, &iotpki_hsm::Pkcs11Uri::parse(&h.token)?)?;
            println!("token {:?} in {}", token.label(), module.display());
            let mut weak = Vec::new();
            for ca in &cfg.ca {
                let Some(uri) = &ca.key_uri else {
                    println!(
                        "{}: key file {}",
                        ca.name,
                        ca.key.as_deref().unwrap_or(std::path::Path::new("?")).display()
                    );
                    continue;
                };
                let key = iotpki_hsm::HsmKey::open(&token, &pin, &iotpki_hsm::Pkcs11Uri::parse(uri)?)?;
                let p = key.protection()?;
                println!("{}: {} {}", ca.name, iotpki_core::keys::Signer::key_type(&key), key.uri());
                println!("  signs: ok; {p}");
                if !p.is_protected() {
                    weak.push(ca.name.clone());
                }
            }
            if !weak.is_empty() {
                bail!("the private keys of {} are not protected by the token", weak.join(", "));
            }
            Ok(())
        }
    }
}
