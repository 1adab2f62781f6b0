//! `pdserve bench-actors`: what the actor path costs. The same model, prompt
//! length and generation length run alternately (a) straight through an engine on
//! this thread and (b) through the router and a decode worker actor — the path of
//! `pdserve serve` minus HTTP — and the time to first token and the per-token
//! interval of both are compared. Prompts differ per repetition (no prefix-cache
//! hits); runs alternate so that machine noise hits both sides alike.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use pdserve_actors::decode_worker::{
    DecodeArgs, DecodeConfig, DecodeWorker, KvIngress, QUARANTINE_SLACK,
};
use pdserve_actors::policy::routing::RoutingPolicy;
use pdserve_actors::router::{Router, RouterArgs, RouterMsg, RouterView};
use pdserve_cluster::protocol::{GenerateRequest, StreamEvent};
use pdserve_cluster::{groups, NodeName, RequestId, Role, WorkerId};
use pdserve_engine::engine::{Engine, EngineRequest};
use pdserve_engine::sampling::SamplingParams;
use pdserve_engine::SeqId;
use ractor::Actor;

use crate::bench_engine::{random_prompt, token_pool, SplitMix64};
use crate::cli::{EngineArgs, ModelArgs};

#[derive(Args, Debug, Clone)]
pub struct BenchActorsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Prompt tokens per request.
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// Generated tokens per request.
    #[arg(long, default_value_t = 64)]
    pub gen_len: usize,
    /// Requests per side.
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
}

#[derive(Default)]
struct Samples {
    ttft: Vec<f64>,
    itl: Vec<f64>,
}

fn params(n: usize) -> SamplingParams {
    SamplingParams {
        max_tokens: n,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

fn direct(engine: &mut Engine, seq: u64, prompt: &[u32], n: usize, s: &mut Samples) -> Result<()> {
    let t0 = Instant::now();
    engine.add_request(EngineRequest {
        id: SeqId(seq),
        prompt_tokens: prompt.to_vec(),
        params: params(n),
    })?;
    let mut last: Option<Instant> = None;
    while engine.has_work() {
        for _ in engine.step()? {
            let now = Instant::now();
            match last {
                None => s.ttft.push((now - t0).as_secs_f64()),
                Some(l) => s.itl.push((now - l).as_secs_f64()),
            }
            last = Some(now);
        }
    }
    Ok(())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub fn run(args: &BenchActorsArgs) -> Result<()> {
    let opts = args.model.load_options();
    let load = || -> Result<Engine> {
        let m = pdserve_engine::loader::load_model(&args.model.model, &opts)?;
        let mut c = args.engine.engine_config()?;
        c.enable_prefix_cache = false;
        Ok(Engine::new(m, c)?)
    };
    let mut engine = load()?;
    let pool = token_pool(engine.tokenizer(), engine.model_config());
    let actor_engine = load()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let node = NodeName("bench".into());
    let model = "bench-model".to_string();
    let (router, view) = rt.block_on(async {
        let view = Arc::new(RwLock::new(RouterView::default()));
        let (router, _) = Actor::spawn(
            None,
            Router,
            RouterArgs {
                node: node.clone(),
                policy: RoutingPolicy::RoundRobin,
                view: view.clone(),
            },
        )
        .await?;
        Actor::spawn(
            None,
            DecodeWorker,
            DecodeArgs {
                config: DecodeConfig {
                    worker: WorkerId::new(&node, Role::Decode, 0),
                    model: model.clone(),
                    model_spec: args.model.model.clone(),
                    max_local_prefill_length: usize::MAX,
                    max_prefill_queue_size: 0,
                    remote_prefill_timeout: Duration::from_secs(60),
                    ingress: KvIngress::None,
                    load_interval: Duration::from_millis(250),
                    quarantine_slack: QUARANTINE_SLACK,
                },
                engine: actor_engine,
            },
        )
        .await?;
        anyhow::Ok((router, view))
    })?;
    let until = Instant::now() + Duration::from_secs(10);
    while view
        .read()
        .map(|v| v.serving(&model).is_empty())
        .unwrap_or(true)
    {
        anyhow::ensure!(Instant::now() < until, "decode worker did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut rng = SplitMix64(7);
    let (mut d, mut a) = (Samples::default(), Samples::default());
    for rep in 0..args.reps + 1 {
        let warm = rep == 0;
        let p = random_prompt(&mut rng, &pool, args.prompt_len);
        let mut sink = Samples::default();
        direct(
            &mut engine,
            rep as u64 + 1,
            &p,
            args.gen_len,
            if warm { &mut sink } else { &mut d },
        )?;
        let p = random_prompt(&mut rng, &pool, args.prompt_len);
        let s = if warm { &mut sink } else { &mut a };
        rt.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let t0 = Instant::now();
            router.cast(RouterMsg::Submit {
                request: GenerateRequest {
                    id: RequestId::random(),
                    model: model.clone(),
                    prompt_tokens: p,
                    params: params(args.gen_len),
                    reply_to: groups::router_inbox(&node),
                    deadline_unix_ms: 0,
                },
                sink: tx,
            })?;
            let mut last: Option<Instant> = None;
            while let Some(ev) = rx.recv().await {
                match ev {
                    StreamEvent::Tokens { finish, .. } => {
                        let now = Instant::now();
                        match last {
                            None => s.ttft.push((now - t0).as_secs_f64()),
                            Some(l) => s.itl.push((now - l).as_secs_f64()),
                        }
                        last = Some(now);
                        if finish.is_some() {
                            break;
                        }
                    }
                    StreamEvent::Error { message, .. } => {
                        anyhow::bail!("actor path failed: {message}")
                    }
                    StreamEvent::Started { .. } => {}
                }
            }
            anyhow::Ok(())
        })
        .context("actor path")?;
    }
    let ms = |x: f64| x * 1e3;
    let us = |x: f64| x * 1e6;
    let (dt50, at50) = (percentile(&mut d.ttft, 0.5), percentile(&mut a.ttft, 0.5));
    let (di50, ai50) = (percentile(&mut d.itl, 0.5), percentile(&mut a.itl, 0.5));
    let (dim, aim) = (mean(&d.itl), mean(&a.itl));
    println!(
        "model {} | prompt {} | gen {} | reps {}",
        engine.model_name(),
        args.prompt_len,
        args.gen_len,
        args.reps
    );
    println!(
        "TTFT p50: engine {:.3} ms, actor path {:.3} ms, added {:+.3} ms",
        ms(dt50),
        ms(at50),
        ms(at50 - dt50)
    );
    println!(
        "per-token p50: engine {:.1} us, actor path {:.1} us, added {:+.1} us",
        us(di50),
        us(ai50),
        us(ai50 - di50)
    );
    println!(
        "per-token mean: engine {:.1} us, actor path {:.1} us, added {:+.1} us",
        us(dim),
        us(aim),
        us(aim - dim)
    );
    Ok(())
}
