//! `weir bench --suite sinks`: the word count end to end into each sink,
//! in one run: files (the baseline), Redis (`INCRBY`, exactly once), HTTP
//! (JSON lines to a receiver in this process), the same through the
//! `post-counts` sink plugin (Wasm, `wasi:http`), Elasticsearch (`_bulk`)
//! and S3 object storage (the files sink's `s3://`, exactly once).
//!
//! Each is the real `weir run --available-now` binary as a child process
//! over the same Zipf text, one-second batches, timed from spawn to exit
//! with its CPU time and peak memory; its records into the sink come from
//! its summary, and its output is read back and must add up to the words
//! of the text. Redis is Debian's `redis-server` (on PATH) and
//! Elasticsearch noida-db (from `tests/broker/install`), S3 moto's
//! `moto_server` (from `tests/moto/install`), started here on the same
//! cores; a sink whose server is missing is skipped with the reason.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use super::bench::wordcount_toml_into;
use super::corpus::{Corpus, CorpusKind, CorpusStats};
use super::process::{ChildUsage, wait_measured};

/// One sink's run.
#[derive(Debug, Clone)]
pub struct SinkRun {
    /// The sink.
    pub sink: &'static str,
    /// The run, or why it was skipped.
    pub outcome: Result<(ChildUsage, u64), String>,
}

/// What the benchmark measured.
#[derive(Debug, Clone)]
pub struct SinksReport {
    /// The text.
    pub corpus: CorpusStats,
    /// Partitions and workers.
    pub partitions: usize,
    /// Each sink's run, files first.
    pub runs: Vec<SinkRun>,
}

/// A server process started for the benchmark, killed when dropped.
pub(super) struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not open port {port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start_redis() -> anyhow::Result<(Server, u16)> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow!("no redis-server ({e}): run tests/redis/install"))?;
    let server = Server(child);
    wait_for_port(port, "redis-server")?;
    Ok((server, port))
}

fn start_elasticsearch(dir: &Path) -> anyhow::Result<(Server, u16)> {
    let binary = super::process::installed_noida()?;
    let port = free_port()?;
    let child = Command::new(binary)
        .args(["start", "--data-dir"])
        .arg(dir.join("es-data"))
        .args([
            "--only",
            "elasticsearch",
            "--elasticsearch-port",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Server(child);
    wait_for_port(port, "noida-db's Elasticsearch")?;
    Ok((server, port))
}

/// moto's S3 server (`tests/moto/install`) with the bucket `bench`.
#[cfg(feature = "object-store")]
pub(super) fn start_moto() -> anyhow::Result<(Server, u16)> {
    let binary = Path::new("target/moto/venv/bin/moto_server");
    if !binary.is_file() {
        bail!(
            "moto is not installed in {}: run `tests/moto/install` from the repository root",
            binary.display()
        );
    }
    let port = free_port()?;
    let child = Command::new(binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Server(child);
    wait_for_port(port, "moto_server")?;
    let created = reqwest::blocking::Client::new()
        .put(format!("http://127.0.0.1:{port}/bench"))
        .send()?;
    if !created.status().is_success() {
        bail!("moto_server refused the bucket: {}", created.status());
    }
    Ok((server, port))
}

/// The records the batch manifests under `s3://bench/counts` name, read
/// back from moto on `port`.
#[cfg(feature = "object-store")]
fn s3_records(port: u16) -> anyhow::Result<u64> {
    use futures_util::TryStreamExt;
    use object_store::ObjectStore;
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("bench")
        .with_region("us-east-1")
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_access_key_id("bench")
        .with_secret_access_key("bench")
        .build()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let prefix = object_store::path::Path::from("counts");
        let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
        let mut records = 0;
        for object in objects
            .iter()
            .filter(|o| o.location.as_ref().ends_with("/_manifest.json"))
        {
            let bytes = store.get(&object.location).await?.bytes().await?;
            let manifest: serde_json::Value = serde_json::from_slice(&bytes)?;
            records += manifest["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|part| part["records"].as_u64())
                .sum::<u64>();
        }
        Ok(records)
    })
}

/// An HTTP receiver in this process: it adds up the counts it is sent.
struct Receiver {
    url: String,
    counted: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

fn start_receiver() -> anyhow::Result<Receiver> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let counted = Arc::new(AtomicU64::new(0));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}/ingest", listener.local_addr()?);
    let sum = counted.clone();
    let router = axum::Router::new().route(
        "/ingest",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sum = sum.clone();
            async move {
                sum.fetch_add(count_lines(&body), Ordering::Relaxed);
                "ok"
            }
        }),
    );
    runtime.spawn(async move { axum::serve(listener, router).await });
    Ok(Receiver {
        url,
        counted,
        _runtime: runtime,
    })
}

/// The counts in JSON lines (`{"key": ..., "value": "<count>"}`), added up.
fn count_lines(body: &[u8]) -> u64 {
    body.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter_map(|record| record["value"].as_str()?.parse::<u64>().ok())
        .sum()
}

/// Runs `pipeline` with `weir`; returns its usage and its records out.
fn run_child(
    weir: &Path,
    pipeline: &Path,
    partitions: usize,
    log: &Path,
) -> anyhow::Result<(ChildUsage, u64)> {
    let started = Instant::now();
    let child = Command::new(weir)
        .args(["run", "--available-now", "--workers"])
        .arg(partitions.to_string())
        .arg(pipeline)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("cannot start {}", weir.display()))?;
    let usage = wait_measured(child, started)?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if usage.exit_code != Some(0) {
        bail!(
            "the run failed:\n{}",
            text.lines().rev().take(15).collect::<Vec<_>>().join("\n")
        );
    }
    // "pipeline `x`: N batches, R records in, O records out, ..."
    let records_out = text
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once(" records in, ")?;
            rest.split_once(" records out")?.0.replace(',', "").parse().ok()
        })
        .ok_or_else(|| anyhow!("no summary in the run's log"))?;
    Ok((usage, records_out))
}

/// Runs the benchmark over `lines` lines on `partitions` partitions, with
/// `weir` (the binary), the `split-words` component at `plugin` and the
/// `post-counts` sink plugin (or why there is none).
pub fn run(
    weir: &Path,
    plugin: &Path,
    sink_plugin: Result<&Path, String>,
    lines: u64,
    partitions: usize,
    progress: impl Fn(&str),
) -> anyhow::Result<SinksReport> {
    let scratch = tempfile::Builder::new().prefix("weir-sinks-bench-").tempdir()?;
    let dir = scratch.path();
    let input = dir.join("input");
    let corpus = Corpus::new(CorpusKind::Zipf, 1);
    progress(&format!("writing {lines} lines of text ({})", corpus.describe()));
    let stats = corpus.write_files(&input, lines, 250_000, partitions)?;
    let source = format!("type = \"files\"\npath = {:?}", input.display().to_string());
    let checkpoints = |name: &str| dir.join(format!("checkpoints-{name}"));
    let pipeline = |name: &str, sink: &str, checkpointed: bool| -> anyhow::Result<PathBuf> {
        let mut text = wordcount_toml_into(&format!("bench-{name}"), "1s", partitions, plugin, &source, sink);
        if checkpointed {
            text = text.replacen(
                "\n[plugins]",
                &format!(
                    "checkpoint-dir = {:?}\n\n[plugins]",
                    checkpoints(name).display().to_string()
                ),
                1,
            );
        }
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let mut runs = Vec::new();

    progress("files (jsonl)");
    let out = dir.join("files-out");
    let files = pipeline(
        "files",
        &format!(
            "type = \"files\"\npath = {:?}\nformat = \"jsonl\"",
            out.display().to_string()
        ),
        false,
    )?;
    runs.push(SinkRun {
        sink: "files (jsonl)",
        outcome: Ok(run_child(weir, &files, partitions, &dir.join("files.log"))?),
    });

    progress("redis (incrby, exactly once)");
    let redis = start_redis().and_then(|(server, port)| {
        let file = pipeline(
            "redis",
            &format!(
                "type = \"redis\"\naddress = \"127.0.0.1:{port}\"\ncommand = \"incrby\"\nkey = \"wc:{{key}}\""
            ),
            true,
        )?;
        let result = run_child(weir, &file, partitions, &dir.join("redis.log"))?;
        let counted = redis_total(port)?;
        if counted != stats.words {
            bail!("Redis holds {counted} words of {}", stats.words);
        }
        drop(server);
        Ok(result)
    });
    runs.push(SinkRun {
        sink: "redis (incrby, exactly once)",
        outcome: redis.map_err(|e| format!("{e:#}")),
    });

    progress("http (JSON lines)");
    let http = start_receiver().and_then(|receiver| {
        let file = pipeline(
            "http",
            &format!("type = \"http\"\nurl = \"{}\"", receiver.url),
            false,
        )?;
        let result = run_child(weir, &file, partitions, &dir.join("http.log"))?;
        let counted = receiver.counted.load(Ordering::Relaxed);
        if counted != stats.words {
            bail!("the receiver counted {counted} words of {}", stats.words);
        }
        Ok(result)
    });
    runs.push(SinkRun {
        sink: "http (JSON lines)",
        outcome: http.map_err(|e| format!("{e:#}")),
    });

    progress("plugin (post-counts, Wasm)");
    let posted = sink_plugin.map_err(|why| anyhow!(why)).and_then(|component| {
        let receiver = start_receiver()?;
        let address = receiver.url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_owned();
        let file = pipeline(
            "plugin",
            &format!(
                "type = \"plugin\"\nplugin = \"post\"\nconfig = {{ url = \"{}\" }}\nallow-http = \"{address}\"",
                receiver.url
            ),
            false,
        )?;
        let text = std::fs::read_to_string(&file)?.replacen(
            "\n[plugins]\n",
            &format!("\n[plugins]\npost = {:?}\n", component.display().to_string()),
            1,
        );
        std::fs::write(&file, text)?;
        let result = run_child(weir, &file, partitions, &dir.join("plugin.log"))?;
        let counted = receiver.counted.load(Ordering::Relaxed);
        if counted != stats.words {
            bail!("the receiver counted {counted} words of {}", stats.words);
        }
        Ok(result)
    });
    runs.push(SinkRun {
        sink: "plugin (post-counts, Wasm)",
        outcome: posted.map_err(|e| format!("{e:#}")),
    });

    progress("elasticsearch (_bulk)");
    let elasticsearch = start_elasticsearch(dir).and_then(|(server, port)| {
        let url = format!("http://127.0.0.1:{port}");
        let file = pipeline(
            "elasticsearch",
            &format!(
                "type = \"elasticsearch\"\nurl = \"{url}\"\nindex = \"counts\"\nid = \"{{key}}@{{batch}}\""
            ),
            false,
        )?;
        let result = run_child(weir, &file, partitions, &dir.join("es.log"))?;
        let client = reqwest::blocking::Client::new();
        client.post(format!("{url}/counts/_refresh")).send()?;
        let answer: serde_json::Value = client.get(format!("{url}/counts/_count")).send()?.json()?;
        let documents = answer["count"].as_u64().unwrap_or(0);
        if documents != result.1 {
            bail!("the index holds {documents} documents for {} records", result.1);
        }
        drop(server);
        Ok(result)
    });
    runs.push(SinkRun {
        sink: "elasticsearch (_bulk)",
        outcome: elasticsearch.map_err(|e| format!("{e:#}")),
    });

    #[cfg(feature = "object-store")]
    {
        progress("s3 (object storage, exactly once)");
        let s3 = start_moto().and_then(|(server, port)| {
            let file = pipeline(
                "s3",
                &format!(
                    "type = \"files\"\npath = \"s3://bench/counts\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
                     access-key-id = \"bench\"\nsecret-access-key = \"bench\""
                ),
                true,
            )?;
            let result = run_child(weir, &file, partitions, &dir.join("s3.log"))?;
            let committed = s3_records(port)?;
            if committed != result.1 {
                bail!("the manifests name {committed} records of {}", result.1);
            }
            drop(server);
            Ok(result)
        });
        runs.push(SinkRun {
            sink: "s3 (object storage, exactly once)",
            outcome: s3.map_err(|e| format!("{e:#}")),
        });
    }
    Ok(SinksReport {
        corpus: stats,
        partitions,
        runs,
    })
}

/// The sum of every `wc:*` counter in Redis on `port`.
fn redis_total(port: u16) -> anyhow::Result<u64> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut connection = client.get_connection()?;
    let mut total = 0;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("wc:*")
            .arg("COUNT")
            .arg(10_000)
            .query(&mut connection)?;
        if !keys.is_empty() {
            let values: Vec<u64> = redis::cmd("MGET").arg(&keys).query(&mut connection)?;
            total += values.iter().sum::<u64>();
        }
        if next == 0 {
            return Ok(total);
        }
        cursor = next;
    }
}
