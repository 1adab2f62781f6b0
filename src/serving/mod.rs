//! The serving subcommands: `serve` (every role in one process, KV moved
//! in-process), `worker --role decode|prefill` and `frontend` (cluster nodes joined
//! through `--seed`).
//!
//! Shutdown (SIGTERM or Ctrl-C): the HTTP server stops taking requests and lets
//! in-flight ones finish; workers drain (report `draining`, take no new work,
//! finish what they hold, bounded by [`DRAIN_LIMIT`]), then the node leaves the
//! cluster and the process exits 0.

mod backend;
mod gateway_actor;
mod worker_health;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pdserve_actors::decode_worker::{
    DecodeArgs, DecodeConfig, DecodeMsg, DecodeWorker, KvIngress, QUARANTINE_SLACK,
};
use pdserve_actors::policy::routing::RoutingPolicy;
use pdserve_actors::prefill_worker::{PrefillArgs, PrefillConfig, PrefillMsg, PrefillWorker};
use pdserve_actors::router::{Router, RouterArgs, RouterMsg, RouterView};
use pdserve_cluster::node::{Node, NodeConfig};
use pdserve_cluster::{groups, NodeName, Role, WorkerId};
use pdserve_engine::engine::Engine;
use pdserve_engine::loader::load_model;
use pdserve_engine::tokenizer::Tokenizer;
use pdserve_gateway::config::{GatewayConfig, ReasoningParser};
use ractor::{Actor, ActorRef};

use crate::cli::{EngineArgs, ModelArgs};
use crate::cli_serving::{
    DisaggArgs, FrontendArgs, HttpArgs, KvTransport, ServeArgs, WorkerArgs, WorkerRole,
};
use backend::ActorBackend;

/// Longest a draining worker waits for its requests to finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown signal received; draining");
}

/// One engine of a process that runs `engines` of them: on a GPU they share the
/// device, so each gets that share of `--gpu-memory-utilization`.
fn load_engine(model: &ModelArgs, engine: &EngineArgs, engines: usize) -> Result<Engine> {
    let mut config = engine.engine_config()?;
    config.gpu_memory_utilization /= engines.max(1) as f32;
    let loaded = load_model(&model.model, &model.load_options())
        .with_context(|| format!("cannot load model {:?}", model.model))?;
    Engine::new(loaded, config).context("cannot build the engine")
}

fn gateway_config(http: &HttpArgs) -> Result<GatewayConfig> {
    let reasoning_parser = match &http.reasoning_parser {
        Some(p) => Some(p.parse::<ReasoningParser>().map_err(anyhow::Error::msg)?),
        None => None,
    };
    Ok(GatewayConfig {
        listen: std::net::SocketAddr::new(http.host, http.http_port),
        api_key: http.api_key.clone(),
        max_inflight: http.max_inflight,
        max_body_bytes: http.max_body_bytes,
        request_timeout: Duration::try_from_secs_f64(http.request_timeout_s)
            .context("--request-timeout-s must be a positive number of seconds")?,
        header_timeout: Duration::try_from_secs_f64(http.header_timeout_s)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--header-timeout-s must be a positive number of seconds")?,
        reasoning_parser,
        ..GatewayConfig::default()
    })
}

fn routing_policy(http: &HttpArgs) -> Result<RoutingPolicy> {
    http.router_policy
        .parse::<RoutingPolicy>()
        .map_err(|e| anyhow::anyhow!("--router-policy: {e}"))
}

async fn spawn_router(
    node: &NodeName,
    policy: RoutingPolicy,
) -> Result<(ActorRef<RouterMsg>, Arc<RwLock<RouterView>>)> {
    let view = Arc::new(RwLock::new(RouterView::default()));
    let (router, _) = Actor::spawn(
        None,
        Router,
        RouterArgs {
            node: node.clone(),
            policy,
            view: view.clone(),
        },
    )
    .await
    .context("cannot start the router")?;
    Ok((router, view))
}

fn decode_config(
    worker: WorkerId,
    model: &str,
    spec: &str,
    d: &DisaggArgs,
    ingress: KvIngress,
) -> DecodeConfig {
    DecodeConfig {
        worker,
        model: model.to_string(),
        model_spec: spec.to_string(),
        max_local_prefill_length: d.max_local_prefill_length,
        max_prefill_queue_size: d.max_prefill_queue_size,
        remote_prefill_timeout: d.remote_prefill_timeout(),
        ingress,
        load_interval: Duration::from_millis(250),
        quarantine_slack: QUARANTINE_SLACK,
    }
}

fn prefill_config(
    worker: WorkerId,
    model: &str,
    spec: &str,
    d: &DisaggArgs,
    nixl: bool,
) -> PrefillConfig {
    PrefillConfig {
        worker,
        model: model.to_string(),
        model_spec: spec.to_string(),
        max_concurrent: d.max_prefill_concurrency.max(1),
        transfer_timeout: Duration::from_secs(10),
        nixl,
    }
}

/// Whether this worker moves KV over NIXL: `--kv-transport` resolved against
/// what this build and machine have.
fn use_nixl(t: KvTransport) -> Result<bool> {
    match (t, pdserve_actors::kv_nixl::available()) {
        (KvTransport::Tcp, _) => Ok(false),
        (_, Ok(())) => Ok(true),
        (KvTransport::Auto, Err(why)) => {
            tracing::info!("KV over TCP: NIXL is not available ({why})");
            Ok(false)
        }
        (KvTransport::Nixl, Err(why)) => Err(anyhow::anyhow!("--kv-transport nixl: {why}")),
    }
}

fn served_name(engine: &Engine, d: &DisaggArgs) -> String {
    d.served_model_name
        .clone()
        .unwrap_or_else(|| engine.model_name().to_string())
}

/// Workers spawned by this process, drained and stopped at shutdown.
#[derive(Default)]
struct Workers {
    decode: Vec<ActorRef<DecodeMsg>>,
    prefill: Vec<ActorRef<PrefillMsg>>,
}

impl Workers {
    /// Whether every worker actor is still running.
    fn running(&self) -> bool {
        let up = |s: ractor::ActorStatus| s == ractor::ActorStatus::Running;
        self.decode.iter().all(|a| up(a.get_status()))
            && self.prefill.iter().all(|a| up(a.get_status()))
    }

    async fn drain_and_stop(self) {
        let until = Instant::now() + DRAIN_LIMIT;
        for p in &self.prefill {
            let _ = ractor::call_t!(p, PrefillMsg::Drain, 1000);
        }
        for d in &self.decode {
            let _ = ractor::call_t!(d, DecodeMsg::Drain, 1000);
        }
        loop {
            let mut held = 0;
            for d in &self.decode {
                held += ractor::call_t!(d, DecodeMsg::Active, 1000).unwrap_or(0);
            }
            for p in &self.prefill {
                held += ractor::call_t!(p, PrefillMsg::Active, 1000).unwrap_or(0);
            }
            if held == 0 {
                break;
            }
            if Instant::now() >= until {
                tracing::warn!(
                    held,
                    "drain limit reached; stopping with requests still held"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for p in self.prefill {
            p.stop(None);
        }
        for d in self.decode {
            d.stop(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `pdserve serve`: router, decode and prefill workers and the HTTP server in one
/// process; KV moves between engines in-process.
pub fn run_serve(args: &ServeArgs) -> Result<()> {
    let gw = gateway_config(&args.http)?;
    let policy = routing_policy(&args.http)?;
    let rt = runtime()?;
    rt.block_on(async {
        let node = NodeName(format!("serve-{:04x}", rand_suffix()));
        let (router, view) = spawn_router(&node, policy).await?;
        let mut workers = Workers::default();
        let mut tokenizers: Vec<(String, Tokenizer)> = Vec::new();
        let ingress = if args.prefill_workers > 0 {
            KvIngress::InProcess
        } else {
            KvIngress::None
        };
        let engines = (args.decode_workers + args.prefill_workers) as usize;
        for i in 0..args.decode_workers as usize {
            let engine = load_engine(&args.model, &args.engine, engines)?;
            let model = served_name(&engine, &args.disagg);
            if i == 0 {
                tokenizers.push((model.clone(), engine.tokenizer().clone()));
            }
            let cfg = decode_config(
                WorkerId::new(&node, Role::Decode, i),
                &model,
                &args.model.model,
                &args.disagg,
                ingress.clone(),
            );
            let (a, _) = Actor::spawn(
                None,
                DecodeWorker,
                DecodeArgs {
                    config: cfg,
                    engine,
                },
            )
            .await
            .context("cannot start a decode worker")?;
            workers.decode.push(a);
        }
        for i in 0..args.prefill_workers as usize {
            let engine = load_engine(&args.model, &args.engine, engines)?;
            let model = served_name(&engine, &args.disagg);
            let cfg = prefill_config(
                WorkerId::new(&node, Role::Prefill, i),
                &model,
                &args.model.model,
                &args.disagg,
                false,
            );
            let (a, _) = Actor::spawn(
                None,
                PrefillWorker,
                PrefillArgs {
                    config: cfg,
                    engine,
                },
            )
            .await
            .context("cannot start a prefill worker")?;
            workers.prefill.push(a);
        }
        let backend = Arc::new(ActorBackend::new(
            router.clone(),
            view,
            groups::router_inbox(&node),
            tokenizers,
            !args.model.offline,
        ));
        let served = gateway_actor::run(gw, backend, shutdown_signal()).await;
        workers.drain_and_stop().await;
        router.stop(None);
        served
    })
}

/// `pdserve worker --role decode|prefill`: one worker node joined to the cluster.
pub fn run_worker(args: &WorkerArgs) -> Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let (label, role) = match args.role {
            WorkerRole::Decode => ("decode", Role::Decode),
            WorkerRole::Prefill => ("prefill", Role::Prefill),
        };
        // The probes answer from the start: /live while the model loads too.
        let health = worker_health::WorkerHealth::new(label);
        if let Some(addr) = args.health_listen {
            let bound = worker_health::serve(addr, health.clone()).await?;
            eprintln!("pdserve worker: probes on http://{bound}/health and /live");
        }
        let engine = load_engine(&args.model, &args.engine, 1)?;
        let node = Node::start(NodeConfig {
            label: label.into(),
            listen: args.cluster.cluster_listen,
            seeds: args.cluster.seeds.clone(),
            cookie: args.cluster.cluster_cookie.clone(),
            roles: vec![role],
        })
        .await?;
        let model = served_name(&engine, &args.disagg);
        let worker = WorkerId::new(&node.name, role, 0);
        let mut workers = Workers::default();
        match args.role {
            WorkerRole::Decode => {
                let host = args.cluster.cluster_listen.ip();
                let listen = args
                    .kv_listen
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| format!("{host}:0"));
                let advertise_host = host.to_string();
                let ingress = if use_nixl(args.kv_transport)? {
                    KvIngress::Nixl {
                        listen,
                        advertise_host,
                    }
                } else {
                    KvIngress::Tcp {
                        listen,
                        advertise_host,
                    }
                };
                let cfg = decode_config(
                    worker.clone(),
                    &model,
                    &args.model.model,
                    &args.disagg,
                    ingress,
                );
                let (a, _) = Actor::spawn(
                    None,
                    DecodeWorker,
                    DecodeArgs {
                        config: cfg,
                        engine,
                    },
                )
                .await
                .context("cannot start the decode worker")?;
                workers.decode.push(a);
            }
            WorkerRole::Prefill => {
                let nixl = use_nixl(args.kv_transport)?;
                let cfg = prefill_config(
                    worker.clone(),
                    &model,
                    &args.model.model,
                    &args.disagg,
                    nixl,
                );
                let (a, _) = Actor::spawn(
                    None,
                    PrefillWorker,
                    PrefillArgs {
                        config: cfg,
                        engine,
                    },
                )
                .await
                .context("cannot start the prefill worker")?;
                workers.prefill.push(a);
            }
        }
        tracing::warn!(%worker, %model, cluster = %node.listen, "worker ready");
        eprintln!(
            "pdserve worker {worker} serving {model:?}; cluster address {}",
            node.listen
        );
        health.started(&worker.0);
        let signal = shutdown_signal();
        tokio::pin!(signal);
        loop {
            health.observe(workers.running(), node.peers().await.len());
            tokio::select! {
                _ = &mut signal => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        health.draining();
        workers.drain_and_stop().await;
        node.shutdown().await;
        Ok(())
    })
}

/// `pdserve frontend`: the HTTP server and a router, joined to the cluster.
pub fn run_frontend(args: &FrontendArgs) -> Result<()> {
    let gw = gateway_config(&args.http)?;
    let policy = routing_policy(&args.http)?;
    let rt = runtime()?;
    rt.block_on(async {
        let node = Node::start(NodeConfig {
            label: "frontend".into(),
            listen: args.cluster.cluster_listen,
            seeds: args.cluster.seeds.clone(),
            cookie: args.cluster.cluster_cookie.clone(),
            roles: vec![Role::Frontend],
        })
        .await?;
        let (router, view) = spawn_router(&node.name, policy).await?;
        let backend = Arc::new(ActorBackend::new(
            router.clone(),
            view,
            groups::router_inbox(&node.name),
            Vec::new(),
            !args.offline,
        ));
        backend::spawn_tokenizer_warmup(&backend);
        eprintln!("pdserve frontend: cluster address {}", node.listen);
        let served = gateway_actor::run(gw, backend, shutdown_signal()).await;
        router.stop(None);
        node.shutdown().await;
        served
    })
}

fn rand_suffix() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        & 0xffff) as u16
}
