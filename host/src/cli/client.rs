//! The client side of `weir serve`: `weir --server URL --token-file F ...`
//! turns each command into one API call and prints the answer; an error
//! is the server's own message, word for word.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::blocking::{Client as Http, RequestBuilder};
use serde_json::Value;

/// Where the server is and who calls it.
pub struct Client {
    base: String,
    token: String,
    http: Http,
    tenant: Option<String>,
}

impl Client {
    /// A client of the server at `url` with the token in `token_file`;
    /// `ca_cert` (PEM) is trusted for an `https` server.
    pub fn new(
        url: &str,
        token_file: &Path,
        ca_cert: Option<&Path>,
        tenant: Option<String>,
    ) -> anyhow::Result<Self> {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("cannot read the token file {}", token_file.display()))?
            .trim()
            .to_owned();
        if token.is_empty() {
            bail!("the token file {} is empty", token_file.display());
        }
        let mut builder = Http::builder().timeout(Duration::from_secs(300));
        if let Some(ca) = ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{}: not a PEM certificate", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            token,
            http: builder.build().context("cannot set up the HTTP client")?,
            tenant,
        })
    }

    fn send(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = response.status();
        let text = response.text().context("cannot read the server's answer")?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            bail!("{message} ({})", status.as_u16());
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GETs `path`.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(path)))
    }

    /// POSTs `body` (JSON) to `path`.
    pub fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(self.url(path)).json(body))
    }

    /// The tenant the command is about: `--tenant`, or the token's own.
    pub fn tenant(&self) -> anyhow::Result<String> {
        if let Some(tenant) = &self.tenant {
            return Ok(tenant.clone());
        }
        let me = self.get("/v1/whoami")?;
        me.get("tenant")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("this is the admin's token: say which tenant with --tenant"))
    }

    fn tenant_path(&self, rest: &str) -> anyhow::Result<String> {
        Ok(format!("/v1/tenants/{}{rest}", self.tenant()?))
    }

    /// Deploys the pipeline file at `file`.
    pub fn deploy(&self, file: &Path) -> anyhow::Result<Value> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let path = self.tenant_path("/pipelines")?;
        self.send(
            self.http
                .post(self.url(&path))
                .header("content-type", "application/toml")
                .body(text),
        )
    }

    /// Uploads the component at `file` as plugin `name`.
    pub fn push_plugin(&self, name: &str, file: &Path) -> anyhow::Result<Value> {
        let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let path = self.tenant_path(&format!("/plugins/{name}"))?;
        self.send(
            self.http
                .put(self.url(&path))
                .header("content-type", "application/wasm")
                .body(bytes),
        )
    }

    /// The tenant's pipelines.
    pub fn pipelines(&self) -> anyhow::Result<Value> {
        self.get(&self.tenant_path("/pipelines")?)
    }

    /// One pipeline's status.
    pub fn status(&self, pipeline: &str) -> anyhow::Result<Value> {
        self.get(&self.tenant_path(&format!("/pipelines/{pipeline}"))?)
    }

    /// `start`, `stop`, `pause` or `resume` a pipeline.
    pub fn control(&self, pipeline: &str, action: &str) -> anyhow::Result<Value> {
        let path = self.tenant_path(&format!("/pipelines/{pipeline}/{action}"))?;
        self.send(self.http.post(self.url(&path)))
    }

    /// DELETEs `path`.
    pub fn send_delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(self.url(path)))
    }

    /// Removes a pipeline.
    pub fn delete(&self, pipeline: &str) -> anyhow::Result<Value> {
        let path = self.tenant_path(&format!("/pipelines/{pipeline}"))?;
        self.send(self.http.delete(self.url(&path)))
    }

    /// Creates tenant `name`, granting it `allow` addresses.
    pub fn create_tenant(&self, name: &str, allow: &[String]) -> anyhow::Result<Value> {
        self.post_json(
            "/v1/tenants",
            &serde_json::json!({ "name": name, "allowed_addresses": allow }),
        )
    }

    /// Hot-loads `body` (a swap request, see the API) into `stage` of `pipeline`.
    pub fn swap(&self, pipeline: &str, stage: &str, body: &Value) -> anyhow::Result<Value> {
        let path = self.tenant_path(&format!("/pipelines/{pipeline}/stages/{stage}/swap"))?;
        self.post_json(&path, body)
    }

    /// Rolls `stage` of `pipeline` back (to `to`, a version of its history, if given).
    pub fn roll_back(
        &self,
        pipeline: &str,
        stage: &str,
        plugin: Option<&str>,
        to: Option<&str>,
    ) -> anyhow::Result<Value> {
        let path = self.tenant_path(&format!("/pipelines/{pipeline}/stages/{stage}/rollback"))?;
        self.post_json(&path, &serde_json::json!({ "plugin": plugin, "to": to }))
    }

    /// Swaps in the candidate in shadow of `stage` of `pipeline`.
    pub fn promote(&self, pipeline: &str, stage: &str, plugin: Option<&str>) -> anyhow::Result<Value> {
        let path = self.tenant_path(&format!("/pipelines/{pipeline}/stages/{stage}/promote"))?;
        self.post_json(&path, &serde_json::json!({ "plugin": plugin }))
    }

    /// Each stage plugin's version history of `pipeline`.
    pub fn history(&self, pipeline: &str) -> anyhow::Result<Value> {
        self.get(&self.tenant_path(&format!("/pipelines/{pipeline}/history"))?)
    }

    /// Makes a token of `role` for the tenant.
    pub fn create_token(&self, role: &str) -> anyhow::Result<Value> {
        let path = self.tenant_path("/tokens")?;
        self.post_json(&path, &serde_json::json!({ "role": role }))
    }

    /// Revokes token `id` of the tenant.
    pub fn revoke_token(&self, id: &str) -> anyhow::Result<Value> {
        let path = self.tenant_path(&format!("/tokens/{id}"))?;
        self.send(self.http.delete(self.url(&path)))
    }
}

/// One line per pipeline: name, state, last batch, desired state.
pub fn print_pipelines(list: &Value) {
    println!(
        "{:<24} {:<10} {:>10} {:<8}",
        "PIPELINE", "STATE", "BATCH", "DESIRED"
    );
    for pipeline in list.as_array().into_iter().flatten() {
        let name = pipeline["name"].as_str().unwrap_or("?");
        let state = pipeline["status"]["state"]
            .as_str()
            .or_else(|| pipeline["failure"].as_str().map(|_| "failed"))
            .unwrap_or("stopped");
        let batch = pipeline["status"]["last_batch"]["id"]
            .as_u64()
            .map_or("-".to_owned(), |id| id.to_string());
        let desired = pipeline["desired"].as_str().unwrap_or("?");
        println!("{name:<24} {state:<10} {batch:>10} {desired:<8}");
    }
}

/// Prints a JSON answer, pretty.
pub fn print_json(value: &Value) {
    if !value.is_null() {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    }
}

/// The token file to use: `--token-file`, else `$WEIR_TOKEN_FILE`.
pub fn token_file(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    given
        .or_else(|| std::env::var_os("WEIR_TOKEN_FILE").map(PathBuf::from))
        .ok_or_else(|| anyhow!("talking to a server needs --token-file FILE (or WEIR_TOKEN_FILE)"))
}
