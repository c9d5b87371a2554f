//! The checkpoint store on both backends: a local directory and
//! S3-compatible object storage (a real `moto_server`). The same contract
//! test runs on each ([`behaves_as_a_checkpoint_store`]), and pipelines
//! killed with kill -9 resume exactly from checkpoints kept on object
//! storage as they do from a directory (`recovery::killed_cases`).

use std::io::{Read, Write};
use std::sync::Arc;

use weir::checkpoint::object_storage::{ObjectStorage, PART_BYTES};
use weir::checkpoint::{CheckpointStorage, LocalStorage};
use weir::objects::{ObjectCredentials, ObjectTarget};
use weir_tests::moto::MotoServer;
use weir_tests::{scratch, stderr, write_pipeline};

use super::recovery::{CheckpointAt, killed_cases, run_killed_case};
use super::{LIMIT, weir};

/// A client of `s3://<bucket>/<prefix>` on `moto`.
fn object_storage(moto: &MotoServer, bucket: &str, prefix: &str) -> ObjectStorage {
    ObjectStorage::new(ObjectTarget {
        bucket: bucket.into(),
        prefix: prefix.into(),
        endpoint: Some(moto.endpoint()),
        region: None,
        credentials: ObjectCredentials::Keys {
            id: "test".into(),
            secret: "test".into(),
        },
    })
    .unwrap()
}

fn text(storage: &dyn CheckpointStorage, name: &str) -> Option<String> {
    storage
        .get(name)
        .unwrap()
        .map(|bytes| String::from_utf8(bytes).unwrap())
}

/// What the engine relies on from a checkpoint store.
fn behaves_as_a_checkpoint_store(storage: Arc<dyn CheckpointStorage>) {
    let backend = format!("{storage:?}");
    // Absent names.
    assert_eq!(storage.get("offsets/00001").unwrap(), None, "{backend}");
    assert!(storage.open("offsets/00001").unwrap().is_none(), "{backend}");
    assert!(storage.list("offsets").unwrap().is_empty(), "{backend}");
    storage.remove("nothing/here").unwrap();

    // Blobs, replaced whole; names listed one level deep, sorted.
    storage.put("offsets/00002.json", b"two").unwrap();
    storage.put("offsets/00001.json", b"one").unwrap();
    storage.put("offsets/00001.json", b"one, again").unwrap();
    storage.put("checkpoints/10/manifest.json", b"{}").unwrap();
    storage.put("checkpoints/9/state-0000.bin", b"\0\xff").unwrap();
    storage.put("LATEST", b"10\n").unwrap();
    assert_eq!(
        text(&*storage, "offsets/00001.json").as_deref(),
        Some("one, again")
    );
    assert_eq!(
        storage.get("checkpoints/9/state-0000.bin").unwrap().unwrap(),
        b"\0\xff"
    );
    assert_eq!(
        storage.list("offsets").unwrap(),
        ["00001.json", "00002.json"],
        "{backend}"
    );
    assert_eq!(storage.list("checkpoints").unwrap(), ["10", "9"], "{backend}");
    assert_eq!(
        storage.list("").unwrap(),
        ["LATEST", "checkpoints", "offsets"],
        "{backend}"
    );

    // Create-only: the first writer wins, the others change nothing, also
    // when they race.
    assert!(storage.put_new("checkpoints/11/manifest.json", b"first").unwrap());
    assert!(
        !storage
            .put_new("checkpoints/11/manifest.json", b"second")
            .unwrap()
    );
    assert_eq!(
        text(&*storage, "checkpoints/11/manifest.json").as_deref(),
        Some("first")
    );
    let racers: Vec<_> = (0..8)
        .map(|writer| {
            let storage = storage.clone();
            std::thread::spawn(move || {
                storage
                    .put_new(
                        "checkpoints/12/manifest.json",
                        format!("writer {writer}").as_bytes(),
                    )
                    .unwrap()
            })
        })
        .collect();
    let winners: Vec<usize> = racers
        .into_iter()
        .enumerate()
        .filter_map(|(writer, racer)| racer.join().unwrap().then_some(writer))
        .collect();
    assert_eq!(winners.len(), 1, "{backend}: {winners:?} all created it");
    assert_eq!(
        text(&*storage, "checkpoints/12/manifest.json"),
        Some(format!("writer {}", winners[0])),
        "{backend}"
    );

    // Streams: invisible until committed, read back whole, larger than a
    // part of a multipart upload.
    let big: Vec<u8> = (0..PART_BYTES * 2 + 12_345)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut stream = storage.create("incremental/part-1").unwrap();
    for piece in big.chunks(1 << 20) {
        stream.write_all(piece).unwrap();
    }
    assert_eq!(
        storage.get("incremental/part-1").unwrap(),
        None,
        "{backend}: seen before its commit"
    );
    stream.commit().unwrap();
    let mut read = Vec::new();
    storage
        .open("incremental/part-1")
        .unwrap()
        .unwrap()
        .read_to_end(&mut read)
        .unwrap();
    assert!(read == big, "{backend}: the stream read back differs");
    let mut small = storage.create("incremental/part-2").unwrap();
    small.write_all(b"small").unwrap();
    small.commit().unwrap();
    assert_eq!(text(&*storage, "incremental/part-2").as_deref(), Some("small"));
    // Dropped without a commit, large or small: nothing.
    let mut dropped = storage.create("incremental/part-3").unwrap();
    dropped.write_all(&big).unwrap();
    drop(dropped);
    let mut dropped = storage.create("incremental/part-4").unwrap();
    dropped.write_all(b"x").unwrap();
    drop(dropped);
    assert_eq!(
        storage.list("incremental").unwrap(),
        ["part-1", "part-2"],
        "{backend}"
    );

    // Removal takes a "directory" with everything under it, and only it.
    storage.put("checkpoints/1/manifest.json", b"{}").unwrap();
    storage.remove("checkpoints/1").unwrap();
    assert_eq!(
        storage.list("checkpoints").unwrap(),
        ["10", "11", "12", "9"],
        "{backend}"
    );
    // Many blobs at once (object storage: one request), absent ones too.
    storage.put("offsets/00003.json", b"three").unwrap();
    storage.put("offsets/00004.json", b"four").unwrap();
    storage
        .remove_blobs(&[
            "offsets/00003.json".into(),
            "offsets/00009.json".into(),
            "offsets/00004.json".into(),
        ])
        .unwrap();
    assert_eq!(
        storage.list("offsets").unwrap(),
        ["00001.json", "00002.json"],
        "{backend}"
    );
    storage.remove_blobs(&[]).unwrap();
    storage.remove("checkpoints").unwrap();
    storage.remove("offsets/00002.json").unwrap();
    assert_eq!(
        storage.list("").unwrap(),
        ["LATEST", "incremental", "offsets"],
        "{backend}"
    );
    assert_eq!(storage.list("offsets").unwrap(), ["00001.json"], "{backend}");
}

#[test]
fn a_directory_and_object_storage_behave_alike_as_checkpoint_stores() {
    let dir = scratch();
    behaves_as_a_checkpoint_store(Arc::new(
        LocalStorage::new(&dir.path().join("checkpoints")).unwrap(),
    ));
    let moto = MotoServer::start();
    moto.create_bucket("weir-state");
    behaves_as_a_checkpoint_store(Arc::new(object_storage(&moto, "weir-state", "pipelines/a")));
    // The stream dropped without a commit went up as a multipart upload
    // (it was larger than a part): it is aborted, in the background.
    let started = std::time::Instant::now();
    while moto.pending_uploads("weir-state") > 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "an uncommitted multipart upload was never aborted"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // At a bucket's root too.
    moto.create_bucket("weir-root");
    behaves_as_a_checkpoint_store(Arc::new(object_storage(&moto, "weir-root", "")));
}

/// `s3://weir-state/<prefix>` on `moto`, with its keys.
fn on_moto(moto: &Arc<MotoServer>, prefix: &str) -> CheckpointAt {
    let (watched, offsets) = (moto.clone(), format!("{prefix}/offsets/"));
    CheckpointAt {
        last_logged: Box::new(move || {
            watched
                .keys("weir-state", &offsets)
                .iter()
                .filter_map(|key| key.strip_prefix(&offsets)?.strip_suffix(".json")?.parse().ok())
                .max()
        }),
        dir: format!("s3://weir-state/{prefix}"),
        keys: format!(
            "endpoint = \"{}\"\naccess-key-id = \"test\"\nsecret-access-key = \"test\"\n",
            moto.endpoint()
        ),
    }
}

#[test]
fn killed_pipelines_resume_exactly_from_checkpoints_on_object_storage() {
    let moto = Arc::new(MotoServer::start());
    moto.create_bucket("weir-state");
    let root = scratch();
    // Three times the batches of the local test: a checkpoint on moto takes
    // hundreds of milliseconds (more on a loaded machine), and batches go on
    // meanwhile, so one attempt killed at its second checkpoint can run
    // through a hundred batches.
    let files = super::recovery::killed_input(root.path(), 480);
    let mut rng = super::recovery::Rng(0x5eed_0b1e_c700_0002);
    // A sliding window (whole snapshots) and keyed state (incremental
    // parts, compacted), as the local-directory test runs them.
    for case in killed_cases()
        .into_iter()
        .filter(|case| ["window", "state"].contains(&case.name()))
    {
        let prefix = format!("pipelines/{}", case.name());
        run_killed_case(root.path(), &files, &case, &on_moto(&moto, &prefix), &mut rng);
        let keys = moto.keys("weir-state", &format!("{prefix}/"));
        let has = |what: &str| {
            keys.iter()
                .any(|key| key.starts_with(&format!("{prefix}/{what}")))
        };
        assert!(
            has("LATEST") && has("checkpoints/") && has("offsets/"),
            "{}: {keys:?}",
            case.name()
        );
        if case.name() == "state" {
            assert!(has("incremental/"), "keyed state is written in parts: {keys:?}");
        }
        assert!(
            !root.path().join(case.name()).join("checkpoints").exists(),
            "{}: checkpointed locally",
            case.name()
        );
    }
}

#[test]
fn checkpoints_on_object_storage_refuse_what_they_cannot_do() {
    let dir = scratch();
    let base = |checkpoint: &str, source: &str| {
        format!(
            "[pipeline]\nname = \"p\"\n{checkpoint}\n[[source]]\nname = \"lines\"\n{source}\n\n\
             [[sink]]\ninput = \"lines\"\ntype = \"console\"\n"
        )
    };
    let files = "type = \"files\"\npath = \"in\"";
    for (text, error) in [
        (
            base(
                "checkpoint-dir = \"s3://weir-state/p\"\n",
                "type = \"socket\"\naddress = \"127.0.0.1:9999\"",
            ),
            "source `lines` keeps a write-ahead log in the checkpoint directory, appended as lines arrive, which \
             object storage (s3://weir-state/p) cannot do: give the pipeline a local checkpoint-dir",
        ),
        (
            base("checkpoint-dir = \"s3://Bad_Bucket/p\"\n", files),
            "invalid bucket \"Bad_Bucket\"",
        ),
        (
            base(
                "checkpoint-dir = \"ck\"\n\n[checkpoint]\nendpoint = \"http://127.0.0.1:1\"\n",
                files,
            ),
            "`endpoint`, `region`, `credentials` and the access keys of [checkpoint] are for an `s3://` checkpoint-dir",
        ),
        (
            base(
                "checkpoint-dir = \"s3://weir-state/p\"\n\n[checkpoint]\nsecret-access-key = \"s\"\n",
                files,
            ),
            "`access-key-id` and `secret-access-key` go together",
        ),
    ] {
        let file = write_pipeline(dir.path(), "bad.toml", &text);
        let output = weir().run(&["check", file.to_str().unwrap()], LIMIT);
        assert!(!output.status.success(), "{text}");
        assert!(stderr(&output).contains(error), "{text}\n{}", stderr(&output));
    }
}
