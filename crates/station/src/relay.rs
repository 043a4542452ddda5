//! `iotpki relay`: a cache for devices on a network without internet.
//!
//! While it reaches its upstream (the authority's server or its plain-HTTP
//! listener) it fetches what devices ask for and keeps a copy on disk; when
//! the upstream is away it serves the copy. It serves only what devices
//! verify themselves (trust bundles, ownership vouchers, CRLs), so it needs no
//! trust: a relay that serves something tampered, rolled back, forged or
//! stale is caught by the device ([`iotpki_agent::trust`]).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use iotpki_agent::{trust, AgentError};

/// How long the relay waits for its upstream before it serves its copy.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// A relay's settings.
#[derive(Clone, Debug)]
pub struct Relay {
    /// The upstream base URL (`https://...` or `http://...`).
    pub upstream: String,
    /// Anchors for an https upstream.
    pub anchors: Vec<Vec<u8>>,
    /// Where copies are kept.
    pub cache: PathBuf,
}

/// The paths a relay serves: nothing else.
pub fn allowed(path: &str) -> bool {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !s.starts_with('.')
    };
    if path == "/.well-known/iotpki/bundle" {
        return true;
    }
    if let Some(serial) = path.strip_prefix("/.well-known/iotpki/voucher/") {
        return name_ok(serial);
    }
    if let Some(file) = path.strip_prefix("/crl/") {
        return file.strip_suffix(".crl").is_some_and(name_ok)
            || iotpki_core::crl::parse_shard_path(file).is_some_and(|(ca, _, _)| name_ok(ca));
    }
    false
}

fn cache_name(path: &str) -> String {
    format!("{}.bin", hex::encode(path.as_bytes()))
}

/// Where an answer came from.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// Fetched from upstream just now (and kept).
    Upstream,
    /// The kept copy (upstream unreachable).
    Cached,
}

impl Relay {
    /// The answer for `path`: fresh from upstream (kept), else the kept copy.
    /// `Ok(None)`: upstream has nothing there (404), or no copy and no upstream.
    pub async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, Source)>, AgentError> {
        if !allowed(path) {
            return Ok(None);
        }
        let url = format!("{}{path}", self.upstream.trim_end_matches('/'));
        let fetched = tokio::time::timeout(UPSTREAM_TIMEOUT, trust::fetch(&url, &self.anchors)).await;
        match fetched {
            Ok(Ok(Some(body))) => {
                std::fs::create_dir_all(&self.cache).map_err(|e| AgentError::io(&self.cache, e))?;
                iotpki_fs::write_atomic(&self.cache.join(cache_name(path)), &body, iotpki_fs::PUBLIC)?;
                Ok(Some((body, Source::Upstream)))
            }
            Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => {
                tracing::info!(%url, error = %e, "upstream unreachable; serving the kept copy if any");
                self.cached(path)
            }
            Err(_) => {
                tracing::info!(%url, "upstream did not answer in time; serving the kept copy if any");
                self.cached(path)
            }
        }
    }

    fn cached(&self, path: &str) -> Result<Option<(Vec<u8>, Source)>, AgentError> {
        let p = self.cache.join(cache_name(path));
        match std::fs::read(&p) {
            Ok(b) => Ok(Some((b, Source::Cached))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::io(&p, e)),
        }
    }

    /// Fetch the bundle and refresh every kept copy (run now and then while online).
    pub async fn refresh(&self) -> usize {
        let mut paths = vec!["/.well-known/iotpki/bundle".to_string()];
        if let Ok(entries) = std::fs::read_dir(&self.cache) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(path) =
                    name.strip_suffix(".bin").and_then(|h| hex::decode(h).ok()).and_then(|b| String::from_utf8(b).ok())
                {
                    if allowed(&path) && !paths.contains(&path) {
                        paths.push(path);
                    }
                }
            }
        }
        let mut fresh = 0;
        for p in paths {
            if let Ok(Some((_, Source::Upstream))) = self.get(&p).await {
                fresh += 1;
            }
        }
        fresh
    }

    /// The path of the kept copy of `path` (for tests and operators).
    pub fn cache_file(&self, path: &str) -> PathBuf {
        self.cache.join(cache_name(path))
    }
}

async fn answer(relay: Arc<Relay>, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, m: String| {
        let mut r = Response::new(Full::new(Bytes::from(m)));
        *r.status_mut() = status;
        r
    };
    if req.method() != hyper::Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "the relay only answers GET\n".into()));
    }
    let path = req.uri().path().to_string();
    if !allowed(&path) {
        return Ok(text(StatusCode::NOT_FOUND, "the relay serves trust bundles, vouchers and CRLs only\n".into()));
    }
    Ok(match relay.get(&path).await {
        Ok(Some((body, source))) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            let tag = if source == Source::Upstream { "fresh" } else { "cached" };
            r.headers_mut().insert("x-iotpki-relay", hyper::header::HeaderValue::from_static(tag));
            r
        }
        Ok(None) => text(StatusCode::NOT_FOUND, format!("nothing at {path} upstream, and no copy kept\n")),
        Err(e) => text(StatusCode::BAD_GATEWAY, format!("{e}\n")),
    })
}

/// Serve `relay` on `listener` until `shutdown`; refresh the copies every `refresh`.
pub async fn serve(
    relay: Relay,
    listener: tokio::net::TcpListener,
    refresh: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let relay = Arc::new(relay);
    let r2 = relay.clone();
    let refresher = tokio::spawn(async move {
        loop {
            r2.refresh().await;
            tokio::time::sleep(refresh).await;
        }
    });
    tokio::pin!(shutdown);
    let result = loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let relay = relay.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(relay.clone(), req));
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
        });
    };
    refresher.abort();
    result
}

/// Check a cache directory can be used (exists or can be made).
pub fn prepare_cache(dir: &Path) -> Result<(), AgentError> {
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_devices_verify_is_relayed() {
        assert!(allowed("/.well-known/iotpki/bundle"));
        assert!(allowed("/.well-known/iotpki/voucher/SN-1"));
        assert!(allowed("/crl/operational.crl"));
        assert!(allowed("/crl/operational/64/7.crl"));
        for bad in [
            "/",
            "/.well-known/est/simpleenroll",
            "/crl/../iotpki.toml",
            "/crl/operational/64/64.crl",
            "/crl/../64/1.crl",
            "/crl/operational/64/1.crl/x",
            "/crl/.hidden.crl",
            "/crl/op.pem",
            "/.well-known/iotpki/voucher/",
            "/.well-known/iotpki/voucher/a/b",
            "/ocsp",
        ] {
            assert!(!allowed(bad), "{bad}");
        }
    }
}
