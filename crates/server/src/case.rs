//! Header names in their canonical case on the wire.
//!
//! HTTP header names are case-insensitive (RFC 9110 section 5.1), and hyper
//! writes them in lower case. Some deployed embedded EST clients compare
//! them case-sensitively (`Content-Type`, `WWW-Authenticate`, `Retry-After`).
//! hyper's `title_case_headers` gives `Content-Type` and `Retry-After` but
//! `Www-Authenticate`; the exact case of a name is kept only through
//! `preserve_header_case`, whose record is a private extension that hyper
//! makes when it parses a request and honours in any response that carries it
//! (the documented way a proxy forwards names unchanged). So we let hyper parse,
//! once, a request that names our headers in their canonical case, keep its
//! extensions, and attach a copy to every response; names not in it are
//! title-cased.

use axum::http::Extensions;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::OnceCell;

/// Every header name we send, in its canonical case.
const CANONICAL: &[&str] = &[
    "Content-Type",
    "Content-Length",
    "Content-Transfer-Encoding",
    "WWW-Authenticate",
    "Retry-After",
    "Cache-Control",
    "Location",
    "Connection",
    "Date",
];

static TEMPLATE: OnceCell<Extensions> = OnceCell::const_new();

/// The extensions that make hyper write [`CANONICAL`] names as spelled there
/// (empty if hyper could not make them: names are then title-cased).
pub(crate) async fn extensions() -> Extensions {
    TEMPLATE.get_or_init(parse_template).await.clone()
}

async fn parse_template() -> Extensions {
    let (ours, theirs) = tokio::io::duplex(4096);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(req.extensions().clone());
        }
        async { Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new())) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.preserve_header_case(true);
    let conn = builder.serve_connection(TokioIo::new(ours), svc);
    let mut head = String::from("GET / HTTP/1.1\r\nHost: localhost\r\n");
    for name in CANONICAL.iter().filter(|n| !n.eq_ignore_ascii_case("Content-Length")) {
        head.push_str(&format!("{name}: x\r\n"));
    }
    head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    let mut theirs = theirs;
    let write = async move {
        let _ = theirs.write_all(head.as_bytes()).await;
        let _ = theirs.flush().await;
        theirs
    };
    let (_, _, ext) = tokio::join!(conn, write, rx);
    ext.unwrap_or_default()
}
