//! The device's command line, parsed over one table (feature `cli`).
//!
//! [`crate::cli::COMMANDS`] describes every command and flag once. `iotpki-device`
//! parses its arguments with [`parse`] below (about 150 KB smaller than clap,
//! BENCHMARKS.md "The device binary"); the `iotpki` binary builds its clap
//! definitions of `iotpki agent ...` from the same table, so both take the same
//! flags, and a usage error's first line is the same from both.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;

/// How a flag's value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A switch: present or not, no value.
    Switch,
    /// Text (UTF-8).
    Text,
    /// A path (any bytes the OS allows).
    Path,
    /// A decimal number (`f64`).
    Share,
    /// A count (`u32`).
    Count,
}

/// One `--flag` of a command.
#[derive(Clone, Copy, Debug)]
pub struct Flag {
    /// The long name, without `--`.
    pub long: &'static str,
    /// The value's placeholder in help (`FILE`, `URL`); unused for a switch.
    pub value_name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub required: bool,
    /// The value when the flag is absent.
    pub default: Option<&'static str>,
    /// A flag this one needs beside it.
    pub requires: Option<&'static str>,
    /// A flag this one cannot be given with.
    pub conflicts: Option<&'static str>,
    /// The value may begin with `-` (a base64url token).
    pub hyphen_values: bool,
}

impl Flag {
    /// A flag taking a value of `kind`, optional, without a default.
    pub const fn new(long: &'static str, value_name: &'static str, kind: Kind, help: &'static str) -> Flag {
        Flag {
            long,
            value_name,
            kind,
            help,
            required: false,
            default: None,
            requires: None,
            conflicts: None,
            hyphen_values: false,
        }
    }
    /// A switch.
    pub const fn switch(long: &'static str, help: &'static str) -> Flag {
        Flag::new(long, "", Kind::Switch, help)
    }
    pub const fn required(self) -> Flag {
        Flag { required: true, ..self }
    }
    pub const fn default(self, v: &'static str) -> Flag {
        Flag { default: Some(v), ..self }
    }
    pub const fn requires(self, other: &'static str) -> Flag {
        Flag { requires: Some(other), ..self }
    }
    pub const fn conflicts(self, other: &'static str) -> Flag {
        Flag { conflicts: Some(other), ..self }
    }
    pub const fn hyphen_values(self) -> Flag {
        Flag { hyphen_values: true, ..self }
    }
    /// `--long <VALUE>` (or `--long` for a switch), as help and errors show it.
    pub fn spec(&self) -> String {
        match self.kind {
            Kind::Switch => format!("--{}", self.long),
            _ => format!("--{} <{}>", self.long, self.value_name),
        }
    }
}

/// A required positional argument.
#[derive(Clone, Copy, Debug)]
pub struct Positional {
    pub name: &'static str,
    pub help: &'static str,
}

/// One command: its name, its help, its flags (in groups, so that a group such
/// as the keystore's is written once) and at most one positional argument.
#[derive(Clone, Copy, Debug)]
pub struct Command {
    pub name: &'static str,
    /// The first line is the summary in the list of commands.
    pub about: &'static str,
    pub flags: &'static [&'static [Flag]],
    pub positional: Option<Positional>,
}

impl Command {
    /// Every flag of the command, in order.
    pub fn all_flags(&self) -> impl Iterator<Item = &'static Flag> {
        self.flags.iter().flat_map(|g| g.iter())
    }
    fn flag(&self, long: &str) -> Option<&'static Flag> {
        self.all_flags().find(|f| f.long == long)
    }
    /// The summary: the first line of the help.
    pub fn summary(&self) -> &'static str {
        self.about.lines().next().unwrap_or_default()
    }
}

/// The values a command line gave (defaults filled in), by flag name.
#[derive(Debug)]
pub struct Matches {
    pub command: &'static str,
    values: Vec<(&'static str, OsString)>,
    positional: Option<OsString>,
}

impl Matches {
    /// An empty set for `command`: the `iotpki` binary fills it from clap's matches.
    pub fn new(command: &'static str) -> Matches {
        Matches { command, values: Vec::new(), positional: None }
    }
    /// Record `--long`'s value (a switch's is empty).
    pub fn set(&mut self, long: &'static str, value: OsString) {
        self.values.push((long, value));
    }
    pub fn set_positional(&mut self, value: OsString) {
        self.positional = Some(value);
    }
    fn raw(&self, long: &str) -> Option<&OsString> {
        self.values.iter().find(|(n, _)| *n == long).map(|(_, v)| v)
    }
    /// A switch's presence.
    pub fn switch(&self, long: &str) -> bool {
        self.raw(long).is_some()
    }
    pub fn path(&self, long: &str) -> Option<std::path::PathBuf> {
        self.raw(long).map(std::path::PathBuf::from)
    }
    /// A text value (checked UTF-8 when parsed).
    pub fn text(&self, long: &str) -> Option<String> {
        self.raw(long).map(|v| v.to_string_lossy().into_owned())
    }
    /// A number's value (checked when parsed).
    pub fn number<T: std::str::FromStr>(&self, long: &str) -> Option<T> {
        self.raw(long).and_then(|v| v.to_str()).and_then(|s| s.parse().ok())
    }
    pub fn positional(&self) -> Option<std::path::PathBuf> {
        self.positional.as_ref().map(std::path::PathBuf::from)
    }
}

/// What a command line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run(Matches),
    /// Help was asked for: print this on stdout, exit 0.
    Help(String),
    /// `--version`.
    Version,
}

/// A usage error: the message (its first line is what clap would say), then the
/// usage and a pointer to --help; exit status 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parse `args` (without the program's name) against `commands`. `prog` is how
/// the program is called in help and errors ("iotpki-device").
pub fn parse(
    prog: &str,
    about: &str,
    commands: &'static [Command],
    args: impl IntoIterator<Item = OsString>,
) -> Result<Parsed, UsageError> {
    let mut args = args.into_iter();
    // No command: the list of them, on stderr (exit 2), as clap does.
    let Some(first) = args.next() else { return Err(UsageError(top_help(prog, about, commands))) };
    let name = first.to_string_lossy();
    match name.as_ref() {
        "-h" | "--help" => return Ok(Parsed::Help(top_help(prog, about, commands))),
        "-V" | "--version" => return Ok(Parsed::Version),
        "help" => {
            return match args.next() {
                None => Ok(Parsed::Help(top_help(prog, about, commands))),
                Some(c) => match commands.iter().find(|cmd| OsStr::new(cmd.name) == c) {
                    Some(cmd) => Ok(Parsed::Help(command_help(prog, cmd))),
                    None => Err(usage_error(
                        &format!("error: unrecognized subcommand '{}'", c.to_string_lossy()),
                        &format!("Usage: {prog} <COMMAND>"),
                    )),
                },
            };
        }
        _ => {}
    }
    let Some(cmd) = commands.iter().find(|c| c.name == name) else {
        return Err(usage_error(
            &format!("error: unrecognized subcommand '{name}'"),
            &format!("Usage: {prog} <COMMAND>"),
        ));
    };
    parse_command(prog, cmd, args)
}

fn usage_error(message: &str, usage: &str) -> UsageError {
    UsageError(format!("{message}\n\n{usage}\n\nFor more information, try '--help'.\n"))
}

fn parse_command(
    prog: &str,
    cmd: &'static Command,
    args: impl Iterator<Item = OsString>,
) -> Result<Parsed, UsageError> {
    let usage = format!("Usage: {}", usage_line(prog, cmd));
    let error = |message: String| usage_error(&format!("error: {message}"), &usage);
    let fail = |message: String| Err(error(message));
    let mut m = Matches::new(cmd.name);
    let mut args = args.peekable();
    let mut only_positional = false;
    while let Some(arg) = args.next() {
        let text = arg.to_str();
        let is_flag = !only_positional && text.is_some_and(|t| t.starts_with('-') && t.len() > 1);
        if !is_flag {
            if cmd.positional.is_none() || m.positional.is_some() {
                return fail(format!("unexpected argument '{}' found", arg.to_string_lossy()));
            }
            m.positional = Some(arg);
            continue;
        }
        let t = text.unwrap_or_default();
        if t == "--" {
            only_positional = true;
            continue;
        }
        if t == "-h" || t == "--help" {
            return Ok(Parsed::Help(command_help(prog, cmd)));
        }
        let Some(body) = t.strip_prefix("--") else {
            return fail(format!("unexpected argument '{t}' found"));
        };
        let (long, inline) = match body.split_once('=') {
            Some((l, v)) => (l, Some(OsString::from(v))),
            None => (body, None),
        };
        let Some(flag) = cmd.flag(long) else {
            return fail(format!("unexpected argument '--{long}' found"));
        };
        if m.raw(flag.long).is_some() {
            return fail(format!("the argument '{}' cannot be used multiple times", flag.spec()));
        }
        let value = if flag.kind == Kind::Switch {
            if inline.is_some() {
                return fail(format!("unexpected value for '{}': it takes none", flag.spec()));
            }
            OsString::new()
        } else if let Some(v) = inline {
            v
        } else {
            // What looks like a flag is not taken as a value (unless the flag's values may
            // begin with '-'): a known one means the value is missing, an unknown one is
            // refused as itself on the next round, as clap does.
            let looks_like_flag =
                |v: &OsString| v.to_str().is_some_and(|s| s.starts_with('-') && s.len() > 1) && !flag.hyphen_values;
            match args.next_if(|v| !looks_like_flag(v)) {
                Some(v) => v,
                None if args.peek().is_some_and(|next| !is_known(cmd, next)) => continue,
                None => return fail(format!("a value is required for '{}' but none was supplied", flag.spec())),
            }
        };
        check_value(flag, &value).map_err(error)?;
        m.set(flag.long, value);
    }
    // What the command line gave, before the defaults are filled in: --requires and
    // --conflicts look at what was given.
    let given = |f: &Flag| m.raw(f.long).is_some();
    // A conflict is named from the flag given first, as clap names it.
    for f in m.values.iter().filter_map(|(long, _)| cmd.flag(long)) {
        let clash = |o: &&Flag| given(o) && (f.conflicts == Some(o.long) || o.conflicts == Some(f.long));
        if let Some(other) = cmd.all_flags().find(clash) {
            return fail(format!("the argument '{}' cannot be used with '{}'", f.spec(), other.spec()));
        }
    }
    for f in cmd.all_flags().filter(|f| given(f)) {
        if let Some(other) = f.requires.and_then(|o| cmd.flag(o)).filter(|o| !given(o)) {
            return fail(format!("the following required arguments were not provided:\n  {}", other.spec()));
        }
    }
    let missing: Vec<String> = cmd.all_flags().filter(|f| f.required && !given(f)).map(Flag::spec).collect();
    if !missing.is_empty() {
        return fail(format!("the following required arguments were not provided:\n  {}", missing.join("\n  ")));
    }
    let defaults: Vec<_> = cmd.all_flags().filter(|f| !given(f)).filter_map(|f| Some((f.long, f.default?))).collect();
    for (long, d) in defaults {
        m.set(long, OsString::from(d));
    }
    if let (Some(p), None) = (cmd.positional, &m.positional) {
        return fail(format!("the following required arguments were not provided:\n  <{}>", p.name));
    }
    Ok(Parsed::Run(m))
}

/// `--long`, `--long=...`, `--`, `-h` or `--help` of `cmd`.
fn is_known(cmd: &Command, arg: &OsStr) -> bool {
    let Some(t) = arg.to_str() else { return false };
    if matches!(t, "--" | "-h" | "--help") {
        return true;
    }
    t.strip_prefix("--").is_some_and(|b| cmd.flag(b.split_once('=').map_or(b, |(l, _)| l)).is_some())
}

/// A value of the flag's kind, or why not.
fn check_value(flag: &Flag, v: &OsStr) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("invalid value '{}' for '{}': {why}", v.to_string_lossy(), flag.spec()));
    match flag.kind {
        Kind::Switch | Kind::Path => Ok(()),
        Kind::Text => match v.to_str() {
            Some(_) => Ok(()),
            None => invalid("invalid UTF-8"),
        },
        // The parse errors' own words, as clap gives them.
        Kind::Share => match v.to_str().map(str::parse::<f64>) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => invalid(&e.to_string()),
            None => invalid("invalid UTF-8"),
        },
        Kind::Count => match v.to_str().map(str::parse::<u32>) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => invalid(&e.to_string()),
            None => invalid("invalid UTF-8"),
        },
    }
}

fn usage_line(prog: &str, cmd: &Command) -> String {
    let mut s = format!("{prog} {}", cmd.name);
    if cmd.all_flags().any(|f| !f.required) {
        s.push_str(" [OPTIONS]");
    }
    for f in cmd.all_flags().filter(|f| f.required) {
        let _ = write!(s, " {}", f.spec());
    }
    if let Some(p) = cmd.positional {
        let _ = write!(s, " <{}>", p.name);
    }
    s
}

/// Rows of two columns: the spec, then the help (its first line beside the
/// spec, the rest under it).
fn two_columns(out: &mut String, rows: &[(String, String)]) {
    let width = rows.iter().map(|(a, _)| a.len()).max().unwrap_or(0);
    for (spec, help) in rows {
        let mut lines = help.lines();
        let _ = writeln!(out, "  {spec:width$}  {}", lines.next().unwrap_or_default());
        for l in lines {
            let _ = writeln!(out, "  {:width$}  {l}", "");
        }
    }
}

fn top_help(prog: &str, about: &str, commands: &[Command]) -> String {
    let mut out = format!("{about}\n\nUsage: {prog} <COMMAND>\n\nCommands:\n");
    let rows: Vec<_> = commands.iter().map(|c| (c.name.to_string(), c.summary().to_string())).collect();
    two_columns(&mut out, &rows);
    out.push_str("\nOptions:\n");
    two_columns(
        &mut out,
        &[("-h, --help".into(), "Print help".into()), ("-V, --version".into(), "Print version".into())],
    );
    let _ = write!(out, "\n'{prog} <COMMAND> --help' shows a command's flags.\n");
    out
}

/// A command's help: what it does, its usage, its flags with their defaults.
pub fn command_help(prog: &str, cmd: &Command) -> String {
    let mut out = format!("{}\n\nUsage: {}\n", cmd.about, usage_line(prog, cmd));
    if let Some(p) = cmd.positional {
        out.push_str("\nArguments:\n");
        two_columns(&mut out, &[(format!("<{}>", p.name), p.help.to_string())]);
    }
    out.push_str("\nOptions:\n");
    let mut rows: Vec<_> = cmd
        .all_flags()
        .map(|f| {
            let mut help = f.help.to_string();
            if let Some(d) = f.default {
                let _ = write!(help, " [default: {d}]");
            }
            (f.spec(), help)
        })
        .collect();
    rows.push(("-h, --help".into(), "Print help".into()));
    two_columns(&mut out, &rows);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::COMMANDS;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    fn run(a: &[&str]) -> Matches {
        match parse("dev", "about", COMMANDS, args(a)) {
            Ok(Parsed::Run(m)) => m,
            other => panic!("{a:?}: {other:?}"),
        }
    }

    fn refused(a: &[&str]) -> String {
        match parse("dev", "about", COMMANDS, args(a)) {
            Err(UsageError(e)) => e,
            other => panic!("{a:?} was not refused: {other:?}"),
        }
    }

    /// The table is whole: names unique per command, every --requires and
    /// --conflicts names a flag of the same command, every default is of its kind.
    #[test]
    fn the_table_is_consistent() {
        for c in COMMANDS {
            assert_eq!(COMMANDS.iter().filter(|o| o.name == c.name).count(), 1, "{}", c.name);
            for f in c.all_flags() {
                assert_eq!(c.all_flags().filter(|o| o.long == f.long).count(), 1, "{} --{}", c.name, f.long);
                for other in [f.requires, f.conflicts].into_iter().flatten() {
                    assert!(c.flag(other).is_some(), "{} --{} names --{other}", c.name, f.long);
                }
                if let Some(d) = f.default {
                    check_value(f, OsStr::new(d)).unwrap();
                    assert!(!f.required, "{} --{} is required and has a default", c.name, f.long);
                }
                assert!(f.kind == Kind::Switch || !f.value_name.is_empty(), "{} --{}", c.name, f.long);
            }
        }
    }

    #[test]
    fn values_switches_defaults_and_positionals() {
        let m = run(&["enroll", "--state", "/s", "--server=https://h:1", "--serial", "D-1", "--ca-cert", "r.pem"]);
        assert_eq!(m.path("state").unwrap(), std::path::Path::new("/s"));
        assert_eq!(m.text("server").unwrap(), "https://h:1");
        assert_eq!(m.text("key-type").unwrap(), "p256", "the default");
        assert!(m.text("label").is_none());
        // A token may begin with '-'; a flag's value otherwise may not look like a flag.
        let m = run(&["enroll", "--state", "s", "--server", "u", "--serial", "D", "--ca-cert", "r", "--token", "-x"]);
        assert_eq!(m.text("token").unwrap(), "-x");
        let e = refused(&["enroll", "--state", "--server", "u", "--serial", "D", "--ca-cert", "r"]);
        assert!(e.starts_with("error: a value is required for '--state <STATE>' but none was supplied"), "{e}");
        let m = run(&["run", "--state", "s", "--once", "--exit-after", "3", "--renew-at", "0.5"]);
        assert!(m.switch("once") && !m.switch("no-ocsp"));
        assert_eq!(m.number::<u32>("exit-after"), Some(3));
        assert_eq!(m.number::<f64>("renew-at"), Some(0.5));
        assert_eq!(m.text("max-backoff").unwrap(), "1h");
        let m = run(&["apply", "--state", "s", "--", "--odd-name"]);
        assert_eq!(m.positional().unwrap(), std::path::Path::new("--odd-name"));
        assert!(
            matches!(parse("dev", "a", COMMANDS, args(&["apply", "-h"])), Ok(Parsed::Help(h)) if h.contains("<FILE>"))
        );
        assert!(
            matches!(parse("dev", "a", COMMANDS, args(&["help", "run"])), Ok(Parsed::Help(h)) if h.contains("--renew-at"))
        );
        assert!(matches!(parse("dev", "a", COMMANDS, args(&["-V"])), Ok(Parsed::Version)));
    }

    /// Each refusal's first line is clap's (the `iotpki agent` side of the same table).
    #[test]
    fn usage_errors_say_what_clap_says() {
        let base = ["enroll", "--state", "s", "--server", "u", "--serial", "D", "--ca-cert", "r"];
        let with = |extra: &[&'static str]| -> Vec<&'static str> { base.iter().chain(extra).copied().collect() };
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["frob"], "error: unrecognized subcommand 'frob'"),
            (with(&["--bogus"]), "error: unexpected argument '--bogus' found"),
            (with(&["extra"]), "error: unexpected argument 'extra' found"),
            (with(&["--state", "t"]), "error: the argument '--state <STATE>' cannot be used multiple times"),
            (
                with(&["--token", "t", "--token-file", "f"]),
                "error: the argument '--token <TOKEN>' cannot be used with '--token-file <FILE>'",
            ),
            (
                with(&["--pin-file", "p"]),
                "error: the following required arguments were not provided:\n  --keystore <URI|tpm>",
            ),
            (
                vec!["enroll", "--state", "s"],
                "error: the following required arguments were not provided:\n  --server <SERVER>",
            ),
            (
                vec!["run", "--state", "s", "--jitter", "x"],
                "error: invalid value 'x' for '--jitter <JITTER>': invalid float literal",
            ),
            (vec!["run", "--state", "s", "--exit-after", "-1"], "error: unexpected argument '-1' found"),
            (
                vec!["run", "--state", "s", "--exit-after", "x"],
                "error: invalid value 'x' for '--exit-after <EXIT_AFTER>': invalid digit found in string",
            ),
            (vec!["status", "--state", "s", "--json=yes"], "error: unexpected value for '--json': it takes none"),
            (vec!["apply", "--state", "s"], "error: the following required arguments were not provided:\n  <FILE>"),
        ];
        for (a, want) in cases {
            let e = refused(&a);
            assert!(e.starts_with(want), "{a:?}:\n{e}\nwanted {want}");
            assert!(e.ends_with("For more information, try '--help'.\n"), "{e}");
        }
        // No command at all: the list of commands, as a refusal.
        assert!(refused(&[]).contains("Commands:"));
    }

    #[test]
    fn non_utf8_text_is_refused_and_paths_are_kept() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![b'a', 0xff]);
        let mut a = args(&["status", "--state"]);
        a.push(bad.clone());
        match parse("dev", "a", COMMANDS, a) {
            Ok(Parsed::Run(m)) => assert_eq!(m.path("state").unwrap().into_os_string(), bad),
            other => panic!("{other:?}"),
        }
        let mut a = args(&["fetch", "--state", "s", "--from"]);
        a.push(bad);
        match parse("dev", "a", COMMANDS, a) {
            Err(UsageError(e)) => assert!(e.contains("invalid UTF-8"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
