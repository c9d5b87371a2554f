//! The example pipelines of `host/pipelines/` that run under the
//! deterministic clock, run as the README shows them and compared with
//! golden outputs in `tests/golden/` (their plugin paths pointed at the
//! components the test build made). `WEIR_BLESS=1` rewrites the golden files.

use std::path::{Path, PathBuf};

use weir_tests::{scratch, stderr, stdout, write_pipeline};

use super::{LIMIT, weir};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The example's text with plugin paths pointing at the test build's
/// components and data paths made absolute.
pub(super) fn runnable(example: &str) -> String {
    let pipelines = repository().join("host").join("pipelines");
    let text = std::fs::read_to_string(pipelines.join(example)).unwrap();
    let components = Path::new(weir_tests::plugins::SPLIT_WORDS).parent().unwrap();
    text.replace(
        "\"../../target/wasm32-wasip2/release/",
        &format!("\"{}/", components.display()),
    )
    .replace("\"data/", &format!("\"{}/data/", pipelines.display()))
}

#[test]
fn the_deterministic_example_pipelines_print_their_golden_output() {
    let dir = scratch();
    let golden_dir = repository().join("tests").join("golden");
    for example in [
        "windowed-wordcount",
        "event-time",
        "sessions",
        "running-totals",
        "enrichment",
    ] {
        let file = write_pipeline(
            dir.path(),
            &format!("{example}.toml"),
            &runnable(&format!("{example}.toml")),
        );
        let output = weir().run(&["run", file.to_str().unwrap(), "--available-now"], LIMIT);
        assert!(output.status.success(), "{example}: {}", stderr(&output));
        let golden = golden_dir.join(format!("{example}.txt"));
        if std::env::var_os("WEIR_BLESS").is_some() {
            std::fs::create_dir_all(&golden_dir).unwrap();
            std::fs::write(&golden, stdout(&output)).unwrap();
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (run with WEIR_BLESS=1 to create it)", golden.display()));
        assert_eq!(
            stdout(&output),
            expected,
            "{example}: output differs from {}",
            golden.display()
        );
    }
}

#[test]
fn every_example_pipeline_passes_weir_check() {
    let dir = scratch();
    let pipelines = repository().join("host").join("pipelines");
    let mut examples: Vec<String> = std::fs::read_dir(&pipelines)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 7, "{examples:?}");
    for example in examples {
        let file = write_pipeline(dir.path(), &example, &runnable(&example));
        let output = weir().run(&["check", file.to_str().unwrap()], LIMIT);
        assert!(output.status.success(), "{example}: {}", stderr(&output));
    }
}
