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
use iotpki_core::keys::KeyType;
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
    let opts = InitOptions { key_type, ..InitOptions::default() };
    iotpki_authority::init::init(&ca_dir, &opts, &pass, &SystemClock)?;
    println!("  1. authority initialised ({key_type}): root, manufacturing and operational CAs, server certificate  [{:.1?}]", t.elapsed());

    let authority = Arc::new(Authority::open(&ca_dir, &pass, Arc::new(SystemClock))?);
    let anchor_pem = iotpki_core::pem::encode("CERTIFICATE", authority.root_der());
    std::fs::write(root.join("root.pem"), &anchor_pem)?;

    let rt = crate::runtime()?;
    rt.block_on(async {
        let server = iotpki_server::Running::start(authority.clone(), "127.0.0.1:0".parse()?).await?;
        let url = server.url();
        println!("  2. EST server listening on {url} (TLS 1.3, mutual authentication for renewals)");

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
                iotpki_agent::renew(&d, None).await?;
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
            };
            match iotpki_agent::enroll(&opts).await {
                Ok(_) => bail!("a replayed token was accepted: this is a bug"),
                Err(e) => println!("  6. replaying {serial}'s token is refused: {e}"),
            }
        }
        server.stop().await?;

        let store = authority.store().clone();
        let report = tokio::task::spawn_blocking(move || store.verify_audit()).await??;
        let certs = authority.store().count_certificates()?;
        println!("  7. audit chain verified: {} entries, head {}…", report.entries, &report.head[..16]);
        println!();
        println!("  summary");
        println!("  ---------------------------------------------");
        println!("  devices enrolled        {:>8}", lat.len());
        println!("  enrollment failures     {:>8}", failures.len());
        println!("  devices renewed         {:>8}", renewed);
        println!("  certificates in store   {:>8}", certs);
        println!("  enrollment p50 / p99    {:>8.1?} / {:.1?}", pct(&lat, 0.5), pct(&lat, 0.99));
        println!("  throughput              {:>8.0} enrollments/s", lat.len() as f64 / wall.as_secs_f64());
        println!("  audit entries           {:>8}", report.entries);
        println!();
        println!("  look around:");
        println!("    iotpki cert list --dir {}", ca_dir.display());
        println!("    iotpki agent status --state {}", dev_dir.join("DEMO-00001").display());
        println!("    iotpki audit verify --dir {}", ca_dir.display());
        if !failures.is_empty() {
            bail!("{} enrollments failed", failures.len());
        }
        Ok(())
    })
}
