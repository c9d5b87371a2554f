//! Reducer: sums the values of each key, read as decimal numbers, and
//! writes the total as decimal text.
//!
//! When every value is an integer the sum is an `i64` (an overflow is an
//! error naming the value that overflowed); as soon as one value has a
//! fraction or an exponent the sum is an `f64`. Surrounding whitespace is
//! ignored; any other value is an error quoting it. Totals are valid inputs,
//! so partial sums merge.
//!
//! Config: none.

use weir_guest::{Error, Values};

#[weir_guest::reduce]
fn sum(values: Values<'_>) -> Result<String, Error> {
    let mut total = Total::Int(0);
    for value in values {
        total = total.add(value)?;
    }
    Ok(total.to_string())
}

/// A running sum.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Total {
    Int(i64),
    Float(f64),
}

impl Total {
    /// Adds one value, as text.
    fn add(self, value: &[u8]) -> Result<Self, Error> {
        let text = std::str::from_utf8(value)
            .map_err(|_| not_a_number(value))?
            .trim();
        if is_integer(text) {
            let n: i64 = text.parse().map_err(|_| overflow(value))?;
            return match self {
                Total::Int(total) => total
                    .checked_add(n)
                    .map(Total::Int)
                    .ok_or_else(|| overflow(value)),
                Total::Float(total) => Ok(Total::Float(total + n as f64)),
            };
        }
        let x: f64 = text.parse().map_err(|_| not_a_number(value))?;
        Ok(match self {
            Total::Int(total) => Total::Float(total as f64 + x),
            Total::Float(total) => Total::Float(total + x),
        })
    }
}

impl std::fmt::Display for Total {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Total::Int(n) => write!(f, "{n}"),
            // Very large or small floats in exponent form, so that they read
            // back as floats (plain `{}` writes 1e300 as 301 digits).
            Total::Float(x) if x != 0.0 && x.is_finite() && !(1e-6..1e16).contains(&x.abs()) => {
                write!(f, "{x:e}")
            }
            Total::Float(x) => write!(f, "{x}"),
        }
    }
}

/// An optional sign followed by ASCII digits.
fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn not_a_number(value: &[u8]) -> Error {
    Error::msg(format!("sum: not a number: {:?}", String::from_utf8_lossy(value)))
}

fn overflow(value: &[u8]) -> Error {
    Error::msg(format!(
        "sum: integer overflow adding {:?}",
        String::from_utf8_lossy(value)
    ))
}
