//! The operator's commands: which manufacturers it trusts (`iotpki trust`)
//! and which devices it owns (`iotpki device`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use iotpki_authority::commission;
use iotpki_core::clock::SystemClock;

use crate::DirArg;

/// `iotpki trust`.
#[derive(Subcommand, Debug)]
pub enum TrustCmd {
    /// Trust a manufacturer's manufacturing CA as an issuer of birth certificates.
    AddManufacturer {
        #[command(flatten)]
        dir: DirArg,
        /// The manufacturing CA certificate (PEM; the first certificate in the file).
        file: PathBuf,
        /// A name for the manufacturer (default: the CA's common name).
        #[arg(long)]
        name: Option<String>,
    },
    /// The trusted manufacturers.
    List {
        #[command(flatten)]
        dir: DirArg,
    },
}

pub fn trust(c: TrustCmd) -> anyhow::Result<()> {
    match c {
        TrustCmd::AddManufacturer { dir, file, name } => {
            let pem = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
            let store = dir.store()?;
            let m = commission::add_manufacturer(store.as_ref(), &SystemClock, name.as_deref(), &pem, "admin:cli")?;
            println!("trusted manufacturer {} (CA key sha256 {})", m.name, m.spki_sha256);
        }
        TrustCmd::List { dir } => {
            for m in dir.store()?.manufacturers()? {
                let subject = iotpki_core::profile::cert_info(&m.cert_der)
                    .map(|i| i.cert.tbs_certificate.subject.to_string())
                    .unwrap_or_else(|e| format!("(unreadable: {e})"));
                println!(
                    "{}\t{}\t{}\tadded {}",
                    m.name,
                    subject,
                    m.spki_sha256,
                    iotpki_core::time::rfc3339(m.added_at)
                );
            }
        }
    }
    Ok(())
}

/// `iotpki device`.
#[derive(Subcommand, Debug)]
pub enum DeviceCmd {
    /// Take ownership of devices: they may then commission with exactly the birth
    /// certificates named (a births file), or by an ownership voucher.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["births", "serials", "voucher"])))]
    Claim {
        #[command(flatten)]
        dir: DirArg,
        /// A births file from the manufacturer (`iotpki device export-births`): each device's
        /// serial, birth certificate hash and manufacturing CA.
        #[arg(long)]
        births: Option<PathBuf>,
        /// Refused: a bare serial binds no birth (kept to say so and what to use instead).
        #[arg(long, hide = true)]
        serials: Option<PathBuf>,
        /// An ownership voucher that hands a device to this authority (its last entry names our root key).
        #[arg(long)]
        voucher: Option<PathBuf>,
        #[command(flatten)]
        pass: crate::PassArg,
    },
    /// At the manufacturer: write the births file of devices born here (online or synced from a
    /// station), for their buyer's `device claim --births`.
    ExportBirths {
        #[command(flatten)]
        dir: DirArg,
        /// Only these serials (one a line); default: every device with a good birth certificate.
        #[arg(long)]
        serials: Option<PathBuf>,
        /// Where to write it (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        pass: crate::PassArg,
    },
    /// This authority's ownership of one device and its certificates.
    Show {
        #[command(flatten)]
        dir: DirArg,
        /// The device serial.
        serial: String,
    },
}

pub fn device(c: DeviceCmd) -> anyhow::Result<()> {
    match c {
        DeviceCmd::Claim { dir, births: Some(births), .. } => {
            let text = std::fs::read_to_string(&births).with_context(|| format!("--births {}", births.display()))?;
            let store = dir.store()?;
            let (listed, new) = commission::claim_devices(store.as_ref(), &SystemClock, &text, "admin:cli")?;
            println!("claimed {new} new device(s) of {listed} listed, each bound to its birth certificate");
        }
        DeviceCmd::Claim { serials: Some(_), .. } => anyhow::bail!(
            "--serials is refused: a bare serial binds no birth certificate, so anyone holding a key that chains to \
             the manufacturer could commission that serial. Ask the manufacturer for the births file \
             (`iotpki device export-births`) and give --births FILE"
        ),
        DeviceCmd::ExportBirths { dir, serials, out, pass } => {
            let list = match &serials {
                Some(p) => Some(iotpki_authority::factory::parse_allowlist(
                    &std::fs::read_to_string(p).with_context(|| format!("--serials {}", p.display()))?,
                )?),
                None => None,
            };
            let a = dir.authority(&pass)?;
            let text = a.export_births(list.as_deref())?;
            match out {
                Some(p) => {
                    std::fs::write(&p, &text).with_context(|| format!("--out {}", p.display()))?;
                    eprintln!(
                        "wrote the births of {} device(s) to {}",
                        text.lines().count().saturating_sub(2),
                        p.display()
                    );
                }
                None => print!("{text}"),
            }
        }
        DeviceCmd::Claim { dir, voucher: Some(voucher), pass, .. } => {
            let bytes = std::fs::read(&voucher).with_context(|| format!("--voucher {}", voucher.display()))?;
            let a = dir.authority(&pass)?;
            let serial = a.claim_by_voucher(&bytes, "admin:cli")?;
            println!("claimed {serial} by voucher: it may now commission here with its birth certificate");
            println!(
                "  a device with no trust bundle takes as its first one a bundle signed by this authority's root key \
                 and issued from now on (iotpki bundle create, sign --dir, publish)"
            );
        }
        DeviceCmd::Claim { .. } => anyhow::bail!("give --births FILE or --voucher FILE"),
        DeviceCmd::Show { dir, serial } => {
            let store = dir.store()?;
            match store.ownership(&serial)? {
                Some(o) => println!(
                    "ownership: {} since {} via {}{}",
                    o.status.as_str(),
                    iotpki_core::time::rfc3339(o.since),
                    o.via,
                    o.birth_sha256.map(|b| format!(" (birth certificate sha256 {b})")).unwrap_or_default()
                ),
                None => println!("ownership: not owned by this authority"),
            }
            let q = iotpki_store::CertQuery { device_serial: Some(serial.clone()), ..Default::default() };
            for c in store.list_certificates(&q)? {
                println!(
                    "{}\t{}\t{}\tuntil {}\t{}",
                    c.serial,
                    c.ca,
                    c.profile,
                    iotpki_core::time::rfc3339(c.not_after),
                    match c.status {
                        iotpki_store::CertStatus::Good => "good".to_string(),
                        iotpki_store::CertStatus::Revoked { .. } => "revoked".to_string(),
                    }
                );
            }
        }
    }
    Ok(())
}

/// `iotpki ca`.
#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Make a new root and certify every issuing CA again under it (same keys); the old
    /// root keeps being trusted ("retiring") until `ca retire`. Publish a trust bundle
    /// naming both roots first, so that devices follow.
    Rotate {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        pass: crate::PassArg,
        /// Key type of the new root (default: the authority's): p256, p384, ed25519,
        /// ml-dsa-44, ml-dsa-65 or ml-dsa-87. Another type moves the fleet across
        /// algorithms (P-256 to ML-DSA) by the same bundle, renew, retire steps.
        #[arg(long)]
        key_type: Option<String>,
        /// Give every issuing CA a successor with a new key of the new root's type,
        /// which issues in its place (labels move to it), and the server a new TLS key
        /// from its CA's successor: the whole move to ML-DSA, not the root alone. The
        /// old issuing CAs keep signing the CRLs and OCSP answers of what they issued;
        /// their certificates renew and commission into the successors.
        #[arg(long)]
        new_issuing_keys: bool,
    },
    /// Stop trusting the retiring root (once devices have renewed under the new one).
    Retire {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Sign the root's revocation list (ARL) again with the root key (every root, current
    /// and retiring, unless --root): `serve` publishes it at /crl/ROOT.crl, which every CA
    /// certificate names. Run it before the current one's nextUpdate (init signs the first).
    SignArl {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        pass: crate::PassArg,
        /// Only this root (its name in iotpki.toml: root, root-2, ...).
        #[arg(long)]
        root: Option<String>,
        /// Days until its nextUpdate (1 to 1825).
        #[arg(long, default_value_t = 365)]
        validity_days: u32,
    },
    /// Revoke a CA certificate issued by a root (an issuing CA's), and sign that root's
    /// ARL again at once (it needs the root key).
    Revoke {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        pass: crate::PassArg,
        /// The CA certificate's serial (hex; `iotpki cert list --profile issuing-ca`).
        #[arg(long)]
        serial: String,
        /// RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged,
        /// superseded, cessationOfOperation, privilegeWithdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
        /// Days until the new ARL's nextUpdate (1 to 1825).
        #[arg(long, default_value_t = 365)]
        validity_days: u32,
    },
}

fn print_arl(a: &iotpki_authority::revocation::SignedArl) {
    println!(
        "ARL of {}: number {}, {} revoked CA certificate(s), next update {}; served at /crl/{}.crl",
        a.root,
        a.number,
        a.entries,
        iotpki_core::time::rfc3339(a.next_update),
        a.root
    );
}

pub fn ca(c: CaCmd) -> anyhow::Result<()> {
    match c {
        CaCmd::Rotate { dir, pass, key_type, new_issuing_keys } => {
            let kt = key_type.as_deref().map(iotpki_core::keys::KeyType::from_name).transpose()?;
            let opts = iotpki_authority::rotation::RotateOptions { key_type: kt, new_issuing_keys };
            let r = iotpki_authority::rotation::rotate_with(
                &dir.dir,
                &pass.passphrase()?,
                &SystemClock,
                "admin:cli",
                &opts,
            )?;
            println!(
                "new root {} ({}); certified again under it: {}. Restart `serve` to use it.",
                r.root,
                r.root_cert.display(),
                r.recertified.join(", ")
            );
            for (old, next) in &r.successors {
                println!("issuing CA {old} succeeded by {next} (a new key): its labels issue from {next} now");
            }
        }
        CaCmd::Retire { dir } => {
            let gone = iotpki_authority::rotation::retire(&dir.dir, &SystemClock, "admin:cli")?;
            println!("retired {}; restart `serve` to stop trusting it", gone.join(", "));
        }
        CaCmd::SignArl { dir, pass, root, validity_days } => {
            let signed = iotpki_authority::revocation::sign_arl(
                &dir.dir,
                root.as_deref(),
                &pass.passphrase()?,
                pass.pin()?.as_ref(),
                &SystemClock,
                i64::from(validity_days) * 86_400,
                "admin:cli",
            )?;
            signed.iter().for_each(print_arl);
        }
        CaCmd::Revoke { dir, pass, serial, reason, validity_days } => {
            let reason = iotpki_core::crl::reason_code(&reason)?;
            let arl = iotpki_authority::revocation::revoke_ca(
                &dir.dir,
                &serial,
                reason,
                &pass.passphrase()?,
                pass.pin()?.as_ref(),
                &SystemClock,
                i64::from(validity_days) * 86_400,
                "admin:cli",
            )?;
            println!("revoked {serial} ({})", iotpki_core::crl::reason_name(reason));
            print_arl(&arl);
            println!(
                "relying parties refuse its chains once they fetch this ARL; if the CA still issues here, \
                 take it out of iotpki.toml's labels (or rotate) and restart `serve`"
            );
        }
    }
    Ok(())
}
