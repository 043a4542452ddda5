//! One-time enrollment tokens: 256 random bits, shown once, stored only as SHA-256.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use iotpki_core::name::DeviceSerial;
use iotpki_store::{AuditEvent, Store, TokenRecord};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::AuthorityError;
use iotpki_core::clock::Clock;

/// SHA-256 of a token, hex: the only form the store keeps.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Create a token for `serial`, valid for `ttl_secs` (the config's default
/// when `None`, at most its maximum). Returns the token: it is not stored
/// and cannot be shown again.
pub fn create(
    store: &dyn Store,
    cfg: &Config,
    clock: &dyn Clock,
    serial: &DeviceSerial,
    ttl_secs: Option<u64>,
    actor: &str,
) -> Result<String, AuthorityError> {
    create_with_template(store, cfg, clock, serial, ttl_secs, None, actor)
}

/// [`create`], the token's enrollment getting certificate template
/// `template` (docs/templates.md), which the config must have.
pub fn create_with_template(
    store: &dyn Store,
    cfg: &Config,
    clock: &dyn Clock,
    serial: &DeviceSerial,
    ttl_secs: Option<u64>,
    template: Option<&str>,
    actor: &str,
) -> Result<String, AuthorityError> {
    if let Some(t) = template {
        crate::templates::check_known(cfg, t)?;
    }
    let ttl = ttl_secs.unwrap_or(cfg.tokens.default_ttl_secs);
    if ttl == 0 || ttl > cfg.tokens.max_ttl_secs {
        return Err(AuthorityError::malformed(format!(
            "token lifetime must be between 1 s and {} s",
            cfg.tokens.max_ttl_secs
        )));
    }
    let mut raw = [0u8; 32];
    SystemRandom::new().fill(&mut raw).map_err(|_| AuthorityError::Config("RNG failed".into()))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let now = clock.now();
    let ttl_i = i64::try_from(ttl).unwrap_or(i64::MAX);
    store.create_token(
        TokenRecord {
            token_hash: hash(&token),
            device_serial: serial.to_string(),
            created_at: now,
            expires_at: now.saturating_add(ttl_i),
            used_at: None,
            cert_serial: None,
            template: template.map(str::to_string),
        },
        AuditEvent {
            at: now,
            actor: actor.into(),
            action: "token.create".into(),
            target: serial.to_string(),
            detail: match template {
                Some(t) => format!("ttl={ttl}s template={t}"),
                None => format!("ttl={ttl}s"),
            },
        },
    )?;
    Ok(token)
}

/// What a token check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenState {
    /// Unused and valid now.
    Fresh,
    /// Already spent on the certificate with this serial: a retry may get it again.
    Spent {
        /// The certificate's serial.
        cert_serial: String,
        /// When the token was spent.
        used_at: i64,
    },
}

/// Read-only check of a token for `serial` at `now` (no side effect).
pub fn precheck(
    store: &dyn Store,
    token_hash: &str,
    serial: &DeviceSerial,
    now: i64,
) -> Result<TokenState, AuthorityError> {
    precheck_with_template(store, token_hash, serial, now).map(|(s, _)| s)
}

/// [`precheck`], with the certificate template the token names, if any.
pub fn precheck_with_template(
    store: &dyn Store,
    token_hash: &str,
    serial: &DeviceSerial,
    now: i64,
) -> Result<(TokenState, Option<String>), AuthorityError> {
    use iotpki_store::StoreError as E;
    let t = store.token(token_hash)?.ok_or(E::TokenUnknown)?;
    let template = t.template;
    if t.device_serial != serial.as_str() {
        return Err(E::TokenWrongSerial.into());
    }
    if let Some(used_at) = t.used_at {
        return match t.cert_serial {
            Some(cert_serial) => Ok((TokenState::Spent { cert_serial, used_at }, template)),
            None => Err(E::TokenUsed { used_at }.into()),
        };
    }
    if t.expires_at <= now {
        return Err(E::TokenExpired { expires_at: t.expires_at }.into());
    }
    Ok((TokenState::Fresh, template))
}
