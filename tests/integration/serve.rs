//! `weir serve`: a real server process on loopback, called through a real
//! HTTP client (and the `weir` CLI's client commands): tenants kept apart,
//! quotas, bad input, concurrency, kill -9 and restart, TLS.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use weir_tests::plugins;
use weir_tests::server::{ADMIN_TOKEN, Server, Value, json};

fn server(data: &std::path::Path, extra: &[&str]) -> Server {
    Server::start(env!("CARGO_BIN_EXE_weir"), data, extra)
}

/// A word count from `in/` to `out/` of the tenant's root, one file a batch.
pub(super) fn wordcount(name: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "100ms"

[[source]]
name = "lines"
type = "files"
path = "in"
max-files-per-batch = 1

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
type = "files"
path = "out/{name}"
"#
    )
}

/// `wordcount` with `from` replacing a line of it.
fn wordcount_with(name: &str, from: &str, to: &str) -> String {
    let text = wordcount(name);
    assert!(text.contains(from), "{from} not in the pipeline");
    text.replace(from, to)
}

#[test]
fn tenants_cannot_reach_each_other_and_every_change_is_audited() {
    let dir = weir_tests::scratch();
    let server = server(&dir.path().join("data"), &[]);
    let a = server.tenant("a", json!({}));
    let b = server.tenant("b", json!({}));
    let a_viewer = server.token("a", "viewer");
    server
        .push_plugin("b", &b, "split-words", plugins::SPLIT_WORDS)
        .expect(201);
    server
        .push_plugin("a", &a, "split-words", plugins::SPLIT_WORDS)
        .expect(201);
    std::fs::create_dir_all(server.root("b").join("in")).unwrap();
    std::fs::write(server.root("b").join("in/secret.txt"), "b secret words\n").unwrap();
    server.deploy("b", &b, &wordcount("wc")).expect(201);
    server.wait_batch("b", &b, "wc", 0, Duration::from_secs(60));

    // A cannot see, read, stop, swap or upload anything of B's: 404, as if
    // B did not exist.
    for (method, path) in [
        ("GET", "/v1/tenants/b"),
        ("GET", "/v1/tenants/b/pipelines"),
        ("GET", "/v1/tenants/b/pipelines/wc"),
        ("GET", "/v1/tenants/b/pipelines/wc/metrics"),
        ("GET", "/v1/tenants/b/pipelines/wc/events"),
        ("GET", "/v1/tenants/b/pipelines/wc/file"),
        ("GET", "/v1/tenants/b/plugins"),
        ("GET", "/v1/tenants/b/tokens"),
        ("POST", "/v1/tenants/b/pipelines/wc/stop"),
        ("POST", "/v1/tenants/b/pipelines/wc/pause"),
        ("POST", "/v1/tenants/b/pipelines/wc/stages/words/swap"),
        ("POST", "/v1/tenants/b/pipelines/wc/stages/words/rollback"),
        ("GET", "/v1/tenants/b/pipelines/wc/history"),
        ("DELETE", "/v1/tenants/b/pipelines/wc"),
        ("DELETE", "/v1/tenants/b/plugins/split-words"),
        ("POST", "/v1/tenants/b/tokens"),
        ("GET", "/v1/tenants/nobody/pipelines"),
    ] {
        let answer = server.send(
            server
                .request(method, path, Some(&a))
                .body("{\"role\":\"operator\"}"),
        );
        assert_eq!(answer.status.as_u16(), 404, "{method} {path}: {}", answer.body);
        assert!(!answer.error().contains("b secret"), "{}", answer.body);
    }
    let swap = server.push_plugin("b", &a, "split-words", plugins::ONE);
    assert_eq!(swap.status.as_u16(), 404, "{}", swap.body);
    // The admin's routes: 403 for a tenant's token.
    for path in ["/v1/tenants", "/v1/audit", "/metrics"] {
        assert_eq!(server.get(path, &a).status.as_u16(), 403, "{path}");
    }
    // A viewer reads, does not change.
    server.get("/v1/tenants/a/pipelines", &a_viewer).expect(200);
    let denied = server.deploy("a", &a_viewer, &wordcount("x"));
    assert_eq!(denied.status.as_u16(), 403, "{}", denied.body);
    // No token, a bad one: 401.
    assert_eq!(
        server
            .send(server.request("GET", "/v1/tenants/a", None))
            .status
            .as_u16(),
        401
    );
    assert_eq!(
        server
            .get("/v1/tenants/a", "weir_0123456789abcdef_nope")
            .status
            .as_u16(),
        401
    );

    // A's pipeline cannot name B's files, however it tries.
    let b_root = server.root("b");
    std::os::unix::fs::symlink(&b_root, server.root("a").join("door")).unwrap();
    for (from, to, why) in [
        (
            "path = \"in\"",
            format!("path = \"{}\"", b_root.join("in").display()),
            "is an absolute path",
        ),
        (
            "path = \"in\"",
            "path = \"../../b/root/in\"".to_owned(),
            "goes up with `..`",
        ),
        (
            "path = \"in\"",
            "path = \"door/in\"".to_owned(),
            "symbolic link `door` that leads out of it",
        ),
        (
            "path = \"out/x\"",
            "path = \"../../b/root/out\"".to_owned(),
            "goes up with `..`",
        ),
        (
            "path = \"out/x\"",
            "path = \"door/out\"".to_owned(),
            "symbolic link `door`",
        ),
        (
            "batch-interval = \"100ms\"",
            "batch-interval = \"100ms\"\ncheckpoint-dir = \"../../b/root/checkpoints/wc\"".to_owned(),
            "goes up with `..`",
        ),
        (
            "plugin = \"split-words\"",
            "plugin = \"split-words\"\nread-dir = \"door\"".to_owned(),
            "symbolic link `door`",
        ),
        (
            "plugin = \"split-words\"",
            "plugin = \"split-words\"\nread-dir = \"/\"".to_owned(),
            "is an absolute path",
        ),
    ] {
        let text = wordcount_with("x", from, &to);
        let answer = server.deploy("a", &a, &text);
        assert_eq!(answer.status.as_u16(), 400, "{to}: {}", answer.body);
        assert!(answer.error().contains(why), "{to}: {}", answer.error());
        assert!(answer.error().starts_with("pipeline.toml:"), "{}", answer.error());
    }
    // Plugin names resolve in A's uploads only; paths are not plugins.
    let foreign = wordcount_with("x", "plugin = \"split-words\"", "plugin = \"theirs\"");
    let foreign = format!("[plugins]\ntheirs = \"{}\"\n{foreign}", plugins::SPLIT_WORDS);
    server
        .deploy("a", &a, &foreign)
        .expect_error(400, "is not uploaded");
    // Sockets and the server's own streams need the admin's grant.
    let socket = wordcount_with(
        "x",
        "type = \"files\"\npath = \"in\"\nmax-files-per-batch = 1",
        "type = \"socket\"\naddress = \"127.0.0.1:9\"",
    );
    server
        .deploy("a", &a, &socket)
        .expect_error(403, "reaches `127.0.0.1:9`, which this tenant may not");
    // Client properties that name files, libraries or commands of the
    // server are refused in a tenant's pipeline, whatever its grants.
    #[cfg(feature = "kafka")]
    {
        let kafka = wordcount_with(
            "x",
            "type = \"files\"\npath = \"in\"\nmax-files-per-batch = 1",
            "type = \"kafka\"\nbrokers = \"127.0.0.1:9\"\ntopics = \"t\"\nproperties = { \"plugin.library.paths\" = \"/tmp/evil.so\" }",
        );
        server
            .deploy("a", &a, &kafka)
            .expect_error(400, "`plugin.library.paths` cannot be set in a tenant's pipeline");
    }
    let console = wordcount_with("x", "type = \"files\"\npath = \"out/x\"", "type = \"console\"");
    assert_eq!(server.deploy("a", &a, &console).status.as_u16(), 403);

    // A's own pipeline runs, and counts only A's files.
    std::fs::create_dir_all(server.root("a").join("in")).unwrap();
    std::fs::write(server.root("a").join("in/mine.txt"), "a words a\n").unwrap();
    server.deploy("a", &a, &wordcount("wc")).expect(201);
    server.wait_batch("a", &a, "wc", 0, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    while weir_tests::summed_counts(&server.root("a").join("out/wc")).is_empty() && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = weir_tests::summed_counts(&server.root("a").join("out/wc"));
    assert_eq!(counts, BTreeMap::from([("a".into(), 2), ("words".into(), 1)]));
    // Links planted while it runs (to B's file, to B's directory) are not
    // followed out of A's root: the files are opened through cap-std.
    std::os::unix::fs::symlink(
        b_root.join("in/secret.txt"),
        server.root("a").join("in/zz-link.txt"),
    )
    .unwrap();
    let batch = server.get("/v1/tenants/a/pipelines/wc", &a).expect(200)["status"]["last_batch"]["id"]
        .as_u64()
        .unwrap();
    std::fs::write(server.root("a").join("in/zzz-later.txt"), "later\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !weir_tests::summed_counts(&server.root("a").join("out/wc")).contains_key("later") {
        assert!(Instant::now() < deadline, "A's later file was not read");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.wait_batch("a", &a, "wc", batch + 3, Duration::from_secs(60));
    let counts = weir_tests::summed_counts(&server.root("a").join("out/wc"));
    assert!(
        !counts.contains_key("secret"),
        "A read B's file through a link: {counts:?}"
    );
    assert_eq!(counts.len(), 3, "{counts:?}");

    // A revoked token is refused on its next call.
    let made = server
        .post("/v1/tenants/a/tokens", &a, &json!({"role": "viewer"}))
        .expect(201);
    let (id, token) = (made["id"].as_str().unwrap(), made["token"].as_str().unwrap());
    server.get("/v1/tenants/a/pipelines", token).expect(200);
    server
        .send(server.request("DELETE", &format!("/v1/tenants/a/tokens/{id}"), Some(&a)))
        .expect(204);
    assert_eq!(server.get("/v1/tenants/a/pipelines", token).status.as_u16(), 401);
    // Tokens are listed by id and role, never with their hash, and kept as hashes only.
    let listed = server.get("/v1/tenants/a/tokens", &a).expect(200);
    assert!(
        listed[0]["id"].is_string() && listed[0].get("sha256").is_none(),
        "{listed}"
    );
    let stored = std::fs::read_to_string(server.data().join("tenants/a/tokens.json")).unwrap();
    assert!(!stored.contains(&a[5..]), "a token is stored in the clear");

    // An unauthenticated change is refused and audited too.
    let anonymous = server.send(server.request("DELETE", "/v1/tenants/b/pipelines/wc", None));
    assert_eq!(anonymous.status.as_u16(), 401);
    let refused = server.get("/v1/audit", ADMIN_TOKEN).expect(200);
    assert!(
        refused
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "DELETE /v1/tenants/b/pipelines/wc"
                && e["who"].as_str().unwrap().starts_with("unauthenticated")),
        "{refused}"
    );
    // A tenant's token cannot change or remove another tenant: it does not exist.
    let patch = server.send(
        server
            .request("PATCH", "/v1/tenants/b", Some(&a))
            .json(&json!({})),
    );
    assert_eq!(patch.status.as_u16(), 404, "{}", patch.body);
    assert_eq!(
        server
            .send(server.request("DELETE", "/v1/tenants/b", Some(&a)))
            .status
            .as_u16(),
        404
    );
    // The audit log has every change, the refused ones too, with who and the plugin's hash.
    let audit = server.get("/v1/audit?tenant=b", ADMIN_TOKEN).expect(200);
    let entries = audit.as_array().unwrap();
    let swap = entries
        .iter()
        .find(|e| e["action"] == "upload plugin split-words" && e["who"].as_str().unwrap().starts_with("a/"))
        .unwrap_or_else(|| panic!("A's attempt on B is not audited: {audit}"));
    assert_eq!(swap["result"], "no tenant `b`");
    assert!(
        swap["plugin_sha256"].as_str().is_some_and(|h| h.len() == 64),
        "{swap}"
    );
    let deployed = entries
        .iter()
        .find(|e| e["action"] == "deploy pipeline wc" && e["result"] == "ok")
        .unwrap_or_else(|| panic!("B's deploy is not audited: {audit}"));
    let split_words = weir_tests::server::sha256_file(plugins::SPLIT_WORDS);
    assert_eq!(deployed["plugin_sha256"], split_words.as_str(), "{deployed}");
    assert!(entries.iter().all(|e| e["tenant"] == "b"), "{audit}");
}

#[test]
fn quotas_refuse_with_the_reason() {
    let dir = weir_tests::scratch();
    let server = server(&dir.path().join("data"), &[]);
    let quotas = json!({
        "max_pipelines": 1,
        "max_stage_memory": 32 << 20,
        "max_input_rate": 1000,
    });
    let t = server.tenant("t", json!({ "quotas": quotas }));
    server
        .push_plugin("t", &t, "split-words", plugins::SPLIT_WORDS)
        .expect(201);
    std::fs::create_dir_all(server.root("t").join("in")).unwrap();
    // The default 64 MiB of a stage is above this tenant's ceiling.
    server.deploy("t", &t, &wordcount("one")).expect_error(
        422,
        "stage `words` asks for memory = 64 MiB, above this tenant's ceiling of 32 MiB",
    );
    let small = |name: &str| {
        wordcount_with(
            name,
            "plugin = \"split-words\"",
            "plugin = \"split-words\"\nlimits = { memory = \"16MiB\" }",
        )
    };
    let fast = wordcount_with(
        "fast",
        "max-files-per-batch = 1",
        "max-files-per-batch = 1\nmax-rate = 5000",
    );
    let answer = server.deploy("t", &t, &fast);
    assert_eq!(answer.status.as_u16(), 422, "{}", answer.body);
    assert!(
        answer
            .error()
            .contains("max-rate = 5000 records/s, above this tenant's ceiling of 1000")
    );
    // A repartition widens every plugin stage's worst case.
    let wide = small("wide").replace(
        "[[stage]]\nname = \"words\"\ninput = \"lines\"",
        "[[stage]]\nname = \"wider\"\ninput = \"lines\"\nop = \"repartition\"\npartitions = 100\n\n[[stage]]\nname = \"words\"\ninput = \"wider\"",
    );
    assert!(wide.contains("repartition"), "{wide}");
    server
        .deploy("t", &t, &wide)
        .expect_error(422, "100 plugin instances");
    server.deploy("t", &t, &small("one")).expect(201);
    server.deploy("t", &t, &small("two")).expect_error(422, "quota");
    // A source without max-rate runs at the tenant's ceiling (published
    // once the pipeline has started its sources).
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = server.get("/v1/tenants/t/pipelines/one/metrics", &t).expect(200);
        if !metrics["sources"][0]["rate_limit"].is_null() || Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let limit = metrics["sources"][0]["rate_limit"].as_f64();
    assert_eq!(limit, Some(1000.0), "{metrics}");
    // Over its disk quota, the tenant's pipelines are paused with the
    // reason, and resumed once it is under again.
    let changed = server.send(
        server
            .request("PATCH", "/v1/tenants/t", Some(ADMIN_TOKEN))
            .json(&json!({ "quotas": { "max_disk_bytes": 256 << 10 } })),
    );
    let changed = changed.expect(200);
    assert_eq!(changed["quotas"]["max_disk_bytes"], 256 << 10);
    // The other quotas stay as they were.
    assert_eq!(changed["quotas"]["max_pipelines"], 1, "{changed}");
    server.wait_batch("t", &t, "one", 0, Duration::from_secs(60));
    let ballast = server.root("t").join("ballast.bin");
    std::fs::write(&ballast, vec![0u8; 512 << 10]).unwrap();
    let paused = wait_state(&server, &t, "one", "paused");
    let reason = paused["status"]["paused_because"].as_str().unwrap_or_default();
    assert!(reason.contains("above its disk quota of 262144"), "{paused}");
    std::fs::remove_file(&ballast).unwrap();
    wait_state(&server, &t, "one", "running");
    // Deploying a running pipeline again is a conflict, not a second copy.
    let status = server.get("/v1/tenants/t/pipelines/one", &t).expect(200);
    assert_eq!(status["status"]["state"], "running", "{status}");
    assert_eq!(server.deploy("t", &t, &small("one")).status.as_u16(), 409);
}

/// The server's `--default-quotas` for a tenant created without its own,
/// each ceiling of a pipeline's limits refused at deploy with its reason,
/// what a tenant uses of its quotas in `/metrics`, pause and resume by the
/// tenant's operator (not its viewer), and the admin removing a tenant.
#[test]
fn default_quotas_every_ceiling_the_lifecycle_and_removing_a_tenant() {
    let dir = weir_tests::scratch();
    let defaults = json!({
        "max_stage_memory": 32 << 20,
        "max_call_timeout_ms": 2000,
        "max_wasm_memory": 48 << 20,
        "max_state_memory": 64 << 20,
        "max_batch_memory": 64 << 20,
        "max_plugin_bytes": 64 << 10,
    })
    .to_string();
    let server = server(&dir.path().join("data"), &["--default-quotas", &defaults]);
    let d = server.tenant("d", json!({}));
    let quotas = server.get("/v1/tenants/d", ADMIN_TOKEN).expect(200)["quotas"].clone();
    assert_eq!(quotas["max_call_timeout_ms"], 2000, "{quotas}");
    assert_eq!(quotas["max_plugin_bytes"], 64 << 10, "{quotas}");
    // The split-words component is larger than this tenant's uploads may be.
    let size = std::fs::metadata(plugins::SPLIT_WORDS).unwrap().len();
    assert!(size > 64 << 10, "{size}");
    server
        .push_plugin("d", &d, "split-words", plugins::SPLIT_WORDS)
        .expect_error(413, "this tenant's uploads may have at most 65536");
    server
        .send(
            server
                .request("PATCH", "/v1/tenants/d", Some(ADMIN_TOKEN))
                .json(&json!({ "quotas": { "max_plugin_bytes": 1 << 20 } })),
        )
        .expect(200);
    server
        .push_plugin("d", &d, "split-words", plugins::SPLIT_WORDS)
        .expect(201);
    // Each ceiling, alone over it.
    let limited = |name: &str, limits: &str| {
        wordcount_with(
            name,
            "plugin = \"split-words\"",
            &format!("plugin = \"split-words\"\nlimits = {{ {limits} }}"),
        )
    };
    let deploy = |text: &str| server.deploy("d", &d, text);
    deploy(&limited("slow", "memory = \"16MiB\", timeout = \"5s\"")).expect_error(
        422,
        "stage `words` asks for timeout = 5s, above this tenant's ceiling of 2s",
    );
    deploy(&limited("big", "memory = \"64MiB\""))
        .expect_error(422, "memory = 64 MiB, above this tenant's ceiling of 32 MiB");
    let batches = limited("batches", "memory = \"16MiB\"").replace(
        "batch-interval = \"100ms\"",
        "batch-interval = \"100ms\"\nmax-batch-memory = \"512MiB\"",
    );
    deploy(&batches).expect_error(
        422,
        "max-batch-memory = 512 MiB is above this tenant's ceiling of 64 MiB",
    );
    let windowed = limited("windowed", "memory = \"16MiB\"").replace(
        "op = \"reduce-by-key\"\nreducer = \"count\"",
        "op = \"count-by-value-and-window\"\nlength = \"10s\"\nslide = \"5s\"\nstate-memory = \"128MiB\"",
    );
    assert!(windowed.contains("count-by-value-and-window"), "{windowed}");
    deploy(&windowed).expect_error(
        422,
        "stage `counts` keeps 128 MiB of state in memory (state-memory), above this tenant's ceiling of 64 MiB",
    );
    // Four partitions of a 16 MiB stage may hold 64 MiB of Wasm memory.
    let wide = limited("wide", "memory = \"16MiB\"").replace(
        "batch-interval = \"100ms\"",
        "batch-interval = \"100ms\"\npartitions = 4",
    );
    deploy(&wide).expect_error(422, "above its quota of 48 MiB");
    // Fuel: a ceiling means every plugin stage must set its budget, within it.
    server
        .send(
            server
                .request("PATCH", "/v1/tenants/d", Some(ADMIN_TOKEN))
                .json(&json!({ "quotas": { "max_fuel": 1_000_000 } })),
        )
        .expect(200);
    deploy(&limited("unmetered", "memory = \"16MiB\"")).expect_error(422, "no fuel budget");
    deploy(&limited("hungry", "memory = \"16MiB\", fuel = 2000000"))
        .expect_error(422, "fuel = 2000000, above this tenant's ceiling of 1000000");
    std::fs::create_dir_all(server.root("d").join("in")).unwrap();
    std::fs::write(server.root("d").join("in/a.txt"), "one two two\n").unwrap();
    let small = limited("small", "memory = \"16MiB\", fuel = 100000000").replace(
        "batch-interval = \"100ms\"",
        "batch-interval = \"100ms\"\npartitions = 1",
    );
    // The fuel ceiling is 1 M: within it, and enough for this input.
    let small = small.replace("fuel = 100000000", "fuel = 1000000");
    // Neither `max-batch-memory` nor `state-memory` set: the defaults
    // (256 MiB each) are above this tenant's ceilings, so it runs with the
    // ceilings instead of being refused (as a source without `max-rate`).
    let defaulted = small
        .replace("name = \"small\"", "name = \"defaulted\"")
        .replace("out/small", "out/defaulted")
        .replace(
            "op = \"reduce-by-key\"\nreducer = \"count\"",
            "op = \"count-by-value-and-window\"\nlength = \"10s\"\nslide = \"5s\"",
        );
    assert!(
        defaulted.contains("name = \"defaulted\"") && defaulted.contains("-and-window"),
        "{defaulted}"
    );
    deploy(&defaulted).expect(201);
    server
        .send(server.request("DELETE", "/v1/tenants/d/pipelines/defaulted", Some(&d)))
        .expect(204);
    deploy(&small).expect(201);
    server.wait_batch("d", &d, "small", 0, Duration::from_secs(60));

    // What the tenant uses of its quotas, next to the quotas.
    let metrics = server.get("/metrics", ADMIN_TOKEN).expect(200);
    let text = metrics.as_str().unwrap();
    for line in [
        "weir_tenant_pipelines{tenant=\"d\"} 1",
        "weir_tenant_plugin_instances{tenant=\"d\"} 1",
        "weir_tenant_plugin_instances_quota{tenant=\"d\"} 64",
        "weir_tenant_wasm_memory_bytes{tenant=\"d\"} 16777216",
        "weir_tenant_wasm_memory_quota_bytes{tenant=\"d\"} 50331648",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
    assert!(
        text.lines().any(
            |l| l.starts_with("weir_batch_processing_seconds_count{") && l.contains("pipeline=\"small\"")
        ),
        "{text}"
    );

    // Pause and resume: the operator's, not the viewer's.
    let viewer = server.token("d", "viewer");
    let pause =
        |token: &str| server.send(server.request("POST", "/v1/tenants/d/pipelines/small/pause", Some(token)));
    assert_eq!(pause(&viewer).status.as_u16(), 403);
    pause(&d).expect(200);
    wait_state_of(&server, "d", &viewer, "small", "paused");
    // Paused, it cuts no batch (running, it cuts one every 100 ms): once
    // the batch in flight has ended, the last batch stays the same.
    let last_batch = |status: &Value| status["status"]["last_batch"]["id"].as_u64();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut then = server.get("/v1/tenants/d/pipelines/small", &viewer).expect(200);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = server.get("/v1/tenants/d/pipelines/small", &viewer).expect(200);
        assert_eq!(now["status"]["state"], "paused", "{now}");
        if last_batch(&now) == last_batch(&then) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "batches go on while paused: {then}\n{now}"
        );
        then = now;
    }
    server
        .send(server.request("POST", "/v1/tenants/d/pipelines/small/resume", Some(&d)))
        .expect(200);
    wait_state_of(&server, "d", &viewer, "small", "running");
    let expected = BTreeMap::from([("one".into(), 1), ("two".into(), 2)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = weir_tests::summed_counts(&server.root("d").join("out/small"));
        if counts == expected {
            break;
        }
        assert!(Instant::now() < deadline, "{counts:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The admin removes the tenant: its pipeline stops, its tokens stop
    // working at once, its root is gone, and its name is free again.
    let root = server.root("d");
    server
        .send(server.request("DELETE", "/v1/tenants/d", Some(ADMIN_TOKEN)))
        .expect(204);
    assert_eq!(server.get("/v1/tenants/d/pipelines", &d).status.as_u16(), 401);
    assert_eq!(
        server.get("/v1/tenants/d/pipelines", &viewer).status.as_u16(),
        401
    );
    assert_eq!(server.get("/v1/tenants/d", ADMIN_TOKEN).status.as_u16(), 404);
    assert!(!root.exists(), "{} is still there", root.display());
    let metrics = server.get("/metrics", ADMIN_TOKEN).expect(200);
    assert!(!metrics.as_str().unwrap().contains("tenant=\"d\""), "{metrics}");
    let again = server.tenant("d", json!({}));
    assert_eq!(
        server.get("/v1/tenants/d/pipelines", &again).expect(200),
        json!([])
    );
}

/// Waits until tenant t's pipeline `name` is in `state`; returns its status.
fn wait_state(server: &Server, token: &str, name: &str, state: &str) -> Value {
    wait_state_of(server, "t", token, name, state)
}

/// Waits until `tenant`'s pipeline `name` is in `state`; returns its status.
fn wait_state_of(server: &Server, tenant: &str, token: &str, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = server
            .get(&format!("/v1/tenants/{tenant}/pipelines/{name}"), token)
            .expect(200);
        if status["status"]["state"] == state {
            return status;
        }
        assert!(Instant::now() < deadline, "{name} is not {state}: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_input_gets_a_clear_4xx_and_the_server_stays_up() {
    let dir = weir_tests::scratch();
    let mut server = server(&dir.path().join("data"), &["--max-body", "1048576"]);
    let t = server.tenant("t", json!({}));
    // Malformed JSON, unknown fields, bad names.
    let answer = server.send(
        server
            .request("POST", "/v1/tenants", Some(ADMIN_TOKEN))
            .body("{\"name\":"),
    );
    assert_eq!(answer.status.as_u16(), 400);
    assert!(answer.error().starts_with("invalid JSON body"), "{}", answer.body);
    server
        .post("/v1/tenants", ADMIN_TOKEN, &json!({"name": "x", "colour": "red"}))
        .expect_error(400, "unknown field `colour`");
    let answer = server.post("/v1/tenants", ADMIN_TOKEN, &json!({"name": "../etc"}));
    assert_eq!(answer.status.as_u16(), 400, "{}", answer.body);
    assert_eq!(
        server
            .post("/v1/tenants", ADMIN_TOKEN, &json!({"name": "t"}))
            .status
            .as_u16(),
        409
    );
    // Malformed TOML and invalid pipelines: file, line and message, as `weir check` says them.
    server
        .deploy("t", &t, "[pipeline\nname = 1")
        .expect_error(400, "pipeline.toml");
    let answer = server.deploy("t", &t, &wordcount_with("w", "op = \"flat-map\"", "op = \"fly\""));
    assert_eq!(answer.status.as_u16(), 400, "{}", answer.body);
    assert!(
        answer.error().starts_with("pipeline.toml:15: unknown op `fly`"),
        "{}",
        answer.error()
    );
    // The same file through `weir check` words it the same.
    let file = weir_tests::write_pipeline(
        dir.path(),
        "pipeline.toml",
        &wordcount_with("w", "op = \"flat-map\"", "op = \"fly\""),
    );
    let check = weir_tests::Weir::new(env!("CARGO_BIN_EXE_weir"))
        .run(&["check", file.to_str().unwrap()], Duration::from_secs(60));
    assert!(
        weir_tests::stderr(&check).contains("pipeline.toml:15: unknown op `fly`"),
        "{}",
        weir_tests::stderr(&check)
    );
    // Not a component; too large; not UTF-8.
    let answer = server.send(
        server
            .request("PUT", "/v1/tenants/t/plugins/junk", Some(&t))
            .body("not wasm"),
    );
    assert_eq!(answer.status.as_u16(), 400, "{}", answer.body);
    assert!(
        answer.error().starts_with("not a usable Weir plugin"),
        "{}",
        answer.error()
    );
    let answer = server.send(
        server
            .request("PUT", "/v1/tenants/t/plugins/big", Some(&t))
            .body(vec![0u8; 2 << 20]),
    );
    assert_eq!(answer.status.as_u16(), 413, "{}", answer.body);
    let answer = server.send(
        server
            .request("POST", "/v1/tenants/t/pipelines", Some(&t))
            .body(vec![0xff, 0xfe, 0x00]),
    );
    assert_eq!(answer.status.as_u16(), 400, "{}", answer.body);
    // After a refused body the next call on the same client still gets its
    // answer (the refusal closes the connection instead of leaving it to be
    // reused with the body unread).
    for round in 0..20 {
        let big = server.send(
            server
                .request("PUT", "/v1/tenants/t/plugins/big", Some(&t))
                .body(vec![0u8; 2 << 20]),
        );
        assert_eq!(big.status.as_u16(), 413);
        if round < 3 {
            // (Few: repeated failures are answered slowly.)
            let request = server.request("PUT", "/v1/tenants/t/plugins/big", Some("nope"));
            let unknown = server.send(request.body(vec![1u8; 1 << 16]));
            assert_eq!(unknown.status.as_u16(), 401);
        }
        assert_eq!(server.get("/v1/tenants/t/pipelines", &t).status.as_u16(), 200);
    }
    // Unknown routes and methods.
    assert_eq!(server.get("/v2/anything", &t).status.as_u16(), 404);
    let answer = server.send(server.request("PATCH", "/v1/tenants/t/pipelines", Some(&t)));
    assert_eq!(answer.status.as_u16(), 405, "{}", answer.body);
    assert!(!answer.error().is_empty());
    let answer = server.send(server.request("POST", "/v1/tenants/t/pipelines/none/explode", Some(&t)));
    assert_eq!(answer.status.as_u16(), 404, "{}", answer.body);

    // A bounded fuzz run: random bodies on every route and method, as
    // tenant t's operator and as the admin (on a tenant of its own, which
    // the admin's calls may change or remove).
    server.tenant("f", json!({}));
    let routes = [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/metrics",
        "/v1/whoami",
        "/v1/audit",
        "/v1/tenants",
        "/v1/tenants/{tenant}",
        "/v1/tenants/{tenant}/tokens",
        "/v1/tenants/{tenant}/tokens/abc",
        "/v1/tenants/{tenant}/plugins",
        "/v1/tenants/{tenant}/plugins/p",
        "/v1/tenants/{tenant}/files/in/fuzz.txt",
        "/v1/tenants/{tenant}/pipelines",
        "/v1/tenants/{tenant}/pipelines/p",
        "/v1/tenants/{tenant}/pipelines/p/metrics",
        "/v1/tenants/{tenant}/pipelines/p/events",
        "/v1/tenants/{tenant}/pipelines/p/batches",
        "/v1/tenants/{tenant}/pipelines/p/checkpoints",
        "/v1/tenants/{tenant}/pipelines/p/file",
        "/v1/tenants/{tenant}/pipelines/p/history",
        "/v1/tenants/{tenant}/pipelines/p/stages/s/swap",
        "/v1/tenants/{tenant}/pipelines/p/stages/s/rollback",
        "/v1/tenants/{tenant}/pipelines/p/stages/s/promote",
        "/v1/tenants/{tenant}/pipelines/p/start",
        "/v1/tenants/{tenant}/pipelines/p/stop",
        "/v1/tenants/{tenant}/pipelines/p/pause",
        "/v1/tenants/{tenant}/pipelines/p/resume",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..(routes.len() * 16) {
        let (token, tenant) = if round % 3 == 2 {
            (ADMIN_TOKEN, "f")
        } else {
            (t.as_str(), "t")
        };
        let route = routes[round % routes.len()].replace("{tenant}", tenant);
        let mut method = ["GET", "POST", "PUT", "PATCH", "DELETE"][(next() % 5) as usize];
        if method == "DELETE" && route == "/v1/tenants/f" {
            // The admin's tenant stays, so that its later rounds reach
            // the routes under it.
            method = "GET";
        }
        let len = (next() % 512) as usize;
        let body: Vec<u8> = match next() % 5 {
            0 => (0..len).map(|_| next() as u8).collect(),
            1 => format!("{{\"name\": {}, \"role\": \"{}\"}}", next() % 1000, next()).into_bytes(),
            2 => format!("[pipeline]\nname = \"p{}\"\n[[source]]\nname = 1", next() % 10).into_bytes(),
            3 => format!(
                "{{\"plugin\": \"p\", \"mode\": \"{}\", \"to\": {}, \"quotas\": {{\"max_fuel\": \"x\"}}}}",
                next() % 7,
                next() % 100
            )
            .into_bytes(),
            _ => b"{\"quotas\": {\"max_pipelines\": -1}}".to_vec(),
        };
        let answer = server.send(server.request(method, &route, Some(token)).body(body));
        assert!(
            answer.status.as_u16() < 500,
            "{method} {route}: {} {}",
            answer.status,
            answer.body
        );
    }
    assert_eq!(
        server
            .send(server.request("GET", "/healthz", None))
            .status
            .as_u16(),
        200
    );
    assert_eq!(
        server
            .send(server.request("GET", "/readyz", None))
            .status
            .as_u16(),
        200
    );
    // Prometheus text for the admin.
    let metrics = server.get("/metrics", ADMIN_TOKEN);
    assert_eq!(metrics.status.as_u16(), 200);
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("weir_tenant_disk_quota_bytes{tenant=\"t\"}"),
        "{}",
        metrics.body
    );

    // Guessing tokens: past five failures a minute from one address, each
    // refusal waits longer (100 ms, 200 ms, 400 ms, ...). The failures
    // above count too, so these are at least as slow as from none.
    let mut last = Duration::ZERO;
    for guess in 0..8 {
        let started = Instant::now();
        let answer = server.get("/v1/tenants/t", &format!("weir_0123456789abcdef_guess{guess}"));
        assert_eq!(answer.status.as_u16(), 401);
        last = started.elapsed();
    }
    assert!(
        last >= Duration::from_millis(400),
        "the eighth failure in a row was answered in {last:?}"
    );
    // A valid token from the same address is not held back.
    server.get("/v1/tenants/t/pipelines", &t).expect(200);
    let log = server.terminate();
    assert!(
        log.contains("repeated failed authentication; answering slowly"),
        "{log}"
    );
}

/// Words of file `i` of the restart test: each word unique to its file.
fn file_words(i: usize) -> String {
    (0..50).map(|j| format!("w{i}x{j}")).collect::<Vec<_>>().join(" ") + "\n"
}

#[test]
fn concurrent_calls_stay_consistent_and_kill_9_resumes_every_pipeline_exactly() {
    let dir = weir_tests::scratch();
    let mut server = server(&dir.path().join("data"), &[]);
    let t = server.tenant("t", json!({ "quotas": { "max_pipelines": 20 } }));
    server
        .push_plugin("t", &t, "split-words", plugins::SPLIT_WORDS)
        .expect(201);
    let input = server.root("t").join("in");
    std::fs::create_dir_all(&input).unwrap();
    for i in 0..40 {
        std::fs::write(input.join(format!("f{i:03}.txt")), file_words(i)).unwrap();
    }
    // 100 concurrent deploy / stop / status calls on 5 pipelines.
    let names: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
    std::thread::scope(|scope| {
        for call in 0..100 {
            let (server, t, name) = (&server, &t, &names[call % names.len()]);
            scope.spawn(move || {
                let answer = match call % 4 {
                    0 | 1 => server.deploy("t", t, &wordcount(name)),
                    2 => server.post(&format!("/v1/tenants/t/pipelines/{name}/stop"), t, &json!(null)),
                    _ => server.get(&format!("/v1/tenants/t/pipelines/{name}"), t),
                };
                // Each answer is one of the expected ones.
                assert!(
                    matches!(answer.status.as_u16(), 200 | 201 | 404 | 409),
                    "{name}: {} {}",
                    answer.status,
                    answer.body
                );
            });
        }
    });
    // The server's view is consistent with itself and its disk: every
    // deployed pipeline is listed once, running exactly when desired.
    let settle = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let listed = server.get("/v1/tenants/t/pipelines", &t).expect(200);
        let settled = listed.as_array().unwrap().iter().all(|p| {
            let state = p["status"]["state"].as_str().unwrap_or("stopped");
            (p["desired"] == "running") == (state == "running")
        });
        if settled || Instant::now() > settle {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut listed_names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    listed_names.sort();
    let mut on_disk: Vec<String> = std::fs::read_dir(server.data().join("tenants/t/pipelines"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|f| f.strip_suffix(".json").map(str::to_owned))
        .collect();
    on_disk.sort();
    assert_eq!(listed_names, on_disk, "{listed}");
    for pipeline in listed.as_array().unwrap() {
        let state = pipeline["status"]["state"].as_str().unwrap_or("stopped");
        assert_eq!(pipeline["desired"] == "running", state == "running", "{pipeline}");
    }

    // Make p0 run, then kill -9 the server mid-run and start it again.
    for name in &names {
        server.send(server.request("DELETE", &format!("/v1/tenants/t/pipelines/{name}"), Some(&t)));
    }
    let _ = std::fs::remove_dir_all(server.root("t").join("out"));
    let _ = std::fs::remove_dir_all(server.root("t").join("checkpoints"));
    server.deploy("t", &t, &wordcount("exact")).expect(201);
    server.deploy("t", &t, &wordcount("idle")).expect(201);
    server
        .post("/v1/tenants/t/pipelines/idle/stop", &t, &json!(null))
        .expect(200);
    server.wait_batch("t", &t, "exact", 5, Duration::from_secs(60));
    server.kill9();
    server.restart_logging("info");
    let t = t.clone();
    // Restored as it was: `exact` running, `idle` stopped.
    let idle = server.get("/v1/tenants/t/pipelines/idle", &t).expect(200);
    assert_eq!(idle["desired"], "stopped", "{idle}");
    assert!(idle["status"].is_null(), "{idle}");
    let status = server.wait_batch("t", &t, "exact", 45, Duration::from_secs(120));
    assert_eq!(status["desired"], "running");
    let mut expected = BTreeMap::new();
    for i in 0..40 {
        for (word, count) in weir_tests::word_counts(&file_words(i)) {
            *expected.entry(word).or_insert(0) += count;
        }
    }
    let out = server.root("t").join("out/exact");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = weir_tests::summed_counts(&out);
        if counts == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "output after kill -9 and restart is not exact: {} words of {}",
            counts.len(),
            expected.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGTERM stops every pipeline gracefully (each finishes and says so);
    // they stay desired running. The admin token never reaches the log.
    let log = server.terminate();
    assert!(log.contains("stopping every pipeline gracefully"), "{log}");
    let finished = log
        .lines()
        .filter(|line| line.contains("pipeline finished") && line.contains("exact"))
        .count();
    assert_eq!(finished, 1, "{log}");
    assert!(
        !log.contains(ADMIN_TOKEN),
        "the admin token is in the log:\n{log}"
    );
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(server.data().join("tenants/t/pipelines/exact.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["desired"], "running");
}

#[test]
fn the_cli_client_and_tls() {
    let dir = weir_tests::scratch();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tls");
    let (cert, key) = (fixtures.join("cert.pem"), fixtures.join("key.pem"));
    let pem = std::fs::read(&cert).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let server = server(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .with_client(client);
    assert!(server.url.starts_with("https://"));
    server.get("/v1/whoami", ADMIN_TOKEN).expect(200);
    // Plain HTTP on the TLS port gets nothing.
    let plain = server.url.replace("https://", "http://");
    assert!(reqwest::blocking::get(format!("{plain}/healthz")).is_err());

    let weir = weir_tests::Weir::new(env!("CARGO_BIN_EXE_weir"));
    let admin_file = dir.path().join("admin-token");
    std::fs::write(&admin_file, ADMIN_TOKEN).unwrap();
    let cli = |token: &std::path::Path, args: &[&str]| {
        let mut all = vec![
            "--server",
            server.url.as_str(),
            "--ca-cert",
            cert.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        weir.run(&all, Duration::from_secs(120))
    };
    let made = cli(&admin_file, &["tenant", "create", "acme"]);
    assert!(made.status.success(), "{}", weir_tests::stderr(&made));
    let token = cli(
        &admin_file,
        &["--tenant", "acme", "token", "create", "--role", "operator"],
    );
    assert!(token.status.success(), "{}", weir_tests::stderr(&token));
    let token_file = dir.path().join("acme-token");
    std::fs::write(&token_file, weir_tests::stdout(&token).trim()).unwrap();
    let pushed = cli(
        &token_file,
        &["plugin", "push", "split-words", plugins::SPLIT_WORDS],
    );
    assert!(pushed.status.success(), "{}", weir_tests::stderr(&pushed));
    std::fs::create_dir_all(server.root("acme").join("in")).unwrap();
    std::fs::write(server.root("acme").join("in/a.txt"), "one two two\n").unwrap();
    let file = weir_tests::write_pipeline(dir.path(), "wc.toml", &wordcount("wc"));
    let deployed = cli(&token_file, &["deploy", file.to_str().unwrap()]);
    assert!(deployed.status.success(), "{}", weir_tests::stderr(&deployed));
    server.wait_batch(
        "acme",
        weir_tests::stdout(&token).trim(),
        "wc",
        0,
        Duration::from_secs(60),
    );
    let ps = cli(&token_file, &["ps"]);
    let listing = weir_tests::stdout(&ps);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("wc ") && l.contains("running")),
        "{listing}"
    );
    // `status` prints the pipeline's view as JSON; `pause` and `resume`
    // change it.
    let state_of = |answer: &std::process::Output| -> Value {
        assert!(answer.status.success(), "{}", weir_tests::stderr(answer));
        serde_json::from_str(&weir_tests::stdout(answer)).expect("status prints JSON")
    };
    let status = state_of(&cli(&token_file, &["status", "wc"]));
    assert_eq!(status["name"], "wc", "{status}");
    assert_eq!(status["status"]["state"], "running", "{status}");
    state_of(&cli(&token_file, &["pause", "wc"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_of(&cli(&token_file, &["status", "wc"]))["status"]["state"] != "paused" {
        assert!(Instant::now() < deadline, "wc never paused");
        std::thread::sleep(Duration::from_millis(100));
    }
    state_of(&cli(&token_file, &["resume", "wc"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_of(&cli(&token_file, &["status", "wc"]))["status"]["state"] != "running" {
        assert!(Instant::now() < deadline, "wc never resumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let missing = cli(&token_file, &["status", "nothing"]);
    assert!(!missing.status.success());
    assert!(
        weir_tests::stderr(&missing).contains("nothing"),
        "{}",
        weir_tests::stderr(&missing)
    );
    let stopped = cli(&token_file, &["stop", "wc"]);
    assert!(stopped.status.success(), "{}", weir_tests::stderr(&stopped));
    // Errors: the server's message, word for word, and a failing exit.
    let bad = weir_tests::write_pipeline(
        dir.path(),
        "bad.toml",
        &wordcount_with("w", "op = \"flat-map\"", "op = \"fly\""),
    );
    let refused = cli(&token_file, &["deploy", bad.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        weir_tests::stderr(&refused).contains("pipeline.toml:15: unknown op `fly`"),
        "{}",
        weir_tests::stderr(&refused)
    );
    let counts = weir_tests::summed_counts(&server.root("acme").join("out/wc"));
    assert_eq!(counts, BTreeMap::from([("one".into(), 1), ("two".into(), 2)]));
}

#[test]
fn tenants_upload_input_files_into_their_own_root_only() {
    let dir = weir_tests::scratch();
    let server = server(&dir.path().join("data"), &[]);
    let a = server.tenant("a", json!({ "quotas": { "max_disk_bytes": 1_000_000 } }));
    let b = server.tenant("b", json!({}));
    server
        .push_plugin("a", &a, "split-words", plugins::SPLIT_WORDS)
        .expect(201);
    server.deploy("a", &a, &wordcount("wc")).expect(201);

    // A file written through the API is read by the pipeline's files source.
    let written = server
        .put_file("a", &a, "in/1.txt", "uploaded words uploaded\n")
        .expect(201);
    assert_eq!(written["bytes"], json!(24));
    let counted = || {
        weir_tests::sink_lines(&server.root("a").join("out/wc"))
            .into_iter()
            .map(|(_, line)| line)
            .collect::<Vec<_>>()
    };
    let started = Instant::now();
    while !counted().contains(&"uploaded\t2".to_owned()) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the uploaded file was not counted: {:?}",
            counted()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.root("a").join("in/1.txt").exists());
    assert!(!server.root("b").join("in/1.txt").exists());

    // Only inside the tenant's root, never a dot-name, within the quota, by its own tokens.
    server
        // `..` encoded, so that the client sends it as it is.
        .put_file("a", &a, "%2E%2E%2Fb%2Froot%2Fin%2Fx.txt", "x\n")
        .expect_error(400, "tenant's root");
    server
        .put_file("a", &a, "in/.hidden", "x\n")
        .expect_error(400, "dot-name");
    server
        .put_file("a", &a, "in/big.txt", &"x".repeat(2_000_000))
        .expect_error(422, "disk quota");
    // Another tenant's token does not even see tenant `a`.
    server
        .put_file("a", &b, "in/2.txt", "x\n")
        .expect_error(404, "no tenant");
    let viewer = server.token("a", "viewer");
    server
        .put_file("a", &viewer, "in/2.txt", "x\n")
        .expect_error(403, "");

    server
        .send(server.request("DELETE", "/v1/tenants/a/files/in/1.txt", Some(&a)))
        .expect(204);
    assert!(!server.root("a").join("in/1.txt").exists());
    server
        .send(server.request("DELETE", "/v1/tenants/a/files/in/1.txt", Some(&a)))
        .expect_error(404, "no file");
    let audit = server.get("/v1/audit?tenant=a", ADMIN_TOKEN).expect(200);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["action"] == json!("write file in/1.txt") && entry["result"] == json!("ok")),
        "{audit}"
    );
}

#[test]
fn a_read_dir_swapped_for_a_link_after_the_deploy_does_not_lead_out_of_the_root() {
    let dir = weir_tests::scratch();
    let server = server(&dir.path().join("data"), &[]);
    let a = server.tenant("a", json!({}));
    let b = server.tenant("b", json!({}));
    server
        .put_file("b", &b, "secret.txt", "b-secret-contents\n")
        .expect(201);
    server
        .push_plugin("a", &a, "probe", plugins::PROBE_CAPABILITIES)
        .expect(201);
    server
        .put_file("a", &a, "lookup/x.txt", "a-contents\n")
        .expect(201);
    // Larger than the stage's memory: reading it traps, and the instance is
    // made again for the next batch.
    server
        .put_file("a", &a, "lookup/big.txt", &"x".repeat(3 << 20))
        .expect(201);
    let pipeline = r#"
[pipeline]
name = "probe"
batch-interval = "100ms"
partitions = 1

[[source]]
name = "lines"
type = "files"
path = "in"
max-files-per-batch = 1

[[stage]]
name = "probed"
input = "lines"
op = "map"
plugin = "probe"
read-dir = "lookup"
limits = { memory = "2MiB" }
on-error = "skip-batch"

[[sink]]
input = "probed"
type = "files"
path = "out"
"#;
    server.deploy("a", &a, pipeline).expect(201);
    let out = server.root("a").join("out");
    let lines = || {
        weir_tests::sink_lines(&out)
            .into_iter()
            .map(|(_, line)| line)
            .collect::<Vec<_>>()
    };
    let wait_for = |what: &str, check: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !check(&lines()) {
            assert!(Instant::now() < deadline, "{what}: {:?}", lines());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    server
        .put_file("a", &a, "in/1.txt", "read /data/x.txt\n")
        .expect(201);
    wait_for("the granted file is read", &|l| {
        l.contains(&"ok: a-contents".to_owned())
    });

    // The directory is swapped for a link to B's root while it runs.
    let root = server.root("a");
    std::fs::rename(root.join("lookup"), root.join("lookup-before")).unwrap();
    std::os::unix::fs::symlink(server.root("b"), root.join("lookup")).unwrap();
    // A trap makes the stage's next batch run on a new instance.
    server
        .put_file("a", &a, "in/2.txt", "read /data/big.txt\n")
        .expect(201);
    let skipped = || {
        server
            .get("/v1/tenants/a/pipelines/probe/metrics", &a)
            .expect(200)["stages"][0]["skipped_batches"]
            .as_u64()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while skipped() < 1 {
        assert!(Instant::now() < deadline, "the big read did not trap");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
        .put_file("a", &a, "in/3.txt", "read /data/secret.txt\n")
        .expect(201);
    // Its new instance cannot open the directory through the link: the
    // batch is refused (and skipped), never run on B's files.
    let leaked = || lines().iter().any(|line| line.contains("b-secret"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while skipped() < 2 && !leaked() {
        assert!(
            Instant::now() < deadline,
            "the third batch was not refused: {:?}",
            lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!leaked(), "tenant a read tenant b's file: {:?}", lines());
}

#[test]
fn a_tenant_may_not_sign_object_requests_with_the_server_s_credentials() {
    let dir = weir_tests::scratch();
    let server = server(&dir.path().join("data"), &[]);
    let store = format!("127.0.0.1:{}", weir_tests::free_port());
    let t = server.tenant("t", json!({ "allowed_addresses": [store.clone()] }));
    let pipeline = |keys: &str| {
        let name = if keys.contains("anonymous") {
            "public"
        } else {
            "upload"
        };
        format!(
            "[pipeline]\nname = \"{name}\"\nbatch-interval = \"1s\"\n\n\
             [[source]]\nname = \"lines\"\ntype = \"files\"\npath = \"in\"\n\n\
             [[sink]]\ninput = \"lines\"\ntype = \"files\"\npath = \"s3://bucket/out\"\n\
             endpoint = \"http://{store}\"\n{keys}"
        )
    };
    // Without keys of its own a pipeline would sign with whatever the
    // server's environment holds (its IAM role, say): refused, saying so.
    for keys in ["", "credentials = \"environment\"\n"] {
        server
            .deploy("t", &t, &pipeline(keys))
            .expect_error(400, "may not sign with the server's own AWS credentials");
    }
    // Its own keys, or unsigned requests, are its to use.
    server
        .deploy("t", &t, &pipeline("credentials = \"anonymous\"\n"))
        .expect(201);
    server
        .deploy(
            "t",
            &t,
            &pipeline("access-key-id = \"id\"\nsecret-access-key = \"secret\"\n"),
        )
        .expect(201);
}

#[test]
fn a_write_ahead_log_swapped_for_a_link_does_not_lead_out_of_the_root() {
    let dir = weir_tests::scratch();
    let server = server(&dir.path().join("data"), &[]);
    let port = weir_tests::free_port();
    let a = server.tenant("a", json!({ "allowed_addresses": [format!("127.0.0.1:{port}")] }));
    server.tenant("b", json!({}));
    let pipeline = format!(
        r#"
[pipeline]
name = "logged"
batch-interval = "100ms"

[[source]]
name = "lines"
type = "socket"
address = "127.0.0.1:{port}"
mode = "listen"

[[sink]]
input = "lines"
type = "files"
path = "out"
"#
    );
    server.deploy("a", &a, &pipeline).expect(201);
    let wait_state = |state: &str| -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let view = server.get("/v1/tenants/a/pipelines/logged", &a).expect(200);
            if view["status"]["state"] == state {
                return view;
            }
            assert!(Instant::now() < deadline, "not {state}: {view}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_state("running");
    // The source logs what it receives under the pipeline's checkpoint
    // directory; the log's directory is swapped for a link to B's root.
    let checkpoints = server.root("a").join("checkpoints/logged");
    let wal = checkpoints.join("wal");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !wal.exists() {
        assert!(
            Instant::now() < deadline,
            "no write-ahead log in {}",
            checkpoints.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
        .post("/v1/tenants/a/pipelines/logged/stop", &a, &json!(null))
        .expect(200);
    std::fs::rename(&wal, checkpoints.join("wal-before")).unwrap();
    std::os::unix::fs::symlink(server.root("b"), &wal).unwrap();
    server
        .post("/v1/tenants/a/pipelines/logged/start", &a, &json!(null))
        .expect(200);
    // The source cannot open its log through the link: the run fails, and
    // nothing is written into B's root.
    let status = wait_state("failed");
    let error = status["status"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("write-ahead log"), "{status}");
    let written: Vec<_> = std::fs::read_dir(server.root("b"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .collect();
    assert!(
        !written.iter().any(|name| name.to_string_lossy() == "lines"),
        "tenant a's log was written into tenant b's root: {written:?}"
    );
}

#[test]
fn a_tenants_cpu_share_is_split_among_its_running_pipelines() {
    let dir = weir_tests::scratch();
    let server = server(&dir.path().join("data"), &[]);
    let a = server.tenant("a", json!({}));
    let b = server.tenant("b", json!({}));
    let pipeline = |name: &str| {
        format!(
            "[pipeline]\nname = \"{name}\"\nbatch-interval = \"100ms\"\n\n[[source]]\nname = \"lines\"\ntype = \"generator\"\nrate = 100\n\n[[sink]]\ninput = \"lines\"\ntype = \"files\"\npath = \"out/{name}\"\n"
        )
    };
    server.deploy("a", &a, &pipeline("one")).expect(201);
    for name in ["x", "y", "z"] {
        server.deploy("b", &b, &pipeline(name)).expect(201);
    }
    let weight = |tenant: &str, token: &str, name: &str| {
        server
            .get(&format!("/v1/tenants/{tenant}/pipelines/{name}"), token)
            .expect(200)["cpu_weight"]
            .clone()
    };
    // Three turns a round for each tenant: a's one pipeline takes 3, b's 1 each.
    assert_eq!(weight("a", &a, "one"), json!(3));
    for name in ["x", "y", "z"] {
        assert_eq!(weight("b", &b, name), json!(1));
    }
    // b stops two: one pipeline each, the plain round robin again.
    for name in ["x", "y"] {
        server
            .post(&format!("/v1/tenants/b/pipelines/{name}/stop"), &b, &json!(null))
            .expect(200);
    }
    assert_eq!(weight("a", &a, "one"), json!(1));
    assert_eq!(weight("b", &b, "z"), json!(1));
    assert_eq!(
        weight("b", &b, "x"),
        json!(null),
        "a stopped pipeline has no weight"
    );
    // A share of 2 doubles a's turns.
    server
        .send(
            server
                .request("PATCH", "/v1/tenants/a", Some(ADMIN_TOKEN))
                .json(&json!({ "quotas": { "cpu_share": 2 } })),
        )
        .expect(200);
    assert_eq!(weight("a", &a, "one"), json!(2));
}

#[test]
fn a_tenants_sink_plugin_needs_its_grants_and_fits_its_quotas() {
    let receiver = weir_tests::http::HttpReceiver::start(weir_tests::http::Behaviour::Accept);
    let dir = weir_tests::scratch();
    let server = server(&dir.path().join("data"), &[]);
    let quotas = json!({ "max_stage_memory": 32 << 20 });
    let t = server.tenant(
        "t",
        json!({ "quotas": quotas, "allowed_addresses": [receiver.address()] }),
    );
    for (name, file) in [
        ("split-words", plugins::SPLIT_WORDS),
        ("post-counts", plugins::POST_COUNTS),
    ] {
        server.push_plugin("t", &t, name, file).expect(201);
    }
    std::fs::create_dir_all(server.root("t").join("in")).unwrap();
    std::fs::write(server.root("t").join("in/a.txt"), "weir weir words\n").unwrap();
    let pipeline = |sink: &str| {
        wordcount_with(
            "post",
            "type = \"files\"\npath = \"out/post\"",
            &format!(
                "type = \"plugin\"\nname = \"post\"\nplugin = \"post-counts\"\nconfig = {{ url = {:?} }}\n{sink}",
                receiver.url()
            ),
        )
        .replace(
            "plugin = \"split-words\"",
            "plugin = \"split-words\"\nlimits = { memory = \"16MiB\" }",
        )
    };
    // Hosts and addresses need the admin's grant.
    server
        .deploy("t", &t, &pipeline("allow-http = \"127.0.0.1:9\""))
        .expect_error(
            403,
            "sink `post` reaches `127.0.0.1:9`, which this tenant may not",
        );
    // The plugin may not write where the engine does.
    server
        .deploy("t", &t, &pipeline("write-dir = \"checkpoints/other\""))
        .expect_error(400, "overlaps the checkpoint directory");
    // Its instances count against the tenant's ceilings.
    let allowed = format!("allow-http = {:?}", receiver.address());
    server.deploy("t", &t, &pipeline(&allowed)).expect_error(
        422,
        "sink `post` asks for memory = 64 MiB, above this tenant's ceiling of 32 MiB",
    );
    // Within them, it posts the tenant's counts.
    let fitting = format!("{allowed}\nlimits = {{ memory = \"16MiB\" }}");
    server.deploy("t", &t, &pipeline(&fitting)).expect(201);
    let deadline = Instant::now() + Duration::from_secs(60);
    let bodies = || -> String { receiver.received().into_iter().map(|r| r.body).collect() };
    // The two words may be in different partitions: two writes.
    while !(bodies().contains("\"weir\"") && bodies().contains("\"words\"")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let bodies = bodies();
    let status = server.get("/v1/tenants/t/pipelines/post", &t);
    assert!(
        bodies.contains(r#"{"key":"weir","value":"2"}"#),
        "{bodies}; status {}",
        status.body
    );
    assert!(bodies.contains(r#"{"key":"words","value":"1"}"#), "{bodies}");
}
