//! The key registry's rules: who holds a key (by the SHA-256 of its
//! subjectPublicKeyInfo), and blocking keys known to be compromised.
//!
//! The store enforces the rest at issuance (a blocked key, or a key certified
//! for another device, is refused in the transaction that would record it);
//! here is what the CLI and a firmware scan ask of it.

use iotpki_core::clock::Clock;
use iotpki_core::profile::Profile;
use iotpki_store::{BlockedKey, CertRecord, KeyBlock, KeysBlocked, Store};

use crate::AuthorityError;

/// Whose key it is, as far as the registry knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// One of this authority's CA keys (a root, an issuing or delegating CA):
    /// every certificate under it is in doubt.
    Ca {
        /// The profile (`root`, `issuing-ca`, `delegating-ca`).
        profile: String,
        /// The CA's subject.
        subject: String,
    },
    /// A station's offline CA (delegated for one batch).
    DelegatedCa {
        /// Its subject.
        subject: String,
    },
    /// A factory station's key.
    Station {
        /// Its subject.
        subject: String,
    },
    /// A device's key.
    Device {
        /// The device serial.
        device: String,
    },
    /// A trusted manufacturer's CA (commissioning).
    Manufacturer {
        /// Its name.
        name: String,
    },
    /// Another certificate of ours (a server, an admin, an OCSP signer).
    Other {
        /// The profile.
        profile: String,
        /// Its subject.
        subject: String,
    },
    /// Not ours: nothing in the registry has this key.
    Unknown,
}

impl Holder {
    /// A short name for reports and JSON.
    pub fn role(&self) -> &'static str {
        match self {
            Self::Ca { .. } => "ca",
            Self::DelegatedCa { .. } => "delegated-ca",
            Self::Station { .. } => "station",
            Self::Device { .. } => "device",
            Self::Manufacturer { .. } => "manufacturer",
            Self::Other { .. } => "other",
            Self::Unknown => "unknown",
        }
    }
}

/// What the registry knows of one key.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// Lowercase hex SHA-256 of the subjectPublicKeyInfo.
    pub spki_sha256: String,
    /// Whose it is.
    pub holder: Holder,
    /// Every certificate of it, newest first.
    pub certificates: Vec<CertRecord>,
    /// Blocked, and why.
    pub blocked: Option<BlockedKey>,
}

/// The profiles whose certificates a key block does not revoke: a CA issued
/// by a root is revoked with the root's revocation list signed again
/// (`iotpki ca revoke`), which needs the root key; a root is not revoked at all.
pub fn spared_profiles() -> Vec<String> {
    [Profile::Root, Profile::IssuingCa, Profile::DelegatingCa].iter().map(|p| p.name().to_string()).collect()
}

/// A hash as given by a user: 64 hex digits, any case (a `sha256:` prefix
/// and colons between bytes are tolerated).
pub fn parse_spki_hash(s: &str) -> Result<String, AuthorityError> {
    let t = s.trim();
    let t = t.strip_prefix("sha256:").unwrap_or(t).replace(':', "").to_ascii_lowercase();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthorityError::malformed(format!(
            "{:?} is not a SHA-256 hash of a subjectPublicKeyInfo (64 hex digits; `openssl pkey -pubout \
             -outform DER | sha256sum` prints one)",
            crate::refusals::clean(s, 80)
        )));
    }
    Ok(t)
}

/// What the registry knows of `spki_sha256`.
pub fn lookup(store: &dyn Store, spki_sha256: &str) -> Result<KeyInfo, AuthorityError> {
    let certificates = store.certificates_by_key(spki_sha256)?;
    let blocked = store.blocked_key(spki_sha256)?;
    let ca = [Profile::Root, Profile::IssuingCa, Profile::DelegatingCa].map(|p| p.name());
    let holder = if let Some(c) = certificates.iter().find(|c| ca.contains(&c.profile.as_str())) {
        Holder::Ca { profile: c.profile.clone(), subject: c.subject.clone() }
    } else if let Some(c) = certificates.first() {
        match (c.profile.as_str(), &c.device_serial) {
            (_, Some(d)) => Holder::Device { device: d.clone() },
            (p, None) if p == Profile::DelegatedCa.name() => Holder::DelegatedCa { subject: c.subject.clone() },
            (p, None) if p == Profile::Station.name() => Holder::Station { subject: c.subject.clone() },
            (p, None) => Holder::Other { profile: p.into(), subject: c.subject.clone() },
        }
    } else if let Some(m) = store.manufacturers()?.into_iter().find(|m| m.spki_sha256 == spki_sha256) {
        Holder::Manufacturer { name: m.name }
    } else {
        Holder::Unknown
    };
    Ok(KeyInfo { spki_sha256: spki_sha256.into(), holder, certificates, blocked })
}

/// Block `keys` (hash and where each was seen) with `reason`; with `revoke`,
/// revoke every good certificate of them (keyCompromise) but a CA's; and
/// withdraw the unused enrollment tokens among `tokens` (SHA-256 of each);
/// in one transaction, every step audited as `actor`'s.
pub fn block(
    store: &dyn Store,
    clock: &dyn Clock,
    keys: &[(String, String)],
    tokens: &[String],
    reason: &str,
    revoke: bool,
    actor: &str,
) -> Result<KeysBlocked, AuthorityError> {
    let now = clock.now();
    let reason = crate::refusals::clean(reason, 200);
    let keys = keys
        .iter()
        .map(|(spki, source)| {
            Ok(BlockedKey {
                spki_sha256: parse_spki_hash(spki)?,
                reason: reason.clone(),
                source: crate::refusals::clean(source, 300),
                blocked_at: now,
                blocked_by: actor.into(),
            })
        })
        .collect::<Result<Vec<_>, AuthorityError>>()?;
    if keys.is_empty() && tokens.is_empty() {
        return Err(AuthorityError::malformed("no key to block and no token to withdraw".into()));
    }
    Ok(store.block_keys(KeyBlock {
        keys,
        tokens: tokens.to_vec(),
        reason,
        at: now,
        actor: actor.into(),
        revoke,
        spare_profiles: spared_profiles(),
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash is taken in the forms tools print it, and anything else is refused with the way to make one.
    #[test]
    fn spki_hashes_are_taken_as_tools_print_them_and_nothing_else() {
        let h = "3F".repeat(32);
        for given in [
            h.clone(),
            format!("sha256:{h}"),
            h.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":"),
            format!("  {h}\n"),
        ] {
            assert_eq!(parse_spki_hash(&given).unwrap(), "3f".repeat(32), "{given}");
        }
        for bad in ["", "3f", &"3f".repeat(33), &"zz".repeat(32), &format!("{h} x")] {
            let e = parse_spki_hash(bad).unwrap_err().to_string();
            assert!(e.contains("64 hex digits") && e.contains("sha256sum"), "{bad}: {e}");
        }
    }
}
