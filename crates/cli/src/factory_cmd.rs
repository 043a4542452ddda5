//! `iotpki batch ...`, `iotpki station ...`, `iotpki factory ...`: the factory line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use iotpki_authority::factory::{self, NewBatch};
use iotpki_authority::SystemClock;
use iotpki_core::keys::{KeyType, Signer};
use iotpki_core::time::rfc3339;
use iotpki_store::{BatchProfile, BatchStatus, StationStatus};

use crate::{DirArg, PassArg};

fn parse_time(s: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time (2026-11-25T08:00:00Z): {e}"))
}

/// `iotpki batch ...`.
#[derive(Subcommand, Debug)]
pub enum BatchCmd {
    /// Create a production batch: a serial allowlist, a quota, a time window.
    Create {
        #[command(flatten)]
        dir: DirArg,
        /// The batch id (default: generated, printed).
        #[arg(long)]
        id: Option<String>,
        /// The product made in this batch.
        #[arg(long)]
        product: String,
        /// The allowlist: one device serial per line (or a CSV whose first column is the serial).
        #[arg(long, value_name = "FILE.csv")]
        serials: PathBuf,
        /// Most birth certificates (at most the allowlist's size).
        #[arg(long)]
        quota: u64,
        /// Start of the window, RFC 3339 (default: now).
        #[arg(long, value_parser = parse_time)]
        from: Option<i64>,
        /// End of the window, RFC 3339 (default: 90 days after --from).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// Every birth must prove its key is in the TPM whose endorsement key is registered
        /// for its serial (`batch add-ek`); a key in a file or a token is refused. Fixed with the
        /// batch, in the same transaction: it can be neither added to nor taken from a batch later.
        #[arg(long)]
        require_tpm_attestation: bool,
        /// What its births get: `device` (a birth certificate under the manufacturing CA)
        /// or `matter-dac` (a Matter Device Attestation Certificate under the PAI of
        /// --vendor-id; docs/matter.md).
        #[arg(long, default_value = "device", value_parser = ["device", "matter-dac"])]
        profile: String,
        /// A matter-dac batch's Matter Vendor ID: four hex digits (FFF1 to FFF4 are test ids).
        #[arg(long, value_name = "HEX4")]
        vendor_id: Option<String>,
        /// A matter-dac batch's Matter Product ID: four hex digits.
        #[arg(long, value_name = "HEX4")]
        product_id: Option<String>,
        /// The certificate template its births get (a `[[template]]` of the config,
        /// docs/templates.md; default: the birth label's, else the built-in profile).
        #[arg(long, value_name = "NAME")]
        template: Option<String>,
    },
    /// Register the TPM endorsement key (EK) of a device in a batch that requires TPM
    /// attestation (the public key `iotpki agent tpm-ek` prints, or the EK certificate's).
    AddEk {
        #[command(flatten)]
        dir: DirArg,
        /// The batch id.
        #[arg(long)]
        batch: String,
        /// The device's serial.
        #[arg(long)]
        serial: String,
        /// The EK public key: PEM (PUBLIC KEY) or DER subjectPublicKeyInfo, ECC P-256.
        #[arg(long, value_name = "FILE")]
        ek: PathBuf,
    },
    /// List batches, newest first.
    List {
        #[command(flatten)]
        dir: DirArg,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one batch: quota, issued, refused, flagged, window, status.
    Show {
        #[command(flatten)]
        dir: DirArg,
        /// The batch id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close a batch: it issues nothing more.
    Close {
        #[command(flatten)]
        dir: DirArg,
        /// The batch id.
        id: String,
    },
}

pub fn batch(c: BatchCmd) -> anyhow::Result<()> {
    match c {
        BatchCmd::Create {
            dir,
            id,
            product,
            serials,
            quota,
            from,
            until,
            require_tpm_attestation,
            profile,
            vendor_id,
            product_id,
            template,
        } => {
            // Checked before anything is read or written.
            let profile = factory::batch_profile(Some(&profile), vendor_id.as_deref(), product_id.as_deref())?;
            if let Some(t) = &template {
                iotpki_authority::templates::check_known(&dir.config()?, t)?;
            }
            let store = dir.store()?;
            let allowlist =
                std::fs::read_to_string(&serials).with_context(|| format!("--serials {}", serials.display()))?;
            let from = from.unwrap_or_else(|| iotpki_authority::Clock::now(&SystemClock));
            let until = until.unwrap_or(from + 90 * 86_400);
            let nb = NewBatch {
                id,
                product,
                allowlist,
                quota,
                from,
                until,
                profile,
                template,
                tpm_attestation: require_tpm_attestation,
            };
            let b = factory::create_batch(store.as_ref(), &SystemClock, nb, "admin:cli")?;
            println!("{}", b.id);
            eprintln!(
                "batch {} ({}) created: {} serials, quota {}, {} .. {}",
                b.id,
                b.profile.name(),
                b.allowlist,
                b.quota,
                rfc3339(b.valid_from),
                rfc3339(b.valid_until)
            );
            Ok(())
        }
        BatchCmd::List { dir, json } => {
            let store = dir.store()?;
            let all = store.list_batches()?;
            if json {
                for b in &all {
                    println!("{}", iotpki_core::wire::to_string(&iotpki_server::views::batch(b)));
                }
                return Ok(());
            }
            println!(
                "{:<20} {:<16} {:>8} {:>8} {:>8} {:>8}  {:<6}  {:<20}  PROFILE",
                "ID", "PRODUCT", "QUOTA", "ISSUED", "REFUSED", "FLAGGED", "STATUS", "UNTIL"
            );
            for b in &all {
                let st = if b.status == BatchStatus::Open { "open" } else { "closed" };
                let profile = match b.profile {
                    BatchProfile::Device => "device".to_string(),
                    BatchProfile::MatterDac { vendor_id, product_id } => {
                        format!("matter-dac {vendor_id:04X}/{product_id:04X}")
                    }
                };
                println!(
                    "{:<20} {:<16} {:>8} {:>8} {:>8} {:>8}  {:<6}  {:<20}  {profile}",
                    b.id,
                    b.product,
                    b.quota,
                    b.issued,
                    b.refused,
                    b.flagged,
                    st,
                    rfc3339(b.valid_until)
                );
            }
            Ok(())
        }
        BatchCmd::Show { dir, id, json } => {
            let store = dir.store()?;
            let b = store.batch(&id)?.ok_or_else(|| anyhow!("no batch {id}"))?;
            let v = serde_json::to_value(iotpki_server::views::batch(&b))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (k, val) in v.as_object().into_iter().flatten() {
                    println!("{k:>10}: {}", val.as_str().map(str::to_string).unwrap_or_else(|| val.to_string()));
                }
            }
            Ok(())
        }
        BatchCmd::AddEk { dir, batch, serial, ek } => {
            let store = dir.store()?;
            let bytes = std::fs::read(&ek).with_context(|| format!("--ek {}", ek.display()))?;
            let der = match std::str::from_utf8(&bytes) {
                Ok(t) if t.contains("-----BEGIN") => iotpki_core::pem::decode_one("PUBLIC KEY", t)
                    .map_err(|e| anyhow!("--ek {}: {e} (a PEM PUBLIC KEY is expected)", ek.display()))?,
                _ => bytes,
            };
            let fpr =
                iotpki_authority::attest::add_ek(store.as_ref(), &SystemClock, &batch, &serial, &der, "admin:cli")?;
            println!("EK {fpr} registered for {serial} in batch {batch}");
            Ok(())
        }
        BatchCmd::Close { dir, id } => {
            let store = dir.store()?;
            factory::close_batch(store.as_ref(), &SystemClock, &id, "admin:cli")?;
            println!("batch {id} closed");
            Ok(())
        }
    }
}

/// `iotpki station ...`.
#[derive(Subcommand, Debug)]
pub enum StationCmd {
    /// Certify a factory station for some batches; its key is made in --out (the station's directory).
    Add {
        /// The station's name.
        name: String,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        pass: PassArg,
        /// The batches it may serve, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        batches: Vec<String>,
        /// The station's directory (made here, with the station's key in it).
        #[arg(long)]
        out: PathBuf,
        /// The authority's EST server the station talks to, stored in its directory.
        #[arg(long, default_value = "")]
        server: String,
        /// Key type of the station's key.
        #[arg(long, default_value = "p256")]
        key_type: String,
    },
    /// Give a station an offline sub-CA for one batch (path length 0, the batch's window,
    /// name-constrained to exactly the serials it may give birth to); its key is made in the
    /// station's directory.
    Delegate {
        /// The station's name.
        name: String,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        pass: PassArg,
        /// The batch.
        #[arg(long)]
        batch: String,
        /// The station's directory.
        #[arg(long)]
        station_dir: PathBuf,
        /// Key type of the sub-CA's key.
        #[arg(long, default_value = "p256")]
        key_type: String,
        /// Only these serials of the batch (one a line, like an allowlist), for a batch with
        /// more unborn serials than one delegated CA may name (256); default: all unborn.
        #[arg(long)]
        serials: Option<PathBuf>,
    },
    /// Revoke a station: it and its certificate are refused from now on.
    Revoke {
        /// The station's name.
        name: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Show a station.
    Show {
        /// The station's name.
        name: String,
        #[command(flatten)]
        dir: DirArg,
    },
}

pub fn station(c: StationCmd) -> anyhow::Result<()> {
    match c {
        StationCmd::Add { name, dir, pass, batches, out, server, key_type } => {
            let authority = dir.authority(&pass)?;
            factory::check_name("station name", &name)?;
            // The key is made in the station's directory; only its public key goes to the authority.
            let key = iotpki_station::factory::new_station_key(&out, KeyType::from_name(&key_type)?)?;
            let (cert, chain) = authority.add_station(&name, &batches, key.public_key_der(), "admin:cli")?;
            iotpki_station::factory::store_station(&out, &name, &server, &cert, &chain, authority.root_der())?;
            println!("station {name} certified for {}; its directory is {}", batches.join(","), out.display());
            Ok(())
        }
        StationCmd::Delegate { name, dir, pass, batch, station_dir, key_type, serials } => {
            let slice = match &serials {
                Some(p) => Some(factory::parse_allowlist(
                    &std::fs::read_to_string(p).with_context(|| format!("--serials {}", p.display()))?,
                )?),
                None => None,
            };
            let authority = dir.authority(&pass)?;
            let station = iotpki_agent::state::load(&station_dir)?;
            if station.device_serial != name {
                bail!("{} is the directory of station {}, not {name}", station_dir.display(), station.device_serial);
            }
            factory::check_name("batch id", &batch)?;
            let batch_dir = iotpki_station::offline::batch_dir(&station_dir, &batch);
            let fresh_dir = !batch_dir.exists();
            let key = iotpki_station::offline::new_delegate_key(&station_dir, &batch, KeyType::from_name(&key_type)?)?;
            let delegated =
                authority.delegate_station_serials(&name, &batch, key.public_key_der(), slice.as_deref(), "admin:cli");
            if delegated.is_err() && fresh_dir {
                // Refused: the key made for it goes, so that a retry makes (and uses) a new one.
                let _ = std::fs::remove_dir_all(&batch_dir);
            }
            let iotpki_authority::Delegated { cert, chain, batch: rec, allowlist, crl_url } = delegated?;
            let pem_all =
                |v: &[Vec<u8>]| v.iter().map(|c| iotpki_core::pem::encode("CERTIFICATE", c)).collect::<String>();
            let d = iotpki_core::wire::Delegation {
                batch: batch.clone(),
                organization: authority.config().organization.clone(),
                quota: rec.quota.saturating_sub(rec.issued).min(allowlist.len() as u64),
                valid_from: rec.valid_from,
                valid_until: rec.valid_until,
                allowlist,
                cert_pem: iotpki_core::pem::encode("CERTIFICATE", &cert),
                chain_pem: pem_all(&chain),
                crl_url,
            };
            iotpki_station::offline::store_delegation(&station_dir, &d)?;
            println!(
                "station {name} may issue offline for batch {batch}: {} births of {} serials, until {}",
                d.quota,
                d.allowlist.len(),
                rfc3339(d.valid_until)
            );
            Ok(())
        }
        StationCmd::Revoke { name, dir } => {
            let store = dir.store()?;
            factory::revoke_station(store.as_ref(), &SystemClock, &name, "admin:cli")?;
            println!("station {name} revoked");
            Ok(())
        }
        StationCmd::Show { name, dir } => {
            let store = dir.store()?;
            let st = store.station(&name)?.ok_or_else(|| anyhow!("no station {name}"))?;
            let status = match st.status {
                StationStatus::Active => "active".to_string(),
                StationStatus::Revoked { at } => format!("revoked {}", rfc3339(at)),
            };
            println!(
                "station:     {}\ncertificate: {}\nbatches:     {}\nstatus:      {status}",
                st.name,
                st.cert_serial,
                st.batches.join(",")
            );
            Ok(())
        }
    }
}

/// The station and batch a factory command works on.
#[derive(Args, Debug)]
pub struct StationBatch {
    /// The station's directory (`iotpki station add --out`).
    #[arg(long)]
    station_dir: PathBuf,
    /// The batch.
    #[arg(long)]
    batch: String,
    /// The authority's EST server (default: the one in the station's directory).
    #[arg(long)]
    server: Option<String>,
}

/// `iotpki factory run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    at: StationBatch,
    /// Simulate N devices in this process (file keystores, serials in order from the allowlist).
    #[arg(long, value_name = "N", required_unless_present = "line", conflicts_with = "line")]
    simulate: Option<usize>,
    /// A device under test on a line link (`iotpki agent line --listen ADDR`); repeatable.
    #[arg(long, value_name = "ADDR")]
    line: Vec<String>,
    /// Devices at once.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Where the simulated devices' state directories go (default: STATION_DIR/devices).
    #[arg(long)]
    devices_dir: Option<PathBuf>,
    /// The production log, JSON lines (default: STATION_DIR/production.jsonl).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Device key type.
    #[arg(long, default_value = "p256")]
    key_type: String,
    /// Issue with the station's delegated CA, without the authority (see `station delegate`).
    #[arg(long)]
    offline: bool,
}

/// `iotpki factory ...`.
#[derive(Subcommand, Debug)]
pub enum FactoryCmd {
    /// Give birth to devices of a batch on this station.
    Run(RunArgs),
    /// Upload the production record of an offline batch to the authority.
    Sync(StationBatch),
}

pub fn factory(c: FactoryCmd) -> anyhow::Result<()> {
    match c {
        FactoryCmd::Run(a) => run(a),
        FactoryCmd::Sync(a) => sync(a),
    }
}

fn sync(a: StationBatch) -> anyhow::Result<()> {
    let station = iotpki_station::factory::Station::open(&a.station_dir, a.server.as_deref())?;
    let (born, flagged) = crate::runtime()?.block_on(station.sync(&a.station_dir, &a.batch))?;
    println!("synced: {born} born, {} flagged", flagged.len());
    for (serial, reason) in &flagged {
        println!("  flagged {serial}: {reason}");
    }
    Ok(())
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        at: StationBatch { station_dir, batch, server },
        simulate,
        line,
        parallel,
        devices_dir,
        log,
        key_type,
        offline,
    } = a;
    if simulate == Some(0) || parallel == 0 {
        bail!("--simulate and --parallel must be at least 1");
    }
    let opts = iotpki_station::factory::RunOptions {
        batch: batch.clone(),
        parallel,
        log: log.unwrap_or_else(|| station_dir.join("production.jsonl")),
        key_type: KeyType::from_name(&key_type)?,
    };
    let station = Arc::new(if offline {
        iotpki_station::factory::Station::open_offline(&station_dir, &batch)?
    } else {
        iotpki_station::factory::Station::open(&station_dir, server.as_deref())?
    });
    let rt = crate::runtime()?;
    let duts = match simulate {
        Some(n) => {
            let dir = devices_dir.unwrap_or_else(|| station_dir.join("devices"));
            rt.block_on(iotpki_station::factory::simulated(&station, &batch, n, &dir))?
        }
        None => line.into_iter().map(|addr| iotpki_station::factory::Dut::Line { addr }).collect(),
    };
    let bar = ProgressBar::new(duts.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} / {batch}", station.name));
    let b2 = bar.clone();
    let t0 = std::time::Instant::now();
    let out = rt.block_on(iotpki_station::factory::run(station, &opts, duts, move |p| {
        b2.inc(1);
        if p.result != "born" {
            b2.set_message(format!("last refusal: {} {}", p.serial, p.reason.as_deref().unwrap_or("")));
        }
    }))?;
    bar.finish_and_clear();
    let born = out.iter().filter(|p| p.result == "born").count();
    let refused = out.iter().filter(|p| p.result == "refused").count();
    let failed = out.len() - born - refused;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{born} born, {refused} refused, {failed} failed in {secs:.2} s ({:.0} devices/s); log: {}",
        out.len() as f64 / secs,
        opts.log.display()
    );
    for p in out.iter().filter(|p| p.result != "born").take(5) {
        println!("  {} {}: {}", p.serial, p.result, p.reason.as_deref().unwrap_or(""));
    }
    if failed > 0 {
        bail!("{failed} devices failed");
    }
    Ok(())
}
