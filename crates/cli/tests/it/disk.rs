//! A full disk: the authority answers 503 with a reason and records nothing
//! half; when space returns it works again, and the token that could not be
//! spent is still good. (A read-only store maps to the same 503; a tmpfs in use
//! cannot be remounted read-only, so that case has no test here.)

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use iotpki_agent::AgentError;
use iotpki_authority::init::InitOptions;
use iotpki_authority::{Authority, Passphrase};
use iotpki_core::clock::{Clock, FixedClock, SystemClock};
use iotpki_core::name::DeviceSerial;
use iotpki_server::Running;

use crate::util::PASS;

/// A small tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&at).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "this test mounts a small tmpfs to fill it up: run the suite as root (./scripts/test on the CI machine is)"
        );
        SmallDisk(at)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_503_records_nothing_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(tmp.path().join("disk"), "16m");
    let dir = disk.0.join("ca");
    let pass = Passphrase::new(PASS.into()).unwrap();
    let opts = InitOptions { public_http_url: None, http_listen: None, ..InitOptions::default() };
    iotpki_authority::init::init(&dir, &opts, &pass, &SystemClock).unwrap();
    let clock = Arc::new(FixedClock::new(SystemClock.now()));
    let authority = Arc::new(Authority::open(&dir, &pass, clock).unwrap());
    let server = Running::start(authority.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let root_pem = iotpki_core::pem::encode("CERTIFICATE", authority.root_der());
    let opts = |serial: &str, token: &str| iotpki_agent::EnrollOptions {
        state_dir: tmp.path().join("devices").join(serial),
        server: server.url(),
        serial: serial.into(),
        token: token.into(),
        anchor_pem: root_pem.clone(),
        label: None,
        key_type: iotpki_core::keys::KeyType::EcdsaP256,
        keystore: None,
        pin_file: None,
    };
    let t1 = authority.create_token(&DeviceSerial::parse("DF-1").unwrap(), None, "test").unwrap();
    iotpki_agent::enroll(&opts("DF-1", &t1)).await.unwrap();
    let t2 = authority.create_token(&DeviceSerial::parse("DF-2").unwrap(), None, "test").unwrap();
    let certs = authority.store().count_certificates().unwrap();

    // Fill the disk to the last byte.
    let filler = disk.0.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let err = iotpki_agent::enroll(&opts("DF-2", &t2)).await.unwrap_err();
    match &err {
        AgentError::Refused { status: 503, reason } => {
            assert!(reason.contains("cannot record anything right now") && reason.contains("retry later"), "{reason}")
        }
        other => panic!("expected 503 with a reason, got {other:?}"),
    }
    assert_eq!(authority.store().count_certificates().unwrap(), certs, "nothing recorded");

    // Space returns: the same token and the same device get their certificate.
    std::fs::remove_file(&filler).unwrap();
    iotpki_agent::enroll(&opts("DF-2", &t2)).await.unwrap();
    assert_eq!(authority.store().count_certificates().unwrap(), certs + 1);
    authority.store().verify_audit().unwrap();
    server.stop().await.unwrap();
}
