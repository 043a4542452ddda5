//! Durations on the command line: `90s`, `30m`, `1h`, `7d`, or plain seconds.

/// Parse a duration into seconds (the device's commands parse them the same way).
pub use iotpki_agent::cli::parse_secs;
