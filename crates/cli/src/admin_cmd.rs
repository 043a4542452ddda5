//! `iotpki admin ...`: admin certificates for the admin API, and a client for it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use iotpki_agent::est_client::{ClientIdentity, EstClient};
use iotpki_authority::SystemClock;
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::pem;
use iotpki_core::time::rfc3339;
use iotpki_store::CertStatus;

use crate::{DirArg, PassArg};

/// The files `admin add` writes into its --out directory.
pub const KEY_FILE: &str = "admin.key";
/// The admin certificate, then the CA that issued it (PEM).
pub const CERT_FILE: &str = "admin.crt";
/// The authority's root: what the admin trusts the server by (PEM).
pub const ROOT_FILE: &str = "ca.crt";

/// `iotpki admin ...`.
#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Certify an admin of the admin API (mutual TLS); its key is made in --out, with its
    /// certificate (admin.key, admin.crt) and the authority's root (ca.crt).
    Add {
        /// The admin's name (1 to 64 of A-Z a-z 0-9 - _ .).
        name: String,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        pass: PassArg,
        /// The admin's directory (made here; it must not hold an admin key yet).
        #[arg(long)]
        out: PathBuf,
        /// Lifetime of the certificate: 90s, 12h, 30d (default 365d, at most 730d).
        #[arg(long, value_parser = crate::duration::parse_secs)]
        validity: Option<u64>,
        /// Key type of the admin's key.
        #[arg(long, default_value = "p256")]
        key_type: String,
    },
    /// Revoke every certificate of an admin: the admin API refuses it from now on.
    Revoke {
        /// The admin's name.
        name: String,
        #[command(flatten)]
        dir: DirArg,
        /// RFC 5280 reason (see `iotpki revoke --help`).
        #[arg(long, default_value = "privilegeWithdrawn")]
        reason: String,
    },
    /// List admin certificates, newest first.
    List {
        #[command(flatten)]
        dir: DirArg,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print a one-time link that opens a web console session (`/console/`) acting as admin
    /// NAME: it works once, for --ttl. Give it to the operator over a channel you trust.
    ConsoleLink {
        #[command(flatten)]
        dir: DirArg,
        /// The admin the session acts as (it must hold a good admin certificate).
        #[arg(long)]
        admin: String,
        /// `admin` (reads and actions) or `read` (reads only).
        #[arg(long, default_value = "admin")]
        role: String,
        /// How long the link works: 90s, 15m, 2h (default 15m, at most 24h).
        #[arg(long, value_parser = crate::duration::parse_secs)]
        ttl: Option<u64>,
        /// The server as the operator's browser reaches it, https://HOST:PORT
        /// (default: the config's listen address).
        #[arg(long)]
        url: Option<String>,
    },
    /// Call the admin API with an admin's certificate: prints the JSON answer; exits non-zero
    /// with the server's reason when refused. Example: `admin call GET /admin/v1/certificates`.
    Call {
        /// The admin's directory (`admin add --out`).
        #[arg(long)]
        admin_dir: PathBuf,
        /// The authority's server, https://HOST:PORT.
        #[arg(long)]
        server: String,
        /// GET or POST.
        method: String,
        /// The path, /admin/v1/...
        path: String,
        /// A JSON request body.
        #[arg(long)]
        data: Option<String>,
    },
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| path.display().to_string())
}

fn read_pem_file(path: &Path, label: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{} (made by iotpki admin add)", path.display()))?;
    let all = pem::decode_all(label, &text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if all.is_empty() {
        bail!("{}: no {label}", path.display());
    }
    Ok(all)
}

/// The EST client of an admin directory, for `server`.
pub fn client(admin_dir: &Path, server: &str) -> anyhow::Result<EstClient> {
    let key_der = read_pem_file(&admin_dir.join(KEY_FILE), "PRIVATE KEY")?.remove(0);
    let key: Arc<dyn Signer> = Arc::new(SoftKey::from_pkcs8(&key_der)?);
    let chain = read_pem_file(&admin_dir.join(CERT_FILE), "CERTIFICATE")?;
    let root = read_pem_file(&admin_dir.join(ROOT_FILE), "CERTIFICATE")?;
    Ok(EstClient::new(server, None, &root, Some(ClientIdentity { chain, key }))?)
}

pub fn run(c: AdminCmd) -> anyhow::Result<()> {
    match c {
        AdminCmd::Add { name, dir, pass, out, validity, key_type } => {
            let key_path = out.join(KEY_FILE);
            if key_path.exists() {
                bail!("{} holds an admin key already: choose another --out", key_path.display());
            }
            let authority = dir.authority(&pass)?;
            let key = SoftKey::generate(KeyType::from_name(&key_type)?)?;
            let validity = validity.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
            let (cert, chain) = authority.add_admin(&name, key.public_key_der(), validity, "admin:cli")?;
            std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
            write_new(&key_path, pem::encode("PRIVATE KEY", &key.to_pkcs8()?).as_bytes(), 0o600)?;
            let certs: String =
                std::iter::once(&cert).chain(chain.iter()).map(|c| pem::encode("CERTIFICATE", c)).collect();
            write_new(&out.join(CERT_FILE), certs.as_bytes(), 0o644)?;
            write_new(&out.join(ROOT_FILE), pem::encode("CERTIFICATE", authority.root_der()).as_bytes(), 0o644)?;
            let info = iotpki_core::profile::cert_info(&cert)?;
            println!(
                "admin {name} certified (certificate {}, until {}); its directory is {}",
                info.serial,
                rfc3339(info.not_after),
                out.display()
            );
            Ok(())
        }
        AdminCmd::Revoke { name, dir, reason } => {
            let reason = iotpki_core::crl::reason_code(&reason)?;
            let store = dir.store()?;
            for s in iotpki_authority::admin::revoke_admin(store.as_ref(), &SystemClock, &name, reason, "admin:cli")? {
                println!("revoked admin {name}'s certificate {s} ({})", iotpki_core::crl::reason_name(reason));
            }
            Ok(())
        }
        AdminCmd::List { dir, json } => {
            let store = dir.store()?;
            let now = iotpki_authority::Clock::now(&SystemClock);
            let all = iotpki_authority::admin::admins(store.as_ref())?;
            for a in &all {
                let r = &a.record;
                let status = match r.status {
                    CertStatus::Revoked { at, .. } => format!("revoked {}", rfc3339(at)),
                    CertStatus::Good if r.not_after <= now => "expired".to_string(),
                    CertStatus::Good => "active".to_string(),
                };
                if json {
                    let v = serde_json::json!({
                        "name": a.name, "serial": r.serial, "not_after": rfc3339(r.not_after), "status": status,
                    });
                    println!("{v}");
                } else {
                    println!("{:<24}  {:<32}  {}  {status}", a.name, r.serial, rfc3339(r.not_after));
                }
            }
            if !json {
                eprintln!("{} admin certificate(s)", all.len());
            }
            Ok(())
        }
        AdminCmd::ConsoleLink { dir, admin, role, ttl, url } => {
            let role = iotpki_authority::console::ConsoleRole::parse(&role)?;
            let base = match url {
                Some(u) => u,
                None => default_console_base(&dir.config()?.server.listen)?,
            };
            let base = base.trim_end_matches('/');
            if !base.starts_with("https://") {
                bail!("--url {base}: the console is served over https://");
            }
            let store = dir.store()?;
            let link =
                iotpki_authority::console::make_link(store.as_ref(), &SystemClock, &admin, role, ttl, "admin:cli")?;
            println!("{base}/console/login?link={}", link.secret.as_str());
            eprintln!(
                "one-time console link for admin {admin} (role {}), until {}: it opens one session",
                role.name(),
                rfc3339(link.expires_at)
            );
            Ok(())
        }
        AdminCmd::Call { admin_dir, server, method, path, data } => {
            let method = method.to_ascii_uppercase();
            if !matches!(method.as_str(), "GET" | "POST") {
                bail!("method {method}: the admin API answers GET and POST");
            }
            if !path.starts_with("/admin/v1/") {
                bail!("path {path:?}: admin API paths start with /admin/v1/");
            }
            let client = client(&admin_dir, &server)?;
            let (ct, body) = match data {
                Some(d) => (Some("application/json"), d.into_bytes()),
                None => (None, Vec::new()),
            };
            let (status, answer) =
                crate::runtime()?.block_on(async move { client.request(&method, &path, ct, body).await })?;
            let text = String::from_utf8_lossy(&answer);
            if status >= 400 {
                bail!("refused (HTTP {status}): {}", text.trim());
            }
            match serde_json::from_slice::<serde_json::Value>(&answer) {
                Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
                Err(_) => print!("{text}"),
            }
            Ok(())
        }
    }
}

/// `https://HOST:PORT` of a listen address; an unspecified host is `localhost`.
fn default_console_base(listen: &str) -> anyhow::Result<String> {
    let addr: std::net::SocketAddr =
        listen.parse().with_context(|| format!("the config's listen address {listen:?}: give --url"))?;
    if addr.port() == 0 {
        bail!("the config listens on a port chosen at start (port 0): give --url https://HOST:PORT");
    }
    let host = if addr.ip().is_unspecified() { "localhost".to_string() } else { addr.ip().to_string() };
    let host = if addr.is_ipv6() && !addr.ip().is_unspecified() { format!("[{host}]") } else { host };
    Ok(format!("https://{host}:{}", addr.port()))
}
