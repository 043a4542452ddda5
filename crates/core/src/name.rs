//! Distinguished names: device serial numbers and the subjects we build.

use std::fmt;

use const_oid::db::rfc4519;
use der::asn1::{PrintableStringRef, SetOfVec, Utf8StringRef};
use der::{Any, Tag, Tagged};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

use crate::Error;

/// A device serial number: 1 to 64 characters of the PrintableString set
/// (`A-Z a-z 0-9 ' ( ) + , - . / : = ?` and space, not at either end), as
/// X.520 `serialNumber` requires. Parsed once, trusted after.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceSerial(String);

impl DeviceSerial {
    /// Check and wrap a device serial.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.is_empty() || s.len() > 64 {
            return Err(Error::BadName(format!("device serial must be 1 to 64 characters, got {}", s.len())));
        }
        if s.starts_with(' ') || s.ends_with(' ') {
            return Err(Error::BadName("device serial must not start or end with a space".into()));
        }
        if let Some(c) = s.chars().find(|c| !is_printable(*c)) {
            return Err(Error::BadName(format!("device serial contains {c:?}, outside the PrintableString set")));
        }
        Ok(Self(s.to_owned()))
    }

    /// The serial as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_printable(c: char) -> bool {
    c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c)
}

fn atv(oid: const_oid::ObjectIdentifier, value: Any) -> Result<RelativeDistinguishedName, Error> {
    let set =
        SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }]).map_err(|e| Error::BadName(e.to_string()))?;
    Ok(RelativeDistinguishedName(set))
}

fn utf8(s: &str) -> Result<Any, Error> {
    if s.is_empty() || s.chars().count() > 64 {
        return Err(Error::BadName(format!("attribute value {s:?} must be 1 to 64 characters")));
    }
    Ok(Any::from(Utf8StringRef::new(s).map_err(|e| Error::BadName(e.to_string()))?))
}

/// Builds a subject from the most significant RDN (country/organisation) down.
#[derive(Default)]
pub struct NameBuilder {
    rdns: Vec<RelativeDistinguishedName>,
}

impl NameBuilder {
    /// `O=` (UTF8String).
    pub fn organization(mut self, o: &str) -> Result<Self, Error> {
        self.rdns.push(atv(rfc4519::O, utf8(o)?)?);
        Ok(self)
    }
    /// `OU=` (UTF8String).
    pub fn organizational_unit(mut self, ou: &str) -> Result<Self, Error> {
        self.rdns.push(atv(rfc4519::OU, utf8(ou)?)?);
        Ok(self)
    }
    /// `CN=` (UTF8String).
    pub fn common_name(mut self, cn: &str) -> Result<Self, Error> {
        self.rdns.push(atv(rfc4519::CN, utf8(cn)?)?);
        Ok(self)
    }
    /// `serialNumber=` (PrintableString, as X.520 requires).
    pub fn serial_number(mut self, sn: &DeviceSerial) -> Result<Self, Error> {
        let v = PrintableStringRef::new(sn.as_str()).map_err(|e| Error::BadName(e.to_string()))?;
        self.rdns.push(atv(rfc4519::SERIAL_NUMBER, Any::from(v))?);
        Ok(self)
    }
    /// Any attribute as a UTF8String of 1 to 64 characters (a template's `L=`, `ST=`, ...).
    pub fn utf8_attribute(mut self, oid: const_oid::ObjectIdentifier, v: &str) -> Result<Self, Error> {
        self.rdns.push(atv(oid, utf8(v)?)?);
        Ok(self)
    }
    /// Any attribute as a PrintableString of 1 to 64 characters (a template's `C=`).
    pub fn printable_attribute(mut self, oid: const_oid::ObjectIdentifier, v: &str) -> Result<Self, Error> {
        if v.is_empty() || v.len() > 64 {
            return Err(Error::BadName(format!("attribute value {v:?} must be 1 to 64 characters")));
        }
        let p = PrintableStringRef::new(v).map_err(|e| Error::BadName(format!("{v:?}: {e}")))?;
        self.rdns.push(atv(oid, Any::from(p))?);
        Ok(self)
    }
    /// The name.
    pub fn build(self) -> Name {
        RdnSequence(self.rdns)
    }
}

/// The subject of a device certificate: `O=org, CN=serial, serialNumber=serial`.
pub fn device_subject(org: &str, serial: &DeviceSerial) -> Result<Name, Error> {
    Ok(NameBuilder::default().organization(org)?.common_name(serial.as_str())?.serial_number(serial)?.build())
}

/// The namespace a batch's offline births live in: `O=org, OU=batch`. A
/// station's delegated CA is constrained to it.
pub fn batch_namespace(org: &str, batch: &str) -> Result<Name, Error> {
    Ok(NameBuilder::default().organization(org)?.organizational_unit(batch)?.build())
}

/// The subject of a device born offline in a batch: `O=org, OU=batch, CN=serial, serialNumber=serial`.
pub fn batch_device_subject(org: &str, batch: &str, serial: &DeviceSerial) -> Result<Name, Error> {
    Ok(NameBuilder::default()
        .organization(org)?
        .organizational_unit(batch)?
        .common_name(serial.as_str())?
        .serial_number(serial)?
        .build())
}

/// Whether the CA certificate `ca` may name `subject` under its permitted
/// directoryName subtrees (RFC 5280 4.2.1.10: some subtree's RDNs are a
/// prefix of `subject`'s). A CA without nameConstraints, or without permitted
/// directoryName subtrees, permits nothing here: this is for delegated CAs,
/// which always carry them (the allowlist signed into the delegation).
pub fn permitted_by(ca: &x509_cert::Certificate, subject: &Name) -> Result<bool, Error> {
    use der::Decode as _;
    use x509_cert::ext::pkix::constraints::name::NameConstraints;
    use x509_cert::ext::pkix::name::GeneralName;
    let oid = <NameConstraints as const_oid::AssociatedOid>::OID;
    let Some(e) = ca.tbs_certificate.extensions.as_deref().unwrap_or_default().iter().find(|e| e.extn_id == oid) else {
        return Ok(false);
    };
    let nc = NameConstraints::from_der(e.extn_value.as_bytes()).map_err(|e| Error::der("nameConstraints", e))?;
    Ok(nc.permitted_subtrees.iter().flatten().any(|t| match &t.base {
        GeneralName::DirectoryName(base) => {
            base.0.len() <= subject.0.len() && equivalent(base, &RdnSequence(subject.0[..base.0.len()].to_vec()))
        }
        _ => false,
    }))
}

/// The first value of attribute `oid` in `name`, if it is a string type we read.
pub fn attribute(name: &Name, oid: const_oid::ObjectIdentifier) -> Option<String> {
    name.0.iter().flat_map(|rdn| rdn.0.iter()).find(|a| a.oid == oid).and_then(|a| any_string(&a.value))
}

fn any_string(v: &Any) -> Option<String> {
    match v.tag() {
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String => {
            std::str::from_utf8(v.value()).ok().map(str::to_owned)
        }
        _ => None,
    }
}

/// Every `serialNumber` value in `name` (a well-formed device subject has exactly one).
pub fn serial_numbers(name: &Name) -> Vec<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|a| a.oid == rfc4519::SERIAL_NUMBER)
        .filter_map(|a| any_string(&a.value))
        .collect()
}

/// The RFC 4514 string of `name`, exactly as `x509_cert`'s `Display` writes
/// it, without its linear search of the whole OID-name database for every
/// attribute (a measurable cost on the issue path). Attributes outside our
/// short table fall back to `Display`.
pub fn to_rfc4514(name: &Name) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64);
    for (i, rdn) in name.0.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.0.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let key = SHORT_NAMES.iter().find(|(oid, _)| *oid == atv.oid).map(|(_, k)| *k);
            let (Some(key), Some(val)) = (key, any_string(&atv.value)) else {
                let _ = write!(out, "{atv}");
                continue;
            };
            out.push_str(key);
            out.push('=');
            let mut it = val.char_indices().peekable();
            while let Some((k, c)) = it.next() {
                match c {
                    '#' if k == 0 => out.push_str("\\#"),
                    ' ' if k == 0 || it.peek().is_none() => out.push_str("\\ "),
                    '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                        out.push('\\');
                        out.push(c);
                    }
                    '\x00'..='\x1f' | '\x7f' => {
                        let _ = write!(out, "\\{:02x}", c as u8);
                    }
                    _ => out.push(c),
                }
            }
        }
    }
    out
}

/// The attributes our subjects use, with the (uppercased) shortest names the
/// OID database gives them.
const SHORT_NAMES: [(const_oid::ObjectIdentifier, &str); 7] = [
    (rfc4519::CN, "CN"),
    (rfc4519::O, "O"),
    (rfc4519::OU, "OU"),
    (rfc4519::C, "C"),
    (rfc4519::L, "L"),
    (rfc4519::ST, "ST"),
    (rfc4519::SERIAL_NUMBER, "SERIALNUMBER"),
];

/// True when `a` and `b` name the same subject: the same RDNs in the same
/// order, each with the same attribute types and the same string values,
/// whatever string type encodes them (PrintableString or UTF8String; RFC 5280
/// section 7.1 asks for comparison after string preparation, and a client
/// such as OpenSSL may pick another string type than we did). Values are
/// compared exactly otherwise: stricter than caseIgnoreMatch, never looser.
pub fn equivalent(a: &Name, b: &Name) -> bool {
    fn canon(n: &Name) -> Option<Vec<Vec<(const_oid::ObjectIdentifier, String)>>> {
        n.0.iter()
            .map(|rdn| {
                let mut v: Vec<_> =
                    rdn.0.iter().map(|atv| any_string(&atv.value).map(|s| (atv.oid, s))).collect::<Option<_>>()?;
                v.sort();
                Some(v)
            })
            .collect()
    }
    a == b || matches!((canon(a), canon(b)), (Some(x), Some(y)) if x == y)
}

/// One attribute value made ready for comparison as RFC 5280 section 7.1
/// asks: strings (PrintableString, UTF8String, IA5String, BMPString) after
/// the LDAP StringPrep steps of RFC 4518 that matter for caseIgnoreMatch
/// (whitespace and control characters mapped, insignificant spaces removed,
/// case folded); any other type kept as its DER, compared byte for byte.
/// Unicode normalisation (NFKC) is not applied: two values that differ only
/// by it compare unequal, which refuses a match, never invents one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PreparedValue {
    /// A string value, prepared.
    Text(String),
    /// A value of another type: its tag and content octets.
    Raw(u8, Vec<u8>),
}

/// A distinguished name made ready for comparison (see [`PreparedValue`]):
/// RDNs in order, the attributes of each RDN sorted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PreparedName(pub Vec<Vec<(const_oid::ObjectIdentifier, PreparedValue)>>);

fn prepare_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        // RFC 4518 2.2: soft hyphen, zero-width and other "mapped to nothing" characters go;
        // every whitespace and control character becomes a space.
        if matches!(c, '\u{00AD}' | '\u{1806}' | '\u{034F}' | '\u{180B}'..='\u{180D}' | '\u{FE00}'..='\u{FE0F}' | '\u{FFFC}' | '\u{200B}')
        {
            continue;
        }
        if c.is_whitespace() || c.is_control() {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.extend(c.to_lowercase());
    }
    out
}

fn prepare_value(v: &Any) -> PreparedValue {
    let text = match v.tag() {
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String => {
            std::str::from_utf8(v.value()).ok().map(str::to_owned)
        }
        Tag::BmpString => {
            let b = v.value();
            (b.len() % 2 == 0)
                .then(|| {
                    char::decode_utf16(b.chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]])))
                        .collect::<Result<String, _>>()
                        .ok()
                })
                .flatten()
        }
        _ => None,
    };
    match text {
        Some(t) => PreparedValue::Text(prepare_text(&t)),
        None => PreparedValue::Raw(v.tag().octet(), v.value().to_vec()),
    }
}

/// Prepare one RDN (see [`PreparedName`]).
pub fn prepare_rdn(rdn: &RelativeDistinguishedName) -> Vec<(const_oid::ObjectIdentifier, PreparedValue)> {
    let mut v: Vec<_> = rdn.0.iter().map(|a| (a.oid, prepare_value(&a.value))).collect();
    v.sort();
    v
}

/// Prepare `name` for comparison (see [`PreparedName`]).
pub fn prepare(name: &Name) -> PreparedName {
    PreparedName(name.0.iter().map(prepare_rdn).collect())
}

/// True when `a` and `b` are the same name under the comparison RFC 5280
/// section 7.1 asks for (case-insensitive, insignificant spaces ignored,
/// whatever string type encodes a value). Looser than [`equivalent`]: use it
/// where the RFC's rule is the one that must hold (path validation).
pub fn rfc5280_equal(a: &Name, b: &Name) -> bool {
    a == b || prepare(a) == prepare(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_rules() {
        assert!(DeviceSerial::parse("SN-0001/a:b").is_ok());
        assert!(DeviceSerial::parse("").is_err());
        assert!(DeviceSerial::parse(" x").is_err());
        assert!(DeviceSerial::parse("a_b").is_err());
        assert!(DeviceSerial::parse("é").is_err());
        assert!(DeviceSerial::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn device_subject_carries_serial() {
        let sn = DeviceSerial::parse("SN42").unwrap();
        let n = device_subject("Acme", &sn).unwrap();
        assert_eq!(serial_numbers(&n), vec!["SN42".to_string()]);
        assert_eq!(attribute(&n, rfc4519::CN).as_deref(), Some("SN42"));
        assert_eq!(n.to_string(), "SERIALNUMBER=SN42,CN=SN42,O=Acme");
    }

    #[test]
    fn fast_string_form_matches_x509_cert() {
        let hard = [" lead", "trail ", "#hash", "a+b,c;d<e>f\"g\\h", "tab\there", "plain", "x=y"];
        for v in hard {
            let n = NameBuilder::default()
                .organization(v)
                .unwrap()
                .organizational_unit("Unit")
                .unwrap()
                .common_name(v)
                .unwrap()
                .serial_number(&DeviceSerial::parse("S-1 (a)").unwrap())
                .unwrap()
                .build();
            assert_eq!(to_rfc4514(&n), n.to_string(), "{v:?}");
        }
        // An attribute outside the short table falls back to Display.
        let mut n = NameBuilder::default().common_name("x").unwrap().build();
        n.0.push(atv(rfc4519::DESCRIPTION, utf8("desc").unwrap()).unwrap());
        assert_eq!(to_rfc4514(&n), n.to_string());
    }

    #[test]
    fn equivalence_ignores_string_type_only() {
        let sn = DeviceSerial::parse("SN42").unwrap();
        let a = device_subject("Acme", &sn).unwrap();
        // Same values, but O as PrintableString.
        let o = Any::from(PrintableStringRef::new("Acme").unwrap());
        let mut b = a.clone();
        b.0[0] = atv(rfc4519::O, o).unwrap();
        assert_ne!(a, b);
        assert!(equivalent(&a, &b));
        let c = device_subject("Acme", &DeviceSerial::parse("SN43").unwrap()).unwrap();
        assert!(!equivalent(&a, &c));
        let d = device_subject("acme", &sn).unwrap();
        assert!(!equivalent(&a, &d));
        let mut reordered = a.clone();
        reordered.0.reverse();
        assert!(!equivalent(&a, &reordered));
    }

    #[test]
    fn rfc5280_comparison_ignores_case_spacing_and_string_type_not_order() {
        let a = NameBuilder::default().organization("Maker").unwrap().common_name("S-1").unwrap().build();
        let b = NameBuilder::default().organization("  maKER ").unwrap().common_name("s-1").unwrap().build();
        assert!(rfc5280_equal(&a, &b));
        assert!(!equivalent(&a, &b), "the exact comparison stays exact");
        let mut c = a.clone();
        c.0[0] = atv(rfc4519::O, Any::from(PrintableStringRef::new("MAKER").unwrap())).unwrap();
        assert!(rfc5280_equal(&a, &c));
        let inner = NameBuilder::default().organization("Ma ker").unwrap().common_name("S-1").unwrap().build();
        let spaced = NameBuilder::default().organization("Ma   ker").unwrap().common_name("S-1").unwrap().build();
        assert!(rfc5280_equal(&inner, &spaced));
        assert!(!rfc5280_equal(&a, &inner));
        let mut reordered = a.clone();
        reordered.0.reverse();
        assert!(!rfc5280_equal(&a, &reordered));
        let other = NameBuilder::default().organization("Maker").unwrap().common_name("S-2").unwrap().build();
        assert!(!rfc5280_equal(&a, &other));
    }
}
