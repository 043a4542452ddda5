//! `iotpki`: one binary, a subcommand per job. Arguments are parsed first
//! (no I/O), then each command wires the library crates together.

#![forbid(unsafe_code)]

mod admin;
mod admin_cmd;
mod agent_cmd;
mod bundle_cmd;
mod demo;
mod duration;
mod factory_cmd;
mod key_cmd;
mod loadgen;
mod matter_cmd;
mod owner_cmd;
mod server_cert;
mod template_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the server allocates and frees many small
/// buffers per request (DER, TLS records, rows) across threads (BENCHMARKS.md, issue #14).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// iotpki: device identities for IoT fleets.
#[derive(Parser, Debug)]
#[command(name = "iotpki", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a new authority (root, manufacturing and operational CAs, server certificate, store).
    Init(admin::InitArgs),
    /// Serve EST over TLS 1.3.
    Serve(admin::ServeArgs),
    /// One-time enrollment tokens.
    #[command(subcommand)]
    Token(admin::TokenCmd),
    /// Certificate templates: list, show, check a file (docs/templates.md).
    #[command(subcommand)]
    Template(template_cmd::TemplateCmd),
    /// The key registry: blocked (compromised) keys, and whose a key is.
    #[command(subcommand)]
    Key(key_cmd::KeyCmd),
    /// Firmware images: find leaked private keys, name their devices, revoke and block them.
    #[command(subcommand)]
    Firmware(key_cmd::FirmwareCmd),
    /// Certificates in the store.
    #[command(subcommand)]
    Cert(admin::CertCmd),
    /// Revoke a certificate or every certificate of a device (RFC 5280 reasons).
    Revoke(admin::RevokeArgs),
    /// Manufacturers whose birth certificates this authority trusts.
    #[command(subcommand)]
    Trust(owner_cmd::TrustCmd),
    /// The authority's CAs: root rotation.
    #[command(subcommand)]
    Ca(owner_cmd::CaCmd),
    /// Devices this authority owns.
    #[command(subcommand)]
    Device(owner_cmd::DeviceCmd),
    /// Admins of the admin API (mutual TLS with an admin certificate), and a client for it.
    #[command(subcommand)]
    Admin(admin_cmd::AdminCmd),
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(admin::AuditCmd),
    /// The device side: enroll, renew, status.
    #[command(subcommand)]
    Agent(agent_cmd::AgentArgs),
    /// Production batches: serial allowlists, quotas, windows.
    #[command(subcommand)]
    Batch(factory_cmd::BatchCmd),
    /// Matter device attestation: the PAA and PAIs, and a checker for DAC, PAI and PAA certificates.
    #[command(subcommand)]
    Matter(matter_cmd::MatterCmd),
    /// Factory stations.
    #[command(subcommand)]
    Station(factory_cmd::StationCmd),
    /// The factory line: give birth to devices on a station.
    #[command(subcommand)]
    Factory(factory_cmd::FactoryCmd),
    /// Enroll (and renew) many simulated devices against a server; throughput and latency percentiles.
    Loadgen(loadgen::LoadgenArgs),
    /// Trust bundles: create, sign (threshold of keys), show, verify.
    #[command(subcommand)]
    Bundle(bundle_cmd::BundleCmd),
    /// Ownership vouchers: show, verify.
    #[command(subcommand)]
    Voucher(bundle_cmd::VoucherCmd),
    /// The authority's CA keys in a PKCS#11 token.
    #[command(subcommand)]
    Hsm(admin::HsmCmd),
    /// A cache of trust bundles, vouchers and CRLs for devices on a network without internet.
    Relay(agent_cmd::RelayArgs),
    /// A whole lifecycle on a throwaway authority: init, serve, enroll a fleet, renew, verify.
    Demo(demo::DemoArgs),
    /// The shared PostgreSQL database.
    #[command(subcommand)]
    Db(admin::DbCmd),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) for iotpki.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages, iotpki.1 and one per subcommand (iotpki-serve.1, ...), into a directory.
    Man {
        /// The directory (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Options every admin command shares.
#[derive(Args, Debug, Clone)]
pub struct DirArg {
    /// The authority's directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Keep the state in this PostgreSQL database (`postgres://USER[:PASSWORD]@HOST:PORT/DATABASE`)
    /// instead of the one the config names; several nodes may share it. Default: the config's store.
    #[arg(long, value_name = "URL", env = "IOTPKI_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
}

impl DirArg {
    /// The authority's config, with `--database` applied.
    pub fn config(&self) -> anyhow::Result<iotpki_authority::config::Config> {
        let mut cfg = iotpki_authority::config::Config::load(&self.dir)?;
        if let Some(url) = &self.database {
            cfg.set_database(url)?;
        }
        Ok(cfg)
    }

    /// The authority's store (no keys needed).
    pub fn store(&self) -> anyhow::Result<std::sync::Arc<dyn iotpki_store::Store>> {
        Ok(iotpki_authority::open_store(&self.dir, &self.config()?)?)
    }

    /// The authority, its keys unlocked with the secrets `pass` names.
    pub fn authority(&self, pass: &PassArg) -> anyhow::Result<iotpki_authority::Authority> {
        let clock = std::sync::Arc::new(iotpki_authority::SystemClock);
        let (p, pin) = (pass.passphrase()?, pass.pin()?);
        Ok(iotpki_authority::Authority::open_with(&self.dir, self.config()?, &p, pin.as_ref(), clock)?)
    }
}

/// Where the secrets come from: a file, else the environment. Never an argument.
#[derive(Args, Debug, Clone)]
pub struct PassArg {
    /// Read the key passphrase from this file (else from $IOTPKI_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Read the HSM token's user PIN from this file (else from $IOTPKI_PIN), when the CA keys are in a PKCS#11 token.
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
}

impl PassArg {
    /// The passphrase.
    pub fn passphrase(&self) -> anyhow::Result<iotpki_authority::Passphrase> {
        Ok(iotpki_authority::Passphrase::from_file_or_env(self.passphrase_file.as_deref())?)
    }

    /// The PIN from --pin-file, if given (else the authority reads $IOTPKI_PIN when it needs one).
    pub fn pin(&self) -> anyhow::Result<Option<iotpki_authority::Pin>> {
        Ok(self.pin_file.as_deref().map(|p| iotpki_authority::Pin::from_file_or_env(Some(p))).transpose()?)
    }
}

fn init_tracing(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { fmt.json().flatten_event(true).try_init() } else { fmt.try_init() };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The TPM Software Stack logs its own failures to stderr; ours say what to do.
    // TSS2_LOG (e.g. all+debug) and RUST_LOG=tss_esapi=debug bring its words back.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
    let json_log = matches!(&cli.cmd, Cmd::Serve(a) if a.log_format == admin::LogFormat::Json);
    init_tracing(
        if matches!(cli.cmd, Cmd::Serve(_) | Cmd::Relay(_)) { "info,tss_esapi=off" } else { "warn,tss_esapi=off" },
        json_log,
    );
    let result = match cli.cmd {
        Cmd::Init(a) => admin::init(a),
        Cmd::Serve(a) => admin::serve(a),
        Cmd::Token(c) => admin::token(c),
        Cmd::Template(c) => template_cmd::run(c),
        Cmd::Cert(c) => admin::cert(c),
        Cmd::Audit(c) => admin::audit(c),
        Cmd::Admin(c) => admin_cmd::run(c),
        Cmd::Revoke(a) => admin::revoke(a),
        Cmd::Key(c) => key_cmd::key(c),
        Cmd::Firmware(c) => key_cmd::firmware(c),
        Cmd::Trust(c) => owner_cmd::trust(c),
        Cmd::Ca(c) => owner_cmd::ca(c),
        Cmd::Loadgen(a) => loadgen::run(a),
        Cmd::Relay(a) => agent_cmd::relay(a),
        Cmd::Device(c) => owner_cmd::device(c),
        Cmd::Agent(c) => iotpki_agent::cli::run(c.0),
        Cmd::Batch(c) => factory_cmd::batch(c),
        Cmd::Matter(c) => matter_cmd::run(c),
        Cmd::Station(c) => factory_cmd::station(c),
        Cmd::Factory(c) => factory_cmd::factory(c),
        Cmd::Bundle(c) => bundle_cmd::run(c),
        Cmd::Voucher(c) => bundle_cmd::voucher(c),
        Cmd::Hsm(c) => admin::hsm(c),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Db(c) => admin::db(c),
        Cmd::Completions { shell } => {
            // Into memory first: clap_complete panics on a write error (a closed pipe).
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "iotpki", &mut buf);
            std::io::Write::write_all(&mut std::io::stdout(), &buf).map_err(anyhow::Error::from)
        }
        Cmd::Man { out } => man(&out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The man pages, from the same clap definitions as `--help`.
fn man(out: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), out)
        .with_context(|| format!("cannot write the man pages into {}", out.display()))?;
    println!("man pages written to {}", out.display());
    Ok(())
}

/// A multi-threaded tokio runtime for the commands that do network I/O.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Blocking threads per core of `serve`'s runtime on SQLite.
const BLOCKING_THREADS_PER_CORE: usize = 16;

/// `serve`'s runtime: one worker per core it may run on (tokio follows the affinity
/// mask, so a server pinned to one core has one worker). On SQLite (`sqlite`), at most
/// [`BLOCKING_THREADS_PER_CORE`] blocking threads per core instead of tokio's 512: each
/// request's store and signing work runs on a blocking thread, and that work is CPU on
/// this machine; with 64 requests in flight on one core, 64 threads time-sliced each
/// other (10 context switches per kept-alive birth). Fewer threads cut the switches;
/// too few cap how many births one group commit (one fsync) takes, since a thread
/// waits out its commit. 16, with the blocking threads a little below the workers in
/// the scheduler (iotpki_server's `sched`), is faster than 8 in every mode; at equal
/// priority, 12, 16 or 32 helped kept-alive births and cost the new connections'
/// handshakes (BENCHMARKS.md, issue #14). Requests beyond the cap wait in tokio's queue, not
/// on a thread; when the cap is reached, a station's birth queues its record for the store's
/// group commit instead of holding its thread through it (iotpki_server's `sched`). On
/// PostgreSQL the blocking threads mostly wait on round trips to the database, and a cap
/// cost 18% of the births per second: there tokio's default stays, at the workers' priority,
/// and a station's births always queue their records (1.09 the births per second of two
/// nodes on one core, BENCHMARKS.md).
pub fn server_runtime(sqlite: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(cores);
    if sqlite {
        b.max_blocking_threads(BLOCKING_THREADS_PER_CORE * cores);
        iotpki_server::set_blocking_threads(BLOCKING_THREADS_PER_CORE * cores);
        iotpki_server::lower_blocking_threads();
    } else {
        iotpki_server::queue_station_births();
    }
    Ok(b.enable_all().build()?)
}
