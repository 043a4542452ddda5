//! The factory station: its credential, and a production run that drives
//! devices under test through their birth.
//!
//! A station's directory has the same layout as a device's state directory
//! (`identity.json` naming `key-N.pem`, mode 0600): its key is made there, on
//! the station; the authority only ever sees the public key. `identity.json`'s
//! `device_serial` holds the station's name.
//!
//! One device's birth costs the station one EST round trip to the authority;
//! on the device side it is two steps of the same agent code as in the field
//! ([`iotpki_agent::flow::begin_birth`], [`iotpki_agent::flow::finish_birth`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::pem;

use iotpki_agent::est_client::{ClientIdentity, EstClient};
use iotpki_agent::line::{self as link, kind};
use iotpki_agent::state::{self, Identity};
use iotpki_agent::AgentError;
use iotpki_core::wire;

use crate::api::FactoryApi;
use crate::line::ask;

/// The label station enrollments go to.
pub const BIRTH_LABEL: &str = "birth";

/// Production record entries per sync request.
const SYNC_CHUNK: usize = 2_000;

/// Make the station's key in `dir` (which must hold no identity yet); returns it.
pub fn new_station_key(dir: &Path, key_type: KeyType) -> Result<SoftKey, AgentError> {
    if state::identity_path(dir).exists() {
        return Err(AgentError::State(format!("{} already holds a station identity", dir.display())));
    }
    let key = SoftKey::generate(key_type)?;
    state::write_new_key(dir, &key)?;
    Ok(key)
}

/// Store the station's certificate, chain and trust anchor next to its key.
pub fn store_station(
    dir: &Path,
    name: &str,
    server: &str,
    cert: &[u8],
    chain: &[Vec<u8>],
    anchor: &[u8],
) -> Result<Identity, AgentError> {
    let (key_file, key) =
        state::pending_key(dir)?.ok_or_else(|| AgentError::State(format!("no station key in {}", dir.display())))?;
    let info = iotpki_core::profile::cert_info(cert)?;
    if info.spki_sha256 != iotpki_core::keys::spki_fingerprint(key.public_key_der()) {
        return Err(AgentError::Untrusted("the station certificate is not for the station's key".into()));
    }
    let id = Identity {
        device_serial: name.into(),
        server: server.into(),
        label: Some(BIRTH_LABEL.into()),
        key_file,
        cert_pem: pem::encode("CERTIFICATE", cert),
        chain_pem: chain.iter().map(|c| pem::encode("CERTIFICATE", c)).collect(),
        anchor_pem: pem::encode("CERTIFICATE", anchor),
        updated_at: 0,
        renewals: 0,
        birth: None,
        owner: None,
        keystore: None,
    };
    state::store(dir, &id)?;
    Ok(id)
}

/// A station ready to enroll: its EST client (mutual TLS) and what it writes into devices.
pub struct Station {
    /// The station's name.
    pub name: String,
    /// The server it talks to.
    pub server: String,
    client: EstClient,
    /// Births' connections to the authority, each kept open between births:
    /// a birth takes one (or opens another) and puts it back, so a line
    /// keeps as many connections as it has births under way at once, and a
    /// birth costs no TLS handshake of its own (the authority admits the
    /// station once per connection).
    idle: std::sync::Mutex<Vec<EstClient>>,
    api: FactoryApi,
    chain: Vec<Vec<u8>>,
    anchor: Vec<u8>,
    offline: Option<crate::offline::Offline>,
}

impl Station {
    /// Open the station directory `dir`, talking to `server` (default: the one stored).
    pub fn open(dir: &Path, server: Option<&str>) -> Result<Self, AgentError> {
        let id = state::load(dir)?;
        let key: Arc<dyn Signer> = Arc::new(state::load_key(dir, &id)?);
        let cert = pem::decode_one("CERTIFICATE", &id.cert_pem).map_err(|e| AgentError::State(e.to_string()))?;
        let chain = pem::decode_all("CERTIFICATE", &id.chain_pem).map_err(|e| AgentError::State(e.to_string()))?;
        let anchor = pem::decode_one("CERTIFICATE", &id.anchor_pem).map_err(|e| AgentError::State(e.to_string()))?;
        let server = server.unwrap_or(&id.server).to_string();
        if server.is_empty() {
            return Err(AgentError::Usage("no server: pass --server https://HOST:PORT".into()));
        }
        let mut tls_chain = vec![cert];
        tls_chain.extend(chain.iter().cloned());
        let client = EstClient::new(
            &server,
            Some(BIRTH_LABEL),
            std::slice::from_ref(&anchor),
            Some(ClientIdentity { chain: tls_chain, key }),
        )?;
        let api = FactoryApi::new(client.clone());
        let idle = std::sync::Mutex::default();
        Ok(Self { name: id.device_serial, server, client, idle, api, chain, anchor, offline: None })
    }

    /// Open the station to issue offline for `batch` with its delegated CA
    /// (`iotpki station delegate`): births are signed here and recorded in the
    /// production record, for `iotpki factory sync` later.
    pub fn open_offline(dir: &Path, batch: &str) -> Result<Self, AgentError> {
        let id = state::load(dir)?;
        let station_key = state::load_key(dir, &id)?;
        let offline = crate::offline::Offline::open(dir, batch, station_key)?;
        let mut st = Self::open(dir, Some(if id.server.is_empty() { "https://offline.invalid" } else { &id.server }))?;
        st.offline = Some(offline);
        Ok(st)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<EstClient>> {
        // A Vec of clients is never left half-changed: a poisoned lock is still sound.
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A birth certificate for `csr`, the chain the device should hold and
    /// the anchor it chains to: from the authority over EST, or from the
    /// delegated CA when offline. A Matter batch's birth is a DAC: its chain
    /// is the batch's PAI and its anchor the PAA (docs/matter.md).
    async fn obtain(
        &self,
        csr: &[u8],
        batch: &str,
        activation: Option<(&str, &[u8])>,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>, Vec<u8>), AgentError> {
        let cert = match &self.offline {
            Some(off) => return off.issue(csr, batch).map(|(cert, chain)| (cert, chain, self.anchor.clone())),
            None => {
                let client = self.idle().pop().unwrap_or_else(|| self.client.one_connection());
                let cert = client.simple_enroll_batch_attested(csr, batch, activation).await;
                // Back for the next birth, whatever the answer: a connection that failed is not kept in it.
                self.idle().push(client);
                cert?
            }
        };
        let info = iotpki_core::profile::cert_info(&cert)?;
        if iotpki_core::matter::ids_of(&info.cert.tbs_certificate.subject).0.is_none() {
            return Ok((cert, self.chain.clone(), self.anchor.clone()));
        }
        let b = self.api.batch(batch, 0).await?;
        let mut chain = Vec::with_capacity(2);
        for p in &b.matter_chain {
            chain.push(
                pem::decode_one("CERTIFICATE", p).map_err(|e| AgentError::BadAnswer(format!("Matter chain: {e}")))?,
            );
        }
        let [pai, paa]: [Vec<u8>; 2] = chain.try_into().map_err(|_| {
            AgentError::BadAnswer(format!("the authority sent a Matter DAC for batch {batch} but not its PAI and PAA"))
        })?;
        Ok((cert, vec![pai], paa))
    }

    /// TPM attestation on the line, after KEYGEN: the device shows its new
    /// key's TPM public area, the authority answers with a challenge (if the
    /// batch requires attestation), the device's TPM recovers its secret.
    /// `None`: no attestation (a device without a TPM, a batch that does not
    /// ask for it, an offline station); the authority decides whether that will do.
    async fn attest_on_line(
        &self,
        tcp: &mut tokio::net::TcpStream,
        batch: &str,
        serial: &str,
    ) -> Result<Option<(String, Vec<u8>)>, AgentError> {
        if self.offline.is_some() {
            return Ok(None);
        }
        let public = match ask(tcp, kind::ATTEST, &[], kind::KEYPUB).await {
            Ok(p) => p,
            // The device has no TPM key to show (or predates attestation): it said so.
            Err(AgentError::Refused { status: 0, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some((id, blob, secret)) = self.api.tpm_challenge(batch, serial, &public).await? else {
            return Ok(None);
        };
        let payload = link::encode_fields(&[&blob, &secret]);
        match ask(tcp, kind::ACTIVATE, &payload, kind::ACTIVATED).await {
            Ok(recovered) => Ok(Some((id, recovered))),
            // The device's TPM cannot open the challenge: not the TPM registered for it.
            Err(AgentError::Refused { status: 0, reason }) => Err(AgentError::Refused {
                status: 403,
                reason: format!(
                    "TPM attestation failed: the device's TPM is not the one whose EK is registered for {serial} \
                     ({reason})"
                ),
            }),
            Err(e) => Err(e),
        }
    }

    /// Upload this station's production record for `batch`: ask where the
    /// authority's copy ends, send the rest in chunks. Returns (born, flagged).
    pub async fn sync(&self, dir: &Path, batch: &str) -> Result<(u64, Vec<(String, String)>), AgentError> {
        let path = crate::offline::record_path(dir, batch);
        let text = std::fs::read_to_string(&path).map_err(|e| AgentError::io(&path, e))?;
        let entries = iotpki_core::record::parse(&text)?;
        let state = self.api.sync_state(batch).await?;
        let rest: Vec<&iotpki_core::record::Entry> = entries.iter().filter(|e| e.seq > state.last_seq).collect();
        let (mut born, mut flagged) = (0, Vec::new());
        for chunk in rest.chunks(SYNC_CHUNK) {
            let body: String = chunk.iter().map(|e| e.to_line() + "\n").collect();
            let out = self.api.sync(batch, body).await?;
            born += out.born;
            flagged.extend(out.flagged.into_iter().map(|f| (f.cert_serial, f.reason)));
        }
        if let Some(offline) = &self.offline {
            self.publish_crl(offline, batch).await?;
        }
        Ok((born, flagged))
    }

    /// Sign the delegated CA's CRL with what the authority revoked under it
    /// (flagged births included) and upload it: the authority serves it where
    /// the births' cRLDistributionPoint points.
    async fn publish_crl(&self, offline: &crate::offline::Offline, batch: &str) -> Result<(), AgentError> {
        let t = self.api.crl_terms(batch).await?;
        let revoked: Vec<iotpki_core::crl::Revoked> = t
            .revoked
            .into_iter()
            .map(|r| iotpki_core::crl::Revoked { serial: r.serial, at: r.at, reason: r.reason_code })
            .collect();
        let der = offline.sign_crl(t.number, t.next_update, &revoked)?;
        self.api.crl_upload(batch, der).await?;
        Ok(())
    }

    /// The batch as the authority shows it to this station, with up to `unborn` serials not born yet.
    pub async fn batch(&self, batch: &str, unborn: u32) -> Result<wire::StationBatch, AgentError> {
        self.api.batch(batch, unborn).await
    }

    /// Give birth to the device on the line at `addr`: ask its serial, have
    /// it make its key and request, enroll it, install the answer, and check
    /// the device confirms. Three line round trips and one EST call. Returns
    /// the serial (when learnt) and the certificate's serial.
    pub async fn birth_on_line(
        &self,
        batch: &str,
        addr: &str,
        key_type: KeyType,
    ) -> (Option<String>, Result<String, AgentError>) {
        let mut tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) => return (None, Err(AgentError::Connect(format!("line {addr}: {e}")))),
        };
        let _ = tcp.set_nodelay(true);
        let serial = match ask(&mut tcp, kind::HELLO, &[], kind::SERIAL).await {
            Ok(s) => match String::from_utf8(s)
                .map_err(|_| AgentError::BadAnswer("the device's serial is not UTF-8".into()))
            {
                Ok(s) => s,
                Err(e) => return (None, Err(e)),
            },
            Err(e) => return (None, Err(e)),
        };
        let r = async {
            let kt = key_type.to_string();
            let csr = ask(&mut tcp, kind::KEYGEN, kt.as_bytes(), kind::CSR).await?;
            // The request must be for the device that introduced itself.
            let req = iotpki_core::csr::parse_and_verify(&csr)
                .map_err(|e| AgentError::BadAnswer(format!("device request: {e}")))?;
            let in_csr = iotpki_core::name::serial_numbers(&req.subject);
            if in_csr != [serial.clone()] {
                return Err(AgentError::Refused {
                    status: 400,
                    reason: format!("the device announced serial {serial} but its request names {}", in_csr.join(", ")),
                });
            }
            let activation = self.attest_on_line(&mut tcp, batch, &serial).await?;
            let activation = activation.as_ref().map(|(id, s)| (id.as_str(), s.as_slice()));
            let (cert, chain, anchor) = self.obtain(&csr, batch, activation).await?;
            let cert_serial = iotpki_core::profile::cert_info(&cert)?.serial;
            let install = link::Install { cert, anchor, server: self.server.clone(), label: BIRTH_LABEL.into(), chain };
            let ok = ask(&mut tcp, kind::INSTALL, &install.encode(), kind::INSTALLED).await?;
            if ok != cert_serial.as_bytes() {
                return Err(AgentError::BadAnswer("the device confirmed another certificate".into()));
            }
            Ok(cert_serial)
        }
        .await;
        (Some(serial), r)
    }

    /// Give birth to the simulated device at `dir` with serial `serial`:
    /// the device makes its key and request, the station enrolls it, the
    /// device checks and stores what the station writes in.
    pub async fn birth(&self, batch: &str, dir: &Path, serial: &str, key_type: KeyType) -> Result<String, AgentError> {
        // A simulated device keeps its keys in files.
        let keystore = iotpki_agent::keystore::Keystore::open(dir, None, None)?;
        let csr = iotpki_agent::flow::begin_birth(dir, serial, key_type, &keystore)?;
        let (cert, chain, anchor) = self.obtain(&csr, batch, None).await?;
        let server = &self.server;
        iotpki_agent::flow::finish_birth(dir, serial, &cert, &chain, &anchor, server, Some(BIRTH_LABEL), &keystore)?;
        Ok(iotpki_core::profile::cert_info(&cert)?.serial)
    }
}

/// One line of the production log.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Produced {
    /// When, Unix seconds.
    pub at: i64,
    /// The station.
    pub station: String,
    /// The batch.
    pub batch: String,
    /// The device serial.
    pub serial: String,
    /// `born`, `refused` (the authority said no) or `failed` (anything else).
    pub result: &'static str,
    /// The birth certificate's serial.
    pub cert_serial: Option<String>,
    /// Why not, when not.
    pub reason: Option<String>,
    /// How long it took, milliseconds.
    pub millis: u64,
}

/// Options of a production run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The batch.
    pub batch: String,
    /// How many devices at once.
    pub parallel: usize,
    /// The production log (JSON lines, appended).
    pub log: PathBuf,
    /// Device key type.
    pub key_type: KeyType,
}

/// A device under test.
#[derive(Clone, Debug)]
pub enum Dut {
    /// A device simulated in this process, with its state directory.
    Simulated {
        /// Its serial.
        serial: String,
        /// Its state directory (a file keystore).
        dir: PathBuf,
    },
    /// A device at the other end of a line link (`iotpki agent line`).
    Line {
        /// Its address.
        addr: String,
    },
}

/// `n` simulated devices: serials in order from the batch's allowlist
/// (skipping those born already), state directories under `dir`.
pub async fn simulated(station: &Station, batch: &str, n: usize, dir: &Path) -> Result<Vec<Dut>, AgentError> {
    let serials: Vec<String> = match &station.offline {
        Some(off) => off.unborn(n),
        None => station.batch(batch, u32::try_from(n).unwrap_or(u32::MAX)).await?.unborn,
    };
    if serials.is_empty() {
        return Err(AgentError::Usage(format!("batch {batch} has no serial left to give birth to")));
    }
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    Ok(serials.into_iter().map(|serial| Dut::Simulated { dir: dir.join(&serial), serial }).collect())
}

/// Drive every device in `duts` through its birth, `parallel` at a time;
/// append a line per device to the production log (fsync'd at the end).
/// `progress` is called after each device.
pub async fn run(
    station: Arc<Station>,
    opts: &RunOptions,
    duts: Vec<Dut>,
    progress: impl Fn(&Produced) + Send + Sync + 'static,
) -> Result<Vec<Produced>, AgentError> {
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
    let progress = Arc::new(progress);
    let mut set = tokio::task::JoinSet::new();
    for dut in duts {
        let permit = sem.clone().acquire_owned().await.map_err(|e| AgentError::State(e.to_string()))?;
        let (station, progress, batch) = (station.clone(), progress.clone(), opts.batch.clone());
        let kt = opts.key_type;
        set.spawn(async move {
            let t0 = Instant::now();
            let (serial, r) = match &dut {
                Dut::Simulated { serial, dir } => (serial.clone(), station.birth(&batch, dir, serial, kt).await),
                Dut::Line { addr } => {
                    let (serial, r) = station.birth_on_line(&batch, addr, kt).await;
                    (serial.unwrap_or_else(|| format!("line:{addr}")), r)
                }
            };
            drop(permit);
            let (result, cert_serial, reason) = match r {
                Ok(c) => ("born", Some(c), None),
                Err(AgentError::Refused { status, reason }) if status > 0 => {
                    ("refused", None, Some(format!("HTTP {status}: {reason}")))
                }
                Err(e) => ("failed", None, Some(e.to_string())),
            };
            let p = Produced {
                at: iotpki_agent::clock::now(),
                station: station.name.clone(),
                batch,
                serial,
                result,
                cert_serial,
                reason,
                millis: t0.elapsed().as_millis() as u64,
            };
            progress(&p);
            p
        });
    }
    let mut out = Vec::new();
    while let Some(j) = set.join_next().await {
        out.push(j.map_err(|e| AgentError::State(format!("device task failed: {e}")))?);
    }
    out.sort_by(|a, b| a.serial.cmp(&b.serial));
    append_log(&opts.log, &out)?;
    Ok(out)
}

fn append_log(path: &Path, lines: &[Produced]) -> Result<(), AgentError> {
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| AgentError::io(path, e))?;
    let mut buf = Vec::new();
    for l in lines {
        serde_json::to_writer(&mut buf, l).map_err(|e| AgentError::State(e.to_string()))?;
        buf.push(b'\n');
    }
    f.write_all(&buf).and_then(|_| f.sync_all()).map_err(|e| AgentError::io(path, e))
}
