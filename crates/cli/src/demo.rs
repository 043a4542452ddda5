//! `iotpki demo`: the whole lifecycle on a throwaway authority, for a newcomer.
//!
//! Initialises an authority in a new directory, serves EST on a free loopback
//! port, enrolls a fleet of simulated devices concurrently (each with its own
//! key made in its own state directory, over real TLS 1.3), renews a few over
//! mutual TLS, shows that a replayed token is refused, verifies the audit
//! chain, and leaves everything on disk for inspection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use iotpki_authority::init::InitOptions;
use iotpki_authority::{Authority, Passphrase, SystemClock};
use iotpki_core::keys::{KeyType, Signer};
use iotpki_core::name::DeviceSerial;

/// `iotpki demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How many simulated devices to enroll.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// How many enroll at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How many of them to renew afterwards.
    #[arg(long, default_value_t = 5)]
    renew: usize,
    /// Where to put the demo (default: a new directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Key type for the authority and the devices.
    #[arg(long, default_value = "p256")]
    key_type: String,
    /// Post-quantum: the operator's root rotation moves the fleet across algorithms,
    /// to an ML-DSA-65 root (announced by bundle, the old root retired) with the
    /// devices renewing into ML-DSA-44 keys, without losing contact.
    #[arg(long)]
    pq: bool,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    if a.devices == 0 || a.concurrency == 0 {
        bail!("--devices and --concurrency must be at least 1");
    }
    let key_type = KeyType::from_name(&a.key_type)?;
    let root = match a.dir {
        Some(d) => d,
        None => {
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
            std::env::temp_dir().join(format!("iotpki-demo-{stamp}-{}", std::process::id()))
        }
    };
    if root.exists() && std::fs::read_dir(&root)?.next().is_some() {
        bail!("{} exists and is not empty; pick another --dir", root.display());
    }
    std::fs::create_dir_all(&root).with_context(|| root.display().to_string())?;
    let ca_dir = root.join("authority");
    let dev_dir = root.join("devices");

    // A random passphrase for this throwaway authority, kept next to it (mode 0600) so
    // that the commands printed at the end work. A real authority's passphrase lives elsewhere.
    let secret: String = {
        use rand::Rng;
        rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(32).map(char::from).collect()
    };
    let pass_file = root.join("passphrase");
    iotpki_authority::keyfile::write_private(&pass_file, secret.as_bytes())?;
    let pass = Passphrase::new(secret)?;

    println!("iotpki demo in {}", root.display());
    let t = Instant::now();
    // The plain-HTTP listener for CRLs and OCSP: its address goes into every certificate.
    let http_std = std::net::TcpListener::bind("127.0.0.1:0")?;
    http_std.set_nonblocking(true)?;
    let http_url = format!("http://{}", http_std.local_addr()?);
    let opts = InitOptions { key_type, public_http_url: Some(http_url.clone()), ..InitOptions::default() };
    iotpki_authority::init::init(&ca_dir, &opts, &pass, &SystemClock)?;
    println!("  1. authority initialised ({key_type}): root, manufacturing and operational CAs, server certificate  [{:.1?}]", t.elapsed());

    let authority = Arc::new(Authority::open(&ca_dir, &pass, Arc::new(SystemClock))?);
    let anchor_pem = iotpki_core::pem::encode("CERTIFICATE", authority.root_der());
    std::fs::write(root.join("root.pem"), &anchor_pem)?;

    let rt = crate::runtime()?;
    rt.block_on(async {
        let server = iotpki_server::Running::start(authority.clone(), "127.0.0.1:0".parse()?).await?;
        let url = server.url();
        let http = iotpki_server::Running::start_http_on(authority.clone(), tokio::net::TcpListener::from_std(http_std)?)?;
        println!("  2. EST server listening on {url} (TLS 1.3, mutual authentication for renewals); CRL and OCSP on {http_url}");

        // Tokens are minted by the admin before the devices arrive.
        let mut jobs = Vec::with_capacity(a.devices);
        for i in 1..=a.devices {
            let serial = DeviceSerial::parse(&format!("DEMO-{i:05}"))?;
            let token = authority.create_token(&serial, None, "admin:demo")?;
            jobs.push((serial, token));
        }
        println!("  3. {} one-time enrollment tokens created", a.devices);

        let bar = ProgressBar::new(a.devices as u64);
        bar.set_style(
            ProgressStyle::with_template("     enrolling [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        let replay = jobs.first().cloned();
        for (serial, token) in jobs {
            let permit = sem.clone().acquire_owned().await?;
            let opts = iotpki_agent::EnrollOptions {
                state_dir: dev_dir.join(serial.as_str()),
                server: url.clone(),
                serial: serial.to_string(),
                token,
                anchor_pem: anchor_pem.clone(),
                label: None,
                key_type,
                keystore: None,
                pin_file: None,
            };
            let bar = bar.clone();
            set.spawn(async move {
                let t0 = Instant::now();
                let r = iotpki_agent::enroll(&opts).await;
                drop(permit);
                bar.inc(1);
                (serial, r.map(|_| t0.elapsed()))
            });
        }
        let mut lat = Vec::new();
        let mut failures = Vec::new();
        while let Some(j) = set.join_next().await {
            match j? {
                (_, Ok(d)) => lat.push(d),
                (s, Err(e)) => failures.push(format!("{s}: {e}")),
            }
        }
        bar.finish_and_clear();
        let wall = started.elapsed();
        lat.sort();
        println!(
            "  4. {} devices enrolled in {:.2?} ({:.0}/s), {} failed",
            lat.len(),
            wall,
            lat.len() as f64 / wall.as_secs_f64(),
            failures.len()
        );
        for f in failures.iter().take(5) {
            println!("     failed: {f}");
        }

        let mut renewed = 0;
        for i in 1..=a.renew.min(a.devices) {
            let d = dev_dir.join(format!("DEMO-{i:05}"));
            if d.join("identity.json").exists() {
                iotpki_agent::renew(&d, None, None).await?;
                renewed += 1;
            }
        }
        println!("  5. {renewed} devices renewed with a fresh key over mutual TLS");

        if let Some((serial, token)) = replay {
            let opts = iotpki_agent::EnrollOptions {
                state_dir: root.join("replay-attempt"),
                server: url.clone(),
                serial: serial.to_string(),
                token,
                anchor_pem: anchor_pem.clone(),
                label: None,
                key_type,
                keystore: None,
                pin_file: None,
            };
            match iotpki_agent::enroll(&opts).await {
                Ok(_) => bail!("a replayed token was accepted: this is a bug"),
                Err(e) => println!("  6. replaying {serial}'s token is refused: {e}"),
            }
        }
        let line = factory_line(&authority, &root, &url, key_type).await?;
        let field = field_life(&authority, &root, &pass, key_type, a.pq).await?;
        server.stop().await?;
        http.stop().await?;

        let store = authority.store().clone();
        let report = tokio::task::spawn_blocking(move || store.verify_audit()).await??;
        let certs = authority.store().count_certificates()?;
        println!(" 10. audit chain verified: {} entries, head {}…", report.entries, &report.head[..16]);
        println!();
        println!("  summary");
        println!("  ---------------------------------------------");
        println!("  devices enrolled        {:>8}", lat.len());
        println!("  enrollment failures     {:>8}", failures.len());
        println!("  devices renewed         {:>8}", renewed);
        println!("  certificates in store   {:>8}", certs);
        println!("  enrollment p50 / p99    {:>8.1?} / {:.1?}", pct(&lat, 0.5), pct(&lat, 0.99));
        println!("  throughput              {:>8.0} enrollments/s", lat.len() as f64 / wall.as_secs_f64());
        println!("  births on the line      {:>8} online, {} offline (synced)", line.online_born, line.offline_born);
        println!(
            "  refused at the quota    {:>8} ({} online in DEMO-LINE, step 7; {} offline in DEMO-OFF, step 8)",
            line.refused_online + line.refused_offline,
            line.refused_online,
            line.refused_offline
        );
        println!("  commissioned by owner   {:>8} (of {} claimed)", field.commissioned, field.claimed);
        println!("  audit entries           {:>8}", report.entries);
        println!();
        println!("  look around:");
        println!("    iotpki cert list --dir {}", ca_dir.display());
        println!("    iotpki agent status --state {}", dev_dir.join("DEMO-00001").display());
        println!("    iotpki batch show --dir {} DEMO-LINE", ca_dir.display());
        println!("    iotpki audit verify --dir {}", ca_dir.display());
        println!("  see the fleet in a browser (the console, docs/console.md):");
        let (ca, pf) = (ca_dir.display(), pass_file.display());
        println!("    iotpki admin add you --dir {ca} --passphrase-file {pf} --out {}", root.join("you").display());
        println!("    iotpki serve --dir {ca} --passphrase-file {pf} &");
        println!("    iotpki admin console-link --dir {ca} --admin you     # open the link it prints");
        if !failures.is_empty() {
            bail!("{} enrollments failed", failures.len());
        }
        Ok(())
    })
}

/// What the field-life part of the demo did.
struct Field {
    claimed: u64,
    commissioned: usize,
}

/// Field life: an operator with its own authority trusts the demo factory's
/// manufacturing CA, claims the devices born on its line (online and
/// offline), and they commission with it over mutual TLS with their birth
/// certificates; the daemon renews one; a revoked device is refused.
async fn field_life(
    mfg: &Arc<Authority>,
    root: &std::path::Path,
    pass: &Passphrase,
    key_type: KeyType,
    pq: bool,
) -> anyhow::Result<Field> {
    use iotpki_agent::daemon;
    use iotpki_authority::commission;
    use iotpki_authority::revocation::{self, Target};
    let op_dir = root.join("operator");
    let http_std = std::net::TcpListener::bind("127.0.0.1:0")?;
    http_std.set_nonblocking(true)?;
    let http_url = format!("http://{}", http_std.local_addr()?);
    let opts = InitOptions {
        key_type,
        organization: "demo operator".into(),
        public_http_url: Some(http_url.clone()),
        // Partitioned CRLs: each device fetches only its own shard.
        crl_shards: Some(16),
        ..InitOptions::default()
    };
    iotpki_authority::init::init(&op_dir, &opts, pass, &SystemClock)?;
    let op = Arc::new(Authority::open(&op_dir, pass, Arc::new(SystemClock))?);
    let server = iotpki_server::Running::start(op.clone(), "127.0.0.1:0".parse()?).await?;
    let http = iotpki_server::Running::start_http_on(op.clone(), tokio::net::TcpListener::from_std(http_std)?)?;
    let op_root = iotpki_core::pem::encode("CERTIFICATE", op.root_der());
    let mfg_ca = std::fs::read_to_string(
        mfg.config()
            .ca
            .iter()
            .find(|c| c.name == "manufacturing")
            .map(|c| mfg_dir_file(mfg, &c.cert))
            .context("no manufacturing CA")?,
    )?;
    let store = op.store().clone();
    commission::add_manufacturer(store.as_ref(), &SystemClock, Some("demo factory"), &mfg_ca, "admin:demo")?;
    let mut born = Vec::new();
    for sub in ["line", "offline"] {
        for e in std::fs::read_dir(root.join(sub))?.flatten() {
            if e.path().join("identity.json").exists() {
                born.push(e.path());
            }
        }
    }
    born.sort();
    // The factory's births file for the devices sold: each bound to its birth certificate.
    let serials: Vec<String> =
        born.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
    let claims = mfg.export_births(Some(&serials))?;
    let (_, claimed) = commission::claim_devices(store.as_ref(), &SystemClock, &claims, "admin:demo")?;
    let mut commissioned = 0;
    for d in &born {
        iotpki_agent::flow::commission(d, Some(&server.url()), Some(&op_root), None).await?;
        commissioned += 1;
    }
    println!(
        "  9. operator authority ({}) trusts the factory's manufacturing CA, claimed {claimed} devices: {commissioned} commissioned with their birth certificates (online and offline births)",
        server.url()
    );
    let first = born.first().context("no device was born")?;
    let mut o = daemon::RunOptions::new(first.clone());
    o.renew_share = 1e-7;
    o.jitter_share = 0.0;
    o.once = true;
    daemon::run(&o, |_| {}).await?;
    let serial = iotpki_agent::state::load(first)?.device_serial;
    let sn = DeviceSerial::parse(&serial)?;
    revocation::revoke(store.as_ref(), &SystemClock, Target::Device(&sn), 1, "admin:demo")?;
    match daemon::step(&o).await {
        Ok(_) => bail!("a revoked device renewed: this is a bug"),
        Err(e) => println!("     {serial} renewed by its daemon, then revoked by its owner: {e}"),
    }
    // The device learns it from the CRL shard its certificate names (16 shards).
    let fetched = iotpki_agent::trust::fetch_and_apply(first, &http_url).await?;
    match fetched.iter().find(|(p, _)| p.starts_with("/crl/")) {
        Some((path, Ok(iotpki_agent::trust::Applied::Crl { own_revoked: true, number, .. }))) => {
            println!("     it fetched its CRL shard {path} (CRL number {number}): its own certificate is listed")
        }
        other => bail!("the revoked device did not find itself on its CRL shard: {other:?}"),
    }
    let keys = trust_updates(&op, &born[1..], root, &http_url_of(&http)).await?;
    let server = rotate_root(&op_dir, pass, server, op, &born[1..], &keys, pq).await?;
    server.stop().await?;
    http.stop().await?;
    Ok(Field { claimed, commissioned })
}

fn http_url_of(r: &iotpki_server::Running) -> String {
    format!("http://{}", r.addr)
}

/// Trust updates through an untrusted relay: the devices hold bundle 1 (put in
/// at the factory); the owner publishes bundle 2 (2 of 3 signer keys); a relay
/// that fetched it while online serves it to the devices after its upstream
/// is gone; then a tampered copy on the relay is refused by every device.
async fn trust_updates(
    op: &Arc<Authority>,
    devices: &[PathBuf],
    root: &std::path::Path,
    upstream: &str,
) -> anyhow::Result<Vec<iotpki_core::keys::SoftKey>> {
    let keys: Vec<iotpki_core::keys::SoftKey> =
        (0..3).map(|_| iotpki_core::keys::SoftKey::generate(KeyType::EcdsaP256)).collect::<Result<_, _>>()?;
    let anchors = vec![op.root_der().to_vec()];
    let make = |version: u64| demo_bundle(&keys, version, anchors.clone());
    let (b1, b2) = (make(1)?, make(2)?);
    let store = op.store().clone();
    iotpki_authority::trust::publish_bundle(store.as_ref(), &SystemClock, &b1, "admin:demo")?;
    for d in devices {
        iotpki_agent::trust::apply(d, &b1, true)?;
    }
    iotpki_authority::trust::publish_bundle(store.as_ref(), &SystemClock, &b2, "admin:demo")?;
    let cache = root.join("relay-cache");
    let relay = iotpki_station::relay::Relay { upstream: upstream.into(), anchors: vec![], cache: cache.clone() };
    relay.refresh().await;
    // The relay is cut off from its upstream now, and serves its copy.
    let offline = iotpki_station::relay::Relay { upstream: "http://127.0.0.1:9".into(), anchors: vec![], cache };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let relay_url = format!("http://{}", l.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(iotpki_station::relay::serve(offline.clone(), l, Duration::from_secs(3600), async {
        let _ = stopped.await;
    }));
    let mut updated = 0;
    for d in devices {
        for (_, r) in iotpki_agent::trust::fetch_and_apply(d, &relay_url).await? {
            if matches!(r, Ok(iotpki_agent::trust::Applied::Bundle { version: 2 })) {
                updated += 1;
            }
        }
    }
    let mut tampered = b2.clone();
    if let Some(last) = tampered.last_mut() {
        *last ^= 1;
    }
    std::fs::write(offline.cache_file("/.well-known/iotpki/bundle"), &tampered)?;
    let mut refused = 0;
    for d in devices {
        for (path, r) in iotpki_agent::trust::fetch_and_apply(d, &relay_url).await? {
            if path.ends_with("/bundle") && r.is_err() {
                refused += 1;
            }
        }
    }
    let _ = stop.send(());
    serving.await??;
    println!(
        "     trust bundle 2 (2 of 3 signers) reached {updated} devices through an offline relay; a tampered copy on the relay was refused by {refused}"
    );
    Ok(keys)
}

/// A trust bundle of `version` naming `anchors`, signed by two of the three `keys`.
fn demo_bundle(keys: &[iotpki_core::keys::SoftKey], version: u64, anchors: Vec<Vec<u8>>) -> anyhow::Result<Vec<u8>> {
    use iotpki_core::bundle::{Bundle, BundleContent, UnsignedBundle};
    let now = iotpki_authority::Clock::now(&SystemClock);
    let content = BundleContent {
        version,
        issued_at: now,
        expires_at: now + 365 * 86_400,
        anchors,
        servers: vec!["127.0.0.1".into()],
        threshold: 2,
        signers: keys.iter().map(|k| k.public_key_der().to_vec()).collect(),
    };
    let mut b = Bundle::decode(&UnsignedBundle::new(content)?.encode())?;
    b.add_signature(&keys[0])?;
    b.add_signature(&keys[version as usize % 2 + 1])?;
    Ok(b.encode())
}

/// A root rotation: a new root, announced by bundle 3 (both roots), the server
/// switched to it, every device renewed under it, bundle 4 (the new root only),
/// the old root retired, and every device renewed again: none loses contact.
/// With `pq`, across algorithms: an ML-DSA-65 root, and the devices renew
/// into ML-DSA-44 keys (then authenticate with them over TLS 1.3).
async fn rotate_root(
    op_dir: &std::path::Path,
    pass: &Passphrase,
    server: iotpki_server::Running,
    op: Arc<Authority>,
    devices: &[PathBuf],
    keys: &[iotpki_core::keys::SoftKey],
    pq: bool,
) -> anyhow::Result<iotpki_server::Running> {
    use iotpki_authority::{rotation, trust};
    let addr = server.addr;
    let url = server.url();
    let r1 = op.root_der().to_vec();
    let old_type = iotpki_core::profile::cert_info(&r1)
        .ok()
        .and_then(|i| KeyType::of_spki(&i.cert.tbs_certificate.subject_public_key_info).ok());
    let (root_type, device_type) = if pq { (Some(KeyType::MlDsa65), Some(KeyType::MlDsa44)) } else { (None, None) };
    // With --pq the issuing CAs and the server move to ML-DSA-65 keys too: nothing P-256 signs after.
    let opts = rotation::RotateOptions { key_type: root_type, new_issuing_keys: pq };
    let rotated = rotation::rotate_with(op_dir, pass, &SystemClock, "admin:demo", &opts)?;
    let r2 = iotpki_core::pem::decode_one("CERTIFICATE", &std::fs::read_to_string(&rotated.root_cert)?)?;
    let store = op.store().clone();
    trust::publish_bundle(store.as_ref(), &SystemClock, &demo_bundle(keys, 3, vec![r1, r2.clone()])?, "admin:demo")?;
    for d in devices {
        iotpki_agent::trust::fetch_and_apply(d, &url).await?;
    }
    server.stop().await?;
    drop(op);
    let op = Arc::new(Authority::open(op_dir, pass, Arc::new(SystemClock))?);
    let server = iotpki_server::Running::start(op.clone(), addr).await?;
    let mut moved = 0;
    for d in devices {
        let id = match device_type {
            Some(kt) => iotpki_agent::renew_into(d, None, None, kt).await?,
            None => iotpki_agent::renew(d, None, None).await?,
        };
        if iotpki_core::pem::decode_one("CERTIFICATE", &id.anchor_pem)? == r2 {
            moved += 1;
        }
    }
    trust::publish_bundle(store.as_ref(), &SystemClock, &demo_bundle(keys, 4, vec![r2])?, "admin:demo")?;
    for d in devices {
        iotpki_agent::trust::fetch_and_apply(d, &url).await?;
    }
    rotation::retire(op_dir, &SystemClock, "admin:demo")?;
    server.stop().await?;
    drop(op);
    let op = Arc::new(Authority::open(op_dir, pass, Arc::new(SystemClock))?);
    let server = iotpki_server::Running::start(op, addr).await?;
    let mut pq_keys = 0;
    for d in devices {
        let id = iotpki_agent::renew(d, None, None).await?;
        let key = iotpki_agent::status(d)?.key_type;
        if device_type.is_some_and(|kt| kt.to_string() == key) && !id.cert_pem.is_empty() {
            pq_keys += 1;
        }
    }
    match (root_type, device_type) {
        (Some(rt), Some(dt)) => println!(
            "     post-quantum move: {} ({rt}, replacing a {} root) announced by bundle, issuing CAs succeeded by {rt} keys ({}), {moved} of {} devices renewed under it into {dt} keys, the old root retired; {pq_keys} renewed again over TLS 1.3 with their {dt} certificates",
            rotated.root,
            old_type.map(|k| k.to_string()).unwrap_or_else(|| "classical".into()),
            rotated.successors.iter().map(|(o, n)| format!("{o} → {n}")).collect::<Vec<_>>().join(", "),
            devices.len()
        ),
        _ => println!(
            "     root rotation: {} announced by bundle, {moved} of {} devices renewed under it, the old root retired; all renewed again",
            rotated.root,
            devices.len()
        ),
    }
    Ok(server)
}

fn mfg_dir_file(a: &Authority, p: &std::path::Path) -> PathBuf {
    iotpki_authority::keyfile::resolve(a.dir(), p)
}

/// What the factory-line part of the demo did.
struct Line {
    online_born: usize,
    offline_born: u64,
    /// Devices of DEMO-LINE the authority refused at the batch quota (step 7).
    refused_online: usize,
    /// Devices of DEMO-OFF the offline station refused at its delegated quota (step 8).
    refused_offline: usize,
}

/// The factory line: a batch born online through a station (its quota holds),
/// then a batch born offline with the station's delegated CA and synced.
async fn factory_line(
    authority: &Arc<Authority>,
    root: &std::path::Path,
    url: &str,
    key_type: KeyType,
) -> anyhow::Result<Line> {
    use iotpki_authority::factory::{create_batch, NewBatch};
    use iotpki_station::factory::{self, RunOptions, Station};
    let store = authority.store().clone();
    let clock = authority.clock().clone();
    let now = clock.now();
    let mk = |id: &str, n: usize, quota: u64| {
        let allowlist = (1..=n).map(|i| format!("{id}-{i:03}")).collect::<Vec<_>>().join("\n");
        NewBatch::open(id, "demo widget", allowlist, quota, (now - 60, now + 30 * 86_400))
    };
    create_batch(store.as_ref(), clock.as_ref(), mk("DEMO-LINE", 20, 16), "admin:demo")?;
    create_batch(store.as_ref(), clock.as_ref(), mk("DEMO-OFF", 10, 8), "admin:demo")?;
    let st_dir = root.join("station");
    let key = factory::new_station_key(&st_dir, key_type)?;
    let batches = ["DEMO-LINE".to_string(), "DEMO-OFF".to_string()];
    let (cert, chain) = authority.add_station("demo-line-1", &batches, key.public_key_der(), "admin:demo")?;
    factory::store_station(&st_dir, "demo-line-1", url, &cert, &chain, authority.root_der())?;

    let station = Arc::new(Station::open(&st_dir, None)?);
    let opts = RunOptions { batch: "DEMO-LINE".into(), parallel: 4, log: st_dir.join("production.jsonl"), key_type };
    let duts = factory::simulated(&station, "DEMO-LINE", 20, &root.join("line")).await?;
    let out = factory::run(station, &opts, duts, |_| {}).await?;
    let online_born = out.iter().filter(|p| p.result == "born").count();
    let refused = out.iter().filter(|p| p.result == "refused").count();
    println!("  7. factory station: {online_born} devices born online in batch DEMO-LINE, {refused} refused at its quota of 16");

    let sub = iotpki_station::offline::new_delegate_key(&st_dir, "DEMO-OFF", key_type)?;
    let d = authority.delegate_station("demo-line-1", "DEMO-OFF", sub.public_key_der(), "admin:demo")?;
    iotpki_station::offline::store_delegation(
        &st_dir,
        &iotpki_core::wire::Delegation {
            batch: "DEMO-OFF".into(),
            organization: authority.config().organization.clone(),
            quota: d.batch.quota - d.batch.issued,
            valid_from: d.batch.valid_from,
            valid_until: d.batch.valid_until,
            allowlist: d.allowlist,
            cert_pem: iotpki_core::pem::encode("CERTIFICATE", &d.cert),
            chain_pem: d.chain.iter().map(|c| iotpki_core::pem::encode("CERTIFICATE", c)).collect(),
            crl_url: d.crl_url.clone(),
        },
    )?;
    let offline = Arc::new(Station::open_offline(&st_dir, "DEMO-OFF")?);
    let opts = RunOptions { batch: "DEMO-OFF".into(), ..opts };
    let duts = factory::simulated(&offline, "DEMO-OFF", 10, &root.join("offline")).await?;
    let out = factory::run(offline, &opts, duts, |_| {}).await?;
    let local = out.iter().filter(|p| p.result == "born").count();
    let refused_offline = out.iter().filter(|p| p.result == "refused").count();
    let online = Station::open(&st_dir, None)?;
    let (synced, flagged) = online.sync(&st_dir, "DEMO-OFF").await?;
    println!(
        "  8. offline line: {local} devices born with the station's delegated CA, {refused_offline} refused at its quota of 8; production record synced: {synced} births, {} flagged",
        flagged.len()
    );
    Ok(Line { online_born, offline_born: synced, refused_online: refused, refused_offline })
}
