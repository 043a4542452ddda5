//! `iotpki relay`; the device's commands (`iotpki agent ...`) live in `iotpki_agent::cli`.

use std::path::PathBuf;

/// `iotpki relay`.
#[derive(clap::Args, Debug)]
pub struct RelayArgs {
    /// The upstream: the authority's server (https://) or its plain-HTTP listener (http://).
    #[arg(long, value_name = "URL")]
    upstream: String,
    /// Where devices reach the relay (plain HTTP: everything it serves is signed).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8081")]
    listen: String,
    /// Where the copies are kept.
    #[arg(long, value_name = "DIR", default_value = "relay-cache")]
    cache: PathBuf,
    /// The upstream's trust anchor (root CA, PEM) when it is https://.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// How often to refresh the copies while the upstream is reachable (90s, 10m, ...).
    #[arg(long, default_value = "5m")]
    refresh: String,
}

pub fn relay(a: RelayArgs) -> anyhow::Result<()> {
    let anchors = match &a.ca_cert {
        Some(f) => vec![iotpki_core::pem::decode_one("CERTIFICATE", &crate::admin::read_flag_file("--ca-cert", f)?)?],
        None if a.upstream.starts_with("https://") => anyhow::bail!("an https:// upstream needs --ca-cert"),
        None => vec![],
    };
    let refresh = std::time::Duration::from_secs(
        crate::duration::parse_secs(&a.refresh).map_err(|e| anyhow::anyhow!("--refresh: {e}"))?,
    );
    iotpki_station::relay::prepare_cache(&a.cache)?;
    let relay = iotpki_station::relay::Relay { upstream: a.upstream.clone(), anchors, cache: a.cache.clone() };
    crate::runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", a.listen))?;
        println!(
            "relay listening on http://{} for {} (copies in {})",
            listener.local_addr()?,
            a.upstream,
            a.cache.display()
        );
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        iotpki_station::relay::serve(relay, listener, refresh, shutdown).await?;
        Ok(())
    })
}
