//! Every message that crosses a node, and how it is encoded.
//!
//! Wire format: each actor that is reachable from another node has one wire enum
//! here (`*Wire`); its local message type wraps it (`Msg::Wire(..)`) next to local-only
//! variants and implements `ractor::Message` with [`impl_wire_message!`], which
//! encodes the wire enum with bincode 2 (standard config, [`MAX_MESSAGE_BYTES`]
//! limit) as one `SerializedMessage::Cast`. There are no cross-node RPCs: replies are
//! casts to the asker's inbox group, so a lost peer never leaves a caller waiting on
//! a reply port.
//!
//! Invariants:
//! - KV data never rides in these messages (ractor_cluster frames cap at 16 MiB and
//!   an oversize frame tears the node session down); it goes through `transport`.
//! - Decoding never panics: bad bytes from a peer are an `Err`, and ractor drops the
//!   message (logged at debug).
//! - Changing any type here is a protocol change: bump [`PROTOCOL_VERSION`], which
//!   the node handshake ([`Hello`]) checks.

use pdserve_engine::engine::FinishReason;
use pdserve_engine::sampling::{SampledToken, SamplingParams};
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::{NodeName, RequestId, Role, WorkerId};

/// Checked when two nodes meet; nodes with different versions do not talk.
pub const PROTOCOL_VERSION: u32 = 2;

/// Upper bound of one encoded message, well under ractor_cluster's frame limit.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// First message between the membership actors of two nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub node: NodeName,
    /// The node's cluster listen address (`host:port`), for reconnects.
    pub listen: String,
    pub roles: Vec<Role>,
}

/// A worker's load and capacity, reported to every router periodically and on change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerLoad {
    pub worker: WorkerId,
    pub role: Role,
    /// Served model name (what clients put in `"model"`).
    pub model: String,
    /// How the worker was told to load it (`--model`), so that a frontend can load
    /// the same tokenizer.
    pub model_spec: String,
    pub max_model_len: u32,
    pub block_size: u32,
    pub free_blocks: u32,
    pub total_blocks: u32,
    pub running: u32,
    pub waiting: u32,
    /// Remote prefills waiting in this worker's prefill queue (decode) or assigned
    /// and not finished (prefill).
    pub prefill_queue_depth: u32,
    /// Stopping: finishes what it holds, takes nothing new.
    pub draining: bool,
    /// Decode: remote prefills completed (KV received) since start.
    pub remote_prefills: u64,
    /// Decode: remote prefills abandoned for local prefill (worker lost, failure,
    /// deadline) since start.
    pub prefill_fallbacks: u64,
    /// Hashes of full KV blocks in the worker's prefix cache (most recent first,
    /// capped), for kv-aware routing.
    pub cached_blocks: Vec<u128>,
    /// Increases with every report of this worker, to order reports.
    pub seq: u64,
}

/// A tokenized, validated generation request, gateway → decode worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub id: RequestId,
    pub model: String,
    pub prompt_tokens: Vec<u32>,
    pub params: SamplingParams,
    /// Inbox group of the router that streams this request to its client.
    pub reply_to: String,
    /// Milliseconds since the Unix epoch after which the request is abandoned.
    pub deadline_unix_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PrefillLocation {
    Local,
    Remote,
}

impl PrefillLocation {
    pub fn as_str(self) -> &'static str {
        match self {
            PrefillLocation::Local => "local",
            PrefillLocation::Remote => "remote",
        }
    }
}

/// Why a request failed; the gateway maps each kind to an HTTP status once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request cannot be served as asked (400).
    InvalidRequest,
    /// No capacity now (429 / 503).
    Overloaded,
    /// The worker serving the request went away mid-stream.
    WorkerLost,
    DeadlineExceeded,
    Internal,
}

/// Decode worker → router, per request, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StreamEvent {
    /// The request was admitted and its prompt is being prefilled.
    Started {
        id: RequestId,
        worker: WorkerId,
        prefill: PrefillLocation,
        prompt_tokens: u32,
        cached_tokens: u32,
    },
    /// New tokens (and their safe-to-show text) of one request.
    Tokens {
        id: RequestId,
        tokens: Vec<SampledToken>,
        text: String,
        finish: Option<FinishReason>,
    },
    Error {
        id: RequestId,
        kind: ErrorKind,
        message: String,
    },
}

impl StreamEvent {
    pub fn id(&self) -> RequestId {
        match self {
            StreamEvent::Started { id, .. }
            | StreamEvent::Tokens { id, .. }
            | StreamEvent::Error { id, .. } => *id,
        }
    }
}

/// Shape of a KV block; both sides of a transfer must agree exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvLayoutDesc {
    pub num_layers: u32,
    pub block_size: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    /// The element type (an f16 and a bf16 pool have equal sizes but must not
    /// exchange blocks).
    pub dtype: pdserve_engine::kv::pool::KvDtype,
}

impl KvLayoutDesc {
    pub fn block_bytes(&self) -> usize {
        self.num_layers as usize
            * 2
            * self.block_size as usize
            * self.num_kv_heads as usize
            * self.head_dim as usize
            * self.dtype.bytes()
    }
}

impl From<pdserve_engine::kv::pool::KvLayout> for KvLayoutDesc {
    fn from(l: pdserve_engine::kv::pool::KvLayout) -> Self {
        KvLayoutDesc {
            num_layers: l.num_layers as u32,
            block_size: l.block_size as u32,
            num_kv_heads: l.num_kv_heads as u32,
            head_dim: l.head_dim as u32,
            dtype: l.dtype,
        }
    }
}

/// The memory an engine's KV pool lives in, as a transport registers it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolMemory {
    /// Host memory (the CPU backend).
    #[default]
    Host,
    /// Device memory of CUDA device N.
    Cuda(u32),
}

/// Where a prefill worker writes a request's KV blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KvTarget {
    /// The decode engine is in the same process: copy directly.
    InProcess { decode_worker: WorkerId },
    /// The decode node's TCP data plane; `ticket` authorizes exactly this transfer.
    Tcp { addr: String, ticket: u64 },
    /// NIXL: the decode agent's name and metadata, and the address of each
    /// destination block in its registered memory. `tcp`: the decode node's TCP
    /// data plane, expecting the same ticket, for a prefill worker without NIXL.
    Nixl {
        agent: String,
        agent_metadata: Vec<u8>,
        block_addrs: Vec<u64>,
        /// What `block_addrs` point into.
        memory: PoolMemory,
        ticket: u64,
        tcp: Option<String>,
    },
}

/// Decode worker → prefill worker (through the prefill queue).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillRequest {
    pub id: RequestId,
    /// Increases each time the decode side hands this request out again, so that a
    /// late answer to an earlier attempt is recognized and dropped.
    pub attempt: u32,
    pub decode_worker: WorkerId,
    pub model: String,
    pub prompt_tokens: Vec<u32>,
    pub params: SamplingParams,
    /// The decode engine's sequence that owns the destination blocks; every write
    /// is checked against it, so a late write can never land in reused blocks.
    pub dest_seq: u64,
    /// Destination block ids in the decode engine, one per prompt block.
    pub dest_blocks: Vec<u32>,
    /// Leading blocks the decode side already has (prefix cache): not written.
    pub skip_blocks: u32,
    pub layout: KvLayoutDesc,
    pub target: KvTarget,
    pub deadline_unix_ms: u64,
}

/// Prefill worker → decode worker: the KV is written, here is the first token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillDone {
    pub id: RequestId,
    pub attempt: u32,
    pub prefill_worker: WorkerId,
    pub first: SampledToken,
    pub blocks_written: u32,
}

/// Prefill worker → decode worker: this attempt will not complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillFailed {
    pub id: RequestId,
    pub attempt: u32,
    pub prefill_worker: WorkerId,
    pub reason: String,
}

/// Messages a decode worker accepts from other nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DecodeWire {
    Generate(GenerateRequest),
    Cancel { id: RequestId },
    PrefillDone(PrefillDone),
    PrefillFailed(PrefillFailed),
}

/// Messages a prefill queue accepts from other nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum QueueWire {
    /// A prefill worker can take `free_slots` more requests.
    Capacity { worker: WorkerId, free_slots: u32 },
}

/// Messages a prefill worker accepts from other nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PrefillWire {
    Assign(Box<PrefillRequest>),
    Cancel { id: RequestId, attempt: u32 },
}

/// Messages a router accepts from other nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RouterWire {
    Load(WorkerLoad),
    Events(Vec<StreamEvent>),
}

/// Messages a node's membership actor accepts from other nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MemberWire {
    Hello(Hello),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes a wire value with bincode 2.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, config())
}

/// Decodes a wire value; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// The variant tag every pdserve cast carries.
const VARIANT: &str = "pdserve";

pub fn to_serialized<T: Serialize>(value: &T) -> Result<SerializedMessage, BoxedDowncastErr> {
    match encode(value) {
        Ok(args) => Ok(SerializedMessage::Cast {
            variant: VARIANT.to_string(),
            args,
            metadata: None,
        }),
        Err(e) => {
            tracing::error!("cannot encode a cluster message: {e}");
            Err(BoxedDowncastErr)
        }
    }
}

pub fn from_serialized<T: DeserializeOwned>(msg: SerializedMessage) -> Result<T, BoxedDowncastErr> {
    match msg {
        SerializedMessage::Cast { variant, args, .. } if variant == VARIANT => decode(&args)
            .map_err(|e| {
                tracing::warn!("dropping an undecodable cluster message: {e}");
                BoxedDowncastErr
            }),
        _ => {
            tracing::warn!("dropping a cluster message of an unexpected kind");
            Err(BoxedDowncastErr)
        }
    }
}

/// Implements `ractor::Message` for an actor message enum `$msg` whose variant
/// `$msg::Wire($wire)` is what other nodes may send; other variants are local-only.
#[macro_export]
macro_rules! impl_wire_message {
    ($msg:ty, $wire:ty) => {
        impl ::ractor::Message for $msg {
            fn serializable() -> bool {
                true
            }
            fn serialize(
                self,
            ) -> ::std::result::Result<
                ::ractor::message::SerializedMessage,
                ::ractor::message::BoxedDowncastErr,
            > {
                match self {
                    Self::Wire(w) => $crate::protocol::to_serialized(&w),
                    #[allow(unreachable_patterns)]
                    _ => ::std::result::Result::Err(::ractor::message::BoxedDowncastErr),
                }
            }
            fn deserialize(
                m: ::ractor::message::SerializedMessage,
            ) -> ::std::result::Result<Self, ::ractor::message::BoxedDowncastErr> {
                $crate::protocol::from_serialized::<$wire>(m).map(Self::Wire)
            }
        }
    };
}

#[cfg(test)]
mod tests;
