//! Batches run through plans of native operators, fused and not: the same
//! outputs, and failures named after the stage, partition and record.

use std::sync::Arc;

use super::{BatchError, Executor};
use crate::engine::pool::WorkerPool;
use crate::operator::OperatorError;
use crate::pipeline::plan::tests::plan;
use crate::pipeline::plan::{Plan, Segment};
use crate::record::{Batch, Partition};

const TOTALS: &str = r#"
[[stage]]
name = "lower"
input = "lines"
op = "map"
plugin = "fail-on-boom"

[[stage]]
name = "totals"
input = "lower"
op = "reduce-by-key"
reducer = "sum"

[[sink]]
input = "totals"
type = "console"
"#;

/// Four chunks of keyed numbers (partition 0 gets chunks 0 and 2,
/// partition 1 chunks 1 and 3); `bad` replaces the value of record 1 of
/// chunk 3.
fn chunks(bad: Option<&str>) -> Partition {
    (0..4)
        .map(|chunk| {
            let mut batch = Batch::new();
            for i in 0..3 {
                let value = match bad {
                    Some(bad) if chunk == 3 && i == 1 => bad.to_owned(),
                    _ => (chunk * 10 + i).to_string(),
                };
                let key = format!("k{}", (chunk + i) % 5);
                batch.push(Some(key.as_bytes()), value.as_bytes(), 0);
            }
            batch
        })
        .collect()
}

/// Runs one batch of `input` through `plan`.
fn run(plan: Plan, input: Partition) -> Result<Vec<(String, String)>, BatchError> {
    let pool = WorkerPool::new(2, None).expect("a pool");
    let plan = Arc::new(plan);
    let executor = Executor::new(plan.clone(), pool.client(1));
    let output = executor.run_batch(1, 0, vec![input])?;
    let totals = plan.stages.last().expect("a stage").output;
    let mut records: Vec<(String, String)> = output.streams[totals]
        .iter()
        .flatten()
        .flatten()
        .flat_map(Batch::iter)
        .map(|record| {
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            (record.key.map(text).unwrap_or_default(), text(record.value))
        })
        .collect();
    records.sort();
    Ok(records)
}

fn failure(result: Result<Vec<(String, String)>, BatchError>) -> (String, usize, OperatorError) {
    match result {
        Err(BatchError::Failed(failure)) => (failure.stage, failure.partition, failure.error),
        other => panic!("expected a failed batch, got {other:?}"),
    }
}

/// The totals pipeline with a policy that keeps every call whole (no fusion).
fn unfused() -> Plan {
    let plan = plan(&TOTALS.replace(
        "plugin = \"fail-on-boom\"",
        "plugin = \"fail-on-boom\"\nretries = 1",
    ));
    assert_eq!(plan.stages[0].schedule.segments, [Segment::Alone(0)]);
    plan
}

fn fused() -> Plan {
    let plan = plan(TOTALS);
    assert!(plan.stages[0].schedule.carries_on());
    plan
}

#[test]
fn fused_and_unfused_segments_give_the_same_output() {
    let fused = run(fused(), chunks(None)).unwrap();
    assert_eq!(fused, run(unfused(), chunks(None)).unwrap());
    let total: i64 = fused.iter().map(|(_, value)| value.parse::<i64>().unwrap()).sum();
    assert_eq!(total, (0..4).map(|c| 3 * c * 10 + 3).sum::<i64>());
}

#[test]
fn a_failure_in_the_onward_part_of_a_fused_segment_names_the_next_stage_and_record() {
    for plan in [fused(), unfused()] {
        let (stage, partition, error) = failure(run(plan, chunks(Some("x"))));
        assert_eq!((stage.as_str(), partition), ("totals", 1));
        // Record 1 of the partition's second chunk (three records each).
        assert!(
            matches!(error, OperatorError::Value { index: Some(4), .. }),
            "{error:?}"
        );
    }
}

#[test]
fn a_failure_in_the_first_part_of_a_fused_segment_names_its_own_stage() {
    for plan in [fused(), unfused()] {
        let (stage, partition, error) = failure(run(plan, chunks(Some("boom"))));
        assert_eq!((stage.as_str(), partition), ("lower", 1));
        assert!(error.to_string().contains("boom"), "{error}");
    }
}

/// Spans opened anywhere in the process, as `name field=value ...`.
static SPANS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records every span opened, on any thread.
struct SpanLog;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanLog {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut fields = Fields(attrs.metadata().name().to_owned());
        attrs.record(&mut fields);
        SPANS.lock().unwrap().push(fields.0);
    }
}

#[test]
fn stages_and_partition_tasks_run_in_spans_naming_where_they_are() {
    use tracing_subscriber::layer::SubscriberExt;
    // Pool workers are threads of their own: only a global subscriber sees them.
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(SpanLog));
    // Unfused, so that each stage's tasks are its own.
    let mut plan = plan(&TOTALS.replace("reducer = \"sum\"", "reducer = \"sum\"\nretries = 1"));
    let pipeline = "spans";
    plan.pipeline = pipeline.to_owned();
    run(plan, chunks(None)).unwrap();
    let spans = SPANS.lock().unwrap();
    for stage in ["lower", "totals"] {
        assert!(spans.contains(&format!("stage stage={stage}")), "{spans:?}");
        for partition in 0..2 {
            let task = format!("partition pipeline={pipeline} stage={stage} partition={partition} batch=1");
            assert!(spans.contains(&task), "no `{task}` in {spans:?}");
        }
    }
}
