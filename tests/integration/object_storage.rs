//! The files sink on S3-compatible object storage, against a real
//! `moto_server`: exactly-once batches over kill -9 (read back with boto3
//! through the manifests, as a reader would), a prefix another pipeline
//! already wrote, runs without a checkpoint, and bad settings.

use std::path::Path;

use weir_tests::moto::MotoServer;
use weir_tests::{files_wordcount, scratch, stderr, word_counts, write_inputs, write_pipeline};

use super::{LIMIT, run_file_ok, weir};

/// The `[[sink]]` table of a files sink writing to `s3://weir-out/<prefix>`.
fn s3_sink(moto: &MotoServer, prefix: &str) -> String {
    s3_sink_signed(
        moto,
        prefix,
        "access-key-id = \"test\"\nsecret-access-key = \"test\"\n",
    )
}

/// [`s3_sink`] with `signing` (its keys, `credentials`, or nothing).
fn s3_sink_signed(moto: &MotoServer, prefix: &str, signing: &str) -> String {
    format!(
        "[[sink]]\nname = \"out\"\ninput = \"counts\"\ntype = \"files\"\npath = \"s3://weir-out/{prefix}\"\n\
         endpoint = \"{}\"\n{signing}",
        moto.endpoint()
    )
}

fn pipeline(dir: &Path, checkpointed: bool, sink: &str) -> String {
    files_wordcount(dir, "s3-wordcount", checkpointed, sink)
}

#[test]
fn killed_pipelines_commit_every_batch_to_object_storage_exactly_once() {
    let moto = MotoServer::start();
    moto.create_bucket("weir-out");
    let dir = scratch();
    let text = write_inputs(dir.path(), 150, 8, 3);
    let file = write_pipeline(
        dir.path(),
        "s3.toml",
        &pipeline(dir.path(), true, &s3_sink(&moto, "counts")),
    );
    let mut rng = super::recovery::Rng(0x53_0b1e);
    let mut points = Vec::new();
    for _ in 0..3 {
        points.push(format!("sink-commit:{}", 1 + rng.below(5)));
        points.push(format!("batch-logged:{}", 2 + rng.below(4)));
        points.push(format!("checkpoint-state:{}", 1 + rng.below(3)));
    }
    points.push("checkpoint-done:1".to_owned());
    let crashes = super::recovery::run_with_crashes(&file, &points, 12, 29);
    assert!(crashes.kills >= 20, "only {} kills: {crashes:?}", crashes.kills);
    assert_eq!(
        moto.committed_counts("weir-out", "counts/"),
        word_counts(&text),
        "after {crashes:?}"
    );
    // One manifest per batch (one file each), every one create-only.
    let manifests = moto
        .objects("weir-out", "counts/")
        .into_keys()
        .filter(|key| key.ends_with("/_manifest.json"))
        .count();
    assert_eq!(manifests, 150);

    // Another checkpoint directory writing the same prefix is refused.
    let other = std::fs::read_to_string(&file)
        .unwrap()
        .replace("checkpoints", "other-checkpoints");
    let other = write_pipeline(dir.path(), "other.toml", &other);
    let output = weir().run(&["run", "--available-now", other.to_str().unwrap()], LIMIT);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains(
            "s3://weir-out/counts already holds batch 0, but this pipeline's batch log ends before it"
        ),
        "{log}"
    );
}

#[test]
fn without_a_checkpoint_each_run_replaces_its_batches() {
    let moto = MotoServer::start();
    moto.create_bucket("weir-out");
    let dir = scratch();
    let first = write_inputs(dir.path(), 2, 10, 5);
    let file = write_pipeline(
        dir.path(),
        "s3.toml",
        &pipeline(dir.path(), false, &s3_sink(&moto, "plain")),
    );
    run_file_ok(&file);
    assert_eq!(moto.committed_counts("weir-out", "plain/"), word_counts(&first));
    // A second run (batch ids from 0 again) over new input replaces them.
    std::fs::remove_dir_all(dir.path().join("in")).unwrap();
    let second = write_inputs(dir.path(), 2, 10, 50);
    run_file_ok(&file);
    assert_eq!(moto.committed_counts("weir-out", "plain/"), word_counts(&second));
}

/// Runs `weir run --available-now FILE` with no `AWS_*` variable of this
/// process's environment, but `aws` set, and the home directory `home`
/// beside the file (so that no `~/.aws` of this machine's is read).
fn run_with_aws_environment(file: &Path, aws: &[(&str, &str)]) -> std::process::Output {
    let mut command = weir().command(&["run", "--available-now", file.to_str().unwrap()]);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("AWS_")) {
        command.env_remove(name);
    }
    command.env("HOME", file.parent().unwrap().join("home"));
    command.envs(aws.iter().copied());
    weir_tests::Weir::run_command(command, LIMIT)
}

#[test]
fn without_keys_in_the_file_requests_are_signed_with_the_environment_s_credentials() {
    let moto = MotoServer::start();
    moto.create_bucket("weir-out");
    let dir = scratch();
    let text = write_inputs(dir.path(), 2, 10, 7);
    let sink = s3_sink_signed(&moto, "env", "");
    let file = write_pipeline(dir.path(), "env.toml", &pipeline(dir.path(), false, &sink));
    // No credentials in the environment: they are asked of the instance
    // metadata service (here a closed port), and the run fails saying what
    // to set. Nothing was written unsigned.
    let closed = format!("http://127.0.0.1:{}", weir_tests::free_port());
    let output = run_with_aws_environment(&file, &[("AWS_METADATA_ENDPOINT", &closed)]);
    let log = stderr(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains(&format!("{closed}/latest/api/token"))
            && log.contains("no AWS credentials in the environment")
            && log.contains("credentials = \"anonymous\""),
        "{log}"
    );
    assert!(moto.keys("weir-out", "env/").is_empty());
    // With them in the environment (as an EKS or ECS task has them), the
    // same file runs.
    let output = run_with_aws_environment(
        &file,
        &[
            ("AWS_METADATA_ENDPOINT", &closed),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_SESSION_TOKEN", "session"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(moto.committed_counts("weir-out", "env/"), word_counts(&text));
    // Unsigned requests when the file says so, whatever the environment has.
    let sink = s3_sink_signed(&moto, "anonymous", "credentials = \"anonymous\"\n");
    let anonymous = write_pipeline(dir.path(), "anonymous.toml", &pipeline(dir.path(), false, &sink));
    let output = run_with_aws_environment(&anonymous, &[("AWS_METADATA_ENDPOINT", &closed)]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        moto.committed_counts("weir-out", "anonymous/"),
        word_counts(&text)
    );
}

#[test]
fn without_keys_anywhere_else_the_shared_files_profile_signs() {
    let moto = MotoServer::start();
    moto.create_bucket("weir-out");
    let dir = scratch();
    let text = write_inputs(dir.path(), 2, 10, 9);
    let sink = s3_sink_signed(&moto, "profile", "");
    let file = write_pipeline(dir.path(), "profile.toml", &pipeline(dir.path(), false, &sink));
    // As `aws configure --profile dev` leaves them; the instance metadata
    // service is a closed port, so a run that did not find the profile's
    // keys fails.
    let aws = dir.path().join("home/.aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        "[default]\naws_access_key_id = test\n\n[dev]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .unwrap();
    // A profile whose credentials a command prints (as SSO and role
    // helpers do), and one whose command fails.
    let helper = dir.path().join("helper.sh");
    std::fs::write(
        &helper,
        format!(
            "echo ran >> '{}'\nprintf '%s' '{{\"Version\": 1, \"AccessKeyId\": \"test\", \"SecretAccessKey\": \"test\", \"SessionToken\": \"t\"}}'\n",
            dir.path().join("helper-runs").display()
        ),
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[profile dev]\nregion = us-east-1\n\n[profile helped]\ncredential_process = sh '{}'\n\n\
             [profile expired]\ncredential_process = sh -c 'echo the SSO session has expired >&2; exit 1'\n",
            helper.display()
        ),
    )
    .unwrap();
    let closed = format!("http://127.0.0.1:{}", weir_tests::free_port());
    let output = run_with_aws_environment(
        &file,
        &[("AWS_METADATA_ENDPOINT", &closed), ("AWS_PROFILE", "dev")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(moto.committed_counts("weir-out", "profile/"), word_counts(&text));
    let sink = s3_sink_signed(&moto, "helped", "");
    let helped = write_pipeline(dir.path(), "helped.toml", &pipeline(dir.path(), false, &sink));
    let output = run_with_aws_environment(
        &helped,
        &[("AWS_METADATA_ENDPOINT", &closed), ("AWS_PROFILE", "helped")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(moto.committed_counts("weir-out", "helped/"), word_counts(&text));
    // Run once for the whole run: the credentials have no expiration.
    let runs = std::fs::read_to_string(dir.path().join("helper-runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "{runs}");
    // A default profile with half its keys, and a profile named but not
    // defined: refused with the reason, nothing written.
    let sink = s3_sink_signed(&moto, "refused", "");
    let file = write_pipeline(dir.path(), "refused.toml", &pipeline(dir.path(), false, &sink));
    for (aws, expected) in [
        (
            vec![("AWS_METADATA_ENDPOINT", closed.as_str())],
            "AWS profile `default` in ",
        ),
        (
            vec![
                ("AWS_METADATA_ENDPOINT", closed.as_str()),
                ("AWS_PROFILE", "prod"),
            ],
            "AWS profile `prod` (from AWS_PROFILE) is defined in neither",
        ),
        (
            vec![
                ("AWS_METADATA_ENDPOINT", closed.as_str()),
                ("AWS_PROFILE", "expired"),
            ],
            "AWS profile `expired` (sh …): it failed (exit status: 1): the SSO session has expired",
        ),
    ] {
        let output = run_with_aws_environment(&file, &aws);
        let log = stderr(&output);
        assert!(!output.status.success(), "{log}");
        assert!(log.contains(expected), "{log}");
        assert!(moto.keys("weir-out", "refused/").is_empty(), "{log}");
    }
}

#[test]
fn bad_object_storage_settings_are_refused_with_the_reason() {
    let dir = scratch();
    let local = "[[sink]]\nname = \"out\"\ninput = \"counts\"\ntype = \"files\"\n";
    for (sink, error) in [
        (
            format!("{local}path = \"s3://A_B/x\""),
            "invalid bucket \"A_B\" in \"s3://A_B/x\"",
        ),
        (
            format!("{local}path = \"s3://bucket/x\"\nendpoint = \"127.0.0.1:9000\""),
            "invalid endpoint \"127.0.0.1:9000\" (an http:// or https:// URL)",
        ),
        (
            format!("{local}path = \"s3://bucket/x\"\naccess-key-id = \"id\""),
            "`access-key-id` and `secret-access-key` go together",
        ),
        (
            format!("{local}path = \"s3://bucket/x\"\ncredentials = \"instance\""),
            "unknown credentials \"instance\" (expected \"environment\"",
        ),
        (
            format!("{local}path = \"out\"\nregion = \"eu-west-1\""),
            "`endpoint`, `region`, `credentials` and the access keys are for an `s3://` path",
        ),
    ] {
        let file = write_pipeline(dir.path(), "bad.toml", &pipeline(dir.path(), false, &sink));
        let output = weir().run(&["check", file.to_str().unwrap()], LIMIT);
        assert!(!output.status.success());
        assert!(stderr(&output).contains(error), "{sink}: {}", stderr(&output));
    }
}
