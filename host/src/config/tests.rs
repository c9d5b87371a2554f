use std::path::Path;

use super::*;

const WORDCOUNT: &str = r#"
[pipeline]
name = "wordcount"
batch-interval = "1s"
partitions = 2

[plugins]
split-words = "target/wasm32-wasip2/release/split_words.wasm"

[[source]]
name = "lines"
type = "socket"
address = "127.0.0.1:9999"

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
type = "console"
"#;

fn invalid(text: &str) -> (usize, String) {
    match parse(text, Path::new("p.toml")) {
        Err(ConfigError::Invalid { line, message, .. }) => (line, message),
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

#[test]
fn the_issue_example_parses() {
    let spec = parse(WORDCOUNT, Path::new("dir/p.toml")).unwrap();
    assert_eq!(spec.name, "wordcount");
    assert_eq!(spec.batch_interval, std::time::Duration::from_secs(1));
    assert_eq!(spec.partitions, 2);
    assert_eq!(
        spec.plugins["split-words"],
        Path::new("dir/target/wasm32-wasip2/release/split_words.wasm")
    );
    assert_eq!(spec.stages[0].name, "words");
    assert!(matches!(
        spec.stages[1].op,
        OperatorSpec::ReduceByKey {
            reducer: ReducerSpec::Builtin(BuiltinReducer::Count),
            ..
        }
    ));
    assert_eq!(spec.sinks[0].name, "console-counts");
    assert_eq!(spec.sources[0].line, 10);
}

#[test]
fn syntax_errors_name_the_line() {
    let text = WORDCOUNT.replace("partitions = 2", "partitions = ");
    let error = parse(&text, Path::new("p.toml")).unwrap_err().to_string();
    assert!(error.contains("line 5"), "{error}");
    let text = WORDCOUNT.replace("op = \"flat-map\"", "op = \"flat-map\"\nbogus = 1");
    let error = parse(&text, Path::new("p.toml")).unwrap_err().to_string();
    assert!(error.contains("bogus") && error.contains("line"), "{error}");
}

#[test]
fn semantic_errors_name_the_line() {
    let (line, message) = invalid(&WORDCOUNT.replace("input = \"words\"", "input = \"wrods\""));
    assert_eq!(line, 23);
    assert!(message.contains("unknown stream `wrods`"), "{message}");

    let (_, message) = invalid(&WORDCOUNT.replace("input = \"lines\"", "input = \"counts\""));
    assert!(message.contains("cycle"), "{message}");

    let (line, message) = invalid(&WORDCOUNT.replace("plugin = \"split-words\"", "plugin = \"nope\""));
    assert_eq!(line, 19);
    assert!(message.contains("unknown plugin `nope`"), "{message}");

    let (_, message) = invalid(&WORDCOUNT.replace("batch-interval = \"1s\"", "batch-interval = \"soon\""));
    assert!(message.contains("invalid duration"), "{message}");

    let (_, message) = invalid(&WORDCOUNT.replace(
        "reducer = \"count\"",
        "reducer = \"count\"\nplugin = \"split-words\"",
    ));
    assert!(
        message.contains("`plugin` is not a setting of op `reduce-by-key`"),
        "{message}"
    );

    let (_, message) = invalid(&WORDCOUNT.replace("type = \"socket\"", "type = \"kafka\""));
    assert!(message.contains("unknown source type `kafka`"), "{message}");

    let (_, message) = invalid(&WORDCOUNT.replace("name = \"counts\"", "name = \"words\""));
    assert!(message.contains("defined twice"), "{message}");

    let (_, message) = invalid(&WORDCOUNT.replace("partitions = 2", "partitions = 0"));
    assert!(message.contains("partitions must be between 1"), "{message}");
}

#[test]
fn config_values_become_text() {
    let text = WORDCOUNT.replace(
        "plugin = \"split-words\"",
        "plugin = \"split-words\"\nconfig = { min = 3, words = [\"a\", \"b\"], strict = true }",
    );
    let spec = parse(&text, Path::new("p.toml")).unwrap();
    let OperatorSpec::Transform { config, .. } = &spec.stages[0].op else {
        panic!("transform expected")
    };
    assert_eq!(
        config,
        &[
            ("min".to_owned(), "3".to_owned()),
            ("strict".to_owned(), "true".to_owned()),
            ("words".to_owned(), "a,b".to_owned())
        ]
    );
}

#[test]
fn dead_letters_need_a_sink() {
    let text = WORDCOUNT.replace(
        "plugin = \"split-words\"",
        "plugin = \"split-words\"\non-error = \"dead-letter\"",
    );
    let (_, message) = invalid(&text);
    assert!(message.contains("no sink reads `dead-letters`"), "{message}");
    let with_sink = format!("{text}\n[[sink]]\ninput = \"dead-letters\"\ntype = \"console\"\n");
    assert!(parse(&with_sink, Path::new("p.toml")).is_ok());
    let (_, message) = invalid(&format!(
        "{WORDCOUNT}\n[[sink]]\ninput = \"dead-letters\"\ntype = \"console\"\n"
    ));
    assert!(message.contains("no stage has on-error"), "{message}");
}

#[test]
fn durations_out_of_range_are_errors_not_panics() {
    for interval in ["0ms", "100000000000years"] {
        let text = WORDCOUNT.replace(
            "batch-interval = \"1s\"",
            &format!("batch-interval = \"{interval}\""),
        );
        let (line, message) = invalid(&text);
        assert_eq!(line, 4);
        assert!(message.contains("between 1ms and 1 day"), "{message}");
    }
}

#[test]
fn checkpoint_settings_are_checked() {
    let checkpointed = WORDCOUNT.replace("partitions = 2\n", "partitions = 2\ncheckpoint-dir = \"ck\"\n");
    assert!(
        parse(&checkpointed, Path::new("p.toml"))
            .unwrap()
            .checkpoint
            .is_some()
    );
    let (_, message) = invalid(&format!("{checkpointed}\n[checkpoint]\nwal-sync = \"fast\"\n"));
    assert!(
        message.contains("wal-sync must be \"block\" or an interval"),
        "{message}"
    );
    let (_, message) = invalid(&format!("{WORDCOUNT}\n[checkpoint]\nkeep = 2\n"));
    assert!(message.contains("needs `checkpoint-dir`"), "{message}");
}
