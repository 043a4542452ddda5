//! `iotpki agent ...`: the device side.

use std::path::PathBuf;

use clap::Subcommand;
use iotpki_core::keys::KeyType;

/// `iotpki agent ...`.
#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// First enrollment: make a key on the device, enroll with a one-time token.
    Enroll {
        /// The device's state directory.
        #[arg(long)]
        state: PathBuf,
        /// The EST server, https://HOST:PORT.
        #[arg(long)]
        server: String,
        /// The device serial number.
        #[arg(long)]
        serial: String,
        /// The one-time enrollment token (`iotpki token create`).
        #[arg(long, env = "IOTPKI_TOKEN", hide_env_values = true)]
        token: String,
        /// The trust anchor (root CA certificate, PEM), obtained out of band.
        #[arg(long, value_name = "FILE")]
        ca_cert: PathBuf,
        /// EST label (default: the server's default).
        #[arg(long)]
        label: Option<String>,
        /// Key type: p256, p384 or ed25519.
        #[arg(long, default_value = "p256")]
        key_type: String,
        /// Make the device keys in this PKCS#11 token ('pkcs11:token=LABEL') instead of key files;
        /// recorded in the identity, so renewals use it too.
        #[arg(long, value_name = "URI")]
        keystore: Option<String>,
        /// The token vendor's PKCS#11 module (with --keystore).
        #[arg(long, value_name = "PATH", requires = "keystore")]
        pkcs11_module: Option<PathBuf>,
        /// Read the token's user PIN from this file (else $IOTPKI_PIN); the path is recorded for renewals.
        #[arg(long, value_name = "FILE", requires = "keystore")]
        pin_file: Option<PathBuf>,
    },
    /// Renew: a new key, re-enrolled over mutual TLS with the current certificate.
    Renew {
        /// The device's state directory.
        #[arg(long)]
        state: PathBuf,
        /// Use this server instead of the one enrolled with.
        #[arg(long)]
        server: Option<String>,
        /// The PKCS#11 token's PIN file, for a token keystore (else the one recorded at enrollment, else $IOTPKI_PIN).
        #[arg(long, value_name = "FILE")]
        pin_file: Option<PathBuf>,
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
}

pub fn run(c: AgentCmd) -> anyhow::Result<()> {
    match c {
        AgentCmd::Enroll {
            state,
            server,
            serial,
            token,
            ca_cert,
            label,
            key_type,
            keystore,
            pkcs11_module,
            pin_file,
        } => {
            let keystore = match keystore {
                Some(uri) => {
                    let parsed = iotpki_hsm::Pkcs11Uri::parse(&uri)?;
                    let label = parsed.token_label()?;
                    if parsed.object.is_some() || parsed.id.is_some() {
                        anyhow::bail!(
                            "--keystore names the token only (pkcs11:token=LABEL): the agent makes and names its keys"
                        );
                    }
                    let module = match (pkcs11_module, &parsed.module_path) {
                        (Some(m), _) => m,
                        (None, Some(m)) => PathBuf::from(m),
                        (None, None) => {
                            anyhow::bail!("--keystore needs --pkcs11-module PATH (the token vendor's PKCS#11 library)")
                        }
                    };
                    let token =
                        iotpki_hsm::Pkcs11Uri { token: Some(label.to_string()), ..Default::default() }.to_string();
                    // Recorded as absolute paths: renewals may run from another directory.
                    let module = std::path::absolute(&module)?;
                    let pin_file = pin_file.map(|p| std::path::absolute(&p)).transpose()?;
                    Some(iotpki_agent::keystore::KeystoreConfig::Pkcs11 { module, token, pin_file })
                }
                None => None,
            };
            let opts = iotpki_agent::EnrollOptions {
                state_dir: state.clone(),
                server,
                serial,
                token,
                anchor_pem: crate::admin::read_flag_file("--ca-cert", &ca_cert)?,
                label,
                key_type: KeyType::from_name(&key_type)?,
                keystore,
                pin_file: None,
            };
            let id = crate::runtime()?.block_on(iotpki_agent::enroll(&opts))?;
            let st = iotpki_agent::status(&state)?;
            println!(
                "enrolled {} as {} (certificate {}, valid until {})",
                id.device_serial, st.subject, st.cert_serial, st.not_after
            );
            Ok(())
        }
        AgentCmd::Renew { state, server, pin_file } => {
            crate::runtime()?.block_on(iotpki_agent::renew(&state, server.as_deref(), pin_file.as_deref()))?;
            let st = iotpki_agent::status(&state)?;
            println!("renewed {}: certificate {}, valid until {}", st.device_serial, st.cert_serial, st.not_after);
            Ok(())
        }
        AgentCmd::Line { listen, state, serial } => crate::runtime()?.block_on(async move {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            println!("line listening on {}", listener.local_addr()?);
            // One station session at a time, until one installs a birth certificate.
            loop {
                let (mut tcp, peer) = listener.accept().await?;
                match iotpki_agent::line::serve_device(&mut tcp, &state, &serial).await {
                    Ok(Some(cert)) => {
                        println!("born: {serial} holds birth certificate {cert}");
                        return Ok(());
                    }
                    Ok(None) => eprintln!("station {peer} left before installing"),
                    Err(e) => eprintln!("station {peer}: {e}"),
                }
            }
        }),
        AgentCmd::Status { state, json } => {
            let st = iotpki_agent::status(&state)?;
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
