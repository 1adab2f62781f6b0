//! NIXL transfers between two agents in one process (real DRAM-to-DRAM writes
//! through UCX), and a clean error instead of an abort where libnixl is absent.
//! The transfer tests skip, saying why, when libnixl cannot be loaded
//! (`scripts/fetch-nixl.sh` provides it).
#![cfg(feature = "nixl")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pdserve_cluster::protocol::{KvLayoutDesc, KvTarget, PoolMemory};
use pdserve_cluster::transport::nixl::{
    ensure_library, notify_message, parse_notify, NixlConfig, NixlEndpoint, NixlKvReceiver,
    RemoteAgent,
};
use pdserve_cluster::transport::{KvBlockStore, MemKvStore, TransportError};
use pdserve_engine::{BlockId, SeqId};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc::unbounded_channel;

const LAYOUT: KvLayoutDesc = KvLayoutDesc {
    num_layers: 2,
    block_size: 4,
    num_kv_heads: 2,
    head_dim: 8,
    dtype: pdserve_engine::kv::pool::KvDtype::F32,
};
const T: Duration = Duration::from_secs(10);
const ABSENT_CHILD: &str = "PDSERVE_NIXL_TEST_ABSENT_CHILD";

fn blocks(ids: &[u32]) -> Vec<BlockId> {
    ids.iter().map(|&i| BlockId(i)).collect()
}

fn addrs(store: &MemKvStore, ids: &[u32]) -> Vec<u64> {
    ids.iter()
        .map(|&i| store.block_addr(BlockId(i)).unwrap() as u64)
        .collect()
}

fn endpoint(name: &str, store: &MemKvStore) -> NixlEndpoint {
    let (addr, len) = store.pool_region().unwrap();
    // SAFETY: every store outlives the endpoints made over it in these tests
    // (declared earlier, so dropped later).
    unsafe { NixlEndpoint::new(name, addr, len, PoolMemory::Host, &NixlConfig::default()) }.unwrap()
}

/// Whether libnixl loads; where it does not, the test skips saying why — unless
/// `PDSERVE_REQUIRE_NIXL=1` (the test command, which fetched it), where a missing
/// library is a failure, never a silent skip.
fn available() -> bool {
    match ensure_library() {
        Ok(()) => true,
        Err(e) if std::env::var("PDSERVE_REQUIRE_NIXL").as_deref() == Ok("1") => {
            panic!("PDSERVE_REQUIRE_NIXL=1 but libnixl cannot be loaded: {e}")
        }
        Err(e) => {
            println!("skipped: {e}");
            false
        }
    }
}

/// The transfer future can be spawned onto a multi-threaded runtime.
#[allow(dead_code)]
fn write_future_is_send(e: &'static NixlEndpoint, t: &'static KvTarget) {
    fn send<F: Send>(_: F) {}
    send(e.write_to_target(t, &[], 0, T));
}

#[test]
fn notification_messages_round_trip() {
    assert_eq!(parse_notify(&notify_message(u64::MAX)), Some(u64::MAX));
    assert_eq!(parse_notify(b"PDKN1234567"), None);
    assert_eq!(parse_notify(b"XXXX12345678"), None);
    assert_eq!(parse_notify(b""), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_move_real_bytes() {
    if !available() {
        return;
    }
    let pid = std::process::id();
    let src = MemKvStore::new(LAYOUT, 8);
    let dst = MemKvStore::new(LAYOUT, 8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let data: Vec<u8> = (0..3 * LAYOUT.block_bytes())
        .map(|_| rng.random())
        .collect();
    src.fill(&blocks(&[1, 2, 3]), &data).unwrap();

    let prefill = endpoint(&format!("prefill-{pid}"), &src);
    let decode = Arc::new(endpoint(&format!("decode-{pid}"), &dst));
    let (tx, mut written) = unbounded_channel();
    let recv = NixlKvReceiver::start(decode.clone(), tx, Duration::from_millis(1));

    let bytes = data.len() as u64;
    recv.expect(42, SeqId(7), 3, bytes, Instant::now() + T);
    let target = recv.target(42, addrs(&dst, &[5, 6, 7]), None).unwrap();
    let src_addrs = addrs(&src, &[1, 2, 3]);
    let bb = LAYOUT.block_bytes();
    prefill
        .write_to_target(&target, &src_addrs, bb, T)
        .await
        .unwrap();
    let w = tokio::time::timeout(T, written.recv())
        .await
        .expect("KvWritten in time")
        .unwrap();
    assert_eq!(
        (w.ticket, w.seq, w.blocks, w.bytes),
        (42, SeqId(7), 3, bytes)
    );
    assert_eq!(dst.read_now(&blocks(&[5, 6, 7])).unwrap(), data);
    assert!(dst
        .read_now(&blocks(&[0, 1, 2, 3, 4]))
        .unwrap()
        .iter()
        .all(|&b| b == 0));

    // A source address outside the registered region is refused before NIXL.
    let mut outside = src_addrs.clone();
    outside[2] += 5 * bb as u64;
    let r = prefill.write_to_target(&target, &outside, bb, T).await;
    assert!(
        matches!(r, Err(TransportError::Refused(ref m)) if m.contains("outside")),
        "{r:?}"
    );

    // Metadata that belongs to another agent than the target names.
    let KvTarget::Nixl { agent_metadata, .. } = &target else {
        unreachable!()
    };
    let other = RemoteAgent {
        name: "someone-else",
        metadata: agent_metadata,
        memory: PoolMemory::Host,
    };
    let r = prefill
        .write_blocks(other, &src_addrs, &addrs(&dst, &[5, 6, 7]), bb, b"x", T)
        .await;
    assert!(
        matches!(r, Err(TransportError::Refused(ref m)) if m.contains("not \"someone-else\"")),
        "{r:?}"
    );

    // A forgotten ticket's write lands (NIXL cannot refuse it) but is not reported.
    recv.expect(43, SeqId(8), 1, bb as u64, Instant::now() + T);
    recv.forget(43);
    let target = recv.target(43, addrs(&dst, &[0]), None).unwrap();
    prefill
        .write_to_target(&target, &src_addrs[..1], bb, T)
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_millis(300), written.recv()).await;
    assert!(r.is_err(), "no KvWritten for a forgotten ticket: {r:?}");
    assert_eq!(dst.read_now(&blocks(&[0])).unwrap(), data[..bb].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_blocks_in_one_request() {
    if !available() {
        return;
    }
    let pid = std::process::id();
    let n = 64u32;
    let src = MemKvStore::new(LAYOUT, n as usize);
    let dst = MemKvStore::new(LAYOUT, n as usize);
    let all: Vec<u32> = (0..n).collect();
    let reversed: Vec<u32> = (0..n).rev().collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let data: Vec<u8> = (0..n as usize * LAYOUT.block_bytes())
        .map(|_| rng.random())
        .collect();
    src.fill(&blocks(&all), &data).unwrap();
    let prefill = endpoint(&format!("p2-{pid}"), &src);
    let decode = Arc::new(endpoint(&format!("d2-{pid}"), &dst));
    let (tx, mut written) = unbounded_channel();
    let recv = NixlKvReceiver::start(decode, tx, Duration::from_millis(1));
    recv.expect(1, SeqId(1), n, data.len() as u64, Instant::now() + T);
    // Block i of the source lands in block n-1-i of the destination.
    let target = recv.target(1, addrs(&dst, &reversed), None).unwrap();
    prefill
        .write_to_target(&target, &addrs(&src, &all), LAYOUT.block_bytes(), T)
        .await
        .unwrap();
    tokio::time::timeout(T, written.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dst.read_now(&blocks(&reversed)).unwrap(), data);
}

/// Runs [`absent_library_child`] in a child process that cannot find libnixl.
#[test]
fn absent_library_is_a_clean_error_not_an_abort() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "absent_library_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ABSENT_CHILD, "1")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("PDSERVE_NIXL_LIB_DIR")
        .env("PDSERVE_CACHE", "/nonexistent-pdserve-cache")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
fn absent_library_child() {
    if std::env::var_os(ABSENT_CHILD).is_none() {
        return;
    }
    let e = ensure_library().unwrap_err();
    assert!(e.to_string().contains("fetch-nixl.sh"), "{e}");
    let store = MemKvStore::new(LAYOUT, 1);
    let (addr, len) = store.pool_region().unwrap();
    // SAFETY: never gets as far as registering.
    let r = unsafe {
        NixlEndpoint::new(
            "absent",
            addr,
            len,
            PoolMemory::Host,
            &NixlConfig::default(),
        )
    };
    assert!(r.is_err());
}
