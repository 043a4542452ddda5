//! The device's commands, as `iotpki agent ...` and `iotpki-device ...` both
//! offer them (feature `cli`): one set of definitions, so the two binaries take
//! the same flags and refuse with the same messages.

use std::path::PathBuf;

use clap::Subcommand;
use iotpki_core::keys::KeyType;

use crate::keystore::KeystoreConfig;

/// The device's commands (`iotpki agent ...`, `iotpki-device ...`).
#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// First enrollment: make a key on the device, enroll with a one-time token.
    Enroll {
        /// The device's state directory.
        #[arg(long)]
        state: PathBuf,
        /// The EST server, https://HOST:PORT, or coaps://HOST:PORT for EST over secure
        /// CoAP (DTLS 1.3; the token goes in the request's challengePassword, docs/coaps.md).
        #[arg(long)]
        server: String,
        /// The device serial number.
        #[arg(long)]
        serial: String,
        /// Read the one-time enrollment token (`iotpki token create`) from this file
        /// (its first line); else it is taken from $IOTPKI_TOKEN.
        #[arg(long, value_name = "FILE", conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// The token itself, on the command line: every local user can read it in the
        /// process list while the agent runs. Kept for compatibility; prefer --token-file
        /// or $IOTPKI_TOKEN. Base64url: it may begin with `-`.
        #[arg(long, allow_hyphen_values = true)]
        token: Option<String>,
        /// The trust anchor (root CA certificate, PEM), obtained out of band.
        #[arg(long, value_name = "FILE")]
        ca_cert: PathBuf,
        /// EST label (default: the server's default).
        #[arg(long)]
        label: Option<String>,
        /// Key type: p256, p384, ed25519, ml-dsa-44, ml-dsa-65 or ml-dsa-87 (ML-DSA: aws-lc build).
        #[arg(long, default_value = "p256")]
        key_type: String,
        #[command(flatten)]
        keystore: KeystoreArgs,
    },
    /// Renew: a new key, re-enrolled over mutual TLS with the current certificate.
    Renew {
        /// The device's state directory.
        #[arg(long)]
        state: PathBuf,
        /// Use this server instead of the one enrolled with (https:// or coaps://).
        #[arg(long)]
        server: Option<String>,
        /// The PKCS#11 token's PIN file, for a token keystore (else the one recorded at enrollment, else $IOTPKI_PIN).
        #[arg(long, value_name = "FILE")]
        pin_file: Option<PathBuf>,
        /// Renew into a key of this type (default: the current key's): p256, p384, ed25519,
        /// ml-dsa-44, ml-dsa-65 or ml-dsa-87. How a device moves to ML-DSA.
        #[arg(long)]
        key_type: Option<String>,
    },
    /// Commission with the owner's server: the birth certificate (mutual TLS) gets an
    /// operational certificate for a fresh key. Also re-commissions after the
    /// operational certificate expired or was revoked.
    Commission {
        /// The device's state directory.
        #[arg(long)]
        state: PathBuf,
        /// The owner's EST server, https://HOST:PORT or coaps://HOST:PORT (default: the one in the state).
        #[arg(long)]
        server: Option<String>,
        /// The owner's trust anchor (root CA certificate, PEM; default: the one in the state).
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<PathBuf>,
        /// EST label (default: the server's default).
        #[arg(long)]
        label: Option<String>,
    },
    /// The device daemon: renew when due (with jitter), back off while the server is
    /// away, re-commission with the birth certificate when the certificate is lost.
    Run {
        /// The device's state directory.
        #[arg(long)]
        state: PathBuf,
        /// Renew when this share of the certificate's lifetime has passed.
        #[arg(long, default_value_t = 2.0 / 3.0)]
        renew_at: f64,
        /// Up to this share of the lifetime is added per certificate, so a fleet spreads out.
        #[arg(long, default_value_t = 0.1)]
        jitter: f64,
        /// First wait after a failure (90s, 5m, ...).
        #[arg(long, default_value = "2s")]
        min_backoff: String,
        /// Longest wait after failures and between checks.
        #[arg(long, default_value = "1h")]
        max_backoff: String,
        /// Do what is due now (renew, re-commission) once and exit.
        #[arg(long)]
        once: bool,
        /// Exit after this many renewals or re-commissionings.
        #[arg(long)]
        exit_after: Option<u32>,
        /// Look for trust bundles, vouchers and CRLs here each round (server, http listener or
        /// relay; default: the server the device renews with).
        #[arg(long, value_name = "URL")]
        fetch_from: Option<String>,
        /// Do not ask the OCSP responder about the certificate each round.
        #[arg(long)]
        no_ocsp: bool,
    },
    /// Apply a trust bundle, an ownership voucher or a CRL brought by any intermediary
    /// (the kind is told from the file). Refused, with the state unchanged, unless its signatures hold.
    Apply {
        /// The device's state directory.
        #[arg(long)]
        state: PathBuf,
        /// The file.
        file: PathBuf,
        /// Install a first trust bundle (at the factory): it must carry its own threshold of signatures.
        #[arg(long)]
        initial: bool,
    },
    /// Fetch the trust bundle, this device's voucher and its CRLs from a server or a relay, and apply them.
    Fetch {
        /// The device's state directory.
        #[arg(long)]
        state: PathBuf,
        /// Where from: https://server, http://listener or http://relay.
        #[arg(long, value_name = "URL")]
        from: String,
    },
    /// On the factory line: wait for the station on a line link, make the key, take the birth certificate.
    Line {
        /// Where to listen for the station (TCP; the frames are the same on a UART).
        #[arg(long)]
        listen: String,
        /// The device's state directory.
        #[arg(long)]
        state: PathBuf,
        /// The device's serial number.
        #[arg(long)]
        serial: String,
        #[command(flatten)]
        keystore: KeystoreArgs,
    },
    /// Print the public key of this device's TPM endorsement key (ECC P-256, the TCG
    /// default template), PEM: what the manufacturer registers with `batch add-ek`
    /// (needs a build with --features tpm).
    TpmEk {
        /// How to reach the TPM (TCTI: device:/dev/tpmrm0, swtpm:host=H,port=P, ...).
        #[arg(long, value_name = "TCTI", default_value = iotpki_tpm::DEFAULT_TCTI)]
        tcti: String,
    },
    /// Show the identity: subject, issuer, validity, days left.
    Status {
        /// The device's state directory.
        #[arg(long)]
        state: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the OCSP responder the certificate names (authorityInfoAccess) about the device's
    /// own certificate, with a nonce, and verify the answer. Exit 0 if good; 1 if revoked or
    /// unknown, or if no verified answer could be had (the reason is printed).
    Ocsp {
        /// The device's state directory.
        #[arg(long)]
        state: PathBuf,
        /// Ask this responder instead (http:// or https://, the full URL, e.g. a relay's).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

/// Where a new device keeps its keys (`agent enroll`, `agent line`).
#[derive(clap::Args, Debug)]
pub struct KeystoreArgs {
    /// Make the device keys in this PKCS#11 token ('pkcs11:token=LABEL'), or in a TPM 2.0
    /// ('tpm', see --tcti; needs a build with --features tpm), instead of key files; recorded
    /// in the identity, so renewals and commissioning use it too.
    #[arg(long, value_name = "URI|tpm")]
    keystore: Option<String>,
    /// The token vendor's PKCS#11 module (with --keystore pkcs11:...).
    #[arg(long, value_name = "PATH", requires = "keystore")]
    pkcs11_module: Option<PathBuf>,
    /// Read the token's user PIN from this file (else $IOTPKI_PIN); the path is recorded for renewals.
    #[arg(long, value_name = "FILE", requires = "keystore")]
    pin_file: Option<PathBuf>,
    /// How to reach the TPM (with --keystore tpm), as a TSS TCTI string: 'device:/dev/tpmrm0'
    /// (the default, the kernel's resource manager), 'device:/dev/tpm0', 'swtpm:host=H,port=P',
    /// 'tabrmd'; recorded for renewals.
    #[arg(long, value_name = "TCTI", requires = "keystore")]
    tcti: Option<String>,
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
            if *own_revoked { "; it lists this device's certificate: commission again" } else { "" }
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
