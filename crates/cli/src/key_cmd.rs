//! `iotpki key` (the blocked-keys registry) and `iotpki firmware scan`
//! (leaked keys in firmware images, named, revoked and blocked).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _};
use clap::Subcommand;
use iotpki_authority::key_registry::{self, Holder, KeyInfo};
use iotpki_authority::SystemClock;
use iotpki_core::time::rfc3339;
use iotpki_core::wire;
use iotpki_scan::{FindingKind, Report};
use iotpki_server::views;
use iotpki_store::{CertRecord, CertStatus, KeysBlocked};
use serde::Serialize;

use crate::DirArg;

/// Exit status of `firmware scan --fail-on-key` when a private key was found
/// (1 is kept for the scan's own failures).
const EXIT_KEY_FOUND: i32 = 3;

/// Where the recovery procedures are.
const DOC: &str = "docs/leaked-keys.md";

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Block a key: no issuance path certifies it again (enrollment, renewal, the factory
    /// line, commissioning, stations, delegated CAs); a station's offline birth with it is
    /// flagged and revoked. Name it by --spki-hash, --cert or --key (any of PEM, DER,
    /// PKCS#1, PKCS#8, SEC1, OpenSSH, PKCS#12 without a password).
    Block {
        #[command(flatten)]
        dir: DirArg,
        /// SHA-256 of the key's DER subjectPublicKeyInfo (64 hex digits).
        #[arg(long = "spki-hash", value_name = "H")]
        spki_hash: Vec<String>,
        /// A certificate (PEM or DER): its key.
        #[arg(long, value_name = "FILE")]
        cert: Vec<PathBuf>,
        /// A private key file: its public key (the file is read, never copied).
        #[arg(long, value_name = "FILE")]
        key: Vec<PathBuf>,
        /// Why (said to whoever asks for a certificate for the key).
        #[arg(long, default_value = "compromised")]
        reason: String,
        /// Also revoke every certificate of these keys (reason keyCompromise).
        #[arg(long)]
        revoke: bool,
    },
    /// Block every key of a list: one SHA-256 (hex) per line; blank lines and `#` comments
    /// are skipped, text after the hash is kept as the line's source.
    Import {
        #[command(flatten)]
        dir: DirArg,
        /// The list ("-" for standard input).
        file: PathBuf,
        /// Why.
        #[arg(long, default_value = "on an imported list of compromised keys")]
        reason: String,
        /// Also revoke every certificate of these keys (reason keyCompromise).
        #[arg(long)]
        revoke: bool,
    },
    /// The blocked keys, oldest first.
    ListBlocked {
        #[command(flatten)]
        dir: DirArg,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Whose key it is: a CA's, a station's, a device's (with its certificates), or nobody's.
    Show {
        #[command(flatten)]
        dir: DirArg,
        /// SHA-256 of the key's DER subjectPublicKeyInfo.
        #[arg(long = "spki-hash", value_name = "H")]
        spki_hash: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum FirmwareCmd {
    /// Read firmware images and every archive and filesystem inside them (gzip, xz, tar,
    /// cpio, zip, squashfs, and raw bytes), find private keys, certificates and enrollment
    /// tokens, and name whose they are. The report holds hashes and offsets, never a key.
    Scan {
        /// The authority's directory: keys are looked up in its registry (without it, the
        /// scan only finds).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The authority's PostgreSQL database, if not the config's.
        #[arg(long, value_name = "URL", env = "IOTPKI_DATABASE", hide_env_values = true)]
        database: Option<String>,
        /// The images.
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
        /// The report as one JSON document.
        #[arg(long)]
        json: bool,
        /// Block every private key found, revoke every certificate of them (reason
        /// keyCompromise) and withdraw every unused enrollment token found, in one audited
        /// operation (needs --dir).
        #[arg(long)]
        revoke: bool,
        /// Exit with status 3 when any private key is found (a release gate for firmware CI).
        #[arg(long = "fail-on-key")]
        fail_on_key: bool,
        /// Stop opening containers deeper than this.
        #[arg(long, default_value_t = iotpki_scan::walk::Limits::default().max_depth)]
        max_depth: u32,
    },
}

pub fn key(c: KeyCmd) -> anyhow::Result<()> {
    match c {
        KeyCmd::Block { dir, spki_hash, cert, key, reason, revoke } => {
            let mut keys = Vec::new();
            for h in &spki_hash {
                keys.push((key_registry::parse_spki_hash(h)?, "given by hash".to_string()));
            }
            for f in &cert {
                for h in hashes_in(f, false)? {
                    keys.push((h, format!("certificate {}", f.display())));
                }
            }
            for f in &key {
                for h in hashes_in(f, true)? {
                    keys.push((h, format!("key file {}", f.display())));
                }
            }
            if keys.is_empty() {
                bail!("name a key: --spki-hash H, --cert FILE or --key FILE");
            }
            let store = dir.store()?;
            let done = key_registry::block(store.as_ref(), &SystemClock, &keys, &[], &reason, revoke, "admin:cli")?;
            print_blocked(&done, revoke);
            Ok(())
        }
        KeyCmd::Import { dir, file, reason, revoke } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let mut keys = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let (hash, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
                let hash = key_registry::parse_spki_hash(hash).map_err(|e| anyhow!("line {}: {e}", i + 1))?;
                let source = if rest.trim().is_empty() {
                    format!("imported from {}", file.display())
                } else {
                    rest.trim().to_string()
                };
                keys.push((hash, source));
            }
            if keys.is_empty() {
                bail!("{} names no key (one SHA-256 per line)", file.display());
            }
            let store = dir.store()?;
            let done = key_registry::block(store.as_ref(), &SystemClock, &keys, &[], &reason, revoke, "admin:cli")?;
            print_blocked(&done, revoke);
            Ok(())
        }
        KeyCmd::ListBlocked { dir, json } => {
            let store = dir.store()?;
            let keys = store.blocked_keys()?;
            for k in &keys {
                if json {
                    println!("{}", serde_json::to_string(&views::blocked_key(k))?);
                } else {
                    println!(
                        "{}  {}  {}  {} ({})",
                        k.spki_sha256,
                        rfc3339(k.blocked_at),
                        k.blocked_by,
                        k.reason,
                        k.source
                    );
                }
            }
            if !json && keys.is_empty() {
                println!("no key is blocked");
            }
            Ok(())
        }
        KeyCmd::Show { dir, spki_hash, json } => {
            let store = dir.store()?;
            let info = key_registry::lookup(store.as_ref(), &key_registry::parse_spki_hash(&spki_hash)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&views::key_registry(&info))?);
            } else {
                print_registry(&info, "  ");
            }
            Ok(())
        }
    }
}

/// The SHA-256 of every key (`private`) or certificate's key in a file.
fn hashes_in(f: &PathBuf, private: bool) -> anyhow::Result<Vec<String>> {
    let mut bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
    let found = iotpki_scan::keys::find_all(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    let mut out = Vec::new();
    for (_, kind) in found {
        match kind {
            FindingKind::PrivateKey { spki_sha256: Some(h), .. } if private => out.push(h),
            FindingKind::PrivateKey { spki_sha256: None, note, .. } if private => bail!(
                "{}: a private key whose public key cannot be derived ({}): name it by --spki-hash",
                f.display(),
                note.unwrap_or_else(|| "encrypted".into())
            ),
            FindingKind::Certificate { spki_sha256, .. } if !private => out.push(spki_sha256),
            _ => {}
        }
    }
    out.dedup();
    if out.is_empty() {
        bail!("{}: no {} found in it", f.display(), if private { "private key" } else { "certificate" });
    }
    Ok(out)
}

fn print_blocked(done: &KeysBlocked, revoke: bool) {
    for k in &done.blocked {
        println!("blocked {k}");
    }
    for k in &done.already {
        println!("already blocked {k}");
    }
    for s in &done.revoked {
        println!("revoked {s} (keyCompromise)");
    }
    if !done.spared.is_empty() {
        if revoke {
            println!(
                "not revoked here (CA certificates: `iotpki ca revoke --serial S --reason keyCompromise`, see {DOC}): {}",
                done.spared.join(", ")
            );
        } else {
            println!("certificates of these keys still good (add --revoke to revoke them): {}", done.spared.join(", "));
        }
    }
}

fn print_registry(info: &KeyInfo, indent: &str) {
    let certs = |certs: &[CertRecord]| {
        certs
            .iter()
            .map(|c| match c.status {
                CertStatus::Good => format!("{} (good until {})", c.serial, rfc3339(c.not_after)),
                CertStatus::Revoked { .. } => format!("{} (revoked)", c.serial),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &info.holder {
        Holder::Ca { profile, subject } => {
            println!("{indent}!!! THIS IS A CA KEY OF THIS AUTHORITY ({profile} {subject}) !!!");
            println!(
                "{indent}every certificate it signed is in doubt: follow \"A CA key leaked\" in {DOC} now \
                 (certificates: {})",
                certs(&info.certificates)
            );
        }
        Holder::DelegatedCa { subject } => println!(
            "{indent}registry: a station's delegated CA ({subject}): every birth it signed is in doubt, see {DOC}; \
             certificates: {}",
            certs(&info.certificates)
        ),
        Holder::Station { subject } => println!(
            "{indent}registry: a factory station's key ({subject}): revoke the station (`iotpki station revoke`), \
             see {DOC}; certificates: {}",
            certs(&info.certificates)
        ),
        Holder::Device { device } => {
            println!("{indent}registry: device {device}: certificates {}", certs(&info.certificates))
        }
        Holder::Manufacturer { name } => println!(
            "{indent}registry: the CA key of trusted manufacturer {name}: births it signs cannot be trusted, see {DOC}"
        ),
        Holder::Other { profile, subject } => {
            println!("{indent}registry: {profile} {subject}: certificates {}", certs(&info.certificates))
        }
        Holder::Unknown => println!("{indent}registry: unknown (no certificate of this authority has this key)"),
    }
    if let Some(b) = &info.blocked {
        println!("{indent}blocked since {} ({})", rfc3339(b.blocked_at), b.reason);
    }
}

/// One private key of the scan, with everywhere it was seen.
#[derive(Serialize)]
struct KeyJson {
    spki_sha256: Option<String>,
    algorithm: String,
    format: iotpki_scan::KeyFormat,
    encoding: String,
    encrypted: bool,
    note: Option<String>,
    locations: Vec<Place>,
    registry: Option<wire::KeyRegistry>,
}

#[derive(Serialize, Clone)]
struct Place {
    location: String,
    offset: u64,
}

#[derive(Serialize)]
struct CertFoundJson {
    spki_sha256: String,
    serial: String,
    subject: String,
    issuer: String,
    locations: Vec<Place>,
    /// The certificate of ours with this serial and key, if any.
    ours: Option<wire::CertRecord>,
}

#[derive(Serialize)]
struct TokenJson {
    token_sha256: String,
    device_serial: String,
    used: bool,
    expires_at: String,
    locations: Vec<Place>,
}

#[derive(Serialize)]
struct ScanJson {
    images: Vec<String>,
    bytes_scanned: u64,
    containers: u64,
    private_keys: Vec<KeyJson>,
    certificates: Vec<CertFoundJson>,
    tokens: Vec<TokenJson>,
    /// Token-shaped strings that are no token of this authority (or all of them without --dir).
    token_candidates_unmatched: usize,
    skipped: Vec<iotpki_scan::Skipped>,
    blocked: Vec<String>,
    revoked: Vec<String>,
    not_revoked: Vec<String>,
    /// Devices whose unused enrollment token (found in the images) was withdrawn.
    tokens_withdrawn: Vec<String>,
}

pub fn firmware(c: FirmwareCmd) -> anyhow::Result<()> {
    let FirmwareCmd::Scan { dir, database, images, json, revoke, fail_on_key, max_depth } = c;
    if revoke && dir.is_none() {
        bail!("--revoke needs the authority's --dir");
    }
    let store = match &dir {
        Some(d) => Some(DirArg { dir: d.clone(), database }.store()?),
        None => None,
    };
    let limits = iotpki_scan::walk::Limits { max_depth, ..Default::default() };
    let report = iotpki_scan::walk::scan_paths(&images, &limits);
    let out = assemble(&report, store.as_deref(), &images)?;
    let mut out = out;
    if revoke {
        let store = store.as_deref().ok_or_else(|| anyhow!("--revoke needs --dir"))?;
        let names = images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        let keys: Vec<(String, String)> = out
            .private_keys
            .iter()
            .filter_map(|k| {
                let h = k.spki_sha256.clone()?;
                let at = k.locations.first().map(|p| p.location.clone()).unwrap_or_default();
                Some((h, format!("firmware scan of {names}: {at}")))
            })
            .collect();
        let tokens: Vec<String> = out.tokens.iter().filter(|t| !t.used).map(|t| t.token_sha256.clone()).collect();
        if !keys.is_empty() || !tokens.is_empty() {
            let done = key_registry::block(
                store,
                &SystemClock,
                &keys,
                &tokens,
                "found in a firmware image",
                true,
                "admin:firmware-scan",
            )?;
            out.blocked = done.blocked.iter().chain(&done.already).cloned().collect();
            out.revoked = done.revoked;
            out.not_revoked = done.spared;
            out.tokens_withdrawn = done.withdrawn;
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_scan(&out, &report, store.as_deref(), revoke)?;
    }
    let keys_found = !out.private_keys.is_empty();
    if fail_on_key && keys_found {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        eprintln!(
            "error: {} private key(s) found: this firmware must not ship (--fail-on-key)",
            out.private_keys.len()
        );
        std::process::exit(EXIT_KEY_FOUND);
    }
    Ok(())
}

/// Group the findings by key (the same key is often seen several times:
/// in the raw image and inside the filesystem it holds) and look them up.
fn assemble(report: &Report, store: Option<&dyn iotpki_store::Store>, images: &[PathBuf]) -> anyhow::Result<ScanJson> {
    let mut keys: BTreeMap<String, KeyJson> = BTreeMap::new();
    let mut certs: BTreeMap<(String, String), CertFoundJson> = BTreeMap::new();
    let mut tokens: BTreeMap<String, Vec<Place>> = BTreeMap::new();
    for f in &report.findings {
        let place = Place { location: f.location.clone(), offset: f.offset };
        match &f.kind {
            FindingKind::PrivateKey { format, algorithm, encrypted, spki_sha256, encoding, note } => {
                // Keys without a public key (encrypted) cannot be told apart: one entry per place.
                let id = spki_sha256.clone().unwrap_or_else(|| format!("~{}@{}", f.location, f.offset));
                keys.entry(id)
                    .or_insert_with(|| KeyJson {
                        spki_sha256: spki_sha256.clone(),
                        algorithm: algorithm.clone(),
                        format: *format,
                        encoding: encoding.clone(),
                        encrypted: *encrypted,
                        note: note.clone(),
                        locations: vec![],
                        registry: None,
                    })
                    .locations
                    .push(place);
            }
            FindingKind::Certificate { spki_sha256, serial, subject, issuer } => certs
                .entry((spki_sha256.clone(), serial.clone()))
                .or_insert_with(|| CertFoundJson {
                    spki_sha256: spki_sha256.clone(),
                    serial: serial.clone(),
                    subject: subject.clone(),
                    issuer: issuer.clone(),
                    locations: vec![],
                    ours: None,
                })
                .locations
                .push(place),
            FindingKind::TokenCandidate { token_sha256 } => tokens.entry(token_sha256.clone()).or_default().push(place),
        }
    }
    let mut found_tokens = Vec::new();
    let mut unmatched = tokens.len();
    if let Some(store) = store {
        for k in keys.values_mut() {
            if let Some(h) = &k.spki_sha256 {
                k.registry = Some(views::key_registry(&key_registry::lookup(store, h)?));
            }
        }
        for c in certs.values_mut() {
            c.ours = store
                .certificate(&c.serial)?
                .filter(|r| r.spki_sha256 == c.spki_sha256)
                .as_ref()
                .map(views::cert_record);
        }
        for (h, places) in tokens {
            if let Some(t) = store.token(&h)? {
                unmatched -= 1;
                found_tokens.push(TokenJson {
                    token_sha256: h,
                    device_serial: t.device_serial,
                    used: t.used_at.is_some(),
                    expires_at: rfc3339(t.expires_at),
                    locations: places,
                });
            }
        }
    }
    Ok(ScanJson {
        images: images.iter().map(|p| p.display().to_string()).collect(),
        bytes_scanned: report.bytes_scanned,
        containers: report.containers,
        private_keys: keys.into_values().collect(),
        certificates: certs.into_values().collect(),
        tokens: found_tokens,
        token_candidates_unmatched: unmatched,
        skipped: report.skipped.clone(),
        blocked: vec![],
        revoked: vec![],
        not_revoked: vec![],
        tokens_withdrawn: vec![],
    })
}

fn print_scan(
    out: &ScanJson,
    report: &Report,
    store: Option<&dyn iotpki_store::Store>,
    revoke: bool,
) -> anyhow::Result<()> {
    println!(
        "scanned {}: {} bytes read (decompressed), {} containers opened",
        out.images.join(", "),
        out.bytes_scanned,
        out.containers
    );
    for k in &out.private_keys {
        let id = k.spki_sha256.as_deref().map_or("public key unknown".to_string(), |h| format!("key sha256 {h}"));
        let enc = if k.encrypted { ", encrypted" } else { "" };
        println!();
        let format =
            serde_json::to_value(k.format).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        println!("PRIVATE KEY {} ({format}, {}{enc}) {id}", k.algorithm, k.encoding);
        if let Some(n) = &k.note {
            println!("  note: {n}");
        }
        for p in &k.locations {
            println!("  found at {} (offset {})", p.location, p.offset);
        }
        match (store, &k.spki_sha256) {
            (Some(s), Some(h)) => print_registry(&key_registry::lookup(s, h)?, "  "),
            (Some(_), None) => println!("  registry: cannot be looked up without its public key"),
            (None, _) => {}
        }
    }
    let ours: Vec<&CertFoundJson> = out.certificates.iter().filter(|c| c.ours.is_some()).collect();
    if !out.certificates.is_empty() {
        println!();
        println!("{} certificate(s) found ({} of this authority's)", out.certificates.len(), ours.len());
        for c in ours {
            let at = c.locations.first().map(|p| p.location.as_str()).unwrap_or("");
            println!("  certificate {} ({}) at {at}", c.serial, c.subject);
        }
    }
    for t in &out.tokens {
        println!();
        let state = if t.used { "used".to_string() } else { format!("UNUSED, valid until {}", t.expires_at) };
        println!("ENROLLMENT TOKEN of device {} ({state})", t.device_serial);
        for p in &t.locations {
            println!("  found at {} (offset {})", p.location, p.offset);
        }
        if !t.used && !revoke {
            println!("  anyone holding it can enroll as {}: --revoke withdraws it", t.device_serial);
        }
    }
    if !report.skipped.is_empty() {
        println!();
        for s in &report.skipped {
            println!("skipped {} (offset {}): {}", s.location, s.offset, s.reason);
        }
    }
    println!();
    let encrypted = out.private_keys.iter().filter(|k| k.encrypted).count();
    println!(
        "{} private key(s) ({} encrypted), {} certificate(s), {} enrollment token(s) of this authority",
        out.private_keys.len(),
        encrypted,
        out.certificates.len(),
        out.tokens.len()
    );
    if revoke {
        println!(
            "blocked {} key(s); revoked {} certificate(s); withdrew {} enrollment token(s)",
            out.blocked.len(),
            out.revoked.len(),
            out.tokens_withdrawn.len()
        );
        for d in &out.tokens_withdrawn {
            println!("  withdrew the enrollment token of {d}");
        }
        for s in &out.revoked {
            println!("  revoked {s} (keyCompromise)");
        }
        if !out.not_revoked.is_empty() {
            println!(
                "  not revoked here (CA certificates: `iotpki ca revoke`, see {DOC}): {}",
                out.not_revoked.join(", ")
            );
        }
    } else if store.is_some() && (out.private_keys.iter().any(|k| k.spki_sha256.is_some()) || !out.tokens.is_empty()) {
        println!(
            "to block these keys, revoke their certificates and withdraw the tokens: the same command with --revoke"
        );
    }
    Ok(())
}
