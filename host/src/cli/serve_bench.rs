//! `weir bench --suite serve`: one `weir serve` process (this binary, a
//! child) hosting many tenants, measured from outside through its API as a
//! platform team would see it.
//!
//! - **Deploy latency**: every deploy's round trip (POST of the pipeline
//!   file to its 201) once the plugin is in the server's catalog, p50 / p99
//!   / max; the first deploy, which compiles the plugin, apart.
//! - **Idle cost**: `tenants` tenants × `per_tenant` idle word counts (a
//!   files source on an empty directory, 1 s batches): the server's
//!   resident memory, threads, and CPU time over an idle window.
//! - **Isolation**: a healthy tenant's word count (50,000 lines/s, 100 ms
//!   batches), its mean batch processing time alone and next to a tenant
//!   whose plugin loops to its deadline on every batch, alternating rounds.
//! - **Shutdown**: SIGTERM to exit with every pipeline stopped gracefully.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::blocking::Client;
use serde_json::json;

use super::process::{cpu_of, resident_of, threads_of};

/// The admin token of the benchmark's server.
const ADMIN: &str = "bench-admin-token-0123456789";

/// What the server benchmark measured.
#[derive(Debug, Clone)]
pub struct ServeReport {
    /// Tenants created.
    pub tenants: usize,
    /// Pipelines deployed and running.
    pub pipelines: usize,
    /// The first deploy.
    pub first_deploy: Duration,
    /// Deploys after the first: p50, p99, max.
    pub deploy: [Duration; 3],
    /// The first plugin upload (validation compiles it).
    pub first_upload: Duration,
    /// Plugin uploads after the first (validation finds it compiled): p50.
    pub upload_p50: Duration,
    /// Resident memory with no tenant.
    pub rss_empty: u64,
    /// Resident memory with every pipeline running idle.
    pub rss_idle: u64,
    /// Threads of the server with every pipeline running.
    pub threads: usize,
    /// CPU time of the server per second of wall time, idle.
    pub idle_cpu: f64,
    /// The healthy tenant's mean batch processing time: alone, next to
    /// the looping tenant.
    pub isolation: [Duration; 2],
    /// SIGTERM to exit.
    pub shutdown: Duration,
}

/// Runs the benchmark with the `weir` binary `weir` and the split-words
/// component `plugin`.
pub fn run(
    weir: &Path,
    plugin: &Path,
    looping: &Path,
    tenants: usize,
    per_tenant: usize,
) -> anyhow::Result<ServeReport> {
    let dir = tempfile::Builder::new().prefix("weir-bench-serve-").tempdir()?;
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN)?;
    let mut child = Command::new(weir)
        .args(["serve", "--data"])
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--admin-token-file"])
        .arg(&token_file)
        // The looping tenant's skipped batches are warnings: not for the
        // report (unless WEIR_LOG asks for them).
        .env(
            "WEIR_LOG",
            std::env::var("WEIR_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start weir serve")?;
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let Some(addr) = line.trim().strip_prefix("listening ") else {
        let _ = child.kill();
        bail!("weir serve did not start: {line:?}");
    };
    let base = format!("http://{addr}");
    std::thread::spawn(move || for _ in stdout.lines() {});
    let result = measure(&base, pid, plugin, tenants, per_tenant).and_then(|report| {
        isolation(&base, plugin, looping).map(|isolation| ServeReport { isolation, ..report })
    });
    let stopping = Instant::now();
    // SAFETY: `pid` is our live child; SIGTERM asks it to stop.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = child.wait()?;
    let shutdown = stopping.elapsed();
    if !status.success() {
        bail!("weir serve exited with {status}");
    }
    let mut report = result?;
    report.shutdown = shutdown;
    Ok(report)
}

/// The benchmark's client of the server's API.
struct Api {
    http: Client,
    base: String,
}

impl Api {
    fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: Client::builder().timeout(Duration::from_secs(300)).build()?,
            base: base.to_owned(),
        })
    }

    /// Sends `method path` with `token` (and `body`); the answer's JSON.
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<reqwest::blocking::Body>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send()?;
        let status = response.status();
        let text = response.text()?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or_default())
    }

    fn post(
        &self,
        path: &str,
        token: &str,
        body: impl Into<reqwest::blocking::Body>,
    ) -> anyhow::Result<serde_json::Value> {
        self.call(reqwest::Method::POST, path, token, Some(body.into()))
    }

    fn get(&self, path: &str, token: &str) -> anyhow::Result<serde_json::Value> {
        self.call(reqwest::Method::GET, path, token, None)
    }

    /// Creates tenant `name` with an operator token and `component`
    /// uploaded as plugin `plugin`; returns the token and the upload's time.
    fn tenant(&self, name: &str, plugin: &str, component: &[u8]) -> anyhow::Result<(String, Duration)> {
        self.post("/v1/tenants", ADMIN, json!({ "name": name }).to_string())?;
        let made = self.post(
            &format!("/v1/tenants/{name}/tokens"),
            ADMIN,
            json!({ "role": "operator" }).to_string(),
        )?;
        let token = made["token"].as_str().unwrap_or_default().to_owned();
        let started = Instant::now();
        let path = format!("/v1/tenants/{name}/plugins/{plugin}");
        self.call(
            reqwest::Method::PUT,
            &path,
            &token,
            Some(component.to_vec().into()),
        )?;
        Ok((token, started.elapsed()))
    }
}

fn measure(
    base: &str,
    pid: u32,
    plugin: &Path,
    tenants: usize,
    per_tenant: usize,
) -> anyhow::Result<ServeReport> {
    let api = Api::new(base)?;
    let component = std::fs::read(plugin).with_context(|| format!("cannot read {}", plugin.display()))?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_empty = resident_of(pid).unwrap_or(0);
    let mut first_deploy = None;
    let mut deploys = Vec::new();
    let mut uploads = Vec::new();
    for t in 0..tenants {
        let tenant = format!("t{t:03}");
        let (token, upload) = api.tenant(&tenant, "split-words", &component)?;
        uploads.push(upload);
        for p in 0..per_tenant {
            let text = format!(
                "[pipeline]\nname = \"idle{p}\"\nbatch-interval = \"1s\"\npartitions = 1\n\n\
                 [[source]]\nname = \"lines\"\ntype = \"files\"\npath = \"in{p}\"\n\n\
                 [[stage]]\nname = \"words\"\ninput = \"lines\"\nop = \"flat-map\"\nplugin = \"split-words\"\n\n\
                 [[stage]]\nname = \"counts\"\ninput = \"words\"\nop = \"reduce-by-key\"\nreducer = \"count\"\n\n\
                 [[sink]]\ninput = \"counts\"\ntype = \"files\"\npath = \"out{p}\"\n"
            );
            let started = Instant::now();
            api.post(&format!("/v1/tenants/{tenant}/pipelines"), &token, text)?;
            let took = started.elapsed();
            match first_deploy {
                None => first_deploy = Some(took),
                Some(_) => deploys.push(took),
            }
        }
    }
    // Let every pipeline reach its steady idle state.
    std::thread::sleep(Duration::from_secs(5));
    let window = Duration::from_secs(10);
    let cpu_before = cpu_of(pid).unwrap_or_default();
    std::thread::sleep(window);
    let cpu_after = cpu_of(pid).unwrap_or_default();
    deploys.sort();
    let first_upload = uploads.remove(0);
    uploads.sort();
    let at = |sorted: &[Duration], q: f64| {
        sorted
            .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Ok(ServeReport {
        tenants,
        pipelines: tenants * per_tenant,
        first_deploy: first_deploy.unwrap_or_default(),
        deploy: [at(&deploys, 0.5), at(&deploys, 0.99), at(&deploys, 1.0)],
        first_upload,
        upload_p50: at(&uploads, 0.5),
        rss_empty,
        rss_idle: resident_of(pid).unwrap_or(0),
        threads: threads_of(pid),
        idle_cpu: (cpu_after - cpu_before).as_secs_f64() / window.as_secs_f64(),
        isolation: [Duration::ZERO; 2],
        shutdown: Duration::ZERO,
    })
}

/// The healthy tenant's mean batch processing time alone and next to a
/// looping tenant: after a warm-up round, each condition twice, alternating.
fn isolation(base: &str, split_words: &Path, looping: &Path) -> anyhow::Result<[Duration; 2]> {
    let api = Api::new(base)?;
    let (healthy, _) = api.tenant("healthy", "p", &std::fs::read(split_words)?)?;
    let (noisy, _) = api.tenant("noisy", "p", &std::fs::read(looping)?)?;
    let wordcount = "[pipeline]\nname = \"wc\"\nbatch-interval = \"100ms\"\npartitions = 2\n\n\
        [[source]]\nname = \"lines\"\ntype = \"generator\"\nrate = 50000\n\n\
        [[stage]]\nname = \"words\"\ninput = \"lines\"\nop = \"flat-map\"\nplugin = \"p\"\n\n\
        [[stage]]\nname = \"counts\"\ninput = \"words\"\nop = \"reduce-by-key\"\nreducer = \"count\"\n\n\
        [[sink]]\ninput = \"counts\"\ntype = \"files\"\npath = \"out\"\n";
    let looping_file = "[pipeline]\nname = \"loop\"\nbatch-interval = \"100ms\"\npartitions = 2\n\n\
        [[source]]\nname = \"words\"\ntype = \"generator\"\nrate = 2000\nwords-per-line = 1\n\n\
        [[stage]]\nname = \"out\"\ninput = \"words\"\nop = \"map\"\nplugin = \"p\"\n\
        config = { trigger = \"the\" }\nlimits = { timeout = \"20ms\" }\non-error = \"skip-batch\"\n\
        quarantine-after = 1000000\n\n\
        [[sink]]\ninput = \"out\"\ntype = \"files\"\npath = \"out\"\n";
    api.post("/v1/tenants/healthy/pipelines", &healthy, wordcount)?;
    api.post("/v1/tenants/noisy/pipelines", &noisy, looping_file)?;
    api.post("/v1/tenants/noisy/pipelines/loop/stop", &noisy, "")?;
    let mut totals = [(Duration::ZERO, 0u32); 2];
    // Warm-up, then alone / looping twice, alternating.
    for condition in [None, Some(0), Some(1), Some(0), Some(1)] {
        if condition == Some(1) {
            api.post("/v1/tenants/noisy/pipelines/loop/start", &noisy, "")?;
        }
        std::thread::sleep(Duration::from_millis(500));
        let status = api.get("/v1/tenants/healthy/pipelines/wc", &healthy)?;
        let first = status["status"]["last_batch"]["id"].as_u64();
        std::thread::sleep(Duration::from_secs(4));
        let events = api.get("/v1/tenants/healthy/pipelines/wc/events", &healthy)?;
        if condition == Some(1) {
            api.post("/v1/tenants/noisy/pipelines/loop/stop", &noisy, "")?;
        }
        let Some(condition) = condition else { continue };
        for event in events.as_array().into_iter().flatten() {
            if event["event"] != "batch-completed" || event["batch"]["id"].as_u64() <= first {
                continue;
            }
            let time = &event["processing_time"];
            let took = Duration::new(
                time["secs"].as_u64().unwrap_or(0),
                time["nanos"].as_u64().unwrap_or(0) as u32,
            );
            totals[condition].0 += took;
            totals[condition].1 += 1;
        }
    }
    Ok(totals.map(|(time, batches)| time / batches.max(1)))
}
