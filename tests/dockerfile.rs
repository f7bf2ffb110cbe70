//! The image, without a Docker engine: the build context `.dockerignore` admits is
//! assembled (Docker's matching rules are implemented below, with their own tests)
//! and built with the Dockerfile's own cargo command, so a context that cannot build
//! fails here; and what can be checked by reading the Dockerfile: the binary it
//! copies is the crate's, built with `--release --locked`; the runtime user is not
//! root; the HEALTHCHECK hits `/healthz` on the port courier listens on by default,
//! which is the EXPOSEd one.

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The instructions of the Dockerfile: (keyword, arguments), continuation lines
/// joined, comments dropped.
fn instructions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("Dockerfile");
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    joined
        .into_iter()
        .filter_map(|i| {
            let (keyword, args) = i.trim().split_once(char::is_whitespace)?;
            Some((keyword.to_uppercase(), args.trim().to_string()))
        })
        .collect()
}

/// The instructions of each stage, in order.
fn stages() -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for instruction in instructions() {
        if instruction.0 == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(instruction);
    }
    stages
}

fn args<'a>(stage: &'a [(String, String)], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, a)| a.as_str())
        .collect()
}

fn default_listen_port() -> String {
    use clap::CommandFactory;
    let command = courier::config::Config::command();
    let listen = command
        .get_arguments()
        .find(|a| a.get_id() == "listen")
        .expect("a listen setting");
    let default = listen.get_default_values()[0]
        .to_string_lossy()
        .into_owned();
    default.rsplit_once(':').expect("host:port").1.to_string()
}

#[test]
fn image_is_multi_stage_and_copies_the_crates_binary() {
    let stages = stages();
    assert!(stages.len() >= 2, "multi-stage: build, then runtime");
    let build = &stages[0];
    let runtime = stages.last().expect("runtime stage");
    let binary = Path::new(env!("CARGO_BIN_EXE_courier"))
        .file_name()
        .expect("binary name")
        .to_string_lossy()
        .into_owned();
    // The build's target directory is a cache mount, not part of the stage's image:
    // the binary is copied out of it.
    let built = format!("target/release/{binary}");
    let kept = args(build, "RUN")
        .into_iter()
        .find_map(|run| {
            let words: Vec<&str> = run.split_whitespace().collect();
            words
                .windows(3)
                .find(|w| w[0] == "cp" && w[1] == built)
                .map(|w| w[2].to_string())
        })
        .expect("the build stage copies the binary out of target/");
    let copy = args(runtime, "COPY")
        .into_iter()
        .find(|a| a.starts_with("--from="))
        .expect("the runtime COPYs from the build stage");
    let source = copy.split_whitespace().nth(1).expect("COPY source");
    assert_eq!(source, kept, "the runtime copies the binary cargo builds");
    let destination = copy.split_whitespace().nth(2).expect("COPY destination");
    let entrypoint = args(runtime, "ENTRYPOINT").join(" ");
    assert!(
        entrypoint.contains(destination),
        "ENTRYPOINT {entrypoint} runs {destination}"
    );
}

#[test]
fn builds_are_release_and_locked() {
    let builds: Vec<String> = stages()[0]
        .iter()
        .filter(|(k, a)| k == "RUN" && a.contains("cargo build"))
        .map(|(_, a)| a.clone())
        .collect();
    assert!(!builds.is_empty(), "the build stage runs cargo build");
    for build in builds {
        assert!(build.contains("--release"), "{build}");
        assert!(build.contains("--locked"), "{build}");
    }
}

#[test]
fn runtime_is_small_non_root_and_healthchecked_on_the_default_port() {
    let stages = stages();
    let runtime = stages.last().expect("runtime stage");
    let base = args(runtime, "FROM")[0];
    assert!(base.contains("slim"), "small runtime base: {base}");
    let user = args(runtime, "USER")
        .last()
        .copied()
        .expect("the runtime sets USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(name != "root" && name != "0", "USER {user} is not root");

    let port = default_listen_port();
    assert_eq!(
        args(runtime, "EXPOSE"),
        [port.as_str()],
        "EXPOSE the default port"
    );
    let healthcheck = args(runtime, "HEALTHCHECK").join(" ");
    assert!(
        healthcheck.contains(&format!(":{port}/healthz")),
        "HEALTHCHECK hits /healthz on {port}: {healthcheck}"
    );
    for env in args(runtime, "ENV") {
        if let Some(listen) = env
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("COURIER_LISTEN="))
        {
            assert!(listen.ends_with(&format!(":{port}")), "ENV {listen}");
        }
    }
}

/// The last `cargo build` of the build stage (the one that builds the binary the
/// runtime copies), as words: the shell command of its `RUN` (BuildKit `--mount`
/// flags dropped), the `&&`-separated part that starts with `cargo build`.
fn build_command() -> Vec<String> {
    let stages = stages();
    let run = args(&stages[0], "RUN")
        .into_iter()
        .rfind(|run| run.contains("cargo build"))
        .expect("the build stage runs cargo build");
    let words: Vec<&str> = run
        .split_whitespace()
        .skip_while(|word| word.starts_with("--"))
        .collect();
    let command = words
        .split(|word| *word == "&&")
        .find(|part| part.starts_with(&["cargo", "build"]))
        .expect("a `cargo build …` command");
    assert!(
        !command.iter().any(|word| word.contains(['"', '\'', '$'])),
        "the cargo command is plain words: {command:?}"
    );
    command.iter().map(|word| word.to_string()).collect()
}

/// Docker's `.dockerignore` rules, as the engine applies them (moby's `ignorefile`
/// reader and `patternmatcher`, `MatchesOrParentMatches`): one pattern per line, `#`
/// comments, surrounding spaces trimmed, paths cleaned like Go's `filepath.Clean`
/// with a leading `/` dropped; `*` and `?` do not cross `/`, `[…]` is a character
/// class, `\` escapes, `**` spans any number of directories; `!` makes an exception;
/// a pattern matching a directory matches everything below it; the last matching
/// pattern wins.
mod dockerignore {
    /// The patterns of a `.dockerignore`, in order.
    pub struct Patterns(Vec<Pattern>);

    struct Pattern {
        /// `!pattern`: an exception.
        exception: bool,
        /// The cleaned pattern (without its `!`).
        text: String,
        matcher: Matcher,
    }

    /// How a pattern matches, as moby's `compile` classifies it.
    enum Matcher {
        Exact,
        /// `prefix**`: the path starts with the prefix.
        Prefix(String),
        /// `**suffix` with no other wildcard: the path ends with the suffix.
        Suffix(String),
        Tokens(Vec<Token>),
    }

    /// What moby turns each part of a pattern into (a regular expression there).
    #[derive(Debug, Clone, PartialEq)]
    enum Token {
        Char(char),
        /// `?`: one character but `/`.
        One,
        /// `*`: any run of characters without `/`.
        Run,
        /// `[…]`: one character of the class (or not of it, with `^`).
        Class {
            negated: bool,
            ranges: Vec<(char, char)>,
        },
        /// `**` followed by more: any leading directories, `(.*/)?`.
        Dirs,
        /// `**` at the end: anything, `.*`.
        Rest,
    }

    impl Patterns {
        /// Parses the text of a `.dockerignore`.
        pub fn parse(text: &str) -> Result<Self, String> {
            let mut patterns = Vec::new();
            for line in text.trim_start_matches('\u{feff}').lines() {
                if line.starts_with('#') {
                    continue;
                }
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let (exception, rest) = match line.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, line),
                };
                if rest.is_empty() {
                    return Err(format!("illegal exception pattern {line:?}"));
                }
                let cleaned = clean(rest);
                let text = match cleaned.strip_prefix('/') {
                    Some(relative) if !relative.is_empty() => relative.to_string(),
                    _ => cleaned,
                };
                let matcher = Matcher::compile(&text)?;
                patterns.push(Pattern {
                    exception,
                    text,
                    matcher,
                });
            }
            Ok(Self(patterns))
        }

        /// Whether `path` (relative to the context, `/`-separated) is left out of the
        /// build context.
        pub fn excludes(&self, path: &str) -> bool {
            let parents: Vec<&str> = match path.rfind('/') {
                Some(end) => path[..end].split('/').collect(),
                None => Vec::new(),
            };
            let mut excluded = false;
            for pattern in &self.0 {
                // An exclusion only matters while the path is admitted, an exception
                // only while it is excluded.
                if pattern.exception != excluded {
                    continue;
                }
                let matches = pattern.matcher.matches(&pattern.text, path)
                    || (1..=parents.len()).any(|depth| {
                        let parent = parents[..depth].join("/");
                        pattern.matcher.matches(&pattern.text, &parent)
                    });
                if matches {
                    excluded = !pattern.exception;
                }
            }
            excluded
        }

        /// Whether an exception could admit something below the directory `dir`.
        /// When `dir` is excluded and this is false, everything below it is excluded
        /// too, and the directory need not be walked (`target/`, `.git`).
        pub fn may_admit_below(&self, dir: &str) -> bool {
            let depth = dir.split('/').count();
            self.0.iter().filter(|p| p.exception).any(|pattern| {
                let parts: Vec<&str> = pattern.text.split('/').collect();
                pattern.text.contains("**")
                    || (parts.len() > depth
                        && parts.iter().zip(dir.split('/')).all(|(part, name)| {
                            Matcher::compile(part).is_ok_and(|m| m.matches(part, name))
                        }))
            })
        }
    }

    impl Matcher {
        /// moby's `Pattern.compile`, with its classification into exact, prefix and
        /// suffix matches (which differ from the regular expression for `**x`).
        fn compile(pattern: &str) -> Result<Self, String> {
            #[derive(PartialEq)]
            enum Kind {
                Exact,
                Prefix,
                Suffix,
                Tokens,
            }
            let chars: Vec<char> = pattern.chars().collect();
            let mut tokens = Vec::new();
            let mut kind = Kind::Exact;
            let mut i = 0;
            while i < chars.len() {
                let first = i == 0;
                let c = chars[i];
                i += 1;
                match c {
                    '*' if chars.get(i) == Some(&'*') => {
                        i += 1;
                        if chars.get(i) == Some(&'/') {
                            i += 1;
                        }
                        if i < chars.len() {
                            tokens.push(Token::Dirs);
                            kind = Kind::Tokens;
                        } else {
                            tokens.push(Token::Rest);
                            kind = if kind == Kind::Exact {
                                Kind::Prefix
                            } else {
                                Kind::Tokens
                            };
                        }
                        if first {
                            kind = Kind::Suffix;
                        }
                    }
                    '*' => {
                        tokens.push(Token::Run);
                        kind = Kind::Tokens;
                    }
                    '?' => {
                        tokens.push(Token::One);
                        kind = Kind::Tokens;
                    }
                    '\\' if i < chars.len() => {
                        tokens.push(Token::Char(chars[i]));
                        i += 1;
                        kind = Kind::Tokens;
                    }
                    '[' => {
                        let (class, next) = class(&chars, i)
                            .ok_or_else(|| format!("unclosed [ in pattern {pattern:?}"))?;
                        tokens.push(class);
                        i = next;
                        kind = Kind::Tokens;
                    }
                    c => tokens.push(Token::Char(c)),
                }
            }
            Ok(match kind {
                Kind::Exact => Self::Exact,
                Kind::Prefix => Self::Prefix(pattern[..pattern.len() - 2].to_string()),
                Kind::Suffix => Self::Suffix(pattern[2..].to_string()),
                Kind::Tokens => Self::Tokens(tokens),
            })
        }

        fn matches(&self, pattern: &str, path: &str) -> bool {
            match self {
                Self::Exact => path == pattern,
                Self::Prefix(prefix) => path.starts_with(prefix.as_str()),
                Self::Suffix(suffix) => {
                    path.ends_with(suffix.as_str())
                        || suffix.strip_prefix('/').is_some_and(|s| s == path)
                }
                Self::Tokens(tokens) => {
                    let path: Vec<char> = path.chars().collect();
                    match_tokens(tokens, &path)
                }
            }
        }
    }

    /// The class that starts after a `[` at `start`, and where it ends.
    fn class(chars: &[char], start: usize) -> Option<(Token, usize)> {
        let mut i = start;
        let negated = chars.get(i) == Some(&'^');
        if negated {
            i += 1;
        }
        let mut ranges = Vec::new();
        loop {
            let mut c = *chars.get(i)?;
            if c == ']' && i > start + usize::from(negated) {
                return Some((Token::Class { negated, ranges }, i + 1));
            }
            if c == '\\' {
                i += 1;
                c = *chars.get(i)?;
            }
            if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&e| e != ']') {
                ranges.push((c, chars[i + 2]));
                i += 3;
            } else {
                ranges.push((c, c));
                i += 1;
            }
        }
    }

    /// Whether the whole of `path` matches `tokens` (backtracking; paths are short).
    fn match_tokens(tokens: &[Token], path: &[char]) -> bool {
        let Some((token, rest)) = tokens.split_first() else {
            return path.is_empty();
        };
        match token {
            Token::Rest => true,
            Token::Dirs => {
                match_tokens(rest, path)
                    || (0..path.len())
                        .filter(|&i| path[i] == '/')
                        .any(|i| match_tokens(rest, &path[i + 1..]))
            }
            Token::Run => (0..=path.len())
                .take_while(|&n| n == 0 || path[n - 1] != '/')
                .any(|n| match_tokens(rest, &path[n..])),
            Token::One => path
                .first()
                .is_some_and(|&c| c != '/' && match_tokens(rest, &path[1..])),
            Token::Class { negated, ranges } => path.first().is_some_and(|&c| {
                let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                inside != *negated && match_tokens(rest, &path[1..])
            }),
            Token::Char(expected) => path
                .first()
                .is_some_and(|c| c == expected && match_tokens(rest, &path[1..])),
        }
    }

    /// Go's `filepath.Clean` on a `/`-separated path.
    fn clean(path: &str) -> String {
        let rooted = path.starts_with('/');
        let mut parts: Vec<&str> = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." if parts.last().is_some_and(|last| *last != "..") => {
                    parts.pop();
                }
                ".." if rooted => {}
                part => parts.push(part),
            }
        }
        let joined = parts.join("/");
        match (rooted, joined.is_empty()) {
            (true, _) => format!("/{joined}"),
            (false, true) => ".".into(),
            (false, false) => joined,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn excluded(patterns: &str, path: &str) -> bool {
            Patterns::parse(patterns)
                .expect("valid patterns")
                .excludes(path)
        }

        #[test]
        fn an_allowlist_admits_its_exceptions_and_what_is_below_them() {
            let allow = "# comment\n*\n!Cargo.toml\n! /src/\n!clients/rust\n";
            assert!(!excluded(allow, "Cargo.toml"));
            assert!(!excluded(allow, "src/store/keys.rs"));
            assert!(!excluded(allow, "clients/rust/src/lib.rs"));
            assert!(excluded(allow, "clients/typescript/package.json"));
            assert!(excluded(allow, "loadgen/Cargo.toml"), "* matches the dir");
            assert!(excluded(allow, "README.md"));
            assert!(excluded(allow, "target/release/courier"));
        }

        #[test]
        fn the_last_matching_pattern_wins() {
            assert!(excluded("*\n!src\nsrc/secret.rs", "src/secret.rs"));
            assert!(!excluded("*\n!src\nsrc/secret.rs", "src/main.rs"));
            assert!(!excluded("src/*.lua\n!src/keep.lua", "src/keep.lua"));
            assert!(excluded("!src\n*", "src/main.rs"));
        }

        #[test]
        fn wildcards_follow_go_filepath_match_with_double_stars() {
            assert!(excluded("*.md", "README.md"));
            assert!(!excluded("*.md", "docs/DESIGN.md"), "* stops at /");
            assert!(excluded("*/*.md", "docs/DESIGN.md"));
            assert!(excluded("**/*.md", "docs/a/DESIGN.md"));
            assert!(excluded("**/*.md", "README.md"), "**/ may match nothing");
            assert!(excluded("docs/**", "docs/a/b"));
            assert!(excluded("a/**/b", "a/b"));
            assert!(excluded("a/**/b", "a/x/y/b"));
            assert!(
                excluded("**/target", "loadgen/target/x"),
                "a parent matches"
            );
            assert!(excluded("**foo", "barfoo"), "moby's suffix match for **x");
            assert!(excluded("**/a/**", "x/a/b"));
            assert!(!excluded("**/a/**", "x/b/c"));
            assert!(excluded("**", "anything/at/all"));
            assert!(excluded("?.rs", "a.rs"));
            assert!(!excluded("?.rs", "ab.rs"));
            assert!(excluded("[a-c].rs", "b.rs"));
            assert!(!excluded("[^a-c].rs", "b.rs"));
            assert!(excluded("\\*.rs", "*.rs"));
            assert!(!excluded("\\*.rs", "a.rs"));
        }

        #[test]
        fn patterns_are_cleaned_like_paths() {
            assert!(excluded("./src//a/../b/", "src/b"));
            assert!(excluded("/target", "target/debug"));
            assert_eq!(clean("a/../../b"), "../b");
            assert_eq!(clean("/../a"), "/a");
            assert_eq!(clean(""), ".");
            assert!(Patterns::parse("!").is_err());
            assert!(Patterns::parse("[a").is_err());
        }

        #[test]
        fn only_directories_an_exception_could_reach_are_walked() {
            let patterns = Patterns::parse("*\n!src\n!clients/rust").expect("valid");
            assert!(!patterns.may_admit_below("target"));
            assert!(patterns.may_admit_below("clients"));
            assert!(!patterns.may_admit_below("clients/typescript"));
            let anywhere = Patterns::parse("*\n!**/Cargo.toml").expect("valid");
            assert!(anywhere.may_admit_below("target"));
        }
    }
}

/// The files of `root` that `.dockerignore` admits into the build context, relative
/// and `/`-separated, walking only directories that can hold admitted files.
fn admitted_files(root: &Path, patterns: &dockerignore::Patterns) -> Vec<String> {
    let mut admitted = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(root.join(&dir)).expect("read a context directory");
        for entry in entries {
            let entry = entry.expect("a directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let excluded = patterns.excludes(&path);
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                if !excluded || patterns.may_admit_below(&path) {
                    dirs.push(path);
                }
            } else if !excluded {
                admitted.push(path);
            }
        }
    }
    admitted.sort();
    admitted
}

/// The top-level entries of `files`, for messages: `Cargo.toml`, `src/`, ….
fn top_level(files: &[String]) -> Vec<String> {
    let mut entries: Vec<String> = files
        .iter()
        .map(|file| match file.split_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => file.clone(),
        })
        .collect();
    entries.dedup();
    entries
}

/// Copies `files` of `root` into `context`, keeping their modification times (so
/// cargo's fingerprints stay fresh across runs) and symbolic links as links.
fn copy_context(root: &Path, files: &[String], context: &Path) {
    for file in files {
        let (from, to) = (root.join(file), context.join(file));
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("create a directory");
        let metadata = std::fs::symlink_metadata(&from).expect("metadata");
        if metadata.file_type().is_symlink() {
            let target = std::fs::read_link(&from).expect("read link");
            std::os::unix::fs::symlink(target, &to).expect("copy a link");
            continue;
        }
        std::fs::copy(&from, &to).expect("copy a file");
        let modified = metadata.modified().expect("modification time");
        std::fs::File::options()
            .write(true)
            .open(&to)
            .and_then(|copy| copy.set_modified(modified))
            .expect("keep the modification time");
    }
}

/// `docker build` would succeed: the context `.dockerignore` admits (and nothing else)
/// builds with the Dockerfile's own cargo command, `--locked`. Cold, this compiles
/// every dependency in release mode (minutes); afterwards only what changed.
#[test]
fn the_build_context_builds_with_the_dockerfiles_cargo_command() {
    let root = Path::new(ROOT);
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    let patterns = dockerignore::Patterns::parse(&ignore).expect("valid .dockerignore");
    let files = admitted_files(root, &patterns);

    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("docker-context");
    let context = work.join("context");
    if context.exists() {
        std::fs::remove_dir_all(&context).expect("clear the previous context");
    }
    copy_context(root, &files, &context);

    for copy in instructions()
        .into_iter()
        .filter(|(keyword, args)| keyword == "COPY" && !args.starts_with("--from="))
    {
        let parts: Vec<&str> = copy.1.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                context.join(source).exists(),
                "COPY {source}: not in the build context .dockerignore admits ({})",
                top_level(&files).join(", ")
            );
        }
    }

    let command = build_command();
    assert!(command.iter().any(|word| word == "--locked"), "{command:?}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(&command[1..])
        .current_dir(&context)
        .env("CARGO_TARGET_DIR", work.join("target"));
    // What `cargo test` sets for this test is not in the image's environment; cargo's
    // own configuration (CARGO_HOME, CARGO_NET_*, proxies, ...) stays.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_for_tests = ["CARGO_PKG_", "CARGO_BIN_", "CARGO_MANIFEST_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&name.as_ref());
        if set_for_tests {
            build.env_remove(name.as_ref());
        }
    }
    let output = build.output().expect("run cargo");
    assert!(
        output.status.success(),
        "`{}` failed in the build context ({} files under {}):\n{}",
        command.join(" "),
        files.len(),
        top_level(&files).join(", "),
        String::from_utf8_lossy(&output.stderr)
    );
}
