//! `iotpki template`: the certificate templates (docs/templates.md).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use iotpki_authority::templates;
use iotpki_authority::Clock as _;

use crate::DirArg;

/// `iotpki template ...`.
#[derive(Subcommand, Debug)]
pub enum TemplateCmd {
    /// List the templates: the built-in ones (the default profiles) and the config's.
    List {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Show one template as the config writes it.
    Show {
        #[command(flatten)]
        dir: DirArg,
        /// The template's name.
        name: String,
    },
    /// Check a file of `[[template]]` tables as `serve` would: RFC 5280, a sample
    /// certificate per key type through our lint, and pkilint when given.
    Check {
        /// The TOML file.
        file: PathBuf,
        /// The organisation the samples name (the config's `organization`).
        #[arg(long, default_value = "Example Org")]
        organization: String,
        /// pkilint's lint_pkix_cert executable (else $IOTPKI_PKILINT, else none).
        #[arg(long, value_name = "EXE")]
        pkilint: Option<PathBuf>,
    },
}

pub fn run(c: TemplateCmd) -> anyhow::Result<()> {
    match c {
        TemplateCmd::List { dir } => {
            let cfg = dir.config()?;
            for t in templates::configured(&cfg)? {
                let keys = if t.keys().is_empty() {
                    "the label's".to_string()
                } else {
                    t.keys().iter().map(|k| k.to_string()).collect::<Vec<_>>().join(",")
                };
                let life = t.lifetime_secs().map_or("the label's".to_string(), |s| format!("{}d", s / 86_400));
                let kind = if t.is_builtin() { "built-in" } else { "config" };
                println!("{}\t{kind}\tkeys={keys}\tlifetime={life}\tsubject={}", t.name(), t.spec().subject.join(","));
            }
            Ok(())
        }
        TemplateCmd::Show { dir, name } => {
            let cfg = dir.config()?;
            let all = templates::configured(&cfg)?;
            let t = all.iter().find(|t| t.name() == name).with_context(|| {
                let names: Vec<&str> = all.iter().map(|t| t.name()).collect();
                format!("no template named {name:?} (there are: {})", names.join(", "))
            })?;
            print!("{}", templates::to_toml(t)?);
            Ok(())
        }
        TemplateCmd::Check { file, organization, pkilint } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
            let exe = pkilint
                .or_else(|| std::env::var_os(templates::PKILINT_ENV).filter(|p| !p.is_empty()).map(PathBuf::from));
            let now = iotpki_authority::SystemClock.now();
            for l in templates::check_file(&text, &organization, now, exe.as_deref())
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
            {
                println!("{l}");
            }
            Ok(())
        }
    }
}
