//! EST over secure CoAP (EST-coaps, RFC 9148): CoAP (RFC 7252, block-wise
//! transfer RFC 7959) on DTLS 1.3 (RFC 9147), or DTLS 1.2 by config, on UDP.
//!
//! One task owns the socket and every peer's session; it is sans-IO all the
//! way down (the DTLS engine is `dimpl`, the CoAP exchange layer is
//! `iotpki-coap`): a datagram in, records and answers out. What blocks (the
//! store, signing, signature checks) runs on the blocking pool, exactly the
//! work of the HTTPS server (`est`), and comes back to the loop as a message.
//!
//! Per peer (an address and port) there is one session: its DTLS state, the
//! client's leaf certificate from the handshake, and its CoAP endpoint
//! (duplicates, Block1 reassembly, Block2 answers). Bounds:
//!
//! - a datagram bucket per IP address (`udp_datagram_rate_per_s`): past it,
//!   datagrams are dropped unread;
//! - a new session only for what looks like a DTLS ClientHello; at most
//!   `udp_sessions_per_address` per address and `udp_max_handshakes`
//!   unfinished handshakes in all (past it, the oldest that never sent a
//!   second datagram, i.e. never answered our cookie, makes room);
//! - `max_connections` sessions in all; the handshake within
//!   `handshake_timeout`, idle sessions dropped after `idle_timeout`, any
//!   session after `connection_lifetime` or `max_requests_per_connection`;
//! - datagrams over [`MAX_DATAGRAM`] bytes are dropped; dimpl queues at most
//!   `RX_QUEUE` records per session; the CoAP endpoint holds one upload of
//!   at most the enrollment limit (16 KiB) and a bounded set of answers;
//! - one request in progress per session (CoAP's NSTART = 1): a second gets 5.03.
//!
//! The cookie exchange (HelloRetryRequest in 1.3, HelloVerifyRequest in 1.2)
//! is on: a spoofed source address gets one answer no larger than what it
//! sent (`coaps::an_unanswered_client_hello_gets_no_more_bytes_than_it_sent`).

mod est;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dimpl::{Dtls, DtlsCertificate, Output};
use iotpki_authority::Authority;
use iotpki_coap::server::{Endpoint, Received};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::limits::{LimitsHandle, RateLimiter};

/// Datagrams larger than this are dropped (a DTLS record on any real path is smaller).
pub const MAX_DATAGRAM: usize = 2048;
/// Records dimpl queues per session before it refuses more.
const RX_QUEUE: usize = 16;
/// How often timers (retransmissions, timeouts, expiry) are looked at.
const TICK: Duration = Duration::from_millis(25);

/// How the EST-coaps listener runs.
#[derive(Clone, Debug)]
pub struct CoapsOptions {
    /// Accept DTLS 1.2 too, for stacks that have only that (`[server] coaps_dtls12`); off: DTLS 1.3 only.
    pub dtls12: bool,
    /// The cookie exchange before any handshake work. On: only a benchmark switches it off.
    pub cookie: bool,
    /// The largest datagram the server sends (the path MTU less the IP and UDP headers).
    pub mtu: usize,
}

impl Default for CoapsOptions {
    fn default() -> Self {
        Self { dtls12: false, cookie: true, mtu: 1152 }
    }
}

/// The server's DTLS certificate and key: a reload replaces them for new
/// sessions (like [`crate::TlsConfigs`]).
#[derive(Clone)]
pub struct DtlsIdentity(Arc<RwLock<DtlsCertificate>>);

impl std::fmt::Debug for DtlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DtlsIdentity(..)")
    }
}

impl DtlsIdentity {
    /// The authority's server certificate (the leaf: DTLS sends one
    /// certificate; clients hold the CA chain from `/crts`) and its key.
    pub fn of(authority: &Authority) -> Self {
        let (chain, key) = authority.server_tls();
        Self::new(chain.first().map(|c| c.to_vec()).unwrap_or_default(), key.secret_der().to_vec())
    }

    /// A certificate (DER) and its PKCS#8 key (DER).
    pub fn new(certificate: Vec<u8>, private_key: Vec<u8>) -> Self {
        Self(Arc::new(RwLock::new(DtlsCertificate { certificate, private_key })))
    }

    fn current(&self) -> DtlsCertificate {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// From now on, new sessions get this certificate and key.
    pub fn replace(&self, other: &DtlsIdentity) {
        let next = other.current();
        match self.0.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
    }
}

/// One peer's session.
struct Session {
    dtls: Dtls,
    /// Which session of this address it is: answers for an earlier one are dropped.
    generation: u64,
    created: Instant,
    last_heard: Instant,
    next_timeout: Option<Instant>,
    /// The client's leaf certificate (DER), once the handshake showed it.
    leaf: Option<Arc<Vec<u8>>>,
    connected: bool,
    datagrams: u32,
    endpoint: Endpoint,
    /// A request is with the authority.
    busy: bool,
    requests: u32,
    /// The DTLS version, once known (for the log and the tests).
    version: Option<&'static str>,
}

/// A request's answer, back from the blocking pool.
struct Done {
    peer: SocketAddr,
    generation: u64,
    request: iotpki_coap::server::Request,
    response: iotpki_coap::server::Response,
}

/// What the loop counts (for the log at shutdown and the tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct CoapsStats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams dropped unread (rate, size, not a ClientHello, no room).
    pub dropped: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Sessions ended by a DTLS error.
    pub failed: u64,
}

/// Serve EST-coaps on `socket` until `shutdown` completes.
pub async fn serve_coaps(
    authority: Arc<Authority>,
    socket: UdpSocket,
    limits: LimitsHandle,
    identity: DtlsIdentity,
    options: CoapsOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<CoapsStats> {
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(1024);
    // Sends go straight to the socket (non-blocking): tokio's try_send would
    // refuse while the reactor has not yet reported the socket writable.
    let std_socket = socket.into_std()?;
    let sender = std_socket.try_clone()?;
    let socket = UdpSocket::from_std(std_socket)?;
    // Open DTLS sessions, for /metrics: set after every event of the loop.
    let open = authority.metrics().open_connections.with(&["coaps"]);
    let mut server = Server::new(authority, socket, sender, limits, identity, options, done_tx)?;
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            r = server.socket.recv_from(&mut buf) => match r {
                Ok((n, peer)) => server.datagram(peer, &buf[..n]),
                // ICMP unreachable from an earlier send, and the like: not the socket's end.
                Err(e) if e.kind() != std::io::ErrorKind::Interrupted => tracing::debug!(error = %e, "UDP receive"),
                Err(_) => {}
            },
            Some(done) = done_rx.recv() => server.done(done),
            _ = tick.tick() => server.tick(Instant::now()),
            _ = &mut shutdown => break,
        }
        open.set(i64::try_from(server.sessions.len()).unwrap_or(i64::MAX));
    }
    server.close_all();
    open.set(0);
    Ok(server.stats)
}

struct Server {
    authority: Arc<Authority>,
    socket: Arc<UdpSocket>,
    /// The same socket, for sends.
    sender: std::net::UdpSocket,
    limits: LimitsHandle,
    limiter: Arc<RateLimiter>,
    identity: DtlsIdentity,
    options: CoapsOptions,
    config: Arc<dimpl::Config>,
    /// The EST labels, for discovery.
    labels: Vec<String>,
    sessions: HashMap<SocketAddr, Session>,
    per_address: HashMap<IpAddr, usize>,
    handshaking: usize,
    next_generation: u64,
    done_tx: mpsc::Sender<Done>,
    /// Where dimpl writes its output (the peer's certificate included: it is
    /// at most RX_QUEUE datagrams of MAX_DATAGRAM bytes).
    out: Vec<u8>,
    stats: CoapsStats,
    /// `iotpki_connections_accepted_total{listener="coaps"}`: handshakes completed.
    accepted: Arc<iotpki_metrics::Counter>,
}

impl Server {
    fn new(
        authority: Arc<Authority>,
        socket: UdpSocket,
        sender: std::net::UdpSocket,
        limits: LimitsHandle,
        identity: DtlsIdentity,
        options: CoapsOptions,
        done_tx: mpsc::Sender<Done>,
    ) -> std::io::Result<Self> {
        let l = limits.current();
        let config = dimpl::Config::builder()
            .mtu(options.mtu)
            .max_queue_rx(RX_QUEUE)
            .require_client_certificate(true)
            .use_server_cookie(options.cookie)
            .handshake_timeout(l.handshake_timeout.max(Duration::from_secs(1)))
            .build()
            .map_err(|e| std::io::Error::other(format!("DTLS configuration: {e}")))?;
        let labels = authority.config().label.iter().map(|l| l.name.clone()).collect();
        let accepted = authority.metrics().accepted_connections.with(&["coaps"]);
        Ok(Self {
            accepted,
            labels,
            authority,
            socket: Arc::new(socket),
            sender,
            limiter: Arc::new(RateLimiter::new(limits.clone())),
            limits,
            identity,
            options,
            config: Arc::new(config),
            sessions: HashMap::new(),
            per_address: HashMap::new(),
            handshaking: 0,
            next_generation: 1,
            done_tx,
            out: vec![0u8; RX_QUEUE * (MAX_DATAGRAM + 64) + 4096],
            stats: CoapsStats::default(),
        })
    }

    /// One datagram from `peer`.
    fn datagram(&mut self, peer: SocketAddr, data: &[u8]) {
        self.stats.datagrams_in += 1;
        let ip = peer.ip().to_string();
        if data.len() > MAX_DATAGRAM || self.limiter.datagram(&ip).is_err() {
            self.stats.dropped += 1;
            return;
        }
        let now = Instant::now();
        if !self.sessions.contains_key(&peer) && !self.open(peer, data, now) {
            self.stats.dropped += 1;
            return;
        }
        let Some(s) = self.sessions.get_mut(&peer) else { return };
        s.last_heard = now;
        s.datagrams = s.datagrams.saturating_add(1);
        if let Err(e) = s.dtls.handle_packet(data) {
            tracing::debug!(%peer, error = %e, "DTLS session ended");
            self.stats.failed += 1;
            self.remove(peer);
            return;
        }
        self.drain(peer, now);
    }

    /// A session for a new peer, if `data` is a ClientHello and there is room.
    fn open(&mut self, peer: SocketAddr, data: &[u8], now: Instant) -> bool {
        if !looks_like_client_hello(data) {
            return false;
        }
        let l = self.limits.current();
        if self.per_address.get(&peer.ip()).copied().unwrap_or(0) >= l.udp_sessions_per_address
            || self.sessions.len() >= l.max_connections
        {
            return false;
        }
        if self.handshaking >= l.udp_max_handshakes {
            // Make room: the oldest handshake that never got past its first datagram.
            let oldest = self
                .sessions
                .iter()
                .filter(|(_, s)| !s.connected && s.datagrams <= 1)
                .min_by_key(|(_, s)| s.created)
                .map(|(p, _)| *p);
            match oldest {
                Some(p) => self.remove(p),
                None => return false,
            }
        }
        let cert = self.identity.current();
        let dtls = if self.options.dtls12 {
            Dtls::new_auto(self.config.clone(), cert, now)
        } else {
            Dtls::new_13(self.config.clone(), cert, now)
        };
        let mut endpoint =
            Endpoint::new(iotpki_coap::server::Limits { max_body: crate::gate::ENROLL_MAX, ..Default::default() });
        // The message ids of our own (NON) messages start anywhere (RFC 7252 §4.4).
        endpoint.set_next_message_id(rand::random());
        let mut dtls = dtls;
        // dimpl starts its clock (and makes its random) on the first timeout.
        if dtls.handle_timeout(now).is_err() {
            return false;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.sessions.insert(
            peer,
            Session {
                dtls,
                generation,
                created: now,
                last_heard: now,
                next_timeout: None,
                leaf: None,
                connected: false,
                datagrams: 0,
                endpoint,
                busy: false,
                requests: 0,
                version: None,
            },
        );
        *self.per_address.entry(peer.ip()).or_insert(0) += 1;
        self.handshaking += 1;
        true
    }

    fn remove(&mut self, peer: SocketAddr) {
        if let Some(s) = self.sessions.remove(&peer) {
            if !s.connected {
                self.handshaking = self.handshaking.saturating_sub(1);
            }
            if let Some(n) = self.per_address.get_mut(&peer.ip()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_address.remove(&peer.ip());
                }
            }
        }
    }

    /// Send what the session has to send; hand what it received to CoAP.
    fn drain(&mut self, peer: SocketAddr, now: Instant) {
        let mut received: Vec<Vec<u8>> = Vec::new();
        let mut closed = false;
        {
            let Some(s) = self.sessions.get_mut(&peer) else { return };
            loop {
                match s.dtls.poll_output(&mut self.out) {
                    Output::Packet(p) => {
                        // UDP: a full send buffer loses the datagram, as the network may;
                        // the DTLS and CoAP retransmissions recover.
                        if let Err(e) = self.sender.send_to(p, peer) {
                            tracing::debug!(%peer, error = %e, "UDP send");
                        }
                    }
                    Output::BufferTooSmall { needed } => {
                        if needed > 1 << 20 {
                            closed = true;
                            break;
                        }
                        self.out.resize(needed, 0);
                    }
                    Output::Timeout(t) => {
                        s.next_timeout = Some(t);
                        break;
                    }
                    Output::Connected if !s.connected => {
                        s.connected = true;
                        s.version = match s.dtls.protocol_version() {
                            Some(dimpl::ProtocolVersion::DTLS1_2) => Some("DTLSv1.2"),
                            Some(_) => Some("DTLSv1.3"),
                            None => None,
                        };
                        self.handshaking = self.handshaking.saturating_sub(1);
                        self.stats.handshakes += 1;
                        self.accepted.inc();
                        tracing::debug!(%peer, version = s.version.unwrap_or("?"), "DTLS handshake done");
                    }
                    Output::PeerCert(der) => s.leaf = Some(Arc::new(der.to_vec())),
                    Output::ApplicationData(d) if s.connected => received.push(d.to_vec()),
                    Output::CloseNotify => closed = true,
                    _ => {}
                }
            }
        }
        if closed {
            self.remove(peer);
            return;
        }
        for d in received {
            self.coap(peer, &d, now);
        }
    }

    /// One CoAP message from an established session.
    fn coap(&mut self, peer: SocketAddr, data: &[u8], now: Instant) {
        let Some(s) = self.sessions.get_mut(&peer) else { return };
        match s.endpoint.receive(data, now) {
            Received::Reply(bytes) => self.send(peer, &bytes, now),
            Received::Nothing => {}
            Received::Request(request) => {
                let l = self.limits.current();
                if s.busy {
                    let busy = est::busy();
                    let bytes = s.endpoint.respond(&request, busy);
                    self.send(peer, &bytes, now);
                    return;
                }
                s.requests = s.requests.saturating_add(1);
                let ip = peer.ip().to_string();
                match est::Work::of(&request, s.leaf.clone(), &self.limiter, &ip, &self.labels) {
                    Err(response) => {
                        // As over HTTPS, every 4.xx but 4.29 counts against the address.
                        if est::counts_as_refusal(&response) {
                            self.limiter.refused(&ip);
                        }
                        let bytes = s.endpoint.respond(&request, response);
                        self.send(peer, &bytes, now);
                    }
                    Ok(work) => {
                        s.busy = true;
                        let (a, tx, generation, limiter) =
                            (self.authority.clone(), self.done_tx.clone(), s.generation, self.limiter.clone());
                        let timeout = l.request_timeout;
                        tokio::spawn(async move {
                            let response = match tokio::time::timeout(timeout, work.run(a)).await {
                                Ok(r) => r,
                                Err(_) => est::timed_out(timeout),
                            };
                            if est::counts_as_refusal(&response) {
                                limiter.refused(&ip);
                            }
                            let _ = tx.send(Done { peer, generation, request, response }).await;
                        });
                    }
                }
            }
        }
    }

    /// An answer back from the authority.
    fn done(&mut self, d: Done) {
        let now = Instant::now();
        let Some(s) = self.sessions.get_mut(&d.peer) else { return };
        if s.generation != d.generation {
            return;
        }
        s.busy = false;
        let bytes = s.endpoint.respond(&d.request, d.response);
        self.send(d.peer, &bytes, now);
        let max = self.limits.current().max_requests_per_connection;
        if s_requests(&self.sessions, d.peer) >= max {
            self.close(d.peer);
        }
    }

    fn send(&mut self, peer: SocketAddr, bytes: &[u8], now: Instant) {
        let Some(s) = self.sessions.get_mut(&peer) else { return };
        if let Err(e) = s.dtls.send_application_data(bytes) {
            tracing::debug!(%peer, error = %e, "DTLS send");
            self.stats.failed += 1;
            self.remove(peer);
            return;
        }
        self.drain(peer, now);
    }

    /// End a session with a close_notify.
    fn close(&mut self, peer: SocketAddr) {
        if let Some(s) = self.sessions.get_mut(&peer) {
            let _ = s.dtls.close();
            self.drain(peer, Instant::now());
        }
        self.remove(peer);
    }

    fn close_all(&mut self) {
        let peers: Vec<SocketAddr> = self.sessions.keys().copied().collect();
        for p in peers {
            self.close(p);
        }
    }

    /// Timers: retransmissions, handshakes too slow, idle and old sessions.
    fn tick(&mut self, now: Instant) {
        let l = self.limits.current();
        let mut due = Vec::new();
        let mut gone = Vec::new();
        for (p, s) in self.sessions.iter_mut() {
            s.endpoint.expire(now);
            let age = now.saturating_duration_since(s.created);
            let idle = now.saturating_duration_since(s.last_heard);
            if (!s.connected && age > l.handshake_timeout)
                || (s.connected && !s.busy && idle > l.idle_timeout)
                || age > l.connection_lifetime
            {
                gone.push((*p, s.connected));
            } else if s.next_timeout.is_some_and(|t| t <= now) {
                due.push(*p);
            }
        }
        for (p, connected) in gone {
            if connected {
                self.close(p);
            } else {
                self.remove(p);
            }
        }
        for p in due {
            let Some(s) = self.sessions.get_mut(&p) else { continue };
            s.next_timeout = None;
            if let Err(e) = s.dtls.handle_timeout(now) {
                tracing::debug!(peer = %p, error = %e, "DTLS session timed out");
                self.stats.failed += 1;
                self.remove(p);
                continue;
            }
            self.drain(p, now);
        }
    }
}

fn s_requests(sessions: &HashMap<SocketAddr, Session>, peer: SocketAddr) -> u32 {
    sessions.get(&peer).map_or(0, |s| s.requests)
}

/// A DTLS handshake record (content type 22, a DTLS version) whose first
/// message is a ClientHello (type 1), epoch 0: the only datagram that may
/// open a session.
fn looks_like_client_hello(d: &[u8]) -> bool {
    d.len() >= 13 + 12
        && d[0] == 22
        && d[1] == 0xfe
        && (d[2] == 0xfd || d[2] == 0xff)
        && d[3] == 0
        && d[4] == 0
        && d[13] == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotpki_authority::Passphrase;
    use iotpki_core::clock::SystemClock;

    fn authority() -> (tempfile::TempDir, Arc<Authority>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let pass = Passphrase::new("coaps unit test passphrase".into()).unwrap();
        iotpki_authority::init::init(&dir, &Default::default(), &pass, &SystemClock).unwrap();
        let a = Arc::new(Authority::open(&dir, &pass, Arc::new(SystemClock)).unwrap());
        (tmp, a)
    }

    /// A DTLS 1.3 ClientHello from a dimpl client with a throwaway certificate.
    fn client_hello() -> Vec<u8> {
        let key = iotpki_core::keys::SoftKey::generate(iotpki_core::keys::KeyType::EcdsaP256).unwrap();
        let (_tmp, a) = authority();
        // Any certificate will do for the ClientHello: the server's own.
        let (chain, _) = a.server_tls();
        let cert = DtlsCertificate { certificate: chain[0].to_vec(), private_key: key.to_pkcs8().unwrap() };
        let mut d = Dtls::new_13(Arc::new(dimpl::Config::default()), cert, Instant::now());
        d.set_active(true);
        d.handle_timeout(Instant::now()).unwrap();
        let mut buf = vec![0u8; 8192];
        loop {
            match d.poll_output(&mut buf) {
                Output::Packet(p) => return p.to_vec(),
                Output::Timeout(_) => panic!("no ClientHello"),
                _ => {}
            }
        }
    }

    async fn server(limits: crate::Limits) -> (tempfile::TempDir, Server) {
        let (tmp, a) = authority();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let std_socket = socket.into_std().unwrap();
        let sender = std_socket.try_clone().unwrap();
        let socket = UdpSocket::from_std(std_socket).unwrap();
        let (tx, _rx) = mpsc::channel(8);
        let identity = DtlsIdentity::of(&a);
        let s =
            Server::new(a, socket, sender, LimitsHandle::new(limits), identity, CoapsOptions::default(), tx).unwrap();
        (tmp, s)
    }

    #[tokio::test]
    async fn handshakes_in_progress_are_capped_and_the_oldest_unanswered_makes_room() {
        let limits = crate::Limits { udp_max_handshakes: 3, udp_datagram_rate: 0.0, ..Default::default() };
        let (_tmp, mut s) = server(limits).await;
        let hello = client_hello();
        // Ten spoofed sources, one ClientHello each: never more than three sessions held,
        // and the newest are the ones kept (a flood cannot lock out the next real device).
        for port in 1..=10u16 {
            s.datagram(SocketAddr::from(([127, 0, 0, 2], port)), &hello);
            assert!(s.sessions.len() <= 3 && s.handshaking <= 3, "{} sessions", s.sessions.len());
        }
        let mut kept: Vec<u16> = s.sessions.keys().map(|p| p.port()).collect();
        kept.sort();
        assert_eq!(kept, vec![8, 9, 10]);
        // A session that answered our cookie (a second datagram) is not evicted for a new one.
        let answered = SocketAddr::from(([127, 0, 0, 2], 10));
        s.sessions.get_mut(&answered).unwrap().datagrams = 2;
        for port in 11..=20u16 {
            s.datagram(SocketAddr::from(([127, 0, 0, 3], port)), &hello);
        }
        assert!(s.sessions.contains_key(&answered), "a peer past the cookie keeps its session");
        assert_eq!(s.sessions.len(), 3);
        // When every held handshake answered its cookie, a new ClientHello is dropped.
        for sess in s.sessions.values_mut() {
            sess.datagrams = 2;
        }
        let dropped = s.stats.dropped;
        s.datagram(SocketAddr::from(([127, 0, 0, 4], 1)), &hello);
        assert_eq!(s.stats.dropped, dropped + 1);
        assert_eq!(s.sessions.len(), 3);
        assert_eq!(s.per_address.values().sum::<usize>(), 3, "the per-address counts follow the evictions");
    }

    #[tokio::test]
    async fn sessions_that_never_finish_their_handshake_are_dropped_after_the_handshake_timeout() {
        let limits = crate::Limits { handshake_timeout: Duration::from_millis(50), ..Default::default() };
        let (_tmp, mut s) = server(limits).await;
        s.datagram(SocketAddr::from(([127, 0, 0, 5], 1)), &client_hello());
        assert_eq!(s.sessions.len(), 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        s.tick(Instant::now());
        assert!(s.sessions.is_empty() && s.handshaking == 0 && s.per_address.is_empty());
    }
}
