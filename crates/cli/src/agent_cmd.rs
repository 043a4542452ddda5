//! `iotpki relay`, and `iotpki agent ...`: clap definitions built from the device's
//! one table of commands (`iotpki_agent::cli::COMMANDS`, which `iotpki-device`
//! parses without clap).

use std::ffi::OsString;
use std::path::PathBuf;

use iotpki_agent::argv::{Command, Kind, Matches};
use iotpki_agent::cli::{AgentCmd, COMMANDS};

/// `iotpki agent ...`: one of the device's commands.
#[derive(Debug)]
pub struct AgentArgs(pub AgentCmd);

impl clap::FromArgMatches for AgentArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let missing = || clap::Error::new(clap::error::ErrorKind::MissingSubcommand);
        let (name, sub) = m.subcommand().ok_or_else(missing)?;
        let cmd = COMMANDS.iter().find(|c| c.name == name).ok_or_else(missing)?;
        let mut out = Matches::new(cmd.name);
        for f in cmd.all_flags() {
            if f.kind == Kind::Switch {
                if sub.get_flag(f.long) {
                    out.set(f.long, OsString::new());
                }
            } else if let Some(v) = sub.get_raw(f.long).and_then(|mut v| v.next()) {
                out.set(f.long, v.to_os_string());
            }
        }
        if let Some(v) = cmd.positional.and_then(|p| sub.get_raw(p.name)).and_then(|mut v| v.next()) {
            out.set_positional(v.to_os_string());
        }
        Ok(AgentArgs(AgentCmd::from_matches(&out)))
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Subcommand for AgentArgs {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        COMMANDS.iter().fold(cmd.subcommand_required(true), |cmd, c| cmd.subcommand(clap_command(c)))
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        COMMANDS.iter().any(|c| c.name == name)
    }
}

/// One of the device's commands as clap defines it.
fn clap_command(c: &'static Command) -> clap::Command {
    let mut cmd = clap::Command::new(c.name).about(c.summary()).long_about(c.about);
    for f in c.all_flags() {
        let mut a = clap::Arg::new(f.long).long(f.long).help(f.help).required(f.required);
        a = match f.kind {
            Kind::Switch => a.action(clap::ArgAction::SetTrue),
            Kind::Text => a.value_parser(clap::value_parser!(String)),
            Kind::Path => a.value_parser(clap::value_parser!(PathBuf)),
            Kind::Share => a.value_parser(clap::value_parser!(f64)),
            Kind::Count => a.value_parser(clap::value_parser!(u32)),
        };
        if f.kind != Kind::Switch {
            a = a.value_name(f.value_name).allow_hyphen_values(f.hyphen_values);
        }
        if let Some(d) = f.default {
            a = a.default_value(d);
        }
        if let Some(r) = f.requires {
            a = a.requires(r);
        }
        if let Some(x) = f.conflicts {
            a = a.conflicts_with(x);
        }
        cmd = cmd.arg(a);
    }
    if let Some(p) = c.positional {
        cmd = cmd.arg(
            clap::Arg::new(p.name)
                .value_name(p.name)
                .help(p.help)
                .required(true)
                .value_parser(clap::value_parser!(PathBuf)),
        );
    }
    cmd
}

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

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use iotpki_agent::argv::{parse, Parsed};

    /// `iotpki agent` (clap) and `iotpki-device` (argv) read the one table alike:
    /// what one runs the other runs to the same command, and what one refuses the
    /// other refuses with the same first line.
    #[test]
    fn clap_and_the_device_parser_agree() {
        let base = ["enroll", "--state", "s", "--server", "u", "--serial", "D", "--ca-cert", "r"];
        let with = |extra: &[&'static str]| -> Vec<&'static str> { base.iter().chain(extra).copied().collect() };
        let lines: Vec<Vec<&str>> = vec![
            base.to_vec(),
            with(&["--token", "-abc", "--label", "l", "--key-type", "p384"]),
            with(&["--keystore", "tpm", "--tcti", "swtpm:port=1"]),
            with(&["--keystore", "pkcs11:token=t", "--pin-file", "p", "--pkcs11-module", "m.so"]),
            vec!["renew", "--state", "s", "--server", "https://x", "--pin-file", "p"],
            vec!["commission", "--state", "s", "--ca-cert", "c", "--label", "l"],
            vec![
                "run",
                "--state",
                "s",
                "--once",
                "--no-ocsp",
                "--exit-after",
                "2",
                "--renew-at",
                "0.5",
                "--jitter",
                "0",
            ],
            vec!["run", "--state=s", "--min-backoff=5s", "--fetch-from", "http://r"],
            vec!["apply", "--state", "s", "--initial", "f.cbor"],
            vec!["fetch", "--state", "s", "--from", "http://r"],
            vec!["line", "--listen", "127.0.0.1:0", "--state", "s", "--serial", "D"],
            vec!["tpm-ek"],
            vec!["status", "--state", "s", "--json"],
            vec!["ocsp", "--state", "s", "--url", "http://o"],
            // Refused:
            vec!["frob"],
            with(&["--bogus"]),
            with(&["extra"]),
            with(&["--state", "t"]),
            with(&["--token", "t", "--token-file", "f"]),
            with(&["--token-file", "f", "--token", "t"]),
            with(&["--pin-file", "p"]),
            with(&["--tcti", "x"]),
            vec!["enroll", "--state", "s"],
            vec!["enroll", "--state", "--server", "u", "--serial", "D", "--ca-cert", "r"],
            vec!["run", "--state", "s", "--jitter", "x"],
            vec!["run", "--state", "s", "--exit-after", "x"],
            vec!["run", "--state", "s", "--exit-after", "-1"],
            vec!["apply", "--state", "s"],
            vec!["apply", "--state", "s", "a", "b"],
            vec!["fetch", "--state", "s"],
        ];
        for a in &lines {
            let ours = parse("iotpki agent", "", iotpki_agent::cli::COMMANDS, a.iter().map(|s| s.into()));
            let theirs = crate::Cli::try_parse_from(["iotpki", "agent"].iter().chain(a));
            match (ours, theirs) {
                (Ok(Parsed::Run(m)), Ok(cli)) => {
                    let crate::Cmd::Agent(c) = cli.cmd else { panic!("{a:?}: not the agent") };
                    let ours = iotpki_agent::cli::AgentCmd::from_matches(&m);
                    assert_eq!(format!("{ours:?}"), format!("{:?}", c.0), "{a:?}");
                }
                (Err(e), Err(c)) => {
                    let c = c.to_string();
                    assert_eq!(e.0.lines().next(), c.lines().next(), "{a:?}:\n{e}\n--- clap:\n{c}");
                    assert_eq!(e.0.lines().nth(1), c.lines().nth(1), "{a:?}:\n{e}\n--- clap:\n{c}");
                }
                (ours, theirs) => panic!("{a:?}: argv {ours:?}, clap {theirs:?}"),
            }
        }
    }
}
