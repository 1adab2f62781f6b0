//! `pdserve bench-kv`: how fast one request's KV cache moves from a prefill
//! process to a decode process, beside a same-process memcpy of the same bytes
//! in the same run.
//!
//! The parent (sender) spawns itself as the receiver (`bench-kv
//! --serve-receiver`, hidden) and drives it over stdin/stdout with one-line
//! commands; both sides use in-memory stores of the model's KV geometry (default:
//! SmolLM2-135M, 4096 tokens = 256 blocks of 16 tokens), so no model is loaded.
//!
//! Measured per transfer (median of `--repeats`, after `--warmup`):
//! - memcpy: one `copy_from_slice` of all the bytes into a warm buffer;
//! - tcp: `send_blocks` until the receiver has written the blocks into its
//!   store and acknowledged (includes the receiver's copy into its pool);
//! - nixl (feature `nixl`, when libnixl loads): the WRITE until the receiver
//!   reports the ticket's notification (includes one pipe round trip).
//!
//! Invariant: every transport's result is checked — the receiver's blocks must
//! hash to the sender's — before its figure is reported.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use pdserve_cluster::protocol::KvLayoutDesc;
use pdserve_cluster::transport::tcp::{send_blocks, KvWritten, TcpKvReceiver};
use pdserve_cluster::transport::MemKvStore;
use pdserve_engine::kv::pool::KvDtype;
use pdserve_engine::{BlockId, SeqId};

const IO_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args, Debug, Clone)]
pub struct BenchKvArgs {
    /// Tokens of KV cache per transfer.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub tokens: u32,
    /// Model layers.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub layers: u32,
    /// KV heads per layer.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_heads: u32,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub head_dim: u32,
    /// KV element type: f32 (the default, as the recorded figures used), f16
    /// (the CPU engine's default) or bf16 (CUDA).
    #[arg(long, default_value = "f32", value_parser = parse_kv_dtype)]
    pub dtype: KvDtype,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub block_size: u32,
    /// Timed transfers per transport; the median is reported.
    #[arg(long, short = 'n', default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// Untimed transfers per transport first.
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,
    /// Skip NIXL even when it is available.
    #[arg(long)]
    pub no_nixl: bool,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Internal: act as the receiving process, driven over stdin/stdout.
    #[arg(long, hide = true)]
    pub serve_receiver: bool,
}

/// `--dtype`: f32, f16 or bf16.
fn parse_kv_dtype(s: &str) -> Result<KvDtype, String> {
    KvDtype::parse(s).ok_or_else(|| format!("`{s}` is not one of f32, f16, bf16"))
}

impl BenchKvArgs {
    fn layout(&self) -> KvLayoutDesc {
        KvLayoutDesc {
            num_layers: self.layers,
            block_size: self.block_size,
            num_kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            dtype: self.dtype,
        }
    }
    fn num_blocks(&self) -> usize {
        self.tokens.div_ceil(self.block_size) as usize
    }
    fn blocks(&self) -> Vec<BlockId> {
        (0..self.num_blocks() as u32).map(BlockId).collect()
    }
    fn bytes(&self) -> usize {
        self.num_blocks() * self.layout().block_bytes()
    }
    /// The geometry flags, for the receiver process.
    fn geometry_args(&self) -> Vec<String> {
        let f = |k: &str, v: u32| [format!("--{k}"), v.to_string()];
        [
            f("tokens", self.tokens),
            f("layers", self.layers),
            f("kv-heads", self.kv_heads),
            f("head-dim", self.head_dim),
            ["--dtype".into(), self.dtype.to_string()],
            f("block-size", self.block_size),
        ]
        .concat()
    }
}

/// One transport's figures.
#[derive(Clone, Debug)]
struct Row {
    name: &'static str,
    median_s: f64,
    min_s: f64,
    max_s: f64,
}

pub fn run(args: &BenchKvArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    if args.serve_receiver {
        return serve_receiver(args, &rt);
    }
    let bytes = args.bytes();
    let layout = args.layout();
    let mut source = vec![0u8; bytes];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in source.chunks_mut(8) {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = state.to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
    let want_hash = hash(&source);

    let mut rows = vec![bench_memcpy(args, &source)];
    let mut peer = Peer::spawn(args)?;
    rows.push(bench_tcp(args, &rt, &mut peer, &source, want_hash)?);
    let nixl_note = if args.no_nixl {
        Some("skipped (--no-nixl)".to_string())
    } else {
        match nixl::bench(args, &rt, &mut peer, &source, want_hash)? {
            Ok(row) => {
                rows.push(row);
                None
            }
            Err(why) => Some(why),
        }
    };
    peer.finish()?;

    let base = rows[0].median_s;
    let gbs = |s: f64| bytes as f64 / 1e9 / s;
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "transport": r.name,
                    "median_ms": round3(r.median_s * 1e3),
                    "min_ms": round3(r.min_s * 1e3),
                    "max_ms": round3(r.max_s * 1e3),
                    "gb_s": round3(gbs(r.median_s)),
                    "vs_memcpy": round3(base / r.median_s),
                })
            })
            .collect();
        let out = serde_json::json!({
            "tokens": args.tokens,
            "blocks": args.num_blocks(),
            "block_bytes": layout.block_bytes(),
            "bytes": bytes,
            "repeats": args.repeats,
            "results": list,
            "nixl_note": nixl_note,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "KV transfer: {} tokens = {} blocks x {} B = {:.1} MB ({} layers, {} KV heads, head_dim {}, {} B/elem, block {}); median of {}",
        args.tokens,
        args.num_blocks(),
        layout.block_bytes(),
        bytes as f64 / 1e6,
        args.layers,
        args.kv_heads,
        args.head_dim,
        args.dtype.bytes(),
        args.block_size,
        args.repeats
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10}",
        "transport", "ms", "GB/s", "vs memcpy"
    );
    for r in &rows {
        println!(
            "{:<24} {:>10.2} {:>10.2} {:>9.2}x",
            r.name,
            r.median_s * 1e3,
            gbs(r.median_s),
            base / r.median_s
        );
    }
    if let Some(n) = nixl_note {
        println!("nixl: {n}");
    }
    Ok(())
}

fn bench_memcpy(args: &BenchKvArgs, source: &[u8]) -> Row {
    let mut dst = vec![1u8; source.len()];
    let times = timed(args, |_| {
        dst.copy_from_slice(source);
        std::hint::black_box(&dst);
        Ok(Duration::ZERO)
    })
    .unwrap_or_default();
    row("memcpy (same process)", &times)
}

fn bench_tcp(
    args: &BenchKvArgs,
    rt: &tokio::runtime::Runtime,
    peer: &mut Peer,
    source: &[u8],
    want: u64,
) -> Result<Row> {
    peer.ask("CLEAR")?;
    let addr = peer.tcp_addr.clone();
    let (layout, blocks) = (args.layout(), args.blocks());
    let mut ticket = 0u64;
    let times = timed(args, |_| {
        ticket += 1;
        peer.ask(&format!("EXPECT tcp {ticket}"))?;
        let data = source.to_vec();
        let start = Instant::now();
        rt.block_on(send_blocks(
            &addr, ticket, layout, &blocks, data, IO_TIMEOUT,
        ))
        .map_err(|e| anyhow!("tcp transfer: {e}"))?;
        Ok(start.elapsed())
    })?;
    peer.check_hash(want, "tcp")?;
    Ok(row("tcp (2 processes)", &times))
}

/// Runs `warmup` untimed and `repeats` timed rounds; `f` returns its own time
/// (or `Duration::ZERO` to be timed whole).
fn timed(args: &BenchKvArgs, mut f: impl FnMut(u32) -> Result<Duration>) -> Result<Vec<Duration>> {
    for i in 0..args.warmup {
        f(i)?;
    }
    let mut out = Vec::new();
    for i in 0..args.repeats {
        let start = Instant::now();
        let d = f(i)?;
        out.push(if d.is_zero() { start.elapsed() } else { d });
    }
    Ok(out)
}

fn row(name: &'static str, times: &[Duration]) -> Row {
    let mut s: Vec<f64> = times.iter().map(|d| d.as_secs_f64()).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    let median = if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    };
    Row {
        name,
        median_s: median,
        min_s: s.first().copied().unwrap_or(f64::NAN),
        max_s: s.last().copied().unwrap_or(f64::NAN),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// A fast 64-bit hash of a byte string, to compare both sides' blocks.
fn hash(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The receiver process, seen from the sender.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    tcp_addr: String,
    /// `agent metadata_hex base_addr`, or `NONIXL reason...`.
    nixl: Vec<String>,
}

impl Peer {
    fn spawn(args: &BenchKvArgs) -> Result<Peer> {
        let exe = std::env::current_exe().context("locating pdserve")?;
        let mut cmd = Command::new(exe);
        cmd.args(["bench-kv", "--serve-receiver"])
            .args(args.geometry_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if args.no_nixl {
            cmd.arg("--no-nixl");
        }
        let mut child = cmd.spawn().context("starting the receiver process")?;
        let stdin = child.stdin.take().context("receiver stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("receiver stdout")?);
        let mut peer = Peer {
            child,
            stdin,
            stdout,
            tcp_addr: String::new(),
            nixl: Vec::new(),
        };
        let ready = peer.line()?;
        let mut parts = ready.split_whitespace();
        if parts.next() != Some("READY") {
            bail!("receiver said {ready:?}");
        }
        peer.tcp_addr = parts.next().context("receiver address")?.to_string();
        peer.nixl = parts.map(str::to_string).collect();
        Ok(peer)
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            bail!("the receiver process exited");
        }
        Ok(l.trim_end().to_string())
    }

    /// Sends a command and returns the reply, which must not be an error.
    fn ask(&mut self, cmd: &str) -> Result<String> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let reply = self.line()?;
        match reply.strip_prefix("ERR ") {
            Some(e) => bail!("receiver: {e}"),
            None => Ok(reply),
        }
    }

    fn check_hash(&mut self, want: u64, what: &str) -> Result<()> {
        let got = self.ask("HASH")?;
        if got != format!("HASH {want:016x}") {
            bail!("{what}: the receiver's blocks differ from the sender's ({got})");
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        drop(self.stdin);
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the receiver process failed: {status}");
        }
        Ok(())
    }
}

/// The receiving process: one store, a TCP receiver, NIXL where available.
fn serve_receiver(args: &BenchKvArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let store = Arc::new(MemKvStore::new(args.layout(), args.num_blocks()));
    let (tx, mut tcp_done) = tokio::sync::mpsc::unbounded_channel::<KvWritten>();
    let rx = rt.block_on(TcpKvReceiver::bind("127.0.0.1:0", store.clone(), tx))?;
    let (nixl, extra) = if args.no_nixl {
        (None, "NONIXL skipped".to_string())
    } else {
        match nixl::Receiver::start(&store, rt) {
            Ok(n) => {
                let d = n.describe();
                (Some(n), d)
            }
            Err(e) => (None, format!("NONIXL {e:#}")),
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {} {extra}", rx.local_addr())?;
    out.flush()?;
    let blocks = args.blocks();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["EXPECT", "tcp", t] => {
                while tcp_done.try_recv().is_ok() {}
                store.reserve_import(SeqId(1), blocks.clone());
                let deadline = Instant::now() + IO_TIMEOUT;
                rx.expect(t.parse()?, SeqId(1), blocks.clone(), deadline);
                "OK".to_string()
            }
            ["EXPECT", "nixl", t] => match &nixl {
                Some(n) => n.expect(t.parse()?, args.num_blocks(), args.bytes()),
                None => "ERR no NIXL here".to_string(),
            },
            ["WAIT", t] => match &nixl {
                Some(n) => n.wait(rt, t.parse()?),
                None => "ERR no NIXL here".to_string(),
            },
            ["CLEAR"] => {
                let zeros = vec![0u8; args.bytes()];
                store.fill(&blocks, &zeros)?;
                "OK".to_string()
            }
            ["HASH"] => format!("HASH {:016x}", hash(&store.read_now(&blocks)?)),
            _ => format!("ERR unknown command {line:?}"),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(feature = "nixl")]
mod nixl {
    //! The NIXL leg of the benchmark (both sides).

    use super::*;
    use pdserve_cluster::protocol::PoolMemory;
    use pdserve_cluster::transport::nixl::{NixlConfig, NixlEndpoint, NixlKvReceiver};
    use pdserve_cluster::transport::KvBlockStore;
    use tokio::sync::mpsc::UnboundedReceiver;

    pub struct Receiver {
        endpoint: Arc<NixlEndpoint>,
        recv: NixlKvReceiver,
        done: std::sync::Mutex<UnboundedReceiver<KvWritten>>,
        base: usize,
        /// Keeps the registered memory alive as long as the endpoint.
        _store: Arc<MemKvStore>,
    }

    impl Receiver {
        pub fn start(store: &Arc<MemKvStore>, rt: &tokio::runtime::Runtime) -> Result<Receiver> {
            let (base, len) = store.pool_region().context("store region")?;
            let name = format!("bench-kv-recv-{}", std::process::id());
            // SAFETY: `_store` keeps the region alive for the endpoint's life.
            let endpoint = Arc::new(unsafe {
                NixlEndpoint::new(&name, base, len, PoolMemory::Host, &NixlConfig::default())
            }?);
            let (tx, done) = tokio::sync::mpsc::unbounded_channel();
            let _guard = rt.enter();
            let recv = NixlKvReceiver::start(endpoint.clone(), tx, Duration::from_millis(1));
            Ok(Receiver {
                endpoint,
                recv,
                done: std::sync::Mutex::new(done),
                base,
                _store: store.clone(),
            })
        }

        pub fn describe(&self) -> String {
            let md = self.endpoint.metadata().unwrap_or_default();
            let hex: String = md.iter().map(|b| format!("{b:02x}")).collect();
            format!("{} {hex} {}", self.endpoint.name(), self.base)
        }

        pub fn expect(&self, ticket: u64, blocks: usize, bytes: usize) -> String {
            let deadline = Instant::now() + IO_TIMEOUT;
            let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
            while done.try_recv().is_ok() {}
            self.recv
                .expect(ticket, SeqId(1), blocks as u32, bytes as u64, deadline);
            "OK".to_string()
        }

        pub fn wait(&self, rt: &tokio::runtime::Runtime, ticket: u64) -> String {
            let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
            match rt.block_on(async { tokio::time::timeout(IO_TIMEOUT, done.recv()).await }) {
                Ok(Some(w)) if w.ticket == ticket => "DONE".to_string(),
                Ok(Some(w)) => format!("ERR ticket {} instead of {ticket}", w.ticket),
                Ok(None) => "ERR receiver stopped".to_string(),
                Err(_) => "ERR timed out".to_string(),
            }
        }
    }

    /// Times NIXL writes into the peer; `Ok(Err(why))` when NIXL is unavailable.
    pub fn bench(
        args: &BenchKvArgs,
        rt: &tokio::runtime::Runtime,
        peer: &mut Peer,
        source: &[u8],
        want: u64,
    ) -> Result<std::result::Result<Row, String>> {
        let (agent, md_hex, base) = match peer.nixl.as_slice() {
            [a, m, b] if a != "NONIXL" => (a.clone(), m.clone(), b.parse::<u64>()?),
            other => {
                let why = other.get(1..).unwrap_or_default().join(" ");
                return Ok(Err(format!("the receiver has no NIXL: {why}")));
            }
        };
        let md: Vec<u8> = (0..md_hex.len() / 2)
            .map(|i| u8::from_str_radix(&md_hex[2 * i..2 * i + 2], 16))
            .collect::<std::result::Result<_, _>>()?;
        let store = MemKvStore::new(args.layout(), args.num_blocks());
        store.fill(&args.blocks(), source)?;
        let (src_base, len) = store.pool_region().context("store region")?;
        let name = format!("bench-kv-send-{}", std::process::id());
        // SAFETY: `store` outlives `endpoint` (declared before it).
        let endpoint = match unsafe {
            NixlEndpoint::new(
                &name,
                src_base,
                len,
                PoolMemory::Host,
                &NixlConfig::default(),
            )
        } {
            Ok(e) => e,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let bb = args.layout().block_bytes() as u64;
        let n = args.num_blocks() as u64;
        let src: Vec<u64> = (0..n).map(|i| src_base as u64 + i * bb).collect();
        let dst: Vec<u64> = (0..n).map(|i| base + i * bb).collect();
        let remote = pdserve_cluster::transport::nixl::RemoteAgent {
            name: &agent,
            metadata: &md,
            memory: PoolMemory::Host,
        };
        peer.ask("CLEAR")?;
        let mut ticket = 1_000_000u64;
        let times = timed(args, |_| {
            ticket += 1;
            peer.ask(&format!("EXPECT nixl {ticket}"))?;
            let note = pdserve_cluster::transport::nixl::notify_message(ticket);
            let start = Instant::now();
            rt.block_on(endpoint.write_blocks(remote, &src, &dst, bb as usize, &note, IO_TIMEOUT))
                .map_err(|e| anyhow!("nixl transfer: {e}"))?;
            peer.ask(&format!("WAIT {ticket}"))?;
            Ok(start.elapsed())
        })?;
        peer.check_hash(want, "nixl")?;
        Ok(Ok(row("nixl (2 processes)", &times)))
    }
}

#[cfg(not(feature = "nixl"))]
mod nixl {
    //! Without the `nixl` feature: nothing to measure.

    use super::*;

    pub struct Receiver;

    impl Receiver {
        pub fn start(_: &Arc<MemKvStore>, _: &tokio::runtime::Runtime) -> Result<Receiver> {
            bail!("built without the nixl feature")
        }
        pub fn describe(&self) -> String {
            String::new()
        }
        pub fn expect(&self, _: u64, _: usize, _: usize) -> String {
            "ERR no NIXL".into()
        }
        pub fn wait(&self, _: &tokio::runtime::Runtime, _: u64) -> String {
            "ERR no NIXL".into()
        }
    }

    pub fn bench(
        _: &BenchKvArgs,
        _: &tokio::runtime::Runtime,
        _: &mut Peer,
        _: &[u8],
        _: u64,
    ) -> Result<std::result::Result<Row, String>> {
        Ok(Err(
            "built without the nixl feature (cargo build --features nixl)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: BenchKvArgs,
    }

    fn parse(v: &[&str]) -> Result<BenchKvArgs, clap::Error> {
        Wrap::try_parse_from(std::iter::once("bench-kv").chain(v.iter().copied())).map(|w| w.args)
    }

    #[test]
    fn defaults_are_smollm2_135m_at_4096_tokens() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.num_blocks(), 256);
        assert_eq!(a.layout().block_bytes(), 30 * 2 * 16 * 3 * 64 * 4);
        assert_eq!(a.bytes(), 256 * 737_280);
        assert!(!a.serve_receiver && !a.no_nixl && !a.json);
    }

    #[test]
    fn receiver_gets_the_same_geometry() {
        let a = parse(&["--tokens", "100", "--layers", "2", "--head-dim", "8"]).unwrap();
        let args = a.geometry_args();
        let b = parse(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        assert_eq!((b.layout(), b.num_blocks()), (a.layout(), 7));
        assert!(parse(&["--tokens", "0"]).is_err());
        assert!(parse(&["--elem-bytes", "9"]).is_err());
    }

    #[test]
    fn median_and_hash() {
        let ms = |v: u64| Duration::from_millis(v);
        let r = row("x", &[ms(5), ms(1), ms(3)]);
        assert_eq!((r.median_s, r.min_s, r.max_s), (0.003, 0.001, 0.005));
        let a = vec![1u8; 1001];
        let mut b = a.clone();
        b[1000] = 2;
        assert_ne!(hash(&a), hash(&b));
        b[1000] = 1;
        b[3] = 0;
        assert_ne!(hash(&a), hash(&b));
    }
}
