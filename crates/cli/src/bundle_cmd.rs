//! Trust bundles and ownership vouchers as files: `iotpki bundle create | sign |
//! show | verify` and `iotpki voucher show | verify`. The formats and every rule
//! live in `iotpki_core::{bundle, voucher}`; this only reads and writes files.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use iotpki_authority::{Clock, Passphrase, SystemClock};
use iotpki_core::asn1::der::{Decode, Encode};
use iotpki_core::asn1::spki::SubjectPublicKeyInfoOwned;
use iotpki_core::asn1::x509_cert::Certificate;
use iotpki_core::bundle::{self, Bundle, BundleContent, SignatureState, UnsignedBundle};
use iotpki_core::cose::key_id;
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::name::DeviceSerial;
use iotpki_core::time::rfc3339;
use iotpki_core::voucher::{self, Voucher};
use serde_json::json;

use crate::PassArg;

/// `iotpki bundle ...`.
#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Write a new, unsigned trust bundle (a draft: each signer then runs `bundle sign`).
    #[command(disable_version_flag = true)]
    Create(CreateArgs),
    /// Add one signature to a bundle file, in place (atomically): with a signer's key
    /// (--key), or with the root key of the authority in --dir, the owner key that
    /// vouchers name (a handed-over device takes its new owner's first bundle only
    /// with that signature).
    #[command(group = clap::ArgGroup::new("signer").required(true).args(["key", "dir"]))]
    Sign {
        /// The bundle file.
        file: PathBuf,
        /// The signer's private key: PKCS#8 PEM, encrypted (needs the passphrase) or not.
        #[arg(long, value_name = "KEY.pem")]
        key: Option<PathBuf>,
        /// Sign with the root key of the authority in this directory (a key file or its
        /// PKCS#11 token, as its config says); recorded in its audit log.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// With --dir: its PostgreSQL database, if not the one its config names (ignored with --key).
        #[arg(long, value_name = "URL", env = "IOTPKI_DATABASE", hide_env_values = true)]
        database: Option<String>,
        #[command(flatten)]
        pass: PassArg,
    },
    /// Show what a bundle says and who has signed it.
    Show {
        /// The bundle file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish a signed bundle: the server serves it at /.well-known/iotpki/bundle. Refused
    /// unless devices holding the published bundle would accept it.
    Publish {
        #[command(flatten)]
        dir: crate::DirArg,
        /// The bundle file.
        file: PathBuf,
    },
    /// Check a bundle as a device would: on its own (as put in at the factory), or
    /// as an update of --current. Exits non-zero with the reason if a device would refuse it.
    Verify {
        /// The bundle file.
        file: PathBuf,
        /// The bundle the device holds now.
        #[arg(long, value_name = "FILE", conflicts_with = "owner")]
        current: Option<PathBuf>,
        /// Check it as the first bundle of the owner whose key this is (a PUBLIC KEY or
        /// CERTIFICATE PEM: its root), signed by that key (a device also requires it issued
        /// since its voucher's last entry: see --voucher).
        #[arg(long, value_name = "SPKI-or-cert.pem", conflicts_with = "voucher")]
        owner: Option<PathBuf>,
        /// Check it as a device holding this voucher and no bundle does: the first bundle of
        /// the owner the voucher's last entry names, issued since that entry was made.
        #[arg(long, value_name = "FILE", conflicts_with = "current")]
        voucher: Option<PathBuf>,
    },
}

/// `iotpki bundle create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The bundle's version: greater than the version devices hold now.
    #[arg(long)]
    version: u64,
    /// A CA certificate devices trust, PEM or DER (repeatable; every certificate in a PEM file is added).
    #[arg(long = "anchor", value_name = "CERT.pem", required = true)]
    anchors: Vec<PathBuf>,
    /// A server name devices may talk to (repeatable).
    #[arg(long = "server", value_name = "NAME")]
    servers: Vec<String>,
    /// A key that may sign the next bundle: a PUBLIC KEY or CERTIFICATE PEM file (repeatable).
    #[arg(long = "signer", value_name = "SPKI-or-cert.pem", required = true)]
    signers: Vec<PathBuf>,
    /// How many distinct signer keys must sign (this bundle, and the one that replaces it).
    #[arg(long)]
    threshold: u8,
    /// How long the bundle is valid: 90d, 12h, ... (from now).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_secs)]
    expires: u64,
    /// Where to write the bundle (must not exist).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// `iotpki voucher ...`.
#[derive(Subcommand, Debug)]
pub enum VoucherCmd {
    /// Show a voucher's entries (without checking them: see `voucher verify`).
    Show {
        /// The voucher file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hand a device to its next owner: sign the next entry of its voucher (the first
    /// with the manufacturing CA, later ones with this authority's root key), publish it,
    /// and revoke this authority's operational certificates for the device.
    Issue {
        #[command(flatten)]
        dir: crate::DirArg,
        #[command(flatten)]
        pass: PassArg,
        /// The device serial.
        #[arg(long)]
        device: String,
        /// The next owner's anchor: its root CA certificate or public key (PEM).
        #[arg(long, value_name = "OWNER-ANCHOR.pem")]
        to: PathBuf,
        /// How long the voucher is valid: 30d, 12h, ...
        #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = crate::duration::parse_secs)]
        expires: u64,
        /// This authority's root key (to extend a voucher that names this authority; default: from the config).
        #[arg(long, value_name = "KEY.pem")]
        root_key: Option<PathBuf>,
        /// Where to write the voucher (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check a voucher as the device would; prints the owner's key, or exits non-zero with the reason.
    Verify {
        /// The voucher file.
        file: PathBuf,
        /// The manufacturer's key: a PUBLIC KEY or CERTIFICATE PEM file.
        #[arg(long, value_name = "SPKI-or-cert.pem")]
        manufacturer: PathBuf,
        /// The device's serial.
        #[arg(long)]
        serial: String,
        /// The device's birth certificate, PEM or DER.
        #[arg(long, value_name = "CERT.pem")]
        birth_cert: PathBuf,
        /// The voucher the device holds now: the file must extend it (its entries octet for
        /// octet, then new ones), as the device requires; a fork or a rollback is refused.
        #[arg(long, value_name = "FILE")]
        installed: Option<PathBuf>,
    },
}

pub fn run(c: BundleCmd) -> anyhow::Result<()> {
    match c {
        BundleCmd::Create(a) => create(a),
        BundleCmd::Sign { file, key, dir, database, pass } => match (key, dir) {
            (Some(key), _) => sign(&file, &read_key(&key, &pass)?, None),
            (None, Some(dir)) => {
                let dir = crate::DirArg { dir, database };
                let cfg = dir.config()?;
                let key = root_signer(&dir.dir, &cfg, &pass)?;
                if root_spki(&dir)?.is_some_and(|r| r != key.public_key_der()) {
                    bail!("the root key the config names is not the key of its root certificate");
                }
                sign(&file, key.as_ref(), Some(&dir))
            }
            (None, None) => bail!("give --key or --dir"),
        },
        BundleCmd::Show { file, json } => show(&file, json),
        BundleCmd::Verify { file, current, owner, voucher } => {
            let owned = match (owner, voucher) {
                (Some(o), _) => Some((read_spki(&o)?, i64::MIN)),
                (None, Some(v)) => {
                    let v = Voucher::decode(&read(&v)?).with_context(|| format!("{}", v.display()))?;
                    let last = v.entries().last().map_or(i64::MAX, |e| e.created_at);
                    Some((v.owner().to_vec(), last))
                }
                (None, None) => None,
            };
            verify(&file, current.as_deref(), owned)
        }
        BundleCmd::Publish { dir, file } => {
            let bytes = read(&file)?;
            let store = dir.store()?;
            let b = iotpki_authority::trust::publish_bundle(store.as_ref(), &SystemClock, &bytes, "admin:cli")
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let c = b.content();
            println!(
                "published bundle version {} ({} anchors, threshold {}, expires {})",
                c.version,
                c.anchors.len(),
                c.threshold,
                iotpki_core::time::rfc3339(c.expires_at)
            );
            // Published already: a root that cannot be read only leaves the note out.
            match root_spki(&dir) {
                Ok(Some(root)) => {
                    if let Err(e) = bundle::verify_owned(&bytes, &root, i64::MIN, SystemClock.now()) {
                        eprintln!(
                            "note: devices handed to this authority by a voucher, holding no bundle yet, will not \
                             take it as their first ({e}); sign it with `iotpki bundle sign --dir` and publish the \
                             next version"
                        );
                    }
                }
                Ok(None) => {}
                Err(e) => eprintln!("note: the root's key could not be read to check its signature: {e:#}"),
            }
            Ok(())
        }
    }
}

/// The DER key of the root CA of the authority in `dir` (its certificate's), if its config names one.
fn root_spki(dir: &crate::DirArg) -> anyhow::Result<Option<Vec<u8>>> {
    let cfg = dir.config()?;
    let Some(root) = cfg.ca.iter().find(|c| c.role == iotpki_authority::config::CaRole::Root) else {
        return Ok(None);
    };
    let path = iotpki_authority::keyfile::resolve(&dir.dir, &root.cert);
    let cert = read_certs(&path)?.into_iter().next().with_context(|| format!("{}: no certificate", path.display()))?;
    Ok(Some(iotpki_authority::trust::spki_of(&cert)?))
}

fn create(a: CreateArgs) -> anyhow::Result<()> {
    let mut anchors = Vec::new();
    for p in &a.anchors {
        anchors.extend(read_certs(p)?);
    }
    let signers = a.signers.iter().map(|p| read_spki(p)).collect::<anyhow::Result<Vec<_>>>()?;
    let issued_at = SystemClock.now();
    let expires_at = issued_at.saturating_add(i64::try_from(a.expires).unwrap_or(i64::MAX));
    let content = BundleContent {
        version: a.version,
        issued_at,
        expires_at,
        anchors,
        servers: a.servers,
        threshold: a.threshold,
        signers,
    };
    let draft = UnsignedBundle::new(content)?;
    let n = draft.content().signers.len();
    write_new(&a.out, &draft.encode())?;
    println!(
        "trust bundle version {} written to {} (unsigned: {} of {n} signer keys must sign it with `iotpki bundle sign`)",
        a.version,
        a.out.display(),
        a.threshold
    );
    Ok(())
}

/// Add `key`'s signature to the bundle in `file`. With `authority` (its root
/// key signs), the signature is recorded in that authority's audit log
/// before the file is written.
fn sign(file: &Path, key: &dyn Signer, authority: Option<&crate::DirArg>) -> anyhow::Result<()> {
    let bytes = read(file)?;
    let mut b = Bundle::decode(&bytes).with_context(|| format!("{}", file.display()))?;
    b.add_signature(key).with_context(|| format!("{}", file.display()))?;
    let kid = key_id(key.public_key_der());
    if let Some(dir) = authority {
        let c = b.content();
        dir.store()?.append_audit(iotpki_store::AuditEvent {
            at: SystemClock.now(),
            actor: "admin:cli".into(),
            action: "bundle.sign".into(),
            target: format!("bundle v{}", c.version),
            detail: format!("key={} (root) sha256={}", hex::encode(kid), iotpki_core::keys::sha256_hex(&b.encode())),
        })?;
    }
    replace(file, &b.encode())?;
    let own = b.own_signers();
    let valid = own.iter().filter(|s| s.state == SignatureState::Valid).count();
    println!(
        "signed {} with key {} ({}); {valid} of the bundle's {} signer keys have signed, {} needed",
        file.display(),
        hex::encode(kid),
        key.key_type(),
        own.len(),
        b.content().threshold
    );
    if authority.is_some() {
        println!(
            "the authority's root key signed: devices whose ownership voucher names this authority take it as \
             their first bundle from it (once {} of its own signer keys have signed)",
            b.content().threshold
        );
    } else if !own.iter().any(|s| s.kid == kid) {
        eprintln!(
            "note: this key is not one of the bundle's own signers: its signature counts only toward the \
             threshold of the bundle this one replaces, if that bundle names it"
        );
    }
    Ok(())
}

fn show(file: &Path, as_json: bool) -> anyhow::Result<()> {
    let bytes = read(file)?;
    let b = Bundle::decode(&bytes).with_context(|| format!("{}", file.display()))?;
    let c = b.content();
    let now = SystemClock.now();
    let anchors: Vec<serde_json::Value> = c
        .anchors
        .iter()
        .map(|der| {
            let (subject, not_after) = Certificate::from_der(der)
                .map(|cert| {
                    let v = &cert.tbs_certificate;
                    (v.subject.to_string(), rfc3339(iotpki_core::time::unix(&v.validity.not_after)))
                })
                .unwrap_or_default();
            json!({ "subject": subject, "sha256": iotpki_core::keys::spki_fingerprint(der), "not_after": not_after })
        })
        .collect();
    let own = b.own_signers();
    let valid = own.iter().filter(|s| s.state == SignatureState::Valid).count();
    let signers: Vec<serde_json::Value> = own
        .iter()
        .map(|s| {
            let (state, detail) = match &s.state {
                SignatureState::Valid => ("signed", None),
                SignatureState::Invalid(d) => ("bad-signature", Some(d.clone())),
                SignatureState::Missing => ("not-signed", None),
            };
            json!({ "kid": hex::encode(s.kid), "key_type": key_type_name(&s.spki), "state": state, "detail": detail })
        })
        .collect();
    let foreign: Vec<String> = b.foreign_signatures().iter().map(hex::encode).collect();
    if as_json {
        let v = json!({
            "version": c.version,
            "issued_at": rfc3339(c.issued_at),
            "expires_at": rfc3339(c.expires_at),
            "expired": now >= c.expires_at,
            "anchors": anchors,
            "servers": c.servers,
            "threshold": c.threshold,
            "signers": signers,
            "signed_by_own_keys": valid,
            "other_signatures": foreign,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("trust bundle version {}", c.version);
    println!("issued   {}", rfc3339(c.issued_at));
    let state = if now >= c.expires_at { " (EXPIRED)" } else { "" };
    println!("expires  {}{state}", rfc3339(c.expires_at));
    println!("anchors ({}):", anchors.len());
    for a in &anchors {
        let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
        println!("  {}  sha256 {}  until {}", s("subject"), s("sha256"), s("not_after"));
    }
    println!("servers ({}):", c.servers.len());
    for s in &c.servers {
        println!("  {s}");
    }
    println!("signers: {} of {} must sign", c.threshold, own.len());
    for s in &signers {
        let state = s["state"].as_str().unwrap_or("");
        let detail = s["detail"].as_str().map(|d| format!(" ({d})")).unwrap_or_default();
        println!(
            "  {state:<13} {:<8} kid {}{detail}",
            s["key_type"].as_str().unwrap_or(""),
            s["kid"].as_str().unwrap_or("")
        );
    }
    if !foreign.is_empty() {
        println!("other signatures (keys this bundle does not name):");
        for k in &foreign {
            println!("  kid {k}");
        }
    }
    let verdict = if valid >= usize::from(c.threshold) { "enough for its own threshold" } else { "not enough yet" };
    println!("signed by {valid} of its own keys: {verdict}");
    Ok(())
}

fn verify(file: &Path, current: Option<&Path>, owned: Option<(Vec<u8>, i64)>) -> anyhow::Result<()> {
    let bytes = read(file)?;
    let now = SystemClock.now();
    let (b, how) = match (current, owned) {
        (Some(cur), _) => {
            let cur_bytes = read(cur)?;
            let cur_bundle = Bundle::decode(&cur_bytes).with_context(|| format!("{} (current)", cur.display()))?;
            let b = bundle::verify_update(&cur_bundle, &bytes, now).with_context(|| format!("{}", file.display()))?;
            (b, "as an update of the current bundle")
        }
        (None, Some((owner, since))) => {
            let b = bundle::verify_owned(&bytes, &owner, since, now).with_context(|| format!("{}", file.display()))?;
            (b, "as the owner's first bundle")
        }
        (None, None) => {
            (bundle::verify_initial(&bytes, now).with_context(|| format!("{}", file.display()))?, "on its own")
        }
    };
    println!("trust bundle version {} is valid {how}, until {}", b.content().version, rfc3339(b.content().expires_at));
    Ok(())
}

pub fn voucher(c: VoucherCmd) -> anyhow::Result<()> {
    match c {
        VoucherCmd::Show { file, json } => voucher_show(&file, json),
        VoucherCmd::Issue { dir, pass, device, to, expires, root_key, out } => {
            let serial = DeviceSerial::parse(&device).context("--device")?;
            let to_spki = read_spki(&to)?;
            let authority = dir.authority(&pass)?;
            // The root key is needed only to extend a voucher that names this authority.
            let extends =
                authority.store().artifact(&iotpki_authority::trust::voucher_kind(serial.as_str()))?.is_some();
            let key: Option<Box<dyn iotpki_core::keys::Signer>> = match (extends, root_key) {
                (false, _) => None,
                (true, Some(p)) => Some(Box::new(read_key(&p, &pass)?)),
                (true, None) => Some(root_signer(&dir.dir, authority.config(), &pass)?),
            };
            if out.exists() {
                bail!("{} exists; pick another --out", out.display());
            }
            let expires_at = SystemClock.now().saturating_add(i64::try_from(expires).unwrap_or(i64::MAX));
            let issued = authority.issue_voucher(&serial, &to_spki, expires_at, key.as_deref(), "admin:cli")?;
            iotpki_authority::keyfile::write_private(&out, &issued.bytes)?;
            println!(
                "voucher for {serial} ({} entries) written to {}; {} operational certificate(s) revoked",
                issued.entries,
                out.display(),
                issued.revoked.len()
            );
            Ok(())
        }
        VoucherCmd::Verify { file, manufacturer, serial, birth_cert, installed } => {
            let bytes = read(&file)?;
            let maker = read_spki(&manufacturer)?;
            let serial = DeviceSerial::parse(&serial).context("--serial")?;
            let birth = read_certs(&birth_cert)?;
            let [birth] = birth.as_slice() else { bail!("{}: expected one certificate", birth_cert.display()) };
            let ok = voucher::verify(&bytes, &maker, &serial, birth, SystemClock.now())
                .with_context(|| format!("{}", file.display()))?;
            let extends = match installed {
                None => String::new(),
                Some(p) => {
                    let held = read(&p)?;
                    match voucher::check_extends(&held, &bytes, SystemClock.now())
                        .with_context(|| format!("{} against --installed {}", file.display(), p.display()))?
                    {
                        voucher::Extension::Unchanged => " (the installed voucher itself)".to_string(),
                        voucher::Extension::Extended { added } => {
                            format!(" (extends the installed voucher by {added} entries)")
                        }
                    }
                }
            };
            println!(
                "voucher is valid{extends}: {} entries; the device's owner is key {} ({})",
                ok.entries.len(),
                hex::encode(key_id(&ok.owner_anchor)),
                key_type_name(&ok.owner_anchor)
            );
            Ok(())
        }
    }
}

fn voucher_show(file: &Path, as_json: bool) -> anyhow::Result<()> {
    let bytes = read(file)?;
    let v = Voucher::decode(&bytes).with_context(|| format!("{}", file.display()))?;
    let now = SystemClock.now();
    let entries: Vec<serde_json::Value> = v
        .entries()
        .iter()
        .map(|e| {
            json!({
                "serial": e.serial.as_str(),
                "birth_cert_sha256": hex::encode(e.birth_cert_sha256),
                "signer_kid": hex::encode(e.signer_kid),
                "alg": e.alg.to_string(),
                "next_owner_kid": hex::encode(key_id(&e.next_owner)),
                "next_owner_key_type": key_type_name(&e.next_owner),
                "created_at": rfc3339(e.created_at),
                "expires_at": rfc3339(e.expires_at),
                "expired": now >= e.expires_at,
                "prev": hex::encode(e.prev),
            })
        })
        .collect();
    if as_json {
        let v = json!({ "verified": false, "owner_kid": hex::encode(key_id(v.owner())), "entries": entries });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let first = v.entries().first().map(|e| e.serial.to_string()).unwrap_or_default();
    println!(
        "ownership voucher for device {first}, {} entries (not verified: see `iotpki voucher verify`)",
        entries.len()
    );
    for (i, e) in entries.iter().enumerate() {
        let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
        let expired = if e["expired"].as_bool() == Some(true) { " (expired)" } else { "" };
        println!("  [{i}] signed by kid {} ({})", s("signer_kid"), s("alg"));
        println!("      to owner kid {} ({})", s("next_owner_kid"), s("next_owner_key_type"));
        println!("      created {}, expires {}{expired}", s("created_at"), s("expires_at"));
    }
    println!("owner: kid {}", hex::encode(key_id(v.owner())));
    Ok(())
}

fn key_type_name(spki: &[u8]) -> String {
    SubjectPublicKeyInfoOwned::from_der(spki)
        .ok()
        .and_then(|k| KeyType::of_spki(&k).ok())
        .map(|k| k.to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    // Larger than any bundle or voucher we accept: refuse before reading it all.
    let len = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > 4 * bundle::MAX_BUNDLE_BYTES as u64 {
        bail!("{}: {len} bytes is far larger than a bundle or voucher can be", path.display());
    }
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn pem_text(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.contains("-----BEGIN ").then(|| text.to_string())
}

/// Every certificate in a PEM file, or the one certificate of a DER file.
fn read_certs(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = read(path)?;
    let certs = match pem_text(&bytes) {
        Some(text) => {
            iotpki_core::pem::decode_all("CERTIFICATE", &text).map_err(|e| anyhow!("{}: {e}", path.display()))?
        }
        None => vec![bytes],
    };
    if certs.is_empty() {
        bail!("{}: no CERTIFICATE found", path.display());
    }
    Ok(certs)
}

/// A public key (DER SPKI) from a PUBLIC KEY PEM file or a CERTIFICATE PEM file.
fn read_spki(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = read(path)?;
    let text =
        pem_text(&bytes).ok_or_else(|| anyhow!("{}: expected a PUBLIC KEY or CERTIFICATE PEM file", path.display()))?;
    if text.contains("-----BEGIN PUBLIC KEY-----") {
        return iotpki_core::pem::decode_one("PUBLIC KEY", &text).map_err(|e| anyhow!("{}: {e}", path.display()));
    }
    if text.contains("-----BEGIN CERTIFICATE-----") {
        let der = iotpki_core::pem::decode_one("CERTIFICATE", &text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let cert = Certificate::from_der(&der).map_err(|e| anyhow!("{}: not a certificate: {e}", path.display()))?;
        return cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| anyhow!("{}: public key: {e}", path.display()));
    }
    bail!("{}: expected a PUBLIC KEY or CERTIFICATE PEM block", path.display())
}

/// A signing key from a PKCS#8 PEM file: encrypted (the passphrase comes from
/// --passphrase-file or $IOTPKI_PASSPHRASE) or not.
fn read_key(path: &Path, pass: &PassArg) -> anyhow::Result<SoftKey> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let pass = Passphrase::from_file_or_env(pass.passphrase_file.as_deref())?;
        return Ok(iotpki_authority::keyfile::read_encrypted(path, &pass)?);
    }
    if text.contains("-----BEGIN PRIVATE KEY-----") {
        let der = iotpki_core::pem::decode_one("PRIVATE KEY", &text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        return SoftKey::from_pkcs8(&der).map_err(|e| anyhow!("{}: {e}", path.display()));
    }
    bail!("{}: expected a PKCS#8 PRIVATE KEY or ENCRYPTED PRIVATE KEY PEM file", path.display())
}

/// Write a new public file; refuse to overwrite.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    iotpki_fs::write_new(path, bytes, iotpki_fs::PUBLIC).with_context(|| format!("cannot create {}", path.display()))
}

/// Replace `path` atomically ([`iotpki_fs::write_atomic`]): a crash leaves the old file or the new one.
fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    iotpki_fs::write_atomic(path, bytes, iotpki_fs::PUBLIC)
        .with_context(|| format!("cannot replace {}", path.display()))
}

/// The authority's root key, as its config says: an encrypted key file or a key in its PKCS#11 token.
fn root_signer(
    dir: &Path,
    cfg: &iotpki_authority::config::Config,
    pass: &PassArg,
) -> anyhow::Result<Box<dyn iotpki_core::keys::Signer>> {
    let root =
        cfg.ca.iter().find(|c| c.role == iotpki_authority::config::CaRole::Root).context("no root CA in the config")?;
    match (&root.key, &root.key_uri, &cfg.hsm) {
        (Some(file), _, _) => {
            let passphrase = pass.passphrase()?;
            Ok(Box::new(iotpki_authority::keyfile::read_encrypted(
                &iotpki_authority::keyfile::resolve(dir, file),
                &passphrase,
            )?))
        }
        (None, Some(uri), Some(h)) => {
            let pin = match pass.pin()? {
                Some(p) => p,
                None => iotpki_authority::Pin::from_file_or_env(None)?,
            };
            let module = iotpki_authority::keyfile::resolve(dir, &h.module);
            let token = iotpki_hsm::Token::open(&module, &iotpki_hsm::Pkcs11Uri::parse(&h.token)?)?;
            Ok(Box::new(iotpki_hsm::HsmKey::open(&token, &pin, &iotpki_hsm::Pkcs11Uri::parse(uri)?)?))
        }
        _ => bail!("the config names no key for the root CA"),
    }
}
