//! EST over secure CoAP (RFC 9148): the resources, their routes, the
//! content formats and the discovery answer.
//!
//! # Paths
//!
//! RFC 9148 §4.1 keeps EST's `/.well-known/est` root (which a client may
//! use without discovery) with short operation names (`crts`, `sen`,
//! `sren`, `att`, `skg`, `skc`), optionally behind a CA label
//! (`/.well-known/est/<label>/<op>`), and lets a server advertise a shorter
//! root through `/.well-known/core` discovery. We serve both: [`route`]
//! accepts `/.well-known/est/...` and [`SHORT_ROOT`] (`/est/...`), and
//! [`well_known_core`] advertises the short root, which saves bytes in
//! every request of a constrained device.

/// text/plain; charset=utf-8 (diagnostics).
pub const CT_TEXT_PLAIN: u16 = 0;
/// application/link-format (RFC 6690).
pub const CT_LINK_FORMAT: u16 = 40;
/// application/multipart-core (RFC 8710): the server-generated key and
/// certificate (skg, skc).
pub const CT_MULTIPART_CORE: u16 = 62;
/// application/pkcs7-mime; smime-type=server-generated-key.
pub const CT_PKCS7_SERVER_GENERATED_KEY: u16 = 280;
/// application/pkcs7-mime; smime-type=certs-only.
pub const CT_PKCS7_CERTS_ONLY: u16 = 281;
/// application/pkcs8.
pub const CT_PKCS8: u16 = 284;
/// application/csrattrs.
pub const CT_CSRATTRS: u16 = 285;
/// application/pkcs10.
pub const CT_PKCS10: u16 = 286;
/// application/pkix-cert.
pub const CT_PKIX_CERT: u16 = 287;

/// The registered root (RFC 7030 §3.2.2, kept by RFC 9148).
pub const WELL_KNOWN_ROOT: [&str; 2] = [".well-known", "est"];
/// The shorter root this server also serves and advertises in discovery.
pub const SHORT_ROOT: &str = "est";

/// An EST-coaps operation (RFC 9148 §4.1, Table 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `crts` (EST /cacerts): the CA certificates, GET.
    Crts,
    /// `sen` (EST /simpleenroll): POST a PKCS#10 request.
    Sen,
    /// `sren` (EST /simplereenroll): POST a PKCS#10 request.
    Sren,
    /// `att` (EST /csrattrs): GET the CSR attributes.
    Att,
    /// `skg` (EST /serverkeygen): POST, key and certificate back.
    Skg,
    /// `skc` (EST /serverkeygen, certificate as pkix-cert): POST.
    Skc,
}

impl Op {
    /// Every operation, in the RFC's order.
    pub const ALL: [Op; 6] = [Op::Crts, Op::Sen, Op::Sren, Op::Att, Op::Skg, Op::Skc];

    /// The short path name (`crts`, `sen`, ...).
    pub fn short(self) -> &'static str {
        match self {
            Op::Crts => "crts",
            Op::Sen => "sen",
            Op::Sren => "sren",
            Op::Att => "att",
            Op::Skg => "skg",
            Op::Skc => "skc",
        }
    }

    /// The operation of a short path name.
    pub fn from_short(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.short() == name)
    }

    /// The resource type advertised in discovery (`ace.est.crts`, ...).
    pub fn resource_type(self) -> &'static str {
        match self {
            Op::Crts => "ace.est.crts",
            Op::Sen => "ace.est.sen",
            Op::Sren => "ace.est.sren",
            Op::Att => "ace.est.att",
            Op::Skg => "ace.est.skg",
            Op::Skc => "ace.est.skc",
        }
    }

    /// The response content formats advertised in discovery (`ct=`).
    pub fn content_formats(self) -> &'static [u16] {
        match self {
            Op::Crts | Op::Sen | Op::Sren => &[CT_PKCS7_CERTS_ONLY, CT_PKIX_CERT],
            Op::Att => &[CT_CSRATTRS],
            Op::Skg | Op::Skc => &[CT_MULTIPART_CORE],
        }
    }

    /// The method the operation is requested with.
    pub fn method(self) -> crate::msg::Code {
        match self {
            Op::Crts | Op::Att => crate::msg::Code::GET,
            _ => crate::msg::Code::POST,
        }
    }
}

/// A request path that names an EST-coaps resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EstRoute {
    /// The CA label, when the path has one.
    pub label: Option<String>,
    /// The operation.
    pub op: Op,
}

/// The EST resource a request path names: `/.well-known/est/<op>`,
/// `/.well-known/est/<label>/<op>`, `/est/<op>` or `/est/<label>/<op>`.
pub fn route<S: AsRef<str>>(path: &[S]) -> Option<EstRoute> {
    let segs: Vec<&str> = path.iter().map(AsRef::as_ref).collect();
    let rest = match segs.as_slice() {
        [a, b, rest @ ..] if [*a, *b] == WELL_KNOWN_ROOT => rest,
        [a, rest @ ..] if *a == SHORT_ROOT => rest,
        _ => return None,
    };
    match rest {
        [op] => Some(EstRoute { label: None, op: Op::from_short(op)? }),
        [label, op] if !label.is_empty() => {
            Some(EstRoute { label: Some((*label).to_owned()), op: Op::from_short(op)? })
        }
        _ => None,
    }
}

/// Whether a request path is `/.well-known/core` (discovery, RFC 6690).
pub fn is_well_known_core<S: AsRef<str>>(path: &[S]) -> bool {
    path.len() == 2 && path[0].as_ref() == ".well-known" && path[1].as_ref() == "core"
}

struct Link {
    href: String,
    rt: &'static str,
    ct: &'static [u16],
}

impl Link {
    fn render(&self) -> String {
        let mut s = format!("<{}>;rt=\"{}\"", self.href, self.rt);
        match self.ct {
            [] => {}
            [one] => s.push_str(&format!(";ct={one}")),
            many => {
                let list: Vec<String> = many.iter().map(u16::to_string).collect();
                s.push_str(&format!(";ct=\"{}\"", list.join(" ")));
            }
        }
        s
    }

    /// RFC 6690 §4.1 filtering: `name=value`, a trailing `*` matches a
    /// prefix; `rt` matches any of its space-separated values, `ct` any of
    /// the formats. An attribute the link does not have matches nothing.
    fn matches(&self, query: &str) -> bool {
        let Some((name, pattern)) = query.split_once('=') else {
            return true;
        };
        let hit = |value: &str| match pattern.strip_suffix('*') {
            Some(prefix) => value.starts_with(prefix),
            None => value == pattern,
        };
        match name {
            "href" => hit(&self.href),
            "rt" => self.rt.split(' ').any(hit),
            "ct" => self.ct.iter().any(|c| hit(&c.to_string())),
            _ => false,
        }
    }
}

/// The `/.well-known/core` answer (RFC 6690 link format, content format
/// [`CT_LINK_FORMAT`]): the EST root (`rt="ace.est"`) and each operation
/// under [`SHORT_ROOT`], then under each CA label, keeping the links that
/// match every `name=value` query argument (`rt=ace.est*`, `rt=ace.est.sen`,
/// `ct=281`, `href=/est/*`). An empty string when nothing matches.
pub fn well_known_core<S: AsRef<str>>(labels: &[&str], queries: &[S]) -> String {
    let mut links = vec![Link { href: format!("/{SHORT_ROOT}"), rt: "ace.est", ct: &[] }];
    for prefix in std::iter::once(String::new()).chain(labels.iter().map(|l| format!("/{l}"))) {
        for op in Op::ALL {
            links.push(Link {
                href: format!("/{SHORT_ROOT}{prefix}/{}", op.short()),
                rt: op.resource_type(),
                ct: op.content_formats(),
            });
        }
    }
    links
        .iter()
        .filter(|l| queries.iter().all(|q| l.matches(q.as_ref())))
        .map(Link::render)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('/').filter(|x| !x.is_empty()).map(str::to_owned).collect()
    }

    #[test]
    fn routes() {
        assert_eq!(route(&p("/.well-known/est/sren")), Some(EstRoute { label: None, op: Op::Sren }));
        assert_eq!(
            route(&p("/.well-known/est/factory/sen")),
            Some(EstRoute { label: Some("factory".into()), op: Op::Sen })
        );
        assert_eq!(route(&p("/est/crts")), Some(EstRoute { label: None, op: Op::Crts }));
        assert_eq!(route(&p("/est/l1/skc")), Some(EstRoute { label: Some("l1".into()), op: Op::Skc }));
        for bad in [
            "/.well-known/est",
            "/.well-known/est/cacerts",
            "/.well-known/est/simpleenroll",
            "/.well-known/est/a/b/sen",
            "/est",
            "/est/SEN",
            "/.well-known/core",
            "/other/sen",
            "/well-known/est/sen",
        ] {
            assert_eq!(route(&p(bad)), None, "{bad}");
        }
        assert_eq!(route(&[".well-known", "est", "", "sen"]), None);
        for op in Op::ALL {
            assert_eq!(Op::from_short(op.short()), Some(op));
        }
        assert!(is_well_known_core(&p("/.well-known/core")));
        assert!(!is_well_known_core(&p("/.well-known/core/x")));
    }

    #[test]
    fn discovery() {
        let all = well_known_core::<&str>(&[], &[]);
        assert_eq!(
            all,
            concat!(
                "</est>;rt=\"ace.est\",",
                "</est/crts>;rt=\"ace.est.crts\";ct=\"281 287\",",
                "</est/sen>;rt=\"ace.est.sen\";ct=\"281 287\",",
                "</est/sren>;rt=\"ace.est.sren\";ct=\"281 287\",",
                "</est/att>;rt=\"ace.est.att\";ct=285,",
                "</est/skg>;rt=\"ace.est.skg\";ct=62,",
                "</est/skc>;rt=\"ace.est.skc\";ct=62"
            )
        );
        // Every advertised href routes to the operation it advertises.
        for link in all.split(',').skip(1) {
            let href = &link[1..link.find('>').unwrap()];
            let r = route(&p(href)).unwrap();
            assert!(link.contains(&format!("rt=\"{}\"", r.op.resource_type())));
        }
        assert_eq!(well_known_core(&[], &["rt=ace.est*"]), all);
        assert_eq!(well_known_core(&[], &["rt=ace.est.sen"]), "</est/sen>;rt=\"ace.est.sen\";ct=\"281 287\"");
        assert_eq!(
            well_known_core(&["ca2"], &["rt=ace.est.sren"]),
            "</est/sren>;rt=\"ace.est.sren\";ct=\"281 287\",</est/ca2/sren>;rt=\"ace.est.sren\";ct=\"281 287\""
        );
        assert_eq!(well_known_core(&[], &["ct=285"]), "</est/att>;rt=\"ace.est.att\";ct=285");
        assert_eq!(well_known_core(&[], &["rt=core.rd*"]), "");
        assert_eq!(well_known_core(&[], &["if=sensor"]), "");
        assert_eq!(well_known_core(&[], &["href=/est/s*"]).matches('<').count(), 4);
    }
}
