//! A real S3-compatible server for the object-storage tests: `moto_server`
//! (moto 5.2.5, installed by `tests/moto/install` into `target/moto`) on a
//! free loopback port, one per test; killed when dropped. Objects are read
//! back with boto3, independently of the engine's S3 client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn venv() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/moto/venv");
    assert!(
        venv.join("bin/moto_server").exists(),
        "moto is not installed: run tests/moto/install"
    );
    venv
}

/// A running `moto_server`.
pub struct MotoServer {
    child: Child,
    port: u16,
}

impl MotoServer {
    /// Starts one and waits until it answers.
    pub fn start() -> Self {
        let port = crate::free_port();
        let child = Command::new(venv().join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start moto_server");
        let server = Self { child, port };
        let started = Instant::now();
        let client = reqwest::blocking::Client::new();
        while client.get(server.endpoint()).send().is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates bucket `name`.
    pub fn create_bucket(&self, name: &str) {
        let response = reqwest::blocking::Client::new()
            .put(format!("{}/{name}", self.endpoint()))
            .send()
            .expect("moto_server answers");
        assert!(response.status().is_success(), "{:?}", response.text());
    }

    /// Every object of `bucket` under `prefix`, key → content, read with boto3.
    pub fn objects(&self, bucket: &str, prefix: &str) -> BTreeMap<String, String> {
        const LIST: &str = r#"
import boto3, json, sys
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
objects = {}
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2], Prefix=sys.argv[3]):
    for item in page.get("Contents", []):
        objects[item["Key"]] = s3.get_object(Bucket=sys.argv[2], Key=item["Key"])["Body"].read().decode()
json.dump(objects, sys.stdout)
"#;
        let output = Command::new(venv().join("bin/python"))
            .args(["-c", LIST, &self.endpoint(), bucket, prefix])
            .output()
            .expect("cannot run boto3");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("boto3 printed JSON")
    }

    /// The keys of every object of `bucket` under `prefix`, sorted, from
    /// `ListObjectsV2` requests of its own (fast enough to poll).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let client = reqwest::blocking::Client::new();
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2".to_owned()), ("prefix", prefix.to_owned())];
            if let Some(token) = &token {
                query.push(("continuation-token", token.clone()));
            }
            let body = client
                .get(format!("{}/{bucket}", self.endpoint()))
                .query(&query)
                .send()
                .and_then(|response| response.error_for_status())
                .and_then(|response| response.text())
                .expect("moto_server lists the bucket");
            keys.extend(elements(&body, "Key"));
            token = elements(&body, "NextContinuationToken").into_iter().next();
            if token.is_none() {
                break;
            }
        }
        keys.sort();
        keys
    }

    /// How many multipart uploads of `bucket` were started and neither
    /// completed nor aborted.
    pub fn pending_uploads(&self, bucket: &str) -> usize {
        let body = reqwest::blocking::Client::new()
            .get(format!("{}/{bucket}?uploads", self.endpoint()))
            .send()
            .and_then(|response| response.error_for_status())
            .and_then(|response| response.text())
            .expect("moto_server lists the bucket's uploads");
        elements(&body, "UploadId").len()
    }

    /// Sums `word<TAB>count` lines of the parts that batch manifests under
    /// `prefix` name (what a reader of the sink's output sees).
    pub fn committed_counts(&self, bucket: &str, prefix: &str) -> BTreeMap<String, u64> {
        let objects = self.objects(bucket, prefix);
        let mut totals = BTreeMap::new();
        for (key, manifest) in objects.iter().filter(|(key, _)| key.ends_with("/_manifest.json")) {
            let directory = key.trim_end_matches("_manifest.json");
            let manifest: serde_json::Value = serde_json::from_str(manifest).unwrap();
            for part in manifest["parts"].as_array().unwrap() {
                let name = format!("{directory}{}", part["name"].as_str().unwrap());
                let text = objects
                    .get(&name)
                    .unwrap_or_else(|| panic!("{key} names {name}, which is missing"));
                assert_eq!(text.len() as u64, part["bytes"].as_u64().unwrap(), "{name}");
                for line in text.lines() {
                    let (word, count) = line.split_once('\t').unwrap();
                    *totals.entry(word.to_owned()).or_insert(0) += count.parse::<u64>().unwrap();
                }
            }
        }
        totals
    }
}

/// The texts of every `<tag>` element of `xml` (no nested elements, no
/// entities other than `&amp;`: what S3 listings of test keys hold).
fn elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| Some(rest.split_once(&close)?.0.replace("&amp;", "&")))
        .collect()
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
