//! JSON helpers, over [`serde_json`] (re-exported so that plugins need no
//! dependency of their own).
//!
//! To derive `Deserialize`/`Serialize` without depending on `serde` directly,
//! point the derive at the SDK's re-export:
//!
//! ```
//! use weir_guest::serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(crate = "weir_guest::serde")]
//! struct Click<'a> {
//!     user: &'a str,
//!     ms: u64,
//! }
//!
//! let click: Click = weir_guest::json::from_slice(br#"{"user": "ada", "ms": 12}"#).unwrap();
//! assert_eq!((click.user, click.ms), ("ada", 12));
//! ```

pub use serde_json;
pub use serde_json::{Map, Value};

use crate::Error;

/// Serializes `value` as compact JSON bytes.
pub fn to_vec<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::msg(format!("cannot serialize JSON: {e}")))
}

/// Serializes `value` as compact JSON text.
pub fn to_string<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::msg(format!("cannot serialize JSON: {e}")))
}

/// Appends `value` as compact JSON to `out` (reuse one buffer across records).
pub fn write_to<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Error> {
    serde_json::to_writer(out, value).map_err(|e| Error::msg(format!("cannot serialize JSON: {e}")))
}

/// Parses JSON bytes; the result may borrow from `bytes`.
pub fn from_slice<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::msg(format!("invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let value: Value = from_slice(br#"{"a":[1,"x"]}"#).unwrap();
        assert_eq!(to_vec(&value).unwrap(), br#"{"a":[1,"x"]}"#);
        assert_eq!(to_string(&value["a"]).unwrap(), r#"[1,"x"]"#);
        let mut out = b"> ".to_vec();
        write_to(&mut out, &value["a"][1]).unwrap();
        assert_eq!(out, br#"> "x""#);
        assert!(
            from_slice::<Value>(b"{")
                .unwrap_err()
                .to_string()
                .starts_with("invalid JSON")
        );
    }
}
