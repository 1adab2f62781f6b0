//! In-process KV transport: a process-wide registry of decode engines' block stores,
//! by worker id. `pdserve serve` registers every decode worker here; a prefill
//! worker in the same process copies blocks straight into the decode engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use pdserve_engine::{BlockId, SeqId};

use super::{KvBlockStore, TransportError};
use crate::ids::WorkerId;

type Registry = Mutex<HashMap<WorkerId, Arc<dyn KvBlockStore>>>;

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(Default::default)
}

/// Makes a decode worker's engine reachable by in-process prefill workers.
pub fn register(worker: WorkerId, store: Arc<dyn KvBlockStore>) {
    if let Ok(mut r) = registry().lock() {
        r.insert(worker, store);
    }
}

pub fn unregister(worker: &WorkerId) {
    if let Ok(mut r) = registry().lock() {
        r.remove(worker);
    }
}

pub fn lookup(worker: &WorkerId) -> Option<Arc<dyn KvBlockStore>> {
    registry().lock().ok()?.get(worker).cloned()
}

/// Copies `src_blocks` of `src` into `dst_blocks` of the import sequence `dst_seq`
/// of the decode worker `dst`. Returns the bytes moved.
pub async fn copy_blocks(
    src: &dyn KvBlockStore,
    src_blocks: Vec<BlockId>,
    dst: &WorkerId,
    dst_seq: SeqId,
    dst_blocks: Vec<BlockId>,
) -> Result<usize, TransportError> {
    let store = lookup(dst).ok_or_else(|| {
        TransportError::Refused(format!("decode worker {dst} is not in this process"))
    })?;
    if src.layout() != store.layout() {
        return Err(TransportError::LayoutMismatch {
            sender: src.layout(),
            receiver: store.layout(),
        });
    }
    if src_blocks.len() != dst_blocks.len() {
        return Err(TransportError::Refused(format!(
            "{} source blocks for {} destination blocks",
            src_blocks.len(),
            dst_blocks.len()
        )));
    }
    let data = src.read_blocks(src_blocks).await?;
    let n = data.len();
    store.write_import(dst_seq, dst_blocks, data).await?;
    Ok(n)
}
