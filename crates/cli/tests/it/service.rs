//! `iotpki serve` run like a service: SIGHUP reloads the server certificate
//! without dropping kept-alive connections, and `--log-format json` writes one
//! JSON object per line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotpki_authority::keyfile;
use iotpki_core::keys::SoftKey;
use iotpki_core::pem;

use crate::util::{bin, run_ok, Server, PASS};

/// A TLS 1.3 connection to the server, kept alive across requests.
struct Conn(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Conn {
    fn open(addr: &str, root_der: &[u8]) -> Conn {
        Self::try_open(addr, root_der).unwrap()
    }

    /// A new connection, or why its TLS handshake failed.
    fn try_open(addr: &str, root_der: &[u8]) -> Result<Conn, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(root_der.to_vec())).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        Ok(Conn(s))
    }

    /// GET /.well-known/est/cacerts on this connection; the HTTP status.
    fn cacerts(&mut self) -> u16 {
        self.get("/.well-known/est/cacerts")
    }

    /// GET `path` on this connection, kept alive; the HTTP status.
    fn get(&mut self, path: &str) -> u16 {
        http_get(&mut self.0, path)
    }

    /// The serial of the certificate the server presented on this connection.
    fn server_serial(&self) -> String {
        let certs = self.0.conn.peer_certificates().unwrap();
        iotpki_core::profile::cert_info(&certs[0]).unwrap().serial
    }
}

/// GET `path` on `s` (the connection kept alive), the body read; the HTTP status.
fn http_get(s: &mut impl ReadWrite, path: &str) -> u16 {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn serial_of_pem(path: &Path) -> String {
    let der = pem::decode_all("CERTIFICATE", &std::fs::read_to_string(path).unwrap()).unwrap().remove(0);
    iotpki_core::profile::cert_info(&der).unwrap().serial
}

/// Wait for a log line containing `what`; every line must be a JSON object.
fn wait_log(lines: &mpsc::Receiver<String>, what: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| panic!("no log line with {what:?}"));
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert!(v.is_object() && v["level"].is_string() && v["timestamp"].is_string(), "{line}");
        if line.contains(what) {
            return v;
        }
    }
}

/// An authority in `tmp/ca` for 127.0.0.1, its passphrase in a file: the
/// directory, the passphrase file and the root certificate (DER).
fn init_authority(tmp: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let dir = tmp.join("ca");
    let pass_file = tmp.join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    run_ok(
        bin()
            .args(["init", "--dir", dir.to_str().unwrap(), "--passphrase-file", pass_file.to_str().unwrap()])
            .args(["--server-name", "127.0.0.1"]),
    );
    let root_der =
        pem::decode_all("CERTIFICATE", &std::fs::read_to_string(dir.join("ca/root.crt")).unwrap()).unwrap().remove(0);
    (dir, pass_file, root_der)
}

#[test]
fn serve_reloads_its_certificate_on_sighup_and_keeps_open_connections_and_logs_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, pass_file, root_der) = init_authority(tmp.path());
    let (d, pf) = (dir.to_str().unwrap(), pass_file.to_str().unwrap());

    let mut child = bin()
        .args(["serve", "--dir", d, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--passphrase-file", pf, "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let err = BufReader::new(child.stderr.take().unwrap());
    let pid = child.id().to_string();
    let _server = Server(child);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = line.trim().trim_start_matches("listening on https://").to_string();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in err.lines() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    // JSON logs: one object per line, the message a field of it.
    let v = wait_log(&lines, "EST server listening");
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["addr"], addr.as_str(), "{v}");

    let old_serial = serial_of_pem(&dir.join("tls/server.crt"));
    let mut kept = Conn::open(&addr, &root_der);
    assert_eq!(kept.cacerts(), 200);
    assert_eq!(kept.server_serial(), old_serial);

    // A new certificate for the EST server, put in place as an operator would.
    let out_dir = tmp.path().join("new-tls");
    run_ok(
        bin()
            .args(["cert", "issue-server", "--dir", d, "--name", "127.0.0.1", "--out", out_dir.to_str().unwrap()])
            .args(["--passphrase-file", pf]),
    );
    let plain = pem::decode_all("PRIVATE KEY", &std::fs::read_to_string(out_dir.join("server.key")).unwrap())
        .unwrap()
        .remove(0);
    let key = SoftKey::from_pkcs8(&plain).unwrap();
    std::fs::remove_file(dir.join("tls/server.key")).unwrap();
    keyfile::write_encrypted(
        &dir.join("tls/server.key"),
        &key,
        &iotpki_authority::Passphrase::new(PASS.into()).unwrap(),
    )
    .unwrap();
    std::fs::copy(out_dir.join("fullchain.pem"), dir.join("tls/server.crt")).unwrap();
    let new_serial = serial_of_pem(&dir.join("tls/server.crt"));
    assert_ne!(new_serial, old_serial);
    // Before the signal, new connections still get the old certificate.
    assert_eq!(Conn::open(&addr, &root_der).server_serial(), old_serial);

    // A setting that needs a restart changed too: not applied by a reload, and the log says so.
    set_limits(&dir, &[("refusal_audit_window_secs", "30")]);

    run_ok(Command::new("kill").args(["-HUP", &pid]));
    let v = wait_log(&lines, "restart iotpki serve to apply");
    assert_eq!(
        (v["level"].as_str(), v["changed"].as_str()),
        (Some("WARN"), Some("limits.refusal_audit_window_secs, limits.refusal_audit_individual")),
        "{v}"
    );
    let v = wait_log(&lines, "reloaded");
    assert_eq!(v["server_cert"], new_serial.as_str(), "{v}");
    let mut fresh = Conn::open(&addr, &root_der);
    assert_eq!(fresh.server_serial(), new_serial, "a new connection gets the reloaded certificate");
    assert_eq!(fresh.cacerts(), 200);
    // The kept-alive connection was not dropped and still answers.
    assert_eq!(kept.cacerts(), 200);
    assert_eq!(kept.server_serial(), old_serial);

    // A broken certificate file: the reload is refused and the server goes on with what it had.
    std::fs::write(dir.join("tls/server.crt"), "not a certificate\n").unwrap();
    run_ok(Command::new("kill").args(["-HUP", &pid]));
    let v = wait_log(&lines, "reload failed");
    assert_eq!(v["level"], "ERROR", "{v}");
    assert_eq!(Conn::open(&addr, &root_der).server_serial(), new_serial);
    assert_eq!(kept.cacerts(), 200);
}

/// Set `[limits]` values in the CA directory's config, as an operator would edit it.
fn set_limits(dir: &Path, values: &[(&str, &str)]) {
    let path = dir.join("iotpki.toml");
    let mut toml = std::fs::read_to_string(&path).unwrap();
    for (key, value) in values {
        let start = toml.find(&format!("\n{key} = ")).unwrap_or_else(|| panic!("{key} in the config")) + 1;
        let end = start + toml[start..].find('\n').unwrap();
        toml.replace_range(start..end, &format!("{key} = {value}"));
    }
    std::fs::write(path, toml).unwrap();
}

/// A request on a new plain-HTTP connection; the HTTP status.
fn plain_get(addr: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    http_get(&mut s, path)
}

#[test]
fn serve_reloads_its_limits_on_sighup_on_both_listeners_keeps_open_connections_and_ignores_a_broken_config() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, pass_file, root_der) = init_authority(tmp.path());
    let (d, pf) = (dir.to_str().unwrap(), pass_file.to_str().unwrap());
    let generous = [("client_rate_per_s", "1000.0"), ("client_burst", "1000")];
    set_limits(&dir, &generous);

    let mut child = bin()
        .args(["serve", "--dir", d, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--passphrase-file", pf, "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let err = BufReader::new(child.stderr.take().unwrap());
    let pid = child.id().to_string();
    let _server = Server(child);
    let (mut line, mut http_line) = (String::new(), String::new());
    out.read_line(&mut line).unwrap();
    out.read_line(&mut http_line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = line.trim().trim_start_matches("listening on https://").to_string();
    let http_addr = http_line.trim().trim_start_matches("CRL and OCSP on http://").to_string();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in err.lines() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    wait_log(&lines, "EST server listening");

    // A rate-limited request (an enrollment without credentials: refused, but
    // not for its rate) and one on the plain-HTTP listener (no such page).
    const LIMITED: &str = "/.well-known/est/simpleenroll";
    let mut kept = Conn::open(&addr, &root_der);
    for _ in 0..4 {
        assert_ne!(Conn::open(&addr, &root_der).get(LIMITED), 429, "the generous rate");
        assert_ne!(kept.get(LIMITED), 429, "the generous rate");
        assert_ne!(plain_get(&http_addr, "/nothing-here"), 429, "the generous rate");
    }

    // Tight now: one request, then none for 50 s.
    let tight = [("client_rate_per_s", "0.02"), ("client_burst", "1")];
    set_limits(&dir, &tight);
    run_ok(Command::new("kill").args(["-HUP", &pid]));
    let v = wait_log(&lines, "limits reloaded");
    assert_eq!(v["changed"], "limits.client_burst, limits.client_rate_per_s", "{v}");
    wait_log(&lines, "reloaded: new connections");
    assert_ne!(Conn::open(&addr, &root_der).get(LIMITED), 429, "the one request of the new burst");
    assert_eq!(Conn::open(&addr, &root_der).get(LIMITED), 429, "a new connection is held to the new rate");
    assert_eq!(kept.get(LIMITED), 429, "a new request on an open connection too");
    assert_eq!(kept.cacerts(), 200, "the open connection was not dropped and still answers");
    assert_ne!(plain_get(&http_addr, "/nothing-here"), 429, "the plain-HTTP listener's own bucket");
    assert_eq!(plain_get(&http_addr, "/nothing-here"), 429, "the plain-HTTP listener has the new rate too");

    let tight_toml = std::fs::read_to_string(dir.join("iotpki.toml")).unwrap();
    // Broken configs: generous rates again, but with a value the loader refuses,
    // then TOML that does not parse. Nothing changes, and each is logged as an error.
    for (broken, why) in [(&[generous[0], generous[1], ("refusal_burst", "0")][..], "refusal_burst"), (&[][..], "TOML")]
    {
        set_limits(&dir, broken);
        if broken.is_empty() {
            std::fs::write(dir.join("iotpki.toml"), "[limits\nclient_rate_per_s = 1000.0\n").unwrap();
        }
        run_ok(Command::new("kill").args(["-HUP", &pid]));
        let v = wait_log(&lines, "reload failed");
        assert_eq!(v["level"], "ERROR", "{why}: {v}");
        assert_eq!(Conn::open(&addr, &root_der).get(LIMITED), 429, "{why}: still the tight rate");
        assert_eq!(kept.get(LIMITED), 429, "{why}: still the tight rate");
        assert_eq!(plain_get(&http_addr, "/nothing-here"), 429, "{why}: still the tight rate");
        assert_eq!(kept.cacerts(), 200, "{why}");
    }

    // The connection cap is read at each accept: with one connection open
    // (the kept one), a new one is closed before its handshake.
    std::fs::write(dir.join("iotpki.toml"), tight_toml).unwrap();
    set_limits(&dir, &[("max_connections", "1")]);
    run_ok(Command::new("kill").args(["-HUP", &pid]));
    let v = wait_log(&lines, "limits reloaded");
    assert_eq!(v["changed"], "limits.max_connections", "{v}");
    assert!(Conn::try_open(&addr, &root_der).is_err(), "a connection past the new cap is closed");
    assert_eq!(kept.cacerts(), 200, "the open connection still answers");
    assert_eq!(plain_get(&http_addr, "/nothing-here"), 429, "the plain-HTTP listener counts its own connections");
}
