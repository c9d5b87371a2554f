//! Test fixture: a map that tries the operation its input names and returns
//! `ok: ...` or `denied: <error>`. Operations: `read PATH`, `list PATH`,
//! `connect HOST:PORT`, `env NAME`, `args`. Used to check that every
//! capability is denied unless granted.

use weir_guest::{Error, Record};

fn attempt(command: &str) -> Result<String, String> {
    let (verb, argument) = command.split_once(' ').unwrap_or((command, ""));
    match verb {
        "read" => std::fs::read_to_string(argument)
            .map(|text| text.trim().to_owned())
            .map_err(|e| e.to_string()),
        "list" => std::fs::read_dir(argument)
            .map(|entries| format!("{} entries", entries.count()))
            .map_err(|e| e.to_string()),
        "connect" => std::net::TcpStream::connect(argument)
            .map(|_| "connected".to_owned())
            .map_err(|e| e.to_string()),
        "env" => std::env::var(argument).map_err(|e| e.to_string()),
        "args" => {
            let args: Vec<String> = std::env::args().collect();
            if args.is_empty() {
                Err("no arguments".into())
            } else {
                Ok(args.join(" "))
            }
        }
        other => Err(format!("unknown operation {other}")),
    }
}

#[weir_guest::map]
fn probe(record: Record<'_>) -> Result<String, Error> {
    Ok(match attempt(record.value_str()?) {
        Ok(result) => format!("ok: {result}"),
        Err(error) => format!("denied: {error}"),
    })
}
