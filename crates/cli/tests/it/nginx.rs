//! nginx (Debian's, a strict TLS relying party we did not write) with
//! `ssl_verify_client on` and `ssl_crl`: OpenSSL then checks a CRL for every
//! certificate of the client's chain (X509_V_FLAG_CRL_CHECK_ALL), so it needs
//! the root's ARL for the operational CA certificate as well as the
//! operational CA's CRL for the device. It accepts a good device, refuses a
//! revoked one, and refuses every device when the ARL is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use iotpki_authority::revocation::{self, Target};
use iotpki_core::name::DeviceSerial;

use crate::util::{openssl, Ca};

const NGINX: &str = "/usr/sbin/nginx";

/// GET `url` (PEM when `pem`) from the authority's plain-HTTP listener.
fn fetch(url: &str, pem: bool) -> Vec<u8> {
    let mut c = Command::new("curl");
    c.args(["--silent", "--show-error", "--fail"]);
    if pem {
        c.args(["-H", "Accept: application/x-pem-file"]);
    }
    let out = c.arg(url).output().unwrap();
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// An nginx started by a test, stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    error_log: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// nginx in the foreground (no daemon, no master process) under `prefix`,
    /// requiring client certificates that chain to `root` with the CRLs in
    /// `crls` (PEM, concatenated). The port is a free one picked by binding
    /// port 0 and releasing it; another process may take it meanwhile, so a
    /// start that finds it taken is retried on another.
    fn start(prefix: &Path, root: &Path, crls: &Path) -> Nginx {
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        let key = prefix.join("server.key");
        let cert = prefix.join("server.crt");
        if !cert.exists() {
            crate::util::openssl_self_signed("/CN=127.0.0.1", key.to_str().unwrap(), cert.to_str().unwrap());
        }
        let (child, port, error_log) = crate::util::start_on_free_port("nginx", |port| {
            let error_log = prefix.join(format!("error-{port}.log"));
            let p = |x: &Path| x.to_str().unwrap().to_string();
            let conf = format!(
                "daemon off;\nmaster_process off;\npid {pid};\nerror_log {log} info;\n\
                 events {{ worker_connections 32; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n  \
                 fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n  \
                 server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n    \
                 ssl_verify_client on;\n    ssl_client_certificate {root};\n    ssl_verify_depth 2;\n    ssl_crl {crls};\n    \
                 location / {{ return 200 \"hello $ssl_client_s_dn\\n\"; }}\n  }}\n}}\n",
                pid = p(&prefix.join("nginx.pid")),
                log = p(&error_log),
                tmp = p(&prefix.join("tmp")),
                cert = p(&cert),
                key = p(&key),
                root = p(root),
                crls = p(crls),
            );
            let conf_path = prefix.join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let child = Command::new(NGINX)
                .args(["-p", &p(prefix), "-c", &p(&conf_path), "-e", &p(&error_log)])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("nginx (apt-get install nginx-light)");
            (child, error_log)
        });
        Nginx { child, port, error_log }
    }

    /// The HTTP status nginx answers a client presenting `cert_chain` and `key`.
    fn status(&self, cert_chain: &Path, key: &Path) -> String {
        let out = Command::new("curl")
            .args(["--silent", "--insecure", "-o", "/dev/null", "-w", "%{http_code}", "--cert"])
            .arg(cert_chain)
            .arg("--key")
            .arg(key)
            .arg(format!("https://127.0.0.1:{}/", self.port))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

/// A device's certificate followed by its chain (what a TLS client sends), and its key file.
fn device_files(state: &Path, out: &Path, name: &str) -> (PathBuf, PathBuf) {
    let id = iotpki_agent::state::load(state).unwrap();
    let chain = out.join(format!("{name}.chain.pem"));
    std::fs::write(&chain, format!("{}{}", id.cert_pem, id.chain_pem)).unwrap();
    let leaf = out.join(format!("{name}.pem"));
    std::fs::write(&leaf, &id.cert_pem).unwrap();
    (chain, state.join(&id.key_file))
}

/// `openssl verify -crl_check_all` of `leaf` against `root` through `untrusted`, with `crls`.
fn verify_all(root: &Path, untrusted: &Path, crls: &Path, leaf: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["verify", "-crl_check_all", "-CAfile"])
        .arg(root)
        .arg("-untrusted")
        .arg(untrusted)
        .arg("-CRLfile")
        .arg(crls)
        .arg(leaf)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_ssl_crl_accepts_a_good_device_and_refuses_a_revoked_one_and_needs_the_root_arl() {
    let ca = Ca::start().await;
    let good = ca.enrolled_device("NGX-GOOD").await;
    let bad = ca.enrolled_device("NGX-BAD").await;
    let d = ca.tmp.path().join("nginx");
    std::fs::create_dir_all(&d).unwrap();
    let (good_chain, good_key) = device_files(&good, &d, "good");
    let (bad_chain, bad_key) = device_files(&bad, &d, "bad");
    let (root, op) = (ca.root_file(), ca.ca_file("operational"));
    let http = ca.http_url.clone();
    let store = ca.authority.store().clone();
    let clock = ca.clock.clone();

    tokio::task::spawn_blocking(move || {
        // The operational CA's certificate names the root's ARL; the ARL is there.
        let op_text = openssl(&["x509", "-in", op.to_str().unwrap(), "-noout", "-text"]);
        assert!(op_text.contains(&format!("URI:{http}/crl/root.crl")), "{op_text}");
        let crls = d.join("crls.pem");
        let write_crls = |with_arl: bool| {
            let mut all = Vec::new();
            if with_arl {
                all.extend(fetch(&format!("{http}/crl/root.crl"), true));
            }
            all.extend(fetch(&format!("{http}/crl/operational.crl"), true));
            std::fs::write(&crls, all).unwrap();
        };

        // Without the root's ARL, nginx cannot check the CA certificate: every device is refused.
        write_crls(false);
        let n = Nginx::start(&d, &root, &crls);
        assert_eq!(n.status(&good_chain, &good_key), "400", "no ARL: refused");
        assert!(n.log().contains("unable to get certificate CRL"), "{}", n.log());
        drop(n);

        // With it, both devices pass while neither is revoked...
        write_crls(true);
        let n = Nginx::start(&d, &root, &crls);
        assert_eq!(n.status(&good_chain, &good_key), "200", "{}", n.log());
        assert_eq!(n.status(&bad_chain, &bad_key), "200", "{}", n.log());
        let (ok, said) = verify_all(&root, &op, &crls, &d.join("good.pem"));
        assert!(ok, "{said}");
        drop(n);

        // ...and after a revocation and a fresh CRL, the revoked one is refused.
        let sn = DeviceSerial::parse("NGX-BAD").unwrap();
        let gone = revocation::revoke(store.as_ref(), clock.as_ref(), Target::Device(&sn), 1, "test").unwrap();
        assert_eq!(gone.len(), 1);
        write_crls(true);
        let n = Nginx::start(&d, &root, &crls);
        assert_eq!(n.status(&good_chain, &good_key), "200", "{}", n.log());
        assert_eq!(n.status(&bad_chain, &bad_key), "400", "a revoked device is refused");
        assert!(n.log().contains("certificate revoked"), "{}", n.log());
        let (ok, said) = verify_all(&root, &op, &crls, &d.join("good.pem"));
        assert!(ok, "{said}");
        let (ok, said) = verify_all(&root, &op, &crls, &d.join("bad.pem"));
        assert!(!ok && said.contains("certificate revoked"), "{said}");
    })
    .await
    .unwrap();
}
