//! PKCS#11 URIs (RFC 7512): `pkcs11:token=LABEL;object=NAME;id=%01%02`.
//!
//! We read the path attributes that select a token and an object, and the
//! `module-path` query attribute. A PIN inside the URI (`pin-value`) is
//! refused: PINs come from a file or the environment, never from something
//! that ends up in a config file or a process list.

use std::fmt;

use crate::HsmError;

/// A parsed PKCS#11 URI: which token, and optionally which object in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token label.
    pub token: Option<String>,
    /// `manufacturer=`: the token manufacturer.
    pub manufacturer: Option<String>,
    /// `serial=`: the token serial number.
    pub serial: Option<String>,
    /// `model=`: the token model.
    pub model: Option<String>,
    /// `object=`: the object label (CKA_LABEL).
    pub object: Option<String>,
    /// `id=`: the object identifier (CKA_ID), raw bytes.
    pub id: Option<Vec<u8>>,
    /// `type=`: `private`, `public`, `cert`, `secret-key` or `data`.
    pub object_type: Option<String>,
    /// `?module-path=`: the PKCS#11 module to load.
    pub module_path: Option<String>,
}

fn bad(uri: &str, why: impl fmt::Display) -> HsmError {
    HsmError::Uri(format!("{uri:?}: {why} (expected e.g. pkcs11:token=MyToken;object=my-key)"))
}

/// Percent-decode `s` (RFC 3986 section 2.1) into bytes.
fn pct_decode(uri: &str, s: &str) -> Result<Vec<u8>, HsmError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or_else(|| bad(uri, "a % must be followed by two hex digits"))?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(bad(uri, format!("bad percent escape %{}", String::from_utf8_lossy(hex))));
            }
            let hex = std::str::from_utf8(hex).map_err(|_| bad(uri, "bad percent escape"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad(uri, format!("bad percent escape %{hex}")))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn pct_text(uri: &str, name: &str, s: &str) -> Result<String, HsmError> {
    String::from_utf8(pct_decode(uri, s)?).map_err(|_| bad(uri, format!("{name} is not UTF-8 once decoded")))
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn pct_encode(bytes: &[u8], out: &mut String) {
    for &c in bytes {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
}

impl Pkcs11Uri {
    /// Parse a `pkcs11:` URI.
    pub fn parse(uri: &str) -> Result<Self, HsmError> {
        let rest = uri
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("pkcs11:"))
            .map(|_| &uri[7..])
            .ok_or_else(|| bad(uri, "does not start with pkcs11:"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut u = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or_else(|| bad(uri, format!("attribute {attr:?} has no '='")))?;
            let slot = match k {
                "token" => &mut u.token,
                "manufacturer" => &mut u.manufacturer,
                "serial" => &mut u.serial,
                "model" => &mut u.model,
                "object" => &mut u.object,
                "type" => &mut u.object_type,
                "id" => {
                    if u.id.is_some() {
                        return Err(bad(uri, "id appears twice"));
                    }
                    u.id = Some(pct_decode(uri, v)?);
                    continue;
                }
                // Library and slot attributes narrow the search further; we
                // select by token, so they are accepted and not used.
                "library-manufacturer"
                | "library-description"
                | "library-version"
                | "slot-manufacturer"
                | "slot-description"
                | "slot-id" => continue,
                k if k.starts_with("x-") => continue,
                k => return Err(bad(uri, format!("unknown attribute {k:?}"))),
            };
            if slot.is_some() {
                return Err(bad(uri, format!("{k} appears twice")));
            }
            *slot = Some(pct_text(uri, k, v)?);
        }
        if let Some(t) = &u.object_type {
            if !matches!(t.as_str(), "private" | "public" | "cert" | "secret-key" | "data") {
                return Err(bad(uri, format!("unknown object type {t:?}")));
            }
        }
        for attr in query.unwrap_or_default().split('&').filter(|a| !a.is_empty()) {
            let (k, v) =
                attr.split_once('=').ok_or_else(|| bad(uri, format!("query attribute {attr:?} has no '='")))?;
            match k {
                "module-path" => u.module_path = Some(pct_text(uri, k, v)?),
                "pin-value" | "pin-source" => {
                    return Err(HsmError::Uri(
                        "a PKCS#11 URI must not carry the PIN: give it with --pin-file FILE or $IOTPKI_PIN".into(),
                    ))
                }
                "module-name" => continue,
                k if k.starts_with("x-") => continue,
                k => return Err(bad(uri, format!("unknown query attribute {k:?}"))),
            }
        }
        Ok(u)
    }

    /// The token label, which we require to find a token.
    pub fn token_label(&self) -> Result<&str, HsmError> {
        self.token.as_deref().ok_or_else(|| {
            HsmError::Uri(format!("{self} names no token: add token=LABEL (softhsm2-util --show-slots lists labels)"))
        })
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::from("pkcs11:");
        let mut first = true;
        let texts = [
            ("token", &self.token),
            ("manufacturer", &self.manufacturer),
            ("serial", &self.serial),
            ("model", &self.model),
            ("object", &self.object),
        ];
        for (k, v) in texts {
            if let Some(v) = v {
                if !first {
                    s.push(';');
                }
                first = false;
                s.push_str(k);
                s.push('=');
                pct_encode(v.as_bytes(), &mut s);
            }
        }
        if let Some(id) = &self.id {
            if !first {
                s.push(';');
            }
            first = false;
            s.push_str("id=");
            for b in id {
                s.push_str(&format!("%{b:02X}"));
            }
        }
        if let Some(t) = &self.object_type {
            if !first {
                s.push(';');
            }
            s.push_str("type=");
            pct_encode(t.as_bytes(), &mut s);
        }
        if let Some(m) = &self.module_path {
            s.push_str("?module-path=");
            pct_encode(m.as_bytes(), &mut s);
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7512_examples() {
        // RFC 7512 section 3.3 examples (adapted to the attributes we read).
        let u = Pkcs11Uri::parse("pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=").unwrap();
        assert_eq!(u.token.as_deref(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(u.manufacturer.as_deref(), Some("Snake Oil, Inc."));
        assert_eq!(u.object.as_deref(), Some("my-certificate"));
        assert_eq!(u.object_type.as_deref(), Some("cert"));
        assert_eq!(u.id.as_deref(), Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..]));
        assert_eq!(u.serial.as_deref(), Some(""));
        let u = Pkcs11Uri::parse("pkcs11:object=my-key;type=private?module-path=/usr/lib/p11.so").unwrap();
        assert_eq!(u.module_path.as_deref(), Some("/usr/lib/p11.so"));
        assert!(u.token_label().unwrap_err().to_string().contains("token=LABEL"));
        assert_eq!(Pkcs11Uri::parse("pkcs11:").unwrap(), Pkcs11Uri::default());
        // Library and slot attributes and vendor x- attributes are accepted.
        assert!(Pkcs11Uri::parse("pkcs11:token=a;slot-id=3;library-manufacturer=x;x-vendor=1").is_ok());
        // Upper-case scheme (RFC 3986 schemes are case-insensitive).
        assert_eq!(Pkcs11Uri::parse("PKCS11:token=a").unwrap().token.as_deref(), Some("a"));
    }

    #[test]
    fn display_round_trips() {
        let u = Pkcs11Uri {
            token: Some("iotpki ca; test/1".into()),
            object: Some("iotpki-root".into()),
            id: Some(vec![0, 1, 0xfe]),
            object_type: Some("private".into()),
            module_path: Some("/usr/lib/softhsm/libsofthsm2.so".into()),
            ..Default::default()
        };
        let s = u.to_string();
        assert!(
            s.starts_with("pkcs11:token=iotpki%20ca%3B%20test%2F1;object=iotpki-root;id=%00%01%FE;type=private"),
            "{s}"
        );
        assert_eq!(Pkcs11Uri::parse(&s).unwrap(), u);
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for (uri, why) in [
            ("file:token=a", "does not start with pkcs11:"),
            ("pkcs11:token", "has no '='"),
            ("pkcs11:token=a;token=b", "appears twice"),
            ("pkcs11:tokn=a", "unknown attribute \"tokn\""),
            ("pkcs11:token=a%2", "two hex digits"),
            ("pkcs11:token=a%zz", "bad percent escape"),
            ("pkcs11:token=a%+1", "bad percent escape %+1"),
            ("pkcs11:token=%ff", "not UTF-8"),
            ("pkcs11:object=a;type=key", "unknown object type"),
            ("pkcs11:token=a?pin-value=1234", "must not carry the PIN"),
            ("pkcs11:token=a?pin-source=file:/p", "must not carry the PIN"),
            ("pkcs11:token=a?foo=1", "unknown query attribute"),
        ] {
            let e = Pkcs11Uri::parse(uri).unwrap_err().to_string();
            assert!(e.contains(why), "{uri}: {e}");
        }
    }
}
