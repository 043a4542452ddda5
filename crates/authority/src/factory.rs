//! The factory line, authority side: production batches and stations.
//!
//! A batch names the serials it may give birth to (its allowlist), how many
//! (its quota) and when (its window). A station is a factory machine with its
//! own certificate from the manufacturing CA, authorised for some batches.
//! The key of a station is made on the station; the authority only ever sees
//! its public key. Every check of a birth runs in the store's transaction
//! (`Precondition::Birth`), so quotas and one-birth-per-serial hold under
//! concurrency and across processes.

use iotpki_core::name::DeviceSerial;
use iotpki_store::{AuditEvent, BatchRecord, BatchStatus, Store};

use crate::clock::Clock;
use crate::AuthorityError;

/// Most serials one batch may list.
pub const MAX_ALLOWLIST: usize = 1_000_000;

/// Most serials one delegated CA (a station's offline sub-CA) may name. Its
/// allowlist is signed into it, one permitted directoryName subtree per
/// serial (about 80 bytes each for short names), and the certificate travels
/// in every birth chain a device presents: TLS 1.3 implementations cap a
/// handshake message near 64 KiB (rustls: 0xffff), and small devices store
/// the chain. A batch with more unborn serials is delegated in slices
/// (`station delegate --serials FILE`); a larger request is refused.
pub const MAX_DELEGATED_SERIALS: usize = 256;

/// Most octets a delegated CA certificate may take (long serials and batch
/// names make each subtree larger): above it the delegation is refused.
pub const MAX_DELEGATED_CERT_BYTES: usize = 32 * 1024;

/// The serials a delegation names: `wanted` (each on the batch's allowlist
/// and not born yet, none twice) or, when `None`, every unborn serial; at
/// least one and at most [`MAX_DELEGATED_SERIALS`].
pub fn delegation_slice(
    batch: &str,
    unborn: &[String],
    wanted: Option<&[String]>,
) -> Result<Vec<String>, AuthorityError> {
    let out = match wanted {
        None => unborn.to_vec(),
        Some(w) => {
            let pool: std::collections::HashSet<&str> = unborn.iter().map(String::as_str).collect();
            let mut seen = std::collections::HashSet::new();
            for s in w {
                if !pool.contains(s.as_str()) {
                    return Err(AuthorityError::BadRequest(format!(
                        "serial {s} is not a serial of batch {batch} still to be born (off its allowlist, or born already)"
                    )));
                }
                if !seen.insert(s.as_str()) {
                    return Err(AuthorityError::BadRequest(format!("serial {s} is listed twice")));
                }
            }
            w.to_vec()
        }
    };
    if out.is_empty() {
        return Err(AuthorityError::BadRequest(format!("batch {batch} has no serial left to delegate")));
    }
    if out.len() > MAX_DELEGATED_SERIALS {
        return Err(AuthorityError::BadRequest(format!(
            "a delegated CA names at most {MAX_DELEGATED_SERIALS} serials (signed into its name constraints) and \
             {} were asked for batch {batch}: delegate a slice of the allowlist (--serials FILE)",
            out.len()
        )));
    }
    Ok(out)
}

/// What `iotpki batch create` asks for.
#[derive(Clone, Debug)]
pub struct NewBatch {
    /// The id; generated when `None`.
    pub id: Option<String>,
    /// The product name.
    pub product: String,
    /// The allowlist file's text: one serial per line (a CSV's first column);
    /// blank lines, `#` comments and a `serial` header line are skipped.
    pub allowlist: String,
    /// Most births.
    pub quota: u64,
    /// First second it issues in.
    pub from: i64,
    /// First second it no longer issues in.
    pub until: i64,
}

/// A name for a batch or a station: 1 to 64 of `A-Z a-z 0-9 - _ .`.
pub fn check_name(what: &str, s: &str) -> Result<(), AuthorityError> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(AuthorityError::BadRequest(format!("{what} {s:?} must be 1 to 64 of A-Z a-z 0-9 - _ .")));
    }
    Ok(())
}

/// Parse an allowlist: every serial valid, none twice.
pub fn parse_allowlist(text: &str) -> Result<Vec<String>, AuthorityError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let field = line.split(',').next().unwrap_or_default().trim().trim_matches('"');
        if field.is_empty() || field.starts_with('#') || (out.is_empty() && field.eq_ignore_ascii_case("serial")) {
            continue;
        }
        let sn = DeviceSerial::parse(field)
            .map_err(|e| AuthorityError::BadRequest(format!("allowlist line {}: {e}", n + 1)))?;
        if !seen.insert(sn.to_string()) {
            return Err(AuthorityError::BadRequest(format!("allowlist line {}: serial {sn} is listed twice", n + 1)));
        }
        out.push(sn.to_string());
        if out.len() > MAX_ALLOWLIST {
            return Err(AuthorityError::BadRequest(format!("an allowlist holds at most {MAX_ALLOWLIST} serials")));
        }
    }
    if out.is_empty() {
        return Err(AuthorityError::BadRequest("the allowlist names no serial".into()));
    }
    Ok(out)
}

/// Create a batch (admin).
pub fn create_batch(
    store: &dyn Store,
    clock: &dyn Clock,
    nb: NewBatch,
    actor: &str,
) -> Result<BatchRecord, AuthorityError> {
    let serials = parse_allowlist(&nb.allowlist)?;
    let id = match nb.id {
        Some(id) => id,
        None => {
            let mut r = [0u8; 4];
            aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut r)
                .map_err(|_| AuthorityError::Config("RNG failed".into()))?;
            format!("B-{}", hex::encode(r))
        }
    };
    check_name("batch id", &id)?;
    if nb.product.trim().is_empty() {
        return Err(AuthorityError::BadRequest("--product must not be empty".into()));
    }
    if nb.quota == 0 || nb.quota > serials.len() as u64 {
        return Err(AuthorityError::BadRequest(format!(
            "the quota must be between 1 and the allowlist's {} serials (got {})",
            serials.len(),
            nb.quota
        )));
    }
    if nb.from >= nb.until {
        return Err(AuthorityError::BadRequest("the window must end after it starts (--from before --until)".into()));
    }
    let now = clock.now();
    let record = BatchRecord {
        id: id.clone(),
        product: nb.product.clone(),
        quota: nb.quota,
        issued: 0,
        refused: 0,
        flagged: 0,
        valid_from: nb.from,
        valid_until: nb.until,
        status: BatchStatus::Open,
        created_at: now,
        allowlist: serials.len() as u64,
    };
    let audit = AuditEvent {
        at: now,
        actor: actor.into(),
        action: "batch.create".into(),
        target: id.clone(),
        detail: format!(
            "product={} quota={} serials={} window={}..{}",
            nb.product,
            nb.quota,
            serials.len(),
            nb.from,
            nb.until
        ),
    };
    store.create_batch(record, serials, audit)?;
    store.batch(&id)?.ok_or_else(|| AuthorityError::Config(format!("batch {id} vanished after creation")))
}

/// Close a batch (admin): it issues nothing more.
pub fn close_batch(store: &dyn Store, clock: &dyn Clock, id: &str, actor: &str) -> Result<(), AuthorityError> {
    let audit = AuditEvent {
        at: clock.now(),
        actor: actor.into(),
        action: "batch.close".into(),
        target: id.into(),
        detail: String::new(),
    };
    Ok(store.close_batch(id, audit)?)
}

/// Revoke a station (admin): it and its certificate are refused from now on.
pub fn revoke_station(store: &dyn Store, clock: &dyn Clock, name: &str, actor: &str) -> Result<(), AuthorityError> {
    let now = clock.now();
    let audit = AuditEvent {
        at: now,
        actor: actor.into(),
        action: "station.revoke".into(),
        target: name.into(),
        detail: "reason=cessationOfOperation".into(),
    };
    Ok(store.revoke_station(name, now, audit)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlists() {
        assert_eq!(parse_allowlist("serial\nA-1\n\n# c\nA-2,extra\n\"A-3\"\n").unwrap(), vec!["A-1", "A-2", "A-3"]);
        assert!(parse_allowlist("A-1\nA-1\n").unwrap_err().to_string().contains("twice"));
        assert!(parse_allowlist("bad_serial\n").unwrap_err().to_string().contains("line 1"));
        assert!(parse_allowlist("\n# only comments\n").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("batch id", "B-2026.11_a").is_ok());
        assert!(check_name("batch id", "").is_err());
        assert!(check_name("batch id", "a/b").is_err());
    }
}
