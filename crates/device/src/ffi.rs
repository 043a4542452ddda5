//! The C API of libiotpki_device.
//!
//! Every entry point catches panics (`catch_unwind`) and turns them into
//! `IOTPKI_ERR_PANIC`, so that no unwinding crosses into C. In a build
//! with `panic = "abort"` (the `device` profile) a panic aborts the process
//! instead: there is then nothing to unwind and nothing to catch.
//!
//! A context holds its configuration, its runtime and its last error: there
//! is no global state. Calls on one context are serialised by a lock that is
//! tried, never waited for: a second call while one runs (from another
//! thread, or from inside a key callback) is refused with `IOTPKI_ERR_BUSY`.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use iotpki_agent::keystore::{ExternalKeys, Keystore};
use iotpki_agent::{AgentError, EnrollOptions};
use iotpki_core::keys::KeyType;

/// What a call did: `IOTPKI_OK`, or why it failed (the context's last error,
/// `iotpki_device_last_error`, says it in words).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum iotpki_status {
    /// Done.
    IOTPKI_OK = 0,
    /// A pointer the call needs was NULL.
    IOTPKI_ERR_NULL_ARGUMENT = 1,
    /// An argument or a configuration field is wrong (not UTF-8, empty, out of range, missing).
    IOTPKI_ERR_INVALID_ARGUMENT = 2,
    /// Another call on this context is in progress (another thread, or a key callback calling back in).
    IOTPKI_ERR_BUSY = 3,
    /// The caller's buffer is too small; the size needed was written where the call said.
    IOTPKI_ERR_BUFFER_TOO_SMALL = 4,
    /// The server refused (a wrong or used token, a revoked certificate, a policy).
    IOTPKI_ERR_REFUSED = 5,
    /// The server could not be reached, or the TLS session failed (a wrong CA among others).
    IOTPKI_ERR_CONNECT = 6,
    /// The server's answer is not what EST promises.
    IOTPKI_ERR_BAD_ANSWER = 7,
    /// A certificate, bundle, voucher or CRL was not accepted (does not chain, not for this key, not signed).
    IOTPKI_ERR_UNTRUSTED = 8,
    /// The state directory is missing, empty (not enrolled), already enrolled, or damaged.
    IOTPKI_ERR_STATE = 9,
    /// A file could not be read or written.
    IOTPKI_ERR_IO = 10,
    /// The keystore failed: a key callback returned an error, or a key is not the one recorded.
    IOTPKI_ERR_KEYSTORE = 11,
    /// Bad usage the agent refuses too (a serial, a URL, a PEM, an update that is none of ours).
    IOTPKI_ERR_USAGE = 12,
    /// A key, certificate or encoding operation failed.
    IOTPKI_ERR_CRYPTO = 13,
    /// This device's certificate is revoked and it has no birth certificate to come back with.
    IOTPKI_ERR_REVOKED = 14,
    /// A bug in the library (a panic, caught). Please report it with the message.
    IOTPKI_ERR_PANIC = 15,
    /// Any other failure (see the message).
    IOTPKI_ERR_OTHER = 16,
}

use iotpki_status::*;

/// Device key types, as `iotpki_config.key_type` and the key callbacks name them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum iotpki_key_type {
    /// ECDSA on P-256, SHA-256 digests (32 bytes). The default.
    IOTPKI_KEY_P256 = 1,
    /// ECDSA on P-384, SHA-384 digests (48 bytes).
    IOTPKI_KEY_P384 = 2,
    /// Ed25519: key files only (the callbacks sign digests, Ed25519 signs messages).
    IOTPKI_KEY_ED25519 = 3,
}

/// The private keys, held by the firmware (a secure element, a TPM, an HSM):
/// the library names a key, reads its public key and has digests signed; the
/// private key never reaches it. Each callback returns 0 on success, anything
/// else on failure (the call then fails with `IOTPKI_ERR_KEYSTORE`).
///
/// The table is copied by `iotpki_device_new`; `user_data` and the functions
/// must stay valid until `iotpki_device_free`. Callbacks run only during a
/// call on the context that holds them, on the thread that made that call;
/// they must not call the library on the same context (`IOTPKI_ERR_BUSY`).
/// `name` (like `ext-key-3`) is valid during the callback only.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct iotpki_key_callbacks {
    /// Passed, untouched, as the first argument of every callback.
    pub user_data: *mut c_void,
    /// Required. Make a new key of `key_type` under `name`, replacing any key of that name.
    pub generate:
        Option<unsafe extern "C" fn(user_data: *mut c_void, key_type: iotpki_key_type, name: *const c_char) -> c_int>,
    /// Required. Write the public key of `name` as a DER SubjectPublicKeyInfo
    /// into `out` (`out_cap` bytes: 512) and its length into `*out_len`.
    pub public_key: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            name: *const c_char,
            out: *mut u8,
            out_cap: usize,
            out_len: *mut usize,
        ) -> c_int,
    >,
    /// Required. Sign `digest` (`digest_len` bytes: SHA-256 for P-256, SHA-384
    /// for P-384) with the key `name`; write the ECDSA signature, DER
    /// (ECDSA-Sig-Value), into `sig` (`sig_cap` bytes: 256) and its length into
    /// `*sig_len`. The library checks it against the public key.
    pub sign: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            name: *const c_char,
            key_type: iotpki_key_type,
            digest: *const u8,
            digest_len: usize,
            sig: *mut u8,
            sig_cap: usize,
            sig_len: *mut usize,
        ) -> c_int,
    >,
    /// Optional (may be NULL). No identity uses the key `name` any more (it was
    /// replaced by a renewal, or a failed attempt left it): it may be deleted.
    pub forget: Option<unsafe extern "C" fn(user_data: *mut c_void, name: *const c_char)>,
}

/// How to make a device context. Copied by `iotpki_device_new`: the strings
/// need to live only during that call. Strings are NUL-terminated UTF-8;
/// NULL where a field is optional.
#[repr(C)]
pub struct iotpki_config {
    /// Required. The device's state directory (made if missing).
    pub state_dir: *const c_char,
    /// For enroll: the EST server, `https://HOST:PORT`. Renewals use the server recorded at enrollment.
    pub server: *const c_char,
    /// For enroll: the device serial number.
    pub serial: *const c_char,
    /// For enroll: the trust anchor (the root CA certificate), PEM text, obtained out of band.
    pub ca_cert_pem: *const c_char,
    /// Optional: the EST label, if not the server's default.
    pub label: *const c_char,
    /// An `iotpki_key_type`, or 0 for P-256.
    pub key_type: c_int,
    /// Optional: the key callbacks. NULL: key files in the state directory (PKCS#8, mode 0600).
    pub keys: *const iotpki_key_callbacks,
}

/// A device context (opaque): made by `iotpki_device_new`, freed by `iotpki_device_free`.
pub struct iotpki_device {
    inner: Mutex<Inner>,
    last_error: Mutex<CString>,
}

struct Inner {
    state_dir: PathBuf,
    server: Option<String>,
    serial: Option<String>,
    ca_cert_pem: Option<String>,
    label: Option<String>,
    key_type: KeyType,
    keys: Option<Arc<CallbackKeys>>,
    runtime: tokio::runtime::Runtime,
}

/// A failure on its way to C: the code and the words.
struct Failure(iotpki_status, String);

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        let code = match &e {
            AgentError::Refused { .. } => IOTPKI_ERR_REFUSED,
            AgentError::Connect(_) => IOTPKI_ERR_CONNECT,
            AgentError::BadAnswer(_) => IOTPKI_ERR_BAD_ANSWER,
            AgentError::Untrusted(_) => IOTPKI_ERR_UNTRUSTED,
            AgentError::State(_) => IOTPKI_ERR_STATE,
            AgentError::Io { .. } => IOTPKI_ERR_IO,
            AgentError::Keystore(_) | AgentError::KeystoreUnreachable(_) => IOTPKI_ERR_KEYSTORE,
            AgentError::Usage(_) => IOTPKI_ERR_USAGE,
            AgentError::Core(_) => IOTPKI_ERR_CRYPTO,
            AgentError::Revoked(_) => IOTPKI_ERR_REVOKED,
            _ => IOTPKI_ERR_OTHER,
        };
        // The agent's words, exactly as `iotpki agent` and `iotpki-device` print them after "error: ".
        Failure(code, e.to_string())
    }
}

fn null(what: &str) -> Failure {
    Failure(IOTPKI_ERR_NULL_ARGUMENT, format!("{what} is NULL"))
}

fn invalid(m: String) -> Failure {
    Failure(IOTPKI_ERR_INVALID_ARGUMENT, m)
}

/// What a panic said, if it said it as text.
fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str)).unwrap_or("?")
}

fn panicked(p: &(dyn std::any::Any + Send)) -> Failure {
    Failure(
        IOTPKI_ERR_PANIC,
        format!("internal error in libiotpki_device (a bug: please report it): {}", panic_text(p)),
    )
}

impl iotpki_device {
    fn set_error(&self, m: &str) {
        let text = CString::new(m.replace('\0', "")).unwrap_or_default();
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = text;
    }

    /// Run `f` on this context's state: the lock tried (never waited for), panics caught,
    /// the last error set (emptied on success).
    fn call(&self, f: impl FnOnce(&mut Inner) -> Result<(), Failure>) -> iotpki_status {
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut inner = match self.inner.try_lock() {
                Ok(g) => g,
                // A panic in an earlier call (unwinding builds): the configuration is intact.
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Err(Failure(
                        IOTPKI_ERR_BUSY,
                        "another call on this device context is in progress (from another thread, or from a key \
                         callback): wait for it to return, or give each thread its own context"
                            .into(),
                    ))
                }
            };
            f(&mut inner)
        }))
        .unwrap_or_else(|p| Err(panicked(p.as_ref())));
        match result {
            Ok(()) => {
                self.set_error("");
                IOTPKI_OK
            }
            Err(Failure(code, m)) => {
                self.set_error(&m);
                code
            }
        }
    }
}

/// Catch a panic where there is no context to keep the message in.
fn guard(f: impl FnOnce() -> iotpki_status) -> iotpki_status {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(IOTPKI_ERR_PANIC)
}

/// Copy `text` into the caller's `buf` of `cap` bytes, truncated and NUL-terminated; the length of `text`.
fn copy_out(text: &[u8], buf: *mut c_char, cap: usize) -> usize {
    if !buf.is_null() && cap > 0 {
        let n = text.len().min(cap - 1);
        // SAFETY: the caller gave `buf` as writable for `cap` bytes (the API's contract);
        // n < cap, so n bytes and the NUL after them fit; `text` is a live Rust slice
        // that cannot overlap the caller's buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    text.len()
}

/// A NUL-terminated UTF-8 string from C; `None` for NULL.
fn opt_str(p: *const c_char, what: &str) -> Result<Option<String>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller passes NULL (handled above) or a NUL-terminated string that
    // stays valid during the call (the API's contract); it is copied out before return.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(|s| Some(s.to_string())).map_err(|_| invalid(format!("{what} is not UTF-8")))
}

fn req_str(p: *const c_char, what: &str) -> Result<String, Failure> {
    opt_str(p, what)?.ok_or_else(|| null(what))
}

/// Write `v` through `out` if it is not NULL.
fn put<T>(out: *mut T, v: T) {
    if !out.is_null() {
        // SAFETY: a non-NULL `out` points, by the API's contract, to a writable,
        // aligned T that the caller owns.
        unsafe { out.write(v) };
    }
}

/// The key callbacks of one context, as the agent's [`ExternalKeys`].
struct CallbackKeys {
    table: iotpki_key_callbacks,
}

// SAFETY: the firmware promises (header, iotpki_key_callbacks) that `user_data` and the
// functions stay valid until the context is freed. The agent calls them only during a
// call on this context, on the calling thread (its runtime is current-thread and spawns
// no threads for keys), and the context's lock lets one call at a time through: the
// table is never used from two threads at once.
unsafe impl Send for CallbackKeys {}
// SAFETY: as for Send: calls through a shared reference are serialised by the context's lock.
unsafe impl Sync for CallbackKeys {}

fn key_type_c(kt: KeyType) -> Result<iotpki_key_type, String> {
    match kt {
        KeyType::EcdsaP256 => Ok(iotpki_key_type::IOTPKI_KEY_P256),
        KeyType::EcdsaP384 => Ok(iotpki_key_type::IOTPKI_KEY_P384),
        KeyType::Ed25519 => Ok(iotpki_key_type::IOTPKI_KEY_ED25519),
        other => Err(format!("no {other} keys through the key callbacks")),
    }
}

fn c_name(name: &str) -> Result<CString, String> {
    CString::new(name).map_err(|_| format!("key name {name:?} holds a NUL"))
}

/// Room for a public key (P-384's SPKI is 120 bytes) and for a signature (104 at most).
const SPKI_CAP: usize = 512;
const SIG_CAP: usize = 256;

impl ExternalKeys for CallbackKeys {
    fn generate(&self, kt: KeyType, name: &str) -> Result<(), String> {
        let (kt, name) = (key_type_c(kt)?, c_name(name)?);
        let f = self.table.generate.ok_or("no generate callback")?;
        // SAFETY: `f` and `user_data` are valid until the context is freed (the
        // callbacks' contract); `name` lives until after the call.
        let rc = unsafe { f(self.table.user_data, kt, name.as_ptr()) };
        if rc != 0 {
            return Err(format!("the generate callback failed (returned {rc})"));
        }
        Ok(())
    }

    fn public_key(&self, name: &str) -> Result<Vec<u8>, String> {
        let name = c_name(name)?;
        let f = self.table.public_key.ok_or("no public_key callback")?;
        let mut out = vec![0u8; SPKI_CAP];
        let mut len = 0usize;
        // SAFETY: as for generate; `out` is writable for SPKI_CAP bytes and `len` for one
        // usize, both alive until after the call.
        let rc = unsafe { f(self.table.user_data, name.as_ptr(), out.as_mut_ptr(), out.len(), &mut len) };
        if rc != 0 {
            return Err(format!("the public_key callback failed (returned {rc})"));
        }
        if len == 0 || len > SPKI_CAP {
            return Err(format!("the public_key callback gave a length of {len} (1 to {SPKI_CAP} bytes)"));
        }
        out.truncate(len);
        Ok(out)
    }

    fn sign(&self, name: &str, kt: KeyType, digest: &[u8]) -> Result<Vec<u8>, String> {
        let (kt, name) = (key_type_c(kt)?, c_name(name)?);
        let f = self.table.sign.ok_or("no sign callback")?;
        let mut sig = vec![0u8; SIG_CAP];
        let mut len = 0usize;
        // SAFETY: as for public_key; `digest` is readable for digest.len() bytes during the call.
        let rc = unsafe {
            f(
                self.table.user_data,
                name.as_ptr(),
                kt,
                digest.as_ptr(),
                digest.len(),
                sig.as_mut_ptr(),
                sig.len(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(format!("the sign callback failed (returned {rc})"));
        }
        if len == 0 || len > SIG_CAP {
            return Err(format!("the sign callback gave a length of {len} (1 to {SIG_CAP} bytes)"));
        }
        sig.truncate(len);
        Ok(sig)
    }

    fn forget(&self, name: &str) {
        let (Some(f), Ok(name)) = (self.table.forget, c_name(name)) else { return };
        // SAFETY: as for generate.
        unsafe { f(self.table.user_data, name.as_ptr()) }
    }
}

fn key_type_of(v: c_int) -> Result<KeyType, Failure> {
    match v {
        0 | 1 => Ok(KeyType::EcdsaP256),
        2 => Ok(KeyType::EcdsaP384),
        3 => Ok(KeyType::Ed25519),
        other => Err(invalid(format!(
            "config.key_type {other} is not an iotpki_key_type (0 or IOTPKI_KEY_P256, IOTPKI_KEY_P384, IOTPKI_KEY_ED25519)"
        ))),
    }
}

fn new_inner(config: *const iotpki_config) -> Result<Inner, Failure> {
    if config.is_null() {
        return Err(null("config"));
    }
    // SAFETY: non-NULL, and by the API's contract a valid iotpki_config during this call;
    // only read here (its strings are copied out below).
    let c = unsafe { &*config };
    let state_dir = req_str(c.state_dir, "config.state_dir")?;
    if state_dir.is_empty() {
        return Err(invalid("config.state_dir is empty: give the device's state directory".into()));
    }
    let keys = if c.keys.is_null() {
        None
    } else {
        // SAFETY: non-NULL, and by the API's contract a valid table during this call; copied.
        let table = unsafe { *c.keys };
        let missing: Vec<&str> = [
            ("generate", table.generate.is_none()),
            ("public_key", table.public_key.is_none()),
            ("sign", table.sign.is_none()),
        ]
        .iter()
        .filter(|(_, m)| *m)
        .map(|(n, _)| *n)
        .collect();
        if !missing.is_empty() {
            return Err(invalid(format!(
                "config.keys lacks the {} callback(s): generate, public_key and sign are required (forget may be NULL)",
                missing.join(", ")
            )));
        }
        Some(Arc::new(CallbackKeys { table }))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(IOTPKI_ERR_IO, format!("cannot start the I/O runtime: {e}")))?;
    Ok(Inner {
        state_dir: PathBuf::from(state_dir),
        server: opt_str(c.server, "config.server")?,
        serial: opt_str(c.serial, "config.serial")?,
        ca_cert_pem: opt_str(c.ca_cert_pem, "config.ca_cert_pem")?,
        label: opt_str(c.label, "config.label")?,
        key_type: key_type_of(c.key_type)?,
        keys,
        runtime,
    })
}

/// Make a device context from `config` (copied: see `iotpki_config`) and
/// store it in `*out` (NULL on failure). Free it with `iotpki_device_free`.
/// On failure, the reason is written into `message` (`message_cap` bytes,
/// truncated, NUL-terminated; `message` may be NULL). Does not block: no
/// file or network I/O happens until a call needs it.
///
/// # Safety
/// `config` is NULL or a valid `iotpki_config`; `out` is NULL or writable;
/// `message` is NULL or writable for `message_cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn iotpki_device_new(
    config: *const iotpki_config,
    out: *mut *mut iotpki_device,
    message: *mut c_char,
    message_cap: usize,
) -> iotpki_status {
    let result = catch_unwind(AssertUnwindSafe(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        put(out, std::ptr::null_mut());
        let inner = new_inner(config)?;
        let ctx = Box::new(iotpki_device { inner: Mutex::new(inner), last_error: Mutex::new(CString::default()) });
        put(out, Box::into_raw(ctx));
        Ok(())
    }))
    .unwrap_or_else(|p| Err(panicked(p.as_ref())));
    match result {
        Ok(()) => {
            copy_out(b"", message, message_cap);
            IOTPKI_OK
        }
        Err(Failure(code, m)) => {
            copy_out(m.as_bytes(), message, message_cap);
            code
        }
    }
}

/// Free a context made by `iotpki_device_new` (NULL: nothing). The context,
/// and every pointer into it, is invalid afterwards. Not while a call on it runs.
///
/// # Safety
/// `ctx` is NULL or a context from `iotpki_device_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn iotpki_device_free(ctx: *mut iotpki_device) {
    let _ = guard(|| {
        if !ctx.is_null() {
            // SAFETY: by the contract, `ctx` came from Box::into_raw in iotpki_device_new
            // and is freed once; no call on it is running.
            drop(unsafe { Box::from_raw(ctx) });
        }
        IOTPKI_OK
    });
}

/// The context behind `ctx`, or NULL_ARGUMENT.
fn context<'a>(ctx: *const iotpki_device) -> Option<&'a iotpki_device> {
    // SAFETY: by the API's contract `ctx` is NULL or a live context from iotpki_device_new,
    // not freed while the call runs; shared use is what its locks are for.
    unsafe { ctx.as_ref() }
}

/// Run `f` on the context, or say that it is NULL.
fn with_context(ctx: *const iotpki_device, f: impl FnOnce(&mut Inner) -> Result<(), Failure>) -> iotpki_status {
    guard(|| match context(ctx) {
        Some(c) => c.call(f),
        None => IOTPKI_ERR_NULL_ARGUMENT,
    })
}

fn keystore(inner: &Inner) -> Option<Keystore> {
    inner.keys.as_ref().map(|k| Keystore::external(&inner.state_dir, k.clone() as Arc<dyn ExternalKeys>))
}

/// First enrollment with the one-time `token` (from `iotpki token create`):
/// a new key (a key file, or through the key callbacks), a request to
/// `config.server`, the certificate checked against `config.ca_cert_pem` and
/// stored with the identity in the state directory, atomically.
/// BLOCKS on network I/O (the server's answer, or its time-outs).
///
/// # Safety
/// `ctx` is NULL or a live context; `token` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn iotpki_device_enroll(ctx: *mut iotpki_device, token: *const c_char) -> iotpki_status {
    with_context(ctx, |inner| {
        let token = req_str(token, "token")?;
        if token.trim().is_empty() {
            return Err(invalid("the enrollment token is empty: give the token from `iotpki token create`".into()));
        }
        let need = |v: &Option<String>, what: &str| {
            v.clone().ok_or_else(|| invalid(format!("enroll needs config.{what} (it was NULL)")))
        };
        let opts = EnrollOptions {
            state_dir: inner.state_dir.clone(),
            server: need(&inner.server, "server")?,
            serial: need(&inner.serial, "serial")?,
            token: token.trim().to_string(),
            anchor_pem: need(&inner.ca_cert_pem, "ca_cert_pem")?,
            label: inner.label.clone(),
            key_type: inner.key_type,
            keystore: None,
            pin_file: None,
        };
        let done = match keystore(inner) {
            Some(ks) => inner.runtime.block_on(iotpki_agent::flow::enroll_with_keystore(&opts, &ks)),
            None => inner.runtime.block_on(iotpki_agent::enroll(&opts)),
        };
        done.map(drop).map_err(Failure::from)
    })
}

/// Renew: a new key, re-enrolled over mutual TLS with the current certificate
/// (signed through the sign callback with external keys), at the server
/// recorded at enrollment; the old key is forgotten once the new identity is
/// stored. BLOCKS on network I/O.
///
/// # Safety
/// `ctx` is NULL or a live context.
#[no_mangle]
pub unsafe extern "C" fn iotpki_device_renew(ctx: *mut iotpki_device) -> iotpki_status {
    with_context(ctx, |inner| {
        let done = match keystore(inner) {
            Some(ks) => inner.runtime.block_on(iotpki_agent::flow::renew_with_keystore(&inner.state_dir, None, &ks)),
            None => inner.runtime.block_on(iotpki_agent::renew(&inner.state_dir, None, None)),
        };
        done.map(drop).map_err(Failure::from)
    })
}

/// Commission with the owner's server, the birth certificate (from the
/// factory line) authenticating the request: an operational certificate for
/// a new key. `server` (`https://HOST:PORT`), `ca_cert_pem` (the owner's
/// root, PEM text) and `label` may be NULL: the ones in the state then.
/// BLOCKS on network I/O.
///
/// # Safety
/// `ctx` is NULL or a live context; the strings are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn iotpki_device_commission(
    ctx: *mut iotpki_device,
    server: *const c_char,
    ca_cert_pem: *const c_char,
    label: *const c_char,
) -> iotpki_status {
    with_context(ctx, |inner| {
        let server = opt_str(server, "server")?;
        let anchor = opt_str(ca_cert_pem, "ca_cert_pem")?;
        let label = opt_str(label, "label")?;
        let dir = &inner.state_dir;
        let (server, anchor, label) = (server.as_deref(), anchor.as_deref(), label.as_deref());
        let done = match keystore(inner) {
            Some(ks) => {
                inner.runtime.block_on(iotpki_agent::flow::commission_with_keystore(dir, server, anchor, label, &ks))
            }
            None => inner.runtime.block_on(iotpki_agent::flow::commission(dir, server, anchor, label)),
        };
        done.map(drop).map_err(Failure::from)
    })
}

fn status_json(inner: &Inner) -> Result<String, Failure> {
    let st = iotpki_agent::status(&inner.state_dir)?;
    serde_json::to_string_pretty(&st).map_err(|e| Failure(IOTPKI_ERR_OTHER, e.to_string()))
}

/// The identity's status as JSON (the same as `iotpki-device status --json`:
/// device_serial, subject, issuer, cert_serial, not_before, not_after,
/// days_left, key_type, keystore, server, renewals), NUL-terminated, into
/// `buf` (`cap` bytes). `*len` (if not NULL) gets the bytes needed with the
/// NUL; if `cap` is less, nothing is written but an empty string and the call
/// returns `IOTPKI_ERR_BUFFER_TOO_SMALL`. Reads the state directory; no network.
///
/// # Safety
/// `ctx` is NULL or a live context; `buf` is writable for `cap` bytes (NULL is refused); `len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn iotpki_device_status(
    ctx: *mut iotpki_device,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> iotpki_status {
    with_context(ctx, |inner| {
        if buf.is_null() {
            return Err(null("buf"));
        }
        let json = status_json(inner)?;
        put(len, json.len() + 1);
        if cap < json.len() + 1 {
            copy_out(b"", buf, cap);
            return Err(Failure(
                IOTPKI_ERR_BUFFER_TOO_SMALL,
                format!("the status needs {} bytes with its NUL; the buffer has {cap}", json.len() + 1),
            ));
        }
        copy_out(json.as_bytes(), buf, cap);
        Ok(())
    })
}

/// `iotpki_device_status` into a string the library allocates: `*out`
/// (NULL on failure) is the caller's, to free with `iotpki_string_free`
/// (not `free`). Reads the state directory; no network.
///
/// # Safety
/// `ctx` is NULL or a live context; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn iotpki_device_status_json(ctx: *mut iotpki_device, out: *mut *mut c_char) -> iotpki_status {
    with_context(ctx, |inner| {
        if out.is_null() {
            return Err(null("out"));
        }
        put(out, std::ptr::null_mut());
        let json = CString::new(status_json(inner)?).map_err(|e| Failure(IOTPKI_ERR_OTHER, e.to_string()))?;
        put(out, json.into_raw());
        Ok(())
    })
}

/// Free a string the library returned (NULL: nothing).
///
/// # Safety
/// `s` is NULL or a string from this library not yet freed.
#[no_mangle]
pub unsafe extern "C" fn iotpki_string_free(s: *mut c_char) {
    let _ = guard(|| {
        if !s.is_null() {
            // SAFETY: by the contract, `s` came from CString::into_raw in this library
            // (iotpki_device_status_json) and is freed once.
            drop(unsafe { CString::from_raw(s) });
        }
        IOTPKI_OK
    });
}

fn apply_bytes(inner: &Inner, bytes: &[u8], initial: bool) -> Result<(), Failure> {
    iotpki_agent::trust::apply(&inner.state_dir, bytes, initial).map(drop).map_err(Failure::from)
}

/// Apply an update: a trust bundle, an ownership voucher or a CRL (DER or
/// PEM), as `iotpki-device apply` does, checked before anything is replaced
/// (atomically). `initial` (non-zero): accept a first trust bundle (at the
/// factory); without it, a device holding no bundle takes only its owner's
/// first (signed by the key its voucher names, issued since). The bytes are read during the call only. An update already
/// installed is not an error. Reads and writes the state directory; no network.
///
/// # Safety
/// `ctx` is NULL or a live context; `bytes` is NULL or readable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn iotpki_device_apply(
    ctx: *mut iotpki_device,
    bytes: *const u8,
    len: usize,
    initial: c_int,
) -> iotpki_status {
    with_context(ctx, |inner| {
        if bytes.is_null() {
            return Err(null("bytes"));
        }
        // SAFETY: non-NULL, and readable for `len` bytes during the call by the contract.
        let update = unsafe { std::slice::from_raw_parts(bytes, len) };
        apply_bytes(inner, update, initial != 0)
    })
}

/// `iotpki_device_apply` of the file at `path`.
///
/// # Safety
/// `ctx` is NULL or a live context; `path` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn iotpki_device_apply_file(
    ctx: *mut iotpki_device,
    path: *const c_char,
    initial: c_int,
) -> iotpki_status {
    with_context(ctx, |inner| {
        let path = req_str(path, "path")?;
        let p = Path::new(&path);
        // Said as `iotpki-device apply` says it.
        let bytes = std::fs::read(p).map_err(|e| Failure(IOTPKI_ERR_IO, format!("{}: {e}", p.display())))?;
        apply_bytes(inner, &bytes, initial != 0)
    })
}

/// What the last call on `ctx` that failed said ("" after a success): copied
/// into `buf` (`cap` bytes, truncated, NUL-terminated; `buf` may be NULL to
/// ask the size). Returns the message's length without the NUL, as
/// snprintf does. Safe to call from any thread.
///
/// # Safety
/// `ctx` is NULL or a live context; `buf` is NULL or writable for `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn iotpki_device_last_error(ctx: *const iotpki_device, buf: *mut c_char, cap: usize) -> usize {
    let mut n = 0;
    let _ = guard(|| {
        let text: &[u8] = b"ctx is NULL";
        n = match context(ctx) {
            Some(c) => copy_out(c.last_error.lock().unwrap_or_else(PoisonError::into_inner).as_bytes(), buf, cap),
            None => copy_out(text, buf, cap),
        };
        IOTPKI_OK
    });
    n
}

/// The name of a status code (`"IOTPKI_ERR_REFUSED"`), static; `"IOTPKI_UNKNOWN"` for others.
#[no_mangle]
pub extern "C" fn iotpki_status_name(code: c_int) -> *const c_char {
    let name: &'static CStr = match code {
        0 => c"IOTPKI_OK",
        1 => c"IOTPKI_ERR_NULL_ARGUMENT",
        2 => c"IOTPKI_ERR_INVALID_ARGUMENT",
        3 => c"IOTPKI_ERR_BUSY",
        4 => c"IOTPKI_ERR_BUFFER_TOO_SMALL",
        5 => c"IOTPKI_ERR_REFUSED",
        6 => c"IOTPKI_ERR_CONNECT",
        7 => c"IOTPKI_ERR_BAD_ANSWER",
        8 => c"IOTPKI_ERR_UNTRUSTED",
        9 => c"IOTPKI_ERR_STATE",
        10 => c"IOTPKI_ERR_IO",
        11 => c"IOTPKI_ERR_KEYSTORE",
        12 => c"IOTPKI_ERR_USAGE",
        13 => c"IOTPKI_ERR_CRYPTO",
        14 => c"IOTPKI_ERR_REVOKED",
        15 => c"IOTPKI_ERR_PANIC",
        16 => c"IOTPKI_ERR_OTHER",
        _ => c"IOTPKI_UNKNOWN",
    };
    name.as_ptr()
}

/// The library's version (`"0.1.0"`), static.
#[no_mangle]
pub extern "C" fn iotpki_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(dir: &CStr) -> iotpki_config {
        iotpki_config {
            state_dir: dir.as_ptr(),
            server: std::ptr::null(),
            serial: std::ptr::null(),
            ca_cert_pem: std::ptr::null(),
            label: std::ptr::null(),
            key_type: 0,
            keys: std::ptr::null(),
        }
    }

    fn last_error(ctx: *const iotpki_device) -> String {
        let mut buf = [0 as c_char; 512];
        // SAFETY: a live context and a writable buffer of its length.
        let n = unsafe { iotpki_device_last_error(ctx, buf.as_mut_ptr(), buf.len()) };
        // SAFETY: copy_out NUL-terminated it.
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap().to_string();
        assert_eq!(n, s.len());
        s
    }

    #[test]
    fn a_panic_is_caught_and_said() {
        let dir = tempfile::tempdir().unwrap();
        let path = CString::new(dir.path().to_str().unwrap()).unwrap();
        let mut ctx = std::ptr::null_mut();
        // SAFETY: valid config and out pointer.
        assert_eq!(unsafe { iotpki_device_new(&config(&path), &mut ctx, std::ptr::null_mut(), 0) }, IOTPKI_OK);
        let code = with_context(ctx, |_| panic!("boom"));
        assert_eq!(code, IOTPKI_ERR_PANIC);
        assert!(last_error(ctx).contains("boom"), "{}", last_error(ctx));
        assert_eq!(guard(|| panic!("no context")), IOTPKI_ERR_PANIC);
        // The context still works after the panic (the poisoned lock is taken back).
        // SAFETY: a live context.
        assert_eq!(unsafe { iotpki_device_renew(ctx) }, IOTPKI_ERR_STATE);
        // SAFETY: freed once.
        unsafe { iotpki_device_free(ctx) };
    }

    #[test]
    fn the_message_is_truncated_not_overrun_and_a_busy_context_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = CString::new(dir.path().to_str().unwrap()).unwrap();
        let mut ctx = std::ptr::null_mut();
        // SAFETY: valid config and out pointer.
        assert_eq!(unsafe { iotpki_device_new(&config(&path), &mut ctx, std::ptr::null_mut(), 0) }, IOTPKI_OK);
        // SAFETY: a live context.
        assert_eq!(unsafe { iotpki_device_renew(ctx) }, IOTPKI_ERR_STATE);
        let full = last_error(ctx);
        assert!(full.starts_with("device state: no identity in "), "{full}");
        let mut small = [0x55 as c_char; 8];
        // SAFETY: a live context; the buffer's real length is given less one, so its last byte must stay 0x55.
        let n = unsafe { iotpki_device_last_error(ctx, small.as_mut_ptr(), 7) };
        assert_eq!(n, full.len());
        assert_eq!(small[6], 0);
        assert_eq!(small[7], 0x55);
        // SAFETY: a live context; NULL asks the size only.
        assert_eq!(unsafe { iotpki_device_last_error(ctx, std::ptr::null_mut(), 0) }, full.len());

        // A call from inside a call (as a key callback calling back in would make).
        let code = with_context(ctx, |_| {
            // SAFETY: a live context.
            assert_eq!(unsafe { iotpki_device_renew(ctx) }, IOTPKI_ERR_BUSY);
            Ok(())
        });
        assert_eq!(code, IOTPKI_OK);
        // SAFETY: freed once.
        unsafe { iotpki_device_free(ctx) };
    }
}
