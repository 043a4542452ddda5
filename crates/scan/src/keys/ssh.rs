//! OpenSSH's "openssh-key-v1" private key files (the body of PEM "OPENSSH
//! PRIVATE KEY").
//!
//! The public key sits in the file unencrypted even when the private part is
//! encrypted, so the SPKI is always derivable; when the private part is in
//! the clear it is checked against the public key (garbage is not reported).

use super::decode::{self, Curve, Derived};

const MAGIC: &[u8] = b"openssh-key-v1\0";

/// SSH wire reader (RFC 4251 strings, uint32, mpint).
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (h, t) = self.0.split_first_chunk::<4>()?;
        self.0 = t;
        Some(u32::from_be_bytes(*h))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        if n > self.0.len() {
            return None;
        }
        let (s, t) = self.0.split_at(n);
        self.0 = t;
        Some(s)
    }

    /// A positive mpint's magnitude.
    fn mpint(&mut self) -> Option<&'a [u8]> {
        let s = self.string()?;
        if s.first().is_some_and(|&b| b >= 0x80) {
            return None;
        }
        let skip = s.iter().take_while(|&&b| b == 0).count();
        let m = &s[skip..];
        (!m.is_empty()).then_some(m)
    }
}

fn curve_of(name: &[u8]) -> Option<Curve> {
    match name {
        b"nistp256" => Some(Curve::P256),
        b"nistp384" => Some(Curve::P384),
        b"nistp521" => Some(Curve::P521),
        _ => None,
    }
}

/// The algorithm and SPKI of an SSH public key blob.
fn public(blob: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut w = Wire(blob);
    let kind = w.string()?;
    let out = match kind {
        b"ssh-ed25519" => {
            let pk: [u8; 32] = w.string()?.try_into().ok()?;
            ed25519_dalek::VerifyingKey::from_bytes(&pk).ok()?;
            ("ed25519".to_string(), decode::ed25519_spki(&pk))
        }
        b"ssh-rsa" => {
            let e = w.mpint()?;
            let n = w.mpint()?;
            if n.len() < 64 || n[n.len() - 1] & 1 == 0 || e[e.len() - 1] & 1 == 0 {
                return None;
            }
            let bits = n.len() * 8 - n[0].leading_zeros() as usize;
            (format!("rsa-{bits}"), decode::rsa_spki(n, e))
        }
        _ if kind.starts_with(b"ecdsa-sha2-") => {
            let curve = curve_of(w.string()?)?;
            if kind[11..] != *w_name(curve) {
                return None;
            }
            let point = curve.check_point(w.string()?)?;
            (curve.name().to_string(), decode::ec_spki(curve.oid(), &point))
        }
        _ => return None,
    };
    w.0.is_empty().then_some(out)
}

fn w_name(curve: Curve) -> &'static [u8] {
    match curve {
        Curve::P256 => b"nistp256",
        Curve::P384 => b"nistp384",
        Curve::P521 => b"nistp521",
    }
}

/// The SPKI of the clear private section's key, if it is a whole key.
fn private(section: &[u8]) -> Option<Vec<u8>> {
    let mut w = Wire(section);
    if w.u32()? != w.u32()? {
        return None;
    }
    match w.string()? {
        b"ssh-ed25519" => {
            let pk: [u8; 32] = w.string()?.try_into().ok()?;
            let sk = w.string()?;
            if sk.len() != 64 || sk[32..] != pk {
                return None;
            }
            let mine = decode::ed25519_public(&sk[..32])?;
            (mine == pk).then(|| decode::ed25519_spki(&mine))
        }
        b"ssh-rsa" => {
            let n = w.mpint()?;
            let e = w.mpint()?;
            let _d = w.mpint()?;
            let _iqmp = w.mpint()?;
            let p = w.mpint()?;
            let q = w.mpint()?;
            decode::rsa_checked(n, e, &[p, q])?.spki
        }
        kind if kind.starts_with(b"ecdsa-sha2-") => {
            let curve = curve_of(w.string()?)?;
            let q = w.string()?;
            let scalar = w.mpint()?;
            let mine = curve.public_from_scalar(scalar)?;
            (curve.check_point(q)? == mine).then(|| decode::ec_spki(curve.oid(), &mine))
        }
        _ => None,
    }
}

/// An openssh-key-v1 blob (the decoded PEM body).
pub(crate) fn openssh(blob: &[u8]) -> Option<Derived> {
    let mut w = Wire(blob.strip_prefix(MAGIC)?);
    let cipher = w.string()?;
    let kdf = w.string()?;
    let _kdf_options = w.string()?;
    if w.u32()? != 1 {
        return None;
    }
    let (algorithm, spki) = public(w.string()?)?;
    let section = w.string()?;
    if !w.0.is_empty() {
        return None;
    }
    if cipher == b"none" {
        let mine = private(section)?;
        let note = (mine != spki).then(|| {
            "the public key section does not match the private key: SPKI derived from the private key".to_string()
        });
        return Some(Derived { algorithm, spki: Some(mine), encrypted: false, note });
    }
    let cipher = String::from_utf8_lossy(cipher);
    let kdf = String::from_utf8_lossy(kdf);
    Some(Derived {
        algorithm,
        spki: Some(spki),
        encrypted: true,
        note: Some(format!("private part encrypted ({cipher}, kdf {kdf}): SPKI from the file's clear public key")),
    })
}
