//! The live engine as a library: many pipelines on one `Engine`, watched,
//! paused, resumed, stopped and failed while they run, with real plugins,
//! real files and the real files sink.

use std::path::Path;
use std::time::{Duration, Instant};

use weir::engine::{Engine, EngineOptions, PipelineHandle};
use weir::pipeline::{ControlReply, PipelineEvent, PipelineState, RunOptions, StopMode};
use weir_tests::{component_cache, plugins, sample_text, scratch, summed_counts, word_counts};

/// Longest any wait in these tests may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

fn engine(workers: usize) -> Engine {
    Engine::new(EngineOptions {
        cache_dir: Some(component_cache()),
        workers: Some(workers),
        ..EngineOptions::default()
    })
    .expect("the engine starts")
}

/// Files source in `dir/in` → split-words → count → files sink in `dir/out`.
fn wordcount(name: &str, dir: &Path, extra_stage: &str) -> String {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "50ms"
partitions = 2

[plugins]
split-words = {split:?}
panic-on = {panic:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}

{extra_stage}

[[stage]]
name = "words"
input = "checked"
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
path = {out:?}
"#,
        split = plugins::SPLIT_WORDS,
        panic = plugins::PANIC_ON,
        input = dir.join("in").display().to_string(),
        out = dir.join("out").display().to_string(),
    )
}

/// A stage that passes records through unless one is `trigger`.
fn checked_by_panic_on(trigger: &str) -> String {
    format!(
        "[[stage]]\nname = \"checked\"\ninput = \"lines\"\nop = \"map\"\nplugin = \"panic-on\"\nconfig = {{ trigger = \"{trigger}\" }}\n"
    )
}

fn start(engine: &Engine, text: &str, options: RunOptions) -> PipelineHandle {
    let prepared = engine
        .prepare(text, Path::new("engine-test.toml"))
        .expect("the pipeline is valid");
    engine.start(prepared, options).expect("the pipeline starts")
}

/// Writes `text` as a new file in `dir/in` (atomically: the files source
/// never sees half of it).
fn add_file(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let staged = dir.join(format!(".{name}"));
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, dir.join("in").join(name)).unwrap();
}

/// Waits until `done` holds, failing the test after [`PATIENCE`].
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lines_in(handle: &PipelineHandle) -> u64 {
    handle.metrics().records_in
}

#[test]
fn three_pipelines_on_one_engine_are_watched_paused_stopped_and_one_fails_alone() {
    let engine = engine(2);
    let (a, b, c) = (scratch(), scratch(), scratch());
    let first = sample_text(300, 1);
    let second = sample_text(200, 2);
    add_file(a.path(), "1.txt", &first);
    add_file(b.path(), "1.txt", &second);
    add_file(c.path(), "1.txt", "fine\nboom\nfine\n");

    let paused = start(
        &engine,
        &wordcount("paused", a.path(), &checked_by_panic_on("never")),
        RunOptions::default(),
    );
    let mut events = paused.subscribe();
    let stopped = start(
        &engine,
        &wordcount("stopped", b.path(), &checked_by_panic_on("never")),
        RunOptions::default(),
    );
    let failing = start(
        &engine,
        &wordcount("failing", c.path(), &checked_by_panic_on("boom")),
        RunOptions::default(),
    );

    // Live status and metrics while they run.
    wait_for("the first file of `paused`", || lines_in(&paused) == 300);
    let status = paused.status();
    assert_eq!(status.state, PipelineState::Running);
    assert!(status.last_batch.is_some());
    let split = status
        .plugins
        .iter()
        .find(|p| p.stage == "words")
        .expect("the words stage's plugin");
    assert_eq!(split.plugin, "split-words");
    assert_eq!(
        split.sha256,
        weir::runtime::content_hash(&std::fs::read(plugins::SPLIT_WORDS).unwrap())
    );
    let metrics = paused.metrics();
    assert!(metrics.batches >= 1);
    assert_eq!(metrics.sources[0].records, 300);
    let words = metrics.stages.iter().find(|s| s.stage == "words").unwrap();
    assert_eq!(words.records_in, 300);
    assert_eq!(words.records_out, first.split_whitespace().count() as u64);
    assert!(words.instances >= 1, "warm split-words instances are counted");
    assert!(words.wasm_memory_bytes > 0, "their linear memory is counted");
    assert!(metrics.processing_time.max > Duration::ZERO);
    assert!(metrics.total_delay.max >= metrics.processing_time.max);

    // The failing pipeline fails alone, with the stage and the trap.
    let error = failing.wait().expect_err("`failing` fails");
    let message = error.to_string();
    assert!(
        message.contains("stage `checked`") && message.contains("panic-on: found boom"),
        "{message}"
    );
    let status = failing.status();
    assert_eq!(status.state, PipelineState::Failed);
    assert!(status.error.unwrap().contains("panic-on"));
    let checked = failing
        .metrics()
        .stages
        .into_iter()
        .find(|s| s.stage == "checked")
        .unwrap();
    assert_eq!(checked.traps.panic, 1, "the trap is counted by kind");

    // Pause: no batch is cut while input waits; resume: all of it arrives.
    assert!(matches!(paused.pause(), Ok(ControlReply::Paused { .. })));
    assert_eq!(paused.status().state, PipelineState::Paused);
    let batches = paused.metrics().batches;
    add_file(a.path(), "2.txt", &second);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        paused.metrics().batches,
        batches,
        "a paused pipeline cuts no batch"
    );
    assert_eq!(lines_in(&paused), 300);
    assert!(paused.pause().is_ok(), "pausing twice is harmless");
    assert!(matches!(paused.resume(), Ok(ControlReply::Resumed)));
    assert!(paused.resume().is_err(), "a running pipeline cannot be resumed");
    wait_for("the second file of `paused`", || lines_in(&paused) == 500);

    // The other two were unaffected: `stopped` stops gracefully, exact.
    wait_for("the file of `stopped`", || lines_in(&stopped) == 200);
    stopped.stop(StopMode::Graceful);
    let summary = stopped.wait().expect("`stopped` ends cleanly");
    assert!(summary.stopped);
    assert_eq!(stopped.status().state, PipelineState::Stopped);
    assert_eq!(summed_counts(&b.path().join("out")), word_counts(&second));
    assert!(matches!(
        stopped.pause(),
        Err(weir::pipeline::ControlError::Ended(_))
    ));

    paused.stop(StopMode::Graceful);
    paused.wait().expect("`paused` ends cleanly");
    assert_eq!(
        summed_counts(&a.path().join("out")),
        word_counts(&(first + &second))
    );

    // The events said what happened, in order.
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    let paused_at = seen
        .iter()
        .position(|e| {
            matches!(
                e,
                PipelineEvent::StatusChanged {
                    state: PipelineState::Paused
                }
            )
        })
        .expect("a paused event");
    assert!(
        seen[paused_at..].iter().any(|e| matches!(
            e,
            PipelineEvent::StatusChanged {
                state: PipelineState::Running
            }
        )),
        "a running event after the pause: {seen:?}"
    );
    assert!(
        seen[..paused_at]
            .iter()
            .any(|e| matches!(e, PipelineEvent::BatchCompleted(_)))
    );
    assert!(matches!(
        seen.last(),
        Some(PipelineEvent::StatusChanged {
            state: PipelineState::Stopped
        })
    ));
}

#[test]
fn twenty_pipelines_load_and_compile_their_shared_plugin_once() {
    let engine = engine(2);
    let dirs: Vec<_> = (0..20).map(|_| scratch()).collect();
    let texts: Vec<String> = (0..20).map(|i| sample_text(20 + i, i as u64)).collect();
    let before = engine.catalog();
    let handles: Vec<PipelineHandle> = dirs
        .iter()
        .zip(&texts)
        .enumerate()
        .map(|(i, (dir, text))| {
            add_file(dir.path(), "1.txt", text);
            start(
                &engine,
                &wordcount(&format!("p{i}"), dir.path(), &checked_by_panic_on("never")),
                RunOptions {
                    available_now: true,
                    ..RunOptions::default()
                },
            )
        })
        .collect();
    let after = engine.catalog();
    // Two plugins (split-words, panic-on), each compiled once by this engine.
    assert_eq!(after.compiles - before.compiles, 2, "{after:?}");
    assert_eq!(after.hits - before.hits, 2 * 19, "{after:?}");
    assert_eq!(after.live, 2);
    for (handle, (dir, text)) in handles.iter().zip(dirs.iter().zip(&texts)) {
        handle.wait().expect("each pipeline runs to the end of its input");
        assert_eq!(summed_counts(&dir.path().join("out")), word_counts(text));
    }
    assert_eq!(engine.worker_threads(), 2);
    for handle in &handles {
        assert!(engine.supervisor().remove(handle.id()).is_some());
    }
    drop(handles);
    // The workers drop the ended pipelines' instances; nothing else holds
    // the compiled plugins then.
    wait_for("unused compiled plugins to be released", || {
        engine.catalog().live == 0
    });
}

#[test]
fn a_duplicate_name_or_checkpoint_directory_is_refused_while_running() {
    let engine = engine(1);
    let (a, b) = (scratch(), scratch());
    let checkpointed = |name: &str, dir: &Path, checkpoints: &Path| {
        wordcount(name, dir, &checked_by_panic_on("never")).replace(
            "partitions = 2\n",
            &format!(
                "partitions = 2\ncheckpoint-dir = {:?}\n",
                checkpoints.display().to_string()
            ),
        )
    };
    let shared = a.path().join("checkpoints");
    let first = start(
        &engine,
        &checkpointed("first", a.path(), &shared),
        RunOptions::default(),
    );
    let refused = |text: &str| {
        let prepared = engine.prepare(text, Path::new("engine-test.toml")).unwrap();
        engine
            .start(prepared, RunOptions::default())
            .unwrap_err()
            .to_string()
    };
    let message = refused(&wordcount("first", b.path(), &checked_by_panic_on("never")));
    assert!(
        message.contains("a pipeline named `first` is already running"),
        "{message}"
    );
    let message = refused(&checkpointed("second", b.path(), &shared));
    assert!(
        message.contains("already used by the running pipeline `first`"),
        "{message}"
    );
    // The same rule for checkpoints on object storage: the same URL at the
    // same address.
    #[cfg(feature = "object-store")]
    {
        let moto = weir_tests::moto::MotoServer::start();
        moto.create_bucket("weir-state");
        let on_moto = |name: &str, dir: &Path, prefix: &str| {
            let keys = format!(
                "\n[checkpoint]\nendpoint = \"{}\"\naccess-key-id = \"test\"\nsecret-access-key = \"test\"\n",
                moto.endpoint()
            );
            let text = wordcount(name, dir, &checked_by_panic_on("never")).replace(
                "partitions = 2\n",
                &format!("partitions = 2\ncheckpoint-dir = \"s3://weir-state/{prefix}\"\n"),
            );
            // [checkpoint] after [pipeline]'s keys, before the next table.
            text.replacen("\n[plugins]", &format!("{keys}\n[plugins]"), 1)
        };
        let third = start(
            &engine,
            &on_moto("third", b.path(), "third"),
            RunOptions::default(),
        );
        let c = scratch();
        let message = refused(&on_moto("fourth", c.path(), "third"));
        assert!(
            message.contains("its checkpoint directory s3://weir-state/third is already used by the running pipeline `third`"),
            "{message}"
        );
        let fifth = start(
            &engine,
            &on_moto("fifth", c.path(), "fifth"),
            RunOptions::default(),
        );
        for handle in [third, fifth] {
            handle.stop(StopMode::Now);
            handle.wait().unwrap();
        }
    }
    first.stop(StopMode::Now);
    first.wait().unwrap();
    // Once it has ended, the name is free again.
    let again = start(
        &engine,
        &wordcount("first", b.path(), &checked_by_panic_on("never")),
        RunOptions::default(),
    );
    assert_eq!(engine.supervisor().by_name("first").unwrap().id(), again.id());
    let named_first = engine
        .supervisor()
        .list()
        .iter()
        .filter(|handle| handle.name() == "first")
        .count();
    assert_eq!(named_first, 1, "the ended one is forgotten");
    again.stop(StopMode::Graceful);
    again.wait().unwrap();
}

/// Two pipelines with the same stages spill keyed state at once: each has
/// its own spill directory (derived from its id), so both stay exact.
#[test]
fn two_pipelines_spilling_keyed_state_at_once_stay_apart() {
    let engine = engine(2);
    let dirs = [scratch(), scratch()];
    let pipeline = |name: &str, dir: &Path| {
        std::fs::create_dir_all(dir.join("in")).unwrap();
        format!(
            r#"
[pipeline]
name = "{name}"
batch-interval = "50ms"
partitions = 2
[plugins]
key-by = {key_by:?}
running-total = {total:?}
[[source]]
name = "lines"
type = "files"
path = {input:?}
[[stage]]
name = "words"
input = "lines"
op = "map"
plugin = "key-by"
config = {{ field = "k", value-field = "v" }}
[[stage]]
name = "totals"
input = "words"
op = "update-state-by-key"
plugin = "running-total"
state-memory = "1KiB"
[[sink]]
input = "totals"
type = "files"
path = {out:?}
"#,
            key_by = plugins::JSON_KEY_BY,
            total = plugins::RUNNING_TOTAL,
            input = dir.join("in").display().to_string(),
            out = dir.join("out").display().to_string(),
        )
    };
    let texts = [sample_text(400, 7), sample_text(300, 8)];
    // One `{"k": key, "v": 1}` line per word, keyed by the word and its
    // position modulo 300 (enough keys to spill): a key's running total is
    // its count.
    let keys = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .enumerate()
            .map(|(i, word)| format!("{word}-{}", i % 300))
            .collect()
    };
    let as_json = |text: &str| -> String {
        keys(text)
            .iter()
            .map(|key| format!("{{\"k\":{key:?},\"v\":1}}\n"))
            .collect()
    };
    let handles: Vec<_> = dirs
        .iter()
        .zip(&texts)
        .enumerate()
        .map(|(i, (dir, text))| {
            add_file(dir.path(), "1.jsonl", &as_json(text));
            start(
                &engine,
                &pipeline(&format!("totals-{i}"), dir.path()),
                RunOptions {
                    available_now: true,
                    ..RunOptions::default()
                },
            )
        })
        .collect();
    for ((handle, dir), text) in handles.iter().zip(&dirs).zip(&texts) {
        let summary = handle.wait().expect("the pipeline ends cleanly");
        assert!(summary.state.spilled_keys > 0, "the state spilled: {summary:?}");
        // The last total of each word is its count.
        let mut last = std::collections::BTreeMap::new();
        for (_, line) in weir_tests::sink_lines(&dir.path().join("out")) {
            let (word, total) = line.split_once('\t').unwrap();
            last.insert(word.to_owned(), total.parse::<u64>().unwrap());
        }
        assert_eq!(last, word_counts(&keys(text).join(" ")));
    }
}

/// A map over the records of `dir/in` with the `busy` plugin (which spins
/// for as many milliseconds as a record says), one partition, into `dir/out`.
fn busy_map(name: &str, dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "50ms"
partitions = 1
[plugins]
busy = {busy:?}
[[source]]
name = "lines"
type = "files"
path = {input:?}
max-files-per-batch = 1
[[stage]]
name = "slow"
input = "lines"
op = "map"
plugin = "busy"
limits = {{ timeout = "3s" }}
[[sink]]
input = "slow"
type = "files"
path = {out:?}
"#,
        busy = plugins::BUSY,
        input = dir.join("in").display().to_string(),
        out = dir.join("out").display().to_string(),
    )
}

/// One worker, one pipeline in a plugin call of 1.5 s: another pipeline's
/// tasks (6 of 5 ms each, one per batch) run on the same worker between the
/// epoch ticks of that call, so it finishes while the long call is still
/// going, and the long call is not charged for them (its 3 s deadline
/// holds). Tasks of 5 ms are too long for their own driver to run them
/// while the worker is busy (it runs only tasks of up to 2 ms), so from the
/// third on (once their average says so) they must be lent the worker.
#[test]
fn a_long_plugin_call_lends_its_worker_to_other_pipelines() {
    let engine = engine(1);
    let (heavy_dir, light_dir) = (scratch(), scratch());
    add_file(heavy_dir.path(), "1.txt", "1500\n");
    let available_now = RunOptions {
        available_now: true,
        ..RunOptions::default()
    };
    let heavy = start(&engine, &busy_map("heavy", heavy_dir.path()), available_now);
    wait_for("the heavy call to start", || {
        heavy.metrics().stages[0].records_in == 1
    });
    for i in 0..6 {
        add_file(light_dir.path(), &format!("{i}.txt"), "5\n");
    }
    let light = start(&engine, &busy_map("light", light_dir.path()), available_now);
    light.wait().expect("the light pipeline ends");
    assert_eq!(light.metrics().batches, 6);
    assert_eq!(
        heavy.metrics().batches,
        0,
        "the light pipeline finished while the heavy call was still running"
    );
    assert!(engine.lent_tasks() >= 1, "{} tasks lent", engine.lent_tasks());
    heavy
        .wait()
        .expect("the heavy call finishes within its own deadline");
    let lines = |dir: &Path| -> Vec<String> {
        weir_tests::sink_lines(&dir.join("out"))
            .into_iter()
            .map(|(_, line)| line)
            .collect()
    };
    assert_eq!(lines(heavy_dir.path()), vec!["1500".to_owned()]);
    assert_eq!(lines(light_dir.path()), vec!["5".to_owned(); 6]);
}

/// A stage quarantined with `quarantine = "pause"` pauses the pipeline
/// after completing the batch; resuming it goes on with what was held back.
#[test]
fn a_quarantine_pause_can_be_resumed_without_losing_records() {
    let engine = engine(2);
    let dir = scratch();
    let text = wordcount("quarantined", dir.path(), &checked_by_panic_on("boom"))
        .replace(
            "config = { trigger = \"boom\" }\n",
            "config = { trigger = \"boom\" }\non-error = \"skip-batch\"\nquarantine-after = 1\nquarantine = \"pause\"\n",
        );
    let handle = start(&engine, &text, RunOptions::default());
    add_file(dir.path(), "1.txt", "boom\n");
    wait_for("the quarantine", || {
        handle.status().state == PipelineState::Paused
    });
    let because = handle.status().paused_because.unwrap();
    assert!(
        because.contains("stage `checked` quarantined after 1"),
        "{because}"
    );
    let good = sample_text(50, 4);
    add_file(dir.path(), "2.txt", &good);
    handle.resume().expect("a quarantined pipeline resumes");
    wait_for("the good file", || lines_in(&handle) == 51);
    handle.stop(StopMode::Graceful);
    handle.wait().expect("it ends cleanly");
    assert_eq!(summed_counts(&dir.path().join("out")), word_counts(&good));
}

#[test]
fn available_now_refuses_a_source_that_never_runs_out() {
    let engine = engine(1);
    let dir = scratch();
    let input = format!("path = {:?}", dir.path().join("in").display().to_string());
    let text = wordcount("endless", dir.path(), &checked_by_panic_on("never"))
        .replacen("type = \"files\"", "type = \"generator\"", 1)
        .replacen(&input, "rate = 1000", 1);
    let prepared = engine.prepare(&text, Path::new("endless.toml")).unwrap();
    let error = engine
        .start(
            prepared,
            RunOptions {
                available_now: true,
                ..RunOptions::default()
            },
        )
        .unwrap_err();
    assert!(error.is_usage_error());
    assert_eq!(
        error.to_string(),
        "pipeline `endless`: source `lines` is a generator without `lines`: it never runs out, so --available-now would never end"
    );
    assert!(engine.supervisor().list().is_empty(), "nothing was started");
}
