//! The error type of plugin functions.

use std::fmt;

/// An error returned by a plugin function.
///
/// Build one with [`Error::msg`], the [`bail!`](crate::bail) and
/// [`ensure!`](crate::ensure) macros, or convert any standard error with `?`
/// (like `anyhow::Error`, `Error` itself does not implement
/// [`std::error::Error`] so that this blanket conversion is possible).
///
/// An error returned for one record of a batch reaches the host as a
/// per-record failure naming the record's index in its input batch, so the
/// host can say which record failed; the message should say why, for a user.
pub struct Error {
    message: String,
    record: Option<Tie>,
}

/// The input record an error is tied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tie {
    /// A record of the (left) input, or a value of a group.
    Input(usize),
    /// A record of the right input of a `transform_with` function.
    Right(usize),
}

impl Error {
    /// An error with the given message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            record: None,
        }
    }

    /// The message of this error.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with `context`: `"{context}: {message}"`.
    #[must_use]
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// Ties this error to the input record at `index` in the batch.
    ///
    /// Per-record functions do not need this: the SDK reports the record being
    /// processed. It is meant for `map_partitions` and `transform_with` (a
    /// record of the left input), where only the plugin knows which record
    /// failed, and overrides the SDK's choice elsewhere.
    ///
    /// In an [`update_state`](macro@crate::update_state) function, `index` is
    /// the position of the failing value among the group's values (0 for the
    /// first), which is all the function knows.
    #[must_use]
    pub fn at_record(mut self, index: usize) -> Self {
        self.record = Some(Tie::Input(index));
        self
    }

    /// Ties this error to the record at `index` in the *right* input of a
    /// [`transform_with`](macro@crate::transform_with) function (the SDK
    /// reports it to the host as the left input's length plus `index`).
    #[must_use]
    pub fn at_right_record(mut self, index: usize) -> Self {
        self.record = Some(Tie::Right(index));
        self
    }

    /// The input record this error was tied to with [`Error::at_record`], if any.
    pub fn record_index(&self) -> Option<usize> {
        match self.record {
            Some(Tie::Input(index)) => Some(index),
            _ => None,
        }
    }

    /// The right input record this error was tied to with
    /// [`Error::at_right_record`], if any.
    pub fn right_record_index(&self) -> Option<usize> {
        match self.record {
            Some(Tie::Right(index)) => Some(index),
            _ => None,
        }
    }
}

impl<E> From<E> for Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    /// Converts a standard error, keeping the messages of its whole `source()`
    /// chain: `"outer: inner: innermost"`.
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self {
            message,
            record: None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.record {
            Some(Tie::Input(index)) => write!(f, "Error({:?}, record {index})", self.message),
            Some(Tie::Right(index)) => write!(f, "Error({:?}, right record {index})", self.message),
            None => write!(f, "Error({:?})", self.message),
        }
    }
}

/// Returns early with an [`Error`] built from a format string:
/// `bail!("bad value {v:?}")` is `return Err(Error::msg(format!("bad value {v:?}")))`.
///
/// ```
/// use weir_guest::{bail, Error};
///
/// fn parse(text: &str) -> Result<u32, Error> {
///     if text.is_empty() {
///         bail!("empty value");
///     }
///     Ok(text.parse()?)
/// }
/// assert_eq!(parse("").unwrap_err().to_string(), "empty value");
/// assert_eq!(parse("12").unwrap(), 12);
/// ```
#[macro_export]
macro_rules! bail {
    ($($arg:tt)+) => {
        return ::core::result::Result::Err($crate::Error::msg(::std::format!($($arg)+)))
    };
}

/// Returns early with an [`Error`] when a condition does not hold:
/// `ensure!(cond, "message {x}")`.
///
/// ```
/// use weir_guest::{ensure, Error};
///
/// fn check(n: i64) -> Result<i64, Error> {
///     ensure!(n >= 0, "negative value {n}");
///     Ok(n)
/// }
/// assert_eq!(check(-1).unwrap_err().to_string(), "negative value -1");
/// ```
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            $crate::bail!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::num::ParseIntError);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot read count")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn from_std_error_keeps_the_chain() {
        let inner = "x".parse::<i32>().unwrap_err();
        let error = Error::from(Outer(inner));
        assert_eq!(
            error.message(),
            "cannot read count: invalid digit found in string"
        );
        assert_eq!(error.record_index(), None);
    }

    #[test]
    fn context_and_record() {
        let error = Error::msg("boom").context("stage x").at_record(3);
        assert_eq!(error.to_string(), "stage x: boom");
        assert_eq!(error.record_index(), Some(3));
        assert_eq!(format!("{error:?}"), "Error(\"stage x: boom\", record 3)");
        assert_eq!(error.right_record_index(), None);

        let error = Error::msg("bad row").at_right_record(2);
        assert_eq!(error.record_index(), None);
        assert_eq!(error.right_record_index(), Some(2));
        assert_eq!(format!("{error:?}"), "Error(\"bad row\", right record 2)");
    }
}
