//! Shared helpers: a throwaway authority with its server on loopback.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

use iotpki_agent::EnrollOptions;
use iotpki_authority::init::InitOptions;
use iotpki_authority::{Authority, Passphrase};
use iotpki_core::clock::{Clock, FixedClock, SystemClock};
use iotpki_core::keys::{KeyType, Signer as _};
use iotpki_core::name::DeviceSerial;
use iotpki_server::Running;
use tempfile::TempDir;

pub const PASS: &str = "integration test passphrase";

/// An authority in a temp dir, with a clock the test moves and a server on 127.0.0.1:0.
pub struct Ca {
    pub tmp: TempDir,
    pub dir: PathBuf,
    pub authority: Arc<Authority>,
    pub clock: Arc<FixedClock>,
    pub server: Running,
    pub url: String,
    /// The plain-HTTP listener for CRLs and OCSP that issued certificates point to.
    pub http: Running,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub http_url: String,
    pub root_pem: String,
}

impl Ca {
    pub async fn start() -> Ca {
        Self::start_with(InitOptions::default()).await
    }

    pub async fn start_with(opts: InitOptions) -> Ca {
        Self::start_with_config(opts, |_| {}).await
    }

    /// [`Ca::start_with`], the config edited by `edit` (its TOML text) before the authority opens.
    pub async fn start_with_config(mut opts: InitOptions, edit: impl FnOnce(&mut String)) -> Ca {
        let tmp = tempfile::tempdir().unwrap();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_url = format!("http://{}", http_listener.local_addr().unwrap());
        opts.public_http_url = Some(http_url.clone());
        let dir = tmp.path().join("ca");
        let pass = Passphrase::new(PASS.into()).unwrap();
        iotpki_authority::init::init(&dir, &opts, &pass, &SystemClock).unwrap();
        let cfg_file = dir.join(iotpki_authority::config::CONFIG_FILE);
        let mut cfg = std::fs::read_to_string(&cfg_file).unwrap();
        edit(&mut cfg);
        std::fs::write(&cfg_file, cfg).unwrap();
        let clock = Arc::new(FixedClock::new(SystemClock.now()));
        let authority = Arc::new(Authority::open(&dir, &pass, clock.clone()).unwrap());
        let server = Running::start(authority.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let url = server.url();
        let http = Running::start_http_on(authority.clone(), http_listener).unwrap();
        let root_pem = iotpki_core::pem::encode("CERTIFICATE", authority.root_der());
        std::fs::write(tmp.path().join("root.pem"), &root_pem).unwrap();
        Ca { tmp, dir, authority, clock, server, url, http, http_url, root_pem }
    }

    pub fn root_file(&self) -> PathBuf {
        self.tmp.path().join("root.pem")
    }

    pub fn token(&self, serial: &str) -> String {
        self.authority.create_token(&DeviceSerial::parse(serial).unwrap(), None, "test").unwrap()
    }

    pub fn token_ttl(&self, serial: &str, ttl: u64) -> String {
        self.authority.create_token(&DeviceSerial::parse(serial).unwrap(), Some(ttl), "test").unwrap()
    }

    pub fn enroll_opts(&self, state: &Path, serial: &str, token: &str) -> EnrollOptions {
        EnrollOptions {
            state_dir: state.to_path_buf(),
            server: self.url.clone(),
            serial: serial.into(),
            token: token.into(),
            anchor_pem: self.root_pem.clone(),
            label: None,
            key_type: KeyType::EcdsaP256,
            keystore: None,
            pin_file: None,
        }
    }

    /// Enroll a device in `self.tmp/devices/SERIAL` and return its state dir.
    pub async fn enrolled_device(&self, serial: &str) -> PathBuf {
        let state = self.tmp.path().join("devices").join(serial);
        let t = self.token(serial);
        iotpki_agent::enroll(&self.enroll_opts(&state, serial, &t)).await.unwrap();
        state
    }

    pub fn cert_count(&self) -> u64 {
        self.authority.store().count_certificates().unwrap()
    }

    pub fn audit_len(&self) -> u64 {
        self.authority.store().verify_audit().unwrap().entries
    }

    /// The last audit entry.
    pub fn last_audit(&self) -> iotpki_store::AuditEntry {
        let n = self.audit_len();
        self.authority.store().audit_entries(n, 1).unwrap().remove(0)
    }

    /// A CA certificate's PEM file in the authority dir (`root`, `manufacturing`, `operational`).
    pub fn ca_file(&self, name: &str) -> PathBuf {
        self.dir.join("ca").join(format!("{name}.crt"))
    }
}

/// The `iotpki` binary built for these tests.
/// `cargo build ARGS --locked --message-format=json` in the workspace as
/// scripts/test runs it (pkg-config out of reach, so nothing may need a system
/// library's headers): the files of the artifacts it names, per target name.
/// `what` says what failed to build.
pub fn cargo_build(args: &[&str], what: &str) -> Vec<(String, Vec<PathBuf>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .env("PKG_CONFIG", "/bin/false")
        .env("PKG_CONFIG_PATH", "")
        .arg("build")
        .args(args)
        .args(["--locked", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{what} must build without pkg-config");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .map(|v| {
            let name = v["target"]["name"].as_str().unwrap_or_default().to_string();
            let files = v["filenames"].as_array().cloned().unwrap_or_default();
            (name, files.iter().filter_map(|f| f.as_str().map(PathBuf::from)).collect())
        })
        .collect()
}

/// The executable `name` that [`cargo_build`] with `args` makes.
pub fn cargo_build_bin(args: &[&str], name: &str) -> PathBuf {
    cargo_build(args, name)
        .into_iter()
        .filter(|(n, _)| n == name)
        .flat_map(|(_, files)| files)
        .find(|p| p.file_name().is_some_and(|n| n == name))
        .unwrap_or_else(|| panic!("cargo names the {name} executable"))
}

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iotpki"));
    c.env_remove("IOTPKI_PASSPHRASE");
    c
}

/// Run a command, panic with its output if it fails; return stdout.
pub fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{c:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout
}

/// Run a command that must fail; return stderr.
pub fn run_fail(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(!out.status.success(), "{c:?} succeeded but should have failed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `openssl ARGS...` must succeed; returns stdout.
pub fn openssl(args: &[&str]) -> String {
    run_ok(Command::new("openssl").args(args))
}

/// Write the PEM text of a DER certificate to a file.
/// A self-signed P-256 certificate for `subject` (`/CN=...`), valid one day, made
/// by openssl: a stranger's certificate, or a server's for a peer's listener.
pub fn openssl_self_signed(subject: &str, key_out: &str, cert_out: &str) {
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        subject,
        "-days",
        "1",
        "-keyout",
        key_out,
        "-out",
        cert_out,
    ]);
}

pub fn write_pem(path: &Path, der: &[u8]) {
    std::fs::write(path, iotpki_core::pem::encode("CERTIFICATE", der)).unwrap();
}

/// A batch `id` of `serials` with `quota`, open for a day from now.
pub fn batch(ca: &Ca, id: &str, serials: &[String], quota: u64) {
    let now = iotpki_authority::Clock::now(ca.clock.as_ref());
    let nb =
        iotpki_authority::factory::NewBatch::open(id, "widget", serials.join("\n"), quota, (now - 60, now + 86_400));
    iotpki_authority::factory::create_batch(ca.authority.store().as_ref(), ca.clock.as_ref(), nb, "test").unwrap();
}

/// A factory station `name` for `batches`, its state in `TMP/stations/NAME`.
pub fn station(ca: &Ca, name: &str, batches: &[&str]) -> PathBuf {
    station_kt(ca, name, batches, KeyType::EcdsaP256)
}

/// [`station`] with a station key of type `kt`.
pub fn station_kt(ca: &Ca, name: &str, batches: &[&str], kt: KeyType) -> PathBuf {
    let dir = ca.tmp.path().join("stations").join(name);
    let key = iotpki_station::factory::new_station_key(&dir, kt).unwrap();
    let b: Vec<String> = batches.iter().map(|s| s.to_string()).collect();
    let (cert, chain) = ca.authority.add_station(name, &b, key.public_key_der(), "test").unwrap();
    iotpki_station::factory::store_station(&dir, name, &ca.url, &cert, &chain, ca.authority.root_der()).unwrap();
    dir
}

/// Devices born on `ca`'s factory line in batch `id`: one state directory each
/// under `TMP/born/ID/SERIAL`, holding the birth identity. Returns those directories.
pub async fn born_devices(ca: &Ca, id: &str, serials: &[String]) -> Vec<PathBuf> {
    born_devices_kt(ca, id, serials, KeyType::EcdsaP256).await
}

/// [`born_devices`] with station and device keys of type `kt`.
pub async fn born_devices_kt(ca: &Ca, id: &str, serials: &[String], kt: KeyType) -> Vec<PathBuf> {
    batch(ca, id, serials, serials.len() as u64);
    let station_dir = station_kt(ca, &format!("st-{id}"), &[id], kt);
    let st = Arc::new(iotpki_station::factory::Station::open(&station_dir, None).unwrap());
    let opts = iotpki_station::factory::RunOptions {
        batch: id.into(),
        parallel: 2,
        log: ca.tmp.path().join(format!("{id}.jsonl")),
        key_type: kt,
    };
    let dir = ca.tmp.path().join("born").join(id);
    let duts = iotpki_station::factory::simulated(&st, id, serials.len(), &dir).await.unwrap();
    let out = iotpki_station::factory::run(st, &opts, duts, |_| {}).await.unwrap();
    assert!(out.iter().all(|p| p.result == "born"), "{out:?}");
    serials.iter().map(|s| dir.join(s)).collect()
}

/// A child process killed on drop.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `iotpki serve` as a child process (killed on drop), and the URL it printed.
pub fn serve(cmd: &mut Command) -> (Server, String) {
    // No test listens on a fixed port: the plain-HTTP listener too is on a
    // free one unless the test names it (the config's default is 8080).
    if !cmd.get_args().any(|a| a == "--http-listen") {
        cmd.args(["--http-listen", "127.0.0.1:0"]);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // Keep reading what the server prints later, so it never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let url = line.trim().trim_start_matches("listening on ").to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{line}");
    (Server(child), url)
}

/// SoftHSM2's PKCS#11 module as Debian installs it (`apt-get install softhsm2`).
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of every throwaway token.
pub const TOKEN_PIN: &str = "1234";

/// A throwaway SoftHSM2: its own token directory and softhsm2.conf, given to
/// child processes as SOFTHSM2_CONF (this process never loads the module).
pub struct SoftHsm {
    pub dir: TempDir,
    pub conf: PathBuf,
    /// A file holding [`TOKEN_PIN`].
    pub pin_file: PathBuf,
}

impl SoftHsm {
    /// A token directory with one initialised token per label.
    pub fn new(labels: &[&str]) -> SoftHsm {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(&conf, format!("directories.tokendir = {}\nlog.level = ERROR\n", tokens.display())).unwrap();
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{TOKEN_PIN}\n")).unwrap();
        let hsm = SoftHsm { dir, conf, pin_file };
        for l in labels {
            hsm.init_token(l);
        }
        hsm
    }

    /// `softhsm2-util --init-token --free --label LABEL`.
    pub fn init_token(&self, label: &str) {
        run_ok(self.env(Command::new("softhsm2-util").args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            TOKEN_PIN,
            "--so-pin",
            "5678",
        ])));
    }

    /// Point a command at this token directory.
    pub fn env<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        c.env("SOFTHSM2_CONF", &self.conf)
    }

    /// The `iotpki` binary with this token directory.
    pub fn bin(&self) -> Command {
        let mut c = bin();
        c.env("SOFTHSM2_CONF", &self.conf).env_remove("IOTPKI_PIN");
        c
    }

    /// `pkcs11-tool` (OpenSC) logged in to token `label`, with `args`.
    pub fn tool(&self, label: &str, args: &[&str]) -> Output {
        self.env(Command::new("pkcs11-tool").args([
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            label,
            "--login",
            "--pin",
            TOKEN_PIN,
        ]))
        .args(args)
        .output()
        .expect("pkcs11-tool (apt-get install opensc)")
    }

    /// `pkcs11-tool --list-objects` on token `label`: stdout.
    pub fn objects(&self, label: &str) -> String {
        let out = self.tool(label, &["--list-objects"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A trust bundle of `version` trusting `ca`'s root, signed by the first two of `keys` (threshold 2).
pub fn signed_bundle(ca: &Ca, keys: &[iotpki_core::keys::SoftKey], version: u64) -> Vec<u8> {
    bundle_naming(ca, keys, version, &["127.0.0.1"])
}

/// [`signed_bundle`] naming `servers`.
pub fn bundle_naming(ca: &Ca, keys: &[iotpki_core::keys::SoftKey], version: u64, servers: &[&str]) -> Vec<u8> {
    use iotpki_core::bundle::{Bundle, BundleContent, UnsignedBundle};
    let now = iotpki_authority::Clock::now(ca.clock.as_ref());
    let content = BundleContent {
        version,
        issued_at: now,
        expires_at: now + 30 * 86_400,
        anchors: vec![ca.authority.root_der().to_vec()],
        servers: servers.iter().map(|s| s.to_string()).collect(),
        threshold: 2,
        signers: keys.iter().map(|k| k.public_key_der().to_vec()).collect(),
    };
    let mut b = Bundle::decode(&UnsignedBundle::new(content).unwrap().encode()).unwrap();
    b.add_signature(&keys[0]).unwrap();
    b.add_signature(&keys[1]).unwrap();
    b.encode()
}

/// A loopback TCP port where nothing listens, and nothing will while this lives:
/// the socket is bound and never listens, so a connection is refused (a port
/// bound and released could be taken meanwhile by a daemon another test starts).
pub struct DeadPort(#[allow(dead_code)] tokio::net::TcpSocket, pub std::net::SocketAddr);

impl DeadPort {
    pub fn new() -> Self {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = s.local_addr().unwrap();
        Self(s, addr)
    }
}

/// Start a daemon we did not write (nginx, mosquitto) on a free loopback port:
/// `launch(port)` writes its configuration for `port`, spawns it and returns
/// the child and its log file. The port is found by binding port 0 and
/// releasing it, so another process may take it meanwhile: a daemon that
/// exits saying "Address already in use" is tried again on another port. It
/// is ready once its port accepts connections.
pub fn start_on_free_port(what: &str, mut launch: impl FnMut(u16) -> (Child, PathBuf)) -> (Child, u16, PathBuf) {
    for _attempt in 0..10 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (mut child, log) = launch(port);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("Address already in use") {
                    break;
                }
                panic!("{what} exited ({status}):\n{text}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (child, port, log);
            }
            assert!(std::time::Instant::now() < deadline, "{what} did not listen on {port}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    panic!("no free port for {what} after 10 tries");
}
