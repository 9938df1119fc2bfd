//! Read-only git facts for the reports: the commit a release tag points at, the commit
//! that was current when a run was created (when no tag exists), and the log between two
//! tags. Everything is a `git -C DIR …` query; a directory that is not a repository, or a
//! missing `git`, yields no facts rather than an error, and the reports say so.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::Serialize;

use crate::history::RunHistory;

/// One commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Commit {
    /// Full sha.
    pub sha: String,
    /// Committer time.
    pub time: Timestamp,
    /// First line of the message.
    pub subject: String,
}

/// Where a release's change came from, for its lead time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeOrigin {
    /// The commit.
    pub commit: Commit,
    /// How it was found: `tag v2.4.0`, or `last commit before the run (no tag v2.4.0)`.
    pub source: String,
}

/// A git working tree.
#[derive(Debug, Clone)]
pub struct GitRepo {
    dir: PathBuf,
}

/// Field separator in `--format` output: never in a sha, a date or a subject line.
const SEP: char = '\u{1f}';

impl GitRepo {
    /// The repository holding `dir`, if it is one and `git` runs.
    pub fn open(dir: &Path) -> Option<Self> {
        let repo = Self {
            dir: dir.to_path_buf(),
        };
        repo.git(&["rev-parse", "--git-dir"])?;
        Some(repo)
    }

    fn git(&self, args: &[&str]) -> Option<String> {
        let out = slipway_stdx::command("git")
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn commits(&self, args: &[&str]) -> Vec<Commit> {
        let fmt = format!("--format=%H{SEP}%cI{SEP}%s");
        let mut all = vec!["log", fmt.as_str()];
        all.extend_from_slice(args);
        self.git(&all)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, SEP);
                let sha = parts.next()?.to_owned();
                let time = parts.next()?.parse::<Timestamp>().ok()?;
                let subject = parts.next().unwrap_or_default().to_owned();
                Some(Commit { sha, time, subject })
            })
            .collect()
    }

    /// The commit a revision (tag, branch, sha) names.
    pub fn commit(&self, rev: &str) -> Option<Commit> {
        // `^{commit}` peels annotated tags; `--` keeps a rev from being read as a path.
        let peeled = format!("{rev}^{{commit}}");
        self.commits(&["-1", &peeled, "--"]).into_iter().next()
    }

    /// The newest commit of HEAD at or before `t`.
    pub fn commit_before(&self, t: Timestamp) -> Option<Commit> {
        let before = format!("--before={t}");
        self.commits(&["-1", &before, "HEAD", "--"])
            .into_iter()
            .next()
    }

    /// Tags, any order.
    pub fn tags(&self) -> Vec<String> {
        self.git(&["tag", "--list"])
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Commits in `to` but not in `from` (all of `to` when `from` is `None`), newest first.
    pub fn log(&self, from: Option<&str>, to: &str) -> Vec<Commit> {
        let range = match from {
            Some(f) => format!("{f}..{to}"),
            None => to.to_owned(),
        };
        self.commits(&[&range, "--"])
    }
}

impl GitRepo {
    /// The commit HEAD is at.
    pub fn head(&self) -> Option<String> {
        self.git(&["rev-parse", "--verify", "-q", "HEAD"])
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// The commit a tag points at (annotated tags peeled), if the tag exists.
    pub fn tag_commit(&self, tag: &str) -> Option<String> {
        let rev = format!("refs/tags/{tag}^{{commit}}");
        self.git(&["rev-parse", "--verify", "-q", &rev])
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// Commits in `to` after `from`, when `to` descends from `from`.
    pub fn commits_after(&self, from: &str, to: &str) -> Option<u32> {
        self.git(&["merge-base", "--is-ancestor", from, to])?;
        self.git(&["rev-list", "--count", &format!("{from}..{to}")])?
            .trim()
            .parse()
            .ok()
    }

    /// Paths of the working tree no commit holds — modified, staged, deleted or untracked
    /// (ignored files excepted) — in the whole repository, except Slipway's own state
    /// directories (`.slipway/`), which a deploy beside the spec creates.
    pub fn uncommitted(&self) -> Vec<String> {
        let Some(out) = self.git(&[
            // Never take index.lock: a plan must not get in the way of a commit.
            "--no-optional-locks",
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
        ]) else {
            return Vec::new();
        };
        let mut paths = Vec::new();
        let mut entries = out.split('\0');
        while let Some(entry) = entries.next() {
            if entry.len() < 4 {
                continue;
            }
            let (status, path) = entry.split_at(3);
            // A rename or copy is followed by its source path.
            if status.starts_with('R') || status.starts_with('C') {
                let _ = entries.next();
            }
            if !path.split('/').any(|c| c == ".slipway") {
                paths.push(path.to_owned());
            }
        }
        paths
    }
}

/// Where the repository holding `dir` stands relative to release tag `tag`, for the
/// plan's tag check (`slipway_model::plan::GitState`); `None` outside a repository.
pub fn tag_state(dir: &Path, tag: &str) -> Option<slipway_model::plan::GitState> {
    let repo = GitRepo::open(dir)?;
    let head = repo.head()?;
    let tag_commit = repo.tag_commit(tag);
    let commits_after_tag = tag_commit
        .as_deref()
        .and_then(|t| repo.commits_after(t, &head));
    Some(slipway_model::plan::GitState {
        head,
        tag_commit,
        commits_after_tag,
        uncommitted: repo.uncommitted(),
    })
}

/// The git tag a run's release carries: the plan's `tag` with `{version}` filled in.
pub fn release_tag(run: &RunHistory) -> Option<String> {
    run.tag()
}

/// Where the change a run deploys came from: its release tag's commit when the tag exists
/// in the repository holding the run's spec directory, else the last commit at or before
/// the run was created (what was checked out when it was planned, as near as git knows).
pub fn change_origin(run: &RunHistory) -> Option<ChangeOrigin> {
    let repo = GitRepo::open(Path::new(&run.record.workdir))?;
    let tag = release_tag(run);
    if let Some(t) = &tag
        && let Some(commit) = repo.commit(t)
    {
        return Some(ChangeOrigin {
            commit,
            source: format!("tag {t}"),
        });
    }
    let commit = repo.commit_before(run.record.created_at)?;
    let source = match tag {
        Some(t) => format!("last commit before the run (no tag {t})"),
        None => "last commit before the run (the spec names no tag)".to_owned(),
    };
    Some(ChangeOrigin { commit, source })
}

/// Release notes from git: the commits between the previous run's tag and this run's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GitNotes {
    /// The range read (`v2.4.0..v2.5.0`), or why none was.
    pub range: String,
    /// Commits, newest first.
    pub commits: Vec<Commit>,
}

/// Commits between the previous run's release tag and this run's, when both tags (or at
/// least this one) exist in the repository holding the spec; otherwise why not.
pub fn release_notes(run: &RunHistory, previous: Option<&RunHistory>) -> GitNotes {
    let none = |range: String| GitNotes {
        range,
        commits: Vec::new(),
    };
    let Some(repo) = GitRepo::open(Path::new(&run.record.workdir)) else {
        return none("no git history: the spec's directory is not a git repository".into());
    };
    let Some(tag) = release_tag(run) else {
        return none("no git range: the spec names no release tag (metadata.tag)".into());
    };
    if repo.commit(&tag).is_none() {
        return none(format!("no git range: tag {tag} does not exist"));
    }
    let prev = previous
        .and_then(release_tag)
        .filter(|p| repo.commit(p).is_some());
    let range = match &prev {
        Some(p) => format!("{p}..{tag}"),
        None => format!("{tag} (no earlier release tag)"),
    };
    GitNotes {
        range,
        commits: repo.log(prev.as_deref(), &tag),
    }
}
