//! Tests that compare timings. They live in a test binary of their own
//! because cargo runs test binaries one after another: while these run, no
//! other test loads the machine's cores (in the main integration binary a
//! neighbouring test's `weir` process took a core and pushed a ratio over
//! its bound). Within this binary they take [`alone`], so that they never
//! overlap each other either.

use std::time::Duration;

use weir_tests::plugins;
use weir_tests::server::{Server, json};

/// Serialises the tests of this binary.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`ALONE`] for the rest of the test.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn server(data: &std::path::Path) -> Server {
    Server::start(env!("CARGO_BIN_EXE_weir"), data, &[])
}

#[test]
fn a_looping_tenant_does_not_slow_another_one_down() {
    let _alone = alone();
    let dir = weir_tests::scratch();
    let server = server(&dir.path().join("data"));
    let healthy = server.tenant("healthy", json!({}));
    let noisy = server.tenant("noisy", json!({}));
    server
        .push_plugin("healthy", &healthy, "p", plugins::SPLIT_WORDS)
        .expect(201);
    server
        .push_plugin("noisy", &noisy, "p", plugins::LOOP_FOREVER)
        .expect(201);
    let wordcount = r#"
[pipeline]
name = "wc"
batch-interval = "100ms"
partitions = 2
[[source]]
name = "lines"
type = "generator"
rate = 50000
[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "p"
[[stage]]
name = "counts"
input = "words"
op = "reduce-by-key"
reducer = "count"
[[sink]]
input = "counts"
type = "files"
path = "out"
"#;
    // Every batch of the neighbour loops until its 20 ms deadline, on both partitions.
    let looping = r#"
[pipeline]
name = "loop"
batch-interval = "100ms"
partitions = 2
[[source]]
name = "words"
type = "generator"
rate = 2000
words-per-line = 1
[[stage]]
name = "out"
input = "words"
op = "map"
plugin = "p"
config = { trigger = "the" }
limits = { timeout = "20ms" }
on-error = "skip-batch"
quarantine-after = 1000000
[[sink]]
input = "out"
type = "files"
path = "out"
"#;
    server.deploy("healthy", &healthy, wordcount).expect(201);
    server.deploy("noisy", &noisy, looping).expect(201);
    server
        .post("/v1/tenants/noisy/pipelines/loop/stop", &noisy, &json!(null))
        .expect(200);
    // The healthy pipeline's mean processing time over the batches of a round.
    let round = |looping: bool| -> (Duration, u32) {
        if looping {
            server
                .post("/v1/tenants/noisy/pipelines/loop/start", &noisy, &json!(null))
                .expect(200);
        }
        std::thread::sleep(Duration::from_millis(500));
        let status = server
            .get("/v1/tenants/healthy/pipelines/wc", &healthy)
            .expect(200);
        let first = status["status"]["last_batch"]["id"].as_u64().unwrap_or(0);
        std::thread::sleep(Duration::from_secs(3));
        let events = server
            .get("/v1/tenants/healthy/pipelines/wc/events", &healthy)
            .expect(200);
        if looping {
            let traps = server
                .get("/v1/tenants/noisy/pipelines/loop/metrics", &noisy)
                .expect(200);
            assert!(
                traps["stages"][0]["traps"]["deadline"].as_u64() > Some(10),
                "the neighbour does not loop: {traps}"
            );
            server
                .post("/v1/tenants/noisy/pipelines/loop/stop", &noisy, &json!(null))
                .expect(200);
        }
        let mut total = (Duration::ZERO, 0);
        for event in events.as_array().unwrap() {
            if event["event"] == "batch-completed" && event["batch"]["id"].as_u64() > Some(first) {
                let time = &event["processing_time"];
                total.0 += Duration::new(
                    time["secs"].as_u64().unwrap(),
                    time["nanos"].as_u64().unwrap() as u32,
                );
                total.1 += 1;
            }
        }
        assert!(total.1 >= 10, "too few batches in a round: {events}");
        total
    };
    round(false);
    let mut sums = [(Duration::ZERO, 0); 2];
    for looping in [false, true, false, true] {
        let (time, batches) = round(looping);
        sums[looping as usize].0 += time;
        sums[looping as usize].1 += batches;
    }
    let [alone, next_to_loop] = sums.map(|(time, batches)| time / batches);
    let ratio = next_to_loop.as_secs_f64() / alone.as_secs_f64();
    eprintln!(
        "healthy tenant's mean batch: {alone:?} alone, {next_to_loop:?} next to a looping tenant ({ratio:.2}x)"
    );
    assert!(
        ratio <= 1.5,
        "the healthy tenant's mean batch went from {alone:?} alone to {next_to_loop:?} next to the looping one ({ratio:.2}x)"
    );
}
