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
use iotpki_agent::coaps_client::{self, CoapsClient};
use iotpki_agent::est_client::{ClientIdentity, EstClient};
use iotpki_agent::flow::Est;
use iotpki_core::clock::SystemClock;
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_core::{csr, pem};

/// `iotpki loadgen`.
#[derive(Args, Debug)]
pub struct LoadgenArgs {
    /// The server, https://HOST:PORT, or coaps://HOST:PORT for EST over secure CoAP
    /// (DTLS 1.3; token enrollments and renewals, a new DTLS session each). Give it more
    /// than once to spread the load over several nodes of one authority (worker and
    /// device N go to server N mod count).
    #[arg(long, required = true)]
    server: Vec<String>,
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
    /// Then, before any renewal: every enrolled device opens a new mutual-TLS 1.3
    /// connection and asks `GET /healthz` (the handshake's cost, with a trivial request).
    #[arg(long)]
    handshakes: bool,
    /// Then ask the OCSP responder at this plain-HTTP base URL (http://HOST:PORT, the
    /// server's --http-listen) about the enrolled certificates over kept-alive
    /// connections: once each to fill its cache (untimed), then timed, the same
    /// request over and over and the distinct requests in turn.
    #[arg(long, value_name = "URL")]
    ocsp: Option<String>,
    /// OCSP requests per timed OCSP phase.
    #[arg(long, default_value_t = 20_000)]
    ocsp_requests: usize,
    /// Key type of the simulated devices: p256, p384, ed25519, ml-dsa-44, ml-dsa-65 or
    /// ml-dsa-87 (over coaps: p256 or p384).
    #[arg(long, default_value = "p256")]
    key_type: String,
    /// Also report the CPU time these processes (the servers under test, by process id)
    /// spent per operation in each phase, next to the generator's own (Linux /proc).
    #[arg(long, value_name = "PID")]
    watch_pid: Vec<u32>,
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
    /// Over coaps: the self-signed certificate of the key, for the DTLS handshake of
    /// the first enrollment (the request carries the token in its challengePassword).
    hello: Option<Vec<u8>>,
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
    /// CPU milliseconds (user + system) the generator spent per successful operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cpu_ms_per_op: Option<f64>,
    /// CPU milliseconds the `--watch-pid` processes spent per successful operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_ms_per_op: Option<f64>,
    /// Context switches (voluntary and not, all their threads) of the `--watch-pid`
    /// processes per successful operation: the thread hand-offs an operation costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_switches_per_op: Option<f64>,
}

/// CPU seconds (user + system) used so far: by this process, and by the watched ones;
/// and the watched ones' context switches.
#[derive(Clone, Copy, Debug)]
struct Cpu {
    own: Option<f64>,
    watched: Option<f64>,
    switches: Option<u64>,
}

/// The CPU ticks (utime + stime, all threads) in the text of `/proc/PID/stat`.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11); // field 3 is the first here; utime is field 14
    Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
}

/// Linux reports these in USER_HZ, 100 per second on every platform it runs on.
const TICKS_PER_S: f64 = 100.0;

fn proc_cpu_s(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_ticks(&stat)? as f64 / TICKS_PER_S)
}

/// The context switches in the text of a `/proc/PID/task/TID/status`.
fn status_switches(status: &str) -> Option<u64> {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok());
    Some(field("voluntary_ctxt_switches:")? + field("nonvoluntary_ctxt_switches:")?)
}

/// Context switches so far of every live thread of `pid` (a thread that has exited is not counted).
fn proc_switches(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut n = 0;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
            n += status_switches(&s)?;
        }
    }
    Some(n)
}

impl Cpu {
    fn now(watch: &[u32]) -> Self {
        let (watched, switches) = match watch {
            [] => (None, None),
            pids => (
                pids.iter().map(|p| proc_cpu_s(&p.to_string())).sum::<Option<f64>>(),
                pids.iter().map(|p| proc_switches(*p)).sum::<Option<u64>>(),
            ),
        };
        Self { own: proc_cpu_s("self"), watched, switches }
    }

    /// `p` with the CPU per operation spent since `self`.
    fn charge(self, watch: &[u32], mut p: Phase) -> Phase {
        let after = Self::now(watch);
        let per_op = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if p.ok > 0 => Some((b - a) * 1000.0 / p.ok as f64),
            _ => None,
        };
        p.client_cpu_ms_per_op = per_op(self.own, after.own);
        p.server_cpu_ms_per_op = per_op(self.watched, after.watched);
        p.server_switches_per_op = match (self.switches, after.switches) {
            (Some(a), Some(b)) if p.ok > 0 => Some(b.saturating_sub(a) as f64 / p.ok as f64),
            _ => None,
        };
        p
    }
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
        client_cpu_ms_per_op: None,
        server_cpu_ms_per_op: None,
        server_switches_per_op: None,
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
fn make_devices(
    serials: Vec<(String, Option<String>, Option<Vec<u8>>)>,
    kt: KeyType,
    coaps: bool,
) -> anyhow::Result<Vec<Device>> {
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
                            let (csr, hello) = match (coaps, token) {
                                (true, Some(t)) => (
                                    csr::build_with_challenge(&subject, &key, vec![], Some(&format!("{serial}:{t}")))?,
                                    Some(coaps_client::self_signed(&key, &sn)?),
                                ),
                                _ => (csr::build(&subject, &key, vec![])?, None),
                            };
                            Ok(Device {
                                serial: serial.clone(),
                                token: token.clone(),
                                key: Arc::new(key),
                                csr,
                                cert: None,
                                hello,
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
    if let Some(u) = &a.ocsp {
        ocsp_addr(u)?;
        if a.ocsp_requests == 0 {
            bail!("--ocsp-requests must be at least 1");
        }
    }
    let kt = KeyType::from_name(&a.key_type)?;
    let coaps = a.server.iter().any(|s| coaps_client::is_coaps(s));
    if coaps && !a.server.iter().all(|s| coaps_client::is_coaps(s)) {
        bail!("give only coaps:// servers or only https:// ones");
    }
    if coaps && !matches!(kt, KeyType::EcdsaP256 | KeyType::EcdsaP384) {
        bail!("over coaps the devices need p256 or p384 keys (DTLS with {kt} is not offered)");
    }
    if coaps && (a.station_dir.is_some() || a.reuse_connections || a.handshakes || a.ocsp.is_some()) {
        bail!("over coaps the load generator enrolls with tokens and renews (no --station-dir, --reuse-connections, --handshakes or --ocsp)");
    }
    let rt = crate::runtime()?;
    let quiet = a.json;

    // The client for the timed part, and the devices (untimed).
    let (clients, anchor, label, serials, tokens) = match (&a.dir, &a.station_dir) {
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
            // No TLS session resumption: a device's first enrollment is a full handshake.
            let clients = a
                .server
                .iter()
                .map(|s| {
                    // The coaps clients are made per device; this one only serves /cacerts below.
                    let s = if coaps { "https://127.0.0.1:1" } else { s.as_str() };
                    EstClient::new(s, None, std::slice::from_ref(&anchor), None).map(|c| c.without_resumption())
                })
                .collect::<Result<Vec<_>, _>>()?;
            (clients, anchor, None, serials, tokens.into_iter().map(Some).collect::<Vec<_>>())
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
            let clients = a
                .server
                .iter()
                .map(|s| {
                    EstClient::new(
                        s,
                        label.as_deref(),
                        std::slice::from_ref(&anchor),
                        Some(ClientIdentity { chain: chain.clone(), key: key.clone() }),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            let n = u32::try_from(a.devices).context("--devices too large")?;
            let api = iotpki_station::api::FactoryApi::new(clients[0].clone());
            let serials = rt.block_on(api.batch(&batch, n))?.unborn;
            if serials.len() < a.devices {
                bail!("batch {batch} has only {} serials not born yet; ask for fewer --devices", serials.len());
            }
            let tokens = vec![None; serials.len()];
            (clients, anchor, label, serials, tokens)
        }
        _ => bail!("give --dir (tokens minted through the store) or --station-dir with --batch"),
    };
    let t = Instant::now();
    let devices = make_devices(serials.into_iter().zip(tokens).map(|(s, t)| (s, t, None)).collect(), kt, coaps)?;
    if !quiet {
        eprintln!("made {} device keys and requests in {:.2?} (untimed)", devices.len(), t.elapsed());
    }
    let cacerts = match devices.first().and_then(|d| d.hello.clone().map(|h| (h, d.key.clone()))) {
        Some((hello, key)) if coaps => {
            let c = CoapsClient::new(
                &a.server[0],
                None,
                std::slice::from_ref(&anchor),
                &[],
                ClientIdentity { chain: vec![hello], key },
            )?;
            rt.block_on(c.cacerts())?
        }
        _ => rt.block_on(clients[0].cacerts())?,
    };
    let chain = cacerts.into_iter().filter(|c| *c != anchor).collect::<Vec<_>>();
    let _ = label;

    let devices = Arc::new(Mutex::new(devices));
    let rec = Recorder::open(a.record.as_deref())?;
    let w = &a.watch_pid;
    let mut phases =
        vec![("enroll", rt.block_on(enroll_phase(&a, &clients, devices.clone(), &chain, &anchor, &rec, quiet))?)];
    if let Some(url) = &a.ocsp {
        let issued = issued_certs(&devices)?;
        phases.extend(rt.block_on(ocsp_phases(url, &issued, &chain, a.concurrency, a.ocsp_requests, w, quiet))?);
    }
    if a.handshakes {
        phases.push(("handshake", rt.block_on(handshake_phase(&a, devices.clone(), &chain, &anchor, quiet))?));
    }
    if a.renew {
        phases.push(("renew", rt.block_on(renew_phase(&a, devices.clone(), &chain, &anchor, kt, &rec, quiet))?));
    }
    report(&a, &phases)
}

fn issued_certs(devices: &Mutex<Vec<Device>>) -> anyhow::Result<Vec<Vec<u8>>> {
    Ok(devices.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter().filter_map(|d| d.cert.clone()).collect())
}

/// A client with the device's identity (its certificate and key) on its server.
fn device_client(
    a: &LoadgenArgs,
    i: usize,
    d: &Device,
    cert: &[u8],
    chain: &[Vec<u8>],
    anchor: &[u8],
) -> anyhow::Result<EstClient> {
    let mut tls_chain = vec![cert.to_vec()];
    tls_chain.extend(chain.iter().cloned());
    let key: Arc<dyn Signer> = d.key.clone();
    let server = &a.server[i % a.server.len()];
    Ok(EstClient::new(server, None, &[anchor.to_vec()], Some(ClientIdentity { chain: tls_chain, key }))?)
}

/// A renewing device's client, over HTTPS or over coaps (a new DTLS session
/// each call) as its server's URL says: the agent's own.
fn renewer(
    a: &LoadgenArgs,
    i: usize,
    d: &Device,
    cert: &[u8],
    chain: &[Vec<u8>],
    anchor: &[u8],
) -> anyhow::Result<Est> {
    let mut dev_chain = vec![cert.to_vec()];
    dev_chain.extend(chain.iter().cloned());
    let key: Arc<dyn Signer> = d.key.clone();
    let server = &a.server[i % a.server.len()];
    Ok(Est::new(server, None, &[anchor.to_vec()], chain, Some(ClientIdentity { chain: dev_chain, key }))?)
}

/// Every enrolled device: a new mutual-TLS connection and `GET /healthz`.
async fn handshake_phase(
    a: &LoadgenArgs,
    devices: Arc<Mutex<Vec<Device>>>,
    chain: &[Vec<u8>],
    anchor: &[u8],
    quiet: bool,
) -> anyhow::Result<Phase> {
    let mut jobs = Vec::new();
    for (i, d) in devices.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter().enumerate() {
        let Some(cert) = &d.cert else { continue };
        jobs.push((d.serial.clone(), device_client(a, i, d, cert, chain, anchor)?));
    }
    let jobs = Arc::new(jobs);
    let pb = bar(jobs.len(), "handshakes", quiet);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = Cpu::now(&a.watch_pid);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.min(jobs.len()) {
        let (jobs, next, pb) = (jobs.clone(), next.clone(), pb.clone());
        set.spawn(async move {
            let mut out: Outcome = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((serial, client)) = jobs.get(i) else { return out };
                let t0 = Instant::now();
                let r = client.get("/healthz").await;
                let took = t0.elapsed();
                match r {
                    Ok((200, _)) => out.0.push(took),
                    Ok((status, body)) => {
                        out.1.push(format!("{serial}: /healthz answered {status}: {}", String::from_utf8_lossy(&body)))
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
    print_errors("handshake", &errors, quiet);
    Ok(cpu.charge(&a.watch_pid, phase(lat, errors.len(), wall)))
}

/// One kept-alive plain HTTP/1.1 connection that POSTs OCSP requests.
struct OcspConn {
    addr: String,
    stream: Option<tokio::io::BufReader<tokio::net::TcpStream>>,
}

impl OcspConn {
    /// POST one request; the answer's body, which must be a successful OCSPResponse.
    async fn ask(&mut self, req: &[u8]) -> anyhow::Result<Vec<u8>> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        if self.stream.is_none() {
            let tcp =
                tokio::net::TcpStream::connect(&self.addr).await.with_context(|| format!("OCSP at {}", self.addr))?;
            let _ = tcp.set_nodelay(true);
            self.stream = Some(tokio::io::BufReader::new(tcp));
        }
        let Some(s) = self.stream.as_mut() else { bail!("no connection") };
        let head = format!(
            "POST /ocsp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/ocsp-request\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            req.len()
        );
        let mut msg = head.into_bytes();
        msg.extend_from_slice(req);
        s.get_mut().write_all(&msg).await?;
        let (mut status, mut len, mut close) = (0u16, None, false);
        let mut line = String::new();
        loop {
            line.clear();
            if s.read_line(&mut line).await? == 0 {
                self.stream = None;
                bail!("the OCSP responder closed the connection");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if status == 0 {
                status = l.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            } else if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            } else if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let len = len.context("the OCSP answer has no Content-Length")?;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await?;
        if close {
            self.stream = None;
        }
        if status != 200 {
            bail!("the OCSP responder answered {status}");
        }
        // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED (0 = successful), ... }
        let status_at = match body.get(1) {
            Some(b) if *b & 0x80 != 0 => 2 + usize::from(*b & 0x7f),
            _ => 2,
        };
        if body.get(status_at..status_at + 3) != Some(&[0x0a, 0x01, 0x00][..]) {
            bail!("the OCSP answer is not a successful OCSPResponse");
        }
        Ok(body)
    }
}

/// HOST:PORT of the OCSP responder's plain-HTTP base URL.
fn ocsp_addr(url: &str) -> anyhow::Result<String> {
    let hostport = url
        .strip_prefix("http://")
        .context("--ocsp takes the plain-HTTP base URL, http://HOST:PORT (the server's --http-listen)")?
        .trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') {
        bail!("--ocsp takes the base URL only, http://HOST:PORT, without a path: got {url}");
    }
    Ok(hostport.to_string())
}

/// Fill the responder's cache with each certificate's request once (untimed),
/// then time `total` requests: the same one, then the distinct ones in turn.
async fn ocsp_phases(
    url: &str,
    certs: &[Vec<u8>],
    chain: &[Vec<u8>],
    concurrency: usize,
    total: usize,
    watch: &[u32],
    quiet: bool,
) -> anyhow::Result<Vec<(&'static str, Phase)>> {
    let addr = ocsp_addr(url)?;
    if certs.is_empty() || total == 0 {
        bail!("no enrolled certificate to ask OCSP about (or --ocsp-requests 0)");
    }
    let mut reqs = Vec::with_capacity(certs.len());
    for c in certs {
        let issuer_name = iotpki_core::profile::cert_info(c)?.cert.tbs_certificate.issuer;
        let mut issuer = None;
        for ca in chain {
            if iotpki_core::profile::cert_info(ca)?.cert.tbs_certificate.subject == issuer_name {
                issuer = Some(ca);
            }
        }
        let issuer = issuer.context("the CA chain from /cacerts has no issuer of an enrolled certificate")?;
        reqs.push(iotpki_core::ocsp::request(c, issuer)?);
    }
    let reqs = Arc::new(reqs);
    let mut warm = OcspConn { addr: addr.clone(), stream: None };
    for r in reqs.iter() {
        warm.ask(r).await.context("filling the OCSP cache")?;
    }
    let mut out = Vec::new();
    for (name, same) in [("ocsp_same", true), ("ocsp_distinct", false)] {
        let pb = bar(total, name, quiet);
        let next = Arc::new(AtomicUsize::new(0));
        let cpu = Cpu::now(watch);
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..concurrency.min(total) {
            let (reqs, next, pb, addr) = (reqs.clone(), next.clone(), pb.clone(), addr.clone());
            set.spawn(async move {
                let mut conn = OcspConn { addr, stream: None };
                let mut out: Outcome = (Vec::new(), Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return out;
                    }
                    let req = if same { &reqs[0] } else { &reqs[i % reqs.len()] };
                    let t0 = Instant::now();
                    match conn.ask(req).await {
                        Ok(_) => out.0.push(t0.elapsed()),
                        Err(e) => out.1.push(format!("OCSP request {i}: {e:#}")),
                    }
                    pb.inc(1);
                }
            });
        }
        let (lat, errors) = collect(set).await?;
        let wall = started.elapsed();
        pb.finish_and_clear();
        print_errors(name, &errors, quiet);
        out.push((name, cpu.charge(watch, phase(lat, errors.len(), wall))));
    }
    Ok(out)
}

type Outcome = (Vec<Duration>, Vec<String>);

async fn enroll_phase(
    a: &LoadgenArgs,
    clients: &[EstClient],
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
    let cpu = Cpu::now(&a.watch_pid);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..a.concurrency.min(n) {
        let client = clients[w % clients.len()].clone();
        let (devices, next, pb, rec) = (devices.clone(), next.clone(), pb.clone(), rec.clone());
        let (chain, anchor, batch, reuse) =
            (chain.to_vec(), anchor.to_vec(), station_batch.clone(), a.reuse_connections);
        let servers = a.server.clone();
        set.spawn(async move {
            // Kept alive: every request of this worker on one connection.
            let client = if reuse { client.one_connection() } else { client };
            let mut out: Outcome = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((serial, token, key, csr, hello)) = devices.lock().ok().and_then(|d| {
                    d.get(i).map(|d| (d.serial.clone(), d.token.clone(), d.key.clone(), d.csr.clone(), d.hello.clone()))
                }) else {
                    return out;
                };
                let t0 = Instant::now();
                let r = match (&batch, &token) {
                    // Over coaps: a new DTLS session with the key's self-signed certificate.
                    (None, Some(_)) if hello.is_some() => {
                        let k: Arc<dyn Signer> = key.clone();
                        let id = ClientIdentity { chain: hello.clone().into_iter().collect(), key: k };
                        match CoapsClient::new(
                            &servers[i % servers.len()],
                            None,
                            std::slice::from_ref(&anchor),
                            &chain,
                            id,
                        ) {
                            Ok(c) => c.simple_enroll(&csr).await,
                            Err(e) => Err(e),
                        }
                    }
                    (Some(b), _) => client.simple_enroll_batch(&csr, b).await,
                    (None, Some(t)) => client.simple_enroll(&csr, &serial, t).await,
                    (None, None) => Err(iotpki_agent::AgentError::Usage("no token".into())),
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
    Ok(cpu.charge(&a.watch_pid, phase(lat, errors.len(), wall)))
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
    for (i, d) in devices.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter().enumerate() {
        let Some(cert) = &d.cert else { continue };
        current.push((d.serial.clone(), None, Some(cert.clone())));
        jobs.push((d.serial.clone(), renewer(a, i, d, cert, chain, anchor)?));
    }
    let fresh = make_devices(current, kt, false)?;
    let jobs: Arc<Vec<_>> = Arc::new(jobs.into_iter().zip(fresh).map(|((s, c), f)| (s, c, f.key, f.csr)).collect());
    let pb = bar(jobs.len(), "renewing", quiet);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = Cpu::now(&a.watch_pid);
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
    Ok(cpu.charge(&a.watch_pid, phase(lat, errors.len(), wall)))
}

fn report(a: &LoadgenArgs, phases: &[(&str, Phase)]) -> anyhow::Result<()> {
    let errors: usize = phases.iter().map(|(_, p)| p.errors).sum();
    let find = |name: &str| phases.iter().find(|(n, _)| *n == name).map(|(_, p)| p);
    if a.json {
        let enroll = find("enroll").context("no enroll phase")?;
        let mut v = serde_json::json!({
            "devices": a.devices,
            "concurrency": a.concurrency,
            "reuse_connections": a.reuse_connections,
            "servers": a.server.len(),
            "mode": if a.station_dir.is_some() { "station" } else { "token" },
            "enrollments_per_s": enroll.per_s,
            "p50_ms": enroll.p50_ms,
            "p90_ms": enroll.p90_ms,
            "p99_ms": enroll.p99_ms,
            "max_ms": enroll.max_ms,
            "errors": errors,
        });
        for (name, p) in phases {
            v[*name] = serde_json::to_value(p)?;
        }
        for (name, key) in [
            ("renew", "renewals_per_s"),
            ("handshake", "handshakes_per_s"),
            ("ocsp_same", "ocsp_same_per_s"),
            ("ocsp_distinct", "ocsp_distinct_per_s"),
        ] {
            if let Some(p) = find(name) {
                v[key] = serde_json::json!(p.per_s);
            }
        }
        println!("{v}");
    } else {
        println!(
            "{:<14} {:>8} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12}",
            "phase",
            "ok",
            "errors",
            "wall s",
            "per s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "cpu ms/op",
            "server cpu"
        );
        let cpu = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
        for (name, p) in phases {
            println!(
                "{:<14} {:>8} {:>7} {:>9.2} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>12} {:>12}",
                name,
                p.ok,
                p.errors,
                p.wall_s,
                p.per_s,
                p.p50_ms,
                p.p90_ms,
                p.p99_ms,
                p.max_ms,
                cpu(p.client_cpu_ms_per_op),
                cpu(p.server_cpu_ms_per_op)
            );
        }
    }
    if errors > 0 {
        bail!("{errors} request(s) failed or were answered wrongly");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ocsp_urls_are_plain_http_bases() {
        assert_eq!(ocsp_addr("http://127.0.0.1:8080/").unwrap(), "127.0.0.1:8080");
        assert!(ocsp_addr("https://127.0.0.1:8443").is_err());
        assert!(ocsp_addr("http://127.0.0.1:8080/ocsp").is_err());
        assert!(ocsp_addr("http://").is_err());
    }

    #[test]
    fn cpu_ticks_are_read_past_a_command_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let stat = "4242 (iotpki (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 9 0";
        assert_eq!(stat_ticks(stat), Some(287));
        assert_eq!(stat_ticks("4242 iotpki S 1"), None, "no parentheses: not a stat line");
        assert_eq!(stat_ticks("1 (a) S 1 2 3"), None, "too short");
    }

    #[test]
    fn this_process_has_a_cpu_count_and_an_unknown_process_has_none() {
        let c = Cpu::now(&[]);
        assert!(c.own.is_some_and(|s| s >= 0.0));
        assert!(c.watched.is_none());
        // Process ids are below 2^22 on Linux: this one cannot exist.
        assert!(Cpu::now(&[u32::MAX]).watched.is_none());
        let p = Cpu::now(&[std::process::id()])
            .charge(&[std::process::id()], phase(vec![Duration::from_millis(1)], 0, Duration::from_millis(5)));
        assert!(p.client_cpu_ms_per_op.is_some() && p.server_cpu_ms_per_op.is_some(), "{p:?}");
        assert!(p.server_switches_per_op.is_some(), "{p:?}");
        assert!(Cpu::now(&[u32::MAX]).switches.is_none());
    }

    #[test]
    fn context_switches_are_the_sum_of_voluntary_and_involuntary() {
        let status =
            "Name:\tiotpki\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t1200\nnonvoluntary_ctxt_switches:\t34\n";
        assert_eq!(status_switches(status), Some(1234));
        assert_eq!(status_switches("Name:\tiotpki\nvoluntary_ctxt_switches:\t1200\n"), None, "one of the two missing");
        // This process's threads: the test thread has switched at least once to get here.
        let spawned = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(5)));
        let during = proc_switches(std::process::id()).unwrap();
        spawned.join().unwrap();
        assert!(during >= 1);
    }
}
