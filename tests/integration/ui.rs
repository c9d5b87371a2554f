//! The web UI in a real headless Chromium (WebDriver): a `weir serve`'s
//! `/ui` behind its tokens, and a `weir run --ui`. The charts are checked
//! against the metrics API, the buttons against the pipeline's state, and
//! every page is shot (`target/ui-screenshots/`) at 1280×800 and 400 px.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::{Duration, Instant};

use weir_tests::browser::Browser;
use weir_tests::server::{ADMIN_TOKEN, Server, Value, json};
use weir_tests::{plugins, summed_counts, word_counts};

const WAIT: Duration = Duration::from_secs(60);

fn server(data: &std::path::Path) -> Server {
    Server::start(env!("CARGO_BIN_EXE_weir"), data, &[])
}

/// A word count from `in/` (one file a batch, `interval` apart) to `out/{name}`.
fn wordcount(name: &str, interval: &str) -> String {
    super::serve::wordcount(name).replace(
        r#"batch-interval = "100ms""#,
        &format!(r#"batch-interval = "{interval}""#),
    )
}

/// Writes `files` input files of `tenant` through the API; returns their text.
fn feed(server: &Server, tenant: &str, token: &str, files: usize) -> String {
    let mut all = String::new();
    for i in 0..files {
        let text = weir_tests::sample_text(40, i as u64 + 1);
        server
            .put_file(tenant, token, &format!("in/{i:03}.txt"), &text)
            .expect(201);
        all.push_str(&text);
    }
    all
}

fn log_in(browser: &Browser, server: &Server, token: &str) {
    browser.goto(&format!("{}/ui/login", server.url));
    browser.type_into("#token", token);
    browser.click("section.login button");
    browser.wait_until(WAIT, "the pipelines list", |b| b.has("table.pipelines"));
}

/// Clicks the button posting to a URL ending in `action`, and confirms.
fn press(browser: &Browser, action: &str) {
    press_button(browser, &format!(r#"button.act[data-url$="{action}"]"#));
}

/// Clicks the button `button` (CSS), and confirms.
fn press_button(browser: &Browser, button: &str) {
    let action = button;
    browser.wait_until(WAIT, &format!("a `{action}` button"), |b| b.has(button));
    browser.click(button);
    browser.wait_until(WAIT, "the confirmation", |b| b.has("dialog#confirm[open]"));
    browser.click("#confirm-ok");
}

fn badge(browser: &Browser) -> String {
    browser.text("#head .badge").unwrap_or_default()
}

/// Milliseconds of a serialized `Duration`.
fn ms(duration: &Value) -> f64 {
    duration["secs"].as_f64().unwrap() * 1e3 + duration["nanos"].as_f64().unwrap() / 1e6
}

/// Every chart's points on the page: series → [(batch, value)].
fn chart_points(browser: &Browser) -> BTreeMap<String, Vec<(u64, f64)>> {
    let found = browser.eval(
        "return Array.from(document.querySelectorAll('figure.chart')).map(f => [f.dataset.series, \
         Array.from(f.querySelectorAll('circle.point')).map(c => [Number(c.dataset.batch), Number(c.dataset.value)])]);",
    );
    found
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let points = pair[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
                .collect();
            (pair[0].as_str().unwrap().to_owned(), points)
        })
        .collect()
}

/// Waits up to `limit` for `check`; panics naming `what` if it never holds.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn no_horizontal_overflow(browser: &Browser) -> bool {
    browser.eval("return document.documentElement.scrollWidth <= window.innerWidth;") == json!(true)
}

#[test]
fn the_servers_ui_charts_match_the_metrics_api_and_pausing_from_it_loses_nothing() {
    let _cpu = super::cpu_heavy();
    let dir = weir_tests::scratch();
    let mut server = server(&dir.path().join("data"));
    let token = server.tenant("acme", json!({}));
    server
        .push_plugin("acme", &token, "split-words", plugins::SPLIT_WORDS)
        .expect(201);
    let text = feed(&server, "acme", &token, 60);
    let lines = text.lines().count() as u64;
    server
        .deploy("acme", &token, &wordcount("wc", "150ms"))
        .expect(201);
    let api = |path: &str| {
        server
            .get(&format!("/v1/tenants/acme/pipelines/wc{path}"), &token)
            .expect(200)
    };

    let browser = Browser::start(1280, 800);
    log_in(&browser, &server, &token);
    browser.wait_until(WAIT, "the pipeline listed as running", |b| {
        b.text(r#"tr[data-pipeline="wc"] .badge"#).as_deref() == Some("running")
    });
    browser.screenshot("pipelines");
    browser.click(r#"tr[data-pipeline="wc"] a"#);
    browser.wait_until(WAIT, "charts with five batches", |b| {
        chart_points(b).get("total-delay").is_some_and(|p| p.len() >= 5)
    });

    // Every point drawn is the API's figure for its batch.
    let drawn = chart_points(&browser);
    let batches = api("/batches");
    let by_id: BTreeMap<u64, &Value> = batches
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["batch"]["id"].as_u64().unwrap(), b))
        .collect();
    let figure = |series: &str, batch: &Value| match series {
        "input-rate" => batch["input_rate"].as_f64().unwrap(),
        "scheduling-delay" => ms(&batch["scheduling_delay"]),
        "processing-time" => ms(&batch["processing_time"]),
        "total-delay" => ms(&batch["total_delay"]),
        other => panic!("unexpected chart {other}"),
    };
    assert_eq!(drawn.len(), 4, "{drawn:?}");
    for (series, points) in &drawn {
        let mut matched = 0;
        for (batch, value) in points {
            if let Some(api) = by_id.get(batch) {
                let expected = figure(series, api);
                assert!(
                    (value - expected).abs() < 0.002,
                    "{series} of batch {batch}: the chart shows {value}, the API says {expected}"
                );
                matched += 1;
            }
        }
        assert!(matched >= 5, "{series}: only {matched} points matched the API");
    }
    let metrics = api("/metrics");
    assert!(metrics["batches"].as_u64().unwrap() >= 5, "{metrics}");
    assert!(no_horizontal_overflow(&browser), "the page is wider than 1280 px");
    browser.screenshot("pipeline");
    browser.resize(1280, 1900);
    browser.screenshot("pipeline-full");
    browser.resize(1280, 800);

    // Pause from the page: the API says paused, no batch is cut; resume.
    press(&browser, "/pause");
    // The desired state is written right after the pipeline pauses.
    wait_for(WAIT, "paused, and meant to be", || {
        let view = api("");
        view["status"]["state"] == "paused" && view["desired"] == "paused"
    });
    browser.wait_until(WAIT, "the page to show paused", |b| badge(b) == "paused");
    let before = api("/metrics")["batches"].clone();
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(
        api("/metrics")["batches"],
        before,
        "batches were cut while paused"
    );
    press(&browser, "/resume");
    browser.wait_until(WAIT, "the page to show running", |b| badge(b) == "running");
    // Each change is audited once done, on the server's side.
    wait_for(WAIT, "running, and both changes audited", || {
        let audit = server.get("/v1/audit?tenant=acme", ADMIN_TOKEN).expect(200);
        let audited = |action: &str| {
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == action && e["result"] == "ok")
        };
        api("")["desired"] == "running"
            && audited("pause pipeline wc (web UI)")
            && audited("resume pipeline wc (web UI)")
    });

    // Nothing was lost: every line is counted exactly once.
    let deadline = Instant::now() + Duration::from_secs(120);
    while api("/metrics")["records_in"].as_u64().unwrap() < lines {
        assert!(
            Instant::now() < deadline,
            "not every line read: {}",
            api("/metrics")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = server.root("acme").join("out/wc");
    let expected = word_counts(&text);
    let deadline = Instant::now() + WAIT;
    while summed_counts(&out) != expected {
        assert!(Instant::now() < deadline, "the counts differ from the input's");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The checkpoints the page lists are the API's.
    let checkpoints = api("/checkpoints");
    let written = checkpoints.as_array().unwrap().len();
    assert!(written >= 1, "no checkpoint written: {checkpoints}");
    browser.wait_until(WAIT, "the checkpoints listed", |b| {
        b.eval("return document.querySelectorAll('table.checkpoints tbody tr').length;")
            .as_u64()
            .is_some_and(|rows| rows as usize >= written)
    });
    let newest = checkpoints.as_array().unwrap().last().unwrap()["batch"].clone();
    assert!(
        browser
            .text("table.checkpoints tbody")
            .unwrap_or_default()
            .contains(&format!("#{newest}")),
        "the newest checkpoint (after batch {newest}) is not listed"
    );

    // A batch's page: what each stage did, as the API says.
    browser.click("table.batches tbody tr:first-child a");
    browser.wait_until(WAIT, "a batch page", |b| b.has("table.batch-stages"));
    let id: u64 = browser.url().rsplit('/').next().unwrap().parse().unwrap();
    let batch = api("/batches")
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["batch"]["id"] == id)
        .cloned()
        .expect("the batch is kept");
    for stage in batch["stages"].as_array().unwrap() {
        let name = stage["stage"].as_str().unwrap();
        let shown = browser
            .text(&format!(r#"tr[data-stage="{name}"] td:nth-child(2)"#))
            .unwrap()
            .replace(',', "");
        assert_eq!(
            shown,
            stage["records_in"].to_string(),
            "stage {name} of batch {id}"
        );
    }
    browser.screenshot("batch");

    // A narrow window: nothing sticks out sideways.
    browser.resize(400, 800);
    browser.goto(&format!("{}/ui/acme/wc", server.url));
    browser.wait_until(WAIT, "the narrow page's charts", |b| b.has("figure.chart circle"));
    assert!(no_horizontal_overflow(&browser), "the page is wider than 400 px");
    browser.screenshot("pipeline-narrow");
    browser.goto(&format!("{}/ui/", server.url));
    browser.wait_until(WAIT, "the narrow list", |b| b.has("table.pipelines"));
    assert!(no_horizontal_overflow(&browser), "the list is wider than 400 px");

    // A server with a live page open still stops at once on SIGTERM.
    browser.goto(&format!("{}/ui/acme/wc", server.url));
    browser.wait_until(WAIT, "the live page", |b| b.has("figure.chart"));
    let stopping = Instant::now();
    server.terminate();
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "SIGTERM took {:?}",
        stopping.elapsed()
    );
}

#[test]
fn a_tenants_ui_shows_only_its_own_pipelines_and_viewers_get_no_buttons() {
    let _cpu = super::cpu_heavy();
    let dir = weir_tests::scratch();
    let server = server(&dir.path().join("data"));
    let a = server.tenant("a", json!({}));
    let b = server.tenant("b", json!({}));
    for (tenant, token) in [("a", &a), ("b", &b)] {
        server
            .push_plugin(tenant, token, "split-words", plugins::SPLIT_WORDS)
            .expect(201);
        feed(&server, tenant, token, 3);
        server
            .deploy(tenant, token, &wordcount(&format!("{tenant}-count"), "200ms"))
            .expect(201);
    }

    let browser = Browser::start(1280, 800);
    log_in(&browser, &server, &a);
    assert!(browser.has(r#"tr[data-pipeline="a-count"]"#));
    assert!(
        !browser.has(r#"tr[data-pipeline="b-count"]"#),
        "a sees b's pipeline"
    );
    assert!(!browser.has("table.tenants"), "a tenant sees the tenants table");
    for page in ["/ui/b/b-count", "/ui/b/b-count/batches/0", "/ui/a/b-count"] {
        browser.goto(&format!("{}{page}", server.url));
        assert_eq!(browser.text("h1").as_deref(), Some("Not found"), "{page}");
    }
    // The same through plain HTTP with a's token: 404 for b's pages, its
    // stream and its buttons; b's pipeline runs on.
    let ui = |method: &str, path: &str, token: &str| {
        let request = server
            .request(method, path, None)
            .header("cookie", format!("weir_ui={token}"))
            .header("x-weir-ui", "1");
        server.send(request).status.as_u16()
    };
    assert_eq!(ui("GET", "/ui/b/b-count", &a), 404);
    assert_eq!(ui("GET", "/ui/b/b-count/live", &a), 404);
    assert_eq!(ui("POST", "/ui/b/b-count/actions/stop", &a), 404);
    assert_eq!(ui("GET", "/ui/b/b-count", &b), 200);
    let b_state = server.get("/v1/tenants/b/pipelines/b-count", &b).expect(200);
    assert_eq!(b_state["desired"], "running", "{b_state}");
    // No token: the pages send to the login form, the rest answer 401.
    let anonymous = server.send(server.request("GET", "/ui/a/a-count/live", None));
    assert_eq!(anonymous.status.as_u16(), 401);
    assert_eq!(
        ui("GET", "/ui/a/a-count", "weir_unknown_token"),
        200,
        "the login form"
    );
    // A change not posted by the UI's script is refused.
    let forged = server.send(
        server
            .request("POST", "/ui/a/a-count/actions/stop", None)
            .header("cookie", format!("weir_ui={a}")),
    );
    assert_eq!(forged.status.as_u16(), 403);

    // A viewer sees the page without buttons, and cannot post them.
    drop(browser);
    let viewer = server.token("a", "viewer");
    let browser = Browser::start(1280, 800);
    log_in(&browser, &server, &viewer);
    browser.goto(&format!("{}/ui/a/a-count", server.url));
    browser.wait_until(WAIT, "the page", |b| b.has("#head .badge"));
    assert!(!browser.has("button.act"), "a viewer got buttons");
    assert_eq!(ui("POST", "/ui/a/a-count/actions/pause", &viewer), 403);

    // An operator rolls back a version on probation from the page.
    server
        .push_plugin(
            "a",
            &a,
            "split-words-old",
            weir_tests::fixtures::SDK_0_1_SPLIT_WORDS,
        )
        .expect(201);
    let swap = json!({ "upload": "split-words-old", "rollback": { "batches": 1_000_000 } });
    server
        .post("/v1/tenants/a/pipelines/a-count/stages/words/swap", &a, &swap)
        .expect(200);
    drop(browser);
    let operator = Browser::start(1280, 800);
    log_in(&operator, &server, &a);
    operator.goto(&format!("{}/ui/a/a-count", server.url));
    operator.wait_until(WAIT, "the probation shown", |b| {
        b.text(r#"section.plugin[data-stage="words"]"#)
            .is_some_and(|t| t.contains("batches left"))
    });
    press_button(&operator, r#"button.act[data-url*="/stages/words/rollback"]"#);
    let old = weir_tests::server::sha256_file(weir_tests::fixtures::SDK_0_1_SPLIT_WORDS);
    let deadline = Instant::now() + WAIT;
    loop {
        let history = server
            .get("/v1/tenants/a/pipelines/a-count/history", &a)
            .expect(200);
        let versions = history["words/split-words"].as_array().unwrap();
        if versions
            .iter()
            .any(|v| v["sha256"] == old && v["outcome"] == "rolled-back")
        {
            break;
        }
        assert!(Instant::now() < deadline, "not rolled back: {history}");
        std::thread::sleep(Duration::from_millis(50));
    }
    operator.wait_until(WAIT, "the probation gone", |b| {
        !b.has(r#"button.act[data-url*="/rollback"]"#)
    });

    // The admin sees every tenant's pipelines and the tenants' quota use.
    drop(operator);
    let admin = Browser::start(1280, 800);
    log_in(&admin, &server, ADMIN_TOKEN);
    assert!(admin.has(r#"tr[data-pipeline="a-count"]"#));
    assert!(admin.has(r#"tr[data-pipeline="b-count"]"#));
    assert!(admin.has(r#"table.tenants tr[data-tenant="a"]"#));
    admin.screenshot("admin");
    // Logging out forgets the token.
    admin.click("form.logout button");
    admin.wait_until(WAIT, "the login form", |b| b.has("#token"));
    admin.goto(&format!("{}/ui/", server.url));
    assert!(admin.has("#token"), "still logged in after logging out");
}

#[test]
fn weir_run_ui_takes_the_next_free_port_and_its_buttons_pause_resume_and_stop() {
    let _cpu = super::cpu_heavy();
    let dir = weir_tests::scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let mut text = String::new();
    for i in 0..40 {
        let part = weir_tests::sample_text(40, i + 100);
        std::fs::write(input.join(format!("{i:03}.txt")), &part).unwrap();
        text.push_str(&part);
    }
    let pipeline = super::serve::wordcount("local-count")
        .replace(r#"batch-interval = "100ms""#, r#"batch-interval = "200ms""#)
        .replace(
            r#"path = "in""#,
            &format!("path = {:?}", input.display().to_string()),
        )
        .replace(
            r#"path = "out/local-count""#,
            &format!("path = {:?}", dir.path().join("out").display().to_string()),
        )
        .replace(
            "[[source]]",
            &format!(
                "[plugins]\nsplit-words = {:?}\n\n[[source]]",
                plugins::SPLIT_WORDS
            ),
        );
    let file = weir_tests::write_pipeline(dir.path(), "wc.toml", &pipeline);
    // The asked-for port is taken: the UI takes the next free one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut child = super::weir().spawn(&[
        "run",
        file.to_str().unwrap(),
        "--ui",
        &format!("127.0.0.1:{port}"),
    ]);
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let url = loop {
        let line = lines_rx
            .recv_timeout(WAIT)
            .expect("weir run printed no UI address");
        if let Some(url) = line.strip_prefix("weir: web UI at ") {
            break url.trim_end_matches("/ui/").to_owned();
        }
    };
    let chosen: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(chosen > port && chosen <= port + 20, "port {chosen} after {port}");
    // A name that is not a loopback one (DNS rebinding) is refused.
    let rebound = reqwest::blocking::Client::new()
        .get(format!("{url}/ui/"))
        .header("host", format!("rebinding.example:{chosen}"))
        .send()
        .unwrap();
    assert_eq!(rebound.status().as_u16(), 421);

    let browser = Browser::start(1280, 800);
    browser.goto(&format!("{url}/"));
    browser.wait_until(WAIT, "the local pipeline listed", |b| {
        b.has(r#"tr[data-pipeline="local-count"]"#)
    });
    browser.click(r#"tr[data-pipeline="local-count"] a"#);
    browser.wait_until(WAIT, "two batches charted", |b| {
        chart_points(b).get("input-rate").is_some_and(|p| p.len() >= 2)
    });
    press(&browser, "/pause");
    browser.wait_until(WAIT, "paused", |b| badge(b) == "paused");
    let last = || {
        browser
            .text("table.batches tbody tr:first-child a")
            .unwrap_or_default()
    };
    let paused_at = last();
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(last(), paused_at, "batches were cut while paused");
    press(&browser, "/resume");
    browser.wait_until(WAIT, "running", |b| badge(b) == "running");
    browser.wait_until(WAIT, "every file read", |b| {
        b.text(".fact:nth-child(5) .value").is_some_and(|v| {
            v.replace(',', "")
                .starts_with(&format!("{} /", text.lines().count()))
        })
    });
    browser.screenshot("run-pipeline");
    press(&browser, "/stop");
    let status = weir_tests::wait_status(&mut child, WAIT);
    assert!(status.success(), "weir run exited with {status}");
    assert_eq!(summed_counts(&dir.path().join("out")), word_counts(&text));
    drop(taken);
}
