//! Test sink: exercises the capabilities a sink plugin may be granted, and
//! what it may not do. Config `action`:
//!
//! - `write-file`: writes each partition's records, `key value` per line,
//!   to `/out/<batch>-<partition>.txt` (the sink's `write-dir`), replacing
//!   a file a retry or a re-run left.
//! - `connect`: opens a TCP connection to `address` (the sink's
//!   `allow-connect`) and sends the records there, `key value` per line.
//! - `trap-first`: traps on the first try of every write (the host retries
//!   on a fresh instance), then writes nothing.
//! - `read-outside`: tries to read `path` (a host file outside any granted
//!   directory) and fails permanently with what happened.

use std::io::Write;

use weir_guest::{Batch, BatchInfo, Config, Error, SinkError};

fn setup(config: &Config) -> Result<(), Error> {
    match config.require("action")? {
        "write-file" | "trap-first" => Ok(()),
        "connect" => config.require("address").map(drop),
        "read-outside" => config.require("path").map(drop),
        other => weir_guest::bail!("unknown action {other:?}"),
    }
}

/// `key value` per record.
fn lines(records: &Batch<'_>) -> Result<String, Error> {
    let mut text = String::new();
    for record in records {
        text.push_str(record.key_str()?.unwrap_or_default());
        text.push(' ');
        text.push_str(record.value_str()?);
        text.push('\n');
    }
    Ok(text)
}

#[weir_guest::sink(init = setup)]
fn probe(batch: &BatchInfo, records: &Batch<'_>) -> Result<(), SinkError> {
    let config = weir_guest::config();
    match config.require("action")? {
        "write-file" => {
            let path = format!("/out/{}-{}.txt", batch.id(), batch.partition());
            std::fs::write(&path, lines(records)?)?;
        }
        "connect" => {
            let mut stream = std::net::TcpStream::connect(config.require("address")?)?;
            stream.write_all(lines(records)?.as_bytes())?;
        }
        "trap-first" => {
            if batch.attempt() == 0 {
                panic!("trapping on the first try of batch {}", batch.id());
            }
        }
        "read-outside" => {
            let path = config.require("path")?;
            let read = std::fs::read(path);
            return Err(SinkError::permanent(format!("reading {path}: {read:?}")));
        }
        _ => unreachable!("init checked the action"),
    }
    Ok(())
}
