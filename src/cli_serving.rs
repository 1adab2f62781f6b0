//! Command-line arguments of the serving subcommands: `serve` (every role in one
//! process), `worker` (a decode or prefill node) and `frontend` (HTTP + router).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::cli::{EngineArgs, ModelArgs};

/// HTTP front door.
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Address the HTTP server binds to.
    #[arg(long, default_value = "127.0.0.1", env = "PDSERVE_HOST")]
    pub host: std::net::IpAddr,
    /// HTTP port of the OpenAI-compatible API.
    #[arg(long, default_value_t = 8000, env = "PDSERVE_HTTP_PORT")]
    pub http_port: u16,
    /// Require `Authorization: Bearer <key>` on /v1/*.
    #[arg(long, env = "PDSERVE_API_KEY")]
    pub api_key: Option<String>,
    /// Generation requests in flight at once; more get HTTP 429 (0 = unlimited).
    #[arg(long, default_value_t = 1024)]
    pub max_inflight: usize,
    /// Largest accepted request body in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Per-request deadline in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout_s: f64,
    /// Seconds a client has to send a request's headers, and then its body (408).
    #[arg(long, default_value_t = 30.0)]
    pub header_timeout_s: f64,
    /// Split `<think>` reasoning into `reasoning_content` (supported: qwen3).
    #[arg(long)]
    pub reasoning_parser: Option<String>,
    /// Decode-worker selection: round-robin, random, least-loaded, kv-aware.
    #[arg(long, default_value = "kv-aware")]
    pub router_policy: String,
}

/// Cluster membership.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// This node's cluster address (HOST:PORT; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub cluster_listen: SocketAddr,
    /// A node to join through (repeatable; any node can be a seed).
    #[arg(long = "seed")]
    pub seeds: Vec<String>,
    /// Shared secret of the cluster; nodes with another cookie are refused.
    #[arg(
        long,
        env = "PDSERVE_CLUSTER_COOKIE",
        default_value = "pdserve",
        hide_env_values = true
    )]
    pub cluster_cookie: String,
}

/// Disaggregation knobs of decode and prefill workers.
#[derive(Args, Debug, Clone)]
pub struct DisaggArgs {
    /// Prompts with more uncached tokens than this are prefilled remotely (when a
    /// prefill worker is alive and the queue is short enough).
    #[arg(long, default_value_t = 512)]
    pub max_local_prefill_length: usize,
    /// Remote prefills waiting beyond this make new prompts prefill locally.
    #[arg(long, default_value_t = 16)]
    pub max_prefill_queue_size: usize,
    /// A remote prefill not finished after this many seconds is done locally.
    #[arg(long, default_value_t = 30.0)]
    pub remote_prefill_timeout_s: f64,
    /// Prompts one prefill worker computes at the same time.
    #[arg(long, default_value_t = 4)]
    pub max_prefill_concurrency: usize,
    /// Name clients use for the model (default: derived from the model file).
    #[arg(long)]
    pub served_model_name: Option<String>,
}

impl DisaggArgs {
    pub fn remote_prefill_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.remote_prefill_timeout_s)
            .unwrap_or(Duration::from_secs(30))
    }
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub disagg: DisaggArgs,
    /// Decode workers (each with its own engine) in this process.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub decode_workers: u32,
    /// Prefill workers in this process (0: every prompt is prefilled by its decode worker).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub prefill_workers: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkerRole {
    Decode,
    Prefill,
}

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// What this worker does.
    #[arg(long, value_enum)]
    pub role: WorkerRole,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub disagg: DisaggArgs,
    /// Decode workers: the KV data plane's listen address (default: the cluster
    /// address's host, any port).
    #[arg(long)]
    pub kv_listen: Option<SocketAddr>,
    /// How KV moves between workers: `nixl` (libnixl required; a decode worker
    /// also keeps its TCP data plane for prefill workers without NIXL), `tcp`, or
    /// `auto` (NIXL where this build has it and libnixl loads, else TCP).
    #[arg(long, value_enum, default_value_t = KvTransport::Auto)]
    pub kv_transport: KvTransport,
    /// Serve the worker's probes on this address: `GET /live` (the process
    /// answers) and `GET /health` (200 once it takes work; 503 while loading,
    /// without cluster peers, or draining).
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvTransport {
    Auto,
    Tcp,
    Nixl,
}

#[derive(Args, Debug, Clone)]
pub struct FrontendArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Load tokenizers without downloading (models are found as the workers
    /// report them: `--model` of each worker).
    #[arg(long)]
    pub offline: bool,
}
