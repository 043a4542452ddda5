//! `iotpki agent run`: the device daemon that keeps the identity alive.
//!
//! - Renews when a share of the certificate's lifetime has passed (default
//!   2/3), plus a jitter that is a fixed fraction per certificate (derived from
//!   its serial), so a fleet enrolled together does not renew together.
//! - When the server is unreachable or busy, retries with exponential backoff
//!   (doubling from `min_backoff` up to `max_backoff`, each wait stretched by up
//!   to half at random).
//! - When the operational certificate has expired, or the server refuses it
//!   (revoked), and the device has a birth certificate, it commissions again
//!   with that (re-commissioning). A device the owner revoked is refused there
//!   too, and keeps retrying at the longest backoff.
//! - Every round it asks the OCSP responder its certificate names about that
//!   certificate ([`crate::ocsp::check_own`], a verified answer with a fresh
//!   nonce). On `revoked` it says so (an [`Event::Ocsp`]) and acts at once,
//!   without waiting for the renewal to be refused: an operational certificate
//!   is replaced by commissioning again with the birth certificate; a device
//!   with nothing to come back with (enrolled by token, or its birth
//!   certificate revoked) stops with [`AgentError::Revoked`], since every
//!   server will refuse it. `superseded` is the mark a renewal leaves on the
//!   certificate it replaces: the device renews at once, and with the key it
//!   kept from a renewal whose answer it lost, gets that new certificate again
//!   (it neither stops nor commissions a second identity); if another key
//!   renewed it, it commissions again or stops as above. An OCSP failure
//!   (responder away, an answer that does
//!   not verify) is reported and the round goes on: CRLs, the servers' own
//!   checks and renewal still hold; a forged answer can never make the device
//!   believe it is good or revoked, only fail to learn.
//! - Every change of state on disk goes through [`crate::state::store`]:
//!   write, fsync, rename, fsync of the directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use iotpki_core::{pem, profile};

use crate::clock::now;
use crate::{flow, state, AgentError, Identity};

/// How the daemon behaves.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The device's state directory.
    pub state_dir: PathBuf,
    /// Share of the lifetime after which to renew (0 < share < 1).
    pub renew_share: f64,
    /// Extra share of the lifetime, at most, added per certificate as jitter.
    pub jitter_share: f64,
    /// First wait after a failure.
    pub min_backoff: Duration,
    /// Longest wait after failures, and longest sleep between checks.
    pub max_backoff: Duration,
    /// Do one step (renew or re-commission if due) and return.
    pub once: bool,
    /// Return after this many renewals or re-commissionings.
    pub exit_after: Option<u32>,
    /// Where to look for trust bundles, vouchers and CRLs each round (the
    /// server, its plain-HTTP listener or a relay); None: not looked for.
    pub fetch_from: Option<String>,
    /// Ask the OCSP responder about the certificate every round.
    pub check_ocsp: bool,
}

impl RunOptions {
    /// Defaults for `state_dir`: renew at 2/3 with up to 10% jitter, back off from 2 s to 1 h.
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            renew_share: 2.0 / 3.0,
            jitter_share: 0.1,
            min_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(3600),
            once: false,
            exit_after: None,
            fetch_from: None,
            check_ocsp: true,
        }
    }

    fn check(&self) -> Result<(), AgentError> {
        if !(self.renew_share > 0.0 && self.renew_share < 1.0) {
            return Err(AgentError::Usage("the renewal share must be between 0 and 1 (e.g. 0.67)".into()));
        }
        if !(0.0..1.0).contains(&self.jitter_share) || self.renew_share + self.jitter_share >= 1.0 {
            return Err(AgentError::Usage("the jitter must be >= 0 and end before the certificate expires".into()));
        }
        if self.min_backoff.is_zero() || self.min_backoff > self.max_backoff {
            return Err(AgentError::Usage("need 0 < min backoff <= max backoff".into()));
        }
        Ok(())
    }
}

/// What one step did.
#[derive(Debug)]
pub enum Step {
    /// Nothing due before `due` (Unix seconds).
    NotDue {
        /// When the renewal is due.
        due: i64,
    },
    /// Renewed with the current certificate.
    Renewed(Box<Identity>),
    /// Commissioned again with the birth certificate.
    Recommissioned(Box<Identity>),
}

/// Something the daemon reports.
#[derive(Debug)]
pub enum Event<'a> {
    /// A step finished.
    Step(&'a Step),
    /// Something fetched was applied, or refused (with why); the state is unchanged on refusal.
    Fetched {
        /// What (a path).
        what: &'a str,
        /// What happened.
        result: &'a Result<crate::trust::Applied, AgentError>,
    },
    /// The OCSP responder was asked about the certificate: its verified answer, or why there is none.
    Ocsp(&'a Result<crate::ocsp::OcspReport, AgentError>),
    /// A step failed; the next try is after `retry_in`.
    Failed {
        /// What went wrong.
        error: &'a AgentError,
        /// The wait before the next try.
        retry_in: Duration,
    },
}

/// When the certificate with `serial` valid `not_before..not_after` is due for renewal.
pub fn due_at(opts: &RunOptions, serial: &str, not_before: i64, not_after: i64) -> i64 {
    let life = (not_after - not_before).max(0) as f64;
    let h = crate::backend::digest::digest(&crate::backend::digest::SHA256, serial.as_bytes());
    let h = h.as_ref();
    let frac = f64::from(u16::from_be_bytes([h[0], h[1]])) / 65_536.0;
    not_before + (life * (opts.renew_share + opts.jitter_share * frac)) as i64
}

/// Whether a refusal means the certificate itself is no longer accepted, so
/// that only the birth certificate can bring the device back.
fn lost_certificate(e: &AgentError) -> bool {
    matches!(e, AgentError::Refused { status: 401 | 403, .. })
}

/// Whether trying again later may help (the server away, busy or failing).
fn transient(e: &AgentError) -> bool {
    match e {
        AgentError::Connect(_)
        | AgentError::BadAnswer(_)
        | AgentError::Untrusted(_)
        | AgentError::KeystoreUnreachable(_) => true,
        AgentError::Refused { status, .. } => *status >= 500 || *status == 429 || *status == 401 || *status == 403,
        _ => false,
    }
}

/// One step: renew if due, re-commission if the certificate is lost.
pub async fn step(opts: &RunOptions) -> Result<Step, AgentError> {
    opts.check()?;
    let dir = &opts.state_dir;
    let id = state::load(dir)?;
    let cert = pem::decode_one("CERTIFICATE", &id.cert_pem).map_err(|e| AgentError::State(e.to_string()))?;
    let info = profile::cert_info(&cert)?;
    let is_birth = id.birth.as_ref().is_some_and(|b| b.cert_pem == id.cert_pem);
    let t = now();
    if is_birth || t >= info.not_after {
        // Never commissioned, or the operational certificate has expired.
        if id.birth.is_none() {
            return Err(AgentError::State(format!(
                "the certificate expired at {} and there is no birth certificate to commission again with: enroll anew",
                iotpki_core::time::rfc3339(info.not_after)
            )));
        }
        return Ok(Step::Recommissioned(Box::new(flow::commission(dir, None, None, None).await?)));
    }
    let due = due_at(opts, &info.serial, info.not_before, info.not_after);
    if t < due {
        return Ok(Step::NotDue { due });
    }
    renew_or_commission(dir, id.birth.is_some()).await
}

/// Renew; if the server no longer knows the certificate (revoked, or
/// superseded by another key), commission again when the device has a birth
/// certificate to do it with.
async fn renew_or_commission(dir: &Path, has_birth: bool) -> Result<Step, AgentError> {
    match flow::renew(dir, None, None).await {
        Ok(id) => Ok(Step::Renewed(Box::new(id))),
        Err(e) if lost_certificate(&e) && has_birth => {
            Ok(Step::Recommissioned(Box::new(flow::commission(dir, None, None, None).await?)))
        }
        Err(e) => Err(e),
    }
}

/// RFC 5280's CRLReason superseded: what a renewal records for the certificate it replaces.
const SUPERSEDED: u8 = 4;

/// Ask about the certificate; on `revoked`, what to do instead of the usual
/// step (`Some`: renewed, re-commissioned, or why not). Errors end the daemon.
async fn ocsp_round(
    opts: &RunOptions,
    report: &mut impl FnMut(Event<'_>),
) -> Result<Option<Result<Step, AgentError>>, AgentError> {
    let dir = &opts.state_dir;
    let answer = match crate::ocsp::check_own(dir, None).await {
        Ok(None) => return Ok(None),
        Ok(Some(r)) => Ok(r),
        Err(e) => Err(e),
    };
    report(Event::Ocsp(&answer));
    let Ok(r) = answer else { return Ok(None) };
    let iotpki_core::ocsp::Status::Revoked { at, reason } = r.checked.status else { return Ok(None) };
    let id = state::load(dir)?;
    if reason == SUPERSEDED && !r.is_birth {
        // A renewal of it was recorded: most likely this device's own, whose
        // answer was lost (the connection cut, the power gone before the new
        // identity was saved). Renewing again with the key it kept gets that
        // certificate again; any other key is refused, and the device then
        // commissions again if it can, as for any revocation.
        return Ok(Some(match renew_or_commission(dir, id.birth.is_some()).await {
            // Superseded by a renewal this device cannot get again (another key
            // renewed it), and nothing to commission again with: as revoked.
            Err(e) if lost_certificate(&e) => Err(AgentError::Revoked(format!(
                "certificate {} was superseded by a renewal this device cannot get again ({e}); it must be \
                 enrolled anew",
                r.cert_serial
            ))),
            other => other,
        }));
    }
    if id.birth.is_none() || r.is_birth {
        return Err(AgentError::Revoked(format!(
            "certificate {} was revoked at {} ({}) and there is no {} to commission again with; \
             it must be enrolled anew",
            r.cert_serial,
            iotpki_core::time::rfc3339(at),
            crate::ocsp::reason_name(reason),
            if r.is_birth { "other birth certificate" } else { "birth certificate" }
        )));
    }
    Ok(Some(flow::commission(dir, None, None, None).await.map(|id| Step::Recommissioned(Box::new(id)))))
}

/// Run until stopped (or per `once` / `exit_after`); answers how many
/// renewals and re-commissionings were made. Fatal errors (state, usage)
/// end it; network failures and refusals are retried with backoff.
pub async fn run(opts: &RunOptions, mut report: impl FnMut(Event<'_>)) -> Result<u32, AgentError> {
    opts.check()?;
    let mut done = 0u32;
    let mut backoff = opts.min_backoff;
    loop {
        if let Some(base) = &opts.fetch_from {
            match crate::trust::fetch_and_apply(&opts.state_dir, base).await {
                Ok(results) => {
                    for (what, result) in &results {
                        report(Event::Fetched { what, result });
                    }
                }
                Err(e) => report(Event::Fetched { what: base, result: &Err(e) }),
            }
        }
        let revoked_step = if opts.check_ocsp { ocsp_round(opts, &mut report).await? } else { None };
        let result = match revoked_step {
            Some(r) => r,
            None => step(opts).await,
        };
        match result {
            Ok(s) => {
                report(Event::Step(&s));
                backoff = opts.min_backoff;
                match s {
                    Step::NotDue { due } => {
                        if opts.once {
                            return Ok(done);
                        }
                        let wait = Duration::from_secs((due - now()).max(1) as u64).min(opts.max_backoff);
                        tokio::time::sleep(wait).await;
                    }
                    Step::Renewed(_) | Step::Recommissioned(_) => {
                        done += 1;
                        if opts.once || opts.exit_after.is_some_and(|n| done >= n) {
                            return Ok(done);
                        }
                    }
                }
            }
            Err(e) if transient(&e) && !opts.once => {
                let mut r = [0u8; 2];
                // No randomness: no stretch (the backoff still doubles).
                let _ = crate::fill_random(&mut r);
                let stretch = 1.0 + f64::from(u16::from_be_bytes(r)) / 65_536.0 * 0.5;
                let wait = backoff.mul_f64(stretch).min(opts.max_backoff);
                report(Event::Failed { error: &e, retry_in: wait });
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(opts.max_backoff);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_is_inside_the_window_and_spread() {
        let o = RunOptions::new(PathBuf::from("/nonexistent"));
        let (nb, na) = (1_000_000, 1_000_000 + 90 * 86_400);
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let d = due_at(&o, &format!("{i:032x}"), nb, na);
            let share = (d - nb) as f64 / (na - nb) as f64;
            assert!((2.0 / 3.0 - 1e-6..2.0 / 3.0 + 0.1 + 1e-6).contains(&share), "share {share}");
            seen.insert(d / 3600);
        }
        assert!(seen.len() > 100, "jitter spreads renewals over the window: {} distinct hours", seen.len());
    }

    #[test]
    fn bad_options_are_refused() {
        let mut o = RunOptions::new(PathBuf::from("/nonexistent"));
        o.renew_share = 1.0;
        assert!(o.check().is_err());
        o.renew_share = 0.9;
        o.jitter_share = 0.2;
        assert!(o.check().is_err());
        o.jitter_share = 0.0;
        o.min_backoff = Duration::from_secs(10);
        o.max_backoff = Duration::from_secs(1);
        assert!(o.check().is_err());
    }

    #[test]
    fn which_failures_are_retried() {
        assert!(transient(&AgentError::Connect("refused".into())));
        assert!(transient(&AgentError::Refused { status: 503, reason: String::new() }));
        assert!(!transient(&AgentError::State("damaged".into())));
        // The TPM away (a resource manager restarting): later; a key blob gone: no.
        assert!(transient(&AgentError::KeystoreUnreachable("no TPM answers".into())));
        assert!(!transient(&AgentError::Keystore("the TPM key blob is missing".into())));
        assert!(lost_certificate(&AgentError::Refused { status: 403, reason: "revoked".into() }));
        assert!(!lost_certificate(&AgentError::Refused { status: 400, reason: String::new() }));
    }
}
