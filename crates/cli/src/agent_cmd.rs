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
        /// The one-time enrollment token (`iotpki token create`). Base64url: it may begin with `-`.
        #[arg(long, env = "IOTPKI_TOKEN", hide_env_values = true, allow_hyphen_values = true)]
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
    },
    /// Renew: a new key, re-enrolled over mutual TLS with the current certificate.
    Renew {
        /// The device's state directory.
        #[arg(long)]
        state: PathBuf,
        /// Use this server instead of the one enrolled with.
        #[arg(long)]
        server: Option<String>,
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
        AgentCmd::Enroll { state, server, serial, token, ca_cert, label, key_type } => {
            let opts = iotpki_agent::EnrollOptions {
                state_dir: state.clone(),
                server,
                serial,
                token,
                anchor_pem: crate::admin::read_flag_file("--ca-cert", &ca_cert)?,
                label,
                key_type: KeyType::from_name(&key_type)?,
            };
            let id = crate::runtime()?.block_on(iotpki_agent::enroll(&opts))?;
            let st = iotpki_agent::status(&state)?;
            println!(
                "enrolled {} as {} (certificate {}, valid until {})",
                id.device_serial, st.subject, st.cert_serial, st.not_after
            );
            Ok(())
        }
        AgentCmd::Renew { state, server } => {
            crate::runtime()?.block_on(iotpki_agent::renew(&state, server.as_deref()))?;
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
                println!("key:           {}", st.key_type);
                println!("valid:         {} .. {}", st.not_before, st.not_after);
                println!("days left:     {}", st.days_left);
                println!("server:        {}", st.server);
                println!("renewals:      {}", st.renewals);
            }
            Ok(())
        }
    }
}
