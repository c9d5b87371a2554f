//! Hot-load: a stage's plugin replaced while its pipeline runs, with real
//! sockets fed continuously, real plugins built from `plugins/`, the real
//! files sink, and (for crashes) the real `weir` binary killed at the
//! cut-over's crash points.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weir::engine::{Engine, EngineOptions, PipelineHandle, SwapRequest};
use weir::pipeline::{
    ControlError, PipelineEvent, PipelineState, RollbackRule, Rollout, RunOptions, ShadowRule, StopMode,
    VersionOutcome,
};
use weir_tests::{component_cache, free_port, plugins, scratch, sink_lines};

use super::{LIMIT, weir};

/// Longest any wait in these tests may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

fn engine() -> Engine {
    Engine::new(EngineOptions {
        cache_dir: Some(component_cache()),
        workers: Some(2),
        ..EngineOptions::default()
    })
    .expect("the engine starts")
}

/// Prepares and starts the pipeline in `text`.
fn start(engine: &Engine, text: &str) -> PipelineHandle {
    let prepared = engine
        .prepare(text, Path::new("hotload.toml"))
        .expect("the pipeline is valid");
    engine
        .start(prepared, RunOptions::default())
        .expect("the pipeline starts")
}

/// Waits until `done` holds, failing the test after [`PATIENCE`].
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The stage of split-words over the socket's lines.
const WORDS_STAGE: &str = r#"
[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "split-words"
"#;

/// After the words: each word's value becomes 1 (`one`), then its running
/// total (`running-total`), by key.
const TOTALS_STAGES: &str = r#"
[[stage]]
name = "ones"
input = "words"
op = "map"
plugin = "one"

[[stage]]
name = "totals"
input = "ones"
op = "update-state-by-key"
plugin = "running-total"
partitions = 2
"#;

/// A socket source listening on `port` → `stages` → files sink in `out`
/// reading the stream `last`.
fn socket_pipeline(name: &str, port: u16, out: &Path, plugins: &str, stages: &str, last: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "50ms"
partitions = 2

[plugins]
{plugins}

[[source]]
name = "lines"
type = "socket"
mode = "listen"
address = "127.0.0.1:{port}"

{stages}

[[sink]]
input = "{last}"
type = "files"
path = {out:?}
"#,
        out = out.display().to_string(),
    )
}

/// Writes `w<from>` .. `w<to - 1>`, one per line, to a connection to the
/// pipeline's socket, a few lines every millisecond, until `to` or `stop`;
/// returns how many it wrote.
struct Feeder {
    connection: std::net::TcpStream,
    next: u64,
}

impl Feeder {
    fn connect(port: u16) -> Self {
        let started = Instant::now();
        loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(connection) => return Self { connection, next: 1 },
                Err(_) if started.elapsed() < PATIENCE => std::thread::sleep(Duration::from_millis(10)),
                Err(error) => panic!("cannot connect to the pipeline's socket: {error}"),
            }
        }
    }

    /// Feeds lines up to `w<to - 1>` at about `per_ms` lines a millisecond.
    fn feed_until(&mut self, to: u64, per_ms: u64) {
        while self.next < to {
            let end = (self.next + per_ms).min(to);
            let text: String = (self.next..end).map(|i| format!("w{i}\n")).collect();
            self.connection.write_all(text.as_bytes()).unwrap();
            self.next = end;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Feeds `feeder` on a thread until `stop`; returns the last line number + 1.
fn feed_continuously(
    mut feeder: Feeder,
    stop: Arc<AtomicBool>,
    fed: Arc<AtomicU64>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let to = feeder.next + 10;
            feeder.feed_until(to, 10);
            fed.store(feeder.next, Ordering::Relaxed);
        }
        feeder.next
    })
}

fn swap(
    handle: &PipelineHandle,
    stage: &str,
    component: &str,
    config: Option<Vec<(&str, &str)>>,
    rule: RollbackRule,
) -> Result<weir::pipeline::SwapReport, ControlError> {
    swap_in(handle, stage, component, config, rule, Rollout::Immediate)
}

fn swap_in(
    handle: &PipelineHandle,
    stage: &str,
    component: &str,
    config: Option<Vec<(&str, &str)>>,
    rule: RollbackRule,
    mode: Rollout,
) -> Result<weir::pipeline::SwapReport, ControlError> {
    handle.swap(SwapRequest {
        mode,
        stage: stage.into(),
        plugin: None,
        component: std::fs::read(component).unwrap(),
        path: component.into(),
        config: config.map(|pairs| {
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        }),
        rule,
        by: Some("the test".into()),
    })
}

/// Stops `handle` once it has taken in `lines` records, and waits for its end.
fn drain_and_stop(handle: &PipelineHandle, lines: u64) {
    wait_for(&format!("{lines} lines in"), || {
        handle.metrics().records_in >= lines
    });
    handle.stop(StopMode::Graceful);
    handle.wait().expect("the pipeline ends without error");
}

#[test]
fn a_socket_word_count_swaps_split_words_mid_stream_and_counts_every_line_once() {
    let engine = engine();
    let dir = scratch();
    let out = dir.path().join("out");
    let port = free_port();
    let text = socket_pipeline(
        "hot-words",
        port,
        &out,
        &format!("split-words = {:?}", plugins::SPLIT_WORDS),
        &format!(
            "{WORDS_STAGE}\n{}",
            r#"
[[stage]]
name = "counts"
input = "words"
op = "reduce-by-key"
reducer = "count"
"#
        ),
        "counts",
    );
    let handle = start(&engine, &text);
    let mut events = handle.subscribe();
    let feeder = Feeder::connect(port);
    let (stop, fed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let feeding = feed_continuously(feeder, stop.clone(), fed.clone());

    wait_for("five batches with input", || {
        handle.metrics().records_in > 500 && handle.metrics().batches >= 5
    });
    let before = handle
        .status()
        .plugins
        .iter()
        .find(|p| p.stage == "words")
        .unwrap()
        .sha256
        .clone();
    let rule = RollbackRule {
        batches: 3,
        max_failures: 0,
    };
    let report = swap(&handle, "words", plugins::SPLIT_WORDS_TAGGED, None, rule)
        .expect("the tagged split-words is hot-loaded");
    assert_eq!(report.from, before);
    assert_ne!(report.to, before);
    assert!(report.sample_records > 0, "the dry run had a sample: {report:?}");
    let cut = report.after_batch.expect("batches ran before the swap");
    wait_for("five batches after the swap", || {
        handle.status().last_batch.is_some_and(|b| b.id >= cut + 5)
    });
    stop.store(true, Ordering::Relaxed);
    let lines = feeding.join().unwrap();
    drain_and_stop(&handle, lines - 1);

    // Every line counted exactly once, by v1 up to the cut and by v2 after.
    let mut seen: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
    for (batch, line) in sink_lines(&out) {
        let (word, count) = line.split_once('\t').unwrap();
        assert_eq!(count, "1", "{line}");
        let (tagged, word) = match word.strip_prefix("v2:") {
            Some(word) => (true, word),
            None => (false, word),
        };
        assert_eq!(
            tagged,
            batch > cut,
            "batch {batch} (cut after {cut}) processed `{line}` by the wrong version"
        );
        let number: u64 = word.strip_prefix('w').unwrap().parse().unwrap();
        assert!(
            seen.insert(number, (batch, tagged)).is_none(),
            "w{number} counted twice"
        );
    }
    assert_eq!(seen.len() as u64, lines - 1, "every line counted");
    assert_eq!(seen.keys().next(), Some(&1));
    assert!(seen.values().any(|(_, tagged)| *tagged) && seen.values().any(|(_, tagged)| !tagged));

    let words = handle
        .status()
        .plugins
        .into_iter()
        .find(|p| p.stage == "words")
        .unwrap();
    assert_eq!(words.sha256, report.to);
    assert_eq!(words.version, "0.2.0");
    let history = &handle.plugin_history()["words/split-words"];
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0].sha256, report.from);
    assert_eq!(history[0].outcome, VersionOutcome::Replaced);
    assert_eq!(history[1].sha256, report.to);
    assert_eq!(history[1].by.as_deref(), Some("the test"));
    assert_eq!(
        history[1].outcome,
        VersionOutcome::Running,
        "its probation passed"
    );
    let mut swapped = false;
    while let Ok(event) = events.try_recv() {
        swapped |= matches!(event, PipelineEvent::PluginSwapped(ref r) if *r == report);
    }
    assert!(swapped, "the swap was published as an event");
}

/// Socket → map `checked` (lowercase) → files sink.
fn checked_lines(name: &str, port: u16, out: &Path) -> String {
    socket_pipeline(
        name,
        port,
        out,
        &format!("lowercase = {:?}", plugins::LOWERCASE),
        r#"
[[stage]]
name = "checked"
input = "lines"
op = "map"
plugin = "lowercase"
"#,
        "checked",
    )
}

/// The numbers of the `w<n>` lines the files sink wrote under `out`, each once.
fn numbers_once(out: &Path) -> BTreeSet<u64> {
    let mut numbers = BTreeSet::new();
    for (_, line) in sink_lines(out) {
        let number: u64 = line
            .strip_prefix('w')
            .unwrap_or_else(|| panic!("{line}"))
            .parse()
            .unwrap();
        assert!(numbers.insert(number), "w{number} written twice");
    }
    numbers
}

#[test]
fn a_candidate_that_traps_on_one_percent_of_records_is_rolled_back_with_exact_output() {
    let engine = engine();
    let dir = scratch();
    let out = dir.path().join("out");
    let port = free_port();
    let handle = start(&engine, &checked_lines("rollback", port, &out));
    let mut events = handle.subscribe();
    let mut feeder = Feeder::connect(port);
    // The recent input the dry run sees holds no multiple of 100.
    feeder.feed_until(100, 5);
    wait_for("99 lines through", || handle.metrics().records_out >= 99);
    let lowercase = handle.status().plugins[0].sha256.clone();
    let report = swap(
        &handle,
        "checked",
        plugins::TRAP_EVERY,
        None,
        RollbackRule {
            batches: 1_000,
            max_failures: 0,
        },
    )
    .expect("the candidate passes its checks: the recent input has no multiple of 100");
    feeder.feed_until(2_000, 10);
    drain_and_stop(&handle, 1_999);

    // Nothing lost, nothing twice: the old version processed what the candidate failed.
    assert_eq!(numbers_once(&out), (1..2_000).collect::<BTreeSet<u64>>());
    let status = handle.status();
    assert_eq!(status.plugins[0].sha256, lowercase, "back on the old version");
    let history = &handle.plugin_history()["checked/lowercase"];
    let candidate = history.iter().rev().find(|r| r.sha256 == report.to).unwrap();
    match &candidate.outcome {
        VersionOutcome::RolledBack { reason } => {
            assert!(
                reason.contains("failed calls on probation (at most 0 allowed)"),
                "{reason}"
            );
        }
        other => panic!("the candidate was not rolled back: {other:?}"),
    }
    assert_eq!(history.last().unwrap().sha256, lowercase);
    assert_eq!(history.last().unwrap().outcome, VersionOutcome::Running);
    let mut rolled_back = None;
    while let Ok(event) = events.try_recv() {
        if let PipelineEvent::PluginRolledBack { from, to, .. } = event {
            rolled_back = Some((from, to));
        }
    }
    assert_eq!(rolled_back, Some((report.to.clone(), lowercase)));
    let traps = handle.metrics().stages[0].traps.panic;
    assert!(traps >= 1, "the candidate's traps are counted: {traps}");
}

#[test]
fn candidates_that_fail_their_checks_are_refused_and_the_pipeline_never_notices() {
    let engine = engine();
    let dir = scratch();
    let out = dir.path().join("out");
    let port = free_port();
    let handle = start(&engine, &checked_lines("refusals", port, &out));
    let mut feeder = Feeder::connect(port);
    feeder.feed_until(50, 5);
    wait_for("49 lines through", || handle.metrics().records_out >= 49);
    let running = handle.status().plugins[0].sha256.clone();
    let refused = |result: Result<weir::pipeline::SwapReport, ControlError>, fragment: &str| {
        let error = result.expect_err("the candidate is refused").to_string();
        assert!(error.contains(fragment), "`{fragment}` not in: {error}");
    };
    // Another kind of plugin.
    refused(
        swap(
            &handle,
            "checked",
            plugins::SPLIT_WORDS,
            None,
            RollbackRule::default(),
        ),
        "the candidate is a plugin of kind `flat-map`, the stage runs one of kind `map`",
    );
    // A dry run on the recent input traps.
    refused(
        swap(
            &handle,
            "checked",
            plugins::PANIC_ON,
            Some(vec![("trigger", "w7")]),
            RollbackRule::default(),
        ),
        "panic-on: found w7",
    );
    // Not a component at all.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm junk").unwrap();
    refused(
        swap(
            &handle,
            "checked",
            junk.to_str().unwrap(),
            None,
            RollbackRule::default(),
        ),
        "the candidate cannot be loaded",
    );
    // No such stage.
    refused(
        swap(
            &handle,
            "nowhere",
            plugins::LOWERCASE,
            None,
            RollbackRule::default(),
        ),
        "no stage `nowhere`",
    );
    feeder.feed_until(300, 5);
    drain_and_stop(&handle, 299);
    assert_eq!(numbers_once(&out), (1..300).collect::<BTreeSet<u64>>());
    assert_eq!(handle.status().plugins[0].sha256, running);
    let history = &handle.plugin_history()["checked/lowercase"];
    let refusals = history
        .iter()
        .filter(|r| matches!(r.outcome, VersionOutcome::Refused { .. }))
        .count();
    assert_eq!(
        refusals, 2,
        "refused candidates that loaded are in the history: {history:?}"
    );
    assert_eq!(handle.status().state, PipelineState::Stopped);
}

#[test]
fn a_thousand_swaps_leave_no_more_instances_than_one() {
    let engine = engine();
    let dir = scratch();
    let out = dir.path().join("out");
    let port = free_port();
    let handle = start(&engine, &checked_lines("churn", port, &out));
    let mut feeder = Feeder::connect(port);
    let (one, other) = (plugins::LOWERCASE, plugins::FAIL_ON);
    let instances = || handle.metrics().stages[0].instances;
    let mut most = 0;
    for round in 0..1_000u64 {
        feeder.feed_until(round + 2, 1);
        let component = if round % 2 == 0 { other } else { one };
        swap(
            &handle,
            "checked",
            component,
            None,
            RollbackRule {
                batches: 0,
                max_failures: 0,
            },
        )
        .expect("each swap is made");
        if round % 100 == 99 {
            wait_for("the round's line through", || {
                handle.metrics().records_out > round
            });
            most = most.max(instances());
        }
    }
    drain_and_stop(&handle, 1_000);
    assert_eq!(numbers_once(&out), (1..=1_000).collect::<BTreeSet<u64>>());
    // Two workers and the driver may each hold one instance: never the old ones.
    assert!(
        most <= 3,
        "at most one instance per thread after 1,000 swaps, saw {most}"
    );
    assert!(
        engine.catalog().live <= 2,
        "one compiled form per version: {:?}",
        engine.catalog()
    );
}

/// A files source reading one file per batch (deterministic clock) →
/// split-words (from the file `plugin`) → count → files sink, checkpointing
/// every 4 batches, for `weir run`.
fn files_wordcount(dir: &Path, plugin: &Path) -> std::path::PathBuf {
    files_pipeline(
        dir,
        "hot-files",
        4,
        &format!("split-words = {:?}", plugin.display().to_string()),
        r#"
[[stage]]
name = "counts"
input = "words"
op = "reduce-by-key"
reducer = "count"
"#,
        "counts",
    )
}

/// Input files of `dir/in` (one a batch, on the deterministic clock) split
/// into words (by the plugin `split-words` among `plugins`), then `stages`,
/// checkpointed every `every` batches; the files sink in `dir/out` reads
/// the stream `last`. Returns the pipeline file.
fn files_pipeline(
    dir: &Path,
    name: &str,
    every: u64,
    plugins: &str,
    stages: &str,
    last: &str,
) -> std::path::PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "1s"
partitions = 2
clock = "deterministic"
checkpoint-dir = {checkpoints:?}

[checkpoint]
every-batches = {every}

[plugins]
{plugins}

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
{stages}
[[sink]]
input = "{last}"
type = "files"
path = {out:?}
"#,
        checkpoints = dir.join("checkpoints").display().to_string(),
        input = dir.join("in").display().to_string(),
        out = dir.join("out").display().to_string(),
    );
    weir_tests::write_pipeline(dir, &format!("{name}.toml"), &text)
}

/// Writes input files `from..to` (one batch each) and returns their text.
fn add_inputs(dir: &Path, from: usize, to: usize) -> String {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let mut all = String::new();
    for index in from..to {
        let text = weir_tests::sample_text(40, index as u64);
        let staged = dir.join(format!(".{index:03}.txt"));
        std::fs::write(&staged, &text).unwrap();
        std::fs::rename(&staged, dir.join("in").join(format!("{index:03}.txt"))).unwrap();
        all.push_str(&text);
    }
    all
}

/// Runs the pipeline `file` (input files 0-5, one batch each) with
/// `--watch-plugins` and `WEIR_CRASH_AT=crash_at` until six batches are
/// written, replaces the plugin file `plugin` by `new_version` (a build's
/// atomic rename), adds `after_swap` more input files once the swap is made,
/// and expects the run to be killed by its crash point; then adds the input
/// files up to 11 and runs it again with `--available-now`. Returns the
/// text of all twelve files and the second run's log.
fn kill_at_swap_and_resume(
    dir: &Path,
    file: &Path,
    plugin: &Path,
    new_version: &str,
    crash_at: &str,
    after_swap: usize,
) -> (String, String) {
    let mut text = add_inputs(dir, 0, 6);
    let log = dir.join("weir.log");
    let mut child = weir()
        .command(&["run", "--watch-plugins", file.to_str().unwrap()])
        .env("WEIR_CRASH_AT", crash_at)
        .env("WEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let out = dir.join("out");
    wait_for("six batches written", || {
        std::fs::read_dir(&out).map_or(0, |entries| entries.count()) >= 6
    });
    let staged = dir.join(".new-version.wasm");
    std::fs::copy(new_version, &staged).unwrap();
    std::fs::rename(&staged, plugin).unwrap();
    if after_swap > 0 {
        wait_for("the swap", || {
            std::fs::read_to_string(&log).is_ok_and(|log| log.contains("hot-loaded plugin version"))
        });
        text.push_str(&add_inputs(dir, 6, 6 + after_swap));
    }
    let status = weir_tests::wait_status(&mut child, LIMIT);
    let log_text = std::fs::read_to_string(&log).unwrap();
    let point = crash_at.split(':').next().unwrap();
    assert_eq!(status.signal(), Some(9), "killed at `{point}`: {log_text}");
    assert!(
        log_text.contains(&format!("crash point `{point}` reached")),
        "{log_text}"
    );

    text.push_str(&add_inputs(dir, 6 + after_swap, 12));
    let output = weir().run_logged(&["run", "--available-now", file.to_str().unwrap()], "info", LIMIT);
    let restart_log = weir_tests::stderr(&output);
    assert!(output.status.success(), "{restart_log}");
    (text, restart_log)
}

#[test]
fn kill_9_just_before_and_just_after_a_cut_over_recovers_exactly() {
    for point in ["swap-checked", "swap-cut-over"] {
        let dir = scratch();
        let plugin = dir.path().join("split-words.wasm");
        std::fs::copy(plugins::SPLIT_WORDS, &plugin).unwrap();
        let file = files_wordcount(dir.path(), &plugin);
        let (text, restart_log) = kill_at_swap_and_resume(
            dir.path(),
            &file,
            &plugin,
            plugins::SPLIT_WORDS_TAGGED,
            &format!("{point}:1"),
            0,
        );
        let out = dir.path().join("out");

        // Each batch wholly by one version, v1 then v2, every word counted once.
        let mut by_batch: BTreeMap<u64, BTreeSet<bool>> = BTreeMap::new();
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        for (batch, line) in sink_lines(&out) {
            let (word, count) = line.split_once('\t').unwrap();
            let tagged = word.starts_with("v2:");
            by_batch.entry(batch).or_default().insert(tagged);
            *totals
                .entry(word.trim_start_matches("v2:").to_owned())
                .or_insert(0) += count.parse::<u64>().unwrap();
        }
        assert_eq!(
            totals,
            weir_tests::word_counts(&text),
            "exact after a kill at `{point}`"
        );
        let versions: Vec<bool> = by_batch
            .values()
            .map(|set| {
                assert_eq!(
                    set.len(),
                    1,
                    "a batch processed by two versions after a kill at `{point}`"
                );
                *set.iter().next().unwrap()
            })
            .collect();
        assert_eq!(
            versions,
            [false; 6].into_iter().chain([true; 6]).collect::<Vec<_>>(),
            "batches 0-5 by v1, 6-11 by v2, after a kill at `{point}`"
        );
        if point == "swap-checked" {
            assert!(
                restart_log.contains("swapped in after the replay"),
                "{restart_log}"
            );
        }
    }
}

/// Deploys tenant `t`'s pipeline `lines`: its `in/` through a map
/// `checked` (its `lowercase` upload) to `out/lines`; returns that
/// plugin's SHA-256.
fn wordcount_of_lines(server: &weir_tests::server::Server, token: &str) -> String {
    let text = super::serve::wordcount("lines")
        .replace(
            "op = \"flat-map\"\nplugin = \"split-words\"",
            "op = \"map\"\nplugin = \"lowercase\"",
        )
        .replace("name = \"words\"", "name = \"checked\"")
        .replace("input = \"words\"", "input = \"checked\"")
        .replace("path = \"in\"", "path = \"in-lines\"");
    let deployed = server.deploy("t", token, &text).expect(201);
    deployed["status"]["plugins"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Writes `text` as input file `name` of tenant `tenant`'s `in/` (atomically).
fn tenant_input(server: &weir_tests::server::Server, tenant: &str, name: &str, text: &str) {
    let dir = server.root(tenant).join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let staged = server.root(tenant).join(format!(".{name}"));
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, dir.join(name)).unwrap();
}

/// The words of tenant `tenant`'s output so far, with the batch each came in.
fn tenant_words(server: &weir_tests::server::Server, tenant: &str) -> Vec<(u64, String)> {
    sink_lines(&server.root(tenant).join("out/wc"))
        .into_iter()
        .map(|(batch, line)| (batch, line.split_once('\t').unwrap().0.to_owned()))
        .collect()
}

/// Waits until the tenant's output holds `word`.
fn wait_word(server: &weir_tests::server::Server, tenant: &str, word: &str) {
    wait_for(&format!("`{word}` in the output"), || {
        tenant_words(server, tenant).iter().any(|(_, w)| w == word)
    });
}

/// A pipeline deployed from an upload runs that upload's component, which
/// its record does not name until a swap: replacing the upload (what
/// `weir swap` does first) must keep the component, so that a rollback to
/// it, and a restart on it, still work.
#[test]
fn replacing_the_upload_a_pipeline_runs_keeps_its_component() {
    use weir_tests::server::{Server, json};
    let dir = scratch();
    let mut server = Server::start(env!("CARGO_BIN_EXE_weir"), &dir.path().join("data"), &[]);
    let token = server.tenant("t", json!({}));
    let upload = |server: &Server, file: &str| {
        server.push_plugin("t", &token, "split-words", file).expect(201)["sha256"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let v1 = upload(&server, plugins::SPLIT_WORDS);
    server
        .deploy("t", &token, &super::serve::wordcount("wc"))
        .expect(201);
    tenant_input(&server, "t", "1.txt", "one\n");
    wait_word(&server, "t", "one");
    // The upload is replaced while v1 runs, then swapped in.
    let v2 = upload(&server, plugins::SPLIT_WORDS_TAGGED);
    server
        .post(
            "/v1/tenants/t/pipelines/wc/stages/words/swap",
            &token,
            &json!({ "upload": "split-words", "config": { "prefix": "b:" } }),
        )
        .expect(200);
    tenant_input(&server, "t", "2.txt", "two\n");
    wait_word(&server, "t", "b:two");
    // Back to v1, which no upload names any more.
    let back = server
        .post(
            "/v1/tenants/t/pipelines/wc/stages/words/rollback",
            &token,
            &json!({ "to": v1 }),
        )
        .expect(200);
    assert_eq!(
        (back["from"].as_str(), back["to"].as_str()),
        (Some(v2.as_str()), Some(v1.as_str()))
    );
    tenant_input(&server, "t", "3.txt", "three\n");
    wait_word(&server, "t", "three");
    // And a restart runs it again.
    server.kill9();
    server.restart();
    tenant_input(&server, "t", "4.txt", "four\n");
    wait_word(&server, "t", "four");
    let status = server.get("/v1/tenants/t/pipelines/wc", &token).expect(200);
    assert_eq!(status["status"]["plugins"][0]["sha256"], json!(v1), "{status}");
}

#[test]
fn the_server_swaps_refuses_rolls_back_and_keeps_the_version_over_a_kill_9() {
    use weir_tests::server::{Server, json};
    let dir = scratch();
    let mut server = Server::start(env!("CARGO_BIN_EXE_weir"), &dir.path().join("data"), &[]);
    let token = server.tenant("t", json!({}));
    let upload =
        |server: &Server, name: &str, file: &str| server.push_plugin("t", &token, name, file).expect(201);
    let v1 = upload(&server, "split-words", plugins::SPLIT_WORDS)["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let v2 = upload(&server, "split-words-tagged", plugins::SPLIT_WORDS_TAGGED)["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let lowercase = upload(&server, "lowercase", plugins::LOWERCASE)["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = super::serve::wordcount("wc");
    server.deploy("t", &token, &text).expect(201);
    tenant_input(&server, "t", "1.txt", "one\n");
    wait_word(&server, "t", "one");

    let swap = |server: &Server, body: serde_json::Value| {
        server.post("/v1/tenants/t/pipelines/wc/stages/words/swap", &token, &body)
    };
    // Refused: another kind; the pipeline goes on untouched.
    swap(&server, json!({ "upload": "lowercase" }))
        .expect_error(422, "the stage runs one of kind `flat-map`");
    swap(&server, json!({ "upload": "nothing" })).expect_error(404, "no plugin `nothing`");
    swap(&server, json!({ "upload": "split-words", "sha256": v1 })).expect_error(400, "exactly one of");
    let viewer = server.token("t", "viewer");
    server
        .post(
            "/v1/tenants/t/pipelines/wc/stages/words/swap",
            &viewer,
            &json!({ "upload": "split-words-tagged" }),
        )
        .expect_error(403, "");

    let report = swap(
        &server,
        json!({ "upload": "split-words-tagged", "config": { "prefix": "b:" } }),
    )
    .expect(200);
    assert_eq!(report["from"], json!(v1));
    assert_eq!(report["to"], json!(v2));
    tenant_input(&server, "t", "2.txt", "two\n");
    wait_word(&server, "t", "b:two");
    let status = server.get("/v1/tenants/t/pipelines/wc", &token).expect(200);
    assert_eq!(status["status"]["plugins"][0]["sha256"], json!(v2));

    // kill -9 and restart: the pipeline comes back on the swapped-in version and its configuration.
    server.kill9();
    server.restart();
    tenant_input(&server, "t", "3.txt", "three\n");
    wait_word(&server, "t", "b:three");
    let history = server
        .get("/v1/tenants/t/pipelines/wc/history", &token)
        .expect(200);
    let versions = history["words/split-words"].as_array().unwrap();
    let outcomes: Vec<(&str, &str)> = versions
        .iter()
        .map(|v| (v["sha256"].as_str().unwrap(), v["outcome"].as_str().unwrap()))
        .collect();
    assert!(outcomes.contains(&(v1.as_str(), "replaced")), "{history}");
    assert!(
        outcomes.contains(&(lowercase.as_str(), "refused")),
        "the refused kind is in the history: {history}"
    );
    assert_eq!(outcomes.last(), Some(&(v2.as_str(), "running")), "{history}");
    assert_eq!(
        outcomes.iter().filter(|(sha, _)| *sha == v2).count(),
        1,
        "a restart goes on with the same entry: {history}"
    );
    assert!(
        versions
            .iter()
            .any(|v| v["sha256"] == json!(v2) && v["by"].as_str().is_some_and(|by| by.contains("operator"))),
        "who swapped is recorded: {history}"
    );

    // Back to v1 by its SHA-256, even after its upload is replaced.
    upload(&server, "split-words", plugins::LOWERCASE);
    let back = server
        .post(
            "/v1/tenants/t/pipelines/wc/stages/words/rollback",
            &token,
            &json!({ "to": v1 }),
        )
        .expect(200);
    assert_eq!(back["to"], json!(v1));
    tenant_input(&server, "t", "4.txt", "four\n");
    wait_word(&server, "t", "four");
    // With nothing on probation, a plain rollback says so.
    server
        .post(
            "/v1/tenants/t/pipelines/wc/stages/words/rollback",
            &token,
            &json!({}),
        )
        .expect_error(422, "on probation");

    // Every batch by one version; the audit log names each swap.
    let words = tenant_words(&server, "t");
    for (word, tagged) in [
        ("one", false),
        ("b:two", true),
        ("b:three", true),
        ("four", false),
    ] {
        assert!(words.iter().any(|(_, w)| w == word), "{word} in {words:?}");
        assert_eq!(word.starts_with("b:"), tagged);
    }
    let audit = server
        .get("/v1/audit?tenant=t", weir_tests::server::ADMIN_TOKEN)
        .expect(200);
    let swaps: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| {
            entry["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("swap pipeline wc stage words"))
        })
        .collect();
    assert!(
        swaps
            .iter()
            .any(|entry| entry["plugin_sha256"] == json!(v2) && entry["result"] == json!("ok")),
        "{audit}"
    );
    assert_eq!(swaps.len(), 5, "refused swaps are audited too: {audit}");

    // The CLI: `weir swap` uploads the file and swaps it in; `weir history` shows it.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let cli = |args: &[&str]| {
        let mut all = vec![
            "--server",
            server.url.as_str(),
            "--token-file",
            token_file.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        weir().run(&all, LIMIT)
    };
    let swapped = cli(&[
        "swap",
        "wc",
        "words",
        plugins::SPLIT_WORDS_TAGGED,
        "--as",
        "tagged",
        "--config",
        "prefix=c:",
        "--probation",
        "2",
    ]);
    assert!(swapped.status.success(), "{}", weir_tests::stderr(&swapped));
    assert!(
        weir_tests::stdout(&swapped).contains(&v2),
        "{}",
        weir_tests::stdout(&swapped)
    );
    tenant_input(&server, "t", "5.txt", "five\n");
    wait_word(&server, "t", "c:five");
    let history = cli(&["history", "wc"]);
    assert!(history.status.success(), "{}", weir_tests::stderr(&history));
    assert!(
        weir_tests::stdout(&history).contains("prefix"),
        "{}",
        weir_tests::stdout(&history)
    );
    let refused = cli(&["swap", "wc", "words", plugins::LOWERCASE]);
    assert!(!refused.status.success());

    // An automatic rollback is pinned and audited as the engine's.
    let checked = wordcount_of_lines(&server, &token);
    let trap = upload(&server, "trap-every", plugins::TRAP_EVERY)["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    server
        .post(
            "/v1/tenants/t/pipelines/lines/stages/checked/swap",
            &token,
            &json!({ "upload": "trap-every", "rollback": { "batches": 100_000 } }),
        )
        .expect(200);
    std::fs::create_dir_all(server.root("t").join("in-lines")).unwrap();
    std::fs::write(server.root("t").join(".6.txt"), "w100\n").unwrap();
    std::fs::rename(
        server.root("t").join(".6.txt"),
        server.root("t").join("in-lines/6.txt"),
    )
    .unwrap();
    wait_for("the automatic rollback", || {
        let status = server.get("/v1/tenants/t/pipelines/lines", &token).expect(200);
        status["status"]["plugins"][0]["sha256"] == json!(checked)
    });
    wait_for("the rollback pinned", || {
        let record = std::fs::read_to_string(dir.path().join("data/tenants/t/pipelines/lines.json")).unwrap();
        record.contains(&checked) && record.contains("rolled-back")
    });
    let audit = server
        .get("/v1/audit?tenant=t", weir_tests::server::ADMIN_TOKEN)
        .expect(200);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["who"] == json!("weir")
                && entry["action"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("automatic rollback of pipeline lines"))),
        "{audit}"
    );
    assert_ne!(trap, checked);
    assert!(
        weir_tests::stderr(&refused).contains("kind `flat-map`"),
        "{}",
        weir_tests::stderr(&refused)
    );

    // Deleting `wc` lets go of the versions only its record named: v1's
    // upload was replaced; v2 is still an upload.
    let blob = |sha: &str| dir.path().join(format!("data/blobs/{sha}.wasm"));
    assert!(blob(&v1).exists(), "the history keeps v1");
    server
        .send(server.request("DELETE", "/v1/tenants/t/pipelines/wc", Some(&token)))
        .expect(204);
    assert!(!blob(&v1).exists(), "v1 is released with the pipeline");
    assert!(blob(&v2).exists(), "v2 is still an upload");
}

/// Writes lines `a<i> b<i>` for `i` in `from..to` to `feeder`'s connection.
fn feed_pairs(feeder: &mut Feeder, from: u64, to: u64) {
    let text: String = (from..to).map(|i| format!("a{i} b{i}\n")).collect();
    feeder.connection.write_all(text.as_bytes()).unwrap();
}

#[test]
fn a_candidate_in_shadow_reports_exactly_its_differences_and_is_promoted_by_hand_or_by_its_rule() {
    let engine = engine();
    let dir = scratch();
    let out = dir.path().join("out");
    let port = free_port();
    let text = socket_pipeline(
        "shadowed",
        port,
        &out,
        &format!("split-words = {:?}", plugins::SPLIT_WORDS),
        WORDS_STAGE,
        "words",
    );
    let handle = start(&engine, &text);
    let mut feeder = Feeder::connect(port);
    feed_pairs(&mut feeder, 0, 10);
    wait_for("20 words out", || handle.metrics().records_out >= 20);

    // A candidate that changes the value of the words starting with `b`.
    let differs = vec![("prefix", "x:"), ("tag", "value"), ("only-starting-with", "b")];
    let report = swap_in(
        &handle,
        "words",
        plugins::SPLIT_WORDS_TAGGED,
        Some(differs),
        RollbackRule::default(),
        Rollout::Shadow(ShadowRule {
            promote_after: None,
            max_slower_percent: 10.0,
        }),
    )
    .expect("the candidate goes into shadow");
    assert!(report.shadow);
    feed_pairs(&mut feeder, 10, 300);
    wait_for("600 words out", || handle.metrics().records_out >= 600);
    let shadow = handle
        .status()
        .shadows
        .into_iter()
        .next()
        .expect("a candidate in shadow");
    assert_eq!(shadow.candidate, report.to);
    assert_eq!(
        (
            shadow.stats.only_live,
            shadow.stats.only_candidate,
            shadow.stats.different
        ),
        (0, 0, 290),
        "{shadow:?}"
    );
    let expected: BTreeSet<String> = (10..300).map(|i| format!("b{i}")).collect();
    assert_eq!(
        shadow.stats.differing_keys, expected,
        "exactly the keys whose records differ"
    );
    assert_eq!(shadow.stats.candidate_failures, 0);
    assert!(shadow.stats.streak.batches >= 1);
    assert!(!shadow.stats.candidate_time.is_zero() && !shadow.stats.live_time.is_zero());
    // Its output went nowhere.
    assert!(sink_lines(&out).iter().all(|(_, line)| !line.contains("x:")));

    // Promoted by hand: the next batches are the candidate's.
    let promoted = handle
        .promote("words", None, Some("the test".into()))
        .expect("promoted");
    assert_eq!(promoted.to, report.to);
    assert!(handle.status().shadows.is_empty());
    let cut = promoted.after_batch.unwrap();
    feed_pairs(&mut feeder, 300, 310);
    wait_for("the promoted version's output", || {
        sink_lines(&out).iter().any(|(_, line)| line.contains("x:b30"))
    });
    for (batch, line) in sink_lines(&out)
        .into_iter()
        .filter(|(_, line)| line.starts_with('b'))
    {
        assert_eq!(
            line.contains("x:"),
            batch > cut,
            "batch {batch}, cut after {cut}: {line}"
        );
    }

    // A candidate with the same output, promoted by its rule after three clean batches.
    let same = swap_in(
        &handle,
        "words",
        plugins::SPLIT_WORDS,
        None,
        RollbackRule::default(),
        Rollout::Shadow(ShadowRule {
            promote_after: Some(3),
            max_slower_percent: 1_000.0,
        }),
    );
    // split-words differs from the promoted version on `b` words: fed `a` words only, it is clean.
    let same = same.expect("split-words goes into shadow");
    let mut i = 1_000;
    wait_for("the rule's promotion", || {
        let text: String = (i..i + 5).map(|n| format!("a{n}\n")).collect();
        feeder.connection.write_all(text.as_bytes()).unwrap();
        i += 5;
        std::thread::sleep(Duration::from_millis(60));
        handle.status().plugins[0].sha256 == same.to
    });
    let history = &handle.plugin_history()["words/split-words"];
    let last = history.last().unwrap();
    assert_eq!(last.sha256, same.to);
    assert_eq!(last.by.as_deref(), Some("its promotion rule"));
    // A rollback while nothing is on probation or in shadow says so; a
    // candidate in shadow can be given up.
    swap_in(
        &handle,
        "words",
        plugins::SPLIT_WORDS_TAGGED,
        None,
        RollbackRule::default(),
        Rollout::Shadow(ShadowRule::default()),
    )
    .unwrap();
    handle
        .roll_back("words", None, Some("the test".into()))
        .expect("the shadow is given up");
    assert!(handle.status().shadows.is_empty());
    handle.stop(StopMode::Graceful);
    handle.wait().unwrap();
}

#[test]
fn a_stateful_stage_keeps_its_state_across_a_swap_and_refuses_a_version_that_cannot_read_it() {
    let engine = engine();
    let dir = scratch();
    let out = dir.path().join("out");
    let port = free_port();
    let text = socket_pipeline(
        "totals",
        port,
        &out,
        &format!(
            "split-words = {:?}\none = {:?}\nrunning-total = {:?}",
            plugins::SPLIT_WORDS,
            plugins::ONE,
            plugins::RUNNING_TOTAL
        ),
        &format!("{WORDS_STAGE}\n{}", TOTALS_STAGES),
        "totals",
    );
    let handle = start(&engine, &text);
    let mut feeder = Feeder::connect(port);
    let words = ["alpha", "beta", "gamma", "delta", "epsilon"];
    let mut fed: BTreeMap<&str, u64> = BTreeMap::new();
    let mut feed = |feeder: &mut Feeder, lines: usize, from: usize| {
        let mut text = String::new();
        for i in from..from + lines {
            let word = words[i * 7 % words.len()];
            *fed.entry(word).or_default() += 1;
            text.push_str(word);
            text.push('\n');
        }
        feeder.connection.write_all(text.as_bytes()).unwrap();
    };
    feed(&mut feeder, 500, 0);
    wait_for("500 words counted", || {
        handle.metrics().stages[2].records_in >= 500
    });

    // Another build of running-total: the state (the totals) stays with the host.
    let rebuilt = dir.path().join("running-total-rebuilt.wasm");
    let mut component = std::fs::read(plugins::RUNNING_TOTAL).unwrap();
    component.extend_from_slice(&[0, 8, 7, b'r', b'e', b'b', b'u', b'i', b'l', b't']);
    std::fs::write(&rebuilt, component).unwrap();
    let report = swap(
        &handle,
        "totals",
        rebuilt.to_str().unwrap(),
        None,
        RollbackRule::default(),
    )
    .expect("the rebuild reads the running totals");
    assert!(
        report.sample_records > 0,
        "its dry run had keys with their states: {report:?}"
    );
    feed(&mut feeder, 500, 500);
    wait_for("1,000 words counted", || {
        handle.metrics().stages[2].records_in >= 1_000
    });

    // A version whose state is an object cannot read the totals: its dry
    // run on the stage's recent keys (with their states) fails.
    let refused = swap(
        &handle,
        "totals",
        plugins::PADDED_TOTAL,
        None,
        RollbackRule::default(),
    )
    .expect_err("a version that cannot read the state is refused");
    assert!(refused.to_string().contains("failed its checks"), "{refused}");
    feed(&mut feeder, 300, 1_000);
    drain_and_stop(&handle, 1_300);

    // The last total of each word is every occurrence: nothing lost across the swap.
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (batch, line) in sink_lines(&out) {
        let (word, total) = line.split_once('\t').unwrap();
        let total: u64 = total.parse().unwrap();
        let entry = last.entry(word.to_owned()).or_insert((batch, total));
        if batch >= entry.0 {
            *entry = (batch, total.max(entry.1));
        }
    }
    let totals: BTreeMap<&str, u64> = last.iter().map(|(w, (_, t))| (w.as_str(), *t)).collect();
    assert_eq!(totals, fed);
    assert_eq!(
        handle
            .status()
            .plugins
            .iter()
            .find(|p| p.stage == "totals")
            .unwrap()
            .sha256,
        report.to
    );
}

#[test]
fn a_running_total_built_for_weir_plugin_0_1_swaps_to_a_new_state_format_through_migrate_state_with_exact_totals()
 {
    use weir_tests::fixtures::{SDK_0_1_RUNNING_TOTAL, SDK_0_1_SPLIT_WORDS};
    let engine = engine();
    let dir = scratch();
    let out = dir.path().join("out");
    let port = free_port();
    // Both plugins of the running version were built by the SDK of
    // weir:plugin@0.1.0, before state versions existed.
    let text = socket_pipeline(
        "migrating-totals",
        port,
        &out,
        &format!(
            "split-words = {SDK_0_1_SPLIT_WORDS:?}\none = {:?}\nrunning-total = {SDK_0_1_RUNNING_TOTAL:?}",
            plugins::ONE,
        ),
        &format!("{WORDS_STAGE}\n{}", TOTALS_STAGES),
        "totals",
    );
    let handle = start(&engine, &text);
    let totals_plugin = |handle: &PipelineHandle| {
        handle
            .status()
            .plugins
            .into_iter()
            .find(|p| p.stage == "totals")
            .unwrap()
    };
    let running = totals_plugin(&handle);
    assert_eq!((running.contract.as_str(), running.state_version), ("0.1.0", 1));

    let mut feeder = Feeder::connect(port);
    let words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"];
    let mut fed: BTreeMap<&str, u64> = BTreeMap::new();
    let mut feed = |feeder: &mut Feeder, lines: usize, from: usize| {
        let mut text = String::new();
        for i in from..from + lines {
            let word = words[i * 5 % words.len()];
            *fed.entry(word).or_default() += 1;
            text.push_str(word);
            text.push('\n');
        }
        feeder.connection.write_all(text.as_bytes()).unwrap();
    };
    feed(&mut feeder, 700, 0);
    wait_for("700 words counted", || {
        handle.metrics().stages[2].records_in >= 700
    });

    // The new version keeps {"sum":..,"count":..} where the old one kept a
    // number: its migrate-state converts every key's total before it runs.
    let report = swap(
        &handle,
        "totals",
        plugins::RUNNING_TOTAL_V2,
        None,
        RollbackRule::default(),
    )
    .expect("the new version converts the totals");
    assert_eq!(report.migrated_states, Some(words.len() as u64), "{report:?}");
    assert_eq!(
        report.probation_batches, 0,
        "the old version cannot read converted states: no probation"
    );
    assert!(
        report.sample_records > 0,
        "the conversion was dry-run on the stage's keys first"
    );
    let running = totals_plugin(&handle);
    assert_eq!((running.contract.as_str(), running.state_version), ("0.2.0", 2));
    let swapped_after = report.after_batch.expect("the stage had run batches");

    // Back to a version of state version 1, which has no migrate-state: refused.
    let refused = swap(
        &handle,
        "totals",
        plugins::RUNNING_TOTAL,
        None,
        RollbackRule::default(),
    )
    .expect_err("a version that cannot convert the state is refused");
    assert!(
        refused.to_string().contains("exports no state-migration"),
        "{refused}"
    );

    feed(&mut feeder, 700, 700);
    drain_and_stop(&handle, 1_400);

    // Every word's last total is all its occurrences; after the swap the
    // output is the new version's, whose count covers the values since.
    let mut last: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let mut counted_since: BTreeMap<String, u64> = BTreeMap::new();
    for (batch, line) in sink_lines(&out) {
        let (word, value) = line.split_once('\t').unwrap();
        let total: i64 = if batch > swapped_after {
            let (sum, count) = value
                .strip_suffix(" values)")
                .and_then(|v| v.split_once(" ("))
                .unwrap_or_else(|| panic!("batch {batch} after the swap has the new format: {line}"));
            let count: u64 = count.parse().unwrap();
            let seen = counted_since.entry(word.to_owned()).or_default();
            *seen = (*seen).max(count);
            sum.parse().unwrap()
        } else {
            value
                .parse()
                .unwrap_or_else(|_| panic!("batch {batch} before the swap has the old format: {line}"))
        };
        let entry = last.entry(word.to_owned()).or_insert((batch, total));
        if batch >= entry.0 {
            *entry = (batch, total.max(entry.1));
        }
    }
    let totals: BTreeMap<&str, u64> = last.iter().map(|(w, (_, t))| (w.as_str(), *t as u64)).collect();
    assert_eq!(totals, fed, "totals are exact across the conversion");
    assert_eq!(
        counted_since.values().sum::<u64>(),
        700,
        "the new version counted the values after the swap"
    );
}

/// A running total (the 0.1 build of running-total, in `dir`) over the
/// words of input files, checkpointed every `every` batches; returns the
/// pipeline file and the plugin file.
fn files_totals(dir: &Path, every: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let plugin = dir.join("running-total.wasm");
    std::fs::copy(weir_tests::fixtures::SDK_0_1_RUNNING_TOTAL, &plugin).unwrap();
    let plugins = format!(
        "split-words = {:?}\none = {:?}\nrunning-total = {:?}",
        plugins::SPLIT_WORDS,
        plugins::ONE,
        plugin.display().to_string()
    );
    (
        files_pipeline(dir, "hot-totals", every, &plugins, TOTALS_STAGES, "totals"),
        plugin,
    )
}

/// Checks the running totals the files sink wrote under `out`: batches
/// 0-5 by the old version (totals as numbers), 6-11 by the new one (on
/// converted states), each batch by one, and every word's last total
/// exact for the input `text`.
fn check_converted_totals(out: &Path, text: &str, after: &str) {
    let mut formats: BTreeMap<u64, BTreeSet<bool>> = BTreeMap::new();
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (batch, line) in sink_lines(out) {
        let (word, value) = line.split_once('\t').unwrap();
        let converted = value.ends_with(" values)");
        formats.entry(batch).or_default().insert(converted);
        let total: u64 = value.split(' ').next().unwrap().parse().unwrap();
        let entry = last.entry(word.to_owned()).or_insert((batch, total));
        if batch >= entry.0 {
            *entry = (batch, total);
        }
    }
    let totals: BTreeMap<String, u64> = last.into_iter().map(|(word, (_, total))| (word, total)).collect();
    assert_eq!(totals, weir_tests::word_counts(text), "exact after {after}");
    let versions: Vec<bool> = formats
        .values()
        .map(|set| {
            assert_eq!(set.len(), 1, "a batch by two versions after {after}");
            *set.iter().next().unwrap()
        })
        .collect();
    assert_eq!(
        versions,
        [false; 6].into_iter().chain([true; 6]).collect::<Vec<_>>(),
        "batches 0-5 by v1, 6-11 by v2 after {after}"
    );
}

#[test]
fn kill_9_around_a_swap_that_converts_state_recovers_exact_totals() {
    for point in ["swap-checked", "swap-cut-over"] {
        let dir = scratch();
        let (file, plugin) = files_totals(dir.path(), 4);
        let (text, restart_log) = kill_at_swap_and_resume(
            dir.path(),
            &file,
            &plugin,
            plugins::RUNNING_TOTAL_V2,
            &format!("{point}:1"),
            0,
        );
        check_converted_totals(&dir.path().join("out"), &text, &format!("a kill at `{point}`"));
        if point == "swap-checked" {
            // The conversion had not happened: the restart made it, after the replay.
            assert!(
                restart_log.contains("swapped in after the replay"),
                "{restart_log}"
            );
        }
    }
}

#[test]
fn a_replay_converts_the_state_where_the_swap_did() {
    // A checkpoint after every batch: the swap's own is often the one just
    // taken (of the old states: when it was, the restart resumes from it
    // and the replay of batch 6 converts the states first; without that
    // conversion this test fails), and the batch after the swap is only in
    // the batch log when the process is killed.
    let dir = scratch();
    let (file, plugin) = files_totals(dir.path(), 1);
    // Batch 6, the first of the new version, is logged, and the process killed.
    let (text, _) = kill_at_swap_and_resume(
        dir.path(),
        &file,
        &plugin,
        plugins::RUNNING_TOTAL_V2,
        "batch-logged:7",
        1,
    );
    let out = dir.path().join("out");
    check_converted_totals(
        &out,
        &text,
        "a kill just after the first batch on the new version was logged",
    );
}

#[test]
fn a_canary_takes_its_share_of_the_keys_each_key_with_one_version_and_is_promoted_or_given_up() {
    let engine = engine();
    let dir = scratch();
    let out = dir.path().join("out");
    let port = free_port();
    // Under a fuel budget, so that each version's fuel is counted.
    let text = socket_pipeline(
        "canary-words",
        port,
        &out,
        &format!("split-words = {:?}", plugins::SPLIT_WORDS),
        &format!("{WORDS_STAGE}limits = {{ fuel = 50000000 }}\n"),
        "words",
    );
    let handle = start(&engine, &text);
    let mut feeder = Feeder::connect(port);
    let vocabulary: Vec<String> = (0..200).map(|i| format!("k{i:03}")).collect();
    let mut fed: BTreeMap<String, u64> = BTreeMap::new();
    let mut next = 0usize;
    let mut feed = |feeder: &mut Feeder, lines: usize| {
        let mut text = String::new();
        for _ in 0..lines {
            let word = &vocabulary[next * 7 % vocabulary.len()];
            next += 1;
            *fed.entry(word.clone()).or_default() += 1;
            text.push_str(word);
            text.push('\n');
        }
        feeder.connection.write_all(text.as_bytes()).unwrap();
    };
    feed(&mut feeder, 400);
    wait_for("400 words through", || handle.metrics().records_out >= 400);

    let report = swap_in(
        &handle,
        "words",
        plugins::SPLIT_WORDS_TAGGED,
        None,
        RollbackRule::default(),
        Rollout::Canary(weir::pipeline::CanaryRule {
            percent: 30.0,
            promote_after: None,
            max_failures: 0,
        }),
    )
    .expect("the canary starts");
    assert_eq!(report.canary_percent, Some(30.0));
    let cut = report.after_batch.expect("batches ran before the canary");
    for round in 0..8 {
        feed(&mut feeder, 200);
        wait_for("the round through", || {
            handle.metrics().records_out >= 600 + 200 * round as u64
        });
    }
    let status = handle.status();
    let canary = &status.canaries[0];
    assert_eq!(
        (canary.stage.as_str(), canary.candidate.as_str()),
        ("words", report.to.as_str())
    );
    assert!(
        canary.stats.live.calls > 0 && canary.stats.canary.calls > 0,
        "{canary:?}"
    );
    assert_eq!(canary.stats.canary.failures + canary.stats.live.failures, 0);
    assert!(
        canary.stats.live.fuel > 0 && canary.stats.canary.fuel > 0,
        "{canary:?}"
    );
    assert_eq!(
        canary.stats.live.records + canary.stats.canary.records,
        1_600,
        "{canary:?}"
    );
    let history = &handle.plugin_history()["words/split-words"];
    assert_eq!(
        history.last().unwrap().outcome,
        VersionOutcome::InCanary { percent: 30.0 }
    );

    // Promoted by hand: every key goes to it from the next batch on.
    let promoted = handle
        .promote("words", None, Some("the test".into()))
        .expect("the canary is promoted");
    let promoted_after = promoted.after_batch.unwrap();
    feed(&mut feeder, 400);
    drain_and_stop(&handle, 2_400);
    assert!(handle.status().canaries.is_empty());

    // Each line once; before the canary untagged; during it each word
    // always by the same version, about 30% of them by the canary; after
    // the promotion every word tagged.
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    let mut during: BTreeMap<String, BTreeSet<bool>> = BTreeMap::new();
    for (batch, line) in sink_lines(&out) {
        // Key, tab, value: the value is the word, tagged by the new version.
        let (_, value) = line.split_once('\t').unwrap();
        let (tagged, word) = match value.strip_prefix("v2:") {
            Some(word) => (true, word.to_owned()),
            None => (false, value.to_owned()),
        };
        if batch <= cut {
            assert!(!tagged, "batch {batch}, before the canary: {line}");
        } else if batch <= promoted_after {
            during.entry(word.clone()).or_default().insert(tagged);
        } else {
            assert!(tagged, "batch {batch}, after the promotion: {line}");
        }
        *counted.entry(word).or_default() += 1;
    }
    assert_eq!(counted, fed, "every line once");
    assert!(
        during.values().all(|versions| versions.len() == 1),
        "a word went to both versions: {during:?}"
    );
    let canaried = during
        .values()
        .filter(|versions| versions.contains(&true))
        .count();
    assert!(
        (30..=90).contains(&canaried),
        "{canaried} of {} words went to the 30% canary",
        during.len()
    );

    // A canary that traps is given up by itself, and nothing is lost.
    let out = dir.path().join("out-trapping");
    let port = free_port();
    let handle = start(&engine, &checked_lines("canary-traps", port, &out));
    let mut feeder = Feeder::connect(port);
    feeder.feed_until(100, 5);
    wait_for("99 lines through", || handle.metrics().records_out >= 99);
    swap_in(
        &handle,
        "checked",
        plugins::TRAP_EVERY,
        None,
        RollbackRule::default(),
        Rollout::Canary(weir::pipeline::CanaryRule {
            percent: 50.0,
            promote_after: Some(1_000),
            max_failures: 0,
        }),
    )
    .expect("the canary passes its checks");
    feeder.feed_until(3_000, 10);
    drain_and_stop(&handle, 2_999);
    assert_eq!(numbers_once(&out), (1..3_000).collect::<BTreeSet<u64>>());
    assert!(handle.status().canaries.is_empty(), "the canary was given up");
    let history = &handle.plugin_history()["checked/lowercase"];
    match &history.last().unwrap().outcome {
        VersionOutcome::RolledBack { reason } => {
            assert!(reason.contains("failed calls as a canary"), "{reason}")
        }
        other => panic!("the canary was not given up: {other:?}"),
    }
}

#[test]
fn a_canary_on_the_server_keeps_each_key_on_its_version_over_a_kill_9() {
    use weir_tests::server::{Server, json};
    let dir = scratch();
    let mut server = Server::start(env!("CARGO_BIN_EXE_weir"), &dir.path().join("data"), &[]);
    let token = server.tenant("t", json!({}));
    server
        .push_plugin("t", &token, "split-words", plugins::SPLIT_WORDS)
        .expect(201);
    let tagged = server
        .push_plugin("t", &token, "split-words-tagged", plugins::SPLIT_WORDS_TAGGED)
        .expect(201)["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    server
        .deploy("t", &token, &super::serve::wordcount("wc"))
        .expect(201);
    let words: Vec<String> = (0..100).map(|i| format!("k{i:03}")).collect();
    let file = words.join("\n") + "\n";
    tenant_input(&server, "t", "1.txt", &file);
    wait_for("the first file counted", || {
        tenant_words(&server, "t").len() >= 100
    });

    let report = server
        .post(
            "/v1/tenants/t/pipelines/wc/stages/words/swap",
            &token,
            &json!({
                "upload": "split-words-tagged",
                "config": { "prefix": "b:" },
                "mode": { "canary": { "percent": 40 } },
            }),
        )
        .expect(200);
    assert_eq!(report["canary_percent"], json!(40.0));
    tenant_input(&server, "t", "2.txt", &file);
    wait_for("the second file counted", || {
        tenant_words(&server, "t").len() >= 200
    });

    // kill -9 and restart: the canary goes on, each word on its version.
    server.kill9();
    server.restart();
    tenant_input(&server, "t", "3.txt", &file);
    let started = Instant::now();
    while tenant_words(&server, "t").len() < 300 {
        let status = server.get("/v1/tenants/t/pipelines/wc", &token).expect(200);
        assert!(
            started.elapsed() < PATIENCE,
            "the third file was not counted: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = server.get("/v1/tenants/t/pipelines/wc", &token).expect(200);
    let canaries = status["status"]["canaries"].as_array().unwrap();
    assert_eq!(canaries.len(), 1, "{status}");
    assert_eq!(canaries[0]["candidate"], json!(tagged));

    // Every word counted once per file; before the canary untagged; in the
    // two files after it, each word by the same version both times.
    let output = tenant_words(&server, "t");
    assert_eq!(output.len(), 300, "each word once per file: {output:?}");
    let first_batch_after = output
        .iter()
        .filter(|(_, word)| word.starts_with("b:"))
        .map(|(batch, _)| *batch)
        .min()
        .expect("the canary tagged some words");
    let mut routes: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for (batch, word) in &output {
        let tagged = word.starts_with("b:");
        let word = word.trim_start_matches("b:").to_owned();
        if *batch < first_batch_after {
            assert!(!tagged, "{word} tagged before the canary");
        } else {
            routes.entry(word).or_default().push(tagged);
        }
    }
    assert_eq!(routes.len(), 100, "{routes:?}");
    for (word, versions) in &routes {
        assert_eq!(versions.len(), 2, "{word}: {versions:?}");
        assert_eq!(
            versions[0], versions[1],
            "{word} changed version over the restart"
        );
    }
    let canaried = routes.values().filter(|versions| versions[0]).count();
    assert!(
        (15..=65).contains(&canaried),
        "{canaried} of 100 words to the 40% canary"
    );
}
