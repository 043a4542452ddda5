//! `iotpki-device`: the device's commands alone, in a small binary (issue #16).
//!
//! The same commands and flags as `iotpki agent ...` (one table,
//! `iotpki_agent::cli::COMMANDS`), without the authority, the server or the stores.

fn main() -> std::process::ExitCode {
    // A TPM build: the TPM Software Stack logs its own failures to stderr; ours say
    // what to do. TSS2_LOG (e.g. all+debug) brings its words back.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
    iotpki_agent::cli::main("iotpki-device", std::env::args_os().skip(1))
}
