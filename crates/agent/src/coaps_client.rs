//! EST over secure CoAP (RFC 9148) for the device: DTLS 1.3 (`dimpl`), CoAP
//! confirmable requests with block-wise transfer (`iotpki-coap`), binary DER
//! bodies. A client makes one DTLS session per call, or, made with
//! [`CoapsClient::one_session`], one for all of a flow's calls (an
//! enrollment's `/crts` and `/sen`: one handshake, as over HTTPS).
//!
//! - The server is authenticated by its certificate: dimpl shows its leaf,
//!   and nothing is sent before that leaf chains to one of the device's
//!   anchors for serverAuth and names the host of the URL. DTLS carries one
//!   certificate, so the path is completed with the intermediates the device
//!   already holds, or, at first contact, with `/crts` fetched on the same
//!   session first (public, and only a candidate: the path must still end
//!   at our anchor).
//! - The device authenticates with its certificate (birth or operational)
//!   and its key wherever the keystore holds it: the handshake's signature
//!   is made by the [`Signer`] (`KeyHandles`), never by a copy of the key.
//! - A first enrollment with a token presents a self-signed certificate of
//!   the new key and carries `SERIAL:TOKEN` in the request's
//!   challengePassword (docs/coaps.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dimpl::crypto::{Buf, CryptoProvider, HashAlgorithm, KeyProvider, SignatureAlgorithm, SigningKey};
use dimpl::{CryptoError, Dtls, DtlsCertificate, NamedGroup, Output};
use iotpki_coap::client::{Exchange, Progress, Retransmission};
use iotpki_coap::est as coap_est;
use iotpki_coap::msg::Code;
use iotpki_core::keys::{KeyType, Signer};
use iotpki_core::pkcs7;
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use tokio::net::UdpSocket;

use crate::est_client::ClientIdentity;
use crate::AgentError;

/// Time allowed for one whole call (handshake, request, answer).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The block size asked for (SZX 6: 1024 bytes), and the datagram size.
const SZX: u8 = 6;
/// The largest datagram the device sends: the UDP payload that fits the 576
/// bytes every IPv4 host reassembles. dimpl pads the ClientHello to it (RFC
/// 7685, against amplification by servers without a cookie exchange), so this
/// is what each ClientHello costs on a link where every byte counts; the
/// device's other flights are split to fit.
const MTU: usize = 548;
/// The largest datagram read (a larger one is cut, and fails its record's check).
const INBUF: usize = 4096;
/// Records dimpl holds before it refuses more.
const RX_QUEUE: usize = 16;

/// A DTLS session kept for the next call ([`CoapsClient::one_session`]).
type Slot = Arc<tokio::sync::Mutex<Option<Session>>>;

/// Which DTLS versions the client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    /// DTLS 1.3 only (the default).
    Dtls13,
    /// DTLS 1.3, or 1.2 if the server has only that (one hybrid ClientHello).
    Auto,
    /// DTLS 1.2 only (a server without 1.3; measurements).
    Dtls12,
}

impl Versions {
    /// From `$IOTPKI_COAPS_DTLS`: `1.3` (or unset), `auto`, or `1.2`.
    pub fn from_env() -> Result<Self, AgentError> {
        match std::env::var("IOTPKI_COAPS_DTLS").as_deref() {
            Err(_) | Ok("") | Ok("1.3") => Ok(Self::Dtls13),
            Ok("auto") => Ok(Self::Auto),
            Ok("1.2") => Ok(Self::Dtls12),
            Ok(other) => Err(AgentError::Usage(format!("IOTPKI_COAPS_DTLS={other:?}: give 1.3, auto or 1.2"))),
        }
    }
}

/// Byte counts of the last call (for the benchmark and the tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// UDP payload bytes sent.
    pub bytes_sent: u64,
    /// UDP payload bytes received.
    pub bytes_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// The DTLS version of the last session (`DTLSv1.3`, `DTLSv1.2`).
    pub version: Option<&'static str>,
}

/// An EST-coaps server at one `coaps://HOST:PORT` and label.
#[derive(Clone)]
pub struct CoapsClient {
    host: String,
    addr: SocketAddr,
    label: Option<String>,
    anchors: Vec<Vec<u8>>,
    /// Intermediates the device holds (its issuing chain), to complete the server's path.
    intermediates: Vec<Vec<u8>>,
    identity: Arc<ClientIdentity>,
    versions: Versions,
    traffic: Arc<Mutex<Traffic>>,
    /// CA certificates from `/crts` that completed the server's path once: the
    /// next sessions' paths are completed with them, without asking again.
    learned: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The session the calls share, if [`Self::one_session`] made this client.
    kept: Option<Slot>,
}

pub use crate::flow::is_coaps;

impl CoapsClient {
    /// A client for `server_url` (`coaps://host[:port]`, port 5684 by
    /// default) trusting only `anchors` (DER), authenticating with
    /// `identity` (DTLS needs a client certificate: see [`self_signed`]).
    /// `intermediates`: CA certificates the device holds that may complete
    /// the server's path.
    pub fn new(
        server_url: &str,
        label: Option<&str>,
        anchors: &[Vec<u8>],
        intermediates: &[Vec<u8>],
        identity: ClientIdentity,
    ) -> Result<Self, AgentError> {
        let (host, port) = crate::est_client::server_url(server_url, "coaps", 5684)?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map_err(|e| AgentError::Connect(format!("{host}: {e}")))?
            .next()
            .ok_or_else(|| AgentError::Connect(format!("{host}: no address")))?;
        match identity.key.key_type() {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => {}
            other => {
                return Err(AgentError::Usage(format!(
                    "EST over secure CoAP needs an ECDSA P-256 or P-384 key (DTLS with this key type: {other:?} is not offered)"
                )))
            }
        }
        Ok(Self {
            host,
            addr,
            label: label.map(str::to_string),
            anchors: anchors.to_vec(),
            intermediates: intermediates.to_vec(),
            identity: Arc::new(identity),
            versions: Versions::from_env()?,
            traffic: Arc::new(Mutex::new(Traffic::default())),
            learned: Arc::new(Mutex::new(Vec::new())),
            kept: None,
        })
    }

    /// The same client, its calls on one DTLS session (and its clones' calls:
    /// they share it): a flow's calls make one handshake, and the session
    /// stays open while a clone of the client lives (a close_notify is sent
    /// when the last is dropped). A kept session the server has closed (a
    /// close_notify read before the next call) or forgotten (no datagram at all
    /// back before the request's first retransmission would be due) is replaced
    /// by a new one, once: an EST request is safe to send again. The session is
    /// out of the client while a call is under way, so a call given up halfway
    /// takes it along (and CoAP's token ties each answer to its request).
    pub fn one_session(mut self) -> Self {
        self.kept = Some(Arc::new(tokio::sync::Mutex::new(None)));
        self
    }

    /// Offer these DTLS versions (default: `$IOTPKI_COAPS_DTLS`, else 1.3 only).
    pub fn with_versions(mut self, versions: Versions) -> Self {
        self.versions = versions;
        self
    }

    /// What the calls so far sent and received.
    pub fn traffic(&self) -> Traffic {
        self.traffic.lock().map(|t| *t).unwrap_or_default()
    }

    fn path(&self, op: &str) -> String {
        match &self.label {
            Some(l) => format!("/.well-known/est/{l}/{op}"),
            None => format!("/.well-known/est/{op}"),
        }
    }

    /// `GET /crts`: the CA certificates (DER).
    pub async fn cacerts(&self) -> Result<Vec<Vec<u8>>, AgentError> {
        let path = self.path("crts");
        let answer = self.call(Code::GET, &path, None, Some(coap_est::CT_PKCS7_CERTS_ONLY), Vec::new()).await?;
        expect_format(&answer, coap_est::CT_PKCS7_CERTS_ONLY)?;
        pkcs7::parse_certs_only(&answer.payload).map_err(|e| AgentError::BadAnswer(format!("/crts: {e}")))
    }

    /// `POST /sen`: a first enrollment (the request carries the token in its
    /// challengePassword, or the client certificate is a birth certificate).
    pub async fn simple_enroll(&self, csr_der: &[u8]) -> Result<Vec<u8>, AgentError> {
        self.enroll("sen", csr_der).await
    }

    /// `POST /sren`: renewal with the current certificate.
    pub async fn simple_reenroll(&self, csr_der: &[u8]) -> Result<Vec<u8>, AgentError> {
        self.enroll("sren", csr_der).await
    }

    /// Any request (on a new session, or the kept one), its answer as it came (4.xx and 5.xx
    /// included): for tests and load generators that send what a correct
    /// client never would. `path` may carry a query (`/a?b=c`).
    pub async fn raw(
        &self,
        method: Code,
        path: &str,
        content_format: Option<u16>,
        accept: Option<u16>,
        payload: Vec<u8>,
    ) -> Result<iotpki_coap::client::ClientResponse, AgentError> {
        let r = self.call_inner(method, path, content_format, accept, payload);
        tokio::time::timeout(CALL_TIMEOUT, r)
            .await
            .map_err(|_| AgentError::Connect(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))?
    }

    async fn enroll(&self, op: &str, csr_der: &[u8]) -> Result<Vec<u8>, AgentError> {
        let path = self.path(op);
        // The bare certificate (287): the device holds its chain already, and it is the fewest bytes.
        let answer = self
            .call(Code::POST, &path, Some(coap_est::CT_PKCS10), Some(coap_est::CT_PKIX_CERT), csr_der.to_vec())
            .await?;
        expect_format(&answer, coap_est::CT_PKIX_CERT)?;
        Ok(answer.payload)
    }

    /// One request, its answer a success.
    async fn call(
        &self,
        method: Code,
        path: &str,
        content_format: Option<u16>,
        accept: Option<u16>,
        payload: Vec<u8>,
    ) -> Result<iotpki_coap::client::ClientResponse, AgentError> {
        let answer = self.raw(method, path, content_format, accept, payload).await?;
        if answer.code.class() != 2 {
            let reason = String::from_utf8_lossy(&answer.payload).trim().to_string();
            return Err(AgentError::Refused {
                status: http_equivalent(answer.code),
                reason: format!("{} {reason}", answer.code),
            });
        }
        Ok(answer)
    }

    async fn call_inner(
        &self,
        method: Code,
        path: &str,
        content_format: Option<u16>,
        accept: Option<u16>,
        payload: Vec<u8>,
    ) -> Result<iotpki_coap::client::ClientResponse, AgentError> {
        let request = Request { method, path, content_format, accept, payload };
        let Some(slot) = &self.kept else {
            // Dropped at the end: its close_notify goes.
            let mut session = self.open().await?;
            return self.answer(&mut session, &request, false).await;
        };
        let mut slot = slot.lock().await;
        if let Some(mut session) = slot.take() {
            if session.still_open() {
                if let Ok(answer) = self.answer(&mut session, &request, true).await {
                    *slot = Some(session);
                    return Ok(answer);
                }
            }
        }
        let mut session = self.open().await?;
        let answer = self.answer(&mut session, &request, false).await?;
        *slot = Some(session);
        Ok(answer)
    }

    /// A new DTLS session, its server judged: nothing is sent before the
    /// server's certificate chains to our anchor and names our host.
    async fn open(&self) -> Result<Session, AgentError> {
        let bind: SocketAddr = if self.addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
            .parse()
            .map_err(|e| AgentError::Connect(format!("{e}")))?;
        let udp = |e: std::io::Error| AgentError::Connect(format!("UDP: {e}"));
        let socket = std::net::UdpSocket::bind(bind).map_err(udp)?;
        socket.set_nonblocking(true).map_err(udp)?;
        socket.connect(self.addr).map_err(|e| AgentError::Connect(format!("{}: {e}", self.addr)))?;
        let plain = socket.try_clone().map_err(udp)?;
        let socket = UdpSocket::from_std(socket).map_err(udp)?;
        let mut session = Session::open(self, socket, plain)?;
        let leaf = session.handshake().await?;
        let mut pool = self.intermediates.clone();
        pool.extend(self.learned.lock().map(|l| l.clone()).unwrap_or_default());
        if let Err(first) = self.check_server(&leaf, &pool) {
            // First contact: the device may not hold the server's issuing CA; /crts (public) may complete the path.
            let crts = session
                .request(Code::GET, &self.path("crts"), None, Some(coap_est::CT_PKCS7_CERTS_ONLY), Vec::new(), false)
                .await?;
            let extra = pkcs7::parse_certs_only(&crts.payload).unwrap_or_default();
            pool.extend(extra.iter().cloned());
            self.check_server(&leaf, &pool).map_err(|_| first)?;
            if let Ok(mut l) = self.learned.lock() {
                *l = extra;
            }
            // Asked on this session after the server proved itself: the answer
            // to this session's own `cacerts`, which need not ask again.
            session.crts = Some(crts);
        }
        Ok(session)
    }

    /// `request`'s answer on `session`; `kept`: a session from an earlier call,
    /// given up early if the server shows no sign of holding it still.
    async fn answer(
        &self,
        session: &mut Session,
        request: &Request<'_>,
        kept: bool,
    ) -> Result<iotpki_coap::client::ClientResponse, AgentError> {
        // The very request the path's completion sent, and nothing else (a raw
        // call asking another format, say, goes to the server).
        let crts = request.method == Code::GET
            && request.path == self.path("crts")
            && request.content_format.is_none()
            && request.accept == Some(coap_est::CT_PKCS7_CERTS_ONLY)
            && request.payload.is_empty();
        if crts {
            if let Some(answer) = session.crts.take() {
                return Ok(answer);
            }
        }
        let r = request;
        session.request(r.method, r.path, r.content_format, r.accept, r.payload.clone(), kept).await
    }

    /// The server's leaf must chain to an anchor for serverAuth and name our host.
    fn check_server(&self, leaf: &[u8], intermediates: &[Vec<u8>]) -> Result<(), AgentError> {
        let der = CertificateDer::from(leaf);
        let ee = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| AgentError::Untrusted(format!("the server's certificate is malformed: {e}")))?;
        let anchor_ders: Vec<CertificateDer<'_>> =
            self.anchors.iter().map(|a| CertificateDer::from(a.as_slice())).collect();
        let anchors: Vec<TrustAnchor<'_>> = anchor_ders
            .iter()
            .map(|a| {
                webpki::anchor_from_trusted_cert(a).map_err(|e| AgentError::Untrusted(format!("trust anchor: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let inter: Vec<CertificateDer<'_>> = intermediates.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
        let now = UnixTime::now();
        ee.verify_for_usage(
            crate::est_client::SIGNATURE_ALGORITHMS.all,
            &anchors,
            &inter,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| AgentError::Untrusted(format!("the server's certificate does not chain to our anchor: {e}")))?;
        let name = ServerName::try_from(self.host.as_str())
            .map_err(|e| AgentError::Usage(format!("server name {:?}: {e}", self.host)))?;
        ee.verify_is_valid_for_subject_name(&name)
            .map_err(|e| AgentError::Untrusted(format!("the server's certificate is not for {}: {e}", self.host)))
    }
}

fn expect_format(a: &iotpki_coap::client::ClientResponse, want: u16) -> Result<(), AgentError> {
    if a.content_format != Some(want) {
        return Err(AgentError::BadAnswer(format!("content format {:?}, expected {want}", a.content_format)));
    }
    Ok(())
}

/// The HTTP status a CoAP response code stands for (4.03 → 403, 5.03 → 503):
/// the agent's retry rules are written in HTTP statuses.
pub fn http_equivalent(code: Code) -> u16 {
    u16::from(code.class()) * 100 + u16::from(code.detail())
}

/// One call's request.
struct Request<'a> {
    method: Code,
    path: &'a str,
    content_format: Option<u16>,
    accept: Option<u16>,
    payload: Vec<u8>,
}

/// One DTLS session on a connected socket; dropped, it sends its close_notify.
struct Session {
    addr: SocketAddr,
    traffic: Arc<Mutex<Traffic>>,
    socket: UdpSocket,
    /// The same socket, used without the reactor (non-blocking): the
    /// close_notify sent on drop (no await there), and what came while the
    /// session was kept.
    plain: std::net::UdpSocket,
    dtls: Dtls,
    /// `/crts` as asked on this session to complete the server's path, for its `cacerts`.
    crts: Option<iotpki_coap::client::ClientResponse>,
    /// The server closed the session (its close_notify was read).
    closed: bool,
    /// Datagrams read on this session.
    datagrams_in: u64,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    next_timeout: Option<Instant>,
    peer_leaf: Option<Vec<u8>>,
    connected: bool,
    received: Vec<Vec<u8>>,
    message_id: u16,
    _handle: KeyHandle,
}

impl Session {
    fn open(client: &CoapsClient, socket: UdpSocket, plain: std::net::UdpSocket) -> Result<Self, AgentError> {
        let handle = KeyHandles::register(client.identity.key.clone());
        let provider = CryptoProvider { key_provider: &KEY_HANDLES, ..dimpl::crypto::aws_lc_rs::default_provider() };
        let config = dimpl::Config::builder()
            .mtu(MTU)
            // At most RX_QUEUE datagrams of INBUF bytes are held: the server's
            // certificate, which dimpl copies into `out` whole, fits there.
            .max_queue_rx(RX_QUEUE)
            .with_crypto_provider(provider)
            .build()
            .map_err(|e| AgentError::Connect(format!("DTLS configuration: {e}")))?;
        let cert = DtlsCertificate {
            certificate: client.identity.chain.first().cloned().unwrap_or_default(),
            private_key: handle.der(),
        };
        let now = Instant::now();
        let mut dtls = match client.versions {
            Versions::Dtls13 => Dtls::new_13(Arc::new(config), cert, now),
            Versions::Auto => Dtls::new_auto(Arc::new(config), cert, now),
            Versions::Dtls12 => Dtls::new_12(Arc::new(config), cert, now),
        };
        dtls.set_active(true);
        // dimpl starts (its first flight, its random) on the first timeout.
        dtls.handle_timeout(now).map_err(|e| AgentError::Connect(format!("DTLS: {e}")))?;
        let message_id = (rand::random::<u16>()) | 1;
        Ok(Self {
            addr: client.addr,
            traffic: client.traffic.clone(),
            socket,
            plain,
            dtls,
            crts: None,
            closed: false,
            datagrams_in: 0,
            out: vec![0u8; RX_QUEUE * INBUF + 4096],
            inbuf: vec![0u8; INBUF],
            next_timeout: None,
            peer_leaf: None,
            connected: false,
            received: Vec::new(),
            message_id,
            _handle: handle,
        })
    }

    /// Send what dimpl has; note what it says.
    async fn flush(&mut self) -> Result<(), AgentError> {
        loop {
            match self.dtls.poll_output(&mut self.out) {
                Output::Packet(p) => {
                    // Awaited, not tried: a new socket is not known to be writable
                    // yet, and a dropped first flight would cost a retransmission timeout.
                    let p = p.to_vec();
                    self.socket.send(&p).await.map_err(|e| AgentError::Connect(format!("UDP send: {e}")))?;
                    if let Ok(mut t) = self.traffic.lock() {
                        t.bytes_sent += p.len() as u64;
                        t.datagrams_sent += 1;
                    }
                }
                Output::BufferTooSmall { needed } if needed <= 1 << 20 => self.out.resize(needed, 0),
                Output::BufferTooSmall { needed } => {
                    return Err(AgentError::Connect(format!("DTLS wants a {needed}-byte output buffer")))
                }
                Output::Timeout(t) => {
                    self.next_timeout = Some(t);
                    return Ok(());
                }
                Output::Connected => {
                    self.connected = true;
                    let v = match self.dtls.protocol_version() {
                        Some(dimpl::ProtocolVersion::DTLS1_2) => "DTLSv1.2",
                        _ => "DTLSv1.3",
                    };
                    if let Ok(mut t) = self.traffic.lock() {
                        t.version = Some(v);
                    }
                }
                Output::PeerCert(der) => self.peer_leaf = Some(der.to_vec()),
                Output::ApplicationData(d) => self.received.push(d.to_vec()),
                Output::CloseNotify => {
                    self.closed = true;
                    return Err(AgentError::Connect("the server closed the DTLS session".into()));
                }
                _ => {}
            }
        }
    }

    /// Wait for a datagram or the next timer, and feed it to dimpl.
    async fn step(&mut self) -> Result<(), AgentError> {
        let wake = self.next_timeout.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            r = self.socket.recv(&mut self.inbuf) => self.received_datagram(r)?,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                self.dtls.handle_timeout(Instant::now()).map_err(|e| AgentError::Connect(format!("DTLS: {e}")))?;
            }
        }
        self.flush().await
    }

    /// A datagram read (`r`: its length): counted, and fed to dimpl.
    fn received_datagram(&mut self, r: std::io::Result<usize>) -> Result<(), AgentError> {
        let n = r.map_err(|e| AgentError::Connect(format!("UDP receive: {e}")))?;
        self.datagrams_in += 1;
        if let Ok(mut t) = self.traffic.lock() {
            t.bytes_received += n as u64;
            t.datagrams_received += 1;
        }
        let data = self.inbuf[..n].to_vec();
        self.dtls.handle_packet(&data).map_err(|e| AgentError::Connect(format!("DTLS: {e}")))
    }

    /// The handshake; the server's leaf certificate.
    async fn handshake(&mut self) -> Result<Vec<u8>, AgentError> {
        self.flush().await?;
        while !self.connected {
            self.step().await?;
        }
        self.peer_leaf.clone().ok_or_else(|| AgentError::Connect("the server showed no certificate".into()))
    }

    /// One confirmable request, with block-wise transfer both ways and
    /// CoAP retransmission (RFC 7252 §4.2) on top of DTLS.
    async fn request(
        &mut self,
        method: Code,
        path: &str,
        content_format: Option<u16>,
        accept: Option<u16>,
        payload: Vec<u8>,
        kept: bool,
    ) -> Result<iotpki_coap::client::ClientResponse, AgentError> {
        let heard_before = self.datagrams_in;
        let token: Vec<u8> = rand::random::<[u8; 4]>().to_vec();
        self.message_id = self.message_id.wrapping_add(1);
        let mut ex = Exchange::new(method, path, content_format, accept, payload, SZX, self.message_id, token)
            .map_err(|e| AgentError::Usage(format!("CoAP request {path}: {e}")))?;
        let mut retry = Retransmission::new(rand::random::<f64>());
        let mut datagram = ex.datagram();
        self.send_app(&datagram).await?;
        // None: acknowledged, the answer comes on its own (no more retransmissions).
        let mut deadline = Some(Instant::now() + retry.timeout());
        let separate_deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            for d in std::mem::take(&mut self.received) {
                let progress = ex.receive(&d);
                if let Some(ack) = ex.take_ack() {
                    self.send_app(&ack).await?;
                }
                match progress {
                    Progress::Send => {
                        self.message_id = ex.message_id();
                        datagram = ex.datagram();
                        self.send_app(&datagram).await?;
                        retry = Retransmission::new(rand::random::<f64>());
                        deadline = Some(Instant::now() + retry.timeout());
                    }
                    Progress::Acknowledged => deadline = None,
                    Progress::Done(r) => {
                        self.message_id = ex.message_id();
                        return Ok(r);
                    }
                    Progress::Ignored => {}
                    Progress::Failed(why) => return Err(AgentError::BadAnswer(why)),
                }
            }
            let deadline_or_end = deadline.unwrap_or(separate_deadline);
            let wake = self.next_timeout.map_or(deadline_or_end, |t| t.min(deadline_or_end));
            tokio::select! {
                r = self.socket.recv(&mut self.inbuf) => {
                    self.received_datagram(r)?;
                    self.flush().await?;
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    let now = Instant::now();
                    if self.next_timeout.is_some_and(|t| t <= now) {
                        self.dtls.handle_timeout(now).map_err(|e| AgentError::Connect(format!("DTLS: {e}")))?;
                        self.flush().await?;
                    }
                    if deadline_or_end <= now {
                        if kept && self.datagrams_in == heard_before {
                            // Not a datagram back, not even an ACK: the server no longer
                            // holds this session (its close_notify was lost), or the
                            // link lost a datagram; either way a new session is cheaper
                            // than the retransmissions' minute.
                            return Err(AgentError::Connect(format!("{}: the kept DTLS session is silent", self.addr)));
                        }
                        if deadline.is_none() || !retry.on_timeout() {
                            return Err(AgentError::Connect(format!("no CoAP answer from {} for {path}", self.addr)));
                        }
                        self.send_app(&datagram).await?;
                        deadline = Some(now + retry.timeout());
                    }
                }
            }
        }
    }

    async fn send_app(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        self.dtls.send_application_data(bytes).map_err(|e| AgentError::Connect(format!("DTLS: {e}")))?;
        self.flush().await
    }

    /// Whether a kept session may carry the next call: what came meanwhile
    /// (a close_notify, say) is read first, without waiting.
    fn still_open(&mut self) -> bool {
        loop {
            // The plain socket: tokio's try_recv would not look while the
            // reactor has not reported the socket readable.
            match self.plain.recv(&mut self.inbuf) {
                Ok(n) => {
                    if self.received_datagram(Ok(n)).is_err() {
                        return false;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        self.drain_now();
        // A late copy of an earlier answer: no later request's.
        self.received.clear();
        !self.closed
    }

    /// What dimpl has to send, sent without waiting; a close_notify noted.
    fn drain_now(&mut self) {
        let mut pending = Vec::new();
        loop {
            match self.dtls.poll_output(&mut self.out) {
                Output::Packet(p) => pending.push(p.to_vec()),
                Output::CloseNotify => self.closed = true,
                Output::ApplicationData(d) => self.received.push(d.to_vec()),
                Output::Timeout(t) => {
                    self.next_timeout = Some(t);
                    break;
                }
                Output::BufferTooSmall { .. } => break,
                _ => {}
            }
        }
        for p in pending {
            self.send_now(&p);
        }
    }

    /// A datagram sent without waiting (the socket has sent before: it is writable).
    fn send_now(&self, p: &[u8]) {
        if self.plain.send(p).is_ok() {
            if let Ok(mut t) = self.traffic.lock() {
                t.bytes_sent += p.len() as u64;
                t.datagrams_sent += 1;
            }
        }
    }
}

impl Drop for Session {
    /// The close_notify, so that the server frees the session now rather than
    /// at its idle timeout; not after a handshake that never finished (dimpl
    /// then sends nothing) or a close by the server.
    fn drop(&mut self) {
        if !self.connected || self.closed || self.dtls.close().is_err() {
            return;
        }
        loop {
            match self.dtls.poll_output(&mut self.out) {
                Output::Packet(p) => {
                    let p = p.to_vec();
                    self.send_now(&p);
                }
                Output::Timeout(_) | Output::BufferTooSmall { .. } => break,
                _ => {}
            }
        }
    }
}

/// Device keys for dimpl, by handle: dimpl asks its key provider to "load"
/// the key from the bytes given as the private key; for us those bytes name
/// a [`Signer`] registered for the session (a key file, a PKCS#11 token, a
/// TPM), which makes the handshake's signature. No key material is copied.
#[derive(Debug)]
struct KeyHandles {
    keys: Mutex<Option<HashMap<u64, Registered>>>,
}

static KEY_HANDLES: KeyHandles = KeyHandles { keys: Mutex::new(None) };
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);
const HANDLE_PREFIX: &[u8] = b"iotpki-key-handle:";

struct Registered(Arc<dyn Signer>);

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

/// A registered key; unregistered when dropped.
struct KeyHandle(u64);

impl KeyHandle {
    fn der(&self) -> Vec<u8> {
        let mut v = HANDLE_PREFIX.to_vec();
        v.extend_from_slice(&self.0.to_be_bytes());
        v
    }
}

impl Drop for KeyHandle {
    fn drop(&mut self) {
        if let Ok(mut g) = KEY_HANDLES.keys.lock() {
            if let Some(m) = g.as_mut() {
                m.remove(&self.0);
            }
        }
    }
}

impl KeyHandles {
    fn register(key: Arc<dyn Signer>) -> KeyHandle {
        let id = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = KEY_HANDLES.keys.lock() {
            g.get_or_insert_with(HashMap::new).insert(id, Registered(key));
        }
        KeyHandle(id)
    }
}

impl KeyProvider for KeyHandles {
    fn load_private_key(&self, key_der: &[u8]) -> Result<Box<dyn SigningKey>, CryptoError> {
        let id = key_der
            .strip_prefix(HANDLE_PREFIX)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or(CryptoError::InvalidPrivateKey)?;
        let key = self
            .keys
            .lock()
            .ok()
            .and_then(|g| g.as_ref().and_then(|m| m.get(&id).map(|r| r.0.clone())))
            .ok_or(CryptoError::InvalidPrivateKey)?;
        let hash = match key.key_type() {
            KeyType::EcdsaP256 => HashAlgorithm::SHA256,
            KeyType::EcdsaP384 => HashAlgorithm::SHA384,
            _ => return Err(CryptoError::InvalidPrivateKey),
        };
        Ok(Box::new(DeviceSigningKey { key: std::panic::AssertUnwindSafe(key), hash }))
    }
}

struct DeviceSigningKey {
    key: std::panic::AssertUnwindSafe<Arc<dyn Signer>>,
    hash: HashAlgorithm,
}

impl std::fmt::Debug for DeviceSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceSigningKey(..)")
    }
}

impl SigningKey for DeviceSigningKey {
    fn sign(&mut self, data: &[u8], hash_alg: HashAlgorithm, out: &mut Buf) -> Result<(), CryptoError> {
        if hash_alg != self.hash {
            let group = if self.hash == HashAlgorithm::SHA384 { NamedGroup::Secp384r1 } else { NamedGroup::Secp256r1 };
            return Err(CryptoError::SigningKeyUnsupportedHash { group, hash: hash_alg });
        }
        // Signer hashes as its key type says (SHA-256 for P-256, SHA-384 for P-384) and answers DER ECDSA.
        let sig = self.key.sign(data).map_err(|_| CryptoError::InvalidPrivateKey)?;
        out.clear();
        out.extend_from_slice(&sig);
        Ok(())
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }

    fn hash_algorithm(&self) -> HashAlgorithm {
        self.hash
    }

    fn supported_hash_algorithms(&self) -> &[HashAlgorithm] {
        if self.hash == HashAlgorithm::SHA384 {
            &[HashAlgorithm::SHA384]
        } else {
            &[HashAlgorithm::SHA256]
        }
    }
}

/// A self-signed certificate of `key` for `serial`, valid for a day: what a
/// device without any certificate yet presents in the DTLS handshake of its
/// first enrollment (the server checks it is for the key in the request).
pub fn self_signed(key: &dyn Signer, serial: &iotpki_core::name::DeviceSerial) -> Result<Vec<u8>, AgentError> {
    use iotpki_core::profile::{self, CertParams, Issuer, Profile};
    use spki::der::Decode;
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der())
        .map_err(|e| AgentError::Usage(format!("public key: {e}")))?;
    let subject = iotpki_core::name::NameBuilder::default().common_name(serial.as_str())?.build();
    let now = crate::clock::now();
    let (serial_number, _) = iotpki_core::serial::random_serial(&iotpki_core::random::SystemRandomSource::new(), now)?;
    let key_id = iotpki_core::keys::key_identifier(&spki);
    let params = CertParams {
        profile: Profile::Device,
        serial: serial_number,
        subject: subject.clone(),
        spki,
        not_before: now - 300,
        not_after: now + 86_400,
        dns_names: vec![],
        ip_addrs: vec![],
        permitted_subtree: None,
    };
    let issuer = Issuer { subject: &subject, key_id: &key_id, not_after: now + 86_400, signer: key };
    Ok(profile::issue(&params, &issuer)?.der)
}
