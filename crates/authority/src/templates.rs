//! Certificate templates at the authority (docs/templates.md): the config's
//! `[[template]]`s and the built-in ones, checked when the authority opens.
//!
//! A template is refused before any certificate is issued from it:
//! - when the config loads: its fields against RFC 5280 ([`Template::parse`]);
//! - when the authority opens: its lifetime against the issuing CAs', and a
//!   sample certificate for a throwaway key of each key type it allows,
//!   under a throwaway key of each issuing CA's type and name, through the
//!   lint every certificate goes through ([`Template::sample`]);
//! - when `iotpki serve` starts (and by `iotpki template check`), if pkilint
//!   is configured (`[lint] pkilint` or `$IOTPKI_PKILINT`): each sample
//!   through pkilint's `lint_pkix_cert`; any finding at WARNING or above
//!   refuses the template, with pkilint's finding as the reason.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use iotpki_core::keys::{KeyType, Signer as _, SoftKey};
use iotpki_core::profile::Issuer;
use iotpki_core::template::{self, Template, TemplateError};
use spki::der::Decode as _;

use crate::{AuthorityError, CaKey, Config};

/// The environment variable naming pkilint's `lint_pkix_cert` (overrides `[lint] pkilint`).
pub const PKILINT_ENV: &str = "IOTPKI_PKILINT";

/// Most bytes of pkilint's report kept in a refusal.
const MAX_REPORT: usize = 4096;

/// Longest pkilint may take on one certificate before it is stopped.
const PKILINT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The config's templates and the built-in ones, by name, each checked.
pub(crate) fn load(
    cfg: &Config,
    issuing: &[Arc<CaKey>],
    now: i64,
) -> Result<HashMap<String, Arc<Template>>, AuthorityError> {
    let mut out = HashMap::new();
    for t in template::builtins() {
        out.insert(t.name().to_string(), Arc::new(t));
    }
    for t in template::parse_specs(cfg.template.clone()).map_err(refused)? {
        samples(&t, &cfg.organization, issuing, now).map_err(refused)?;
        out.insert(t.name().to_string(), Arc::new(t));
    }
    Ok(out)
}

/// Refuse a batch or token naming a template the config (with the built-in
/// ones) does not have.
pub fn check_known(cfg: &Config, name: &str) -> Result<(), AuthorityError> {
    if template::builtins().iter().any(|t| t.name() == name) || cfg.template.iter().any(|t| t.name == name) {
        return Ok(());
    }
    let mut names: Vec<String> = template::builtins().iter().map(|t| t.name().to_string()).collect();
    names.extend(cfg.template.iter().map(|t| t.name.clone()));
    Err(AuthorityError::malformed(format!(
        "no certificate template named {name:?} in the config (there are: {}); add a [[template]] (docs/templates.md)",
        names.join(", ")
    )))
}

fn refused(e: TemplateError) -> AuthorityError {
    AuthorityError::Config(format!("{e}"))
}

/// Sample certificates of `t`: one per issuing CA and allowed key type, as
/// (CA name, key type, DER). The built-in templates, whose key types are
/// the label's, have none (their profiles are tested as they are).
pub(crate) fn samples(
    t: &Template,
    organization: &str,
    issuing: &[Arc<CaKey>],
    now: i64,
) -> Result<Vec<(String, KeyType, Vec<u8>)>, TemplateError> {
    let fail = |field: &str, rule: &str, reason: String| TemplateError {
        template: t.name().to_string(),
        field: field.into(),
        rule: rule.into(),
        reason,
    };
    if let Some(l) = t.lifetime_secs() {
        let longest = issuing.iter().map(|c| c.not_after - now).max().unwrap_or(0);
        if l > longest {
            return Err(fail(
                "lifetime_days",
                "RFC 5280 4.1.2.5",
                format!(
                    "{} days is longer than any issuing CA has left ({} days): its certificates would all be cut \
                     to their CA's notAfter",
                    l / 86_400,
                    longest / 86_400
                ),
            ));
        }
    }
    let mut out = Vec::new();
    for ca in issuing {
        let ca_type = KeyType::of_spki(&ca.cert.tbs_certificate.subject_public_key_info)
            .map_err(|e| fail("sample", "iotpki", format!("CA {}: {e}", ca.name)))?;
        let throwaway = SoftKey::generate(ca_type).map_err(|e| fail("sample", "iotpki", e.to_string()))?;
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(throwaway.public_key_der())
            .map_err(|e| fail("sample", "iotpki", e.to_string()))?;
        let kid = iotpki_core::keys::key_identifier(&spki);
        let issuer = Issuer { subject: &ca.subject, key_id: &kid, not_after: ca.not_after, signer: &throwaway };
        for kt in t.keys() {
            let s = t.sample(organization, &issuer, *kt, now).map_err(|mut e| {
                e.field = format!("{} (under CA {})", e.field, ca.name);
                e
            })?;
            out.push((ca.name.clone(), *kt, s.der));
        }
    }
    Ok(out)
}

/// pkilint's `lint_pkix_cert`, if configured: `$IOTPKI_PKILINT`, else
/// `[lint] pkilint` (relative to the authority's directory `dir`).
pub fn pkilint_exe(dir: &Path, cfg: &Config) -> Option<PathBuf> {
    match std::env::var_os(PKILINT_ENV) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => cfg.lint.pkilint.as_ref().map(|p| crate::keyfile::resolve(dir, p)),
    }
}

/// Run pkilint (`exe`, its `lint_pkix_cert`) on one certificate: its
/// findings at WARNING or above, if any. Anything it prints is a finding,
/// but for Python's own warnings (a dependency's deprecation notice, such as
/// pyca/cryptography 51's on DSA), which say nothing of the certificate:
/// they are turned off.
pub fn pkilint(exe: &Path, der: &[u8]) -> Result<(), String> {
    pkilint_within(exe, der, PKILINT_TIMEOUT)
}

/// [`pkilint`], stopped once it has run for `limit`: a lint that hangs, or
/// never reads a certificate larger than its pipe holds, is a refusal that
/// says so (a smaller one fits in the pipe, read or not).
fn pkilint_within(exe: &Path, der: &[u8], limit: std::time::Duration) -> Result<(), String> {
    let mut child = Command::new(exe)
        .args(["lint", "-s", "WARNING", "--document-format", "DER", "-"])
        .env("PYTHONWARNINGS", "ignore")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("pkilint ({}) cannot run: {e}", exe.display()))?;
    // The certificate is written, and both pipes drained, on their own threads while
    // it runs (a full pipe would stall it, or us), and it is stopped when it takes
    // longer than `limit`.
    let writer = child.stdin.take().map(|mut stdin| {
        let der = der.to_vec();
        std::thread::spawn(move || stdin.write_all(&der))
    });
    fn drain<R: std::io::Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    }
    let (out_t, err_t) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(std::time::Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("pkilint ({}) took longer than {limit:?}", exe.display()));
            }
            Err(e) => return Err(format!("pkilint ({}): {e}", exe.display())),
        }
    };
    let (stdout, stderr) = (out_t.join().unwrap_or_default(), err_t.join().unwrap_or_default());
    let mut text = format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr));
    if status.success() && text.trim().is_empty() {
        // It has exited, so the write has ended too: a lint that passes
        // without reading the whole certificate has not linted it.
        return match writer.map(std::thread::JoinHandle::join) {
            Some(Ok(Err(e))) => Err(format!("pkilint ({}) did not read the certificate: {e}", exe.display())),
            _ => Ok(()),
        };
    }
    if text.len() > MAX_REPORT {
        let mut end = MAX_REPORT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    Err(format!("pkilint finds: {}", text.trim()))
}

impl crate::Authority {
    /// The templates (built-in and configured), by name.
    pub fn templates(&self) -> Vec<Arc<Template>> {
        let mut v: Vec<_> = self.templates.values().cloned().collect();
        v.sort_by(|a, b| (!a.is_builtin(), a.name()).cmp(&(!b.is_builtin(), b.name())));
        v
    }

    /// The template named `name`, or a refusal naming the ones there are.
    pub fn template(&self, name: &str) -> Result<Arc<Template>, AuthorityError> {
        self.templates.get(name).cloned().ok_or_else(|| {
            let names = self.templates().iter().map(|t| t.name().to_string()).collect::<Vec<_>>().join(", ");
            AuthorityError::not_found(format!("no template named {name:?} (there are: {names})"))
        })
    }

    /// Run pkilint (`exe`) on every configured template's samples: the
    /// number of samples linted, or the first template it flags, refused
    /// with pkilint's finding as the reason.
    pub fn lint_templates(&self, exe: &Path) -> Result<usize, AuthorityError> {
        let now = self.clock.now();
        let mut n = 0;
        for t in self.templates().iter().filter(|t| !t.is_builtin()) {
            for (ca, kt, der) in samples(t, &self.cfg.organization, &self.issuing, now).map_err(refused)? {
                pkilint(exe, &der).map_err(|reason| {
                    refused(TemplateError {
                        template: t.name().to_string(),
                        field: format!("sample certificate for a {kt} key under CA {ca}"),
                        rule: "pkilint lint_pkix_cert".into(),
                        reason,
                    })
                })?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The templates of `cfg` with the built-in ones, each checked ([`Template::parse`]):
/// built-in first, then the config's in its order.
pub fn configured(cfg: &Config) -> Result<Vec<Template>, AuthorityError> {
    let mut v = template::builtins();
    v.extend(template::parse_specs(cfg.template.clone()).map_err(refused)?);
    Ok(v)
}

/// A template as the config writes it, TOML (`iotpki template show`).
pub fn to_toml(t: &Template) -> Result<String, AuthorityError> {
    #[derive(serde::Serialize)]
    struct File<'a> {
        template: [&'a template::TemplateSpec; 1],
    }
    toml::to_string_pretty(&File { template: [t.spec()] }).map_err(|e| AuthorityError::Config(e.to_string()))
}

/// Check a file of `[[template]]`s (`iotpki template check FILE`) as `serve`
/// would: RFC 5280 at parse; a sample per key type under a throwaway P-256
/// CA named after `organization`, through our lint; then through pkilint
/// (`exe`) when given. Returns one line per sample.
pub fn check_file(text: &str, organization: &str, now: i64, exe: Option<&Path>) -> Result<Vec<String>, AuthorityError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        template: Vec<template::TemplateSpec>,
    }
    let file: File = toml::from_str(text).map_err(|e| AuthorityError::Config(format!("templates: {e}")))?;
    let ca_key = SoftKey::generate(KeyType::EcdsaP256)?;
    let ca_name =
        iotpki_core::name::NameBuilder::default().organization(organization)?.common_name("Template Check CA")?.build();
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(ca_key.public_key_der())
        .map_err(|e| AuthorityError::Config(format!("throwaway CA key: {e}")))?;
    let kid = iotpki_core::keys::key_identifier(&spki);
    let not_after = now + 100 * 366 * 86_400;
    let issuer = Issuer { subject: &ca_name, key_id: &kid, not_after, signer: &ca_key };
    let mut lines = Vec::new();
    for t in template::parse_specs(file.template).map_err(refused)? {
        for kt in t.keys() {
            let s = t.sample(organization, &issuer, *kt, now).map_err(refused)?;
            if let Some(exe) = exe {
                pkilint(exe, &s.der).map_err(|reason| {
                    refused(TemplateError {
                        template: t.name().to_string(),
                        field: format!("sample certificate for a {kt} key"),
                        rule: "pkilint lint_pkix_cert".into(),
                        reason,
                    })
                })?;
            }
            let linted = if exe.is_some() { "our lint and pkilint" } else { "our lint" };
            lines.push(format!("template {}: a {kt} sample passes {linted}", t.name()));
        }
    }
    Ok(lines)
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A stand-in for pkilint: a shell script that reads the certificate, then runs `body`.
    fn fake(dir: &Path, body: &str) -> PathBuf {
        bare(dir, &format!("cat > /dev/null\n{body}"))
    }

    /// A shell script with `body` alone, which may leave the certificate unread.
    fn bare(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = dir.join(format!("lint-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn pkilint_findings_refuse_and_pythons_own_warnings_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(pkilint(&fake(tmp.path(), "exit 0"), b"der"), Ok(()));
        // What pkilint prints at WARNING or above, with its exit status.
        let e = pkilint(&fake(tmp.path(), "echo 'pkix.invalid_uri_syntax (ERROR)'; exit 1"), b"der").unwrap_err();
        assert!(e.starts_with("pkilint finds: pkix.invalid_uri_syntax"), "{e}");
        // Anything on stderr counts too (a certificate it cannot load), even with exit 0.
        let e = pkilint(&fake(tmp.path(), "echo 'Failed to load certificate' >&2"), b"der").unwrap_err();
        assert!(e.contains("Failed to load certificate"), "{e}");
        // A Python warning is printed only when Python's warnings are on.
        let warns =
            fake(tmp.path(), "[ \"$PYTHONWARNINGS\" = ignore ] || echo 'CryptographyDeprecationWarning: DSA' >&2");
        assert_eq!(pkilint(&warns, b"der"), Ok(()));
        // Long reports are cut, and a missing tool says so.
        let e = pkilint(&fake(tmp.path(), "yes finding | head -c 100000; exit 1"), b"der").unwrap_err();
        assert!(e.len() < MAX_REPORT + 64 && e.ends_with("..."), "{}", e.len());
        let e = pkilint(&tmp.path().join("absent"), b"der").unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
        // A lint that passes without reading the certificate has not linted it.
        let e = pkilint(&bare(tmp.path(), "exit 0"), &[0x30; 1 << 20]).unwrap_err();
        assert!(e.contains("did not read the certificate"), "{e}");
    }

    /// A lint that hangs is stopped at its limit, and so is one that never
    /// reads a certificate larger than a pipe holds; neither stalls its caller.
    #[test]
    fn a_pkilint_that_hangs_is_stopped_and_refuses() {
        let tmp = tempfile::tempdir().unwrap();
        let limit = std::time::Duration::from_millis(300);
        let (hangs, deaf) = (fake(tmp.path(), "exec sleep 60"), bare(tmp.path(), "exec sleep 60"));
        for (exe, der) in [(hangs, vec![0x30; 16]), (deaf, vec![0x30; 1 << 20])] {
            let start = std::time::Instant::now();
            let e = pkilint_within(&exe, &der, limit).unwrap_err();
            assert!(e.contains("took longer than 300ms"), "{e}");
            assert!(start.elapsed() < std::time::Duration::from_secs(30), "{:?}", start.elapsed());
        }
    }
}
