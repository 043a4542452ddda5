//! A software TPM (`swtpm`) for tests and demonstrations: started in its own
//! temporary state directory on free local ports, killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `swtpm socket --tpm2`.
#[derive(Debug)]
pub struct SwTpm {
    child: Child,
    port: u16,
    dir: PathBuf,
}

fn free_port_pair() -> std::io::Result<u16> {
    // The server port and the control port after it, both free now (swtpm binds them itself).
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0")?;
        let p = a.local_addr()?.port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    Err(std::io::Error::other("no two consecutive free ports"))
}

impl SwTpm {
    /// Start a fresh software TPM (manufactured on first start, TPM2_Startup done)
    /// with its state in `dir` (created if missing), on free local ports.
    pub fn start(dir: &Path) -> std::io::Result<Self> {
        let mut last = None;
        // Another process may take a port between our check and swtpm's bind: try again.
        for _ in 0..5 {
            match Self::start_at(dir, free_port_pair()?) {
                Ok(s) => return Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("swtpm did not start")))
    }

    /// Start a software TPM with its state in `dir` on `port` (commands) and
    /// `port + 1` (control): the same TCTI as a stopped one, with the same TPM
    /// (the same `dir`) or another (a fresh `dir`). `AddrInUse` if it could not bind.
    pub fn start_at(dir: &Path, port: u16) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ctrl = port.checked_add(1).ok_or_else(|| std::io::Error::other(format!("no port after {port}")))?;
        let mut child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot run swtpm ({e}): apt-get install swtpm swtpm-tools"))
            })?;
        // Ready when it accepts a connection; gone if it could not bind.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                let kind = if err.contains("Address already in use") {
                    std::io::ErrorKind::AddrInUse
                } else {
                    std::io::ErrorKind::Other
                };
                return Err(std::io::Error::new(kind, format!("swtpm exited ({status}): {}", err.trim())));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Self { child, port, dir: dir.to_path_buf() });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::other("swtpm did not start listening within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCTI string that reaches it.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Its TPM command port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SwTpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
