//! Default backend names. A backend without `name` is named after what it reaches: the
//! authority of an HTTP URL, the SSE URL, or for a command the module, package or script it
//! runs (`python3 -m mcp_server_time` is `mcp_server_time`, not `python3`). A default name
//! another backend of the group already has gets `-2`, `-3`, ... so that logs, metrics and
//! `POST /backends/NAME/drain` tell the backends apart. Names only depend on the config
//! text, so they are the same on every start and reload.

use std::collections::HashSet;

/// Programs that run a module, package or script named by an argument rather than being the
/// server themselves.
const LAUNCHERS: [&str; 22] = [
    "python", "pypy", "node", "nodejs", "deno", "bun", "bunx", "npx", "pnpm", "pnpx", "yarn", "uv",
    "uvx", "pipx", "ruby", "perl", "php", "java", "sh", "bash", "env", "npm",
];

/// Words after a launcher that are its subcommand, not the server (`uv run`, `pnpm dlx`).
const SUBCOMMANDS: [&str; 6] = ["run", "exec", "x", "dlx", "tool", "start"];

/// File extensions dropped from a script's name.
const SCRIPT_EXTENSIONS: [&str; 10] = [
    ".py", ".js", ".mjs", ".cjs", ".ts", ".rb", ".pl", ".php", ".sh", ".jar",
];

/// The names in use in one group.
pub(super) struct GroupNames {
    taken: HashSet<String>,
}

impl GroupNames {
    /// Starts with the names the group's backends give themselves, so that no default name
    /// takes one of them, wherever it is in the list.
    pub(super) fn new(given: impl IntoIterator<Item = String>) -> Self {
        GroupNames {
            taken: given.into_iter().collect(),
        }
    }

    /// `base` if no backend of the group has it yet, else the first free `base-N` (N from 2).
    pub(super) fn claim(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut n = 2u32;
        while self.taken.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.taken.insert(name.clone());
        name
    }
}

/// The name of a command backend that gives none.
pub(super) fn for_command(command: &[String]) -> String {
    let program = command.first().map_or("", |p| base_name(p));
    let family = program.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    let args = command.get(1..).unwrap_or_default();
    let subject = if LAUNCHERS.contains(&family) {
        launched(args).unwrap_or(program)
    } else {
        program
    };
    let name = tidy(subject);
    if name.is_empty() {
        "stdio".to_string()
    } else {
        name
    }
}

/// What a launcher's arguments run: the module after `-m`, or the first argument that is not
/// an option, an assignment or a subcommand word.
fn launched(args: &[String]) -> Option<&str> {
    if let Some(i) = args.iter().position(|a| a == "-m") {
        return args.get(i + 1).map(String::as_str);
    }
    args.iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-') && !a.contains('='))
        .find(|a| !SUBCOMMANDS.contains(a))
}

/// The last path segment (a file path, or an npm `@scope/package`).
fn base_name(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// A readable name for logs and URL paths: the base name without a version (`pkg@1.2`) or a
/// script extension, and only `A-Z a-z 0-9 . _ -` (anything else becomes `-`).
fn tidy(subject: &str) -> String {
    let mut s = base_name(subject.trim());
    if let Some(at) = s.get(1..).and_then(|rest| rest.find('@')) {
        s = s.get(..at + 1).unwrap_or(s);
    }
    for ext in SCRIPT_EXTENSIONS {
        if let Some(stem) = s.strip_suffix(ext).filter(|stem| !stem.is_empty()) {
            s = stem;
            break;
        }
    }
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    cleaned.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(argv: &[&str]) -> String {
        for_command(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn commands_are_named_after_what_they_run() {
        for (argv, want) in [
            (&["python3", "-m", "mcp_server_time"][..], "mcp_server_time"),
            (&["python3.12", "-m", "a.server", "--tz", "UTC"], "a.server"),
            (&["/usr/bin/python3", "server.py"], "server"),
            (
                &["npx", "-y", "@modelcontextprotocol/server-everything"],
                "server-everything",
            ),
            (&["npx", "-y", "@scope/pkg@1.2.3", "stdio"], "pkg"),
            (&["uvx", "mcp-server-fetch"], "mcp-server-fetch"),
            (&["uv", "run", "tools/weather.py"], "weather"),
            (&["node", "/opt/x/dist/index.js", "stdio"], "index"),
            (&["env", "A=1", "my-server"], "my-server"),
            (&["/usr/local/bin/my-server", "--port", "3"], "my-server"),
            (&["cat"], "cat"),
            (&["python3"], "python3"),
            (&["sh", "-c", "exec python3 s.py"], "exec-python3-s"),
            (&["./"], "stdio"),
        ] {
            assert_eq!(name(argv), want, "{argv:?}");
        }
    }

    #[test]
    fn a_taken_name_gets_the_next_free_suffix() {
        let mut names = GroupNames::new(["srv-2".to_string()]);
        assert_eq!(names.claim("srv"), "srv");
        assert_eq!(names.claim("srv"), "srv-3");
        assert_eq!(names.claim("srv"), "srv-4");
        assert_eq!(names.claim("other"), "other");
    }
}
