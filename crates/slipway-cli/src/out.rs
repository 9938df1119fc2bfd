//! Printing: text or JSON, colours only where they belong, and errors with hints.
//!
//! Every line Slipway prints goes through [`Output`], so `--output json` is honoured
//! everywhere and colour decisions are made once (a terminal, no NO_COLOR, or `--color
//! always`).
//!
//! A closed stdout (`slipway status | head -1`) ends the process quietly with exit 141
//! ([`exit::BROKEN_PIPE`], what a shell reports for a program ended by SIGPIPE): nobody
//! reads the rest, and a pipeline under `pipefail` learns the output was cut. Rust ignores
//! SIGPIPE, so `println!` would panic there instead; every write goes through [`stdout`]
//! and [`stderr`] here. A closed stderr only loses diagnostics: the command carries on.

use std::io::{IsTerminal, Write as _};

use serde::Serialize;
use slipway_model::exit;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable.
    Text,
    /// One JSON document on stdout.
    Json,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colours on a terminal only.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// A user-facing error: what went wrong, what to do, and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub code: i32,
    /// What failed ("failed to …" fragment or a sentence).
    pub message: String,
    /// What to do next.
    pub hint: Option<String>,
}

impl CliError {
    /// Invalid input (exit 2).
    pub fn input(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            code: exit::INVALID_INPUT,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
    /// Any code.
    #[allow(
        dead_code,
        reason = "used by commands that end in gates and run outcomes"
    )]
    pub fn new(code: i32, message: impl Into<String>, hint: Option<String>) -> Self {
        Self {
            code,
            message: message.into(),
            hint,
        }
    }
}

/// Where and how to print.
pub struct Output {
    /// Text or JSON.
    pub format: OutputFormat,
    /// Whether to colour stdout.
    pub color: bool,
    /// Whether to colour stderr.
    pub color_err: bool,
}

impl Output {
    /// Decide once how to print.
    pub fn new(format: OutputFormat, choice: ColorChoice) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let decide = |tty: bool| match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => tty && !no_color,
        };
        Self {
            format,
            color: decide(std::io::stdout().is_terminal()),
            color_err: decide(std::io::stderr().is_terminal()),
        }
    }

    /// Whether JSON was asked for.
    pub fn json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Print text as is.
    pub fn raw(&self, text: &str) {
        stdout(text);
    }

    /// Print a line.
    pub fn line(&self, text: &str) {
        stdout(&format!("{text}\n"));
    }

    /// Print a line to stderr (progress, warnings).
    pub fn eline(&self, text: &str) {
        stderr_line(text);
    }

    /// The outcome of a command: `v` as JSON with `--output json`, else `text` as a line.
    pub fn outcome<T: Serialize>(&self, v: &T, text: &str) {
        if self.json() {
            self.json_value(v);
        } else {
            self.line(text);
        }
    }

    /// Print a value as pretty JSON.
    pub fn json_value<T: Serialize>(&self, v: &T) {
        match serde_json::to_string_pretty(v) {
            Ok(s) => stdout(&format!("{s}\n")),
            Err(e) => stderr_line(&format!("error: failed to serialize output: {e}")),
        }
    }

    /// Print a value as JSON on one line (a "ready" line a script reads before more come).
    pub fn json_line<T: Serialize>(&self, v: &T) {
        match serde_json::to_string(v) {
            Ok(s) => stdout(&format!("{s}\n")),
            Err(e) => stderr_line(&format!("error: failed to serialize output: {e}")),
        }
    }

    /// Wrap text in a colour when colours are on.
    pub fn paint(&self, text: &str, style: Style) -> String {
        if !self.color {
            return text.to_owned();
        }
        use owo_colors::OwoColorize;
        match style {
            Style::Bold => text.bold().to_string(),
            Style::Dim => text.dimmed().to_string(),
            Style::Good => text.green().to_string(),
            Style::Warn => text.yellow().to_string(),
            Style::Bad => text.red().bold().to_string(),
        }
    }

    /// Report an error and return its exit code.
    pub fn fail(&self, e: &CliError) -> i32 {
        // An empty message means the command already reported (e.g. spec diagnostics).
        if e.message.is_empty() {
            return e.code;
        }
        if self.json() {
            self.json_value(&serde_json::json!({
                "ok": false,
                "exit_code": e.code,
                "error": e.message,
                "hint": e.hint,
            }));
        } else {
            let label = if self.color_err {
                use owo_colors::OwoColorize;
                "error:".red().bold().to_string()
            } else {
                "error:".to_owned()
            };
            // Messages quote input (names, paths, server answers): never let an escape
            // sequence in them act on the terminal.
            stderr_line(&format!(
                "{label} {}",
                slipway_model::text::printable(&e.message)
            ));
            if let Some(h) = &e.hint {
                stderr_line(&format!("  hint: {}", slipway_model::text::printable(h)));
            }
        }
        e.code
    }
}

/// Write `text` to stdout now. A closed pipe ends the process quietly with
/// [`exit::BROKEN_PIPE`]; any other write error ends it with [`exit::FAILURE`], saying why
/// on stderr — the output a command promised cannot be delivered either way.
pub fn stdout(text: &str) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(exit::BROKEN_PIPE);
        }
        stderr_line(&format!("error: failed to write to stdout: {e}"));
        std::process::exit(exit::FAILURE);
    }
}

/// Write a line to stderr; a write error (a closed pipe) loses the line and nothing else.
pub fn stderr_line(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{text}").and_then(|()| e.flush());
}

/// Text styles.
#[derive(Debug, Clone, Copy)]
pub enum Style {
    /// Headings.
    Bold,
    /// Secondary text.
    Dim,
    /// Success.
    Good,
    /// Warnings.
    Warn,
    /// Failures.
    Bad,
}
