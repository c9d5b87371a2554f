//! Keyed state checkpointed incrementally: a running total per key over a
//! few thousand keys, most of them spilled to disk, with a timeout that
//! removes idle keys, checkpointed every two batches as parts of changes and
//! compacted every few checkpoints — killed with SIGKILL at every crash point
//! (compaction included) and at random moments, resumed each time, and
//! compared with a reference computed here. Also: a checkpoint written by
//! the previous format (keyed state as one snapshot) still restores.

use std::collections::BTreeMap;
use std::path::Path;

use weir::checkpoint::codec::Encoder;
use weir::checkpoint::incremental::{Merge, PartReader};
use weir::checkpoint::{Manifest, StateFile};
use weir_tests::{plugins, scratch, sink_lines, write_pipeline};

use super::recovery::{Rng, run_with_crashes};
use super::run_file_ok;

/// Keys idle this many batches (of 1 s) time out.
const TIMEOUT_BATCHES: usize = 20;

/// `batches` batches of `per_batch` `(key, value)` pairs: key `key-N` drawn
/// from a key space that grows by 30 keys a batch, so that old keys come
/// back rarely and many time out.
fn keyed_input(batches: usize, per_batch: usize) -> Vec<Vec<(String, i64)>> {
    let mut state = 0x005e_ed0f_1ace_u64;
    (0..batches)
        .map(|batch| {
            (0..per_batch)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let key = format!("key-{}", (state >> 33) % (300 + 30 * batch as u64));
                    (key, ((state >> 20) % 100) as i64 - 40)
                })
                .collect()
        })
        .collect()
}

/// Writes batch `k`'s pairs as JSON lines to `dir/bNNN.txt`, from `first`.
fn write_batches(dir: &Path, batches: &[Vec<(String, i64)>], first: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (k, batch) in batches.iter().enumerate().skip(first) {
        let text: String = batch
            .iter()
            .map(|(key, value)| format!("{{\"k\":\"{key}\",\"v\":{value}}}\n"))
            .collect();
        std::fs::write(dir.join(format!("b{k:03}.txt")), text).unwrap();
    }
}

/// The running totals the pipeline must write, batch by batch: every key
/// of a batch with its new total; a key without values for
/// [`TIMEOUT_BATCHES`] batches is forgotten (its total starts again).
fn reference(batches: &[Vec<(String, i64)>]) -> BTreeMap<u64, Vec<String>> {
    let mut totals: BTreeMap<&str, (i64, usize)> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (k, batch) in batches.iter().enumerate() {
        let mut touched: BTreeMap<&str, i64> = BTreeMap::new();
        for (key, value) in batch {
            *touched.entry(key).or_default() += value;
        }
        for (key, sum) in &touched {
            let entry = totals.entry(key).or_insert((0, k));
            *entry = (entry.0 + sum, k);
        }
        totals.retain(|key, (_, last)| touched.contains_key(key) || k - *last < TIMEOUT_BATCHES);
        let mut lines: Vec<String> = touched
            .keys()
            .map(|key| format!("{key}\t{}", totals[key].0))
            .collect();
        lines.sort();
        out.insert(k as u64, lines);
    }
    out
}

fn output_by_batch(dir: &Path) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (batch, line) in sink_lines(&dir.join("out")) {
        out.entry(batch).or_default().push(line);
    }
    for lines in out.values_mut() {
        lines.sort();
    }
    out
}

fn pipeline(dir: &Path, input: &Path, name: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "1s"
partitions = 2
clock = "deterministic"
checkpoint-dir = {checkpoints:?}

[checkpoint]
every-batches = 2
keep = 2
full-every = 4

[plugins]
key-by = {key_by:?}
running-total = {total:?}

[[source]]
name = "raw"
type = "files"
path = {input:?}
max-files-per-batch = 1

[[stage]]
name = "numbers"
input = "raw"
op = "map"
plugin = "key-by"
config = {{ field = "k", value-field = "v" }}

[[stage]]
name = "out"
input = "numbers"
op = "update-state-by-key"
plugin = "running-total"
state-memory = "256KiB"
partitions = 2
timeout = "{TIMEOUT_BATCHES}s"

[[sink]]
input = "out"
type = "files"
path = {out:?}
"#,
        checkpoints = dir.join("checkpoints").display().to_string(),
        key_by = plugins::JSON_KEY_BY,
        total = plugins::RUNNING_TOTAL,
        input = input.display().to_string(),
        out = dir.join("out").display().to_string(),
    );
    write_pipeline(dir, &format!("{name}.toml"), &text)
}

/// The manifests of the checkpoints kept under `dir/checkpoints`.
fn kept_manifests(dir: &Path) -> Vec<Manifest> {
    let root = dir.join("checkpoints").join("checkpoints");
    let mut kept: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    kept.sort();
    kept.iter()
        .map(|checkpoint| {
            serde_json::from_slice(&std::fs::read(checkpoint.join("manifest.json")).unwrap()).unwrap()
        })
        .collect()
}

/// The keyed state in `dir`'s newest checkpoint.
fn keyed_state(dir: &Path) -> (u64, StateFile) {
    let manifest = kept_manifests(dir).pop().unwrap();
    let state = manifest
        .states
        .into_iter()
        .find(|state| state.operator == "out#0")
        .unwrap();
    (manifest.batch, state)
}

#[test]
fn keyed_state_checkpointed_incrementally_survives_kills_exactly() {
    let root = scratch();
    let input = root.path().join("in");
    let batches = keyed_input(80, 60);
    write_batches(&input, &batches, 0);
    let dir = root.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let file = pipeline(&dir, &input, "incremental");
    let mut rng = Rng(0x1ac4_e3e7_a1d0_0001);
    let mut points = Vec::new();
    for round in 0..3 {
        points.push(format!("batch-logged:{}", 2 + rng.below(4)));
        points.push(format!("sink-commit:{}", 1 + rng.below(4)));
        points.push(format!("checkpoint-state:{}", 1 + round % 2));
        // Compaction runs on every fourth checkpoint: the first reached
        // after a restart comes within four.
        points.push(format!("checkpoint-compacted:{}", 1 + rng.below(2)));
        points.push(format!("checkpoint-done:{}", 1 + rng.below(2)));
    }
    let crashes = run_with_crashes(&file, &points, 6, rng.below(u64::MAX));
    for point in [
        "batch-logged",
        "sink-commit",
        "checkpoint-state",
        "checkpoint-compacted",
        "checkpoint-done",
    ] {
        assert!(
            crashes.at_points.get(point).is_some_and(|n| *n > 0),
            "never killed at {point}: {crashes:?}"
        );
    }
    let expected = reference(&batches);
    let got = output_by_batch(&dir);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "batches missing or repeated after {} kills",
        crashes.kills
    );
    for (batch, lines) in &expected {
        assert_eq!(
            &got[batch], lines,
            "batch {batch} differs after {} kills",
            crashes.kills
        );
    }
    // The checkpoints were incremental: the kept ones list chains whose
    // parts of changes are much smaller than their full part, and only the
    // parts they list are left on disk.
    let manifests = kept_manifests(&dir);
    let chains: Vec<&Vec<weir::checkpoint::StatePart>> = manifests
        .iter()
        .flat_map(|m| m.states.iter().map(|s| &s.parts))
        .collect();
    assert!(chains.iter().any(|chain| chain.len() > 1), "{chains:?}");
    for chain in &chains {
        assert!(chain[0].full, "{chain:?}");
        for part in &chain[1..] {
            assert!(!part.full && part.bytes * 2 < chain[0].bytes, "{chain:?}");
        }
    }
    let mut listed: Vec<String> = chains
        .iter()
        .flat_map(|chain| chain.iter().map(|part| part.file.clone()))
        .collect();
    listed.sort();
    listed.dedup();
    let mut on_disk: Vec<String> = std::fs::read_dir(dir.join("checkpoints").join("incremental"))
        .unwrap()
        .map(|e| format!("incremental/{}", e.unwrap().file_name().to_str().unwrap()))
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn keyed_state_written_whole_by_the_previous_format_still_restores() {
    let root = scratch();
    let input = root.path().join("in");
    let batches = keyed_input(24, 60);
    write_batches(&input, &batches[..12], 0);
    let dir = root.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let file = pipeline(&dir, &input, "format-1");
    run_file_ok(&file);

    // Rewrite the newest checkpoint as format 1 wrote it: the keyed state as
    // one snapshot (per partition a count, then key, state and last_seen of
    // each entry) in the checkpoint's own directory, no incremental parts.
    let (batch, state) = keyed_state(&dir);
    assert_eq!(batch, 11);
    let checkpoints = dir.join("checkpoints");
    let readers = state
        .parts
        .iter()
        .map(|part| PartReader::new(std::fs::File::open(checkpoints.join(&part.file)).unwrap()).unwrap())
        .collect();
    let mut merge = Merge::new(readers).unwrap();
    let mut snapshot = Encoder::new();
    snapshot.u64(merge.partitions() as u64);
    while merge.next_partition().unwrap().is_some() {
        let mut entries = Vec::new();
        while let Some(entry) = merge.next_entry().unwrap() {
            entries.push(entry);
        }
        snapshot.u64(entries.len() as u64);
        for (key, value) in entries {
            let (last_seen, total) = value.split_at(8);
            snapshot.bytes(&key);
            snapshot.bytes(total);
            snapshot.i64(i64::from_le_bytes(last_seen.try_into().unwrap()));
        }
    }
    let snapshot = snapshot.finish();
    let checkpoint = checkpoints.join("checkpoints").join(format!("{batch:020}"));
    std::fs::write(checkpoint.join("state-0000.bin"), &snapshot).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoint.join("manifest.json")).unwrap()).unwrap();
    manifest["version"] = 1.into();
    manifest["states"] = serde_json::json!([{
        "operator": "out#0",
        "file": "state-0000.bin",
        "bytes": snapshot.len(),
        "sha256": weir::runtime::content_hash(&snapshot),
    }]);
    std::fs::write(
        checkpoint.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    for other in kept_manifests(&dir).iter().filter(|m| m.batch != batch) {
        std::fs::remove_dir_all(
            checkpoints
                .join("checkpoints")
                .join(format!("{:020}", other.batch)),
        )
        .unwrap();
    }
    std::fs::remove_dir_all(checkpoints.join("incremental")).unwrap();

    // Resume with the rest of the input: the totals go on exactly, and the
    // first checkpoint after the old one starts a new chain with a full part.
    write_batches(&input, &batches, 12);
    let log = run_file_ok(&file);
    assert!(log.contains("resumed after the checkpoint of batch 11"), "{log}");
    assert_eq!(output_by_batch(&dir), reference(&batches));
    let (batch, state) = keyed_state(&dir);
    assert_eq!(batch, 23);
    assert!(state.parts.first().is_some_and(|part| part.full), "{state:?}");
}
