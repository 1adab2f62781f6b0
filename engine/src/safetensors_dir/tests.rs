//! Tests for `SafetensorsDir`: files written with the `safetensors` crate into a
//! temporary directory (single file, sharded, corrupt, truncated).

use super::*;
use safetensors::tensor::TensorView;

/// A tensor to write: name, dtype, shape, little-endian bytes.
type Spec = (&'static str, StDtype, Vec<usize>, Vec<u8>);

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect()
}
fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect()
}

fn serialize(tensors: &[Spec]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                TensorView::new(*d, s.clone(), b).expect("valid view"),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

fn write(dir: &Path, file: &str, tensors: &[Spec]) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, serialize(tensors)).expect("write");
    path
}

fn values(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 - 3.0) * scale).collect()
}

fn sample_tensors() -> Vec<Spec> {
    vec![
        ("w32", StDtype::F32, vec![3, 4], f32_bytes(&values(12, 0.5))),
        ("w16", StDtype::F16, vec![2, 3], f16_bytes(&values(6, 0.25))),
        ("wbf", StDtype::BF16, vec![4], bf16_bytes(&values(4, 2.0))),
        ("ids", StDtype::I32, vec![2], vec![1, 0, 0, 0, 2, 0, 0, 0]),
        (
            "cube",
            StDtype::F32,
            vec![1, 2, 2],
            f32_bytes(&values(4, 1.0)),
        ),
    ]
}

fn err_text(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn single_file_vectors_convert_every_float_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), SINGLE_FILE, &sample_tensors());
    let st = SafetensorsDir::open(tmp.path()).unwrap();
    assert_eq!(st.naming(), TensorNaming::HuggingFace);
    assert_eq!(st.tensor_names(), vec!["cube", "ids", "w16", "w32", "wbf"]);
    assert_eq!(st.vector("w32").unwrap(), values(12, 0.5));
    // values(6, 0.25) and values(4, 2.0) are exact in f16 / bf16.
    assert_eq!(st.vector("w16").unwrap(), values(6, 0.25));
    assert_eq!(st.vector("wbf").unwrap(), values(4, 2.0));
    assert_eq!(st.vector("cube").unwrap(), values(4, 1.0));
    assert!(st.contains("w32") && !st.contains("nope"));
    assert_eq!(st.shape("w16"), Some(&[2usize, 3][..]));
    assert_eq!(st.dtype_name("wbf").as_deref(), Some("BF16"));
}

#[test]
fn matrix_parts_are_zero_copy_windows_with_the_right_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = sample_tensors();
    write(tmp.path(), SINGLE_FILE, &tensors);
    let st = SafetensorsDir::open(tmp.path()).unwrap();

    let (dtype, rows, cols, data) = st.matrix_parts("w32").unwrap();
    assert_eq!((dtype, rows, cols), (DType::F32, 3, 4));
    assert!(matches!(data, Storage::Mapped { .. }));
    assert_eq!(data.bytes(), &tensors[0].3[..]);

    let (dtype, rows, cols, data) = st.matrix_parts("w16").unwrap();
    assert_eq!((dtype, rows, cols), (DType::F16, 2, 3));
    assert_eq!(data.bytes(), &tensors[1].3[..]);

    // 1-D tensors are 1 × n matrices.
    let (dtype, rows, cols, _) = st.matrix_parts("wbf").unwrap();
    assert_eq!((dtype, rows, cols), (DType::BF16, 1, 4));
}

#[test]
fn matrix_builds_a_qmatrix() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), SINGLE_FILE, &sample_tensors());
    let st = SafetensorsDir::open(tmp.path()).unwrap();
    let m = st.matrix("w32").unwrap();
    assert_eq!((m.dtype, m.rows, m.cols), (DType::F32, 3, 4));
    assert_eq!(m.to_f32(), values(12, 0.5));
    let m = st.matrix("w16").unwrap();
    assert_eq!(m.to_f32(), values(6, 0.25));
}

#[test]
fn unsupported_dtype_and_rank_name_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), SINGLE_FILE, &sample_tensors());
    let st = SafetensorsDir::open(tmp.path()).unwrap();
    let msg = err_text(st.vector("ids"));
    assert!(msg.contains("`ids`") && msg.contains("I32"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    let msg = err_text(st.matrix_parts("ids"));
    assert!(msg.contains("unsupported dtype I32"), "{msg}");
    let msg = err_text(st.matrix_parts("cube"));
    assert!(msg.contains("`cube`") && msg.contains("[1, 2, 2]"), "{msg}");
}

#[test]
fn missing_tensor_names_dir_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), SINGLE_FILE, &sample_tensors());
    let st = SafetensorsDir::open(tmp.path()).unwrap();
    let msg = err_text(st.vector("model.norm.weight"));
    assert!(msg.contains("missing tensor `model.norm.weight`"), "{msg}");
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
    assert!(st.matrix("model.norm.weight").is_err());
}

fn write_index(dir: &Path, map: &[(&str, &str)]) {
    let weight_map: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(t, f)| (t.to_string(), serde_json::Value::from(*f)))
        .collect();
    let json = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(dir.join(INDEX_FILE), json.to_string()).unwrap();
}

fn sharded(dir: &Path) -> Vec<Spec> {
    let all = sample_tensors();
    write(dir, "model-00001-of-00002.safetensors", &all[..2]);
    write(dir, "model-00002-of-00002.safetensors", &all[2..3]);
    write_index(
        dir,
        &[
            ("w32", "model-00001-of-00002.safetensors"),
            ("w16", "model-00001-of-00002.safetensors"),
            ("wbf", "model-00002-of-00002.safetensors"),
        ],
    );
    all
}

#[test]
fn sharded_directory_reads_tensors_from_every_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let all = sharded(tmp.path());
    let st = SafetensorsDir::open(tmp.path()).unwrap();
    assert_eq!(st.tensor_names(), vec!["w16", "w32", "wbf"]);
    assert_eq!(st.mapped_files().len(), 2);
    assert_eq!(st.vector("wbf").unwrap(), values(4, 2.0));
    assert_eq!(st.vector("w32").unwrap(), values(12, 0.5));
    let (_, _, _, data) = st.matrix_parts("w16").unwrap();
    assert_eq!(data.bytes(), &all[1].3[..]);
}

#[test]
fn sharded_missing_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    sharded(tmp.path());
    std::fs::remove_file(tmp.path().join("model-00002-of-00002.safetensors")).unwrap();
    let msg = err_text(SafetensorsDir::open(tmp.path()));
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn index_naming_an_absent_tensor_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    sharded(tmp.path());
    write_index(
        tmp.path(),
        &[
            ("w32", "model-00001-of-00002.safetensors"),
            ("ghost", "model-00002-of-00002.safetensors"),
        ],
    );
    let msg = err_text(SafetensorsDir::open(tmp.path()));
    assert!(msg.contains("`ghost`") && msg.contains("00002"), "{msg}");
}

#[test]
fn index_with_path_components_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    sharded(tmp.path());
    write_index(
        tmp.path(),
        &[("w32", "../model-00001-of-00002.safetensors")],
    );
    let msg = err_text(SafetensorsDir::open(tmp.path()));
    assert!(msg.contains("not a plain file name"), "{msg}");
    std::fs::write(tmp.path().join(INDEX_FILE), "{ not json").unwrap();
    let msg = err_text(SafetensorsDir::open(tmp.path()));
    assert!(msg.contains("invalid index"), "{msg}");
}

#[test]
fn empty_directory_says_what_it_looked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = err_text(SafetensorsDir::open(tmp.path()));
    assert!(
        msg.contains(SINGLE_FILE) && msg.contains(INDEX_FILE),
        "{msg}"
    );
}

#[test]
fn truncated_files_are_rejected_at_every_length() {
    let tmp = tempfile::tempdir().unwrap();
    let full = serialize(&sample_tensors());
    let path = tmp.path().join(SINGLE_FILE);
    // Every prefix, including cuts inside the length, header and data.
    for cut in 0..full.len() {
        std::fs::write(&path, &full[..cut]).unwrap();
        let msg = err_text(SafetensorsDir::open(tmp.path()));
        assert!(msg.contains(SINGLE_FILE), "cut {cut}: {msg}");
        assert!(
            msg.contains("truncated") || msg.contains("invalid safetensors header"),
            "cut {cut}: {msg}"
        );
    }
    // A cut in the data section says so plainly.
    std::fs::write(&path, &full[..full.len() - 3]).unwrap();
    let msg = err_text(SafetensorsDir::open(tmp.path()));
    assert!(msg.contains("truncated"), "{msg}");
    // Trailing garbage is an error too.
    let mut longer = full.clone();
    longer.extend_from_slice(&[0; 5]);
    std::fs::write(&path, &longer).unwrap();
    let msg = err_text(SafetensorsDir::open(tmp.path()));
    assert!(msg.contains("5 unexpected trailing bytes"), "{msg}");
}

/// Builds a file from a raw JSON header and `data_len` zero bytes of data.
fn raw_file(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

#[test]
fn corrupt_headers_are_rejected_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(SINGLE_FILE);
    let cases: &[(Vec<u8>, &str)] = &[
        // Absurd header length.
        (u64::MAX.to_le_bytes().to_vec(), "implausible"),
        // Not JSON.
        (
            raw_file("{ this is not json", 0),
            "invalid safetensors header",
        ),
        // Size does not match shape × dtype.
        (
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#,
                12,
            ),
            "invalid safetensors header",
        ),
        // Offsets with a gap.
        (
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
            ),
            "invalid safetensors header",
        ),
        // Offsets far out of the file.
        (
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#,
                16,
            ),
            "truncated",
        ),
        // Shape overflow.
        (
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,4]}}"#,
                4,
            ),
            "invalid safetensors header",
        ),
        // Unknown dtype string.
        (
            raw_file(
                r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#,
                1,
            ),
            "invalid safetensors header",
        ),
    ];
    for (bytes, want) in cases {
        std::fs::write(&path, bytes).unwrap();
        let msg = err_text(SafetensorsDir::open(tmp.path()));
        assert!(msg.contains(want), "want `{want}` in: {msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
}

#[test]
fn tensor_in_two_shards_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let all = sample_tensors();
    write(tmp.path(), "a.safetensors", &all[..1]);
    write(tmp.path(), "b.safetensors", &all[..1]);
    write_index(
        tmp.path(),
        &[("w32", "a.safetensors"), ("x", "b.safetensors")],
    );
    let msg = err_text(SafetensorsDir::open(tmp.path()));
    assert!(msg.contains("`w32` is also in"), "{msg}");
}
