//! Reducer: each group's first value minus all the following ones, read as
//! decimal numbers, written as decimal text — the inverse of `sum`, for
//! windows that remove the values leaving the window from a running sum.
//!
//! Numbers follow `sum`'s rules: when every value is an integer the result
//! is an `i64` (an overflow is an error naming the value that overflowed);
//! as soon as one value has a fraction or an exponent the result is an
//! `f64`. Surrounding whitespace is ignored; any other value is an error
//! quoting it. The result is written the way `sum` writes its totals.
//!
//! Unlike `sum`, subtraction is neither associative nor commutative: use it
//! only where the host calls it as an inverse (the first value is the
//! accumulated total, the others the values to take out of it).
//!
//! Config: none.

use weir_guest::{Error, Values};

#[weir_guest::reduce]
fn subtract(mut values: Values<'_>) -> Result<String, Error> {
    let mut total = match values.next() {
        Some(first) => Total::Int(0).apply(first, Op::Add)?,
        None => Total::Int(0),
    };
    for value in values {
        total = total.apply(value, Op::Sub)?;
    }
    Ok(total.to_string())
}

/// What to do with the next value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
}

/// A running result.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Total {
    Int(i64),
    Float(f64),
}

impl Total {
    /// Adds or subtracts one value, as text.
    fn apply(self, value: &[u8], op: Op) -> Result<Self, Error> {
        let text = std::str::from_utf8(value)
            .map_err(|_| not_a_number(value))?
            .trim();
        if is_integer(text) {
            let n: i64 = text.parse().map_err(|_| overflow(value))?;
            return match self {
                Total::Int(total) => match op {
                    Op::Add => total.checked_add(n),
                    Op::Sub => total.checked_sub(n),
                }
                .map(Total::Int)
                .ok_or_else(|| overflow(value)),
                Total::Float(total) => Ok(Total::Float(float(total, n as f64, op))),
            };
        }
        let x: f64 = text.parse().map_err(|_| not_a_number(value))?;
        Ok(match self {
            Total::Int(total) => Total::Float(float(total as f64, x, op)),
            Total::Float(total) => Total::Float(float(total, x, op)),
        })
    }
}

fn float(total: f64, x: f64, op: Op) -> f64 {
    match op {
        Op::Add => total + x,
        Op::Sub => total - x,
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
    Error::msg(format!(
        "subtract: not a number: {:?}",
        String::from_utf8_lossy(value)
    ))
}

fn overflow(value: &[u8]) -> Error {
    Error::msg(format!(
        "subtract: integer overflow at {:?}",
        String::from_utf8_lossy(value)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(values: &[&[u8]]) -> Result<String, Error> {
        let storage = Values::storage(values);
        subtract(Values::from_storage(&storage))
    }

    #[test]
    fn first_minus_the_others() {
        assert_eq!(run(&[b"10", b"3", b" 4\n"]).unwrap(), "3");
        assert_eq!(run(&[b"-5"]).unwrap(), "-5");
        assert_eq!(run(&[b"1", b"+2", b"-3"]).unwrap(), "2");
        assert_eq!(run(&[b"10", b"0.5"]).unwrap(), "9.5");
        assert_eq!(run(&[b"1e300", b"1"]).unwrap(), "1e300");
        assert_eq!(run(&[]).unwrap(), "0");
    }

    #[test]
    fn errors_quote_the_value() {
        assert_eq!(
            run(&[b"1", b"x"]).unwrap_err().message(),
            r#"subtract: not a number: "x""#
        );
        assert_eq!(
            run(&[b"-9223372036854775807", b"2"]).unwrap_err().message(),
            r#"subtract: integer overflow at "2""#
        );
        assert!(
            run(&[b"99999999999999999999"])
                .unwrap_err()
                .message()
                .contains("overflow")
        );
    }
}
