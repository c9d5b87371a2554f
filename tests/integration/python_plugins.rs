//! Plugins written in Python with the SDK in `guest-sdk/python`, built by
//! `weir plugin build` (componentize-py, installed into the tests' cache on
//! first use) from `plugins/python/`, run by the real `weir` binary.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use weir_tests::{plugins, scratch, stderr, stdout, write_inputs, write_pipeline};

use crate::weir;

/// Builds `plugins/python/<name>` with `weir plugin build` (once per test
/// run) and returns the component.
fn python_plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/python");
        let names = ["split-words", "misbehave"];
        let dirs: Vec<String> = names
            .iter()
            .map(|name| root.join(name).display().to_string())
            .collect();
        let mut args = vec!["plugin", "build"];
        args.extend(dirs.iter().map(String::as_str));
        let output = weir().run(&args, Duration::from_secs(600));
        assert!(
            output.status.success(),
            "weir plugin build failed:\n{}",
            stderr(&output)
        );
        let paths: Vec<PathBuf> = stdout(&output).lines().map(PathBuf::from).collect();
        assert_eq!(paths.len(), names.len(), "one component per plugin: {paths:?}");
        names.iter().map(|n| n.to_string()).zip(paths).collect()
    });
    built
        .iter()
        .find(|(built, _)| built == name)
        .map(|(_, path)| path.clone())
        .unwrap_or_else(|| panic!("no Python plugin {name}"))
}

/// A word count over the files in `input`, one file a batch under the
/// deterministic clock (so two runs cut the same batches), with `plugin` as
/// split-words, into a `jsonl` files sink at `output`.
fn deterministic_wordcount(dir: &Path, name: &str, plugin: &Path, input: &str, output: &Path) -> PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "1s"
partitions = 3
clock = "deterministic"
start-time = 1000

[plugins]
split-words = {plugin:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}
max-files-per-batch = 1

[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "split-words"

[[stage]]
name = "counts"
input = "words"
op = "reduce-by-key"
reducer = "count"

[[sink]]
input = "counts"
type = "files"
path = {output:?}
format = "jsonl"
"#,
        plugin = plugin.display().to_string(),
        output = output.display().to_string(),
    );
    write_pipeline(dir, &format!("{name}.toml"), &text)
}

/// Every file the files sink wrote under `dir`, by relative path.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn python_and_rust_split_words_give_byte_identical_word_counts() {
    let dir = scratch();
    let text = write_inputs(dir.path(), 4, 3000, 11);
    let input = dir.path().join("in").display().to_string();
    let mut outputs = Vec::new();
    for (name, plugin) in [
        ("rust", PathBuf::from(plugins::SPLIT_WORDS)),
        ("python", python_plugin("split-words")),
    ] {
        let output = dir.path().join(format!("out-{name}"));
        let pipeline = deterministic_wordcount(dir.path(), name, &plugin, &input, &output);
        crate::run_file_ok(&pipeline);
        outputs.push(tree(&output));
    }
    let (rust, python) = (&outputs[0], &outputs[1]);
    assert_eq!(rust.len(), python.len(), "the same files");
    assert!(rust.len() >= 4 * 3, "four batches of three parts: {}", rust.len());
    // The counts are right, not only equal (the text has non-ASCII words).
    let counted: u64 = rust
        .iter()
        .flat_map(|(_, bytes)| std::str::from_utf8(bytes).unwrap().lines())
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            record["value"].as_str().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(counted, text.split_whitespace().count() as u64);
    for ((rust_name, rust_bytes), (python_name, python_bytes)) in rust.iter().zip(python) {
        assert_eq!(rust_name, python_name);
        assert!(
            rust_bytes == python_bytes,
            "{rust_name} differs between the Rust and the Python plugin"
        );
    }
}

/// Runs `plugins/python/misbehave` in `mode` over four lines, one of which
/// contains its trigger word; `limits` goes into the stage. Returns whether
/// the run succeeded and its stderr.
fn misbehaving_run(mode: &str, limits: &str) -> (bool, String) {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("a.txt"),
        "fine\nstill fine\nthis goes kaboom\nnever seen\n",
    )
    .unwrap();
    let output = dir.path().join("out");
    let plugin = python_plugin("misbehave");
    let text = format!(
        r#"
[pipeline]
name = "misbehaves"
batch-interval = "100ms"
partitions = 1

[plugins]
misbehave = {plugin:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}

[[stage]]
name = "checked"
input = "lines"
op = "map"
plugin = "misbehave"
config = {{ word = "kaboom", mode = "{mode}" }}
{limits}

[[sink]]
input = "checked"
type = "files"
path = {output:?}
"#,
        plugin = plugin.display().to_string(),
        input = input.display().to_string(),
        output = output.display().to_string(),
    );
    let pipeline = write_pipeline(dir.path(), "misbehaves.toml", &text);
    let run = weir().run(
        &["run", "--available-now", pipeline.to_str().unwrap()],
        Duration::from_secs(300),
    );
    (run.status.success(), stderr(&run))
}

#[test]
fn a_python_plugin_that_raises_fails_the_run_with_its_traceback() {
    let (succeeded, err) = misbehaving_run("raise", "");
    assert!(!succeeded, "the run must fail: {err}");
    assert!(err.contains("Traceback (most recent call last)"), "{err}");
    assert!(
        err.contains("ValueError: found 'kaboom' in 'this goes kaboom'"),
        "{err}"
    );
    assert!(
        err.contains("in pass_through"),
        "the traceback names the function: {err}"
    );
}

#[test]
fn a_python_plugin_that_loops_or_allocates_without_end_is_stopped_by_its_limits() {
    let (succeeded, err) = misbehaving_run("loop", "limits = { timeout = \"300ms\" }");
    assert!(!succeeded, "a loop must fail the run: {err}");
    assert!(err.contains("deadline exceeded"), "{err}");
    let (succeeded, err) = misbehaving_run("allocate", "limits = { memory = \"64MiB\" }");
    assert!(!succeeded, "endless allocation must fail the run: {err}");
    assert!(err.contains("memory limit"), "{err}");
}
