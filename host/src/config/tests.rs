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

    let (_, message) = invalid(&WORDCOUNT.replace("type = \"socket\"", "type = \"nats\""));
    assert!(message.contains("unknown source type `nats`"), "{message}");

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
    // Keyed state's compaction: a full part every 50 checkpoints at most
    // unless told otherwise; at least 1.
    let settings = |extra: &str| {
        parse(
            &format!("{checkpointed}\n[checkpoint]\n{extra}\n"),
            Path::new("p.toml"),
        )
        .unwrap()
        .checkpoint
        .unwrap()
    };
    assert_eq!(settings("").full_every, 50);
    assert_eq!(settings("full-every = 4").full_every, 4);
    let (_, message) = invalid(&format!("{checkpointed}\n[checkpoint]\nfull-every = 0\n"));
    assert!(message.contains("full-every must be between 1 and"), "{message}");
}

fn syntax_error(text: &str) -> String {
    match parse(text, Path::new("p.toml")) {
        Err(ConfigError::Syntax { message, .. }) => message,
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn every_source_kind_takes_max_rate_and_backpressure() {
    use crate::source::rate::RateSpec;
    let rate = |source: &str| {
        let text = WORDCOUNT.replace("type = \"socket\"\naddress = \"127.0.0.1:9999\"", source);
        parse(&text, Path::new("p.toml")).unwrap().sources[0].rate
    };
    for kind in [
        "type = \"socket\"\naddress = \"127.0.0.1:9999\"",
        "type = \"files\"\npath = \"in\"",
        "type = \"generator\"",
        "type = \"stdin\"",
    ] {
        assert_eq!(rate(kind), RateSpec::default(), "{kind}");
        assert_eq!(
            rate(&format!("{kind}\nmax-rate = 500")),
            RateSpec {
                max_rate: Some(500),
                backpressure_min_rate: None,
                backpressure_initial_rate: None
            },
            "{kind}"
        );
        assert_eq!(
            rate(&format!("{kind}\nbackpressure = true")),
            RateSpec {
                max_rate: None,
                backpressure_min_rate: Some(100),
                backpressure_initial_rate: None
            },
            "{kind}: the minimum rate defaults to 100"
        );
    }
    assert_eq!(
        rate(
            "type = \"generator\"\nmax-rate = 5000\nbackpressure = true\nbackpressure-min-rate = 10\nbackpressure-initial-rate = 2000"
        ),
        RateSpec {
            max_rate: Some(5000),
            backpressure_min_rate: Some(10),
            backpressure_initial_rate: Some(2000)
        }
    );
    assert_eq!(
        rate("type = \"generator\"\nbackpressure = false"),
        RateSpec::default()
    );
    let socket = |extra: &str| WORDCOUNT.replace("address = \"127.0.0.1:9999\"", extra);
    let (line, message) = invalid(&socket("address = \"127.0.0.1:9999\"\nmax-rate = 0"));
    assert_eq!(line, 14);
    assert!(message.contains("max-rate must be between 1 and"), "{message}");
    let (_, message) = invalid(&socket("address = \"a:1\"\nbackpressure-min-rate = 10"));
    assert!(
        message.contains("`backpressure-min-rate` needs `backpressure = true`"),
        "{message}"
    );
    let (_, message) = invalid(&socket("address = \"a:1\"\nbackpressure-initial-rate = 10"));
    assert!(
        message.contains("`backpressure-initial-rate` needs `backpressure = true`"),
        "{message}"
    );
    let (_, message) = invalid(&socket(
        "address = \"a:1\"\nmax-rate = 50\nbackpressure = true\nbackpressure-min-rate = 60",
    ));
    assert!(
        message.contains("backpressure-min-rate (60) is above max-rate (50)"),
        "{message}"
    );
    let deterministic = WORDCOUNT
        .replace(
            "batch-interval = \"1s\"",
            "batch-interval = \"1s\"\nclock = \"deterministic\"",
        )
        .replace(
            "type = \"socket\"\naddress = \"127.0.0.1:9999\"",
            "type = \"generator\"\nrecords-per-batch = 10\nbackpressure = true",
        );
    let (_, message) = invalid(&deterministic);
    assert!(
        message.contains("cannot use `backpressure` under clock = \"deterministic\""),
        "{message}"
    );
    let paced = deterministic.replace("backpressure = true", "max-rate = 10");
    assert_eq!(
        parse(&paced, Path::new("p.toml")).unwrap().sources[0]
            .rate
            .max_rate,
        Some(10),
        "max-rate paces a deterministic source"
    );
}

#[test]
fn source_keys_are_checked_against_their_kind() {
    let socket = |extra: &str| WORDCOUNT.replace("address = \"127.0.0.1:9999\"", extra);

    let message = syntax_error(&socket("address = \"127.0.0.1:9999\"\nbogus = 1"));
    assert!(message.contains("line 14"), "{message}");
    assert!(
        message.contains(
            "unknown field `bogus`, expected one of `name`, `type`, `max-rate`, `backpressure`, `backpressure-min-rate`, `backpressure-initial-rate`, `address`, `mode`"
        ),
        "{message}"
    );
    let message = syntax_error(&socket("address = \"127.0.0.1:9999\"\nack = \"yes\""));
    assert!(
        message.contains("invalid type: string \"yes\", expected a boolean"),
        "{message}"
    );
    let message = syntax_error(&WORDCOUNT.replace("name = \"lines\"\n", ""));
    assert!(message.contains("missing field `name`"), "{message}");

    let (line, message) = invalid(&socket("address = \"127.0.0.1:9999\"\npath = \"in\""));
    assert_eq!(line, 14);
    assert_eq!(
        message,
        "`path` is not a setting of a `socket` source (it accepts address, mode, max-backoff, connect-timeout, ack)"
    );
    let (line, message) = invalid(&socket("mode = \"listen\""));
    assert_eq!(line, 10);
    assert_eq!(message, "a socket source needs `address`");
    let (_, message) = invalid(&WORDCOUNT.replace("type = \"socket\"", "type = \"stdin\""));
    assert_eq!(
        message,
        "`address` is not a setting of a `stdin` source (it takes no other keys)"
    );
    let (_, message) = invalid(&WORDCOUNT.replace("type = \"socket\"", "type = \"nats\""));
    assert_eq!(
        message,
        "unknown source type `nats` (expected socket, files, generator, stdin, kafka, redis-stream or zeromq)"
    );
    let (_, message) = invalid(&WORDCOUNT.replace("type = \"socket\"", "type = \"kafka\""));
    assert_eq!(
        message,
        "`address` is not a setting of a `kafka` source (it accepts brokers, topics, group-id, start, \
         max-rate-per-partition, records-per-batch, discovery-interval, give-up-after, properties)"
    );
    let (_, message) = invalid(&socket("address = \"127.0.0.1:9999\"\nack = true"));
    assert!(
        message.starts_with("`ack` needs `checkpoint-dir` in [pipeline]"),
        "{message}"
    );
}

#[test]
fn each_source_kind_parses_its_own_settings() {
    let generator = WORDCOUNT.replace(
        "type = \"socket\"\naddress = \"127.0.0.1:9999\"",
        "type = \"generator\"\nlines = 100\nrecords-per-batch = 10",
    );
    let spec = parse(&generator, Path::new("p.toml")).unwrap();
    let settings = spec.sources[0].kind.settings::<GeneratorSpec>().unwrap();
    assert_eq!(settings.lines, Some(100));
    assert_eq!(settings.records_per_batch, Some(10));
    assert_eq!(settings.words_per_line, 8);
    assert!(spec.sources[0].kind.settings::<FilesSpec>().is_none());

    let deterministic = generator.replace("partitions = 2", "partitions = 2\nclock = \"deterministic\"");
    assert!(parse(&deterministic, Path::new("p.toml")).is_ok());
    let (line, message) = invalid(&deterministic.replace("records-per-batch = 10", "rate = 5"));
    assert_eq!(line, 11);
    assert!(
        message.starts_with("source `lines` cannot run under clock = \"deterministic\""),
        "{message}"
    );

    let files = WORDCOUNT.replace(
        "type = \"socket\"\naddress = \"127.0.0.1:9999\"",
        "type = \"files\"\npath = \"in\"\nmax-files-per-batch = 2",
    );
    let spec = parse(&files, Path::new("dir/p.toml")).unwrap();
    let settings = spec.sources[0].kind.settings::<FilesSpec>().unwrap();
    assert_eq!(settings.dir.path(), Path::new("dir/in"));
    assert_eq!(settings.max_files_per_batch, Some(2));
}

#[test]
fn sink_keys_are_checked_against_their_kind() {
    let sink = |body: &str| WORDCOUNT.replace("input = \"counts\"\ntype = \"console\"", body);

    let (_, message) = invalid(&sink("input = \"counts\"\ntype = \"nats\""));
    assert_eq!(
        message,
        "unknown sink type `nats` (expected console, files, kafka, redis, http, elasticsearch or plugin)"
    );
    let (_, message) = invalid(&sink("input = \"counts\"\ntype = \"kafka\""));
    assert_eq!(message, "a `kafka` sink needs `brokers`");
    let (_, message) = invalid(&sink(
        "input = \"counts\"\ntype = \"console\"\nformat = \"jsonl\"",
    ));
    assert_eq!(
        message,
        "`format` is not a setting of a `console` sink (it accepts max-records)"
    );
    let (line, message) = invalid(&sink("input = \"counts\"\ntype = \"files\""));
    assert_eq!(line, 27);
    assert_eq!(message, "a `files` sink needs `path`");
    let (_, message) = invalid(&sink(
        "input = \"counts\"\ntype = \"files\"\npath = \"out\"\nformat = \"csv\"",
    ));
    assert_eq!(message, "unknown format `csv` (expected text or jsonl)");
    let message = syntax_error(&sink("type = \"console\""));
    assert!(message.contains("missing field `input`"), "{message}");
    let message = syntax_error(&sink("input = \"counts\"\ntype = \"console\"\nlines = 3"));
    assert!(
        message.contains(
            "unknown field `lines`, expected one of `name`, `input`, `type`, `max-records`, `path`, `format`"
        ),
        "{message}"
    );

    let spec = parse(
        &sink("input = \"counts\"\ntype = \"files\"\npath = \"out\"\nformat = \"jsonl\""),
        Path::new("dir/p.toml"),
    )
    .unwrap();
    assert_eq!(spec.sinks[0].name, "files-counts");
    let settings = spec.sinks[0]
        .kind
        .settings::<crate::sink::files::FilesSinkSpec>()
        .unwrap();
    // Irrefutable in a build without the `object-store` feature.
    #[allow(irrefutable_let_patterns)]
    let crate::sink::files::FilesTarget::Local(dir) = &settings.target else {
        panic!("a local directory: {:?}", settings.target);
    };
    assert_eq!(dir.path(), Path::new("dir/out"));
    assert_eq!(settings.format, FileFormat::Jsonl);
}

#[test]
fn stage_ops_and_their_keys_come_from_one_table() {
    let (line, message) = invalid(&WORDCOUNT.replace("op = \"reduce-by-key\"", "op = \"reduce-by-kee\""));
    assert_eq!(line, 24, "the op line");
    assert_eq!(
        message,
        "unknown op `reduce-by-kee` (expected map, flat-map, filter, filter-map, map-partitions, reduce-by-key, \
         union, repartition, window, count-by-window, reduce-by-window, reduce-by-key-and-window, \
         count-by-value-and-window, update-state-by-key, map-with-state, join, left-outer-join, right-outer-join, \
         full-outer-join, cogroup or transform-with)"
    );
    let (_, message) =
        invalid(&WORDCOUNT.replace("reducer = \"count\"", "reducer = \"count\"\nlength = \"3s\""));
    assert_eq!(
        message,
        "`length` is not a setting of op `reduce-by-key` (it accepts reducer, partitions, config, limits, read-dir, \
         env, on-error, retries, quarantine-after, quarantine)"
    );
    let (_, message) = invalid(&WORDCOUNT.replace(
        "op = \"reduce-by-key\"\nreducer = \"count\"",
        "op = \"count-by-window\"\nlength = \"3s\"\nplugin = \"split-words\"",
    ));
    assert_eq!(
        message,
        "`plugin` is not a setting of op `count-by-window` (it accepts length, slide, partitions, time, \
         allowed-lateness, output-mode, late-records, state-memory, inverse, neutral)"
    );
    // A raw window keeps records, not reduced state: no state-memory.
    let (_, message) = invalid(&WORDCOUNT.replace(
        "op = \"reduce-by-key\"\nreducer = \"count\"",
        "op = \"window\"\nlength = \"3s\"\nstate-memory = \"1MiB\"",
    ));
    assert!(
        message.contains("`state-memory` is not a setting of op `window`"),
        "{message}"
    );
    let spec = parse(
        &WORDCOUNT.replace(
            "op = \"reduce-by-key\"\nreducer = \"count\"",
            "op = \"count-by-window\"\nlength = \"3s\"\nstate-memory = \"1MiB\"",
        ),
        Path::new("p.toml"),
    )
    .unwrap();
    let OperatorSpec::Window(window) = &spec.stages[1].op else {
        panic!("a window expected")
    };
    assert_eq!(window.memory, Some(1 << 20));
    // Event-time windows spill too.
    let spec = parse(
        &WORDCOUNT.replace(
            "op = \"reduce-by-key\"\nreducer = \"count\"",
            "op = \"count-by-window\"\nlength = \"3s\"\ntime = \"event\"\nstate-memory = \"2MiB\"",
        ),
        Path::new("p.toml"),
    )
    .unwrap();
    let OperatorSpec::Window(window) = &spec.stages[1].op else {
        panic!("a window expected")
    };
    assert_eq!(window.memory, Some(2 << 20));
}

#[cfg(feature = "kafka")]
#[test]
fn a_tenant_scope_prefixes_kafka_groups_and_transactional_ids() {
    use crate::sink::kafka::KafkaSinkSpec;
    use crate::source::kafka::KafkaSpec;
    let text = WORDCOUNT
        .replace(
            "type = \"socket\"\naddress = \"127.0.0.1:9999\"",
            "type = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopics = \"lines\"",
        )
        .replace(
            "type = \"console\"",
            "type = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"counts\"\ndelivery = \"exactly-once\"",
        );
    let ids = |spec: &PipelineSpec| {
        let source = spec.sources[0].kind.settings::<KafkaSpec>().unwrap();
        let sink = spec.sinks[0].kind.settings::<KafkaSinkSpec>().unwrap();
        (
            source.group(&spec.name, "lines"),
            sink.transactional_id(&spec.name, &spec.sinks[0].name),
        )
    };
    let alone = parse(&text, Path::new("p.toml")).unwrap();
    assert_eq!(ids(&alone).0, "weir.wordcount.lines");
    let scope = Scope {
        ids_prefix: Some("tenant-a.".into()),
        ..Scope::of_file(Path::new("p.toml"))
    };
    let tenant = parse_in(&text, Path::new("p.toml"), &scope).unwrap();
    let (group, transactional) = ids(&tenant);
    assert_eq!(group, "tenant-a.weir.wordcount.lines");
    assert!(
        transactional.starts_with("tenant-a.weir.wordcount."),
        "{transactional}"
    );
    // An id the tenant names is its own too: it cannot take over another's.
    let named = text.replace(
        "topics = \"lines\"",
        "topics = \"lines\"\ngroup-id = \"tenant-b.weir.wc.lines\"",
    );
    let tenant = parse_in(&named, Path::new("p.toml"), &scope).unwrap();
    assert_eq!(ids(&tenant).0, "tenant-a.tenant-b.weir.wc.lines");
}

#[cfg(feature = "kafka")]
#[test]
fn a_cluster_needs_one_kafka_topic_and_a_shared_store() {
    let base = |pipeline: &str, sources: &str| {
        format!(
            "[pipeline]\nname = \"c\"\n{pipeline}\n{sources}\n[[sink]]\ninput = \"lines\"\ntype = \"console\"\n\n[cluster]\ngroup-id = \"g\"\n"
        )
    };
    let kafka = "[[source]]\nname = \"lines\"\ntype = \"kafka\"\nbrokers = \"127.0.0.1:9\"\ntopics = \"t\"\n";
    let cases = [
        (base("", kafka), "a cluster needs `checkpoint-dir`"),
        (
            base(
                "checkpoint-dir = \"/s\"",
                "[[source]]\nname = \"lines\"\ntype = \"generator\"\nlines = 3\n",
            ),
            "is not one",
        ),
        (
            base(
                "checkpoint-dir = \"/s\"",
                &kafka.replace("topics = \"t\"", "topics = [\"t\", \"u\"]"),
            ),
            "reads one topic",
        ),
    ];
    for (text, expected) in cases {
        let error = parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(error.contains(expected), "{error}\n---\n{text}");
    }
    let spec = parse(&base("checkpoint-dir = \"/s\"", kafka), Path::new("c.toml")).unwrap();
    let cluster = spec.cluster.unwrap();
    assert_eq!(cluster.group_id, "g");
    assert_eq!(cluster.session_timeout, std::time::Duration::from_secs(10));
    // The deterministic clock: the plan decides what it means per segment.
    let deterministic = base(
        "checkpoint-dir = \"/s\"\nclock = \"deterministic\"",
        &format!("{kafka}records-per-batch = 10\n"),
    );
    assert!(
        parse(&deterministic, Path::new("c.toml"))
            .unwrap()
            .cluster
            .is_some()
    );
}

#[test]
fn places_the_engine_writes_may_not_overlap() {
    let files_source = WORDCOUNT.replace(
        "type = \"socket\"\naddress = \"127.0.0.1:9999\"",
        "type = \"files\"\npath = \"in\"",
    );
    let with = |checkpoint: &str, sinks: &[&str]| {
        let mut text = files_source.replace(
            "partitions = 2\n",
            &format!("partitions = 2\ncheckpoint-dir = {checkpoint:?}\n"),
        );
        text = text.replace("[[sink]]\ninput = \"counts\"\ntype = \"console\"\n", "");
        for (i, sink) in sinks.iter().enumerate() {
            let signing = if sink.starts_with("s3://") {
                "credentials = \"anonymous\"\n"
            } else {
                ""
            };
            text.push_str(&format!(
                "\n[[sink]]\nname = \"s{i}\"\ninput = \"counts\"\ntype = \"files\"\npath = {sink:?}\n{signing}"
            ));
        }
        text
    };
    let refused = |text: String, fragment: &str| {
        let (_, message) = invalid(&text);
        assert!(message.contains(fragment), "{message}");
    };
    // Beside each other: fine, also where one name begins with the other.
    parse(&with("state", &["out", "out-2"]), Path::new("p.toml")).unwrap();
    parse(
        &with("s3://bucket/ck", &["s3://bucket/ck-out", "s3://other/ck"]),
        Path::new("p.toml"),
    )
    .unwrap();
    // A sink inside the checkpoint directory, or holding it.
    refused(
        with("state", &["state/out"]),
        "sink `s0`'s path ./state/out overlaps the checkpoint directory (./state)",
    );
    refused(with("out/state", &["out"]), "overlaps the checkpoint directory");
    // Two sinks, one inside the other.
    refused(
        with("state", &["out", "out/more"]),
        "sink `s1`'s path ./out/more overlaps sink `s0`'s path (./out)",
    );
    // The same on object storage, at the same store.
    refused(
        with("s3://bucket/ck", &["s3://bucket/ck/out"]),
        "sink `s0`'s path s3://bucket/ck/out overlaps the checkpoint directory (s3://bucket/ck)",
    );
    refused(
        with("state", &["s3://bucket/", "s3://bucket/out"]),
        "overlaps sink `s0`'s path",
    );
}
