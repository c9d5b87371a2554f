//! The end-to-end word count: the real `weir run --available-now` binary in
//! a child process, as a user runs it, over a directory of text files →
//! `split-words` (Wasm) → reduce-by-key count → a `jsonl` files sink. Timed
//! from spawn to exit (process start, plugin load and the sink's writes and
//! syncs included), its peak resident memory and CPU time as the OS reports
//! them (`wait4`), its output read back and added up.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, anyhow};

use super::bench::wordcount_toml_into;
use super::process::{ChildUsage, wait_measured};

/// What one end-to-end run measured.
#[derive(Debug, Clone, Copy)]
pub struct EndToEndRun {
    /// The child's time, CPU time and peak memory.
    pub usage: ChildUsage,
    /// The counts of its output, added up.
    pub counted: u64,
    /// Records of its output (word, count per batch).
    pub records: u64,
    /// Batch directories it wrote.
    pub batches: u64,
}

/// Runs the word count over the files in `input` with `weir` (the binary)
/// on `partitions` partitions and worker threads, the `split-words`
/// component at `plugin`; its pipeline file and output go under `dir`
/// (emptied first; the output is removed once read).
pub fn wordcount(
    weir: &Path,
    input: &Path,
    plugin: &Path,
    partitions: usize,
    dir: &Path,
) -> anyhow::Result<EndToEndRun> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let output = dir.join("out");
    let pipeline = dir.join("wordcount.toml");
    let text = wordcount_toml_into(
        "bench-e2e",
        "1s",
        partitions,
        plugin,
        &format!("type = \"files\"\npath = {:?}", input.display().to_string()),
        &format!(
            "type = \"files\"\npath = {:?}\nformat = \"jsonl\"",
            output.display().to_string()
        ),
    );
    std::fs::write(&pipeline, text).with_context(|| format!("cannot write {}", pipeline.display()))?;
    let log = dir.join("stderr.log");
    let stderr = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let started = Instant::now();
    let child = Command::new(weir)
        .args(["run", "--available-now", "--workers"])
        .arg(partitions.to_string())
        .arg(&pipeline)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start {}", weir.display()))?;
    let usage = wait_measured(child, started).context("cannot wait for the end-to-end run")?;
    if usage.exit_code != Some(0) {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        return Err(anyhow!(
            "`weir run` failed ({}):\n{}",
            usage
                .exit_code
                .map_or("killed by a signal".to_owned(), |code| format!(
                    "exit status {code}"
                )),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let (counted, records, batches) = add_up(&output)?;
    let _ = std::fs::remove_dir_all(&output);
    Ok(EndToEndRun {
        usage,
        counted,
        records,
        batches,
    })
}

/// Adds up the `value`s of every `jsonl` record under the files sink's
/// `output`: (their total, records, batch directories).
fn add_up(output: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let (mut total, mut records, mut batches) = (0u64, 0u64, 0u64);
    let list = |dir: &Path| -> anyhow::Result<Vec<std::path::PathBuf>> {
        let mut paths = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()?;
        // Hidden names are the sink's temporary files.
        paths.retain(|path| {
            !path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        });
        paths.sort();
        Ok(paths)
    };
    if !output.exists() {
        return Ok((0, 0, 0));
    }
    for batch in list(output)? {
        if !batch.is_dir() {
            continue;
        }
        batches += 1;
        for file in list(&batch)? {
            let text = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            for line in text.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
                let record: serde_json::Value = serde_json::from_slice(line)
                    .with_context(|| format!("not JSON in {}", file.display()))?;
                let count = record
                    .get("value")
                    .and_then(|value| value.as_str())
                    .and_then(|value| value.parse::<u64>().ok())
                    .ok_or_else(|| anyhow!("not a count in {}: {record}", file.display()))?;
                total += count;
                records += 1;
            }
        }
    }
    Ok((total, records, batches))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_sink_output_is_added_up() {
        let dir = tempfile::tempdir().unwrap();
        let batch = dir.path().join("batch-000000000000");
        std::fs::create_dir_all(&batch).unwrap();
        std::fs::write(
            batch.join("part-0.txt"),
            "{\"key\":\"a\",\"value\":\"3\",\"timestamp\":1}\n{\"key\":\"b\",\"value\":\"4\",\"timestamp\":1}\n",
        )
        .unwrap();
        std::fs::write(batch.join("part-1.txt"), "").unwrap();
        assert_eq!(add_up(dir.path()).unwrap(), (7, 2, 1));
        std::fs::write(batch.join("part-1.txt"), "{\"key\":\"c\",\"value\":\"x\"}\n").unwrap();
        assert!(
            add_up(dir.path()).is_err(),
            "a value that is no count is an error"
        );
    }
}
