//! The console's HTML: escaping, the page frame, tables and SVG charts.
//!
//! Every page is rendered on the server, whole: it reads without JavaScript,
//! and the charts are inline SVG (no script either). Text that came from the
//! store or the request goes through [`esc`] and nothing else; markup is only
//! ever made here from constants.

use std::fmt::Write as _;

/// `s` safe in HTML text and in a double-quoted attribute.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// `s` as one path segment or query value of a URL (then [`esc`]aped where it lands).
pub(crate) fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn when(t: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => {
            format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", d.year(), u8::from(d.month()), d.day(), d.hour(), d.minute())
        }
        Err(_) => t.to_string(),
    }
}

/// Unix seconds as `YYYY-MM-DD`.
pub(crate) fn day(t: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        Err(_) => t.to_string(),
    }
}

/// The sections of the navigation bar: (path, title).
const NAV: &[(&str, &str)] = &[
    ("/console/", "Overview"),
    ("/console/batches", "Batches"),
    ("/console/stations", "Stations"),
    ("/console/devices", "Devices"),
    ("/console/revocations", "Revocations"),
    ("/console/audit", "Audit"),
    ("/console/tokens", "Tokens"),
    ("/console/claims", "Claims"),
];

/// Who is looking, for the frame.
pub(crate) struct Frame<'a> {
    /// The admin's name.
    pub(crate) admin: &'a str,
    /// `read` or `admin`.
    pub(crate) role: &'a str,
    /// The session's CSRF token (for the sign-out form).
    pub(crate) csrf: &'a str,
    /// Whether the admin came by its certificate (no sign-out then).
    pub(crate) by_certificate: bool,
}

/// A whole page: `title`, the navigation with `active` marked, and `body`.
pub(crate) fn page(title: &str, active: &str, frame: Option<&Frame<'_>>, body: &str) -> String {
    let mut h = String::with_capacity(body.len() + 2048);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    let _ = write!(h, "<title>{} · iotpki console</title>", esc(title));
    h.push_str("<link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head><body>");
    h.push_str("<header><a class=\"brand\" href=\"/console/\">iotpki</a>");
    if let Some(f) = frame {
        h.push_str("<nav>");
        for (path, name) in NAV {
            let cls = if *path == active { " class=\"active\"" } else { "" };
            let _ = write!(h, "<a href=\"{path}\"{cls}>{name}</a>");
        }
        h.push_str("</nav><div class=\"who\">");
        let _ = write!(h, "<span id=\"who\">{} <small>({})</small></span>", esc(f.admin), esc(f.role));
        if !f.by_certificate {
            let _ = write!(
                h,
                "<form method=\"post\" action=\"/console/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\">Sign out</button></form>",
                esc(f.csrf)
            );
        }
        h.push_str("</div>");
    }
    let _ = write!(h, "</header><main><h1>{}</h1>", esc(title));
    h.push_str(body);
    h.push_str("</main></body></html>\n");
    h
}

/// A table: `head` names its columns, each row is already HTML (cells escaped by the caller).
pub(crate) fn table(id: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut h = format!("<table id=\"{}\"><thead><tr>", esc(id));
    for c in head {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(h, "<tr><td colspan=\"{}\" class=\"none\">none</td></tr>", head.len().max(1));
    }
    for r in rows {
        h.push_str("<tr>");
        for c in r {
            let _ = write!(h, "<td>{c}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    h
}

/// A bar chart of `values` (one bar each), `labels[i]` in each bar's tooltip,
/// with its largest value written at the top: inline SVG, no script.
pub(crate) fn bars(id: &str, title: &str, values: &[u64], labels: &[String], color: &str) -> String {
    const W: u64 = 720;
    const H: u64 = 140;
    let n = values.len().max(1) as u64;
    let peak = values.iter().copied().max().unwrap_or(0);
    let max = peak.max(1);
    let bw = (W as f64) / (n as f64);
    let mut h = format!(
        "<figure class=\"chart\"><figcaption>{}</figcaption>\
         <svg id=\"{}\" role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {W} {}\" width=\"100%\" \
         preserveAspectRatio=\"none\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title),
        esc(id),
        esc(title),
        H + 2
    );
    let _ = write!(h, "<line x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\" stroke=\"#999\" stroke-width=\"1\"/>");
    for (i, v) in values.iter().enumerate() {
        if *v == 0 {
            continue;
        }
        let bh = ((*v as f64) / (max as f64) * (H as f64 - 4.0)).max(1.0);
        let x = bw * i as f64;
        let label = labels.get(i).map(String::as_str).unwrap_or("");
        let _ = write!(
            h,
            "<rect x=\"{x:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{bh:.2}\" fill=\"{color}\">\
             <title>{}: {v}</title></rect>",
            H as f64 - bh,
            (bw - 0.5).max(0.5),
            esc(label)
        );
    }
    h.push_str("</svg>");
    let total: u64 = values.iter().sum();
    if total == 0 {
        h.push_str("<p class=\"legend\">none</p></figure>");
    } else {
        let _ = write!(h, "<p class=\"legend\">peak {peak} · total {total}</p></figure>");
    }
    h
}

/// A progress bar of `done` out of `of`.
pub(crate) fn progress(done: u64, of: u64) -> String {
    let pct = if of == 0 { 0.0 } else { (done as f64 / of as f64 * 100.0).min(100.0) };
    format!(
        "<span class=\"progress\" title=\"{done} of {of}\"><span style=\"width:{pct:.1}%\"></span></span> {done} / {of}"
    )
}

/// A message box: `kind` is `ok`, `error` or `note`.
pub(crate) fn notice(kind: &str, text: &str) -> String {
    format!("<p class=\"notice {kind}\" role=\"status\">{}</p>", esc(text))
}

/// The hidden CSRF field of every form.
pub(crate) fn csrf_field(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf))
}

/// The RFC 5280 reasons an operator picks from when revoking.
pub(crate) fn reason_select() -> String {
    let mut h = String::from("<select name=\"reason\">");
    for r in [
        "unspecified",
        "keyCompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
        "certificateHold",
        "privilegeWithdrawn",
    ] {
        let _ = write!(h, "<option value=\"{r}\">{r}</option>");
    }
    h.push_str("</select>");
    h
}

/// The stylesheet (served at `/console/assets/console.css`).
pub(crate) const CSS: &str = include_str!("console.css");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_cannot_make_markup() {
        assert_eq!(esc("<script>\"x\"&'y'</script>"), "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;");
        assert_eq!(esc("a\u{0}b"), "a\u{FFFD}b");
        assert_eq!(url_part("a b/c?d=e&f"), "a%20b%2Fc%3Fd%3De%26f");
        let t = table("t", &["a"], &[vec![esc("<b>")]]);
        assert!(t.contains("<td>&lt;b&gt;</td>"), "{t}");
    }

    #[test]
    fn charts_scale_to_their_peak_and_skip_empty_bars() {
        let svg = bars("c", "t", &[0, 5, 10], &["a".into(), "b".into(), "c".into()], "#000");
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("peak 10 · total 15"));
        assert!(svg.contains("<title>c: 10</title>"));
        assert!(progress(5, 10).contains("width:50.0%"));
        assert!(progress(1, 0).contains("width:0.0%"));
        assert_eq!(day(0), "1970-01-01");
        assert_eq!(when(86_400 + 3_660), "1970-01-02 01:01 UTC");
    }
}
