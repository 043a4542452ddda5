//! The wolfSSL side: a DTLS client session over a connected UDP socket, through the
//! `wolfssl` crate's safe API (its IO callbacks carry our datagrams), with datagram
//! and byte counters at the UDP level.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use wolfssl::{
    ContextBuilder, CurveGroup, IOCallbackResult, IOCallbacks, Method, Poll, ProtocolVersion, RootCertificate, Secret,
    Session, SessionConfig, SslVerifyMode,
};

use crate::PeerError;

/// What went over the wire, counted at the UDP level (DTLS records, handshake included).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// UDP payload bytes sent.
    pub bytes_sent: u64,
    /// UDP payload bytes received.
    pub bytes_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
}

/// The IO callbacks: a connected, non-blocking UDP socket.
pub struct UdpIo {
    socket: UdpSocket,
    counters: Counters,
    /// The last socket error, which wolfSSL reports only as "error state on socket".
    last_error: Option<String>,
}

impl UdpIo {
    /// Waits until a datagram can be read, or `timeout` passes. `Ok(false)` on timeout.
    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        if timeout.is_zero() {
            return Ok(false);
        }
        self.socket.set_nonblocking(false)?;
        self.socket.set_read_timeout(Some(timeout))?;
        let mut probe = [0u8; 1];
        let r = self.socket.peek(&mut probe);
        self.socket.set_nonblocking(true)?;
        match r {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl IOCallbacks for UdpIo {
    fn recv(&mut self, buf: &mut [u8]) -> IOCallbackResult<usize> {
        match self.socket.recv(buf) {
            Ok(n) => {
                self.counters.datagrams_received += 1;
                self.counters.bytes_received += n as u64;
                IOCallbackResult::Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => IOCallbackResult::WouldBlock,
            Err(e) => {
                self.last_error = Some(format!("recv: {e}"));
                IOCallbackResult::Err(e)
            }
        }
    }

    fn send(&mut self, buf: &[u8]) -> IOCallbackResult<usize> {
        match self.socket.send(buf) {
            Ok(n) => {
                self.counters.datagrams_sent += 1;
                self.counters.bytes_sent += n as u64;
                IOCallbackResult::Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => IOCallbackResult::WouldBlock,
            Err(e) => {
                self.last_error = Some(format!("send: {e}"));
                IOCallbackResult::Err(e)
            }
        }
    }
}

/// Which DTLS version to offer: exactly one, so that a failure is never hidden by a
/// silent downgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// DTLS 1.3 only (RFC 9147).
    Dtls13,
    /// DTLS 1.2 only (RFC 6347).
    Dtls12,
}

/// Key exchange group to offer, for diagnosis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// secp256r1.
    P256,
    /// X25519.
    X25519,
}

/// Everything the session is built from.
#[derive(Debug)]
pub struct ClientOptions<'a> {
    /// The server's address.
    pub server: SocketAddr,
    /// Trust anchor(s) for the server's certificate chain.
    pub ca: &'a Path,
    /// Our certificate (chain).
    pub cert: &'a Path,
    /// Our private key.
    pub key: &'a Path,
    /// DTLS version.
    pub version: Version,
    /// If set, the server certificate must name this host (and it is sent as SNI).
    /// If not, only the chain is verified.
    pub server_name: Option<String>,
    /// If set, a wolfSSL cipher list (e.g. `TLS13-AES128-GCM-SHA256`).
    pub cipher_list: Option<String>,
    /// If set, the only key exchange groups offered.
    pub groups: Vec<Group>,
    /// If set, the DTLS MTU wolfSSL uses.
    pub mtu: Option<u16>,
    /// How long the whole handshake may take.
    pub handshake_timeout: Duration,
}

/// A file's bytes as wolfSSL wants them: PEM if it looks like PEM, DER otherwise.
fn read_secret(path: &Path) -> Result<(Vec<u8>, bool), PeerError> {
    let bytes = std::fs::read(path).map_err(|e| PeerError::Io(format!("{}", path.display()), e))?;
    let pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    Ok((bytes, pem))
}

/// An established DTLS session.
pub struct Client {
    session: Session<UdpIo>,
}

fn wolf_err(what: &'static str) -> impl Fn(wolfssl::Error) -> PeerError {
    move |e| PeerError::Setup(what, e.to_string())
}

impl Client {
    /// Builds the context and session, and runs the handshake to completion.
    pub fn connect(opts: &ClientOptions<'_>) -> Result<Client, PeerError> {
        let (ca, ca_pem) = read_secret(opts.ca)?;
        let (cert, cert_pem) = read_secret(opts.cert)?;
        let (key, key_pem) = read_secret(opts.key)?;

        let method = match opts.version {
            Version::Dtls13 => Method::DtlsClientV1_3,
            Version::Dtls12 => Method::DtlsClientV1_2,
        };
        let groups: Vec<CurveGroup> = opts
            .groups
            .iter()
            .map(|g| match g {
                Group::P256 => CurveGroup::EccSecp256R1,
                Group::X25519 => CurveGroup::EccX25519,
            })
            .collect();
        let ctx = ContextBuilder::new(method)
            .map_err(|e| PeerError::Setup("context", e.to_string()))?
            .with_root_certificate(if ca_pem {
                RootCertificate::PemBuffer(&ca)
            } else {
                RootCertificate::Asn1Buffer(&ca)
            })
            .map_err(wolf_err("CA certificate"))?
            .with_certificate(if cert_pem { Secret::PemBuffer(&cert) } else { Secret::Asn1Buffer(&cert) })
            .map_err(wolf_err("client certificate"))?
            .with_private_key(if key_pem { Secret::PemBuffer(&key) } else { Secret::Asn1Buffer(&key) })
            .map_err(wolf_err("client private key"))?
            .try_when_some(opts.cipher_list.as_deref(), |b, l| b.with_cipher_list(l))
            .map_err(wolf_err("cipher list"))?
            .try_when(!groups.is_empty(), |b| b.with_groups(&groups))
            .map_err(wolf_err("groups"))?
            .with_verify_method(SslVerifyMode::SslVerifyPeer)
            .build();

        let socket = UdpSocket::bind(if opts.server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
            .map_err(|e| PeerError::Io("bind".into(), e))?;
        socket.connect(opts.server).map_err(|e| PeerError::Io(format!("connect {}", opts.server), e))?;
        socket.set_nonblocking(true).map_err(|e| PeerError::Io("set_nonblocking".into(), e))?;
        let io = UdpIo { socket, counters: Counters::default(), last_error: None };
        let config = SessionConfig::new(io)
            .with_dtls_nonblocking(true)
            .with_ssl_verify_mode(SslVerifyMode::SslVerifyPeer)
            .when_some(opts.mtu, |c, m| c.with_dtls_mtu(m))
            .when_some(opts.server_name.as_deref(), |c, n| c.with_sni(n).with_checked_domain_name(n));
        let session = ctx.new_session(config).map_err(|e| PeerError::Setup("session", e.to_string()))?;
        let mut client = Client { session };
        client.handshake(opts.handshake_timeout)?;
        Ok(client)
    }

    fn handshake(&mut self, limit: Duration) -> Result<(), PeerError> {
        let deadline = Instant::now() + limit;
        loop {
            match self.session.try_negotiate() {
                Ok(Poll::Ready(())) => return Ok(()),
                Ok(Poll::PendingWrite) | Ok(Poll::AppData(_)) => {}
                Ok(Poll::PendingRead) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(PeerError::Handshake(format!("no handshake within {} s", limit.as_secs())));
                    }
                    let mut wait = self.session.dtls_current_timeout();
                    if self.session.dtls13_use_quick_timeout() {
                        wait /= 4;
                    }
                    let wait = wait.min(deadline - now);
                    let readable = self
                        .session
                        .io_cb()
                        .wait_readable(wait)
                        .map_err(|e| PeerError::Handshake(format!("socket: {e}")))?;
                    if !readable {
                        if let Poll::Ready(true) = self.session.dtls_has_timed_out() {
                            return Err(PeerError::Handshake(
                                "wolfSSL gave up retransmitting (no answer from the server)".into(),
                            ));
                        }
                    }
                }
                Err(e) => return Err(PeerError::Handshake(self.with_socket_error(e))),
            }
        }
    }

    /// wolfSSL's error, with the socket error behind it if there was one.
    fn with_socket_error(&self, e: wolfssl::Error) -> String {
        match &self.session.io_cb().last_error {
            Some(io) => format!("{e} ({io})"),
            None => e.to_string(),
        }
    }

    /// The negotiated protocol version, as OpenSSL names it (`DTLSv1.3`).
    pub fn version_name(&mut self) -> &'static str {
        match self.session.version() {
            ProtocolVersion::DtlsV1_3 => "DTLSv1.3",
            ProtocolVersion::DtlsV1_2 => "DTLSv1.2",
            ProtocolVersion::DtlsV1_0 => "DTLSv1",
            _ => "unknown",
        }
    }

    /// The negotiated cipher suite's name, as wolfSSL names it.
    pub fn cipher_name(&mut self) -> String {
        self.session.get_current_cipher_name().unwrap_or_else(|| "unknown".into())
    }

    /// The key exchange group, as wolfSSL names it.
    pub fn curve_name(&mut self) -> String {
        self.session.get_current_curve_name().unwrap_or_else(|| "unknown".into())
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.session.io_cb().counters
    }

    /// Sends one record of application data.
    pub fn send(&mut self, data: &[u8]) -> Result<(), PeerError> {
        loop {
            match self.session.try_write_slice(data) {
                Ok(Poll::Ready(n)) if n == data.len() => return Ok(()),
                Ok(Poll::Ready(n)) => {
                    return Err(PeerError::Dtls(format!("wolfSSL wrote {n} of {} bytes", data.len())))
                }
                Ok(Poll::PendingWrite) | Ok(Poll::PendingRead) | Ok(Poll::AppData(_)) => {
                    self.session
                        .io_cb()
                        .wait_readable(Duration::from_millis(10))
                        .map_err(|e| PeerError::Dtls(format!("socket: {e}")))?;
                }
                Err(e) => return Err(PeerError::Dtls(format!("write: {}", self.with_socket_error(e)))),
            }
        }
    }

    /// Receives one record of application data, waiting until `deadline`.
    /// `Ok(None)` when the deadline passes first.
    pub fn recv(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, PeerError> {
        let mut buf = vec![0u8; 16 * 1024 + 256];
        loop {
            match self.session.try_read_slice(&mut buf) {
                Ok(Poll::Ready(n)) if n > 0 => return Ok(Some(buf[..n].to_vec())),
                Ok(Poll::AppData(b)) => return Ok(Some(b.to_vec())),
                Ok(_) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    self.session
                        .io_cb()
                        .wait_readable(deadline - now)
                        .map_err(|e| PeerError::Dtls(format!("socket: {e}")))?;
                }
                Err(e) => return Err(PeerError::Dtls(format!("read: {}", self.with_socket_error(e)))),
            }
        }
    }

    /// Sends close_notify (best effort: no wait for the server's).
    pub fn close(&mut self) {
        let _ = self.session.try_shutdown();
    }
}
