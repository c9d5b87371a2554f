//! Fault tolerance: the real binary killed with SIGKILL over and over —
//! at exact crash points (a batch just logged, a sink between writing and
//! renaming a batch, a checkpoint between its state files and its manifest,
//! a checkpoint just finished) and at random moments — and restarted with the
//! same command until it finishes; its files-sink output is then compared
//! with a reference computed here: no batch lost, none duplicated, every
//! batch exactly what it must be. Also: a corrupt checkpoint falls back to
//! the previous one, a changed plugin is refused, and a graceful stop
//! leaves a final checkpoint.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use weir_tests::{plugins, sample_text, scratch, sink_lines, stderr, write_pipeline};

use super::{LIMIT, run_file_ok, weir};

/// Input: `files` files of sample text, `lines` lines each, named in order.
fn text_files(dir: &Path, files: usize, lines: usize) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    (0..files)
        .map(|k| {
            let text = sample_text(lines, 1000 + k as u64);
            std::fs::write(dir.join(format!("f{k:04}.txt")), &text).unwrap();
            text
        })
        .collect()
}

/// A tiny xorshift for kill timings.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// How a crash run went.
#[derive(Debug, Default)]
pub(super) struct Crashes {
    /// Attempts killed by SIGKILL (at a crash point or from outside).
    pub(super) kills: usize,
    /// Of those, at each crash point.
    pub(super) at_points: BTreeMap<String, usize>,
}

/// Runs `file` with `--available-now` until an attempt finishes by itself:
/// one attempt per entry of `points` (a `WEIR_CRASH_AT` value), with
/// `random_kills` attempts killed from outside at random moments spread
/// among them, then one to the end.
pub(super) fn run_with_crashes(file: &Path, points: &[String], random_kills: usize, seed: u64) -> Crashes {
    let logged = file.parent().unwrap().join("checkpoints").join("offsets");
    run_watching(file, points, random_kills, seed, &|| last_logged_in(&logged))
}

/// The newest batch logged in the batch log directory `logged`.
fn last_logged_in(logged: &Path) -> Option<u64> {
    std::fs::read_dir(logged)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
        .max()
}

/// [`run_with_crashes`], with `last_logged` telling the newest batch in
/// the pipeline's batch log.
fn run_watching(
    file: &Path,
    points: &[String],
    random_kills: usize,
    seed: u64,
    last_logged: &dyn Fn() -> Option<u64>,
) -> Crashes {
    let mut crashes = Crashes::default();
    let mut rng = Rng(seed | 1);
    let log = file.with_extension("log");
    let start = |crash_at: Option<&str>| {
        let mut command = weir().command(&["run", file.to_str().unwrap(), "--available-now"]);
        if let Some(spec) = crash_at {
            command.env("WEIR_CRASH_AT", spec);
        }
        command.env("WEIR_LOG", "info");
        command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start weir")
    };
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let wait = |child: &mut std::process::Child, what: &str| {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {LIMIT:?}: {}", log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // Random moments: a random number of batches into the attempt (1 to 5
    // logged), plus a random few milliseconds, so kills land anywhere in a
    // batch whatever the machine's speed.
    let random_kill = |rng: &mut Rng, crashes: &mut Crashes| {
        let base = last_logged();
        let wanted = 1 + rng.below(5);
        let extra = Duration::from_millis(rng.below(4));
        let mut child = start(None);
        let deadline = Instant::now() + LIMIT;
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            let progressed = match (base, last_logged()) {
                (Some(base), Some(now)) => now >= base + wanted,
                (None, Some(now)) => now + 1 >= wanted,
                _ => false,
            };
            if progressed {
                std::thread::sleep(extra);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert_eq!(status.signal(), Some(9));
            crashes.kills += 1;
        } else {
            let status = child.wait().unwrap();
            assert!(status.success(), "a restarted run failed: {}", log_text());
        }
    };
    // The random kills are spread among the crash points, so that they land
    // early and late in the run, also where one attempt runs many batches
    // (a slow checkpoint store takes checkpoints further apart).
    let mut randoms_after: Vec<usize> = (1..=random_kills)
        .map(|i| i * points.len() / (random_kills + 1))
        .collect();
    for (index, spec) in points.iter().enumerate() {
        while randoms_after.first().is_some_and(|&after| after <= index) {
            randoms_after.remove(0);
            random_kill(&mut rng, &mut crashes);
        }
        let mut child = start(Some(spec));
        let status = wait(&mut child, &format!("the attempt with WEIR_CRASH_AT={spec}"));
        match status.signal() {
            Some(9) => {
                crashes.kills += 1;
                let point = spec.split(':').next().unwrap().to_owned();
                *crashes.at_points.entry(point).or_default() += 1;
            }
            _ => assert!(
                status.success(),
                "attempt with WEIR_CRASH_AT={spec} failed: {}",
                log_text()
            ),
        }
    }
    for _ in randoms_after {
        random_kill(&mut rng, &mut crashes);
    }
    let mut child = start(None);
    let status = wait(&mut child, "the last run");
    assert!(status.success(), "the last run failed: {}", log_text());
    crashes
}

/// Crash points for `batches` batches with a checkpoint every 3: every kind,
/// several times, at varying hits.
fn crash_points(rng: &mut Rng) -> Vec<String> {
    let mut points = Vec::new();
    for round in 0..4 {
        points.push(format!("batch-logged:{}", 2 + rng.below(4)));
        points.push(format!("sink-commit:{}", 1 + rng.below(4)));
        points.push(format!("checkpoint-state:{}", 1 + round % 2));
        points.push(format!("checkpoint-manifest:{}", 1 + rng.below(2)));
        points.push(format!("checkpoint-done:{}", 1 + rng.below(2)));
    }
    points
}

/// Where a test pipeline checkpoints: `checkpoint-dir`, and more keys of
/// `[checkpoint]`.
pub(super) struct CheckpointAt {
    /// The value of `checkpoint-dir`.
    pub dir: String,
    /// Lines added to `[checkpoint]`.
    pub keys: String,
    /// The newest batch in its batch log.
    pub last_logged: Box<dyn Fn() -> Option<u64>>,
}

impl CheckpointAt {
    /// `dir/checkpoints`.
    pub fn local(dir: &Path) -> Self {
        let logged = dir.join("checkpoints").join("offsets");
        Self {
            dir: dir.join("checkpoints").display().to_string(),
            keys: String::new(),
            last_logged: Box::new(move || last_logged_in(&logged)),
        }
    }
}

fn pipeline(name: &str, input: &Path, dir: &Path, stages: &str, extra_plugins: &str) -> PathBuf {
    pipeline_at(name, input, dir, stages, extra_plugins, &CheckpointAt::local(dir))
}

fn pipeline_at(
    name: &str,
    input: &Path,
    dir: &Path,
    stages: &str,
    extra_plugins: &str,
    at: &CheckpointAt,
) -> PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "1s"
partitions = 2
clock = "deterministic"
checkpoint-dir = {checkpoints:?}

[checkpoint]
every-batches = 3
keep = 2
{keys}
[plugins]
split-words = {split:?}
{extra_plugins}

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
input = "out"
type = "files"
path = {out:?}
"#,
        checkpoints = at.dir,
        keys = at.keys,
        split = plugins::SPLIT_WORDS,
        input = input.display().to_string(),
        out = dir.join("out").display().to_string(),
    );
    write_pipeline(dir, &format!("{name}.toml"), &text)
}

/// Every batch's lines, sorted, by batch id.
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

fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

fn counts<'a>(words: impl IntoIterator<Item = &'a str>) -> BTreeMap<&'a str, i64> {
    let mut counts = BTreeMap::new();
    for word in words {
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}

fn keyed_lines(map: &BTreeMap<&str, i64>) -> Vec<String> {
    let mut lines: Vec<String> = map.iter().map(|(k, v)| format!("{k}\t{v}")).collect();
    lines.sort();
    lines
}

/// Each batch's expected output lines from the input files' texts.
type Reference = Box<dyn Fn(&[String]) -> BTreeMap<u64, Vec<String>>>;

/// A pipeline killed again and again: its name, its stages after
/// `words`, the plugins they add, and what it must output.
pub(super) struct KilledCase {
    name: &'static str,
    stages: String,
    plugins: &'static str,
    reference: Reference,
}

impl KilledCase {
    /// The case's name (its directory under the test's root).
    #[cfg_attr(not(feature = "object-store"), allow(dead_code))]
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The pipelines [`run_killed_case`] runs, one per kind of state: none,
/// reduce-by-key, a sliding window with an inverse reducer, an event-time
/// window that spills, and keyed state (written incrementally).
pub(super) fn killed_cases() -> Vec<KilledCase> {
    let cases: Vec<(&str, String, &str, Reference)> = vec![
        (
            "stateless",
            "[[stage]]\nname = \"out\"\ninput = \"words\"\nop = \"filter\"\nplugin = \"drop-stopwords\"\nconfig = { stopwords = [\"the\"] }".into(),
            "drop-stopwords = \"DROP\"",
            Box::new(|files| {
                files
                    .iter()
                    .enumerate()
                    .filter_map(|(k, text)| {
                        let mut lines: Vec<String> =
                            words(text).into_iter().filter(|w| *w != "the").map(|w| format!("{w}\t{w}")).collect();
                        lines.sort();
                        (!lines.is_empty()).then_some((k as u64, lines))
                    })
                    .collect()
            }),
        ),
        (
            "reduce",
            "[[stage]]\nname = \"out\"\ninput = \"words\"\nop = \"reduce-by-key\"\nreducer = \"count\"".into(),
            "",
            Box::new(|files| {
                files
                    .iter()
                    .enumerate()
                    .map(|(k, text)| (k as u64, keyed_lines(&counts(words(text)))))
                    .collect()
            }),
        ),
        (
            "window",
            "[[stage]]\nname = \"out\"\ninput = \"words\"\nop = \"reduce-by-key-and-window\"\nreducer = \"count\"\nlength = \"4s\"\nslide = \"2s\"\ninverse = true\nstate-memory = \"4KiB\"".into(),
            "",
            Box::new(|files| {
                (0..files.len())
                    .filter(|k| (k + 1) % 2 == 0)
                    .map(|k| {
                        let window = files[(k + 1).saturating_sub(4)..=k].iter().flat_map(|t| words(t));
                        (k as u64, keyed_lines(&counts(window)))
                    })
                    .collect()
            }),
        ),
        (
            // Records carry their batch's time, (k + 1) s: tumbling 4 s
            // windows without lateness close 4 batches after they start.
            // Past 256 bytes of state, the oldest open window spills.
            "event-window",
            "[[stage]]\nname = \"out\"\ninput = \"words\"\nop = \"reduce-by-key-and-window\"\nreducer = \"count\"\ntime = \"event\"\nlength = \"4s\"\nallowed-lateness = \"0s\"\nstate-memory = \"256B\"".into(),
            "",
            Box::new(|files| {
                (4..files.len())
                    .step_by(4)
                    .map(|j| {
                        let window = files[j.saturating_sub(5)..j - 1].iter().flat_map(|t| words(t));
                        (j as u64, keyed_lines(&counts(window)))
                    })
                    .collect()
            }),
        ),
        (
            "state",
            "[[stage]]\nname = \"ones\"\ninput = \"words\"\nop = \"map\"\nplugin = \"one\"\n\n[[stage]]\nname = \"out\"\ninput = \"ones\"\nop = \"update-state-by-key\"\nplugin = \"running-total\"\nstate-memory = \"4KiB\"".into(),
            "running-total = \"TOTAL\"\none = \"ONE\"",
            Box::new(|files| {
                let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
                files
                    .iter()
                    .enumerate()
                    .map(|(k, text)| {
                        let batch = counts(words(text));
                        for (word, n) in &batch {
                            *totals.entry(word).or_default() += n;
                        }
                        let touched: BTreeMap<&str, i64> = batch.keys().map(|w| (*w, totals[w])).collect();
                        (k as u64, keyed_lines(&touched))
                    })
                    .collect()
            }),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, stages, plugins, reference)| KilledCase {
            name,
            stages,
            plugins,
            reference,
        })
        .collect()
}

/// The input of [`run_killed_case`]: `files` files of 80 lines under
/// `root/in`, one a batch; returns their texts.
pub(super) fn killed_input(root: &Path, files: usize) -> Vec<String> {
    text_files(&root.join("in"), files, 80)
}

#[test]
fn killed_pipelines_lose_and_duplicate_nothing() {
    let root = scratch();
    let files = killed_input(root.path(), 160);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for case in killed_cases() {
        let dir = root.path().join(case.name);
        run_killed_case(root.path(), &files, &case, &CheckpointAt::local(&dir), &mut rng);
    }
}

/// Runs `case` over [`killed_input`] (in `root`), checkpointing `at`, killed
/// at every kind of crash point and at random, then to its end, and checks
/// every batch's output against the case's reference.
pub(super) fn run_killed_case(
    root: &Path,
    files: &[String],
    case: &KilledCase,
    at: &CheckpointAt,
    rng: &mut Rng,
) {
    let KilledCase {
        name,
        stages,
        plugins: extra,
        reference,
    } = case;
    let input = root.join("in");
    {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let extra = extra
            .replace("\"DROP\"", &format!("{:?}", plugins::DROP_STOPWORDS))
            .replace("\"TOTAL\"", &format!("{:?}", plugins::RUNNING_TOTAL))
            .replace("\"ONE\"", &format!("{:?}", plugins::ONE));
        let file = pipeline_at(name, &input, &dir, stages, &extra, at);
        let points = crash_points(rng);
        let crashes = run_watching(&file, &points, 6, rng.below(u64::MAX), &*at.last_logged);
        assert!(
            crashes.kills >= 20,
            "{name}: only {} kills: {crashes:?}",
            crashes.kills
        );
        for point in [
            "batch-logged",
            "sink-commit",
            "checkpoint-state",
            "checkpoint-manifest",
            "checkpoint-done",
        ] {
            assert!(
                crashes.at_points.get(point).is_some_and(|n| *n > 0),
                "{name}: never killed at {point}: {crashes:?}"
            );
        }
        let expected = reference(files);
        let got = output_by_batch(&dir);
        let missing: Vec<&u64> = expected.keys().filter(|k| !got.contains_key(k)).collect();
        let extra_batches: Vec<&u64> = got.keys().filter(|k| !expected.contains_key(k)).collect();
        assert!(
            missing.is_empty() && extra_batches.is_empty(),
            "{name}: batches missing {missing:?}, unexpected {extra_batches:?}"
        );
        for (batch, lines) in &expected {
            assert_eq!(
                &got[batch], lines,
                "{name}: batch {batch} differs after {} kills",
                crashes.kills
            );
        }
    }
}

#[test]
fn a_corrupt_checkpoint_falls_back_and_a_changed_plugin_is_swapped_in_after_the_replay() {
    let root = scratch();
    let input = root.path().join("in");
    let files = text_files(&input, 9, 50);
    let dir = root.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let stages = "[[stage]]\nname = \"out\"\ninput = \"words\"\nop = \"reduce-by-key-and-window\"\nreducer = \"count\"\nlength = \"3s\"\ninverse = true";
    let file = pipeline("fallback", &input, &dir, stages, "");
    run_file_ok(&file);
    let first = output_by_batch(&dir);
    // Two checkpoints are kept (every 3 batches, keep 2; the final one after
    // the last batch, 8): usually of batches 5 and 8, but a checkpoint due
    // while the previous one is still being written waits for the next
    // batch. Corrupt the newest one's state and remove the output of the
    // batches after the older one: they must come back.
    let checkpoints = dir.join("checkpoints").join("checkpoints");
    let mut kept: Vec<PathBuf> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let older: u64 = kept[0].file_name().unwrap().to_str().unwrap().parse().unwrap();
    assert_eq!(
        kept[1].file_name().unwrap().to_str().unwrap(),
        format!("{:020}", 8)
    );
    // The window's state is written incrementally: corrupt the part only
    // the newest checkpoint lists (the last of its chain).
    let manifest: weir::checkpoint::Manifest =
        serde_json::from_slice(&std::fs::read(kept[1].join("manifest.json")).unwrap()).unwrap();
    let window = manifest
        .states
        .iter()
        .find(|state| state.operator == "out#1")
        .unwrap_or_else(|| panic!("no window state in {manifest:?}"));
    let newest_part = &window.parts.last().expect("a chain of parts").file;
    std::fs::write(dir.join("checkpoints").join(newest_part), b"not a part").unwrap();
    for batch in older + 1..9 {
        let _ = std::fs::remove_dir_all(dir.join("out").join(format!("batch-{batch:012}")));
    }
    let log = run_file_ok(&file);
    assert!(log.contains("unusable") && log.contains("falling back"), "{log}");
    let replayed = 8 - older;
    assert!(
        log.contains(&format!(
            "resumed after the checkpoint of batch {older}; {replayed} logged batches replayed"
        )),
        "batches {} to 8 replayed: {log}",
        older + 1
    );
    assert_eq!(output_by_batch(&dir), first);
    assert_eq!(first.len(), files.len());

    // Another build of the plugin (the same component plus a custom section,
    // so its content hash differs): the run resumes on the version the
    // checkpoint was taken with (kept in the checkpoint directory), and the
    // new one is swapped in after the replay, checked like any hot-load.
    let mut component = std::fs::read(plugins::SPLIT_WORDS).unwrap();
    component.extend_from_slice(&[0, 5, 4, b'n', b'o', b't', b'e']);
    let rebuilt = root.path().join("split-words-v2.wasm");
    std::fs::write(&rebuilt, component).unwrap();
    let changed = std::fs::read_to_string(&file).unwrap().replace(
        &format!("{:?}", plugins::SPLIT_WORDS),
        &format!("{:?}", rebuilt.display().to_string()),
    );
    std::fs::write(&file, changed).unwrap();
    let output = weir().run(&["run", file.to_str().unwrap(), "--available-now"], LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("the pipeline file's plugin version")
            && stderr(&output).contains("is swapped in after the replay"),
        "{}",
        stderr(&output)
    );
    // And again with a third build: the second one, swapped in after the
    // last replay, is kept to resume on.
    let original = std::fs::read(plugins::SPLIT_WORDS).unwrap();
    std::fs::write(
        &rebuilt,
        [&original[..], &[0, 5, 4, b't', b'h', b'r', b'd'][..]].concat(),
    )
    .unwrap();
    let output = weir().run(&["run", file.to_str().unwrap(), "--available-now"], LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    // Without a kept component to resume on, a change is refused unless allowed.
    let kept = dir.join("checkpoints").join("plugins");
    std::fs::remove_dir_all(&kept).unwrap();
    std::fs::write(
        &rebuilt,
        [&original[..], &[0, 5, 4, b'm', b'o', b'r', b'e'][..]].concat(),
    )
    .unwrap();
    let output = weir().run(&["run", file.to_str().unwrap(), "--available-now"], LIMIT);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("does not keep") && stderr(&output).contains("--allow-plugin-change"),
        "{}",
        stderr(&output)
    );
    let output = weir().run(
        &[
            "run",
            file.to_str().unwrap(),
            "--available-now",
            "--allow-plugin-change",
        ],
        LIMIT,
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

/// Idle batches are logged in place, in segments, not a file each; a
/// pipeline killed during an idle stretch replays those batches, with their
/// ids, before it takes new input, which it then counts exactly once.
#[test]
fn a_pipeline_killed_while_idle_replays_its_idle_batches_and_goes_on() {
    let root = scratch();
    let dir = root.path();
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let sink = format!(
        "[[sink]]\ninput = \"counts\"\ntype = \"files\"\npath = {:?}\n",
        dir.join("out").display().to_string()
    );
    let text = weir_tests::files_wordcount(dir, "idle", true, &sink);
    let file = write_pipeline(dir, "idle.toml", &text);
    let log = dir.join("checkpoints").join("offsets");
    let mut child = weir().spawn(&["run", file.to_str().unwrap()]);
    // 100 ms batches: about fifteen idle ones in 1.5 s.
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    let logged: Vec<String> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !logged.is_empty() && logged.iter().all(|name| name.ends_with(".idle")),
        "idle batches are logged in segments only: {logged:?}"
    );
    // New input, then the same command: the idle batches replay first.
    let all = weir_tests::write_inputs(dir, 3, 200, 70);
    let output = weir().run_logged(&["run", "--available-now", file.to_str().unwrap()], "info", LIMIT);
    let log_text = stderr(&output);
    assert!(output.status.success(), "{log_text}");
    let replayed: u64 = log_text
        .split("replaying ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no replay in the log:\n{log_text}"));
    assert!(replayed >= 5, "{replayed} idle batches replayed:\n{log_text}");
    let written = sink_lines(&dir.join("out"));
    assert!(
        written.iter().all(|(batch, _)| *batch >= replayed),
        "new input runs in batches after the replayed ones"
    );
    assert_eq!(
        weir_tests::summed_counts(&dir.join("out")),
        weir_tests::word_counts(&all),
        "every word counted once"
    );
}

/// The batch of the newest finished checkpoint under `dir/checkpoints`.
fn latest_checkpoint(dir: &Path) -> u64 {
    let latest = std::fs::read_to_string(dir.join("checkpoints").join("LATEST")).unwrap();
    latest.trim().parse().unwrap()
}

/// The generator lines that checkpoint `batch` records as consumed.
fn checkpointed_lines(dir: &Path, batch: u64) -> u64 {
    let manifest = std::fs::read_to_string(
        dir.join("checkpoints")
            .join("checkpoints")
            .join(format!("{batch:020}"))
            .join("manifest.json"),
    )
    .unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    manifest["sources"][0]["position"]["lines"].as_u64().unwrap()
}

/// The sum of the counts in `word<TAB>count` sink lines.
fn total_count(lines: &[(u64, String)]) -> u64 {
    lines
        .iter()
        .map(|(_, line)| line.split_once('\t').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn a_graceful_stop_writes_a_final_checkpoint_and_resumes_where_it_stopped() {
    let root = scratch();
    let input = root.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let dir = root.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        r#"
[pipeline]
name = "graceful"
batch-interval = "20ms"
partitions = 2
checkpoint-dir = {checkpoints:?}

[checkpoint]
every-batches = 1000

[plugins]
split-words = {split:?}

[[source]]
name = "lines"
type = "generator"
lines = 50000000
rate = 20000

[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "split-words"

[[stage]]
name = "out"
input = "words"
op = "reduce-by-key"
reducer = "count"

[[sink]]
input = "out"
type = "files"
path = {out:?}
"#,
        checkpoints = dir.join("checkpoints").display().to_string(),
        split = plugins::SPLIT_WORDS,
        out = dir.join("out").display().to_string(),
    );
    let file = write_pipeline(&dir, "graceful.toml", &text);
    let child = weir().spawn(&["run", file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1500));
    weir_tests::terminate(&child);
    let output = weir_tests::wait_output(child, LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    let last_batch = latest_checkpoint(&dir);
    let written: Vec<(u64, String)> = sink_lines(&dir.join("out"));
    let max_written = written.iter().map(|(b, _)| *b).max().unwrap();
    assert_eq!(
        last_batch, max_written,
        "the final checkpoint covers the last batch"
    );
    // The manifest says where the generator stood: the lines counted so far.
    // 8 words per generated line: every line generated before the stop was counted once.
    assert_eq!(total_count(&written), checkpointed_lines(&dir, last_batch) * 8);
    // Restarted, it goes on from there: batch ids continue.
    let child = weir().spawn(&["run", file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1000));
    weir_tests::terminate(&child);
    let output = weir_tests::wait_output(child, LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    let after: Vec<(u64, String)> = sink_lines(&dir.join("out"));
    assert!(after.iter().any(|(b, _)| *b > last_batch));
    let resumed_latest = latest_checkpoint(&dir);
    assert_eq!(
        total_count(&after),
        checkpointed_lines(&dir, resumed_latest) * 8,
        "no line lost or counted twice across the restart"
    );
}

/// A producer for the socket source: a TCP server that streams numbered
/// lines to whoever connects (Weir), never resending a line, and records
/// which lines Weir acknowledged (`ack <n>`: the first `n` lines of this
/// connection are in its write-ahead log).
struct Feeder {
    port: u16,
    total: usize,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Feeder {
    fn start(total: usize) -> Self {
        use std::io::{BufRead, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (next_for_server, acked_for_server) = (next.clone(), acked.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
                let (reader, sent_for_reader, acked) = (
                    stream.try_clone().unwrap(),
                    sent.clone(),
                    acked_for_server.clone(),
                );
                std::thread::spawn(move || {
                    // Acks count lines of this connection: only the new ones are added.
                    let mut counted = 0;
                    for line in std::io::BufReader::new(reader).lines() {
                        let Ok(line) = line else { break };
                        if let Some(n) = line.strip_prefix("ack ").and_then(|n| n.parse::<usize>().ok()) {
                            let sent = sent_for_reader.lock().unwrap();
                            let upto = n.min(sent.len());
                            if upto > counted {
                                acked.lock().unwrap().extend(sent[counted..upto].iter().copied());
                                counted = upto;
                            }
                        }
                    }
                });
                let next = next_for_server.clone();
                std::thread::spawn(move || {
                    let mut stream = stream;
                    loop {
                        let start = next.fetch_add(40, Ordering::SeqCst);
                        if start >= total {
                            let _ = stream.shutdown(std::net::Shutdown::Write);
                            break;
                        }
                        let end = (start + 40).min(total);
                        let text: String = (start..end).map(|i| format!("line-{i:07}\n")).collect();
                        sent.lock().unwrap().extend(start..end);
                        if stream.write_all(text.as_bytes()).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                });
            }
        });
        Self {
            port,
            total,
            next,
            acked,
        }
    }
}

#[test]
fn a_killed_socket_pipeline_keeps_every_acknowledged_line_once_through_its_write_ahead_log() {
    let root = scratch();
    let dir = root.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let feeder = Feeder::start(150_000);
    let text = format!(
        r#"
[pipeline]
name = "socket-wal"
batch-interval = "50ms"
partitions = 2
checkpoint-dir = {checkpoints:?}

[checkpoint]
every-batches = 4
keep = 2

[plugins]
lowercase = {lowercase:?}

[[source]]
name = "lines"
type = "socket"
address = "127.0.0.1:{port}"
max-backoff = "200ms"
ack = true

[[stage]]
name = "out"
input = "lines"
op = "map"
plugin = "lowercase"

[[sink]]
input = "out"
type = "files"
path = {out:?}
"#,
        checkpoints = dir.join("checkpoints").display().to_string(),
        lowercase = plugins::LOWERCASE,
        port = feeder.port,
        out = dir.join("out").display().to_string(),
    );
    let file = write_pipeline(&dir, "socket.toml", &text);
    let mut rng = Rng(0xfeed_f00d_1234_5678);
    let mut points = Vec::new();
    for _ in 0..3 {
        points.push(format!("batch-logged:{}", 2 + rng.below(6)));
        points.push(format!("sink-commit:{}", 2 + rng.below(6)));
        points.push(format!("checkpoint-state:{}", 1 + rng.below(2)));
        points.push(format!("checkpoint-done:{}", 1 + rng.below(2)));
    }
    let crashes = run_with_crashes(&file, &points, 10, rng.below(u64::MAX));
    assert!(crashes.kills >= 20, "only {} kills: {crashes:?}", crashes.kills);
    assert!(feeder.next.load(std::sync::atomic::Ordering::SeqCst) >= feeder.total);
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    for (_, line) in sink_lines(&dir.join("out")) {
        let number: usize = line
            .strip_prefix("line-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line:?}"));
        *seen.entry(number).or_default() += 1;
    }
    let duplicated: Vec<(&usize, &usize)> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        duplicated.is_empty(),
        "lines output more than once: {duplicated:?}"
    );
    let mut acked = feeder.acked.lock().unwrap().clone();
    acked.sort_unstable();
    let before = acked.len();
    acked.dedup();
    assert_eq!(
        acked.len(),
        before,
        "a line acknowledged twice: the feeder sent it twice"
    );
    assert!(
        acked.len() > feeder.total / 2,
        "only {} of {} lines acknowledged",
        acked.len(),
        feeder.total
    );
    let lost: Vec<&usize> = acked
        .iter()
        .filter(|line| !seen.contains_key(line))
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged lines missing from the output: {lost:?} (of {})",
        acked.len()
    );
}

/// A tmpfs of `size` mounted at `dir` for the life of the guard.
struct TinyDisk(PathBuf);

impl TinyDisk {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("cannot run mount");
        assert!(
            status.success(),
            "this test mounts a {size} tmpfs to fill a disk for real; it needs root (or CAP_SYS_ADMIN)"
        );
        Self(dir.to_owned())
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_pipeline_with_a_clear_error_and_it_resumes_once_space_is_freed() {
    let root = scratch();
    let input = root.path().join("in");
    let files = text_files(&input, 40, 40);
    let dir = root.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let disk = root.path().join("disk");
    let _mounted = TinyDisk::mount(&disk, "512k");
    // Leave a few pages: enough for some batches and checkpoints, not all.
    let filler = disk.join("filler");
    std::fs::write(&filler, vec![0u8; 492 * 1024]).unwrap();
    let stages = "[[stage]]\nname = \"out\"\ninput = \"words\"\nop = \"reduce-by-key-and-window\"\nreducer = \"count\"\nlength = \"3s\"\ninverse = true";
    let file = pipeline("full", &input, &dir, stages, "");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        &format!("{:?}", dir.join("checkpoints").display().to_string()),
        &format!("{:?}", disk.join("checkpoints").display().to_string()),
    );
    std::fs::write(&file, text).unwrap();
    let output = weir().run(&["run", file.to_str().unwrap(), "--available-now"], LIMIT);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let log = stderr(&output);
    assert!(log.contains("No space left on device"), "{log}");
    assert!(
        log.contains("checkpoint directory"),
        "the error says what was being written where: {log}"
    );
    let partial = output_by_batch(&dir);
    assert!(
        partial.len() < files.len(),
        "the disk never filled: {} batches",
        partial.len()
    );

    std::fs::remove_file(&filler).unwrap();
    run_file_ok(&file);
    // Every window, exactly once, as if nothing had happened.
    let expected: BTreeMap<u64, Vec<String>> = (0..files.len())
        .map(|k| {
            let window = files[(k + 1).saturating_sub(3)..=k].iter().flat_map(|t| words(t));
            (k as u64, keyed_lines(&counts(window)))
        })
        .collect();
    assert_eq!(output_by_batch(&dir), expected);
}
