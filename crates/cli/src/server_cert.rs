//! `iotpki cert issue-server` and `iotpki cert renew-server`: a key made here
//! and a server certificate from the authority (which decides, records and
//! audits), written out as a broker or web server wants them.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use iotpki_authority::servers::IssuedServer;
use iotpki_core::keys::{KeyType, Signer as _, SoftKey};
use iotpki_core::pem;

use crate::{DirArg, PassArg};

/// The files written to `--out`.
const KEY: &str = "server.key";
const CERT: &str = "server.crt";
const FULLCHAIN: &str = "fullchain.pem";
const CHAIN: &str = "chain.pem";
const ROOT: &str = "root.pem";

/// `iotpki cert issue-server`.
#[derive(Args, Debug)]
pub struct IssueServerArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    pass: PassArg,
    /// A fully qualified DNS name or an IP address the server answers on (repeatable; at least one).
    #[arg(long = "name", value_name = "NAME", required = true)]
    names: Vec<String>,
    /// Write server.key (0600), server.crt, fullchain.pem (certificate and issuing CA),
    /// chain.pem (issuing CA) and root.pem here. Refuses to overwrite a key.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Key type: p256, p384, ed25519, ml-dsa-44, ml-dsa-65 or ml-dsa-87 (ML-DSA: aws-lc build).
    #[arg(long, default_value = "p256")]
    key_type: String,
    /// Lifetime in days (1 to 397).
    #[arg(long, default_value_t = 365)]
    days: u32,
}

/// `iotpki cert renew-server`.
#[derive(Args, Debug)]
pub struct RenewServerArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    pass: PassArg,
    /// The server certificate to renew (PEM; its first certificate), as issue-server wrote it.
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// Where to write the new files (default: the directory of --cert); existing ones are replaced atomically.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Key type of the new key: p256, p384, ed25519, ml-dsa-44, ml-dsa-65 or ml-dsa-87.
    #[arg(long, default_value = "p256")]
    key_type: String,
    /// Lifetime in days (1 to 397).
    #[arg(long, default_value_t = 365)]
    days: u32,
}

fn validity(days: u32) -> Option<i64> {
    Some(i64::from(days) * 86_400)
}

pub fn issue(a: IssueServerArgs) -> anyhow::Result<()> {
    let kt = KeyType::from_name(&a.key_type)?;
    if a.out.join(KEY).exists() {
        bail!(
            "{} exists: issue-server never overwrites a key (renew it with iotpki cert renew-server --cert {})",
            a.out.join(KEY).display(),
            a.out.join(CERT).display()
        );
    }
    let authority = a.dir.authority(&a.pass)?;
    let key = SoftKey::generate(kt)?;
    // Checked and refused by the authority before anything is written anywhere.
    let issued = authority.issue_server(&a.names, key.public_key_der(), validity(a.days), "admin:cli")?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    write_all(&a.out, &key, &issued)?;
    report(&a.out, &issued, "issued");
    Ok(())
}

pub fn renew(a: RenewServerArgs) -> anyhow::Result<()> {
    let kt = KeyType::from_name(&a.key_type)?;
    let text = std::fs::read_to_string(&a.cert).with_context(|| format!("cannot read {}", a.cert.display()))?;
    let old = pem::decode_all("CERTIFICATE", &text)
        .map_err(|e| anyhow!("{}: {e}", a.cert.display()))?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{}: no certificate in it", a.cert.display()))?;
    let out = match a.out {
        Some(o) => o,
        None => a.cert.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf(),
    };
    let authority = a.dir.authority(&a.pass)?;
    let key = SoftKey::generate(kt)?;
    let issued = authority.renew_server(&old, key.public_key_der(), validity(a.days), "admin:cli")?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    write_all(&out, &key, &issued)?;
    report(&out, &issued, "renewed");
    Ok(())
}

fn write_all(out: &Path, key: &SoftKey, issued: &IssuedServer) -> anyhow::Result<()> {
    let leaf = pem::encode("CERTIFICATE", &issued.cert);
    let chain: String = issued.chain.iter().map(|c| pem::encode("CERTIFICATE", c)).collect();
    // The key first: a certificate is never left on disk without its key.
    replace(&out.join(KEY), pem::encode("PRIVATE KEY", &key.to_pkcs8()?).as_bytes(), 0o600)?;
    replace(&out.join(CHAIN), chain.as_bytes(), 0o644)?;
    replace(&out.join(ROOT), pem::encode("CERTIFICATE", &issued.root).as_bytes(), 0o644)?;
    replace(&out.join(FULLCHAIN), format!("{leaf}{chain}").as_bytes(), 0o644)?;
    replace(&out.join(CERT), leaf.as_bytes(), 0o644)?;
    Ok(())
}

/// Replace `path` atomically with `bytes`, the file having `mode` ([`iotpki_fs::write_atomic`]).
fn replace(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    iotpki_fs::write_atomic(path, bytes, mode).with_context(|| format!("cannot replace {}", path.display()))
}

fn report(out: &Path, issued: &IssuedServer, what: &str) {
    println!("{what} server certificate {} for {}", issued.serial, issued.names.join(", "));
    for f in [KEY, CERT, FULLCHAIN, CHAIN, ROOT] {
        println!("  {}", out.join(f).display());
    }
    println!(
        "devices learn these names from the trust bundle: iotpki bundle create ... --server {}",
        issued.names.join(" --server ")
    );
}
