//! The error that is the user's to fix, and how an error chain reads on one line.

/// An error that is the user's to fix: bad input, bad usage (exit code 2).
#[derive(Debug)]
pub struct InputError(pub String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// `msg` as an [`InputError`] (exit code 2).
pub fn input_error(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(InputError(msg.into()))
}

/// The error and its causes on one line, leaving out a cause whose text an outer message
/// already includes (library errors name their OS error and also expose it as the source).
pub fn render(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// A command that ran to its end but whose result is to be reported by a chosen exit code
/// (`jobs wait`: 1 for a job that ended without meeting its set points, 3 for a timeout);
/// `message` goes to standard error.
#[derive(Debug)]
pub struct Exit {
    /// The process's exit code.
    pub code: u8,
    /// What happened, on one line.
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}
