//! The agent's HTTP/1.1 client: one request at a time on a connection the caller
//! holds (TLS or plain TCP), answers framed by Content-Length, chunked transfer
//! coding or the end of the connection, every part bounded.
//!
//! The device speaks to a handful of servers of its own fleet (EST, the plain
//! listener, a relay, an OCSP responder) with small requests; this is what it
//! needs of HTTP, in a few kilobytes where hyper and http weighed about 80 KB
//! in the device binary (BENCHMARKS.md, "The device binary").

use std::future::Future as _;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// The most a status line and headers may take.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most headers an answer may have.
const MAX_HEADERS: usize = 100;
/// The most interim (1xx) answers before the answer, and empty lines before a status line.
const MAX_INTERIM: usize = 8;

/// Why an exchange failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// Reading or writing the connection failed (the peer may have closed it).
    Io(String),
    /// The connection ended before any answer: a kept-alive connection the server
    /// closed; the request may be sent again on a new one.
    Closed,
    /// The answer is not HTTP/1.x as RFC 9112 frames it.
    Malformed(String),
    /// The body is larger than the caller allows.
    TooLarge { limit: usize },
    /// The request cannot be written (a header with a line break, say).
    Request(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => f.write_str(e),
            Error::Closed => f.write_str("the connection closed before an answer"),
            Error::Malformed(e) => write!(f, "not an HTTP/1.1 answer: {e}"),
            Error::TooLarge { limit } => write!(f, "the answer is larger than {limit} octets"),
            Error::Request(e) => write!(f, "cannot send the request: {e}"),
        }
    }
}

impl std::error::Error for Error {}

fn io(e: std::io::Error) -> Error {
    Error::Io(e.to_string())
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

/// One request.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path and query (`/.well-known/est/simpleenroll?batch=B`).
    pub path: &'a str,
    /// The Host header: `host:port`.
    pub host: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// One answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Content-Type, if given.
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// Whether the connection may carry another request.
    pub reusable: bool,
}

/// A connection: a buffered reader over the stream, written through.
pub struct Connection<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Connection<S> {
        Connection { io: BufReader::with_capacity(8 * 1024, stream) }
    }

    /// Send `req` and read its answer, of at most `max_body` octets.
    pub async fn send(&mut self, req: &Request<'_>, max_body: usize) -> Result<Response, Error> {
        let head = request_head(req)?;
        let w = self.io.get_mut();
        let mut out = head.into_bytes();
        out.extend_from_slice(req.body);
        w.write_all(&out).await.map_err(io)?;
        w.flush().await.map_err(io)?;
        read_response(&mut self.io, req.method == "HEAD", max_body).await
    }
}

/// The request line and headers. Refused if any part would break the framing
/// (a line break, a space in the path, an empty method or host).
fn request_head(req: &Request<'_>) -> Result<String, Error> {
    let bad = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
    if req.method.is_empty() || !req.method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Error::Request(format!("method {:?}", req.method)));
    }
    if !req.path.starts_with('/') || req.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Error::Request(format!("path {:?}", req.path)));
    }
    if req.host.is_empty() || bad(req.host) || req.host.contains(' ') {
        return Err(Error::Request(format!("host {:?}", req.host)));
    }
    let mut h = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", req.method, req.path, req.host);
    let ct = req.content_type.map(|c| ("Content-Type", c));
    for (k, v) in req.headers.iter().copied().chain(ct) {
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || bad(v) {
            return Err(Error::Request(format!("header {k:?}")));
        }
        h.push_str(k);
        h.push_str(": ");
        h.push_str(v);
        h.push_str("\r\n");
    }
    if !req.body.is_empty() || !matches!(req.method, "GET" | "HEAD") {
        h.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    h.push_str("\r\n");
    Ok(h)
}

/// How the body of an answer ends.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Read one answer (skipping 1xx interim answers).
pub async fn read_response<R: AsyncBufRead + Unpin>(
    r: &mut R,
    head_request: bool,
    max_body: usize,
) -> Result<Response, Error> {
    for interim in 0..=MAX_INTERIM {
        let head = read_head(r, interim == 0).await?;
        let (status, http10, headers) = parse_head(&head)?;
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(malformed("101 Switching Protocols was not asked for"));
            }
            continue;
        }
        let mut close = http10;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut content_type = None;
        for (name, value) in &headers {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => {
                    let n = value
                        .parse::<usize>()
                        .ok()
                        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| malformed(format!("Content-Length {value:?}")))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(malformed("two different Content-Lengths"));
                    }
                    length = Some(n);
                }
                "transfer-encoding" => {
                    // Only chunked, last, is understood (RFC 9112 6.1).
                    let codings: Vec<String> = value.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
                    if codings.last().map(String::as_str) != Some("chunked")
                        || codings.iter().filter(|c| *c == "chunked").count() != 1
                    {
                        return Err(malformed(format!("Transfer-Encoding {value:?}")));
                    }
                    if codings.len() > 1 {
                        return Err(malformed(format!("Transfer-Encoding {value:?}: only chunked is understood")));
                    }
                    chunked = true;
                }
                "connection" => {
                    let v = value.to_ascii_lowercase();
                    if v.split(',').any(|t| t.trim() == "close") {
                        close = true;
                    } else if http10 && v.split(',').any(|t| t.trim() == "keep-alive") {
                        close = false;
                    }
                }
                "content-type" => content_type = Some(value.clone()),
                _ => {}
            }
        }
        if chunked && length.is_some() {
            // RFC 9112 6.3: a message with both is an attack on the framing.
            return Err(malformed("both Transfer-Encoding and Content-Length"));
        }
        let framing = if head_request || status == 204 || status == 304 {
            Framing::None
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        let body = match framing {
            Framing::None => Vec::new(),
            Framing::Length(n) => {
                if n > max_body {
                    return Err(Error::TooLarge { limit: max_body });
                }
                // Grown as the octets arrive, not allocated at the length announced.
                let mut b = Vec::with_capacity(n.min(64 * 1024));
                (&mut *r).take(n as u64).read_to_end(&mut b).await.map_err(io)?;
                if b.len() != n {
                    return Err(Error::Io(format!("the answer ended after {} of its {n} octets", b.len())));
                }
                b
            }
            Framing::Chunked => read_chunked(r, max_body).await?,
            Framing::UntilClose => {
                close = true;
                let mut b = Vec::new();
                let mut limited = r.take((max_body as u64).saturating_add(1));
                limited.read_to_end(&mut b).await.map_err(io)?;
                if b.len() > max_body {
                    return Err(Error::TooLarge { limit: max_body });
                }
                b
            }
        };
        return Ok(Response { status, content_type, body, reusable: !close });
    }
    Err(malformed(format!("more than {MAX_INTERIM} interim (1xx) answers")))
}

/// Read one answer from bytes already in memory (fuzzing, tests): the same
/// reader, polled once (reading a slice never waits).
pub fn response_from_bytes(bytes: &[u8], head_request: bool, max_body: usize) -> Result<Response, Error> {
    let mut reader = BufReader::new(bytes);
    let fut = std::pin::pin!(read_response(&mut reader, head_request, max_body));
    match fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => Err(Error::Io("reading from memory waited".into())),
    }
}

/// The status line and headers, up to the empty line, within [`MAX_HEAD`].
async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R, first: bool) -> Result<Vec<u8>, Error> {
    let mut head = Vec::with_capacity(512);
    let mut empty_lines = 0;
    loop {
        let before = head.len();
        let room = (MAX_HEAD + 1).saturating_sub(head.len()) as u64;
        let n = (&mut *r).take(room).read_until(b'\n', &mut head).await.map_err(io)?;
        if n == 0 {
            return Err(if first && head.is_empty() {
                Error::Closed
            } else {
                malformed("the answer ended in its head")
            });
        }
        if head.len() > MAX_HEAD {
            return Err(malformed(format!("the head is longer than {MAX_HEAD} octets")));
        }
        if !head.ends_with(b"\n") {
            return Err(malformed("the answer ended in its head"));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                // A few are tolerated before the status line (RFC 9112 2.2).
                empty_lines += 1;
                if empty_lines > MAX_INTERIM {
                    return Err(malformed("empty lines instead of a status line"));
                }
                head.clear();
                continue;
            }
            return Ok(head);
        }
    }
}

type Headers = Vec<(String, String)>;

/// The status, whether the answer is HTTP/1.0, and the headers.
fn parse_head(head: &[u8]) -> Result<(u16, bool, Headers), Error> {
    let text = std::str::from_utf8(head).map_err(|_| malformed("the head is not text"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(malformed(format!("status line {:?}", truncate(status_line)))),
    };
    let code = parts.next().unwrap_or_default();
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|s| code.len() == 3 && (100..600).contains(s))
        .ok_or_else(|| malformed(format!("status line {:?}", truncate(status_line))))?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err(malformed("a folded header line"));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| malformed(format!("header {:?}", truncate(line))))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(malformed(format!("header name {:?}", truncate(name))));
        }
        if headers.len() == MAX_HEADERS {
            return Err(malformed(format!("more than {MAX_HEADERS} headers")));
        }
        headers.push((name.to_string(), value.trim_matches([' ', '\t']).to_string()));
    }
    Ok((status, http10, headers))
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A chunked body (RFC 9112 7.1): chunks until the zero-size one, then the
/// trailer section (read and dropped, within [`MAX_HEAD`]).
async fn read_chunked<R: AsyncBufRead + Unpin>(r: &mut R, max_body: usize) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = (&mut *r).take(1024).read_until(b'\n', &mut line).await.map_err(io)?;
        if n == 0 || !line.ends_with(b"\n") {
            return Err(malformed("the chunked body ended early or has a chunk-size line too long"));
        }
        let text = std::str::from_utf8(&line).map_err(|_| malformed("chunk size"))?.trim_end_matches(['\r', '\n']);
        let size_text = text.split(';').next().unwrap_or_default().trim_end_matches([' ', '\t']);
        if size_text.is_empty() || size_text.len() > 16 || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed(format!("chunk size {:?}", truncate(text))));
        }
        let size = usize::from_str_radix(size_text, 16).map_err(|_| malformed("chunk size"))?;
        if size == 0 {
            let mut trailer = 0usize;
            loop {
                let mut l = Vec::new();
                let n = (&mut *r).take(MAX_HEAD as u64).read_until(b'\n', &mut l).await.map_err(io)?;
                trailer += n;
                if n == 0 || trailer > MAX_HEAD || !l.ends_with(b"\n") {
                    return Err(malformed("the chunked body's trailer is cut or too long"));
                }
                if l == b"\r\n" || l == b"\n" {
                    return Ok(body);
                }
            }
        }
        if size > max_body.saturating_sub(body.len()) {
            return Err(Error::TooLarge { limit: max_body });
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).await.map_err(io)?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf[..1]).await.map_err(io)?;
        if crlf[0] == b'\r' {
            r.read_exact(&mut crlf[1..]).await.map_err(io)?;
        } else {
            crlf = [b'\r', crlf[0]];
        }
        if crlf[1] != b'\n' {
            return Err(malformed("a chunk does not end with CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(bytes: &[u8], max: usize) -> Result<Response, Error> {
        response_from_bytes(bytes, false, max)
    }

    #[test]
    fn content_length_chunked_and_until_close() {
        let r = answer(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
            100,
        )
        .unwrap();
        assert_eq!((r.status, &r.body[..], r.reusable), (200, &b"hello"[..], true));
        assert_eq!(r.content_type.as_deref(), Some("application/pkcs7-mime"));
        let r = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!((&r.body[..], r.reusable), (&b"hello!"[..], true));
        let r = answer(b"HTTP/1.0 404 Not Found\r\n\r\nnothing here", 100).unwrap();
        assert_eq!((r.status, &r.body[..], r.reusable), (404, &b"nothing here"[..], false));
        let r =
            answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", 100).unwrap();
        assert_eq!((r.status, r.body.len(), r.reusable), (204, 0, false));
    }

    #[test]
    fn what_breaks_the_framing_or_the_bounds_is_refused() {
        let too_big = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", 100);
        assert_eq!(too_big, Err(Error::TooLarge { limit: 100 }));
        let chunked_too_big = answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n", 0x3f);
        assert_eq!(chunked_too_big, Err(Error::TooLarge { limit: 0x3f }));
        let huge_chunk = answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 100);
        assert!(matches!(huge_chunk, Err(Error::Malformed(_))), "{huge_chunk:?}");
        let until_close = answer(&[b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), &[b'x'; 101]].concat(), 100);
        assert_eq!(until_close, Err(Error::TooLarge { limit: 100 }));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Len",
        ] {
            let r = answer(bad, 100);
            assert!(matches!(r, Err(Error::Malformed(_))), "{:?}: {r:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(answer(b"", 100), Err(Error::Closed));
        assert!(matches!(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", 100), Err(Error::Io(_))));
        // Interim answers and empty lines are bounded too.
        let interim =
            [b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM + 1), b"HTTP/1.1 200 OK\r\n\r\n".to_vec()].concat();
        assert!(matches!(answer(&interim, 100), Err(Error::Malformed(_))));
        let blank = [b"\r\n".repeat(MAX_INTERIM + 1), b"HTTP/1.1 200 OK\r\n\r\n".to_vec()].concat();
        assert!(matches!(answer(&blank, 100), Err(Error::Malformed(_))));
        let ok =
            [b"\r\n".as_slice(), b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
                .concat();
        assert_eq!(answer(&ok, 100).unwrap().status, 200);
        // No limit at all is no overflow.
        assert_eq!(response_from_bytes(b"HTTP/1.1 200 OK\r\n\r\nabc", false, usize::MAX).unwrap().body, b"abc");
        let long_head = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; MAX_HEAD], b"\r\n\r\n"].concat();
        assert!(matches!(answer(&long_head, 100), Err(Error::Malformed(_))));
        let many = [b"HTTP/1.1 200 OK\r\n".as_slice(), &b"A: b\r\n".repeat(MAX_HEADERS + 1), b"\r\n"].concat();
        assert!(matches!(answer(&many, 100), Err(Error::Malformed(_))));
    }

    #[test]
    fn a_request_that_would_break_its_framing_is_not_sent() {
        let req = |path, header: (&'static str, &'static str)| {
            let headers = [header];
            request_head(&Request {
                method: "POST",
                path,
                host: "h:1",
                headers: &headers,
                content_type: Some("application/pkcs10"),
                body: b"abc",
            })
        };
        let ok = req("/.well-known/est/simpleenroll?batch=B", ("Authorization", "Basic eA==")).unwrap();
        assert_eq!(
            ok,
            "POST /.well-known/est/simpleenroll?batch=B HTTP/1.1\r\nHost: h:1\r\nAuthorization: Basic eA==\r\n\
             Content-Type: application/pkcs10\r\nContent-Length: 3\r\n\r\n"
        );
        assert!(req("/a b", ("X", "y")).is_err());
        assert!(req("/a", ("X", "y\r\nInjected: 1")).is_err());
        assert!(req("/a", ("X:", "y")).is_err());
        assert!(req("no-slash", ("X", "y")).is_err());
    }
}
