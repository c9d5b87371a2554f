//! The Elasticsearch sink against a real server of the Elasticsearch REST
//! API (noida-db): documents overwritten by id hold every count exactly
//! once over kill -9; indexes by date; documents the server refuses go to
//! the dead-letter index or fail the run; an absent server is a clear error.

use std::collections::BTreeMap;
use std::path::Path;

use weir_tests::elasticsearch::{Elasticsearch, json};
use weir_tests::{files_wordcount, scratch, stderr, word_counts, write_inputs, write_pipeline};

/// The word count of `dir/in` into an Elasticsearch sink at `url` with `sink_extra`.
fn pipeline(dir: &Path, url: &str, sink_extra: &str) -> String {
    let sink = format!(
        "[[sink]]\nname = \"search\"\ninput = \"counts\"\ntype = \"elasticsearch\"\nurl = \"{url}\"\n{sink_extra}\n"
    );
    files_wordcount(dir, "es-wordcount", true, &sink)
}

fn input(dir: &Path, files: usize, lines: usize) -> String {
    write_inputs(dir, files, lines, 5)
}

fn run(file: &Path) -> std::process::Output {
    super::weir().run(&["run", file.to_str().unwrap(), "--available-now"], super::LIMIT)
}

#[test]
fn documents_overwritten_by_id_hold_every_count_once_over_kill_9() {
    let es = Elasticsearch::start();
    let dir = scratch();
    let text = input(dir.path(), 120, 8);
    // One document per word and batch: their sum is the word's count.
    let file = write_pipeline(
        dir.path(),
        "es.toml",
        &pipeline(
            dir.path(),
            &es.url(),
            "index = \"counts-{date}\"\nid = \"{key}@{batch}\"\nrecords-per-request = 5",
        ),
    );
    let mut rng = super::recovery::Rng(0xe5_0001);
    let mut points = Vec::new();
    for _ in 0..3 {
        points.push(format!("es-bulk-sent:{}", 1 + rng.below(8)));
        points.push(format!("batch-logged:{}", 2 + rng.below(4)));
        points.push(format!("checkpoint-done:{}", 1 + rng.below(2)));
    }
    let crashes = super::recovery::run_with_crashes(&file, &points, 12, 29);
    assert!(crashes.kills >= 20, "only {} kills: {crashes:?}", crashes.kills);
    let indexes = es.call("GET", "/_cat/indices?format=json", None);
    let names: Vec<String> = indexes
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|i| i["index"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let dated: Vec<&String> = names.iter().filter(|n| n.starts_with("counts-")).collect();
    assert!(!dated.is_empty(), "no counts-YYYY.MM.DD index: {indexes}");
    let mut totals = BTreeMap::new();
    for index in dated {
        assert!(
            index.len() == "counts-2026.12.01".len() && index.as_bytes()[11] == b'.',
            "{index} is not counts-YYYY.MM.DD"
        );
        for (id, document) in es.documents(index) {
            let key = document["key"].as_str().unwrap().to_owned();
            assert!(id.starts_with(&format!("{key}@")), "id {id} of {document}");
            let count: u64 = document["value"].as_str().unwrap().parse().unwrap();
            *totals.entry(key).or_insert(0) += count;
        }
    }
    assert_eq!(totals, word_counts(&text), "after {crashes:?}");
}

#[test]
fn refused_documents_go_to_the_dead_letter_index_or_fail_the_run() {
    let es = Elasticsearch::start();
    // Keys are words; this index takes only numbers as keys.
    es.call(
        "PUT",
        "/strict",
        Some(json!({"mappings": {"properties": {"key": {"type": "long"}}}})),
    );
    let dir = scratch();
    let text = input(dir.path(), 2, 10);
    let words = word_counts(&text).len();
    let file = write_pipeline(
        dir.path(),
        "es.toml",
        &pipeline(
            dir.path(),
            &es.url(),
            "index = \"strict\"\non-error = \"dead-letter\"\ndead-letter-index = \"{pipeline}-refused\"",
        ),
    );
    let output = run(&file);
    assert!(output.status.success(), "{}", stderr(&output));
    let letters = es.documents("es-wordcount-refused");
    assert!(
        letters.len() >= words,
        "{} dead letters for {words} words",
        letters.len()
    );
    let letter = letters.values().next().unwrap();
    assert_eq!(letter["index"], "strict");
    assert_eq!(letter["status"], 400);
    assert!(letter["reason"].as_str().unwrap().contains("key"), "{letter}");
    assert!(
        letter["document"].as_str().unwrap().contains("\"value\""),
        "{letter}"
    );

    // Without a dead-letter index the run fails with the document and the reason.
    let dir = scratch();
    input(dir.path(), 1, 5);
    let file = write_pipeline(
        dir.path(),
        "es.toml",
        &pipeline(dir.path(), &es.url(), "index = \"strict\""),
    );
    let output = run(&file);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains("sink `search`: batch 0:") && log.contains("document(s) refused; the first: document `"),
        "{log}"
    );
}

#[test]
fn an_absent_server_fails_after_retry_for_and_bad_settings_are_refused() {
    let dir = scratch();
    input(dir.path(), 1, 5);
    let url = format!("http://127.0.0.1:{}", weir_tests::free_port());
    let file = write_pipeline(
        dir.path(),
        "es.toml",
        &pipeline(dir.path(), &url, "retry-for = \"500ms\""),
    );
    let output = run(&file);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains(&format!("POST {url}/_bulk failed")) && log.contains("(retried for 500ms)"),
        "{log}"
    );
    let bad = write_pipeline(
        dir.path(),
        "bad.toml",
        &pipeline(dir.path(), &url, "index = \"x-{key}\""),
    );
    let output = super::weir().run(&["check", bad.to_str().unwrap()], super::LIMIT);
    assert!(
        stderr(&output).contains(
            "unknown placeholder `{key}` in template \"x-{key}\" (expected {pipeline}, {sink}, {date})"
        ),
        "{}",
        stderr(&output)
    );
}
