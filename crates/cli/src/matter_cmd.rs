//! `iotpki matter`: the Matter PAA and PAIs, and a checker for attestation
//! certificates (docs/matter.md).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use iotpki_authority::SystemClock;
use iotpki_core::matter::{self, Kind, ProductId, VendorId};
use iotpki_core::pem;

use crate::{DirArg, PassArg};

/// `iotpki matter`.
#[derive(Subcommand, Debug)]
pub enum MatterCmd {
    /// Make the authority's Matter Product Attestation Authority (PAA): a self-signed
    /// P-256 root that Matter commissioners trust (Matter core spec 6.2.2.5).
    Paa {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        pass: PassArg,
    },
    /// Make a Product Attestation Intermediate (PAI) for one vendor id under the PAA
    /// (6.2.2.4). Restart `serve` to sign DACs with it.
    Pai {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        pass: PassArg,
        /// The Matter Vendor ID: four hex digits (FFF1 to FFF4 are test ids).
        #[arg(long, value_name = "HEX4")]
        vendor_id: String,
        /// Bind the PAI to one Matter Product ID (four hex digits); default: any product.
        #[arg(long, value_name = "HEX4")]
        product_id: Option<String>,
    },
    /// Print the PAA and PAI certificates (PEM, PAA first), or write them to --out.
    Show {
        #[command(flatten)]
        dir: DirArg,
        /// Write the PEM here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Only the PAA (what a commissioner must trust).
        #[arg(long)]
        paa_only: bool,
    },
    /// Check attestation certificates (PEM or DER files: a DAC, PAI or PAA each, told apart
    /// by their contents) against the Matter core specification's rules; given a DAC, its
    /// PAI and a PAA, the chain too. Exit 1 when a rule is broken.
    Check {
        /// Certificate files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn read_certs(p: &PathBuf) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(p).with_context(|| format!("{}", p.display()))?;
    match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => {
            pem::decode_all("CERTIFICATE", text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        }
        _ => Ok(vec![bytes]),
    }
}

pub fn run(c: MatterCmd) -> anyhow::Result<()> {
    match c {
        MatterCmd::Paa { dir, pass } => {
            let cert = iotpki_authority::matter::create_paa(&dir.dir, &pass.passphrase()?, &SystemClock, "admin:cli")?;
            println!("{}", cert.display());
            eprintln!("Matter PAA made: {} (give it to your commissioners to trust)", cert.display());
        }
        MatterCmd::Pai { dir, pass, vendor_id, product_id } => {
            let vid = VendorId::parse(&vendor_id)?;
            let pid = product_id.as_deref().map(ProductId::parse).transpose()?;
            let cert = iotpki_authority::matter::create_pai(
                &dir.dir,
                &pass.passphrase()?,
                &SystemClock,
                vid,
                pid,
                "admin:cli",
            )?;
            println!("{}", cert.display());
            if vid.is_test() {
                eprintln!("note: vendor id {vid} is a test vendor id: commissioners accept it in development only");
            }
            eprintln!("Matter PAI for vendor id {vid} made; restart `serve` to issue DACs with it");
        }
        MatterCmd::Show { dir, out, paa_only } => {
            let cfg = dir.config()?;
            let all = iotpki_authority::matter::certificates(&cfg, &dir.dir);
            if all.is_empty() {
                anyhow::bail!("this authority has no Matter PAA: make one with `iotpki matter paa`");
            }
            let mut text = String::new();
            for (name, path, vid, pid) in all.iter().take(if paa_only { 1 } else { all.len() }) {
                for der in read_certs(path)? {
                    eprintln!(
                        "{name}: vendor id {}, product id {}",
                        vid.as_deref().unwrap_or("-"),
                        pid.as_deref().unwrap_or("-")
                    );
                    text.push_str(&pem::encode("CERTIFICATE", &der));
                }
            }
            match out {
                Some(p) => std::fs::write(&p, text).with_context(|| format!("--out {}", p.display()))?,
                None => print!("{text}"),
            }
        }
        MatterCmd::Check { files } => {
            let mut by_kind: Vec<(Kind, Vec<u8>, String)> = Vec::new();
            for f in &files {
                for der in read_certs(f)? {
                    let kind = matter::kind_of(&der).with_context(|| format!("{}", f.display()))?;
                    by_kind.push((kind, der, f.display().to_string()));
                }
            }
            let one = |k: Kind| by_kind.iter().find(|(kind, _, _)| *kind == k).map(|(_, d, _)| d.as_slice());
            let mut broken = 0;
            let now = iotpki_authority::Clock::now(&SystemClock);
            if let (Some(dac), Some(pai), Some(paa), 3) =
                (one(Kind::Dac), one(Kind::Pai), one(Kind::Paa), by_kind.len())
            {
                let v = matter::check_chain(dac, pai, paa, Some(now));
                for x in &v {
                    println!("{x}");
                }
                broken += v.len();
                println!("chain DAC -> PAI -> PAA: {}", if v.is_empty() { "conforms" } else { "BROKEN" });
            } else {
                for (kind, der, file) in &by_kind {
                    let v = matter::check(der, *kind);
                    for x in &v {
                        println!("{file}: {x}");
                    }
                    broken += v.len();
                    println!("{file}: {kind:?} {}", if v.is_empty() { "conforms" } else { "BROKEN" });
                }
            }
            if broken > 0 {
                anyhow::bail!("{broken} Matter rule(s) broken");
            }
        }
    }
    Ok(())
}
