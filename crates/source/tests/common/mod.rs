//! Test fixtures built with the real `git` and `ssh-keygen`.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use cairn_source::{AllowedSigners, CommitId, SourceConfig};

/// An ssh signing key made by `ssh-keygen`.
pub struct Key {
    pub name: String,
    pub private: PathBuf,
    /// `ssh-ed25519 AAAA... name`
    pub public: String,
}

impl Key {
    /// The key's `allowed_signers` line with `options` (may be empty).
    pub fn signer_line(&self, options: &str) -> String {
        let mut kt = self.public.split_whitespace();
        let (t, k) = (kt.next().unwrap(), kt.next().unwrap());
        if options.is_empty() {
            format!("{}@example.com {t} {k}\n", self.name)
        } else {
            format!("{}@example.com {options} {t} {k}\n", self.name)
        }
    }

    /// SHA256 fingerprint as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let out = run(Command::new("ssh-keygen")
            .arg("-l")
            .arg("-f")
            .arg(&self.private));
        out.split_whitespace().nth(1).unwrap().to_string()
    }
}

/// A scratch "upstream" repository (with a work tree) the tests commit to,
/// and a state directory for the node side.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub upstream: PathBuf,
    pub state: PathBuf,
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `git` command isolated from the user's and system configuration.
pub fn git_cmd(cwd: &Path, home: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(cwd)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .args(["-c", "gpg.format=ssh", "-c", "init.defaultBranch=main"]);
    c
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let upstream = dir.path().join("upstream");
        std::fs::create_dir(&upstream).unwrap();
        let f = Fixture {
            state: dir.path().join("state"),
            upstream,
            dir,
        };
        f.git(&["init", "-q", "-b", "main"]);
        f
    }

    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    pub fn git(&self, args: &[&str]) -> String {
        run(git_cmd(&self.upstream, self.home()).args(args))
    }

    pub fn git_env(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let mut c = git_cmd(&self.upstream, self.home());
        for (k, v) in env {
            c.env(k, v);
        }
        run(c.args(args))
    }

    /// Generate a key with `ssh-keygen -t <kind>`.
    pub fn key_of_type(&self, name: &str, kind: &str) -> Key {
        let keys = self.dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let private = keys.join(name);
        let mut c = Command::new("ssh-keygen");
        c.args(["-q", "-t", kind, "-N", "", "-C", name, "-f"])
            .arg(&private);
        if kind == "rsa" {
            c.args(["-b", "2048"]);
        }
        run(&mut c);
        let public = std::fs::read_to_string(private.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string();
        Key {
            name: name.to_string(),
            private,
            public,
        }
    }

    pub fn key(&self, name: &str) -> Key {
        self.key_of_type(name, "ed25519")
    }

    /// Write files (path, content) into the work tree and stage them.
    pub fn write(&self, files: &[(&str, &str)]) {
        for (path, content) in files {
            let p = self.upstream.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            self.git(&["add", path]);
        }
    }

    /// Commit what is staged (plus `files`), signed by `key` or unsigned.
    pub fn commit(&self, key: Option<&Key>, msg: &str, files: &[(&str, &str)]) -> String {
        self.commit_at(key, msg, files, None)
    }

    /// Like [`Fixture::commit`] with a fixed committer date (git date format).
    pub fn commit_at(
        &self,
        key: Option<&Key>,
        msg: &str,
        files: &[(&str, &str)],
        date: Option<&str>,
    ) -> String {
        self.write(files);
        let mut env = vec![];
        if let Some(d) = date {
            env.push(("GIT_COMMITTER_DATE", d));
            env.push(("GIT_AUTHOR_DATE", d));
        }
        let signing;
        let mut args: Vec<&str> = vec![];
        match key {
            Some(k) => {
                signing = format!("user.signingkey={}", k.private.display());
                args.extend(["-c", &signing, "commit", "-q", "-S"]);
            }
            None => args.extend(["commit", "-q", "--no-gpg-sign"]),
        }
        args.extend(["--allow-empty", "-m", msg]);
        self.git_env(&env, &args);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    /// The node-side configuration: fetch upstream's `main` over file://.
    pub fn config(&self, trust: &str) -> SourceConfig {
        SourceConfig::new(
            format!("file://{}", self.upstream.display()),
            "main",
            &self.state,
            AllowedSigners::parse(trust).unwrap(),
        )
    }

    /// What `state/recorded` holds.
    pub fn recorded_file(&self) -> Option<String> {
        std::fs::read_to_string(self.state.join("recorded"))
            .ok()
            .map(|s| s.trim().to_string())
    }
}

pub fn id(s: &str) -> CommitId {
    s.parse().unwrap()
}
