//! The fleet console: HTML pages under `/console/` on the TLS listener.
//!
//! Who may look:
//! - a **session** opened by a one-time link (`iotpki admin console-link`,
//!   [`Authority::console_login`]): a random 256-bit id in a cookie that is
//!   `__Host-` prefixed, `HttpOnly`, `Secure` and `SameSite=Strict`, kept only
//!   in this server's memory (so it works on no other authority, nor after a
//!   restart), ended when idle or too old (`[console]` in the config), and
//!   checked against the admin's certificate on every request;
//! - or an **admin certificate** presented over mutual TLS, as for the admin API.
//!
//! Every form that changes something carries a CSRF token bound to the
//! session (or to the certificate) and is refused without it, as is a
//! request whose `Origin` is not this server; a `read` session may only
//! read. Actions go through the same [`Admin`] methods as the admin API and
//! are audited the same way, with the admin's name. Pages are rendered whole
//! on the server ([`html`]): reading needs no JavaScript, and the responses
//! forbid scripts altogether (Content-Security-Policy).

mod html;
mod pages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use iotpki_authority::admin::Admin;
use iotpki_authority::config::ConsoleConfig;
use iotpki_authority::console::ConsoleRole;
use iotpki_authority::{Authority, AuthorityError};
use sha2::{Digest, Sha256};

use crate::http::{blocking, PeerChain};

/// The session cookie's name (`__Host-`: Secure, Path=/, no Domain).
pub(crate) const COOKIE: &str = "__Host-iotpki-console";

/// Sessions and the key that binds certificate callers' CSRF tokens.
pub(crate) struct Console {
    sessions: Mutex<HashMap<String, Session>>,
    cfg: ConsoleConfig,
    /// Random per process: a CSRF token of a certificate caller is an HMAC of its serial.
    cert_key: [u8; 32],
}

struct Session {
    admin: String,
    /// The admin certificate good at login (checked again on every request).
    cert_serial: String,
    role: ConsoleRole,
    csrf: String,
    opened: Instant,
    seen: Instant,
}

/// Who is looking at a page.
#[derive(Clone)]
pub(crate) struct Viewer {
    /// The admin's name.
    pub(crate) admin: String,
    /// What it may do.
    pub(crate) role: ConsoleRole,
    /// The token its forms carry.
    pub(crate) csrf: String,
    /// Came by certificate (else by session).
    pub(crate) by_certificate: bool,
    /// A session's admin certificate.
    cert_serial: String,
    /// The certificate chain, for a certificate caller.
    chain: PeerChain,
}

impl Viewer {
    fn frame(&self) -> html::Frame<'_> {
        html::Frame {
            admin: &self.admin,
            role: self.role.name(),
            csrf: &self.csrf,
            by_certificate: self.by_certificate,
        }
    }

    /// The admin it acts as, checked now (blocks: the store).
    fn admin<'a>(&self, a: &'a Authority) -> Result<Admin<'a>, AuthorityError> {
        if self.by_certificate {
            a.admin(self.chain.chain())
        } else {
            a.console_admin(&self.admin, &self.cert_serial)
        }
    }
}

fn random_id() -> String {
    let mut raw = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// HMAC-SHA256 (RFC 2104) of `msg` under a 32-byte key.
fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner = Sha256::new().chain_update(ipad).chain_update(msg).finalize();
    Sha256::new().chain_update(opad).chain_update(inner).finalize().into()
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Console {
    pub(crate) fn new(cfg: ConsoleConfig) -> Self {
        let mut cert_key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut cert_key);
        Self { sessions: Mutex::new(HashMap::new()), cfg, cert_key }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A poisoned map still holds whole sessions: each insert or remove is one call.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idle(&self) -> Duration {
        Duration::from_secs(self.cfg.idle_timeout_secs.max(1))
    }

    fn lifetime(&self) -> Duration {
        Duration::from_secs(self.cfg.session_lifetime_secs.max(1))
    }

    /// Open a session; its cookie value.
    fn open(&self, admin: String, cert_serial: String, role: ConsoleRole) -> String {
        let id = random_id();
        let now = Instant::now();
        let mut s = self.lock();
        let (idle, life) = (self.idle(), self.lifetime());
        s.retain(|_, v| now.duration_since(v.seen) < idle && now.duration_since(v.opened) < life);
        while s.len() >= self.cfg.max_sessions.max(1) {
            let oldest = s.iter().min_by_key(|(_, v)| v.opened).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => s.remove(&k),
                None => break,
            };
        }
        s.insert(sha256_hex(&id), Session { admin, cert_serial, role, csrf: random_id(), opened: now, seen: now });
        id
    }

    /// The session of cookie value `id`, if it is open (and mark it used).
    fn session(&self, id: &str) -> Option<(String, ConsoleRole, String, String)> {
        let key = sha256_hex(id);
        let now = Instant::now();
        let mut s = self.lock();
        let live = match s.get(&key) {
            Some(v) => now.duration_since(v.seen) < self.idle() && now.duration_since(v.opened) < self.lifetime(),
            None => return None,
        };
        if !live {
            s.remove(&key);
            return None;
        }
        let v = s.get_mut(&key)?;
        v.seen = now;
        Some((v.admin.clone(), v.role, v.csrf.clone(), v.cert_serial.clone()))
    }

    fn close(&self, id: &str) -> Option<String> {
        self.lock().remove(&sha256_hex(id)).map(|s| s.admin)
    }

    fn cert_csrf(&self, serial: &[u8]) -> String {
        hex::encode(hmac(&self.cert_key, serial))
    }
}

/// The session cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// Who is calling: the session's admin, else an admin certificate's (checked
/// in [`Viewer::admin`] when the page is made), else nobody (the sign-in page).
fn viewer(c: &Console, headers: &HeaderMap, chain: &PeerChain) -> Option<Viewer> {
    if let Some(id) = cookie(headers) {
        if let Some((admin, role, csrf, cert_serial)) = c.session(&id) {
            return Some(Viewer { admin, role, csrf, by_certificate: false, cert_serial, chain: PeerChain::default() });
        }
    }
    let leaf = chain.leaf()?;
    let name = iotpki_core::profile::cert_info(leaf)
        .ok()
        .and_then(|i| iotpki_core::name::attribute(&i.cert.tbs_certificate.subject, COMMON_NAME))
        .unwrap_or_default();
    Some(Viewer {
        admin: name,
        role: ConsoleRole::Admin,
        csrf: c.cert_csrf(leaf),
        by_certificate: true,
        cert_serial: String::new(),
        chain: chain.clone(),
    })
}

const COMMON_NAME: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");

/// Headers every console answer carries: no script, no framing, no
/// referrer to another site (a login link is in a URL; the browser's Origin
/// on our own forms stays, where `no-referrer` would make it `null`), no caching.
pub(crate) async fn headers(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    // What the page cost this server, for the operator's browser tools and the tests.
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={:.1}", started.elapsed().as_secs_f64() * 1000.0)) {
        h.insert("server-timing", v);
    }
    r
}

fn html_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A page for someone not signed in (401), or refused (403).
fn refusal_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "{}<p>Ask an operator with access to the authority for a console link:</p>\
         <pre><code>iotpki admin console-link --dir DIR --admin NAME</code></pre>\
         <p>or present an admin certificate (mutual TLS).</p>",
        html::notice("error", message)
    );
    html_response(status, html::page("Sign in", "", None, &body))
}

fn error_page(v: &Viewer, active: &str, e: &AuthorityError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(error = %e, "console page failed");
    }
    let body = html::notice("error", &e.public_message());
    html_response(status, html::page("Refused", active, Some(&v.frame()), &body))
}

/// A request's parts every handler needs.
pub(crate) struct Ctx {
    a: Arc<Authority>,
    c: Arc<Console>,
    headers: HeaderMap,
    chain: PeerChain,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let a = parts.extensions.get::<Arc<Authority>>().cloned();
        let c = parts.extensions.get::<Arc<Console>>().cloned();
        let (Some(a), Some(c)) = (a, c) else {
            return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response());
        };
        let chain = parts.extensions.get::<PeerChain>().cloned().unwrap_or_default();
        Ok(Ctx { a, c, headers: parts.headers.clone(), chain })
    }
}

/// Render a page for whoever is looking: `f` makes its body with the admin
/// (on a worker: it reads the store). Someone not signed in gets the sign-in page.
async fn view<F>(ctx: Ctx, title: &'static str, active: &'static str, f: F) -> Response
where
    F: FnOnce(&Admin<'_>, &Viewer) -> Result<String, AuthorityError> + Send + 'static,
{
    let Some(v) = viewer(&ctx.c, &ctx.headers, &ctx.chain) else {
        return refusal_page(StatusCode::UNAUTHORIZED, "Sign in with a console link.");
    };
    let a = ctx.a.clone();
    let v2 = v.clone();
    let r = blocking(move || {
        let adm = v2.admin(&a)?;
        f(&adm, &v2)
    })
    .await
    .and_then(|r| r);
    match r {
        Ok(body) => html_response(StatusCode::OK, html::page(title, active, Some(&v.frame()), &body)),
        Err(e) if v.by_certificate && e.is_refusal() => {
            refusal_page(StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::FORBIDDEN), &e.public_message())
        }
        Err(e) => error_page(&v, active, &e),
    }
}

/// A form's fields (`application/x-www-form-urlencoded`).
pub(crate) type Form = HashMap<String, String>;

fn parse_form(body: &[u8]) -> Result<Form, AuthorityError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| AuthorityError::malformed(format!("the form could not be read: {e}")))?;
    let mut f = Form::new();
    for (k, v) in pairs {
        if f.insert(k.clone(), v).is_some() {
            return Err(AuthorityError::malformed(format!("the form field {k:?} is given twice")));
        }
    }
    Ok(f)
}

/// Whether a request's `Origin` (when the browser sent one) is this server.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    origin.to_str().is_ok_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(&format!("https://{host}")))
}

/// Do an action for whoever is looking: a signed-in admin of role `admin`
/// (a session's certificate, or the admin certificate presented, checked
/// now), from this origin, whose form carries its CSRF token. `f` makes the
/// result page's body (on a worker). The body is read only once the caller
/// may act: the gate hands the forms that carry lists (a batch's allowlist, a
/// births file, up to 32 MiB) on unread, and anyone else is answered before a
/// byte of them is buffered.
async fn act<F>(ctx: Ctx, body: Body, title: &'static str, active: &'static str, f: F) -> Response
where
    F: FnOnce(&Admin<'_>, &Viewer, &Form) -> Result<String, AuthorityError> + Send + 'static,
{
    let Some(v) = viewer(&ctx.c, &ctx.headers, &ctx.chain) else {
        return refusal_page(StatusCode::UNAUTHORIZED, "Sign in with a console link.");
    };
    let refuse = |why: &str| {
        html_response(StatusCode::FORBIDDEN, html::page(title, active, Some(&v.frame()), &html::notice("error", why)))
    };
    if !same_origin(&ctx.headers) {
        return refuse("This request came from another site: refused.");
    }
    if v.role != ConsoleRole::Admin {
        let (a, name) = (ctx.a.clone(), v.admin.clone());
        let why = "this session may only read (console link of role read)";
        // Audited as every refusal; the page says so whatever the store did.
        let _ = blocking(move || a.console_refused(&name, active, why)).await;
        return refuse("This session may only read (console link of role read).");
    }
    let (a, v2) = (ctx.a.clone(), v.clone());
    if let Err(e) = blocking(move || v2.admin(&a).map(drop)).await.and_then(|r| r) {
        return error_page(&v, active, &e);
    }
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                return html_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    html::page(title, active, Some(&v.frame()), &html::notice("error", "This form is too large.")),
                );
            }
            return error_page(&v, active, &AuthorityError::malformed(format!("the form could not be read: {e}")));
        }
    };
    let form = match parse_form(&body) {
        Ok(f) => f,
        Err(e) => return error_page(&v, active, &e),
    };
    if !form.get("csrf").is_some_and(|t| same(t, &v.csrf)) {
        return refuse("This form carries no valid CSRF token (reload the page and try again).");
    }
    let a = ctx.a.clone();
    let v2 = v.clone();
    let r = blocking(move || {
        let adm = v2.admin(&a)?;
        f(&adm, &v2, &form)
    })
    .await
    .and_then(|r| r);
    match r {
        Ok(body) => html_response(StatusCode::OK, html::page(title, active, Some(&v.frame()), &body)),
        Err(e) => error_page(&v, active, &e),
    }
}

/// The console's routes (merged into the TLS router when `[console] enabled`).
pub(crate) fn routes(authority: Arc<Authority>) -> Router<Arc<Authority>> {
    let console = Arc::new(Console::new(authority.config().console.clone()));
    Router::new()
        .route("/console", get(|| async { redirect("/console/") }))
        .route("/console/", get(pages::overview))
        .route("/console/assets/console.css", get(css))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/batches", get(pages::batches).post(pages::create_batch))
        .route("/console/batches/{id}", get(pages::batch))
        .route("/console/batches/{id}/close", post(pages::close_batch))
        .route("/console/stations", get(pages::stations))
        .route("/console/devices", get(pages::devices))
        .route("/console/devices/{serial}", get(pages::device))
        .route("/console/devices/{serial}/revoke", post(pages::revoke_device))
        .route("/console/certificates/{serial}/revoke", post(pages::revoke_cert))
        .route("/console/revocations", get(pages::revocations))
        .route("/console/audit", get(pages::audit))
        .route("/console/audit/verify", get(pages::audit_verify))
        .route("/console/tokens", get(pages::tokens).post(pages::create_token))
        .route("/console/claims", get(pages::claims).post(pages::claim))
        .fallback(|| async { refusal_page(StatusCode::NOT_FOUND, "No such console page.") })
        .layer(axum::middleware::from_fn(headers))
        .layer(Extension(console))
        .layer(Extension(authority))
}

async fn css() -> Response {
    let mut r = html::CSS.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    r
}

#[derive(serde::Deserialize)]
struct LinkQuery {
    link: Option<String>,
}

/// `GET /console/login?link=…`: a page that asks to confirm, so that a link
/// fetched by a preview or a scanner is not spent by it.
async fn login_page(ctx: Ctx, Query(q): Query<LinkQuery>) -> Response {
    let Some(link) = q.link.filter(|l| !l.is_empty()) else {
        if viewer(&ctx.c, &ctx.headers, &ctx.chain).is_some() {
            return redirect("/console/");
        }
        return refusal_page(StatusCode::UNAUTHORIZED, "Sign in with a console link.");
    };
    let body = format!(
        "<form class=\"action\" method=\"post\" action=\"/console/login\">\
         <p>This one-time link opens a console session. It works once.</p>\
         <input type=\"hidden\" name=\"link\" value=\"{}\">\
         <button id=\"sign-in\" type=\"submit\">Sign in</button></form>",
        html::esc(&link)
    );
    html_response(StatusCode::OK, html::page("Sign in", "", None, &body))
}

/// `POST /console/login`: spend the link, open a session, set its cookie.
async fn login(ctx: Ctx, body: Bytes) -> Response {
    if !same_origin(&ctx.headers) {
        return refusal_page(StatusCode::FORBIDDEN, "This request came from another site: refused.");
    }
    let link = match parse_form(&body) {
        Ok(mut f) => f.remove("link").unwrap_or_default(),
        Err(e) => return refusal_page(StatusCode::BAD_REQUEST, &e.public_message()),
    };
    if link.is_empty() || link.len() > 128 {
        return refusal_page(StatusCode::BAD_REQUEST, "The form carries no console link.");
    }
    let a = ctx.a.clone();
    match blocking(move || a.console_login(&link)).await.and_then(|r| r) {
        Ok(login) => {
            let id = ctx.c.open(login.admin, login.cert_serial, login.role);
            let mut r = redirect("/console/");
            let cookie = format!("{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            refusal_page(StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::FORBIDDEN), &e.public_message())
        }
    }
}

/// `POST /console/logout`: end the session (its CSRF token required).
async fn logout(ctx: Ctx, body: Bytes) -> Response {
    let Some(id) = cookie(&ctx.headers) else { return redirect("/console/login") };
    let Some((admin, _, csrf, _)) = ctx.c.session(&id) else { return redirect("/console/login") };
    let ok = same_origin(&ctx.headers)
        && parse_form(&body).ok().and_then(|f| f.get("csrf").cloned()).is_some_and(|t| same(&t, &csrf));
    if !ok {
        return refusal_page(StatusCode::FORBIDDEN, "This form carries no valid CSRF token.");
    }
    ctx.c.close(&id);
    let a = ctx.a.clone();
    if let Err(e) = blocking(move || a.console_logout(&admin)).await.and_then(|r| r) {
        tracing::error!(error = %e, "could not audit a console logout");
    }
    let mut r = redirect("/console/login");
    let gone = format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&gone) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2_shape_and_csrf_compare_is_exact() {
        // RFC 4231 test case 2 uses a 4-byte key; ours are 32 bytes: check against a
        // key padded with zeros, which HMAC treats the same.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", ""));
    }

    #[test]
    fn sessions_end_when_idle_or_closed_and_the_oldest_makes_room() {
        let c = Console::new(ConsoleConfig { max_sessions: 2, ..ConsoleConfig::default() });
        let a = c.open("alice".into(), "01".into(), ConsoleRole::Admin);
        let b = c.open("bob".into(), "02".into(), ConsoleRole::Read);
        assert_eq!(c.session(&a).map(|s| s.0), Some("alice".into()));
        let d = c.open("dave".into(), "03".into(), ConsoleRole::Read);
        assert!(c.session(&a).is_none(), "the oldest made room");
        assert_eq!(c.session(&b).map(|s| (s.0, s.1)), Some(("bob".into(), ConsoleRole::Read)));
        assert_eq!(c.close(&d), Some("dave".into()));
        assert!(c.session(&d).is_none());
        assert!(c.session("not-a-session").is_none());
        let idle = Console::new(ConsoleConfig { idle_timeout_secs: 1, ..ConsoleConfig::default() });
        let s = idle.open("eve".into(), "04".into(), ConsoleRole::Admin);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(idle.session(&s).is_none(), "idle past its timeout");
    }

    #[test]
    fn cookies_are_found_among_others_and_forms_refuse_repeated_fields() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; __Host-iotpki-console=XYZ; b=2"));
        assert_eq!(cookie(&h), Some("XYZ".into()));
        assert!(parse_form(b"csrf=a&csrf=b").is_err());
        assert_eq!(parse_form(b"a=x%20y&b=").unwrap().get("a").map(String::as_str), Some("x y"));
        let mut o = HeaderMap::new();
        o.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8443"));
        assert!(same_origin(&o));
        o.insert(header::ORIGIN, HeaderValue::from_static("https://127.0.0.1:8443"));
        assert!(same_origin(&o));
        o.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&o));
    }
}
