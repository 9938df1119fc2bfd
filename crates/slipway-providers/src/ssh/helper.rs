//! The step helper: one long-lived process per SSH connection that runs the `ssh` target's
//! steps on its host, so that a step costs the host one fork of the helper and one `sh`
//! for the command — no channel, login shell, `flock` or `timeout` of its own (the
//! wrapper, [`super::step_script`], costs all four per step).
//!
//! # The helper
//!
//! A Perl script (Perl 5.10 and its core only: `flock`, `fork`, `alarm` are built in)
//! started once per connection — by the host check ([`SshTarget::check_hosts`]) as soon as
//! the session is up, while other hosts' handshakes go on, else on the first step that
//! needs it — on a channel of its own that stays open for the connection's life: `cd <workdir> && exec perl -e <script>`. It
//! says [`HELLO`] on standard output, then takes one step at a time from standard input.
//! A host where it cannot start (no `perl`, a `ForceCommand`, a workdir that is not there)
//! runs its steps with the wrapper instead, for the whole connection; so does a step that
//! finds the helper busy with another step of the same host (steps of different services
//! run at once), so that steps never wait for each other. Each host's progress report
//! says which way it went (`via`).
//!
//! # One step, exactly once
//!
//! Slipway sends the step in one write (`R <length>\n` and the fields, NUL-separated:
//! timeout, output kept, state dir, run, key, attempt token, `creates`, `unless`, the
//! command, the environment); the helper answers `A\n` as it takes it and starts it at
//! once: one round trip a step. The step is sent on a connection that may have broken
//! unseen (a host that stopped answering): without the `A` within [`OPEN_TIMEOUT`]
//! slipway logs in again, once, and sends the same step, with the same attempt token, to
//! a new helper there — the reconnect rule of [`Session::channel`]. Whether the first
//! send arrived is not known then; the token makes the resend safe either way. The runner
//! records it under the step's lock, as the content of the lock file (`<marker>.lock`:
//! no file more a step), just before it starts the command, and a runner that finds its
//! own token there (and no completion marker) starts nothing and answers
//! [`ATTEMPT_SENTINEL`] and 75: that attempt started once, its effect unknown, and the
//! host fails as when a connection breaks mid-step. That holds in either order: the
//! resend's runner finds the first send's token, or the first send's runner, late (a
//! helper that was frozen, then woke up), finds the resend's. A new attempt of the step
//! (a resumed run) has a token of its own, so the record does not stop it. The wrapper
//! does not read the record, so a step sent once never goes to the wrapper. Once the `A`
//! came back nothing is sent again: a connection that breaks then fails the host, its
//! effect unknown (the lock and the marker settle it).
//!
//! On taking a step the helper forks a *runner*, which does what the wrapper's login shell
//! does, in the same order and with the same files and answers: creates the run's marker
//! directory, takes the step's lock (`flock` on `<marker>.lock`, waiting at most the step's
//! timeout, else [`LOCK_SENTINEL`] and 75), checks the exclusion marker, the completion
//! marker, the attempt record, `creates`, `unless` (run as `sh -c` under the timeout),
//! records the attempt, runs the command as `sh -c` with the host's environment and the
//! step's, standard input from `/dev/null`, its
//! output in `<marker>.out`/`.err` and the lock not inherited, kills its process group at
//! the timeout (TERM, KILL 5 s later; exit 124, or 137 when it took the KILL: `timeout
//! -k 5`'s statuses), writes the marker on exit 0, reads back and empties the output
//! files' tails and only then answers (`D <status> <stdout bytes> <stderr bytes>\n` and
//! the bytes) and exits, releasing the lock. The runner, not the helper, holds the lock:
//! the helper killed mid-step leaves the runner to finish, mark and answer (sshd passes
//! on what it writes until it exits), so the step is neither lost nor run twice; a
//! connection that drops mid-step leaves it to finish and mark, as the wrapper's shell
//! does (no terminal: nothing signals it; a write to the closed connection fails instead
//! of killing it). `observe`, `undo` and `observe_undo` still use one wrapper channel per
//! host: they run once per run at most, on a resume or a rollback.
//!
//! Output goes to files, never through a pipe the step could fill: a step that prints a
//! lot costs the connection only the kept tail ([`super::SshTarget::keep`] bytes a
//! stream).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use russh::client;
use slipway_engine::StepOutput;
use slipway_model::duration::format_duration;

use super::{
    ATTEMPT_SENTINEL, CREATES_SENTINEL, EXCLUDED_MARKER, EXCLUDED_SENTINEL, Handle, LOCK_SENTINEL,
    MARKER_SENTINEL, OPEN_TIMEOUT, Session, SshError, SshTarget, UNLESS_SENTINEL, push_tail,
    sh_quote, timeline,
};

/// What the helper prints once it runs (after whatever the login shell printed).
const HELLO: &[u8] = b"slipway-step-helper 1\n";

/// The helper's answer to a step as it takes it (and starts it).
const TAKEN: &[u8] = b"A\n";

/// Bytes of the helper's own standard error kept for messages.
const NOISE_LIMIT: usize = 1024;

/// What the runner says when it cannot write the completion marker (as the wrapper).
const MARKER_WRITE_FAILED: &str = "slipway: could not write the completion marker";

/// The helper's Perl source, sentinels filled in. See the module documentation; the
/// statuses and messages are the wrapper's, so [`super::SshTarget`] reads both alike.
const SCRIPT: &str = r#"$0 = 'slipway-step-helper';
$SIG{PIPE} = 'IGNORE';
binmode(STDIN);
binmode(STDOUT);
$| = 1;
print "slipway-step-helper 1\n";
while (defined(my $h = <STDIN>)) {
    last unless $h =~ /^R (\d+)\n\z/;
    my ($n, $p) = ($1, '');
    while (length($p) < $n) {
        last unless read(STDIN, $p, $n - length($p), length($p));
    }
    last if length($p) < $n;
    print "A\n";
    my $pid = fork();
    if (!defined($pid)) {
        reply(1, '', "slipway: the step helper could not start the step: $!\n");
        next;
    }
    if ($pid == 0) {
        $0 = 'slipway-step-runner';
        open(STDIN, '<', '/dev/null');
        reply(attempt(split(/\0/, $p, -1)));
        exit(0);
    }
    waitpid($pid, 0);
}
exit(0);

sub reply {
    my ($rc, $o, $e) = @_;
    print('D ' . $rc . ' ' . length($o) . ' ' . length($e) . "\n" . $o . $e);
}

sub attempt {
    my ($secs, $keep, $state, $run, $key, $token, $creates, $unless, $cmd, @env) = @_;
    my $base = substr($state, 0, 1) eq '+' ? substr($state, 1)
        : (defined($ENV{HOME}) ? $ENV{HOME} : '') . '/.slipway';
    my $dir = "$base/markers/$run";
    my $m = "$dir/$key";
    if (!-d $dir && !mkdir_p($dir)) {
        return (1, '', "slipway: cannot create the marker directory $dir: $!\n");
    }
    my $lk;
    open($lk, '+>>', "$m.lock") or return (1, '', "slipway: cannot open the lock $m.lock: $!\n");
    if (!flock($lk, 6)) {
        my $got = eval {
            local $SIG{ALRM} = sub { die("timeout\n") };
            alarm($secs);
            my $r = flock($lk, 2);
            alarm(0);
            $r;
        };
        alarm(0);
        return (75, '', @LOCK@ . "\n") unless $got;
    }
    return (0, '', @EXCLUDED@ . "\n") if -e "$dir/@EXCLUDED_MARKER@";
    return (0, '', @MARKER@ . "\n") if -e $m;
    my $seen = '';
    sysseek($lk, 0, 0);
    sysread($lk, $seen, 256);
    return (75, '', @ATTEMPT@ . "\n") if $seen eq $token;
    return (0, '', @CREATES@ . "\n") if substr($creates, 0, 1) eq '+' && -e substr($creates, 1);
    return (0, '', @UNLESS@ . "\n") if substr($unless, 0, 1) eq '+'
        && spawn(substr($unless, 1), '/dev/null', '/dev/null', $secs, \@env) == 0;
    if (!(truncate($lk, 0) && syswrite($lk, $token) == length($token))) {
        return (1, '', "slipway: cannot write the attempt record in $m.lock: $!\n");
    }
    my $rc = spawn($cmd, "$m.out", "$m.err", $secs, \@env);
    my $pre = '';
    if ($rc == 0) {
        my $mk;
        if (!(open($mk, '>', $m) && close($mk))) {
            $pre = @MARKER_WRITE_FAILED@ . "\n";
            $rc = 75;
        }
    }
    return ($rc, tail("$m.out", $keep), $pre . tail("$m.err", $keep));
}

sub mkdir_p {
    my ($d) = @_;
    return 1 if -d $d;
    if ($d =~ m{^(.+)/[^/]*\z}s) {
        mkdir_p($1) or return 0;
    }
    return mkdir($d) || -d $d;
}

sub spawn {
    my ($cmd, $o, $e, $secs, $env) = @_;
    my $pid = fork();
    return 126 unless defined($pid);
    if ($pid == 0) {
        $SIG{PIPE} = 'DEFAULT';
        setpgrp(0, 0);
        my @kv = @$env;
        while (@kv) {
            my $k = shift(@kv);
            $ENV{$k} = shift(@kv);
        }
        open(STDIN, '<', '/dev/null') or exit(1);
        open(STDOUT, '>', $o) or exit(1);
        open(STDERR, '>', $e) or exit(1);
        exec { 'sh' } 'sh', '-c', $cmd;
        exit(127);
    }
    setpgrp($pid, $pid);
    my $timed = 0;
    local $SIG{ALRM} = sub {
        if ($timed) {
            kill('KILL', -$pid);
        } else {
            $timed = 1;
            kill('TERM', -$pid);
            kill('CONT', -$pid);
            alarm(5);
        }
    };
    alarm($secs);
    waitpid($pid, 0);
    my $st = $?;
    alarm(0);
    my $sig = $st & 127;
    return 137 if $timed && $sig == 9;
    return 124 if $timed;
    return 128 + $sig if $sig;
    return $st >> 8;
}

sub tail {
    my ($f, $keep) = @_;
    my $fh;
    open($fh, '+<', $f) or return '';
    binmode($fh);
    my $size = -s $fh;
    return '' unless $size;
    my $from = $size > $keep ? $size - $keep : 0;
    sysseek($fh, $from, 0);
    my $b = '';
    while (length($b) < $size - $from) {
        last unless sysread($fh, $b, $size - $from - length($b), length($b));
    }
    truncate($fh, 0);
    return $b;
}
"#;

/// A Perl single-quoted string literal of `s`.
fn perl_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// [`SCRIPT`] with the sentinels the target reads filled in.
static FILLED: LazyLock<String> = LazyLock::new(|| {
    SCRIPT
        .replace("@LOCK@", &perl_quote(LOCK_SENTINEL))
        .replace("@ATTEMPT@", &perl_quote(ATTEMPT_SENTINEL))
        .replace("@EXCLUDED_MARKER@", EXCLUDED_MARKER)
        .replace("@EXCLUDED@", &perl_quote(EXCLUDED_SENTINEL))
        .replace("@MARKER_WRITE_FAILED@", &perl_quote(MARKER_WRITE_FAILED))
        .replace("@MARKER@", &perl_quote(MARKER_SENTINEL))
        .replace("@CREATES@", &perl_quote(CREATES_SENTINEL))
        .replace("@UNLESS@", &perl_quote(UNLESS_SENTINEL))
});

/// One step for the helper: what the wrapper's script is built from.
pub(super) struct StepRequest<'a> {
    /// The step's timeout on the host, in seconds (at least 1): the lock wait, `unless`
    /// and the command are each bounded by it.
    pub secs: u64,
    /// Bytes kept of the end of each output stream.
    pub keep: usize,
    /// The host's `state_dir` (default `$HOME/.slipway`).
    pub state_dir: Option<&'a str>,
    /// The run id (the markers' directory).
    pub run_id: &'a str,
    /// The step's idempotency key (its marker's name).
    pub key: &'a str,
    /// The step's `creates` path.
    pub creates: Option<&'a str>,
    /// The step's `unless` command.
    pub unless: Option<&'a str>,
    /// The step's command.
    pub run: &'a str,
    /// Exported to `unless` and the command.
    pub env: &'a [(String, String)],
}

impl StepRequest<'_> {
    /// The request's frame for the attempt `token` ([`attempt_token`]); `None` when a
    /// field holds a NUL byte (which no argument or environment value can carry: the
    /// wrapper then runs it, and says what the shell makes of it).
    fn encode(&self, token: &str) -> Option<Vec<u8>> {
        let opt = |o: Option<&str>| match o {
            Some(v) => format!("+{v}"),
            None => "-".to_owned(),
        };
        let mut fields = vec![
            self.secs.to_string(),
            self.keep.to_string(),
            opt(self.state_dir),
            self.run_id.to_owned(),
            self.key.to_owned(),
            token.to_owned(),
            opt(self.creates),
            opt(self.unless),
            self.run.to_owned(),
        ];
        for (k, v) in self.env {
            fields.push(k.clone());
            fields.push(v.clone());
        }
        if fields.iter().any(|f| f.contains('\0')) {
            return None;
        }
        let payload = fields.join("\0");
        let mut frame = format!("R {}\n", payload.len()).into_bytes();
        frame.extend_from_slice(payload.as_bytes());
        Some(frame)
    }
}

/// A token for one attempt of a step, the same for its resend ([`Session::run_step`]):
/// unique across the processes that may attempt the step (this one's id, the time, a
/// count), never reused by a later attempt. Not secret: a host's files hold it.
fn attempt_token() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{}.{}.{n}",
        std::process::id(),
        slipway_stdx::now().as_nanosecond()
    )
}

/// The helper of a session, as far as slipway knows.
#[derive(Default)]
pub(super) enum Slot {
    /// None started on the current connection (or the last one ended).
    #[default]
    Idle,
    /// It cannot run on this host: why. Steps take the wrapper for the session's life.
    Unavailable(String),
    /// Running, on this channel.
    Up(Helper),
}

/// A running helper: its channel, and the connection the channel lives on.
pub(super) struct Helper {
    conn: Handle,
    ch: russh::Channel<client::Msg>,
    /// Bytes from its standard output not consumed yet.
    buf: Vec<u8>,
    /// The end of its standard error (the login shell's complaints, perl's).
    noise: Vec<u8>,
    /// How the helper process ended, once the host said so.
    exit: Option<String>,
    /// No more data will come on the channel.
    ended: bool,
}

/// What one read from the helper's channel brought.
enum Pulled {
    /// Something (perhaps nothing that matters): look at `buf` again.
    More,
    /// The channel ended: nothing more will come.
    Ended,
    /// Nothing before the deadline.
    TimedOut,
}

/// How sending a step to the helper went.
enum Sent {
    /// It took the step ([`TAKEN`]) and started it.
    Taken,
    /// The write failed (the channel was closed): the step did not reach it.
    Unsent,
    /// It had ended (killed while idle, or its connection closed), or it said something
    /// else than [`TAKEN`]: it did not take the step.
    Ended,
    /// No answer in time: the connection may have broken unseen; the step may or may not
    /// have reached the helper (a resend with the same token cannot start it twice).
    NoAnswer,
}

/// What [`Session::run_step`] did.
pub(super) enum StepRun {
    /// The step went to the helper: what the wrapper's [`Session::run`] would have
    /// returned (output and whether the bound ran out), or why the host failed.
    Ran(Result<(StepOutput, bool), SshError>),
    /// Nothing was sent: run the step with the wrapper; why.
    Wrapper(String),
}

/// Why a helper could not be had.
enum StartError {
    /// It cannot run on this host (or not now): the wrapper runs the step.
    Unavailable(String),
    /// The connection failed: the step fails on this host (nothing was started there).
    Session(SshError),
}

impl Helper {
    /// Read one message, until `deadline`.
    async fn pull(&mut self, deadline: tokio::time::Instant) -> Pulled {
        if self.ended {
            return Pulled::Ended;
        }
        match tokio::time::timeout_at(deadline, self.ch.wait()).await {
            Err(_) => Pulled::TimedOut,
            Ok(None) => {
                self.ended = true;
                Pulled::Ended
            }
            Ok(Some(msg)) => match msg {
                russh::ChannelMsg::Data { data } => {
                    self.buf.extend_from_slice(&data);
                    Pulled::More
                }
                russh::ChannelMsg::ExtendedData { data, .. } => {
                    let mut cut = false;
                    push_tail(&mut self.noise, &data, NOISE_LIMIT, &mut cut);
                    Pulled::More
                }
                // The helper is gone; its runner may still be writing the step's answer
                // (sshd passes on what it writes until the channel's output ends).
                russh::ChannelMsg::ExitStatus { exit_status } => {
                    self.exit = Some(format!("exit {exit_status}"));
                    Pulled::More
                }
                russh::ChannelMsg::ExitSignal { signal_name, .. } => {
                    self.exit = Some(format!("killed by signal {signal_name:?}"));
                    Pulled::More
                }
                russh::ChannelMsg::Eof | russh::ChannelMsg::Close | russh::ChannelMsg::Failure => {
                    self.ended = true;
                    Pulled::Ended
                }
                _ => Pulled::More,
            },
        }
    }

    /// Whether this helper can take another step on `current`, the session's connection.
    fn usable(&self, current: &Handle) -> bool {
        !self.ended
            && self.exit.is_none()
            && !self.conn.is_closed()
            && Arc::ptr_eq(&self.conn, current)
    }

    /// What the helper said on its standard error, for messages.
    fn said(&self) -> String {
        let s = String::from_utf8_lossy(&self.noise);
        let s = s.trim();
        if s.is_empty() {
            String::new()
        } else {
            format!(": {s}")
        }
    }

    /// Close the channel (the helper reads end of file and exits), not waiting long for
    /// a connection that may not answer.
    async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ch.close()).await;
    }

    /// End the helper between steps: end of file on its standard input (it exits), then
    /// wait (until `deadline`) for its channel to end, which sshd signals only once the
    /// helper's output closed — it has exited — then close the channel.
    pub(super) async fn finish(mut self, deadline: tokio::time::Instant) {
        if !self.ended
            && let Ok(Ok(())) = tokio::time::timeout_at(deadline, self.ch.eof()).await
        {
            while let Pulled::More = self.pull(deadline).await {}
        }
        let _ = tokio::time::timeout_at(deadline, self.ch.close()).await;
    }

    /// Send the step (its whole frame, one write) and wait for [`TAKEN`].
    async fn send(&mut self, frame: &[u8]) -> Sent {
        let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
        match tokio::time::timeout_at(deadline, self.ch.data(frame)).await {
            Err(_) => return Sent::NoAnswer,
            Ok(Err(_)) => return Sent::Unsent,
            Ok(Ok(())) => {}
        }
        loop {
            if self.buf.len() >= TAKEN.len() || !TAKEN.starts_with(&self.buf) {
                if self.buf.starts_with(TAKEN) {
                    self.buf.drain(..TAKEN.len());
                    return Sent::Taken;
                }
                // Not the protocol: this helper is of no use (a resend with the same token
                // cannot start the step twice, whatever it did with it).
                self.ended = true;
                return Sent::Ended;
            }
            match self.pull(deadline).await {
                Pulled::More => {}
                Pulled::Ended => return Sent::Ended,
                Pulled::TimedOut => return Sent::NoAnswer,
            }
        }
    }

    /// Wait (at most `bound`) for the answer of the step the helper took.
    async fn answer(
        &mut self,
        bound: Duration,
        keep: usize,
        label: &str,
    ) -> Result<(StepOutput, bool), SshError> {
        let unknown = |what: &str| {
            SshError::Session(format!(
                "run a command on {label}: {what} while the step ran; whether it took effect there is not known (the step's lock and marker settle it: `slipway resume` observes them)"
            ))
        };
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            match parse_answer(&self.buf, keep) {
                Answer::Partial => {}
                Answer::Done(o, used) => {
                    self.buf.drain(..used);
                    return Ok((o, false));
                }
                Answer::Garbled => {
                    self.ended = true;
                    let head =
                        String::from_utf8_lossy(&self.buf[..self.buf.len().min(80)]).into_owned();
                    return Err(unknown(&format!(
                        "the step helper answered something unexpected ({head:?})"
                    )));
                }
            }
            match self.pull(deadline).await {
                Pulled::More => {}
                Pulled::Ended => {
                    let what = match &self.exit {
                        Some(how) => format!(
                            "the step helper ended ({how}) and its answer did not come{}",
                            self.said()
                        ),
                        None => "the connection broke".to_owned(),
                    };
                    return Err(unknown(&what));
                }
                Pulled::TimedOut => {
                    self.ended = true;
                    self.close().await;
                    return Ok((StepOutput::default(), true));
                }
            }
        }
    }
}

/// A parse of the helper's answer so far.
enum Answer {
    /// Not all of it yet.
    Partial,
    /// The step's output as the wrapper's would read, and the bytes it took.
    Done(StepOutput, usize),
    /// Not an answer.
    Garbled,
}

/// Read `D <status> <stdout bytes> <stderr bytes>\n<stdout><stderr>` from the start of
/// `buf`, keeping `keep` bytes of each stream as [`Session::run`] does.
fn parse_answer(buf: &[u8], keep: usize) -> Answer {
    let Some(nl) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() > 64 {
            Answer::Garbled
        } else {
            Answer::Partial
        };
    };
    let Ok(head) = std::str::from_utf8(&buf[..nl]) else {
        return Answer::Garbled;
    };
    let parts: Vec<&str> = head.split(' ').collect();
    let (Some(&"D"), Some(Ok(rc)), Some(Ok(ol)), Some(Ok(el)), 4) = (
        parts.first(),
        parts.get(1).map(|s| s.parse::<i32>()),
        parts.get(2).map(|s| s.parse::<usize>()),
        parts.get(3).map(|s| s.parse::<usize>()),
        parts.len(),
    ) else {
        return Answer::Garbled;
    };
    let start = nl + 1;
    let end = start + ol + el;
    if buf.len() < end {
        return Answer::Partial;
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut truncated = false;
    push_tail(&mut out, &buf[start..start + ol], keep, &mut truncated);
    push_tail(&mut err, &buf[start + ol..end], keep, &mut truncated);
    Answer::Done(
        StepOutput {
            exit_code: Some(rc),
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            truncated,
        },
        end,
    )
}

impl Session {
    /// Run one step with the exactly-once guard through this connection's helper
    /// (started here when there is none); [`StepRun::Wrapper`] when nothing was sent and
    /// the wrapper should run it. `bound` is what the wrapper's run would be given.
    pub(super) async fn run_step(&self, req: &StepRequest<'_>, bound: Duration) -> StepRun {
        // One token for this attempt, sent again as it is by a resend below.
        let Some(frame) = req.encode(&attempt_token()) else {
            return StepRun::Wrapper("a field of the step holds a NUL byte".into());
        };
        let Ok(mut slot) = self.helper.try_lock() else {
            return StepRun::Wrapper("the host's step helper was running another step".into());
        };
        let label = self.endpoint.label();
        let mut relogged = false;
        let mut restarted = false;
        // Once the step went out, it is not left to the wrapper, which does not read the
        // attempt record: only a helper may have it again.
        let mut sent = false;
        let unsure = |what: String| {
            SshError::Session(format!(
                "run a command on {label}: an earlier send of the step got no answer, and {what}; whether that send started it there is not known, so it is not run again (the step's lock and marker settle it: `slipway resume` observes them)"
            ))
        };
        loop {
            if let Slot::Up(h) = &*slot
                && !h.usable(&self.current())
            {
                h.close().await;
                *slot = Slot::Idle;
            }
            if let Slot::Unavailable(why) = &*slot {
                if sent {
                    return StepRun::Ran(Err(unsure(format!("no step helper runs now ({why})"))));
                }
                return StepRun::Wrapper(why.clone());
            }
            if matches!(*slot, Slot::Idle) {
                match self.start_helper(!relogged).await {
                    Ok(h) => *slot = Slot::Up(h),
                    Err(StartError::Unavailable(why)) => {
                        *slot = Slot::Unavailable(why.clone());
                        if sent {
                            return StepRun::Ran(Err(unsure(format!(
                                "the step helper does not start again ({why})"
                            ))));
                        }
                        return StepRun::Wrapper(why);
                    }
                    Err(StartError::Session(e)) if sent => {
                        return StepRun::Ran(Err(unsure(e.to_string())));
                    }
                    Err(StartError::Session(e)) => return StepRun::Ran(Err(e)),
                }
            }
            let Slot::Up(h) = &mut *slot else {
                continue;
            };
            timeline::mark(&self.endpoint.host.name, "send", req.key);
            let r = h.send(&frame).await;
            sent |= !matches!(r, Sent::Unsent);
            match r {
                Sent::Taken => {
                    timeline::mark(&self.endpoint.host.name, "taken", req.key);
                    let r = h.answer(bound, req.keep, &label).await;
                    timeline::mark(&self.endpoint.host.name, "done", req.key);
                    if h.ended || h.exit.is_some() {
                        h.close().await;
                        *slot = Slot::Idle;
                    }
                    return StepRun::Ran(r);
                }
                // Ended between steps (killed while idle; its connection closed), or not
                // the protocol: it did not take this step. Start another, once (the same
                // token: a step that did reach it cannot start twice).
                Sent::Ended | Sent::Unsent => {
                    h.close().await;
                    *slot = Slot::Idle;
                    if restarted {
                        return StepRun::Ran(Err(SshError::Session(format!(
                            "run a command on {label}: the step helper ended twice before taking the step"
                        ))));
                    }
                    restarted = true;
                }
                // The reconnect rule: no answer; log in again, once, and send the step
                // again with the same token (if the first send got there, its record
                // stops the resend, or the resend's stops it).
                Sent::NoAnswer => {
                    let conn = h.conn.clone();
                    h.close().await;
                    *slot = Slot::Idle;
                    let why = format!(
                        "the step helper did not answer within {}",
                        format_duration(OPEN_TIMEOUT)
                    );
                    if relogged {
                        return StepRun::Ran(Err(SshError::Session(format!(
                            "run a command on {label}: {why}, again after logging in again (whether the first send reached the host is not known: the step's lock and marker settle it, and `slipway resume` observes them)"
                        ))));
                    }
                    relogged = true;
                    if let Err(e) = self.reconnect(&conn).await {
                        return StepRun::Ran(Err(SshError::Session(format!(
                            "run a command on {label}: {why}, and logging in again failed (the step may have reached the host; its lock and marker settle it): {e}"
                        ))));
                    }
                }
            }
        }
    }

    /// Start this connection's helper ahead of its first step
    /// ([`SshTarget::check_hosts`]), unless one is up (or known not to start). A failure
    /// to open its channel leaves none: the first step tries again, with the reconnect
    /// rule; a helper that cannot run here leaves its steps to the wrapper, as a start on
    /// the first step would.
    pub(super) async fn warm_helper(&self) {
        let Ok(mut slot) = self.helper.try_lock() else {
            return;
        };
        if !matches!(*slot, Slot::Idle) {
            return;
        }
        match self.start_helper(false).await {
            Ok(h) => *slot = Slot::Up(h),
            Err(StartError::Unavailable(why)) => *slot = Slot::Unavailable(why),
            Err(StartError::Session(_)) => {}
        }
    }

    /// Start a helper on this session's connection: through [`Self::channel`] (which
    /// logs in again once when the channel does not open) when `relogin`, else on the
    /// current connection only (slipway just logged in again).
    async fn start_helper(&self, relogin: bool) -> Result<Helper, StartError> {
        let label = self.endpoint.label();
        timeline::mark(&self.endpoint.host.name, "helper-open", "");
        let (conn, ch) = if relogin {
            self.channel().await.map_err(StartError::Session)?
        } else {
            let conn = self.current();
            match tokio::time::timeout(OPEN_TIMEOUT, conn.channel_open_session()).await {
                Ok(Ok(ch)) => (conn, ch),
                Ok(Err(e)) => {
                    return Err(StartError::Session(SshError::Session(format!(
                        "run a command on {label}: logged in again, and opening a channel failed (nothing was started there): {e}"
                    ))));
                }
                Err(_) => {
                    return Err(StartError::Session(SshError::Session(format!(
                        "run a command on {label}: logged in again, and opening a channel got no answer within {} (nothing was started there)",
                        format_duration(OPEN_TIMEOUT)
                    ))));
                }
            }
        };
        timeline::mark(&self.endpoint.host.name, "helper-exec", "");
        let line = SshTarget::in_workdir(
            &self.endpoint.host,
            &format!("exec perl -e {}", sh_quote(&FILLED)),
        );
        ch.exec(true, line).await.map_err(|e| {
            StartError::Session(SshError::Session(format!(
                "run a command on {label}: {e} (nothing was started there)"
            )))
        })?;
        let mut h = Helper {
            conn,
            ch,
            buf: Vec::new(),
            noise: Vec::new(),
            exit: None,
            ended: false,
        };
        let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
        loop {
            // What the login shell printed first (a chatty rc file) is not the helper's.
            if let Some(at) = h.buf.windows(HELLO.len()).position(|w| w == HELLO) {
                h.buf.drain(..at + HELLO.len());
                timeline::mark(&self.endpoint.host.name, "helper-up", "");
                return Ok(h);
            }
            match h.pull(deadline).await {
                Pulled::More => {}
                Pulled::Ended => {
                    let how = h.exit.clone().unwrap_or_else(|| "ended".into());
                    return Err(StartError::Unavailable(format!(
                        "the step helper (perl) did not start there ({how}){}",
                        h.said()
                    )));
                }
                Pulled::TimedOut => {
                    h.close().await;
                    return Err(StartError::Unavailable(format!(
                        "the step helper (perl) did not start there within {}",
                        format_duration(OPEN_TIMEOUT)
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_read_whole_and_cut_as_the_wrapper_cuts() {
        let mut buf = b"D 3 5 2\nhelloE!".to_vec();
        buf.extend_from_slice(b"next");
        let Answer::Done(o, used) = parse_answer(&buf, 4) else {
            panic!("not read")
        };
        assert_eq!(used, buf.len() - 4);
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.stdout, "ello");
        assert_eq!(o.stderr, "E!");
        assert!(o.truncated);
        assert!(matches!(parse_answer(b"D 0 5 0\nhel", 10), Answer::Partial));
        assert!(matches!(parse_answer(b"D 0 5", 10), Answer::Partial));
        assert!(matches!(parse_answer(b"X 0 0 0\n", 10), Answer::Garbled));
        assert!(matches!(parse_answer(b"D x 0 0\n", 10), Answer::Garbled));
    }

    #[test]
    fn a_request_with_a_nul_byte_is_left_to_the_wrapper() {
        let env = vec![("A".to_owned(), "1".to_owned())];
        let mut r = StepRequest {
            secs: 5,
            keep: 10,
            state_dir: None,
            run_id: "r",
            key: "k",
            creates: Some("c"),
            unless: None,
            run: "echo hi",
            env: &env,
        };
        let frame = r.encode("t").expect("encodes");
        let payload = b"5\x0010\x00-\x00r\x00k\x00t\x00+c\x00-\x00echo hi\x00A\x001";
        let mut want = format!("R {}\n", payload.len()).into_bytes();
        want.extend_from_slice(payload);
        assert_eq!(frame, want);
        r.run = "echo \0";
        assert!(r.encode("t").is_none());
    }

    /// The helper script itself, run by a local perl (its standard input and output are
    /// what the channel would carry), for what the host side of the protocol does.
    struct Local {
        child: std::process::Child,
        out: std::io::BufReader<std::process::ChildStdout>,
    }

    impl Local {
        fn start(dir: &std::path::Path) -> Local {
            use std::io::BufRead;
            let mut child = slipway_stdx::command("perl")
                .arg("-e")
                .arg(&*FILLED)
                .current_dir(dir)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .expect("perl runs");
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut hello = String::new();
            out.read_line(&mut hello).unwrap();
            assert_eq!(hello.as_bytes(), HELLO);
            Local { child, out }
        }

        fn send(&mut self, frame: &[u8]) {
            use std::io::Write;
            let stdin = self.child.stdin.as_mut().unwrap();
            stdin.write_all(frame).unwrap();
            stdin.flush().unwrap();
        }

        /// `A`, then the answer: status, stdout, stderr.
        fn answer(&mut self) -> (i32, String, String) {
            use std::io::{BufRead, Read};
            let mut taken = [0u8; 2];
            self.out.read_exact(&mut taken).unwrap();
            assert_eq!(
                &taken, TAKEN,
                "the helper takes the step without a go-ahead"
            );
            let mut head = String::new();
            self.out.read_line(&mut head).unwrap();
            let p: Vec<&str> = head.trim_end().split(' ').collect();
            assert_eq!(p[0], "D", "{head:?}");
            let (ol, el): (usize, usize) = (p[2].parse().unwrap(), p[3].parse().unwrap());
            let mut body = vec![0u8; ol + el];
            self.out.read_exact(&mut body).unwrap();
            (
                p[1].parse().unwrap(),
                String::from_utf8_lossy(&body[..ol]).into_owned(),
                String::from_utf8_lossy(&body[ol..]).into_owned(),
            )
        }
    }

    impl Drop for Local {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A step that counts its runs in `count` and fails (so it leaves no completion
    /// marker: only the attempt record can stop a second start).
    fn failing_step(dir: &std::path::Path) -> (String, String) {
        let state = format!("{}/state", dir.display());
        let cmd = format!("echo x >> {}/count; echo ran; exit 3", dir.display());
        (state, cmd)
    }

    fn count(dir: &std::path::Path) -> usize {
        std::fs::read_to_string(dir.join("count"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    #[test]
    fn a_resent_step_is_not_started_again_when_its_first_send_started_it() {
        let dir = tempfile::tempdir().unwrap();
        let (state, cmd) = failing_step(dir.path());
        let req = StepRequest {
            secs: 5,
            keep: 100,
            state_dir: Some(&state),
            run_id: "run1",
            key: "k1",
            creates: None,
            unless: None,
            run: &cmd,
            env: &[],
        };
        let frame = req.encode("tok-1").unwrap();
        // The first send: taken at once, run, failed.
        let mut first = Local::start(dir.path());
        first.send(&frame);
        assert_eq!(first.answer(), (3, "ran\n".into(), String::new()));
        assert_eq!(count(dir.path()), 1);
        // Its resend (same token) to another helper, as after a connection that stopped
        // answering: not started again, and said so.
        let mut second = Local::start(dir.path());
        second.send(&frame);
        let (rc, _, err) = second.answer();
        assert_eq!((rc, err.trim_end()), (75, ATTEMPT_SENTINEL));
        assert_eq!(count(dir.path()), 1, "the resend did not run the command");
        // A new attempt of the step (a resumed run: a token of its own) runs it.
        second.send(&req.encode("tok-2").unwrap());
        assert_eq!(second.answer().0, 3);
        assert_eq!(count(dir.path()), 2);
        // Two attempts never share a token.
        assert_ne!(attempt_token(), attempt_token());
    }

    #[test]
    fn a_first_send_that_arrives_after_its_resend_ran_does_not_start_it_again() {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let dir = tempfile::tempdir().unwrap();
        let (state, cmd) = failing_step(dir.path());
        let req = StepRequest {
            secs: 5,
            keep: 100,
            state_dir: Some(&state),
            run_id: "run1",
            key: "k1",
            creates: None,
            unless: None,
            run: &cmd,
            env: &[],
        };
        let frame = req.encode("tok-1").unwrap();
        // The first helper is frozen (a host that stopped answering) with the step in its
        // input: slipway got no answer and resent the step elsewhere.
        let mut late = Local::start(dir.path());
        let pid = Pid::from_raw(late.child.id() as i32);
        kill(pid, Signal::SIGSTOP).unwrap();
        let stopped = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('T'))
            })
        };
        while !stopped() {
            std::thread::yield_now();
        }
        late.send(&frame);
        let mut resend = Local::start(dir.path());
        resend.send(&frame);
        assert_eq!(resend.answer().0, 3);
        assert_eq!(count(dir.path()), 1);
        // The frozen helper wakes up and takes its step: the resend's record stops it.
        kill(pid, Signal::SIGCONT).unwrap();
        let (rc, _, err) = late.answer();
        assert_eq!((rc, err.trim_end()), (75, ATTEMPT_SENTINEL));
        assert_eq!(count(dir.path()), 1, "the step ran once");
    }

    #[test]
    fn the_script_carries_every_sentinel() {
        assert!(!FILLED.contains("@LOCK@") && !FILLED.contains("@MARKER"));
        for s in [
            LOCK_SENTINEL,
            ATTEMPT_SENTINEL,
            EXCLUDED_SENTINEL,
            MARKER_SENTINEL,
            CREATES_SENTINEL,
            UNLESS_SENTINEL,
            MARKER_WRITE_FAILED,
        ] {
            assert!(FILLED.contains(&perl_quote(s)), "{s}");
        }
    }
}
