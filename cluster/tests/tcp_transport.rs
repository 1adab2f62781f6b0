//! The TCP KV data plane against an in-memory store: the happy path moves exact
//! bytes; every refusal leaves the store untouched and sends no `KvWritten`; bad
//! or slow peers never stop the receiver from serving the next one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pdserve_cluster::protocol::KvLayoutDesc;
use pdserve_cluster::transport::tcp::{
    encode_header, send_blocks, KvWritten, TcpKvReceiver, TcpReceiverConfig, TransferHeader, MAGIC,
    MAX_HEADER_BYTES, WIRE_VERSION,
};
use pdserve_cluster::transport::{KvBlockStore, MemKvStore, TransportError};
use pdserve_engine::{BlockId, SeqId};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const LAYOUT: KvLayoutDesc = KvLayoutDesc {
    num_layers: 2,
    block_size: 4,
    num_kv_heads: 2,
    head_dim: 8,
    dtype: pdserve_engine::kv::pool::KvDtype::F32,
};
const T: Duration = Duration::from_secs(5);

struct Fixture {
    store: Arc<MemKvStore>,
    rx: TcpKvReceiver,
    written: UnboundedReceiver<KvWritten>,
    addr: String,
}

async fn fixture(config: TcpReceiverConfig) -> Fixture {
    let store = Arc::new(MemKvStore::new(LAYOUT, 32));
    let (tx, written) = unbounded_channel();
    let rx = TcpKvReceiver::bind_with("127.0.0.1:0", store.clone(), tx, config)
        .await
        .unwrap();
    let addr = rx.local_addr().to_string();
    Fixture {
        store,
        rx,
        written,
        addr,
    }
}

async fn default_fixture() -> Fixture {
    fixture(TcpReceiverConfig::default()).await
}

fn blocks(ids: &[u32]) -> Vec<BlockId> {
    ids.iter().map(|&i| BlockId(i)).collect()
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random()).collect()
}

fn payload(n_blocks: usize, seed: u64) -> Vec<u8> {
    random_bytes(n_blocks * LAYOUT.block_bytes(), seed)
}

impl Fixture {
    /// Reserves `ids` for `seq` and expects them under `ticket` for 5 s.
    fn authorize(&self, ticket: u64, seq: u64, ids: &[u32]) {
        self.store.reserve_import(SeqId(seq), blocks(ids));
        self.rx
            .expect(ticket, SeqId(seq), blocks(ids), Instant::now() + T);
    }

    fn all_zero(&self) -> bool {
        let all: Vec<BlockId> = (0..self.store.num_blocks() as u32).map(BlockId).collect();
        self.store.read_now(&all).unwrap().iter().all(|&b| b == 0)
    }

    /// Nothing was written and nothing was announced.
    fn assert_untouched(&mut self) {
        assert_eq!(self.store.writes(), 0);
        assert!(self.all_zero());
        assert!(self.written.try_recv().is_err());
    }
}

fn refused_with(r: Result<(), TransportError>, needle: &str) {
    match r {
        Err(TransportError::Refused(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected a refusal containing {needle:?}, got {other:?}"),
    }
}

/// Opens a connection and sends a preamble and header as a sender would.
async fn raw_header(addr: &str, h: &TransferHeader) -> TcpStream {
    let hb = encode_header(h).unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head = MAGIC.to_vec();
    head.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    head.extend_from_slice(&(hb.len() as u32).to_le_bytes());
    head.extend_from_slice(&hb);
    s.write_all(&head).await.unwrap();
    s
}

/// The next reply on `s`: `(status, message)`, or `None` if it closed.
async fn reply(s: &mut TcpStream) -> Option<(u8, String)> {
    let mut h = [0u8; 5];
    tokio::time::timeout(T, s.read_exact(&mut h))
        .await
        .expect("reply timed out")
        .ok()?;
    let n = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).await.ok()?;
    Some((h[0], String::from_utf8_lossy(&body).into_owned()))
}

fn header(ticket: u64, ids: &[u32], total_bytes: u64) -> TransferHeader {
    TransferHeader {
        ticket,
        layout: LAYOUT,
        blocks: ids.to_vec(),
        total_bytes,
    }
}

#[tokio::test]
async fn happy_path_moves_exact_bytes_once() {
    let mut f = default_fixture().await;
    f.authorize(11, 7, &[3, 5, 9]);
    let data = payload(3, 1);
    send_blocks(&f.addr, 11, LAYOUT, &blocks(&[3, 5, 9]), data.clone(), T)
        .await
        .unwrap();
    assert_eq!(f.store.read_now(&blocks(&[3, 5, 9])).unwrap(), data);
    assert_eq!(
        f.store.read_now(&blocks(&[0, 4, 10])).unwrap(),
        vec![0; 3 * 1024]
    );
    let w = f.written.try_recv().unwrap();
    assert_eq!(
        w,
        KvWritten {
            ticket: 11,
            seq: SeqId(7),
            blocks: 3,
            bytes: 3 * LAYOUT.block_bytes() as u64
        }
    );
    assert_eq!(f.rx.pending(), 0);
    // Single use: the same ticket again is refused and changes nothing.
    let other = payload(3, 2);
    let r = send_blocks(&f.addr, 11, LAYOUT, &blocks(&[3, 5, 9]), other, T).await;
    refused_with(r, "unknown or withdrawn ticket 11");
    assert_eq!(f.store.read_now(&blocks(&[3, 5, 9])).unwrap(), data);
    assert_eq!(f.store.writes(), 1);
    assert!(f.written.try_recv().is_err());
}

#[tokio::test]
async fn zero_blocks_transfer_completes() {
    let mut f = default_fixture().await;
    f.authorize(5, 1, &[]);
    send_blocks(&f.addr, 5, LAYOUT, &[], Vec::new(), T)
        .await
        .unwrap();
    assert_eq!(f.written.try_recv().unwrap().blocks, 0);
}

#[tokio::test]
async fn unknown_ticket_is_refused() {
    let mut f = default_fixture().await;
    f.authorize(1, 7, &[0]);
    let r = send_blocks(&f.addr, 2, LAYOUT, &blocks(&[0]), payload(1, 3), T).await;
    refused_with(r, "unknown or withdrawn ticket 2");
    f.assert_untouched();
}

#[tokio::test]
async fn wrong_blocks_are_refused_and_the_ticket_stays_usable() {
    let mut f = default_fixture().await;
    f.authorize(1, 7, &[1, 2, 3]);
    for wrong in [&[1u32, 2][..], &[1, 2, 4], &[3, 2, 1], &[1, 2, 3, 4]] {
        let data = payload(wrong.len(), 4);
        let r = send_blocks(&f.addr, 1, LAYOUT, &blocks(wrong), data, T).await;
        refused_with(r, "do not match ticket 1");
    }
    f.assert_untouched();
    let data = payload(3, 5);
    send_blocks(&f.addr, 1, LAYOUT, &blocks(&[1, 2, 3]), data.clone(), T)
        .await
        .unwrap();
    assert_eq!(f.store.read_now(&blocks(&[1, 2, 3])).unwrap(), data);
}

#[tokio::test]
async fn layout_mismatch_names_both_layouts() {
    let mut f = default_fixture().await;
    f.authorize(1, 7, &[0, 1]);
    let theirs = KvLayoutDesc {
        head_dim: 16,
        ..LAYOUT
    };
    let data = vec![1u8; 2 * theirs.block_bytes()];
    let r = send_blocks(&f.addr, 1, theirs, &blocks(&[0, 1]), data, T).await;
    assert_eq!(
        r,
        Err(TransportError::LayoutMismatch {
            sender: theirs,
            receiver: LAYOUT
        })
    );
    f.assert_untouched();
}

#[tokio::test]
async fn sender_checks_its_own_byte_count() {
    let f = default_fixture().await;
    let r = send_blocks(&f.addr, 1, LAYOUT, &blocks(&[0]), vec![0u8; 10], T).await;
    refused_with(r, "10 bytes for 1 blocks");
}

#[tokio::test]
async fn announced_byte_count_must_match_the_blocks() {
    let mut f = default_fixture().await;
    f.authorize(1, 7, &[0, 1]);
    let mut s = raw_header(&f.addr, &header(1, &[0, 1], 2048 + 1)).await;
    let (st, msg) = reply(&mut s).await.unwrap();
    assert_ne!(st, 0);
    assert!(msg.contains("2049 bytes announced"), "{msg}");
    f.assert_untouched();
}

#[tokio::test]
async fn oversize_and_garbage_headers_are_refused() {
    let mut f = default_fixture().await;
    f.authorize(1, 7, &[0]);
    // A header length over the cap.
    let mut s = TcpStream::connect(&f.addr).await.unwrap();
    let mut pre = MAGIC.to_vec();
    pre.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    pre.extend_from_slice(&((MAX_HEADER_BYTES + 1) as u32).to_le_bytes());
    s.write_all(&pre).await.unwrap();
    let (st, msg) = reply(&mut s).await.unwrap();
    assert_eq!((st, msg.contains("over")), (1, true), "{msg}");
    // A wrong version.
    let mut s = TcpStream::connect(&f.addr).await.unwrap();
    let mut pre = MAGIC.to_vec();
    pre.extend_from_slice(&(WIRE_VERSION + 1).to_le_bytes());
    pre.extend_from_slice(&0u32.to_le_bytes());
    s.write_all(&pre).await.unwrap();
    let (_, msg) = reply(&mut s).await.unwrap();
    assert!(msg.contains("version"), "{msg}");
    // A well-framed header that is not bincode of a header.
    let mut s = TcpStream::connect(&f.addr).await.unwrap();
    let mut pre = MAGIC.to_vec();
    pre.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    pre.extend_from_slice(&3u32.to_le_bytes());
    pre.extend_from_slice(&[0xff, 0xff, 0xff]);
    s.write_all(&pre).await.unwrap();
    let (_, msg) = reply(&mut s).await.unwrap();
    assert!(msg.contains("bad header"), "{msg}");
    f.assert_untouched();
    // The ticket was never claimed by any of them.
    let data = payload(1, 6);
    send_blocks(&f.addr, 1, LAYOUT, &blocks(&[0]), data, T)
        .await
        .unwrap();
}

#[tokio::test]
async fn random_garbage_never_stops_the_receiver() {
    let mut f = default_fixture().await;
    f.authorize(1, 7, &[2]);
    for i in 0..20u64 {
        let junk = random_bytes(1 + (i as usize * 37) % 300, 100 + i);
        let mut s = TcpStream::connect(&f.addr).await.unwrap();
        s.write_all(&junk).await.unwrap();
        if junk.len() >= 10 {
            // Enough for a preamble: the receiver answers with a refusal.
            let (st, _) = reply(&mut s).await.expect("a refusal");
            assert_ne!(st, 0);
        }
        drop(s);
    }
    f.assert_untouched();
    let data = payload(1, 7);
    send_blocks(&f.addr, 1, LAYOUT, &blocks(&[2]), data.clone(), T)
        .await
        .unwrap();
    assert_eq!(f.store.read_now(&blocks(&[2])).unwrap(), data);
}

#[tokio::test]
async fn forget_before_send_refuses_it() {
    let mut f = default_fixture().await;
    f.authorize(1, 7, &[0]);
    f.rx.forget(1);
    let r = send_blocks(&f.addr, 1, LAYOUT, &blocks(&[0]), payload(1, 8), T).await;
    refused_with(r, "unknown or withdrawn ticket 1");
    f.assert_untouched();
    assert_eq!(f.rx.pending(), 0);
}

#[tokio::test]
async fn forget_during_transfer_writes_nothing() {
    let mut f = default_fixture().await;
    f.authorize(1, 7, &[0, 1]);
    let mut s = raw_header(&f.addr, &header(1, &[0, 1], 2048)).await;
    assert_eq!(reply(&mut s).await.unwrap().0, 0, "header accepted");
    f.rx.forget(1);
    s.write_all(&payload(2, 9)).await.unwrap();
    let (st, msg) = reply(&mut s).await.unwrap();
    assert_eq!(st, 1);
    assert!(msg.contains("withdrawn"), "{msg}");
    f.assert_untouched();
    assert_eq!(f.rx.pending(), 0);
}

#[tokio::test]
async fn expired_ticket_is_refused() {
    let mut f = default_fixture().await;
    f.store.reserve_import(SeqId(7), blocks(&[0]));
    f.rx.expect(
        1,
        SeqId(7),
        blocks(&[0]),
        Instant::now() + Duration::from_millis(30),
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    let r = send_blocks(&f.addr, 1, LAYOUT, &blocks(&[0]), payload(1, 10), T).await;
    refused_with(r, "expired");
    f.assert_untouched();
}

#[tokio::test]
async fn slow_and_truncated_senders_are_cut_off() {
    let config = TcpReceiverConfig {
        io_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let mut f = fixture(config).await;
    f.authorize(1, 7, &[0, 1]);
    f.authorize(2, 8, &[2, 3]);
    // Slow: half the bytes, then silence.
    let started = Instant::now();
    let mut s = raw_header(&f.addr, &header(1, &[0, 1], 2048)).await;
    assert_eq!(reply(&mut s).await.unwrap().0, 0);
    s.write_all(&payload(1, 11)).await.unwrap();
    let (st, msg) = reply(&mut s).await.unwrap();
    assert_eq!(st, 1);
    assert!(msg.contains("too slow: 1024 of 2048"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Truncated: half the bytes, then close.
    let mut s = raw_header(&f.addr, &header(2, &[2, 3], 2048)).await;
    assert_eq!(reply(&mut s).await.unwrap().0, 0);
    s.write_all(&payload(1, 12)).await.unwrap();
    drop(s);
    // A header that never completes.
    let mut s = TcpStream::connect(&f.addr).await.unwrap();
    let mut pre = MAGIC.to_vec();
    pre.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    pre.extend_from_slice(&100u32.to_le_bytes());
    s.write_all(&pre).await.unwrap();
    let (st, _) = reply(&mut s).await.unwrap();
    assert_eq!(st, 3, "timeout status");
    // Both tickets were used up by the failed transfers; nothing was written.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.rx.pending(), 0);
    f.assert_untouched();
    // And the receiver still serves.
    f.authorize(3, 9, &[4]);
    send_blocks(&f.addr, 3, LAYOUT, &blocks(&[4]), payload(1, 13), T)
        .await
        .unwrap();
}

#[tokio::test]
async fn engine_refusal_reaches_the_sender() {
    let mut f = default_fixture().await;
    // Authorized on the receiver, but the engine has no such import.
    f.rx.expect(1, SeqId(99), blocks(&[0]), Instant::now() + T);
    let r = send_blocks(&f.addr, 1, LAYOUT, &blocks(&[0]), payload(1, 14), T).await;
    assert!(
        matches!(r, Err(TransportError::Engine(ref m)) if m.contains("seq-99")),
        "{r:?}"
    );
    f.assert_untouched();
}

#[tokio::test]
async fn concurrent_transfers_all_land() {
    let mut f = default_fixture().await;
    let n = 8u32;
    for i in 0..n {
        f.authorize(100 + i as u64, i as u64, &[i * 3, i * 3 + 1, i * 3 + 2]);
    }
    let sends = (0..n).map(|i| {
        let addr = f.addr.clone();
        tokio::spawn(async move {
            let ids = blocks(&[i * 3, i * 3 + 1, i * 3 + 2]);
            let data = payload(3, 200 + i as u64);
            send_blocks(&addr, 100 + i as u64, LAYOUT, &ids, data.clone(), T)
                .await
                .map(|_| (ids, data))
        })
    });
    let results: Vec<_> = futures_join(sends.collect()).await;
    for r in results {
        let (ids, data) = r.unwrap();
        assert_eq!(f.store.read_now(&ids).unwrap(), data);
    }
    let mut tickets: Vec<u64> = (0..n)
        .map(|_| f.written.try_recv().unwrap().ticket)
        .collect();
    tickets.sort();
    assert_eq!(tickets, (100..100 + n as u64).collect::<Vec<_>>());
    assert_eq!(f.store.writes(), n as usize);
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(tokio::time::timeout(T, h).await.unwrap().unwrap());
    }
    out
}

#[tokio::test]
async fn reused_connections_survive_the_receiver_closing_idle_ones() {
    let config = TcpReceiverConfig {
        idle_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let f = fixture(config).await;
    let mut conns = Vec::new();
    for (i, pause) in [0u64, 0, 300, 0, 300].iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(*pause)).await;
        let t = i as u64 + 1;
        f.authorize(t, t, &[i as u32]);
        let data = payload(1, 300 + t);
        send_blocks(&f.addr, t, LAYOUT, &blocks(&[i as u32]), data.clone(), T)
            .await
            .unwrap();
        assert_eq!(f.store.read_now(&blocks(&[i as u32])).unwrap(), data);
        conns.push(f.rx.connections_accepted());
    }
    // Back-to-back sends share a connection; after an idle close, a new one.
    assert_eq!(conns, vec![1, 1, 2, 2, 3]);
}

#[tokio::test]
async fn connections_beyond_the_limit_wait() {
    let config = TcpReceiverConfig {
        max_connections: 1,
        ..Default::default()
    };
    let f = fixture(config).await;
    f.authorize(1, 7, &[0]);
    let hog = TcpStream::connect(&f.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let short = Duration::from_millis(300);
    let r = send_blocks(&f.addr, 1, LAYOUT, &blocks(&[0]), payload(1, 15), short).await;
    assert_eq!(r, Err(TransportError::Timeout(300)));
    assert_eq!(f.store.writes(), 0);
    drop(hog);
    send_blocks(&f.addr, 1, LAYOUT, &blocks(&[0]), payload(1, 16), T)
        .await
        .unwrap();
    assert_eq!(f.store.writes(), 1);
}

#[tokio::test]
async fn a_dropped_receiver_refuses_connections() {
    let f = default_fixture().await;
    let addr = f.addr.clone();
    drop(f);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = send_blocks(&addr, 1, LAYOUT, &blocks(&[0]), payload(1, 17), T).await;
    assert!(matches!(r, Err(TransportError::Io(_))), "{r:?}");
}

#[test]
fn header_round_trips_and_garbage_never_panics() {
    use pdserve_cluster::transport::tcp::decode_header;
    let h = header(u64::MAX, &[0, 7, u32::MAX], 12345);
    assert_eq!(decode_header(&encode_header(&h).unwrap()).unwrap(), h);
    let mut enc = encode_header(&h).unwrap();
    enc.push(0);
    assert!(decode_header(&enc).unwrap_err().contains("trailing"));
    for i in 0..500u64 {
        let junk = random_bytes((i as usize * 13) % 200, i);
        let _ = decode_header(&junk);
    }
    // A length prefix claiming billions of blocks fails without allocating them.
    let mut huge = encode_header(&header(1, &[], 0)).unwrap();
    huge.truncate(huge.len() - 2);
    huge.extend_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0x7f]);
    assert!(decode_header(&huge).is_err());
}

#[test]
fn mem_store_enforces_import_ownership() {
    let s = MemKvStore::new(LAYOUT, 4);
    let data = payload(1, 18);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let w = |seq: u64, b: u32| rt.block_on(s.write_import(SeqId(seq), blocks(&[b]), data.clone()));
    assert!(matches!(w(1, 0), Err(TransportError::Engine(_))));
    s.reserve_import(SeqId(1), blocks(&[0, 1]));
    assert!(w(1, 2).is_err());
    w(1, 1).unwrap();
    assert_eq!(s.read_now(&blocks(&[1])).unwrap(), data);
    s.release(SeqId(1));
    assert!(w(1, 1).is_err());
    let (base, len) = s.pool_region().unwrap();
    assert_eq!(len, 4 * LAYOUT.block_bytes());
    assert_eq!(s.block_addr(BlockId(1)), Some(base + LAYOUT.block_bytes()));
    assert_eq!(s.block_addr(BlockId(4)), None);
}
