//! The command line: help, check, plugin inspect / build, new plugin.

use std::path::Path;

use weir_tests::{plugins, scratch, stderr, stdout, write_pipeline};

use super::{LIMIT, weir, wordcount_pipeline};

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["check", "--help"],
        vec!["plugin", "--help"],
        vec!["plugin", "build", "--help"],
        vec!["plugin", "inspect", "--help"],
        vec!["new", "plugin", "--help"],
        vec!["demo", "--help"],
        vec!["bench", "--help"],
    ] {
        let output = weir().run(&args, LIMIT);
        assert!(output.status.success(), "weir {args:?}: {}", stderr(&output));
        assert!(
            stdout(&output).contains("Usage"),
            "weir {args:?}: {}",
            stdout(&output)
        );
    }
}

#[test]
fn check_accepts_a_valid_pipeline_and_validates_its_plugins() {
    let dir = scratch();
    let file = write_pipeline(
        dir.path(),
        "ok.toml",
        &wordcount_pipeline(
            "type = \"socket\"\naddress = \"127.0.0.1:9\"",
            &dir.path().join("out"),
            2,
        ),
    );
    let output = weir().run(&["check", file.to_str().unwrap()], LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("ok — pipeline `wordcount`"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn inspect_shows_kind_exports_and_imports() {
    let output = weir().run(&["plugin", "inspect", plugins::SPLIT_WORDS], LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = stdout(&output);
    assert!(report.contains("kind:    flat-map"), "{report}");
    assert!(report.contains("weir:plugin/transform@0.2.0"), "{report}");
    assert!(report.contains("wit:     weir:plugin@0.2.0"), "{report}");
    // A component built by the SDK of weir:plugin@0.1.0 still loads.
    let output = weir().run(
        &["plugin", "inspect", weir_tests::fixtures::SDK_0_1_RUNNING_TOTAL],
        LIMIT,
    );
    let report = stdout(&output);
    assert!(report.contains("wit:     weir:plugin@0.1.0"), "{report}");
    assert!(
        report.contains("state:   version 1, no state-migration"),
        "{report}"
    );
    let output = weir().run(&["plugin", "inspect", plugins::RUNNING_TOTAL_V2], LIMIT);
    let report = stdout(&output);
    assert!(
        report.contains("state:   version 2, converts earlier ones (state-migration)"),
        "{report}"
    );
    assert!(
        report.contains("imports:") && report.contains("wasi:cli/stderr@0.2"),
        "{report}"
    );
    let output = weir().run(&["plugin", "inspect", plugins::SUM], LIMIT);
    assert!(
        stdout(&output).contains("kind:    reducer"),
        "{}",
        stdout(&output)
    );
    let output = weir().run(&["plugin", "inspect", "/nonexistent.wasm"], LIMIT);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("cannot read /nonexistent.wasm"),
        "{}",
        stderr(&output)
    );
}

/// The wasm target dir the test plugins were built in: reusing it makes the
/// scaffolded crate's build take seconds instead of minutes.
fn plugin_target_dir() -> &'static Path {
    Path::new(plugins::SPLIT_WORDS)
        .ancestors()
        .nth(3)
        .expect("<target>/wasm32-wasip2/release/x.wasm")
}

/// Runs the scaffolded `map` at `component` over two lines in `dir`: it
/// upper-cases them.
fn assert_upper_cases(dir: &Path, component: &str) {
    let input = dir.join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a.txt"), "hello\nweir\n").unwrap();
    let out = dir.join("out");
    let pipeline = format!(
        r#"
[pipeline]
name = "shout"
partitions = 1
[plugins]
shout = {component:?}
[[source]]
name = "lines"
type = "files"
path = {input:?}
[[stage]]
name = "loud"
input = "lines"
op = "map"
plugin = "shout"
[[sink]]
input = "loud"
type = "files"
path = {out:?}
"#,
        input = input.display().to_string(),
        out = out.display().to_string()
    );
    let file = write_pipeline(dir, "p.toml", &pipeline);
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<String> = weir_tests::sink_lines(&out).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, ["HELLO", "WEIR"]);
}

#[test]
fn new_plugin_scaffolds_a_crate_that_builds_and_runs() {
    let dir = scratch();
    let crate_dir = dir.path().join("shout");
    let output = weir().run(
        &[
            "new",
            "plugin",
            "shout",
            "--kind",
            "map",
            "--dir",
            crate_dir.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    // Outside the Weir workspace the crate depends on the SDK the binary
    // carries, unpacked into the cache, not on this checkout.
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    assert!(manifest.contains("/rust-sdk-"), "{manifest}");
    assert!(
        !manifest.contains(&format!("{}/guest-sdk", checkout.display())),
        "{manifest}"
    );
    // A path relative to the working directory, as in the README.
    let output = weir()
        .command(&["plugin", "build", "shout"])
        .current_dir(dir.path())
        .env("CARGO_TARGET_DIR", plugin_target_dir())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let component = stdout(&output).trim().to_owned();
    assert!(component.ends_with("shout.wasm"), "{component}");

    assert_upper_cases(dir.path(), &component);
}

#[test]
fn new_plugin_scaffolds_python_and_javascript_plugins_that_build_and_run_outside_the_checkout() {
    for lang in ["python", "js"] {
        scaffolded_script_plugin_builds_and_runs(lang);
    }
}

/// `weir new plugin shout --lang LANG --kind map` in a directory outside the
/// checkout, built there, inspected and run.
fn scaffolded_script_plugin_builds_and_runs(lang: &str) {
    let dir = scratch();
    let output = weir()
        .command(&["new", "plugin", "shout", "--lang", lang, "--kind", "map"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("weir plugin build shout"),
        "{}",
        stdout(&output)
    );
    let output = weir()
        .command(&["plugin", "build", "shout"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let component = stdout(&output).trim().to_owned();
    assert!(component.ends_with("shout.wasm"), "{component}");
    let output = weir().run(&["plugin", "inspect", &component], LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    let inspected = stdout(&output);
    assert!(
        inspected.contains("plugin:  shout 0.1.0") && inspected.contains("kind:    map"),
        "{lang}: {inspected}"
    );

    assert_upper_cases(dir.path(), &component);
}

#[test]
fn new_plugin_scaffolds_a_sink_that_builds_and_posts_each_partition() {
    let dir = scratch();
    let crate_dir = dir.path().join("poster");
    let output = weir().run(
        &[
            "new",
            "plugin",
            "poster",
            "--kind",
            "sink",
            "--dir",
            crate_dir.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let output = weir()
        .command(&["plugin", "build", crate_dir.to_str().unwrap()])
        .env("CARGO_TARGET_DIR", plugin_target_dir())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let component = stdout(&output).trim().to_owned();

    let receiver = weir_tests::http::HttpReceiver::start(weir_tests::http::Behaviour::Accept);
    let text = weir_tests::write_inputs(dir.path(), 2, 10, 1);
    let source = format!(
        "type = \"files\"\npath = {:?}",
        dir.path().join("in").display().to_string()
    );
    let sink = format!(
        "[[sink]]\ninput = \"counts\"\ntype = \"plugin\"\nplugin = \"poster\"\nconfig = {{ url = {:?} }}\nallow-http = {:?}\n",
        receiver.url(),
        receiver.address()
    );
    let pipeline = weir_tests::wordcount_with_plugins(
        dir.path(),
        "poster",
        false,
        "",
        &[("poster", &component)],
        &source,
        &sink,
    );
    let file = write_pipeline(dir.path(), "p.toml", &pipeline);
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    let mut counts = std::collections::BTreeMap::new();
    for request in receiver.received() {
        assert!(request.key.starts_with("poster/plugin-counts/"), "{request:?}");
        for line in request.body.lines() {
            let (word, count) = line.split_once('\t').unwrap();
            *counts.entry(word.to_owned()).or_insert(0) += count.parse::<u64>().unwrap();
        }
    }
    assert_eq!(counts, weir_tests::word_counts(&text));
}

#[test]
fn new_plugin_refuses_bad_names_and_kinds() {
    let dir = scratch();
    let output = weir().run(
        &[
            "new",
            "plugin",
            "9lives",
            "--dir",
            dir.path().join("x").to_str().unwrap(),
        ],
        LIMIT,
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("invalid plugin name"),
        "{}",
        stderr(&output)
    );
    let output = weir().run(
        &[
            "new",
            "plugin",
            "ok",
            "--kind",
            "zip",
            "--dir",
            dir.path().join("y").to_str().unwrap(),
        ],
        LIMIT,
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("unknown kind `zip`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn compiled_components_are_cached_on_disk_and_reused() {
    let dir = scratch();
    let cache = dir.path().join("cache");
    let pipeline = write_pipeline(
        dir.path(),
        "p.toml",
        &wordcount_pipeline("type = \"generator\"\nlines = 1", &dir.path().join("out"), 1),
    );
    let check = |cache: &Path| {
        let output = weir()
            .command(&["check", pipeline.to_str().unwrap()])
            .env("WEIR_CACHE_DIR", cache)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    };
    check(&cache);
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0].extension().is_some_and(|e| e == "cwasm"),
        "{entries:?}"
    );
    use std::os::unix::fs::MetadataExt;
    let written = std::fs::metadata(&entries[0]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // The second start loads the entry instead of compiling and rewriting it
    // (a rewrite is a new file renamed into place), and marks it used.
    check(&cache);
    let loaded = std::fs::metadata(&entries[0]).unwrap();
    assert_eq!(loaded.ino(), written.ino(), "the entry was rewritten");
    assert!(
        loaded.modified().unwrap() > written.modified().unwrap(),
        "the load marks it used"
    );
}

/// The threads of process `pid`, by name.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[test]
fn twenty_pipelines_in_one_process_share_one_worker_pool() {
    let dir = scratch();
    for i in 0..20 {
        let text = wordcount_pipeline(
            "type = \"generator\"\nrate = 2000",
            &dir.path().join(format!("out-{i}")),
            4,
        )
        .replace("name = \"wordcount\"", &format!("name = \"wordcount-{i}\""));
        write_pipeline(dir.path(), &format!("p{i:02}.toml"), &text);
    }
    let mut child = weir().spawn(&["run", dir.path().to_str().unwrap()]);
    // Every pipeline has completed batches once each output has one.
    let started = std::time::Instant::now();
    while (0..20).any(|i| weir_tests::sink_lines(&dir.path().join(format!("out-{i}"))).is_empty()) {
        assert!(started.elapsed() < LIMIT, "not every pipeline produced output");
        assert!(child.try_wait().unwrap().is_none(), "weir exited early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let names = thread_names(child.id());
    weir_tests::terminate(&child);
    let output = weir_tests::wait_output(child, LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    let count = |prefix: &str| names.iter().filter(|name| name.starts_with(prefix)).count();
    let cores = std::thread::available_parallelism().unwrap().get();
    // 20 pipelines of 4 partitions each: still one pool of one thread per core.
    assert_eq!(count("weir-worker"), cores, "{names:?}");
    assert_eq!(count("weir-pipeline"), 20, "one driver per pipeline: {names:?}");
    assert!(
        names.len() <= cores + 20 + 12,
        "{} threads: {names:?}",
        names.len()
    );
    let log = stderr(&output);
    assert_eq!(log.matches("stopped gracefully").count(), 20, "{log}");
}

#[test]
fn the_guest_sdk_crates_package_for_publishing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = root.join("target/package-check");
    // The WIT package travels inside weir-guest; the Python SDK does not.
    let listed = std::process::Command::new(&cargo)
        .args(["package", "--list", "--allow-dirty", "-p", "weir-guest"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", stderr(&listed));
    let files = stdout(&listed);
    assert!(files.lines().any(|f| f == "wit/worlds.wit"), "{files}");
    assert!(!files.contains("python/"), "{files}");
    // All three build from their packages, against each other's.
    let packaged = std::process::Command::new(&cargo)
        .args([
            "package",
            "--allow-dirty",
            "-p",
            "weir-abi",
            "-p",
            "weir-guest-macros",
            "-p",
            "weir-guest",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(packaged.status.success(), "{}", stderr(&packaged));
    for name in ["weir-abi", "weir-guest-macros", "weir-guest"] {
        let crate_file = target
            .join("package")
            .join(format!("{name}-{}.crate", env!("CARGO_PKG_VERSION")));
        assert!(crate_file.is_file(), "{}", crate_file.display());
    }
}
