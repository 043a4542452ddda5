//! The console's pages and actions. Each handler is a [`view`] (read) or an
//! [`act`] (change, audited by the [`Admin`] method it calls); what it shows is
//! escaped by [`html`].

use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::response::Response;
use iotpki_authority::admin::Admin;
use iotpki_authority::factory::NewBatch;
use iotpki_authority::revocation::Target;
use iotpki_authority::AuthorityError;
use iotpki_core::name::DeviceSerial;
use iotpki_store::{AuditEntry, AuditFilter, BatchStatus, CertQuery, CertRecord, CertStatus};
use serde::Deserialize;

use super::html::{self, esc, url_part};
use super::{act, view, Ctx, Form, Viewer};

/// Most rows a list page shows at once.
const PAGE_ROWS: u32 = 200;

fn cert_status(r: &CertRecord, now: i64) -> String {
    match r.status {
        CertStatus::Revoked { at, reason } => format!(
            "<span class=\"status-revoked\">revoked</span> {} ({})",
            esc(&html::when(at)),
            esc(iotpki_core::crl::reason_name(reason))
        ),
        CertStatus::Good if r.not_after <= now => "<span class=\"bad\">expired</span>".into(),
        CertStatus::Good if r.replaced_by.is_some() => "renewed".into(),
        CertStatus::Good => "<span class=\"status-good\">good</span>".into(),
    }
}

fn field<'f>(f: &'f Form, name: &str) -> Result<&'f str, AuthorityError> {
    f.get(name).map(|s| s.trim()).ok_or_else(|| AuthorityError::malformed(format!("the form has no {name:?}")))
}

fn confirmed(f: &Form) -> Result<(), AuthorityError> {
    if f.get("confirm").map(String::as_str) == Some("yes") {
        Ok(())
    } else {
        Err(AuthorityError::malformed("tick the confirmation box to do this".into()))
    }
}

fn reason(f: &Form) -> Result<u8, AuthorityError> {
    iotpki_core::crl::reason_code(f.get("reason").map_or("unspecified", |s| s.trim()))
        .map_err(|e| AuthorityError::malformed(e.to_string()))
}

fn back(href: &str, text: &str) -> String {
    format!("<p><a href=\"{}\">{}</a></p>", esc(href), esc(text))
}

fn audit_rows(entries: &[AuditEntry]) -> Vec<Vec<String>> {
    entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                esc(&html::when(e.event.at)),
                esc(&e.event.actor),
                format!("<code>{}</code>", esc(&e.event.action)),
                esc(&e.event.target),
                esc(&e.event.detail),
            ]
        })
        .collect()
}

const AUDIT_HEAD: &[&str] = &["#", "at", "actor", "action", "target", "detail"];

// ---- overview -------------------------------------------------------------

/// `GET /console/`: devices by state, the expiry timeline, issuance and refusals per day.
pub(crate) async fn overview(ctx: Ctx) -> Response {
    view(ctx, "Fleet overview", "/console/", |adm, _| {
        let o = adm.fleet_overview()?;
        let s = &o.states;
        let mut h = String::from("<section class=\"cards\" id=\"states\">");
        for (k, n, id) in [
            ("devices", s.total, "total"),
            ("born", s.born, "born"),
            ("commissioned", s.commissioned, "commissioned"),
            ("active", s.active, "active"),
            ("expiring ≤30 d", s.expiring, "expiring"),
            ("expired", s.expired, "expired"),
            ("revoked", s.revoked, "revoked"),
        ] {
            let _ = write!(
                h,
                "<div class=\"card\" id=\"state-{id}\"><span class=\"n\">{n}</span><span class=\"k\">{k}</span></div>"
            );
        }
        h.push_str("</section>");
        let today = o.issued_per_day.last().map_or(0, |d| d.day);
        let labels: Vec<String> = (0..o.expiring_per_day.len()).map(|d| html::day(today + 86_400 * d as i64)).collect();
        h.push_str(&html::bars(
            "expiry",
            "Certificates expiring per day, next 365 days",
            &o.expiring_per_day,
            &labels,
            "#c77c02",
        ));
        let per_day = |id: &str, title: &str, v: &[iotpki_store::DayCount], color: &str| {
            let values: Vec<u64> = v.iter().map(|d| d.count).collect();
            let labels: Vec<String> = v.iter().map(|d| html::day(d.day)).collect();
            html::bars(id, title, &values, &labels, color)
        };
        h.push_str(&per_day("issued", "Certificates issued per day, last 30 days", &o.issued_per_day, "#1f5fbf"));
        h.push_str(&per_day("renewed", "Renewals per day, last 30 days", &o.renewed_per_day, "#1e7b34"));
        h.push_str(&per_day("refused", "Refusals per day, last 30 days", &o.refused_per_day, "#b3261e"));
        h.push_str(
            "<p>The audit chain is verified on the <a href=\"/console/audit/verify\">audit page</a> \
             (it walks every entry).</p>",
        );
        Ok(h)
    })
    .await
}

// ---- batches --------------------------------------------------------------

/// `GET /console/batches`: every batch with its quota progress.
pub(crate) async fn batches(ctx: Ctx) -> Response {
    view(ctx, "Batches", "/console/batches", |adm, v| {
        let rows: Vec<Vec<String>> = adm
            .batches()?
            .iter()
            .map(|b| {
                vec![
                    format!("<a href=\"/console/batches/{}\">{}</a>", url_part(&b.id), esc(&b.id)),
                    esc(&b.product),
                    match b.status {
                        BatchStatus::Open => "open".into(),
                        BatchStatus::Closed => "closed".into(),
                    },
                    html::progress(b.issued, b.quota),
                    b.refused.to_string(),
                    if b.flagged > 0 { format!("<span class=\"bad\">{}</span>", b.flagged) } else { "0".into() },
                    format!("{} – {}", esc(&html::day(b.valid_from)), esc(&html::day(b.valid_until))),
                    b.allowlist.to_string(),
                    esc(&profile_text(&b.profile)),
                ]
            })
            .collect();
        let mut h = html::table(
            "batches",
            &["batch", "product", "status", "born / quota", "refused", "flagged", "issues", "allowlist", "profile"],
            &rows,
        );
        if v.role == iotpki_authority::console::ConsoleRole::Admin {
            let _ = write!(
                h,
                "<h2>Create a batch</h2><form class=\"action\" method=\"post\" action=\"/console/batches\">{}\
                 <label>Id (empty: generated)<input name=\"id\" maxlength=\"64\"></label>\
                 <label>Product<input name=\"product\" required maxlength=\"200\"></label>\
                 <label>Quota<input name=\"quota\" type=\"number\" min=\"1\" required></label>\
                 <label>From (RFC 3339, empty: now)<input name=\"from\" placeholder=\"2027-01-01T00:00:00Z\"></label>\
                 <label>Until (RFC 3339, empty: 90 days later)<input name=\"until\"></label>\
                 <label>Serial allowlist, one per line<textarea name=\"serials\" rows=\"6\" required></textarea></label>\
                 <label>Profile<select name=\"profile\"><option value=\"device\">device (birth certificate)</option>\
                 <option value=\"matter-dac\">matter-dac (Matter DAC)</option></select></label>\
                 <label>Matter vendor id (matter-dac only)<input name=\"vendor_id\" maxlength=\"4\" placeholder=\"FFF1\"></label>\
                 <label>Matter product id (matter-dac only)<input name=\"product_id\" maxlength=\"4\" placeholder=\"8000\"></label>\
                 {}<label><span><input type=\"checkbox\" name=\"tpm_attestation\" value=\"required\"> \
                 Births must prove their key is in the TPM registered for their serial (fixed with the batch)\
                 </span></label><button type=\"submit\">Create batch</button></form>",
                html::csrf_field(&v.csrf),
                template_select(&adm.template_names(), "not for matter-dac"),
            );
        }
        Ok(h)
    })
    .await
}

/// `GET /console/batches/ID`: one batch, its flags, and closing it.
pub(crate) async fn batch(ctx: Ctx, Path(id): Path<String>) -> Response {
    view(ctx, "Batch", "/console/batches", move |adm, v| {
        let b = adm.batch(&id)?;
        let flags = adm.batch_flags(&id)?;
        let mut h = format!(
            "<h2>{}</h2><table id=\"batch\"><tbody>\
             <tr><th>product</th><td>{}</td></tr><tr><th>status</th><td>{}</td></tr>\
             <tr><th>born / quota</th><td>{}</td></tr><tr><th>refused</th><td>{}</td></tr>\
             <tr><th>flagged</th><td>{}</td></tr><tr><th>issues</th><td>{} – {}</td></tr>\
             <tr><th>allowlist</th><td>{} serials</td></tr><tr><th>created</th><td>{}</td></tr>\
             <tr><th>profile</th><td>{}</td></tr><tr><th>template</th><td>{}</td></tr>\
             <tr><th>TPM attestation</th><td>{}</td></tr></tbody></table>",
            esc(&b.id),
            esc(&b.product),
            if b.status == BatchStatus::Open { "open" } else { "closed" },
            html::progress(b.issued, b.quota),
            b.refused,
            b.flagged,
            esc(&html::when(b.valid_from)),
            esc(&html::when(b.valid_until)),
            b.allowlist,
            esc(&html::when(b.created_at)),
            esc(&profile_text(&b.profile)),
            esc(b.template.as_deref().unwrap_or("the label's")),
            if b.tpm_attestation { "required" } else { "no" },
        );
        let rows: Vec<Vec<String>> =
            flags.iter().map(|(serial, f)| vec![format!("<code>{}</code>", esc(serial)), esc(f.name())]).collect();
        h.push_str("<h2>Flagged certificates</h2>");
        h.push_str(&html::table("flags", &["certificate", "flag"], &rows));
        if b.status == BatchStatus::Open && v.role == iotpki_authority::console::ConsoleRole::Admin {
            let _ = write!(
                h,
                "<h2>Close it</h2><form class=\"action\" method=\"post\" action=\"/console/batches/{}/close\">{}\
                 <label><span><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> \
                 Close batch {}: it issues nothing more</span></label>\
                 <button class=\"danger\" type=\"submit\">Close batch</button></form>",
                url_part(&b.id),
                html::csrf_field(&v.csrf),
                esc(&b.id)
            );
        }
        Ok(h)
    })
    .await
}

/// The form field naming a certificate template (docs/templates.md): empty
/// for the label's; `note` says where it does not apply.
fn template_select(names: &[String], note: &str) -> String {
    let mut options = String::from("<option value=\"\" selected>the label's (else device)</option>");
    for n in names {
        let _ = write!(options, "<option value=\"{0}\">{0}</option>", esc(n));
    }
    let note = if note.is_empty() { String::new() } else { format!(", {note}") };
    format!("<label>Certificate template (docs/templates.md{note})<select name=\"template\">{options}</select></label>")
}

/// A batch's profile as the console shows it: `device`, or `matter-dac (VID FFF1, PID 8000)`.
fn profile_text(p: &iotpki_store::BatchProfile) -> String {
    match p {
        iotpki_store::BatchProfile::Device => "device".into(),
        iotpki_store::BatchProfile::MatterDac { vendor_id, product_id } => {
            format!("matter-dac (VID {vendor_id:04X}, PID {product_id:04X})")
        }
    }
}

fn parse_time(what: &str, s: &str) -> Result<Option<i64>, AuthorityError> {
    if s.is_empty() {
        return Ok(None);
    }
    crate::admin::parse_time(what, s).map(Some)
}

/// `POST /console/batches`: create one.
pub(crate) async fn create_batch(ctx: Ctx, body: Body) -> Response {
    let now = iotpki_authority::Clock::now(ctx.a.clock().as_ref());
    act(ctx, body, "Batch created", "/console/batches", move |adm, _, f| {
        let r = (|| {
            let from = parse_time("from", f.get("from").map_or("", |s| s.trim()))?.unwrap_or(now);
            let until = parse_time("until", f.get("until").map_or("", |s| s.trim()))?.unwrap_or(from + 90 * 86_400);
            let quota = field(f, "quota")?
                .parse::<u64>()
                .map_err(|_| AuthorityError::malformed("the quota is a whole number".into()))?;
            let id = f.get("id").map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
            let opt = |k: &str| f.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
            let profile =
                iotpki_authority::factory::batch_profile(opt("profile"), opt("vendor_id"), opt("product_id"))?;
            Ok(NewBatch {
                id,
                product: field(f, "product")?.to_string(),
                allowlist: field(f, "serials")?.to_string(),
                quota,
                from,
                until,
                profile,
                template: opt("template").map(str::to_string),
                tpm_attestation: opt("tpm_attestation") == Some("required"),
            })
        })();
        let nb = r.map_err(|e| adm.refused(e, "batch.create", ""))?;
        let b = adm.create_batch(nb)?;
        Ok(format!(
            "{}{}",
            html::notice("ok", &format!("Batch {} created: quota {}, {} serials allowed.", b.id, b.quota, b.allowlist)),
            back(&format!("/console/batches/{}", url_part(&b.id)), "Open the batch")
        ))
    })
    .await
}

/// `POST /console/batches/ID/close`.
pub(crate) async fn close_batch(ctx: Ctx, Path(id): Path<String>, body: Body) -> Response {
    act(ctx, body, "Batch closed", "/console/batches", move |adm, _, f| {
        confirmed(f).map_err(|e| adm.refused(e, "batch.close", &format!("batch:{id}")))?;
        adm.close_batch(&id)?;
        Ok(format!(
            "{}{}",
            html::notice("ok", &format!("Batch {id} is closed: it issues nothing more.")),
            back("/console/batches", "Back to the batches")
        ))
    })
    .await
}

// ---- stations -------------------------------------------------------------

/// `GET /console/stations`: every station and when it was last heard of.
pub(crate) async fn stations(ctx: Ctx) -> Response {
    view(ctx, "Stations", "/console/stations", |adm, _| {
        let rows: Vec<Vec<String>> = adm
            .stations_activity()?
            .iter()
            .map(|s| {
                vec![
                    esc(&s.name),
                    match s.revoked_at {
                        Some(at) => format!("<span class=\"status-revoked\">revoked</span> {}", esc(&html::when(at))),
                        None => "<span class=\"status-good\">active</span>".into(),
                    },
                    s.last_activity.map_or_else(|| "never".into(), |t| esc(&html::when(t))),
                    s.births.to_string(),
                    esc(&s.batches.join(", ")),
                ]
            })
            .collect();
        Ok(html::table("stations", &["station", "status", "last activity", "births", "batches"], &rows))
    })
    .await
}

// ---- devices --------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct SerialQuery {
    serial: Option<String>,
}

/// `GET /console/devices?serial=S`: the search form, or the device's page.
pub(crate) async fn devices(ctx: Ctx, Query(q): Query<SerialQuery>) -> Response {
    if let Some(s) = q.serial.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        return super::redirect(&format!("/console/devices/{}", url_part(s)));
    }
    view(ctx, "Devices", "/console/devices", |adm, _| {
        let recent = adm.certificates(CertQuery { limit: Some(50), ..Default::default() })?;
        let mut h = String::from(
            "<form class=\"filters\" method=\"get\" action=\"/console/devices\">\
             <label>Device serial<input name=\"serial\" id=\"serial\" required maxlength=\"128\"></label>\
             <button type=\"submit\">Find</button></form><h2>Latest certificates</h2>",
        );
        let now = adm.now();
        let rows: Vec<Vec<String>> = recent
            .iter()
            .map(|c| {
                vec![
                    c.device_serial.as_deref().map_or_else(String::new, |d| {
                        format!("<a href=\"/console/devices/{}\">{}</a>", url_part(d), esc(d))
                    }),
                    format!("<code>{}</code>", esc(&c.serial)),
                    esc(&c.profile),
                    esc(&html::when(c.issued_at)),
                    cert_status(c, now),
                ]
            })
            .collect();
        h.push_str(&html::table("latest", &["device", "certificate", "profile", "issued", "status"], &rows));
        Ok(h)
    })
    .await
}

/// `GET /console/devices/SERIAL`: its certificates, owner, revocation and audit entries.
pub(crate) async fn device(ctx: Ctx, Path(serial): Path<String>) -> Response {
    view(ctx, "Device", "/console/devices", move |adm, v| {
        let d = adm.device_view(&serial)?;
        let now = adm.now();
        let is_admin = v.role == iotpki_authority::console::ConsoleRole::Admin;
        let mut h = format!("<h2 id=\"device\">{}</h2>", esc(&serial));
        let rows: Vec<Vec<String>> = d
            .certificates
            .iter()
            .map(|c| {
                let mut row = vec![
                    format!("<code>{}</code>", esc(&c.serial)),
                    esc(&c.profile),
                    esc(&c.ca),
                    esc(&html::when(c.not_before)),
                    esc(&html::when(c.not_after)),
                    format!("<span class=\"cert-status\" data-serial=\"{}\">{}</span>", esc(&c.serial), cert_status(c, now)),
                ];
                let revocable = c.status == CertStatus::Good && c.not_after > now;
                row.push(if is_admin && revocable {
                    format!(
                        "<form class=\"inline\" method=\"post\" action=\"/console/certificates/{}/revoke\">{}{}\
                         <label class=\"inline\"><span><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> confirm</span></label>\
                         <button class=\"danger\" type=\"submit\" data-revoke=\"{}\">Revoke</button></form>",
                        url_part(&c.serial),
                        html::csrf_field(&v.csrf),
                        html::reason_select(),
                        esc(&c.serial)
                    )
                } else {
                    String::new()
                });
                row
            })
            .collect();
        h.push_str("<h2>Certificates</h2>");
        h.push_str(&html::table(
            "certificates",
            &["serial", "profile", "CA", "not before", "not after", "status", ""],
            &rows,
        ));
        h.push_str("<h2>Owner</h2>");
        match &d.ownership {
            Some(o) => {
                let _ = write!(
                    h,
                    "<table id=\"ownership\"><tbody><tr><th>how</th><td>{}</td></tr><tr><th>since</th><td>{}</td></tr>\
                     <tr><th>status</th><td>{}</td></tr><tr><th>manufacturing CA key</th><td><code>{}</code></td></tr>\
                     <tr><th>birth certificate</th><td><code>{}</code></td></tr></tbody></table>",
                    esc(&o.via),
                    esc(&html::when(o.since)),
                    esc(o.status.as_str()),
                    esc(o.manufacturer_spki.as_deref().unwrap_or("")),
                    esc(o.birth_sha256.as_deref().unwrap_or("")),
                );
            }
            None => h.push_str("<p>No owner recorded here (not claimed, nor taken by voucher).</p>"),
        }
        if let Some(v) = &d.voucher {
            h.push_str(&voucher_chain(&v.body));
        }
        if is_admin && d.certificates.iter().any(|c| c.status == CertStatus::Good) {
            let _ = write!(
                h,
                "<h2>Revoke the device</h2><form class=\"action\" method=\"post\" action=\"/console/devices/{}/revoke\">{}\
                 <label>Reason{}</label><label><span><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> \
                 Revoke every certificate of {} (and its ownership)</span></label>\
                 <button class=\"danger\" type=\"submit\" id=\"revoke-device\">Revoke device</button></form>",
                url_part(&serial),
                html::csrf_field(&v.csrf),
                html::reason_select(),
                esc(&serial)
            );
        }
        h.push_str("<h2>Audit entries</h2>");
        h.push_str(&html::table("audit", AUDIT_HEAD, &audit_rows(&d.audit)));
        Ok(h)
    })
    .await
}

/// The owners a device's voucher hands it through, oldest first.
fn voucher_chain(body: &[u8]) -> String {
    let v = match iotpki_core::voucher::Voucher::decode(body) {
        Ok(v) => v,
        Err(e) => return html::notice("error", &format!("The voucher held for it does not decode: {e}")),
    };
    let rows: Vec<Vec<String>> = v
        .entries()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            vec![
                (i + 1).to_string(),
                format!("<code>{}</code>", esc(&hex::encode(e.signer_kid.as_ref()))),
                format!("<code>{}</code>", esc(&iotpki_core::keys::spki_fingerprint(&e.next_owner))),
                esc(&html::when(e.created_at)),
                esc(&html::when(e.expires_at)),
            ]
        })
        .collect();
    format!(
        "<h2>Voucher chain</h2>{}",
        html::table("vouchers", &["#", "signed by (key id)", "next owner (key)", "made", "expires"], &rows)
    )
}

/// `POST /console/certificates/SERIAL/revoke`.
pub(crate) async fn revoke_cert(ctx: Ctx, Path(serial): Path<String>, body: Body) -> Response {
    act(ctx, body, "Revoked", "/console/devices", move |adm, _, f| {
        let r = confirmed(f).and_then(|()| reason(f));
        let code = r.map_err(|e| adm.refused(e, "revoke", &serial))?;
        let device = adm.certificate(&serial)?.device_serial;
        let done = adm.revoke(Target::Serial(&serial), code)?;
        let mut h =
            html::notice("ok", &format!("Revoked {} ({}).", done.join(", "), iotpki_core::crl::reason_name(code)));
        if let Some(d) = device {
            h.push_str(&back(&format!("/console/devices/{}", url_part(&d)), "Back to the device"));
        }
        Ok(h)
    })
    .await
}

/// `POST /console/devices/SERIAL/revoke`: every certificate of the device.
pub(crate) async fn revoke_device(ctx: Ctx, Path(serial): Path<String>, body: Body) -> Response {
    act(ctx, body, "Revoked", "/console/devices", move |adm, _, f| {
        let r = confirmed(f).and_then(|()| reason(f)).and_then(|code| {
            let sn =
                DeviceSerial::parse(&serial).map_err(|e| AuthorityError::malformed(format!("device serial: {e}")))?;
            Ok((code, sn))
        });
        let (code, sn) = r.map_err(|e| adm.refused(e, "revoke", &format!("device:{serial}")))?;
        let done = adm.revoke(Target::Device(&sn), code)?;
        Ok(format!(
            "{}{}",
            html::notice(
                "ok",
                &format!(
                    "Revoked {} certificate(s) of {serial} ({}): {}.",
                    done.len(),
                    iotpki_core::crl::reason_name(code),
                    done.join(", ")
                )
            ),
            back(&format!("/console/devices/{}", url_part(&serial)), "Back to the device")
        ))
    })
    .await
}

// ---- revocations ----------------------------------------------------------

/// `GET /console/revocations`: CRL and OCSP state per CA, and the latest revocations.
pub(crate) async fn revocations(ctx: Ctx) -> Response {
    view(ctx, "Revocations", "/console/revocations", |adm, _| {
        let rows: Vec<Vec<String>> = adm
            .ca_status()?
            .iter()
            .map(|c| {
                let shards = if c.shards.is_empty() {
                    "one CRL".to_string()
                } else {
                    c.shards.iter().map(|(s, n)| format!("#{s}: {n}")).collect::<Vec<_>>().join(", ")
                };
                vec![
                    esc(&c.ca),
                    c.revoked.to_string(),
                    c.crl_number.to_string(),
                    c.this_update.map_or_else(|| "not made yet".into(), |t| esc(&html::when(t))),
                    c.next_update.map_or_else(String::new, |t| esc(&html::when(t))),
                    esc(&shards),
                ]
            })
            .collect();
        let mut h = html::table(
            "cas",
            &["CA", "revoked", "CRL number", "this update", "next update", "CRL shards (entries)"],
            &rows,
        );
        h.push_str(
            "<p>OCSP answers from the same records at <code>/ocsp</code>: a revocation is answered \
             revoked at once, without waiting for the next CRL.</p><h2>Latest revocations</h2>",
        );
        let latest = adm.audit_search(&AuditFilter {
            action_prefix: Some("revoke".into()),
            actor: None,
            target: None,
            before_seq: None,
            limit: 50,
        })?;
        h.push_str(&html::table("latest-revocations", AUDIT_HEAD, &audit_rows(&latest)));
        Ok(h)
    })
    .await
}

// ---- audit ----------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    action: Option<String>,
    actor: Option<String>,
    target: Option<String>,
    before: Option<u64>,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(|s| s.chars().take(200).collect())
}

/// `GET /console/audit?action=&actor=&target=&before=`: the log, newest first, filtered.
pub(crate) async fn audit(ctx: Ctx, Query(q): Query<AuditQuery>) -> Response {
    view(ctx, "Audit log", "/console/audit", move |adm, _| {
        let filter = AuditFilter {
            action_prefix: nonempty(&q.action),
            actor: nonempty(&q.actor),
            target: nonempty(&q.target),
            before_seq: q.before,
            limit: PAGE_ROWS,
        };
        let entries = adm.audit_search(&filter)?;
        let val = |s: &Option<String>| esc(s.as_deref().unwrap_or(""));
        let mut h = format!(
            "<form class=\"filters\" method=\"get\" action=\"/console/audit\">\
             <label>Action starts with<input name=\"action\" value=\"{}\"></label>\
             <label>Actor<input name=\"actor\" value=\"{}\"></label>\
             <label>Target<input name=\"target\" value=\"{}\"></label>\
             <button type=\"submit\">Filter</button></form>\
             <p><a href=\"/console/audit/verify\" id=\"verify\">Verify the whole chain</a></p>",
            val(&filter.action_prefix),
            val(&filter.actor),
            val(&filter.target)
        );
        h.push_str(&html::table("audit", AUDIT_HEAD, &audit_rows(&entries)));
        if entries.len() == PAGE_ROWS as usize {
            if let Some(last) = entries.last() {
                let mut next = format!("/console/audit?before={}", last.seq);
                for (k, v) in [("action", &filter.action_prefix), ("actor", &filter.actor), ("target", &filter.target)]
                {
                    if let Some(v) = v {
                        let _ = write!(next, "&{k}={}", url_part(v));
                    }
                }
                let _ = write!(h, "<p><a href=\"{}\" id=\"older\">Older entries</a></p>", esc(&next));
            }
        }
        Ok(h)
    })
    .await
}

/// `GET /console/audit/verify`: walk the chain and say whether it holds.
pub(crate) async fn audit_verify(ctx: Ctx) -> Response {
    view(ctx, "Audit chain", "/console/audit", |adm, _| {
        Ok(match adm.verify_audit()? {
            Ok(rep) => format!(
                "<p class=\"notice ok\" id=\"chain\">The audit chain holds: {} entries, head <code>{}</code>.</p>",
                rep.entries,
                esc(&rep.head)
            ),
            Err(broken) => {
                format!("<p class=\"notice error\" id=\"chain\">The audit chain is BROKEN: {}</p>", esc(&broken))
            }
        })
    })
    .await
}

// ---- tokens and claims -----------------------------------------------------

/// `GET /console/tokens`: the form for a one-time enrollment token.
pub(crate) async fn tokens(ctx: Ctx) -> Response {
    view(ctx, "Enrollment tokens", "/console/tokens", |adm, v| Ok(token_form(adm, v))).await
}

fn token_form(adm: &Admin<'_>, v: &Viewer) -> String {
    if v.role != iotpki_authority::console::ConsoleRole::Admin {
        return "<p>This session may only read.</p>".into();
    }
    format!(
        "<form class=\"action\" method=\"post\" action=\"/console/tokens\">{}\
         <label>Device serial<input name=\"serial\" required maxlength=\"128\"></label>\
         <label>Lifetime, seconds (empty: the configured default)<input name=\"ttl_secs\" type=\"number\" min=\"1\"></label>\
         {}<button type=\"submit\">Create token</button></form>",
        html::csrf_field(&v.csrf),
        template_select(&adm.template_names(), ""),
    )
}

/// `POST /console/tokens`: make one and show it, once.
pub(crate) async fn create_token(ctx: Ctx, body: Body) -> Response {
    act(ctx, body, "Enrollment token", "/console/tokens", |adm, v, f| {
        let ttl = match f.get("ttl_secs").map(|s| s.trim()).filter(|s| !s.is_empty()) {
            Some(t) => Some(t.parse::<u64>().map_err(|_| {
                adm.refused(AuthorityError::malformed("the lifetime is a whole number of seconds".into()), "token.create", "")
            })?),
            None => None,
        };
        let serial = field(f, "serial").map_err(|e| adm.refused(e, "token.create", ""))?.to_string();
        let template = f.get("template").map(|s| s.trim()).filter(|s| !s.is_empty());
        let token = adm.create_token_with_template(&serial, ttl, template)?;
        Ok(format!(
            "{}<p>Token for <code>{}</code> (shown once; it is not kept):</p><p class=\"secret\"><code id=\"token\">{}</code></p>{}",
            html::notice("ok", "Token created."),
            esc(&serial),
            esc(&token),
            token_form(adm, v)
        ))
    })
    .await
}

/// `GET /console/claims`: the form to claim devices by their births file.
pub(crate) async fn claims(ctx: Ctx) -> Response {
    view(ctx, "Claim devices", "/console/claims", |_, v| Ok(claim_form(v))).await
}

fn claim_form(v: &Viewer) -> String {
    if v.role != iotpki_authority::console::ConsoleRole::Admin {
        return "<p>This session may only read.</p>".into();
    }
    format!(
        "<form class=\"action\" method=\"post\" action=\"/console/claims\">{}\
         <p>Paste the births file the manufacturer gave with the devices \
         (<code>iotpki factory export-births</code> on its side): each device is bound to its birth \
         certificate and to a manufacturing CA this authority trusts.</p>\
         <label>Births file<textarea name=\"births\" rows=\"10\" required></textarea></label>\
         <button type=\"submit\">Claim devices</button></form>",
        html::csrf_field(&v.csrf)
    )
}

/// `POST /console/claims`.
pub(crate) async fn claim(ctx: Ctx, body: Body) -> Response {
    act(ctx, body, "Claim devices", "/console/claims", |adm, v, f| {
        let births = field(f, "births").map_err(|e| adm.refused(e, "device.claim", ""))?.to_string();
        let (listed, new) = adm.claim_births(&births)?;
        Ok(format!(
            "{}{}",
            html::notice("ok", &format!("Claimed {new} new device(s) of {listed} listed.")),
            claim_form(v)
        ))
    })
    .await
}
