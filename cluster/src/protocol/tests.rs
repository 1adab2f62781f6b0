//! Round trip of every wire type through the ractor serialization path, and
//! garbage that must decode to an error, never a panic.

use super::*;
use proptest::prelude::*;

fn token(t: u32) -> SampledToken {
    SampledToken {
        token: t,
        logprob: -0.25,
        top_logprobs: vec![(t, -0.25), (t + 1, -2.5)],
    }
}

fn params() -> SamplingParams {
    SamplingParams {
        temperature: 0.7,
        top_k: 40,
        seed: Some(7),
        stop: vec!["\n\n".into(), "END".into()],
        stop_token_ids: vec![2],
        max_tokens: 64,
        logprobs: Some(2),
        ..SamplingParams::default()
    }
}

fn worker(s: &str) -> WorkerId {
    WorkerId(s.into())
}

fn generate() -> GenerateRequest {
    GenerateRequest {
        id: RequestId(0xdead_beef_0123_4567),
        model: "smollm2".into(),
        prompt_tokens: vec![1, 2, 3, 50_000],
        params: params(),
        reply_to: "pdserve.r.front-1".into(),
        deadline_unix_ms: 1_800_000_000_000,
    }
}

fn layout() -> KvLayoutDesc {
    KvLayoutDesc {
        num_layers: 30,
        block_size: 16,
        num_kv_heads: 3,
        head_dim: 64,
        dtype: pdserve_engine::kv::pool::KvDtype::F32,
    }
}

fn prefill_request(target: KvTarget) -> PrefillRequest {
    PrefillRequest {
        id: RequestId(9),
        attempt: 2,
        decode_worker: worker("n1/decode/0"),
        model: "smollm2".into(),
        prompt_tokens: (0..700).collect(),
        params: params(),
        dest_seq: 77,
        dest_blocks: (100..144).collect(),
        skip_blocks: 3,
        layout: layout(),
        target,
        deadline_unix_ms: 5,
    }
}

fn load() -> WorkerLoad {
    WorkerLoad {
        worker: worker("n1/decode/0"),
        role: Role::Decode,
        model: "smollm2".into(),
        model_spec: "default".into(),
        max_model_len: 8192,
        block_size: 16,
        free_blocks: 10,
        total_blocks: 20,
        running: 3,
        waiting: 1,
        prefill_queue_depth: 2,
        draining: false,
        remote_prefills: 5,
        prefill_fallbacks: 1,
        cached_blocks: vec![u128::MAX, 1, 0],
        seq: 42,
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
    let ser = to_serialized(&v).expect("encode");
    let back: T = from_serialized(ser).expect("decode");
    assert_eq!(back, v);
}

#[test]
fn decode_wire_round_trips() {
    round_trip(DecodeWire::Generate(generate()));
    round_trip(DecodeWire::Cancel { id: RequestId(1) });
    round_trip(DecodeWire::PrefillDone(PrefillDone {
        id: RequestId(3),
        attempt: 1,
        prefill_worker: worker("n2/prefill/0"),
        first: token(17),
        blocks_written: 44,
    }));
    round_trip(DecodeWire::PrefillFailed(PrefillFailed {
        id: RequestId(3),
        attempt: 1,
        prefill_worker: worker("n2/prefill/0"),
        reason: "transfer refused".into(),
    }));
}

#[test]
fn prefill_and_queue_wire_round_trip() {
    round_trip(PrefillWire::Assign(Box::new(prefill_request(
        KvTarget::InProcess {
            decode_worker: worker("n1/decode/0"),
        },
    ))));
    round_trip(PrefillWire::Assign(Box::new(prefill_request(
        KvTarget::Tcp {
            addr: "127.0.0.1:7201".into(),
            ticket: u64::MAX,
        },
    ))));
    round_trip(PrefillWire::Assign(Box::new(prefill_request(
        KvTarget::Nixl {
            agent: "decode-n1".into(),
            agent_metadata: vec![0, 1, 2, 255],
            block_addrs: vec![0x7f00_0000_0000, 0x7f00_0001_0000],
            memory: PoolMemory::Cuda(1),
            ticket: 3,
            tcp: Some("127.0.0.1:7201".into()),
        },
    ))));
    round_trip(PrefillWire::Cancel {
        id: RequestId(5),
        attempt: 0,
    });
    round_trip(QueueWire::Capacity {
        worker: worker("n2/prefill/0"),
        free_slots: 4,
    });
}

#[test]
fn router_and_member_wire_round_trip() {
    round_trip(RouterWire::Load(load()));
    round_trip(RouterWire::Events(vec![
        StreamEvent::Started {
            id: RequestId(1),
            worker: worker("n1/decode/0"),
            prefill: PrefillLocation::Remote,
            prompt_tokens: 700,
            cached_tokens: 48,
        },
        StreamEvent::Tokens {
            id: RequestId(1),
            tokens: vec![token(5), token(6)],
            text: "héllo 世界".into(),
            finish: Some(FinishReason::Length),
        },
        StreamEvent::Error {
            id: RequestId(1),
            kind: ErrorKind::WorkerLost,
            message: "decode worker n1/decode/0 left".into(),
        },
    ]));
    round_trip(MemberWire::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: NodeName("decode-127.0.0.1-7101-ab12".into()),
        listen: "127.0.0.1:7101".into(),
        roles: vec![Role::Decode, Role::Prefill, Role::Frontend],
    }));
}

#[test]
fn foreign_variants_and_trailing_bytes_are_rejected() {
    let call_like = SerializedMessage::Cast {
        variant: "Other".into(),
        args: encode(&DecodeWire::Cancel { id: RequestId(1) }).unwrap(),
        metadata: None,
    };
    assert!(from_serialized::<DecodeWire>(call_like).is_err());
    let mut bytes = encode(&DecodeWire::Cancel { id: RequestId(1) }).unwrap();
    bytes.push(0);
    assert!(decode::<DecodeWire>(&bytes).is_err());
    // A length prefix far beyond the limit is refused before allocating.
    let huge = [0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    assert!(decode::<RouterWire>(&huge).is_err());
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<DecodeWire>(&bytes);
        let _ = decode::<PrefillWire>(&bytes);
        let _ = decode::<RouterWire>(&bytes);
        let _ = decode::<QueueWire>(&bytes);
        let _ = decode::<MemberWire>(&bytes);
    }

    #[test]
    fn generate_requests_round_trip(
        id in any::<u64>(),
        tokens in proptest::collection::vec(any::<u32>(), 0..300),
        temperature in 0.0f32..2.0,
        max_tokens in 1usize..10_000,
    ) {
        let mut g = generate();
        g.id = RequestId(id);
        g.prompt_tokens = tokens;
        g.params.temperature = temperature;
        g.params.max_tokens = max_tokens;
        let bytes = encode(&DecodeWire::Generate(g.clone())).unwrap();
        prop_assert_eq!(decode::<DecodeWire>(&bytes).unwrap(), DecodeWire::Generate(g));
    }
}
