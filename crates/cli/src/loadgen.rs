//! `iotpki loadgen`: enroll (and renew) many simulated devices against a
//! running server and report throughput and latency percentiles.
//!
//! Keys, requests and tokens are made before the clock starts: what is timed
//! is the server's work (TLS, EST, signing, the durable commit) and the
//! round trips. Every answer is checked (the certificate must carry the
//! request's key and chain to the trust anchor); one that does not is an
//! error, not a success.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use iotpki_agent::est_client::{ClientIdentity, EstClient};
use iotpki_authority::clock::SystemClock;
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_core::{csr, pem};

/// `iotpki loadgen`.
#[derive(Args, Debug)]
pub struct LoadgenArgs {
    /// The server, https://HOST:PORT.
    #[arg(long)]
    server: String,
    /// How many devices to enroll.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// How many requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The authority's directory: one-time tokens are minted through its store before the timed part.
    #[arg(long, conflicts_with = "station_dir")]
    dir: Option<PathBuf>,
    /// A factory station's directory: births in --batch with the station's certificate instead of tokens.
    #[arg(long, requires = "batch")]
    station_dir: Option<PathBuf>,
    /// The batch for --station-dir.
    #[arg(long)]
    batch: Option<String>,
    /// The trust anchor (root CA, PEM); default: the authority's or the station's.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Keep connections open across requests (one per worker) instead of a new TLS connection each.
    #[arg(long)]
    reuse_connections: bool,
    /// Then renew every enrolled device over a new mutual-TLS connection each.
    #[arg(long)]
    renew: bool,
    /// Key type of the simulated devices.
    #[arg(long, default_value = "p256")]
    key_type: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Append every certificate received (DER, base64, one a line) to this file, as it
    /// arrives: `iotpki cert reconcile` checks the store against it after a crash.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
}

/// Where received certificates are written as they arrive.
#[derive(Clone, Default)]
struct Recorder(Option<Arc<Mutex<std::fs::File>>>);

impl Recorder {
    fn open(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let Some(p) = path else { return Ok(Self(None)) };
        let f =
            std::fs::OpenOptions::new().create(true).append(true).open(p).with_context(|| p.display().to_string())?;
        Ok(Self(Some(Arc::new(Mutex::new(f)))))
    }

    fn record(&self, der: &[u8]) {
        use base64::Engine as _;
        use std::io::Write as _;
        if let Some(f) = &self.0 {
            let line = format!("{}\n", base64::engine::general_purpose::STANDARD.encode(der));
            if let Ok(mut f) = f.lock() {
                // One write per line (O_APPEND): a line is whole or absent.
                if let Err(e) = f.write_all(line.as_bytes()) {
                    eprintln!("cannot record a certificate: {e}");
                }
            }
        }
    }
}

/// One device of the run.
struct Device {
    serial: String,
    token: Option<String>,
    key: Arc<SoftKey>,
    csr: Vec<u8>,
    cert: Option<Vec<u8>>,
}

/// What a phase measured.
#[derive(Debug, serde::Serialize)]
struct Phase {
    ok: usize,
    errors: usize,
    wall_s: f64,
    per_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn phase(mut lat: Vec<Duration>, errors: usize, wall: Duration) -> Phase {
    lat.sort();
    Phase {
        ok: lat.len(),
        errors,
        wall_s: wall.as_secs_f64(),
        per_s: lat.len() as f64 / wall.as_secs_f64().max(1e-9),
        p50_ms: pct(&lat, 0.5),
        p90_ms: pct(&lat, 0.9),
        p99_ms: pct(&lat, 0.99),
        max_ms: lat.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
    }
}

fn bar(n: usize, what: &str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(n as u64);
    b.set_style(
        ProgressStyle::with_template(&format!("{what:>10} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b
}

/// Make a key and a request for each `(serial, token, current certificate)`
/// on all cores; a renewal's request carries the current certificate's subject.
fn make_devices(serials: Vec<(String, Option<String>, Option<Vec<u8>>)>, kt: KeyType) -> anyhow::Result<Vec<Device>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let chunk = serials.len().div_ceil(threads).max(1);
    let mut out = Vec::with_capacity(serials.len());
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = serials
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> anyhow::Result<Vec<Device>> {
                    part.iter()
                        .map(|(serial, token, current)| {
                            let sn = DeviceSerial::parse(serial)?;
                            let key = SoftKey::generate(kt)?;
                            let subject = match current {
                                Some(c) => iotpki_core::profile::cert_info(c)?.cert.tbs_certificate.subject,
                                None => NameBuilder::default().common_name(serial)?.serial_number(&sn)?.build(),
                            };
                            let csr = csr::build(&subject, &key, vec![])?;
                            Ok(Device {
                                serial: serial.clone(),
                                token: token.clone(),
                                key: Arc::new(key),
                                csr,
                                cert: None,
                            })
                        })
                        .collect()
                })
            })
            .collect();
        for h in handles {
            out.extend(h.join().map_err(|_| anyhow::anyhow!("a key generation thread panicked"))??);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Mint one token per serial through the store, many at once (group commit).
fn mint_tokens(dir: &std::path::Path, serials: &[String]) -> anyhow::Result<Vec<String>> {
    let cfg = iotpki_authority::config::Config::load(dir)?;
    let store = iotpki_authority::open_store(dir, &cfg)?;
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; serials.len()]);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..64)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(serial) = serials.get(i) else { return Ok(()) };
                        let sn = DeviceSerial::parse(serial)?;
                        let t = iotpki_authority::tokens::create(
                            store.as_ref(),
                            &cfg,
                            &SystemClock,
                            &sn,
                            None,
                            "admin:loadgen",
                        )?;
                        out.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[i] = Some(t);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a token thread panicked"))??;
        }
        Ok(())
    })?;
    out.into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .into_iter()
        .map(|t| t.context("a token was not minted"))
        .collect()
}

fn root_of_authority(dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let cfg = iotpki_authority::config::Config::load(dir)?;
    let root = cfg
        .ca
        .iter()
        .find(|c| c.role == iotpki_authority::config::CaRole::Root)
        .context("the config names no root CA")?;
    let path = iotpki_authority::keyfile::resolve(dir, &root.cert);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(pem::decode_one("CERTIFICATE", &text)?)
}

pub fn run(a: LoadgenArgs) -> anyhow::Result<()> {
    if a.devices == 0 || a.concurrency == 0 {
        bail!("--devices and --concurrency must be at least 1");
    }
    let kt = KeyType::from_name(&a.key_type)?;
    let rt = crate::runtime()?;
    let quiet = a.json;

    // The client for the timed part, and the devices (untimed).
    let (client, anchor, label, serials, tokens) = match (&a.dir, &a.station_dir) {
        (Some(dir), None) => {
            let anchor = match &a.ca_cert {
                Some(f) => pem::decode_one("CERTIFICATE", &crate::admin::read_flag_file("--ca-cert", f)?)?,
                None => root_of_authority(dir)?,
            };
            let run_id = format!("{:08x}", rand::random::<u32>());
            let serials: Vec<String> = (0..a.devices).map(|i| format!("LG-{run_id}-{i:07}")).collect();
            let t = Instant::now();
            let tokens = mint_tokens(dir, &serials)?;
            if !quiet {
                eprintln!("minted {} tokens in {:.2?} (untimed)", tokens.len(), t.elapsed());
            }
            let client = EstClient::new(&a.server, None, std::slice::from_ref(&anchor), None)?;
            (client, anchor, None, serials, tokens.into_iter().map(Some).collect::<Vec<_>>())
        }
        (None, Some(st)) => {
            let batch = a.batch.clone().context("--station-dir needs --batch")?;
            let id = iotpki_agent::state::load(st)?;
            let key: Arc<dyn Signer> = Arc::new(iotpki_agent::state::load_key(st, &id)?);
            let mut chain = vec![pem::decode_one("CERTIFICATE", &id.cert_pem)?];
            chain.extend(pem::decode_all("CERTIFICATE", &id.chain_pem)?);
            let anchor = match &a.ca_cert {
                Some(f) => pem::decode_one("CERTIFICATE", &crate::admin::read_flag_file("--ca-cert", f)?)?,
                None => pem::decode_one("CERTIFICATE", &id.anchor_pem)?,
            };
            let label = id.label.clone();
            let client = EstClient::new(
                &a.server,
                label.as_deref(),
                std::slice::from_ref(&anchor),
                Some(ClientIdentity { chain, key }),
            )?;
            let n = u32::try_from(a.devices).context("--devices too large")?;
            let view = rt.block_on(client.factory_batch(&batch, n))?;
            let serials: Vec<String> = view["unborn"]
                .as_array()
                .map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            if serials.len() < a.devices {
                bail!("batch {batch} has only {} serials not born yet; ask for fewer --devices", serials.len());
            }
            let tokens = vec![None; serials.len()];
            (client, anchor, label, serials, tokens)
        }
        _ => bail!("give --dir (tokens minted through the store) or --station-dir with --batch"),
    };
    let t = Instant::now();
    let devices = make_devices(serials.into_iter().zip(tokens).map(|(s, t)| (s, t, None)).collect(), kt)?;
    if !quiet {
        eprintln!("made {} device keys and requests in {:.2?} (untimed)", devices.len(), t.elapsed());
    }
    let chain = rt.block_on(client.cacerts())?.into_iter().filter(|c| *c != anchor).collect::<Vec<_>>();
    let _ = label;

    let devices = Arc::new(Mutex::new(devices));
    let rec = Recorder::open(a.record.as_deref())?;
    let enroll = rt.block_on(enroll_phase(&a, &client, devices.clone(), &chain, &anchor, &rec, quiet))?;
    let renew = match a.renew {
        true => Some(rt.block_on(renew_phase(&a, devices.clone(), &chain, &anchor, kt, &rec, quiet))?),
        false => None,
    };
    report(&a, &enroll, renew.as_ref())
}

type Outcome = (Vec<Duration>, Vec<String>);

async fn enroll_phase(
    a: &LoadgenArgs,
    client: &EstClient,
    devices: Arc<Mutex<Vec<Device>>>,
    chain: &[Vec<u8>],
    anchor: &[u8],
    rec: &Recorder,
    quiet: bool,
) -> anyhow::Result<Phase> {
    let n = devices.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.len();
    let pb = bar(n, "enrolling", quiet);
    let next = Arc::new(AtomicUsize::new(0));
    let station_batch = a.station_dir.as_ref().and(a.batch.clone());
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.min(n) {
        let (client, devices, next, pb, rec) = (client.clone(), devices.clone(), next.clone(), pb.clone(), rec.clone());
        let (chain, anchor, batch, reuse) =
            (chain.to_vec(), anchor.to_vec(), station_batch.clone(), a.reuse_connections);
        set.spawn(async move {
            let mut kept = reuse.then(|| client.keep_alive());
            let mut out: Outcome = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((serial, token, key, csr)) = devices
                    .lock()
                    .ok()
                    .and_then(|d| d.get(i).map(|d| (d.serial.clone(), d.token.clone(), d.key.clone(), d.csr.clone())))
                else {
                    return out;
                };
                let t0 = Instant::now();
                let r = match (&mut kept, &batch, &token) {
                    (Some(k), Some(b), _) => k.simple_enroll_batch(&csr, b).await,
                    (Some(k), None, Some(t)) => k.simple_enroll(&csr, &serial, t).await,
                    (None, Some(b), _) => client.simple_enroll_batch(&csr, b).await,
                    (None, None, Some(t)) => client.simple_enroll(&csr, &serial, t).await,
                    (_, None, None) => Err(iotpki_agent::AgentError::Usage("no token".into())),
                };
                let took = t0.elapsed();
                if let Ok(c) = &r {
                    rec.record(c);
                }
                let checked = r.and_then(|cert| {
                    iotpki_agent::flow::check_issued(&cert, key.as_ref(), &chain, &anchor).map(|()| cert)
                });
                match checked {
                    Ok(cert) => {
                        out.0.push(took);
                        if let Ok(mut d) = devices.lock() {
                            d[i].cert = Some(cert);
                        }
                    }
                    Err(e) => out.1.push(format!("{serial}: {e}")),
                }
                pb.inc(1);
            }
        });
    }
    let (lat, errors) = collect(set).await?;
    let wall = started.elapsed();
    pb.finish_and_clear();
    print_errors("enroll", &errors, quiet);
    Ok(phase(lat, errors.len(), wall))
}

async fn collect(mut set: tokio::task::JoinSet<Outcome>) -> anyhow::Result<Outcome> {
    let (mut lat, mut errors) = (Vec::new(), Vec::new());
    while let Some(j) = set.join_next().await {
        let (l, e) = j?;
        lat.extend(l);
        errors.extend(e);
    }
    Ok((lat, errors))
}

fn print_errors(what: &str, errors: &[String], quiet: bool) {
    if quiet {
        return;
    }
    for e in errors.iter().take(5) {
        eprintln!("{what} error: {e}");
    }
    if errors.len() > 5 {
        eprintln!("{what}: {} more errors", errors.len() - 5);
    }
}

async fn renew_phase(
    a: &LoadgenArgs,
    devices: Arc<Mutex<Vec<Device>>>,
    chain: &[Vec<u8>],
    anchor: &[u8],
    kt: KeyType,
    rec: &Recorder,
    quiet: bool,
) -> anyhow::Result<Phase> {
    // Untimed: a client with each enrolled device's identity, and its new key and request.
    let mut jobs = Vec::new();
    let mut current = Vec::new();
    for d in devices.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter() {
        let Some(cert) = &d.cert else { continue };
        current.push((d.serial.clone(), None, Some(cert.clone())));
        let mut tls_chain = vec![cert.clone()];
        tls_chain.extend(chain.iter().cloned());
        let key: Arc<dyn Signer> = d.key.clone();
        let client =
            EstClient::new(&a.server, None, &[anchor.to_vec()], Some(ClientIdentity { chain: tls_chain, key }))?;
        jobs.push((d.serial.clone(), client));
    }
    let fresh = make_devices(current, kt)?;
    let jobs: Arc<Vec<_>> = Arc::new(jobs.into_iter().zip(fresh).map(|((s, c), f)| (s, c, f.key, f.csr)).collect());
    let pb = bar(jobs.len(), "renewing", quiet);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.min(jobs.len()) {
        let (jobs, next, pb, chain, anchor) = (jobs.clone(), next.clone(), pb.clone(), chain.to_vec(), anchor.to_vec());
        let rec = rec.clone();
        set.spawn(async move {
            let mut out: Outcome = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((serial, client, key, csr)) = jobs.get(i) else { return out };
                let t0 = Instant::now();
                let r = client.simple_reenroll(csr).await;
                let took = t0.elapsed();
                if let Ok(c) = &r {
                    rec.record(c);
                }
                match r.and_then(|cert| iotpki_agent::flow::check_issued(&cert, key.as_ref(), &chain, &anchor)) {
                    Ok(()) => out.0.push(took),
                    Err(e) => out.1.push(format!("{serial}: {e}")),
                }
                pb.inc(1);
            }
        });
    }
    let (lat, errors) = collect(set).await?;
    let wall = started.elapsed();
    pb.finish_and_clear();
    print_errors("renew", &errors, quiet);
    Ok(phase(lat, errors.len(), wall))
}

fn report(a: &LoadgenArgs, enroll: &Phase, renew: Option<&Phase>) -> anyhow::Result<()> {
    let errors = enroll.errors + renew.map(|r| r.errors).unwrap_or(0);
    if a.json {
        let mut v = serde_json::json!({
            "devices": a.devices,
            "concurrency": a.concurrency,
            "reuse_connections": a.reuse_connections,
            "mode": if a.station_dir.is_some() { "station" } else { "token" },
            "enrollments_per_s": enroll.per_s,
            "p50_ms": enroll.p50_ms,
            "p90_ms": enroll.p90_ms,
            "p99_ms": enroll.p99_ms,
            "max_ms": enroll.max_ms,
            "errors": errors,
            "enroll": enroll,
        });
        if let Some(r) = renew {
            v["renewals_per_s"] = serde_json::json!(r.per_s);
            v["renew"] = serde_json::to_value(r)?;
        }
        println!("{v}");
    } else {
        println!(
            "{:<8} {:>8} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "phase", "ok", "errors", "wall s", "per s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for (name, p) in std::iter::once(("enroll", enroll)).chain(renew.map(|r| ("renew", r))) {
            println!(
                "{:<8} {:>8} {:>7} {:>9.2} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name, p.ok, p.errors, p.wall_s, p.per_s, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
            );
        }
    }
    if errors > 0 {
        bail!("{errors} request(s) failed or were answered wrongly");
    }
    Ok(())
}
