//! The `weir` command line: run and check pipelines, build, inspect and
//! scaffold plugins, run the demo and the benchmark. Every pipeline runs on
//! one [`Engine`]; this is the only place that reads the environment.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use weir::engine::{Engine, EngineOptions, Supervisor};
use weir::error::EngineError;
use weir::pipeline::{RunOptions, StopMode};
use weir::runtime::{Runtime, RuntimeOptions};
use weir::tools::{self, build, inspect, javascript, python, scaffold};

use cli::corpus::CorpusKind;

/// Weir: a micro-batch stream processing engine whose transforms are
/// sandboxed WebAssembly components.
#[derive(Parser)]
#[command(name = "weir", version, about, long_about = None)]
struct Cli {
    /// The `weir serve` to talk to (`http://HOST:PORT` or `https://...`),
    /// for deploy, ps, status, start, stop, pause, resume, delete, tenant,
    /// token and plugin push. Default: `$WEIR_SERVER`.
    #[arg(long, global = true)]
    server: Option<String>,
    /// File holding the bearer token for `--server` (or `$WEIR_TOKEN_FILE`).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// PEM certificate to trust for an `https` server.
    #[arg(long, global = true)]
    ca_cert: Option<PathBuf>,
    /// The tenant a server command is about (default: the token's own).
    #[arg(long, global = true)]
    tenant: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one or more pipelines until stopped (Ctrl-C / SIGTERM), or until
    /// their sources are exhausted.
    Run {
        /// Pipeline files (TOML), or directories of them.
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
        /// Process what the sources have now (files present, a socket until
        /// EOF, a generator's count), then stop.
        #[arg(long)]
        available_now: bool,
        /// Worker threads of the pool all pipelines share (default: the
        /// number of cores).
        #[arg(long)]
        workers: Option<usize>,
        /// Resume from a checkpoint even though a plugin's component changed
        /// since it was taken (its state may not fit the new version).
        #[arg(long)]
        allow_plugin_change: bool,
        /// Hot-load a plugin into the running pipelines when its file is
        /// replaced (after the same checks as any hot-load).
        #[arg(long)]
        watch_plugins: bool,
        /// Serve the web UI while the pipelines run (default address
        /// 127.0.0.1:4040, Spark's; the next free port when taken).
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:4040")]
        ui: Option<std::net::SocketAddr>,
    },
    /// Serve many tenants' pipelines behind an HTTP/JSON API (`/v1`).
    Serve {
        /// The data directory: tenants, plugins, pipelines, checkpoints.
        #[arg(long)]
        data: PathBuf,
        /// Where the API listens.
        #[arg(long, default_value = "127.0.0.1:7600")]
        listen: std::net::SocketAddr,
        /// File holding the admin's bearer token (16 characters at least).
        #[arg(long)]
        admin_token_file: PathBuf,
        /// PEM certificate chain: serve TLS (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Worker threads of the pool all pipelines share (default: the cores).
        #[arg(long)]
        workers: Option<usize>,
        /// Default quotas of new tenants, as JSON (the `quotas` object of
        /// the API; missing fields take the built-in defaults).
        #[arg(long)]
        default_quotas: Option<String>,
        /// Largest request body in bytes (plugin uploads).
        #[arg(long, default_value_t = 64 << 20)]
        max_body: usize,
    },
    /// Deploy a pipeline file to the server and start it.
    Deploy {
        /// The pipeline file (TOML).
        file: PathBuf,
    },
    /// List the tenant's pipelines on the server.
    Ps,
    /// Show one pipeline's status on the server.
    Status {
        /// The pipeline.
        name: String,
    },
    /// Start a stopped pipeline on the server (from its checkpoint).
    Start {
        /// The pipeline.
        name: String,
    },
    /// Stop a pipeline on the server, gracefully.
    Stop {
        /// The pipeline.
        name: String,
    },
    /// Pause a pipeline on the server.
    Pause {
        /// The pipeline.
        name: String,
    },
    /// Resume a paused pipeline on the server.
    Resume {
        /// The pipeline.
        name: String,
    },
    /// Stop and remove a pipeline from the server.
    Delete {
        /// The pipeline.
        name: String,
    },
    /// Hot-load another version of a stage's plugin into a running
    /// pipeline on the server: uploads FILE (as plugin `--as`, default its
    /// file stem), then swaps it in at the next batch boundary after its
    /// checks (kind, init, a dry run on the stage's recent input).
    Swap {
        /// The pipeline.
        pipeline: String,
        /// The stage.
        stage: String,
        /// The new component.
        file: PathBuf,
        /// The name to upload it as (default: the file's stem).
        #[arg(long = "as")]
        upload_as: Option<String>,
        /// The plugin within the stage, when it runs several.
        #[arg(long)]
        plugin: Option<String>,
        /// A new configuration entry KEY=VALUE (repeat; replaces the whole
        /// configuration when given).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Batches the new version is on probation for (0: none).
        #[arg(long, default_value_t = weir::pipeline::swap::DEFAULT_PROBATION_BATCHES)]
        probation: u64,
        /// Failed calls it may have on probation before it is rolled back.
        #[arg(long, default_value_t = 0)]
        max_failures: u64,
        /// Run it in shadow first: beside the current version on the same
        /// input, its output compared (`weir status`) and not delivered,
        /// until `weir promote` (or --promote-after) swaps it in.
        #[arg(long)]
        shadow: bool,
        /// Run it as a canary first: on this percent of the keys (each key
        /// and its state stay with one version), the current version on
        /// the others, until `weir promote` (or --promote-after) swaps it in
        /// or `weir rollback` (or more failures than --max-failures) gives it up.
        #[arg(long, value_name = "PERCENT", conflicts_with = "shadow")]
        canary: Option<f64>,
        /// In shadow or as a canary: promote it after this many batches in
        /// a row with no failure (and, in shadow, no difference).
        #[arg(long)]
        promote_after: Option<u64>,
        /// In shadow: ... and when it is at most this many percent slower.
        #[arg(long, requires = "shadow", default_value_t = 10.0)]
        max_slower_percent: f64,
    },
    /// Swap in a stage's candidate running in shadow or as a canary on the server.
    Promote {
        /// The pipeline.
        pipeline: String,
        /// The stage.
        stage: String,
        /// The plugin within the stage, when it runs several.
        #[arg(long)]
        plugin: Option<String>,
    },
    /// Roll a stage's plugin back on the server: to the version before the
    /// one on probation, or to a version of its history.
    Rollback {
        /// The pipeline.
        pipeline: String,
        /// The stage.
        stage: String,
        /// The plugin within the stage, when it runs several.
        #[arg(long)]
        plugin: Option<String>,
        /// The SHA-256 of a version in the stage's history.
        #[arg(long)]
        to: Option<String>,
    },
    /// Show each stage plugin's version history of a pipeline on the server.
    History {
        /// The pipeline.
        pipeline: String,
    },
    /// Tenants of the server (admin).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Tokens of a tenant on the server.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Validate pipeline files and every plugin they use, without running.
    Check {
        /// Pipeline files (TOML), or directories of them.
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
    },
    /// Build, inspect plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Create new things.
    New {
        #[command(subcommand)]
        command: NewCommand,
    },
    /// Run the demo: generated text → split-words (Wasm) → count → console.
    Demo {
        /// Lines to generate (at 10,000 lines per second).
        #[arg(long, default_value_t = 30_000)]
        lines: u64,
    },
    /// Measure word-count throughput, Wasm against native in one run and
    /// end to end; socket ingest; batch latency.
    Bench {
        /// Lines of generated text.
        #[arg(long, default_value_t = 2_000_000)]
        lines: u64,
        /// Which text the word count runs on: `zipf` (20,000 pseudo-words
        /// drawn by a Zipf law, 8-12 a line: looks like text to a word
        /// count), `words64` (the generator's 64 words, 8 a line: every
        /// table stays hot in cache) or `both` (zipf first). The ingest
        /// suite uses zipf unless told `words64`.
        #[arg(long, default_value = "both", value_parser = ["both", "zipf", "words64"])]
        corpus: String,
        /// Partitions and worker threads (default: the number of cores).
        #[arg(long)]
        partitions: Option<usize>,
        /// Runs of each variant; the best is kept.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The split-words component (default: build plugins/split-words).
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// Run only one variant of the word count (for profiling): wasm,
        /// native, wasm-10ms (Wasm on an engine whose epoch ticks every 10 ms
        /// instead of 1 ms) or e2e (the `weir run --available-now` binary).
        #[arg(long, value_parser = ["wasm", "native", "wasm-10ms", "e2e"])]
        only: Option<String>,
        /// Which benchmarks: `wordcount` (throughput, latency, isolation),
        /// `throughput` (the word count's throughput alone: in process and
        /// end to end, per corpus), `ingest` (socket ingest with a feeder
        /// process), `latency` (10 ms batches at 100,000 lines/s), `window`
        /// (windowed word count, deterministic time), `checkpoint` (the
        /// windowed word count with and without checkpoints), `many` (50
        /// small pipelines on one engine: start time, memory, isolation),
        /// `all` (all of these), `state` (keyed state larger than memory,
        /// checkpointed incrementally: gigabytes of disk, run on its own) or
        /// `kafka` (the word count from a topic to a topic next to the same
        /// over files; a broker from `--brokers` or `tests/broker/install`)
        /// or `serve` (a `weir serve` with `--tenants` tenants × 2 idle
        /// pipelines: deploy latency, memory, idle CPU, shutdown) or `swap`
        /// (hot-load into a running word count: time to the first batch on
        /// the new version, throughput around swaps) or `sinks` (the word
        /// count into files, Redis, HTTP and Elasticsearch, servers started
        /// here) or `cluster` (the word count as a cluster pipeline on 1, 2
        /// and 3 `weir run` processes next to a noida-db broker).
        #[arg(long, default_value = "all", value_parser = ["all", "wordcount", "throughput", "ingest", "latency", "window", "checkpoint", "many", "state", "kafka", "serve", "swap", "sinks", "languages", "cluster"])]
        suite: String,
        /// `--suite kafka`: the Kafka brokers to use (default: start the
        /// noida-db broker that `tests/broker/install` installed).
        #[arg(long)]
        brokers: Option<String>,
        /// `--suite serve`: tenants of the server.
        #[arg(long, default_value_t = 100)]
        tenants: usize,
        /// `--suite state`: keys of state (1 KiB each).
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// `--suite state`: batches after the load, each changing 1% of the keys.
        #[arg(long, default_value_t = 100)]
        update_batches: u64,
        /// `--suite state`: where the checkpoints go: `dir` (a local
        /// directory) or `s3` (object storage: a `moto_server` on loopback,
        /// from `tests/moto/install`).
        #[arg(long, default_value = "dir", value_parser = ["dir", "s3"])]
        checkpoint_store: String,
    },
    /// The ingest benchmark's feeder: listens on an ephemeral port of
    /// 127.0.0.1, prints `listening ADDRESS`, and writes benchmark text to
    /// the first connection as fast as it can.
    #[command(hide = true)]
    BenchFeeder {
        /// Lines to send, then close (default: until the reader goes away).
        #[arg(long)]
        lines: Option<u64>,
        /// The text: zipf or words64.
        #[arg(long, default_value = "zipf", value_parser = ["zipf", "words64"])]
        corpus: String,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Compile plugin crates to wasm32-wasip2 components (release mode),
    /// Python plugins (a directory with an `app.py`) with componentize-py,
    /// and JavaScript plugins (a directory with an `app.js`) with
    /// componentize-js.
    Build {
        /// The plugins' directories (e.g. `plugins/*`).
        #[arg(required = true, value_name = "CRATE_DIR")]
        crate_dirs: Vec<PathBuf>,
        /// Build in debug mode.
        #[arg(long)]
        debug: bool,
    },
    /// Upload a component to the server as the tenant's plugin NAME.
    Push {
        /// The name pipelines use for it.
        name: String,
        /// The component file.
        file: PathBuf,
    },
    /// Show what a component is: Weir kind, exports and imports.
    Inspect {
        /// The component file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant.
    Create {
        /// Its name.
        name: String,
        /// A network address (`host:port`, `host:*`) its pipelines may reach.
        #[arg(long = "allow")]
        allow: Vec<String>,
    },
    /// List the tenants.
    List,
    /// Remove a tenant: its pipelines, plugins, tokens and files.
    Delete {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token (shown once).
    Create {
        /// operator or viewer.
        #[arg(long, default_value = "viewer", value_parser = ["operator", "viewer"])]
        role: String,
    },
    /// List the tenant's tokens (ids and roles).
    List,
    /// Revoke a token.
    Revoke {
        /// Its id.
        id: String,
    },
}

#[derive(Subcommand)]
enum NewCommand {
    /// Scaffold a plugin that builds as it is: a Rust crate, a Python
    /// `app.py` or a JavaScript `app.js`.
    Plugin {
        /// Plugin name (the crate's, for Rust).
        name: String,
        /// map, flat-map, filter, filter-map, map-partitions, reduce; sink
        /// (Rust); update-state, map-with-state, transform-with (Python and
        /// JavaScript).
        #[arg(long, default_value = "map")]
        kind: String,
        /// The plugin's language.
        #[arg(long, default_value = "rust", value_parser = ["rust", "python", "js"])]
        lang: String,
        /// Directory to create (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The weir-guest SDK crate (default: the one this binary was built with).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

/// mimalloc keeps freed memory for reuse instead of returning every large
/// batch buffer to the kernel (measured: page faults were ~10% of a word
/// count's time with the system allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How mimalloc is tuned, unless the environment sets the option
/// (`MIMALLOC_<NAME>`): measured on a word count over 10 M lines of text
/// (2026-11-30), its defaults peaked at 150 MB where what the pipeline holds
/// at any time is under 60 MB.
///
/// - `arena_eager_commit` 0: arenas are committed as they are used, not
///   whole (150 MB → 96 MB peak, same time).
/// - `purge_delay` 10 ms (default 1 s): freed pages go back to the kernel
///   sooner. Measured 2026-12-03 on the same word count (10 M and 100 M
///   lines): 100 ms peaked at 97–113 MB, 25 ms at 89–104 MB, 10 ms at
///   84–90 MB (100 M lines: 90 MB), for 0.3 s more system time per 100 M
///   words than 100 ms and about 4% more wall time.
const ALLOCATOR_OPTIONS: [(&std::ffi::CStr, std::ffi::c_int, std::ffi::c_long); 2] = [
    // Indices in mimalloc's `mi_option_e` (mimalloc.h, the same in
    // versions 2 and 3).
    (c"MIMALLOC_ARENA_EAGER_COMMIT", 4, 0),
    (c"MIMALLOC_PURGE_DELAY", 15, 10),
];

unsafe extern "C" {
    /// mimalloc's `mi_option_set`, linked in with the allocator.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Applies [`ALLOCATOR_OPTIONS`] before `main`, from the ELF initializers:
/// the runtime's first allocation (before `main`) already reserves
/// mimalloc's first arena. It allocates nothing itself.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

extern "C" fn tune_allocator() {
    for (variable, option, value) in ALLOCATOR_OPTIONS {
        // SAFETY: `variable` is a NUL-terminated string; `getenv` only
        // reads the environment, which nothing writes before `main`.
        let unset = unsafe { libc::getenv(variable.as_ptr()) }.is_null();
        if unset {
            // SAFETY: `mi_option_set` stores an integer option; the
            // initializers run on the one thread there is.
            unsafe { mi_option_set(option, value) };
        }
    }
}

/// Exit status for errors in the user's input.
const USAGE: u8 = 2;

/// The compiled-component cache: `$WEIR_CACHE_DIR` (empty: none), else
/// `$XDG_CACHE_HOME/weir`, else `$HOME/.cache/weir`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("weir"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("weir"))
}

/// The `weir-guest` crate a new Rust plugin in `dir` depends on: in the
/// Weir workspace's `plugins/`, the workspace's own; anywhere else, the copy
/// of the SDK this binary carries, unpacked into the cache directory (or,
/// without one, the source tree it was built from, if still there).
fn default_sdk(dir: &Path) -> anyhow::Result<PathBuf> {
    let parent = std::path::absolute(dir)
        .ok()
        .and_then(|dir| dir.parent().map(Path::to_path_buf));
    let root = tools::source_root();
    if let (Some(root), Some(parent)) = (&root, &parent)
        && parent.canonicalize().ok() == root.join("plugins").canonicalize().ok()
    {
        return Ok(root.join("guest-sdk"));
    }
    match (cache_dir(), root) {
        (Some(cache), _) => Ok(tools::rust_sdk::unpack(&cache)?.join("guest-sdk")),
        (None, Some(root)) => Ok(root.join("guest-sdk")),
        (None, None) => Err(anyhow!(
            "no cache directory to unpack the weir-guest SDK into: set WEIR_CACHE_DIR (or HOME), or pass --sdk PATH"
        )),
    }
}

/// `WEIR_PERFMAP=1`: a perf map of compiled plugin code.
fn perf_map() -> bool {
    std::env::var_os("WEIR_PERFMAP").is_some_and(|v| v == "1")
}

/// The engine every command runs its pipelines on.
fn engine(workers: Option<usize>) -> anyhow::Result<Engine> {
    Ok(Engine::new(EngineOptions {
        cache_dir: cache_dir(),
        workers,
        perf_map: perf_map(),
        ..EngineOptions::default()
    })?)
}

fn main() -> ExitCode {
    if let Some(spec) = std::env::var_os("WEIR_CRASH_AT") {
        weir::failpoint::arm(&spec.to_string_lossy());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = if cli.command.talks_to_server() {
        remote(&cli)
    } else {
        dispatch(cli.command)
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// True for the commands that call a `weir serve`.
    fn talks_to_server(&self) -> bool {
        matches!(
            self,
            Self::Deploy { .. }
                | Self::Ps
                | Self::Status { .. }
                | Self::Start { .. }
                | Self::Stop { .. }
                | Self::Pause { .. }
                | Self::Resume { .. }
                | Self::Delete { .. }
                | Self::Swap { .. }
                | Self::Promote { .. }
                | Self::Rollback { .. }
                | Self::History { .. }
                | Self::Tenant { .. }
                | Self::Token { .. }
                | Self::Plugin {
                    command: PluginCommand::Push { .. }
                }
        )
    }
}

/// Runs a command against the server of `--server`.
fn remote(cli: &Cli) -> anyhow::Result<ExitCode> {
    use cli::client::{Client, print_json, print_pipelines, token_file};
    let server = cli
        .server
        .clone()
        .or_else(|| std::env::var("WEIR_SERVER").ok())
        .ok_or_else(|| anyhow!("this command talks to a server: pass --server URL (or set WEIR_SERVER)"))?;
    let client = Client::new(
        &server,
        &token_file(cli.token_file.clone())?,
        cli.ca_cert.as_deref(),
        cli.tenant.clone(),
    )?;
    match &cli.command {
        Command::Deploy { file } => print_json(&client.deploy(file)?),
        Command::Ps => print_pipelines(&client.pipelines()?),
        Command::Status { name } => print_json(&client.status(name)?),
        Command::Start { name } => print_json(&client.control(name, "start")?),
        Command::Stop { name } => print_json(&client.control(name, "stop")?),
        Command::Pause { name } => print_json(&client.control(name, "pause")?),
        Command::Resume { name } => print_json(&client.control(name, "resume")?),
        Command::Swap {
            pipeline,
            stage,
            file,
            upload_as,
            plugin,
            config,
            probation,
            max_failures,
            shadow,
            canary,
            promote_after,
            max_slower_percent,
        } => {
            let name = match upload_as {
                Some(name) => name.clone(),
                None => file
                    .file_stem()
                    .and_then(|stem| stem.to_str())
                    .ok_or_else(|| {
                        anyhow!(
                            "{} has no file name to upload it as: pass --as NAME",
                            file.display()
                        )
                    })?
                    .to_owned(),
            };
            client.push_plugin(&name, file)?;
            let config = config
                .iter()
                .map(|entry| {
                    entry
                        .split_once('=')
                        .map(|(key, value)| (key.to_owned(), serde_json::Value::String(value.to_owned())))
                        .ok_or_else(|| anyhow!("--config {entry}: expected KEY=VALUE"))
                })
                .collect::<anyhow::Result<serde_json::Map<_, _>>>()?;
            let mode = match (shadow, canary) {
                (true, _) => serde_json::json!({ "shadow": {
                    "promote-after": promote_after,
                    "max-slower-percent": max_slower_percent,
                } }),
                (false, Some(percent)) => serde_json::json!({ "canary": {
                    "percent": percent,
                    "promote-after": promote_after,
                    "max-failures": max_failures,
                } }),
                (false, None) if promote_after.is_some() => {
                    anyhow::bail!("--promote-after applies to --shadow or --canary")
                }
                (false, None) => serde_json::json!("immediate"),
            };
            let body = serde_json::json!({
                "upload": name,
                "plugin": plugin,
                "config": (!config.is_empty()).then_some(config),
                "rollback": { "batches": probation, "max-failures": max_failures },
                "mode": mode,
            });
            print_json(&client.swap(pipeline, stage, &body)?)
        }
        Command::Rollback {
            pipeline,
            stage,
            plugin,
            to,
        } => print_json(&client.roll_back(pipeline, stage, plugin.as_deref(), to.as_deref())?),
        Command::History { pipeline } => print_json(&client.history(pipeline)?),
        Command::Promote {
            pipeline,
            stage,
            plugin,
        } => print_json(&client.promote(pipeline, stage, plugin.as_deref())?),
        Command::Delete { name } => {
            client.delete(name)?;
            println!("deleted {name}");
        }
        Command::Tenant {
            command: TenantCommand::Create { name, allow },
        } => print_json(&client.create_tenant(name, allow)?),
        Command::Tenant {
            command: TenantCommand::List,
        } => print_json(&client.get("/v1/tenants")?),
        Command::Tenant {
            command: TenantCommand::Delete { name },
        } => {
            client.send_delete(&format!("/v1/tenants/{name}"))?;
            println!("deleted tenant {name}");
        }
        Command::Token {
            command: TokenCommand::Create { role },
        } => {
            let created = client.create_token(role)?;
            // The token alone on stdout, so a script can keep it.
            println!("{}", created["token"].as_str().unwrap_or_default());
            eprintln!(
                "token {} ({role}) created; it is shown only this once",
                created["id"].as_str().unwrap_or("?")
            );
        }
        Command::Token {
            command: TokenCommand::List,
        } => print_json(&client.get(&format!("/v1/tenants/{}/tokens", client.tenant()?))?),
        Command::Token {
            command: TokenCommand::Revoke { id },
        } => {
            client.revoke_token(id)?;
            println!("revoked {id}");
        }
        Command::Plugin {
            command: PluginCommand::Push { name, file },
        } => print_json(&client.push_plugin(name, file)?),
        _ => unreachable!("only server commands come here"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `weir serve` until SIGTERM or Ctrl-C.
#[allow(clippy::too_many_arguments)]
fn serve(
    data: PathBuf,
    listen: std::net::SocketAddr,
    admin_token_file: &Path,
    tls: Option<(PathBuf, PathBuf)>,
    workers: Option<usize>,
    default_quotas: Option<&str>,
    max_body: usize,
) -> anyhow::Result<ExitCode> {
    use weir::server::{self, Quotas, ServerOptions};
    let admin_token = std::fs::read_to_string(admin_token_file)
        .with_context(|| format!("cannot read the admin token file {}", admin_token_file.display()))?
        .trim()
        .to_owned();
    let default_quotas: Quotas = match default_quotas {
        Some(json) => serde_json::from_str(json).context("--default-quotas")?,
        None => Quotas::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weir-api")
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let running = server::start(ServerOptions {
            data_dir: data,
            listen,
            admin_token,
            tls,
            workers,
            default_quotas,
            max_body,
        })
        .await?;
        // The address, for scripts and tests that listen on port 0.
        println!("listening {}", running.local_addr);
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping every pipeline gracefully");
        running.shutdown().await?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            data,
            listen,
            admin_token_file,
            tls_cert,
            tls_key,
            workers,
            default_quotas,
            max_body,
        } => serve(
            data,
            listen,
            &admin_token_file,
            tls_cert.zip(tls_key),
            workers,
            default_quotas.as_deref(),
            max_body,
        ),
        Command::Run {
            pipelines,
            available_now,
            workers,
            allow_plugin_change,
            watch_plugins,
            ui,
        } => run(
            &pipelines,
            available_now,
            workers,
            RunFlags {
                allow_plugin_change,
                watch_plugins,
                ui,
            },
        ),
        Command::Check { pipelines } => check(&pipelines),
        Command::Plugin {
            command: PluginCommand::Build { crate_dirs, debug },
        } => {
            for crate_dir in &crate_dirs {
                let python = python::is_python_plugin(crate_dir);
                if python || javascript::is_javascript_plugin(crate_dir) {
                    let cache = cache_dir().ok_or_else(|| {
                        anyhow::anyhow!(
                            "a Python or JavaScript build keeps its toolchain in the cache directory: set WEIR_CACHE_DIR (or HOME)"
                        )
                    })?;
                    let component = if python {
                        python::build_python_plugin(crate_dir, &cache)?
                    } else {
                        javascript::build_javascript_plugin(crate_dir, &cache)?
                    };
                    println!("{}", component.display());
                    continue;
                }
                for component in build::build_plugin(crate_dir, !debug)? {
                    println!("{}", component.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: PluginCommand::Inspect { file },
        } => {
            let runtime = Runtime::with_options(RuntimeOptions {
                cache_dir: cache_dir(),
                perf_map: perf_map(),
                ..RuntimeOptions::default()
            })?;
            match inspect::inspect(&runtime, &file) {
                Ok(report) => {
                    print!("{report}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    Ok(ExitCode::from(USAGE))
                }
            }
        }
        Command::New {
            command:
                NewCommand::Plugin {
                    name,
                    kind,
                    dir,
                    sdk,
                    lang,
                },
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            if lang == "python" || lang == "js" {
                let files = if lang == "python" {
                    scaffold::new_python_plugin(&name, &kind, &dir)?
                } else {
                    scaffold::new_javascript_plugin(&name, &kind, &dir)?
                };
                for file in files {
                    println!("created {}", file.display());
                }
                println!("build it with: weir plugin build {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            let sdk = match sdk {
                Some(sdk) => sdk,
                None => default_sdk(&dir)?,
            };
            let files = scaffold::new_plugin(&name, &kind, &dir, &sdk)?;
            for file in files {
                println!("created {}", file.display());
            }
            println!("build it with: weir plugin build {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { lines } => demo(lines),
        Command::Bench {
            suite,
            keys,
            update_batches,
            partitions,
            checkpoint_store,
            ..
        } if suite == "state" => state_bench(keys, update_batches, partitions, checkpoint_store == "s3"),
        Command::Bench {
            suite,
            lines,
            partitions,
            plugin,
            brokers,
            ..
        } if suite == "kafka" => kafka_bench(lines, partitions, plugin, brokers.as_deref()),
        Command::Bench {
            suite, lines, plugin, ..
        } if suite == "cluster" => cluster_bench(lines, plugin),
        Command::Bench {
            suite,
            tenants,
            plugin,
            ..
        } if suite == "serve" => serve_bench(tenants, plugin),
        Command::Bench {
            suite, lines, plugin, ..
        } if suite == "swap" => swap_bench(lines, plugin),
        Command::Bench {
            suite,
            lines,
            partitions,
            plugin,
            ..
        } if suite == "sinks" => sinks_bench(lines, partitions, plugin),
        Command::Bench {
            suite,
            lines,
            partitions,
            plugin,
            ..
        } if suite == "languages" => languages_bench(lines, partitions, plugin),
        Command::Bench {
            lines,
            corpus,
            partitions,
            rounds,
            plugin,
            only,
            suite,
            ..
        } => bench(
            &BenchArgs {
                lines,
                corpus,
                partitions,
                rounds,
                only,
                suite,
            },
            plugin,
        ),
        Command::BenchFeeder { lines, corpus } => {
            let corpus = cli::corpus::CorpusKind::from_name(&corpus).expect("checked by clap");
            cli::ingest::feed(corpus, lines, std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        command => {
            debug_assert!(command.talks_to_server());
            unreachable!("server commands run through remote()")
        }
    }
}

/// Expands directories into the `*.toml` files they hold, sorted.
fn pipeline_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(anyhow!("{} holds no .toml pipeline file", path.display()));
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn report(error: &EngineError) -> u8 {
    eprintln!("error: {error}");
    if error.is_usage_error() { USAGE } else { 1 }
}

fn check(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let engine = engine(Some(1))?;
    let mut status = 0;
    for file in pipeline_files(paths)? {
        match engine.prepare_file(&file) {
            Ok(prepared) => {
                let spec = prepared.spec();
                #[cfg(feature = "kafka")]
                if spec.cluster.is_some()
                    && let Err(error) = weir::cluster::ClusterPlan::new(spec)
                {
                    eprintln!("error: {}: {error}", file.display());
                    status = status.max(USAGE);
                    continue;
                }
                println!(
                    "{}: ok — pipeline `{}`, {} source(s), {} stage(s), {} sink(s), {} plugin(s), {} partition(s)",
                    file.display(),
                    spec.name,
                    spec.sources.len(),
                    spec.stages.len(),
                    spec.sinks.len(),
                    spec.plugins.len(),
                    prepared.pipeline().plan().partitions
                )
            }
            Err(error) => status = status.max(report(&error)),
        }
    }
    Ok(ExitCode::from(status))
}

/// Stops every pipeline of `engine` on the first Ctrl-C or SIGTERM; exits
/// at once on the second.
fn install_signal_handlers(engine: Engine) -> anyhow::Result<()> {
    on_stop_signal(move || engine.supervisor().stop_all(StopMode::Graceful))
}

/// Calls `stop` on the first Ctrl-C or SIGTERM; exits at once on the second.
fn on_stop_signal(stop: impl Fn() + Send + 'static) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    std::thread::Builder::new()
        .name("weir-signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut terminate), Ok(mut interrupt)) =
                    (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
                else {
                    tracing::error!("cannot install signal handlers");
                    return;
                };
                for count in 0.. {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                    if count == 0 {
                        tracing::info!(
                            "stopping: finishing the batch in flight (signal again to exit at once)"
                        );
                        stop();
                    } else {
                        eprintln!("second signal: exiting now");
                        std::process::exit(130);
                    }
                }
            });
        })
        .context("cannot start the signal handler")?;
    Ok(())
}

/// Waits for every pipeline of `supervisor`, printing each one's summary
/// or error; returns the exit status.
fn wait_all(supervisor: &Supervisor) -> u8 {
    let mut status = 0;
    for handle in supervisor.list() {
        match handle.wait() {
            Ok(summary) => eprintln!("{summary}"),
            Err(error) => status = status.max(report(&error)),
        }
    }
    status
}

/// The switches of `weir run` about plugins and the web UI.
struct RunFlags {
    allow_plugin_change: bool,
    watch_plugins: bool,
    ui: Option<std::net::SocketAddr>,
}

fn run(
    paths: &[PathBuf],
    available_now: bool,
    workers: Option<usize>,
    flags: RunFlags,
) -> anyhow::Result<ExitCode> {
    let engine = engine(workers)?;
    let files = pipeline_files(paths)?;
    for file in &files {
        // A file that cannot be read is reported with the others' errors below.
        if let Ok(spec) = weir::config::load(file)
            && spec.cluster.is_some()
        {
            if files.len() > 1 {
                eprintln!(
                    "error: {}: a pipeline with [cluster] runs alone in its `weir run` (its tasks come and go with the group)",
                    file.display()
                );
                return Ok(ExitCode::from(USAGE));
            }
            return cluster_member(&engine, file, spec, available_now, flags);
        }
    }
    let mut prepared = Vec::new();
    let mut status = 0;
    for file in &files {
        match engine.prepare_file(file) {
            Ok(pipeline) => prepared.push(pipeline),
            Err(error) => status = status.max(report(&error)),
        }
    }
    if status != 0 {
        return Ok(ExitCode::from(status));
    }
    install_signal_handlers(engine.clone())?;
    let options = RunOptions {
        available_now,
        allow_plugin_change: flags.allow_plugin_change,
        ..RunOptions::default()
    };
    let mut watched = Vec::new();
    for pipeline in prepared {
        let spec = pipeline.spec().clone();
        match engine.start(pipeline, options) {
            Ok(handle) => watched.push(cli::watch::WatchList::new(handle, &spec)),
            Err(error) => {
                status = status.max(report(&error));
                engine.supervisor().stop_all(StopMode::Graceful);
                break;
            }
        }
    }
    if flags.watch_plugins && status == 0 {
        cli::watch::spawn(watched, |line| eprintln!("weir: {line}"))
            .context("cannot start the plugin watcher")?;
    }
    // Serves until the pipelines end.
    let _ui = match flags.ui {
        Some(addr) if status == 0 => {
            let directory = std::sync::Arc::new(weir::ui::LocalDirectory::new(engine.clone()));
            let served = weir::ui::serve(directory, addr)
                .with_context(|| format!("cannot serve the web UI on {addr}"))?;
            eprintln!("weir: web UI at http://{}/ui/", served.local_addr);
            eprintln!("weir: Prometheus figures at http://{}/metrics", served.local_addr);
            if !served.local_addr.ip().is_loopback() {
                eprintln!(
                    "weir: warning: the web UI of `weir run` takes no token: whoever reaches {} can pause and stop these pipelines",
                    served.local_addr
                );
            }
            Some(served)
        }
        _ => None,
    };
    Ok(ExitCode::from(status.max(wait_all(engine.supervisor()))))
}

/// `weir run` of a pipeline with `[cluster]`: this process joins the
/// group and runs the tasks of the partitions it is given until a signal.
#[cfg(feature = "kafka")]
fn cluster_member(
    engine: &Engine,
    file: &Path,
    spec: weir::config::PipelineSpec,
    available_now: bool,
    flags: RunFlags,
) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use weir::cluster::{ClusterPlan, MemberOptions, run_member};
    if available_now || flags.watch_plugins {
        eprintln!(
            "error: {}: a cluster pipeline runs until stopped (its partitions move between processes): \
             --available-now and --watch-plugins do not apply",
            file.display()
        );
        return Ok(ExitCode::from(USAGE));
    }
    let plan = match ClusterPlan::new(&spec) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("error: {}: {error}", file.display());
            return Ok(ExitCode::from(USAGE));
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    on_stop_signal(move || stopping.store(true, Ordering::Relaxed))?;
    let membership = weir::ui::MembershipBoard::default();
    let _ui = match flags.ui {
        Some(addr) => {
            let directory =
                Arc::new(weir::ui::LocalDirectory::new(engine.clone()).with_membership(membership.clone()));
            let served = weir::ui::serve(directory, addr)
                .with_context(|| format!("cannot serve the web UI on {addr}"))?;
            eprintln!("weir: web UI at http://{}/ui/", served.local_addr);
            eprintln!("weir: Prometheus figures at http://{}/metrics", served.local_addr);
            Some(served)
        }
        None => None,
    };
    let name = spec.name.clone();
    let options = MemberOptions {
        path: file.to_owned(),
        run: RunOptions {
            allow_plugin_change: flags.allow_plugin_change,
            ..RunOptions::default()
        },
        report: Box::new(move |line| eprintln!("weir: cluster `{name}`: {line}")),
        membership,
    };
    match run_member(engine, plan, options, &stop) {
        Ok(summary) => {
            let batches: u64 = summary.tasks.iter().map(|t| t.batches).sum();
            let records: u64 = summary.tasks.iter().map(|t| t.records_in).sum();
            let transactions = summary.transactions;
            eprintln!(
                "weir: cluster `{}`: {} task run(s), {batches} batches, {records} records in, {} rebalance(s); \
                 {} Kafka transaction(s) carried {} task batch(es) ({} aborted, {} producer(s))",
                spec.name,
                summary.tasks.len(),
                summary.rebalances,
                transactions.committed,
                transactions.contributions,
                transactions.aborted,
                transactions.producers
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("error: cluster `{}`: {error}", spec.name);
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(not(feature = "kafka"))]
fn cluster_member(
    _: &Engine,
    file: &Path,
    _: weir::config::PipelineSpec,
    _: bool,
    _: RunFlags,
) -> anyhow::Result<ExitCode> {
    eprintln!(
        "error: {}: a cluster needs Kafka, and this weir was built without it",
        file.display()
    );
    Ok(ExitCode::from(USAGE))
}

/// Builds `plugins/NAME` of the source tree and returns its component.
fn example_plugin(name: &str) -> anyhow::Result<PathBuf> {
    let root = tools::source_root().ok_or_else(|| {
        anyhow!("cannot find the Weir source tree to build plugins/{name}; pass the component's path instead")
    })?;
    let components = build::build_plugin(&root.join("plugins").join(name), true)?;
    components
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("building plugins/{name} produced no component"))
}

fn demo(lines: u64) -> anyhow::Result<ExitCode> {
    eprintln!("building the split-words plugin...");
    let plugin = example_plugin("split-words")?;
    let source = format!("type = \"generator\"\nlines = {lines}\nrate = 10000");
    let text = cli::bench::wordcount_toml("demo-wordcount", "1s", 2, &plugin, &source);
    let engine = engine(None)?;
    let prepared = engine.prepare(&text, Path::new("demo.toml"))?;
    install_signal_handlers(engine.clone())?;
    eprintln!("running: generator ({lines} lines at 10,000/s) → split-words (Wasm) → count → console");
    let summary = engine.start(prepared, RunOptions::default())?.wait()?;
    eprintln!(
        "demo done: {} batches, {} lines",
        summary.batches, summary.records_in
    );
    Ok(ExitCode::SUCCESS)
}

/// `bench --suite many`: 50 small pipelines on one engine.
fn many(engine: &Engine, split_words: &Path) -> anyhow::Result<()> {
    let looping = example_plugin("loop-forever")?;
    let busy = example_plugin("busy")?;
    let report = cli::many::many(engine, split_words, &looping, &busy, |line| eprintln!("{line}"))?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!(
        "many pipelines: {} word counts on one engine ({} worker threads, {} threads in the process):",
        report.pipelines, report.workers, report.threads
    );
    println!(
        "  start (prepare + start)  first {:.2} ms (compiles); the others median {:.2} ms, max {:.2} ms \
         ({} compiles, {} catalog hits)",
        ms(report.first_start),
        ms(report.median_start),
        ms(report.max_start),
        report.compiles,
        report.hits
    );
    println!(
        "  memory per idle pipeline {:.2} MB",
        report.bytes_per_idle_pipeline / 1e6
    );
    let [alone, looping, heavy] = report.isolation;
    println!(
        "  isolation among 20 pipelines: healthy word count mean batch {:.2} ms alone, {:.2} ms next to a looping \
         neighbour ({:.2}x), {:.2} ms next to a 40 ms-per-record neighbour on 4 partitions ({:.2}x)",
        ms(alone),
        ms(looping),
        looping.as_secs_f64() / alone.as_secs_f64(),
        ms(heavy),
        heavy.as_secs_f64() / alone.as_secs_f64()
    );
    println!("  peak RSS {:.1} MB", report.peak_rss as f64 / 1e6);
    Ok(())
}

/// `bench --suite state`: keyed state larger than memory.
fn state_bench(
    keys: u64,
    update_batches: u64,
    partitions: Option<usize>,
    on_object_storage: bool,
) -> anyhow::Result<ExitCode> {
    let partitions =
        partitions.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let (state_bytes, keys_per_batch) = (1024, 16_384);
    let settings = cli::state_bench::StateBenchSettings {
        keys,
        state_bytes,
        keys_per_batch,
        update_batches,
        partitions,
        state_partitions: cli::state_bench::state_partitions(keys, keys_per_batch, state_bytes, partitions),
        state_memory: "256MiB".into(),
        plugin: example_plugin("padded-total")?,
        scratch: std::env::temp_dir(),
        on_object_storage,
    };
    let engine = engine(Some(partitions))?;
    let report = cli::state_bench::run(&engine, &settings, |line| eprintln!("{line}"))?;
    println!("{}", cli::state_bench::describe(&report));
    Ok(ExitCode::SUCCESS)
}

/// `bench --suite swap`: hot-load into a running word count.
fn swap_bench(lines: u64, plugin: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let plugin = match plugin {
        Some(plugin) => plugin,
        None => example_plugin("split-words")?,
    };
    let engine = engine(None)?;
    let r = cli::swap_bench::run(&engine, &plugin, lines, |line| eprintln!("{line}"))?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!(
        "hot-load into a running word count ({} swaps, 100 ms batches, candidates compiled before):",
        r.swaps
    );
    println!(
        "  request to the end of the first batch on the new version  p50 {:.1} ms  p95 {:.1} ms  max {:.1} ms  (goal: at most {:.0} ms)",
        ms(r.to_first_batch[0]),
        ms(r.to_first_batch[1]),
        ms(r.to_first_batch[2]),
        ms(cli::swap_bench::INTERVAL) + 10.0
    );
    println!(
        "  checks (dry run on {} sample records) and cut-over in the driver  p50 {:.2} ms  max {:.2} ms",
        r.sample_records,
        ms(r.cut_over[0]),
        ms(r.cut_over[1])
    );
    println!(
        "  throughput over {lines} lines: {:.2} M lines/s without swaps, {:.2} M lines/s with a swap every 100 ms ({} swaps in all runs): ratio {:.3}",
        r.throughput[0] / 1e6,
        r.throughput[1] / 1e6,
        r.throughput_swaps,
        r.throughput[1] / r.throughput[0].max(1e-9)
    );
    let plugins = cli::swap_bench::MigrationPlugins {
        split_words: plugin.clone(),
        one: example_plugin("one")?,
        running_total: example_plugin("running-total")?,
        running_total_v2: example_plugin("running-total-v2")?,
    };
    for keys in [100_000, 1_000_000] {
        let m = cli::swap_bench::run_migration(&engine, &plugins, keys, &std::env::temp_dir(), |line| {
            eprintln!("{line}")
        })?;
        println!(
            "  state conversion (running-total → running-total-v2) of {} keys: {} states converted in {:.1} ms ({:.2} µs a state, two passes); the swap took {:.1} ms between two batches",
            m.keys,
            m.migrated,
            ms(m.migration),
            m.migration.as_secs_f64() * 1e6 / m.migrated.max(1) as f64,
            ms(m.swap)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench --suite serve`: one server, many tenants.
fn serve_bench(tenants: usize, plugin: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let plugin = match plugin {
        Some(plugin) => plugin,
        None => example_plugin("split-words")?,
    };
    let looping = example_plugin("loop-forever")?;
    let weir = std::env::current_exe().context("cannot find the weir binary")?;
    let r = cli::serve_bench::run(&weir, &plugin, &looping, tenants, 2)?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!(
        "weir serve, {} tenants x 2 idle word counts ({} pipelines):",
        r.tenants, r.pipelines
    );
    println!(
        "  deploy (plugin in the catalog)  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (first: {:.0} ms)",
        ms(r.deploy[0]),
        ms(r.deploy[1]),
        ms(r.deploy[2]),
        ms(r.first_deploy)
    );
    println!(
        "  plugin upload                   first (compiles) {:.0} ms, same bytes again p50 {:.1} ms",
        ms(r.first_upload),
        ms(r.upload_p50)
    );
    println!(
        "  resident memory  {:.1} MB empty, {:.1} MB with every pipeline idle ({:.2} MB a pipeline); {} threads",
        mb(r.rss_empty),
        mb(r.rss_idle),
        mb(r.rss_idle.saturating_sub(r.rss_empty)) / r.pipelines.max(1) as f64,
        r.threads
    );
    println!("  idle CPU         {:.1}% of one core", r.idle_cpu * 100.0);
    println!(
        "  isolation        healthy tenant's mean batch {:.2} ms alone, {:.2} ms next to a looping tenant ({:.2}x)",
        ms(r.isolation[0]),
        ms(r.isolation[1]),
        r.isolation[1].as_secs_f64() / r.isolation[0].as_secs_f64().max(1e-9)
    );
    println!(
        "  SIGTERM to exit  {:.2} s (every pipeline stopped gracefully)",
        r.shutdown.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `bench --suite sinks`: the word count into each sink.
fn sinks_bench(lines: u64, partitions: Option<usize>, plugin: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let partitions =
        partitions.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let plugin = match plugin {
        Some(plugin) => plugin,
        None => example_plugin("split-words")?,
    };
    let sink_plugin = example_plugin("post-counts").map_err(|e| format!("{e:#}"));
    let weir = std::env::current_exe().context("cannot find the weir binary")?;
    let report = cli::sinks_bench::run(
        &weir,
        &plugin,
        sink_plugin.as_deref().map_err(Clone::clone),
        lines,
        partitions,
        |line| eprintln!("{line}"),
    )?;
    println!(
        "word count end to end (`weir run --available-now`, 1 s batches) into each sink, {} lines, {} words, {} partitions:",
        report.corpus.lines, report.corpus.words, report.partitions
    );
    let baseline = report
        .runs
        .first()
        .and_then(|run| run.outcome.as_ref().ok())
        .map(|(usage, _)| usage.elapsed);
    for run in &report.runs {
        match &run.outcome {
            Ok((usage, records)) => println!(
                "  {:<34} {:>5.0} k records/s into the sink  {:>9} records  {:>6.2} s  cpu {:>6.2} s  peak RSS {:>6.1} MB  time / files {:>5.2}",
                run.sink,
                *records as f64 / usage.elapsed.as_secs_f64() / 1e3,
                records,
                usage.elapsed.as_secs_f64(),
                usage.cpu.as_secs_f64(),
                mb(usage.peak_rss),
                baseline.map_or(f64::NAN, |files| usage.elapsed.as_secs_f64()
                    / files.as_secs_f64()),
            ),
            Err(why) => println!("  {:<30} skipped: {why}", run.sink),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench --suite languages`: split-words in Rust, and in Python and
/// JavaScript through the batch API and per record, end to end and per
/// instance.
fn languages_bench(
    lines: u64,
    partitions: Option<usize>,
    plugin: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use cli::languages_bench::{JAVASCRIPT_PER_RECORD, PYTHON_PER_RECORD, Variant};
    let partitions =
        partitions.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rust = match plugin {
        Some(plugin) => Ok(plugin),
        None => example_plugin("split-words").map_err(|e| format!("{e:#}")),
    };
    let cache = cache_dir().ok_or_else(|| {
        anyhow!("Python and JavaScript builds keep their toolchains in the cache directory: set WEIR_CACHE_DIR (or HOME)")
    })?;
    let scratch = tempfile::Builder::new()
        .prefix("weir-bench-languages-plugins-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let python = |dir: &Path| python::build_python_plugin(dir, &cache).map_err(|e| e.to_string());
    let javascript = |dir: &Path| javascript::build_javascript_plugin(dir, &cache).map_err(|e| e.to_string());
    // The example in this checkout, and the per-record twin written here.
    let example = |language: &str| match tools::source_root() {
        Some(root) => Ok(root.join("plugins").join(language).join("split-words")),
        None => Err(format!(
            "cannot find the Weir source tree to build plugins/{language}/split-words"
        )),
    };
    let per_record = |file: &str, text: &str| {
        let dir = scratch.path().join(file.replace('.', "-"));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join(file), text))
            .map(|()| dir)
            .map_err(|e| e.to_string())
    };
    eprintln!("building the Python plugins (the first build installs componentize-py)...");
    let python_batch = example("python").and_then(|dir| python(&dir));
    let python_per_record = per_record("app.py", PYTHON_PER_RECORD).and_then(|dir| python(&dir));
    eprintln!("building the JavaScript plugins (the first build installs componentize-js)...");
    let javascript_batch = example("js").and_then(|dir| javascript(&dir));
    let javascript_per_record = per_record("app.js", JAVASCRIPT_PER_RECORD).and_then(|dir| javascript(&dir));
    let variants = [
        Variant {
            name: "rust",
            component: rust,
        },
        Variant {
            name: "python (batch API)",
            component: python_batch,
        },
        Variant {
            name: "python (per record)",
            component: python_per_record,
        },
        Variant {
            name: "javascript (batch API)",
            component: javascript_batch,
        },
        Variant {
            name: "javascript (per record)",
            component: javascript_per_record,
        },
    ];
    let weir = std::env::current_exe().context("cannot find the weir binary")?;
    let runtime = weir::runtime::Runtime::new(cache_dir())?;
    let report = cli::languages_bench::run(&weir, &runtime, &variants, lines, partitions, |line| {
        eprintln!("{line}")
    })?;
    println!(
        "split-words by language: word count end to end (`weir run --available-now`), {} lines, {} words, {} partitions; instances in this process:",
        report.corpus.lines, report.corpus.words, report.partitions
    );
    let rust_elapsed = report
        .runs
        .first()
        .and_then(|run| run.outcome.as_ref().ok())
        .map(|(run, _)| run.usage.elapsed);
    for run in &report.runs {
        match &run.outcome {
            Ok((e2e, instances)) => println!(
                "  {:<24} {:>6.2} M words/s  {:>7.2} s ({:>5.1}x rust)  cpu {:>7.2} s  peak RSS {:>6.1} MB | component {:>5.1} MB, load {:>6.0} ms, instance start {:>6.2} ms, {:>5.1} MB each",
                run.name,
                report.corpus.words as f64 / e2e.usage.elapsed.as_secs_f64() / 1e6,
                e2e.usage.elapsed.as_secs_f64(),
                rust_elapsed.map_or(f64::NAN, |rust| e2e.usage.elapsed.as_secs_f64()
                    / rust.as_secs_f64()),
                e2e.usage.cpu.as_secs_f64(),
                mb(e2e.usage.peak_rss),
                mb(instances.component_bytes),
                instances.load.as_secs_f64() * 1e3,
                instances.start.as_secs_f64() * 1e3,
                mb(instances.memory_per_instance),
            ),
            Err(why) => println!("  {:<24} skipped: {why}", run.name),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench --suite kafka`: the word count through Kafka and over files.
#[cfg(feature = "kafka")]
fn kafka_bench(
    lines: u64,
    partitions: Option<usize>,
    plugin: Option<PathBuf>,
    brokers: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let partitions =
        partitions.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let plugin = match plugin {
        Some(plugin) => plugin,
        None => example_plugin("split-words")?,
    };
    let weir = std::env::current_exe().context("cannot find the weir binary")?;
    let report = cli::kafka_bench::run(&weir, &plugin, lines, partitions, brokers, |line| {
        eprintln!("{line}")
    })?;
    let rate = |usage: &cli::process::ChildUsage| report.words_per_second(usage) / 1e6;
    println!(
        "word count end to end (`weir run --available-now`), {} lines, {} words, {} partitions:",
        report.corpus.lines, report.corpus.words, report.partitions
    );
    println!(
        "  kafka -> kafka (exactly once)  {:>7.2} M words/s  {:>6.2} s  cpu {:>6.2} s  peak RSS {:>6.1} MB{}",
        rate(&report.kafka),
        report.kafka.elapsed.as_secs_f64(),
        report.kafka.cpu.as_secs_f64(),
        mb(report.kafka.peak_rss),
        report.broker_cpu.map_or(String::new(), |cpu| format!(
            "  (broker cpu {:.2} s)",
            cpu.as_secs_f64()
        ))
    );
    println!(
        "  files -> files                 {:>7.2} M words/s  {:>6.2} s  cpu {:>6.2} s  peak RSS {:>6.1} MB",
        rate(&report.files),
        report.files.elapsed.as_secs_f64(),
        report.files.cpu.as_secs_f64(),
        mb(report.files.peak_rss)
    );
    println!(
        "  kafka / files = {:.2}  (preloading the topic took {:.1} s)",
        report.files.elapsed.as_secs_f64() / report.kafka.elapsed.as_secs_f64(),
        report.load.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `bench --suite kafka` without the `kafka` feature.
#[cfg(not(feature = "kafka"))]
fn kafka_bench(_: u64, _: Option<usize>, _: Option<PathBuf>, _: Option<&str>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this weir was built without the `kafka` feature")
}

/// `bench --suite cluster`: one cluster pipeline on 1, 2 and 3 processes.
#[cfg(feature = "kafka")]
fn cluster_bench(lines: u64, plugin: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let plugin = match plugin {
        Some(plugin) => plugin,
        None => example_plugin("split-words")?,
    };
    let weir = std::env::current_exe().context("cannot find the weir binary")?;
    let report = cli::cluster_bench::run(&weir, &plugin, lines, 3, |line| eprintln!("{line}"))?;
    println!(
        "cluster word count (topic of 6 partitions -> split-words -> count through a repartition topic -> topic, \
         exactly once), {} lines, {} words, every process and the broker on this machine's {} cores:",
        report.corpus.lines,
        report.corpus.words,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let single = report.runs.first().map(|run| run.elapsed.as_secs_f64());
    for run in &report.runs {
        let seconds = run.elapsed.as_secs_f64();
        let cpu: f64 = run.usage.iter().map(|u| u.cpu.as_secs_f64()).sum();
        let peak = run.usage.iter().map(|u| u.peak_rss).max().unwrap_or(0);
        println!(
            "  {} process(es)  {:>6.2} M words/s  {:>6.2} s  ({:.2}x of 1)  cpu {:>6.2} s  peak RSS per process {:>6.1} MB  \
             repartition {:.3} records and {:.2} bytes per word  {} transactions for {} task batches",
            run.processes,
            report.corpus.words as f64 / seconds / 1e6,
            seconds,
            single.map_or(1.0, |one| one / seconds),
            cpu,
            mb(peak),
            run.repartition_records as f64 / report.corpus.words as f64,
            run.repartition_bytes as f64 / report.corpus.words as f64,
            run.transactions,
            run.task_batches,
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "kafka"))]
fn cluster_bench(_: u64, _: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this weir was built without the `kafka` feature")
}

/// The `bench` command's settings besides its plugin.
struct BenchArgs {
    lines: u64,
    corpus: String,
    partitions: Option<usize>,
    rounds: usize,
    only: Option<String>,
    suite: String,
}

fn bench(args: &BenchArgs, plugin: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let plugin = match plugin {
        Some(plugin) => plugin,
        None => example_plugin("split-words")?,
    };
    let (lines, rounds) = (args.lines, args.rounds);
    let partitions = args
        .partitions
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let engine = engine(Some(partitions))?;
    let runs = |suite: &str| args.suite == "all" || args.suite == suite;
    let corpora: Vec<CorpusKind> = match args.corpus.as_str() {
        "both" => vec![CorpusKind::Zipf, CorpusKind::Words64],
        name => vec![CorpusKind::from_name(name).expect("checked by clap")],
    };
    if runs("checkpoint") {
        let report = cli::bench::checkpoints(&engine, &plugin, lines, partitions, rounds, |line| {
            eprintln!("{line}")
        })?;
        let rate = |time: std::time::Duration| report.words as f64 / time.as_secs_f64() / 1e6;
        println!(
            "checkpoints: windowed word count over {} words in {} batches, best of {rounds}:",
            report.words, report.batches
        );
        println!(
            "  no checkpoints          {:>8.2} M words/s",
            rate(report.without)
        );
        println!(
            "  checkpoint every 10     {:>8.2} M words/s  ({} checkpoints, last {} bytes, longest {:.1} ms)",
            rate(report.with),
            report.stats.written,
            report.stats.last_bytes,
            report.stats.max_duration.as_secs_f64() * 1e3
        );
        println!("  with / without = {:.2}", report.ratio());
    }
    if runs("many") {
        many(&engine, &plugin)?;
    }
    for &corpus in corpora.iter().filter(|_| runs("window")) {
        let report = cli::bench::window(&engine, &plugin, lines, partitions, rounds, corpus, |line| {
            eprintln!("{line}")
        })?;
        let rate = |time: std::time::Duration| report.words as f64 / time.as_secs_f64() / 1e6;
        println!(
            "windowed word count (30 s window sliding 10 s, 1 s batches, deterministic time) over {} lines \
             ({} words, {} batches) of {}, {partitions} partitions, best of {rounds}:",
            report.lines, report.words, report.batches, report.corpus
        );
        println!("  wasm    {:>8.2} M words/s", rate(report.wasm));
        println!("  native  {:>8.2} M words/s", rate(report.native));
        println!(
            "  wasm / native = {:.2}",
            report.native.as_secs_f64() / report.wasm.as_secs_f64()
        );
        println!(
            "  state after {} batches: {} entries, {} bytes; after {} batches: {} entries, {} bytes",
            report.batches,
            report.state_full.keys,
            report.state_full.memory_bytes,
            report.fewer_batches,
            report.state_fewer.keys,
            report.state_fewer.memory_bytes
        );
    }
    if runs("wordcount") || runs("throughput") {
        throughput(&engine, &plugin, args, partitions, &corpora)?;
    }
    if runs("wordcount") || runs("latency") {
        latency(&engine, &plugin)?;
    }
    if runs("wordcount") {
        isolation(&engine, &plugin)?;
    }
    if runs("ingest") {
        // Zipf text unless only words64 was asked for.
        let corpus = if corpora == [CorpusKind::Words64] {
            CorpusKind::Words64
        } else {
            CorpusKind::Zipf
        };
        ingest(&engine, &plugin, corpus, partitions, lines, rounds)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Megabytes, for reports.
fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Milliseconds, for reports.
fn ms(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// `bench --suite throughput`: the word count on each corpus, in process
/// (Wasm, native, Wasm with 10 ms ticks) and end to end.
fn throughput(
    engine: &Engine,
    plugin: &Path,
    args: &BenchArgs,
    partitions: usize,
    corpora: &[CorpusKind],
) -> anyhow::Result<()> {
    use cli::bench::Variant;
    let coarse_tick = Engine::new(EngineOptions {
        cache_dir: cache_dir(),
        workers: Some(partitions),
        perf_map: perf_map(),
        epoch_tick: std::time::Duration::from_millis(10),
        ..EngineOptions::default()
    })?;
    let weir = std::env::current_exe().context("cannot find the weir binary")?;
    let mut reports = Vec::new();
    for &corpus in corpora {
        let settings = cli::bench::BenchSettings {
            lines: args.lines,
            corpus,
            partitions,
            rounds: args.rounds,
            plugin: plugin.to_owned(),
            weir: weir.clone(),
            only: args.only.clone(),
        };
        let report = cli::bench::run(engine, &coarse_tick, &settings, |line| eprintln!("{line}"))?;
        println!(
            "word count on {} over {} lines ({} words, {:.1} MB, generated in {:.2} s), {partitions} partitions, \
             best of {}:",
            report.corpus,
            report.input.lines,
            report.input.words,
            mb(report.input.bytes),
            report.generation.as_secs_f64(),
            args.rounds
        );
        let row = |variant: Variant, label: &str| {
            if let (Some(rate), Some(figures)) = (report.words_per_second(variant), report.figures(variant)) {
                println!(
                    "  {label:<32} {:>8.2} M words/s  {:>7.3} s  peak RSS {:>7.1} MB{}",
                    rate / 1e6,
                    figures.best.as_secs_f64(),
                    mb(figures.peak_rss),
                    figures
                        .cpu
                        .map(|cpu| format!("  CPU {:.2} s", cpu.as_secs_f64()))
                        .unwrap_or_default()
                );
            }
        };
        row(Variant::Wasm, "wasm (in process)");
        row(Variant::Native, "native (in process)");
        if !report.ratio().is_nan() {
            println!(
                "  wasm / native = {:.2} (best times); {:.2} (median of the rounds' ratios)",
                report.ratio(),
                report.median_round_ratio()
            );
        }
        row(Variant::WasmCoarseTick, "wasm, 10 ms epoch ticks");
        if let (Some(wasm), Some(coarse)) = (
            report.figures(Variant::Wasm),
            report.figures(Variant::WasmCoarseTick),
        ) {
            println!(
                "  1 ms ticks (time-slicing) / 10 ms = {:.3}",
                coarse.best.as_secs_f64() / wasm.best.as_secs_f64()
            );
        }
        row(Variant::EndToEnd, "end to end (weir run, jsonl sink)");
        reports.push(report);
    }
    if reports.len() > 1 {
        println!("word count summary (M words/s, peak RSS in MB; in-process peaks are this process's):");
        println!(
            "  {:<8} {:>8} {:>8} {:>11} {:>8} {:>9} {:>9}",
            "corpus", "wasm", "native", "wasm/native", "e2e", "e2e peak", "wasm peak"
        );
        for (report, corpus) in reports.iter().zip(corpora) {
            let rate = |variant| report.words_per_second(variant).map_or(f64::NAN, |r| r / 1e6);
            let peak = |variant| {
                report
                    .figures(variant)
                    .map_or(f64::NAN, |f: cli::bench::VariantFigures| mb(f.peak_rss))
            };
            println!(
                "  {:<8} {:>8.2} {:>8.2} {:>11.2} {:>8.2} {:>9.1} {:>9.1}",
                corpus.name(),
                rate(Variant::Wasm),
                rate(Variant::Native),
                report.ratio(),
                rate(Variant::EndToEnd),
                peak(Variant::EndToEnd),
                peak(Variant::Wasm)
            );
        }
    }
    Ok(())
}

/// `bench --suite latency`: 10 ms batches at 100,000 lines/s.
fn latency(engine: &Engine, plugin: &Path) -> anyhow::Result<()> {
    let report = cli::bench::latency(
        engine,
        plugin,
        std::time::Duration::from_millis(10),
        100_000,
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(5),
    )?;
    println!(
        "latency: generator at {} lines/s (8 words a line) → split-words (Wasm) → count, {:?} batches, \
         {:?} after a 1 s warm-up: {} batches (lines per batch p50 {}, max {}), {} over the interval",
        report.rate,
        report.interval,
        report.duration,
        report.batches,
        report.lines_per_batch.p50,
        report.lines_per_batch.max,
        report.over_interval,
    );
    let spread = |label: &str, s: cli::bench::Spread| {
        println!(
            "  {label:<18} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    };
    spread("processing time", report.processing);
    spread("scheduling delay", report.scheduling);
    spread("total delay", report.total);
    let live = &report.live;
    println!(
        "  the engine's live metrics (last {} batches, warm-up included): processing p50 {:.2} ms, \
         p99 {:.2} ms, max {:.2} ms; whole run: {} of {} batches over the interval; peak RSS {:.1} MB{}",
        live.batches.min(weir::pipeline::live::RECENT_BATCHES as u64),
        ms(live.processing_time.p50),
        ms(live.processing_time.p99),
        ms(live.processing_time.max),
        report.summary.slow_batches,
        report.summary.batches,
        mb(report.peak_rss),
        if report.lost_events > 0 {
            format!(" ({} batch events missed)", report.lost_events)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The isolation check of `bench --suite wordcount`.
fn isolation(engine: &Engine, plugin: &Path) -> anyhow::Result<()> {
    let looping = example_plugin("loop-forever")?;
    let isolation = cli::bench::isolation(engine, plugin, &looping, std::time::Duration::from_secs(4))?;
    let mean_ms = |times: &[std::time::Duration]| cli::bench::mean(times).as_secs_f64() * 1e3;
    println!(
        "isolation: healthy word count (50,000 lines/s, 100 ms batches) mean batch time {:.2} ms alone, \
         {:.2} ms next to a pipeline looping to its 20 ms deadline every batch ({} of its batches skipped): {:.2}x \
         ({} tasks ran on a worker lent by a long call)",
        mean_ms(&isolation.alone),
        mean_ms(&isolation.with_neighbour),
        isolation.neighbour_skipped_batches,
        isolation.slowdown(),
        engine.lent_tasks(),
    );
    Ok(())
}

/// `bench --suite ingest`: socket ingest from a feeder process, 1 s batches
/// for 8 s and available-now over `lines` lines, `rounds` times each.
fn ingest(
    engine: &Engine,
    plugin: &Path,
    corpus: CorpusKind,
    partitions: usize,
    lines: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    use cli::ingest::IngestMode;
    let weir = std::env::current_exe().context("cannot find the weir binary")?;
    let modes = [
        IngestMode::Interval {
            interval: std::time::Duration::from_secs(1),
            duration: std::time::Duration::from_secs(8),
        },
        IngestMode::AvailableNow { lines },
    ];
    let mut best: [Option<cli::ingest::IngestReport>; 2] = [None, None];
    for round in 1..=rounds.max(1) {
        for (mode, best) in modes.iter().zip(&mut best) {
            let report = cli::ingest::ingest(engine, &weir, plugin, corpus, partitions, *mode)?;
            eprintln!(
                "ingest round {round} {:>13}: {:>6.3} M lines/s {:>6.2} M words/s ({} lines in {:.2} s)",
                match mode {
                    IngestMode::Interval { .. } => "1 s batches",
                    IngestMode::AvailableNow { .. } => "available-now",
                },
                report.lines_per_second() / 1e6,
                report.words_per_second() / 1e6,
                report.lines,
                report.elapsed.as_secs_f64()
            );
            if best
                .as_ref()
                .is_none_or(|b| report.lines_per_second() > b.lines_per_second())
            {
                *best = Some(report);
            }
        }
    }
    println!(
        "ingest: socket over loopback from a feeder process of its own ({} text) → split-words (Wasm) → count, \
         {partitions} partitions, best of {rounds}:",
        corpus.name()
    );
    for report in best.iter().flatten() {
        let mode = match report.mode {
            IngestMode::Interval { interval, duration } => format!(
                "{} batches for {}",
                humantime::format_duration(interval),
                humantime::format_duration(duration)
            ),
            IngestMode::AvailableNow { .. } => "available-now".to_owned(),
        };
        println!(
            "  {mode:<22} {:>6.3} M lines/s {:>7.2} M words/s  ({} lines, {} batches, lines per batch p50 {} max {}, \
             batch processing p50 {:.1} ms max {:.1} ms; peak RSS {:.1} MB; feeder CPU {:.2} s)",
            report.lines_per_second() / 1e6,
            report.words_per_second() / 1e6,
            report.lines,
            report.batches,
            report.lines_per_batch.p50,
            report.lines_per_batch.max,
            ms(report.processing.p50),
            ms(report.processing.max),
            mb(report.peak_rss),
            report.feeder.cpu.as_secs_f64()
        );
    }
    Ok(())
}
