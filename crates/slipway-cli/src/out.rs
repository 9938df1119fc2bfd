//! Printing: text or JSON, colours only where they belong, and errors with hints.
//!
//! Every line Slipway prints goes through [`Output`], so `--output json` is honoured
//! everywhere and colour decisions are made once (a terminal, no NO_COLOR, or `--color
//! always`).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "this module is the CLI's one place that prints"
)]

use std::io::IsTerminal;

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
        print!("{text}");
    }

    /// Print a line.
    pub fn line(&self, text: &str) {
        println!("{text}");
    }

    /// Print a line to stderr (progress, warnings).
    pub fn eline(&self, text: &str) {
        eprintln!("{text}");
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
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: failed to serialize output: {e}"),
        }
    }

    /// Print a value as JSON on one line (a "ready" line a script reads before more come).
    pub fn json_line<T: Serialize>(&self, v: &T) {
        match serde_json::to_string(v) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: failed to serialize output: {e}"),
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
            eprintln!("{label} {}", e.message);
            if let Some(h) = &e.hint {
                eprintln!("  hint: {h}");
            }
        }
        e.code
    }
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
