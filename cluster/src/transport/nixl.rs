//! NIXL transport (feature `nixl`): one-sided UCX writes of KV blocks into the
//! decode engine's registered host memory, each followed by a notification that
//! carries the transfer's ticket.
//!
//! - [`NixlEndpoint`]: one NIXL agent per engine, with the engine's whole KV pool
//!   registered; its [`metadata`](NixlEndpoint::metadata) travels to prefill
//!   workers inside [`KvTarget::Nixl`];
//! - prefill side: [`NixlEndpoint::write_to_target`] (or `write_blocks`) posts
//!   one WRITE of all blocks with the ticket as its notification;
//! - decode side: [`NixlKvReceiver`] polls notifications and reports
//!   [`KvWritten`] for the tickets it was told to [`expect`](NixlKvReceiver::expect).
//!
//! Library: nixl-sys built without libnixl forwards every call to
//! `libnixl_capi.so` loaded at run time, and **aborts the process** if that fails.
//! [`ensure_library`] therefore loads it first — from `PDSERVE_NIXL_LIB_DIR`, the
//! loader's search path (`LD_LIBRARY_PATH`), or `~/.cache/pdserve/nixl` (what
//! `scripts/fetch-nixl.sh` fills) — and every constructor here calls it, so a
//! missing library is a clean [`TransportError`], never an abort.
//!
//! Invariants:
//! - local source addresses are checked against this endpoint's registered
//!   region before anything is posted; destination addresses are checked by NIXL
//!   against the remote's registered memory;
//! - a notification is delivered after its transfer's data (NIXL guarantees
//!   this), so `KvWritten` means the bytes are in place;
//! - unlike TCP, the receiver cannot refuse a write: the decode side must keep
//!   the destination blocks of a forgotten ticket out of reuse until the prefill
//!   side reports the transfer finished or failed.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nixl_sys::{
    Agent, AgentConfig, MemType, MemoryRegion, NixlDescriptor, NotificationMap, OptArgs,
    RegistrationHandle, ThreadSync, XferDescList, XferOp, XferStatus,
};
use pdserve_engine::SeqId;
use tokio::sync::mpsc::UnboundedSender;

use super::tcp::KvWritten;
use super::{lock, TransportError};
use crate::protocol::{KvTarget, PoolMemory};

/// Environment variable naming the directory that holds `libnixl_capi.so`.
pub const LIB_DIR_ENV: &str = "PDSERVE_NIXL_LIB_DIR";
const CAPI: &str = "libnixl_capi.so";
/// Tag that starts every notification this module sends, before the ticket.
const NOTIFY_TAG: &[u8; 4] = b"PDKN";

extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlerror() -> *mut c_char;
}
const RTLD_NOW: c_int = 2;

/// Loads libnixl (once per process) and checks that calls will reach it.
pub fn ensure_library() -> Result<(), TransportError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(load_library)
        .clone()
        .map_err(TransportError::Refused)
}

fn load_library() -> Result<(), String> {
    let mut tried = Vec::new();
    // nixl-sys looks the library up by its soname on first use; once a library
    // with that soname is loaded, that lookup finds it wherever it came from.
    let explicit = std::env::var_os(LIB_DIR_ENV).map(|d| PathBuf::from(d).join(CAPI));
    let cached = cache_dir().map(|d| d.join(CAPI));
    let candidates = explicit
        .into_iter()
        .chain(std::iter::once(PathBuf::from(CAPI)))
        .chain(cached);
    for path in candidates {
        match try_dlopen(&path) {
            Ok(()) => break,
            Err(e) => tried.push(e),
        }
    }
    // `is_stub` only opens the library (or finds it open); it never aborts.
    if nixl_sys::is_stub() {
        return Err(format!(
            "libnixl is not available (run scripts/fetch-nixl.sh or set {LIB_DIR_ENV}); tried {}",
            tried.join("; ")
        ));
    }
    Ok(())
}

fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("PDSERVE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pdserve")))?;
    Some(base.join("nixl/.nixl_cu12.mesonpy.libs"))
}

fn try_dlopen(path: &std::path::Path) -> Result<(), String> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a valid NUL-terminated string; a handle that loaded is kept
    // open for the life of the process (never closed), as nixl-sys expects.
    let handle = unsafe { dlopen(c.as_ptr(), RTLD_NOW) };
    if !handle.is_null() {
        return Ok(());
    }
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by libc,
    // copied out at once.
    let msg = unsafe {
        let e = dlerror();
        if e.is_null() {
            "dlopen failed".to_string()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    };
    Err(msg)
}

fn nixl_err(what: &str, e: nixl_sys::NixlError) -> TransportError {
    TransportError::Io(format!("NIXL {what}: {e}"))
}

/// A peer agent: its name, the metadata it published, and the memory its
/// registered pool is in.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAgent<'a> {
    pub name: &'a str,
    pub metadata: &'a [u8],
    pub memory: PoolMemory,
}

fn mem_type(m: PoolMemory) -> MemType {
    match m {
        PoolMemory::Host => MemType::Dram,
        PoolMemory::Cuda(_) => MemType::Vram,
    }
}

fn device_id(m: PoolMemory) -> u64 {
    match m {
        PoolMemory::Host => 0,
        PoolMemory::Cuda(n) => n as u64,
    }
}

/// Host or device memory handed to NIXL for registration.
#[derive(Debug)]
struct PoolRegion {
    addr: usize,
    len: usize,
    memory: PoolMemory,
}

impl MemoryRegion for PoolRegion {
    unsafe fn as_ptr(&self) -> *const u8 {
        self.addr as *const u8
    }
    fn size(&self) -> usize {
        self.len
    }
}

impl NixlDescriptor for PoolRegion {
    fn mem_type(&self) -> MemType {
        mem_type(self.memory)
    }
    fn device_id(&self) -> u64 {
        device_id(self.memory)
    }
}

/// Agent settings.
#[derive(Clone, Debug)]
pub struct NixlConfig {
    /// Let NIXL progress transfers on its own thread (else only while polled).
    pub progress_thread: bool,
    /// Pause of that thread between polls.
    pub progress_delay: Duration,
}

impl Default for NixlConfig {
    fn default() -> Self {
        NixlConfig {
            progress_thread: true,
            progress_delay: Duration::from_micros(100),
        }
    }
}

/// One NIXL agent (UCX backend) with one host region registered.
pub struct NixlEndpoint {
    agent: Agent,
    name: String,
    opt: Mutex<OptArgs>,
    region: (usize, usize),
    memory: PoolMemory,
    _registration: RegistrationHandle,
    /// Remote agents whose metadata is loaded, with that metadata.
    remotes: Mutex<HashMap<String, Vec<u8>>>,
}

// SAFETY: every field but `OptArgs` is Send + Sync already (the agent is also
// created with `ThreadSync::Strict`, so NIXL itself locks around each call);
// `OptArgs` is a plain heap object of the C API with no thread affinity, and it
// is only touched under its mutex.
unsafe impl Send for NixlEndpoint {}
// SAFETY: as above; no method hands out references into the C objects.
unsafe impl Sync for NixlEndpoint {}

impl NixlEndpoint {
    /// Creates agent `name` and registers `len` bytes of `memory` (host, or a
    /// CUDA device's: NIXL's UCX backend then moves it with GPU transports) at
    /// `addr`.
    ///
    /// # Safety
    /// The region must stay allocated, and must not be moved or freed, for as long
    /// as this endpoint lives: peers write into it (and this side reads from it)
    /// behind Rust's back.
    pub unsafe fn new(
        name: &str,
        addr: usize,
        len: usize,
        memory: PoolMemory,
        config: &NixlConfig,
    ) -> Result<NixlEndpoint, TransportError> {
        ensure_library()?;
        if addr == 0 || len == 0 {
            return Err(TransportError::Refused("empty region to register".into()));
        }
        let cfg = AgentConfig {
            enable_prog_thread: config.progress_thread,
            enable_listen_thread: false,
            thread_sync: ThreadSync::Strict,
            pthr_delay_us: config.progress_delay.as_micros() as u64,
            ..AgentConfig::default()
        };
        let agent = Agent::new_configured(name, &cfg).map_err(|e| nixl_err("agent", e))?;
        let (_mems, params) = agent
            .get_plugin_params("UCX")
            .map_err(|e| nixl_err("UCX plugin", e))?;
        let backend = agent
            .create_backend("UCX", &params)
            .map_err(|e| nixl_err("UCX backend", e))?;
        let mut opt = OptArgs::new().map_err(|e| nixl_err("options", e))?;
        opt.add_backend(&backend)
            .map_err(|e| nixl_err("options", e))?;
        let reg = agent
            .register_memory(&PoolRegion { addr, len, memory }, Some(&opt))
            .map_err(|e| nixl_err("register memory", e))?;
        Ok(NixlEndpoint {
            agent,
            name: name.to_string(),
            opt: Mutex::new(opt),
            region: (addr, len),
            memory,
            _registration: reg,
            remotes: Mutex::new(HashMap::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This agent's metadata (connection info and registered memory), for peers.
    pub fn metadata(&self) -> Result<Vec<u8>, TransportError> {
        self.agent
            .get_local_md()
            .map_err(|e| nixl_err("metadata", e))
    }

    /// The registered region, `(addr, len)`.
    pub fn region(&self) -> (usize, usize) {
        self.region
    }

    /// The memory the registered region is in.
    pub fn memory(&self) -> PoolMemory {
        self.memory
    }

    /// Loads `remote`'s metadata unless the same metadata is already loaded.
    fn connect(&self, remote: &str, metadata: &[u8]) -> Result<(), TransportError> {
        let mut r = lock(&self.remotes);
        if r.get(remote).is_some_and(|m| m == metadata) {
            return Ok(());
        }
        if r.remove(remote).is_some() {
            let _ = self.agent.invalidate_remote_md(remote);
        }
        let named = self
            .agent
            .load_remote_md(metadata)
            .map_err(|e| nixl_err("load remote metadata", e))?;
        // Loaded is loaded, under the name inside the metadata, whoever asked.
        r.insert(named.clone(), metadata.to_vec());
        if named != remote {
            return Err(TransportError::Refused(format!(
                "metadata is agent {named:?}, not {remote:?}"
            )));
        }
        Ok(())
    }

    /// Writes `len` bytes from each local address in `src` to the matching remote
    /// address in `dst` of agent `remote`, as one request whose completion sends
    /// `notify` to the remote; returns when the request completed.
    pub async fn write_blocks(
        &self,
        remote: RemoteAgent<'_>,
        src: &[u64],
        dst: &[u64],
        len: usize,
        notify: &[u8],
        timeout: Duration,
    ) -> Result<(), TransportError> {
        if src.len() != dst.len() {
            return Err(TransportError::Refused(format!(
                "{} source blocks for {} destination blocks",
                src.len(),
                dst.len()
            )));
        }
        let (base, size) = self.region;
        if let Some(bad) = src
            .iter()
            .find(|&&a| (a as usize) < base || (a as usize).saturating_add(len) > base + size)
        {
            return Err(TransportError::Refused(format!(
                "source address {bad:#x}+{len} is outside the registered region"
            )));
        }
        self.connect(remote.name, remote.metadata)?;
        let started = Instant::now();
        let req = {
            let mut local =
                XferDescList::new(mem_type(self.memory)).map_err(|e| nixl_err("dlist", e))?;
            let mut far =
                XferDescList::new(mem_type(remote.memory)).map_err(|e| nixl_err("dlist", e))?;
            let (here, there) = (device_id(self.memory), device_id(remote.memory));
            for (s, d) in src.iter().zip(dst) {
                local.add_desc(*s as usize, len, here);
                far.add_desc(*d as usize, len, there);
            }
            let mut opt = lock(&self.opt);
            opt.set_notification_message(notify)
                .and_then(|_| opt.set_has_notification(true))
                .map_err(|e| nixl_err("notification", e))?;
            let req = self
                .agent
                .create_xfer_req(XferOp::Write, &local, &far, remote.name, Some(&opt))
                .map_err(|e| nixl_err("transfer request", e))?;
            self.agent
                .post_xfer_req(&req, Some(&opt))
                .map_err(|e| nixl_err("post", e))?;
            req
        };
        loop {
            match self.agent.get_xfer_status(&req) {
                Ok(XferStatus::Success) => return Ok(()),
                Ok(XferStatus::InProgress) => {}
                Err(e) => return Err(nixl_err("transfer", e)),
            }
            if started.elapsed() > timeout {
                return Err(TransportError::Timeout(timeout.as_millis() as u64));
            }
            if started.elapsed() < Duration::from_millis(2) {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    }

    /// Writes whole blocks (`block_len` bytes at each of `src`) to the blocks
    /// that `target` (a [`KvTarget::Nixl`]) names, notifying with its ticket.
    pub async fn write_to_target(
        &self,
        target: &KvTarget,
        src: &[u64],
        block_len: usize,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let KvTarget::Nixl {
            agent,
            agent_metadata,
            block_addrs,
            ticket,
            memory,
            ..
        } = target
        else {
            return Err(TransportError::Refused("not a NIXL target".into()));
        };
        let note = notify_message(*ticket);
        let remote = RemoteAgent {
            name: agent,
            metadata: agent_metadata,
            memory: *memory,
        };
        self.write_blocks(remote, src, block_addrs, block_len, &note, timeout)
            .await
    }

    /// Notifications received since the last call: `(sender agent, message)`.
    pub fn poll_notifications(&self) -> Result<Vec<(String, Vec<u8>)>, TransportError> {
        let mut map = NotificationMap::new().map_err(|e| nixl_err("notifications", e))?;
        self.agent
            .get_notifications(&mut map, None)
            .map_err(|e| nixl_err("notifications", e))?;
        let mut out = Vec::new();
        for agent in map.agents() {
            let agent = agent.map_err(|e| nixl_err("notifications", e))?;
            for msg in map
                .get_notifications(agent)
                .map_err(|e| nixl_err("notifications", e))?
            {
                out.push((
                    agent.to_string(),
                    msg.map_err(|e| nixl_err("notifications", e))?,
                ));
            }
        }
        Ok(out)
    }
}

/// The notification that marks ticket `ticket`'s transfer as complete.
pub fn notify_message(ticket: u64) -> Vec<u8> {
    let mut m = NOTIFY_TAG.to_vec();
    m.extend_from_slice(&ticket.to_le_bytes());
    m
}

/// The ticket in a notification from [`notify_message`], if it is one.
pub fn parse_notify(msg: &[u8]) -> Option<u64> {
    let rest = msg.strip_prefix(NOTIFY_TAG)?;
    Some(u64::from_le_bytes(rest.try_into().ok()?))
}

struct Expected {
    seq: SeqId,
    blocks: u32,
    bytes: u64,
    deadline: Instant,
}

/// The decode side: turns ticket notifications into [`KvWritten`]. Dropping it
/// stops the polling.
pub struct NixlKvReceiver {
    endpoint: Arc<NixlEndpoint>,
    tickets: Arc<Mutex<HashMap<u64, Expected>>>,
    poller: tokio::task::JoinHandle<()>,
}

impl NixlKvReceiver {
    /// Starts polling `endpoint`'s notifications every `every`.
    pub fn start(
        endpoint: Arc<NixlEndpoint>,
        on_written: UnboundedSender<KvWritten>,
        every: Duration,
    ) -> NixlKvReceiver {
        let tickets: Arc<Mutex<HashMap<u64, Expected>>> = Default::default();
        let poller = tokio::spawn(poll_loop(
            endpoint.clone(),
            tickets.clone(),
            on_written,
            every,
        ));
        NixlKvReceiver {
            endpoint,
            tickets,
            poller,
        }
    }

    /// The target a prefill worker writes `ticket`'s blocks to: this agent, its
    /// metadata, the address of each destination block, and the TCP data plane
    /// (`tcp`) a prefill worker without NIXL uses instead.
    pub fn target(
        &self,
        ticket: u64,
        block_addrs: Vec<u64>,
        tcp: Option<String>,
    ) -> Result<KvTarget, TransportError> {
        Ok(KvTarget::Nixl {
            agent: self.endpoint.name().to_string(),
            agent_metadata: self.endpoint.metadata()?,
            block_addrs,
            memory: self.endpoint.memory(),
            ticket,
            tcp,
        })
    }

    /// The agent this receiver serves.
    pub fn endpoint(&self) -> &Arc<NixlEndpoint> {
        &self.endpoint
    }

    /// Reports the ticket's notification, if it comes before `deadline`, as a
    /// `KvWritten { seq, blocks, bytes }`.
    pub fn expect(&self, ticket: u64, seq: SeqId, blocks: u32, bytes: u64, deadline: Instant) {
        let mut t = lock(&self.tickets);
        let now = Instant::now();
        t.retain(|_, e| e.deadline > now);
        t.insert(
            ticket,
            Expected {
                seq,
                blocks,
                bytes,
                deadline,
            },
        );
    }

    /// No `KvWritten` for `ticket` from now on (its write may still land: see
    /// the module invariants).
    pub fn forget(&self, ticket: u64) {
        lock(&self.tickets).remove(&ticket);
    }
}

impl Drop for NixlKvReceiver {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

async fn poll_loop(
    endpoint: Arc<NixlEndpoint>,
    tickets: Arc<Mutex<HashMap<u64, Expected>>>,
    on_written: UnboundedSender<KvWritten>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let notes = match endpoint.poll_notifications() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "NIXL notifications");
                continue;
            }
        };
        for (from, msg) in notes {
            let Some(ticket) = parse_notify(&msg) else {
                tracing::warn!(from, "NIXL: a notification that is not a ticket");
                continue;
            };
            let found = lock(&tickets).remove(&ticket);
            match found {
                Some(e) if Instant::now() <= e.deadline => {
                    let w = KvWritten {
                        ticket,
                        seq: e.seq,
                        blocks: e.blocks,
                        bytes: e.bytes,
                    };
                    if on_written.send(w).is_err() {
                        return;
                    }
                }
                Some(_) => {
                    tracing::warn!(from, ticket, "NIXL transfer finished after its deadline")
                }
                None => tracing::warn!(from, ticket, "NIXL transfer for an unknown ticket"),
            }
        }
    }
}
