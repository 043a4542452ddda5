//! `iotpki-device`: the device's commands alone, in a small binary (issue #16).
//!
//! The same commands and flags as `iotpki agent ...` (one definition,
//! `iotpki_agent::cli`), without the authority, the server or the stores.

use clap::Parser;

/// The device side of iotpki: enroll, commission, renew and keep the
/// device's identity; apply trust bundles, vouchers and CRLs.
#[derive(Parser, Debug)]
#[command(name = "iotpki-device", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: iotpki_agent::cli::AgentCmd,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A TPM build: the TPM Software Stack logs its own failures to stderr; ours say
    // what to do. TSS2_LOG (e.g. all+debug) brings its words back.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
    match iotpki_agent::cli::run(cli.cmd) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
