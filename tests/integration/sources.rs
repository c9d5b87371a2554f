//! Word count end to end over each source, checked against counts computed
//! independently in the test.

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use weir_tests::{
    free_port, sample_text, scratch, stderr, summed_counts, terminate, wait_output, word_counts,
    write_pipeline,
};

use super::{LIMIT, weir, wordcount_pipeline};

#[test]
fn wordcount_over_a_tcp_socket_matches_independent_counts() {
    let dir = scratch();
    let text = sample_text(5_000, 1);
    // The test plays `nc -lk`: weir connects to it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let feeder_text = text.clone();
    let feeder = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        for chunk in feeder_text.as_bytes().chunks(7_777) {
            stream.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let out = dir.path().join("out");
    let source = format!("type = \"socket\"\naddress = \"{address}\"");
    let file = write_pipeline(dir.path(), "p.toml", &wordcount_pipeline(&source, &out, 2));
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    feeder.join().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(summed_counts(&out), word_counts(&text));
}

#[test]
fn a_socket_that_cannot_connect_is_retried_and_reported() {
    let dir = scratch();
    let port = free_port();
    let text = sample_text(300, 2);
    let out = dir.path().join("out");
    let source = format!("type = \"socket\"\naddress = \"127.0.0.1:{port}\"\nmax-backoff = \"200ms\"");
    let file = write_pipeline(dir.path(), "p.toml", &wordcount_pipeline(&source, &out, 2));
    let child = weir()
        .command(&["run", "--available-now", file.to_str().unwrap()])
        .env("WEIR_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody listens for a while: weir must keep trying.
    std::thread::sleep(Duration::from_millis(1_200));
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    drop(stream);
    let output = wait_output(child, LIMIT);
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    assert!(
        log.contains("cannot connect") && log.contains("retrying"),
        "{log}"
    );
    assert_eq!(summed_counts(&out), word_counts(&text));
}

#[test]
fn listen_mode_accepts_many_producers() {
    let dir = scratch();
    let port = free_port();
    let out = dir.path().join("out");
    let source = format!("type = \"socket\"\nmode = \"listen\"\naddress = \"127.0.0.1:{port}\"");
    let file = write_pipeline(dir.path(), "p.toml", &wordcount_pipeline(&source, &out, 2));
    let child = weir().spawn(&["run", "--available-now", file.to_str().unwrap()]);
    let texts: Vec<String> = (0..3).map(|i| sample_text(1_000, 10 + i)).collect();
    // All producers connect first, then write at once and close.
    let connect = || {
        for _ in 0..600 {
            if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                return stream;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("weir never listened on port {port}");
    };
    let streams: Vec<std::net::TcpStream> = texts.iter().map(|_| connect()).collect();
    let producers: Vec<_> = streams
        .into_iter()
        .zip(texts.iter().cloned())
        .map(|(mut stream, text)| std::thread::spawn(move || stream.write_all(text.as_bytes()).unwrap()))
        .collect();
    for producer in producers {
        producer.join().unwrap();
    }
    let output = wait_output(child, LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(summed_counts(&out), word_counts(&texts.concat()));
}

#[test]
fn wordcount_over_a_directory_is_the_same_with_1_and_3_partitions() {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let mut all = String::new();
    for i in 0..6 {
        let text = sample_text(2_000, 100 + i);
        std::fs::write(input.join(format!("file-{i}.txt")), &text).unwrap();
        all.push_str(&text);
    }
    // Not matching the glob, and hidden: both ignored.
    std::fs::write(input.join("ignored.csv"), "nope nope\n").unwrap();
    std::fs::write(input.join(".hidden.txt"), "nope nope\n").unwrap();
    let expected = word_counts(&all);
    for partitions in [1, 3] {
        let out = dir.path().join(format!("out-{partitions}"));
        let source = format!(
            "type = \"files\"\npath = {:?}\nglob = \"*.txt\"",
            input.display().to_string()
        );
        let file = write_pipeline(
            dir.path(),
            "p.toml",
            &wordcount_pipeline(&source, &out, partitions),
        );
        let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(summed_counts(&out), expected, "{partitions} partitions");
    }
}

#[test]
fn files_that_appear_later_are_read_and_sigterm_stops_gracefully() {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let out = dir.path().join("out");
    let source = format!(
        "type = \"files\"\npath = {:?}\npoll-interval = \"20ms\"",
        input.display().to_string()
    );
    let file = write_pipeline(dir.path(), "p.toml", &wordcount_pipeline(&source, &out, 2));
    let child = weir().spawn(&["run", file.to_str().unwrap()]);
    let mut all = String::new();
    for i in 0..4 {
        let text = sample_text(500, 200 + i);
        // Written under a hidden name, then moved in atomically.
        let temporary = input.join(format!(".file-{i}.tmp"));
        std::fs::write(&temporary, &text).unwrap();
        std::fs::rename(&temporary, input.join(format!("file-{i}.txt"))).unwrap();
        all.push_str(&text);
        std::thread::sleep(Duration::from_millis(150));
    }
    let expected = word_counts(&all);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while summed_counts(&out) != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    terminate(&child);
    let output = wait_output(child, LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("stopped gracefully"),
        "{}",
        stderr(&output)
    );
    assert_eq!(summed_counts(&out), expected);
}

#[test]
fn sigterm_processes_everything_already_received() {
    let dir = scratch();
    let out = dir.path().join("out");
    // A batch interval far longer than the test: only the graceful stop's
    // final batch can deliver these records.
    let pipeline = wordcount_pipeline("type = \"stdin\"", &out, 2).replace("\"100ms\"", "\"1h\"");
    let file = write_pipeline(dir.path(), "p.toml", &pipeline);
    let mut child = weir()
        .command(&["run", file.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let text = sample_text(3_000, 7);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(summed_counts(&out).is_empty(), "no batch should have run yet");
    terminate(&child);
    let output = wait_output(child, LIMIT);
    drop(stdin);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(summed_counts(&out), word_counts(&text));
}

#[test]
fn a_generator_count_ends_the_run_with_every_line() {
    let dir = scratch();
    let out = dir.path().join("out");
    let source = "type = \"generator\"\nlines = 5000\nwords-per-line = 4\nseed = 3";
    let file = write_pipeline(dir.path(), "p.toml", &wordcount_pipeline(source, &out, 2));
    let output = weir().run(&["run", file.to_str().unwrap()], LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    let total: u64 = summed_counts(&out).values().sum();
    assert_eq!(total, 5_000 * 4);
}

#[test]
fn a_stop_drops_the_line_it_cut_off_and_keeps_every_whole_one() {
    let dir = scratch();
    let out = dir.path().join("out");
    let text = sample_text(2_000, 3);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (sent_tx, sent) = std::sync::mpsc::channel();
    let feeder_text = text.clone();
    let feeder = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(feeder_text.as_bytes()).unwrap();
        // The start of a line whose end never comes, in the same write
        // stream as whole lines.
        stream.write_all(b"cutoff partial").unwrap();
        stream.flush().unwrap();
        sent_tx.send(()).unwrap();
        // Keep the connection open until weir has stopped.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
    });
    // One hour batches: only the graceful stop's final batch delivers.
    let source = format!("type = \"socket\"\naddress = \"{address}\"");
    let pipeline = wordcount_pipeline(&source, &out, 2).replace("\"100ms\"", "\"1h\"");
    let file = write_pipeline(dir.path(), "p.toml", &pipeline);
    let child = weir()
        .command(&["run", file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sent.recv_timeout(LIMIT).unwrap();
    std::thread::sleep(Duration::from_millis(1_000));
    terminate(&child);
    let output = wait_output(child, LIMIT);
    feeder.join().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let counts = summed_counts(&out);
    assert!(!counts.contains_key("cutoff"), "the cut-off line was delivered");
    assert_eq!(counts, word_counts(&text));
}
