//! The device's commands, as `iotpki agent ...` and `iotpki-device ...` both
//! offer them (feature `cli`): one set of definitions, so the two binaries take
//! the same flags and refuse with the same messages.

use std::path::PathBuf;

use iotpki_core::keys::KeyType;

use crate::argv::{Command, Flag, Kind, Matches, Parsed, Positional};
use crate::keystore::KeystoreConfig;

/// What `iotpki-device --help` (and `iotpki agent --help`) says first.
pub const ABOUT: &str = "The device side of iotpki: enroll, commission, renew and keep the\n\
device's identity; apply trust bundles, vouchers and CRLs.";

const STATE: Flag = Flag::new("state", "STATE", Kind::Path, "The device's state directory.").required();

/// Where a new device keeps its keys (`enroll`, `line`).
const KEYSTORE: &[Flag] = &[
    Flag::new(
        "keystore",
        "URI|tpm",
        Kind::Text,
        "Make the device keys in this PKCS#11 token ('pkcs11:token=LABEL'), or in a TPM 2.0\n\
         ('tpm', see --tcti; needs a build with --features tpm), instead of key files; recorded\n\
         in the identity, so renewals and commissioning use it too.",
    ),
    Flag::new("pkcs11-module", "PATH", Kind::Path, "The token vendor's PKCS#11 module (with --keystore pkcs11:...).")
        .requires("keystore"),
    Flag::new(
        "pin-file",
        "FILE",
        Kind::Path,
        "Read the token's user PIN from this file (else $IOTPKI_PIN); the path is recorded for renewals.",
    )
    .requires("keystore"),
    Flag::new(
        "tcti",
        "TCTI",
        Kind::Text,
        "How to reach the TPM (with --keystore tpm), as a TSS TCTI string: 'device:/dev/tpmrm0'\n\
         (the default, the kernel's resource manager), 'device:/dev/tpm0', 'swtpm:host=H,port=P',\n\
         'tabrmd'; recorded for renewals.",
    )
    .requires("keystore"),
];

/// The device's commands and their flags: the one definition both binaries
/// parse with (`iotpki-device` with [`crate::argv::parse`], `iotpki agent` with
/// clap definitions built from this table).
pub const COMMANDS: &[Command] = &[
    Command {
        name: "enroll",
        about: "First enrollment: make a key on the device, enroll with a one-time token.",
        flags: &[
            &[
                STATE,
                Flag::new(
                    "server",
                    "SERVER",
                    Kind::Text,
                    "The EST server, https://HOST:PORT, or coaps://HOST:PORT for EST over secure\n\
                     CoAP (DTLS 1.3; the token goes in the request's challengePassword, docs/coaps.md).",
                )
                .required(),
                Flag::new("serial", "SERIAL", Kind::Text, "The device serial number.").required(),
                Flag::new(
                    "token-file",
                    "FILE",
                    Kind::Path,
                    "Read the one-time enrollment token (`iotpki token create`) from this file\n\
                     (its first line); else it is taken from $IOTPKI_TOKEN.",
                )
                .conflicts("token"),
                Flag::new(
                    "token",
                    "TOKEN",
                    Kind::Text,
                    "The token itself, on the command line: every local user can read it in the\n\
                     process list while the agent runs. Kept for compatibility; prefer --token-file\n\
                     or $IOTPKI_TOKEN. Base64url: it may begin with `-`.",
                )
                .hyphen_values(),
                Flag::new(
                    "ca-cert",
                    "FILE",
                    Kind::Path,
                    "The trust anchor (root CA certificate, PEM), obtained out of band.",
                )
                .required(),
                Flag::new("label", "LABEL", Kind::Text, "EST label (default: the server's default)."),
                Flag::new(
                    "key-type",
                    "KEY_TYPE",
                    Kind::Text,
                    "Key type: p256, p384, ed25519, ml-dsa-44, ml-dsa-65 or ml-dsa-87 (ML-DSA: aws-lc build).",
                )
                .default("p256"),
            ],
            KEYSTORE,
        ],
        positional: None,
    },
    Command {
        name: "renew",
        about: "Renew: a new key, re-enrolled over mutual TLS with the current certificate.",
        flags: &[&[
            STATE,
            Flag::new(
                "server",
                "SERVER",
                Kind::Text,
                "Use this server instead of the one enrolled with (https:// or coaps://).",
            ),
            Flag::new(
                "pin-file",
                "FILE",
                Kind::Path,
                "The PKCS#11 token's PIN file, for a token keystore (else the one recorded at enrollment, else $IOTPKI_PIN).",
            ),
            Flag::new(
                "key-type",
                "KEY_TYPE",
                Kind::Text,
                "Renew into a key of this type (default: the current key's): p256, p384, ed25519,\n\
                 ml-dsa-44, ml-dsa-65 or ml-dsa-87. How a device moves to ML-DSA.",
            ),
        ]],
        positional: None,
    },
    Command {
        name: "commission",
        about: "Commission with the owner's server: the birth certificate (mutual TLS) gets an\n\
                operational certificate for a fresh key. Also re-commissions after the\n\
                operational certificate expired or was revoked.",
        flags: &[&[
            STATE,
            Flag::new(
                "server",
                "SERVER",
                Kind::Text,
                "The owner's EST server, https://HOST:PORT or coaps://HOST:PORT (default: the one in the state).",
            ),
            Flag::new(
                "ca-cert",
                "FILE",
                Kind::Path,
                "The owner's trust anchor (root CA certificate, PEM; default: the one in the state).",
            ),
            Flag::new("label", "LABEL", Kind::Text, "EST label (default: the server's default)."),
        ]],
        positional: None,
    },
    Command {
        name: "run",
        about: "The device daemon: renew when due (with jitter), back off while the server is\n\
                away, re-commission with the birth certificate when the certificate is lost.",
        flags: &[&[
            STATE,
            Flag::new("renew-at", "RENEW_AT", Kind::Share, "Renew when this share of the certificate's lifetime has passed.")
                .default("0.6666666666666666"),
            Flag::new(
                "jitter",
                "JITTER",
                Kind::Share,
                "Up to this share of the lifetime is added per certificate, so a fleet spreads out.",
            )
            .default("0.1"),
            Flag::new("min-backoff", "MIN_BACKOFF", Kind::Text, "First wait after a failure (90s, 5m, ...).").default("2s"),
            Flag::new("max-backoff", "MAX_BACKOFF", Kind::Text, "Longest wait after failures and between checks.")
                .default("1h"),
            Flag::switch("once", "Do what is due now (renew, re-commission) once and exit."),
            Flag::new("exit-after", "EXIT_AFTER", Kind::Count, "Exit after this many renewals or re-commissionings."),
            Flag::new(
                "fetch-from",
                "URL",
                Kind::Text,
                "Look for trust bundles, vouchers and CRLs here each round (server, http listener or\n\
                 relay; default: the server the device renews with).",
            ),
            Flag::switch("no-ocsp", "Do not ask the OCSP responder about the certificate each round."),
        ]],
        positional: None,
    },
    Command {
        name: "apply",
        about: "Apply a trust bundle, an ownership voucher or a CRL brought by any intermediary\n\
                (the kind is told from the file). Refused, with the state unchanged, unless its signatures hold.",
        flags: &[&[
            STATE,
            Flag::switch(
                "initial",
                "Install a first trust bundle (at the factory): it must carry its own threshold of signatures. \
                 Without it, a device holding no bundle takes only its owner's first: signed by the key its \
                 ownership voucher names, issued since that voucher's last entry.",
            ),
        ]],
        positional: Some(Positional { name: "FILE", help: "The file." }),
    },
    Command {
        name: "fetch",
        about: "Fetch the trust bundle, this device's voucher and its CRLs from a server or a relay, and apply them.",
        flags: &[&[
            STATE,
            Flag::new("from", "URL", Kind::Text, "Where from: https://server, http://listener or http://relay.").required(),
        ]],
        positional: None,
    },
    Command {
        name: "line",
        about: "On the factory line: wait for the station on a line link, make the key, take the birth certificate.",
        flags: &[
            &[
                Flag::new(
                    "listen",
                    "LISTEN",
                    Kind::Text,
                    "Where to listen for the station (TCP; the frames are the same on a UART).",
                )
                .required(),
                STATE,
                Flag::new("serial", "SERIAL", Kind::Text, "The device's serial number.").required(),
            ],
            KEYSTORE,
        ],
        positional: None,
    },
    Command {
        name: "tpm-ek",
        about: "Print the public key of this device's TPM endorsement key (ECC P-256, the TCG\n\
                default template), PEM: what the manufacturer registers with `batch add-ek`\n\
                (needs a build with --features tpm).",
        flags: &[&[Flag::new(
            "tcti",
            "TCTI",
            Kind::Text,
            "How to reach the TPM (TCTI: device:/dev/tpmrm0, swtpm:host=H,port=P, ...).",
        )
        .default(iotpki_tpm::DEFAULT_TCTI)]],
        positional: None,
    },
    Command {
        name: "status",
        about: "Show the identity: subject, issuer, validity, days left.",
        flags: &[&[STATE, Flag::switch("json", "Print JSON.")]],
        positional: None,
    },
    Command {
        name: "ocsp",
        about: "Ask the OCSP responder the certificate names (authorityInfoAccess) about the device's\n\
                own certificate, with a nonce, and verify the answer. Exit 0 if good; 1 if revoked or\n\
                unknown, or if no verified answer could be had (the reason is printed).",
        flags: &[&[
            STATE,
            Flag::new(
                "url",
                "URL",
                Kind::Text,
                "Ask this responder instead (http:// or https://, the full URL, e.g. a relay's).",
            ),
        ]],
        positional: None,
    },
];

/// One of the device's commands, with its arguments.
#[derive(Debug)]
pub enum AgentCmd {
    Enroll {
        state: PathBuf,
        server: String,
        serial: String,
        token_file: Option<PathBuf>,
        token: Option<String>,
        ca_cert: PathBuf,
        label: Option<String>,
        key_type: String,
        keystore: KeystoreArgs,
    },
    Renew {
        state: PathBuf,
        server: Option<String>,
        pin_file: Option<PathBuf>,
        key_type: Option<String>,
    },
    Commission {
        state: PathBuf,
        server: Option<String>,
        ca_cert: Option<PathBuf>,
        label: Option<String>,
    },
    Run {
        state: PathBuf,
        renew_at: f64,
        jitter: f64,
        min_backoff: String,
        max_backoff: String,
        once: bool,
        exit_after: Option<u32>,
        fetch_from: Option<String>,
        no_ocsp: bool,
    },
    Apply {
        state: PathBuf,
        file: PathBuf,
        initial: bool,
    },
    Fetch {
        state: PathBuf,
        from: String,
    },
    Line {
        listen: String,
        state: PathBuf,
        serial: String,
        keystore: KeystoreArgs,
    },
    TpmEk {
        tcti: String,
    },
    Status {
        state: PathBuf,
        json: bool,
    },
    Ocsp {
        state: PathBuf,
        url: Option<String>,
    },
}

/// Where a new device keeps its keys (`enroll`, `line`).
#[derive(Debug)]
pub struct KeystoreArgs {
    keystore: Option<String>,
    pkcs11_module: Option<PathBuf>,
    pin_file: Option<PathBuf>,
    tcti: Option<String>,
}

impl AgentCmd {
    /// The command a parse of [`COMMANDS`] gave. Every required flag and default is
    /// there (the parser checked): a missing one reads as empty and is refused later.
    pub fn from_matches(m: &Matches) -> AgentCmd {
        let state = || m.path("state").unwrap_or_default();
        let text = |l: &str| m.text(l).unwrap_or_default();
        let keystore = || KeystoreArgs {
            keystore: m.text("keystore"),
            pkcs11_module: m.path("pkcs11-module"),
            pin_file: m.path("pin-file"),
            tcti: m.text("tcti"),
        };
        match m.command {
            "enroll" => AgentCmd::Enroll {
                state: state(),
                server: text("server"),
                serial: text("serial"),
                token_file: m.path("token-file"),
                token: m.text("token"),
                ca_cert: m.path("ca-cert").unwrap_or_default(),
                label: m.text("label"),
                key_type: text("key-type"),
                keystore: keystore(),
            },
            "renew" => AgentCmd::Renew {
                state: state(),
                server: m.text("server"),
                pin_file: m.path("pin-file"),
                key_type: m.text("key-type"),
            },
            "commission" => AgentCmd::Commission {
                state: state(),
                server: m.text("server"),
                ca_cert: m.path("ca-cert"),
                label: m.text("label"),
            },
            "run" => AgentCmd::Run {
                state: state(),
                renew_at: m.number("renew-at").unwrap_or(2.0 / 3.0),
                jitter: m.number("jitter").unwrap_or(0.1),
                min_backoff: text("min-backoff"),
                max_backoff: text("max-backoff"),
                once: m.switch("once"),
                exit_after: m.number("exit-after"),
                fetch_from: m.text("fetch-from"),
                no_ocsp: m.switch("no-ocsp"),
            },
            "apply" => AgentCmd::Apply {
                state: state(),
                file: m.positional().unwrap_or_default(),
                initial: m.switch("initial"),
            },
            "fetch" => AgentCmd::Fetch { state: state(), from: text("from") },
            "line" => {
                AgentCmd::Line { listen: text("listen"), state: state(), serial: text("serial"), keystore: keystore() }
            }
            "tpm-ek" => AgentCmd::TpmEk { tcti: text("tcti") },
            "status" => AgentCmd::Status { state: state(), json: m.switch("json") },
            _ => AgentCmd::Ocsp { state: state(), url: m.text("url") },
        }
    }
}

/// A whole device program: parse `args` (without the program's name) against
/// [`COMMANDS`], run the command, and say how it went: help and `--version` on
/// stdout (0), a usage error on stderr (2), a refusal as `error: ...` (1).
/// `prog` names the program in help and errors.
pub fn main(prog: &str, args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    use std::process::ExitCode;
    match crate::argv::parse(prog, ABOUT, COMMANDS, args) {
        Ok(Parsed::Help(h)) => {
            print!("{h}");
            ExitCode::SUCCESS
        }
        Ok(Parsed::Version) => {
            println!("{prog} {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(2)
        }
        Ok(Parsed::Run(m)) => exit_code(run(AgentCmd::from_matches(&m))),
    }
}

/// How a command's outcome ends the process: `error: ...` on stderr and 1 for a refusal.
pub fn exit_code(r: anyhow::Result<()>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

impl KeystoreArgs {
    /// What the identity will record (`None`: key files).
    fn config(self) -> anyhow::Result<Option<KeystoreConfig>> {
        let KeystoreArgs { keystore, pkcs11_module, pin_file, tcti } = self;
        let Some(ks) = keystore else { return Ok(None) };
        if ks == "tpm" {
            if !iotpki_tpm::BUILT_WITH_TPM {
                anyhow::bail!("--keystore tpm: {}", iotpki_tpm::NOT_BUILT);
            }
            if pkcs11_module.is_some() || pin_file.is_some() {
                anyhow::bail!("--pkcs11-module and --pin-file are for a PKCS#11 keystore, not --keystore tpm");
            }
            let tcti = tcti.unwrap_or_else(|| iotpki_tpm::DEFAULT_TCTI.to_string());
            if tcti.trim().is_empty() {
                anyhow::bail!("--tcti is empty: give e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321");
            }
            return Ok(Some(KeystoreConfig::Tpm { tcti }));
        }
        if tcti.is_some() {
            anyhow::bail!("--tcti is for --keystore tpm, not a PKCS#11 token");
        }
        if !ks.starts_with("pkcs11:") {
            anyhow::bail!("--keystore {ks:?}: give a PKCS#11 token (pkcs11:token=LABEL) or 'tpm'");
        }
        pkcs11_config(&ks, pkcs11_module, pin_file)
    }
}

/// The PKCS#11 keystore `--keystore pkcs11:token=LABEL` names.
#[cfg(feature = "pkcs11")]
fn pkcs11_config(
    ks: &str,
    pkcs11_module: Option<PathBuf>,
    pin_file: Option<PathBuf>,
) -> anyhow::Result<Option<KeystoreConfig>> {
    let parsed = iotpki_hsm::Pkcs11Uri::parse(ks)?;
    let label = parsed.token_label()?;
    if parsed.object.is_some() || parsed.id.is_some() {
        anyhow::bail!("--keystore names the token only (pkcs11:token=LABEL): the agent makes and names its keys");
    }
    let module = match (pkcs11_module, &parsed.module_path) {
        (Some(m), _) => m,
        (None, Some(m)) => PathBuf::from(m),
        (None, None) => anyhow::bail!("--keystore needs --pkcs11-module PATH (the token vendor's PKCS#11 library)"),
    };
    let token = iotpki_hsm::Pkcs11Uri { token: Some(label.to_string()), ..Default::default() }.to_string();
    // Recorded as absolute paths: renewals may run from another directory.
    let module = std::path::absolute(&module)?;
    let pin_file = pin_file.map(|p| std::path::absolute(&p)).transpose()?;
    Ok(Some(KeystoreConfig::Pkcs11 { module, token, pin_file }))
}

/// Without the `pkcs11` feature: refused, saying so.
#[cfg(not(feature = "pkcs11"))]
fn pkcs11_config(_: &str, _: Option<PathBuf>, _: Option<PathBuf>) -> anyhow::Result<Option<KeystoreConfig>> {
    anyhow::bail!("--keystore pkcs11:...: {}", crate::keystore::NO_PKCS11)
}

/// The enrollment token: from `--token-file`, else `--token` (with a warning:
/// the process list shows it), else `$IOTPKI_TOKEN`.
fn enrollment_token(file: Option<&PathBuf>, flag: Option<String>, env: Option<String>) -> anyhow::Result<String> {
    if let Some(f) = file {
        let text = zeroize::Zeroizing::new(read_flag_file("--token-file", f)?);
        let t = text.lines().next().unwrap_or_default().trim().to_string();
        if t.is_empty() {
            anyhow::bail!(
                "--token-file {}: the file is empty (put the token from `iotpki token create` in it)",
                f.display()
            );
        }
        return Ok(t);
    }
    if let Some(t) = flag {
        eprintln!(
            "warning: --token puts the enrollment token in the process list, where every local user can read it; \
             use --token-file FILE or $IOTPKI_TOKEN"
        );
        return Ok(t);
    }
    match env {
        Some(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => anyhow::bail!(
            "no enrollment token: give --token-file FILE (or set IOTPKI_TOKEN) with the token from `iotpki token create`"
        ),
    }
}

/// Run one of the device's commands.
pub fn run(c: AgentCmd) -> anyhow::Result<()> {
    match c {
        AgentCmd::Enroll { state, server, serial, token_file, token, ca_cert, label, key_type, keystore } => {
            let token = enrollment_token(token_file.as_ref(), token, std::env::var("IOTPKI_TOKEN").ok())?;
            let keystore = keystore.config()?;
            let opts = crate::EnrollOptions {
                state_dir: state.clone(),
                server,
                serial,
                token,
                anchor_pem: read_flag_file("--ca-cert", &ca_cert)?,
                label,
                key_type: KeyType::from_name(&key_type)?,
                keystore,
                pin_file: None,
            };
            let id = runtime()?.block_on(crate::enroll(&opts))?;
            let st = crate::status(&state)?;
            println!(
                "enrolled {} as {} (certificate {}, valid until {})",
                id.device_serial, st.subject, st.cert_serial, st.not_after
            );
            Ok(())
        }
        AgentCmd::Renew { state, server, pin_file, key_type } => {
            match key_type {
                Some(kt) => {
                    let kt = KeyType::from_name(&kt)?;
                    runtime()?.block_on(crate::renew_into(&state, server.as_deref(), pin_file.as_deref(), kt))?
                }
                None => runtime()?.block_on(crate::renew(&state, server.as_deref(), pin_file.as_deref()))?,
            };
            let st = crate::status(&state)?;
            println!("renewed {}: certificate {}, valid until {}", st.device_serial, st.cert_serial, st.not_after);
            Ok(())
        }
        AgentCmd::Commission { state, server, ca_cert, label } => {
            let anchor = ca_cert.map(|p| read_flag_file("--ca-cert", &p)).transpose()?;
            let id = runtime()?.block_on(crate::flow::commission(
                &state,
                server.as_deref(),
                anchor.as_deref(),
                label.as_deref(),
            ))?;
            let st = crate::status(&state)?;
            println!(
                "commissioned {} with {}: certificate {} from {}, valid until {}",
                id.device_serial, id.server, st.cert_serial, st.issuer, st.not_after
            );
            Ok(())
        }
        AgentCmd::Apply { state, file, initial } => {
            let bytes = std::fs::read(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let r = crate::trust::apply(&state, &bytes, initial)?;
            println!("{}", applied_text(&r));
            Ok(())
        }
        AgentCmd::Fetch { state, from } => {
            let results = runtime()?.block_on(crate::trust::fetch_and_apply(&state, &from))?;
            let mut refused = 0;
            for (what, r) in &results {
                match r {
                    Ok(a) => println!("{what}: {}", applied_text(a)),
                    Err(e) => {
                        refused += 1;
                        println!("{what}: REFUSED: {e}");
                    }
                }
            }
            if refused > 0 {
                anyhow::bail!("{refused} of {} refused; the device's state is unchanged for those", results.len());
            }
            Ok(())
        }
        AgentCmd::Run { state, renew_at, jitter, min_backoff, max_backoff, once, exit_after, fetch_from, no_ocsp } => {
            use crate::daemon::{self, Event, Step};
            let secs = |flag: &str, v: &str| {
                parse_secs(v).map(std::time::Duration::from_secs).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
            };
            let mut opts = daemon::RunOptions::new(state);
            opts.renew_share = renew_at;
            opts.jitter_share = jitter;
            opts.min_backoff = secs("--min-backoff", &min_backoff)?;
            opts.max_backoff = secs("--max-backoff", &max_backoff)?;
            opts.once = once;
            opts.exit_after = exit_after;
            opts.check_ocsp = !no_ocsp;
            // By default the daemon looks for bundles, vouchers and CRLs where it renews,
            // when that is HTTPS: EST-coaps serves EST only (give --fetch-from for those).
            opts.fetch_from = match fetch_from {
                Some(u) => Some(u),
                None => {
                    crate::state::load(&opts.state_dir).ok().map(|id| id.server).filter(|s| !crate::flow::is_coaps(s))
                }
            };
            let stamp = || {
                iotpki_core::time::rfc3339(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0),
                )
            };
            let n = runtime()?.block_on(daemon::run(&opts, |ev| match ev {
                Event::Step(Step::NotDue { due }) => {
                    println!("{} next renewal due at {}", stamp(), iotpki_core::time::rfc3339(*due))
                }
                Event::Step(Step::Renewed(id)) => {
                    println!("{} renewed {} (renewal {})", stamp(), id.device_serial, id.renewals)
                }
                Event::Step(Step::Recommissioned(id)) => {
                    println!("{} commissioned {} with {}", stamp(), id.device_serial, id.server)
                }
                Event::Fetched { what, result: Ok(a) } => println!("{} {what}: {}", stamp(), applied_text(a)),
                Event::Fetched { what, result: Err(e) } => eprintln!("{} {what}: refused: {e}", stamp()),
                Event::Ocsp(Ok(r)) => match r.checked.status {
                    iotpki_core::ocsp::Status::Revoked { .. } => eprintln!("{} {}", stamp(), r.describe()),
                    _ => println!("{} {}", stamp(), r.describe()),
                },
                Event::Ocsp(Err(e)) => eprintln!("{} OCSP: no verified answer: {e}", stamp()),
                Event::Failed { error, retry_in } => {
                    eprintln!("{} {error}; retrying in {}s", stamp(), retry_in.as_secs())
                }
            }))?;
            println!("{} done: {n} renewal(s) or commissioning(s)", stamp());
            Ok(())
        }
        AgentCmd::Line { listen, state, serial, keystore } => runtime()?.block_on(async move {
            // The keystore is opened (the token logged in, the TPM reached) before the station is let in.
            let keystore = crate::keystore::Keystore::open(&state, keystore.config()?.as_ref(), None)?;
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            println!("line listening on {}", listener.local_addr()?);
            // One station session at a time, until one installs a birth certificate.
            loop {
                let (mut tcp, peer) = listener.accept().await?;
                match crate::line::serve_device(&mut tcp, &state, &serial, &keystore).await {
                    Ok(Some(cert)) => {
                        println!("born: {serial} holds birth certificate {cert}");
                        return Ok(());
                    }
                    Ok(None) => eprintln!("station {peer} left before installing"),
                    Err(e) => eprintln!("station {peer}: {e}"),
                }
            }
        }),
        AgentCmd::TpmEk { tcti } => {
            let tpm = iotpki_tpm::Tpm::open(&tcti)?;
            let ek = tpm.ek_public()?;
            eprintln!("EK {} of the TPM at {tcti}", iotpki_core::keys::spki_fingerprint(&ek));
            print!("{}", iotpki_core::pem::encode("PUBLIC KEY", &ek));
            Ok(())
        }
        AgentCmd::Ocsp { state, url } => {
            let report = runtime()?.block_on(crate::ocsp::check_own(&state, url.as_deref()))?;
            let Some(r) = report else {
                anyhow::bail!("the certificate names no OCSP responder (authorityInfoAccess); give one with --url")
            };
            match r.checked.status {
                iotpki_core::ocsp::Status::Good => {
                    println!("{}", r.describe());
                    Ok(())
                }
                _ => anyhow::bail!("{}", r.describe()),
            }
        }
        AgentCmd::Status { state, json } => {
            let st = crate::status(&state)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!("device serial: {}", st.device_serial);
                println!("subject:       {}", st.subject);
                println!("issuer:        {}", st.issuer);
                println!("certificate:   {}", st.cert_serial);
                println!("key:           {} ({})", st.key_type, st.keystore);
                println!("valid:         {} .. {}", st.not_before, st.not_after);
                println!("days left:     {}", st.days_left);
                println!("server:        {}", st.server);
                println!("renewals:      {}", st.renewals);
            }
            Ok(())
        }
    }
}

fn applied_text(a: &crate::trust::Applied) -> String {
    use crate::trust::Applied;
    match a {
        Applied::Bundle { version } => format!("trust bundle version {version} installed"),
        Applied::Voucher { entries, owner } => {
            format!("ownership voucher installed ({entries} entries): the owner is now key {owner}")
        }
        Applied::Crl { issuer, number, own_revoked } => format!(
            "CRL {number} of {issuer} installed{}",
            if *own_revoked {
                "; it lists this device's certificate (agent run renews or commissions again)"
            } else {
                ""
            }
        ),
        Applied::Unchanged(why) => format!("unchanged: {why}"),
    }
}

/// A flag's file, read as text; the error names the flag and the path.
pub fn read_flag_file(flag: &str, p: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))
}

/// The device's runtime: one thread (a device enrolls and renews one identity at a time).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// A duration on the command line (`90s`, `30m`, `1h`, `7d`, or plain seconds), in seconds.
pub fn parse_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (try 90s, 30m, 1h, 7d)"))?;
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| format!("{s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_secs("1h"), Ok(3600));
        assert_eq!(parse_secs("90"), Ok(90));
        assert_eq!(parse_secs("2d"), Ok(172_800));
        assert!(parse_secs("0s").is_err());
        assert!(parse_secs("h").is_err());
        assert!(parse_secs("-1m").is_err());
    }
}
