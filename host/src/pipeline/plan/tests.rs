//! Schedules of plans built from native operators (and the helper that
//! builds them, shared with the executor's tests).

use std::path::Path;

use super::{Plan, Segment, StageSchedule};
use crate::operator::native::{NativeReducer, NativeTransform, library};
use crate::pipeline::PluginRegistry;
use crate::runtime::Runtime;

/// The `[pipeline]`, `[plugins]` (never loaded: the names are registered
/// natively) and source every test pipeline starts with.
const HEAD: &str = r#"
[pipeline]
name = "schedule"
batch-interval = "1s"
partitions = 2

[plugins]
split-words = "split_words.wasm"
lowercase = "lowercase.wasm"
long-words = "long_words.wasm"
sum = "sum.wasm"
fail-on-boom = "fail_on_boom.wasm"

[[source]]
name = "lines"
type = "generator"
lines = 10
"#;

/// The plan of `HEAD` followed by `rest`, over native functions:
/// `split-words`, `lowercase`, `long-words` (a filter), `fail-on-boom` (a
/// map that fails on the value `boom`) and the reducer `sum`.
pub(in crate::pipeline) fn plan(rest: &str) -> Plan {
    let text = format!("{HEAD}{rest}");
    let spec = crate::config::parse(&text, Path::new("p.toml")).expect("the test pipeline parses");
    let mut registry = PluginRegistry::new(Runtime::new(None).expect("a runtime"));
    registry.register_transform("split-words", library::split_words());
    registry.register_transform("lowercase", library::lowercase());
    registry.register_transform(
        "long-words",
        NativeTransform::filter("long-words", |record| Ok(record.value.len() > 3)),
    );
    registry.register_transform(
        "fail-on-boom",
        NativeTransform::map("fail-on-boom", |record, out| {
            if record.value == b"boom" {
                return Err("boom".to_owned());
            }
            out.push_ref(record);
            Ok(())
        }),
    );
    registry.register_reducer("sum", NativeReducer::new("sum", |_| Ok(Vec::new())));
    let state_dir = std::env::temp_dir().join("weir-plan-schedule-tests");
    Plan::build(&spec, &registry, "p.toml", &state_dir).expect("the test pipeline plans")
}

/// Each stage's name and schedule.
fn schedules(plan: &Plan) -> Vec<(&str, &StageSchedule)> {
    plan.stages
        .iter()
        .map(|stage| (stage.name.as_str(), &stage.schedule))
        .collect()
}

fn schedule(carried_in: usize, segments: &[Segment]) -> StageSchedule {
    StageSchedule {
        carried_in,
        paired: false,
        segments: segments.to_vec(),
    }
}

const WORDS: &str = r#"
[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "split-words"
"#;

const COUNTS: &str = r#"
[[stage]]
name = "counts"
input = "words"
op = "reduce-by-key"
reducer = "count"

[[sink]]
input = "counts"
type = "console"
"#;

#[test]
fn flat_map_then_reduce_by_key_fuses_the_flat_map_with_the_combine() {
    let plan = plan(&format!("{WORDS}{COUNTS}"));
    let fused = Segment::Fused {
        operators: 0..1,
        onward: 1,
    };
    assert_eq!(
        schedules(&plan),
        [
            ("words", &schedule(0, &[fused])),
            ("counts", &schedule(1, &[Segment::Alone(1)])),
        ]
    );
    assert!(plan.stages[0].schedule.carries_on());
    assert!(!plan.stages[1].schedule.carries_on());
}

#[test]
fn a_reducer_plugin_fuses_like_a_builtin_one() {
    let plan = plan(&format!("{WORDS}{}", COUNTS.replace("\"count\"", "\"sum\"")));
    assert_eq!(
        plan.stages[0].schedule.segments,
        [Segment::Fused {
            operators: 0..1,
            onward: 1
        }]
    );
    assert_eq!(plan.stages[1].schedule, schedule(1, &[Segment::Alone(1)]));
}

#[test]
fn a_stage_read_by_two_readers_does_not_fuse_onward() {
    let words_sink = "\n[[sink]]\ninput = \"words\"\ntype = \"console\"\n";
    let plan = plan(&format!("{WORDS}{COUNTS}{words_sink}"));
    assert_eq!(
        schedules(&plan),
        [
            ("words", &schedule(0, &[Segment::Alone(0)])),
            ("counts", &schedule(0, &[Segment::Alone(0), Segment::Alone(1)])),
        ]
    );
}

#[test]
fn a_stage_over_two_inputs_does_not_take_a_fused_run_onward() {
    let union = r#"
[[stage]]
name = "lower"
input = "lines"
op = "map"
plugin = "lowercase"

[[stage]]
name = "both"
input = ["lower", "lines"]
op = "union"

[[stage]]
name = "long"
input = "both"
op = "filter"
plugin = "long-words"

[[sink]]
input = "long"
type = "console"
"#;
    let plan = plan(union);
    assert_eq!(
        schedules(&plan),
        [
            ("lower", &schedule(0, &[Segment::Alone(0)])),
            ("both", &schedule(0, &[])),
            ("long", &schedule(0, &[Segment::Alone(0)])),
        ]
    );
}

#[test]
fn retries_break_fusion() {
    let plan = plan(&format!("{WORDS}retries = 2\n{COUNTS}"));
    assert_eq!(
        schedules(&plan),
        [
            ("words", &schedule(0, &[Segment::Alone(0)])),
            ("counts", &schedule(0, &[Segment::Alone(0), Segment::Alone(1)])),
        ]
    );
}

#[test]
fn an_on_error_policy_on_the_reading_stage_breaks_fusion() {
    let counts = COUNTS.replace(
        "reducer = \"count\"",
        "reducer = \"count\"\non-error = \"skip-batch\"",
    );
    let plan = plan(&format!("{WORDS}{counts}"));
    assert_eq!(
        schedules(&plan),
        [
            ("words", &schedule(0, &[Segment::Alone(0)])),
            ("counts", &schedule(0, &[Segment::Alone(0), Segment::Alone(1)])),
        ]
    );
}

#[test]
fn map_partitions_sees_whole_partitions() {
    let words = WORDS.replace("\"flat-map\"", "\"map-partitions\"");
    let plan = plan(&format!("{words}{COUNTS}"));
    assert_eq!(
        schedules(&plan),
        [
            ("words", &schedule(0, &[Segment::Alone(0)])),
            ("counts", &schedule(0, &[Segment::Alone(0), Segment::Alone(1)])),
        ]
    );
}

#[test]
fn a_fused_run_goes_on_into_one_stage_only() {
    // The flat-map takes the lowercasing map on with it; the next stage
    // starts afresh from the stream (its combine alone is not fused).
    let chain = r#"
[[stage]]
name = "lower"
input = "lines"
op = "map"
plugin = "lowercase"

[[stage]]
name = "words"
input = "lower"
op = "flat-map"
plugin = "split-words"

[[stage]]
name = "long"
input = "words"
op = "filter"
plugin = "long-words"
"#;
    let counts = COUNTS.replace("input = \"words\"", "input = \"long\"");
    let plan = plan(&format!("{chain}{counts}"));
    assert_eq!(
        schedules(&plan),
        [
            (
                "lower",
                &schedule(
                    0,
                    &[Segment::Fused {
                        operators: 0..1,
                        onward: 1
                    }]
                )
            ),
            ("words", &schedule(1, &[])),
            (
                "long",
                &schedule(
                    0,
                    &[Segment::Fused {
                        operators: 0..1,
                        onward: 1
                    }]
                )
            ),
            ("counts", &schedule(1, &[Segment::Alone(1)])),
        ]
    );
}

#[test]
fn repartition_and_a_last_transform_run_alone() {
    let rest = r#"
[[stage]]
name = "spread"
input = "lines"
op = "repartition"
partitions = 4

[[stage]]
name = "words"
input = "spread"
op = "flat-map"
plugin = "split-words"

[[sink]]
input = "words"
type = "console"
"#;
    let plan = plan(rest);
    assert_eq!(
        schedules(&plan),
        [
            ("spread", &schedule(0, &[Segment::Alone(0)])),
            ("words", &schedule(0, &[Segment::Alone(0)])),
        ]
    );
}

#[test]
fn a_join_pairs_its_inputs_and_runs_alone() {
    let rest = r#"
[[stage]]
name = "left"
input = "lines"
op = "window"
length = "2s"
slide = "2s"

[[stage]]
name = "right"
input = "lines"
op = "window"
length = "2s"
slide = "2s"

[[stage]]
name = "joined"
input = ["left", "right"]
op = "join"

[[sink]]
input = "joined"
type = "console"
"#;
    let plan = plan(rest);
    let joined = &plan.stages[2].schedule;
    assert!(joined.paired);
    assert_eq!(joined.segments, [Segment::Alone(0)]);
    assert!(plan.stages[..2].iter().all(|stage| !stage.schedule.paired));
}
