//! KV export/import: engine A prefills, its blocks are copied into engine B's
//! blocks, engine B decodes — greedy output identical to engine A alone.

#[macro_use]
mod common;

use common::{greedy, load, prompt, run_to_completion, small_config_on, Form};
use pdserve_engine::engine::Engine;
use pdserve_engine::fixtures::TinyModelSpec;
use pdserve_engine::quant::DType;
use pdserve_engine::SeqId;

per_device! {
fn prefill_on_a_decode_on_b_is_token_identical(device) {
    for spec in TinyModelSpec::presets() {
        let form = Form::Gguf(DType::Q8_0);
        let p = prompt(42, 29, spec.vocab);
        let n = 10;

        let (_d0, l0) = load(&spec, form);
        let mut alone = Engine::new(l0, small_config_on(device)).unwrap();
        alone.add_request(greedy(1, p.clone(), n)).unwrap();
        let want = run_to_completion(&mut alone)[&SeqId(1)].0.clone();

        let (_da, la) = load(&spec, form);
        let (_db, lb) = load(&spec, form);
        let mut a = Engine::new(la, small_config_on(device)).unwrap();
        let mut b = Engine::new(lb, small_config_on(device)).unwrap();
        assert_eq!(a.kv_layout(), b.kv_layout());

        // Decode side reserves destination blocks first.
        // Occupy some of B's blocks so that block ids differ between A and B.
        b.add_request(greedy(99, prompt(7, 20, spec.vocab), 3))
            .unwrap();
        b.step().unwrap();
        let res = b.reserve_import(greedy(1, p.clone(), n)).unwrap();
        assert_eq!(res.cached_tokens, 0);

        // Prefill side computes the prompt and the first token, keeping the KV.
        a.add_prefill_only(greedy(1, p.clone(), n)).unwrap();
        let mut first = None;
        while a.has_work() {
            for o in a.step().unwrap() {
                first = Some(o.token);
            }
        }
        let first = first.expect("prefill produced a first token");
        let src = a.kv_blocks(SeqId(1)).unwrap();
        assert!(src.len() >= res.blocks.len());

        // The transport: copy each block A → B.
        let mut buf = vec![0u8; a.kv_layout().block_bytes()];
        for (s, d) in src.iter().zip(&res.blocks) {
            a.read_kv_block(*s, &mut buf).unwrap();
            b.write_kv_block(*d, &buf).unwrap();
        }
        assert!(a.release(SeqId(1)));
        assert_eq!(
            a.stats().free_blocks,
            a.stats().total_blocks,
            "prefill side freed its blocks"
        );

        let first_out = b.commit_import(SeqId(1), first).unwrap();
        let mut got = vec![first_out.token.token];
        got.extend(run_to_completion(&mut b)[&SeqId(1)].0.iter());
        assert_eq!(got, want, "{:?}: disaggregated vs aggregated", spec.arch);
        assert_eq!(b.stats().free_blocks, b.stats().total_blocks);
    }
}
}

per_device! {
fn aborting_a_reserved_import_frees_its_blocks(device) {
    let spec = TinyModelSpec::tiny_llama();
    let (_d, l) = load(&spec, Form::Hf(DType::F32));
    let mut b = Engine::new(l, small_config_on(device)).unwrap();
    let total = b.stats().total_blocks;
    let res = b
        .reserve_import(greedy(1, prompt(1, 40, spec.vocab), 5))
        .unwrap();
    assert_eq!(res.blocks.len(), 10);
    assert_eq!(b.stats().free_blocks, total - 10);
    assert!(b.abort(SeqId(1)));
    assert_eq!(b.stats().free_blocks, total);
    assert!(b
        .write_kv_block(pdserve_engine::BlockId(u32::MAX), &[0u8; 4])
        .is_err());
}
}

per_device! {
/// The pool is one region (host or device memory) with block `i` at
/// `base + i * block_bytes`: what a NIXL transport registers once and addresses
/// blocks in.
fn kv_pool_is_one_region_in_block_order(device) {
    use pdserve_engine::backend::MemKind;
    use pdserve_engine::BlockId;
    let spec = &TinyModelSpec::presets()[0];
    let (_d, l) = load(spec, Form::Gguf(DType::Q8_0));
    let e = Engine::new(l, small_config_on(device)).unwrap();
    let layout = e.kv_layout();
    let (base, len, kind) = e.kv_pool_region().expect("the pool is one region");
    let want = match device {
        pdserve_engine::device::Device::Cpu => MemKind::Host,
        pdserve_engine::device::Device::Cuda(n) => MemKind::Cuda(n as u32),
    };
    assert_eq!(kind, want);
    assert_eq!(len, layout.num_blocks * layout.block_bytes());
    for b in [0, 1, layout.num_blocks - 1] {
        let (addr, n, _) = e.kv_block_region(BlockId(b as u32)).unwrap();
        assert_eq!(
            (addr, n),
            (base + b * layout.block_bytes(), layout.block_bytes())
        );
    }
}
}
